//! Room policy (PROTOCOL.md §1.4): who may join and publish, whether a room
//! keeps presence and member events, and how much history it keeps.
//!
//! Policies are configured per pattern; the first matching pattern wins and
//! the default policy applies when none matches.

use serde::Deserialize;

use crate::rooms::RoomPattern;

/// Who may join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinRule {
    /// Any authenticated connection.
    Anyone,
    /// The token's `rooms` claim must match the room.
    Claims,
    /// The `rooms` claim or a grant stored through the API must match.
    Grant,
}

/// Who may publish to a room from a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishRule {
    /// Nobody: only the API publishes.
    None,
    /// The token's `publish` claim must match the room.
    Claims,
    /// Any connection that has joined the room.
    Members,
}

/// How long and how much history a room keeps; what the broker needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events kept for `since` recovery (exactly the newest this many).
    pub history_size: u32,
    /// Events older than this may leave history earlier.
    pub history_ttl_s: u64,
    /// How long the room's epoch and offset live without a publish.
    pub meta_ttl_s: u64,
}

/// The policy of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPolicy {
    pub join: JoinRule,
    pub client_publish: PublishRule,
    pub presence: bool,
    pub join_leave: bool,
    pub retention: Retention,
}

impl Default for RoomPolicy {
    fn default() -> Self {
        Self {
            join: JoinRule::Claims,
            client_publish: PublishRule::None,
            presence: false,
            join_leave: false,
            retention: Retention {
                history_size: 100,
                history_ttl_s: 300,
                meta_ttl_s: 86_400,
            },
        }
    }
}

/// One `[[rooms]]` entry of the configuration file. Missing keys take the
/// default policy's value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomPolicyConfig {
    pub pattern: RoomPattern,
    pub join: Option<JoinRule>,
    pub client_publish: Option<PublishRule>,
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
    pub history_size: Option<u32>,
    pub history_ttl_s: Option<u64>,
    pub history_meta_ttl_s: Option<u64>,
}

impl RoomPolicyConfig {
    fn resolve(&self) -> RoomPolicy {
        let d = RoomPolicy::default();
        RoomPolicy {
            join: self.join.unwrap_or(d.join),
            client_publish: self.client_publish.unwrap_or(d.client_publish),
            presence: self.presence.unwrap_or(d.presence),
            join_leave: self.join_leave.unwrap_or(d.join_leave),
            retention: Retention {
                history_size: self.history_size.unwrap_or(d.retention.history_size),
                history_ttl_s: self.history_ttl_s.unwrap_or(d.retention.history_ttl_s),
                meta_ttl_s: self.history_meta_ttl_s.unwrap_or(d.retention.meta_ttl_s),
            },
        }
    }
}

/// The ordered policy table with its lookup.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    rules: Vec<(RoomPattern, RoomPolicy)>,
    default: RoomPolicy,
}

impl Policies {
    /// Builds the table from the configuration's `[[rooms]]` entries, in order.
    pub fn new(entries: &[RoomPolicyConfig]) -> Self {
        Self {
            rules: entries.iter().map(|e| (e.pattern.clone(), e.resolve())).collect(),
            default: RoomPolicy::default(),
        }
    }

    /// The policy of `room`: the first matching pattern's, else the default.
    pub fn lookup(&self, room: &str) -> &RoomPolicy {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(room))
            .map(|(_, policy)| policy)
            .unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pattern: &str, join: JoinRule) -> RoomPolicyConfig {
        RoomPolicyConfig {
            pattern: RoomPattern::parse(pattern).unwrap(),
            join: Some(join),
            client_publish: None,
            presence: Some(true),
            join_leave: None,
            history_size: Some(7),
            history_ttl_s: None,
            history_meta_ttl_s: None,
        }
    }

    #[test]
    fn first_match_wins_then_default() {
        let policies = Policies::new(&[
            entry("chat:vip", JoinRule::Grant),
            entry("chat:*", JoinRule::Anyone),
        ]);
        assert_eq!(policies.lookup("chat:vip").join, JoinRule::Grant);
        assert_eq!(policies.lookup("chat:1").join, JoinRule::Anyone);
        assert_eq!(policies.lookup("chat:1").retention.history_size, 7);
        assert_eq!(policies.lookup("chat:1").retention.history_ttl_s, 300);
        assert!(policies.lookup("chat:1").presence);
        assert_eq!(policies.lookup("other"), &RoomPolicy::default());
    }
}
