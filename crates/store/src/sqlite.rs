//! The SQLite store: the embedded default. One file, created and migrated
//! on first start, in WAL mode with `synchronous = NORMAL` (durable across
//! a process crash; the last transactions may be lost only on power loss).

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Arguments, Row, Sqlite};
use switchboard_core::{Bodies, RequestRecord};

use crate::log::{self, LogPage, LogQuery, UsageQuery, UsageRow};
use crate::sqlite_writer::{Encoded, LogWriter, Stopped, Value};
use crate::{Store, StoreError, StoreFuture, migrate};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The request log's own writer connection (a file database; an
    /// in-memory one is private to the pool's connection, and is written
    /// through it).
    pub(crate) writer: Option<Arc<LogWriter>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub async fn open_file(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|error| StoreError::Open {
                location: path.display().to_string(),
                message: error.to_string(),
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // Temporary tables and indexes (sorting a page of the log)
            // stay in memory.
            .pragma("temp_store", "memory")
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|error| StoreError::Open {
                location: path.display().to_string(),
                message: error.to_string(),
            })?;
        let mut store = Self::migrated(pool).await?;
        // The writer's thread opens its connection and prepares its
        // statements (which may wait on a lock): off the runtime's threads.
        let owned = path.to_owned();
        let writer = tokio::task::spawn_blocking(move || LogWriter::open(&owned))
            .await
            .map_err(|error| error.to_string())
            .and_then(|opened| opened)
            .map_err(|message| StoreError::Open {
                location: path.display().to_string(),
                message,
            })?;
        store.writer = Some(Arc::new(writer));
        Ok(store)
    }

    /// An in-memory database, private to this process (tests, ephemeral runs).
    pub async fn open_memory() -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        // One connection that never expires: each new in-memory connection
        // would otherwise be a new, empty database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|error| StoreError::Open {
                location: "sqlite::memory:".to_owned(),
                message: error.to_string(),
            })?;
        Self::migrated(pool).await
    }

    async fn migrated(pool: SqlitePool) -> Result<SqliteStore, StoreError> {
        migrate::run_sqlite(&pool, migrate::SQLITE).await?;
        Ok(SqliteStore { pool, writer: None })
    }

    pub async fn close(&self) {
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteStore {
    /// Writes a batch through the pool: the path of an in-memory database.
    async fn insert_through_pool(&self, batch: &Encoded) -> Result<(), StoreError> {
        // One multi-row statement per chunk: every statement is a round
        // trip to SQLite's worker thread, so a batch costs a handful of
        // them rather than one per record.
        let mut transaction = self.pool.begin().await?;
        for chunk in power_chunks(&batch.rows) {
            sqlx::query_with(insert_statement(chunk.len()), arguments(batch, chunk)?)
                .persistent(true)
                .execute(&mut *transaction)
                .await?;
        }
        for chunk in power_chunks(&batch.bodies) {
            sqlx::query_with(bodies_statement(chunk.len()), arguments(batch, chunk)?)
                .persistent(true)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }
}

/// A chunk's values as sqlx binds them.
fn arguments<const COLUMNS: usize>(
    batch: &Encoded,
    rows: &[[Value; COLUMNS]],
) -> Result<SqliteArguments, sqlx::Error> {
    let mut arguments = SqliteArguments::default();
    arguments.reserve(rows.len() * COLUMNS, 0);
    for value in rows.iter().flatten() {
        match value {
            Value::Null => arguments.add(None::<i64>),
            Value::Int(number) => arguments.add(*number),
            Value::Text { .. } => arguments.add(batch.str(value)),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(arguments)
}

impl Store for SqliteStore {
    fn insert_records<'a>(&'a self, records: &'a [RequestRecord]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let batch = Encoded::of(records).await;
            match &self.writer {
                Some(writer) => match writer.insert(batch).await {
                    // The writer's thread is gone (it cannot be, short of a
                    // bug): the pool can still write.
                    Err(Stopped(batch)) => self.insert_through_pool(&batch).await,
                    Ok(written) => written,
                },
                None => self.insert_through_pool(&batch).await,
            }
        })
    }

    fn record_bodies<'a>(&'a self, request_id: &'a str) -> StoreFuture<'a, Vec<(i64, Bodies)>> {
        Box::pin(async move {
            let rows = sqlx::query::<Sqlite>(
                "SELECT started_at_ms, request, response FROM request_bodies \
                 WHERE request_id = ? ORDER BY started_at_ms DESC",
            )
            .bind(request_id)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("started_at_ms")?,
                        Bodies {
                            request: row.try_get("request")?,
                            response: row.try_get("response")?,
                        },
                    ))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::from)
        })
    }

    fn recent_records(&self, limit: u32) -> StoreFuture<'_, Vec<RequestRecord>> {
        Box::pin(async move {
            let rows = sqlx::query::<Sqlite>(
                "SELECT request_id, started_at_ms, endpoint, model, deployment, stream, status, outcome, error_code, \
                 latency_ms, ttft_ms, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, attempts, \
                 served_model, key_id, team_id, end_user, cost_nanos, cache_write_tokens, cache_hit, metadata, \
                 attempt_details FROM requests ORDER BY id DESC LIMIT ?",
            )
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(log::record_from_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::from)
        })
    }

    fn log_page<'a>(&'a self, query: &'a LogQuery) -> StoreFuture<'a, LogPage> {
        Box::pin(async move {
            let mut sql = log::page_sql::<Sqlite>(query, &log::SQLITE);
            let rows = sql.build().persistent(false).fetch_all(&self.pool).await?;
            let rows = rows
                .iter()
                .map(|row| Ok((row.try_get::<i64, _>("id")?, log::record_from_row(row)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            Ok(log::page_of(rows, query.limit))
        })
    }

    fn prune_records(&self, before_ms: i64, limit: u32) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let done = sqlx::query::<Sqlite>(
                "DELETE FROM requests WHERE id IN \
                 (SELECT id FROM requests WHERE started_at_ms < ? ORDER BY started_at_ms LIMIT ?)",
            )
            .bind(before_ms)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
            let bodies = sqlx::query::<Sqlite>(
                "DELETE FROM request_bodies WHERE rowid IN \
                 (SELECT rowid FROM request_bodies WHERE started_at_ms < ? LIMIT ?)",
            )
            .bind(before_ms)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected().max(bodies.rows_affected()))
        })
    }

    fn usage(&self, query: UsageQuery) -> StoreFuture<'_, Vec<UsageRow>> {
        Box::pin(async move {
            let mut sql = log::usage_sql::<Sqlite>(&query, &log::SQLITE);
            let rows = sql.build().persistent(false).fetch_all(&self.pool).await?;
            rows.iter()
                .map(log::usage_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::from)
        })
    }

    fn held_records<'a>(
        &'a self,
        records: &'a [RequestRecord],
    ) -> StoreFuture<'a, Vec<(String, i64)>> {
        Box::pin(async move {
            let mut held = Vec::new();
            for chunk in records.chunks(500) {
                for row in held_sql(chunk).build().fetch_all(&self.pool).await? {
                    held.push((row.try_get("request_id")?, row.try_get("started_at_ms")?));
                }
            }
            Ok(held)
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query::<Sqlite>("SELECT 1")
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn writer_lanes(&self) -> Option<crate::WriterLanes> {
        self.writer.as_deref().map(LogWriter::lanes)
    }
}

/// Which of `records` the log holds, by start time and id: through
/// `requests_log_order`, as the index on the id alone holds only some
/// records.
fn held_sql(records: &[RequestRecord]) -> sqlx::QueryBuilder<Sqlite> {
    let mut query =
        sqlx::QueryBuilder::<Sqlite>::new("SELECT r.request_id, r.started_at_ms FROM (VALUES ");
    let mut pairs = query.separated(", ");
    for record in records {
        pairs
            .push("(")
            .push_bind_unseparated(record.started_at_ms)
            .push_unseparated(", ")
            .push_bind_unseparated(&record.request_id)
            .push_unseparated(")");
    }
    query.push(
        ") AS held JOIN requests r \
         ON r.started_at_ms = held.column1 AND r.request_id = held.column2",
    );
    query
}

/// Columns of `requests` written per record, in `Encoded`'s order.
pub(crate) const RECORD_COLUMNS: usize = 26;
/// Columns of `request_bodies` written per record with bodies.
pub(crate) const BODY_COLUMNS: usize = 4;

/// The multi-row insert into `requests` for each chunk size
/// `power_chunks` yields, built once: the writer neither formats nor
/// parses a new statement per batch. `OR FAIL`: a failing row ends the
/// statement without undoing the rows before it, which spares SQLite a
/// statement journal (a copy of every page the statement touches); the
/// whole transaction is rolled back on any failure anyway.
pub(crate) fn insert_statement(rows: usize) -> &'static str {
    static STATEMENTS: LazyLock<Vec<(usize, String)>> = LazyLock::new(|| {
        multi_row_statements(
            "INSERT OR FAIL INTO requests (request_id, started_at_ms, endpoint, model, deployment, stream, status, \
             outcome, error_code, latency_ms, ttft_ms, input_tokens, output_tokens, cached_input_tokens, \
             reasoning_tokens, attempts, served_model, key_id, team_id, end_user, cost_nanos, cache_write_tokens, \
             cache_hit, metadata, attempt_details, timed_id) VALUES ",
            RECORD_COLUMNS,
        )
    });
    statement_for(&STATEMENTS, rows)
}

/// The same for `request_bodies`.
pub(crate) fn bodies_statement(rows: usize) -> &'static str {
    static STATEMENTS: LazyLock<Vec<(usize, String)>> = LazyLock::new(|| {
        multi_row_statements(
            "INSERT OR FAIL INTO request_bodies (request_id, started_at_ms, request, response) VALUES ",
            BODY_COLUMNS,
        )
    });
    statement_for(&STATEMENTS, rows)
}

fn multi_row_statements(head: &str, columns: usize) -> Vec<(usize, String)> {
    CHUNK_SIZES
        .iter()
        .map(|&rows| {
            let row = format!("({})", vec!["?"; columns].join(", "));
            (rows, format!("{head}{}", vec![row; rows].join(", ")))
        })
        .collect()
}

fn statement_for(statements: &'static [(usize, String)], rows: usize) -> &'static str {
    statements
        .iter()
        .find(|(size, _)| *size == rows)
        .map_or("", |(_, statement)| statement.as_str())
}

/// Rows per multi-row statement, largest first.
pub(crate) const CHUNK_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// Splits a batch into chunks of 256, 64, 16, 4 and 1 rows (largest
/// first). A multi-row insert's text depends on its row count; with five
/// counts only, each connection keeps five prepared statements and never
/// parses one again, where one statement per batch size would be parsed
/// anew for nearly every batch.
pub(crate) fn power_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    power_chunks_up_to(rows, CHUNK_SIZES[0])
}

/// `power_chunks`, none longer than `largest` rows (one of `CHUNK_SIZES`).
pub(crate) fn power_chunks_up_to<T>(mut rows: &[T], largest: usize) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = CHUNK_SIZES
            .into_iter()
            .find(|&size| size <= largest && size <= rows.len())
            .unwrap_or(1);
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use switchboard_core::{Bodies, Endpoint, Outcome, Usage};

    #[test]
    fn batches_split_into_five_statement_sizes() {
        let rows: Vec<u32> = (0..597).collect();
        let sizes: Vec<usize> = power_chunks(&rows).map(<[u32]>::len).collect();
        assert_eq!(sizes, [256, 256, 64, 16, 4, 1]);
        let joined: Vec<u32> = power_chunks(&rows).flatten().copied().collect();
        assert_eq!(joined, rows);
        assert_eq!(power_chunks::<u32>(&[]).count(), 0);
        let sizes: Vec<usize> = power_chunks_up_to(&rows[..53], 16)
            .map(<[u32]>::len)
            .collect();
        assert_eq!(sizes, [16, 16, 16, 4, 1]);
        let joined: Vec<u32> = power_chunks_up_to(&rows, 16).flatten().copied().collect();
        assert_eq!(joined, rows);
    }

    pub(crate) fn record(id: &str) -> RequestRecord {
        RequestRecord {
            request_id: id.to_owned(),
            started_at_ms: 1_700_000_000_000,
            endpoint: Endpoint::ChatCompletions,
            model: "m".to_owned(),
            deployment: Some("d".to_owned()),
            served_model: Some("fallback".to_owned()),
            attempts: 2,
            attempt_details: Vec::new(),
            stream: true,
            status: 200,
            outcome: Outcome::Success,
            error_code: None,
            latency_ms: 12,
            ttft_ms: Some(3),
            usage: Usage {
                input_tokens: Some(10),
                output_tokens: Some(5),
                cached_input_tokens: None,
                reasoning_tokens: Some(0),
                cache_write_tokens: Some(4),
            },
            key_id: Some("key_1".into()),
            team_id: None,
            end_user: Some("user-7".to_owned()),
            cost_nanos: Some(1234),
            cache_hit: false,
            metadata: None,
            bodies: None,
        }
    }

    #[tokio::test]
    async fn key_and_team_filters_use_their_partial_indexes() {
        let store = SqliteStore::open_memory().await.unwrap();
        for (column, index) in [("key_id", "requests_key"), ("team_id", "requests_team")] {
            let plan: Vec<String> = sqlx::query::<Sqlite>(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN SELECT id FROM requests \
                 WHERE {column} = ? AND started_at_ms >= ?"
            )))
            .bind("k")
            .bind(0_i64)
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
            assert!(
                plan.iter().any(|step| step.contains(index)),
                "{column} = ? should use {index}: {plan:?}"
            );
        }
    }

    /// The steps of `query`'s plan.
    async fn plan_of(store: &SqliteStore, mut query: sqlx::QueryBuilder<Sqlite>) -> Vec<String> {
        let sql = format!("EXPLAIN QUERY PLAN {}", query.sql().as_str());
        use sqlx::Execute;
        let arguments = query.build().take_arguments().unwrap().unwrap_or_default();
        sqlx::query_with::<Sqlite, _>(sqlx::AssertSqlSafe(sql), arguments)
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect()
    }

    /// Looking a record up by its request id, or checking which records of
    /// a replay the log holds, never reads the whole table: an id the
    /// gateway made is sought through `requests_log_order`, any other
    /// through the partial index on the id.
    #[tokio::test]
    async fn request_id_lookups_use_an_index() {
        let store = SqliteStore::open_memory().await.unwrap();
        let ours = switchboard_core::request_id::format(1_795_921_250_367, 1, 2);
        for (id, indexes) in [
            (
                ours.as_str(),
                &["requests_request_id", "requests_log_order"][..],
            ),
            ("client-7", &["requests_request_id"][..]),
        ] {
            let query = LogQuery {
                filter: crate::log::LogFilter {
                    request_id: Some(id.to_owned()),
                    ..Default::default()
                },
                after: None,
                limit: 10,
            };
            let plan = plan_of(&store, log::page_sql::<Sqlite>(&query, &log::SQLITE)).await;
            for index in indexes {
                assert!(
                    plan.iter().any(|step| step.contains(index)),
                    "{id}: {index} unused: {plan:?}"
                );
            }
            assert!(
                !plan.iter().any(|step| step.starts_with("SCAN")),
                "{id}: {plan:?}"
            );
        }
        let records: Vec<RequestRecord> =
            (0..3).map(|index| record(&format!("r{index}"))).collect();
        let plan = plan_of(&store, held_sql(&records)).await;
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH r USING COVERING INDEX requests_log_order")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|step| step == "SCAN r"), "{plan:?}");
    }

    #[tokio::test]
    async fn records_round_trip_through_sqlite() {
        let store = SqliteStore::open_memory().await.unwrap();
        let mut failed = record("b");
        failed.status = 504;
        failed.outcome = Outcome::UpstreamError;
        failed.error_code = Some("upstream_timeout".into());
        failed.usage = Usage::default();
        failed.ttft_ms = None;
        store
            .insert_records(&[record("a"), failed.clone()])
            .await
            .unwrap();
        let found = store.recent_records(10).await.unwrap();
        assert_eq!(found, vec![failed, record("a")]);
        store.ping().await.unwrap();
    }

    /// Records of every shape: values at their limits, absent ones, text
    /// that needs care, attempt details, metadata and bodies.
    pub(crate) fn assorted_records() -> Vec<RequestRecord> {
        let mut records = Vec::new();
        for index in 0..300_u64 {
            let mut record = record(&format!("req_{index:04}"));
            record.started_at_ms += index as i64;
            match index % 5 {
                0 => {
                    record.usage = Usage::default();
                    record.ttft_ms = None;
                    record.deployment = None;
                    record.served_model = None;
                    record.key_id = None;
                    record.end_user = None;
                    record.cost_nanos = None;
                }
                1 => {
                    record.cost_nanos = Some(u64::MAX);
                    record.latency_ms = u64::MAX;
                    record.model = "modèle \"quoted\" 💡 'single' \n new line".to_owned();
                    record.metadata = Some(r#"{"team":"a","n":1}"#.to_owned());
                }
                2 => {
                    record.bodies = Some(Bodies {
                        request: format!(r#"{{"n":{index}}}"#),
                        response: (index % 4 == 2).then(|| "answer ✓".to_owned()),
                    });
                    record.team_id = Some("".into());
                }
                3 => {
                    record.attempt_details = vec![switchboard_core::record::AttemptDetail {
                        deployment: "d1".into(),
                        model: "m".into(),
                        outcome: "timeout".into(),
                        status: Some(504),
                        duration_ms: 17,
                    }];
                    record.cache_hit = true;
                    record.stream = false;
                }
                _ => {}
            }
            records.push(record);
        }
        records
    }

    /// A store in a file of its own, and the directory to remove after.
    pub(crate) async fn file_store(test: u32) -> (std::path::PathBuf, SqliteStore) {
        let directory =
            std::env::temp_dir().join(format!("switchboard-writer-{}-{test}", std::process::id()));
        let store = SqliteStore::open_file(&directory.join("log.db"))
            .await
            .unwrap();
        (directory, store)
    }

    /// The request ids of the newest records, newest first.
    pub(crate) async fn ids_of(store: &SqliteStore) -> Vec<String> {
        store
            .recent_records(10)
            .await
            .unwrap()
            .into_iter()
            .map(|record| record.request_id)
            .collect()
    }

    /// A file database writes through its own connection: what it keeps
    /// must be exactly what the pool's path (the in-memory database, whose
    /// round trip is checked above) keeps, bodies included.
    #[tokio::test]
    async fn the_writer_connection_keeps_what_the_pool_keeps() {
        let (directory, file) = file_store(line!()).await;
        let memory = SqliteStore::open_memory().await.unwrap();
        let records = assorted_records();
        // Batches of several sizes, so that every chunk size is used.
        for batch in [&records[..1], &records[1..6], &records[6..300]] {
            file.insert_records(batch).await.unwrap();
            memory.insert_records(batch).await.unwrap();
        }
        let kept = file.recent_records(1_000).await.unwrap();
        assert_eq!(kept.len(), records.len());
        assert_eq!(kept, memory.recent_records(1_000).await.unwrap());
        let with_bodies: Vec<&RequestRecord> = records
            .iter()
            .filter(|record| record.bodies.is_some())
            .collect();
        assert_eq!(with_bodies.len(), 60);
        for record in with_bodies {
            let bodies = file.record_bodies(&record.request_id).await.unwrap();
            assert_eq!(
                bodies,
                memory.record_bodies(&record.request_id).await.unwrap()
            );
            assert_eq!(
                bodies,
                vec![(record.started_at_ms, record.bodies.clone().unwrap())]
            );
        }
        file.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    /// A batch that fails halfway leaves nothing behind, and the writer
    /// goes on with the next.
    #[tokio::test]
    async fn a_failed_batch_is_rolled_back_whole() {
        let (directory, store) = file_store(line!()).await;
        store.insert_records(&[record("kept")]).await.unwrap();
        // The bodies go in after the records, in the same transaction.
        sqlx::query::<Sqlite>("ALTER TABLE request_bodies RENAME TO gone")
            .execute(&store.pool)
            .await
            .unwrap();
        let mut with_bodies = record("lost");
        with_bodies.bodies = Some(Bodies {
            request: "{}".to_owned(),
            response: None,
        });
        let error = store
            .insert_records(&[record("lost-too"), with_bodies])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("request_bodies"), "{error}");
        let ids = ids_of(&store).await;
        assert_eq!(ids, ["kept"]);
        store.insert_records(&[record("after")]).await.unwrap();
        assert_eq!(store.recent_records(10).await.unwrap().len(), 2);
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    /// Should the writer's thread be gone, the pool writes instead.
    #[tokio::test]
    async fn without_its_writer_thread_the_pool_writes() {
        let (directory, store) = file_store(line!()).await;
        store.insert_records(&[record("first")]).await.unwrap();
        store.writer.as_ref().unwrap().close().await;
        store.insert_records(&[record("second")]).await.unwrap();
        let ids = ids_of(&store).await;
        assert_eq!(ids, ["second", "first"]);
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[tokio::test]
    async fn a_file_database_is_created_migrated_and_reopened() {
        let directory =
            std::env::temp_dir().join(format!("switchboard-store-{}", std::process::id()));
        let path = directory.join("nested/requests.db");
        let store = SqliteStore::open_file(&path).await.unwrap();
        store.insert_records(&[record("x")]).await.unwrap();
        store.close().await;
        // Reopening runs the migrations again, which must be a no-op.
        let reopened = SqliteStore::open_file(&path).await.unwrap();
        assert_eq!(reopened.recent_records(5).await.unwrap(), vec![record("x")]);
        reopened.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }
}
