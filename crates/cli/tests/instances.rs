//! Several gateway processes sharing PostgreSQL and Redis: one of them is
//! killed with SIGKILL right after its requests completed, and no record
//! (no spend) of those requests is lost: the restarted process writes what
//! its journal holds and the database lacks, while the other instance
//! serves on.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_with_sigkill_loses_no_completed_request() {
    let skip = |why: String| {
        switchboard_testkit::skip_or_fail(
            "a_process_killed_with_sigkill_loses_no_completed_request",
            &format!("several processes need PostgreSQL and Redis: {why}"),
        )
    };
    let address = redis_url().trim_start_matches("redis://").to_owned();
    if tokio::net::TcpStream::connect(&address).await.is_err() {
        return skip(format!("Redis at {address} does not answer"));
    }
    let (schema, database) = match fresh_schema().await {
        Ok(schema) => schema,
        Err(why) => return skip(why),
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
    if let Ok(mut connection) = sqlx::PgConnection::connect(&postgres_url()).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut connection)
            .await;
    }
}
