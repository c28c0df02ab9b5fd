//! Offsets and recovery (PROTOCOL.md §1.5): `join` with `since` and `hello`
//! with `resume` replay exactly the missing events, in order, then
//! `joined{recovered:true}`; a position outside history, of another epoch or
//! beyond the newest offset is not recovered and replays nothing; and a
//! join racing a stream of publishes never shows a gap or a duplicate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::harness::*;

const ROOMS: &str = r#"
[[rooms]]
pattern = "rec:*"
join = "anyone"
history_size = 100

[[rooms]]
pattern = "small:*"
join = "anyone"
history_size = 5

[[rooms]]
pattern = "race:*"
join = "anyone"
history_size = 1000
"#;

/// Asserts `events` are the events of `room` with offsets `from..=to` (and
/// `data == offset` as these tests publish them), in order, of `epoch`.
#[track_caller]
fn assert_offsets(events: &[Value], room: &str, epoch: &str, from: u64, to: u64) {
    let offsets: Vec<u64> = events.iter().map(offset_of).collect();
    let expected: Vec<u64> = (from..=to).collect();
    assert_eq!(offsets, expected, "replayed offsets");
    for e in events {
        assert_eq!(e["op"], "event", "{e}");
        assert_eq!(e["room"], room, "{e}");
        assert_eq!(e["epoch"], epoch, "{e}");
        assert_eq!(
            e["data"], e["offset"],
            "data is the offset it was published at: {e}"
        );
    }
}

/// Publishes events whose data is the offset they will get (the room must
/// be at `next - 1`).
async fn publish_range(h: &Herald, room: &str, next: u64, count: u64) {
    for offset in next..next + count {
        let pos = h.publish(room, "tick", json!(offset)).await;
        assert_eq!(pos["offset"], offset, "publish position");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_replays_missing_events_in_order() {
    let h = Herald::start(ROOMS).await;
    let room = "rec:1";
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    let joined = c.join(1, room).await;
    let epoch = epoch_of(&joined);
    assert_eq!(joined["offset"], 0);

    publish_range(&h, room, 1, 3).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(c.next_event(room, WAIT).await);
    }
    assert_offsets(&seen, room, &epoch, 1, 3);
    let last = position(seen.last().unwrap());

    let left = c.request(json!({"op": "leave", "id": 2, "room": room})).await;
    assert_eq!(left["op"], "left");
    publish_range(&h, room, 4, 4).await;
    c.expect_no_message(Duration::from_millis(300)).await;

    // Same connection, join with since = the last event seen.
    let (replayed, joined) = c.join_since(3, room, last.clone()).await;
    assert_offsets(&replayed, room, &epoch, 4, 7);
    assert_eq!(joined["id"], 3);
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["offset"], 7, "{joined}");
    assert_eq!(joined["epoch"], epoch.as_str());

    // Live events continue after the replay.
    publish_range(&h, room, 8, 1).await;
    let live = c.next_event(room, WAIT).await;
    assert_offsets(&[live], room, &epoch, 8, 8);

    // A fresh connection recovers from the same position too.
    let mut d = h.connect_hello(&h.user_token("bob")).await;
    let (replayed, joined) = d.join_since(1, room, last).await;
    assert_offsets(&replayed, room, &epoch, 4, 8);
    assert_eq!(
        (&joined["recovered"], &joined["offset"]),
        (&json!(true), &json!(8)),
        "{joined}"
    );

    // since = the newest position: recovered, nothing to replay.
    let mut e = h.connect_hello(&h.user_token("carol")).await;
    let (replayed, joined) = e.join_since(1, room, json!({"offset": 8, "epoch": epoch})).await;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(joined["recovered"], true, "{joined}");
    e.expect_no_message(Duration::from_millis(300)).await;

    // since = offset 0 of the epoch (the joined position of an empty room).
    let mut f = h.connect_hello(&h.user_token("dave")).await;
    let (replayed, joined) = f.join_since(1, room, json!({"offset": 0, "epoch": epoch})).await;
    assert_offsets(&replayed, room, &epoch, 1, 8);
    assert_eq!(joined["recovered"], true, "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_history_is_not_recovered() {
    let h = Herald::start(ROOMS).await;
    let room = "small:1";
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    let joined = c.join(1, room).await;
    let epoch = epoch_of(&joined);
    let left = c.request(json!({"op": "leave", "id": 2, "room": room})).await;
    assert_eq!(left["op"], "left");

    publish_range(&h, room, 1, 10).await;

    // newest 10, history_size 5: offsets 6..=10 are kept.
    for (id, since) in [(3, 0), (4, 4)] {
        let (replayed, joined) = c
            .join_since(id, room, json!({"offset": since, "epoch": epoch}))
            .await;
        assert!(
            replayed.is_empty(),
            "since {since}: nothing may be replayed: {replayed:?}"
        );
        assert_eq!(joined["recovered"], false, "since {since}: {joined}");
        assert_eq!(
            joined["offset"], 10,
            "joined reports the current position: {joined}"
        );
        assert_eq!(joined["epoch"], epoch.as_str());
        c.request(json!({"op": "leave", "id": id + 100, "room": room}))
            .await;
    }

    // since 5: every event after it (6..=10) is in history.
    let (replayed, joined) = c.join_since(5, room, json!({"offset": 5, "epoch": epoch})).await;
    assert_offsets(&replayed, room, &epoch, 6, 10);
    assert_eq!(joined["recovered"], true, "{joined}");

    // Live delivery continues from the current position, without duplicates.
    publish_range(&h, room, 11, 1).await;
    let live = c.next_event(room, WAIT).await;
    assert_offsets(&[live], room, &epoch, 11, 11);
    c.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_epoch_or_future_offset_is_not_recovered() {
    let h = Herald::start(ROOMS).await;
    let room = "rec:2";
    publish_range(&h, room, 1, 3).await;
    let history = h
        .api_call("GET", &format!("/v1/rooms/{room}/history"), None)
        .await;
    assert_eq!(history.0, 200, "{}", history.1);
    let epoch = history.1["epoch"].as_str().expect("history epoch").to_string();

    let mut c = h.connect_hello(&h.user_token("alice")).await;
    let (replayed, joined) = c
        .join_since(1, room, json!({"offset": 1, "epoch": "not-the-epoch"}))
        .await;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_eq!(
        (&joined["offset"], &joined["epoch"]),
        (&json!(3), &json!(epoch)),
        "{joined}"
    );
    c.request(json!({"op": "leave", "id": 2, "room": room})).await;

    let (replayed, joined) = c.join_since(3, room, json!({"offset": 99, "epoch": epoch})).await;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(
        joined["recovered"], false,
        "an offset beyond the newest is not recovered: {joined}"
    );
    assert_eq!(joined["offset"], 3);

    // Either way, live delivery continues from the current position.
    publish_range(&h, room, 4, 1).await;
    assert_offsets(&[c.next_event(room, WAIT).await], room, &epoch, 4, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_resume_replays_missing_events() {
    let h = Herald::start(ROOMS).await;
    let token = h.user_token("alice");
    let mut c = h.connect_hello(&token).await;
    let joined = c.join(1, "rec:3").await;
    c.join(2, "rec:4").await;
    let epoch3 = epoch_of(&joined);
    publish_range(&h, "rec:3", 1, 2).await;
    publish_range(&h, "rec:4", 1, 1).await;
    let mut last3 = Value::Null;
    let mut last4 = Value::Null;
    for _ in 0..3 {
        let e = c.next_op("event", WAIT).await;
        if e["room"] == "rec:3" {
            last3 = position(&e);
        } else {
            last4 = position(&e);
        }
    }
    assert_eq!(last3["offset"], 2);
    assert_eq!(last4["offset"], 1);
    drop(c);

    publish_range(&h, "rec:3", 3, 3).await;
    publish_range(&h, "rec:4", 2, 2).await;

    let mut d = h.connect_raw().await;
    d.send_json(json!({"op": "hello", "token": token, "resume": {"rec:3": last3, "rec:4": last4}}))
        .await;
    let welcome = d.next_json(WAIT).await;
    assert_eq!(welcome["op"], "welcome", "welcome comes first: {welcome}");

    // Per room: replayed events in order, then joined{recovered:true}. The
    // two rooms may interleave.
    let mut events3 = Vec::new();
    let mut events4 = Vec::new();
    let mut joined = Vec::new();
    while joined.len() < 2 {
        let msg = d.next_json(WAIT).await;
        match (msg["op"].as_str(), msg["room"].as_str()) {
            (Some("event"), Some("rec:3")) => events3.push(msg),
            (Some("event"), Some("rec:4")) => events4.push(msg),
            (Some("joined"), Some(room)) => {
                assert_eq!(msg["recovered"], true, "{msg}");
                let events = if room == "rec:3" { &events3 } else { &events4 };
                assert_eq!(msg["offset"], events.last().map(offset_of).unwrap(), "{msg}");
                joined.push(room.to_string());
            }
            _ => panic!("unexpected message while resuming: {msg}"),
        }
    }
    joined.sort();
    assert_eq!(joined, ["rec:3", "rec:4"]);
    assert_offsets(&events3, "rec:3", &epoch3, 3, 5);
    let epoch4 = epoch_of(&events4[0]);
    assert_offsets(&events4, "rec:4", &epoch4, 2, 3);
    d.expect_no_message(Duration::from_millis(300)).await;
}

/// Tracks one client's view of the race room and checks each message keeps
/// offsets strictly consecutive.
struct Tracker {
    name: String,
    epoch: String,
    last: u64,
    events: u64,
}

impl Tracker {
    fn event(&mut self, msg: &Value) {
        assert_eq!(msg["op"], "event", "{}: {msg}", self.name);
        assert_eq!(msg["epoch"], self.epoch.as_str(), "{}: {msg}", self.name);
        let offset = offset_of(msg);
        assert_eq!(
            offset,
            self.last + 1,
            "{}: gap or duplicate: got offset {offset} after {}",
            self.name,
            self.last
        );
        assert_eq!(msg["data"], offset, "{}: {msg}", self.name);
        self.last = offset;
        self.events += 1;
    }

    fn joined(&mut self, msg: &Value) {
        assert_eq!(msg["op"], "joined", "{}: {msg}", self.name);
        assert_eq!(
            msg["recovered"], true,
            "{}: history covers everything: {msg}",
            self.name
        );
        assert_eq!(
            offset_of(msg),
            self.last,
            "{}: joined.offset must be the last replayed position: {msg}",
            self.name
        );
    }

    fn since(&self) -> Value {
        json!({"offset": self.last, "epoch": self.epoch})
    }
}

/// A small xorshift generator: how many events to read between rejoins.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        Rng((nanos ^ (salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const RACE_N: u64 = 300;
const RACE_ROOM: &str = "race:1";

/// How a racing client gets back into the room.
#[derive(Clone, Copy, Debug)]
enum Rejoin {
    /// `leave`, then `join` with `since` on the same connection.
    LeaveJoin,
    /// A new connection authenticated by `hello` with `resume`.
    HelloResume,
    /// A new connection authenticated on the upgrade, then `join` + `since`.
    HeaderJoin,
}

async fn race_client(h: Arc<Herald>, mode: Rejoin, ready: Arc<Barrier>, salt: u64) -> (u64, u64) {
    let name = format!("{mode:?}");
    let token = h.user_token(&format!("racer-{salt}"));
    let mut c = h.connect_hello(&token).await;
    let joined = c.join(1, RACE_ROOM).await;
    let mut t = Tracker {
        name,
        epoch: epoch_of(&joined),
        last: offset_of(&joined),
        events: 0,
    };
    ready.wait().await;
    let mut rng = Rng::new(salt);
    let mut cycles = 0;
    let mut id = 10;
    while t.last < RACE_N {
        // Read a few live events.
        for _ in 0..1 + rng.below(6) {
            if t.last == RACE_N {
                break;
            }
            let msg = c.next_json(WAIT).await;
            t.event(&msg);
        }
        if t.last == RACE_N {
            break;
        }
        cycles += 1;
        id += 2;
        match mode {
            Rejoin::LeaveJoin => {
                c.send_json(json!({"op": "leave", "id": id, "room": RACE_ROOM}))
                    .await;
                // Events published before the leave took effect may still come.
                loop {
                    let msg = c.next_json(WAIT).await;
                    if msg["op"] == "left" {
                        assert_eq!(msg["id"], id, "{msg}");
                        break;
                    }
                    t.event(&msg);
                }
                c.send_json(json!({"op": "join", "id": id + 1, "room": RACE_ROOM, "since": t.since()}))
                    .await;
            }
            Rejoin::HelloResume => {
                drop(c);
                c = h.connect_raw().await;
                c.send_json(json!({"op": "hello", "token": token, "resume": {RACE_ROOM: t.since()}}))
                    .await;
                let welcome = c.next_json(WAIT).await;
                assert_eq!(welcome["op"], "welcome", "{welcome}");
            }
            Rejoin::HeaderJoin => {
                drop(c);
                c = h.connect_with_header(&token).await;
                c.send_json(json!({"op": "join", "id": id + 1, "room": RACE_ROOM, "since": t.since()}))
                    .await;
            }
        }
        // Replayed events, then joined{recovered:true}; live events follow.
        loop {
            let msg = c.next_json(WAIT).await;
            if msg["op"] == "joined" {
                t.joined(&msg);
                break;
            }
            t.event(&msg);
        }
    }
    // Nothing after the last offset.
    c.expect_no_message(Duration::from_millis(300)).await;
    (cycles, t.events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_racing_publishes_has_no_gap_or_duplicate() {
    let h = Arc::new(Herald::start(ROOMS).await);
    let ready = Arc::new(Barrier::new(4));
    let published = Arc::new(AtomicU64::new(0));

    let publisher = {
        let h = h.clone();
        let ready = ready.clone();
        let published = published.clone();
        tokio::spawn(async move {
            let mut api = h.api_client().await;
            ready.wait().await;
            for offset in 1..=RACE_N {
                let pos = api.publish(RACE_ROOM, "tick", json!(offset)).await;
                assert_eq!(pos["offset"], offset, "publish position: {pos}");
                published.store(offset, Ordering::Relaxed);
            }
        })
    };
    let clients: Vec<_> = [Rejoin::LeaveJoin, Rejoin::HelloResume, Rejoin::HeaderJoin]
        .into_iter()
        .enumerate()
        .map(|(i, mode)| tokio::spawn(race_client(h.clone(), mode, ready.clone(), i as u64 + 1)))
        .collect();

    bounded(Duration::from_secs(15), "publisher", publisher)
        .await
        .expect("publisher task");
    assert_eq!(published.load(Ordering::Relaxed), RACE_N);
    for (i, client) in clients.into_iter().enumerate() {
        let (cycles, events) = bounded(Duration::from_secs(15), "racing client", client)
            .await
            .unwrap_or_else(|e| panic!("racing client {i} failed: {e}"));
        assert!(cycles > 0, "client {i} never rejoined");
        // Everything from its first join to the end, each exactly once.
        assert_eq!(
            events, RACE_N,
            "client {i} saw {events} events in {cycles} rejoins"
        );
    }
    h.assert_no_panic().await;
}
