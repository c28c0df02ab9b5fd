//! Commands the API tier sends to gateway nodes (through the broker, on the
//! room channel of the user or role they concern, so only nodes holding
//! such connections receive them). Serialized as JSON.

use serde::{Deserialize, Serialize};

/// One server-to-node command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Close every connection of `user` with 4010.
    Disconnect { user: String },
    /// Make `user`'s connections leave `room` (`left{reason:"unsubscribed"}`).
    Unsubscribe { user: String, room: String },
    /// A grant of `pattern` to `subject` (`user:<id>` / `role:<r>`) was
    /// removed: connections of that subject re-check their rooms matching
    /// `pattern` and leave those no longer allowed (`left{reason:"revoked"}`).
    Revoke { subject: String, pattern: String },
}

impl Command {
    pub fn to_bytes(&self) -> Vec<u8> {
        // A plain enum of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for command in [
            Command::Disconnect { user: "a".into() },
            Command::Unsubscribe {
                user: "a".into(),
                room: "r".into(),
            },
            Command::Revoke {
                subject: "role:X".into(),
                pattern: "p:*".into(),
            },
        ] {
            assert_eq!(Command::parse(&command.to_bytes()), Some(command));
        }
        assert_eq!(Command::parse(b"{\"cmd\":\"nope\"}"), None);
    }
}
