//! The order state machine's rules, case by case, and property tests.

use super::*;
use chrono::TimeDelta;

const LIMITS: Limits = Limits {
    max_lines: 3,
    max_quantity: 10,
};

fn order(slot: bool) -> Order {
    let now = Utc::now();
    Order::place(
        Uuid::now_v7(),
        NewOrder {
            customer_id: "c".into(),
            items: vec![("A".into(), 2), ("B".into(), 1)],
            slot_id: slot.then(Uuid::now_v7),
        },
        now,
        now,
    )
}

fn held() -> Input {
    Input::StockHeld(vec![("B".into(), 1, 50), ("A".into(), 2, 100)])
}

#[test]
fn happy_path_with_a_slot() {
    let mut o = order(true);
    assert_eq!(o.apply(held()).unwrap(), Outcome::changed(None));
    assert_eq!(o.state, OrderState::Pending);
    let out = o.apply(Input::SlotHeld).unwrap();
    assert_eq!(out.effect, Some(Effect::Reserved { amount_cents: 250 }));
    assert_eq!(o.state, OrderState::Reserved);
    assert_eq!(
        o.apply(Input::PaymentSucceeded).unwrap().effect,
        Some(Effect::Confirmed)
    );
    assert_eq!(o.state, OrderState::Confirmed);
    assert_eq!(o.lines[0].unit_price_cents, Some(100));
}

#[test]
fn slot_first_then_stock() {
    let mut o = order(true);
    assert_eq!(o.apply(Input::SlotHeld).unwrap().effect, None);
    assert!(matches!(
        o.apply(held()).unwrap().effect,
        Some(Effect::Reserved { .. })
    ));
}

#[test]
fn without_a_slot_stock_is_enough() {
    let mut o = order(false);
    assert!(matches!(
        o.apply(held()).unwrap().effect,
        Some(Effect::Reserved { .. })
    ));
}

#[test]
fn each_refusal_cancels_with_its_reason() {
    let cases = [
        (vec![Input::StockRejected], CancelReason::OutOfStock),
        (vec![Input::SlotRejected], CancelReason::SlotUnavailable),
        (
            vec![
                held(),
                Input::SlotHeld,
                Input::PaymentFailed(CancelReason::PaymentDeclined),
            ],
            CancelReason::PaymentDeclined,
        ),
        (
            vec![
                held(),
                Input::SlotHeld,
                Input::PaymentFailed(CancelReason::InsufficientFunds),
            ],
            CancelReason::InsufficientFunds,
        ),
        (
            vec![held(), Input::Cancel(CancelReason::Timeout)],
            CancelReason::Timeout,
        ),
    ];
    for (inputs, reason) in cases {
        let mut o = order(true);
        let mut last = None;
        for i in inputs {
            last = o.apply(i).unwrap().effect;
        }
        assert_eq!(last, Some(Effect::Cancelled(reason)));
        assert_eq!(o.state, OrderState::Cancelled);
        assert_eq!(o.cancel_reason, Some(reason));
    }
}

#[test]
fn late_and_duplicate_news_change_nothing() {
    let mut o = order(true);
    o.apply(Input::SlotRejected).unwrap();
    let before = o.clone();
    for i in [
        held(),
        Input::SlotHeld,
        Input::PaymentSucceeded,
        Input::StockRejected,
    ] {
        assert_eq!(o.apply(i).unwrap(), Outcome::NOTHING);
    }
    assert_eq!(o, before);
    assert_eq!(
        o.apply(Input::Cancel(CancelReason::CustomerCancelled))
            .unwrap(),
        Outcome::NOTHING
    );

    let mut o = order(false);
    o.apply(held()).unwrap();
    assert_eq!(o.apply(held()).unwrap(), Outcome::NOTHING);
}

#[test]
fn a_confirmed_order_cannot_be_cancelled() {
    let mut o = order(false);
    o.apply(held()).unwrap();
    o.apply(Input::PaymentSucceeded).unwrap();
    assert_eq!(
        o.apply(Input::Cancel(CancelReason::CustomerCancelled)),
        Err(Refusal::AlreadyConfirmed)
    );
    assert_eq!(
        o.apply(Input::Cancel(CancelReason::Timeout)),
        Err(Refusal::AlreadyConfirmed)
    );
}

#[test]
fn held_lines_must_match_and_total_must_fit() {
    let mut o = order(false);
    assert!(matches!(
        o.apply(Input::StockHeld(vec![("A".into(), 2, 1)])),
        Err(Refusal::LinesMismatch(_))
    ));
    assert!(matches!(
        o.apply(Input::StockHeld(vec![
            ("A".into(), 3, 1),
            ("B".into(), 1, 1)
        ])),
        Err(Refusal::LinesMismatch(_))
    ));
    assert_eq!(
        o.apply(Input::StockHeld(vec![
            ("A".into(), 2, i64::MAX),
            ("B".into(), 1, 1)
        ])),
        Err(Refusal::TotalOverflow)
    );
    assert_eq!(o.state, OrderState::Pending);
    assert_eq!(o.lines[0].unit_price_cents, None);
}

#[test]
fn new_orders_are_validated_field_by_field() {
    let ok = validate_new_order("c-1", &[("A".into(), 1)], None, LIMITS).unwrap();
    assert_eq!(ok.items.len(), 1);
    let err = |c: &str, items: &[(String, i64)], slot: Option<&str>| {
        validate_new_order(c, items, slot, LIMITS)
            .unwrap_err()
            .field
    };
    assert_eq!(err("", &[("A".into(), 1)], None), "customer_id");
    assert_eq!(err("c", &[], None), "items");
    assert_eq!(err("c", &[("A".into(), 0)], None), "items[0].quantity");
    assert_eq!(err("c", &[("A".into(), -3)], None), "items[0].quantity");
    assert_eq!(err("c", &[("A".into(), 11)], None), "items[0].quantity");
    assert_eq!(
        err("c", &[("A".into(), 1), ("A".into(), 1)], None),
        "items[1].sku"
    );
    assert_eq!(err("c", &[("".into(), 1)], None), "items[0].sku");
    let four: Vec<(String, i64)> = (0..4).map(|i| (format!("S{i}"), 1)).collect();
    assert_eq!(err("c", &four, None), "items");
    assert_eq!(err("c", &[("A".into(), 1)], Some("nope")), "slot_id");
    assert_eq!(
        err(&"c".repeat(65), &[("A".into(), 1)], None),
        "customer_id"
    );
}

/// Property tests: whatever order, duplication and timing of the news, the
/// saga keeps its promises.
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// The news an order can receive, before the order owes a payment.
    #[derive(Clone, Debug)]
    enum News {
        Stock(bool),
        Slot(bool),
        Cancel(CancelReason),
    }

    #[derive(Clone, Debug)]
    struct Script {
        with_slot: bool,
        /// Participants' answers and commands, duplicated and shuffled.
        before: Vec<News>,
        /// The payment's answer (`Some(true)`: captured), delivered this
        /// many inputs after `orders.reserved` went out, and repeated.
        payment: Option<bool>,
        payment_delay: usize,
        payment_copies: usize,
    }

    fn script() -> impl Strategy<Value = Script> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(prop_oneof![
                Just(CancelReason::CustomerCancelled),
                Just(CancelReason::Timeout)
            ]),
            proptest::option::of(any::<bool>()),
            0usize..4,
            1usize..3,
            proptest::collection::vec(0usize..8, 0..6),
        )
            .prop_flat_map(
                |(with_slot, stock_ok, slot_ok, cancel, payment, delay, copies, dups)| {
                    let mut news = vec![News::Stock(stock_ok)];
                    if with_slot {
                        news.push(News::Slot(slot_ok));
                    }
                    if let Some(r) = cancel {
                        news.push(News::Cancel(r));
                    }
                    let originals = news.len();
                    for d in dups {
                        news.push(news[d % originals].clone());
                    }
                    Just(news).prop_shuffle().prop_map(move |before| Script {
                        with_slot,
                        before,
                        payment,
                        payment_delay: delay,
                        payment_copies: copies,
                    })
                },
            )
    }

    fn order(with_slot: bool) -> Order {
        let now = Utc::now();
        Order::place(
            Uuid::now_v7(),
            NewOrder {
                customer_id: "c".into(),
                items: vec![("A".into(), 2), ("B".into(), 1)],
                slot_id: with_slot.then(Uuid::now_v7),
            },
            now,
            now,
        )
    }

    fn input(news: &News) -> Input {
        match news {
            News::Stock(true) => Input::StockHeld(vec![("A".into(), 2, 100), ("B".into(), 1, 50)]),
            News::Stock(false) => Input::StockRejected,
            News::Slot(true) => Input::SlotHeld,
            News::Slot(false) => Input::SlotRejected,
            News::Cancel(r) => Input::Cancel(*r),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn duplicated_and_reordered_news_never_break_the_saga(s in script()) {
            let mut o = order(s.with_slot);
            let mut effects = Vec::new();
            let mut inputs: Vec<Input> = s.before.iter().map(input).collect();
            let mut reserved_at = None;
            let mut i = 0;
            let mut terminal_since: Option<Order> = None;
            while i < inputs.len() {
                let out = o.apply(inputs[i].clone());
                // A confirmed order refuses cancellation; nothing else fails here.
                match out {
                    Ok(out) => {
                        if let Some(e) = out.effect {
                            if matches!(e, Effect::Reserved { .. }) && reserved_at.is_none() {
                                reserved_at = Some(i);
                                if let Some(ok) = s.payment {
                                    let answer = if ok {
                                        Input::PaymentSucceeded
                                    } else {
                                        Input::PaymentFailed(CancelReason::InsufficientFunds)
                                    };
                                    let at = (i + 1 + s.payment_delay).min(inputs.len());
                                    for _ in 0..s.payment_copies {
                                        inputs.insert(at, answer.clone());
                                    }
                                }
                            }
                            effects.push(e);
                        }
                    }
                    Err(Refusal::AlreadyConfirmed) => {
                        prop_assert_eq!(o.state, OrderState::Confirmed);
                    }
                    Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
                }
                if let Some(before) = &terminal_since {
                    prop_assert_eq!(before, &o, "a terminal order changed");
                } else if o.state.is_terminal() {
                    terminal_since = Some(o.clone());
                }
                i += 1;
            }

            let count = |f: fn(&Effect) -> bool| effects.iter().filter(|e| f(e)).count();
            let reserved = count(|e| matches!(e, Effect::Reserved { .. }));
            let confirmed = count(|e| matches!(e, Effect::Confirmed));
            let cancelled = count(|e| matches!(e, Effect::Cancelled(_)));
            prop_assert!(reserved <= 1 && confirmed <= 1 && cancelled <= 1, "{effects:?}");
            prop_assert!(confirmed + cancelled <= 1, "confirmed and cancelled: {effects:?}");

            let stock_held = s.before.iter().any(|n| matches!(n, News::Stock(true)));
            let slot_ok = !s.with_slot || s.before.iter().any(|n| matches!(n, News::Slot(true)));
            if confirmed == 1 {
                prop_assert_eq!(o.state, OrderState::Confirmed);
                prop_assert!(stock_held && slot_ok && reserved == 1 && s.payment == Some(true));
                prop_assert_eq!(o.total_cents, Some(250));
            }
            if reserved == 1 {
                prop_assert!(stock_held && slot_ok, "reserved without every hold");
                let first_is_reserved = matches!(effects[0], Effect::Reserved { amount_cents: 250 });
                prop_assert!(first_is_reserved, "first effect {:?}", effects[0]);
            }
            let refused = s.before.iter().any(|n| matches!(n, News::Stock(false) | News::Slot(false)));
            let cancel_asked = s.before.iter().any(|n| matches!(n, News::Cancel(_)));
            let paid_or_failed = reserved == 1 && s.payment.is_some();
            // The saga ends whenever something decides it.
            if refused || cancel_asked || paid_or_failed {
                prop_assert!(o.state.is_terminal(), "{:?} after {:?}", o.state, s);
            }
            if o.state == OrderState::Cancelled {
                prop_assert_eq!(cancelled, 1);
                prop_assert!(o.cancel_reason.is_some());
            }
        }
    }
}

#[test]
fn states_and_reasons_display_their_names() {
    use strum::VariantArray;
    for s in OrderState::VARIANTS {
        assert_eq!(s.to_string(), s.as_str());
    }
    for r in CancelReason::VARIANTS {
        assert_eq!(r.to_string(), r.as_str());
    }
    assert_eq!(OrderState::Cancelled.to_string(), "CANCELLED");
    assert_eq!(CancelReason::OutOfStock.to_string(), "out_of_stock");
}

#[test]
fn a_change_is_stamped_later_than_the_last_even_if_the_clock_went_back() {
    let mut o = order(false);
    let first = o.updated_at;
    o.touch(first + TimeDelta::seconds(5));
    assert_eq!(o.updated_at, first + TimeDelta::seconds(5));
    // A clock an hour behind: one microsecond after the last change.
    o.touch(first - TimeDelta::hours(1));
    assert_eq!(
        o.updated_at,
        first + TimeDelta::seconds(5) + TimeDelta::microseconds(1)
    );
    // The same instant twice: still later.
    let now = o.updated_at;
    o.touch(now);
    assert!(o.updated_at > now);
}
