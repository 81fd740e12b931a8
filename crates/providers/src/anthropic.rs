//! Anthropic's Messages API upstream: `{api_base}/v1/messages`, `x-api-key`,
//! `anthropic-version`.
//!
//! An Anthropic client's request passes through with only its model
//! replaced, and the answer (whole or streamed) is relayed as Anthropic sent
//! it, once checked and its usage read. A request from a client of another
//! dialect is translated through the internal model both ways.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use std::time::Duration;
use switchboard_config::{DeploymentConfig, UnsupportedParams};
use switchboard_core::{ResponseInfo, Usage};
use switchboard_dialects::anthropic::{self, EventDecoder, MessagesRequest};
use switchboard_dialects::canon::{self, StreamDecoder, StreamError, StreamEvent};
use switchboard_dialects::sse::{SseDecoder, SseEvent};

use crate::relay::{Outbox, Relay, relay};
use crate::translate::{ANTHROPIC, ChatCall, ClientRequest, check_unsupported, translated_reply};
use crate::transport::{
    ByteStream, Http, Native, deployment_headers, endpoint_uri, parse_json_error, upstream_request,
};
use crate::{RelayEvent, RelayStream, Reply, UpstreamClients, UpstreamError};

pub(crate) struct AnthropicBackend {
    http: Http,
    messages_url: Uri,
    models_url: Uri,
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
        let endpoint = |tail: &[&str]| -> Result<Uri, UpstreamError> {
            let mut url = base.clone();
            url.path_segments_mut()
                .map_err(|()| {
                    UpstreamError::Misconfigured("api_base cannot take a path".to_owned())
                })?
                .pop_if_empty()
                .extend(tail);
            endpoint_uri(&url)
        };
        let auth = config.api_key.as_ref().map(|key| {
            (
                HeaderName::from_static("x-api-key"),
                key.expose().to_owned(),
            )
        });
        let mut headers = deployment_headers(config, auth)?;
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(anthropic::API_VERSION),
        );
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
        self.http.check(&self.models_url, &self.headers).await
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
        let dropped = check_unsupported(
            encoded.unsupported,
            self.policy,
            &self.upstream_model,
            call.dialect(),
        )?;
        let native = self.send(call, encoded.body, canonical.stream).await?;
        translated_reply(
            call,
            native,
            &ANTHROPIC,
            &self.upstream_model,
            idle,
            dropped,
        )
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
                let (usage, info) = anthropic::check_message(&body)
                    .map_err(|error| UpstreamError::InvalidResponse(error.0))?;
                Ok(Reply::Complete {
                    body,
                    usage,
                    info,
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
        let mut request = upstream_request(Method::POST, &self.messages_url, &self.headers, body);
        if let Some(beta) = &call.anthropic_beta {
            request
                .headers_mut()
                .insert(HeaderName::from_static("anthropic-beta"), beta.clone());
        }
        if stream {
            request.headers_mut().insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
            self.http
                .stream(request, &call.options, "text/event-stream")
                .await
                .map(Native::Stream)
        } else {
            self.http
                .whole(request, &call.options)
                .await
                .map(Native::Whole)
        }
    }
}

struct PassThrough {
    sse: SseDecoder,
    decoder: EventDecoder,
    events: Vec<SseEvent>,
    parsed: Vec<StreamEvent>,
    usage: Usage,
    info: ResponseInfo,
}

/// Relays Anthropic's events unchanged, reading each on the way for its
/// usage, errors and end. An event type the gateway does not know ends the
/// stream with an error rather than pass unaccounted.
fn relay_events(body: ByteStream, idle_timeout: Duration) -> RelayStream {
    relay(
        body,
        idle_timeout,
        PassThrough {
            sse: SseDecoder::default(),
            decoder: EventDecoder::relaying(),
            events: Vec::new(),
            parsed: Vec::new(),
            usage: Usage::default(),
            info: ResponseInfo::default(),
        },
    )
}

impl Relay for PassThrough {
    fn bytes(&mut self, bytes: &[u8], out: &mut Outbox) {
        if let Err(error) = self.sse.feed(bytes, &mut self.events) {
            out.fail(UpstreamError::InvalidResponse(format!(
                "broken event stream: {error}"
            )));
            return;
        }
        self.relay_pending(out);
    }

    fn end(&mut self, out: &mut Outbox) {
        let _ = self.sse.finish(&mut self.events);
        self.relay_pending(out);
        if !out.finished() {
            out.fail(UpstreamError::InvalidResponse(
                "the upstream closed the stream before `message_stop`".to_owned(),
            ));
        }
    }
}

impl PassThrough {
    fn relay_pending(&mut self, out: &mut Outbox) {
        let events = std::mem::take(&mut self.events);
        for event in &events {
            if out.finished() {
                break;
            }
            self.relay_one(event, out);
        }
        self.events = events;
        self.events.clear();
    }

    fn relay_one(&mut self, event: &SseEvent, out: &mut Outbox) {
        if event.data.trim().is_empty() {
            return;
        }
        if let Err(error) = self.decoder.event(&event.data, &mut self.parsed) {
            out.fail(match error {
                StreamError::Invalid(message) => UpstreamError::InvalidResponse(message),
                StreamError::Reported(body) => UpstreamError::InStream { body },
            });
            return;
        }
        let mut content = false;
        for parsed in self.parsed.drain(..) {
            content |= parsed.is_content();
            match parsed {
                StreamEvent::Usage { usage, .. } => {
                    canon::merge_usage(&mut self.usage, &usage);
                    out.push(RelayEvent::Usage(self.usage));
                }
                StreamEvent::Start { id, model } => {
                    self.info.note_id(&id);
                    self.info.note_model(&model);
                }
                StreamEvent::Finish { reason, .. } => {
                    self.info
                        .push_finish_reason(anthropic::finish_reason_name(reason));
                }
                _ => {}
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
        out.push(RelayEvent::Data {
            frame: Bytes::from(frame),
            content,
        });
        if self.decoder.is_done() {
            out.done_with(std::mem::take(&mut self.info));
        }
    }
}
