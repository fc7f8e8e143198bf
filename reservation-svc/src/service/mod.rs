//! The reservation application: what the gRPC API, the event handlers and
//! the repair loop do, in terms of the store (Postgres) and the slot locks
//! (Redis). Each saga use-case runs in the caller's transaction and writes
//! the event it owes through the outbox there.

mod direct;
pub mod repair;

use saga_shared::bus::{EventMeta, Outbox, SagaEvent};
use saga_shared::proto::events::v1 as pb;
use saga_shared::validate::FieldError;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, BookingState, Slot};
use crate::store::lock::SlotLocks;
use crate::store::{self, HoldAttempt, Store};

pub use crate::store::lock::HeldLock;

/// Why a reservation operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    /// The order's booking was decided by another transaction meanwhile.
    #[error("the booking of order {0} was decided concurrently")]
    Concurrent(Uuid),
    /// A confirmation the booking cannot take (never held, or released).
    #[error("order {order} confirmed but its booking is {state}")]
    CannotConfirm { order: Uuid, state: String },
    #[error(
        "hold_id {0} is the id of an order's saga; direct calls cannot touch a saga's booking: use an id of your own"
    )]
    BelongsToSaga(Uuid),
    #[error("hold_id {hold_id}: {why}")]
    HoldConflict { hold_id: Uuid, why: String },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

pub type Result<T, E = ReservationError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Reservations {
    store: Store,
    locks: SlotLocks,
}

impl Reservations {
    /// Locks `slots` in one order, first in a batch's transaction, so that
    /// batches never deadlock on them.
    pub async fn lock_slots(&self, tx: &mut PgConnection, slots: &[Uuid]) -> sqlx::Result<()> {
        store::lock_slots(tx, slots).await
    }

    pub fn new(store: Store, locks: SlotLocks) -> Self {
        Self { store, locks }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn slot(&self, id: Uuid) -> Result<Slot> {
        self.store
            .slot(id)
            .await?
            .ok_or_else(|| ReservationError::NotFound(format!("slot_id: no slot {id}")))
    }

    /// A page of slots after `after`, oldest first.
    pub async fn slots(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<Slot>> {
        Ok(self.store.list(after, limit).await?)
    }

    /// Creates a slot in the caller's transaction.
    pub async fn create_slot_in(
        &self,
        tx: &mut PgConnection,
        name: &str,
        capacity: i32,
    ) -> Result<Slot> {
        domain::validate_new_slot(name, capacity)?;
        Ok(store::insert_slot(tx, Uuid::now_v7(), name.trim(), capacity).await?)
    }

    /// Takes the slot's lock before a booking's transaction, keeping
    /// contenders off its row; `None` if it could not be had in time (the
    /// booking goes ahead: Postgres fences).
    pub async fn lock(&self, slot: Uuid) -> Option<HeldLock> {
        self.locks.acquire(slot).await.ok()
    }

    pub async fn unlock(&self, lock: HeldLock) {
        self.locks.release(lock).await;
    }

    /// Takes a place for `order` in `slot` if it has one free, and writes
    /// `reservations.held` or `reservations.rejected` with `meta`. Does
    /// nothing if the order already has a booking (a duplicate, or the
    /// cancellation came first).
    pub async fn hold(
        &self,
        tx: &mut PgConnection,
        order: Uuid,
        slot: Uuid,
        meta: &EventMeta,
    ) -> Result<()> {
        if store::lock_booking(tx, order).await?.is_some() {
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
            return Err(ReservationError::Concurrent(order));
        }
        Outbox::enqueue(tx, meta, &event).await?;
        Ok(())
    }

    /// The order was cancelled: gives its place back, or leaves a tombstone
    /// so that a late placement holds nothing.
    pub async fn cancel(&self, tx: &mut PgConnection, order: Uuid, slot: Uuid) -> Result<()> {
        let tombstone = store::insert_booking(
            tx,
            order,
            Some(slot),
            BookingState::Released,
            Some("cancelled before placement"),
        )
        .await?;
        if !tombstone {
            store::finish_held(tx, order, BookingState::Released).await?;
        }
        Ok(())
    }

    /// The order was confirmed: its held place is taken for good.
    pub async fn confirm(&self, tx: &mut PgConnection, order: Uuid) -> Result<()> {
        match store::lock_booking(tx, order).await? {
            Some((BookingState::Held, Some(slot))) => {
                store::close_booking(tx, order, slot, BookingState::Confirmed).await?;
                Ok(())
            }
            Some((BookingState::Confirmed, _)) => Ok(()),
            Some((state, _)) => Err(ReservationError::CannotConfirm {
                order,
                state: state.to_string(),
            }),
            None => Err(ReservationError::CannotConfirm {
                order,
                state: "never held".into(),
            }),
        }
    }

    /// Ends a HELD booking as its saga ended (the repair loop); false if it
    /// is not HELD (any more).
    pub async fn finish_held(&self, order: Uuid, to: BookingState) -> Result<bool> {
        let mut tx = self.store.pool.begin().await?;
        store::lock_slot_of(&mut tx, order).await?;
        let finished = store::finish_held(&mut tx, order, to).await?;
        tx.commit().await?;
        Ok(finished)
    }
}
