//! `streamGenerateContent?alt=sse`: SSE events whose `data` is each a
//! `GenerateContentResponse` chunk, turned into `canon` stream events.
//!
//! Gemini sends whole parts per chunk: text and thoughts arrive in pieces,
//! one per chunk, but a function call always arrives complete, so each
//! call becomes one `ToolCallStart` and one `ToolCallDelta` with all its
//! arguments. Usage comes with most chunks and is cumulative, so every
//! report simply replaces the last. There is no end marker: the stream is
//! over once a chunk carries a finish reason (or the prompt was blocked),
//! and then the connection closes.

use super::error::report_from_value;
use super::response::{WirePart, WireResponse, fallback_id, parse_object};
use crate::canon::{self, FinishReason, StreamError, StreamEvent};
use crate::sse::{SseDecoder, SseError, SseEvent};
use switchboard_core::Usage;

/// Decodes one Gemini stream; feed it the response body in any pieces.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    sse: SseDecoder,
    /// Reused buffer for the SSE events of one read.
    events: Vec<SseEvent>,
    started: bool,
    /// The index the next function call gets; also how many were seen.
    next_tool_index: u32,
    finished: bool,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// The body ended: decodes a last event that lacked its blank line.
    /// Gemini ends every event properly, so this only matters for a
    /// truncated stream; the `canon::StreamDecoder` trait has no such call,
    /// and a caller that knows the body ended may use it.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        self.read(|sse, events| sse.finish(events), out)
    }

    /// Runs one step of the SSE decoder, then decodes the events it
    /// completed. Events completed before an SSE error (an oversized event,
    /// invalid UTF-8) are still decoded, so that the same bytes give the
    /// same events however they were split into reads.
    fn read(
        &mut self,
        step: impl FnOnce(&mut SseDecoder, &mut Vec<SseEvent>) -> Result<(), SseError>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamError> {
        let mut events = std::mem::take(&mut self.events);
        let framing = step(&mut self.sse, &mut events);
        let decoded = self.decode_events(&mut events, out);
        self.events = events;
        decoded?;
        framing.map_err(|error| StreamError::Invalid(error.to_string()))
    }

    fn decode_events(
        &mut self,
        events: &mut Vec<SseEvent>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamError> {
        let result = events
            .iter()
            .try_for_each(|event| self.decode_chunk(&event.data, out));
        events.clear();
        result
    }

    fn decode_chunk(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        let chunk: WireResponse = parse_object(data.as_bytes(), "stream chunk")
            .map_err(|invalid| StreamError::Invalid(invalid.0))?;
        if let Some(error) = &chunk.error {
            let report = report_from_value(&serde_json::json!({ "error": error }));
            return Err(StreamError::Reported(report));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk
                    .response_id
                    .clone()
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| fallback_id(data.as_bytes())),
                model: chunk.model_version.clone().unwrap_or_default(),
            });
        }
        let candidate = chunk.first_candidate();
        if let Some(candidate) = candidate {
            for part in candidate.parts() {
                self.decode_part(part, out);
            }
        }
        if !self.finished {
            let finish = match candidate {
                Some(candidate) => candidate.finish(self.next_tool_index > 0),
                None if chunk.blocked() => Some(FinishReason::ContentFilter),
                None => None,
            };
            if let Some(reason) = finish {
                self.finished = true;
                out.push(StreamEvent::Finish {
                    reason,
                    stop_sequence: None,
                });
            }
        }
        if let Some(usage) = chunk.usage_metadata.as_ref().map(Usage::from)
            && !usage.is_empty()
        {
            out.push(StreamEvent::Usage {
                usage,
                cache_write_tokens: None,
            });
        }
        Ok(())
    }

    /// One part's events; mirrors `response::read_part`, signatures included.
    fn decode_part(&mut self, part: &WirePart, out: &mut Vec<StreamEvent>) {
        let signature = part
            .thought_signature
            .as_ref()
            .filter(|signature| !signature.is_empty());
        if part.thought == Some(true) {
            if let Some(text) = part.text.as_ref().filter(|text| !text.is_empty()) {
                out.push(StreamEvent::ReasoningDelta(text.clone()));
            }
            if let Some(signature) = signature {
                out.push(StreamEvent::ReasoningSignature(signature.clone()));
            }
            return;
        }
        if let Some(signature) = signature {
            out.push(StreamEvent::ReasoningSignature(signature.clone()));
        }
        if let Some(call) = &part.function_call {
            let index = self.next_tool_index;
            self.next_tool_index = index.saturating_add(1);
            out.push(StreamEvent::ToolCallStart {
                index,
                id: format!("call_{index}"),
                name: call.name.clone(),
            });
            out.push(StreamEvent::ToolCallDelta {
                index,
                arguments: call.arguments(),
            });
        } else if let Some(text) = part.text.as_ref().filter(|text| !text.is_empty()) {
            out.push(StreamEvent::TextDelta(text.clone()));
        }
    }
}

impl canon::StreamDecoder for StreamDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        self.read(|sse, events| sse.feed(bytes, events), out)
    }

    /// True once a chunk carried a finish reason or said the prompt was
    /// blocked: Gemini has no end marker of its own.
    fn is_done(&self) -> bool {
        self.finished
    }
}
