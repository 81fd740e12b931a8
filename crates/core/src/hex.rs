//! Lowercase hexadecimal, as key hashes, AWS signatures and W3C trace
//! context write bytes.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out`, which holds exactly two
/// digits per byte.
pub fn write_lower(bytes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), 2 * bytes.len(), "two hex digits per byte");
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// `bytes` as a lowercase hex string.
pub fn lower(bytes: &[u8]) -> String {
    let mut out = vec![0; 2 * bytes.len()];
    write_lower(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// The bytes that `text` writes as exactly `2 * N` hex digits (either
/// case), or `None` when it does not.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |digit: u8| char::from(digit).to_digit(16);
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = u8::try_from(value(pair[0])? << 4 | value(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_become_two_lowercase_digits_each() {
        assert_eq!(lower(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(lower(&[]), "");
        let mut out = [0u8; 4];
        write_lower(&[0xde, 0xad], &mut out);
        assert_eq!(&out, b"dead");
    }

    #[test]
    fn hex_reads_back_what_it_wrote() {
        let bytes = [0x00, 0x7f, 0x80, 0xff];
        assert_eq!(decode::<4>(&lower(&bytes)), Some(bytes));
        assert_eq!(decode::<2>("DEad"), Some([0xde, 0xad]));
        assert_eq!(decode::<2>("dea"), None, "too short");
        assert_eq!(decode::<2>("deadbe"), None, "too long");
        assert_eq!(decode::<2>("de+d"), None, "not a digit");
        assert_eq!(decode::<1>("é"), None, "not ASCII");
    }
}
