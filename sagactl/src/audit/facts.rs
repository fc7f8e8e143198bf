//! The facts an audit gathers: plain data, as `read` finds them in
//! the services' stores and as the checks take them.

use std::collections::{BTreeMap, HashMap};

use inventory_svc::store::cache::CounterView;
use uuid::Uuid;

/// A SKU as Postgres and Redis have it.
#[derive(Clone, Debug, Default)]
pub struct SkuFacts {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub sold: i64,
    pub epoch: i64,
    /// Sums over the ledger of holds.
    pub ledger_held: i64,
    pub ledger_committed: i64,
    /// Holds Postgres has RESERVED: ledger id -> quantity.
    pub pg_holds: BTreeMap<String, i64>,
    /// The Redis counter (None: not checked).
    pub redis: Option<CounterView>,
    /// For holds Redis has and Postgres does not hold: the decision
    /// Postgres has for their ledger id, if any.
    pub decided: HashMap<String, String>,
}

/// A payment row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentFacts {
    pub state: String,
    pub amount: i64,
    pub customer: String,
}

/// One ledger movement of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movement {
    /// CHARGE or REFUND.
    pub kind: String,
    pub amount: i64,
    pub customer: String,
}

/// An order line: SKU, quantity, unit price if priced.
pub type LineFacts = (String, i64, Option<i64>);

/// One of inventory's holds of an order, and the order's decision row as
/// the same statement read it (so a hold and its decision are never seen at
/// two moments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldFacts {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: i64,
    /// RESERVED, COMMITTED or RELEASED.
    pub state: String,
    /// The state of the order's decision (`order_holds`).
    pub decision: String,
}

/// An order and what each participant has of it.
#[derive(Clone, Debug, Default)]
pub struct OrderFacts {
    pub id: Uuid,
    pub state: String,
    pub customer: String,
    pub slot: Option<Uuid>,
    pub total: Option<i64>,
    pub overdue: bool,
    pub lines: Vec<LineFacts>,
    /// Inventory's decision.
    pub stock: Option<String>,
    /// Inventory's holds of the order, one per SKU.
    pub holds: Vec<HoldFacts>,
    pub booking: Option<String>,
    pub payment: Option<PaymentFacts>,
    pub ledger: Vec<Movement>,
}

impl OrderFacts {
    pub(super) fn net_charge(&self) -> i64 {
        self.ledger
            .iter()
            .map(|m| {
                if m.kind == "CHARGE" {
                    m.amount
                } else {
                    -m.amount
                }
            })
            .sum()
    }
}

/// A wallet's balance and the sums of its ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletFacts {
    pub customer: String,
    pub balance: i64,
    pub topups: i64,
    pub charges: i64,
    pub refunds: i64,
}

/// A slot's counts and its bookings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotFacts {
    pub id: Uuid,
    pub capacity: i32,
    pub held: i32,
    pub confirmed: i32,
    /// Bookings HELD and CONFIRMED.
    pub booked_held: i32,
    pub booked_confirmed: i32,
}
