//! The request path never waits on the database: requests of every kind,
//! with a virtual key whose limits, budget and end-user limits are all
//! checked, make no store call from inside the request (counted by
//! `switchboard_store::watch`). Records still reach the database, written
//! by the record writer off the request path.
//!
//! One test in its own binary: the count is process-wide.

mod support;

use serde_json::json;
use support::*;
use switchboard_store::watch::{calls_on_request_path, on_request_path};

fn models() -> String {
    r#"
[[models]]
name = "priced"
[[models.deployments]]
provider = "simulated"
price = { input_per_mtok = 1.0, output_per_mtok = 2.0 }
simulation = { embedding_dimensions = 8 }
"#
    .to_owned()
}

#[tokio::test]
async fn requests_make_no_store_call() {
    let gateway = TestGateway::start(config_with(&models(), "")).await;
    let (_, secret) = gateway
        .create_key(json!({
            "rpm": 100_000, "tpm": 100_000_000, "max_concurrent": 100,
            "budget_usd": 100.0, "budget_period": "daily",
            "user_limits": {"rpm": 100_000, "budget_usd": 10.0, "budget_period": "daily"},
        }))
        .await;
    let before = calls_on_request_path();

    let chat = json!({"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "user": "ana"});
    let stream = json!({"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": true});
    let messages = json!({"model": "priced", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "metadata": {"user_id": "bo"}});
    let embeddings = json!({"model": "priced", "input": ["a", "b"]});
    let mut sent = 0;
    for round in 0..10 {
        for (path, body, key) in [
            ("/v1/chat/completions", &chat, secret.as_str()),
            ("/v1/chat/completions", &stream, secret.as_str()),
            ("/v1/messages", &messages, secret.as_str()),
            ("/v1/embeddings", &embeddings, secret.as_str()),
            ("/v1/chat/completions", &chat, MASTER_KEY),
        ] {
            let response = gateway
                .http
                .post(gateway.url(path))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path} in round {round}");
            response.bytes().await.unwrap();
            sent += 1;
        }
    }
    assert_eq!(
        calls_on_request_path(),
        before,
        "a request waited on the database"
    );

    // The hook does count: a store call made as a request would is seen.
    let store = gateway.running.as_ref().unwrap().gateway.store().clone();
    on_request_path(async { store.ping().await.unwrap() }).await;
    assert_eq!(calls_on_request_path(), before + 1);

    // And nothing was skipped: every request is in the log.
    let records = gateway.stop_and_records().await;
    let served = records.iter().filter(|record| record.status == 200).count();
    assert_eq!(served, sent);
}
