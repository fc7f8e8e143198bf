//! Inventory rules, free of I/O: products and their stock arithmetic, the
//! per-order hold state, what makes a request or an event's lines valid, and
//! when a Redis counter agrees with Postgres ([`redis_disagreements`]).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use saga_shared::validate::{self, FieldError};
use uuid::Uuid;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::Committed => "COMMITTED",
            Self::Released => "RELEASED",
            Self::Rejected => "REJECTED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Reserved,
            Self::Committed,
            Self::Released,
            Self::Rejected,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for OrderHoldState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
/// sorted by SKU, the order in which rows are locked.
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

/// A SKU's counter as Redis has it (for reconciliation, audits and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterView {
    pub avail: Option<i64>,
    pub epoch: Option<i64>,
    /// order id -> hold
    pub holds: BTreeMap<String, HoldView>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldView {
    pub qty: i64,
    /// When Redis granted it (ms since the epoch).
    pub granted_ms: i64,
}

/// What Postgres has of one SKU, as far as its Redis counter must agree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StockRecord {
    pub on_hand: i64,
    pub sold: i64,
    /// The counter epoch Postgres has.
    pub epoch: i64,
    /// Holds RESERVED: ledger id -> quantity.
    pub held: BTreeMap<String, i64>,
    /// Holds Postgres has decided (released or committed): ledger id ->
    /// what it decided.
    pub decided: BTreeMap<String, String>,
}

/// One way a Redis counter disagrees with Postgres.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disagreement {
    /// No counter (Redis was flushed, or it was never built).
    NoCounter,
    /// The counter is of another epoch than Postgres's: stale.
    StaleEpoch { redis: Option<i64>, postgres: i64 },
    /// Both hold for the order, different quantities.
    QuantityDiffers {
        order: String,
        redis: i64,
        postgres: i64,
    },
    /// Redis still holds for an order Postgres has decided.
    HeldAfterDecision {
        order: String,
        qty: i64,
        decided: String,
    },
    /// Redis holds for an order Postgres has never heard of, for longer
    /// than a reservation takes to be recorded.
    Orphan {
        order: String,
        qty: i64,
        grace: Duration,
    },
    /// Postgres holds for an order, Redis does not.
    MissingInRedis { order: String, qty: i64 },
    /// The count is off: `postgres` is what Postgres leaves free, before the
    /// holds in flight.
    Count {
        redis: i64,
        postgres: i64,
        in_flight: i64,
    },
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCounter => write!(f, "no counter in Redis (flushed, or never built)"),
            Self::StaleEpoch { redis, postgres } => write!(
                f,
                "the counter is of epoch {redis:?}, Postgres's is {postgres}: stale, not rebuilt"
            ),
            Self::QuantityDiffers {
                order,
                redis,
                postgres,
            } => write!(f, "Redis holds {redis} for {order}, Postgres {postgres}"),
            Self::HeldAfterDecision {
                order,
                qty,
                decided,
            } => write!(
                f,
                "Redis still holds {qty} for {order}, which Postgres has {decided}"
            ),
            Self::Orphan { order, qty, grace } => write!(
                f,
                "Redis holds {qty} for {order}, unknown to Postgres for over {grace:?}"
            ),
            Self::MissingInRedis { order, qty } => {
                write!(f, "Postgres holds {qty} for {order}, Redis nothing")
            }
            Self::Count {
                redis,
                postgres,
                in_flight,
            } => write!(
                f,
                "Redis says {redis} available, Postgres {postgres} less {in_flight} in flight"
            ),
        }
    }
}

/// How a Redis counter disagrees with Postgres, allowing for holds in
/// flight: a hold only Redis has is in flight (between its Redis grant and
/// its Postgres record) while Postgres has no decision for it and it is
/// younger than `grace`; it then counts against the free units. Empty: they
/// agree. The one rule the reconciler and the auditor both apply.
pub fn redis_disagreements(
    postgres: &StockRecord,
    redis: &CounterView,
    now_ms: i64,
    grace: Duration,
) -> Vec<Disagreement> {
    let Some(avail) = redis.avail else {
        return vec![Disagreement::NoCounter];
    };
    if redis.epoch != Some(postgres.epoch) {
        return vec![Disagreement::StaleEpoch {
            redis: redis.epoch,
            postgres: postgres.epoch,
        }];
    }
    let mut out = Vec::new();
    let grace_ms = grace.as_millis() as i64;
    let mut in_flight = 0;
    for (order, hold) in &redis.holds {
        match (postgres.held.get(order), postgres.decided.get(order)) {
            (Some(qty), _) if *qty != hold.qty => out.push(Disagreement::QuantityDiffers {
                order: order.clone(),
                redis: hold.qty,
                postgres: *qty,
            }),
            (Some(_), _) => {}
            (None, Some(decided)) => out.push(Disagreement::HeldAfterDecision {
                order: order.clone(),
                qty: hold.qty,
                decided: decided.clone(),
            }),
            (None, None) if now_ms - hold.granted_ms > grace_ms => out.push(Disagreement::Orphan {
                order: order.clone(),
                qty: hold.qty,
                grace,
            }),
            (None, None) => in_flight += hold.qty,
        }
    }
    for (order, qty) in &postgres.held {
        if !redis.holds.contains_key(order) {
            out.push(Disagreement::MissingInRedis {
                order: order.clone(),
                qty: *qty,
            });
        }
    }
    let free = postgres.on_hand - postgres.sold - postgres.held.values().sum::<i64>();
    if avail != free - in_flight {
        out.push(Disagreement::Count {
            redis: avail,
            postgres: free,
            in_flight,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(on_hand: i64, reserved: i64, sold: i64) -> Product {
        Product {
            sku: "A".into(),
            name: "a".into(),
            unit_price_cents: 100,
            on_hand,
            reserved,
            sold,
            version: 3,
        }
    }

    #[test]
    fn adjust_checks_version_range_and_commitments() {
        let p = product(10, 3, 2);
        assert_eq!(p.available(), 5);
        assert_eq!(adjust(&p, 5, 3), Ok(15));
        assert_eq!(adjust(&p, -5, 3), Ok(5));
        assert_eq!(
            adjust(&p, 1, 2),
            Err(AdjustError::StaleVersion {
                expected: 2,
                current: 3
            })
        );
        assert!(matches!(
            adjust(&p, -6, 3),
            Err(AdjustError::BelowCommitted { committed: 5, .. })
        ));
        assert!(matches!(
            adjust(&p, -11, 3),
            Err(AdjustError::OutOfRange { .. })
        ));
        assert!(matches!(
            adjust(&p, i64::MAX, 3),
            Err(AdjustError::OutOfRange { .. })
        ));
    }

    #[test]
    fn direct_reservations_never_share_a_ledger_id_with_an_order() {
        let id = Uuid::now_v7();
        assert_eq!(Holder::Order(id).ledger_id(), id);
        let direct = Holder::Direct(id).ledger_id();
        assert_ne!(direct, id);
        assert_eq!(
            direct.get_version_num(),
            5,
            "orders are v7, direct holds v5"
        );
        assert_eq!(Holder::Direct(id).ledger_id(), direct, "stable for retries");
        assert_ne!(Holder::Direct(Uuid::now_v7()).ledger_id(), direct);
    }

    #[test]
    fn order_lines_are_checked_and_sorted() {
        let lines = order_lines([("B".into(), 1), ("A".into(), 2)], 10).unwrap();
        assert_eq!(lines[0].sku, "A");
        assert!(order_lines(Vec::<(String, i64)>::new(), 10).is_err());
        assert_eq!(order_lines([("A".into(), 0)], 10).unwrap_err().sku, "A");
        assert!(order_lines([("A".into(), 1), ("A".into(), 1)], 10).is_err());
        assert!(order_lines([("A".into(), 1), ("B".into(), 1)], 1).is_err());
        assert!(order_lines([("a b".into(), 1)], 10).is_err());
    }

    #[test]
    fn adjust_requests_are_validated() {
        assert!(validate_adjust("A", 0, 1).unwrap_err().field == "delta");
        assert!(validate_adjust("A", 1, 0).unwrap_err().field == "expected_version");
        assert!(validate_adjust("", 1, 1).unwrap_err().field == "sku");
        assert!(validate_product("A", "Widget", -1).unwrap_err().field == "unit_price_cents");
        assert!(validate_product("A", "", 1).unwrap_err().field == "name");
    }

    fn record() -> StockRecord {
        StockRecord {
            on_hand: 10,
            sold: 3,
            epoch: 7,
            held: [("o1".to_owned(), 2)].into(),
            decided: BTreeMap::new(),
        }
    }

    fn counter(avail: i64, holds: &[(&str, i64, i64)]) -> CounterView {
        CounterView {
            avail: Some(avail),
            epoch: Some(7),
            holds: holds
                .iter()
                .map(|(order, qty, granted_ms)| {
                    (
                        (*order).to_owned(),
                        HoldView {
                            qty: *qty,
                            granted_ms: *granted_ms,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn redis_agrees_with_postgres_allowing_for_holds_in_flight() {
        let (now, grace) = (1_000_000, Duration::from_secs(10));
        let agree =
            |pg: &StockRecord, redis: &CounterView, now| redis_disagreements(pg, redis, now, grace);
        // 10 on hand, 3 sold, 2 held: 5 free.
        assert_eq!(agree(&record(), &counter(5, &[("o1", 2, 0)]), now), []);
        // A hold only Redis has, young and undecided, is in flight: it
        // counts against the free units...
        let in_flight = counter(4, &[("o1", 2, 0), ("o2", 1, now - 1_000)]);
        assert_eq!(agree(&record(), &in_flight, now), []);
        // ...and is an orphan once older than the grace period.
        assert_eq!(
            agree(&record(), &in_flight, now + 20_000),
            [
                Disagreement::Orphan {
                    order: "o2".into(),
                    qty: 1,
                    grace
                },
                Disagreement::Count {
                    redis: 4,
                    postgres: 5,
                    in_flight: 0
                }
            ]
        );
        // Never once Postgres has decided its order.
        let mut decided = record();
        decided.decided.insert("o2".into(), "COMMITTED".into());
        assert_eq!(
            agree(&decided, &in_flight, now)[0],
            Disagreement::HeldAfterDecision {
                order: "o2".into(),
                qty: 1,
                decided: "COMMITTED".into()
            }
        );
        assert!(
            agree(&decided, &in_flight, now)[0]
                .to_string()
                .contains("COMMITTED")
        );
    }

    #[test]
    fn each_way_redis_can_drift_from_postgres_is_named() {
        let (now, grace) = (1_000_000, Duration::from_secs(10));
        let differ = |redis: &CounterView| redis_disagreements(&record(), redis, now, grace);
        assert_eq!(differ(&CounterView::default()), [Disagreement::NoCounter]);
        let mut stale = counter(5, &[("o1", 2, 0)]);
        stale.epoch = Some(6);
        assert_eq!(
            differ(&stale),
            [Disagreement::StaleEpoch {
                redis: Some(6),
                postgres: 7
            }]
        );
        assert_eq!(
            differ(&counter(5, &[("o1", 3, 0)])),
            [Disagreement::QuantityDiffers {
                order: "o1".into(),
                redis: 3,
                postgres: 2
            }]
        );
        assert_eq!(
            differ(&counter(5, &[])),
            [Disagreement::MissingInRedis {
                order: "o1".into(),
                qty: 2
            }]
        );
        assert_eq!(
            differ(&counter(6, &[("o1", 2, 0)])),
            [Disagreement::Count {
                redis: 6,
                postgres: 5,
                in_flight: 0
            }]
        );
        assert_eq!(
            differ(&counter(6, &[("o1", 2, 0)]))[0].to_string(),
            "Redis says 6 available, Postgres 5 less 0 in flight"
        );
    }
}
