//! Stock stays exact at the edges: direct reservations kept apart from
//! sagas, retries after a call died midway, releases racing reserves,
//! transactions that fail after Redis was (or would have been) told, and
//! counter epochs that never meet by accident.

use saga_shared::faults::CrashPoint;
use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::order::v1::OrderState;
use saga_tests::processes::Service;
use saga_tests::{TestSystem, eventually, order_request, state};
use tonic::Code;
use uuid::Uuid;

use crate::WAIT;
use crate::inventory::{reservation_state, reserve};

async fn release(sys: &TestSystem, id: &str) -> Result<inv::StockReservation, tonic::Status> {
    sys.clients
        .inventory
        .clone()
        .release_stock(inv::ReleaseStockRequest {
            reservation_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().reservation.unwrap_or_default())
}

async fn commit(sys: &TestSystem, id: &str) -> Result<inv::StockReservation, tonic::Status> {
    sys.clients
        .inventory
        .clone()
        .commit_stock(inv::CommitStockRequest {
            reservation_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().reservation.unwrap_or_default())
}

/// Redis and Postgres tell the same story for `sku` right now: the counter
/// is Postgres's available units and Redis holds exactly what Postgres has
/// RESERVED, quantity for quantity.
pub(crate) async fn redis_matches_postgres(sys: &TestSystem, sku: &str) -> anyhow::Result<()> {
    let stock = sys.stock(sku).await?;
    let counter = sys.redis_counter(sku).await?;
    let mut pg: Vec<(String, i64)> = sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT order_id, quantity FROM inventory.holds WHERE sku = $1 AND state = 'RESERVED'",
    )
    .bind(sku)
    .fetch_all(&sys.db)
    .await?
    .into_iter()
    .map(|(o, q)| (o.to_string(), q))
    .collect();
    pg.sort();
    let redis: Vec<(String, i64)> = counter
        .holds
        .iter()
        .map(|(o, h)| (o.clone(), h.qty))
        .collect();
    anyhow::ensure!(
        counter.avail == Some(stock.available) && redis == pg,
        "{sku}: Redis {counter:?}, Postgres available {} holds {pg:?}",
        stock.available
    );
    Ok(())
}

/// A rule that makes every transaction changing `sku`'s product row fail
/// at COMMIT (after every statement in it succeeded), while armed.
async fn arm_commit_failure(sys: &TestSystem, sku: &str) -> anyhow::Result<()> {
    for sql in [
        "CREATE TABLE IF NOT EXISTS inventory.fail_commit (sku TEXT PRIMARY KEY)",
        "CREATE OR REPLACE FUNCTION inventory.fail_commit() RETURNS trigger AS $$ \
         BEGIN IF EXISTS (SELECT 1 FROM inventory.fail_commit f WHERE f.sku = NEW.sku) THEN \
         RAISE EXCEPTION 'commit refused for %', NEW.sku; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "DROP TRIGGER IF EXISTS fail_commit ON inventory.products",
        "CREATE CONSTRAINT TRIGGER fail_commit AFTER UPDATE ON inventory.products \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION inventory.fail_commit()",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&sys.db)
            .await?;
    }
    sqlx::query("INSERT INTO inventory.fail_commit VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(sku)
        .execute(&sys.db)
        .await?;
    Ok(())
}

async fn disarm_commit_failure(sys: &TestSystem) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM inventory.fail_commit")
        .execute(&sys.db)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_calls_can_neither_release_commit_nor_preempt_a_sagas_holds() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        // Charges take a while: the orders sit RESERVED meanwhile.
        cfg.payment.gateway.latency_ms = 1_500;
        cfg.payment.gateway.jitter_ms = 0;
        cfg.inventory.bus.max_deliver = 1_000;
        cfg.inventory.bus.nak_base_delay_ms = 50;
        cfg.inventory.bus.nak_max_delay_ms = 200;
    })
    .await?;
    sys.seed_product("A", 100, 10).await?;
    sys.seed_product("B", 100, 10).await?;
    sys.top_up("dee", 100_000).await?;

    // An order's holds, while the saga is under way.
    let held = sys.place(order_request("dee", &[("A", 2)], None)).await?;
    eventually("the order to be RESERVED", WAIT, || async {
        Ok(state(&sys.get_order(&held.order_id).await?) == OrderState::Reserved)
    })
    .await?;
    for (call, answer) in [
        ("ReleaseStock", release(&sys, &held.order_id).await),
        ("CommitStock", commit(&sys, &held.order_id).await),
        (
            "ReserveStock",
            reserve(&sys, &held.order_id, &[("B", 1)]).await,
        ),
    ] {
        let status = answer.expect_err(call);
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{call}: {status:?}"
        );
        assert!(status.message().contains("saga"), "{call}: {status:?}");
    }
    let a = sys.stock("A").await?;
    assert_eq!(
        (a.reserved, a.sold),
        (2, 0),
        "the saga's holds are untouched"
    );
    assert_eq!(sys.stock("B").await?.reserved, 0);

    // A direct reservation made under an order's id before inventory saw
    // the order lives in its own space: the saga still holds its stock.
    sqlx::query(
        "ALTER TABLE inventory.holds ADD CONSTRAINT stock_block CHECK (sku <> 'A') NOT VALID",
    )
    .execute(&sys.db)
    .await?;
    let early = sys.place(order_request("dee", &[("A", 1)], None)).await?;
    let direct = reserve(&sys, &early.order_id, &[("B", 1)]).await?;
    assert_eq!(reservation_state(&direct), inv::ReservationState::Reserved);
    sqlx::query("ALTER TABLE inventory.holds DROP CONSTRAINT stock_block")
        .execute(&sys.db)
        .await?;

    for id in [&held.order_id, &early.order_id] {
        let done = sys.wait_terminal(id, WAIT).await?;
        assert_eq!(state(&done), OrderState::Confirmed, "{done:?}");
    }
    sys.quiesce(WAIT).await?;
    let a = sys.stock("A").await?;
    assert_eq!((a.reserved, a.sold), (0, 3));
    let b = sys.stock("B").await?;
    assert_eq!(
        (b.reserved, b.sold),
        (1, 0),
        "the direct reservation stands"
    );
    // It answers under its own id, and lets go of its own stock.
    assert_eq!(
        reserve(&sys, &early.order_id, &[("B", 1)]).await?,
        direct,
        "a retry answers the same"
    );
    let gone = release(&sys, &early.order_id).await?;
    assert_eq!(reservation_state(&gone), inv::ReservationState::Released);
    assert_eq!(sys.stock("B").await?.available, 10);
    redis_matches_postgres(&sys, "A").await?;
    redis_matches_postgres(&sys, "B").await?;
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_other_lines_after_a_call_died_midway_is_refused_and_leaks_nothing()
-> anyhow::Result<()> {
    let mut sys = TestSystem::start_processes(|_| {}).await?;
    sys.seed_product("R", 100, 10).await?;
    let id = Uuid::now_v7().to_string();
    // The first call dies between the Redis grant and the Postgres write.
    sys.processes().kill(Service::Inventory);
    sys.processes()
        .start(
            Service::Inventory,
            &[("SAGA_CRASH_AT", CrashPoint::InventoryAfterRedisHold.name())],
        )
        .await?;
    reserve(&sys, &id, &[("R", 5)])
        .await
        .expect_err("the call died with its process");
    sys.processes().wait_ended(Service::Inventory, WAIT).await?;
    sys.processes().start(Service::Inventory, &[]).await?;

    let other = reserve(&sys, &id, &[("R", 2)])
        .await
        .expect_err("a retry with other lines");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    assert_eq!(sys.stock("R").await?.reserved, 0, "nothing recorded");
    let same = reserve(&sys, &id, &[("R", 5)]).await?;
    assert_eq!(reservation_state(&same), inv::ReservationState::Reserved);
    assert_eq!(sys.stock("R").await?.available, 5);
    redis_matches_postgres(&sys, "R").await?;
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_racing_its_reserve_leaves_no_hold_behind_in_redis() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        // No reconciliation to tidy up after the fact.
        cfg.inventory.inventory.reconcile_interval_ms = 0;
        cfg.inventory.inventory.orphan_grace_secs = 3_600;
    })
    .await?;
    sys.seed_product("RACE", 100, 1_000).await?;
    let races = (0..100).map(|i| {
        let id = Uuid::now_v7().to_string();
        let sys = &sys;
        async move {
            // The release leaves 0 to 5 ms after the reserve: the fault
            // schedule, so that it lands at every step of the reserve.
            let lag = std::time::Duration::from_micros((i % 20) * 250);
            let (held, released) = tokio::join!(reserve(sys, &id, &[("RACE", 1)]), async {
                tokio::time::sleep(lag).await;
                release(sys, &id).await
            });
            held?;
            released?;
            // Whatever the order of the two, the reservation ends released.
            let after = release(sys, &id).await?;
            anyhow::ensure!(
                reservation_state(&after) == inv::ReservationState::Released,
                "{after:?}"
            );
            Ok::<_, anyhow::Error>(())
        }
    });
    for r in futures::future::join_all(races).await {
        r?;
    }
    let stock = sys.stock("RACE").await?;
    assert_eq!((stock.reserved, stock.available), (0, 1_000));
    redis_matches_postgres(&sys, "RACE").await?;
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_adjustment_or_release_whose_commit_fails_leaves_redis_as_postgres_is()
-> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.inventory.reconcile_interval_ms = 0;
    })
    .await?;
    let seeded = sys.seed_product("PH", 100, 5).await?;
    arm_commit_failure(&sys, "PH").await?;
    let refused = sys
        .clients
        .inventory
        .clone()
        .adjust_stock(inv::AdjustStockRequest {
            sku: "PH".into(),
            delta: 100,
            expected_version: seeded.version,
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    disarm_commit_failure(&sys).await?;
    assert_eq!(sys.stock("PH").await?.on_hand, 5);
    redis_matches_postgres(&sys, "PH").await?;

    let id = Uuid::now_v7().to_string();
    reserve(&sys, &id, &[("PH", 4)]).await?;
    arm_commit_failure(&sys, "PH").await?;
    assert!(release(&sys, &id).await.is_err());
    disarm_commit_failure(&sys).await?;
    assert_eq!(sys.stock("PH").await?.reserved, 4);
    redis_matches_postgres(&sys, "PH").await?;

    // Nothing phantom to sell: the fifth and sixth units do not exist.
    let greedy = reserve(&sys, &Uuid::now_v7().to_string(), &[("PH", 2)]).await?;
    assert_eq!(
        reservation_state(&greedy),
        inv::ReservationState::Rejected,
        "{greedy:?}"
    );
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_rebuilt_in_a_transaction_that_fails_is_never_taken_for_current()
-> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.inventory.reconcile_interval_ms = 0;
    })
    .await?;
    sys.seed_product("EP", 100, 10).await?;
    // Redis loses the counter; its rebuild writes Redis, then fails to
    // commit in Postgres.
    let counter_key = format!("inv:{{{}:EP}}", sys.ns);
    let _: i64 = fred::prelude::KeysInterface::del(sys.redis.next(), &counter_key).await?;
    arm_commit_failure(&sys, "EP").await?;
    let inventory = sys.inventory_with(|_| {}).await?;
    assert!(inventory.rebuild(&["EP".to_owned()]).await.is_err());
    disarm_commit_failure(&sys).await?;

    // All ten units go through the Postgres path (Redis not told).
    let postgres = sys
        .inventory_with(|s| s.reserve_path = inventory_svc::config::ReservePath::Postgres)
        .await?;
    postgres
        .reserve_direct(
            Uuid::now_v7(),
            vec![inventory_svc::domain::Line {
                sku: "EP".into(),
                quantity: 10,
            }],
        )
        .await?;
    let epoch: i64 =
        sqlx::query_scalar("SELECT redis_epoch FROM inventory.products WHERE sku = 'EP'")
            .fetch_one(&sys.db)
            .await?;
    assert_ne!(
        sys.redis_counter("EP").await?.epoch,
        Some(epoch),
        "the counter Redis kept from the failed rebuild passes for current"
    );
    // So the fast path refuses to sell from it: sold out is sold out.
    let late = reserve(&sys, &Uuid::now_v7().to_string(), &[("EP", 1)]).await?;
    assert_eq!(reservation_state(&late), inv::ReservationState::Rejected);
    let ep = sys.stock("EP").await?;
    assert_eq!((ep.reserved, ep.available), (10, 0));
    redis_matches_postgres(&sys, "EP").await?;
    sys.stop().await
}

/// Units added to a SKU whose counter was not told of them (the caller's
/// deadline dropped the call after its commit, Redis timed out on the
/// rebuild, or a retry was answered from the idempotency record, which does
/// not rebuild) are sold, not refused. The counter used to keep its epoch
/// across an addition, so its refusal passed for current: every order over
/// the old count was rejected out of stock while Postgres had the units,
/// until the next reconciliation (never, with reconciliation off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_added_while_the_counter_was_not_told_are_sold_not_refused() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.inventory.reconcile_interval_ms = 0;
    })
    .await?;
    sys.seed_product("RS", 100, 1).await?;
    let first = reserve(&sys, &Uuid::now_v7().to_string(), &[("RS", 1)]).await?;
    assert_eq!(reservation_state(&first), inv::ReservationState::Reserved);
    // The restock commits; what follows its commit never runs.
    let inventory = sys.inventory_with(|_| {}).await?;
    let version = sys.stock("RS").await?.version;
    let mut tx = inventory.store().pool.begin().await?;
    inventory.adjust_in(&mut tx, "RS", 5, version).await?;
    tx.commit().await?;
    assert_eq!(sys.stock("RS").await?.available, 5);

    let second = reserve(&sys, &Uuid::now_v7().to_string(), &[("RS", 1)]).await?;
    assert_eq!(
        reservation_state(&second),
        inv::ReservationState::Reserved,
        "a unit Postgres has is sold"
    );
    let rs = sys.stock("RS").await?;
    assert_eq!((rs.reserved, rs.available), (2, 4));
    redis_matches_postgres(&sys, "RS").await?;
    sys.stop().await
}
