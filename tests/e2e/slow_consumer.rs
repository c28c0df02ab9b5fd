//! Slow consumers (PROTOCOL.md §1.3, §1.6; DESIGN.md "hot path" 4): a client
//! that does not drain its socket is cut with 4009 instead of slowing the
//! room down; the others receive everything in order; the cut client
//! reconnects, joins with `since` and loses nothing.
//!
//! The fast reader is fed in lock-step (each event is read before the next
//! is published): with `outbound_queue = 8`, a reading client whose writer
//! task is merely descheduled for a few milliseconds on a loaded machine
//! could otherwise be cut too, which would make the test flaky without
//! saying anything about the slow client.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const CONFIG: &str = r#"
[gateway]
outbound_queue = 8

[[rooms]]
pattern = "slow:*"
join = "anyone"
history_size = 5000
"#;

const ROOM: &str = "slow:1";
const EVENTS: u64 = 2000;
/// Event payload size. The server's socket send buffer alone may hold ~4 MB
/// (Linux autotuning up to the `tcp_wmem` maximum), so the events must add
/// up to well over that for the slow client to fall behind at all.
const PAD: usize = 8000;
/// Published events after which the slow client must have been cut (8 MB);
/// it then reads again, within the server's grace for the close frame.
const RESUME_AFTER: u64 = 1000;

/// Checks `msg` is the event at `expected` (data.i is the publish index).
#[track_caller]
fn check_event(who: &str, msg: &Value, expected: u64, epoch: &str) {
    assert_eq!(msg["op"], "event", "{who}: {msg}");
    assert_eq!(msg["room"], ROOM, "{who}: {msg}");
    assert_eq!(msg["epoch"], epoch, "{who}: {msg}");
    let offset = offset_of(msg);
    assert_eq!(offset, expected, "{who}: gap or duplicate");
    assert_eq!(msg["data"]["i"], offset, "{who}: data does not match its offset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_with_4009_and_recovers() {
    let h = Herald::start(CONFIG).await;
    let mut a = h.connect_slow(&h.user_token("slow-alice")).await;
    a.name = "A (slow)".into();
    let joined = a.join(1, ROOM).await;
    let epoch = epoch_of(&joined);
    assert_eq!(joined["offset"], 0);
    let mut b = h.connect_hello(&h.user_token("fast-bob")).await;
    b.name = "B (fast reader)".into();
    b.join(1, ROOM).await;
    a.pause_reading();

    let mut api = h.api_client().await;
    let pad = "p".repeat(PAD);
    for i in 1..=EVENTS {
        let pos = api.publish(ROOM, "tick", json!({"i": i, "pad": pad})).await;
        assert_eq!(pos["offset"], i, "publish position: {pos}");
        let msg = b.next_json(WAIT).await;
        check_event("B", &msg, i, &epoch);
        if i == RESUME_AFTER {
            // A's reader task drains into memory from now on.
            a.resume_reading();
        }
    }
    b.expect_no_message(Duration::from_millis(200)).await;
    b.assert_alive(2).await;

    let (a_seen, (code, reason)) = a.drain_until_close(Duration::from_secs(10)).await;
    assert_eq!(code, 4009, "slow consumer close code (reason {reason:?})");
    let a_events: Vec<&Value> = a_seen.iter().filter(|m| m["op"] == "event").collect();
    for (i, msg) in a_events.iter().enumerate() {
        check_event("A", msg, i as u64 + 1, &epoch);
    }
    if let Some(other) = a_seen.iter().find(|m| m["op"] != "event") {
        panic!("A: unexpected message before its close: {other}");
    }
    let a_last = a_events.len() as u64;
    assert!(
        a_last < RESUME_AFTER,
        "A received {a_last} events: it was never a slow consumer"
    );

    // A reconnects and resumes from the last event it saw: nothing is lost.
    let mut a2 = h.connect_hello(&h.user_token("slow-alice")).await;
    a2.name = "A (resumed)".into();
    a2.send_json(json!({"op": "join", "id": 2, "room": ROOM, "since": {"offset": a_last, "epoch": epoch}}))
        .await;
    let mut expected = a_last + 1;
    loop {
        let msg = a2.next_json(Duration::from_secs(10)).await;
        if msg["op"] == "joined" {
            assert_eq!(msg["recovered"], true, "{msg}");
            assert_eq!(msg["offset"], EVENTS, "{msg}");
            break;
        }
        check_event("A (resumed)", &msg, expected, &epoch);
        expected += 1;
    }
    assert_eq!(expected, EVENTS + 1, "the replay ended early");

    // Live delivery goes on after the replay.
    api.publish(ROOM, "tick", json!({"i": EVENTS + 1})).await;
    check_event("A (resumed)", &a2.next_json(WAIT).await, EVENTS + 1, &epoch);
    h.assert_no_panic().await;
}
