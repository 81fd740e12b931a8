//! Bedrock's Converse API: a `canon::ChatRequest` written as the body of
//! `POST /model/{modelId}/converse` (or `/converse-stream`, whose body is
//! the same), the answer read back into a `canon::ChatResponse`, and
//! Bedrock's error bodies.
//!
//! Shapes follow the Bedrock Runtime API model (botocore's
//! `bedrock-runtime/2023-09-30/service-2.json`) and the Converse API
//! reference. What the request cannot carry is reported as `Unsupported`,
//! never dropped silently:
//!
//! - Bedrock takes images as bytes only, so image URLs are unsupported, and
//!   so are media types other than PNG, JPEG, GIF and WebP.
//! - `top_k` and a thinking budget go in `additionalModelRequestFields`, in
//!   the names Anthropic's models take there (`top_k`, `thinking`). Other
//!   model families may name them differently or not take them at all; the
//!   upstream then answers with a validation error, which is at least not
//!   a silent loss.
//! - Bedrock has no way to forbid tool calls while tools are defined. A
//!   `ToolChoice::None` request is honoured exactly by leaving the tools
//!   out; but Bedrock insists on the tool configuration when the
//!   conversation already holds tool calls or results, and then the tools
//!   stay, the model may call them, and `tool_choice` is reported.
//! - Seeds, frequency and presence penalties, JSON response formats,
//!   `parallel_tool_calls: false`, `user`, participant names, image
//!   `detail`, and reasoning asked for by effort rather than by budget.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use switchboard_core::Usage;

use crate::canon::{
    self, ChatResponse, Encoded, ErrorReport, FinishReason, ImageSource, InvalidResponse, Part,
    ResponseFormat, Role, ToolChoice, Unsupported,
};

// ---------------------------------------------------------------------------
// The request.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    messages: Vec<WireMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<SystemBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inference_config: Option<InferenceConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    additional_model_request_fields: Map<String, Value>,
}

#[derive(Serialize)]
struct WireMessage {
    role: &'static str,
    content: Vec<Block>,
}

/// A content block: a union, written as an object with one member.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Block {
    Text(String),
    Image(ImageBlock),
    ToolUse(ToolUse),
    ToolResult(ToolResult),
    ReasoningContent(ReasoningContent),
    CachePoint(CachePoint),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum SystemBlock {
    Text(String),
    CachePoint(CachePoint),
}

#[derive(Serialize)]
struct ImageBlock {
    format: &'static str,
    source: ImageBytes,
}

/// A blob in Bedrock's JSON protocol is its base64 text.
#[derive(Serialize)]
struct ImageBytes {
    bytes: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse {
    tool_use_id: String,
    name: String,
    input: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolResult {
    tool_use_id: String,
    content: Vec<ToolResultContent>,
    /// Only `error` is written: success is the default, and not every
    /// model accepts the field.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ToolResultContent {
    Text(String),
    Image(ImageBlock),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ReasoningContent {
    ReasoningText {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    RedactedContent(String),
}

#[derive(Serialize)]
struct CachePoint {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig {
    tools: Vec<ToolEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ToolEntry {
    ToolSpec(ToolSpec),
    CachePoint(CachePoint),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: InputSchema,
    /// Written only when asked for: `false` is the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
struct InputSchema {
    json: Value,
}

/// Serialises as `{}`.
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum WireToolChoice {
    Auto(Empty),
    Any(Empty),
    Tool { name: String },
}

/// The parameters a request could not carry, each named once.
#[derive(Default)]
struct Notes(Vec<Unsupported>);

impl Notes {
    fn note(&mut self, name: impl Into<String>) {
        let name = name.into();
        if !self.0.iter().any(|Unsupported(known)| *known == name) {
            self.0.push(Unsupported(name));
        }
    }
}

/// Writes a Converse (or ConverseStream) body. The model goes in the URL
/// and streaming is chosen by the endpoint, so neither is in the body.
pub fn encode_request(request: &canon::ChatRequest) -> Encoded {
    let mut notes = Notes::default();
    let mut system = Vec::new();
    let mut messages: Vec<WireMessage> = Vec::new();
    for message in &request.messages {
        if message.name.is_some() {
            notes.note("name");
        }
        if message.role == Role::System {
            system_blocks(&message.parts, &mut system, &mut notes);
            continue;
        }
        let role = match message.role {
            Role::Assistant => "assistant",
            // Tool results travel in user turns.
            Role::User | Role::Tool | Role::System => "user",
        };
        let mut blocks = Vec::new();
        for part in &message.parts {
            content_blocks(part, &mut blocks, &mut notes);
        }
        if blocks.is_empty() {
            continue;
        }
        // Bedrock wants the roles to alternate; neighbours of one role
        // (a tool result and the user's next words, say) become one turn.
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(WireMessage {
                role,
                content: blocks,
            }),
        }
    }

    let inference_config = InferenceConfig {
        max_tokens: request.max_tokens,
        temperature: request.temperature.filter(|value| value.is_finite()),
        top_p: request.top_p.filter(|value| value.is_finite()),
        stop_sequences: request.stop.clone(),
    };
    let inference_config = (inference_config.max_tokens.is_some()
        || inference_config.temperature.is_some()
        || inference_config.top_p.is_some()
        || !inference_config.stop_sequences.is_empty())
    .then_some(inference_config);

    let tool_config = tool_config(request, &mut notes);

    let mut additional = Map::new();
    if let Some(top_k) = request.top_k {
        additional.insert("top_k".into(), Value::from(top_k));
    }
    if let Some(reasoning) = &request.reasoning
        // Converse's models think only when asked to, so a request that
        // turns thinking off needs nothing written.
        && reasoning.enabled
    {
        match reasoning.budget_tokens {
            Some(budget) => {
                additional.insert(
                    "thinking".into(),
                    serde_json::json!({ "type": "enabled", "budget_tokens": budget }),
                );
            }
            None if reasoning.effort.is_some() => notes.note("reasoning_effort"),
            None => notes.note("reasoning"),
        }
    }

    if request.seed.is_some() {
        notes.note("seed");
    }
    if request.frequency_penalty.is_some() {
        notes.note("frequency_penalty");
    }
    if request.presence_penalty.is_some() {
        notes.note("presence_penalty");
    }
    if matches!(
        request.response_format,
        Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
    ) {
        notes.note("response_format");
    }
    // Parallel calls are what Bedrock's models do anyway; only forbidding
    // them cannot be said.
    if request.parallel_tool_calls == Some(false) {
        notes.note("parallel_tool_calls");
    }
    if request.user.is_some() {
        notes.note("user");
    }
    for (name, _) in &request.unmapped {
        notes.note(name.clone());
    }

    let wire = WireRequest {
        messages,
        system,
        inference_config,
        tool_config,
        additional_model_request_fields: additional,
    };
    Encoded {
        body: serde_json::to_vec(&wire)
            .expect("serialising strings, numbers and values cannot fail"),
        unsupported: notes.0,
    }
}

/// A cache marker becomes a cache point after the block it marks. Its
/// `ttl` (Anthropic's `5m` or `1h`) is kept; Bedrock knows the same values.
fn cache_point(marker: Option<&Value>) -> Option<CachePoint> {
    let marker = marker.filter(|marker| !marker.is_null())?;
    Some(CachePoint {
        kind: "default",
        ttl: marker.get("ttl").and_then(Value::as_str).map(str::to_owned),
    })
}

fn system_blocks(parts: &[Part], system: &mut Vec<SystemBlock>, notes: &mut Notes) {
    for part in parts {
        match part {
            Part::Text { text, cache } => {
                // Bedrock refuses empty text blocks; an empty one says nothing.
                if text.is_empty() {
                    continue;
                }
                system.push(SystemBlock::Text(text.clone()));
                if let Some(point) = cache_point(cache.as_ref()) {
                    system.push(SystemBlock::CachePoint(point));
                }
            }
            other => notes.note(format!("{} in a system message", part_kind(other))),
        }
    }
}

fn part_kind(part: &Part) -> &'static str {
    match part {
        Part::Text { .. } => "text",
        Part::Image { .. } => "image",
        Part::ToolCall { .. } => "tool call",
        Part::ToolResult { .. } => "tool result",
        Part::Reasoning { .. } | Part::RedactedReasoning { .. } => "reasoning",
    }
}

fn image_block(source: &ImageSource, notes: &mut Notes) -> Option<ImageBlock> {
    match source {
        ImageSource::Url(_) => {
            notes.note("image_url");
            None
        }
        ImageSource::Base64 { media_type, data } => {
            let format = match media_type.to_ascii_lowercase().as_str() {
                "image/png" => "png",
                // `image/jpg` is not registered but is common; it means JPEG.
                "image/jpeg" | "image/jpg" => "jpeg",
                "image/gif" => "gif",
                "image/webp" => "webp",
                _ => {
                    notes.note(format!("image media type {media_type}"));
                    return None;
                }
            };
            Some(ImageBlock {
                format,
                source: ImageBytes {
                    bytes: data.clone(),
                },
            })
        }
    }
}

/// The JSON object a tool call's arguments text holds. Empty text means no
/// arguments (some models send it for tools without parameters).
fn tool_input(arguments: &str, notes: &mut Notes) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(object @ Value::Object(_)) => object,
        _ => {
            notes.note("tool call arguments that are not a JSON object");
            Value::Object(Map::new())
        }
    }
}

fn content_blocks(part: &Part, blocks: &mut Vec<Block>, notes: &mut Notes) {
    let cache = match part {
        Part::Text { text, cache } => {
            if text.is_empty() {
                return;
            }
            blocks.push(Block::Text(text.clone()));
            cache
        }
        Part::Image {
            source,
            detail,
            cache,
        } => {
            if detail.as_deref().is_some_and(|detail| detail != "auto") {
                notes.note("detail");
            }
            let Some(image) = image_block(source, notes) else {
                return;
            };
            blocks.push(Block::Image(image));
            cache
        }
        Part::ToolCall {
            id,
            name,
            arguments,
            cache,
        } => {
            blocks.push(Block::ToolUse(ToolUse {
                tool_use_id: id.clone(),
                name: name.clone(),
                input: tool_input(arguments, notes),
            }));
            cache
        }
        Part::ToolResult {
            call_id,
            content,
            is_error,
            cache,
            name: _,
        } => {
            let mut result_content = Vec::new();
            for inner in content {
                match inner {
                    Part::Text { text, .. } => {
                        result_content.push(ToolResultContent::Text(text.clone()));
                    }
                    Part::Image { source, .. } => {
                        if let Some(image) = image_block(source, notes) {
                            result_content.push(ToolResultContent::Image(image));
                        }
                    }
                    other => notes.note(format!("{} in a tool result", part_kind(other))),
                }
            }
            blocks.push(Block::ToolResult(ToolResult {
                tool_use_id: call_id.clone(),
                content: result_content,
                status: is_error.then_some("error"),
            }));
            cache
        }
        // A bare signature with no text is Gemini's; no Bedrock model
        // would accept it.
        Part::Reasoning { text, .. } if text.is_empty() => return,
        Part::Reasoning { text, signature } => {
            blocks.push(Block::ReasoningContent(ReasoningContent::ReasoningText {
                text: text.clone(),
                signature: signature.clone(),
            }));
            return;
        }
        Part::RedactedReasoning { data } => {
            blocks.push(Block::ReasoningContent(ReasoningContent::RedactedContent(
                data.clone(),
            )));
            return;
        }
    };
    if let Some(point) = cache_point(cache.as_ref()) {
        blocks.push(Block::CachePoint(point));
    }
}

fn mentions_tools(request: &canon::ChatRequest) -> bool {
    request.messages.iter().any(|message| {
        message
            .parts
            .iter()
            .any(|part| matches!(part, Part::ToolCall { .. } | Part::ToolResult { .. }))
    })
}

fn tool_config(request: &canon::ChatRequest, notes: &mut Notes) -> Option<ToolConfig> {
    if request.tools.is_empty() {
        // Without tools, only a demand for a call cannot be met.
        if matches!(
            request.tool_choice,
            Some(ToolChoice::Required | ToolChoice::Tool(_))
        ) {
            notes.note("tool_choice");
        }
        return None;
    }
    let tool_choice = match &request.tool_choice {
        None => None,
        Some(ToolChoice::Auto) => Some(WireToolChoice::Auto(Empty {})),
        Some(ToolChoice::Required) => Some(WireToolChoice::Any(Empty {})),
        Some(ToolChoice::Tool(name)) => Some(WireToolChoice::Tool { name: name.clone() }),
        Some(ToolChoice::None) => {
            if !mentions_tools(request) {
                return None;
            }
            notes.note("tool_choice");
            None
        }
    };
    let mut tools = Vec::new();
    for tool in &request.tools {
        // Bedrock requires a schema; a tool without one takes no arguments.
        let schema = if tool.parameters.is_null() {
            serde_json::json!({ "type": "object", "properties": {} })
        } else {
            tool.parameters.clone()
        };
        tools.push(ToolEntry::ToolSpec(ToolSpec {
            name: tool.name.clone(),
            description: tool.description.clone().filter(|text| !text.is_empty()),
            input_schema: InputSchema { json: schema },
            strict: tool.strict.filter(|strict| *strict),
        }));
        if let Some(point) = cache_point(tool.cache.as_ref()) {
            tools.push(ToolEntry::CachePoint(point));
        }
    }
    Some(ToolConfig { tools, tool_choice })
}

// ---------------------------------------------------------------------------
// The answer.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    output: Option<WireOutput>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
    additional_model_response_fields: Option<Value>,
}

#[derive(Deserialize)]
struct WireOutput {
    message: Option<WireAnswer>,
}

#[derive(Deserialize)]
struct WireAnswer {
    #[serde(default)]
    content: Vec<WireBlock>,
}

/// One content block of an answer. Members this model has no part for
/// (images, documents, guardrail content) are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBlock {
    text: Option<String>,
    tool_use: Option<WireToolUse>,
    reasoning_content: Option<WireReasoning>,
    citations_content: Option<WireCitations>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolUse {
    tool_use_id: String,
    name: String,
    #[serde(default)]
    input: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReasoning {
    reasoning_text: Option<WireReasoningText>,
    redacted_content: Option<String>,
}

#[derive(Deserialize)]
struct WireReasoningText {
    #[serde(default)]
    text: String,
    signature: Option<String>,
}

/// Text the model wrote with citations attached: the text is the answer.
#[derive(Deserialize)]
struct WireCitations {
    #[serde(default)]
    content: Vec<WireCitedText>,
}

#[derive(Deserialize)]
struct WireCitedText {
    text: Option<String>,
}

/// Bedrock's token counts (`TokenUsage`), in a Converse answer and in a
/// stream's `metadata` event.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_write_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Canon's usage and the cache-write count. Bedrock's `inputTokens`
    /// leaves out the tokens read from and written to the prompt cache;
    /// canon's input count includes them.
    pub(super) fn to_canon(&self) -> (Usage, Option<u64>) {
        let input_parts = [
            self.input_tokens,
            self.cache_read_input_tokens,
            self.cache_write_input_tokens,
        ];
        let input_tokens = input_parts
            .iter()
            .flatten()
            .copied()
            .reduce(u64::saturating_add);
        (
            Usage {
                input_tokens,
                output_tokens: self.output_tokens,
                cached_input_tokens: self.cache_read_input_tokens,
                reasoning_tokens: None,
                cache_write_tokens: self.cache_write_input_tokens,
            },
            self.cache_write_input_tokens,
        )
    }
}

/// Bedrock's `stopReason` in canon's terms. `model_context_window_exceeded`
/// is a length limit; reasons canon has no name for (the model's output or
/// tool call was malformed, or a reason newer than this code) read as the
/// turn's end, so an answer is never lost for its label.
pub(super) fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "stop_sequence" => FinishReason::StopSequence,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// The stop sequence that ended the answer. Bedrock does not say which one
/// matched, but an Anthropic model asked for `/stop_sequence` in
/// `additionalModelResponseFieldPaths` reports it there.
pub(super) fn stop_sequence(additional: Option<&Value>) -> Option<String> {
    additional?
        .get("stop_sequence")?
        .as_str()
        .map(str::to_owned)
}

fn not_converse(reason: impl std::fmt::Display) -> InvalidResponse {
    InvalidResponse(format!(
        "the upstream's answer is not a Converse response: {reason}"
    ))
}

/// Reads a Converse answer. Bedrock puts no id or model in the body: `id`
/// is left empty for the caller to fill (it makes one of its own), and
/// `model` empty for the caller, who knows which it asked for.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, InvalidResponse> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(not_converse)?;
    let answer = wire
        .output
        .and_then(|output| output.message)
        .ok_or_else(|| not_converse("it has no output.message"))?;
    let mut parts = Vec::new();
    for block in answer.content {
        if let Some(text) = block.text {
            parts.push(Part::text(text));
        } else if let Some(tool_use) = block.tool_use {
            let input = if tool_use.input.is_null() {
                Value::Object(Map::new())
            } else {
                tool_use.input
            };
            parts.push(Part::ToolCall {
                id: tool_use.tool_use_id,
                name: tool_use.name,
                arguments: input.to_string(),
                cache: None,
            });
        } else if let Some(reasoning) = block.reasoning_content {
            if let Some(text) = reasoning.reasoning_text {
                parts.push(Part::Reasoning {
                    text: text.text,
                    signature: text.signature,
                });
            } else if let Some(data) = reasoning.redacted_content {
                parts.push(Part::RedactedReasoning { data });
            }
        } else if let Some(citations) = block.citations_content {
            for cited in citations.content {
                if let Some(text) = cited.text {
                    parts.push(Part::text(text));
                }
            }
        }
    }
    let (usage, cache_write_tokens) = wire
        .usage
        .as_ref()
        .map(WireUsage::to_canon)
        .unwrap_or_default();
    Ok(ChatResponse {
        id: String::new(),
        model: String::new(),
        parts,
        finish: wire.stop_reason.as_deref().map(finish_reason),
        stop_sequence: stop_sequence(wire.additional_model_response_fields.as_ref()),
        usage,
        cache_write_tokens,
        created: None,
    })
}

// ---------------------------------------------------------------------------
// Errors.

/// An AWS error code as headers and bodies carry it: anything after a `:`
/// (a URL naming the service) and before a `#` (a namespace) is dropped.
fn error_code(raw: &str) -> Option<String> {
    let code = raw.split(':').next().unwrap_or(raw);
    let code = code.rsplit('#').next().unwrap_or(code).trim();
    (!code.is_empty()).then(|| code.to_owned())
}

/// Reads a Bedrock error answer: `{"message": "..."}` in the body, and
/// its type in the `x-amzn-errortype` header (`ValidationException:http://...`),
/// or failing that in the body's `code` or `__type`. The type is both the
/// report's `kind` and its `code`.
pub fn parse_error(body: &[u8], error_type_header: Option<&str>) -> ErrorReport {
    let value = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    let message = text("message")
        .or_else(|| text("Message"))
        .or_else(|| text("errorMessage"));
    let code = error_type_header
        .and_then(error_code)
        .or_else(|| text("code").as_deref().and_then(error_code))
        .or_else(|| text("__type").as_deref().and_then(error_code));
    ErrorReport {
        message,
        kind: code.clone(),
        param: None,
        code,
    }
}
