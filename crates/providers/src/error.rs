//! What can go wrong upstream, classified once so that the server can pick
//! the client's status and the router can tell what a retry elsewhere may
//! fix.

use switchboard_dialects::openai::UpstreamErrorBody;

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    Connect,
    /// Waiting for the whole answer, or for a stream's headers.
    Request,
    /// Silence between two chunks of a stream.
    StreamIdle,
    /// A stream opened but no content arrived within the first-token limit.
    FirstToken,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream did not answer in time ({phase:?})")]
    Timeout { phase: TimeoutPhase },
    #[error("the upstream connection failed: {0}")]
    Transport(String),
    /// The upstream answered with a non-success status.
    #[error("the upstream answered with status {status}")]
    Status {
        status: u16,
        body: UpstreamErrorBody,
        /// The upstream's `retry-after`, passed on to clients on 429.
        retry_after: Option<String>,
    },
    /// The upstream reported an error inside a stream that had started.
    #[error("the upstream reported an error in the stream")]
    InStream { body: UpstreamErrorBody },
    /// The upstream answered something that is not the expected API object.
    #[error("{0}")]
    InvalidResponse(String),
    /// The deployment's configuration cannot be used (bad URL, bad header).
    #[error("the deployment is misconfigured: {0}")]
    Misconfigured(String),
    /// The client's request cannot be read into the internal model, so it
    /// cannot be sent to a deployment of another dialect.
    #[error("the request cannot be translated: {message}")]
    Untranslatable {
        message: String,
        param: Option<String>,
    },
    /// The request uses parameters the deployment's API cannot honour, and
    /// the deployment's policy is to refuse such requests.
    #[error("the model `{model}` cannot honour {params:?}")]
    Unsupported { params: Vec<String>, model: String },
}

impl UpstreamError {
    pub(crate) fn from_reqwest(error: &reqwest::Error, phase: TimeoutPhase) -> UpstreamError {
        if error.is_timeout() {
            UpstreamError::Timeout { phase }
        } else if error.is_connect() {
            UpstreamError::Connect(root_cause(error))
        } else {
            UpstreamError::Transport(root_cause(error))
        }
    }
}

/// The innermost cause, which names the actual problem ("connection
/// refused") where reqwest's own message only says the request failed.
/// reqwest's messages hold the URL but never header values, so no
/// credential can appear here.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
