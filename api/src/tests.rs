//! End-to-end tests of [`Api::handle`] against a real `MemoryBroker`: each
//! request goes through authentication, routing, body reading and the
//! endpoint exactly as a hyper connection would drive it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use herald_broker::{
    Broker, BrokerError, Feed, FeedSink, HistoryQuery, HistoryRange, MemoryBroker, PublishRequest,
};
use herald_common::policy::{Policies, Retention, RoomPolicyConfig};
use herald_common::protocol::{Position, PresenceMember};
use herald_common::rooms::{RoomName, RoomPattern};
use http::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::*;

const KEY: &str = "test-key";
const MAX_BODY: usize = 4096;

/// Rooms under `small:` keep 3 events; everything else the default 100.
fn policies() -> Policies {
    Policies::new(&[RoomPolicyConfig {
        pattern: RoomPattern::parse("small:*").unwrap(),
        join: None,
        client_publish: None,
        presence: None,
        join_leave: None,
        history_size: Some(3),
        history_ttl_s: None,
        history_meta_ttl_s: None,
    }])
}

fn api_with(keys: &[&str], broker: Arc<dyn Broker>) -> Api {
    Api::new(
        ApiSettings {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            max_body_bytes: MAX_BODY,
            policies: policies(),
            store: None,
            key_limit: None,
            cors_origins: Vec::new(),
        },
        broker,
    )
}

fn api() -> Api {
    api_with(&["other-key", KEY], Arc::new(MemoryBroker::new()))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    raw: Bytes,
    json: Value,
}

async fn send(api: &Api, req: Request<Full<Bytes>>) -> Answer {
    let response = api.handle(req).await;
    let status = response.status();
    let headers = response.headers().clone();
    let raw = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&raw)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", String::from_utf8_lossy(&raw)));
    // Every answer, success or error, is declared JSON.
    assert_eq!(headers.get(CONTENT_TYPE).unwrap(), "application/json");
    Answer {
        status,
        headers,
        raw,
        json,
    }
}

fn request(method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn call(api: &Api, method: Method, path: &str, body: &str) -> Answer {
    send(api, request(method, path, body)).await
}

async fn post(api: &Api, path: &str, body: Value) -> Answer {
    call(api, Method::POST, path, &body.to_string()).await
}

async fn get(api: &Api, path: &str) -> Answer {
    call(api, Method::GET, path, "").await
}

/// Asserts an error answer and returns its message.
fn expect_error(answer: &Answer, status: u16, code: &str) -> String {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.json);
    assert_eq!(answer.json["error"]["code"], code, "{}", answer.json);
    let message = answer.json["error"]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    message
}

async fn publish_n(api: &Api, room: &str, n: u64) {
    for i in 1..=n {
        let a = post(
            api,
            "/v1/publish",
            json!({"room": room, "event": "e", "data": {"i": i}}),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    }
}

// ---- publish ------------------------------------------------------------

#[tokio::test]
async fn publish_one_room_assigns_increasing_offsets() {
    let api = api();
    let a = post(
        &api,
        "/v1/publish",
        json!({"room": "chat:1", "event": "msg", "data": {"x": 1}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let first = &a.json["positions"]["chat:1"];
    assert_eq!(first["offset"], 1);
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    assert_eq!(a.json["positions"].as_object().unwrap().len(), 1);

    let a = post(
        &api,
        "/v1/publish",
        json!({"room": "chat:1", "event": "msg", "data": [1]}),
    )
    .await;
    assert_eq!(
        a.json["positions"]["chat:1"],
        json!({"offset": 2, "epoch": epoch})
    );
    // `null` is a JSON value like any other.
    let a = post(
        &api,
        "/v1/publish",
        json!({"room": "chat:1", "event": "msg", "data": null}),
    )
    .await;
    assert_eq!(a.json["positions"]["chat:1"]["offset"], 3, "{}", a.json);
}

#[tokio::test]
async fn publish_several_rooms() {
    let api = api();
    let body = json!({"rooms": ["a", "b", "c"], "event": "e", "data": "payload", "idempotency_key": "k-1"});
    let a = post(&api, "/v1/publish", body.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    for room in ["a", "b", "c"] {
        assert_eq!(a.json["positions"][room]["offset"], 1, "{room}");
    }
    // The same key publishes once and answers the first positions.
    let again = post(&api, "/v1/publish", body.clone()).await;
    assert_eq!(again.json, a.json);
    let h = get(&api, "/v1/rooms/b/history").await;
    assert_eq!(h.json["events"].as_array().unwrap().len(), 1);
    // A new room under the same key is published (a retry after a partial
    // failure completes it); the others keep their first position.
    let mut wider = body;
    wider["rooms"] = json!(["a", "b", "c", "d"]);
    let w = post(&api, "/v1/publish", wider).await;
    assert_eq!(w.json["positions"]["d"]["offset"], 1);
    assert_eq!(w.json["positions"]["a"], a.json["positions"]["a"]);
    // Another key publishes again.
    let other = post(
        &api,
        "/v1/publish",
        json!({"room": "a", "event": "e", "data": 1, "idempotency_key": "k-2"}),
    )
    .await;
    assert_eq!(other.json["positions"]["a"]["offset"], 2);
}

#[tokio::test]
async fn concurrent_retries_with_one_key_publish_once() {
    let api = api();
    let body = json!({"room": "race", "event": "e", "data": 1, "idempotency_key": "same"});
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let api = api.clone();
            let body = body.clone();
            tokio::spawn(async move { post(&api, "/v1/publish", body).await.json })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap()["positions"]["race"]["offset"], 1);
    }
    assert_eq!(
        get(&api, "/v1/rooms/race/history").await.json["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn publish_names_a_repeated_room_once() {
    let api = api();
    let a = post(
        &api,
        "/v1/publish",
        json!({"rooms": ["a", "a"], "event": "e", "data": 1}),
    )
    .await;
    assert_eq!(
        a.json["positions"],
        json!({"a": {"offset": 1, "epoch": a.json["positions"]["a"]["epoch"]}})
    );
    assert_eq!(get(&api, "/v1/rooms/a/history").await.json["offset"], 1);
}

#[tokio::test]
async fn invalid_room_among_several_publishes_nothing() {
    let api = api();
    let a = post(
        &api,
        "/v1/publish",
        json!({"rooms": ["good:1", "bad room", "good:2"], "event": "e", "data": 1}),
    )
    .await;
    let message = expect_error(&a, 400, "bad_request");
    assert!(message.contains("bad room"), "{message}");
    for room in ["good:1", "good:2"] {
        let h = get(&api, &format!("/v1/rooms/{room}/history")).await;
        assert_eq!(h.json["offset"], 0, "{room}");
        assert_eq!(h.json["events"], json!([]), "{room}");
    }
}

#[tokio::test]
async fn publish_needs_exactly_one_of_room_and_rooms() {
    let api = api();
    let both = post(
        &api,
        "/v1/publish",
        json!({"room": "a", "rooms": ["b"], "event": "e", "data": 1}),
    )
    .await;
    assert!(expect_error(&both, 400, "bad_request").contains("not both"));
    let neither = post(&api, "/v1/publish", json!({"event": "e", "data": 1})).await;
    assert!(expect_error(&neither, 400, "bad_request").contains("room"));
    let empty = post(&api, "/v1/publish", json!({"rooms": [], "event": "e", "data": 1})).await;
    expect_error(&empty, 400, "bad_request");
    let rooms: Vec<String> = (0..101).map(|i| format!("r{i}")).collect();
    let many = post(
        &api,
        "/v1/publish",
        json!({"rooms": rooms, "event": "e", "data": 1}),
    )
    .await;
    assert!(expect_error(&many, 400, "bad_request").contains("100"));
    // 100 rooms is the most allowed, and works.
    let rooms: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    let ok = post(
        &api,
        "/v1/publish",
        json!({"rooms": rooms, "event": "e", "data": 1}),
    )
    .await;
    assert_eq!(ok.json["positions"].as_object().unwrap().len(), 100);
    // Nothing was published by the refused requests.
    assert_eq!(get(&api, "/v1/rooms/a/history").await.json["offset"], 0);
    assert_eq!(get(&api, "/v1/rooms/b/history").await.json["offset"], 0);
}

#[tokio::test]
async fn malformed_bodies_are_bad_requests() {
    let api = api();
    for (body, hint) in [
        ("{", "EOF"),
        ("", "EOF"),
        ("[1,2]", "invalid type"),
        ("{\"room\":\"a\",\"event\":\"e\",\"data\":1} trailing", "trailing"),
        (r#"{"room":5,"event":"e","data":1}"#, "invalid type"),
        (r#"{"rooms":"a","event":"e","data":1}"#, "invalid type"),
        (r#"{"room":"a","event":7,"data":1}"#, "invalid type"),
        (r#"{"room":"a","data":1}"#, "missing field `event`"),
        (r#"{"room":"a","event":"e"}"#, "missing field `data`"),
        (r#"{"room":"a","event":"","data":1}"#, "event"),
        (r#"{"room":"","event":"e","data":1}"#, "empty"),
        (
            r#"{"room":"a","event":"e","data":1,"idempotency_key":5}"#,
            "invalid type",
        ),
        (
            r#"{"room":"a","event":"e","data":1,"idempotency_key":""}"#,
            "idempotency_key",
        ),
    ] {
        let a = call(&api, Method::POST, "/v1/publish", body).await;
        let message = expect_error(&a, 400, "bad_request");
        assert!(message.contains(hint), "{body}: {message}");
    }
    let long_event = "e".repeat(201);
    let a = post(
        &api,
        "/v1/publish",
        json!({"room": "a", "event": long_event, "data": 1}),
    )
    .await;
    expect_error(&a, 400, "bad_request");
    let long_key = "k".repeat(201);
    let a = post(
        &api,
        "/v1/publish",
        json!({"room": "a", "event": "e", "data": 1, "idempotency_key": long_key}),
    )
    .await;
    expect_error(&a, 400, "bad_request");
    // Limits are inclusive.
    let a = post(
        &api,
        "/v1/publish",
        json!({"room": "a", "event": "e".repeat(200), "data": 1, "idempotency_key": "k".repeat(200)}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    // Only that last request published.
    assert_eq!(get(&api, "/v1/rooms/a/history").await.json["offset"], 1);
}

#[tokio::test]
async fn data_is_published_as_sent() {
    let api = api();
    // `1.50` and the inner spacing would not survive a parse and re-serialize.
    let body = r#"{"room":"raw","event":"e","data":{"price": 1.50, "n":[1, 2]}}"#;
    assert_eq!(
        call(&api, Method::POST, "/v1/publish", body).await.status,
        StatusCode::OK
    );
    let h = get(&api, "/v1/rooms/raw/history").await;
    let raw = String::from_utf8(h.raw.to_vec()).unwrap();
    assert!(raw.contains(r#""data":{"price": 1.50, "n":[1, 2]}"#), "{raw}");
}

#[tokio::test]
async fn oversize_body_is_too_large() {
    let api = api();
    let big = json!({"room": "a", "event": "e", "data": "x".repeat(MAX_BODY)}).to_string();
    // Without a Content-Length the streamed size is what trips the limit.
    let a = call(&api, Method::POST, "/v1/publish", &big).await;
    expect_error(&a, 413, "too_large");
    // With a Content-Length over the limit the body is never read.
    let mut req = request(
        Method::POST,
        "/v1/publish",
        r#"{"room":"a","event":"e","data":1}"#,
    );
    req.headers_mut().insert(CONTENT_LENGTH, (MAX_BODY + 1).into());
    expect_error(&send(&api, req).await, 413, "too_large");
    let a = post(
        &api,
        "/v1/broadcast",
        json!({"event": "e", "data": "x".repeat(MAX_BODY)}),
    )
    .await;
    expect_error(&a, 413, "too_large");
    assert_eq!(get(&api, "/v1/rooms/a/history").await.json["offset"], 0);
}

// ---- broadcast ----------------------------------------------------------

#[tokio::test]
async fn broadcast_publishes_to_the_broadcast_room() {
    let api = api();
    let a = post(
        &api,
        "/v1/broadcast",
        json!({"event": "maintenance", "data": {"in": 5}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["offset"], 1);
    let epoch = a.json["epoch"].as_str().unwrap().to_owned();
    let a = post(&api, "/v1/broadcast", json!({"event": "maintenance", "data": 2})).await;
    assert_eq!(a.json, json!({"offset": 2, "epoch": epoch}));

    let h = get(&api, "/v1/rooms/broadcast/history").await;
    let events = h.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["room"], "broadcast");
    assert_eq!(events[0]["event"], "maintenance");
    assert_eq!(events[0]["data"], json!({"in": 5}));

    let a = post(&api, "/v1/broadcast", json!({"event": "e"})).await;
    expect_error(&a, 400, "bad_request");
}

// ---- history ------------------------------------------------------------

#[tokio::test]
async fn history_without_since_returns_the_newest_events_oldest_first() {
    let api = api();
    publish_n(&api, "chat:h", 5).await;
    let h = get(&api, "/v1/rooms/chat:h/history").await;
    assert_eq!(h.status, StatusCode::OK);
    let events = h.json["events"].as_array().unwrap();
    let offsets: Vec<u64> = events.iter().map(|e| e["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    let e = &events[0];
    assert_eq!(
        (e["op"].as_str(), e["room"].as_str(), e["event"].as_str()),
        (Some("event"), Some("chat:h"), Some("e"))
    );
    assert_eq!(e["data"], json!({"i": 1}));
    assert!(e["ts"].as_u64().unwrap() > 0);
    assert_eq!(e["epoch"], h.json["epoch"]);
    assert_eq!(h.json["offset"], 5);
    // `recovered` is only present when `since` was given.
    assert!(h.json.get("recovered").is_none(), "{}", h.json);

    let h = get(&api, "/v1/rooms/chat:h/history?limit=2").await;
    let offsets: Vec<u64> = h.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [4, 5]);
}

#[tokio::test]
async fn history_of_an_unused_room_is_empty() {
    let h = get(&api(), "/v1/rooms/nobody:here/history").await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json["events"], json!([]));
    assert_eq!(h.json["offset"], 0);
    assert!(h.json["epoch"].as_str().is_some());
}

#[tokio::test]
async fn history_since_recovers_within_the_window() {
    let api = api();
    publish_n(&api, "chat:s", 5).await;
    let epoch = get(&api, "/v1/rooms/chat:s/history").await.json["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    let h = get(
        &api,
        &format!("/v1/rooms/chat:s/history?since_offset=2&since_epoch={epoch}"),
    )
    .await;
    assert_eq!(h.json["recovered"], true);
    let offsets: Vec<u64> = h.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4, 5]);

    // `limit` takes the first events after `since`.
    let h = get(
        &api,
        &format!("/v1/rooms/chat:s/history?since_offset=2&since_epoch={epoch}&limit=1"),
    )
    .await;
    assert_eq!(h.json["events"].as_array().unwrap().len(), 1);
    assert_eq!(h.json["events"][0]["offset"], 3);
    assert_eq!(h.json["recovered"], true);

    // Already up to date: recovered, nothing to replay.
    let h = get(
        &api,
        &format!("/v1/rooms/chat:s/history?since_offset=5&since_epoch={epoch}"),
    )
    .await;
    assert_eq!(
        (
            h.json["recovered"].as_bool(),
            h.json["events"].as_array().map(Vec::len)
        ),
        (Some(true), Some(0))
    );

    // Another epoch, or an offset from the future: not recovered, no events.
    for q in [
        "since_offset=2&since_epoch=other".to_owned(),
        format!("since_offset=9&since_epoch={epoch}"),
    ] {
        let h = get(&api, &format!("/v1/rooms/chat:s/history?{q}")).await;
        assert_eq!(h.json["recovered"], false, "{q}");
        assert_eq!(h.json["events"], json!([]), "{q}");
        assert_eq!(h.json["offset"], 5, "{q}");
    }
}

#[tokio::test]
async fn history_never_leaves_the_window() {
    let api = api();
    // `small:*` keeps 3 events.
    publish_n(&api, "small:w", 6).await;
    let h = get(&api, "/v1/rooms/small:w/history?limit=1000").await;
    let offsets: Vec<u64> = h.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [4, 5, 6]);
    let epoch = h.json["epoch"].as_str().unwrap().to_owned();
    // Offset 3 is the oldest `since` the window still covers; 2 is not.
    let h = get(
        &api,
        &format!("/v1/rooms/small:w/history?since_offset=3&since_epoch={epoch}"),
    )
    .await;
    assert_eq!(h.json["recovered"], true);
    assert_eq!(h.json["events"].as_array().unwrap().len(), 3);
    let h = get(
        &api,
        &format!("/v1/rooms/small:w/history?since_offset=2&since_epoch={epoch}"),
    )
    .await;
    assert_eq!(h.json["recovered"], false);
    assert_eq!(h.json["events"], json!([]));
}

#[tokio::test]
async fn history_rejects_bad_queries_and_rooms() {
    let api = api();
    for path in [
        "/v1/rooms/a/history?since_offset=1",
        "/v1/rooms/a/history?since_epoch=e",
        "/v1/rooms/a/history?since_offset=one&since_epoch=e",
        "/v1/rooms/a/history?limit=0",
        "/v1/rooms/a/history?limit=1001",
        "/v1/rooms/a/history?limit=abc",
        "/v1/rooms/a%20b/history",
        "/v1/rooms/a%3Ab/history",
        "/v1/rooms//history",
        "/v1/rooms/a%20b/presence",
    ] {
        expect_error(&get(&api, path).await, 400, "bad_request");
    }
    let long = format!("/v1/rooms/{}/history", "r".repeat(201));
    expect_error(&get(&api, &long).await, 400, "bad_request");
    assert_eq!(
        get(&api, "/v1/rooms/a/history?limit=1").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&api, "/v1/rooms/a/history?limit=1000").await.status,
        StatusCode::OK
    );
}

// ---- presence -----------------------------------------------------------

#[tokio::test]
async fn presence_lists_members() {
    let broker = Arc::new(MemoryBroker::new());
    let api = api_with(&[KEY], broker.clone());
    let p = get(&api, "/v1/rooms/chat:p/presence").await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(p.json, json!({"members": []}));

    let room = RoomName::new("chat:p").unwrap();
    broker.presence_join(&room, "alice", "c1").await.unwrap();
    broker.presence_join(&room, "alice", "c2").await.unwrap();
    broker.presence_join(&room, "bob", "c3").await.unwrap();
    let p = get(&api, "/v1/rooms/chat:p/presence").await;
    assert_eq!(
        p.json,
        json!({"members": [{"user": "alice", "conns": 2}, {"user": "bob", "conns": 1}]})
    );
}

// ---- auth ---------------------------------------------------------------

#[tokio::test]
async fn requests_without_credentials_are_unauthorized() {
    let api = api();
    for path in ["/v1/publish", "/v1/rooms/a/history", "/v1/nope"] {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .body(Full::new(Bytes::from_static(
                br#"{"room":"a","event":"e","data":1}"#,
            )))
            .unwrap();
        expect_error(&send(&api, req).await, 401, "unauthorized");
    }
    let req = Request::builder()
        .method(Method::GET)
        .uri("/v1/rooms/a/history")
        .header(AUTHORIZATION, format!("Basic {KEY}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    expect_error(&send(&api, req).await, 401, "unauthorized");
    // And nothing was published.
    assert_eq!(get(&api, "/v1/rooms/a/history").await.json["offset"], 0);
}

#[tokio::test]
async fn wrong_key_is_forbidden() {
    let api = api();
    let mut req = request(
        Method::POST,
        "/v1/publish",
        r#"{"room":"a","event":"e","data":1}"#,
    );
    req.headers_mut()
        .insert(AUTHORIZATION, "Bearer test-ke".parse().unwrap());
    expect_error(&send(&api, req).await, 403, "forbidden");
    assert_eq!(get(&api, "/v1/rooms/a/history").await.json["offset"], 0);
    // The other configured key works too.
    let mut req = request(Method::GET, "/v1/rooms/a/history", "");
    req.headers_mut()
        .insert(AUTHORIZATION, "Bearer other-key".parse().unwrap());
    assert_eq!(send(&api, req).await.status, StatusCode::OK);
}

#[tokio::test]
async fn no_configured_key_forbids_everything() {
    // Blank entries (e.g. from `HERALD_API_KEYS=""`) are no keys at all.
    let api = api_with(&["", "  "], Arc::new(MemoryBroker::new()));
    let a = get(&api, "/v1/rooms/a/history").await;
    assert!(expect_error(&a, 403, "forbidden").contains("no API key is configured"));
}

#[tokio::test]
async fn configured_keys_are_trimmed() {
    let api = api_with(&[" test-key "], Arc::new(MemoryBroker::new()));
    assert_eq!(get(&api, "/v1/rooms/a/history").await.status, StatusCode::OK);
}

// ---- routing ------------------------------------------------------------

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let api = api();
    for path in [
        "/v1/nope",
        "/v1/publish/",
        "/v1/rooms/a",
        "/v1/rooms/a/other",
        "/v1",
    ] {
        expect_error(&get(&api, path).await, 404, "not_found");
    }
}

#[tokio::test]
async fn wrong_method_is_method_not_allowed() {
    let api = api();
    for (method, path, allow) in [
        (Method::GET, "/v1/publish", "POST"),
        (Method::PUT, "/v1/broadcast", "POST"),
        (Method::POST, "/v1/rooms/a/history", "GET"),
        (Method::DELETE, "/v1/rooms/a/presence", "GET"),
    ] {
        let a = call(&api, method.clone(), path, r#"{"room":"a","event":"e","data":1}"#).await;
        expect_error(&a, 405, "bad_request");
        assert_eq!(a.headers.get(ALLOW).unwrap(), allow, "{method} {path}");
    }
    assert_eq!(get(&api, "/v1/rooms/a/history").await.json["offset"], 0);
}

// ---- stats --------------------------------------------------------------

#[tokio::test]
async fn stats_lists_nodes_from_their_heartbeats() {
    let broker = Arc::new(MemoryBroker::new());
    let api = api_with(&[KEY], broker.clone());
    assert_eq!(get(&api, "/v1/stats").await.json, json!({"nodes": []}));
    broker
        .heartbeat(&herald_broker::NodeInfo {
            id: "gw-1".into(),
            connections: 3,
            rooms: 2,
            started_at: 0,
            last_seen: 1_000,
        })
        .await
        .unwrap();
    let a = get(&api, "/v1/stats").await;
    assert_eq!(
        a.json,
        json!({"nodes": [{"id": "gw-1", "connections": 3, "rooms": 2,
            "started_at": "1970-01-01T00:00:00.000Z", "last_seen": "1970-01-01T00:00:01.000Z"}]})
    );
    expect_error(&post(&api, "/v1/stats", json!({})).await, 405, "bad_request");
}

// ---- broker failures ----------------------------------------------------

/// A broker whose every call fails as an unreachable Redis would.
struct DownBroker;

fn down() -> BrokerError {
    BrokerError::Unavailable("connection refused".into())
}

#[async_trait]
impl Broker for DownBroker {
    async fn publish(&self, _: PublishRequest<'_>) -> Result<Position, BrokerError> {
        Err(down())
    }
    async fn position(&self, _: &RoomName, _: Retention) -> Result<Position, BrokerError> {
        Err(down())
    }
    async fn history(
        &self,
        _: &RoomName,
        _: Retention,
        _: HistoryQuery,
    ) -> Result<HistoryRange, BrokerError> {
        Err(down())
    }
    async fn publish_transient(&self, _: &RoomName, _: Bytes, _: Option<&str>) -> Result<(), BrokerError> {
        Err(down())
    }
    async fn presence_join(&self, _: &RoomName, _: &str, _: &str) -> Result<bool, BrokerError> {
        Err(down())
    }
    async fn presence_leave(&self, _: &RoomName, _: &str, _: &str) -> Result<bool, BrokerError> {
        Err(down())
    }
    async fn presence(&self, _: &RoomName) -> Result<Vec<PresenceMember>, BrokerError> {
        Err(down())
    }
    fn attach(&self, sink: Arc<dyn FeedSink>) -> Arc<dyn Feed> {
        MemoryBroker::new().attach(sink)
    }
    async fn ping(&self) -> Result<(), BrokerError> {
        Err(down())
    }
    async fn publish_control(&self, _: &RoomName, _: Bytes) -> Result<(), BrokerError> {
        Err(down())
    }
    async fn publish_once(&self, _: PublishRequest<'_>, _: &str) -> Result<Position, BrokerError> {
        Err(down())
    }
    async fn rate_limit(
        &self,
        _: &str,
        _: herald_common::config::RateLimit,
    ) -> Result<Option<std::time::Duration>, BrokerError> {
        Err(down())
    }
    async fn request(&self, _: &RoomName, _: &[u8]) -> Result<u64, BrokerError> {
        Err(down())
    }
    async fn reply(&self, _: &str, _: u64) -> Result<(), BrokerError> {
        Err(down())
    }
    async fn heartbeat(&self, _: &herald_broker::NodeInfo) -> Result<(), BrokerError> {
        Err(down())
    }
    async fn nodes(&self) -> Result<Vec<herald_broker::NodeInfo>, BrokerError> {
        Err(down())
    }
}

#[tokio::test]
async fn broker_failure_is_unavailable() {
    let api = api_with(&[KEY], Arc::new(DownBroker));
    let a = post(&api, "/v1/publish", json!({"room": "a", "event": "e", "data": 1})).await;
    let message = expect_error(&a, 503, "unavailable");
    // The broker's detail stays in the logs.
    assert!(!message.contains("refused"), "{message}");
    expect_error(
        &post(&api, "/v1/broadcast", json!({"event": "e", "data": 1})).await,
        503,
        "unavailable",
    );
    expect_error(&get(&api, "/v1/rooms/a/history").await, 503, "unavailable");
    expect_error(&get(&api, "/v1/rooms/a/presence").await, 503, "unavailable");
    expect_error(&get(&api, "/v1/stats").await, 503, "unavailable");
    // Bad input is still a 400, decided before the broker is asked.
    expect_error(
        &get(&api, "/v1/rooms/a/history?limit=0").await,
        400,
        "bad_request",
    );
}

// ---- metrics ------------------------------------------------------------

/// Records counter increments and histogram samples by name and labels.
#[derive(Default)]
struct Recorded {
    entries: Mutex<Vec<(String, u64)>>,
}

struct Handle {
    key: String,
    recorded: Arc<Recorded>,
}

impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.recorded
            .entries
            .lock()
            .unwrap()
            .push((self.key.clone(), value));
    }
    fn absolute(&self, _: u64) {}
}

impl metrics::HistogramFn for Handle {
    fn record(&self, _: f64) {
        self.recorded.entries.lock().unwrap().push((self.key.clone(), 1));
    }
}

struct TestRecorder(Arc<Recorded>);

impl TestRecorder {
    fn handle(&self, key: &metrics::Key) -> Arc<Handle> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Handle {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            recorded: self.0.clone(),
        })
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.handle(key))
    }
}

// A current-thread runtime keeps the whole test on the thread whose local
// recorder is set.
#[tokio::test(flavor = "current_thread")]
async fn metrics_are_labelled_by_route_pattern() {
    let recorded = Arc::new(Recorded::default());
    let recorder = TestRecorder(recorded.clone());
    let _guard = metrics::set_default_local_recorder(&recorder);
    let api = api();
    post(
        &api,
        "/v1/publish",
        json!({"rooms": ["a", "b"], "event": "e", "data": 1}),
    )
    .await;
    get(&api, "/v1/rooms/chat:42/history").await;
    get(&api, "/v1/nope").await;

    let entries = recorded.entries.lock().unwrap().clone();
    let count = |key: &str| {
        entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .sum::<u64>()
    };
    assert_eq!(
        count("herald_api_requests_total{route=/v1/publish,status=200}"),
        1,
        "{entries:?}"
    );
    assert_eq!(
        count("herald_api_requests_total{route=/v1/rooms/{room}/history,status=200}"),
        1,
        "{entries:?}"
    );
    assert_eq!(
        count("herald_api_requests_total{route=unmatched,status=404}"),
        1,
        "{entries:?}"
    );
    assert_eq!(
        count("herald_api_request_duration_seconds{route=/v1/publish}"),
        1,
        "{entries:?}"
    );
    assert_eq!(count("herald_publishes_total{}"), 2, "{entries:?}");
    // No label carries a raw path.
    assert!(!entries.iter().any(|(k, _)| k.contains("chat:42")), "{entries:?}");
}

// ---- body type ----------------------------------------------------------

/// The handler future must be `Send` for hyper's executor, with hyper's own
/// body type: this fails to compile otherwise.
#[allow(dead_code)]
fn handle_accepts_hyper_incoming(api: &Api, req: Request<hyper::body::Incoming>) {
    fn assert_send<T: Send>(_: T) {}
    assert_send(api.handle(req));
}

// ---- per-key limits and CORS ---------------------------------------------

fn api_with_settings(edit: impl FnOnce(&mut ApiSettings)) -> Api {
    let mut settings = ApiSettings {
        keys: vec![KEY.to_string(), "other-key".to_string()],
        max_body_bytes: MAX_BODY,
        policies: policies(),
        store: None,
        key_limit: None,
        cors_origins: Vec::new(),
    };
    edit(&mut settings);
    Api::new(settings, Arc::new(MemoryBroker::new()))
}

#[tokio::test]
async fn api_key_over_its_limit_gets_429_with_retry_after() {
    let api = api_with_settings(|s| {
        s.key_limit = Some(herald_common::config::RateLimit {
            rate_per_s: 0.5,
            burst: 2,
        })
    });
    for _ in 0..2 {
        assert_eq!(get(&api, "/v1/stats").await.status, StatusCode::OK);
    }
    let limited = get(&api, "/v1/stats").await;
    expect_error(&limited, 429, "rate_limited");
    let retry: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another key has its own budget.
    let other = Request::builder()
        .uri("/v1/stats")
        .header(AUTHORIZATION, "Bearer other-key")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&api, other).await.status, StatusCode::OK);
}

#[tokio::test]
async fn cors_only_for_listed_origins() {
    let api = api_with_settings(|s| s.cors_origins = vec!["https://app.example".into()]);
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/publish")
        .header("origin", "https://app.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = api.handle(preflight).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let mut req = request(Method::GET, "/v1/stats", "");
    req.headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    let a = send(&api, req).await;
    assert_eq!(a.headers["access-control-allow-origin"], "https://app.example");
    let mut req = request(Method::GET, "/v1/stats", "");
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert!(
        !send(&api, req)
            .await
            .headers
            .contains_key("access-control-allow-origin")
    );
}
