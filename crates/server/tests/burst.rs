//! The record writer under a burst: 10,000 requests at concurrency 64
//! through a gateway whose record queue holds 64. What the queue cannot
//! take spills to the journal (or, without one, to a spill file) and is
//! written from there while the gateway runs: every request has its
//! record, none is dropped. On SQLite, with and without a journal, and on
//! PostgreSQL.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use switchboard_store::Store;

const REQUESTS: usize = 10_000;
const CONCURRENCY: usize = 64;

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ten_thousand_requests_loses_no_record() {
    sqlite_burst("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_journal_a_burst_spills_and_loses_no_record() {
    sqlite_burst("journal_dir = \"\"\n").await;
}

/// The burst on a SQLite file of its own, with `storage` settings added.
async fn sqlite_burst(storage: &str) {
    let directory = std::env::temp_dir().join(format!(
        "switchboard-burst-{}-{:016x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&directory).unwrap();
    let database = directory.join("burst.db");
    burst(&format!("sqlite://{}", database.display()), storage).await;
    let store = switchboard_store::SqliteStore::open_file(&database)
        .await
        .unwrap();
    assert_every_record_once(&store).await;
    let _ = std::fs::remove_dir_all(&directory);
}

/// The same on PostgreSQL (no journal by default: what the queue cannot
/// take spills to a file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_burst_loses_no_record() {
    let (schema, url) = match postgres_schema("burst").await {
        Ok(found) => found,
        Err(why) => {
            switchboard_testkit::skip_or_fail("on_postgresql_a_burst_loses_no_record", &why);
            return;
        }
    };
    burst(&url, "").await;
    let store = switchboard_store::PgStore::connect(&url).await.unwrap();
    assert_every_record_once(&store).await;
    store.close().await;
    drop_postgres_schema(&schema).await;
}

/// Every request's record, once, in the database.
async fn assert_every_record_once(store: &dyn Store) {
    let records = store.recent_records(REQUESTS as u32 + 10).await.unwrap();
    let ids: std::collections::HashSet<&str> = records
        .iter()
        .map(|record| record.request_id.as_str())
        .collect();
    assert_eq!(records.len(), REQUESTS);
    assert_eq!(ids.len(), REQUESTS);
}

/// The burst against the database at `url`, with `storage` settings added.
async fn burst(url: &str, storage: &str) {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmaster_key = \"{MASTER_KEY}\"\n[storage]\nurl = \"{url}\"\nrecord_queue = 64\n{storage}[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\nsimulation = {{ reply = \"ok\" }}\n"
    );
    let config = switchboard_config::Config::from_toml("burst.toml", &text).unwrap();
    let gateway = Arc::new(TestGateway::start(config).await);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (gateway, next) = (gateway.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if index >= REQUESTS {
                        return;
                    }
                    let response = gateway
                        .post(
                            "/v1/chat/completions",
                            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
                        )
                        .header("x-request-id", format!("burst-{index}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    // Written while running: the counters reach every request.
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = gateway.metrics_text().await;
        // The memory a batch held is released just after it is counted.
        // A SQLite file's writer threads' rows are read before the written
        // count in a scrape: wait for both.
        let lanes_done = !url.starts_with("sqlite://")
            || ["idle", "catch_up"]
                .iter()
                .map(|thread| {
                    counter(
                        &metrics,
                        &format!("switchboard_record_writer_rows_total{{thread=\"{thread}\"}}"),
                    )
                })
                .sum::<u64>()
                >= REQUESTS as u64;
        if counter(&metrics, "switchboard_records_written_total") >= REQUESTS as u64
            && counter(&metrics, "switchboard_record_queue_bytes") == 0
            && lanes_done
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        counter(&metrics, "switchboard_records_written_total"),
        REQUESTS as u64
    );
    assert_eq!(counter(&metrics, "switchboard_records_dropped_total"), 0);
    assert!(counter(&metrics, "switchboard_records_spilled_total") > 0);
    assert_eq!(counter(&metrics, "switchboard_record_backlog"), 0);
    assert_eq!(counter(&metrics, "switchboard_record_queue_bytes"), 0);
    // A SQLite file's two writer threads wrote every row between them (no
    // bodies are kept here); other stores have no such threads.
    let rows = |thread: &str| {
        counter(
            &metrics,
            &format!("switchboard_record_writer_rows_total{{thread=\"{thread}\"}}"),
        )
    };
    if url.starts_with("sqlite://") {
        assert_eq!(rows("idle") + rows("catch_up"), REQUESTS as u64);
        for reason in ["picked_up_late", "hurried_begun", "hurried_unbegun"] {
            counter(
                &metrics,
                &format!("switchboard_record_writer_handovers_total{{reason=\"{reason}\"}}"),
            );
        }
    } else {
        assert!(!metrics.contains("switchboard_record_writer_"));
    }
    let gateway = Arc::into_inner(gateway).expect("the workers are done");
    gateway.stop_and_records().await;
}
