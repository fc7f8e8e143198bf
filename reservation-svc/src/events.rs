//! Reservation's reactions to order events:
//! - `orders.placed` with a slot: take a place (under the slot's Redis lock,
//!   fenced by Postgres); `reservations.held` or `reservations.rejected`.
//! - `orders.cancelled`: give the place back, or leave a tombstone if the
//!   placement has not been seen yet.
//! - `orders.confirmed`: the held place is confirmed.

use saga_shared::bus::consumer::{Batch, event_uuid};
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
    /// Whether `prepare` takes the slot's Redis lock: only when events are
    /// applied one at a time (`bus.batch_size` 1). A batch locks its slots'
    /// rows in Postgres once, in one order (`lock_batch`), and a Redis lock
    /// taken per event and held until the batch ends would make the batch's
    /// other events for that slot wait out the whole lock wait.
    pub slot_locks: bool,
}

impl From<ReservationError> for HandlerError {
    fn from(e: ReservationError) -> Self {
        match e {
            ReservationError::Db(db) => db.into(),
            ReservationError::Concurrent(_) => HandlerError::Transient(Box::new(e)),
            ReservationError::Invalid(_)
            | ReservationError::NotFound(_)
            | ReservationError::CannotConfirm { .. }
            | ReservationError::BelongsToSaga(_)
            | ReservationError::HoldConflict { .. } => HandlerError::Permanent(Box::new(e)),
        }
    }
}

/// Whether an order event is about a slot: an order without one is none
/// of reservation's business (no transaction, no inbox row). A slot id
/// that is not a UUID does concern it: it is refused as invalid.
pub fn concerns(event: &SagaEvent) -> bool {
    match slot_id_of(event) {
        Some(slot) => slot.is_some_and(|s| !s.is_empty()),
        None => true,
    }
}

/// The slot field of an order event (`None` for other events).
fn slot_id_of(event: &SagaEvent) -> Option<Option<&String>> {
    match event {
        SagaEvent::OrderPlaced(e) => Some(e.slot_id.as_ref()),
        SagaEvent::OrderConfirmed(e) => Some(e.slot_id.as_ref()),
        SagaEvent::OrderCancelled(e) => Some(e.slot_id.as_ref()),
        _ => None,
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
    type Locked = ();

    const WANTS: &'static [EventType] = WANTS;

    fn concerns(&self, event: &SagaEvent) -> bool {
        concerns(event)
    }

    async fn lock_batch(&self, tx: &mut PgConnection, b: Batch<'_>) -> Result<(), HandlerError> {
        // A malformed id is refused when its event is applied.
        let slots = b.keys(|event| {
            slot_id_of(event)
                .flatten()
                .and_then(|s| Uuid::parse_str(s).ok())
        });
        Ok(self.reservations.lock_slots(tx, &slots).await?)
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn prepare(&self, d: &Delivery) -> Result<Option<HeldLock>, HandlerError> {
        match &d.event {
            SagaEvent::OrderPlaced(e) => match slot_of(e.slot_id.as_ref())? {
                Some(slot) if self.slot_locks => Ok(self.reservations.lock(slot).await),
                _ => Ok(None),
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
        _locked: &mut (),
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

#[cfg(test)]
mod tests {
    use saga_shared::proto::events::v1 as pb;

    use super::*;

    #[test]
    fn only_order_events_with_a_slot_concern_reservation() {
        let placed = |slot: Option<&str>| {
            SagaEvent::OrderPlaced(pb::OrderPlaced {
                slot_id: slot.map(str::to_owned),
                ..Default::default()
            })
        };
        assert!(!concerns(&placed(None)));
        assert!(!concerns(&placed(Some(""))));
        assert!(
            concerns(&placed(Some("not-a-uuid"))),
            "refused as invalid, not ignored"
        );
        assert!(concerns(&placed(Some(
            "0190aaaa-0000-7000-8000-000000000000"
        ))));
        let cancelled = SagaEvent::OrderCancelled(pb::OrderCancelled {
            slot_id: None,
            ..Default::default()
        });
        assert!(!concerns(&cancelled));
        let confirmed = SagaEvent::OrderConfirmed(pb::OrderConfirmed {
            slot_id: Some("0190aaaa-0000-7000-8000-000000000000".into()),
            ..Default::default()
        });
        assert!(concerns(&confirmed));
    }
}
