//! A deployment's own capacity: requests and tokens per minute, counted in
//! fixed one-minute windows. A deployment at its limit is skipped until the
//! window turns, so the gateway spreads load before the upstream has to
//! answer 429.
//!
//! With a shared limiter (Redis) the counting is the limiter's, across
//! instances (`limits::ScopeKind::Deployment`), and this instance's windows
//! stay empty: what remains here is a hint, `mark_full_until`, so that a
//! deployment the limiter said is full is skipped without asking again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    requests: u64,
    tokens: u64,
}

#[derive(Debug)]
pub struct Capacity {
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
    window: Mutex<Window>,
    /// Known to be used up elsewhere (by a shared limiter) until then.
    full_until: Mutex<Option<Instant>>,
}

impl Capacity {
    pub fn new(requests_per_minute: Option<u64>, tokens_per_minute: Option<u64>) -> Capacity {
        Capacity {
            requests_per_minute,
            tokens_per_minute,
            window: Mutex::new(Window {
                started: None,
                requests: 0,
                tokens: 0,
            }),
            full_until: Mutex::new(None),
        }
    }

    /// Requests and tokens per minute.
    pub fn limits(&self) -> (Option<u64>, Option<u64>) {
        (self.requests_per_minute, self.tokens_per_minute)
    }

    fn current(&self, now: Instant) -> std::sync::MutexGuard<'_, Window> {
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if window
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= WINDOW)
        {
            *window = Window {
                started: Some(now),
                requests: 0,
                tokens: 0,
            };
        }
        window
    }

    /// Marks the capacity as used up until `until`, as a shared limiter
    /// that counts it across instances answered: `admits` and `try_take`
    /// say no until then.
    pub fn mark_full_until(&self, until: Instant) {
        let mut full_until = self
            .full_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *full_until = Some(full_until.map_or(until, |known| known.max(until)));
    }

    fn known_full(&self, now: Instant) -> bool {
        self.full_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|until| now < until)
    }

    /// Whether another request fits in this minute.
    pub fn admits(&self, now: Instant) -> bool {
        if self.requests_per_minute.is_none() && self.tokens_per_minute.is_none() {
            return true;
        }
        if self.known_full(now) {
            return false;
        }
        let window = self.current(now);
        self.requests_per_minute
            .is_none_or(|limit| window.requests < limit)
            && self
                .tokens_per_minute
                .is_none_or(|limit| window.tokens < limit)
    }

    pub fn record_request(&self, now: Instant) {
        if self.requests_per_minute.is_some() || self.tokens_per_minute.is_some() {
            self.current(now).requests += 1;
        }
    }

    /// Checks and counts a request in one step, so that concurrent requests
    /// cannot all pass a limit that has room for one of them.
    pub fn try_take(&self, now: Instant) -> bool {
        if self.requests_per_minute.is_none() && self.tokens_per_minute.is_none() {
            return true;
        }
        if self.known_full(now) {
            return false;
        }
        let mut window = self.current(now);
        let admitted = self
            .requests_per_minute
            .is_none_or(|limit| window.requests < limit)
            && self
                .tokens_per_minute
                .is_none_or(|limit| window.tokens < limit);
        if admitted {
            window.requests += 1;
        }
        admitted
    }

    pub fn record_tokens(&self, now: Instant, tokens: u64) {
        if self.tokens_per_minute.is_some() {
            let mut window = self.current(now);
            window.tokens = window.tokens.saturating_add(tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_minute_are_enforced_per_window() {
        let capacity = Capacity::new(Some(2), None);
        let start = Instant::now();
        assert!(capacity.admits(start));
        capacity.record_request(start);
        capacity.record_request(start);
        assert!(!capacity.admits(start + Duration::from_secs(59)));
        assert!(capacity.admits(start + Duration::from_secs(60)));
    }

    #[test]
    fn tokens_per_minute_count_reported_usage() {
        let capacity = Capacity::new(None, Some(1000));
        let start = Instant::now();
        capacity.record_tokens(start, 999);
        assert!(capacity.admits(start));
        capacity.record_tokens(start, 1);
        assert!(!capacity.admits(start));
    }

    #[test]
    fn try_take_never_admits_past_the_limit() {
        let capacity = std::sync::Arc::new(Capacity::new(Some(10), None));
        let now = Instant::now();
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let capacity = capacity.clone();
                    scope.spawn(move || (0..100).filter(|_| capacity.try_take(now)).count())
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .sum()
        });
        assert_eq!(admitted, 10);
    }

    #[test]
    fn a_capacity_marked_full_elsewhere_refuses_until_then() {
        let capacity = Capacity::new(Some(100), None);
        let now = Instant::now();
        capacity.mark_full_until(now + Duration::from_secs(10));
        capacity.mark_full_until(now + Duration::from_secs(5));
        assert!(!capacity.admits(now));
        assert!(!capacity.try_take(now + Duration::from_secs(9)));
        assert!(
            capacity.admits(now + Duration::from_secs(10)),
            "the later mark holds"
        );
        assert!(capacity.try_take(now + Duration::from_secs(10)));
        // Nothing is marked on a deployment without limits.
        let open = Capacity::new(None, None);
        open.mark_full_until(now + Duration::from_secs(10));
        assert!(open.admits(now));
    }

    #[test]
    fn no_limits_admit_everything() {
        let capacity = Capacity::new(None, None);
        let now = Instant::now();
        for _ in 0..10_000 {
            capacity.record_request(now);
        }
        assert!(capacity.admits(now));
    }
}
