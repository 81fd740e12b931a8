//! The headers the gateway adds to a model's answer (which deployment
//! served it, the attempts, the cost, the key's rate limits...), kept as
//! the lines of an HTTP/1.1 head: `name: value\r\n` each, written into one
//! buffer as they are made.
//!
//! They ride on the response as an extension. The gateway's own HTTP/1.1
//! server writes the buffer into the answer's head as it is; HTTP/2, and
//! any other reader of the response, gets them as ordinary headers
//! (`HeadLines::into_headers`). Going through `http`'s header map instead,
//! each header was a value checked and copied, a name hashed, an insert,
//! and a lookup again as the head was written: about 500 instructions a
//! header, and a keyed request has nine or ten.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;

/// The start of a header line, `name: `, checked where it is made (in a
/// `const`, at compile time): a name of the gateway's own, a token in
/// lower case, then a colon and a space.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LineStart(&'static [u8]);

impl LineStart {
    pub(crate) const fn new(start: &'static str) -> LineStart {
        let bytes = start.as_bytes();
        let name = bytes.len().saturating_sub(2);
        assert!(
            name > 0 && bytes[name] == b':' && bytes[name + 1] == b' ',
            "a line's start is a name, a colon and a space"
        );
        let mut at = 0;
        while at < name {
            let byte = bytes[at];
            assert!(
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-',
                "a header name of the gateway's own is lower-case letters, digits and dashes"
            );
            at += 1;
        }
        LineStart(bytes)
    }

    /// The header's name.
    #[cfg(test)]
    pub(crate) fn name(self) -> &'static [u8] {
        &self.0[..self.0.len() - 2]
    }
}

/// Header lines, each `name: value\r\n`: names are the gateway's own (lower
/// case, never one the answer's header map holds), values checked as
/// `HeaderValue` checks them (numbers need no check).
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub(crate) struct HeadLines(Vec<u8>);

impl HeadLines {
    /// Room for a keyed answer's lines (route, cost and the six rate-limit
    /// headers come to about 370 bytes) without growing the buffer.
    pub(crate) fn new() -> HeadLines {
        HeadLines(Vec::with_capacity(512))
    }

    /// Adds `<start><value>`, unless `value` holds a byte no header value
    /// may (a control character other than tab): then nothing, and
    /// `false`. The check looks at every byte without stopping at the
    /// first bad one, which lets it run sixteen or more bytes at a time (a
    /// request id's 36 bytes took about 200 instructions one by one), and
    /// a line is two copies of unknown length (the start's is known where
    /// it is a constant and this is inlined).
    #[inline(always)]
    pub(crate) fn push(&mut self, start: LineStart, value: &[u8]) -> bool {
        let bad = value.iter().fold(false, |bad, &byte| {
            bad | ((byte < 0x20) & (byte != b'\t')) | (byte == 0x7f)
        });
        if bad {
            return false;
        }
        self.0.reserve(start.0.len() + value.len() + b"\r\n".len());
        self.0.extend_from_slice(start.0);
        self.0.extend_from_slice(value);
        self.0.extend_from_slice(b"\r\n");
        true
    }

    /// Adds `<start><value><unit>` for a number (digits need no check),
    /// `unit` empty or a wait's `s`, as OpenAI writes one (`12s`). Inlined
    /// where `unit` is a constant, a line is two copies of unknown length
    /// (the start, the digits) where `put` makes five: a keyed answer
    /// writes seven such lines.
    #[inline(always)]
    pub(crate) fn push_counted(&mut self, start: LineStart, value: u64, unit: &'static [u8]) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(value).as_bytes();
        self.0
            .reserve(start.0.len() + digits.len() + unit.len() + b"\r\n".len());
        self.0.extend_from_slice(start.0);
        self.0.extend_from_slice(digits);
        self.0.extend_from_slice(unit);
        self.0.extend_from_slice(b"\r\n");
    }

    /// The lines, as they go into an HTTP/1.1 head.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Each line's name and value.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0
            .split(|&byte| byte == b'\n')
            .filter_map(|line| line.strip_suffix(b"\r"))
            .filter_map(|line| {
                let at = line.iter().position(|&byte| byte == b':')?;
                Some((&line[..at], &line[at + 2..]))
            })
    }

    /// Puts the lines on `response`, after any it already carries.
    pub(crate) fn attach(self, response: &mut Response) {
        if self.0.is_empty() {
            return;
        }
        match response.extensions_mut().get_mut::<HeadLines>() {
            Some(lines) => lines.0.extend_from_slice(&self.0),
            None => {
                response.extensions_mut().insert(self);
            }
        }
    }

    /// Moves the lines `response` carries into its header map: for a
    /// writer that knows only the map (HTTP/2).
    pub(crate) fn into_headers<B>(response: &mut axum::http::Response<B>) {
        if let Some(lines) = response.extensions_mut().remove::<HeadLines>() {
            lines.move_into(response.headers_mut());
        }
    }

    fn move_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.pairs() {
            // Both were checked as they were pushed.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                // Appended, not inserted: a name given twice shows as two
                // headers, as it would over HTTP/1.1.
                headers.append(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    const DEPLOYMENT: LineStart = LineStart::new("x-switchboard-deployment: ");
    const ATTEMPTS_LINE: LineStart = LineStart::new("x-switchboard-attempts: ");

    #[test]
    fn lines_are_written_as_an_http1_head_holds_them() {
        let mut lines = HeadLines::new();
        assert!(lines.push(DEPLOYMENT, b"east: primary\t1"));
        lines.push_counted(ATTEMPTS_LINE, 12, b"");
        assert_eq!(
            lines.as_bytes(),
            b"x-switchboard-deployment: east: primary\t1\r\nx-switchboard-attempts: 12\r\n"
        );
        let mut waits = HeadLines::new();
        waits.push_counted(ATTEMPTS_LINE, 0, b"s");
        waits.push_counted(ATTEMPTS_LINE, u64::MAX, b"s");
        assert_eq!(
            waits.as_bytes(),
            b"x-switchboard-attempts: 0s\r\nx-switchboard-attempts: 18446744073709551615s\r\n"
        );
        assert_eq!(
            lines.pairs().collect::<Vec<_>>(),
            vec![
                (&b"x-switchboard-deployment"[..], &b"east: primary\t1"[..]),
                (&b"x-switchboard-attempts"[..], &b"12"[..])
            ]
        );
    }

    #[test]
    fn counted_lines_are_a_name_a_number_and_a_unit() {
        const START: LineStart = LineStart::new("x-switchboard-attempts: ");
        let mut counted = HeadLines::new();
        counted.push_counted(START, 0, b"");
        counted.push_counted(START, 12_345, b"s");
        counted.push_counted(START, u64::MAX, b"");
        assert_eq!(
            counted.as_bytes(),
            &b"x-switchboard-attempts: 0\r\nx-switchboard-attempts: 12345s\r\nx-switchboard-attempts: 18446744073709551615\r\n"[..]
        );
        assert_eq!(
            counted.pairs().nth(1),
            Some((&b"x-switchboard-attempts"[..], &b"12345s"[..]))
        );
    }

    #[test]
    #[should_panic(expected = "a colon and a space")]
    fn a_line_start_without_its_colon_is_refused() {
        let _ = LineStart::new("x-switchboard-attempts");
    }

    #[test]
    #[should_panic(expected = "lower-case letters")]
    fn a_line_start_with_a_capital_is_refused() {
        let _ = LineStart::new("X-Switchboard-Attempts: ");
    }

    #[test]
    fn a_value_is_taken_exactly_when_a_header_value_may_hold_it() {
        // Every byte, at places the check may reach in blocks or one by
        // one, in values of several lengths.
        for length in [1, 15, 16, 17, 36, 64, 100] {
            for at in [0, length / 2, length - 1] {
                for byte in 0..=u8::MAX {
                    let mut value = vec![b'v'; length];
                    value[at] = byte;
                    let mut lines = HeadLines::new();
                    assert_eq!(
                        lines.push(DEPLOYMENT, &value),
                        HeaderValue::from_bytes(&value).is_ok(),
                        "byte {byte:#04x} at {at} of {length}"
                    );
                }
            }
        }
    }

    #[test]
    fn line_starts_name_the_headers_written_by_name_elsewhere() {
        use crate::cache::{CACHE_HEADER, CACHE_LINE};
        use crate::context::{REQUEST_ID, REQUEST_ID_LINE};
        use crate::handlers::{COST_HEADER, COST_LINE};
        for (line, name) in [
            (CACHE_LINE, CACHE_HEADER),
            (REQUEST_ID_LINE, REQUEST_ID),
            (COST_LINE, COST_HEADER),
        ] {
            assert_eq!(line.name(), name.as_str().as_bytes());
        }
    }

    #[test]
    fn a_value_no_header_may_hold_is_left_out() {
        let mut lines = HeadLines::new();
        for bad in [&b"a\r\nx-evil: 1"[..], b"a\nb", b"nul\0", b"del\x7f"] {
            assert!(!lines.push(DEPLOYMENT, bad), "{bad:?}");
            assert!(HeaderValue::from_bytes(bad).is_err(), "{bad:?}");
        }
        assert!(lines.as_bytes().is_empty());
        // Bytes past ASCII are allowed, as `HeaderValue` allows them.
        assert!(lines.push(DEPLOYMENT, "ü".as_bytes()));
        assert!(HeaderValue::from_bytes("ü".as_bytes()).is_ok());
    }

    #[test]
    fn attached_lines_add_up_and_move_into_the_header_map() {
        let mut response = Response::new(Body::empty());
        let mut first = HeadLines::new();
        first.push(DEPLOYMENT, b"east");
        first.attach(&mut response);
        let mut second = HeadLines::new();
        second.push_counted(ATTEMPTS_LINE, 2, b"");
        second.attach(&mut response);
        let lines = response.extensions().get::<HeadLines>().unwrap();
        assert_eq!(
            lines
                .pairs()
                .find(|(name, _)| *name == b"x-switchboard-attempts"),
            Some((&b"x-switchboard-attempts"[..], &b"2"[..]))
        );
        HeadLines::into_headers(&mut response);
        assert!(response.extensions().get::<HeadLines>().is_none());
        assert_eq!(response.headers()["x-switchboard-deployment"], "east");
        assert_eq!(response.headers()["x-switchboard-attempts"], "2");
        assert_eq!(response.headers().len(), 2);
    }
}
