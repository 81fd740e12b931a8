//! Several gateway processes sharing PostgreSQL and Redis: one of them is
//! killed with SIGKILL right after its requests completed, and no record
//! (no spend) of those requests is lost: the restarted process writes what
//! its journal holds and the database lacks, while the other instance
//! serves on; and a virtual key's budget holds across them through such a
//! kill.
//!
//! Needs PostgreSQL (127.0.0.1:5432, database `test`, or
//! `SWITCHBOARD_TEST_POSTGRES_URL`) and Redis (127.0.0.1:6379, or
//! `SWITCHBOARD_TEST_REDIS_URL`); without them it writes SKIPPED to
//! standard error (past libtest's capture) and passes, except under `CI`,
//! where it fails.

mod support;

use std::time::Duration;

use sqlx::Connection;
use support::*;
use switchboard_store::{PgStore, Store};

fn postgres_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn fresh_schema() -> Result<(String, String), String> {
    let admin = postgres_url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let name = format!(
        "sb_processes_{:016x}",
        nanos.rotate_left(17) ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    );
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

/// Redis answering and a fresh PostgreSQL schema (its name and URL), or
/// `None` after saying why the test does not run (it fails under CI).
async fn shared_services(test: &str) -> Option<(String, String)> {
    let skip = |why: String| {
        switchboard_testkit::skip_or_fail(
            test,
            &format!("several processes need PostgreSQL and Redis: {why}"),
        )
    };
    let address = redis_url().trim_start_matches("redis://").to_owned();
    if tokio::net::TcpStream::connect(&address).await.is_err() {
        skip(format!("Redis at {address} does not answer"));
        return None;
    }
    match fresh_schema().await {
        Ok(schema) => Some(schema),
        Err(why) => {
            skip(why);
            None
        }
    }
}

async fn drop_schema(schema: &str) {
    if let Ok(mut connection) = sqlx::PgConnection::connect(&postgres_url()).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut connection)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_with_sigkill_loses_no_completed_request() {
    let Some((schema, database)) =
        shared_services("a_process_killed_with_sigkill_loses_no_completed_request").await
    else {
        return;
    };
    let config = |journal: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"{database}\"\nredis_url = \"{}\"\njournal_dir = \"{journal}\"\n[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\nprice = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}\n",
            redis_url()
        )
    };
    let first_dir = scratch_dir("process-a");
    let second_dir = scratch_dir("process-b");
    std::fs::write(first_dir.join("switchboard.toml"), config("journal")).unwrap();
    std::fs::write(second_dir.join("switchboard.toml"), config("journal")).unwrap();
    let mut first = Gateway::start(&first_dir, &[], &[]);
    let mut second = Gateway::start(&second_dir, &[], &[]);
    let client = reqwest::Client::new();
    let mut completed = 0;
    for index in 0..300 {
        let gateway = if index % 2 == 0 { &first } else { &second };
        let response = client
            .post(gateway.url("/v1/chat/completions"))
            .json(&serde_json::json!({"model": "m", "stream": index % 3 == 0, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        completed += 1;
    }
    let mut killed = first.child.take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    // The other instance serves on.
    let response = client
        .post(second.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    completed += 1;

    // The killed one comes back and writes what it journaled.
    let mut restarted = Gateway::start(&first_dir, &[], &[]);
    let statuses = tokio::task::spawn_blocking(move || (restarted.terminate(), second.terminate()))
        .await
        .unwrap();
    assert!(statuses.0.success() && statuses.1.success());
    let store = PgStore::connect(&database).await.unwrap();
    let records = store.recent_records(10_000).await.unwrap();
    assert_eq!(
        records.len(),
        completed,
        "every completed request is recorded once"
    );
    assert!(records.iter().all(|record| record.cost_nanos.is_some()));
    store.close().await;
    drop_schema(&schema).await;
}

/// A virtual key's budget, spent through two processes busy enough to
/// serve it from leases (the server's and the store's tests show that they
/// do), one of them killed with SIGKILL just after its requests: the
/// survivor refuses once the budget is used up (what the killed one held
/// still counts), and the request log's spend for the key, every served
/// request recorded once, stays within the budget. (Its Redis keys, under
/// a prefix of its own, expire by themselves.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_across_processes_through_a_kill() {
    let Some((schema, database)) =
        shared_services("a_budget_holds_across_processes_through_a_kill").await
    else {
        return;
    };
    const MASTER: &str = "sk-instances-master-0123456789";
    // A prefix of this run's own, so that no other run's counters mix in.
    let prefix = format!("sbtest:{schema}:");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmaster_key = \"{MASTER}\"\n[storage]\nurl = \"{database}\"\nredis_url = \"{}\"\nredis_prefix = \"{prefix}\"\njournal_dir = \"journal\"\n[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\nprice = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}\n",
        redis_url()
    );
    let dirs = [scratch_dir("budget-a"), scratch_dir("budget-b")];
    for dir in &dirs {
        std::fs::write(dir.join("switchboard.toml"), &config).unwrap();
    }
    let mut first = Gateway::start(&dirs[0], &[], &[]);
    let second = Gateway::start(&dirs[1], &[], &[]);
    let client = reqwest::Client::new();
    // $0.005: a few hundred requests of this size.
    const BUDGET: u64 = 5_000_000;
    let created: serde_json::Value = client
        .post(first.url("/admin/keys"))
        .bearer_auth(MASTER)
        .json(&serde_json::json!({"budget_usd": 0.005, "budget_period": "daily"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (key_id, key) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    let chat = |gateway: &Gateway| {
        client
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    // The second instance learns the key within its refresh (250 ms).
    let started = std::time::Instant::now();
    while chat(&second).await.unwrap().status() == 401 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the key never reached the second instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Busy through both for a second: leases are taken on each.
    let mut served = 1;
    let busy = std::time::Instant::now();
    while busy.elapsed() < Duration::from_secs(1) {
        for gateway in [&first, &second] {
            let response = chat(gateway).await.unwrap();
            match response.status().as_u16() {
                200 => served += 1,
                429 => {}
                other => panic!("answered {other}"),
            }
            response.bytes().await.unwrap();
        }
    }
    // Killed while it holds leases (its last requests ended just now).
    let mut killed = first.child.take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    // The survivor spends the rest, and then refuses.
    let mut refused = 0;
    for _ in 0..2_000 {
        let response = chat(&second).await.unwrap();
        match response.status().as_u16() {
            200 => served += 1,
            429 => {
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
                refused += 1;
                if refused == 20 {
                    break;
                }
                continue;
            }
            other => panic!("answered {other}"),
        }
        response.bytes().await.unwrap();
    }
    assert_eq!(refused, 20, "the budget was never used up");

    let mut restarted = Gateway::start(&dirs[0], &[], &[]);
    let mut second = second;
    let statuses = tokio::task::spawn_blocking(move || (restarted.terminate(), second.terminate()))
        .await
        .unwrap();
    assert!(statuses.0.success() && statuses.1.success());
    let store = PgStore::connect(&database).await.unwrap();
    let records = store.recent_records(100_000).await.unwrap();
    let ours: Vec<_> = records
        .iter()
        .filter(|record| record.key_id.as_deref() == Some(key_id.as_str()) && record.status == 200)
        .collect();
    assert_eq!(ours.len(), served, "every served request is recorded once");
    let spent: u64 = ours.iter().filter_map(|record| record.cost_nanos).sum();
    assert!(
        spent <= BUDGET && spent > BUDGET / 2,
        "{spent} nano-dollars spent of a {BUDGET} budget"
    );
    store.close().await;
    drop_schema(&schema).await;
}
