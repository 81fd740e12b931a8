//! Several gateway instances, one truth: two gateways sharing one
//! PostgreSQL database and one Redis hold budgets and rate limits together,
//! and a key revoked through one is refused by the other within a second;
//! budgets' spend lost from Redis is restored from the request log.
//!
//! Needs PostgreSQL (127.0.0.1:5432, database `test`, or
//! `SWITCHBOARD_TEST_POSTGRES_URL`) and Redis (127.0.0.1:6379, or
//! `SWITCHBOARD_TEST_REDIS_URL`). Without them the test says SKIPPED and
//! passes, except under `CI`, where it fails.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use support::*;

fn postgres_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn skip_or_fail(why: String) {
    assert!(std::env::var_os("CI").is_none(), "required under CI: {why}");
    println!("SKIPPED: several instances need PostgreSQL and Redis: {why}");
}

/// A fresh schema for this test, or why there is none.
async fn schema() -> Result<(String, String), String> {
    let admin = postgres_url();
    let name = format!("sb_instances_{:016x}", rand_u64());
    let mut connection =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin))
            .await
            .map_err(|_| "PostgreSQL did not answer within 5 s".to_owned())?
            .map_err(|error| format!("PostgreSQL: {error}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
        .execute(&mut connection)
        .await
        .map_err(|error| error.to_string())?;
    let separator = if admin.contains('?') { '&' } else { '?' };
    Ok((
        name.clone(),
        format!("{admin}{separator}options=-c%20search_path%3D{name}"),
    ))
}

async fn drop_schema(name: &str) {
    if let Ok(mut connection) = sqlx::PgConnection::connect(&postgres_url()).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
            .execute(&mut connection)
            .await;
    }
}

fn rand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    switchboard_core::mix::splitmix64(nanos ^ u64::from(std::process::id()))
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
    gateway
        .http
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(json!({"model": "priced", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn create_key(gateway: &TestGateway, body: Value) -> (String, String) {
    let created: Value = gateway
        .post("/admin/keys", &body.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_keys_budgets_and_limits() {
    if let Err(why) = redis_answers().await {
        return skip_or_fail(why);
    }
    let (schema, database) = match schema().await {
        Ok(schema) => schema,
        Err(why) => return skip_or_fail(why),
    };
    let first = TestGateway::start(config(&database)).await;
    let second = TestGateway::start(config(&database)).await;

    // A budget of $1 hit through both instances at once.
    let (budget_id, budget_key) =
        create_key(&first, json!({"budget_usd": 1.0, "budget_period": "daily"})).await;
    known_by(&second, &budget_key).await;
    let requests: Vec<_> = (0..120)
        .map(|index| {
            let gateway = if index % 2 == 0 { &first } else { &second };
            chat(gateway, &budget_key)
        })
        .collect();
    let statuses = futures_util::future::join_all(requests).await;
    let served = statuses.iter().filter(|status| **status == 200).count();
    assert!(served > 0 && statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|status| *status == 200 || *status == 429)
    );

    // A rate limit of 5 a minute, counted once across both.
    let (_, limited) = create_key(&first, json!({"rpm": 5})).await;
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
    let (revoked_id, revoked_key) = create_key(&first, json!({})).await;
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
    let records_first = first.stop_and_records().await;
    second.stop_and_records().await;
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
    drop_schema(&schema).await;
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
    if let Err(why) = redis_answers().await {
        return skip_or_fail(why);
    }
    let (schema, database) = match schema().await {
        Ok(schema) => schema,
        Err(why) => return skip_or_fail(why),
    };
    // A prefix of its own: the marker it deletes is this gateway's alone.
    let prefix = format!("sbtest:{schema}:");
    let gateway = TestGateway::start(config_prefixed(&database, &prefix)).await;
    let budget = json!({"budget_usd": 0.2, "budget_period": "daily"});
    let (spent_id, spent_key) = create_key(&gateway, budget.clone()).await;
    let (_, fresh_key) = create_key(&gateway, budget).await;
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
    drop_schema(&schema).await;
    // Everything else it wrote expires by itself.
    redis_delete(&[format!("{prefix}{{sb}}:epoch")]).await;
}
