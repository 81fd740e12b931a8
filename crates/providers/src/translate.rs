//! Requests that cross dialects: a client speaking one API served by a
//! deployment speaking another. The client's request is read once into the
//! internal model (`canon`), written in the deployment's dialect, and the
//! answer is read back into the internal model and written in the client's.
//! Streams are translated event by event as they arrive.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderValue;
use switchboard_config::UnsupportedParams;
use switchboard_core::Usage;
use switchboard_dialects::anthropic::{self, MessagesRequest};
use switchboard_dialects::canon::{
    self, ChatResponse, Frame, StreamDecoder, StreamEncoder, StreamError, StreamEvent, Unsupported,
};
use switchboard_dialects::openai::{self, ChatRequest};

use crate::transport::ByteStream;
use crate::{CallOptions, RelayEvent, RelayStream, TimeoutPhase, UpstreamError};

/// The dialect a client spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

/// A client's checked chat request, in its own dialect.
#[derive(Debug, Clone, Copy)]
pub enum ClientRequest<'a> {
    OpenAi(&'a ChatRequest<'a>),
    Anthropic(&'a MessagesRequest<'a>),
}

impl ClientRequest<'_> {
    pub fn model(&self) -> &str {
        match self {
            ClientRequest::OpenAi(request) => &request.model,
            ClientRequest::Anthropic(request) => &request.model,
        }
    }

    /// The request's top-level fields as the client sent them.
    pub fn fields(&self) -> &openai::RequestFields<'_> {
        match self {
            ClientRequest::OpenAi(request) => &request.fields,
            ClientRequest::Anthropic(request) => &request.fields,
        }
    }
}

/// One chat request on its way to whichever deployments the router picks.
pub struct ChatCall<'a> {
    pub request: ClientRequest<'a>,
    pub options: CallOptions,
    /// The client's `anthropic-beta` header, passed on to Anthropic
    /// upstreams only.
    pub anthropic_beta: Option<HeaderValue>,
    canonical: OnceLock<Result<canon::ChatRequest, UpstreamError>>,
}

impl<'a> ChatCall<'a> {
    pub fn new(request: ClientRequest<'a>, options: CallOptions) -> ChatCall<'a> {
        ChatCall {
            request,
            options,
            anthropic_beta: None,
            canonical: OnceLock::new(),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self.request {
            ClientRequest::OpenAi(_) => Dialect::OpenAi,
            ClientRequest::Anthropic(_) => Dialect::Anthropic,
        }
    }

    pub fn stream(&self) -> bool {
        match self.request {
            ClientRequest::OpenAi(request) => request.stream,
            ClientRequest::Anthropic(request) => request.stream,
        }
    }

    /// The request in the internal model, read on first use and shared by
    /// every attempt.
    pub(crate) fn canonical(&self) -> Result<&canon::ChatRequest, UpstreamError> {
        self.canonical
            .get_or_init(|| {
                let read = match self.request {
                    ClientRequest::OpenAi(request) => {
                        openai::canonical::request_to_canonical(request)
                    }
                    ClientRequest::Anthropic(request) => anthropic::request_to_canonical(request),
                };
                read.map_err(|error| UpstreamError::Untranslatable {
                    message: error.message,
                    param: error.param,
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A writer of the client's stream events.
    pub(crate) fn encoder(&self, model: &str) -> Box<dyn StreamEncoder> {
        let now = unix_seconds();
        match self.request {
            ClientRequest::OpenAi(request) => Box::new(openai::canonical::ChunkEncoder::new(
                model,
                now,
                request.client_wants_usage,
            )),
            ClientRequest::Anthropic(_) => Box::new(anthropic::EventEncoder::new(
                model,
                &format!("msg_{}", fresh_id()),
            )),
        }
    }

    /// A whole answer in the client's dialect.
    pub(crate) fn response(&self, mut response: ChatResponse, model: &str) -> Bytes {
        if response.model.is_empty() {
            response.model = model.to_owned();
        }
        Bytes::from(match self.request {
            ClientRequest::OpenAi(_) => {
                if response.id.is_empty() {
                    response.id = format!("chatcmpl-{}", fresh_id());
                }
                openai::canonical::encode_response(&response, unix_seconds())
            }
            ClientRequest::Anthropic(_) => {
                if response.id.is_empty() {
                    response.id = format!("msg_{}", fresh_id());
                }
                anthropic::encode_response(&response)
            }
        })
    }
}

/// Applies a deployment's policy to the parameters its dialect could not
/// carry: refuse the request naming them, or name them as dropped.
pub(crate) fn check_unsupported(
    unsupported: Vec<Unsupported>,
    policy: UnsupportedParams,
    model: &str,
) -> Result<Vec<String>, UpstreamError> {
    let mut names: Vec<String> = unsupported.into_iter().map(|name| name.0).collect();
    names.dedup();
    if names.is_empty() || policy == UnsupportedParams::Drop {
        return Ok(names);
    }
    Err(UpstreamError::Unsupported {
        params: names,
        model: model.to_owned(),
    })
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A fresh identifier for answers whose upstream gave none.
fn fresh_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    let draw = switchboard_core::mix::splitmix64(nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{draw:016x}")
}

fn stream_error(error: StreamError) -> UpstreamError {
    match error {
        StreamError::Invalid(message) => UpstreamError::InvalidResponse(message),
        StreamError::Reported(body) => UpstreamError::InStream { body },
    }
}

struct Translation {
    body: ByteStream,
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    idle_timeout: Duration,
    events: Vec<StreamEvent>,
    frames: Vec<Frame>,
    queue: VecDeque<RelayEvent>,
    usage: Usage,
    finished: bool,
}

/// Relays an upstream stream in another dialect: bytes are decoded into
/// stream events as they arrive and written out as the client's frames.
/// The upstream is read to its end; a stream that ends before its own end
/// marker, breaks, or goes silent for the idle timeout ends with `Failed`.
pub(crate) fn relay_translated(
    body: ByteStream,
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    idle_timeout: Duration,
) -> RelayStream {
    let state = Translation {
        body,
        decoder,
        encoder,
        idle_timeout,
        events: Vec::new(),
        frames: Vec::new(),
        queue: VecDeque::new(),
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

impl Translation {
    async fn pull(&mut self) {
        match tokio::time::timeout(self.idle_timeout, self.body.next()).await {
            Err(_) if self.decoder.is_done() => self.end(),
            Err(_) => self.fail(UpstreamError::Timeout {
                phase: TimeoutPhase::StreamIdle,
            }),
            Ok(Some(Err(error))) if self.decoder.is_done() => {
                tracing::debug!(%error, "the upstream's connection broke after its stream ended");
                self.end();
            }
            Ok(Some(Err(error))) => self.fail(error),
            Ok(Some(Ok(bytes))) => {
                let fed = self.decoder.feed(&bytes, &mut self.events);
                self.translate();
                if let Err(error) = fed {
                    self.fail(stream_error(error));
                }
            }
            Ok(None) if self.decoder.is_done() => self.end(),
            Ok(None) => self.fail(UpstreamError::InvalidResponse(
                "the upstream closed the stream before its end marker".to_owned(),
            )),
        }
    }

    fn translate(&mut self) {
        for event in self.events.drain(..) {
            if let StreamEvent::Usage { usage, .. } = &event {
                canon::merge_usage(&mut self.usage, usage);
                self.queue.push_back(RelayEvent::Usage(self.usage));
            }
            self.encoder.event(event, &mut self.frames);
        }
        for frame in self.frames.drain(..) {
            self.queue.push_back(RelayEvent::Data {
                frame: Bytes::from(frame.bytes),
                content: frame.content,
            });
        }
    }

    fn end(&mut self) {
        self.encoder.finish(&mut self.frames);
        self.translate();
        self.queue.push_back(RelayEvent::Done);
        self.finished = true;
    }

    fn fail(&mut self, error: UpstreamError) {
        self.queue.push_back(RelayEvent::Failed(error));
        self.finished = true;
    }
}

/// The OpenAI stream an in-process source (the simulator) produced, as the
/// bytes an upstream would have sent, for translation.
pub(crate) fn relay_as_bytes(events: RelayStream) -> ByteStream {
    events
        .filter_map(|event| async move {
            match event {
                RelayEvent::Data { frame, .. } => Some(Ok(frame)),
                RelayEvent::Done => Some(Ok(Bytes::from_static(b"data: [DONE]\n\n"))),
                RelayEvent::Usage(_) => None,
                RelayEvent::Failed(error) => Some(Err(error)),
            }
        })
        .boxed()
}
