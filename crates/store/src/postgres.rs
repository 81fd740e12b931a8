//! The PostgreSQL store: one database shared by every gateway instance that
//! names it, migrated on start (concurrent starts queue on an advisory
//! lock, see `migrate.rs`).
//!
//! Connections come from a small bounded pool: the request path never
//! waits on the store (records reach it through the `Recorder`'s single
//! writer), so a handful of connections serve the writer, readiness probes
//! and the admin API, and an instance never takes a large share of the
//! server's `max_connections`. Acquiring a connection, which includes
//! opening one, gives up after `ACQUIRE_TIMEOUT`, so a database that has
//! gone away fails a write (which the writer retries) instead of hanging.
//!
//! Prepared statements and PgBouncer: statements are prepared once per
//! connection and cached by sqlx (named, protocol-level prepared
//! statements). Every query here has a fixed text, and batches of records
//! and bodies go in by `COPY`, which runs as a simple query and is not
//! prepared, so the cache holds a few dozen statements and never grows
//! with the batch size. The admin API's reads of the request log
//! (`log.rs`), whose text varies with their filters, run as unnamed
//! statements and are not cached. This works directly against PostgreSQL and
//! behind PgBouncer 1.21 or later in transaction mode with
//! `max_prepared_statements` above zero, which tracks protocol-level
//! prepared statements across server connections. Nothing depends on
//! session state: no `SET`, no session advisory locks (migrations use
//! transaction-scoped ones), no temporary tables. Older PgBouncer versions
//! in transaction mode need `statement-cache-capacity=0` in the URL.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row};
use switchboard_core::{Bodies, RequestRecord, request_id};

use crate::log::{self, LogPage, LogQuery, UsageQuery, UsageRow};
use crate::{Store, StoreError, StoreFuture, migrate};

/// Connections per instance. The writer holds one while it commits a
/// batch; the rest serve probes and the admin API.
const MAX_CONNECTIONS: u32 = 8;

/// Longest wait for a connection from the pool, opening it included.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for the pool's first connection at start: a backstop, as
/// the pool gives up on its own after `ACQUIRE_TIMEOUT`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections are closed after this, and every connection is
/// replaced after `MAX_LIFETIME`, so that a fail-over or a PgBouncer
/// restart is picked up without a gateway restart.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_LIFETIME: Duration = Duration::from_secs(1800);

/// The request log's columns, in the order `copy_row` writes them. A
/// batch goes in as one `COPY` in PostgreSQL's text format: the server's
/// bulk-load path, which costs it less per row than an `INSERT` of the same
/// rows (an `INSERT … SELECT FROM UNNEST(…)` of one array per column, sorted
/// back into the batch's order, before); rows keep the batch's order.
const COPY_RECORDS: &str = "COPY requests (request_id, started_at_ms, endpoint, model, deployment, stream, \
     status, outcome, error_code, latency_ms, ttft_ms, input_tokens, output_tokens, cached_input_tokens, \
     reasoning_tokens, attempts, served_model, key_id, team_id, end_user, cost_nanos, cache_write_tokens, \
     cache_hit, metadata, attempt_details, timed_id) FROM STDIN";

/// The bodies kept for some records, written the same way in the same
/// transaction.
const COPY_BODIES: &str =
    "COPY request_bodies (request_id, started_at_ms, request, response) FROM STDIN";

/// Newest first by `id`. No index holds `id` alone (migration 12), so this
/// reads the whole table: only tests call it; the admin API pages through
/// `requests_log_order` (`log::page_sql`).
const RECENT_RECORDS: &str = "SELECT request_id, started_at_ms, endpoint, model, deployment, stream, status, outcome, \
     error_code, latency_ms, ttft_ms, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, attempts, \
     served_model, key_id, team_id, end_user, cost_nanos, cache_write_tokens, cache_hit, metadata, attempt_details \
     FROM requests ORDER BY id DESC LIMIT $1";

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://` or
    /// `postgresql://`) and migrates it. The URL's password never appears
    /// in an error.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|error| StoreError::Open {
            location: "the configured PostgreSQL URL".to_owned(),
            message: error.to_string(),
        })?;
        let location = location(&options);
        // `extra_float_digits` is a startup parameter PgBouncer refuses
        // unless told to ignore it, and no column here is a float.
        let mut options = options.extra_float_digits(None);
        if options.get_application_name().is_none() {
            options = options.application_name("switchboard");
        }
        let connecting = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(IDLE_TIMEOUT)
            .max_lifetime(MAX_LIFETIME)
            .connect_with(options);
        let pool = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(pool)) => pool,
            Ok(Err(error)) => {
                return Err(StoreError::Open {
                    location,
                    message: error.to_string(),
                });
            }
            Err(_) => {
                return Err(StoreError::Open {
                    location,
                    message: format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
                });
            }
        };
        migrate::run_postgres(&pool, migrate::POSTGRES).await?;
        Ok(PgStore { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Where the store connects, for messages: the URL without its password.
fn location(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    format!(
        "postgres://{}@{host}/{}",
        options.get_username(),
        options.get_database().unwrap_or_default()
    )
}

fn to_i64(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

fn opt_i64(value: Option<u64>) -> Option<i64> {
    value.map(to_i64)
}

/// Appends `record` as one line of `COPY`'s text format: its columns
/// in `COPY_RECORDS`' order, separated by tabs, `\N` for none.
fn copy_row(out: &mut Vec<u8>, record: &RequestRecord) {
    let mut row = CopyRow { out, first: true };
    row.text(Some(&record.request_id));
    row.number(Some(record.started_at_ms));
    row.text(Some(record.endpoint.as_str()));
    row.text(Some(&record.model));
    row.text(record.deployment.as_deref());
    row.flag(record.stream);
    row.number(Some(i64::from(record.status)));
    row.text(Some(record.outcome.as_str()));
    row.text(record.error_code.as_deref());
    row.number(Some(to_i64(record.latency_ms)));
    row.number(opt_i64(record.ttft_ms));
    row.number(opt_i64(record.usage.input_tokens));
    row.number(opt_i64(record.usage.output_tokens));
    row.number(opt_i64(record.usage.cached_input_tokens));
    row.number(opt_i64(record.usage.reasoning_tokens));
    row.number(Some(i64::from(record.attempts)));
    row.text(record.served_model.as_deref());
    row.text(record.key_id.as_deref());
    row.text(record.team_id.as_deref());
    row.text(record.end_user.as_deref());
    row.number(opt_i64(record.cost_nanos));
    row.number(opt_i64(record.usage.cache_write_tokens));
    row.flag(record.cache_hit);
    row.text(record.metadata.as_deref());
    row.text(log::attempt_details_json(&record.attempt_details).as_deref());
    row.flag(request_id::is_timed(
        &record.request_id,
        record.started_at_ms,
    ));
    row.out.push(b'\n');
}

/// One line of `COPY`'s text format being written.
struct CopyRow<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl CopyRow<'_> {
    fn next(&mut self) {
        if !self.first {
            self.out.push(b'\t');
        }
        self.first = false;
    }

    /// A text column: a backslash, newline, carriage return or tab in it is
    /// written as its backslash escape (NUL never reaches here).
    fn text(&mut self, value: Option<&str>) {
        self.next();
        let Some(value) = value else {
            self.out.extend_from_slice(b"\\N");
            return;
        };
        let mut rest = value.as_bytes();
        while let Some(at) = rest
            .iter()
            .position(|byte| matches!(byte, b'\\' | b'\n' | b'\r' | b'\t'))
        {
            self.out.extend_from_slice(&rest[..at]);
            self.out.extend_from_slice(match rest[at] {
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                _ => b"\\t",
            });
            rest = &rest[at + 1..];
        }
        self.out.extend_from_slice(rest);
    }

    fn number(&mut self, value: Option<i64>) {
        self.next();
        match value {
            Some(value) => self
                .out
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes()),
            None => self.out.extend_from_slice(b"\\N"),
        }
    }

    fn flag(&mut self, value: bool) {
        self.next();
        self.out.push(if value { b't' } else { b'f' });
    }
}

fn texts(record: &RequestRecord) -> impl Iterator<Item = &str> {
    [
        Some(record.request_id.as_str()),
        Some(record.model.as_str()),
        record.deployment.as_deref(),
        record.served_model.as_deref(),
        record.error_code.as_deref(),
        record.key_id.as_deref(),
        record.team_id.as_deref(),
        record.end_user.as_deref(),
        record.metadata.as_deref(),
        record.bodies.as_ref().map(|bodies| bodies.request.as_str()),
        record
            .bodies
            .as_ref()
            .and_then(|bodies| bodies.response.as_deref()),
    ]
    .into_iter()
    .flatten()
}

fn holds_nul(record: &RequestRecord) -> bool {
    texts(record).any(|text| text.contains('\0'))
}

fn without_nul(record: &RequestRecord) -> RequestRecord {
    let clean = |text: &str| text.replace('\0', "\u{FFFD}");
    let clean_opt = |text: &Option<String>| text.as_deref().map(clean);
    RequestRecord {
        request_id: clean(&record.request_id),
        model: clean(&record.model),
        deployment: clean_opt(&record.deployment),
        served_model: clean_opt(&record.served_model),
        error_code: clean_opt(&record.error_code),
        key_id: record.key_id.as_deref().map(|id| clean(id).into()),
        team_id: record.team_id.as_deref().map(|id| clean(id).into()),
        end_user: clean_opt(&record.end_user),
        metadata: clean_opt(&record.metadata),
        bodies: record
            .bodies
            .as_ref()
            .map(|bodies| switchboard_core::Bodies {
                request: clean(&bodies.request),
                response: clean_opt(&bodies.response),
            }),
        ..record.clone()
    }
}

impl Store for PgStore {
    fn insert_records<'a>(&'a self, records: &'a [RequestRecord]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            // PostgreSQL text cannot hold NUL: such characters (which only a
            // client could have sent) become U+FFFD rather than losing the
            // whole batch.
            let cleaned: Vec<RequestRecord>;
            let records = if records.iter().any(holds_nul) {
                cleaned = records.iter().map(without_nul).collect();
                &cleaned[..]
            } else {
                records
            };
            // Encoded before the transaction begins, so that no connection
            // sits idle in a transaction while the runtime serves requests
            // between the pieces.
            let mut rows = Vec::with_capacity(records.len() * 320);
            let mut bodies = Vec::new();
            crate::pieces::each(records, |record| {
                copy_row(&mut rows, record);
                if let Some(held) = &record.bodies {
                    let mut row = CopyRow {
                        out: &mut bodies,
                        first: true,
                    };
                    row.text(Some(&record.request_id));
                    row.number(Some(record.started_at_ms));
                    row.text(Some(&held.request));
                    row.text(held.response.as_deref());
                    row.out.push(b'\n');
                }
            })
            .await;
            let mut transaction = self.pool.begin().await?;
            let mut copy = transaction.copy_in_raw(COPY_RECORDS).await?;
            copy.send(rows).await?;
            copy.finish().await?;
            if !bodies.is_empty() {
                let mut copy = transaction.copy_in_raw(COPY_BODIES).await?;
                copy.send(bodies).await?;
                copy.finish().await?;
            }
            transaction.commit().await?;
            Ok(())
        })
    }

    fn record_bodies<'a>(&'a self, request_id: &'a str) -> StoreFuture<'a, Vec<(i64, Bodies)>> {
        Box::pin(async move {
            let rows = sqlx::query::<Postgres>(
                "SELECT started_at_ms, request, response FROM request_bodies \
                 WHERE request_id = $1 ORDER BY started_at_ms DESC",
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
            let rows = sqlx::query::<Postgres>(RECENT_RECORDS)
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
            // The text varies with the filters given, so it is not kept
            // as a named prepared statement (see the module's comment).
            let mut sql = log::page_sql::<Postgres>(query, &log::POSTGRES);
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
            let done = sqlx::query::<Postgres>(
                "DELETE FROM requests WHERE ctid IN \
                 (SELECT ctid FROM requests WHERE started_at_ms < $1 ORDER BY started_at_ms LIMIT $2)",
            )
            .bind(before_ms)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
            let bodies = sqlx::query::<Postgres>(
                "DELETE FROM request_bodies WHERE ctid IN \
                 (SELECT ctid FROM request_bodies WHERE started_at_ms < $1 LIMIT $2)",
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
            let mut sql = log::usage_sql::<Postgres>(&query, &log::POSTGRES);
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
            let ids: Vec<&str> = records
                .iter()
                .map(|record| record.request_id.as_str())
                .collect();
            let starts: Vec<i64> = records.iter().map(|record| record.started_at_ms).collect();
            // By start time and id, through `requests_log_order`: the index
            // on the id alone holds only some records.
            let rows = sqlx::query::<Postgres>(
                "SELECT r.request_id, r.started_at_ms \
                 FROM UNNEST($1::BIGINT[], $2::TEXT[]) AS held (started_at_ms, request_id) \
                 JOIN requests r ON r.started_at_ms = held.started_at_ms AND r.request_id = held.request_id",
            )
            .bind(&starts)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("request_id")?, row.try_get("started_at_ms")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::from)
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query::<Postgres>("SELECT 1")
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `COPY`'s text format, byte for byte, without a server: tabs between
    /// columns, `\N` for none, and the four characters it escapes.
    #[test]
    fn a_record_is_one_line_of_copys_text_format() {
        let mut record = crate::journal::tests_support::record(7);
        record.request_id = "a\tb\nc\rd\\e\\N".to_owned();
        record.model = String::new();
        record.end_user = Some("ü✓".to_owned());
        record.ttft_ms = Some(3);
        let mut out = Vec::new();
        copy_row(&mut out, &record);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\tb\\nc\\rd\\\\e\\\\N\t7\tchat_completions\t\t\\N\tf\t200\tsuccess\t\\N\t1\t3\t\
             \\N\t\\N\t\\N\t\\N\t1\t\\N\t\\N\t\\N\tü✓\t\\N\t\\N\tf\t\\N\t\\N\tf\n"
        );
    }
}
