//! Inventory's reactions to order events:
//! - `orders.placed`: hold every line or none; `inventory.reserved` (with the
//!   unit prices of this moment) or `inventory.rejected`.
//! - `orders.cancelled`: give the holds back; if the placement has not been
//!   seen yet, leave a tombstone (Redis marker and Postgres row) so that a
//!   late placement holds nothing.
//! - `orders.confirmed`: the holds become sales.
//!
//! A placement touches Redis in `prepare` (outside the transaction), then
//! Postgres, the inbox row and the outbox event in `apply`. A cancellation or
//! confirmation decides in Postgres first (`apply`) and tells Redis once that
//! has committed (`committed`). When the breaker has sent reservations to
//! Postgres, Redis is not involved at all.

use saga_shared::bus::consumer::Batch;
use saga_shared::bus::{Delivery, EventType, Handler, HandlerError, Outbox, SagaEvent, StreamKind};
use saga_shared::proto::events::v1 as pb;
use sqlx::PgConnection;

use crate::domain::{self, Holder};
use crate::service::{
    AfterCommit, Closed, Inventory, InventoryError, RejectReason, ReserveStep, Reserved,
};

/// The streams this service consumes.
pub const INPUT: &[StreamKind] = &[StreamKind::Orders];

/// The events it handles (a holder's: the placement and both ends); the
/// rest of its input stream is not for it.
pub const WANTS: &[EventType] = saga_shared::bus::HOLDER_EVENTS;

pub struct OrderEvents {
    pub inventory: Inventory,
}

#[derive(Clone, Debug)]
pub enum Prepared {
    Reserve(ReserveStep),
    /// Release or commit: nothing to do before the transaction.
    Close,
}

impl From<InventoryError> for HandlerError {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::Db(db) => db.into(),
            InventoryError::Cache(_) | InventoryError::Fenced(_) => {
                HandlerError::Transient(Box::new(e))
            }
            _ => HandlerError::Permanent(Box::new(e)),
        }
    }
}

/// SKUs named by an event's lines that could exist (others cannot be held).
fn skus_of(lines: &[pb::OrderLine]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.sku.clone())
        .filter(|s| saga_shared::validate::ident("sku", s, domain::MAX_SKU_LEN).is_ok())
        .collect()
}

fn reject_reason(reason: RejectReason) -> pb::InventoryRejectReason {
    match reason {
        RejectReason::OutOfStock => pb::InventoryRejectReason::OutOfStock,
        RejectReason::UnknownSku => pb::InventoryRejectReason::UnknownSku,
        RejectReason::InvalidLines => pb::InventoryRejectReason::InvalidLines,
    }
}

impl Handler for OrderEvents {
    type Prepared = Prepared;
    type Committed = AfterCommit;
    type Locked = ();

    const WANTS: &'static [EventType] = WANTS;

    async fn lock_batch(&self, tx: &mut PgConnection, b: Batch<'_>) -> Result<(), HandlerError> {
        let skus = b.keys(|event| match event {
            SagaEvent::OrderPlaced(e) => e.lines.iter().map(|l| l.sku.clone()).collect(),
            SagaEvent::OrderConfirmed(e) => e.lines.iter().map(|l| l.sku.clone()).collect(),
            SagaEvent::OrderCancelled(e) => e.lines.iter().map(|l| l.sku.clone()).collect(),
            _ => Vec::new(),
        });
        Ok(self.inventory.lock_products(tx, &skus).await?)
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn prepare(&self, d: &Delivery) -> Result<Prepared, HandlerError> {
        let order = d.order_id;
        match &d.event {
            SagaEvent::OrderPlaced(e) => {
                let lines = domain::order_lines(
                    e.lines.iter().map(|l| (l.sku.clone(), l.quantity)),
                    self.inventory.settings().max_lines,
                );
                let step = match lines {
                    Ok(lines) => {
                        self.inventory
                            .reserve_step(Holder::Order(order), lines)
                            .await?
                    }
                    Err(bad) => {
                        tracing::warn!(%order, reason = %bad.reason, "order lines invalid");
                        ReserveStep::Rejected {
                            sku: bad.sku,
                            reason: RejectReason::InvalidLines,
                        }
                    }
                };
                Ok(Prepared::Reserve(step))
            }
            SagaEvent::OrderCancelled(_) | SagaEvent::OrderConfirmed(_) => Ok(Prepared::Close),
            other => Err(HandlerError::permanent(format!(
                "inventory does not handle {}",
                other.event_type()
            ))),
        }
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn apply(
        &self,
        tx: &mut PgConnection,
        d: &Delivery,
        prepared: Prepared,
        _locked: &mut (),
    ) -> Result<AfterCommit, HandlerError> {
        let order = d.order_id;
        let holder = Holder::Order(order);
        match (&d.event, prepared) {
            (SagaEvent::OrderPlaced(_), Prepared::Reserve(step)) => {
                let (reserved, after) = self.inventory.apply_reserve(tx, holder, step).await?;
                let event = match reserved {
                    Reserved::Held(held) => SagaEvent::InventoryReserved(pb::InventoryReserved {
                        order_id: order.to_string(),
                        lines: held
                            .into_iter()
                            .map(|h| pb::PricedLine {
                                sku: h.sku,
                                quantity: h.quantity,
                                unit_price_cents: h.unit_price_cents,
                            })
                            .collect(),
                    }),
                    Reserved::Rejected { sku, reason } => {
                        SagaEvent::InventoryRejected(pb::InventoryRejected {
                            order_id: order.to_string(),
                            reason: reject_reason(reason) as i32,
                            sku,
                        })
                    }
                    Reserved::Unchanged(state) => {
                        tracing::debug!(%order, %state, "placement already decided");
                        return Ok(after);
                    }
                };
                Outbox::enqueue(tx, &d.follow_up(order), &event).await?;
                Ok(after)
            }
            (SagaEvent::OrderCancelled(e), Prepared::Close) => {
                let (closed, after) = self
                    .inventory
                    .apply_release(tx, holder, &skus_of(&e.lines))
                    .await?;
                match closed {
                    Closed::Tombstone => {
                        tracing::debug!(%order, "tombstone left for a late placement");
                    }
                    Closed::Unchanged(crate::domain::OrderHoldState::Committed) => {
                        tracing::error!(%order, "cancellation of an order whose stock was already sold; ignored");
                    }
                    Closed::Done(_) | Closed::Unchanged(_) => {}
                }
                Ok(after)
            }
            (SagaEvent::OrderConfirmed(_), Prepared::Close) => {
                let (_, after) = self.inventory.apply_commit(tx, holder).await?;
                Ok(after)
            }
            (event, prepared) => Err(HandlerError::permanent(format!(
                "{} prepared as {prepared:?}",
                event.event_type()
            ))),
        }
    }

    async fn committed(&self, after: AfterCommit) {
        self.inventory.after_commit(after).await;
    }
}
