//! OpenTelemetry traces, exported by OTLP over HTTP in its JSON encoding:
//! one SERVER span per model request, with one CLIENT span per upstream
//! attempt as its children, named and attributed after the GenAI semantic
//! conventions (`gen_ai.*`).
//!
//! **Context.** A caller's W3C `traceparent` makes the request span its
//! child (and its sampled flag decides whether the request is traced);
//! without one, a new trace starts and `telemetry.sample_ratio` decides.
//! Every upstream request carries a `traceparent` naming its attempt span
//! (through `providers::trace_context`), and the response carries a
//! `traceresponse` naming the request span, so both sides can find it.
//!
//! **Export.** Spans are queued without waiting (a full queue drops and
//! counts them: traces are diagnostics, the request log is the record)
//! and a background task posts them to `<endpoint>/v1/traces` in batches
//! of up to 512, at least every half second, retrying a failed post twice.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use switchboard_config::TelemetryConfig;
use switchboard_core::ResponseInfo;
use switchboard_core::mix::splitmix64;
use switchboard_providers::trace_context::with_traceparent;
use switchboard_providers::{Deployment, UpstreamError};
use tokio::sync::mpsc;

use crate::trace::Progress;

/// Spans waiting for the exporter; beyond this, new ones are dropped.
const QUEUE: usize = 8192;
const BATCH: usize = 512;
const LINGER: Duration = Duration::from_millis(500);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A request's place in a trace.
#[derive(Debug, Clone)]
pub(crate) struct SpanIds {
    pub trace: [u8; 16],
    /// The request span's own id.
    pub span: [u8; 8],
    /// The caller's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    /// The caller's `tracestate`, passed on unchanged with its context.
    pub tracestate: Option<HeaderValue>,
}

impl SpanIds {
    /// `traceresponse` / `traceparent` naming `span` in this trace:
    /// `00-<32 hex>-<16 hex>-<flags>`, written on the stack.
    fn header(&self, span: [u8; 8]) -> HeaderValue {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&self.trace, &mut text[3..35]);
        write_hex(&span, &mut text[36..52]);
        if self.sampled {
            text[54] = b'1';
        }
        HeaderValue::from_bytes(&text).expect("hex is a valid header value")
    }

    /// The `traceresponse` header for the caller.
    pub fn response_header(&self) -> HeaderValue {
        self.header(self.span)
    }
}

/// One upstream attempt, as its span will show it.
#[derive(Debug)]
pub(crate) struct AttemptSpan {
    span: [u8; 8],
    deployment: Arc<str>,
    provider: &'static str,
    upstream_model: String,
    start_ns: u64,
    end_ns: u64,
    /// The failure's class, or `cancelled` for a hedge that lost.
    error: Option<&'static str>,
    status: Option<u16>,
}

/// A span ready to export.
struct Span {
    trace: [u8; 16],
    span: [u8; 8],
    parent: Option<[u8; 8]>,
    name: String,
    /// OTLP's SpanKind: 2 server, 3 client.
    kind: u8,
    start_ns: u64,
    end_ns: u64,
    attributes: Vec<(&'static str, Value)>,
    error: Option<String>,
}

/// What the request span says about the request, gathered by its `Trace`.
pub(crate) struct RequestFacts<'a> {
    pub operation: &'static str,
    pub route: &'static str,
    pub model: &'a str,
    pub status: u16,
    pub error_code: Option<&'a str>,
    pub request_id: &'a str,
    pub deployment: Option<&'a str>,
    pub attempts: u32,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The answer's id, model and finish reasons, when they were read.
    pub response: &'a ResponseInfo,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub cache_hit: bool,
    pub stream: bool,
    pub start_ns: u64,
    pub end_ns: u64,
}

pub(crate) struct Telemetry {
    queue: mpsc::Sender<Span>,
    sample_ratio: f64,
    seed: u64,
    counter: AtomicU64,
    pub dropped: AtomicU64,
}

impl Telemetry {
    /// Starts the exporter when an endpoint is configured. Must run within
    /// a Tokio runtime. The task ends, after a last flush, when the
    /// `Telemetry` is dropped.
    pub fn start(config: &TelemetryConfig) -> Option<Arc<Telemetry>> {
        let endpoint = config.otlp_endpoint.as_ref()?;
        let (queue, receiver) = mpsc::channel(QUEUE);
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, secret) in &config.otlp_headers {
            if let (Ok(name), Ok(mut value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(secret.expose()),
            ) {
                value.set_sensitive(true);
                headers.insert(name, value);
            }
        }
        let exporter = Exporter {
            url: format!("{endpoint}/v1/traces"),
            headers,
            service: config.service_name.clone(),
            http: reqwest::Client::builder()
                .timeout(POST_TIMEOUT)
                .build()
                .unwrap_or_default(),
        };
        tokio::spawn(exporter.run(receiver));
        let mut seed = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        Some(Arc::new(Telemetry {
            queue,
            sample_ratio: config.sample_ratio,
            seed: u64::from_le_bytes(seed),
            counter: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }))
    }

    fn next_u64(&self) -> u64 {
        loop {
            let value = splitmix64(self.seed ^ self.counter.fetch_add(1, Ordering::Relaxed));
            if value != 0 {
                return value;
            }
        }
    }

    fn new_span_id(&self) -> [u8; 8] {
        self.next_u64().to_be_bytes()
    }

    /// The request's ids: a child of the caller's span when it sent a
    /// valid `traceparent`, else the root of a new trace.
    pub fn begin(&self, headers: &HeaderMap) -> SpanIds {
        let span = self.new_span_id();
        if let Some((trace, parent, sampled)) = headers
            .get(&TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_traceparent)
        {
            return SpanIds {
                trace,
                span,
                parent: Some(parent),
                sampled,
                tracestate: headers
                    .get(&TRACESTATE)
                    .filter(|state| state.len() <= 512)
                    .cloned(),
            };
        }
        let high = self.next_u64();
        let low = self.next_u64();
        let mut trace = [0u8; 16];
        trace[..8].copy_from_slice(&high.to_be_bytes());
        trace[8..].copy_from_slice(&low.to_be_bytes());
        // The trace id's low bits decide, so every instance decides alike.
        let sampled =
            self.sample_ratio >= 1.0 || (low as f64 / u64::MAX as f64) < self.sample_ratio;
        SpanIds {
            trace,
            span,
            parent: None,
            sampled,
            tracestate: None,
        }
    }

    /// Queues a finished request's spans, without waiting.
    pub fn export(&self, ids: &SpanIds, facts: &RequestFacts<'_>, attempts: Vec<AttemptSpan>) {
        if !ids.sampled {
            return;
        }
        let mut spans = Vec::with_capacity(attempts.len() + 1);
        spans.push(request_span(ids, facts));
        let served_by = attempts.iter().rposition(|attempt| attempt.error.is_none());
        for (index, attempt) in attempts.into_iter().enumerate() {
            let served = Some(index) == served_by;
            spans.push(attempt_span(ids, facts, attempt, served));
        }
        for span in spans {
            if self.queue.try_send(span).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Runs one upstream attempt under its own span: its requests carry a
    /// `traceparent` naming it, and its outcome is noted in `progress`.
    pub async fn attempt<T>(
        self: &Arc<Self>,
        ids: &SpanIds,
        progress: &Mutex<Progress>,
        deployment: &Deployment,
        future: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        if !ids.sampled {
            // Not traced here; the caller's context still travels on.
            let header = ids.parent.map(|parent| ids.header(parent));
            return with_traceparent(header, ids.tracestate.clone(), future).await;
        }
        let span = self.new_span_id();
        let mut guard = AttemptGuard {
            progress,
            record: Some(AttemptSpan {
                span,
                deployment: deployment.name().clone(),
                provider: provider_name(deployment),
                upstream_model: deployment.upstream_model().to_owned(),
                start_ns: unix_nanos(),
                end_ns: 0,
                error: Some("cancelled"),
                status: None,
            }),
        };
        let result = with_traceparent(Some(ids.header(span)), ids.tracestate.clone(), future).await;
        if let Some(record) = &mut guard.record {
            match &result {
                Ok(_) => record.error = None,
                Err(error) => {
                    record.error = Some(crate::metrics::error_class(error));
                    if let UpstreamError::Status { status, .. } = error {
                        record.status = Some(*status);
                    }
                }
            }
        }
        result
    }
}

/// Notes an attempt's span when the attempt ends, or is dropped (a hedge
/// that lost the race).
struct AttemptGuard<'a> {
    progress: &'a Mutex<Progress>,
    record: Option<AttemptSpan>,
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.end_ns = unix_nanos();
            self.progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .attempt_spans
                .push(record);
        }
    }
}

fn request_span(ids: &SpanIds, facts: &RequestFacts<'_>) -> Span {
    let mut attributes = vec![
        ("gen_ai.operation.name", string(facts.operation)),
        ("gen_ai.request.model", string(facts.model)),
        ("http.request.method", string("POST")),
        ("http.route", string(facts.route)),
        ("http.response.status_code", int(u64::from(facts.status))),
        ("switchboard.request_id", string(facts.request_id)),
        ("switchboard.attempts", int(u64::from(facts.attempts))),
        ("switchboard.stream", json!({"boolValue": facts.stream})),
        (
            "switchboard.cache_hit",
            json!({"boolValue": facts.cache_hit}),
        ),
    ];
    if let Some(deployment) = facts.deployment {
        attributes.push(("switchboard.deployment", string(deployment)));
    }
    push_answer(&mut attributes, facts);
    if let Some(temperature) = facts.temperature {
        attributes.push((
            "gen_ai.request.temperature",
            json!({"doubleValue": temperature}),
        ));
    }
    if let Some(max_tokens) = facts.max_tokens {
        attributes.push(("gen_ai.request.max_tokens", int(max_tokens)));
    }
    let error = facts.error_code.map(|code| {
        attributes.push(("error.type", string(code)));
        code.to_owned()
    });
    Span {
        trace: ids.trace,
        span: ids.span,
        parent: ids.parent,
        name: format!("{} {}", facts.operation, facts.model),
        kind: 2,
        start_ns: facts.start_ns,
        end_ns: facts.end_ns,
        attributes,
        error,
    }
}

fn attempt_span(
    ids: &SpanIds,
    facts: &RequestFacts<'_>,
    attempt: AttemptSpan,
    served: bool,
) -> Span {
    let mut attributes = vec![
        ("gen_ai.operation.name", string(facts.operation)),
        ("gen_ai.provider.name", string(attempt.provider)),
        ("gen_ai.request.model", string(&attempt.upstream_model)),
        ("switchboard.deployment", string(&attempt.deployment)),
    ];
    if let Some(status) = attempt.status {
        attributes.push(("http.response.status_code", int(u64::from(status))));
    }
    // The attempt that served the request carries its usage, and (for a
    // stream) lasts until the request ended.
    let mut end_ns = attempt.end_ns;
    if served {
        push_answer(&mut attributes, facts);
        if facts.error_code.is_none() {
            end_ns = end_ns.max(facts.end_ns);
        }
    }
    let error = attempt.error.map(|class| {
        attributes.push(("error.type", string(class)));
        class.to_owned()
    });
    Span {
        trace: ids.trace,
        span: attempt.span,
        parent: Some(ids.span),
        name: format!("{} {}", facts.operation, attempt.upstream_model),
        kind: 3,
        start_ns: attempt.start_ns,
        end_ns,
        attributes,
        error,
    }
}

/// What the answer said about itself: its usage, id, model and finish
/// reasons (on the request span and on the attempt that served it).
fn push_answer(attributes: &mut Vec<(&'static str, Value)>, facts: &RequestFacts<'_>) {
    if let Some(tokens) = facts.input_tokens {
        attributes.push(("gen_ai.usage.input_tokens", int(tokens)));
    }
    if let Some(tokens) = facts.output_tokens {
        attributes.push(("gen_ai.usage.output_tokens", int(tokens)));
    }
    let response = facts.response;
    if let Some(id) = &response.id {
        attributes.push(("gen_ai.response.id", string(id)));
    }
    if let Some(model) = &response.model {
        attributes.push(("gen_ai.response.model", string(model)));
    }
    if !response.finish_reasons.is_empty() {
        let values: Vec<Value> = response
            .finish_reasons
            .iter()
            .map(|reason| string(reason))
            .collect();
        attributes.push((
            "gen_ai.response.finish_reasons",
            json!({"arrayValue": {"values": values}}),
        ));
    }
}

fn string(value: &str) -> Value {
    json!({ "stringValue": value })
}

/// OTLP/JSON writes 64-bit integers as strings.
fn int(value: u64) -> Value {
    json!({ "intValue": value.to_string() })
}

/// `gen_ai.provider.name` of a deployment's API.
fn provider_name(deployment: &Deployment) -> &'static str {
    use switchboard_config::ProviderKind;
    match deployment.kind() {
        ProviderKind::OpenAi => "openai",
        ProviderKind::Azure => "azure.ai.openai",
        ProviderKind::OpenAiCompatible { vendor } => match vendor {
            "mistral" => "mistral_ai",
            "deepseek" => "deepseek",
            "groq" => "groq",
            _ => "openai",
        },
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
        ProviderKind::Bedrock => "aws.bedrock",
        ProviderKind::Simulated => "switchboard.simulated",
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`: the trace id, parent id and sampled
/// flag, or `None` for anything malformed, version `ff`, or all-zero ids.
fn parse_traceparent(text: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = text.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace: [u8; 16] = unhex(trace)?;
    let parent: [u8; 8] = unhex(parent)?;
    let [flags] = unhex(flags)?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags & 1 == 1))
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// Exactly `2 * N` lowercase hex digits, as `N` bytes.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    fn digit(byte: u8) -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(bytes)
}

/// Writes `bytes` as lowercase hex into `out`, which holds two digits per
/// byte.
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut digits = vec![0u8; 2 * bytes.len()];
    write_hex(bytes, &mut digits);
    String::from_utf8(digits).expect("hex digits are ASCII")
}

pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            elapsed.as_nanos().min(u128::from(u64::MAX)) as u64
        })
}

struct Exporter {
    url: String,
    headers: reqwest::header::HeaderMap,
    service: String,
    http: reqwest::Client,
}

impl Exporter {
    async fn run(self, mut receiver: mpsc::Receiver<Span>) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let Some(first) = receiver.recv().await else {
                return;
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + LINGER;
            let mut closed = false;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.post(&batch).await;
            batch.clear();
            if closed {
                return;
            }
        }
    }

    async fn post(&self, spans: &[Span]) {
        let body = self.encode(spans);
        for attempt in 0..3 {
            let sent = self
                .http
                .post(&self.url)
                .headers(self.headers.clone())
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => return,
                Ok(response) => {
                    tracing::warn!(
                        status = response.status().as_u16(),
                        attempt,
                        spans = spans.len(),
                        "the OTLP collector refused spans"
                    );
                    // A 4xx will not get better by asking again.
                    if response.status().is_client_error() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error.without_url(), attempt, spans = spans.len(), "the OTLP collector cannot be reached");
                }
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
    }

    /// The OTLP/JSON `ExportTraceServiceRequest` for `spans`.
    fn encode(&self, spans: &[Span]) -> String {
        let spans: Vec<Value> = spans
            .iter()
            .map(|span| {
                let mut object = json!({
                    "traceId": hex(&span.trace),
                    "spanId": hex(&span.span),
                    "name": span.name,
                    "kind": span.kind,
                    "startTimeUnixNano": span.start_ns.to_string(),
                    "endTimeUnixNano": span.end_ns.max(span.start_ns).to_string(),
                    "attributes": span.attributes.iter().map(|(key, value)| json!({"key": key, "value": value})).collect::<Vec<_>>(),
                    "status": match &span.error {
                        Some(message) => json!({"code": 2, "message": message}),
                        None => json!({"code": 1}),
                    },
                });
                if let Some(parent) = span.parent {
                    object["parentSpanId"] = Value::String(hex(&parent));
                }
                object
            })
            .collect();
        json!({
            "resourceSpans": [{
                "resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": self.service}},
                ]},
                "scopeSpans": [{
                    "scope": {"name": "switchboard", "version": env!("CARGO_PKG_VERSION")},
                    "spans": spans,
                }],
            }],
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let (trace, parent, sampled) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&parent), "00f067aa0ba902b7");
        assert!(sampled);
        let (_, _, sampled) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!sampled);
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn trace_context_headers_name_the_span() {
        let mut ids = SpanIds {
            trace: bytes("4bf92f3577b34da6a3ce929d0e0e4736"),
            span: bytes("00f067aa0ba902b7"),
            parent: None,
            sampled: true,
            tracestate: None,
        };
        assert_eq!(
            ids.response_header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        ids.sampled = false;
        assert_eq!(
            ids.header(bytes("0a1b2c3d4e5f6789")),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0a1b2c3d4e5f6789-00"
        );
    }

    /// A model name with every kind of character JSON must escape.
    const AWKWARD: &str = "say \"hi\" \\ back\nslash\t\u{1} café ✓ 🚀";

    fn bytes<const N: usize>(text: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (index, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn a_batch_is_encoded_as_otlp_json() {
        let traced = SpanIds {
            trace: bytes("4bf92f3577b34da6a3ce929d0e0e4736"),
            span: bytes("00f067aa0ba902b7"),
            parent: Some(bytes("0102030405060708")),
            sampled: true,
            tracestate: None,
        };
        let response = ResponseInfo {
            id: Some("chatcmpl-\"1\"".to_owned()),
            model: Some("gpt-4o-2024-08-06".to_owned()),
            finish_reasons: vec!["stop".into(), "length\n".into()],
        };
        let served = RequestFacts {
            operation: "chat",
            route: "/v1/chat/completions",
            model: AWKWARD,
            status: 200,
            error_code: None,
            request_id: "req_1",
            deployment: Some("primary"),
            attempts: 2,
            input_tokens: Some(1 << 60),
            output_tokens: Some(7),
            response: &response,
            temperature: Some(0.7),
            max_tokens: Some(256),
            cache_hit: false,
            stream: true,
            start_ns: 1_000,
            end_ns: 9_000,
        };
        let attempts = vec![
            AttemptSpan {
                span: bytes("aaaaaaaaaaaaaaa1"),
                deployment: Arc::from("backup"),
                provider: "anthropic",
                upstream_model: "claude".to_owned(),
                start_ns: 1_100,
                end_ns: 2_000,
                error: Some("server_error"),
                status: Some(503),
            },
            AttemptSpan {
                span: bytes("aaaaaaaaaaaaaaa2"),
                deployment: Arc::from("primary"),
                provider: "openai",
                upstream_model: AWKWARD.to_owned(),
                start_ns: 2_100,
                end_ns: 3_000,
                error: None,
                status: None,
            },
        ];
        let refused_ids = SpanIds {
            trace: bytes("000000000000000000000000000000ff"),
            span: bytes("00000000000000ff"),
            parent: None,
            sampled: true,
            tracestate: None,
        };
        let nothing = ResponseInfo::default();
        let refused = RequestFacts {
            operation: "embeddings",
            route: "/v1/embeddings",
            model: "m",
            status: 429,
            error_code: Some("rate_limited"),
            request_id: "req_2",
            deployment: None,
            attempts: 0,
            input_tokens: None,
            output_tokens: None,
            response: &nothing,
            temperature: None,
            max_tokens: None,
            cache_hit: true,
            stream: false,
            start_ns: 5_000,
            end_ns: 4_000,
        };
        let body = encode_for_test(
            "svc \"quoted\"",
            vec![
                (&traced, &served, attempts),
                (&refused_ids, &refused, Vec::new()),
            ],
        );
        let parsed: Value = serde_json::from_slice(&body).unwrap();

        let string = |value: &str| json!({"stringValue": value});
        let int = |value: &str| json!({"intValue": value});
        let expected = json!({
            "resourceSpans": [{
                "resource": {"attributes": [
                    {"key": "service.name", "value": string("svc \"quoted\"")},
                ]},
                "scopeSpans": [{
                    "scope": {"name": "switchboard", "version": env!("CARGO_PKG_VERSION")},
                    "spans": [
                        {
                            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                            "spanId": "00f067aa0ba902b7",
                            "parentSpanId": "0102030405060708",
                            "name": format!("chat {AWKWARD}"),
                            "kind": 2,
                            "startTimeUnixNano": "1000",
                            "endTimeUnixNano": "9000",
                            "attributes": [
                                {"key": "gen_ai.operation.name", "value": string("chat")},
                                {"key": "gen_ai.request.model", "value": string(AWKWARD)},
                                {"key": "http.request.method", "value": string("POST")},
                                {"key": "http.route", "value": string("/v1/chat/completions")},
                                {"key": "http.response.status_code", "value": int("200")},
                                {"key": "switchboard.request_id", "value": string("req_1")},
                                {"key": "switchboard.attempts", "value": int("2")},
                                {"key": "switchboard.stream", "value": {"boolValue": true}},
                                {"key": "switchboard.cache_hit", "value": {"boolValue": false}},
                                {"key": "switchboard.deployment", "value": string("primary")},
                                {"key": "gen_ai.usage.input_tokens", "value": int("1152921504606846976")},
                                {"key": "gen_ai.usage.output_tokens", "value": int("7")},
                                {"key": "gen_ai.response.id", "value": string("chatcmpl-\"1\"")},
                                {"key": "gen_ai.response.model", "value": string("gpt-4o-2024-08-06")},
                                {"key": "gen_ai.response.finish_reasons", "value": {"arrayValue": {"values": [
                                    string("stop"), string("length\n"),
                                ]}}},
                                {"key": "gen_ai.request.temperature", "value": {"doubleValue": 0.7}},
                                {"key": "gen_ai.request.max_tokens", "value": int("256")},
                            ],
                            "status": {"code": 1},
                        },
                        {
                            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                            "spanId": "aaaaaaaaaaaaaaa1",
                            "parentSpanId": "00f067aa0ba902b7",
                            "name": "chat claude",
                            "kind": 3,
                            "startTimeUnixNano": "1100",
                            "endTimeUnixNano": "2000",
                            "attributes": [
                                {"key": "gen_ai.operation.name", "value": string("chat")},
                                {"key": "gen_ai.provider.name", "value": string("anthropic")},
                                {"key": "gen_ai.request.model", "value": string("claude")},
                                {"key": "switchboard.deployment", "value": string("backup")},
                                {"key": "http.response.status_code", "value": int("503")},
                                {"key": "error.type", "value": string("server_error")},
                            ],
                            "status": {"code": 2, "message": "server_error"},
                        },
                        {
                            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                            "spanId": "aaaaaaaaaaaaaaa2",
                            "parentSpanId": "00f067aa0ba902b7",
                            "name": format!("chat {AWKWARD}"),
                            "kind": 3,
                            "startTimeUnixNano": "2100",
                            "endTimeUnixNano": "9000",
                            "attributes": [
                                {"key": "gen_ai.operation.name", "value": string("chat")},
                                {"key": "gen_ai.provider.name", "value": string("openai")},
                                {"key": "gen_ai.request.model", "value": string(AWKWARD)},
                                {"key": "switchboard.deployment", "value": string("primary")},
                                {"key": "gen_ai.usage.input_tokens", "value": int("1152921504606846976")},
                                {"key": "gen_ai.usage.output_tokens", "value": int("7")},
                                {"key": "gen_ai.response.id", "value": string("chatcmpl-\"1\"")},
                                {"key": "gen_ai.response.model", "value": string("gpt-4o-2024-08-06")},
                                {"key": "gen_ai.response.finish_reasons", "value": {"arrayValue": {"values": [
                                    string("stop"), string("length\n"),
                                ]}}},
                            ],
                            "status": {"code": 1},
                        },
                        {
                            "traceId": "000000000000000000000000000000ff",
                            "spanId": "00000000000000ff",
                            "name": "embeddings m",
                            "kind": 2,
                            "startTimeUnixNano": "5000",
                            "endTimeUnixNano": "5000",
                            "attributes": [
                                {"key": "gen_ai.operation.name", "value": string("embeddings")},
                                {"key": "gen_ai.request.model", "value": string("m")},
                                {"key": "http.request.method", "value": string("POST")},
                                {"key": "http.route", "value": string("/v1/embeddings")},
                                {"key": "http.response.status_code", "value": int("429")},
                                {"key": "switchboard.request_id", "value": string("req_2")},
                                {"key": "switchboard.attempts", "value": int("0")},
                                {"key": "switchboard.stream", "value": {"boolValue": false}},
                                {"key": "switchboard.cache_hit", "value": {"boolValue": true}},
                                {"key": "error.type", "value": string("rate_limited")},
                            ],
                            "status": {"code": 2, "message": "rate_limited"},
                        },
                    ],
                }],
            }],
        });
        assert_eq!(parsed, expected);
        // The escapes are serde_json's own: the text reads back unchanged.
        assert_eq!(
            parsed["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"][1]["value"]["stringValue"],
            AWKWARD
        );
    }

    fn encode_for_test(
        service: &str,
        requests: Vec<(&SpanIds, &RequestFacts<'_>, Vec<AttemptSpan>)>,
    ) -> Vec<u8> {
        let mut spans = Vec::new();
        for (ids, facts, attempts) in requests {
            spans.push(request_span(ids, facts));
            let served_by = attempts.iter().rposition(|attempt| attempt.error.is_none());
            for (index, attempt) in attempts.into_iter().enumerate() {
                spans.push(attempt_span(ids, facts, attempt, Some(index) == served_by));
            }
        }
        switchboard_testkit::install_crypto_provider();
        let exporter = Exporter {
            url: String::new(),
            headers: Default::default(),
            service: service.to_owned(),
            http: reqwest::Client::new(),
        };
        exporter.encode(&spans).into_bytes()
    }
}
