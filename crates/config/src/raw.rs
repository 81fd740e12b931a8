//! The configuration file exactly as written: plain serde types that reject
//! unknown keys. Strings may still hold `${VAR}` references here; `validate`
//! expands them, so a secret's value never appears in a type error.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub models: Vec<RawModel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogging {
    pub requests: Option<bool>,
    pub bodies: Option<bool>,
    pub redact: Option<Vec<String>>,
    #[serde(default)]
    pub redact_patterns: Vec<String>,
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
    #[serde(default)]
    pub otlp_headers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    pub enabled: Option<bool>,
    pub backend: Option<String>,
    pub ttl_secs: Option<f64>,
    pub max_bytes: Option<u64>,
    pub scope: Option<String>,
    pub nonzero_temperature: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub enabled: Option<bool>,
    pub key_labels: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    pub master_key: Option<String>,
    pub allow_unauthenticated: Option<bool>,
    pub max_body_bytes: Option<u64>,
    pub shutdown_grace_secs: Option<f64>,
    pub idle_timeout_secs: Option<f64>,
    pub worker_threads: Option<u64>,
    pub scheduler: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStorage {
    pub url: Option<String>,
    pub record_queue: Option<u64>,
    pub record_queue_mib: Option<u64>,
    pub redis_url: Option<String>,
    pub redis_fail_open: Option<bool>,
    pub redis_fail_open_budgets: Option<bool>,
    pub redis_prefix: Option<String>,
    pub redis_leases: Option<bool>,
    pub journal_dir: Option<String>,
    pub retention_days: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    pub name: String,
    #[serde(default)]
    pub deployments: Vec<RawDeployment>,
    #[serde(default)]
    pub fallbacks: Vec<String>,
    #[serde(default)]
    pub routing: RawRouting,
    pub log_bodies: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouting {
    pub strategy: Option<String>,
    pub max_attempts: Option<u32>,
    pub retry_backoff_ms: Option<u64>,
    pub retry_max_backoff_ms: Option<u64>,
    pub timeout_secs: Option<f64>,
    pub first_token_timeout_secs: Option<f64>,
    pub connect_timeout_secs: Option<f64>,
    pub stream_idle_timeout_secs: Option<f64>,
    pub fallback_on: Option<Vec<RawTrigger>>,
    pub circuit_breaker_failures: Option<u32>,
    pub circuit_breaker_cooldown_secs: Option<f64>,
    pub prompt_cache_affinity: Option<bool>,
    pub hedge: Option<bool>,
    pub hedge_delay_ms: Option<u64>,
    pub probe_interval_secs: Option<f64>,
    pub probe: Option<String>,
    pub affinity_min_prefix_chars: Option<u32>,
}

/// A fallback trigger: a class name or an HTTP status.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawTrigger {
    Class(String),
    Status(u16),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeployment {
    pub name: Option<String>,
    pub provider: String,
    pub model: Option<String>,
    pub api_base: Option<String>,
    pub api_key: Option<String>,
    pub api_version: Option<String>,
    pub deployment: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub connect_timeout_secs: Option<f64>,
    pub timeout_secs: Option<f64>,
    pub stream_idle_timeout_secs: Option<f64>,
    pub stream_usage: Option<bool>,
    pub weight: Option<u32>,
    pub priority: Option<u32>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub price: Option<RawPrice>,
    pub simulation: Option<RawSimulation>,
    pub unsupported_params: Option<String>,
    pub region: Option<String>,
    pub aws_profile: Option<String>,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
}

/// USD per million tokens. Input and output are required; the prompt-cache
/// prices are optional (absent: billed as input).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cached_input_per_mtok: Option<f64>,
    pub cache_write_per_mtok: Option<f64>,
    pub reasoning_per_mtok: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSimulation {
    pub latency_ms: Option<u64>,
    pub ttft_ms: Option<u64>,
    pub tokens_per_second: Option<f64>,
    pub failure_rate: Option<f64>,
    pub reply: Option<String>,
    pub reply_tokens: Option<u32>,
    pub embedding_dimensions: Option<u32>,
    pub seed: Option<u64>,
}

/// Parses the TOML text, reporting syntax errors with their line and
/// unknown keys or wrong types with their path.
pub(crate) fn parse(source: &str, text: &str) -> Result<RawConfig, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|error| {
        ConfigError::single(
            source,
            "",
            format!(
                "not valid TOML{}: {}",
                position(text, error.span()),
                one_line(error.message())
            ),
            "fix the syntax at the line shown",
        )
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let message = without_values(&one_line(error.inner().message()));
        let fix = if message.contains("unknown field") {
            "remove the key or correct its spelling (the expected keys are listed above)"
        } else if message.contains("missing field") {
            "add the missing key"
        } else {
            "give the value the type shown"
        };
        ConfigError::single(source, if path == "." { "" } else { &path }, message, fix)
    })
}

/// ` at line L, column C` for a byte span of the text. toml's own rendering
/// of an error quotes the source line, which may hold a secret; only the
/// position is reported.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
    let column = before
        .iter()
        .rev()
        .take_while(|&&byte| byte != b'\n')
        .count()
        + 1;
    format!(" at line {line}, column {column}")
}

/// serde quotes a mistyped value (`invalid type: string "..."`); the value
/// may be a secret put in the wrong place, so it is left out.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for character in message.chars() {
        match (character, quoted) {
            ('"', false) => {
                quoted = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                quoted = false;
                out.push('"');
            }
            (_, true) => {}
            (character, false) => out.push(character),
        }
    }
    out
}

/// Messages may span several lines; a one-line report joins them.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
