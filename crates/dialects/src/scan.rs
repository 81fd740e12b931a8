//! A strict, allocation-free reader of JSON text, for the checks on the
//! request path that read a few fields of a client's request (its
//! top-level fields, each message's role and content) or of an upstream's
//! answer (its usage, id, model, finish reasons) and must know the rest is
//! well formed: one pass over the bytes, each value checked against JSON's
//! grammar (RFC 8259) and skipped, or read where the caller asks.
//!
//! It is a fast path, never the judge: whatever it cannot read it refuses
//! with `Refused`, without a reason, and the caller reads the text again
//! with serde_json, whose verdict and error message stand. Its readers
//! refuse more than serde_json would (a key read with escapes, a struct
//! written as an array, nesting past `MAX_DEPTH`), never less: what it
//! accepts, serde_json accepts and reads alike (the tests of
//! `openai::request` and `openai::response` compare the two on generated
//! and mutated bodies).

/// Nesting this scanner follows before it hands the text to serde_json.
const MAX_DEPTH: usize = 128;

/// The text is not one this scanner reads (malformed, or merely unusual).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused;

type Scanned<T> = Result<T, Refused>;

/// A cursor over JSON text.
pub(crate) struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    pub(crate) fn new(text: &'a str) -> Scan<'a> {
        Scan { text, at: 0 }
    }

    fn byte(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while matches!(self.byte(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
        self.byte()
    }

    fn eat(&mut self, expected: u8) -> Scanned<()> {
        if self.peek() == Some(expected) {
            self.at += 1;
            Ok(())
        } else {
            Err(Refused)
        }
    }

    /// Only whitespace is left.
    pub(crate) fn end(mut self) -> Scanned<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(Refused),
        }
    }

    /// A string: its text between the quotes, escapes left as they are,
    /// and whether it holds any.
    #[inline(always)]
    fn string(&mut self) -> Scanned<(&'a str, bool)> {
        self.eat(b'"')?;
        let start = self.at;
        let escaped = self.string_rest()?;
        // Both ends are quotes, so on character boundaries.
        let raw = self.text.get(start..self.at - 1).ok_or(Refused)?;
        Ok((raw, escaped))
    }

    /// The rest of a string whose opening quote is read, up to and with its
    /// closing one; whether it holds escapes. Ordinary bytes are passed
    /// over many at a time (`plain_run`).
    #[inline(always)]
    fn string_rest(&mut self) -> Scanned<bool> {
        let bytes = self.text.as_bytes();
        let mut at = self.at;
        let mut escaped = false;
        loop {
            at = plain_run(bytes, at);
            match *bytes.get(at).ok_or(Refused)? {
                b'"' => {
                    self.at = at + 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match *bytes.get(at + 1).ok_or(Refused)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                        b'u' => {
                            let hex = bytes.get(at + 2..at + 6).ok_or(Refused)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Refused);
                            }
                            at += 6;
                        }
                        _ => return Err(Refused),
                    }
                }
                // A control character.
                _ => return Err(Refused),
            }
        }
    }

    /// A number; its value when it is a plain integer (no sign, fraction
    /// or exponent) that fits a `u64`.
    fn number(&mut self) -> Scanned<Option<u64>> {
        let bytes = self.text.as_bytes();
        let mut plain = true;
        if self.byte() == Some(b'-') {
            plain = false;
            self.at += 1;
        }
        let mut value: Option<u64> = Some(0);
        match self.byte() {
            Some(b'0') => {
                self.at += 1;
                if self.byte().is_some_and(|byte| byte.is_ascii_digit()) {
                    return Err(Refused);
                }
            }
            Some(b'1'..=b'9') => {
                let start = self.at;
                let mut at = start;
                let mut sum: u64 = 0;
                while let Some(digit @ b'0'..=b'9') = bytes.get(at).copied() {
                    sum = sum.wrapping_mul(10).wrapping_add(u64::from(digit - b'0'));
                    at += 1;
                }
                self.at = at;
                // Up to 19 digits always fit a u64 and the sum is exact;
                // 20 may not fit (checked by `parse`), more never do.
                if at - start > 19 {
                    value = self
                        .text
                        .get(start..at)
                        .and_then(|digits| digits.parse().ok());
                } else {
                    value = Some(sum);
                }
            }
            _ => return Err(Refused),
        }
        if self.byte() == Some(b'.') {
            plain = false;
            self.at += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.byte() {
            plain = false;
            self.at += 1;
            if let Some(b'+' | b'-') = self.byte() {
                self.at += 1;
            }
            self.digits()?;
        }
        Ok(if plain { value } else { None })
    }

    /// One digit or more.
    fn digits(&mut self) -> Scanned<()> {
        let start = self.at;
        while self.byte().is_some_and(|byte| byte.is_ascii_digit()) {
            self.at += 1;
        }
        if self.at == start {
            Err(Refused)
        } else {
            Ok(())
        }
    }

    fn literal(&mut self, word: &str) -> Scanned<()> {
        let rest = self.text.as_bytes().get(self.at..).unwrap_or_default();
        if rest.starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(())
        } else {
            Err(Refused)
        }
    }

    /// `null`, consumed, or false with the cursor left where it was.
    pub(crate) fn null(&mut self) -> Scanned<bool> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// A value of any kind, checked and skipped: a scalar at once, an
    /// array or object by `skip_nested`.
    pub(crate) fn skip(&mut self) -> Scanned<()> {
        match self.peek().ok_or(Refused)? {
            b'{' | b'[' => self.skip_nested(),
            _ => self.scalar(),
        }
    }

    /// A string, number, `true`, `false` or `null`, checked and skipped,
    /// the cursor at its first byte.
    #[inline(always)]
    fn scalar(&mut self) -> Scanned<()> {
        match self.byte().ok_or(Refused)? {
            b'"' => {
                self.at += 1;
                self.string_rest().map(drop)
            }
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => Err(Refused),
        }
    }

    /// An array or object, checked and skipped: nested ones are followed
    /// with a stack of bits, not recursion.
    #[inline(never)]
    fn skip_nested(&mut self) -> Scanned<()> {
        // Bit n: whether the container at depth n + 1 is an object.
        let mut objects: u128 = 0;
        let mut depth = 0;
        loop {
            // A value.
            match self.peek().ok_or(Refused)? {
                open @ (b'{' | b'[') => {
                    self.at += 1;
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.at += 1;
                    } else {
                        if depth == MAX_DEPTH {
                            return Err(Refused);
                        }
                        if open == b'{' {
                            objects |= 1 << depth;
                            self.skipped_key()?;
                        } else {
                            objects &= !(1 << depth);
                        }
                        depth += 1;
                        continue;
                    }
                }
                _ => self.scalar()?,
            }
            // After a value: the next in its container, or the container's
            // end.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let object = objects & (1 << (depth - 1)) != 0;
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        if object {
                            self.skipped_key()?;
                        }
                        break;
                    }
                    Some(b'}') if object => {
                        self.at += 1;
                        depth -= 1;
                    }
                    Some(b']') if !object => {
                        self.at += 1;
                        depth -= 1;
                    }
                    _ => return Err(Refused),
                }
            }
        }
    }

    /// A member's key and its colon, in a value skipped: escapes and all,
    /// as serde_json passes over it.
    #[inline(always)]
    fn skipped_key(&mut self) -> Scanned<()> {
        self.eat(b'"')?;
        self.string_rest()?;
        self.eat(b':')
    }

    /// A member's key and its colon.
    #[inline(always)]
    fn key(&mut self) -> Scanned<&'a str> {
        let (key, escaped) = self.string()?;
        // Rare: serde_json decodes such a key before matching it.
        if escaped {
            return Err(Refused);
        }
        self.eat(b':')?;
        Ok(key)
    }

    /// A string's text between its quotes and whether it holds escapes,
    /// or, for a value of another kind, `None`, the value skipped.
    pub(crate) fn string_or_skip(&mut self) -> Scanned<Option<(&'a str, bool)>> {
        if self.peek() == Some(b'"') {
            self.string().map(Some)
        } else {
            self.skip().map(|()| None)
        }
    }

    /// A value, checked and skipped, and its text (from its first byte,
    /// after any whitespace, to its last).
    pub(crate) fn raw(&mut self) -> Scanned<&'a str> {
        self.peek();
        let start = self.at;
        self.skip()?;
        self.text.get(start..self.at).ok_or(Refused)
    }

    /// `null`, or a plain integer that fits a `u64` (what serde reads into
    /// an `Option<u64>`).
    pub(crate) fn optional_u64(&mut self) -> Scanned<Option<u64>> {
        if self.null()? {
            return Ok(None);
        }
        match self.peek() {
            Some(b'0'..=b'9') => self.number()?.map(Some).ok_or(Refused),
            _ => Err(Refused),
        }
    }

    /// An object: `member` is called with each key, the cursor at its
    /// value, which it must read or skip.
    pub(crate) fn object(
        &mut self,
        mut member: impl FnMut(&mut Scan<'a>, &'a str) -> Scanned<()>,
    ) -> Scanned<()> {
        self.sequence(b'{', b'}', |scan| {
            let key = scan.key()?;
            member(scan, key)
        })
    }

    /// An array: `element` is called with the cursor at each element,
    /// which it must read or skip.
    pub(crate) fn array(
        &mut self,
        element: impl FnMut(&mut Scan<'a>) -> Scanned<()>,
    ) -> Scanned<()> {
        self.sequence(b'[', b']', element)
    }

    /// `open`, then items separated by commas (each read by `item`), or
    /// none, then `close`.
    fn sequence(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Scan<'a>) -> Scanned<()>,
    ) -> Scanned<()> {
        self.eat(open)?;
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(byte) if byte == close => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Refused),
            }
        }
    }
}

/// Whether `text` holds no quote, backslash or control character: the
/// string is its own JSON text between quotes (serde_json escapes those
/// bytes and no others).
pub(crate) fn is_plain(text: &str) -> bool {
    plain_run(text.as_bytes(), 0) == text.len()
}

/// Where the plain run of string bytes from `at` ends: the first quote,
/// backslash or control character at or after `at`, or the text's end.
/// Most strings (keys, ids, short values) end within the first sixteen
/// bytes, looked at here; a longer run goes on in `plain_run_rest`.
#[inline(always)]
fn plain_run(bytes: &[u8], at: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(block) = bytes.get(at..).and_then(<[u8]>::first_chunk) {
        let found = specials16(block);
        if found != 0 {
            return at + found.trailing_zeros() as usize;
        }
        return plain_run_rest(bytes, at + 16);
    }
    plain_run_rest(bytes, at)
}

/// The bytes of a block of sixteen that end or interrupt a string's plain
/// run, as the bits of a mask (the first byte lowest).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn specials16(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: these intrinsics need SSE2, which every x86_64 processor has;
    // the load reads the sixteen bytes of `block`, unaligned as `loadu`
    // allows.
    unsafe {
        let block = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(block, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(block, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20 exactly where the unsigned minimum with 0x1f is the
        // byte itself.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(block, _mm_set1_epi8(0x1f)), block);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// `plain_run` past its first block: sixteen bytes at a time where SSE2 is
/// there (every x86_64 processor), then as `plain_run_words`.
#[inline(never)]
fn plain_run_rest(bytes: &[u8], mut at: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    while let Some(block) = bytes.get(at..).and_then(<[u8]>::first_chunk) {
        let found = specials16(block);
        if found != 0 {
            return at + found.trailing_zeros() as usize;
        }
        at += 16;
    }
    plain_run_words(bytes, at)
}

/// `plain_run` eight bytes at a time (`special`), then one at a time.
fn plain_run_words(bytes: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = bytes.get(at..).and_then(<[u8]>::first_chunk) {
        let found = special(u64::from_le_bytes(*chunk));
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&byte) = bytes.get(at) {
        if byte == b'"' || byte == b'\\' || byte < 0x20 {
            return at;
        }
        at += 1;
    }
    at
}

/// The bytes of `word` (eight, the first lowest) that end or interrupt a
/// string's plain run (a quote, a backslash, a control character), as
/// their high bits; the lowest set bit is the first such byte (bits above
/// it may be set falsely, by a borrow). Bytes of 0x80 and up, UTF-8's
/// multi-byte sequences, are never flagged.
fn special(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_in = |value: u64| value.wrapping_sub(ONES) & !value & HIGHS;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    zero_in(word ^ (ONES * u64::from(b'"')))
        | zero_in(word ^ (ONES * u64::from(b'\\')))
        | below_space
}

/// Marks a struct's field as read, refusing it the second time (serde's
/// derived readers refuse a known field given twice).
pub(crate) fn once(seen: &mut bool) -> Scanned<()> {
    if std::mem::replace(seen, true) {
        Err(Refused)
    } else {
        Ok(())
    }
}

/// Edits of JSON text for the tests that hold the scanner to serde_json's
/// reading: bytes changed, inserted or removed, or a range copied
/// elsewhere (members given twice).
#[cfg(test)]
pub(crate) mod edits {
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// Bytes JSON is made of, for edits that keep it near the grammar.
    const ALPHABET: &[u8] = b"{}[]\",:\\ -.+0123456789eEnultrfasu\t\n\r\x0b\x0c\x01";

    /// One to three edits: where, where to (for a copy), which kind, which
    /// byte.
    pub(crate) type Edits = Vec<(Index, Index, u8, u8)>;

    pub(crate) fn edits() -> impl Strategy<Value = Edits> {
        prop::collection::vec(
            (
                any::<Index>(),
                any::<Index>(),
                0..4u8,
                prop::sample::select(ALPHABET),
            ),
            1..4,
        )
    }

    /// `value` as JSON text, pretty or compact.
    pub(crate) fn json_text(value: &impl serde::Serialize, pretty: bool) -> String {
        if pretty {
            serde_json::to_string_pretty(value).unwrap()
        } else {
            serde_json::to_string(value).unwrap()
        }
    }

    /// `text` with `edits` applied in order.
    pub(crate) fn apply(text: &str, edits: Edits) -> Vec<u8> {
        let mut bytes = text.as_bytes().to_vec();
        for (at, to, kind, byte) in edits {
            let at = at.index(bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                // A range copied elsewhere: members given twice.
                2 => {
                    let end = (at + 1 + to.index(64)).min(bytes.len());
                    let copied = bytes[at.min(end)..end].to_vec();
                    let to = to.index(bytes.len() + 1);
                    bytes.splice(to..to, copied);
                }
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ends or interrupts a string's plain run, byte by byte.
    fn is_special(byte: u8) -> bool {
        byte == b'"' || byte == b'\\' || byte < 0x20
    }

    fn skips(text: &str) -> bool {
        let mut scan = Scan::new(text);
        scan.skip().is_ok() && scan.end().is_ok()
    }

    /// Every value serde_json reads, this reads, and nothing it refuses;
    /// nesting past the limit is handed over.
    #[test]
    fn values_are_read_as_json_defines_them() {
        let good = [
            "0",
            "-0",
            "12",
            "-1.5e+3",
            "1E9",
            "0.25",
            "true",
            "false",
            "null",
            r#""""#,
            r#""a\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00 é""#,
            "[]",
            "{}",
            r#" [1, {"a": [true, null, {}], "b": "x"}, [], [[]]] "#,
            r#"{"a":{"b":{"c":[1,2,{"d":null}]}}}"#,
            // A key with escapes, in a value skipped.
            r#"{"a\"b\u0063":[{"\\":1}]}"#,
        ];
        for text in good {
            assert!(
                serde_json::from_str::<serde_json::Value>(text).is_ok(),
                "{text}"
            );
            assert!(skips(text), "{text}");
        }
        let bad = [
            "",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "+1",
            "tru",
            "nul",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":1,}",
            "{a:1}",
            "[1 2]",
            "\"\\x\"",
            "\"\\u12G4\"",
            "\"a\u{1}b\"",
            "\"open",
            "[}",
            "{]",
            "[1]]",
            "1 2",
            "-01",
            "1e+",
            "\"\\u\"",
            "{\"a\" 1}",
            "{\"a\":}",
            "[1,,2]",
            // Whitespace is space, tab, line feed and carriage return only.
            "\x0c1",
            "[1,\x0b2]",
            "[1,\u{a0}2]",
            "\u{feff}{}",
            "{}\x0c",
        ];
        for text in bad {
            assert!(
                serde_json::from_str::<serde_json::Value>(text).is_err(),
                "{text}"
            );
            assert!(!skips(text), "{text}");
        }
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert!(skips(&nested(MAX_DEPTH)));
        assert!(!skips(&nested(MAX_DEPTH + 1)));
        // Objects and arrays alternating to the limit: each level's kind is
        // remembered, and a close of the wrong kind anywhere is refused.
        let (opens, closes): (Vec<&str>, Vec<&str>) = (0..MAX_DEPTH)
            .map(|level| {
                if level % 2 == 0 {
                    ("{\"a\":", "}")
                } else {
                    ("[", "]")
                }
            })
            .unzip();
        let closes: String = closes.iter().rev().copied().collect();
        let mixed = format!("{}1{}", opens.concat(), closes);
        assert!(skips(&mixed));
        assert!(
            serde_json::from_str::<serde_json::Value>(&mixed).is_err(),
            "past serde_json's own limit"
        );
        for wrong in [1, 40, 63, 64, 65, 100, MAX_DEPTH - 1] {
            let mut bytes = mixed.clone().into_bytes();
            let at = bytes.len() - 1 - wrong;
            bytes[at] = if bytes[at] == b'}' { b']' } else { b'}' };
            assert!(!skips(std::str::from_utf8(&bytes).unwrap()), "{wrong}");
        }
    }

    /// A string's end, escapes and refusals are found wherever they fall
    /// among the sixteen or eight bytes read at a time, and in the bytes
    /// read one by one at the end.
    #[test]
    fn strings_are_read_whatever_their_length_and_content() {
        for len in 0..72 {
            for at in 0..=len {
                let around = |inner: &str| "a".repeat(at) + inner + &"z".repeat(len - at);
                for inner in [
                    "", "\\\"", "\\\\", "\\u00e9", "\\/", "é", "😀", "\u{7f}", " ",
                ] {
                    let body = around(inner);
                    let text = format!("\"{body}\"");
                    let mut scan = Scan::new(&text);
                    assert_eq!(
                        scan.string(),
                        Ok((body.as_str(), inner.starts_with('\\'))),
                        "{text}"
                    );
                    assert_eq!(scan.end(), Ok(()));
                }
                for inner in ["\u{0}", "\u{1f}", "\n", "\\x", "\\u12", "\\"] {
                    let text = format!("\"{}\"", around(inner));
                    assert_eq!(Scan::new(&text).string(), Err(Refused), "{text:?}");
                    assert!(serde_json::from_str::<String>(&text).is_err(), "{text:?}");
                }
                let open = format!("\"{}", around(""));
                assert_eq!(Scan::new(&open).string(), Err(Refused));
            }
        }
    }

    /// Each speed of `plain_run` (sixteen bytes, eight, one) stops at the
    /// first quote, backslash or control byte, wherever it falls, or at the
    /// text's end.
    #[test]
    fn plain_runs_end_at_the_first_special_byte() {
        for len in 0..48 {
            for from in 0..=len.min(9) {
                for at in from..=len {
                    for byte in [b'"', b'\\', 0, 0x1f, b'a', 0x7f, 0xc3] {
                        let mut bytes = vec![b'x'; len];
                        if at < len {
                            bytes[at] = byte;
                        }
                        let expected = (from..len)
                            .find(|&index| is_special(bytes[index]))
                            .unwrap_or(len);
                        assert_eq!(plain_run_words(&bytes, from), expected, "{len} {from} {at}");
                        assert_eq!(plain_run(&bytes, from), expected, "{len} {from} {at}");
                    }
                }
            }
        }
    }

    /// `special` flags first exactly the first quote, backslash or control
    /// byte of any eight, whatever surrounds it.
    #[test]
    fn special_bytes_are_found_first_wherever_they_are() {
        for filler in [b'a', b' ', 0x7f, 0x80, 0xa2, 0xc0, 0xdc, 0xff] {
            for at in 0..8 {
                for byte in 0..=255u8 {
                    let mut word = [filler; 8];
                    word[at] = byte;
                    let expected = word.iter().position(|byte| is_special(*byte));
                    let found = special(u64::from_le_bytes(word));
                    let first = (found != 0).then(|| (found.trailing_zeros() / 8) as usize);
                    assert_eq!(first, expected, "{word:?}");
                }
            }
        }
    }

    /// `specials16` flags exactly the quotes, backslashes and control bytes
    /// of any sixteen, whatever surrounds them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn special_bytes_are_found_in_blocks_of_sixteen() {
        for filler in [b'a', b' ', 0x7f, 0x80, 0xa2, 0xc0, 0xdc, 0xff] {
            for at in 0..16 {
                for byte in 0..=255u8 {
                    let mut block = [filler; 16];
                    block[at] = byte;
                    let expected = block
                        .iter()
                        .enumerate()
                        .filter(|(_, byte)| is_special(**byte))
                        .fold(0u32, |mask, (at, _)| mask | 1 << at);
                    assert_eq!(specials16(&block), expected, "{block:?}");
                }
            }
        }
    }

    #[test]
    fn integers_are_read_where_they_fit() {
        let read = |text: &str| Scan::new(text).optional_u64();
        assert_eq!(read("null"), Ok(None));
        assert_eq!(read("0"), Ok(Some(0)));
        assert_eq!(read("18446744073709551615"), Ok(Some(u64::MAX)));
        assert_eq!(
            read("9999999999999999999"),
            Ok(Some(9_999_999_999_999_999_999))
        );
        assert_eq!(
            read("10000000000000000000"),
            Ok(Some(10_000_000_000_000_000_000))
        );
        assert_eq!(read("1234567890123"), Ok(Some(1_234_567_890_123)));
        for text in [
            "18446744073709551616",
            "99999999999999999999",
            "100000000000000000000",
            "000",
            "-1",
            "-0",
            "1.0",
            "1e2",
            "\"1\"",
            "true",
        ] {
            assert_eq!(read(text), Err(Refused), "{text}");
        }
    }
}
