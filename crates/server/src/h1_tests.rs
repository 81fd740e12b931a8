//! HTTP/1.1 as the gateway serves it, to a client on the other end of an
//! in-memory pipe that sends exactly the bytes a test gives, in the pieces
//! it gives them, and reads what comes back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::HeaderValue;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::*;

/// Serves `service` on one end of an in-memory pipe; the test is the
/// client on the other.
fn start<S, F>(service: S) -> (DuplexStream, CancellationToken, JoinHandle<Option<Bytes>>)
where
    S: FnMut(Request) -> F + Send + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    start_idling(service, Duration::from_secs(600))
}

/// As `start`, closing the connection after `idle_timeout` between
/// requests.
fn start_idling<S, F>(
    service: S,
    idle_timeout: Duration,
) -> (DuplexStream, CancellationToken, JoinHandle<Option<Bytes>>)
where
    S: FnMut(Request) -> F + Send + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let (near, far) = tokio::io::duplex(256 * 1024);
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    let served = tokio::spawn(async move {
        match serve(near, service, idle_timeout, &stopping).await {
            Ended::Closed => None,
            Ended::Http2(_, read) => Some(read),
        }
    });
    (far, stop, served)
}

/// Echoes the request: its method, target and body, and one header.
async fn echo(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return (StatusCode::BAD_REQUEST, format!("body error: {error}")).into_response();
        }
    };
    let seen = parts
        .headers
        .get("x-seen")
        .map_or("-", |value| value.to_str().unwrap());
    let text = format!(
        "{} {} {seen} {}",
        parts.method,
        parts.uri,
        String::from_utf8_lossy(&body)
    );
    Response::new(Body::from(text))
}

/// Reads until `count` answers have fully arrived (each framed by its
/// `content-length` or chunked coding), or the connection ends.
async fn read_answers(far: &mut DuplexStream, count: usize) -> String {
    let mut text = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while complete_answers(&text) < count {
        let mut piece = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, far.read(&mut piece))
            .await
            .expect("the answers arrive")
            .unwrap();
        if read == 0 {
            break;
        }
        text.extend_from_slice(&piece[..read]);
    }
    String::from_utf8(text).unwrap()
}

fn complete_answers(mut text: &[u8]) -> usize {
    let mut count = 0;
    loop {
        let Some(end) = text.windows(4).position(|window| window == b"\r\n\r\n") else {
            return count;
        };
        let head = String::from_utf8_lossy(&text[..end]).to_ascii_lowercase();
        let rest = &text[end + 4..];
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map(|length| length.trim().parse::<usize>().unwrap());
        let taken = if let Some(length) = length {
            if head.starts_with("http/1.1 1") || rest.len() < length {
                if head.starts_with("http/1.1 1") {
                    0
                } else {
                    return count;
                }
            } else {
                length
            }
        } else if head.contains("transfer-encoding: chunked") {
            match rest.windows(5).position(|window| window == b"0\r\n\r\n") {
                Some(at) => at + 5,
                None => return count,
            }
        } else {
            0
        };
        if !head.starts_with("http/1.1 1") {
            count += 1;
        }
        text = &rest[taken..];
    }
}

/// Reads until the other side closes the connection.
async fn read_to_close(far: &mut DuplexStream) -> String {
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), far.read_to_end(&mut text))
        .await
        .expect("the connection closes")
        .unwrap();
    String::from_utf8(text).unwrap()
}

#[tokio::test]
async fn requests_on_a_kept_connection_are_answered_in_turn() {
    let (mut far, _stop, served) = start(echo);
    far.write_all(
        b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nX-Seen: yes\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let first = read_answers(&mut far, 1).await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(first.contains("\r\ncontent-length: 27\r\n"), "{first}");
    assert!(first.contains("\r\ndate: "), "{first}");
    assert!(!first.contains("connection:"), "{first}");
    assert!(
        first.ends_with("\r\n\r\nPOST /v1/chat?x=1 yes hello"),
        "{first}"
    );
    far.write_all(b"GET /two HTTP/1.1\r\n\r\n").await.unwrap();
    let second = read_answers(&mut far, 1).await;
    assert!(second.ends_with("\r\n\r\nGET /two - "), "{second}");
    drop(far);
    assert!(served.await.unwrap().is_none());
}

#[tokio::test]
async fn pipelined_requests_get_their_answers_in_order() {
    let (mut far, _stop, _served) = start(echo);
    far.write_all(
        b"\r\nPOST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\n1POST /b HTTP/1.1\r\nContent-Length: 1\r\n\r\n2GET /c HTTP/1.1\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_answers(&mut far, 3).await;
    let bodies: Vec<&str> = text
        .split("HTTP/1.1 200 OK")
        .skip(1)
        .map(|answer| answer.rsplit("\r\n\r\n").next().unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["POST /a - 1", "POST /b - 2", "GET /c - "],
        "{text}"
    );
}

#[tokio::test]
async fn a_chunked_body_sent_a_byte_at_a_time_is_read_whole() {
    let (mut far, _stop, _served) = start(echo);
    let request: &[u8] = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    for byte in request {
        far.write_all(&[*byte]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let text = read_answers(&mut far, 1).await;
    assert!(text.ends_with("POST /c - hello world"), "{text}");
    // The connection carries another request.
    far.write_all(b"GET /next HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(read_answers(&mut far, 1).await.ends_with("GET /next - "));
}

#[tokio::test]
async fn a_body_that_arrives_after_its_head_is_streamed_to_the_service() {
    let (mut far, _stop, _served) = start(echo);
    far.write_all(b"POST /s HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    far.write_all(b"56789").await.unwrap();
    let text = read_answers(&mut far, 1).await;
    assert!(text.ends_with("POST /s - 0123456789"), "{text}");
}

#[tokio::test]
async fn a_client_that_expects_100_continue_is_asked_for_its_body_when_it_is_read() {
    let (mut far, _stop, _served) = start(echo);
    far.write_all(b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; CONTINUE.len()];
    tokio::time::timeout(Duration::from_secs(5), far.read_exact(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&interim, CONTINUE);
    far.write_all(b"ok").await.unwrap();
    assert!(read_answers(&mut far, 1).await.ends_with("POST /e - ok"));
}

#[tokio::test]
async fn an_answer_given_without_reading_the_body_sends_no_continue_and_closes() {
    let (mut far, _stop, served) =
        start(|_request: Request| async { (StatusCode::UNAUTHORIZED, "no").into_response() });
    far.write_all(b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2000\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut far).await;
    assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    served.await.unwrap();
}

#[tokio::test]
async fn a_streamed_answer_is_chunked_and_each_piece_leaves_as_it_is_made() {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    let receiver = std::sync::Mutex::new(Some(receiver));
    let (mut far, _stop, _served) = start(move |_request: Request| {
        let receiver = receiver.lock().unwrap().take().unwrap();
        async move {
            let frames = tokio_stream_of(receiver);
            Response::new(Body::new(StreamBody::new(frames)))
        }
    });
    far.write_all(b"GET /stream HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    sender
        .send(Bytes::from_static(b"data: one\n\n"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: one") {
        let mut piece = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), far.read(&mut piece))
            .await
            .expect("the first piece leaves before the stream ends")
            .unwrap();
        seen.extend_from_slice(&piece[..read]);
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        head.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\nb\r\ndata: one\n\n\r\n"), "{head}");
    sender
        .send(Bytes::from_static(b"data: two\n\n"))
        .await
        .unwrap();
    drop(sender);
    let mut tail = Vec::new();
    while !String::from_utf8_lossy(&tail).ends_with("0\r\n\r\n") {
        let mut piece = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), far.read(&mut piece))
            .await
            .unwrap()
            .unwrap();
        assert!(read > 0, "the stream ends with its last chunk");
        tail.extend_from_slice(&piece[..read]);
    }
    assert_eq!(
        String::from_utf8_lossy(&tail),
        "b\r\ndata: two\n\n\r\n0\r\n\r\n"
    );
}

/// The frames of a channel's pieces, as a body stream.
fn tokio_stream_of(
    mut receiver: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send {
    futures_util::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|piece| piece.map(|data| Ok(Frame::data(data))))
    })
}

/// Counts its drops: how a test sees that the service's work was cancelled.
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

async fn wait_for(count: &AtomicUsize, expected: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while count.load(Ordering::SeqCst) != expected {
        assert!(tokio::time::Instant::now() < deadline, "never dropped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_before_its_answer_cancels_the_service() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counted = drops.clone();
    let (mut far, _stop, served) = start(move |_request: Request| {
        let guard = Dropped(counted.clone());
        async move {
            std::future::pending::<()>().await;
            drop(guard);
            Response::new(Body::empty())
        }
    });
    far.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(far);
    wait_for(&drops, 1).await;
    served.await.unwrap();
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_drops_the_answers_body() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counted = drops.clone();
    let (mut far, _stop, served) = start(move |_request: Request| {
        let guard = Dropped(counted.clone());
        async move {
            let first = futures_util::stream::once(async {
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"first")))
            });
            let never = futures_util::stream::pending();
            let body = first.chain(never).map(move |frame| {
                let _held = &guard;
                frame
            });
            Response::new(Body::new(StreamBody::new(body)))
        }
    });
    far.write_all(b"GET /stream HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut piece = [0u8; 1024];
    let read = far.read(&mut piece).await.unwrap();
    assert!(String::from_utf8_lossy(&piece[..read]).contains("first"));
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(far);
    wait_for(&drops, 1).await;
    served.await.unwrap();
}

#[tokio::test]
async fn malformed_and_oversized_heads_are_refused_with_an_error_object() {
    let many: String = (0..MAX_HEADERS + 1)
        .map(|at| format!("x-h{at}: v\r\n"))
        .collect();
    let huge = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    for (request, status, code) in [
        (
            "GET / HTTP/1.1\r\nbad header\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed_request",
        ),
        (
            "GET\x01 / HTTP/1.1\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed_request",
        ),
        (
            format!("GET / HTTP/1.1\r\n{many}\r\n"),
            "431 Request Header Fields Too Large",
            "headers_too_large",
        ),
        (
            huge,
            "431 Request Header Fields Too Large",
            "headers_too_large",
        ),
        (
            "GET / HTTP/3.0\r\n\r\n".to_owned(),
            "505 HTTP Version Not Supported",
            "http_version_not_supported",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed_request",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed_request",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed_request",
        ),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed_request",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed_request",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed_request",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed_request",
        ),
    ] {
        let (mut far, _stop, served) = start(echo);
        eprintln!("{:?}", &request[..request.len().min(60)]);
        far.write_all(request.as_bytes()).await.unwrap();
        // Done sending: the connection need not linger for more.
        far.shutdown().await.unwrap();
        let text = read_to_close(&mut far).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{request:.60}: {text}"
        );
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(
            text.contains("\r\ncontent-type: application/json\r\n"),
            "{text}"
        );
        assert!(text.contains(&format!("\"code\":\"{code}\"")), "{text}");
        served.await.unwrap();
    }
}

#[tokio::test]
async fn a_length_beside_chunked_coding_is_ignored_and_the_connection_closed() {
    let (mut far, _stop, served) = start(echo);
    far.write_all(
        b"POST /t HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_to_close(&mut far).await;
    assert!(text.ends_with("POST /t - ab"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    served.await.unwrap();
}

#[tokio::test]
async fn http_1_0_clients_are_answered_in_their_terms() {
    // Without keep-alive, the connection closes after the answer.
    let (mut far, _stop, served) = start(echo);
    far.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let text = read_to_close(&mut far).await;
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    served.await.unwrap();

    // With it, the connection is kept and the answer says so.
    let (mut far, _stop, _served) = start(echo);
    far.write_all(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let text = read_answers(&mut far, 1).await;
    assert!(text.contains("\r\nconnection: keep-alive\r\n"), "{text}");
    far.write_all(b"GET /again HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    assert!(read_answers(&mut far, 1).await.ends_with("GET /again - "));

    // `close` wins over `keep-alive`.
    let (mut far, _stop, served) = start(echo);
    far.write_all(b"GET /old HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut far).await;
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    served.await.unwrap();

    // A stream, which HTTP/1.0 cannot chunk, ends with the connection.
    let (mut far, _stop, served) = start(|_request: Request| async {
        let pieces = futures_util::stream::iter([
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"one "))),
            Ok(Frame::data(Bytes::from_static(b"two"))),
        ]);
        Response::new(Body::new(StreamBody::new(pieces)))
    });
    far.write_all(b"GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut far).await;
    assert!(!text.contains("chunked"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\none two"), "{text}");
    served.await.unwrap();
}

#[tokio::test]
async fn head_answers_tell_the_length_without_a_body() {
    let (mut far, _stop, _served) =
        start(|_request: Request| async { Response::new(Body::from("twelve bytes")) });
    far.write_all(b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut text = Vec::new();
    while !String::from_utf8_lossy(&text).ends_with("twelve bytes") {
        let mut piece = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), far.read(&mut piece))
            .await
            .unwrap()
            .unwrap();
        text.extend_from_slice(&piece[..read]);
    }
    let text = String::from_utf8(text).unwrap();
    // The HEAD answer's head, then at once the GET answer's.
    let (head_answer, get_answer) = text.split_at(text.find("\r\n\r\n").unwrap() + 4);
    assert!(head_answer.contains("\r\ncontent-length: 12\r\n"), "{text}");
    assert!(get_answer.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(get_answer.ends_with("\r\n\r\ntwelve bytes"), "{text}");
}

#[tokio::test]
async fn a_stop_closes_idle_connections_and_lets_busy_ones_finish() {
    // Idle: closed at once.
    let (mut far, stop, served) = start(echo);
    far.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
    read_answers(&mut far, 1).await;
    stop.cancel();
    assert_eq!(read_to_close(&mut far).await, "");
    served.await.unwrap();

    // Busy: its answer is written, saying the connection closes.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = std::sync::Mutex::new(Some(released));
    let (mut far, stop, served) = start(move |_request: Request| {
        let released = released.lock().unwrap().take().unwrap();
        async move {
            released.await.unwrap();
            Response::new(Body::from("done"))
        }
    });
    far.write_all(b"GET /b HTTP/1.1\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.cancel();
    release.send(()).unwrap();
    let text = read_to_close(&mut far).await;
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.ends_with("done"), "{text}");
    served.await.unwrap();
}

#[tokio::test]
async fn a_connection_that_opens_with_http2s_preface_is_handed_back() {
    let (mut far, _stop, served) = start(echo);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04";
    far.write_all(preface).await.unwrap();
    let read = served.await.unwrap().expect("handed back");
    assert!(preface.starts_with(&read), "{read:?}");
    assert!(read.starts_with(HTTP2_PREFACE));
}

#[tokio::test]
async fn header_values_and_the_body_are_slices_of_the_read_buffer() {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let noted = seen.clone();
    let (mut far, _stop, _served) = start(move |request: Request| {
        let noted = noted.clone();
        async move {
            let header: HeaderValue = request.headers()["x-seen"].clone();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let header_at = header.as_bytes().as_ptr() as usize;
            let body_at = body.as_ptr() as usize;
            *noted.lock().unwrap() = Some(body_at.abs_diff(header_at));
            Response::new(Body::empty())
        }
    });
    far.write_all(b"POST / HTTP/1.1\r\nX-Seen: abc\r\nContent-Length: 4\r\n\r\nbody")
        .await
        .unwrap();
    read_answers(&mut far, 1).await;
    let distance = seen.lock().unwrap().unwrap();
    // In one buffer, a few dozen bytes apart.
    assert!(distance < 64, "{distance}");
}

#[tokio::test]
async fn an_answer_that_says_close_closes_the_connection() {
    let (mut far, _stop, served) = start(|_request: Request| async {
        let mut response = Response::new(Body::from("bye"));
        response.headers_mut().insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, Close"),
        );
        response
    });
    far.write_all(b"GET / HTTP/1.1\r\n\r\nGET /never HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut far).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 1, "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(!text.contains("Upgrade"), "{text}");
    served.await.unwrap();
}

#[tokio::test]
async fn broken_chunked_framing_fails_the_body_and_closes_the_connection() {
    for (framing, what) in [
        // A chunk size that is not one, before any data and after some.
        (&b"zz\r\n5\r\nhello\r\n0\r\n\r\n"[..], "a chunk size"),
        (b"5\r\nhello\r\nzz\r\n0\r\n\r\n", "a chunk size"),
        // Lines ended by a bare LF, or with a CR inside.
        (b"3;x\nabc\r\n0\r\n\r\n", "CRLF"),
        (b"3\r\nabc\r\n0\n\n", "CRLF"),
        (b"3;a\rb\r\nabc\r\n0\r\n\r\n", "CRLF"),
        (b"3\r\nabcX\r\n0\r\n\r\n", "CRLF"),
    ] {
        let (mut far, _stop, served) = start(echo);
        far.write_all(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        far.write_all(framing).await.unwrap();
        // (Not shut: a client that stops sending is taken as gone once
        // its body is read, and the connection lingers a second instead.)
        let text = read_to_close(&mut far).await;
        let shown = String::from_utf8_lossy(framing);
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{shown:?}: {text}"
        );
        assert!(
            text.contains("body error: its chunked framing is invalid"),
            "{shown:?}: {text}"
        );
        assert!(text.contains(what), "{shown:?}: {text}");
        assert!(
            text.contains("\r\nconnection: close\r\n"),
            "{shown:?}: {text}"
        );
        served.await.unwrap();
    }
}

#[tokio::test]
async fn no_interim_answer_follows_the_final_one() {
    // The answer's body is the request's: it asks for it only once the
    // head has gone, which is too late for `100 Continue`.
    let (mut far, _stop, _served) =
        start(|request: Request| async move { Response::new(request.into_body()) });
    far.write_all(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Like curl, the client sends its body when no interim answer comes.
    far.write_all(b"hello").await.unwrap();
    let text = read_answers(&mut far, 1).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
}

#[tokio::test]
async fn a_body_still_read_elsewhere_fails_when_its_connection_ends() {
    let (sender, outcome) = tokio::sync::oneshot::channel();
    let sender = std::sync::Mutex::new(Some(sender));
    let (mut far, _stop, served) = start(move |request: Request| {
        let sender = sender.lock().unwrap().take().unwrap();
        tokio::spawn(async move {
            let _ = sender.send(request.into_body().collect().await.map(|_| ()));
        });
        async { Response::new(Body::from("answered early")) }
    });
    far.write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    let text = read_answers(&mut far, 1).await;
    assert!(text.ends_with("answered early"), "{text}");
    let read = tokio::time::timeout(Duration::from_secs(5), outcome)
        .await
        .expect("the reader is not left waiting")
        .unwrap();
    assert!(read.is_err());
    drop(far);
    served.await.unwrap();
}

#[tokio::test]
async fn an_answer_that_breaks_is_cut_short_not_ended() {
    let (mut far, _stop, served) = start(|_request: Request| async {
        let pieces = futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"partial"))),
            Err(std::io::Error::other("upstream reset")),
        ]);
        Response::new(Body::new(StreamBody::new(pieces)))
    });
    far.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let text = read_to_close(&mut far).await;
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.ends_with("7\r\npartial\r\n"), "{text}");
    served.await.unwrap();
}

#[tokio::test]
async fn bodiless_statuses_carry_no_length() {
    let (mut far, _stop, _served) = start(|_request: Request| async {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        response
    });
    far.write_all(b"DELETE /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let text = read_answers(&mut far, 2).await;
    assert_eq!(
        text.matches("HTTP/1.1 204 No Content\r\n").count(),
        2,
        "{text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("content-length"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stop_closes_a_connection_whose_head_is_still_arriving() {
    let (mut far, stop, served) = start(echo);
    far.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.cancel();
    assert_eq!(read_to_close(&mut far).await, "");
    served.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_head_that_takes_too_long_closes_the_connection() {
    let (mut far, _stop, served) = start(echo);
    far.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let mut text = Vec::new();
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(120), far.read_to_end(&mut text))
        .await
        .expect("the connection closes")
        .unwrap();
    assert!(text.is_empty());
    assert!(started.elapsed() >= HEAD_TIMEOUT, "{:?}", started.elapsed());
    served.await.unwrap();
}

#[tokio::test]
async fn http2s_preface_in_pieces_is_still_handed_back() {
    let (mut far, _stop, served) = start(echo);
    far.write_all(b"PRI * HTTP/2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    far.write_all(b".0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let read = served.await.unwrap().expect("handed back");
    assert_eq!(&read[..], HTTP2_PREFACE);
}

#[tokio::test]
async fn a_request_with_many_headers_is_read_whole() {
    let (mut far, _stop, _served) = start(echo);
    let many: String = (0..MAX_HEADERS - 1)
        .map(|at| format!("x-h{at}: v\r\n"))
        .collect();
    far.write_all(format!("GET /many HTTP/1.1\r\n{many}x-seen: last\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let text = read_answers(&mut far, 1).await;
    assert!(text.ends_with("GET /many last "), "{text}");
}

#[tokio::test]
async fn a_length_beside_chunked_coding_is_not_shown_to_the_service() {
    let (mut far, _stop, _served) = start(|request: Request| async move {
        let length = request.headers().get(header::CONTENT_LENGTH).cloned();
        Response::new(Body::from(format!("{length:?}")))
    });
    far.write_all(
        b"POST / HTTP/1.1\r\nContent-Length: 99999\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(read_answers(&mut far, 1).await.ends_with("None"));
}

#[tokio::test(start_paused = true)]
async fn a_connection_idle_for_the_timeout_is_closed_and_one_in_use_is_not() {
    let (mut far, _stop, served) = start_idling(echo, Duration::from_secs(10));
    // Requests 8 s apart keep it open past its first 10 s.
    for path in ["/a", "/b", "/c"] {
        far.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let text = read_answers(&mut far, 1).await;
        assert!(text.ends_with(&format!("GET {path} - ")), "{text}");
        tokio::time::sleep(Duration::from_secs(8)).await;
    }
    // Then idle: closed 10 s after its last answer.
    let idle_from = tokio::time::Instant::now() - Duration::from_secs(8);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), far.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed")
        .unwrap();
    assert!(rest.is_empty());
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_secs(10) && idle < Duration::from_secs(11),
        "{idle:?}"
    );
    served.await.unwrap();
}

/// A long pipelined burst spends the connection task's cooperative budget
/// before it goes idle; the idle timer must still be watching then.
#[tokio::test(start_paused = true)]
async fn a_connection_idle_after_a_long_burst_is_still_closed() {
    let (mut far, _stop, served) = start_idling(echo, Duration::from_secs(10));
    for burst in [127, 128, 300] {
        let requests = "GET /h HTTP/1.1\r\n\r\n".repeat(burst);
        far.write_all(requests.as_bytes()).await.unwrap();
        let text = read_answers(&mut far, burst).await;
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), burst);
    }
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), far.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed")
        .unwrap();
    served.await.unwrap();
}

#[test]
fn a_heads_end_is_looked_for_only_in_what_is_new() {
    assert!(!head_may_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
    assert!(head_may_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0));
    assert!(head_may_end(b"GET / HTTP/1.1\n\n", 0));
    // The ending began before what is new.
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for scanned in head.len() - 4..head.len() {
        assert!(head_may_end(head, scanned), "{scanned}");
    }
    // An empty line wholly in what was looked at is not looked at again.
    assert!(!head_may_end(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n", 8));
}

#[tokio::test]
async fn the_gateways_header_lines_are_written_into_the_head_once() {
    let (mut far, _stop, _served) = start(|_request: Request| async {
        let mut response = Response::new(Body::from("hello"));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let mut lines = HeadLines::new();
        lines.push(
            crate::head_lines::LineStart::new("x-switchboard-deployment: "),
            b"east",
        );
        lines.push_counted(
            crate::head_lines::LineStart::new("x-switchboard-attempts: "),
            2,
            b"",
        );
        lines.attach(&mut response);
        response
    });
    far.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let text = read_answers(&mut far, 1).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "hello");
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"));
    let names: Vec<&str> = lines.map(|line| line.split_once(": ").unwrap().0).collect();
    assert_eq!(
        names,
        [
            "content-type",
            "x-switchboard-deployment",
            "x-switchboard-attempts",
            "date",
            "content-length"
        ],
        "{head}"
    );
    assert!(
        head.contains("\r\nx-switchboard-deployment: east\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-switchboard-attempts: 2\r\n"), "{head}");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_arriving_is_answered_408_and_the_connection_closed() {
    let (mut far, _stop, served) = start(|request: Request| async move {
        let (parts, body) = request.into_parts();
        match crate::body::read_json_body(&parts.headers, body, 1024).await {
            Ok(bytes) => Response::new(Body::from(bytes)),
            Err(error) => error.into_response(),
        }
    });
    far.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), far.read_to_end(&mut text))
        .await
        .expect("answered and closed")
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(
        started.elapsed() >= crate::body::BODY_IDLE,
        "{:?}",
        started.elapsed()
    );
    served.await.unwrap();
}

#[test]
fn a_common_target_is_the_uri_a_parse_gives() {
    for path in ["/v1/chat/completions", "/v1/messages", "/v1/embeddings"] {
        let uri = common_target(path.as_bytes()).expect(path);
        assert_eq!(uri, Uri::from_maybe_shared(Bytes::from(path)).unwrap());
        assert_eq!((uri.path(), uri.query()), (path, None));
    }
    for other in [
        "/v1/chat/completions?x=1",
        "/v1/messages/",
        "/",
        "*",
        "/v1/models",
    ] {
        assert!(common_target(other.as_bytes()).is_none(), "{other}");
    }
}
