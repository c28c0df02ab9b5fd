//! What travels on a room channel. One text header line, then the body:
//!
//! - `E <offset> <epoch> <ts>\n<event frame>` — a room event;
//! - `T <exclude conn or ->\n<frame>` — a frame outside the offset sequence
//!   (member events);
//! - `C\n<payload>` — a control message for the nodes holding the room
//!   (used on `user:` rooms to reach exactly the nodes of that user).
//!
//! A node reads the header only; the event frame is forwarded as it is.

use bytes::Bytes;

/// A decoded channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelMessage {
    Event {
        offset: u64,
        epoch: String,
        ts: u64,
        frame: Bytes,
    },
    Transient {
        exclude: Option<String>,
        frame: Bytes,
    },
    Control {
        payload: Bytes,
    },
}

/// Encodes a transient frame.
pub fn transient(frame: &[u8], exclude: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 32);
    out.extend_from_slice(b"T ");
    out.extend_from_slice(exclude.unwrap_or("-").as_bytes());
    out.push(b'\n');
    out.extend_from_slice(frame);
    out
}

/// Encodes a control message.
pub fn control(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 2);
    out.extend_from_slice(b"C\n");
    out.extend_from_slice(payload);
    out
}

/// Decodes a channel payload; `None` for anything malformed.
pub fn decode(payload: &[u8]) -> Option<ChannelMessage> {
    let newline = payload.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&payload[..newline]).ok()?;
    let body = Bytes::copy_from_slice(&payload[newline + 1..]);
    let mut parts = header.split(' ');
    match parts.next()? {
        "E" => {
            let offset = parts.next()?.parse().ok()?;
            let epoch = parts.next()?.to_string();
            let ts = parts.next()?.parse().ok()?;
            Some(ChannelMessage::Event {
                offset,
                epoch,
                ts,
                frame: body,
            })
        }
        "T" => {
            let exclude = parts.next()?;
            Some(ChannelMessage::Transient {
                exclude: (exclude != "-").then(|| exclude.to_string()),
                frame: body,
            })
        }
        "C" => Some(ChannelMessage::Control { payload: body }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_kind() {
        assert_eq!(
            decode(b"E 7 ab12 1700000000123\n{\"op\":\"event\"}"),
            Some(ChannelMessage::Event {
                offset: 7,
                epoch: "ab12".into(),
                ts: 1_700_000_000_123,
                frame: Bytes::from_static(b"{\"op\":\"event\"}"),
            })
        );
        assert_eq!(
            decode(&transient(b"{}", Some("n.1"))),
            Some(ChannelMessage::Transient {
                exclude: Some("n.1".into()),
                frame: Bytes::from_static(b"{}")
            })
        );
        assert_eq!(
            decode(&transient(b"{}", None)),
            Some(ChannelMessage::Transient {
                exclude: None,
                frame: Bytes::from_static(b"{}")
            })
        );
        assert_eq!(
            decode(&control(b"x")),
            Some(ChannelMessage::Control {
                payload: Bytes::from_static(b"x")
            })
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b""[..],
            b"E 1 e\n{}",
            b"E x e 1\n{}",
            b"Z\n{}",
            b"no newline",
            b"\xff\n",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
