//! Token usage as reported by an upstream model, in one vendor-neutral shape.

use serde::{Deserialize, Serialize};

/// Tokens a request consumed. Counts the upstream did not report stay `None`
/// rather than zero, so that "unknown" and "none" are never confused in the
/// request log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Part of `input_tokens` that the provider served from its prompt cache.
    pub cached_input_tokens: Option<u64>,
    /// Part of `output_tokens` spent on hidden reasoning.
    pub reasoning_tokens: Option<u64>,
    /// Part of `input_tokens` written to the provider's prompt cache
    /// (Anthropic, Bedrock), billed at the cache-write price. Absent from
    /// records written before it existed.
    #[serde(default)]
    pub cache_write_tokens: Option<u64>,
}

impl Usage {
    /// True when the upstream reported nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}
