//! Fault injection: one misbehaving upstream per test (slow, silent, 5xx,
//! 529, 429 with `Retry-After`, a connection reset mid-stream, malformed
//! JSON, no answer at all), each checked three ways:
//!
//! - beside a healthy deployment, every client request succeeds, plain and
//!   streamed;
//! - alone, the client gets a clear error of the right status within the
//!   request's time budget, the deployment rests, and it serves again once
//!   healthy;
//! - afterwards the gateway still serves and holds no leaked upstream
//!   connection.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use switchboard_testkit::{MockUpstream, Script, openai_stream};

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hello"}]}"#;
const STREAM: &str =
    r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
/// The whole-request budget of the lone-deployment scenario.
const BUDGET: Duration = Duration::from_secs(2);

fn deployment(name: &str, mock: &MockUpstream) -> String {
    format!(
        r#"
[[models.deployments]]
name = "{name}"
provider = "openai-compatible"
api_base = "{}"
model = "model-{name}"
timeout_secs = 0.5
stream_idle_timeout_secs = 0.5
"#,
        mock.base_url()
    )
}

fn routing() -> String {
    format!(
        "[models.routing]\nmax_attempts = 2\nretry_backoff_ms = 1\nretry_max_backoff_ms = 5\ntimeout_secs = {}\ncircuit_breaker_failures = 2\ncircuit_breaker_cooldown_secs = 0.3\n",
        BUDGET.as_secs_f64()
    )
}

async fn wait_until_no_leak(mock: &MockUpstream) {
    // Idle keep-alive connections in the gateway's pool are fine; a
    // connection per failed request is a leak.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.open_connections() > 2 {
        assert!(
            Instant::now() < deadline,
            "{} upstream connections still open",
            mock.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fault_suite(fault: fn() -> Script, expected_status: u16) {
    // With a healthy deployment beside the faulty one, nothing fails.
    let (faulty, healthy) = (MockUpstream::start().await, MockUpstream::start().await);
    for _ in 0..4 {
        faulty.push(fault());
    }
    let models = format!(
        "[[models]]\nname = \"chat\"\n{}{}{}",
        deployment("faulty", &faulty),
        deployment("healthy", &healthy),
        routing()
    );
    let gateway = TestGateway::start(config_with(&models, "")).await;
    assert_eq!(
        faulty.open_connections(),
        0,
        "no connection before the first request"
    );
    for body in [CHAT, STREAM, CHAT, STREAM] {
        let response = gateway.send("/v1/chat/completions", body).await;
        assert_eq!(response.status(), 200, "a healthy deployment exists");
        let text = response.text().await.unwrap();
        if body == STREAM {
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            assert!(!text.contains("\"error\""), "{text}");
        }
    }
    wait_until_no_leak(&faulty).await;
    drop(gateway);

    // Alone, it fails clearly and in time, rests, and comes back.
    let alone = MockUpstream::start().await;
    for _ in 0..2 {
        alone.push(fault());
    }
    let models = format!(
        "[[models]]\nname = \"chat\"\n{}{}",
        deployment("alone", &alone),
        routing()
    );
    let gateway = TestGateway::start(config_with(&models, "")).await;
    let started = Instant::now();
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert!(
        started.elapsed() < BUDGET + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), expected_status);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("alone")),
        "{error}"
    );

    let health: Value = gateway
        .get("/health/deployments")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["models"][0]["deployments"][0]["state"], "open",
        "{health}"
    );

    // The upstream recovers; after the rest a probe goes through and the
    // deployment serves again.
    alone.clear_scripts();
    let retry_in = health["models"][0]["deployments"][0]["retry_in_ms"]
        .as_u64()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(retry_in + 50)).await;
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 200);
    let health: Value = gateway
        .get("/health/deployments")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["models"][0]["deployments"][0]["state"], "closed");
    assert_eq!(
        gateway
            .http
            .get(gateway.url("/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    wait_until_no_leak(&alone).await;
}

fn status(code: u16) -> Script {
    Script::json(
        code,
        json!({"error": {"message": "upstream trouble", "type": "server_error"}}),
    )
}

#[tokio::test]
async fn slow_upstream() {
    fault_suite(|| Script::Delay(Duration::from_secs(3)), 504).await;
}

#[tokio::test]
async fn upstream_that_never_answers() {
    fault_suite(|| Script::Hang, 504).await;
}

#[tokio::test]
async fn internal_server_error() {
    fault_suite(|| status(500), 502).await;
}

#[tokio::test]
async fn bad_gateway() {
    fault_suite(|| status(502), 502).await;
}

#[tokio::test]
async fn service_unavailable() {
    fault_suite(|| status(503), 502).await;
}

#[tokio::test]
async fn overloaded_529() {
    fault_suite(|| status(529), 502).await;
}

#[tokio::test]
async fn rate_limited_with_retry_after() {
    fault_suite(
        || Script::Respond {
            status: 429,
            body: json!({"error": {"message": "rate limited", "type": "requests"}}).to_string(),
            headers: vec![("retry-after".into(), "1".into())],
        },
        429,
    )
    .await;
}

#[tokio::test]
async fn connection_reset_mid_stream() {
    fault_suite(
        || Script::Reset {
            pieces: vec![(Duration::ZERO, openai_stream("m", &["x"], false)[0].clone())],
        },
        502,
    )
    .await;
}

#[tokio::test]
async fn malformed_json() {
    fault_suite(|| Script::raw(200, "{\"choices\": [ {\"message\": "), 502).await;
}
