// The demo page served by `herald standalone` at `/`, in two real Chromium
// tabs: live indicator, an API publish on the board, chat through client
// publish, a resync after a server restart, and a screenshot for CI.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { artefactPath, HeraldServer, heraldBinary, launchBrowser, sleep } from "./harness.mjs";

let browser;

before(async () => {
  heraldBinary();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

const ROOM = "demo:board";

async function openDemo(server) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 820 } });
  page.on("pageerror", (e) => console.error(`[page error] ${e.message}`));
  await page.goto(`${server.http}/?room=${ROOM}`);
  await page.waitForSelector('#conn[data-status="open"]', { timeout: 15_000 });
  return page;
}

const rowsOf = (page, selector) => page.locator(`#events li${selector}`);

test("the demo page: live board, chat between two tabs, resync after a restart", { timeout: 150_000 }, async () => {
  const server = new HeraldServer();
  const pages = [];
  try {
    await server.start();
    const a = await openDemo(server);
    const b = await openDemo(server);
    pages.push(a, b);

    // The banner says what the token endpoint is; the indicator shows RTT.
    assert.match(await a.locator("#warning").innerText(), /not for production/);
    await a.waitForFunction(() => /RTT \d/.test(document.getElementById("rtt").textContent), null, { timeout: 15_000 });
    const userA = await a.locator("#me").innerText();
    const userB = await b.locator("#me").innerText();
    assert.match(userA, /^demo-[0-9a-f]{8}$/);
    assert.notEqual(userA, userB, "each tab is its own demo user");

    // Wait until both tabs have joined before publishing.
    for (const page of [a, b]) {
      await page.waitForFunction((room) => window.heraldDemo.rooms.get(room)?.room.joined, ROOM, { timeout: 15_000 });
    }
    // A back end publishes through the HTTP API: both boards show it.
    await server.publish(ROOM, "deploy", { text: "build 42 is live" });
    for (const page of [a, b]) {
      await rowsOf(page, '[data-event="deploy"]').first().waitFor({ timeout: 15_000 });
      assert.match(await rowsOf(page, '[data-offset="1"]').innerText(), /build 42 is live/);
    }

    // Two tabs chat through client publish.
    await a.fill("#chat-input", "hello from tab A");
    await a.press("#chat-input", "Enter");
    await b.locator("#events li", { hasText: "hello from tab A" }).waitFor({ timeout: 15_000 });
    await b.fill("#chat-input", "hi A, tab B here");
    await b.click("#chat-form button");
    await a.locator("#events li", { hasText: "hi A, tab B here" }).waitFor({ timeout: 15_000 });
    assert.match(await a.locator("#events li", { hasText: "hi A, tab B here" }).innerText(), new RegExp(userB));
    // Members (presence + member events) list both users.
    await a.locator("#members li", { hasText: userB }).waitFor({ timeout: 15_000 });

    // The server dies and comes back (history is lost): the pages say so.
    await server.stop("SIGKILL");
    await a.waitForSelector('#conn[data-status="reconnecting"]', { timeout: 15_000 });
    await sleep(1000);
    await server.start();
    for (const page of [a, b]) {
      await page.waitForSelector('#conn[data-status="open"]', { timeout: 30_000 });
      await page.locator("#events li.resync").first().waitFor({ timeout: 15_000 });
    }
    await server.publish(ROOM, "deploy", { text: "build 43 is live (after the restart)" });
    await a.fill("#chat-input", "still here after the restart");
    await a.press("#chat-input", "Enter");
    for (const page of [a, b]) {
      await page.locator("#events li", { hasText: "still here after the restart" }).waitFor({ timeout: 15_000 });
      assert.equal(await rowsOf(page, ".resync").count(), 1);
    }
    await a.waitForFunction(() => /RTT \d/.test(document.getElementById("rtt").textContent), null, { timeout: 15_000 });

    const path = artefactPath("demo-screenshot.png");
    await a.screenshot({ path, fullPage: true });
    console.log(`screenshot: ${path}`);
  } catch (e) {
    e.message += `\n--- herald output ---\n${server.output.slice(-4000)}`;
    throw e;
  } finally {
    for (const page of pages) await page.close();
    await server.dispose();
  }
});

test("the demo token endpoint mints demo-only tokens, and the SDK bundle is served", { timeout: 60_000 }, async () => {
  const server = new HeraldServer();
  try {
    await server.start();
    const res = await fetch(`${server.http}/demo/token`, { method: "POST" });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.match(body.user, /^demo-[0-9a-f]{8}$/);
    assert.equal(body.expires_in, 600);
    const claims = JSON.parse(Buffer.from(body.token.split(".")[1], "base64url").toString());
    assert.deepEqual(claims.rooms, ["demo:*"]);
    assert.deepEqual(claims.publish, ["demo:*"]);
    assert.equal((await fetch(`${server.http}/demo/token?user=alice`, { method: "POST" })).status, 400);
    const js = await fetch(`${server.http}/herald.js`);
    assert.equal(js.headers.get("content-type"), "text/javascript; charset=utf-8");
    assert.match(await js.text(), /export \{[^}]*HeraldClient/);
  } finally {
    await server.dispose();
  }
});
