//! The circuit breaker that picks the reservation path.
//!
//! Closed: reservations go through Redis. After `threshold` Redis failures
//! in a row it opens: reservations go through Postgres (`SELECT ... FOR
//! UPDATE`). It does not close on a request's success: the reconciler probes
//! Redis while it is open and, once Redis answers, rebuilds every counter
//! that may be stale before closing it (see `reconciler::recover`). A
//! breaker pinned open (configuration `reserve_path = "postgres"`) never
//! closes.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Where reservations go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Redis,
    Postgres,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Redis => "redis",
            Path::Postgres => "postgres",
        }
    }
}

#[derive(Debug)]
struct Inner {
    open: bool,
    failures: u32,
    opened_at: Option<(Instant, SystemTime)>,
    last_error: String,
}

#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
    threshold: u32,
    pinned: bool,
}

/// What `/readyz` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub path: Path,
    pub open_for: Option<Duration>,
    pub last_error: String,
    pub pinned: bool,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` failures in a row, or
    /// one pinned open.
    pub fn new(threshold: u32, pinned_open: bool) -> Self {
        let breaker = Self {
            inner: Mutex::new(Inner {
                open: false,
                failures: 0,
                opened_at: None,
                last_error: String::new(),
            }),
            threshold: threshold.max(1),
            pinned: pinned_open,
        };
        if pinned_open {
            breaker.open("reservations pinned to Postgres by configuration");
        } else {
            publish_path(Path::Redis);
        }
        breaker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("breaker lock poisoned")
    }

    pub fn path(&self) -> Path {
        if self.lock().open {
            Path::Postgres
        } else {
            Path::Redis
        }
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// A Redis call worked.
    pub fn success(&self) {
        let mut inner = self.lock();
        if !inner.open {
            inner.failures = 0;
        }
    }

    /// A Redis call failed; opens the breaker after `threshold` in a row.
    pub fn failure(&self, error: &str) {
        let opened = {
            let mut inner = self.lock();
            inner.failures += 1;
            inner.last_error = error.to_owned();
            !inner.open && inner.failures >= self.threshold
        };
        if opened {
            self.open(error);
        }
    }

    /// Opens the breaker now (Redis is known to be unusable).
    pub fn trip(&self, why: &str) {
        self.open(why);
    }

    fn open(&self, why: &str) {
        let mut inner = self.lock();
        if inner.open {
            return;
        }
        inner.open = true;
        inner.opened_at = Some((Instant::now(), SystemTime::now()));
        inner.last_error = why.to_owned();
        drop(inner);
        tracing::warn!(error = %why, "Redis breaker open: reservations go through Postgres");
        metrics::counter!("inventory_breaker_transitions_total", "to" => "open").increment(1);
        publish_path(Path::Postgres);
    }

    /// Closes the breaker (after the counters were rebuilt). A pinned
    /// breaker stays open.
    pub fn close(&self) {
        if self.pinned {
            return;
        }
        let mut inner = self.lock();
        if !inner.open {
            return;
        }
        let open_for = inner
            .opened_at
            .map(|(t, _)| t.elapsed())
            .unwrap_or_default();
        inner.open = false;
        inner.failures = 0;
        inner.opened_at = None;
        drop(inner);
        tracing::info!(
            open_for_ms = open_for.as_millis() as u64,
            "Redis breaker closed: counters rebuilt, reservations go through Redis"
        );
        metrics::counter!("inventory_breaker_transitions_total", "to" => "closed").increment(1);
        publish_path(Path::Redis);
    }

    pub fn status(&self) -> Status {
        let inner = self.lock();
        Status {
            path: if inner.open {
                Path::Postgres
            } else {
                Path::Redis
            },
            open_for: inner.opened_at.map(|(t, _)| t.elapsed()),
            last_error: inner.last_error.clone(),
            pinned: self.pinned,
        }
    }
}

fn publish_path(path: Path) {
    metrics::gauge!("inventory_reserve_path", "path" => "redis").set(if path == Path::Redis {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("inventory_reserve_path", "path" => "postgres")
        .set(if path == Path::Postgres { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_only_closes_when_told() {
        let b = Breaker::new(3, false);
        assert_eq!(b.path(), Path::Redis);
        b.failure("boom");
        b.failure("boom");
        b.success();
        b.failure("boom");
        b.failure("boom");
        assert_eq!(b.path(), Path::Redis, "a success resets the count");
        b.failure("boom");
        assert_eq!(b.path(), Path::Postgres);
        b.success();
        assert_eq!(
            b.path(),
            Path::Postgres,
            "a success alone does not close it"
        );
        assert!(b.status().open_for.is_some());
        b.close();
        assert_eq!(b.path(), Path::Redis);
        assert_eq!(b.status().open_for, None);
    }

    #[test]
    fn a_pinned_breaker_never_closes() {
        let b = Breaker::new(3, true);
        assert_eq!(b.path(), Path::Postgres);
        b.close();
        assert_eq!(b.path(), Path::Postgres);
        assert!(b.status().pinned);
    }
}
