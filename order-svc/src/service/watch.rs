//! WatchOrder: an order followed until it ends.
//!
//! The order is read again every `watch_poll_ms` (one primary-key read) and
//! sent whenever its `updated_at` moved (it only moves forward, whatever
//! the clocks of the instances that change it: `Order::touch`): each message is the order as it
//! stands after one or more changes (changes closer together than the poll
//! are sent as one), and the terminal state is always sent, last. A client
//! resumes with the `updated_at` of the last message it got. Polling the
//! database rather than listening in this process means a change made by any
//! instance is seen.
//!
//! Watches are bounded (`max_watchers` per instance, and
//! `max_watchers_per_customer` for each customer, RESOURCE_EXHAUSTED
//! beyond) and end when the service shuts down (UNAVAILABLE: resume
//! elsewhere).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{OrderError, Orders, Result};
use crate::domain::Order;

/// What bounds and stops the watches of one instance.
pub struct Watchers {
    permits: Arc<Semaphore>,
    max: usize,
    /// Watches each customer holds now (none listed holds none).
    per_customer: Arc<Mutex<HashMap<String, usize>>>,
    max_per_customer: usize,
    poll: Duration,
    stopping: CancellationToken,
}

impl Watchers {
    pub fn new(
        max: usize,
        max_per_customer: usize,
        poll: Duration,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            per_customer: Arc::default(),
            max_per_customer,
            poll,
            stopping,
        }
    }

    /// A customer's share of the watches, if it has one left.
    fn share(&self, customer: &str) -> Result<Share> {
        let mut held = self.per_customer.lock().expect("watch counts");
        let count = held.entry(customer.to_owned()).or_default();
        // A refusal leaves no entry behind: the bound is at least 1, so a
        // refused customer already holds watches.
        if self.max_per_customer > 0 && *count >= self.max_per_customer {
            return Err(OrderError::Watch(WatchEnd::YoursFull(
                self.max_per_customer,
            )));
        }
        *count += 1;
        Ok(Share {
            counts: self.per_customer.clone(),
            customer: customer.to_owned(),
        })
    }
}

/// One of a customer's watches; given back when the watch ends.
struct Share {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    customer: String,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.counts.lock().expect("watch counts");
        if let Some(count) = held.get_mut(&self.customer) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.customer);
            }
        }
    }
}

/// How a watch ends early.
#[derive(Debug, thiserror::Error)]
pub enum WatchEnd {
    #[error("{0} orders are being watched on this instance, the most it serves; retry later")]
    Full(usize),
    #[error(
        "you are watching {0} orders on this instance, the most one customer may; end one first"
    )]
    YoursFull(usize),
    #[error("the service is shutting down; watch again (with `after`) to resume")]
    Stopping,
}

struct Follow {
    orders: Arc<Orders>,
    id: Uuid,
    owner: Option<String>,
    last: Option<DateTime<Utc>>,
    done: bool,
    _permit: OwnedSemaphorePermit,
    _share: Option<Share>,
}

impl Orders {
    /// The order `id` (`owner` as for [`Orders::get`]) now and at each change
    /// after `after`, until it ends. NOT_FOUND and a full house are answered
    /// before the stream starts.
    pub async fn watch(
        self: &Arc<Self>,
        id: Uuid,
        owner: Option<String>,
        after: Option<DateTime<Utc>>,
    ) -> Result<BoxStream<'static, Result<Order>>> {
        let watchers = &self.watchers;
        let share = owner.as_deref().map(|c| watchers.share(c)).transpose()?;
        let permit = watchers
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| OrderError::Watch(WatchEnd::Full(watchers.max)))?;
        // Unknown (or another customer's) orders fail the call itself.
        self.get(id, owner.as_deref()).await?;
        let follow = Follow {
            orders: self.clone(),
            id,
            owner,
            last: after,
            done: false,
            _permit: permit,
            _share: share,
        };
        Ok(Box::pin(futures::stream::unfold(follow, next)))
    }
}

/// The next message of a watch, or its end.
async fn next(mut f: Follow) -> Option<(Result<Order>, Follow)> {
    if f.done {
        return None;
    }
    let (poll, stopping) = (f.orders.watchers.poll, f.orders.watchers.stopping.clone());
    loop {
        if stopping.is_cancelled() {
            f.done = true;
            return Some((Err(OrderError::Watch(WatchEnd::Stopping)), f));
        }
        match f.orders.get(f.id, f.owner.as_deref()).await {
            Err(e) => {
                f.done = true;
                return Some((Err(e), f));
            }
            Ok(order) => {
                let terminal = order.state.is_terminal();
                // The end is sent unless the client has it: then `last` is
                // its time exactly (an order's times only grow). A `last`
                // beyond it was never one of this order's times.
                let new = f.last.is_none_or(|last| order.updated_at > last);
                if new || (terminal && f.last != Some(order.updated_at)) {
                    f.last = Some(order.updated_at);
                    f.done = terminal;
                    return Some((Ok(order), f));
                }
                if terminal {
                    return None;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = stopping.cancelled() => {}
        }
    }
}
