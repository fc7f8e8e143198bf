//! Inventory under contention and failure: both reservation paths, Redis
//! killed or flushed under load, reconciliation racing reservations, orphan
//! holds, optimistic locking, and the direct reservation calls.

use std::sync::Arc;
use std::time::Duration;

use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::order::v1::OrderState;
use saga_tests::servers::RedisServer;
use saga_tests::{TestSystem, eventually, order_request, state};
use tonic::Code;
use uuid::Uuid;

use crate::WAIT;

pub(crate) fn lines(items: &[(&str, i64)]) -> Vec<inv::ReservationLine> {
    items
        .iter()
        .map(|(sku, quantity)| inv::ReservationLine {
            sku: (*sku).into(),
            quantity: *quantity,
        })
        .collect()
}

pub(crate) async fn reserve(
    sys: &TestSystem,
    id: &str,
    items: &[(&str, i64)],
) -> Result<inv::StockReservation, tonic::Status> {
    sys.clients
        .inventory
        .clone()
        .reserve_stock(inv::ReserveStockRequest {
            reservation_id: id.into(),
            lines: lines(items),
        })
        .await
        .map(|r| r.into_inner().reservation.unwrap_or_default())
}

pub(crate) fn reservation_state(r: &inv::StockReservation) -> inv::ReservationState {
    inv::ReservationState::try_from(r.state).unwrap_or(inv::ReservationState::Unspecified)
}

/// 1,000 clients at once reserve one unit each of a SKU with 100.
async fn thousand_reservations_for_a_hundred(sys: Arc<TestSystem>) -> anyhow::Result<()> {
    sys.seed_product("HOT", 100, 100).await?;
    let answers = futures::future::join_all((0..1_000).map(|_| {
        let sys = sys.clone();
        tokio::spawn(async move { reserve(&sys, &Uuid::now_v7().to_string(), &[("HOT", 1)]).await })
    }))
    .await;
    let mut granted = 0;
    let mut rejected = 0;
    for answer in answers {
        let r = answer??;
        match reservation_state(&r) {
            inv::ReservationState::Reserved => granted += 1,
            inv::ReservationState::Rejected => {
                assert_eq!(
                    (r.rejected_sku.as_str(), r.reject_reason.as_str()),
                    ("HOT", "out_of_stock")
                );
                rejected += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((granted, rejected), (100, 900));
    let hot = sys.stock("HOT").await?;
    assert_eq!((hot.on_hand, hot.reserved, hot.available), (100, 100, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_reservations_of_a_hundred_units_grant_exactly_a_hundred_through_redis()
-> anyhow::Result<()> {
    let sys = Arc::new(TestSystem::start().await?);
    thousand_reservations_for_a_hundred(sys.clone()).await?;
    let redis = sys.redis_counter("HOT").await?;
    assert_eq!(
        (redis.avail, redis.holds.len()),
        (Some(0), 100),
        "held in Redis"
    );
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    Arc::into_inner(sys)
        .expect("no task holds the system")
        .stop()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_reservations_of_a_hundred_units_grant_exactly_a_hundred_through_postgres()
-> anyhow::Result<()> {
    let sys = Arc::new(
        TestSystem::start_with(|cfg| {
            cfg.inventory.inventory.reserve_path = inventory_svc::config::ReservePath::Postgres;
        })
        .await?,
    );
    let (code, body) = sys.inventory_readiness().await?;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("postgres (pinned by configuration)"),
        "{body}"
    );
    thousand_reservations_for_a_hundred(sys.clone()).await?;
    let redis = sys.redis_counter("HOT").await?;
    assert!(redis.holds.is_empty(), "Redis was not used: {redis:?}");
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    Arc::into_inner(sys)
        .expect("no task holds the system")
        .stop()
        .await
}

/// Places `n` orders of one or two lines over `skus`, `at_once` at a time.
async fn place_batch(
    sys: &TestSystem,
    n: usize,
    skus: &[&str],
    round: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let placed = futures::future::join_all(chunk.iter().map(|i| {
            let a = skus[(round + i) % skus.len()];
            let b = skus[(round + i * 7 + 1) % skus.len()];
            let items: Vec<(&str, i64)> = if a == b {
                vec![(a, 1)]
            } else {
                vec![(a, 1), (b, 2)]
            };
            sys.place(order_request("buyer", &items, None))
        }))
        .await;
        for p in placed {
            ids.push(p?.order_id);
        }
    }
    Ok(ids)
}

/// How soon Redis must agree with Postgres once the system is quiet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Agreement {
    /// At once: nothing went wrong with Redis.
    AtOnce,
    /// After the periodic reconciliation: Redis failed along the way.
    AfterReconciliation,
}

/// Every order ended, nothing is oversold or held, and every Redis counter
/// agrees with Postgres (at once, or once the reconciliation has run).
async fn end_state_is_consistent(
    sys: &TestSystem,
    ids: &[String],
    skus: &[&str],
    agreement: Agreement,
) -> anyhow::Result<()> {
    let done = sys.wait_all_terminal(ids, WAIT).await?;
    assert!(done.iter().any(|o| state(o) == OrderState::Confirmed));
    sys.quiesce(WAIT).await?;
    if agreement == Agreement::AtOnce {
        assert_eq!(sys.violations().await?, Vec::<String>::new(), "at once");
    }
    for sku in skus {
        let pg = sys.stock(sku).await?;
        assert!(pg.available >= 0 && pg.reserved == 0, "{pg:?}");
        eventually(
            &format!("Redis to agree with Postgres on {sku}"),
            WAIT,
            || async {
                let redis = sys.redis_counter(sku).await?;
                Ok(redis.avail == Some(pg.available) && redis.holds.is_empty())
            },
        )
        .await?;
    }
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_falls_back_to_postgres_and_returns_rebuilt_without_oversell()
-> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let url = redis.url();
    let sys = TestSystem::start_with(|cfg| {
        for r in [&mut cfg.inventory.redis, &mut cfg.reservation.redis] {
            r.url = url.clone();
            r.command_timeout_ms = 300;
        }
        cfg.inventory.inventory.probe_interval_ms = 100;
        cfg.inventory.inventory.reconcile_interval_ms = 250;
        // A hold Redis granted as it went down is released soon after.
        cfg.inventory.inventory.orphan_grace_secs = 3;
        cfg.reservation.reservation.lock_wait_ms = 100;
    })
    .await?;
    let skus = ["K1", "K2", "K3", "K4"];
    for sku in skus {
        sys.seed_product(sku, 100, 60).await?;
    }
    sys.top_up("buyer", 100_000_000).await?;

    let mut ids = place_batch(&sys, 60, &skus, 0).await?;
    redis.kill();
    ids.extend(place_batch(&sys, 60, &skus, 1).await?);
    eventually("reservations to go through Postgres", WAIT, || async {
        let (code, body) = sys.inventory_readiness().await?;
        Ok(code == 200
            && body.contains("\"degraded\":true")
            && body.contains("postgres: Redis breaker open"))
    })
    .await?;
    ids.extend(place_batch(&sys, 40, &skus, 2).await?);
    redis.restart().await?;
    ids.extend(place_batch(&sys, 60, &skus, 3).await?);
    eventually("reservations to return to Redis", WAIT, || async {
        let (_, body) = sys.inventory_readiness().await?;
        Ok(body.contains("redis (fast path)"))
    })
    .await?;
    ids.extend(place_batch(&sys, 40, &skus, 4).await?);
    end_state_is_consistent(&sys, &ids, &skus, Agreement::AfterReconciliation).await?;
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_under_load_rebuilds_its_counters_without_oversell() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let url = redis.url();
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.redis.url = url.clone();
        cfg.reservation.redis.url = url.clone();
        cfg.inventory.inventory.reconcile_interval_ms = 250;
        // A hold Redis granted as it went down is released soon after.
        cfg.inventory.inventory.orphan_grace_secs = 3;
    })
    .await?;
    let skus = ["F1", "F2", "F3"];
    for sku in skus {
        sys.seed_product(sku, 100, 50).await?;
    }
    sys.top_up("buyer", 100_000_000).await?;
    let flusher = {
        let redis = sys.redis.clone();
        tokio::spawn(async move {
            use fred::prelude::*;
            let mut tick = tokio::time::interval(Duration::from_millis(150));
            for _ in 0..8 {
                tick.tick().await;
                let _: Result<(), _> = redis.next().flushall(false).await;
            }
        })
    };
    let mut ids = Vec::new();
    for round in 0..4 {
        ids.extend(place_batch(&sys, 50, &skus, round).await?);
    }
    flusher.await?;
    // Redis lost everything several times; what it lost is rebuilt on use.
    for sku in skus {
        sys.clients
            .inventory
            .clone()
            .reserve_stock(inv::ReserveStockRequest {
                reservation_id: Uuid::now_v7().to_string(),
                lines: lines(&[(sku, 1)]),
            })
            .await?;
    }
    let done = sys.wait_all_terminal(&ids, WAIT).await?;
    assert!(done.iter().all(saga_tests::is_terminal));
    sys.quiesce(WAIT).await?;
    for sku in skus {
        let pg = sys.stock(sku).await?;
        assert!(pg.available >= 0, "{pg:?}");
        eventually(
            &format!("Redis to agree with Postgres on {sku}"),
            WAIT,
            || async { Ok(sys.redis_counter(sku).await?.avail == Some(pg.available)) },
        )
        .await?;
    }
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_every_few_milliseconds_during_500_multi_line_orders_never_oversells()
-> anyhow::Result<()> {
    let sys = Arc::new(
        TestSystem::start_with(|cfg| {
            cfg.inventory.inventory.reconcile_interval_ms = 5;
            cfg.inventory.inventory.orphan_grace_secs = 10;
        })
        .await?,
    );
    let skus: Vec<String> = (0..10).map(|i| format!("R{i}")).collect();
    for sku in &skus {
        sys.seed_product(sku, 50, 40).await?;
    }
    sys.top_up("buyer", 100_000_000).await?;
    let placed = futures::future::join_all((0..500).map(|i| {
        let sys = sys.clone();
        let skus = skus.clone();
        tokio::spawn(async move {
            let a = &skus[i % 10];
            let b = &skus[(i * 3 + 1) % 10];
            let c = &skus[(i * 7 + 2) % 10];
            let mut items: Vec<(&str, i64)> = vec![(a.as_str(), 1)];
            if b != a {
                items.push((b.as_str(), 2));
            }
            if c != a && c != b {
                items.push((c.as_str(), 1));
            }
            sys.place(order_request("buyer", &items, None)).await
        })
    }))
    .await;
    let ids: Vec<String> = placed
        .into_iter()
        .map(|p| Ok(p??.order_id))
        .collect::<anyhow::Result<_>>()?;
    let sku_refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    end_state_is_consistent(&sys, &ids, &sku_refs, Agreement::AtOnce).await?;
    let sold: i64 = sqlx::query_scalar("SELECT sum(sold)::bigint FROM inventory.products")
        .fetch_one(&sys.db)
        .await?;
    assert!(sold > 0 && sold <= 400, "sold {sold} of 400");
    Arc::into_inner(sys)
        .expect("no task holds the system")
        .stop()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_hold_in_redis_is_released_only_after_the_grace_period() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.inventory.reconcile_interval_ms = 0;
    })
    .await?;
    sys.seed_product("O", 100, 10).await?;
    // A hold Postgres knows about must survive every pass.
    let recorded = Uuid::now_v7();
    reserve(&sys, &recorded.to_string(), &[("O", 2)]).await?;
    // A hold Redis granted that Postgres never recorded (its process died).
    let patient = sys.inventory_with(|s| s.orphan_grace_secs = 3_600).await?;
    let orphan = Uuid::now_v7();
    let granted = patient
        .cache()
        .reserve(
            orphan,
            &[inventory_svc::domain::Line {
                sku: "O".into(),
                quantity: 3,
            }],
        )
        .await?;
    assert!(matches!(
        granted,
        inventory_svc::store::cache::Reserve::Granted(_)
    ));
    assert_eq!(sys.redis_counter("O").await?.avail, Some(5));

    let report = patient.reconcile(None).await?;
    assert!(
        report.fixed.is_empty(),
        "within the grace period: {report:?}"
    );
    assert!(
        sys.redis_counter("O")
            .await?
            .holds
            .contains_key(&orphan.to_string())
    );

    let strict = sys.inventory_with(|s| s.orphan_grace_secs = 0).await?;
    eventually(
        "the hold to be older than a zero grace period",
        WAIT,
        || async {
            let report = strict.reconcile(None).await?;
            Ok(report
                .fixed
                .iter()
                .any(|f| f.sku == "O" && f.orphans_released == 1))
        },
    )
    .await?;
    let counter = sys.redis_counter("O").await?;
    assert_eq!(counter.avail, Some(8));
    assert!(!counter.holds.contains_key(&orphan.to_string()));
    // (A direct reservation's hold is kept under its ledger id: ADR 0008.)
    let ledger = inventory_svc::domain::Holder::Direct(recorded).ledger_id();
    assert!(counter.holds.contains_key(&ledger.to_string()));
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

/// A hold that Postgres closed long ago and Redis still keeps (the release
/// never reached Redis: it was down then, and came back with its data) is
/// dropped by a reconciliation as closed, however long ago it closed, and
/// nothing in flight is voided. A rebuild used to look only at holds closed
/// within `closed_window_secs` (and so read and sent every hold of the SKU
/// closed within it: on a hot SKU, every order of the last hour); one
/// closed before passed for a reservation in flight, its units lost to
/// sale until the grace period made it an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_closed_long_ago_that_redis_still_keeps_is_dropped_by_reconciliation()
-> anyhow::Result<()> {
    use fred::prelude::HashesInterface;
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.inventory.reconcile_interval_ms = 0;
    })
    .await?;
    sys.seed_product("L", 100, 10).await?;
    let id = Uuid::now_v7();
    let held = reserve(&sys, &id.to_string(), &[("L", 4)]).await?;
    assert_eq!(reservation_state(&held), inv::ReservationState::Reserved);
    let ledger = inventory_svc::domain::Holder::Direct(id)
        .ledger_id()
        .to_string();
    let hold = sys.redis_counter("L").await?.holds[&ledger];
    sys.clients
        .inventory
        .clone()
        .release_stock(inv::ReleaseStockRequest {
            reservation_id: id.to_string(),
        })
        .await?;
    // Redis as if it never heard of the release; the release two days ago.
    let key = format!("inv:{{{}:L}}", sys.ns);
    let fields = vec![
        (ledger.clone(), format!("{}:{}", hold.qty, hold.granted_ms)),
        ("~avail".to_owned(), "6".to_owned()),
    ];
    let _: i64 = sys.redis.next().hset(&key, fields).await?;
    sqlx::query(
        "UPDATE inventory.holds SET updated_at = now() - interval '2 days' \
         WHERE order_id = $1::uuid",
    )
    .bind(&ledger)
    .execute(&sys.db)
    .await?;

    // A grace period long enough that the hold cannot pass for an orphan.
    let patient = sys.inventory_with(|s| s.orphan_grace_secs = 86_400).await?;
    let report = patient.reconcile(None).await?;
    let fix = report.fixed.iter().find(|f| f.sku == "L");
    assert!(
        fix.is_some_and(|f| f.closed_dropped == 1 && f.orphans_released == 0 && !f.epoch_moved),
        "the closed hold dropped as closed: {report:?}"
    );
    let counter = sys.redis_counter("L").await?;
    assert_eq!(counter.avail, Some(10));
    assert!(!counter.holds.contains_key(&ledger));
    crate::stock::redis_matches_postgres(&sys, "L").await?;
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjust_stock_with_a_stale_version_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let a = sys.seed_product("V", 100, 10).await?;
    let mut inventory = sys.clients.inventory.clone();
    let ok = inventory
        .adjust_stock(inv::AdjustStockRequest {
            sku: "V".into(),
            delta: 5,
            expected_version: a.version,
        })
        .await?
        .into_inner()
        .stock
        .unwrap_or_default();
    assert_eq!((ok.on_hand, ok.version), (15, a.version + 1));
    let stale = inventory
        .adjust_stock(inv::AdjustStockRequest {
            sku: "V".into(),
            delta: 5,
            expected_version: a.version,
        })
        .await
        .expect_err("a stale version must be refused");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(
        stale
            .message()
            .contains(&format!("current version is {}", a.version + 1)),
        "{stale:?}"
    );
    let after = sys.stock("V").await?;
    assert_eq!((after.on_hand, after.version), (15, a.version + 1));
    assert_eq!(sys.redis_counter("V").await?.avail, Some(15));
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reservations_are_idempotent_by_id_and_release_and_commit_like_the_saga()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("D1", 300, 10).await?;
    sys.seed_product("D2", 200, 10).await?;
    let mut inventory = sys.clients.inventory.clone();

    let id = Uuid::now_v7().to_string();
    let first = reserve(&sys, &id, &[("D1", 2), ("D2", 1)]).await?;
    assert_eq!(reservation_state(&first), inv::ReservationState::Reserved);
    let prices: Vec<(String, i64, i64)> = first
        .lines
        .iter()
        .map(|l| (l.sku.clone(), l.quantity, l.unit_price_cents))
        .collect();
    assert_eq!(prices, [("D1".into(), 2, 300), ("D2".into(), 1, 200)]);
    assert_eq!(
        reserve(&sys, &id, &[("D2", 1), ("D1", 2)]).await?,
        first,
        "a retry answers the same"
    );
    let conflict = reserve(&sys, &id, &[("D1", 3)])
        .await
        .expect_err("other lines under a used id");
    assert_eq!(conflict.code(), Code::FailedPrecondition);
    assert_eq!(sys.stock("D1").await?.available, 8, "held once");

    let committed = inventory
        .commit_stock(inv::CommitStockRequest {
            reservation_id: id.clone(),
        })
        .await?
        .into_inner()
        .reservation
        .unwrap_or_default();
    assert_eq!(
        reservation_state(&committed),
        inv::ReservationState::Committed
    );
    let d1 = sys.stock("D1").await?;
    assert_eq!((d1.reserved, d1.sold, d1.available), (0, 2, 8));
    let refused = inventory
        .release_stock(inv::ReleaseStockRequest {
            reservation_id: id.clone(),
        })
        .await?
        .into_inner()
        .reservation
        .unwrap_or_default();
    assert_eq!(
        reservation_state(&refused),
        inv::ReservationState::Committed,
        "sold stays sold"
    );

    let second = Uuid::now_v7().to_string();
    reserve(&sys, &second, &[("D2", 4)]).await?;
    let released = inventory
        .release_stock(inv::ReleaseStockRequest {
            reservation_id: second.clone(),
        })
        .await?
        .into_inner()
        .reservation
        .unwrap_or_default();
    assert_eq!(
        reservation_state(&released),
        inv::ReservationState::Released
    );
    assert_eq!(sys.stock("D2").await?.available, 9);
    let not_committable = inventory
        .commit_stock(inv::CommitStockRequest {
            reservation_id: second.clone(),
        })
        .await
        .expect_err("a released reservation cannot be committed");
    assert_eq!(not_committable.code(), Code::FailedPrecondition);

    // A release that comes first leaves a tombstone: the late reserve holds nothing.
    let early = Uuid::now_v7().to_string();
    inventory
        .release_stock(inv::ReleaseStockRequest {
            reservation_id: early.clone(),
        })
        .await?;
    let late = reserve(&sys, &early, &[("D2", 1)]).await?;
    assert_eq!(reservation_state(&late), inv::ReservationState::Released);
    assert!(late.lines.is_empty());
    assert_eq!(sys.stock("D2").await?.available, 9);

    let unknown = inventory
        .commit_stock(inv::CommitStockRequest {
            reservation_id: Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown reservation");
    assert_eq!(unknown.code(), Code::NotFound);
    let no_sku = reserve(&sys, &Uuid::now_v7().to_string(), &[("NOPE", 1)])
        .await
        .expect_err("unknown SKU");
    assert_eq!(no_sku.code(), Code::NotFound);
    let bad = reserve(&sys, "nope", &[("D1", 1)])
        .await
        .expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let zero = reserve(&sys, &Uuid::now_v7().to_string(), &[("D1", 0)])
        .await
        .expect_err("zero quantity");
    assert!(zero.message().contains("lines[0].quantity"), "{zero:?}");
    sys.quiesce(WAIT).await?;
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

/// A Redis restarted from a snapshot that lacks its latest grants (a crash
/// of a Redis that persists, or a failover to a replica behind) keeps its
/// counters' epochs, so a counter says units are free that Postgres has
/// reserved. Postgres decides: a grant from such a counter is rejected as
/// out of stock, the counter is rebuilt, and what Redis granted is given
/// back. It used to fail on Postgres's stock CHECK as INTERNAL, at every
/// attempt until the grant was old enough to be dropped as an orphan (and
/// an order's orders.placed was dead-lettered meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_from_a_counter_that_lost_writes_is_refused_by_postgres() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let url = redis.url();
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.redis.url = url.clone();
        cfg.reservation.redis.url = url.clone();
        // No pass of reconciliation mends the counter first.
        cfg.inventory.inventory.reconcile_interval_ms = 0;
    })
    .await?;
    sys.seed_product("L", 100, 2).await?;
    let first = reserve(&sys, &Uuid::now_v7().to_string(), &[("L", 1)]).await?;
    assert_eq!(reservation_state(&first), inv::ReservationState::Reserved);
    redis.snapshot()?;
    let second = reserve(&sys, &Uuid::now_v7().to_string(), &[("L", 1)]).await?;
    assert_eq!(reservation_state(&second), inv::ReservationState::Reserved);
    redis.restart().await?;
    eventually("the restarted Redis to answer the test", WAIT, || async {
        Ok(sys.redis_counter("L").await.is_ok())
    })
    .await?;
    let counter = sys.redis_counter("L").await?;
    assert_eq!(
        (counter.avail, counter.holds.len()),
        (Some(1), 1),
        "the counter as of the snapshot"
    );

    let third = reserve(&sys, &Uuid::now_v7().to_string(), &[("L", 1)]).await?;
    assert_eq!(
        reservation_state(&third),
        inv::ReservationState::Rejected,
        "{third:?}"
    );
    let stock = sys.stock("L").await?;
    assert_eq!((stock.reserved, stock.available), (2, 0), "{stock:?}");
    // The counter no longer grants what Postgres does not have.
    let fourth = reserve(&sys, &Uuid::now_v7().to_string(), &[("L", 1)]).await?;
    assert_eq!(reservation_state(&fourth), inv::ReservationState::Rejected);
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

/// A refusal from a stale counter is no answer: when Postgres changed a SKU
/// since its counter was built and moved the counter's epoch without
/// telling Redis (what every change through Postgres does, such as a
/// release while the breaker was open, here a restock made in Postgres
/// alone), the counter is rebuilt and asked again. Only grants were checked
/// against the epoch; a refusal was taken as out of stock while Postgres
/// had the units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_a_stale_counter_is_asked_again_once_rebuilt() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.inventory.reconcile_interval_ms = 0;
    })
    .await?;
    sys.seed_product("S", 100, 1).await?;
    let first = reserve(&sys, &Uuid::now_v7().to_string(), &[("S", 1)]).await?;
    assert_eq!(reservation_state(&first), inv::ReservationState::Reserved);
    let schema = sys.config.inventory.database.schema.clone();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.products SET on_hand = on_hand + 1, \
         redis_epoch = nextval('{schema}.redis_epochs') WHERE sku = 'S'"
    )))
    .execute(&sys.db)
    .await?;
    assert_eq!(
        sys.redis_counter("S").await?.avail,
        Some(0),
        "the counter as built before the restock"
    );

    let second = reserve(&sys, &Uuid::now_v7().to_string(), &[("S", 1)]).await?;
    assert_eq!(
        reservation_state(&second),
        inv::ReservationState::Reserved,
        "{second:?}"
    );
    let stock = sys.stock("S").await?;
    assert_eq!((stock.reserved, stock.available), (2, 0), "{stock:?}");
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}
