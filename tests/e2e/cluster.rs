//! The cluster (DESIGN.md, PROTOCOL.md §1.5, docs/architecture.md): real
//! `redis-server`, `herald gateway` and `herald api` processes on their own
//! ports (see `Cluster` in the harness), driven by real WebSocket and HTTP
//! clients. Members on different nodes see the same events in the same
//! order; a killed gateway, a restarted Redis and a cut subscriber
//! connection lose nothing (or say `resync` when history itself was lost);
//! presence, the node registry and the server API's commands work across
//! nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

const ROOMS: &str = r#"
[[rooms]]
pattern = "room:*"
join = "anyone"
client_publish = "members"
history_size = 5000

[[rooms]]
pattern = "pres:*"
join = "anyone"
presence = true
join_leave = true
"#;

/// A bound for reading many events (generous: the machine may be loaded).
const LONG: Duration = Duration::from_secs(15);

/// Reads `c` until it has the events of `room` up to offset `to`. Each one
/// must continue `got` by exactly one offset (no gap, no duplicate, in
/// order), be of `epoch` and, when its `data` is a number, carry its offset
/// as `data` (how these tests publish). A `resync`, an error, a close or a drop is a failure; other
/// rooms' events and other messages are skipped.
async fn read_through(c: &mut Client, room: &str, epoch: &str, got: &mut Vec<u64>, to: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while got.last().copied().unwrap_or(0) < to {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match c.next_incoming(left).await {
            None => panic!(
                "{}: {room}: reached offset {:?}, not {to}, within {limit:?}",
                c.name,
                got.last()
            ),
            Some(Incoming::Text(text)) => serde_json::from_str::<Value>(&text).unwrap(),
            Some(other) => panic!(
                "{}: {room}: after offset {:?} (waiting for {to}): {}",
                c.name,
                got.last(),
                short(&other)
            ),
        };
        check_event(c, room, epoch, got, &msg);
    }
}

/// Reads `c` until its connection drops (no close frame: the node died),
/// checking the events of `room` as [`read_through`] does.
async fn read_until_gone(c: &mut Client, room: &str, epoch: &str, got: &mut Vec<u64>) {
    loop {
        match c.next_incoming(WAIT).await {
            None => panic!("{}: the connection did not drop within {WAIT:?}", c.name),
            Some(Incoming::Gone(_)) => return,
            Some(Incoming::Text(text)) => {
                let msg = serde_json::from_str::<Value>(&text).unwrap();
                check_event(c, room, epoch, got, &msg);
            }
            Some(other) => panic!("{}: expected the socket to drop, got {}", c.name, short(&other)),
        }
    }
}

/// One message while reading `room`'s events: see [`read_through`].
#[track_caller]
fn check_event(c: &Client, room: &str, epoch: &str, got: &mut Vec<u64>, msg: &Value) {
    let op = msg["op"].as_str().unwrap_or_default();
    match op {
        "event" if msg["room"] == room => {
            let expected = got.last().copied().unwrap_or(0) + 1;
            assert_eq!(
                offset_of(msg),
                expected,
                "{}: {room}: gap or duplicate after {} events: {msg}",
                c.name,
                got.len()
            );
            assert_eq!(msg["epoch"], epoch, "{}: {msg}", c.name);
            if msg["data"].is_number() {
                assert_eq!(msg["data"], msg["offset"], "{}: {msg}", c.name);
            }
            got.push(expected);
        }
        "resync" | "left" if msg["room"] == room => {
            panic!("{}: unexpected while reading {room}: {msg}", c.name)
        }
        "error" => panic!("{}: unexpected while reading {room}: {msg}", c.name),
        _ => {}
    }
}

/// Publishes `from..=to` to `room` (data = the offset it must get).
async fn publish_range(api: &mut ApiClient, room: &str, from: u64, to: u64) {
    for offset in from..=to {
        let pos = api.publish(room, "tick", json!(offset)).await;
        assert_eq!(pos["offset"], offset, "publish to {room}: {pos}");
    }
}

/// A publisher in the background: publishes 1, 2, 3, … to `room` (data =
/// offset) every `every` until stopped or `max` is reached; returns the last
/// offset. `count` follows its progress.
struct Publisher {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl Publisher {
    async fn start(api: &Herald, room: &str, every: Duration, max: u64) -> Publisher {
        let mut client = api.api_client().await;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let room = room.to_string();
        let task = {
            let (stop, count) = (stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut offset = 0;
                while offset < max && !stop.load(Ordering::SeqCst) {
                    offset += 1;
                    let pos = client.publish(&room, "tick", json!(offset)).await;
                    assert_eq!(pos["offset"], offset, "publish to {room}: {pos}");
                    count.store(offset, Ordering::SeqCst);
                    tokio::time::sleep(every).await;
                }
                offset
            })
        };
        Publisher { stop, count, task }
    }

    fn published(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until `n` events are published (bounded).
    async fn wait_for(&self, n: u64) {
        eventually(LONG, &format!("{n} events published"), || async {
            (self.published() >= n).then_some(())
        })
        .await;
    }

    /// Stops it; the last offset published.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        bounded(LONG, "publisher to stop", self.task)
            .await
            .expect("the publisher failed")
    }
}

/// Status and body of a publish through the API (data `null`), and how
/// long it took.
async fn timed_publish(api: &Herald, room: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) = api
        .api_call(
            "POST",
            "/v1/publish",
            Some(json!({"room": room, "event": "tick", "data": null})),
        )
        .await;
    (status, body, started.elapsed())
}

/// The next `resync` of `room`, skipping anything else (other rooms'
/// resyncs included).
async fn next_resync(c: &mut Client, room: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = c.next_op("resync", left).await;
        if msg["room"] == room {
            return msg;
        }
    }
}

/// A token for `user` (no roles or claims, valid for an hour), signed with
/// the secret every node of a test cluster is configured with.
fn user_token(user: &str) -> String {
    mint(&json!({"sub": user, "exp": now_secs() + 3600}), SECRET)
}

/// The next `member` message, skipping anything else.
async fn next_member(c: &mut Client) -> Value {
    c.next_op("member", WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_different_nodes_receive_every_publish_in_order() {
    let cluster = Cluster::start(2, ROOMS).await;
    let room = "room:fanout";
    let mut clients = Vec::new();
    for (i, user) in ["ann", "ben", "cat", "dan"].iter().enumerate() {
        let node = cluster.gw(i % 2);
        let mut c = node.connect_hello(&node.user_token(user)).await;
        c.name = format!("{user}@gw-{}", i % 2 + 1);
        let welcome = c.welcome.clone().unwrap();
        assert_eq!(welcome["node"], format!("gw-{}", i % 2 + 1), "{welcome}");
        let joined = c.join(1, room).await;
        assert_eq!(joined["offset"], 0, "{joined}");
        clients.push((c, epoch_of(&joined), Vec::new()));
    }
    let epoch = clients[0].1.clone();
    assert!(
        clients.iter().all(|(_, e, _)| *e == epoch),
        "one epoch per room, whichever node"
    );

    let mut api = cluster.api.api_client().await;
    publish_range(&mut api, room, 1, 10).await;
    for (c, epoch, got) in &mut clients {
        read_through(c, room, epoch, got, 10, WAIT).await;
    }

    // A client publish on one node reaches members on the other, the
    // publisher included, at the next offset (its own event may come
    // before or after the `ack`).
    let (publisher, epoch, got) = &mut clients[1];
    publisher
        .send_json(json!({"op": "publish", "id": 7, "room": room, "event": "tick", "data": 11}))
        .await;
    let ack = loop {
        let msg = publisher.next_json(WAIT).await;
        if msg["op"] == "ack" {
            break msg;
        }
        check_event(publisher, room, epoch, got, &msg);
    };
    assert_eq!(
        (&ack["op"], &ack["id"], &ack["offset"]),
        (&json!("ack"), &json!(7), &json!(11)),
        "{ack}"
    );
    publish_range(&mut api, room, 12, 15).await;
    for (c, epoch, got) in &mut clients {
        read_through(c, room, epoch, got, 15, WAIT).await;
        c.expect_no_message(Duration::from_millis(300)).await;
    }
    for node in cluster.gateways.iter().chain([&cluster.api]) {
        node.assert_no_panic().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_reach_thirty_clients_on_three_nodes_exactly_once() {
    const EVENTS: u64 = 1000;
    let cluster = Cluster::start(3, ROOMS).await;
    let room = "room:bulk";
    let mut clients = Vec::new();
    for i in 0..30 {
        let node = cluster.gw(i % 3);
        let mut c = node.connect_with_header(&node.user_token(&format!("u{i}"))).await;
        c.name = format!("u{i}@gw-{}", i % 3 + 1);
        let joined = c.join(1, room).await;
        clients.push((c, epoch_of(&joined), Vec::new()));
    }
    let started = Instant::now();
    let mut api = cluster.api.api_client().await;
    publish_range(&mut api, room, 1, EVENTS).await;
    let published = started.elapsed();
    for (c, epoch, got) in &mut clients {
        read_through(c, room, epoch, got, EVENTS, LONG).await;
    }
    // Nothing after the last one: no duplicates arrived late.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (c, _, got) in &mut clients {
        assert_eq!(got.len() as u64, EVENTS);
        c.expect_no_message(Duration::from_millis(10)).await;
    }
    eprintln!(
        "published {EVENTS} in {published:?}; all 30 clients had them after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_gateway_resume_on_another_node_without_loss() {
    let mut cluster = Cluster::start(2, ROOMS).await;
    let room = "room:crash";
    let (doomed, survivor) = (cluster.gw(0), cluster.gw(1));
    let token = user_token;
    // a1 will resume with `hello.resume`, a2 with `join` + `since`; b is
    // on the surviving node all along.
    let mut a1 = doomed.connect_hello(&token("a1")).await;
    let mut a2 = doomed.connect_with_header(&token("a2")).await;
    let mut b = survivor.connect_hello(&token("b")).await;
    let epoch = epoch_of(&a1.join(1, room).await);
    a2.join(1, room).await;
    b.join(1, room).await;
    let (mut got1, mut got2, mut got_b) = (Vec::new(), Vec::new(), Vec::new());

    let publisher = Publisher::start(&cluster.api, room, Duration::from_millis(4), 100_000).await;
    read_through(&mut a1, room, &epoch, &mut got1, 30, WAIT).await;
    read_through(&mut a2, room, &epoch, &mut got2, 30, WAIT).await;

    cluster.gateways[0].sigkill();
    let killed_at = publisher.published();
    read_until_gone(&mut a1, room, &epoch, &mut got1).await;
    read_until_gone(&mut a2, room, &epoch, &mut got2).await;
    // Events are published while the clients are away.
    publisher.wait_for(killed_at + 20).await;

    let survivor = cluster.gw(1);
    let since1 = json!({"offset": got1.last().unwrap(), "epoch": epoch});
    let mut a1 = survivor.connect_raw().await;
    a1.name = "a1 (resumed)".into();
    a1.send_json(json!({"op": "hello", "token": token("a1"), "resume": {room: since1}}))
        .await;
    let welcome = a1.next_json(WAIT).await;
    assert_eq!(
        (&welcome["op"], &welcome["node"]),
        (&json!("welcome"), &json!("gw-2")),
        "{welcome}"
    );
    let (replayed, joined) = a1.collect_until_joined(room).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert!(
        !replayed.is_empty(),
        "events published during the outage are replayed"
    );
    for e in &replayed {
        check_event(&a1, room, &epoch, &mut got1, e);
    }
    assert_eq!(got1.last(), joined["offset"].as_u64().as_ref(), "{joined}");

    let mut a2 = survivor.connect_with_header(&token("a2")).await;
    a2.name = "a2 (resumed)".into();
    let since2 = json!({"offset": got2.last().unwrap(), "epoch": epoch});
    let (replayed, joined) = a2.join_since(1, room, since2).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    for e in &replayed {
        check_event(&a2, room, &epoch, &mut got2, e);
    }

    // Live delivery continues; then everyone has every event exactly once.
    let resumed_at = publisher.published();
    publisher.wait_for(resumed_at + 20).await;
    let last = publisher.finish().await;
    for (c, got) in [(&mut a1, &mut got1), (&mut a2, &mut got2), (&mut b, &mut got_b)] {
        read_through(c, room, &epoch, got, last, LONG).await;
        assert_eq!(*got, (1..=last).collect::<Vec<u64>>());
        c.expect_no_message(Duration::from_millis(300)).await;
    }
    eprintln!("killed at offset {killed_at}; resumed at {resumed_at}; {last} events in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_survived_with_resync_and_recovered_false() {
    let mut cluster = Cluster::start(2, ROOMS).await;
    let room = "room:restart";
    let mut c0 = cluster.gw(0).connect_hello(&cluster.gw(0).user_token("u0")).await;
    let mut c1 = cluster.gw(1).connect_hello(&cluster.gw(1).user_token("u1")).await;
    let old_epoch = epoch_of(&c0.join(1, room).await);
    c1.join(1, room).await;
    let mut api = cluster.api.api_client().await;
    publish_range(&mut api, room, 1, 3).await;
    let (mut got0, mut got1) = (Vec::new(), Vec::new());
    read_through(&mut c0, room, &old_epoch, &mut got0, 3, WAIT).await;
    read_through(&mut c1, room, &old_epoch, &mut got1, 3, WAIT).await;

    cluster.redis.kill();
    for node in &cluster.gateways {
        eventually(WAIT, "gateway /readyz 503 without Redis", || async {
            (node.readyz().await == 503).then_some(())
        })
        .await;
    }
    // Publishes fail fast and clearly while Redis is down.
    for _ in 0..3 {
        let (status, body, took) = timed_publish(&cluster.api, room).await;
        assert_eq!(status, 503, "publish without Redis: {body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(took < Duration::from_secs(5), "publish answered after {took:?}");
    }
    assert_eq!(cluster.api.readyz().await, 503, "api /readyz without Redis");
    // Connected clients get clear errors too, and stay connected.
    let started = Instant::now();
    c0.send_json(json!({"op": "publish", "id": 5, "room": room, "event": "tick", "data": 0}))
        .await;
    let error = c0.next_op("error", Duration::from_secs(10)).await;
    assert_eq!(
        (&error["id"], &error["code"]),
        (&json!(5), &json!("unavailable")),
        "{error}"
    );
    let publish_error_after = started.elapsed();
    let started = Instant::now();
    c1.send_json(json!({"op": "join", "id": 6, "room": "room:other"}))
        .await;
    let error = c1.next_op("error", Duration::from_secs(10)).await;
    assert_eq!(
        (&error["id"], &error["code"]),
        (&json!(6), &json!("unavailable")),
        "{error}"
    );
    let join_error_after = started.elapsed();
    c0.assert_alive(7).await;
    c1.assert_alive(7).await;

    cluster.redis.restart().await;
    let restarted = Instant::now();
    for node in cluster.gateways.iter().chain([&cluster.api]) {
        eventually(LONG, "/readyz 200 again after the Redis restart", || async {
            (node.readyz().await == 200).then_some(())
        })
        .await;
    }
    let ready_after = restarted.elapsed();

    // History was lost: live members are told so, with the new position.
    let r0 = next_resync(&mut c0, room, LONG).await;
    let r1 = next_resync(&mut c1, room, LONG).await;
    let new_epoch = epoch_of(&r0);
    assert_ne!(new_epoch, old_epoch, "{r0}");
    assert_eq!(position(&r0), position(&r1), "one room, one position");
    assert_eq!(r0["offset"], 0, "nothing published since the restart: {r0}");
    let resynced_after = restarted.elapsed();

    // New publishes succeed and reach everyone, in the new epoch.
    publish_range(&mut api, room, 1, 5).await;
    let (mut got0, mut got1) = (Vec::new(), Vec::new());
    read_through(&mut c0, room, &new_epoch, &mut got0, 5, WAIT).await;
    read_through(&mut c1, room, &new_epoch, &mut got1, 5, WAIT).await;

    // A resume from before the restart cannot be recovered.
    let node = cluster.gw(1);
    let mut late = node.connect_raw().await;
    late.send_json(json!({
        "op": "hello",
        "token": node.user_token("late"),
        "resume": {room: {"offset": 3, "epoch": old_epoch}},
    }))
    .await;
    assert_eq!(late.next_json(WAIT).await["op"], "welcome");
    let (replayed, joined) = late.collect_until_joined(room).await;
    assert!(
        replayed.is_empty(),
        "nothing replayed across epochs: {replayed:?}"
    );
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_eq!(
        (joined["offset"].as_u64(), epoch_of(&joined)),
        (Some(5), new_epoch.clone()),
        "{joined}"
    );
    publish_range(&mut api, room, 6, 6).await;
    let mut got = vec![5];
    read_through(&mut late, room, &new_epoch, &mut got, 6, WAIT).await;
    for (c, got) in [(&mut c0, &mut got0), (&mut c1, &mut got1)] {
        read_through(c, room, &new_epoch, got, 6, WAIT).await;
    }
    eprintln!(
        "without Redis: client publish error after {publish_error_after:?}, join error after \
         {join_error_after:?}; after the restart: ready in {ready_after:?}, resync by {resynced_after:?}"
    );
    for node in cluster.gateways.iter().chain([&cluster.api]) {
        node.assert_no_panic().await;
    }
}

/// `epoch/offset` of each event, `resync@epoch/offset` of each resync.
fn summary(seen: &[Value]) -> String {
    let items: Vec<String> = seen
        .iter()
        .map(|m| {
            let kind = if m["op"] == "resync" { "resync@" } else { "" };
            format!("{kind}{}/{}", m["epoch"].as_str().unwrap_or("?"), m["offset"])
        })
        .collect();
    items.join(" ")
}

/// Reads `c` until the event of `room` at `(epoch, offset)`, or a resync
/// to that epoch at or past `offset` (its position includes the event);
/// returns the room's `event` and `resync` messages on the way (others are
/// skipped).
async fn read_room_until(
    c: &mut Client,
    room: &str,
    epoch: &str,
    offset: u64,
    limit: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    let mut seen: Vec<Value> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match c.next_incoming(left).await {
            Some(Incoming::Text(text)) => serde_json::from_str::<Value>(&text).unwrap(),
            other => panic!(
                "{}: waiting for {room} {epoch}/{offset}: {}; seen: {}",
                c.name,
                short(&other),
                summary(&seen)
            ),
        };
        match msg["op"].as_str() {
            Some("event" | "resync") if msg["room"] == room => {
                let at = msg["offset"].as_u64().unwrap_or(0);
                let done = msg["epoch"] == epoch
                    && match msg["op"].as_str() {
                        Some("event") => at == offset,
                        _ => at >= offset,
                    };
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            Some("error") => panic!("{}: {msg}", c.name),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_through_a_redis_restart_resyncs_once_then_continues() {
    let mut cluster = Cluster::start(2, ROOMS).await;
    let room = "room:through";
    let mut c0 = cluster.gw(0).connect_hello(&user_token("u0")).await;
    c0.name = "u0@gw-1".into();
    let mut c1 = cluster.gw(1).connect_hello(&user_token("u1")).await;
    c1.name = "u1@gw-2".into();
    let old_epoch = epoch_of(&c0.join(1, room).await);
    c1.join(1, room).await;

    // Publishes every few milliseconds all along, keeping what succeeded.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Arc<std::sync::Mutex<Vec<(String, u64)>>> = Arc::default();
    let publisher = {
        let mut api = cluster.api.api_client().await;
        let (stop, accepted) = (stop.clone(), accepted.clone());
        tokio::spawn(async move {
            let mut refused = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = json!({"room": room, "event": "tick", "data": null});
                match api.call("POST", "/v1/publish", Some(body)).await {
                    (200, body) => {
                        let pos = &body["positions"][room];
                        let pos = (epoch_of(pos), pos["offset"].as_u64().unwrap());
                        accepted.lock().unwrap().push(pos);
                    }
                    (503, body) if body["error"]["code"] == "unavailable" => refused += 1,
                    (status, body) => panic!("publish: {status} {body}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            refused
        })
    };
    let count = || accepted.lock().unwrap().len();
    eventually(LONG, "20 publishes", || async { (count() >= 20).then_some(()) }).await;
    cluster.redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_restart = count();
    cluster.redis.restart().await;
    eventually(LONG, "publishes after the restart", || async {
        (count() >= before_restart + 50).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let refused = bounded(LONG, "the publisher to stop", publisher).await.unwrap();
    let accepted = accepted.lock().unwrap().clone();
    let (new_epoch, last) = accepted.last().cloned().unwrap();
    assert_ne!(new_epoch, old_epoch);
    let old_last = accepted
        .iter()
        .filter(|(e, _)| *e == old_epoch)
        .map(|(_, o)| *o)
        .max()
        .unwrap();

    // Each member: old events 1..=k (k at least every accepted one), one
    // resync to the new epoch at some p, then p+1..=last: no gap, no
    // duplicate, no event of the new epoch before its resync.
    for c in [&mut c0, &mut c1] {
        let seen = read_room_until(c, room, &new_epoch, last, LONG).await;
        let split = seen
            .iter()
            .position(|m| m["op"] == "resync")
            .unwrap_or_else(|| panic!("{}: no resync in {}", c.name, short(&seen)));
        let old: Vec<u64> = seen[..split].iter().map(offset_of).collect();
        assert!(seen[..split].iter().all(|m| m["epoch"] == old_epoch.as_str()));
        assert_eq!(
            old,
            (1..=old.len() as u64).collect::<Vec<_>>(),
            "{}: old epoch",
            c.name
        );
        assert!(
            old.len() as u64 >= old_last,
            "{}: {} of {old_last} old events",
            c.name,
            old.len()
        );
        let resync = &seen[split];
        assert_eq!(resync["epoch"], new_epoch.as_str(), "{}: {resync}", c.name);
        let p = offset_of(resync);
        let new: Vec<u64> = seen[split + 1..].iter().map(offset_of).collect();
        assert!(
            seen[split + 1..]
                .iter()
                .all(|m| m["op"] == "event" && m["epoch"] == new_epoch.as_str()),
            "{}: one resync, then new-epoch events: {}",
            c.name,
            short(&&seen[split..])
        );
        assert_eq!(
            new,
            (p + 1..=last).collect::<Vec<_>>(),
            "{}: new epoch after {resync}",
            c.name
        );
        c.expect_nothing_in(room, Duration::from_millis(200)).await;
        eprintln!(
            "{}: old 1..={}, resync at {p}, new {}..={last}; {refused} publishes refused",
            c.name,
            old.len(),
            p + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_answered_in_bounded_time_and_nothing_is_lost() {
    let cluster = Cluster::start(2, ROOMS).await;
    let room = "room:frozen";
    let mut c0 = cluster.gw(0).connect_hello(&user_token("u0")).await;
    let mut c1 = cluster.gw(1).connect_hello(&user_token("u1")).await;
    let epoch = epoch_of(&c0.join(1, room).await);
    c1.join(1, room).await;
    let mut api = cluster.api.api_client().await;
    publish_range(&mut api, room, 1, 3).await;
    let (mut got0, mut got1) = (Vec::new(), Vec::new());
    read_through(&mut c0, room, &epoch, &mut got0, 3, WAIT).await;
    read_through(&mut c1, room, &epoch, &mut got1, 3, WAIT).await;

    // A hung Redis: connections stay open, nothing answers.
    cluster.redis.freeze();
    let frozen = Instant::now();
    for _ in 0..2 {
        let (status, body, took) = timed_publish(&cluster.api, room).await;
        assert_eq!(status, 503, "publish to a hung Redis: {body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(took < Duration::from_secs(5), "publish answered after {took:?}");
    }
    // Each node notices that its subscription is dead (liveness pings).
    for node in &cluster.gateways {
        eventually(Duration::from_secs(12), "/readyz: subscription down", || async {
            let (status, body) = node.get_text("/readyz").await;
            (status == 503 && body.contains("subscription")).then_some(())
        })
        .await;
    }
    let detected_after = frozen.elapsed();
    cluster.redis.thaw();
    for node in cluster.gateways.iter().chain([&cluster.api]) {
        eventually(LONG, "/readyz 200 after Redis answers again", || async {
            (node.readyz().await == 200).then_some(())
        })
        .await;
    }
    // The publishes that timed out may or may not have happened (Redis
    // ran them when it woke up): either way every member sees the same
    // gapless sequence, and nothing needs a resync (history is intact).
    let mut last = 0;
    for _ in 0..5 {
        let (status, body) = api
            .call(
                "POST",
                "/v1/publish",
                Some(json!({"room": room, "event": "tick", "data": null})),
            )
            .await;
        assert_eq!(status, 200, "publish after the thaw: {body}");
        last = body["positions"][room]["offset"].as_u64().unwrap();
    }
    assert!((8..=10).contains(&last), "3 + 0..=2 timed out + 5 = {last}");
    read_through(&mut c0, room, &epoch, &mut got0, last, WAIT).await;
    read_through(&mut c1, room, &epoch, &mut got1, last, WAIT).await;
    c0.expect_no_message(Duration::from_millis(300)).await;
    c1.expect_no_message(Duration::from_millis(10)).await;
    eprintln!("hung subscription detected after {detected_after:?}; {last} events in all");
}

/// `herald_redis_reconnects_total` of a gateway.
async fn reconnects(node: &Herald) -> f64 {
    let (status, metrics) = node.get_text("/metrics").await;
    assert_eq!(status, 200);
    metric_value(&metrics, "herald_redis_reconnects_total").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_subscriber_connection_is_gap_filled_without_resync() {
    let cluster = Cluster::start(1, ROOMS).await;
    let proxy = TcpProxy::start(cluster.redis.addr()).await;
    let proxied = cluster.start_gateway("gw-proxied", &proxy.redis_url()).await;
    let room = "room:cut";
    let mut clients = Vec::new();
    for (i, node) in [&proxied, &proxied, cluster.gw(0)].into_iter().enumerate() {
        let mut c = node.connect_hello(&node.user_token(&format!("p{i}"))).await;
        c.name = format!("p{i}@{}", c.welcome.as_ref().unwrap()["node"]);
        let epoch = epoch_of(&c.join(1, room).await);
        clients.push((c, epoch, Vec::new()));
    }
    let epoch = clients[0].1.clone();

    let publisher = Publisher::start(&cluster.api, room, Duration::from_millis(3), 100_000).await;
    publisher.wait_for(20).await;
    let mut cuts = 0;
    for round in 1..=4 {
        let before = publisher.published();
        if round % 2 == 1 {
            // A brief cut: the node reconnects at once.
            cuts += proxy.cut();
        } else {
            // A cut that lasts: the node stays out while events are missed.
            proxy.set_blocked(true);
            cuts += proxy.cut();
            eventually(WAIT, "/readyz 503 while the subscription is down", || async {
                (proxied.readyz().await == 503).then_some(())
            })
            .await;
            publisher.wait_for(before + 30).await;
            proxy.set_blocked(false);
        }
        eventually(LONG, "the subscriber to reconnect", || async {
            (reconnects(&proxied).await >= round as f64).then_some(())
        })
        .await;
        eventually(LONG, "/readyz 200 after reconnecting", || async {
            (proxied.readyz().await == 200).then_some(())
        })
        .await;
        let after = publisher.published();
        publisher.wait_for(after + 10).await;
    }
    let last = publisher.finish().await;
    for (c, epoch, got) in &mut clients {
        read_through(c, room, epoch, got, last, LONG).await;
        c.expect_no_message(Duration::from_millis(300)).await;
    }
    assert_eq!(clients[0].1, epoch);

    let (_, metrics) = proxied.get_text("/metrics").await;
    let reconnects = reconnects(&proxied).await;
    let filled = metric_value(&metrics, "herald_redis_gap_fill_events_total").unwrap_or(0.0);
    let resyncs = metric_value(&metrics, "herald_redis_resyncs_total").unwrap_or(0.0);
    assert!(
        reconnects >= 4.0,
        "the subscriber reconnected after each cut: {reconnects}"
    );
    assert!(filled > 0.0, "missed events came from history: {filled}");
    assert_eq!(resyncs, 0.0, "no resync");
    eprintln!(
        "{last} events; {cuts} connections cut; {reconnects} reconnects; {filled} events gap-filled; \
         proxy forwarded {} connections",
        proxy.accepted()
    );
    proxied.assert_no_panic().await;
}

/// `GET /v1/stats`: the listed nodes by id.
async fn stats(api: &Herald) -> BTreeMap<String, Value> {
    let (status, body) = api.api_call("GET", "/v1/stats", None).await;
    assert_eq!(status, 200, "{body}");
    body["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {body}"))
        .iter()
        .map(|n| {
            for field in ["started_at", "last_seen"] {
                assert!(
                    n[field].as_str().is_some_and(|t| t.contains('T')),
                    "{field} is an RFC 3339 time: {n}"
                );
            }
            (n["id"].as_str().unwrap().to_string(), n.clone())
        })
        .collect()
}

/// `(connections, rooms)` of each node in `stats`.
fn counts(stats: &BTreeMap<String, Value>) -> BTreeMap<String, (u64, u64)> {
    stats
        .iter()
        .map(|(id, n)| {
            (
                id.clone(),
                (n["connections"].as_u64().unwrap(), n["rooms"].as_u64().unwrap()),
            )
        })
        .collect()
}

fn nodes(list: &[(&str, (u64, u64))]) -> BTreeMap<String, (u64, u64)> {
    list.iter().map(|(id, c)| (id.to_string(), *c)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_list_the_live_gateways_with_their_connections() {
    // Heartbeats come every 5 s: each wait below spans at least two.
    const BEATS: Duration = Duration::from_secs(12);
    let mut cluster = Cluster::start(3, ROOMS).await;
    let _ann = cluster.gw(0).connect_hello(&user_token("ann")).await;
    let _ben = cluster.gw(0).connect_hello(&user_token("ben")).await;
    let mut cat = cluster.gw(1).connect_hello(&user_token("cat")).await;
    cat.join(1, "room:stats").await;

    // Rooms: each user's own room, `broadcast`, and `room:stats` on gw-2.
    let want = nodes(&[("gw-1", (2, 3)), ("gw-2", (1, 3)), ("gw-3", (0, 0))]);
    let before = eventually(BEATS, &format!("stats {want:?}"), || async {
        let now = stats(&cluster.api).await;
        (counts(&now) == want).then_some(now)
    })
    .await;

    // A killed node stops heartbeating (and leaves the list within 30 s,
    // not waited for here); the live ones keep reporting correctly.
    cluster.gateways[2].sigkill();
    // (Its last heartbeat may have landed after `before` was read.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    let at_kill = stats(&cluster.api).await.remove("gw-3");
    let _dan = cluster.gw(1).connect_hello(&user_token("dan")).await;
    let want = nodes(&[("gw-1", (2, 3)), ("gw-2", (2, 4))]);
    let after = eventually(BEATS, &format!("stats of the live nodes {want:?}"), || async {
        let mut now = stats(&cluster.api).await;
        let dead = now.remove("gw-3");
        (counts(&now) == want && now["gw-1"]["last_seen"] != before["gw-1"]["last_seen"]).then_some(dead)
    })
    .await;
    if let (Some(at_kill), Some(dead)) = (at_kill, after) {
        assert_eq!(
            dead["last_seen"], at_kill["last_seen"],
            "a dead node does not heartbeat"
        );
        assert_eq!(dead["started_at"], before["gw-3"]["started_at"]);
    }
    assert!(
        !stats(&cluster.api).await.contains_key("api-1"),
        "API nodes are not gateways"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_member_events_cross_nodes() {
    let cluster = Cluster::start(2, ROOMS).await;
    let room = "pres:lobby";
    let (g1, g2) = (cluster.gw(0), cluster.gw(1));
    let mut ann = g1.connect_hello(&g1.user_token("ann")).await;
    ann.name = "ann@gw-1".into();
    let mut bob = g2.connect_hello(&g2.user_token("bob")).await;
    bob.name = "bob@gw-2".into();
    ann.join(1, room).await;
    // Presence is recorded just after `joined`: wait until ann is listed.
    let listed = |members: Vec<(&str, u64)>| {
        json!(
            members
                .into_iter()
                .map(|(user, conns)| json!({"user": user, "conns": conns}))
                .collect::<Vec<_>>()
        )
    };
    let presence_is = |want: Value| {
        let api = &cluster.api;
        async move {
            eventually(WAIT, &format!("presence {want}"), || async {
                let (status, body) = api
                    .api_call("GET", &format!("/v1/rooms/{room}/presence"), None)
                    .await;
                assert_eq!(status, 200, "{body}");
                (body["members"] == want).then_some(())
            })
            .await
        }
    };
    presence_is(listed(vec![("ann", 1)])).await;

    bob.join(1, room).await;
    let member = next_member(&mut ann).await;
    assert_eq!(
        member,
        json!({"op": "member", "room": room, "user": "bob", "state": "joined"})
    );
    presence_is(listed(vec![("ann", 1), ("bob", 1)])).await;
    for (c, id) in [(&mut ann, 2), (&mut bob, 2)] {
        let reply = c.request(json!({"op": "presence", "id": id, "room": room})).await;
        assert_eq!(reply["op"], "presence", "{reply}");
        assert_eq!(reply["members"], listed(vec![("ann", 1), ("bob", 1)]), "{reply}");
    }

    // bob's second connection, on the other node: no new `joined`, two conns.
    let mut bob2 = g1.connect_hello(&g1.user_token("bob")).await;
    bob2.name = "bob@gw-1".into();
    bob2.join(1, room).await;
    presence_is(listed(vec![("ann", 1), ("bob", 2)])).await;
    // bob's first connection leaves: bob is still there.
    let left = bob.request(json!({"op": "leave", "id": 3, "room": room})).await;
    assert_eq!(left["op"], "left", "{left}");
    presence_is(listed(vec![("ann", 1), ("bob", 1)])).await;
    ann.expect_no_message(Duration::from_millis(300)).await;
    // His last connection leaves: ann (on its node) and only ann is told.
    drop(bob2);
    let member = next_member(&mut ann).await;
    assert_eq!(
        member,
        json!({"op": "member", "room": room, "user": "bob", "state": "left"})
    );
    presence_is(listed(vec![("ann", 1)])).await;

    // ann's arrival, seen from the other node.
    let mut cat = g2.connect_hello(&g2.user_token("cat")).await;
    cat.join(1, room).await;
    let member = next_member(&mut ann).await;
    assert_eq!(member["user"], "cat", "{member}");
    let left = ann.request(json!({"op": "leave", "id": 4, "room": room})).await;
    assert_eq!(left["op"], "left", "{left}");
    let member = next_member(&mut cat).await;
    assert_eq!(
        member,
        json!({"op": "member", "room": room, "user": "ann", "state": "left"})
    );
    bob.expect_no_message(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_redis_exit_with_a_clear_error() {
    let dir = unique_dir("no-redis");
    let config = dir.join("herald.toml");
    std::fs::write(&config, config_text(ROOMS)).unwrap();
    let config = config.to_str().unwrap();
    // Nothing listens there.
    let url = format!("redis://127.0.0.1:{}", free_port());
    for mode in ["gateway", "api"] {
        let started = Instant::now();
        let env = [("HERALD_REDIS_URL", url.as_str()), ("HERALD_NODE_ID", "lonely")];
        let args = [mode, "--addr", "127.0.0.1:0", "--config", config];
        let (status, stdout, stderr) = run_herald(&args, &env, Duration::from_secs(15)).await;
        assert!(
            !status.success(),
            "herald {mode} without Redis: {status}; stderr: {stderr}"
        );
        assert!(
            stderr.contains("cannot reach Redis") && stderr.contains(&url),
            "herald {mode}: stderr should say Redis is unreachable and where: {stderr}"
        );
        assert!(
            !stdout.contains("listening"),
            "herald {mode} listened anyway: {stdout}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );

        // No Redis configured at all: said just as clearly.
        let (status, _, stderr) = run_herald(&args, &[], Duration::from_secs(15)).await;
        assert!(!status.success(), "herald {mode} with no Redis URL: {status}");
        assert!(stderr.contains("HERALD_REDIS_URL"), "herald {mode}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_unsubscribe_reach_every_node() {
    let cluster = Cluster::start(3, ROOMS).await;
    let g = |i: usize| cluster.gw(i);
    let room = "room:ctl";

    // Disconnect: ann on gw-1 and gw-2; cat on gw-3 is untouched.
    let mut ann1 = g(0).connect_hello(&g(0).user_token("ann")).await;
    ann1.name = "ann@gw-1".into();
    let mut ann2 = g(1).connect_with_header(&g(1).user_token("ann")).await;
    ann2.name = "ann@gw-2".into();
    let mut cat = g(2).connect_hello(&g(2).user_token("cat")).await;
    cat.name = "cat@gw-3".into();
    let (status, body) = cluster
        .api
        .api_call(
            "POST",
            "/v1/users/ann/disconnect",
            Some(json!({"reason": "test"})),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"connections": 2})));
    for c in [&mut ann1, &mut ann2] {
        let (code, _) = c.expect_close(WAIT).await;
        assert_eq!(code, 4010, "{}", c.name);
    }
    cat.assert_alive(1).await;

    // Unsubscribe: bob on gw-1 and gw-2 leaves the room; cat stays in it.
    let mut bob1 = g(0).connect_hello(&g(0).user_token("bob")).await;
    bob1.name = "bob@gw-1".into();
    let mut bob2 = g(1).connect_hello(&g(1).user_token("bob")).await;
    bob2.name = "bob@gw-2".into();
    let epoch = epoch_of(&bob1.join(1, room).await);
    bob2.join(1, room).await;
    cat.join(2, room).await;
    let mut api = cluster.api.api_client().await;
    publish_range(&mut api, room, 1, 1).await;
    let mut got = [Vec::new(), Vec::new(), Vec::new()];
    for (c, got) in [&mut bob1, &mut bob2, &mut cat].into_iter().zip(got.iter_mut()) {
        read_through(c, room, &epoch, got, 1, WAIT).await;
    }
    let (status, body) = api
        .call(
            "POST",
            &format!("/v1/rooms/{room}/unsubscribe"),
            Some(json!({"user": "bob"})),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"connections": 2})));
    for c in [&mut bob1, &mut bob2] {
        let left = c.next_op("left", WAIT).await;
        assert_eq!(
            left,
            json!({"op": "left", "room": room, "reason": "unsubscribed"}),
            "{}",
            c.name
        );
    }
    publish_range(&mut api, room, 2, 3).await;
    let [_, _, got_cat] = &mut got;
    read_through(&mut cat, room, &epoch, got_cat, 3, WAIT).await;
    for c in [&mut bob1, &mut bob2] {
        c.expect_no_message(Duration::from_millis(300)).await;
        c.assert_alive(9).await;
    }
    // Unsubscribing a user with no connection anywhere affects nobody.
    let (status, body) = api
        .call(
            "POST",
            &format!("/v1/rooms/{room}/unsubscribe"),
            Some(json!({"user": "nobody"})),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"connections": 0})));
}
