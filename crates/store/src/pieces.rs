//! A batch of request records written in pieces, so that the requests
//! served beside the writer never wait for a whole batch.
//!
//! A batch (up to 2,048 records) takes milliseconds to encode and to
//! insert. Encoded in one go on a runtime thread, it would hold every
//! request that thread serves for that long. Inserted in one go by the
//! SQLite writer's thread on a core that a serving thread shares (one core
//! for the whole process, say), it would hold that thread off too: Linux's
//! scheduler lets a running thread finish its slice (over a millisecond)
//! before a thread woken meanwhile runs, unless the woken one has had less
//! than its share of the core, which a busy serving thread never has. So
//! the runtime side yields between pieces (`each`), and the writer's
//! thread sleeps for a moment once it has run for `RUN` (`Pacer`, which
//! its caller steps between statements of a few tenths of a millisecond):
//! a serving thread woken meanwhile waits about half a millisecond at
//! most, not the writer's whole slice (`bench/sched-waits.sh`).

use std::time::{Duration, Instant};

/// Records encoded between two yields to the runtime: a few tenths of a
/// millisecond of work at most.
pub(crate) const PIECE: usize = 128;

/// Applies `work` to each of `items`, yielding to the runtime after each
/// `PIECE` of them (not after the last).
pub(crate) async fn each<T>(items: &[T], mut work: impl FnMut(&T)) {
    let mut pieces = items.chunks(PIECE).peekable();
    while let Some(piece) = pieces.next() {
        piece.iter().for_each(&mut work);
        if pieces.peek().is_some() {
            tokio::task::yield_now().await;
        }
    }
}

/// How long a writer thread runs before it pauses.
const RUN: Duration = Duration::from_micros(200);

/// How long it pauses: any sleep takes it off the core, which is the
/// point (a yield is not enough: the scheduler may hand the core straight
/// back to a thread that has had less of it); the kernel's timer slack
/// (50 µs by default) stretches it.
const PAUSE: Duration = Duration::from_micros(10);

/// Paces a thread of its own: `step` between two pieces of its work
/// pauses once `RUN` has passed since the last pause.
pub(crate) struct Pacer {
    since: Instant,
    /// Pauses made, for tests.
    pub(crate) pauses: u64,
}

impl Pacer {
    pub(crate) fn new() -> Pacer {
        Pacer {
            since: Instant::now(),
            pauses: 0,
        }
    }

    pub(crate) fn step(&mut self) {
        if self.since.elapsed() >= RUN {
            std::thread::sleep(PAUSE);
            self.pauses += 1;
            self.since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// On a one-thread runtime, another task runs between two pieces and
    /// never within one.
    #[tokio::test(flavor = "current_thread")]
    async fn other_tasks_run_between_pieces() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        let items: Vec<usize> = (0..PIECE * 3 + 5).collect();
        let mut seen = Vec::new();
        each(&items, |_| seen.push(ticks.load(Ordering::Relaxed))).await;
        ticker.abort();
        assert_eq!(seen.len(), items.len());
        for piece in seen.chunks(PIECE) {
            assert!(
                piece.iter().all(|&tick| tick == piece[0]),
                "ran within a piece"
            );
        }
        let firsts: Vec<usize> = seen.chunks(PIECE).map(|piece| piece[0]).collect();
        assert!(
            firsts.windows(2).all(|pair| pair[1] > pair[0]),
            "did not run between pieces: {firsts:?}"
        );
    }

    #[test]
    fn a_pacer_pauses_only_once_it_has_run_long_enough() {
        let mut pacer = Pacer::new();
        std::thread::sleep(RUN + RUN / 2);
        pacer.step();
        assert_eq!(pacer.pauses, 1, "ran for longer than RUN without a pause");
        // A thousand quick steps take far less than RUN each.
        for _ in 0..1000 {
            pacer.step();
        }
        assert!(pacer.pauses < 100, "paused {} times", pacer.pauses);
    }
}
