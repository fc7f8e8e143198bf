//! One exponential backoff for every retry loop: the consumer after a failed
//! fetch, the outbox relay after a failed round, the redelivery delay of a
//! failed event, conflict retries and the benchmarks' contention retries.

use std::time::Duration;

/// `base` doubling with each attempt, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The pause before retry `attempt` (1 for the first): `base`, then
    /// twice that, and so on up to `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// [`Backoff::delay`] plus a random part of up to as much again, so that
    /// contenders that failed together do not retry together.
    pub fn jittered(&self, attempt: u32) -> Duration {
        let delay = self.delay(attempt);
        delay.saturating_add(delay.mul_f64(rand::random::<f64>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_base_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ms: Vec<u128> = (0..=9).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(
            ms,
            [100, 100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
        );
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
        let huge = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(huge.delay(40), Duration::MAX, "saturates, never overflows");
    }

    #[test]
    fn jitter_adds_at_most_the_delay_again() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        for attempt in 1..10 {
            let d = b.jittered(attempt);
            assert!(d >= b.delay(attempt) && d <= b.delay(attempt) * 2, "{d:?}");
        }
    }
}
