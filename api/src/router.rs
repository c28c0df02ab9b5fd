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
    Stats,
}

impl Endpoint {
    /// The route pattern, used as the `route` metrics label.
    pub fn pattern(self) -> &'static str {
        match self {
            Endpoint::Publish => "/v1/publish",
            Endpoint::Broadcast => "/v1/broadcast",
            Endpoint::History => "/v1/rooms/{room}/history",
            Endpoint::Presence => "/v1/rooms/{room}/presence",
            Endpoint::Stats => "/v1/stats",
        }
    }

    /// The one method the endpoint accepts.
    pub fn method(self) -> Method {
        match self {
            Endpoint::Publish | Endpoint::Broadcast => Method::POST,
            Endpoint::History | Endpoint::Presence | Endpoint::Stats => Method::GET,
        }
    }

    /// The `allow` header value of a 405 on this endpoint.
    pub fn allow(self) -> &'static str {
        match self {
            Endpoint::Publish | Endpoint::Broadcast => "POST",
            Endpoint::History | Endpoint::Presence | Endpoint::Stats => "GET",
        }
    }
}

/// The endpoint `path` names, with the raw (still unvalidated) `{room}`
/// segment for the room endpoints.
///
/// Splitting on `/` is safe for rooms because a room name cannot contain
/// `/`; a room segment is not percent-decoded, since no character that
/// would need encoding is valid in a room name anyway.
pub fn resolve(path: &str) -> Option<(Endpoint, Option<&str>)> {
    let rest = path.strip_prefix("/v1/")?;
    let mut segments = rest.split('/');
    let found = match (segments.next(), segments.next(), segments.next()) {
        (Some("publish"), None, _) => (Endpoint::Publish, None),
        (Some("broadcast"), None, _) => (Endpoint::Broadcast, None),
        (Some("stats"), None, _) => (Endpoint::Stats, None),
        (Some("rooms"), Some(room), Some("history")) => (Endpoint::History, Some(room)),
        (Some("rooms"), Some(room), Some("presence")) => (Endpoint::Presence, Some(room)),
        _ => return None,
    };
    // Anything after the last expected segment (a trailing `/` included) is
    // a different, unknown path.
    if segments.next().is_some() {
        return None;
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_known_paths() {
        assert_eq!(resolve("/v1/publish"), Some((Endpoint::Publish, None)));
        assert_eq!(resolve("/v1/broadcast"), Some((Endpoint::Broadcast, None)));
        assert_eq!(
            resolve("/v1/rooms/chat:1/history"),
            Some((Endpoint::History, Some("chat:1")))
        );
        assert_eq!(
            resolve("/v1/rooms/a%20b/presence"),
            Some((Endpoint::Presence, Some("a%20b")))
        );
        // An empty room segment still names the endpoint; the handler
        // rejects the room name with a 400 that says why.
        assert_eq!(resolve("/v1/rooms//history"), Some((Endpoint::History, Some(""))));
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
        ] {
            assert_eq!(resolve(path), None, "{path}");
        }
    }
}
