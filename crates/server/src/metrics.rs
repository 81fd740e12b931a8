//! Prometheus metrics: counted as each request ends (from the same facts
//! as its record), rendered in the text exposition format at `GET /metrics`.
//!
//! Label values come only from the configuration (public model and
//! deployment names), from fixed vocabularies (endpoint, status, outcome,
//! error class, token type), or, when `metrics.key_labels` is on, from
//! virtual key and team ids; a model name a client invents is counted as
//! `(unknown)`. So the number of series is bounded by the configuration,
//! never by traffic.
//!
//! Counting takes one uncontended-in-practice mutex per request, and
//! allocates only the first time a label combination is seen. With
//! `metrics.enabled = false` nothing is counted but the requests in flight
//! (one atomic addition each way, so a reload that turns metrics back on
//! reports that gauge right); a reload that turns them on again counts
//! from then on, adding to what was counted before.
//! Deployment state (circuit, requests in flight) is read at scrape time
//! from the routes themselves.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use switchboard_core::mix::FnvBuild;
use switchboard_core::{Endpoint, Outcome, Usage};
use switchboard_providers::UpstreamError;
use switchboard_store::{Recorder, WriterLanes};

use crate::state::Catalog;

/// The label value of a model the configuration does not declare.
pub(crate) const UNKNOWN_MODEL: &str = "(unknown)";

/// Upper bounds of the latency and time-to-first-token buckets, seconds.
const BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The token types counted, in `Usage`'s terms.
const TOKEN_TYPES: [&str; 5] = ["input", "output", "cached", "cache_write", "reasoning"];

/// What one request's end contributes.
pub(crate) struct Observation<'a> {
    pub endpoint: Endpoint,
    /// The public model asked for, or `UNKNOWN_MODEL`.
    pub model: &'a str,
    pub deployment: Option<&'a str>,
    /// The fallback model that served it, if one did.
    pub served_model: Option<&'a str>,
    pub attempts: u32,
    pub stream: bool,
    pub status: u16,
    pub outcome: Outcome,
    pub latency: Duration,
    pub first_token: Option<Duration>,
    pub usage: &'a Usage,
    pub cost_nanos: Option<u64>,
    pub key_id: Option<&'a str>,
    pub team_id: Option<&'a str>,
    /// Failed upstream attempts: deployment and error class.
    pub upstream_errors: &'a [(std::sync::Arc<str>, &'static str)],
    /// The response cache: hit, miss, or not consulted.
    pub cache: Option<bool>,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(index) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// Requests answered, by (endpoint, status, outcome, stream).
type RequestCounts = HashMap<(&'static str, u16, &'static str, bool), u64, FnvBuild>;

/// Everything counted for one public model on one deployment.
#[derive(Debug, Default)]
struct Series {
    requests: RequestCounts,
    duration: Histogram,
    first_token: Histogram,
    tokens: [u64; TOKEN_TYPES.len()],
    cost_nanos: u64,
    cache_hits: u64,
    cache_misses: u64,
}

/// Per model: retries and fallbacks taken.
#[derive(Debug, Default)]
struct ModelCounts {
    retries: u64,
    fallbacks: HashMap<String, u64, FnvBuild>,
}

/// Per key (only with `key_labels`).
#[derive(Debug, Default)]
struct KeyCounts {
    team: String,
    requests: u64,
    tokens: [u64; 2],
    cost_nanos: u64,
}

#[derive(Debug, Default)]
struct Registry {
    /// model -> deployment ("" before one was chosen) -> series.
    series: HashMap<String, HashMap<String, Series, FnvBuild>, FnvBuild>,
    models: HashMap<String, ModelCounts, FnvBuild>,
    /// deployment -> error class -> count.
    upstream_errors: HashMap<String, HashMap<&'static str, u64, FnvBuild>, FnvBuild>,
    /// Key ids come from the store, not the client.
    keys: HashMap<String, KeyCounts, FnvBuild>,
}

/// The gateway's metrics. One per `Gateway`.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    in_flight: AtomicI64,
    /// `metrics.enabled`: whether requests are counted (set again on reload).
    counting: AtomicBool,
    key_labels: bool,
    /// Client connections open on each serving thread (`listen.rs`).
    connections: Box<[AtomicUsize]>,
}

impl Metrics {
    pub fn new(counting: bool, key_labels: bool) -> Metrics {
        Metrics {
            registry: Mutex::new(Registry::default()),
            in_flight: AtomicI64::new(0),
            counting: AtomicBool::new(counting),
            key_labels,
            connections: Box::new([AtomicUsize::new(0)]),
        }
    }

    /// Counts connections on `threads` serving threads (one unless set).
    pub fn with_serving_threads(mut self, threads: usize) -> Metrics {
        self.connections = (0..threads.max(1)).map(|_| AtomicUsize::new(0)).collect();
        self
    }

    /// How many serving threads connections are counted for.
    pub(crate) fn serving_threads(&self) -> usize {
        self.connections.len()
    }

    /// The serving thread with the fewest open connections, the first of
    /// those tied.
    pub(crate) fn least(&self) -> usize {
        let mut least = 0;
        let mut fewest = usize::MAX;
        for (thread, open) in self.connections.iter().enumerate() {
            let open = open.load(Ordering::Relaxed);
            if open < fewest {
                (least, fewest) = (thread, open);
            }
        }
        least
    }

    /// A connection opened on serving thread `thread`.
    pub(crate) fn connection_opened(&self, thread: usize) {
        if let Some(open) = self.connections.get(thread) {
            open.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection closed on serving thread `thread` (once per opened).
    pub(crate) fn connection_closed(&self, thread: usize) {
        if let Some(open) = self.connections.get(thread) {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Turns counting on or off (`metrics.enabled`, on start and reload).
    pub fn set_counting(&self, counting: bool) {
        self.counting.store(counting, Ordering::Relaxed);
    }

    /// A model request began.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A model request ended (once per `started`).
    pub fn observe(&self, observation: &Observation<'_>) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.counting.load(Ordering::Relaxed) {
            return;
        }
        let mut registry = self.lock();
        let registry = &mut *registry;
        let series = entry(
            entry(&mut registry.series, observation.model),
            observation.deployment.unwrap_or(""),
        );
        *series
            .requests
            .entry((
                observation.endpoint.as_str(),
                observation.status,
                observation.outcome.as_str(),
                observation.stream,
            ))
            .or_default() += 1;
        series.duration.observe(observation.latency);
        if let Some(first_token) = observation.first_token {
            series.first_token.observe(first_token);
        }
        let usage = observation.usage;
        let counts = [
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_input_tokens,
            usage.cache_write_tokens,
            usage.reasoning_tokens,
        ];
        for (total, count) in series.tokens.iter_mut().zip(counts) {
            *total += count.unwrap_or(0);
        }
        series.cost_nanos += observation.cost_nanos.unwrap_or(0);
        match observation.cache {
            Some(true) => series.cache_hits += 1,
            Some(false) => series.cache_misses += 1,
            None => {}
        }

        if observation.attempts > 1 || observation.served_model.is_some() {
            let model = entry(&mut registry.models, observation.model);
            model.retries += u64::from(observation.attempts.saturating_sub(1));
            if let Some(served) = observation.served_model {
                *entry(&mut model.fallbacks, served) += 1;
            }
        }
        for (deployment, class) in observation.upstream_errors {
            *entry(&mut registry.upstream_errors, deployment)
                .entry(class)
                .or_default() += 1;
        }
        if self.key_labels
            && let Some(key) = observation.key_id
        {
            let counts = entry(&mut registry.keys, key);
            if counts.team.is_empty()
                && let Some(team) = observation.team_id
            {
                team.clone_into(&mut counts.team);
            }
            counts.requests += 1;
            counts.tokens[0] += usage.input_tokens.unwrap_or(0);
            counts.tokens[1] += usage.output_tokens.unwrap_or(0);
            counts.cost_nanos += observation.cost_nanos.unwrap_or(0);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The text exposition (format 0.0.4) of everything counted, plus the
    /// deployments' live state and the record writer's.
    pub fn render(
        &self,
        catalog: &Catalog,
        recorder: &Recorder,
        lanes: Option<WriterLanes>,
        spans_dropped: Option<u64>,
    ) -> String {
        let mut out = String::with_capacity(8192);
        {
            let registry = self.lock();
            render_requests(&mut out, &registry);
            render_models(&mut out, &registry);
            render_errors(&mut out, &registry);
            render_cache(&mut out, &registry);
            if self.key_labels {
                render_keys(&mut out, &registry);
            }
        }
        family(
            &mut out,
            "switchboard_requests_in_flight",
            "gauge",
            "Model requests being served now.",
        );
        let _ = writeln!(
            out,
            "switchboard_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed).max(0)
        );
        family(
            &mut out,
            "switchboard_connections_open",
            "gauge",
            "Client connections open, by serving thread.",
        );
        for (thread, open) in self.connections.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchboard_connections_open{{thread=\"{thread}\"}} {}",
                open.load(Ordering::Relaxed)
            );
        }
        render_deployments(&mut out, catalog);
        render_recorder(&mut out, recorder);
        if let Some(lanes) = lanes {
            render_lanes(&mut out, &lanes);
        }
        if let Some(dropped) = spans_dropped {
            family(
                &mut out,
                "switchboard_spans_dropped_total",
                "counter",
                "Trace spans dropped because the exporter's queue was full.",
            );
            let _ = writeln!(out, "switchboard_spans_dropped_total {dropped}");
        }
        out
    }
}

/// The value at `key`, created empty the first time (the only allocation).
fn entry<'m, V: Default>(map: &'m mut HashMap<String, V, FnvBuild>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escaped(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Series sorted by model, then deployment, for a stable exposition.
fn sorted_series(registry: &Registry) -> Vec<(&str, &str, &Series)> {
    let mut all: Vec<(&str, &str, &Series)> = registry
        .series
        .iter()
        .flat_map(|(model, deployments)| {
            deployments
                .iter()
                .map(move |(deployment, series)| (model.as_str(), deployment.as_str(), series))
        })
        .collect();
    all.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    all
}

fn render_requests(out: &mut String, registry: &Registry) {
    let all = sorted_series(registry);
    family(
        out,
        "switchboard_requests_total",
        "counter",
        "Model requests answered, by endpoint, public model, serving deployment, status and outcome.",
    );
    for (model, deployment, series) in &all {
        let mut requests: Vec<_> = series.requests.iter().collect();
        requests.sort_unstable();
        for ((endpoint, status, outcome, stream), count) in requests {
            let _ = writeln!(
                out,
                "switchboard_requests_total{{endpoint=\"{endpoint}\",model=\"{}\",deployment=\"{}\",status=\"{status}\",outcome=\"{outcome}\",stream=\"{stream}\"}} {count}",
                escaped(model),
                escaped(deployment),
            );
        }
    }
    for (name, help, pick) in [
        (
            "switchboard_request_duration_seconds",
            "Time from a request's arrival to its end (the last byte of a stream).",
            (|series: &Series| &series.duration) as fn(&Series) -> &Histogram,
        ),
        (
            "switchboard_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first content.",
            |series: &Series| &series.first_token,
        ),
    ] {
        family(out, name, "histogram", help);
        for (model, deployment, series) in &all {
            let histogram = pick(series);
            if histogram.count == 0 {
                continue;
            }
            let labels = format!(
                "model=\"{}\",deployment=\"{}\"",
                escaped(model),
                escaped(deployment)
            );
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(histogram.buckets) {
                cumulative += count;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"+Inf\"}} {}\n{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}",
                histogram.count, histogram.sum, histogram.count
            );
        }
    }
    family(
        out,
        "switchboard_tokens_total",
        "counter",
        "Tokens reported by upstreams, by public model, deployment and type.",
    );
    for (model, deployment, series) in &all {
        for (kind, count) in TOKEN_TYPES.iter().zip(series.tokens) {
            if count > 0 {
                let _ = writeln!(
                    out,
                    "switchboard_tokens_total{{model=\"{}\",deployment=\"{}\",type=\"{kind}\"}} {count}",
                    escaped(model),
                    escaped(deployment),
                );
            }
        }
    }
    family(
        out,
        "switchboard_cost_usd_total",
        "counter",
        "What requests cost at the configured prices, in US dollars.",
    );
    for (model, deployment, series) in &all {
        if series.cost_nanos > 0 {
            let _ = writeln!(
                out,
                "switchboard_cost_usd_total{{model=\"{}\",deployment=\"{}\"}} {}",
                escaped(model),
                escaped(deployment),
                dollars(series.cost_nanos)
            );
        }
    }
}

fn render_cache(out: &mut String, registry: &Registry) {
    let all = sorted_series(registry);
    for (name, help, pick) in [
        (
            "switchboard_cache_hits_total",
            "Requests answered from the response cache, by public model.",
            (|series: &Series| series.cache_hits) as fn(&Series) -> u64,
        ),
        (
            "switchboard_cache_misses_total",
            "Requests the response cache was asked for and could not answer, by public model.",
            |series: &Series| series.cache_misses,
        ),
    ] {
        family(out, name, "counter", help);
        let mut per_model: Vec<(&str, u64)> = Vec::new();
        for (model, _, series) in &all {
            match per_model.last_mut() {
                Some((last, count)) if last == model => *count += pick(series),
                _ => per_model.push((model, pick(series))),
            }
        }
        for (model, count) in per_model {
            if count > 0 {
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {count}", escaped(model));
            }
        }
    }
}

fn render_models(out: &mut String, registry: &Registry) {
    let mut models: Vec<_> = registry.models.iter().collect();
    models.sort_unstable_by(|a, b| a.0.cmp(b.0));
    family(
        out,
        "switchboard_retries_total",
        "counter",
        "Upstream attempts beyond each request's first, by public model.",
    );
    for (model, counts) in &models {
        let _ = writeln!(
            out,
            "switchboard_retries_total{{model=\"{}\"}} {}",
            escaped(model),
            counts.retries
        );
    }
    family(
        out,
        "switchboard_fallbacks_total",
        "counter",
        "Requests answered by a fallback model, by the model asked for and the one that answered.",
    );
    for (model, counts) in &models {
        let mut fallbacks: Vec<_> = counts.fallbacks.iter().collect();
        fallbacks.sort_unstable();
        for (served, count) in fallbacks {
            let _ = writeln!(
                out,
                "switchboard_fallbacks_total{{model=\"{}\",served_model=\"{}\"}} {count}",
                escaped(model),
                escaped(served)
            );
        }
    }
}

fn render_errors(out: &mut String, registry: &Registry) {
    family(
        out,
        "switchboard_upstream_errors_total",
        "counter",
        "Failed upstream attempts, by deployment and class.",
    );
    let mut errors: Vec<(&str, &str, u64)> = registry
        .upstream_errors
        .iter()
        .flat_map(|(deployment, classes)| {
            classes
                .iter()
                .map(move |(class, count)| (deployment.as_str(), *class, *count))
        })
        .collect();
    errors.sort_unstable();
    for (deployment, class, count) in errors {
        let _ = writeln!(
            out,
            "switchboard_upstream_errors_total{{deployment=\"{}\",class=\"{class}\"}} {count}",
            escaped(deployment)
        );
    }
}

fn render_keys(out: &mut String, registry: &Registry) {
    let mut keys: Vec<_> = registry.keys.iter().collect();
    keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (name, help, value) in [
        (
            "switchboard_key_requests_total",
            "Model requests by virtual key and team.",
            (|counts: &KeyCounts| counts.requests.to_string()) as fn(&KeyCounts) -> String,
        ),
        (
            "switchboard_key_input_tokens_total",
            "Input tokens by virtual key and team.",
            |counts: &KeyCounts| counts.tokens[0].to_string(),
        ),
        (
            "switchboard_key_output_tokens_total",
            "Output tokens by virtual key and team.",
            |counts: &KeyCounts| counts.tokens[1].to_string(),
        ),
        (
            "switchboard_key_cost_usd_total",
            "Cost by virtual key and team, in US dollars.",
            |counts: &KeyCounts| dollars(counts.cost_nanos),
        ),
    ] {
        family(out, name, "counter", help);
        for (key, counts) in &keys {
            let _ = writeln!(
                out,
                "{name}{{key=\"{}\",team=\"{}\"}} {}",
                escaped(key),
                escaped(&counts.team),
                value(counts)
            );
        }
    }
}

fn render_deployments(out: &mut String, catalog: &Catalog) {
    let now = Instant::now();
    let mut circuit = String::new();
    let mut in_flight = String::new();
    for route in &catalog.routes {
        for member in route.group.members() {
            let snapshot = member.health.snapshot(now);
            let labels = format!(
                "model=\"{}\",deployment=\"{}\"",
                escaped(&route.name),
                escaped(member.target.name())
            );
            for state in ["closed", "half_open", "open"] {
                let _ = writeln!(
                    circuit,
                    "switchboard_deployment_circuit_state{{{labels},state=\"{state}\"}} {}",
                    u8::from(snapshot.state == state)
                );
            }
            let _ = writeln!(
                in_flight,
                "switchboard_deployment_in_flight{{{labels}}} {}",
                snapshot.in_flight
            );
        }
    }
    family(
        out,
        "switchboard_deployment_circuit_state",
        "gauge",
        "Each deployment's circuit breaker: 1 for its current state.",
    );
    out.push_str(&circuit);
    family(
        out,
        "switchboard_deployment_in_flight",
        "gauge",
        "Upstream requests in flight on each deployment.",
    );
    out.push_str(&in_flight);
}

fn render_recorder(out: &mut String, recorder: &Recorder) {
    let stats = recorder.stats();
    for (name, kind, help, value) in [
        (
            "switchboard_record_backlog",
            "gauge",
            "Request records waiting for the database (queued, or spilled to the journal).",
            recorder.backlog() as u64,
        ),
        (
            "switchboard_record_queue_bytes",
            "gauge",
            "Memory the queued request records hold, bodies included (past 256 MiB, records spill).",
            recorder.held_bytes() as u64,
        ),
        (
            "switchboard_records_written_total",
            "counter",
            "Request records written to the database.",
            stats.written.load(Ordering::Relaxed),
        ),
        (
            "switchboard_records_spilled_total",
            "counter",
            "Request records the queue could not take, spilled to the journal (or a spill file) and written from there.",
            stats.spilled.load(Ordering::Relaxed),
        ),
        (
            "switchboard_records_dropped_total",
            "counter",
            "Request records lost (neither queued nor journaled).",
            stats.dropped.load(Ordering::Relaxed),
        ),
        (
            "switchboard_record_write_failures_total",
            "counter",
            "Failed attempts to write a batch of records (each is retried).",
            stats.write_failures.load(Ordering::Relaxed),
        ),
    ] {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// How a SQLite file's request-log writer threads shared the writing.
fn render_lanes(out: &mut String, lanes: &WriterLanes) {
    let name = "switchboard_record_writer_rows_total";
    family(
        out,
        name,
        "counter",
        "Rows (records and bodies) the SQLite request log's writer threads inserted, those of a batch later rolled back and written again included: `idle` runs only when its core has nothing else to run (Linux); `catch_up` runs at ordinary priority, when the idle thread fell behind and for up to 32 s after.",
    );
    let _ = writeln!(out, "{name}{{thread=\"idle\"}} {}", lanes.idle_rows);
    let _ = writeln!(out, "{name}{{thread=\"catch_up\"}} {}", lanes.catch_up_rows);
    let name = "switchboard_record_writer_handovers_total";
    family(
        out,
        name,
        "counter",
        "Batches of the request log the idle writer thread gave to the catch-up thread: picked up late, hurried after it had begun them, or hurried before.",
    );
    for (reason, count) in [
        ("picked_up_late", lanes.picked_up_late),
        ("hurried_begun", lanes.handed_on),
        ("hurried_unbegun", lanes.taken_unbegun),
    ] {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
    }
}

/// Nano-dollars as dollars, exactly (no float rounding of the integer part).
fn dollars(nanos: u64) -> String {
    let fraction = nanos % 1_000_000_000;
    if fraction == 0 {
        return (nanos / 1_000_000_000).to_string();
    }
    let text = format!("{}.{fraction:09}", nanos / 1_000_000_000);
    text.trim_end_matches('0').to_owned()
}

/// The class of a failed upstream attempt, for `switchboard_upstream_errors_total`.
pub(crate) fn error_class(error: &UpstreamError) -> &'static str {
    match error {
        UpstreamError::Connect(_) => "connect",
        UpstreamError::Timeout { .. } => "timeout",
        UpstreamError::Transport(_) => "transport",
        UpstreamError::Status { status: 429, .. } => "rate_limited",
        UpstreamError::Status { status, .. } if *status >= 500 => "server_error",
        UpstreamError::Status { .. } => "client_error",
        UpstreamError::InStream { .. } => "in_stream",
        UpstreamError::InvalidResponse(_) => "invalid_response",
        UpstreamError::Misconfigured(_) => "misconfigured",
        UpstreamError::Untranslatable { .. } | UpstreamError::Unsupported { .. } => "unfit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_lanes_are_rendered_by_thread_and_reason() {
        let mut out = String::new();
        render_lanes(
            &mut out,
            &WriterLanes {
                idle_rows: 1,
                catch_up_rows: 2,
                picked_up_late: 3,
                handed_on: 4,
                taken_unbegun: 5,
            },
        );
        for line in [
            "# TYPE switchboard_record_writer_rows_total counter",
            "switchboard_record_writer_rows_total{thread=\"idle\"} 1",
            "switchboard_record_writer_rows_total{thread=\"catch_up\"} 2",
            "# TYPE switchboard_record_writer_handovers_total counter",
            "switchboard_record_writer_handovers_total{reason=\"picked_up_late\"} 3",
            "switchboard_record_writer_handovers_total{reason=\"hurried_begun\"} 4",
            "switchboard_record_writer_handovers_total{reason=\"hurried_unbegun\"} 5",
        ] {
            assert!(
                out.lines().any(|rendered| rendered == line),
                "{line} in {out}"
            );
        }
    }

    fn observation<'a>(
        usage: &'a Usage,
        errors: &'a [(std::sync::Arc<str>, &'static str)],
    ) -> Observation<'a> {
        Observation {
            endpoint: Endpoint::ChatCompletions,
            model: "gpt",
            deployment: Some("primary"),
            served_model: None,
            attempts: 1,
            stream: false,
            status: 200,
            outcome: Outcome::Success,
            latency: Duration::from_millis(30),
            first_token: None,
            usage,
            cost_nanos: Some(1_500),
            key_id: Some("key_1"),
            team_id: Some("team_\"x\""),
            upstream_errors: errors,
            cache: None,
        }
    }

    fn registry_text(metrics: &Metrics) -> String {
        let registry = metrics.lock();
        let mut out = String::new();
        render_requests(&mut out, &registry);
        render_models(&mut out, &registry);
        render_errors(&mut out, &registry);
        render_keys(&mut out, &registry);
        out
    }

    #[test]
    fn histograms_are_cumulative_and_counters_add_up() {
        let metrics = Metrics::new(true, true);
        let usage = Usage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            ..Usage::default()
        };
        let errors = [(std::sync::Arc::from("primary"), "server_error")];
        metrics.started();
        metrics.observe(&observation(&usage, &[]));
        metrics.started();
        metrics.observe(&Observation {
            latency: Duration::from_secs(3),
            attempts: 3,
            served_model: Some("backup"),
            upstream_errors: &errors,
            ..observation(&usage, &[])
        });
        let text = registry_text(&metrics);
        assert!(text.contains(
            "switchboard_requests_total{endpoint=\"chat_completions\",model=\"gpt\",deployment=\"primary\",status=\"200\",outcome=\"success\",stream=\"false\"} 2"
        ), "{text}");
        // 30 ms falls in the 0.05 s bucket; 3 s only from 5 s on.
        assert!(text.contains("switchboard_request_duration_seconds_bucket{model=\"gpt\",deployment=\"primary\",le=\"0.025\"} 0"));
        assert!(text.contains("switchboard_request_duration_seconds_bucket{model=\"gpt\",deployment=\"primary\",le=\"0.05\"} 1"));
        assert!(text.contains("switchboard_request_duration_seconds_bucket{model=\"gpt\",deployment=\"primary\",le=\"2.5\"} 1"));
        assert!(text.contains("switchboard_request_duration_seconds_bucket{model=\"gpt\",deployment=\"primary\",le=\"5\"} 2"));
        assert!(text.contains("switchboard_request_duration_seconds_bucket{model=\"gpt\",deployment=\"primary\",le=\"+Inf\"} 2"));
        assert!(text.contains(
            "switchboard_request_duration_seconds_count{model=\"gpt\",deployment=\"primary\"} 2"
        ));
        // No stream: no time-to-first-token series at all.
        assert!(!text.contains("switchboard_time_to_first_token_seconds_count{"));
        assert!(text.contains(
            "switchboard_tokens_total{model=\"gpt\",deployment=\"primary\",type=\"input\"} 20"
        ));
        assert!(text.contains(
            "switchboard_tokens_total{model=\"gpt\",deployment=\"primary\",type=\"output\"} 10"
        ));
        assert!(!text.contains("type=\"reasoning\""));
        assert!(
            text.contains(
                "switchboard_cost_usd_total{model=\"gpt\",deployment=\"primary\"} 0.000003"
            )
        );
        assert!(text.contains("switchboard_retries_total{model=\"gpt\"} 2"));
        assert!(
            text.contains("switchboard_fallbacks_total{model=\"gpt\",served_model=\"backup\"} 1")
        );
        assert!(text.contains(
            "switchboard_upstream_errors_total{deployment=\"primary\",class=\"server_error\"} 1"
        ));
        // Label values are escaped.
        assert!(
            text.contains(
                "switchboard_key_requests_total{key=\"key_1\",team=\"team_\\\"x\\\"\"} 2"
            )
        );
        assert_eq!(metrics.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn key_labels_are_off_unless_asked_for() {
        let metrics = Metrics::new(true, false);
        let usage = Usage::default();
        metrics.started();
        metrics.observe(&observation(&usage, &[]));
        assert!(metrics.lock().keys.is_empty());
    }

    /// `metrics.enabled = false` counts nothing but the requests in flight;
    /// turned on again (a reload), it counts from then on.
    #[test]
    fn disabled_metrics_count_only_requests_in_flight() {
        let metrics = Metrics::new(false, true);
        let usage = Usage {
            input_tokens: Some(10),
            ..Usage::default()
        };
        metrics.started();
        metrics.started();
        assert_eq!(metrics.in_flight.load(Ordering::Relaxed), 2);
        metrics.observe(&observation(&usage, &[]));
        {
            let registry = metrics.lock();
            assert!(registry.series.is_empty());
            assert!(registry.keys.is_empty());
        }
        assert_eq!(metrics.in_flight.load(Ordering::Relaxed), 1);
        metrics.set_counting(true);
        metrics.observe(&observation(&usage, &[]));
        assert_eq!(metrics.in_flight.load(Ordering::Relaxed), 0);
        let text = registry_text(&metrics);
        assert!(text.contains(
            "switchboard_requests_total{endpoint=\"chat_completions\",model=\"gpt\",deployment=\"primary\",status=\"200\",outcome=\"success\",stream=\"false\"} 1"
        ), "{text}");
    }

    #[test]
    fn dollars_are_exact() {
        assert_eq!(dollars(0), "0");
        assert_eq!(dollars(1_000_000_000), "1");
        assert_eq!(dollars(1_500), "0.0000015");
        assert_eq!(dollars(12_345_000_000_001), "12345.000000001");
    }
}
