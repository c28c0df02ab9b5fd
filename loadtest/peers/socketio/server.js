// A Socket.IO 4 cluster node as applications run it today: websocket
// transport only, the Redis adapter to reach the other nodes, a JWT checked
// on connect (HS256, like Herald), and a `join` event to enter a room.
//
// Environment: REDIS_URL, JWT_SECRET, ADDR (host:port; port 0 picks one).
// Prints `socketio: listening on http://HOST:PORT` when ready; SIGTERM stops it.
"use strict";

const { createServer } = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const jwt = require("jsonwebtoken");

const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const secret = process.env.JWT_SECRET;
const [host, port] = (process.env.ADDR || "127.0.0.1:0").split(":");
if (!secret) {
  console.error("socketio: JWT_SECRET is required");
  process.exit(2);
}

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis pub:", e.message));
  sub.on("error", (e) => console.error("redis sub:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = createServer();
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
    adapter: createAdapter(pub, sub),
  });

  io.use((socket, next) => {
    try {
      const claims = jwt.verify(String(socket.handshake.auth.token || ""), secret, {
        algorithms: ["HS256"],
      });
      socket.data.user = String(claims.sub);
      next();
    } catch (e) {
      next(new Error("unauthorized"));
    }
  });

  io.on("connection", (socket) => {
    socket.join("user:" + socket.data.user);
    socket.on("join", (room, ack) => {
      if (typeof room !== "string" || room.length === 0 || room.length > 200) {
        if (typeof ack === "function") ack({ ok: false });
        return;
      }
      socket.join(room);
      if (typeof ack === "function") ack({ ok: true });
    });
  });

  httpServer.listen(Number(port), host, () => {
    const a = httpServer.address();
    console.log(`socketio: listening on http://${a.address}:${a.port}`);
  });

  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error("socketio:", e);
  process.exit(1);
});
