//! Tests of the OpenAI dialect's conversion to and from the internal model.
//!
//! The fixtures are shaped like the examples of OpenAI's API reference for
//! chat completions (the "Default", "Image input", "Functions", "Logprobs"
//! and "Streaming" examples, and the streamed tool call and refusal of the
//! function-calling and structured-outputs guides), so that what is checked
//! is what the SDKs and the API really send. Decoding is checked against
//! exact `canon` values, encoding against exact JSON (byte for byte where
//! the order of our output is fixed).

use serde_json::{Value, json};
use switchboard_core::Usage;

use super::ChatRequest;
use super::canonical::{
    ChunkDecoder, ChunkEncoder, decode_response, encode_request, encode_response,
    request_to_canonical,
};
use crate::canon::{
    self, ChatResponse, ErrorReport, FinishReason, Frame, ImageSource, Message, Part, Reasoning,
    ResponseFormat, Role, StreamDecoder as _, StreamEncoder as _, StreamError, StreamEvent, Tool,
    ToolChoice, Unsupported,
};

// ---- helpers ----------------------------------------------------------

/// Parses an OpenAI body and reads it into the internal model.
fn canon_of(body: &str) -> canon::ChatRequest {
    let request = ChatRequest::parse(body.as_bytes()).expect("the request parses");
    request_to_canonical(&request).expect("the request converts")
}

fn refused(body: &str) -> super::RequestError {
    let request = ChatRequest::parse(body.as_bytes()).expect("the request parses");
    request_to_canonical(&request).expect_err("the conversion should refuse the request")
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

fn tool_result(call_id: &str, text: &str) -> Part {
    Part::ToolResult {
        call_id: call_id.to_owned(),
        name: None,
        content: vec![Part::text(text)],
        is_error: false,
        cache: None,
    }
}

fn names(unsupported: &[Unsupported]) -> Vec<&str> {
    unsupported.iter().map(|name| name.0.as_str()).collect()
}

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("the body is JSON")
}

fn weather_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "The city and state, e.g. San Francisco, CA"
            },
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
        },
        "required": ["location"]
    })
}

/// Feeds a stream in the given pieces, stopping at the first error.
fn decode_stream(
    input: &[u8],
    cuts: &[usize],
) -> (Vec<StreamEvent>, Result<(), StreamError>, bool) {
    let mut decoder = ChunkDecoder::new();
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
    assert!(done, "the stream ends with [DONE]");
    events
}

fn frames_text(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|frame| std::str::from_utf8(&frame.bytes).expect("frames are UTF-8"))
        .collect()
}

// ---- requests: reading the API reference's examples ----------------

#[test]
fn the_reference_default_request_reads_into_canon() {
    let body = r#"{
        "model": "gpt-4o",
        "messages": [
            {"role": "developer", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"}
        ]
    }"#;
    assert_eq!(
        canon_of(body),
        canon::ChatRequest {
            model: "gpt-4o".to_owned(),
            messages: vec![
                Message::text(Role::System, "You are a helpful assistant."),
                Message::text(Role::User, "Hello!"),
            ],
            ..canon::ChatRequest::default()
        }
    );
}

#[test]
fn the_reference_image_request_reads_urls_and_data_urls() {
    let body = r#"{
        "model": "gpt-4.1",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/Gfp-wisconsin-madison-the-nature-boardwalk.jpg/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg"
                        }
                    },
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg==", "detail": "low"}
                    }
                ]
            }
        ],
        "max_tokens": 300
    }"#;
    let request = canon_of(body);
    assert_eq!(request.max_tokens, Some(300));
    assert_eq!(
        request.messages,
        vec![message(
            Role::User,
            vec![
                Part::text("What is in this image?"),
                Part::Image {
                    source: ImageSource::Url(
                        "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/Gfp-wisconsin-madison-the-nature-boardwalk.jpg/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg".to_owned()
                    ),
                    detail: None,
                    cache: None,
                },
                Part::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/jpeg".to_owned(),
                        data: "/9j/4AAQSkZJRg==".to_owned(),
                    },
                    detail: Some("low".to_owned()),
                    cache: None,
                },
            ],
        )]
    );
    assert!(request.unmapped.is_empty());
}

#[test]
fn the_reference_functions_request_reads_tools_and_choice() {
    let body = r#"{
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "What is the weather like in Boston today?"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_current_weather",
                    "description": "Get the current weather in a given location",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "location": {
                                "type": "string",
                                "description": "The city and state, e.g. San Francisco, CA"
                            },
                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                        },
                        "required": ["location"]
                    }
                }
            }
        ],
        "tool_choice": "auto"
    }"#;
    let request = canon_of(body);
    assert_eq!(
        request.tools,
        vec![Tool {
            name: "get_current_weather".to_owned(),
            description: Some("Get the current weather in a given location".to_owned()),
            parameters: weather_schema(),
            strict: None,
            cache: None,
        }]
    );
    assert_eq!(request.tool_choice, Some(ToolChoice::Auto));
    assert!(request.unmapped.is_empty());
}

#[test]
fn the_reference_logprobs_request_is_kept_by_name_and_reported() {
    let body = r#"{
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hello!"}],
        "logprobs": true,
        "top_logprobs": 2
    }"#;
    let request = canon_of(body);
    assert_eq!(
        request.unmapped,
        vec![
            ("logprobs".to_owned(), json!(true)),
            ("top_logprobs".to_owned(), json!(2)),
        ]
    );
    let encoded = encode_request(&request, "upstream");
    assert_eq!(names(&encoded.unsupported), ["logprobs", "top_logprobs"]);
    let body = body_json(&encoded.body);
    assert!(body.get("logprobs").is_none() && body.get("top_logprobs").is_none());
}

#[test]
fn n_above_one_is_reported_and_spelled_out_defaults_are_not() {
    let request = canon_of(
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2,"logit_bias":{"50256":-100}}"#,
    );
    assert_eq!(
        request.unmapped,
        vec![
            ("n".to_owned(), json!(2)),
            ("logit_bias".to_owned(), json!({"50256": -100})),
        ]
    );
    // `n: 1`, `logprobs: false`, `store: false` and nulls mean nothing.
    let request = canon_of(
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":1,"logprobs":false,"store":false,"metadata":null}"#,
    );
    assert!(request.unmapped.is_empty(), "{:?}", request.unmapped);
}

#[test]
fn every_mapped_parameter_reads_into_canon() {
    let body = r#"{
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "policy"},
            {"role": "user", "content": "Hi", "name": "alice"}
        ],
        "tools": [{"type": "function", "function": {"name": "noop", "strict": true}}],
        "tool_choice": {"type": "function", "function": {"name": "noop"}},
        "parallel_tool_calls": false,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "description": "The answer",
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                "strict": true
            }
        },
        "max_completion_tokens": 99,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n", "END"],
        "seed": -7,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "user": "user-1234",
        "reasoning_effort": "high",
        "stream": true,
        "stream_options": {"include_usage": true}
    }"#;
    assert_eq!(
        canon_of(body),
        canon::ChatRequest {
            model: "gpt-4o".to_owned(),
            messages: vec![
                Message {
                    name: Some("policy".to_owned()),
                    ..Message::text(Role::System, "Be brief.")
                },
                Message {
                    name: Some("alice".to_owned()),
                    ..Message::text(Role::User, "Hi")
                },
            ],
            tools: vec![Tool {
                name: "noop".to_owned(),
                description: None,
                // A function without parameters takes none.
                parameters: json!({"type": "object", "properties": {}}),
                strict: Some(true),
                cache: None,
            }],
            tool_choice: Some(ToolChoice::Tool("noop".to_owned())),
            parallel_tool_calls: Some(false),
            response_format: Some(ResponseFormat::JsonSchema {
                name: "answer".to_owned(),
                schema: json!({"type": "object", "properties": {"a": {"type": "string"}}}),
                strict: Some(true),
                description: Some("The answer".to_owned()),
            }),
            max_tokens: Some(99),
            temperature: Some(0.2),
            top_p: Some(0.9),
            top_k: None,
            stop: vec!["\n\n".to_owned(), "END".to_owned()],
            seed: Some(-7),
            frequency_penalty: Some(0.5),
            presence_penalty: Some(-0.5),
            user: Some("user-1234".to_owned()),
            reasoning: Some(Reasoning {
                effort: Some("high".to_owned()),
                budget_tokens: None,
                enabled: true,
            }),
            stream: true,
            stream_usage: true,
            unmapped: Vec::new(),
        }
    );
    let single_stop =
        canon_of(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":"END"}"#);
    assert_eq!(single_stop.stop, vec!["END".to_owned()]);
    let effort_none = canon_of(
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"reasoning_effort":"none"}"#,
    );
    assert_eq!(
        effort_none.reasoning,
        Some(Reasoning {
            effort: Some("none".to_owned()),
            budget_tokens: None,
            enabled: false,
        })
    );
    for (format, expected) in [
        (r#"{"type":"text"}"#, ResponseFormat::Text),
        (r#"{"type":"json_object"}"#, ResponseFormat::JsonObject),
    ] {
        let request = canon_of(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"response_format":{format}}}"#
        ));
        assert_eq!(request.response_format, Some(expected));
    }
}

#[test]
fn a_parallel_tool_call_turn_reads_into_calls_and_results() {
    let body = r#"{
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": null,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
                ]
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "9C"}]},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I won't."}], "reasoning_content": "hmm"}
        ]
    }"#;
    assert_eq!(
        canon_of(body).messages,
        vec![
            Message::text(Role::User, "Weather in Paris and Oslo?"),
            message(
                Role::Assistant,
                vec![
                    tool_call("call_1", "get_weather", r#"{"city":"Paris"}"#),
                    tool_call("call_2", "get_weather", r#"{"city":"Oslo"}"#),
                ],
            ),
            message(Role::Tool, vec![tool_result("call_1", "18C")]),
            message(Role::Tool, vec![tool_result("call_2", "9C")]),
            message(
                Role::Assistant,
                vec![
                    Part::Reasoning {
                        text: "hmm".to_owned(),
                        signature: None,
                    },
                    Part::text("I won't."),
                ],
            ),
        ]
    );
}

#[test]
fn content_the_model_cannot_hold_is_kept_by_path() {
    let body = r#"{
        "model": "gpt-4o-audio-preview",
        "messages": [
            {"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}
            ]},
            {"role": "function", "name": "f", "content": "x"},
            {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{}"}}
        ]
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
            "messages[0].content[0] (input_audio)",
            "messages[1].role (function)",
            "messages[2].function_call",
        ]
    );
    let encoded = encode_request(&request, "u");
    assert_eq!(names(&encoded.unsupported), paths);
}

#[test]
fn requests_the_model_cannot_translate_are_refused_with_the_parameter() {
    let cases = [
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search_preview"}]}"#,
            "tools",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"description":"no name"}}]}"#,
            "tools",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"sometimes"}"#,
            "tool_choice",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"yaml"}}"#,
            "response_format",
        ),
        (
            r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
            "messages",
        ),
        (
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function"}]}]}"#,
            "messages",
        ),
    ];
    for (body, param) in cases {
        assert_eq!(
            refused(body).param.as_deref(),
            Some(param),
            "{body} should be refused naming {param}"
        );
    }
}

// ---- requests: writing for an OpenAI upstream ------------------------

#[test]
fn encode_request_writes_every_field_in_a_fixed_order() {
    let request = canon::ChatRequest {
        model: "client-name".to_owned(),
        messages: vec![
            Message::text(Role::System, "You are a helpful assistant."),
            message(
                Role::User,
                vec![
                    Part::text("What is in this image?"),
                    Part::Image {
                        source: ImageSource::Base64 {
                            media_type: "image/png".to_owned(),
                            data: "iVBORw0KGgo=".to_owned(),
                        },
                        detail: Some("high".to_owned()),
                        cache: None,
                    },
                ],
            ),
            message(
                Role::Assistant,
                vec![
                    Part::Reasoning {
                        text: "dropped".to_owned(),
                        signature: Some("sig".to_owned()),
                    },
                    tool_call("call_1", "get_weather", r#"{"city":"Paris"}"#),
                    tool_call("call_2", "get_weather", r#"{"city":"Oslo"}"#),
                ],
            ),
            message(
                Role::Tool,
                vec![tool_result("call_1", "18C"), tool_result("call_2", "9C")],
            ),
            Message {
                name: Some("alice".to_owned()),
                ..message(Role::User, vec![Part::text("Thanks"), Part::text("!")])
            },
        ],
        tools: vec![Tool {
            name: "get_weather".to_owned(),
            description: Some("Weather".to_owned()),
            parameters: json!({"type": "object"}),
            strict: Some(false),
            cache: Some(json!({"type": "ephemeral"})),
        }],
        tool_choice: Some(ToolChoice::Tool("get_weather".to_owned())),
        parallel_tool_calls: Some(false),
        response_format: Some(ResponseFormat::JsonSchema {
            name: "answer".to_owned(),
            schema: json!({"type": "object"}),
            strict: Some(true),
            description: Some("The answer".to_owned()),
        }),
        max_tokens: Some(1024),
        temperature: Some(0.7),
        top_p: Some(1.0),
        top_k: None,
        stop: vec!["END".to_owned()],
        seed: Some(42),
        frequency_penalty: Some(0.1),
        presence_penalty: None,
        user: Some("u-1".to_owned()),
        reasoning: Some(Reasoning {
            effort: Some("low".to_owned()),
            budget_tokens: None,
            enabled: true,
        }),
        stream: true,
        stream_usage: false,
        unmapped: Vec::new(),
    };
    let encoded = encode_request(&request, "gpt-4o-2024-08-06");
    assert_eq!(encoded.unsupported, Vec::new());
    let expected = concat!(
        r#"{"model":"gpt-4o-2024-08-06","messages":["#,
        r#"{"role":"system","content":"You are a helpful assistant."},"#,
        r#"{"role":"user","content":[{"type":"text","text":"What is in this image?"},"#,
        r#"{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo=","detail":"high"}}]},"#,
        r#"{"role":"assistant","content":null,"tool_calls":["#,
        r#"{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},"#,
        r#"{"id":"call_2","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},"#,
        r#"{"role":"tool","tool_call_id":"call_1","content":"18C"},"#,
        r#"{"role":"tool","tool_call_id":"call_2","content":"9C"},"#,
        r#"{"role":"user","content":"Thanks!","name":"alice"}],"#,
        r#""tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object"},"strict":false}}],"#,
        r#""tool_choice":{"type":"function","function":{"name":"get_weather"}},"#,
        r#""parallel_tool_calls":false,"#,
        r#""response_format":{"type":"json_schema","json_schema":{"name":"answer","description":"The answer","schema":{"type":"object"},"strict":true}},"#,
        r#""max_completion_tokens":1024,"temperature":0.7,"top_p":1.0,"frequency_penalty":0.1,"#,
        r#""stop":["END"],"seed":42,"user":"u-1","reasoning_effort":"low","#,
        r#""stream":true,"stream_options":{"include_usage":true}}"#,
    );
    assert_eq!(std::str::from_utf8(&encoded.body).unwrap(), expected);
}

#[test]
fn encode_request_reports_what_openai_cannot_carry() {
    let request = canon::ChatRequest {
        model: "claude".to_owned(),
        messages: vec![message(
            Role::Tool,
            vec![Part::ToolResult {
                call_id: "toolu_1".to_owned(),
                name: None,
                content: vec![
                    Part::text("see chart"),
                    Part::Image {
                        source: ImageSource::Url("https://example.com/a.png".to_owned()),
                        detail: None,
                        cache: None,
                    },
                ],
                is_error: false,
                cache: None,
            }],
        )],
        top_k: Some(5),
        reasoning: Some(Reasoning {
            effort: None,
            budget_tokens: Some(2048),
            enabled: true,
        }),
        unmapped: vec![("tools.0".to_owned(), json!({"type": "web_search_20250305"}))],
        ..canon::ChatRequest::default()
    };
    let encoded = encode_request(&request, "gpt-4o");
    assert_eq!(
        names(&encoded.unsupported),
        [
            "tools.0",
            "image in a tool result",
            "top_k",
            "thinking.budget_tokens"
        ]
    );
    assert_eq!(
        body_json(&encoded.body),
        json!({
            "model": "gpt-4o",
            "messages": [{"role": "tool", "tool_call_id": "toolu_1", "content": "see chart"}]
        })
    );
    // Thinking turned off needs nothing said to OpenAI.
    let off = canon::ChatRequest {
        reasoning: Some(Reasoning {
            effort: None,
            budget_tokens: None,
            enabled: false,
        }),
        ..canon::ChatRequest::default()
    };
    let encoded = encode_request(&off, "gpt-4o");
    assert!(encoded.unsupported.is_empty());
    assert_eq!(
        body_json(&encoded.body),
        json!({"model": "gpt-4o", "messages": []})
    );
}

// ---- answers ------------------------------------------------------------

#[test]
fn the_reference_default_response_decodes_exactly() {
    let body = r#"{
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4.1-2025-04-14",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! How can I assist you today?",
                    "refusal": null,
                    "annotations": []
                },
                "logprobs": null,
                "finish_reason": "stop"
            }
        ],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        },
        "service_tier": "default"
    }"#;
    assert_eq!(
        decode_response(body.as_bytes()).unwrap(),
        ChatResponse {
            id: "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT".to_owned(),
            model: "gpt-4.1-2025-04-14".to_owned(),
            parts: vec![Part::text("Hello! How can I assist you today?")],
            finish: Some(FinishReason::Stop),
            stop_sequence: None,
            usage: Usage {
                input_tokens: Some(19),
                output_tokens: Some(10),
                cached_input_tokens: Some(0),
                reasoning_tokens: Some(0),
                cache_write_tokens: None,
            },
            cache_write_tokens: None,
            created: Some(1741569952),
        }
    );
}

#[test]
fn the_reference_function_call_response_decodes_exactly() {
    let body = r#"{
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1699896916,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [
                        {
                            "id": "call_abc123",
                            "type": "function",
                            "function": {
                                "name": "get_current_weather",
                                "arguments": "{\n\"location\": \"Boston, MA\"\n}"
                            }
                        }
                    ]
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }
        ],
        "usage": {
            "prompt_tokens": 82,
            "completion_tokens": 17,
            "total_tokens": 99,
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        }
    }"#;
    assert_eq!(
        decode_response(body.as_bytes()).unwrap(),
        ChatResponse {
            id: "chatcmpl-abc123".to_owned(),
            model: "gpt-4o-mini".to_owned(),
            // The arguments stay the model's own text, whitespace and all.
            parts: vec![tool_call(
                "call_abc123",
                "get_current_weather",
                "{\n\"location\": \"Boston, MA\"\n}"
            )],
            finish: Some(FinishReason::ToolCalls),
            stop_sequence: None,
            usage: Usage {
                input_tokens: Some(82),
                output_tokens: Some(17),
                cached_input_tokens: None,
                reasoning_tokens: Some(0),
                cache_write_tokens: None,
            },
            cache_write_tokens: None,
            created: Some(1699896916),
        }
    );
}

#[test]
fn a_refusal_decodes_as_text_with_the_refusal_reason() {
    let body = r#"{
        "id": "chatcmpl-9nYAG9LPNonX8DAyrkwYfemr3C8HC",
        "object": "chat.completion",
        "created": 1721596428,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "refusal": "I'm sorry, I cannot assist with that request."
                },
                "logprobs": null,
                "finish_reason": "stop"
            }
        ],
        "usage": {"prompt_tokens": 81, "completion_tokens": 11, "total_tokens": 92},
        "system_fingerprint": "fp_3407719c7f"
    }"#;
    let response = decode_response(body.as_bytes()).unwrap();
    assert_eq!(
        response.parts,
        vec![Part::text("I'm sorry, I cannot assist with that request.")]
    );
    assert_eq!(response.finish, Some(FinishReason::Refusal));
}

#[test]
fn answers_that_are_not_chat_completions_are_invalid() {
    for body in [
        "not json",
        r#"{"object":"list","data":[]}"#,
        r#"{"choices":[]}"#,
        r#"{"choices":[{"index":0,"finish_reason":"stop"}]}"#,
        r#"{"choices":[{"message":{"role":"assistant","tool_calls":[{"type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#,
    ] {
        assert!(
            decode_response(body.as_bytes()).is_err(),
            "{body} should be refused"
        );
    }
}

#[test]
fn encode_response_writes_a_chat_completion_byte_for_byte() {
    let response = ChatResponse {
        id: "msg_01".to_owned(),
        model: "claude-sonnet-4-5".to_owned(),
        parts: vec![
            Part::Reasoning {
                text: "Think.".to_owned(),
                signature: Some("sig".to_owned()),
            },
            Part::text("Let me check"),
            Part::text("."),
            tool_call("toolu_1", "get_weather", r#"{"city":"Paris"}"#),
        ],
        finish: Some(FinishReason::ToolCalls),
        stop_sequence: None,
        usage: Usage {
            input_tokens: Some(120),
            output_tokens: Some(30),
            cached_input_tokens: Some(100),
            reasoning_tokens: None,
            cache_write_tokens: Some(7),
        },
        cache_write_tokens: Some(7),
        created: None,
    };
    let expected = concat!(
        r#"{"id":"msg_01","object":"chat.completion","created":1700000000,"model":"claude-sonnet-4-5","#,
        r#""choices":[{"index":0,"message":{"role":"assistant","content":"Let me check.","refusal":null,"#,
        r#""reasoning_content":"Think.","tool_calls":[{"id":"toolu_1","type":"function","#,
        r#""function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"#,
        r#""logprobs":null,"finish_reason":"tool_calls"}],"#,
        r#""usage":{"prompt_tokens":120,"completion_tokens":30,"total_tokens":150,"prompt_tokens_details":{"cached_tokens":100}}}"#,
    );
    assert_eq!(
        std::str::from_utf8(&encode_response(&response, 1_700_000_000)).unwrap(),
        expected
    );
    // An upstream's own creation time wins over the gateway's clock; a
    // turn of tool calls alone has no content.
    let calls_only = ChatResponse {
        parts: vec![tool_call("c", "f", "{}")],
        created: Some(5),
        finish: Some(FinishReason::Refusal),
        ..response
    };
    let body = body_json(&encode_response(&calls_only, 1_700_000_000));
    assert_eq!(body["created"], json!(5));
    assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(body["choices"][0]["finish_reason"], json!("content_filter"));
}

#[test]
fn finish_reasons_map_to_openai_and_back() {
    let cases = [
        (FinishReason::Stop, "stop", FinishReason::Stop),
        (FinishReason::StopSequence, "stop", FinishReason::Stop),
        (FinishReason::Pause, "stop", FinishReason::Stop),
        (FinishReason::Length, "length", FinishReason::Length),
        (
            FinishReason::ToolCalls,
            "tool_calls",
            FinishReason::ToolCalls,
        ),
        (
            FinishReason::ContentFilter,
            "content_filter",
            FinishReason::ContentFilter,
        ),
        (
            FinishReason::Refusal,
            "content_filter",
            FinishReason::ContentFilter,
        ),
    ];
    for (reason, wire, back) in cases {
        let response = ChatResponse {
            id: "x".to_owned(),
            model: "m".to_owned(),
            parts: vec![Part::text("a")],
            finish: Some(reason),
            stop_sequence: None,
            usage: Usage::default(),
            cache_write_tokens: None,
            created: Some(1),
        };
        let body = encode_response(&response, 0);
        assert_eq!(body_json(&body)["choices"][0]["finish_reason"], json!(wire));
        assert_eq!(decode_response(&body).unwrap().finish, Some(back));
    }
}

// ---- streams ------------------------------------------------------------

/// The API reference's streaming example, with its `....` filled in.
const REFERENCE_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\", \"system_fingerprint\": \"fp_44709d6fcb\", \"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\", \"system_fingerprint\": \"fp_44709d6fcb\", \"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\", \"system_fingerprint\": \"fp_44709d6fcb\", \"choices\":[{\"index\":0,\"delta\":{\"content\":\"How are\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\", \"system_fingerprint\": \"fp_44709d6fcb\", \"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n",
    "data: [DONE]\n\n",
);

/// A streamed tool call as the function-calling guide shows its deltas,
/// with the usage chunk `stream_options.include_usage` adds.
const TOOL_CALL_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-AbC\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5f20662549\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_DdmO9pD3xa9XTPNJ32zg2hcA\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}],\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AbC\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5f20662549\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AbC\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5f20662549\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"location\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AbC\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5f20662549\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\":\\\"\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AbC\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5f20662549\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"Paris\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AbC\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5f20662549\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\", France\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AbC\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5f20662549\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AbC\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5f20662549\",\"choices\":[],\"usage\":{\"prompt_tokens\":68,\"completion_tokens\":17,\"total_tokens\":85,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn the_reference_stream_decodes_exactly() {
    assert_eq!(
        decode_whole(REFERENCE_STREAM),
        vec![
            StreamEvent::Start {
                id: "chatcmpl-123".to_owned(),
                model: "gpt-4o-mini".to_owned(),
            },
            StreamEvent::TextDelta("Hello".to_owned()),
            StreamEvent::TextDelta("How are".to_owned()),
            StreamEvent::Finish {
                reason: FinishReason::Stop,
                stop_sequence: None,
            },
        ]
    );
}

#[test]
fn a_streamed_tool_call_decodes_exactly_with_its_usage() {
    assert_eq!(
        decode_whole(TOOL_CALL_STREAM),
        vec![
            StreamEvent::Start {
                id: "chatcmpl-AbC".to_owned(),
                model: "gpt-4o-2024-08-06".to_owned(),
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_DdmO9pD3xa9XTPNJ32zg2hcA".to_owned(),
                name: "get_weather".to_owned(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"".to_owned(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "location".to_owned(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "\":\"".to_owned(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "Paris".to_owned(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: ", France\"}".to_owned(),
            },
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
                stop_sequence: None,
            },
            StreamEvent::Usage {
                usage: Usage {
                    input_tokens: Some(68),
                    output_tokens: Some(17),
                    cached_input_tokens: Some(0),
                    reasoning_tokens: Some(0),
                    cache_write_tokens: None,
                },
                cache_write_tokens: None,
            },
        ]
    );
}

#[test]
fn a_stream_split_at_every_byte_decodes_the_same() {
    for stream in [REFERENCE_STREAM, TOOL_CALL_STREAM] {
        let whole = decode_whole(stream);
        let every_byte: Vec<usize> = (1..stream.len()).collect();
        let (split, result, done) = decode_stream(stream.as_bytes(), &every_byte);
        result.unwrap();
        assert!(done);
        assert_eq!(split, whole);
    }
}

#[test]
fn nothing_after_done_is_read() {
    let stream = format!("{REFERENCE_STREAM}data: not json at all\n\n");
    let (events, result, done) = decode_stream(stream.as_bytes(), &[]);
    assert!(result.is_ok() && done);
    assert_eq!(events.len(), 4);
}

#[test]
fn an_error_inside_the_stream_is_reported() {
    let stream = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
        "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
    );
    let (events, result, done) = decode_stream(stream.as_bytes(), &[]);
    assert!(!done);
    assert_eq!(events.len(), 2, "what came before the error is kept");
    assert_eq!(
        result,
        Err(StreamError::Reported(ErrorReport {
            message: Some("The server had an error while processing your request.".to_owned()),
            kind: Some("server_error".to_owned()),
            param: None,
            code: None,
        }))
    );
}

#[test]
fn malformed_chunks_are_invalid() {
    for stream in [
        "data: {not json\n\n",
        "data: [1,2,3]\n\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"c\"}]}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":-1}]}}]}\n\n",
        "data: \u{0}\u{1}\n\n",
    ] {
        let (_, result, _) = decode_stream(stream.as_bytes(), &[]);
        assert!(
            matches!(result, Err(StreamError::Invalid(_))),
            "{stream:?} gave {result:?}"
        );
    }
    let (_, result, _) = decode_stream(b"data: \xff\xfe\n\n", &[]);
    assert!(matches!(result, Err(StreamError::Invalid(_))));
}

#[test]
fn the_encoder_writes_chunks_byte_for_byte() {
    let mut encoder = ChunkEncoder::new("client-model", 1_700_000_000, true);
    let mut frames = Vec::new();
    let events = [
        StreamEvent::Start {
            id: "msg_01".to_owned(),
            model: "claude-sonnet-4-5".to_owned(),
        },
        StreamEvent::Usage {
            usage: Usage {
                input_tokens: Some(472),
                output_tokens: Some(2),
                cached_input_tokens: None,
                reasoning_tokens: None,
                cache_write_tokens: None,
            },
            cache_write_tokens: None,
        },
        StreamEvent::ReasoningDelta("Hmm.".to_owned()),
        StreamEvent::ReasoningSignature("sig".to_owned()),
        StreamEvent::TextDelta("Okay".to_owned()),
        StreamEvent::ToolCallStart {
            index: 0,
            id: "toolu_01".to_owned(),
            name: "get_weather".to_owned(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: "{\"location\":".to_owned(),
        },
        StreamEvent::Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        },
        StreamEvent::Usage {
            usage: Usage {
                input_tokens: None,
                output_tokens: Some(89),
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
    let head = r#"{"id":"msg_01","object":"chat.completion.chunk","created":1700000000,"model":"claude-sonnet-4-5","choices":[{"index":0,"delta":"#;
    let expected = [
        format!(
            "data: {head}{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ),
        format!(
            "data: {head}{{\"reasoning_content\":\"Hmm.\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ),
        format!(
            "data: {head}{{\"content\":\"Okay\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ),
        format!(
            "data: {head}{{\"tool_calls\":[{{\"index\":0,\"id\":\"toolu_01\",\"type\":\"function\",\"function\":{{\"name\":\"get_weather\",\"arguments\":\"\"}}}}]}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ),
        format!(
            "data: {head}{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":\"{{\\\"location\\\":\"}}}}]}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ),
        format!("data: {head}{{}},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}}]}}\n\n"),
        "data: {\"id\":\"msg_01\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-sonnet-4-5\",\"choices\":[],\"usage\":{\"prompt_tokens\":472,\"completion_tokens\":89,\"total_tokens\":561}}\n\n".to_owned(),
    ];
    let actual: Vec<&str> = frames
        .iter()
        .map(|frame| std::str::from_utf8(&frame.bytes).unwrap())
        .collect();
    assert_eq!(actual, expected);
    let content: Vec<bool> = frames.iter().map(|frame| frame.content).collect();
    assert_eq!(content, [false, true, true, true, true, true, false]);
}

#[test]
fn the_encoder_names_the_answer_itself_and_sends_usage_only_when_asked() {
    let mut encoder = ChunkEncoder::new("client-model", 255, false);
    let mut frames = Vec::new();
    encoder.event(StreamEvent::TextDelta("Hi".to_owned()), &mut frames);
    encoder.event(
        StreamEvent::Usage {
            usage: Usage {
                input_tokens: Some(1),
                output_tokens: Some(1),
                cached_input_tokens: None,
                reasoning_tokens: None,
                cache_write_tokens: None,
            },
            cache_write_tokens: None,
        },
        &mut frames,
    );
    encoder.finish(&mut frames);
    let text = frames_text(&frames);
    assert_eq!(frames.len(), 2, "{text}");
    assert!(
        text.contains(r#""id":"chatcmpl-00000000000000ff""#),
        "{text}"
    );
    assert!(text.contains(r#""model":"client-model""#), "{text}");
    assert!(!text.contains("usage"), "{text}");
    // A Start after the first frame changes nothing already sent.
    let mut late = ChunkEncoder::new("client-model", 1, false);
    let mut frames = Vec::new();
    late.event(StreamEvent::TextDelta("a".to_owned()), &mut frames);
    late.event(
        StreamEvent::Start {
            id: "late".to_owned(),
            model: "late".to_owned(),
        },
        &mut frames,
    );
    late.event(StreamEvent::TextDelta("b".to_owned()), &mut frames);
    assert!(!frames_text(&frames).contains("late"));
}

#[test]
fn encoded_chunks_decode_back_into_the_same_events() {
    let mut encoder = ChunkEncoder::new("m", 7, true);
    let mut frames = Vec::new();
    let events = vec![
        StreamEvent::Start {
            id: "chatcmpl-x".to_owned(),
            model: "gpt-4o".to_owned(),
        },
        StreamEvent::TextDelta("a\nb".to_owned()),
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
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: "{}".to_owned(),
        },
        StreamEvent::ToolCallDelta {
            index: 1,
            arguments: "{\"x\":1}".to_owned(),
        },
        StreamEvent::Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        },
    ];
    for event in events.clone() {
        encoder.event(event, &mut frames);
    }
    encoder.finish(&mut frames);
    let stream = format!("{}data: [DONE]\n\n", frames_text(&frames));
    let mut expected = events;
    expected.push(StreamEvent::Usage {
        usage: Usage {
            input_tokens: Some(0),
            output_tokens: Some(0),
            cached_input_tokens: None,
            reasoning_tokens: None,
            cache_write_tokens: None,
        },
        cache_write_tokens: None,
    });
    assert_eq!(decode_whole(&stream), expected);
}
