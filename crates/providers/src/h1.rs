//! HTTP/1.1 on one upstream connection, spoken by the request that holds
//! it: the request's head and body go out in one vectored write, the
//! answer's head is parsed in place, and its body is read by whoever polls
//! it, straight from the connection's own buffer.
//!
//! hyper's client connection, which this replaces for HTTP/1.1, ran a task
//! per connection fed through a channel, copied each request into an 8 KiB
//! write buffer and read into a fresh 8 KiB buffer per answer: about a
//! seventh of a proxied request's instructions and some 27 KiB per open
//! stream. Here a connection is a socket and one read buffer; between
//! requests it sits in the pool, where [`Conn::is_open`] tells whether the
//! upstream has closed it meanwhile.
//!
//! What is read follows RFC 9112: interim (1xx) answers are skipped; a body
//! is framed by `Transfer-Encoding: chunked`, then `Content-Length`, then
//! the connection's end; `204`, `304` and answers to `HEAD` have none; a
//! connection is kept only when the answer allows it (`Connection: close`,
//! HTTP/1.0 without `keep-alive`, a body framed by its end, a request not
//! wholly written) and its body was read to the end.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::framing::{
    self, Chunked, Framing, Invalid, Place, Places, Step, content_length, has_token, only_chunked,
    uninit_headers,
};

/// Largest answer head read (status line and headers); hyper's default
/// allows about as much.
const MAX_HEAD: usize = 256 * 1024;

/// Most headers an answer may carry.
const MAX_HEADERS: usize = 256;

/// Headers parsed without a heap allocation; an answer with more is
/// parsed again with room for `MAX_HEADERS`.
const FEW_HEADERS: usize = 64;

/// The first read's size; doubled each time a read fills it, up to
/// `MOST_READ`, so a large answer is read in few calls while a stream of
/// small events keeps a small buffer.
const FIRST_READ: usize = 4 * 1024;
const MOST_READ: usize = 64 * 1024;

/// Why an exchange failed. None of the messages holds a header's value or
/// the URL.
#[derive(Debug)]
pub(crate) enum Error {
    /// The socket's (or TLS's) own error.
    Io(io::Error),
    /// The upstream closed the connection before the answer's head came.
    ClosedBeforeAnswer,
    /// The upstream closed the connection before the answer's body was
    /// complete.
    ClosedInBody,
    /// The answer broke HTTP/1.1.
    Invalid(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(error) => write!(f, "{error}"),
            Error::ClosedBeforeAnswer => {
                f.write_str("the upstream closed the connection before answering")
            }
            Error::ClosedInBody => {
                f.write_str("the upstream closed the connection before the answer was complete")
            }
            Error::Invalid(what) => write!(f, "the upstream's HTTP/1.1 answer is invalid: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<Invalid> for Error {
    fn from(invalid: Invalid) -> Error {
        Error::Invalid(invalid.0)
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Error {
        Error::Io(error)
    }
}

/// A failed send, and whether the request is sure not to have reached the
/// upstream (nothing of it was written), so that it may go out again on
/// another connection.
#[derive(Debug)]
pub(crate) struct SendError {
    pub error: Error,
    pub unsent: bool,
}

/// One HTTP/1.1 connection: the socket and what has been read from it and
/// not yet taken. The socket is boxed (a TLS stream is kilobytes), so that
/// moving the connection between the pool, a request and its answer's body
/// moves a pointer.
pub(crate) struct Conn<T> {
    io: Box<T>,
    buffer: BytesMut,
    read_size: usize,
    /// The shard whose runtime watches the socket (`crate::shard`).
    home: usize,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    pub(crate) fn new(io: T) -> Conn<T> {
        Conn {
            io: Box::new(io),
            buffer: BytesMut::new(),
            read_size: FIRST_READ,
            home: crate::shard::current(),
        }
    }

    /// The shard whose runtime watches the socket.
    pub(crate) fn home(&self) -> usize {
        self.home
    }

    /// Whether an idle connection may take a request: nothing has arrived
    /// on it since its last answer, not even its end. Reads without
    /// waiting (a read that would wait is the answer "open"); the read is
    /// only made when the socket has signalled something since.
    pub(crate) fn is_open(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        // Outside the task's cooperative budget, which, once spent, would
        // make every read wait and every closed connection look open.
        let probe = std::future::poll_fn(|cx| {
            let mut byte = [0u8; 1];
            let mut byte = ReadBuf::new(&mut byte);
            Poll::Ready(
                Pin::new(&mut *self.io)
                    .poll_read(cx, &mut byte)
                    .is_pending(),
            )
        });
        let mut probe = std::pin::pin!(tokio::task::unconstrained(probe));
        let mut context = Context::from_waker(Waker::noop());
        matches!(probe.as_mut().poll(&mut context), Poll::Ready(true))
    }

    /// Writes a request whose head is `head` (from [`write_head`]) and
    /// whose body is `body`, then reads the answer's head: of a successful
    /// answer, only the headers of `READ_OF_SUCCESS` unless `every`. The
    /// answer's body is read from what is returned, which holds the
    /// connection.
    pub(crate) async fn send(
        mut self,
        head: &[u8],
        body: &[u8],
        method: &Method,
        every: bool,
    ) -> Result<Response<Body<T>>, SendError> {
        let mut written = 0;
        let wholly = std::future::poll_fn(|cx| self.poll_write(cx, head, body, &mut written))
            .await
            .map_err(|error| SendError {
                error,
                unsent: written == 0,
            })?;
        let answer = std::future::poll_fn(|cx| self.poll_head(cx, every))
            .await
            .map_err(|error| SendError {
                error,
                unsent: false,
            })?;
        let (framing, mut keep) = framing(&answer, method)?;
        let Head {
            status,
            version,
            headers,
            ..
        } = answer;
        keep &= wholly;
        let mut response = Response::new(Body {
            conn: Some(self),
            framing,
            keep,
            broken: None,
        });
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        response.body_mut().settle();
        Ok(response)
    }

    /// Writes the request; `Ok(false)` when the upstream answered before
    /// taking all of it (refusing it, say) and the rest was not written.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        head: &[u8],
        body: &[u8],
        written: &mut usize,
    ) -> Poll<Result<bool, Error>> {
        let total = head.len() + body.len();
        while *written < total {
            let slices = if *written < head.len() {
                [IoSlice::new(&head[*written..]), IoSlice::new(body)]
            } else {
                [
                    IoSlice::new(&body[*written - head.len()..]),
                    IoSlice::new(&[]),
                ]
            };
            match Pin::new(&mut *self.io).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(count)) => *written += count,
                // Over TLS, an error may come after part of the request's
                // records left; the rest never did, so the upstream cannot
                // have read a whole request.
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => {
                    if ready!(self.poll_answer_meanwhile(cx))? {
                        return Poll::Ready(Ok(false));
                    }
                }
            }
        }
        // TLS takes the request in before the socket has (its records wait
        // in the flush), so the same watch goes on while flushing.
        loop {
            match Pin::new(&mut *self.io).poll_flush(cx) {
                Poll::Ready(flushed) => {
                    return Poll::Ready(flushed.map(|()| true).map_err(Into::into));
                }
                Poll::Pending => {
                    if ready!(self.poll_answer_meanwhile(cx))? {
                        return Poll::Ready(Ok(false));
                    }
                }
            }
        }
    }

    /// While the request cannot be written further: the upstream may have
    /// answered before reading all of it (refusing it) and stopped reading.
    /// Reads what has arrived; `true` once the answer's final head has (or
    /// what arrived cannot be one: reading the head tells what is wrong).
    fn poll_answer_meanwhile(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        loop {
            let count = ready!(self.poll_fill(cx))?;
            if final_head_arrived(&self.buffer) {
                return Poll::Ready(Ok(true));
            }
            if count == 0 {
                return Poll::Ready(Err(Error::ClosedBeforeAnswer));
            }
        }
    }

    /// Reads until the answer's final head has arrived (interim 1xx heads
    /// are skipped) and parses it.
    fn poll_head(&mut self, cx: &mut Context<'_>, every: bool) -> Poll<Result<Head, Error>> {
        loop {
            if !self.buffer.is_empty() {
                if let Some(head) = parse_head(&mut self.buffer, every)? {
                    let status = head.status;
                    if status == StatusCode::SWITCHING_PROTOCOLS {
                        return Poll::Ready(Err(Error::Invalid("an unasked-for protocol switch")));
                    }
                    if status.is_informational() {
                        continue;
                    }
                    return Poll::Ready(Ok(head));
                }
                if self.buffer.len() > MAX_HEAD {
                    return Poll::Ready(Err(Error::Invalid("the head is larger than 256 KiB")));
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(Error::ClosedBeforeAnswer));
            }
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buffer.capacity() - self.buffer.len() < self.read_size / 4 {
            self.buffer.reserve(self.read_size);
        }
        let room = self.buffer.capacity() - self.buffer.len();
        let count = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut *self.io),
            cx,
            &mut self.buffer
        ))?;
        if count == room && self.read_size < MOST_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(count))
    }
}

/// Whether `buffer` holds a final answer's whole head, after any interim
/// (1xx) ones, or something that cannot be a head at all.
fn final_head_arrived(mut buffer: &[u8]) -> bool {
    if buffer.len() > MAX_HEAD {
        return true;
    }
    loop {
        let mut found = uninit_headers::<FEW_HEADERS>();
        let mut response = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buffer,
            &mut found,
        ) {
            Ok(httparse::Status::Complete(length))
                if response
                    .code
                    .is_some_and(|code| (100..200).contains(&code) && code != 101) =>
            {
                buffer = &buffer[length..];
            }
            Ok(httparse::Status::Partial) => return false,
            _ => return true,
        }
    }
}

/// The status, version and the number of headers of a parsed head, and
/// its length.
struct Parsed {
    status: u16,
    version: u8,
    headers: usize,
    length: usize,
}

/// Parses the head at the start of `buffer` and takes it off; `None`
/// while it is incomplete. Header values are slices of the head, not
/// copies. Of a successful answer, only the headers of
/// `READ_OF_SUCCESS` are kept, unless `every`.
fn parse_head(buffer: &mut BytesMut, every: bool) -> Result<Option<Head>, Error> {
    let mut places = Places::<FEW_HEADERS>::default();
    let parsed = {
        let mut found = uninit_headers::<FEW_HEADERS>();
        locate(buffer, &mut found, &mut places)
    };
    match parsed {
        Ok(Some(parsed)) => build(buffer, &parsed, places.noted(), every).map(Some),
        Ok(None) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            let mut places = Box::new(Places::<MAX_HEADERS>::default());
            let parsed = {
                let mut found = Box::new(uninit_headers::<MAX_HEADERS>());
                locate(buffer, &mut found, &mut places)
            };
            match parsed {
                Ok(Some(parsed)) => build(buffer, &parsed, places.noted(), every).map(Some),
                Ok(None) => Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    Err(Error::Invalid("more than 256 headers"))
                }
                Err(_) => Err(Error::Invalid("a malformed head")),
            }
        }
        Err(_) => Err(Error::Invalid("a malformed head")),
    }
}

/// Parses a head with room for `found.len()` headers and notes where each
/// header lies.
fn locate<'b, const N: usize>(
    buffer: &'b [u8],
    found: &mut [MaybeUninit<httparse::Header<'b>>; N],
    places: &mut Places<N>,
) -> Result<Option<Parsed>, httparse::Error> {
    let mut response = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buffer,
        found,
    )? {
        httparse::Status::Complete(length) => length,
        httparse::Status::Partial => return Ok(None),
    };
    places.note(buffer, response.headers);
    Ok(Some(Parsed {
        // A complete parse always has both.
        status: response.code.unwrap_or_default(),
        version: response.version.unwrap_or_default(),
        headers: response.headers.len(),
        length,
    }))
}

/// An answer's head, and what its headers say of its framing, noted as
/// they were read (so that the common answer, framed by one
/// `Content-Length`, needs no lookup in the map).
pub(crate) struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// The first `Content-Length`, and how many there were.
    length: Option<HeaderValue>,
    lengths: usize,
    transfer_encoding: bool,
    connection: bool,
}

/// The headers of a successful (2xx) answer that anything reads: its
/// framing, its content type (a stream's is checked, and an error sent
/// as a 200 is parsed), Bedrock's error type (read with that error), and
/// the rate-limit pairs that tell an upstream's headroom
/// (`transport::HEADROOM_HEADERS`, read on every answer). A successful
/// answer's other headers are not kept in its `HeaderMap`: an OpenAI
/// answer carries about twenty (request id, processing time, cookies,
/// the CDN's), and building each (its name made a `HeaderName`, hashed
/// and inserted) cost about 500 instructions; whatever comes to read one
/// of a successful answer must be named here. (`UpstreamClients::exchange`
/// keeps every header, and answers over HTTP/2, hyper's, keep theirs.) Answers that are not
/// successful keep every header (their `Retry-After`, reset times,
/// error types). No two share a length, so a name is compared with one
/// of them at most.
pub(crate) const READ_OF_SUCCESS: [&str; 13] = [
    "connection",
    "content-type",
    "content-length",
    "x-amzn-errortype",
    "transfer-encoding",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-remaining-requests",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-requests-remaining",
];

/// `READ_OF_SUCCESS` by length; fails to compile if two share one.
const READ_BY_LENGTH: [&[u8]; 39] = {
    let mut table: [&[u8]; 39] = [b""; 39];
    let mut index = 0;
    while index < READ_OF_SUCCESS.len() {
        let name = READ_OF_SUCCESS[index].as_bytes();
        assert!(table[name.len()].is_empty(), "two names of one length");
        table[name.len()] = name;
        index += 1;
    }
    table
};

/// Whether a successful answer's header `name` (as sent, in any case) is
/// one of `READ_OF_SUCCESS`.
fn read_of_success(name: &[u8]) -> bool {
    READ_BY_LENGTH
        .get(name.len())
        .is_some_and(|kept| !kept.is_empty() && name.eq_ignore_ascii_case(kept))
}

/// Takes the parsed head off `buffer`.
fn build(
    buffer: &mut BytesMut,
    parsed: &Parsed,
    places: &[Place],
    every: bool,
) -> Result<Head, Error> {
    let status =
        StatusCode::from_u16(parsed.status).map_err(|_| Error::Invalid("a status out of range"))?;
    let version = if parsed.version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let bytes = buffer.split_to(parsed.length).freeze();
    let mut head = Head {
        status,
        version,
        headers: HeaderMap::with_capacity(parsed.headers),
        length: None,
        lengths: 0,
        transfer_encoding: false,
        connection: false,
    };
    // Of a successful answer, only the headers something reads are kept.
    let every = every || !status.is_success();
    for place in &places[..parsed.headers] {
        let name = &bytes[place.name.0..place.name.1];
        if !(every || read_of_success(name)) {
            continue;
        }
        let name = framing::header_name(name).map_err(|_| Error::Invalid("a header name"))?;
        let value = framing::header_value(&bytes, place);
        if name == header::CONTENT_LENGTH {
            head.lengths += 1;
            head.length.get_or_insert_with(|| value.clone());
        } else if name == header::TRANSFER_ENCODING {
            head.transfer_encoding = true;
        } else if name == header::CONNECTION {
            head.connection = true;
        }
        head.headers.append(name, value);
    }
    Ok(head)
}

/// How the answer's body is framed, and whether the connection may carry
/// another request after it.
fn framing(head: &Head, method: &Method) -> Result<(Framing, bool), SendError> {
    let invalid = |what| SendError {
        error: Error::Invalid(what),
        unsent: false,
    };
    let (status, version, headers) = (head.status, head.version, &head.headers);
    let mut keep = match (version == Version::HTTP_11, head.connection) {
        (true, false) => true,
        (false, false) => false,
        (true, true) => !has_token(headers, &header::CONNECTION, "close"),
        // `close` wins over `keep-alive`.
        (false, true) => {
            has_token(headers, &header::CONNECTION, "keep-alive")
                && !has_token(headers, &header::CONNECTION, "close")
        }
    };
    if status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD
    {
        return Ok((Framing::Length(0), keep));
    }
    if head.transfer_encoding {
        // Only chunked is understood (a compressed transfer coding would
        // reach the caller still compressed). A length beside it is
        // ignored, and the connection not trusted with another request;
        // nor is an HTTP/1.0 one.
        let only_chunked = only_chunked(headers);
        if !only_chunked {
            return Err(invalid(
                "a transfer coding other than chunked, or none named",
            ));
        }
        if head.lengths > 0 || version != Version::HTTP_11 {
            keep = false;
        }
        return Ok((Framing::Chunked(Chunked::Size), keep));
    }
    // The one noted, then, only when there were several, the others.
    let others = (head.lengths > 1)
        .then(|| headers.get_all(header::CONTENT_LENGTH).iter().skip(1))
        .into_iter()
        .flatten();
    let length =
        content_length(head.length.iter().chain(others)).map_err(|Invalid(what)| SendError {
            error: Error::Invalid(what),
            unsent: false,
        })?;
    Ok(match length {
        Some(length) => (Framing::Length(length), keep),
        None => (Framing::UntilClose, false),
    })
}

/// An answer's body, holding its connection until it has been read.
pub(crate) struct Body<T> {
    conn: Option<Conn<T>>,
    framing: Framing,
    /// Whether the connection may take another request once the body has
    /// been read.
    keep: bool,
    /// An error found reading ahead, given at the next read.
    broken: Option<Error>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Body<T> {
    /// The next piece of data; `None` at the end.
    pub(crate) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if let Some(error) = self.broken.take() {
            return Poll::Ready(Some(Err(error)));
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing.step(&mut conn.buffer) {
                Ok(Step::Data(data)) => {
                    self.settle();
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Step::Done) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(error) => return Poll::Ready(Some(Err(self.fail(error.into())))),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if self.framing == Framing::UntilClose => {
                    self.framing = Framing::Length(0);
                    self.keep = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(self.fail(Error::ClosedInBody)))),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(self.fail(error.into())))),
            }
        }
    }

    /// Reads ahead through the framing already buffered; broken framing
    /// fails the body, and its next read gives the error.
    fn settle(&mut self) {
        if let Some(conn) = self.conn.as_mut()
            && let Err(error) = self.framing.settle(&mut conn.buffer)
        {
            self.broken = Some(self.fail(error.into()));
        }
    }

    /// Drops the connection of a body that broke.
    fn fail(&mut self, error: Error) -> Error {
        self.framing = Framing::Failed;
        self.conn = None;
        self.keep = false;
        error
    }

    /// Whether the body has been read to its end (or broke, and its error
    /// has been given).
    pub(crate) fn is_end(&self) -> bool {
        self.broken.is_none() && (self.framing.is_done() || self.framing == Framing::Failed)
    }

    /// The body's exact length when its framing tells it.
    pub(crate) fn exact_length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(left) => Some(left),
            _ => None,
        }
    }

    /// The connection, once the body has been read to its end and the
    /// connection may take another request.
    pub(crate) fn take_reusable(&mut self) -> Option<Conn<T>> {
        if !(self.keep && self.framing.is_done()) {
            return None;
        }
        let mut conn = self.conn.take().filter(|conn| conn.buffer.is_empty())?;
        if conn.read_size > FIRST_READ {
            // A large answer grew the buffer: an idle connection keeps none
            // of it.
            conn.buffer = BytesMut::new();
            conn.read_size = FIRST_READ;
        }
        Some(conn)
    }
}

/// An HTTP/1.1 request's head: the request line with the target's path
/// and query alone, `Host` (`host` unless the request names its own), the
/// request's headers, and the body's length. Framing headers the request
/// carries are left out; the length written is the body's.
pub(crate) fn write_head<B>(
    request: &Request<B>,
    host: Option<&HeaderValue>,
    length: usize,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    let uri = request.uri();
    head.extend_from_slice(uri.path().as_bytes());
    if let Some(query) = uri.query() {
        head.push(b'?');
        head.extend_from_slice(query.as_bytes());
    }
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let headers = request.headers();
    if let Some(host) = host
        && !headers.contains_key(header::HOST)
    {
        line(&mut head, b"host", host.as_bytes());
    }
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        line(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    let bodiless = matches!(*request.method(), Method::GET | Method::HEAD);
    if length > 0 || !bodiless {
        let mut digits = itoa::Buffer::new();
        line(
            &mut head,
            b"content-length",
            digits.format(length).as_bytes(),
        );
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn line(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
