//! `PUT`/`DELETE /v1/grants`: room access granted to a user or a role.
//!
//! A grant is effective for new joins at once (gateways cache decisions
//! for under a second). Removing one also tells the nodes holding that
//! subject's connections to re-check their rooms, so live connections that
//! are no longer allowed leave with `left{reason:"revoked"}`.

use bytes::Bytes;
use herald_common::control::Command;
use herald_common::rooms::{RoomName, RoomPattern};
use http::{HeaderMap, Method, Response};
use http_body_util::Full;
use hyper::body::Body;
use serde::Deserialize;

use crate::State;
use crate::body::read_json;
use crate::error::{ApiError, no_content};

#[derive(Deserialize)]
struct GrantBody {
    subject: String,
    pattern: String,
}

/// Validates a grant subject: `user:<id>` or `role:<name>`, a valid room.
pub fn parse_subject(subject: &str) -> Result<RoomName, ApiError> {
    if !(subject.starts_with("user:") || subject.starts_with("role:")) {
        return Err(ApiError::bad_request(
            "`subject` must be `user:<id>` or `role:<name>`",
        ));
    }
    let room = RoomName::new(subject).map_err(|e| ApiError::bad_request(format!("`subject`: {e}")))?;
    if room.len() <= "user:".len() {
        return Err(ApiError::bad_request("`subject` names no user or role"));
    }
    Ok(room)
}

/// `PUT /v1/grants` and `DELETE /v1/grants`.
pub async fn grants<B>(
    state: &State,
    method: &Method,
    headers: &HeaderMap,
    body: B,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: GrantBody = read_json(headers, body, state.max_body_bytes).await?;
    let subject = parse_subject(&body.subject)?;
    let pattern =
        RoomPattern::parse(&body.pattern).map_err(|e| ApiError::bad_request(format!("`pattern`: {e}")))?;
    let store = state.store()?;
    if method == Method::PUT {
        store.put_grant(&subject, &pattern.to_string()).await?;
    } else {
        store.delete_grant(&subject, &pattern.to_string()).await?;
        // The subject's room reaches exactly the nodes holding its
        // connections (every connection is in its user and role rooms).
        let command = Command::Revoke {
            subject: subject.to_string(),
            pattern: pattern.to_string(),
        };
        state.broker.request(&subject, &command.to_bytes()).await?;
    }
    Ok(no_content())
}
