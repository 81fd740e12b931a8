//! Reloading the configuration while serving: new models and keys take
//! effect at once, requests in flight finish on the old configuration.

mod support;

use futures_util::StreamExt;
use serde_json::Value;
use support::*;

const FIRST: &str = r#"
[[models]]
name = "first"
[[models.deployments]]
provider = "simulated"
simulation = { reply_tokens = 10, tokens_per_second = 20 }
"#;

const SECOND: &str = r#"
[[models]]
name = "second"
[[models.deployments]]
provider = "simulated"
"#;

async fn model_ids(gateway: &TestGateway, key: &str) -> Vec<String> {
    let list: Value = gateway
        .http
        .get(gateway.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_reload_swaps_models_and_keys_without_cutting_requests_in_flight() {
    let running_config = config_with(FIRST, "");
    let gateway = TestGateway::start(running_config.clone()).await;
    let response = gateway
        .send(
            "/v1/chat/completions",
            r#"{"model":"first","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
        )
        .await;
    let mut stream = response.bytes_stream();
    let mut body = stream.next().await.unwrap().unwrap().to_vec();

    // The new configuration has another model and another master key.
    let mut next = config_with(SECOND, "");
    next.server.master_key = Some(switchboard_config::Secret::new(
        "sb-rotated-master-key".to_owned(),
        switchboard_config::SecretSource::Inline,
    ));
    let summary = gateway
        .running
        .as_ref()
        .unwrap()
        .gateway
        .reload(&next, &running_config)
        .unwrap();
    assert_eq!(summary.models, 1);
    assert!(summary.needs_restart.is_empty());

    // The stream that started before the reload finishes normally.
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        String::from_utf8(body)
            .unwrap()
            .ends_with("data: [DONE]\n\n")
    );

    // New requests see the new configuration.
    assert_eq!(
        model_ids(&gateway, "sb-rotated-master-key").await,
        vec!["second"]
    );
    let old_key = gateway
        .http
        .get(gateway.url("/v1/models"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(old_key.status(), 401);
    let gone = gateway
        .http
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("sb-rotated-master-key")
        .header("content-type", "application/json")
        .body(r#"{"model":"first","messages":[{"role":"user","content":"x"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);

    // Settings that need a restart are reported, not applied.
    let mut moved = next.clone();
    moved.server.listen = "127.0.0.1:1".parse().unwrap();
    // Naming the thread count the gateway already runs with is no change.
    let mut same_threads = next.clone();
    same_threads.server.worker_threads = Some(running_config.server.threads());
    let summary = gateway
        .running
        .as_ref()
        .unwrap()
        .gateway
        .reload(&same_threads, &running_config)
        .unwrap();
    assert!(
        summary.needs_restart.is_empty(),
        "{:?}",
        summary.needs_restart
    );
    moved.server.worker_threads = Some(running_config.server.threads() + 1);
    let summary = gateway
        .running
        .as_ref()
        .unwrap()
        .gateway
        .reload(&moved, &running_config)
        .unwrap();
    assert_eq!(
        summary.needs_restart,
        vec!["server.listen", "server.worker_threads"]
    );
}

#[tokio::test]
async fn a_reload_keeps_each_deployments_health_unless_its_limits_change() {
    let flaky = |cooldown: u32| {
        format!(
            "[[models]]\nname = \"flaky\"\n[[models.deployments]]\nname = \"flaky\"\nprovider = \"simulated\"\nsimulation = {{ failure_rate = 1.0 }}\n[models.routing]\nmax_attempts = 1\ncircuit_breaker_failures = 1\ncircuit_breaker_cooldown_secs = {cooldown}\n"
        )
    };
    let running_config = config_with(&flaky(600), "");
    let gateway = TestGateway::start(running_config.clone()).await;
    let failed = gateway
        .send(
            "/v1/chat/completions",
            r#"{"model":"flaky","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await;
    assert_eq!(failed.status(), 502);
    let state = |gateway: &TestGateway| {
        let request = gateway.get("/health/deployments");
        async move {
            let health: Value = request.send().await.unwrap().json().await.unwrap();
            health["models"][0]["deployments"][0]["state"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(state(&gateway).await, "open");

    let running = &gateway.running.as_ref().unwrap().gateway;
    running
        .reload(&config_with(&flaky(600), ""), &running_config)
        .unwrap();
    assert_eq!(
        state(&gateway).await,
        "open",
        "same deployment, same limits: the rest goes on"
    );

    running
        .reload(&config_with(&flaky(300), ""), &running_config)
        .unwrap();
    assert_eq!(
        state(&gateway).await,
        "closed",
        "new circuit settings start afresh"
    );
}
