//! Durable notifications: `POST /v1/users/{user}/notifications` stores one,
//! then delivers it live to `user:<user>` with its id; `GET` lists them
//! newest first with paging; `POST …/{id}/read` marks one read. Nothing is
//! delivered that was not stored first.

use bytes::Bytes;
use herald_broker::PublishRequest;
use herald_store::{Notification, NotificationQuery};
use http::{HeaderMap, Response};
use http_body_util::Full;
use hyper::body::Body;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::State;
use crate::body::read_json;
use crate::error::{ApiError, json_ok, no_content};
use crate::users::parse_user;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;
const MAX_EVENT_LEN: usize = 200;

#[derive(Deserialize)]
struct CreateBody {
    event: String,
    #[serde(default, deserialize_with = "herald_common::protocol::any_json")]
    data: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct Created<'a> {
    id: &'a str,
    offset: u64,
    epoch: &'a str,
}

/// `POST /v1/users/{user}/notifications`.
pub async fn create<B>(
    state: &State,
    user: &str,
    headers: &HeaderMap,
    body: B,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let room = parse_user(user)?;
    let body: CreateBody = read_json(headers, body, state.max_body_bytes).await?;
    if body.event.is_empty() || body.event.len() > MAX_EVENT_LEN {
        return Err(ApiError::bad_request("`event` must be 1-200 bytes"));
    }
    let data = body
        .data
        .ok_or_else(|| ApiError::bad_request("missing field `data`"))?;
    let stored = state
        .store()?
        .insert_notification(user, &body.event, data.get())
        .await?;
    let position = state
        .broker
        .publish(PublishRequest {
            room: &room,
            event: &body.event,
            data: &data,
            retention: state.policies.lookup(&room).retention,
            notification: Some(&stored.id),
        })
        .await?;
    metrics::counter!("herald_publishes_total").increment(1);
    json_ok(&Created {
        id: &stored.id,
        offset: position.offset,
        epoch: &position.epoch,
    })
}

/// Parses `?unread=&limit=&before=`.
fn parse_query(query: Option<&str>) -> Result<NotificationQuery, ApiError> {
    let mut parsed = NotificationQuery {
        unread_only: false,
        limit: DEFAULT_LIMIT,
        before: None,
    };
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "unread" => {
                parsed.unread_only = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(ApiError::bad_request("`unread` must be true or false")),
                }
            }
            "limit" => {
                parsed.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| ApiError::bad_request(format!("`limit` must be 1-{MAX_LIMIT}")))?
            }
            "before" => {
                parsed.before = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| ApiError::bad_request("`before` must be a notification id"))?,
                )
            }
            _ => {}
        }
    }
    Ok(parsed)
}

#[derive(Serialize)]
struct Listed<'a> {
    id: &'a str,
    event: &'a str,
    data: &'a RawValue,
    created_at: String,
    read_at: Option<String>,
}

/// `GET /v1/users/{user}/notifications`.
pub async fn list(state: &State, user: &str, query: Option<&str>) -> Result<Response<Full<Bytes>>, ApiError> {
    parse_user(user)?;
    let query = parse_query(query)?;
    let rows: Vec<Notification> = state.store()?.notifications(user, query).await?;
    let mut listed = Vec::with_capacity(rows.len());
    for n in &rows {
        // Stored data was valid JSON when it was accepted.
        let data: &RawValue = serde_json::from_str(&n.data)
            .map_err(|e| ApiError::new(herald_common::protocol::ErrorCode::Internal, e.to_string()))?;
        listed.push(Listed {
            id: &n.id,
            event: &n.event,
            data,
            created_at: herald_common::rfc3339_ms(n.created_at_ms),
            read_at: n.read_at_ms.map(herald_common::rfc3339_ms),
        });
    }
    #[derive(Serialize)]
    struct Answer<'a> {
        notifications: Vec<Listed<'a>>,
    }
    json_ok(&Answer {
        notifications: listed,
    })
}

/// `POST /v1/users/{user}/notifications/{id}/read`.
pub async fn mark_read(state: &State, user: &str, id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    parse_user(user)?;
    let not_found = || {
        ApiError::new(
            herald_common::protocol::ErrorCode::NotFound,
            format!(
                "no notification {:?} for this user",
                id.chars().take(40).collect::<String>()
            ),
        )
    };
    // Ids are opaque to clients; one that is not ours is simply unknown.
    let id: i64 = id.parse().map_err(|_| not_found())?;
    if state.store()?.mark_read(user, id).await? {
        Ok(no_content())
    } else {
        Err(not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_defaults_and_bounds() {
        let q = parse_query(None).unwrap();
        assert_eq!((q.unread_only, q.limit, q.before), (false, 50, None));
        let q = parse_query(Some("unread=true&limit=5&before=9")).unwrap();
        assert_eq!((q.unread_only, q.limit, q.before), (true, 5, Some(9)));
        for bad in ["limit=0", "limit=501", "limit=x", "unread=yes", "before=abc"] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
