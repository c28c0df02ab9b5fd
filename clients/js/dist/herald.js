// Herald browser client 0.1.0: built from clients/js/src by scripts/build.mjs; do not edit.

// src/backoff.ts
var DEFAULT_BACKOFF_BASE_MS = 500;
var DEFAULT_BACKOFF_CAP_MS = 3e4;
function backoffCeiling(attempt, options = {}) {
  const base = options.baseMs ?? DEFAULT_BACKOFF_BASE_MS;
  const cap = options.capMs ?? DEFAULT_BACKOFF_CAP_MS;
  const exp = base * Math.pow(2, Math.max(0, Math.min(attempt, 64)));
  return Math.min(cap, exp);
}
function backoffDelay(attempt, options = {}, random = Math.random) {
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.floor(r * backoffCeiling(attempt, options));
}
var Backoff = class {
  constructor(options = {}, random = Math.random) {
    this.options = options;
    this.random = random;
    this.attempts = 0;
  }
  /** Retries handed out since the last reset. */
  get attempt() {
    return this.attempts;
  }
  /** The delay before the next retry; counts the retry. */
  next() {
    const delay = backoffDelay(this.attempts, this.options, this.random);
    this.attempts += 1;
    return delay;
  }
  /** After a stable period: the next retry starts from the base again. */
  reset() {
    this.attempts = 0;
  }
};

// src/emitter.ts
function reportHandlerError(error) {
  const g = globalThis;
  if (typeof g.reportError === "function") g.reportError(error);
  else console.error("herald: an event handler threw", error);
}
var Emitter = class {
  constructor() {
    this.handlers = /* @__PURE__ */ new Map();
  }
  /** Adds `handler`; returns a function that removes it. */
  on(name, handler) {
    let set = this.handlers.get(name);
    if (!set) {
      set = /* @__PURE__ */ new Set();
      this.handlers.set(name, set);
    }
    set.add(handler);
    return () => this.off(name, handler);
  }
  off(name, handler) {
    this.handlers.get(name)?.delete(handler);
  }
  emit(name, ...args) {
    const set = this.handlers.get(name);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(...args);
      } catch (e) {
        reportHandlerError(e);
      }
    }
  }
  clear() {
    this.handlers.clear();
  }
};

// src/jwt.ts
function base64UrlDecode(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - b64.length % 4) % 4);
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}
function decodeJwtClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3 || parts[1] === void 0) return null;
  try {
    const payload = JSON.parse(base64UrlDecode(parts[1]));
    if (typeof payload !== "object" || payload === null || Array.isArray(payload)) return null;
    const p = payload;
    const claims = {};
    if (typeof p.sub === "string") claims.sub = p.sub;
    if (typeof p.exp === "number" && Number.isFinite(p.exp)) claims.exp = p.exp;
    if (Array.isArray(p.roles)) claims.roles = p.roles.filter((r) => typeof r === "string");
    return claims;
  } catch {
    return null;
  }
}
function refreshDelay(expS, nowMs, beforeMs, minMs = 1e3) {
  const remaining = expS * 1e3 - nowMs;
  const ahead = Math.min(beforeMs, remaining / 2);
  return Math.max(minMs, Math.floor(remaining - ahead));
}

// src/position.ts
function classify(current, event) {
  if (current === null) return "deliver";
  if (event.epoch !== current.epoch) return "gap";
  if (event.offset <= current.offset) return "duplicate";
  if (event.offset === current.offset + 1) return "deliver";
  return "gap";
}
function isPosition(value) {
  if (typeof value !== "object" || value === null) return false;
  const v = value;
  return typeof v.offset === "number" && Number.isInteger(v.offset) && v.offset >= 0 && typeof v.epoch === "string";
}

// src/protocol.ts
var CloseCodes = {
  NORMAL: 1e3,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  TOO_LARGE: 1009,
  UNAUTHORIZED: 4001,
  TOKEN_EXPIRED: 4003,
  POLICY_VIOLATION: 4008,
  SLOW_CONSUMER: 4009,
  KICKED: 4010,
  /** Used by this client when it drops a connection itself to resume (a gap, a dead socket). */
  CLIENT_RESUME: 4e3
};
var HeraldError = class extends Error {
  constructor(code, message, retryAfterMs) {
    super(message);
    this.code = code;
    this.retryAfterMs = retryAfterMs;
    this.name = "HeraldError";
  }
};

// src/queue.ts
var OfflineQueue = class {
  constructor(capacity) {
    this.capacity = capacity;
    this.items = [];
    if (!Number.isInteger(capacity) || capacity < 0) {
      throw new RangeError(`offline queue capacity must be a non-negative integer, got ${capacity}`);
    }
  }
  get size() {
    return this.items.length;
  }
  /**
   * Appends `item`; returns the items evicted to make room (the oldest
   * first). With capacity 0 the item itself is returned: nothing is queued.
   */
  push(item) {
    if (this.capacity === 0) return [item];
    this.items.push(item);
    const over = this.items.length - this.capacity;
    return over > 0 ? this.items.splice(0, over) : [];
  }
  /** Removes and returns every item, oldest first. */
  drain() {
    const items = this.items;
    this.items = [];
    return items;
  }
  /** Removes and returns the items `predicate` selects, keeping the order of the rest. */
  removeWhere(predicate) {
    const removed = [];
    this.items = this.items.filter((item) => {
      if (predicate(item)) {
        removed.push(item);
        return false;
      }
      return true;
    });
    return removed;
  }
};

// src/room.ts
var Room = class {
  /** @internal */
  constructor(name, host, since) {
    this.name = name;
    this.host = host;
    this.handlers = /* @__PURE__ */ new Map();
    this.lifecycle = new Emitter();
    /** @internal */
    this._joined = false;
    /** @internal */
    this._status = "active";
    /** @internal Joined on some connection already (so a position-less resume cannot prove continuity). */
    this._wasLive = false;
    this._position = since;
  }
  /** The last position seen in this room (`null` before the first join). */
  get position() {
    return this._position ? { ...this._position } : null;
  }
  /** True while the current connection is in the room. */
  get joined() {
    return this._joined;
  }
  /** `active`, `left` (by `leave()` or by the server) or `failed` (the join was refused). */
  get status() {
    return this._status;
  }
  /** Calls `handler(data, event)` for events named `event`, or for every event with `"*"`. Returns an unsubscribe function. */
  on(event, handler) {
    let set = this.handlers.get(event);
    if (!set) {
      set = /* @__PURE__ */ new Set();
      this.handlers.set(event, set);
    }
    set.add(handler);
    return () => this.off(event, handler);
  }
  off(event, handler) {
    this.handlers.get(event)?.delete(handler);
  }
  /** Continuity was lost: refetch this room's state from the application. */
  onResync(handler) {
    return this.lifecycle.on("resync", handler);
  }
  /** Each `joined`: the first join and every resume after a reconnection. */
  onJoined(handler) {
    return this.lifecycle.on("joined", handler);
  }
  /** Another user's first connection joined, or last one left (rooms with `join_leave`). */
  onMember(handler) {
    return this.lifecycle.on("member", handler);
  }
  /** The room was left: `request`, `revoked` or `unsubscribed`. */
  onLeft(handler) {
    return this.lifecycle.on("left", handler);
  }
  /** The join was refused (`forbidden`, `bad_request`, …); the room will not be retried. */
  onError(handler) {
    return this.lifecycle.on("error", handler);
  }
  /**
   * Publishes from the client (the room's policy must allow it). Settles
   * with the event's position on `ack`, or fails with the server's error,
   * `timeout`, `disconnected` (lost before the ack: it may or may not have
   * been delivered), `queue_full` or `closed`. While disconnected the
   * publish waits in the offline queue and is sent, in order, on reconnect.
   */
  publish(event, data, options = {}) {
    if (this._status !== "active") {
      return Promise.reject(new HeraldError(this._status, `room ${this.name} is ${this._status}`));
    }
    return this.host.publish(this, event, data, options.timeoutMs);
  }
  /** Who is in the room now (rooms with `presence`). */
  presence() {
    return this.host.presence(this);
  }
  /** Leaves the room; handlers stop being called. */
  leave() {
    if (this._status !== "active") return Promise.resolve();
    return this.host.leave(this);
  }
  /** @internal Classifies and, when it is the next one, delivers an event. */
  _event(frame) {
    const verdict = classify(this._position, frame);
    if (verdict !== "deliver") return verdict;
    this._position = { offset: frame.offset, epoch: frame.epoch };
    const event = {
      room: frame.room,
      event: frame.event,
      data: frame.data,
      offset: frame.offset,
      epoch: frame.epoch,
      ts: frame.ts
    };
    if (frame.notification !== void 0) event.notification = frame.notification;
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
  _joinedFrame(position, recovered, hadPosition) {
    this._joined = true;
    this._position = { offset: position.offset, epoch: position.epoch };
    const info = { room: this.name, offset: position.offset, epoch: position.epoch };
    if (recovered !== void 0 && hadPosition) info.recovered = recovered;
    this.lifecycle.emit("joined", info);
    if (recovered === false && hadPosition) {
      this.lifecycle.emit("resync", { room: this.name, ...position, reason: "not_recovered" });
    }
  }
  /** @internal */
  _resync(position) {
    this._position = { offset: position.offset, epoch: position.epoch };
    this.lifecycle.emit("resync", { room: this.name, ...position, reason: "resync" });
  }
  /** @internal */
  _member(info) {
    this.lifecycle.emit("member", info);
  }
  /** @internal */
  _left(reason) {
    this._joined = false;
    this._status = "left";
    this.lifecycle.emit("left", reason);
  }
  /** @internal */
  _failed(error) {
    this._joined = false;
    this._status = "failed";
    this.lifecycle.emit("error", error);
  }
};

// src/client.ts
var OPEN = 1;
var MAX_TIMER_MS = 2e9;
var UNKNOWN = { offset: 0, epoch: "" };
function now() {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}
function errorText(e) {
  return e instanceof Error ? e.message : String(e);
}
function resolveUrl(url) {
  const loc = globalThis.location;
  if (/^wss?:\/\//i.test(url) || !loc) return url;
  const u = new URL(url, loc.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.toString();
}
var HeraldClient = class {
  constructor(options) {
    this.events = new Emitter();
    this.roomMap = /* @__PURE__ */ new Map();
    this._state = { status: "closed", code: 0, reason: "not connected" };
    this._rtt = null;
    this._welcome = null;
    /** True when the client will not connect by itself: never started, closed, or a terminal close code. */
    this.stopped = true;
    /** Bumped whenever the current socket is abandoned, so that its late callbacks are ignored. */
    this.gen = 0;
    this.ws = null;
    this.nextId = 1;
    this.pending = /* @__PURE__ */ new Map();
    this.joins = /* @__PURE__ */ new Map();
    /** Rooms resumed in `hello`, and whether each from a real position. */
    this.resumed = /* @__PURE__ */ new Map();
    this.autoRooms = /* @__PURE__ */ new Set();
    this.claims = null;
    this.token = null;
    this.awaitingPong = false;
    this.pingSentAt = 0;
    this.joinRetryTimers = /* @__PURE__ */ new Set();
    this.joinAttempts = /* @__PURE__ */ new WeakMap();
    /** The browser says the network is back: do not wait out the backoff. */
    this.onOnline = () => {
      if (!this.stopped && this.reconnectTimer !== void 0) this.reconnect();
    };
    this.watching = false;
    if (!options || typeof options.url !== "string" || typeof options.getToken !== "function") {
      throw new TypeError("HeraldClient needs { url, getToken }");
    }
    this.url = resolveUrl(options.url);
    this.getToken = options.getToken;
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (!WS) throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    this.WS = WS;
    this.random = options.random ?? Math.random;
    this.backoffOptions = options.backoff ?? {};
    this.backoff = new Backoff(this.backoffOptions, this.random);
    this.stableAfterMs = options.stableAfterMs ?? 1e4;
    this.pingIntervalMs = options.pingIntervalMs ?? 5e3;
    this.deadAfterMs = options.deadAfterMs ?? 2 * this.pingIntervalMs;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 1e4;
    this.publishTimeoutMs = options.publishTimeoutMs ?? 1e4;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 1e4;
    this.refreshBeforeMs = options.refreshBeforeExpiryMs ?? 3e4;
    this.queue = new OfflineQueue(options.offlineQueueSize ?? 100);
    this.host = {
      publish: (room, event, data, timeoutMs) => this.publish(room, event, data, timeoutMs),
      presence: (room) => this.presence(room),
      leave: (room) => this.leave(room)
    };
    if (options.autoConnect ?? true) this.connect();
  }
  watchNetwork(on) {
    const g = globalThis;
    if (on === this.watching || typeof g.addEventListener !== "function") return;
    if (on) g.addEventListener("online", this.onOnline);
    else g.removeEventListener?.("online", this.onOnline);
    this.watching = on;
  }
  // ---- public API ----------------------------------------------------------
  /** The connection state now. */
  get state() {
    return { ...this._state };
  }
  /** The last measured round trip in ms, or `null` before the first. */
  get rtt() {
    return this._rtt;
  }
  /** The current connection's `welcome`, or `null` while not open. */
  get welcome() {
    return this._welcome;
  }
  /** The rooms the client holds (joined or to be joined). */
  get rooms() {
    return [...this.roomMap.values()];
  }
  /** Publishes waiting in the offline queue. */
  get queuedPublishes() {
    return this.queue.size;
  }
  on(name, handler) {
    return this.events.on(name, handler);
  }
  off(name, handler) {
    this.events.off(name, handler);
  }
  /**
   * The room `name`, joined now (or on connect) and after every reconnect,
   * resumed from its last position. The same object for the same name until
   * it is left.
   */
  room(name, options = {}) {
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
  connect() {
    if (!this.stopped) return;
    this.stopped = false;
    this.watchNetwork(true);
    this.backoff.reset();
    this.setState({ status: "connecting" });
    void this.attempt();
  }
  /** Drops the connection and resumes at once (or connects now if waiting to retry). */
  reconnect() {
    if (this.stopped) return this.connect();
    if (this.ws) return this.drop(CloseCodes.CLIENT_RESUME, "reconnect requested");
    if (this.reconnectTimer !== void 0) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = void 0;
      void this.attempt();
    }
  }
  /** Closes for good: no reconnection; queued and pending publishes are rejected with `closed`. */
  close() {
    if (this.stopped && this._state.status === "closed") return;
    this.stopped = true;
    this.watchNetwork(false);
    this.teardown(CloseCodes.NORMAL, "closed by the client", "closed");
    this.rejectQueued(() => true, "closed", "the client was closed");
    this.setState({ status: "closed", code: CloseCodes.NORMAL, reason: "closed by the client" });
  }
  // ---- connecting ----------------------------------------------------------
  async attempt() {
    const gen = ++this.gen;
    let token;
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
    let ws;
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
    };
  }
  /** The automatic rooms this token will get, as far as the client can tell before `welcome`. */
  expectedAutoRooms() {
    const claims = this.claims;
    if (!claims || claims.sub === void 0) return this.autoRooms;
    const rooms = /* @__PURE__ */ new Set([`user:${claims.sub}`, "broadcast"]);
    for (const role of claims.roles ?? []) rooms.add(`role:${role}`);
    return rooms;
  }
  sendHello(token) {
    const resume = {};
    this.resumed = /* @__PURE__ */ new Map();
    const auto = this.expectedAutoRooms();
    for (const room of this.roomMap.values()) {
      if (room._status !== "active" || !auto.has(room.name)) continue;
      if (room._position) {
        resume[room.name] = room._position;
        this.resumed.set(room.name, true);
      } else if (this.claims) {
        resume[room.name] = UNKNOWN;
        this.resumed.set(room.name, room._wasLive);
      }
    }
    const hello = { op: "hello", token };
    if (Object.keys(resume).length > 0) hello.resume = resume;
    this.send(hello);
  }
  retry(code, reason) {
    const attempt = this.backoff.attempt + 1;
    const delayMs = this.backoff.next();
    this.setState({ status: "reconnecting", attempt, delayMs, code, reason });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = void 0;
      if (!this.stopped) void this.attempt();
    }, delayMs);
  }
  /** Abandons the current socket and handles it as lost. */
  drop(code, reason) {
    this.disconnected(code, reason);
  }
  /** The connection ended (closed by the server, lost, or dropped by us). */
  disconnected(code, reason) {
    this.teardown(code, reason, "disconnected");
    if (this.stopped) return;
    if (code === CloseCodes.KICKED || code === CloseCodes.UNAUTHORIZED) {
      this.stopped = true;
      this.rejectQueued(() => true, "closed", `connection closed with ${code}: ${reason}`);
      this.setState({ status: "closed", code, reason });
      return;
    }
    this.retry(code, reason);
  }
  /** Closes the socket if any, stops its timers, and fails what waited on it. */
  teardown(code, reason, pendingCode) {
    this.gen += 1;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        if (ws.readyState <= OPEN) ws.close(code >= 4e3 || code === 1e3 ? code : 1e3, reason.slice(0, 100));
      } catch {
      }
    }
    for (const timer of [this.reconnectTimer, this.connectTimer, this.stableTimer, this.refreshTimer]) {
      if (timer !== void 0) clearTimeout(timer);
    }
    this.reconnectTimer = this.connectTimer = this.stableTimer = this.refreshTimer = void 0;
    if (this.pingTimer !== void 0) clearInterval(this.pingTimer);
    this.pingTimer = void 0;
    for (const timer of this.joinRetryTimers) clearTimeout(timer);
    this.joinRetryTimers.clear();
    this.joins.clear();
    this._welcome = null;
    for (const room of this.roomMap.values()) room._joined = false;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      if (p.kind === "leave" || p.kind === "refresh") p.resolve();
      else
        p.reject(
          new HeraldError(
            pendingCode,
            p.kind === "publish" ? "the connection was lost before the ack: the publish may or may not have been delivered" : "the connection was lost before the answer"
          )
        );
    }
  }
  // ---- receiving -----------------------------------------------------------
  receive(raw) {
    this.awaitingPong = false;
    if (typeof raw !== "string") return;
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (typeof frame !== "object" || frame === null) return;
    switch (frame.op) {
      case "welcome":
        return this.onWelcome(frame);
      case "event":
        return this.onEvent(frame);
      case "joined":
        return this.onJoined(frame);
      case "left":
        return this.onLeft(frame);
      case "member":
        return this.onMember(frame);
      case "resync":
        return this.onResync(frame);
      case "ack":
        return this.onAck(frame);
      case "pong":
        return this.onPong(frame);
      case "presence":
        return this.onPresence(frame);
      case "error":
        return this.onError(frame);
      default:
        return;
    }
  }
  onWelcome(frame) {
    if (this.connectTimer !== void 0) clearTimeout(this.connectTimer);
    this.connectTimer = void 0;
    const rooms = Array.isArray(frame.rooms) ? frame.rooms.filter((r) => typeof r === "string") : [];
    this.autoRooms = new Set(rooms);
    this._welcome = {
      user: frame.user,
      conn: frame.conn,
      node: frame.node,
      rooms,
      heartbeatMs: frame.heartbeat_ms
    };
    this.setState({ status: "open", user: frame.user, conn: frame.conn, node: frame.node });
    this.events.emit("welcome", { ...this._welcome, rooms: [...rooms] });
    if (!this.isOpen()) return;
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
  onEvent(frame) {
    const room = this.roomMap.get(frame.room);
    if (!room || room._status !== "active" || !isPosition(frame)) return;
    const expected = room._position;
    const verdict = room._event(frame);
    if (verdict === "gap") {
      const want = expected ? `${expected.offset + 1}@${expected.epoch}` : "?";
      this.drop(CloseCodes.CLIENT_RESUME, `gap in ${frame.room}: expected ${want}, got ${frame.offset}@${frame.epoch}`);
    }
  }
  onJoined(frame) {
    if (!isPosition(frame)) return;
    let request;
    if (typeof frame.id === "number") {
      request = this.joins.get(frame.id);
      this.joins.delete(frame.id);
    }
    const room = request ? request.room : this.roomMap.get(frame.room);
    if (!room || room._status !== "active" || room.name !== frame.room) return;
    if (this.roomMap.get(room.name) !== room) return;
    const hadPosition = request ? request.hadPosition : this.resumed.get(room.name) ?? false;
    this.joinAttempts.delete(room);
    room._wasLive = true;
    room._joinedFrame({ offset: frame.offset, epoch: frame.epoch }, frame.recovered, hadPosition);
  }
  onLeft(frame) {
    if (typeof frame.id === "number") {
      const p = this.pending.get(frame.id);
      if (p && p.kind === "leave") {
        this.pending.delete(frame.id);
        clearTimeout(p.timer);
        p.resolve();
      }
    }
    if (frame.reason === "request") return;
    const room = this.roomMap.get(frame.room);
    if (!room) return;
    this.roomMap.delete(frame.room);
    this.rejectQueued((q) => q.room === room, "left", `room ${room.name} was left: ${frame.reason}`);
    room._left(frame.reason);
  }
  onMember(frame) {
    this.roomMap.get(frame.room)?._member({ room: frame.room, user: frame.user, state: frame.state });
  }
  onResync(frame) {
    if (!isPosition(frame)) return;
    const room = this.roomMap.get(frame.room);
    if (room && room._status === "active") room._resync({ offset: frame.offset, epoch: frame.epoch });
  }
  onAck(frame) {
    const p = this.pending.get(frame.id);
    if (!p) return;
    this.pending.delete(frame.id);
    clearTimeout(p.timer);
    if (p.kind === "publish") {
      p.resolve({ offset: frame.offset ?? 0, epoch: frame.epoch ?? "" });
    } else {
      p.resolve();
    }
  }
  onPong(frame) {
    if (typeof frame.t !== "number") return;
    this._rtt = Math.max(0, Math.round((now() - frame.t) * 10) / 10);
    this.events.emit("rtt", this._rtt);
  }
  onPresence(frame) {
    const p = this.pending.get(frame.id);
    if (!p || p.kind !== "presence") return;
    this.pending.delete(frame.id);
    clearTimeout(p.timer);
    p.resolve(Array.isArray(frame.members) ? frame.members : []);
  }
  onError(frame) {
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
        if (p.kind === "leave") p.resolve();
        else p.reject(error);
        if (p.kind === "refresh") this.events.emit("error", error);
        return;
      }
    }
    this.events.emit("error", error);
  }
  // ---- rooms ---------------------------------------------------------------
  sendJoin(room) {
    const id = this.nextId++;
    const since = room._position;
    this.joins.set(id, { room, hadPosition: since !== null });
    const frame = { op: "join", id, room: room.name };
    if (since) frame.since = since;
    this.send(frame);
  }
  joinFailed(room, error) {
    if (room._status !== "active" || this.roomMap.get(room.name) !== room) return;
    if (error.code === "rate_limited" || error.code === "unavailable" || error.code === "internal") {
      const attempts = this.joinAttempts.get(room) ?? 0;
      this.joinAttempts.set(room, attempts + 1);
      const delay = error.retryAfterMs ?? backoffDelay(attempts + 1, this.backoffOptions, this.random);
      const gen = this.gen;
      const timer = setTimeout(() => {
        this.joinRetryTimers.delete(timer);
        if (gen === this.gen && this.isOpen() && room._status === "active" && !room._joined) this.sendJoin(room);
      }, Math.min(delay, 3e4));
      this.joinRetryTimers.add(timer);
      return;
    }
    this.roomMap.delete(room.name);
    this.rejectQueued((q) => q.room === room, error.code, `room ${room.name}: ${error.message}`);
    room._failed(error);
  }
  publish(room, event, data, timeoutMs) {
    return new Promise((resolve, reject) => {
      if (this.stopped) {
        reject(new HeraldError("closed", "the client is closed"));
        return;
      }
      const item = { room, event, data: data === void 0 ? null : data, timeoutMs, resolve, reject };
      if (this.isOpen()) {
        this.sendPublish(item);
        return;
      }
      for (const evicted of this.queue.push(item)) {
        evicted.reject(new HeraldError("queue_full", "the offline queue is full: the oldest publish was dropped"));
      }
    });
  }
  sendPublish(item) {
    const id = this.nextId++;
    const timer = setTimeout(() => {
      if (this.pending.delete(id)) item.reject(new HeraldError("timeout", "no ack from the server in time"));
    }, item.timeoutMs ?? this.publishTimeoutMs);
    this.pending.set(id, { kind: "publish", resolve: item.resolve, reject: item.reject, timer });
    this.send({ op: "publish", id, room: item.room.name, event: item.event, data: item.data });
  }
  flushQueue() {
    for (const item of this.queue.drain()) {
      if (item.room._status === "active" && this.roomMap.get(item.room.name) === item.room) this.sendPublish(item);
      else item.reject(new HeraldError(item.room._status, `room ${item.room.name} is ${item.room._status}`));
    }
  }
  rejectQueued(select, code, message) {
    for (const item of this.queue.removeWhere(select)) item.reject(new HeraldError(code, message));
  }
  request(kind, frame) {
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const timer = setTimeout(() => {
        if (!this.pending.delete(id)) return;
        if (kind === "leave") resolve();
        else reject(new HeraldError("timeout", `no answer to ${kind} in time`));
      }, this.requestTimeoutMs);
      this.pending.set(id, { kind, resolve, reject, timer });
      this.send({ ...frame, id });
    });
  }
  presence(room) {
    if (!this.isOpen()) return Promise.reject(new HeraldError("disconnected", "not connected"));
    return this.request("presence", { op: "presence", room: room.name });
  }
  leave(room) {
    if (this.roomMap.get(room.name) === room) this.roomMap.delete(room.name);
    this.rejectQueued((q) => q.room === room, "left", `room ${room.name} was left`);
    const wasJoined = room._joined;
    room._left("request");
    if (!this.isOpen() || !wasJoined && ![...this.joins.values()].some((j) => j.room === room)) {
      return Promise.resolve();
    }
    return this.request("leave", { op: "leave", room: room.name });
  }
  // ---- heartbeat and token refresh -------------------------------------------
  startPing() {
    if (this.pingTimer !== void 0) clearInterval(this.pingTimer);
    this.sendPing();
    this.pingTimer = setInterval(() => this.pingTick(), this.pingIntervalMs);
  }
  pingTick() {
    if (this.awaitingPong) {
      if (now() - this.pingSentAt >= this.deadAfterMs) {
        this.drop(CloseCodes.CLIENT_RESUME, "no answer from the server");
      }
      return;
    }
    this.sendPing();
  }
  sendPing() {
    this.pingSentAt = now();
    this.awaitingPong = true;
    this.send({ op: "ping", t: Math.round(this.pingSentAt * 1e3) / 1e3 });
  }
  scheduleRefresh() {
    if (this.refreshTimer !== void 0) clearTimeout(this.refreshTimer);
    this.refreshTimer = void 0;
    const exp = this.claims?.exp;
    if (exp === void 0) return;
    const delay = refreshDelay(exp, Date.now(), this.refreshBeforeMs);
    const gen = this.gen;
    this.refreshTimer = setTimeout(
      () => {
        this.refreshTimer = void 0;
        if (gen !== this.gen) return;
        if (delay > MAX_TIMER_MS) this.scheduleRefresh();
        else void this.refresh(gen);
      },
      Math.min(delay, MAX_TIMER_MS)
    );
  }
  async refresh(gen) {
    let token;
    try {
      token = await this.getToken();
    } catch (e) {
      if (gen !== this.gen) return;
      this.events.emit("error", new HeraldError("unauthorized", `token refresh failed: ${errorText(e)}`));
      this.refreshTimer = setTimeout(() => void this.refresh(gen), 5e3);
      return;
    }
    if (gen !== this.gen || !this.isOpen()) return;
    if (typeof token !== "string" || token === "" || token === this.token) {
      this.refreshTimer = setTimeout(() => void this.refresh(gen), 5e3);
      return;
    }
    try {
      await this.request("refresh", { op: "refresh", token });
    } catch {
      return;
    }
    if (gen !== this.gen) return;
    this.token = token;
    this.claims = decodeJwtClaims(token);
    this.scheduleRefresh();
  }
  // ---- helpers ---------------------------------------------------------------
  isOpen() {
    return this._state.status === "open" && this.ws !== null && this.ws.readyState === OPEN;
  }
  send(frame) {
    const ws = this.ws;
    if (ws && ws.readyState === OPEN) ws.send(JSON.stringify(frame));
  }
  setState(state) {
    this._state = state;
    this.events.emit("state", { ...state });
  }
};
export {
  Backoff,
  CloseCodes,
  HeraldClient,
  HeraldError,
  OfflineQueue,
  Room,
  backoffCeiling,
  backoffDelay,
  classify,
  decodeJwtClaims,
  isPosition,
  refreshDelay
};
