//! Bad input and limits (PROTOCOL.md §1, §1.1, §1.6), on a standalone node
//! and (for every bad input) again on a cluster gateway: malformed messages get
//! `bad_request` and the connection stays open; authentication failures
//! close with 4001; expiry with 4003 unless refreshed; oversize messages
//! with 1009; idle connections with 1001; and nothing makes the server
//! panic.

use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::json;

use crate::harness::*;

const ROOMS: &str = r#"
[[rooms]]
pattern = "open:*"
join = "anyone"
"#;

/// Two tests from one body: against a standalone node, and against a
/// gateway of a two-gateway cluster on Redis (the same bad input gets the
/// same answer there).
macro_rules! on_both {
    ($standalone:ident, $cluster:ident, $config:expr, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $standalone() {
            let h = Herald::start($config).await;
            $body(&h).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $cluster() {
            let cluster = Cluster::start(2, $config).await;
            $body(cluster.gw(1)).await;
        }
    };
}

on_both!(
    malformed_messages_are_bad_request_and_connection_stays_open,
    malformed_messages_are_bad_request_and_connection_stays_open_over_the_cluster,
    ROOMS,
    malformed_messages_are_bad_request_and_connection_stays_open_on
);

async fn malformed_messages_are_bad_request_and_connection_stays_open_on(h: &Herald) {
    let mut c = h.connect_hello(&h.user_token("alice")).await;

    let inputs: &[&str] = &[
        "this is not json",
        "[1, 2, 3]",
        r#"["join", 7, null, null, "open:1", null, null]"#,
        "42",
        r#"{"no_op": true}"#,
        r#"{"op": "join", "id": 3, "room": 42}"#,
        r#"{"op": "join", "id": "three", "room": "open:1"}"#,
        r#"{"op": "ping", "id": -1}"#,
        r#"{"op": "dance", "id": 4}"#,
        r#"{"op": 7}"#,
        r#"{"op": "publish", "id": 5, "room": "open:1", "event": 1, "data": null}"#,
        "{\"op\": \"join\", \"id\": 6, \"room\": \"open:1\"",
    ];
    for (i, input) in inputs.iter().enumerate() {
        c.send_text(input).await;
        let reply = c.next_json(WAIT).await;
        assert_eq!(reply["op"], "error", "input {input:?}: {reply}");
        assert_eq!(reply["code"], "bad_request", "input {input:?}: {reply}");
        c.assert_alive(1000 + i as u64).await;
    }

    // Unknown op with a valid id: the id is echoed.
    let reply = c.request(json!({"op": "dance", "id": 77})).await;
    assert_error(&reply, "bad_request");
    assert_eq!(reply["id"], 77, "{reply}");

    // Unknown fields are ignored (forward compatibility).
    let pong = c
        .request(json!({"op": "ping", "id": 78, "future_field": {"x": 1}}))
        .await;
    assert_eq!((&pong["op"], &pong["id"]), (&json!("pong"), &json!(78)), "{pong}");

    // Binary messages.
    c.send_binary(b"\x00\x01binary").await;
    assert_error(&c.next_json(WAIT).await, "bad_request");
    c.send_binary(br#"{"op":"ping","id":1}"#).await;
    assert_error(&c.next_json(WAIT).await, "bad_request");
    c.assert_alive(2000).await;
    h.assert_no_panic().await;
}

on_both!(
    message_before_hello_is_unauthorized_and_closes_4001,
    message_before_hello_is_unauthorized_and_closes_4001_over_the_cluster,
    ROOMS,
    message_before_hello_is_unauthorized_and_closes_4001_on
);

async fn message_before_hello_is_unauthorized_and_closes_4001_on(h: &Herald) {
    let mut c = h.connect_raw().await;
    c.send_json(json!({"op": "join", "id": 1, "room": "open:1"}))
        .await;
    let reply = c.next_json(WAIT).await;
    assert_error(&reply, "unauthorized");
    assert_eq!(c.expect_close(WAIT).await.0, 4001);

    // Garbage before hello is no better.
    let mut d = h.connect_raw().await;
    d.send_text("garbage").await;
    assert_eq!(d.expect_close(WAIT).await.0, 4001);
    h.assert_no_panic().await;
}

on_both!(
    no_hello_within_timeout_closes_4001,
    no_hello_within_timeout_closes_4001_over_the_cluster,
    &format!("[gateway]\nhello_timeout_ms = 300\n{ROOMS}"),
    no_hello_within_timeout_closes_4001_on
);

async fn no_hello_within_timeout_closes_4001_on(h: &Herald) {
    let mut c = h.connect_raw().await;
    let started = Instant::now();
    let (code, _) = c.expect_close(Duration::from_secs(4)).await;
    assert_eq!(code, 4001);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed before the hello timeout"
    );

    // A client that says hello in time is not affected.
    let mut d = h.connect_hello(&h.user_token("alice")).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    d.assert_alive(1).await;
}

on_both!(
    bad_token_in_hello_closes_4001,
    bad_token_in_hello_closes_4001_over_the_cluster,
    ROOMS,
    bad_token_in_hello_closes_4001_on
);

async fn bad_token_in_hello_closes_4001_on(h: &Herald) {
    let forged = mint(&json!({"sub": "alice", "exp": now_secs() + 3600}), "wrong-secret");
    let expired = h.token("alice", &[], &[], &[], -3600);
    let no_sub = mint(&json!({"exp": now_secs() + 3600}), SECRET);
    let alg_none = {
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":<far>} . (empty)
        let b64 = |s: &str| base64url(s.as_bytes());
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, now_secs() + 3600))
        )
    };
    for token in [forged, expired, no_sub, alg_none, "junk".to_string()] {
        let mut c = h.connect_raw().await;
        c.send_json(json!({"op": "hello", "token": token})).await;
        let (code, _) = c.expect_close(WAIT).await;
        assert_eq!(code, 4001, "token {token:?}");
    }
    // hello without a token field at all.
    let mut c = h.connect_raw().await;
    c.send_json(json!({"op": "hello"})).await;
    assert_eq!(c.expect_close(WAIT).await.0, 4001);
    h.assert_no_panic().await;
}

/// Unpadded base64url, for hand-built tokens.
fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

on_both!(
    oversize_message_closes_1009,
    oversize_message_closes_1009_over_the_cluster,
    &format!("[gateway]\nmax_frame_bytes = 1024\n{ROOMS}"),
    oversize_message_closes_1009_on
);

async fn oversize_message_closes_1009_on(h: &Herald) {
    // Just under the limit is fine.
    let mut ok = h.connect_hello(&h.user_token("alice")).await;
    let pad = "x".repeat(900);
    let pong = ok.request(json!({"op": "ping", "id": 1, "t": pad})).await;
    assert_eq!(pong["op"], "pong");

    // One frame over the limit.
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    let big = json!({"op": "ping", "id": 2, "t": "y".repeat(2000)}).to_string();
    let _ = c
        .try_send_frame(Frame::text(Payload::Owned(big.into_bytes())))
        .await;
    assert_eq!(c.expect_close(WAIT).await.0, 1009);

    // Fragments each under the limit, together over it.
    let mut d = h.connect_hello(&h.user_token("alice")).await;
    let message = json!({"op": "ping", "id": 3, "t": "z".repeat(1400)})
        .to_string()
        .into_bytes();
    let parts: Vec<&[u8]> = message.chunks(500).collect();
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Text
        } else {
            OpCode::Continuation
        };
        let fin = i == parts.len() - 1;
        if d.try_send_frame(Frame::new(fin, opcode, None, Payload::Owned(part.to_vec())))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(d.expect_close(WAIT).await.0, 1009);

    // Fragments under the limit in total are reassembled and answered.
    let small = json!({"op": "ping", "id": 4, "t": "w".repeat(500)})
        .to_string()
        .into_bytes();
    let parts: Vec<&[u8]> = small.chunks(200).collect();
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Text
        } else {
            OpCode::Continuation
        };
        ok.send_frame(Frame::new(
            i == parts.len() - 1,
            opcode,
            None,
            Payload::Owned(part.to_vec()),
        ))
        .await;
    }
    let pong = ok.next_json(WAIT).await;
    assert_eq!((&pong["op"], &pong["id"]), (&json!("pong"), &json!(4)), "{pong}");
    h.assert_no_panic().await;
}

on_both!(
    bad_room_name_and_malformed_since_are_bad_request,
    bad_room_name_and_malformed_since_are_bad_request_over_the_cluster,
    ROOMS,
    bad_room_name_and_malformed_since_are_bad_request_on
);

async fn bad_room_name_and_malformed_since_are_bad_request_on(h: &Herald) {
    let mut c = h.connect_hello(&h.user_token("alice")).await;

    let too_long = format!("open:{}", "a".repeat(200));
    for (id, room) in [
        (1, "open:has space"),
        (2, ""),
        (3, "open:bad/char"),
        (4, too_long.as_str()),
    ] {
        let reply = c.request(json!({"op": "join", "id": id, "room": room})).await;
        assert_error(&reply, "bad_request");
        assert_eq!(reply["id"], id, "room {room:?}: {reply}");
    }

    for (id, since) in [
        (10, json!({"offset": "abc", "epoch": "e"})),
        (11, json!({"offset": 1})),
        (12, json!({"epoch": "e"})),
        (13, json!("3:abc")),
        (14, json!({"offset": -1, "epoch": "e"})),
    ] {
        let reply = c
            .request(json!({"op": "join", "id": id, "room": "open:1", "since": since}))
            .await;
        assert_error(&reply, "bad_request");
        assert_eq!(reply["id"], id, "since {since}: {reply}");
        c.assert_alive(100 + id).await;
    }

    // The connection is intact and can still join the room.
    let joined = c.join(20, "open:1").await;
    assert_eq!(joined["offset"], 0);
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_rooms_is_forbidden() {
    let h = Herald::start(&format!("[gateway]\nmax_rooms_per_connection = 5\n{ROOMS}")).await;
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    let mut joined = 0;
    let mut refused_at = None;
    for i in 0..10u64 {
        let reply = c.try_join(i, &format!("open:{i}")).await;
        match reply["op"].as_str() {
            Some("joined") => {
                assert!(
                    refused_at.is_none(),
                    "join {i} allowed after an earlier refusal: {reply}"
                );
                joined += 1;
            }
            _ => {
                assert_error(&reply, "forbidden");
                assert_eq!(reply["id"], i);
                refused_at.get_or_insert(i);
            }
        }
    }
    // Whether the auto-joined rooms (user:, broadcast) count is left open.
    assert!(
        (3..=5).contains(&joined),
        "{joined} rooms joined with max_rooms_per_connection = 5"
    );
    // Leaving one frees a slot.
    let left = c
        .request(json!({"op": "leave", "id": 50, "room": "open:0"}))
        .await;
    assert_eq!(left["op"], "left", "{left}");
    assert_eq!(c.join(51, "open:extra").await["room"], "open:extra");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_closes_4003() {
    let h = Herald::start(&format!("[auth]\nleeway_s = 0\n{ROOMS}")).await;
    let token = h.token("alice", &[], &[], &[], 2);
    let mut c = h.connect_hello(&token).await;
    let started = Instant::now();
    let (code, _) = c.expect_close(Duration::from_secs(7)).await;
    assert_eq!(code, 4003);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500),
        "closed {elapsed:?} after connecting; the token was valid for 1–2 s"
    );
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshed_token_outlives_the_original_expiry() {
    let h = Herald::start(&format!("[auth]\nleeway_s = 0\n{ROOMS}")).await;
    let mut c = h.connect_hello(&h.token("alice", &[], &[], &[], 2)).await;
    // The control: same short token, never refreshed.
    let mut control = h.connect_hello(&h.token("alice", &[], &[], &[], 2)).await;

    let ack = c
        .request(json!({"op": "refresh", "id": 1, "token": h.token("alice", &[], &[], &[], 3600)}))
        .await;
    assert_eq!((&ack["op"], &ack["id"]), (&json!("ack"), &json!(1)), "{ack}");

    assert_eq!(control.expect_close(Duration::from_secs(7)).await.0, 4003);
    // The control closed, so the original expiry has passed; give it a margin.
    c.expect_no_message(Duration::from_millis(1500)).await;
    c.assert_alive(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_and_a_ponging_one_is_not() {
    let h = Herald::start(&format!("[gateway]\nheartbeat_ms = 200\n{ROOMS}")).await;
    let token = h.user_token("alice");

    // Answers pings (the reader keeps reading and auto-pongs).
    let mut live = h.connect_hello(&token).await;

    // Reads, but never answers a ping and sends nothing after hello.
    let mut opts = ConnectOptions::new(Auth::Header(token.clone()));
    opts.auto_pong = false;
    opts.name = "idle".into();
    let mut idle = h.connect(opts).await;

    let started = Instant::now();
    let (code, _) = idle.expect_close(Duration::from_secs(4)).await;
    assert_eq!(code, 1001, "idle close uses 1001");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before 2.5 × heartbeat"
    );

    // Well past 2.5 × heartbeat, the ponging client is still there.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    live.assert_alive(1).await;
    h.assert_no_panic().await;
}

on_both!(
    abuse_mix_leaves_no_panic,
    abuse_mix_leaves_no_panic_over_the_cluster,
    &format!("[gateway]\nmax_frame_bytes = 1024\nhello_timeout_ms = 500\n{ROOMS}"),
    abuse_mix_leaves_no_panic_on
);

async fn abuse_mix_leaves_no_panic_on(h: &Herald) {
    let token = h.user_token("alice");

    // Raw junk before hello, of every kind.
    for junk in [
        "",
        "{",
        "null",
        "{\"op\":\"hello\",\"token\":5}",
        "{\"op\":\"hello\",\"resume\":[]}",
    ] {
        let mut c = h.connect_raw().await;
        c.send_text(junk).await;
        let (code, _) = c.expect_close(WAIT).await;
        assert_eq!(code, 4001, "junk {junk:?}");
    }
    // A peer that disconnects abruptly mid-message.
    {
        let c = h.connect_hello(&token).await;
        c.send_frame(Frame::new(
            false,
            OpCode::Text,
            None,
            Payload::Owned(b"{\"op\":".to_vec()),
        ))
        .await;
        drop(c);
    }
    // A continuation without a start, a ping with the resume of odd shapes.
    let mut c = h.connect_raw().await;
    c.send_json(json!({"op": "hello", "token": token, "resume": {"open:1": "nope", "bad room": {}}}))
        .await;
    let welcome = c.next_op("welcome", WAIT).await;
    assert_eq!(welcome["user"], "alice");
    // Both resume entries are bad requests for their room; the connection stays.
    let first = c.next_op("error", WAIT).await;
    assert_eq!(first["code"], "bad_request", "{first}");
    let second = c.next_op("error", WAIT).await;
    assert_eq!(second["code"], "bad_request", "{second}");
    c.assert_alive(1).await;
    let _ = c
        .try_send_frame(Frame::new(
            true,
            OpCode::Continuation,
            None,
            Payload::Owned(b"x".to_vec()),
        ))
        .await;
    // Whatever the server does with a protocol violation, it must not panic.
    let _ = c.next_incoming(Duration::from_millis(500)).await;

    let mut fine = h.connect_hello(&token).await;
    fine.assert_alive(2).await;
    h.assert_no_panic().await;
}
