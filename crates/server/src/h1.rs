//! HTTP/1.1 on one client connection, spoken by the gateway itself: a
//! request's head is parsed in place, its body handed to the service whole
//! when it came with the head (nearly every request), and the answer's head
//! and body leave in one vectored write.
//!
//! hyper's server connection, which this replaces, read every request into
//! a fresh 8 KiB buffer, queued the answer in a write buffer of its own and
//! fed every body through a channel. Here a connection is its socket, one
//! read buffer (reused from request to request once the last request's
//! slices of it are gone) and one buffer for answers' heads.
//!
//! What is read follows RFC 9112: empty lines before a request are skipped;
//! a body is framed by `Transfer-Encoding: chunked`, then `Content-Length`,
//! else there is none; a connection is kept unless the request or the
//! answer says otherwise (`Connection: close`, HTTP/1.0 without
//! `keep-alive`), the request's body was not read to its end, or the
//! gateway is shutting down. A client that closes its connection while its
//! request is served (before or while the answer is written) cancels it:
//! the service's future, or the answer's body, is dropped at once. A
//! connection that opens with HTTP/2's preface is handed back to the caller
//! with what was read of it.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap};
use axum::http::{Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body::{Frame, SizeHint};
use switchboard_providers::framing::{
    Chunked, Framing, Invalid, Place, Places, Step, content_length, has_token, header_name,
    header_value, only_chunked, span, uninit_headers,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::head_lines::HeadLines;

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 256 * 1024;

/// Headers parsed without a heap allocation; a request with more is parsed
/// again with room for `MAX_HEADERS`.
const FEW_HEADERS: usize = 64;
const MAX_HEADERS: usize = 100;

/// Room made in the read buffer before a read.
const READ_SIZE: usize = 4 * 1024;

/// Most bytes read ahead of the request being served (the next, pipelined
/// requests) before reading pauses until it is answered.
const MOST_AHEAD: usize = 64 * 1024;

/// HTTP/2's connection preface.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a request's head may take to arrive once its first bytes have.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long, and for how many bytes, a connection closed with its request
/// unread goes on reading (and dropping) what the client still sends, so
/// that the answer is not lost to a reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How a connection's HTTP/1.1 ended.
pub(crate) enum Ended<T> {
    /// Closed, by either side or for shutdown.
    Closed,
    /// It opened with HTTP/2's preface: the socket, and what was read of it.
    Http2(T, Bytes),
}

/// Serves HTTP/1.1 requests on `io` with `service` until the connection
/// closes, sits idle between requests for `idle_timeout`, or `stop` is
/// cancelled (an idle connection then closes at once, a busy one after its
/// answer).
pub(crate) async fn serve<T, S, F>(
    io: T,
    mut service: S,
    idle_timeout: Duration,
    stop: &CancellationToken,
) -> Ended<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request) -> F,
    F: Future<Output = Response>,
{
    let mut conn = Conn {
        io,
        buffer: BytesMut::new(),
        out: Vec::new(),
        deadline: None,
        scanned: 0,
        idle: Idle {
            timeout: idle_timeout,
            since: Instant::now(),
            timer: None,
        },
    };
    let mut stopped = pin!(stop.cancelled());
    let mut first = true;
    loop {
        let head = match poll_fn(|cx| conn.poll_head(cx, stopped.as_mut(), first)).await {
            Ok(Some(head)) => head,
            Ok(None) => return Ended::Closed,
            Err(Refusal::Http2) if first => {
                let read = conn.buffer.split().freeze();
                return Ended::Http2(conn.io, read);
            }
            Err(refusal) => {
                let response = refusal.response();
                let mut feed = Feed::Done;
                let asked = Asked {
                    method: Method::GET,
                    version: Version::HTTP_11,
                };
                if conn
                    .respond(response, &asked, false, &mut feed)
                    .await
                    .is_ok()
                {
                    conn.linger().await;
                }
                return Ended::Closed;
            }
        };
        first = false;
        let RequestHead {
            request,
            framing,
            mut keep,
            expects_continue,
        } = head;
        let asked = Asked {
            method: request.method().clone(),
            version: request.version(),
        };
        let (request, mut feed) = conn.body(request, framing, expects_continue);
        let answer = {
            let mut pending = pin!(service(request));
            poll_fn(|cx| {
                if let Poll::Ready(response) = pending.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                match conn.poll_meanwhile(cx, &mut feed) {
                    Poll::Ready(Gone) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        };
        // The client left: the service's future was dropped above.
        let Some(response) = answer else {
            return Ended::Closed;
        };
        // A body not read to its end leaves the connection unusable.
        keep &= !stop.is_cancelled() && matches!(feed, Feed::Done);
        match conn.respond(response, &asked, keep, &mut feed).await {
            Ok(true) if matches!(feed, Feed::Done) && !stop.is_cancelled() => {
                conn.idle.since = Instant::now();
            }
            // The client may still be sending the body no one read.
            Ok(_) if !matches!(feed, Feed::Done) => {
                drop(feed);
                conn.linger().await;
                return Ended::Closed;
            }
            _ => return Ended::Closed,
        }
    }
}

/// What of a request its answer's framing depends on.
struct Asked {
    method: Method,
    version: Version,
}

/// What a request's head gives the service, and how its connection goes on.
struct RequestHead {
    request: Request,
    framing: Framing,
    /// Whether the request lets the connection carry another.
    keep: bool,
    expects_continue: bool,
}

/// A request the connection refuses before the service sees it.
#[derive(Debug, PartialEq)]
enum Refusal {
    Malformed(&'static str),
    TooLarge,
    Version,
    Http2,
}

impl Refusal {
    fn response(&self) -> Response {
        let error = match self {
            Refusal::Malformed(what) => ApiError::malformed_http(what),
            Refusal::TooLarge => ApiError::head_too_large(MAX_HEAD, MAX_HEADERS),
            Refusal::Version | Refusal::Http2 => ApiError::http_version_not_supported(),
        };
        error.into_response()
    }
}

/// The client closed the connection (or it failed) while its request was
/// served.
struct Gone;

/// Where reading the request's body stands.
enum Feed {
    /// Read to its end (or there was none): what arrives now is the next
    /// request's.
    Done,
    /// Still arriving, handed to the service's body through `slot`.
    Streaming {
        framing: Framing,
        slot: Feeding,
        /// Broken framing found after the piece in the slot: the reader's
        /// next read gives it.
        broken: Option<Invalid>,
        /// Bytes of `100 Continue` still to write, once the body is asked
        /// for; `None` when none is owed.
        owed_continue: Option<usize>,
    },
    /// Not to be read further (the service dropped it, or it broke): the
    /// connection closes after the answer.
    Abandoned,
}

struct Conn<T> {
    io: T,
    buffer: BytesMut,
    /// An answer's head, written here before it is sent.
    out: Vec<u8>,
    /// When a head that has begun to arrive must have arrived whole.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// How much of a head still arriving is known not to hold its end.
    scanned: usize,
    idle: Idle,
}

/// How long the connection may sit idle between requests, and since when
/// it has. Its timer is set once and, when it fires early (a request came
/// meanwhile), set again for the time now due: no timer is touched per
/// request.
struct Idle {
    timeout: Duration,
    since: Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Idle {
    /// Ready once the connection has been idle for the whole timeout.
    fn poll_over(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let due = self.since + self.timeout;
        // Polled every time: a timer that has not fired may still not be
        // watching (tokio's cooperative budget, once spent, makes a poll
        // return before it registers the task).
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            timer.as_mut().reset(due);
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    /// Reads until a request's whole head has arrived and parses it;
    /// `None` when the connection ends (or the gateway stops, or the head
    /// takes too long) before one has.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        mut stopped: Pin<&mut impl Future<Output = ()>>,
        first: bool,
    ) -> Poll<Result<Option<RequestHead>, Refusal>> {
        loop {
            // The start of HTTP/2's preface, which the head parser would
            // refuse as soon as it saw the version: wait for all of it.
            let preface_so_far = first
                && self.buffer.len() < HTTP2_PREFACE.len()
                && HTTP2_PREFACE.starts_with(&self.buffer);
            if !self.buffer.is_empty() && !preface_so_far {
                // A head arriving in pieces is parsed again only once the
                // empty line that ends it may have come: a client sending
                // it a byte at a time does not make the whole of it be
                // parsed at every byte.
                if (self.scanned == 0 || head_may_end(&self.buffer, self.scanned))
                    && let Some(head) = parse_head(&mut self.buffer)?
                {
                    self.deadline = None;
                    self.scanned = 0;
                    return Poll::Ready(Ok(Some(head)));
                }
                self.scanned = self.buffer.len();
                if self.buffer.len() > MAX_HEAD {
                    return Poll::Ready(Err(Refusal::TooLarge));
                }
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => {
                    // A stop closes the connection between requests, and
                    // one whose next request has not wholly arrived.
                    if stopped.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok(None));
                    }
                    if self.buffer.is_empty() {
                        if self.idle.poll_over(cx).is_ready() {
                            return Poll::Ready(Ok(None));
                        }
                    } else {
                        let deadline = self
                            .deadline
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(HEAD_TIMEOUT)));
                        if deadline.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Ok(None));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Closes the connection's sending side, then reads and drops what the
    /// client still sends (the body of a request answered without it), for
    /// a while, so that the client reads the answer before the connection
    /// ends (closing with unread bytes would reset it, and the answer could
    /// be lost).
    async fn linger(&mut self) {
        if poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx))
            .await
            .is_err()
        {
            return;
        }
        let drain = async {
            let mut read = 0;
            while read < LINGER_BYTES {
                self.buffer.clear();
                match poll_fn(|cx| self.poll_fill(cx)).await {
                    Ok(0) | Err(_) => return,
                    Ok(count) => read += count,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buffer.capacity() - self.buffer.len() < READ_SIZE / 4 {
            // Takes back the buffer's whole allocation when the last
            // request's slices of it are gone.
            self.buffer.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buffer)
    }

    /// The request with its body: the bytes already read when they are all
    /// of it, else a body fed from the connection as the service reads it.
    fn body(
        &mut self,
        mut request: Request,
        framing: Framing,
        expects_continue: bool,
    ) -> (Request, Feed) {
        let mut body = match framing {
            Framing::Length(0) => return (request, Feed::Done),
            Framing::Length(length) if self.buffer.len() as u64 >= length => {
                // Lengths that large are never in the buffer.
                let bytes = self.buffer.split_to(length as usize).freeze();
                *request.body_mut() = Body::from(bytes);
                return (request, Feed::Done);
            }
            _ => framing,
        };
        let slot = Arc::new(Slot::new(match body {
            Framing::Length(length) => Some(length),
            _ => None,
        }));
        *request.body_mut() = Body::new(Reader(slot.clone()));
        if let Err(invalid) = body.settle(&mut self.buffer) {
            slot.put(Err(BodyError::Invalid(invalid)), true);
            return (request, Feed::Abandoned);
        }
        let feed = Feed::Streaming {
            framing: body,
            slot: Feeding(slot),
            broken: None,
            owed_continue: expects_continue.then_some(0),
        };
        (request, feed)
    }

    /// While the service works or the answer's body is awaited: feeds the
    /// request's body, and watches for the client closing the connection.
    /// Ready only when the client is gone.
    fn poll_meanwhile(&mut self, cx: &mut Context<'_>, feed: &mut Feed) -> Poll<Gone> {
        if let Feed::Streaming {
            framing,
            slot,
            broken,
            owed_continue,
        } = feed
        {
            match self.poll_feed(cx, framing, &slot.0, broken, owed_continue) {
                Poll::Ready(Ok(())) => *feed = Feed::Done,
                Poll::Ready(Err(FeedEnd::Abandoned)) => *feed = Feed::Abandoned,
                Poll::Ready(Err(FeedEnd::Gone)) => return Poll::Ready(Gone),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Whatever arrives now is read ahead (a pipelined request, or the
        // rest of an abandoned body), up to a bound; the connection's end
        // is the client leaving.
        while self.buffer.len() < MOST_AHEAD {
            match ready!(self.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(Gone),
                Ok(_) => {}
            }
        }
        Poll::Pending
    }

    /// Moves the request's body from the connection to the service's
    /// reader, a piece at a time; `Ok` once it has all been read.
    fn poll_feed(
        &mut self,
        cx: &mut Context<'_>,
        framing: &mut Framing,
        slot: &Slot,
        broken: &mut Option<Invalid>,
        owed_continue: &mut Option<usize>,
    ) -> Poll<Result<(), FeedEnd>> {
        loop {
            {
                let mut state = slot.lock();
                if state.reader_gone {
                    return Poll::Ready(Err(FeedEnd::Abandoned));
                }
                // One piece at a time; and a client waiting for `100
                // Continue` is not asked for its body before the service
                // asks for it.
                if state.piece.is_some() || (owed_continue.is_some() && !state.wanted) {
                    state.feeder = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            if let Some(written) = owed_continue {
                while *written < CONTINUE.len() {
                    match ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[*written..])) {
                        Ok(0) | Err(_) => return Poll::Ready(Err(FeedEnd::Gone)),
                        Ok(count) => *written += count,
                    }
                }
                if ready!(Pin::new(&mut self.io).poll_flush(cx)).is_err() {
                    return Poll::Ready(Err(FeedEnd::Gone));
                }
                *owed_continue = None;
            }
            if let Some(invalid) = broken.take() {
                slot.put(Err(BodyError::Invalid(invalid)), true);
                return Poll::Ready(Err(FeedEnd::Abandoned));
            }
            match framing.step(&mut self.buffer) {
                Ok(Step::Data(data)) => {
                    // The framing after the data, when it has arrived: a
                    // body whose end is here ends with its last piece.
                    *broken = framing.settle(&mut self.buffer).err();
                    let ended = framing.is_done();
                    slot.put(Ok(data), ended);
                    if ended {
                        return Poll::Ready(Ok(()));
                    }
                }
                Ok(Step::Done) => {
                    slot.end();
                    return Poll::Ready(Ok(()));
                }
                Ok(Step::More) => match ready!(self.poll_fill(cx)) {
                    Ok(0) => {
                        slot.put(Err(BodyError::Closed), true);
                        return Poll::Ready(Err(FeedEnd::Gone));
                    }
                    Err(error) => {
                        slot.put(Err(BodyError::Io(error.kind())), true);
                        return Poll::Ready(Err(FeedEnd::Gone));
                    }
                    Ok(_) => {}
                },
                Err(invalid) => {
                    slot.put(Err(BodyError::Invalid(invalid)), true);
                    return Poll::Ready(Err(FeedEnd::Abandoned));
                }
            }
        }
    }

    /// Writes the answer: its head, then its body as the service makes it,
    /// watching for the client leaving meanwhile. `Ok(true)` when it was
    /// written whole and the connection may carry another request.
    async fn respond(
        &mut self,
        response: Response,
        asked: &Asked,
        keep: bool,
        feed: &mut Feed,
    ) -> Result<bool, Gone> {
        // An interim answer is never sent after the final one begins: one
        // half written is finished first, one not begun is forgone (and the
        // body, unread, closes the connection after this answer).
        if let Feed::Streaming { owed_continue, .. } = feed
            && let Some(written) = owed_continue.take()
            && written > 0
        {
            write_all(&mut self.io, &mut [IoSlice::new(&CONTINUE[written..])])
                .await
                .map_err(|_| Gone)?;
        }
        let (parts, body) = response.into_parts();
        let mut body = pin!(body);
        let status = parts.status;
        let bodiless = asked.method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let mut keep = keep;
        let exact = body.size_hint().exact();
        let mut framing = if bodiless || body.is_end_stream() {
            Out::Length(0)
        } else if let Some(length) = exact {
            Out::Length(length)
        } else if asked.version == Version::HTTP_11 {
            Out::Chunked
        } else {
            // An HTTP/1.0 client knows no chunked coding: the body ends
            // with the connection.
            keep = false;
            Out::UntilClose
        };
        self.out.clear();
        let keep = write_head(
            &mut self.out,
            &parts,
            &framing,
            (asked.method == Method::HEAD).then_some(exact),
            keep,
            asked.version,
        );
        let mut head_sent = false;
        // A body that is already there (nearly every complete answer) goes
        // with the head; a stream's head goes out alone when its first
        // piece is not ready yet.
        let mut wait = false;
        loop {
            let next = if matches!(framing, Out::Length(0)) {
                Some(None)
            } else {
                poll_fn(|cx| match body.as_mut().poll_frame(cx) {
                    Poll::Ready(frame) => Poll::Ready(Ok(Some(frame))),
                    Poll::Pending if !wait => Poll::Ready(Ok(None)),
                    Poll::Pending => match self.poll_meanwhile(cx, feed) {
                        Poll::Ready(Gone) => Poll::Ready(Err(Gone)),
                        Poll::Pending => Poll::Pending,
                    },
                })
                .await?
            };
            let head: &[u8] = if head_sent { &[] } else { &self.out };
            let (data, ended) = match next {
                // Not ready: the head goes out alone.
                None => (Bytes::new(), false),
                Some(None) => (Bytes::new(), true),
                Some(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let ended = body.is_end_stream();
                        (data, ended)
                    }
                    // Trailers are not sent.
                    Err(_) => (Bytes::new(), body.is_end_stream()),
                },
                // The answer broke: the connection closes without ending
                // it, so that the client sees it cut short.
                Some(Some(Err(_))) => {
                    if !head_sent {
                        let _ = write_all(&mut self.io, &mut [IoSlice::new(&self.out)]).await;
                    }
                    return Err(Gone);
                }
            };
            let mut size = itoa_hex::Buffer::default();
            let written = match &mut framing {
                Out::Length(left) => {
                    if data.len() as u64 > *left {
                        // More than the length the head announced.
                        return Err(Gone);
                    }
                    *left -= data.len() as u64;
                    if ended && *left > 0 {
                        // Less: the client is told by the connection's end.
                        let _ =
                            write_all(&mut self.io, &mut [IoSlice::new(head), IoSlice::new(&data)])
                                .await;
                        return Err(Gone);
                    }
                    write_all(&mut self.io, &mut [IoSlice::new(head), IoSlice::new(&data)]).await
                }
                Out::UntilClose => {
                    write_all(&mut self.io, &mut [IoSlice::new(head), IoSlice::new(&data)]).await
                }
                Out::Chunked => {
                    let (open, close): (&[u8], &[u8]) = if data.is_empty() {
                        (&[], &[])
                    } else {
                        (size.format(data.len()), b"\r\n")
                    };
                    let last: &[u8] = if ended { b"0\r\n\r\n" } else { &[] };
                    write_all(
                        &mut self.io,
                        &mut [
                            IoSlice::new(head),
                            IoSlice::new(open),
                            IoSlice::new(&data),
                            IoSlice::new(close),
                            IoSlice::new(last),
                        ],
                    )
                    .await
                }
            };
            written.map_err(|_| Gone)?;
            head_sent = true;
            if ended {
                if matches!(framing, Out::UntilClose) {
                    let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
                }
                return Ok(keep);
            }
            wait = true;
        }
    }
}

/// How an answer's body is framed.
enum Out {
    /// By its length, this many bytes still to write.
    Length(u64),
    Chunked,
    /// By the connection's end.
    UntilClose,
}

/// Writes the answer's head: the status line, the service's headers (less
/// the framing ones, which are the connection's to write), the lines the
/// gateway added (`HeadLines`, written as they are), `Date`, the
/// body's framing and, where the client would not assume it, whether the
/// connection stays open; which it does if `keep` and the service did not
/// say `Connection: close`.
fn write_head(
    out: &mut Vec<u8>,
    parts: &axum::http::response::Parts,
    framing: &Out,
    head: Option<Option<u64>>,
    mut keep: bool,
    version: Version,
) -> bool {
    let (status, headers) = (parts.status, &parts.headers);
    let lines = parts
        .extensions
        .get::<HeadLines>()
        .map_or(&[][..], HeadLines::as_bytes);
    // Answers that never have a body have no length either.
    let lengthless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    let mut told_length = false;
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH && head.is_some() && !lengthless {
            // An answer to `HEAD` keeps the length the service gave it.
            told_length = true;
        } else if *name == header::CONNECTION {
            keep &= !value
                .as_bytes()
                .split(|&byte| byte == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        } else if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
            continue;
        } else if *name == header::DATE {
            dated = true;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(lines);
    if !dated {
        line(out, b"date", &date::now());
    }
    let mut digits = itoa::Buffer::new();
    match (framing, head) {
        _ if lengthless => {}
        // A `HEAD` answer tells the length its body would have had, when
        // it is known.
        (_, Some(would_be)) => {
            if let Some(length) = would_be.filter(|_| !told_length) {
                line(out, b"content-length", digits.format(length).as_bytes());
            }
        }
        (Out::Length(length), None) => {
            line(out, b"content-length", digits.format(*length).as_bytes());
        }
        (Out::Chunked, None) => line(out, b"transfer-encoding", b"chunked"),
        (Out::UntilClose, None) => {}
    }
    match (keep, version) {
        (false, _) => line(out, b"connection", b"close"),
        (true, Version::HTTP_11) => {}
        (true, _) => line(out, b"connection", b"keep-alive"),
    }
    out.extend_from_slice(b"\r\n");
    keep
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes every slice, in as few calls as the socket allows.
async fn write_all<T: AsyncWrite + Unpin>(
    io: &mut T,
    mut parts: &mut [IoSlice<'_>],
) -> io::Result<()> {
    let mut left: usize = parts.iter().map(|part| part.len()).sum();
    while left > 0 {
        let count = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, parts)).await?;
        if count == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        left -= count;
        IoSlice::advance_slices(&mut parts, count);
    }
    poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
}

/// Whether the bytes after the first `scanned` (and the few before, where
/// an ending may have begun) hold an empty line: the end of a head, with
/// lines ended by CRLF or by a bare LF, as the parser takes them.
fn head_may_end(buffer: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(3);
    buffer[from..]
        .iter()
        .enumerate()
        .filter(|(_, byte)| **byte == b'\n')
        .any(|(at, _)| {
            let rest = &buffer[from + at + 1..];
            rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
        })
}

/// What the parse found, as offsets into the buffer.
struct Parsed {
    method: (usize, usize),
    target: (usize, usize),
    version: u8,
    headers: usize,
    length: usize,
}

/// Parses the request head at the start of `buffer` and takes it off;
/// `None` while it is incomplete.
fn parse_head(buffer: &mut BytesMut) -> Result<Option<RequestHead>, Refusal> {
    let mut places = Places::<FEW_HEADERS>::default();
    let parsed = {
        let mut found = uninit_headers::<FEW_HEADERS>();
        locate(buffer, &mut found, &mut places)
    };
    match parsed {
        Err(Refusal::TooLarge) => {
            let mut places = Box::new(Places::<MAX_HEADERS>::default());
            let parsed = {
                let mut found = Box::new(uninit_headers::<MAX_HEADERS>());
                locate(buffer, &mut found, &mut places)?
            };
            parsed
                .map(|parsed| build(buffer, &parsed, places.noted()))
                .transpose()
        }
        parsed => parsed?
            .map(|parsed| build(buffer, &parsed, places.noted()))
            .transpose(),
    }
}

/// Parses a head with room for `found.len()` headers and notes where each
/// part lies.
fn locate<'b, const N: usize>(
    buffer: &'b [u8],
    found: &mut [MaybeUninit<httparse::Header<'b>>; N],
    places: &mut Places<N>,
) -> Result<Option<Parsed>, Refusal> {
    let mut request = httparse::Request::new(&mut []);
    let length = match request.parse_with_uninit_headers(buffer, found) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(httparse::Error::Version) if buffer.starts_with(HTTP2_PREFACE) => {
            return Err(Refusal::Http2);
        }
        Err(httparse::Error::Version) => return Err(Refusal::Version),
        Err(_) => return Err(Refusal::Malformed("its request line or headers")),
    };
    places.note(buffer, request.headers);
    // A complete parse always has the method, target and version.
    Ok(Some(Parsed {
        method: span(buffer, request.method.unwrap_or_default().as_bytes()),
        target: span(buffer, request.path.unwrap_or_default().as_bytes()),
        version: request.version.unwrap_or_default(),
        headers: request.headers.len(),
        length,
    }))
}

/// Takes the parsed head off `buffer`: the request (header values and
/// target are slices of the head, not copies), its body's framing, and
/// whether the connection may carry another request after it.
fn build(buffer: &mut BytesMut, parsed: &Parsed, places: &[Place]) -> Result<RequestHead, Refusal> {
    if parsed.length > MAX_HEAD {
        return Err(Refusal::TooLarge);
    }
    let bytes = buffer.split_to(parsed.length).freeze();
    let method = Method::from_bytes(&bytes[parsed.method.0..parsed.method.1])
        .map_err(|_| Refusal::Malformed("its method"))?;
    let target = &bytes[parsed.target.0..parsed.target.1];
    let uri = match common_target(target) {
        Some(uri) => uri,
        None => Uri::from_maybe_shared(bytes.slice(parsed.target.0..parsed.target.1))
            .map_err(|_| Refusal::Malformed("its request target"))?,
    };
    let version = if parsed.version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers);
    let (mut lengths, mut coded, mut connection, mut expect) = (0, false, false, false);
    for place in &places[..parsed.headers] {
        let name = header_name(&bytes[place.name.0..place.name.1])
            .map_err(|_| Refusal::Malformed("a header name"))?;
        let value = header_value(&bytes, place);
        if name == header::CONTENT_LENGTH {
            lengths += 1;
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
        } else if name == header::CONNECTION {
            connection = true;
        } else if name == header::EXPECT {
            expect = true;
        }
        headers.append(name, value);
    }
    let mut keep = match (version, connection) {
        (Version::HTTP_11, false) => true,
        (Version::HTTP_11, true) => !has_token(&headers, &header::CONNECTION, "close"),
        (_, false) => false,
        // `close` wins over `keep-alive`.
        (_, true) => {
            has_token(&headers, &header::CONNECTION, "keep-alive")
                && !has_token(&headers, &header::CONNECTION, "close")
        }
    };
    let framing = if coded {
        if version != Version::HTTP_11 {
            return Err(Refusal::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !only_chunked(&headers) {
            return Err(Refusal::Malformed(
                "a transfer coding other than chunked, or none named",
            ));
        }
        // A length beside it is ignored (and removed, so that no reader
        // of the headers trusts it), and the connection not trusted with
        // another request.
        if lengths > 0 {
            headers.remove(header::CONTENT_LENGTH);
            keep = false;
        }
        Framing::Chunked(Chunked::Size)
    } else if lengths > 0 {
        let length = content_length(headers.get_all(header::CONTENT_LENGTH).iter())
            .map_err(|Invalid(what)| Refusal::Malformed(what))?;
        Framing::Length(length.unwrap_or(0))
    } else {
        Framing::Length(0)
    };
    let expects_continue = expect
        && version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(RequestHead {
        request,
        framing,
        keep,
        expects_continue,
    })
}

/// The target of nearly every request, parsed once: a copy of a parsed
/// `Uri` of static text costs no parse and no reference count (a parse
/// costs about 400 instructions a request).
fn common_target(target: &[u8]) -> Option<Uri> {
    static PARSED: std::sync::LazyLock<[(&[u8], Uri); 3]> = std::sync::LazyLock::new(|| {
        ["/v1/chat/completions", "/v1/messages", "/v1/embeddings"]
            .map(|path| (path.as_bytes(), Uri::from_static(path)))
    });
    PARSED
        .iter()
        .find(|(path, _)| *path == target)
        .map(|(_, uri)| uri.clone())
}

/// Why feeding a body stopped short of its end.
enum FeedEnd {
    Abandoned,
    Gone,
}

/// Why a streamed request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    Closed,
    Io(io::ErrorKind),
    Invalid(Invalid),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Closed => f.write_str("the client closed the connection before its end"),
            BodyError::Io(kind) => write!(f, "{}", io::Error::from(*kind)),
            BodyError::Invalid(invalid) => write!(f, "its chunked framing is invalid: {invalid}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// One piece of a streamed request body in passing from the connection to
/// the service's reader.
struct Slot(Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    piece: Option<Result<Bytes, BodyError>>,
    /// No piece comes after the one in `piece`.
    ended: bool,
    /// The reader has asked for a piece.
    wanted: bool,
    reader_gone: bool,
    /// The connection ended before the body did: the reader's next read,
    /// after any piece left, fails.
    aborted: bool,
    /// Bytes still to come, when the body's length is known.
    left: Option<u64>,
    reader: Option<Waker>,
    feeder: Option<Waker>,
}

impl Slot {
    fn new(length: Option<u64>) -> Slot {
        Slot(Mutex::new(SlotState {
            left: length,
            ..SlotState::default()
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put(&self, piece: Result<Bytes, BodyError>, ended: bool) {
        let mut state = self.lock();
        state.piece = Some(piece);
        state.ended = ended;
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }

    fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }
}

/// The connection's side of a streamed request body: dropped before the
/// body's end (the connection closed or failed), it fails the reader's next
/// read rather than leave it waiting.
struct Feeding(Arc<Slot>);

impl Drop for Feeding {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if !state.ended {
            state.aborted = true;
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
        }
    }
}

/// The service's side of a streamed request body.
struct Reader(Arc<Slot>);

impl http_body::Body for Reader {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut state = self.0.lock();
        if let Some(piece) = state.piece.take() {
            if let (Ok(data), Some(left)) = (&piece, state.left.as_mut()) {
                *left = left.saturating_sub(data.len() as u64);
            }
            if let Some(feeder) = state.feeder.take() {
                feeder.wake();
            }
            return Poll::Ready(Some(piece.map(Frame::data)));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        if state.aborted {
            state.ended = true;
            return Poll::Ready(Some(Err(BodyError::Closed)));
        }
        state.wanted = true;
        state.reader = Some(cx.waker().clone());
        if let Some(feeder) = state.feeder.take() {
            feeder.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let state = self.0.lock();
        state.ended && state.piece.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.lock().left {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.reader_gone = true;
        if let Some(feeder) = state.feeder.take() {
            feeder.wake();
        }
    }
}

/// Lowercase hexadecimal chunk sizes with their CRLF, for chunked answers.
mod itoa_hex {
    #[derive(Default)]
    pub(super) struct Buffer([u8; 18]);

    impl Buffer {
        pub(super) fn format(&mut self, mut value: usize) -> &[u8] {
            let mut at = 16;
            self.0[16] = b'\r';
            self.0[17] = b'\n';
            loop {
                at -= 1;
                self.0[at] = b"0123456789abcdef"[value & 15];
                value >>= 4;
                if value == 0 {
                    break;
                }
            }
            &self.0[at..]
        }
    }
}

/// The `Date` header's value, formatted once a second per thread.
mod date {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static LAST: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }

    pub(super) fn now() -> [u8; 29] {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        LAST.with(|last| {
            let (at, text) = last.get();
            if at == seconds {
                return text;
            }
            let text =
                switchboard_core::time::format_http_date(i64::try_from(seconds).unwrap_or(0));
            last.set((seconds, text));
            text
        })
    }
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
