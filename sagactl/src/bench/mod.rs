//! Benchmarks that print figures (never timed assertions).
//!
//! - [`saga`]: end to end, the four services under a chosen load and mix.
//! - [`replay`]: replay into payment-svc, for events that apply and events
//!   already applied, beside the raw publish rate.
//! - [`reserve`]: the race lab. Ways to reserve stock under contention, each
//!   implemented for real against the same Postgres and Redis, run side by
//!   side on a hot SKU and on spread SKUs.

pub mod replay;
pub mod reserve;
pub mod saga;

use std::time::Duration;

/// Latency percentiles of a sample, in milliseconds.
pub fn percentile_ms(sorted_micros: &[u32], p: f64) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_micros.len() - 1) as f64).round() as usize;
    f64::from(sorted_micros[rank.min(sorted_micros.len() - 1)]) / 1000.0
}

/// Deletes the Redis keys matching `pattern` (a benchmark's own), on a
/// single Redis or a cluster.
pub async fn delete_keys(redis: &fred::clients::Pool, pattern: &str) -> anyhow::Result<()> {
    Ok(saga_shared::redis::delete_matching(redis, pattern).await?)
}

pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_pick_the_ranked_sample() {
        let sample: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(super::percentile_ms(&sample, 50.0), 51.0);
        assert_eq!(super::percentile_ms(&sample, 99.0), 99.0);
        assert_eq!(super::percentile_ms(&[], 99.0), 0.0);
    }
}
