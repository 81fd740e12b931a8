//! HTTP/1.1 as the upstream client speaks it, against a peer on the other
//! end of an in-memory pipe that answers with exactly the bytes a test
//! gives, in the pieces it gives them.

use std::future::poll_fn;

use http::{Method, Request, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

type Answer = Response<Body<DuplexStream>>;

/// Sends a POST with `body` on a new connection whose peer, once it has
/// read the request's head, writes `pieces` one by one (yielding between
/// them) and then, when `close` is set, closes the connection. Gives the
/// answer and the request as the peer read it (its head, and as much of
/// its body as arrived with it).
async fn exchange(
    body: &[u8],
    pieces: &[&[u8]],
    close: bool,
) -> (Result<Answer, SendError>, Vec<u8>) {
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    let pieces: Vec<Vec<u8>> = pieces.iter().map(|piece| piece.to_vec()).collect();
    let peer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !seen.windows(4).any(|window| window == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            match far.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(count) => seen.extend_from_slice(&chunk[..count]),
            }
        }
        for piece in pieces {
            far.write_all(&piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        if close {
            drop(far);
        } else {
            // Kept open until the test is over.
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
        seen
    });
    let request = Request::post("http://upstream.test/v1/chat?x=1")
        .body(())
        .unwrap();
    let head = write_head(
        &request,
        Some(&HeaderValue::from_static("upstream.test")),
        body.len(),
    );
    let answer = Conn::new(near)
        .send(&head, body, &Method::POST, false)
        .await;
    // A peer that stays open is left to the test's runtime, which ends it.
    let seen = if close { peer.await.unwrap() } else { head };
    (answer, seen)
}

/// Reads a body to its end, or to its first error.
async fn read_all(body: &mut Body<DuplexStream>) -> Result<Vec<u8>, Error> {
    let mut all = Vec::new();
    while let Some(data) = poll_fn(|cx| body.poll_data(cx)).await {
        all.extend_from_slice(&data?);
    }
    Ok(all)
}

/// The answer's body ends with the connection before it is complete: an
/// error, and the connection is not kept.
async fn assert_cut_short(mut answer: Answer) {
    assert!(matches!(
        read_all(answer.body_mut()).await,
        Err(Error::ClosedInBody)
    ));
    assert!(answer.body_mut().take_reusable().is_none());
}

/// Splits `text` into pieces of `size` bytes.
fn pieces(text: &[u8], size: usize) -> Vec<&[u8]> {
    text.chunks(size).collect()
}

#[test]
fn a_requests_head_names_the_target_host_and_length_and_no_framing_of_its_own() {
    let request = Request::post("https://api.example.com:8443/v1/chat?api-version=1")
        .header("authorization", "Bearer key")
        .header("content-length", "999")
        .header("transfer-encoding", "chunked")
        .header("connection", "upgrade")
        .header("x-tag", "a")
        .header("x-tag", "b")
        .body(())
        .unwrap();
    let host = HeaderValue::from_static("api.example.com:8443");
    assert_eq!(
        String::from_utf8(write_head(&request, Some(&host), 12)).unwrap(),
        "POST /v1/chat?api-version=1 HTTP/1.1\r\nhost: api.example.com:8443\r\n\
         authorization: Bearer key\r\nx-tag: a\r\nx-tag: b\r\ncontent-length: 12\r\n\r\n"
    );
    // A Host of the request's own (a signature covers it) is kept as is.
    let signed = Request::post("https://bedrock.test")
        .header("host", "signed.test")
        .body(())
        .unwrap();
    assert_eq!(
        String::from_utf8(write_head(&signed, Some(&host), 0)).unwrap(),
        "POST / HTTP/1.1\r\nhost: signed.test\r\ncontent-length: 0\r\n\r\n"
    );
    let probe = Request::get("http://localhost/health").body(()).unwrap();
    assert_eq!(
        String::from_utf8(write_head(&probe, None, 0)).unwrap(),
        "GET /health HTTP/1.1\r\n\r\n"
    );
}

#[tokio::test]
async fn a_body_of_known_length_arriving_byte_by_byte_is_read_whole_and_its_connection_kept() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: r-1\r\n\
                   Content-Length: 11\r\n\r\n{\"ok\":true}";
    let (answer, seen) = exchange(b"{}", &pieces(answer, 1), true).await;
    let mut answer = answer.unwrap();
    assert!(String::from_utf8(seen).unwrap().starts_with(
        "POST /v1/chat?x=1 HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 2\r\n\r\n"
    ));
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.version(), Version::HTTP_11);
    assert_eq!(answer.headers()["content-type"], "application/json");
    assert_eq!(answer.body().exact_length(), Some(11));
    assert!(!answer.body().is_end());
    assert_eq!(read_all(answer.body_mut()).await.unwrap(), b"{\"ok\":true}");
    assert!(answer.body().is_end());
    assert!(answer.body_mut().take_reusable().is_some());
}

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_is_read_in_any_pieces() {
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n\
                          5;name=value\r\nhello\r\n7 ; ext\r\n, world\r\n\
                          0\r\nx-trailer: yes\r\n\r\n";
    for size in [1, 2, 3, 7, answer.len()] {
        let (answer, _) = exchange(b"{}", &pieces(answer, size), false).await;
        let mut answer = answer.unwrap();
        assert_eq!(answer.body().exact_length(), None);
        assert_eq!(read_all(answer.body_mut()).await.unwrap(), b"hello, world");
        assert!(answer.body().is_end(), "pieces of {size}");
        assert!(
            answer.body_mut().take_reusable().is_some(),
            "pieces of {size}"
        );
    }
}

#[tokio::test]
async fn a_chunked_body_whose_end_has_arrived_ends_with_its_last_data() {
    let (answer, _) = exchange(
        b"{}",
        &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nlast\r\n0\r\n\r\n"],
        false,
    )
    .await;
    let mut body = answer.unwrap().into_body();
    let data = poll_fn(|cx| body.poll_data(cx)).await.unwrap().unwrap();
    assert_eq!(data, "last");
    // Without reading on: the connection can go back to the pool at once.
    assert!(body.is_end());
    assert!(body.take_reusable().is_some());
}

#[tokio::test]
async fn a_body_framed_by_the_connections_end_is_read_to_it_and_the_connection_not_kept() {
    let (answer, _) = exchange(b"{}", &[b"HTTP/1.1 200 OK\r\n\r\nall of ", b"it"], true).await;
    let mut answer = answer.unwrap();
    assert_eq!(read_all(answer.body_mut()).await.unwrap(), b"all of it");
    assert!(answer.body().is_end());
    assert!(answer.body_mut().take_reusable().is_none());
}

#[tokio::test]
async fn connections_are_kept_only_when_the_answer_allows_it() {
    for (head, kept) in [
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n",
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\ncontent-length: 2\r\n\r\n",
            false,
        ),
        ("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n", false),
        (
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\n",
            true,
        ),
        // Both framings: chunked wins, and the connection is not trusted.
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n2\r\n",
            false,
        ),
    ] {
        let answer = format!(
            "{head}ok{}",
            if head.contains("chunked") {
                "\r\n0\r\n\r\n"
            } else {
                ""
            }
        );
        let (answer, _) = exchange(b"{}", &[answer.as_bytes()], false).await;
        let mut answer = answer.unwrap();
        assert_eq!(read_all(answer.body_mut()).await.unwrap(), b"ok", "{head}");
        assert_eq!(answer.body_mut().take_reusable().is_some(), kept, "{head}");
    }
}

#[tokio::test]
async fn interim_answers_are_skipped_and_bodiless_statuses_have_no_body() {
    let (answer, _) = exchange(
        b"{}",
        &[
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ],
        false,
    )
    .await;
    let mut answer = answer.unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    assert!(answer.headers().is_empty());
    assert!(answer.body().is_end());
    assert_eq!(read_all(answer.body_mut()).await.unwrap(), b"");
    assert!(answer.body_mut().take_reusable().is_some());
}

#[tokio::test]
async fn many_headers_and_long_ones_are_read_within_the_limits() {
    // An answer that failed keeps all its headers (a successful one only
    // those read: below).
    let mut head = String::from("HTTP/1.1 503 Service Unavailable\r\n");
    for index in 0..200 {
        head.push_str(&format!("x-header-{index}: {}\r\n", "v".repeat(500)));
    }
    head.push_str("content-length: 0\r\n\r\n");
    let (answer, _) = exchange(b"{}", &pieces(head.as_bytes(), 4096), false).await;
    let answer = answer.unwrap();
    assert_eq!(answer.headers().len(), 201);
    assert_eq!(answer.headers()["x-header-199"], "v".repeat(500));

    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for index in 0..300 {
        head.push_str(&format!("x-header-{index}: v\r\n"));
    }
    head.push_str("\r\n");
    let (answer, _) = exchange(b"{}", &[head.as_bytes()], false).await;
    let failed = answer.err().unwrap();
    assert_eq!(
        failed.error.to_string(),
        "the upstream's HTTP/1.1 answer is invalid: more than 256 headers"
    );
    assert!(!failed.unsent);

    let endless = format!("HTTP/1.1 200 OK\r\nx-long: {}", "v".repeat(300 * 1024));
    let (answer, _) = exchange(b"{}", &pieces(endless.as_bytes(), 16 * 1024), false).await;
    assert_eq!(
        answer.err().unwrap().error.to_string(),
        "the upstream's HTTP/1.1 answer is invalid: the head is larger than 256 KiB"
    );
}

#[tokio::test]
async fn a_successful_answer_keeps_the_headers_read_of_it_and_a_failed_one_all() {
    let read = [
        ("Content-Type", "application/json"),
        ("X-RateLimit-Limit-Requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-limit-tokens", "2000000"),
        ("X-RATELIMIT-REMAINING-TOKENS", "1999975"),
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "49"),
        ("anthropic-ratelimit-tokens-limit", "40000"),
        ("anthropic-ratelimit-tokens-remaining", "39000"),
        ("x-amzn-ErrorType", "ThrottlingException"),
        ("Connection", "keep-alive"),
        ("content-length", "2"),
    ];
    let unread = [
        ("x-request-id", "req_0123"),
        ("openai-processing-ms", "281"),
        ("set-cookie", "__cf_bm=abc; path=/"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("retry-after", "1"),
        ("server", "cloudflare"),
        ("content-typ", "text/plain"),
        ("x-ratelimit-limit-tokenz", "1"),
    ];
    for status in [
        "200 OK",
        "206 Partial Content",
        "429 Too Many Requests",
        "302 Found",
    ] {
        let mut head = format!("HTTP/1.1 {status}\r\n");
        for (name, value) in read.iter().chain(&unread) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n{}");
        let (answer, _) = exchange(b"{}", &[head.as_bytes()], false).await;
        let mut answer = answer.unwrap();
        let headers = answer.headers();
        for (name, value) in read {
            assert_eq!(headers[name], value, "{status}: {name}");
        }
        let success = status.starts_with('2');
        for (name, value) in unread {
            if success {
                assert!(headers.get(name).is_none(), "{status}: {name} kept");
            } else {
                assert_eq!(headers[name], value, "{status}: {name}");
            }
        }
        assert_eq!(
            headers.len(),
            read.len() + if success { 0 } else { unread.len() }
        );
        assert_eq!(read_all(answer.body_mut()).await.unwrap(), b"{}");
    }
}

#[tokio::test]
async fn malformed_answers_are_errors_that_name_what_is_wrong() {
    for (answer, expected) in [
        (
            &b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"[..],
            "a malformed head",
        ),
        (b"SMTP ready\r\n\r\n", "a malformed head"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            "differing Content-Lengths",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok",
            "its Content-Length",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "an unasked-for protocol switch",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "a transfer coding other than chunked, or none named",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: ,\r\n\r\n",
            "a transfer coding other than chunked, or none named",
        ),
    ] {
        let (answer, _) = exchange(b"{}", &[answer], false).await;
        let failed = answer.err().unwrap();
        assert_eq!(
            failed.error.to_string(),
            format!("the upstream's HTTP/1.1 answer is invalid: {expected}")
        );
    }
    for (answer, expected) in [
        (
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
            "a chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX",
            "a chunk not followed by CRLF",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n",
            "a chunk size",
        ),
    ] {
        let (answer, _) = exchange(b"{}", &[answer], false).await;
        let mut answer = answer.unwrap();
        let error = read_all(answer.body_mut()).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("the upstream's HTTP/1.1 answer is invalid: {expected}")
        );
        assert!(answer.body().is_end());
        assert!(answer.body_mut().take_reusable().is_none());
    }
}

#[tokio::test]
async fn a_connection_that_closes_early_is_an_error_of_its_own() {
    let (answer, _) = exchange(b"{}", &[b"HTTP/1.1 200 OK\r\ncontent-le"], true).await;
    let failed = answer.err().unwrap();
    assert!(
        matches!(failed.error, Error::ClosedBeforeAnswer),
        "{failed:?}"
    );
    assert!(!failed.unsent);

    let (answer, _) = exchange(
        b"{}",
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"],
        true,
    )
    .await;
    assert_cut_short(answer.unwrap()).await;
}

#[tokio::test]
async fn an_answer_that_comes_before_the_request_is_taken_ends_the_write() {
    // The peer answers on reading the head alone and never reads the body,
    // which is far larger than the pipe holds.
    let body = vec![b'x'; 4 * 1024 * 1024];
    let (answer, _) = exchange(
        &body,
        &[b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo long"],
        false,
    )
    .await;
    let mut answer = answer.unwrap();
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(read_all(answer.body_mut()).await.unwrap(), b"too long");
    // The rest of the request was never written: the connection is done.
    assert!(answer.body_mut().take_reusable().is_none());
}

#[tokio::test]
async fn an_idle_connection_is_open_until_its_peer_closes_or_speaks_out_of_turn() {
    let (near, far) = tokio::io::duplex(1024);
    let mut conn = Conn::new(near);
    assert!(conn.is_open());
    assert!(conn.is_open());
    drop(far);
    assert!(!conn.is_open());

    let (near, mut far) = tokio::io::duplex(1024);
    let mut conn = Conn::new(near);
    far.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        .await
        .unwrap();
    assert!(!conn.is_open());
}

#[tokio::test]
async fn a_failed_write_says_whether_any_of_the_request_left() {
    let (near, far) = tokio::io::duplex(1024);
    drop(far);
    let failed = Conn::new(near)
        .send(b"POST / HTTP/1.1\r\n\r\n", b"", &Method::POST, false)
        .await
        .err()
        .unwrap();
    assert!(failed.unsent, "{failed:?}");
}

#[test]
fn header_values_are_slices_of_the_head_not_copies() {
    let mut buffer = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-type: one\r\n\r\nrest"[..]);
    let start = buffer.as_ptr() as usize;
    let headers = parse_head(&mut buffer, false).unwrap().unwrap().headers;
    let value = headers["content-type"].as_bytes();
    assert_eq!(value, b"one");
    assert_eq!(value.as_ptr() as usize, start + 31);
    assert_eq!(&buffer[..], b"rest");
}

#[tokio::test]
async fn a_body_followed_by_bytes_nobody_asked_for_leaves_its_connection_unkept() {
    let (answer, _) = exchange(
        b"{}",
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"],
        false,
    )
    .await;
    let mut answer = answer.unwrap();
    assert_eq!(read_all(answer.body_mut()).await.unwrap(), b"ok");
    assert!(answer.body().is_end());
    assert!(answer.body_mut().take_reusable().is_none());
}

#[tokio::test]
async fn long_chunk_lines_and_a_close_inside_a_chunk_fail_the_body() {
    let long = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;{}\r\nok\r\n0\r\n\r\n",
        "x".repeat(5000)
    );
    let (answer, _) = exchange(b"{}", &[long.as_bytes()], false).await;
    let error = read_all(answer.unwrap().body_mut()).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "the upstream's HTTP/1.1 answer is invalid: a chunk line too long"
    );
    let (answer, _) = exchange(
        b"{}",
        &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nhalf"],
        true,
    )
    .await;
    assert_cut_short(answer.unwrap()).await;
}

#[tokio::test]
async fn bodiless_answers_ignore_their_length_and_old_ones_without_one_end_with_the_connection() {
    let (answer, _) = exchange(
        b"{}",
        &[b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"],
        false,
    )
    .await;
    let mut answer = answer.unwrap();
    assert!(answer.body().is_end());
    assert!(answer.body_mut().take_reusable().is_some());

    let (answer, _) = exchange(b"{}", &[b"HTTP/1.0 200 OK\r\n\r\nold", b" style"], true).await;
    let mut answer = answer.unwrap();
    assert_eq!(answer.version(), Version::HTTP_10);
    assert_eq!(read_all(answer.body_mut()).await.unwrap(), b"old style");
    assert!(answer.body_mut().take_reusable().is_none());
}

#[tokio::test]
async fn an_interim_answer_during_the_upload_lets_the_request_be_written_whole() {
    // The pipe holds far less than the body: the write waits on the peer,
    // which says `100 Continue` at once, then reads the body, then answers.
    let (near, mut far) = tokio::io::duplex(1024);
    let body = vec![b'x'; 64 * 1024];
    let peer = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while !seen.windows(4).any(|window| window == b"\r\n\r\n") {
            let count = far.read(&mut chunk).await.unwrap();
            seen.extend_from_slice(&chunk[..count]);
        }
        far.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        let head = seen
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .unwrap()
            + 4;
        let mut read = seen.len() - head;
        while read < 64 * 1024 {
            read += far.read(&mut chunk).await.unwrap();
        }
        far.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntook")
            .await
            .unwrap();
        read
    });
    let request = Request::post("http://upstream.test/v1").body(()).unwrap();
    let head = write_head(&request, None, body.len());
    let mut answer = Conn::new(near)
        .send(&head, &body, &Method::POST, false)
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(read_all(answer.body_mut()).await.unwrap(), b"took");
    assert_eq!(peer.await.unwrap(), 64 * 1024);
    assert!(answer.body_mut().take_reusable().is_some());
}

#[test]
fn a_target_with_a_query_and_no_path_starts_at_the_root() {
    let request = Request::post("https://upstream.test?x=1").body(()).unwrap();
    assert!(
        String::from_utf8(write_head(&request, None, 0))
            .unwrap()
            .starts_with("POST /?x=1 HTTP/1.1\r\n")
    );
}

#[test]
fn a_final_head_is_told_from_interim_ones_and_from_a_partial_one() {
    assert!(!final_head_arrived(b"HTTP/1.1 100 Continue\r\n\r\n"));
    assert!(!final_head_arrived(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload"
    ));
    assert!(final_head_arrived(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\n\r\n"
    ));
    assert!(final_head_arrived(b"HTTP/1.1 413 Payload Too Large\n\n"));
    // Not a head at all: reading it as one tells what is wrong.
    assert!(final_head_arrived(b"garbage\r\n\r\n"));
}

/// A socket whose writes are all taken in but never flushed (as TLS takes
/// a request into its records while the socket beneath is full); reads
/// come from the pipe.
struct NeverFlushed(DuplexStream);

impl AsyncRead for NeverFlushed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NeverFlushed {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

#[tokio::test]
async fn an_answer_that_comes_while_the_request_waits_to_be_flushed_is_read() {
    let (near, mut far) = tokio::io::duplex(1024);
    far.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let request = Request::post("http://upstream.test/v1").body(()).unwrap();
    let head = write_head(&request, None, 4);
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        Conn::new(NeverFlushed(near)).send(&head, b"body", &Method::POST, false),
    )
    .await
    .expect("the answer is read while the flush waits")
    .unwrap();
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let mut body = answer.into_body();
    assert!(body.take_reusable().is_none());
}
