//! The request ids the gateway makes: `req_` and 32 hex digits, the start
//! time in milliseconds (12), a per-process tag (4) and a scrambled
//! sequence number (16). The request log reads the start time back out of
//! such an id, so that it finds the record by `(started_at_ms, request_id)`
//! and needs no index on the id alone for the ids it made itself.

/// The id of a request that started at `millis` (its low 48 bits).
pub fn format(millis: u64, tag: u16, sequence: u64) -> String {
    let mut id = [0u8; 36];
    id[..4].copy_from_slice(b"req_");
    put_hex(&mut id[4..16], millis);
    put_hex(&mut id[16..20], u64::from(tag));
    put_hex(&mut id[20..], sequence);
    // Written into an array and checked once: pushing each digit onto a
    // `String` cost twice the instructions.
    std::str::from_utf8(&id)
        .expect("hex digits are ASCII")
        .to_owned()
}

/// The start time an id of `format`'s shape carries, in milliseconds
/// since the Unix epoch; `None` for any other id (a client's own).
pub fn millis(id: &str) -> Option<i64> {
    let digits: &[u8; 32] = id.strip_prefix("req_")?.as_bytes().try_into().ok()?;
    let mut value = 0i64;
    for (at, &digit) in digits.iter().enumerate() {
        let nibble = NIBBLES[usize::from(digit)];
        if nibble > 0xf {
            return None;
        }
        if at < 12 {
            value = (value << 4) | i64::from(nibble);
        }
    }
    Some(value)
}

/// Each byte's value as a lowercase hex digit, or 0xff.
const NIBBLES: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut at = 0;
    while at < 16 {
        table[HEX[at] as usize] = at as u8;
        at += 1;
    }
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether a record of `id` that started at `started_at_ms` is found by
/// its start time: the id is one the gateway made for that very start.
pub fn is_timed(id: &str, started_at_ms: i64) -> bool {
    millis(id) == Some(started_at_ms)
}

/// The low hex digits of `value`, lowercase, zero-padded, filling `out`.
fn put_hex(out: &mut [u8], value: u64) {
    let digits = out.len();
    for (place, digit) in out.iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - place);
        *digit = HEX[((value >> shift) & 0xf) as usize];
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
            for width in [4, 12, 16] {
                let mut ours = vec![0; width];
                put_hex(&mut ours, value);
                let expected = format!("{value:0width$x}");
                assert_eq!(ours, &expected.as_bytes()[expected.len() - width..]);
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
            "req_0za2253f883fbeef0123456789abcdef",
            "req_01a2253f883fbeef0123456789abcdé",
            "abc_01a2253f883fbeef0123456789abcdef",
            "my-request-1",
            "",
        ] {
            assert_eq!(millis(other), None, "{other}");
            assert!(!is_timed(other, 1_795_921_250_367));
        }
    }
}
