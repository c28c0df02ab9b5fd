//! The client protocol (PROTOCOL.md §1.1–1.4): authentication on `hello`, on
//! the upgrade header and in the query; `welcome`; joining by policy and by
//! claims; API and client publishing; `leave`; presence; member events;
//! `ping`; `refresh`; broadcast.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

/// Room policies shared by these tests (first match wins; the default
/// policy is join = claims, client_publish = none, presence = false).
const ROOMS: &str = r#"
[gateway]
heartbeat_ms = 7000

[[rooms]]
pattern = "open:*"
join = "anyone"

[[rooms]]
pattern = "talk:*"
join = "anyone"
client_publish = "members"

[[rooms]]
pattern = "lobby:*"
join = "anyone"
presence = true
join_leave = true

[[rooms]]
pattern = "quiet:*"
join = "anyone"
client_publish = "members"
presence = false

[[rooms]]
pattern = "news:*"
join = "anyone"
client_publish = "none"

[[rooms]]
pattern = "claims:*"
join = "claims"
client_publish = "claims"
"#;

const SHORT: Duration = Duration::from_millis(400);

/// The next two messages, an `ack` and an `event` in either order.
async fn ack_and_event(c: &mut Client) -> (Value, Value) {
    let first = c.next_json(WAIT).await;
    let second = c.next_json(WAIT).await;
    let (ack, event) = if first["op"] == "ack" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(ack["op"], "ack", "expected an ack and an event: {ack}");
    assert_eq!(event["op"], "event", "expected an ack and an event: {event}");
    (ack, event)
}

fn rooms_of(welcome: &Value) -> Vec<String> {
    welcome["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("welcome.rooms is not an array: {welcome}"))
        .iter()
        .map(|r| r.as_str().expect("room name string").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_gets_welcome_with_auto_joined_rooms() {
    let h = Herald::start_with_env(ROOMS, &[("HERALD_NODE_ID", "node-e2e-1")]).await;
    let token = h.token("alice", &["ADMIN", "staff"], &[], &[], 3600);
    let a = h.connect_hello(&token).await;
    let welcome = a.welcome.clone().unwrap();
    assert_eq!(welcome["user"], "alice", "{welcome}");
    assert_eq!(
        welcome["node"], "node-e2e-1",
        "HERALD_NODE_ID is reported as welcome.node: {welcome}"
    );
    assert_eq!(
        welcome["heartbeat_ms"], 7000,
        "heartbeat_ms comes from the config: {welcome}"
    );
    assert!(!welcome["conn"].is_null(), "welcome.conn missing: {welcome}");
    let rooms = rooms_of(&welcome);
    for room in ["user:alice", "role:ADMIN", "role:staff", "broadcast"] {
        assert!(
            rooms.iter().any(|r| r == room),
            "welcome.rooms lacks {room}: {welcome}"
        );
    }

    // A second connection of the same user has another connection id.
    let b = h.connect_hello(&token).await;
    let welcome_b = b.welcome.clone().unwrap();
    assert_ne!(welcome["conn"], welcome_b["conn"], "two connections share an id");
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_on_upgrade_header_or_query_gets_welcome_at_once() {
    let h = Herald::start(ROOMS).await;
    let token = h.token("bob", &["ops"], &[], &[], 3600);

    let mut by_header = h.connect_with_header(&token).await;
    let welcome = by_header.welcome.clone().unwrap();
    assert_eq!(welcome["user"], "bob");
    assert!(rooms_of(&welcome).contains(&"role:ops".to_string()), "{welcome}");
    by_header.assert_alive(1).await;

    let mut by_query = h.connect_with_query(&token).await;
    assert_eq!(by_query.welcome.as_ref().unwrap()["user"], "bob");
    by_query.assert_alive(1).await;

    // The connection authenticated on the upgrade may not say hello again.
    let reply = by_query.request(json!({"op": "hello", "token": token})).await;
    assert_error(&reply, "bad_request");
    by_query.assert_alive(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_on_upgrade_is_http_401() {
    let h = Herald::start(ROOMS).await;
    let forged = mint(&json!({"sub": "eve", "exp": now_secs() + 3600}), "not-the-secret");
    let expired = h.token("eve", &[], &[], &[], -3600);
    for token in [forged.as_str(), expired.as_str(), "not-a-jwt"] {
        let header = h
            .try_connect(ConnectOptions::new(Auth::Header(token.into())))
            .await;
        assert_eq!(
            header.err(),
            Some(401),
            "header token {token:?} must be refused with 401"
        );
        let query = h
            .try_connect(ConnectOptions::new(Auth::Query(token.into())))
            .await;
        assert_eq!(
            query.err(),
            Some(401),
            "query token {token:?} must be refused with 401"
        );
    }
    // The server is fine afterwards.
    let c = h.connect_with_header(&h.user_token("eve")).await;
    assert_eq!(c.welcome.as_ref().unwrap()["user"], "eve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_is_decided_by_policy_and_claims() {
    let h = Herald::start(ROOMS).await;
    let token = h.token("alice", &["staff"], &["team:*", "claims:a"], &[], 3600);
    let mut c = h.connect_hello(&token).await;

    // Default policy (claims): allowed by the `rooms` claim.
    let joined = c.join(1, "team:7").await;
    assert_eq!(joined["room"], "team:7");
    assert_eq!(joined["offset"], 0, "a fresh room starts at offset 0: {joined}");
    assert!(
        joined["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{joined}"
    );
    assert!(
        joined.get("recovered").is_none(),
        "recovered is only present with since: {joined}"
    );

    // Default policy without a matching claim: forbidden, id echoed.
    let reply = c.try_join(2, "secret:1").await;
    assert_error(&reply, "forbidden");
    assert_eq!(reply["id"], 2, "{reply}");

    // Explicit claims policy.
    assert_eq!(c.join(3, "claims:a").await["room"], "claims:a");
    assert_error(&c.try_join(4, "claims:b").await, "forbidden");

    // Policy anyone: no claim needed.
    assert_eq!(c.join(5, "open:lobby").await["room"], "open:lobby");

    // Another user's room, a role not held: forbidden.
    let reply = c.try_join(6, "user:bob").await;
    assert_error(&reply, "forbidden");
    assert_eq!(reply["id"], 6);
    assert_error(&c.try_join(7, "role:ADMIN").await, "forbidden");
    c.assert_alive(8).await;
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publish_reaches_joined_client() {
    let h = Herald::start(ROOMS).await;
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    let joined = c.join(1, "open:score").await;
    let epoch = epoch_of(&joined);

    let before = now_ms();
    let pos = h
        .publish("open:score", "goal", json!({"team": "home", "n": [1, 2]}))
        .await;
    let event = c.next_json(WAIT).await;
    assert_eq!(event["op"], "event", "{event}");
    assert_eq!(event["room"], "open:score");
    assert_eq!(event["event"], "goal");
    assert_eq!(event["data"], json!({"team": "home", "n": [1, 2]}));
    assert_eq!(event["offset"], 1, "first event after offset 0: {event}");
    assert_eq!(event["epoch"], epoch.as_str(), "same epoch as joined: {event}");
    assert_eq!(
        pos,
        json!({"offset": 1, "epoch": epoch}),
        "API position matches the event"
    );
    let ts = event["ts"]
        .as_i64()
        .unwrap_or_else(|| panic!("ts is not an integer: {event}"));
    assert!(
        (before - 60_000..=now_ms() + 60_000).contains(&ts),
        "ts {ts} is not ms since the epoch"
    );

    h.publish("open:score", "goal", json!(2)).await;
    let second = c.next_json(WAIT).await;
    assert_eq!(
        (second["offset"].as_u64(), &second["data"]),
        (Some(2), &json!(2)),
        "{second}"
    );

    // A room the client did not join delivers nothing.
    h.publish("open:other", "x", json!(null)).await;
    c.expect_no_message(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_stops_events() {
    let h = Herald::start(ROOMS).await;
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    c.join(1, "open:a").await;
    h.publish("open:a", "e", json!(1)).await;
    assert_eq!(c.next_json(WAIT).await["offset"], 1);

    let left = c.request(json!({"op": "leave", "id": 2, "room": "open:a"})).await;
    assert_eq!(left["op"], "left", "{left}");
    assert_eq!(left["id"], 2);
    assert_eq!(left["room"], "open:a");
    assert_eq!(left["reason"], "request");

    h.publish("open:a", "e", json!(2)).await;
    c.expect_no_message(Duration::from_millis(500)).await;

    // Leaving a room not joined.
    let reply = c.request(json!({"op": "leave", "id": 3, "room": "open:a"})).await;
    assert_error(&reply, "bad_request");
    assert_eq!(reply["id"], 3);
    c.assert_alive(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publish_with_members_policy() {
    let h = Herald::start(ROOMS).await;
    let mut a = h.connect_hello(&h.user_token("alice")).await;
    let mut b = h.connect_hello(&h.user_token("bob")).await;
    let mut outsider = h.connect_hello(&h.user_token("carol")).await;
    let joined = a.join(1, "talk:1").await;
    b.join(1, "talk:1").await;

    a.send_json(json!({"op": "publish", "id": 9, "room": "talk:1", "event": "msg", "data": {"t": "hi"}}))
        .await;
    // The publisher gets its ack and, like every member, the event.
    let (ack, event) = ack_and_event(&mut a).await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(ack["id"], 9);
    assert_eq!(ack["offset"], 1, "{ack}");
    assert_eq!(ack["epoch"], joined["epoch"], "{ack}");
    assert_eq!(
        event["op"], "event",
        "the publisher receives its own event: {event}"
    );
    assert_eq!(
        (&event["room"], &event["event"], &event["data"], &event["offset"]),
        (&json!("talk:1"), &json!("msg"), &json!({"t": "hi"}), &json!(1))
    );

    let at_b = b.next_json(WAIT).await;
    assert_eq!(
        (&at_b["op"], &at_b["offset"], &at_b["data"]),
        (&json!("event"), &json!(1), &json!({"t": "hi"}))
    );

    // Not a member: forbidden, and nothing is published.
    let reply = outsider
        .request(json!({"op": "publish", "id": 3, "room": "talk:1", "event": "msg", "data": 1}))
        .await;
    assert_error(&reply, "forbidden");
    assert_eq!(reply["id"], 3);
    b.expect_no_message(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publish_with_none_and_claims_policies() {
    let h = Herald::start(ROOMS).await;
    let token = h.token("alice", &[], &["claims:*"], &["claims:a"], 3600);
    let mut c = h.connect_hello(&token).await;

    c.join(1, "news:1").await;
    let reply = c
        .request(json!({"op": "publish", "id": 2, "room": "news:1", "event": "e", "data": 1}))
        .await;
    assert_error(&reply, "forbidden");
    assert_eq!(reply["id"], 2);

    c.join(3, "claims:a").await;
    c.join(4, "claims:b").await;
    c.send_json(json!({"op": "publish", "id": 5, "room": "claims:a", "event": "e", "data": 1}))
        .await;
    let (ack, event) = ack_and_event(&mut c).await;
    assert_eq!((&ack["id"], &ack["offset"]), (&json!(5), &json!(1)), "{ack}");
    assert_eq!(
        (&event["room"], &event["offset"]),
        (&json!("claims:a"), &json!(1)),
        "{event}"
    );

    let reply = c
        .request(json!({"op": "publish", "id": 6, "room": "claims:b", "event": "e", "data": 1}))
        .await;
    assert_error(&reply, "forbidden");
    assert_eq!(reply["id"], 6);
    c.expect_no_message(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_connections_per_user() {
    let h = Herald::start(ROOMS).await;
    let alice = h.user_token("alice");
    let mut a1 = h.connect_hello(&alice).await;
    let mut a2 = h.connect_hello(&alice).await;
    let mut b = h.connect_hello(&h.user_token("bob")).await;
    a1.join(1, "lobby:1").await;
    a2.join(1, "lobby:1").await;
    b.join(1, "lobby:1").await;

    b.send_json(json!({"op": "presence", "id": 7, "room": "lobby:1"}))
        .await;
    let presence = b.next_op("presence", WAIT).await;
    assert_eq!(presence["id"], 7);
    assert_eq!(presence["room"], "lobby:1");
    let mut members: Vec<(String, u64)> = presence["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members is not an array: {presence}"))
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().to_string(),
                m["conns"].as_u64().unwrap(),
            )
        })
        .collect();
    members.sort();
    assert_eq!(
        members,
        vec![("alice".to_string(), 2), ("bob".to_string(), 1)],
        "{presence}"
    );

    // A room whose policy has no presence.
    b.join(2, "quiet:1").await;
    let reply = b
        .request(json!({"op": "presence", "id": 3, "room": "quiet:1"}))
        .await;
    assert_error(&reply, "bad_request");
    assert_eq!(reply["id"], 3);

    // A presence room not joined.
    let reply = b
        .request(json!({"op": "presence", "id": 4, "room": "lobby:2"}))
        .await;
    assert_error(&reply, "forbidden");
    b.assert_alive(5).await;
    drop((a1, a2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_events_go_to_others_only() {
    let h = Herald::start(ROOMS).await;
    let bob = h.user_token("bob");
    let mut a = h.connect_hello(&h.user_token("alice")).await;
    let mut b1 = h.connect_hello(&bob).await;
    let mut b2 = h.connect_hello(&bob).await;
    a.join(1, "lobby:9").await;

    // Bob's first connection joins: alice is told, bob is not.
    b1.join(1, "lobby:9").await;
    let member = a.next_json(WAIT).await;
    assert_eq!(
        member,
        json!({"op": "member", "room": "lobby:9", "user": "bob", "state": "joined"}),
        "alice is told of bob's first connection, and of nothing else"
    );
    b1.expect_no_message(SHORT).await;

    // Bob's second connection: not his first, no member event.
    b2.join(1, "lobby:9").await;
    a.expect_no_message(SHORT).await;
    b2.send_json(json!({"op": "leave", "id": 2, "room": "lobby:9"}))
        .await;
    assert_eq!(b2.next_json(WAIT).await["op"], "left");
    a.expect_no_message(SHORT).await;

    // Bob's last connection leaves: alice is told, bob gets only `left`.
    b1.send_json(json!({"op": "leave", "id": 2, "room": "lobby:9"}))
        .await;
    let left = b1.next_json(WAIT).await;
    assert_eq!(
        (&left["op"], &left["reason"]),
        (&json!("left"), &json!("request")),
        "{left}"
    );
    let member = a.next_json(WAIT).await;
    assert_eq!(
        member,
        json!({"op": "member", "room": "lobby:9", "user": "bob", "state": "left"})
    );
    b1.expect_no_message(SHORT).await;
    a.expect_no_message(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_with_pong() {
    let h = Herald::start(ROOMS).await;
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    let t = json!({"sent": 1_700_000_000_123u64, "tag": ["a", 1]});
    let pong = c.request(json!({"op": "ping", "id": 42, "t": t})).await;
    assert_eq!(pong, json!({"op": "pong", "id": 42, "t": t}));
    let pong = c.request(json!({"op": "ping"})).await;
    assert_eq!(pong["op"], "pong", "{pong}");
    assert!(pong.get("id").is_none_or(Value::is_null), "{pong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_same_sub_is_acked() {
    let h = Herald::start(ROOMS).await;
    let mut c = h.connect_hello(&h.token("alice", &[], &[], &[], 60)).await;
    let fresh = h.token("alice", &[], &[], &[], 7200);
    let ack = c.request(json!({"op": "refresh", "id": 5, "token": fresh})).await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(ack["id"], 5);
    c.assert_alive(6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_other_sub_or_bad_token_closes_4001() {
    let h = Herald::start(ROOMS).await;
    let alice = h.user_token("alice");

    let mut c = h.connect_hello(&alice).await;
    let other = h.user_token("mallory");
    let reply = c.request(json!({"op": "refresh", "id": 1, "token": other})).await;
    assert_error(&reply, "unauthorized");
    assert_eq!(reply["id"], 1);
    assert_eq!(c.expect_close(WAIT).await.0, 4001);

    let mut d = h.connect_hello(&alice).await;
    let forged = mint(&json!({"sub": "alice", "exp": now_secs() + 3600}), "wrong-secret");
    let reply = d
        .request(json!({"op": "refresh", "id": 2, "token": forged}))
        .await;
    assert_error(&reply, "unauthorized");
    assert_eq!(d.expect_close(WAIT).await.0, 4001);

    let mut e = h.connect_hello(&alice).await;
    let expired = h.token("alice", &[], &[], &[], -3600);
    let reply = e
        .request(json!({"op": "refresh", "id": 3, "token": expired}))
        .await;
    assert_error(&reply, "unauthorized");
    assert_eq!(e.expect_close(WAIT).await.0, 4001);
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_hello_is_bad_request() {
    let h = Herald::start(ROOMS).await;
    let token = h.user_token("alice");
    let mut c = h.connect_hello(&token).await;
    let reply = c.request(json!({"op": "hello", "token": token})).await;
    assert_error(&reply, "bad_request");
    c.assert_alive(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_broadcast_reaches_every_connection() {
    let h = Herald::start(ROOMS).await;
    let mut a = h.connect_hello(&h.user_token("alice")).await;
    let mut b = h.connect_with_header(&h.user_token("bob")).await;
    let (status, body) = h
        .api_call(
            "POST",
            "/v1/broadcast",
            Some(json!({"event": "maintenance", "data": {"in_s": 60}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["offset"].is_u64() && body["epoch"].is_string(), "{body}");
    for c in [&mut a, &mut b] {
        let event = c.next_json(WAIT).await;
        assert_eq!(event["op"], "event", "{event}");
        assert_eq!(event["room"], "broadcast");
        assert_eq!(event["event"], "maintenance");
        assert_eq!(event["data"], json!({"in_s": 60}));
        assert_eq!(event["offset"], body["offset"]);
        assert_eq!(event["epoch"], body["epoch"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_room_receives_api_publish() {
    let h = Herald::start(ROOMS).await;
    let mut a = h.connect_hello(&h.user_token("alice")).await;
    let mut b = h.connect_hello(&h.user_token("bob")).await;
    h.publish("user:alice", "dm", json!({"from": "system"})).await;
    let event = a.next_json(WAIT).await;
    assert_eq!(
        (&event["op"], &event["room"]),
        (&json!("event"), &json!("user:alice")),
        "{event}"
    );
    b.expect_no_message(SHORT).await;
}
