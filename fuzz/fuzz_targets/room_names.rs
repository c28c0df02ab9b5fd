//! Fuzzes room names and room patterns (`RoomName::new`, `RoomPattern::parse`,
//! PROTOCOL.md §1.4) on any UTF-8 text.
//!
//! The input is split at its first `\n` into a pattern text and a candidate
//! room; the whole input and both parts are each tried as a name and as a
//! pattern. Checks, besides "never panics":
//! - a name is accepted exactly when it is 1–200 bytes of `[A-Za-z0-9_.:@-]`
//!   (`RoomName::new` and `validate_room_name` agree), and keeps its text;
//!   `RoomName::user(s)` is accepted exactly when `user:{s}` is a valid name;
//! - an accepted pattern is an exact valid name (no `*`) or room characters
//!   followed by one final `*`; it displays as its input and parses again
//!   to an equal pattern; a `*` before the end is always refused;
//! - a valid name always parses as an exact pattern, and that pattern
//!   matches the name and no other valid name;
//! - a prefix pattern `p*` matches a valid name exactly when the name starts
//!   with `p`; for a valid name `p` shorter than 200 bytes `p*` is accepted;
//!   `*` matches every valid name; `any_matches` is the OR of `matches`.

#![no_main]

use herald_common::rooms::{MAX_ROOM_LEN, RoomName, RoomPattern, validate_room_name};
use libfuzzer_sys::fuzz_target;

fn is_room_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-')
}

/// The definition of a valid room name (PROTOCOL.md §1.4).
fn is_valid_name(s: &str) -> bool {
    (1..=MAX_ROOM_LEN).contains(&s.len()) && s.bytes().all(is_room_byte)
}

fn check_name(s: &str) {
    let valid = is_valid_name(s);
    let name = RoomName::new(s);
    assert_eq!(name.is_ok(), valid, "RoomName::new({s:?}) = {name:?}");
    assert_eq!(validate_room_name(s).is_ok(), valid, "validate_room_name({s:?})");
    if let Ok(name) = name {
        assert_eq!(name.as_str(), s);
    }
    let user = format!("user:{s}");
    assert_eq!(
        RoomName::user(s).is_ok(),
        is_valid_name(&user),
        "RoomName::user({s:?})"
    );
}

/// Checks `pattern_text` and returns the pattern when it was accepted.
fn check_pattern(pattern_text: &str) -> Option<RoomPattern> {
    let parsed = RoomPattern::parse(pattern_text);
    if let Some(star) = pattern_text.find('*') {
        if star + 1 != pattern_text.len() {
            assert!(
                parsed.is_err(),
                "a `*` before the end was accepted: {pattern_text:?}"
            );
        }
    }
    let pattern = parsed.ok()?;
    assert_eq!(
        pattern.to_string(),
        pattern_text,
        "Display differs from the input"
    );
    assert_eq!(RoomPattern::parse(&pattern.to_string()).as_ref(), Ok(&pattern));
    match pattern_text.strip_suffix('*') {
        Some(prefix) => assert!(
            !prefix.contains('*') && prefix.bytes().all(is_room_byte),
            "bad prefix pattern accepted: {pattern_text:?}"
        ),
        None => assert!(
            is_valid_name(pattern_text),
            "bad exact pattern accepted: {pattern_text:?}"
        ),
    }
    Some(pattern)
}

/// Checks what `pattern` (parsed from `pattern_text`) says about `room`.
fn check_match(pattern_text: &str, pattern: &RoomPattern, room: &str) {
    if !is_valid_name(room) {
        return;
    }
    let expected = match pattern_text.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => room == pattern_text,
    };
    assert_eq!(
        pattern.matches(room),
        expected,
        "{pattern_text:?} against {room:?}"
    );
    assert_eq!(
        RoomPattern::any_matches(std::slice::from_ref(pattern), room),
        expected
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern_text, room) = text.split_once('\n').unwrap_or((text, ""));

    for s in [text, pattern_text, room] {
        check_name(s);
        check_pattern(s);
    }

    let all = RoomPattern::parse("*").expect("`*` is a pattern");
    for s in [text, pattern_text, room] {
        if is_valid_name(s) {
            assert!(all.matches(s), "`*` does not match {s:?}");
            // A valid name is an exact pattern matching only itself.
            let exact = RoomPattern::parse(s).expect("a valid name is a pattern");
            assert!(exact.matches(s));
            check_match(s, &exact, room);
            check_match(s, &exact, pattern_text);
            // And a prefix pattern, when `name*` is within the length limit.
            if s.len() < MAX_ROOM_LEN {
                let prefix_text = format!("{s}*");
                let prefix = RoomPattern::parse(&prefix_text).expect("`name*` is a pattern");
                assert!(prefix.matches(s));
                check_match(&prefix_text, &prefix, room);
                check_match(&prefix_text, &prefix, pattern_text);
                let longer = format!("{s}{room}");
                check_match(&prefix_text, &prefix, &longer);
                if is_valid_name(&longer) {
                    assert!(prefix.matches(&longer), "{prefix_text:?} against {longer:?}");
                }
            }
        }
    }

    if let Some(pattern) = check_pattern(pattern_text) {
        check_match(pattern_text, &pattern, room);
        check_match(pattern_text, &pattern, text);
        let many = [pattern.clone(), all.clone()];
        if is_valid_name(room) {
            assert_eq!(
                RoomPattern::any_matches(&many, room),
                many.iter().any(|p| p.matches(room))
            );
            assert!(RoomPattern::any_matches(&many, room), "`*` is among the patterns");
        }
        assert!(!RoomPattern::any_matches(&[], room));
    }
});
