//! Every way a request can go wrong, on the client's side or upstream,
//! answered with a precise status and OpenAI's error object, and the
//! gateway still serving afterwards.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use switchboard_core::Outcome;
use switchboard_testkit::{MockUpstream, Script, at_once, openai_stream};

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hello"}]}"#;
const STREAM: &str =
    r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;

/// Asserts OpenAI's error shape and returns `error`.
async fn error_of(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    let error = body["error"].clone();
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    error
}

#[tokio::test]
async fn client_mistakes_get_precise_4xx_answers() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(
        &openai_models(&mock.base_url(), ""),
        "max_body_bytes = 2048",
    ))
    .await;

    let error = error_of(
        gateway.send("/v1/chat/completions", "{\"model\":").await,
        400,
    )
    .await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    let error = error_of(
        gateway.send("/v1/chat/completions", r#"{"model":"chat","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#).await,
        400,
    )
    .await;
    assert_eq!(error["param"], "temperature");

    // A second model under a name that differs only in case: never passed
    // on to an upstream that might read it instead.
    let error = error_of(
        gateway
            .send(
                "/v1/chat/completions",
                r#"{"model":"chat","messages":[{"role":"user","content":"x"}],"Model":"dear"}"#,
            )
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "Model");
    assert!(
        error["message"].as_str().unwrap().contains("letter case"),
        "{error}"
    );

    let error = error_of(
        gateway
            .send(
                "/v1/chat/completions",
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
            )
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "model");

    let error = error_of(
        gateway
            .send(
                "/v1/chat/completions",
                r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#,
            )
            .await,
        404,
    )
    .await;
    assert_eq!(error["code"], "model_not_found");
    assert!(error["message"].as_str().unwrap().contains("gpt-9"));

    let error = error_of(
        gateway
            .http
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .header("content-type", "application/json")
            .body(
                b"{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}"
                    .to_vec(),
            )
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("UTF-8"),
        "{error}"
    );

    let error = error_of(
        gateway
            .http
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .header("content-type", "text/plain")
            .body(CHAT)
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    assert_eq!(error["code"], "unsupported_media_type");

    let big = format!(
        r#"{{"model":"chat","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );
    let error = error_of(gateway.send("/v1/chat/completions", &big).await, 413).await;
    assert!(error["message"].as_str().unwrap().contains("2048"));

    // Without a content length (chunked), the limit still holds.
    let chunks =
        futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.clone().into_bytes())]);
    let error = error_of(
        gateway
            .http
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    assert_eq!(error["code"], "request_too_large");

    let error = error_of(gateway.get("/v1/nothing-here").send().await.unwrap(), 404).await;
    assert_eq!(error["code"], "unknown_url");
    let error = error_of(
        gateway.get("/v1/chat/completions").send().await.unwrap(),
        405,
    )
    .await;
    assert_eq!(error["code"], "method_not_allowed");

    // None of these reached the upstream, and the gateway still serves.
    assert!(mock.received().is_empty());
    assert_eq!(
        gateway.send("/v1/chat/completions", CHAT).await.status(),
        200
    );

    let records = gateway.stop_and_records().await;
    let statuses: Vec<u16> = records.iter().map(|record| record.status).collect();
    assert_eq!(
        statuses,
        vec![400, 400, 400, 400, 404, 400, 415, 413, 413, 200]
    );
    assert!(
        records[..9]
            .iter()
            .all(|record| record.outcome == Outcome::ClientError)
    );
}

#[tokio::test]
async fn the_master_key_is_required_and_checked() {
    let gateway =
        TestGateway::start(config_with(&openai_models("http://127.0.0.1:9/v1", ""), "")).await;
    let missing = gateway
        .http
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    let error = error_of(missing, 401).await;
    assert_eq!(error["code"], "missing_api_key");
    let wrong = gateway
        .http
        .get(gateway.url("/v1/models"))
        .bearer_auth("sb-wrong-key")
        .send()
        .await
        .unwrap();
    let error = error_of(wrong, 401).await;
    assert_eq!(error["code"], "invalid_api_key");
    assert!(
        !error["message"].as_str().unwrap().contains("sb-wrong-key"),
        "a presented key is never echoed"
    );
    // Health probes need no key.
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
    assert_eq!(
        gateway
            .http
            .get(gateway.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn upstream_failures_map_to_gateway_statuses() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(
        &openai_models(&mock.base_url(), "timeout_secs = 1"),
        "",
    ))
    .await;

    mock.push(Script::raw(200, "<html>definitely not JSON</html>"));
    let error = error_of(gateway.send("/v1/chat/completions", CHAT).await, 502).await;
    assert_eq!(error["code"], "upstream_invalid_response");

    mock.push(Script::Hang);
    let error = error_of(gateway.send("/v1/chat/completions", CHAT).await, 504).await;
    assert_eq!(error["code"], "upstream_timeout");

    mock.push(Script::json(
        500,
        json!({"error": {"message": "The server had an error", "type": "server_error"}}),
    ));
    let error = error_of(gateway.send("/v1/chat/completions", CHAT).await, 502).await;
    assert_eq!(error["type"], "api_error");
    assert!(error["message"].as_str().unwrap().contains("500"));

    mock.push(Script::json(400, json!({"error": {"message": "max_tokens is too large", "type": "invalid_request_error", "param": "max_tokens", "code": null}})));
    let error = error_of(gateway.send("/v1/chat/completions", CHAT).await, 400).await;
    assert_eq!(error["param"], "max_tokens");
    assert_eq!(error["message"], "max_tokens is too large");

    mock.push(Script::json(401, json!({"error": {"message": "Incorrect API key provided: sk-upstr****1234", "type": "invalid_request_error"}})));
    let error = error_of(gateway.send("/v1/chat/completions", CHAT).await, 502).await;
    assert_eq!(error["code"], "upstream_auth_failed");
    assert!(
        !error["message"].as_str().unwrap().contains("sk-upstr"),
        "upstream credential hints stay out"
    );

    // And the gateway still serves.
    assert_eq!(
        gateway.send("/v1/chat/completions", CHAT).await.status(),
        200
    );

    // Last, because a rate limit rests the deployment for its Retry-After.
    mock.push(Script::Respond {
        status: 429,
        body: json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}).to_string(),
        headers: vec![("retry-after".into(), "7".into())],
    });
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.headers()["retry-after"], "7");
    let error = error_of(response, 429).await;
    assert_eq!(error["code"], "rate_limit_exceeded");

    let records = gateway.stop_and_records().await;
    let codes: Vec<Option<&str>> = records
        .iter()
        .map(|record| record.error_code.as_deref())
        .collect();
    assert_eq!(
        codes,
        vec![
            Some("upstream_invalid_response"),
            Some("upstream_timeout"),
            Some("upstream_error"),
            Some("upstream_rejected_request"),
            Some("upstream_auth_failed"),
            None,
            Some("upstream_rate_limited"),
        ]
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    // Bind and drop a port so that nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = TestGateway::start(config_with(
        &openai_models(&format!("http://127.0.0.1:{port}/v1"), ""),
        "",
    ))
    .await;
    let error = error_of(gateway.send("/v1/chat/completions", CHAT).await, 502).await;
    assert_eq!(error["code"], "upstream_unreachable");
}

/// Reads a stream to its end and returns its `data:` payloads.
async fn stream_events(gateway: &TestGateway) -> Vec<String> {
    let response = gateway.send("/v1/chat/completions", STREAM).await;
    assert_eq!(response.status(), 200);
    data_events(&response.text().await.unwrap())
}

#[tokio::test]
async fn failures_inside_a_stream_end_it_with_an_error_event_never_a_done() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(
        &openai_models(&mock.base_url(), "stream_idle_timeout_secs = 0.5"),
        "",
    ))
    .await;
    let events = openai_stream("upstream-model", &["Hel", "lo"], false);

    // Cut before [DONE].
    mock.push(Script::Stream {
        pieces: at_once(&events[..2]),
        close: true,
    });
    let relayed = stream_events(&gateway).await;
    assert_eq!(relayed.len(), 3);
    let error: Value = serde_json::from_str(&relayed[2]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_invalid_response");
    assert!(!relayed.contains(&"[DONE]".to_owned()));

    // An error reported inside the stream after content: an error event.
    let mut pieces = at_once(&events[..2]);
    pieces.push((
        Duration::ZERO,
        "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":\"overloaded\"}}\n\n".to_owned(),
    ));
    mock.push(Script::Stream {
        pieces,
        close: true,
    });
    let relayed = stream_events(&gateway).await;
    assert_eq!(relayed.len(), 3);
    let error: Value = serde_json::from_str(&relayed[2]).unwrap();
    assert_eq!(error["error"]["code"], "overloaded");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("overloaded")
    );

    // An upstream that goes silent mid-stream.
    mock.push(Script::Stream {
        pieces: at_once(&events[..2]),
        close: false,
    });
    let relayed = stream_events(&gateway).await;
    let error: Value = serde_json::from_str(&relayed[2]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout");

    // Failures before the first content, with nowhere else to go, are
    // plain error answers: the stream never opened for the client.
    mock.push(Script::events(
        &[r#"{"error":{"message":"overloaded","type":"server_error","code":"overloaded"}}"#],
        Duration::ZERO,
    ));
    let error = error_of(gateway.send("/v1/chat/completions", STREAM).await, 502).await;
    assert_eq!(error["code"], "overloaded");
    mock.push(Script::Stream {
        pieces: at_once(&events[..1]),
        close: false,
    });
    let error = error_of(gateway.send("/v1/chat/completions", STREAM).await, 504).await;
    assert_eq!(error["code"], "upstream_timeout");
    mock.push(Script::Stream {
        pieces: vec![(Duration::ZERO, "data: {not json\n\n".to_owned())],
        close: true,
    });
    let error = error_of(gateway.send("/v1/chat/completions", STREAM).await, 502).await;
    assert_eq!(error["code"], "upstream_invalid_response");

    // A stream request refused before it started is a plain error answer.
    mock.push(Script::json(503, json!({"error": {"message": "busy"}})));
    let response = gateway.send("/v1/chat/completions", STREAM).await;
    let error = error_of(response, 502).await;
    assert_eq!(error["code"], "upstream_error");

    let records = gateway.stop_and_records().await;
    let summary: Vec<(u16, Option<&str>)> = records
        .iter()
        .map(|record| (record.status, record.error_code.as_deref()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (502, Some("upstream_invalid_response")),
            (502, Some("upstream_error")),
            (504, Some("upstream_timeout")),
            (502, Some("upstream_error")),
            (504, Some("upstream_timeout")),
            (502, Some("upstream_invalid_response")),
            (502, Some("upstream_error")),
        ]
    );
    assert!(
        records
            .iter()
            .all(|record| record.outcome == Outcome::UpstreamError)
    );
}

#[tokio::test]
async fn simulated_failures_surface_as_502() {
    let models = r#"
[[models]]
name = "flaky"
[[models.deployments]]
provider = "simulated"
simulation = { failure_rate = 1.0 }
"#;
    let gateway = TestGateway::start(config_with(models, "")).await;
    let error = error_of(
        gateway
            .send(
                "/v1/chat/completions",
                r#"{"model":"flaky","messages":[{"role":"user","content":"x"}]}"#,
            )
            .await,
        502,
    )
    .await;
    assert_eq!(error["code"], "simulated_failure");
}

#[tokio::test]
async fn oversized_simulated_embeddings_are_refused_not_built() {
    let models = r#"
[[models]]
name = "embed"
[[models.deployments]]
provider = "simulated"
"#;
    let gateway = TestGateway::start(config_with(models, "")).await;
    let error = error_of(
        gateway
            .send(
                "/v1/embeddings",
                r#"{"model":"embed","input":"x","dimensions":4000000000}"#,
            )
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "dimensions");
    let many = format!(
        r#"{{"model":"embed","input":[{}],"dimensions":65536}}"#,
        vec!["\"a\""; 100].join(",")
    );
    let error = error_of(gateway.send("/v1/embeddings", &many).await, 400).await;
    assert_eq!(error["param"], "dimensions");
    assert_eq!(
        gateway
            .send(
                "/v1/embeddings",
                r#"{"model":"embed","input":"x","dimensions":8}"#
            )
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_connection_reset_after_content_ends_the_stream_with_an_error_event() {
    let mock = MockUpstream::start().await;
    let events = openai_stream("upstream-model", &["partial"], false);
    // The content is on the wire well before the connection drops.
    let mut pieces = at_once(&events[..2]);
    pieces.push((Duration::from_millis(300), String::new()));
    mock.push(Script::Reset { pieces });
    let gateway = TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await;
    let relayed = stream_events(&gateway).await;
    assert_eq!(relayed.len(), 3, "{relayed:?}");
    assert!(relayed[1].contains("partial"));
    let error: Value = serde_json::from_str(&relayed[2]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_connection_failed");
    let records = gateway.stop_and_records().await;
    assert_eq!(records[0].outcome, Outcome::UpstreamError);
    assert_eq!(records[0].status, 502);
}

/// A body far over the limit is refused by its declared length before it
/// is read: the client, still sending it, gets the 413 (not a hang or a
/// broken connection), and nothing reaches the upstream.
#[tokio::test]
async fn a_large_body_over_the_limit_is_refused_while_it_is_still_being_sent() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(
        &openai_models(&mock.base_url(), ""),
        "max_body_bytes = 2048",
    ))
    .await;
    let huge = format!(
        r#"{{"model":"chat","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(8 * 1024 * 1024)
    );
    for _ in 0..3 {
        let response = gateway
            .post("/v1/chat/completions", &huge)
            .send()
            .await
            .expect("an answer, not a broken connection");
        let error = error_of(response, 413).await;
        assert_eq!(error["code"], "request_too_large");
    }
    assert!(mock.received().is_empty());
}
