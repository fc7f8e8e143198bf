//! Many clients at once on the same SKU or slot: never oversell, and a slot
//! lock that is busy is told apart from a Redis that is down.

use std::sync::Arc;

use saga_shared::proto::order::v1::{CancelReason, OrderState};
use saga_tests::{TestSystem, order_request, reason, state};

use crate::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_orders_for_fifty_units_confirm_exactly_fifty() -> anyhow::Result<()>
{
    let sys = Arc::new(TestSystem::start().await?);
    sys.seed_product("HOT", 700, 50).await?;
    for i in 0..200 {
        sys.top_up(&format!("c{i}"), 10_000).await?;
    }

    let placed = futures::future::join_all((0..200).map(|i| {
        let sys = sys.clone();
        tokio::spawn(async move {
            sys.place(order_request(&format!("c{i}"), &[("HOT", 1)], None))
                .await
        })
    }))
    .await;
    let ids: Vec<String> = placed
        .into_iter()
        .map(|joined| Ok(joined??.order_id))
        .collect::<anyhow::Result<_>>()?;

    let done = sys.wait_all_terminal(&ids, WAIT).await?;
    let confirmed = done
        .iter()
        .filter(|o| state(o) == OrderState::Confirmed)
        .count();
    let out_of_stock = done
        .iter()
        .filter(|o| state(o) == OrderState::Cancelled && reason(o) == CancelReason::OutOfStock)
        .count();
    assert_eq!((confirmed, out_of_stock), (50, 150));

    sys.quiesce(WAIT).await?;
    let hot = sys.stock("HOT").await?;
    assert_eq!(
        (hot.on_hand, hot.reserved, hot.sold, hot.available),
        (50, 0, 50, 0)
    );
    sys.redis_settles("HOT", 0, WAIT).await?;
    let charged: i64 =
        sqlx::query_scalar("SELECT COALESCE(sum(charged_cents), 0)::bigint FROM payment.wallets")
            .fetch_one(&sys.db)
            .await?;
    assert_eq!(charged, 50 * 700);
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    Arc::into_inner(sys)
        .expect("no task holds the system")
        .stop()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_lock_held_by_another_runs_out_as_busy_and_only_a_dead_redis_is_an_error()
-> anyhow::Result<()> {
    use std::time::Duration;

    use reservation_svc::store::lock::{LockMiss, SlotLocks};
    use saga_tests::servers::RedisServer;

    let mut redis = RedisServer::start().await?;
    let pool = saga_shared::redis::connect(&saga_shared::config::RedisConfig {
        url: redis.url(),
        command_timeout_ms: 500,
        ..Default::default()
    })
    .await?;
    let ns = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let locks = |wait_ms| {
        SlotLocks::new(
            pool.clone(),
            &ns,
            Duration::from_secs(30),
            Duration::from_millis(wait_ms),
            Duration::from_millis(500),
        )
    };
    let slot = uuid::Uuid::now_v7();
    let first = locks(0).acquire(slot).await;
    assert!(first.is_ok(), "{first:?}");
    // Its holder keeps it: a contender waits, then goes ahead without it.
    for wait_ms in [0, 1, 50] {
        assert_eq!(locks(wait_ms).acquire(slot).await, Err(LockMiss::Busy));
    }
    // A Redis that is gone is an error, not a busy lock.
    redis.kill();
    match locks(50).acquire(uuid::Uuid::now_v7()).await {
        Err(LockMiss::Unavailable(why)) => assert!(!why.is_empty()),
        other => panic!("a dead Redis answered {other:?}"),
    }
    Ok(())
}

/// `saga_batches_redone_total` of a service, over its labels.
async fn batches_redone(admin: std::net::SocketAddr) -> anyhow::Result<f64> {
    let (_, body) = saga_tests::http_get(admin, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("saga_batches_redone_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_orders_sharing_skus_in_every_order_never_deadlock() -> anyhow::Result<()> {
    let sys = TestSystem::start_processes(|cfg| {
        for bus in cfg.buses_mut() {
            bus.batch_size = 16;
        }
    })
    .await?;
    let skus = ["D1", "D2", "D3", "D4"];
    for sku in skus {
        sys.seed_product(sku, 100, 1_000_000).await?;
    }
    sys.top_up("dee", 1_000_000_000).await?;
    // One-line orders over four SKUs in a scrambled order: a batch of
    // placements (or confirmations) locks its SKUs' product rows in event
    // order, and two batches meeting two SKUs in opposite orders deadlock,
    // unless each locks all of its rows in one order first.
    let sys = Arc::new(sys);
    let placed = futures::future::join_all((0..400usize).map(|i| {
        let sys = sys.clone();
        async move {
            let sku = skus[(i * 7 + i / 5) % skus.len()];
            sys.place(order_request("dee", &[(sku, 1)], None)).await
        }
    }))
    .await;
    let ids: Vec<String> = placed
        .into_iter()
        .map(|o| o.map(|o| o.order_id))
        .collect::<Result<_, _>>()?;
    let done = sys.wait_all_terminal(&ids, WAIT).await?;
    assert!(done.iter().all(|o| state(o) == OrderState::Confirmed));
    sys.quiesce(WAIT).await?;
    for (name, admin) in [
        ("inventory", sys.inventory.admin),
        ("payment", sys.payment.admin),
    ] {
        assert_eq!(
            batches_redone(admin).await?,
            0.0,
            "{name} redid a batch one event at a time (a deadlock)"
        );
    }
    assert!(sys.violations().await?.is_empty());
    Arc::into_inner(sys).expect("one owner").stop().await
}

/// Bookings for one slot that reach reservation-svc in one batch: the
/// batch locks the slot's row in Postgres once, and none of its events
/// waits out the Redis slot lock that another event of the same batch holds
/// (each such wait cost the whole lock wait, 500 ms, and stalled the batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_bookings_for_one_slot_never_waits_on_its_own_slot_lock() -> anyhow::Result<()> {
    use saga_tests::processes::Service;

    let (mut sys, slot) =
        processes_with_one_order(|cfg| cfg.reservation.bus.batch_size = 16, "bo", 100).await?;
    // The placements pile up while reservation-svc is down, then come in
    // full batches, every event for the same slot.
    sys.processes().kill(Service::Reservation);
    let ids = place_at_once(&sys, "bo", &slot, 32).await?;
    sys.processes().start(Service::Reservation, &[]).await?;
    for id in &ids {
        let order = sys.wait_terminal(id, WAIT).await?;
        assert_eq!(state(&order), OrderState::Confirmed, "{order:?}");
    }
    // reservation-svc confirms the bookings once it applies orders.confirmed,
    // after the orders end.
    saga_tests::eventually("the slot has every booking confirmed", WAIT, || async {
        Ok(sys.slot(&slot).await?.confirmed == 33)
    })
    .await?;
    let (_, body) = saga_tests::http_get(sys.reservation.admin, "/metrics").await?;
    let waited_out: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("reservation_slot_lock_total") && l.contains("outcome=\"timed_out\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(waited_out, 0.0, "slot lock waits that ran out:\n{body}");
    sys.stop().await
}

/// Answers for the same orders that reach order-svc on two streams in
/// opposite orders, each stream's as one batch: every batch locks its orders
/// in one order before it changes any, so the two never deadlock (each
/// deadlock cost a second of waiting and the batch redone one event at a
/// time; the benchmark with slots saw several a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_for_the_same_orders_from_two_streams_never_deadlock() -> anyhow::Result<()> {
    const ORDERS: usize = 16;
    const REPEATS: usize = 8;
    use saga_shared::bus::SagaEvent;
    use saga_shared::proto::events::v1 as pb;
    use saga_tests::processes::Service;

    let (mut sys, slot) =
        processes_with_one_order(|cfg| cfg.order.bus.batch_size = 16, "dl", 1_000).await?;
    // Orders wait for their stock and slot...
    sys.processes().kill(Service::Inventory);
    sys.processes().kill(Service::Reservation);
    let ids: Vec<uuid::Uuid> = place_at_once(&sys, "dl", &slot, ORDERS)
        .await?
        .iter()
        .map(|id| id.parse())
        .collect::<Result<_, _>>()?;
    // ...and their answers wait for order-svc: the stock in one order of
    // orders, the slots in the other, each sent several times over (a
    // repeat is news that no longer matters, but its order is still locked
    // to learn that). Both streams are then consumed at once, so whenever a
    // batch of each runs, the two take the same orders from opposite ends.
    sys.processes().kill(Service::Order);
    let rounds: Vec<&[uuid::Uuid]> = std::iter::repeat_n(ids.as_slice(), REPEATS).collect();
    for id in rounds.iter().flat_map(|r| r.iter()) {
        sys.publish_event(
            *id,
            SagaEvent::InventoryReserved(pb::InventoryReserved {
                order_id: id.to_string(),
                lines: vec![pb::PricedLine {
                    sku: "A".into(),
                    quantity: 1,
                    unit_price_cents: 100,
                }],
            }),
        )
        .await?;
    }
    for id in rounds.iter().flat_map(|r| r.iter().rev()) {
        sys.publish_event(
            *id,
            SagaEvent::ReservationHeld(pb::ReservationHeld {
                order_id: id.to_string(),
                slot_id: slot.clone(),
            }),
        )
        .await?;
    }
    sys.processes().start(Service::Order, &[]).await?;
    for id in &ids {
        let order = sys.wait_terminal(&id.to_string(), WAIT).await?;
        assert_eq!(state(&order), OrderState::Confirmed, "{order:?}");
    }
    let (_, body) = saga_tests::http_get(sys.order.admin, "/metrics").await?;
    let redone: f64 = body
        .lines()
        .filter(|l| l.starts_with("saga_batches_redone_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(redone, 0.0, "batches redone one event at a time:\n{body}");
    sys.stop().await
}

/// The services as processes (`tweak` applied), SKU "A" with 1,000 units at
/// 1.00, a funded wallet for `customer`, a slot of `capacity`, and one order
/// through them all first, so that order-svc's catalog cache knows the SKU
/// and the slot while their services are down. Returns the system and the
/// slot's id.
async fn processes_with_one_order(
    tweak: impl FnOnce(&mut sagactl::system::SystemConfig),
    customer: &str,
    capacity: i32,
) -> anyhow::Result<(TestSystem, String)> {
    let sys = TestSystem::start_processes(tweak).await?;
    sys.seed_product("A", 100, 1_000).await?;
    sys.top_up(customer, 1_000_000).await?;
    let slot = sys.create_slot("one slot", capacity).await?.slot_id;
    let first = sys
        .place(order_request(customer, &[("A", 1)], Some(&slot)))
        .await?;
    let first = sys.wait_terminal(&first.order_id, WAIT).await?;
    assert_eq!(state(&first), OrderState::Confirmed, "{first:?}");
    Ok((sys, slot))
}

/// Places `n` orders of one "A" with `slot` for `customer`, all at once;
/// their ids.
async fn place_at_once(
    sys: &TestSystem,
    customer: &str,
    slot: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    futures::future::join_all(
        (0..n).map(|_| sys.place(order_request(customer, &[("A", 1)], Some(slot)))),
    )
    .await
    .into_iter()
    .map(|p| Ok(p?.order_id))
    .collect()
}
