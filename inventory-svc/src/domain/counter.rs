//! When a Redis counter agrees with Postgres: the one rule the reconciler
//! and the auditor both apply.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

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
