//! Anthropic Messages requests and answers to and from the internal model.

use serde_json::{Map, Value, json};
use switchboard_core::Usage;

use crate::canon::{
    self, ChatResponse, Encoded, FinishReason, ImageSource, InvalidResponse, Message, Part,
    Reasoning, ResponseFormat, Role, Tool, ToolChoice, Unsupported,
};
use crate::openai::RequestError;

use super::MessagesRequest;

/// `max_tokens` sent to Anthropic when the client gave none (Anthropic
/// requires one; OpenAI clients often leave it out).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

const MAPPED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
];

fn invalid(message: impl Into<String>, param: &str) -> RequestError {
    RequestError::new(message, Some(param))
}

/// Reads a checked Messages request into the internal model.
pub fn request_to_canonical(
    request: &MessagesRequest<'_>,
) -> Result<canon::ChatRequest, RequestError> {
    let value = |name: &str| -> Result<Option<Value>, RequestError> {
        match request.fields.raw(name) {
            None => Ok(None),
            Some(raw) => serde_json::from_str::<Value>(raw.get())
                .map(|value| (!value.is_null()).then_some(value))
                .map_err(|error| invalid(format!("{name}: invalid JSON: {error}"), name)),
        }
    };
    let mut out = canon::ChatRequest {
        model: request.model.clone(),
        stream: request.stream,
        // Anthropic streams always report usage.
        stream_usage: true,
        max_tokens: request.max_tokens,
        ..canon::ChatRequest::default()
    };
    match value("system")? {
        None => {}
        Some(Value::String(text)) => out.messages.push(Message::text(Role::System, text)),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (index, block) in blocks.iter().enumerate() {
                match read_block(&format!("system.{index}"), block, &mut out)? {
                    Some(part @ Part::Text { .. }) => parts.push(part),
                    Some(_) => {
                        return Err(invalid(
                            format!("system.{index}: only text blocks are allowed"),
                            "system",
                        ));
                    }
                    None => {}
                }
            }
            out.messages.push(Message {
                role: Role::System,
                parts,
                name: None,
            });
        }
        Some(_) => {
            return Err(invalid(
                "system: Input should be a valid string or list",
                "system",
            ));
        }
    }
    let Some(Value::Array(messages)) = value("messages")? else {
        return Err(invalid(
            "messages: Input should be a valid list",
            "messages",
        ));
    };
    for (index, message) in messages.iter().enumerate() {
        read_message(index, message, &mut out)?;
    }
    if let Some(Value::Array(tools)) = value("tools")? {
        for (index, tool) in tools.iter().enumerate() {
            if tool.get("input_schema").is_none() {
                // A server tool (web search, code execution...) that only
                // Anthropic runs.
                out.unmapped.push((format!("tools.{index}"), tool.clone()));
                continue;
            }
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("tools.{index}.name: Field required"), "tools"))?;
            out.tools.push(Tool {
                name: name.to_owned(),
                description: tool
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: tool["input_schema"].clone(),
                strict: tool.get("strict").and_then(Value::as_bool),
                cache: tool.get("cache_control").cloned(),
            });
        }
    }
    if let Some(choice) = value("tool_choice")? {
        let kind = choice
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        out.tool_choice = Some(match kind {
            "auto" => ToolChoice::Auto,
            "any" => ToolChoice::Required,
            "none" => ToolChoice::None,
            "tool" => ToolChoice::Tool(
                choice
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("tool_choice.name: Field required", "tool_choice"))?
                    .to_owned(),
            ),
            other => {
                return Err(invalid(
                    format!("tool_choice.type: `{other}` is not one of auto, any, tool, none"),
                    "tool_choice",
                ));
            }
        });
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.parallel_tool_calls = Some(false);
        }
    }
    out.temperature = request.fields.get("temperature", "a number")?;
    out.top_p = request.fields.get("top_p", "a number")?;
    out.top_k = request.fields.get("top_k", "a non-negative integer")?;
    out.stop = request
        .fields
        .get("stop_sequences", "an array of strings")?
        .unwrap_or_default();
    if let Some(metadata) = value("metadata")? {
        out.user = metadata
            .get("user_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    if let Some(thinking) = value("thinking")? {
        match thinking.get("type").and_then(Value::as_str) {
            Some("enabled") => {
                out.reasoning = Some(Reasoning {
                    effort: None,
                    budget_tokens: thinking
                        .get("budget_tokens")
                        .and_then(Value::as_u64)
                        .and_then(|budget| u32::try_from(budget).ok()),
                    enabled: true,
                });
            }
            Some("disabled") => {
                out.reasoning = Some(Reasoning {
                    effort: None,
                    budget_tokens: None,
                    enabled: false,
                });
            }
            _ => out.unmapped.push(("thinking".to_owned(), thinking)),
        }
    }
    // Structured output: `output_config.format` (generally available) or
    // the earlier beta's `output_format`.
    let mut formats = Vec::new();
    if let Some(Value::Object(mut config)) = value("output_config")? {
        if let Some(format) = config.remove("format") {
            formats.push(("output_config.format", format));
        }
        for (key, setting) in config {
            out.unmapped.push((format!("output_config.{key}"), setting));
        }
    }
    if let Some(format) = value("output_format")? {
        formats.push(("output_format", format));
    }
    for (name, format) in formats {
        if format.get("type").and_then(Value::as_str) == Some("json_schema") {
            out.response_format = Some(ResponseFormat::JsonSchema {
                name: "response".to_owned(),
                schema: format.get("schema").cloned().unwrap_or_else(|| json!({})),
                strict: Some(true),
                description: None,
            });
        } else {
            out.unmapped.push((name.to_owned(), format));
        }
    }
    for name in request.fields.names() {
        if MAPPED_FIELDS.contains(&name) || name == "output_format" || name == "output_config" {
            continue;
        }
        if let Some(value) = value(name)? {
            out.unmapped.push((name.to_owned(), value));
        }
    }
    Ok(out)
}

fn read_message(
    index: usize,
    message: &Value,
    out: &mut canon::ChatRequest,
) -> Result<(), RequestError> {
    let path = format!("messages.{index}");
    let role = match message.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        _ => {
            return Err(invalid(
                format!("{path}.role: Input should be 'user' or 'assistant'"),
                "messages",
            ));
        }
    };
    let blocks = match message.get("content") {
        Some(Value::String(text)) => {
            out.messages.push(Message::text(role, text.clone()));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(
                format!("{path}.content: Input should be a valid string or list"),
                "messages",
            ));
        }
    };
    // Tool results become a message of their own (the `tool` role of the
    // internal model); the rest of a user turn stays a user message.
    let mut results = Vec::new();
    let mut parts = Vec::new();
    for (block_index, block) in blocks.iter().enumerate() {
        if let Some(part) = read_block(&format!("{path}.content.{block_index}"), block, out)? {
            match part {
                Part::ToolResult { .. } => results.push(part),
                part => parts.push(part),
            }
        }
    }
    if !results.is_empty() {
        out.messages.push(Message {
            role: Role::Tool,
            parts: results,
            name: None,
        });
    }
    if !parts.is_empty() || blocks.is_empty() {
        out.messages.push(Message {
            role,
            parts,
            name: None,
        });
    }
    Ok(())
}

/// One content block; `None` when it was set aside as unmapped.
fn read_block(
    path: &str,
    block: &Value,
    out: &mut canon::ChatRequest,
) -> Result<Option<Part>, RequestError> {
    let text_of = |key: &str| -> Result<String, RequestError> {
        block
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| invalid(format!("{path}.{key}: Field required"), "messages"))
    };
    let cache = block.get("cache_control").cloned();
    let kind = block
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let part = match kind {
        "text" => {
            if block
                .get("citations")
                .is_some_and(|citations| !citations.is_null())
            {
                out.unmapped
                    .push((format!("{path}.citations"), block["citations"].clone()));
            }
            Part::Text {
                text: text_of("text")?,
                cache,
            }
        }
        "image" => {
            let source = block
                .get("source")
                .ok_or_else(|| invalid(format!("{path}.source: Field required"), "messages"))?;
            let source = match source.get("type").and_then(Value::as_str) {
                Some("base64") => ImageSource::Base64 {
                    media_type: source
                        .get("media_type")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    data: source
                        .get("data")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                },
                Some("url") => ImageSource::Url(
                    source
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ),
                _ => {
                    out.unmapped
                        .push((format!("{path}.source"), source.clone()));
                    return Ok(None);
                }
            };
            Part::Image {
                source,
                detail: None,
                cache,
            }
        }
        "tool_use" => Part::ToolCall {
            id: text_of("id")?,
            name: text_of("name")?,
            arguments: serde_json::to_string(block.get("input").unwrap_or(&json!({})))
                .unwrap_or_default(),
            cache,
        },
        "tool_result" => {
            let content = match block.get("content") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(text)) => vec![Part::text(text.clone())],
                Some(Value::Array(items)) => {
                    let mut parts = Vec::new();
                    for (index, item) in items.iter().enumerate() {
                        if let Some(part) =
                            read_block(&format!("{path}.content.{index}"), item, out)?
                        {
                            parts.push(part);
                        }
                    }
                    parts
                }
                Some(_) => {
                    return Err(invalid(
                        format!("{path}.content: Input should be a valid string or list"),
                        "messages",
                    ));
                }
            };
            Part::ToolResult {
                call_id: text_of("tool_use_id")?,
                name: None,
                content,
                is_error: block.get("is_error") == Some(&Value::Bool(true)),
                cache,
            }
        }
        // An empty signature is no signature (what a client echoes back of
        // reasoning that came without one).
        "thinking" => Part::Reasoning {
            text: text_of("thinking")?,
            signature: block
                .get("signature")
                .and_then(Value::as_str)
                .filter(|signature| !signature.is_empty())
                .map(str::to_owned),
        },
        "redacted_thinking" => Part::RedactedReasoning {
            data: text_of("data")?,
        },
        _ => {
            out.unmapped
                .push((format!("{path} ({kind})"), block.clone()));
            return Ok(None);
        }
    };
    Ok(Some(part))
}

/// Writes a Messages request for an Anthropic upstream.
pub fn encode_request(request: &canon::ChatRequest, upstream_model: &str) -> Encoded {
    let mut unsupported: Vec<Unsupported> = request
        .unmapped
        .iter()
        .map(|(name, _)| Unsupported(name.clone()))
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    // System prompts are hoisted: Anthropic takes one, before the turns.
    let system: Vec<&Part> = request
        .messages
        .iter()
        .filter(|message| message.role == Role::System)
        .flat_map(|message| &message.parts)
        .collect();
    if !system.is_empty() {
        let cached = system
            .iter()
            .any(|part| matches!(part, Part::Text { cache: Some(_), .. }));
        if cached || system.len() > 1 {
            let blocks: Vec<Value> = system
                .iter()
                .filter_map(|part| write_block(part, &mut unsupported))
                .collect();
            body.insert("system".into(), Value::Array(blocks));
        } else if let Part::Text { text, .. } = system[0] {
            body.insert("system".into(), json!(text));
        }
    }
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        let role = match message.role {
            Role::System => continue,
            Role::User | Role::Tool => "user",
            Role::Assistant => "assistant",
        };
        if message.name.is_some() {
            unsupported.push(Unsupported("messages[].name".to_owned()));
        }
        let blocks: Vec<Value> = message
            .parts
            .iter()
            .filter_map(|part| write_block(part, &mut unsupported))
            .collect();
        // A turn left with no blocks (an OpenAI assistant turn whose content
        // was an empty string) would be refused; it said nothing, so it goes.
        if blocks.is_empty() {
            continue;
        }
        // Consecutive turns of one role are one turn for Anthropic (tool
        // results of parallel calls must share a user turn).
        match messages.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = messages
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": blocks}))
        .collect();
    body.insert("messages".into(), Value::Array(messages));
    if let Some(user) = &request.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if request.stream {
        body.insert("stream".into(), json!(true));
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if let Some(top_k) = request.top_k {
        body.insert("top_k".into(), json!(top_k));
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut object = Map::new();
                object.insert("name".into(), json!(tool.name));
                if let Some(description) = &tool.description {
                    object.insert("description".into(), json!(description));
                }
                object.insert("input_schema".into(), tool.parameters.clone());
                if let Some(strict) = tool.strict {
                    object.insert("strict".into(), json!(strict));
                }
                if let Some(cache) = &tool.cache {
                    object.insert("cache_control".into(), cache.clone());
                }
                Value::Object(object)
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let no_parallel = request.parallel_tool_calls == Some(false);
    let choice = match &request.tool_choice {
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Tool(name)) => Some(json!({"type": "tool", "name": name})),
        None if no_parallel && !request.tools.is_empty() => Some(json!({"type": "auto"})),
        None => None,
    };
    if let Some(mut choice) = choice {
        // Anthropic's `none` choice has no `disable_parallel_tool_use`
        // (and refuses fields it does not have).
        if no_parallel
            && request.tool_choice != Some(ToolChoice::None)
            && let Some(object) = choice.as_object_mut()
        {
            object.insert("disable_parallel_tool_use".into(), json!(true));
        }
        body.insert("tool_choice".into(), choice);
    }
    if let Some(reasoning) = &request.reasoning {
        match (reasoning.enabled, reasoning.budget_tokens) {
            (false, _) => {
                body.insert("thinking".into(), json!({"type": "disabled"}));
            }
            (true, Some(budget)) => {
                body.insert(
                    "thinking".into(),
                    json!({"type": "enabled", "budget_tokens": budget}),
                );
            }
            (true, None) => unsupported.push(Unsupported("reasoning_effort".to_owned())),
        }
    }
    match &request.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            unsupported.push(Unsupported("response_format".to_owned()));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            body.insert(
                "output_config".into(),
                json!({"format": {"type": "json_schema", "schema": schema}}),
            );
        }
    }
    for (name, present) in [
        ("seed", request.seed.is_some()),
        ("frequency_penalty", request.frequency_penalty.is_some()),
        ("presence_penalty", request.presence_penalty.is_some()),
    ] {
        if present {
            unsupported.push(Unsupported(name.to_owned()));
        }
    }
    Encoded {
        body: serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
        unsupported,
    }
}

fn with_cache(mut block: Value, cache: Option<&Value>) -> Value {
    if let (Some(cache), Some(object)) = (cache, block.as_object_mut()) {
        object.insert("cache_control".into(), cache.clone());
    }
    block
}

fn write_block(part: &Part, unsupported: &mut Vec<Unsupported>) -> Option<Value> {
    Some(match part {
        // Anthropic refuses empty text blocks; OpenAI clients send an empty
        // content beside tool calls.
        Part::Text { text, .. } if text.is_empty() => return None,
        Part::Text { text, cache } => {
            with_cache(json!({"type": "text", "text": text}), cache.as_ref())
        }
        Part::Image { source, cache, .. } => {
            let source = match source {
                ImageSource::Url(url) => json!({"type": "url", "url": url}),
                ImageSource::Base64 { media_type, data } => {
                    json!({"type": "base64", "media_type": media_type, "data": data})
                }
            };
            with_cache(json!({"type": "image", "source": source}), cache.as_ref())
        }
        Part::ToolCall {
            id,
            name,
            arguments,
            cache,
        } => {
            let input = if arguments.trim().is_empty() {
                json!({})
            } else {
                match serde_json::from_str::<Value>(arguments) {
                    Ok(input @ Value::Object(_)) => input,
                    _ => {
                        unsupported.push(Unsupported(format!(
                            "tool call `{id}` arguments that are not a JSON object"
                        )));
                        return None;
                    }
                }
            };
            with_cache(
                json!({"type": "tool_use", "id": id, "name": name, "input": input}),
                cache.as_ref(),
            )
        }
        Part::ToolResult {
            call_id,
            content,
            is_error,
            cache,
            ..
        } => {
            let blocks: Vec<Value> = content
                .iter()
                .filter_map(|part| write_block(part, unsupported))
                .collect();
            let mut block =
                json!({"type": "tool_result", "tool_use_id": call_id, "content": blocks});
            if *is_error {
                block["is_error"] = json!(true);
            }
            with_cache(block, cache.as_ref())
        }
        // Reasoning goes back to Anthropic only with its signature, which
        // proves it came from Claude; reasoning from other models is dropped,
        // and so is a bare signature (Gemini's, carried with no text).
        Part::Reasoning {
            text,
            signature: Some(signature),
        } if !text.is_empty() && !signature.is_empty() => {
            json!({"type": "thinking", "thinking": text, "signature": signature})
        }
        Part::Reasoning { .. } => return None,
        Part::RedactedReasoning { data } => json!({"type": "redacted_thinking", "data": data}),
    })
}

pub(crate) fn finish_from_anthropic(reason: &str) -> Option<FinishReason> {
    match reason {
        "end_turn" => Some(FinishReason::Stop),
        "stop_sequence" => Some(FinishReason::StopSequence),
        "max_tokens" | "model_context_window_exceeded" => Some(FinishReason::Length),
        "tool_use" => Some(FinishReason::ToolCalls),
        "pause_turn" => Some(FinishReason::Pause),
        "refusal" => Some(FinishReason::Refusal),
        _ => None,
    }
}

pub(crate) fn finish_to_anthropic(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "end_turn",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter | FinishReason::Refusal => "refusal",
        FinishReason::Pause => "pause_turn",
    }
}

/// Anthropic's usage object into the internal model's, whose input count
/// includes the tokens read from and written to the cache.
pub(crate) fn usage_from_anthropic(usage: &Value) -> (Usage, Option<u64>) {
    let number = |key: &str| usage.get(key).and_then(Value::as_u64);
    let cache_read = number("cache_read_input_tokens");
    let cache_write = number("cache_creation_input_tokens");
    let input = number("input_tokens").map(|input| {
        // Saturating: the counts come from the upstream, and a broken
        // one must not be able to panic the gateway.
        input
            .saturating_add(cache_read.unwrap_or(0))
            .saturating_add(cache_write.unwrap_or(0))
    });
    (
        Usage {
            input_tokens: input,
            output_tokens: number("output_tokens"),
            cached_input_tokens: cache_read,
            reasoning_tokens: None,
            cache_write_tokens: cache_write,
        },
        cache_write,
    )
}

pub(crate) fn usage_to_anthropic(usage: &Usage, cache_write: Option<u64>) -> Value {
    let cache_read = usage.cached_input_tokens.unwrap_or(0);
    let written = cache_write.unwrap_or(0);
    let input = usage
        .input_tokens
        .unwrap_or(0)
        .saturating_sub(cache_read.saturating_add(written));
    let mut object = Map::new();
    object.insert("input_tokens".into(), json!(input));
    if cache_write.is_some() || usage.cached_input_tokens.is_some() {
        object.insert("cache_creation_input_tokens".into(), json!(written));
        object.insert("cache_read_input_tokens".into(), json!(cache_read));
    }
    object.insert(
        "output_tokens".into(),
        json!(usage.output_tokens.unwrap_or(0)),
    );
    Value::Object(object)
}

/// Reads an Anthropic `message` into the internal model.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, InvalidResponse> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        InvalidResponse(format!("the upstream's answer is not valid JSON: {error}"))
    })?;
    if value.get("type").and_then(Value::as_str) != Some("message") {
        return Err(InvalidResponse(
            "the upstream's answer is not a Messages `message` object".to_owned(),
        ));
    }
    let blocks = value
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            InvalidResponse("the upstream's message has no `content` list".to_owned())
        })?;
    let mut parts = Vec::with_capacity(blocks.len());
    for block in blocks {
        let text = |key: &str| {
            block
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(Part::text(text("text"))),
            Some("thinking") => parts.push(Part::Reasoning {
                text: text("thinking"),
                signature: block
                    .get("signature")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            }),
            Some("redacted_thinking") => parts.push(Part::RedactedReasoning { data: text("data") }),
            Some("tool_use") => parts.push(Part::ToolCall {
                id: text("id"),
                name: text("name"),
                arguments: serde_json::to_string(block.get("input").unwrap_or(&json!({})))
                    .unwrap_or_default(),
                cache: None,
            }),
            Some(other) => {
                return Err(InvalidResponse(format!(
                    "the upstream's message holds a `{other}` block, which cannot be translated"
                )));
            }
            None => {
                return Err(InvalidResponse(
                    "the upstream's message holds a block without a type".to_owned(),
                ));
            }
        }
    }
    let (usage, cache_write_tokens) = value
        .get("usage")
        .map(usage_from_anthropic)
        .unwrap_or_default();
    Ok(ChatResponse {
        id: value
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        model: value
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        parts,
        finish: value
            .get("stop_reason")
            .and_then(Value::as_str)
            .and_then(finish_from_anthropic),
        stop_sequence: value
            .get("stop_sequence")
            .and_then(Value::as_str)
            .map(str::to_owned),
        usage,
        cache_write_tokens,
        created: None,
    })
}

/// A tool call's arguments as Anthropic's `input` object. Arguments a model
/// produced that are not valid JSON are kept as a string rather than lost.
pub(crate) fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| json!(arguments))
}

/// Writes a `message` for an Anthropic client.
pub fn encode_response(response: &ChatResponse) -> Vec<u8> {
    let mut content = Vec::with_capacity(response.parts.len());
    for part in &response.parts {
        match part {
            Part::Text { text, .. } => content.push(json!({"type": "text", "text": text})),
            Part::Reasoning { text, signature } => content.push(json!({
                "type": "thinking",
                "thinking": text,
                "signature": signature.clone().unwrap_or_default(),
            })),
            Part::RedactedReasoning { data } => {
                content.push(json!({"type": "redacted_thinking", "data": data}));
            }
            Part::ToolCall {
                id,
                name,
                arguments,
                ..
            } => content.push(json!({
                "type": "tool_use",
                "id": id,
                "name": name,
                "input": tool_input(arguments),
            })),
            Part::Image { .. } | Part::ToolResult { .. } => {}
        }
    }
    let body = json!({
        "id": response.id,
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": response.finish.map(finish_to_anthropic),
        "stop_sequence": response.stop_sequence,
        "usage": usage_to_anthropic(&response.usage, response.cache_write_tokens),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}
