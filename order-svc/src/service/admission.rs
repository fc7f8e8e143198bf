//! Admission: PlaceOrder refuses new orders while too many are open.
//!
//! An order is open from its placement until it is CONFIRMED or CANCELLED.
//! Every open order is work queued somewhere downstream (an outbox, a
//! stream, a participant's consumer), so when placements arrive faster than
//! the sagas end, the open orders grow without bound and every order waits
//! behind all of them: throughput falls and latency climbs to the deadline.
//! A bound on open orders keeps the queue, and so the latency of the orders
//! that are admitted, bounded; the others are refused at once with
//! RESOURCE_EXHAUSTED and a pushback hint, and nothing of them is stored.
//!
//! The count is the orders table's (every instance's orders, through the
//! partial index of open orders), read every `refresh`; between two reads an
//! instance adds the placements it commits and those still in flight. Within
//! one instance the bound is exact: a check and its reservation happen
//! under one lock. Several instances may together exceed it by what the
//! others place within one refresh, and a placement whose commit's outcome
//! is unknown (the connection lost during COMMIT) is not counted until the
//! next read. The first read happens before the service takes calls.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store;

/// Why an order was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many open orders: {open} open, the limit is {limit} \
     (ORDER_SVC__ORDER__MAX_OPEN_ORDERS); retry later"
)]
pub struct Busy {
    pub open: u64,
    pub limit: u64,
    /// When a retry may find room: one refresh.
    pub retry_after: Duration,
}

#[derive(Debug, Default)]
struct Counts {
    /// Open orders in the table at the last read.
    base: u64,
    /// Placements this instance committed since that read began (some of
    /// them may be in the read already: counted twice, which errs towards
    /// refusing, never towards admitting too many).
    committed: u64,
    /// Placements admitted and not yet committed or given up.
    in_flight: u64,
}

impl Counts {
    fn open(&self) -> u64 {
        self.base + self.committed + self.in_flight
    }
}

/// The bound on open orders; `limit` 0 admits everything.
#[derive(Debug)]
pub struct Admission {
    limit: u64,
    refresh: Duration,
    counts: Mutex<Counts>,
}

/// One admitted placement: [`Ticket::placed`] once its transaction commits;
/// dropped without it, the room is given back.
pub struct Ticket<'a> {
    admission: Option<&'a Admission>,
}

impl Ticket<'_> {
    /// The placement committed: it is an open order now.
    pub fn placed(mut self) {
        if let Some(a) = self.admission.take() {
            let mut c = a.lock();
            c.in_flight -= 1;
            c.committed += 1;
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            a.lock().in_flight -= 1;
        }
    }
}

impl Admission {
    pub fn new(limit: u64, refresh: Duration) -> Self {
        Self {
            limit,
            refresh,
            counts: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts are plain numbers, valid whatever panicked.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Room for one more order, or why not.
    pub fn admit(&self) -> Result<Ticket<'_>, Busy> {
        if self.limit == 0 {
            return Ok(Ticket { admission: None });
        }
        let mut c = self.lock();
        let open = c.open();
        if open >= self.limit {
            metrics::counter!("orders_refused_busy_total").increment(1);
            return Err(Busy {
                open,
                limit: self.limit,
                retry_after: self.refresh,
            });
        }
        c.in_flight += 1;
        Ok(Ticket {
            admission: Some(self),
        })
    }

    /// Open orders as this instance counts them now.
    pub fn open(&self) -> u64 {
        self.lock().open()
    }

    /// Reads the table's open orders once (nothing to do without a limit).
    pub async fn refresh(&self, pool: &PgPool) -> sqlx::Result<()> {
        if self.limit == 0 {
            return Ok(());
        }
        let before = self.lock().committed;
        let open = store::count_open(pool).await?;
        let mut c = self.lock();
        c.base = u64::try_from(open).unwrap_or(0);
        // Commits made while the count ran are kept.
        c.committed = c.committed.saturating_sub(before);
        metrics::gauge!("orders_open").set(c.base as f64);
        Ok(())
    }

    /// Reads the count again every `refresh` until `stop` (the first read
    /// is the caller's, before the service takes calls).
    pub async fn run(&self, pool: PgPool, stop: CancellationToken) {
        if self.limit == 0 {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.refresh) => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.refresh(&pool).await {
                tracing::warn!(error = %e, "counting open orders failed; admission uses the last count");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_orders_in_flight_and_placed_and_gives_back_what_fails() {
        let a = Admission::new(3, Duration::from_millis(100));
        let t1 = a.admit().expect("room");
        let t2 = a.admit().expect("room");
        t1.placed();
        let t3 = a.admit().expect("room");
        let busy = a.admit().err().expect("full: one placed, two in flight");
        assert_eq!((busy.open, busy.limit), (3, 3));
        drop(t2);
        assert_eq!(a.open(), 2, "a failed placement gives its room back");
        t3.placed();
        assert_eq!(a.open(), 2);
        assert!(a.admit().is_ok());
    }

    #[test]
    fn a_limit_of_zero_admits_everything() {
        let a = Admission::new(0, Duration::from_millis(100));
        let tickets: Vec<_> = (0..1_000).map(|_| a.admit().expect("no limit")).collect();
        assert_eq!(tickets.len(), 1_000);
    }

    #[test]
    fn a_read_replaces_the_count_and_keeps_commits_made_since() {
        let a = Admission::new(10, Duration::from_millis(100));
        a.admit().expect("room").placed();
        a.admit().expect("room").placed();
        // A read that began after both commits and saw 7 open (others'
        // orders too), then one more commit.
        {
            let mut c = a.lock();
            c.base = 7;
            c.committed = 0;
        }
        a.admit().expect("room").placed();
        assert_eq!(a.open(), 8);
        let _in_flight = a.admit().expect("room");
        let _last = a.admit().expect("room");
        assert!(a.admit().is_err());
    }
}
