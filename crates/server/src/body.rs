//! Reading a JSON request body: content type, size limit, and a clear
//! error for each way it can be wrong. Parsing the JSON itself is the
//! dialect's job.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use http_body::Frame;

use crate::error::ApiError;

/// How long a request body may go without any of it arriving: a client
/// that stopped sending, or vanished without closing its connection, would
/// otherwise hold its request and connection for good. The request is then
/// refused with 408 (and recorded as such).
pub(crate) const BODY_IDLE: Duration = Duration::from_secs(30);

pub(crate) async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    let is_json = content_type.is_some_and(|value| {
        let media_type = value.split(';').next().unwrap_or_default().trim();
        media_type.eq_ignore_ascii_case("application/json")
            || media_type.to_ascii_lowercase().ends_with("+json")
    });
    if !is_json {
        return Err(ApiError::unsupported_media_type(content_type));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    collect(body, limit).await
}

/// The body's bytes, at most `limit` of them: a body that came in one
/// piece (most requests: head and body in one read) is that piece, a slice
/// of the connection's read buffer, without a copy; one in pieces is
/// gathered into one allocation. (axum's `to_bytes` queued even a single
/// piece in a list of its own first.)
///
/// Copying a small piece out of the read buffer, so that hyper could read
/// the connection again into the same buffer, was tried: hyper still
/// allocates a new one, because the request's header values and path are
/// slices of the same buffer and live as long as the request.
async fn collect(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body::Body as _;
    // What the body announced (its Content-Length), for one allocation
    // when it comes in pieces.
    let announced = usize::try_from(body.size_hint().lower())
        .unwrap_or(usize::MAX)
        .min(limit);
    let mut first: Option<Bytes> = None;
    let mut gathered: Vec<u8> = Vec::new();
    while !body.is_end_stream() {
        let Some(frame) = next_frame(&mut body).await? else {
            break;
        };
        let frame = frame.map_err(|error| ApiError::unreadable_body(&error.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let have = first.as_ref().map_or(gathered.len(), Bytes::len);
        if data.len() > limit - have {
            return Err(ApiError::body_too_large(limit));
        }
        match first.take() {
            None if gathered.is_empty() => first = Some(data),
            None => gathered.extend_from_slice(&data),
            Some(first) => {
                gathered.reserve(announced.max(first.len() + data.len()));
                gathered.extend_from_slice(&first);
                gathered.extend_from_slice(&data);
            }
        }
    }
    Ok(match first {
        Some(piece) => piece,
        None => Bytes::from(gathered),
    })
}

/// The body's next frame, or a 408 once `BODY_IDLE` has passed without
/// one. The timer is set only when a frame is not there at once, as it is
/// for most requests (their body came with their head).
async fn next_frame(
    body: &mut Body,
) -> Result<Option<Result<Frame<Bytes>, axum::Error>>, ApiError> {
    use http_body::Body as _;
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
            return Poll::Ready(Ok(frame));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(BODY_IDLE)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(ApiError::body_stalled(BODY_IDLE))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use http_body_util::StreamBody;

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers
    }

    /// A body sent as the given pieces, or failing after them.
    fn pieces(parts: &[&'static [u8]], fail: bool) -> Body {
        let mut frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = parts
            .iter()
            .map(|part| Ok(http_body::Frame::data(Bytes::from_static(part))))
            .collect();
        if fail {
            frames.push(Err(std::io::Error::other("connection reset")));
        }
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    /// A body whose pieces arrive `gap` apart, then (with `stall`) never
    /// another byte nor its end.
    fn slow(parts: &[&'static [u8]], gap: Duration, stall: bool) -> Body {
        let parts = parts.to_vec();
        let stream = async_stream(parts, gap, stall);
        Body::new(StreamBody::new(stream))
    }

    fn async_stream(
        parts: Vec<&'static [u8]>,
        gap: Duration,
        stall: bool,
    ) -> impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, std::io::Error>> {
        use futures_util::StreamExt as _;
        let pieces = futures_util::stream::iter(parts).then(move |part| async move {
            tokio::time::sleep(gap).await;
            Ok(http_body::Frame::data(Bytes::from_static(part)))
        });
        let rest = futures_util::stream::pending().take(usize::from(stall));
        pieces.chain(rest)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_refused_after_the_idle_time() {
        let started = tokio::time::Instant::now();
        let body = slow(&[b"{\"model\":", b"\"m\""], Duration::from_secs(1), true);
        let error = tokio::time::timeout(10 * BODY_IDLE, collect(body, 64))
            .await
            .expect("refused, not left waiting")
            .unwrap_err();
        assert_eq!(error.status, axum::http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(error.code, "request_timeout");
        // Its two pieces, then the whole idle time without a byte.
        assert_eq!(started.elapsed(), Duration::from_secs(2) + BODY_IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_that_keeps_arriving_is_read() {
        // Pieces just under the idle time apart: the timer is per piece.
        let gap = BODY_IDLE - Duration::from_secs(1);
        let read = collect(slow(&[b"{\"a\":", b"1", b"}"], gap, false), 64)
            .await
            .unwrap();
        assert_eq!(&read[..], b"{\"a\":1}");
    }

    #[tokio::test]
    async fn a_body_in_one_piece_is_that_piece() {
        let buffer = Bytes::from_static(b"{\"model\":\"m\"}GET / HTTP/1.1");
        let piece = buffer.slice(..13);
        let read = collect(Body::from(piece.clone()), 13).await.unwrap();
        assert_eq!(&read[..], b"{\"model\":\"m\"}");
        assert_eq!(read.as_ptr(), piece.as_ptr(), "no copy is made");
    }

    #[tokio::test]
    async fn a_single_piece_of_exactly_the_limit_is_read() {
        let read = collect(Body::from(Bytes::from_static(b"12345678")), 8)
            .await
            .unwrap();
        assert_eq!(&read[..], b"12345678");
    }

    /// Trailers carry no body bytes: they are passed over.
    #[tokio::test]
    async fn trailers_are_passed_over() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"{\"a\":"))),
            Ok(http_body::Frame::data(Bytes::from_static(b"1}"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let body = Body::new(StreamBody::new(futures_util::stream::iter(frames)));
        let read = collect(body, 1024).await.unwrap();
        assert_eq!(&read[..], b"{\"a\":1}");
    }

    #[tokio::test]
    async fn pieces_are_gathered_in_order() {
        let read = collect(pieces(&[b"{\"a\":", b"", b"1", b"}"], false), 1024)
            .await
            .unwrap();
        assert_eq!(&read[..], b"{\"a\":1}");
    }

    #[tokio::test]
    async fn the_limit_holds_across_pieces() {
        // exactly the limit is read; one byte more is refused
        let read = collect(pieces(&[b"12345", b"678"], false), 8)
            .await
            .unwrap();
        assert_eq!(&read[..], b"12345678");
        let error = collect(pieces(&[b"12345", b"6789"], false), 8)
            .await
            .unwrap_err();
        assert_eq!(error, ApiError::body_too_large(8));
        let error = collect(pieces(&[b"123456789"], false), 8)
            .await
            .unwrap_err();
        assert_eq!(error, ApiError::body_too_large(8));
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_unreadable() {
        let error = read_json_body(&json_headers(), pieces(&[b"{\"a\""], true), 1024)
            .await
            .unwrap_err();
        assert_eq!(
            error,
            ApiError::unreadable_body(&std::io::Error::other("connection reset").to_string())
        );
    }
}
