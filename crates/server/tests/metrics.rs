//! `GET /metrics`: what success, upstream errors, retries, fallbacks,
//! streams and refused requests add to the Prometheus exposition, and that
//! the exposition is well formed with bounded labels.

mod support;

use std::collections::{BTreeMap, HashSet};

use serde_json::json;
use support::*;
use switchboard_testkit::{MockUpstream, Script};

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hello"}]}"#;
const STREAM: &str = r#"{"model":"chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello"}]}"#;

/// `chat` on deployments `a` and `b` (both priced), falling back to the
/// simulated `backup`.
fn config(a: &MockUpstream, b: &MockUpstream, metrics: &str) -> String {
    format!(
        r#"
[metrics]
{metrics}
[[models]]
name = "chat"
fallbacks = ["backup"]
[[models.deployments]]
name = "a"
provider = "openai-compatible"
api_base = "{}"
model = "model-a"
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
[[models.deployments]]
name = "b"
provider = "openai-compatible"
api_base = "{}"
model = "model-b"
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
[models.routing]
strategy = "round-robin"
max_attempts = 2
retry_backoff_ms = 1
retry_max_backoff_ms = 5
circuit_breaker_failures = 1000
[[models]]
name = "backup"
[[models.deployments]]
name = "sim"
provider = "simulated"
simulation = {{ reply = "from the backup" }}
"#,
        a.base_url(),
        b.base_url()
    )
}

fn overloaded() -> Script {
    Script::json(503, json!({"error": {"message": "overloaded"}}))
}

/// Every sample of the exposition, `name{labels}` -> value, after checking
/// that each line is a comment or a well-formed sample of a family whose
/// TYPE came first, and that no family is declared twice.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut declared = HashSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(declared.insert(name.to_owned()), "{name} declared twice");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample and value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| declared.contains(*base))
            .unwrap_or(name);
        assert!(declared.contains(family), "{name} sampled before its TYPE");
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

async fn scrape(gateway: &TestGateway) -> BTreeMap<String, f64> {
    let response = gateway
        .http
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    samples(&response.text().await.unwrap())
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

#[tokio::test]
async fn requests_errors_fallbacks_and_streams_are_counted() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gateway = TestGateway::start(config_with(&config(&a, &b, ""), "")).await;

    // 1: `a` fails, `b` answers (round robin starts at `a`).
    a.push(overloaded());
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-deployment"], "b");
    // 2: a stream, served by whichever comes next.
    let response = gateway.send("/v1/chat/completions", STREAM).await;
    assert_eq!(response.status(), 200);
    let streamed_by = response.headers()["x-switchboard-deployment"]
        .to_str()
        .unwrap()
        .to_owned();
    response.text().await.unwrap();
    // 3: both fail: the backup model answers.
    a.push(overloaded());
    b.push(overloaded());
    let response = gateway.send("/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-model"], "backup");
    // 4: a model nobody declared, and 5: a malformed body.
    let unknown = gateway
        .send(
            "/v1/chat/completions",
            r#"{"model":"made-up-123","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await;
    assert_eq!(unknown.status(), 404);
    let malformed = gateway.send("/v1/chat/completions", "{").await;
    assert_eq!(malformed.status(), 400);

    let samples = scrape(&gateway).await;
    let ok = |deployment: &str, stream: bool| {
        format!(
            "switchboard_requests_total{{endpoint=\"chat_completions\",model=\"chat\",deployment=\"{deployment}\",status=\"200\",outcome=\"success\",stream=\"{stream}\"}}"
        )
    };
    assert_eq!(value(&samples, &ok("b", false)), 1.0);
    assert_eq!(value(&samples, &ok(&streamed_by, true)), 1.0);
    assert_eq!(value(&samples, &ok("sim", false)), 1.0);
    // Neither the unknown model nor the malformed body names a label.
    for status in [404, 400] {
        assert_eq!(
            value(
                &samples,
                &format!(
                    "switchboard_requests_total{{endpoint=\"chat_completions\",model=\"(unknown)\",deployment=\"\",status=\"{status}\",outcome=\"client_error\",stream=\"false\"}}"
                )
            ),
            1.0
        );
    }
    assert!(!samples.keys().any(|series| series.contains("made-up-123")));

    // Two failed attempts on `a`, one on `b`, each a 503.
    assert_eq!(
        value(
            &samples,
            "switchboard_upstream_errors_total{deployment=\"a\",class=\"server_error\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "switchboard_upstream_errors_total{deployment=\"b\",class=\"server_error\"}"
        ),
        1.0
    );
    // Request 1 took 2 attempts, request 3 took 3: three retries.
    assert_eq!(
        value(&samples, "switchboard_retries_total{model=\"chat\"}"),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "switchboard_fallbacks_total{model=\"chat\",served_model=\"backup\"}"
        ),
        1.0
    );

    // The stream has a time to first token; the plain answers do not.
    let ttft = format!(
        "switchboard_time_to_first_token_seconds_count{{model=\"chat\",deployment=\"{streamed_by}\"}}"
    );
    assert_eq!(value(&samples, &ttft), 1.0);
    assert_eq!(
        value(
            &samples,
            "switchboard_request_duration_seconds_count{model=\"chat\",deployment=\"b\"}"
        ) as u32,
        if streamed_by == "b" { 2 } else { 1 }
    );
    let inf = value(
        &samples,
        "switchboard_request_duration_seconds_bucket{model=\"chat\",deployment=\"b\",le=\"+Inf\"}",
    );
    let count = value(
        &samples,
        "switchboard_request_duration_seconds_count{model=\"chat\",deployment=\"b\"}",
    );
    assert_eq!(inf, count);

    // Tokens and cost from the mock's usage (as each record has them).
    let records = {
        let samples_tokens: f64 = samples
            .iter()
            .filter(|(series, _)| {
                series.starts_with("switchboard_tokens_total{model=\"chat\"")
                    && series.ends_with("type=\"input\"}")
            })
            .map(|(_, value)| value)
            .sum();
        assert!(samples_tokens > 0.0, "input tokens counted");
        samples_tokens
    };
    assert!(records > 0.0);
    assert!(
        value(
            &samples,
            "switchboard_cost_usd_total{model=\"chat\",deployment=\"b\"}"
        ) > 0.0
    );

    // Live state: every deployment's circuit, and nothing in flight.
    for deployment in ["a", "b"] {
        assert_eq!(
            value(
                &samples,
                &format!(
                    "switchboard_deployment_circuit_state{{model=\"chat\",deployment=\"{deployment}\",state=\"closed\"}}"
                )
            ),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                &format!(
                    "switchboard_deployment_circuit_state{{model=\"chat\",deployment=\"{deployment}\",state=\"open\"}}"
                )
            ),
            0.0
        );
    }
    // The scrape itself is not a model request.
    assert_eq!(value(&samples, "switchboard_requests_in_flight"), 0.0);
    assert_eq!(value(&samples, "switchboard_records_dropped_total"), 0.0);
    assert!(samples.contains_key("switchboard_record_backlog"));
    assert!(samples.contains_key("switchboard_record_queue_bytes"));
    // Per-key series exist only when asked for.
    assert!(
        !samples
            .keys()
            .any(|series| series.starts_with("switchboard_key_"))
    );

    // The records agree with the counters.
    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 5);
    let input: u64 = records
        .iter()
        .filter(|record| record.model == "chat" && record.served_model.is_none())
        .filter_map(|record| record.usage.input_tokens)
        .sum();
    let counted: f64 = samples
        .iter()
        .filter(|(series, _)| {
            series.starts_with("switchboard_tokens_total{model=\"chat\",deployment=\"a\"")
                || series.starts_with("switchboard_tokens_total{model=\"chat\",deployment=\"b\"")
        })
        .filter(|(series, _)| series.ends_with("type=\"input\"}"))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(counted as u64, input);
}

#[tokio::test]
async fn key_labels_count_per_virtual_key_when_enabled() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gateway = TestGateway::start(config_with(&config(&a, &b, "key_labels = true"), "")).await;
    let (id, secret) = gateway.create_key(json!({"name": "app"})).await;
    let (id, secret) = (id.as_str(), secret.as_str());
    // The key cache picks the new key up within its refresh.
    let mut status = 0;
    for _ in 0..40 {
        let response = gateway
            .http
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(secret)
            .header("content-type", "application/json")
            .body(CHAT)
            .send()
            .await
            .unwrap();
        status = response.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    let samples = scrape(&gateway).await;
    assert_eq!(
        value(
            &samples,
            &format!("switchboard_key_requests_total{{key=\"{id}\",team=\"\"}}")
        ),
        1.0
    );
    assert!(!samples.keys().any(|series| series.contains(secret)));
}

/// Switched off, `/metrics` is not served and requests are not counted; a
/// reload that switches them on serves them and counts from then on.
#[tokio::test]
async fn metrics_can_be_switched_off() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let running = config_with(&config(&a, &b, "enabled = false"), "");
    let gateway = TestGateway::start(running.clone()).await;
    let response = gateway
        .http
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    for _ in 0..3 {
        assert_eq!(
            gateway.send("/v1/chat/completions", CHAT).await.status(),
            200
        );
    }

    gateway
        .running
        .as_ref()
        .unwrap()
        .gateway
        .reload(
            &config_with(&config(&a, &b, "enabled = true"), ""),
            &running,
        )
        .unwrap();
    assert_eq!(
        gateway.send("/v1/chat/completions", CHAT).await.status(),
        200
    );
    let samples = samples(&gateway.metrics_text().await);
    let requests: f64 = samples
        .iter()
        .filter(|(series, _)| series.starts_with("switchboard_requests_total{"))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(requests, 1.0, "{samples:?}");
    assert_eq!(samples["switchboard_requests_in_flight"], 0.0);
}

/// While a request waits on its upstream, it counts as in flight, for the
/// gateway and for the deployment serving it; both go back to zero when
/// it ends.
#[tokio::test]
async fn requests_in_flight_are_counted_per_gateway_and_deployment() {
    let mock = MockUpstream::start().await;
    let gateway = std::sync::Arc::new(
        TestGateway::start(config_with(&openai_models(&mock.base_url(), ""), "")).await,
    );
    mock.push(Script::Delay(std::time::Duration::from_secs(3)));
    let waiting = {
        let gateway = gateway.clone();
        tokio::spawn(async move { gateway.send("/v1/chat/completions", CHAT).await.status() })
    };
    let deployment = "switchboard_deployment_in_flight{model=\"chat\",deployment=\"mock-openai\"}";
    let scrape = || async { samples(&gateway.metrics_text().await) };
    // Watched for most of the upstream's delay: however slowly the request
    // gets there, it is in flight for a while.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(2_500);
    let mut seen = false;
    while !seen && tokio::time::Instant::now() < deadline {
        let now = scrape().await;
        if value(&now, deployment) == 1.0 {
            assert_eq!(value(&now, "switchboard_requests_in_flight"), 1.0);
            seen = true;
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    assert!(seen, "the waiting request was never counted in flight");
    assert_eq!(waiting.await.unwrap(), 200);
    let after = scrape().await;
    assert_eq!(value(&after, deployment), 0.0);
    assert_eq!(value(&after, "switchboard_requests_in_flight"), 0.0);
}

/// With the request log in a SQLite file, its two writer threads' counters
/// are part of a well-formed exposition (each family declared once, before
/// its samples), every reason and thread has its series, and the rows add
/// up to the records written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_files_writer_threads_are_exposed() {
    const REQUESTS: u64 = 5;
    let directory = std::env::temp_dir().join(format!(
        "switchboard-metrics-{}-{:016x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&directory).unwrap();
    let url = format!("sqlite://{}", directory.join("log.db").display());
    let gateway = TestGateway::start(config_stored_at(
        &url,
        "[[models]]\nname = \"chat\"\n[[models.deployments]]\nprovider = \"simulated\"\n",
        "",
    ))
    .await;
    for _ in 0..REQUESTS {
        let response = gateway
            .post("/v1/chat/completions", CHAT)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let rows = |samples: &BTreeMap<String, f64>| {
        ["idle", "catch_up"]
            .iter()
            .map(|thread| {
                samples[&format!("switchboard_record_writer_rows_total{{thread=\"{thread}\"}}")]
            })
            .sum::<f64>()
    };
    let mut samples = scrape(&gateway).await;
    for _ in 0..200 {
        if samples["switchboard_records_written_total"] >= REQUESTS as f64
            && rows(&samples) >= REQUESTS as f64
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        samples = scrape(&gateway).await;
    }
    assert_eq!(
        samples["switchboard_records_written_total"],
        REQUESTS as f64
    );
    assert_eq!(rows(&samples), REQUESTS as f64);
    for reason in ["picked_up_late", "hurried_begun", "hurried_unbegun"] {
        let series = format!("switchboard_record_writer_handovers_total{{reason=\"{reason}\"}}");
        assert!(samples.contains_key(&series), "{series} is missing");
    }
    gateway.stop_and_records().await;
    let _ = std::fs::remove_dir_all(&directory);
}

/// With three serving threads (`scheduler = "per-thread"`, the default),
/// each new connection goes to the thread with the fewest open, every
/// thread proxies and records what it serves, and the gauge counts each
/// thread's connections until they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_the_serving_threads_and_each_serves_them() {
    const CLIENTS: usize = 6;
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(
        &openai_models(&mock.base_url(), ""),
        "worker_threads = 3",
    ))
    .await;
    let open = |samples: &BTreeMap<String, f64>| {
        (0..3)
            .map(|thread| {
                value(
                    samples,
                    &format!("switchboard_connections_open{{thread=\"{thread}\"}}"),
                )
            })
            .collect::<Vec<_>>()
    };
    // One connection per client, kept open: each client's request and its
    // stream answered over the thread its connection went to.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = reqwest::Client::new();
        let answer = client
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .header("content-type", "application/json")
            .body(CHAT)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.bytes().await.unwrap();
        let stream = client
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .header("content-type", "application/json")
            .body(STREAM)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        let text = stream.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        clients.push(client);
    }
    // Two each, in turn; the scrape's own connection then goes to the
    // first of those tied.
    assert_eq!(open(&scrape(&gateway).await), [3.0, 2.0, 2.0]);
    drop(clients);
    let mut now = open(&scrape(&gateway).await);
    for _ in 0..200 {
        if now == [1.0, 0.0, 0.0] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        now = open(&scrape(&gateway).await);
    }
    assert_eq!(
        now,
        [1.0, 0.0, 0.0],
        "closed connections are no longer counted"
    );
    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 2 * CLIENTS);
    assert!(
        records.iter().all(|record| record.status == 200),
        "{records:#?}"
    );
}
