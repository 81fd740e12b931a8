//! From `RawConfig` to `Config`: expands environment references and checks
//! every value, collecting all problems instead of stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::AwsKeys;
use crate::env::{ExpandError, expand};
use crate::raw::{RawConfig, RawDeployment, RawRouting, RawSimulation, RawTrigger};
use crate::{CacheBackend, CacheConfig, CacheScope, LoggingConfig, TelemetryConfig};
use crate::{
    Config, ConfigError, DeploymentConfig, FallbackTriggers, MetricsConfig, ModelConfig, Price,
    ProbeKind, Problem, ProviderKind, Routing, RoutingStrategy, Scheduler, Secret, SecretSource,
    ServerConfig, Simulation, StorageConfig, StorageUrl, Timeouts, UnsupportedParams,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
const MAX_WORKER_THREADS: u64 = 1024;
const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";
const DEFAULT_REDIS_PREFIX: &str = "switchboard:";

/// OpenAI-compatible vendors known by name, with their default base URL.
const COMPATIBLE_VENDORS: &[(&str, Option<&str>)] = &[
    ("openai-compatible", None),
    ("vllm", Some("http://127.0.0.1:8000/v1")),
    ("ollama", Some("http://127.0.0.1:11434/v1")),
    ("llamacpp", Some("http://127.0.0.1:8080/v1")),
    ("groq", Some("https://api.groq.com/openai/v1")),
    ("deepseek", Some("https://api.deepseek.com/v1")),
    ("mistral", Some("https://api.mistral.ai/v1")),
    ("together", Some("https://api.together.xyz/v1")),
    ("fireworks", Some("https://api.fireworks.ai/inference/v1")),
    ("openrouter", Some("https://openrouter.ai/api/v1")),
    ("xai", Some("https://api.x.ai/v1")),
];

fn provider_names() -> String {
    let mut names = vec![
        "openai",
        "azure",
        "anthropic",
        "gemini",
        "bedrock",
        "simulated",
    ];
    names.extend(COMPATIBLE_VENDORS.iter().map(|(name, _)| *name));
    names.join(", ")
}

struct Checker<'a> {
    problems: Vec<Problem>,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Checker<'_> {
    fn problem(&mut self, path: &str, message: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    /// Expands `${VAR}` references in a plain (non-secret) string.
    fn text(&mut self, path: &str, raw: &str) -> Option<String> {
        self.expanded(path, raw).map(|(value, _)| value)
    }

    /// Expands a secret. Inline secrets are accepted (a local server may
    /// need a dummy key) but every reference form is preferred.
    fn secret(&mut self, path: &str, raw: &str) -> Option<Secret> {
        let (value, variables) = self.expanded(path, raw)?;
        let source = if variables.is_empty() {
            SecretSource::Inline
        } else {
            SecretSource::Env(variables)
        };
        Some(Secret::new(value, source))
    }

    fn expanded(&mut self, path: &str, raw: &str) -> Option<(String, Vec<String>)> {
        match expand(raw, self.lookup) {
            Ok(expanded) => Some((expanded.value, expanded.variables)),
            Err(ExpandError::Missing(names)) => {
                let listed = names
                    .iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let plural = if names.len() == 1 { "is" } else { "are" };
                self.problem(
                    path,
                    format!("environment variable {listed} {plural} not set (or empty)"),
                    format!(
                        "export {} before starting, or write `${{{}:-default}}` to fall back to a default",
                        names[0], names[0]
                    ),
                );
                None
            }
            Err(ExpandError::Syntax(message)) => {
                self.problem(
                    path,
                    message,
                    "write references as `${NAME}` and a literal `$` as `$$`",
                );
                None
            }
        }
    }

    fn duration(&mut self, path: &str, seconds: Option<f64>, default: Duration) -> Duration {
        match seconds {
            None => default,
            Some(seconds) if seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0 => {
                Duration::from_secs_f64(seconds)
            }
            Some(seconds) => {
                self.problem(
                    path,
                    format!("{seconds} is not a usable number of seconds"),
                    "give a number of seconds greater than 0 and at most 86400",
                );
                default
            }
        }
    }
}

pub(crate) fn validate(
    source: &str,
    raw: RawConfig,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut checker = Checker {
        problems: Vec::new(),
        lookup,
    };

    let listen_text = raw
        .server
        .listen
        .as_deref()
        .and_then(|listen| checker.text("server.listen", listen))
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen = match listen_text.parse::<SocketAddr>() {
        Ok(listen) => listen,
        Err(_) => {
            checker.problem(
                "server.listen",
                format!("`{listen_text}` is not an address with a port"),
                "write it as IP:PORT, for example \"127.0.0.1:8080\" or \"0.0.0.0:8080\"",
            );
            DEFAULT_LISTEN.parse().expect("valid constant")
        }
    };
    let master_key = raw
        .server
        .master_key
        .as_deref()
        .and_then(|key| checker.secret("server.master_key", key));
    if let Some(key) = &master_key
        && key.expose().len() < 8
    {
        checker.problem(
            "server.master_key",
            "the master key is shorter than 8 characters",
            "use a long random value, for example from `openssl rand -hex 32`",
        );
    }
    let allow_unauthenticated = raw.server.allow_unauthenticated.unwrap_or(false);
    if raw.server.master_key.is_none() && !listen.ip().is_loopback() && !allow_unauthenticated {
        checker.problem(
            "server.master_key",
            format!("no master key is set and the gateway listens on {listen}, beyond this machine"),
            "set master_key = \"${SWITCHBOARD_MASTER_KEY}\", listen on 127.0.0.1, or set allow_unauthenticated = true on purpose",
        );
    }
    let max_body_bytes = match raw.server.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(bytes) if (1024..=1 << 32).contains(&bytes) => bytes,
        Some(bytes) => {
            checker.problem(
                "server.max_body_bytes",
                format!("{bytes} bytes is outside the accepted range"),
                "give a size between 1024 and 4294967296 bytes",
            );
            DEFAULT_MAX_BODY_BYTES
        }
    };
    let shutdown_grace = checker.duration(
        "server.shutdown_grace_secs",
        raw.server.shutdown_grace_secs,
        Duration::from_secs(30),
    );
    let mut idle_timeout = checker.duration(
        "server.idle_timeout_secs",
        raw.server.idle_timeout_secs,
        Duration::from_secs(600),
    );
    if idle_timeout < Duration::from_secs(1) {
        checker.problem(
            "server.idle_timeout_secs",
            format!(
                "{} s would close connections between requests",
                idle_timeout.as_secs_f64()
            ),
            "give at least 1 second (600 by default)",
        );
        idle_timeout = Duration::from_secs(600);
    }
    let worker_threads = match raw.server.worker_threads {
        None => None,
        Some(threads) if (1..=MAX_WORKER_THREADS).contains(&threads) => Some(threads as usize),
        Some(threads) => {
            checker.problem(
                "server.worker_threads",
                format!("{threads} threads is outside the accepted range"),
                format!(
                    "give a number between 1 and {MAX_WORKER_THREADS}, or leave it out for one thread per CPU"
                ),
            );
            None
        }
    };
    let scheduler = match raw.server.scheduler.as_deref() {
        None | Some("per-thread") => Scheduler::PerThread,
        Some("work-stealing") => Scheduler::WorkStealing,
        Some(other) => {
            checker.problem(
                "server.scheduler",
                format!("unknown scheduler `{other}`"),
                "use per-thread (each serving thread runs its own connections) or work-stealing (one runtime whose threads share every task)",
            );
            Scheduler::PerThread
        }
    };

    let storage_text = raw
        .storage
        .url
        .as_deref()
        .and_then(|url| checker.text("storage.url", url))
        .unwrap_or_else(|| "sqlite://switchboard.db".to_owned());
    let storage_url = parse_storage_url(&mut checker, &storage_text);
    let redis_url = raw
        .storage
        .redis_url
        .as_deref()
        .and_then(|url| checker.secret("storage.redis_url", url));
    if let Some(url) = &redis_url
        && !url.expose().starts_with("redis://")
    {
        checker.problem(
            "storage.redis_url",
            "a Redis URL starts with redis:// (TLS to Redis is not built in)",
            "write redis://HOST:6379 (with redis://:PASSWORD@HOST:6379 for a password)",
        );
    }
    let redis_prefix = raw
        .storage
        .redis_prefix
        .as_deref()
        .and_then(|prefix| checker.text("storage.redis_prefix", prefix))
        .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned());
    let retention_days = match raw.storage.retention_days {
        None => None,
        Some(days) if (1..=36_500).contains(&days) => Some(days as u32),
        Some(days) => {
            checker.problem(
                "storage.retention_days",
                format!("{days} is not a usable number of days"),
                "give a number of days from 1 to 36500, or leave it out to keep every record",
            );
            None
        }
    };
    let journal_dir = match raw.storage.journal_dir.as_deref() {
        Some(text) => checker
            .text("storage.journal_dir", text)
            .filter(|text| !text.is_empty())
            .map(PathBuf::from),
        None => match &storage_url {
            StorageUrl::SqliteFile(path) => {
                let mut name = path.as_os_str().to_owned();
                name.push(".journal");
                Some(PathBuf::from(name))
            }
            _ => None,
        },
    };
    let record_queue = match raw.storage.record_queue {
        None => 65_536,
        Some(size) if (16..=10_000_000).contains(&size) => size as usize,
        Some(size) => {
            checker.problem(
                "storage.record_queue",
                format!("{size} is outside the accepted range"),
                "give a queue size between 16 and 10000000",
            );
            65_536
        }
    };
    let record_queue_bytes = match raw.storage.record_queue_mib {
        None => 256 << 20,
        Some(mib) if (1..=65_536).contains(&mib) => (mib as usize) << 20,
        Some(mib) => {
            checker.problem(
                "storage.record_queue_mib",
                format!("{mib} MiB is outside the accepted range"),
                "give the memory queued records may hold in MiB, from 1 to 65536 (the default is 256)",
            );
            256 << 20
        }
    };

    let cache = cache_config(&mut checker, &raw.cache, raw.storage.redis_url.is_some());
    let telemetry = telemetry_config(&mut checker, &raw.telemetry);
    let logging = logging_config(&mut checker, &raw.logging);

    let mut models = Vec::with_capacity(raw.models.len());
    let mut model_names: HashMap<String, usize> = HashMap::new();
    let mut deployment_names: HashSet<String> = HashSet::new();
    if raw.models.is_empty() {
        checker.problem(
            "models",
            "no model is declared",
            "add at least one [[models]] table with a name and a [[models.deployments]] entry",
        );
    }
    for (model_index, raw_model) in raw.models.into_iter().enumerate() {
        let path = format!("models[{model_index}]");
        let name = raw_model.name.trim().to_owned();
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            checker.problem(
                &format!("{path}.name"),
                "a model name must be 1 to 256 printable characters",
                "give the public name clients will send, such as \"gpt-4o\"",
            );
        }
        if let Some(first) = model_names.insert(name.clone(), model_index) {
            checker.problem(
                &format!("{path}.name"),
                format!("model name `{name}` is already declared at models[{first}]"),
                "give each [[models]] a unique name, or add this deployment to the first one",
            );
        }
        if raw_model.deployments.is_empty() {
            checker.problem(
                &format!("{path}.deployments"),
                format!("model `{name}` has no deployment"),
                "add a [[models.deployments]] table under it",
            );
        }
        // The group's timeouts are the defaults of its deployments.
        let group_timeouts = Timeouts {
            connect: checker.duration(
                &format!("{path}.routing.connect_timeout_secs"),
                raw_model.routing.connect_timeout_secs,
                Timeouts::default().connect,
            ),
            request: Timeouts::default().request,
            stream_idle: checker.duration(
                &format!("{path}.routing.stream_idle_timeout_secs"),
                raw_model.routing.stream_idle_timeout_secs,
                Timeouts::default().stream_idle,
            ),
        };
        let mut deployments = Vec::with_capacity(raw_model.deployments.len());
        for (deployment_index, raw_deployment) in raw_model.deployments.into_iter().enumerate() {
            let deployment_path = format!("{path}.deployments[{deployment_index}]");
            if let Some(deployment) = validate_deployment(
                &mut checker,
                &deployment_path,
                &name,
                deployment_index,
                raw_deployment,
                group_timeouts,
            ) {
                if !deployment_names.insert(deployment.name.clone()) {
                    checker.problem(
                        &format!("{deployment_path}.name"),
                        format!("deployment name `{}` is used twice", deployment.name),
                        "give every deployment a unique name",
                    );
                }
                deployments.push(deployment);
            }
        }
        let routing =
            validate_routing(&mut checker, &format!("{path}.routing"), &raw_model.routing);
        if !logging.requests && raw_model.log_bodies == Some(true) {
            checker.problem(
                &format!("{path}.log_bodies"),
                "bodies are kept in the request log, which `logging.requests = false` turns off",
                "remove `log_bodies = true`, or record requests (`[logging] requests = true`)",
            );
        }
        models.push(ModelConfig {
            name,
            deployments,
            fallbacks: raw_model.fallbacks,
            routing,
            log_bodies: raw_model.log_bodies.unwrap_or(false),
        });
    }
    for (index, model) in models.iter().enumerate() {
        for (position, fallback) in model.fallbacks.iter().enumerate() {
            let path = format!("models[{index}].fallbacks[{position}]");
            if *fallback == model.name {
                checker.problem(
                    &path,
                    format!("model `{}` falls back to itself", model.name),
                    "remove it from its own fallbacks",
                );
            } else if !model_names.contains_key(fallback) {
                checker.problem(
                    &path,
                    format!("fallback `{fallback}` is not a declared model"),
                    "name a model declared in another [[models]] table",
                );
            }
        }
    }

    if checker.problems.is_empty() {
        Ok(Config {
            source: source.to_owned(),
            server: ServerConfig {
                listen,
                master_key,
                max_body_bytes: max_body_bytes as usize,
                shutdown_grace,
                idle_timeout,
                worker_threads,
                scheduler,
            },
            storage: StorageConfig {
                url: storage_url,
                record_queue,
                record_queue_bytes,
                redis_url,
                redis_fail_open: raw.storage.redis_fail_open.unwrap_or(false),
                redis_fail_open_budgets: raw.storage.redis_fail_open_budgets.unwrap_or(false),
                redis_prefix,
                redis_leases: raw.storage.redis_leases.unwrap_or(true),
                journal_dir,
                retention_days,
            },
            cache,
            telemetry,
            logging,
            metrics: MetricsConfig {
                enabled: raw.metrics.enabled.unwrap_or(true),
                key_labels: raw.metrics.key_labels.unwrap_or(false),
            },
            models,
        })
    } else {
        Err(ConfigError {
            source_name: source.to_owned(),
            problems: checker.problems,
        })
    }
}

fn parse_storage_url(checker: &mut Checker<'_>, text: &str) -> StorageUrl {
    if text == "sqlite::memory:" || text == "sqlite://:memory:" {
        return StorageUrl::SqliteMemory;
    }
    if let Some(path) = text
        .strip_prefix("sqlite://")
        .or_else(|| text.strip_prefix("sqlite:"))
    {
        let path = path.split('?').next().unwrap_or_default();
        if !path.is_empty() {
            return StorageUrl::SqliteFile(PathBuf::from(path));
        }
    }
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        return parse_postgres_url(checker, text);
    }
    checker.problem(
        "storage.url",
        format!(
            "`{}` is not a supported storage URL",
            crate::masked_url_text(text)
        ),
        "write sqlite://PATH/TO/FILE.db (created on first start), sqlite::memory:, \
         or postgres://USER:PASSWORD@HOST:PORT/DATABASE",
    );
    StorageUrl::SqliteMemory
}

/// Connection parameters the PostgreSQL driver understands in the query
/// string. Anything else is refused rather than silently ignored, so that a
/// misspelt `sslmode` cannot quietly turn into an unencrypted connection.
const POSTGRES_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Checks a `postgres://` URL as far as can be done without connecting.
/// The text printed in problems has its password masked: the URL may hold
/// one expanded from the environment.
fn parse_postgres_url(checker: &mut Checker<'_>, text: &str) -> StorageUrl {
    const FIX: &str = "write postgres://USER:PASSWORD@HOST:PORT/DATABASE \
                       (percent-encode `@`, `:`, `/`, `?` and `#` in the password as %40, %3A, %2F, %3F, %23), \
                       for example postgres://switchboard:${PGPASSWORD}@db.internal:5432/switchboard";
    let shown = crate::masked_url_text(text);
    let url = match url::Url::parse(text) {
        Ok(url) => url,
        Err(error) => {
            checker.problem(
                "storage.url",
                format!("`{shown}` is not a valid PostgreSQL URL: {error}"),
                FIX,
            );
            return StorageUrl::SqliteMemory;
        }
    };
    // Each problem with its own fix.
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut host_parameter = false;
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "host" | "hostaddr" => host_parameter = !value.is_empty(),
            "port" if value.parse::<u16>().is_err() => problems.push((
                format!("the port parameter `{value}` is not a port number"),
                "give a port between 1 and 65535".to_owned(),
            )),
            "statement-cache-capacity" if value.parse::<usize>().is_err() => problems.push((
                format!("statement-cache-capacity `{value}` is not a number"),
                "give a number of statements (0 turns the cache off, for PgBouncer before 1.21 in transaction mode)"
                    .to_owned(),
            )),
            "sslmode" | "ssl-mode" => match value.as_ref() {
                "disable" | "allow" | "prefer" => {}
                "require" | "verify-ca" | "verify-full" => problems.push((
                    format!(
                        "sslmode={value} needs TLS, which this build's PostgreSQL driver does not include"
                    ),
                    "use sslmode=disable or sslmode=prefer (which connects without TLS), and reach a database \
                     that requires TLS through a proxy on a trusted network that adds it"
                        .to_owned(),
                )),
                other => problems.push((
                    format!("sslmode `{other}` is not a TLS mode"),
                    "use one of disable, allow, prefer".to_owned(),
                )),
            },
            name if POSTGRES_PARAMETERS.contains(&name)
                || (name.starts_with("options[") && name.ends_with(']')) => {}
            name => problems.push((
                format!("`{name}` is not a connection parameter the PostgreSQL driver knows"),
                format!(
                    "remove it, or use one of: {}, options[NAME]",
                    POSTGRES_PARAMETERS.join(", ")
                ),
            )),
        }
    }
    if url.host_str().is_none_or(str::is_empty) && !host_parameter {
        problems.push(("it names no host".to_owned(), FIX.to_owned()));
    }
    if url.path().trim_start_matches('/').contains('/') {
        problems.push((
            format!(
                "`{}` is not a database name (one path segment is expected)",
                url.path()
            ),
            FIX.to_owned(),
        ));
    }
    if problems.is_empty() {
        return StorageUrl::Postgres(text.to_owned());
    }
    for (problem, fix) in problems {
        checker.problem(
            "storage.url",
            format!("`{shown}` is not a usable PostgreSQL URL: {problem}"),
            fix,
        );
    }
    StorageUrl::SqliteMemory
}

fn validate_deployment(
    checker: &mut Checker<'_>,
    path: &str,
    model_name: &str,
    index: usize,
    raw: RawDeployment,
    defaults: Timeouts,
) -> Option<DeploymentConfig> {
    let provider_name = raw.provider.trim().to_ascii_lowercase();
    let (provider, default_base) = match provider_name.as_str() {
        "openai" => (ProviderKind::OpenAi, Some("https://api.openai.com/v1")),
        "azure" => (ProviderKind::Azure, None),
        "simulated" => (ProviderKind::Simulated, None),
        "anthropic" => (ProviderKind::Anthropic, Some("https://api.anthropic.com")),
        "gemini" => (
            ProviderKind::Gemini,
            Some("https://generativelanguage.googleapis.com"),
        ),
        "bedrock" => (ProviderKind::Bedrock, None),
        other => match COMPATIBLE_VENDORS.iter().find(|(name, _)| *name == other) {
            Some((vendor, base)) => (ProviderKind::OpenAiCompatible { vendor }, *base),
            None => {
                checker.problem(
                    &format!("{path}.provider"),
                    format!("unknown provider `{}`", raw.provider),
                    format!("use one of: {}", provider_names()),
                );
                return None;
            }
        },
    };

    let name = match &raw.name {
        Some(name) => checker.text(&format!("{path}.name"), name)?,
        None if index == 0 => model_name.to_owned(),
        None => format!("{model_name}#{index}"),
    };
    let upstream_model = match &raw.model {
        Some(model) => checker.text(&format!("{path}.model"), model)?,
        None if provider == ProviderKind::Simulated => model_name.to_owned(),
        None if provider == ProviderKind::Azure && raw.deployment.is_some() => {
            raw.deployment.clone().unwrap_or_default()
        }
        None => {
            checker.problem(
                &format!("{path}.model"),
                format!("deployment of `{model_name}` does not say which upstream model to call"),
                "add model = \"<the provider's model id>\", for example \"gpt-4o-mini\"",
            );
            return None;
        }
    };

    // Bedrock: the region picks the endpoint unless api_base names one.
    let mut region = None;
    if provider == ProviderKind::Bedrock {
        region = match &raw.region {
            Some(text) => checker.text(&format!("{path}.region"), text),
            None => {
                (checker.lookup)("AWS_REGION").or_else(|| (checker.lookup)("AWS_DEFAULT_REGION"))
            }
        };
        if region.is_none() {
            checker.problem(
                &format!("{path}.region"),
                "a bedrock deployment needs an AWS region",
                "add region = \"us-east-1\" (or export AWS_REGION)",
            );
        }
    } else {
        for (key, present) in [
            ("region", raw.region.is_some()),
            ("aws_profile", raw.aws_profile.is_some()),
            ("aws_access_key_id", raw.aws_access_key_id.is_some()),
            ("aws_secret_access_key", raw.aws_secret_access_key.is_some()),
            ("aws_session_token", raw.aws_session_token.is_some()),
        ] {
            if present {
                checker.problem(
                    &format!("{path}.{key}"),
                    format!("`{key}` applies to bedrock deployments only"),
                    "remove it, or set provider = \"bedrock\"",
                );
            }
        }
    }
    let aws_keys = match (&raw.aws_access_key_id, &raw.aws_secret_access_key) {
        (Some(id), Some(secret)) => {
            let id = checker.secret(&format!("{path}.aws_access_key_id"), id);
            let secret = checker.secret(&format!("{path}.aws_secret_access_key"), secret);
            let token = raw
                .aws_session_token
                .as_deref()
                .and_then(|token| checker.secret(&format!("{path}.aws_session_token"), token));
            id.zip(secret)
                .map(|(access_key_id, secret_access_key)| AwsKeys {
                    access_key_id,
                    secret_access_key,
                    session_token: token,
                })
        }
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            checker.problem(
                &format!("{path}.aws_access_key_id"),
                "aws_access_key_id and aws_secret_access_key go together",
                "set both, or neither (to use the environment or aws_profile)",
            );
            None
        }
    };
    let api_base = match (&raw.api_base, default_base) {
        (Some(base), _) => {
            let text = checker.text(&format!("{path}.api_base"), base)?;
            parse_base(checker, &format!("{path}.api_base"), &text)
        }
        (None, Some(base)) => parse_base(checker, &format!("{path}.api_base"), base),
        (None, None) if matches!(provider, ProviderKind::Simulated | ProviderKind::Bedrock) => None,
        (None, None) => {
            let example = if provider == ProviderKind::Azure {
                "https://YOUR-RESOURCE.openai.azure.com"
            } else {
                "http://127.0.0.1:8000/v1"
            };
            checker.problem(
                &format!("{path}.api_base"),
                format!("provider `{}` needs an api_base", provider.name()),
                format!("add api_base = \"{example}\""),
            );
            None
        }
    };
    if provider == ProviderKind::Bedrock && raw.api_key.is_some() {
        checker.problem(
            &format!("{path}.api_key"),
            "bedrock signs requests with AWS credentials, not an API key",
            "remove api_key; export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or set aws_profile",
        );
    }
    let unsupported_params = match raw.unsupported_params.as_deref() {
        None | Some("reject") => UnsupportedParams::Reject,
        Some("drop") => UnsupportedParams::Drop,
        Some(other) => {
            checker.problem(
                &format!("{path}.unsupported_params"),
                format!("`{other}` is not a policy"),
                "use \"reject\" (the default) or \"drop\"",
            );
            UnsupportedParams::Reject
        }
    };
    if provider == ProviderKind::Simulated && raw.api_base.is_some() {
        checker.problem(
            &format!("{path}.api_base"),
            "the simulated provider makes no network calls",
            "remove api_base, or pick a real provider",
        );
    }

    let api_key = raw
        .api_key
        .as_deref()
        .and_then(|key| checker.secret(&format!("{path}.api_key"), key));
    if matches!(
        provider,
        ProviderKind::OpenAi | ProviderKind::Azure | ProviderKind::Anthropic | ProviderKind::Gemini
    ) && raw.api_key.is_none()
    {
        let variable = match provider {
            ProviderKind::Azure => "AZURE_OPENAI_API_KEY",
            ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
            ProviderKind::Gemini => "GEMINI_API_KEY",
            _ => "OPENAI_API_KEY",
        };
        checker.problem(
            &format!("{path}.api_key"),
            format!("provider `{}` needs an API key", provider.name()),
            format!("add api_key = \"${{{variable}}}\" and export {variable}"),
        );
    }

    let mut api_version = None;
    let mut azure_deployment = None;
    if provider == ProviderKind::Azure {
        api_version = Some(match &raw.api_version {
            Some(version) => checker.text(&format!("{path}.api_version"), version)?,
            None => DEFAULT_AZURE_API_VERSION.to_owned(),
        });
        azure_deployment = Some(match &raw.deployment {
            Some(deployment) => checker.text(&format!("{path}.deployment"), deployment)?,
            None => upstream_model.clone(),
        });
    } else {
        for (key, present) in [
            ("api_version", raw.api_version.is_some()),
            ("deployment", raw.deployment.is_some()),
        ] {
            if present {
                checker.problem(
                    &format!("{path}.{key}"),
                    format!("`{key}` applies to Azure deployments only"),
                    "remove it, or set provider = \"azure\"",
                );
            }
        }
    }

    let mut headers = Vec::with_capacity(raw.headers.len());
    for (header, value) in &raw.headers {
        let header_path = format!("{path}.headers.{header}");
        let Ok(header_name) = http::HeaderName::from_bytes(header.as_bytes()) else {
            checker.problem(
                &header_path,
                format!("`{header}` is not a valid HTTP header name"),
                "use letters, digits and `-` only",
            );
            continue;
        };
        if matches!(
            header_name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            checker.problem(
                &header_path,
                format!("header `{header}` is set by the gateway itself"),
                "remove it",
            );
            continue;
        }
        if let Some(secret) = checker.secret(&header_path, value) {
            if http::HeaderValue::from_str(secret.expose()).is_err() {
                checker.problem(
                    &header_path,
                    "the value holds characters not allowed in a header",
                    "use visible ASCII characters only",
                );
                continue;
            }
            headers.push((header_name, secret));
        }
    }

    let timeouts = Timeouts {
        connect: checker.duration(
            &format!("{path}.connect_timeout_secs"),
            raw.connect_timeout_secs,
            defaults.connect,
        ),
        request: checker.duration(
            &format!("{path}.timeout_secs"),
            raw.timeout_secs,
            defaults.request,
        ),
        stream_idle: checker.duration(
            &format!("{path}.stream_idle_timeout_secs"),
            raw.stream_idle_timeout_secs,
            defaults.stream_idle,
        ),
    };

    let simulation = match (provider, raw.simulation) {
        (ProviderKind::Simulated, simulation) => Some(validate_simulation(
            checker,
            &format!("{path}.simulation"),
            simulation.unwrap_or_default(),
        )),
        (_, Some(_)) => {
            checker.problem(
                &format!("{path}.simulation"),
                "simulation settings apply to the simulated provider only",
                "remove the simulation table, or set provider = \"simulated\"",
            );
            None
        }
        (_, None) => None,
    };

    Some(DeploymentConfig {
        name,
        provider,
        upstream_model,
        api_base,
        api_key,
        api_version,
        azure_deployment,
        headers,
        timeouts,
        stream_usage: raw.stream_usage.unwrap_or(true),
        unsupported_params,
        region,
        aws_profile: raw.aws_profile.clone(),
        aws_keys,
        weight: match raw.weight {
            Some(0) => {
                checker.problem(
                    &format!("{path}.weight"),
                    "a weight of 0 would never be chosen",
                    "give a weight of 1 or more, or remove the deployment",
                );
                1
            }
            Some(weight) => weight,
            None => 1,
        },
        priority: raw.priority.unwrap_or(0),
        tags: raw
            .tags
            .iter()
            .map(|tag| tag.trim().to_owned())
            .filter(|tag| !tag.is_empty())
            .collect(),
        requests_per_minute: positive(checker, &format!("{path}.rpm"), raw.rpm),
        tokens_per_minute: positive(checker, &format!("{path}.tpm"), raw.tpm),
        price: raw
            .price
            .as_ref()
            .and_then(|price| validate_price(checker, &format!("{path}.price"), price)),
        simulation,
    })
}

/// Checks every figure of a deployment's `price`, naming each one at fault.
fn validate_price(
    checker: &mut Checker<'_>,
    path: &str,
    raw: &crate::raw::RawPrice,
) -> Option<Price> {
    let figures = [
        ("input_per_mtok", Some(raw.input_per_mtok)),
        ("output_per_mtok", Some(raw.output_per_mtok)),
        ("cached_input_per_mtok", raw.cached_input_per_mtok),
        ("cache_write_per_mtok", raw.cache_write_per_mtok),
        ("reasoning_per_mtok", raw.reasoning_per_mtok),
    ];
    let mut valid = true;
    for (key, value) in figures {
        if let Some(message) = value.and_then(crate::prices::price_problem) {
            checker.problem(
                &format!("{path}.{key}"),
                format!("`{key}` is not a price: {message}"),
                format!(
                    "give USD per million tokens, a number from 0 to 1000000, such as {key} = 2.5"
                ),
            );
            valid = false;
        }
    }
    valid.then_some(Price {
        input_per_mtok: raw.input_per_mtok,
        output_per_mtok: raw.output_per_mtok,
        cached_input_per_mtok: raw.cached_input_per_mtok,
        cache_write_per_mtok: raw.cache_write_per_mtok,
        reasoning_per_mtok: raw.reasoning_per_mtok,
    })
}

fn parse_base(checker: &mut Checker<'_>, path: &str, text: &str) -> Option<url::Url> {
    match url::Url::parse(text.trim_end_matches('/')) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            if url.query().is_some() || url.fragment().is_some() {
                checker.problem(
                    path,
                    format!("`{text}` has a query or fragment"),
                    "give the base URL only, such as https://api.example.com/v1",
                );
                return None;
            }
            Some(url)
        }
        _ => {
            checker.problem(
                path,
                format!("`{text}` is not an http(s) URL"),
                "write it like https://api.example.com/v1",
            );
            None
        }
    }
}

fn validate_simulation(checker: &mut Checker<'_>, path: &str, raw: RawSimulation) -> Simulation {
    let defaults = Simulation::default();
    let tokens_per_second = match raw.tokens_per_second {
        Some(rate) if !(rate == 0.0 || (0.01..=1_000_000.0).contains(&rate)) => {
            checker.problem(
                &format!("{path}.tokens_per_second"),
                format!("{rate} is not a usable rate"),
                "give 0 (every token at once) or a rate from 0.01 to 1000000",
            );
            0.0
        }
        Some(rate) => rate,
        None => defaults.tokens_per_second,
    };
    let failure_rate = match raw.failure_rate {
        Some(rate) if !(0.0..=1.0).contains(&rate) => {
            checker.problem(
                &format!("{path}.failure_rate"),
                format!("{rate} is not between 0 and 1"),
                "give the share of requests that should fail, from 0.0 to 1.0",
            );
            0.0
        }
        Some(rate) => rate,
        None => defaults.failure_rate,
    };
    let embedding_dimensions = match raw.embedding_dimensions {
        Some(0) => {
            checker.problem(
                &format!("{path}.embedding_dimensions"),
                "an embedding needs at least one dimension",
                "give a size such as 256 or 1536",
            );
            defaults.embedding_dimensions
        }
        Some(size) if size > 65_536 => {
            checker.problem(
                &format!("{path}.embedding_dimensions"),
                format!("{size} dimensions is more than the simulated provider makes"),
                "give a size from 1 to 65536",
            );
            defaults.embedding_dimensions
        }
        Some(size) => size,
        None => defaults.embedding_dimensions,
    };
    for (key, value) in [("latency_ms", raw.latency_ms), ("ttft_ms", raw.ttft_ms)] {
        if value.is_some_and(|millis| millis > 3_600_000) {
            checker.problem(
                &format!("{path}.{key}"),
                "a simulated delay longer than an hour is surely a mistake",
                "give a delay in milliseconds, at most 3600000",
            );
        }
    }
    let reply_tokens = match raw.reply_tokens {
        Some(tokens) if tokens == 0 || tokens > 100_000 => {
            checker.problem(
                &format!("{path}.reply_tokens"),
                format!("{tokens} is outside the accepted range"),
                "give a reply length from 1 to 100000 tokens",
            );
            defaults.reply_tokens
        }
        Some(tokens) => tokens,
        None => defaults.reply_tokens,
    };
    Simulation {
        latency: Duration::from_millis(raw.latency_ms.unwrap_or(0).min(3_600_000)),
        time_to_first_token: Duration::from_millis(raw.ttft_ms.unwrap_or(0).min(3_600_000)),
        tokens_per_second,
        failure_rate,
        reply: raw.reply,
        reply_tokens,
        embedding_dimensions,
        seed: raw.seed.unwrap_or(defaults.seed),
    }
}

fn validate_routing(checker: &mut Checker<'_>, path: &str, raw: &RawRouting) -> Routing {
    let defaults = Routing::default();
    let strategy = match raw.strategy.as_deref() {
        None | Some("round-robin") => RoutingStrategy::RoundRobin,
        Some("weighted") => RoutingStrategy::Weighted,
        Some("least-busy") => RoutingStrategy::LeastBusy,
        Some("latency") => RoutingStrategy::LowestLatency,
        Some("cost") => RoutingStrategy::LowestCost,
        Some("headroom") => RoutingStrategy::MostHeadroom,
        Some(other) => {
            checker.problem(
                &format!("{path}.strategy"),
                format!("unknown routing strategy `{other}`"),
                "use one of: round-robin, weighted, least-busy, latency, cost, headroom",
            );
            defaults.strategy
        }
    };
    let max_attempts = match raw.max_attempts {
        Some(attempts) if !(1..=10).contains(&attempts) => {
            checker.problem(
                &format!("{path}.max_attempts"),
                format!("{attempts} attempts is outside the accepted range"),
                "give 1 (no retry) to 10 attempts",
            );
            defaults.max_attempts
        }
        Some(attempts) => attempts,
        None => defaults.max_attempts,
    };
    let retry_backoff = raw
        .retry_backoff_ms
        .map_or(defaults.retry_backoff, Duration::from_millis);
    let retry_max_backoff = raw
        .retry_max_backoff_ms
        .map_or(defaults.retry_max_backoff, Duration::from_millis);
    if retry_max_backoff < retry_backoff || retry_max_backoff > Duration::from_secs(600) {
        checker.problem(
            &format!("{path}.retry_max_backoff_ms"),
            "the largest retry delay must be at least the first one, and at most 600000 ms",
            "raise retry_max_backoff_ms or lower retry_backoff_ms",
        );
    }
    let timeout = raw.timeout_secs.map(|seconds| {
        checker.duration(
            &format!("{path}.timeout_secs"),
            Some(seconds),
            Duration::ZERO,
        )
    });
    let first_token_timeout = raw.first_token_timeout_secs.map(|seconds| {
        checker.duration(
            &format!("{path}.first_token_timeout_secs"),
            Some(seconds),
            Duration::ZERO,
        )
    });
    let mut fallback_on = defaults.fallback_on.clone();
    if let Some(triggers) = &raw.fallback_on {
        fallback_on = FallbackTriggers {
            server_error: false,
            rate_limited: false,
            timeout: false,
            connection: false,
            invalid_response: false,
            context_window: false,
            content_policy: false,
            statuses: Vec::new(),
        };
        for (index, trigger) in triggers.iter().enumerate() {
            match trigger {
                RawTrigger::Class(class) => match class.as_str() {
                    "5xx" => fallback_on.server_error = true,
                    "429" => fallback_on.rate_limited = true,
                    "timeout" => fallback_on.timeout = true,
                    "connection" => fallback_on.connection = true,
                    "invalid_response" => fallback_on.invalid_response = true,
                    "context_window" => fallback_on.context_window = true,
                    "content_policy" => fallback_on.content_policy = true,
                    other => checker.problem(
                        &format!("{path}.fallback_on[{index}]"),
                        format!("unknown fallback trigger `{other}`"),
                        "use 5xx, 429, timeout, connection, invalid_response, context_window, content_policy, or an HTTP status number",
                    ),
                },
                RawTrigger::Status(status) if (400..=599).contains(status) => fallback_on.statuses.push(*status),
                RawTrigger::Status(status) => checker.problem(
                    &format!("{path}.fallback_on[{index}]"),
                    format!("{status} is not an error status"),
                    "give a status from 400 to 599",
                ),
            }
        }
    }
    let circuit_breaker_failures = match raw.circuit_breaker_failures {
        Some(0) => {
            checker.problem(
                &format!("{path}.circuit_breaker_failures"),
                "0 would open the circuit before any failure",
                "give 1 or more consecutive failures",
            );
            defaults.circuit_breaker_failures
        }
        Some(failures) => failures,
        None => defaults.circuit_breaker_failures,
    };
    let circuit_breaker_cooldown = checker.duration(
        &format!("{path}.circuit_breaker_cooldown_secs"),
        raw.circuit_breaker_cooldown_secs,
        defaults.circuit_breaker_cooldown,
    );
    let probe_interval = raw.probe_interval_secs.map(|seconds| {
        checker.duration(
            &format!("{path}.probe_interval_secs"),
            Some(seconds),
            Duration::from_secs(30),
        )
    });
    let probe = match raw.probe.as_deref() {
        None | Some("models") => ProbeKind::Models,
        Some("completion") => ProbeKind::Completion,
        Some(other) => {
            checker.problem(
                &format!("{path}.probe"),
                format!("unknown probe `{other}`"),
                "use \"models\" (free: lists the upstream's models) or \"completion\" (a billed one-token request)",
            );
            ProbeKind::Models
        }
    };
    Routing {
        hedge: raw.hedge.unwrap_or(false),
        hedge_delay: raw.hedge_delay_ms.map(Duration::from_millis),
        probe_interval,
        probe,
        strategy,
        max_attempts,
        retry_backoff,
        retry_max_backoff,
        timeout,
        first_token_timeout,
        fallback_on,
        circuit_breaker_failures,
        circuit_breaker_cooldown,
        prompt_cache_affinity: raw
            .prompt_cache_affinity
            .unwrap_or(defaults.prompt_cache_affinity),
        affinity_min_prefix_chars: raw
            .affinity_min_prefix_chars
            .unwrap_or(defaults.affinity_min_prefix_chars),
    }
}

fn logging_config(checker: &mut Checker<'_>, raw: &crate::raw::RawLogging) -> LoggingConfig {
    let redact = match &raw.redact {
        None => crate::BUILT_IN_REDACTIONS.map(str::to_owned).to_vec(),
        Some(names) => {
            for (index, name) in names.iter().enumerate() {
                if !crate::BUILT_IN_REDACTIONS.contains(&name.as_str()) {
                    checker.problem(
                        &format!("logging.redact[{index}]"),
                        format!("unknown redaction `{name}`"),
                        "use api_keys, emails or card_numbers; add your own in logging.redact_patterns",
                    );
                }
            }
            names.clone()
        }
    };
    for (index, pattern) in raw.redact_patterns.iter().enumerate() {
        if let Err(error) = regex_lite::Regex::new(pattern) {
            checker.problem(
                &format!("logging.redact_patterns[{index}]"),
                format!("not a valid regular expression: {error}"),
                "write it in Rust regex syntax, e.g. \"ACME-[0-9]{8}\"",
            );
        }
    }
    let max_body_bytes = match raw.max_body_bytes {
        None => 65_536,
        Some(bytes) if (256..=16 << 20).contains(&bytes) => bytes as usize,
        Some(bytes) => {
            checker.problem(
                "logging.max_body_bytes",
                format!("{bytes} is outside the accepted range"),
                "give a size in bytes from 256 to 16777216",
            );
            65_536
        }
    };
    let requests = raw.requests.unwrap_or(true);
    if !requests && raw.bodies == Some(true) {
        checker.problem(
            "logging.bodies",
            "bodies are kept in the request log, which `logging.requests = false` turns off",
            "remove `bodies = true`, or record requests (`requests = true`)",
        );
    }
    LoggingConfig {
        requests,
        bodies: raw.bodies.unwrap_or(false),
        redact,
        redact_patterns: raw.redact_patterns.clone(),
        max_body_bytes,
    }
}

fn telemetry_config(checker: &mut Checker<'_>, raw: &crate::raw::RawTelemetry) -> TelemetryConfig {
    let otlp_endpoint = raw
        .otlp_endpoint
        .as_deref()
        .and_then(|endpoint| checker.text("telemetry.otlp_endpoint", endpoint))
        .and_then(|endpoint| {
            let trimmed = endpoint.trim_end_matches('/').to_owned();
            let scheme_ok = trimmed.starts_with("http://") || trimmed.starts_with("https://");
            let host_ok = trimmed
                .split_once("://")
                .is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains(char::is_whitespace));
            if scheme_ok && host_ok {
                Some(trimmed)
            } else {
                checker.problem(
                    "telemetry.otlp_endpoint",
                    format!("`{endpoint}` is not an http(s) URL"),
                    "give the collector's OTLP/HTTP base URL, such as \"http://127.0.0.1:4318\"",
                );
                None
            }
        });
    let sample_ratio = match raw.sample_ratio {
        None => 1.0,
        Some(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
        Some(ratio) => {
            checker.problem(
                "telemetry.sample_ratio",
                format!("{ratio} is not a share"),
                "give a number from 0 (none) to 1 (every request)",
            );
            1.0
        }
    };
    let service_name = raw
        .service_name
        .clone()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "switchboard".to_owned());
    let otlp_headers = raw
        .otlp_headers
        .iter()
        .filter_map(|(name, value)| {
            let path = format!("telemetry.otlp_headers.{name}");
            let secret = checker.secret(&path, value)?;
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                checker.problem(
                    &path,
                    "not a valid header name",
                    "use letters, digits and dashes",
                );
                return None;
            }
            Some((name.to_ascii_lowercase(), secret))
        })
        .collect();
    TelemetryConfig {
        otlp_endpoint,
        service_name,
        sample_ratio,
        otlp_headers,
    }
}

fn cache_config(
    checker: &mut Checker<'_>,
    raw: &crate::raw::RawCache,
    has_redis: bool,
) -> CacheConfig {
    let enabled = raw.enabled.unwrap_or(false);
    let backend = match raw.backend.as_deref() {
        None | Some("memory") => CacheBackend::Memory,
        Some("redis") => {
            if enabled && !has_redis {
                checker.problem(
                    "cache.backend",
                    "the redis backend needs a Redis",
                    "set storage.redis_url, or use backend = \"memory\"",
                );
            }
            CacheBackend::Redis
        }
        Some(other) => {
            checker.problem(
                "cache.backend",
                format!("unknown backend `{other}`"),
                "use \"memory\" or \"redis\"",
            );
            CacheBackend::Memory
        }
    };
    let scope = match raw.scope.as_deref() {
        None | Some("key") => CacheScope::Key,
        Some("team") => CacheScope::Team,
        Some("global") => CacheScope::Global,
        Some(other) => {
            checker.problem(
                "cache.scope",
                format!("unknown scope `{other}`"),
                "use \"key\" (each key its own answers), \"team\" or \"global\"",
            );
            CacheScope::Key
        }
    };
    let max_bytes = match raw.max_bytes {
        None => 64 << 20,
        Some(bytes) if (1024..=1 << 40).contains(&bytes) => bytes as usize,
        Some(bytes) => {
            checker.problem(
                "cache.max_bytes",
                format!("{bytes} is outside the accepted range"),
                "give a size in bytes between 1024 and 1099511627776",
            );
            64 << 20
        }
    };
    CacheConfig {
        enabled,
        backend,
        ttl: checker.duration("cache.ttl_secs", raw.ttl_secs, Duration::from_secs(300)),
        max_bytes,
        scope,
        nonzero_temperature: raw.nonzero_temperature.unwrap_or(false),
    }
}

/// A limit that, when given, must be at least 1.
fn positive(checker: &mut Checker<'_>, path: &str, value: Option<u64>) -> Option<u64> {
    match value {
        Some(0) => {
            checker.problem(
                path,
                "a limit of 0 would refuse every request",
                "give 1 or more, or remove the limit",
            );
            None
        }
        other => other,
    }
}
