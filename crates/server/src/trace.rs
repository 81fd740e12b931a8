//! What the gateway learns about one request while serving it, and the
//! record and log line it leaves behind.
//!
//! A `Trace` is created when a model request arrives and records itself
//! exactly once: when the handler or the stream calls `finish`, or, if
//! neither did (the client hung up, or shutdown cut the request), when it
//! is dropped. Recording only queues the record; nothing here waits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_core::{AttemptDetail, Endpoint, Outcome, RequestRecord, ResponseInfo, Usage};
use switchboard_store::Recorder;
use tokio_util::sync::CancellationToken;

use crate::access::{Admission, Caller, Hold};
use crate::cache::CacheFill;
use crate::context::RequestContext;
use crate::dispatch::{InFlightTicket, Route};
use crate::metrics::{Metrics, Observation, UNKNOWN_MODEL};
use crate::telemetry::{AttemptSpan, RequestFacts, SpanIds, Telemetry};

/// The cost in nano-dollars of a usage, at some deployment's prices.
pub(crate) type Pricing = Arc<dyn Fn(&Usage) -> u64 + Send + Sync>;

/// How far the dispatcher got: the deployment of the latest attempt and
/// the number of attempts so far.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub deployment: Option<Arc<str>>,
    pub attempts: u32,
    /// Failed attempts: deployment and error class (for metrics).
    pub upstream_errors: Vec<(Arc<str>, &'static str)>,
    /// Every attempt's span (when the request is traced).
    pub attempt_spans: Vec<AttemptSpan>,
    /// Every attempt, for the record (bounded: see `push_attempt_detail`).
    pub attempt_details: Vec<AttemptDetail>,
    /// When the request's time budget runs out, if it has one.
    pub deadline: Option<std::time::Instant>,
}

pub(crate) struct Trace {
    context: RequestContext,
    endpoint: Endpoint,
    pub model: String,
    /// Whether `model` is one the configuration declares (only those
    /// become metric labels).
    pub model_known: bool,
    pub deployment: Option<Arc<str>>,
    /// The public model that answered, when a fallback did.
    pub served_model: Option<Arc<str>>,
    pub attempts: u32,
    /// Updated by the dispatcher at every attempt, so that a request cut
    /// short (the client left) still records where it was.
    pub progress: Arc<Mutex<Progress>>,
    /// The member whose per-minute token count this request's usage joins
    /// (counted by this instance: without a shared limiter).
    pub capacity: Option<(Arc<Route>, usize)>,
    /// The serving deployment's hold on its shared capacity, settled with
    /// the usage.
    pub hold: Option<Hold>,
    /// Keeps a stream counted in flight on its deployment until it ends.
    pub in_flight: Option<InFlightTicket>,
    pub stream: bool,
    pub usage: Usage,
    /// The answer's id, model and finish reasons, where the upstream's
    /// answer was read anyway (for its span).
    pub response: ResponseInfo,
    /// The key, team and end user behind the request.
    pub caller: Caller,
    /// Limits reserved for the request, settled when it ends.
    pub admission: Option<Arc<Admission>>,
    /// What the usage costs at the serving deployment's prices.
    pub pricing: Option<Pricing>,
    /// Whether the response cache answered (`Some(true)`), was consulted
    /// and missed (`Some(false)`), or stayed out (`None`).
    pub cache: Option<bool>,
    /// A stream's bytes, gathered for the cache until it ends well.
    pub cache_fill: Option<CacheFill>,
    /// The exporter and the request's span ids, when it is traced.
    pub span: Option<(Arc<Telemetry>, SpanIds)>,
    /// The client's `x-switchboard-metadata`, canonical JSON.
    pub metadata: Option<String>,
    /// The request's body and the answer's, gathered when they are to be
    /// kept (redacted when the record is made).
    pub bodies: Option<BodyCapture>,
    /// The request's temperature and output limit, for its span.
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    first_chunk: Option<Duration>,
    /// Where the record goes; `None` when requests are not recorded
    /// (`logging.requests = false`): no record is made at all.
    recorder: Option<Recorder>,
    metrics: Arc<Metrics>,
    /// Cancelled when the shutdown deadline cuts in-flight requests.
    cut: CancellationToken,
    recorded: bool,
}

impl Trace {
    /// A trace for a request just begun, in a box of its own: a trace is
    /// most of a kilobyte, and the handlers and the stream relay hold it
    /// across awaits and hand it on, which moved (copied) all of it each
    /// time; boxed, they move a pointer. The box is allocated first and the
    /// trace written into it, which lets the optimiser make it in place.
    pub fn new(
        context: RequestContext,
        endpoint: Endpoint,
        recorder: Option<Recorder>,
        metrics: Arc<Metrics>,
        cut: CancellationToken,
    ) -> Box<Trace> {
        metrics.started();
        Box::write(
            Box::new_uninit(),
            Trace {
                context,
                endpoint,
                model: String::new(),
                model_known: false,
                deployment: None,
                served_model: None,
                attempts: 0,
                progress: Arc::default(),
                capacity: None,
                hold: None,
                in_flight: None,
                stream: false,
                usage: Usage::default(),
                response: ResponseInfo::default(),
                caller: Caller::default(),
                admission: None,
                pricing: None,
                cache: None,
                cache_fill: None,
                span: None,
                metadata: None,
                bodies: None,
                temperature: None,
                max_tokens: None,
                first_chunk: None,
                recorder,
                metrics,
                cut,
                recorded: false,
            },
        )
    }

    /// Notes the first streamed chunk (time to first token).
    pub fn mark_first_chunk(&mut self) {
        if self.first_chunk.is_none() {
            self.first_chunk = Some(self.context.started.elapsed());
        }
    }

    pub fn finish(&mut self, status: u16, outcome: Outcome, error_code: Option<&'static str>) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let upstream_errors;
        let attempt_spans;
        let attempt_details;
        {
            let mut progress = self
                .progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.deployment.is_none() {
                self.deployment.clone_from(&progress.deployment);
            }
            self.attempts = self.attempts.max(progress.attempts);
            upstream_errors = std::mem::take(&mut progress.upstream_errors);
            attempt_spans = std::mem::take(&mut progress.attempt_spans);
            attempt_details = std::mem::take(&mut progress.attempt_details);
        }
        // A cached answer costs nothing.
        let mut cost = if self.cache == Some(true) {
            Some(0)
        } else {
            self.pricing.as_ref().map(|pricing| pricing(&self.usage))
        };
        if outcome != Outcome::Success {
            self.cache_fill = None;
        }
        if let Some(hold) = self.hold.take() {
            hold.settle(&self.usage);
        }
        if let Some(reservation) = self
            .admission
            .take()
            .and_then(|admission| admission.take_keys())
        {
            // An upstream that answered (or was cut off while answering)
            // without a usage report may still bill for it: the budget is
            // charged the reserved worst case rather than nothing.
            let unknown = self.usage.is_empty()
                && self.attempts > 0
                && matches!(
                    outcome,
                    Outcome::Success | Outcome::ClientClosed | Outcome::Shutdown
                );
            if unknown {
                cost = Some(reservation.worst_case());
            }
            reservation.settle(&self.usage, cost.unwrap_or(0));
        }
        if let Some((route, member)) = self.capacity.take() {
            let tokens =
                self.usage.input_tokens.unwrap_or(0) + self.usage.output_tokens.unwrap_or(0);
            route
                .group
                .member(member)
                .capacity
                .record_tokens(Instant::now(), tokens);
        }
        let latency = self.context.started.elapsed();
        self.metrics.observe(&Observation {
            endpoint: self.endpoint,
            model: if self.model_known {
                &self.model
            } else {
                UNKNOWN_MODEL
            },
            deployment: self.deployment.as_deref(),
            served_model: self.served_model.as_deref(),
            attempts: self.attempts,
            stream: self.stream,
            status,
            outcome,
            latency,
            first_token: self.first_chunk,
            usage: &self.usage,
            cost_nanos: cost,
            key_id: self.caller.key_id.as_deref(),
            team_id: self.caller.team_id.as_deref(),
            upstream_errors: &upstream_errors,
            cache: self.cache,
        });
        // Only a sampled request's facts are gathered: they are moved (the
        // model copied) to the exporter, which encodes them off the path.
        if let Some((telemetry, ids)) = self.span.as_ref().filter(|(_, ids)| ids.sampled) {
            let end_ns = crate::telemetry::unix_nanos();
            // The start is read off a monotonic clock, the attempts' off the
            // wall clock: the span still begins no later than its first
            // attempt when the two disagree by a few microseconds.
            let start_ns = attempt_spans
                .iter()
                .map(|attempt| attempt.start_ns)
                .fold(end_ns.saturating_sub(latency.as_nanos() as u64), u64::min);
            telemetry.export(
                ids,
                RequestFacts {
                    operation: match self.endpoint {
                        Endpoint::Embeddings => "embeddings",
                        _ => "chat",
                    },
                    route: match self.endpoint {
                        Endpoint::ChatCompletions => "/v1/chat/completions",
                        Endpoint::Messages => "/v1/messages",
                        Endpoint::Embeddings => "/v1/embeddings",
                    },
                    model: self.model.clone(),
                    status,
                    error_code,
                    request_id: self.context.request_id.clone(),
                    deployment: self.deployment.clone(),
                    attempts: self.attempts,
                    input_tokens: self.usage.input_tokens,
                    output_tokens: self.usage.output_tokens,
                    response: std::mem::take(&mut self.response),
                    temperature: self.temperature,
                    max_tokens: self.max_tokens,
                    cache_hit: self.cache == Some(true),
                    stream: self.stream,
                    start_ns,
                    end_ns,
                },
                attempt_spans,
            );
        }
        // The client's text: bounded before it is logged or kept.
        let model = bounded(std::mem::take(&mut self.model), 256);
        let latency_ms = millis(latency);
        let ttft_ms = self.first_chunk.map(millis);
        log(&LogLine {
            request_id: &self.context.request_id,
            endpoint: self.endpoint,
            model: &model,
            deployment: self.deployment.as_deref(),
            stream: self.stream,
            status,
            outcome,
            error_code,
            latency_ms,
            ttft_ms,
            attempts: self.attempts,
            usage: &self.usage,
        });
        let Some(recorder) = &self.recorder else {
            return;
        };
        recorder.record(RequestRecord {
            request_id: self.context.request_id.to_string(),
            started_at_ms: self.context.started_at_ms,
            endpoint: self.endpoint,
            model,
            deployment: self.deployment.as_deref().map(str::to_owned),
            served_model: self.served_model.as_deref().map(str::to_owned),
            attempts: self.attempts,
            attempt_details,
            stream: self.stream,
            status,
            outcome,
            error_code: error_code.map(str::to_owned),
            latency_ms,
            ttft_ms,
            usage: self.usage,
            key_id: self.caller.key_id.take(),
            team_id: self.caller.team_id.take(),
            end_user: self.caller.end_user.take(),
            cost_nanos: cost,
            cache_hit: self.cache == Some(true),
            metadata: self.metadata.take(),
            bodies: self.bodies.take().map(BodyCapture::into_bodies),
        });
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if !self.recorded {
            if self.cut.is_cancelled() {
                self.finish(503, Outcome::Shutdown, Some("gateway_shutting_down"));
            } else {
                // 499: nginx's "client closed request".
                self.finish(499, Outcome::ClientClosed, Some("client_closed"));
            }
        }
    }
}

/// `text` cut to at most `limit` bytes, on a character boundary.
fn bounded(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut cut = limit;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().min(u64::MAX as u128) as u64
}

/// What the request's log line says.
struct LogLine<'a> {
    request_id: &'a str,
    endpoint: Endpoint,
    model: &'a str,
    deployment: Option<&'a str>,
    stream: bool,
    status: u16,
    outcome: Outcome,
    error_code: Option<&'a str>,
    latency_ms: u64,
    ttft_ms: Option<u64>,
    attempts: u32,
    usage: &'a Usage,
}

fn log(line: &LogLine<'_>) {
    let deployment = line.deployment.unwrap_or("-");
    let error = line.error_code.unwrap_or("-");
    if line.outcome == Outcome::Success {
        tracing::info!(
            request_id = %line.request_id, endpoint = line.endpoint.as_str(), model = %line.model,
            deployment, stream = line.stream, status = line.status, latency_ms = line.latency_ms,
            attempts = line.attempts, ttft_ms = line.ttft_ms, input_tokens = line.usage.input_tokens, output_tokens = line.usage.output_tokens,
            "request served"
        );
    } else {
        tracing::warn!(
            request_id = %line.request_id, endpoint = line.endpoint.as_str(), model = %line.model,
            deployment, stream = line.stream, status = line.status, latency_ms = line.latency_ms,
            outcome = line.outcome.as_str(), error,
            "request failed"
        );
    }
}

/// Milliseconds since the Unix epoch, for records.
pub(crate) fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

pub(crate) fn now() -> Instant {
    Instant::now()
}

/// A request's bodies on their way to the request log.
pub(crate) struct BodyCapture {
    redactor: Arc<crate::redact::Redactor>,
    request: bytes::Bytes,
    response: Option<Vec<u8>>,
}

impl BodyCapture {
    pub fn new(redactor: Arc<crate::redact::Redactor>, request: bytes::Bytes) -> BodyCapture {
        BodyCapture {
            redactor,
            request,
            response: None,
        }
    }

    /// Adds to the answer (a whole body, or a stream's next frame), keeping
    /// no more than the log will.
    pub fn push_response(&mut self, bytes: &[u8]) {
        let response = self.response.get_or_insert_with(Vec::new);
        // One byte past the limit, so that the cut is noticed.
        let room = (self.redactor.max_bytes() + 1).saturating_sub(response.len());
        response.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn into_bodies(self) -> switchboard_core::Bodies {
        let response = self.response.map(|response| {
            // A stream is kept as the answer it spelled out: redaction
            // then sees text that the stream's events had cut apart.
            match assemble_stream(&response) {
                Some(text) => self.redactor.redact(text.as_bytes()),
                None => self.redactor.redact(&response),
            }
        });
        switchboard_core::Bodies {
            request: self.redactor.redact(&self.request),
            response,
        }
    }
}

/// The text a Server-Sent Events answer (OpenAI's or Anthropic's) spelled
/// out: its text, refusal, reasoning and tool-call deltas in order, tool
/// calls' names and arguments each on a line of their own. `None` when
/// `body` is not such a stream.
fn assemble_stream(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if !(text.starts_with("data:") || text.starts_with("event:")) {
        return None;
    }
    let mut out = String::new();
    let push = |out: &mut String, value: &serde_json::Value| {
        if let Some(piece) = value.as_str() {
            out.push_str(piece);
        }
    };
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
            continue;
        };
        // OpenAI: choices[].delta.
        for choice in event["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            for field in ["content", "refusal", "reasoning_content"] {
                push(&mut out, &delta[field]);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                if let Some(name) = call["function"]["name"].as_str() {
                    out.push('\n');
                    out.push_str(name);
                    out.push('\n');
                }
                push(&mut out, &call["function"]["arguments"]);
            }
        }
        // Anthropic: content_block_start / content_block_delta.
        if let Some(name) = event["content_block"]["name"].as_str() {
            out.push('\n');
            out.push_str(name);
            out.push('\n');
        }
        push(&mut out, &event["content_block"]["text"]);
        for field in ["text", "partial_json", "thinking"] {
            push(&mut out, &event["delta"][field]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request boxes its trace: word-aligned, it comes from
    /// mimalloc's plain entry point (a larger alignment goes through the
    /// aligned one, which over-allocates a block of this size), and its
    /// size bounds what making it writes.
    #[test]
    fn a_trace_is_word_aligned_and_under_a_kilobyte() {
        assert!(std::mem::align_of::<Trace>() <= std::mem::size_of::<usize>());
        assert!(std::mem::size_of::<Trace>() < 1024);
        assert!(std::mem::size_of::<Option<Hold>>() <= 32);
    }

    #[test]
    fn streams_are_kept_as_the_answer_they_spelled_out() {
        let openai = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"mail bob@exa\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"mple.com\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n",
            "data: [DONE]\n\n"
        );
        assert_eq!(
            assemble_stream(openai.as_bytes()).unwrap(),
            "mail bob@example.com\nf\n{\"a\":1}"
        );
        let anthropic = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"sk-abc\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"defghijklmnopqrstu\"}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        );
        assert_eq!(
            assemble_stream(anthropic.as_bytes()).unwrap(),
            "sk-abcdefghijklmnopqrstu"
        );
        assert!(assemble_stream(b"{\"id\":1}").is_none());
        // Redaction then finds what the events had split.
        let redactor = Arc::new(crate::redact::Redactor::new(
            &switchboard_config::LoggingConfig {
                requests: true,
                bodies: true,
                redact: vec!["emails".to_owned(), "api_keys".to_owned()],
                redact_patterns: Vec::new(),
                max_body_bytes: 4096,
            },
        ));
        let mut capture = BodyCapture::new(redactor, bytes::Bytes::from_static(b"{}"));
        capture.push_response(anthropic.as_bytes());
        assert_eq!(
            capture.into_bodies().response.as_deref(),
            Some("[REDACTED:api_key]")
        );
    }
}
