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
    /// Classifies a failure to send a request or receive its head: the
    /// connect timeout, a connection that could not be made (refused, DNS,
    /// TLS), or one that failed once made.
    pub(crate) fn from_client(error: &crate::client::ClientError) -> UpstreamError {
        match error {
            crate::client::ClientError::Connect(cause) => {
                let cause: &(dyn std::error::Error + 'static) = cause.as_ref();
                let timed_out = causes(cause).any(|cause| {
                    cause.is::<crate::client::ConnectTimedOut>()
                        || cause
                            .downcast_ref::<std::io::Error>()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                });
                if timed_out {
                    UpstreamError::Timeout {
                        phase: TimeoutPhase::Connect,
                    }
                } else {
                    UpstreamError::Connect(connect_cause(cause))
                }
            }
            crate::client::ClientError::Send(cause) => {
                UpstreamError::Transport(root_cause(cause.as_ref()))
            }
        }
    }

    /// Classifies a failure while reading a body that had begun.
    pub(crate) fn from_body(error: &crate::client::BodyError) -> UpstreamError {
        UpstreamError::Transport(root_cause(error.as_ref()))
    }
}

/// An error and its sources, outermost first.
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |cause| cause.source())
}

/// What stopped the connection, named by its phase: `TLS handshake
/// failed: invalid peer certificate: UnknownIssuer`, `DNS lookup failed:
/// …`, or the socket's own error (`Connection refused (os error 111)`).
/// None of these errors carries the URL or a header.
fn connect_cause(error: &(dyn std::error::Error + 'static)) -> String {
    // rustls's error arrives inside an I/O error inside another (tokio-rustls
    // and hyper-rustls each wrap it), which `source()` does not reach.
    let tls = causes(error).find_map(|cause| {
        let mut inner: &(dyn std::error::Error + 'static) = cause;
        loop {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            inner = inner.downcast_ref::<std::io::Error>()?.get_ref()?;
        }
    });
    if let Some(tls) = tls {
        return format!("TLS handshake failed: {tls}");
    }
    // hyper-util names the step that failed in its (private) error type.
    if causes(error).any(|cause| cause.to_string() == "dns error") {
        return format!("DNS lookup failed: {}", root_cause(error));
    }
    root_cause(error)
}

/// The innermost cause, which names the actual problem ("connection
/// refused") where the client's own message only says the request failed.
/// hyper's and hyper-util's messages hold neither the URL nor header
/// values, so no credential can appear here.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    causes(error)
        .last()
        .map(ToString::to_string)
        .unwrap_or_default()
}
