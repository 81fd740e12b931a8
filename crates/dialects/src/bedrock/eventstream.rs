//! AWS's binary event-stream framing (`application/vnd.amazon.eventstream`),
//! which carries Bedrock's streamed answers: an incremental decoder that
//! checks both checksums and bounds every length before buffering anything,
//! and the writer that tests and mock upstreams use.
//!
//! A message, all integers big-endian:
//!
//! ```text
//! total length u32 | headers length u32 | prelude CRC-32 u32     the 12-byte prelude
//! headers                                                         headers length bytes
//! payload                                                         the rest
//! message CRC-32 u32                                              over every byte before it
//! ```
//!
//! A header is its name's length (u8), the name (UTF-8), a value type (u8)
//! and the value: 0 and 1 are `true` and `false` with no value bytes; 2 a
//! byte, 3 an i16, 4 an i32, 5 an i64; 6 bytes and 7 a UTF-8 string, each
//! after a u16 length; 8 a timestamp (i64 milliseconds since the Unix
//! epoch); 9 a UUID (16 bytes).
//!
//! The decoder never trusts a length before the prelude's checksum has
//! vouched for it, refuses a message larger than its limit as soon as the
//! prelude says so, and only ever buffers bytes that have arrived. It
//! copies each byte at most once, so a stream fed one byte at a time costs
//! linear time, and whole messages at the front of a read are decoded in
//! place. After an error it stays failed: once framing is lost there is no
//! way to find the next message boundary.

use std::collections::HashSet;

use super::crc::crc32;

/// The prelude: total length, headers length, prelude checksum.
const PRELUDE_LEN: usize = 12;
/// The trailing message checksum.
const CRC_LEN: usize = 4;
/// A message with no headers and no payload.
const MIN_MESSAGE_LEN: usize = PRELUDE_LEN + CRC_LEN;

/// Largest header section accepted: 128 KiB, the limit of AWS's own
/// implementations (`AWS_EVENT_STREAM_MAX_HEADERS_SIZE` in aws-c-event-stream,
/// `_MAX_HEADERS_LENGTH` in botocore's `eventstream.py`).
pub const MAX_HEADERS_BYTES: usize = 128 * 1024;

/// Default bound on one message: 16 MiB, aws-c-event-stream's
/// `AWS_EVENT_STREAM_MAX_MESSAGE_SIZE`. Bedrock's events are far smaller.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

const TYPE_TRUE: u8 = 0;
const TYPE_FALSE: u8 = 1;
const TYPE_BYTE: u8 = 2;
const TYPE_SHORT: u8 = 3;
const TYPE_INT: u8 = 4;
const TYPE_LONG: u8 = 5;
const TYPE_BYTES: u8 = 6;
const TYPE_STRING: u8 = 7;
const TYPE_TIMESTAMP: u8 = 8;
const TYPE_UUID: u8 = 9;

/// A header's value, by its wire type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(Vec<u8>),
    String(String),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

impl HeaderValue {
    /// The value when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::String(text) => Some(text),
            _ => None,
        }
    }
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// In wire order; names are unique (the decoder refuses duplicates).
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value)
    }

    /// The named header's value when it is a string.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(HeaderValue::as_str)
    }
}

/// Why bytes are not a well-formed event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventStreamError {
    #[error(
        "an event-stream prelude fails its checksum (computed {computed:#010x}, the frame says {declared:#010x})"
    )]
    PreludeChecksum { computed: u32, declared: u32 },
    #[error(
        "an event-stream message fails its checksum (computed {computed:#010x}, the frame says {declared:#010x})"
    )]
    MessageChecksum { computed: u32, declared: u32 },
    #[error(
        "an event-stream prelude declares {total} bytes in all with {headers} bytes of headers, which do not fit in a message"
    )]
    InconsistentLengths { total: u32, headers: u32 },
    #[error("an event-stream message declares {length} bytes, more than the limit of {limit}")]
    TooLarge { length: u32, limit: usize },
    #[error(
        "an event-stream message declares {length} bytes of headers, more than the limit of {limit}"
    )]
    HeadersTooLarge { length: u32, limit: usize },
    #[error("an event-stream header runs past the end of its message's header section")]
    TruncatedHeader,
    #[error("an event-stream header has the unknown value type {0}")]
    BadHeaderType(u8),
    #[error("an event-stream header's {what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    #[error("the event-stream header `{0}` appears twice in one message")]
    DuplicateHeader(String),
    #[error("the event stream ended inside a message, {buffered} bytes into it")]
    Truncated { buffered: usize },
}

/// Splits a byte stream into messages, whatever the sizes of the reads.
#[derive(Debug)]
pub struct EventStreamDecoder {
    /// The message being assembled: its first bytes, until all have come.
    pending: Vec<u8>,
    /// The pending message's total length, once its prelude is checked.
    expected: Option<usize>,
    max_message_bytes: usize,
    /// The error that broke the stream; every later call repeats it.
    failure: Option<EventStreamError>,
}

impl Default for EventStreamDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_BYTES)
    }
}

impl EventStreamDecoder {
    /// A decoder refusing any message longer than `max_message_bytes`
    /// (prelude and checksums included).
    pub fn new(max_message_bytes: usize) -> EventStreamDecoder {
        EventStreamDecoder {
            pending: Vec::new(),
            expected: None,
            max_message_bytes,
            failure: None,
        }
    }

    /// Feeds the next bytes read; completed messages are appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Message>) -> Result<(), EventStreamError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let result = self.feed_unchecked(bytes, out);
        if let Err(error) = &result {
            self.failure = Some(error.clone());
            self.pending = Vec::new();
            self.expected = None;
        }
        result
    }

    /// The stream ended: an error if it broke or stopped inside a message.
    pub fn finish(&self) -> Result<(), EventStreamError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(EventStreamError::Truncated {
                buffered: self.pending.len(),
            })
        }
    }

    fn feed_unchecked(
        &mut self,
        mut bytes: &[u8],
        out: &mut Vec<Message>,
    ) -> Result<(), EventStreamError> {
        while !bytes.is_empty() {
            if self.pending.is_empty()
                && let Some(prelude) = bytes.get(..PRELUDE_LEN)
            {
                let total = check_prelude(prelude, self.max_message_bytes)?;
                if let Some(frame) = bytes.get(..total) {
                    out.push(decode_frame(frame)?);
                    bytes = &bytes[total..];
                    continue;
                }
                self.expected = Some(total);
            }
            let wanted = self.expected.unwrap_or(PRELUDE_LEN);
            let take = wanted.saturating_sub(self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.expected.is_none() && self.pending.len() == PRELUDE_LEN {
                self.expected = Some(check_prelude(&self.pending, self.max_message_bytes)?);
            }
            if let Some(total) = self.expected
                && self.pending.len() == total
            {
                out.push(decode_frame(&self.pending)?);
                self.pending.clear();
                self.expected = None;
            }
        }
        Ok(())
    }

    /// How much memory the pending buffer holds, for the tests that check
    /// a declared length is not allocated up front.
    #[cfg(test)]
    pub(super) fn buffered_capacity(&self) -> usize {
        self.pending.capacity()
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(source) = bytes.get(at..at + 4) {
        word.copy_from_slice(source);
    }
    u32::from_be_bytes(word)
}

/// Checks a 12-byte prelude and returns the message's total length.
fn check_prelude(prelude: &[u8], max_message_bytes: usize) -> Result<usize, EventStreamError> {
    let total = be_u32(prelude, 0);
    let headers = be_u32(prelude, 4);
    let declared = be_u32(prelude, 8);
    let computed = crc32(prelude.get(..8).unwrap_or_default());
    if computed != declared {
        return Err(EventStreamError::PreludeChecksum { computed, declared });
    }
    let total_bytes = usize::try_from(total).unwrap_or(usize::MAX);
    let header_bytes = usize::try_from(headers).unwrap_or(usize::MAX);
    if total_bytes < MIN_MESSAGE_LEN || header_bytes > total_bytes - MIN_MESSAGE_LEN {
        return Err(EventStreamError::InconsistentLengths { total, headers });
    }
    if total_bytes > max_message_bytes {
        return Err(EventStreamError::TooLarge {
            length: total,
            limit: max_message_bytes,
        });
    }
    if header_bytes > MAX_HEADERS_BYTES {
        return Err(EventStreamError::HeadersTooLarge {
            length: headers,
            limit: MAX_HEADERS_BYTES,
        });
    }
    Ok(total_bytes)
}

/// Decodes one complete message whose prelude has been checked.
fn decode_frame(frame: &[u8]) -> Result<Message, EventStreamError> {
    let body_len = frame.len().saturating_sub(CRC_LEN);
    let (body, checksum) = frame.split_at(body_len);
    let declared = be_u32(checksum, 0);
    let computed = crc32(body);
    if computed != declared {
        return Err(EventStreamError::MessageChecksum { computed, declared });
    }
    let header_len = usize::try_from(be_u32(body, 4)).unwrap_or(usize::MAX);
    let headers_end = PRELUDE_LEN.saturating_add(header_len);
    let (Some(section), Some(payload)) =
        (body.get(PRELUDE_LEN..headers_end), body.get(headers_end..))
    else {
        return Err(EventStreamError::InconsistentLengths {
            total: be_u32(body, 0),
            headers: be_u32(body, 4),
        });
    };
    Ok(Message {
        headers: decode_headers(section)?,
        payload: payload.to_vec(),
    })
}

/// Reads a header section from front to back.
struct HeaderReader<'a> {
    bytes: &'a [u8],
}

impl<'a> HeaderReader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], EventStreamError> {
        if count > self.bytes.len() {
            return Err(EventStreamError::TruncatedHeader);
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EventStreamError> {
        self.take(N)?
            .try_into()
            .map_err(|_| EventStreamError::TruncatedHeader)
    }

    fn u8(&mut self) -> Result<u8, EventStreamError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, EventStreamError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn value(&mut self) -> Result<HeaderValue, EventStreamError> {
        let value = match self.u8()? {
            TYPE_TRUE => HeaderValue::Bool(true),
            TYPE_FALSE => HeaderValue::Bool(false),
            TYPE_BYTE => HeaderValue::Byte(i8::from_be_bytes(self.array()?)),
            TYPE_SHORT => HeaderValue::Short(i16::from_be_bytes(self.array()?)),
            TYPE_INT => HeaderValue::Int(i32::from_be_bytes(self.array()?)),
            TYPE_LONG => HeaderValue::Long(i64::from_be_bytes(self.array()?)),
            TYPE_BYTES => {
                let length = usize::from(self.u16()?);
                HeaderValue::Bytes(self.take(length)?.to_vec())
            }
            TYPE_STRING => {
                let length = usize::from(self.u16()?);
                let text = std::str::from_utf8(self.take(length)?).map_err(|_| {
                    EventStreamError::InvalidUtf8 {
                        what: "string value",
                    }
                })?;
                HeaderValue::String(text.to_owned())
            }
            TYPE_TIMESTAMP => HeaderValue::Timestamp(i64::from_be_bytes(self.array()?)),
            TYPE_UUID => HeaderValue::Uuid(self.array()?),
            unknown => return Err(EventStreamError::BadHeaderType(unknown)),
        };
        Ok(value)
    }
}

/// Duplicate names are refused, as botocore's decoder does: two readers
/// picking different duplicates could disagree on what a message is.
fn decode_headers(section: &[u8]) -> Result<Vec<(String, HeaderValue)>, EventStreamError> {
    let mut reader = HeaderReader { bytes: section };
    let mut headers = Vec::new();
    let mut seen = HashSet::new();
    while !reader.bytes.is_empty() {
        let name_len = usize::from(reader.u8()?);
        let name = std::str::from_utf8(reader.take(name_len)?)
            .map_err(|_| EventStreamError::InvalidUtf8 { what: "name" })?;
        if !seen.insert(name) {
            return Err(EventStreamError::DuplicateHeader(name.to_owned()));
        }
        let value = reader.value()?;
        headers.push((name.to_owned(), value));
    }
    Ok(headers)
}

/// Writes one message.
///
/// # Panics
///
/// When the message cannot be framed: a header name over 255 bytes, a
/// string or bytes value over 65,535 bytes, or a message over 4 GiB. The
/// writer serves tests and mocks, whose messages are the caller's own.
pub fn encode_message(headers: &[(&str, HeaderValue)], payload: &[u8]) -> Vec<u8> {
    let mut section = Vec::new();
    for (name, value) in headers {
        let name_len =
            u8::try_from(name.len()).expect("an event-stream header name is at most 255 bytes");
        section.push(name_len);
        section.extend_from_slice(name.as_bytes());
        encode_value(value, &mut section);
    }
    let total = PRELUDE_LEN + section.len() + payload.len() + CRC_LEN;
    let total_field = u32::try_from(total).expect("an event-stream message is under 4 GiB");
    let headers_field = u32::try_from(section.len()).expect("headers are shorter than the message");
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&total_field.to_be_bytes());
    message.extend_from_slice(&headers_field.to_be_bytes());
    message.extend_from_slice(&crc32(&message).to_be_bytes());
    message.extend_from_slice(&section);
    message.extend_from_slice(payload);
    message.extend_from_slice(&crc32(&message).to_be_bytes());
    message
}

fn encode_value(value: &HeaderValue, out: &mut Vec<u8>) {
    let with_length = |type_code: u8, bytes: &[u8], out: &mut Vec<u8>| {
        let length = u16::try_from(bytes.len())
            .expect("an event-stream header value is at most 65,535 bytes");
        out.push(type_code);
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(bytes);
    };
    match value {
        HeaderValue::Bool(true) => out.push(TYPE_TRUE),
        HeaderValue::Bool(false) => out.push(TYPE_FALSE),
        HeaderValue::Byte(byte) => {
            out.push(TYPE_BYTE);
            out.extend_from_slice(&byte.to_be_bytes());
        }
        HeaderValue::Short(short) => {
            out.push(TYPE_SHORT);
            out.extend_from_slice(&short.to_be_bytes());
        }
        HeaderValue::Int(int) => {
            out.push(TYPE_INT);
            out.extend_from_slice(&int.to_be_bytes());
        }
        HeaderValue::Long(long) => {
            out.push(TYPE_LONG);
            out.extend_from_slice(&long.to_be_bytes());
        }
        HeaderValue::Bytes(bytes) => with_length(TYPE_BYTES, bytes, out),
        HeaderValue::String(text) => with_length(TYPE_STRING, text.as_bytes(), out),
        HeaderValue::Timestamp(millis) => {
            out.push(TYPE_TIMESTAMP);
            out.extend_from_slice(&millis.to_be_bytes());
        }
        HeaderValue::Uuid(uuid) => {
            out.push(TYPE_UUID);
            out.extend_from_slice(uuid);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .map(|digit| match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                _ => digit - b'A' + 10,
            })
            .collect();
        assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
        digits
            .chunks(2)
            .map(|pair| pair[0] << 4 | pair[1])
            .collect()
    }

    fn decode_in_pieces(
        input: &[u8],
        piece: usize,
        max: usize,
    ) -> Result<Vec<Message>, EventStreamError> {
        let mut decoder = EventStreamDecoder::new(max);
        let mut messages = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            decoder.feed(chunk, &mut messages)?;
        }
        decoder.finish()?;
        Ok(messages)
    }

    fn decode(input: &[u8]) -> Result<Vec<Message>, EventStreamError> {
        decode_in_pieces(input, input.len(), DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// A message with no headers, from aws-c-event-stream's
    /// `tests/message_deserializer_test.c`, as quoted in smithy-rs
    /// (`rust-runtime/aws-smithy-eventstream/src/frame.rs`,
    /// `read_message_no_headers`).
    const CRT_NO_HEADERS: &str = "0000001d 00000000 fd528c5a 7b27666f6f273a27626172277d c3653936";

    /// The same payload with a `content-type` header, from the same tests
    /// (`read_message_one_header` in smithy-rs).
    const CRT_ONE_HEADER: &str = "0000003d 00000020 07fd8396
        0c 636f6e74656e742d74797065 07 0010 6170706c69636174696f6e2f6a736f6e
        7b27666f6f273a27626172277d 8d9c08b1";

    /// smithy-rs `rust-runtime/aws-smithy-eventstream/test_data/valid_with_all_headers_and_payload`:
    /// one header of every type, then `some payload`.
    const SMITHY_ALL_HEADERS: &str = "00000096 0000007a 8bb495fb
        04 74727565 00
        05 66616c7365 01
        04 62797465 02 32
        05 73686f7274 03 4e20
        03 696e74 04 0007a120
        04 6c6f6e67 05 0000000ba43b7400
        05 6279746573 06 000a 736f6d65206279746573
        03 737472 07 0008 736f6d6520737472
        04 74696d65 08 000000012a05f200
        04 75756964 09 b79bc914de214e13b8b2bc47e85b7f0b
        736f6d65207061796c6f6164 01a05860";

    /// smithy-rs `test_data/valid_empty_payload`: one i16 header, no payload.
    const SMITHY_EMPTY_PAYLOAD: &str =
        "0000001f 0000000f 172dc2ab 0b 736f6d652d686561646572 03 01f4 933c5cad";

    fn all_header_types() -> Vec<(&'static str, HeaderValue)> {
        vec![
            ("true", HeaderValue::Bool(true)),
            ("false", HeaderValue::Bool(false)),
            ("byte", HeaderValue::Byte(50)),
            ("short", HeaderValue::Short(20_000)),
            ("int", HeaderValue::Int(500_000)),
            ("long", HeaderValue::Long(50_000_000_000)),
            ("bytes", HeaderValue::Bytes(b"some bytes".to_vec())),
            ("str", HeaderValue::String("some str".into())),
            ("time", HeaderValue::Timestamp(5_000_000_000)),
            (
                "uuid",
                HeaderValue::Uuid([
                    0xb7, 0x9b, 0xc9, 0x14, 0xde, 0x21, 0x4e, 0x13, 0xb8, 0xb2, 0xbc, 0x47, 0xe8,
                    0x5b, 0x7f, 0x0b,
                ]),
            ),
        ]
    }

    fn owned(headers: &[(&str, HeaderValue)]) -> Vec<(String, HeaderValue)> {
        headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect()
    }

    #[test]
    fn decodes_aws_reference_frames() {
        assert_eq!(
            decode(&hex(CRT_NO_HEADERS)).unwrap(),
            vec![Message {
                headers: vec![],
                payload: b"{'foo':'bar'}".to_vec()
            }]
        );
        let one_header = decode(&hex(CRT_ONE_HEADER)).unwrap();
        assert_eq!(one_header.len(), 1);
        assert_eq!(
            one_header[0].header_str("content-type"),
            Some("application/json")
        );
        assert_eq!(one_header[0].payload, b"{'foo':'bar'}");
        assert_eq!(
            decode(&hex(SMITHY_ALL_HEADERS)).unwrap(),
            vec![Message {
                headers: owned(&all_header_types()),
                payload: b"some payload".to_vec()
            }]
        );
        assert_eq!(
            decode(&hex(SMITHY_EMPTY_PAYLOAD)).unwrap(),
            vec![Message {
                headers: vec![("some-header".into(), HeaderValue::Short(500))],
                payload: vec![]
            }]
        );
    }

    #[test]
    fn the_writer_reproduces_the_reference_frames_byte_for_byte() {
        assert_eq!(
            encode_message(&all_header_types(), b"some payload"),
            hex(SMITHY_ALL_HEADERS)
        );
        assert_eq!(encode_message(&[], b"{'foo':'bar'}"), hex(CRT_NO_HEADERS));
        assert_eq!(
            encode_message(
                &[(
                    "content-type",
                    HeaderValue::String("application/json".into())
                )],
                b"{'foo':'bar'}"
            ),
            hex(CRT_ONE_HEADER)
        );
    }

    #[test]
    fn several_messages_decode_whole_and_byte_by_byte() {
        let mut stream = hex(SMITHY_ALL_HEADERS);
        stream.extend(hex(SMITHY_EMPTY_PAYLOAD));
        stream.extend(hex(CRT_NO_HEADERS));
        let whole = decode(&stream).unwrap();
        assert_eq!(whole.len(), 3);
        for piece in [1, 2, 5, 11, 12, 13, 150, 151] {
            assert_eq!(
                decode_in_pieces(&stream, piece, DEFAULT_MAX_MESSAGE_BYTES).unwrap(),
                whole,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_corrupt_prelude_is_detected() {
        let mut frame = hex(SMITHY_ALL_HEADERS);
        frame[8..12].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(
            decode(&frame),
            Err(EventStreamError::PreludeChecksum {
                computed: 0x8bb4_95fb,
                declared: 0xdead_beef
            })
        );
        // A flipped length bit is caught by the prelude checksum before the
        // length is believed.
        let mut frame = hex(CRT_NO_HEADERS);
        frame[2] ^= 0x40;
        assert!(matches!(
            decode(&frame),
            Err(EventStreamError::PreludeChecksum { .. })
        ));
    }

    #[test]
    fn a_corrupt_message_is_detected() {
        let mut frame = hex(SMITHY_ALL_HEADERS);
        let end = frame.len();
        frame[end - 4..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(
            decode(&frame),
            Err(EventStreamError::MessageChecksum {
                computed: 0x01a0_5860,
                declared: 0xdead_beef
            })
        );
        let mut frame = hex(CRT_NO_HEADERS);
        frame[14] ^= 0x01;
        assert!(matches!(
            decode(&frame),
            Err(EventStreamError::MessageChecksum { .. })
        ));
    }

    /// A frame with a correct prelude checksum for the given lengths.
    fn prelude(total: u32, headers: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&total.to_be_bytes());
        bytes.extend_from_slice(&headers.to_be_bytes());
        bytes.extend_from_slice(&crc32(&bytes).to_be_bytes());
        bytes
    }

    /// A whole frame around raw header bytes, with both checksums right.
    fn frame_with_raw_headers(section: &[u8], payload: &[u8]) -> Vec<u8> {
        let total = (MIN_MESSAGE_LEN + section.len() + payload.len()) as u32;
        let mut frame = prelude(total, section.len() as u32);
        frame.extend_from_slice(section);
        frame.extend_from_slice(payload);
        let checksum = crc32(&frame);
        frame.extend_from_slice(&checksum.to_be_bytes());
        frame
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_it_is_buffered() {
        let mut decoder = EventStreamDecoder::new(1024);
        let mut messages = Vec::new();
        let mut input = prelude(u32::MAX, 0);
        input.extend_from_slice(&[0; 64]);
        assert_eq!(
            decoder.feed(&input, &mut messages),
            Err(EventStreamError::TooLarge {
                length: u32::MAX,
                limit: 1024
            })
        );
        assert_eq!(decoder.buffered_capacity(), 0);

        // Arriving byte by byte, only the prelude is ever buffered.
        let mut decoder = EventStreamDecoder::new(1024);
        let mut result = Ok(());
        for byte in &input {
            result = decoder.feed(std::slice::from_ref(byte), &mut messages);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(EventStreamError::TooLarge { .. })));
        assert!(decoder.buffered_capacity() <= 64);
        // The limit counts the whole message: exactly at it is accepted.
        let message = encode_message(&[], &[7; 100]);
        assert!(decode_in_pieces(&message, 3, message.len()).is_ok());
        assert!(matches!(
            decode_in_pieces(&message, 3, message.len() - 1),
            Err(EventStreamError::TooLarge { .. })
        ));
    }

    #[test]
    fn an_oversized_header_section_is_refused() {
        let total = (MIN_MESSAGE_LEN + MAX_HEADERS_BYTES + 1) as u32;
        assert_eq!(
            decode_in_pieces(&prelude(total, total - 16), 12, usize::MAX),
            Err(EventStreamError::HeadersTooLarge {
                length: total - 16,
                limit: MAX_HEADERS_BYTES
            })
        );
    }

    #[test]
    fn inconsistent_lengths_are_refused() {
        assert_eq!(
            decode(&prelude(15, 0)),
            Err(EventStreamError::InconsistentLengths {
                total: 15,
                headers: 0
            })
        );
        assert_eq!(
            decode(&prelude(20, 5)),
            Err(EventStreamError::InconsistentLengths {
                total: 20,
                headers: 5
            })
        );
        // Headers filling everything between prelude and checksum is fine.
        assert!(decode(&frame_with_raw_headers(&[1, b'a', 0], b"")).is_ok());
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(
            decode(&frame_with_raw_headers(&[1, b'a', 42], b"")),
            Err(EventStreamError::BadHeaderType(42))
        );
        // A name longer than the section.
        assert_eq!(
            decode(&frame_with_raw_headers(&[9, b'a', 0], b"payload")),
            Err(EventStreamError::TruncatedHeader)
        );
        // A string whose length runs into the payload.
        assert_eq!(
            decode(&frame_with_raw_headers(
                &[1, b'a', TYPE_STRING, 0, 3, b'x'],
                b"yz"
            )),
            Err(EventStreamError::TruncatedHeader)
        );
        // An i64 cut short.
        assert_eq!(
            decode(&frame_with_raw_headers(&[1, b'a', TYPE_LONG, 0, 0], b"")),
            Err(EventStreamError::TruncatedHeader)
        );
        assert_eq!(
            decode(&frame_with_raw_headers(&[1, 0xff, TYPE_TRUE], b"")),
            Err(EventStreamError::InvalidUtf8 { what: "name" })
        );
        assert_eq!(
            decode(&frame_with_raw_headers(
                &[1, b'a', TYPE_STRING, 0, 2, 0xc3, 0x28],
                b""
            )),
            Err(EventStreamError::InvalidUtf8 {
                what: "string value"
            })
        );
        assert_eq!(
            decode(&frame_with_raw_headers(
                &[1, b'a', TYPE_TRUE, 1, b'a', TYPE_FALSE],
                b""
            )),
            Err(EventStreamError::DuplicateHeader("a".into()))
        );
    }

    #[test]
    fn a_stream_cut_inside_a_message_fails_at_finish() {
        let frame = hex(CRT_ONE_HEADER);
        for cut in 1..frame.len() {
            let mut decoder = EventStreamDecoder::default();
            let mut messages = Vec::new();
            decoder.feed(&frame[..cut], &mut messages).unwrap();
            assert!(messages.is_empty());
            assert_eq!(
                decoder.finish(),
                Err(EventStreamError::Truncated { buffered: cut })
            );
        }
        let mut decoder = EventStreamDecoder::default();
        let mut messages = Vec::new();
        decoder.feed(&frame, &mut messages).unwrap();
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn a_broken_stream_stays_broken() {
        let mut decoder = EventStreamDecoder::default();
        let mut messages = Vec::new();
        let error = decoder.feed(&prelude(3, 0), &mut messages).unwrap_err();
        assert_eq!(
            decoder.feed(&hex(CRT_NO_HEADERS), &mut messages),
            Err(error.clone())
        );
        assert_eq!(decoder.finish(), Err(error));
        assert!(messages.is_empty());
    }

    #[test]
    fn errors_explain_themselves() {
        assert_eq!(
            EventStreamError::TooLarge {
                length: 70_000,
                limit: 1024
            }
            .to_string(),
            "an event-stream message declares 70000 bytes, more than the limit of 1024"
        );
        assert_eq!(
            EventStreamError::PreludeChecksum {
                computed: 0x8bb4_95fb,
                declared: 0xdead_beef
            }
            .to_string(),
            "an event-stream prelude fails its checksum (computed 0x8bb495fb, the frame says 0xdeadbeef)"
        );
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            any::<bool>().prop_map(HeaderValue::Bool),
            any::<i8>().prop_map(HeaderValue::Byte),
            any::<i16>().prop_map(HeaderValue::Short),
            any::<i32>().prop_map(HeaderValue::Int),
            any::<i64>().prop_map(HeaderValue::Long),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(HeaderValue::Bytes),
            "\\PC{0,20}".prop_map(HeaderValue::String),
            any::<i64>().prop_map(HeaderValue::Timestamp),
            any::<[u8; 16]>().prop_map(HeaderValue::Uuid),
        ]
    }

    proptest! {
        /// Whatever the headers and payload, and however the bytes are cut
        /// into reads, decoding gives back what was encoded.
        #[test]
        fn decoding_inverts_encoding(
            headers in proptest::collection::btree_map("[a-z:-]{1,12}", header_value(), 0..8),
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..4),
            piece in 1usize..40,
        ) {
            let headers: Vec<(&str, HeaderValue)> =
                headers.iter().map(|(name, value)| (name.as_str(), value.clone())).collect();
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for payload in &payloads {
                stream.extend(encode_message(&headers, payload));
                expected.push(Message { headers: owned(&headers), payload: payload.clone() });
            }
            prop_assert_eq!(decode(&stream).unwrap(), expected.clone());
            prop_assert_eq!(
                decode_in_pieces(&stream, piece, DEFAULT_MAX_MESSAGE_BYTES).unwrap(),
                expected
            );
        }

        /// Any one corrupted byte of a message is an error by the end of
        /// the stream: checksums catch every single-byte change.
        #[test]
        fn any_corrupted_byte_is_caught(index in 0usize..200, flip in 1u8..=255) {
            let mut frame = hex(SMITHY_ALL_HEADERS);
            let index = index % frame.len();
            frame[index] ^= flip;
            prop_assert!(decode(&frame).is_err());
        }

        /// Arbitrary bytes never panic the decoder, in any piece size.
        #[test]
        fn arbitrary_bytes_never_panic(
            input in proptest::collection::vec(any::<u8>(), 0..400),
            piece in 1usize..50,
        ) {
            let _ = decode_in_pieces(&input, piece, 256);
        }

        /// Arbitrary bytes behind a valid prelude (so they reach the header
        /// parser) never panic it either.
        #[test]
        fn arbitrary_header_sections_never_panic(
            section in proptest::collection::vec(any::<u8>(), 0..120),
            payload in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let _ = decode(&frame_with_raw_headers(&section, &payload));
        }
    }
}
