//! The API's error type and every JSON response it writes.
//!
//! All answers, good or bad, leave through [`json_response`], so every one
//! carries `content-type: application/json`; errors always have the shape
//! `{"error":{"code","message"}}` of PROTOCOL.md §2, with the status taken
//! from [`ErrorCode::http_status`] (405 being the one status that has no
//! code of its own).

use bytes::Bytes;
use herald_broker::BrokerError;
use herald_common::protocol::ErrorCode;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// A request that cannot be answered with success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// The `allow` header of a 405.
    pub allow: Option<&'static str>,
    /// The `retry-after` header of a 429, in seconds.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error whose status is the one the protocol assigns to `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            // `http_status` only returns valid statuses; the fallback keeps
            // this total without an unwrap.
            status: StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }

    /// 429 with `Retry-After` in whole seconds.
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        let mut e = Self::new(ErrorCode::RateLimited, "too many requests for this API key");
        e.retry_after = Some(wait.as_millis().div_ceil(1000).max(1) as u64);
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 405 on a known path. The protocol has no `method_not_allowed` code,
    /// so the body says `bad_request` and the status and `allow` header carry
    /// the precise meaning.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: ErrorCode::BadRequest,
            message: format!("method not allowed; allowed: {allow}"),
            allow: Some(allow),
            retry_after: None,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: ErrorCode,
            message: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
        // Two strings cannot fail to serialize; the fallback only keeps the
        // error path free of panics.
        .unwrap_or_else(|_| br#"{"error":{"code":"internal","message":"serialization failed"}}"#.to_vec());
        let mut response = json_response(self.status, Bytes::from(body));
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(http::header::RETRY_AFTER, value);
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unavailable(_) => {
                // The detail may name internal hosts; log it, answer generically.
                tracing::warn!(error = %e, "broker unavailable while serving the API");
                ApiError::new(ErrorCode::Unavailable, "the broker is unavailable; retry later")
            }
        }
    }
}

impl From<herald_store::StoreError> for ApiError {
    fn from(e: herald_store::StoreError) -> Self {
        tracing::warn!(error = %e, "store unavailable while serving the API");
        ApiError::new(ErrorCode::Unavailable, "the store is unavailable; retry later")
    }
}

/// A 204 with no body.
pub fn no_content() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// A response with a JSON body already serialized.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A 200 answer serializing `value`.
pub fn json_ok<T: Serialize>(value: &T) -> Result<Response<Full<Bytes>>, ApiError> {
    serde_json::to_vec(value)
        .map(|body| json_response(StatusCode::OK, Bytes::from(body)))
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("could not serialize the answer: {e}"),
            )
        })
}
