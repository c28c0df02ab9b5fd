//! Room names and room patterns (PROTOCOL.md §1.4).
//!
//! A room name is 1–200 bytes of `[A-Za-z0-9_.:@-]`; a pattern is an exact
//! name or a prefix ending in `*`. Both are validated once, at the edge, and
//! carried as cheap-to-clone newtypes afterwards.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 200;

/// The cluster-wide room every connection is joined to.
pub const BROADCAST_ROOM: &str = "broadcast";

/// Why a room name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("room name is empty")]
    Empty,
    #[error("room name is longer than {MAX_ROOM_LEN} bytes")]
    TooLong,
    #[error("room name may only contain A-Z a-z 0-9 _ . : @ -")]
    BadCharacter,
    #[error("a pattern may only have `*` as its last character")]
    MisplacedWildcard,
}

fn is_room_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-')
}

/// Checks that `name` is a valid room name.
pub fn validate_room_name(name: &str) -> Result<(), RoomError> {
    if name.is_empty() {
        return Err(RoomError::Empty);
    }
    if name.len() > MAX_ROOM_LEN {
        return Err(RoomError::TooLong);
    }
    if !name.bytes().all(is_room_byte) {
        return Err(RoomError::BadCharacter);
    }
    Ok(())
}

/// A validated room name. Clones share one allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates and wraps a room name.
    pub fn new(name: &str) -> Result<Self, RoomError> {
        validate_room_name(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The room of one user (`user:<sub>`).
    pub fn user(sub: &str) -> Result<Self, RoomError> {
        Self::new(&format!("user:{sub}"))
    }

    /// The room of one role (`role:<role>`).
    pub fn role(role: &str) -> Result<Self, RoomError> {
        Self::new(&format!("role:{role}"))
    }

    /// The cluster-wide `broadcast` room.
    pub fn broadcast() -> Self {
        Self(Arc::from(BROADCAST_ROOM))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for RoomName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for RoomName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoomName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RoomName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A room pattern: an exact room name, or a prefix followed by `*`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoomPattern {
    text: Arc<str>,
    /// True when the pattern ends in `*` (then `text` holds the prefix only).
    prefix: bool,
}

impl RoomPattern {
    /// Parses `event:*`, `category:12:*`, `*` or an exact room name.
    pub fn parse(pattern: &str) -> Result<Self, RoomError> {
        let (body, prefix) = match pattern.strip_suffix('*') {
            Some(body) => (body, true),
            None => (pattern, false),
        };
        if body.contains('*') {
            return Err(RoomError::MisplacedWildcard);
        }
        if prefix {
            // The prefix may be empty (`*` matches every room) but must
            // otherwise be made of room characters.
            if body.len() >= MAX_ROOM_LEN {
                return Err(RoomError::TooLong);
            }
            if !body.bytes().all(is_room_byte) {
                return Err(RoomError::BadCharacter);
            }
        } else {
            validate_room_name(body)?;
        }
        Ok(Self {
            text: Arc::from(body),
            prefix,
        })
    }

    /// True when `room` is matched by this pattern.
    pub fn matches(&self, room: &str) -> bool {
        if self.prefix {
            room.starts_with(&*self.text)
        } else {
            room == &*self.text
        }
    }

    /// True when any of `patterns` matches `room`.
    pub fn any_matches(patterns: &[RoomPattern], room: &str) -> bool {
        patterns.iter().any(|p| p.matches(room))
    }
}

impl fmt::Display for RoomPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RoomPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Serialize for RoomPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RoomPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RoomPattern::parse(&s).map_err(|e| serde::de::Error::custom(format!("pattern {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for name in [
            "a",
            "event:42",
            "user:alice@example.com",
            "x_y-z.1",
            &"r".repeat(200),
        ] {
            assert!(RoomName::new(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        assert_eq!(RoomName::new("").unwrap_err(), RoomError::Empty);
        assert_eq!(RoomName::new(&"r".repeat(201)).unwrap_err(), RoomError::TooLong);
        for bad in ["a b", "room/1", "é", "a*", "x\n", "a\"b"] {
            assert_eq!(RoomName::new(bad).unwrap_err(), RoomError::BadCharacter, "{bad}");
        }
    }

    #[test]
    fn patterns_match_exact_and_prefix() {
        let exact = RoomPattern::parse("event:1").unwrap();
        assert!(exact.matches("event:1"));
        assert!(!exact.matches("event:12"));
        let prefix = RoomPattern::parse("category:12:*").unwrap();
        assert!(prefix.matches("category:12:a"));
        assert!(prefix.matches("category:12:"));
        assert!(!prefix.matches("category:1"));
        assert!(!prefix.matches("category:123"));
        let all = RoomPattern::parse("*").unwrap();
        assert!(all.matches("anything"));
        assert_eq!(prefix.to_string(), "category:12:*");
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(
            RoomPattern::parse("a*b*").unwrap_err(),
            RoomError::MisplacedWildcard
        );
        assert_eq!(
            RoomPattern::parse("*a").unwrap_err(),
            RoomError::MisplacedWildcard
        );
        assert_eq!(RoomPattern::parse("").unwrap_err(), RoomError::Empty);
        assert_eq!(RoomPattern::parse("a b*").unwrap_err(), RoomError::BadCharacter);
    }

    #[test]
    fn serde_validates() {
        let r: RoomName = serde_json::from_str("\"chat:1\"").unwrap();
        assert_eq!(r.as_str(), "chat:1");
        assert!(serde_json::from_str::<RoomName>("\"bad room\"").is_err());
        let p: RoomPattern = serde_json::from_str("\"chat:*\"").unwrap();
        assert!(p.matches("chat:9"));
    }
}
