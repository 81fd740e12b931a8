//! OpenTelemetry traces through the real router, received by an
//! in-process OTLP/HTTP collector: one server span per request with a
//! client span per upstream attempt, GenAI attributes, W3C trace context
//! from the caller, to the upstream and back in `traceresponse`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};
use support::*;
use switchboard_testkit::{MockUpstream, Script};

const CHAT: &str = r#"{"model":"chat","temperature":0.5,"max_tokens":20,"messages":[{"role":"user","content":"hello"}]}"#;
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP collector on loopback keeping every span it is sent.
struct Collector {
    base: String,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let kept = spans.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let kept = kept.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/json");
                    assert_eq!(headers["x-collector-key"], "collector-secret");
                    let request: Value = serde_json::from_str(&body).expect("OTLP JSON");
                    for resource in request["resourceSpans"].as_array().unwrap() {
                        let service = &resource["resource"]["attributes"][0];
                        assert_eq!(service["key"], "service.name");
                        assert_eq!(service["value"]["stringValue"], "gateway-under-test");
                        for scope in resource["scopeSpans"].as_array().unwrap() {
                            for span in scope["spans"].as_array().unwrap() {
                                kept.lock().unwrap().push(span.clone());
                            }
                        }
                    }
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Collector { base, spans }
    }

    /// Waits until `count` spans arrived (the exporter batches for up to
    /// half a second), then returns them all.
    async fn wait_for(&self, count: usize) -> Vec<Value> {
        for _ in 0..100 {
            if self.spans.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let spans = self.spans.lock().unwrap().clone();
        assert_eq!(spans.len(), count, "{spans:#?}");
        spans
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|attribute| attribute["key"] == key)
        .map(|attribute| &attribute["value"])
}

fn text<'a>(span: &'a Value, key: &str) -> &'a str {
    attribute(span, key)
        .and_then(|value| value["stringValue"].as_str())
        .unwrap_or_else(|| panic!("no string {key} in {span:#}"))
}

/// A string-array attribute (`arrayValue` of `stringValue`s).
fn strings(span: &Value, key: &str) -> Vec<String> {
    attribute(span, key)
        .and_then(|value| value["arrayValue"]["values"].as_array())
        .unwrap_or_else(|| panic!("no string array {key} in {span:#}"))
        .iter()
        .map(|value| value["stringValue"].as_str().unwrap().to_owned())
        .collect()
}

fn int(span: &Value, key: &str) -> u64 {
    attribute(span, key)
        .and_then(|value| value["intValue"].as_str())
        .unwrap_or_else(|| panic!("no int {key} in {span:#}"))
        .parse()
        .unwrap()
}

/// `chat` on deployments `a` (tried first) and `b`, traced to `collector`.
fn config(collector: &Collector, a: &MockUpstream, b: &MockUpstream, extra: &str) -> String {
    format!(
        r#"
[telemetry]
otlp_endpoint = "{}/"
service_name = "gateway-under-test"
otlp_headers = {{ x-collector-key = "collector-secret" }}
{extra}
[[models]]
name = "chat"
[[models.deployments]]
name = "a"
provider = "openai-compatible"
api_base = "{}"
model = "model-a"
[[models.deployments]]
name = "b"
provider = "openai-compatible"
api_base = "{}"
model = "model-b"
[models.routing]
strategy = "round-robin"
max_attempts = 2
retry_backoff_ms = 1
retry_max_backoff_ms = 5
circuit_breaker_failures = 1000
"#,
        collector.base,
        a.base_url(),
        b.base_url()
    )
}

#[tokio::test]
async fn a_retried_request_is_one_server_span_with_a_client_span_per_attempt() {
    let collector = Collector::start().await;
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(Script::json(
        503,
        json!({"error": {"message": "overloaded"}}),
    ));
    let gateway = TestGateway::start(config_with(&config(&collector, &a, &b, ""), "")).await;

    let response = gateway
        .post("/v1/chat/completions", CHAT)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=opaque-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let traceresponse = response.headers()["traceresponse"]
        .to_str()
        .unwrap()
        .to_owned();
    response.text().await.unwrap();

    let spans = collector.wait_for(3).await;
    let server = spans
        .iter()
        .find(|span| span["kind"] == 2)
        .expect("a server span");
    let clients: Vec<&Value> = spans.iter().filter(|span| span["kind"] == 3).collect();
    assert_eq!(clients.len(), 2);

    // The caller's trace continues; its span is the parent.
    assert_eq!(server["traceId"], CALLER_TRACE);
    assert_eq!(server["parentSpanId"], CALLER_SPAN);
    let server_id = server["spanId"].as_str().unwrap();
    assert_eq!(traceresponse, format!("00-{CALLER_TRACE}-{server_id}-01"));
    assert_eq!(server["name"], "chat chat");
    assert_eq!(text(server, "gen_ai.operation.name"), "chat");
    assert_eq!(text(server, "gen_ai.request.model"), "chat");
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert_eq!(int(server, "switchboard.attempts"), 2);
    assert_eq!(int(server, "gen_ai.request.max_tokens"), 20);
    assert_eq!(
        attribute(server, "gen_ai.request.temperature").unwrap()["doubleValue"],
        0.5
    );
    assert!(int(server, "gen_ai.usage.input_tokens") > 0);
    // What the answer said about itself, read with its usage.
    assert_eq!(text(server, "gen_ai.response.id"), "chatcmpl-mock");
    assert_eq!(text(server, "gen_ai.response.model"), "model-b");
    assert_eq!(strings(server, "gen_ai.response.finish_reasons"), ["stop"]);
    assert_eq!(server["status"]["code"], 1);

    // Each attempt is a child, named after the upstream model.
    for client in &clients {
        assert_eq!(client["traceId"], CALLER_TRACE);
        assert_eq!(client["parentSpanId"], server_id);
        assert_eq!(text(client, "gen_ai.provider.name"), "openai");
    }
    let failed = clients
        .iter()
        .find(|span| span["name"] == "chat model-a")
        .unwrap();
    assert_eq!(failed["status"]["code"], 2);
    assert_eq!(text(failed, "error.type"), "server_error");
    assert!(attribute(failed, "gen_ai.response.id").is_none());
    assert_eq!(int(failed, "http.response.status_code"), 503);
    let served = clients
        .iter()
        .find(|span| span["name"] == "chat model-b")
        .unwrap();
    assert_eq!(served["status"]["code"], 1);
    assert!(int(served, "gen_ai.usage.output_tokens") > 0);
    assert_eq!(text(served, "gen_ai.response.model"), "model-b");
    assert_eq!(strings(served, "gen_ai.response.finish_reasons"), ["stop"]);
    let start = |span: &Value| {
        span["startTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let end = |span: &Value| {
        span["endTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(start(server) <= start(failed) && start(failed) <= start(served));
    assert!(end(served) <= end(server) && start(served) <= end(served));

    // The caller's tracestate travels on unchanged.
    assert_eq!(b.last().header("tracestate"), Some("vendor=opaque-1"));
    // Each upstream request named its own attempt span as the parent.
    for (mock, name) in [(&a, "chat model-a"), (&b, "chat model-b")] {
        let span = clients.iter().find(|span| span["name"] == name).unwrap();
        let sent = mock.last();
        assert_eq!(
            sent.header("traceparent"),
            Some(format!("00-{CALLER_TRACE}-{}-01", span["spanId"].as_str().unwrap()).as_str())
        );
    }
}

/// An attempt the request's time budget cuts is spanned as a timeout, as
/// the record and the metrics count it; one dropped because another
/// answered first stays `cancelled` (the hedging test in `routing.rs`).
#[tokio::test]
async fn an_attempt_the_time_budget_cuts_is_spanned_as_a_timeout() {
    let collector = Collector::start().await;
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(Script::Hang);
    let gateway = TestGateway::start(config_with(
        &config(&collector, &a, &b, "").replace("max_attempts = 2", "max_attempts = 1"),
        "",
    ))
    .await;
    let response = gateway
        .post("/v1/chat/completions", CHAT)
        .header("x-switchboard-timeout", "0.3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let spans = collector.wait_for(2).await;
    let attempt = spans
        .iter()
        .find(|span| span["kind"] == 3)
        .expect("a client span for the attempt");
    assert_eq!(attempt["name"], "chat model-a");
    assert_eq!(text(attempt, "error.type"), "timeout");
    assert_eq!(attempt["status"]["code"], 2);
    let records = gateway.stop_and_records().await;
    assert_eq!(records[0].attempt_details[0].outcome, "timeout");
}

/// An attempt still waiting when the shutdown's grace ends is spanned as
/// cancelled under the request's span, which ends as shut down.
#[tokio::test]
async fn an_attempt_the_shutdown_cuts_is_spanned() {
    let collector = Collector::start().await;
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(Script::Hang);
    let gateway = TestGateway::start(config_with(
        &config(&collector, &a, &b, "").replace("max_attempts = 2", "max_attempts = 1"),
        "shutdown_grace_secs = 0.2",
    ))
    .await;
    let request = tokio::spawn(gateway.post("/v1/chat/completions", CHAT).send());
    a.wait_for(Duration::from_secs(5), |a| a.received().len() == 1)
        .await;
    assert_eq!(a.received().len(), 1, "the attempt is under way");
    gateway.shutdown.cancel();
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
    let spans = collector.wait_for(2).await;
    let attempt = spans
        .iter()
        .find(|span| span["kind"] == 3)
        .expect("a client span for the cut attempt");
    assert_eq!(attempt["name"], "chat model-a");
    assert_eq!(text(attempt, "error.type"), "cancelled");
    let server = spans.iter().find(|span| span["kind"] == 2).unwrap();
    assert_eq!(attempt["parentSpanId"], server["spanId"]);
    let records = gateway.stop_and_records().await;
    assert_eq!(records[0].outcome, switchboard_core::Outcome::Shutdown);
}

#[tokio::test]
async fn streams_errors_and_new_traces_are_spanned() {
    let collector = Collector::start().await;
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gateway = TestGateway::start(config_with(&config(&collector, &a, &b, ""), "")).await;

    // A stream without a caller context starts a new trace.
    let stream = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let response = gateway.send("/v1/chat/completions", stream).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    let spans = collector.wait_for(2).await;
    let server = spans.iter().find(|span| span["kind"] == 2).unwrap();
    assert!(server.get("parentSpanId").is_none());
    assert_eq!(server["traceId"].as_str().unwrap().len(), 32);
    assert_eq!(
        attribute(server, "switchboard.stream").unwrap()["boolValue"],
        true
    );
    let client = spans.iter().find(|span| span["kind"] == 3).unwrap();
    assert_eq!(client["traceId"], server["traceId"]);
    // The serving attempt lasts as long as the stream it opened.
    assert_eq!(client["endTimeUnixNano"], server["endTimeUnixNano"]);

    // An unknown model: a server span with the error, no attempt.
    collector.spans.lock().unwrap().clear();
    let response = gateway
        .send(
            "/v1/chat/completions",
            r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await;
    assert_eq!(response.status(), 404);
    let spans = collector.wait_for(1).await;
    assert_eq!(spans[0]["status"]["code"], 2);
    assert_eq!(text(&spans[0], "error.type"), "model_not_found");
    assert_eq!(int(&spans[0], "http.response.status_code"), 404);
}

#[tokio::test]
async fn an_unsampled_caller_is_not_traced_but_its_context_travels_on() {
    let collector = Collector::start().await;
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gateway = TestGateway::start(config_with(&config(&collector, &a, &b, ""), "")).await;
    let unsampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    let response = gateway
        .post("/v1/chat/completions", CHAT)
        .header("traceparent", &unsampled)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["traceresponse"]
            .to_str()
            .unwrap()
            .ends_with("-00")
    );
    assert_eq!(a.last().header("traceparent"), Some(unsampled.as_str()));

    // A malformed traceparent is ignored: a new, sampled trace.
    let response = gateway
        .post("/v1/chat/completions", CHAT)
        .header("traceparent", "00-not-a-context-01")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let spans = collector.wait_for(2).await;
    assert!(spans.iter().all(|span| span["traceId"] != CALLER_TRACE));
}

#[tokio::test]
async fn a_zero_sample_ratio_traces_nothing_and_no_endpoint_sends_nothing() {
    let collector = Collector::start().await;
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gateway = TestGateway::start(config_with(
        &config(&collector, &a, &b, "sample_ratio = 0.0"),
        "",
    ))
    .await;
    assert_eq!(
        gateway.send("/v1/chat/completions", CHAT).await.status(),
        200
    );
    assert!(a.last().header("traceparent").is_none());

    // Without [telemetry], no header goes upstream or back.
    let plain = openai_models(&a.base_url(), "");
    let untraced = TestGateway::start(config_with(&plain, "")).await;
    let response = untraced.send("/v1/chat/completions", CHAT).await;
    assert!(response.headers().get("traceresponse").is_none());
    assert!(a.last().header("traceparent").is_none());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(collector.spans.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_fallback_and_a_cache_hit_are_spanned_as_what_they_were() {
    let collector = Collector::start().await;
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let backup = r#"
[cache]
enabled = true
[[models]]
name = "backup"
[[models.deployments]]
name = "sim"
provider = "simulated"
simulation = { reply = "from the backup" }
"#;
    let toml = config(&collector, &a, &b, "").replace(
        "name = \"chat\"\n",
        "name = \"chat\"\nfallbacks = [\"backup\"]\n",
    ) + backup;
    let gateway = TestGateway::start(config_with(&toml, "")).await;
    for mock in [&a, &b] {
        mock.push(Script::json(
            503,
            json!({"error": {"message": "overloaded"}}),
        ));
    }
    let cold = r#"{"model":"chat","temperature":0,"messages":[{"role":"user","content":"hello"}]}"#;
    let response = gateway.send("/v1/chat/completions", cold).await;
    assert_eq!(response.headers()["x-switchboard-model"], "backup");
    let spans = collector.wait_for(4).await;
    let server = spans.iter().find(|span| span["kind"] == 2).unwrap();
    assert_eq!(text(server, "switchboard.deployment"), "sim");
    assert_eq!(int(server, "switchboard.attempts"), 3);
    let mut attempts: Vec<(&str, i64)> = spans
        .iter()
        .filter(|span| span["kind"] == 3)
        .map(|span| {
            (
                span["name"].as_str().unwrap(),
                span["status"]["code"].as_i64().unwrap(),
            )
        })
        .collect();
    attempts.sort_unstable();
    // Both deployments of `chat` failed; the fallback's (a simulated
    // deployment, whose model is the public name) served.
    assert_eq!(
        attempts,
        [("chat backup", 1), ("chat model-a", 2), ("chat model-b", 2)]
    );

    // The same request again: the cache answers, and no attempt is made.
    collector.spans.lock().unwrap().clear();
    let hit = gateway.send("/v1/chat/completions", cold).await;
    assert_eq!(hit.headers()["x-switchboard-cache"], "hit");
    let spans = collector.wait_for(1).await;
    assert_eq!(spans[0]["kind"], 2);
    assert_eq!(
        attribute(&spans[0], "switchboard.cache_hit").unwrap()["boolValue"],
        true
    );
    assert_eq!(int(&spans[0], "switchboard.attempts"), 0);
}

/// `gen_ai.response.*` for every way an answer comes back, whole and
/// streamed: an OpenAI client's passed through, an Anthropic client's
/// translated from the same OpenAI upstream (finish reasons in the
/// client's API's words), and an Anthropic client's passed through from
/// an Anthropic upstream.
#[tokio::test]
async fn answers_are_spanned_with_their_id_model_and_finish_reasons() {
    let collector = Collector::start().await;
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let claude = format!(
        "[[models]]\nname = \"claude\"\n[[models.deployments]]\nname = \"c\"\nprovider = \"anthropic\"\napi_base = \"{}\"\nmodel = \"model-c\"\napi_key = \"k\"\n",
        a.base_url()
    );
    let toml = config(&collector, &a, &b, "") + &claude;
    let gateway = TestGateway::start(config_with(&toml, "")).await;
    let openai_stream =
        r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let anthropic =
        r#"{"model":"chat","max_tokens":20,"messages":[{"role":"user","content":"hello"}]}"#;
    let anthropic_stream = r#"{"model":"chat","max_tokens":20,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let to_claude = |body: &str| body.replace("\"chat\"", "\"claude\"");
    for (path, body, id, finish) in [
        (
            "/v1/chat/completions",
            CHAT.to_owned(),
            "chatcmpl-mock",
            "stop",
        ),
        (
            "/v1/chat/completions",
            openai_stream.to_owned(),
            "chatcmpl-mock",
            "stop",
        ),
        (
            "/v1/messages",
            anthropic.to_owned(),
            "chatcmpl-mock",
            "end_turn",
        ),
        (
            "/v1/messages",
            anthropic_stream.to_owned(),
            "chatcmpl-mock",
            "end_turn",
        ),
        ("/v1/messages", to_claude(anthropic), "msg_mock", "end_turn"),
        (
            "/v1/messages",
            to_claude(anthropic_stream),
            "msg_mock",
            "end_turn",
        ),
    ] {
        collector.spans.lock().unwrap().clear();
        let response = gateway.send(path, &body).await;
        assert_eq!(response.status(), 200, "{body}");
        let served_by = response.headers()["x-switchboard-deployment"]
            .to_str()
            .unwrap()
            .to_owned();
        response.text().await.unwrap();
        let spans = collector.wait_for(2).await;
        let server = spans.iter().find(|span| span["kind"] == 2).unwrap();
        let client = spans.iter().find(|span| span["kind"] == 3).unwrap();
        for span in [server, client] {
            assert_eq!(text(span, "gen_ai.response.id"), id, "{body}");
            assert_eq!(
                text(span, "gen_ai.response.model"),
                format!("model-{served_by}"),
                "{body}"
            );
            assert_eq!(
                strings(span, "gen_ai.response.finish_reasons"),
                [finish],
                "{body}"
            );
        }
    }
}
