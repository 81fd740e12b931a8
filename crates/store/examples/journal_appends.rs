//! Times each record handed to the recorder with a write-ahead journal, as
//! the request path hands them (`Recorder::record`: the journal's append
//! and the queue), at a steady rate over several journal segments, while
//! the record writer commits them to an in-memory SQLite database on the
//! runtime's other thread. Prints how the hand-offs were spread and the
//! slowest ones: a segment made on the request path shows as a hand-off of
//! milliseconds each time one fills.
//!
//!   cargo run --release -p switchboard-store --example journal_appends -- [RECORDS] [RATE] [DIR]
//!
//! Defaults: 700,000 records at 25,000 per second (28 s; records of about
//! 200 bytes, so a 32 MiB segment fills every 6 s or so), in
//! `bench/run/journal-appends`, which must not exist: the run creates it
//! and removes it at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_core::{Endpoint, Outcome, RequestRecord, Usage};
use switchboard_store::journal::Journal;
use switchboard_store::{RecordWriter, SqliteStore, Store};

fn record(index: usize) -> RequestRecord {
    RequestRecord {
        request_id: format!("req_{index:032x}"),
        started_at_ms: 1_780_000_000_000 + index as i64,
        endpoint: Endpoint::ChatCompletions,
        model: "gpt-4o-mini".into(),
        deployment: Some("openai-primary".into()),
        served_model: Some("gpt-4o-mini-2024-07-18".into()),
        attempts: 1,
        attempt_details: Vec::new(),
        stream: false,
        status: 200,
        outcome: Outcome::Success,
        error_code: None,
        latency_ms: 412,
        ttft_ms: None,
        usage: Usage {
            input_tokens: Some(1_204),
            output_tokens: Some(87),
            ..Usage::default()
        },
        key_id: Some("key_0123456789abcdef".into()),
        team_id: Some("team_platform".into()),
        end_user: Some("user-4821".into()),
        cost_nanos: Some(232_800),
        cache_hit: false,
        metadata: Some(r#"{"feature":"summaries"}"#.into()),
        bodies: None,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let records: usize = args.next().map_or(700_000, |n| n.parse().expect("RECORDS"));
    let rate: f64 = args.next().map_or(25_000.0, |n| n.parse().expect("RATE"));
    let directory = std::path::PathBuf::from(
        args.next()
            .unwrap_or_else(|| "bench/run/journal-appends".to_owned()),
    );
    // Its own directory: one that exists (a real journal, say) is refused,
    // as the run removes what it made at the end.
    if directory.exists() {
        eprintln!(
            "{} exists: name a directory that does not, which the run creates and removes",
            directory.display()
        );
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let (recorder, writer, store) = runtime.block_on(async {
        let store = Arc::new(SqliteStore::open_memory().await.expect("a database"));
        let (journal, _) = Journal::open(&directory, store.as_ref())
            .await
            .expect("a journal");
        let (recorder, writer) =
            RecordWriter::start_with(store.clone(), 65_536, Some(Arc::new(journal)));
        (recorder, writer, store)
    });
    let records_made: Vec<RequestRecord> = (0..records).map(record).collect();
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut times = Vec::with_capacity(records);
    let start = Instant::now();
    for (index, record) in records_made.into_iter().enumerate() {
        let due = start + gap * index as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let began = Instant::now();
        recorder.record(record);
        times.push((began.elapsed(), began - start));
    }
    let elapsed = start.elapsed();
    drop(recorder);
    runtime.block_on(writer.finish(Duration::from_secs(30), Duration::from_secs(30)));
    let written = runtime
        .block_on(store.recent_records(1))
        .map(|rows| rows.len())
        .unwrap_or(0);
    let mut sorted: Vec<Duration> = times.iter().map(|(took, _)| *took).collect();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    let over = |limit: Duration| sorted.iter().filter(|took| **took >= limit).count();
    println!(
        "records: {records} in {:.1} s ({:.0}/s); written: {}",
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64(),
        if written > 0 { "yes" } else { "no" }
    );
    println!(
        "hand-off µs: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  p99.99 {:.1}  max {:.1}",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(0.999).as_secs_f64() * 1e6,
        at(0.9999).as_secs_f64() * 1e6,
        sorted[sorted.len() - 1].as_secs_f64() * 1e6
    );
    println!(
        "hand-offs of 100 µs or more: {}; of 1 ms or more: {}",
        over(Duration::from_micros(100)),
        over(Duration::from_millis(1))
    );
    times.sort_unstable_by_key(|(took, _)| std::cmp::Reverse(*took));
    println!("slowest (µs at s):");
    for (took, when) in times.iter().take(8) {
        println!(
            "  {:>9.1} at {:>6.3}",
            took.as_secs_f64() * 1e6,
            when.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&directory);
}
