//! Cross-dialect property tests: random `canon` conversations, answers and
//! streams are written in one dialect and read back, and must keep their
//! meaning.
//!
//! - Requests: canon → OpenAI body → canon, and canon → Anthropic body →
//!   canon. What may change is exactly what the adapters document as
//!   changing, and each view below (`openai_view`, `anthropic_view`)
//!   applies those changes to both sides before comparing: OpenAI drops
//!   reasoning parts, cache markers, tool results' error flags and `top_k`,
//!   and joins a text-only message's parts into one string; Anthropic
//!   hoists system prompts, merges consecutive turns of one role (tool
//!   results of parallel calls share a user turn, ahead of the user's
//!   words), drops empty text, reasoning without both text and a
//!   signature, participant names, an image's `detail`, `seed` and the
//!   penalties, and always has a `max_tokens`. What a target cannot carry
//!   must be reported by name, so the reported names are checked too.
//! - Gemini and Bedrock request bodies are written for the same random
//!   conversations: never a panic, always a JSON object, and every
//!   unmapped field reported.
//! - Answers: canon → `encode_response` → `decode_response` keeps the
//!   text, the tool calls (ids, names, arguments as JSON values), the
//!   finish reason (as each dialect can say it) and the usage.
//! - Streams: random event sequences go through a dialect's encoder, the
//!   frames are concatenated and fed to the same dialect's decoder in
//!   random pieces, and the accumulated text, reasoning, tool calls,
//!   finish reason and final usage must equal the input's.

use std::collections::BTreeSet;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value};
use switchboard_core::Usage;
use switchboard_dialects::canon::{
    self, ChatRequest, ChatResponse, FinishReason, ImageSource, Message, Part, Reasoning,
    ResponseFormat, Role, StreamDecoder, StreamEncoder, StreamEvent, Tool, ToolChoice, merge_usage,
};
use switchboard_dialects::{anthropic, bedrock, gemini, openai};

const UPSTREAM_MODEL: &str = "upstream-model";

/// proptest's defaults (256 cases, or `PROPTEST_CASES`), except that a
/// failure is reported with its minimal case and nothing is written into
/// the source tree.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- strategies ---------------------------------------------------------

/// Characters that stress escaping and framing: quotes, backslashes, line
/// ends, braces, multi-byte and astral characters, a line separator.
const CHARS: &[char] = &[
    'a', 'b', 'Z', '0', ' ', '"', '\\', '\n', '\r', '\t', '{', '}', '[', ':', ',', 'é', '中', '😀',
    '\u{2028}', '<', '/', 'd', 'a', 't', 'a',
];

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(select(CHARS), 0..max).prop_map(String::from_iter)
}

fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,7}"
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Floats with short decimal forms: serde_json (without its
        // `float_roundtrip` feature) may read a 17-digit float back one
        // unit in the last place off, which is not the adapters' doing.
        any::<i32>().prop_map(|number| Value::from(f64::from(number) / 8.0)),
        text(8).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((word(), inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    vec((word(), json_value()), 0..4)
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
}

fn cache() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(serde_json::json!({"type": "ephemeral"}))),
        1 => Just(Some(serde_json::json!({"type": "ephemeral", "ttl": "1h"}))),
    ]
}

fn text_part() -> impl Strategy<Value = Part> {
    (text(12), cache()).prop_map(|(text, cache)| Part::Text { text, cache })
}

fn image_part() -> impl Strategy<Value = Part> {
    let source = prop_oneof![
        word().prop_map(|name| ImageSource::Url(format!("https://example.com/{name}.png"))),
        (
            select(&["image/png", "image/jpeg", "image/gif", "image/webp"][..]),
            "[A-Za-z0-9+/]{4,24}={0,2}",
        )
            .prop_map(|(media_type, data)| ImageSource::Base64 {
                media_type: media_type.to_owned(),
                data,
            }),
    ];
    (
        source,
        proptest::option::of(select(&["low", "high", "auto"][..])),
        cache(),
    )
        .prop_map(|(source, detail, cache)| Part::Image {
            source,
            detail: detail.map(str::to_owned),
            cache,
        })
}

fn name() -> impl Strategy<Value = Option<String>> {
    proptest::option::weighted(0.15, word())
}

fn user_message() -> impl Strategy<Value = Message> {
    (
        vec(prop_oneof![3 => text_part(), 1 => image_part()], 1..4),
        name(),
    )
        .prop_map(|(parts, name)| Message {
            role: Role::User,
            parts,
            name,
        })
}

fn system_message() -> impl Strategy<Value = Message> {
    vec(text_part(), 1..3).prop_map(|parts| Message {
        role: Role::System,
        parts,
        name: None,
    })
}

/// An assistant turn: maybe reasoning (signed or not), maybe text, then
/// its tool calls with JSON-object arguments.
fn assistant_message() -> impl Strategy<Value = Message> {
    (
        proptest::option::weighted(0.3, (text(10), proptest::option::of("[A-Za-z0-9+/]{8,16}"))),
        proptest::option::weighted(0.7, text_part()),
        vec((word(), word(), json_object(), cache()), 0..4),
        name(),
    )
        .prop_map(|(reasoning, text, calls, name)| {
            let mut parts = Vec::new();
            if let Some((text, signature)) = reasoning {
                parts.push(Part::Reasoning { text, signature });
            }
            parts.extend(text);
            for (index, (id, tool, arguments, cache)) in calls.into_iter().enumerate() {
                parts.push(Part::ToolCall {
                    id: format!("call_{index}_{id}"),
                    name: tool,
                    arguments: arguments.to_string(),
                    cache,
                });
            }
            Message {
                role: Role::Assistant,
                parts,
                name,
            }
        })
}

/// Results for the assistant's calls: one tool message each (OpenAI's
/// shape) or all in one (Anthropic's).
fn tool_messages(assistant: &Message) -> impl Strategy<Value = Vec<Message>> + use<> {
    let ids: Vec<(String, String)> = assistant
        .parts
        .iter()
        .filter_map(|part| match part {
            Part::ToolCall { id, name, .. } => Some((id.clone(), name.clone())),
            _ => None,
        })
        .collect();
    let count = ids.len();
    (
        vec((vec(text(10), 0..3), any::<bool>(), any::<bool>()), count),
        any::<bool>(),
    )
        .prop_map(move |(results, together)| {
            let parts: Vec<Part> = ids
                .iter()
                .zip(results)
                .map(|((id, tool), (texts, is_error, named))| Part::ToolResult {
                    call_id: id.clone(),
                    name: named.then(|| tool.clone()),
                    content: texts.into_iter().map(Part::text).collect(),
                    is_error,
                    cache: None,
                })
                .collect();
            if parts.is_empty() {
                Vec::new()
            } else if together {
                vec![Message {
                    role: Role::Tool,
                    parts,
                    name: None,
                }]
            } else {
                parts
                    .into_iter()
                    .map(|part| Message {
                        role: Role::Tool,
                        parts: vec![part],
                        name: None,
                    })
                    .collect()
            }
        })
}

/// One exchange: the user speaks (once or twice), maybe a developer
/// message interjects, the assistant answers, its tool calls get results.
fn exchange() -> impl Strategy<Value = Vec<Message>> {
    (
        user_message(),
        proptest::option::weighted(0.2, user_message()),
        proptest::option::weighted(0.15, system_message()),
        assistant_message(),
    )
        .prop_flat_map(|(user, second, system, assistant)| {
            let results = tool_messages(&assistant);
            (
                Just((user, second, system, assistant)),
                results,
                proptest::option::weighted(0.2, user_message()),
            )
        })
        .prop_map(|((user, second, system, assistant), results, after)| {
            let mut messages = vec![user];
            messages.extend(second);
            messages.extend(system);
            messages.push(assistant);
            messages.extend(results);
            messages.extend(after);
            messages
        })
}

fn conversation() -> impl Strategy<Value = Vec<Message>> {
    (
        vec(system_message(), 0..3),
        vec(exchange(), 1..4),
        user_message(),
    )
        .prop_map(|(system, exchanges, last)| {
            let mut messages = system;
            messages.extend(exchanges.into_iter().flatten());
            messages.push(last);
            messages
        })
}

fn tools() -> impl Strategy<Value = Vec<Tool>> {
    vec(
        (
            word(),
            proptest::option::of(text(12)),
            json_object(),
            proptest::option::of(any::<bool>()),
            cache(),
        ),
        0..4,
    )
    .prop_map(|tools| {
        tools
            .into_iter()
            .enumerate()
            .map(
                |(index, (name, description, properties, strict, cache))| Tool {
                    name: format!("{name}_{index}"),
                    description,
                    parameters: serde_json::json!({"type": "object", "properties": properties}),
                    strict,
                    cache,
                },
            )
            .collect()
    })
}

fn tool_choice() -> impl Strategy<Value = Option<ToolChoice>> {
    proptest::option::of(prop_oneof![
        Just(ToolChoice::Auto),
        Just(ToolChoice::None),
        Just(ToolChoice::Required),
        word().prop_map(ToolChoice::Tool),
    ])
}

fn response_format() -> impl Strategy<Value = Option<ResponseFormat>> {
    proptest::option::of(prop_oneof![
        Just(ResponseFormat::Text),
        Just(ResponseFormat::JsonObject),
        (
            word(),
            json_object(),
            proptest::option::of(any::<bool>()),
            proptest::option::of(text(10)),
        )
            .prop_map(
                |(name, schema, strict, description)| ResponseFormat::JsonSchema {
                    name,
                    schema,
                    strict,
                    description,
                }
            ),
    ])
}

/// Consistent settings: an OpenAI-style effort, an Anthropic-style budget,
/// or thinking turned off.
fn reasoning() -> impl Strategy<Value = Option<Reasoning>> {
    proptest::option::of(prop_oneof![
        select(&["minimal", "low", "medium", "high", "none"][..]).prop_map(|effort| Reasoning {
            effort: Some(effort.to_owned()),
            budget_tokens: None,
            enabled: effort != "none",
        }),
        (1024u32..64_000).prop_map(|budget| Reasoning {
            effort: None,
            budget_tokens: Some(budget),
            enabled: true,
        }),
        Just(Reasoning {
            effort: None,
            budget_tokens: None,
            enabled: false,
        }),
    ])
}

fn number() -> impl Strategy<Value = Option<f64>> {
    proptest::option::of((-20i32..=20).prop_map(|number| f64::from(number) / 10.0))
}

fn request() -> impl Strategy<Value = ChatRequest> {
    let conversation_and_tools = (
        word(),
        conversation(),
        tools(),
        tool_choice(),
        proptest::option::of(any::<bool>()),
        response_format(),
    );
    let sampling = (
        proptest::option::of(1u32..200_000),
        number(),
        number(),
        proptest::option::of(1u32..500),
        vec(
            text(6).prop_filter("non-empty", |stop| !stop.is_empty()),
            0..3,
        ),
        proptest::option::of(any::<i64>()),
        number(),
        number(),
    );
    let rest = (
        proptest::option::of(word()),
        reasoning(),
        any::<bool>(),
        any::<bool>(),
        vec((word(), json_value()), 0..3),
    );
    (conversation_and_tools, sampling, rest).prop_map(
        |(
            (model, messages, tools, tool_choice, parallel_tool_calls, response_format),
            (max_tokens, temperature, top_p, top_k, stop, seed, frequency, presence),
            (user, reasoning, stream, stream_usage, unmapped),
        )| ChatRequest {
            model,
            messages,
            tools,
            tool_choice,
            parallel_tool_calls,
            response_format,
            max_tokens,
            temperature,
            top_p,
            top_k,
            stop,
            seed,
            frequency_penalty: frequency,
            presence_penalty: presence,
            user,
            reasoning,
            stream,
            stream_usage,
            unmapped: unmapped
                .into_iter()
                .enumerate()
                .map(|(index, (name, value))| (format!("x_{name}_{index}"), value))
                .collect(),
        },
    )
}

// ---- views: what each dialect keeps -------------------------------------

/// The arguments as compact JSON text, as a dialect that carries them as
/// an object writes them back.
fn compact_arguments(arguments: &str) -> String {
    serde_json::from_str::<Value>(arguments)
        .map(|value| value.to_string())
        .unwrap_or_else(|_| arguments.to_owned())
}

fn drop_cache(part: &Part) -> Part {
    match part.clone() {
        Part::Text { text, .. } => Part::text(text),
        Part::Image { source, detail, .. } => Part::Image {
            source,
            detail,
            cache: None,
        },
        Part::ToolCall {
            id,
            name,
            arguments,
            ..
        } => Part::ToolCall {
            id,
            name,
            arguments,
            cache: None,
        },
        other => other,
    }
}

fn is_empty_text(part: &Part) -> bool {
    matches!(part, Part::Text { text, .. } if text.is_empty())
}

/// What an OpenAI upstream can be told, in canon's terms (see the module
/// comment and `openai::canonical::encode_request`).
fn openai_view(request: &ChatRequest) -> ChatRequest {
    let mut messages = Vec::new();
    for message in &request.messages {
        if message.role == Role::Tool {
            // One tool message per result, its content one string.
            for part in &message.parts {
                if let Part::ToolResult {
                    call_id, content, ..
                } = part
                {
                    let text: String = content
                        .iter()
                        .filter_map(|part| match part {
                            Part::Text { text, .. } => Some(text.as_str()),
                            _ => None,
                        })
                        .collect();
                    messages.push(Message {
                        role: Role::Tool,
                        parts: vec![Part::ToolResult {
                            call_id: call_id.clone(),
                            name: None,
                            content: if text.is_empty() {
                                Vec::new()
                            } else {
                                vec![Part::text(text)]
                            },
                            is_error: false,
                            cache: None,
                        }],
                        name: None,
                    });
                }
            }
            continue;
        }
        let kept: Vec<Part> = message
            .parts
            .iter()
            .filter(|part| {
                !matches!(
                    part,
                    Part::Reasoning { .. } | Part::RedactedReasoning { .. }
                )
            })
            .map(drop_cache)
            .collect();
        let has_image = kept.iter().any(|part| matches!(part, Part::Image { .. }));
        let mut parts = Vec::new();
        if has_image {
            parts.extend(
                kept.iter()
                    .filter(|part| !matches!(part, Part::ToolCall { .. }) && !is_empty_text(part))
                    .cloned(),
            );
        } else {
            let text: String = kept
                .iter()
                .filter_map(|part| match part {
                    Part::Text { text, .. } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            if !text.is_empty() {
                parts.push(Part::text(text));
            }
        }
        parts.extend(
            kept.iter()
                .filter(|part| matches!(part, Part::ToolCall { .. }))
                .cloned(),
        );
        messages.push(Message {
            role: message.role,
            parts,
            name: message.name.clone(),
        });
    }
    ChatRequest {
        model: UPSTREAM_MODEL.to_owned(),
        messages,
        tools: request
            .tools
            .iter()
            .map(|tool| Tool {
                cache: None,
                ..tool.clone()
            })
            .collect(),
        top_k: None,
        reasoning: request.reasoning.as_ref().and_then(|reasoning| {
            reasoning.effort.as_ref().map(|effort| Reasoning {
                effort: Some(effort.clone()),
                budget_tokens: None,
                enabled: effort != "none",
            })
        }),
        stream_usage: request.stream,
        unmapped: Vec::new(),
        ..request.clone()
    }
}

fn openai_unsupported(request: &ChatRequest) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = request
        .unmapped
        .iter()
        .map(|(name, _)| name.clone())
        .collect();
    if request.top_k.is_some() {
        names.insert("top_k".to_owned());
    }
    if let Some(reasoning) = &request.reasoning
        && reasoning.effort.is_none()
        && reasoning.enabled
    {
        names.insert("thinking.budget_tokens".to_owned());
    }
    names
}

/// One part as Anthropic carries it, or nothing when it drops it.
fn anthropic_part(part: &Part) -> Option<Part> {
    match part {
        Part::Text { text, .. } if text.is_empty() => None,
        Part::Text { .. } | Part::RedactedReasoning { .. } => Some(part.clone()),
        Part::Image { source, cache, .. } => Some(Part::Image {
            source: source.clone(),
            detail: None,
            cache: cache.clone(),
        }),
        Part::ToolCall {
            id,
            name,
            arguments,
            cache,
        } => Some(Part::ToolCall {
            id: id.clone(),
            name: name.clone(),
            arguments: compact_arguments(arguments),
            cache: cache.clone(),
        }),
        Part::ToolResult {
            call_id,
            content,
            is_error,
            cache,
            ..
        } => Some(Part::ToolResult {
            call_id: call_id.clone(),
            name: None,
            content: content.iter().filter_map(anthropic_part).collect(),
            is_error: *is_error,
            cache: cache.clone(),
        }),
        // Only Claude's own reasoning goes back: with its signature, and
        // with text (a bare signature is Gemini's).
        Part::Reasoning {
            text,
            signature: Some(_),
        } if !text.is_empty() => Some(part.clone()),
        Part::Reasoning { .. } => None,
    }
}

/// What an Anthropic upstream can be told, in canon's terms (see the module
/// comment and `anthropic::encode_request`).
fn anthropic_view(request: &ChatRequest) -> ChatRequest {
    let mut messages = Vec::new();
    let system: Vec<Part> = request
        .messages
        .iter()
        .filter(|message| message.role == Role::System)
        .flat_map(|message| message.parts.iter().filter_map(anthropic_part))
        .collect();
    if !system.is_empty() {
        messages.push(Message {
            role: Role::System,
            parts: system,
            name: None,
        });
    }
    // Turns as Anthropic has them: tool results travel in user turns, and
    // neighbouring turns of one role are one.
    let mut turns: Vec<(bool, Vec<Part>)> = Vec::new();
    for message in &request.messages {
        let user = match message.role {
            Role::System => continue,
            Role::User | Role::Tool => true,
            Role::Assistant => false,
        };
        let parts: Vec<Part> = message.parts.iter().filter_map(anthropic_part).collect();
        // A turn with nothing left to say is left out.
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == user => existing.extend(parts),
            _ => turns.push((user, parts)),
        }
    }
    // And back: a user turn's tool results first, as a tool message.
    for (user, parts) in turns {
        if !user {
            messages.push(Message {
                role: Role::Assistant,
                parts,
                name: None,
            });
            continue;
        }
        let empty = parts.is_empty();
        let (results, rest): (Vec<Part>, Vec<Part>) = parts
            .into_iter()
            .partition(|part| matches!(part, Part::ToolResult { .. }));
        if !results.is_empty() {
            messages.push(Message {
                role: Role::Tool,
                parts: results,
                name: None,
            });
        }
        if !rest.is_empty() || empty {
            messages.push(Message {
                role: Role::User,
                parts: rest,
                name: None,
            });
        }
    }
    let tool_choice = request
        .tool_choice
        .clone()
        .or_else(|| (!request.tools.is_empty()).then_some(ToolChoice::Auto));
    // Forbidding parallel calls means something only where a call may be
    // made at all.
    let parallel_tool_calls = (request.parallel_tool_calls == Some(false)
        && !request.tools.is_empty()
        && tool_choice != Some(ToolChoice::None))
    .then_some(false);
    let response_format = match &request.response_format {
        Some(ResponseFormat::JsonSchema { schema, .. }) => Some(ResponseFormat::JsonSchema {
            name: "response".to_owned(),
            schema: schema.clone(),
            strict: Some(true),
            description: None,
        }),
        _ => None,
    };
    let reasoning = request.reasoning.as_ref().and_then(|reasoning| {
        match (reasoning.enabled, reasoning.budget_tokens) {
            (false, _) => Some(Reasoning {
                effort: None,
                budget_tokens: None,
                enabled: false,
            }),
            (true, Some(budget)) => Some(Reasoning {
                effort: None,
                budget_tokens: Some(budget),
                enabled: true,
            }),
            (true, None) => None,
        }
    });
    ChatRequest {
        model: UPSTREAM_MODEL.to_owned(),
        messages,
        tools: request.tools.clone(),
        tool_choice,
        parallel_tool_calls,
        response_format,
        max_tokens: Some(request.max_tokens.unwrap_or(anthropic::DEFAULT_MAX_TOKENS)),
        temperature: request.temperature,
        top_p: request.top_p,
        top_k: request.top_k,
        stop: request.stop.clone(),
        seed: None,
        frequency_penalty: None,
        presence_penalty: None,
        user: request.user.clone(),
        reasoning,
        stream: request.stream,
        stream_usage: true,
        unmapped: Vec::new(),
    }
}

fn anthropic_unsupported(request: &ChatRequest) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = request
        .unmapped
        .iter()
        .map(|(name, _)| name.clone())
        .collect();
    if request
        .messages
        .iter()
        .any(|message| message.role != Role::System && message.name.is_some())
    {
        names.insert("messages[].name".to_owned());
    }
    if let Some(reasoning) = &request.reasoning
        && reasoning.enabled
        && reasoning.budget_tokens.is_none()
    {
        names.insert("reasoning_effort".to_owned());
    }
    if request.response_format == Some(ResponseFormat::JsonObject) {
        names.insert("response_format".to_owned());
    }
    for (name, present) in [
        ("seed", request.seed.is_some()),
        ("frequency_penalty", request.frequency_penalty.is_some()),
        ("presence_penalty", request.presence_penalty.is_some()),
    ] {
        if present {
            names.insert(name.to_owned());
        }
    }
    names
}

fn reported(encoded: &canon::Encoded) -> BTreeSet<String> {
    encoded
        .unsupported
        .iter()
        .map(|name| name.0.clone())
        .collect()
}

fn via_openai(request: &ChatRequest) -> (ChatRequest, canon::Encoded) {
    let encoded = openai::canonical::encode_request(request, UPSTREAM_MODEL);
    let parsed = openai::ChatRequest::parse(&encoded.body).unwrap_or_else(|error| {
        panic!(
            "the OpenAI body does not parse: {error:?}\n{}",
            String::from_utf8_lossy(&encoded.body)
        )
    });
    let back = openai::canonical::request_to_canonical(&parsed)
        .unwrap_or_else(|error| panic!("the OpenAI body does not convert: {error:?}"));
    (back, encoded)
}

fn via_anthropic(request: &ChatRequest) -> (ChatRequest, canon::Encoded) {
    let encoded = anthropic::encode_request(request, UPSTREAM_MODEL);
    let parsed = anthropic::MessagesRequest::parse(&encoded.body).unwrap_or_else(|error| {
        panic!(
            "the Anthropic body does not parse: {error:?}\n{}",
            String::from_utf8_lossy(&encoded.body)
        )
    });
    let back = anthropic::request_to_canonical(&parsed)
        .unwrap_or_else(|error| panic!("the Anthropic body does not convert: {error:?}"));
    (back, encoded)
}

// ---- answers -------------------------------------------------------------

fn finish_reason() -> impl Strategy<Value = FinishReason> {
    select(
        &[
            FinishReason::Stop,
            FinishReason::StopSequence,
            FinishReason::Length,
            FinishReason::ToolCalls,
            FinishReason::ContentFilter,
            FinishReason::Refusal,
            FinishReason::Pause,
        ][..],
    )
}

/// Usage as a provider reports it: the cached and written tokens are part
/// of the input.
fn usage() -> impl Strategy<Value = (Usage, Option<u64>)> {
    (
        0u64..1_000_000,
        0u64..100_000,
        proptest::option::of(0u64..1_000_000),
        proptest::option::of(0u64..1_000_000),
        proptest::option::of(0u64..100_000),
    )
        .prop_map(|(input, output, cached, written, reasoning)| {
            let cached = cached.map(|cached| cached.min(input));
            let written = written.map(|written| written.min(input - cached.unwrap_or(0)));
            (
                Usage {
                    input_tokens: Some(input),
                    output_tokens: Some(output),
                    cached_input_tokens: cached,
                    reasoning_tokens: reasoning.map(|reasoning| reasoning.min(output)),
                    cache_write_tokens: written,
                },
                written,
            )
        })
}

fn response() -> impl Strategy<Value = ChatResponse> {
    (
        word(),
        word(),
        proptest::option::weighted(0.3, (text(10), proptest::option::of("[A-Za-z0-9+/]{8,16}"))),
        vec(text(12), 0..3),
        vec((word(), word(), json_object()), 0..4),
        proptest::option::of(finish_reason()),
        proptest::option::of(text(6)),
        usage(),
        proptest::option::of(0u64..2_000_000_000),
    )
        .prop_map(
            |(id, model, reasoning, texts, calls, finish, stop, (usage, written), created)| {
                let mut parts = Vec::new();
                if let Some((text, signature)) = reasoning {
                    parts.push(Part::Reasoning { text, signature });
                }
                parts.extend(texts.into_iter().map(Part::text));
                for (index, (call, tool, arguments)) in calls.into_iter().enumerate() {
                    parts.push(Part::ToolCall {
                        id: format!("call_{index}_{call}"),
                        name: tool,
                        arguments: arguments.to_string(),
                        cache: None,
                    });
                }
                ChatResponse {
                    id,
                    model,
                    parts,
                    stop_sequence: stop.filter(|_| finish == Some(FinishReason::StopSequence)),
                    finish,
                    usage,
                    cache_write_tokens: written,
                    created,
                }
            },
        )
}

fn openai_finish(reason: FinishReason) -> FinishReason {
    match reason {
        FinishReason::Stop | FinishReason::StopSequence | FinishReason::Pause => FinishReason::Stop,
        FinishReason::ContentFilter | FinishReason::Refusal => FinishReason::ContentFilter,
        other => other,
    }
}

fn anthropic_finish(reason: FinishReason) -> FinishReason {
    match reason {
        FinishReason::ContentFilter => FinishReason::Refusal,
        other => other,
    }
}

fn joined(parts: &[Part], reasoning: bool) -> String {
    parts
        .iter()
        .filter_map(|part| match part {
            Part::Text { text, .. } if !reasoning => Some(text.as_str()),
            Part::Reasoning { text, .. } if reasoning => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The calls as an OpenAI client sees them: a bare signature (reasoning
/// with no text, Gemini's) rides in the id of the call after it.
fn openai_calls(parts: &[Part]) -> Vec<(String, String, Value)> {
    let mut signature: Option<&str> = None;
    let mut calls = Vec::new();
    for part in parts {
        match part {
            Part::Reasoning {
                text,
                signature: carried,
            } => {
                signature = carried
                    .as_deref()
                    .filter(|signature| text.is_empty() && !signature.is_empty());
            }
            Part::ToolCall {
                id,
                name,
                arguments,
                ..
            } => calls.push((
                match signature.take() {
                    Some(signature) => {
                        format!("{id}{}{signature}", openai::canonical::SIGNATURE_MARK)
                    }
                    None => id.clone(),
                },
                name.clone(),
                serde_json::from_str(arguments).expect("tool call arguments are JSON"),
            )),
            _ => {}
        }
    }
    calls
}

fn calls_of(parts: &[Part]) -> Vec<(String, String, Value)> {
    parts
        .iter()
        .filter_map(|part| match part {
            Part::ToolCall {
                id,
                name,
                arguments,
                ..
            } => Some((
                id.clone(),
                name.clone(),
                serde_json::from_str(arguments).expect("tool call arguments are JSON"),
            )),
            _ => None,
        })
        .collect()
}

/// Usage as Anthropic carries it: every count present, the cache counts
/// present together or not at all, reasoning tokens not at all.
fn anthropic_usage(usage: &Usage, written: Option<u64>) -> (Usage, Option<u64>) {
    let cache = usage.cached_input_tokens.is_some() || written.is_some();
    (
        Usage {
            input_tokens: Some(usage.input_tokens.unwrap_or(0)),
            output_tokens: Some(usage.output_tokens.unwrap_or(0)),
            cached_input_tokens: cache.then(|| usage.cached_input_tokens.unwrap_or(0)),
            reasoning_tokens: None,
            cache_write_tokens: cache.then(|| written.unwrap_or(0)),
        },
        cache.then(|| written.unwrap_or(0)),
    )
}

// ---- streams -------------------------------------------------------------

/// A piece of a streamed answer.
#[derive(Debug, Clone)]
enum Segment {
    Text(Vec<String>),
    Reasoning(Vec<String>, Option<String>),
    ToolCall {
        id: String,
        name: String,
        fragments: Vec<String>,
    },
}

/// Splits a string at character boundaries into `cuts + 1` fragments.
fn fragments(whole: String, cuts: Vec<usize>) -> Vec<String> {
    let boundaries: Vec<usize> = whole
        .char_indices()
        .map(|(index, _)| index)
        .chain(std::iter::once(whole.len()))
        .collect();
    let mut points: Vec<usize> = cuts
        .into_iter()
        .map(|cut| boundaries[cut % boundaries.len()])
        .collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for point in points {
        pieces.push(whole[start..point].to_owned());
        start = point;
    }
    pieces.push(whole[start..].to_owned());
    pieces
}

fn segment() -> impl Strategy<Value = Segment> {
    prop_oneof![
        3 => vec(text(8), 1..4).prop_map(Segment::Text),
        1 => (vec(text(8), 1..3), proptest::option::of("[A-Za-z0-9+/]{8,16}"))
            .prop_map(|(pieces, signature)| Segment::Reasoning(pieces, signature)),
        2 => (word(), word(), json_object(), vec(any::<usize>(), 0..4)).prop_map(
            |(id, name, arguments, cuts)| Segment::ToolCall {
                id: format!("call_{id}"),
                name,
                fragments: fragments(arguments.to_string(), cuts),
            }
        ),
    ]
}

#[derive(Debug, Clone)]
struct Script {
    id: String,
    model: String,
    segments: Vec<Segment>,
    /// Tool calls start together and their fragments arrive interleaved,
    /// as some upstreams send parallel calls.
    interleave: bool,
    early_usage: Option<Usage>,
    finish: Option<(FinishReason, Option<String>)>,
    usage: Option<(Usage, Option<u64>)>,
}

fn script() -> impl Strategy<Value = Script> {
    (
        word(),
        word(),
        vec(segment(), 0..6),
        any::<bool>(),
        proptest::option::of(0u64..1_000_000),
        proptest::option::of((finish_reason(), proptest::option::of(text(6)))),
        proptest::option::of(usage()),
    )
        .prop_map(
            |(id, model, segments, interleave, early_input, finish, usage)| Script {
                id: format!("msg_{id}"),
                model,
                segments,
                interleave,
                early_usage: early_input.map(|input| Usage {
                    input_tokens: Some(input),
                    ..Usage::default()
                }),
                finish: finish.map(|(reason, stop)| {
                    (
                        reason,
                        stop.filter(|_| reason == FinishReason::StopSequence),
                    )
                }),
                usage,
            },
        )
}

impl Script {
    fn events(&self) -> Vec<StreamEvent> {
        let mut events = vec![StreamEvent::Start {
            id: self.id.clone(),
            model: self.model.clone(),
        }];
        if let Some(usage) = self.early_usage {
            events.push(StreamEvent::Usage {
                usage,
                cache_write_tokens: None,
            });
        }
        let mut calls = 0u32;
        let mut pending: Vec<(u32, Vec<String>)> = Vec::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(pieces) => {
                    events.extend(pieces.iter().cloned().map(StreamEvent::TextDelta));
                }
                Segment::Reasoning(pieces, signature) => {
                    events.extend(pieces.iter().cloned().map(StreamEvent::ReasoningDelta));
                    events.extend(signature.clone().map(StreamEvent::ReasoningSignature));
                }
                Segment::ToolCall {
                    id,
                    name,
                    fragments,
                } => {
                    let index = calls;
                    calls += 1;
                    events.push(StreamEvent::ToolCallStart {
                        index,
                        id: id.clone(),
                        name: name.clone(),
                    });
                    if self.interleave {
                        pending.push((index, fragments.clone()));
                    } else {
                        events.extend(fragments.iter().map(|fragment| {
                            StreamEvent::ToolCallDelta {
                                index,
                                arguments: fragment.clone(),
                            }
                        }));
                    }
                }
            }
        }
        // Round robin over the calls still open.
        while pending.iter().any(|(_, fragments)| !fragments.is_empty()) {
            for (index, fragments) in &mut pending {
                if !fragments.is_empty() {
                    events.push(StreamEvent::ToolCallDelta {
                        index: *index,
                        arguments: fragments.remove(0),
                    });
                }
            }
        }
        if let Some((reason, stop_sequence)) = &self.finish {
            events.push(StreamEvent::Finish {
                reason: *reason,
                stop_sequence: stop_sequence.clone(),
            });
        }
        if let Some((usage, written)) = self.usage {
            events.push(StreamEvent::Usage {
                usage,
                cache_write_tokens: written,
            });
        }
        events
    }
}

/// What a stream adds up to.
#[derive(Debug, Default, PartialEq)]
struct Answer {
    start: Option<(String, String)>,
    text: String,
    reasoning: String,
    signature: String,
    /// (index, id, name, arguments) in the order the calls started.
    calls: Vec<(u32, String, String, String)>,
    finish: Option<(FinishReason, Option<String>)>,
    usage: Option<(Usage, Option<u64>)>,
}

fn add_up(events: &[StreamEvent]) -> Answer {
    let mut answer = Answer::default();
    for event in events {
        match event {
            StreamEvent::Start { id, model } => {
                assert!(answer.start.is_none(), "two starts in {events:?}");
                answer.start = Some((id.clone(), model.clone()));
            }
            StreamEvent::TextDelta(text) => answer.text.push_str(text),
            StreamEvent::ReasoningDelta(text) => answer.reasoning.push_str(text),
            StreamEvent::ReasoningSignature(signature) => answer.signature.push_str(signature),
            StreamEvent::RedactedReasoning(_) => {}
            StreamEvent::ToolCallStart { index, id, name } => {
                assert!(
                    answer.calls.iter().all(|call| call.0 != *index),
                    "call {index} started twice"
                );
                answer
                    .calls
                    .push((*index, id.clone(), name.clone(), String::new()));
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                let call = answer
                    .calls
                    .iter_mut()
                    .find(|call| call.0 == *index)
                    .unwrap_or_else(|| panic!("fragment of call {index}, never started"));
                call.3.push_str(arguments);
            }
            StreamEvent::Finish {
                reason,
                stop_sequence,
            } => {
                assert!(answer.finish.is_none(), "two finishes in {events:?}");
                answer.finish = Some((*reason, stop_sequence.clone()));
            }
            StreamEvent::Usage {
                usage,
                cache_write_tokens,
            } => {
                let (known, written) = answer.usage.get_or_insert((Usage::default(), None));
                merge_usage(known, usage);
                if cache_write_tokens.is_some() {
                    *written = *cache_write_tokens;
                }
            }
        }
    }
    answer
}

fn frames_of(encoder: &mut dyn StreamEncoder, events: &[StreamEvent]) -> Vec<u8> {
    let mut frames = Vec::new();
    for event in events {
        encoder.event(event.clone(), &mut frames);
    }
    encoder.finish(&mut frames);
    frames.into_iter().flat_map(|frame| frame.bytes).collect()
}

fn decode_in_pieces(
    decoder: &mut dyn StreamDecoder,
    bytes: &[u8],
    cuts: &[usize],
) -> Vec<StreamEvent> {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut events = Vec::new();
    let mut start = 0;
    for point in points.into_iter().chain(std::iter::once(bytes.len())) {
        decoder
            .feed(&bytes[start..point], &mut events)
            .unwrap_or_else(|error| {
                panic!(
                    "the decoder refused the encoder's own stream: {error:?}\n{}",
                    String::from_utf8_lossy(bytes)
                )
            });
        start = point;
    }
    assert!(decoder.is_done(), "the stream did not end");
    events
}

/// The answer the script describes, before any dialect.
fn scripted(script: &Script) -> Answer {
    add_up(&script.events())
}

// ---- properties -----------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn requests_keep_their_meaning_through_openai(request in request()) {
        let (back, encoded) = via_openai(&request);
        prop_assert_eq!(openai_view(&back), openai_view(&request));
        prop_assert_eq!(reported(&encoded), openai_unsupported(&request));
    }

    #[test]
    fn requests_keep_their_meaning_through_anthropic(request in request()) {
        let (back, encoded) = via_anthropic(&request);
        prop_assert_eq!(anthropic_view(&back), anthropic_view(&request));
        prop_assert_eq!(reported(&encoded), anthropic_unsupported(&request));
    }

    /// A request that came through one dialect goes through the other and
    /// back unchanged: each view is what its dialect settles on.
    #[test]
    fn a_translated_request_is_a_fixed_point(request in request()) {
        let (from_openai, _) = via_openai(&request);
        let (again, encoded) = via_openai(&from_openai);
        prop_assert_eq!(&again, &from_openai);
        prop_assert!(encoded.unsupported.is_empty(), "{:?}", encoded.unsupported);
        // A system prompt of empty text only is written as `"system": []`,
        // which reads back as a system message without parts and is then
        // not written at all: the same (absent) instructions either way.
        let without_empty_system = |mut request: ChatRequest| {
            request
                .messages
                .retain(|message| message.role != Role::System || !message.parts.is_empty());
            request
        };
        let (from_anthropic, _) = via_anthropic(&request);
        let (again, encoded) = via_anthropic(&from_anthropic);
        prop_assert_eq!(
            without_empty_system(again),
            without_empty_system(from_anthropic)
        );
        prop_assert!(encoded.unsupported.is_empty(), "{:?}", encoded.unsupported);
    }

    #[test]
    fn gemini_and_bedrock_bodies_are_json_objects_naming_what_they_drop(request in request()) {
        for (dialect, encoded) in [
            ("gemini", gemini::encode_request(&request)),
            ("bedrock", bedrock::encode_request(&request)),
        ] {
            let body: Value = serde_json::from_slice(&encoded.body)
                .unwrap_or_else(|error| panic!("{dialect} wrote invalid JSON: {error}"));
            prop_assert!(body.is_object(), "{} wrote {}", dialect, body);
            let reported = reported(&encoded);
            for (name, _) in &request.unmapped {
                prop_assert!(reported.contains(name), "{} did not report {}", dialect, name);
            }
        }
    }

    #[test]
    fn answers_keep_their_meaning_through_openai(response in response(), now in 0u64..2_000_000_000) {
        let body = openai::canonical::encode_response(&response, now);
        let back = openai::canonical::decode_response(&body).expect("our own answer decodes");
        prop_assert_eq!(&back.id, &response.id);
        prop_assert_eq!(&back.model, &response.model);
        prop_assert_eq!(back.created, Some(response.created.unwrap_or(now)));
        prop_assert_eq!(joined(&back.parts, false), joined(&response.parts, false));
        prop_assert_eq!(joined(&back.parts, true), joined(&response.parts, true));
        prop_assert_eq!(calls_of(&back.parts), openai_calls(&response.parts));
        prop_assert_eq!(back.finish, response.finish.map(openai_finish));
        // OpenAI has no cache-write count.
        let usage = Usage {
            cache_write_tokens: None,
            ..response.usage
        };
        prop_assert_eq!(back.usage, usage);
    }

    #[test]
    fn answers_keep_their_meaning_through_anthropic(response in response()) {
        let body = anthropic::encode_response(&response);
        let back = anthropic::decode_response(&body).expect("our own answer decodes");
        let expected_parts: Vec<Part> = response
            .parts
            .iter()
            .map(|part| match part {
                Part::Reasoning { text, signature } => Part::Reasoning {
                    text: text.clone(),
                    signature: Some(signature.clone().unwrap_or_default()),
                },
                Part::ToolCall { id, name, arguments, cache } => Part::ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: compact_arguments(arguments),
                    cache: cache.clone(),
                },
                other => other.clone(),
            })
            .collect();
        prop_assert_eq!(&back.id, &response.id);
        prop_assert_eq!(&back.model, &response.model);
        prop_assert_eq!(&back.parts, &expected_parts);
        prop_assert_eq!(calls_of(&back.parts), calls_of(&response.parts));
        prop_assert_eq!(back.finish, response.finish.map(anthropic_finish));
        prop_assert_eq!(&back.stop_sequence, &response.stop_sequence);
        let (usage, written) = anthropic_usage(&response.usage, response.cache_write_tokens);
        prop_assert_eq!(back.usage, usage);
        prop_assert_eq!(back.cache_write_tokens, written);
    }

    #[test]
    fn streams_keep_their_meaning_through_openai(
        script in script(),
        cuts in vec(any::<usize>(), 0..24),
    ) {
        let mut encoder = openai::canonical::ChunkEncoder::new("client-model", 1_700_000_000, true);
        let mut bytes = frames_of(&mut encoder, &script.events());
        // The server writes the end marker.
        bytes.extend_from_slice(b"data: [DONE]\n\n");
        let mut decoder = openai::canonical::ChunkDecoder::new();
        let answer = add_up(&decode_in_pieces(&mut decoder, &bytes, &cuts));
        let mut expected = scripted(&script);
        // OpenAI has no signatures, fewer finish reasons and no stop
        // sequence; the usage chunk reports every count, zero if unknown.
        expected.signature.clear();
        expected.finish = expected.finish.map(|(reason, _)| (openai_finish(reason), None));
        let (mut usage, _) = expected.usage.unwrap_or_default();
        usage.input_tokens = Some(usage.input_tokens.unwrap_or(0));
        usage.output_tokens = Some(usage.output_tokens.unwrap_or(0));
        usage.cache_write_tokens = None;
        expected.usage = Some((usage, None));
        prop_assert_eq!(answer, expected);
    }

    #[test]
    fn streams_keep_their_meaning_through_anthropic(
        script in script(),
        cuts in vec(any::<usize>(), 0..24),
    ) {
        let mut encoder = anthropic::EventEncoder::new("client-model", "msg_gateway");
        let bytes = frames_of(&mut encoder, &script.events());
        let mut decoder = anthropic::EventDecoder::new();
        let answer = add_up(&decode_in_pieces(&mut decoder, &bytes, &cuts));
        let mut expected = scripted(&script);
        // An answer without a stop reason ended its turn.
        expected.finish = Some(match expected.finish {
            Some((reason, stop)) => (anthropic_finish(reason), stop),
            None => (FinishReason::Stop, None),
        });
        let (usage, written) = expected.usage.unwrap_or_default();
        expected.usage = Some(anthropic_usage(&usage, written));
        prop_assert_eq!(answer, expected);
    }
}
