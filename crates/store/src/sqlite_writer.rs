//! The request log's writer: a connection of its own to the SQLite file,
//! through which every batch of request records is inserted, by one of two
//! threads of its own.
//!
//! A batch goes to the background thread, which runs only when nothing
//! else wants its core (`SCHED_IDLE` on Linux): a request woken while a
//! batch is being written takes the core at once, where it waited for the
//! writer's scheduler slice to end (a millisecond or more, the gateway's
//! p99 at fixed rates). When the cores are busy serving, the background
//! thread falls behind, and the catch-up thread, of the default policy,
//! takes over: a batch the background thread picks up late
//! (`PICKED_UP_LATE`) or has not begun when it is hurried (`HURRY_AFTER`)
//! is taken whole; one it has begun is handed on after its current chunk
//! (the background thread's are short, `BACKGROUND_CHUNK`), its
//! transaction open (the connection moves between the threads, one
//! batch at a time); and the batches of the next `CATCH_UP` (doubled while
//! the background thread keeps being hurried) go straight to the catch-up
//! thread. The connection never checkpoints the WAL itself: the background
//! thread does after a batch, on a connection of its own, so that a
//! checkpoint it cannot finish on a busy core holds up no batch (the
//! catch-up thread does once the WAL has grown four times as long). The
//! log keeps up under any load, and costs the requests nothing while a core
//! has time to spare; what a batch the background thread was stopped in
//! the middle of costs is a delay (a fraction of a second) before it is
//! written, and the records queued meanwhile.
//!
//! Records cross to the threads once, encoded: every column's value in
//! statement order, every text copied into one buffer (`Encoded`). The
//! connection keeps the ten insert statements (five chunk sizes, for records
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
//! by a failure is reopened; should the threads be gone, the store writes
//! through the pool.

use std::ffi::{CStr, c_int};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ffi};
use switchboard_core::{RequestRecord, request_id};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::sqlite::{
    BODY_COLUMNS, CHUNK_SIZES, RECORD_COLUMNS, bodies_statement, insert_statement,
    power_chunks_up_to,
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

/// The most rows the background thread inserts in one statement. A core
/// kept busy stops it wherever it is, and lets it run again only now and
/// then; a batch hurried meanwhile waits for the statement it is in to end
/// before the catch-up thread can take the rest, so the background thread
/// keeps its statements short (about 16 × 3 µs of SQLite's work), at the
/// cost of a little more per row, paid on an idle core. The catch-up
/// thread inserts up to 256 rows at a time.
const BACKGROUND_CHUNK: usize = 16;

/// How long a batch may take on the background thread before the rest of
/// it goes to the catch-up thread. At the rates a core serves with room to
/// spare, a batch takes a few milliseconds there. Both limits are well
/// above the moments a core with room to spare is busy without a break
/// (a burst of requests, or the backlog a host's pause of a few
/// milliseconds leaves): the catch-up thread takes its turns with the
/// requests, so it should write only when the core stays busy. At 5 and
/// 50 ms, a 20,000/s load on a core two thirds busy sent two thirds of the
/// writing there, and the serving thread waited behind it a dozen times a
/// load (`bench/sched-waits.sh`; BENCHMARKS.md).
const HURRY_AFTER: Duration = Duration::from_millis(250);

/// A batch the background thread picks up later than this after it was
/// sent found its core busy: it goes to the catch-up thread unbegun.
const PICKED_UP_LATE: Duration = Duration::from_millis(100);

/// How long batches go straight to the catch-up thread after one was
/// hurried, before the background thread is given the next again; doubled
/// each time the background thread is hurried again before it has written
/// a batch in time, up to `CATCH_UP_MOST`. A batch the background thread
/// has begun cannot be taken from it until it runs again, which a core
/// kept busy lets it do only now and then (a fraction of a second), so
/// under such a load it is given batches ever more rarely.
const CATCH_UP: Duration = Duration::from_secs(1);
const CATCH_UP_MOST: Duration = Duration::from_secs(32);

// A batch hurried, and the next one sent within the window it opens, must
// both fit in it (`a_hurried_batch_not_yet_begun_is_taken_by_the_catch_up_thread`
// relies on it, and a window shorter than two hurries would send every
// other batch back to a thread that cannot get to it).
const _: () = assert!(2 * HURRY_AFTER.as_millis() < CATCH_UP.as_millis());

/// A batch on its way, shared by the side that waits for it and the two
/// threads, so that the catch-up thread can take a batch the background
/// thread has not begun.
struct Job {
    batch: Encoded,
    done: Mutex<Option<oneshot::Sender<Result<(), String>>>>,
    /// Set by the waiting side once the batch has taken `HURRY_AFTER`:
    /// the background thread hands the rest of it on.
    hurry: AtomicBool,
    /// Which thread has taken the batch: `UNTAKEN`, or a `Lane`. Taken
    /// once; a batch handed on keeps the background's mark.
    taken: std::sync::atomic::AtomicU8,
    sent: Instant,
    /// Where the batch stands: `None` before its transaction begins, else
    /// the rows of records and of bodies inserted (records first). Used by
    /// the thread that holds the session.
    written: Mutex<Option<[usize; 2]>>,
    /// The batch's turn on the connection, given back when it is answered
    /// (committed, or rolled back), not when its caller stops waiting: a
    /// batch handed on halfway holds the connection's transaction open.
    turn: Mutex<Option<tokio::sync::OwnedMutexGuard<()>>>,
}

const UNTAKEN: u8 = u8::MAX;

/// How the two threads share the work: the defaults, or in tests, times
/// and a policy that do not depend on how busy the machine is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// The background thread asks for `SCHED_IDLE`.
    idle: bool,
    hurry_after: Duration,
    picked_up_late: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            idle: true,
            hurry_after: HURRY_AFTER,
            picked_up_late: PICKED_UP_LATE,
        }
    }
}

impl Job {
    /// Takes the batch for `lane`: false when the other thread has.
    fn take(&self, lane: Lane) -> bool {
        self.taken
            .compare_exchange(UNTAKEN, lane as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn answer(&self, result: Result<(), String>) {
        drop(lock(&self.turn).take());
        if let Some(done) = lock(&self.done).take() {
            let _ = done.send(result);
        }
    }
}

/// The connection and its prepared statements, held by whichever of the
/// two threads is writing; `None` until opened, and after a failure that
/// left it inside a transaction (opened again by the next batch).
struct Shared {
    path: PathBuf,
    tuning: Tuning,
    session: Mutex<Option<Session>>,
    /// Batches the background thread handed on halfway.
    handed_on: AtomicU64,
    /// Batches the background thread picked up late, and gave to the
    /// catch-up thread unbegun.
    picked_up_late: AtomicU64,
    /// Batches hurried before the background thread picked them up, which
    /// the catch-up thread took unbegun.
    taken_unbegun: AtomicU64,
    /// Batches committed by each thread, by `Lane`.
    committed: [AtomicU64; 2],
    /// Rows (records and bodies) inserted by each thread, by `Lane`.
    rows: [AtomicU64; 2],
    /// The WAL's frames after the session's last commit.
    wal_frames: Arc<std::sync::atomic::AtomicI32>,
    /// Checkpoints run by the writer threads.
    checkpoints: AtomicU64,
    /// Each thread's id, by `Lane`, once it has started.
    #[cfg(target_os = "linux")]
    tids: [std::sync::atomic::AtomicI32; 2],
    /// Tests hold the background thread off its next batch with this, as a
    /// busy core would.
    #[cfg(test)]
    stalled: AtomicBool,
}

/// Which thread writes: the background one, which runs only when nothing
/// else wants the core and hands a hurried batch on, or the catch-up one,
/// which takes its turn with the threads serving requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Background = 0,
    CatchUp = 1,
}

/// Sends a batch to the catch-up thread; should it be gone (it cannot be,
/// short of a bug), finishes the batch on this thread.
fn hand_on(shared: &Shared, catch_up: &mpsc::Sender<Arc<Job>>, job: Arc<Job>) {
    if let Err(refused) = catch_up.send(job) {
        work(shared, &refused.0, Lane::CatchUp);
    }
}

impl Shared {
    fn started(&self, lane: Lane) {
        // SAFETY: gettid has no preconditions.
        #[cfg(target_os = "linux")]
        self.tids[lane as usize].store(unsafe { libc::gettid() }, Ordering::Relaxed);
        #[cfg(not(target_os = "linux"))]
        let _ = lane;
    }
}

/// The two threads' queues.
#[derive(Debug)]
struct Lanes {
    background: mpsc::Sender<Arc<Job>>,
    catch_up: mpsc::Sender<Arc<Job>>,
}

/// The handle of the writer threads; see the module documentation.
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
    lanes: Mutex<Option<Lanes>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    catch_up: Mutex<CatchUp>,
    /// Held for the whole of a batch's write: a batch handed on halfway
    /// leaves its transaction open on the connection, which no other batch
    /// may use until it is committed.
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

/// Until when batches go straight to the catch-up thread, and for how long
/// they will the next time one is hurried.
#[derive(Debug)]
struct CatchUp {
    until: Option<Instant>,
    next: Duration,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LogWriter")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Opens the connection (the file must exist, migrated), prepares
    /// every statement and starts both threads. Blocks until then: call it
    /// off the runtime's threads.
    pub(crate) fn open(path: &Path) -> Result<LogWriter, String> {
        Self::open_tuned(path, Tuning::default())
    }

    fn open_tuned(path: &Path, tuning: Tuning) -> Result<LogWriter, String> {
        let wal_frames = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let session = Session::open(path, &wal_frames).map_err(|error| error.to_string())?;
        let shared = Arc::new(Shared {
            wal_frames,
            checkpoints: AtomicU64::new(0),
            path: path.to_owned(),
            tuning,
            session: Mutex::new(Some(session)),
            handed_on: AtomicU64::new(0),
            picked_up_late: AtomicU64::new(0),
            taken_unbegun: AtomicU64::new(0),
            committed: [AtomicU64::new(0), AtomicU64::new(0)],
            rows: [AtomicU64::new(0), AtomicU64::new(0)],
            #[cfg(target_os = "linux")]
            tids: Default::default(),
            #[cfg(test)]
            stalled: AtomicBool::new(false),
        });
        let (catch_up, catch_up_jobs) = mpsc::channel::<Arc<Job>>();
        let (background, background_jobs) = mpsc::channel::<Arc<Job>>();
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(body)
                .map_err(|error| error.to_string())
        };
        let catch_up_thread = {
            let shared = shared.clone();
            spawn(
                "sqlite-log-catchup",
                Box::new(move || {
                    shared.started(Lane::CatchUp);
                    let mut checkpointer = Checkpointer::default();
                    while let Ok(job) = catch_up_jobs.recv() {
                        // Sent here, taken from the background thread
                        // unbegun, or handed on by it: this thread's own
                        // now, and never handed on from here.
                        job.take(Lane::CatchUp);
                        work(&shared, &job, Lane::CatchUp);
                        drop(job);
                        checkpointer.run(&shared, CATCH_UP_CHECKPOINT_FRAMES);
                    }
                }),
            )?
        };
        let background_thread = {
            let shared = shared.clone();
            let catch_up = catch_up.clone();
            spawn(
                "sqlite-log-writer",
                Box::new(move || {
                    shared.started(Lane::Background);
                    if shared.tuning.idle {
                        yield_to_every_other_thread();
                    }
                    let mut checkpointer = Checkpointer::default();
                    while let Ok(job) = background_jobs.recv() {
                        #[cfg(test)]
                        while shared.stalled.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        if job.sent.elapsed() > shared.tuning.picked_up_late {
                            // The core was busy until now: the catch-up
                            // thread takes the batch, unless it has.
                            if job.take(Lane::CatchUp) {
                                shared.picked_up_late.fetch_add(1, Ordering::Relaxed);
                                hand_on(&shared, &catch_up, job);
                            }
                            continue;
                        }
                        if !job.take(Lane::Background) {
                            continue;
                        }
                        if work(&shared, &job, Lane::Background) == Worked::HandOn {
                            shared.handed_on.fetch_add(1, Ordering::Relaxed);
                            hand_on(&shared, &catch_up, job);
                        } else {
                            drop(job);
                            checkpointer.run(&shared, CHECKPOINT_FRAMES);
                        }
                    }
                }),
            )?
        };
        Ok(LogWriter {
            shared,
            lanes: Mutex::new(Some(Lanes {
                background,
                catch_up,
            })),
            threads: Mutex::new(vec![background_thread, catch_up_thread]),
            catch_up: Mutex::new(CatchUp {
                until: None,
                next: CATCH_UP,
            }),
            one_at_a_time: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// What each thread has written, and the batches handed between them.
    pub(crate) fn lanes(&self) -> crate::WriterLanes {
        let shared = &self.shared;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        crate::WriterLanes {
            idle_rows: count(&shared.rows[Lane::Background as usize]),
            catch_up_rows: count(&shared.rows[Lane::CatchUp as usize]),
            picked_up_late: count(&shared.picked_up_late),
            handed_on: count(&shared.handed_on),
            taken_unbegun: count(&shared.taken_unbegun),
        }
    }

    /// Writes a batch in one transaction, and waits until it is committed
    /// (or has failed, and was rolled back). `Err(Stopped)` gives the batch
    /// back when the threads are gone.
    pub(crate) async fn insert(&self, batch: Encoded) -> Result<Result<(), StoreError>, Stopped> {
        self.insert_job(batch, false).await
    }

    async fn insert_job(
        &self,
        batch: Encoded,
        hurried: bool,
    ) -> Result<Result<(), StoreError>, Stopped> {
        let turn = self.one_at_a_time.clone().lock_owned().await;
        let (done, mut answer) = oneshot::channel();
        let catching_up = lock(&self.catch_up)
            .until
            .is_some_and(|until| Instant::now() < until);
        let job = Arc::new(Job {
            batch,
            done: Mutex::new(Some(done)),
            hurry: AtomicBool::new(hurried),
            // Sent to the catch-up thread, the batch is its own at once:
            // it is never sent twice.
            taken: std::sync::atomic::AtomicU8::new(if catching_up {
                Lane::CatchUp as u8
            } else {
                UNTAKEN
            }),
            sent: Instant::now(),
            written: Mutex::new(None),
            turn: Mutex::new(Some(turn)),
        });
        let sent = match lock(&self.lanes).as_ref() {
            Some(lanes) if catching_up => lanes.catch_up.send(job.clone()).is_ok(),
            Some(lanes) => lanes.background.send(job.clone()).is_ok(),
            None => false,
        };
        if !sent {
            return match Arc::try_unwrap(job) {
                Ok(job) => Err(Stopped(job.batch)),
                // Not reached: the refused send gave its reference back.
                Err(_) => Ok(Err(StoreError::Query(
                    "the request log's writer stopped".to_owned(),
                ))),
            };
        }
        let hurry_after = self.shared.tuning.hurry_after;
        let answered = match tokio::time::timeout(hurry_after, &mut answer).await {
            Ok(answered) => {
                if !catching_up {
                    if job.taken.load(Ordering::Acquire) == Lane::Background as u8 {
                        // Written in time by the background thread.
                        lock(&self.catch_up).next = CATCH_UP;
                    } else {
                        // Picked up late: the core was busy.
                        self.catch_up_for_a_while();
                    }
                }
                answered
            }
            Err(_) => {
                // The background thread is not keeping up: the cores are
                // busy serving. The rest of this batch (all of it, if the
                // background thread has not begun it), and the batches
                // for a while, go to the thread that takes its turn. (A
                // batch already sent there is just slow: nothing changes.)
                job.hurry.store(true, Ordering::Relaxed);
                if !catching_up {
                    self.catch_up_for_a_while();
                }
                if job.take(Lane::CatchUp) {
                    self.shared.taken_unbegun.fetch_add(1, Ordering::Relaxed);
                    if let Some(lanes) = lock(&self.lanes).as_ref() {
                        let _ = lanes.catch_up.send(job.clone());
                    }
                }
                drop(job);
                answer.await
            }
        };
        Ok(match answered {
            Ok(result) => result.map_err(StoreError::Query),
            // The thread ended during the write; the caller sends the
            // batch again, and then finds the thread gone.
            Err(_) => Err(StoreError::Query(
                "the request log's writer stopped during a write".to_owned(),
            )),
        })
    }

    fn catch_up_for_a_while(&self) {
        let mut catch_up = lock(&self.catch_up);
        catch_up.until = Some(Instant::now() + catch_up.next);
        catch_up.next = (catch_up.next * 2).min(CATCH_UP_MOST);
    }

    /// Stops the threads once they have written what they were given,
    /// waits for them, and closes the connection.
    pub(crate) async fn close(&self) {
        drop(lock(&self.lanes).take());
        let threads = std::mem::take(&mut *lock(&self.threads));
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            // The background thread first: it may still hand a batch on.
            for thread in threads {
                let _ = thread.join();
            }
            drop(lock(&shared.session).take());
        })
        .await;
    }
}

/// A batch the writer's threads could not take: they have ended.
#[derive(Debug)]
pub(crate) struct Stopped(pub(crate) Encoded);

/// Asks the scheduler to run this thread only when nothing else wants its
/// core (Linux's `SCHED_IDLE`): a request woken while a batch is being
/// written then takes the core at once, instead of waiting for the
/// writer's slice to end (a millisecond or more). Where the policy is not
/// available, the thread keeps the default one.
fn yield_to_every_other_thread() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param; pid 0 is this thread.
        let code = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if code != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "the request log's background writer keeps the default scheduling"
            );
        }
    }
}

/// Writes what is left of `job` on this thread, then answers it; or, in
/// the background lane, stops after a chunk once the job is hurried, its
/// transaction still open, for the catch-up thread to finish. A failure
/// rolls the batch back whole. Never inlined: `bench/instructions.sh`
/// finds the writing by this function's name.
#[inline(never)]
fn work(shared: &Shared, job: &Job, lane: Lane) -> Worked {
    let mut session = lock(&shared.session);
    if session.is_none() {
        match Session::open(&shared.path, &shared.wal_frames) {
            Ok(opened) => *session = Some(opened),
            Err(error) => {
                job.answer(Err(format!(
                    "the request log's writer cannot open the database: {error}"
                )));
                return Worked::Finished;
            }
        }
    }
    let Some(open) = session.as_mut() else {
        return Worked::Finished;
    };
    let rows = |job: &Job| lock(&job.written).map_or(0, |[records, bodies]| records + bodies);
    let before = rows(job);
    let progress = open.advance(job, lane == Lane::Background);
    shared.rows[lane as usize].fetch_add((rows(job) - before) as u64, Ordering::Relaxed);
    match progress {
        Ok(Progress::Committed) => {
            shared.committed[lane as usize].fetch_add(1, Ordering::Relaxed);
            job.answer(Ok(()));
            Worked::Finished
        }
        Ok(Progress::HandOn) => Worked::HandOn,
        Err(error) => {
            // Nothing of a failed batch stays; the caller sends it again.
            let _ = open.connection.execute_batch("ROLLBACK");
            if !open.connection.is_autocommit() {
                tracing::warn!(
                    "the request log's writer connection is reopened after a failed rollback"
                );
                *session = None;
            }
            job.answer(Err(error.to_string()));
            Worked::Finished
        }
    }
}

/// What became of a batch on a thread: answered (written or failed), or
/// to be handed on.
#[derive(Debug, PartialEq, Eq)]
enum Worked {
    Finished,
    HandOn,
}

enum Progress {
    Committed,
    HandOn,
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

/// The connection with its insert statements, one per chunk size,
/// prepared once. Used by one thread at a time (under `Shared::session`),
/// which SQLite's threading mode allows.
struct Session {
    records: Vec<Raw>,
    bodies: Vec<Raw>,
    connection: Connection,
    /// Frames in the WAL after the connection's last commit, which SQLite
    /// tells `count_frames`; the connection never checkpoints itself.
    /// Kept here so that it is dropped after the connection.
    _wal_frames: Arc<std::sync::atomic::AtomicI32>,
}

/// The WAL's frames after which the background thread checkpoints (as
/// SQLite's own automatic checkpoint would), and after which the catch-up
/// thread does, the background thread having fallen behind.
const CHECKPOINT_FRAMES: i32 = 1_000;
const CATCH_UP_CHECKPOINT_FRAMES: i32 = 4_000;

/// SQLite's WAL hook: notes the frames in the WAL after a commit.
extern "C" fn count_frames(
    frames: *mut std::ffi::c_void,
    _db: *mut ffi::sqlite3,
    _name: *const std::ffi::c_char,
    count: c_int,
) -> c_int {
    // SAFETY: `frames` is the `AtomicI32` its session keeps alive for as
    // long as the connection that calls this.
    unsafe { (*frames.cast::<std::sync::atomic::AtomicI32>()).store(count, Ordering::Relaxed) };
    ffi::SQLITE_OK
}

/// A connection of a writer thread's own that checkpoints the WAL, so
/// that a checkpoint never holds the session (a checkpoint does not keep
/// a writer from the WAL): the background thread's, stopped halfway by a
/// busy core, holds up nothing but the next checkpoint.
#[derive(Default)]
struct Checkpointer(Option<Connection>);

impl Checkpointer {
    /// Checkpoints what it can without waiting, when the WAL holds at
    /// least `frames` frames. Never inlined, as `work` is not.
    #[inline(never)]
    fn run(&mut self, shared: &Shared, frames: i32) {
        if shared.wal_frames.load(Ordering::Relaxed) < frames {
            return;
        }
        if self.0.is_none() {
            self.0 = connect(&shared.path).ok();
        }
        let Some(connection) = &self.0 else {
            return;
        };
        // PASSIVE: copies what no reader needs, and returns if another
        // checkpoint is under way.
        match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => {
                shared.checkpoints.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::debug!(%error, "the request log's checkpoint failed; it is tried again after the next batch");
                self.0 = None;
            }
        }
    }
}

// SAFETY: the statements are the connection's, and the whole is only ever
// used by the thread holding `Shared::session`'s lock: SQLite (built
// thread-safe, as rusqlite's bundled build is) allows a connection and its
// statements to move between threads when no two use them at once.
unsafe impl Send for Session {}

impl Session {
    fn open(
        path: &Path,
        wal_frames: &Arc<std::sync::atomic::AtomicI32>,
    ) -> rusqlite::Result<Session> {
        let connection = connect(path)?;
        // SAFETY: the handle is open; the hook's argument is the session's
        // `wal_frames`, which outlives the connection. Registering a WAL
        // hook also turns the connection's automatic checkpoints off.
        unsafe {
            ffi::sqlite3_wal_hook(
                connection.handle(),
                Some(count_frames),
                Arc::as_ptr(wal_frames).cast_mut().cast(),
            );
        }
        let mut session = Session {
            records: Vec::new(),
            bodies: Vec::new(),
            connection,
            _wal_frames: wal_frames.clone(),
        };
        for &rows in &CHUNK_SIZES {
            let statement = Raw::prepare(&session.connection, insert_statement(rows))?;
            session.records.push(statement);
            let statement = Raw::prepare(&session.connection, bodies_statement(rows))?;
            session.bodies.push(statement);
        }
        Ok(session)
    }

    /// Begins the job's transaction if it has not begun, inserts its
    /// chunks from where it stands, and commits; with `may_hand_on` (the
    /// background lane), in chunks of at most `BACKGROUND_CHUNK` rows,
    /// returning after any chunk once the job is hurried (the transaction
    /// open).
    fn advance(&mut self, job: &Job, may_hand_on: bool) -> rusqlite::Result<Progress> {
        let batch = &job.batch;
        let largest = if may_hand_on {
            BACKGROUND_CHUNK
        } else {
            CHUNK_SIZES[0]
        };
        let mut written = lock(&job.written);
        let mut done = match *written {
            Some(done) => done,
            None => {
                self.connection.execute_batch("BEGIN IMMEDIATE")?;
                *written = Some([0, 0]);
                [0, 0]
            }
        };
        let records = power_chunks_up_to(batch.rows.get(done[0]..).unwrap_or_default(), largest)
            .map(Chunk::Records);
        let bodies = power_chunks_up_to(batch.bodies.get(done[1]..).unwrap_or_default(), largest)
            .map(Chunk::Bodies);
        for chunk in records.chain(bodies) {
            match chunk {
                Chunk::Records(rows) => {
                    insert_rows(&mut self.records, &self.connection, batch, rows)?;
                    done[0] += rows.len();
                }
                Chunk::Bodies(rows) => {
                    insert_rows(&mut self.bodies, &self.connection, batch, rows)?;
                    done[1] += rows.len();
                }
            }
            *written = Some(done);
            if may_hand_on && job.hurry.load(Ordering::Relaxed) {
                return Ok(Progress::HandOn);
            }
        }
        self.connection.execute_batch("COMMIT")?;
        Ok(Progress::Committed)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Statements before their connection, which closes after this.
        for statement in self.records.drain(..).chain(self.bodies.drain(..)) {
            statement.finalize();
        }
    }
}

enum Chunk<'b> {
    Records(&'b [[Value; RECORD_COLUMNS]]),
    Bodies(&'b [[Value; BODY_COLUMNS]]),
}

/// A prepared statement, held through SQLite's C interface so that texts
/// can be bound without a copy (see the module documentation). Finalized
/// by its `Session` before the connection closes.
struct Raw {
    statement: NonNull<ffi::sqlite3_stmt>,
}

impl Raw {
    fn prepare(connection: &Connection, sql: &str) -> rusqlite::Result<Raw> {
        let len = c_int::try_from(sql.len()).map_err(|_| too_big())?;
        let mut statement = std::ptr::null_mut();
        // SAFETY: the handle is that of `connection`, open; the SQL is
        // `len` valid bytes, and `statement` is written by SQLite.
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
        match (code, NonNull::new(statement)) {
            (ffi::SQLITE_OK, Some(statement)) => Ok(Raw { statement }),
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
        connection: &Connection,
        values: impl Iterator<Item = &'v Value>,
        batch: &Encoded,
    ) -> rusqlite::Result<()> {
        let statement = self.statement.as_ptr();
        let mut code = ffi::SQLITE_OK;
        for (index, value) in values.enumerate() {
            let position = c_int::try_from(index + 1).map_err(|_| too_big())?;
            // SAFETY: `statement` is live (finalized only by its session,
            // which holds it). A text bound `SQLITE_STATIC` must outlive
            // its binding: it is `batch`'s, borrowed for this call, and
            // the bindings are cleared below before the call returns, on
            // every path.
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
            code => Err(failure(connection, code)),
        };
        // SAFETY: as above; both only touch the statement itself.
        unsafe {
            ffi::sqlite3_reset(statement);
            ffi::sqlite3_clear_bindings(statement);
        }
        result
    }

    fn finalize(self) {
        // SAFETY: the statement is live and finalized once, here (`self`
        // is consumed), before its connection closes.
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

/// Inserts one chunk of rows with the statement prepared for its size.
fn insert_rows<const COLUMNS: usize>(
    statements: &mut [Raw],
    connection: &Connection,
    batch: &Encoded,
    chunk: &[[Value; COLUMNS]],
) -> rusqlite::Result<()> {
    let Some(statement) = CHUNK_SIZES
        .iter()
        .position(|&size| size == chunk.len())
        .and_then(|at| statements.get_mut(at))
    else {
        return Err(rusqlite::Error::InvalidParameterCount(chunk.len(), 0));
    };
    statement.execute(connection, chunk.iter().flatten(), batch)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use crate::sqlite::tests::{assorted_records, file_store, ids_of, record};

    fn writer(store: &crate::sqlite::SqliteStore) -> &LogWriter {
        store.writer.as_deref().unwrap()
    }

    /// Lanes chosen by what the test does, not by how busy the machine
    /// running it is: the background thread of the default policy, never
    /// picking a batch up late, hurried after 200 ms.
    const STEADY: Tuning = Tuning {
        idle: false,
        hurry_after: Duration::from_millis(200),
        picked_up_late: Duration::from_secs(3_600),
    };

    /// A file store whose writer is tuned so.
    async fn tuned_store(test: u32, tuning: Tuning) -> (PathBuf, crate::sqlite::SqliteStore) {
        let (directory, mut store) = file_store(test).await;
        writer(&store).close().await;
        let tuned = LogWriter::open_tuned(&directory.join("log.db"), tuning).unwrap();
        store.writer = Some(Arc::new(tuned));
        (directory, store)
    }

    /// The background thread asks for `SCHED_IDLE`, the catch-up thread
    /// keeps the default policy.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_background_writer_runs_only_on_an_idle_core() {
        let (directory, store) = file_store(line!()).await;
        let shared = &writer(&store).shared;
        // The threads note their ids as they start, then the background
        // thread asks for its policy: waited for, on a busy machine.
        let mut tids = [0; 2];
        let mut policies = [-1; 2];
        for _ in 0..10_000 {
            tids = [Lane::Background, Lane::CatchUp]
                .map(|lane| shared.tids[lane as usize].load(Ordering::Relaxed));
            // SAFETY: plain queries of this process's threads.
            policies = tids.map(|tid| {
                if tid == 0 {
                    -1
                } else {
                    unsafe { libc::sched_getscheduler(tid) }
                }
            });
            if policies == [libc::SCHED_IDLE, libc::SCHED_OTHER] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(policies, [libc::SCHED_IDLE, libc::SCHED_OTHER], "{tids:?}");
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    /// A hurried batch is begun by the background thread, which hands it
    /// on after its first chunk (a short one), its transaction open; the
    /// catch-up thread finishes it, and it is kept whole, as the pool
    /// would keep it.
    #[tokio::test]
    async fn a_hurried_batch_is_finished_by_the_catch_up_thread() {
        let (directory, store) = tuned_store(line!(), STEADY).await;
        let records = assorted_records();
        let batch = Encoded::of(&records).await;
        let rows = (batch.rows.len() + batch.bodies.len()) as u64;
        assert!(batch.rows.len() > CHUNK_SIZES[0]);
        writer(&store)
            .insert_job(batch, true)
            .await
            .unwrap()
            .unwrap();
        let shared = &writer(&store).shared;
        assert_eq!(shared.handed_on.load(Ordering::Relaxed), 1);
        assert_eq!(
            shared.committed[Lane::CatchUp as usize].load(Ordering::Relaxed),
            1
        );
        assert_eq!(
            shared.committed[Lane::Background as usize].load(Ordering::Relaxed),
            0
        );
        // The background thread's one chunk is short: 16 rows, where the
        // catch-up thread's are up to 256.
        let written = shared
            .rows
            .each_ref()
            .map(|rows| rows.load(Ordering::Relaxed));
        assert_eq!(written, [16, rows - 16]);
        // As the store reports it for the metrics.
        assert_eq!(
            store.writer_lanes(),
            Some(crate::WriterLanes {
                idle_rows: 16,
                catch_up_rows: rows - 16,
                picked_up_late: 0,
                handed_on: 1,
                taken_unbegun: 0,
            })
        );
        let memory = crate::sqlite::SqliteStore::open_memory().await.unwrap();
        memory.insert_records(&records).await.unwrap();
        assert_eq!(
            store.recent_records(1_000).await.unwrap(),
            memory.recent_records(1_000).await.unwrap()
        );
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    /// A batch handed on after any of the background thread's chunks, in
    /// its records or in its bodies, is finished where it stands: every
    /// record and every body kept once.
    #[tokio::test]
    async fn a_batch_is_resumed_after_any_chunk() {
        let records = assorted_records();
        let memory = crate::sqlite::SqliteStore::open_memory().await.unwrap();
        memory.insert_records(&records).await.unwrap();
        // 300 records in 21 chunks of the background thread's (18 of 16,
        // then 4, 4, 4), then 60 bodies in 6 (16, 16, 16, 4, 4, 4).
        for chunks in [1, 20, 21, 22, 24, 26, 27] {
            let (directory, store) = file_store(line!() * 100 + chunks).await;
            let job = Job {
                batch: Encoded::of(&records).await,
                done: Mutex::new(None),
                hurry: AtomicBool::new(true),
                taken: std::sync::atomic::AtomicU8::new(Lane::Background as u8),
                sent: Instant::now(),
                written: Mutex::new(None),
                turn: Mutex::new(None),
            };
            let frames = Arc::new(std::sync::atomic::AtomicI32::new(0));
            let mut session = Session::open(&directory.join("log.db"), &frames).unwrap();
            for _ in 0..chunks {
                assert!(matches!(
                    session.advance(&job, true).unwrap(),
                    Progress::HandOn
                ));
            }
            let [records_done, bodies_done] = lock(&job.written).unwrap();
            assert_eq!(
                records_done + bodies_done,
                [16; 18]
                    .into_iter()
                    .chain([4; 3])
                    .chain([16, 16, 16, 4, 4, 4])
                    .take(chunks as usize)
                    .sum::<usize>()
            );
            assert!(matches!(
                session.advance(&job, false).unwrap(),
                Progress::Committed
            ));
            drop(session);
            assert_eq!(
                store.recent_records(1_000).await.unwrap(),
                memory.recent_records(1_000).await.unwrap(),
                "handed on after {chunks} chunks"
            );
            let bodies: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM request_bodies")
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(bodies, 60, "handed on after {chunks} chunks");
            for record in records.iter().filter(|record| record.bodies.is_some()) {
                assert_eq!(
                    store.record_bodies(&record.request_id).await.unwrap(),
                    memory.record_bodies(&record.request_id).await.unwrap()
                );
            }
            store.close().await;
            std::fs::remove_dir_all(directory).unwrap();
        }
    }

    /// A hurried batch that fails on the catch-up thread leaves nothing
    /// behind, not even the chunk the background thread inserted.
    #[tokio::test]
    async fn a_batch_handed_on_is_rolled_back_whole() {
        let (directory, store) = tuned_store(line!(), STEADY).await;
        sqlx::query::<sqlx::Sqlite>("ALTER TABLE request_bodies RENAME TO gone")
            .execute(store.pool())
            .await
            .unwrap();
        let records = assorted_records();
        let batch = Encoded::of(&records).await;
        assert!(!batch.bodies.is_empty());
        let error = writer(&store)
            .insert_job(batch, true)
            .await
            .unwrap()
            .unwrap_err();
        assert!(error.to_string().contains("request_bodies"), "{error}");
        assert_eq!(writer(&store).shared.handed_on.load(Ordering::Relaxed), 1);
        assert!(store.recent_records(10).await.unwrap().is_empty());
        store.insert_records(&[record("after")]).await.unwrap();
        assert_eq!(store.recent_records(10).await.unwrap().len(), 1);
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    /// Holds the session (the connection) for `how_long` from a thread of
    /// its own, as a batch being written would; returns once it is held.
    fn hold_session(shared: &Arc<Shared>, how_long: Duration) -> std::thread::JoinHandle<()> {
        let (taken, held) = mpsc::channel();
        let shared = shared.clone();
        let holder = std::thread::spawn(move || {
            let _held = lock(&shared.session);
            taken.send(()).unwrap();
            std::thread::sleep(how_long);
        });
        held.recv().unwrap();
        holder
    }

    /// Holds the background thread off its next batch for `how_long`, as
    /// a busy core would.
    fn stall_background(shared: &Arc<Shared>, how_long: Duration) -> std::thread::JoinHandle<()> {
        shared.stalled.store(true, Ordering::Relaxed);
        let shared = shared.clone();
        std::thread::spawn(move || {
            std::thread::sleep(how_long);
            shared.stalled.store(false, Ordering::Relaxed);
        })
    }

    /// A batch the background thread picks up late goes to the catch-up
    /// thread unbegun.
    #[tokio::test]
    async fn a_batch_picked_up_late_goes_to_the_catch_up_thread() {
        let (directory, store) = tuned_store(
            line!(),
            Tuning {
                idle: false,
                hurry_after: Duration::from_secs(3_600),
                picked_up_late: PICKED_UP_LATE,
            },
        )
        .await;
        let shared = writer(&store).shared.clone();
        let stall = stall_background(&shared, PICKED_UP_LATE * 4);
        let batch = Encoded::of(&[record("late")]).await;
        writer(&store).insert(batch).await.unwrap().unwrap();
        stall.join().unwrap();
        assert_eq!(shared.picked_up_late.load(Ordering::Relaxed), 1);
        assert_eq!(shared.taken_unbegun.load(Ordering::Relaxed), 0);
        assert_eq!(
            store.writer_lanes(),
            Some(crate::WriterLanes {
                idle_rows: 0,
                catch_up_rows: 1,
                picked_up_late: 1,
                handed_on: 0,
                taken_unbegun: 0,
            })
        );
        assert_eq!(
            shared.committed[Lane::CatchUp as usize].load(Ordering::Relaxed),
            1
        );
        assert_eq!(ids_of(&store).await, ["late"]);
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    /// A batch still waiting for the background thread when it is hurried
    /// is taken by the catch-up thread unbegun, and the background thread
    /// leaves it alone when it gets to it.
    #[tokio::test]
    async fn a_hurried_batch_not_yet_begun_is_taken_by_the_catch_up_thread() {
        let (directory, store) = tuned_store(
            line!(),
            Tuning {
                idle: false,
                hurry_after: HURRY_AFTER,
                picked_up_late: Duration::from_secs(3_600),
            },
        )
        .await;
        let shared = writer(&store).shared.clone();
        let stall = stall_background(&shared, HURRY_AFTER * 3);
        let batch = Encoded::of(&[record("taken")]).await;
        writer(&store).insert(batch).await.unwrap().unwrap();
        assert_eq!(shared.taken_unbegun.load(Ordering::Relaxed), 1);
        assert_eq!(
            store.writer_lanes().map(|lanes| lanes.taken_unbegun),
            Some(1)
        );
        assert_eq!(
            shared.committed[Lane::CatchUp as usize].load(Ordering::Relaxed),
            1
        );
        stall.join().unwrap();
        // The background thread has the batch in its queue still: it must
        // not write it again. The next batch goes to the catch-up thread
        // too (its time to catch up), and is written once.
        writer(&store)
            .insert(Encoded::of(&[record("next")]).await)
            .await
            .unwrap()
            .unwrap();
        writer(&store).close().await;
        assert_eq!(shared.picked_up_late.load(Ordering::Relaxed), 0);
        assert_eq!(
            shared
                .committed
                .each_ref()
                .map(|count| count.load(Ordering::Relaxed)),
            [0, 2]
        );
        assert_eq!(ids_of(&store).await, ["next", "taken"]);
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    /// The session's connection never checkpoints the WAL itself: the
    /// background thread does, on a connection of its own, once the WAL
    /// holds `CHECKPOINT_FRAMES`, after which the WAL starts again.
    #[tokio::test]
    async fn the_background_thread_checkpoints_the_wal() {
        let (directory, store) = tuned_store(line!(), STEADY).await;
        let shared = writer(&store).shared.clone();
        let records = assorted_records();
        let mut most = 0;
        for _ in 0..200 {
            let batch = Encoded::of(&records).await;
            writer(&store).insert(batch).await.unwrap().unwrap();
            most = most.max(shared.wal_frames.load(Ordering::Relaxed));
            if shared.checkpoints.load(Ordering::Relaxed) > 0 {
                break;
            }
        }
        assert!(most >= CHECKPOINT_FRAMES, "{most}");
        assert_eq!(shared.checkpoints.load(Ordering::Relaxed), 1);
        // Checkpointed, the WAL is written from its start again.
        let batch = Encoded::of(&records).await;
        writer(&store).insert(batch).await.unwrap().unwrap();
        assert!(shared.wal_frames.load(Ordering::Relaxed) < most / 2);
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    /// Batches written at once by several callers are written one after
    /// the other: one handed on halfway holds the connection's transaction
    /// open, which another must not begin inside or roll back.
    #[tokio::test]
    async fn batches_from_several_callers_are_written_one_at_a_time() {
        let (directory, store) = tuned_store(line!(), STEADY).await;
        let shared = writer(&store).shared.clone();
        for round in 0..3 {
            let holder = hold_session(&shared, STEADY.hurry_after * 2);
            // Each round's first batch is hurried while the background
            // thread waits for the connection, and handed on.
            lock(&writer(&store).catch_up).until = None;
            let first = writer(&store).insert(Encoded::of(&assorted_records()).await);
            let second = writer(&store).insert(Encoded::of(&[record("second")]).await);
            let (first, second) = tokio::join!(first, second);
            first.unwrap().unwrap();
            second.unwrap().unwrap();
            holder.join().unwrap();
            assert_eq!(
                store.recent_records(1_000).await.unwrap().len(),
                301 * (round + 1)
            );
        }
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    /// A caller that stops waiting for its batch (its future dropped) does
    /// not give the connection's turn back before the batch is written:
    /// the next batch waits, and neither is broken.
    #[tokio::test]
    async fn a_batch_whose_caller_stopped_waiting_keeps_its_turn() {
        let (directory, store) = tuned_store(line!(), STEADY).await;
        let shared = writer(&store).shared.clone();
        let holder = hold_session(&shared, STEADY.hurry_after * 3);
        let batch = Encoded::of(&assorted_records()).await;
        let abandoned =
            tokio::time::timeout(STEADY.hurry_after * 2, writer(&store).insert(batch)).await;
        assert!(abandoned.is_err(), "the batch was written too soon");
        writer(&store)
            .insert(Encoded::of(&[record("next")]).await)
            .await
            .unwrap()
            .unwrap();
        holder.join().unwrap();
        assert_eq!(store.recent_records(1_000).await.unwrap().len(), 301);
        assert_eq!(ids_of(&store).await[0], "next");
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }

    /// While the background thread cannot get to a batch (held here by
    /// the session's lock, as a busy core would hold it), the batch is
    /// hurried after `HURRY_AFTER`, and the batches after it go straight
    /// to the catch-up thread.
    #[tokio::test]
    async fn a_slow_batch_sends_the_next_ones_to_the_catch_up_thread() {
        let (directory, store) = tuned_store(line!(), STEADY).await;
        let shared = writer(&store).shared.clone();
        let holder = hold_session(&shared, STEADY.hurry_after * 2);
        let batch = Encoded::of(&assorted_records()).await;
        writer(&store).insert(batch).await.unwrap().unwrap();
        holder.join().unwrap();
        // The background thread took the batch once it could, then gave
        // it on after a chunk.
        assert_eq!(shared.handed_on.load(Ordering::Relaxed), 1);
        store.insert_records(&[record("next")]).await.unwrap();
        assert_eq!(
            shared.committed[Lane::CatchUp as usize].load(Ordering::Relaxed),
            2
        );
        assert_eq!(
            shared.committed[Lane::Background as usize].load(Ordering::Relaxed),
            0
        );
        assert_eq!(store.recent_records(1_000).await.unwrap().len(), 301);
        // Hurried again before the background thread wrote a batch in
        // time, the catch-up lasts twice as long; a batch written in time
        // by the background thread brings it back to `CATCH_UP`.
        assert_eq!(lock(&writer(&store).catch_up).next, CATCH_UP * 2);
        lock(&writer(&store).catch_up).until = None;
        store.insert_records(&[record("in time")]).await.unwrap();
        assert_eq!(
            shared.committed[Lane::Background as usize].load(Ordering::Relaxed),
            1
        );
        assert_eq!(lock(&writer(&store).catch_up).next, CATCH_UP);
        store.close().await;
        std::fs::remove_dir_all(directory).unwrap();
    }
}
