/**
 * Position tracking: what a room's next event means, given the last
 * position the client saw there (PROTOCOL.md §1.5: offsets start at 1 in
 * each epoch and grow by one, so a client can tell a gap by itself).
 */
/** A position in a room, as the server sends it. */
export interface Position {
    offset: number;
    epoch: string;
}
/**
 * What to do with an event:
 * - `deliver`: the next one (or the first seen): hand it to the app;
 * - `duplicate`: at or before the current position: drop it;
 * - `gap`: events are missing between the position and this one, or the
 *   epoch changed without a `resync`: continuity is not proven, resume.
 */
export type Verdict = "deliver" | "duplicate" | "gap";
export declare function classify(current: Position | null, event: Position): Verdict;
/** True when `value` looks like a position (a non-negative integer offset and a string epoch). */
export declare function isPosition(value: unknown): value is Position;
