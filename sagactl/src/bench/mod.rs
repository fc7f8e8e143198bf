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

/// The `p`th percentile (nearest rank) of a sorted sample of microseconds,
/// in milliseconds; `None` for an empty sample.
pub fn percentile_ms(sorted_micros: &[u32], p: f64) -> Option<f64> {
    let n = sorted_micros.len();
    if n == 0 {
        return None;
    }
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    Some(f64::from(sorted_micros[rank.clamp(1, n) - 1]) / 1000.0)
}

/// A figure in milliseconds, two decimals, or "n/a".
pub fn ms(figure: Option<f64>) -> String {
    figure.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.2}"))
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
        assert_eq!(super::percentile_ms(&sample, 50.0), Some(50.0));
        assert_eq!(super::percentile_ms(&sample, 99.0), Some(99.0));
        assert_eq!(super::percentile_ms(&sample, 100.0), Some(100.0));
        assert_eq!(super::percentile_ms(&sample, 0.0), Some(1.0));
        assert_eq!(super::percentile_ms(&[7000], 50.0), Some(7.0));
        assert_eq!(
            super::percentile_ms(&[], 99.0),
            None,
            "no sample, no figure"
        );
    }
}
