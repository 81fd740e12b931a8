//! Which serving thread the current one is. The gateway may serve on
//! several threads each running a runtime of its own (`server.scheduler =
//! "per-thread"`); a socket is then watched by the runtime of the thread
//! that made it (an HTTP/2 connection's task runs on it too), so the pool
//! hands a kept upstream connection back to a request on that same thread,
//! never to another's (whose readiness would have to cross threads to reach
//! it). Under a single runtime every thread is shard 0.

use std::cell::Cell;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as serving shard `index`.
pub fn enter(index: usize) {
    SHARD.with(|shard| shard.set(index));
}

/// The shard the calling thread serves (0 unless marked).
pub(crate) fn current() -> usize {
    SHARD.with(Cell::get)
}
