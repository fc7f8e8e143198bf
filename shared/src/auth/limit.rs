//! Per-caller rate limits: each customer (by its token's subject) may make
//! so many calls a second, with a burst; more are answered
//! RESOURCE_EXHAUSTED with a retry hint. Admins and services are not
//! limited: they are few and trusted, and the system's own admission
//! (`max_open_orders`) bounds the work they can queue.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{AuthConfig, Principal, Role};

/// Callers are forgotten after this many checks once they are quiet again.
const SWEEP_EVERY: u64 = 10_000;

pub struct Limits {
    customers: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("customers", &self.customers.is_some())
            .finish()
    }
}

impl Limits {
    /// The limits of `cfg` (`customer_rate_per_sec` 0: none).
    pub fn new(cfg: &AuthConfig) -> Self {
        let customers = NonZeroU32::new(cfg.customer_rate_per_sec).map(|rate| {
            let burst = NonZeroU32::new(cfg.customer_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            customers,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one call from the caller's allowance, or says when to retry.
    pub fn check(&self, caller: &Principal) -> Result<(), tonic::Status> {
        let (Some(limiter), Role::Customer) = (&self.customers, caller.role) else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter.check_key(&caller.subject).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!("auth_rate_limited_total").increment(1);
            let mut status = tonic::Status::resource_exhausted(format!(
                "too many calls from customer {:?}: retry in {} ms",
                caller.subject,
                wait.as_millis().max(1)
            ));
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            status
                .metadata_mut()
                .insert("grpc-retry-pushback-ms", ms.into());
            status
        })
    }
}
