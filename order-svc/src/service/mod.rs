//! The order application: placing, cancelling and advancing orders, with
//! the events each change owes, written through the outbox in the same
//! transaction.

mod admission;
mod catalog;
mod watch;

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use saga_shared::bus::{EventMeta, Outbox, OutboxRows, SagaEvent};
use saga_shared::proto::events::v1 as pb;
use saga_shared::telemetry::record_on_commit;
use saga_shared::validate::FieldError;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::OrderSettings;
use crate::domain::{
    CancelReason, Effect, Input, Limits, ListFilter, NewOrder, Order, OrderState, Refusal,
};
use crate::store::{self, Store};
pub use admission::{Admission, Busy, Ticket};
pub use catalog::{Catalog, CatalogError};
use saga_shared::bus::history;
use tracing::Instrument;
pub use watch::{WatchEnd, Watchers};

/// Why an order operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// An id that names nothing: the message names the field.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Watch(#[from] WatchEnd),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

pub type Result<T, E = OrderError> = std::result::Result<T, E>;

pub struct Orders {
    store: Store,
    outbox: Outbox,
    catalog: Catalog,
    admission: Admission,
    watchers: Watchers,
    settings: OrderSettings,
}

impl Orders {
    /// `stopping` is cancelled when the service begins to shut down (it
    /// ends the watches).
    pub fn new(
        store: Store,
        outbox: Outbox,
        catalog: Catalog,
        settings: OrderSettings,
        stopping: CancellationToken,
    ) -> Self {
        let admission = Admission::new(
            settings.max_open_orders,
            Duration::from_millis(settings.admission_refresh_ms.max(10)),
        );
        let watchers = Watchers::new(
            settings.max_watchers,
            settings.max_watchers_per_customer,
            Duration::from_millis(settings.watch_poll_ms.max(10)),
            stopping,
        );
        Self {
            store,
            outbox,
            catalog,
            admission,
            watchers,
            settings,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_lines: self.settings.max_lines,
            max_quantity: self.settings.max_quantity,
        }
    }

    /// Room for one more open order (see [`admission`]).
    pub fn admit(&self) -> Result<Ticket<'_>> {
        Ok(self.admission.admit()?)
    }

    /// Counts the open orders once (before the service takes calls; a
    /// failure is left to the next refresh).
    pub async fn count_open_orders_now(&self) {
        if let Err(e) = self.admission.refresh(&self.store.pool).await {
            tracing::warn!(error = %e, "counting open orders failed");
        }
    }

    /// Counts the open orders every refresh until `stop`.
    pub async fn count_open_orders(&self, stop: tokio_util::sync::CancellationToken) {
        self.admission.run(self.store.pool.clone(), stop).await;
    }

    /// Refuses an order that names a SKU or slot nobody knows.
    pub async fn check_references(&self, new: &NewOrder) -> Result<()> {
        let skus: Vec<&str> = new.items.iter().map(|(s, _)| s.as_str()).collect();
        let unknown = self.catalog.unknown_skus(&skus).await?;
        if let Some((i, (sku, _))) = new
            .items
            .iter()
            .enumerate()
            .find(|(_, (sku, _))| unknown.contains(sku))
        {
            return Err(OrderError::NotFound(format!(
                "items[{i}].sku: no product {sku:?}"
            )));
        }
        if let Some(slot) = new.slot_id
            && !self.catalog.slot_exists(slot).await?
        {
            return Err(OrderError::NotFound(format!("slot_id: no slot {slot}")));
        }
        Ok(())
    }

    /// Stores a new PENDING order and its `orders.placed` event on `conn`
    /// with one statement: atomic in autocommit as in the caller's
    /// transaction (PlaceOrder relies on it: see
    /// [`saga_shared::idempotency::once_statement`]).
    pub async fn place_in(&self, conn: &mut PgConnection, new: NewOrder) -> Result<Order> {
        let now = saga_shared::time::now();
        let deadline = now + Duration::from_secs(self.settings.deadline_secs);
        let order = Order::place(Uuid::now_v7(), new, now, deadline);
        let event = SagaEvent::OrderPlaced(pb::OrderPlaced {
            order_id: order.id.to_string(),
            customer_id: order.customer_id.clone(),
            lines: order_lines(&order),
            slot_id: order.slot_id.map(|s| s.to_string()),
            placed_at: Some(saga_shared::time::to_proto(now)),
        });
        let events = OutboxRows::of(&EventMeta::new(order.id, None), &event);
        store::insert(conn, &order, events).await?;
        record_on_commit(|| metrics::counter!("orders_placed_total").increment(1));
        Ok(order)
    }

    /// The order and its events as this service knows them: those it
    /// published (its outbox) and those it applied (its inbox), in order.
    /// `owner`: the customer asking (its own orders only), or `None`.
    pub async fn history(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<(Order, Vec<history::Step>)> {
        let order = self.get(id, owner).await?;
        let pool = &self.store.pool;
        let (published, applied) =
            tokio::try_join!(history::published(pool, id), history::applied(pool, id))?;
        Ok((order, history::story(published, applied)))
    }

    /// One page of orders, newest first.
    pub async fn list(&self, filter: &ListFilter, limit: i64) -> Result<Vec<Order>> {
        Ok(self.store.list(filter, limit).await?)
    }

    /// How each of `ids` that exists stands (for the participants' repair).
    pub async fn outcomes(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, OrderState, Option<CancelReason>)>> {
        Ok(store::outcomes(&self.store.pool, ids).await?)
    }

    /// The order; `owner`: the customer asking, who sees only its own
    /// (another customer's order is as missing as one that never was), or
    /// `None` for any order.
    pub async fn get(&self, id: Uuid, owner: Option<&str>) -> Result<Order> {
        owned(id, self.store.order(id).await?, owner)
    }

    /// Cancels an order at the customer's request (FAILED_PRECONDITION once
    /// CONFIRMED; a cancelled order is returned as it is). `owner` as for
    /// [`Orders::get`]: checked on the order read under its lock.
    /// Runs in the caller's transaction; wake the outbox once it commits.
    pub async fn cancel_in(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<Order> {
        let locked = owned(id, store::load_locked(tx, &[id]).await?.pop(), owner)?;
        self.advance(
            tx,
            id,
            Some(locked),
            Input::Cancel(CancelReason::CustomerCancelled),
            EventMeta::new(id, None),
        )
        .await?
        .ok_or_else(|| not_found(id))
    }

    /// Reads and locks the orders of a batch in one statement, first in its
    /// transaction and in id order, so that batches (of several streams at
    /// once) never deadlock on them; what [`Orders::advance`] then takes.
    pub async fn lock_orders(
        &self,
        tx: &mut PgConnection,
        ids: &[Uuid],
    ) -> sqlx::Result<HashMap<Uuid, Order>> {
        let orders = store::load_locked(tx, ids).await?;
        Ok(orders.into_iter().map(|o| (o.id, o)).collect())
    }

    /// Applies `input` to the order, saves it, and writes the event it owes
    /// with `meta`. `locked`: the order as this transaction read it under
    /// its lock, if it did ([`Orders::lock_orders`]); otherwise it is read
    /// and locked here. `None` if there is no such order.
    pub async fn advance(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        locked: Option<Order>,
        input: Input,
        meta: EventMeta,
    ) -> Result<Option<Order>> {
        let mut order = match locked {
            Some(order) => order,
            None => match store::load(tx, id, true).await? {
                Some(order) => order,
                None => return Ok(None),
            },
        };
        let prices = |o: &Order| -> Vec<Option<i64>> {
            o.lines.iter().map(|l| l.unit_price_cents).collect()
        };
        let prices_before = prices(&order);
        let outcome = order.apply(input)?;
        if outcome.changed {
            order.touch(saga_shared::time::now());
            let prices_changed = prices(&order) != prices_before;
            store::save(tx, &order, prices_changed).await?;
        }
        if let Some(effect) = outcome.effect {
            Outbox::enqueue(tx, &meta, &effect_event(&order, effect)).await?;
            if order.state.is_terminal() {
                let outcome = match order.cancel_reason {
                    Some(r) => r.as_str(),
                    None => "confirmed",
                };
                let took = (order.updated_at - order.created_at)
                    .to_std()
                    .unwrap_or_default();
                let state = order.state.as_str();
                record_on_commit(move || {
                    metrics::counter!("orders_finished_total", "outcome" => outcome).increment(1);
                    metrics::histogram!("saga_order_duration_seconds", "state" => state)
                        .record(took.as_secs_f64());
                });
            }
        }
        Ok(Some(order))
    }

    /// Cancels (reason `timeout`) up to one batch of orders past their
    /// deadline. Instances share the work: rows another one has locked are
    /// skipped. Returns how many were cancelled.
    pub async fn cancel_overdue(&self) -> Result<usize> {
        const BATCH: i64 = 100;
        let ids = saga_shared::telemetry::recording_on_commit(async {
            let mut tx = self.store.pool.begin().await?;
            let ids = store::overdue(&mut tx, BATCH).await?;
            // Locked already, by `overdue`: this reads them all at once.
            let mut locked = self.lock_orders(&mut tx, &ids).await?;
            for id in &ids {
                let span = tracing::info_span!("deadline", order_id = %id);
                // Made in the span, so that the cancellation's event carries
                // its trace to the compensations downstream.
                let meta = span.in_scope(|| EventMeta::new(*id, None));
                self.advance(
                    &mut tx,
                    *id,
                    locked.remove(id),
                    Input::Cancel(CancelReason::Timeout),
                    meta,
                )
                .instrument(span)
                .await?;
            }
            tx.commit().await?;
            Ok::<_, OrderError>(ids)
        })
        .await?;
        if !ids.is_empty() {
            self.outbox.wake();
            metrics::counter!("orders_deadline_cancelled_total").increment(ids.len() as u64);
            tracing::info!(count = ids.len(), "cancelled orders past their deadline");
        }
        Ok(ids.len())
    }

    /// Runs [`Orders::cancel_overdue`] every `sweep_interval_ms` until `stop`.
    pub async fn sweep_deadlines(&self, stop: tokio_util::sync::CancellationToken) {
        let every = Duration::from_millis(self.settings.sweep_interval_ms.max(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            loop {
                match self.cancel_overdue().await {
                    // A full round: more may be due, unless stopping (a
                    // backlog after an outage must not hold the stop).
                    Ok(n) if n >= 100 && !stop.is_cancelled() => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "deadline sweep failed");
                        break;
                    }
                }
            }
        }
    }
}

fn order_lines(order: &Order) -> Vec<pb::OrderLine> {
    order
        .lines
        .iter()
        .map(|l| pb::OrderLine {
            sku: l.sku.clone(),
            quantity: l.quantity,
        })
        .collect()
}

/// The event for an effect of `order`.
fn effect_event(order: &Order, effect: Effect) -> SagaEvent {
    let order_id = order.id.to_string();
    let slot_id = order.slot_id.map(|s| s.to_string());
    match effect {
        Effect::Reserved { amount_cents } => SagaEvent::OrderReserved(pb::OrderReserved {
            order_id,
            customer_id: order.customer_id.clone(),
            amount_cents,
        }),
        Effect::Confirmed => SagaEvent::OrderConfirmed(pb::OrderConfirmed {
            order_id,
            customer_id: order.customer_id.clone(),
            lines: order_lines(order),
            slot_id,
            amount_cents: order.total_cents.unwrap_or_default(),
        }),
        Effect::Cancelled(reason) => SagaEvent::OrderCancelled(pb::OrderCancelled {
            order_id,
            customer_id: order.customer_id.clone(),
            reason: cancel_reason_to_event(reason) as i32,
            lines: order_lines(order),
            slot_id,
        }),
    }
}

pub fn cancel_reason_to_event(r: CancelReason) -> pb::CancelReason {
    match r {
        CancelReason::OutOfStock => pb::CancelReason::OutOfStock,
        CancelReason::SlotUnavailable => pb::CancelReason::SlotUnavailable,
        CancelReason::PaymentDeclined => pb::CancelReason::PaymentDeclined,
        CancelReason::InsufficientFunds => pb::CancelReason::InsufficientFunds,
        CancelReason::Timeout => pb::CancelReason::Timeout,
        CancelReason::CustomerCancelled => pb::CancelReason::CustomerCancelled,
    }
}

fn not_found(id: Uuid) -> OrderError {
    OrderError::NotFound(format!("order_id: no order {id}"))
}

/// The order if it exists and `owner` (when given) is its customer.
fn owned(id: Uuid, order: Option<Order>, owner: Option<&str>) -> Result<Order> {
    match order {
        Some(o) if owner.is_none_or(|c| c == o.customer_id) => Ok(o),
        _ => Err(not_found(id)),
    }
}
