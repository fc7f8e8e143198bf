//! Reservation's reactions to order events:
//! - `orders.placed` with a slot: take a place (under the slot's Redis lock,
//!   fenced by Postgres); `reservations.held` or `reservations.rejected`.
//! - `orders.cancelled`: give the place back, or leave a tombstone if the
//!   placement has not been seen yet.
//! - `orders.confirmed`: the held place is confirmed.

use saga_shared::bus::consumer::event_uuid;
use saga_shared::bus::{Delivery, EventType, Handler, HandlerError, SagaEvent, StreamKind};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::service::{HeldLock, ReservationError, Reservations};

/// The streams this service consumes.
pub const INPUT: &[StreamKind] = &[StreamKind::Orders];

/// The events it handles (a holder's: the placement and both ends); the
/// rest of its input stream is not for it.
pub const WANTS: &[EventType] = saga_shared::bus::HOLDER_EVENTS;

pub struct OrderEvents {
    pub reservations: Reservations,
}

impl From<ReservationError> for HandlerError {
    fn from(e: ReservationError) -> Self {
        match e {
            ReservationError::Db(db) => db.into(),
            ReservationError::Concurrent(_) => HandlerError::Transient(Box::new(e)),
            ReservationError::Invalid(_)
            | ReservationError::NotFound(_)
            | ReservationError::CannotConfirm { .. } => HandlerError::Permanent(Box::new(e)),
        }
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
        WANTS.contains(&event_type)
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn prepare(&self, d: &Delivery) -> Result<Option<HeldLock>, HandlerError> {
        match &d.event {
            SagaEvent::OrderPlaced(e) => match slot_of(e.slot_id.as_ref())? {
                Some(slot) => Ok(self.reservations.lock(slot).await),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn apply(
        &self,
        tx: &mut PgConnection,
        d: &Delivery,
        _lock: Option<HeldLock>,
    ) -> Result<(), HandlerError> {
        let order = d.order_id;
        match &d.event {
            SagaEvent::OrderPlaced(e) => {
                if let Some(slot) = slot_of(e.slot_id.as_ref())? {
                    self.reservations
                        .hold(tx, order, slot, &d.follow_up(order))
                        .await?;
                }
            }
            SagaEvent::OrderCancelled(e) => {
                if let Some(slot) = slot_of(e.slot_id.as_ref())? {
                    self.reservations.cancel(tx, order, slot).await?;
                }
            }
            SagaEvent::OrderConfirmed(e) => {
                if slot_of(e.slot_id.as_ref())?.is_some() {
                    self.reservations.confirm(tx, order).await?;
                }
            }
            other => {
                return Err(HandlerError::permanent(format!(
                    "reservation does not handle {}",
                    other.event_type()
                )));
            }
        }
        Ok(())
    }

    async fn finish(&self, lock: Option<HeldLock>) {
        if let Some(lock) = lock {
            self.reservations.unlock(lock).await;
        }
    }
}
