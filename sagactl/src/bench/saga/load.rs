//! The load: which order to place next (the mix), and learning how each
//! order ended from the events order-svc publishes (`orders.confirmed`,
//! `orders.cancelled`), not by polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rand::Rng;
use saga_shared::bus::{EventMeta, EventType, Namespace, SagaEvent};
use saga_shared::proto::events::v1 as ev;
use saga_shared::proto::order::v1 as ord;
use tokio::sync::oneshot;
use uuid::Uuid;

/// How an order ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Confirmed,
    Cancelled(ev::CancelReason),
}

/// An order's entry: someone waits for its end, or its end came first.
enum Slot {
    Waiting(oneshot::Sender<End>),
    Ended(End),
}

/// Waiters for orders' ends, fed by a subscription to order-svc's
/// terminal events. One map behind one lock, so an end and its waiter
/// always meet whichever comes first.
#[derive(Default)]
pub struct Ends {
    orders: Mutex<HashMap<Uuid, Slot>>,
}

impl Ends {
    /// Subscribes to the terminal events of `ns` and feeds the waiters.
    pub async fn listen(nats: &async_nats::Client, ns: &Namespace) -> anyhow::Result<Arc<Self>> {
        let ends = Arc::new(Self::default());
        let mut confirmed = nats
            .subscribe(ns.subject(EventType::OrderConfirmed))
            .await?;
        let mut cancelled = nats
            .subscribe(ns.subject(EventType::OrderCancelled))
            .await?;
        let feed = ends.clone();
        tokio::spawn(async move {
            loop {
                let (msg, end_type) = tokio::select! {
                    Some(m) = confirmed.next() => (m, EventType::OrderConfirmed),
                    Some(m) = cancelled.next() => (m, EventType::OrderCancelled),
                    else => break,
                };
                let Some(order) = msg
                    .headers
                    .as_ref()
                    .and_then(EventMeta::from_headers)
                    .and_then(|m| m.correlation_id)
                else {
                    continue;
                };
                let end = match (end_type, SagaEvent::decode(end_type, &msg.payload)) {
                    (_, Ok(SagaEvent::OrderCancelled(c))) => End::Cancelled(c.reason()),
                    // A cancellation it cannot read is still no confirmation.
                    (EventType::OrderCancelled, _) => End::Cancelled(ev::CancelReason::Unspecified),
                    _ => End::Confirmed,
                };
                feed.ended(order, end);
            }
        });
        Ok(ends)
    }

    fn ended(&self, order: Uuid, end: End) {
        let mut orders = self.orders.lock().expect("not poisoned");
        match orders.remove(&order) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(end);
            }
            _ => {
                orders.insert(order, Slot::Ended(end));
            }
        }
    }

    /// A receiver of `order`'s end (at once if it has ended already).
    pub fn wait(&self, order: Uuid) -> oneshot::Receiver<End> {
        let (tx, rx) = oneshot::channel();
        let mut orders = self.orders.lock().expect("not poisoned");
        match orders.remove(&order) {
            Some(Slot::Ended(end)) => {
                let _ = tx.send(end);
            }
            _ => {
                orders.insert(order, Slot::Waiting(tx));
            }
        }
        rx
    }

    /// Forgets a waiter that gave up.
    pub fn forget(&self, order: Uuid) {
        self.orders.lock().expect("not poisoned").remove(&order);
    }
}

/// What the orders are made of.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Mix {
    /// SKUs with stock, chosen by a Zipf law of exponent `skew` (0: uniform).
    pub skus: usize,
    pub skew: f64,
    /// Lines per order (distinct SKUs).
    pub lines: usize,
    /// Share of orders that ask for a slot.
    pub slot_share: f64,
    /// Share of orders for a SKU without stock (cancelled: out of stock).
    pub out_of_stock_share: f64,
    /// Share of orders by a customer without funds (cancelled: insufficient
    /// funds).
    pub unfunded_share: f64,
    pub customers: usize,
    pub slots: usize,
}

pub const OUT_OF_STOCK_SKU: &str = "bench-none";
pub const UNFUNDED: &str = "bench-broke";

pub fn sku(i: usize) -> String {
    format!("bench-{i}")
}

pub fn customer(i: usize) -> String {
    format!("bench-c{i}")
}

impl Mix {
    /// The cumulative weights of the SKUs under the Zipf law.
    pub fn weights(&self) -> Vec<f64> {
        let mut sum = 0.0;
        (1..=self.skus)
            .map(|rank| {
                sum += 1.0 / (rank as f64).powf(self.skew);
                sum
            })
            .collect()
    }

    /// The next order to place.
    pub fn order(
        &self,
        rng: &mut impl Rng,
        weights: &[f64],
        slots: &[String],
    ) -> ord::PlaceOrderRequest {
        let total = weights.last().copied().unwrap_or(1.0);
        let mut items: Vec<ord::LineItem> = Vec::with_capacity(self.lines);
        if rng.random::<f64>() < self.out_of_stock_share {
            items.push(ord::LineItem {
                sku: OUT_OF_STOCK_SKU.into(),
                quantity: 1,
            });
        }
        let mut guard = 0;
        while items.len() < self.lines.min(self.skus) && guard < 100 {
            guard += 1;
            let x = rng.random::<f64>() * total;
            let i = weights.partition_point(|w| *w < x).min(self.skus - 1);
            let sku = sku(i);
            if items.iter().all(|l| l.sku != sku) {
                items.push(ord::LineItem { sku, quantity: 1 });
            }
        }
        let customer_id = if rng.random::<f64>() < self.unfunded_share {
            UNFUNDED.to_owned()
        } else {
            customer(rng.random_range(0..self.customers.max(1)))
        };
        let slot_id = (!slots.is_empty() && rng.random::<f64>() < self.slot_share)
            .then(|| slots[rng.random_range(0..slots.len())].clone());
        ord::PlaceOrderRequest {
            customer_id,
            items,
            slot_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(skew: f64) -> Mix {
        Mix {
            skus: 10,
            skew,
            lines: 1,
            slot_share: 0.5,
            out_of_stock_share: 0.0,
            unfunded_share: 0.0,
            customers: 4,
            slots: 1,
        }
    }

    #[test]
    fn a_skewed_mix_favours_the_first_skus_and_a_uniform_one_does_not() {
        let mut rng = rand::rng();
        let count = |m: &Mix, rng: &mut rand::rngs::ThreadRng| {
            let w = m.weights();
            (0..10_000)
                .filter(|_| m.order(rng, &w, &[]).items[0].sku == sku(0))
                .count()
        };
        let uniform = count(&mix(0.0), &mut rng);
        let skewed = count(&mix(1.2), &mut rng);
        assert!((700..1_300).contains(&uniform), "{uniform}");
        assert!(skewed > 3_000, "{skewed}");
    }

    #[test]
    fn shares_of_the_mix_show_in_the_orders() {
        let mut rng = rand::rng();
        let m = Mix {
            out_of_stock_share: 0.25,
            unfunded_share: 1.0,
            ..mix(0.0)
        };
        let slots = vec!["s".to_owned()];
        let orders: Vec<_> = (0..4_000)
            .map(|_| m.order(&mut rng, &m.weights(), &slots))
            .collect();
        let oos = orders
            .iter()
            .filter(|o| o.items[0].sku == OUT_OF_STOCK_SKU)
            .count();
        assert!((800..1_200).contains(&oos), "{oos}");
        assert!(orders.iter().all(|o| o.customer_id == UNFUNDED));
        let with_slot = orders.iter().filter(|o| o.slot_id.is_some()).count();
        assert!((1_700..2_300).contains(&with_slot), "{with_slot}");
    }
}
