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
//! Watches are bounded (`max_watchers` per instance, RESOURCE_EXHAUSTED
//! beyond) and end when the service shuts down (UNAVAILABLE: resume
//! elsewhere).

use std::sync::Arc;
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
    poll: Duration,
    stopping: CancellationToken,
}

impl Watchers {
    pub fn new(max: usize, poll: Duration, stopping: CancellationToken) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            poll,
            stopping,
        }
    }
}

/// How a watch ends early.
#[derive(Debug, thiserror::Error)]
pub enum WatchEnd {
    #[error("{0} orders are being watched on this instance, the most it serves; retry later")]
    Full(usize),
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
                if f.last.is_none_or(|last| order.updated_at > last) {
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
