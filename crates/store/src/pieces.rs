//! A batch of request records encoded in pieces, so that the requests
//! served on the same runtime thread never wait for a whole batch.
//!
//! A batch (up to 2,048 records) takes a millisecond or two to encode
//! (SQLite's values, PostgreSQL's `COPY` text); in one go on a runtime
//! thread, it would hold every request that thread serves for that long,
//! which shows in the tail at high load. `each` yields to the runtime
//! between pieces. (The SQLite writer's own thread is left to the kernel's
//! scheduler: pausing it between statements made each wait of a serving
//! thread sharing its core shorter but did not shorten the longest, see
//! BENCHMARKS.md.)

/// Records encoded between two yields to the runtime: a few tenths of a
/// millisecond of work (more when the log keeps bodies, which are copied
/// whole).
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
}
