//! Operations (PROTOCOL.md §3): health and readiness, Prometheus metrics,
//! SIGTERM drain, the `token` subcommand, configuration errors that name
//! the key, and logs that never contain a token, key or secret.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

const ROOMS: &str = r#"
[[rooms]]
pattern = "open:*"
join = "anyone"
"#;

/// After SIGTERM: the process exits 0 within 8 s and never panicked.
async fn assert_clean_exit(h: &mut Herald) {
    let status = h
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("herald did not exit after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let logs = h.stderr_lines().join("\n");
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let h = Herald::start(ROOMS).await;
    let (status, _) = h.get_text("/healthz").await;
    assert_eq!(status, 200, "/healthz");
    let (status, _) = h.get_text("/readyz").await;
    assert_eq!(status, 200, "/readyz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reflect_traffic() {
    let h = Herald::start(ROOMS).await;
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    c.join(1, "open:m").await;
    h.publish("open:m", "tick", json!(1)).await;
    assert_eq!(c.next_json(WAIT).await["op"], "event");
    c.assert_alive(2).await;

    let (status, text) = h.get_text("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "herald_connections_open",
        "herald_connections_accepted_total",
        "herald_frames_in_total",
        "herald_frames_out_total",
        "herald_events_delivered_total",
        "herald_delivery_latency_seconds",
        "herald_rooms",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    let value =
        |name: &str| metric_value(&text, name).unwrap_or_else(|| panic!("no sample of {name}:\n{text}"));
    assert_eq!(
        value("herald_connections_open"),
        1.0,
        "one connection is open:\n{text}"
    );
    assert!(value("herald_connections_accepted_total") >= 1.0);
    assert!(
        value("herald_frames_in_total") >= 2.0,
        "hello, join, ping came in:\n{text}"
    );
    assert!(
        value("herald_frames_out_total") >= 2.0,
        "welcome, joined, event, pong went out:\n{text}"
    );
    assert!(value("herald_events_delivered_total") >= 1.0);
    assert!(value("herald_delivery_latency_seconds_count") >= 1.0, "{text}");
    assert!(value("herald_rooms") >= 1.0);

    // The gauge follows the connection.
    drop(c);
    eventually(WAIT, "herald_connections_open back to 0", || async {
        let (_, text) = h.get_text("/metrics").await;
        (metric_value(&text, "herald_connections_open") == Some(0.0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut h = Herald::start(&format!("[gateway]\ndrain_ms = 2000\n{ROOMS}")).await;
    let token = h.user_token("alice");
    let mut a = h.connect_hello(&token).await;
    let mut b = h.connect_with_header(&h.user_token("bob")).await;
    a.join(1, "open:d").await;
    assert_eq!(h.get_text("/readyz").await.0, 200);

    h.sigterm();
    let signalled = Instant::now();
    eventually(
        Duration::from_millis(1500),
        "/readyz answering 503 after SIGTERM",
        || async { (h.get_text("/readyz").await.0 == 503).then_some(()) },
    )
    .await;
    // New upgrades are refused; the listener still answers health checks.
    let refused = h
        .try_connect(ConnectOptions::new(Auth::Header(token.clone())))
        .await;
    assert_eq!(refused.err(), Some(503), "upgrade during drain");
    assert_eq!(h.get_text("/healthz").await.0, 200, "/healthz during drain");

    let ((code_a, _), (code_b, _)) = tokio::join!(
        a.expect_close(Duration::from_secs(5)),
        b.expect_close(Duration::from_secs(5))
    );
    assert_eq!((code_a, code_b), (1001, 1001), "drain closes with 1001");
    assert!(
        signalled.elapsed() < Duration::from_millis(4000),
        "closes spread over drain_ms = 2000"
    );

    assert_clean_exit(&mut h).await;
}

/// A thousand connections are all closed with 1001 within `drain_ms`, and
/// the closes are spread over the window rather than sent at once (no
/// reconnect stampede on the other nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_thousand_connections_evenly() {
    const CONNS: usize = 1000;
    const DRAIN: Duration = Duration::from_millis(3000);
    let mut h = Herald::start(&format!("[gateway]\ndrain_ms = {}\n{ROOMS}", DRAIN.as_millis())).await;
    let mut clients = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        clients.push(h.connect_with_header(&h.user_token(&format!("u{i}"))).await);
    }
    let (status, text) = h.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.lines()
            .any(|l| l.starts_with("herald_connections_open") && l.ends_with(&format!(" {CONNS}"))),
        "{CONNS} connections open before the drain:\n{}",
        text.lines()
            .filter(|l| l.starts_with("herald_connections_open"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let signalled = Instant::now();
    h.sigterm();
    let waits = clients.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let (code, _) = c.expect_close(DRAIN + Duration::from_secs(5)).await;
            (code, signalled.elapsed())
        })
    });
    let mut closes = Vec::with_capacity(CONNS);
    for wait in waits.collect::<Vec<_>>() {
        closes.push(wait.await.expect("close waiter"));
    }
    let codes: std::collections::BTreeMap<u16, usize> =
        closes.iter().fold(Default::default(), |mut m, (code, _)| {
            *m.entry(*code).or_default() += 1;
            m
        });
    assert_eq!(codes, [(1001, CONNS)].into(), "close codes");
    let mut at: Vec<Duration> = closes.iter().map(|(_, t)| *t).collect();
    at.sort();
    let last = *at.last().unwrap();
    assert!(
        last < DRAIN + Duration::from_millis(1500),
        "last close after {last:?} (drain_ms {DRAIN:?})"
    );
    // Spread: each quarter of the window holds a fair share of the closes.
    let quarter = DRAIN / 4;
    for q in 0..4u32 {
        let (from, to) = (quarter * q, quarter * (q + 1));
        let n = at.iter().filter(|t| **t >= from && **t < to).count();
        assert!(
            n >= CONNS / 10,
            "{n} of {CONNS} closes in {from:?}..{to:?}: not spread over drain_ms (first {:?}, last {last:?})",
            at[0]
        );
    }
    assert_clean_exit(&mut h).await;
}

/// An API request in flight when SIGTERM arrives (its body half sent) is
/// finished and answered before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_an_api_request_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut h = Herald::start(ROOMS).await;
    let body = json!({"room": "open:inflight", "event": "e", "data": {"pad": "x".repeat(200)}}).to_string();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let mut socket = tokio::net::TcpStream::connect(h.addr()).await.expect("connect");
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.expect("write head");
    socket.write_all(first).await.expect("write half the body");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // With no WebSocket to drain, the node stops accepting at once and
    // waits only for the requests it has.
    h.sigterm();
    tokio::time::sleep(Duration::from_millis(500)).await;
    socket.write_all(rest).await.expect("write the rest of the body");
    let mut response = String::new();
    tokio::time::timeout(WAIT, socket.read_to_string(&mut response))
        .await
        .expect("the response within the wait")
        .expect("read the response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""open:inflight":{"offset":1"#), "{response}");

    assert_clean_exit(&mut h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_no_connections_exits_zero() {
    let mut h = Herald::start(ROOMS).await;
    h.sigterm();
    let status = h
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("herald did not exit");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_subcommand_mints_accepted_tokens() {
    let h = Herald::start(ROOMS).await;
    let config = h.config_path().to_str().unwrap().to_string();
    let data_dir = h.data_dir().to_str().unwrap().to_string();

    let last_line = |stdout: &str| -> String {
        stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("")
            .to_string()
    };

    let args = [
        "token",
        "--sub",
        "alice",
        "--ttl",
        "1h",
        "--data-dir",
        &data_dir,
        "--config",
        &config,
    ];
    let (status, stdout, stderr) = run_herald(&args, &[], Duration::from_secs(10)).await;
    assert!(status.success(), "herald token: {status}\n{stderr}");
    let token = last_line(&stdout);
    assert_eq!(token.split('.').count(), 3, "not a JWT on stdout: {stdout:?}");
    let c = h.connect_with_header(&token).await;
    assert_eq!(c.welcome.as_ref().unwrap()["user"], "alice");

    // Global flags before the subcommand; roles and room claims.
    let args = [
        "--config",
        &config,
        "--data-dir",
        &data_dir,
        "token",
        "--sub",
        "bob",
        "--roles",
        "ADMIN",
        "--rooms",
        "event:*",
        "--ttl",
        "10m",
    ];
    let (status, stdout, stderr) = run_herald(&args, &[], Duration::from_secs(10)).await;
    assert!(status.success(), "herald token: {status}\n{stderr}");
    let mut c = h.connect_hello(&last_line(&stdout)).await;
    let welcome = c.welcome.clone().unwrap();
    assert_eq!(welcome["user"], "bob");
    assert!(
        welcome["rooms"]
            .as_array()
            .unwrap()
            .contains(&json!("role:ADMIN")),
        "{welcome}"
    );
    // event:* falls under the default policy (join = claims): the claim works.
    assert_eq!(c.join(1, "event:42").await["room"], "event:42");
    assert_error(&c.try_join(2, "other:1").await, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_config_key_fails_startup_naming_it() {
    for (extra, key) in [
        ("[gateway]\nbogus_knob = 1\n", "bogus_knob"),
        ("surprise_setting = true\n", "surprise_setting"),
        ("[[rooms]]\npattern = \"x:*\"\njoinn = \"anyone\"\n", "joinn"),
    ] {
        let (status, stderr) = Herald::start_expect_failure(extra).await;
        assert!(!status.success(), "started with an unknown key {key}: {status}");
        assert!(stderr.contains(key), "stderr does not name {key}:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens_keys_or_secrets() {
    let h = Herald::start_with_env(ROOMS, &[("RUST_LOG", "debug")]).await;
    let wrong_key = "wrong-key-0123456789";
    let header_token = h.token("alice", &["ADMIN"], &["x:*"], &["x:*"], 3600);
    let query_token = h.token("bob", &[], &[], &[], 3600);
    let hello_token = h.token("carol", &[], &[], &[], 3600);
    let refresh_token = h.token("carol", &[], &[], &[], 7200);
    let forged = mint(
        &json!({"sub": "mallory", "exp": now_secs() + 3600}),
        "forged-secret",
    );
    let expired = h.token("dave", &[], &[], &[], -3600);

    let mut a = h.connect_with_header(&header_token).await;
    let mut b = h.connect_with_query(&query_token).await;
    let mut c = h.connect_hello(&hello_token).await;
    a.join(1, "open:log").await;
    b.join(1, "open:log").await;
    let ack = c
        .request(json!({"op": "refresh", "id": 1, "token": refresh_token}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(
        h.try_connect(ConnectOptions::new(Auth::Query(forged.clone())))
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        h.try_connect(ConnectOptions::new(Auth::Header(expired.clone())))
            .await
            .err(),
        Some(401)
    );
    let mut d = h.connect_raw().await;
    d.send_json(json!({"op": "hello", "token": forged})).await;
    assert_eq!(d.expect_close(WAIT).await.0, 4001);
    let mut e = h.connect_hello(&hello_token).await;
    let reply = e
        .request(json!({"op": "refresh", "id": 2, "token": expired}))
        .await;
    assert_error(&reply, "unauthorized");

    h.publish("open:log", "e", json!({"n": 1})).await;
    a.next_json(WAIT).await;
    let (status, _) = h
        .http(
            "POST",
            "/v1/broadcast",
            Some(json!({"event": "e", "data": 1})),
            Some(wrong_key),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = h
        .http("GET", "/v1/rooms/open:log/history", None, Some(API_KEY))
        .await;
    assert_eq!(status, 200);
    drop((a, b, c, d, e));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let lines = h.stderr_lines();
    assert!(
        !lines.is_empty(),
        "the server logged nothing at all: cannot check its logs"
    );
    let logs = lines.join("\n");
    let mut secrets = vec![SECRET.to_string(), API_KEY.to_string(), wrong_key.to_string()];
    for token in [
        &header_token,
        &query_token,
        &hello_token,
        &refresh_token,
        &forged,
        &expired,
    ] {
        secrets.push(token.clone());
        // The signature alone is as good as the token for replay-hunting.
        secrets.push(token.rsplit('.').next().unwrap().to_string());
    }
    for secret in &secrets {
        if let Some(line) = lines.iter().find(|l| l.contains(secret.as_str())) {
            panic!("the logs contain a secret ({secret:?}):\n{line}");
        }
    }
    assert!(!logs.contains("panicked"), "{logs}");
}
