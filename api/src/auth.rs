//! API key authentication (PROTOCOL.md §2): `Authorization: Bearer <key>`
//! against the configured keys.
//!
//! Missing or malformed credentials are 401 `unauthorized`; a well-formed
//! key that is not configured is 403 `forbidden`. Keys are compared in
//! constant time, against every configured key, so neither the position of
//! the first differing byte nor which key matched shows in the timing.

use herald_common::protocol::ErrorCode;
use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::error::ApiError;

/// Equality whose running time depends only on `presented.len()`, never on
/// where the inputs differ nor on the length of `expected`.
///
/// The loop always walks the whole presented value (whose length the caller
/// already knows) and folds every difference, the length mismatch included,
/// into one accumulator, with no early exit.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u64::from(presented.len() != expected.len());
    for (i, &byte) in presented.iter().enumerate() {
        // Past the end of `expected`, compare with 0; the length term above
        // already made the result false.
        let other = expected.get(i).copied().unwrap_or(0);
        diff |= u64::from(byte ^ other);
    }
    // Keep the optimizer from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// Checks the request's credentials against `keys`.
/// Returns the index of the matching key (a name for the key that is not
/// the key itself, e.g. for its rate limit).
pub fn authorize(headers: &HeaderMap, keys: &[String]) -> Result<usize, ApiError> {
    if keys.is_empty() {
        // Refusing everything is the safe reading of an empty key list: an
        // API that forgot its keys must not become an open API.
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "no API key is configured on this server; set api.keys or HERALD_API_KEYS",
        ));
    }
    let presented = bearer_token(headers)?;
    // Every key is compared even after a match, so timing does not tell
    // which key (or how much of one) matched.
    let matched = keys.iter().enumerate().fold(None, |found, (i, key)| {
        let equal = constant_time_eq(presented.as_bytes(), key.as_bytes());
        found.or(equal.then_some(i))
    });
    if let Some(index) = matched {
        Ok(index)
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, "the API key is not valid"))
    }
}

/// The key of a single `Authorization: Bearer <key>` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let unauthorized = |message: &str| ApiError::new(ErrorCode::Unauthorized, message);
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <api key>` header"))?;
    if values.next().is_some() {
        // Two credentials are ambiguous; picking one would hide a client bug.
        return Err(unauthorized("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not ASCII"))?;
    let (scheme, key) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <api key>`"))?;
    // Auth schemes are case-insensitive (RFC 9110 §11.1).
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized("the Authorization scheme must be Bearer"));
    }
    let key = key.trim();
    if key.is_empty() {
        return Err(unauthorized("the bearer API key is empty"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"key-1", b"key-1"));
        assert!(!constant_time_eq(b"key-1", b"key-2"));
        assert!(!constant_time_eq(b"Key-1", b"key-1"));
        // Length differences in both directions, including a prefix and the
        // zero padding that the loop uses past the shorter input.
        assert!(!constant_time_eq(b"key", b"key-1"));
        assert!(!constant_time_eq(b"key-1", b"key"));
        assert!(!constant_time_eq(b"", b"k"));
        assert!(!constant_time_eq(b"k", b""));
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(!constant_time_eq(b"ab", b"ab\0"));
    }

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_static(v));
        }
        h
    }

    fn keys() -> Vec<String> {
        vec!["first".into(), "second".into()]
    }

    #[test]
    fn accepts_any_configured_key() {
        assert_eq!(authorize(&headers(&["Bearer first"]), &keys()), Ok(0));
        assert_eq!(authorize(&headers(&["Bearer second"]), &keys()), Ok(1));
        assert_eq!(authorize(&headers(&["bearer second"]), &keys()), Ok(1));
    }

    #[test]
    fn missing_or_malformed_is_unauthorized() {
        for h in [
            headers(&[]),
            headers(&["first"]),
            headers(&["Basic first"]),
            headers(&["Bearer "]),
            headers(&["Bearer first", "Bearer first"]),
        ] {
            assert_eq!(
                authorize(&h, &keys()).unwrap_err().code,
                ErrorCode::Unauthorized,
                "{h:?}"
            );
        }
    }

    #[test]
    fn unknown_key_is_forbidden() {
        let e = authorize(&headers(&["Bearer third"]), &keys()).unwrap_err();
        assert_eq!((e.code, e.status.as_u16()), (ErrorCode::Forbidden, 403));
        // A prefix of a configured key is not that key.
        let e = authorize(&headers(&["Bearer firs"]), &keys()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
    }

    #[test]
    fn no_configured_key_forbids_everything() {
        let e = authorize(&headers(&["Bearer first"]), &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(e.message.contains("no API key is configured"), "{}", e.message);
        assert_eq!(
            authorize(&headers(&[]), &[]).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }
}
