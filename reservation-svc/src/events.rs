//! Reservation's reactions to order events:
//! - `orders.placed` with a slot: take a place (under the slot's Redis lock,
//!   fenced by Postgres); `reservations.held` or `reservations.rejected`.
//! - `orders.cancelled`: give the place back, or leave a tombstone if the
//!   placement has not been seen yet.
//! - `orders.confirmed`: the held place is confirmed.

use saga_shared::bus::consumer::event_uuid;
use saga_shared::bus::{Delivery, EventType, Handler, HandlerError, Outbox, SagaEvent};
use saga_shared::proto::events::v1 as pb;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::BookingState;
use crate::lock::{HeldLock, SlotLocks};
use crate::store::{self, HoldAttempt};

pub struct OrderEvents {
    locks: SlotLocks,
}

impl OrderEvents {
    pub fn new(locks: SlotLocks) -> Self {
        Self { locks }
    }
}

fn slot_of(slot: Option<&String>) -> Result<Option<Uuid>, HandlerError> {
    slot.filter(|s| !s.is_empty())
        .map(|s| event_uuid("slot_id", s))
        .transpose()
}

impl Handler for OrderEvents {
    /// The slot lock taken for a placement, if any.
    type Prepared = Option<HeldLock>;
    type Committed = ();

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::OrderPlaced | EventType::OrderCancelled | EventType::OrderConfirmed
        )
    }

    async fn prepare(&self, d: &Delivery) -> Result<Option<HeldLock>, HandlerError> {
        match &d.event {
            SagaEvent::OrderPlaced(e) => match slot_of(e.slot_id.as_ref())? {
                Some(slot) => Ok(self.locks.acquire(slot).await.ok()),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        d: &Delivery,
        _lock: Option<HeldLock>,
    ) -> Result<(), HandlerError> {
        let order = event_uuid("order_id", d.event.order_id())?;
        match &d.event {
            SagaEvent::OrderPlaced(e) => {
                let Some(slot) = slot_of(e.slot_id.as_ref())? else {
                    return Ok(());
                };
                placed(tx, d, order, slot).await
            }
            SagaEvent::OrderCancelled(e) => {
                let Some(slot) = slot_of(e.slot_id.as_ref())? else {
                    return Ok(());
                };
                if store::insert_booking(
                    tx,
                    order,
                    Some(slot),
                    BookingState::Released,
                    Some("cancelled before placement"),
                )
                .await?
                {
                    return Ok(());
                }
                store::finish_held(tx, order, BookingState::Released).await?;
                Ok(())
            }
            SagaEvent::OrderConfirmed(e) => {
                if slot_of(e.slot_id.as_ref())?.is_none() {
                    return Ok(());
                }
                match store::lock_booking(tx, order).await? {
                    Some((BookingState::Held, Some(slot))) => {
                        store::close_booking(tx, order, slot, BookingState::Confirmed).await?;
                        Ok(())
                    }
                    Some((BookingState::Confirmed, _)) => Ok(()),
                    Some((state, _)) => Err(HandlerError::permanent(format!(
                        "order {order} confirmed but its booking is {state}"
                    ))),
                    None => Err(HandlerError::permanent(format!(
                        "order {order} confirmed but its slot was never held"
                    ))),
                }
            }
            other => Err(HandlerError::permanent(format!(
                "reservation does not handle {}",
                other.event_type()
            ))),
        }
    }

    async fn finish(&self, lock: Option<HeldLock>) {
        if let Some(lock) = lock {
            self.locks.release(lock).await;
        }
    }
}

async fn placed(
    tx: &mut PgConnection,
    d: &Delivery,
    order: Uuid,
    slot: Uuid,
) -> Result<(), HandlerError> {
    if store::lock_booking(tx, order).await?.is_some() {
        // A duplicate, or the cancellation came first.
        return Ok(());
    }
    let (state, reason, event) = match store::try_hold(tx, slot).await? {
        HoldAttempt::Held => (
            BookingState::Held,
            None,
            SagaEvent::ReservationHeld(pb::ReservationHeld {
                order_id: order.to_string(),
                slot_id: slot.to_string(),
            }),
        ),
        attempt => {
            let (reason, why) = match attempt {
                HoldAttempt::Full => (pb::ReservationRejectReason::SlotFull, "slot_full"),
                _ => (pb::ReservationRejectReason::UnknownSlot, "unknown_slot"),
            };
            (
                BookingState::Rejected,
                Some(why),
                SagaEvent::ReservationRejected(pb::ReservationRejected {
                    order_id: order.to_string(),
                    slot_id: slot.to_string(),
                    reason: reason as i32,
                }),
            )
        }
    };
    if !store::insert_booking(tx, order, Some(slot), state, reason).await? {
        // A cancellation committed its tombstone meanwhile: undo by retrying.
        return Err(HandlerError::transient("booking decided concurrently"));
    }
    Outbox::enqueue(tx, &d.follow_up(order), &event).await?;
    Ok(())
}
