//! Property tests (proptest) of the pure pieces every client input goes
//! through: room names and patterns (PROTOCOL.md §1.4) and client frame
//! parsing (§1.2). Run: `cargo test -p herald-common --test properties`;
//! `PROPTEST_CASES=10000` runs more cases.

use herald_common::protocol::{ClientFrame, Position, parse_position};
use herald_common::rooms::{MAX_ROOM_LEN, RoomError, RoomName, RoomPattern, validate_room_name};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// The bytes a room name may hold.
const ROOM_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@-";

fn is_room_byte(b: u8) -> bool {
    ROOM_CHARS.as_bytes().contains(&b)
}

/// A valid room name.
fn room_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:@-]{1,200}"
}

/// A short valid room name (shares prefixes with others more often).
fn short_room() -> impl Strategy<Value = String> {
    "[ab:]{1,6}"
}

/// Strings near the edge of validity: room characters mixed with `*`,
/// spaces, slashes, quotes, control characters and non-ASCII.
fn near_room() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            8 => proptest::sample::select(ROOM_CHARS.chars().collect::<Vec<_>>()),
            1 => Just('*'),
            1 => proptest::sample::select(vec![' ', '/', '"', '\\', '\n', '\0', 'é', '😀', '\u{7f}']),
        ],
        0..=210,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// Any string: arbitrary Unicode, or close to a room name.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), near_room(), room_name()]
}

/// Failures are reported with their minimal input; nothing is written
/// next to the sources.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    // -- Room names ----------------------------------------------------------

    #[test]
    fn room_name_validation_matches_the_definition(s in any_text()) {
        let valid = !s.is_empty() && s.len() <= MAX_ROOM_LEN && s.bytes().all(is_room_byte);
        let result = RoomName::new(&s);
        prop_assert_eq!(result.is_ok(), valid, "{:?}: {:?}", s, result);
        prop_assert_eq!(validate_room_name(&s).is_ok(), valid);
        match result {
            Ok(name) => {
                prop_assert_eq!(name.as_str(), s.as_str());
                prop_assert_eq!(name.to_string(), s.clone());
                // serde goes through the same validation.
                let back: RoomName = serde_json::from_value(json!(s)).unwrap();
                prop_assert_eq!(back, name);
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert!(serde_json::from_value::<RoomName>(json!(s)).is_err());
            }
        }
    }

    #[test]
    fn pattern_parse_never_panics_and_round_trips(s in any_text()) {
        let Ok(pattern) = RoomPattern::parse(&s) else {
            return Ok(());
        };
        // Parsing keeps the text: Display gives the input back, and parsing
        // that again gives an equal pattern.
        prop_assert_eq!(pattern.to_string(), s.clone());
        let again = RoomPattern::parse(&pattern.to_string()).unwrap();
        prop_assert_eq!(&again, &pattern);
        let via_serde: RoomPattern =
            serde_json::from_str(&serde_json::to_string(&pattern).unwrap()).unwrap();
        prop_assert_eq!(via_serde, pattern);
        // At most one `*`, and only at the end.
        prop_assert!(!s.trim_end_matches('*').contains('*'));
        prop_assert!(s.matches('*').count() <= 1);
        prop_assert!(s.len() <= MAX_ROOM_LEN);
    }

    #[test]
    fn a_star_anywhere_but_the_end_is_refused(
        before in "[a-z:]{0,10}",
        after in "[a-z:]{1,10}",
        star_at_end in any::<bool>(),
    ) {
        let text = format!("{before}*{after}{}", if star_at_end { "*" } else { "" });
        prop_assert_eq!(RoomPattern::parse(&text), Err(RoomError::MisplacedWildcard));
    }

    #[test]
    fn a_prefix_pattern_matches_exactly_the_names_starting_with_it(
        prefix in "[A-Za-z0-9_.:@-]{0,20}",
        candidates in proptest::collection::vec(
            prop_oneof![room_name(), short_room(), "[ab:]{0,4}".prop_map(|s| format!("a:{s}"))],
            1..20,
        ),
        suffix in "[A-Za-z0-9_.:@-]{0,20}",
    ) {
        let pattern = RoomPattern::parse(&format!("{prefix}*")).unwrap();
        // A name built on the prefix always matches.
        let built = format!("{prefix}{suffix}");
        if RoomName::new(&built).is_ok() {
            prop_assert!(pattern.matches(&built), "{} should match {}", pattern, built);
        }
        for name in candidates {
            prop_assert_eq!(
                pattern.matches(&name),
                name.starts_with(&prefix),
                "{} against {}", pattern, name
            );
            let room = RoomName::new(&name).unwrap();
            prop_assert_eq!(RoomPattern::any_matches(std::slice::from_ref(&pattern), &room), name.starts_with(&prefix));
        }
    }

    #[test]
    fn an_exact_pattern_matches_only_itself(
        name in prop_oneof![room_name(), short_room()],
        others in proptest::collection::vec(prop_oneof![room_name(), short_room()], 1..20),
    ) {
        let pattern = RoomPattern::parse(&name).unwrap();
        prop_assert!(pattern.matches(&name));
        for other in others {
            prop_assert_eq!(pattern.matches(&other), other == name, "{} against {}", pattern, other);
        }
        // Neither a longer nor a shorter name matches.
        let longer = format!("{name}x");
        prop_assert!(!pattern.matches(&longer));
        prop_assert!(!pattern.matches(&name[..name.len() - 1]));
    }

    #[test]
    fn the_bare_star_matches_every_name(name in room_name()) {
        prop_assert!(RoomPattern::parse("*").unwrap().matches(&name));
    }

    #[test]
    fn any_matches_is_the_or_of_matches(
        patterns in proptest::collection::vec(
            prop_oneof![short_room(), short_room().prop_map(|p| format!("{p}*")), Just("*".to_string())],
            0..6,
        ),
        name in short_room(),
    ) {
        let parsed: Vec<RoomPattern> = patterns.iter().map(|p| RoomPattern::parse(p).unwrap()).collect();
        prop_assert_eq!(
            RoomPattern::any_matches(&parsed, &name),
            parsed.iter().any(|p| p.matches(&name))
        );
    }

    // -- Client frames -------------------------------------------------------

    #[test]
    fn frame_parsing_never_panics_on_arbitrary_text(text in any::<String>()) {
        if let Err(e) = ClientFrame::parse(&text) {
            prop_assert!(!e.message.is_empty(), "an error without a message for {:?}", text);
        }
    }

    #[test]
    fn frame_parsing_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // The gateway refuses non-UTF-8 before parsing; whatever survives
        // lossy decoding must still parse or fail cleanly.
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = ClientFrame::parse(&text) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn frame_errors_carry_a_message_and_echo_a_readable_id(frame in json_frame()) {
        let text = frame.to_string();
        match ClientFrame::parse(&text) {
            Ok(parsed) => {
                // A parsed frame has the id it was sent with (hello included).
                prop_assert_eq!(parsed.id(), frame.get("id").and_then(Value::as_u64));
            }
            Err(e) => {
                prop_assert!(!e.message.is_empty(), "no message for {}", text);
                if let Some(id) = frame.get("id").and_then(Value::as_u64) {
                    prop_assert_eq!(e.id, Some(id), "the error for {} does not echo its id", text);
                }
            }
        }
    }

    #[test]
    fn well_formed_frames_parse_to_what_was_sent(
        id in proptest::option::of(any::<u64>()),
        room in any::<String>(),
        event in any::<String>(),
        token in any::<String>(),
        data in json_value(),
        extra in json_value(),
    ) {
        let with_id = |mut v: Value| {
            if let Some(id) = id {
                v["id"] = json!(id);
            }
            // Unknown fields are ignored.
            v["x-extra"] = extra.clone();
            v.to_string()
        };
        let text = with_id(json!({"op": "join", "room": room}));
        match ClientFrame::parse(&text) {
            Ok(ClientFrame::Join { id: got, room: r, since: None }) => {
                prop_assert_eq!((got, r), (id, room.clone()));
            }
            other => prop_assert!(false, "join: {:?}", other),
        }
        let text = with_id(json!({"op": "publish", "room": room, "event": event, "data": data}));
        match ClientFrame::parse(&text) {
            Ok(ClientFrame::Publish { id: got, room: r, event: e, data: d }) => {
                prop_assert_eq!((got, r, e), (id, room.clone(), event.clone()));
                // The raw value is the client's text, untouched.
                prop_assert_eq!(d.get(), data.to_string());
            }
            other => prop_assert!(false, "publish: {:?}", other),
        }
        let text = with_id(json!({"op": "refresh", "token": token}));
        match ClientFrame::parse(&text) {
            Ok(ClientFrame::Refresh { id: got, token: t }) => prop_assert_eq!((got, t), (id, token.clone())),
            other => prop_assert!(false, "refresh: {:?}", other),
        }
        let text = with_id(json!({"op": "ping", "t": data}));
        match ClientFrame::parse(&text) {
            Ok(ClientFrame::Ping { id: got, t: Some(t) }) => {
                prop_assert_eq!(got, id);
                prop_assert_eq!(t.get(), data.to_string());
            }
            other => prop_assert!(false, "ping: {:?}", other),
        }
    }

    // -- Positions -----------------------------------------------------------

    #[test]
    fn positions_parse_exactly_when_well_formed(value in position_like()) {
        let raw = RawValue::from_string(value.to_string()).unwrap();
        let expected = match (value.get("offset").and_then(Value::as_u64), value.get("epoch").and_then(Value::as_str)) {
            (Some(offset), Some(epoch)) if value.is_object() => Some(Position { offset, epoch: epoch.to_string() }),
            _ => None,
        };
        match parse_position(&raw) {
            Ok(position) => prop_assert_eq!(Some(position), expected, "{}", value),
            Err(message) => {
                prop_assert!(expected.is_none(), "{} refused: {}", value, message);
                prop_assert!(!message.is_empty());
            }
        }
    }

    #[test]
    fn parse_position_never_panics_on_any_json(text in any::<String>()) {
        if let Ok(raw) = RawValue::from_string(text) {
            let _ = parse_position(&raw);
        }
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON value of one of the types a frame field might (wrongly) have.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => any::<String>().prop_map(Value::from),
        2 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => json_value(),
        1 => Just(json!({"offset": 1, "epoch": "e"})),
        1 => Just(json!({"room:1": {"offset": 1, "epoch": "e"}})),
    ]
}

/// Frame-shaped JSON objects: a known or unknown `op` (or none) and any
/// subset of the fields frames use, each of any type.
fn json_frame() -> impl Strategy<Value = Value> {
    let op = proptest::option::of(prop_oneof![
        6 => proptest::sample::select(vec!["hello", "join", "leave", "publish", "presence", "ping", "refresh"])
            .prop_map(Value::from),
        1 => field_value(),
    ]);
    let fields = proptest::collection::btree_map(
        proptest::sample::select(vec![
            "id", "token", "resume", "room", "since", "event", "data", "t", "other",
        ]),
        field_value(),
        0..7,
    );
    (op, fields).prop_map(|(op, fields)| {
        let mut object = serde_json::Map::new();
        if let Some(op) = op {
            object.insert("op".into(), op);
        }
        for (k, v) in fields {
            object.insert(k.to_string(), v);
        }
        Value::Object(object)
    })
}

/// Objects that are or are nearly positions, and other JSON.
fn position_like() -> impl Strategy<Value = Value> {
    let offset = prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(1.5)),
        Just(json!("1")),
        Just(Value::Null),
    ];
    let epoch = prop_oneof![
        any::<String>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(Value::Null)
    ];
    prop_oneof![
        4 => (proptest::option::of(offset), proptest::option::of(epoch), proptest::option::of(json_value()))
            .prop_map(|(offset, epoch, extra)| {
                let mut object = serde_json::Map::new();
                if let Some(o) = offset {
                    object.insert("offset".into(), o);
                }
                if let Some(e) = epoch {
                    object.insert("epoch".into(), e);
                }
                if let Some(x) = extra {
                    object.insert("extra".into(), x);
                }
                Value::Object(object)
            }),
        1 => json_value(),
    ]
}
