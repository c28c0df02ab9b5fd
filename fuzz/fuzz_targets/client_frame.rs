//! Fuzzes client-frame parsing (`ClientFrame::parse`, PROTOCOL.md §1.2) and
//! position parsing (`parse_position`) on any UTF-8 text.
//!
//! Checks, besides "never panics":
//! - every refusal carries a non-empty message;
//! - only a top-level JSON object parses (serde alone would also read the
//!   frame from an array, by field order);
//! - for a top-level JSON object, the request id reported — `id()` of a
//!   parsed frame, or `FrameError::id` of a refused one — is always the `id`
//!   that serde_json reads from the same text when it looks for the id alone
//!   (`None` when that fails): the id the `error` reply echoes;
//! - a parsed object's `op` names the frame's variant and its `id` field is
//!   `id()` (checked when `serde_json::Value` can hold the text, e.g. not
//!   nested deeper than its recursion limit);
//! - `join.since` is never a JSON `null` (that means "absent"), and every raw
//!   value a frame borrows is itself valid JSON;
//! - `parse_position` on `join.since`, on each `hello.resume` value and on
//!   the whole input (when it is one JSON value) never panics, accepts only
//!   JSON objects, and what it accepts survives a serialize/parse round trip.

#![no_main]

use herald_common::protocol::{ClientFrame, parse_position};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// The `id` alone, read the way the parser reads it for an error reply.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

fn check_raw_is_json(raw: &RawValue) {
    assert!(
        serde_json::from_str::<serde::de::IgnoredAny>(raw.get()).is_ok(),
        "a borrowed raw value is not JSON: {:?}",
        raw.get()
    );
}

fn check_position(raw: &RawValue) {
    check_raw_is_json(raw);
    if let Ok(position) = parse_position(raw) {
        assert!(
            raw.get().trim_start().starts_with('{'),
            "a non-object position was accepted: {:?}",
            raw.get()
        );
        let text = serde_json::to_string(&position).expect("a position serializes");
        let again = RawValue::from_string(text).expect("a serialized position is JSON");
        assert_eq!(
            parse_position(&again),
            Ok(position),
            "a position does not round-trip"
        );
    }
}

fn op_name(frame: &ClientFrame<'_>) -> &'static str {
    match frame {
        ClientFrame::Hello { .. } => "hello",
        ClientFrame::Join { .. } => "join",
        ClientFrame::Leave { .. } => "leave",
        ClientFrame::Publish { .. } => "publish",
        ClientFrame::Presence { .. } => "presence",
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::Refresh { .. } => "refresh",
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Only JSON's own whitespace: a text that starts otherwise is no object.
    let is_object = text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{');
    let id_alone = serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id);
    match ClientFrame::parse(text) {
        Ok(frame) => {
            assert!(is_object, "a message that is not a JSON object parsed: {text:?}");
            assert_eq!(frame.id(), id_alone, "parsed id differs for {text:?}");
            if let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) {
                assert_eq!(
                    object.get("op").and_then(Value::as_str),
                    Some(op_name(&frame)),
                    "op differs for {text:?}"
                );
                assert_eq!(frame.id(), object.get("id").and_then(Value::as_u64));
            }
            match &frame {
                ClientFrame::Hello { resume, .. } => resume.values().for_each(|raw| check_position(raw)),
                ClientFrame::Join { since, .. } => {
                    if let Some(since) = since {
                        assert_ne!(since.get(), "null", "a null `since` must read as absent");
                        check_position(since);
                    }
                }
                ClientFrame::Publish { data, .. } => check_raw_is_json(data),
                ClientFrame::Ping { t: Some(t), .. } => check_raw_is_json(t),
                _ => {}
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message for {text:?}");
            if is_object {
                assert_eq!(e.id, id_alone, "the error's id differs for {text:?}");
            }
        }
    }
    // The whole input as a position, as `join.since` would carry it.
    if let Ok(raw) = serde_json::from_str::<&RawValue>(text) {
        check_position(raw);
    }
});
