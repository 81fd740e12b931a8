//! Anthropic's Messages API upstream: `{api_base}/v1/messages`, `x-api-key`,
//! `anthropic-version`.
//!
//! An Anthropic client's request passes through with only its model
//! replaced, and the answer (whole or streamed) is relayed as Anthropic sent
//! it, once checked and its usage read. A request from a client of another
//! dialect is translated through the internal model both ways.

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::collections::VecDeque;
use std::time::Duration;
use switchboard_config::{DeploymentConfig, UnsupportedParams};
use switchboard_core::Usage;
use switchboard_dialects::anthropic::{self, EventDecoder, MessagesRequest};
use switchboard_dialects::canon::{self, StreamDecoder, StreamError, StreamEvent};
use switchboard_dialects::sse::{SseDecoder, SseEvent};

use crate::translate::{ChatCall, ClientRequest, check_unsupported, relay_translated};
use crate::transport::{ByteStream, Http, Native, parse_json_error};
use crate::{RelayEvent, RelayStream, Reply, TimeoutPhase, UpstreamClients, UpstreamError};

pub(crate) struct AnthropicBackend {
    http: Http,
    messages_url: reqwest::Url,
    models_url: reqwest::Url,
    headers: HeaderMap,
    upstream_model: String,
    policy: UnsupportedParams,
}

impl AnthropicBackend {
    pub(crate) fn new(
        config: &DeploymentConfig,
        clients: &UpstreamClients,
    ) -> Result<AnthropicBackend, UpstreamError> {
        let base = config
            .api_base
            .clone()
            .ok_or_else(|| UpstreamError::Misconfigured("no api_base".to_owned()))?;
        let endpoint = |tail: &[&str]| -> Result<reqwest::Url, UpstreamError> {
            let mut url = base.clone();
            url.path_segments_mut()
                .map_err(|()| {
                    UpstreamError::Misconfigured("api_base cannot take a path".to_owned())
                })?
                .pop_if_empty()
                .extend(tail);
            Ok(url)
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(anthropic::API_VERSION),
        );
        if let Some(key) = &config.api_key {
            let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
                UpstreamError::Misconfigured(
                    "the API key holds characters not allowed in a header".to_owned(),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), value);
        }
        for (name, secret) in &config.headers {
            let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
                UpstreamError::Misconfigured(format!("header {name} has an invalid value"))
            })?;
            value.set_sensitive(true);
            headers.insert(name.clone(), value);
        }
        Ok(AnthropicBackend {
            http: Http::new(clients, config.timeouts, parse_json_error)?,
            messages_url: endpoint(&["v1", "messages"])?,
            models_url: endpoint(&["v1", "models"])?,
            headers,
            upstream_model: config.upstream_model.clone(),
            policy: config.unsupported_params,
        })
    }

    pub(crate) fn headroom(&self) -> Option<f64> {
        self.http.headroom()
    }

    pub(crate) async fn probe_models(&self) -> Result<(), UpstreamError> {
        let request = self
            .http
            .client(&crate::CallOptions::default())
            .get(self.models_url.clone())
            .headers(self.headers.clone());
        self.http.check(request).await
    }

    pub(crate) async fn chat(&self, call: &ChatCall<'_>) -> Result<Reply, UpstreamError> {
        let idle = call
            .options
            .stream_idle
            .unwrap_or(self.http.timeouts.stream_idle);
        if let ClientRequest::Anthropic(request) = call.request {
            return self.pass_through(call, request, idle).await;
        }
        let canonical = call.canonical()?;
        let encoded = anthropic::encode_request(canonical, &self.upstream_model);
        let dropped = check_unsupported(encoded.unsupported, self.policy, &self.upstream_model)?;
        match self.send(call, encoded.body, canonical.stream).await? {
            Native::Whole(body) => {
                let response = anthropic::decode_response(&body)
                    .map_err(|error| UpstreamError::InvalidResponse(error.0))?;
                let usage = response.usage;
                Ok(Reply::Complete {
                    body: call.response(response, &self.upstream_model),
                    usage,
                    dropped,
                })
            }
            Native::Stream(body) => Ok(Reply::Stream {
                events: relay_translated(
                    body,
                    Box::new(EventDecoder::new()),
                    call.encoder(&self.upstream_model),
                    idle,
                ),
                dropped,
            }),
        }
    }

    async fn pass_through(
        &self,
        call: &ChatCall<'_>,
        request: &MessagesRequest<'_>,
        idle: Duration,
    ) -> Result<Reply, UpstreamError> {
        let body = request.encode(&self.upstream_model);
        match self.send(call, body, request.stream).await? {
            Native::Whole(body) => {
                let usage = anthropic::check_message(&body)
                    .map_err(|error| UpstreamError::InvalidResponse(error.0))?;
                Ok(Reply::Complete {
                    body,
                    usage,
                    dropped: Vec::new(),
                })
            }
            Native::Stream(body) => Ok(Reply::Stream {
                events: relay_events(body, idle),
                dropped: Vec::new(),
            }),
        }
    }

    async fn send(
        &self,
        call: &ChatCall<'_>,
        body: Vec<u8>,
        stream: bool,
    ) -> Result<Native, UpstreamError> {
        let mut request = self
            .http
            .client(&call.options)
            .post(self.messages_url.clone())
            .headers(self.headers.clone())
            .body(body);
        if let Some(beta) = &call.anthropic_beta {
            request = request.header("anthropic-beta", beta.clone());
        }
        if stream {
            request = request.header(header::ACCEPT, "text/event-stream");
            self.http
                .stream(request, "text/event-stream")
                .await
                .map(Native::Stream)
        } else {
            self.http.whole(request).await.map(Native::Whole)
        }
    }
}

struct PassThrough {
    body: ByteStream,
    sse: SseDecoder,
    decoder: EventDecoder,
    events: Vec<SseEvent>,
    parsed: Vec<StreamEvent>,
    queue: VecDeque<RelayEvent>,
    idle_timeout: Duration,
    usage: Usage,
    finished: bool,
}

/// Relays Anthropic's events unchanged, reading each on the way for its
/// usage, errors and end. An event the gateway does not know ends the
/// stream with an error rather than pass unaccounted.
fn relay_events(body: ByteStream, idle_timeout: Duration) -> RelayStream {
    let state = PassThrough {
        body,
        sse: SseDecoder::default(),
        decoder: EventDecoder::relaying(),
        events: Vec::new(),
        parsed: Vec::new(),
        queue: VecDeque::new(),
        idle_timeout,
        usage: Usage::default(),
        finished: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            loop {
                if let Some(event) = state.queue.pop_front() {
                    return Some((event, state));
                }
                if state.finished {
                    return None;
                }
                state.pull().await;
            }
        },
    ))
}

impl PassThrough {
    async fn pull(&mut self) {
        match tokio::time::timeout(self.idle_timeout, self.body.next()).await {
            Err(_) => self.fail(UpstreamError::Timeout {
                phase: TimeoutPhase::StreamIdle,
            }),
            Ok(Some(Err(error))) => self.fail(error),
            Ok(Some(Ok(bytes))) => {
                if let Err(error) = self.sse.feed(&bytes, &mut self.events) {
                    self.fail(UpstreamError::InvalidResponse(format!(
                        "broken event stream: {error}"
                    )));
                    return;
                }
                let events = std::mem::take(&mut self.events);
                for event in &events {
                    if self.finished {
                        break;
                    }
                    self.relay(event);
                }
                self.events = events;
                self.events.clear();
            }
            Ok(None) => {
                let _ = self.sse.finish(&mut self.events);
                let events = std::mem::take(&mut self.events);
                for event in &events {
                    if !self.finished {
                        self.relay(event);
                    }
                }
                if !self.finished {
                    self.fail(UpstreamError::InvalidResponse(
                        "the upstream closed the stream before `message_stop`".to_owned(),
                    ));
                }
            }
        }
    }

    fn relay(&mut self, event: &SseEvent) {
        if event.data.trim().is_empty() {
            return;
        }
        if let Err(error) = self.decoder.event(&event.data, &mut self.parsed) {
            self.fail(match error {
                StreamError::Invalid(message) => UpstreamError::InvalidResponse(message),
                StreamError::Reported(body) => UpstreamError::InStream { body },
            });
            return;
        }
        let mut content = false;
        for parsed in self.parsed.drain(..) {
            content |= parsed.is_content();
            if let StreamEvent::Usage { usage, .. } = parsed {
                canon::merge_usage(&mut self.usage, &usage);
                self.queue.push_back(RelayEvent::Usage(self.usage));
            }
        }
        let mut frame = Vec::with_capacity(event.data.len() + 32);
        if let Some(name) = &event.event {
            frame.extend_from_slice(b"event: ");
            frame.extend_from_slice(name.as_bytes());
            frame.push(b'\n');
        }
        frame.extend_from_slice(&switchboard_dialects::sse::frame_data(
            event.data.as_bytes(),
        ));
        self.queue.push_back(RelayEvent::Data {
            frame: Bytes::from(frame),
            content,
        });
        if self.decoder.is_done() {
            self.queue.push_back(RelayEvent::Done);
            self.finished = true;
        }
    }

    fn fail(&mut self, error: UpstreamError) {
        self.queue.push_back(RelayEvent::Failed(error));
        self.finished = true;
    }
}
