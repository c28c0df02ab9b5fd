// Shared pieces of the real-browser tests: the herald binary (built from the
// workspace), a standalone server on a free port with a temporary data
// directory, Debian's Chromium driven by playwright-core, a TCP proxy the
// tests can cut, and small bounded wait helpers.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "../../../..");
export const targetDir = process.env.CARGO_TARGET_DIR || join(repoRoot, "target");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` (sync or async) until truthy; fails after `timeoutMs` naming `what`. */
export async function waitFor(fn, { timeoutMs = 15_000, what = "condition", everyMs = 50 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await sleep(everyMs);
  }
}

let binary;
/** The herald binary: $HERALD_BIN, else `cargo build` in the workspace. */
export function heraldBinary() {
  if (binary) return binary;
  if (process.env.HERALD_BIN) {
    binary = process.env.HERALD_BIN;
    if (!existsSync(binary)) throw new Error(`HERALD_BIN=${binary} does not exist`);
    return binary;
  }
  const out = execFileSync("cargo", ["build", "--bin", "herald", "--message-format=json-render-diagnostics"], {
    cwd: repoRoot,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
    maxBuffer: 256 * 1024 * 1024,
    timeout: 20 * 60_000,
  });
  for (const line of out.split("\n")) {
    if (!line.startsWith("{")) continue;
    const msg = JSON.parse(line);
    if (msg.reason === "compiler-artifact" && msg.target?.name === "herald" && msg.executable) binary = msg.executable;
  }
  if (!binary) throw new Error("cargo build did not report the herald executable");
  return binary;
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

const TEST_CONFIG = `
# Written by the browser tests.
[gateway]
drain_ms = 200

[[rooms]]
pattern = "test:*"
join = "claims"
client_publish = "members"
presence = true
`;

/** `herald standalone` on a free port with its own data directory (development mode). */
export class HeraldServer {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), "herald-browser-"));
    this.dataDir = join(this.dir, "data");
    this.configPath = join(this.dir, "herald.toml");
    writeFileSync(this.configPath, TEST_CONFIG);
    this.port = 0;
    this.child = null;
    this.output = "";
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Starts (or restarts on the same port and data directory) and waits until it listens. */
  async start() {
    if (!this.port) this.port = await freePort();
    const bin = heraldBinary();
    const child = spawn(
      bin,
      ["--config", this.configPath, "--data-dir", this.dataDir, "standalone", "--addr", `127.0.0.1:${this.port}`],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } },
    );
    this.child = child;
    running.add(child);
    child.on("exit", () => running.delete(child));
    let stdout = "";
    child.stdout.on("data", (d) => {
      stdout += d;
      this.output += d;
    });
    child.stderr.on("data", (d) => {
      this.output += d;
    });
    // The port was just released (or the previous process just died): a
    // bind race is possible, so a failed start is retried a few times.
    await waitFor(
      () => {
        if (child.exitCode !== null) throw new Error(`herald exited with ${child.exitCode}:\n${this.output}`);
        return stdout.includes("herald: listening on");
      },
      { timeoutMs: 30_000, what: "herald to listen" },
    );
  }

  /** The generated development API key. */
  apiKey() {
    const text = readFileSync(join(this.dataDir, "secrets.toml"), "utf8");
    const m = text.match(/^api_key = "(.*)"$/m);
    if (!m) throw new Error("no api_key in secrets.toml");
    return m[1];
  }

  /** A token from `herald token`, signed with this server's secret. */
  token(sub, { rooms = ["test:*"], publish = ["test:*"], ttl = "1h" } = {}) {
    const args = ["--data-dir", this.dataDir, "token", "--sub", sub, "--ttl", ttl];
    if (rooms.length) args.push("--rooms", rooms.join(","));
    if (publish.length) args.push("--publish", publish.join(","));
    return execFileSync(heraldBinary(), args, { encoding: "utf8", timeout: 30_000 }).trim();
  }

  /** Calls the HTTP API; returns { status, body }. */
  async api(method, path, body) {
    const res = await fetch(`${this.http}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.apiKey()}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: res.status, body: json ?? text };
  }

  async publish(room, event, data) {
    const res = await this.api("POST", "/v1/publish", { room, event, data });
    if (res.status !== 200) throw new Error(`publish failed: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body.positions[room];
  }

  /** Sends `signal` and waits for the exit (SIGKILL after `graceMs`). */
  async stop(signal = "SIGTERM", graceMs = 10_000) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    await exited;
    clearTimeout(timer);
  }

  async dispose() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Debian's Chromium, headless, with a fresh profile. */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    throw new Error(`${executablePath} not found: apt-get install -y chromium (or set CHROMIUM)`);
  }
  return chromium.launch({
    executablePath,
    headless: true,
    chromiumSandbox: false,
    timeout: 60_000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/**
 * A page that loads the SDK from the server (`/herald.js`) and runs one
 * client: `window.t` records states, events per room, resyncs and joins.
 */
export async function sdkPage(browser, server, { wsUrl = server.ws, token, rooms, client = {} }) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error(`[page error] ${e.message}`));
  await page.goto(`${server.http}/healthz`);
  await page.evaluate(
    async ({ wsUrl, token, rooms, client }) => {
      const { HeraldClient } = await import("/herald.js");
      const t = { states: [], events: {}, resyncs: [], joined: [], tokens: 0 };
      window.t = t;
      const c = new HeraldClient({
        url: wsUrl,
        getToken: () => {
          t.tokens += 1;
          return token;
        },
        backoff: { baseMs: 200, capMs: 1000 },
        ...client,
      });
      window.client = c;
      c.on("state", (s) => t.states.push(s));
      window.rooms = {};
      for (const name of rooms) {
        const room = c.room(name);
        window.rooms[name] = room;
        t.events[name] = [];
        room.on("*", (data, ev) => t.events[name].push({ offset: ev.offset, epoch: ev.epoch, event: ev.event, data }));
        room.onResync((info) => t.resyncs.push(info));
        room.onJoined((info) => t.joined.push(info));
      }
    },
    { wsUrl, token, rooms, client },
  );
  return page;
}

/** The page's recorder, `window.t`. */
export function record(page) {
  return page.evaluate(() => JSON.parse(JSON.stringify(window.t)));
}

export async function waitForPage(page, fn, arg, { timeoutMs = 15_000, what = "page condition" } = {}) {
  try {
    await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 50 });
  } catch (e) {
    const t = await record(page).catch(() => null);
    throw new Error(`timed out waiting for ${what}; page state: ${JSON.stringify(t)?.slice(0, 2000)}\n${e.message}`);
  }
}

/**
 * A TCP proxy in front of the server that the test can cut: `cut()` resets
 * every connection and refuses new ones; `blackhole()` silently drops all
 * bytes both ways without closing anything; `restore()` forwards again.
 */
export class CuttableProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.mode = "forward";
    this.pairs = new Set();
    this.server = net.createServer((client) => this.accept(client));
  }

  async listen() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = this.server.address().port;
    return this;
  }

  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  accept(client) {
    if (this.mode === "cut") {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(this.targetPort, "127.0.0.1");
    const pair = { client, upstream, dead: this.mode === "blackhole" };
    this.pairs.add(pair);
    const forward = (from, to) =>
      from.on("data", (chunk) => {
        if (!pair.dead && this.mode === "forward") to.write(chunk);
      });
    forward(client, upstream);
    forward(upstream, client);
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  }

  /** Resets every open connection and refuses new ones. */
  cut() {
    this.mode = "cut";
    for (const { client, upstream } of this.pairs) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  /** Drops every byte, both ways, on open and new connections; closes nothing. */
  blackhole() {
    this.mode = "blackhole";
    for (const pair of this.pairs) pair.dead = true;
  }

  /** Forwards again (connections that were black-holed stay dead). */
  restore() {
    this.mode = "forward";
  }

  async close() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    await new Promise((resolve) => this.server.close(resolve));
  }
}

/** Where CI artefacts go (the workspace's target/). */
export function artefactPath(name) {
  mkdirSync(targetDir, { recursive: true });
  return join(targetDir, name);
}
