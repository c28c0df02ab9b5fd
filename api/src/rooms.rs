//! `GET /v1/rooms/{room}/history` and `GET /v1/rooms/{room}/presence`
//! (PROTOCOL.md §2), and the validation of a room named by a request.
//!
//! History answers embed each stored event frame exactly as the broker
//! keeps it: the frames were serialized once at publish time and are copied
//! into the answer byte for byte, never parsed and serialized again.

use std::io::Write;

use bytes::Bytes;
use herald_broker::HistoryQuery;
use herald_common::protocol::{ErrorCode, Position, PresenceMember};
use herald_common::rooms::RoomName;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::State;
use crate::error::{ApiError, json_ok, json_response};

/// Events returned when `limit` is not given.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// Largest `limit` accepted.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// Validates a room name from a path or a body. The name is echoed in the
/// message only when short, so an error never copies a large input back.
pub fn parse_room(name: &str) -> Result<RoomName, ApiError> {
    RoomName::new(name).map_err(|e| {
        if name.len() <= 64 && !name.chars().any(char::is_control) {
            ApiError::bad_request(format!("invalid room {name:?}: {e}"))
        } else {
            ApiError::bad_request(format!("invalid room: {e}"))
        }
    })
}

/// What a history request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct HistoryParams {
    pub since: Option<Position>,
    pub limit: usize,
}

/// Parses `since_offset`, `since_epoch` and `limit` from the query string.
/// Other parameters are ignored (forward compatibility); a parameter given
/// twice is refused, since either reading of it would be a guess.
pub fn parse_history_query(query: Option<&str>) -> Result<HistoryParams, ApiError> {
    let mut since_offset = None;
    let mut since_epoch = None;
    let mut limit = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)?;
        let slot = match key.as_str() {
            "since_offset" => &mut since_offset,
            "since_epoch" => &mut since_epoch,
            "limit" => &mut limit,
            _ => continue,
        };
        if slot.is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter `{key}` is given twice"
            )));
        }
        *slot = Some(percent_decode(value)?);
    }

    let since = match (since_offset, since_epoch) {
        (None, None) => None,
        (Some(offset), Some(epoch)) => {
            if epoch.is_empty() {
                return Err(ApiError::bad_request("`since_epoch` must not be empty"));
            }
            Some(Position {
                offset: parse_number(&offset, "since_offset")?,
                epoch,
            })
        }
        _ => {
            return Err(ApiError::bad_request(
                "`since_offset` and `since_epoch` must be given together",
            ));
        }
    };
    let limit = match limit {
        None => DEFAULT_HISTORY_LIMIT,
        Some(text) => {
            let n = parse_number(&text, "limit")?;
            if !(1..=MAX_HISTORY_LIMIT as u64).contains(&n) {
                return Err(ApiError::bad_request(format!(
                    "`limit` must be between 1 and {MAX_HISTORY_LIMIT}"
                )));
            }
            n as usize
        }
    };
    Ok(HistoryParams { since, limit })
}

/// A non-negative decimal integer. Only digits: `u64::from_str` would also
/// take a leading `+`, which is not a number this API documents.
fn parse_number(text: &str, name: &str) -> Result<u64, ApiError> {
    let invalid = || ApiError::bad_request(format!("`{name}` must be a non-negative integer"));
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    text.parse().map_err(|_| invalid())
}

/// Decodes one `application/x-www-form-urlencoded` component (`%XX` and `+`
/// for space); a broken escape or non-UTF-8 result is a bad request.
fn percent_decode(text: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::bad_request("the query string has an invalid percent-encoding");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(invalid)?;
                // Checked by hand: `from_str_radix` would also take `%+f`.
                let digit = |b: u8| (b as char).to_digit(16).ok_or_else(invalid);
                out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| invalid())
}

/// `GET /v1/rooms/{room}/history`.
pub async fn history(
    state: &State,
    room: &str,
    query: Option<&str>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let room = parse_room(room)?;
    let params = parse_history_query(query)?;
    let range = state
        .broker
        .history(
            &room,
            state.policies.lookup(&room).retention,
            HistoryQuery {
                since: params.since,
                limit: params.limit,
            },
        )
        .await?;

    let frames: usize = range.events.iter().map(|e| e.frame.len() + 1).sum();
    let mut out = Vec::with_capacity(frames + 96 + range.position.epoch.len());
    out.extend_from_slice(br#"{"events":["#);
    for (i, event) in range.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&event.frame);
    }
    let internal = |e: std::io::Error| ApiError::new(ErrorCode::Internal, format!("writing history: {e}"));
    write!(out, r#"],"offset":{},"epoch":"#, range.position.offset).map_err(internal)?;
    // The epoch is an opaque string: let serde escape it.
    serde_json::to_writer(&mut out, &range.position.epoch)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("writing history: {e}")))?;
    if let Some(recovered) = range.recovered {
        write!(out, r#","recovered":{recovered}"#).map_err(internal)?;
    }
    out.push(b'}');
    Ok(json_response(StatusCode::OK, Bytes::from(out)))
}

/// `GET /v1/rooms/{room}/presence`.
pub async fn presence(state: &State, room: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    #[derive(Serialize)]
    struct Answer {
        members: Vec<PresenceMember>,
    }
    let room = parse_room(room)?;
    let members = state.broker.presence(&room).await?;
    json_ok(&Answer { members })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<HistoryParams, ErrorCode> {
        parse_history_query(Some(q)).map_err(|e| e.code)
    }

    #[test]
    fn history_query_defaults_and_values() {
        assert_eq!(
            parse_history_query(None).unwrap(),
            HistoryParams {
                since: None,
                limit: DEFAULT_HISTORY_LIMIT
            }
        );
        assert_eq!(
            parse("since_offset=3&since_epoch=ab%3Acd&limit=7&other=x").unwrap(),
            HistoryParams {
                since: Some(Position {
                    offset: 3,
                    epoch: "ab:cd".into()
                }),
                limit: 7
            }
        );
        assert_eq!(parse("limit=1000").unwrap().limit, 1000);
        assert_eq!(parse("&&limit=1&").unwrap().limit, 1);
    }

    #[test]
    fn history_query_rejects_bad_values() {
        for q in [
            "since_offset=1",
            "since_epoch=e",
            "since_offset=x&since_epoch=e",
            "since_offset=-1&since_epoch=e",
            "since_offset=%2B1&since_epoch=e",
            "since_offset=1&since_epoch=",
            "since_offset=99999999999999999999999&since_epoch=e",
            "limit=0",
            "limit=1001",
            "limit=",
            "limit=ten",
            "limit=1&limit=2",
            "limit=%zz",
            "limit=%4",
            "limit=%+1",
            "since_epoch=%ff&since_offset=1",
        ] {
            assert_eq!(parse(q).map(|_| ()), Err(ErrorCode::BadRequest), "{q}");
        }
    }

    #[test]
    fn room_errors_do_not_echo_long_input() {
        let e = parse_room("a b").unwrap_err();
        assert!(e.message.contains("\"a b\""), "{}", e.message);
        let long = "%".repeat(5000);
        let e = parse_room(&long).unwrap_err();
        assert!(e.message.len() < 200, "{}", e.message);
    }
}
