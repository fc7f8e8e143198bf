//! The order's reactions to the participants' events: each one is an
//! [`Input`] to the order's state machine, applied under the order's row lock;
//! the event the order then owes goes out through the outbox.

use std::collections::HashMap;
use std::sync::Arc;

use saga_shared::bus::consumer::Batch;
use saga_shared::bus::{Delivery, EventType, Handler, HandlerError, SagaEvent, StreamKind};
use saga_shared::proto::events::v1 as pb;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{CancelReason, Input, Order, Refusal};
use crate::service::{OrderError, Orders};

/// The streams this service consumes.
pub const INPUT: &[StreamKind] = &[
    StreamKind::Inventory,
    StreamKind::Reservations,
    StreamKind::Payments,
];

/// The events it handles; the rest of its input streams is not for it.
pub const WANTS: &[EventType] = &[
    EventType::InventoryReserved,
    EventType::InventoryRejected,
    EventType::ReservationHeld,
    EventType::ReservationRejected,
    EventType::PaymentSucceeded,
    EventType::PaymentFailed,
];

pub struct ParticipantEvents {
    pub orders: Arc<Orders>,
}

/// What an event means to the order, if anything.
fn input_of(event: &SagaEvent) -> Result<Input, HandlerError> {
    Ok(match event {
        SagaEvent::InventoryReserved(e) => Input::StockHeld(
            e.lines
                .iter()
                .map(|l| (l.sku.clone(), l.quantity, l.unit_price_cents))
                .collect(),
        ),
        SagaEvent::InventoryRejected(_) => Input::StockRejected,
        SagaEvent::ReservationHeld(_) => Input::SlotHeld,
        SagaEvent::ReservationRejected(_) => Input::SlotRejected,
        SagaEvent::PaymentSucceeded(_) => Input::PaymentSucceeded,
        SagaEvent::PaymentFailed(e) => {
            Input::PaymentFailed(match pb::PaymentFailureReason::try_from(e.reason) {
                Ok(pb::PaymentFailureReason::InsufficientFunds) => CancelReason::InsufficientFunds,
                _ => CancelReason::PaymentDeclined,
            })
        }
        other => {
            return Err(HandlerError::permanent(format!(
                "order does not handle {}",
                other.event_type()
            )));
        }
    })
}

impl Handler for ParticipantEvents {
    type Prepared = ();
    type Committed = ();
    /// The batch's orders, read with their locks by `lock_batch`.
    type Locked = HashMap<Uuid, Order>;

    const WANTS: &'static [EventType] = WANTS;

    async fn lock_batch(
        &self,
        tx: &mut PgConnection,
        batch: Batch<'_>,
    ) -> Result<HashMap<Uuid, Order>, HandlerError> {
        Ok(self.orders.lock_orders(tx, &batch.orders()).await?)
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn prepare(&self, _d: &Delivery) -> Result<(), HandlerError> {
        Ok(())
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn apply(
        &self,
        tx: &mut PgConnection,
        d: &Delivery,
        (): (),
        locked: &mut HashMap<Uuid, Order>,
    ) -> Result<(), HandlerError> {
        let id = d.order_id;
        let input = input_of(&d.event)?;
        let order = locked.remove(&id);
        match self
            .orders
            .advance(tx, id, order, input, d.follow_up(id))
            .await
        {
            Ok(Some(order)) => {
                // A later event of the batch for the same order sees it as
                // this one left it.
                locked.insert(id, order);
                Ok(())
            }
            Ok(None) => {
                tracing::warn!(order_id = %id, event = %d.event_type(), "event for an unknown order ignored");
                Ok(())
            }
            Err(OrderError::Refused(r @ (Refusal::LinesMismatch(_) | Refusal::TotalOverflow))) => {
                Err(HandlerError::permanent(r.to_string()))
            }
            Err(OrderError::Refused(r @ Refusal::AlreadyConfirmed)) => {
                Err(HandlerError::permanent(r.to_string()))
            }
            Err(OrderError::Db(e)) => Err(e.into()),
            Err(e) => Err(HandlerError::Unexpected(Box::new(e))),
        }
    }
}
