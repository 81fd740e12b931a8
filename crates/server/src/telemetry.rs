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
//! **Export.** The request path encodes nothing: a finished request's
//! facts and attempts are moved, as one `TracedRequest`, into a queue
//! without waiting (a full queue drops and counts their spans: traces are
//! diagnostics, the request log is the record). A background task turns
//! them into spans, writes a batch of up to 512 (a little more when a
//! request's spans would straddle the limit: they are never split) as one
//! OTLP/JSON body, straight from the facts through `serde`, at least every
//! half second, and posts it to `<endpoint>/v1/traces`, retrying a failed
//! post twice.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use futures_util::FutureExt;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};
use switchboard_config::TelemetryConfig;
use switchboard_core::ResponseInfo;
use switchboard_core::mix::splitmix64;
use switchboard_providers::trace_context::with_traceparent;
use switchboard_providers::{Deployment, UpstreamClients, UpstreamError};
use tokio::sync::mpsc;

use crate::trace::Progress;

/// Traced requests waiting for the exporter; beyond this, new ones are
/// dropped.
const QUEUE: usize = 8192;
/// Spans per post.
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
        switchboard_core::hex::write_lower(&self.trace, &mut text[3..35]);
        switchboard_core::hex::write_lower(&span, &mut text[36..52]);
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
    pub(crate) start_ns: u64,
    end_ns: u64,
    /// The failure's class, or `cancelled` for a hedge that lost.
    error: Option<&'static str>,
    status: Option<u16>,
}

/// What the request span says about the request, gathered by its `Trace`
/// and handed over whole: nothing here is encoded on the request path.
pub(crate) struct RequestFacts {
    pub operation: &'static str,
    pub route: &'static str,
    pub model: String,
    pub status: u16,
    pub error_code: Option<&'static str>,
    pub request_id: Arc<str>,
    pub deployment: Option<Arc<str>>,
    pub attempts: u32,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The answer's id, model and finish reasons, when they were read.
    pub response: ResponseInfo,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub cache_hit: bool,
    pub stream: bool,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// A finished, sampled request on its way to the exporter: its span ids,
/// its facts and its attempts, from which the exporter writes its spans.
struct TracedRequest {
    trace: [u8; 16],
    span: [u8; 8],
    parent: Option<[u8; 8]>,
    facts: RequestFacts,
    attempts: Vec<AttemptSpan>,
}

impl TracedRequest {
    /// The request span and one span per attempt.
    fn span_count(&self) -> usize {
        1 + self.attempts.len()
    }
}

pub(crate) struct Telemetry {
    queue: mpsc::Sender<TracedRequest>,
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
        let url = match http::Uri::try_from(format!("{endpoint}/v1/traces")) {
            Ok(url) => url,
            Err(_) => {
                tracing::warn!("the OTLP endpoint is not a usable URL; no spans will be exported");
                return None;
            }
        };
        let mut headers = HeaderMap::new();
        for (name, secret) in &config.otlp_headers {
            if let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(secret.expose()),
            ) {
                value.set_sensitive(true);
                headers.insert(name, value);
            }
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let exporter = Exporter {
            url,
            headers,
            service: config.service_name.clone(),
            http: UpstreamClients::new(),
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

    /// Queues a finished request's spans, without waiting. The caller
    /// builds `facts` only for a sampled request.
    pub fn export(&self, ids: &SpanIds, facts: RequestFacts, attempts: Vec<AttemptSpan>) {
        if !ids.sampled {
            return;
        }
        let traced = TracedRequest {
            trace: ids.trace,
            span: ids.span,
            parent: ids.parent,
            facts,
            attempts,
        };
        let spans = traced.span_count() as u64;
        if self.queue.try_send(traced).is_err() {
            self.dropped.fetch_add(spans, Ordering::Relaxed);
        }
    }

    /// Runs one upstream attempt under its own span: its requests carry a
    /// `traceparent` naming it, and its outcome is noted in `progress`.
    ///
    /// A plain function returning a combinator, not an `async fn`: an
    /// `async fn` would hold the attempt's future twice (as its argument and
    /// as the future it awaits), and that future is the largest part of a
    /// request's.
    pub fn attempt<'p, T, F>(
        self: &Arc<Self>,
        ids: &SpanIds,
        progress: &'p Mutex<Progress>,
        deployment: &Deployment,
        future: F,
    ) -> impl Future<Output = Result<T, UpstreamError>> + use<'p, T, F>
    where
        F: Future<Output = Result<T, UpstreamError>>,
    {
        let (header, mut guard) = if ids.sampled {
            let span = self.new_span_id();
            let guard = AttemptGuard {
                progress,
                record: Some(AttemptSpan {
                    span,
                    deployment: deployment.name().clone(),
                    provider: provider_name(deployment),
                    upstream_model: deployment.upstream_model().to_owned(),
                    start_ns: unix_nanos(),
                    end_ns: 0,
                    error: Some(AttemptGuard::CANCELLED),
                    status: None,
                }),
            };
            (Some(ids.header(span)), Some(guard))
        } else {
            // Not traced here; the caller's context still travels on.
            (ids.parent.map(|parent| ids.header(parent)), None)
        };
        // The guard moves into the closure: dropped unfinished (a lost
        // hedge, a cut attempt), it still notes the span.
        with_traceparent(header, ids.tracestate.clone(), future).map(move |result| {
            if let Some(record) = guard.as_mut().and_then(|guard| guard.record.as_mut()) {
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
        })
    }
}

/// Notes an attempt's span when the attempt ends, or is dropped (a hedge
/// that lost the race, or an attempt the request's time budget cut).
struct AttemptGuard<'a> {
    progress: &'a Mutex<Progress>,
    record: Option<AttemptSpan>,
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.end_ns = unix_nanos();
            let mut progress = self
                .progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Dropped unfinished once the request's time budget is spent:
            // the budget cut it, as the metrics and the record say.
            if record.error == Some(AttemptGuard::CANCELLED)
                && progress
                    .deadline
                    .is_some_and(|deadline| std::time::Instant::now() >= deadline)
            {
                record.error = Some("timeout");
            }
            progress.attempt_spans.push(record);
        }
    }
}

impl AttemptGuard<'_> {
    /// An attempt dropped unfinished: a hedge that lost its race.
    const CANCELLED: &'static str = "cancelled";
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

pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            elapsed.as_nanos().min(u128::from(u64::MAX)) as u64
        })
}

struct Exporter {
    url: http::Uri,
    /// The configured headers and the content type, sent with every post.
    headers: HeaderMap,
    service: String,
    /// A pool of its own, apart from the deployments'.
    http: UpstreamClients,
}

impl Exporter {
    async fn run(self, mut receiver: mpsc::Receiver<TracedRequest>) {
        let mut batch = Vec::new();
        loop {
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut spans = first.span_count();
            batch.push(first);
            let mut closed = false;
            // One timer for the whole linger, however many requests arrive.
            let filling = async {
                while spans < BATCH {
                    let Some(traced) = receiver.recv().await else {
                        closed = true;
                        return;
                    };
                    spans += traced.span_count();
                    batch.push(traced);
                }
            };
            let _ = tokio::time::timeout(LINGER, filling).await;
            self.post(encode(&self.service, &batch), spans).await;
            batch.clear();
            if closed {
                return;
            }
        }
    }

    async fn post(&self, body: Bytes, spans: usize) {
        for attempt in 0..3 {
            // `Bytes` is shared, not copied, by every attempt.
            let mut request = http::Request::new(body.clone());
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = self.url.clone();
            *request.headers_mut() = self.headers.clone();
            let sent = self.http.exchange(request, POST_TIMEOUT).await;
            match sent {
                Ok(response) if response.status().is_success() => return,
                Ok(response) => {
                    tracing::warn!(
                        status = response.status().as_u16(),
                        attempt,
                        spans,
                        "the OTLP collector refused spans"
                    );
                    // A 4xx will not get better by asking again.
                    if response.status().is_client_error() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, spans, "the OTLP collector cannot be reached");
                }
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
    }
}

/// The OTLP/JSON `ExportTraceServiceRequest` for `batch`, written in one
/// pass into one buffer. Every string goes through serde_json's escaping.
fn encode(service: &str, batch: &[TracedRequest]) -> Bytes {
    let request = ExportRequest {
        resource_spans: [ResourceSpans {
            resource: Resource {
                attributes: [KeyValue {
                    key: "service.name",
                    value: AttributeValue::Str(service),
                }],
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: "switchboard",
                    version: env!("CARGO_PKG_VERSION"),
                },
                spans: SpanList(batch),
            }],
        }],
    };
    let spans: usize = batch.iter().map(TracedRequest::span_count).sum();
    let mut body = Vec::with_capacity(1024 * spans);
    serde_json::to_writer(&mut body, &request).expect("spans serialize to memory");
    Bytes::from(body)
}

// The OTLP/JSON shapes, borrowing from the batch. Field names follow the
// protobuf JSON mapping (lowerCamelCase); 64-bit integers are strings and
// ids are hex, as OTLP/JSON asks.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportRequest<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: Resource<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: [KeyValue<'a>; 1],
}

#[derive(Serialize)]
struct ScopeSpans<'a> {
    scope: Scope,
    spans: SpanList<'a>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

/// Every span of a batch: each request's span, then its attempts'.
struct SpanList<'a>(&'a [TracedRequest]);

impl Serialize for SpanList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let count = self.0.iter().map(TracedRequest::span_count).sum();
        let mut spans = serializer.serialize_seq(Some(count))?;
        for traced in self.0 {
            spans.serialize_element(&request_span(traced))?;
            let served_by = traced
                .attempts
                .iter()
                .rposition(|attempt| attempt.error.is_none());
            for (index, attempt) in traced.attempts.iter().enumerate() {
                let served = Some(index) == served_by;
                spans.serialize_element(&attempt_span(traced, attempt, served))?;
            }
        }
        spans.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpanJson<'a> {
    trace_id: Hex<'a>,
    span_id: Hex<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<Hex<'a>>,
    name: SpanName<'a>,
    /// OTLP's SpanKind: 2 server, 3 client.
    kind: u8,
    start_time_unix_nano: Decimal,
    end_time_unix_nano: Decimal,
    attributes: Vec<KeyValue<'a>>,
    status: Status,
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'static str,
    value: AttributeValue<'a>,
}

/// An attribute's value, as OTLP/JSON's `AnyValue`: an object with one
/// field naming the type.
#[derive(Serialize)]
enum AttributeValue<'a> {
    #[serde(rename = "stringValue")]
    Str(&'a str),
    /// OTLP/JSON writes 64-bit integers as decimal strings.
    #[serde(rename = "intValue")]
    Int(Decimal),
    #[serde(rename = "doubleValue")]
    Double(f64),
    #[serde(rename = "boolValue")]
    Bool(bool),
    #[serde(rename = "arrayValue")]
    Strings(StringArray<'a>),
}

fn int(value: impl Into<u64>) -> AttributeValue<'static> {
    AttributeValue::Int(Decimal(value.into()))
}

/// `{"values": [{"stringValue": …}, …]}`.
struct StringArray<'a>(&'a [Cow<'static, str>]);

impl Serialize for StringArray<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Values<'a>(&'a [Cow<'static, str>]);
        impl Serialize for Values<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|text| AttributeValue::Str(text)))
            }
        }
        let mut array = serializer.serialize_struct("ArrayValue", 1)?;
        array.serialize_field("values", &Values(self.0))?;
        array.end()
    }
}

#[derive(Serialize)]
struct Status {
    /// 1 ok, 2 error.
    code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
}

impl Status {
    fn of(error: Option<&'static str>) -> Status {
        Status {
            code: if error.is_some() { 2 } else { 1 },
            message: error,
        }
    }
}

/// Bytes as a lowercase hex string.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Trace ids are the longest: 16 bytes.
        let mut digits = [0u8; 32];
        let digits = &mut digits[..2 * self.0.len()];
        switchboard_core::hex::write_lower(self.0, digits);
        formatter.write_str(std::str::from_utf8(digits).expect("hex digits are ASCII"))
    }
}

impl Serialize for Hex<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A `u64` as a decimal string.
struct Decimal(u64);

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// `<operation> <model>`, escaped as it is written.
struct SpanName<'a> {
    operation: &'static str,
    model: &'a str,
}

impl Serialize for SpanName<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{} {}", self.operation, self.model))
    }
}

fn request_span(traced: &TracedRequest) -> SpanJson<'_> {
    let facts = &traced.facts;
    let mut attributes = Vec::with_capacity(17);
    let mut push = |key, value| attributes.push(KeyValue { key, value });
    push(
        "gen_ai.operation.name",
        AttributeValue::Str(facts.operation),
    );
    push("gen_ai.request.model", AttributeValue::Str(&facts.model));
    push("http.request.method", AttributeValue::Str("POST"));
    push("http.route", AttributeValue::Str(facts.route));
    push("http.response.status_code", int(facts.status));
    push(
        "switchboard.request_id",
        AttributeValue::Str(&facts.request_id),
    );
    push("switchboard.attempts", int(facts.attempts));
    push("switchboard.stream", AttributeValue::Bool(facts.stream));
    push(
        "switchboard.cache_hit",
        AttributeValue::Bool(facts.cache_hit),
    );
    if let Some(deployment) = &facts.deployment {
        push("switchboard.deployment", AttributeValue::Str(deployment));
    }
    push_answer(&mut push, facts);
    if let Some(temperature) = facts.temperature {
        push(
            "gen_ai.request.temperature",
            AttributeValue::Double(temperature),
        );
    }
    if let Some(max_tokens) = facts.max_tokens {
        push("gen_ai.request.max_tokens", int(max_tokens));
    }
    if let Some(code) = facts.error_code {
        push("error.type", AttributeValue::Str(code));
    }
    SpanJson {
        trace_id: Hex(&traced.trace),
        span_id: Hex(&traced.span),
        parent_span_id: traced.parent.as_ref().map(|parent| Hex(parent)),
        name: SpanName {
            operation: facts.operation,
            model: &facts.model,
        },
        kind: 2,
        start_time_unix_nano: Decimal(facts.start_ns),
        end_time_unix_nano: Decimal(facts.end_ns.max(facts.start_ns)),
        attributes,
        status: Status::of(facts.error_code),
    }
}

fn attempt_span<'a>(
    traced: &'a TracedRequest,
    attempt: &'a AttemptSpan,
    served: bool,
) -> SpanJson<'a> {
    let facts = &traced.facts;
    let mut attributes = Vec::with_capacity(11);
    let mut push = |key, value| attributes.push(KeyValue { key, value });
    push(
        "gen_ai.operation.name",
        AttributeValue::Str(facts.operation),
    );
    push(
        "gen_ai.provider.name",
        AttributeValue::Str(attempt.provider),
    );
    push(
        "gen_ai.request.model",
        AttributeValue::Str(&attempt.upstream_model),
    );
    push(
        "switchboard.deployment",
        AttributeValue::Str(&attempt.deployment),
    );
    if let Some(status) = attempt.status {
        push("http.response.status_code", int(status));
    }
    // The attempt that served the request carries its usage, and (for a
    // stream) lasts until the request ended.
    let mut end_ns = attempt.end_ns;
    if served {
        push_answer(&mut push, facts);
        if facts.error_code.is_none() {
            end_ns = end_ns.max(facts.end_ns);
        }
    }
    if let Some(class) = attempt.error {
        push("error.type", AttributeValue::Str(class));
    }
    SpanJson {
        trace_id: Hex(&traced.trace),
        span_id: Hex(&attempt.span),
        parent_span_id: Some(Hex(&traced.span)),
        name: SpanName {
            operation: facts.operation,
            model: &attempt.upstream_model,
        },
        kind: 3,
        start_time_unix_nano: Decimal(attempt.start_ns),
        end_time_unix_nano: Decimal(end_ns.max(attempt.start_ns)),
        attributes,
        status: Status::of(attempt.error),
    }
}

/// What the answer said about itself: its usage, id, model and finish
/// reasons (on the request span and on the attempt that served it).
fn push_answer<'a>(
    push: &mut impl FnMut(&'static str, AttributeValue<'a>),
    facts: &'a RequestFacts,
) {
    if let Some(tokens) = facts.input_tokens {
        push("gen_ai.usage.input_tokens", int(tokens));
    }
    if let Some(tokens) = facts.output_tokens {
        push("gen_ai.usage.output_tokens", int(tokens));
    }
    let response = &facts.response;
    if let Some(id) = &response.id {
        push("gen_ai.response.id", AttributeValue::Str(id));
    }
    if let Some(model) = &response.model {
        push("gen_ai.response.model", AttributeValue::Str(model));
    }
    if !response.finish_reasons.is_empty() {
        push(
            "gen_ai.response.finish_reasons",
            AttributeValue::Strings(StringArray(&response.finish_reasons)),
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn an_attempt_holds_its_upstream_call_once() {
        // The upstream call's future is the largest part of a request's.
        type Work = std::future::Ready<Result<[u8; 4096], UpstreamError>>;
        fn size<'a, F, Fut>(_: F) -> usize
        where
            F: FnOnce(
                &'a Arc<Telemetry>,
                &'a SpanIds,
                &'a Mutex<Progress>,
                &'a Deployment,
                Work,
            ) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let work = std::mem::size_of::<Work>();
        let attempt = size(Telemetry::attempt::<[u8; 4096], Work>);
        assert!(attempt < work + 512, "{attempt} bytes for a call of {work}");
    }

    #[test]
    fn traceparent_is_parsed_strictly() {
        let (trace, parent, sampled) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(Hex(&trace).to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(Hex(&parent).to_string(), "00f067aa0ba902b7");
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
            model: AWKWARD.to_owned(),
            status: 200,
            error_code: None,
            request_id: Arc::from("req_1"),
            deployment: Some(Arc::from("primary")),
            attempts: 2,
            input_tokens: Some(1 << 60),
            output_tokens: Some(7),
            response,
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
        let refused = RequestFacts {
            operation: "embeddings",
            route: "/v1/embeddings",
            model: "m".to_owned(),
            status: 429,
            error_code: Some("rate_limited"),
            request_id: Arc::from("req_2"),
            deployment: None,
            attempts: 0,
            input_tokens: None,
            output_tokens: None,
            response: ResponseInfo::default(),
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
                (&traced, served, attempts),
                (&refused_ids, refused, Vec::new()),
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
        requests: Vec<(&SpanIds, RequestFacts, Vec<AttemptSpan>)>,
    ) -> Bytes {
        let batch: Vec<TracedRequest> = requests
            .into_iter()
            .map(|(ids, facts, attempts)| TracedRequest {
                trace: ids.trace,
                span: ids.span,
                parent: ids.parent,
                facts,
                attempts,
            })
            .collect();
        encode(service, &batch)
    }
}
