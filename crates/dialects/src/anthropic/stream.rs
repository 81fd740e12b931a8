//! Anthropic's Messages event stream, both ways: `EventDecoder` reads an
//! upstream's events into stream events (and tells the pass-through relay
//! what each event carried); `EventEncoder` writes stream events as the
//! events an Anthropic SDK expects: `message_start`, then for each content
//! block `content_block_start`, its deltas and `content_block_stop`, then
//! `message_delta` (stop reason, usage) and `message_stop`.

use serde_json::{Value, json};
use switchboard_core::Usage;

use crate::canon::{
    FinishReason, Frame, StreamDecoder, StreamEncoder, StreamError, StreamEvent, merge_usage,
};
use crate::openai::UpstreamErrorBody;
use crate::sse::{SseDecoder, SseEvent};

use super::convert::{
    finish_from_anthropic, finish_to_anthropic, usage_from_anthropic, usage_to_anthropic,
};

/// Reads Anthropic stream events.
#[derive(Debug, Default)]
pub struct EventDecoder {
    sse: SseDecoder,
    events: Vec<SseEvent>,
    done: bool,
    /// Content block index → tool-call number, for the tool-use blocks.
    tool_blocks: Vec<(u64, u32)>,
    tools: u32,
    usage: Usage,
    cache_write: Option<u64>,
    /// Relaying to an Anthropic client: content blocks and deltas the
    /// internal model cannot hold (server tools, their results) are passed
    /// on as they are instead of failing the stream.
    relaying: bool,
}

impl EventDecoder {
    /// A decoder for translation: a block it cannot translate fails the
    /// stream rather than vanish from the answer.
    pub fn new() -> EventDecoder {
        EventDecoder::default()
    }

    /// A decoder that only watches a stream relayed to an Anthropic client
    /// unchanged, for its usage, errors and end.
    pub fn relaying() -> EventDecoder {
        EventDecoder {
            relaying: true,
            ..EventDecoder::default()
        }
    }

    /// Reads one event's `data`. Unknown event types end the stream with an
    /// error: the gateway will not relay what it cannot account for.
    pub fn event(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        let event: Value = serde_json::from_str(data).map_err(|error| {
            StreamError::Invalid(format!(
                "the upstream sent an event that is not valid JSON: {error}"
            ))
        })?;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match kind {
            "message_start" => {
                let message = event.get("message").unwrap_or(&Value::Null);
                let text = |key: &str| {
                    message
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                out.push(StreamEvent::Start {
                    id: text("id"),
                    model: text("model"),
                });
                if let Some(usage) = message.get("usage") {
                    self.note_usage(usage, out);
                }
            }
            "content_block_start" => {
                let block = event.get("content_block").unwrap_or(&Value::Null);
                let text = |key: &str| {
                    block
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = text("text");
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta(text));
                        }
                    }
                    Some("thinking") => {
                        let thinking = text("thinking");
                        if !thinking.is_empty() {
                            out.push(StreamEvent::ReasoningDelta(thinking));
                        }
                    }
                    Some("redacted_thinking") => {
                        out.push(StreamEvent::RedactedReasoning(text("data")));
                    }
                    Some("tool_use") => {
                        let index = self.tools;
                        self.tools += 1;
                        let block_index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                        self.tool_blocks.push((block_index, index));
                        out.push(StreamEvent::ToolCallStart {
                            index,
                            id: text("id"),
                            name: text("name"),
                        });
                        // A tool call that starts with its input whole.
                        if let Some(input) = block.get("input")
                            && input.as_object().is_some_and(|input| !input.is_empty())
                        {
                            out.push(StreamEvent::ToolCallDelta {
                                index,
                                arguments: input.to_string(),
                            });
                        }
                    }
                    // Server tools and their results: only an Anthropic client
                    // can receive them. An empty text delta marks the event
                    // as part of the answer (it releases a held opening).
                    Some(_) if self.relaying => out.push(StreamEvent::TextDelta(String::new())),
                    other => {
                        return Err(StreamError::Invalid(format!(
                            "the upstream started a `{}` content block, which cannot be translated",
                            other.unwrap_or("untyped")
                        )));
                    }
                }
            }
            "content_block_delta" => {
                let delta = event.get("delta").unwrap_or(&Value::Null);
                let text = |key: &str| {
                    delta
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => out.push(StreamEvent::TextDelta(text("text"))),
                    Some("thinking_delta") => {
                        out.push(StreamEvent::ReasoningDelta(text("thinking")))
                    }
                    Some("signature_delta") => {
                        out.push(StreamEvent::ReasoningSignature(text("signature")));
                    }
                    Some("input_json_delta") => {
                        let block_index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let known = self
                            .tool_blocks
                            .iter()
                            .any(|(block, _)| *block == block_index);
                        if self.relaying && !known {
                            // Input of a server tool call.
                            out.push(StreamEvent::TextDelta(String::new()));
                            return Ok(());
                        }
                        let index = self
                            .tool_blocks
                            .iter()
                            .find(|(block, _)| *block == block_index)
                            .map(|(_, index)| *index)
                            .ok_or_else(|| {
                                StreamError::Invalid(format!(
                                    "the upstream sent tool input for block {block_index}, which is not a tool call"
                                ))
                            })?;
                        let arguments = text("partial_json");
                        if !arguments.is_empty() {
                            out.push(StreamEvent::ToolCallDelta { index, arguments });
                        }
                    }
                    // Citations annotate text already sent; the internal
                    // model does not carry them.
                    Some("citations_delta") => {}
                    Some(_) if self.relaying => out.push(StreamEvent::TextDelta(String::new())),
                    other => {
                        return Err(StreamError::Invalid(format!(
                            "the upstream sent a `{}` delta, which cannot be translated",
                            other.unwrap_or("untyped")
                        )));
                    }
                }
            }
            "content_block_stop" | "ping" => {}
            "message_delta" => {
                if let Some(usage) = event.get("usage") {
                    self.note_usage(usage, out);
                }
                if let Some(reason) = event.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    // A stop reason newer than this gateway ends the turn
                    // all the same.
                    let reason = finish_from_anthropic(reason).unwrap_or(FinishReason::Stop);
                    out.push(StreamEvent::Finish {
                        reason,
                        stop_sequence: event
                            .pointer("/delta/stop_sequence")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    });
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                return Err(StreamError::Reported(UpstreamErrorBody::from_value(&event)));
            }
            other => {
                return Err(StreamError::Invalid(format!(
                    "the upstream sent an unknown event type `{other}`"
                )));
            }
        }
        Ok(())
    }

    /// Anthropic reports usage in pieces (input at the start, output at the
    /// end, each cumulative); the event carries the whole as known so far.
    fn note_usage(&mut self, usage: &Value, out: &mut Vec<StreamEvent>) {
        let (report, cache_write) = usage_from_anthropic(usage);
        merge_usage(&mut self.usage, &report);
        if cache_write.is_some() {
            self.cache_write = cache_write;
        }
        out.push(StreamEvent::Usage {
            usage: self.usage,
            cache_write_tokens: self.cache_write,
        });
    }
}

impl StreamDecoder for EventDecoder {
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
            if event.data.trim().is_empty() {
                continue;
            }
            result = self.event(&event.data, out);
            if result.is_err() {
                break;
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

/// Which content block is open in the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    Tool(u32),
}

/// Writes stream events as Anthropic stream events.
#[derive(Debug)]
pub struct EventEncoder {
    id: String,
    model: String,
    started: bool,
    /// The open block and its index.
    open: Option<(Block, u32)>,
    next_index: u32,
    /// Tool-call number → block index.
    tool_blocks: Vec<(u32, u32)>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<String>,
    usage: Usage,
    cache_write: Option<u64>,
}

fn frame(kind: &str, data: &Value, content: bool) -> Frame {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(b"event: ");
    bytes.extend_from_slice(kind.as_bytes());
    bytes.extend_from_slice(b"\ndata: ");
    bytes.extend_from_slice(&serde_json::to_vec(data).unwrap_or_default());
    bytes.extend_from_slice(b"\n\n");
    Frame { bytes, content }
}

impl EventEncoder {
    /// `id` names the message when the upstream gives none.
    pub fn new(model: &str, id: &str) -> EventEncoder {
        EventEncoder {
            id: id.to_owned(),
            model: model.to_owned(),
            started: false,
            open: None,
            next_index: 0,
            tool_blocks: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: Usage::default(),
            cache_write: None,
        }
    }

    fn start(&mut self, out: &mut Vec<Frame>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage_to_anthropic(&self.usage, self.cache_write),
            },
        });
        out.push(frame("message_start", &message, false));
    }

    fn close(&mut self, out: &mut Vec<Frame>) {
        if let Some((_, index)) = self.open.take() {
            out.push(frame(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
                false,
            ));
        }
    }

    /// Makes `block` the open block, starting it with `start` if needed;
    /// returns its index.
    fn open(&mut self, block: Block, start: Value, out: &mut Vec<Frame>) -> u32 {
        if let Some((open, index)) = self.open
            && open == block
        {
            return index;
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((block, index));
        out.push(frame(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": start}),
            matches!(block, Block::Tool(_)),
        ));
        index
    }

    fn delta(index: u32, delta: Value, out: &mut Vec<Frame>) {
        out.push(frame(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            true,
        ));
    }
}

impl StreamEncoder for EventEncoder {
    fn event(&mut self, event: StreamEvent, out: &mut Vec<Frame>) {
        match &event {
            StreamEvent::Start { id, model } if !self.started => {
                if !id.is_empty() {
                    self.id.clone_from(id);
                }
                if !model.is_empty() {
                    self.model.clone_from(model);
                }
            }
            StreamEvent::Usage {
                usage,
                cache_write_tokens,
            } => {
                merge_usage(&mut self.usage, usage);
                if cache_write_tokens.is_some() {
                    self.cache_write = *cache_write_tokens;
                }
                return;
            }
            _ => {}
        }
        self.start(out);
        match event {
            StreamEvent::Start { .. } | StreamEvent::Usage { .. } => {}
            StreamEvent::TextDelta(text) => {
                let index = self.open(Block::Text, json!({"type": "text", "text": ""}), out);
                Self::delta(index, json!({"type": "text_delta", "text": text}), out);
            }
            StreamEvent::ReasoningDelta(text) => {
                let index = self.open(
                    Block::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
                Self::delta(
                    index,
                    json!({"type": "thinking_delta", "thinking": text}),
                    out,
                );
            }
            StreamEvent::ReasoningSignature(signature) => {
                let index = self.open(
                    Block::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
                Self::delta(
                    index,
                    json!({"type": "signature_delta", "signature": signature}),
                    out,
                );
            }
            StreamEvent::RedactedReasoning(data) => {
                self.close(out);
                let index = self.next_index;
                self.next_index += 1;
                out.push(frame(
                    "content_block_start",
                    &json!({
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "redacted_thinking", "data": data},
                    }),
                    true,
                ));
                out.push(frame(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": index}),
                    false,
                ));
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                // A new call always opens a new block.
                self.close(out);
                let block = self.open(
                    Block::Tool(index),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
                self.tool_blocks.push((index, block));
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                // Fragments of a call whose block is no longer open (an
                // upstream interleaving parallel calls) still name their
                // own block, which is how the SDKs assemble them.
                let block = match self.open {
                    Some((Block::Tool(open), block)) if open == index => Some(block),
                    _ => self
                        .tool_blocks
                        .iter()
                        .find(|(call, _)| *call == index)
                        .map(|(_, block)| *block),
                };
                if let Some(block) = block {
                    Self::delta(
                        block,
                        json!({"type": "input_json_delta", "partial_json": arguments}),
                        out,
                    );
                }
            }
            StreamEvent::Finish {
                reason,
                stop_sequence,
            } => {
                self.stop_reason = Some(finish_to_anthropic(reason));
                self.stop_sequence = stop_sequence;
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        self.start(out);
        self.close(out);
        let delta = json!({
            "type": "message_delta",
            "delta": {
                "stop_reason": self.stop_reason.unwrap_or("end_turn"),
                "stop_sequence": self.stop_sequence,
            },
            "usage": usage_to_anthropic(&self.usage, self.cache_write),
        });
        out.push(frame("message_delta", &delta, true));
        out.push(frame(
            "message_stop",
            &json!({"type": "message_stop"}),
            false,
        ));
    }
}
