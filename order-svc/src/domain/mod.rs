//! The order and its saga, as a state machine free of I/O.
//!
//! ```text
//! PENDING --(stock held, and slot held or none)--> RESERVED --(paid)--> CONFIRMED
//!    |                                                 |
//!    +--(stock or slot rejected, timeout, customer)--> CANCELLED <--(payment failed, timeout, customer)
//! ```
//!
//! [`Order::apply`] takes one input (a participant's event or a command) and
//! says what changed and which event the order now owes the others. Inputs
//! that come late, twice or out of order change nothing.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use saga_shared::validate::{self, FieldError};
use uuid::Uuid;

pub const MAX_SKU_LEN: usize = 64;
pub const MAX_CUSTOMER_ID_LEN: usize = 64;

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderState {
    Pending,
    Reserved,
    Confirmed,
    Cancelled,
}

impl OrderState {
    /// Its name in APIs, events, metrics and messages.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Confirmed | Self::Cancelled)
    }
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum CancelReason {
    OutOfStock,
    SlotUnavailable,
    PaymentDeclined,
    InsufficientFunds,
    Timeout,
    CustomerCancelled,
}

impl CancelReason {
    /// Its name in APIs, events, metrics and messages.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Where a participant stands for this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Not needed (an order without a slot).
    None,
    Pending,
    Done,
    Refused,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub sku: String,
    pub quantity: i64,
    /// Set when inventory holds the stock.
    pub unit_price_cents: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: String,
    pub state: OrderState,
    pub cancel_reason: Option<CancelReason>,
    pub slot_id: Option<Uuid>,
    pub lines: Vec<Line>,
    pub inventory: Part,
    pub slot: Part,
    pub payment: Part,
    pub total_cents: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
}

/// A request for a new order, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_id: String,
    /// (sku, quantity), in the client's order.
    pub items: Vec<(String, i64)>,
    pub slot_id: Option<Uuid>,
}

/// Limits on new orders.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_lines: usize,
    pub max_quantity: i64,
}

/// Checks a new order's fields: the first problem names its field.
pub fn validate_new_order(
    customer_id: &str,
    items: &[(String, i64)],
    slot_id: Option<&str>,
    limits: Limits,
) -> Result<NewOrder, FieldError> {
    validate::ident("customer_id", customer_id, MAX_CUSTOMER_ID_LEN)?;
    if items.is_empty() {
        return Err(FieldError::new("items", "at least one item is required"));
    }
    if items.len() > limits.max_lines {
        return Err(FieldError::new(
            "items",
            format!("at most {} items, got {}", limits.max_lines, items.len()),
        ));
    }
    let mut seen = HashSet::new();
    for (i, (sku, quantity)) in items.iter().enumerate() {
        validate::ident(&format!("items[{i}].sku"), sku, MAX_SKU_LEN)?;
        validate::range(
            &format!("items[{i}].quantity"),
            *quantity,
            1,
            limits.max_quantity,
        )?;
        if !seen.insert(sku.as_str()) {
            return Err(FieldError::new(
                format!("items[{i}].sku"),
                format!("{sku:?} appears more than once; put the whole quantity on one item"),
            ));
        }
    }
    let slot_id = slot_id.map(|s| validate::uuid("slot_id", s)).transpose()?;
    Ok(NewOrder {
        customer_id: customer_id.to_owned(),
        items: items.to_vec(),
        slot_id,
    })
}

/// Something the saga hears or is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Inventory holds every line, at these prices: (sku, quantity, unit price).
    StockHeld(Vec<(String, i64, i64)>),
    StockRejected,
    SlotHeld,
    SlotRejected,
    PaymentSucceeded,
    PaymentFailed(CancelReason),
    /// A customer's cancellation or a deadline.
    Cancel(CancelReason),
}

/// The event an order owes the other services after a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `orders.reserved`: charge this much.
    Reserved { amount_cents: i64 },
    /// `orders.confirmed`.
    Confirmed,
    /// `orders.cancelled`: compensate.
    Cancelled(CancelReason),
}

/// An input the order cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the order is CONFIRMED and can no longer be cancelled")]
    AlreadyConfirmed,
    #[error("inventory held lines that do not match the order: {0}")]
    LinesMismatch(String),
    #[error("the order total overflows")]
    TotalOverflow,
}

/// What an input did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The order changed (and must be saved).
    pub changed: bool,
    pub effect: Option<Effect>,
}

impl Outcome {
    const NOTHING: Outcome = Outcome {
        changed: false,
        effect: None,
    };

    fn changed(effect: Option<Effect>) -> Self {
        Outcome {
            changed: true,
            effect,
        }
    }
}

impl Order {
    /// A new PENDING order.
    pub fn place(id: Uuid, new: NewOrder, now: DateTime<Utc>, deadline_at: DateTime<Utc>) -> Self {
        Order {
            id,
            customer_id: new.customer_id,
            state: OrderState::Pending,
            cancel_reason: None,
            slot: if new.slot_id.is_some() {
                Part::Pending
            } else {
                Part::None
            },
            slot_id: new.slot_id,
            lines: new
                .items
                .into_iter()
                .map(|(sku, quantity)| Line {
                    sku,
                    quantity,
                    unit_price_cents: None,
                })
                .collect(),
            inventory: Part::Pending,
            payment: Part::Pending,
            total_cents: None,
            created_at: now,
            updated_at: now,
            deadline_at,
        }
    }

    /// Applies one input.
    pub fn apply(&mut self, input: Input) -> Result<Outcome, Refusal> {
        use OrderState::*;
        match (self.state, input) {
            (Pending, Input::StockHeld(held)) if self.inventory == Part::Pending => {
                self.price_lines(&held)?;
                self.inventory = Part::Done;
                self.try_reserve()
            }
            (Pending, Input::SlotHeld) if self.slot == Part::Pending => {
                self.slot = Part::Done;
                self.try_reserve()
            }
            (Pending, Input::StockRejected) => {
                self.inventory = Part::Refused;
                Ok(self.cancel(CancelReason::OutOfStock))
            }
            (Pending, Input::SlotRejected) => {
                self.slot = Part::Refused;
                Ok(self.cancel(CancelReason::SlotUnavailable))
            }
            (Reserved, Input::PaymentSucceeded) => {
                self.payment = Part::Done;
                self.state = Confirmed;
                Ok(Outcome::changed(Some(Effect::Confirmed)))
            }
            (Reserved, Input::PaymentFailed(reason)) => {
                self.payment = Part::Refused;
                Ok(self.cancel(reason))
            }
            (Pending | Reserved, Input::Cancel(reason)) => Ok(self.cancel(reason)),
            (Confirmed, Input::Cancel(_)) => Err(Refusal::AlreadyConfirmed),
            // Duplicates, and news that no longer matter (a hold or a
            // payment for a cancelled order is compensated by its service
            // when it sees `orders.cancelled`).
            _ => Ok(Outcome::NOTHING),
        }
    }

    fn price_lines(&mut self, held: &[(String, i64, i64)]) -> Result<(), Refusal> {
        if held.len() != self.lines.len() {
            return Err(Refusal::LinesMismatch(format!(
                "{} lines held for {} ordered",
                held.len(),
                self.lines.len()
            )));
        }
        let mut priced = self.lines.clone();
        for line in &mut priced {
            let Some((_, qty, price)) = held.iter().find(|(sku, _, _)| *sku == line.sku) else {
                return Err(Refusal::LinesMismatch(format!("{} not held", line.sku)));
            };
            if *qty != line.quantity || *price < 0 {
                return Err(Refusal::LinesMismatch(format!(
                    "{}: {qty} held at {price} for {} ordered",
                    line.sku, line.quantity
                )));
            }
            line.unit_price_cents = Some(*price);
        }
        let total = priced.iter().try_fold(0i64, |acc, l| {
            l.unit_price_cents
                .and_then(|p| p.checked_mul(l.quantity))
                .and_then(|v| acc.checked_add(v))
        });
        self.total_cents = Some(total.ok_or(Refusal::TotalOverflow)?);
        self.lines = priced;
        Ok(())
    }

    fn try_reserve(&mut self) -> Result<Outcome, Refusal> {
        let slot_ready = matches!(self.slot, Part::None | Part::Done);
        if self.inventory == Part::Done && slot_ready {
            self.state = OrderState::Reserved;
            let amount_cents = self.total_cents.ok_or(Refusal::TotalOverflow)?;
            return Ok(Outcome::changed(Some(Effect::Reserved { amount_cents })));
        }
        Ok(Outcome::changed(None))
    }

    /// Stamps a change made at `now`. `updated_at` only moves forward, by
    /// a microsecond (what Postgres keeps) at least, even when `now` is
    /// earlier: instances' clocks differ and step back, and a watcher or a
    /// client resuming after the last time it saw tells a change from no
    /// change by this time alone.
    pub fn touch(&mut self, now: DateTime<Utc>) {
        self.updated_at = now.max(self.updated_at + chrono::TimeDelta::microseconds(1));
    }

    fn cancel(&mut self, reason: CancelReason) -> Outcome {
        self.state = OrderState::Cancelled;
        self.cancel_reason = Some(reason);
        Outcome::changed(Some(Effect::Cancelled(reason)))
    }
}

/// Which orders a list shows.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub customer_id: Option<String>,
    pub state: Option<OrderState>,
    /// Only orders older than this id (the previous page's last).
    pub before: Option<Uuid>,
}

#[cfg(test)]
mod tests;
