//! Inventory's rules, case by case.

use std::collections::BTreeMap;
use std::time::Duration;

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
