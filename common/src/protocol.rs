//! The client WebSocket protocol (PROTOCOL.md §1.2–1.3): the frames a client
//! sends, the frames the server sends, error codes and close codes.
//!
//! Client frames are parsed in one borrowed pass into [`ClientFrame`]; every
//! failure is a [`FrameError`] that carries the request `id` when it could be
//! read, so the `error` reply can echo it. Server frames serialize with
//! `"op"` as their tag.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A position in a room: where a client is, or where the room is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// Error codes, shared by the WebSocket and the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The wire name, e.g. `bad_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes Herald uses (PROTOCOL.md §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal closure (answer to a client's close).
    Normal,
    /// 1001: node draining or connection idle; reconnect with jitter and resume.
    GoingAway,
    /// 1002: the client broke RFC 6455 framing.
    ProtocolError,
    /// 1009: a message over `max_frame_bytes`.
    TooLarge,
    /// 4001: not authenticated (no or bad `hello`, bad token).
    Unauthorized,
    /// 4003: the token expired and was not refreshed.
    TokenExpired,
    /// 4008: kept sending while rate limited.
    PolicyViolation,
    /// 4009: too slow to drain the outbound queue; resume loses nothing.
    SlowConsumer,
    /// 4010: disconnected through the server API; do not reconnect.
    Kicked,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::TooLarge => 1009,
            CloseCode::Unauthorized => 4001,
            CloseCode::TokenExpired => 4003,
            CloseCode::PolicyViolation => 4008,
            CloseCode::SlowConsumer => 4009,
            CloseCode::Kicked => 4010,
        }
    }
}

/// A frame from a client, borrowed from the message bytes.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    Hello {
        /// Echoed by the `bad_request` a second `hello` gets.
        id: Option<u64>,
        token: String,
        /// Room → raw position; each is validated on its own so that one bad
        /// position fails only its room.
        resume: BTreeMap<String, &'a RawValue>,
    },
    Join {
        id: Option<u64>,
        room: String,
        since: Option<&'a RawValue>,
    },
    Leave {
        id: Option<u64>,
        room: String,
    },
    Publish {
        id: Option<u64>,
        room: String,
        event: String,
        data: &'a RawValue,
    },
    Presence {
        id: Option<u64>,
        room: String,
    },
    Ping {
        id: Option<u64>,
        t: Option<&'a RawValue>,
    },
    Refresh {
        id: Option<u64>,
        token: String,
    },
}

/// A client frame that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The request id, when it could be read.
    pub id: Option<u64>,
    pub message: String,
}

/// Deserializes a field that holds any JSON value, `null` included, so that
/// only an absent field is `None` (use with `#[serde(default)]`).
pub fn any_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Borrowed form of [`any_json`].
fn any_json_borrowed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Every field any client frame may carry; unknown fields are ignored.
#[derive(Deserialize)]
struct WireClientFrame<'a> {
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
    id: Option<u64>,
    token: Option<String>,
    #[serde(borrow)]
    resume: Option<BTreeMap<String, &'a RawValue>>,
    room: Option<String>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    event: Option<String>,
    #[serde(borrow, default, deserialize_with = "any_json_borrowed")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "any_json_borrowed")]
    t: Option<&'a RawValue>,
}

/// Only the `id`, read when the full parse failed so the error can echo it.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

fn required<T>(value: Option<T>, field: &str, id: Option<u64>) -> Result<T, FrameError> {
    value.ok_or_else(|| FrameError {
        id,
        message: format!("missing field `{field}`"),
    })
}

impl<'a> ClientFrame<'a> {
    /// Parses one text message.
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        // serde would also read the frame struct from an array, by field
        // order (`["join", 7, …]`); a message is a JSON object (§1).
        if !text.trim_start().starts_with('{') {
            return Err(FrameError {
                id: None,
                message: "invalid message: expected a JSON object".into(),
            });
        }
        let wire: WireClientFrame<'a> = serde_json::from_str(text).map_err(|e| FrameError {
            id: serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id),
            message: format!("invalid message: {e}"),
        })?;
        let id = wire.id;
        // A JSON `null` for an optional raw field means "absent".
        let present = |raw: Option<&'a RawValue>| raw.filter(|r| r.get() != "null");
        Ok(match &*wire.op {
            "hello" => ClientFrame::Hello {
                id,
                token: required(wire.token, "token", id)?,
                resume: wire.resume.unwrap_or_default(),
            },
            "join" => ClientFrame::Join {
                id,
                room: required(wire.room, "room", id)?,
                since: present(wire.since),
            },
            "leave" => ClientFrame::Leave {
                id,
                room: required(wire.room, "room", id)?,
            },
            "publish" => ClientFrame::Publish {
                id,
                room: required(wire.room, "room", id)?,
                event: required(wire.event, "event", id)?,
                data: required(wire.data, "data", id)?,
            },
            "presence" => ClientFrame::Presence {
                id,
                room: required(wire.room, "room", id)?,
            },
            "ping" => ClientFrame::Ping { id, t: wire.t },
            "refresh" => ClientFrame::Refresh {
                id,
                token: required(wire.token, "token", id)?,
            },
            other => {
                return Err(FrameError {
                    id,
                    message: format!("unknown op {other:?}"),
                });
            }
        })
    }

    /// The request id, if the frame carries one.
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientFrame::Hello { id, .. }
            | ClientFrame::Join { id, .. }
            | ClientFrame::Leave { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::Ping { id, .. }
            | ClientFrame::Refresh { id, .. } => *id,
        }
    }
}

/// Parses a client-supplied position (`join.since`, `hello.resume` values).
pub fn parse_position(raw: &RawValue) -> Result<Position, String> {
    // serde would also take the struct as an array (`[5, "e"]`); a position
    // is an object (PROTOCOL.md §1.2).
    if !raw.get().trim_start().starts_with('{') {
        return Err("invalid position: expected {\"offset\": <integer>, \"epoch\": <string>}".into());
    }
    serde_json::from_str(raw.get()).map_err(|e| format!("invalid position: {e}"))
}

/// Why a connection left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeftReason {
    Request,
    Revoked,
    Unsubscribed,
}

/// Whether a member event announces a user's arrival or departure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Joined,
    Left,
}

/// One user's entry in a presence list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceMember {
    pub user: String,
    pub conns: u32,
}

/// A frame the server sends to a client.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Welcome {
        conn: &'a str,
        node: &'a str,
        user: &'a str,
        rooms: &'a [String],
        heartbeat_ms: u64,
    },
    Event {
        room: &'a str,
        event: &'a str,
        data: &'a RawValue,
        offset: u64,
        epoch: &'a str,
        ts: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        notification: Option<&'a str>,
    },
    Joined {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: &'a str,
        offset: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Left {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: &'a str,
        reason: LeftReason,
    },
    Member {
        room: &'a str,
        user: &'a str,
        state: MemberState,
    },
    Resync {
        room: &'a str,
        offset: u64,
        epoch: &'a str,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        t: Option<&'a RawValue>,
    },
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: &'a str,
        members: &'a [PresenceMember],
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame<'_> {
    /// Serializes the frame to the bytes of one text message.
    pub fn to_bytes(&self) -> bytes::Bytes {
        // Serializing these types cannot fail: every map key is a string and
        // every raw value was validated JSON when it was parsed.
        match serde_json::to_vec(self) {
            Ok(v) => bytes::Bytes::from(v),
            Err(e) => bytes::Bytes::from(format!(
                r#"{{"op":"error","code":"internal","message":"serialization failed: {}"}}"#,
                e.to_string().replace('"', "'")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn arrays_are_not_frames() {
        for text in [
            r#"["join",7,null,null,"lobby",null,null]"#,
            r#"["ping",1]"#,
            " [1]",
        ] {
            let e = ClientFrame::parse(text).unwrap_err();
            assert!(e.message.contains("JSON object"), "{text}: {}", e.message);
        }
        assert!(ClientFrame::parse(r#" {"op":"ping","id":1}"#).is_ok());
    }

    #[test]
    fn parses_every_client_op() {
        let f = ClientFrame::parse(r#"{"op":"hello","token":"t","resume":{"a":{"offset":1,"epoch":"e"}}}"#)
            .unwrap();
        assert!(
            matches!(f, ClientFrame::Hello { ref token, ref resume, .. } if token == "t" && resume.len() == 1)
        );
        let f = ClientFrame::parse(r#"{"op":"join","id":1,"room":"r","since":{"offset":2,"epoch":"e"}}"#)
            .unwrap();
        match f {
            ClientFrame::Join { id, room, since } => {
                assert_eq!((id, room.as_str()), (Some(1), "r"));
                assert_eq!(
                    parse_position(since.unwrap()).unwrap(),
                    Position {
                        offset: 2,
                        epoch: "e".into()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"leave","id":2,"room":"r"}"#),
            Ok(ClientFrame::Leave { .. })
        ));
        let f = ClientFrame::parse(r#"{"op":"publish","id":3,"room":"r","event":"e","data":{"x":[1,2]}}"#)
            .unwrap();
        assert!(matches!(f, ClientFrame::Publish { data, .. } if data.get() == r#"{"x":[1,2]}"#));
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"presence","id":4,"room":"r"}"#),
            Ok(ClientFrame::Presence { .. })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"ping","t":{"a":1}}"#),
            Ok(ClientFrame::Ping { id: None, t: Some(_) })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"refresh","id":5,"token":"x"}"#),
            Ok(ClientFrame::Refresh { .. })
        ));
    }

    #[test]
    fn ignores_unknown_fields() {
        assert!(ClientFrame::parse(r#"{"op":"ping","future":{"x":1}}"#).is_ok());
    }

    #[test]
    fn null_data_is_data_and_absent_data_is_missing() {
        let f = ClientFrame::parse(r#"{"op":"publish","room":"r","event":"e","data":null}"#).unwrap();
        assert!(matches!(f, ClientFrame::Publish { data, .. } if data.get() == "null"));
        let e = ClientFrame::parse(r#"{"op":"publish","room":"r","event":"e"}"#).unwrap_err();
        assert_eq!(e.message, "missing field `data`");
    }

    #[test]
    fn reports_errors_with_id() {
        let e = ClientFrame::parse(r#"{"op":"nope","id":9}"#).unwrap_err();
        assert_eq!(e.id, Some(9));
        assert!(e.message.contains("unknown op"));
        let e = ClientFrame::parse(r#"{"op":"join","id":7,"room":5}"#).unwrap_err();
        assert_eq!(e.id, Some(7));
        let e = ClientFrame::parse(r#"{"op":"join","id":8}"#).unwrap_err();
        assert_eq!((e.id, e.message.as_str()), (Some(8), "missing field `room`"));
        assert_eq!(ClientFrame::parse("not json").unwrap_err().id, None);
        assert!(ClientFrame::parse("[1,2]").is_err());
        assert!(ClientFrame::parse(r#"{"id":1}"#).is_err());
        assert!(ClientFrame::parse(r#"{"op":"join","id":-1,"room":"r"}"#).is_err());
    }

    #[test]
    fn serializes_server_frames_with_op_tag() {
        let data = RawValue::from_string(r#"{"score":[1,2]}"#.into()).unwrap();
        let bytes = ServerFrame::Event {
            room: "r",
            event: "goal",
            data: &data,
            offset: 3,
            epoch: "ep",
            ts: 10,
            notification: None,
        }
        .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"op":"event","room":"r","event":"goal","data":{"score":[1,2]},"offset":3,"epoch":"ep","ts":10})
        );
        let v: Value = serde_json::from_slice(
            &ServerFrame::Error {
                id: Some(1),
                code: ErrorCode::RateLimited,
                message: "slow down",
                retry_after_ms: Some(50),
            }
            .to_bytes(),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"op":"error","id":1,"code":"rate_limited","message":"slow down","retry_after_ms":50})
        );
        let v: Value = serde_json::from_slice(
            &ServerFrame::Left {
                id: None,
                room: "r",
                reason: LeftReason::Revoked,
            }
            .to_bytes(),
        )
        .unwrap();
        assert_eq!(v, json!({"op":"left","room":"r","reason":"revoked"}));
    }
}
