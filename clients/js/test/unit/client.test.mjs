// The client against a scripted WebSocket: the state machine, resume by
// position, dedup and gap detection, the offline queue, token refresh and
// the dead-connection check.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HeraldClient } from "../../dist/herald.js";
import { aliceToken, event, fakeWebSocket, FAST, sleep, token, waitFor } from "./helpers.mjs";

function setup(options = {}) {
  const fake = fakeWebSocket();
  const states = [];
  let tokens = 0;
  const client = new HeraldClient({
    url: "ws://herald.test/ws",
    getToken: async () => {
      tokens += 1;
      return options.token ? options.token(tokens) : aliceToken();
    },
    WebSocket: fake.WebSocket,
    ...FAST,
    ...options.client,
  });
  client.on("state", (s) => states.push(s));
  return { fake, client, states, tokenCalls: () => tokens };
}

/** Waits for socket n, opened and hello'd, then welcomes it. */
async function openSocket(fake, n, user = "alice") {
  const ws = await waitFor(() => fake.sockets[n], 3000, `socket ${n}`);
  await waitFor(() => ws.ops("hello").length === 1, 3000, "hello");
  ws.welcome(user);
  return ws;
}

test("state machine: connecting → open → reconnecting (attempt, delay) → open → closed", async () => {
  const { fake, client, states } = setup();
  assert.equal(client.state.status, "connecting");
  const ws0 = await openSocket(fake, 0);
  assert.equal(ws0.url, "ws://herald.test/ws");
  assert.equal(client.state.status, "open");
  assert.equal(client.state.user, "alice");
  assert.equal(client.welcome.user, "alice");

  ws0.serverClose(1006, "");
  const reconnecting = client.state;
  assert.equal(reconnecting.status, "reconnecting");
  assert.equal(reconnecting.attempt, 1);
  assert.equal(reconnecting.code, 1006);
  assert.ok(reconnecting.delayMs >= 0 && reconnecting.delayMs < 10, `first delay within the base: ${reconnecting.delayMs}`);
  await openSocket(fake, 1);
  assert.equal(client.state.status, "open");

  client.close();
  assert.deepEqual(client.state, { status: "closed", code: 1000, reason: "closed by the client" });
  assert.equal(fake.sockets[1].closedWith.code, 1000);
  await sleep(80);
  assert.equal(fake.sockets.length, 2, "no reconnection after close()");
  assert.deepEqual(
    states.map((s) => s.status),
    ["open", "reconnecting", "open", "closed"],
  );
});

test("attempts grow while connections fail, and reset after a stable period", async () => {
  const { fake, client } = setup({ client: { stableAfterMs: 50, backoff: { baseMs: 4, capMs: 8 } } });
  await waitFor(() => fake.sockets[0]);
  for (let i = 0; i < 3; i++) {
    const ws = await waitFor(() => fake.sockets[i]);
    ws.serverClose(1006);
    assert.equal(client.state.attempt, i + 1);
  }
  const ws3 = await openSocket(fake, 3);
  await sleep(120); // stable
  ws3.serverClose(1001, "draining");
  assert.equal(client.state.status, "reconnecting");
  assert.equal(client.state.attempt, 1, "reset after a stable connection");
  assert.equal(client.state.code, 1001);
  client.close();
});

test("never reconnects after 4010 or a refused token (4001); does after 4003 and 4009 with a fresh token", async () => {
  for (const code of [4010, 4001]) {
    const { fake, client } = setup();
    const ws = await openSocket(fake, 0);
    ws.serverClose(code, "bye");
    assert.deepEqual(client.state, { status: "closed", code, reason: "bye" });
    await sleep(60);
    assert.equal(fake.sockets.length, 1, `no retry after ${code}`);
  }
  for (const code of [4003, 4009, 1001, 1006, 4008]) {
    const { fake, client, tokenCalls } = setup();
    const ws = await openSocket(fake, 0);
    ws.serverClose(code, "");
    assert.equal(client.state.status, "reconnecting", `retry after ${code}`);
    await openSocket(fake, 1);
    assert.equal(tokenCalls(), 2, "getToken asked again on reconnect");
    client.close();
  }
});

test("getToken failures are retried with backoff", async () => {
  const { fake, client } = setup({
    token: (n) => {
      if (n < 3) throw new Error("auth server down");
      return aliceToken();
    },
  });
  await openSocket(fake, 0);
  assert.equal(client.state.status, "open");
  assert.equal(fake.sockets.length, 1);
  client.close();
});

test("rooms: joined after welcome, resumed from the last position, duplicates dropped", async () => {
  const { fake, client } = setup();
  const room = client.room("demo:lobby");
  const got = [];
  room.on("*", (data, ev) => got.push(ev.offset));
  const named = [];
  room.on("msg", (data) => named.push(data.n));
  const joined = [];
  room.onJoined((info) => joined.push(info));
  const resyncs = [];
  room.onResync((info) => resyncs.push(info));

  const ws0 = await openSocket(fake, 0);
  const [join0] = ws0.ops("join");
  assert.deepEqual(join0, { op: "join", id: join0.id, room: "demo:lobby" }, "first join has no since");
  ws0.deliver({ op: "joined", id: join0.id, room: "demo:lobby", offset: 2, epoch: "e1" });
  assert.equal(room.joined, true);
  for (const f of [event("demo:lobby", 3), event("demo:lobby", 4), event("demo:lobby", 4), event("demo:lobby", 3)]) ws0.deliver(f);
  assert.deepEqual(got, [3, 4]);
  assert.deepEqual(named, [3, 4]);
  assert.deepEqual(room.position, { offset: 4, epoch: "e1" });

  ws0.serverClose(4009, "slow consumer");
  assert.equal(room.joined, false);
  const ws1 = await openSocket(fake, 1);
  const [join1] = ws1.ops("join");
  assert.deepEqual(join1.since, { offset: 4, epoch: "e1" }, "resumes from the last event seen");
  // Replay overlapping what was seen: only the new ones are delivered.
  for (const f of [event("demo:lobby", 4), event("demo:lobby", 5), event("demo:lobby", 6)]) ws1.deliver(f);
  ws1.deliver({ op: "joined", id: join1.id, room: "demo:lobby", offset: 6, epoch: "e1", recovered: true });
  ws1.deliver(event("demo:lobby", 7));
  assert.deepEqual(got, [3, 4, 5, 6, 7]);
  assert.deepEqual(resyncs, [], "recovered: no resync");
  assert.deepEqual(
    joined.map((j) => j.recovered),
    [undefined, true],
  );
  client.close();
});

test("resync: joined{recovered:false} and the resync frame both call onResync", async () => {
  const { fake, client } = setup();
  const room = client.room("demo:a");
  const resyncs = [];
  room.onResync((info) => resyncs.push(info));
  const got = [];
  room.on("*", (d, ev) => got.push(`${ev.offset}@${ev.epoch}`));
  const ws0 = await openSocket(fake, 0);
  const [j0] = ws0.ops("join");
  ws0.deliver({ op: "joined", id: j0.id, room: "demo:a", offset: 0, epoch: "e1" });
  ws0.deliver(event("demo:a", 1));
  assert.deepEqual(resyncs, [], "the first join is not a resync");

  // Server restart: history is gone, the epoch is new.
  ws0.serverClose(1006);
  const ws1 = await openSocket(fake, 1);
  const [j1] = ws1.ops("join");
  assert.deepEqual(j1.since, { offset: 1, epoch: "e1" });
  ws1.deliver({ op: "joined", id: j1.id, room: "demo:a", offset: 0, epoch: "e2", recovered: false });
  assert.deepEqual(resyncs, [{ room: "demo:a", offset: 0, epoch: "e2", reason: "not_recovered" }]);
  ws1.deliver(event("demo:a", 1, "e2"));
  ws1.deliver(event("demo:a", 2, "e2"));

  // The node lost events: it says resync, then continues.
  ws1.deliver({ op: "resync", room: "demo:a", offset: 9, epoch: "e2" });
  ws1.deliver(event("demo:a", 10, "e2"));
  assert.equal(resyncs.length, 2);
  assert.equal(resyncs[1].reason, "resync");
  assert.deepEqual(got, ["1@e1", "1@e2", "2@e2", "10@e2"]);
  assert.equal(fake.sockets.length, 2, "no reconnection for a resync the server announced");
  client.close();
});

test("a gap seen by the client forces a resume from the last position", async () => {
  const { fake, client } = setup();
  const room = client.room("demo:gap");
  const got = [];
  room.on("*", (d, ev) => got.push(ev.offset));
  const ws0 = await openSocket(fake, 0);
  const [j0] = ws0.ops("join");
  ws0.deliver({ op: "joined", id: j0.id, room: "demo:gap", offset: 0, epoch: "e1" });
  ws0.deliver(event("demo:gap", 1));
  ws0.deliver(event("demo:gap", 3)); // 2 is missing
  assert.deepEqual(got, [1], "the event after the gap is not delivered");
  assert.equal(ws0.closedWith.code, 4000, "the client dropped the connection itself");
  assert.equal(client.state.status, "reconnecting");
  const ws1 = await openSocket(fake, 1);
  const [j1] = ws1.ops("join");
  assert.deepEqual(j1.since, { offset: 1, epoch: "e1" });
  ws1.deliver(event("demo:gap", 2));
  ws1.deliver(event("demo:gap", 3));
  ws1.deliver({ op: "joined", id: j1.id, room: "demo:gap", offset: 3, epoch: "e1", recovered: true });
  assert.deepEqual(got, [1, 2, 3]);
  client.close();
});

test("automatic rooms are resumed in hello, not joined", async () => {
  const { fake, client } = setup({ token: () => aliceToken({ roles: ["ADMIN"] }) });
  const mine = client.room("user:alice");
  const resyncs = [];
  mine.onResync((r) => resyncs.push(r));
  const got = [];
  mine.on("*", (d, ev) => got.push(ev.offset));
  const ws0 = await waitFor(() => fake.sockets[0]);
  const [hello0] = await waitFor(() => ws0.ops("hello").length && ws0.ops("hello"));
  assert.deepEqual(hello0.resume, { "user:alice": { offset: 0, epoch: "" } }, "learns the position on first connect");
  ws0.deliver({ op: "welcome", conn: "c", node: "n", user: "alice", rooms: ["user:alice", "role:ADMIN", "broadcast"], heartbeat_ms: 1 });
  ws0.deliver({ op: "joined", room: "user:alice", offset: 5, epoch: "u1", recovered: false });
  assert.deepEqual(resyncs, [], "nothing was lost on the first connection");
  assert.deepEqual(ws0.ops("join"), [], "no join for an automatic room");
  ws0.deliver(event("user:alice", 6, "u1", { notification: "n-6" }));
  ws0.serverClose(1006);
  const ws1 = await waitFor(() => fake.sockets[1]);
  const [hello1] = await waitFor(() => ws1.ops("hello").length && ws1.ops("hello"));
  assert.deepEqual(hello1.resume, { "user:alice": { offset: 6, epoch: "u1" } });
  assert.deepEqual(got, [6]);
  client.close();
});

test("join errors: forbidden fails the room; rate_limited retries after retry_after_ms", async () => {
  const { fake, client } = setup();
  const denied = client.room("secret:1");
  const errors = [];
  denied.onError((e) => errors.push(e.code));
  const limited = client.room("demo:busy");
  const ws0 = await openSocket(fake, 0);
  const joins = ws0.ops("join");
  ws0.deliver({ op: "error", id: joins[0].id, code: "forbidden", message: "no" });
  ws0.deliver({ op: "error", id: joins[1].id, code: "rate_limited", message: "slow down", retry_after_ms: 20 });
  assert.deepEqual(errors, ["forbidden"]);
  assert.equal(denied.status, "failed");
  assert.ok(!client.rooms.includes(denied));
  await waitFor(() => ws0.ops("join").length === 3, 2000, "the retried join");
  assert.equal(ws0.ops("join")[2].room, "demo:busy");
  await assert.rejects(denied.publish("x", 1), (e) => e.code === "failed");
  ws0.serverClose(1006);
  const ws1 = await openSocket(fake, 1);
  assert.deepEqual(
    ws1.ops("join").map((j) => j.room),
    ["demo:busy"],
    "a refused room is not retried on reconnect",
  );
  assert.equal(limited.status, "active");
  client.close();
});

test("offline queue: bounded, oldest rejected, flushed in order after the rejoin", async () => {
  const { fake, client } = setup({ client: { offlineQueueSize: 3, autoConnect: false } });
  const room = client.room("demo:chat");
  client.connect();
  const ws0 = await openSocket(fake, 0);
  ws0.serverClose(1006);
  assert.equal(client.state.status, "reconnecting");
  const results = [];
  const promises = [1, 2, 3, 4, 5].map((n) =>
    room.publish("chat", { n }).then(
      (pos) => results.push(["ok", n, pos.offset]),
      (err) => results.push(["err", n, err.code]),
    ),
  );
  await sleep(0);
  assert.deepEqual(results, [
    ["err", 1, "queue_full"],
    ["err", 2, "queue_full"],
  ]);
  assert.equal(client.queuedPublishes, 3);
  const ws1 = await openSocket(fake, 1);
  const sent = ws1.sent.filter((f) => f.op !== "ping").map((f) => (f.op === "publish" ? `publish:${f.data.n}` : f.op));
  assert.deepEqual(sent, ["hello", "join", "publish:3", "publish:4", "publish:5"], "join first, then the queue in order");
  for (const [i, p] of ws1.ops("publish").entries()) ws1.deliver({ op: "ack", id: p.id, offset: 10 + i, epoch: "e" });
  await Promise.all(promises);
  assert.deepEqual(results.slice(2), [
    ["ok", 3, 10],
    ["ok", 4, 11],
    ["ok", 5, 12],
  ]);
  client.close();
});

test("publish: ack resolves, error rejects, timeout rejects, a lost connection rejects in-flight ones", async () => {
  const { fake, client } = setup({ client: { publishTimeoutMs: 30 } });
  const room = client.room("demo:p");
  const ws0 = await openSocket(fake, 0);
  const ok = room.publish("a", { x: 1 });
  const bad = room.publish("b", null);
  const slow = room.publish("c", undefined);
  const lost = room.publish("d", 4, { timeoutMs: 5000 });
  const [pa, pb, pc] = ws0.ops("publish");
  assert.equal(pc.data, null, "undefined data is sent as null");
  ws0.deliver({ op: "ack", id: pa.id, offset: 1, epoch: "e" });
  ws0.deliver({ op: "error", id: pb.id, code: "forbidden", message: "members only" });
  assert.deepEqual(await ok, { offset: 1, epoch: "e" });
  await assert.rejects(bad, (e) => e.code === "forbidden" && e.message === "members only");
  await assert.rejects(slow, (e) => e.code === "timeout");
  ws0.serverClose(1006);
  await assert.rejects(lost, (e) => e.code === "disconnected");
  client.close();
  await assert.rejects(room.publish("e", 1), (e) => e.code === "closed");
});

test("presence and leave", async () => {
  const { fake, client } = setup();
  const room = client.room("demo:pr");
  const ws0 = await openSocket(fake, 0);
  const [j] = ws0.ops("join");
  ws0.deliver({ op: "joined", id: j.id, room: "demo:pr", offset: 0, epoch: "e" });
  const members = room.presence();
  const [p] = ws0.ops("presence");
  ws0.deliver({ op: "presence", id: p.id, room: "demo:pr", members: [{ user: "bob", conns: 2 }] });
  assert.deepEqual(await members, [{ user: "bob", conns: 2 }]);
  const seen = [];
  room.onMember((m) => seen.push(`${m.user}:${m.state}`));
  ws0.deliver({ op: "member", room: "demo:pr", user: "carol", state: "joined" });
  assert.deepEqual(seen, ["carol:joined"]);
  const left = room.leave();
  const [l] = ws0.ops("leave");
  ws0.deliver({ op: "left", id: l.id, room: "demo:pr", reason: "request" });
  await left;
  assert.equal(room.status, "left");
  assert.deepEqual(client.rooms, []);
  ws0.deliver(event("demo:pr", 1));
  const again = client.room("demo:pr");
  assert.notEqual(again, room, "a new room object after leave");
  client.close();
});

test("a server-side unsubscribe removes the room and rejects its queued publishes", async () => {
  const { fake, client } = setup();
  const room = client.room("demo:u");
  const reasons = [];
  room.onLeft((r) => reasons.push(r));
  const ws0 = await openSocket(fake, 0);
  ws0.deliver({ op: "left", room: "demo:u", reason: "unsubscribed" });
  assert.deepEqual(reasons, ["unsubscribed"]);
  assert.equal(room.status, "left");
  ws0.serverClose(1006);
  const ws1 = await openSocket(fake, 1);
  assert.deepEqual(ws1.ops("join"), [], "not rejoined");
  client.close();
});

test("RTT from ping/pong, and a connection that stops answering is dropped and resumed", async () => {
  const { fake, client } = setup({ client: { pingIntervalMs: 50, deadAfterMs: 300 } });
  const rtts = [];
  client.on("rtt", (ms) => rtts.push(ms));
  const ws0 = await openSocket(fake, 0);
  const [ping] = await waitFor(() => ws0.ops("ping").length && ws0.ops("ping"));
  assert.equal(typeof ping.t, "number");
  await sleep(5);
  ws0.deliver({ op: "pong", t: ping.t });
  assert.equal(rtts.length, 1);
  assert.ok(rtts[0] >= 0 && rtts[0] < 1000, `rtt ${rtts[0]}`);
  assert.equal(client.rtt, rtts[0]);
  // Now the server goes silent (a black-holed network): no pong, no close.
  await waitFor(() => ws0.closedWith, 2000, "the dead connection to be dropped");
  assert.equal(ws0.closedWith.code, 4000);
  assert.equal(client.state.status, "reconnecting");
  await openSocket(fake, 1);
  client.close();
});

test("token refresh: getToken is called before exp and sent as refresh, without reconnecting", async () => {
  const exp = () => Math.floor(Date.now() / 1000) + 3;
  const { fake, client, tokenCalls } = setup({
    token: (n) => token({ sub: "alice", exp: exp(), n }),
    client: { refreshBeforeExpiryMs: 2500 },
  });
  const ws0 = await openSocket(fake, 0);
  const [refresh] = await waitFor(() => ws0.ops("refresh").length && ws0.ops("refresh"), 4000, "refresh");
  assert.equal(tokenCalls(), 2);
  assert.notEqual(refresh.token, ws0.ops("hello")[0].token);
  ws0.deliver({ op: "ack", id: refresh.id });
  await waitFor(() => ws0.ops("refresh").length === 2, 4000, "the next refresh, scheduled from the new token");
  assert.equal(fake.sockets.length, 1, "refresh never reconnects");
  assert.equal(client.state.status, "open");
  client.close();
});

test("connect timeout: no welcome in time drops and retries", async () => {
  const { fake, client } = setup({ client: { connectTimeoutMs: 200 } });
  const ws0 = await waitFor(() => fake.sockets[0]);
  await waitFor(() => ws0.closedWith, 2000, "timeout");
  assert.equal(client.state.status === "reconnecting" || fake.sockets.length > 1, true);
  await openSocket(fake, 1);
  assert.equal(client.state.status, "open");
  client.close();
});

test("a throwing handler does not break delivery", async () => {
  const { fake, client } = setup();
  const room = client.room("demo:t");
  const got = [];
  const original = globalThis.reportError;
  const reported = [];
  globalThis.reportError = (e) => reported.push(e.message);
  try {
    room.on("*", () => {
      throw new Error("app bug");
    });
    room.on("*", (d, ev) => got.push(ev.offset));
    const ws0 = await openSocket(fake, 0);
    ws0.deliver({ op: "joined", id: ws0.ops("join")[0].id, room: "demo:t", offset: 0, epoch: "e1" });
    ws0.deliver(event("demo:t", 1));
    ws0.deliver(event("demo:t", 2));
    assert.deepEqual(got, [1, 2]);
    assert.deepEqual(reported, ["app bug", "app bug"]);
  } finally {
    globalThis.reportError = original;
    client.close();
  }
});

test("the browser's online event skips the rest of the backoff", async () => {
  const target = new EventTarget();
  const saved = { add: globalThis.addEventListener, remove: globalThis.removeEventListener };
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  try {
    const { fake, client } = setup({ client: { backoff: { baseMs: 60_000, capMs: 60_000 }, random: () => 0.99 } });
    const ws0 = await openSocket(fake, 0);
    ws0.serverClose(1006);
    assert.ok(client.state.delayMs > 50_000, "a long wait is scheduled");
    target.dispatchEvent(new Event("online"));
    await openSocket(fake, 1);
    assert.equal(client.state.status, "open");
    client.close();
    ws0.serverClose(1006); // ignored: detached
    target.dispatchEvent(new Event("online"));
    await sleep(20);
    assert.equal(fake.sockets.length, 2, "no connection after close()");
  } finally {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
  }
});
