//! CORS for browsers that call the API directly (`api.cors_origins`; off
//! by default — API keys belong on servers). An allowed origin gets the
//! `Access-Control-Allow-*` headers and its preflight `OPTIONS` a 204.

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, HeaderValue, ORIGIN, VARY,
};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;

/// The request's origin, if CORS allows it.
pub fn allowed_origin(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    if allowed.is_empty() {
        return None;
    }
    let origin = headers.get(ORIGIN)?;
    let text = origin.to_str().ok()?;
    allowed
        .iter()
        .any(|a| a == "*" || a == text)
        .then(|| origin.clone())
}

/// Adds the CORS headers for `origin` to a response.
pub fn decorate(response: &mut Response<Full<Bytes>>, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(VARY, HeaderValue::from_static("origin"));
}

/// The answer to a preflight request from an allowed origin.
pub fn preflight(origin: HeaderValue) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    decorate(&mut response, origin);
    response
}

/// True for a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(ORIGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_allowed() {
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, HeaderValue::from_static("https://app.example"));
        assert!(allowed_origin(&headers, &[]).is_none());
        assert!(allowed_origin(&headers, &["https://other.example".into()]).is_none());
        assert!(allowed_origin(&headers, &["https://app.example".into()]).is_some());
        assert!(allowed_origin(&headers, &["*".into()]).is_some());
        assert!(allowed_origin(&HeaderMap::new(), &["*".into()]).is_none());
        let r = preflight(HeaderValue::from_static("https://app.example"));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
    }
}
