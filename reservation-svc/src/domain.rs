//! Slot rules, free of I/O.

use chrono::{DateTime, Utc};
use saga_shared::validate::{self, FieldError};
use uuid::Uuid;

pub const MAX_NAME_LEN: usize = 200;
pub const MAX_CAPACITY: i64 = 100_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub id: Uuid,
    pub name: String,
    pub capacity: i32,
    pub held: i32,
    pub confirmed: i32,
    pub created_at: DateTime<Utc>,
}

impl Slot {
    pub fn available(&self) -> i32 {
        self.capacity - self.held - self.confirmed
    }
}

/// Where an order's booking stands.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::Display, strum::IntoStaticStr, strum::VariantArray,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum BookingState {
    Held,
    Confirmed,
    /// Given back, or a tombstone for a placement not seen yet.
    Released,
    Rejected,
}

impl BookingState {
    /// Its name in APIs, events, metrics and messages.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The namespace of direct holds' booking ids (see [`direct_booking_id`]).
const DIRECT_HOLDS: Uuid = Uuid::from_u128(0x5a6a_0d1e_c7a4_4c1b_9e51_d1ec_7000_0002);

/// The booking id of a direct caller's `hold_id`: a UUIDv5, which never
/// equals an order id (UUIDv7), so no hold_id reaches a saga's booking
/// (docs/adr/0008, as for inventory's direct reservations).
pub fn direct_booking_id(hold_id: Uuid) -> Uuid {
    Uuid::new_v5(&DIRECT_HOLDS, hold_id.as_bytes())
}

/// A direct caller's place in a slot (HoldSlot / ReleaseSlot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectHold {
    pub hold_id: Uuid,
    /// None for a release that came before any hold (a tombstone).
    pub slot_id: Option<Uuid>,
    pub state: BookingState,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Checks a new slot's fields.
pub fn validate_new_slot(name: &str, capacity: i32) -> Result<(), FieldError> {
    validate::text("name", name, MAX_NAME_LEN)?;
    validate::range("capacity", i64::from(capacity), 1, MAX_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_slots_are_checked() {
        assert!(validate_new_slot("Mon 9-10", 5).is_ok());
        assert_eq!(validate_new_slot("x", 0).unwrap_err().field, "capacity");
        assert_eq!(
            validate_new_slot("x", 100_001).unwrap_err().field,
            "capacity"
        );
        assert_eq!(validate_new_slot("", 1).unwrap_err().field, "name");
    }
}
