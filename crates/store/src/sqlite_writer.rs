//! The request log's writer: a connection of its own to the SQLite file,
//! on a thread of its own, through which every batch of request records is
//! inserted.
//!
//! Records cross to the thread once, encoded: every column's value in
//! statement order, every text copied into one buffer (`Encoded`). The
//! thread keeps the ten insert statements (five chunk sizes, for records
//! and for bodies) prepared for as long as it runs, binds each value
//! straight from that buffer, and writes a batch in one `BEGIN IMMEDIATE`
//! transaction. Against the pool's connections (sqlx) this spares, per
//! value, the two allocations and the copy sqlx makes of every text it
//! binds, and per statement the clearing of thousands of bindings and a
//! round trip through the pool's worker thread. The statements are held
//! through SQLite's C interface (`Raw`) because rusqlite has SQLite copy
//! every text it binds (`SQLITE_TRANSIENT`), then free each copy when the
//! next row is bound: bound `SQLITE_STATIC`, a text is read where it lies
//! in the buffer, and the bindings are cleared before the buffer can go.
//! What is left is SQLite's own work (see `BENCHMARKS.md`). Reads, retention and the keys stay on
//! the pool; SQLite's locking (WAL, one writer at a time, a busy timeout
//! on both sides) keeps them apart. A connection left inside a transaction
//! by a failure is reopened; should the thread be gone, the store writes
//! through the pool.

use std::ffi::{CStr, c_int};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, ffi};
use switchboard_core::{RequestRecord, request_id};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::sqlite::{
    BODY_COLUMNS, CHUNK_SIZES, RECORD_COLUMNS, bodies_statement, insert_statement, power_chunks,
};

/// One column's value; a text is a range of its batch's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text { start: usize, end: usize },
}

/// A batch of records as the insert statements bind them.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    text: String,
    pub(crate) rows: Vec<[Value; RECORD_COLUMNS]>,
    /// One row per record with bodies.
    pub(crate) bodies: Vec<[Value; BODY_COLUMNS]>,
}

impl Encoded {
    /// Encodes `records` on the runtime's thread, letting the requests it
    /// serves run between pieces (see `crate::pieces`).
    pub(crate) async fn of(records: &[RequestRecord]) -> Encoded {
        let mut batch = Encoded {
            text: String::with_capacity(records.len() * 160),
            rows: Vec::with_capacity(records.len()),
            bodies: Vec::new(),
        };
        crate::pieces::each(records, |record| batch.push(record)).await;
        batch
    }

    fn push(&mut self, record: &RequestRecord) {
        let row = self.record_row(record);
        self.rows.push(row);
        if let Some(bodies) = &record.bodies {
            let row = [
                self.text(&record.request_id),
                Value::Int(record.started_at_ms),
                self.text(&bodies.request),
                self.optional_text(bodies.response.as_deref()),
            ];
            self.bodies.push(row);
        }
    }

    /// The text a value names ("" for any other value).
    pub(crate) fn str(&self, value: &Value) -> &str {
        match *value {
            Value::Text { start, end } => self.text.get(start..end).unwrap_or_default(),
            Value::Null | Value::Int(_) => "",
        }
    }

    /// One record's `RECORD_COLUMNS` values, in `insert_statement`'s
    /// column order.
    fn record_row(&mut self, record: &RequestRecord) -> [Value; RECORD_COLUMNS] {
        let attempt_details = crate::log::attempt_details_json(&record.attempt_details);
        [
            self.text(&record.request_id),
            Value::Int(record.started_at_ms),
            self.text(record.endpoint.as_str()),
            self.text(&record.model),
            self.optional_text(record.deployment.as_deref()),
            Value::Int(i64::from(record.stream)),
            Value::Int(i64::from(record.status)),
            self.text(record.outcome.as_str()),
            self.optional_text(record.error_code.as_deref()),
            number(Some(record.latency_ms)),
            number(record.ttft_ms),
            number(record.usage.input_tokens),
            number(record.usage.output_tokens),
            number(record.usage.cached_input_tokens),
            number(record.usage.reasoning_tokens),
            Value::Int(i64::from(record.attempts)),
            self.optional_text(record.served_model.as_deref()),
            self.optional_text(record.key_id.as_deref()),
            self.optional_text(record.team_id.as_deref()),
            self.optional_text(record.end_user.as_deref()),
            number(record.cost_nanos),
            number(record.usage.cache_write_tokens),
            Value::Int(i64::from(record.cache_hit)),
            self.optional_text(record.metadata.as_deref()),
            self.optional_text(attempt_details.as_deref()),
            Value::Int(i64::from(request_id::is_timed(
                &record.request_id,
                record.started_at_ms,
            ))),
        ]
    }

    fn text(&mut self, value: &str) -> Value {
        let start = self.text.len();
        self.text.push_str(value);
        Value::Text {
            start,
            end: self.text.len(),
        }
    }

    fn optional_text(&mut self, value: Option<&str>) -> Value {
        value.map_or(Value::Null, |value| self.text(value))
    }
}

/// A count or amount as SQLite keeps it: capped at `i64::MAX`.
fn number(value: Option<u64>) -> Value {
    value.map_or(Value::Null, |value| {
        Value::Int(value.min(i64::MAX as u64) as i64)
    })
}

struct Job {
    batch: Encoded,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle of the writer thread; see the module documentation.
#[derive(Debug)]
pub(crate) struct LogWriter {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl LogWriter {
    /// Opens the connection (the file must exist, migrated) and starts the
    /// thread, once every statement is prepared. Blocks until then: call it
    /// off the runtime's threads.
    pub(crate) fn open(path: &Path) -> Result<LogWriter, String> {
        let path = path.to_owned();
        let (jobs, waiting) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::sync_channel::<Result<(), String>>(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-log-writer".to_owned())
            .spawn(move || serve(&path, &waiting, Some(ready)))
            .map_err(|error| error.to_string())?;
        match started.recv() {
            Ok(Ok(())) => Ok(LogWriter {
                jobs: Mutex::new(Some(jobs)),
                thread: Mutex::new(Some(thread)),
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err("the writer thread ended before it started".to_owned()),
        }
    }

    /// Writes a batch in one transaction, and waits until it is committed
    /// (or has failed, and was rolled back). `Err(Stopped)` gives the batch
    /// back when the thread is gone.
    pub(crate) async fn insert(&self, batch: Encoded) -> Result<Result<(), StoreError>, Stopped> {
        let (done, answer) = oneshot::channel();
        let refused = match lock(&self.jobs).as_ref() {
            Some(jobs) => jobs
                .send(Job { batch, done })
                .err()
                .map(|refused| refused.0.batch),
            None => Some(batch),
        };
        if let Some(batch) = refused {
            return Err(Stopped(batch));
        }
        Ok(match answer.await {
            Ok(result) => result.map_err(StoreError::Query),
            // The thread ended during the write; the caller sends the
            // batch again, and then finds the thread gone.
            Err(_) => Err(StoreError::Query(
                "the request log's writer stopped during a write".to_owned(),
            )),
        })
    }

    /// Stops the thread once it has written what it was given, and waits
    /// for it (the connection is closed when it returns).
    pub(crate) async fn close(&self) {
        drop(lock(&self.jobs).take());
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// A batch the writer's thread could not take: it has ended.
#[derive(Debug)]
pub(crate) struct Stopped(pub(crate) Encoded);

/// The writer thread: serves jobs until every sender is gone. A connection
/// left inside a transaction after a failure (its `ROLLBACK` failed too) is
/// closed, which rolls it back, and opened again; while it cannot be, each
/// job is answered with why, and the next job tries again.
fn serve(
    path: &Path,
    jobs: &mpsc::Receiver<Job>,
    mut ready: Option<mpsc::SyncSender<Result<(), String>>>,
) {
    loop {
        let opened = connect(path).map_err(|error| error.to_string());
        let prepared = match &opened {
            Ok(connection) => Prepared::new(connection)
                .map(|prepared| (connection, prepared))
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.clone()),
        };
        if let Some(ready) = ready.take() {
            let failed = prepared.as_ref().err().cloned();
            let _ = ready.send(failed.clone().map_or(Ok(()), Err));
            if failed.is_some() {
                return;
            }
        }
        match prepared {
            Ok((connection, prepared)) => {
                if run(connection, prepared, jobs) {
                    return;
                }
                tracing::warn!(
                    "the request log's writer connection is reopened after a failed rollback"
                );
            }
            Err(error) => {
                // Answer one job with why, then try again.
                let Ok(Job { done, .. }) = jobs.recv() else {
                    return;
                };
                let _ = done.send(Err(format!(
                    "the request log's writer cannot open the database: {error}"
                )));
            }
        }
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    // WAL is a property of the file, set by the pool when it was opened;
    // `synchronous` and `temp_store` are per connection.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(connection)
}

/// The insert statements, one per chunk size, prepared once.
struct Prepared<'c> {
    records: Vec<Raw<'c>>,
    bodies: Vec<Raw<'c>>,
}

impl<'c> Prepared<'c> {
    fn new(connection: &'c Connection) -> rusqlite::Result<Prepared<'c>> {
        let prepare = |statement: fn(usize) -> &'static str| {
            CHUNK_SIZES
                .iter()
                .map(|&rows| Raw::prepare(connection, statement(rows)))
                .collect::<rusqlite::Result<Vec<_>>>()
        };
        Ok(Prepared {
            records: prepare(insert_statement)?,
            bodies: prepare(bodies_statement)?,
        })
    }
}

/// A prepared statement of `connection`, held through SQLite's C interface
/// so that texts can be bound without a copy (see the module
/// documentation). Finalized when dropped, before its connection closes.
struct Raw<'c> {
    statement: NonNull<ffi::sqlite3_stmt>,
    connection: &'c Connection,
}

impl<'c> Raw<'c> {
    fn prepare(connection: &'c Connection, sql: &str) -> rusqlite::Result<Raw<'c>> {
        let len = c_int::try_from(sql.len()).map_err(|_| too_big())?;
        let mut statement = std::ptr::null_mut();
        // SAFETY: the handle is that of `connection`, open for 'c; the SQL
        // is `len` valid bytes, and `statement` is written by SQLite.
        let code = unsafe {
            ffi::sqlite3_prepare_v3(
                connection.handle(),
                sql.as_ptr().cast(),
                len,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut statement,
                std::ptr::null_mut(),
            )
        };
        let raw = NonNull::new(statement).map(|statement| Raw {
            statement,
            connection,
        });
        match (code, raw) {
            (ffi::SQLITE_OK, Some(raw)) => Ok(raw),
            // Empty SQL prepares to nothing; it is never given.
            (ffi::SQLITE_OK, None) => Err(rusqlite::Error::InvalidQuery),
            (code, _) => Err(failure(connection, code)),
        }
    }

    /// Binds `values` (texts from `batch`) in order, runs the statement
    /// once, then resets it and clears every binding, so that nothing
    /// points into `batch` after this returns (and every parameter is NULL
    /// for the next run, which binds only the others).
    fn execute<'v>(
        &mut self,
        values: impl Iterator<Item = &'v Value>,
        batch: &Encoded,
    ) -> rusqlite::Result<()> {
        let statement = self.statement.as_ptr();
        let mut code = ffi::SQLITE_OK;
        for (index, value) in values.enumerate() {
            let position = c_int::try_from(index + 1).map_err(|_| too_big())?;
            // SAFETY: `statement` is live (finalized only on drop). A text
            // bound `SQLITE_STATIC` must outlive its binding: it is
            // `batch`'s, borrowed for this call, and the bindings are
            // cleared below before the call returns, on every path.
            code = unsafe {
                match value {
                    // Every parameter is NULL after the clearing below (and
                    // in a statement just prepared): nothing to bind.
                    Value::Null => ffi::SQLITE_OK,
                    Value::Int(number) => ffi::sqlite3_bind_int64(statement, position, *number),
                    Value::Text { .. } => {
                        let text = batch.str(value);
                        match c_int::try_from(text.len()) {
                            Ok(len) => ffi::sqlite3_bind_text(
                                statement,
                                position,
                                text.as_ptr().cast(),
                                len,
                                ffi::SQLITE_STATIC(),
                            ),
                            Err(_) => ffi::SQLITE_TOOBIG,
                        }
                    }
                }
            };
            if code != ffi::SQLITE_OK {
                break;
            }
        }
        if code == ffi::SQLITE_OK {
            // SAFETY: as above.
            code = match unsafe { ffi::sqlite3_step(statement) } {
                ffi::SQLITE_DONE => ffi::SQLITE_OK,
                failed => failed,
            };
        }
        // Read before the reset, which may replace the message.
        let result = match code {
            ffi::SQLITE_OK => Ok(()),
            code => Err(failure(self.connection, code)),
        };
        // SAFETY: as above; both only touch the statement itself.
        unsafe {
            ffi::sqlite3_reset(statement);
            ffi::sqlite3_clear_bindings(statement);
        }
        result
    }
}

impl Drop for Raw<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live and finalized once, here.
        unsafe {
            ffi::sqlite3_finalize(self.statement.as_ptr());
        }
    }
}

/// SQLite's error for `code`, with the connection's message.
fn failure(connection: &Connection, code: c_int) -> rusqlite::Error {
    // SAFETY: the handle is open; SQLite's message is a NUL-terminated
    // string it owns until the next call on the connection, copied here.
    let message = unsafe {
        let text = ffi::sqlite3_errmsg(connection.handle());
        (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), message)
}

fn too_big() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None)
}

/// Serves jobs on one connection. True when every sender is gone; false
/// when the connection was left inside a transaction and must be reopened.
fn run(connection: &Connection, mut prepared: Prepared<'_>, jobs: &mpsc::Receiver<Job>) -> bool {
    while let Ok(Job { batch, done }) = jobs.recv() {
        let result = write(connection, &mut prepared, &batch).map_err(|error| error.to_string());
        let _ = done.send(result);
        if !connection.is_autocommit() {
            return false;
        }
    }
    true
}

fn write(
    connection: &Connection,
    prepared: &mut Prepared<'_>,
    batch: &Encoded,
) -> rusqlite::Result<()> {
    connection.execute_batch("BEGIN IMMEDIATE")?;
    let written = insert_rows(&mut prepared.records, batch, &batch.rows)
        .and_then(|()| insert_rows(&mut prepared.bodies, batch, &batch.bodies))
        .and_then(|()| connection.execute_batch("COMMIT"));
    if written.is_err() {
        // Nothing of a failed batch stays; the caller sends it again.
        let _ = connection.execute_batch("ROLLBACK");
    }
    written
}

fn insert_rows<const COLUMNS: usize>(
    statements: &mut [Raw<'_>],
    batch: &Encoded,
    rows: &[[Value; COLUMNS]],
) -> rusqlite::Result<()> {
    for chunk in power_chunks(rows) {
        let Some(statement) = CHUNK_SIZES
            .iter()
            .position(|&size| size == chunk.len())
            .and_then(|at| statements.get_mut(at))
        else {
            return Err(rusqlite::Error::InvalidParameterCount(chunk.len(), 0));
        };
        statement.execute(chunk.iter().flatten(), batch)?;
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
