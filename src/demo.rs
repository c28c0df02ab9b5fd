//! The live demo that `herald standalone` serves: the page at `/`, its
//! script at `/demo.js` and the browser SDK bundle at `/herald.js`, all
//! embedded at build time from `clients/js` (the bundle is committed, so
//! building needs no Node), plus `POST /demo/token`.
//!
//! The token endpoint mints short-lived tokens for random demo users (rooms
//! and publish `demo:*`) to anyone who can reach the node. It exists only in
//! standalone, only when `[demo] enabled = true`, which development mode
//! (generated credentials) turns on: it is for trying Herald locally, never
//! for production.

use bytes::Bytes;
use herald_common::auth::WireClaims;
use herald_common::config::{AuthConfig, Config};
use herald_common::policy::{JoinRule, PublishRule, RoomPolicyConfig};
use herald_common::rooms::RoomPattern;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

const INDEX_HTML: &str = include_str!("../clients/js/demo/index.html");
const DEMO_JS: &str = include_str!("../clients/js/demo/demo.js");
const HERALD_JS: &str = include_str!("../clients/js/dist/herald.js");

/// Rooms a demo token may join and publish to.
const DEMO_ROOMS: &str = "demo:*";
/// Lifetime of a demo token; the SDK refreshes it before it ends.
const DEMO_TOKEN_TTL_S: u64 = 600;
/// Demo user ids: this prefix and 8 hex digits.
const DEMO_USER_PREFIX: &str = "demo-";

/// The demo's routes for one node.
pub struct Demo {
    /// Set when the token endpoint is enabled: the secret to sign with.
    auth: Option<AuthConfig>,
}

impl Demo {
    pub fn new(config: &Config) -> Self {
        Self {
            auth: config.demo.enabled.then(|| config.auth.clone()),
        }
    }

    /// Answers `/`, `/demo.js`, `/herald.js` and `/demo/token`.
    pub fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let method = req.method();
        match req.uri().path() {
            "/demo/token" => {
                let Some(auth) = &self.auth else {
                    return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
                };
                if method != Method::POST {
                    return method_not_allowed("POST");
                }
                self.token(auth, req.uri().query())
            }
            path => {
                let (body, content_type) = match path {
                    "/" => (INDEX_HTML, "text/html; charset=utf-8"),
                    "/demo.js" => (DEMO_JS, "text/javascript; charset=utf-8"),
                    "/herald.js" => (HERALD_JS, "text/javascript; charset=utf-8"),
                    _ => return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
                };
                if method != Method::GET && method != Method::HEAD {
                    return method_not_allowed("GET, HEAD");
                }
                let body = if method == Method::HEAD { "" } else { body };
                let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                headers.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                response
            }
        }
    }

    /// Mints a demo token: for `?user=demo-xxxxxxxx` (a refresh keeps the
    /// user), else for a new random demo user.
    fn token(&self, auth: &AuthConfig, query: Option<&str>) -> Response<Full<Bytes>> {
        let asked = query
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("user="));
        let user = match asked {
            Some(user) if is_demo_user(user) => user.to_string(),
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "user must be a demo user: demo- and 8 hex digits",
                );
            }
            None => format!("{DEMO_USER_PREFIX}{}", herald_common::random_hex(4)),
        };
        let claims = WireClaims {
            sub: user.clone(),
            exp: herald_common::auth::now_s() + DEMO_TOKEN_TTL_S,
            roles: Vec::new(),
            rooms: vec![DEMO_ROOMS.into()],
            publish: vec![DEMO_ROOMS.into()],
        };
        let token = match herald_common::auth::mint(auth, &claims) {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(error = %e, "cannot mint a demo token");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "demo tokens need auth.algorithm = HS256 and a jwt_secret",
                );
            }
        };
        let body = serde_json::json!({
            "token": token,
            "user": user,
            "expires_in": DEMO_TOKEN_TTL_S,
            "warning": "development demo token: not for production",
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

fn is_demo_user(user: &str) -> bool {
    user.strip_prefix(DEMO_USER_PREFIX)
        .is_some_and(|hex| hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "bad_request",
        "method not allowed",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Standalone development mode (generated credentials): enables the demo
/// token endpoint and, unless a `[[rooms]]` entry already covers every
/// `demo:` room, appends a policy that lets the demo work with no setup.
pub fn enable_for_development(config: &mut Config) {
    config.demo.enabled = true;
    // A prefix pattern covers all of `demo:*` exactly when it matches the
    // bare prefix (`demo:*`, `demo*`, `*`).
    if config.rooms.iter().any(|r| r.pattern.matches("demo:")) {
        return;
    }
    if let Ok(pattern) = RoomPattern::parse(DEMO_ROOMS) {
        config.rooms.push(RoomPolicyConfig {
            pattern,
            join: Some(JoinRule::Anyone),
            client_publish: Some(PublishRule::Members),
            presence: Some(true),
            join_leave: Some(true),
            history_size: None,
            history_ttl_s: None,
            history_meta_ttl_s: None,
        });
    }
}

/// Prints where the demo is, when its token endpoint is on.
pub fn announce(config: &Config, addr: std::net::SocketAddr) {
    if config.demo.enabled {
        println!(
            "Demo (development only): open http://{addr}/ in two browser tabs; \
             POST /demo/token mints demo tokens for demo:* rooms.\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn dev_config() -> Config {
        let mut config = Config::default();
        config.auth.jwt_secret = Some("test-secret".into());
        enable_for_development(&mut config);
        config
    }

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn development_mode_adds_the_demo_policy_once() {
        let config = dev_config();
        assert!(config.demo.enabled);
        let policies = config.policies();
        let lobby = policies.lookup("demo:lobby");
        assert_eq!(lobby.join, JoinRule::Anyone);
        assert_eq!(lobby.client_publish, PublishRule::Members);
        assert!(lobby.presence && lobby.join_leave);
        let mut again = config.clone();
        enable_for_development(&mut again);
        assert_eq!(again.rooms.len(), 1);
    }

    #[test]
    fn a_configured_demo_policy_is_kept() {
        let mut config = Config::from_toml("[[rooms]]\npattern = \"demo:*\"\njoin = \"claims\"").unwrap();
        enable_for_development(&mut config);
        assert_eq!(config.rooms.len(), 1);
        assert_eq!(config.policies().lookup("demo:x").join, JoinRule::Claims);
        // An exact room does not cover the others: the demo policy is added after it.
        let mut config = Config::from_toml("[[rooms]]\npattern = \"demo:vip\"").unwrap();
        enable_for_development(&mut config);
        assert_eq!(config.rooms.len(), 2);
    }

    #[tokio::test]
    async fn serves_the_page_and_the_bundle() {
        let demo = Demo::new(&Config::default());
        let page = demo.handle(&request(Method::GET, "/"));
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(body(page).await.contains("not for production"));
        let bundle = demo.handle(&request(Method::GET, "/herald.js"));
        assert_eq!(
            bundle.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let bundle = body(bundle).await;
        assert!(bundle.contains("HeraldClient") && bundle.contains("export {"));
        let post = demo.handle(&request(Method::POST, "/"));
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn token_endpoint_only_when_enabled() {
        let off = Demo::new(&Config::default());
        assert_eq!(
            off.handle(&request(Method::POST, "/demo/token")).status(),
            StatusCode::NOT_FOUND
        );

        let config = dev_config();
        let demo = Demo::new(&config);
        assert_eq!(
            demo.handle(&request(Method::GET, "/demo/token")).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let response = demo.handle(&request(Method::POST, "/demo/token"));
        assert_eq!(response.status(), StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body(response).await).unwrap();
        let user = json["user"].as_str().unwrap().to_string();
        assert!(is_demo_user(&user), "{user}");
        let verifier = herald_common::auth::JwtVerifier::new(&config.auth).unwrap();
        let claims = verifier.verify(json["token"].as_str().unwrap()).unwrap();
        assert_eq!(claims.sub, user);
        assert!(RoomPattern::any_matches(&claims.rooms, "demo:lobby"));
        assert!(RoomPattern::any_matches(&claims.publish, "demo:lobby"));
        assert!(!RoomPattern::any_matches(&claims.rooms, "chat:1"));
        assert!(claims.exp <= herald_common::auth::now_s() + DEMO_TOKEN_TTL_S);

        // A refresh keeps the user; only demo users can be asked for.
        let again = demo.handle(&request(Method::POST, &format!("/demo/token?user={user}")));
        let json: serde_json::Value = serde_json::from_str(&body(again).await).unwrap();
        assert_eq!(json["user"], user.as_str());
        for bad in ["alice", "demo-xyz", "demo-0123456789", "demo-0123456g"] {
            let response = demo.handle(&request(Method::POST, &format!("/demo/token?user={bad}")));
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
