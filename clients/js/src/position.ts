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

export function classify(current: Position | null, event: Position): Verdict {
  if (current === null) return "deliver";
  if (event.epoch !== current.epoch) return "gap";
  if (event.offset <= current.offset) return "duplicate";
  if (event.offset === current.offset + 1) return "deliver";
  return "gap";
}

/** True when `value` looks like a position (a non-negative integer offset and a string epoch). */
export function isPosition(value: unknown): value is Position {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.offset === "number" && Number.isInteger(v.offset) && v.offset >= 0 && typeof v.epoch === "string"
  );
}
