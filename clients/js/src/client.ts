/**
 * `HeraldClient`: one WebSocket to Herald, kept alive across drains,
 * restarts and network cuts, with every room resumed from its last position
 * so that nothing history still holds is lost or delivered twice.
 */

import { Backoff, backoffDelay, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { decodeJwtClaims, refreshDelay, type TokenClaims } from "./jwt.js";
import { isPosition, type Position } from "./position.js";
import {
  CloseCodes,
  HeraldError,
  type AckFrame,
  type ErrorFrame,
  type EventFrame,
  type JoinedFrame,
  type LeftFrame,
  type MemberFrame,
  type PongFrame,
  type PresenceFrame,
  type PresenceMember,
  type ResyncFrame,
  type WelcomeFrame,
} from "./protocol.js";
import { OfflineQueue } from "./queue.js";
import { Room, type RoomHost } from "./room.js";

/** The part of the browser's `WebSocket` the client uses (inject another for tests or Node). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Where the connection stands. */
export type ConnectionState =
  | { status: "connecting" }
  | { status: "open"; user: string; conn: string; node: string }
  | {
      status: "reconnecting";
      /** 1 for the first retry after a loss, then 2, 3, … until a connection stays up. */
      attempt: number;
      /** How long this retry waits before connecting. */
      delayMs: number;
      /** Why the last connection ended (close code; 1006 for a network loss, 0 when none was opened). */
      code: number;
      reason: string;
    }
  | { status: "closed"; code: number; reason: string };

export interface WelcomeInfo {
  user: string;
  conn: string;
  node: string;
  /** The automatic rooms: `user:<sub>`, `role:<r>`…, `broadcast`. */
  rooms: string[];
  heartbeatMs: number;
}

export interface HeraldClientOptions {
  /** The gateway's WebSocket endpoint, e.g. `wss://rt.example.com/ws` (or `/ws`, relative to the page). */
  url: string;
  /** Returns a JWT; called at every connect, after a 4003, and before `exp` to refresh in place. */
  getToken: () => string | Promise<string>;
  /** Connect at once (default true); otherwise call `connect()`. */
  autoConnect?: boolean;
  /** Reconnection backoff (full jitter): `baseMs` 500, `capMs` 30 000. */
  backoff?: BackoffOptions;
  /** A connection open this long resets the backoff (default 10 000 ms). */
  stableAfterMs?: number;
  /** Round-trip measurement interval (default 5 000 ms). */
  pingIntervalMs?: number;
  /** A ping unanswered this long means the connection is dead: drop it and resume (default 2 × pingIntervalMs). */
  deadAfterMs?: number;
  /** Opening plus `welcome` must take less than this (default 10 000 ms). */
  connectTimeoutMs?: number;
  /** Default wait for a publish's `ack` once sent (default 10 000 ms). */
  publishTimeoutMs?: number;
  /** Wait for `presence` and `leave` answers (default 10 000 ms). */
  requestTimeoutMs?: number;
  /** Publishes kept while disconnected; the oldest is rejected when full (default 100). */
  offlineQueueSize?: number;
  /** Refresh the token this long before `exp` (default 30 000 ms; at most half its remaining life). */
  refreshBeforeExpiryMs?: number;
  /** A `WebSocket` implementation (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /** Random numbers in [0, 1) for the jitter (default `Math.random`). */
  random?: () => number;
}

export interface RoomOptions {
  /** Resume from a position the app kept (e.g. across a page reload). */
  since?: Position;
}

type ClientEvents = {
  state: (state: ConnectionState) => void;
  rtt: (ms: number) => void;
  welcome: (info: WelcomeInfo) => void;
  /** Server errors that belong to no request, and failed token refreshes. */
  error: (error: HeraldError) => void;
};

interface QueuedPublish {
  room: Room;
  event: string;
  data: unknown;
  timeoutMs: number | undefined;
  resolve: (position: Position) => void;
  reject: (error: HeraldError) => void;
}

interface PendingRequest {
  kind: "publish" | "presence" | "leave" | "refresh";
  resolve: (value: never) => void;
  reject: (error: HeraldError) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface JoinRequest {
  room: Room;
  hadPosition: boolean;
}

const OPEN = 1;
/** setTimeout's longest delay. */
const MAX_TIMER_MS = 2_000_000_000;
/** An epoch no room has: resuming from it learns the room's position without replaying anything. */
const UNKNOWN: Position = { offset: 0, epoch: "" };

function now(): number {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function resolveUrl(url: string): string {
  const loc = (globalThis as { location?: { href: string } }).location;
  if (/^wss?:\/\//i.test(url) || !loc) return url;
  const u = new URL(url, loc.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.toString();
}

export class HeraldClient {
  private readonly url: string;
  private readonly getToken: () => string | Promise<string>;
  private readonly WS: WebSocketConstructor;
  private readonly backoff: Backoff;
  private readonly backoffOptions: BackoffOptions;
  private readonly random: () => number;
  private readonly stableAfterMs: number;
  private readonly pingIntervalMs: number;
  private readonly deadAfterMs: number;
  private readonly connectTimeoutMs: number;
  private readonly publishTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private readonly refreshBeforeMs: number;

  private readonly events = new Emitter<ClientEvents>();
  private readonly roomMap = new Map<string, Room>();
  private readonly queue: OfflineQueue<QueuedPublish>;
  private readonly host: RoomHost;

  private _state: ConnectionState = { status: "closed", code: 0, reason: "not connected" };
  private _rtt: number | null = null;
  private _welcome: WelcomeInfo | null = null;
  /** True when the client will not connect by itself: never started, closed, or a terminal close code. */
  private stopped = true;
  /** Bumped whenever the current socket is abandoned, so that its late callbacks are ignored. */
  private gen = 0;
  private ws: WebSocketLike | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, PendingRequest>();
  private readonly joins = new Map<number, JoinRequest>();
  /** Rooms resumed in `hello`, and whether each from a real position. */
  private resumed = new Map<string, boolean>();
  private autoRooms = new Set<string>();
  private claims: TokenClaims | null = null;
  private token: string | null = null;
  private awaitingPong = false;
  private pingSentAt = 0;

  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private stableTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private readonly joinRetryTimers = new Set<ReturnType<typeof setTimeout>>();
  private readonly joinAttempts = new WeakMap<Room, number>();

  constructor(options: HeraldClientOptions) {
    if (!options || typeof options.url !== "string" || typeof options.getToken !== "function") {
      throw new TypeError("HeraldClient needs { url, getToken }");
    }
    this.url = resolveUrl(options.url);
    this.getToken = options.getToken;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    this.WS = WS;
    this.random = options.random ?? Math.random;
    this.backoffOptions = options.backoff ?? {};
    this.backoff = new Backoff(this.backoffOptions, this.random);
    this.stableAfterMs = options.stableAfterMs ?? 10_000;
    this.pingIntervalMs = options.pingIntervalMs ?? 5_000;
    this.deadAfterMs = options.deadAfterMs ?? 2 * this.pingIntervalMs;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.publishTimeoutMs = options.publishTimeoutMs ?? 10_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.refreshBeforeMs = options.refreshBeforeExpiryMs ?? 30_000;
    this.queue = new OfflineQueue(options.offlineQueueSize ?? 100);
    this.host = {
      publish: (room, event, data, timeoutMs) => this.publish(room, event, data, timeoutMs),
      presence: (room) => this.presence(room),
      leave: (room) => this.leave(room),
    };
    if (options.autoConnect ?? true) this.connect();
  }

  /** The browser says the network is back: do not wait out the backoff. */
  private readonly onOnline = (): void => {
    if (!this.stopped && this.reconnectTimer !== undefined) this.reconnect();
  };

  private watching = false;

  private watchNetwork(on: boolean): void {
    const g = globalThis as {
      addEventListener?: (type: string, fn: () => void) => void;
      removeEventListener?: (type: string, fn: () => void) => void;
    };
    if (on === this.watching || typeof g.addEventListener !== "function") return;
    if (on) g.addEventListener("online", this.onOnline);
    else g.removeEventListener?.("online", this.onOnline);
    this.watching = on;
  }

  // ---- public API ----------------------------------------------------------

  /** The connection state now. */
  get state(): ConnectionState {
    return { ...this._state };
  }

  /** The last measured round trip in ms, or `null` before the first. */
  get rtt(): number | null {
    return this._rtt;
  }

  /** The current connection's `welcome`, or `null` while not open. */
  get welcome(): WelcomeInfo | null {
    return this._welcome;
  }

  /** The rooms the client holds (joined or to be joined). */
  get rooms(): Room[] {
    return [...this.roomMap.values()];
  }

  /** Publishes waiting in the offline queue. */
  get queuedPublishes(): number {
    return this.queue.size;
  }

  on<K extends keyof ClientEvents>(name: K, handler: ClientEvents[K]): () => void {
    return this.events.on(name, handler);
  }

  off<K extends keyof ClientEvents>(name: K, handler: ClientEvents[K]): void {
    this.events.off(name, handler);
  }

  /**
   * The room `name`, joined now (or on connect) and after every reconnect,
   * resumed from its last position. The same object for the same name until
   * it is left.
   */
  room(name: string, options: RoomOptions = {}): Room {
    const existing = this.roomMap.get(name);
    if (existing) return existing;
    const since = options.since && isPosition(options.since) ? { ...options.since } : null;
    const room = new Room(name, this.host, since);
    this.roomMap.set(name, room);
    if (this.isOpen()) {
      if (this.autoRooms.has(name)) room._joined = true;
      else this.sendJoin(room);
    }
    return room;
  }

  /** Starts connecting (after `autoConnect: false`, a `close()` or a terminal close code). */
  connect(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.watchNetwork(true);
    this.backoff.reset();
    this.setState({ status: "connecting" });
    void this.attempt();
  }

  /** Drops the connection and resumes at once (or connects now if waiting to retry). */
  reconnect(): void {
    if (this.stopped) return this.connect();
    if (this.ws) return this.drop(CloseCodes.CLIENT_RESUME, "reconnect requested");
    if (this.reconnectTimer !== undefined) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = undefined;
      void this.attempt();
    }
  }

  /** Closes for good: no reconnection; queued and pending publishes are rejected with `closed`. */
  close(): void {
    if (this.stopped && this._state.status === "closed") return;
    this.stopped = true;
    this.watchNetwork(false);
    this.teardown(CloseCodes.NORMAL, "closed by the client", "closed");
    this.rejectQueued(() => true, "closed", "the client was closed");
    this.setState({ status: "closed", code: CloseCodes.NORMAL, reason: "closed by the client" });
  }

  // ---- connecting ----------------------------------------------------------

  private async attempt(): Promise<void> {
    const gen = ++this.gen;
    let token: string;
    try {
      token = await this.getToken();
    } catch (e) {
      if (gen === this.gen && !this.stopped) this.retry(0, `getToken failed: ${errorText(e)}`);
      return;
    }
    if (gen !== this.gen || this.stopped) return;
    if (typeof token !== "string" || token === "") {
      this.retry(0, "getToken returned no token");
      return;
    }
    this.token = token;
    this.claims = decodeJwtClaims(token);
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.url);
    } catch (e) {
      this.retry(0, `cannot open ${this.url}: ${errorText(e)}`);
      return;
    }
    this.ws = ws;
    this.connectTimer = setTimeout(() => {
      if (gen === this.gen) this.drop(CloseCodes.CLIENT_RESUME, "connection timed out");
    }, this.connectTimeoutMs);
    ws.onopen = () => {
      if (gen === this.gen) this.sendHello(token);
    };
    ws.onmessage = (event) => {
      if (gen === this.gen) this.receive(event.data);
    };
    ws.onclose = (event) => {
      if (gen === this.gen) this.disconnected(event.code, event.reason);
    };
    ws.onerror = () => {
      // A close event follows with the code.
    };
  }

  /** The automatic rooms this token will get, as far as the client can tell before `welcome`. */
  private expectedAutoRooms(): Set<string> {
    const claims = this.claims;
    if (!claims || claims.sub === undefined) return this.autoRooms;
    const rooms = new Set([`user:${claims.sub}`, "broadcast"]);
    for (const role of claims.roles ?? []) rooms.add(`role:${role}`);
    return rooms;
  }

  private sendHello(token: string): void {
    const resume: Record<string, Position> = {};
    this.resumed = new Map();
    const auto = this.expectedAutoRooms();
    for (const room of this.roomMap.values()) {
      if (room._status !== "active" || !auto.has(room.name)) continue;
      if (room._position) {
        resume[room.name] = room._position;
        this.resumed.set(room.name, true);
      } else if (this.claims) {
        // Learns the position; a room that was already live without one
        // cannot prove continuity, so its `recovered:false` is a resync.
        resume[room.name] = UNKNOWN;
        this.resumed.set(room.name, room._wasLive);
      }
    }
    const hello: Record<string, unknown> = { op: "hello", token };
    if (Object.keys(resume).length > 0) hello.resume = resume;
    this.send(hello);
  }

  private retry(code: number, reason: string): void {
    const attempt = this.backoff.attempt + 1;
    const delayMs = this.backoff.next();
    this.setState({ status: "reconnecting", attempt, delayMs, code, reason });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (!this.stopped) void this.attempt();
    }, delayMs);
  }

  /** Abandons the current socket and handles it as lost. */
  private drop(code: number, reason: string): void {
    this.disconnected(code, reason);
  }

  /** The connection ended (closed by the server, lost, or dropped by us). */
  private disconnected(code: number, reason: string): void {
    this.teardown(code, reason, "disconnected");
    if (this.stopped) return;
    if (code === CloseCodes.KICKED || code === CloseCodes.UNAUTHORIZED) {
      // Disconnected through the server API, or the token was refused:
      // reconnecting would not help (PROTOCOL.md §1.3).
      this.stopped = true;
      this.rejectQueued(() => true, "closed", `connection closed with ${code}: ${reason}`);
      this.setState({ status: "closed", code, reason });
      return;
    }
    this.retry(code, reason);
  }

  /** Closes the socket if any, stops its timers, and fails what waited on it. */
  private teardown(code: number, reason: string, pendingCode: string): void {
    this.gen += 1;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        if (ws.readyState <= OPEN) ws.close(code >= 4000 || code === 1000 ? code : 1000, reason.slice(0, 100));
      } catch {
        // Already closing.
      }
    }
    for (const timer of [this.reconnectTimer, this.connectTimer, this.stableTimer, this.refreshTimer]) {
      if (timer !== undefined) clearTimeout(timer);
    }
    this.reconnectTimer = this.connectTimer = this.stableTimer = this.refreshTimer = undefined;
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    for (const timer of this.joinRetryTimers) clearTimeout(timer);
    this.joinRetryTimers.clear();
    this.joins.clear();
    this._welcome = null;
    for (const room of this.roomMap.values()) room._joined = false;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      if (p.kind === "leave" || p.kind === "refresh") (p.resolve as () => void)();
      else
        p.reject(
          new HeraldError(
            pendingCode,
            p.kind === "publish"
              ? "the connection was lost before the ack: the publish may or may not have been delivered"
              : "the connection was lost before the answer",
          ),
        );
    }
  }

  // ---- receiving -----------------------------------------------------------

  private receive(raw: unknown): void {
    this.awaitingPong = false;
    if (typeof raw !== "string") return;
    let frame: { op?: unknown };
    try {
      frame = JSON.parse(raw) as { op?: unknown };
    } catch {
      return;
    }
    if (typeof frame !== "object" || frame === null) return;
    switch (frame.op) {
      case "welcome":
        return this.onWelcome(frame as WelcomeFrame);
      case "event":
        return this.onEvent(frame as EventFrame);
      case "joined":
        return this.onJoined(frame as JoinedFrame);
      case "left":
        return this.onLeft(frame as LeftFrame);
      case "member":
        return this.onMember(frame as MemberFrame);
      case "resync":
        return this.onResync(frame as ResyncFrame);
      case "ack":
        return this.onAck(frame as AckFrame);
      case "pong":
        return this.onPong(frame as PongFrame);
      case "presence":
        return this.onPresence(frame as PresenceFrame);
      case "error":
        return this.onError(frame as ErrorFrame);
      default:
        // Unknown ops are ignored (forward compatibility).
        return;
    }
  }

  private onWelcome(frame: WelcomeFrame): void {
    if (this.connectTimer !== undefined) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    const rooms = Array.isArray(frame.rooms) ? frame.rooms.filter((r) => typeof r === "string") : [];
    this.autoRooms = new Set(rooms);
    this._welcome = {
      user: frame.user,
      conn: frame.conn,
      node: frame.node,
      rooms,
      heartbeatMs: frame.heartbeat_ms,
    };
    this.setState({ status: "open", user: frame.user, conn: frame.conn, node: frame.node });
    this.events.emit("welcome", { ...this._welcome, rooms: [...rooms] });
    if (!this.isOpen()) return; // a handler closed the client
    for (const room of this.roomMap.values()) {
      if (room._status !== "active") continue;
      if (this.autoRooms.has(room.name)) {
        room._joined = true;
        room._wasLive = true;
      } else {
        this.sendJoin(room);
      }
    }
    this.flushQueue();
    this.startPing();
    const gen = this.gen;
    this.stableTimer = setTimeout(() => {
      if (gen === this.gen) this.backoff.reset();
    }, this.stableAfterMs);
    this.scheduleRefresh();
  }

  private onEvent(frame: EventFrame): void {
    const room = this.roomMap.get(frame.room);
    if (!room || room._status !== "active" || !isPosition(frame)) return;
    const expected = room._position;
    const verdict = room._event(frame);
    if (verdict === "gap") {
      // The server promises no gaps; if one shows anyway, do not skip it:
      // resume from the last position seen, which replays or resyncs.
      const want = expected ? `${expected.offset + 1}@${expected.epoch}` : "?";
      this.drop(CloseCodes.CLIENT_RESUME, `gap in ${frame.room}: expected ${want}, got ${frame.offset}@${frame.epoch}`);
    }
  }

  private onJoined(frame: JoinedFrame): void {
    if (!isPosition(frame)) return;
    let request: JoinRequest | undefined;
    if (typeof frame.id === "number") {
      request = this.joins.get(frame.id);
      this.joins.delete(frame.id);
    }
    const room = request ? request.room : this.roomMap.get(frame.room);
    if (!room || room._status !== "active" || room.name !== frame.room) return;
    if (this.roomMap.get(room.name) !== room) return;
    const hadPosition = request ? request.hadPosition : (this.resumed.get(room.name) ?? false);
    this.joinAttempts.delete(room);
    room._wasLive = true;
    room._joinedFrame({ offset: frame.offset, epoch: frame.epoch }, frame.recovered, hadPosition);
  }

  private onLeft(frame: LeftFrame): void {
    if (typeof frame.id === "number") {
      const p = this.pending.get(frame.id);
      if (p && p.kind === "leave") {
        this.pending.delete(frame.id);
        clearTimeout(p.timer);
        (p.resolve as () => void)();
      }
    }
    if (frame.reason === "request") return;
    const room = this.roomMap.get(frame.room);
    if (!room) return;
    this.roomMap.delete(frame.room);
    this.rejectQueued((q) => q.room === room, "left", `room ${room.name} was left: ${frame.reason}`);
    room._left(frame.reason);
  }

  private onMember(frame: MemberFrame): void {
    this.roomMap.get(frame.room)?._member({ room: frame.room, user: frame.user, state: frame.state });
  }

  private onResync(frame: ResyncFrame): void {
    if (!isPosition(frame)) return;
    const room = this.roomMap.get(frame.room);
    if (room && room._status === "active") room._resync({ offset: frame.offset, epoch: frame.epoch });
  }

  private onAck(frame: AckFrame): void {
    const p = this.pending.get(frame.id);
    if (!p) return;
    this.pending.delete(frame.id);
    clearTimeout(p.timer);
    if (p.kind === "publish") {
      (p.resolve as (position: Position) => void)({ offset: frame.offset ?? 0, epoch: frame.epoch ?? "" });
    } else {
      (p.resolve as () => void)();
    }
  }

  private onPong(frame: PongFrame): void {
    if (typeof frame.t !== "number") return;
    this._rtt = Math.max(0, Math.round((now() - frame.t) * 10) / 10);
    this.events.emit("rtt", this._rtt);
  }

  private onPresence(frame: PresenceFrame): void {
    const p = this.pending.get(frame.id);
    if (!p || p.kind !== "presence") return;
    this.pending.delete(frame.id);
    clearTimeout(p.timer);
    (p.resolve as (m: PresenceMember[]) => void)(Array.isArray(frame.members) ? frame.members : []);
  }

  private onError(frame: ErrorFrame): void {
    const error = new HeraldError(String(frame.code), String(frame.message ?? ""), frame.retry_after_ms);
    if (typeof frame.id === "number") {
      const join = this.joins.get(frame.id);
      if (join) {
        this.joins.delete(frame.id);
        return this.joinFailed(join.room, error);
      }
      const p = this.pending.get(frame.id);
      if (p) {
        this.pending.delete(frame.id);
        clearTimeout(p.timer);
        if (p.kind === "leave") (p.resolve as () => void)();
        else p.reject(error);
        if (p.kind === "refresh") this.events.emit("error", error);
        return;
      }
    }
    this.events.emit("error", error);
  }

  // ---- rooms ---------------------------------------------------------------

  private sendJoin(room: Room): void {
    const id = this.nextId++;
    const since = room._position;
    this.joins.set(id, { room, hadPosition: since !== null });
    const frame: Record<string, unknown> = { op: "join", id, room: room.name };
    if (since) frame.since = since;
    this.send(frame);
  }

  private joinFailed(room: Room, error: HeraldError): void {
    if (room._status !== "active" || this.roomMap.get(room.name) !== room) return;
    if (error.code === "rate_limited" || error.code === "unavailable" || error.code === "internal") {
      // Transient: try again on this connection.
      const attempts = this.joinAttempts.get(room) ?? 0;
      this.joinAttempts.set(room, attempts + 1);
      const delay = error.retryAfterMs ?? backoffDelay(attempts + 1, this.backoffOptions, this.random);
      const gen = this.gen;
      const timer = setTimeout(() => {
        this.joinRetryTimers.delete(timer);
        if (gen === this.gen && this.isOpen() && room._status === "active" && !room._joined) this.sendJoin(room);
      }, Math.min(delay, 30_000));
      this.joinRetryTimers.add(timer);
      return;
    }
    this.roomMap.delete(room.name);
    this.rejectQueued((q) => q.room === room, error.code, `room ${room.name}: ${error.message}`);
    room._failed(error);
  }

  private publish(room: Room, event: string, data: unknown, timeoutMs: number | undefined): Promise<Position> {
    return new Promise<Position>((resolve, reject) => {
      if (this.stopped) {
        reject(new HeraldError("closed", "the client is closed"));
        return;
      }
      const item: QueuedPublish = { room, event, data: data === undefined ? null : data, timeoutMs, resolve, reject };
      if (this.isOpen()) {
        this.sendPublish(item);
        return;
      }
      for (const evicted of this.queue.push(item)) {
        evicted.reject(new HeraldError("queue_full", "the offline queue is full: the oldest publish was dropped"));
      }
    });
  }

  private sendPublish(item: QueuedPublish): void {
    const id = this.nextId++;
    const timer = setTimeout(() => {
      if (this.pending.delete(id)) item.reject(new HeraldError("timeout", "no ack from the server in time"));
    }, item.timeoutMs ?? this.publishTimeoutMs);
    this.pending.set(id, { kind: "publish", resolve: item.resolve as (v: never) => void, reject: item.reject, timer });
    this.send({ op: "publish", id, room: item.room.name, event: item.event, data: item.data });
  }

  private flushQueue(): void {
    for (const item of this.queue.drain()) {
      if (item.room._status === "active" && this.roomMap.get(item.room.name) === item.room) this.sendPublish(item);
      else item.reject(new HeraldError(item.room._status, `room ${item.room.name} is ${item.room._status}`));
    }
  }

  private rejectQueued(select: (item: QueuedPublish) => boolean, code: string, message: string): void {
    for (const item of this.queue.removeWhere(select)) item.reject(new HeraldError(code, message));
  }

  private request<T>(kind: "presence" | "leave" | "refresh", frame: Record<string, unknown>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const id = this.nextId++;
      const timer = setTimeout(() => {
        if (!this.pending.delete(id)) return;
        if (kind === "leave") (resolve as () => void)();
        else reject(new HeraldError("timeout", `no answer to ${kind} in time`));
      }, this.requestTimeoutMs);
      this.pending.set(id, { kind, resolve: resolve as (v: never) => void, reject, timer });
      this.send({ ...frame, id });
    });
  }

  private presence(room: Room): Promise<PresenceMember[]> {
    if (!this.isOpen()) return Promise.reject(new HeraldError("disconnected", "not connected"));
    return this.request<PresenceMember[]>("presence", { op: "presence", room: room.name });
  }

  private leave(room: Room): Promise<void> {
    if (this.roomMap.get(room.name) === room) this.roomMap.delete(room.name);
    this.rejectQueued((q) => q.room === room, "left", `room ${room.name} was left`);
    const wasJoined = room._joined;
    room._left("request");
    if (!this.isOpen() || (!wasJoined && ![...this.joins.values()].some((j) => j.room === room))) {
      return Promise.resolve();
    }
    return this.request<void>("leave", { op: "leave", room: room.name });
  }

  // ---- heartbeat and token refresh -------------------------------------------

  private startPing(): void {
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    this.sendPing();
    this.pingTimer = setInterval(() => this.pingTick(), this.pingIntervalMs);
  }

  private pingTick(): void {
    if (this.awaitingPong) {
      if (now() - this.pingSentAt >= this.deadAfterMs) {
        this.drop(CloseCodes.CLIENT_RESUME, "no answer from the server");
      }
      return;
    }
    this.sendPing();
  }

  private sendPing(): void {
    this.pingSentAt = now();
    this.awaitingPong = true;
    this.send({ op: "ping", t: Math.round(this.pingSentAt * 1000) / 1000 });
  }

  private scheduleRefresh(): void {
    if (this.refreshTimer !== undefined) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    const exp = this.claims?.exp;
    if (exp === undefined) return;
    const delay = refreshDelay(exp, Date.now(), this.refreshBeforeMs);
    const gen = this.gen;
    this.refreshTimer = setTimeout(
      () => {
        this.refreshTimer = undefined;
        if (gen !== this.gen) return;
        if (delay > MAX_TIMER_MS) this.scheduleRefresh();
        else void this.refresh(gen);
      },
      Math.min(delay, MAX_TIMER_MS),
    );
  }

  private async refresh(gen: number): Promise<void> {
    let token: string;
    try {
      token = await this.getToken();
    } catch (e) {
      if (gen !== this.gen) return;
      this.events.emit("error", new HeraldError("unauthorized", `token refresh failed: ${errorText(e)}`));
      this.refreshTimer = setTimeout(() => void this.refresh(gen), 5_000);
      return;
    }
    if (gen !== this.gen || !this.isOpen()) return;
    if (typeof token !== "string" || token === "" || token === this.token) {
      // Nothing new yet; ask again shortly (the server closes with 4003 at expiry, and we reconnect).
      this.refreshTimer = setTimeout(() => void this.refresh(gen), 5_000);
      return;
    }
    try {
      await this.request<void>("refresh", { op: "refresh", token });
    } catch {
      return; // `unauthorized` is followed by a 4001 close; a timeout by the dead-connection check.
    }
    if (gen !== this.gen) return;
    this.token = token;
    this.claims = decodeJwtClaims(token);
    this.scheduleRefresh();
  }

  // ---- helpers ---------------------------------------------------------------

  private isOpen(): boolean {
    return this._state.status === "open" && this.ws !== null && this.ws.readyState === OPEN;
  }

  private send(frame: Record<string, unknown>): void {
    const ws = this.ws;
    if (ws && ws.readyState === OPEN) ws.send(JSON.stringify(frame));
  }

  private setState(state: ConnectionState): void {
    this._state = state;
    this.events.emit("state", { ...state });
  }
}
