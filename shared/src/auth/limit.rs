//! Per-caller rate limits: each caller (by its token's role and subject)
//! may make so many calls a second, with a burst; more are answered
//! RESOURCE_EXHAUSTED with a retry hint. Each role has its own rate:
//! customers 50/s by default; admins and services none by default (they are
//! few and trusted, and the system's admission bounds the work they can
//! queue), but they can be given one.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{AuthConfig, Principal, Role};

/// Callers are forgotten after this many checks once they are quiet again.
const SWEEP_EVERY: u64 = 10_000;

fn limiter(rate: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<String>> {
    NonZeroU32::new(rate).map(|rate| {
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
    })
}

pub struct Limits {
    customers: Option<DefaultKeyedRateLimiter<String>>,
    admins: Option<DefaultKeyedRateLimiter<String>>,
    services: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("customers", &self.customers.is_some())
            .field("admins", &self.admins.is_some())
            .field("services", &self.services.is_some())
            .finish()
    }
}

impl Limits {
    /// The limits of `cfg` (a rate of 0: none for that role).
    pub fn new(cfg: &AuthConfig) -> Self {
        Self {
            customers: limiter(cfg.customer_rate_per_sec, cfg.customer_burst),
            admins: limiter(cfg.admin_rate_per_sec, cfg.admin_burst),
            services: limiter(cfg.service_rate_per_sec, cfg.service_burst),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one call from the caller's allowance, or says when to retry.
    pub fn check(&self, caller: &Principal) -> Result<(), tonic::Status> {
        let limiter = match caller.role {
            Role::Customer => &self.customers,
            Role::Admin => &self.admins,
            Role::Service => &self.services,
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter.check_key(&caller.subject).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!("auth_rate_limited_total", "role" => caller.role.as_str())
                .increment(1);
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut status = tonic::Status::resource_exhausted(format!(
                "too many calls from {} {:?}: retry in {ms} ms",
                caller.role.as_str(),
                caller.subject
            ));
            status
                .metadata_mut()
                .insert("grpc-retry-pushback-ms", ms.into());
            status
        })
    }
}
