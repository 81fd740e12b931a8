//! ConverseStream's answer, an AWS event stream of JSON events, turned into
//! canon stream events.
//!
//! Each message names its kind in `:message-type`: `event` messages carry
//! one member of the `ConverseStreamOutput` union, named by `:event-type`,
//! as their JSON payload; `exception` messages carry a modelled error
//! (`throttlingException`, `validationException`, ...) named by
//! `:exception-type`; `error` messages carry an unmodelled one in the
//! `:error-code` and `:error-message` headers. Bedrock pads event payloads
//! with a `p` member to hide their lengths; like every member not read
//! here, it is ignored.
//!
//! An event type this decoder does not know ends the answer with an error:
//! it may carry content that would otherwise vanish from it silently, and
//! the gateway never passes off a partial answer as a whole one. Kinds of
//! content block and delta it does not know (image and tool-result blocks,
//! citations) are skipped: they annotate or accompany content the answer
//! already carries.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::converse::{WireUsage, finish_reason, stop_sequence};
use super::eventstream::{DEFAULT_MAX_MESSAGE_BYTES, EventStreamDecoder, Message};
use crate::canon::{self, ErrorReport, StreamError, StreamEvent};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart {
    content_block_index: Option<u32>,
    start: Option<StartKind>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartKind {
    tool_use: Option<ToolUseStart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseStart {
    tool_use_id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta {
    content_block_index: Option<u32>,
    delta: Option<DeltaKind>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaKind {
    text: Option<String>,
    tool_use: Option<ToolUseDelta>,
    reasoning_content: Option<ReasoningDelta>,
}

#[derive(Deserialize)]
struct ToolUseDelta {
    #[serde(default)]
    input: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReasoningDelta {
    text: Option<String>,
    signature: Option<String>,
    redacted_content: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageStop {
    stop_reason: Option<String>,
    additional_model_response_fields: Option<Value>,
}

#[derive(Deserialize)]
struct Metadata {
    usage: Option<WireUsage>,
}

/// Decodes a ConverseStream answer.
#[derive(Debug)]
pub struct StreamDecoder {
    frames: EventStreamDecoder,
    /// The tool call each tool-use content block holds, by block index.
    tool_blocks: HashMap<u32, u32>,
    tool_calls: u32,
    done: bool,
    /// The `metadata` event (usage), which follows `messageStop`, was read.
    metadata: bool,
    /// Reused between reads.
    messages: Vec<Message>,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::with_max_message_bytes(DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// A decoder refusing any event-stream message longer than
    /// `max_message_bytes`.
    pub fn with_max_message_bytes(max_message_bytes: usize) -> StreamDecoder {
        StreamDecoder {
            frames: EventStreamDecoder::new(max_message_bytes),
            tool_blocks: HashMap::new(),
            tool_calls: 0,
            done: false,
            metadata: false,
            messages: Vec::new(),
        }
    }

    /// The stream ended: an error if it stopped inside a message or broke.
    /// Whether the answer was complete is `is_done`'s question.
    pub fn finish(&self) -> Result<(), StreamError> {
        self.frames
            .finish()
            .map_err(|error| StreamError::Invalid(error.to_string()))
    }

    fn message(
        &mut self,
        message: &Message,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamError> {
        match message.header_str(":message-type") {
            Some("event") => {
                let event_type = message.header_str(":event-type").ok_or_else(|| {
                    StreamError::Invalid("a ConverseStream event has no :event-type header".into())
                })?;
                self.event(event_type, &message.payload, out)
            }
            Some("exception") => Err(StreamError::Reported(exception(message))),
            Some("error") => Err(StreamError::Reported(error(message))),
            Some(other) => Err(StreamError::Invalid(format!(
                "a ConverseStream message has the unknown :message-type `{other}`"
            ))),
            None => Err(StreamError::Invalid(
                "a ConverseStream message has no :message-type string header".into(),
            )),
        }
    }

    fn event(
        &mut self,
        event_type: &str,
        payload: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamError> {
        match event_type {
            "messageStart" => out.push(StreamEvent::Start {
                id: String::new(),
                model: String::new(),
            }),
            "contentBlockStart" => {
                let start: BlockStart = parse(event_type, payload)?;
                if let Some(tool_use) = start.start.and_then(|start| start.tool_use) {
                    let block = start.content_block_index.unwrap_or_default();
                    let index = self.tool_calls;
                    self.tool_calls = self.tool_calls.saturating_add(1);
                    self.tool_blocks.insert(block, index);
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: tool_use.tool_use_id,
                        name: tool_use.name,
                    });
                }
            }
            "contentBlockDelta" => {
                let delta: BlockDelta = parse(event_type, payload)?;
                let block = delta.content_block_index.unwrap_or_default();
                let Some(delta) = delta.delta else {
                    return Ok(());
                };
                if let Some(text) = delta.text {
                    if !text.is_empty() {
                        out.push(StreamEvent::TextDelta(text));
                    }
                } else if let Some(tool_use) = delta.tool_use {
                    let Some(&index) = self.tool_blocks.get(&block) else {
                        return Err(StreamError::Invalid(format!(
                            "ConverseStream sent tool-call input for content block {block}, \
                             which did not start a tool call"
                        )));
                    };
                    if !tool_use.input.is_empty() {
                        out.push(StreamEvent::ToolCallDelta {
                            index,
                            arguments: tool_use.input,
                        });
                    }
                } else if let Some(reasoning) = delta.reasoning_content {
                    if let Some(text) = reasoning.text {
                        if !text.is_empty() {
                            out.push(StreamEvent::ReasoningDelta(text));
                        }
                    } else if let Some(signature) = reasoning.signature {
                        out.push(StreamEvent::ReasoningSignature(signature));
                    } else if let Some(data) = reasoning.redacted_content {
                        out.push(StreamEvent::RedactedReasoning(data));
                    }
                }
            }
            "messageStop" => {
                let stop: MessageStop = parse(event_type, payload)?;
                out.push(StreamEvent::Finish {
                    reason: finish_reason(stop.stop_reason.as_deref().unwrap_or_default()),
                    stop_sequence: stop_sequence(stop.additional_model_response_fields.as_ref()),
                });
                self.done = true;
            }
            "metadata" => {
                self.metadata = true;
                let metadata: Metadata = parse(event_type, payload)?;
                if let Some(usage) = metadata.usage {
                    let (usage, cache_write_tokens) = usage.to_canon();
                    out.push(StreamEvent::Usage {
                        usage,
                        cache_write_tokens,
                    });
                }
            }
            // A block's end carries nothing the internal model needs.
            "contentBlockStop" => {}
            // An event type newer than this gateway may carry content that
            // would vanish: the answer ends with an error instead.
            other => {
                return Err(StreamError::Invalid(format!(
                    "the upstream sent a ConverseStream event of unknown type `{other}`"
                )));
            }
        }
        Ok(())
    }
}

fn parse<'a, T: Deserialize<'a>>(event_type: &str, payload: &'a [u8]) -> Result<T, StreamError> {
    serde_json::from_slice(payload).map_err(|error| {
        StreamError::Invalid(format!(
            "a ConverseStream `{event_type}` event is not the JSON it should be: {error}"
        ))
    })
}

/// A modelled exception: its type from `:exception-type`, its message from
/// the payload (`modelStreamErrorException` may carry only the model's own
/// `originalMessage`).
fn exception(message: &Message) -> ErrorReport {
    let kind = message.header_str(":exception-type").map(str::to_owned);
    let payload = serde_json::from_slice::<Value>(&message.payload).unwrap_or(Value::Null);
    let text = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_owned);
    ErrorReport {
        message: text("message")
            .or_else(|| text("Message"))
            .or_else(|| text("originalMessage")),
        kind: kind.clone(),
        param: None,
        code: kind,
    }
}

/// An unmodelled error: everything is in the headers.
fn error(message: &Message) -> ErrorReport {
    let code = message.header_str(":error-code").map(str::to_owned);
    ErrorReport {
        message: message.header_str(":error-message").map(str::to_owned),
        kind: code.clone(),
        param: None,
        code,
    }
}

impl canon::StreamDecoder for StreamDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        let mut messages = std::mem::take(&mut self.messages);
        messages.clear();
        let framed = self.frames.feed(bytes, &mut messages);
        // Messages completed before a framing error still count: they
        // passed their checksums.
        let mut result = Ok(());
        for message in &messages {
            result = self.message(message, out);
            if result.is_err() {
                break;
            }
        }
        messages.clear();
        self.messages = messages;
        result?;
        framed.map_err(|error| StreamError::Invalid(error.to_string()))
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn is_final(&self) -> bool {
        self.done && self.metadata
    }
}
