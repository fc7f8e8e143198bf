//! Inventory rules, free of I/O: products and their stock arithmetic, the
//! per-order hold state, what makes a request or an event's lines valid, and
//! when a Redis counter agrees with Postgres ([`redis_disagreements`]).

use std::collections::HashSet;

use saga_shared::validate::{self, FieldError};
use uuid::Uuid;

mod counter;

pub use counter::{CounterView, Disagreement, HoldView, StockRecord, redis_disagreements};

pub const MAX_SKU_LEN: usize = 64;
pub const MAX_NAME_LEN: usize = 200;
/// 10 million in major units.
pub const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000;
pub const MAX_ON_HAND: i64 = 1_000_000_000_000;

/// A catalog entry and its stock, as Postgres has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub unit_price_cents: i64,
    pub on_hand: i64,
    pub reserved: i64,
    pub sold: i64,
    pub version: i64,
}

impl Product {
    /// on_hand = available + reserved + sold.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved - self.sold
    }
}

/// One line of an order: a SKU and how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub sku: String,
    pub quantity: i64,
}

/// Whose holds: an order's saga, or a direct caller's reservation
/// (ReserveStock and friends). The two live in separate id spaces of the
/// ledger, so that no direct call can reach a saga's holds whatever id it
/// names (docs/adr/0008).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// The saga of this order: its ledger id is the order id.
    Order(Uuid),
    /// A direct reservation under the caller's id.
    Direct(Uuid),
}

/// Names the ledger ids of direct reservations (UUIDv5 of the caller's id in
/// this namespace). Order ids are UUIDv7: the two never meet.
const DIRECT_RESERVATIONS: Uuid = Uuid::from_u128(0x5a6a_0d1e_c7a4_4c1b_9e51_d1ec_7000_0001);

impl Holder {
    /// The id under which the ledger (Postgres and Redis) keeps the holds.
    pub fn ledger_id(&self) -> Uuid {
        match self {
            Holder::Order(id) => *id,
            Holder::Direct(id) => Uuid::new_v5(&DIRECT_RESERVATIONS, id.as_bytes()),
        }
    }

    /// Its kind as the ledger spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Holder::Order(_) => "saga",
            Holder::Direct(_) => "direct",
        }
    }

    /// The caller's id, for a direct reservation.
    pub fn reservation_id(&self) -> Option<Uuid> {
        match self {
            Holder::Order(_) => None,
            Holder::Direct(id) => Some(*id),
        }
    }
}

/// What inventory decided for an order.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::Display, strum::IntoStaticStr, strum::VariantArray,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderHoldState {
    /// Every line is held.
    Reserved,
    /// The holds became sales (the order was confirmed).
    Committed,
    /// The holds were given back, or the cancellation came first (tombstone).
    Released,
    /// Nothing was held.
    Rejected,
}

impl OrderHoldState {
    /// Its name in APIs, events, metrics and messages.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Checks a catalog entry.
pub fn validate_product(sku: &str, name: &str, unit_price_cents: i64) -> Result<(), FieldError> {
    validate::ident("sku", sku, MAX_SKU_LEN)?;
    validate::text("name", name, MAX_NAME_LEN)?;
    validate::range(
        "unit_price_cents",
        unit_price_cents,
        0,
        MAX_UNIT_PRICE_CENTS,
    )
}

/// Why a stock adjustment is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdjustError {
    #[error("expected_version {expected} is stale: the current version is {current}")]
    StaleVersion { expected: i64, current: i64 },
    #[error("delta {delta} would take on_hand from {on_hand} outside 0..={MAX_ON_HAND}")]
    OutOfRange { on_hand: i64, delta: i64 },
    #[error(
        "delta {delta} would leave {new_on_hand} on hand, fewer than the {committed} units reserved or sold"
    )]
    BelowCommitted {
        delta: i64,
        new_on_hand: i64,
        committed: i64,
    },
}

/// Checks an adjustment request's fields.
pub fn validate_adjust(sku: &str, delta: i64, expected_version: i64) -> Result<(), FieldError> {
    validate::ident("sku", sku, MAX_SKU_LEN)?;
    if delta == 0 {
        return Err(FieldError::new("delta", "must not be 0"));
    }
    validate::range("delta", delta, -MAX_ON_HAND, MAX_ON_HAND)?;
    validate::range("expected_version", expected_version, 1, i64::MAX)
}

/// The new on_hand after `delta`, if `expected_version` is current and the
/// result keeps every reserved and sold unit covered.
pub fn adjust(product: &Product, delta: i64, expected_version: i64) -> Result<i64, AdjustError> {
    if product.version != expected_version {
        return Err(AdjustError::StaleVersion {
            expected: expected_version,
            current: product.version,
        });
    }
    let new_on_hand = product
        .on_hand
        .checked_add(delta)
        .filter(|n| (0..=MAX_ON_HAND).contains(n))
        .ok_or(AdjustError::OutOfRange {
            on_hand: product.on_hand,
            delta,
        })?;
    let committed = product.reserved + product.sold;
    if new_on_hand < committed {
        return Err(AdjustError::BelowCommitted {
            delta,
            new_on_hand,
            committed,
        });
    }
    Ok(new_on_hand)
}

/// Why an order's lines cannot be held at all (the order is rejected).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidLines {
    /// The first offending SKU (may be empty).
    pub sku: String,
    pub reason: String,
}

/// Checks the lines of an `orders.placed` event: at least one, at most
/// `max_lines`, valid SKUs without repeats, positive quantities. Returns them
/// sorted by SKU (byte order: one answer for the same lines, whatever order
/// they came in; the database locks rows in its own collation's order, which
/// the stores ask it for, not this one).
pub fn order_lines(
    lines: impl IntoIterator<Item = (String, i64)>,
    max_lines: usize,
) -> Result<Vec<Line>, InvalidLines> {
    let mut out: Vec<Line> = Vec::new();
    let mut seen = HashSet::new();
    for (sku, quantity) in lines {
        let bad = |reason: String| InvalidLines {
            sku: sku.clone(),
            reason,
        };
        if let Err(e) = validate::ident("sku", &sku, MAX_SKU_LEN) {
            return Err(bad(e.to_string()));
        }
        if !(1..=MAX_ON_HAND).contains(&quantity) {
            return Err(bad(format!("quantity {quantity} out of range")));
        }
        if !seen.insert(sku.clone()) {
            return Err(bad("SKU appears twice".into()));
        }
        out.push(Line { sku, quantity });
    }
    if out.is_empty() {
        return Err(InvalidLines {
            sku: String::new(),
            reason: "no lines".into(),
        });
    }
    if out.len() > max_lines {
        return Err(InvalidLines {
            sku: String::new(),
            reason: format!("{} lines, at most {max_lines}", out.len()),
        });
    }
    out.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok(out)
}

#[cfg(test)]
mod tests;
