//! Graceful shutdown: in-flight streams finish within the grace period,
//! those still running at its end are closed with an error event, new
//! connections are refused, and every record reaches the store.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::*;
use switchboard_core::Outcome;

fn slow_model(tokens: u32) -> String {
    format!(
        r#"
[[models]]
name = "slow"
[[models.deployments]]
provider = "simulated"
simulation = {{ reply_tokens = {tokens}, tokens_per_second = 20 }}
"#
    )
}

const BODY: &str = r#"{"model":"slow","stream":true,"messages":[{"role":"user","content":"go"}]}"#;

#[tokio::test]
async fn in_flight_streams_finish_after_the_signal() {
    let gateway =
        TestGateway::start(config_with(&slow_model(10), "shutdown_grace_secs = 20")).await;
    let response = gateway.send("/v1/chat/completions", BODY).await;
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    body.extend_from_slice(&stream.next().await.unwrap().unwrap());

    gateway.shutdown.cancel();
    // The listener closes: a new connection is refused, or answered 503 at
    // most, never served as if nothing happened.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = reqwest::Client::new()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await;
    assert!(fresh.is_err() || fresh.unwrap().status() == 503);

    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Success);
    assert_eq!(records[0].usage.output_tokens, Some(10));
}

#[tokio::test]
async fn streams_still_running_at_the_deadline_end_with_an_error_event() {
    let gateway =
        TestGateway::start(config_with(&slow_model(400), "shutdown_grace_secs = 0.3")).await;
    let response = gateway.send("/v1/chat/completions", BODY).await;
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    body.extend_from_slice(&stream.next().await.unwrap().unwrap());
    gateway.shutdown.cancel();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends at the deadline")
    {
        body.extend_from_slice(&chunk.unwrap());
    }
    let events = data_events(&String::from_utf8(body).unwrap());
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "gateway_shutting_down");

    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Shutdown);
    assert_eq!(records[0].status, 503);
}
