//! The behaviours every engine keeps, each written once over an
//! [`Engine`] and instantiated for memory and Redis in `main.rs`.
//!
//! Where the engines differ by design (a memory feed delivers every room),
//! the stricter assertion is scoped with [`Engine::FILTERS_BY_INTEREST`].
//! "Nothing else arrived" is checked with a barrier: a later delivery on
//! the same path, after which anything sent before it would have arrived.

use std::time::Duration;

use bytes::Bytes;
use herald_broker::{NodeInfo, PublishRequest, event_frame};
use herald_common::policy::Retention;
use herald_common::protocol::PresenceMember;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::engines::Engine;
use crate::sink::{RecordingSink, Transient};
use crate::util::{WAIT, at, eventually, history, offsets, publish, retention, room};

/// Offsets 1, 2, 3… per room under one epoch; a room's epoch exists (and
/// is stable) before its first event.
pub async fn offsets_are_contiguous_per_room<E: Engine>(engine: E) {
    let broker = engine.broker().await;
    let other_node = engine.broker().await;
    let (a, b) = (room("offsets:a"), room("offsets:b"));
    let r = retention(100);

    let unused = broker.position(&a, r).await.unwrap();
    assert_eq!(unused.offset, 0, "an unused room is at offset 0");
    assert!(!unused.epoch.is_empty(), "an unused room already has an epoch");
    assert_eq!(
        broker.position(&a, r).await.unwrap(),
        unused,
        "the epoch is stable"
    );
    assert_eq!(
        other_node.position(&a, r).await.unwrap(),
        unused,
        "every node sees it"
    );
    let empty = history(&*broker, &a, r, Some(unused.clone()), 100).await;
    assert_eq!((empty.recovered, empty.events.len()), (Some(true), 0));

    let mut got = Vec::new();
    for n in 1..=3 {
        got.push(publish(&*broker, &a, r, n).await);
    }
    assert_eq!(
        got,
        vec![at(1, &unused.epoch), at(2, &unused.epoch), at(3, &unused.epoch)]
    );

    let b1 = publish(&*broker, &b, r, 1).await;
    let b2 = publish(&*other_node, &b, r, 2).await;
    assert_eq!((b1.offset, b2.offset), (1, 2), "offsets are per room");
    assert_eq!(b1.epoch, b2.epoch);

    // Whichever node publishes, the room's sequence continues.
    assert_eq!(publish(&*other_node, &a, r, 4).await, at(4, &unused.epoch));
    assert_eq!(broker.position(&a, r).await.unwrap(), at(4, &unused.epoch));
    assert_eq!(broker.position(&b, r).await.unwrap(), b2);
}

/// What a test publishes and then expects to see delivered.
struct Sent {
    event: &'static str,
    data: Box<RawValue>,
    notification: Option<&'static str>,
}

/// An attached sink gets each event once, in offset order, as the exact
/// frame bytes; history holds the same bytes.
pub async fn sink_receives_exact_frames_once_in_order<E: Engine>(engine: E) {
    let node = engine.broker().await;
    let publisher = engine.broker().await;
    let r = retention(100);
    let (live, other, barrier) = (
        room("deliver:live"),
        room("deliver:other"),
        room("deliver:barrier"),
    );
    let sink = RecordingSink::new(r);
    let feed = node.attach(sink.clone());
    feed.set_interest(&live, true);
    feed.wait_subscribed(&live).await.unwrap();

    let sent: Vec<Sent> = [
        ("score.updated", r#"{"n":1}"#, None),
        (
            "score.updated",
            r#"{"s":"quote \" backslash \\ é \u2028","u":[1,2.5,null]}"#,
            Some("ntf-1"),
        ),
        ("slot.taken", "[1,2,3]", None),
        ("slot.taken", "null", None),
        ("e", r#""a string""#, None),
    ]
    .into_iter()
    .map(|(event, data, notification)| Sent {
        event,
        data: RawValue::from_string(data.to_string()).unwrap(),
        notification,
    })
    .collect();
    let before = herald_common::now_ms();
    let mut positions = Vec::new();
    for s in &sent {
        let req = PublishRequest {
            room: &live,
            event: s.event,
            data: &s.data,
            retention: r,
            notification: s.notification,
        };
        positions.push(publisher.publish(req).await.unwrap());
        // Interleaved traffic in a room this node never asked for.
        publish(&*publisher, &other, r, positions.len() as u64).await;
    }
    let after = herald_common::now_ms();
    let epoch = positions[0].epoch.clone();
    assert_eq!(
        positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );

    eventually("the five events", WAIT, || sink.event_count(&live) >= sent.len()).await;
    // A sixth event as a barrier: a duplicate of any earlier one would
    // have been delivered before it.
    publish(&*publisher, &live, r, 6).await;
    eventually("the barrier event", WAIT, || sink.event_count(&live) >= 6).await;
    assert_eq!(sink.offsets(&live), vec![1, 2, 3, 4, 5, 6], "each once, in order");

    let delivered = sink.events(&live);
    for ((s, pos), got) in sent.iter().zip(&positions).zip(&delivered) {
        assert_eq!((got.offset, got.epoch.as_str()), (pos.offset, epoch.as_str()));
        assert_eq!(pos.epoch, epoch, "one epoch for the room");
        let req = PublishRequest {
            room: &live,
            event: s.event,
            data: &s.data,
            retention: r,
            notification: s.notification,
        };
        assert_eq!(
            got.frame,
            event_frame(&req, pos.offset, &epoch, got.ts),
            "the exact frame bytes"
        );
        let frame: Value = serde_json::from_slice(&got.frame).expect("the frame is JSON");
        assert_eq!(frame["op"], "event");
        assert_eq!(frame["room"], live.as_str());
        assert_eq!(frame["event"], s.event);
        assert_eq!(
            frame["data"],
            serde_json::from_str::<Value>(s.data.get()).unwrap()
        );
        assert_eq!(frame["offset"], pos.offset);
        assert_eq!(frame["epoch"], epoch.as_str());
        assert_eq!(frame["ts"], got.ts);
        match s.notification {
            Some(id) => assert_eq!(frame["notification"], id),
            None => assert!(frame.get("notification").is_none(), "{frame}"),
        }
        // Loose: the publish time is the server's clock, on this machine.
        assert!(
            got.ts + 5_000 >= before && got.ts <= after + 5_000,
            "ts {} not near [{before}, {after}]",
            got.ts
        );
    }

    let stored = history(&*node, &live, r, None, 100).await;
    assert_eq!(offsets(&stored), vec![1, 2, 3, 4, 5, 6]);
    for (stored, got) in stored.events.iter().zip(&delivered) {
        assert_eq!(
            (&stored.frame, stored.ts),
            (&got.frame, got.ts),
            "history holds the same bytes"
        );
    }

    if E::FILTERS_BY_INTEREST {
        assert!(
            sink.offsets(&other).is_empty(),
            "a room the feed did not ask for is not delivered"
        );

        // Withdrawn interest stops delivery: by the time a room subscribed
        // after the withdrawal is live, the withdrawal has taken effect.
        feed.set_interest(&live, false);
        feed.set_interest(&barrier, true);
        feed.wait_subscribed(&barrier).await.unwrap();
        publish(&*publisher, &live, r, 7).await;
        publish(&*publisher, &barrier, r, 1).await;
        eventually("the barrier room's event", WAIT, || {
            sink.event_count(&barrier) == 1
        })
        .await;
        assert_eq!(
            sink.event_count(&live),
            6,
            "no delivery after the interest is withdrawn"
        );
    }
}

/// Concurrent publishers from several nodes: offsets 1..=1000 exactly,
/// delivered in order.
pub async fn concurrent_publishers_get_contiguous_offsets<E: Engine>(engine: E) {
    const TASKS: u64 = 4;
    const EACH: u64 = 250;
    let node = engine.broker().await;
    let r = retention(2000);
    let busy = room("concurrent:busy");
    let sink = RecordingSink::new(r);
    let feed = node.attach(sink.clone());
    feed.set_interest(&busy, true);
    feed.wait_subscribed(&busy).await.unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let publisher = engine.broker().await;
        let busy = busy.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            for i in 0..EACH {
                got.push(publish(&*publisher, &busy, r, task * EACH + i).await);
            }
            got
        });
    }
    let mut positions = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let got = done.expect("publisher task");
        // Each publisher sees its own offsets increase.
        assert!(got.windows(2).all(|w| w[0].offset < w[1].offset));
        positions.extend(got);
    }
    let epoch = positions[0].epoch.clone();
    assert!(positions.iter().all(|p| p.epoch == epoch), "one epoch");
    let mut assigned: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    assigned.sort_unstable();
    assert_eq!(
        assigned,
        (1..=TASKS * EACH).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );

    eventually("all 1000 events", WAIT, || sink.event_count(&busy) >= 1000).await;
    assert_eq!(
        sink.offsets(&busy),
        (1..=TASKS * EACH).collect::<Vec<_>>(),
        "in order"
    );
    assert!(sink.events(&busy).iter().all(|e| e.epoch == epoch));
    assert!(sink.resyncs().is_empty());
}

/// History: the newest `limit`; `since` recovered exactly within the
/// window of `history_size` events, even when more are stored.
pub async fn history_recovers_exactly_the_window<E: Engine>(engine: E) {
    const SIZE: u32 = 10;
    let broker = engine.broker().await;
    let r = retention(SIZE);
    let h = room("history:h");
    for n in 1..=300 {
        publish(&*broker, &h, r, n).await;
    }
    if let Some(stored) = engine.stored_history_len(&h).await {
        // Redis trims with MAXLEN ~: the test needs the extra entries to
        // exist, or it would not show that recovery ignores them.
        assert!(
            stored > SIZE as usize + 1,
            "only {stored} stored; the test needs more"
        );
    }
    let newest = broker.position(&h, r).await.unwrap();
    assert_eq!(newest.offset, 300);
    let epoch = newest.epoch.clone();
    let since = |offset| Some(at(offset, &epoch));

    let tail = history(&*broker, &h, r, None, 4).await;
    assert_eq!(offsets(&tail), vec![297, 298, 299, 300]);
    assert_eq!((tail.recovered, &tail.position), (None, &newest));
    let all = history(&*broker, &h, r, None, 1000).await;
    assert_eq!(
        offsets(&all),
        (291..=300).collect::<Vec<_>>(),
        "never beyond the window"
    );
    for event in &all.events {
        let frame: Value = serde_json::from_slice(&event.frame).unwrap();
        assert_eq!(
            (frame["offset"].as_u64(), frame["epoch"].as_str()),
            (Some(event.offset), Some(&*epoch))
        );
        assert_eq!(frame["data"]["n"], event.offset);
        assert_eq!(frame["ts"], event.ts);
    }

    let edge = history(&*broker, &h, r, since(290), 1000).await;
    assert_eq!(
        edge.recovered,
        Some(true),
        "newest - history_size is still recoverable"
    );
    assert_eq!(offsets(&edge), (291..=300).collect::<Vec<_>>());
    assert_eq!(edge.position, newest);
    let inside = history(&*broker, &h, r, since(296), 1000).await;
    assert_eq!(
        (inside.recovered, offsets(&inside)),
        (Some(true), vec![297, 298, 299, 300])
    );

    let too_old = history(&*broker, &h, r, since(289), 1000).await;
    assert_eq!(too_old.recovered, Some(false), "older than newest - history_size");
    assert!(too_old.events.is_empty(), "nothing replayed when not recovered");
    assert_eq!(too_old.position, newest);
    let ancient = history(&*broker, &h, r, since(0), 1000).await;
    assert_eq!((ancient.recovered, ancient.events.len()), (Some(false), 0));

    let up_to_date = history(&*broker, &h, r, since(300), 1000).await;
    assert_eq!((up_to_date.recovered, up_to_date.events.len()), (Some(true), 0));
    let future = history(&*broker, &h, r, since(301), 1000).await;
    assert_eq!((future.recovered, future.events.len()), (Some(false), 0));
    let wrong_epoch = history(&*broker, &h, r, Some(at(296, "not-the-epoch")), 1000).await;
    assert_eq!(
        (wrong_epoch.recovered, wrong_epoch.events.len()),
        (Some(false), 0)
    );

    // A smaller window at read time applies to what is already stored.
    let narrow = retention(3);
    let narrowed = history(&*broker, &h, narrow, since(296), 1000).await;
    assert_eq!((narrowed.recovered, narrowed.events.len()), (Some(false), 0));
    let within = history(&*broker, &h, narrow, since(297), 1000).await;
    assert_eq!(
        (within.recovered, offsets(&within)),
        (Some(true), vec![298, 299, 300])
    );
}

/// Events older than `history_ttl_s` leave history: a `since` that needs
/// them is not recovered, while the epoch and offsets carry on.
pub async fn history_ttl_expires_events_but_keeps_the_epoch<E: Engine>(engine: E) {
    let broker = engine.broker().await;
    let short = Retention {
        history_size: 100,
        history_ttl_s: 1,
        meta_ttl_s: 86_400,
    };
    let t = room("history:ttl");
    for n in 1..=3 {
        publish(&*broker, &t, short, n).await;
    }
    let epoch = broker.position(&t, short).await.unwrap().epoch;
    let recovered = history(&*broker, &t, short, Some(at(1, &epoch)), 100).await;
    assert_eq!(
        (recovered.recovered, offsets(&recovered)),
        (Some(true), vec![2, 3])
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let gone = history(&*broker, &t, short, Some(at(1, &epoch)), 100).await;
    assert_eq!((gone.recovered, gone.events.len()), (Some(false), 0));
    assert_eq!(gone.position, at(3, &epoch), "the epoch outlives its events");
    assert_eq!(
        (history(&*broker, &t, short, Some(at(3, &epoch)), 100).await).recovered,
        Some(true)
    );
    assert_eq!(publish(&*broker, &t, short, 4).await, at(4, &epoch));
}

/// When a room's metadata expires (`history_meta_ttl_s`) a new epoch
/// begins at offset 0, and positions of the old epoch are not recovered.
pub async fn expired_metadata_starts_a_new_epoch<E: Engine>(engine: E) {
    let broker = engine.broker().await;
    let volatile = Retention {
        history_size: 10,
        history_ttl_s: 300,
        meta_ttl_s: 1,
    };
    let r = retention(10);
    let m = room("epoch:meta");
    for n in 1..=3 {
        publish(&*broker, &m, volatile, n).await;
    }
    let old = broker.position(&m, volatile).await.unwrap();
    assert_eq!(old.offset, 3);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = broker.position(&m, r).await.unwrap();
    assert_eq!(fresh.offset, 0, "offsets restart with the new epoch");
    assert_ne!(fresh.epoch, old.epoch, "a new epoch");
    assert_eq!(publish(&*broker, &m, r, 1).await, at(1, &fresh.epoch));
    let stale = history(&*broker, &m, r, Some(old.clone()), 100).await;
    assert_eq!((stale.recovered, stale.events.len()), (Some(false), 0));
    let older = history(&*broker, &m, r, Some(at(1, &old.epoch)), 100).await;
    assert_eq!((older.recovered, older.events.len()), (Some(false), 0));
    let newest = history(&*broker, &m, r, None, 100).await;
    assert_eq!(offsets(&newest), vec![1], "nothing of the old epoch is left");
    let frame: Value = serde_json::from_slice(&newest.events[0].frame).unwrap();
    assert_eq!(frame["epoch"], fresh.epoch.as_str());
}

/// Presence: first join and last leave per user, counts per user.
pub async fn presence_tracks_first_join_and_last_leave<E: Engine>(engine: E) {
    let node_a = engine.broker().await;
    let node_b = engine.broker().await;
    let p = room("presence:p");
    let member = |user: &str, conns| PresenceMember {
        user: user.into(),
        conns,
    };
    assert!(node_a.presence(&p).await.unwrap().is_empty());
    assert!(node_a.presence_join(&p, "alice", "a.1").await.unwrap(), "first");
    assert!(!node_b.presence_join(&p, "alice", "b.1").await.unwrap(), "second");
    assert!(
        node_b.presence_join(&p, "bob", "b.2").await.unwrap(),
        "bob's first"
    );
    assert!(
        node_a
            .presence_join(&room("presence:other"), "alice", "a.1")
            .await
            .unwrap(),
        "per room"
    );
    assert_eq!(
        node_a.presence(&p).await.unwrap(),
        vec![member("alice", 2), member("bob", 1)]
    );
    assert_eq!(
        node_b.presence(&p).await.unwrap(),
        node_a.presence(&p).await.unwrap()
    );

    assert!(
        !node_a.presence_leave(&p, "alice", "a.1").await.unwrap(),
        "not the last"
    );
    assert!(
        !node_a.presence_leave(&p, "alice", "a.1").await.unwrap(),
        "unknown connection"
    );
    assert_eq!(
        node_a.presence(&p).await.unwrap(),
        vec![member("alice", 1), member("bob", 1)]
    );
    assert!(
        node_b.presence_leave(&p, "alice", "b.1").await.unwrap(),
        "the last"
    );
    assert!(
        !node_b.presence_leave(&p, "carol", "x").await.unwrap(),
        "never joined"
    );
    assert_eq!(node_a.presence(&p).await.unwrap(), vec![member("bob", 1)]);
    assert!(node_b.presence_leave(&p, "bob", "b.2").await.unwrap());
    assert!(node_a.presence(&p).await.unwrap().is_empty());
    assert_eq!(
        node_a.presence(&room("presence:other")).await.unwrap(),
        vec![member("alice", 1)]
    );
}

/// Transient frames reach interested sinks with their `exclude`.
pub async fn transient_frames_reach_interested_sinks<E: Engine>(engine: E) {
    let node = engine.broker().await;
    let publisher = engine.broker().await;
    let (t, other) = (room("transient:t"), room("transient:other"));
    let sink = RecordingSink::new(retention(10));
    let feed = node.attach(sink.clone());
    feed.set_interest(&t, true);
    feed.wait_subscribed(&t).await.unwrap();

    let joined = Bytes::from_static(br#"{"op":"member","room":"transient:t","user":"u","state":"joined"}"#);
    let left = Bytes::from_static(br#"{"op":"member","room":"transient:t","user":"u","state":"left"}"#);
    publisher
        .publish_transient(&other, Bytes::from_static(b"{}"), None)
        .await
        .unwrap();
    publisher
        .publish_transient(&t, joined.clone(), Some("node-1.c7"))
        .await
        .unwrap();
    publisher.publish_transient(&t, left.clone(), None).await.unwrap();
    eventually("two transient frames in the room", WAIT, || {
        sink.transients().iter().filter(|f| f.room == t.as_str()).count() >= 2
    })
    .await;
    let in_room: Vec<Transient> = sink
        .transients()
        .into_iter()
        .filter(|f| f.room == t.as_str())
        .collect();
    assert_eq!(
        in_room,
        vec![
            Transient {
                room: t.to_string(),
                frame: joined,
                exclude: Some("node-1.c7".into()),
            },
            Transient {
                room: t.to_string(),
                frame: left,
                exclude: None,
            },
        ]
    );
    if E::FILTERS_BY_INTEREST {
        assert!(sink.transients().iter().all(|f| f.room != other.as_str()));
    }
    assert!(sink.offsets(&t).is_empty(), "transient frames are not events");
    // They are outside the offset sequence.
    assert_eq!(node.position(&t, retention(10)).await.unwrap().offset, 0);
}

/// Control messages reach the feeds interested in the room (and, on an
/// engine that filters, only those).
pub async fn control_messages_reach_only_interested_feeds<E: Engine>(engine: E) {
    let (alice, bob) = (room("user:alice"), room("user:bob"));
    let node_1 = engine.broker().await;
    let node_2 = engine.broker().await;
    let api = engine.broker().await;
    let sink_1 = RecordingSink::new(retention(10));
    let sink_2 = RecordingSink::new(retention(10));
    let feed_1 = node_1.attach(sink_1.clone());
    let feed_2 = node_2.attach(sink_2.clone());
    feed_1.set_interest(&alice, true);
    feed_2.set_interest(&bob, true);
    feed_1.wait_subscribed(&alice).await.unwrap();
    feed_2.wait_subscribed(&bob).await.unwrap();

    let disconnect = Bytes::from_static(br#"{"kind":"disconnect","user":"alice"}"#);
    api.publish_control(&alice, disconnect.clone()).await.unwrap();
    // The barrier for node 2: sent after alice's, on the same path.
    api.publish_control(&bob, Bytes::from_static(b"bob"))
        .await
        .unwrap();
    let got = |sink: &RecordingSink, room: &str| {
        sink.controls()
            .into_iter()
            .filter(|(r, _)| r == room)
            .map(|(_, p)| p)
            .collect::<Vec<_>>()
    };
    eventually("node 1's control message", WAIT, || {
        !got(&sink_1, "user:alice").is_empty()
    })
    .await;
    eventually("node 2's control message", WAIT, || {
        !got(&sink_2, "user:bob").is_empty()
    })
    .await;
    assert_eq!(
        got(&sink_1, "user:alice"),
        vec![disconnect],
        "exactly once, same bytes"
    );
    assert_eq!(got(&sink_2, "user:bob"), vec![Bytes::from_static(b"bob")]);
    if E::FILTERS_BY_INTEREST {
        assert!(got(&sink_2, "user:alice").is_empty(), "node 2 holds no alice");
        assert!(got(&sink_1, "user:bob").is_empty(), "node 1 holds no bob");
    }
    assert!(
        sink_1.offsets(&alice).is_empty(),
        "control messages are not events"
    );
}

/// The node registry lists each node's latest heartbeat.
pub async fn node_registry_lists_heartbeats<E: Engine>(engine: E) {
    let broker = engine.broker().await;
    let other = engine.broker().await;
    let now = herald_common::now_ms();
    let node = |id: &str, connections| NodeInfo {
        id: id.into(),
        connections,
        rooms: 3,
        started_at: now - 1_000,
        last_seen: now,
    };
    broker.heartbeat(&node("node-b", 5)).await.unwrap();
    other.heartbeat(&node("node-a", 7)).await.unwrap();
    assert_eq!(
        other.nodes().await.unwrap(),
        vec![node("node-a", 7), node("node-b", 5)]
    );
    broker.heartbeat(&node("node-b", 6)).await.unwrap();
    assert_eq!(
        broker.nodes().await.unwrap(),
        vec![node("node-a", 7), node("node-b", 6)]
    );
}
