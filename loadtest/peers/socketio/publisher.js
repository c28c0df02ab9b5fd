// The publishing side of the Socket.IO peer: an application back end that
// emits through @socket.io/redis-emitter. It is reached over HTTP the way
// Herald's API is, so that the load client publishes to both the same way:
//
//   POST /publish  Authorization: Bearer <key>  {"room","event","data"}
//   -> {"positions":{"<room>":{"offset":N}}}
//
// Socket.IO has no per-room sequence, so this publisher keeps one (it is the
// only publisher) and adds it to the data as `o`; the load client counts
// loss, duplicates and reordering from it. Redis commands leave one client
// connection in order, so `o` reaches every node in order.
//
// Environment: REDIS_URL, API_KEY, ADDR (host:port; port 0 picks one).
"use strict";

const { createServer } = require("node:http");
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");

const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const apiKey = process.env.API_KEY || "";
const [host, port] = (process.env.ADDR || "127.0.0.1:0").split(":");
const MAX_BODY = 1 << 20;

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

async function main() {
  const redis = createClient({ url: redisUrl });
  redis.on("error", (e) => console.error("redis:", e.message));
  await redis.connect();
  const emitter = new Emitter(redis);
  const seqs = new Map();

  const server = createServer((req, res) => {
    if (req.method === "GET" && req.url === "/healthz") return reply(res, 200, { ok: true });
    if (req.method !== "POST" || req.url !== "/publish") {
      return reply(res, 404, { error: { code: "not_found", message: "POST /publish" } });
    }
    if (apiKey && req.headers.authorization !== `Bearer ${apiKey}`) {
      return reply(res, 401, { error: { code: "unauthorized", message: "bad key" } });
    }
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size <= MAX_BODY) chunks.push(c);
    });
    req.on("end", () => {
      let body;
      try {
        if (size > MAX_BODY) throw new Error("too large");
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch (e) {
        return reply(res, 400, { error: { code: "bad_request", message: e.message } });
      }
      const { room, event, data } = body || {};
      if (typeof room !== "string" || typeof event !== "string") {
        return reply(res, 400, { error: { code: "bad_request", message: "room and event are required" } });
      }
      const seq = (seqs.get(room) || 0) + 1;
      seqs.set(room, seq);
      const payload = data !== null && typeof data === "object" && !Array.isArray(data) ? { ...data, o: seq } : { data, o: seq };
      emitter.to(room).emit(event, payload);
      reply(res, 200, { positions: { [room]: { offset: seq } } });
    });
  });
  server.keepAliveTimeout = 60000;
  server.listen(Number(port), host, () => {
    const a = server.address();
    console.log(`socketio-publisher: listening on http://${a.address}:${a.port}`);
  });

  const stop = () => {
    server.close();
    redis.quit().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error("socketio-publisher:", e);
  process.exit(1);
});
