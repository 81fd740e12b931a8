//! Tests of the Bedrock dialect: Converse bodies written and read against
//! fixtures shaped like AWS's documentation examples, ConverseStream
//! transcripts framed as the service frames them, exceptions, error
//! bodies and Titan embeddings. The framing itself is tested in
//! `eventstream.rs`.

use proptest::prelude::*;
use serde_json::{Value, json};
use switchboard_core::Usage;

use super::*;
use crate::canon::{
    self, ChatRequest, ChatResponse, ErrorReport, FinishReason, ImageSource, Part, Reasoning,
    ResponseFormat, Role, StreamDecoder as _, StreamError, StreamEvent, Tool, ToolChoice,
    Unsupported,
};

// ---------------------------------------------------------------------------
// Requests.

fn message(role: Role, parts: Vec<Part>) -> canon::Message {
    canon::Message {
        role,
        parts,
        name: None,
    }
}

fn user(text: &str) -> canon::Message {
    canon::Message::text(Role::User, text)
}

fn request(messages: Vec<canon::Message>) -> ChatRequest {
    ChatRequest {
        model: "anthropic.claude-sonnet-4-20250514-v1:0".into(),
        messages,
        ..ChatRequest::default()
    }
}

/// The body as text, and what it could not carry.
fn encode(request: &ChatRequest) -> (String, Vec<String>) {
    let encoded = encode_request(request);
    let body = String::from_utf8(encoded.body).expect("the body is UTF-8");
    let unsupported = encoded
        .unsupported
        .into_iter()
        .map(|Unsupported(name)| name)
        .collect();
    (body, unsupported)
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("The current weather in a city.".into()),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"]
        }),
        strict: None,
        cache: None,
    }
}

fn tool_call(id: &str, arguments: &str) -> Part {
    Part::ToolCall {
        id: id.into(),
        name: "get_weather".into(),
        arguments: arguments.into(),
        cache: None,
    }
}

fn tool_result(id: &str, text: &str, is_error: bool) -> Part {
    Part::ToolResult {
        call_id: id.into(),
        name: Some("get_weather".into()),
        content: vec![Part::text(text)],
        is_error,
        cache: None,
    }
}

#[test]
fn a_full_conversation_is_written_as_converse_expects_it() {
    let mut conversation = request(vec![
        message(
            Role::System,
            vec![Part::Text {
                text: "You are a weather assistant.".into(),
                cache: Some(json!({"type": "ephemeral"})),
            }],
        ),
        message(
            Role::User,
            vec![
                Part::text("What is the weather in Seattle? Here is the sky:"),
                Part::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "iVBORw0KGgo=".into(),
                    },
                    detail: None,
                    cache: None,
                },
            ],
        ),
        // A second system prompt, later in the conversation, is hoisted too.
        canon::Message::text(Role::System, "Answer in one sentence."),
        message(
            Role::Assistant,
            vec![
                Part::Reasoning {
                    text: "The user wants Seattle's weather.".into(),
                    signature: Some("RXVTaWc=".into()),
                },
                Part::text("Let me check."),
                tool_call("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", r#"{"city":"Seattle"}"#),
            ],
        ),
        message(
            Role::Tool,
            vec![tool_result(
                "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                "12°C and raining",
                false,
            )],
        ),
        user("And tomorrow?"),
    ]);
    conversation.tools = vec![weather_tool()];
    conversation.tool_choice = Some(ToolChoice::Auto);
    conversation.max_tokens = Some(2048);
    conversation.temperature = Some(0.5);
    conversation.top_p = Some(0.9);
    conversation.top_k = Some(250);
    conversation.stop = vec!["END".into()];
    conversation.reasoning = Some(Reasoning {
        effort: None,
        budget_tokens: Some(1024),
        enabled: true,
    });
    conversation.stream = true;

    let expected = json!({
        "messages": [
            {"role": "user", "content": [
                {"text": "What is the weather in Seattle? Here is the sky:"},
                {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
            ]},
            {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {
                    "text": "The user wants Seattle's weather.",
                    "signature": "RXVTaWc="
                }}},
                {"text": "Let me check."},
                {"toolUse": {
                    "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                    "name": "get_weather",
                    "input": {"city": "Seattle"}
                }}
            ]},
            // The tool's answer and the user's next words share one turn.
            {"role": "user", "content": [
                {"toolResult": {
                    "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                    "content": [{"text": "12°C and raining"}]
                }},
                {"text": "And tomorrow?"}
            ]}
        ],
        "system": [
            {"text": "You are a weather assistant."},
            {"cachePoint": {"type": "default"}},
            {"text": "Answer in one sentence."}
        ],
        "inferenceConfig": {
            "maxTokens": 2048,
            "temperature": 0.5,
            "topP": 0.9,
            "stopSequences": ["END"]
        },
        "toolConfig": {
            "tools": [{"toolSpec": {
                "name": "get_weather",
                "description": "The current weather in a city.",
                "inputSchema": {"json": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"]
                }}
            }}],
            "toolChoice": {"auto": {}}
        },
        "additionalModelRequestFields": {
            "top_k": 250,
            "thinking": {"type": "enabled", "budget_tokens": 1024}
        }
    });
    let (body, unsupported) = encode(&conversation);
    // Compared as text: member order, and the absence of `model`, `stream`
    // and nulls, are part of the contract.
    assert_eq!(body, expected.to_string());
    assert_eq!(unsupported, Vec::<String>::new());
}

#[test]
fn absent_fields_are_left_out() {
    let (body, unsupported) = encode(&request(vec![user("Hello")]));
    assert_eq!(
        body,
        r#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}]}"#
    );
    assert!(unsupported.is_empty());
}

#[test]
fn parameters_bedrock_cannot_carry_are_named() {
    let mut asking = request(vec![
        canon::Message {
            role: Role::User,
            parts: vec![
                Part::text("Look:"),
                Part::Image {
                    source: ImageSource::Url("https://example.com/cat.png".into()),
                    detail: Some("high".into()),
                    cache: None,
                },
                Part::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/bmp".into(),
                        data: "Qk0=".into(),
                    },
                    detail: Some("auto".into()),
                    cache: None,
                },
            ],
            name: Some("alice".into()),
        },
        message(Role::Assistant, vec![tool_call("call_1", "[1, 2]")]),
        message(Role::Tool, vec![tool_result("call_1", "ok", false)]),
    ]);
    asking.seed = Some(7);
    asking.frequency_penalty = Some(0.1);
    asking.presence_penalty = Some(0.2);
    asking.response_format = Some(ResponseFormat::JsonObject);
    asking.parallel_tool_calls = Some(false);
    asking.user = Some("user-123".into());
    asking.reasoning = Some(Reasoning {
        effort: Some("high".into()),
        budget_tokens: None,
        enabled: true,
    });
    asking.unmapped = vec![
        ("logit_bias".into(), json!({"50256": -100})),
        ("metadata".into(), json!({"k": "v"})),
    ];
    let (body, unsupported) = encode(&asking);
    assert_eq!(
        unsupported,
        [
            "name",
            "detail",
            "image_url",
            "image media type image/bmp",
            "tool call arguments that are not a JSON object",
            "reasoning_effort",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "response_format",
            "parallel_tool_calls",
            "user",
            "logit_bias",
            "metadata",
        ]
    );
    // What could be carried still is, so the caller may send it anyway.
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"text": "Look:"}]},
            {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {}}}
            ]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "call_1", "content": [{"text": "ok"}]}}
            ]}
        ])
    );
}

#[test]
fn harmless_defaults_are_not_reported() {
    let mut asking = request(vec![user("hi")]);
    asking.parallel_tool_calls = Some(true);
    asking.response_format = Some(ResponseFormat::Text);
    asking.stream_usage = true;
    // Thinking off is what Converse's models do unasked.
    asking.reasoning = Some(Reasoning {
        effort: None,
        budget_tokens: Some(2000),
        enabled: false,
    });
    let (body, unsupported) = encode(&asking);
    assert_eq!(
        body,
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#
    );
    assert!(unsupported.is_empty(), "{unsupported:?}");
}

#[test]
fn reasoning_without_a_budget_is_reported() {
    let mut asking = request(vec![user("hi")]);
    asking.reasoning = Some(Reasoning {
        effort: None,
        budget_tokens: None,
        enabled: true,
    });
    let (body, unsupported) = encode(&asking);
    assert!(!body.contains("thinking"));
    assert_eq!(unsupported, ["reasoning"]);
}

#[test]
fn tool_choices_map_to_bedrocks_union() {
    let choice_of = |choice: ToolChoice| {
        let mut asking = request(vec![user("hi")]);
        asking.tools = vec![weather_tool()];
        asking.tool_choice = Some(choice);
        let (body, unsupported) = encode(&asking);
        let body: Value = serde_json::from_str(&body).unwrap();
        (body["toolConfig"].get("toolChoice").cloned(), unsupported)
    };
    assert_eq!(
        choice_of(ToolChoice::Auto),
        (Some(json!({"auto": {}})), vec![])
    );
    assert_eq!(
        choice_of(ToolChoice::Required),
        (Some(json!({"any": {}})), vec![])
    );
    assert_eq!(
        choice_of(ToolChoice::Tool("get_weather".into())),
        (Some(json!({"tool": {"name": "get_weather"}})), vec![])
    );
}

#[test]
fn tool_choice_none_leaves_the_tools_out_when_it_can() {
    let mut asking = request(vec![user("hi")]);
    asking.tools = vec![weather_tool()];
    asking.tool_choice = Some(ToolChoice::None);
    let (body, unsupported) = encode(&asking);
    assert_eq!(
        body,
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#
    );
    assert!(unsupported.is_empty());

    // With tool calls in the conversation Bedrock requires the tools, and
    // then nothing stops the model from calling them.
    let mut asking = request(vec![
        user("weather?"),
        message(Role::Assistant, vec![tool_call("t1", r#"{"city":"Oslo"}"#)]),
        message(Role::Tool, vec![tool_result("t1", "cold", true)]),
    ]);
    asking.tools = vec![weather_tool()];
    asking.tool_choice = Some(ToolChoice::None);
    let (body, unsupported) = encode(&asking);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["toolConfig"]["tools"][0]["toolSpec"]["name"],
        "get_weather"
    );
    assert_eq!(body["toolConfig"].get("toolChoice"), None);
    assert_eq!(unsupported, ["tool_choice"]);
    // A failed tool says so.
    assert_eq!(
        body["messages"][2]["content"][0],
        json!({"toolResult": {"toolUseId": "t1", "content": [{"text": "cold"}], "status": "error"}})
    );
}

#[test]
fn a_demand_for_a_tool_without_tools_is_reported() {
    let mut asking = request(vec![user("hi")]);
    asking.tool_choice = Some(ToolChoice::Required);
    let (body, unsupported) = encode(&asking);
    assert!(!body.contains("toolConfig"));
    assert_eq!(unsupported, ["tool_choice"]);
    asking.tool_choice = Some(ToolChoice::None);
    assert!(encode(&asking).1.is_empty());
}

#[test]
fn cache_markers_become_cache_points_after_their_blocks() {
    let mut asking = request(vec![
        message(
            Role::System,
            vec![Part::Text {
                text: "Long instructions.".into(),
                cache: Some(json!({"type": "ephemeral", "ttl": "1h"})),
            }],
        ),
        message(
            Role::User,
            vec![
                Part::Text {
                    text: "A long document.".into(),
                    cache: Some(json!({"type": "ephemeral"})),
                },
                Part::text("A question."),
            ],
        ),
    ]);
    let mut tool = weather_tool();
    tool.cache = Some(json!({"type": "ephemeral"}));
    tool.strict = Some(true);
    asking.tools = vec![tool];
    let (body, unsupported) = encode(&asking);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["system"],
        json!([
            {"text": "Long instructions."},
            {"cachePoint": {"type": "default", "ttl": "1h"}}
        ])
    );
    assert_eq!(
        body["messages"][0]["content"],
        json!([
            {"text": "A long document."},
            {"cachePoint": {"type": "default"}},
            {"text": "A question."}
        ])
    );
    assert_eq!(body["toolConfig"]["tools"][0]["toolSpec"]["strict"], true);
    assert_eq!(
        body["toolConfig"]["tools"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    assert!(unsupported.is_empty());
}

#[test]
fn redacted_reasoning_and_tool_images_are_written() {
    let asking = request(vec![
        user("draw"),
        message(
            Role::Assistant,
            vec![
                Part::RedactedReasoning {
                    data: "ZW5jcnlwdGVk".into(),
                },
                tool_call("t1", ""),
            ],
        ),
        message(
            Role::Tool,
            vec![Part::ToolResult {
                call_id: "t1".into(),
                name: None,
                content: vec![
                    Part::text("here"),
                    Part::Image {
                        source: ImageSource::Base64 {
                            media_type: "image/JPEG".into(),
                            data: "/9j/".into(),
                        },
                        detail: None,
                        cache: None,
                    },
                ],
                is_error: false,
                cache: None,
            }],
        ),
    ]);
    let (body, unsupported) = encode(&asking);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["messages"][1]["content"],
        json!([
            {"reasoningContent": {"redactedContent": "ZW5jcnlwdGVk"}},
            {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}
        ])
    );
    assert_eq!(
        body["messages"][2]["content"][0]["toolResult"]["content"],
        json!([
            {"text": "here"},
            {"image": {"format": "jpeg", "source": {"bytes": "/9j/"}}}
        ])
    );
    assert!(unsupported.is_empty());
}

#[test]
fn image_formats_follow_the_media_type() {
    for (media_type, format) in [
        ("image/png", "png"),
        ("image/jpeg", "jpeg"),
        ("image/gif", "gif"),
        ("image/webp", "webp"),
    ] {
        let asking = request(vec![message(
            Role::User,
            vec![Part::Image {
                source: ImageSource::Base64 {
                    media_type: media_type.into(),
                    data: "AAAA".into(),
                },
                detail: None,
                cache: None,
            }],
        )]);
        let (body, unsupported) = encode(&asking);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["messages"][0]["content"][0]["image"]["format"], format,
            "{media_type}"
        );
        assert!(unsupported.is_empty());
    }
}

#[test]
fn empty_text_is_not_sent() {
    let asking = request(vec![
        message(Role::System, vec![Part::text("")]),
        user("hi"),
        message(
            Role::Assistant,
            vec![Part::text(""), tool_call("t1", r#"{"city":"Rome"}"#)],
        ),
        message(Role::Assistant, vec![Part::text("")]),
    ]);
    let (body, _) = encode(&asking);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body.get("system"), None);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"text": "hi"}]},
            {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Rome"}}}
            ]}
        ])
    );
}

// ---------------------------------------------------------------------------
// Answers.

#[test]
fn a_converse_answer_is_read_into_canon() {
    // Shaped like the Converse API reference's response syntax, with a
    // tool call as in the tool-use guide.
    let body = br#"{
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "I should call the tool.", "signature": "c2ln"}}},
            {"text": "Let me look up the most popular song."},
            {"toolUse": {"toolUseId": "tooluse_hbTgdi0CSLq_hM4P8csZJA", "name": "top_song", "input": {"sign": "WZPZ"}}}
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 375, "outputTokens": 36, "totalTokens": 411,
                  "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 200},
        "metrics": {"latencyMs": 2117}
    }"#;
    assert_eq!(
        decode_response(body).unwrap(),
        ChatResponse {
            id: String::new(),
            model: String::new(),
            parts: vec![
                Part::Reasoning {
                    text: "I should call the tool.".into(),
                    signature: Some("c2ln".into()),
                },
                Part::text("Let me look up the most popular song."),
                Part::ToolCall {
                    id: "tooluse_hbTgdi0CSLq_hM4P8csZJA".into(),
                    name: "top_song".into(),
                    arguments: r#"{"sign":"WZPZ"}"#.into(),
                    cache: None,
                },
            ],
            finish: Some(FinishReason::ToolCalls),
            stop_sequence: None,
            usage: Usage {
                input_tokens: Some(1575),
                output_tokens: Some(36),
                cached_input_tokens: Some(1000),
                reasoning_tokens: None,
                cache_write_tokens: Some(200),
            },
            cache_write_tokens: Some(200),
            created: None,
        }
    );
}

#[test]
fn a_plain_answer_without_cache_counts() {
    let body = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hi."}]}},
        "stopReason":"end_turn","usage":{"inputTokens":12,"outputTokens":3,"totalTokens":15},
        "metrics":{"latencyMs":300}}"#;
    let answer = decode_response(body).unwrap();
    assert_eq!(answer.parts, vec![Part::text("Hi.")]);
    assert_eq!(answer.finish, Some(FinishReason::Stop));
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: Some(12),
            output_tokens: Some(3),
            cached_input_tokens: None,
            reasoning_tokens: None,
            cache_write_tokens: None,
        }
    );
    assert_eq!(answer.cache_write_tokens, None);
}

#[test]
fn redacted_reasoning_and_cited_text_are_read() {
    let body = br#"{"output":{"message":{"role":"assistant","content":[
        {"reasoningContent":{"redactedContent":"b3BhcXVl"}},
        {"citationsContent":{"content":[{"text":"Cited answer."}],"citations":[{"title":"doc"}]}},
        {"guardContent":{"text":{"text":"ignored"}}}
    ]}},"stopReason":"stop_sequence",
    "additionalModelResponseFields":{"stop_sequence":"END"},
    "usage":{"inputTokens":1,"outputTokens":2,"totalTokens":3}}"#;
    let answer = decode_response(body).unwrap();
    assert_eq!(
        answer.parts,
        vec![
            Part::RedactedReasoning {
                data: "b3BhcXVl".into()
            },
            Part::text("Cited answer."),
        ]
    );
    assert_eq!(answer.finish, Some(FinishReason::StopSequence));
    assert_eq!(answer.stop_sequence.as_deref(), Some("END"));
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (stop_reason, finish) in [
        ("end_turn", FinishReason::Stop),
        ("tool_use", FinishReason::ToolCalls),
        ("max_tokens", FinishReason::Length),
        ("model_context_window_exceeded", FinishReason::Length),
        ("stop_sequence", FinishReason::StopSequence),
        ("guardrail_intervened", FinishReason::ContentFilter),
        ("content_filtered", FinishReason::ContentFilter),
        ("malformed_model_output", FinishReason::Stop),
        ("a_reason_from_the_future", FinishReason::Stop),
    ] {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": []}},
            "stopReason": stop_reason,
            "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}
        });
        let answer = decode_response(body.to_string().as_bytes()).unwrap();
        assert_eq!(answer.finish, Some(finish), "{stop_reason}");
    }
}

#[test]
fn bodies_that_are_not_converse_answers_are_refused() {
    for body in [
        &b""[..],
        b"not json",
        b"[]",
        br#"{"stopReason":"end_turn"}"#,
        br#"{"output":{}}"#,
        br#"{"output":{"message":{"content":[{"text":5}]}}}"#,
    ] {
        let error = decode_response(body).unwrap_err();
        assert!(
            error
                .0
                .starts_with("the upstream's answer is not a Converse response"),
            "{error:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Errors.

#[test]
fn error_bodies_are_read_with_their_type() {
    assert_eq!(
        parse_error(
            br#"{"message":"Malformed input request, please reformat your input and try again."}"#,
            Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        ),
        ErrorReport {
            message: Some(
                "Malformed input request, please reformat your input and try again.".into()
            ),
            kind: Some("ValidationException".into()),
            param: None,
            code: Some("ValidationException".into()),
        }
    );
    // Without the header, the body's own type, namespace dropped.
    let report = parse_error(
        br#"{"__type":"com.amazon.coral.service#ThrottlingException","Message":"Rate exceeded"}"#,
        None,
    );
    assert_eq!(report.kind.as_deref(), Some("ThrottlingException"));
    assert_eq!(report.message.as_deref(), Some("Rate exceeded"));
    // A body that is not JSON still yields the header's type.
    let report = parse_error(b"<html>502</html>", Some("ServiceUnavailableException"));
    assert_eq!(report.message, None);
    assert_eq!(report.code.as_deref(), Some("ServiceUnavailableException"));
    assert_eq!(parse_error(b"", None), ErrorReport::default());
}

// ---------------------------------------------------------------------------
// Streams.

fn event(event_type: &str, payload: Value) -> Vec<u8> {
    encode_message(
        &[
            (":event-type", HeaderValue::String(event_type.into())),
            (
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            (":message-type", HeaderValue::String("event".into())),
        ],
        payload.to_string().as_bytes(),
    )
}

fn exception_frame(exception_type: &str, message: &str) -> Vec<u8> {
    encode_message(
        &[
            (
                ":exception-type",
                HeaderValue::String(exception_type.into()),
            ),
            (
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            (":message-type", HeaderValue::String("exception".into())),
        ],
        json!({ "message": message }).to_string().as_bytes(),
    )
}

/// Text, then a tool call, then the stop and the usage report, padded
/// with `p` members as Bedrock pads them.
fn transcript() -> Vec<u8> {
    [
        event(
            "messageStart",
            json!({"p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0", "role": "assistant"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Let me check"}, "p": "abcdef"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": " the weather."}, "p": "ab"}),
        ),
        event("contentBlockStop", json!({"contentBlockIndex": 0, "p": "abc"})),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {
                "toolUseId": "tooluse_Ofyc3J1FRzOlH5TnF8GlyQ", "name": "get_weather"}}, "p": "abcd"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}, "p": "a"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Seattle\"}"}}, "p": "a"}),
        ),
        event("contentBlockStop", json!({"contentBlockIndex": 1, "p": "abcdefgh"})),
        event("messageStop", json!({"stopReason": "tool_use", "p": "abcdefghijk"})),
        event(
            "metadata",
            json!({
                "usage": {"inputTokens": 412, "outputTokens": 58, "totalTokens": 470,
                          "cacheReadInputTokens": 100},
                "metrics": {"latencyMs": 1250},
                "p": "abcdefghijklmnop"
            }),
        ),
    ]
    .concat()
}

fn transcript_events() -> Vec<StreamEvent> {
    vec![
        StreamEvent::Start {
            id: String::new(),
            model: String::new(),
        },
        StreamEvent::TextDelta("Let me check".into()),
        StreamEvent::TextDelta(" the weather.".into()),
        StreamEvent::ToolCallStart {
            index: 0,
            id: "tooluse_Ofyc3J1FRzOlH5TnF8GlyQ".into(),
            name: "get_weather".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: "{\"city\":".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: "\"Seattle\"}".into(),
        },
        StreamEvent::Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        },
        StreamEvent::Usage {
            usage: Usage {
                input_tokens: Some(512),
                output_tokens: Some(58),
                cached_input_tokens: Some(100),
                reasoning_tokens: None,
                cache_write_tokens: None,
            },
            cache_write_tokens: None,
        },
    ]
}

fn stream_in_pieces(input: &[u8], cuts: &[usize]) -> Result<Vec<StreamEvent>, StreamError> {
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts {
        let cut = cut.clamp(start, input.len());
        decoder.feed(&input[start..cut], &mut events)?;
        start = cut;
    }
    decoder.feed(&input[start..], &mut events)?;
    decoder.finish()?;
    Ok(events)
}

#[test]
fn a_stream_transcript_decodes_into_canon_events() {
    let stream = transcript();
    assert_eq!(stream_in_pieces(&stream, &[]).unwrap(), transcript_events());
    let every_byte: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(
        stream_in_pieces(&stream, &every_byte).unwrap(),
        transcript_events()
    );
}

#[test]
fn the_stream_is_done_once_message_stop_is_read() {
    let frames = [
        event("messageStart", json!({"role": "assistant"})),
        event("messageStop", json!({"stopReason": "end_turn"})),
        event(
            "metadata",
            json!({"usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}, "metrics": {"latencyMs": 1}}),
        ),
    ];
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    decoder.feed(&frames[0], &mut events).unwrap();
    assert!(!decoder.is_done());
    decoder.feed(&frames[1], &mut events).unwrap();
    assert!(decoder.is_done());
    // The usage report comes after the stop and is still read.
    decoder.feed(&frames[2], &mut events).unwrap();
    assert!(decoder.is_done());
    assert!(matches!(events.last(), Some(StreamEvent::Usage { .. })));
}

#[test]
fn reasoning_and_several_tool_calls_stream() {
    let stream = [
        event("messageStart", json!({"role": "assistant"})),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Two cities."}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "U2ln"}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"reasoningContent": {"redactedContent": "cmVk"}}}),
        ),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "a", "name": "get_weather"}}}),
        ),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 3, "start": {"toolUse": {"toolUseId": "b", "name": "get_time"}}}),
        ),
        // Deltas for the two calls, interleaved, find their own calls.
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{}"}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"city\":\"Oslo\"}"}}}),
        ),
        // Kinds of delta and block this decoder does not know are skipped.
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 4, "delta": {"citation": {"title": "doc"}}}),
        ),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 5, "start": {"image": {"format": "png"}}}),
        ),
        event(
            "messageStop",
            json!({"stopReason": "max_tokens", "additionalModelResponseFields": {"stop_sequence": null}}),
        ),
    ]
    .concat();
    assert_eq!(
        stream_in_pieces(&stream, &[100, 101, 400]).unwrap(),
        vec![
            StreamEvent::Start {
                id: String::new(),
                model: String::new()
            },
            StreamEvent::ReasoningDelta("Two cities.".into()),
            StreamEvent::ReasoningSignature("U2ln".into()),
            StreamEvent::RedactedReasoning("cmVk".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "get_weather".into()
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "b".into(),
                name: "get_time".into()
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into()
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"city\":\"Oslo\"}".into()
            },
            StreamEvent::Finish {
                reason: FinishReason::Length,
                stop_sequence: None
            },
        ]
    );
}

#[test]
fn exceptions_in_the_stream_are_reported_after_the_events_before_them() {
    let stream = [
        event("messageStart", json!({"role": "assistant"})),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
        ),
        exception_frame(
            "throttlingException",
            "Too many requests, please wait before trying again.",
        ),
    ]
    .concat();
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    assert_eq!(
        decoder.feed(&stream, &mut events),
        Err(StreamError::Reported(ErrorReport {
            message: Some("Too many requests, please wait before trying again.".into()),
            kind: Some("throttlingException".into()),
            param: None,
            code: Some("throttlingException".into()),
        }))
    );
    assert_eq!(
        events,
        vec![
            StreamEvent::Start {
                id: String::new(),
                model: String::new()
            },
            StreamEvent::TextDelta("Hel".into()),
        ]
    );
}

#[test]
fn every_modelled_exception_is_reported_by_its_type() {
    for exception_type in [
        "internalServerException",
        "modelStreamErrorException",
        "validationException",
        "throttlingException",
        "serviceUnavailableException",
    ] {
        let result = stream_in_pieces(&exception_frame(exception_type, "went wrong"), &[]);
        let Err(StreamError::Reported(report)) = result else {
            panic!("{exception_type}: {result:?}");
        };
        assert_eq!(report.kind.as_deref(), Some(exception_type));
        assert_eq!(report.code.as_deref(), Some(exception_type));
        assert_eq!(report.message.as_deref(), Some("went wrong"));
    }
    // A model's own error may come with only its original message.
    let frame = encode_message(
        &[
            (
                ":exception-type",
                HeaderValue::String("modelStreamErrorException".into()),
            ),
            (":message-type", HeaderValue::String("exception".into())),
        ],
        br#"{"originalStatusCode":500,"originalMessage":"model crashed"}"#,
    );
    let Err(StreamError::Reported(report)) = stream_in_pieces(&frame, &[]) else {
        panic!("not reported");
    };
    assert_eq!(report.message.as_deref(), Some("model crashed"));
}

#[test]
fn unmodelled_errors_are_read_from_their_headers() {
    let frame = encode_message(
        &[
            (":message-type", HeaderValue::String("error".into())),
            (":error-code", HeaderValue::String("InternalFailure".into())),
            (
                ":error-message",
                HeaderValue::String("An internal error occurred.".into()),
            ),
        ],
        b"",
    );
    assert_eq!(
        stream_in_pieces(&frame, &[]),
        Err(StreamError::Reported(ErrorReport {
            message: Some("An internal error occurred.".into()),
            kind: Some("InternalFailure".into()),
            param: None,
            code: Some("InternalFailure".into()),
        }))
    );
}

fn invalid(input: &[u8]) -> String {
    match stream_in_pieces(input, &[]) {
        Err(StreamError::Invalid(reason)) => reason,
        other => panic!("expected an invalid stream, got {other:?}"),
    }
}

#[test]
fn broken_streams_are_invalid() {
    let mut corrupt = transcript();
    corrupt[30] ^= 0x20;
    assert!(
        invalid(&corrupt).contains("checksum"),
        "{}",
        invalid(&corrupt)
    );

    let cut = transcript();
    assert!(invalid(&cut[..cut.len() - 3]).contains("ended inside a message"));

    let bad_json = encode_message(
        &[
            (":message-type", HeaderValue::String("event".into())),
            (
                ":event-type",
                HeaderValue::String("contentBlockDelta".into()),
            ),
        ],
        b"{not json",
    );
    assert!(invalid(&bad_json).contains("`contentBlockDelta` event is not the JSON"));

    let no_event_type = encode_message(
        &[(":message-type", HeaderValue::String("event".into()))],
        b"{}",
    );
    assert!(invalid(&no_event_type).contains("no :event-type"));

    let no_message_type = encode_message(
        &[(":event-type", HeaderValue::String("messageStart".into()))],
        b"{}",
    );
    assert!(invalid(&no_message_type).contains("no :message-type"));

    let odd_message_type = encode_message(
        &[(":message-type", HeaderValue::String("gossip".into()))],
        b"{}",
    );
    assert!(invalid(&odd_message_type).contains("`gossip`"));

    let orphan_input = event(
        "contentBlockDelta",
        json!({"contentBlockIndex": 4, "delta": {"toolUse": {"input": "{}"}}}),
    );
    assert!(invalid(&orphan_input).contains("content block 4"));
}

#[test]
fn the_fuzz_entry_point_survives_its_own_inputs() {
    let stream = transcript();
    for piece in [0u8, 1, 3, 17, 255] {
        let mut data = vec![piece];
        data.extend_from_slice(&stream);
        fuzz_event_stream(&data);
    }
    fuzz_event_stream(&[]);
    fuzz_event_stream(&[5]);
}

proptest! {
    /// However the transcript is cut into reads, the same events come out.
    #[test]
    fn any_split_of_a_transcript_yields_the_same_events(
        mut cuts in proptest::collection::vec(0usize..1200, 0..12),
    ) {
        cuts.sort_unstable();
        prop_assert_eq!(stream_in_pieces(&transcript(), &cuts).unwrap(), transcript_events());
    }

    /// Arbitrary bytes, alone or after a valid transcript, never panic
    /// either decoder.
    #[test]
    fn arbitrary_bytes_never_panic_the_stream_decoder(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        after_transcript in any::<bool>(),
    ) {
        let mut input = if after_transcript { transcript() } else { Vec::new() };
        input.extend_from_slice(&data);
        fuzz_event_stream(&input);
        let _ = stream_in_pieces(&input, &[7, 300]);
    }

    /// Arbitrary JSON-ish payloads in well-framed events never panic the
    /// event reader.
    #[test]
    fn arbitrary_event_payloads_never_panic(
        event_type in prop_oneof![
            Just("messageStart"), Just("contentBlockStart"), Just("contentBlockDelta"),
            Just("contentBlockStop"), Just("messageStop"), Just("metadata"),
        ],
        payload in "[{}\\[\\]\":,a-zA-Z0-9 ]{0,80}",
    ) {
        let frame = encode_message(
            &[
                (":message-type", HeaderValue::String("event".into())),
                (":event-type", HeaderValue::String(event_type.into())),
            ],
            payload.as_bytes(),
        );
        let _ = stream_in_pieces(&frame, &[]);
    }
}

// ---------------------------------------------------------------------------
// Embeddings.

#[test]
fn titan_embedding_bodies() {
    assert_eq!(
        encode_embeddings_titan("Hello \"world\"", Some(256)),
        br#"{"inputText":"Hello \"world\"","dimensions":256}"#
    );
    assert_eq!(encode_embeddings_titan("x", None), br#"{"inputText":"x"}"#);
    assert_eq!(
        decode_embeddings_titan(
            br#"{"embedding":[0.5,-0.25,1e-3],"inputTextTokenCount":4,"embeddingsByType":{"float":[0.5,-0.25,1e-3]}}"#
        )
        .unwrap(),
        (vec![0.5, -0.25, 0.001], Some(4))
    );
    assert_eq!(
        decode_embeddings_titan(br#"{"embedding":[]}"#).unwrap(),
        (vec![], None)
    );
    let error = decode_embeddings_titan(br#"{"inputTextTokenCount":4}"#).unwrap_err();
    assert!(error.0.contains("not a Titan embedding"), "{error:?}");
}

#[test]
fn an_unknown_event_type_ends_the_stream_with_an_error() {
    use crate::canon::StreamDecoder as _;
    let stream = [
        event("messageStart", json!({"role": "assistant"})),
        event("someFutureEvent", json!({"anything": true})),
    ]
    .concat();
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    match decoder.feed(&stream, &mut events) {
        Err(crate::canon::StreamError::Invalid(message)) => {
            assert!(message.contains("someFutureEvent"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_answer_is_final_once_its_usage_follows_the_end() {
    use crate::canon::StreamDecoder as _;
    let mut decoder = StreamDecoder::new();
    let mut events = Vec::new();
    let stop = event("messageStop", json!({"stopReason": "end_turn"}));
    decoder.feed(&stop, &mut events).unwrap();
    assert!(decoder.is_done() && !decoder.is_final());
    let metadata = event(
        "metadata",
        json!({"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}}),
    );
    decoder.feed(&metadata, &mut events).unwrap();
    assert!(decoder.is_final());
}
