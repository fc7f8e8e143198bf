//! The saga's outcomes: confirmed with every effect completed, or cancelled
//! with a reason and every effect compensated.

use saga_shared::proto::order::v1::{CancelOrderRequest, CancelReason, OrderState};
use saga_shared::proto::payment::v1::{GetPaymentRequest, PaymentState};
use saga_tests::{TestSystem, eventually, order_request, reason, state};

use crate::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_two_skus_and_a_slot_ends_confirmed_with_stock_sold_slot_confirmed_and_one_charge()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 1_000, 10).await?;
    sys.seed_product("B", 250, 5).await?;
    sys.top_up("alice", 10_000).await?;
    let slot = sys.create_slot("morning", 2).await?;

    let placed = sys
        .place(order_request(
            "alice",
            &[("A", 2), ("B", 3)],
            Some(&slot.slot_id),
        ))
        .await?;
    assert_eq!(state(&placed), OrderState::Pending);
    assert!(placed.lines.iter().all(|l| l.unit_price_cents.is_none()));

    let done = sys.wait_terminal(&placed.order_id, WAIT).await?;
    assert_eq!(state(&done), OrderState::Confirmed, "{done:?}");
    assert_eq!(done.total_cents, Some(2 * 1_000 + 3 * 250));
    let prices: Vec<_> = done
        .lines
        .iter()
        .map(|l| (l.sku.as_str(), l.unit_price_cents))
        .collect();
    assert_eq!(prices, [("A", Some(1_000)), ("B", Some(250))]);

    sys.quiesce(WAIT).await?;
    let a = sys.stock("A").await?;
    assert_eq!((a.on_hand, a.reserved, a.sold, a.available), (10, 0, 2, 8));
    let b = sys.stock("B").await?;
    assert_eq!((b.on_hand, b.reserved, b.sold, b.available), (5, 0, 3, 2));
    let slot = sys.slot(&slot.slot_id).await?;
    assert_eq!((slot.held, slot.confirmed, slot.available), (0, 1, 1));
    let wallet = sys.wallet("alice").await?;
    assert_eq!(
        (
            wallet.balance_cents,
            wallet.charged_cents,
            wallet.refunded_cents
        ),
        (7_250, 2_750, 0)
    );
    let payment = sys
        .clients
        .payment
        .clone()
        .get_payment(GetPaymentRequest {
            order_id: done.order_id.clone(),
        })
        .await?
        .into_inner()
        .payment
        .unwrap_or_default();
    assert_eq!(payment.state, PaymentState::Captured as i32);
    assert_eq!(payment.amount_cents, 2_750);
    let charges: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payment.wallet_ledger WHERE kind = 'CHARGE' AND order_id = $1::uuid",
    )
    .bind(&done.order_id)
    .fetch_one(&sys.db)
    .await?;
    assert_eq!(charges, 1);
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_full_slot_and_short_wallets_cancel_with_their_reason_and_hold_nothing()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("SCARCE", 100, 1).await?;
    sys.seed_product("PLENTY", 100, 100).await?;
    sys.top_up("rich", 1_000_000).await?;
    sys.top_up("poor", 150).await?;
    let tiny = sys.create_slot("tiny", 1).await?;

    // The only place in the slot goes to a first order.
    let first = sys
        .place(order_request("rich", &[("PLENTY", 1)], Some(&tiny.slot_id)))
        .await?;
    assert_eq!(
        state(&sys.wait_terminal(&first.order_id, WAIT).await?),
        OrderState::Confirmed
    );

    let cases = [
        (
            order_request("rich", &[("PLENTY", 1), ("SCARCE", 2)], None),
            CancelReason::OutOfStock,
        ),
        (
            order_request("rich", &[("PLENTY", 1)], Some(&tiny.slot_id)),
            CancelReason::SlotUnavailable,
        ),
        (
            order_request("poor", &[("PLENTY", 2)], None),
            CancelReason::InsufficientFunds,
        ),
        (
            order_request("nobody", &[("PLENTY", 1)], None),
            CancelReason::InsufficientFunds,
        ),
    ];
    let mut ids = Vec::new();
    for (request, _) in &cases {
        ids.push(sys.place(request.clone()).await?.order_id);
    }
    let done = sys.wait_all_terminal(&ids, WAIT).await?;
    for ((_, expected), order) in cases.iter().zip(&done) {
        assert_eq!(state(order), OrderState::Cancelled, "{order:?}");
        assert_eq!(reason(order), *expected, "{order:?}");
    }

    sys.quiesce(WAIT).await?;
    // Nothing held, nothing charged: only the first order's effects remain.
    let plenty = sys.stock("PLENTY").await?;
    assert_eq!((plenty.reserved, plenty.sold, plenty.available), (0, 1, 99));
    let scarce = sys.stock("SCARCE").await?;
    assert_eq!((scarce.reserved, scarce.sold, scarce.available), (0, 0, 1));
    let tiny = sys.slot(&tiny.slot_id).await?;
    assert_eq!((tiny.held, tiny.confirmed), (0, 1));
    assert_eq!(sys.wallet("poor").await?.balance_cents, 150);
    assert_eq!(sys.wallet("rich").await?.balance_cents, 1_000_000 - 100);
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_and_a_customer_cancellation_end_cancelled_with_net_charge_zero()
-> anyhow::Result<()> {
    const SEED: u64 = 42;
    let sys = TestSystem::start_with(|cfg| {
        cfg.payment.gateway.decline_rate = 0.5;
        cfg.payment.gateway.seed = SEED;
        cfg.payment.gateway.latency_ms = 5_000;
    })
    .await?;
    // The gateway decides per order id under the seed; ask it in advance.
    let gateway = payment_svc::service::gateway::Gateway::new(payment_svc::config::GatewayConfig {
        decline_rate: 0.5,
        seed: SEED,
        ..Default::default()
    });
    let declined = |id: &str| {
        gateway.decide(id.parse().expect("order ids are UUIDs"))
            == payment_svc::service::gateway::Authorization::Declined
    };
    sys.seed_product("A", 500, 1_000).await?;
    sys.top_up("dora", 1_000_000).await?;
    let slot = sys.create_slot("evening", 100).await?;

    // Place orders until one is bound to be declined and one to be approved.
    let (mut to_decline, mut to_cancel) = (None, None);
    for _ in 0..64 {
        let o = sys
            .place(order_request("dora", &[("A", 1)], Some(&slot.slot_id)))
            .await?;
        if declined(&o.order_id) {
            to_decline.get_or_insert(o.order_id);
        } else if to_cancel.is_none() {
            to_cancel = Some(o.order_id);
        }
        if to_decline.is_some() && to_cancel.is_some() {
            break;
        }
    }
    let (to_decline, to_cancel) = (
        to_decline.expect("a declined order within 64 at rate 0.5"),
        to_cancel.expect("an approved order within 64 at rate 0.5"),
    );

    // The customer cancels while the payment is in flight (the gateway takes 5 s).
    eventually("the order to be RESERVED", WAIT, || async {
        Ok(state(&sys.get_order(&to_cancel).await?) == OrderState::Reserved)
    })
    .await?;
    let cancelled = sys
        .clients
        .order
        .clone()
        .cancel_order(CancelOrderRequest {
            order_id: to_cancel.clone(),
        })
        .await?
        .into_inner()
        .order
        .unwrap_or_default();
    assert_eq!(state(&cancelled), OrderState::Cancelled);
    assert_eq!(reason(&cancelled), CancelReason::CustomerCancelled);

    let declined_order = sys.wait_terminal(&to_decline, WAIT).await?;
    assert_eq!(state(&declined_order), OrderState::Cancelled);
    assert_eq!(reason(&declined_order), CancelReason::PaymentDeclined);

    sys.quiesce(WAIT).await?;
    // Whatever won the race between charge and cancellation, nothing is kept.
    let net: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(CASE kind WHEN 'CHARGE' THEN amount_cents WHEN 'REFUND' THEN -amount_cents END), 0)::bigint \
         FROM payment.wallet_ledger WHERE order_id = ANY($1::uuid[])",
    )
    .bind(vec![to_cancel.clone(), to_decline.clone()])
    .fetch_one(&sys.db)
    .await?;
    assert_eq!(net, 0);
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory.holds WHERE order_id = ANY($1::uuid[]) AND state <> 'RELEASED'",
    )
    .bind(vec![to_cancel.clone(), to_decline.clone()])
    .fetch_one(&sys.db)
    .await?;
    assert_eq!(held, 0);
    let booked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reservation.bookings WHERE order_id = ANY($1::uuid[]) AND state IN ('HELD', 'CONFIRMED')",
    )
    .bind(vec![to_cancel, to_decline])
    .fetch_one(&sys.db)
    .await?;
    assert_eq!(booked, 0);
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_cannot_be_cancelled() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 5).await?;
    sys.top_up("erin", 1_000).await?;
    let o = sys.place(order_request("erin", &[("A", 1)], None)).await?;
    assert_eq!(
        state(&sys.wait_terminal(&o.order_id, WAIT).await?),
        OrderState::Confirmed
    );
    let refused = sys
        .clients
        .order
        .clone()
        .cancel_order(CancelOrderRequest {
            order_id: o.order_id.clone(),
        })
        .await
        .expect_err("cancelling a confirmed order must fail");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(
        state(&sys.get_order(&o.order_id).await?),
        OrderState::Confirmed
    );
    sys.stop().await
}

/// A cancellation that waits for the order's lock answers the order as the
/// transaction it waited for left it: its lines' prices included, not the
/// lines as they stood before the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_that_waited_for_the_order_sees_its_lines_as_the_lock_holder_left_them()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO orders.orders (id, customer_id, state, inventory, slot, payment, \
             created_at, updated_at, deadline_at) \
         VALUES ($1, 'waiter', 'PENDING', 'PENDING', 'NONE', 'NONE', now(), now(), \
             now() + interval '1 hour')",
    )
    .bind(id)
    .execute(&sys.db)
    .await?;
    sqlx::query(
        "INSERT INTO orders.order_lines (order_id, line_no, sku, quantity) VALUES ($1, 0, 'A', 2)",
    )
    .bind(id)
    .execute(&sys.db)
    .await?;

    // Another transaction holds the order and prices its lines...
    let mut holder = sys.db.begin().await?;
    sqlx::query("SELECT 1 FROM orders.orders WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *holder)
        .await?;
    sqlx::query("UPDATE orders.order_lines SET unit_price_cents = 250 WHERE order_id = $1")
        .bind(id)
        .execute(&mut *holder)
        .await?;
    sqlx::query("UPDATE orders.orders SET total_cents = 500 WHERE id = $1")
        .bind(id)
        .execute(&mut *holder)
        .await?;
    // ... while the cancellation waits for it.
    let cancel = {
        let clients = sys.clients.clone();
        let id = id.to_string();
        tokio::spawn(async move { clients.cancel_order(&id).await })
    };
    eventually(
        "the cancellation waits for the order's lock",
        WAIT,
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&sys.db)
            .await?;
            Ok(waiting > 0)
        },
    )
    .await?;
    holder.commit().await?;

    let cancelled = cancel.await??;
    assert_eq!(state(&cancelled), OrderState::Cancelled);
    assert_eq!(cancelled.total_cents, Some(500));
    let prices: Vec<Option<i64>> = cancelled.lines.iter().map(|l| l.unit_price_cents).collect();
    assert_eq!(prices, vec![Some(250)], "{cancelled:?}");
    sys.stop().await
}
