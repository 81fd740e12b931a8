//! OpenAI, Azure OpenAI and OpenAI-compatible upstreams: one wire format,
//! three ways of addressing and authenticating.
//!
//! - OpenAI and compatible servers: `{api_base}/chat/completions`,
//!   `Authorization: Bearer {api_key}`.
//! - Azure: `{api_base}/openai/deployments/{deployment}/chat/completions?api-version=…`,
//!   `api-key: {api_key}`.
//!
//! The client's body passes through with only its model replaced (see
//! `switchboard_dialects::openai::request`), and answers are relayed as the
//! upstream sent them once checked.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Uri};
use switchboard_config::{DeploymentConfig, ProviderKind};
use switchboard_core::Usage;
use switchboard_dialects::openai::{self, ChatRequest, EmbeddingsRequest};

use crate::relay::relay_openai_stream;
use crate::translate::{ChatCall, OPENAI, check_unsupported, translated_reply};
use crate::transport::{
    ByteStream, Http, Native, deployment_headers, endpoint_uri, parse_json_error, upstream_request,
};
use crate::{CallOptions, Reply, UpstreamClients, UpstreamError};

pub(crate) struct OpenAiBackend {
    http: Http,
    chat_url: Uri,
    embeddings_url: Uri,
    models_url: Uri,
    headers: HeaderMap,
    upstream_model: String,
    stream_usage: bool,
    policy: switchboard_config::UnsupportedParams,
    /// How a translated request names its output limit.
    limit_field: &'static str,
}

impl OpenAiBackend {
    pub(crate) fn new(
        config: &DeploymentConfig,
        clients: &UpstreamClients,
    ) -> Result<OpenAiBackend, UpstreamError> {
        let base = config
            .api_base
            .clone()
            .ok_or_else(|| UpstreamError::Misconfigured("no api_base".to_owned()))?;
        let endpoint = |last: &str| -> Result<Uri, UpstreamError> {
            let mut url = base.clone();
            {
                let mut segments = url.path_segments_mut().map_err(|()| {
                    UpstreamError::Misconfigured("api_base cannot take a path".to_owned())
                })?;
                segments.pop_if_empty();
                if config.provider == ProviderKind::Azure {
                    segments.extend([
                        "openai",
                        "deployments",
                        config.azure_deployment.as_deref().unwrap_or_default(),
                    ]);
                }
                match last {
                    "chat" => {
                        segments.extend(["chat", "completions"]);
                    }
                    "embeddings" => {
                        segments.extend(["embeddings"]);
                    }
                    // Azure lists models per resource, not per deployment.
                    _ => {
                        if config.provider == ProviderKind::Azure {
                            segments.pop().pop();
                        }
                        segments.extend(["models"]);
                    }
                };
            }
            if let (ProviderKind::Azure, Some(version)) = (config.provider, &config.api_version) {
                url.query_pairs_mut().append_pair("api-version", version);
            }
            endpoint_uri(&url)
        };

        let auth = config.api_key.as_ref().map(|key| match config.provider {
            ProviderKind::Azure => (
                header::HeaderName::from_static("api-key"),
                key.expose().to_owned(),
            ),
            _ => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
        });
        let headers = deployment_headers(config, auth)?;

        Ok(OpenAiBackend {
            http: Http::new(clients, config.timeouts, parse_json_error)?,
            chat_url: endpoint("chat")?,
            embeddings_url: endpoint("embeddings")?,
            models_url: endpoint("models")?,
            headers,
            upstream_model: config.upstream_model.clone(),
            stream_usage: config.stream_usage,
            policy: config.unsupported_params,
            limit_field: match config.provider {
                ProviderKind::OpenAi | ProviderKind::Azure => "max_completion_tokens",
                _ => "max_tokens",
            },
        })
    }

    /// A request from a client of another dialect, translated both ways.
    pub(crate) async fn chat_translated(
        &self,
        call: &ChatCall<'_>,
    ) -> Result<Reply, UpstreamError> {
        let canonical = call.canonical()?;
        let encoded = openai::canonical::encode_request_with(
            canonical,
            &self.upstream_model,
            self.limit_field,
        );
        let dropped = check_unsupported(
            encoded.unsupported,
            self.policy,
            &self.upstream_model,
            call.dialect(),
        )?;
        let native = if canonical.stream {
            Native::Stream(self.send_stream(encoded.body, &call.options).await?)
        } else {
            Native::Whole(
                self.send_whole(&self.chat_url, encoded.body, &call.options)
                    .await?,
            )
        };
        let idle = call
            .options
            .stream_idle
            .unwrap_or(self.http.timeouts.stream_idle);
        translated_reply(call, native, &OPENAI, &self.upstream_model, idle, dropped)
    }

    pub(crate) async fn chat(
        &self,
        request: &ChatRequest<'_>,
        options: &CallOptions,
    ) -> Result<Reply, UpstreamError> {
        let body = request.encode(&self.upstream_model, self.stream_usage);
        if !request.stream {
            let body = self.send_whole(&self.chat_url, body, options).await?;
            let (usage, info) = openai::check_completion(&body)
                .map_err(|error| UpstreamError::InvalidResponse(error.0))?;
            return Ok(Reply::Complete {
                body,
                usage,
                info,
                dropped: Vec::new(),
            });
        }
        let forward_usage = request.client_wants_usage;
        let strip_null_usage = self.stream_usage && !request.client_wants_usage;
        Ok(Reply::Stream {
            events: relay_openai_stream(
                self.send_stream(body, options).await?,
                options
                    .stream_idle
                    .unwrap_or(self.http.timeouts.stream_idle),
                forward_usage,
                strip_null_usage,
            ),
            dropped: Vec::new(),
        })
    }

    async fn send_stream(
        &self,
        body: Vec<u8>,
        options: &CallOptions,
    ) -> Result<ByteStream, UpstreamError> {
        let mut request = upstream_request(Method::POST, &self.chat_url, &self.headers, body);
        request.headers_mut().insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        self.http
            .stream(request, options, "text/event-stream")
            .await
    }

    /// A free health probe: lists the upstream's models.
    pub(crate) async fn probe_models(&self) -> Result<(), UpstreamError> {
        self.http.check(&self.models_url, &self.headers).await
    }

    pub(crate) async fn embeddings(
        &self,
        request: &EmbeddingsRequest<'_>,
        options: &CallOptions,
    ) -> Result<(Bytes, Usage), UpstreamError> {
        let body = self
            .send_whole(
                &self.embeddings_url,
                request.encode(&self.upstream_model),
                options,
            )
            .await?;
        let usage = openai::check_embeddings(&body)
            .map_err(|error| UpstreamError::InvalidResponse(error.0))?;
        Ok((body, usage))
    }

    async fn send_whole(
        &self,
        uri: &Uri,
        body: Vec<u8>,
        options: &CallOptions,
    ) -> Result<Bytes, UpstreamError> {
        self.http
            .whole(
                upstream_request(Method::POST, uri, &self.headers, body),
                options,
            )
            .await
    }

    pub(crate) fn headroom(&self) -> Option<f64> {
        self.http.headroom()
    }
}
