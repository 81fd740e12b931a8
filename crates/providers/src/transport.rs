//! What every HTTP upstream shares, whatever its dialect: sending a request
//! within the deployment's timeouts, telling a stream from an error, reading
//! bounded bodies, classifying failed statuses, and the rate-limit headroom
//! the upstream reports in its headers.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use switchboard_config::{DeploymentConfig, Timeouts};
use switchboard_dialects::openai::UpstreamErrorBody;

use crate::client::connect_step;
use crate::{CallOptions, TimeoutPhase, UpstreamClients, UpstreamError};

/// Largest error body read from an upstream; the rest is not needed to
/// explain the failure.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Largest whole (non-streamed) answer accepted from an upstream: far above
/// any real completion or embeddings batch, low enough that a broken
/// upstream cannot exhaust the gateway's memory.
const MAX_ANSWER_BODY: usize = 256 * 1024 * 1024;

pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// Reads an upstream's error body (and headers) into what the gateway
/// tells the client.
pub(crate) type ErrorParser = fn(&[u8], &HeaderMap) -> UpstreamErrorBody;

pub(crate) fn parse_json_error(body: &[u8], _headers: &HeaderMap) -> UpstreamErrorBody {
    UpstreamErrorBody::parse(body)
}

/// The headers every request to a deployment carries: a JSON content type,
/// the credential (`auth`: a header name and its whole value) and the
/// configured extra headers, all secret values marked sensitive so they
/// never appear in debug output.
pub(crate) fn deployment_headers(
    config: &DeploymentConfig,
    auth: Option<(HeaderName, String)>,
) -> Result<HeaderMap, UpstreamError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((name, value)) = auth {
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
    Ok(headers)
}

/// An upstream's answer before it is read as its dialect.
pub(crate) enum Native {
    Whole(Bytes),
    Stream(ByteStream),
}

/// A deployment's HTTP side.
pub(crate) struct Http {
    client: reqwest::Client,
    clients: UpstreamClients,
    pub timeouts: Timeouts,
    /// Share of its rate limit the upstream last reported left, in
    /// millionths; `u32::MAX` until it reports one.
    headroom: AtomicU32,
    parse_error: ErrorParser,
}

impl Http {
    pub(crate) fn new(
        clients: &UpstreamClients,
        timeouts: Timeouts,
        parse_error: ErrorParser,
    ) -> Result<Http, UpstreamError> {
        Ok(Http {
            client: clients.get(timeouts.connect)?,
            clients: clients.clone(),
            timeouts,
            headroom: AtomicU32::new(u32::MAX),
            parse_error,
        })
    }

    /// The client to send with: the deployment's own, or one with the
    /// request's connect timeout (`x-switchboard-connect-timeout`).
    pub(crate) fn client(&self, options: &CallOptions) -> reqwest::Client {
        match options.connect {
            Some(connect) => self
                .clients
                .get(connect_step(connect))
                .unwrap_or_else(|_| self.client.clone()),
            None => self.client.clone(),
        }
    }

    /// Sends a request whose answer is read whole, within the request timeout.
    pub(crate) async fn whole(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Bytes, UpstreamError> {
        let request = crate::trace_context::add_traceparent(request);
        let exchange = async {
            let response = request
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

    /// Sends a request for a stream: waits for its headers within the
    /// request timeout and checks that a stream of `content_type` began.
    pub(crate) async fn stream(
        &self,
        request: reqwest::RequestBuilder,
        content_type: &str,
    ) -> Result<ByteStream, UpstreamError> {
        let request = crate::trace_context::add_traceparent(request);
        let response = match tokio::time::timeout(self.timeouts.request, request.send()).await {
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
        if !response.status().is_success() {
            return Err(self.status_error(response).await);
        }
        let is_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with(content_type));
        if !is_stream {
            // Some servers answer a stream request that failed with a JSON
            // error and status 200; relay what they meant.
            let headers = response.headers().clone();
            let body = read_limited(response, self.timeouts.request).await?;
            let parsed = (self.parse_error)(&body, &headers);
            if parsed.message.is_some() {
                return Err(UpstreamError::InStream { body: parsed });
            }
            return Err(UpstreamError::InvalidResponse(
                "the upstream answered a stream request without an event stream".to_owned(),
            ));
        }
        Ok(response
            .bytes_stream()
            .map(|piece| {
                piece.map_err(|error| UpstreamError::from_reqwest(&error, TimeoutPhase::StreamIdle))
            })
            .boxed())
    }

    /// Sends a GET whose status alone matters (health probes).
    pub(crate) async fn check(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(), UpstreamError> {
        let timeout = self
            .timeouts
            .request
            .min(std::time::Duration::from_secs(10));
        let response = match tokio::time::timeout(timeout, request.send()).await {
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

    /// Reads the upstream's rate-limit headers and keeps the smaller share
    /// left: OpenAI's `x-ratelimit-{remaining,limit}-{requests,tokens}` and
    /// Anthropic's `anthropic-ratelimit-{requests,tokens}-{remaining,limit}`.
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
            share(
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-limit",
            ),
            share(
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-limit",
            ),
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
        let headers = response.headers().clone();
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .or_else(|| (status == 429).then(|| reset_wait(&headers)).flatten());
        let body = read_limited(response, self.timeouts.request)
            .await
            .unwrap_or_default();
        UpstreamError::Status {
            status,
            body: (self.parse_error)(&body, &headers),
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
