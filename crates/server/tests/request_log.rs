//! The request log through the admin API, over HTTP: `GET /admin/logs`
//! (filters, cursor pages, the record's view), `GET /admin/usage`
//! (aggregates and percentiles, buckets), refusals that name the bad
//! parameter, and the master key as the only way in.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use switchboard_core::{Endpoint, Outcome, RequestRecord, Usage};

const MODELS: &str = r#"
[[models]]
name = "m"
[[models.deployments]]
provider = "simulated"
"#;

async fn gateway() -> TestGateway {
    TestGateway::start(config_with(MODELS, "")).await
}

/// 2023-11-14T22:13:20Z
const BASE: i64 = 1_700_000_000_000;

fn record(request_id: &str, started_at_ms: i64, model: &str, status: u16) -> RequestRecord {
    RequestRecord {
        request_id: request_id.to_owned(),
        started_at_ms,
        endpoint: Endpoint::ChatCompletions,
        model: model.to_owned(),
        deployment: Some(format!("{model}-east")),
        served_model: None,
        attempts: 1,
        attempt_details: Vec::new(),
        stream: true,
        status,
        outcome: match status {
            200 => Outcome::Success,
            499 => Outcome::ClientClosed,
            400..=498 => Outcome::ClientError,
            _ => Outcome::UpstreamError,
        },
        error_code: (status != 200).then(|| "some_error".to_owned()),
        latency_ms: 100,
        ttft_ms: Some(20),
        usage: Usage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            ..Usage::default()
        },
        key_id: Some("key_1".into()),
        team_id: None,
        end_user: None,
        cost_nanos: Some(1_500),
        cache_hit: false,
        metadata: None,
        bodies: None,
    }
}

async fn insert(gateway: &TestGateway, records: &[RequestRecord]) {
    gateway
        .running
        .as_ref()
        .unwrap()
        .gateway
        .store()
        .insert_records(records)
        .await
        .unwrap();
}

async fn get(gateway: &TestGateway, path: &str) -> (u16, Value) {
    let response = gateway.get(path).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["request_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn logs_are_filtered_and_paged_over_http() {
    let gateway = gateway().await;
    let mut records = vec![
        record("r1", BASE, "gpt", 200),
        record("r2", BASE + 1000, "gpt", 502),
        record("r3", BASE + 1000, "claude", 200),
        record("r4", BASE + 1000, "gpt", 429),
        record("r5", BASE + 2000, "claude", 499),
        record("r6", BASE + 3000, "gpt", 200),
        record("r7", BASE + 3000, "gpt", 200),
    ];
    records[2].key_id = Some("key_2".into());
    records[2].team_id = Some("team_a".into());
    records[2].end_user = Some("ana@example.com".into());
    records[3].cost_nanos = None;
    insert(&gateway, &records).await;

    // Pages of two, followed to the end: newest first, every row once.
    let mut seen = Vec::new();
    let mut path = "/admin/logs?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = get(&gateway, &path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["object"], "list");
        seen.extend(ids(&page));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/admin/logs?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["r7", "r6", "r5", "r4", "r3", "r2", "r1"]);
    assert_eq!(pages, 4);
    let (_, all) = get(&gateway, "/admin/logs").await;
    assert_eq!(ids(&all), seen);
    assert_eq!(all["next_cursor"], Value::Null);

    // One record as the API shows it.
    let (_, page) = get(&gateway, "/admin/logs?request_id=r3").await;
    assert_eq!(
        page["data"][0],
        json!({
            "request_id": "r3",
            "started_at": "2023-11-14T22:13:21.000Z",
            "started_at_ms": BASE + 1000,
            "endpoint": "chat_completions",
            "model": "claude",
            "served_model": null,
            "deployment": "claude-east",
            "attempts": 1,
            "attempt_details": [],
            "stream": true,
            "status": 200,
            "outcome": "success",
            "error_code": null,
            "latency_ms": 100,
            "ttft_ms": 20,
            "input_tokens": 10,
            "output_tokens": 5,
            "cached_input_tokens": null,
            "cache_write_tokens": null,
            "reasoning_tokens": null,
            "key_id": "key_2",
            "team_id": "team_a",
            "end_user": "ana@example.com",
            "cost_nanos": 1500,
            "cost_usd": 0.0000015,
            "cache_hit": false,
            "metadata": null,
        })
    );

    for (query, expected) in [
        ("model=claude", vec!["r5", "r3"]),
        ("model=gpt&status=200", vec!["r7", "r6", "r1"]),
        ("status=429", vec!["r4"]),
        ("outcome=upstream_error", vec!["r2"]),
        ("outcome=client_closed", vec!["r5"]),
        ("key_id=key_2", vec!["r3"]),
        ("team_id=team_a", vec!["r3"]),
        ("end_user=ana%40example.com", vec!["r3"]),
        ("deployment=gpt-east&limit=1", vec!["r7"]),
        (
            "from=1700000001&to=1700000003",
            vec!["r5", "r4", "r3", "r2"],
        ),
        (
            "from=2023-11-14T22:13:21Z&to=2023-11-14T22:13:22.000Z",
            vec!["r4", "r3", "r2"],
        ),
        (
            "from=2023-11-14T23:13:21%2B01:00",
            vec!["r7", "r6", "r5", "r4", "r3", "r2"],
        ),
        ("model=nobody", vec![]),
    ] {
        let (status, page) = get(&gateway, &format!("/admin/logs?{query}")).await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(ids(&page), expected, "{query}");
    }
}

#[tokio::test]
async fn usage_is_aggregated_over_http() {
    let gateway = gateway().await;
    let hour = 3_600_000;
    let start = BASE - BASE % hour; // 2023-11-14T22:00:00Z
    let mut records = Vec::new();
    // gpt: latencies 10, 20, 30, 40 in the first hour, 1000 in the next;
    // one failure.
    for (index, latency) in [10, 20, 30, 40, 1000].into_iter().enumerate() {
        let at = if latency == 1000 {
            start + hour
        } else {
            start + index as i64
        };
        let mut gpt = record(
            &format!("g{index}"),
            at,
            "gpt",
            if index == 1 { 502 } else { 200 },
        );
        gpt.latency_ms = latency;
        gpt.ttft_ms = (latency < 1000).then_some(latency / 10);
        records.push(gpt);
    }
    let mut claude = record("c0", start + 5, "claude", 200);
    claude.latency_ms = 7;
    claude.ttft_ms = None;
    claude.cost_nanos = Some(2_000_000_000);
    records.push(claude);
    insert(&gateway, &records).await;

    let range = format!("from={}&to={}", start / 1000, (start + 2 * hour) / 1000);
    let (status, usage) = get(&gateway, &format!("/admin/usage?group_by=model&{range}")).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["group_by"], "model");
    assert_eq!(usage["bucket"], Value::Null);
    assert_eq!(usage["from"], "2023-11-14T22:00:00.000Z");
    assert_eq!(
        usage["data"],
        json!([
            {
                "group": "claude", "bucket": null, "requests": 1, "errors": 0, "error_rate": 0.0,
                "input_tokens": 10, "output_tokens": 5, "cost_nanos": 2_000_000_000u64, "cost_usd": 2.0,
                "latency_p50_ms": 7, "latency_p95_ms": 7, "ttft_p50_ms": null, "ttft_p95_ms": null,
            },
            {
                "group": "gpt", "bucket": null, "requests": 5, "errors": 1, "error_rate": 0.2,
                "input_tokens": 50, "output_tokens": 25, "cost_nanos": 7_500, "cost_usd": 0.0000075,
                // Nearest rank of 10, 20, 30, 40, 1000: the 3rd and the 5th.
                "latency_p50_ms": 30, "latency_p95_ms": 1000,
                // Of 1, 2, 3, 4: the 2nd and the 4th.
                "ttft_p50_ms": 2, "ttft_p95_ms": 4,
            },
        ])
    );

    let (status, usage) = get(
        &gateway,
        &format!("/admin/usage?group_by=deployment&bucket=hour&{range}"),
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    let rows: Vec<(String, String, u64, u64)> = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["bucket"].as_str().unwrap().to_owned(),
                row["group"].as_str().unwrap().to_owned(),
                row["requests"].as_u64().unwrap(),
                row["latency_p95_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "2023-11-14T22:00:00Z".to_owned(),
                "claude-east".to_owned(),
                1,
                7
            ),
            (
                "2023-11-14T22:00:00Z".to_owned(),
                "gpt-east".to_owned(),
                4,
                40
            ),
            (
                "2023-11-14T23:00:00Z".to_owned(),
                "gpt-east".to_owned(),
                1,
                1000
            ),
        ]
    );
    let (_, by_day) = get(
        &gateway,
        &format!("/admin/usage?group_by=key&bucket=day&{range}"),
    )
    .await;
    assert_eq!(by_day["data"][0]["bucket"], "2023-11-14T00:00:00Z");
    assert_eq!(by_day["data"][0]["group"], "key_1");
    assert_eq!(by_day["data"][0]["requests"], 6);
    let (_, by_team) = get(&gateway, &format!("/admin/usage?group_by=team&{range}")).await;
    assert_eq!(by_team["data"][0]["group"], "");
    // The default range is the last 30 days, which these records are not in.
    let (status, recent) = get(&gateway, "/admin/usage").await;
    assert_eq!((status, recent["data"].clone()), (200, json!([])));
}

#[tokio::test]
async fn bad_query_parameters_are_refused_naming_them() {
    let gateway = gateway().await;
    for (path, param) in [
        ("/admin/logs?limit=0", "limit"),
        ("/admin/logs?limit=1001", "limit"),
        ("/admin/logs?limit=ten", "limit"),
        ("/admin/logs?cursor=not-a-cursor", "cursor"),
        ("/admin/logs?cursor=MTIzOmFiYzpy", "cursor"),
        ("/admin/logs?from=10&to=5", "from"),
        (
            "/admin/logs?from=2024-05-01T00:00:00Z&to=2024-05-01",
            "from",
        ),
        ("/admin/logs?from=yesterday", "from"),
        ("/admin/logs?from=1700000000000", "from"),
        ("/admin/logs?to=2024-13-01", "to"),
        ("/admin/logs?status=abc", "status"),
        ("/admin/logs?status=42", "status"),
        ("/admin/logs?outcome=failed", "outcome"),
        ("/admin/logs?modle=gpt", "modle"),
        ("/admin/logs?model=a&model=b", "model"),
        ("/admin/usage?group_by=day", "group_by"),
        ("/admin/usage?bucket=week", "bucket"),
        ("/admin/usage?from=1700000000&to=1600000000", "from"),
        ("/admin/usage?to=soon", "to"),
        ("/admin/usage?limit=5", "limit"),
        ("/admin/spend?from=tomorrow", "from"),
    ] {
        let (status, body) = get(&gateway, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{path}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{path}");
        assert_eq!(body["error"]["param"], param, "{path}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(param),
            "{path}: {body}"
        );
    }
    // Spend takes the same times as the log.
    let (status, _) = get(&gateway, "/admin/spend?from=2023-11-14T00:00:00Z").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_request_log_is_for_the_master_key_only() {
    let gateway = gateway().await;
    let created: Value = gateway
        .post("/admin/keys", "{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["key"].as_str().unwrap();
    for path in ["/admin/logs", "/admin/usage"] {
        let anonymous = gateway.http.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
        let keyed = gateway
            .http
            .get(gateway.url(path))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap();
        assert_eq!(keyed.status(), 403, "{path}");
    }

    // A real request, made with the key, reaches the log with its id.
    let response = gateway
        .http
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .header("x-request-id", "log-me-1")
        .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut found = Value::Null;
    for _ in 0..100 {
        let (_, page) = get(
            &gateway,
            &format!("/admin/logs?key_id={}", created["id"].as_str().unwrap()),
        )
        .await;
        if page["data"][0]["request_id"] == "log-me-1" {
            found = page;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(found["data"][0]["model"], "m", "{found}");
    assert_eq!(found["data"][0]["outcome"], "success");
}

#[tokio::test]
async fn the_openapi_document_describes_both_endpoints() {
    let gateway = gateway().await;
    let (status, document) = get(&gateway, "/admin/openapi.json").await;
    assert_eq!(status, 200);
    let names = |path: &str| -> Vec<String> {
        document["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} is not described"))
            .iter()
            .map(|parameter| parameter["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names("/admin/logs"),
        [
            "from",
            "to",
            "key_id",
            "team_id",
            "model",
            "deployment",
            "status",
            "outcome",
            "request_id",
            "end_user",
            "metadata",
            "limit",
            "cursor"
        ]
    );
    assert_eq!(names("/admin/usage"), ["group_by", "bucket", "from", "to"]);
    for schema in ["LogRecord", "UsageRow"] {
        assert!(
            document["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
    }
    // Every field the endpoints answer with is described.
    insert(&gateway, &[record("x", BASE, "m", 200)]).await;
    let (_, page) = get(&gateway, "/admin/logs").await;
    let (_, usage) = get(&gateway, "/admin/usage?from=0").await;
    for (schema, shown) in [
        ("LogRecord", &page["data"][0]),
        ("UsageRow", &usage["data"][0]),
    ] {
        let described = &document["components"]["schemas"][schema]["properties"];
        let fields = shown.as_object().unwrap();
        assert!(!fields.is_empty());
        for field in fields.keys() {
            assert!(
                described[field].is_object(),
                "{schema}.{field} is not described"
            );
        }
        assert_eq!(
            described.as_object().unwrap().len(),
            fields.len(),
            "{schema}"
        );
    }
}

#[tokio::test]
async fn metadata_travels_from_the_header_to_the_log_and_filters_it() {
    let gateway = gateway().await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    for (id, metadata) in [
        ("meta-1", r#"{"feature": "summary", "team": "search"}"#),
        ("meta-2", r#"{"feature":"chat"}"#),
        // A value crafted to look like another member matches nothing.
        ("meta-3", r#"{"note":"x\",\"feature\":\"summary"}"#),
    ] {
        let response = gateway
            .post("/v1/chat/completions", body)
            .header("x-request-id", id)
            .header("x-switchboard-metadata", metadata)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{id}");
    }
    let mut page = Value::Null;
    for _ in 0..100 {
        let (_, found) = get(&gateway, "/admin/logs?metadata=feature:summary").await;
        if !found["data"].as_array().unwrap().is_empty() {
            page = found;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ids(&page), ["meta-1"], "{page}");
    assert_eq!(
        page["data"][0]["metadata"],
        json!({"feature": "summary", "team": "search"})
    );
    assert_eq!(page["data"][0]["cache_hit"], false);
    // Exact, case included.
    let (_, other_case) = get(&gateway, "/admin/logs?metadata=Feature:summary").await;
    assert_eq!(ids(&other_case), Vec::<String>::new());
    let (_, chat) = get(&gateway, "/admin/logs?metadata=feature:chat").await;
    assert_eq!(ids(&chat), ["meta-2"]);
    // LIKE's wildcards in a value are literal.
    let (_, none) = get(&gateway, "/admin/logs?metadata=feature:%25").await;
    assert_eq!(ids(&none), Vec::<String>::new());
    let (status, error) = get(&gateway, "/admin/logs?metadata=nocolon").await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["param"], "metadata");

    // Malformed metadata is refused before anything goes upstream.
    for bad in [
        "not json",
        r#"["a"]"#,
        r#"{"n": 1}"#,
        &format!(r#"{{"long": "{}"}}"#, "x".repeat(257)),
    ] {
        let response = gateway
            .post("/v1/chat/completions", body)
            .header("x-switchboard-metadata", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_header");
    }
}

#[tokio::test]
async fn records_past_their_retention_are_deleted_at_start() {
    let path = std::env::temp_dir().join(format!(
        "switchboard-retention-{}-{}.db",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let day = 86_400_000;
    {
        use switchboard_store::Store;
        let store = switchboard_store::SqliteStore::open_file(&path)
            .await
            .unwrap();
        store
            .insert_records(&[
                record("ancient", now - 90 * day, "m", 200),
                record("old", now - 31 * day, "m", 200),
                record("recent", now - 29 * day, "m", 200),
                record("today", now - 1000, "m", 200),
            ])
            .await
            .unwrap();
    }
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmaster_key = \"{MASTER_KEY}\"\n[storage]\nurl = \"sqlite://{}\"\njournal_dir = \"\"\nretention_days = 30\n{MODELS}",
        path.display()
    );
    let config = switchboard_config::Config::from_toml("retention.toml", &text).unwrap();
    let gateway = TestGateway::start(config).await;
    let mut left = Vec::new();
    for _ in 0..100 {
        let (_, page) = get(&gateway, "/admin/logs").await;
        left = ids(&page);
        if left.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, ["today", "recent"]);
    gateway.stop_and_records().await;
    // The database and its write-ahead log files.
    for suffix in ["", "-shm", "-wal"] {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

/// Bodies are kept, redacted, for a model that asks (and for a key that
/// does, on any model), and never otherwise.
#[tokio::test]
async fn bodies_are_kept_redacted_only_where_asked() {
    let models = r#"
[logging]
redact_patterns = ["ACME-[0-9]{6}"]
[[models]]
name = "kept"
log_bodies = true
[[models.deployments]]
provider = "simulated"
simulation = { reply = "reach me at bob@example.com" }
[[models]]
name = "m"
[[models.deployments]]
provider = "simulated"
"#;
    let gateway = TestGateway::start(config_with(models, "")).await;
    let secret_laden = r#"{"model":"kept","messages":[{"role":"user","content":"my key is sk-abcdefghijklmnop123456, card 4111-1111-1111-1111, ticket ACME-123456"}]}"#;
    let send = |id: &'static str, body: &'static str| {
        gateway
            .post("/v1/chat/completions", body)
            .header("x-request-id", id)
            .send()
    };
    assert_eq!(send("kept-1", secret_laden).await.unwrap().status(), 200);
    let plain = r#"{"model":"m","messages":[{"role":"user","content":"a@b.io"}]}"#;
    assert_eq!(send("plain-1", plain).await.unwrap().status(), 200);
    let streamed = r#"{"model":"kept","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = send("kept-2", streamed).await.unwrap();
    let stream_text = response.text().await.unwrap();

    let entry = |id: &'static str| {
        let gateway = &gateway;
        async move {
            for _ in 0..100 {
                let (status, found) = get(gateway, &format!("/admin/logs/{id}")).await;
                if status == 200 {
                    return found["data"][0].clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{id} never reached the log");
        }
    };
    let kept = entry("kept-1").await;
    let request = kept["request_body"].as_str().unwrap();
    assert!(request.contains("[REDACTED:api_key]"), "{request}");
    assert!(request.contains("[REDACTED:card_number]"), "{request}");
    assert!(request.contains("[REDACTED:pattern]"), "{request}");
    assert!(
        !request.contains("sk-abcdef") && !request.contains("4111") && !request.contains("ACME-1")
    );
    let answer = kept["response_body"].as_str().unwrap();
    assert!(
        answer.contains("[REDACTED:email]") && !answer.contains("bob@"),
        "{answer}"
    );
    assert_eq!(kept["model"], "kept");

    let streamed_entry = entry("kept-2").await;
    // A stream is kept as the answer it spelled out, redacted: the email
    // arrived in a chunk of its own, and would have been missed had the
    // stream split it.
    assert!(stream_text.contains("bob@example.com"));
    assert_eq!(
        streamed_entry["response_body"].as_str().unwrap(),
        "reach me at [REDACTED:email]"
    );

    let plain_entry = entry("plain-1").await;
    assert_eq!(plain_entry["request_body"], Value::Null);
    assert_eq!(plain_entry["response_body"], Value::Null);

    // A key that asks for bodies has them kept on any model.
    let created = admin_create(
        &gateway,
        "/admin/keys",
        r#"{"name":"audited","log_bodies":true}"#,
    )
    .await;
    assert_eq!(created["log_bodies"], true, "{created}");
    let secret = created["key"].as_str().unwrap().to_owned();
    chat_once_the_key_works(&gateway, &secret, "audited-1", plain).await;
    let audited = entry("audited-1").await;
    assert_eq!(
        audited["request_body"],
        r#"{"model":"m","messages":[{"role":"user","content":"[REDACTED:email]"}]}"#
    );
    // A team that asks for bodies has them kept for each of its keys.
    let team = admin_create(
        &gateway,
        "/admin/teams",
        r#"{"name":"audited-team","log_bodies":true}"#,
    )
    .await;
    assert_eq!(team["log_bodies"], true, "{team}");
    let member = admin_create(
        &gateway,
        "/admin/keys",
        &format!(
            r#"{{"name":"member","team_id":"{}"}}"#,
            team["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(member["log_bodies"], false, "{member}");
    let member = member["key"].as_str().unwrap().to_owned();
    chat_once_the_key_works(&gateway, &member, "team-audited-1", plain).await;
    let by_team = entry("team-audited-1").await;
    assert_eq!(by_team["request_body"], audited["request_body"]);
    // Not per end user.
    let refused = gateway
        .post(
            "/admin/keys",
            r#"{"user_limits":{"rpm":5,"log_bodies":true}}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let (status, _) = get(&gateway, "/admin/logs/no-such-request").await;
    assert_eq!(status, 404);
}

/// What an admin POST created.
async fn admin_create(gateway: &TestGateway, path: &str, body: &str) -> Value {
    gateway
        .post(path, body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Sends `body` to chat completions with `secret` as request `id`, again
/// until the new key is known (the key cache refreshes), and expects a 200.
async fn chat_once_the_key_works(gateway: &TestGateway, secret: &str, id: &str, body: &str) {
    let mut status = 0;
    for _ in 0..40 {
        status = gateway
            .post_as(secret, "/v1/chat/completions", body)
            .header("x-request-id", id)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
}

/// `chat` on one deployment, `east`, at `upstream`, falling back to
/// `backup` (a simulated deployment, `sim`).
fn fallback_models(upstream: &switchboard_testkit::MockUpstream) -> String {
    format!(
        r#"
[[models]]
name = "chat"
fallbacks = ["backup"]
[[models.deployments]]
name = "east"
provider = "openai-compatible"
api_base = "{}"
model = "upstream-model"
[models.routing]
max_attempts = 1
[[models]]
name = "backup"
[[models.deployments]]
name = "sim"
provider = "simulated"
"#,
        upstream.base_url()
    )
}

/// A request that failed on `chat` and was served by its fallback lists
/// both attempts, with their models and outcomes, in `GET /admin/logs/{id}`
/// and in `GET /admin/logs`; a plain success lists its one attempt.
async fn attempts_reach_the_log(storage_url: &str) {
    let upstream = switchboard_testkit::MockUpstream::start().await;
    upstream.push(switchboard_testkit::Script::json(
        503,
        json!({"error": {"message": "overloaded"}}),
    ));
    let gateway = TestGateway::start(config_stored_at(
        storage_url,
        &fallback_models(&upstream),
        "",
    ))
    .await;
    let body = r#"{"model":"chat","messages":[{"role":"user","content":"hello"}]}"#;
    for id in ["fell-back", "served-at-once"] {
        let response = gateway
            .post("/v1/chat/completions", body)
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let mut entry = Value::Null;
    for _ in 0..100 {
        let (status, found) = get(&gateway, "/admin/logs/fell-back").await;
        if status == 200 {
            entry = found["data"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let details = entry["attempt_details"]
        .as_array()
        .expect("attempt details");
    assert_eq!(details.len(), 2, "{entry:#}");
    assert_eq!(
        (
            &details[0]["deployment"],
            &details[0]["model"],
            &details[0]["outcome"],
            &details[0]["status"]
        ),
        (
            &json!("east"),
            &json!("chat"),
            &json!("server_error"),
            &json!(503)
        )
    );
    assert_eq!(
        (
            &details[1]["deployment"],
            &details[1]["model"],
            &details[1]["outcome"]
        ),
        (&json!("sim"), &json!("backup"), &json!("ok"))
    );
    assert!(details[1].get("status").is_none(), "{entry:#}");
    assert!(details.iter().all(|detail| detail["duration_ms"].is_u64()));
    assert_eq!(entry["attempts"], 2);
    assert_eq!(entry["served_model"], "backup");

    let (status, page) = get(&gateway, "/admin/logs?model=chat").await;
    assert_eq!(status, 200);
    let listed = |id: &str| {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|record| record["request_id"] == id)
            .unwrap_or_else(|| panic!("{id} in {page:#}"))["attempt_details"]
            .clone()
    };
    assert_eq!(listed("fell-back"), entry["attempt_details"]);
    let single = listed("served-at-once");
    assert_eq!(single.as_array().unwrap().len(), 1, "{single:#}");
    assert_eq!(single[0]["deployment"], "east");
    assert_eq!(single[0]["outcome"], "ok");
}

#[tokio::test]
async fn attempts_and_fallbacks_are_listed_on_sqlite() {
    attempts_reach_the_log("sqlite::memory:").await;
}

#[tokio::test]
async fn attempts_and_fallbacks_are_listed_on_postgres() {
    let (schema, url) = match postgres_schema("sb_request_log").await {
        Ok(found) => found,
        Err(why) => {
            return switchboard_testkit::skip_or_fail(
                "attempts_and_fallbacks_are_listed_on_postgres",
                &why,
            );
        }
    };
    // The schema goes whether the test passes or fails.
    let outcome = tokio::spawn(async move { attempts_reach_the_log(&url).await }).await;
    drop_postgres_schema(&schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

/// With `[logging] requests = false` nothing reaches the request log, not
/// even a refused request, while a key's budget still holds in memory;
/// with the default every request is recorded.
#[tokio::test]
async fn requests_go_unrecorded_when_logging_says_so_and_budgets_still_hold() {
    let models = r#"
[[models]]
name = "priced"
[[models.deployments]]
provider = "simulated"
price = { input_per_mtok = 1000.0, output_per_mtok = 2000.0 }
"#;
    let body =
        r#"{"model":"priced","max_tokens":5,"messages":[{"role":"user","content":"hello there"}]}"#;
    for recorded in [false, true] {
        let logging = format!("[logging]\nrequests = {recorded}\n{models}");
        let gateway = TestGateway::start(config_with(&logging, "")).await;
        let created: Value = gateway
            .post(
                "/admin/keys",
                r#"{"name":"capped","budget_usd":0.2,"budget_period":"daily"}"#,
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let secret = created["key"].as_str().unwrap().to_owned();
        let send = |body: &'static str| {
            gateway
                .http
                .post(gateway.url("/v1/chat/completions"))
                .bearer_auth(&secret)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let mut served = 0;
        loop {
            let status = send(body).await.unwrap().status();
            if status != 200 {
                assert_eq!(status, 429, "the budget ran out");
                break;
            }
            served += 1;
            assert!(served < 50, "the budget never ran out");
        }
        assert!(served > 0);
        let unknown = r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#;
        assert_eq!(send(unknown).await.unwrap().status(), 404);
        let metrics = gateway.metrics_text().await;
        assert!(
            metrics.contains(
                "switchboard_requests_total{endpoint=\"chat_completions\",model=\"priced\""
            ),
            "metrics still count: {metrics}"
        );
        let records = gateway.stop_and_records().await;
        if recorded {
            // Every served request, the refusal by budget and the unknown model.
            assert_eq!(records.len(), served + 2, "with requests = true");
        } else {
            assert!(records.is_empty(), "with requests = false: {records:?}");
        }
    }
}
