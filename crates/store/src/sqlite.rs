//! The SQLite store: the embedded default. One file, created and migrated
//! on first start, in WAL mode with `synchronous = NORMAL` (durable across
//! a process crash; the last transactions may be lost only on power loss).

use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Arguments, Row, Sqlite};
use switchboard_core::{Bodies, RequestRecord};

use crate::log::{self, LogPage, LogQuery, UsageQuery, UsageRow};
use crate::{Store, StoreError, StoreFuture, migrate};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
            // A multi-row insert inside a transaction keeps a statement
            // journal; in memory it costs no file writes.
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
        Self::migrated(pool).await
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
        Ok(SqliteStore { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn opt_i64(value: Option<u64>) -> Option<i64> {
    value.map(|value| value.min(i64::MAX as u64) as i64)
}

impl Store for SqliteStore {
    fn insert_records<'a>(&'a self, records: &'a [RequestRecord]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // One multi-row statement per chunk: every statement is a round
            // trip to SQLite's worker thread, so a batch costs a handful of
            // them rather than one per record. 25 columns x 256 rows (6,400
            // parameters) stays well under SQLite's limit on bound
            // parameters (32766).
            let mut transaction = self.pool.begin().await?;
            for chunk in power_chunks(records) {
                let mut arguments = SqliteArguments::default();
                arguments.reserve(chunk.len() * RECORD_COLUMNS, 0);
                for record in chunk {
                    bind_record(&mut arguments, record).map_err(sqlx::Error::Encode)?;
                }
                sqlx::query_with(insert_statement(chunk.len()), arguments)
                    .persistent(true)
                    .execute(&mut *transaction)
                    .await?;
            }
            let with_bodies: Vec<&RequestRecord> = records
                .iter()
                .filter(|record| record.bodies.is_some())
                .collect();
            for chunk in power_chunks(&with_bodies) {
                let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
                    "INSERT INTO request_bodies (request_id, started_at_ms, request, response) ",
                );
                insert.push_values(chunk, |mut row, record| {
                    let bodies = record.bodies.as_ref();
                    row.push_bind(&record.request_id)
                        .push_bind(record.started_at_ms)
                        .push_bind(bodies.map(|bodies| bodies.request.as_str()))
                        .push_bind(bodies.and_then(|bodies| bodies.response.as_deref()));
                });
                insert
                    .build()
                    .persistent(true)
                    .execute(&mut *transaction)
                    .await?;
            }
            transaction.commit().await?;
            Ok(())
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
                let mut query = sqlx::QueryBuilder::<Sqlite>::new(
                    "SELECT request_id, started_at_ms FROM requests WHERE request_id IN (",
                );
                let mut ids = query.separated(", ");
                for record in chunk {
                    ids.push_bind(&record.request_id);
                }
                query.push(")");
                for row in query.build().fetch_all(&self.pool).await? {
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
}

/// Splits a batch into chunks of 256, 64, 16, 4 and 1 rows (largest
/// first). A multi-row insert's text depends on its row count; with five
/// counts only, each connection keeps five prepared statements and never
/// parses one again, where one statement per batch size would be parsed
/// anew for nearly every batch.
/// Columns of `requests` written per record, in `bind_record`'s order.
const RECORD_COLUMNS: usize = 25;

/// The multi-row insert for each chunk size `power_chunks` yields, built
/// once: the writer neither formats nor hashes a new statement per batch,
/// and the statement cache finds each by the same text.
fn insert_statement(rows: usize) -> &'static str {
    static STATEMENTS: LazyLock<Vec<(usize, String)>> = LazyLock::new(|| {
        CHUNK_SIZES
            .iter()
            .map(|&rows| {
                let row = format!("({})", vec!["?"; RECORD_COLUMNS].join(", "));
                let statement = format!(
                    "INSERT INTO requests (request_id, started_at_ms, endpoint, model, deployment, stream, status, \
                     outcome, error_code, latency_ms, ttft_ms, input_tokens, output_tokens, cached_input_tokens, \
                     reasoning_tokens, attempts, served_model, key_id, team_id, end_user, cost_nanos, cache_write_tokens, \
                     cache_hit, metadata, attempt_details) VALUES {}",
                    vec![row; rows].join(", ")
                );
                (rows, statement)
            })
            .collect()
    });
    STATEMENTS
        .iter()
        .find(|(size, _)| *size == rows)
        .map_or("", |(_, statement)| statement.as_str())
}

/// One record's `RECORD_COLUMNS` values, in the statement's column order.
fn bind_record(
    arguments: &mut SqliteArguments,
    record: &RequestRecord,
) -> Result<(), sqlx::error::BoxDynError> {
    arguments.add(record.request_id.as_str())?;
    arguments.add(record.started_at_ms)?;
    arguments.add(record.endpoint.as_str())?;
    arguments.add(record.model.as_str())?;
    arguments.add(record.deployment.as_deref())?;
    arguments.add(record.stream)?;
    arguments.add(i64::from(record.status))?;
    arguments.add(record.outcome.as_str())?;
    arguments.add(record.error_code.as_deref())?;
    arguments.add(opt_i64(Some(record.latency_ms)))?;
    arguments.add(opt_i64(record.ttft_ms))?;
    arguments.add(opt_i64(record.usage.input_tokens))?;
    arguments.add(opt_i64(record.usage.output_tokens))?;
    arguments.add(opt_i64(record.usage.cached_input_tokens))?;
    arguments.add(opt_i64(record.usage.reasoning_tokens))?;
    arguments.add(i64::from(record.attempts))?;
    arguments.add(record.served_model.as_deref())?;
    arguments.add(record.key_id.as_deref())?;
    arguments.add(record.team_id.as_deref())?;
    arguments.add(record.end_user.as_deref())?;
    arguments.add(opt_i64(record.cost_nanos))?;
    arguments.add(opt_i64(record.usage.cache_write_tokens))?;
    arguments.add(record.cache_hit)?;
    arguments.add(record.metadata.as_deref())?;
    arguments.add(log::attempt_details_json(&record.attempt_details))?;
    Ok(())
}

/// Rows per multi-row statement, largest first.
const CHUNK_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

fn power_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = CHUNK_SIZES
            .into_iter()
            .find(|&size| size <= rows.len())
            .unwrap_or(1);
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::{Endpoint, Outcome, Usage};

    #[test]
    fn batches_split_into_five_statement_sizes() {
        let rows: Vec<u32> = (0..597).collect();
        let sizes: Vec<usize> = power_chunks(&rows).map(<[u32]>::len).collect();
        assert_eq!(sizes, [256, 256, 64, 16, 4, 1]);
        let joined: Vec<u32> = power_chunks(&rows).flatten().copied().collect();
        assert_eq!(joined, rows);
        assert_eq!(power_chunks::<u32>(&[]).count(), 0);
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
            key_id: Some("key_1".to_owned()),
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
