//! Server-Sent Events: an incremental decoder for upstream streams and the
//! framing of events sent to clients.
//!
//! The decoder follows the WHATWG event-stream rules: lines end in LF, CR or
//! CRLF (a CRLF may be split across two reads); `data` lines accumulate,
//! joined by LF; a blank line dispatches; lines starting with `:` are
//! comments. It never rescans bytes it has already looked at, so a long
//! event arriving in many small reads costs linear time.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when the stream named one.
    pub event: Option<String>,
    /// The `data:` lines, joined by LF.
    pub data: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an event grew beyond {limit} bytes without ending")]
    EventTooLarge { limit: usize },
    #[error("the stream is not valid UTF-8")]
    InvalidUtf8,
}

/// Default bound on one event's size, so a broken upstream cannot make the
/// gateway buffer without limit.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// The previous read ended in CR: a leading LF in the next read belongs
    /// to that CRLF and is not a second (blank) line.
    after_cr: bool,
    event: Option<String>,
    data: String,
    /// Whether any `data` line has been seen for the pending event.
    has_data: bool,
    pending_bytes: usize,
    max_event_bytes: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    pub fn new(max_event_bytes: usize) -> SseDecoder {
        SseDecoder {
            line: Vec::new(),
            after_cr: false,
            event: None,
            data: String::new(),
            has_data: false,
            pending_bytes: 0,
            max_event_bytes,
        }
    }

    /// Feeds the next bytes read; completed events are appended to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.after_cr && !bytes.is_empty() {
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
            self.after_cr = false;
        }
        while let Some(end) = bytes
            .iter()
            .position(|&byte| byte == b'\n' || byte == b'\r')
        {
            self.line.extend_from_slice(&bytes[..end]);
            self.end_line(out)?;
            let terminator = bytes[end];
            bytes = &bytes[end + 1..];
            if terminator == b'\r' {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(bytes);
        if self.pending_bytes + self.line.len() > self.max_event_bytes {
            return Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    /// The stream ended. A last event without its blank line is still
    /// dispatched: several servers omit it, and losing the final event
    /// (often the usage report) would be worse than being lenient.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if !self.line.is_empty() {
            self.end_line(out)?;
        }
        self.dispatch(out);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        self.pending_bytes += line.len();
        if self.pending_bytes > self.max_event_bytes {
            return Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        let line = std::str::from_utf8(&line).map_err(|_| SseError::InvalidUtf8)?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            // `id` and `retry` matter to browsers reconnecting, not to a relay.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
        }
        self.event = None;
        self.has_data = false;
        self.pending_bytes = 0;
    }
}

/// Frames one `data:` payload for a client: one `data:` line per line of
/// the payload (compact JSON has one), then the blank line that ends the
/// event.
pub fn frame_data(payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(payload.len() + 8);
    for line in payload.split(|&byte| byte == b'\n') {
        framed.extend_from_slice(b"data: ");
        framed.extend_from_slice(line);
        framed.push(b'\n');
    }
    framed.push(b'\n');
    framed
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> Result<Vec<SseEvent>, SseError> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, input.len());
            decoder.feed(&input[start..cut], &mut events)?;
            start = cut;
        }
        decoder.feed(&input[start..], &mut events)?;
        decoder.finish(&mut events)?;
        Ok(events)
    }

    fn data(text: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: text.to_owned(),
        }
    }

    #[test]
    fn decodes_fields_comments_and_line_endings() {
        let input = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: ping\ndata:x\ndata:  y\n\nid: 7\rdata: z\r\r";
        let events = decode_in_pieces(input, &[]).unwrap();
        assert_eq!(
            events,
            vec![
                data("{\"a\":1}"),
                SseEvent {
                    event: Some("ping".into()),
                    data: "x\n y".into()
                },
                data("z"),
            ]
        );
    }

    #[test]
    fn crlf_split_across_reads_is_one_line_end() {
        let events = decode_in_pieces(b"data: a\r\n\r\ndata: b\r\n\r\n", &[8, 9, 10]).unwrap();
        assert_eq!(events, vec![data("a"), data("b")]);
    }

    #[test]
    fn last_event_without_blank_line_is_kept() {
        assert_eq!(
            decode_in_pieces(b"data: [DONE]", &[]).unwrap(),
            vec![data("[DONE]")]
        );
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        assert_eq!(
            decode_in_pieces(b"event: x\n\n:c\n\n", &[]).unwrap(),
            vec![]
        );
    }

    #[test]
    fn oversized_event_is_an_error_not_a_buffer_without_end() {
        let mut decoder = SseDecoder::new(64);
        let mut events = Vec::new();
        let long = vec![b'a'; 100];
        assert_eq!(
            decoder.feed(&long, &mut events),
            Err(SseError::EventTooLarge { limit: 64 })
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        assert_eq!(
            decoder.feed(b"data: \xff\xfe\n\n", &mut events),
            Err(SseError::InvalidUtf8)
        );
    }

    #[test]
    fn framing_round_trips_multi_line_payloads() {
        for payload in ["{\"a\":1}", "line one\nline two", ""] {
            let framed = frame_data(payload.as_bytes());
            assert_eq!(decode_in_pieces(&framed, &[]).unwrap(), vec![data(payload)]);
        }
        assert_eq!(frame_data(b"x\ny"), b"data: x\ndata: y\n\n");
    }

    proptest! {
        /// However a stream is cut into reads, the same events come out.
        #[test]
        fn any_split_yields_the_same_events(
            payloads in proptest::collection::vec("[a-z{}\":, ]{0,12}", 1..6),
            crlf in any::<bool>(),
            mut cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let newline = if crlf { "\r\n" } else { "\n" };
            let mut input = String::new();
            for payload in &payloads {
                input.push_str(&format!("data: {payload}{newline}{newline}"));
            }
            cuts.sort_unstable();
            let whole = decode_in_pieces(input.as_bytes(), &[]).unwrap();
            let split = decode_in_pieces(input.as_bytes(), &cuts).unwrap();
            prop_assert_eq!(&whole, &split);
            let expected: Vec<SseEvent> = payloads.iter().map(|payload| data(payload)).collect();
            prop_assert_eq!(whole, expected);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
            let _ = decode_in_pieces(&input, &[cut]);
        }
    }
}
