//! The path from the request handlers to the store: a bounded queue and one
//! writer task that drains it in batches.
//!
//! Handlers call `Recorder::record`, which never waits: it appends the
//! record to the journal (when there is one) and puts it on the queue,
//! which the journal holds under its own lock (see `journal`). If the
//! queue is full, the record stays in the journal and the writer reads it
//! back once it has written what was queued before it (`spilled`); without
//! a journal it goes to a spill file instead; only when neither can take
//! it is a record lost, counted as dropped and logged as an error (the
//! counter is exposed, and tests assert it stays at zero). The queue is
//! bounded twice: by a count of records, and by the memory its records
//! hold (`QUEUE_BYTES`, counting their bodies when the log keeps them), so
//! that a database outage under large bodies cannot grow the process
//! without bound; past either, a record spills as above.
//! The writer retries a failed batch with backoff instead of discarding it,
//! and on shutdown drains the whole queue before it returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use switchboard_core::RequestRecord;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Store;
use crate::journal::{Appended, Journal, footprint};

/// Largest number of records written in one transaction.
const BATCH: usize = 2048;

/// How long the writer waits for a batch to fill before writing it. Every
/// record is in the journal (when there is one) before its response
/// completes, so the wait costs no durability; fewer, larger transactions
/// cost the database less per record (each commit rewrites the pages at
/// the tail of the table and of its indexes).
const LINGER: Duration = Duration::from_millis(100);

/// The most memory the records waiting for the writer may hold (queued, or
/// in the batch being written), as `footprint` counts it.
pub const QUEUE_BYTES: usize = 256 << 20;

#[derive(Debug, Default)]
pub struct RecorderStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    /// Records the queue could not take, kept in the journal and written
    /// from there once the queue drains.
    pub spilled: AtomicU64,
    pub write_failures: AtomicU64,
}

/// The handle the request path holds. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// The journal, which holds the queue.
    journal: Arc<Journal>,
    stats: Arc<RecorderStats>,
    /// Never sent on: the writer learns from its closing that the last
    /// handle is gone, so no record can come any more.
    _alive: mpsc::Sender<()>,
}

impl Recorder {
    /// Queues a record without waiting, after appending it to the journal
    /// (when there is one), so that it survives the process even before
    /// the database has it.
    pub fn record(&self, record: RequestRecord) {
        let appended = if self.journal.is_write_ahead() {
            let line = Journal::entry(&record);
            self.journal.append(&line, record)
        } else {
            self.journal.spill_append(record)
        };
        match appended {
            Appended::Queued => {}
            Appended::Spilled(reason) => {
                self.stats.spilled.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    reason,
                    "request record spilled to the journal: written once the queue drains"
                );
            }
            Appended::Lost(reason) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    reason,
                    "request record dropped: the queue cannot take it, and no journal or spill file can keep it"
                );
            }
        }
    }

    /// Records queued and not yet taken by the writer.
    pub fn backlog(&self) -> usize {
        self.journal.backlog()
    }

    pub fn stats(&self) -> &Arc<RecorderStats> {
        &self.stats
    }

    /// The memory the records waiting for the writer hold, as the queue's
    /// bound counts it.
    pub fn held_bytes(&self) -> usize {
        self.journal.held_bytes()
    }
}

/// The writer task's handle, used to stop it and wait for the last batch.
pub struct RecordWriter {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RecordWriter {
    /// Starts the writer; returns the handle for handlers and the writer.
    pub fn start(store: Arc<dyn Store>, capacity: usize) -> (Recorder, RecordWriter) {
        Self::start_with(store, capacity, None)
    }

    /// As `start`, with a write-ahead journal that the writer trims as it
    /// commits.
    pub fn start_with(
        store: Arc<dyn Store>,
        capacity: usize,
        journal: Option<Arc<Journal>>,
    ) -> (Recorder, RecordWriter) {
        Self::start_bounded(store, capacity, QUEUE_BYTES, journal)
    }

    /// As `start_with`, with the queue's memory bound given. Without a
    /// journal, the queue stands alone: what it cannot take is lost.
    pub fn start_bounded(
        store: Arc<dyn Store>,
        capacity: usize,
        byte_limit: usize,
        journal: Option<Arc<Journal>>,
    ) -> (Recorder, RecordWriter) {
        let journal = journal.unwrap_or_else(|| Arc::new(Journal::queue_only()));
        journal.bound_queue(capacity, byte_limit);
        let (alive, closed) = mpsc::channel(1);
        let stats = Arc::new(RecorderStats::default());
        let stop = CancellationToken::new();
        let writer = Writer {
            store,
            stats: stats.clone(),
            stop: stop.clone(),
            journal: journal.clone(),
            byte_limit,
            gave_up: AtomicBool::new(false),
        };
        let task = tokio::spawn(write_loop(writer, closed));
        (
            Recorder {
                journal,
                stats,
                _alive: alive,
            },
            RecordWriter { stop, task },
        )
    }

    /// Waits for every `Recorder` to be dropped (the server has stopped and
    /// its last requests have recorded themselves), writing as records
    /// arrive. If some handle is still alive after `patience`, stops
    /// accepting records and writes what is queued. Returns when the last
    /// batch is committed, or `deadline` after that.
    pub async fn finish(mut self, patience: Duration, deadline: Duration) {
        if tokio::time::timeout(patience, &mut self.task).await.is_ok() {
            return;
        }
        tracing::warn!(
            "request records are still being produced after shutdown; closing the record queue"
        );
        self.stop.cancel();
        if tokio::time::timeout(deadline, self.task).await.is_err() {
            tracing::error!("the record writer did not finish before its deadline");
        }
    }
}

/// Waits for records, lets a batch gather for `LINGER`, and writes what is
/// queued; ends once every `Recorder` is gone (`closed`) or on `stop`,
/// after writing what is left.
async fn write_loop(writer: Writer, mut closed: mpsc::Receiver<()>) {
    let mut batch = Batch::default();
    loop {
        if writer.journal.queued_len() == 0 {
            let open = tokio::select! {
                () = writer.journal.queued() => true,
                _ = closed.recv() => false,
                () = writer.stop.cancelled() => false,
            };
            if !open {
                // Refuse new records, then drain what is queued.
                writer.journal.stop_queue();
                writer.drain(&mut batch).await;
                writer.close().await;
                return;
            }
            continue;
        }
        // Under load, wait a moment for more records: one transaction per
        // thousand or so records costs far less than one per handful. A
        // lone record waits only this long.
        if writer.journal.queued_len() < BATCH {
            tokio::select! {
                () = tokio::time::sleep(LINGER) => {}
                () = writer.stop.cancelled() => {}
            }
        }
        writer.write_queued(&mut batch).await;
    }
}

/// The records the writer took from the queue, with their numbers; kept
/// between batches so that their memory is reused.
#[derive(Default)]
struct Batch {
    records: Vec<RequestRecord>,
    numbers: Vec<u64>,
}

struct Writer {
    store: Arc<dyn Store>,
    stats: Arc<RecorderStats>,
    stop: CancellationToken,
    journal: Arc<Journal>,
    /// The queue's memory bound, which bounds what is read back from the
    /// journal at a time too.
    byte_limit: usize,
    /// A batch was given up on (the gateway stopping while the database
    /// failed): from then on the journal is told nothing more is
    /// committed, so that it keeps those records for the next start.
    gave_up: AtomicBool,
}

impl Writer {
    /// Takes what is queued and writes it, `BATCH` records per
    /// transaction, telling the journal after each.
    async fn write_queued(&self, batch: &mut Batch) {
        self.journal
            .take_queued(&mut batch.records, &mut batch.numbers);
        let mut start = 0;
        while start < batch.records.len() {
            let end = (start + BATCH).min(batch.records.len());
            let chunk = &batch.records[start..end];
            let size: usize = chunk.iter().map(footprint).sum();
            let written = write_batch(self.store.as_ref(), chunk, &self.stats, &self.stop).await;
            self.journal.written(size);
            if !written {
                self.gave_up.store(true, Ordering::Relaxed);
            } else if !self.gave_up.load(Ordering::Relaxed) {
                self.journal.committed(batch.numbers[end - 1]);
                self.drain_overflow().await;
            }
            start = end;
        }
        batch.records.clear();
        batch.numbers.clear();
    }

    /// Writes everything queued, until the queue stays empty.
    async fn drain(&self, batch: &mut Batch) {
        while self.journal.queued_len() > 0 {
            self.write_queued(batch).await;
        }
    }

    /// Writes the records the queue could not take, from the journal,
    /// once what was queued before them is written.
    async fn drain_overflow(&self) {
        while !self.gave_up.load(Ordering::Relaxed) && self.journal.has_overflow() {
            // Bounded in memory as the queue is.
            let spilled = self.journal.read_overflow(BATCH, self.byte_limit / 4);
            let Some(last) = spilled.last().map(|(number, _)| *number) else {
                return;
            };
            let records: Vec<RequestRecord> =
                spilled.into_iter().map(|(_, record)| record).collect();
            if !write_batch(self.store.as_ref(), &records, &self.stats, &self.stop).await {
                self.gave_up.store(true, Ordering::Relaxed);
                return;
            }
            self.journal.overflow_written(last);
        }
    }

    /// Writes what spilled, then lets the journal go.
    async fn close(&self) {
        self.drain_overflow().await;
        let lost = self.journal.close();
        if lost > 0 {
            self.stats.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            tracing::error!(
                records = lost,
                "request records in the spill file not written at shutdown: the database kept failing"
            );
        }
    }
}

/// Writes each record on its own (a few tries each); a record the database
/// still refuses while it takes others is counted as dropped and logged
/// with its request id. Returns false, counting nothing as dropped, when
/// it took none of several: then the database is failing, not a record.
async fn write_one_by_one(
    store: &dyn Store,
    batch: &[RequestRecord],
    stats: &RecorderStats,
) -> bool {
    let mut refused = Vec::new();
    let mut taken = 0;
    for record in batch {
        // Three refused and none taken: the database is failing, not these
        // records (and each refusal costs three tries).
        if taken == 0 && refused.len() >= 3 {
            return false;
        }
        let mut written = false;
        for _ in 0..3 {
            match store.insert_records(std::slice::from_ref(record)).await {
                Ok(()) => {
                    written = true;
                    break;
                }
                Err(_) => {
                    stats.write_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if written {
            taken += 1;
            stats.written.fetch_add(1, Ordering::Relaxed);
        } else {
            refused.push(record);
        }
    }
    if taken == 0 && batch.len() > 1 {
        return false;
    }
    if taken > 0 {
        // The database took later records: those it refused before may
        // have met it while it was coming back. One more try each.
        let mut still = Vec::new();
        for record in refused {
            if store
                .insert_records(std::slice::from_ref(record))
                .await
                .is_ok()
            {
                stats.written.fetch_add(1, Ordering::Relaxed);
            } else {
                still.push(record);
            }
        }
        refused = still;
    }
    for record in refused {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::error!(request_id = %record.request_id, "the database refuses this request record; it is dropped");
    }
    true
}

/// Writes one batch, retrying with backoff until it succeeds. Once the
/// gateway is stopping, gives up after a few attempts and reports how many
/// records were lost (they stay in the journal, when there is one).
/// Returns whether the batch was written.
async fn write_batch(
    store: &dyn Store,
    batch: &[RequestRecord],
    stats: &RecorderStats,
    stop: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match store.insert_records(batch).await {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return true;
            }
            Err(error) => {
                stats.write_failures.fetch_add(1, Ordering::Relaxed);
                if stop.is_cancelled() && attempts >= 5 {
                    stats
                        .dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::error!(%error, records = batch.len(), "request records not written at shutdown: the database kept failing");
                    return false;
                }
                tracing::warn!(%error, records = batch.len(), attempt = attempts, "writing request records failed; retrying");
                // A database that answers but keeps refusing the batch may
                // be refusing one record of it: write them one by one, so
                // that one bad record cannot hold up every other.
                if attempts >= 3
                    && store.ping().await.is_ok()
                    && write_one_by_one(store, batch, stats).await
                {
                    return true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::journal::tests_support::record;
    use crate::{LogPage, LogQuery, SqliteStore, StoreError, StoreFuture, UsageQuery, UsageRow};

    /// A burst of 10,000 records into a queue of 64: most spill to the
    /// journal, and the writer still writes every one while running.
    #[tokio::test]
    async fn a_burst_larger_than_the_queue_spills_and_is_written_while_running() {
        let directory = std::env::temp_dir().join(format!(
            "switchboard-spill-{}-{}",
            std::process::id(),
            crate::journal::tests_support::unique()
        ));
        let store = Arc::new(SqliteStore::open_memory().await.unwrap());
        let (journal, _) = Journal::open(&directory, store.as_ref()).await.unwrap();
        let journal = Arc::new(journal);
        let (recorder, writer) = RecordWriter::start_with(store.clone(), 64, Some(journal.clone()));
        // No await in between: the writer cannot run until the burst is over.
        for index in 0..10_000 {
            recorder.record(record(index));
        }
        let stats = recorder.stats().clone();
        assert!(stats.spilled.load(Ordering::Relaxed) > 9_000);
        // Written while the gateway still runs, not at the next start.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while stats.written.load(Ordering::Relaxed) < 10_000 {
            assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!journal.has_overflow());
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        let rows = store.recent_records(20_000).await.unwrap();
        assert_eq!(rows.len(), 10_000);
        let ids: std::collections::HashSet<&str> =
            rows.iter().map(|row| row.request_id.as_str()).collect();
        assert_eq!(ids.len(), 10_000, "each record exactly once");
        drop(recorder);
        writer
            .finish(Duration::from_secs(10), Duration::from_secs(10))
            .await;
        // A clean end leaves no journal to replay.
        let left: Vec<_> = std::fs::read_dir(&directory)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".bin"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        drop(journal);
        let _ = std::fs::remove_dir_all(&directory);
    }

    /// Without a journal, a spill file keeps what a full queue refuses:
    /// a burst of 10,000 records into a queue of 64 loses nothing, only the
    /// refused records are written to the file (none ahead), and a clean
    /// end removes its directory.
    #[tokio::test]
    async fn without_a_journal_a_burst_spills_to_a_private_file() {
        let store = Arc::new(SqliteStore::open_memory().await.unwrap());
        let spill = Arc::new(Journal::spill());
        assert!(!spill.is_write_ahead());
        let (recorder, writer) = RecordWriter::start_with(store.clone(), 64, Some(spill.clone()));
        let directory = spill.directory.clone();
        assert!(!directory.exists(), "created only when something spills");
        for index in 0..10_000 {
            recorder.record(record(index));
        }
        let stats = recorder.stats().clone();
        let spilled = stats.spilled.load(Ordering::Relaxed);
        assert!(spilled > 9_000, "{spilled}");
        let lines: usize = std::fs::read_dir(&directory)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".bin"))
            .map(|entry| {
                crate::frame::records(&std::fs::read(entry.path()).unwrap())
                    .0
                    .len()
            })
            .sum();
        assert_eq!(
            lines as u64, spilled,
            "only the refused records are in the file"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while stats.written.load(Ordering::Relaxed) < 10_000 {
            assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        let rows = store.recent_records(20_000).await.unwrap();
        let ids: std::collections::HashSet<&str> =
            rows.iter().map(|row| row.request_id.as_str()).collect();
        assert_eq!((rows.len(), ids.len()), (10_000, 10_000));
        drop(recorder);
        writer
            .finish(Duration::from_secs(10), Duration::from_secs(10))
            .await;
        assert!(!directory.exists(), "a clean end removes the spill file");

        // A directory already at its place is refused, not used: what the
        // queue cannot take is then counted as dropped.
        let spill = Arc::new(Journal::spill());
        std::fs::create_dir(&spill.directory).unwrap();
        let (recorder, writer) = RecordWriter::start_with(store.clone(), 16, Some(spill.clone()));
        for index in 0..100 {
            recorder.record(record(20_000 + index));
        }
        let stats = recorder.stats().clone();
        assert!(stats.dropped.load(Ordering::Relaxed) > 0);
        assert_eq!(std::fs::read_dir(&spill.directory).unwrap().count(), 0);
        drop(recorder);
        writer
            .finish(Duration::from_secs(10), Duration::from_secs(10))
            .await;
        std::fs::remove_dir(&spill.directory).unwrap();
    }

    /// Records with large bodies fill the queue's memory bound long before
    /// its count: the rest spill to the journal (and are read back a few
    /// at a time), and every one is still written, once; without a
    /// journal, those beyond the bound are counted as dropped.
    #[tokio::test]
    async fn large_records_spill_at_the_memory_bound() {
        let with_body = |index: usize| {
            let mut record = record(index);
            record.bodies = Some(switchboard_core::Bodies {
                request: "q".repeat(40_000),
                response: Some(format!("answer {index}")),
            });
            record
        };
        let directory = std::env::temp_dir().join(format!(
            "switchboard-bytes-{}-{}",
            std::process::id(),
            crate::journal::tests_support::unique()
        ));
        let store = Arc::new(SqliteStore::open_memory().await.unwrap());
        let (journal, _) = Journal::open(&directory, store.as_ref()).await.unwrap();
        let journal = Arc::new(journal);
        let (recorder, writer) =
            RecordWriter::start_bounded(store.clone(), 10_000, 200_000, Some(journal.clone()));
        for index in 0..100 {
            recorder.record(with_body(index));
        }
        let stats = recorder.stats().clone();
        let spilled = stats.spilled.load(Ordering::Relaxed);
        assert!((90..100).contains(&spilled), "{spilled} of 100 spilled");
        assert!(recorder.held_bytes() <= 200_000 + footprint(&with_body(0)));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while stats.written.load(Ordering::Relaxed) < 100 {
            assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(recorder.held_bytes(), 0);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        let rows = store.recent_records(1_000).await.unwrap();
        assert_eq!(rows.len(), 100);
        let bodies = store.record_bodies("r99").await.unwrap();
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].1.response.as_deref(), Some("answer 99"));
        drop(recorder);
        writer
            .finish(Duration::from_secs(10), Duration::from_secs(10))
            .await;
        drop(journal);
        let _ = std::fs::remove_dir_all(&directory);

        let store = Arc::new(SqliteStore::open_memory().await.unwrap());
        let (recorder, writer) = RecordWriter::start_bounded(store.clone(), 10_000, 200_000, None);
        for index in 0..100 {
            recorder.record(with_body(index));
        }
        let stats = recorder.stats().clone();
        let dropped = stats.dropped.load(Ordering::Relaxed);
        assert!((90..100).contains(&dropped), "{dropped} of 100 dropped");
        drop(recorder);
        writer
            .finish(Duration::from_secs(10), Duration::from_secs(10))
            .await;
        assert_eq!(stats.written.load(Ordering::Relaxed), 100 - dropped);
    }

    #[tokio::test]
    async fn every_queued_record_is_written_by_shutdown() {
        let store = Arc::new(SqliteStore::open_memory().await.unwrap());
        let (recorder, writer) = RecordWriter::start(store.clone(), 10_000);
        for index in 0..2_000 {
            recorder.record(record(index));
        }
        // Every handle gone: the writer ends by itself once the queue is empty.
        let stats = recorder.stats().clone();
        drop(recorder);
        writer
            .finish(Duration::from_secs(10), Duration::from_secs(10))
            .await;
        assert_eq!(stats.written.load(Ordering::Relaxed), 2_000);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(store.recent_records(5_000).await.unwrap().len(), 2_000);
    }

    /// A store that fails its first `failures_left` writes, as a locked or
    /// briefly unavailable database would, and refuses any batch holding
    /// the record `refused` (if any), as a database rejecting one value
    /// would.
    struct Fake {
        failures_left: Mutex<u32>,
        refused: Option<&'static str>,
        rows: Mutex<Vec<RequestRecord>>,
        /// Whether `ping` fails too (a database that is down, not one
        /// refusing a record).
        down: bool,
    }

    impl Fake {
        fn new(failures_left: u32, refused: Option<&'static str>) -> Arc<Fake> {
            Arc::new(Fake {
                failures_left: Mutex::new(failures_left),
                refused,
                rows: Mutex::new(Vec::new()),
                down: false,
            })
        }
    }

    impl Store for Fake {
        fn held_records<'a>(
            &'a self,
            _records: &'a [RequestRecord],
        ) -> StoreFuture<'a, Vec<(String, i64)>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn insert_records<'a>(&'a self, records: &'a [RequestRecord]) -> StoreFuture<'a, ()> {
            Box::pin(async move {
                let mut failures = self.failures_left.lock().unwrap();
                if *failures > 0 {
                    *failures -= 1;
                    return Err(StoreError::Query("database is locked".into()));
                }
                if let Some(refused) = self.refused
                    && records.iter().any(|record| record.request_id == refused)
                {
                    return Err(StoreError::Query("invalid byte sequence".into()));
                }
                self.rows.lock().unwrap().extend_from_slice(records);
                Ok(())
            })
        }
        fn recent_records(&self, _limit: u32) -> StoreFuture<'_, Vec<RequestRecord>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn log_page<'a>(&'a self, _query: &'a LogQuery) -> StoreFuture<'a, LogPage> {
            Box::pin(async { Ok(crate::log::page_of(Vec::new(), 0)) })
        }
        fn usage(&self, _query: UsageQuery) -> StoreFuture<'_, Vec<UsageRow>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn prune_records(&self, _before_ms: i64, _limit: u32) -> StoreFuture<'_, u64> {
            Box::pin(async { Ok(0) })
        }
        fn ping(&self) -> StoreFuture<'_, ()> {
            let down = self.down;
            Box::pin(async move {
                if down {
                    Err(StoreError::Query("connection refused".into()))
                } else {
                    Ok(())
                }
            })
        }
    }

    /// At shutdown, a batch the failing database never took is given up
    /// on; a later batch it does take must not let the journal delete the
    /// records of the first: the next start replays every one.
    #[tokio::test]
    async fn a_batch_given_up_at_shutdown_stays_in_the_journal() {
        let directory = std::env::temp_dir().join(format!(
            "switchboard-gave-up-{}-{}",
            std::process::id(),
            crate::journal::tests_support::unique()
        ));
        let replay_store = SqliteStore::open_memory().await.unwrap();
        let (journal, _) = Journal::open(&directory, &replay_store).await.unwrap();
        let journal = Arc::new(journal);
        let store = Arc::new(Fake {
            failures_left: Mutex::new(5),
            refused: None,
            rows: Mutex::new(Vec::new()),
            down: true,
        });
        let (recorder, writer) =
            RecordWriter::start_with(store.clone(), 10_000, Some(journal.clone()));
        for index in 0..3_000 {
            recorder.record(record(index));
        }
        writer
            .finish(Duration::ZERO, Duration::from_secs(600))
            .await;
        // The first 2,048 were given up on, the other 952 written.
        assert_eq!(store.rows.lock().unwrap().len(), 3_000 - BATCH);
        drop(recorder);
        drop(journal);
        let (journal, recovered) = Journal::open(&directory, &replay_store).await.unwrap();
        assert_eq!(recovered, 3_000, "every record is still in the journal");
        journal.close();
        drop(journal);
        let _ = std::fs::remove_dir_all(&directory);
    }

    /// A database that answers but takes none of a batch, record by record
    /// either, is failing (a full disk): nothing is counted as dropped, and
    /// the batch is written once it takes records again.
    #[tokio::test(start_paused = true)]
    async fn a_database_refusing_every_record_is_retried_not_dropped() {
        let store = Fake::new(40, None);
        let (recorder, writer) = RecordWriter::start(store.clone(), 100);
        for index in 0..50 {
            recorder.record(record(index));
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        writer.finish(Duration::ZERO, Duration::from_secs(10)).await;
        assert_eq!(store.rows.lock().unwrap().len(), 50);
        assert_eq!(recorder.stats().dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_batches_are_retried_not_dropped() {
        let store = Fake::new(3, None);
        let (recorder, writer) = RecordWriter::start(store.clone(), 100);
        for index in 0..50 {
            recorder.record(record(index));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        writer.finish(Duration::ZERO, Duration::from_secs(10)).await;
        assert_eq!(store.rows.lock().unwrap().len(), 50);
        assert_eq!(recorder.stats().write_failures.load(Ordering::Relaxed), 3);
        assert_eq!(recorder.stats().dropped.load(Ordering::Relaxed), 0);
    }

    /// A spill file is removed at shutdown whatever it holds; the records
    /// in it a failing database never took are counted as dropped, and a
    /// record that comes after the close is dropped, not spilled.
    #[tokio::test(start_paused = true)]
    async fn a_spill_file_left_unwritten_at_shutdown_is_counted_and_removed() {
        let store = Fake::new(u32::MAX, None);
        let spill = Arc::new(Journal::spill());
        let (recorder, writer) = RecordWriter::start_with(store.clone(), 16, Some(spill.clone()));
        for index in 0..100 {
            recorder.record(record(index));
        }
        let stats = recorder.stats().clone();
        let spilled = stats.spilled.load(Ordering::Relaxed);
        assert!(spilled >= 80, "{spilled}");
        assert!(spill.directory.exists());
        writer.finish(Duration::ZERO, Duration::from_secs(60)).await;
        assert!(!spill.directory.exists());
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 100);
        recorder.record(record(100));
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 101);
        assert!(!spill.directory.exists());
    }

    #[tokio::test(start_paused = true)]
    async fn one_record_the_database_refuses_does_not_hold_up_the_others() {
        let store = Fake::new(0, Some("r7"));
        let (recorder, writer) = RecordWriter::start(store.clone(), 100);
        for index in 0..20 {
            recorder.record(record(index));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        // Written while running, not only at shutdown.
        assert_eq!(store.rows.lock().unwrap().len(), 19);
        for index in 20..30 {
            recorder.record(record(index));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(store.rows.lock().unwrap().len(), 29);
        assert_eq!(recorder.stats().dropped.load(Ordering::Relaxed), 1);
        writer.finish(Duration::ZERO, Duration::from_secs(10)).await;
    }

    #[tokio::test]
    async fn a_full_queue_counts_what_it_drops() {
        // A store that never answers keeps the queue full.
        struct Stuck;
        impl Store for Stuck {
            fn held_records<'a>(
                &'a self,
                _records: &'a [RequestRecord],
            ) -> StoreFuture<'a, Vec<(String, i64)>> {
                Box::pin(async { Ok(Vec::new()) })
            }

            fn insert_records<'a>(&'a self, _records: &'a [RequestRecord]) -> StoreFuture<'a, ()> {
                Box::pin(std::future::pending())
            }
            fn recent_records(&self, _limit: u32) -> StoreFuture<'_, Vec<RequestRecord>> {
                Box::pin(async { Ok(Vec::new()) })
            }
            fn log_page<'a>(&'a self, _query: &'a LogQuery) -> StoreFuture<'a, LogPage> {
                Box::pin(async { Ok(crate::log::page_of(Vec::new(), 0)) })
            }
            fn usage(&self, _query: UsageQuery) -> StoreFuture<'_, Vec<UsageRow>> {
                Box::pin(async { Ok(Vec::new()) })
            }
            fn prune_records(&self, _before_ms: i64, _limit: u32) -> StoreFuture<'_, u64> {
                Box::pin(async { Ok(0) })
            }
            fn ping(&self) -> StoreFuture<'_, ()> {
                Box::pin(async { Ok(()) })
            }
        }
        let (recorder, _writer) = RecordWriter::start(Arc::new(Stuck), 16);
        for index in 0..100 {
            recorder.record(record(index));
        }
        let dropped = recorder.stats().dropped.load(Ordering::Relaxed);
        assert!((68..=84).contains(&dropped), "dropped {dropped}");
    }
}
