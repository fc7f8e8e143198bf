//! Reservation's part in the repair loop (see `saga_shared::repair`): a
//! place still HELD for an order whose saga ended is released (cancelled) or
//! confirmed (confirmed), as `orders.cancelled` and `orders.confirmed` do.

use saga_shared::repair::Page;

use saga_shared::BoxError;
use saga_shared::repair::{Outcome, Participant};
use uuid::Uuid;

use crate::domain::BookingState;
use crate::service::Reservations;
use crate::store;

pub struct BookingRepair {
    reservations: Reservations,
}

impl BookingRepair {
    pub fn new(reservations: Reservations) -> Self {
        Self { reservations }
    }
}

impl Participant for BookingRepair {
    async fn open_orders(&self, page: Page) -> Result<Vec<Uuid>, BoxError> {
        Ok(store::held_bookings(&self.reservations.store().pool, page).await?)
    }

    async fn finish(&self, order: Uuid, outcome: Outcome) -> Result<bool, BoxError> {
        let to = match outcome {
            Outcome::Confirmed => BookingState::Confirmed,
            Outcome::Cancelled => BookingState::Released,
        };
        Ok(self.reservations.finish_held(order, to).await?)
    }
}
