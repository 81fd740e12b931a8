//! SipHash-2-4 with its 128-bit output (the reference's `outlen = 16`), in
//! one pass: a keyed pseudo-random function of a short input, for where 64
//! bits are too few to stand for a secret (the key index's tags of
//! presented secrets). The standard library offers the 64-bit output only,
//! and two of those, under two keys, cost two passes over the input.

/// SipHash-2-4-128 of `data` under the key `(k0, k1)` (the key's 16 bytes
/// read as two little-endian words): the two halves of the tag, each the
/// little-endian reading of its 8 bytes.
pub fn siphash_2_4_128(k0: u64, k1: u64, data: &[u8]) -> (u64, u64) {
    let mut state = [
        k0 ^ 0x736f_6d65_7073_6575,
        // The 128-bit output's tweak of the initial state.
        k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        compress(&mut state, u64::from_le_bytes(bytes));
    }
    // The last word: the bytes left, then the input's length (mod 256) in
    // its top byte.
    let rest = words.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    last[7] = data.len() as u8;
    compress(&mut state, u64::from_le_bytes(last));
    state[2] ^= 0xee;
    for _ in 0..4 {
        round(&mut state);
    }
    let first = state[0] ^ state[1] ^ state[2] ^ state[3];
    state[1] ^= 0xdd;
    for _ in 0..4 {
        round(&mut state);
    }
    (first, state[0] ^ state[1] ^ state[2] ^ state[3])
}

fn compress(state: &mut [u64; 4], word: u64) {
    state[3] ^= word;
    round(state);
    round(state);
    state[0] ^= word;
}

fn round(state: &mut [u64; 4]) {
    let [mut v0, mut v1, mut v2, mut v3] = *state;
    v0 = v0.wrapping_add(v1);
    v1 = v1.rotate_left(13) ^ v0;
    v0 = v0.rotate_left(32);
    v2 = v2.wrapping_add(v3);
    v3 = v3.rotate_left(16) ^ v2;
    v0 = v0.wrapping_add(v3);
    v3 = v3.rotate_left(21) ^ v0;
    v2 = v2.wrapping_add(v1);
    v1 = v1.rotate_left(17) ^ v2;
    v2 = v2.rotate_left(32);
    *state = [v0, v1, v2, v3];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of the reference implementation's `vectors_sip128`: the tag of
    /// the message 00 01 .. (len − 1) under the key 00 01 .. 0f, as bytes.
    const REFERENCE: [(usize, &str); 10] = [
        (0, "a3817f04ba25a8e66df67214c7550293"),
        (1, "da87c1d86b99af44347659119b22fc45"),
        (7, "a1f1ebbed8dbc153c0b84aa61ff08239"),
        (8, "3b62a9ba6258f5610f83e264f31497b4"),
        (9, "264499060ad9baabc47f8b02bb6d71ed"),
        (15, "5493e99933b0a8117e08ec0f97cfc3d9"),
        (16, "6ee2a4ca67b054bbfd3315bf85230577"),
        (17, "473d06e8738db89854c066c47ae47740"),
        (31, "2939b0183223fafc1723de4f52c43d35"),
        (63, "5150d1772f50834a503e069a973fbd7c"),
    ];

    #[test]
    fn matches_the_reference_vectors() {
        let message: Vec<u8> = (0..64).collect();
        let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        for (length, expected) in REFERENCE {
            let (first, second) = siphash_2_4_128(k0, k1, &message[..length]);
            let mut tag = first.to_le_bytes().to_vec();
            tag.extend_from_slice(&second.to_le_bytes());
            let hex: String = tag.iter().map(|byte| format!("{byte:02x}")).collect();
            assert_eq!(hex, expected, "{length} bytes");
        }
    }

    #[test]
    fn the_key_and_every_byte_count() {
        let message = b"sb-0123456789abcdef0123456789abcdef0123456789";
        let tag = siphash_2_4_128(1, 2, message);
        assert_ne!(tag, siphash_2_4_128(1, 3, message));
        assert_ne!(tag, siphash_2_4_128(0, 2, message));
        let mut changed = *message;
        changed[40] ^= 1;
        assert_ne!(tag, siphash_2_4_128(1, 2, &changed));
        assert_ne!(tag, siphash_2_4_128(1, 2, &message[..44]));
    }
}
