//! Cheap, exact extraction of what the load client needs from an event
//! frame — the room, the sequence number and the publisher's timestamp —
//! without a full JSON parse (the client shares the machine with the
//! servers it measures, so every event costs it a few substring searches).
//!
//! Why a search is exact here and not a guess:
//!
//! - Herald builds an event frame as `{"op":"event","room":R,"event":E,
//!   "data":D,"offset":N,"epoch":"…","ts":T}` (plus `,"notification":"…"`
//!   on notifications) — the head by `serde_json`, the tail in the publish
//!   script. Room names cannot contain `"` or `\`, so the room ends at the
//!   next quote. Inside a JSON string a quote is escaped, so the byte
//!   sequence `,"data":{"t":` cannot occur inside `E`; its first occurrence
//!   is the data field. `D` may contain anything, but the server's
//!   `,"offset":` comes after it and nothing after it (epoch, ts, a quoted
//!   notification id) can contain that sequence unescaped: the *last*
//!   occurrence is the server's.
//! - The Socket.IO peer sends `42["m",{"t":T,"p":"…","o":N}]`: `t` leads the
//!   object the load client built, and `o` is the last key, appended by the
//!   peer's publisher.

use memchr::memmem;
use std::sync::LazyLock;

/// What the load client reads from one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The room (Herald) — empty for the Socket.IO peer, whose event frames
    /// do not name one (each load connection is in one room there).
    pub room: &'a [u8],
    /// The per-room sequence number: Herald's `offset`, the peer's `o`.
    pub seq: u64,
    /// Herald's epoch (empty for the peer).
    pub epoch: &'a [u8],
    /// The publisher's timestamp (µs since the Unix epoch), when the
    /// payload is one the load client built.
    pub sent_us: Option<u64>,
}

const HERALD_EVENT: &[u8] = br#"{"op":"event","room":""#;
static DATA_T: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(br#","data":{"t":"#));
static OFFSET: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(br#","offset":"#));
const EPOCH: &[u8] = br#","epoch":""#;

/// Reads the leading decimal digits of `bytes`.
fn digits(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    let mut n = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((value, n))
}

/// A Herald `event` frame, or `None` for any other frame.
pub fn herald_event(frame: &[u8]) -> Option<Event<'_>> {
    let rest = frame.strip_prefix(HERALD_EVENT)?;
    let room_len = memchr::memchr(b'"', rest)?;
    let room = &rest[..room_len];
    let after_room = &rest[room_len..];
    let offset_at = OFFSET.rfind(after_room)?;
    let tail = &after_room[offset_at + br#","offset":"#.len()..];
    let (seq, n) = digits(tail)?;
    let epoch = tail[n..]
        .strip_prefix(EPOCH)
        .and_then(|e| memchr::memchr(b'"', e).map(|end| &e[..end]))
        .unwrap_or_default();
    let sent_us = DATA_T
        .find(&after_room[..offset_at])
        .and_then(|at| digits(&after_room[at + br#","data":{"t":"#.len()..]))
        .map(|(t, _)| t);
    Some(Event {
        room,
        seq,
        epoch,
        sent_us,
    })
}

const SIO_EVENT: &[u8] = br#"42["m",{"t":"#;
static SIO_SEQ: LazyLock<memmem::FinderRev<'static>> = LazyLock::new(|| memmem::FinderRev::new(br#","o":"#));

/// A Socket.IO `m` event from the peer, or `None` for any other packet.
pub fn socketio_event(frame: &[u8]) -> Option<Event<'_>> {
    let rest = frame.strip_prefix(SIO_EVENT)?;
    let (sent, _) = digits(rest)?;
    let at = SIO_SEQ.rfind(rest)?;
    let (seq, _) = digits(&rest[at + br#","o":"#.len()..])?;
    Some(Event {
        room: b"",
        seq,
        epoch: b"",
        sent_us: Some(sent),
    })
}

/// The payload the load client publishes: `{"t":<µs>,"p":"xxx…"}`, padded
/// so that the whole `data` value is about `bytes` long.
pub fn payload(sent_us: u64, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes.max(32) + 8);
    s.push_str("{\"t\":");
    s.push_str(&sent_us.to_string());
    s.push_str(",\"p\":\"");
    let pad = bytes.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// The offset in an API publish answer `{"positions":{room:{"offset":N,…}}}`
/// (one room) or in a WebSocket `ack` — the first `"offset":` either way.
pub fn answer_offset(body: &[u8]) -> Option<u64> {
    let at = memmem::find(body, br#""offset":"#)?;
    digits(&body[at + br#""offset":"#.len()..]).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_event_fields() {
        let frame = br#"{"op":"event","room":"lt:7","event":"m","data":{"t":1712345678901234,"p":"xx"},"offset":42,"epoch":"9f3a","ts":1712345678901}"#;
        let e = herald_event(frame).unwrap();
        assert_eq!(e.room, b"lt:7");
        assert_eq!(e.seq, 42);
        assert_eq!(e.epoch, b"9f3a");
        assert_eq!(e.sent_us, Some(1_712_345_678_901_234));
    }

    #[test]
    fn herald_event_is_exact_when_data_and_event_look_like_the_tail() {
        // The data holds a fake offset and the event name a fake data key:
        // the server's offset is the last one, the data the first unescaped.
        let frame = br#"{"op":"event","room":"r","event":"a\",\"data\":{\"t\":5","data":{"t":77,"offset":3,"epoch":"zz","s":",\"offset\":9"},"offset":1234,"epoch":"ep","ts":1,"notification":"n1"}"#;
        let e = herald_event(frame).unwrap();
        assert_eq!(e.room, b"r");
        assert_eq!(e.seq, 1234);
        assert_eq!(e.epoch, b"ep");
        assert_eq!(e.sent_us, Some(77));
    }

    #[test]
    fn herald_event_without_our_payload_still_has_its_offset() {
        let frame = br#"{"op":"event","room":"r","event":"e","data":[1,2],"offset":5,"epoch":"x","ts":1}"#;
        let e = herald_event(frame).unwrap();
        assert_eq!((e.seq, e.sent_us), (5, None));
    }

    #[test]
    fn other_frames_are_not_events() {
        assert_eq!(
            herald_event(br#"{"op":"joined","id":1,"room":"r","offset":0,"epoch":"e"}"#),
            None
        );
        assert_eq!(herald_event(br#"{"op":"event","room":"r""#), None);
        assert_eq!(herald_event(b""), None);
        assert_eq!(socketio_event(b"2"), None);
        assert_eq!(socketio_event(br#"431[{"ok":true}]"#), None);
    }

    #[test]
    fn socketio_event_fields() {
        let e = socketio_event(br#"42["m",{"t":99,"p":"x\"o\":1","o":17}]"#).unwrap();
        assert_eq!((e.seq, e.sent_us), (17, Some(99)));
    }

    #[test]
    fn payload_size_and_roundtrip() {
        let p = payload(1_700_000_000_000_000, 100);
        assert_eq!(p.len(), 100);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["t"], 1_700_000_000_000_000u64);
        let frame =
            format!(r#"{{"op":"event","room":"r","event":"m","data":{p},"offset":1,"epoch":"e","ts":1}}"#);
        assert_eq!(
            herald_event(frame.as_bytes()).unwrap().sent_us,
            Some(1_700_000_000_000_000)
        );
        assert!(
            payload(1, 0).starts_with("{\"t\":1,"),
            "never shorter than its fields"
        );
    }

    #[test]
    fn answer_offsets() {
        assert_eq!(
            answer_offset(br#"{"positions":{"lt:0":{"offset":12,"epoch":"e"}}}"#),
            Some(12)
        );
        assert_eq!(
            answer_offset(br#"{"op":"ack","id":3,"offset":8,"epoch":"e"}"#),
            Some(8)
        );
        assert_eq!(answer_offset(br#"{"error":{"code":"x"}}"#), None);
    }

    #[test]
    fn digits_overflow_is_not_a_number() {
        assert_eq!(digits(b"99999999999999999999999"), None);
        assert_eq!(digits(b"12x"), Some((12, 2)));
        assert_eq!(digits(b"x"), None);
    }
}
