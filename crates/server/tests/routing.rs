//! Routing that keeps requests answered: retries across a group's
//! deployments, fallbacks to other models, circuit breaking, rate-limit
//! rests, streams that fail over before their first token, and the
//! request's time budget.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use switchboard_testkit::{MockUpstream, Script, at_once, openai_stream};

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hello"}]}"#;
const STREAM: &str =
    r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;

/// Model `chat` served by deployments `a` and `b` (two mock upstreams), with
/// `routing` as its routing table, and `extra` appended (more models).
fn pair(a: &MockUpstream, b: &MockUpstream, routing: &str, extra: &str) -> String {
    format!(
        r#"
[[models]]
name = "chat"
fallbacks = []
[[models.deployments]]
name = "a"
provider = "openai-compatible"
api_base = "{}"
model = "model-a"
stream_idle_timeout_secs = 2
[[models.deployments]]
name = "b"
provider = "openai-compatible"
api_base = "{}"
model = "model-b"
[models.routing]
retry_backoff_ms = 1
retry_max_backoff_ms = 5
{routing}
{extra}
"#,
        a.base_url(),
        b.base_url()
    )
}

/// Model `chat` served by one deployment, `name`, at `mock`, with `routing`.
fn single(name: &str, mock: &MockUpstream, routing: &str) -> String {
    format!(
        "[[models]]\nname = \"chat\"\n[[models.deployments]]\nname = \"{name}\"\nprovider = \"openai-compatible\"\napi_base = \"{}\"\nmodel = \"m\"\n[models.routing]\n{routing}\n",
        mock.base_url()
    )
}

fn server_error() -> Script {
    Script::json(
        500,
        json!({"error": {"message": "boom", "type": "server_error"}}),
    )
}

async fn health_of(gateway: &TestGateway, deployment: &str) -> Value {
    let health: Value = gateway
        .get("/health/deployments")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    health["models"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|model| model["deployments"].as_array().unwrap().clone())
        .find(|entry| entry["name"] == deployment)
        .unwrap_or_else(|| panic!("no deployment {deployment} in {health}"))
}

#[tokio::test]
async fn a_failing_deployment_is_retried_on_the_next_one() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(server_error());
    let gateway = TestGateway::start(config_with(&pair(&a, &b, "max_attempts = 2", ""), "")).await;
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    assert_eq!(response.headers()["x-switchboard-attempts"], "2");
    assert!(response.headers().get("x-switchboard-model").is_none());
    assert_eq!(a.received().len(), 1);
    assert_eq!(b.last().json()["model"], "model-b");

    let records = gateway.stop_and_records().await;
    assert_eq!(records[0].attempts, 2);
    assert_eq!(records[0].deployment.as_deref(), Some("b"));
    assert_eq!(records[0].status, 200);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(Script::json(400, json!({"error": {"message": "bad temperature", "type": "invalid_request_error", "param": "temperature"}})));
    let gateway = TestGateway::start(config_with(&pair(&a, &b, "max_attempts = 3", ""), "")).await;
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-switchboard-attempts"], "1");
    assert!(b.received().is_empty());
}

#[tokio::test]
async fn a_rate_limited_deployment_rests_while_the_other_serves() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(Script::Respond {
        status: 429,
        body: json!({"error": {"message": "slow down", "type": "requests"}}).to_string(),
        headers: vec![("retry-after".into(), "30".into())],
    });
    let gateway = TestGateway::start(config_with(&pair(&a, &b, "max_attempts = 2", ""), "")).await;
    for _ in 0..6 {
        let response = gateway.send("/v1/chat/completions", CHAT).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    }
    assert_eq!(
        a.received().len(),
        1,
        "no retry into the rate-limited account"
    );
    let health = health_of(&gateway, "a").await;
    assert_eq!(health["state"], "open");
    assert!(health["retry_in_ms"].as_u64().unwrap() > 20_000);
    assert_eq!(health_of(&gateway, "b").await["state"], "closed");
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures_and_a_probe_closes_it() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    for _ in 0..2 {
        a.push(server_error());
    }
    // Only `a` serves the model here: `b` is another model's.
    let models = format!(
        "{}[[models]]\nname = \"other\"\n[[models.deployments]]\nname = \"b\"\nprovider = \"openai-compatible\"\napi_base = \"{}\"\nmodel = \"model-b\"\n",
        single(
            "a",
            &a,
            "max_attempts = 1\ncircuit_breaker_failures = 2\ncircuit_breaker_cooldown_secs = 0.4"
        ),
        b.base_url()
    );
    let gateway = TestGateway::start(config_with(&models, "")).await;
    for _ in 0..2 {
        assert_eq!(
            gateway.send("/v1/chat/completions", CHAT).await.status(),
            502
        );
    }
    let resting = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(resting.status(), 503);
    assert!(resting.headers().contains_key("retry-after"));
    let error: Value = resting.json().await.unwrap();
    assert_eq!(error["error"]["code"], "no_healthy_deployment");
    assert_eq!(
        a.received().len(),
        2,
        "an open circuit sends nothing upstream"
    );
    assert_eq!(health_of(&gateway, "a").await["state"], "open");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(
        probe.status(),
        200,
        "the half-open probe goes through and succeeds"
    );
    assert_eq!(health_of(&gateway, "a").await["state"], "closed");
    assert_eq!(
        gateway.send("/v1/chat/completions", CHAT).await.status(),
        200
    );
}

#[tokio::test]
async fn failures_fall_back_to_the_next_model() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    for _ in 0..4 {
        a.push(Script::json(
            503,
            json!({"error": {"message": "overloaded"}}),
        ));
        b.push(Script::json(
            503,
            json!({"error": {"message": "overloaded"}}),
        ));
    }
    let backup = r#"
[[models]]
name = "backup"
[[models.deployments]]
provider = "simulated"
simulation = { reply = "from the backup" }
"#;
    let config = pair(&a, &b, "max_attempts = 2", backup)
        .replace("fallbacks = []", "fallbacks = [\"backup\"]");
    let gateway = TestGateway::start(config_with(&config, "")).await;
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-model"], "backup");
    assert_eq!(response.headers()["x-switchboard-attempts"], "3");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "from the backup");

    let records = gateway.stop_and_records().await;
    assert_eq!(records[0].model, "chat");
    assert_eq!(records[0].served_model.as_deref(), Some("backup"));
    assert_eq!(records[0].attempts, 3);
    // Each attempt, with its model: both of `chat`'s deployments refused
    // with a 503, then the fallback model's deployment answered.
    let details: Vec<(&str, &str, &str, Option<u16>)> = records[0]
        .attempt_details
        .iter()
        .map(|detail| {
            (
                &*detail.deployment,
                &*detail.model,
                &*detail.outcome,
                detail.status,
            )
        })
        .collect();
    assert_eq!(
        details,
        [
            ("a", "chat", "server_error", Some(503)),
            ("b", "chat", "server_error", Some(503)),
            ("backup", "backup", "ok", None),
        ]
    );
}

#[tokio::test]
async fn a_context_window_refusal_falls_back_only_when_configured() {
    let context_error = || {
        Script::json(
            400,
            json!({"error": {"message": "This model's maximum context length is 8192 tokens.", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
        )
    };
    let long = r#"
[[models]]
name = "long-context"
[[models.deployments]]
provider = "simulated"
simulation = { reply = "long context model" }
"#;
    for (triggers, expected) in [("fallback_on = [\"context_window\"]", 200), ("", 400)] {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        a.push(context_error());
        b.push(context_error());
        let config = pair(&a, &b, &format!("max_attempts = 2\n{triggers}"), long)
            .replace("fallbacks = []", "fallbacks = [\"long-context\"]");
        let gateway = TestGateway::start(config_with(&config, "")).await;
        let response = gateway.send("/v1/chat/completions", CHAT).await;
        assert_eq!(response.status(), expected, "with `{triggers}`");
        // A refusal of the request itself is not retried within the group.
        assert_eq!(a.received().len() + b.received().len(), 1);
    }
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_token_fails_over_cleanly() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    // `a` opens a 200 stream, sends the role chunk, then an error.
    let events = openai_stream("model-a", &["ignored"], false);
    a.push(Script::Stream {
        pieces: vec![
            (Duration::ZERO, events[0].clone()),
            (
                Duration::ZERO,
                "data: {\"error\":{\"message\":\"overloaded\"}}\n\n".to_owned(),
            ),
        ],
        close: true,
    });
    let gateway = TestGateway::start(config_with(&pair(&a, &b, "max_attempts = 2", ""), "")).await;
    let response = gateway.send("/v1/chat/completions", STREAM).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    let text = response.text().await.unwrap();
    // Exactly `b`'s stream: nothing of `a`'s opening glued in front.
    let expected = openai_stream("model-b", &["Hello", " from", " the", " mock"], false).concat();
    assert_eq!(text, expected);
}

#[tokio::test]
async fn a_stream_without_a_first_token_in_time_fails_over() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let events = openai_stream("model-a", &["late"], false);
    a.push(Script::Stream {
        pieces: vec![
            (Duration::ZERO, events[0].clone()),
            (Duration::from_secs(30), events[1].clone()),
        ],
        close: true,
    });
    let routing = "max_attempts = 2\nfirst_token_timeout_secs = 0.3";
    let gateway = TestGateway::start(config_with(&pair(&a, &b, routing, ""), "")).await;
    let response = gateway.send("/v1/chat/completions", STREAM).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    a.wait_for(Duration::from_secs(10), |mock| {
        mock.abandoned_streams() == 1
    })
    .await;
}

#[tokio::test]
async fn the_time_budget_bounds_every_attempt_and_can_be_set_per_request() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(Script::Hang);
    b.push(Script::Hang);
    let gateway = TestGateway::start(config_with(
        &pair(&a, &b, "max_attempts = 2\ntimeout_secs = 60", ""),
        "",
    ))
    .await;
    let response = gateway
        .post("/v1/chat/completions", CHAT)
        .header("x-switchboard-timeout", "0.4")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout");

    let refused = gateway
        .post("/v1/chat/completions", CHAT)
        .header("x-switchboard-timeout", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_header");
}

#[tokio::test]
async fn the_weighted_strategy_follows_the_weights() {
    let models = r#"
[[models]]
name = "sim"
[[models.deployments]]
name = "heavy"
provider = "simulated"
weight = 3
[[models.deployments]]
name = "light"
provider = "simulated"
weight = 1
[models.routing]
strategy = "weighted"
"#;
    let gateway = TestGateway::start(config_with(models, "")).await;
    let mut heavy = 0;
    for _ in 0..8 {
        let response = gateway
            .send(
                "/v1/chat/completions",
                r#"{"model":"sim","messages":[{"role":"user","content":"x"}]}"#,
            )
            .await;
        if response.headers()["x-switchboard-deployment"] == "heavy" {
            heavy += 1;
        }
    }
    assert_eq!(heavy, 6);
    let health: Value = gateway
        .get("/health/deployments")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["models"][0]["deployments"][0]["requests"], 6);
    assert_eq!(health["models"][0]["deployments"][1]["weight"], 1);
}

fn completion_with_rate_limits(remaining: u32) -> Script {
    Script::Respond {
        status: 200,
        body: json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        })
        .to_string(),
        headers: vec![
            ("x-ratelimit-limit-requests".into(), "100".into()),
            ("x-ratelimit-remaining-requests".into(), remaining.to_string()),
        ],
    }
}

#[tokio::test]
async fn the_headroom_strategy_follows_the_upstreams_rate_limit_headers() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    for _ in 0..10 {
        a.push(completion_with_rate_limits(5));
        b.push(completion_with_rate_limits(90));
    }
    let gateway = TestGateway::start(config_with(
        &pair(&a, &b, "strategy = \"headroom\"", ""),
        "",
    ))
    .await;
    let mut served = Vec::new();
    for _ in 0..6 {
        let response = gateway.send("/v1/chat/completions", CHAT).await;
        served.push(
            response.headers()["x-switchboard-deployment"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Both are tried while nothing is known; then `b`, with more room, takes all.
    assert_eq!(served[..2], ["a", "b"]);
    assert!(served[2..].iter().all(|name| name == "b"), "{served:?}");
    let health = health_of(&gateway, "a").await;
    assert!(
        (health["rate_limit_headroom"].as_f64().unwrap() - 0.05).abs() < 1e-6,
        "{health}"
    );
}

fn simulated_pair(strategy: &str, a_extra: &str, b_extra: &str) -> String {
    format!(
        r#"
[[models]]
name = "sim"
[[models.deployments]]
name = "a"
provider = "simulated"
{a_extra}
[[models.deployments]]
name = "b"
provider = "simulated"
{b_extra}
[models.routing]
strategy = "{strategy}"
"#
    )
}

async fn served_by(gateway: &TestGateway, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = gateway.post(
        "/v1/chat/completions",
        r#"{"model":"sim","messages":[{"role":"user","content":"x"}]}"#,
    );
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_cost_strategy_picks_the_cheapest_deployment() {
    let models = simulated_pair(
        "cost",
        "price = { input_per_mtok = 2.5, output_per_mtok = 10.0 }",
        "price = { input_per_mtok = 0.15, output_per_mtok = 0.6 }",
    );
    let gateway = TestGateway::start(config_with(&models, "")).await;
    for _ in 0..4 {
        assert_eq!(
            served_by(&gateway, &[]).await.headers()["x-switchboard-deployment"],
            "b"
        );
    }
}

#[tokio::test]
async fn priorities_and_capacity_decide_who_serves() {
    // `a` is preferred but takes one request a minute; `b` serves the rest.
    let models = simulated_pair("round-robin", "priority = 0\nrpm = 1", "priority = 1");
    let gateway = TestGateway::start(config_with(&models, "")).await;
    let served: Vec<String> =
        futures_util::future::join_all((0..3).map(|_| served_by(&gateway, &[])))
            .await
            .iter()
            .map(|response| {
                response.headers()["x-switchboard-deployment"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
    let mut sorted = served.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b", "b"], "{served:?}");
}

#[tokio::test]
async fn requests_can_require_deployment_tags() {
    let models = simulated_pair("round-robin", "tags = [\"us\"]", "tags = [\"eu\", \"gpu\"]");
    let gateway = TestGateway::start(config_with(&models, "")).await;
    for _ in 0..3 {
        let response = served_by(&gateway, &[("x-switchboard-tags", "eu")]).await;
        assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    }
    let response = served_by(&gateway, &[("x-switchboard-tags", "eu, gpu")]).await;
    assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    let refused = served_by(&gateway, &[("x-switchboard-tags", "apac")]).await;
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "no_matching_deployment");
}

#[tokio::test]
async fn first_token_and_idle_limits_can_be_set_per_request() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let events = openai_stream("model-a", &["late"], false);
    // `a` opens, then waits before its first token: the header's limit moves on to `b`.
    a.push(Script::Stream {
        pieces: vec![
            (Duration::ZERO, events[0].clone()),
            (Duration::from_secs(30), events[1].clone()),
        ],
        close: true,
    });
    let gateway = TestGateway::start(config_with(&pair(&a, &b, "max_attempts = 2", ""), "")).await;
    let response = gateway
        .post("/v1/chat/completions", STREAM)
        .header("x-switchboard-first-token-timeout", "0.3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    response.text().await.unwrap();

    // `b` now stalls after its first token: its own idle limit is 120 s,
    // the request's 0.3 s ends the stream.
    let events = openai_stream("model-b", &["one", "two"], false);
    b.push(Script::Stream {
        pieces: at_once(&events[..2]),
        close: false,
    });
    let body = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"again"}]}"#;
    let mut ended_by_idle_limit = false;
    for _ in 0..2 {
        // Round robin may start on either deployment; `a` answers by default.
        let response = gateway
            .post("/v1/chat/completions", body)
            .header("x-switchboard-stream-idle-timeout", "0.3")
            .send()
            .await
            .unwrap();
        let served_by_b = response.headers()["x-switchboard-deployment"] == "b";
        let text = tokio::time::timeout(Duration::from_secs(10), response.text())
            .await
            .unwrap()
            .unwrap();
        if served_by_b {
            assert!(
                text.contains("upstream_timeout") && !text.contains("[DONE]"),
                "{text}"
            );
            ended_by_idle_limit = true;
            break;
        }
    }
    assert!(ended_by_idle_limit);

    let refused = gateway
        .post("/v1/chat/completions", STREAM)
        .header("x-switchboard-first-token-timeout", "-1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
}

#[tokio::test]
async fn prompt_cache_affinity_keeps_a_long_conversation_on_one_deployment() {
    let models = r#"
[[models]]
name = "sim"
[[models.deployments]]
name = "one"
provider = "simulated"
[[models.deployments]]
name = "two"
provider = "simulated"
[[models.deployments]]
name = "three"
provider = "simulated"
[models.routing]
prompt_cache_affinity = true
affinity_min_prefix_chars = 100
"#;
    let gateway = TestGateway::start(config_with(models, "")).await;
    let system = "You are a meticulous assistant. ".repeat(10);
    let mut homes = std::collections::HashSet::new();
    for turn in 0..6 {
        let body = json!({"model": "sim", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": format!("follow-up {turn}")},
        ]});
        let response = gateway
            .post("/v1/chat/completions", &body.to_string())
            .send()
            .await
            .unwrap();
        homes.insert(
            response.headers()["x-switchboard-deployment"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        homes.len(),
        1,
        "one conversation, one deployment: {homes:?}"
    );

    // Short prefixes are not worth pinning: the strategy spreads them.
    let mut spread = std::collections::HashSet::new();
    for _ in 0..3 {
        let response = gateway
            .send(
                "/v1/chat/completions",
                r#"{"model":"sim","messages":[{"role":"user","content":"hi"}]}"#,
            )
            .await;
        spread.insert(
            response.headers()["x-switchboard-deployment"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(spread.len(), 3);
}

#[tokio::test]
async fn free_probes_bring_a_recovered_deployment_back_before_its_cooldown() {
    let upstream = MockUpstream::start().await;
    upstream.push(server_error());
    let models = single(
        "probed",
        &upstream,
        "max_attempts = 1\ncircuit_breaker_failures = 1\ncircuit_breaker_cooldown_secs = 600\nprobe_interval_secs = 1",
    );
    let gateway = TestGateway::start(config_with(&models, "")).await;
    // Let the first probe finish, then break the deployment between probes.
    upstream
        .wait_for(Duration::from_secs(5), |mock| {
            mock.received()
                .iter()
                .any(|request| request.method == "GET")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        gateway.send("/v1/chat/completions", CHAT).await.status(),
        502
    );
    assert_eq!(health_of(&gateway, "probed").await["state"], "open");
    // The next probe (free: GET /v1/models) finds it healthy and closes the
    // circuit, ten minutes before the cooldown would have.
    let mut closed = false;
    for _ in 0..100 {
        if health_of(&gateway, "probed").await["state"] == "closed" {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "the probe did not close the circuit");
    assert_eq!(
        gateway.send("/v1/chat/completions", CHAT).await.status(),
        200
    );
    let received = upstream.received();
    assert!(
        received
            .iter()
            .any(|request| request.method == "GET" && request.uri == "/v1/models")
    );
    assert!(
        received
            .iter()
            .filter(|request| request.method == "POST")
            .all(|request| request.json()["messages"][0]["content"] == "hello"),
        "probes never send a completion unless configured"
    );
}

#[tokio::test]
async fn a_hedged_request_races_a_second_deployment_and_cancels_the_loser() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(Script::Hang);
    let gateway = TestGateway::start(config_with(
        &pair(&a, &b, "hedge = true\nhedge_delay_ms = 100", ""),
        "",
    ))
    .await;
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    assert_eq!(response.headers()["x-switchboard-attempts"], "2");
    // The slow request was cancelled, not left running.
    a.wait_for(Duration::from_secs(10), |mock| {
        mock.abandoned_streams() == 1
    })
    .await;
    // The record lists the loser as cancelled, the winner as served.
    let outcomes = |record: &switchboard_core::RequestRecord| -> Vec<(String, String)> {
        record
            .attempt_details
            .iter()
            .map(|detail| (detail.deployment.to_string(), detail.outcome.to_string()))
            .collect()
    };
    let records = gateway.stop_and_records().await;
    assert_eq!(
        outcomes(&records[0]),
        [("a".into(), "cancelled".into()), ("b".into(), "ok".into())]
    );
    assert!(records[0].attempt_details[0].duration_ms >= 100);

    // Without hedging the same hang is waited out to the deployment's limit.
    let (c, d) = (MockUpstream::start().await, MockUpstream::start().await);
    c.push(Script::Hang);
    let gateway = TestGateway::start(config_with(&pair(&c, &d, "max_attempts = 1", ""), "")).await;
    let response = gateway
        .post("/v1/chat/completions", CHAT)
        .header("x-switchboard-timeout", "0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(d.received().is_empty());
    // The attempt the request's time budget cut is a timeout.
    let records = gateway.stop_and_records().await;
    assert_eq!(outcomes(&records[0]), [("a".into(), "timeout".into())]);
}

#[tokio::test]
async fn a_rested_deployment_comes_back_beside_a_healthy_one() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(server_error());
    let routing =
        "max_attempts = 2\ncircuit_breaker_failures = 1\ncircuit_breaker_cooldown_secs = 0.3";
    let gateway = TestGateway::start(config_with(&pair(&a, &b, routing, ""), "")).await;
    // `a` fails once and rests; `b` serves everything meanwhile.
    for _ in 0..4 {
        let response = gateway.send("/v1/chat/completions", CHAT).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // After the cooldown the next request probes `a`, which has recovered.
    let probe = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(probe.headers()["x-switchboard-deployment"], "a");
    assert_eq!(health_of(&gateway, "a").await["state"], "closed");
    let mut served = std::collections::HashSet::new();
    for _ in 0..4 {
        let response = gateway.send("/v1/chat/completions", CHAT).await;
        served.insert(
            response.headers()["x-switchboard-deployment"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(served.len(), 2, "both serve again: {served:?}");
}

#[tokio::test]
async fn a_clients_short_budget_is_not_held_against_the_deployment() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    for _ in 0..4 {
        a.push(Script::Delay(Duration::from_millis(400)));
        b.push(Script::Delay(Duration::from_millis(400)));
    }
    let routing = "max_attempts = 1\ncircuit_breaker_failures = 2";
    let gateway = TestGateway::start(config_with(&pair(&a, &b, routing, ""), "")).await;
    for _ in 0..4 {
        let response = gateway
            .post("/v1/chat/completions", CHAT)
            .header("x-switchboard-timeout", "0.1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 504);
    }
    assert_eq!(health_of(&gateway, "a").await["state"], "closed");
    assert_eq!(health_of(&gateway, "b").await["state"], "closed");
}

#[tokio::test]
async fn refused_credentials_are_never_retried_on_the_same_deployment() {
    let refused = || {
        Script::json(
            401,
            json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}),
        )
    };
    let a = MockUpstream::start().await;
    for _ in 0..3 {
        a.push(refused());
    }
    // Alone: one attempt, then a clear error.
    let alone = single("a", &a, "max_attempts = 3\nretry_backoff_ms = 1");
    let gateway = TestGateway::start(config_with(&alone, "")).await;
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-switchboard-attempts"], "1");
    assert_eq!(a.received().len(), 1);

    // Beside another account: that one serves.
    let (c, d) = (MockUpstream::start().await, MockUpstream::start().await);
    c.push(refused());
    let gateway = TestGateway::start(config_with(&pair(&c, &d, "max_attempts = 3", ""), "")).await;
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    assert_eq!(c.received().len(), 1);
}

#[tokio::test]
async fn a_retry_after_longer_than_the_group_would_wait_is_not_waited_for() {
    let upstream = MockUpstream::start().await;
    for _ in 0..3 {
        upstream.push(Script::Respond {
            status: 503,
            body: json!({"error": {"message": "down for maintenance"}}).to_string(),
            headers: vec![("retry-after".into(), "3600".into())],
        });
    }
    let models = single("alone", &upstream, "max_attempts = 3");
    let gateway = TestGateway::start(config_with(&models, "")).await;
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        gateway.post("/v1/chat/completions", CHAT).send(),
    )
    .await
    .expect("no hour-long wait")
    .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn streams_count_in_flight_until_they_end_and_cannot_outlive_the_budget() {
    let models = r#"
[[models]]
name = "slow"
[[models.deployments]]
name = "slow"
provider = "simulated"
simulation = { reply_tokens = 20, tokens_per_second = 10 }
"#;
    let gateway = TestGateway::start(config_with(models, "")).await;
    let body = r#"{"model":"slow","stream":true,"messages":[{"role":"user","content":"x"}]}"#;
    let response = gateway
        .post("/v1/chat/completions", body)
        .header("x-switchboard-timeout", "0.6")
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut text = String::from_utf8(
        futures_util::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert_eq!(
        health_of(&gateway, "slow").await["in_flight"],
        1,
        "a running stream is in flight"
    );
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(
        text.contains("upstream_timeout") && !text.contains("[DONE]"),
        "{text}"
    );
    assert_eq!(health_of(&gateway, "slow").await["in_flight"], 0);
}

#[tokio::test]
async fn a_content_policy_refusal_falls_back_when_configured() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let refusal = || {
        Script::json(
            400,
            json!({"error": {"message": "The response was filtered", "type": "invalid_request_error", "code": "content_filter"}}),
        )
    };
    a.push(refusal());
    b.push(refusal());
    let backup = "[[models]]\nname = \"lenient\"\n[[models.deployments]]\nprovider = \"simulated\"\nsimulation = { reply = \"ok\" }\n";
    let config = pair(&a, &b, "fallback_on = [\"content_policy\"]", backup)
        .replace("fallbacks = []", "fallbacks = [\"lenient\"]");
    let gateway = TestGateway::start(config_with(&config, "")).await;
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-model"], "lenient");
}

/// A listener whose accept queue is full: further connection attempts are
/// left unanswered, as with an unreachable host.
async fn unanswering_address() -> (tokio::net::TcpListener, Vec<std::net::TcpStream>, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let address = listener.local_addr().unwrap();
    // Fill the queue without ever accepting.
    let mut held = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    (listener, held, format!("http://{address}/v1"))
}

#[tokio::test]
async fn the_connect_timeout_can_be_shortened_per_request() {
    let (_listener, _held, base) = unanswering_address().await;
    let config = format!(
        r#"
[[models]]
name = "far"
[[models.deployments]]
provider = "openai-compatible"
api_base = "{base}"
model = "m"
connect_timeout_secs = 30
[models.routing]
max_attempts = 1
"#
    );
    let gateway = TestGateway::start(config_with(&config, "")).await;
    let started = std::time::Instant::now();
    let response = gateway
        .post(
            "/v1/chat/completions",
            r#"{"model":"far","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .header("x-switchboard-connect-timeout", "0.3")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 504, "{}", response.text().await.unwrap());
    assert!(
        waited < Duration::from_secs(10),
        "the request's connect timeout, not the deployment's 30 s, applied ({waited:?})"
    );
    let invalid = gateway
        .post(
            "/v1/chat/completions",
            r#"{"model":"far","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .header("x-switchboard-connect-timeout", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
}
