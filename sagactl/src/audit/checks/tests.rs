use std::collections::HashMap;
use std::time::Duration;

use inventory_svc::store::cache::{CounterView, HoldView};
use uuid::Uuid;

use super::*;
use crate::audit::facts::{
    HoldFacts, Movement, OrderFacts, PaymentFacts, SkuFacts, SlotFacts, WalletFacts,
};
use crate::audit::{Check, Violation};

fn sku() -> SkuFacts {
    SkuFacts {
        sku: "A".into(),
        on_hand: 10,
        reserved: 2,
        sold: 3,
        epoch: 7,
        ledger_held: 2,
        ledger_committed: 3,
        pg_holds: [("o1".to_owned(), 2)].into(),
        redis: Some(CounterView {
            avail: Some(5),
            epoch: Some(7),
            holds: [(
                "o1".to_owned(),
                HoldView {
                    qty: 2,
                    granted_ms: 0,
                },
            )]
            .into(),
        }),
        decided: HashMap::new(),
    }
}

fn checks(v: &[Violation]) -> Vec<Check> {
    v.iter().map(|v| v.check).collect()
}

#[test]
fn a_consistent_sku_passes_and_each_kind_of_drift_is_named() {
    let now = 1_000_000;
    let grace = Duration::from_secs(10);
    assert!(check_stock(&sku()).is_empty());
    assert!(check_redis(&sku(), now, grace).is_empty());

    let mut s = sku();
    s.reserved = 3;
    assert_eq!(checks(&check_stock(&s)), [Check::StockConservation]);
    s.sold = 8;
    assert!(
        check_stock(&s)
            .iter()
            .any(|v| v.detail.contains("oversold"))
    );

    let mut flushed = sku();
    flushed.redis = Some(CounterView::default());
    assert!(
        check_redis(&flushed, now, grace)[0]
            .detail
            .contains("no counter")
    );
    let mut stale = sku();
    stale.redis.as_mut().unwrap().epoch = Some(6);
    assert!(check_redis(&stale, now, grace)[0].detail.contains("stale"));

    let mut resized = sku();
    resized
        .redis
        .as_mut()
        .unwrap()
        .holds
        .get_mut("o1")
        .unwrap()
        .qty = 3;
    assert!(!check_redis(&resized, now, grace).is_empty());

    // A hold only Redis has: in flight while young and undecided...
    let mut young = sku();
    let view = young.redis.as_mut().unwrap();
    view.holds.insert(
        "o2".into(),
        HoldView {
            qty: 1,
            granted_ms: now - 1_000,
        },
    );
    view.avail = Some(4);
    assert!(check_redis(&young, now, grace).is_empty());
    // ...never once Postgres has decided its order...
    let mut closed = young.clone();
    closed.decided.insert("o2".into(), "COMMITTED".into());
    assert!(
        check_redis(&closed, now, grace)[0]
            .detail
            .contains("COMMITTED")
    );
    // ...nor once older than the grace period.
    assert!(!check_redis(&young, now + 20_000, grace).is_empty());

    let mut pinned = sku();
    pinned.redis = None;
    assert!(check_redis(&pinned, now, grace).is_empty(), "not checked");
}

fn order() -> OrderFacts {
    OrderFacts {
        id: Uuid::nil(),
        state: "CONFIRMED".into(),
        customer: "c".into(),
        slot: None,
        total: Some(500),
        overdue: false,
        lines: vec![("A".into(), 2, Some(250))],
        stock: Some("COMMITTED".into()),
        holds: vec![HoldFacts {
            sku: "A".into(),
            quantity: 2,
            unit_price: 250,
            state: "COMMITTED".into(),
            decision: "COMMITTED".into(),
        }],
        booking: None,
        payment: Some(PaymentFacts {
            state: "CAPTURED".into(),
            amount: 500,
            customer: "c".into(),
        }),
        ledger: vec![Movement {
            kind: "CHARGE".into(),
            amount: 500,
            customer: "c".into(),
        }],
    }
}

#[test]
fn a_complete_order_passes_and_each_inconsistency_is_named() {
    assert_eq!(check_order(&order()), Vec::new());

    let mut twice = order();
    twice.ledger.push(twice.ledger[0].clone());
    assert!(checks(&check_order(&twice)).contains(&Check::ChargesMatchPayments));

    let mut stranger = order();
    stranger.ledger[0].customer = "d".into();
    assert_eq!(
        checks(&check_charges(&stranger)),
        [Check::ChargesMatchPayments]
    );

    let mut failed = order();
    failed.state = "CANCELLED".into();
    failed.payment.as_mut().unwrap().state = "FAILED".into();
    failed.stock = Some("RELEASED".into());
    assert!(checks(&check_order(&failed)).contains(&Check::ChargesMatchPayments));
    assert!(checks(&check_order(&failed)).contains(&Check::CancelledCompensated));

    let mut more = order();
    more.holds[0].quantity = 3;
    assert_eq!(checks(&check_holds(&more)), [Check::HoldsMatchOrders]);
    let mut repriced = order();
    repriced.holds[0].unit_price = 200;
    assert_eq!(checks(&check_holds(&repriced)), [Check::HoldsMatchOrders]);

    // A hold left open behind its decision: the order was cancelled and
    // inventory's decision says RELEASED, but the hold still counts in
    // `reserved` (stock conservation and Redis both agree with it).
    let mut leaked = order();
    leaked.state = "CANCELLED".into();
    leaked.payment.as_mut().unwrap().state = "REFUNDED".into();
    leaked.ledger.push(Movement {
        kind: "REFUND".into(),
        amount: 500,
        customer: "c".into(),
    });
    leaked.stock = Some("RELEASED".into());
    leaked.holds[0].decision = "RELEASED".into();
    leaked.holds[0].state = "RESERVED".into();
    assert_eq!(checks(&check_order(&leaked)), [Check::HoldsMatchOrders]);
    leaked.holds[0].state = "RELEASED".into();
    assert_eq!(check_order(&leaked), Vec::new());

    let mut total = order();
    total.total = Some(499);
    assert!(checks(&check_total(&total)) == [Check::TotalsMatchPrices]);

    let mut stuck = order();
    stuck.state = "PENDING".into();
    stuck.overdue = true;
    assert_eq!(checks(&check_outcome(&stuck)), [Check::NoOrderStuck]);
}

#[test]
fn wallets_slots_outboxes_and_the_dlq_are_checked_by_their_counts() {
    let wallet = WalletFacts {
        customer: "c".into(),
        balance: 70,
        topups: 100,
        charges: 50,
        refunds: 20,
    };
    assert!(check_wallet(&wallet).is_empty());
    let drifted = WalletFacts {
        balance: 71,
        ..wallet
    };
    assert_eq!(
        check_wallet(&drifted)[0].to_string(),
        "wallet conservation: c: balance 71 != top-ups 100 - charges 50 + refunds 20"
    );

    let slot = SlotFacts {
        id: Uuid::nil(),
        capacity: 3,
        held: 1,
        confirmed: 2,
        booked_held: 1,
        booked_confirmed: 2,
    };
    assert!(check_slot(&slot).is_empty());
    let overbooked = SlotFacts { held: 2, ..slot };
    assert_eq!(
        checks(&check_slot(&overbooked)),
        [Check::SlotCapacity, Check::SlotCapacity]
    );

    assert_eq!(
        checks(&check_unknown_orders(&[Uuid::nil()])),
        [Check::ChargesMatchPayments]
    );
    assert!(check_outbox("order-svc", 0).is_empty());
    assert_eq!(
        checks(&check_outbox("order-svc", 2)),
        [Check::OutboxDrained]
    );
    assert!(check_dead_letters(0, "dlq").is_empty());
    assert_eq!(
        checks(&check_dead_letters(1, "dlq")),
        [Check::DeadLettersHandled]
    );
}
