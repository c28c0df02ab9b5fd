// Test doubles for the client: a scripted WebSocket and small helpers.

/** A WebSocket class whose instances the test drives as the server. */
export function fakeWebSocket({ autoOpen = true } = {}) {
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
      if (autoOpen) setTimeout(() => this.open(), 0);
    }
    // client side
    send(text) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      if (this.readyState >= 2) return;
      this.readyState = 2;
      this.closedWith = { code, reason };
      setTimeout(() => {
        this.readyState = 3;
        this.onclose?.({ code: code ?? 1005, reason: reason ?? "" });
      }, 0);
    }
    // server side
    open() {
      if (this.readyState !== 0) return;
      this.readyState = 1;
      this.onopen?.({});
    }
    deliver(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    ops(op) {
      return this.sent.filter((f) => f.op === op);
    }
    welcome(user = "alice", rooms = [`user:${user}`, "broadcast"]) {
      this.deliver({ op: "welcome", conn: `c${sockets.indexOf(this)}`, node: "n1", user, rooms, heartbeat_ms: 25000 });
    }
  }
  return { WebSocket: FakeSocket, sockets, last: () => sockets[sockets.length - 1] };
}

function b64url(obj) {
  return Buffer.from(JSON.stringify(obj)).toString("base64url");
}

/** An unsigned token with these claims (the client only reads them). */
export function token(claims) {
  return `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}.sig`;
}

export function aliceToken(extra = {}) {
  return token({ sub: "alice", exp: Math.floor(Date.now() / 1000) + 3600, ...extra });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value, or fails after `timeoutMs`. */
export async function waitFor(fn, timeoutMs = 3000, what = "condition") {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

/** Fast timings for tests. */
export const FAST = {
  backoff: { baseMs: 10, capMs: 40 },
  pingIntervalMs: 60_000,
  stableAfterMs: 60_000,
  connectTimeoutMs: 5_000,
};

export function event(room, offset, epoch = "e1", extra = {}) {
  return { op: "event", room, event: "msg", data: { n: offset }, offset, epoch, ts: 1, ...extra };
}
