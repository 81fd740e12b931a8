//! The upstream side of the gateway: one `Deployment` per configured
//! deployment, which sends a checked request to its model and hands back a
//! complete answer or a stream of relay events.
//!
//! Providers translate and transport; they never decide where a request
//! goes (that is `switchboard-policy`) and never see the client's
//! credentials, virtual keys or budgets: a request reaches them as a checked
//! body, and leaves with the deployment's own credentials.

mod anthropic;
mod aws;
mod bedrock;
mod client;
#[cfg(test)]
mod client_tests;
mod error;
pub mod framing;
mod gemini;
mod h1;
mod openai;
mod relay;
pub mod shard;
mod simulated;
pub mod trace_context;
mod translate;
mod transport;

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use switchboard_config::{DeploymentConfig, ProviderKind};
use switchboard_core::{ResponseInfo, Usage};
use switchboard_dialects::openai::{ChatRequest, EmbeddingsRequest};

pub use client::UpstreamClients;
pub use error::{TimeoutPhase, UpstreamError};
pub use translate::{ChatCall, ClientRequest, Dialect};

/// One event of a relayed stream, in the client's dialect.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayEvent {
    /// One Server-Sent Event, framed and ready to write; `content` when it
    /// carries part of the answer (text, a tool call, a refusal, a finish
    /// reason) rather than only the opening.
    Data { frame: Bytes, content: bool },
    /// Token usage reported by the upstream (not sent to the client by itself:
    /// when the client asked for usage, it also arrives as a `Data` chunk).
    Usage(Usage),
    /// The answer's id, model and finish reasons, as read on the way (not
    /// sent to the client by itself); comes just before `Done`.
    Info(ResponseInfo),
    /// The stream ended as it should (for OpenAI clients the server then
    /// writes `data: [DONE]`; other dialects' ends are frames of their own).
    Done,
    /// The stream broke; nothing follows.
    Failed(UpstreamError),
}

/// Events of a streamed answer, in order. Dropping it cancels the upstream
/// request.
pub type RelayStream = Pin<Box<dyn Stream<Item = RelayEvent> + Send>>;

/// How a health probe checks a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// List the upstream's models: free.
    Models,
    /// A one-token completion: billed, for upstreams without a model list.
    Completion,
}

/// Per-request settings that override the deployment's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// Longest silence between two chunks of a stream.
    pub stream_idle: Option<std::time::Duration>,
    /// Longest wait for a connection (rounded up to a few steps).
    pub connect: Option<std::time::Duration>,
}

/// What a deployment answered, in the client's dialect. `dropped` names
/// the parameters the deployment could not honour and left out (under the
/// `drop` policy).
pub enum Reply {
    /// A whole JSON body to relay as it is, and the usage, id, model and
    /// finish reasons read from it.
    Complete {
        body: Bytes,
        usage: Usage,
        info: ResponseInfo,
        dropped: Vec<String>,
    },
    /// A stream to relay event by event.
    Stream {
        events: RelayStream,
        dropped: Vec<String>,
    },
}

impl Reply {
    pub fn dropped(&self) -> &[String] {
        match self {
            Reply::Complete { dropped, .. } | Reply::Stream { dropped, .. } => dropped,
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Complete { body, usage, .. } => f
                .debug_struct("Complete")
                .field("body_bytes", &body.len())
                .field("usage", usage)
                .finish(),
            Reply::Stream { .. } => f.write_str("Stream"),
        }
    }
}

enum Backend {
    /// OpenAI, Azure OpenAI and every OpenAI-compatible server.
    OpenAi(Box<openai::OpenAiBackend>),
    Anthropic(Box<anthropic::AnthropicBackend>),
    Gemini(Box<gemini::GeminiBackend>),
    Bedrock(Box<bedrock::BedrockBackend>),
    Simulated(simulated::Simulator),
}

/// A configured deployment, ready to take requests.
pub struct Deployment {
    name: Arc<str>,
    kind: ProviderKind,
    upstream_model: String,
    backend: Backend,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("name", &self.name)
            .field("provider", &self.kind.name())
            .field("upstream_model", &self.upstream_model)
            .finish()
    }
}

impl Deployment {
    /// Builds a deployment from its validated configuration.
    pub fn new(
        config: &DeploymentConfig,
        clients: &UpstreamClients,
    ) -> Result<Deployment, UpstreamError> {
        let backend = match config.provider {
            ProviderKind::Simulated => Backend::Simulated(simulated::Simulator::new(
                config.simulation.clone().unwrap_or_default(),
                config.upstream_model.clone(),
            )),
            ProviderKind::OpenAi | ProviderKind::Azure | ProviderKind::OpenAiCompatible { .. } => {
                Backend::OpenAi(Box::new(openai::OpenAiBackend::new(config, clients)?))
            }
            ProviderKind::Anthropic => {
                Backend::Anthropic(Box::new(anthropic::AnthropicBackend::new(config, clients)?))
            }
            ProviderKind::Gemini => {
                Backend::Gemini(Box::new(gemini::GeminiBackend::new(config, clients)?))
            }
            ProviderKind::Bedrock => {
                Backend::Bedrock(Box::new(bedrock::BedrockBackend::new(config, clients)?))
            }
        };
        Ok(Deployment {
            name: Arc::from(config.name.as_str()),
            kind: config.provider,
            upstream_model: config.upstream_model.clone(),
            backend,
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    pub fn upstream_model(&self) -> &str {
        &self.upstream_model
    }

    /// Share (0 to 1) of its rate limit the upstream last reported left,
    /// from its `x-ratelimit-*` headers; `None` if it never said.
    pub fn headroom(&self) -> Option<f64> {
        match &self.backend {
            Backend::OpenAi(backend) => backend.headroom(),
            Backend::Anthropic(backend) => backend.headroom(),
            Backend::Gemini(backend) => backend.headroom(),
            Backend::Bedrock(backend) => backend.headroom(),
            Backend::Simulated(_) => None,
        }
    }

    /// Whether `Probe::Models` costs nothing here: false for Bedrock, whose
    /// runtime endpoint has no model list.
    pub fn has_free_probe(&self) -> bool {
        !matches!(self.backend, Backend::Bedrock(_))
    }

    /// Checks that the upstream answers. `Probe::Models` lists its models,
    /// which costs nothing; `Probe::Completion` sends a one-token chat
    /// completion, which is billed.
    pub async fn probe(&self, probe: Probe) -> Result<(), UpstreamError> {
        match (&self.backend, probe) {
            (Backend::OpenAi(backend), Probe::Models) => backend.probe_models().await,
            (Backend::Anthropic(backend), Probe::Models) => backend.probe_models().await,
            (Backend::Gemini(backend), Probe::Models) => backend.probe_models().await,
            // Bedrock's runtime endpoint lists nothing: its probe is a
            // one-token completion either way.
            (Backend::Simulated(_), _) => Ok(()),
            // Bedrock has no free probe: a models probe asked of it anyway
            // says nothing (the probe task skips it; see `has_free_probe`).
            (Backend::Bedrock(_), Probe::Models) => Ok(()),
            (_, Probe::Completion) => {
                let body = format!(
                    r#"{{"model":{},"messages":[{{"role":"user","content":"ping"}}],"max_tokens":1}}"#,
                    serde_json::to_string(&self.upstream_model).unwrap_or_default()
                );
                let request = ChatRequest::parse(body.as_bytes())
                    .map_err(|error| UpstreamError::Misconfigured(error.message))?;
                let call = ChatCall::new(ClientRequest::OpenAi(&request), CallOptions::default());
                self.chat(&call).await.map(|_| ())
            }
        }
    }

    /// Sends a chat request; the answer comes back in the client's dialect.
    pub async fn chat(&self, call: &ChatCall<'_>) -> Result<Reply, UpstreamError> {
        match (&self.backend, call.request) {
            (Backend::OpenAi(backend), ClientRequest::OpenAi(request)) => {
                backend.chat(request, &call.options).await
            }
            (Backend::OpenAi(backend), _) => backend.chat_translated(call).await,
            (Backend::Anthropic(backend), _) => backend.chat(call).await,
            (Backend::Gemini(backend), _) => backend.chat(call).await,
            (Backend::Bedrock(backend), _) => backend.chat(call).await,
            (Backend::Simulated(simulator), ClientRequest::OpenAi(request)) => {
                simulator.chat(request).await
            }
            (Backend::Simulated(simulator), _) => simulator.chat_translated(call).await,
        }
    }

    /// Sends an embeddings request; the answer is always complete.
    pub async fn embeddings(
        &self,
        request: &EmbeddingsRequest<'_>,
        options: &CallOptions,
    ) -> Result<(Bytes, Usage), UpstreamError> {
        match &self.backend {
            Backend::OpenAi(backend) => backend.embeddings(request, options).await,
            Backend::Simulated(simulator) => simulator.embeddings(request).await,
            Backend::Gemini(backend) => backend.embeddings(request, options).await,
            Backend::Bedrock(backend) => backend.embeddings(request, options).await,
            Backend::Anthropic(_) => Err(UpstreamError::Untranslatable {
                message: format!(
                    "the model `{}` (Anthropic) has no embeddings endpoint",
                    self.upstream_model
                ),
                param: Some("model".to_owned()),
            }),
        }
    }
}
