//! Tests of the Anthropic dialect: request view, conversion, streams.
//!
//! The fixtures are shaped like the examples of Anthropic's Messages API
//! reference and guides (tool use, vision, prompt caching, extended
//! thinking, structured outputs) and like the transcripts of the
//! "Streaming Messages" guide, so that what is checked is what the SDKs
//! and the API really send. Decoding is checked against exact `canon`
//! values, encoding against exact JSON (byte for byte where the order of
//! our output is fixed). The cross-dialect cases (an OpenAI client served
//! by Claude, and back) live here too, since they are about what
//! Anthropic can and cannot carry.

use serde_json::{Value, json};
use switchboard_core::Usage;

use super::*;
use crate::canon::{
    self, ChatResponse, ErrorReport, FinishReason, Frame, ImageSource, Message, Part, Reasoning,
    ResponseFormat, Role, StreamDecoder as _, StreamEncoder as _, StreamError, StreamEvent, Tool,
    ToolChoice, Unsupported,
};
use crate::openai;

// ---- helpers ----------------------------------------------------------

fn canon_of(body: &str) -> canon::ChatRequest {
    let request = MessagesRequest::parse(body.as_bytes()).expect("the request parses");
    request_to_canonical(&request).expect("the request converts")
}

fn canon_of_openai(body: &str) -> canon::ChatRequest {
    let request = openai::ChatRequest::parse(body.as_bytes()).expect("the request parses");
    openai::canonical::request_to_canonical(&request).expect("the request converts")
}

fn parse_error(body: &str) -> openai::RequestError {
    MessagesRequest::parse(body.as_bytes()).expect_err("the request should be refused")
}

fn message(role: Role, parts: Vec<Part>) -> Message {
    Message {
        role,
        parts,
        name: None,
    }
}

fn tool_call(id: &str, name: &str, arguments: &str) -> Part {
    Part::ToolCall {
        id: id.to_owned(),
        name: name.to_owned(),
        arguments: arguments.to_owned(),
        cache: None,
    }
}

fn tool_result(call_id: &str, text: &str, is_error: bool) -> Part {
    Part::ToolResult {
        call_id: call_id.to_owned(),
        name: None,
        content: vec![Part::text(text)],
        is_error,
        cache: None,
    }
}

fn cached_text(text: &str) -> Part {
    Part::Text {
        text: text.to_owned(),
        cache: Some(json!({"type": "ephemeral"})),
    }
}

fn names(unsupported: &[Unsupported]) -> Vec<&str> {
    unsupported.iter().map(|name| name.0.as_str()).collect()
}

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("the body is JSON")
}

fn body_text(body: &[u8]) -> &str {
    std::str::from_utf8(body).expect("the body is UTF-8")
}

fn weather_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "The city and state, e.g. San Francisco, CA"
            },
            "unit": {
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "description": "The unit of temperature, either \"celsius\" or \"fahrenheit\""
            }
        },
        "required": ["location"]
    })
}

fn usage(input: u64, output: u64, cached: Option<u64>) -> Usage {
    Usage {
        input_tokens: Some(input),
        output_tokens: Some(output),
        cached_input_tokens: cached,
        reasoning_tokens: None,
        cache_write_tokens: None,
    }
}

/// `usage(..)` with `written` tokens written to the prompt cache.
fn usage_written(input: u64, output: u64, cached: Option<u64>, written: Option<u64>) -> Usage {
    Usage {
        cache_write_tokens: written,
        ..usage(input, output, cached)
    }
}

/// Feeds a stream in the given pieces, stopping at the first error.
fn decode_stream(
    input: &[u8],
    cuts: &[usize],
) -> (Vec<StreamEvent>, Result<(), StreamError>, bool) {
    let mut decoder = EventDecoder::new();
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(start, input.len());
        if let Err(error) = decoder.feed(&input[start..cut], &mut events) {
            return (events, Err(error), decoder.is_done());
        }
        start = cut;
    }
    (events, Ok(()), decoder.is_done())
}

fn decode_whole(input: &str) -> Vec<StreamEvent> {
    let (events, result, done) = decode_stream(input.as_bytes(), &[]);
    result.expect("the stream decodes");
    assert!(done, "the stream ends with message_stop");
    events
}

fn text(text: &str) -> StreamEvent {
    StreamEvent::TextDelta(text.to_owned())
}

fn arguments(index: u32, fragment: &str) -> StreamEvent {
    StreamEvent::ToolCallDelta {
        index,
        arguments: fragment.to_owned(),
    }
}

fn frames_text(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|frame| std::str::from_utf8(&frame.bytes).expect("frames are UTF-8"))
        .collect()
}

// ---- the request view ----------------------------------------------------

#[test]
fn the_reference_request_is_accepted() {
    let body = r#"{"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello, world"}]}"#;
    let request = MessagesRequest::parse(body.as_bytes()).unwrap();
    assert_eq!(request.model, "claude-sonnet-4-5");
    assert_eq!(request.max_tokens, Some(1024));
    assert!(!request.stream);
    assert_eq!(
        body_text(&request.encode("claude-sonnet-4-5-20250929")),
        r#"{"model":"claude-sonnet-4-5-20250929","max_tokens":1024,"messages":[{"role": "user", "content": "Hello, world"}]}"#
    );
    // Named as the upstream names it: the body as it came.
    assert_eq!(request.encode("claude-sonnet-4-5"), body.as_bytes());
    assert_eq!(API_VERSION, "2023-06-01");
}

#[test]
fn missing_required_fields_are_refused_as_anthropic_words_them() {
    let cases = [
        (
            r#"{"max_tokens":1024,"messages":[{"role":"user","content":"x"}]}"#,
            "model: Field required",
            "model",
        ),
        (
            r#"{"model":"","max_tokens":1024,"messages":[{"role":"user","content":"x"}]}"#,
            "model: Field required",
            "model",
        ),
        (
            r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"x"}]}"#,
            "max_tokens: Field required",
            "max_tokens",
        ),
        (
            r#"{"model":"claude-sonnet-4-5","max_tokens":1024}"#,
            "messages: Field required",
            "messages",
        ),
        (
            r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":"Hello"}"#,
            "messages: Input should be a valid list",
            "messages",
        ),
    ];
    for (body, message, param) in cases {
        let error = parse_error(body);
        assert_eq!(error.message, message, "{body}");
        assert_eq!(error.param.as_deref(), Some(param), "{body}");
    }
    for (body, param) in [
        (
            r#"{"model":"c","max_tokens":-1,"messages":[]}"#,
            "max_tokens",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[],"temperature":"hot"}"#,
            "temperature",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[],"top_k":1.5}"#,
            "top_k",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[],"stop_sequences":"END"}"#,
            "stop_sequences",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[],"stream":"yes"}"#,
            "stream",
        ),
    ] {
        assert_eq!(parse_error(body).param.as_deref(), Some(param), "{body}");
    }
    assert!(
        MessagesRequest::parse(br#"{"model":"c","max_tokens":1,"model":"d","messages":[]}"#)
            .is_err()
    );
}

#[test]
fn error_kinds_follow_anthropics_status_table() {
    let cases = [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (408, "timeout_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ];
    for (status, kind) in cases {
        assert_eq!(error_kind(status), kind, "status {status}");
    }
    assert_eq!(
        body_text(&error_body("overloaded_error", "Overloaded")),
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
    );
    assert_eq!(
        body_text(&error_body("invalid_request_error", "say \"hi\"")),
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"say \"hi\""}}"#
    );
}

// ---- requests: reading -----------------------------------------------------

/// Tool use, vision, prompt caching and extended thinking in one request,
/// each block as the guides show it.
const FULL_REQUEST: &str = r#"{
    "model": "claude-sonnet-4-5",
    "max_tokens": 20000,
    "system": [
        {"type": "text", "text": "You are an AI assistant tasked with analyzing literary works."},
        {"type": "text", "text": "<the entire contents of Pride and Prejudice>", "cache_control": {"type": "ephemeral"}}
    ],
    "thinking": {"type": "enabled", "budget_tokens": 16000},
    "tools": [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "The unit of temperature, either \"celsius\" or \"fahrenheit\""}
                },
                "required": ["location"]
            }
        }
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
    "metadata": {"user_id": "13803d75-b4b5-4c3e-b2a2-6f21399b021b"},
    "stop_sequences": ["\n\nHuman:"],
    "temperature": 1,
    "top_k": 5,
    "top_p": 0.7,
    "stream": true,
    "messages": [
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
            {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"}},
            {"type": "text", "text": "What is the weather like in San Francisco?", "cache_control": {"type": "ephemeral"}}
        ]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Let me analyze this step by step...", "signature": "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL...."},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB9URj2pLmN3kF8/dW5hR7xJ0aP1oLs9yTcMnKVf2wRpEGjH9XZaBt4UvDcPrQ..."},
            {"type": "text", "text": "<thinking>I need to use get_weather, and the user wants SF, which is likely San Francisco, CA.</thinking>"},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}},
            {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"location": "Oslo"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
            {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "ConnectionError: the weather service API is not available (HTTP 500)"}], "is_error": true},
            {"type": "text", "text": "And tomorrow?"}
        ]}
    ]
}"#;

const THINKING_SIGNATURE: &str =
    "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL....";
const REDACTED: &str = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB9URj2pLmN3kF8/dW5hR7xJ0aP1oLs9yTcMnKVf2wRpEGjH9XZaBt4UvDcPrQ...";

fn full_request_canon() -> canon::ChatRequest {
    canon::ChatRequest {
        model: "claude-sonnet-4-5".to_owned(),
        messages: vec![
            message(
                Role::System,
                vec![
                    Part::text("You are an AI assistant tasked with analyzing literary works."),
                    cached_text("<the entire contents of Pride and Prejudice>"),
                ],
            ),
            message(
                Role::User,
                vec![
                    Part::Image {
                        source: ImageSource::Base64 {
                            media_type: "image/jpeg".to_owned(),
                            data: "/9j/4AAQSkZJRg==".to_owned(),
                        },
                        detail: None,
                        cache: None,
                    },
                    Part::Image {
                        source: ImageSource::Url(
                            "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"
                                .to_owned(),
                        ),
                        detail: None,
                        cache: None,
                    },
                    cached_text("What is the weather like in San Francisco?"),
                ],
            ),
            message(
                Role::Assistant,
                vec![
                    Part::Reasoning {
                        text: "Let me analyze this step by step...".to_owned(),
                        signature: Some(THINKING_SIGNATURE.to_owned()),
                    },
                    Part::RedactedReasoning {
                        data: REDACTED.to_owned(),
                    },
                    Part::text(
                        "<thinking>I need to use get_weather, and the user wants SF, which is likely San Francisco, CA.</thinking>",
                    ),
                    tool_call(
                        "toolu_01A09q90qw90lq917835lq9",
                        "get_weather",
                        r#"{"location":"San Francisco, CA","unit":"celsius"}"#,
                    ),
                    tool_call("toolu_02", "get_weather", r#"{"location":"Oslo"}"#),
                ],
            ),
            message(
                Role::Tool,
                vec![
                    tool_result("toolu_01A09q90qw90lq917835lq9", "15 degrees", false),
                    tool_result(
                        "toolu_02",
                        "ConnectionError: the weather service API is not available (HTTP 500)",
                        true,
                    ),
                ],
            ),
            Message::text(Role::User, "And tomorrow?"),
        ],
        tools: vec![Tool {
            name: "get_weather".to_owned(),
            description: Some("Get the current weather in a given location".to_owned()),
            parameters: weather_schema(),
            strict: None,
            cache: None,
        }],
        tool_choice: Some(ToolChoice::Auto),
        parallel_tool_calls: Some(false),
        response_format: None,
        max_tokens: Some(20000),
        temperature: Some(1.0),
        top_p: Some(0.7),
        top_k: Some(5),
        stop: vec!["\n\nHuman:".to_owned()],
        seed: None,
        frequency_penalty: None,
        presence_penalty: None,
        user: Some("13803d75-b4b5-4c3e-b2a2-6f21399b021b".to_owned()),
        reasoning: Some(Reasoning {
            effort: None,
            budget_tokens: Some(16000),
            enabled: true,
        }),
        stream: true,
        stream_usage: true,
        unmapped: Vec::new(),
    }
}

#[test]
fn a_request_with_every_kind_of_block_reads_into_canon_exactly() {
    assert_eq!(canon_of(FULL_REQUEST), full_request_canon());
}

#[test]
fn the_streaming_tool_use_request_reads_into_canon() {
    let body = r#"{
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "tools": [
            {
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"}
                    },
                    "required": ["location"]
                }
            }
        ],
        "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "What is the weather like in San Francisco?"}],
        "stream": true
    }"#;
    let request = canon_of(body);
    assert_eq!(request.tool_choice, Some(ToolChoice::Required));
    assert_eq!(request.parallel_tool_calls, None);
    assert_eq!(request.max_tokens, Some(1024));
    assert!(request.stream && request.stream_usage);
    assert_eq!(
        request.messages,
        vec![Message::text(
            Role::User,
            "What is the weather like in San Francisco?"
        )]
    );
    assert_eq!(request.tools.len(), 1);
    for (choice, expected) in [
        (r#"{"type":"auto"}"#, ToolChoice::Auto),
        (r#"{"type":"none"}"#, ToolChoice::None),
        (
            r#"{"type":"tool","name":"get_weather"}"#,
            ToolChoice::Tool("get_weather".to_owned()),
        ),
    ] {
        let request = canon_of(&format!(
            r#"{{"model":"c","max_tokens":1,"messages":[],"tool_choice":{choice}}}"#
        ));
        assert_eq!(request.tool_choice, Some(expected));
    }
}

#[test]
fn structured_output_reads_as_a_json_schema_format() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "email": {"type": "string"},
            "plan_interest": {"type": "string"},
            "demo_requested": {"type": "boolean"}
        },
        "required": ["name", "email", "plan_interest", "demo_requested"],
        "additionalProperties": false
    });
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Extract the key information from this email: John Smith (john@example.com) is interested in our Enterprise plan and wants to schedule a demo for next Tuesday at 2pm."}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}}
    })
    .to_string();
    let request = canon_of(&body);
    assert_eq!(
        request.response_format,
        Some(ResponseFormat::JsonSchema {
            name: "response".to_owned(),
            schema: schema.clone(),
            strict: Some(true),
            description: None,
        })
    );
    assert!(request.unmapped.is_empty());
    // The earlier beta's spelling reads the same.
    let beta = json!({
        "model": "c", "max_tokens": 1, "messages": [],
        "output_format": {"type": "json_schema", "schema": schema}
    })
    .to_string();
    assert_eq!(canon_of(&beta).response_format, request.response_format);
    // And it is written back as `output_config.format`.
    let encoded = encode_request(&request, "claude-sonnet-4-5");
    assert_eq!(
        body_json(&encoded.body)["output_config"],
        json!({"format": {"type": "json_schema", "schema": schema}})
    );
    assert!(encoded.unsupported.is_empty());
}

#[test]
fn what_canon_cannot_hold_is_kept_by_name() {
    let body = r#"{
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "url", "url": "https://assets.anthropic.com/m/1cd9d098ac3e6467/original/Claude-3-Model-Card-October-Addendum.pdf"}},
                {"type": "image", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}},
                {"type": "text", "text": "Summarise.", "citations": [{"type": "char_location"}]}
            ]}
        ],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "low"},
        "service_tier": "auto",
        "container": null
    }"#;
    let request = canon_of(body);
    let paths: Vec<&str> = request
        .unmapped
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "messages.0.content.0 (document)",
            "messages.0.content.1.source",
            "messages.0.content.2.citations",
            "tools.0",
            "thinking",
            "output_config.effort",
            "service_tier",
        ]
    );
    assert_eq!(
        request.unmapped[3].1,
        json!({"type": "web_search_20250305", "name": "web_search", "max_uses": 5})
    );
    assert_eq!(
        request.messages,
        vec![Message::text(Role::User, "Summarise.")]
    );
    // A server tool only Anthropic runs is reported by name when the
    // request goes elsewhere.
    let encoded = openai::canonical::encode_request(&request, "gpt-4o");
    assert_eq!(names(&encoded.unsupported), paths);
}

#[test]
fn malformed_requests_are_refused_with_the_parameter() {
    for (body, param) in [
        (
            r#"{"model":"c","max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#,
            "messages",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[{"role":"user","content":7}]}"#,
            "messages",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_use","name":"f","input":{}}]}]}"#,
            "messages",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[],"system":[{"type":"image","source":{"type":"url","url":"u"}}]}"#,
            "system",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[],"system":5}"#,
            "system",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[],"tool_choice":{"type":"sometimes"}}"#,
            "tool_choice",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[],"tool_choice":{"type":"tool"}}"#,
            "tool_choice",
        ),
        (
            r#"{"model":"c","max_tokens":1,"messages":[],"tools":[{"input_schema":{}}]}"#,
            "tools",
        ),
    ] {
        let request = MessagesRequest::parse(body.as_bytes()).expect("the view accepts it");
        let error = request_to_canonical(&request).expect_err(body);
        assert_eq!(error.param.as_deref(), Some(param), "{body}");
    }
}

// ---- requests: writing -------------------------------------------------

#[test]
fn a_request_read_from_anthropic_is_written_back_the_same() {
    let encoded = encode_request(&full_request_canon(), "claude-sonnet-4-5-20250929");
    assert!(encoded.unsupported.is_empty(), "{:?}", encoded.unsupported);
    let mut expected: Value = serde_json::from_str(FULL_REQUEST).unwrap();
    expected["model"] = json!("claude-sonnet-4-5-20250929");
    // Numbers keep their meaning, not their spelling; a tool result's
    // text is always written as a list of blocks.
    expected["temperature"] = json!(1.0);
    expected["messages"][2]["content"][0]["content"] =
        json!([{"type": "text", "text": "15 degrees"}]);
    assert_eq!(body_json(&encoded.body), expected);
}

#[test]
fn an_openai_tool_conversation_is_written_as_anthropic_turns_byte_for_byte() {
    let body = r#"{
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris and Oslo?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/map.png", "detail": "high"}}
            ]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "9C"},
            {"role": "developer", "content": "Answer in French."}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "parallel_tool_calls": false,
        "temperature": 0.5,
        "stop": "END",
        "user": "u-1",
        "stream": true
    }"#;
    let encoded = encode_request(&canon_of_openai(body), "claude-sonnet-4-5");
    assert!(encoded.unsupported.is_empty(), "{:?}", encoded.unsupported);
    let expected = concat!(
        r#"{"model":"claude-sonnet-4-5","max_tokens":4096,"#,
        r#""system":[{"type":"text","text":"You are terse."},{"type":"text","text":"Answer in French."}],"#,
        r#""messages":["#,
        r#"{"role":"user","content":[{"type":"text","text":"Weather in Paris and Oslo?"},"#,
        r#"{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},"#,
        r#"{"type":"image","source":{"type":"url","url":"https://example.com/map.png"}}]},"#,
        r#"{"role":"assistant","content":["#,
        r#"{"type":"tool_use","id":"call_1","name":"get_weather","input":{"city":"Paris"}},"#,
        r#"{"type":"tool_use","id":"call_2","name":"get_weather","input":{"city":"Oslo"}}]},"#,
        r#"{"role":"user","content":["#,
        r#"{"type":"tool_result","tool_use_id":"call_1","content":[{"type":"text","text":"18C"}]},"#,
        r#"{"type":"tool_result","tool_use_id":"call_2","content":[{"type":"text","text":"9C"}]}]}],"#,
        r#""metadata":{"user_id":"u-1"},"stop_sequences":["END"],"stream":true,"temperature":0.5,"#,
        r#""tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],"#,
        r#""tool_choice":{"type":"auto","disable_parallel_tool_use":true}}"#,
    );
    assert_eq!(body_text(&encoded.body), expected);
}

#[test]
fn one_system_prompt_is_a_string_and_max_tokens_has_a_default() {
    let request = canon::ChatRequest {
        model: "gpt-4o".to_owned(),
        messages: vec![
            Message::text(Role::System, "You are a helpful assistant."),
            Message::text(Role::User, "Hello!"),
        ],
        ..canon::ChatRequest::default()
    };
    let encoded = encode_request(&request, "claude-haiku-4-5");
    assert_eq!(
        body_text(&encoded.body),
        r#"{"model":"claude-haiku-4-5","max_tokens":4096,"system":"You are a helpful assistant.","messages":[{"role":"user","content":[{"type":"text","text":"Hello!"}]}]}"#
    );
    assert_eq!(DEFAULT_MAX_TOKENS, 4096);
    let with_tokens = canon::ChatRequest {
        max_tokens: Some(7),
        ..request
    };
    assert_eq!(
        body_json(&encode_request(&with_tokens, "c").body)["max_tokens"],
        json!(7)
    );
}

#[test]
fn parallel_tool_calls_false_disables_parallel_tool_use() {
    let tool = Tool {
        name: "f".to_owned(),
        description: None,
        parameters: json!({"type": "object"}),
        strict: None,
        cache: None,
    };
    let base = canon::ChatRequest {
        model: "m".to_owned(),
        messages: vec![Message::text(Role::User, "x")],
        tools: vec![tool],
        parallel_tool_calls: Some(false),
        ..canon::ChatRequest::default()
    };
    let choice = |request: &canon::ChatRequest| {
        body_json(&encode_request(request, "c").body)["tool_choice"].clone()
    };
    assert_eq!(
        choice(&base),
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    for (tool_choice, expected) in [
        (
            ToolChoice::Auto,
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (
            ToolChoice::Required,
            json!({"type": "any", "disable_parallel_tool_use": true}),
        ),
        (
            ToolChoice::Tool("f".to_owned()),
            json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true}),
        ),
        // Anthropic's `none` choice has no such field (and no call can be
        // made in parallel when none may be made at all).
        (ToolChoice::None, json!({"type": "none"})),
    ] {
        let request = canon::ChatRequest {
            tool_choice: Some(tool_choice),
            ..base.clone()
        };
        assert_eq!(choice(&request), expected);
    }
    let parallel = canon::ChatRequest {
        parallel_tool_calls: Some(true),
        ..base.clone()
    };
    assert_eq!(choice(&parallel), Value::Null);
    let no_tools = canon::ChatRequest {
        tools: Vec::new(),
        ..base
    };
    assert_eq!(choice(&no_tools), Value::Null);
    // The OpenAI spelling reaches the same place.
    let from_openai = canon_of_openai(
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required","parallel_tool_calls":false}"#,
    );
    assert_eq!(
        choice(&from_openai),
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
}

#[test]
fn reasoning_goes_back_only_with_its_signature() {
    let request = canon::ChatRequest {
        model: "m".to_owned(),
        messages: vec![
            Message::text(Role::User, "27 * 453?"),
            message(
                Role::Assistant,
                vec![
                    Part::Reasoning {
                        text: "from another model".to_owned(),
                        signature: None,
                    },
                    Part::Reasoning {
                        text: "Let me solve this step by step".to_owned(),
                        signature: Some(
                            "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...".to_owned(),
                        ),
                    },
                    Part::RedactedReasoning {
                        data: "EmwKAhgB".to_owned(),
                    },
                    Part::text(""),
                    Part::text("12,231"),
                ],
            ),
        ],
        ..canon::ChatRequest::default()
    };
    let encoded = encode_request(&request, "c");
    assert!(encoded.unsupported.is_empty());
    assert_eq!(
        body_json(&encoded.body)["messages"][1],
        json!({"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Let me solve this step by step", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."},
            {"type": "redacted_thinking", "data": "EmwKAhgB"},
            {"type": "text", "text": "12,231"}
        ]})
    );
    // And a thinking block read from Anthropic comes back with it.
    let back = canon_of(&body_json(&encoded.body).to_string());
    assert_eq!(
        back.messages[1].parts[0],
        Part::Reasoning {
            text: "Let me solve this step by step".to_owned(),
            signature: Some("EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...".to_owned()),
        }
    );
}

#[test]
fn images_map_between_data_urls_and_base64_sources_both_ways() {
    let openai_body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":[
        {"type":"image_url","image_url":{"url":"data:image/webp;base64,UklGRh4AAABXRUJQ"}},
        {"type":"image_url","image_url":{"url":"https://example.com/cat.gif"}}
    ]}]}"#;
    let encoded = encode_request(&canon_of_openai(openai_body), "claude");
    let anthropic = body_json(&encoded.body);
    assert_eq!(
        anthropic["messages"][0]["content"],
        json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRh4AAABXRUJQ"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.gif"}}
        ])
    );
    let request = canon_of(&anthropic.to_string());
    let back = openai::canonical::encode_request(&request, "gpt-4o");
    assert_eq!(
        body_json(&back.body)["messages"][0]["content"],
        json!([
            {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRh4AAABXRUJQ"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.gif"}}
        ])
    );
}

#[test]
fn what_anthropic_cannot_carry_is_reported_by_name() {
    let openai_body = r#"{
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "x", "name": "alice"}],
        "seed": 42,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.5,
        "reasoning_effort": "high",
        "response_format": {"type": "json_object"},
        "logprobs": true
    }"#;
    let encoded = encode_request(&canon_of_openai(openai_body), "claude");
    assert_eq!(
        names(&encoded.unsupported),
        [
            "logprobs",
            "messages[].name",
            "reasoning_effort",
            "response_format",
            "seed",
            "frequency_penalty",
            "presence_penalty",
        ]
    );
    let body = body_json(&encoded.body);
    for absent in [
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "thinking",
        "output_config",
    ] {
        assert!(body.get(absent).is_none(), "{absent} should not be sent");
    }
    // A tool call whose arguments are not a JSON object cannot be a
    // `tool_use` block.
    let request = canon::ChatRequest {
        messages: vec![message(Role::Assistant, vec![tool_call("c1", "f", "[1]")])],
        ..canon::ChatRequest::default()
    };
    assert_eq!(
        names(&encode_request(&request, "c").unsupported),
        ["tool call `c1` arguments that are not a JSON object"]
    );
    // And the other way: `top_k` has no OpenAI spelling.
    let anthropic = canon_of(
        r#"{"model":"c","max_tokens":5,"top_k":40,"messages":[{"role":"user","content":"x"}]}"#,
    );
    assert_eq!(
        names(&openai::canonical::encode_request(&anthropic, "gpt-4o").unsupported),
        ["top_k"]
    );
    // Thinking turned off goes through as such.
    let off = canon_of_openai(
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"reasoning_effort":"none"}"#,
    );
    let encoded = encode_request(&off, "c");
    assert!(encoded.unsupported.is_empty());
    assert_eq!(
        body_json(&encoded.body)["thinking"],
        json!({"type": "disabled"})
    );
}

#[test]
fn tool_definitions_keep_strict_and_cache_markers() {
    let request = canon::ChatRequest {
        tools: vec![Tool {
            name: "get_weather".to_owned(),
            description: Some("Weather".to_owned()),
            parameters: json!({"type": "object", "additionalProperties": false}),
            strict: Some(true),
            cache: Some(json!({"type": "ephemeral"})),
        }],
        ..canon::ChatRequest::default()
    };
    let encoded = encode_request(&request, "c");
    assert_eq!(
        body_json(&encoded.body)["tools"],
        json!([{
            "name": "get_weather",
            "description": "Weather",
            "input_schema": {"type": "object", "additionalProperties": false},
            "strict": true,
            "cache_control": {"type": "ephemeral"}
        }])
    );
    assert_eq!(
        canon_of(&body_json(&encoded.body).to_string()).tools,
        request.tools
    );
}

// ---- answers -------------------------------------------------------------

/// The Messages API reference's response example.
const REFERENCE_MESSAGE: &str = r#"{
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "Hi! My name is Claude.", "citations": null}],
    "model": "claude-sonnet-4-5-20250929",
    "stop_reason": "end_turn",
    "stop_sequence": null,
    "usage": {
        "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 2051},
        "cache_creation_input_tokens": 2051,
        "cache_read_input_tokens": 2051,
        "input_tokens": 2095,
        "output_tokens": 503,
        "server_tool_use": {"web_search_requests": 0},
        "service_tier": "standard"
    }
}"#;

#[test]
fn the_reference_message_decodes_with_cache_tokens_counted_as_input() {
    assert_eq!(
        decode_response(REFERENCE_MESSAGE.as_bytes()).unwrap(),
        ChatResponse {
            id: "msg_013Zva2CMHLNnXjNJJKqJ2EF".to_owned(),
            model: "claude-sonnet-4-5-20250929".to_owned(),
            parts: vec![Part::text("Hi! My name is Claude.")],
            finish: Some(FinishReason::Stop),
            stop_sequence: None,
            // 2095 uncached + 2051 read + 2051 written.
            usage: usage_written(6197, 503, Some(2051), Some(2051)),
            cache_write_tokens: Some(2051),
            created: None,
        }
    );
}

#[test]
fn usage_round_trips_back_to_anthropics_accounting_exactly() {
    let response = decode_response(REFERENCE_MESSAGE.as_bytes()).unwrap();
    let body = body_json(&encode_response(&response));
    assert_eq!(
        body["usage"],
        json!({
            "input_tokens": 2095,
            "cache_creation_input_tokens": 2051,
            "cache_read_input_tokens": 2051,
            "output_tokens": 503
        })
    );
    // Without cache activity there are no cache fields.
    let plain = ChatResponse {
        usage: usage(10, 25, None),
        cache_write_tokens: None,
        ..response
    };
    assert_eq!(
        body_json(&encode_response(&plain))["usage"],
        json!({"input_tokens": 10, "output_tokens": 25})
    );
    // OpenAI's cached tokens are part of its prompt tokens too.
    let openai_body = r#"{"id":"c","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920}}}"#;
    let from_openai = openai::canonical::decode_response(openai_body.as_bytes()).unwrap();
    assert_eq!(
        body_json(&encode_response(&from_openai))["usage"],
        json!({
            "input_tokens": 86,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 1920,
            "output_tokens": 300
        })
    );
}

#[test]
fn the_tool_use_response_decodes_exactly() {
    let body = r#"{
        "id": "msg_01Aq9w938a90dw8q",
        "type": "message",
        "model": "claude-sonnet-4-5",
        "stop_reason": "tool_use",
        "role": "assistant",
        "content": [
            {"type": "text", "text": "<thinking>I need to call the get_weather function, and the user wants SF, which is likely San Francisco, CA.</thinking>"},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}}
        ],
        "usage": {"input_tokens": 472, "output_tokens": 89}
    }"#;
    assert_eq!(
        decode_response(body.as_bytes()).unwrap(),
        ChatResponse {
            id: "msg_01Aq9w938a90dw8q".to_owned(),
            model: "claude-sonnet-4-5".to_owned(),
            parts: vec![
                Part::text(
                    "<thinking>I need to call the get_weather function, and the user wants SF, which is likely San Francisco, CA.</thinking>"
                ),
                tool_call(
                    "toolu_01A09q90qw90lq917835lq9",
                    "get_weather",
                    r#"{"location":"San Francisco, CA","unit":"celsius"}"#
                ),
            ],
            finish: Some(FinishReason::ToolCalls),
            stop_sequence: None,
            usage: usage(472, 89, None),
            cache_write_tokens: None,
            created: None,
        }
    );
}

#[test]
fn thinking_blocks_decode_with_their_signatures() {
    let body = json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "Let me analyze this step by step...", "signature": THINKING_SIGNATURE},
            {"type": "redacted_thinking", "data": REDACTED},
            {"type": "text", "text": "Based on my analysis..."}
        ],
        "stop_reason": "stop_sequence", "stop_sequence": "\n\nHuman:",
        "usage": {"input_tokens": 1, "output_tokens": 2}
    })
    .to_string();
    let response = decode_response(body.as_bytes()).unwrap();
    assert_eq!(
        response.parts,
        vec![
            Part::Reasoning {
                text: "Let me analyze this step by step...".to_owned(),
                signature: Some(THINKING_SIGNATURE.to_owned()),
            },
            Part::RedactedReasoning {
                data: REDACTED.to_owned(),
            },
            Part::text("Based on my analysis..."),
        ]
    );
    assert_eq!(response.finish, Some(FinishReason::StopSequence));
    assert_eq!(response.stop_sequence.as_deref(), Some("\n\nHuman:"));
    // Encoding writes the same blocks back.
    assert_eq!(
        body_json(&encode_response(&response))["content"],
        body_json(body.as_bytes())["content"]
    );
}

#[test]
fn answers_that_are_not_messages_are_invalid() {
    for body in [
        "{",
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        r#"{"type":"message","content":"text"}"#,
        r#"{"type":"message","content":[{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}]}"#,
        r#"{"type":"message","content":[{"text":"untyped"}]}"#,
    ] {
        assert!(
            decode_response(body.as_bytes()).is_err(),
            "{body} should be refused"
        );
    }
}

#[test]
fn encode_response_writes_a_message_byte_for_byte() {
    let response = ChatResponse {
        id: "chatcmpl-abc123".to_owned(),
        model: "gpt-4o-mini".to_owned(),
        parts: vec![
            Part::Reasoning {
                text: "Hmm.".to_owned(),
                signature: None,
            },
            Part::text("Let me check."),
            tool_call(
                "call_abc123",
                "get_current_weather",
                "{\n\"location\": \"Boston, MA\"\n}",
            ),
            tool_call("call_2", "broken", "{not json"),
        ],
        finish: Some(FinishReason::ContentFilter),
        stop_sequence: None,
        usage: usage(82, 17, None),
        cache_write_tokens: None,
        created: Some(1699896916),
    };
    let expected = concat!(
        r#"{"id":"chatcmpl-abc123","type":"message","role":"assistant","model":"gpt-4o-mini","content":["#,
        r#"{"type":"thinking","thinking":"Hmm.","signature":""},"#,
        r#"{"type":"text","text":"Let me check."},"#,
        r#"{"type":"tool_use","id":"call_abc123","name":"get_current_weather","input":{"location":"Boston, MA"}},"#,
        r#"{"type":"tool_use","id":"call_2","name":"broken","input":"{not json"}],"#,
        r#""stop_reason":"refusal","stop_sequence":null,"usage":{"input_tokens":82,"output_tokens":17}}"#,
    );
    assert_eq!(body_text(&encode_response(&response)), expected);
}

#[test]
fn stop_reasons_map_both_ways() {
    for (reason, wire, back) in [
        (FinishReason::Stop, "end_turn", FinishReason::Stop),
        (
            FinishReason::StopSequence,
            "stop_sequence",
            FinishReason::StopSequence,
        ),
        (FinishReason::Length, "max_tokens", FinishReason::Length),
        (FinishReason::ToolCalls, "tool_use", FinishReason::ToolCalls),
        (
            FinishReason::ContentFilter,
            "refusal",
            FinishReason::Refusal,
        ),
        (FinishReason::Refusal, "refusal", FinishReason::Refusal),
        (FinishReason::Pause, "pause_turn", FinishReason::Pause),
    ] {
        let response = ChatResponse {
            id: "m".to_owned(),
            model: "c".to_owned(),
            parts: Vec::new(),
            finish: Some(reason),
            stop_sequence: None,
            usage: Usage::default(),
            cache_write_tokens: None,
            created: None,
        };
        let body = encode_response(&response);
        assert_eq!(body_json(&body)["stop_reason"], json!(wire));
        assert_eq!(decode_response(&body).unwrap().finish, Some(back));
    }
    let window = r#"{"type":"message","content":[],"stop_reason":"model_context_window_exceeded"}"#;
    assert_eq!(
        decode_response(window.as_bytes()).unwrap().finish,
        Some(FinishReason::Length)
    );
}

#[test]
fn usage_beyond_any_real_count_saturates_instead_of_overflowing() {
    let body = r#"{"type":"message","content":[],"usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":1,"cache_creation_input_tokens":1,"output_tokens":1}}"#;
    let response = decode_response(body.as_bytes()).unwrap();
    assert_eq!(response.usage.input_tokens, Some(u64::MAX));
    let absurd = ChatResponse {
        usage: Usage {
            input_tokens: Some(5),
            output_tokens: Some(u64::MAX),
            cached_input_tokens: Some(u64::MAX),
            reasoning_tokens: None,
            cache_write_tokens: Some(u64::MAX),
        },
        cache_write_tokens: Some(u64::MAX),
        ..response
    };
    assert_eq!(
        body_json(&encode_response(&absurd))["usage"]["input_tokens"],
        json!(0)
    );
    let openai = body_json(&openai::canonical::encode_response(&absurd, 0));
    assert_eq!(openai["usage"]["total_tokens"], json!(u64::MAX));
}

// ---- streams: decoding ---------------------------------------------------

/// "Basic streaming request" of the Streaming Messages guide.
const BASIC_STREAM: &str = r#"event: message_start
data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}

"#;

/// "Streaming request with tool use" of the Streaming Messages guide.
const TOOL_USE_STREAM: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":","}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" let"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'s"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" check"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" the"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" weather"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" for"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" Francisco"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":","}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" CA"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":":"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" Francisc"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"o,"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" CA\""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":", "}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"unit\": \"fah"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"renheit\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"#;

/// "Streaming request with extended thinking" of the Streaming Messages
/// guide.
const THINKING_STREAM: &str = r#"event: message_start
data: {"type": "message_start", "message": {"id": "msg_01...", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me solve this step by step:\n\n1. First break down 27 * 453"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "\n2. 453 = 400 + 50 + 3"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: content_block_start
data: {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "27 * 453 = 12,231"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 1}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}}

event: message_stop
data: {"type": "message_stop"}

"#;

#[test]
fn the_basic_stream_decodes_exactly() {
    assert_eq!(
        decode_whole(BASIC_STREAM),
        vec![
            StreamEvent::Start {
                id: "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY".to_owned(),
                model: "claude-sonnet-4-5-20250929".to_owned(),
            },
            StreamEvent::Usage {
                usage: usage(25, 1, None),
                cache_write_tokens: None,
            },
            text("Hello"),
            text("!"),
            StreamEvent::Usage {
                usage: usage(25, 15, None),
                cache_write_tokens: None,
            },
            StreamEvent::Finish {
                reason: FinishReason::Stop,
                stop_sequence: None,
            },
        ]
    );
}

#[test]
fn the_tool_use_stream_decodes_exactly() {
    let mut expected = vec![
        StreamEvent::Start {
            id: "msg_014p7gG3wDgGV9EUtLvnow3U".to_owned(),
            model: "claude-sonnet-4-5-20250929".to_owned(),
        },
        StreamEvent::Usage {
            usage: usage(472, 2, None),
            cache_write_tokens: None,
        },
    ];
    for piece in [
        "Okay",
        ",",
        " let",
        "'s",
        " check",
        " the",
        " weather",
        " for",
        " San",
        " Francisco",
        ",",
        " CA",
        ":",
    ] {
        expected.push(text(piece));
    }
    expected.push(StreamEvent::ToolCallStart {
        index: 0,
        id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".to_owned(),
        name: "get_weather".to_owned(),
    });
    // The empty first fragment carries nothing and is not passed on.
    for fragment in [
        "{\"location\":",
        " \"San",
        " Francisc",
        "o,",
        " CA\"",
        ", ",
        "\"unit\": \"fah",
        "renheit\"}",
    ] {
        expected.push(arguments(0, fragment));
    }
    expected.push(StreamEvent::Usage {
        usage: usage(472, 89, None),
        cache_write_tokens: None,
    });
    expected.push(StreamEvent::Finish {
        reason: FinishReason::ToolCalls,
        stop_sequence: None,
    });
    let events = decode_whole(TOOL_USE_STREAM);
    assert_eq!(events, expected);
    let arguments: String = events
        .iter()
        .filter_map(|event| match event {
            StreamEvent::ToolCallDelta { arguments, .. } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
}

#[test]
fn the_thinking_stream_decodes_exactly() {
    assert_eq!(
        decode_whole(THINKING_STREAM),
        vec![
            StreamEvent::Start {
                id: "msg_01...".to_owned(),
                model: "claude-sonnet-4-5-20250929".to_owned(),
            },
            StreamEvent::ReasoningDelta(
                "Let me solve this step by step:\n\n1. First break down 27 * 453".to_owned()
            ),
            StreamEvent::ReasoningDelta("\n2. 453 = 400 + 50 + 3".to_owned()),
            StreamEvent::ReasoningSignature(
                "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...".to_owned()
            ),
            text("27 * 453 = 12,231"),
            StreamEvent::Finish {
                reason: FinishReason::Stop,
                stop_sequence: None,
            },
        ]
    );
}

#[test]
fn the_transcripts_decode_the_same_split_at_every_byte() {
    for stream in [BASIC_STREAM, TOOL_USE_STREAM, THINKING_STREAM] {
        let whole = decode_whole(stream);
        let every_byte: Vec<usize> = (1..stream.len()).collect();
        let (split, result, done) = decode_stream(stream.as_bytes(), &every_byte);
        result.unwrap();
        assert!(done);
        assert_eq!(split, whole);
        // CRLF line ends, as some proxies rewrite them, read the same.
        let crlf = stream.replace('\n', "\r\n");
        let (crlf_events, result, _) = decode_stream(crlf.as_bytes(), &[]);
        result.unwrap();
        assert_eq!(crlf_events, whole);
    }
}

#[test]
fn usage_with_cache_activity_counts_cached_tokens_as_input() {
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":200,\"cache_read_input_tokens\":3000,\"output_tokens\":1}}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":64}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let events = decode_whole(stream);
    assert_eq!(
        events[1..],
        [
            StreamEvent::Usage {
                usage: usage_written(3210, 1, Some(3000), Some(200)),
                cache_write_tokens: Some(200),
            },
            StreamEvent::Usage {
                usage: usage_written(3210, 64, Some(3000), Some(200)),
                cache_write_tokens: Some(200),
            },
            StreamEvent::Finish {
                reason: FinishReason::Length,
                stop_sequence: None,
            },
        ]
    );
}

#[test]
fn an_error_event_is_reported() {
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: error\n",
        "data: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n",
    );
    let (events, result, done) = decode_stream(stream.as_bytes(), &[]);
    assert!(!done);
    assert_eq!(events.len(), 2, "what came before the error is kept");
    assert_eq!(
        result,
        Err(StreamError::Reported(ErrorReport {
            message: Some("Overloaded".to_owned()),
            kind: Some("overloaded_error".to_owned()),
            param: None,
            code: None,
        }))
    );
}

#[test]
fn unknown_events_blocks_and_deltas_end_the_stream_as_invalid() {
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\"}}\n\n";
    for bad in [
        "event: surprise\ndata: {\"type\":\"surprise\"}\n\n",
        "data: {\"no_type\":true}\n\n",
        "data: not json\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"server_tool_use\",\"id\":\"srvtoolu_1\",\"name\":\"web_search\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"mystery_delta\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
    ] {
        let stream = format!("{start}{bad}");
        let (events, result, done) = decode_stream(stream.as_bytes(), &[]);
        assert!(
            matches!(result, Err(StreamError::Invalid(_))),
            "{bad:?} gave {result:?}"
        );
        assert!(!done);
        assert_eq!(events.len(), 1, "{bad:?}");
    }
    // A stop reason newer than the gateway ends the turn as a plain stop.
    let stop = format!(
        "{start}event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"bored\"}}}}\n\n"
    );
    let (events, result, _) = decode_stream(stop.as_bytes(), &[]);
    assert_eq!(result, Ok(()));
    assert!(events.contains(&StreamEvent::Finish {
        reason: FinishReason::Stop,
        stop_sequence: None
    }));
    // Citations annotate text already sent and are passed over.
    let citation = format!(
        "{start}data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"citations_delta\",\"citation\":{{}}}}}}\n\n"
    );
    assert!(decode_stream(citation.as_bytes(), &[]).1.is_ok());
}

#[test]
fn events_after_message_stop_are_not_read() {
    let stream = format!("{BASIC_STREAM}event: surprise\ndata: {{\"type\":\"surprise\"}}\n\n");
    let (events, result, done) = decode_stream(stream.as_bytes(), &[]);
    assert!(result.is_ok() && done);
    assert_eq!(events, decode_whole(BASIC_STREAM));
}

#[test]
fn a_tool_call_that_starts_with_its_input_whole_keeps_it() {
    let stream = concat!(
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\"}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{\"a\":1}}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"g\",\"input\":{}}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    assert_eq!(
        decode_whole(stream),
        vec![
            StreamEvent::Start {
                id: "m".to_owned(),
                model: "c".to_owned(),
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "toolu_1".to_owned(),
                name: "f".to_owned(),
            },
            arguments(0, r#"{"a":1}"#),
            StreamEvent::ToolCallStart {
                index: 1,
                id: "toolu_2".to_owned(),
                name: "g".to_owned(),
            },
            arguments(1, "{}"),
        ]
    );
}

// ---- streams: encoding ---------------------------------------------------

#[test]
fn the_encoder_writes_the_documented_event_sequence_byte_for_byte() {
    // The id and model are the encoder's own (the upstream named none);
    // usage known before the first content goes into `message_start`.
    let mut encoder = EventEncoder::new("claude-sonnet-4-5", "msg_gateway");
    let mut frames = Vec::new();
    let events = [
        StreamEvent::Usage {
            usage: usage(25, 1, None),
            cache_write_tokens: None,
        },
        text("Hello"),
        text("!"),
        StreamEvent::ToolCallStart {
            index: 0,
            id: "toolu_1".to_owned(),
            name: "get_weather".to_owned(),
        },
        arguments(0, "{\"location\":\"SF\"}"),
        StreamEvent::Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        },
        StreamEvent::Usage {
            usage: Usage {
                input_tokens: None,
                output_tokens: Some(15),
                cached_input_tokens: None,
                reasoning_tokens: None,
                cache_write_tokens: None,
            },
            cache_write_tokens: None,
        },
    ];
    for event in events {
        encoder.event(event, &mut frames);
    }
    encoder.finish(&mut frames);
    let expected = [
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_gateway","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
        r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}"#,
        r#"event: content_block_stop
data: {"type":"content_block_stop","index":0}"#,
        r#"event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}"#,
        r#"event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":\"SF\"}"}}"#,
        r#"event: content_block_stop
data: {"type":"content_block_stop","index":1}"#,
        r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":25,"output_tokens":15}}"#,
        r#"event: message_stop
data: {"type":"message_stop"}"#,
    ];
    let actual: Vec<&str> = frames
        .iter()
        .map(|frame| {
            std::str::from_utf8(&frame.bytes)
                .unwrap()
                .strip_suffix("\n\n")
                .expect("each frame ends its event")
        })
        .collect();
    assert_eq!(actual, expected);
    let content: Vec<bool> = frames.iter().map(|frame| frame.content).collect();
    assert_eq!(
        content,
        [
            false, false, true, true, false, true, true, false, true, false
        ]
    );
}

#[test]
fn reasoning_and_redacted_reasoning_get_blocks_of_their_own() {
    let mut encoder = EventEncoder::new("c", "msg_1");
    let mut frames = Vec::new();
    for event in [
        StreamEvent::ReasoningDelta("Think".to_owned()),
        StreamEvent::ReasoningSignature("sig".to_owned()),
        StreamEvent::RedactedReasoning("opaque".to_owned()),
        text("Answer"),
        StreamEvent::Finish {
            reason: FinishReason::StopSequence,
            stop_sequence: Some("END".to_owned()),
        },
    ] {
        encoder.event(event, &mut frames);
    }
    encoder.finish(&mut frames);
    let stream = frames_text(&frames);
    assert!(stream.contains(r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#), "{stream}");
    assert!(stream.contains(r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"opaque"}}"#), "{stream}");
    assert!(
        stream.contains(r#""delta":{"stop_reason":"stop_sequence","stop_sequence":"END"}"#),
        "{stream}"
    );
    assert_eq!(
        decode_whole(&stream),
        vec![
            StreamEvent::Start {
                id: "msg_1".to_owned(),
                model: "c".to_owned(),
            },
            StreamEvent::Usage {
                usage: usage(0, 0, None),
                cache_write_tokens: None,
            },
            StreamEvent::ReasoningDelta("Think".to_owned()),
            StreamEvent::ReasoningSignature("sig".to_owned()),
            StreamEvent::RedactedReasoning("opaque".to_owned()),
            text("Answer"),
            StreamEvent::Usage {
                usage: usage(0, 0, None),
                cache_write_tokens: None,
            },
            StreamEvent::Finish {
                reason: FinishReason::StopSequence,
                stop_sequence: Some("END".to_owned()),
            },
        ]
    );
}

#[test]
fn interleaved_fragments_of_parallel_calls_name_their_own_blocks() {
    let mut encoder = EventEncoder::new("c", "msg_1");
    let mut frames = Vec::new();
    for event in [
        StreamEvent::ToolCallStart {
            index: 0,
            id: "call_1".to_owned(),
            name: "f".to_owned(),
        },
        StreamEvent::ToolCallStart {
            index: 1,
            id: "call_2".to_owned(),
            name: "g".to_owned(),
        },
        arguments(0, "{\"a\":"),
        arguments(1, "{}"),
        arguments(0, "1}"),
        // A fragment of a call never started has nowhere to go.
        arguments(7, "{}"),
    ] {
        encoder.event(event, &mut frames);
    }
    encoder.finish(&mut frames);
    let events = decode_whole(&frames_text(&frames));
    let collected = |index: u32| -> String {
        events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::ToolCallDelta {
                    index: call,
                    arguments,
                } if *call == index => Some(arguments.as_str()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(collected(0), "{\"a\":1}");
    assert_eq!(collected(1), "{}");
    assert_eq!(collected(7), "");
    // Without a finish reason the answer ended its turn.
    assert!(events.contains(&StreamEvent::Finish {
        reason: FinishReason::Stop,
        stop_sequence: None,
    }));
}

#[test]
fn an_empty_answer_still_has_a_complete_event_sequence() {
    let mut encoder = EventEncoder::new("c", "msg_1");
    let mut frames = Vec::new();
    encoder.finish(&mut frames);
    let kinds: Vec<&str> = frames
        .iter()
        .map(|frame| {
            std::str::from_utf8(&frame.bytes)
                .unwrap()
                .lines()
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "event: message_start",
            "event: message_delta",
            "event: message_stop"
        ]
    );
}

// ---- relaying to an Anthropic client ------------------------------------------

/// "Streaming request with web search tool use" of the Streaming Messages
/// guide (its elided search results left out).
const WEB_SEARCH_STREAM: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01G...","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":2679,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":3}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"I'll check the current weather in New York City for you"}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"server_tool_use","id":"srvtoolu_014hJH82Qum7Td6UV8gDXThB","name":"web_search","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"query"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"weather"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" NY"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"C to"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"day\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1 }

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"web_search_tool_result","tool_use_id":"srvtoolu_014hJH82Qum7Td6UV8gDXThB","content":[{"type":"web_search_result","title":"Weather in New York City in May 2025 (New York) - detailed Weather Forecast for a month","url":"https://world-weather.info/forecast/usa/new_york/may-2025/","encrypted_content":"Ev0DCioIAxgCIiQ3NmU4ZmI4OC1k...","page_age":null}]}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: content_block_start
data: {"type":"content_block_start","index":3,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":"Here's the current weather information for New York"}}

event: content_block_delta
data: {"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":" City:\n\n# Weather"}}

event: content_block_stop
data: {"type":"content_block_stop","index":3}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":10682,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":510,"server_tool_use":{"web_search_requests":1}}}

event: message_stop
data: {"type":"message_stop"}

"#;

#[test]
fn a_relaying_decoder_passes_server_tool_blocks_on_as_content() {
    let mut decoder = EventDecoder::relaying();
    let mut events = Vec::new();
    decoder
        .feed(WEB_SEARCH_STREAM.as_bytes(), &mut events)
        .unwrap();
    assert!(decoder.is_done());
    let usage_event = |input, output| StreamEvent::Usage {
        usage: usage_written(input, output, Some(0), Some(0)),
        cache_write_tokens: Some(0),
    };
    // Every server-tool event counts as part of the answer (an empty text
    // delta), without inventing text.
    let mut expected = vec![
        StreamEvent::Start {
            id: "msg_01G...".to_owned(),
            model: "claude-sonnet-4-5-20250929".to_owned(),
        },
        usage_event(2679, 3),
        text("I'll check the current weather in New York City for you"),
        text("."),
    ];
    expected.extend(std::iter::repeat_n(text(""), 1 + 7 + 1));
    expected.extend([
        text("Here's the current weather information for New York"),
        text(" City:\n\n# Weather"),
        usage_event(10682, 510),
        StreamEvent::Finish {
            reason: FinishReason::Stop,
            stop_sequence: None,
        },
    ]);
    assert_eq!(events, expected);
}

#[test]
fn a_translating_decoder_refuses_server_tool_blocks_by_name() {
    let (events, result, done) = decode_stream(WEB_SEARCH_STREAM.as_bytes(), &[]);
    assert!(!done);
    assert_eq!(events.len(), 4, "{events:?}");
    match result {
        Err(StreamError::Invalid(message)) => {
            assert!(message.contains("`server_tool_use`"), "{message}")
        }
        other => panic!("expected the block to be refused, got {other:?}"),
    }
}

#[test]
fn cache_creation_tokens_are_carried_on_the_usage_for_billing() {
    let body = r#"{"type":"message","content":[],"usage":{"input_tokens":10,"cache_creation_input_tokens":300,"cache_read_input_tokens":0,"output_tokens":2}}"#;
    let response = decode_response(body.as_bytes()).unwrap();
    assert_eq!(response.usage.cache_write_tokens, Some(300));
    assert_eq!(response.usage.input_tokens, Some(310));
    assert_eq!(
        response.cache_write_tokens,
        response.usage.cache_write_tokens
    );
    // A pass-through answer is billed from `check_message`'s usage.
    assert_eq!(
        check_message(body.as_bytes()).unwrap().0.cache_write_tokens,
        Some(300)
    );
    // No cache activity: the count is unknown, not zero.
    let plain = r#"{"type":"message","content":[],"usage":{"input_tokens":10,"output_tokens":2}}"#;
    assert_eq!(
        check_message(plain.as_bytes())
            .unwrap()
            .0
            .cache_write_tokens,
        None
    );
}

#[test]
fn check_message_reads_usage_and_leaves_server_tool_blocks_alone() {
    assert_eq!(
        check_message(REFERENCE_MESSAGE.as_bytes()).unwrap().0,
        usage_written(6197, 503, Some(2051), Some(2051))
    );
    let with_server_tools = json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "weather NYC today"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01", "content": []},
            {"type": "text", "text": "Sunny."}
        ],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 10682, "output_tokens": 510, "server_tool_use": {"web_search_requests": 1}}
    })
    .to_string();
    let (read, info) = check_message(with_server_tools.as_bytes()).unwrap();
    assert_eq!(read, usage(10682, 510, None));
    assert_eq!(info.id.as_deref(), Some("msg_01"));
    assert_eq!(info.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(info.finish_reasons, ["end_turn"]);
    assert!(decode_response(with_server_tools.as_bytes()).is_err());
    for body in [
        "[]",
        r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
        r#"{"type":"message","content":"text"}"#,
    ] {
        assert!(check_message(body.as_bytes()).is_err(), "{body}");
    }
}
