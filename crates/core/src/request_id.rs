//! The request ids the gateway makes: `req_` and 32 hex digits, the start
//! time in milliseconds (12), a per-process tag (4) and a scrambled
//! sequence number (16). The request log reads the start time back out of
//! such an id, so that it finds the record by `(started_at_ms, request_id)`
//! and needs no index on the id alone for the ids it made itself.

/// The id of a request that started at `millis` (its low 48 bits).
pub fn format(millis: u64, tag: u16, sequence: u64) -> String {
    let mut id = String::with_capacity(36);
    id.push_str("req_");
    push_hex(&mut id, millis, 12);
    push_hex(&mut id, u64::from(tag), 4);
    push_hex(&mut id, sequence, 16);
    id
}

/// The start time an id of `format`'s shape carries, in milliseconds
/// since the Unix epoch; `None` for any other id (a client's own).
pub fn millis(id: &str) -> Option<i64> {
    let digits = id.strip_prefix("req_")?.as_bytes();
    if digits.len() != 32
        || !digits
            .iter()
            .all(|digit| matches!(digit, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut value = 0i64;
    for digit in &digits[..12] {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            _ => digit - b'a' + 10,
        };
        value = (value << 4) | i64::from(nibble);
    }
    Some(value)
}

/// Whether a record of `id` that started at `started_at_ms` is found by
/// its start time: the id is one the gateway made for that very start.
pub fn is_timed(id: &str, started_at_ms: i64) -> bool {
    millis(id) == Some(started_at_ms)
}

/// The low `digits` hex digits of `value`, lowercase, zero-padded.
fn push_hex(out: &mut String, value: u64, digits: u32) {
    for place in (0..digits).rev() {
        let digit = ((value >> (place * 4)) & 0xf) as u8;
        out.push(char::from(if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_are_formattings() {
        for value in [
            0,
            1,
            0xabc,
            0x0123_4567_89ab_cdef,
            u64::MAX,
            1_795_921_250_367,
        ] {
            for digits in [4, 12, 16] {
                let mut ours = String::new();
                push_hex(&mut ours, value, digits);
                let width = digits as usize;
                let expected = format!("{value:0width$x}");
                assert_eq!(ours, expected[expected.len() - width..]);
            }
        }
    }

    #[test]
    fn the_start_time_is_read_back() {
        let id = format(1_795_921_250_367, 0xbeef, 0x0123_4567_89ab_cdef);
        assert_eq!(id, "req_01a2253f883fbeef0123456789abcdef");
        assert_eq!(millis(&id), Some(1_795_921_250_367));
        assert!(is_timed(&id, 1_795_921_250_367));
        assert!(!is_timed(&id, 1_795_921_250_368));
        // Only the low 48 bits fit in the id: a start beyond them (or
        // before 1970) is never taken for the one the id carries.
        assert!(!is_timed(&id, 1_795_921_250_367 + (1 << 48)));
        let zero = format(0, 1, 2);
        assert!(is_timed(&zero, 0));
        assert!(!is_timed(&zero, -(1 << 48)));
        // Only the gateway's own shape: a client's id carries no time.
        for other in [
            "req_01a2253f883fbeef0123456789abcde",
            "req_01a2253f883fbeef0123456789abcdeff",
            "req_01A2253F883FBEEF0123456789ABCDEF",
            "req_01a2253f883fbeef0123456789abcdeg",
            "abc_01a2253f883fbeef0123456789abcdef",
            "my-request-1",
            "",
        ] {
            assert_eq!(millis(other), None, "{other}");
            assert!(!is_timed(other, 1_795_921_250_367));
        }
    }
}
