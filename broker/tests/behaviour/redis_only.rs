//! Behaviours only the Redis engine has: state that outlives a process
//! (a crashed node's presence, stale node entries), a Redis that restarts
//! without persistence, and a subscriber connection that drops and must
//! reconnect and fill its gap. Faults are real: `redis-server` is killed
//! and restarted, or a TCP proxy cuts the broker's connections.

use std::time::Duration;

use herald_broker::{Broker, BrokerError, Feed, HistoryQuery, NodeInfo, PublishRequest, RedisOptions};
use herald_common::protocol::PresenceMember;
use herald_common::rooms::RoomName;
use serde_json::value::RawValue;

use crate::engines::{Engine, Redis};
use crate::proxy::Proxy;
use crate::sink::RecordingSink;
use crate::util::{WAIT, at, eventually, history, offsets, publish, retention, room};

/// How long an operation on a dead Redis may take to give up.
const GIVE_UP_WITHIN: Duration = Duration::from_secs(5);

/// A Redis that lost its data (restart without persistence, here
/// `FLUSHALL`) starts a new epoch: offsets restart at 1 and old positions
/// are not recovered.
pub async fn flushall_starts_a_new_epoch(engine: Redis) {
    let broker = engine.broker().await;
    let r = retention(10);
    let f = room("epoch:flush");
    let sink = RecordingSink::new(r);
    let feed = broker.attach(sink.clone());
    feed.set_interest(&f, true);
    feed.wait_subscribed(&f).await.unwrap();
    for n in 1..=3 {
        publish(&*broker, &f, r, n).await;
    }
    let old = broker.position(&f, r).await.unwrap();
    assert_eq!(old.offset, 3);

    let mut admin = engine.admin().await;
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();

    let fresh = broker.position(&f, r).await.unwrap();
    assert_eq!(fresh.offset, 0);
    assert_ne!(fresh.epoch, old.epoch);
    assert_eq!(publish(&*broker, &f, r, 1).await, at(1, &fresh.epoch));
    for since in [old.clone(), at(0, &old.epoch), at(1, &old.epoch)] {
        let range = history(&*broker, &f, r, Some(since), 100).await;
        assert_eq!((range.recovered, range.events.len()), (Some(false), 0));
    }
    // Subscriptions survive; the node sees the new epoch on the event.
    eventually("the first event of the new epoch", WAIT, || {
        sink.event_count(&f) == 4
    })
    .await;
    let last = sink.events(&f).pop().unwrap();
    assert_eq!((last.offset, last.epoch), (1, fresh.epoch));
}

/// A node that dies without `presence_leave` leaves no ghost once its
/// entries' TTL passed, while a live node's entries outlive the TTL.
pub async fn presence_of_a_crashed_node_expires(engine: Redis) {
    let ttl = Duration::from_secs(1);
    let live = engine.broker_with_presence_ttl(ttl).await;
    let crashing = engine.broker_with_presence_ttl(ttl).await;
    let p = room("presence:crash");
    let member = |user: &str, conns| PresenceMember {
        user: user.into(),
        conns,
    };
    assert!(live.presence_join(&p, "alice", "live.1").await.unwrap());
    assert!(!crashing.presence_join(&p, "alice", "crash.1").await.unwrap());
    assert!(crashing.presence_join(&p, "carol", "crash.2").await.unwrap());
    assert!(live.presence_join(&p, "bob", "live.2").await.unwrap());
    assert_eq!(
        live.presence(&p).await.unwrap(),
        vec![member("alice", 2), member("bob", 1), member("carol", 1)]
    );

    // The crash: no leave; the broker and its refresh task are gone.
    drop(crashing);
    tokio::time::sleep(2 * ttl).await;

    // Asked before anything lists (and so purges) the room: alice's only
    // live connection is this one, whatever the dead node left behind.
    assert!(
        live.presence_leave(&p, "alice", "live.1").await.unwrap(),
        "the last live connection of alice"
    );
    assert_eq!(
        live.presence(&p).await.unwrap(),
        vec![member("bob", 1)],
        "no ghost of the dead node; the live node's entry outlived the TTL"
    );
    assert!(
        live.presence_join(&p, "carol", "live.3").await.unwrap(),
        "carol's ghost is not a connection"
    );
}

/// Node entries whose `last_seen` is older than 30 s (or unreadable) are
/// not listed, and are removed.
pub async fn stale_node_entries_are_dropped(engine: Redis) {
    let broker = engine.broker().await;
    let now = herald_common::now_ms();
    let node = |id: &str, last_seen| NodeInfo {
        id: id.into(),
        connections: 1,
        rooms: 1,
        started_at: now - 60_000,
        last_seen,
    };
    broker.heartbeat(&node("fresh", now)).await.unwrap();
    broker.heartbeat(&node("stale", now - 31_000)).await.unwrap();
    let mut admin = engine.admin().await;
    let nodes_key = herald_broker::redis::keys::NODES;
    redis::cmd("HSET")
        .arg(nodes_key)
        .arg("garbage")
        .arg("not json")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();

    assert_eq!(broker.nodes().await.unwrap(), vec![node("fresh", now)]);
    let mut left: Vec<String> = redis::cmd("HKEYS")
        .arg(nodes_key)
        .query_async(&mut admin)
        .await
        .unwrap();
    left.sort();
    assert_eq!(left, vec!["fresh".to_string()], "stale entries are removed");
}

/// Subscribes `feed` to `room` the way a gateway join does: subscribe,
/// then record the room's position as the sink's starting point.
async fn join(broker: &dyn Broker, feed: &dyn Feed, sink: &RecordingSink, room: &RoomName) {
    feed.set_interest(room, true);
    feed.wait_subscribed(room).await.unwrap();
    sink.joined_at(room, broker.position(room, sink.retention()).await.unwrap());
}

/// The subscriber connection drops; events published meanwhile (by
/// another node, straight to Redis) are filled from history after the
/// reconnect: every offset once, in order, no resync.
pub async fn reconnect_fills_the_gap(engine: Redis) {
    let proxy = Proxy::start(engine.server.addr()).await;
    let node = Redis::broker_at(&proxy.url(), RedisOptions::default()).await;
    let other_node = engine.broker().await;
    let r = retention(100);
    let g = room("gap:filled");
    let sink = RecordingSink::new(r);
    let feed = node.attach(sink.clone());
    join(&node, &*feed, &sink, &g).await;

    for n in 1..=3 {
        publish(&*other_node, &g, r, n).await;
    }
    eventually("the first three events", WAIT, || sink.event_count(&g) == 3).await;

    proxy.cut();
    eventually("the feed to notice the cut", WAIT, || !feed.is_healthy()).await;
    for n in 4..=10 {
        publish(&*other_node, &g, r, n).await;
    }
    proxy.restore();

    eventually("the gap to be filled", WAIT, || sink.event_count(&g) >= 10).await;
    eventually("the feed to be healthy", WAIT, || feed.is_healthy()).await;
    // Live again after the fill.
    let epoch = publish(&*other_node, &g, r, 11).await.epoch;
    eventually("the live event after the fill", WAIT, || {
        sink.event_count(&g) >= 11
    })
    .await;
    assert_eq!(
        sink.offsets(&g),
        (1..=11).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    assert!(sink.events(&g).iter().all(|e| e.epoch == epoch));
    assert!(sink.resyncs().is_empty(), "no resync: the gap was fillable");
}

/// A gap larger than the room's history cannot be filled: the node gets
/// `on_resync` with the current position instead, then live events again.
pub async fn unfillable_gap_resyncs(engine: Redis) {
    let proxy = Proxy::start(engine.server.addr()).await;
    let node = Redis::broker_at(&proxy.url(), RedisOptions::default()).await;
    let other_node = engine.broker().await;
    let r = retention(5);
    let g = room("gap:lost");
    let sink = RecordingSink::new(r);
    let feed = node.attach(sink.clone());
    join(&node, &*feed, &sink, &g).await;
    for n in 1..=3 {
        publish(&*other_node, &g, r, n).await;
    }
    eventually("the first three events", WAIT, || sink.event_count(&g) == 3).await;

    proxy.cut();
    eventually("the feed to notice the cut", WAIT, || !feed.is_healthy()).await;
    let mut newest = None;
    for n in 4..=23 {
        newest = Some(publish(&*other_node, &g, r, n).await);
    }
    let newest = newest.unwrap();
    proxy.restore();

    eventually("the resync", WAIT, || !sink.resyncs().is_empty()).await;
    assert_eq!(sink.resyncs(), vec![(g.to_string(), newest.clone())]);
    assert_eq!(
        sink.offsets(&g),
        vec![1, 2, 3],
        "nothing replayed past a lost gap"
    );
    eventually("the feed to be healthy", WAIT, || feed.is_healthy()).await;
    publish(&*other_node, &g, r, 24).await;
    eventually("the next live event", WAIT, || sink.event_count(&g) == 4).await;
    assert_eq!(sink.offsets(&g), vec![1, 2, 3, 24]);
}

/// A Redis restarted without persistence while the feed was down: the
/// rooms' history is gone, so the node resyncs to the new epoch.
pub async fn restarted_redis_resyncs_subscribed_rooms(mut engine: Redis) {
    let node = engine.broker().await;
    let r = retention(100);
    let g = room("gap:restart");
    let sink = RecordingSink::new(r);
    let feed = node.attach(sink.clone());
    join(&*node, &*feed, &sink, &g).await;
    let old = publish(&*node, &g, r, 1).await;
    eventually("the first event", WAIT, || sink.event_count(&g) == 1).await;

    engine.server.kill();
    eventually("the feed to notice", WAIT, || !feed.is_healthy()).await;
    engine.server.restart();

    eventually("the resync", WAIT, || !sink.resyncs().is_empty()).await;
    let (resynced_room, position) = sink.resyncs().remove(0);
    assert_eq!((resynced_room.as_str(), position.offset), (g.as_str(), 0));
    assert_ne!(position.epoch, old.epoch, "the new epoch");
    eventually("the feed to be healthy", WAIT, || feed.is_healthy()).await;
    assert_eq!(publish(&*node, &g, r, 1).await, at(1, &position.epoch));
    eventually("the first event of the new epoch", WAIT, || {
        sink.event_count(&g) == 2
    })
    .await;
    assert_eq!(sink.events(&g)[1].epoch, position.epoch);
}

/// With Redis down, operations answer `Unavailable` promptly (no hang),
/// `ping` fails; once Redis is back, everything works again.
pub async fn unavailable_while_redis_is_down(mut engine: Redis) {
    let broker = engine.broker().await;
    let r = retention(10);
    let d = room("down:d");
    let before = publish(&*broker, &d, r, 1).await;

    engine.server.kill();
    let data = RawValue::from_string("1".into()).unwrap();
    let req = PublishRequest {
        room: &d,
        event: "e",
        data: &data,
        retention: r,
        notification: None,
    };
    let published = tokio::time::timeout(GIVE_UP_WITHIN, broker.publish(req))
        .await
        .expect("publish gives up in bounded time");
    assert!(
        matches!(published, Err(BrokerError::Unavailable(_))),
        "{published:?}"
    );
    let query = HistoryQuery {
        since: Some(before.clone()),
        limit: 10,
    };
    let read = tokio::time::timeout(GIVE_UP_WITHIN, broker.history(&d, r, query))
        .await
        .expect("history gives up in bounded time");
    assert!(matches!(read, Err(BrokerError::Unavailable(_))), "{read:?}");
    let pinged = tokio::time::timeout(GIVE_UP_WITHIN, broker.ping())
        .await
        .expect("ping gives up in bounded time");
    assert!(pinged.is_err());

    engine.server.restart();
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.ping().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ping never succeeded again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = publish(&*broker, &d, r, 2).await;
    assert_eq!(
        after.offset, 1,
        "the restarted Redis lost the room: offsets restart"
    );
    assert_ne!(after.epoch, before.epoch, "under a new epoch");
    let range = history(&*broker, &d, r, None, 10).await;
    assert_eq!(offsets(&range), vec![1]);
}

/// `is_healthy` is false while the subscriber connection is down and true
/// again once it is back.
pub async fn feed_health_follows_the_connection(engine: Redis) {
    let proxy = Proxy::start(engine.server.addr()).await;
    let node = Redis::broker_at(&proxy.url(), RedisOptions::default()).await;
    let r = retention(10);
    let h = room("health:h");
    let sink = RecordingSink::new(r);
    let feed = node.attach(sink.clone());
    join(&node, &*feed, &sink, &h).await;
    assert!(feed.is_healthy());

    proxy.cut();
    eventually("unhealthy while cut", WAIT, || !feed.is_healthy()).await;
    // Still down while new connections are refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!feed.is_healthy(), "healthy while Redis cannot be reached");
    proxy.restore();
    eventually("healthy again", WAIT, || feed.is_healthy()).await;
}

/// An idle subscriber connection stays up past its liveness ping: no
/// reconnect, no spurious unhealthy period, events still delivered.
pub async fn idle_feed_keeps_its_connection(engine: Redis) {
    let proxy = Proxy::start(engine.server.addr()).await;
    let node = Redis::broker_at(&proxy.url(), RedisOptions::default()).await;
    let other_node = engine.broker().await;
    let r = retention(10);
    let i = room("idle:i");
    let sink = RecordingSink::new(r);
    let feed = node.attach(sink.clone());
    join(&node, &*feed, &sink, &i).await;
    let connections = proxy.forwarded();

    // Past the feed's 5 s ping interval, watching health all along.
    let until = tokio::time::Instant::now() + Duration::from_millis(6_500);
    while tokio::time::Instant::now() < until {
        assert!(feed.is_healthy(), "the idle feed went unhealthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.forwarded(), connections, "the idle feed reconnected");
    publish(&*other_node, &i, r, 1).await;
    eventually("delivery on the idle feed", WAIT, || sink.event_count(&i) == 1).await;
}

/// A subscriber connection that goes silent without closing (a partition:
/// no FIN, no RST) is caught by the feed's liveness ping; the feed
/// reconnects and fills what it missed.
pub async fn silent_connection_is_detected_and_gap_filled(engine: Redis) {
    let proxy = Proxy::start(engine.server.addr()).await;
    let node = Redis::broker_at(&proxy.url(), RedisOptions::default()).await;
    let other_node = engine.broker().await;
    let r = retention(100);
    let s = room("gap:silent");
    let sink = RecordingSink::new(r);
    let feed = node.attach(sink.clone());
    join(&node, &*feed, &sink, &s).await;
    publish(&*other_node, &s, r, 1).await;
    eventually("the first event", WAIT, || sink.event_count(&s) == 1).await;

    proxy.freeze();
    for n in 2..=5 {
        publish(&*other_node, &s, r, n).await;
    }
    // The ping (every 5 s, 2 s to answer) notices; then reconnect and fill.
    eventually("the gap to be filled", Duration::from_secs(12), || {
        sink.event_count(&s) >= 5
    })
    .await;
    assert_eq!(sink.offsets(&s), vec![1, 2, 3, 4, 5]);
    assert!(sink.resyncs().is_empty(), "the gap was fillable");
    assert!(proxy.forwarded() > 1, "a new connection replaced the silent one");
}
