//! Reservation's part in the repair loop (see `saga_shared::repair`): a
//! place still HELD for an order whose saga ended is released (cancelled) or
//! confirmed (confirmed), as `orders.cancelled` and `orders.confirmed` do.

use std::time::Duration;

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
    async fn open_orders(
        &self,
        older_than: Duration,
        after: Uuid,
        limit: usize,
    ) -> Result<Vec<Uuid>, BoxError> {
        let pool = self.reservations.store().pool();
        Ok(store::held_bookings(pool, older_than, after, limit as i64).await?)
    }

    async fn finish(&self, ended: Vec<(Uuid, Outcome)>) -> Result<usize, BoxError> {
        let mut finished = 0;
        for (order, outcome) in ended {
            let to = match outcome {
                Outcome::Confirmed => BookingState::Confirmed,
                Outcome::Cancelled => BookingState::Released,
            };
            if self.reservations.finish_held(order, to).await? {
                finished += 1;
            }
        }
        Ok(finished)
    }
}
