// Pure pieces: backoff with full jitter, position classification, the
// offline queue, JWT reading and the refresh schedule.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Backoff,
  backoffCeiling,
  backoffDelay,
  classify,
  isPosition,
  OfflineQueue,
  decodeJwtClaims,
  refreshDelay,
} from "../../dist/herald.js";
import { token } from "./helpers.mjs";

test("backoff ceiling doubles from the base and stops at the cap", () => {
  const opts = { baseMs: 500, capMs: 30_000 };
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7, 10, 100, 5000].map((n) => backoffCeiling(n, opts)),
    [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000],
  );
  assert.equal(backoffCeiling(0), 500, "default base ~0.5 s");
  assert.equal(backoffCeiling(50), 30_000, "default cap ~30 s");
});

test("full jitter: the delay is uniform in [0, ceiling)", () => {
  const opts = { baseMs: 500, capMs: 30_000 };
  assert.equal(backoffDelay(3, opts, () => 0), 0);
  assert.equal(backoffDelay(3, opts, () => 0.5), 2000);
  assert.equal(backoffDelay(3, opts, () => 0.999999), 3999);
  assert.equal(backoffDelay(20, opts, () => 0.5), 15000);
  // Out-of-range randoms are clamped, never negative or over the ceiling.
  assert.equal(backoffDelay(0, opts, () => -1), 0);
  assert.ok(backoffDelay(0, opts, () => 7) <= 500);
  // With Math.random: spread over the whole range, within bounds.
  const delays = Array.from({ length: 2000 }, () => backoffDelay(4, opts));
  assert.ok(delays.every((d) => d >= 0 && d < 8000));
  assert.ok(Math.min(...delays) < 800 && Math.max(...delays) > 7200, "covers the range");
  assert.ok(new Set(delays).size > 500, "jittered, not fixed steps");
});

test("Backoff counts attempts and resets", () => {
  const b = new Backoff({ baseMs: 100, capMs: 1000 }, () => 0.5);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next()], [50, 100, 200, 400, 500]);
  assert.equal(b.attempt, 5);
  b.reset();
  assert.equal(b.attempt, 0);
  assert.equal(b.next(), 50);
});

test("classify: deliver the next offset, drop duplicates, flag gaps and epoch changes", () => {
  const at = (offset, epoch = "e1") => ({ offset, epoch });
  assert.equal(classify(null, at(17)), "deliver", "first event seen");
  assert.equal(classify(at(0), at(1)), "deliver");
  assert.equal(classify(at(4), at(5)), "deliver");
  assert.equal(classify(at(4), at(4)), "duplicate");
  assert.equal(classify(at(4), at(2)), "duplicate");
  assert.equal(classify(at(4), at(6)), "gap");
  assert.equal(classify(at(4), at(1, "e2")), "gap", "a new epoch without resync");
  assert.equal(classify(at(4), at(5, "e2")), "gap");
});

test("isPosition", () => {
  assert.ok(isPosition({ offset: 0, epoch: "" }));
  assert.ok(isPosition({ offset: 3, epoch: "x", extra: 1 }));
  for (const bad of [null, 1, {}, { offset: -1, epoch: "e" }, { offset: 1.5, epoch: "e" }, { offset: "1", epoch: "e" }, { offset: 1 }]) {
    assert.ok(!isPosition(bad), JSON.stringify(bad));
  }
});

test("offline queue keeps order and evicts the oldest when full", () => {
  const q = new OfflineQueue(3);
  assert.deepEqual(q.push("a"), []);
  assert.deepEqual(q.push("b"), []);
  assert.deepEqual(q.push("c"), []);
  assert.deepEqual(q.push("d"), ["a"], "the oldest goes");
  assert.deepEqual(q.push("e"), ["b"]);
  assert.equal(q.size, 3);
  assert.deepEqual(q.removeWhere((x) => x === "d"), ["d"]);
  assert.deepEqual(q.drain(), ["c", "e"], "order kept");
  assert.equal(q.size, 0);
  assert.deepEqual(q.drain(), []);
  const none = new OfflineQueue(0);
  assert.deepEqual(none.push("x"), ["x"], "capacity 0 queues nothing");
  assert.throws(() => new OfflineQueue(-1), RangeError);
});

test("decodeJwtClaims reads sub, exp and roles, and refuses what is not a JWT", () => {
  const t = token({ sub: "ålice", exp: 1800000000, roles: ["ADMIN", 3], rooms: ["x:*"] });
  assert.deepEqual(decodeJwtClaims(t), { sub: "ålice", exp: 1800000000, roles: ["ADMIN"] });
  assert.equal(decodeJwtClaims("opaque-token"), null);
  assert.equal(decodeJwtClaims("a.!!!.c"), null);
  assert.equal(decodeJwtClaims(`a.${Buffer.from("[1]").toString("base64url")}.c`), null, "payload must be an object");
  assert.deepEqual(decodeJwtClaims(`a.${Buffer.from("{}").toString("base64url")}.c`), {});
});

test("refreshDelay: ahead of expiry, at most half the remaining life, never below the minimum", () => {
  const now = 1_000_000_000_000;
  const exp = now / 1000 + 3600; // an hour left
  assert.equal(refreshDelay(exp, now, 30_000), 3_570_000);
  assert.equal(refreshDelay(now / 1000 + 40, now, 30_000), 20_000, "short token: halfway");
  assert.equal(refreshDelay(now / 1000 - 10, now, 30_000), 1000, "already expired: soon, not at once");
});
