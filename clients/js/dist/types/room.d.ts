/** A room as the app sees it: handlers, publish, presence, leave. */
import { type Position } from "./position.js";
import { HeraldError, type PresenceMember } from "./protocol.js";
/** One event delivered to the app. */
export interface HeraldEvent {
    room: string;
    event: string;
    data: unknown;
    offset: number;
    epoch: string;
    /** Publish time, ms since the Unix epoch. */
    ts: number;
    /** The notification id, on notification events (`user:` rooms). */
    notification?: string;
}
/**
 * Continuity in the room was lost: refetch its state from the application,
 * then carry on with the events that follow. `reason` is `resync` when the
 * server said so, `not_recovered` when a resume could not replay what was
 * missed (history gone or too old, e.g. after a server restart).
 */
export interface ResyncInfo {
    room: string;
    offset: number;
    epoch: string;
    reason: "resync" | "not_recovered";
}
export interface JoinedInfo {
    room: string;
    offset: number;
    epoch: string;
    /** Present when the join resumed from a position: whether every missed event was replayed. */
    recovered?: boolean;
}
export interface MemberInfo {
    room: string;
    user: string;
    state: "joined" | "left";
}
export interface PublishOptions {
    /** How long to wait for the server's `ack` once sent (default: the client's `publishTimeoutMs`). */
    timeoutMs?: number;
}
/** What a room asks of its client. */
export interface RoomHost {
    publish(room: Room, event: string, data: unknown, timeoutMs: number | undefined): Promise<Position>;
    presence(room: Room): Promise<PresenceMember[]>;
    leave(room: Room): Promise<void>;
}
type EventHandler = (data: unknown, event: HeraldEvent) => void;
/** How the room stands with the client. */
export type RoomStatus = "active" | "left" | "failed";
export declare class Room {
    readonly name: string;
    private readonly host;
    private readonly handlers;
    private readonly lifecycle;
    /** The last position seen in this room (`null` before the first join). */
    get position(): Position | null;
    /** True while the current connection is in the room. */
    get joined(): boolean;
    /** `active`, `left` (by `leave()` or by the server) or `failed` (the join was refused). */
    get status(): RoomStatus;
    /** Calls `handler(data, event)` for events named `event`, or for every event with `"*"`. Returns an unsubscribe function. */
    on(event: string, handler: EventHandler): () => void;
    off(event: string, handler: EventHandler): void;
    /** Continuity was lost: refetch this room's state from the application. */
    onResync(handler: (info: ResyncInfo) => void): () => void;
    /** Each `joined`: the first join and every resume after a reconnection. */
    onJoined(handler: (info: JoinedInfo) => void): () => void;
    /** Another user's first connection joined, or last one left (rooms with `join_leave`). */
    onMember(handler: (info: MemberInfo) => void): () => void;
    /** The room was left: `request`, `revoked` or `unsubscribed`. */
    onLeft(handler: (reason: string) => void): () => void;
    /** The join was refused (`forbidden`, `bad_request`, …); the room will not be retried. */
    onError(handler: (error: HeraldError) => void): () => void;
    /**
     * Publishes from the client (the room's policy must allow it). Settles
     * with the event's position on `ack`, or fails with the server's error,
     * `timeout`, `disconnected` (lost before the ack: it may or may not have
     * been delivered), `queue_full` or `closed`. While disconnected the
     * publish waits in the offline queue and is sent, in order, on reconnect.
     */
    publish(event: string, data: unknown, options?: PublishOptions): Promise<Position>;
    /** Who is in the room now (rooms with `presence`). */
    presence(): Promise<PresenceMember[]>;
    /** Leaves the room; handlers stop being called. */
    leave(): Promise<void>;
}
export {};
