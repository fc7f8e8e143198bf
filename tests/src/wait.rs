//! Waiting on conditions, not on sleeps: every wait here polls with a
//! deadline through [`sagactl::poll`], the one polling loop of the CLI and
//! the harness.

use std::future::Future;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::bail;
use saga_shared::proto::order::v1 as ord;
pub use sagactl::poll::{Poll, poll_until};

use crate::TestSystem;

/// Polls `check` until it says yes, failing after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    poll_until(what, timeout, || {
        let holds = check();
        async move { Ok(holds.await?.then_some(())) }
    })
    .await
}

impl TestSystem {
    /// Waits until the order is CONFIRMED or CANCELLED.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> anyhow::Result<ord::Order> {
        self.clients.wait_for_end(id, timeout).await
    }

    /// A one-line order of one unit of a new SKU for a funded customer,
    /// placed and CONFIRMED (the events a test then works on).
    pub async fn one_confirmed_order(
        &self,
        sku: &str,
        customer: &str,
        timeout: Duration,
    ) -> anyhow::Result<ord::Order> {
        self.seed_product(sku, 100, 10).await?;
        self.top_up(customer, 1_000).await?;
        let placed = self
            .place(crate::order_request(customer, &[(sku, 1)], None))
            .await?;
        let done = self.wait_terminal(&placed.order_id, timeout).await?;
        anyhow::ensure!(
            crate::state(&done) == ord::OrderState::Confirmed,
            "order {} ended {:?}",
            done.order_id,
            crate::state(&done)
        );
        Ok(done)
    }

    /// Waits until every order ends; returns them in the same order.
    pub async fn wait_all_terminal(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Vec<ord::Order>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let left = deadline.saturating_duration_since(Instant::now());
            out.push(
                self.wait_terminal(id, left.max(Duration::from_millis(1)))
                    .await?,
            );
        }
        Ok(out)
    }

    /// Waits until nothing is left to publish or to handle, twice in a row.
    pub async fn quiesce(&self, timeout: Duration) -> anyhow::Result<()> {
        // Two calm readings must be apart, not two late ticks back to back.
        let polled = Poll::new(Duration::from_millis(50), timeout)
            .spaced()
            .until((0, 0, None), |(calm, _, _)| async move {
                let (outbox, consumers) =
                    (self.outbox_backlog().await?, self.consumer_backlog().await?);
                let calm = if outbox == 0 && consumers == Some(0) {
                    calm + 1
                } else {
                    0
                };
                Ok(if calm >= 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue((calm, outbox, consumers))
                })
            })
            .await?;
        if let ControlFlow::Continue((_, outbox, consumers)) = polled {
            bail!(
                "not quiet after {timeout:?}: {outbox} outbox rows, {} messages pending",
                consumers.map_or("(consumers missing)".to_owned(), |n| n.to_string())
            );
        }
        Ok(())
    }

    /// Waits until Redis's counter of `sku` shows `avail` and no hold. Redis
    /// follows Postgres right away unless a Redis call failed (a timeout on
    /// a loaded machine); then the next use or reconciliation repairs it.
    pub async fn redis_settles(
        &self,
        sku: &str,
        avail: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("Redis to show {avail} of {sku} and no hold");
        let settled = eventually(&what, timeout, || async {
            let c = self.redis_counter(sku).await?;
            Ok(c.avail == Some(avail) && c.holds.is_empty())
        })
        .await;
        if settled.is_err() {
            bail!(
                "timed out waiting for {what}: {:?}",
                self.redis_counter(sku).await?
            );
        }
        Ok(())
    }
}

/// The waits stay `Send`, so that a test may spawn them (checked when the
/// unit tests compile).
#[cfg(test)]
#[allow(dead_code)]
fn waits_are_send(sys: &'static TestSystem, p: &'static mut crate::processes::Processes) {
    use crate::processes::Service;
    fn send<T: Send>(_: T) {}
    send(eventually("x", Duration::ZERO, || async { Ok(true) }));
    send(sys.wait_terminal("x", Duration::ZERO));
    send(sys.wait_all_terminal(&[], Duration::ZERO));
    send(sys.quiesce(Duration::ZERO));
    send(sys.redis_settles("x", 1, Duration::ZERO));
    send(p.wait_ready(Service::Order));
    send(p.wait_ended(Service::Order, Duration::ZERO));
    send(p.stop());
}
