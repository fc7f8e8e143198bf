//! PlaceOrder (and TopUp) with an `idempotency-key`: one effect, however
//! often and however concurrently the call is retried.

use saga_shared::proto::order::v1::ListOrdersRequest;
use saga_tests::processes::Service;
use saga_tests::{TestSystem, order_request};

pub(crate) async fn orders_of(sys: &TestSystem, customer: &str) -> anyhow::Result<usize> {
    Ok(sys
        .clients
        .order
        .clone()
        .list_orders(ListOrdersRequest {
            customer_id: Some(customer.into()),
            page_size: 500,
            ..Default::default()
        })
        .await?
        .into_inner()
        .orders
        .len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_order_retried_with_one_key_yields_one_order_even_concurrently() -> anyhow::Result<()>
{
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 100).await?;

    let request = order_request("ivy", &[("A", 1)], None);
    let first = sys.place_with_key(request.clone(), Some("key-1")).await?;
    let again = sys.place_with_key(request.clone(), Some("key-1")).await?;
    assert_eq!(first.order_id, again.order_id);
    assert_eq!(first, again, "a retry answers the stored response");
    assert_eq!(orders_of(&sys, "ivy").await?, 1);

    let concurrent = futures::future::join_all(
        (0..24).map(|_| sys.place_with_key(order_request("jay", &[("A", 2)], None), Some("key-2"))),
    )
    .await;
    let ids: std::collections::BTreeSet<String> = concurrent
        .into_iter()
        .map(|r| r.map(|o| o.order_id))
        .collect::<Result<_, _>>()?;
    assert_eq!(ids.len(), 1, "24 concurrent retries gave {ids:?}");
    assert_eq!(orders_of(&sys, "jay").await?, 1);

    let other = sys
        .place_with_key(order_request("ivy", &[("A", 1)], None), Some("key-3"))
        .await?;
    assert_ne!(other.order_id, first.order_id, "a new key is a new order");
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_a_different_request_is_refused_and_changes_nothing() -> anyhow::Result<()>
{
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 100).await?;
    sys.place_with_key(order_request("kim", &[("A", 1)], None), Some("k"))
        .await?;
    let refused = sys
        .place_with_key(order_request("kim", &[("A", 2)], None), Some("k"))
        .await
        .expect_err("a different request under a used key must fail");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("idempotency-key"), "{refused:?}");
    assert_eq!(orders_of(&sys, "kim").await?, 1);

    // TopUp too: the same key adds the money once. (Another customer: kim's
    // order may still be charging its wallet while this runs.)
    for _ in 0..3 {
        let mut req = tonic::Request::new(saga_shared::proto::payment::v1::TopUpRequest {
            customer_id: "lou".into(),
            amount_cents: 500,
        });
        req.metadata_mut()
            .insert("idempotency-key", "top-1".parse()?);
        sys.clients.payment.clone().top_up(req).await?;
    }
    assert_eq!(sys.wallet("lou").await?.balance_cents, 500);
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_order_gets_its_order_even_while_inventory_is_down() -> anyhow::Result<()> {
    // order-svc asks inventory about SKUs on every new order (no cache).
    let mut sys = TestSystem::start_processes(|cfg| cfg.order.order.catalog_cache_secs = 0).await?;
    sys.seed_product("A", 100, 100).await?;
    let request = order_request("kit", &[("A", 1)], None);
    let first = sys.place_with_key(request.clone(), Some("r-1")).await?;

    sys.processes().kill(Service::Inventory);
    let refused = sys
        .place_with_key(request.clone(), Some("r-2"))
        .await
        .expect_err("a new order cannot be checked while inventory is down");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let again = sys.place_with_key(request, Some("r-1")).await?;
    assert_eq!(again, first, "the retry answers the stored order");
    assert_eq!(orders_of(&sys, "kit").await?, 1);

    sys.processes().start(Service::Inventory, &[]).await?;
    sys.wait_terminal(&first.order_id, crate::WAIT).await?;
    sys.stop().await
}

fn keyed<T>(message: T, key: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse()?);
    Ok(request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_order_and_upsert_product_honour_an_idempotency_key() -> anyhow::Result<()> {
    use saga_shared::proto::inventory::v1 as inv;
    use saga_shared::proto::order::v1 as ord;
    // A slow gateway keeps the order open while it is cancelled.
    let sys = TestSystem::start_with(|cfg| cfg.payment.gateway.latency_ms = 3_000).await?;
    let mut inventory = sys.clients.inventory.clone();
    let upsert = |price| inv::UpsertProductRequest {
        sku: "K".into(),
        name: "keyed".into(),
        unit_price_cents: price,
    };
    let first = inventory
        .upsert_product(keyed(upsert(100), "u-1")?)
        .await?
        .into_inner();
    let again = inventory
        .upsert_product(keyed(upsert(100), "u-1")?)
        .await?
        .into_inner();
    assert_eq!(first, again, "a retry answers the stored response");
    assert!(first.created);
    let refused = inventory
        .upsert_product(keyed(upsert(999), "u-1")?)
        .await
        .expect_err("another request under a used key");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let stock = sys.stock("K").await?;
    assert_eq!(
        (stock.unit_price_cents, stock.version),
        (100, 1),
        "{stock:?}"
    );

    let adjust = inv::AdjustStockRequest {
        sku: "K".into(),
        delta: 10,
        expected_version: 1,
    };
    inventory.adjust_stock(adjust.clone()).await?;
    sys.top_up("kay", 1_000).await?;
    let placed = sys.place(order_request("kay", &[("K", 1)], None)).await?;
    let mut orders = sys.clients.order.clone();
    let cancel = |order_id: &str| ord::CancelOrderRequest {
        order_id: order_id.to_owned(),
    };
    let cancelled = orders
        .cancel_order(keyed(cancel(&placed.order_id), "c-1")?)
        .await?
        .into_inner();
    let order = cancelled.order.clone().expect("an order");
    assert_eq!(order.state, ord::OrderState::Cancelled as i32, "{order:?}");
    let retried = orders
        .cancel_order(keyed(cancel(&placed.order_id), "c-1")?)
        .await?
        .into_inner();
    assert_eq!(retried, cancelled, "a retry answers the stored response");
    let other = sys.place(order_request("kay", &[("K", 1)], None)).await?;
    let refused = orders
        .cancel_order(keyed(cancel(&other.order_id), "c-1")?)
        .await
        .expect_err("another order under a used key");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_ne!(
        sys.clients.get_order(&other.order_id).await?.state,
        ord::OrderState::Cancelled as i32,
        "the refused call cancelled nothing"
    );
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reservations_and_slot_holds_bind_an_idempotency_key_to_one_request()
-> anyhow::Result<()> {
    use saga_shared::proto::inventory::v1 as inv;
    use saga_shared::proto::reservation::v1 as rsv;
    let sys = TestSystem::start().await?;
    sys.seed_product("D", 100, 10).await?;
    let slot = sys.create_slot("d", 5).await?;
    let mut inventory = sys.clients.inventory.clone();
    let reserve = |id: &str| inv::ReserveStockRequest {
        reservation_id: id.to_owned(),
        lines: vec![inv::ReservationLine {
            sku: "D".into(),
            quantity: 2,
        }],
    };
    let (r1, r2) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let first = inventory
        .reserve_stock(keyed(reserve(&r1), "d-1")?)
        .await?
        .into_inner();
    let again = inventory
        .reserve_stock(keyed(reserve(&r1), "d-1")?)
        .await?
        .into_inner();
    assert_eq!(first, again);
    let refused = inventory
        .reserve_stock(keyed(reserve(&r2), "d-1")?)
        .await
        .expect_err("another reservation under a used key");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        sys.stock("D").await?.reserved,
        2,
        "the refused call reserved nothing"
    );

    let mut reservation = sys.clients.reservation.clone();
    let hold = |id: &str| rsv::HoldSlotRequest {
        hold_id: id.to_owned(),
        slot_id: slot.slot_id.clone(),
    };
    let (h1, h2) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    reservation.hold_slot(keyed(hold(&h1), "h-1")?).await?;
    reservation.hold_slot(keyed(hold(&h1), "h-1")?).await?;
    let refused = reservation
        .hold_slot(keyed(hold(&h2), "h-1")?)
        .await
        .expect_err("another hold under a used key");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(sys.slot(&slot.slot_id).await?.held, 1, "one hold");
    sys.stop().await
}

/// A direct call that failed did nothing, so its key stays free: the same
/// key with the request put right is served, not refused as "used with a
/// different request" (the calls that run in the key's transaction roll
/// their key back with their work; these claim it before their work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_call_that_failed_leaves_its_key_free() -> anyhow::Result<()> {
    use saga_shared::proto::inventory::v1 as inv;
    use saga_shared::proto::reservation::v1 as rsv;
    let sys = TestSystem::start().await?;
    sys.seed_product("F", 100, 10).await?;
    let slot = sys.create_slot("f", 5).await?;
    let mut inventory = sys.clients.inventory.clone();
    let reserve = |sku: &str| inv::ReserveStockRequest {
        reservation_id: "0190f0a4-0000-7000-8000-000000000001".into(),
        lines: vec![inv::ReservationLine {
            sku: sku.into(),
            quantity: 2,
        }],
    };
    let unknown = inventory
        .reserve_stock(keyed(reserve("NOPE"), "f-1")?)
        .await
        .expect_err("an unknown SKU");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let held = inventory
        .reserve_stock(keyed(reserve("F"), "f-1")?)
        .await?
        .into_inner()
        .reservation
        .unwrap_or_default();
    assert_eq!(held.state, inv::ReservationState::Reserved as i32);
    assert_eq!(sys.stock("F").await?.reserved, 2);

    let mut reservation = sys.clients.reservation.clone();
    let hold = |slot_id: &str| rsv::HoldSlotRequest {
        hold_id: "0190f0a4-0000-7000-8000-000000000002".into(),
        slot_id: slot_id.to_owned(),
    };
    let unknown = reservation
        .hold_slot(keyed(hold(&uuid::Uuid::now_v7().to_string()), "f-2")?)
        .await
        .expect_err("an unknown slot");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    reservation
        .hold_slot(keyed(hold(&slot.slot_id), "f-2")?)
        .await?;
    assert_eq!(sys.slot(&slot.slot_id).await?.held, 1);
    sys.stop().await
}

/// A retried call gets its first answer even when the limits have
/// tightened since (ADR 0004: a retry does not depend on checks that may
/// have changed): the stored answer is looked up before the request is
/// checked against this moment's settings. PlaceOrder and ReserveStock used
/// to check first, so a deploy that lowered `max_quantity` or `max_lines`
/// turned the retry into INVALID_ARGUMENT, and a client could place the
/// order again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_answered_as_first_after_the_limits_tightened() -> anyhow::Result<()> {
    use saga_shared::proto::inventory::v1 as inv;
    let mut sys = TestSystem::start_processes(|_| {}).await?;
    sys.seed_product("L", 100, 100).await?;
    sys.seed_product("M", 100, 100).await?;
    sys.top_up("lim", 100_000).await?;
    let order = order_request("lim", &[("L", 10)], None);
    let placed = sys.place_with_key(order.clone(), Some("k-limits")).await?;
    let reserve = inv::ReserveStockRequest {
        reservation_id: uuid::Uuid::now_v7().to_string(),
        lines: crate::inventory::lines(&[("L", 1), ("M", 1)]),
    };
    let mut inventory = sys.clients.inventory.clone();
    let reserved = inventory
        .reserve_stock(keyed(reserve.clone(), "k-lines")?)
        .await?
        .into_inner();

    sys.processes().kill(Service::Order);
    sys.processes()
        .start(Service::Order, &[("ORDER_SVC__ORDER__MAX_QUANTITY", "5")])
        .await?;
    sys.processes().kill(Service::Inventory);
    sys.processes()
        .start(
            Service::Inventory,
            &[("INVENTORY_SVC__INVENTORY__MAX_LINES", "1")],
        )
        .await?;

    let refused = sys
        .place(order.clone())
        .await
        .expect_err("a new order above the lowered limit");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let again = sys.place_with_key(order, Some("k-limits")).await?;
    assert_eq!(
        again.order_id, placed.order_id,
        "the retry gets the order placed"
    );

    let mut fresh = reserve.clone();
    fresh.reservation_id = uuid::Uuid::now_v7().to_string();
    let refused = inventory
        .reserve_stock(fresh)
        .await
        .expect_err("a new reservation above the lowered limit");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let again = inventory
        .reserve_stock(keyed(reserve, "k-lines")?)
        .await?
        .into_inner();
    assert_eq!(again, reserved, "the retry gets the first answer");
    sys.stop().await
}

/// A direct call (its work runs transactions of its own) retried while its
/// first attempt is still running is answered ABORTED, as the plan says,
/// rather than running the work a second time beside the first; once the
/// first has answered, the retry gets its answer. A first attempt that died
/// without answering (its claim older than the in-flight bound) is taken
/// over by the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_call_retried_while_its_first_attempt_runs_is_aborted() -> anyhow::Result<()> {
    use saga_shared::proto::reservation::v1 as rsv;
    let sys = TestSystem::start().await?;
    let slot = sys.create_slot("inflight", 5).await?;
    let hold = rsv::HoldSlotRequest {
        hold_id: uuid::Uuid::now_v7().to_string(),
        slot_id: slot.slot_id.clone(),
    };
    let claims = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reservation.idempotency_keys WHERE key LIKE '%inflight-1'",
        )
        .fetch_one(&sys.db)
        .await?;
        anyhow::Ok(n)
    };
    // The slot's row is held, so the first attempt's work waits on it.
    let mut holder = sys.db.begin().await?;
    sqlx::query("SELECT 1 FROM reservation.slots WHERE id = $1::uuid FOR UPDATE")
        .bind(&slot.slot_id)
        .execute(&mut *holder)
        .await?;
    let first = {
        let mut client = sys.clients.reservation.clone();
        let request = keyed(hold.clone(), "inflight-1")?;
        tokio::spawn(async move { client.hold_slot(request).await })
    };
    saga_tests::eventually(
        "the first attempt to claim its key",
        crate::WAIT,
        || async { Ok(claims().await? == 1) },
    )
    .await?;
    let retry = tokio::time::timeout(
        crate::WAIT,
        sys.clients
            .reservation
            .clone()
            .hold_slot(keyed(hold.clone(), "inflight-1")?),
    )
    .await?
    .expect_err("a retry while the first attempt runs");
    assert_eq!(retry.code(), tonic::Code::Aborted, "{retry:?}");
    holder.commit().await?;
    let answered = first.await??.into_inner();
    let again = sys
        .clients
        .reservation
        .clone()
        .hold_slot(keyed(hold.clone(), "inflight-1")?)
        .await?
        .into_inner();
    assert_eq!(again, answered, "the retry gets the first answer");
    assert_eq!(sys.slot(&slot.slot_id).await?.held, 1);

    // A first attempt that died before it answered: its claim has no
    // response and is old. The retry does the work (the hold's id makes it
    // one hold) and answers.
    sqlx::query(
        "UPDATE reservation.idempotency_keys SET response = NULL, \
         created_at = created_at - interval '1 hour' WHERE key LIKE '%inflight-1'",
    )
    .execute(&sys.db)
    .await?;
    let taken_over = sys
        .clients
        .reservation
        .clone()
        .hold_slot(keyed(hold, "inflight-1")?)
        .await?
        .into_inner();
    assert_eq!(
        taken_over.hold.map(|h| h.hold_id),
        answered.hold.map(|h| h.hold_id)
    );
    assert_eq!(sys.slot(&slot.slot_id).await?.held, 1, "still one hold");
    sys.stop().await
}
