//! The one internal model of a conversation that every dialect converts to
//! and from, so that N wire formats need N adapters rather than N×N.
//!
//! It holds what the gateway can translate faithfully: roles and system
//! prompts, text, image, tool-call, tool-result and reasoning parts, tool
//! definitions and choice, structured output, sampling parameters, finish
//! reasons and usage. A field a source dialect has and this model does not
//! is kept by name in `ChatRequest::unmapped`, so that a target which cannot
//! honour it can refuse the request naming it (or drop it, and say so),
//! rather than lose it silently.
//!
//! Streams are modelled as `StreamEvent`s: each upstream decoder turns its
//! dialect's stream into these, and each client encoder turns these into
//! its dialect's frames.

use serde_json::Value;
use switchboard_core::Usage;

/// A chat request, whatever dialect it arrived in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    /// The conversation, system prompts included, in order.
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// `false` forbids more than one tool call per turn.
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    /// An end-user identifier for the provider's abuse monitoring.
    pub user: Option<String>,
    pub reasoning: Option<Reasoning>,
    pub stream: bool,
    /// The client asked to be told the usage at the end of a stream (an
    /// OpenAI client's `stream_options.include_usage`).
    pub stream_usage: bool,
    /// Fields of the source request this model does not hold, by their
    /// name in the source dialect, with their values.
    pub unmapped: Vec<(String, Value)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions from the application (OpenAI's `system` and
    /// `developer`, Anthropic's `system`, Gemini's `systemInstruction`).
    System,
    User,
    Assistant,
    /// Results of tool calls; its parts are `Part::ToolResult`.
    Tool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
    /// A participant name (OpenAI's `name`), where the dialect has one.
    pub name: Option<String>,
}

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            parts: vec![Part::text(text)],
            name: None,
        }
    }

    /// The message's text parts, concatenated.
    pub fn joined_text(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            if let Part::Text { text, .. } = part {
                out.push_str(text);
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text {
        text: String,
        /// A prompt-caching marker (Anthropic's `cache_control`), kept as sent.
        cache: Option<Value>,
    },
    Image {
        source: ImageSource,
        /// OpenAI's `detail` (`low`, `high`, `auto`).
        detail: Option<String>,
        cache: Option<Value>,
    },
    /// A call the assistant made.
    ToolCall {
        id: String,
        name: String,
        /// The arguments as JSON text, as the model produced them.
        arguments: String,
        cache: Option<Value>,
    },
    /// The answer to a tool call.
    ToolResult {
        call_id: String,
        /// The tool's name, where the dialect says it (Gemini needs it).
        name: Option<String>,
        /// Text and image parts.
        content: Vec<Part>,
        is_error: bool,
        cache: Option<Value>,
    },
    /// Visible reasoning ("thinking") and the signature that lets it be
    /// sent back.
    Reasoning {
        text: String,
        signature: Option<String>,
    },
    /// Reasoning the provider returned encrypted.
    RedactedReasoning { data: String },
}

impl Part {
    pub fn text(text: impl Into<String>) -> Part {
        Part::Text {
            text: text.into(),
            cache: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Url(String),
    Base64 { media_type: String, data: String },
}

impl ImageSource {
    /// Reads a `data:` URL into its media type and base64 data.
    pub fn from_url(url: &str) -> ImageSource {
        if let Some(rest) = url.strip_prefix("data:")
            && let Some((meta, data)) = rest.split_once(',')
            && let Some(media_type) = meta.strip_suffix(";base64")
        {
            return ImageSource::Base64 {
                media_type: media_type.to_owned(),
                data: data.to_owned(),
            };
        }
        ImageSource::Url(url.to_owned())
    }

    /// The image as a URL, `data:` for inline images.
    pub fn to_url(&self) -> String {
        match self {
            ImageSource::Url(url) => url.clone(),
            ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of the arguments.
    pub parameters: Value,
    pub strict: Option<bool>,
    pub cache: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    /// No tool may be called.
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Tool(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        name: String,
        schema: Value,
        strict: Option<bool>,
        description: Option<String>,
    },
}

/// How much the model may think before answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reasoning {
    /// OpenAI's `reasoning_effort` (`minimal`, `low`, `medium`, `high`).
    pub effort: Option<String>,
    /// Anthropic's and Gemini's thinking budget in tokens.
    pub budget_tokens: Option<u32>,
    /// `false` turns thinking off where the model would think by default.
    pub enabled: bool,
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It finished its turn.
    Stop,
    /// It hit a stop sequence (named in the response).
    StopSequence,
    /// It hit the token limit.
    Length,
    /// It called tools and waits for their results.
    ToolCalls,
    /// A safety system blocked or cut the answer.
    ContentFilter,
    /// It declined to answer (Anthropic's `refusal`).
    Refusal,
    /// It paused a long turn (Anthropic's `pause_turn`).
    Pause,
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    pub model: String,
    /// Text, reasoning and tool calls, in order.
    pub parts: Vec<Part>,
    pub finish: Option<FinishReason>,
    pub stop_sequence: Option<String>,
    /// `input_tokens` counts every input token, those read from and
    /// written to a prompt cache included (OpenAI's convention; Anthropic's
    /// and Bedrock's `input_tokens` leave both out, and their adapters add
    /// them back).
    pub usage: Usage,
    /// Input tokens written to the provider's prompt cache (Anthropic,
    /// Bedrock). Always equal to `usage.cache_write_tokens`, which is what
    /// billing reads; kept here for the encoders.
    pub cache_write_tokens: Option<u64>,
    /// Unix seconds, when the upstream said.
    pub created: Option<u64>,
}

/// One event of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The answer begins.
    Start {
        id: String,
        model: String,
    },
    TextDelta(String),
    ReasoningDelta(String),
    /// The signature closing a reasoning block.
    ReasoningSignature(String),
    RedactedReasoning(String),
    /// A tool call begins. `index` numbers the answer's tool calls from 0.
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    /// A fragment of a tool call's JSON arguments.
    ToolCallDelta {
        index: u32,
        arguments: String,
    },
    Finish {
        reason: FinishReason,
        stop_sequence: Option<String>,
    },
    /// Token usage so far; later reports replace earlier ones field by field.
    /// `cache_write_tokens` always equals `usage.cache_write_tokens`.
    Usage {
        usage: Usage,
        cache_write_tokens: Option<u64>,
    },
}

impl StreamEvent {
    /// True when the event carries part of the answer (anything but the
    /// start and usage), which is what releases a held stream opening.
    pub fn is_content(&self) -> bool {
        !matches!(self, StreamEvent::Start { .. } | StreamEvent::Usage { .. })
    }
}

/// An upstream answer that is not its dialect's API object.
pub use crate::openai::InvalidResponse;
/// An error the upstream reported, in any dialect.
pub use crate::openai::UpstreamErrorBody as ErrorReport;

/// What went wrong reading an upstream's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamError {
    /// The bytes are not the dialect's stream format.
    Invalid(String),
    /// The upstream reported an error inside the stream.
    Reported(ErrorReport),
}

/// Turns one upstream dialect's stream bytes into stream events.
pub trait StreamDecoder: Send {
    /// Feeds the next bytes read; completed events are appended to `out`.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), StreamError>;
    /// True once the stream's own end marker has been read.
    fn is_done(&self) -> bool;
    /// True once nothing more is expected: the answer can be closed without
    /// waiting for the upstream to close its connection. (Bedrock sends its
    /// usage after its end marker.)
    fn is_final(&self) -> bool {
        self.is_done()
    }
}

/// One frame for the client: SSE bytes ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// It carries part of the answer (see `StreamEvent::is_content`).
    pub content: bool,
}

/// Turns stream events into one client dialect's frames.
pub trait StreamEncoder: Send {
    fn event(&mut self, event: StreamEvent, out: &mut Vec<Frame>);
    /// The upstream stream ended well: writes whatever closes the answer
    /// (not the `[DONE]` marker, which the server writes).
    fn finish(&mut self, out: &mut Vec<Frame>);
}

/// Merges a usage report into what is known: fields the new report has
/// replace the old ones.
pub fn merge_usage(known: &mut Usage, report: &Usage) {
    if report.input_tokens.is_some() {
        known.input_tokens = report.input_tokens;
    }
    if report.output_tokens.is_some() {
        known.output_tokens = report.output_tokens;
    }
    if report.cached_input_tokens.is_some() {
        known.cached_input_tokens = report.cached_input_tokens;
    }
    if report.reasoning_tokens.is_some() {
        known.reasoning_tokens = report.reasoning_tokens;
    }
    if report.cache_write_tokens.is_some() {
        known.cache_write_tokens = report.cache_write_tokens;
    }
}

/// A parameter the target cannot honour, named as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// What encoding a request for a target produced: the body, and the
/// parameters it could not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub unsupported: Vec<Unsupported>,
}
