//! Which endpoint a `/v1` path names, and the method each one accepts.
//!
//! Resolution looks at the path only, so that a known path with the wrong
//! method can be told apart (405) from an unknown path (404), and so that
//! metrics are labelled by the route's pattern rather than by the raw path,
//! which would carry one label value per room.

use http::Method;

/// The metrics label of a path that names no endpoint.
pub const UNMATCHED: &str = "unmatched";

/// One endpoint of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Publish,
    Broadcast,
    History,
    Presence,
    Unsubscribe,
    Stats,
    Grants,
    Notifications,
    NotificationRead,
    Disconnect,
}

impl Endpoint {
    /// The route pattern, used as the `route` metrics label.
    pub fn pattern(self) -> &'static str {
        match self {
            Endpoint::Publish => "/v1/publish",
            Endpoint::Broadcast => "/v1/broadcast",
            Endpoint::History => "/v1/rooms/{room}/history",
            Endpoint::Presence => "/v1/rooms/{room}/presence",
            Endpoint::Unsubscribe => "/v1/rooms/{room}/unsubscribe",
            Endpoint::Stats => "/v1/stats",
            Endpoint::Grants => "/v1/grants",
            Endpoint::Notifications => "/v1/users/{user}/notifications",
            Endpoint::NotificationRead => "/v1/users/{user}/notifications/{id}/read",
            Endpoint::Disconnect => "/v1/users/{user}/disconnect",
        }
    }

    /// The methods the endpoint accepts, as the `allow` header lists them.
    pub fn allow(self) -> &'static str {
        match self {
            Endpoint::Publish
            | Endpoint::Broadcast
            | Endpoint::Unsubscribe
            | Endpoint::NotificationRead
            | Endpoint::Disconnect => "POST",
            Endpoint::History | Endpoint::Presence | Endpoint::Stats => "GET",
            Endpoint::Grants => "PUT, DELETE",
            Endpoint::Notifications => "GET, POST",
        }
    }

    /// Whether the endpoint accepts `method`.
    pub fn allows(self, method: &Method) -> bool {
        self.allow().split(", ").any(|m| m == method.as_str())
    }
}

/// The path parameters of a resolved endpoint, still unvalidated: `{room}`
/// or `{user}` first, then `{id}`.
pub type Params<'a> = (Option<&'a str>, Option<&'a str>);

/// The endpoint `path` names, with its raw path parameters.
///
/// Splitting on `/` is safe because room names and user ids cannot contain
/// `/`; segments are not percent-decoded, since no character that would
/// need encoding is valid in them anyway.
pub fn resolve(path: &str) -> Option<(Endpoint, Params<'_>)> {
    let rest = path.strip_prefix("/v1/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    Some(match segments.as_slice() {
        ["publish"] => (Endpoint::Publish, (None, None)),
        ["broadcast"] => (Endpoint::Broadcast, (None, None)),
        ["stats"] => (Endpoint::Stats, (None, None)),
        ["grants"] => (Endpoint::Grants, (None, None)),
        ["rooms", room, "history"] => (Endpoint::History, (Some(*room), None)),
        ["rooms", room, "presence"] => (Endpoint::Presence, (Some(*room), None)),
        ["rooms", room, "unsubscribe"] => (Endpoint::Unsubscribe, (Some(*room), None)),
        ["users", user, "notifications"] => (Endpoint::Notifications, (Some(*user), None)),
        ["users", user, "notifications", id, "read"] => {
            (Endpoint::NotificationRead, (Some(*user), Some(*id)))
        }
        ["users", user, "disconnect"] => (Endpoint::Disconnect, (Some(*user), None)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_known_paths() {
        assert_eq!(resolve("/v1/publish"), Some((Endpoint::Publish, (None, None))));
        assert_eq!(
            resolve("/v1/broadcast"),
            Some((Endpoint::Broadcast, (None, None)))
        );
        assert_eq!(
            resolve("/v1/rooms/chat:1/history"),
            Some((Endpoint::History, (Some("chat:1"), None)))
        );
        assert_eq!(
            resolve("/v1/rooms/a%20b/presence"),
            Some((Endpoint::Presence, (Some("a%20b"), None)))
        );
        assert_eq!(
            resolve("/v1/users/alice/notifications/12/read"),
            Some((Endpoint::NotificationRead, (Some("alice"), Some("12"))))
        );
        assert_eq!(resolve("/v1/grants"), Some((Endpoint::Grants, (None, None))));
        // An empty room segment still names the endpoint; the handler
        // rejects the room name with a 400 that says why.
        assert_eq!(
            resolve("/v1/rooms//history"),
            Some((Endpoint::History, (Some(""), None)))
        );
        assert!(Endpoint::Grants.allows(&Method::DELETE));
        assert!(!Endpoint::Grants.allows(&Method::GET));
    }

    #[test]
    fn rejects_unknown_paths() {
        for path in [
            "/v1",
            "/v1/",
            "/v1/publish/",
            "/v1/publishx",
            "/v1/rooms/chat/history/",
            "/v1/rooms/chat/other",
            "/v1/rooms/chat",
            "/v1/rooms/a/b/history",
            "/v2/publish",
            "/publish",
            "/v1/users/alice",
            "/v1/users/alice/notifications/1",
            "/v1/grants/x",
        ] {
            assert_eq!(resolve(path), None, "{path}");
        }
    }
}
