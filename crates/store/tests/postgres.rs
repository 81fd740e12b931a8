//! `PgStore` against a real PostgreSQL (`SWITCHBOARD_TEST_POSTGRES_URL`,
//! default postgres://postgres@127.0.0.1:5432/test): migrations apply,
//! re-apply and survive concurrent starts; the storage contract
//! (`contract/mod.rs`, also run against SQLite) holds.
//!
//! Each test works in a schema of its own (`sb_test_<random>`, reached
//! through the connection's `search_path`), dropped when the test ends,
//! passed or failed, so tests run in parallel and leave nothing behind.
//! Without a PostgreSQL a test writes `SKIPPED: ...` to standard error
//! (past libtest's capture, so a plain `cargo test` shows it) and passes,
//! except when `CI` is set, where it fails.

mod contract;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use switchboard_core::mix::splitmix64;
use switchboard_store::{PgStore, Store, StoreError};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn base_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A schema of the test database, created for one test and dropped with
/// it. `url` connects with the schema as `search_path`.
struct TestSchema {
    name: String,
    admin_url: String,
    url: String,
}

impl TestSchema {
    /// A fresh schema, or `None` (after printing why) when there is no
    /// PostgreSQL and `CI` is not set.
    async fn create(test: &str) -> Option<TestSchema> {
        let admin_url = base_url();
        let connecting = async {
            let mut connection = PgConnection::connect(&admin_url).await?;
            let name = unique_name();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
                .execute(&mut connection)
                .await?;
            connection.close().await?;
            Ok::<_, sqlx::Error>(name)
        };
        let why = match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(Ok(name)) => {
                let separator = if admin_url.contains('?') { '&' } else { '?' };
                let url = format!("{admin_url}{separator}options=-c%20search_path%3D{name}");
                return Some(TestSchema {
                    name,
                    admin_url,
                    url,
                });
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer within 5 s".to_owned(),
        };
        let shown = masked(&admin_url);
        switchboard_testkit::skip_or_fail(
            test,
            &format!(
                "PostgreSQL is not reachable at {shown} (set SWITCHBOARD_TEST_POSTGRES_URL): {why}"
            ),
        );
        None
    }

    /// A connection to the schema for the test's own queries.
    async fn connection(&self) -> PgConnection {
        self.url
            .parse::<PgConnectOptions>()
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for TestSchema {
    /// Drops the schema even when the test panicked: on a thread of its
    /// own, since the test's runtime may be gone or unwinding.
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut connection = PgConnection::connect(&admin_url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE"
                )))
                .execute(&mut connection)
                .await?;
                connection.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {dropped:?}", self.name);
        }
    }
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let seed = nanos
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(48);
    format!("sb_test_{:016x}", splitmix64(seed))
}

/// The URL with its password, if any, hidden.
fn masked(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(the configured URL)".to_owned();
    };
    match rest.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            let password = if user_info.contains(':') { ":****" } else { "" };
            format!("{scheme}://{user}{password}@{host}")
        }
        None => url.to_owned(),
    }
}

async fn applied_versions(schema: &TestSchema) -> Vec<i64> {
    let mut connection = schema.connection().await;
    sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all(&mut connection)
        .await
        .unwrap()
}

/// The names `sql` lists for the schema (its `$1`), in order.
async fn names_in(schema: &TestSchema, sql: &'static str) -> Vec<String> {
    let mut connection = schema.connection().await;
    sqlx::query_scalar(sql)
        .bind(&schema.name)
        .fetch_all(&mut connection)
        .await
        .unwrap()
}

async fn tables(schema: &TestSchema) -> Vec<String> {
    names_in(
        schema,
        "SELECT table_name::TEXT FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .await
}

/// The indexes on `requests`: each is an insert every record may pay for.
async fn request_indexes(schema: &TestSchema) -> Vec<String> {
    names_in(
        schema,
        "SELECT indexname::TEXT FROM pg_indexes WHERE schemaname = $1 AND tablename = 'requests' ORDER BY 1",
    )
    .await
}

#[tokio::test]
async fn migrations_apply_then_apply_again_as_a_no_op() {
    let Some(schema) = TestSchema::create("migrations_apply_then_apply_again_as_a_no_op").await
    else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    let versions = applied_versions(&schema).await;
    assert_eq!(versions, (1..=12).collect::<Vec<i64>>());
    assert_eq!(
        tables(&schema).await,
        vec![
            "key_changes",
            "keys",
            "request_bodies",
            "requests",
            "schema_migrations",
            "teams"
        ]
    );
    // No primary key on `id` (migration 12): a record without a key or a
    // client's own id goes into one index, the log's order.
    assert_eq!(
        request_indexes(&schema).await,
        vec![
            "requests_key",
            "requests_log_order",
            "requests_request_id",
            "requests_team"
        ]
    );
    store
        .insert_records(&[contract::varied_record(1)])
        .await
        .unwrap();
    store.close().await;

    // Opening again runs the runner again: nothing is applied twice and
    // nothing is lost.
    let reopened = PgStore::connect(&schema.url).await.unwrap();
    assert_eq!(applied_versions(&schema).await, versions);
    assert_eq!(
        reopened.recent_records(10).await.unwrap(),
        vec![contract::varied_record(1)]
    );
    reopened.close().await;
}

#[tokio::test]
async fn concurrent_migrators_all_succeed() {
    let Some(schema) = TestSchema::create("concurrent_migrators_all_succeed").await else {
        return;
    };
    // Several instances starting at once against an empty schema: without
    // the advisory lock, the loser of the race fails on CREATE TABLE.
    let starts = (0..4).map(|_| PgStore::connect(&schema.url));
    let stores = futures_util::future::join_all(starts).await;
    for store in &stores {
        assert!(store.is_ok(), "{:?}", store.as_ref().err());
    }
    assert_eq!(
        applied_versions(&schema).await,
        (1..=12).collect::<Vec<i64>>()
    );
    for store in stores.into_iter().flatten() {
        store.ping().await.unwrap();
        store.close().await;
    }
}

#[tokio::test]
async fn postgres_records_round_trip() {
    let Some(schema) = TestSchema::create("postgres_records_round_trip").await else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    contract::records_round_trip(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_texts_with_escapes_round_trip() {
    let Some(schema) = TestSchema::create("postgres_texts_with_escapes_round_trip").await else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    contract::texts_with_escapes_round_trip(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_key_store_contract() {
    let Some(schema) = TestSchema::create("postgres_key_store_contract").await else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    contract::key_store(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_request_log_pages() {
    let Some(schema) = TestSchema::create("postgres_request_log_pages").await else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    contract::request_log_pages(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_request_ids_of_every_kind() {
    let Some(schema) = TestSchema::create("postgres_request_ids_of_every_kind").await else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    contract::request_ids_of_every_kind(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_usage_aggregates() {
    let Some(schema) = TestSchema::create("postgres_usage_aggregates").await else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    contract::usage_aggregates(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_usage_matches_the_reference() {
    let Some(schema) = TestSchema::create("postgres_usage_matches_the_reference").await else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    contract::usage_matches_the_reference(&store).await;
    store.close().await;
}

#[tokio::test]
async fn ping_answers_while_open_and_fails_once_closed() {
    let Some(schema) = TestSchema::create("ping_answers_while_open_and_fails_once_closed").await
    else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    store.ping().await.unwrap();
    store.close().await;
    assert!(store.ping().await.is_err());
}

/// No database needed: nothing listens on port 1.
#[tokio::test]
async fn an_unreachable_database_fails_promptly_without_printing_the_password() {
    let started = Instant::now();
    let error = PgStore::connect("postgres://switchboard:hunter2-secret@127.0.0.1:1/sb")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(15));
    let StoreError::Open { location, .. } = &error else {
        panic!("expected an open error, got {error:?}");
    };
    assert_eq!(location, "postgres://switchboard@127.0.0.1:1/sb");
    for printed in [error.to_string(), format!("{error:?}")] {
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}

#[tokio::test]
async fn the_pool_stays_within_its_bound_under_load() {
    let Some(schema) = TestSchema::create("the_pool_stays_within_its_bound_under_load").await
    else {
        return;
    };
    // An application name of the test's own, to count this store's
    // connections among those of tests running in parallel.
    let url = format!("{}&application_name={}", schema.url, schema.name);
    let store = PgStore::connect(&url).await.unwrap();
    let done = AtomicBool::new(false);
    let load = async {
        for _ in 0..8 {
            let reads = (0..64).map(|_| store.recent_records(1));
            for read in futures_util::future::join_all(reads).await {
                read.unwrap();
            }
        }
        done.store(true, Ordering::Relaxed);
    };
    let sample = async {
        let mut connection = schema.connection().await;
        let mut most = 0;
        while !done.load(Ordering::Relaxed) {
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(&schema.name)
            .fetch_one(&mut connection)
            .await
            .unwrap();
            most = most.max(open);
        }
        most
    };
    let ((), most) = tokio::join!(load, sample);
    assert!((1..=8).contains(&most), "{most} connections open");
    store.close().await;
}

#[tokio::test]
async fn postgres_prune_records() {
    let Some(schema) = TestSchema::create("postgres_prune_records").await else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    contract::prune_records(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_bodies_round_trip() {
    let Some(schema) = TestSchema::create("postgres_bodies_round_trip").await else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    contract::bodies_round_trip(&store).await;
    store.close().await;
}

/// A client can put NUL in a model name or an end user; PostgreSQL text
/// cannot hold it. The record is written (NUL as U+FFFD), not refused.
#[tokio::test]
async fn postgres_takes_records_with_nul_characters() {
    let Some(schema) = TestSchema::create("postgres_takes_records_with_nul_characters").await
    else {
        return;
    };
    let store = PgStore::connect(&schema.url).await.unwrap();
    let mut record = contract::varied_record(5);
    record.model = "x\u{0}y".to_owned();
    record.end_user = Some("\u{0}".to_owned());
    store
        .insert_records(&[record, contract::varied_record(6)])
        .await
        .unwrap();
    let rows = store.recent_records(10).await.unwrap();
    assert_eq!(rows.len(), 2);
    let cleaned = rows.iter().find(|row| row.model.starts_with('x')).unwrap();
    assert_eq!(cleaned.model, "x\u{FFFD}y");
    assert_eq!(cleaned.end_user.as_deref(), Some("\u{FFFD}"));
    store.close().await;
}
