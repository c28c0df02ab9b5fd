//! Reading a request body as JSON, bounded by `api.max_body_bytes`.
//!
//! An over-long body is refused before it is buffered: at once when its
//! `Content-Length` says so, otherwise as soon as the streamed bytes pass the
//! limit ([`Limited`]). Either way the answer is 413 `too_large`; a body that
//! is not the expected JSON is 400 `bad_request` with serde's message, which
//! names the field and position.

use std::error::Error;

use bytes::Bytes;
use herald_common::protocol::ErrorCode;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("the request body is larger than {limit} bytes"),
    )
}

/// Reads the whole body, at most `limit` bytes of it.
pub async fn read_limited<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    // An unparsable Content-Length is left to the limit below rather than
    // rejected here: hyper already refuses those on real connections.
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Reads the body and parses it as `T`.
pub async fn read_json<T, B>(headers: &HeaderMap, body: B, limit: usize) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let bytes = read_limited(headers, body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http::HeaderValue;
    use http_body_util::Full;
    use hyper::body::Frame;

    /// A body streamed in chunks with no declared length, possibly ending in
    /// an error, as a client connection can produce.
    struct Chunks<E>(VecDeque<Result<Bytes, E>>);

    impl<E: Unpin> Body for Chunks<E> {
        type Data = Bytes;
        type Error = E;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
            Poll::Ready(self.0.pop_front().map(|r| r.map(Frame::data)))
        }
    }

    #[tokio::test]
    async fn reads_within_the_limit() {
        let bytes = read_limited(&HeaderMap::new(), Full::new(Bytes::from_static(b"12345")), 5)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"12345");
    }

    #[tokio::test]
    async fn streamed_body_over_the_limit_is_too_large() {
        // No Content-Length: only the streaming limit can catch it.
        let body =
            Chunks::<std::convert::Infallible>((0..4).map(|_| Ok(Bytes::from_static(b"abcd"))).collect());
        let e = read_limited(&HeaderMap::new(), body, 10).await.unwrap_err();
        assert_eq!((e.code, e.status.as_u16()), (ErrorCode::TooLarge, 413));
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_refused_before_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("1000000"));
        // The body itself is tiny: only the header can have caused the 413.
        let e = read_limited(&headers, Full::new(Bytes::from_static(b"{}")), 10)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
    }

    #[tokio::test]
    async fn body_errors_are_bad_requests() {
        let body = Chunks(VecDeque::from([
            Ok(Bytes::from_static(b"{")),
            Err(std::io::Error::other("connection reset")),
        ]));
        let e = read_limited(&HeaderMap::new(), body, 100).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("connection reset"), "{}", e.message);
    }
}
