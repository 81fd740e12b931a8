//! Bounded fuzz targets for every stream parser of the crate: the SSE
//! decoder (`sse::SseDecoder`), OpenAI's `ChunkDecoder`, Anthropic's
//! `EventDecoder` (translating and relaying), Gemini's `StreamDecoder`,
//! and Bedrock's event-stream framing and `StreamDecoder` (with
//! `bedrock::fuzz_event_stream`, the entry point a cargo-fuzz target would
//! call).
//!
//! cargo-fuzz needs a nightly toolchain, which the build machines do not
//! have, so these targets are how CI fuzzes the parsers: as proptest
//! properties on stable, inside `cargo test`, for a bounded time. Each
//! target runs `SWITCHBOARD_FUZZ_CASES` cases (default 1000: the whole
//! file takes about 4 s in a debug build on two cores, 8 s on one);
//! a longer run is, for instance,
//! `SWITCHBOARD_FUZZ_CASES=50000 cargo test --release -p switchboard-dialects --test fuzz`.
//! A failure prints its minimal input; nothing is written to the tree.
//!
//! Inputs are of two kinds: arbitrary bytes, and structure-aware ones
//! (valid streams shaped like the vendors' own, with JSON values replaced
//! or removed, garbage and unknown events inserted at event boundaries,
//! then bytes flipped, ranges duplicated, deleted or inserted, and the
//! stream truncated), always fed in random pieces. Every target checks
//! that the parser does not panic; that it ends in events or a
//! `StreamError`; that however the bytes are split it reads the same
//! events and fails or not alike; and that the events it emits are
//! well formed (a tool call's fragments follow its start, no call starts
//! twice). The decoders are synchronous, so a hang would show as a test
//! that does not finish; the `*_in_linear_time` tests feed a long event
//! one byte at a time under a generous time budget, which a decoder that
//! rescans its buffer would blow.

use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};
use switchboard_dialects::bedrock::{self, HeaderValue, encode_message};
use switchboard_dialects::canon::{StreamDecoder, StreamError, StreamEvent};
use switchboard_dialects::sse::{SseDecoder, SseEvent};
use switchboard_dialects::{anthropic, gemini, openai};

/// Cases per target when `SWITCHBOARD_FUZZ_CASES` is not set.
const DEFAULT_CASES: u32 = 1000;

fn cases() -> u32 {
    std::env::var("SWITCHBOARD_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- seeds: valid streams shaped like the vendors' ------------------------

/// OpenAI: text, a streamed tool call, the finish and the usage chunk.
const OPENAI_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\",\"reasoning_content\":\"hm\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_DdmO9pD3xa9XTPNJ32zg2hcA\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"location\\\":\\\"Paris\\\"}\"}},{\"index\":1,\"id\":\"call_2\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":68,\"completion_tokens\":17,\"total_tokens\":85,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

/// Anthropic: the "Streaming Messages" guide's tool-use and thinking
/// transcripts, folded into one answer, with cache usage.
const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":100,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\": \"content_block_start\", \"index\": 0, \"content_block\": {\"type\": \"thinking\", \"thinking\": \"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"thinking_delta\", \"thinking\": \"Let me solve this step by step\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"signature_delta\", \"signature\": \"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\": \"content_block_stop\", \"index\": 0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay, let's check\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"San Francisco, CA\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"redacted_thinking\",\"data\":\"EmwKAhgB\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":3}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

/// A server-tool answer, which only the relaying decoder passes on.
const ANTHROPIC_SERVER_TOOL_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"server_tool_use\",\"id\":\"srvtoolu_014hJH82Qum7Td6UV8gDXThB\",\"name\":\"web_search\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"query\\\":\\\"weather NYC today\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"web_search_tool_result\",\"tool_use_id\":\"srvtoolu_014hJH82Qum7Td6UV8gDXThB\",\"content\":[]}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":510}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

const GEMINI_TEXT: &str = include_str!("../src/gemini/fixtures/stream_text.sse");
const GEMINI_THINKING_TOOLS: &str =
    include_str!("../src/gemini/fixtures/stream_thinking_tools.sse");

/// A ConverseStream message, before framing.
#[derive(Debug, Clone)]
struct BedrockMessage {
    /// `:message-type`: `event`, `exception`, `error`, something else, or
    /// absent.
    message_type: Option<&'static str>,
    /// `:event-type` or `:exception-type`.
    kind: Option<String>,
    payload: Value,
}

impl BedrockMessage {
    fn event(kind: &str, payload: Value) -> BedrockMessage {
        BedrockMessage {
            message_type: Some("event"),
            kind: Some(kind.to_owned()),
            payload,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut headers = vec![(
            ":content-type",
            HeaderValue::String("application/json".to_owned()),
        )];
        if let Some(message_type) = self.message_type {
            headers.push((
                ":message-type",
                HeaderValue::String(message_type.to_owned()),
            ));
        }
        if let Some(kind) = &self.kind {
            let name = if self.message_type == Some("exception") {
                ":exception-type"
            } else {
                ":event-type"
            };
            headers.push((name, HeaderValue::String(kind.clone())));
        }
        if self.message_type == Some("error") {
            headers.push((
                ":error-code",
                HeaderValue::String("InternalFailure".to_owned()),
            ));
            headers.push((":error-message", HeaderValue::String("boom".to_owned())));
        }
        encode_message(&headers, self.payload.to_string().as_bytes())
    }
}

/// Text, reasoning, a tool call, the stop and the usage, padded as
/// Bedrock pads its events.
fn bedrock_transcript() -> Vec<BedrockMessage> {
    vec![
        BedrockMessage::event(
            "messageStart",
            json!({"p": "abcdefghij", "role": "assistant"}),
        ),
        BedrockMessage::event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Thinking"}}, "p": "ab"}),
        ),
        BedrockMessage::event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "c2ln"}}, "p": "ab"}),
        ),
        BedrockMessage::event(
            "contentBlockStop",
            json!({"contentBlockIndex": 0, "p": "abc"}),
        ),
        BedrockMessage::event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"text": "Let me check"}, "p": "abcdef"}),
        ),
        BedrockMessage::event(
            "contentBlockStop",
            json!({"contentBlockIndex": 1, "p": "abc"}),
        ),
        BedrockMessage::event(
            "contentBlockStart",
            json!({"contentBlockIndex": 2, "start": {"toolUse": {
                "toolUseId": "tooluse_Ofyc3J1FRzOlH5TnF8GlyQ", "name": "get_weather"}}, "p": "abcd"}),
        ),
        BedrockMessage::event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"city\":"}}, "p": "a"}),
        ),
        BedrockMessage::event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "\"Seattle\"}"}}, "p": "a"}),
        ),
        BedrockMessage::event(
            "contentBlockStop",
            json!({"contentBlockIndex": 2, "p": "abcdefgh"}),
        ),
        BedrockMessage::event(
            "messageStop",
            json!({"stopReason": "tool_use", "p": "abcdefghijk"}),
        ),
        BedrockMessage::event(
            "metadata",
            json!({
                "usage": {"inputTokens": 412, "outputTokens": 58, "totalTokens": 470,
                          "cacheReadInputTokens": 100, "cacheWriteInputTokens": 7},
                "metrics": {"latencyMs": 1250},
                "p": "abcdefghijklmnop"
            }),
        ),
    ]
}

// ---- mutations -------------------------------------------------------------

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1.5)),
        "[a-z_\"\\\\{}]{0,8}".prop_map(Value::String),
        select(
            &[
                "message_start",
                "content_block_start",
                "content_block_delta",
                "message_delta",
                "message_stop",
                "error",
                "tool_use",
                "text_delta",
                "input_json_delta",
                "thinking",
                "server_tool_use",
                "tool_calls",
                "STOP",
                "SAFETY",
                "end_turn",
                "refusal",
            ][..]
        )
        .prop_map(|word| Value::String(word.to_owned())),
    ];
    leaf.prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Value::Array),
            vec(("[a-z]{1,6}", inner), 0..3)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// An edit of one node of a JSON document, chosen by its number in a
/// depth-first walk.
#[derive(Debug, Clone)]
enum JsonEdit {
    Replace(usize, Value),
    Remove(usize),
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        3 => (any::<usize>(), json_value()).prop_map(|(node, value)| JsonEdit::Replace(node, value)),
        1 => any::<usize>().prop_map(JsonEdit::Remove),
    ]
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(members) => members.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Applies `edit` to node number `target` (counting from `*seen`); true
/// once done. Removal takes the node out of its parent.
fn edit_node(value: &mut Value, target: usize, seen: &mut usize, edit: &JsonEdit) -> bool {
    if *seen == target {
        if let JsonEdit::Replace(_, replacement) = edit {
            *value = replacement.clone();
        }
        return true;
    }
    *seen += 1;
    let remove = matches!(edit, JsonEdit::Remove(_));
    match value {
        Value::Array(items) => {
            for index in 0..items.len() {
                if remove && *seen == target {
                    items.remove(index);
                    return true;
                }
                if edit_node(&mut items[index], target, seen, edit) {
                    return true;
                }
            }
        }
        Value::Object(members) => {
            let keys: Vec<String> = members.keys().cloned().collect();
            for key in keys {
                if remove && *seen == target {
                    members.shift_remove(&key);
                    return true;
                }
                if let Some(member) = members.get_mut(&key)
                    && edit_node(member, target, seen, edit)
                {
                    return true;
                }
            }
        }
        _ => {}
    }
    false
}

fn apply_json_edit(value: &mut Value, edit: &JsonEdit) {
    let node = match edit {
        JsonEdit::Replace(node, _) | JsonEdit::Remove(node) => *node,
    };
    let target = node % count_nodes(value);
    // The root cannot be removed from a parent; it is replaced by null.
    if target == 0 && matches!(edit, JsonEdit::Remove(_)) {
        *value = Value::Null;
        return;
    }
    edit_node(value, target, &mut 0, edit);
}

/// Events a broken or hostile upstream might send.
const GARBAGE: &[&[u8]] = &[
    b"event: surprise\ndata: {\"type\":\"surprise\"}\n\n",
                b"data: {\"type\":\"content_block_delta\",\"index\":9,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}\n\n",
                b"data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\"}}\n\n",
                b"data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":18446744073709551615,\"cache_read_input_tokens\":18446744073709551615,\"cache_creation_input_tokens\":18446744073709551615,\"output_tokens\":18446744073709551615}}\n\n",
                b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":4294967296}]}}]}\n\n",
                b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":3,\"function\":{\"arguments\":\"{}\"}}]},\"finish_reason\":\"mystery\"}],\"usage\":{\"prompt_tokens\":18446744073709551615,\"completion_tokens\":18446744073709551615}}\n\n",
                b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":[1]}},{\"thought\":true}]},\"finishReason\":\"MALFORMED_FUNCTION_CALL\"}],\"usageMetadata\":{\"promptTokenCount\":18446744073709551615,\"toolUsePromptTokenCount\":18446744073709551615}}\n\n",
                b"data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"}}\n\n",
                b"data: {\"error\":{\"code\":429,\"message\":\"Resource exhausted\",\"status\":\"RESOURCE_EXHAUSTED\"}}\n\n",
                b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
                b"data: [DONE]\n\n",
                b"data: null\n\n",
                b"data: []\n\n",
                b"data: \"text\"\n\n",
                b": keep-alive\n\n",
                b"retry: 10\nid: 5\n\n",
                b"data: \xff\xfe\n\n",
                b"data: {\"a\":\n\n",
                b"\r\n\r\n",
                b"data:\n\n",
                b"event: ping\n",
];

/// Garbage a stream may carry between its events.
fn garbage_event() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        select(GARBAGE).prop_map(<[u8]>::to_vec),
        json_value().prop_map(|value| format!("data: {value}\n\n").into_bytes()),
        (
            select(&["", "event: x\n", "event: message_delta\n"][..]),
            json_value()
        )
            .prop_map(|(event, value)| format!("{event}data: {value}\n\n").into_bytes()),
    ]
}

/// A change to the bytes of a stream.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip { at: usize, mask: u8 },
    Truncate { at: usize },
    Duplicate { from: usize, len: usize, to: usize },
    Delete { at: usize, len: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

const INSERTS: &[&[u8]] = &[
    b"\n", b"\r", b"\r\n", b"\n\n", b"data: ", b":", b"\0", b"\xc3",
];

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| ByteEdit::Flip { at, mask }),
        any::<usize>().prop_map(|at| ByteEdit::Truncate { at }),
        (any::<usize>(), 0usize..256, any::<usize>())
            .prop_map(|(from, len, to)| ByteEdit::Duplicate { from, len, to }),
        (any::<usize>(), 0usize..64).prop_map(|(at, len)| ByteEdit::Delete { at, len }),
        (
            any::<usize>(),
            prop_oneof![
                vec(any::<u8>(), 0..16),
                select(INSERTS).prop_map(<[u8]>::to_vec),
            ]
        )
            .prop_map(|(at, bytes)| ByteEdit::Insert { at, bytes }),
    ]
}

fn apply_byte_edit(bytes: &mut Vec<u8>, edit: &ByteEdit) {
    let position = |at: usize, len: usize| at % (len + 1);
    match edit {
        ByteEdit::Flip { at, mask } => {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] ^= mask;
            }
        }
        ByteEdit::Truncate { at } => bytes.truncate(position(*at, bytes.len())),
        ByteEdit::Duplicate { from, len, to } => {
            let from = position(*from, bytes.len());
            let end = (from + len).min(bytes.len());
            let copy = bytes[from..end].to_vec();
            let to = position(*to, bytes.len());
            bytes.splice(to..to, copy);
        }
        ByteEdit::Delete { at, len } => {
            let at = position(*at, bytes.len());
            let end = (at + len).min(bytes.len());
            bytes.drain(at..end);
        }
        ByteEdit::Insert {
            at,
            bytes: inserted,
        } => {
            let at = position(*at, bytes.len());
            bytes.splice(at..at, inserted.iter().copied());
        }
    }
}

/// What to do to a valid SSE stream: edit the JSON of some events, insert
/// garbage events at event boundaries, then edit the bytes.
#[derive(Debug, Clone)]
struct SseMutation {
    json: Vec<(usize, JsonEdit)>,
    garbage: Vec<(usize, Vec<u8>)>,
    bytes: Vec<ByteEdit>,
}

fn sse_mutation() -> impl Strategy<Value = SseMutation> {
    (
        vec((any::<usize>(), json_edit()), 0..3),
        vec((any::<usize>(), garbage_event()), 0..3),
        vec(byte_edit(), 0..3),
    )
        .prop_map(|(json, garbage, bytes)| SseMutation {
            json,
            garbage,
            bytes,
        })
}

/// The stream's events, each with its blank line.
fn split_events(stream: &str) -> Vec<String> {
    stream.split_inclusive("\n\n").map(str::to_owned).collect()
}

fn mutate_sse(stream: &str, mutation: &SseMutation) -> Vec<u8> {
    let mut events = split_events(stream);
    for (event, edit) in &mutation.json {
        let count = events.len();
        let event = &mut events[event % count];
        let edited: Vec<String> = event
            .split('\n')
            .map(|line| match line.strip_prefix("data: ") {
                Some(data) => match serde_json::from_str::<Value>(data) {
                    Ok(mut value) => {
                        apply_json_edit(&mut value, edit);
                        format!("data: {value}")
                    }
                    Err(_) => line.to_owned(),
                },
                None => line.to_owned(),
            })
            .collect();
        *event = edited.join("\n");
    }
    let mut chunks: Vec<Vec<u8>> = events.into_iter().map(String::into_bytes).collect();
    for (boundary, garbage) in &mutation.garbage {
        let at = boundary % (chunks.len() + 1);
        chunks.insert(at, garbage.clone());
    }
    let mut bytes = chunks.concat();
    for edit in &mutation.bytes {
        apply_byte_edit(&mut bytes, edit);
    }
    bytes
}

// ---- the harness -------------------------------------------------------------

/// How a decoding went: the events read, the error that stopped it (if
/// any), and whether the stream's end was seen.
#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<StreamEvent>,
    error: Option<StreamError>,
    done: bool,
}

/// Feeds `bytes` cut at `cuts` (any numbers; taken modulo the length),
/// stopping at the first error, then lets `finish` see the end.
fn feed<D: StreamDecoder>(
    mut decoder: D,
    bytes: &[u8],
    cuts: &[usize],
    finish: impl FnOnce(&mut D, &mut Vec<StreamEvent>) -> Result<(), StreamError>,
) -> Outcome {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut events = Vec::new();
    let mut start = 0;
    for point in points.into_iter().chain(std::iter::once(bytes.len())) {
        if let Err(error) = decoder.feed(&bytes[start..point], &mut events) {
            return Outcome {
                events,
                error: Some(error),
                done: decoder.is_done(),
            };
        }
        start = point;
    }
    let error = finish(&mut decoder, &mut events).err();
    Outcome {
        events,
        error,
        done: decoder.is_done(),
    }
}

fn no_finish<D>(_: &mut D, _: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
    Ok(())
}

/// A tool call's fragments follow its start, and no call starts twice.
fn check_well_formed(events: &[StreamEvent]) -> Result<(), TestCaseError> {
    let mut started = Vec::new();
    for event in events {
        match event {
            StreamEvent::ToolCallStart { index, .. } => {
                prop_assert!(!started.contains(index), "call {} started twice", index);
                started.push(*index);
            }
            StreamEvent::ToolCallDelta { index, .. } => {
                prop_assert!(
                    started.contains(index),
                    "a fragment of call {} before its start",
                    index
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// The same bytes, whole and in pieces, read alike. `exact` also wants the
/// same events before an error (Gemini and Bedrock promise it; the OpenAI
/// and Anthropic decoders drop what a read completed before a framing
/// error in the same read, so only their error must match).
fn check_decoder<D: StreamDecoder>(
    make: impl Fn() -> D,
    finish: impl Fn(&mut D, &mut Vec<StreamEvent>) -> Result<(), StreamError> + Copy,
    bytes: &[u8],
    cuts: &[usize],
    exact: bool,
) -> Result<Outcome, TestCaseError> {
    let whole = feed(make(), bytes, &[], finish);
    let split = feed(make(), bytes, cuts, finish);
    check_well_formed(&whole.events)?;
    check_well_formed(&split.events)?;
    prop_assert_eq!(
        whole.error.is_some(),
        split.error.is_some(),
        "whole: {:?}\nsplit: {:?}",
        whole.error,
        split.error
    );
    if exact || whole.error.is_none() {
        prop_assert_eq!(&whole.events, &split.events);
        prop_assert_eq!(whole.done, split.done);
    }
    Ok(whole)
}

fn openai_decoder(bytes: &[u8], cuts: &[usize]) -> Result<Outcome, TestCaseError> {
    check_decoder(
        openai::canonical::ChunkDecoder::new,
        no_finish,
        bytes,
        cuts,
        false,
    )
}

fn anthropic_decoders(bytes: &[u8], cuts: &[usize]) -> Result<(Outcome, Outcome), TestCaseError> {
    let translating = check_decoder(anthropic::EventDecoder::new, no_finish, bytes, cuts, false)?;
    let relaying = check_decoder(
        anthropic::EventDecoder::relaying,
        no_finish,
        bytes,
        cuts,
        false,
    )?;
    Ok((translating, relaying))
}

fn gemini_decoder(bytes: &[u8], cuts: &[usize]) -> Result<Outcome, TestCaseError> {
    check_decoder(
        gemini::StreamDecoder::new,
        |decoder, out| decoder.finish(out),
        bytes,
        cuts,
        true,
    )
}

fn bedrock_decoder(bytes: &[u8], cuts: &[usize]) -> Result<Outcome, TestCaseError> {
    let outcome = check_decoder(
        || bedrock::StreamDecoder::with_max_message_bytes(64 * 1024),
        |decoder, _| decoder.finish(),
        bytes,
        cuts,
        true,
    )?;
    // The cargo-fuzz entry point, in pieces of the first byte's size.
    for piece in [0u8, 1, 7, 255] {
        let mut data = vec![piece];
        data.extend_from_slice(bytes);
        bedrock::fuzz_event_stream(&data);
    }
    Ok(outcome)
}

fn sse_events(bytes: &[u8], cuts: &[usize], limit: usize) -> (Vec<SseEvent>, bool) {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut decoder = SseDecoder::new(limit);
    let mut events = Vec::new();
    let mut start = 0;
    for point in points.into_iter().chain(std::iter::once(bytes.len())) {
        if decoder.feed(&bytes[start..point], &mut events).is_err() {
            return (events, true);
        }
        start = point;
    }
    let failed = decoder.finish(&mut events).is_err();
    (events, failed)
}

fn check_sse(bytes: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    // A small event limit, so that the oversized-event path is fuzzed too.
    for limit in [64, 16 * 1024 * 1024] {
        let whole = sse_events(bytes, &[], limit);
        let split = sse_events(bytes, cuts, limit);
        prop_assert_eq!(&whole, &split);
        for event in &whole.0 {
            prop_assert!(!event.data.contains('\r'), "{:?}", event);
            prop_assert!(
                event
                    .event
                    .as_deref()
                    .is_none_or(|name| !name.contains(['\r', '\n'])),
                "{:?}",
                event
            );
        }
    }
    Ok(())
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    vec(any::<usize>(), 0..16)
}

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..1024)
}

const SOUP: &[&[u8]] = &[
    b"data: ",
    b"data:",
    b"event: ",
    b"id: 1",
    b"retry: 5",
    b": comment",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"{\"a\":1}",
    b"[DONE]",
    b"\xe4\xb8\xad",
    b"\xe4",
    b"x",
];

/// Bytes that look like SSE: fields, comments and line ends in any order.
fn sse_soup() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            select(SOUP).prop_map(<[u8]>::to_vec),
            vec(any::<u8>(), 0..8),
        ],
        0..48,
    )
    .prop_map(|pieces| pieces.concat())
}

fn bedrock_stream() -> impl Strategy<Value = Vec<u8>> {
    let message_type = select(
        &[
            Some("event"),
            Some("event"),
            Some("event"),
            Some("exception"),
            Some("error"),
            Some("mystery"),
            None,
        ][..],
    );
    let kind = proptest::option::of(select(
        &[
            "messageStart",
            "contentBlockStart",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata",
            "somethingNew",
            "throttlingException",
        ][..],
    ))
    .prop_map(|kind| kind.map(str::to_owned));
    let inserted = (message_type, kind, json_value()).prop_map(|(message_type, kind, payload)| {
        BedrockMessage {
            message_type,
            kind,
            payload,
        }
    });
    (
        vec((any::<usize>(), json_edit()), 0..3),
        vec((any::<usize>(), inserted), 0..3),
        vec(byte_edit(), 0..3),
    )
        .prop_map(|(edits, inserted, byte_edits)| {
            let mut messages = bedrock_transcript();
            for (message, edit) in &edits {
                let count = messages.len();
                apply_json_edit(&mut messages[message % count].payload, edit);
            }
            for (at, message) in inserted {
                let count = messages.len();
                messages.insert(at % (count + 1), message);
            }
            let mut bytes: Vec<u8> = messages.iter().flat_map(BedrockMessage::encode).collect();
            for edit in &byte_edits {
                apply_byte_edit(&mut bytes, edit);
            }
            bytes
        })
}

// ---- the targets ---------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sse_decoder_arbitrary_bytes(bytes in arbitrary_bytes(), cuts in cuts()) {
        check_sse(&bytes, &cuts)?;
    }

    #[test]
    fn sse_decoder_structured(bytes in sse_soup(), cuts in cuts()) {
        check_sse(&bytes, &cuts)?;
    }

    #[test]
    fn every_sse_decoder_survives_arbitrary_bytes(bytes in arbitrary_bytes(), cuts in cuts()) {
        openai_decoder(&bytes, &cuts)?;
        anthropic_decoders(&bytes, &cuts)?;
        gemini_decoder(&bytes, &cuts)?;
    }

    #[test]
    fn openai_chunk_decoder_mutated_streams(mutation in sse_mutation(), cuts in cuts()) {
        let bytes = mutate_sse(OPENAI_STREAM, &mutation);
        openai_decoder(&bytes, &cuts)?;
    }

    #[test]
    fn anthropic_event_decoder_mutated_streams(
        mutation in sse_mutation(),
        server_tools in any::<bool>(),
        cuts in cuts(),
    ) {
        let seed = if server_tools { ANTHROPIC_SERVER_TOOL_STREAM } else { ANTHROPIC_STREAM };
        let bytes = mutate_sse(seed, &mutation);
        anthropic_decoders(&bytes, &cuts)?;
    }

    #[test]
    fn gemini_stream_decoder_mutated_streams(
        mutation in sse_mutation(),
        thinking in any::<bool>(),
        cuts in cuts(),
    ) {
        let seed = if thinking { GEMINI_THINKING_TOOLS } else { GEMINI_TEXT };
        let bytes = mutate_sse(seed, &mutation);
        gemini_decoder(&bytes, &cuts)?;
    }

    #[test]
    fn bedrock_arbitrary_bytes(bytes in arbitrary_bytes(), cuts in cuts()) {
        bedrock_decoder(&bytes, &cuts)?;
    }

    #[test]
    fn bedrock_mutated_streams(bytes in bedrock_stream(), cuts in cuts()) {
        bedrock_decoder(&bytes, &cuts)?;
    }

    /// An unknown event type before the end fails an Anthropic stream
    /// (both ways of reading it); an `error` event is the upstream's own
    /// report.
    #[test]
    fn anthropic_unknown_and_error_events_end_the_stream(
        boundary in any::<usize>(),
        unknown in "[a-z_]{1,12}".prop_filter("not a known type", |kind| !matches!(
            kind.as_str(),
            "message_start" | "content_block_start" | "content_block_delta"
                | "content_block_stop" | "message_delta" | "message_stop" | "ping" | "error"
        )),
        cuts in cuts(),
    ) {
        let events = split_events(ANTHROPIC_STREAM);
        // Anywhere before `message_stop`, the last event.
        let at = boundary % events.len();
        let insert = |event: String| {
            let mut stream = events.clone();
            stream.insert(at, event);
            stream.concat()
        };
        let surprise = insert(format!("event: {unknown}\ndata: {{\"type\":\"{unknown}\"}}\n\n"));
        let (translating, relaying) = anthropic_decoders(surprise.as_bytes(), &cuts)?;
        for outcome in [translating, relaying] {
            prop_assert!(matches!(outcome.error, Some(StreamError::Invalid(_))), "{:?}", outcome.error);
            prop_assert!(!outcome.done);
        }
        let overloaded = insert(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".to_owned(),
        );
        let (translating, relaying) = anthropic_decoders(overloaded.as_bytes(), &cuts)?;
        for outcome in [translating, relaying] {
            match outcome.error {
                Some(StreamError::Reported(report)) => {
                    prop_assert_eq!(report.kind.as_deref(), Some("overloaded_error"));
                    prop_assert_eq!(report.message.as_deref(), Some("Overloaded"));
                }
                other => prop_assert!(false, "expected a reported error, got {:?}", other),
            }
        }
    }

    /// An error chunk before `[DONE]` is the upstream's own report.
    #[test]
    fn openai_error_chunks_end_the_stream(boundary in any::<usize>(), cuts in cuts()) {
        let mut events = split_events(OPENAI_STREAM);
        let at = boundary % events.len();
        events.insert(
            at,
            "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n"
                .to_owned(),
        );
        let outcome = openai_decoder(events.concat().as_bytes(), &cuts)?;
        match outcome.error {
            Some(StreamError::Reported(report)) => {
                prop_assert_eq!(report.kind.as_deref(), Some("server_error"));
            }
            other => prop_assert!(false, "expected a reported error, got {:?}", other),
        }
        prop_assert!(!outcome.done);
    }
}

// ---- the seeds themselves, and time ----------------------------------------------

/// The seeds are valid, so that what the targets mutate is a real stream.
#[test]
fn the_seeds_decode_cleanly() {
    let cases: [(&str, Outcome); 6] = [
        (
            "openai",
            feed(
                openai::canonical::ChunkDecoder::new(),
                OPENAI_STREAM.as_bytes(),
                &[],
                no_finish,
            ),
        ),
        (
            "anthropic",
            feed(
                anthropic::EventDecoder::new(),
                ANTHROPIC_STREAM.as_bytes(),
                &[],
                no_finish,
            ),
        ),
        (
            "anthropic relaying",
            feed(
                anthropic::EventDecoder::relaying(),
                ANTHROPIC_SERVER_TOOL_STREAM.as_bytes(),
                &[],
                no_finish,
            ),
        ),
        (
            "gemini text",
            feed(
                gemini::StreamDecoder::new(),
                GEMINI_TEXT.as_bytes(),
                &[],
                |decoder, out| decoder.finish(out),
            ),
        ),
        (
            "gemini thinking",
            feed(
                gemini::StreamDecoder::new(),
                GEMINI_THINKING_TOOLS.as_bytes(),
                &[],
                |decoder, out| decoder.finish(out),
            ),
        ),
        (
            "bedrock",
            feed(
                bedrock::StreamDecoder::new(),
                &bedrock_transcript()
                    .iter()
                    .flat_map(BedrockMessage::encode)
                    .collect::<Vec<u8>>(),
                &[],
                |decoder, _| decoder.finish(),
            ),
        ),
    ];
    for (name, outcome) in cases {
        assert_eq!(outcome.error, None, "{name}");
        assert!(outcome.done, "{name} did not end");
        assert!(outcome.events.len() >= 4, "{name}: {:?}", outcome.events);
        let calls = outcome
            .events
            .iter()
            .filter(|event| matches!(event, StreamEvent::ToolCallStart { .. }))
            .count();
        assert!(
            calls >= 1 || name.starts_with("gemini text") || name.ends_with("relaying"),
            "{name}"
        );
    }
    // The translating decoder refuses what only the relaying one passes on.
    let refused = feed(
        anthropic::EventDecoder::new(),
        ANTHROPIC_SERVER_TOOL_STREAM.as_bytes(),
        &[],
        no_finish,
    );
    assert!(matches!(refused.error, Some(StreamError::Invalid(_))));
}

/// Generous: linear decoding takes well under a second here even in a
/// debug build; a decoder that rescanned its buffer on every read would
/// take minutes.
const BUDGET: Duration = Duration::from_secs(20);
const LONG: usize = 256 * 1024;

fn one_byte_at_a_time<D: StreamDecoder>(
    mut decoder: D,
    bytes: &[u8],
) -> (Vec<StreamEvent>, Duration) {
    let started = Instant::now();
    let mut events = Vec::new();
    for byte in bytes.chunks(1) {
        decoder
            .feed(byte, &mut events)
            .expect("a long but valid stream decodes");
    }
    (events, started.elapsed())
}

#[test]
fn sse_decoders_read_a_long_event_in_linear_time() {
    let long_text = "a".repeat(LONG);
    let openai_stream = format!(
        "data: {{\"id\":\"c\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{long_text}\"}}}}]}}\n\ndata: [DONE]\n\n"
    );
    let (events, elapsed) = one_byte_at_a_time(
        openai::canonical::ChunkDecoder::new(),
        openai_stream.as_bytes(),
    );
    assert_eq!(events[1], StreamEvent::TextDelta(long_text.clone()));
    assert!(elapsed < BUDGET, "OpenAI took {elapsed:?}");

    let anthropic_stream = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m\",\"model\":\"c\"}}}}\n\nevent: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{long_text}\"}}}}\n\n"
    );
    let (events, elapsed) =
        one_byte_at_a_time(anthropic::EventDecoder::new(), anthropic_stream.as_bytes());
    assert_eq!(events[1], StreamEvent::TextDelta(long_text.clone()));
    assert!(elapsed < BUDGET, "Anthropic took {elapsed:?}");

    let gemini_stream = format!(
        "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{long_text}\"}}],\"role\":\"model\"}},\"index\":0}}],\"responseId\":\"r\"}}\n\n"
    );
    let (events, elapsed) =
        one_byte_at_a_time(gemini::StreamDecoder::new(), gemini_stream.as_bytes());
    assert_eq!(events[1], StreamEvent::TextDelta(long_text));
    assert!(elapsed < BUDGET, "Gemini took {elapsed:?}");
}

#[test]
fn bedrock_reads_a_long_message_in_linear_time() {
    let long_text = "a".repeat(LONG);
    let bytes = [
        BedrockMessage::event("messageStart", json!({"role": "assistant"})).encode(),
        BedrockMessage::event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": long_text}}),
        )
        .encode(),
    ]
    .concat();
    let (events, elapsed) = one_byte_at_a_time(bedrock::StreamDecoder::new(), &bytes);
    assert_eq!(events[1], StreamEvent::TextDelta("a".repeat(LONG)));
    assert!(elapsed < BUDGET, "Bedrock took {elapsed:?}");
}
