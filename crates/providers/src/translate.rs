//! Requests that cross dialects: a client speaking one API served by a
//! deployment speaking another. The client's request is read once into the
//! internal model (`canon`), written in the deployment's dialect, and the
//! answer is read back into the internal model and written in the client's.
//! Streams are translated event by event as they arrive.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderValue;
use switchboard_config::UnsupportedParams;
use switchboard_core::{ResponseInfo, Usage};
use switchboard_dialects::anthropic::{self, MessagesRequest};
use switchboard_dialects::canon::{
    self, ChatResponse, FinishReason, Frame, InvalidResponse, StreamDecoder, StreamEncoder,
    StreamError, StreamEvent, Unsupported,
};
use switchboard_dialects::openai::{self, ChatRequest};

use crate::relay::{Outbox, Relay, relay};
use crate::transport::{ByteStream, Native};
use crate::{CallOptions, RelayEvent, RelayStream, Reply, UpstreamError};

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

    /// The client's API's name for a finish reason.
    pub(crate) fn finish_name(&self) -> fn(FinishReason) -> &'static str {
        match self.request {
            ClientRequest::OpenAi(_) => openai::canonical::finish_reason_name,
            ClientRequest::Anthropic(_) => anthropic::finish_reason_name,
        }
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

/// How to read one upstream dialect's answers: whole, and streamed.
pub(crate) struct Reader {
    pub decode: fn(&[u8]) -> Result<ChatResponse, InvalidResponse>,
    pub stream: fn() -> Box<dyn StreamDecoder>,
}

pub(crate) const OPENAI: Reader = Reader {
    decode: openai::canonical::decode_response,
    stream: || Box::new(openai::canonical::ChunkDecoder::new()),
};
pub(crate) const ANTHROPIC: Reader = Reader {
    decode: anthropic::decode_response,
    stream: || Box::new(anthropic::EventDecoder::new()),
};
pub(crate) const GEMINI: Reader = Reader {
    decode: switchboard_dialects::gemini::decode_response,
    stream: || Box::new(switchboard_dialects::gemini::StreamDecoder::new()),
};
pub(crate) const BEDROCK: Reader = Reader {
    decode: switchboard_dialects::bedrock::decode_response,
    stream: || Box::new(switchboard_dialects::bedrock::StreamDecoder::new()),
};

/// The answer to a translated request, in the client's dialect: a whole
/// answer decoded and re-encoded, or a stream translated as it arrives.
/// `model` names the answer when the upstream's does not.
pub(crate) fn translated_reply(
    call: &ChatCall<'_>,
    native: Native,
    reader: &Reader,
    model: &str,
    idle: Duration,
    dropped: Vec<String>,
) -> Result<Reply, UpstreamError> {
    match native {
        Native::Whole(body) => {
            let response =
                (reader.decode)(&body).map_err(|error| UpstreamError::InvalidResponse(error.0))?;
            let usage = response.usage;
            // As the upstream named its answer; the reason as the client
            // reads it.
            let mut info = ResponseInfo::default();
            info.note_id(&response.id);
            info.note_model(&response.model);
            if let Some(reason) = response.finish {
                info.push_finish_reason((call.finish_name())(reason));
            }
            Ok(Reply::Complete {
                body: call.response(response, model),
                usage,
                info,
                dropped,
            })
        }
        Native::Stream(body) => Ok(Reply::Stream {
            events: relay_translated(
                body,
                (reader.stream)(),
                call.encoder(model),
                call.finish_name(),
                idle,
            ),
            dropped,
        }),
    }
}

/// Applies a deployment's policy to the parameters its dialect could not
/// carry: refuse the request naming them, or name them as dropped. Names
/// are those of the client's own API.
pub(crate) fn check_unsupported(
    unsupported: Vec<Unsupported>,
    policy: UnsupportedParams,
    model: &str,
    dialect: Dialect,
) -> Result<Vec<String>, UpstreamError> {
    let mut names: Vec<String> = Vec::with_capacity(unsupported.len());
    for Unsupported(name) in unsupported {
        let name = client_name(dialect, name);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() || policy == UnsupportedParams::Drop {
        return Ok(names);
    }
    Err(UpstreamError::Unsupported {
        params: names,
        model: model.to_owned(),
    })
}

/// The internal model names parameters as OpenAI's API does; an Anthropic
/// client is told the name its own API gives them.
fn client_name(dialect: Dialect, name: String) -> String {
    if dialect == Dialect::OpenAi {
        return name;
    }
    let anthropic = match name.as_str() {
        "response_format" => "output_config.format",
        "parallel_tool_calls" => "tool_choice.disable_parallel_tool_use",
        "user" => "metadata.user_id",
        "reasoning_effort" | "reasoning" | "thinking.budget_tokens" => "thinking",
        "stop" => "stop_sequences",
        "image_url" => "image (url source)",
        "name" | "messages[].name" => "messages[].name",
        "tool_calls.function.arguments" => "tool_use.input",
        "tool_call_id" => "tool_result.tool_use_id",
        "detail" => "image detail",
        _ => return name,
    };
    anthropic.to_owned()
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
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    events: Vec<StreamEvent>,
    frames: Vec<Frame>,
    usage: Usage,
    /// The upstream's id and model, and finish reasons as the client's API
    /// names them (`finish_name`).
    info: ResponseInfo,
    finish_name: fn(FinishReason) -> &'static str,
}

/// Relays an upstream stream in another dialect: bytes are decoded into
/// stream events as they arrive and written out as the client's frames.
/// The upstream is read to its end; a stream that ends before its own end
/// marker, breaks, or goes silent for the idle timeout ends with `Failed`.
pub(crate) fn relay_translated(
    body: ByteStream,
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    finish_name: fn(FinishReason) -> &'static str,
    idle_timeout: Duration,
) -> RelayStream {
    relay(
        body,
        idle_timeout,
        Translation {
            decoder,
            encoder,
            events: Vec::new(),
            frames: Vec::new(),
            usage: Usage::default(),
            info: ResponseInfo::default(),
            finish_name,
        },
    )
}

impl Relay for Translation {
    fn bytes(&mut self, bytes: &[u8], out: &mut Outbox) {
        let fed = self.decoder.feed(bytes, &mut self.events);
        self.translate(out);
        if let Err(error) = fed {
            out.fail(stream_error(error));
        }
    }

    fn end(&mut self, out: &mut Outbox) {
        if !self.decoder.is_done() {
            out.fail(UpstreamError::InvalidResponse(
                "the upstream closed the stream before its end marker".to_owned(),
            ));
            return;
        }
        self.encoder.finish(&mut self.frames);
        self.translate(out);
        out.done_with(std::mem::take(&mut self.info));
    }

    fn complete(&self) -> bool {
        self.decoder.is_done()
    }

    fn is_final(&self) -> bool {
        self.decoder.is_final()
    }
}

impl Translation {
    fn translate(&mut self, out: &mut Outbox) {
        for event in self.events.drain(..) {
            match &event {
                StreamEvent::Usage { usage, .. } => {
                    canon::merge_usage(&mut self.usage, usage);
                    out.push(RelayEvent::Usage(self.usage));
                }
                StreamEvent::Start { id, model } => {
                    self.info.note_id(id);
                    self.info.note_model(model);
                }
                StreamEvent::Finish { reason, .. } => {
                    self.info.push_finish_reason((self.finish_name)(*reason));
                }
                _ => {}
            }
            self.encoder.event(event, &mut self.frames);
        }
        for frame in self.frames.drain(..) {
            out.push(RelayEvent::Data {
                frame: Bytes::from(frame.bytes),
                content: frame.content,
            });
        }
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
                RelayEvent::Usage(_) | RelayEvent::Info(_) => None,
                RelayEvent::Failed(error) => Some(Err(error)),
            }
        })
        .boxed()
}
