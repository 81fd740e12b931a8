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

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use switchboard_config::{DeploymentConfig, ProviderKind, Timeouts};
use switchboard_core::Usage;
use switchboard_dialects::openai::{self, ChatRequest, EmbeddingsRequest, UpstreamErrorBody};

use crate::relay::relay_openai_stream;
use crate::{CallOptions, Reply, TimeoutPhase, UpstreamClients, UpstreamError};

/// Largest error body read from an upstream; the rest is not needed to
/// explain the failure.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Largest whole (non-streamed) answer accepted from an upstream: far above
/// any real completion or embeddings batch, low enough that a broken
/// upstream cannot exhaust the gateway's memory.
const MAX_ANSWER_BODY: usize = 256 * 1024 * 1024;

pub(crate) struct OpenAiBackend {
    client: reqwest::Client,
    chat_url: reqwest::Url,
    embeddings_url: reqwest::Url,
    models_url: reqwest::Url,
    headers: HeaderMap,
    upstream_model: String,
    timeouts: Timeouts,
    stream_usage: bool,
    /// Share of its rate limit the upstream last reported left, in
    /// millionths; `u32::MAX` until it reports one.
    headroom: AtomicU32,
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
        let endpoint = |last: &str| -> Result<reqwest::Url, UpstreamError> {
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
            Ok(url)
        };

        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(key) = &config.api_key {
            let (name, value) = match config.provider {
                ProviderKind::Azure => (
                    header::HeaderName::from_static("api-key"),
                    key.expose().to_owned(),
                ),
                _ => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
            };
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                UpstreamError::Misconfigured(
                    "the API key holds characters not allowed in a header".to_owned(),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        for (name, secret) in &config.headers {
            let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
                UpstreamError::Misconfigured(format!("header {name} has an invalid value"))
            })?;
            value.set_sensitive(true);
            headers.insert(name.clone(), value);
        }

        Ok(OpenAiBackend {
            client: clients.get(config.timeouts.connect)?,
            chat_url: endpoint("chat")?,
            embeddings_url: endpoint("embeddings")?,
            models_url: endpoint("models")?,
            headers,
            upstream_model: config.upstream_model.clone(),
            timeouts: config.timeouts,
            stream_usage: config.stream_usage,
            headroom: AtomicU32::new(u32::MAX),
        })
    }

    pub(crate) async fn chat(
        &self,
        request: &ChatRequest<'_>,
        options: &CallOptions,
    ) -> Result<Reply, UpstreamError> {
        let body = request.encode(&self.upstream_model, self.stream_usage);
        if !request.stream {
            let body = self.send_whole(&self.chat_url, body).await?;
            let usage = openai::check_completion(&body)
                .map_err(|error| UpstreamError::InvalidResponse(error.0))?;
            return Ok(Reply::Complete { body, usage });
        }
        let send = self
            .client
            .post(self.chat_url.clone())
            .headers(self.headers.clone())
            .header(header::ACCEPT, "text/event-stream")
            .body(body)
            .send();
        let response = match tokio::time::timeout(self.timeouts.request, send).await {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    phase: TimeoutPhase::Request,
                });
            }
            Ok(Err(error)) => {
                return Err(UpstreamError::from_reqwest(&error, TimeoutPhase::Connect));
            }
            Ok(Ok(response)) => response,
        };
        self.note_rate_limits(response.headers());
        let status = response.status();
        if !status.is_success() {
            return Err(self.status_error(response).await);
        }
        let is_event_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        if !is_event_stream {
            // Some servers answer a stream request that failed with a JSON
            // error and status 200; relay what they meant.
            let body = read_limited(response, self.timeouts.request).await?;
            let parsed = UpstreamErrorBody::parse(&body);
            if parsed.message.is_some() {
                return Err(UpstreamError::InStream { body: parsed });
            }
            return Err(UpstreamError::InvalidResponse(
                "the upstream answered a stream request without an event stream".to_owned(),
            ));
        }
        let forward_usage = request.client_wants_usage;
        let strip_null_usage = self.stream_usage && !request.client_wants_usage;
        Ok(Reply::Stream(relay_openai_stream(
            response.bytes_stream().boxed(),
            options.stream_idle.unwrap_or(self.timeouts.stream_idle),
            forward_usage,
            strip_null_usage,
        )))
    }

    /// A free health probe: lists the upstream's models.
    pub(crate) async fn probe_models(&self) -> Result<(), UpstreamError> {
        let request = self
            .client
            .get(self.models_url.clone())
            .headers(self.headers.clone())
            .send();
        let response = match tokio::time::timeout(
            self.timeouts
                .request
                .min(std::time::Duration::from_secs(10)),
            request,
        )
        .await
        {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    phase: TimeoutPhase::Request,
                });
            }
            Ok(Err(error)) => {
                return Err(UpstreamError::from_reqwest(&error, TimeoutPhase::Connect));
            }
            Ok(Ok(response)) => response,
        };
        self.note_rate_limits(response.headers());
        if response.status().is_success() {
            Ok(())
        } else {
            Err(self.status_error(response).await)
        }
    }

    pub(crate) async fn embeddings(
        &self,
        request: &EmbeddingsRequest<'_>,
    ) -> Result<(Bytes, Usage), UpstreamError> {
        let body = self
            .send_whole(&self.embeddings_url, request.encode(&self.upstream_model))
            .await?;
        let usage = openai::check_embeddings(&body)
            .map_err(|error| UpstreamError::InvalidResponse(error.0))?;
        Ok((body, usage))
    }

    /// Sends a request whose answer is read whole, within the request timeout.
    async fn send_whole(&self, url: &reqwest::Url, body: Vec<u8>) -> Result<Bytes, UpstreamError> {
        let exchange = async {
            let response = self
                .client
                .post(url.clone())
                .headers(self.headers.clone())
                .body(body)
                .send()
                .await
                .map_err(|error| UpstreamError::from_reqwest(&error, TimeoutPhase::Connect))?;
            self.note_rate_limits(response.headers());
            if !response.status().is_success() {
                return Err(self.status_error(response).await);
            }
            let body = read_capped(response, MAX_ANSWER_BODY).await?;
            if body.len() >= MAX_ANSWER_BODY {
                return Err(UpstreamError::InvalidResponse(format!(
                    "the answer is larger than {} MiB",
                    MAX_ANSWER_BODY >> 20
                )));
            }
            Ok(body)
        };
        match tokio::time::timeout(self.timeouts.request, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                phase: TimeoutPhase::Request,
            }),
        }
    }

    /// Reads the upstream's rate-limit headers (`x-ratelimit-remaining-*`
    /// and `x-ratelimit-limit-*`, for requests and tokens) and keeps the
    /// smaller share left.
    fn note_rate_limits(&self, headers: &HeaderMap) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<f64>().ok())
                .filter(|value| value.is_finite() && *value >= 0.0)
        };
        let share = |remaining: &str, limit: &str| match (number(remaining), number(limit)) {
            (Some(remaining), Some(limit)) if limit > 0.0 => Some((remaining / limit).min(1.0)),
            _ => None,
        };
        let shares = [
            share(
                "x-ratelimit-remaining-requests",
                "x-ratelimit-limit-requests",
            ),
            share("x-ratelimit-remaining-tokens", "x-ratelimit-limit-tokens"),
        ];
        if let Some(least) = shares.into_iter().flatten().reduce(f64::min) {
            self.headroom
                .store((least * 1_000_000.0) as u32, Ordering::Relaxed);
        }
    }

    pub(crate) fn headroom(&self) -> Option<f64> {
        match self.headroom.load(Ordering::Relaxed) {
            u32::MAX => None,
            millionths => Some(f64::from(millionths) / 1_000_000.0),
        }
    }

    async fn status_error(&self, response: reqwest::Response) -> UpstreamError {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .or_else(|| {
                (status == 429)
                    .then(|| reset_wait(response.headers()))
                    .flatten()
            });
        let body = read_limited(response, self.timeouts.request)
            .await
            .unwrap_or_default();
        UpstreamError::Status {
            status,
            body: UpstreamErrorBody::parse(&body),
            retry_after,
        }
    }
}

/// Reads a body, stopping once `cap` bytes have arrived (the caller tells
/// a body cut at the cap from a whole one by its length).
async fn read_capped(response: reqwest::Response, cap: usize) -> Result<Bytes, UpstreamError> {
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|error| UpstreamError::from_reqwest(&error, TimeoutPhase::Request))?;
        let room = cap.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= cap {
            break;
        }
    }
    Ok(Bytes::from(body))
}

/// Reads at most `MAX_ERROR_BODY` bytes of an error or non-stream body,
/// within `timeout`.
async fn read_limited(
    response: reqwest::Response,
    timeout: std::time::Duration,
) -> Result<Bytes, UpstreamError> {
    tokio::time::timeout(timeout, read_capped(response, MAX_ERROR_BODY))
        .await
        .unwrap_or(Err(UpstreamError::Timeout {
            phase: TimeoutPhase::Request,
        }))
}

/// When a 429 has no `Retry-After`, the wait its `x-ratelimit-reset-*`
/// headers announce (OpenAI writes them as `1s`, `6m0s`, `20ms`), in
/// seconds; the longer of the two, since either limit may be the one hit.
fn reset_wait(headers: &HeaderMap) -> Option<String> {
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .filter_map(parse_reset)
        .reduce(f64::max)
        .map(|seconds| format!("{seconds:.3}"))
}

/// Parses `1h2m3.5s`, `6m0s`, `20ms` or a bare number of seconds.
fn parse_reset(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then_some(seconds);
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits =
            rest.find(|character: char| !(character.is_ascii_digit() || character == '.'))?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, scale) = if let Some(after) = rest.strip_prefix("ms") {
            (after, 0.001)
        } else if let Some(after) = rest.strip_prefix('h') {
            (after, 3600.0)
        } else if let Some(after) = rest.strip_prefix('m') {
            (after, 60.0)
        } else if let Some(after) = rest.strip_prefix('s') {
            (after, 1.0)
        } else {
            return None;
        };
        total += value * scale;
        rest = unit;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations_are_read_in_openais_format() {
        assert_eq!(parse_reset("1s"), Some(1.0));
        assert_eq!(parse_reset("6m0s"), Some(360.0));
        assert_eq!(parse_reset("20ms"), Some(0.02));
        assert_eq!(parse_reset("1h2m3.5s"), Some(3723.5));
        assert_eq!(parse_reset("2.5"), Some(2.5));
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset("5x"), None);
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset-requests", "1s".parse().unwrap());
        headers.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
        assert_eq!(reset_wait(&headers).as_deref(), Some("360.000"));
        assert_eq!(reset_wait(&HeaderMap::new()), None);
    }
}
