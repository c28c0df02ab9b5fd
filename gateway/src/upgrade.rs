//! The HTTP side of a new WebSocket connection: method and upgrade checks,
//! the drain and connection-limit refusals, and authentication by a token
//! on the upgrade request (`Authorization: Bearer` or `?token=`), which is
//! answered with 401 and no upgrade when bad.

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use herald_common::protocol::ErrorCode;

use crate::Gateway;
use crate::limits::Scope;
use crate::metrics::GatewayMetrics;

/// A JSON error response in the API's shape.
fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"code": code.as_str(), "message": message}});
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// 429 with `Retry-After` (whole seconds, rounded up).
fn too_many(wait: std::time::Duration) -> Response<Full<Bytes>> {
    let mut response = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        "too many connections",
    );
    let secs = wait.as_millis().div_ceil(1000).max(1);
    if let Ok(value) = header::HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Whether a browser upgrade's `Origin` is on the allow-list (an empty
/// list allows all; a request without `Origin` is not from a browser).
fn origin_allowed<B>(req: &Request<B>, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match req.headers().get(header::ORIGIN).map(|o| o.to_str()) {
        None => true,
        Some(Ok(origin)) => allowed.iter().any(|a| a == origin),
        Some(Err(_)) => false,
    }
}

/// The token of an upgrade request, if it carries one.
fn upgrade_token<B>(req: &Request<B>) -> Option<&str> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}

impl Gateway {
    /// Handles `GET /ws`: upgrades and spawns the connection, or refuses.
    pub async fn handle_upgrade(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let shared = &self.shared;
        let accepted_at = std::time::Instant::now();
        if req.method() != http::Method::GET {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadRequest,
                "use GET to open a WebSocket",
            );
        }
        if self.is_draining() {
            GatewayMetrics::refused("draining");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "node is draining",
            );
        }
        if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            let mut response = refuse(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::BadRequest,
                "this endpoint speaks WebSocket only",
            );
            response
                .headers_mut()
                .insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
            return response;
        }
        if !origin_allowed(&req, &shared.settings.config.allowed_origins) {
            GatewayMetrics::refused("origin");
            return refuse(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "origin not allowed");
        }
        if let Some(peer) = req.extensions().get::<crate::PeerAddr>()
            && let Err(wait) = shared.limiter.check_ip(peer.0.ip())
        {
            GatewayMetrics::refused("rate_limited");
            return too_many(wait);
        }
        let pre_auth = match upgrade_token(&req) {
            None => None,
            Some(token) => match shared.verify(token) {
                Ok(claims) => Some(claims),
                Err(e) => {
                    GatewayMetrics::refused("unauthorized");
                    return refuse(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, &e.to_string());
                }
            },
        };
        if let Some(claims) = &pre_auth
            && let Err(wait) = shared.limiter.check_user(Scope::Connect, &claims.sub).await
        {
            GatewayMetrics::refused("rate_limited");
            return too_many(wait);
        }
        if !shared.take_slot() {
            GatewayMetrics::refused("max_connections");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "node is at its connection limit",
            );
        }
        let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(pair) => pair,
            Err(e) => {
                shared.release_slot();
                GatewayMetrics::refused("bad_upgrade");
                return refuse(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, &e.to_string());
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            match upgrade.await {
                Ok(ws) => crate::connection::serve(shared, ws, pre_auth, accepted_at).await,
                Err(e) => {
                    shared.release_slot();
                    tracing::debug!(error = %e, "upgrade failed");
                }
            }
        });
        response.map(|_| Full::new(Bytes::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_header_or_query() {
        let req = Request::builder().uri("/ws?x=1&token=abc").body(()).unwrap();
        assert_eq!(upgrade_token(&req), Some("abc"));
        let req = Request::builder()
            .uri("/ws?token=abc")
            .header("authorization", "Bearer xyz")
            .body(())
            .unwrap();
        assert_eq!(upgrade_token(&req), Some("xyz"));
        let req = Request::builder().uri("/ws").body(()).unwrap();
        assert_eq!(upgrade_token(&req), None);
        let req = Request::builder().uri("/ws?token=").body(()).unwrap();
        assert_eq!(upgrade_token(&req), None);
    }

    #[test]
    fn origin_allow_list() {
        let with = |origin: &str| Request::builder().header("origin", origin).body(()).unwrap();
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(&with("https://evil.example"), &[]));
        assert!(origin_allowed(&with("https://app.example"), &allowed));
        assert!(!origin_allowed(&with("https://evil.example"), &allowed));
        assert!(origin_allowed(&Request::builder().body(()).unwrap(), &allowed));
    }
}
