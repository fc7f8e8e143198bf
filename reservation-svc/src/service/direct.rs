//! HoldSlot and ReleaseSlot: places in slots for direct callers, in an id
//! space of their own (`domain::direct_booking_id`), fenced like the saga's
//! holds by the same conditional update and the slot's CHECK constraint.

use uuid::Uuid;

use super::{ReservationError, Reservations, Result};
use crate::domain::{BookingState, DirectHold, direct_booking_id};
use crate::store::{self, HoldAttempt};

/// The hold as stored, if it answers a call for `slot`.
fn for_slot(hold: DirectHold, slot: Uuid) -> Result<DirectHold> {
    match hold.slot_id {
        Some(s) if s != slot => Err(ReservationError::HoldConflict {
            hold_id: hold.hold_id,
            why: format!("it holds slot {s}; a retry must name the same slot"),
        }),
        // The same slot, or released before it was held: as it stands.
        _ => Ok(hold),
    }
}

impl Reservations {
    /// HoldSlot: a place in `slot` for `hold_id`, or the answer given for
    /// `hold_id` before.
    pub async fn hold_direct(&self, hold_id: Uuid, slot: Uuid) -> Result<DirectHold> {
        let pool = &self.store().pool;
        let mut conn = pool.acquire().await?;
        if let Some(hold) = store::direct_hold(&mut conn, hold_id, false).await? {
            return for_slot(hold, slot);
        }
        if store::saga_booking_exists(&mut conn, hold_id).await? {
            return Err(ReservationError::BelongsToSaga(hold_id));
        }
        drop(conn);
        let mut tx = pool.begin().await?;
        let (state, reason) = match store::try_hold(&mut tx, slot).await? {
            HoldAttempt::Held => (BookingState::Held, None),
            HoldAttempt::Full => (BookingState::Rejected, Some("slot_full")),
            HoldAttempt::UnknownSlot => {
                return Err(ReservationError::NotFound(format!(
                    "slot_id: no slot {slot}"
                )));
            }
        };
        if store::insert_direct(&mut tx, hold_id, Some(slot), state, reason).await? {
            // Read before the commit: once the place is taken, nothing may
            // fail, or the caller would take the call (and its idempotency
            // key) for one that did nothing.
            let hold = store::direct_hold(&mut tx, hold_id, false)
                .await?
                .ok_or_else(|| ReservationError::Concurrent(direct_booking_id(hold_id)))?;
            tx.commit().await?;
            return for_slot(hold, slot);
        }
        // A call with the same hold_id committed first: ours takes nothing
        // (the rollback gives the place back), theirs answers.
        tx.rollback().await?;
        let mut conn = pool.acquire().await?;
        let hold = store::direct_hold(&mut conn, hold_id, false)
            .await?
            .ok_or_else(|| ReservationError::Concurrent(direct_booking_id(hold_id)))?;
        for_slot(hold, slot)
    }

    /// ReleaseSlot: gives the place of `hold_id` back; a hold_id never held
    /// leaves a tombstone, so that a late HoldSlot holds nothing.
    pub async fn release_direct(&self, hold_id: Uuid) -> Result<DirectHold> {
        let booking = direct_booking_id(hold_id);
        let mut tx = self.store().pool.begin().await?;
        store::lock_slot_of(&mut tx, booking).await?;
        match store::lock_booking(&mut tx, booking).await? {
            Some((BookingState::Held, Some(slot))) => {
                store::close_booking(&mut tx, booking, slot, BookingState::Released).await?;
            }
            Some(_) => {}
            None => {
                if store::saga_booking_exists(&mut tx, hold_id).await? {
                    return Err(ReservationError::BelongsToSaga(hold_id));
                }
                let tombstone = store::insert_direct(
                    &mut tx,
                    hold_id,
                    None,
                    BookingState::Released,
                    Some("released before any hold"),
                )
                .await?;
                if !tombstone {
                    // A hold committed meanwhile (the insert waited for it,
                    // holding nothing): release it, its slot locked first,
                    // as everywhere (docs/adr/0015).
                    store::lock_slot_of(&mut tx, booking).await?;
                    store::finish_held(&mut tx, booking, BookingState::Released).await?;
                }
            }
        }
        let hold = store::direct_hold(&mut tx, hold_id, false)
            .await?
            .ok_or(ReservationError::Concurrent(booking))?;
        tx.commit().await?;
        Ok(hold)
    }
}
