//! What the gateway knows about each deployment's health, from live
//! traffic alone: requests in flight, consecutive failures, and a circuit
//! breaker.
//!
//! The circuit opens after `failures_to_open` consecutive failures, or at
//! once on a rate limit (for the upstream's `Retry-After`, or a short
//! default), so a 429 storm on one account moves traffic to the others
//! instead of retrying into it. After the cooldown, one probe request is
//! let through (half-open): its success closes the circuit, its failure
//! opens it again. Time is passed in, so every transition is testable
//! without waiting.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a rate-limited deployment rests when the upstream did not say.
const DEFAULT_RATE_LIMIT_REST: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSettings {
    pub failures_to_open: u32,
    pub cooldown: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            failures_to_open: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// A failure that says something about the deployment (not about the
/// client's request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connection,
    Timeout,
    ServerError,
    InvalidResponse,
    RateLimited { retry_after: Option<Duration> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// The cooldown is over and one probe request is in flight since then.
    /// A probe whose outcome never arrives (its client left) stops
    /// blocking new probes after another cooldown.
    Probing {
        since: Instant,
    },
}

#[derive(Debug)]
struct Circuit {
    state: State,
    consecutive_failures: u32,
}

/// One deployment's health.
#[derive(Debug)]
pub struct Health {
    settings: CircuitSettings,
    circuit: Mutex<Circuit>,
    in_flight: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Decaying average of answer latency (time to first token for
    /// streams), in microseconds; 0 until the first success.
    latency_micros: AtomicU64,
    /// Share of the upstream's rate limit still available, in millionths;
    /// `u32::MAX` until an upstream reports one.
    headroom_millionths: AtomicU32,
}

/// Weight of the newest sample in the latency average.
const LATENCY_SMOOTHING: f64 = 0.2;

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a> {
    health: &'a Health,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.health.leave();
    }
}

/// A deployment's health as the health endpoint shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSnapshot {
    /// `closed` (serving), `open` (resting) or `half_open` (probing).
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// Time left before an open circuit admits a probe.
    pub retry_in: Option<Duration>,
    pub in_flight: u32,
    pub requests: u64,
    pub failures: u64,
    pub latency: Option<Duration>,
    /// Share of the upstream's rate limit left, from its last answer.
    pub headroom: Option<f64>,
}

impl Health {
    pub fn new(settings: CircuitSettings) -> Health {
        Health {
            settings,
            circuit: Mutex::new(Circuit {
                state: State::Closed,
                consecutive_failures: 0,
            }),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency_micros: AtomicU64::new(0),
            headroom_millionths: AtomicU32::new(u32::MAX),
        }
    }

    /// Folds one answer's latency into the decaying average.
    pub fn record_latency(&self, latency: Duration) {
        let sample = latency.as_micros().clamp(1, u128::from(u64::MAX)) as u64;
        let previous = self.latency_micros.load(Ordering::Relaxed);
        let next = if previous == 0 {
            sample
        } else {
            (previous as f64 * (1.0 - LATENCY_SMOOTHING) + sample as f64 * LATENCY_SMOOTHING) as u64
        };
        // A lost update under a race only drops one sample of an average.
        self.latency_micros.store(next.max(1), Ordering::Relaxed);
    }

    /// The decaying average latency; `None` before the first answer.
    pub fn latency(&self) -> Option<Duration> {
        match self.latency_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Notes the share (0 to 1) of its rate limit the upstream reported left.
    pub fn record_headroom(&self, share: f64) {
        let millionths = (share.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        self.headroom_millionths
            .store(millionths, Ordering::Relaxed);
    }

    pub fn headroom(&self) -> Option<f64> {
        match self.headroom_millionths.load(Ordering::Relaxed) {
            u32::MAX => None,
            millionths => Some(f64::from(millionths) / 1_000_000.0),
        }
    }

    pub fn settings(&self) -> CircuitSettings {
        self.settings
    }

    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The circuit lets ordinary traffic through.
    pub fn is_closed(&self, _now: Instant) -> bool {
        self.circuit().state == State::Closed
    }

    /// After the cooldown, admits exactly one probe request.
    /// (Probes sent by the gateway itself do not need this admission.)
    pub fn try_probe(&self, now: Instant) -> bool {
        let mut circuit = self.circuit();
        match circuit.state {
            State::Open { until } if now >= until => {
                circuit.state = State::Probing { since: now };
                true
            }
            State::Probing { since } if now >= since + self.settings.cooldown => {
                circuit.state = State::Probing { since: now };
                true
            }
            _ => false,
        }
    }

    /// Gives back a probe slot whose request was never sent, so the next
    /// request may probe at once.
    pub fn release_probe(&self, now: Instant) {
        let mut circuit = self.circuit();
        if matches!(circuit.state, State::Probing { .. }) {
            circuit.state = State::Open { until: now };
        }
    }

    /// The circuit is open or half-open.
    pub fn is_resting(&self) -> bool {
        self.circuit().state != State::Closed
    }

    /// Marks a request in flight without a guard (the caller calls
    /// `leave` exactly once), for requests that outlive a borrow.
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// When an open circuit will admit a probe.
    pub fn reopens_at(&self) -> Option<Instant> {
        match self.circuit().state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Marks a request as started; it counts as in flight until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.enter();
        InFlight { health: self }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn record_success(&self) {
        let mut circuit = self.circuit();
        circuit.consecutive_failures = 0;
        circuit.state = State::Closed;
    }

    pub fn record_failure(&self, failure: Failure, now: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut circuit = self.circuit();
        circuit.consecutive_failures = circuit.consecutive_failures.saturating_add(1);
        let rest = match failure {
            Failure::RateLimited { retry_after } => Some(
                retry_after
                    .unwrap_or(DEFAULT_RATE_LIMIT_REST)
                    .min(self.settings.cooldown.max(DEFAULT_RATE_LIMIT_REST)),
            ),
            _ if matches!(circuit.state, State::Probing { .. })
                || circuit.consecutive_failures >= self.settings.failures_to_open =>
            {
                Some(self.settings.cooldown)
            }
            _ => None,
        };
        if let Some(rest) = rest {
            circuit.state = State::Open { until: now + rest };
        }
    }

    pub fn snapshot(&self, now: Instant) -> HealthSnapshot {
        let circuit = self.circuit();
        let (state, retry_in) = match circuit.state {
            State::Closed => ("closed", None),
            State::Open { until } => ("open", Some(until.saturating_duration_since(now))),
            State::Probing { .. } => ("half_open", None),
        };
        HealthSnapshot {
            state,
            consecutive_failures: circuit.consecutive_failures,
            retry_in,
            in_flight: self.in_flight(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            latency: self.latency(),
            headroom: self.headroom(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(failures_to_open: u32) -> Health {
        Health::new(CircuitSettings {
            failures_to_open,
            cooldown: Duration::from_secs(30),
        })
    }

    #[test]
    fn the_circuit_opens_after_consecutive_failures_only() {
        let health = health(3);
        let now = Instant::now();
        health.record_failure(Failure::ServerError, now);
        health.record_failure(Failure::Timeout, now);
        health.record_success();
        health.record_failure(Failure::Connection, now);
        health.record_failure(Failure::Connection, now);
        assert!(
            health.is_closed(now),
            "a success in between resets the count"
        );
        health.record_failure(Failure::InvalidResponse, now);
        assert!(!health.is_closed(now));
        assert_eq!(health.snapshot(now).state, "open");
        assert_eq!(health.snapshot(now).retry_in, Some(Duration::from_secs(30)));
    }

    #[test]
    fn half_open_admits_one_probe_whose_result_decides() {
        let health = health(1);
        let start = Instant::now();
        health.record_failure(Failure::ServerError, start);
        assert!(!health.try_probe(start + Duration::from_secs(29)));
        let later = start + Duration::from_secs(30);
        assert!(health.try_probe(later));
        assert!(!health.try_probe(later), "only one probe at a time");
        assert_eq!(health.snapshot(later).state, "half_open");
        health.record_failure(Failure::ServerError, later);
        assert_eq!(health.reopens_at(), Some(later + Duration::from_secs(30)));
        let again = later + Duration::from_secs(30);
        assert!(health.try_probe(again));
        health.record_success();
        assert!(health.is_closed(again));
    }

    #[test]
    fn a_probe_that_never_reports_back_does_not_block_forever() {
        let health = health(1);
        let start = Instant::now();
        health.record_failure(Failure::ServerError, start);
        let probe_time = start + Duration::from_secs(30);
        assert!(health.try_probe(probe_time));
        assert!(!health.try_probe(probe_time + Duration::from_secs(29)));
        assert!(health.try_probe(probe_time + Duration::from_secs(30)));
    }

    #[test]
    fn a_rate_limit_rests_the_deployment_at_once() {
        let health = health(5);
        let now = Instant::now();
        health.record_failure(
            Failure::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
            },
            now,
        );
        assert_eq!(health.reopens_at(), Some(now + Duration::from_secs(7)));
        let other = self::health(5);
        other.record_failure(Failure::RateLimited { retry_after: None }, now);
        assert_eq!(other.reopens_at(), Some(now + DEFAULT_RATE_LIMIT_REST));
    }

    #[test]
    fn latency_is_a_decaying_average() {
        let health = health(5);
        assert_eq!(health.latency(), None);
        health.record_latency(Duration::from_millis(100));
        assert_eq!(health.latency(), Some(Duration::from_millis(100)));
        for _ in 0..50 {
            health.record_latency(Duration::from_millis(10));
        }
        let settled = health.latency().unwrap();
        assert!(settled < Duration::from_millis(11), "{settled:?}");
    }

    #[test]
    fn headroom_is_unknown_until_reported() {
        let health = health(5);
        assert_eq!(health.headroom(), None);
        health.record_headroom(0.25);
        assert_eq!(health.headroom(), Some(0.25));
        health.record_headroom(7.0);
        assert_eq!(health.headroom(), Some(1.0));
    }

    #[test]
    fn in_flight_counts_follow_the_guards() {
        let health = health(5);
        let first = health.start();
        let second = health.start();
        assert_eq!(health.in_flight(), 2);
        drop(first);
        assert_eq!(health.in_flight(), 1);
        drop(second);
        assert_eq!(health.snapshot(Instant::now()).requests, 2);
        assert_eq!(health.in_flight(), 0);
    }
}
