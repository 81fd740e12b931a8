//! The simulated provider: a model that lives inside the gateway.
//!
//! It is clearly not a real model. It answers with deterministic text (a
//! fixed reply, or an echo of the last user message), counts one token per
//! word, and produces unit-length embeddings derived from a hash of the
//! input. Latency, time to first token, pace and failure rate come from the
//! configuration, so the quickstart, demos, tests and benchmarks all run
//! without an API key or a network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_config::Simulation;
use switchboard_core::mix::splitmix64;
use switchboard_core::{ResponseInfo, Usage};
use switchboard_dialects::openai::response::embeddings_list;
use switchboard_dialects::openai::{ChatRequest, EmbeddingsRequest, Role, UpstreamErrorBody};
use switchboard_dialects::sse::frame_data;

use crate::translate::{ChatCall, OPENAI, relay_as_bytes, translated_reply};
use crate::transport::Native;
use crate::{RelayEvent, Reply, UpstreamError};

/// Words used to pad an echo up to the configured reply length.
const FILLER: &[&str] = &[
    "the",
    "gateway",
    "simulates",
    "a",
    "model",
    "so",
    "that",
    "tests",
    "and",
    "demos",
    "need",
    "no",
    "key",
];

/// Bounds on one embeddings answer, so that a request cannot make the
/// gateway build an arbitrarily large body.
const MAX_EMBEDDING_DIMENSIONS: usize = 65_536;
const MAX_EMBEDDING_VALUES: usize = 4 * 1024 * 1024;

/// A 400 as an OpenAI upstream would send it for a bad parameter.
fn refuse(param: &str, message: String) -> UpstreamError {
    UpstreamError::Status {
        status: 400,
        body: UpstreamErrorBody {
            message: Some(message),
            kind: Some("invalid_request_error".to_owned()),
            param: Some(param.to_owned()),
            code: None,
        },
        retry_after: None,
    }
}

pub(crate) struct Simulator {
    settings: Simulation,
    model: String,
    /// Requests seen so far; drives the repeatable failure draw.
    counter: AtomicU64,
}

#[derive(Deserialize)]
struct Message<'a> {
    role: Role,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

fn message_text(content: Option<&RawValue>) -> String {
    match content.map(|raw| serde_json::from_str::<Content>(raw.get())) {
        Some(Ok(Content::Text(text))) => text,
        Some(Ok(Content::Parts(parts))) => parts
            .into_iter()
            .filter_map(|part| part.text)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

impl Simulator {
    pub(crate) fn new(settings: Simulation, model: String) -> Simulator {
        Simulator {
            settings,
            model,
            counter: AtomicU64::new(0),
        }
    }

    /// Draws whether this request fails, from a fixed sequence per seed.
    fn draw_failure(&self) -> Result<(), UpstreamError> {
        if self.settings.failure_rate <= 0.0 {
            return Ok(());
        }
        let turn = self.counter.fetch_add(1, Ordering::Relaxed);
        let draw = (splitmix64(self.settings.seed ^ turn) >> 11) as f64 / (1u64 << 53) as f64;
        if draw < self.settings.failure_rate {
            return Err(UpstreamError::Status {
                status: 500,
                body: UpstreamErrorBody {
                    message: Some("simulated failure (failure_rate)".to_owned()),
                    kind: Some("server_error".to_owned()),
                    param: None,
                    code: Some("simulated_failure".to_owned()),
                },
                retry_after: None,
            });
        }
        Ok(())
    }

    /// The reply's words and whether `max_tokens` cut it short.
    fn reply_words(
        &self,
        request: &ChatRequest<'_>,
        messages: &[Message<'_>],
    ) -> (Vec<String>, bool) {
        let base = match &self.settings.reply {
            Some(reply) => reply.clone(),
            None => {
                let last_user = messages
                    .iter()
                    .rev()
                    .find(|message| message.role == Role::User)
                    .map(|message| message_text(message.content))
                    .unwrap_or_default();
                format!("Simulated reply to: {last_user}")
            }
        };
        let target = self.settings.reply_tokens.max(1) as usize;
        let mut words: Vec<String> = base.split_whitespace().map(str::to_owned).collect();
        let mut filler = FILLER.iter().cycle();
        while self.settings.reply.is_none() && words.len() < target {
            words.push((*filler.next().expect("cycle never ends")).to_owned());
        }
        if self.settings.reply.is_none() {
            words.truncate(target);
        }
        let limit = request
            .max_tokens
            .map_or(usize::MAX, |limit| limit as usize);
        let cut = words.len() > limit;
        words.truncate(limit);
        (words, cut)
    }

    pub(crate) async fn chat(&self, request: &ChatRequest<'_>) -> Result<Reply, UpstreamError> {
        let messages: Vec<Message<'_>> = request
            .fields
            .raw("messages")
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default();
        let prompt_tokens: u64 = messages
            .iter()
            .map(|message| count_words(&message_text(message.content)) + 3)
            .sum();
        let (words, cut) = self.reply_words(request, &messages);
        let finish_reason = if cut { "length" } else { "stop" };
        let usage = Usage {
            input_tokens: Some(prompt_tokens),
            output_tokens: Some(words.len() as u64),
            cached_input_tokens: Some(0),
            reasoning_tokens: Some(0),
            cache_write_tokens: None,
        };
        let id = format!(
            "chatcmpl-sim{:016x}",
            splitmix64(self.counter.load(Ordering::Relaxed) ^ prompt_tokens)
        );
        let created = unix_seconds();

        sleep(self.settings.latency).await;
        self.draw_failure()?;

        if !request.stream {
            let body = json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": words.join(" "), "refusal": null},
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }],
                "usage": usage_json(&usage),
                "system_fingerprint": "switchboard-simulated",
            });
            let mut info = ResponseInfo::default();
            info.note_id(&id);
            info.note_model(&self.model);
            info.push_finish_reason(finish_reason);
            return Ok(Reply::Complete {
                body: Bytes::from(serde_json::to_vec(&body).expect("serialising JSON cannot fail")),
                usage,
                info,
                dropped: Vec::new(),
            });
        }

        let include_usage = request.client_wants_usage;
        let usage_member = if include_usage {
            Some(serde_json::Value::Null)
        } else {
            None
        };
        let chunk_id = id.clone();
        let chunk = move |delta: serde_json::Value, finish: Option<&str>| -> Bytes {
            let mut value = json!({
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "system_fingerprint": "switchboard-simulated",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            });
            if let Some(null) = &usage_member {
                value["usage"] = null.clone();
            }
            Bytes::from(frame_data(
                &serde_json::to_vec(&value).expect("serialising JSON cannot fail"),
            ))
        };
        let mut events = Vec::with_capacity(words.len() + 5);
        events.push(RelayEvent::Data {
            frame: chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ),
            content: false,
        });
        for (index, word) in words.iter().enumerate() {
            let text = if index == 0 {
                word.clone()
            } else {
                format!(" {word}")
            };
            events.push(RelayEvent::Data {
                frame: chunk(json!({"content": text}), None),
                content: true,
            });
        }
        events.push(RelayEvent::Data {
            frame: chunk(json!({}), Some(finish_reason)),
            content: true,
        });
        events.push(RelayEvent::Usage(usage));
        if include_usage {
            let report = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "system_fingerprint": "switchboard-simulated",
                "choices": [],
                "usage": usage_json(&usage),
            });
            events.push(RelayEvent::Data {
                frame: Bytes::from(frame_data(
                    &serde_json::to_vec(&report).expect("serialising JSON cannot fail"),
                )),
                content: false,
            });
        }
        let mut info = ResponseInfo::default();
        info.note_id(&id);
        info.note_model(&self.model);
        info.push_finish_reason(finish_reason);
        events.push(RelayEvent::Info(info));
        events.push(RelayEvent::Done);

        let first_token = self.settings.time_to_first_token;
        let gap = if self.settings.tokens_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / self.settings.tokens_per_second)
        } else {
            Duration::ZERO
        };
        // The role chunk and the first token leave after the time to first
        // token; each further token after the per-token gap.
        let stream = futures_util::stream::unfold(
            (events.into_iter(), 0usize),
            move |(mut events, index)| async move {
                let event = events.next()?;
                let is_token = matches!(event, RelayEvent::Data { .. }) && index >= 2;
                if index == 0 {
                    sleep(first_token).await;
                } else if is_token {
                    sleep(gap).await;
                }
                Some((event, (events, index + 1)))
            },
        );
        Ok(Reply::Stream {
            events: Box::pin(stream),
            dropped: Vec::new(),
        })
    }

    /// A request from a client of another dialect: the simulator answers
    /// in OpenAI's dialect, which is then translated like any upstream's.
    pub(crate) async fn chat_translated(
        &self,
        call: &ChatCall<'_>,
    ) -> Result<Reply, UpstreamError> {
        let canonical = call.canonical()?;
        let encoded =
            switchboard_dialects::openai::canonical::encode_request(canonical, &self.model);
        let request =
            ChatRequest::parse(&encoded.body).map_err(|error| UpstreamError::Untranslatable {
                message: error.message,
                param: error.param,
            })?;
        let native = match self.chat(&request).await? {
            Reply::Complete { body, .. } => Native::Whole(body),
            Reply::Stream { events, .. } => Native::Stream(relay_as_bytes(events)),
        };
        translated_reply(
            call,
            native,
            &OPENAI,
            &self.model,
            Duration::from_secs(3600),
            Vec::new(),
        )
    }

    pub(crate) async fn embeddings(
        &self,
        request: &EmbeddingsRequest<'_>,
    ) -> Result<(Bytes, Usage), UpstreamError> {
        let dimensions = request
            .dimensions
            .unwrap_or(self.settings.embedding_dimensions) as usize;
        let items = request.input.items();
        if dimensions > MAX_EMBEDDING_DIMENSIONS
            || dimensions.saturating_mul(items.len()) > MAX_EMBEDDING_VALUES
        {
            return Err(refuse(
                "dimensions",
                format!(
                    "the simulated provider returns at most {MAX_EMBEDDING_DIMENSIONS} dimensions and \
                     {MAX_EMBEDDING_VALUES} values per request; this request asks for {} inputs of {dimensions}",
                    items.len()
                ),
            ));
        }
        sleep(self.settings.latency).await;
        self.draw_failure()?;
        let prompt_tokens: u64 = items.iter().map(|item| count_words(item).max(1)).sum();
        let vectors: Vec<Vec<f32>> = items.iter().map(|item| embed(item, dimensions)).collect();
        let body = embeddings_list(&self.model, &vectors, request.base64, Some(prompt_tokens));
        let usage = Usage {
            input_tokens: Some(prompt_tokens),
            output_tokens: Some(0),
            cached_input_tokens: None,
            reasoning_tokens: None,
            cache_write_tokens: None,
        };
        Ok((Bytes::from(body), usage))
    }
}

fn usage_json(usage: &Usage) -> serde_json::Value {
    let input = usage.input_tokens.unwrap_or(0);
    let output = usage.output_tokens.unwrap_or(0);
    json!({
        "prompt_tokens": input,
        "completion_tokens": output,
        "total_tokens": input + output,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    })
}

async fn sleep(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A unit-length vector that depends only on the text and its length.
fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|_| {
            state = splitmix64(state);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|value| *value /= norm);
    }
    vector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let first = embed("hello", 64);
        assert_eq!(first, embed("hello", 64));
        assert_ne!(first, embed("world", 64));
        let norm: f32 = first.iter().map(|value| value * value).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    #[test]
    fn failure_rate_fails_about_that_share_repeatably() {
        let settings = Simulation {
            failure_rate: 0.25,
            seed: 7,
            ..Simulation::default()
        };
        let run = || {
            let simulator = Simulator::new(settings.clone(), "m".into());
            (0..2000)
                .map(|_| simulator.draw_failure().is_err())
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        let failures = first.iter().filter(|failed| **failed).count();
        assert!(
            (400..600).contains(&failures),
            "{failures} failures of 2000"
        );
    }
}
