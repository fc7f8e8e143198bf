//! Payment rules, free of I/O.

use chrono::{DateTime, Utc};
use saga_shared::validate::{self, FieldError};
use uuid::Uuid;

pub const MAX_CUSTOMER_ID_LEN: usize = 64;
/// The most one top-up may add (10 billion in major units).
pub const MAX_TOP_UP_CENTS: i64 = 1_000_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wallet {
    pub customer_id: String,
    pub balance_cents: i64,
    pub topped_up_cents: i64,
    pub charged_cents: i64,
    pub refunded_cents: i64,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::Display, strum::IntoStaticStr, strum::VariantArray,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentState {
    /// Being taken, inside the transaction that settles it (never seen
    /// committed).
    Pending,
    Captured,
    Failed,
    Refunded,
    /// The order was cancelled before any charge; none will be taken.
    Voided,
}

impl PaymentState {
    /// Its name in APIs, events, metrics and messages.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum FailureReason {
    InsufficientFunds,
    CardDeclined,
}

impl FailureReason {
    /// Its name in APIs, events, metrics and messages.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
    pub state: PaymentState,
    pub failure_reason: Option<FailureReason>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Checks a customer id.
pub fn validate_customer(field: &str, customer_id: &str) -> Result<(), FieldError> {
    validate::ident(field, customer_id, MAX_CUSTOMER_ID_LEN)
}

/// Checks a top-up's fields.
pub fn validate_top_up(customer_id: &str, amount_cents: i64) -> Result<(), FieldError> {
    validate_customer("customer_id", customer_id)?;
    validate::range("amount_cents", amount_cents, 1, MAX_TOP_UP_CENTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_ups_are_checked() {
        assert!(validate_top_up("c-1", 100).is_ok());
        assert_eq!(validate_top_up("c-1", 0).unwrap_err().field, "amount_cents");
        assert_eq!(
            validate_top_up("c-1", -5).unwrap_err().field,
            "amount_cents"
        );
        assert_eq!(
            validate_top_up("c-1", MAX_TOP_UP_CENTS + 1)
                .unwrap_err()
                .field,
            "amount_cents"
        );
        assert_eq!(validate_top_up("", 1).unwrap_err().field, "customer_id");
    }
}
