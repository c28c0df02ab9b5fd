//! `POST /v1/publish` and `POST /v1/broadcast` (PROTOCOL.md §2).
//!
//! A publish names one room or a list of rooms. Every part of the request —
//! event name, data, idempotency key, every room name — is validated before
//! the first room is published, so an invalid request publishes nothing.
//! Each room is published with its own policy's retention, and `data` is
//! kept as the raw JSON text it arrived as: it is embedded in the event
//! frame without being parsed into a value and serialized again.

use std::collections::{BTreeMap, HashSet};
use std::error::Error;

use bytes::Bytes;
use herald_broker::PublishRequest;
use herald_common::protocol::Position;
use herald_common::rooms::RoomName;
use http::{HeaderMap, Response};
use http_body_util::Full;
use hyper::body::Body;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::State;
use crate::body::read_json;
use crate::error::{ApiError, json_ok};
use crate::rooms::parse_room;

/// Longest event name, in bytes.
pub const MAX_EVENT_LEN: usize = 200;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;
/// Most rooms one publish may name.
pub const MAX_ROOMS: usize = 100;

/// The body of `POST /v1/publish`. Unknown fields are ignored, as on the
/// WebSocket, so that clients written against a newer API keep working.
#[derive(Deserialize)]
struct PublishBody {
    room: Option<String>,
    rooms: Option<Vec<String>>,
    event: String,
    /// Any JSON value, `null` included; only an absent field is refused.
    #[serde(default, deserialize_with = "herald_common::protocol::any_json")]
    data: Option<Box<RawValue>>,
    idempotency_key: Option<String>,
}

/// The body of `POST /v1/broadcast`.
#[derive(Deserialize)]
struct BroadcastBody {
    event: String,
    #[serde(default, deserialize_with = "herald_common::protocol::any_json")]
    data: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct PublishAnswer<'a> {
    positions: BTreeMap<&'a str, Position>,
}

fn check_event(event: &str) -> Result<(), ApiError> {
    if event.is_empty() || event.len() > MAX_EVENT_LEN {
        return Err(ApiError::bad_request(format!(
            "`event` must be 1 to {MAX_EVENT_LEN} bytes long"
        )));
    }
    Ok(())
}

fn require_data(data: Option<Box<RawValue>>) -> Result<Box<RawValue>, ApiError> {
    data.ok_or_else(|| ApiError::bad_request("missing field `data`"))
}

/// The distinct rooms a publish names, validated, in the order given.
fn target_rooms(room: Option<String>, rooms: Option<Vec<String>>) -> Result<Vec<RoomName>, ApiError> {
    let names = match (room, rooms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give either `room` or `rooms`, not both"));
        }
        (None, None) => return Err(ApiError::bad_request("missing field `room` (or `rooms`)")),
        (Some(room), None) => vec![room],
        (None, Some(rooms)) if rooms.is_empty() => {
            return Err(ApiError::bad_request("`rooms` must name at least one room"));
        }
        (None, Some(rooms)) if rooms.len() > MAX_ROOMS => {
            return Err(ApiError::bad_request(format!(
                "`rooms` names {} rooms; at most {MAX_ROOMS} are allowed",
                rooms.len()
            )));
        }
        (None, Some(rooms)) => rooms,
    };
    let mut seen = HashSet::with_capacity(names.len());
    let mut valid = Vec::with_capacity(names.len());
    for name in &names {
        let room = parse_room(name)?;
        // A room named twice is published once: the answer is keyed by room,
        // so a second event there could not even be reported.
        if seen.insert(room.clone()) {
            valid.push(room);
        }
    }
    Ok(valid)
}

/// `POST /v1/publish`.
pub async fn publish<B>(
    state: &State,
    headers: &HeaderMap,
    body: B,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let body: PublishBody = read_json(headers, body, state.max_body_bytes).await?;
    check_event(&body.event)?;
    let data = require_data(body.data)?;
    if let Some(key) = &body.idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        return Err(ApiError::bad_request(format!(
            "`idempotency_key` must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes long"
        )));
    }
    let rooms = target_rooms(body.room, body.rooms)?;

    let mut positions = BTreeMap::new();
    // Rooms are published one after another, each at most once per
    // idempotency key: a retry after a failure part way publishes only the
    // rooms that were missed and answers every room's first position.
    for room in &rooms {
        let position = publish_one(state, room, &body.event, &data, body.idempotency_key.as_deref()).await?;
        positions.insert(room.as_str(), position);
    }
    json_ok(&PublishAnswer { positions })
}

/// `POST /v1/broadcast`: a publish to the room every connection is in.
pub async fn broadcast<B>(
    state: &State,
    headers: &HeaderMap,
    body: B,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let body: BroadcastBody = read_json(headers, body, state.max_body_bytes).await?;
    check_event(&body.event)?;
    let data = require_data(body.data)?;
    let position = publish_one(state, &RoomName::broadcast(), &body.event, &data, None).await?;
    json_ok(&position)
}

async fn publish_one(
    state: &State,
    room: &RoomName,
    event: &str,
    data: &RawValue,
    idempotency_key: Option<&str>,
) -> Result<Position, ApiError> {
    let req = PublishRequest {
        room,
        event,
        data,
        retention: state.policies.lookup(room).retention,
        notification: None,
    };
    let position = match idempotency_key {
        // The `api:` namespace keeps API keys apart from the outbox's.
        Some(key) => state.broker.publish_once(req, &format!("api:{key}")).await?,
        None => state.broker.publish(req).await?,
    };
    metrics::counter!("herald_publishes_total").increment(1);
    Ok(position)
}
