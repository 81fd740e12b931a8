//! Default answers in each vendor's wire format, chosen by the request's
//! path: Anthropic's Messages (`/v1/messages`), Gemini's
//! `:generateContent`/`:streamGenerateContent`/`:batchEmbedContents`, and
//! Bedrock's `/converse`, `/converse-stream` (AWS event-stream framing) and
//! Titan `/invoke`. OpenAI's own answers live in `lib.rs`.
//!
//! Every vendor answers the same conversation the same way, so that one
//! set of assertions holds whichever provider served a request:
//! - a plain request gets "Hello from the mock" (streamed as four pieces);
//! - a request with images gets "I see N image(s)", N counted in the
//!   vendor's own image blocks;
//! - a request with tools gets a call to its first tool with arguments
//!   `{"location":"Paris"}`;
//! - a request asking for JSON output gets `{"answer":"Paris"}`;
//! - a request whose text holds `TRIGGER_400`, `TRIGGER_429` or
//!   `TRIGGER_500` gets that status with the vendor's error body (a 429
//!   says `retry-after: 0`, so the deployment is not rested).
//!
//! Usage is the same everywhere once read the way the gateway reads it: 9
//! input tokens (2 of them from the cache) and 4 output tokens.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use switchboard_dialects::bedrock::{HeaderValue, encode_message};

/// The text of a plain answer, and its streamed pieces.
pub const REPLY: &str = "Hello from the mock";
pub const REPLY_PIECES: [&str; 4] = ["Hello", " from", " the", " mock"];
/// The arguments of the mock's tool call.
pub const TOOL_ARGUMENTS: &str = r#"{"location":"Paris"}"#;
/// The answer to a request for JSON output.
pub const JSON_REPLY: &str = r#"{"answer":"Paris"}"#;

/// What a request asks of the mock, whatever its dialect.
pub struct Ask {
    pub stream: bool,
    pub images: usize,
    pub tool: Option<String>,
    pub json: bool,
    pub trigger: Option<u16>,
}

impl Ask {
    fn text(&self) -> String {
        if self.json {
            JSON_REPLY.to_owned()
        } else if self.images > 0 {
            format!("I see {} image(s)", self.images)
        } else {
            REPLY.to_owned()
        }
    }

    fn pieces(&self) -> Vec<String> {
        if self.json || self.images > 0 {
            vec![self.text()]
        } else {
            REPLY_PIECES
                .iter()
                .map(|piece| (*piece).to_owned())
                .collect()
        }
    }
}

fn trigger(body: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(body);
    [400u16, 429, 500]
        .into_iter()
        .find(|status| text.contains(&format!("TRIGGER_{status}")))
}

fn count(value: &Value, matches: &dyn Fn(&Value) -> bool) -> usize {
    let own = usize::from(matches(value));
    own + match value {
        Value::Array(items) => items.iter().map(|item| count(item, matches)).sum(),
        Value::Object(map) => map.values().map(|item| count(item, matches)).sum(),
        _ => 0,
    }
}

fn json_response(status: u16, body: &Value, headers: &[(&str, &str)]) -> Response {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    // A rate limit that is already over, so that a deployment is not
    // rested for the next request of a test.
    if status == 429 {
        builder = builder.header("retry-after", "0");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Body::from(body.to_string()))
        .expect("valid response")
}

fn stream_of(content_type: &str, pieces: Vec<Bytes>) -> Response {
    let stream = futures_util::stream::iter(pieces.into_iter().map(Ok::<Bytes, std::io::Error>));
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(Body::from_stream(stream))
        .expect("valid response")
}

/// The vendor answer for `path`, or `None` when the path is OpenAI's.
pub fn answer(path: &str, body: &[u8]) -> Option<Response> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if path.ends_with("/v1/messages") {
        Some(anthropic(&request, trigger(body)))
    } else if path.contains(":generateContent") || path.contains(":streamGenerateContent") {
        Some(gemini(&request, trigger(body), path.contains(":stream")))
    } else if path.contains(":batchEmbedContents") {
        let count = request["requests"].as_array().map_or(0, Vec::len);
        let embeddings: Vec<Value> = (0..count)
            .map(|index| json!({"values": [0.25, -0.5, index as f64]}))
            .collect();
        Some(json_response(200, &json!({"embeddings": embeddings}), &[]))
    } else if path.ends_with("/converse") || path.ends_with("/converse-stream") {
        Some(bedrock(&request, trigger(body), path.ends_with("-stream")))
    } else if path.ends_with("/invoke") {
        Some(json_response(
            200,
            &json!({"embedding": [0.25, -0.5, 0.125], "inputTextTokenCount": 4}),
            &[],
        ))
    } else {
        None
    }
}

/// OpenAI: what the request asks, for the OpenAI answers in `lib.rs`.
pub fn openai_ask(request: &Value, body: &[u8]) -> Ask {
    Ask {
        stream: request["stream"] == json!(true),
        images: count(request, &|value| value["type"] == "image_url"),
        tool: request["tools"][0]["function"]["name"]
            .as_str()
            .filter(|_| request["tool_choice"] != "none")
            .map(str::to_owned),
        json: matches!(
            request["response_format"]["type"].as_str(),
            Some("json_object" | "json_schema")
        ),
        trigger: trigger(body),
    }
}

/// OpenAI's answer to an `Ask` with tools, images, JSON or a trigger.
pub fn openai_special(ask: &Ask, model: &str) -> Option<Response> {
    if let Some(status) = ask.trigger {
        let kind = match status {
            400 => "invalid_request_error",
            429 => "rate_limit_exceeded",
            _ => "server_error",
        };
        return Some(json_response(
            status,
            &json!({"error": {"message": format!("mock refused with {status}"), "type": kind, "param": null, "code": null}}),
            &[],
        ));
    }
    if ask.tool.is_none() && ask.images == 0 && !ask.json {
        return None;
    }
    let usage = json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13, "prompt_tokens_details": {"cached_tokens": 2}});
    if ask.stream {
        let chunk = |delta: Value, finish: Value| {
            Bytes::from(format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                       "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            ))
        };
        let mut pieces = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        let finish = if let Some(tool) = &ask.tool {
            pieces.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_mock_1", "type": "function", "function": {"name": tool, "arguments": ""}}]}),
                Value::Null,
            ));
            for fragment in [&TOOL_ARGUMENTS[..10], &TOOL_ARGUMENTS[10..]] {
                pieces.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                    Value::Null,
                ));
            }
            "tool_calls"
        } else {
            for piece in ask.pieces() {
                pieces.push(chunk(json!({"content": piece}), Value::Null));
            }
            "stop"
        };
        pieces.push(chunk(json!({}), json!(finish)));
        pieces.push(Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [], "usage": usage})
        )));
        pieces.push(Bytes::from_static(b"data: [DONE]\n\n"));
        return Some(stream_of("text/event-stream", pieces));
    }
    let (message, finish) = match &ask.tool {
        Some(tool) => (
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": "call_mock_1", "type": "function", "function": {"name": tool, "arguments": TOOL_ARGUMENTS}}]}),
            "tool_calls",
        ),
        None => (
            json!({"role": "assistant", "content": ask.text(), "refusal": null}),
            "stop",
        ),
    };
    Some(json_response(
        200,
        &json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}], "usage": usage}),
        &[],
    ))
}

fn anthropic(request: &Value, trigger: Option<u16>) -> Response {
    if let Some(status) = trigger {
        let kind = match status {
            400 => "invalid_request_error",
            429 => "rate_limit_error",
            _ => "api_error",
        };
        return json_response(
            status,
            &json!({"type": "error", "error": {"type": kind, "message": format!("mock refused with {status}")}}),
            &[],
        );
    }
    let ask = Ask {
        stream: request["stream"] == json!(true),
        images: count(request, &|value| value["type"] == "image"),
        tool: request["tools"][0]["name"]
            .as_str()
            .filter(|_| request["tool_choice"]["type"] != "none")
            .map(str::to_owned),
        json: request["output_config"]["format"]["type"] == "json_schema",
        trigger,
    };
    let model = request["model"].as_str().unwrap_or("unknown");
    let usage = json!({"input_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2, "output_tokens": 4});
    if !ask.stream {
        let (content, stop) = match &ask.tool {
            Some(tool) => (
                json!([{"type": "tool_use", "id": "toolu_mock_1", "name": tool, "input": {"location": "Paris"}}]),
                "tool_use",
            ),
            None => (json!([{"type": "text", "text": ask.text()}]), "end_turn"),
        };
        return json_response(
            200,
            &json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": content,
                    "stop_reason": stop, "stop_sequence": null, "usage": usage}),
            &[],
        );
    }
    let event = |kind: &str, data: Value| Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
    let mut pieces = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                   "content": [], "stop_reason": null, "stop_sequence": null,
                   "usage": {"input_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2, "output_tokens": 1}}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let stop = if let Some(tool) = &ask.tool {
        pieces.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_mock_1", "name": tool, "input": {}}}),
        ));
        for fragment in [&TOOL_ARGUMENTS[..10], &TOOL_ARGUMENTS[10..]] {
            pieces.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": fragment}}),
            ));
        }
        "tool_use"
    } else {
        pieces.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        for piece in ask.pieces() {
            pieces.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
        "end_turn"
    };
    pieces.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    pieces.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 4}}),
    ));
    pieces.push(event("message_stop", json!({"type": "message_stop"})));
    stream_of("text/event-stream", pieces)
}

fn gemini(request: &Value, trigger: Option<u16>, stream: bool) -> Response {
    if let Some(status) = trigger {
        let state = match status {
            400 => "INVALID_ARGUMENT",
            429 => "RESOURCE_EXHAUSTED",
            _ => "INTERNAL",
        };
        return json_response(
            status,
            &json!({"error": {"code": status, "message": format!("mock refused with {status}"), "status": state}}),
            &[],
        );
    }
    let ask = Ask {
        stream,
        images: count(request, &|value| {
            value.get("inlineData").is_some() || value.get("fileData").is_some()
        }),
        tool: request["tools"][0]["functionDeclarations"][0]["name"]
            .as_str()
            .filter(|_| request["toolConfig"]["functionCallingConfig"]["mode"] != "NONE")
            .map(str::to_owned),
        json: request["generationConfig"]["responseMimeType"] == "application/json",
        trigger,
    };
    let usage = json!({"promptTokenCount": 9, "candidatesTokenCount": 4, "cachedContentTokenCount": 2, "totalTokenCount": 13});
    let chunk = |parts: Value, finish: Option<&str>, usage: Option<&Value>| {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(finish) = finish {
            candidate["finishReason"] = json!(finish);
        }
        let mut value = json!({"candidates": [candidate], "modelVersion": "gemini-mock", "responseId": "gemini-mock-id"});
        if let Some(usage) = usage {
            value["usageMetadata"] = usage.clone();
        }
        value
    };
    let parts_of = |text: &str| match &ask.tool {
        Some(tool) => json!([{"functionCall": {"name": tool, "args": {"location": "Paris"}}}]),
        None => json!([{"text": text}]),
    };
    if !ask.stream {
        return json_response(
            200,
            &chunk(parts_of(&ask.text()), Some("STOP"), Some(&usage)),
            &[],
        );
    }
    let mut pieces = Vec::new();
    if ask.tool.is_some() {
        pieces.push(chunk(parts_of(""), Some("STOP"), Some(&usage)));
    } else {
        let texts = ask.pieces();
        let last = texts.len() - 1;
        for (index, piece) in texts.iter().enumerate() {
            if index == last {
                pieces.push(chunk(json!([{"text": piece}]), Some("STOP"), Some(&usage)));
            } else {
                pieces.push(chunk(json!([{"text": piece}]), None, None));
            }
        }
    }
    stream_of(
        "text/event-stream",
        pieces
            .into_iter()
            .map(|piece| Bytes::from(format!("data: {piece}\r\n\r\n")))
            .collect(),
    )
}

/// One AWS event-stream event message.
pub fn bedrock_event(kind: &str, payload: &Value) -> Bytes {
    Bytes::from(encode_message(
        &[
            (":event-type", HeaderValue::String(kind.to_owned())),
            (
                ":content-type",
                HeaderValue::String("application/json".to_owned()),
            ),
            (":message-type", HeaderValue::String("event".to_owned())),
        ],
        payload.to_string().as_bytes(),
    ))
}

fn bedrock(request: &Value, trigger: Option<u16>, stream: bool) -> Response {
    if let Some(status) = trigger {
        let kind = match status {
            400 => "ValidationException",
            429 => "ThrottlingException",
            _ => "InternalServerException",
        };
        return json_response(
            status,
            &json!({"message": format!("mock refused with {status}")}),
            &[("x-amzn-errortype", kind)],
        );
    }
    let ask = Ask {
        stream,
        images: count(request, &|value| value.get("image").is_some()),
        tool: request["toolConfig"]["tools"][0]["toolSpec"]["name"]
            .as_str()
            .map(str::to_owned),
        json: false,
        trigger,
    };
    let usage = json!({"inputTokens": 7, "outputTokens": 4, "totalTokens": 13, "cacheReadInputTokens": 2, "cacheWriteInputTokens": 0});
    if !ask.stream {
        let (content, stop) = match &ask.tool {
            Some(tool) => (
                json!([{"toolUse": {"toolUseId": "tooluse_mock_1", "name": tool, "input": {"location": "Paris"}}}]),
                "tool_use",
            ),
            None => (json!([{"text": ask.text()}]), "end_turn"),
        };
        return json_response(
            200,
            &json!({"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
                    "usage": usage, "metrics": {"latencyMs": 12}}),
            &[],
        );
    }
    let mut pieces = vec![bedrock_event("messageStart", &json!({"role": "assistant"}))];
    let stop = if let Some(tool) = &ask.tool {
        pieces.push(bedrock_event(
            "contentBlockStart",
            &json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_mock_1", "name": tool}}}),
        ));
        for fragment in [&TOOL_ARGUMENTS[..10], &TOOL_ARGUMENTS[10..]] {
            pieces.push(bedrock_event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": fragment}}}),
            ));
        }
        "tool_use"
    } else {
        for piece in ask.pieces() {
            pieces.push(bedrock_event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
            ));
        }
        "end_turn"
    };
    pieces.push(bedrock_event(
        "contentBlockStop",
        &json!({"contentBlockIndex": 0}),
    ));
    pieces.push(bedrock_event("messageStop", &json!({"stopReason": stop})));
    pieces.push(bedrock_event(
        "metadata",
        &json!({"usage": usage, "metrics": {"latencyMs": 12}}),
    ));
    stream_of("application/vnd.amazon.eventstream", pieces)
}
