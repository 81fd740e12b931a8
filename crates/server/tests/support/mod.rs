//! Shared setup for the server's integration tests: a real gateway on a
//! loopback port, configured from TOML, in front of testkit's mock upstream.

#![allow(dead_code)]

use std::time::Duration;

use switchboard_config::Config;
use switchboard_core::RequestRecord;
use switchboard_server::Running;
use tokio_util::sync::CancellationToken;

pub const MASTER_KEY: &str = "sb-test-master-key";
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-1234";

pub struct TestGateway {
    pub running: Option<Running>,
    pub base: String,
    pub shutdown: CancellationToken,
    pub http: reqwest::Client,
}

/// A config with the master key, an in-memory store and the given models.
pub fn config_with(models: &str, server_extra: &str) -> Config {
    config_stored_at("sqlite::memory:", models, server_extra)
}

/// As `config_with`, with the request log (and keys) at `storage_url`.
pub fn config_stored_at(storage_url: &str, models: &str, server_extra: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmaster_key = \"{MASTER_KEY}\"\n{server_extra}\n[storage]\nurl = \"{storage_url}\"\n{models}"
    );
    Config::from_toml_with_env("test.toml", &text, &|name| match name {
        "UPSTREAM_KEY" => Some(UPSTREAM_KEY.to_owned()),
        _ => None,
    })
    .unwrap_or_else(|error| panic!("{error}"))
}

/// One OpenAI-compatible model `chat` (upstream id `upstream-model`) and
/// one embeddings model `embed`, both at `base`, each tried once and never
/// rested: these tests look at what a single exchange does. `extra` goes
/// into the chat deployment's table.
pub fn openai_models(base: &str, extra: &str) -> String {
    openai_models_routed(
        base,
        extra,
        "max_attempts = 1\ncircuit_breaker_failures = 1000",
    )
}

/// As `openai_models`, with `routing` as both models' `[models.routing]`.
pub fn openai_models_routed(base: &str, extra: &str, routing: &str) -> String {
    format!(
        r#"
[[models]]
name = "chat"
[[models.deployments]]
name = "mock-openai"
provider = "openai-compatible"
api_base = "{base}"
model = "upstream-model"
api_key = "${{UPSTREAM_KEY}}"
{extra}
[models.routing]
{routing}
[[models]]
name = "embed"
[[models.deployments]]
name = "mock-embed"
provider = "openai-compatible"
api_base = "{base}"
model = "upstream-embed"
api_key = "${{UPSTREAM_KEY}}"
[models.routing]
{routing}
"#
    )
}

impl TestGateway {
    pub async fn start(config: Config) -> TestGateway {
        switchboard_testkit::install_crypto_provider();
        let shutdown = CancellationToken::new();
        let running = switchboard_server::start(&config, config.server.listen, shutdown.clone())
            .await
            .expect("gateway starts");
        let base = format!("http://{}", running.address);
        TestGateway {
            running: Some(running),
            base,
            shutdown,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A POST with the master key and a JSON content type.
    pub fn post(&self, path: &str, body: &str) -> reqwest::RequestBuilder {
        self.post_as(MASTER_KEY, path, body)
    }

    /// A POST with `secret` (a virtual key, say) and a JSON content type.
    pub fn post_as(&self, secret: &str, path: &str, body: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(secret)
            .header("content-type", "application/json")
            .body(body.to_owned())
    }

    /// Makes a virtual key through the admin API (`body` as `POST
    /// /admin/keys` takes it) and returns its id and its secret.
    pub async fn create_key(&self, body: serde_json::Value) -> (String, String) {
        let created: serde_json::Value = self
            .send("/admin/keys", &body.to_string())
            .await
            .json()
            .await
            .expect("the key as JSON");
        (
            created["id"].as_str().expect("the key's id").to_owned(),
            created["key"]
                .as_str()
                .expect("the key's secret")
                .to_owned(),
        )
    }

    /// Sends `post(path, body)` and returns the response.
    pub async fn send(&self, path: &str, body: &str) -> reqwest::Response {
        self.post(path, body)
            .send()
            .await
            .expect("the gateway answers")
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(MASTER_KEY)
    }

    /// The text of `GET /metrics`.
    #[allow(dead_code)]
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics")
            .send()
            .await
            .expect("the gateway answers")
            .text()
            .await
            .expect("a metrics text")
    }

    /// Shuts the gateway down (flushing its records) and returns every
    /// record, oldest first.
    pub async fn stop_and_records(mut self) -> Vec<RequestRecord> {
        let running = self.running.take().expect("running");
        let store = running.gateway.store().clone();
        let dropped = running.gateway.recorder().stats().clone();
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), running.wait())
            .await
            .expect("shutdown within its deadline")
            .expect("clean shutdown");
        assert_eq!(
            dropped.dropped.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "no record may be dropped"
        );
        let mut records = store
            .recent_records(10_000)
            .await
            .expect("records readable");
        records.reverse();
        records
    }
}

/// Reads an SSE body to its end and returns its `data:` payloads.
pub fn data_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "every event ends with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_owned()
        })
        .collect()
}

/// The PostgreSQL server for tests: `SWITCHBOARD_TEST_POSTGRES_URL`, or
/// database `test` on the local server.
pub fn postgres_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh schema named `<prefix>_<random>` and a URL whose connections
/// work in it, or why there is none (no PostgreSQL here).
pub async fn postgres_schema(prefix: &str) -> Result<(String, String), String> {
    use sqlx::Connection;
    let admin = postgres_url();
    let name = format!("{prefix}_{:016x}", rand_u64());
    let mut connection =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin))
            .await
            .map_err(|_| "PostgreSQL did not answer within 5 s".to_owned())?
            .map_err(|error| format!("PostgreSQL: {error}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
        .execute(&mut connection)
        .await
        .map_err(|error| error.to_string())?;
    let separator = if admin.contains('?') { '&' } else { '?' };
    Ok((
        name.clone(),
        format!("{admin}{separator}options=-c%20search_path%3D{name}"),
    ))
}

pub async fn drop_postgres_schema(name: &str) {
    use sqlx::Connection;
    if let Ok(mut connection) = sqlx::PgConnection::connect(&postgres_url()).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
            .execute(&mut connection)
            .await;
    }
}

pub fn rand_u64() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    switchboard_core::mix::splitmix64(
        nanos
            ^ u64::from(std::process::id())
            ^ COUNTER
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .rotate_left(48),
    )
}
