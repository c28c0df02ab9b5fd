//! Access control and the server API of issue 4 on `herald standalone`
//! (embedded SQLite store), over real sockets (PROTOCOL.md §1.4, §2):
//! grants and the `join = "grant"` policy (new joins within 1 s, revocation
//! reaching live connections within 1 s), durable notifications, removing
//! people (disconnect with 4010, unsubscribe), and the transactional outbox
//! relayed from rows the test commits to the server's own SQLite file.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use crate::harness::*;

const ROOMS: &str = r#"
[[rooms]]
pattern = "vip:*"
join = "grant"

[[rooms]]
pattern = "staff:*"
join = "grant"

[[rooms]]
pattern = "open:*"
join = "anyone"

[[rooms]]
pattern = "ob:*"
join = "anyone"
history_size = 1000
"#;

/// What the contract allows for a grant or a revocation to take effect.
const WITHIN: Duration = Duration::from_secs(1);
/// How long "nothing arrives" is watched.
const QUIET: Duration = Duration::from_millis(400);

/// `PUT`/`DELETE /v1/grants`; asserts 204 with an empty body.
async fn grant(h: &Herald, method: &str, subject: &str, pattern: &str) {
    let (status, body) = h
        .api_call(
            method,
            "/v1/grants",
            Some(json!({"subject": subject, "pattern": pattern})),
        )
        .await;
    assert_eq!(status, 204, "{method} grant {subject} {pattern}: {body}");
    assert_eq!(body, Value::Null, "204 with a body: {body}");
}

/// Joins `room` again and again (each attempt answered `forbidden`) until
/// it is `joined`; panics after `limit`. Returns the `joined`.
async fn join_within(c: &mut Client, first_id: u64, room: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    let mut id = first_id;
    loop {
        let reply = c.try_join(id, room).await;
        if reply["op"] == "joined" {
            assert_eq!(
                (&reply["id"], &reply["room"]),
                (&json!(id), &json!(room)),
                "{reply}"
            );
            return reply;
        }
        assert_error(&reply, "forbidden");
        assert_eq!(reply["id"], id, "{reply}");
        if Instant::now() >= deadline {
            panic!("{}: join {room} still forbidden after {limit:?}", c.name);
        }
        id += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a join of `room` is answered `forbidden` (and does not join).
async fn assert_forbidden(c: &mut Client, id: u64, room: &str) {
    let reply = c.try_join(id, room).await;
    assert_error(&reply, "forbidden");
    assert_eq!(reply["id"], id, "{}: {reply}", c.name);
}

/// Reads `c` until the `left` of `room`, which must come within `limit`;
/// events of other rooms are skipped, anything else is a failure.
async fn expect_left(c: &mut Client, room: &str, reason: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match c.next_incoming(left).await {
            Some(Incoming::Text(text)) => serde_json::from_str::<Value>(&text).unwrap(),
            None => panic!("{}: no `left` of {room} within {limit:?}", c.name),
            Some(other) => panic!("{}: waiting for `left` of {room}: {}", c.name, short(&other)),
        };
        if msg["op"] == "event" && msg["room"] != room {
            continue;
        }
        assert_eq!(
            msg,
            json!({"op": "left", "room": room, "reason": reason}),
            "{}: expected left {room} ({reason})",
            c.name
        );
        return;
    }
}

// ---------------------------------------------------------------------------
// Grants
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_admit_users_and_roles_to_grant_rooms() {
    let h = Herald::start(ROOMS).await;
    let mut alice = h.connect_hello(&h.user_token("alice")).await;
    alice.name = "alice".into();
    let mut bob = h.connect_hello(&h.user_token("bob")).await;
    bob.name = "bob".into();

    // Without a claim or a grant, a grant room is closed (and the refusal
    // is now in the gateway's cache: the grant must still win within 1 s).
    assert_forbidden(&mut alice, 1, "vip:1").await;
    assert_forbidden(&mut bob, 1, "vip:1").await;

    grant(&h, "PUT", "user:alice", "vip:*").await;
    let granted = Instant::now();
    let joined = join_within(&mut alice, 10, "vip:1", WITHIN).await;
    assert!(
        granted.elapsed() <= WITHIN,
        "grant took {:?} to take effect",
        granted.elapsed()
    );
    assert_eq!(joined["offset"], 0, "{joined}");
    // The pattern covers every `vip:` room; granting twice is no error.
    alice.join(100, "vip:2").await;
    grant(&h, "PUT", "user:alice", "vip:*").await;
    // A grant is per subject: bob, and rooms outside the pattern, stay closed.
    assert_forbidden(&mut bob, 2, "vip:1").await;
    assert_forbidden(&mut alice, 101, "staff:1").await;

    // The joined member receives the room's events.
    let pos = h.publish("vip:1", "hello", json!({"n": 1})).await;
    let event = alice.next_event("vip:1", WAIT).await;
    assert_eq!(
        (&event["data"], &event["offset"]),
        (&json!({"n": 1}), &pos["offset"]),
        "{event}"
    );

    // A role grant admits users holding the role, and only them.
    let mut staff = h
        .connect_hello(&h.token("carol", &["STAFF"], &[], &[], 3600))
        .await;
    staff.name = "carol (STAFF)".into();
    let mut other = h
        .connect_hello(&h.token("dave", &["OTHER"], &[], &[], 3600))
        .await;
    other.name = "dave (OTHER)".into();
    assert_forbidden(&mut staff, 1, "staff:1").await;
    grant(&h, "PUT", "role:STAFF", "staff:*").await;
    let granted = Instant::now();
    join_within(&mut staff, 10, "staff:1", WITHIN).await;
    assert!(
        granted.elapsed() <= WITHIN,
        "role grant took {:?}",
        granted.elapsed()
    );
    assert_forbidden(&mut other, 1, "staff:1").await;
    assert_forbidden(&mut alice, 102, "staff:1").await;
    // A user's grant is not the role's: carol is still kept out of vip rooms.
    assert_forbidden(&mut staff, 20, "vip:1").await;

    // The token's `rooms` claim still admits without any grant.
    let mut claimed = h
        .connect_hello(&h.token("erin", &[], &["staff:7"], &[], 3600))
        .await;
    claimed.join(1, "staff:7").await;
    assert_forbidden(&mut claimed, 2, "staff:8").await;
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_grant_removes_live_connections() {
    let h = Herald::start(ROOMS).await;
    grant(&h, "PUT", "user:alice", "vip:*").await;
    grant(&h, "PUT", "user:alice", "vip:keep").await;
    grant(&h, "PUT", "user:bob", "vip:*").await;

    // alice by grant in vip:1, vip:2 and vip:keep; alice again on a second
    // connection whose token claims vip:1; bob by his own grant.
    let mut granted = h.connect_hello(&h.user_token("alice")).await;
    granted.name = "alice (grant)".into();
    join_within(&mut granted, 1, "vip:1", WITHIN).await;
    granted.join(100, "vip:2").await;
    granted.join(101, "vip:keep").await;
    let mut claimed = h
        .connect_hello(&h.token("alice", &[], &["vip:1"], &[], 3600))
        .await;
    claimed.name = "alice (claim)".into();
    claimed.join(1, "vip:1").await;
    let mut bob = h.connect_hello(&h.user_token("bob")).await;
    bob.name = "bob".into();
    join_within(&mut bob, 1, "vip:1", WITHIN).await;

    let start = Instant::now();
    grant(&h, "DELETE", "user:alice", "vip:*").await;
    // Both rooms that only `vip:*` allowed are left, each within 1 s of
    // the request; vip:keep (its own grant) is kept.
    let mut left = Vec::new();
    for _ in 0..2 {
        let msg = granted.next_json(WITHIN.saturating_sub(start.elapsed())).await;
        assert_eq!(
            (&msg["op"], &msg["reason"]),
            (&json!("left"), &json!("revoked")),
            "{msg}"
        );
        assert!(msg.get("id").is_none(), "a revocation answers no request: {msg}");
        left.push(msg["room"].as_str().unwrap().to_string());
    }
    left.sort();
    assert_eq!(left, ["vip:1", "vip:2"]);
    assert!(start.elapsed() <= WITHIN, "revocation took {:?}", start.elapsed());

    // Deleting an absent grant is fine, and revokes nothing more.
    grant(&h, "DELETE", "user:alice", "vip:*").await;
    grant(&h, "DELETE", "user:nobody", "vip:*").await;

    // No further events of the revoked rooms reach the revoked connection;
    // the claim-holding connection and bob stay members.
    for n in 1..=3 {
        h.publish("vip:1", "after", json!({"n": n})).await;
    }
    h.publish("vip:2", "after", json!({"n": 0})).await;
    for c in [&mut claimed, &mut bob] {
        for n in 1..=3 {
            let event = c.next_event("vip:1", WAIT).await;
            assert_eq!(event["data"], json!({"n": n}), "{}: {event}", c.name);
        }
    }
    h.publish("vip:keep", "kept", json!(null)).await;
    let event = granted.next_json(WAIT).await;
    assert_eq!(
        (&event["op"], &event["room"]),
        (&json!("event"), &json!("vip:keep")),
        "alice (grant): expected only the vip:keep event, got {event}"
    );
    granted.expect_no_message(QUIET).await;
    claimed.expect_no_message(QUIET).await;
    // The connection itself stays open; the room is closed to new joins.
    granted.assert_alive(200).await;
    assert_forbidden(&mut granted, 201, "vip:1").await;

    // Revoking a role grant reaches the role's live connections.
    grant(&h, "PUT", "role:STAFF", "staff:*").await;
    let mut carol = h
        .connect_hello(&h.token("carol", &["STAFF"], &[], &[], 3600))
        .await;
    carol.name = "carol (STAFF)".into();
    join_within(&mut carol, 1, "staff:1", WITHIN).await;
    let start = Instant::now();
    grant(&h, "DELETE", "role:STAFF", "staff:*").await;
    expect_left(
        &mut carol,
        "staff:1",
        "revoked",
        WITHIN.saturating_sub(start.elapsed()),
    )
    .await;
    h.publish("staff:1", "after", json!(1)).await;
    carol.expect_no_message(QUIET).await;
    carol.assert_alive(100).await;
    // bob, untouched by both revocations, still gets vip:1.
    h.publish("vip:1", "still", json!(4)).await;
    assert_eq!(bob.next_event("vip:1", WAIT).await["data"], json!(4));
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grants_are_rejected() {
    let h = Herald::start(ROOMS).await;
    for method in ["PUT", "DELETE"] {
        for body in [
            json!({"subject": "alice", "pattern": "vip:*"}),
            json!({"subject": "group:x", "pattern": "vip:*"}),
            json!({"subject": "user:", "pattern": "vip:*"}),
            json!({"subject": "role:", "pattern": "vip:*"}),
            json!({"subject": "user:a b", "pattern": "vip:*"}),
            json!({"subject": "user:alice", "pattern": ""}),
            json!({"subject": "user:alice", "pattern": "vip room"}),
            json!({"subject": "user:alice", "pattern": "vip:*:x*"}),
            json!({"subject": "user:alice"}),
            json!({"pattern": "vip:*"}),
            json!({"subject": 7, "pattern": "vip:*"}),
            json!("user:alice vip:*"),
        ] {
            let (status, answer) = h.api_call(method, "/v1/grants", Some(body.clone())).await;
            assert_eq!(status, 400, "{method} {body}: {answer}");
            assert_api_error(status, &answer, 400, "bad_request");
        }
        let resp = h
            .request(method, "/v1/grants", Some(b"{not json".to_vec()), Some(API_KEY))
            .await;
        assert_api_error(resp.status, &resp.json(), 400, "bad_request");
        let (status, answer) = h
            .http(
                method,
                "/v1/grants",
                Some(json!({"subject": "user:alice", "pattern": "vip:*"})),
                None,
            )
            .await;
        assert_api_error(status, &answer, 401, "unauthorized");
    }
    // Nothing was stored by the rejected calls: alice is still kept out.
    let mut alice = h.connect_hello(&h.user_token("alice")).await;
    assert_forbidden(&mut alice, 1, "vip:1").await;
    h.assert_no_panic().await;
}

/// A connection must not escape the server API by leaving the rooms its
/// commands travel on (`user:<sub>`, `role:<r>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_own_rooms_does_not_escape_revocation_or_disconnect() {
    let h = Herald::start(ROOMS).await;
    grant(&h, "PUT", "role:STAFF", "staff:*").await;
    let mut c = h
        .connect_hello(&h.token("carol", &["STAFF"], &[], &[], 3600))
        .await;
    c.name = "carol (STAFF)".into();
    join_within(&mut c, 1, "staff:1", WITHIN).await;
    // Automatic rooms cannot be left, so the connection stays within reach.
    for (id, room) in [(50, "role:STAFF"), (51, "user:carol"), (52, "broadcast")] {
        let reply = c.request(json!({"op": "leave", "id": id, "room": room})).await;
        assert_eq!(reply["op"], "error", "{reply}");
        assert_eq!(reply["code"], "forbidden", "{reply}");
        assert_eq!(reply["id"], id, "{reply}");
    }
    let start = Instant::now();
    grant(&h, "DELETE", "role:STAFF", "staff:*").await;
    expect_left(
        &mut c,
        "staff:1",
        "revoked",
        WITHIN.saturating_sub(start.elapsed()),
    )
    .await;
    h.publish("staff:1", "after", json!(1)).await;
    c.expect_no_message(QUIET).await;
    let (status, body) = h.api_call("POST", "/v1/users/carol/disconnect", None).await;
    assert_eq!((status, &body), (200, &json!({"connections": 1})), "{body}");
    assert_eq!(c.expect_close(WAIT).await.0, 4010);
}

// ---------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------

/// Milliseconds since the Unix epoch of an RFC 3339 date-time
/// (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`); `None` if malformed.
fn rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = text.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &text[start..i.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10_i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match &text[i..] {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && zone.as_bytes()[3] == b':' => {
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (digits(i + 1, 2)? * 60 + digits(i + 4, 2)?)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
}

#[test]
fn rfc3339_parser_knows_its_dates() {
    assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(rfc3339_ms("2000-03-01T00:00:00.5Z"), Some(951_868_800_500));
    assert_eq!(rfc3339_ms("2000-03-01T01:00:00.500+01:00"), Some(951_868_800_500));
    for bad in [
        "2000-03-01 00:00:00Z",
        "2000-13-01T00:00:00Z",
        "2000-03-01T00:00:00",
        "x",
    ] {
        assert_eq!(rfc3339_ms(bad), None, "{bad}");
    }
}

/// `GET /v1/users/{user}/notifications{query}`: the list, after checking
/// the shape of every entry.
async fn list_notifications(h: &Herald, user: &str, query: &str) -> Vec<Value> {
    let (status, body) = h
        .api_call("GET", &format!("/v1/users/{user}/notifications{query}"), None)
        .await;
    assert_eq!(status, 200, "GET notifications {query}: {body}");
    let list = body["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("no notifications array: {body}"))
        .clone();
    for n in &list {
        assert!(n["id"].is_string(), "ids are strings: {n}");
        assert!(n["event"].is_string(), "{n}");
        assert!(n.get("data").is_some(), "{n}");
        let created = n["created_at"].as_str().and_then(rfc3339_ms);
        let created = created.unwrap_or_else(|| panic!("created_at is not RFC 3339: {n}"));
        assert!((created - now_ms()).abs() < 120_000, "created_at is not now: {n}");
        match &n["read_at"] {
            Value::Null => {}
            Value::String(t) => assert!(rfc3339_ms(t).is_some(), "read_at is not RFC 3339: {n}"),
            _ => panic!("read_at must be null or a time: {n}"),
        }
    }
    list
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_stored_delivered_listed_and_read() {
    let h = Herald::start(ROOMS).await;
    let mut alice = h.connect_hello(&h.user_token("alice")).await;
    alice.name = "alice".into();
    let mut bob = h.connect_hello(&h.user_token("bob")).await;
    bob.name = "bob".into();

    // Four notifications for alice: each stored, answered and delivered live.
    let mut created = Vec::new(); // oldest first
    for n in 1..=4 {
        let (status, body) = h
            .api_call(
                "POST",
                "/v1/users/alice/notifications",
                Some(json!({"event": "invite", "data": {"n": n}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let id = body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("id must be a string: {body}"));
        assert!(body["offset"].is_u64() && body["epoch"].is_string(), "{body}");
        let event = alice.next_event("user:alice", WAIT).await;
        assert_eq!(event["notification"], id, "{event}");
        assert_eq!(
            (&event["event"], &event["data"]),
            (&json!("invite"), &json!({"n": n})),
            "{event}"
        );
        assert_eq!(
            (&event["offset"], &event["epoch"]),
            (&body["offset"], &body["epoch"]),
            "the event is where the answer says: {event} vs {body}"
        );
        created.push(id.to_string());
    }
    let distinct: std::collections::HashSet<&String> = created.iter().collect();
    assert_eq!(distinct.len(), 4, "ids are unique: {created:?}");
    // One for bob, not delivered to alice.
    let (status, body) = h
        .api_call(
            "POST",
            "/v1/users/bob/notifications",
            Some(json!({"event": "note", "data": null})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let bobs = body["id"].as_str().unwrap().to_string();
    let event = bob.next_event("user:bob", WAIT).await;
    assert_eq!(
        (&event["notification"], &event["data"]),
        (&json!(bobs), &Value::Null)
    );
    alice.expect_no_message(QUIET).await;

    // Newest first, all unread, what was delivered is what is stored.
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    let list = list_notifications(&h, "alice", "").await;
    assert_eq!(ids(&list), newest_first);
    for (n, entry) in list.iter().enumerate() {
        assert_eq!(entry["data"], json!({"n": 4 - n}), "{entry}");
        assert_eq!(
            (&entry["event"], &entry["read_at"]),
            (&json!("invite"), &Value::Null)
        );
    }
    let times: Vec<i64> = list
        .iter()
        .map(|n| rfc3339_ms(n["created_at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    assert_eq!(ids(&list_notifications(&h, "bob", "").await), vec![bobs.clone()]);
    assert!(list_notifications(&h, "carol", "").await.is_empty());

    // Marking read: 204, again 204; read_at is set and kept.
    let path = |user: &str, id: &str| format!("/v1/users/{user}/notifications/{id}/read");
    let (status, body) = h.api_call("POST", &path("alice", &created[1]), None).await;
    assert_eq!((status, &body), (204, &Value::Null));
    let read_at = list_notifications(&h, "alice", "").await[2]["read_at"].clone();
    assert!(read_at.is_string(), "read_at after reading: {read_at}");
    let (status, _) = h.api_call("POST", &path("alice", &created[1]), None).await;
    assert_eq!(status, 204, "reading twice");
    let list = list_notifications(&h, "alice", "").await;
    assert_eq!(list[2]["read_at"], read_at, "the first read time is kept");
    assert!(list.iter().filter(|n| n["read_at"].is_null()).count() == 3);

    // Unknown ids, and another user's id, are 404.
    for id in ["999999999", "abc", "-1"] {
        let (status, body) = h.api_call("POST", &path("alice", id), None).await;
        assert_api_error(status, &body, 404, "not_found");
    }
    let (status, body) = h.api_call("POST", &path("alice", &bobs), None).await;
    assert_api_error(status, &body, 404, "not_found");
    let (status, body) = h.api_call("POST", &path("bob", &created[0]), None).await;
    assert_api_error(status, &body, 404, "not_found");
    assert!(
        list_notifications(&h, "bob", "").await[0]["read_at"].is_null(),
        "bob's stays unread"
    );

    // Filtering and paging.
    let unread = list_notifications(&h, "alice", "?unread=true").await;
    let expected: Vec<String> = [3, 2, 0].iter().map(|&i| created[i].clone()).collect();
    assert_eq!(ids(&unread), expected);
    assert!(unread.iter().all(|n| n["read_at"].is_null()));
    let page = list_notifications(&h, "alice", "?limit=2").await;
    assert_eq!(ids(&page), newest_first[..2]);
    let page = list_notifications(&h, "alice", &format!("?limit=2&before={}", newest_first[1])).await;
    assert_eq!(ids(&page), newest_first[2..]);
    let page = list_notifications(&h, "alice", &format!("?before={}", created[0])).await;
    assert!(page.is_empty(), "nothing is older than the first: {page:?}");
    let page = list_notifications(
        &h,
        "alice",
        &format!("?unread=true&limit=1&before={}", created[2]),
    )
    .await;
    assert_eq!(ids(&page), [created[0].clone()], "unread, before the third");
    // Page through one at a time: every notification once, newest first.
    let mut paged = Vec::new();
    let mut query = "?limit=1".to_string();
    loop {
        let page = list_notifications(&h, "alice", &query).await;
        let Some(last) = page.last() else { break };
        assert_eq!(page.len(), 1);
        paged.push(last["id"].as_str().unwrap().to_string());
        query = format!("?limit=1&before={}", paged.last().unwrap());
        assert!(paged.len() <= 4, "paging does not end: {paged:?}");
    }
    assert_eq!(paged, newest_first);

    // Bad input.
    for query in ["?limit=0", "?limit=abc", "?limit=-1", "?limit="] {
        let (status, body) = h
            .api_call("GET", &format!("/v1/users/alice/notifications{query}"), None)
            .await;
        assert_api_error(status, &body, 400, "bad_request");
    }
    for body in [
        json!({"event": "x"}),
        json!({"data": 1}),
        json!({"event": "", "data": 1}),
        json!({"event": 5, "data": 1}),
    ] {
        let (status, answer) = h
            .api_call("POST", "/v1/users/alice/notifications", Some(body))
            .await;
        assert_api_error(status, &answer, 400, "bad_request");
    }
    let (status, body) = h
        .api_call(
            "POST",
            "/v1/users/bad!user/notifications",
            Some(json!({"event": "x", "data": 1})),
        )
        .await;
    assert_api_error(status, &body, 400, "bad_request");
    // Nothing rejected was stored or delivered.
    assert_eq!(list_notifications(&h, "alice", "").await.len(), 4);
    alice.expect_no_message(QUIET).await;
    h.assert_no_panic().await;
}

// ---------------------------------------------------------------------------
// Removing people
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_every_connection_of_the_user() {
    let h = Herald::start(ROOMS).await;
    let mut a1 = h.connect_hello(&h.user_token("alice")).await;
    a1.name = "alice-1".into();
    let mut a2 = h.connect_with_header(&h.user_token("alice")).await;
    a2.name = "alice-2".into();
    a2.join(1, "open:1").await;
    let mut bob = h.connect_hello(&h.user_token("bob")).await;
    bob.name = "bob".into();
    bob.join(1, "open:1").await;

    let (status, body) = h
        .api_call(
            "POST",
            "/v1/users/alice/disconnect",
            Some(json!({"reason": "banned"})),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"connections": 2})), "{body}");
    for c in [&mut a1, &mut a2] {
        let (code, _) = c.expect_close(WAIT).await;
        assert_eq!(code, 4010, "{}: close code", c.name);
    }
    // bob is untouched: alive, still a member.
    bob.assert_alive(10).await;
    h.publish("open:1", "after", json!(1)).await;
    assert_eq!(bob.next_event("open:1", WAIT).await["data"], json!(1));

    // Nobody left to disconnect: 0 (with an empty body too).
    eventually(WAIT, "alice's connections to be gone", || async {
        let (status, body) = h.api_call("POST", "/v1/users/alice/disconnect", None).await;
        assert_eq!(status, 200, "{body}");
        (body == json!({"connections": 0})).then_some(())
    })
    .await;
    let (status, body) = h.api_call("POST", "/v1/users/nobody/disconnect", None).await;
    assert_eq!((status, &body), (200, &json!({"connections": 0})), "{body}");
    let resp = h
        .request(
            "POST",
            "/v1/users/bob/disconnect",
            Some(b"[1,".to_vec()),
            Some(API_KEY),
        )
        .await;
    assert_api_error(resp.status, &resp.json(), 400, "bad_request");
    let (status, body) = h.api_call("POST", "/v1/users/bad!user/disconnect", None).await;
    assert_api_error(status, &body, 400, "bad_request");
    bob.assert_alive(11).await;

    // Disconnecting is not a ban: alice can come back.
    let mut again = h.connect_hello(&h.user_token("alice")).await;
    again.join(1, "open:1").await;
    let (status, body) = h.api_call("POST", "/v1/users/alice/disconnect", None).await;
    assert_eq!((status, &body), (200, &json!({"connections": 1})), "{body}");
    assert_eq!(again.expect_close(WAIT).await.0, 4010);
    bob.assert_alive(12).await;
    h.assert_no_panic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_removes_the_users_connections_from_the_room() {
    let h = Herald::start(ROOMS).await;
    let token = h.user_token("alice");
    let mut a1 = h.connect_hello(&token).await;
    a1.name = "alice-1 (open:1)".into();
    a1.join(1, "open:1").await;
    a1.join(2, "open:2").await;
    let mut a2 = h.connect_hello(&token).await;
    a2.name = "alice-2 (open:2 only)".into();
    a2.join(1, "open:2").await;
    let mut a3 = h.connect_hello(&token).await;
    a3.name = "alice-3 (open:1)".into();
    a3.join(1, "open:1").await;
    let mut bob = h.connect_hello(&h.user_token("bob")).await;
    bob.name = "bob".into();
    bob.join(1, "open:1").await;

    let (status, body) = h
        .api_call(
            "POST",
            "/v1/rooms/open:1/unsubscribe",
            Some(json!({"user": "alice"})),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"connections": 2})), "{body}");
    for c in [&mut a1, &mut a3] {
        expect_left(c, "open:1", "unsubscribed", WAIT).await;
    }

    // No further events of open:1 reach them; their other rooms and bob
    // are untouched.
    h.publish("open:1", "after", json!(1)).await;
    h.publish("open:2", "other", json!(2)).await;
    assert_eq!(bob.next_event("open:1", WAIT).await["data"], json!(1));
    for c in [&mut a1, &mut a2] {
        let event = c.next_json(WAIT).await;
        assert_eq!(
            (&event["op"], &event["room"], &event["data"]),
            (&json!("event"), &json!("open:2"), &json!(2)),
            "{}: {event}",
            c.name
        );
    }
    for c in [&mut a1, &mut a2, &mut a3, &mut bob] {
        c.expect_no_message(QUIET).await;
    }

    // Again: nobody of alice is in the room any more. Unknown users: 0.
    for user in ["alice", "nobody"] {
        let (status, body) = h
            .api_call(
                "POST",
                "/v1/rooms/open:1/unsubscribe",
                Some(json!({"user": user})),
            )
            .await;
        assert_eq!(
            (status, &body),
            (200, &json!({"connections": 0})),
            "{user}: {body}"
        );
    }
    // Bad input.
    for (room, body) in [
        ("open:1", json!({})),
        ("open:1", json!({"user": 5})),
        ("open:1", json!({"user": ""})),
        ("open:1", json!({"user": "a b"})),
        ("bad!room", json!({"user": "alice"})),
    ] {
        let (status, answer) = h
            .api_call("POST", &format!("/v1/rooms/{room}/unsubscribe"), Some(body))
            .await;
        assert_api_error(status, &answer, 400, "bad_request");
    }

    // Unsubscribing is not a ban: a1 joins again and receives events.
    a1.join(3, "open:1").await;
    h.publish("open:1", "back", json!(3)).await;
    assert_eq!(a1.next_event("open:1", WAIT).await["data"], json!(3));
    a3.expect_no_message(QUIET).await;
    h.assert_no_panic().await;
}

// ---------------------------------------------------------------------------
// The outbox on SQLite
// ---------------------------------------------------------------------------

/// A connection of the test's own to the standalone's SQLite file, as an
/// application sharing the database would open it.
async fn open_sqlite(h: &Herald) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(h.data_dir().join("herald.db"))
        .busy_timeout(Duration::from_secs(5));
    bounded(
        WAIT,
        "open the SQLite store",
        SqliteConnection::connect_with(&options),
    )
    .await
    .expect("open herald.db")
}

/// Inserts one outbox row in `tx`; returns its id.
async fn insert_row(tx: &mut SqliteConnection, room: &str, data: &Value, key: Option<&str>) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO herald_outbox (room, event, data, idempotency_key) VALUES ($1, 'row', $2, $3) \
         RETURNING id",
    )
    .bind(room)
    .bind(data.to_string())
    .bind(key)
    .fetch_one(&mut *tx)
    .await
    .expect("insert an outbox row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_committed_to_sqlite_are_published_in_order() {
    let h = Herald::start(ROOMS).await;
    let rooms = ["ob:a", "ob:b"];
    let mut c = h.connect_hello(&h.user_token("alice")).await;
    for (i, room) in rooms.iter().enumerate() {
        let joined = c.join(i as u64 + 1, room).await;
        assert_eq!(joined["offset"], 0);
    }
    let mut db = open_sqlite(&h).await;

    // Three transactions: committed, rolled back, committed (with
    // idempotency keys). Per room, the expected payloads in id order.
    let mut expected: Vec<Vec<Value>> = vec![Vec::new(); rooms.len()];
    let mut committed_ids = Vec::new();
    let mut seq = 0;
    let mut commit_time = Instant::now();
    for (t, commit) in [(0, true), (1, false), (2, true)] {
        let mut tx = sqlx::Connection::begin(&mut db).await.unwrap();
        let mut ids = Vec::new();
        for k in 0..10 {
            let room = k % 2;
            let data = json!({"tx": t, "seq": seq, "committed": commit});
            let key = (t == 2).then(|| format!("sqlite-key-{seq}"));
            ids.push(insert_row(&mut tx, rooms[room], &data, key.as_deref()).await);
            if commit {
                expected[room].push(data);
            }
            seq += 1;
        }
        if commit {
            tx.commit().await.unwrap();
            committed_ids.extend(ids);
            commit_time = Instant::now();
        } else {
            tx.rollback().await.unwrap();
        }
    }

    // Every committed row arrives once, in id order per room, offsets 1…n.
    let mut got: Vec<Vec<Value>> = vec![Vec::new(); rooms.len()];
    while got.iter().map(Vec::len).sum::<usize>() < 20 {
        // SQLite has no LISTEN: the relay's 1 s poll is the path.
        let left = (commit_time + Duration::from_millis(1500)).saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("outbox rows not all delivered 1.5 s after the commit: got {got:?}");
        }
        let msg = c.next_op("event", left).await;
        let r = rooms
            .iter()
            .position(|r| msg["room"] == *r)
            .unwrap_or_else(|| panic!("{msg}"));
        assert_eq!(msg["event"], "row", "{msg}");
        assert_eq!(offset_of(&msg), got[r].len() as u64 + 1, "offsets 1…n: {msg}");
        got[r].push(msg["data"].clone());
    }
    assert_eq!(got, expected, "per room: every committed row once, in id order");
    let delay = commit_time.elapsed();
    // The relay polls SQLite every second: nothing more comes after a
    // further poll (no duplicate, nothing rolled back).
    c.expect_no_message(Duration::from_millis(1500)).await;

    let marked: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, published_at FROM herald_outbox ORDER BY id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let listed: Vec<i64> = marked.iter().map(|(id, _)| *id).collect();
    assert_eq!(listed, committed_ids, "the rolled-back rows were never stored");
    for (id, published_at) in &marked {
        let at = published_at
            .as_deref()
            .unwrap_or_else(|| panic!("row {id} not marked published"));
        assert!(rfc3339_ms(at).is_some(), "row {id}: published_at {at:?}");
    }

    // An invalid row is rejected (and marked), not a wall for later rows.
    let mut tx = sqlx::Connection::begin(&mut db).await.unwrap();
    insert_row(&mut tx, "bad room!", &json!({"bad": true}), None).await;
    insert_row(&mut tx, "ob:a", &json!({"after": "bad"}), None).await;
    tx.commit().await.unwrap();
    let msg = c.next_op("event", Duration::from_millis(1500)).await;
    assert_eq!(
        (&msg["room"], &msg["data"], offset_of(&msg)),
        (&json!("ob:a"), &json!({"after": "bad"}), 11),
        "{msg}"
    );
    // The relay marks its rows when its pass commits, just after publishing.
    let deadline = Instant::now() + WAIT;
    loop {
        let unmarked: i64 =
            sqlx::query_scalar("SELECT count(*) FROM herald_outbox WHERE published_at IS NULL")
                .fetch_one(&mut db)
                .await
                .unwrap();
        if unmarked == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unmarked} rows still unmarked (the invalid one is done with too)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, metrics) = h.get_text("/metrics").await;
    assert_eq!(
        metric_value(&metrics, "herald_outbox_rejected_total"),
        Some(1.0),
        "{metrics}"
    );
    eprintln!("outbox (SQLite): 20 rows delivered {delay:?} after the last commit");
    db.close().await.unwrap();
    h.assert_no_panic().await;
}
