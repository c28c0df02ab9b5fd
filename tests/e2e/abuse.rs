//! Herald under abuse (PROTOCOL.md §1.1, §1.6–1.7, §3): per-user publish,
//! join and connect budgets shared by a user's connections, the 4008 close
//! for a client that keeps sending while limited, the per-IP connect limit,
//! the `Origin` allow-list, `max_connections`, `max_rooms_per_connection`,
//! a stalled reader that must cost bounded memory and delay nobody, the
//! per-API-key limit, JWT algorithm confusion, and logs that keep every
//! credential out even at `RUST_LOG=debug` on the refusal paths.
//!
//! Budgets are configured with a rate so low (one unit per 10 s or more)
//! that no unit comes back while a test runs: the counts are exact.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::harness::*;

/// Rooms anyone may join and whose members may publish.
const OPEN_ROOMS: &str = r#"
[[rooms]]
pattern = "open:*"
join = "anyone"
client_publish = "members"
"#;

/// The harness raises every per-user budget; a test lowers the ones it
/// measures (the harness merges the keys into its `[limits.per_user]`).
fn per_user(line: &str) -> String {
    format!("[limits.per_user]\n{line}\n{OPEN_ROOMS}")
}

// ---------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------

/// Sends `msg` and returns the reply carrying its `id`, skipping room
/// events and member messages on the way.
async fn reply_to(client: &mut Client, msg: Value) -> Value {
    let id = msg["id"].clone();
    client.send_json(msg).await;
    loop {
        let reply = client.next_json(WAIT).await;
        if matches!(reply["op"].as_str(), Some("event" | "member")) {
            continue;
        }
        assert_eq!(
            reply["id"], id,
            "{}: a reply to another request: {reply}",
            client.name
        );
        return reply;
    }
}

/// A client `publish` to `room`; its reply (`ack` or `error`).
async fn publish(client: &mut Client, id: u64, room: &str) -> Value {
    reply_to(
        client,
        json!({"op": "publish", "id": id, "room": room, "event": "e", "data": {"id": id}}),
    )
    .await
}

/// Asserts `msg` is `rate_limited` for request `id` with a positive
/// `retry_after_ms` of at most `max_ms`.
#[track_caller]
fn assert_rate_limited(msg: &Value, id: Option<u64>, max_ms: u64) {
    assert_error(msg, "rate_limited");
    if let Some(id) = id {
        assert_eq!(msg["id"], id, "rate_limited for another request: {msg}");
    }
    let retry = msg["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("rate_limited without an integer retry_after_ms: {msg}"));
    assert!(
        retry > 0 && retry <= max_ms,
        "retry_after_ms {retry} not in 1..={max_ms}: {msg}"
    );
}

/// `Retry-After` of a response, in whole seconds (must be present).
#[track_caller]
fn retry_after(headers: &hyper::HeaderMap) -> u64 {
    let value = headers
        .get(hyper::header::RETRY_AFTER)
        .unwrap_or_else(|| panic!("no Retry-After header in {headers:?}"));
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("Retry-After is not whole seconds: {value:?}"))
}

/// An upgrade the server refused: its status, headers and JSON body.
#[derive(Debug)]
struct Refused {
    status: u16,
    headers: hyper::HeaderMap,
    body: Value,
}

type RawWs = WebSocket<TokioIo<Upgraded>>;

/// A WebSocket upgrade to `uri` with extra request headers (an `Origin`, an
/// `Authorization`), done by hand so that a refusal's headers and body can
/// be read: the harness only reports the status.
async fn upgrade(addr: SocketAddr, uri: &str, headers: &[(&str, &str)]) -> Result<RawWs, Refused> {
    let stream = bounded(WAIT, "TCP connect", TcpStream::connect(addr))
        .await
        .expect("TCP connect");
    let (mut sender, conn) = bounded(
        WAIT,
        "HTTP handshake",
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)),
    )
    .await
    .expect("HTTP handshake");
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = hyper::Request::builder()
        .method("GET")
        .uri(uri)
        .header("Host", addr.to_string())
        .header(hyper::header::UPGRADE, "websocket")
        .header(hyper::header::CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
        .header("Sec-WebSocket-Version", "13");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = bounded(
        WAIT,
        "upgrade response",
        sender.send_request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("upgrade request");
    let status = resp.status().as_u16();
    if status == 101 {
        let upgraded = bounded(WAIT, "upgrade", hyper::upgrade::on(resp))
            .await
            .expect("upgrade");
        let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
        ws.set_auto_close(true);
        ws.set_auto_pong(true);
        return Ok(ws);
    }
    let headers = resp.headers().clone();
    let body = bounded(WAIT, "refusal body", resp.into_body().collect())
        .await
        .expect("refusal body")
        .to_bytes();
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    Err(Refused {
        status,
        headers,
        body,
    })
}

/// [`upgrade`] that must be refused with `status`; the refusal.
async fn refused(addr: SocketAddr, uri: &str, headers: &[(&str, &str)], status: u16) -> Refused {
    match upgrade(addr, uri, headers).await {
        Ok(_) => panic!("upgrade {uri} {headers:?} succeeded; expected HTTP {status}"),
        Err(r) => {
            assert_eq!(r.status, status, "upgrade {uri} {headers:?}: {r:?}");
            r
        }
    }
}

/// Sends `hello` on a hand-made connection and reads its first answer.
async fn raw_hello(ws: &mut RawWs, token: &str) -> Value {
    let hello = json!({"op": "hello", "token": token}).to_string();
    bounded(
        WAIT,
        "send hello",
        ws.write_frame(Frame::text(Payload::Owned(hello.into_bytes()))),
    )
    .await
    .expect("send hello");
    loop {
        let frame = bounded(WAIT, "first answer to hello", ws.read_frame())
            .await
            .expect("read a frame");
        match frame.opcode {
            OpCode::Text => return serde_json::from_slice(&frame.payload).expect("JSON"),
            OpCode::Close => panic!("closed instead of answering hello: {:?}", &frame.payload[..]),
            _ => continue,
        }
    }
}

/// Unpadded base64url (RFC 4648 §5), for hand-made JWTs.
fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// A JWT with any header: `header.payload.signature`, where `sign` maps the
/// signing input to the signature part.
fn raw_jwt(header: &Value, claims: &Value, sign: impl FnOnce(&str) -> String) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = sign(&input);
    format!("{input}.{signature}")
}

/// Valid claims for `sub` for an hour.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now_secs() + 3600})
}

/// HMAC signature of `input` with `secret` under `alg` (HS256, HS384, …).
fn hmac(input: &str, secret: &[u8], alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        alg,
    )
    .expect("HMAC")
}

/// Asserts `token` is refused both ways: HTTP 401 on the upgrade request
/// and `error{unauthorized}` + close 4001 after `hello`.
async fn assert_token_refused(h: &Herald, token: &str, what: &str) {
    let r = refused(
        h.addr(),
        "/ws",
        &[("Authorization", &format!("Bearer {token}"))],
        401,
    )
    .await;
    assert_eq!(r.body["error"]["code"], "unauthorized", "{what}: {r:?}");
    refused(h.addr(), &format!("/ws?token={token}"), &[], 401).await;
    let mut c = h.connect_raw().await;
    c.name = what.to_string();
    c.send_json(json!({"op": "hello", "token": token})).await;
    let (seen, (code, _)) = c.drain_until_close(WAIT).await;
    assert_eq!(
        code, 4001,
        "{what}: hello must be closed with 4001 (before: {seen:?})"
    );
    if let Some(first) = seen.first() {
        assert_error(first, "unauthorized");
    }
}

/// `field` (`VmRSS`, `VmHWM`) of process `pid`, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------
// Per-user budgets (PROTOCOL.md §1.7)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_budget_is_shared_by_a_users_connections() {
    let h = Herald::start(&per_user("publish = { rate_per_s = 0.1, burst = 5 }")).await;
    // Two connections of one user, authenticated both ways, and another user.
    let mut a = h.connect_hello(&h.user_token("alice")).await;
    a.name = "alice-1".into();
    let mut b = h.connect_with_header(&h.user_token("alice")).await;
    b.name = "alice-2".into();
    let mut carol = h.connect_hello(&h.user_token("carol")).await;
    carol.name = "carol".into();
    for c in [&mut a, &mut b, &mut carol] {
        c.join(1, "open:pub").await;
    }

    // The burst is five publishes for alice in total, whichever connection.
    for id in 10..15 {
        let who = if id % 2 == 0 { &mut a } else { &mut b };
        let reply = publish(who, id, "open:pub").await;
        assert_eq!(
            reply["op"], "ack",
            "{}: publish {id} within the burst: {reply}",
            who.name
        );
    }
    let reply = publish(&mut b, 15, "open:pub").await;
    assert_rate_limited(&reply, Some(15), 10_000);
    let reply = publish(&mut a, 16, "open:pub").await;
    assert_rate_limited(&reply, Some(16), 10_000);

    // Another user's budget is untouched, and both limited connections live.
    let reply = publish(&mut carol, 17, "open:pub").await;
    assert_eq!(reply["op"], "ack", "carol: {reply}");
    a.assert_alive(18).await;
    b.assert_alive(19).await;
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_while_limited_is_closed_4008_on_the_tenth_refusal() {
    let h = Herald::start(&per_user("publish = { rate_per_s = 0.05, burst = 1 }")).await;
    let mut a = h.connect_hello(&h.user_token("alice")).await;
    a.name = "alice-1".into();
    let mut b = h.connect_hello(&h.user_token("alice")).await;
    b.name = "alice-2".into();
    a.join(1, "open:x").await;
    b.join(1, "open:x").await;
    assert_eq!(publish(&mut a, 2, "open:x").await["op"], "ack");

    // Nine refusals: still open, still answering.
    for id in 100..109 {
        assert_rate_limited(&publish(&mut a, id, "open:x").await, Some(id), 20_000);
    }
    a.assert_alive(3).await;
    // The other connection's refusals count for it alone.
    assert_rate_limited(&publish(&mut b, 4, "open:x").await, Some(4), 20_000);

    // The tenth refusal within the minute is followed by close 4008.
    a.send_json(json!({"op": "publish", "id": 109, "room": "open:x", "event": "e", "data": 1}))
        .await;
    let (seen, (code, _)) = a.drain_until_close(WAIT).await;
    assert_eq!(
        code, 4008,
        "close after the 10th rate_limited; before it: {seen:?}"
    );
    let last = seen
        .iter()
        .rfind(|m| m["op"] == "error")
        .unwrap_or_else(|| panic!("no error before the close: {seen:?}"));
    assert_rate_limited(last, Some(109), 20_000);

    b.assert_alive(5).await;
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_budget_is_shared_and_enforced_with_4008() {
    let h = Herald::start(&per_user("join = { rate_per_s = 0.05, burst = 3 }")).await;
    let mut a = h.connect_hello(&h.user_token("alice")).await;
    a.name = "alice-1".into();
    let mut b = h.connect_with_query(&h.user_token("alice")).await;
    b.name = "alice-2".into();
    let mut carol = h.connect_hello(&h.user_token("carol")).await;

    // Automatic rooms take nothing from the budget; explicit joins do.
    a.join(1, "open:1").await;
    a.join(2, "open:2").await;
    b.join(3, "open:3").await;
    assert_rate_limited(&b.try_join(4, "open:4").await, Some(4), 20_000);
    assert_rate_limited(&a.try_join(5, "open:5").await, Some(5), 20_000);
    assert_eq!(
        carol.join(6, "open:1").await["op"],
        "joined",
        "carol is unaffected"
    );

    // alice-1 has one refusal; eight more leave it open, the tenth closes.
    for id in 10..18 {
        assert_rate_limited(&a.try_join(id, "open:9").await, Some(id), 20_000);
    }
    a.assert_alive(20).await;
    a.send_json(json!({"op": "join", "id": 21, "room": "open:9"}))
        .await;
    let (seen, (code, _)) = a.drain_until_close(WAIT).await;
    assert_eq!(code, 4008, "before the close: {seen:?}");
    assert_rate_limited(seen.last().expect("an error before the close"), Some(21), 20_000);
    b.assert_alive(22).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_budget_refuses_upgrades_with_429_and_hellos_with_4008() {
    let h = Herald::start(&per_user("connect = { rate_per_s = 0.05, burst = 3 }")).await;
    let mut c1 = h.connect_with_header(&h.user_token("alice")).await;
    let mut c2 = h.connect_with_query(&h.user_token("alice")).await;
    let mut c3 = h.connect_hello(&h.user_token("alice")).await;

    // Token on the upgrade request: HTTP 429 with Retry-After, no upgrade.
    let token = h.user_token("alice");
    for (uri, headers) in [
        (
            "/ws".to_string(),
            vec![("Authorization", format!("Bearer {token}"))],
        ),
        (format!("/ws?token={token}"), vec![]),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = refused(h.addr(), &uri, &headers, 429).await;
        let secs = retry_after(&r.headers);
        assert!((1..=20).contains(&secs), "Retry-After {secs}: {r:?}");
        assert_eq!(r.body["error"]["code"], "rate_limited", "{r:?}");
    }

    // Token in hello: error rate_limited, then close 4008.
    let mut c4 = h.connect_raw().await;
    c4.send_json(json!({"op": "hello", "token": token})).await;
    let (seen, (code, _)) = c4.drain_until_close(WAIT).await;
    assert_eq!(
        code, 4008,
        "hello over the connect budget; before the close: {seen:?}"
    );
    assert_eq!(seen.len(), 1, "one error, no welcome: {seen:?}");
    assert_rate_limited(&seen[0], None, 20_000);

    // Other users connect; the open connections are untouched.
    let bob = h.connect_with_header(&h.user_token("bob")).await;
    assert_eq!(bob.welcome.as_ref().unwrap()["user"], "bob");
    c1.assert_alive(1).await;
    c2.assert_alive(1).await;
    c3.assert_alive(1).await;
    h.assert_no_panic().await;
}

// ---------------------------------------------------------------------------
// Per-IP connect limit, Origin, max_connections, max rooms
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connect_limit_when_configured() {
    let h = Herald::start(&format!(
        "[limits.per_ip]\nconnect = {{ rate_per_s = 0.05, burst = 4 }}\n{OPEN_ROOMS}"
    ))
    .await;
    // Four new connections from 127.0.0.1, authenticated or not, any user.
    let mut open = [
        h.connect_raw().await,
        h.connect_hello(&h.user_token("u1")).await,
        h.connect_with_header(&h.user_token("u2")).await,
        h.connect_with_query(&h.user_token("u3")).await,
    ];
    // The fifth is refused before its token is even looked at.
    for (uri, headers) in [
        ("/ws".to_string(), vec![]),
        (
            "/ws".to_string(),
            vec![("Authorization", format!("Bearer {}", h.user_token("u4")))],
        ),
        (format!("/ws?token={}", h.user_token("u5")), vec![]),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = refused(h.addr(), &uri, &headers, 429).await;
        assert!(retry_after(&r.headers) >= 1, "{r:?}");
        assert_eq!(r.body["error"]["code"], "rate_limited", "{r:?}");
    }
    for c in open.iter_mut().skip(1) {
        c.assert_alive(1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_have_no_per_ip_limit_and_allow_any_origin() {
    let h = Herald::start(OPEN_ROOMS).await;
    // Far more connections from one address than any per-IP burst would
    // allow in a test, each for its own user (the per-user budget is raised).
    let mut clients = Vec::new();
    for i in 0..40 {
        clients.push(
            h.connect_with_header(&h.user_token(&format!("ip-user-{i}")))
                .await,
        );
    }
    clients.last_mut().unwrap().assert_alive(1).await;
    // No allow-list configured: a browser from anywhere may connect.
    let mut ws = upgrade(h.addr(), "/ws", &[("Origin", "https://anywhere.example")])
        .await
        .expect("a foreign Origin with no allow-list configured");
    assert_eq!(
        raw_hello(&mut ws, &h.user_token("browser")).await["op"],
        "welcome"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list() {
    let h = Herald::start(&format!(
        "[gateway]\nallowed_origins = [\"https://app.example\", \"http://localhost:3000\"]\n{OPEN_ROOMS}"
    ))
    .await;
    let token = h.user_token("alice");
    let bearer = format!("Bearer {token}");
    for origin in [
        "https://evil.example",
        "https://app.example.evil.example",
        "http://app.example",
        "https://app.example:8443",
        "null",
    ] {
        let r = refused(h.addr(), "/ws", &[("Origin", origin)], 403).await;
        assert_eq!(r.body["error"]["code"], "forbidden", "{origin}: {r:?}");
        // A valid token does not make a foreign page acceptable.
        refused(
            h.addr(),
            "/ws",
            &[("Origin", origin), ("Authorization", &bearer)],
            403,
        )
        .await;
    }
    for origin in ["https://app.example", "http://localhost:3000"] {
        let mut ws = upgrade(h.addr(), "/ws", &[("Origin", origin)])
            .await
            .unwrap_or_else(|r| panic!("allowed origin {origin} refused: {r:?}"));
        let welcome = raw_hello(&mut ws, &token).await;
        assert_eq!(welcome["op"], "welcome", "{origin}: {welcome}");
    }
    // Non-browser clients send no Origin: they pass.
    let mut c = h.connect_hello(&token).await;
    c.join(1, "open:o").await;
    let c2 = h.connect_with_header(&token).await;
    assert_eq!(c2.welcome.as_ref().unwrap()["user"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_upgrades_with_503() {
    let h = Herald::start(&format!("[gateway]\nmax_connections = 3\n{OPEN_ROOMS}")).await;
    let a = h.connect_hello(&h.user_token("a")).await;
    let mut b = h.connect_with_header(&h.user_token("b")).await;
    // A connection that has not said hello yet holds a slot too.
    let mut unauthenticated = h.connect_raw().await;

    let cases: [(String, Vec<(&str, String)>); 2] = [
        ("/ws".to_string(), vec![]),
        (format!("/ws?token={}", h.user_token("d")), vec![]),
    ];
    for (uri, headers) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = refused(h.addr(), &uri, &headers, 503).await;
        assert_eq!(r.body["error"]["code"], "unavailable", "{r:?}");
    }
    unauthenticated.hello(&h.user_token("c")).await;
    b.assert_alive(1).await;
    assert_eq!(
        h.get_text("/healthz").await.0,
        200,
        "HTTP still served at the limit"
    );

    // A closed connection frees its slot.
    drop(a);
    let mut d = eventually(
        Duration::from_secs(5),
        "a slot freed by a closed connection",
        || async {
            h.try_connect(ConnectOptions::new(Auth::Header(h.user_token("d"))))
                .await
                .ok()
        },
    )
    .await;
    d.assert_alive(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rooms_per_connection() {
    const MAX: usize = 5;
    let h = Herald::start(&format!(
        "[gateway]\nmax_rooms_per_connection = {MAX}\n{OPEN_ROOMS}"
    ))
    .await;
    let mut a = h.connect_hello(&h.user_token("alice")).await;
    // The automatic rooms (user:alice, broadcast) count towards the limit.
    let automatic = a.welcome.as_ref().unwrap()["rooms"].as_array().unwrap().len();
    assert!(automatic < MAX, "welcome: {:?}", a.welcome);
    for i in 0..MAX - automatic {
        a.join(i as u64, &format!("open:{i}")).await;
    }
    let reply = a.try_join(100, "open:over").await;
    assert_error(&reply, "forbidden");
    assert_eq!(reply["id"], 100);
    a.assert_alive(101).await;
    // Leaving one makes room for another.
    let left = reply_to(&mut a, json!({"op": "leave", "id": 102, "room": "open:0"})).await;
    assert_eq!(left["op"], "left", "{left}");
    a.join(103, "open:over").await;
    assert_error(&a.try_join(104, "open:over-2").await, "forbidden");
    // The limit is per connection: the same user's next connection has its own.
    let mut b = h.connect_hello(&h.user_token("alice")).await;
    b.join(1, "open:1").await;
}

// ---------------------------------------------------------------------------
// A stalled reader (PROTOCOL.md §1.6)
// ---------------------------------------------------------------------------

const STALL_EVENTS: u64 = 6000;
/// 6000 × 16 KiB ≈ 94 MiB published while one member reads nothing: more
/// than the memory bound below, so a queue that grew without limit fails.
const STALL_PAD: usize = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_costs_bounded_memory_and_delays_nobody() {
    const ROOM: &str = "stall:1";
    let h = Herald::start(
        "[gateway]\noutbound_queue = 256\n\n[[rooms]]\npattern = \"stall:*\"\njoin = \"anyone\"\nhistory_size = 100\n",
    )
    .await;
    let mut stalled = h.connect_slow(&h.user_token("stalled")).await;
    stalled.name = "stalled".into();
    let epoch = epoch_of(&stalled.join(1, ROOM).await);
    let mut reader = h.connect_hello(&h.user_token("reader")).await;
    reader.name = "reader".into();
    reader.join(1, ROOM).await;

    let mut api = h.api_client().await;
    let pad = "p".repeat(STALL_PAD);
    // Warm up (allocator, buffers) before the baseline is taken.
    for i in 1..=20u64 {
        api.publish(ROOM, "warm", json!({"i": i, "pad": pad})).await;
        reader.next_event(ROOM, WAIT).await;
        stalled.next_event(ROOM, WAIT).await;
    }
    let baseline_kib = proc_status_kib(h.pid(), "VmRSS");
    stalled.pause_reading();

    // The reader reads on its own task while the events are published.
    let reading = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(STALL_EVENTS as usize);
        for expected in 21..=20 + STALL_EVENTS {
            let msg = reader.next_event(ROOM, Duration::from_secs(10)).await;
            assert_eq!(offset_of(&msg), expected, "reader: gap or duplicate");
            latencies.push(now_ms() - msg["ts"].as_i64().expect("ts"));
        }
        (reader, latencies)
    });
    let started = Instant::now();
    for i in 1..=STALL_EVENTS {
        api.publish(ROOM, "big", json!({"i": i, "pad": pad})).await;
    }
    let published_in = started.elapsed();
    let (mut reader, mut latencies) = bounded(Duration::from_secs(20), "the reader's events", reading)
        .await
        .expect("the reader task panicked");
    let read_in = started.elapsed();
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2];
    let max = *latencies.last().unwrap();
    eprintln!(
        "stalled reader: published {STALL_EVENTS} events in {published_in:?}, read in {read_in:?}, \
         latency p50 {p50} ms, max {max} ms"
    );
    // Generous bounds for a loaded CI machine: the reader keeps up with the
    // publisher instead of waiting on the stalled member.
    assert!(p50 < 250, "reader's median delivery latency {p50} ms");
    assert!(max < 3000, "reader's worst delivery latency {max} ms");
    assert!(
        read_in < published_in + Duration::from_secs(3),
        "the reader trailed the publisher"
    );

    // The stalled member was cut with 4009 and holds nothing any more.
    let peak_kib = proc_status_kib(h.pid(), "VmHWM");
    let rss_kib = proc_status_kib(h.pid(), "VmRSS");
    eprintln!("server memory: baseline {baseline_kib} KiB, peak {peak_kib} KiB, now {rss_kib} KiB");
    stalled.resume_reading();
    let (seen, (code, reason)) = stalled.drain_until_close(Duration::from_secs(10)).await;
    assert_eq!(code, 4009, "the stalled member's close ({reason:?})");
    let events: Vec<&Value> = seen.iter().filter(|m| m["op"] == "event").collect();
    for (i, msg) in events.iter().enumerate() {
        assert_eq!(offset_of(msg), 21 + i as u64, "stalled: gap or duplicate");
        assert_eq!(msg["epoch"], epoch);
    }
    assert!(
        (events.len() as u64) < STALL_EVENTS / 2,
        "the stalled member got {} events: it never fell behind",
        events.len()
    );
    // Everything published went through the process (≈ 94 MiB of frames);
    // what it may keep is the room's history (100 events) plus one bounded
    // queue (256 events): a few MiB, and the bound below is generous.
    let growth_mib = rss_kib.max(peak_kib).saturating_sub(baseline_kib) / 1024;
    assert!(
        growth_mib < 48,
        "server memory grew by {growth_mib} MiB (baseline {baseline_kib} KiB, peak {peak_kib} KiB)"
    );
    reader.assert_alive(2).await;
    h.assert_no_panic().await;
}

// ---------------------------------------------------------------------------
// The API tier
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_api_key_limit_answers_429_and_spares_other_keys() {
    const OTHER_KEY: &str = "test-api-key-2";
    let h = Herald::start(&format!(
        "[api]\nkeys = [\"{API_KEY}\", \"{OTHER_KEY}\"]\n\n\
         [limits.per_api_key]\nrequests = {{ rate_per_s = 0.05, burst = 3 }}\n"
    ))
    .await;
    for _ in 0..3 {
        let resp = h.request("GET", "/v1/stats", None, Some(API_KEY)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    // Any endpoint, valid or not, spends the same budget.
    let resp = h
        .request(
            "POST",
            "/v1/broadcast",
            Some(br#"{"event":"e","data":1}"#.to_vec()),
            Some(API_KEY),
        )
        .await;
    assert_eq!(resp.status, 429, "{}", resp.text());
    let secs = retry_after(&resp.headers);
    assert!((1..=20).contains(&secs), "Retry-After {secs}");
    assert_eq!(resp.json()["error"]["code"], "rate_limited", "{}", resp.text());
    assert_eq!(
        h.request("GET", "/v1/stats", None, Some(API_KEY)).await.status,
        429
    );

    // The other key, and unauthenticated probes, are not this key's budget.
    for _ in 0..3 {
        assert_eq!(
            h.request("GET", "/v1/stats", None, Some(OTHER_KEY)).await.status,
            200
        );
    }
    assert_eq!(
        h.request("GET", "/v1/stats", None, Some("wrong-key-123"))
            .await
            .status,
        403
    );
    assert_eq!(h.request("GET", "/v1/stats", None, None).await.status, 401);
    assert_eq!(h.get_text("/healthz").await.0, 200);
}

// ---------------------------------------------------------------------------
// JWT algorithm confusion (PROTOCOL.md §1.1)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_and_other_hmac_algorithms_are_refused() {
    let h = Herald::start(OPEN_ROOMS).await;
    // Control: the hand-made HS256 token is accepted, so the refusals below
    // are about the algorithm and nothing else.
    let good = raw_jwt(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims("alice"),
        |input| hmac(input, SECRET.as_bytes(), jsonwebtoken::Algorithm::HS256),
    );
    h.connect_with_header(&good).await;
    h.connect_hello(&good).await;

    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT"});
        let unsigned = raw_jwt(&header, &claims("mallory"), |_| String::new());
        assert_token_refused(&h, &unsigned, &format!("alg {alg}, no signature")).await;
        // `none` with a valid HS256 signature over the same input.
        let signed = raw_jwt(&header, &claims("mallory"), |input| {
            hmac(input, SECRET.as_bytes(), jsonwebtoken::Algorithm::HS256)
        });
        assert_token_refused(&h, &signed, &format!("alg {alg}, HS256 signature")).await;
    }
    // The right secret under another HMAC algorithm.
    for alg in [jsonwebtoken::Algorithm::HS384, jsonwebtoken::Algorithm::HS512] {
        let token = raw_jwt(
            &json!({"alg": format!("{alg:?}"), "typ": "JWT"}),
            &claims("mallory"),
            |input| hmac(input, SECRET.as_bytes(), alg),
        );
        assert_token_refused(&h, &token, &format!("{alg:?} with the right secret")).await;
    }
    // No `alg` at all.
    let token = raw_jwt(&json!({"typ": "JWT"}), &claims("mallory"), |input| {
        hmac(input, SECRET.as_bytes(), jsonwebtoken::Algorithm::HS256)
    });
    assert_token_refused(&h, &token, "no alg").await;
    h.assert_no_panic().await;
}

/// An RSA key pair made with `openssl` in `dir`: (private PEM, public PEM).
fn openssl_rsa_keypair(dir: &std::path::Path) -> Option<(String, String)> {
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let run = |args: &[&str]| -> bool {
        match Command::new("openssl").args(args).output() {
            Ok(out) if out.status.success() => true,
            Ok(out) => panic!(
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => false,
        }
    };
    let p = |path: &PathBuf| path.to_str().unwrap().to_string();
    if !run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p(&private),
    ]) {
        return None;
    }
    assert!(run(&["rsa", "-in", &p(&private), "-pubout", "-out", &p(&public)]));
    Some((
        std::fs::read_to_string(&private).unwrap(),
        std::fs::read_to_string(&public).unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_rs256_public_key_is_refused() {
    let dir = unique_dir("rsa");
    let Some((private_pem, public_pem)) = openssl_rsa_keypair(&dir) else {
        eprintln!("SKIPPED hs256_signed_with_the_rs256_public_key_is_refused: `openssl` is not installed");
        return;
    };
    let _ = std::fs::remove_dir_all(&dir);
    // One line of TOML (the harness merges `[auth]` line by line); the base
    // configuration's HS256 `jwt_secret` stays in place on purpose.
    let pem_toml = serde_json::to_string(&public_pem).unwrap();
    let h = Herald::start(&format!(
        "[auth]\nalgorithm = \"RS256\"\npublic_key_pem = {pem_toml}\n{OPEN_ROOMS}"
    ))
    .await;

    // Control: a real RS256 token is accepted both ways.
    let rs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims("alice"),
        &jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("RSA private key"),
    )
    .unwrap();
    assert_eq!(
        h.connect_with_header(&rs256).await.welcome.clone().unwrap()["user"],
        "alice"
    );
    h.connect_hello(&rs256).await;

    let hs256 = |secret: &[u8]| {
        raw_jwt(
            &json!({"alg": "HS256", "typ": "JWT"}),
            &claims("mallory"),
            |input| hmac(input, secret, jsonwebtoken::Algorithm::HS256),
        )
    };
    // The classic confusion: the public key (as the server holds it, and
    // trimmed) used as an HMAC secret.
    let trimmed = public_pem.trim_end();
    let der_b64: String = public_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    for (secret, what) in [
        (public_pem.as_bytes(), "HS256 with the public key PEM"),
        (trimmed.as_bytes(), "HS256 with the trimmed public key PEM"),
        (der_b64.as_bytes(), "HS256 with the public key's base64 body"),
        (SECRET.as_bytes(), "HS256 with the leftover jwt_secret"),
    ] {
        assert_token_refused(&h, &hs256(secret), what).await;
    }
    let none = raw_jwt(&json!({"alg": "none"}), &claims("mallory"), |_| String::new());
    assert_token_refused(&h, &none, "alg none against RS256").await;
    // An RS256 header over an HMAC signature made with the public key.
    let forged = raw_jwt(
        &json!({"alg": "RS256", "typ": "JWT"}),
        &claims("mallory"),
        |input| hmac(input, public_pem.as_bytes(), jsonwebtoken::Algorithm::HS256),
    );
    assert_token_refused(&h, &forged, "RS256 header, HMAC signature").await;
    h.assert_no_panic().await;
}

// ---------------------------------------------------------------------------
// Credentials never logged on the refusal paths (ops.rs covers the normal
// paths: header, query, hello, refresh, bad and expired tokens, API keys)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_paths_never_log_credentials() {
    const OTHER_KEY: &str = "test-api-key-2-secret";
    let h = Herald::start_with_env(
        &format!(
            "[api]\nkeys = [\"{API_KEY}\", \"{OTHER_KEY}\"]\n\n\
             [limits.per_user]\n\
             connect = {{ rate_per_s = 0.05, burst = 2 }}\n\
             publish = {{ rate_per_s = 0.05, burst = 1 }}\n\n\
             [limits.per_api_key]\nrequests = {{ rate_per_s = 0.05, burst = 2 }}\n\n\
             [gateway]\nmax_connections = 4\nallowed_origins = [\"https://app.example\"]\n{OPEN_ROOMS}"
        ),
        &[("RUST_LOG", "debug")],
    )
    .await;
    let tokens = std::cell::RefCell::new(Vec::<String>::new());
    let token = |sub: &str| {
        let t = h.user_token(sub);
        tokens.borrow_mut().push(t.clone());
        t
    };

    // alice spends her connect budget (2), then is refused both ways.
    let mut a1 = h.connect_with_header(&token("alice")).await;
    let a2 = h.connect_with_query(&token("alice")).await;
    refused(h.addr(), &format!("/ws?token={}", token("alice")), &[], 429).await;
    let bearer = format!("Bearer {}", token("alice"));
    refused(h.addr(), "/ws", &[("Authorization", &bearer)], 429).await;
    let mut limited = h.connect_raw().await;
    limited
        .send_json(json!({"op": "hello", "token": token("alice")}))
        .await;
    assert_eq!(limited.expect_close(WAIT).await.0, 4008);

    // A foreign Origin with a token in the URI.
    let uri = format!("/ws?token={}", token("bob"));
    refused(h.addr(), &uri, &[("Origin", "https://evil.example")], 403).await;

    // alg none, and an API key offered as a token.
    let none = raw_jwt(&json!({"alg": "none"}), &claims("mallory"), |_| String::new());
    tokens.borrow_mut().push(none.clone());
    refused(h.addr(), &format!("/ws?token={none}"), &[], 401).await;
    refused(h.addr(), &format!("/ws?token={API_KEY}"), &[], 401).await;
    let mut c = h.connect_raw().await;
    c.send_json(json!({"op": "hello", "token": OTHER_KEY})).await;
    assert_eq!(c.expect_close(WAIT).await.0, 4001);

    // A second hello, a hello-shaped mistake and a malformed refresh carry
    // tokens on an authenticated connection.
    a1.join(1, "open:l").await;
    let reply = reply_to(&mut a1, json!({"op": "hello", "id": 2, "token": token("alice")})).await;
    assert_error(&reply, "bad_request");
    let t = token("alice");
    a1.send_json(json!({"op": "refresh", "id": 3, "token": [t]}))
        .await;
    assert_error(&a1.next_json(WAIT).await, "bad_request");
    let t = token("alice");
    a1.send_json(json!({"op": "refresh", "id": 4, "token": t, "since": t, "room": 5}))
        .await;
    a1.next_json(WAIT).await;
    // Over the publish budget: rate_limited.
    assert_eq!(publish(&mut a1, 5, "open:l").await["op"], "ack");
    assert_rate_limited(&publish(&mut a1, 6, "open:l").await, Some(6), 30_000);

    // At max_connections (a1, a2 and two more, once the closed ones have
    // given their slots back), with a token in the URI.
    drop((limited, c));
    let started = Instant::now();
    let carol = token("carol");
    let _c3 = eventually(WAIT, "a slot for carol", || async {
        h.try_connect(ConnectOptions::new(Auth::Header(carol.clone())))
            .await
            .ok()
    })
    .await;
    eprintln!(
        "closed connections gave their slots back within {:?}",
        started.elapsed()
    );
    let _c4 = h.connect_hello(&token("dave")).await;
    refused(h.addr(), &format!("/ws?token={}", token("erin")), &[], 503).await;

    // The API: the key limit, a wrong key, keys in the wrong scheme, a JWT
    // as a key.
    for _ in 0..2 {
        assert_eq!(
            h.request("GET", "/v1/stats", None, Some(OTHER_KEY)).await.status,
            200
        );
    }
    assert_eq!(
        h.request("GET", "/v1/stats", None, Some(OTHER_KEY)).await.status,
        429
    );
    let jwt_as_key = token("frank");
    assert_eq!(
        h.request("GET", "/v1/stats", None, Some(&jwt_as_key))
            .await
            .status,
        403
    );
    assert_eq!(
        h.request("GET", "/v1/stats", None, Some("wrong-key-secret-9"))
            .await
            .status,
        403
    );
    assert_eq!(h.api_call("GET", "/v1/stats", None).await.0, 200);
    drop((a1, a2));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let lines = h.stderr_lines();
    assert!(
        lines.iter().any(|l| l.contains("DEBUG")),
        "no DEBUG line: RUST_LOG=debug did not take effect, nothing was checked:\n{}",
        lines.join("\n")
    );
    let mut secrets: Vec<String> = vec![
        SECRET.into(),
        API_KEY.into(),
        OTHER_KEY.into(),
        "wrong-key-secret-9".into(),
    ];
    for t in tokens.borrow().iter() {
        secrets.push(t.clone());
        if let Some(signature) = t.rsplit('.').next().filter(|s| !s.is_empty()) {
            secrets.push(signature.to_string());
        }
    }
    for secret in &secrets {
        if let Some(line) = lines.iter().find(|l| l.contains(secret.as_str())) {
            panic!("the logs contain a credential ({secret:?}):\n{line}");
        }
    }
    h.assert_no_panic().await;
}
