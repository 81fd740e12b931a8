//! OpenAI chat completions to and from the internal model (`canon`), for
//! requests that cross dialects: an OpenAI client served by another
//! vendor's model, or another dialect's client served by an OpenAI model.
//! (When both sides speak OpenAI, the request passes through instead.)

use serde_json::{Map, Value, json};
use switchboard_core::Usage;

use crate::canon::{
    self, ChatResponse, Encoded, FinishReason, Frame, ImageSource, InvalidResponse, Message, Part,
    Reasoning, ResponseFormat, Role, StreamDecoder, StreamEncoder, StreamError, StreamEvent, Tool,
    ToolChoice, Unsupported,
};
use crate::sse::{SseDecoder, SseEvent, frame_data};

use super::{ChatRequest, RequestError, UpstreamErrorBody};

/// Joins a tool call's id and the thought signature that Gemini attaches to
/// it. OpenAI's API has no place for the signature, yet Gemini refuses a
/// function call sent back without it; the tool call id is the one thing a
/// client returns unchanged, so the signature travels inside it and is
/// taken out again when the client sends the conversation back.
pub const SIGNATURE_MARK: &str = "__thought__";

/// `id` with the signature carried in it.
fn id_with_signature(id: &str, signature: Option<&str>) -> String {
    match signature {
        Some(signature) if !signature.is_empty() => format!("{id}{SIGNATURE_MARK}{signature}"),
        _ => id.to_owned(),
    }
}

/// A tool call id as a client sent it back: the id, and the signature it
/// carried.
fn split_signature(id: &str) -> (&str, Option<&str>) {
    match id.split_once(SIGNATURE_MARK) {
        Some((id, signature)) if !signature.is_empty() => (id, Some(signature)),
        _ => (id, None),
    }
}

/// Top-level request fields the internal model holds.
const MAPPED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "user",
    "reasoning_effort",
    "stream",
    "stream_options",
];

/// Fields that carry no meaning at their default value, so a client that
/// spells the default out loses nothing when they are left behind.
fn is_default(name: &str, value: &Value) -> bool {
    match name {
        "n" => value.as_u64() == Some(1),
        "logprobs" | "store" => value == &Value::Bool(false),
        _ => value.is_null(),
    }
}

fn invalid(message: impl Into<String>, param: &str) -> RequestError {
    RequestError {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// Reads a checked OpenAI chat request into the internal model.
pub fn request_to_canonical(request: &ChatRequest<'_>) -> Result<canon::ChatRequest, RequestError> {
    let value = |name: &str| -> Result<Option<Value>, RequestError> {
        match request.fields.raw(name) {
            None => Ok(None),
            Some(raw) => serde_json::from_str::<Value>(raw.get())
                .map(|value| (!value.is_null()).then_some(value))
                .map_err(|error| invalid(format!("`{name}` is not valid JSON: {error}"), name)),
        }
    };
    let mut out = canon::ChatRequest {
        model: request.model.clone(),
        stream: request.stream,
        stream_usage: request.client_wants_usage,
        max_tokens: request.max_tokens,
        ..canon::ChatRequest::default()
    };
    let messages = value("messages")?.unwrap_or(Value::Array(Vec::new()));
    let Value::Array(messages) = messages else {
        return Err(invalid("`messages` must be an array", "messages"));
    };
    for (index, message) in messages.iter().enumerate() {
        read_message(index, message, &mut out)?;
    }
    if let Some(Value::Array(tools)) = value("tools")? {
        for (index, tool) in tools.iter().enumerate() {
            out.tools.push(read_tool(index, tool)?);
        }
    }
    out.tool_choice = value("tool_choice")?
        .map(|choice| read_tool_choice(&choice))
        .transpose()?;
    out.parallel_tool_calls = request.fields.get("parallel_tool_calls", "a boolean")?;
    out.response_format = value("response_format")?
        .map(|format| read_response_format(&format))
        .transpose()?;
    out.temperature = request.temperature;
    out.top_p = request.fields.get("top_p", "a number")?;
    out.seed = request.fields.get("seed", "an integer")?;
    out.frequency_penalty = request.fields.get("frequency_penalty", "a number")?;
    out.presence_penalty = request.fields.get("presence_penalty", "a number")?;
    out.user = request.fields.get("user", "a string")?;
    out.stop = match value("stop")? {
        None => Vec::new(),
        Some(Value::String(stop)) => vec![stop],
        Some(Value::Array(stops)) => stops
            .into_iter()
            .map(|stop| match stop {
                Value::String(stop) => Ok(stop),
                _ => Err(invalid("`stop` must hold strings", "stop")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("`stop` must be a string or an array", "stop")),
    };
    if let Some(effort) = request
        .fields
        .get::<String>("reasoning_effort", "a string")?
    {
        out.reasoning = Some(Reasoning {
            enabled: effort != "none",
            effort: Some(effort),
            budget_tokens: None,
        });
    }
    for name in request.fields.names() {
        if MAPPED_FIELDS.contains(&name) {
            continue;
        }
        let Some(value) = value(name)? else { continue };
        if !is_default(name, &value) {
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
    let path = format!("messages[{index}]");
    let role = message
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("`{path}.role` must be a string"), "messages"))?;
    let name = message
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let content = message.get("content").filter(|content| !content.is_null());
    let role = match role {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => {
            let call_id = message
                .get("tool_call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid(
                        format!("`{path}.tool_call_id` is required for a tool message"),
                        "messages",
                    )
                })?;
            let content = match content {
                Some(content) => read_parts(&path, content, out)?,
                None => Vec::new(),
            };
            out.messages.push(Message {
                role: Role::Tool,
                parts: vec![Part::ToolResult {
                    call_id: split_signature(call_id).0.to_owned(),
                    name: None,
                    content,
                    is_error: false,
                    cache: None,
                }],
                name: None,
            });
            return Ok(());
        }
        other => {
            out.unmapped
                .push((format!("{path}.role ({other})"), message.clone()));
            return Ok(());
        }
    };
    let mut parts = Vec::new();
    if role == Role::Assistant
        && let Some(Value::String(reasoning)) = message.get("reasoning_content")
    {
        parts.push(Part::Reasoning {
            text: reasoning.clone(),
            signature: None,
        });
    }
    if let Some(content) = content {
        parts.extend(read_parts(&path, content, out)?);
    }
    if role == Role::Assistant {
        if let Some(Value::String(refusal)) = message.get("refusal") {
            parts.push(Part::text(refusal.clone()));
        }
        if let Some(Value::Array(calls)) = message.get("tool_calls") {
            for (call_index, call) in calls.iter().enumerate() {
                let call_path = format!("{path}.tool_calls[{call_index}]");
                let function = call.get("function").ok_or_else(|| {
                    invalid(format!("`{call_path}.function` is required"), "messages")
                })?;
                let text = |value: Option<&Value>, what: &str| {
                    value
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            invalid(format!("`{call_path}.{what}` must be a string"), "messages")
                        })
                };
                let id = text(call.get("id"), "id")?;
                let (id, signature) = split_signature(&id);
                if let Some(signature) = signature {
                    parts.push(Part::Reasoning {
                        text: String::new(),
                        signature: Some(signature.to_owned()),
                    });
                }
                parts.push(Part::ToolCall {
                    id: id.to_owned(),
                    name: text(function.get("name"), "function.name")?,
                    arguments: text(function.get("arguments"), "function.arguments")?,
                    cache: None,
                });
            }
        }
        if message
            .get("function_call")
            .is_some_and(|call| !call.is_null())
        {
            out.unmapped.push((
                format!("{path}.function_call"),
                message["function_call"].clone(),
            ));
        }
        if message.get("audio").is_some_and(|audio| !audio.is_null()) {
            out.unmapped
                .push((format!("{path}.audio"), message["audio"].clone()));
        }
    }
    out.messages.push(Message { role, parts, name });
    Ok(())
}

/// A message's `content`: a string or an array of typed parts.
fn read_parts(
    path: &str,
    content: &Value,
    out: &mut canon::ChatRequest,
) -> Result<Vec<Part>, RequestError> {
    match content {
        Value::String(text) => Ok(vec![Part::text(text.clone())]),
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
                match kind {
                    "text" | "refusal" => {
                        let text = item.get(kind).and_then(Value::as_str).ok_or_else(|| {
                            invalid(
                                format!("`{path}.content[{index}].{kind}` must be a string"),
                                "messages",
                            )
                        })?;
                        parts.push(Part::text(text));
                    }
                    "image_url" => {
                        let image = item.get("image_url");
                        let url = image
                            .and_then(|image| image.get("url").or(Some(image)))
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                invalid(
                                    format!(
                                        "`{path}.content[{index}].image_url.url` must be a string"
                                    ),
                                    "messages",
                                )
                            })?;
                        parts.push(Part::Image {
                            source: ImageSource::from_url(url),
                            detail: image
                                .and_then(|image| image.get("detail"))
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                            cache: None,
                        });
                    }
                    other => out
                        .unmapped
                        .push((format!("{path}.content[{index}] ({other})"), item.clone())),
                }
            }
            Ok(parts)
        }
        _ => Err(invalid(
            format!("`{path}.content` must be a string or an array"),
            "messages",
        )),
    }
}

fn read_tool(index: usize, tool: &Value) -> Result<Tool, RequestError> {
    let kind = tool
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("function");
    if kind != "function" {
        return Err(invalid(
            format!(
                "`tools[{index}].type` `{kind}` cannot be translated; only `function` tools can"
            ),
            "tools",
        ));
    }
    let function = tool
        .get("function")
        .ok_or_else(|| invalid(format!("`tools[{index}].function` is required"), "tools"))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                format!("`tools[{index}].function.name` must be a string"),
                "tools",
            )
        })?;
    Ok(Tool {
        name: name.to_owned(),
        description: function
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        parameters: function
            .get("parameters")
            .cloned()
            .filter(|schema| !schema.is_null())
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        strict: function.get("strict").and_then(Value::as_bool),
        cache: None,
    })
}

fn read_tool_choice(choice: &Value) -> Result<ToolChoice, RequestError> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(invalid(
                format!("`tool_choice` `{other}` is not one of auto, none, required"),
                "tool_choice",
            )),
        },
        Value::Object(_) => choice
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Tool(name.to_owned()))
            .ok_or_else(|| {
                invalid(
                    "`tool_choice.function.name` must be a string",
                    "tool_choice",
                )
            }),
        _ => Err(invalid(
            "`tool_choice` must be a string or an object",
            "tool_choice",
        )),
    }
}

fn read_response_format(format: &Value) -> Result<ResponseFormat, RequestError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let spec = format.get("json_schema").ok_or_else(|| {
                invalid(
                    "`response_format.json_schema` is required",
                    "response_format",
                )
            })?;
            Ok(ResponseFormat::JsonSchema {
                name: spec
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("response")
                    .to_owned(),
                schema: spec.get("schema").cloned().unwrap_or_else(|| json!({})),
                strict: spec.get("strict").and_then(Value::as_bool),
                description: spec
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            })
        }
        _ => Err(invalid(
            "`response_format.type` must be text, json_object or json_schema",
            "response_format",
        )),
    }
}

/// Writes a chat request for an OpenAI-compatible upstream. Streams ask for
/// usage, which the gateway needs to account the request.
pub fn encode_request(request: &canon::ChatRequest, upstream_model: &str) -> Encoded {
    encode_request_with(request, upstream_model, "max_completion_tokens")
}

/// As `encode_request`, naming the output limit `limit_field`: OpenAI's
/// own API wants `max_completion_tokens` (its reasoning models refuse
/// `max_tokens`), while many compatible servers know only `max_tokens`.
pub fn encode_request_with(
    request: &canon::ChatRequest,
    upstream_model: &str,
    limit_field: &str,
) -> Encoded {
    let mut unsupported: Vec<Unsupported> = request
        .unmapped
        .iter()
        .map(|(name, _)| Unsupported(name.clone()))
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        write_message(message, &mut messages, &mut unsupported);
    }
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut function = Map::new();
                function.insert("name".into(), json!(tool.name));
                if let Some(description) = &tool.description {
                    function.insert("description".into(), json!(description));
                }
                function.insert("parameters".into(), tool.parameters.clone());
                if let Some(strict) = tool.strict {
                    function.insert("strict".into(), json!(strict));
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = &request.tool_choice {
        let choice = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
        body.insert("tool_choice".into(), choice);
    }
    if let Some(parallel) = request.parallel_tool_calls {
        body.insert("parallel_tool_calls".into(), json!(parallel));
    }
    match &request.response_format {
        None => {}
        Some(ResponseFormat::Text) => {
            body.insert("response_format".into(), json!({"type": "text"}));
        }
        Some(ResponseFormat::JsonObject) => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
            description,
        }) => {
            let mut spec = Map::new();
            spec.insert("name".into(), json!(name));
            if let Some(description) = description {
                spec.insert("description".into(), json!(description));
            }
            spec.insert("schema".into(), schema.clone());
            if let Some(strict) = strict {
                spec.insert("strict".into(), json!(strict));
            }
            body.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": spec}),
            );
        }
    }
    if let Some(tokens) = request.max_tokens {
        body.insert(limit_field.into(), json!(tokens));
    }
    let numbers = [
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("frequency_penalty", request.frequency_penalty),
        ("presence_penalty", request.presence_penalty),
    ];
    for (name, number) in numbers {
        if let Some(number) = number {
            body.insert(name.into(), json!(number));
        }
    }
    if request.top_k.is_some() {
        unsupported.push(Unsupported("top_k".to_owned()));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    if let Some(seed) = request.seed {
        body.insert("seed".into(), json!(seed));
    }
    if let Some(user) = &request.user {
        body.insert("user".into(), json!(user));
    }
    if let Some(reasoning) = &request.reasoning {
        match (&reasoning.effort, reasoning.enabled) {
            (Some(effort), _) => {
                body.insert("reasoning_effort".into(), json!(effort));
            }
            (None, false) => {}
            (None, true) => unsupported.push(Unsupported("thinking.budget_tokens".to_owned())),
        }
    }
    if request.stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Encoded {
        body: serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
        unsupported,
    }
}

fn write_message(message: &Message, out: &mut Vec<Value>, unsupported: &mut Vec<Unsupported>) {
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => {
            for part in &message.parts {
                if let Part::ToolResult {
                    call_id, content, ..
                } = part
                {
                    let mut text = String::new();
                    for part in content {
                        match part {
                            Part::Text { text: piece, .. } => text.push_str(piece),
                            _ => unsupported.push(Unsupported("image in a tool result".to_owned())),
                        }
                    }
                    out.push(json!({"role": "tool", "tool_call_id": call_id, "content": text}));
                }
            }
            return;
        }
    };
    let mut object = Map::new();
    object.insert("role".into(), json!(role));
    let mut content: Vec<Value> = Vec::new();
    let mut tool_calls: Vec<Value> = Vec::new();
    let mut only_text = true;
    for part in &message.parts {
        match part {
            Part::Text { text, .. } => content.push(json!({"type": "text", "text": text})),
            Part::Image { source, detail, .. } => {
                only_text = false;
                let mut image = Map::new();
                image.insert("url".into(), json!(source.to_url()));
                if let Some(detail) = detail {
                    image.insert("detail".into(), json!(detail));
                }
                content.push(json!({"type": "image_url", "image_url": image}));
            }
            Part::ToolCall {
                id,
                name,
                arguments,
                ..
            } => tool_calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })),
            Part::ToolResult { .. } => {
                unsupported.push(Unsupported("tool result outside a tool message".to_owned()));
            }
            // OpenAI's chat API takes no reasoning back; its own models
            // keep theirs server-side. Earlier turns' reasoning is dropped.
            Part::Reasoning { .. } | Part::RedactedReasoning { .. } => {}
        }
    }
    if only_text {
        let text: String = content
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect();
        // An assistant turn that only calls tools has no content.
        let content = if text.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            json!(text)
        };
        object.insert("content".into(), content);
    } else {
        object.insert("content".into(), Value::Array(content));
    }
    if let Some(name) = &message.name {
        object.insert("name".into(), json!(name));
    }
    if !tool_calls.is_empty() {
        object.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    out.push(Value::Object(object));
}

fn finish_from_openai(reason: &str) -> Option<FinishReason> {
    match reason {
        "stop" => Some(FinishReason::Stop),
        "length" => Some(FinishReason::Length),
        "tool_calls" | "function_call" => Some(FinishReason::ToolCalls),
        "content_filter" => Some(FinishReason::ContentFilter),
        _ => None,
    }
}

/// OpenAI's name for a finish reason (`stop`, `length`...).
pub fn finish_reason_name(reason: FinishReason) -> &'static str {
    finish_to_openai(reason)
}

fn finish_to_openai(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::StopSequence | FinishReason::Pause => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter | FinishReason::Refusal => "content_filter",
    }
}

fn usage_from_openai(usage: &Value) -> Usage {
    Usage {
        input_tokens: usage.get("prompt_tokens").and_then(Value::as_u64),
        output_tokens: usage.get("completion_tokens").and_then(Value::as_u64),
        cached_input_tokens: usage
            .pointer("/prompt_tokens_details/cached_tokens")
            .and_then(Value::as_u64),
        reasoning_tokens: usage
            .pointer("/completion_tokens_details/reasoning_tokens")
            .and_then(Value::as_u64),
        cache_write_tokens: None,
    }
}

fn usage_to_openai(usage: &Usage) -> Value {
    let input = usage.input_tokens.unwrap_or(0);
    let output = usage.output_tokens.unwrap_or(0);
    let mut object = Map::new();
    object.insert("prompt_tokens".into(), json!(input));
    object.insert("completion_tokens".into(), json!(output));
    object.insert("total_tokens".into(), json!(input.saturating_add(output)));
    if let Some(cached) = usage.cached_input_tokens {
        object.insert(
            "prompt_tokens_details".into(),
            json!({"cached_tokens": cached}),
        );
    }
    if let Some(reasoning) = usage.reasoning_tokens {
        object.insert(
            "completion_tokens_details".into(),
            json!({"reasoning_tokens": reasoning}),
        );
    }
    Value::Object(object)
}

/// Reads an upstream's `chat.completion` into the internal model (its
/// first choice: translated requests never ask for more).
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, InvalidResponse> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        InvalidResponse(format!("the upstream's answer is not valid JSON: {error}"))
    })?;
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| {
            InvalidResponse("the upstream's chat completion has no `choices`".to_owned())
        })?;
    let message = choice.get("message").ok_or_else(|| {
        InvalidResponse("the upstream's chat completion choice has no `message`".to_owned())
    })?;
    let mut parts = Vec::new();
    if let Some(Value::String(reasoning)) = message.get("reasoning_content")
        && !reasoning.is_empty()
    {
        parts.push(Part::Reasoning {
            text: reasoning.clone(),
            signature: None,
        });
    }
    match message.get("content") {
        Some(Value::String(text)) if !text.is_empty() => parts.push(Part::text(text.clone())),
        Some(Value::Array(items)) => {
            for item in items {
                if let Some(text) = item.get("text").and_then(Value::as_str) {
                    parts.push(Part::text(text));
                }
            }
        }
        _ => {}
    }
    let mut refused = false;
    if let Some(Value::String(refusal)) = message.get("refusal") {
        refused = true;
        parts.push(Part::text(refusal.clone()));
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for call in calls {
            let text = |pointer: &str| {
                call.pointer(pointer)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        InvalidResponse(format!("a tool call in the answer has no `{pointer}`"))
                    })
            };
            parts.push(Part::ToolCall {
                id: text("/id")?,
                name: text("/function/name")?,
                arguments: text("/function/arguments")?,
                cache: None,
            });
        }
    }
    let mut finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .and_then(finish_from_openai);
    if refused && finish == Some(FinishReason::Stop) {
        finish = Some(FinishReason::Refusal);
    }
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
        finish,
        stop_sequence: None,
        usage: value
            .get("usage")
            .map(usage_from_openai)
            .unwrap_or_default(),
        cache_write_tokens: None,
        created: value.get("created").and_then(Value::as_u64),
    })
}

/// Writes a `chat.completion` for an OpenAI client.
pub fn encode_response(response: &ChatResponse, created: u64) -> Vec<u8> {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    // A signature with no reasoning text (Gemini's) belongs to the call
    // that follows it.
    let mut signature: Option<&str> = None;
    for part in &response.parts {
        match part {
            Part::Text { text: piece, .. } => text.push_str(piece),
            Part::Reasoning {
                text: piece,
                signature: carried,
            } => {
                reasoning.push_str(piece);
                signature = carried.as_deref().filter(|_| piece.is_empty());
            }
            Part::ToolCall {
                id,
                name,
                arguments,
                ..
            } => tool_calls.push(json!({
                "id": id_with_signature(id, signature.take()),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })),
            Part::Image { .. } | Part::ToolResult { .. } | Part::RedactedReasoning { .. } => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert(
        "content".into(),
        if text.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            json!(text)
        },
    );
    message.insert("refusal".into(), Value::Null);
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), json!(reasoning));
    }
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let body = json!({
        "id": response.id,
        "object": "chat.completion",
        "created": response.created.unwrap_or(created),
        "model": response.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": response.finish.map(finish_to_openai),
        }],
        "usage": usage_to_openai(&response.usage),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Reads an OpenAI-compatible upstream's event stream into stream events.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    sse: SseDecoder,
    events: Vec<SseEvent>,
    started: bool,
    done: bool,
    /// Tool-call indexes already announced.
    tools_seen: Vec<u32>,
}

impl ChunkDecoder {
    pub fn new() -> ChunkDecoder {
        ChunkDecoder::default()
    }

    fn chunk(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        let chunk: Value = serde_json::from_str(data).map_err(|error| {
            StreamError::Invalid(format!(
                "the upstream sent a stream chunk that is not valid JSON: {error}"
            ))
        })?;
        if let Some(error) = chunk.get("error").filter(|error| !error.is_null()) {
            return Err(StreamError::Reported(UpstreamErrorBody::from_value(
                &json!({ "error": error }),
            )));
        }
        if !chunk.is_object() {
            return Err(StreamError::Invalid(
                "the upstream sent a stream chunk that is not an object".to_owned(),
            ));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                model: chunk
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        if let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| choices.first())
        {
            if let Some(delta) = choice.get("delta") {
                self.delta(delta, out)?;
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                let reason = finish_from_openai(reason).unwrap_or(FinishReason::Stop);
                out.push(StreamEvent::Finish {
                    reason,
                    stop_sequence: None,
                });
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
            out.push(StreamEvent::Usage {
                usage: usage_from_openai(usage),
                cache_write_tokens: None,
            });
        }
        Ok(())
    }

    fn delta(&mut self, delta: &Value, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        if let Some(Value::String(reasoning)) = delta.get("reasoning_content")
            && !reasoning.is_empty()
        {
            out.push(StreamEvent::ReasoningDelta(reasoning.clone()));
        }
        for key in ["content", "refusal"] {
            if let Some(Value::String(text)) = delta.get(key)
                && !text.is_empty()
            {
                out.push(StreamEvent::TextDelta(text.clone()));
            }
        }
        if let Some(Value::Array(calls)) = delta.get("tool_calls") {
            for call in calls {
                let index = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .and_then(|index| u32::try_from(index).ok())
                    .ok_or_else(|| {
                        StreamError::Invalid("a streamed tool call has no `index`".to_owned())
                    })?;
                if !self.tools_seen.contains(&index) {
                    self.tools_seen.push(index);
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: call
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        name: call
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    });
                }
                if let Some(Value::String(arguments)) = call.pointer("/function/arguments")
                    && !arguments.is_empty()
                {
                    out.push(StreamEvent::ToolCallDelta {
                        index,
                        arguments: arguments.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl StreamDecoder for ChunkDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        self.sse
            .feed(bytes, &mut self.events)
            .map_err(|error| StreamError::Invalid(format!("broken event stream: {error}")))?;
        let events = std::mem::take(&mut self.events);
        let mut result = Ok(());
        for event in &events {
            if self.done {
                break;
            }
            let data = event.data.trim();
            if data == "[DONE]" {
                self.done = true;
            } else if !data.is_empty() {
                result = self.chunk(data, out);
                if result.is_err() {
                    break;
                }
            }
        }
        self.events = events;
        self.events.clear();
        result
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// Writes stream events as `chat.completion.chunk` frames for an OpenAI
/// client. The final usage chunk is sent only when the client asked for
/// it (`stream_options.include_usage`).
#[derive(Debug)]
pub struct ChunkEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
    usage: Usage,
    /// A signature that came with no reasoning text (Gemini's), for the
    /// tool call that follows.
    signature: Option<String>,
    reasoning_text: bool,
}

impl ChunkEncoder {
    pub fn new(model: &str, created: u64, include_usage: bool) -> ChunkEncoder {
        ChunkEncoder {
            id: String::new(),
            model: model.to_owned(),
            created,
            include_usage,
            started: false,
            usage: Usage::default(),
            signature: None,
            reasoning_text: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, content: bool) -> Frame {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish,
            }],
        });
        Frame {
            bytes: frame_data(&serde_json::to_vec(&chunk).unwrap_or_default()),
            content,
        }
    }

    fn start(&mut self, out: &mut Vec<Frame>) {
        if !self.started {
            self.started = true;
            if self.id.is_empty() {
                self.id = format!("chatcmpl-{:016x}", self.created);
            }
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None, false));
        }
    }
}

impl StreamEncoder for ChunkEncoder {
    fn event(&mut self, event: StreamEvent, out: &mut Vec<Frame>) {
        if let StreamEvent::Start { id, model } = &event {
            if !id.is_empty() && !self.started {
                self.id.clone_from(id);
            }
            if !model.is_empty() && !self.started {
                self.model.clone_from(model);
            }
        }
        self.start(out);
        match event {
            StreamEvent::Start { .. } | StreamEvent::RedactedReasoning(_) => {}
            StreamEvent::ReasoningSignature(signature) => {
                if !std::mem::take(&mut self.reasoning_text) {
                    self.signature = Some(signature);
                }
            }
            StreamEvent::TextDelta(text) => {
                out.push(self.chunk(json!({"content": text}), None, true))
            }
            StreamEvent::ReasoningDelta(text) => {
                self.reasoning_text = true;
                out.push(self.chunk(json!({"reasoning_content": text}), None, true));
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                let id = id_with_signature(&id, self.signature.take().as_deref());
                out.push(self.chunk(
                    json!({"tool_calls": [{
                        "index": index,
                        "id": id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }]}),
                    None,
                    true,
                ));
            }
            StreamEvent::ToolCallDelta { index, arguments } => out.push(self.chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}),
                None,
                true,
            )),
            StreamEvent::Finish { reason, .. } => {
                out.push(self.chunk(json!({}), Some(finish_to_openai(reason)), true));
            }
            StreamEvent::Usage { usage, .. } => canon::merge_usage(&mut self.usage, &usage),
        }
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        self.start(out);
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_to_openai(&self.usage),
            });
            out.push(Frame {
                bytes: frame_data(&serde_json::to_vec(&chunk).unwrap_or_default()),
                content: false,
            });
        }
    }
}
