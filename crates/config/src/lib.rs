//! Switchboard's configuration: one TOML file that users keep in git.
//!
//! Loading has two stages. `raw` holds plain serde types with
//! `deny_unknown_fields`, so an unknown key or a wrong type is reported with
//! its path before anything else happens. `validate` turns those into the
//! checked types below (`SocketAddr`, `Url`, `Duration`, `Secret`), expanding
//! `${ENV_VAR}` references and collecting every problem it finds, each with
//! its path and a fix. `switchboard serve` and `switchboard check` call the
//! same `load_file`, so they can never disagree about what is valid.

mod env;
mod error;
mod prices;
mod raw;
mod secret;
mod table;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, Problem};
pub use prices::{DeploymentPrice, PriceEntry, PriceSource, PriceTable, SHIPPED_PRICES};
pub use secret::{Secret, SecretSource};
pub use table::model_table;

/// The embedded default configuration: two simulated models, no API key.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

/// The name under which the embedded default is reported.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default>";

/// A validated configuration. Every value here has been checked; nothing
/// downstream needs to re-validate it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (a path, or the embedded default).
    pub source: String,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub metrics: MetricsConfig,
    pub cache: CacheConfig,
    pub telemetry: TelemetryConfig,
    pub logging: LoggingConfig,
    pub models: Vec<ModelConfig>,
}

/// The request log: whether requests are recorded at all, their bodies
/// (off unless a model, a key or a team asks for them, or `bodies` is
/// set), and their redaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// Record every request (`true`, the default). Off, no record is
    /// written: spend reports and budgets restored at start see none.
    pub requests: bool,
    /// Keep every request's bodies.
    pub bodies: bool,
    /// Built-in redactions: `api_keys`, `emails`, `card_numbers`.
    pub redact: Vec<String>,
    /// More redactions, as regular expressions (checked when loading).
    pub redact_patterns: Vec<String>,
    /// Each body is cut to this many bytes.
    pub max_body_bytes: usize,
}

/// The built-in redactions `logging.redact` may name.
pub const BUILT_IN_REDACTIONS: [&str; 3] = ["api_keys", "emails", "card_numbers"];

/// OpenTelemetry traces, exported by OTLP over HTTP (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The collector's base URL (spans go to `<endpoint>/v1/traces`);
    /// `None`: no traces.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Share of requests traced when the caller sent no trace context
    /// (a caller's sampled flag is followed).
    pub sample_ratio: f64,
    /// Headers sent to the collector (such as its API key).
    pub otlp_headers: Vec<(String, Secret)>,
}

/// The response cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Off by default.
    pub enabled: bool,
    pub backend: CacheBackend,
    /// How long an answer is kept, unless the request asks for less.
    pub ttl: Duration,
    /// The in-memory backend's bound on the bytes of cached answers.
    pub max_bytes: usize,
    /// Whose requests may share an answer.
    pub scope: CacheScope,
    /// Cache requests whose temperature is not 0 (absent counts as the
    /// providers' default, 1): off by default, since such answers vary.
    pub nonzero_temperature: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheBackend {
    /// In this process, bounded by `max_bytes`.
    Memory,
    /// In `storage.redis_url`, shared by every instance.
    Redis,
}

/// Which callers share cached answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// Each virtual key (and the master key) has its own answers.
    Key,
    /// Keys of one team share answers; keys without a team keep their own.
    Team,
    /// Every caller shares every answer.
    Global,
}

/// `GET /metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Serve the endpoint (on by default).
    pub enabled: bool,
    /// Also count requests, tokens and cost per virtual key and team
    /// (one series per key: off by default).
    pub key_labels: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The key clients present as `Authorization: Bearer …`. `None` means
    /// any caller is accepted, which validation allows only on loopback
    /// addresses unless `allow_unauthenticated` is set.
    pub master_key: Option<Secret>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long in-flight requests and streams may run after a shutdown
    /// signal before they are cut.
    pub shutdown_grace: Duration,
    /// How long a client's connection may sit idle between requests
    /// before the gateway closes it.
    pub idle_timeout: Duration,
    /// Threads that serve requests; `None`: one per CPU the process may
    /// use. With one, the runtime is tokio's current-thread scheduler.
    pub worker_threads: Option<usize>,
    /// How the serving threads share the work.
    pub scheduler: Scheduler,
}

/// How the serving threads share the work (`server.scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// Each serving thread runs a current-thread runtime of its own and
    /// serves the connections the acceptor hands it, the one with the
    /// fewest open first; a connection stays on its thread, as does every
    /// task it starts and the upstream connections it makes. Background
    /// tasks the gateway starts with run on the first thread, which also
    /// accepts.
    PerThread,
    /// One multi-thread runtime whose threads steal each other's tasks.
    WorkStealing,
}

impl ServerConfig {
    /// The threads to serve with: `worker_threads`, or one per CPU the
    /// process may use (its CPU affinity and cgroup quota, as the standard
    /// library reads them).
    pub fn threads(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// The threads of the runtime the gateway starts on: every serving
    /// thread under work stealing; under `PerThread` one, the acceptor's
    /// (the others start with their own runtimes, `serving_threads`).
    pub fn runtime_threads(&self) -> usize {
        match self.scheduler {
            Scheduler::PerThread => 1,
            Scheduler::WorkStealing => self.threads(),
        }
    }

    /// The serving threads with runtimes of their own, the acceptor's
    /// included: every thread under `PerThread`, one under work stealing
    /// (whose runtime spreads the work itself).
    pub fn serving_threads(&self) -> usize {
        match self.scheduler {
            Scheduler::PerThread => self.threads(),
            Scheduler::WorkStealing => 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub url: StorageUrl,
    /// Capacity of the in-memory queue between the request path and the
    /// record writer.
    pub record_queue: usize,
    /// The most memory the queued records may hold, bodies included, in
    /// bytes; past it records spill as when the queue is full.
    pub record_queue_bytes: usize,
    /// Redis, for the rate-limit, concurrency and budget counters that
    /// several instances share (a secret: its URL may hold a password).
    /// Without it, each instance counts in memory.
    pub redis_url: Option<Secret>,
    /// When Redis cannot be reached: let requests through uncounted
    /// (`true`) or refuse them (`false`, the default), for rate and
    /// concurrency limits...
    pub redis_fail_open: bool,
    /// ...and for requests a budget covers.
    pub redis_fail_open_budgets: bool,
    /// What every Redis key of the limiter starts with. Gateways sharing
    /// a Redis share their counters if they share a prefix, so only
    /// instances of one gateway (one database) may.
    pub redis_prefix: String,
    /// Whether busy scopes far from their limits take leases (slices of
    /// their limits reserved in Redis many requests at a time) instead of
    /// one round trip to Redis per request (default `true`). Off, every
    /// request is counted in Redis by itself.
    pub redis_leases: bool,
    /// Where this instance's write-ahead journal of request records lives
    /// (`None`: no journal). Defaults to `<database>.journal` for a SQLite
    /// file; PostgreSQL instances name one each.
    pub journal_dir: Option<PathBuf>,
    /// Request records older than this many days are deleted (`None`:
    /// kept forever).
    pub retention_days: Option<u32>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// A SQLite file, created and migrated on first start.
    SqliteFile(PathBuf),
    /// An in-memory SQLite database: records live as long as the process.
    SqliteMemory,
    /// A PostgreSQL database (`postgres://` or `postgresql://`), shared by
    /// every instance that names it and migrated on start. The URL is kept
    /// whole, password included, for the one place that connects;
    /// `Display` and `Debug` print it with the password masked.
    Postgres(String),
}

impl std::fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageUrl::SqliteFile(path) => write!(f, "sqlite://{}", path.display()),
            StorageUrl::SqliteMemory => f.write_str("sqlite::memory:"),
            StorageUrl::Postgres(url) => f.write_str(&masked_url_text(url)),
        }
    }
}

impl std::fmt::Debug for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageUrl::SqliteFile(path) => f.debug_tuple("SqliteFile").field(path).finish(),
            StorageUrl::SqliteMemory => f.write_str("SqliteMemory"),
            StorageUrl::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&masked_url_text(url))
                .finish(),
        }
    }
}

/// A database URL as text with any password replaced by `****`: the one in
/// the user information (`user:PASSWORD@host`) and any `password=` query
/// parameter. Works on text that does not parse as a URL too, erring
/// towards masking more: everything between the first `:` after `://` and
/// the last `@` is treated as the password.
pub fn masked_url_text(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return mask_password_parameters(text);
    };
    let (scheme, rest) = text.split_at(scheme_end + 3);
    let masked_rest = match rest.rfind('@') {
        Some(at) => {
            let (user_info, host_and_rest) = rest.split_at(at);
            match user_info.split_once(':') {
                Some((user, _password)) => format!("{user}:****{host_and_rest}"),
                None => rest.to_owned(),
            }
        }
        None => rest.to_owned(),
    };
    mask_password_parameters(&format!("{scheme}{masked_rest}"))
}

/// Masks the value of every `password=` parameter in a query string.
fn mask_password_parameters(text: &str) -> String {
    let Some((before_query, query)) = text.split_once('?') else {
        return text.to_owned();
    };
    let parameters: Vec<String> = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((name, _value)) if name.eq_ignore_ascii_case("password") => {
                format!("{name}=****")
            }
            _ => parameter.to_owned(),
        })
        .collect();
    format!("{before_query}?{}", parameters.join("&"))
}

/// One public model name and the deployments that may serve it.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub deployments: Vec<DeploymentConfig>,
    /// Other public models to try, in order, when this one fails in a way
    /// `routing.fallback_on` names.
    pub fallbacks: Vec<String>,
    pub routing: Routing,
    /// Keep this model's request and response bodies in the request log.
    pub log_bodies: bool,
}

/// How a model group chooses, retries and gives up.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub strategy: RoutingStrategy,
    /// Attempts within this model's deployments, the first included.
    pub max_attempts: u32,
    /// First retry delay; doubles per retry up to `retry_max_backoff`, each
    /// delay drawn uniformly below its bound (full jitter).
    pub retry_backoff: Duration,
    pub retry_max_backoff: Duration,
    /// Budget for the whole request, retries and fallbacks included.
    pub timeout: Option<Duration>,
    /// Longest wait for a stream's first content before trying elsewhere.
    pub first_token_timeout: Option<Duration>,
    pub fallback_on: FallbackTriggers,
    /// Consecutive failures that take a deployment out for the cooldown.
    pub circuit_breaker_failures: u32,
    pub circuit_breaker_cooldown: Duration,
    /// Send requests that share a conversation prefix of at least
    /// `affinity_min_prefix_chars` to the same deployment, so that the
    /// provider's prompt cache keeps hitting.
    pub prompt_cache_affinity: bool,
    pub affinity_min_prefix_chars: u32,
    /// Race a second deployment when the first is slower than the group's
    /// recent p95 (or `hedge_delay`), keeping the first answer.
    pub hedge: bool,
    pub hedge_delay: Option<Duration>,
    /// Check every deployment this often, beside live traffic (off when `None`).
    pub probe_interval: Option<Duration>,
    pub probe: ProbeKind,
}

/// How health probes check a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// List the upstream's models: free.
    Models,
    /// A one-token completion: billed, for upstreams without a model list.
    Completion,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            strategy: RoutingStrategy::RoundRobin,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(2),
            timeout: None,
            first_token_timeout: None,
            fallback_on: FallbackTriggers::default(),
            circuit_breaker_failures: 5,
            circuit_breaker_cooldown: Duration::from_secs(30),
            prompt_cache_affinity: false,
            affinity_min_prefix_chars: 1024,
            hedge: false,
            hedge_delay: None,
            probe_interval: None,
            probe: ProbeKind::Models,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingStrategy {
    RoundRobin,
    Weighted,
    LeastBusy,
    LowestLatency,
    LowestCost,
    MostHeadroom,
}

/// A deployment's price, in USD per million tokens: from its own `price`
/// table, or else from the shipped `PriceTable`. Validated: every figure is
/// finite, at least 0 and at most 1,000,000.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Input tokens neither read from nor written to a prompt cache.
    pub input_per_mtok: f64,
    /// Output tokens, hidden reasoning included.
    pub output_per_mtok: f64,
    /// Input tokens read from the provider's prompt cache; `None` bills
    /// them at `input_per_mtok`.
    pub cached_input_per_mtok: Option<f64>,
    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// cache creation); `None` bills them at `input_per_mtok`.
    pub cache_write_per_mtok: Option<f64>,
    /// Output tokens spent on hidden reasoning, for a model that prices
    /// them apart; `None` bills them at `output_per_mtok`.
    pub reasoning_per_mtok: Option<f64>,
}

/// Which failures move a request on to the fallback models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackTriggers {
    pub server_error: bool,
    pub rate_limited: bool,
    pub timeout: bool,
    pub connection: bool,
    pub invalid_response: bool,
    pub context_window: bool,
    pub content_policy: bool,
    pub statuses: Vec<u16>,
}

impl Default for FallbackTriggers {
    fn default() -> Self {
        FallbackTriggers {
            server_error: true,
            rate_limited: true,
            timeout: true,
            connection: true,
            invalid_response: true,
            context_window: false,
            content_policy: false,
            statuses: Vec::new(),
        }
    }
}

/// One place a model can be served from: a provider, an upstream model id,
/// an endpoint and its credentials.
#[derive(Debug, Clone)]
pub struct DeploymentConfig {
    /// Unique across the whole configuration; appears in logs, records and
    /// the `x-switchboard-deployment` response header.
    pub name: String,
    pub provider: ProviderKind,
    /// The model id sent upstream.
    pub upstream_model: String,
    /// Base URL of the upstream API (`None` only for the simulated provider).
    pub api_base: Option<url::Url>,
    pub api_key: Option<Secret>,
    /// Azure only: the `api-version` query parameter.
    pub api_version: Option<String>,
    /// Azure only: the deployment name in the URL path.
    pub azure_deployment: Option<String>,
    /// Extra headers sent upstream on every request.
    pub headers: Vec<(http::HeaderName, Secret)>,
    pub timeouts: Timeouts,
    /// Ask the upstream for token usage on streamed responses
    /// (`stream_options.include_usage`); the gateway strips it again for
    /// clients that did not ask.
    pub stream_usage: bool,
    /// Share of traffic under the `weighted` strategy.
    pub weight: u32,
    /// Lower tiers serve first; higher ones when no lower one can.
    pub priority: u32,
    /// Labels a request can require (`x-switchboard-tags`), such as a region.
    pub tags: Vec<String>,
    /// The deployment's own capacity, requests and tokens per minute.
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub price: Option<Price>,
    pub simulation: Option<Simulation>,
    /// What to do with a request parameter this deployment's API cannot
    /// honour (after translation from the client's dialect).
    pub unsupported_params: UnsupportedParams,
    /// Bedrock: the AWS region, and the named profile to read credentials
    /// from (else the standard chain: environment, then `default`).
    pub region: Option<String>,
    pub aws_profile: Option<String>,
    /// Bedrock: static AWS keys from the configuration (usually `${VAR}`
    /// references); when absent, the standard chain is read.
    pub aws_keys: Option<AwsKeys>,
}

#[derive(Debug, Clone)]
pub struct AwsKeys {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// What happens to a parameter a deployment cannot honour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnsupportedParams {
    /// Refuse the request with a 400 naming the parameter and the model.
    #[default]
    Reject,
    /// Send the request without it, and name it in the
    /// `x-switchboard-dropped-params` response header.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a TCP (and TLS) connection.
    pub connect: Duration,
    /// A whole non-streamed request, or a streamed request up to its
    /// response headers.
    pub request: Duration,
    /// Longest silence allowed between two chunks of a stream.
    pub stream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(600),
            stream_idle: Duration::from_secs(120),
        }
    }
}

/// Which upstream API family a deployment speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// api.openai.com, `Authorization: Bearer`.
    OpenAi,
    /// Azure OpenAI: deployment-style URLs, `api-version`, `api-key` header.
    Azure,
    /// Any server that speaks OpenAI's API; `vendor` names the preset used
    /// for its default base URL (`openai-compatible` when none).
    OpenAiCompatible { vendor: &'static str },
    /// The built-in simulated model: deterministic replies, no network.
    Simulated,
    /// Anthropic's Messages API: `x-api-key`, `anthropic-version`.
    Anthropic,
    /// Google's Gemini API (`generateContent`), `x-goog-api-key`.
    Gemini,
    /// AWS Bedrock's Converse API, signed with SigV4.
    Bedrock,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Azure => "azure",
            ProviderKind::OpenAiCompatible { vendor } => vendor,
            ProviderKind::Simulated => "simulated",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Bedrock => "bedrock",
        }
    }
}

/// Settings of the simulated provider. Every reply is a function of the
/// request and these settings alone, so tests and demos are repeatable.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    /// Delay before a non-streamed answer, or before a stream's headers.
    pub latency: Duration,
    /// Delay between the stream's headers and its first token.
    pub time_to_first_token: Duration,
    /// Pace of streamed tokens; 0 sends them all at once.
    pub tokens_per_second: f64,
    /// Share of requests, between 0 and 1, that fail with a simulated 500.
    pub failure_rate: f64,
    /// Fixed reply text; when `None` the reply echoes the last user message.
    pub reply: Option<String>,
    /// Length of the generated reply, in tokens (words), before `max_tokens`.
    pub reply_tokens: u32,
    /// Length of the vectors returned by the embeddings endpoint.
    pub embedding_dimensions: u32,
    /// Seed of the failure draw, so failure sequences are repeatable.
    pub seed: u64,
}

impl Default for Simulation {
    fn default() -> Self {
        Simulation {
            latency: Duration::ZERO,
            time_to_first_token: Duration::ZERO,
            tokens_per_second: 0.0,
            failure_rate: 0.0,
            reply: None,
            reply_tokens: 24,
            embedding_dimensions: 256,
            seed: 0,
        }
    }
}

impl Config {
    /// Parses and validates a configuration text. `source` names it in
    /// error messages.
    pub fn from_toml(source: &str, text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with_env(source, text, &|name| std::env::var(name).ok())
    }

    /// As `from_toml`, reading environment variables through `lookup`
    /// (tests use this to avoid touching the process environment).
    pub fn from_toml_with_env(
        source: &str,
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw = raw::parse(source, text)?;
        validate::validate(source, raw, lookup)
    }

    /// Reads and validates a configuration file.
    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError::single(
                &source,
                "",
                format!("cannot read the file: {error}"),
                "check the path given with --config or SWITCHBOARD_CONFIG",
            )
        })?;
        Self::from_toml(&source, &text)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        Self::from_toml(DEFAULT_CONFIG_NAME, DEFAULT_CONFIG)
            .expect("the embedded default configuration is valid (tested)")
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|model| model.name == name)
    }
}

#[cfg(test)]
mod tests;
