//! The wire formats Switchboard speaks, on both sides of the gateway, and
//! the Server-Sent Events codec they share.
//!
//! Everything here is pure and synchronous: bytes in, checked views and
//! bytes out. Nothing opens a socket or knows which deployment a request
//! goes to. Each API family gets one module (`openai`, `anthropic`, `gemini`,
//! `bedrock`), each converting to and from the one internal model in
//! `canon`, so that a new protocol is a new module beside the others rather
//! than a change to them.

pub mod anthropic;
pub mod bedrock;
pub mod canon;
pub mod gemini;
pub mod openai;
mod scan;
pub mod sse;

/// `bytes` as text if they are UTF-8, checked with SIMD where the CPU has
/// it (about a fifth of the standard library's instructions on a 700-byte
/// answer, which is mostly ASCII); on failure, the standard library's error,
/// which says where the first invalid byte is.
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(_) => std::str::from_utf8(bytes),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_taken_as_the_standard_library_takes_it() {
        let mut samples: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"plain ascii".to_vec(),
            "caf\u{e9} \u{1f680} \u{4e2d}".as_bytes().to_vec(),
            vec![0xff],
            vec![b'a', 0xc3],
            vec![0xed, 0xa0, 0x80],
            vec![0xf4, 0x90, 0x80, 0x80],
        ];
        // Long runs, each with one byte changed at several places, so that
        // the block paths meet it as well as the tail's.
        for length in [31, 64, 100, 700] {
            for at in [0, length / 2, length - 1] {
                for byte in [0x00, 0x7f, 0x80, 0xc0, 0xe9, 0xff] {
                    let mut sample = vec![b'x'; length];
                    sample[at] = byte;
                    samples.push(sample);
                }
            }
        }
        for sample in samples {
            match (super::utf8(&sample), std::str::from_utf8(&sample)) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs),
                (Err(ours), Err(theirs)) => {
                    assert_eq!(ours.valid_up_to(), theirs.valid_up_to())
                }
                (ours, theirs) => panic!("{sample:?}: {ours:?} against {theirs:?}"),
            }
        }
    }
}
