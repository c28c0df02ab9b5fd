//! Removing people: `POST /v1/users/{user}/disconnect` closes every
//! connection of a user with 4010; `POST /v1/rooms/{room}/unsubscribe`
//! makes a user's connections leave a room. Both travel as commands on the
//! user's room channel, so they reach exactly the nodes holding that user,
//! and answer how many connections they affected.

use bytes::Bytes;
use herald_common::control::Command;
use herald_common::rooms::RoomName;
use http::{HeaderMap, Response};
use http_body_util::Full;
use hyper::body::Body;
use serde::{Deserialize, Serialize};

use crate::State;
use crate::body::{read_json, read_limited};
use crate::error::{ApiError, json_ok};
use crate::rooms::parse_room;

#[derive(Serialize)]
struct Affected {
    connections: u64,
}

/// Validates a user id from a path or body: `user:<id>` must be a room.
pub fn parse_user(user: &str) -> Result<RoomName, ApiError> {
    if user.is_empty() || user.len() > 190 {
        return Err(ApiError::bad_request("user ids are 1-190 bytes"));
    }
    RoomName::user(user).map_err(|e| ApiError::bad_request(format!("user {user:?}: {e}")))
}

/// The reason is only logged (an audit trail); clients see 4010.
#[derive(Deserialize)]
struct DisconnectBody {
    reason: Option<String>,
}

/// `POST /v1/users/{user}/disconnect` (`{"reason"?}`; an empty body is fine).
pub async fn disconnect<B>(
    state: &State,
    user: &str,
    headers: &HeaderMap,
    body: B,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let user_room = parse_user(user)?;
    let raw = read_limited(headers, body, state.max_body_bytes).await?;
    if !raw.iter().all(u8::is_ascii_whitespace) {
        let body: DisconnectBody =
            serde_json::from_slice(&raw).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?;
        tracing::info!(
            user,
            reason = body.reason.as_deref().unwrap_or(""),
            "disconnecting user"
        );
    }
    let command = Command::Disconnect {
        user: user.to_string(),
    };
    let connections = state.broker.request(&user_room, &command.to_bytes()).await?;
    json_ok(&Affected { connections })
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    user: String,
}

/// `POST /v1/rooms/{room}/unsubscribe` (`{"user"}`).
pub async fn unsubscribe<B>(
    state: &State,
    room: &str,
    headers: &HeaderMap,
    body: B,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let room = parse_room(room)?;
    let body: UnsubscribeBody = read_json(headers, body, state.max_body_bytes).await?;
    let user_room = parse_user(&body.user)?;
    let command = Command::Unsubscribe {
        user: body.user,
        room: room.to_string(),
    };
    let connections = state.broker.request(&user_room, &command.to_bytes()).await?;
    json_ok(&Affected { connections })
}
