//! Relaying a stream to the client as Server-Sent Events.
//!
//! Each relay event is framed and written as soon as it arrives; nothing is
//! buffered. The stream owns the request's `Trace`: it records time to first
//! token and usage as they pass, and the outcome when it ends. If the client
//! hangs up, the body is dropped, which drops the upstream request (and so
//! cancels it) and records the request as closed by the client. At the
//! shutdown deadline the stream ends with an error event instead of being
//! cut silently.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_core::Outcome;
use switchboard_providers::{Dialect, RelayEvent, RelayStream};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::trace::Trace;

struct Relay {
    events: RelayStream,
    dialect: Dialect,
    trace: Box<Trace>,
    cut: CancellationToken,
    deployment: Arc<str>,
    /// The request's time budget, which a stream may not outlive.
    deadline: Option<tokio::time::Instant>,
    ended: bool,
}

impl Relay {
    /// The next bytes for the client, or `None` when the stream is over.
    async fn next_bytes(&mut self) -> Option<Bytes> {
        while !self.ended {
            let budget = async {
                match self.deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                biased;
                event = self.events.next() => event,
                () = self.cut.cancelled() => {
                    return Some(self.fail(ApiError::shutting_down()));
                }
                () = budget => {
                    return Some(self.fail(ApiError::deadline_exceeded_in_stream()));
                }
            };
            match event {
                Some(RelayEvent::Data { frame, .. }) => {
                    self.trace.mark_first_chunk();
                    if let Some(fill) = &mut self.trace.cache_fill {
                        fill.push(&frame);
                    }
                    if let Some(bodies) = &mut self.trace.bodies {
                        bodies.push_response(&frame);
                    }
                    return Some(frame);
                }
                Some(RelayEvent::Usage(usage)) => self.trace.usage = usage,
                Some(RelayEvent::Info(info)) => self.trace.response = info,
                Some(RelayEvent::Done) => {
                    self.ended = true;
                    // Anthropic's stream ends with its own `message_stop`.
                    let end = match self.dialect {
                        Dialect::OpenAi => Some(Bytes::from_static(b"data: [DONE]\n\n")),
                        Dialect::Anthropic => None,
                    };
                    if let (Some(bodies), Some(end)) = (&mut self.trace.bodies, &end) {
                        bodies.push_response(end);
                    }
                    self.trace.finish(200, Outcome::Success, None);
                    if let Some(mut fill) = self.trace.cache_fill.take() {
                        if let Some(end) = &end {
                            fill.push(end);
                        }
                        fill.commit();
                    }
                    return end;
                }
                Some(RelayEvent::Failed(error)) => {
                    return Some(self.fail(ApiError::from_upstream(&error, &self.deployment)));
                }
                None => {
                    let error = ApiError::from_upstream(
                        &switchboard_providers::UpstreamError::InvalidResponse(
                            "the stream ended without its end marker".to_owned(),
                        ),
                        &self.deployment,
                    );
                    return Some(self.fail(error));
                }
            }
        }
        None
    }

    /// Ends the stream with an error event in the client's dialect, which
    /// its SDK raises as an API error, and records the failure.
    fn fail(&mut self, error: ApiError) -> Bytes {
        self.ended = true;
        self.trace
            .finish(error.status.as_u16(), error.outcome(), Some(error.code));
        error.stream_event(self.dialect)
    }
}

pub(crate) fn sse_response(
    events: RelayStream,
    dialect: Dialect,
    trace: Box<Trace>,
    cut: CancellationToken,
    deployment: &Arc<str>,
    deadline: Option<std::time::Instant>,
) -> Response {
    let relay = Relay {
        events,
        dialect,
        trace,
        cut,
        deployment: deployment.clone(),
        deadline: deadline.map(tokio::time::Instant::from_std),
        ended: false,
    };
    let body = futures_util::stream::unfold(relay, |mut relay| async move {
        let bytes = relay.next_bytes().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(bytes), relay))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // The deployment's name is among the headers the handler adds.
    response
}
