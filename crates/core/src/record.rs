//! The record kept for every request that reached a model endpoint.
//!
//! Records are built on the request path and handed to the store's writer
//! through a bounded channel; nothing here waits on a database.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Usage;

/// The inbound API a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    ChatCompletions,
    /// Anthropic's Messages API.
    Messages,
    Embeddings,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Messages => "messages",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// How a request ended, from the gateway's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The client received a complete answer.
    Success,
    /// The gateway refused the request (bad input, unknown model, auth).
    ClientError,
    /// The upstream failed, timed out or answered something unusable.
    UpstreamError,
    /// The client went away before the answer was complete.
    ClientClosed,
    /// The gateway was shutting down and cut the request at its deadline.
    Shutdown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientClosed => "client_closed",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// One request, as the request log keeps it. Never holds a secret: no keys,
/// no prompt or response bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The request id echoed to the client in `x-request-id`.
    pub request_id: String,
    /// Start of the request, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    pub endpoint: Endpoint,
    /// Public model name the client asked for (empty when the request was
    /// refused before a model could be read).
    pub model: String,
    /// Deployment that served the request (or failed last), if one was tried.
    pub deployment: Option<String>,
    /// The public model that served the request when a fallback did, that
    /// is when it differs from `model`.
    pub served_model: Option<String>,
    /// Upstream attempts made, retries and fallbacks included.
    pub attempts: u32,
    /// The attempts one by one, in the order they ended: at most
    /// `MAX_ATTEMPT_DETAILS` (the first ones and the last), so `attempts`
    /// may be larger than its length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_details: Vec<AttemptDetail>,
    pub stream: bool,
    /// HTTP status the client received. For a stream that failed after its
    /// 200 header left, the status that describes the failure (502, 504, 499).
    pub status: u16,
    pub outcome: Outcome,
    /// Stable error code (`model_not_found`, `upstream_timeout`...) when the
    /// request did not succeed.
    pub error_code: Option<String>,
    /// Time from receiving the request to sending its last byte.
    pub latency_ms: u64,
    /// Time from receiving the request to relaying the first streamed chunk.
    pub ttft_ms: Option<u64>,
    pub usage: Usage,
    /// The virtual key (its id, never its secret), its team, and the end
    /// user the request named, when there were. The ids are shared with
    /// the key cache's entry rather than copied per request.
    #[serde(default)]
    pub key_id: Option<Arc<str>>,
    #[serde(default)]
    pub team_id: Option<Arc<str>>,
    #[serde(default)]
    pub end_user: Option<String>,
    /// What the request cost, in nano-dollars, when a price was known.
    #[serde(default)]
    pub cost_nanos: Option<u64>,
    /// The response cache answered: nothing went upstream, it cost 0.
    #[serde(default)]
    pub cache_hit: bool,
    /// What the client attached in `x-switchboard-metadata`: a JSON object
    /// of strings, written with its members sorted.
    #[serde(default)]
    pub metadata: Option<String>,
    /// The request's and response's bodies, redacted, when the model, the
    /// key or its team asks for them to be kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bodies: Option<Bodies>,
}

/// The most attempts a record lists one by one. A request that made more
/// keeps the first `MAX_ATTEMPT_DETAILS - 1` and its last.
pub const MAX_ATTEMPT_DETAILS: usize = 16;

/// One upstream attempt of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptDetail {
    /// The deployment tried.
    pub deployment: Arc<str>,
    /// The public model it serves: the requested one, or a fallback.
    pub model: Arc<str>,
    /// `ok`, or the failure's class as the metrics count it (`connect`,
    /// `timeout`, `transport`, `rate_limited`, `server_error`,
    /// `client_error`, `in_stream`, `invalid_response`, `misconfigured`),
    /// or `cancelled` for a hedge that lost its race.
    pub outcome: Cow<'static, str>,
    /// The upstream's HTTP status, when it refused with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// From sending the attempt to its answer (a stream's first content)
    /// or its failure.
    pub duration_ms: u64,
}

impl AttemptDetail {
    pub const OK: &'static str = "ok";
    pub const CANCELLED: &'static str = "cancelled";
}

/// Adds `detail` to `details`, keeping at most `MAX_ATTEMPT_DETAILS`: once
/// full, the newest replaces the last kept, so the first attempts and the
/// last one are always there.
pub fn push_attempt_detail(details: &mut Vec<AttemptDetail>, detail: AttemptDetail) {
    if details.len() < MAX_ATTEMPT_DETAILS {
        details.push(detail);
    } else if let Some(last) = details.last_mut() {
        *last = detail;
    }
}

/// A request's bodies as the request log keeps them: redacted, and cut to
/// `logging.max_body_bytes` each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bodies {
    pub request: String,
    /// The whole answer, or the stream as the client received it; `None`
    /// when no answer came.
    pub response: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(number: u64) -> AttemptDetail {
        AttemptDetail {
            deployment: Arc::from("d"),
            model: Arc::from("m"),
            outcome: Cow::Borrowed(AttemptDetail::OK),
            status: None,
            duration_ms: number,
        }
    }

    #[test]
    fn attempt_details_keep_the_first_and_the_last() {
        let mut details = Vec::new();
        for number in 0..40 {
            push_attempt_detail(&mut details, detail(number));
        }
        assert_eq!(details.len(), MAX_ATTEMPT_DETAILS);
        let kept: Vec<u64> = details.iter().map(|detail| detail.duration_ms).collect();
        let mut expected: Vec<u64> = (0..MAX_ATTEMPT_DETAILS as u64 - 1).collect();
        expected.push(39);
        assert_eq!(kept, expected);
    }
}
