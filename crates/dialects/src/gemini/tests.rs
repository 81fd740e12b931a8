//! Tests of the Gemini dialect: request bodies written exactly, answers
//! and streams read into exact `canon` values (fixtures shaped like the
//! examples of Google's API reference, in `fixtures/`), and the refusals.

use proptest::prelude::*;
use serde_json::{Value, json};
use switchboard_core::Usage;

use super::*;
use crate::canon::{
    self, ChatRequest, ChatResponse, ErrorReport, FinishReason, ImageSource, Message, Part,
    Reasoning, ResponseFormat, Role, StreamDecoder as _, StreamError, StreamEvent, Tool,
    ToolChoice, Unsupported,
};

const GENERATE_TEXT: &str = include_str!("fixtures/generate_text.json");
const GENERATE_FUNCTION_CALLS: &str = include_str!("fixtures/generate_function_calls.json");
const GENERATE_THINKING: &str = include_str!("fixtures/generate_thinking.json");
const BLOCKED_PROMPT: &str = include_str!("fixtures/blocked_prompt.json");
const ERROR: &str = include_str!("fixtures/error.json");
const STREAM_TEXT: &str = include_str!("fixtures/stream_text.sse");
const STREAM_THINKING_TOOLS: &str = include_str!("fixtures/stream_thinking_tools.sse");

// ---- helpers ----------------------------------------------------------

fn user(text: &str) -> Message {
    Message::text(Role::User, text)
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

fn tool_result(call_id: &str, name: Option<&str>, text: &str, is_error: bool) -> Part {
    Part::ToolResult {
        call_id: call_id.to_owned(),
        name: name.map(str::to_owned),
        content: vec![Part::text(text)],
        is_error,
        cache: None,
    }
}

fn signature_only(signature: &str) -> Part {
    Part::Reasoning {
        text: String::new(),
        signature: Some(signature.to_owned()),
    }
}

fn request(messages: Vec<Message>) -> ChatRequest {
    ChatRequest {
        model: "gemini-2.5-flash".to_owned(),
        messages,
        ..ChatRequest::default()
    }
}

fn body_text(encoded: &canon::Encoded) -> &str {
    std::str::from_utf8(&encoded.body).expect("the body is UTF-8")
}

fn body_value(encoded: &canon::Encoded) -> Value {
    serde_json::from_slice(&encoded.body).expect("the body is JSON")
}

fn unsupported(names: &[&str]) -> Vec<Unsupported> {
    names
        .iter()
        .map(|name| Unsupported((*name).to_owned()))
        .collect()
}

/// Feeds `input` cut at `cuts`, then `finish`es; the events, or the first error.
fn stream_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<StreamEvent>, Result<(), StreamError>) {
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts {
        let cut = cut.clamp(start, input.len());
        if let Err(error) = decoder.feed(&input[start..cut], &mut events) {
            return (events, Err(error));
        }
        start = cut;
    }
    let result = decoder
        .feed(&input[start..], &mut events)
        .and_then(|()| decoder.finish(&mut events));
    (events, result)
}

fn stream_whole(input: &str) -> Vec<StreamEvent> {
    let (events, result) = stream_in_pieces(input.as_bytes(), &[]);
    assert_eq!(result, Ok(()));
    events
}

/// Feeds one byte at a time; also checks `is_done` turns true no earlier
/// than the chunk with the finish reason.
fn stream_byte_by_byte(input: &str) -> Vec<StreamEvent> {
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    for byte in input.as_bytes() {
        decoder
            .feed(std::slice::from_ref(byte), &mut events)
            .expect("the stream decodes");
        let finished = events
            .iter()
            .any(|event| matches!(event, StreamEvent::Finish { .. }));
        assert_eq!(decoder.is_done(), finished);
    }
    events
}

fn usage(input: u64, output: Option<u64>, cached: Option<u64>, reasoning: Option<u64>) -> Usage {
    Usage {
        input_tokens: Some(input),
        output_tokens: output,
        cached_input_tokens: cached,
        reasoning_tokens: reasoning,
        cache_write_tokens: None,
    }
}

fn response_with(parts: Value, finish_reason: &str) -> String {
    json!({
        "candidates": [{
            "content": {"parts": parts, "role": "model"},
            "finishReason": finish_reason,
            "index": 0
        }],
        "modelVersion": "gemini-2.0-flash",
        "responseId": "r"
    })
    .to_string()
}

// ---- encode_request ---------------------------------------------------

#[test]
fn a_single_user_turn_is_written_byte_for_byte() {
    let encoded = encode_request(&request(vec![user("Write a haiku about rain.")]));
    assert_eq!(
        body_text(&encoded),
        r#"{"contents":[{"role":"user","parts":[{"text":"Write a haiku about rain."}]}]}"#
    );
    assert_eq!(encoded.unsupported, vec![]);
}

#[test]
fn a_full_conversation_maps_every_part() {
    let mut chat = request(vec![
        Message::text(Role::System, "You are a travel assistant."),
        user("Weather in Lisbon and the time there? Here is a photo:"),
        message(
            Role::User,
            vec![
                Part::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "iVBORw0KGgo=".into(),
                    },
                    detail: Some("high".into()),
                    cache: None,
                },
                Part::Image {
                    source: ImageSource::Url("https://example.com/a/tram.JPG?size=large".into()),
                    detail: None,
                    cache: None,
                },
            ],
        ),
        message(
            Role::Assistant,
            vec![
                Part::Reasoning {
                    text: "Two lookups are needed.".into(),
                    signature: Some("c2lnLXRob3VnaHQ=".into()),
                },
                Part::text("Let me check."),
                signature_only("c2lnLWNhbGw="),
                tool_call("call_0", "get_weather", r#"{"city":"Lisbon"}"#),
                tool_call("call_1", "get_time", r#"{"timezone":"Europe/Lisbon"}"#),
            ],
        ),
        message(
            Role::Tool,
            vec![tool_result("call_0", None, r#"{"celsius":21}"#, false)],
        ),
        message(
            Role::Tool,
            vec![tool_result("call_1", Some("get_time"), "14:05", false)],
        ),
        Message::text(Role::System, "Answer briefly."),
        user("Thanks!"),
    ]);
    chat.tools = vec![Tool {
        name: "get_weather".into(),
        description: Some("Current weather in a city".into()),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": false
        }),
        strict: Some(true),
        cache: None,
    }];
    chat.tool_choice = Some(ToolChoice::Auto);
    chat.max_tokens = Some(1024);
    chat.temperature = Some(0.7);
    chat.top_p = Some(0.95);
    chat.top_k = Some(40);
    chat.stop = vec!["END".into()];
    chat.seed = Some(7);
    chat.presence_penalty = Some(0.5);
    chat.frequency_penalty = Some(-0.25);
    chat.reasoning = Some(Reasoning {
        effort: None,
        budget_tokens: Some(2048),
        enabled: true,
    });

    let encoded = encode_request(&chat);
    assert_eq!(encoded.unsupported, vec![]);
    assert_eq!(
        body_value(&encoded),
        json!({
            "contents": [
                {"role": "user", "parts": [
                    {"text": "Weather in Lisbon and the time there? Here is a photo:"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/a/tram.JPG?size=large"}}
                ]},
                {"role": "model", "parts": [
                    {"text": "Two lookups are needed.", "thought": true, "thoughtSignature": "c2lnLXRob3VnaHQ="},
                    {"text": "Let me check."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Lisbon"}}, "thoughtSignature": "c2lnLWNhbGw="},
                    {"functionCall": {"name": "get_time", "args": {"timezone": "Europe/Lisbon"}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"celsius": 21}}},
                    {"functionResponse": {"name": "get_time", "response": {"content": "14:05"}}},
                    {"text": "Thanks!"}
                ]}
            ],
            "systemInstruction": {"parts": [
                {"text": "You are a travel assistant."},
                {"text": "Answer briefly."}
            ]},
            "tools": [{"functionDeclarations": [{
                "name": "get_weather",
                "description": "Current weather in a city",
                "parametersJsonSchema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "additionalProperties": false
                }
            }]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
            "generationConfig": {
                "stopSequences": ["END"],
                "maxOutputTokens": 1024,
                "temperature": 0.7,
                "topP": 0.95,
                "topK": 40,
                "seed": 7,
                "presencePenalty": 0.5,
                "frequencyPenalty": -0.25,
                "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": true}
            }
        })
    );
}

#[test]
fn the_field_order_is_fixed() {
    let mut chat = request(vec![Message::text(Role::System, "Be terse."), user("Hi")]);
    chat.tools = vec![Tool {
        name: "noop".into(),
        description: None,
        parameters: Value::Null,
        strict: None,
        cache: None,
    }];
    chat.tool_choice = Some(ToolChoice::Tool("noop".into()));
    chat.max_tokens = Some(5);
    assert_eq!(
        body_text(&encode_request(&chat)),
        concat!(
            r#"{"contents":[{"role":"user","parts":[{"text":"Hi"}]}],"#,
            r#""systemInstruction":{"parts":[{"text":"Be terse."}]},"#,
            r#""tools":[{"functionDeclarations":[{"name":"noop"}]}],"#,
            r#""toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["noop"]}},"#,
            r#""generationConfig":{"maxOutputTokens":5}}"#
        )
    );
}

#[test]
fn tool_choice_maps_to_function_calling_modes() {
    for (choice, expected) in [
        (ToolChoice::Auto, json!({"mode": "AUTO"})),
        (ToolChoice::None, json!({"mode": "NONE"})),
        (ToolChoice::Required, json!({"mode": "ANY"})),
        (
            ToolChoice::Tool("lookup".into()),
            json!({"mode": "ANY", "allowedFunctionNames": ["lookup"]}),
        ),
    ] {
        let mut chat = request(vec![user("x")]);
        chat.tool_choice = Some(choice);
        let body = body_value(&encode_request(&chat));
        assert_eq!(body["toolConfig"]["functionCallingConfig"], expected);
    }
}

#[test]
fn response_formats_ask_for_json() {
    let mut chat = request(vec![user("x")]);
    chat.response_format = Some(ResponseFormat::Text);
    assert_eq!(
        body_value(&encode_request(&chat)).get("generationConfig"),
        None
    );

    chat.response_format = Some(ResponseFormat::JsonObject);
    assert_eq!(
        body_value(&encode_request(&chat))["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );

    chat.response_format = Some(ResponseFormat::JsonSchema {
        name: "person".into(),
        schema: json!({"type": "object", "properties": {"name": {"type": "string"}}}),
        strict: Some(true),
        description: None,
    });
    let encoded = encode_request(&chat);
    assert_eq!(encoded.unsupported, vec![]);
    assert_eq!(
        body_value(&encoded)["generationConfig"],
        json!({
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {"name": {"type": "string"}}}
        })
    );
}

#[test]
fn reasoning_maps_to_thinking_config() {
    let thinking = |reasoning: Reasoning| {
        let mut chat = request(vec![user("x")]);
        chat.reasoning = Some(reasoning);
        let encoded = encode_request(&chat);
        (
            body_value(&encoded)["generationConfig"]["thinkingConfig"].clone(),
            encoded.unsupported,
        )
    };
    assert_eq!(
        thinking(Reasoning {
            effort: None,
            budget_tokens: Some(512),
            enabled: false,
        }),
        (json!({"thinkingBudget": 0}), vec![])
    );
    assert_eq!(
        thinking(Reasoning {
            effort: Some("high".into()),
            budget_tokens: Some(8192),
            enabled: true,
        }),
        (
            json!({"thinkingBudget": 8192, "includeThoughts": true}),
            vec![]
        )
    );
    assert_eq!(
        thinking(Reasoning {
            effort: None,
            budget_tokens: None,
            enabled: true,
        }),
        (json!({"includeThoughts": true}), vec![])
    );
    assert_eq!(
        thinking(Reasoning {
            effort: Some("low".into()),
            budget_tokens: None,
            enabled: true,
        }),
        (
            json!({"includeThoughts": true}),
            unsupported(&["reasoning_effort"])
        )
    );
}

#[test]
fn parameters_gemini_cannot_honour_are_named() {
    let mut chat = request(vec![
        Message {
            role: Role::User,
            parts: vec![Part::text("hi")],
            name: Some("alice".into()),
        },
        message(
            Role::Assistant,
            vec![
                Part::RedactedReasoning {
                    data: "opaque".into(),
                },
                tool_call("c1", "lookup", "[1, 2]"),
                tool_call("c2", "lookup", "not json"),
            ],
        ),
        message(
            Role::Tool,
            vec![tool_result("unknown-id", None, "done", false)],
        ),
    ]);
    chat.parallel_tool_calls = Some(false);
    chat.user = Some("user-1234".into());
    chat.unmapped = vec![("logprobs".into(), json!(true)), ("n".into(), json!(2))];
    let encoded = encode_request(&chat);
    assert_eq!(
        encoded.unsupported,
        unsupported(&[
            "name",
            "redacted_thinking",
            "tool_calls.function.arguments",
            "tool_call_id",
            "parallel_tool_calls",
            "user",
            "logprobs",
            "n",
        ])
    );
    // The body stays valid: calls without arguments, the id as the name.
    assert_eq!(
        body_value(&encoded)["contents"],
        json!([
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "lookup"}},
                {"functionCall": {"name": "lookup"}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "unknown-id", "response": {"content": "done"}}}
            ]}
        ])
    );

    chat.parallel_tool_calls = Some(true);
    assert!(
        !encode_request(&chat)
            .unsupported
            .contains(&Unsupported("parallel_tool_calls".into()))
    );
}

#[test]
fn cache_markers_and_hints_are_dropped_silently() {
    let marker = Some(json!({"type": "ephemeral"}));
    let mut chat = request(vec![
        message(
            Role::System,
            vec![Part::Text {
                text: "Long shared context.".into(),
                cache: marker.clone(),
            }],
        ),
        message(
            Role::User,
            vec![
                Part::Text {
                    text: "Question".into(),
                    cache: marker.clone(),
                },
                Part::Image {
                    source: ImageSource::Url("gs://bucket/scan".into()),
                    detail: Some("low".into()),
                    cache: marker.clone(),
                },
            ],
        ),
    ]);
    chat.tools = vec![Tool {
        name: "t".into(),
        description: None,
        parameters: json!({"type": "object"}),
        strict: Some(true),
        cache: marker,
    }];
    let encoded = encode_request(&chat);
    assert_eq!(encoded.unsupported, vec![]);
    assert_eq!(
        body_text(&encoded),
        concat!(
            r#"{"contents":[{"role":"user","parts":[{"text":"Question"},{"fileData":{"fileUri":"gs://bucket/scan"}}]}],"#,
            r#""systemInstruction":{"parts":[{"text":"Long shared context."}]},"#,
            r#""tools":[{"functionDeclarations":[{"name":"t","parametersJsonSchema":{"type":"object"}}]}]}"#
        )
    );
}

#[test]
fn tool_results_are_objects_named_after_their_call() {
    let chat = request(vec![
        message(
            Role::Assistant,
            vec![tool_call("call_a", "search", r#"{"q":"rust"}"#)],
        ),
        message(
            Role::Tool,
            vec![
                tool_result("call_a", None, "[1,2,3]", false),
                tool_result("call_a", None, "timeout after 30 s", true),
                Part::ToolResult {
                    call_id: "call_a".into(),
                    name: Some("search".into()),
                    content: vec![
                        Part::text("see image"),
                        Part::Image {
                            source: ImageSource::Base64 {
                                media_type: "image/webp".into(),
                                data: "UklGRg==".into(),
                            },
                            detail: None,
                            cache: None,
                        },
                    ],
                    is_error: false,
                    cache: None,
                },
            ],
        ),
    ]);
    let encoded = encode_request(&chat);
    assert_eq!(encoded.unsupported, vec![]);
    assert_eq!(
        body_value(&encoded)["contents"][1],
        json!({"role": "user", "parts": [
            {"functionResponse": {"name": "search", "response": {"content": "[1,2,3]"}}},
            {"functionResponse": {"name": "search", "response": {"error": "timeout after 30 s"}}},
            {"functionResponse": {"name": "search", "response": {"content": "see image"}}},
            {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}}
        ]})
    );
}

#[test]
fn signatures_go_back_on_the_part_they_came_with() {
    let chat = request(vec![
        user("Plan my day"),
        message(
            Role::Assistant,
            vec![
                signature_only("c2lnLWE="),
                tool_call("call_0", "calendar", "{}"),
            ],
        ),
        message(Role::Tool, vec![tool_result("call_0", None, "{}", false)]),
        message(
            Role::Assistant,
            vec![Part::text("You are free."), signature_only("c2lnLWI=")],
        ),
        // A signature with nothing after it in its turn stays in that turn.
        message(Role::Assistant, vec![signature_only("c2lnLWM=")]),
        user("Great"),
    ]);
    let encoded = encode_request(&chat);
    assert_eq!(encoded.unsupported, vec![]);
    assert_eq!(
        body_text(&encoded),
        concat!(
            r#"{"contents":[{"role":"user","parts":[{"text":"Plan my day"}]},"#,
            r#"{"role":"model","parts":[{"functionCall":{"name":"calendar","args":{}},"thoughtSignature":"c2lnLWE="}]},"#,
            r#"{"role":"user","parts":[{"functionResponse":{"name":"calendar","response":{}}}]},"#,
            r#"{"role":"model","parts":[{"text":"You are free."},{"text":"","thoughtSignature":"c2lnLWI="},{"text":"","thoughtSignature":"c2lnLWM="}]},"#,
            r#"{"role":"user","parts":[{"text":"Great"}]}]}"#
        )
    );
}

#[test]
fn empty_messages_and_empty_text_are_left_out() {
    let chat = request(vec![
        user("a"),
        message(Role::Assistant, vec![Part::text("")]),
        message(Role::User, vec![]),
        user("b"),
    ]);
    assert_eq!(
        body_text(&encode_request(&chat)),
        r#"{"contents":[{"role":"user","parts":[{"text":"a"},{"text":"b"}]}]}"#
    );
}

#[test]
fn nothing_is_sent_as_null() {
    let mut chat = request(vec![user("x")]);
    chat.temperature = Some(f64::NAN);
    chat.reasoning = None;
    let text = body_text(&encode_request(&chat)).to_owned();
    assert!(!text.contains("null"), "{text}");
    assert_eq!(
        text,
        r#"{"contents":[{"role":"user","parts":[{"text":"x"}]}]}"#
    );
}

#[test]
fn image_urls_get_a_mime_type_only_when_the_extension_is_clear() {
    let file_data = |url: &str| {
        let chat = request(vec![message(
            Role::User,
            vec![Part::Image {
                source: ImageSource::Url(url.into()),
                detail: None,
                cache: None,
            }],
        )]);
        body_value(&encode_request(&chat))["contents"][0]["parts"][0]["fileData"].clone()
    };
    assert_eq!(
        file_data("https://x.test/cat.png"),
        json!({"mimeType": "image/png", "fileUri": "https://x.test/cat.png"})
    );
    assert_eq!(
        file_data("https://x.test/photo.jpeg#top")["mimeType"],
        json!("image/jpeg")
    );
    assert_eq!(file_data("gs://b/o.heic")["mimeType"], json!("image/heic"));
    assert_eq!(
        file_data("https://x.test/image?id=3.png.html").get("mimeType"),
        None
    );
    assert_eq!(file_data("https://x.test.png/render").get("mimeType"), None);
    assert_eq!(
        file_data("https://generativelanguage.googleapis.com/v1beta/files/abc-123").get("mimeType"),
        None
    );
}

// ---- decode_response ----------------------------------------------------

#[test]
fn a_text_answer_is_read_exactly() {
    assert_eq!(
        decode_response(GENERATE_TEXT.as_bytes()),
        Ok(ChatResponse {
            id: "Zm9yIHRlc3RzIG9ubHk".into(),
            model: "gemini-2.0-flash".into(),
            parts: vec![Part::text("The capital of Australia is Canberra.")],
            finish: Some(FinishReason::Stop),
            stop_sequence: None,
            usage: usage(9, Some(8), None, None),
            cache_write_tokens: None,
            created: None,
        })
    );
}

#[test]
fn function_calls_get_ids_and_finish_with_tool_calls() {
    assert_eq!(
        decode_response(GENERATE_FUNCTION_CALLS.as_bytes()),
        Ok(ChatResponse {
            id: "cGFyYWxsZWwgY2FsbHM".into(),
            model: "gemini-3-flash-preview".into(),
            parts: vec![
                signature_only("c2lnbmF0dXJlLW9uZQ=="),
                tool_call("call_0", "get_weather", r#"{"city":"Lisbon"}"#),
                tool_call("call_1", "get_time", r#"{"timezone":"Europe/Lisbon"}"#),
            ],
            finish: Some(FinishReason::ToolCalls),
            stop_sequence: None,
            usage: usage(120, Some(142), Some(64), Some(112)),
            cache_write_tokens: None,
            created: None,
        })
    );
}

#[test]
fn thoughts_are_reasoning_parts() {
    let response = decode_response(GENERATE_THINKING.as_bytes()).unwrap();
    assert_eq!(
        response.parts,
        vec![
            Part::Reasoning {
                text: "**Counting the letters**\n\nI need to count each r in the word.".into(),
                signature: None,
            },
            signature_only("c2lnbmF0dXJlLXR3bw=="),
            Part::text("There are three r's in \"strawberry\"."),
        ]
    );
    assert_eq!(response.usage, usage(12, Some(416), None, Some(405)));
    assert_eq!(response.finish, Some(FinishReason::Stop));
}

#[test]
fn a_blocked_prompt_is_an_empty_filtered_answer() {
    assert_eq!(
        decode_response(BLOCKED_PROMPT.as_bytes()),
        Ok(ChatResponse {
            id: "YmxvY2tlZA".into(),
            model: "gemini-2.0-flash".into(),
            parts: vec![],
            finish: Some(FinishReason::ContentFilter),
            stop_sequence: None,
            usage: usage(7, None, None, None),
            cache_write_tokens: None,
            created: None,
        })
    );
}

#[test]
fn finish_reasons_map_to_the_closest_canon_reason() {
    let text = json!([{"text": "partial"}]);
    for (reason, expected) in [
        ("STOP", Some(FinishReason::Stop)),
        ("MAX_TOKENS", Some(FinishReason::Length)),
        ("SAFETY", Some(FinishReason::ContentFilter)),
        ("RECITATION", Some(FinishReason::ContentFilter)),
        ("BLOCKLIST", Some(FinishReason::ContentFilter)),
        ("PROHIBITED_CONTENT", Some(FinishReason::ContentFilter)),
        ("SPII", Some(FinishReason::ContentFilter)),
        ("IMAGE_SAFETY", Some(FinishReason::ContentFilter)),
        ("LANGUAGE", Some(FinishReason::ContentFilter)),
        ("MALFORMED_FUNCTION_CALL", Some(FinishReason::Stop)),
        ("OTHER", Some(FinishReason::Stop)),
        ("A_REASON_FROM_THE_FUTURE", Some(FinishReason::Stop)),
        ("FINISH_REASON_UNSPECIFIED", None),
    ] {
        let body = response_with(text.clone(), reason);
        let response = decode_response(body.as_bytes()).unwrap();
        assert_eq!(response.finish, expected, "{reason}");
    }
    let call = json!([{"functionCall": {"name": "f", "args": {}}}]);
    let cut_short = decode_response(response_with(call, "MAX_TOKENS").as_bytes()).unwrap();
    assert_eq!(cut_short.finish, Some(FinishReason::Length));
}

#[test]
fn missing_usage_id_and_model_have_defaults() {
    let body = r#"{"candidates":[{"content":{"parts":[{"text":"ok"}],"role":"model"}}]}"#;
    let response = decode_response(body.as_bytes()).unwrap();
    assert_eq!(response.usage, Usage::default());
    assert_eq!(response.model, "");
    assert_eq!(response.finish, None);
    assert!(response.id.starts_with("gemini-"), "{}", response.id);
    assert_eq!(response.id.len(), "gemini-".len() + 16);
    // Deterministic: the same body gets the same id, another body another.
    assert_eq!(decode_response(body.as_bytes()).unwrap().id, response.id);
    let other = body.replace("ok", "ko");
    assert_ne!(decode_response(other.as_bytes()).unwrap().id, response.id);
}

#[test]
fn parts_the_gateway_does_not_model_are_skipped() {
    let body = response_with(
        json!([
            {"executableCode": {"language": "PYTHON", "code": "print(1)"}},
            {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "1"}},
            {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"text": ""},
            {"text": "done"}
        ]),
        "STOP",
    );
    assert_eq!(
        decode_response(body.as_bytes()).unwrap().parts,
        vec![
            Part::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBORw0KGgo=".into(),
                },
                detail: None,
                cache: None,
            },
            Part::text("done"),
        ]
    );
}

#[test]
fn what_is_not_an_answer_is_refused_with_a_reason() {
    let refused = |body: &str| {
        decode_response(body.as_bytes())
            .expect_err("the body should be refused")
            .0
    };
    let truncated = &GENERATE_TEXT[..GENERATE_TEXT.len() / 2];
    assert!(
        refused(truncated).contains("EOF while parsing"),
        "{}",
        refused(truncated)
    );
    assert!(refused("").contains("not valid JSON"));
    assert!(refused("<html>502</html>").contains("not valid JSON"));
    assert!(refused("[]").contains("JSON but not an object"));
    assert!(refused("\"text\"").contains("JSON but not an object"));
    assert!(refused(r#"{"candidates":[]}"#).contains("no candidates"));
    assert!(refused(r#"{"usageMetadata":{"promptTokenCount":3}}"#).contains("no candidates"));
    assert!(refused(r#"{"candidates":[{}]} trailing"#).contains("trailing characters"));
    let wrong_type = refused(r#"{"candidates":[{"content":{"parts":[{"text":3}]}}]}"#);
    assert!(
        wrong_type.contains("at `candidates[0].content.parts[0].text`")
            && wrong_type.contains("expected a string"),
        "{wrong_type}"
    );
    let not_an_object = refused(
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":[1]}}]}}]}"#,
    );
    assert!(
        not_an_object.contains("candidates[0].content.parts[0].functionCall.args"),
        "{not_an_object}"
    );
    let negative = refused(r#"{"candidates":[],"usageMetadata":{"promptTokenCount":-1}}"#);
    assert!(
        negative.contains("usageMetadata.promptTokenCount"),
        "{negative}"
    );
    let error = refused(ERROR);
    assert!(
        error.contains("an error object") && error.contains("Unknown name"),
        "{error}"
    );
}

#[test]
fn a_tool_call_survives_the_round_trip() {
    let arguments =
        r#"{"filters":{"max_price":120.5,"tags":["quiet","sea view"]},"query":"hotel"}"#;
    let chat = request(vec![
        user("Find a hotel"),
        message(
            Role::Assistant,
            vec![
                signature_only("c2ln"),
                tool_call("toolu_01", "search_hotels", arguments),
            ],
        ),
    ]);
    let body = body_value(&encode_request(&chat));
    let model_turn = &body["contents"][1];
    assert_eq!(model_turn["role"], "model");
    // Gemini answers with the same part it was sent; read it back.
    let answer = response_with(model_turn["parts"].clone(), "STOP");
    let response = decode_response(answer.as_bytes()).unwrap();
    assert_eq!(response.finish, Some(FinishReason::ToolCalls));
    let [
        signature,
        Part::ToolCall {
            id,
            name,
            arguments: decoded,
            ..
        },
    ] = &response.parts[..]
    else {
        panic!("unexpected parts: {:?}", response.parts);
    };
    assert_eq!(signature, &signature_only("c2ln"));
    assert_eq!(id, "call_0");
    assert_eq!(name, "search_hotels");
    assert_eq!(
        serde_json::from_str::<Value>(decoded).unwrap(),
        serde_json::from_str::<Value>(arguments).unwrap()
    );
    // And the decoded call encodes to the same functionCall part again.
    let again = body_value(&encode_request(&request(vec![message(
        Role::Assistant,
        response.parts.clone(),
    )])));
    assert_eq!(again["contents"][0]["parts"], model_turn["parts"]);
}

// ---- StreamDecoder -------------------------------------------------------

#[test]
fn a_text_stream_gives_exact_events() {
    let expected = vec![
        StreamEvent::Start {
            id: "c3RyZWFtIG9uZQ".into(),
            model: "gemini-2.5-flash-lite".into(),
        },
        StreamEvent::TextDelta("Hello".into()),
        StreamEvent::Usage {
            usage: usage(4, None, None, None),
            cache_write_tokens: None,
        },
        StreamEvent::TextDelta(" there, how can I help?".into()),
        StreamEvent::Usage {
            usage: usage(4, None, None, None),
            cache_write_tokens: None,
        },
        StreamEvent::ReasoningSignature("c2lnbmF0dXJlLWVuZA==".into()),
        StreamEvent::Finish {
            reason: FinishReason::Stop,
            stop_sequence: None,
        },
        StreamEvent::Usage {
            usage: usage(4, Some(9), None, None),
            cache_write_tokens: None,
        },
    ];
    assert_eq!(stream_whole(STREAM_TEXT), expected);
    assert_eq!(stream_byte_by_byte(STREAM_TEXT), expected);
    assert_eq!(stream_whole(&STREAM_TEXT.replace('\n', "\r\n")), expected);
}

#[test]
fn a_thinking_stream_with_parallel_calls_gives_exact_events() {
    let expected = vec![
        StreamEvent::Start {
            id: "dG9vbHMgc3RyZWFt".into(),
            model: "gemini-2.5-pro".into(),
        },
        StreamEvent::ReasoningDelta("**Planning**\n\nThe user wants the weather".into()),
        StreamEvent::Usage {
            usage: usage(85, None, None, None),
            cache_write_tokens: None,
        },
        StreamEvent::ReasoningDelta(" in two cities.".into()),
        StreamEvent::Usage {
            usage: usage(85, Some(60), None, Some(60)),
            cache_write_tokens: None,
        },
        StreamEvent::ReasoningSignature("c2lnbmF0dXJlLXRocmVl".into()),
        StreamEvent::ToolCallStart {
            index: 0,
            id: "call_0".into(),
            name: "get_weather".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: r#"{"city":"Paris"}"#.into(),
        },
        StreamEvent::ToolCallStart {
            index: 1,
            id: "call_1".into(),
            name: "get_weather".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 1,
            arguments: r#"{"city":"Oslo"}"#.into(),
        },
        StreamEvent::Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        },
        StreamEvent::Usage {
            usage: usage(85, Some(84), Some(32), Some(60)),
            cache_write_tokens: None,
        },
    ];
    assert_eq!(stream_whole(STREAM_THINKING_TOOLS), expected);
    assert_eq!(stream_byte_by_byte(STREAM_THINKING_TOOLS), expected);
}

#[test]
fn a_stream_is_done_only_after_a_finish_reason() {
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    let first_chunk = STREAM_TEXT.split("\n\n").next().unwrap();
    decoder
        .feed(format!("{first_chunk}\n\n").as_bytes(), &mut events)
        .unwrap();
    assert!(!decoder.is_done());
    assert_eq!(events.len(), 3);
    decoder
        .feed(
            &STREAM_TEXT.as_bytes()[first_chunk.len() + 2..],
            &mut events,
        )
        .unwrap();
    assert!(decoder.is_done());
}

#[test]
fn a_blocked_prompt_ends_the_stream_filtered() {
    let sse = format!("data: {}\r\n\r\n", BLOCKED_PROMPT.replace('\n', ""));
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    decoder.feed(sse.as_bytes(), &mut events).unwrap();
    assert!(decoder.is_done());
    assert_eq!(
        events,
        vec![
            StreamEvent::Start {
                id: "YmxvY2tlZA".into(),
                model: "gemini-2.0-flash".into(),
            },
            StreamEvent::Finish {
                reason: FinishReason::ContentFilter,
                stop_sequence: None,
            },
            StreamEvent::Usage {
                usage: usage(7, None, None, None),
                cache_write_tokens: None,
            },
        ]
    );
}

#[test]
fn finish_reasons_in_streams_follow_the_same_mapping() {
    let chunk = |reason: &str| {
        format!(
            "data: {}\n\n",
            response_with(json!([{"text": "t"}]), reason)
        )
    };
    let events = stream_whole(&(chunk("RECITATION")));
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Finish {
            reason: FinishReason::ContentFilter,
            stop_sequence: None,
        })
    );
    let events = stream_whole(&chunk("SOMETHING_NEW"));
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Finish {
            reason: FinishReason::Stop,
            stop_sequence: None,
        })
    );
    // Only the first finish reason is reported.
    let events = stream_whole(&format!("{}{}", chunk("STOP"), chunk("STOP")));
    let finishes = events
        .iter()
        .filter(|event| matches!(event, StreamEvent::Finish { .. }))
        .count();
    assert_eq!(finishes, 1);
}

#[test]
fn an_error_inside_the_stream_is_reported() {
    let sse = format!(
        "{}data: {}\n\n",
        STREAM_TEXT.split("\n\n").next().unwrap().to_owned() + "\n\n",
        r#"{"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}"#
    );
    let (events, result) = stream_in_pieces(sse.as_bytes(), &[]);
    assert_eq!(events.len(), 3);
    assert_eq!(
        result,
        Err(StreamError::Reported(ErrorReport {
            message: Some("The model is overloaded. Please try again later.".into()),
            kind: Some("UNAVAILABLE".into()),
            param: None,
            code: Some("UNAVAILABLE".into()),
        }))
    );
}

#[test]
fn bytes_that_are_not_a_gemini_stream_are_invalid() {
    for sse in [
        "data: not json\n\n",
        "data: {\"candidates\": [{\"content\": \n\n",
        "data: [1, 2]\n\n",
        "data: {\"candidates\": \"none\"}\n\n",
    ] {
        let (events, result) = stream_in_pieces(sse.as_bytes(), &[]);
        assert_eq!(events, vec![], "{sse}");
        assert!(
            matches!(&result, Err(StreamError::Invalid(message)) if message.contains("stream chunk")),
            "{sse}: {result:?}"
        );
    }
    let (_, result) = stream_in_pieces(b"data: \xff\n\n", &[]);
    assert!(matches!(result, Err(StreamError::Invalid(message)) if message.contains("UTF-8")));
}

#[test]
fn a_stream_without_finish_reason_is_not_done() {
    let sse = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"par\"}]}}]}\n\n";
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    decoder.feed(sse.as_bytes(), &mut events).unwrap();
    assert!(!decoder.is_done());
    assert_eq!(events.len(), 2);
    assert!(
        matches!(&events[0], StreamEvent::Start { id, model } if id.starts_with("gemini-") && model.is_empty())
    );
    assert_eq!(events[1], StreamEvent::TextDelta("par".into()));
}

#[test]
fn finish_decodes_a_last_event_without_its_blank_line() {
    let sse = STREAM_TEXT.trim_end();
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    decoder.feed(sse.as_bytes(), &mut events).unwrap();
    assert!(!decoder.is_done());
    decoder.finish(&mut events).unwrap();
    assert!(decoder.is_done());
    assert_eq!(events, stream_whole(STREAM_TEXT));
}

proptest! {
    /// However the stream is cut into reads, the same events come out.
    #[test]
    fn any_split_yields_the_same_events(
        mut cuts in proptest::collection::vec(0usize..1100, 0..12),
        crlf in any::<bool>(),
    ) {
        let input = if crlf {
            STREAM_THINKING_TOOLS.replace('\n', "\r\n")
        } else {
            STREAM_THINKING_TOOLS.to_owned()
        };
        cuts.sort_unstable();
        let (whole, whole_result) = stream_in_pieces(input.as_bytes(), &[]);
        let (split, split_result) = stream_in_pieces(input.as_bytes(), &cuts);
        prop_assert_eq!(whole_result, Ok(()));
        prop_assert_eq!(split_result, Ok(()));
        prop_assert_eq!(whole, split);
    }

    /// Arbitrary bytes never panic the decoder, wherever they are cut.
    #[test]
    fn arbitrary_bytes_never_panic(
        input in proptest::collection::vec(any::<u8>(), 0..400),
        cuts in proptest::collection::vec(0usize..400, 0..6),
    ) {
        let _ = stream_in_pieces(&input, &cuts);
        let _ = decode_response(&input);
        let _ = decode_embeddings(&input);
        let _ = parse_error(&input);
    }

    /// Arbitrary JSON-looking `data:` payloads never panic either.
    #[test]
    fn arbitrary_chunks_never_panic(payload in r#"\{("[a-zA-Z]{1,12}":[\[\]{}0-9a-z",:]{0,20},?){0,6}\}"#) {
        let _ = stream_in_pieces(format!("data: {payload}\n\n").as_bytes(), &[]);
        let _ = decode_response(payload.as_bytes());
    }
}

// ---- embeddings ------------------------------------------------------------

#[test]
fn embeddings_requests_are_written_byte_for_byte() {
    let inputs = vec!["first text".to_owned(), "second".to_owned()];
    assert_eq!(
        String::from_utf8(encode_embeddings(
            "gemini-embedding-001",
            &inputs,
            Some(768)
        ))
        .unwrap(),
        concat!(
            r#"{"requests":["#,
            r#"{"model":"models/gemini-embedding-001","content":{"parts":[{"text":"first text"}]},"outputDimensionality":768},"#,
            r#"{"model":"models/gemini-embedding-001","content":{"parts":[{"text":"second"}]},"outputDimensionality":768}"#,
            r#"]}"#
        )
    );
    assert_eq!(
        String::from_utf8(encode_embeddings(
            "models/text-embedding-004",
            &inputs[..1],
            None
        ))
        .unwrap(),
        r#"{"requests":[{"model":"models/text-embedding-004","content":{"parts":[{"text":"first text"}]}}]}"#
    );
}

#[test]
fn embeddings_answers_are_read_in_order() {
    let body =
        r#"{"embeddings": [{"values": [0.013168523, -0.008711934, 0.5]}, {"values": [-1, 2e-3]}]}"#;
    assert_eq!(
        decode_embeddings(body.as_bytes()),
        Ok(vec![
            vec![0.013_168_523, -0.008_711_934, 0.5],
            vec![-1.0, 0.002]
        ])
    );
    assert_eq!(decode_embeddings(br#"{"embeddings": []}"#), Ok(vec![]));
    for (body, reason) in [
        ("{}", "missing field `embeddings`"),
        (
            r#"{"embeddings": [{"values": ["x"]}]}"#,
            "at `embeddings[0].values[0]`",
        ),
        (r#"{"embeddings": [{}]}"#, "missing field `values`"),
        ("[[0.1]]", "JSON but not an object"),
        (r#"{"embeddings": ["#, "EOF while parsing"),
    ] {
        let error = decode_embeddings(body.as_bytes()).expect_err(body).0;
        assert!(
            error.contains("batchEmbedContents") && error.contains(reason),
            "{body}: {error}"
        );
    }
}

// ---- parse_error -----------------------------------------------------------

#[test]
fn gemini_errors_are_read_with_their_status_and_field() {
    assert_eq!(
        parse_error(ERROR.as_bytes()),
        ErrorReport {
            message: Some(
                "Invalid JSON payload received. Unknown name \"foo\" at 'generation_config': Cannot find field.".into()
            ),
            kind: Some("INVALID_ARGUMENT".into()),
            param: Some("generation_config".into()),
            code: Some("INVALID_ARGUMENT".into()),
        }
    );
    let quota = r#"[{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}]"#;
    assert_eq!(
        parse_error(quota.as_bytes()),
        ErrorReport {
            message: Some("Resource has been exhausted (e.g. check quota).".into()),
            kind: Some("RESOURCE_EXHAUSTED".into()),
            param: None,
            code: Some("RESOURCE_EXHAUSTED".into()),
        }
    );
}

#[test]
fn other_error_bodies_give_what_can_be_read() {
    assert_eq!(
        parse_error(b"<html>Bad Gateway</html>"),
        ErrorReport::default()
    );
    assert_eq!(parse_error(b""), ErrorReport::default());
    assert_eq!(parse_error(b"[]"), ErrorReport::default());
    assert_eq!(parse_error(br#"{"detail": "x"}"#), ErrorReport::default());
    assert_eq!(
        parse_error(br#"{"error": "quota exceeded"}"#),
        ErrorReport {
            message: Some("quota exceeded".into()),
            ..ErrorReport::default()
        }
    );
    assert_eq!(
        parse_error(br#"{"error": {"code": 500, "message": 42}}"#),
        ErrorReport::default()
    );
}
