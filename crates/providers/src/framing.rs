//! HTTP/1.1 message framing (RFC 9112, section 6 and 7), shared by the
//! upstream client's connection and the gateway's own server: where a body
//! ends (a length, chunked coding, or the connection's end), read off a
//! connection's buffer one step at a time, and the comma-separated tokens
//! of headers such as `Connection`.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Framing that breaks HTTP/1.1, with what broke it (never a header's
/// value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Longest line in a chunked body's framing (a chunk's size line or a
/// trailer), and most bytes of trailers.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;

/// Whether a comma-separated header holds `token` (without regard to case).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// Where a header's name and value lie in a head, as offsets into the
/// buffer it was parsed from: the header map is built from slices of that
/// buffer once it is taken off as `Bytes`.
#[derive(Clone, Copy, Default)]
pub struct Place {
    pub name: (usize, usize),
    pub value: (usize, usize),
}

/// Where `part` lies in `buffer`, which holds it.
pub fn span(buffer: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - buffer.as_ptr() as usize;
    (start, start + part.len())
}

/// A header's name as read off the wire. The names nearly every request
/// and answer carry, written in lower case or in the usual capitals, are
/// matched as they are; any other goes through `HeaderName::from_bytes`,
/// which lowers its case into a buffer and then looks it up among every
/// standard name (about 200 instructions a header), and for a name that
/// is not one of them copies it into an allocation of its own (about 100
/// more); the SDKs' own names and a few others (`client_name`) are
/// clones of names made once, and never take that way.
pub fn header_name(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    Ok(match name {
        b"host" | b"Host" => header::HOST,
        b"content-type" | b"Content-Type" => header::CONTENT_TYPE,
        b"content-length" | b"Content-Length" => header::CONTENT_LENGTH,
        b"authorization" | b"Authorization" => header::AUTHORIZATION,
        b"user-agent" | b"User-Agent" => header::USER_AGENT,
        b"accept" | b"Accept" => header::ACCEPT,
        b"accept-encoding" | b"Accept-Encoding" => header::ACCEPT_ENCODING,
        b"connection" | b"Connection" => header::CONNECTION,
        b"date" | b"Date" => header::DATE,
        b"server" | b"Server" => header::SERVER,
        b"transfer-encoding" | b"Transfer-Encoding" => header::TRANSFER_ENCODING,
        b"cache-control" | b"Cache-Control" => header::CACHE_CONTROL,
        _ => match client_name(name) {
            Some(known) => known,
            None => return HeaderName::from_bytes(name),
        },
    })
}

/// Names outside the standard ones that the official SDKs send with every
/// request (OpenAI's and Anthropic's, in Python and TypeScript: about ten
/// `x-stainless-*` headers each), and those the gateway reads itself (of
/// requests, and the rate limits of upstreams' answers), in lower case or
/// as the SDKs write them: constants, such a name costs a few comparisons
/// rather than a lookup among the standard names and an allocation (about
/// 250 instructions). Other spellings go the long way.
fn client_name(name: &[u8]) -> Option<HeaderName> {
    // Each a constant, as `http`'s standard names are: built where used,
    // without a check or an allocation.
    Some(match name {
        b"x-stainless-os" | b"X-Stainless-OS" => {
            const { HeaderName::from_static("x-stainless-os") }
        }
        b"x-stainless-arch" | b"X-Stainless-Arch" => {
            const { HeaderName::from_static("x-stainless-arch") }
        }
        b"x-stainless-lang" | b"X-Stainless-Lang" => {
            const { HeaderName::from_static("x-stainless-lang") }
        }
        b"x-stainless-async" | b"X-Stainless-Async" => {
            const { HeaderName::from_static("x-stainless-async") }
        }
        b"x-stainless-runtime" | b"X-Stainless-Runtime" => {
            const { HeaderName::from_static("x-stainless-runtime") }
        }
        b"x-stainless-timeout" | b"X-Stainless-Timeout" => {
            const { HeaderName::from_static("x-stainless-timeout") }
        }
        b"x-stainless-retry-count" | b"X-Stainless-Retry-Count" => {
            const { HeaderName::from_static("x-stainless-retry-count") }
        }
        b"x-stainless-read-timeout" | b"X-Stainless-Read-Timeout" => {
            const { HeaderName::from_static("x-stainless-read-timeout") }
        }
        b"x-stainless-package-version" | b"X-Stainless-Package-Version" => {
            const { HeaderName::from_static("x-stainless-package-version") }
        }
        b"x-stainless-runtime-version" | b"X-Stainless-Runtime-Version" => {
            const { HeaderName::from_static("x-stainless-runtime-version") }
        }
        b"x-api-key" | b"X-Api-Key" => const { HeaderName::from_static("x-api-key") },
        b"x-request-id" | b"X-Request-Id" | b"X-Request-ID" => {
            const { HeaderName::from_static("x-request-id") }
        }
        b"anthropic-beta" | b"Anthropic-Beta" => {
            const { HeaderName::from_static("anthropic-beta") }
        }
        b"anthropic-version" | b"Anthropic-Version" => {
            const { HeaderName::from_static("anthropic-version") }
        }
        b"openai-project" | b"OpenAI-Project" => {
            const { HeaderName::from_static("openai-project") }
        }
        b"openai-organization" | b"OpenAI-Organization" => {
            const { HeaderName::from_static("openai-organization") }
        }
        b"traceparent" | b"Traceparent" => const { HeaderName::from_static("traceparent") },
        b"tracestate" | b"Tracestate" => const { HeaderName::from_static("tracestate") },
        b"x-ratelimit-limit-tokens" => {
            const { HeaderName::from_static("x-ratelimit-limit-tokens") }
        }
        b"x-ratelimit-limit-requests" => {
            const { HeaderName::from_static("x-ratelimit-limit-requests") }
        }
        b"x-ratelimit-remaining-tokens" => {
            const { HeaderName::from_static("x-ratelimit-remaining-tokens") }
        }
        b"x-ratelimit-remaining-requests" => {
            const { HeaderName::from_static("x-ratelimit-remaining-requests") }
        }
        b"anthropic-ratelimit-tokens-limit" => {
            const { HeaderName::from_static("anthropic-ratelimit-tokens-limit") }
        }
        b"anthropic-ratelimit-requests-limit" => {
            const { HeaderName::from_static("anthropic-ratelimit-requests-limit") }
        }
        b"anthropic-ratelimit-tokens-remaining" => {
            const { HeaderName::from_static("anthropic-ratelimit-tokens-remaining") }
        }
        b"anthropic-ratelimit-requests-remaining" => {
            const { HeaderName::from_static("anthropic-ratelimit-requests-remaining") }
        }
        _ => return None,
    })
}

/// Room for the places of up to `N` parsed headers, and those noted. The
/// room is left unwritten until a place is noted in it: zeroed first, as
/// an array of `Place`s is, it and the room for httparse's headers (which
/// `uninit_headers` leaves unwritten too), 4 KiB for 64 headers, cost
/// about 130 instructions on every head read.
pub struct Places<const N: usize> {
    room: [MaybeUninit<Place>; N],
    noted: usize,
}

impl<const N: usize> Default for Places<N> {
    fn default() -> Self {
        Places {
            room: [const { MaybeUninit::uninit() }; N],
            noted: 0,
        }
    }
}

impl<const N: usize> Places<N> {
    /// Notes where each of `headers` (the first `N` of them) lies in
    /// `buffer`, in place of any noted before.
    pub fn note(&mut self, buffer: &[u8], headers: &[httparse::Header<'_>]) {
        self.noted = 0;
        for (header, room) in headers.iter().zip(self.room.iter_mut()) {
            room.write(Place {
                name: span(buffer, header.name.as_bytes()),
                value: span(buffer, header.value),
            });
            self.noted += 1;
        }
    }

    /// The places noted, in the headers' order.
    pub fn noted(&self) -> &[Place] {
        // SAFETY: `note` wrote the first `noted` elements of `room` (and
        // `noted` never exceeds `N`); `MaybeUninit<Place>` has `Place`'s
        // layout.
        unsafe { std::slice::from_raw_parts(self.room.as_ptr().cast::<Place>(), self.noted) }
    }
}

/// Room for `N` headers for httparse's `parse_with_uninit_headers`, left
/// unwritten (see `Places`).
pub fn uninit_headers<'b, const N: usize>() -> [MaybeUninit<httparse::Header<'b>>; N] {
    [const { MaybeUninit::uninit() }; N]
}

/// The header value at `place` in `head`, the buffer httparse parsed,
/// without checking its bytes again (about 170 instructions a request).
pub fn header_value(head: &Bytes, place: &Place) -> HeaderValue {
    // SAFETY: the value is a slice httparse accepted as a header value,
    // whose bytes it takes (tab, 0x20 to 0x7E, 0x80 to 0xFF) are exactly
    // those `HeaderValue` takes (`an_accepted_value_is_a_header_value`,
    // and debug builds check every value again). Neither the request's
    // parser nor the answer's accepts obsolete line folding.
    unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(place.value.0..place.value.1)) }
}

/// Whether the `Transfer-Encoding` headers name one or more transfer
/// codings, every one of them `chunked` (the only one understood: a
/// compressed coding would reach the reader still compressed). Values that
/// are empty or not text name none.
pub fn only_chunked(headers: &HeaderMap) -> bool {
    let mut named = false;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for coding in value.split(',').map(str::trim) {
            if coding.is_empty() {
                continue;
            }
            if !coding.eq_ignore_ascii_case("chunked") {
                return false;
            }
            named = true;
        }
    }
    named
}

/// The length the `Content-Length` values say, `None` without any: digits
/// only, and every value (and every item of a comma-separated one) the
/// same.
pub fn content_length<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
) -> Result<Option<u64>, Invalid> {
    const BAD: Invalid = Invalid("its Content-Length");
    let mut length: Option<u64> = None;
    let mut note = |parsed: u64| {
        if length.is_some_and(|length| length != parsed) {
            return Err(Invalid("differing Content-Lengths"));
        }
        length = Some(parsed);
        Ok(())
    };
    for value in values {
        // Nearly always one plain number, read without the list's parsing.
        if let Some(parsed) = digits(value.as_bytes()) {
            note(parsed)?;
            continue;
        }
        let value = value.to_str().map_err(|_| BAD)?;
        for part in value.split(',') {
            note(digits(part.trim().as_bytes()).ok_or(BAD)?)?;
        }
    }
    Ok(length)
}

/// A decimal number of ASCII digits alone, one that fits in a `u64`.
fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    text.iter().try_fold(0u64, |number, &byte| {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        number.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// How a body ends.
#[derive(Debug, PartialEq)]
pub enum Framing {
    /// After this many more bytes (zero: it has ended).
    Length(u64),
    Chunked(Chunked),
    /// When the upstream closes the connection.
    UntilClose,
    /// Broken: nothing more is read.
    Failed,
}

/// Where a chunked body's reading stands.
#[derive(Debug, PartialEq)]
pub enum Chunked {
    /// Before a chunk's size line.
    Size,
    /// Inside a chunk, this many bytes before its end.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailers, then an empty line; how many
    /// bytes of trailers so far.
    Trailers(usize),
    Done,
}

/// What one step over the buffer gave.
pub enum Step {
    Data(Bytes),
    /// More must be read first.
    More,
    Done,
}

impl Framing {
    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunked::Done))
    }

    /// Takes what the buffer holds of the body: data, or the framing
    /// around it.
    pub fn step(&mut self, buffer: &mut BytesMut) -> Result<Step, Invalid> {
        let stepped = self.step_on(buffer);
        if stepped.is_err() {
            *self = Framing::Failed;
        }
        stepped
    }

    fn step_on(&mut self, buffer: &mut BytesMut) -> Result<Step, Invalid> {
        match self {
            Framing::Length(0) | Framing::Failed => Ok(Step::Done),
            Framing::Length(left) => {
                if buffer.is_empty() {
                    return Ok(Step::More);
                }
                Ok(Step::Data(take_up_to(buffer, left)))
            }
            Framing::UntilClose => {
                if buffer.is_empty() {
                    return Ok(Step::More);
                }
                Ok(Step::Data(buffer.split().freeze()))
            }
            Framing::Chunked(chunked) => loop {
                match chunked {
                    Chunked::Done => return Ok(Step::Done),
                    Chunked::Data(left) => {
                        if buffer.is_empty() {
                            return Ok(Step::More);
                        }
                        let data = take_up_to(buffer, left);
                        if *left == 0 {
                            *chunked = Chunked::DataEnd;
                        }
                        return Ok(Step::Data(data));
                    }
                    _ => {
                        if !chunked.advance(buffer)? {
                            return Ok(Step::More);
                        }
                    }
                }
            },
        }
    }

    /// Goes through the framing the buffer already holds after a chunk's
    /// data (its CRLF, the last chunk, the trailers), so that a body whose
    /// end has arrived reads as ended with its last data.
    pub fn settle(&mut self, buffer: &mut BytesMut) -> Result<(), Invalid> {
        if let Framing::Chunked(chunked) = self {
            while !matches!(chunked, Chunked::Data(_) | Chunked::Done) {
                match chunked.advance(buffer) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(invalid) => {
                        *self = Framing::Failed;
                        return Err(invalid);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Chunked {
    /// Takes the framing line or CRLF that comes next off the buffer;
    /// `false` while it is incomplete. Only for the states between data.
    fn advance(&mut self, buffer: &mut BytesMut) -> Result<bool, Invalid> {
        match self {
            Chunked::DataEnd => {
                if buffer.len() < 2 {
                    return Ok(false);
                }
                if &buffer[..2] != b"\r\n" {
                    return Err(Invalid("a chunk not followed by CRLF"));
                }
                let _ = buffer.split_to(2);
                *self = Chunked::Size;
            }
            Chunked::Size => {
                let Some(line) = take_line(buffer, MAX_CHUNK_LINE)? else {
                    return Ok(false);
                };
                let size = chunk_size(&line)?;
                *self = if size == 0 {
                    Chunked::Trailers(0)
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Trailers(seen) => {
                let Some(line) = take_line(buffer, MAX_CHUNK_LINE)? else {
                    return Ok(false);
                };
                if line.is_empty() {
                    *self = Chunked::Done;
                } else {
                    *seen += line.len();
                    if *seen > MAX_TRAILERS {
                        return Err(Invalid("trailers larger than 64 KiB"));
                    }
                }
            }
            Chunked::Data(_) | Chunked::Done => return Ok(false),
        }
        Ok(true)
    }
}

/// Takes what the buffer holds of the `left` bytes still to come, and
/// counts them off.
fn take_up_to(buffer: &mut BytesMut, left: &mut u64) -> Bytes {
    let take = buffer
        .len()
        .min(usize::try_from(*left).unwrap_or(usize::MAX));
    *left -= take as u64;
    buffer.split_to(take).freeze()
}

/// Takes one line, without its CRLF, off the buffer; `None` while it is
/// incomplete. A line ended by a bare LF, or holding a CR elsewhere, is
/// refused: peers that read such lines differently would disagree on where
/// a chunk ends.
fn take_line(buffer: &mut BytesMut, most: usize) -> Result<Option<BytesMut>, Invalid> {
    match buffer.iter().position(|&byte| byte == b'\n') {
        Some(end) if end > most => Err(Invalid("a chunk line too long")),
        Some(end) => {
            if end == 0 || buffer[end - 1] != b'\r' || buffer[..end - 1].contains(&b'\r') {
                return Err(Invalid("a chunk line not ended by CRLF"));
            }
            let mut line = buffer.split_to(end + 1);
            line.truncate(end - 1);
            Ok(Some(line))
        }
        None if buffer.len() > most => Err(Invalid("a chunk line too long")),
        None => Ok(None),
    }
}

/// A chunk's size from its line: hex digits, then perhaps extensions
/// (`;name=value`), which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, Invalid> {
    let digits = line
        .iter()
        .take_while(|byte| byte.is_ascii_hexdigit())
        .count();
    if digits == 0 {
        return Err(Invalid("a chunk size"));
    }
    let rest = &line[digits..];
    let rest_fits = rest
        .iter()
        .position(|&byte| byte != b' ' && byte != b'\t')
        .is_none_or(|at| rest[at] == b';');
    if digits > 16 || !rest_fits {
        return Err(Invalid("a chunk size"));
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| Invalid("a chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| Invalid("a chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_hold_what_was_noted_last_and_no_more_than_their_room() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\nx-a: first\r\nx-b: second\r\n\r\n";
        let mut found = uninit_headers::<4>();
        let mut request = httparse::Request::new(&mut []);
        let parsed = request.parse_with_uninit_headers(head, &mut found);
        assert!(matches!(parsed, Ok(httparse::Status::Complete(_))));
        let texts = |places: &[Place]| -> Vec<(String, String)> {
            places
                .iter()
                .map(|place| {
                    let text = |(from, to): (usize, usize)| {
                        String::from_utf8(head[from..to].to_vec()).unwrap()
                    };
                    (text(place.name), text(place.value))
                })
                .collect()
        };
        let mut places = Places::<2>::default();
        assert!(places.noted().is_empty());
        places.note(head, request.headers);
        assert_eq!(
            texts(places.noted()),
            [("Host".into(), "h".into()), ("x-a".into(), "first".into())]
        );
        places.note(head, &request.headers[2..]);
        assert_eq!(texts(places.noted()), [("x-b".into(), "second".into())]);
        let mut roomy = Places::<8>::default();
        roomy.note(head, request.headers);
        assert_eq!(texts(roomy.noted()).len(), 3);
    }

    #[test]
    fn an_accepted_value_is_a_header_value() {
        // The byte at several places in a long value, so that httparse's
        // block paths (eight, sixteen or thirty-two bytes at a time) meet
        // it as well as its byte-at-a-time one.
        let mut accepted = 0;
        for byte in 0..=u8::MAX {
            for at in [0, 7, 15, 31, 40, 63] {
                let mut value = vec![b'v'; 64];
                value[at] = byte;
                let request = [
                    b"GET / HTTP/1.1\r\nx-value: ".as_slice(),
                    &value,
                    b"\r\n\r\n",
                ]
                .concat();
                let response = [
                    b"HTTP/1.1 200 OK\r\nx-value: ".as_slice(),
                    &value,
                    b"\r\n\r\n",
                ]
                .concat();
                let mut found = [httparse::EMPTY_HEADER; 1];
                let request_value = match httparse::Request::new(&mut found).parse(&request) {
                    Ok(httparse::Status::Complete(_)) => Some(found[0].value.to_vec()),
                    _ => None,
                };
                let mut found = [httparse::EMPTY_HEADER; 1];
                let response_value = match httparse::Response::new(&mut found).parse(&response) {
                    Ok(httparse::Status::Complete(_)) => Some(found[0].value.to_vec()),
                    _ => None,
                };
                for value in [request_value, response_value].into_iter().flatten() {
                    assert!(
                        HeaderValue::from_bytes(&value).is_ok(),
                        "byte {byte:#04x} at {at}"
                    );
                    accepted += 1;
                }
            }
        }
        // Tab, 0x20 to 0x7E and 0x80 to 0xFF, at every place, in requests
        // and answers (a space or tab at the value's start is taken as
        // the whitespace before it, and the value is still sound); and a
        // line feed as the last byte, taken as the line's end.
        assert_eq!(accepted, 2 * 6 * (1 + 95 + 128) + 2);
        let head = Bytes::from_static(b"x-value: text");
        let place = Place {
            name: (0, 7),
            value: (9, 13),
        };
        assert_eq!(header_value(&head, &place), "text");
    }

    #[test]
    fn header_names_read_as_from_bytes_reads_them() {
        for name in [
            "host",
            "Host",
            "content-type",
            "Content-Type",
            "CONTENT-TYPE",
            "content-length",
            "Content-Length",
            "authorization",
            "Authorization",
            "user-agent",
            "User-Agent",
            "accept",
            "Accept",
            "accept-encoding",
            "Accept-Encoding",
            "connection",
            "Connection",
            "date",
            "Date",
            "server",
            "Server",
            "transfer-encoding",
            "Transfer-Encoding",
            "cache-control",
            "Cache-Control",
            "x-request-id",
            "X-Request-Id",
            "X-Stainless-Package-Version",
            "x-stainless-os",
            "X-STAINLESS-ARCH",
            "anthropic-version",
            "Traceparent",
            "x-stainless-o",
            "x-stainless-oss",
            "X-Custom-Thing",
            "hostname",
            "hos",
        ] {
            let expected = HeaderName::from_bytes(name.as_bytes()).unwrap();
            let read = header_name(name.as_bytes()).unwrap();
            assert_eq!(read, expected, "{name}");
            assert_eq!(read.as_str(), name.to_ascii_lowercase(), "{name}");
        }
        // Each of the SDKs' names, in both its spellings, is the name
        // `from_bytes` reads.
        for name in [
            "x-stainless-os",
            "X-Stainless-OS",
            "x-stainless-arch",
            "X-Stainless-Arch",
            "x-stainless-lang",
            "X-Stainless-Lang",
            "x-stainless-async",
            "X-Stainless-Async",
            "x-stainless-runtime",
            "X-Stainless-Runtime",
            "x-stainless-timeout",
            "X-Stainless-Timeout",
            "x-stainless-retry-count",
            "X-Stainless-Retry-Count",
            "x-stainless-read-timeout",
            "X-Stainless-Read-Timeout",
            "x-stainless-package-version",
            "X-Stainless-Package-Version",
            "x-stainless-runtime-version",
            "X-Stainless-Runtime-Version",
            "x-api-key",
            "X-Api-Key",
            "x-request-id",
            "X-Request-Id",
            "X-Request-ID",
            "anthropic-beta",
            "Anthropic-Beta",
            "anthropic-version",
            "Anthropic-Version",
            "openai-project",
            "OpenAI-Project",
            "openai-organization",
            "OpenAI-Organization",
            "traceparent",
            "Traceparent",
            "tracestate",
            "Tracestate",
        ]
        .into_iter()
        // and the rate-limit names a successful answer keeps
        .chain(
            crate::h1::READ_OF_SUCCESS
                .into_iter()
                .filter(|name| name.contains("ratelimit")),
        ) {
            let known = client_name(name.as_bytes()).expect(name);
            assert_eq!(known, HeaderName::from_bytes(name.as_bytes()).unwrap());
            assert_eq!(known.as_str(), name.to_ascii_lowercase(), "{name}");
        }
        assert_eq!(client_name(b"X-STAINLESS-OS"), None);
        for bad in ["", "a b", "na:me", "h\u{e9}llo"] {
            assert!(header_name(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_lengths_are_digits_and_agree() {
        let read = |values: &[&'static str]| {
            content_length(
                values
                    .iter()
                    .map(|value| HeaderValue::from_static(value))
                    .collect::<Vec<_>>()
                    .iter(),
            )
        };
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&["0"]), Ok(Some(0)));
        assert_eq!(read(&["1234"]), Ok(Some(1234)));
        assert_eq!(read(&["18446744073709551615"]), Ok(Some(u64::MAX)));
        assert_eq!(read(&["12", "12"]), Ok(Some(12)));
        assert_eq!(read(&["12, 12"]), Ok(Some(12)));
        assert_eq!(read(&[" 7 "]), Ok(Some(7)));
        for bad in [
            &["18446744073709551616"][..],
            &["-1"],
            &["+1"],
            &["1e3"],
            &[""],
            &["1,"],
            &["0x10"],
        ] {
            assert_eq!(read(bad), Err(Invalid("its Content-Length")), "{bad:?}");
        }
        assert_eq!(read(&["1", "2"]), Err(Invalid("differing Content-Lengths")));
        assert_eq!(read(&["3, 4"]), Err(Invalid("differing Content-Lengths")));
    }

    /// Reads a whole chunked body from `text`: its data, or the error.
    fn read_chunked(text: &[u8]) -> Result<Vec<u8>, Invalid> {
        let mut framing = Framing::Chunked(Chunked::Size);
        let mut buffer = BytesMut::from(text);
        let mut data = Vec::new();
        loop {
            match framing.step(&mut buffer)? {
                Step::Data(piece) => data.extend_from_slice(&piece),
                Step::Done => return Ok(data),
                Step::More => return Err(Invalid("incomplete")),
            }
        }
    }

    #[test]
    fn chunk_lines_end_in_crlf_and_a_bad_one_fails_the_body() {
        assert_eq!(
            read_chunked(b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n").unwrap(),
            b"abcde"
        );
        for bad in [
            &b"3;x\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabc\r\n0\n\n",
            b"3;a\rb\r\nabc\r\n0\r\n\r\n",
            b"zz\r\n3\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\nzz\r\n0\r\n\r\n",
        ] {
            assert!(
                read_chunked(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A failed body stays failed: nothing after the error is read as data.
        let mut framing = Framing::Chunked(Chunked::Size);
        let mut buffer = BytesMut::from(&b"zz\r\n3\r\nabc\r\n0\r\n\r\n"[..]);
        assert!(framing.step(&mut buffer).is_err());
        assert_eq!(framing, Framing::Failed);
    }

    #[test]
    fn chunk_sizes_are_hex_with_extensions_ignored() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"FF;a=b;c").unwrap(), 255);
        assert_eq!(chunk_size(b"0 \t; last").unwrap(), 0);
        assert_eq!(chunk_size(b"ffffffffffffffff").unwrap(), u64::MAX);
        for bad in [&b""[..], b";x", b"1g", b"1 2", b"-1", b"10000000000000000"] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
