//! The gateway in front of a mock OpenAI-compatible upstream: what crosses
//! the wire on both sides, for plain and streamed chat, embeddings and
//! models, with OpenAI, Azure and generic deployments.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use switchboard_core::{Endpoint, Outcome};
use switchboard_testkit::{MockUpstream, Script, at_once, openai_stream};

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello"}],"temperature":0.2,"x_vendor_option":{"keep":[1,2.50,"é"]},"metadata":{"tag":"t1"}}"#;

#[tokio::test]
async fn chat_is_relayed_with_the_deployments_model_and_credentials() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await;

    let response = gateway
        .post("/v1/chat/completions", CHAT)
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Each once: the gateway's own headers, the request id among them,
    // are written with the answer's, never twice.
    for (name, value) in [
        ("x-request-id", "client-id-42"),
        ("x-switchboard-deployment", "mock-openai"),
        ("x-switchboard-attempts", "1"),
        ("content-type", "application/json"),
    ] {
        let got = response.headers().get_all(name).iter().collect::<Vec<_>>();
        assert_eq!(got, [value], "{name}: {:?}", response.headers());
    }
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the mock"
    );
    assert_eq!(
        body["model"], "upstream-model",
        "the upstream's answer is relayed as it is"
    );

    let upstream = mock.last();
    assert_eq!(upstream.method, "POST");
    assert_eq!(upstream.uri, "/v1/chat/completions");
    assert_eq!(
        upstream.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert_eq!(upstream.header("content-type"), Some("application/json"));
    // The client's body, byte for byte, with only the model replaced.
    let expected = CHAT.replace(r#""model":"chat""#, r#""model":"upstream-model""#);
    assert_eq!(std::str::from_utf8(&upstream.body).unwrap(), expected);
    let all_headers = format!("{:?}", upstream.headers);
    assert!(
        !all_headers.contains(MASTER_KEY),
        "the client's gateway key must never go upstream"
    );

    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.request_id, "client-id-42");
    assert_eq!(record.endpoint, Endpoint::ChatCompletions);
    assert_eq!(record.model, "chat");
    assert_eq!(record.deployment.as_deref(), Some("mock-openai"));
    assert_eq!(record.status, 200);
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(record.usage.input_tokens, Some(9));
    assert_eq!(record.usage.output_tokens, Some(4));
    assert_eq!(record.usage.cached_input_tokens, Some(2));
    assert_eq!(record.usage.reasoning_tokens, Some(1));
    assert!(!record.stream);
}

#[tokio::test]
async fn azure_deployments_use_deployment_urls_api_version_and_api_key() {
    let mock = MockUpstream::start().await;
    let models = format!(
        r#"
[[models]]
name = "chat"
[[models.deployments]]
provider = "azure"
api_base = "{}"
deployment = "gpt4o-prod"
model = "gpt-4o"
api_version = "2024-10-21"
api_key = "${{UPSTREAM_KEY}}"
headers = {{ x-extra = "on" }}
"#,
        mock.root_url()
    );
    let gateway = TestGateway::start(config_with(&models, "")).await;
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 200);
    let upstream = mock.last();
    assert_eq!(
        upstream.uri,
        "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(upstream.header("api-key"), Some(UPSTREAM_KEY));
    assert_eq!(upstream.header("authorization"), None);
    assert_eq!(upstream.header("x-extra"), Some("on"));

    let response = gateway
        .send("/v1/embeddings", r#"{"model":"chat","input":"x"}"#)
        .await;
    assert_eq!(response.status(), 200);
    let upstream = mock.last();
    assert_eq!(
        upstream.uri,
        "/openai/deployments/gpt4o-prod/embeddings?api-version=2024-10-21"
    );
    assert_eq!(upstream.header("api-key"), Some(UPSTREAM_KEY));
}

#[tokio::test]
async fn a_client_hang_up_before_the_answer_cancels_the_upstream_request() {
    let mock = MockUpstream::start().await;
    mock.push(Script::Hang);
    let gateway = TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await;
    let gave_up = gateway
        .post(
            "/v1/chat/completions",
            r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    mock.wait_for(Duration::from_secs(10), |mock| {
        mock.abandoned_streams() == 1
    })
    .await;
    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::ClientClosed);
    assert_eq!(records[0].deployment.as_deref(), Some("mock-openai"));
}

#[tokio::test]
async fn streams_are_relayed_event_by_event_and_usage_is_captured_unseen() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await;
    let body = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = gateway.send("/v1/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let text = response.text().await.unwrap();
    let events = data_events(&text);

    // What the upstream would have sent a client that did not ask for usage.
    let expected: Vec<String> = openai_stream(
        "upstream-model",
        &["Hello", " from", " the", " mock"],
        false,
    )
    .into_iter()
    .map(|event| event.trim_start_matches("data: ").trim_end().to_owned())
    .collect();
    assert_eq!(events, expected);
    assert!(
        !text.contains("\"usage\""),
        "usage the client did not ask for leaked: {text}"
    );

    // The gateway asked for usage upstream on the client's behalf.
    let upstream = mock.last().json();
    assert_eq!(upstream["stream_options"], json!({"include_usage": true}));
    assert_eq!(upstream["model"], "upstream-model");

    let records = gateway.stop_and_records().await;
    assert_eq!(records[0].usage.input_tokens, Some(9));
    assert_eq!(records[0].usage.output_tokens, Some(4));
    assert!(records[0].stream);
    assert!(records[0].ttft_ms.is_some());
    assert_eq!(records[0].outcome, Outcome::Success);
}

#[tokio::test]
async fn clients_that_ask_for_usage_get_the_upstreams_stream_unchanged() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await;
    let body = r#"{"model":"chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let text = gateway
        .send("/v1/chat/completions", body)
        .await
        .text()
        .await
        .unwrap();
    let expected: String =
        openai_stream("upstream-model", &["Hello", " from", " the", " mock"], true).concat();
    assert_eq!(text, expected);
}

#[tokio::test]
async fn stream_usage_can_be_turned_off_per_deployment() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(
        &openai_models(&mock.base_url(), "stream_usage = false"),
        "",
    ))
    .await;
    let body = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = gateway.send("/v1/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    assert!(mock.last().json().get("stream_options").is_none());
}

#[tokio::test]
async fn the_first_chunk_reaches_the_client_while_the_upstream_is_still_generating() {
    let mock = MockUpstream::start().await;
    // Two events, then the upstream keeps the stream open without ending it.
    let events = openai_stream("upstream-model", &["Hello"], false);
    mock.push(Script::Stream {
        pieces: at_once(&events[..2]),
        close: false,
    });
    let gateway = TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await;
    let body = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = gateway.send("/v1/chat/completions", body).await;
    let mut stream = response.bytes_stream();
    let mut received = Vec::new();
    // Buffering anywhere would hold these bytes until the upstream ends,
    // which it never does: the wait below would then time out.
    while !String::from_utf8_lossy(&received).contains("Hello") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("chunks arrive while the upstream stream is still open")
            .expect("stream open")
            .unwrap();
        received.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&received).starts_with("data: {"));
}

#[tokio::test]
async fn a_client_hang_up_cancels_the_upstream_request_and_is_recorded() {
    let mock = MockUpstream::start().await;
    let events = openai_stream("upstream-model", &["Hello"], true);
    // The opening role chunk and the first content, then nothing.
    mock.push(Script::Stream {
        pieces: at_once(&events[..2]),
        close: false,
    });
    let gateway = TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await;
    let body = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = gateway.send("/v1/chat/completions", body).await;
    let mut stream = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap();
    assert!(first.is_some());
    drop(stream);
    // The gateway must close its upstream request once the client is gone.
    mock.wait_for(Duration::from_secs(10), |mock| {
        mock.abandoned_streams() == 1
    })
    .await;

    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::ClientClosed);
    assert_eq!(records[0].status, 499);
}

#[tokio::test]
async fn embeddings_are_relayed_with_the_upstream_model() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await;
    let response = gateway
        .send(
            "/v1/embeddings",
            r#"{"model":"embed","input":["a","b"],"encoding_format":"base64","dimensions":3}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"][0]["embedding"], json!([0.25, -0.5, 0.125]));
    let upstream = mock.last();
    assert_eq!(upstream.uri, "/v1/embeddings");
    assert_eq!(
        std::str::from_utf8(&upstream.body).unwrap(),
        r#"{"model":"upstream-embed","input":["a","b"],"encoding_format":"base64","dimensions":3}"#
    );
    let records = gateway.stop_and_records().await;
    assert_eq!(records[0].endpoint, Endpoint::Embeddings);
    assert_eq!(records[0].usage.input_tokens, Some(4));
}

#[tokio::test]
async fn models_are_listed_and_retrieved_including_names_with_slashes() {
    let models = r#"
[[models]]
name = "meta-llama/Llama-3.1-8B"
[[models.deployments]]
provider = "simulated"
[[models]]
name = "simulated-chat"
[[models.deployments]]
provider = "simulated"
"#;
    let gateway = TestGateway::start(config_with(models, "")).await;
    let list: Value = gateway
        .get("/v1/models")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["meta-llama/Llama-3.1-8B", "simulated-chat"]);
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|model| model["object"] == "model"
                && model["owned_by"] == "switchboard"
                && model["created"].is_u64())
    );

    let one = gateway
        .get("/v1/models/meta-llama/Llama-3.1-8B")
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["id"], "meta-llama/Llama-3.1-8B");

    let garbled = gateway.get("/v1/models/%FF%FE").send().await.unwrap();
    assert_eq!(garbled.status(), 400);
    let garbled: Value = garbled.json().await.unwrap();
    assert_eq!(garbled["error"]["param"], "model");

    let missing = gateway.get("/v1/models/nope").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn the_simulated_provider_answers_deterministically() {
    let models = r#"
[[models]]
name = "sim"
[[models.deployments]]
provider = "simulated"
simulation = { reply_tokens = 6 }
"#;
    let gateway = TestGateway::start(config_with(models, "")).await;
    let body = r#"{"model":"sim","messages":[{"role":"user","content":"ping pong"}]}"#;
    let first: Value = gateway
        .send("/v1/chat/completions", body)
        .await
        .json()
        .await
        .unwrap();
    let second: Value = gateway
        .send("/v1/chat/completions", body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        first["choices"][0]["message"]["content"],
        "Simulated reply to: ping pong the"
    );
    assert_eq!(first["choices"], second["choices"]);
    assert_eq!(first["usage"]["completion_tokens"], 6);
    assert_eq!(first["usage"]["prompt_tokens"], 5);

    let streamed = gateway.send("/v1/chat/completions", r#"{"model":"sim","stream":true,"max_tokens":3,"messages":[{"role":"user","content":"ping pong"}]}"#).await
        .text()
        .await
        .unwrap();
    let events = data_events(&streamed);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str::<Value>(event).unwrap())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "Simulated reply to:");
    let finish: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
}

/// The gateway's own HTTP/1.1 server reads a body that arrives in pieces
/// after its head (a large one, or one sent in chunked coding) and passes
/// it on whole.
#[tokio::test]
async fn bodies_in_pieces_and_in_chunked_coding_reach_the_upstream_whole() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await;
    let long = "x".repeat(3 * 1024 * 1024);
    let body = format!(r#"{{"model":"chat","messages":[{{"role":"user","content":"{long}"}}]}}"#);

    let response = gateway.send("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(mock.last().json()["messages"][0]["content"], long);

    // A body of unknown length goes out in chunked coding.
    let pieces: Vec<Result<String, std::io::Error>> = body
        .as_bytes()
        .chunks(100_000)
        .map(|piece| Ok(String::from_utf8(piece.to_vec()).unwrap()))
        .collect();
    let response = gateway
        .post("/v1/chat/completions", "")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(mock.last().json()["messages"][0]["content"], long);
    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 2);
}

/// An HTTP/2 connection (prior knowledge) is closed once it has had no
/// open stream for `server.idle_timeout_secs`, and not before: a request
/// made meanwhile starts the wait again, and a stream open for longer than
/// the timeout runs to its end.
#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(
        &openai_models(&mock.base_url(), ""),
        "idle_timeout_secs = 1",
    ))
    .await;
    let address = gateway.url("").trim_start_matches("http://").to_owned();
    let address = address.split('/').next().unwrap().to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let mut last = tokio::time::Instant::now();
    for pause in [
        Duration::ZERO,
        Duration::from_millis(600),
        Duration::from_millis(600),
    ] {
        tokio::time::sleep(pause).await;
        let body = chat_over_http2(&mut sender, &gateway, CHAT).await;
        assert!(!body.is_empty());
        last = tokio::time::Instant::now();
    }
    // A stream open for longer than the timeout is not cut.
    let events = openai_stream("chat", &["a", "b", "c"], false);
    mock.push(Script::Stream {
        pieces: events
            .iter()
            .map(|event| (Duration::from_millis(400), event.clone()))
            .collect(),
        close: true,
    });
    let stream = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let body = chat_over_http2(&mut sender, &gateway, stream).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(last.elapsed() >= Duration::from_millis(1500));
    last = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("an idle HTTP/2 connection was left open")
        .unwrap()
        .unwrap();
    let idle = last.elapsed();
    assert!(
        idle >= Duration::from_millis(900),
        "closed after {idle:?} idle"
    );
}

/// A chat request with `body` on an HTTP/2 connection of hyper's client,
/// answered 200; the answer's body.
async fn chat_over_http2(
    sender: &mut hyper::client::conn::http2::SendRequest<axum::body::Body>,
    gateway: &TestGateway,
    body: &'static str,
) -> bytes::Bytes {
    let request = axum::http::Request::post(gateway.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {MASTER_KEY}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap();
    sender
        .ready()
        .await
        .expect("the connection closed while in use");
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
        .await
        .unwrap()
}

/// A client that speaks HTTP/2 from its first byte (prior knowledge) is
/// served over HTTP/2, streams included.
#[tokio::test]
async fn clients_speaking_http2_from_the_start_are_served() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    // The headers the gateway adds reach an HTTP/2 client as they reach
    // an HTTP/1.1 one.
    for (name, value) in [
        ("x-switchboard-deployment", Some("mock-openai")),
        ("x-switchboard-attempts", Some("1")),
        ("content-type", Some("application/json")),
        ("x-request-id", None),
    ] {
        let got = response.headers().get_all(name).iter().collect::<Vec<_>>();
        assert_eq!(got.len(), 1, "{name}: {:?}", response.headers());
        if let Some(value) = value {
            assert_eq!(got[0], value, "{name}");
        }
    }
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");

    let stream = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let text = client
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .header("content-type", "application/json")
        .body(stream)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}
