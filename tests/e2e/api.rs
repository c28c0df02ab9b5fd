//! The HTTP API over real HTTP/1.1 (PROTOCOL.md §2): publish (single room,
//! several rooms, idempotency), broadcast, history and presence, and the
//! error contract: 401 without a key, 403 with a wrong one, 400 for bad
//! input (and nothing published), 413 over `api.max_body_bytes`, 404 for an
//! unknown path; errors are `{"error":{"code","message"}}`.

use serde_json::{Value, json};

use crate::harness::*;

const CONFIG: &str = r#"
[api]
max_body_bytes = 4096

[[rooms]]
pattern = "api:*"
join = "anyone"
presence = true
history_size = 50
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_positions_and_delivers() {
    let h = Herald::start(CONFIG).await;
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    let joined = c.join(1, "api:1").await;

    let (status, body) = h
        .api_call(
            "POST",
            "/v1/publish",
            Some(json!({"room": "api:1", "event": "update", "data": {"x": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let pos = &body["positions"]["api:1"];
    assert_eq!(pos["offset"], 1, "{body}");
    assert_eq!(pos["epoch"], joined["epoch"], "{body}");
    let event = c.next_json(WAIT).await;
    assert_eq!(
        (&event["event"], &event["data"], &event["offset"]),
        (&json!("update"), &json!({"x": 1}), &json!(1))
    );

    let (status, body) = h
        .api_call(
            "POST",
            "/v1/publish",
            Some(json!({"room": "api:1", "event": "update", "data": null})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["positions"]["api:1"]["offset"], 2, "{body}");
    assert_eq!(c.next_json(WAIT).await["offset"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_several_rooms() {
    let h = Herald::start(CONFIG).await;
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    c.join(1, "api:a").await;
    c.join(2, "api:b").await;
    let (status, body) = h
        .api_call(
            "POST",
            "/v1/publish",
            Some(json!({"rooms": ["api:a", "api:b"], "event": "multi", "data": [1]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for room in ["api:a", "api:b"] {
        assert_eq!(body["positions"][room]["offset"], 1, "{body}");
    }
    let mut rooms: Vec<String> = Vec::new();
    for _ in 0..2 {
        let e = c.next_json(WAIT).await;
        assert_eq!((&e["op"], &e["event"]), (&json!("event"), &json!("multi")), "{e}");
        rooms.push(e["room"].as_str().unwrap().to_string());
    }
    rooms.sort();
    assert_eq!(rooms, ["api:a", "api:b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_publishes_once() {
    let h = Herald::start(CONFIG).await;
    let body = json!({"room": "api:idem", "event": "order", "data": {"n": 1}, "idempotency_key": "order-1"});
    let (s1, first) = h.api_call("POST", "/v1/publish", Some(body.clone())).await;
    let (s2, second) = h.api_call("POST", "/v1/publish", Some(body)).await;
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    assert_eq!(
        first["positions"], second["positions"],
        "the retry returns the first positions"
    );
    let (status, history) = h.api_call("GET", "/v1/rooms/api:idem/history", None).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(
        history["events"].as_array().map(Vec::len),
        Some(1),
        "published once: {history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_connections() {
    let h = Herald::start(CONFIG).await;
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    let (status, body) = h
        .api_call(
            "POST",
            "/v1/broadcast",
            Some(json!({"event": "notice", "data": "hello all"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["offset"].is_u64() && body["epoch"].is_string(), "{body}");
    let e = c.next_json(WAIT).await;
    assert_eq!(
        (&e["room"], &e["event"], &e["data"]),
        (&json!("broadcast"), &json!("notice"), &json!("hello all"))
    );
    assert_eq!(e["offset"], body["offset"]);

    let (status, body) = h
        .api_call("POST", "/v1/broadcast", Some(json!({"data": 1})))
        .await;
    assert_api_error(status, &body, 400, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_newest_and_since() {
    let h = Herald::start(CONFIG).await;
    for i in 1..=5u64 {
        h.publish("api:h", "tick", json!(i)).await;
    }
    let offsets = |body: &Value| -> Vec<u64> {
        body["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events array: {body}"))
            .iter()
            .map(offset_of)
            .collect()
    };

    let (status, all) = h.api_call("GET", "/v1/rooms/api:h/history", None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(offsets(&all), [1, 2, 3, 4, 5], "oldest first: {all}");
    assert_eq!(all["offset"], 5, "{all}");
    let epoch = epoch_of(&all);
    let first = &all["events"][0];
    assert_eq!(
        (&first["room"], &first["event"], &first["data"]),
        (&json!("api:h"), &json!("tick"), &json!(1))
    );
    assert_eq!(first["epoch"], epoch.as_str());
    assert!(first["ts"].is_i64() || first["ts"].is_u64(), "{first}");

    let (_, newest) = h.api_call("GET", "/v1/rooms/api:h/history?limit=2", None).await;
    assert_eq!(
        offsets(&newest),
        [4, 5],
        "without since: the newest `limit`: {newest}"
    );

    let (_, since) = h
        .api_call(
            "GET",
            &format!("/v1/rooms/api:h/history?since_offset=2&since_epoch={epoch}"),
            None,
        )
        .await;
    assert_eq!(offsets(&since), [3, 4, 5], "{since}");
    assert_eq!(since["recovered"], true, "{since}");

    let (_, page) = h
        .api_call(
            "GET",
            &format!("/v1/rooms/api:h/history?since_offset=1&since_epoch={epoch}&limit=2"),
            None,
        )
        .await;
    assert_eq!(
        offsets(&page),
        [2, 3],
        "with since: the first `limit` after it: {page}"
    );

    let (_, stale) = h
        .api_call(
            "GET",
            "/v1/rooms/api:h/history?since_offset=2&since_epoch=other",
            None,
        )
        .await;
    assert_eq!(stale["recovered"], false, "{stale}");
    assert_eq!(offsets(&stale), Vec::<u64>::new(), "{stale}");

    let (status, empty) = h.api_call("GET", "/v1/rooms/api:never-used/history", None).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(offsets(&empty), Vec::<u64>::new());

    let (status, body) = h.api_call("GET", "/v1/rooms/bad%20room/history", None).await;
    assert_api_error(status, &body, 400, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_members() {
    let h = Herald::start(CONFIG).await;
    let alice = h.user_token("alice");
    let mut a1 = h.connect_hello(&alice).await;
    let mut a2 = h.connect_hello(&alice).await;
    let mut b = h.connect_hello(&h.user_token("bob")).await;
    for c in [&mut a1, &mut a2, &mut b] {
        c.join(1, "api:p").await;
    }
    let (status, body) = h.api_call("GET", "/v1/rooms/api:p/presence", None).await;
    assert_eq!(status, 200, "{body}");
    let mut members: Vec<(String, u64)> = body["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
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
        [("alice".to_string(), 2), ("bob".to_string(), 1)],
        "{body}"
    );

    drop(b);
    let members = eventually(WAIT, "bob leaves presence", || async {
        let (_, body) = h.api_call("GET", "/v1/rooms/api:p/presence", None).await;
        let members = body["members"].as_array().cloned().unwrap_or_default();
        (members.len() == 1).then_some(members)
    })
    .await;
    assert_eq!(members[0], json!({"user": "alice", "conns": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_api_key() {
    let h = Herald::start(CONFIG).await;
    let publish = json!({"room": "api:k", "event": "e", "data": 1});
    let (status, body) = h.http("POST", "/v1/publish", Some(publish.clone()), None).await;
    assert_api_error(status, &body, 401, "unauthorized");
    let (status, body) = h
        .http(
            "POST",
            "/v1/publish",
            Some(publish.clone()),
            Some("wrong-key-123"),
        )
        .await;
    assert_api_error(status, &body, 403, "forbidden");
    let (status, body) = h.http("GET", "/v1/rooms/api:k/history", None, None).await;
    assert_api_error(status, &body, 401, "unauthorized");
    let (status, body) = h.http("GET", "/v1/stats", None, None).await;
    assert_api_error(status, &body, 401, "unauthorized");
    let (status, body) = h.http("GET", "/v1/stats", None, Some("test-api-key-2")).await;
    assert_api_error(status, &body, 403, "forbidden");

    // Nothing was published by the refused calls.
    let (_, history) = h.api_call("GET", "/v1/rooms/api:k/history", None).await;
    assert_eq!(history["events"], json!([]), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_and_publish_nothing() {
    let h = Herald::start(CONFIG).await;
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    c.join(1, "api:ok").await;

    let raw = |body: &str| Some(body.as_bytes().to_vec());
    for body in [
        "{not json",
        "",
        "[]",
        "null",
        "{\"room\": \"api:ok\", \"event\": \"e\", \"data\": 1",
    ] {
        let resp = h.request("POST", "/v1/publish", raw(body), Some(API_KEY)).await;
        assert_api_error(resp.status, &resp.json(), 400, "bad_request");
    }
    for body in [
        json!({"room": "bad room", "event": "e", "data": 1}),
        json!({"room": "", "event": "e", "data": 1}),
        json!({"room": "api:ok", "data": 1}),
        json!({"room": "api:ok", "event": 5, "data": 1}),
        json!({"room": 5, "event": "e", "data": 1}),
        json!({"event": "e", "data": 1}),
        json!({"rooms": ["api:ok", "bad room!"], "event": "e", "data": 1}),
        json!({"rooms": ["api:ok", 7], "event": "e", "data": 1}),
    ] {
        let (status, reply) = h.api_call("POST", "/v1/publish", Some(body.clone())).await;
        assert_api_error(status, &reply, 400, "bad_request");
    }
    // Nothing reached the valid room named in the refused batch.
    c.expect_no_message(std::time::Duration::from_millis(300)).await;
    let (_, history) = h.api_call("GET", "/v1/rooms/api:ok/history", None).await;
    assert_eq!(history["events"], json!([]), "{history}");
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_limit_is_413() {
    let h = Herald::start(CONFIG).await;
    let big = json!({"room": "api:big", "event": "e", "data": "x".repeat(6000)});
    let (status, body) = h.api_call("POST", "/v1/publish", Some(big)).await;
    assert_eq!(status, 413, "{body}");
    if !body.is_null() {
        assert_eq!(body["error"]["code"], "too_large", "{body}");
    }
    // Under the limit is fine, and the refused one was not published.
    let ok = json!({"room": "api:big", "event": "e", "data": "x".repeat(3000)});
    let (status, body) = h.api_call("POST", "/v1/publish", Some(ok)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["positions"]["api:big"]["offset"], 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_404() {
    let h = Herald::start(CONFIG).await;
    let (status, body) = h.api_call("GET", "/v1/nope", None).await;
    assert_api_error(status, &body, 404, "not_found");
    let (status, _) = h.api_call("POST", "/v1/publish/extra", Some(json!({}))).await;
    assert_eq!(status, 404);
    let (status, _) = h.http("GET", "/definitely-not-here", None, None).await;
    assert_eq!(status, 404);
}
