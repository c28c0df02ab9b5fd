/** A room as the app sees it: handlers, publish, presence, leave. */

import { Emitter, reportHandlerError } from "./emitter.js";
import { classify, type Position, type Verdict } from "./position.js";
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

type RoomEvents = {
  resync: (info: ResyncInfo) => void;
  joined: (info: JoinedInfo) => void;
  member: (info: MemberInfo) => void;
  left: (reason: string) => void;
  error: (error: HeraldError) => void;
};

/** How the room stands with the client. */
export type RoomStatus = "active" | "left" | "failed";

export class Room {
  private readonly handlers = new Map<string, Set<EventHandler>>();
  private readonly lifecycle = new Emitter<RoomEvents>();
  /** @internal */ _position: Position | null;
  /** @internal */ _joined = false;
  /** @internal */ _status: RoomStatus = "active";
  /** @internal Joined on some connection already (so a position-less resume cannot prove continuity). */
  _wasLive = false;

  /** @internal */
  constructor(
    readonly name: string,
    private readonly host: RoomHost,
    since: Position | null,
  ) {
    this._position = since;
  }

  /** The last position seen in this room (`null` before the first join). */
  get position(): Position | null {
    return this._position ? { ...this._position } : null;
  }

  /** True while the current connection is in the room. */
  get joined(): boolean {
    return this._joined;
  }

  /** `active`, `left` (by `leave()` or by the server) or `failed` (the join was refused). */
  get status(): RoomStatus {
    return this._status;
  }

  /** Calls `handler(data, event)` for events named `event`, or for every event with `"*"`. Returns an unsubscribe function. */
  on(event: string, handler: EventHandler): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(handler);
    return () => this.off(event, handler);
  }

  off(event: string, handler: EventHandler): void {
    this.handlers.get(event)?.delete(handler);
  }

  /** Continuity was lost: refetch this room's state from the application. */
  onResync(handler: (info: ResyncInfo) => void): () => void {
    return this.lifecycle.on("resync", handler);
  }

  /** Each `joined`: the first join and every resume after a reconnection. */
  onJoined(handler: (info: JoinedInfo) => void): () => void {
    return this.lifecycle.on("joined", handler);
  }

  /** Another user's first connection joined, or last one left (rooms with `join_leave`). */
  onMember(handler: (info: MemberInfo) => void): () => void {
    return this.lifecycle.on("member", handler);
  }

  /** The room was left: `request`, `revoked` or `unsubscribed`. */
  onLeft(handler: (reason: string) => void): () => void {
    return this.lifecycle.on("left", handler);
  }

  /** The join was refused (`forbidden`, `bad_request`, …); the room will not be retried. */
  onError(handler: (error: HeraldError) => void): () => void {
    return this.lifecycle.on("error", handler);
  }

  /**
   * Publishes from the client (the room's policy must allow it). Settles
   * with the event's position on `ack`, or fails with the server's error,
   * `timeout`, `disconnected` (lost before the ack: it may or may not have
   * been delivered), `queue_full` or `closed`. While disconnected the
   * publish waits in the offline queue and is sent, in order, on reconnect.
   */
  publish(event: string, data: unknown, options: PublishOptions = {}): Promise<Position> {
    if (this._status !== "active") {
      return Promise.reject(new HeraldError(this._status, `room ${this.name} is ${this._status}`));
    }
    return this.host.publish(this, event, data, options.timeoutMs);
  }

  /** Who is in the room now (rooms with `presence`). */
  presence(): Promise<PresenceMember[]> {
    return this.host.presence(this);
  }

  /** Leaves the room; handlers stop being called. */
  leave(): Promise<void> {
    if (this._status !== "active") return Promise.resolve();
    return this.host.leave(this);
  }

  /** @internal Classifies and, when it is the next one, delivers an event. */
  _event(frame: HeraldEvent): Verdict {
    const verdict = classify(this._position, frame);
    if (verdict !== "deliver") return verdict;
    this._position = { offset: frame.offset, epoch: frame.epoch };
    const event: HeraldEvent = {
      room: frame.room,
      event: frame.event,
      data: frame.data,
      offset: frame.offset,
      epoch: frame.epoch,
      ts: frame.ts,
    };
    if (frame.notification !== undefined) event.notification = frame.notification;
    for (const key of [frame.event, "*"]) {
      const set = this.handlers.get(key);
      if (!set) continue;
      for (const handler of [...set]) {
        try {
          handler(event.data, event);
        } catch (e) {
          reportHandlerError(e);
        }
      }
    }
    return verdict;
  }

  /** @internal `hadPosition`: whether the join resumed from a real position. */
  _joinedFrame(position: Position, recovered: boolean | undefined, hadPosition: boolean): void {
    this._joined = true;
    this._position = { offset: position.offset, epoch: position.epoch };
    const info: JoinedInfo = { room: this.name, offset: position.offset, epoch: position.epoch };
    if (recovered !== undefined && hadPosition) info.recovered = recovered;
    this.lifecycle.emit("joined", info);
    if (recovered === false && hadPosition) {
      this.lifecycle.emit("resync", { room: this.name, ...position, reason: "not_recovered" });
    }
  }

  /** @internal */
  _resync(position: Position): void {
    this._position = { offset: position.offset, epoch: position.epoch };
    this.lifecycle.emit("resync", { room: this.name, ...position, reason: "resync" });
  }

  /** @internal */
  _member(info: MemberInfo): void {
    this.lifecycle.emit("member", info);
  }

  /** @internal */
  _left(reason: string): void {
    this._joined = false;
    this._status = "left";
    this.lifecycle.emit("left", reason);
  }

  /** @internal */
  _failed(error: HeraldError): void {
    this._joined = false;
    this._status = "failed";
    this.lifecycle.emit("error", error);
  }
}
