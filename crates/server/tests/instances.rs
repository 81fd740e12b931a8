//! Several gateway instances, one truth: two gateways sharing one
//! PostgreSQL database and one Redis hold budgets and rate limits together,
//! and a key revoked through one is refused by the other within a second;
//! budgets' spend lost from Redis is restored from the request log.
//!
//! Needs PostgreSQL (127.0.0.1:5432, database `test`, or
//! `SWITCHBOARD_TEST_POSTGRES_URL`) and Redis (127.0.0.1:6379, or
//! `SWITCHBOARD_TEST_REDIS_URL`). Without them the test writes SKIPPED to
//! standard error (past libtest's capture) and passes, except under `CI`,
//! where it fails.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Redis answers and a PostgreSQL schema of this test's own exists:
/// the schema's name and its URL.
async fn shared_services() -> Result<(String, String), String> {
    redis_answers().await?;
    postgres_schema("sb_instances").await
}

async fn redis_answers() -> Result<(), String> {
    let address = redis_url()
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&address),
    )
    .await
    .map_err(|_| format!("Redis at {address} did not answer"))?
    .map(|_| ())
    .map_err(|error| format!("Redis at {address}: {error}"))
}

fn config(database: &str) -> switchboard_config::Config {
    config_prefixed(database, "switchboard:")
}

/// A config whose Redis keys start with `prefix`.
fn config_prefixed(database: &str, prefix: &str) -> switchboard_config::Config {
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
master_key = "{MASTER_KEY}"
[storage]
url = "{database}"
redis_url = "{redis}"
redis_prefix = "{prefix}"
[[models]]
name = "priced"
[[models.deployments]]
provider = "simulated"
price = {{ input_per_mtok = 1000.0, output_per_mtok = 2000.0 }}
"#,
        redis = redis_url()
    );
    switchboard_config::Config::from_toml("instances.toml", &text).unwrap()
}

async fn chat(gateway: &TestGateway, key: &str) -> u16 {
    chat_answer(gateway, key).await.0
}

/// A chat request's status and JSON body.
async fn chat_answer(gateway: &TestGateway, key: &str) -> (u16, Value) {
    let response = gateway
        .http
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(json!({"model": "priced", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `gateway` knows the key (it reloads its keys every 250 ms).
async fn known_by(gateway: &TestGateway, key: &str) -> Duration {
    let started = Instant::now();
    loop {
        let response = gateway
            .http
            .get(gateway.url("/v1/models"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the key never reached the other instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Says why a test that needs PostgreSQL and Redis does not run (fails under CI).
fn skip_or_fail(why: String) {
    switchboard_testkit::skip_or_fail(
        "instances",
        &format!("several instances need PostgreSQL and Redis: {why}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_keys_budgets_and_limits() {
    let skip = |why: String| {
        switchboard_testkit::skip_or_fail(
            "two_instances_share_keys_budgets_and_limits",
            &format!("several instances need PostgreSQL and Redis: {why}"),
        )
    };
    let (schema, database) = match shared_services().await {
        Ok(schema) => schema,
        Err(why) => return skip(why),
    };
    let first = TestGateway::start(config(&database)).await;
    let second = TestGateway::start(config(&database)).await;

    // A budget of $1 hit by 200 concurrent requests through both
    // instances.
    let (budget_id, budget_key) = first
        .create_key(json!({"budget_usd": 1.0, "budget_period": "daily"}))
        .await;
    known_by(&second, &budget_key).await;
    let requests: Vec<_> = (0..200)
        .map(|index| {
            let gateway = if index % 2 == 0 { &first } else { &second };
            chat_answer(gateway, &budget_key)
        })
        .collect();
    let answers = futures_util::future::join_all(requests).await;
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    assert!(
        served > 0 && answers.iter().any(|(status, _)| *status == 429),
        "{answers:?}"
    );
    // Every refusal says, in OpenAI's shape, that the key's budget is
    // exhausted.
    for (status, body) in &answers {
        match status {
            200 => {}
            429 => {
                assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
                assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains("budget") && message.contains(&budget_id),
                    "{message}"
                );
            }
            other => panic!("answered {other}: {body}"),
        }
    }

    // A rate limit of 5 a minute, counted once across both.
    let (_, limited) = first.create_key(json!({"rpm": 5})).await;
    known_by(&second, &limited).await;
    let mut allowed = 0;
    for index in 0..10 {
        let gateway = if index % 2 == 0 { &first } else { &second };
        if chat(gateway, &limited).await == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "5 requests a minute across both instances");

    // Revoked through one, refused by the other within a second.
    let (revoked_id, revoked_key) = first.create_key(json!({})).await;
    known_by(&second, &revoked_key).await;
    assert_eq!(chat(&second, &revoked_key).await, 200);
    let response = first
        .post(&format!("/admin/keys/{revoked_id}/revoke"), "")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let revoked_at = Instant::now();
    while chat(&second, &revoked_key).await == 200 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "the other instance still accepts a revoked key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every completed request's spend is in the shared database, and
    // together they stay within the budget.
    // The second instance stops (writing what it still holds) before the
    // first reads the shared database.
    second.stop_and_records().await;
    let records_first = first.stop_and_records().await;
    let spent: u64 = records_first
        .iter()
        .filter(|record| record.key_id.as_deref() == Some(budget_id.as_str()))
        .filter_map(|record| record.cost_nanos)
        .sum();
    let served_records = records_first
        .iter()
        .filter(|record| {
            record.key_id.as_deref() == Some(budget_id.as_str()) && record.status == 200
        })
        .count();
    assert_eq!(
        served_records, served,
        "both instances' records are in the shared database"
    );
    assert!(
        spent <= 1_000_000_000,
        "{spent} nano-dollars overshoot the $1 budget"
    );
    drop_postgres_schema(&schema).await;
}

/// A configuration on the shared database and Redis with these models
/// (and the master key).
fn config_with_models(database: &str, models: &str) -> switchboard_config::Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmaster_key = \"{MASTER_KEY}\"\n[storage]\nurl = \"{database}\"\nredis_url = \"{}\"\n{models}",
        redis_url()
    );
    switchboard_config::Config::from_toml("instances.toml", &text).unwrap()
}

/// Deployments' per-minute counts live in UTC minutes: a test that counts
/// them starts early enough in one to finish within it.
async fn early_in_a_minute() {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 60_000;
    if into > 40_000 {
        tokio::time::sleep(Duration::from_millis(60_100 - into as u64)).await;
    }
}

/// Status, serving deployment, serving model and error code of a chat
/// request to `model` with the master key.
async fn served(gateway: &TestGateway, model: &str) -> (u16, String, String, String) {
    let response = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, deployment, model) = (
        response.status().as_u16(),
        header("x-switchboard-deployment"),
        header("x-switchboard-model"),
    );
    let body: Value = response.json().await.unwrap();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, deployment, model, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_deployments_requests_per_minute() {
    let (schema, database) = match shared_services().await {
        Ok(schema) => schema,
        Err(why) => return skip_or_fail(why),
    };
    // Deployment names are the shared counters' ids: fresh ones per run.
    let run = format!("{:012x}", rand_u64() >> 16);
    let models = format!(
        r#"
[[models]]
name = "tiered"
[[models.deployments]]
name = "capped-{run}"
provider = "simulated"
rpm = 3
[[models.deployments]]
name = "spare-{run}"
provider = "simulated"
priority = 1
[[models]]
name = "chained"
fallbacks = ["backup"]
[[models.deployments]]
name = "chain-{run}"
provider = "simulated"
rpm = 2
[[models]]
name = "backup"
[[models.deployments]]
name = "backup-{run}"
provider = "simulated"
[[models]]
name = "solo"
[[models.deployments]]
name = "solo-{run}"
provider = "simulated"
rpm = 2
"#
    );
    let first = TestGateway::start(config_with_models(&database, &models)).await;
    let second = TestGateway::start(config_with_models(&database, &models)).await;
    early_in_a_minute().await;

    // The preferred deployment serves 3 a minute across both instances;
    // the next tier serves the rest.
    let mut by = std::collections::HashMap::<String, usize>::new();
    for index in 0..10 {
        let gateway = if index % 2 == 0 { &first } else { &second };
        let (status, deployment, _, _) = served(gateway, "tiered").await;
        assert_eq!(status, 200);
        *by.entry(deployment).or_default() += 1;
    }
    assert_eq!(by.get(&format!("capped-{run}")), Some(&3), "{by:?}");
    assert_eq!(by.get(&format!("spare-{run}")), Some(&7), "{by:?}");

    // A model whose deployment is full falls back to the next model.
    let mut answers = Vec::new();
    for index in 0..5 {
        let gateway = if index % 2 == 0 { &second } else { &first };
        answers.push(served(gateway, "chained").await);
    }
    let own = answers
        .iter()
        .filter(|(status, deployment, ..)| *status == 200 && *deployment == format!("chain-{run}"))
        .count();
    let fallen = answers
        .iter()
        .filter(|(status, _, model, _)| *status == 200 && model == "backup")
        .count();
    assert_eq!((own, fallen), (2, 3), "{answers:?}");

    // Without anywhere else to go, both instances answer what a single
    // instance answers once its deployment is full.
    let lone = TestGateway::start(support::config_with(
        "[[models]]\nname = \"solo\"\n[[models.deployments]]\nprovider = \"simulated\"\nrpm = 2\n",
        "",
    ))
    .await;
    let mut alone = Vec::new();
    for _ in 0..3 {
        alone.push(served(&lone, "solo").await);
    }
    let (full_status, _, _, full_code) = alone[2].clone();
    assert_eq!(alone[0].0, 200);
    assert_ne!(full_status, 200, "{alone:?}");
    let mut statuses = Vec::new();
    for index in 0..6 {
        let gateway = if index % 2 == 0 { &first } else { &second };
        let (status, _, _, code) = served(gateway, "solo").await;
        assert!(
            status == 200 || (status == full_status && code == full_code),
            "{status} {code}"
        );
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        2,
        "2 upstream calls a minute across both instances: {statuses:?}"
    );

    lone.stop_and_records().await;
    // The second instance stops (writing what it still holds) before the
    // first reads the shared database.
    second.stop_and_records().await;
    let records = first.stop_and_records().await;
    let upstream_calls = records
        .iter()
        .filter(|record| record.deployment.as_deref() == Some(&format!("capped-{run}")))
        .count();
    assert_eq!(
        upstream_calls, 3,
        "the shared database holds both instances' records"
    );
    drop_postgres_schema(&schema).await;
}

/// A chat request with a key, answering its status, its serving deployment
/// and the key's requests left.
async fn keyed(gateway: &TestGateway, key: &str, model: &str) -> (u16, String, String) {
    let response = gateway
        .http
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (
        response.status().as_u16(),
        header("x-switchboard-deployment"),
        header("x-ratelimit-remaining-requests"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_found_full_does_not_charge_the_key() {
    let (schema, database) = match shared_services().await {
        Ok(schema) => schema,
        Err(why) => return skip_or_fail(why),
    };
    let run = format!("{:012x}", rand_u64() >> 16);
    let models = format!(
        r#"
[[models]]
name = "tiered"
[[models.deployments]]
name = "capped-{run}"
provider = "simulated"
rpm = 1
[[models.deployments]]
name = "spare-{run}"
provider = "simulated"
priority = 1
"#
    );
    let first = TestGateway::start(config_with_models(&database, &models)).await;
    let second = TestGateway::start(config_with_models(&database, &models)).await;
    let (_, key) = first.create_key(json!({"rpm": 10})).await;
    known_by(&second, &key).await;
    early_in_a_minute().await;

    let capped = format!("capped-{run}");
    let spare = format!("spare-{run}");
    // Each instance meets the full deployment in Redis once (the second
    // time, the first instance remembers it): four requests, four of the
    // key's ten, whatever the refusals.
    let answers = [
        keyed(&first, &key, "tiered").await,
        keyed(&second, &key, "tiered").await,
        keyed(&second, &key, "tiered").await,
        keyed(&first, &key, "tiered").await,
    ];
    let expected = [
        (200, capped, "9".to_owned()),
        (200, spare.clone(), "8".to_owned()),
        (200, spare.clone(), "7".to_owned()),
        (200, spare, "6".to_owned()),
    ];
    assert_eq!(answers, expected);

    first.stop_and_records().await;
    second.stop_and_records().await;
    drop_postgres_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_attempt_hands_its_deployments_tokens_back() {
    let (schema, database) = match shared_services().await {
        Ok(schema) => schema,
        Err(why) => return skip_or_fail(why),
    };
    let (a, b) = (
        switchboard_testkit::MockUpstream::start().await,
        switchboard_testkit::MockUpstream::start().await,
    );
    let run = format!("{:012x}", rand_u64() >> 16);
    // Each request reserves its worst case, 10,000 output tokens and its
    // body: one fits in `a`'s minute, two do not.
    let models = format!(
        r#"
[[models]]
name = "chat"
[[models.deployments]]
name = "a-{run}"
provider = "openai-compatible"
api_base = "{}"
model = "model-a"
tpm = 15000
[[models.deployments]]
name = "b-{run}"
provider = "openai-compatible"
api_base = "{}"
model = "model-b"
priority = 1
[models.routing]
max_attempts = 2
circuit_breaker_failures = 1000
retry_backoff_ms = 1
retry_max_backoff_ms = 5
"#,
        a.base_url(),
        b.base_url()
    );
    let gateway = TestGateway::start(config_with_models(&database, &models)).await;
    let (_, key) = gateway
        .create_key(json!({"rpm": 100, "tpm": 1000000}))
        .await;
    early_in_a_minute().await;
    let (http, url) = (gateway.http.clone(), gateway.url("/v1/chat/completions"));
    let ask = move || {
        http
            .post(url.clone())
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(
                json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10000})
                    .to_string(),
            )
            .send()
    };
    a.push(switchboard_testkit::Script::json(
        500,
        json!({"error": {"message": "boom", "type": "server_error"}}),
    ));
    b.push(switchboard_testkit::Script::Delay(Duration::from_millis(
        1500,
    )));
    // `a` fails at once; `b` takes its time to answer.
    let failing_over = tokio::spawn(ask());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // `a`'s failed attempt used nothing: while the first request is still
    // on `b`, `a`'s minute has room for another worst case.
    let meanwhile = ask().await.unwrap();
    assert_eq!(meanwhile.status(), 200);
    assert_eq!(
        meanwhile.headers()["x-switchboard-deployment"],
        format!("a-{run}").as_str()
    );
    let failed_over = failing_over.await.unwrap().unwrap();
    assert_eq!(failed_over.status(), 200);
    assert_eq!(
        failed_over.headers()["x-switchboard-deployment"],
        format!("b-{run}").as_str()
    );
    assert_eq!(failed_over.headers()["x-switchboard-attempts"], "2");
    // The answer's tokens count at their actual number once settled (13
    // here, not the worst case), so a third request fits as well.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = ask().await.unwrap();
    assert_eq!(
        third.headers()["x-switchboard-deployment"],
        format!("a-{run}").as_str()
    );

    gateway.stop_and_records().await;
    drop_postgres_schema(&schema).await;
}

/// Deletes keys from the shared Redis (raw RESP: this crate does not name
/// the redis client).
async fn redis_delete(keys: &[String]) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let address = redis_url()
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut command = format!("*{}\r\n$3\r\nDEL\r\n", keys.len() + 1);
    for key in keys {
        command.push_str(&format!("${}\r\n{key}\r\n", key.len()));
    }
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream.write_all(command.as_bytes()).await.unwrap();
    let mut reply = String::new();
    tokio::io::BufReader::new(stream)
        .read_line(&mut reply)
        .await
        .unwrap();
    assert!(reply.starts_with(':'), "DEL answered {reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_lost_from_redis_are_restored_from_the_request_log() {
    let (schema, database) = match shared_services().await {
        Ok(schema) => schema,
        Err(why) => return skip_or_fail(why),
    };
    // A prefix of its own: the marker it deletes is this gateway's alone.
    let prefix = format!("sbtest:{schema}:");
    let gateway = TestGateway::start(config_prefixed(&database, &prefix)).await;
    let budget = json!({"budget_usd": 0.2, "budget_period": "daily"});
    let (spent_id, spent_key) = gateway.create_key(budget.clone()).await;
    let (_, fresh_key) = gateway.create_key(budget).await;
    // Spent until refused even once every settle has landed (a refusal
    // can also come from the previous request's hold, settled just after
    // its response).
    let mut served = 0;
    loop {
        if chat(&gateway, &spent_key).await == 200 {
            served += 1;
            assert!(served < 50, "the budget never ran out");
            continue;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if chat(&gateway, &spent_key).await != 200 {
            break;
        }
        served += 1;
    }
    assert!(served > 0);
    assert_eq!(chat(&gateway, &fresh_key).await, 200);
    // Let the record writer commit the requests' records.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A flush: this key's counters and the marker that says they were
    // seeded.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let window =
        switchboard_policy::limits::budget_window(switchboard_policy::limits::Period::Daily, now);
    let base = format!("{prefix}{{sb}}:key:{spent_id}");
    redis_delete(&[
        format!("{base}:spent:{window}"),
        format!("{base}:held:{window}"),
        format!("{base}:inflight"),
        format!("{prefix}{{sb}}:epoch"),
    ])
    .await;

    assert_eq!(
        chat(&gateway, &spent_key).await,
        429,
        "the spent budget is still spent after Redis lost its counters"
    );
    assert_eq!(
        chat(&gateway, &fresh_key).await,
        200,
        "the other still has room"
    );
    gateway.stop_and_records().await;
    drop_postgres_schema(&schema).await;
    // Everything else it wrote expires by itself.
    redis_delete(&[format!("{prefix}{{sb}}:epoch")]).await;
}

/// One Redis command over a connection of its own (the server's tests do
/// not link a Redis client): its reply as integers, texts or a list.
#[derive(Debug)]
enum Reply {
    Int(i64),
    Text(Option<String>),
    List(Vec<Reply>),
}

async fn redis_command(args: &[&str]) -> Reply {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let address = redis_url().trim_start_matches("redis://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(command.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    async fn read(reader: &mut BufReader<tokio::net::TcpStream>) -> Reply {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            ":" => Reply::Int(rest.parse().unwrap()),
            "+" => Reply::Text(Some(rest.to_owned())),
            "$" if rest == "-1" => Reply::Text(None),
            "$" => {
                let mut bytes = vec![0; rest.parse::<usize>().unwrap() + 2];
                reader.read_exact(&mut bytes).await.unwrap();
                bytes.truncate(bytes.len() - 2);
                Reply::Text(Some(String::from_utf8(bytes).unwrap()))
            }
            "*" => {
                let mut items = Vec::new();
                for _ in 0..rest.parse::<usize>().unwrap() {
                    items.push(Box::pin(read(reader)).await);
                }
                Reply::List(items)
            }
            _ => panic!("Redis answered {line}"),
        }
    }
    read(&mut reader).await
}

fn texts(reply: Reply) -> Vec<String> {
    match reply {
        Reply::List(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Reply::Text(text) => text,
                _ => None,
            })
            .collect(),
        other => panic!("not a list: {other:?}"),
    }
}

/// Sums the integers a command on each key answers (`HVALS`, `GET`,
/// `HGET … r`), over every key matching `pattern`.
async fn sum_over(pattern: &str, command: &[&str]) -> u64 {
    let mut sum = 0;
    for key in texts(redis_command(&["KEYS", pattern]).await) {
        let mut args = vec![command[0], key.as_str()];
        args.extend_from_slice(&command[1..]);
        sum += match redis_command(&args).await {
            Reply::Text(text) => text.map_or(0, |text| text.parse::<u64>().unwrap()),
            Reply::List(items) => items
                .into_iter()
                .map(|item| match item {
                    Reply::Text(Some(text)) => text.parse::<u64>().unwrap(),
                    other => panic!("not a number: {other:?}"),
                })
                .sum(),
            Reply::Int(value) => value as u64,
        };
    }
    sum
}

/// Two instances serving one busy key take leases (few grant records for
/// many requests), and once both have stopped, giving their leases back,
/// Redis's counters for the key hold exactly the requests served and the
/// spend the request log holds, with nothing in flight or held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_instances_serve_from_leases_and_give_them_back_when_they_stop() {
    let (schema, database) = match shared_services().await {
        Ok(schema) => schema,
        Err(why) => return skip_or_fail(why),
    };
    let prefix = format!("sbtest:instances-leases:{:012x}:", rand_u64() >> 16);
    let first = TestGateway::start(config_prefixed(&database, &prefix)).await;
    let second = TestGateway::start(config_prefixed(&database, &prefix)).await;
    let (key_id, key) = first
        .create_key(
            json!({"rpm": 1000000, "tpm": 100000000, "max_concurrent": 10000,
               "budget_usd": 1000, "budget_period": "daily"}),
        )
        .await;
    known_by(&second, &key).await;
    // At least 1.5 s and 600 requests (within 20 s): on a loaded machine
    // (a debug build beside other tests) 1.5 s alone may serve so few that
    // the requests counted one by one before the first leases, a few
    // spans' worth, outweigh the rest.
    let started = Instant::now();
    let total = std::sync::atomic::AtomicU64::new(0);
    let busy = || {
        let elapsed = started.elapsed();
        elapsed < Duration::from_secs(20)
            && (elapsed < Duration::from_millis(1_500)
                || total.load(std::sync::atomic::Ordering::Relaxed) < 600)
    };
    let clients: Vec<_> = (0..6)
        .map(|index| {
            let gateway = if index % 2 == 0 { &first } else { &second };
            let key = key.clone();
            let (busy, total) = (&busy, &total);
            async move {
                let mut served = 0u64;
                while busy() {
                    assert_eq!(chat(gateway, &key).await, 200);
                    served += 1;
                    total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                served
            }
        })
        .collect();
    let served: u64 = futures_util::future::join_all(clients).await.iter().sum();
    first.stop_and_records().await;
    let records = second.stop_and_records().await;
    let spent: u64 = records
        .iter()
        .filter(|record| record.key_id.as_deref() == Some(key_id.as_str()))
        .filter_map(|record| record.cost_nanos)
        .sum();
    assert!(spent > 0);

    let base = format!("{prefix}{{sb}}:key:{key_id}");
    let grants = texts(redis_command(&["KEYS", &format!("{prefix}{{sb}}:grant:*")]).await).len();
    assert!(
        (grants as u64) * 4 < served,
        "{grants} grant records for {served} requests: leases served too few"
    );
    assert_eq!(
        sum_over(&format!("{base}:m:*"), &["HGET", "r"]).await,
        served
    );
    assert_eq!(sum_over(&format!("{base}:spent:*"), &["GET"]).await, spent);
    assert_eq!(sum_over(&format!("{base}:held:*"), &["HVALS"]).await, 0);
    assert_eq!(sum_over(&format!("{base}:inflight"), &["HVALS"]).await, 0);
    let keys = texts(redis_command(&["KEYS", &format!("{prefix}*")]).await);
    let mut delete = vec!["DEL"];
    delete.extend(keys.iter().map(String::as_str));
    if !keys.is_empty() {
        redis_command(&delete).await;
    }
    drop_postgres_schema(&schema).await;
}
