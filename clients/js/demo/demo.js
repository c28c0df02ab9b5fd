// The live board: the Herald browser SDK in a plain page. Served by
// `herald standalone` at `/` (with the SDK at `/herald.js`).
import { HeraldClient } from "./herald.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const USER_KEY = "herald-demo-user";
let user = sessionStorage.getItem(USER_KEY);

/** The demo token endpoint: development only (see the banner). */
async function getToken() {
  const query = user ? `?user=${encodeURIComponent(user)}` : "";
  const res = await fetch(`/demo/token${query}`, { method: "POST", cache: "no-store" });
  if (res.status === 404) {
    throw new Error("the demo token endpoint is disabled: enable [demo] in development");
  }
  if (!res.ok) throw new Error(`demo token: HTTP ${res.status}`);
  const body = await res.json();
  user = body.user;
  sessionStorage.setItem(USER_KEY, user);
  $("me").textContent = user;
  return body.token;
}

const client = new HeraldClient({ url: "/ws", getToken });
const rooms = new Map(); // name -> { room, members: Map<user, true> }
let chatRoom = null;
let resyncCount = 0;

// ---- connection indicator -------------------------------------------------

function describe(state) {
  switch (state.status) {
    case "open":
      return "live";
    case "connecting":
      return "connecting…";
    case "reconnecting":
      return `reconnecting (attempt ${state.attempt}, in ${(state.delayMs / 1000).toFixed(1)} s)`;
    case "closed":
      return `closed (${state.code}${state.reason ? `: ${state.reason}` : ""})`;
  }
  return state.status;
}

function showState(state) {
  const el = $("conn");
  el.dataset.status = state.status;
  $("conn-text").textContent = describe(state);
  $("rtt").textContent = state.status === "open" && client.rtt !== null ? `· RTT ${client.rtt} ms` : "";
  $("reconnect").hidden = state.status !== "closed";
  $("drop").hidden = state.status === "closed";
  const detail =
    state.status === "reconnecting" ? ` — last close ${state.code}${state.reason ? ` ${state.reason}` : ""}` : "";
  log(`state: ${describe(state)}${detail}`);
  renderRooms();
}

client.on("state", showState);
client.on("rtt", (ms) => {
  if (client.state.status === "open") $("rtt").textContent = `· RTT ${ms} ms`;
});
client.on("welcome", (w) => log(`welcome: user ${w.user} on node ${w.node}`));
client.on("error", (e) => log(`error ${e.code}: ${e.message}`, "error"));
showState(client.state);

// ---- rooms and events -------------------------------------------------------

function time(ts) {
  return new Date(ts).toLocaleTimeString([], { hour12: false });
}

function addEventRow(cells, className) {
  const list = $("events");
  list.querySelector(".empty")?.remove();
  const li = document.createElement("li");
  if (className) li.className = className;
  if (typeof cells === "string") {
    li.textContent = cells;
  } else {
    for (const [cls, text] of cells) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      li.append(span);
    }
  }
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.append(li);
  while (list.children.length > 500) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
  return li;
}

function dataText(event, data) {
  if (event === "chat" && data && typeof data === "object" && typeof data.text === "string") {
    return `${data.from ?? "?"}: ${data.text}`;
  }
  return JSON.stringify(data);
}

function join(name) {
  if (rooms.has(name)) return;
  const room = client.room(name);
  const entry = { room, members: new Map() };
  rooms.set(name, entry);
  room.on("*", (data, ev) => {
    const li = addEventRow([
      ["time", time(ev.ts)],
      ["room", ev.room],
      ["offset", `#${ev.offset}`],
      ["name", ev.event],
      ["data", dataText(ev.event, data)],
    ]);
    li.dataset.room = ev.room;
    li.dataset.offset = String(ev.offset);
    li.dataset.event = ev.event;
    renderRooms();
  });
  room.onJoined((info) => {
    const how = info.recovered === undefined ? "" : info.recovered ? ", resumed without loss" : ", not recovered";
    log(`joined ${name} at #${info.offset}${how}`);
    refreshMembers(entry);
    renderRooms();
  });
  room.onResync((info) => {
    resyncCount += 1;
    document.body.dataset.resyncs = String(resyncCount);
    // A real app refetches this room's state from its back end here.
    addEventRow(
      `⟳ resync in ${info.room}: continuity lost (${info.reason === "resync" ? "the server said so" : "history could not be replayed"}); ` +
        `an app refetches its state here and continues from #${info.offset}`,
      "resync",
    );
    log(`resync ${info.room} (${info.reason}) → #${info.offset} epoch ${info.epoch}`, "resync");
  });
  room.onMember((m) => {
    if (m.state === "joined") entry.members.set(m.user, true);
    else entry.members.delete(m.user);
    log(`${m.user} ${m.state} ${m.room}`);
    renderMembers();
  });
  room.onError((e) => {
    log(`cannot join ${name}: ${e.code} ${e.message}`, "error");
    rooms.delete(name);
    renderRooms();
  });
  room.onLeft((reason) => {
    log(`left ${name}: ${reason}`);
    rooms.delete(name);
    renderRooms();
  });
  chatRoom = name;
  renderRooms();
}

async function refreshMembers(entry) {
  try {
    const members = await entry.room.presence();
    entry.members = new Map(members.map((m) => [m.user, true]));
  } catch (e) {
    // Rooms without presence answer bad_request; the list stays as member events make it.
  }
  renderMembers();
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  const entry = chatRoom ? rooms.get(chatRoom) : null;
  if (!entry) return;
  const names = new Set(entry.members.keys());
  if (user) names.add(user);
  for (const name of [...names].sort()) {
    const li = document.createElement("li");
    li.textContent = name === user ? `${name} (you)` : name;
    if (name === user) li.className = "self";
    list.append(li);
  }
}

function renderRooms() {
  const chips = $("rooms");
  chips.replaceChildren();
  const select = $("chat-room");
  select.replaceChildren();
  for (const [name, { room }] of rooms) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dataset.joined = String(room.joined);
    const pos = room.position;
    chip.textContent = pos ? `${name} #${pos.offset}` : name;
    chips.append(chip);
    const opt = document.createElement("option");
    opt.value = name;
    opt.textContent = name;
    opt.selected = name === chatRoom;
    select.append(opt);
  }
}

function log(text, className) {
  const list = $("log");
  const li = document.createElement("li");
  li.textContent = `${time(Date.now())} ${text}`;
  if (className) li.className = className;
  list.prepend(li);
  while (list.children.length > 200) list.lastElementChild.remove();
}

// ---- controls -----------------------------------------------------------------

$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("room-input").value.trim();
  if (name) join(name);
});

$("chat-room").addEventListener("change", (e) => {
  chatRoom = e.target.value;
  renderMembers();
});

$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  const entry = chatRoom ? rooms.get(chatRoom) : null;
  if (!text || !entry) return;
  input.value = "";
  try {
    await entry.room.publish("chat", { text, from: user });
  } catch (err) {
    log(`publish failed: ${err.code} ${err.message}`, "error");
  }
});

$("drop").addEventListener("click", () => {
  log("dropping the connection (as a network cut would)");
  client.reconnect();
});
$("reconnect").addEventListener("click", () => client.connect());

$("origin").textContent = location.origin;
if (user) $("me").textContent = user;
const firstRoom = params.get("room") || "demo:lobby";
$("room-input").value = firstRoom;
join(firstRoom);

// For the browser tests and for poking around in the console.
window.heraldDemo = { client, rooms };
