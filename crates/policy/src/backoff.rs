//! Delays between retries: exponential backoff with full jitter, never
//! shorter than what the upstream asked for (`Retry-After`), and never past
//! the request's deadline.

use std::time::Duration;

/// The delay before retry number `retry` (1 for the first retry).
/// `random` is any uniformly distributed value; the delay is drawn below
/// `min(max, base * 2^(retry-1))`.
pub fn retry_delay(
    retry: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    random: u64,
) -> Duration {
    let exponent = retry.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    let jittered = ceiling.mul_f64(fraction);
    jittered.max(retry_after.unwrap_or(Duration::ZERO))
}

/// Whether a retry after `delay` still fits in the `remaining` budget.
pub fn fits(delay: Duration, remaining: Duration) -> bool {
    delay < remaining
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    #[test]
    fn delays_stay_under_an_exponential_ceiling() {
        for retry in 1..8 {
            let ceiling = (BASE * 2u32.pow(retry - 1)).min(MAX);
            for random in [0, u64::MAX / 3, u64::MAX / 2, u64::MAX] {
                assert!(retry_delay(retry, BASE, MAX, None, random) <= ceiling);
            }
        }
        assert_eq!(retry_delay(1, BASE, MAX, None, 0), Duration::ZERO);
        assert!(retry_delay(3, BASE, MAX, None, u64::MAX) > Duration::from_millis(390));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let asked = Duration::from_secs(3);
        assert_eq!(retry_delay(1, BASE, MAX, Some(asked), 0), asked);
    }

    #[test]
    fn huge_retry_counts_do_not_overflow() {
        assert!(retry_delay(u32::MAX, BASE, MAX, None, u64::MAX) <= MAX);
    }
}
