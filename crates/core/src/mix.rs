//! SplitMix64: a fast, well-spread bijection on 64-bit integers. The
//! gateway uses it where it needs cheap, repeatable scrambling (request
//! ids, simulated failure draws, backoff jitter, affinity scores), never
//! for anything secret. And FNV-1a, a hasher for maps keyed by a few
//! short names the gateway chose itself.

use std::hash::{BuildHasherDefault, Hasher};

/// Scrambles `seed`. Distinct inputs give distinct outputs.
pub fn splitmix64(seed: u64) -> u64 {
    let mut value = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

/// FNV-1a: for small maps of short keys (configured names, a batch's own
/// scopes), where SipHash's per-key cost dominated the lookups on the
/// request path. A map whose keys a client could choose to collide may use
/// it only if its size is bounded (a Redis batch: at most 128 operations).
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds `Fnv` hashers, for `HashMap::default()`.
pub type FnvBuild = BuildHasherDefault<Fnv>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // The first outputs of the reference generator seeded with 0.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_ne!(splitmix64(1), splitmix64(2));
    }

    #[test]
    fn fnv_matches_the_reference_values() {
        let hash = |bytes: &[u8]| {
            let mut hasher = Fnv::default();
            hasher.write(bytes);
            hasher.finish()
        };
        // FNV-1a 64-bit of "" and "a".
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
