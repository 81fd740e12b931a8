//! Everything the gateway keeps: the request log (written in batches, read
//! a page or an aggregate at a time, `log.rs`), keys, teams and spend. One `Store` trait, implemented for SQLite (`sqlite.rs`, the
//! embedded default) and PostgreSQL (`postgres.rs`, one database shared by
//! several instances), so callers never name a database.
//!
//! The request path never calls a store directly: it hands records to a
//! `Recorder`, whose writer task batches them into the store.
//!
//! Invariant: only this crate names sqlx (or, later, redis).

mod frame;
pub mod journal;
pub mod keys;
pub mod log;
mod migrate;
mod pieces;
mod postgres;
mod postgres_keys;
mod recorder;
pub mod redis_limiter;
mod resp;
pub mod response_cache;
mod sqlite;
mod sqlite_keys;
mod sqlite_writer;
pub mod watch;

use std::future::Future;
use std::pin::Pin;

use switchboard_core::{Bodies, RequestRecord};

pub use keys::{KeyStore, KeyStoreConflict, SpendQuery};
pub use log::{
    LogCursor, LogFilter, LogPage, LogQuery, UsageBucket, UsageGroup, UsageQuery, UsageRow,
};
pub use postgres::PgStore;
pub use recorder::{RecordWriter, Recorder, RecorderStats};
pub use redis_limiter::RedisLimiter;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database at {location}: {message}")]
    Open { location: String, message: String },
    #[error("database migration {version} failed: {message}")]
    Migration { version: i64, message: String },
    #[error("database error: {0}")]
    Query(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        StoreError::Query(error.to_string())
    }
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A backend that keeps both the request log and the keys: what the
/// gateway opens.
pub trait Database: Store + KeyStore {}

impl<T: Store + KeyStore> Database for T {}

/// The storage interface. Methods return boxed futures so that the server
/// can hold any backend as `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// Writes a batch of request records in one transaction.
    fn insert_records<'a>(&'a self, records: &'a [RequestRecord]) -> StoreFuture<'a, ()>;
    /// The newest records first, at most `limit` of them.
    fn recent_records(&self, limit: u32) -> StoreFuture<'_, Vec<RequestRecord>>;
    /// One page of the request log, newest first (see `log.rs` for the
    /// order and the cursor).
    fn log_page<'a>(&'a self, query: &'a LogQuery) -> StoreFuture<'a, LogPage>;
    /// The request log aggregated by group (and time bucket), with
    /// nearest-rank percentiles.
    fn usage(&self, query: UsageQuery) -> StoreFuture<'_, Vec<UsageRow>>;
    /// The kept bodies of the records with this request id, with each
    /// record's start time.
    fn record_bodies<'a>(&'a self, request_id: &'a str) -> StoreFuture<'a, Vec<(i64, Bodies)>> {
        let _ = request_id;
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Deletes up to `limit` records (and as many kept bodies) that
    /// started before `before_ms` (retention); returns the larger count.
    fn prune_records(&self, before_ms: i64, limit: u32) -> StoreFuture<'_, u64>;
    /// Answers when the database is reachable (readiness).
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// Which of these records (by request id and start time) the database
    /// already holds.
    fn held_records<'a>(
        &'a self,
        records: &'a [RequestRecord],
    ) -> StoreFuture<'a, Vec<(String, i64)>>;
    /// Writes the records the database does not hold yet (a journal's
    /// replay); returns how many were written.
    fn insert_missing_records<'a>(
        &'a self,
        records: &'a [RequestRecord],
    ) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            let held = self.held_records(records).await?;
            let missing: Vec<RequestRecord> = records
                .iter()
                .filter(|record| {
                    !held
                        .iter()
                        .any(|(id, at)| *id == record.request_id && *at == record.started_at_ms)
                })
                .cloned()
                .collect();
            if !missing.is_empty() {
                self.insert_records(&missing).await?;
            }
            Ok(missing.len())
        })
    }
    /// How the request log's writer threads have shared the writing, for
    /// a store that has them (a SQLite file); read at a metrics scrape,
    /// never on the request path.
    fn writer_lanes(&self) -> Option<WriterLanes> {
        None
    }
}

/// What each of a SQLite file's request-log writer threads has written,
/// and how often a batch passed from the idle-core thread to the catch-up
/// thread, and why (`store::sqlite_writer`): counts since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterLanes {
    /// Rows (records and bodies) inserted by the idle-core thread.
    pub idle_rows: u64,
    /// Rows inserted by the catch-up thread.
    pub catch_up_rows: u64,
    /// Batches the idle-core thread picked up late, given on unbegun.
    pub picked_up_late: u64,
    /// Batches the idle-core thread had begun when they were hurried,
    /// handed on after the chunk it was writing.
    pub handed_on: u64,
    /// Batches hurried before the idle-core thread picked them up, taken
    /// unbegun.
    pub taken_unbegun: u64,
}
