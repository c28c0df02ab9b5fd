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
        let pre_auth = match upgrade_token(&req) {
            None => None,
            Some(token) => match shared.settings.verifier.verify(token) {
                Ok(claims) => Some(claims),
                Err(e) => {
                    GatewayMetrics::refused("unauthorized");
                    return refuse(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, &e.to_string());
                }
            },
        };
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
                Ok(ws) => crate::connection::serve(shared, ws, pre_auth).await,
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
}
