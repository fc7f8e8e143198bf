//! Every transaction that changes rows that a batch of events locks takes
//! them in the batch's order: the shared rows first (products, wallets,
//! slots), in the database's order of their keys, then the order's own row
//! (its hold decision, payment or booking). One that takes them the other
//! way round waits for a shared row while holding the order's row, and
//! deadlocks with a batch that holds the shared row and wants the order's:
//! Postgres kills one of the two after a second, and the work is redone.
//!
//! Each test holds a shared row in a transaction of its own, sets the work
//! going, waits until the work waits for that row, and then probes, in a
//! third transaction that does not wait, that the work holds nothing it
//! should have locked after it.

use std::time::Duration;

use futures::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use saga_shared::bus::SagaEvent;
use saga_shared::config::DatabaseConfig;
use saga_shared::proto::events::v1 as pb;
use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::reservation::v1 as rsv;
use saga_shared::repair::{Outcome, Participant};
use saga_tests::TestSystem;
use sagactl::system::SystemConfig;

use crate::WAIT;

/// A pool on a service's database with its schema on the search path.
async fn service_pool(db: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = db.url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options.options([("search_path", db.schema.as_str())]))
        .await?)
}

/// The system (`tweak` applied) and a pool on one service's database.
async fn started(
    tweak: impl FnOnce(&mut SystemConfig),
    db: impl Fn(&SystemConfig) -> &DatabaseConfig,
) -> anyhow::Result<(TestSystem, PgPool)> {
    let sys = TestSystem::start_with(tweak).await?;
    let pool = service_pool(db(&sys.config)).await?;
    Ok((sys, pool))
}

/// Inventory with nothing of its own taking product locks meanwhile.
fn quiet_inventory(cfg: &mut SystemConfig) {
    cfg.inventory.inventory.reconcile_interval_ms = 0;
    cfg.inventory.repair.interval_ms = 0;
}

/// A row lock the test holds in a transaction of its own.
struct Held {
    tx: Transaction<'static, Postgres>,
    pid: i32,
}

impl Held {
    /// Runs `lock` (a `SELECT ... FOR UPDATE`) in a new transaction.
    async fn take(db: &PgPool, lock: String) -> anyhow::Result<Self> {
        let mut tx = db.begin().await?;
        let locked = sqlx::query(sqlx::AssertSqlSafe(lock.clone()))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        anyhow::ensure!(locked > 0, "nothing to lock: {lock}");
        let pid = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await?;
        Ok(Self { tx, pid })
    }

    /// Waits until another transaction waits for this one's lock, then runs
    /// `probe` in a third transaction that gives up on a lock it cannot
    /// take at once, and lets go of everything. Returns what the probe met.
    async fn probe_then_release(
        self,
        db: &PgPool,
        probe: String,
    ) -> anyhow::Result<Result<(), sqlx::Error>> {
        saga_tests::eventually(
            "the work to wait for the test's lock",
            Duration::from_secs(30),
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                )
                .bind(self.pid)
                .fetch_one(db)
                .await?;
                Ok(waiting > 0)
            },
        )
        .await?;
        let mut next = db.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '300ms'")
            .execute(&mut *next)
            .await?;
        let met = sqlx::query(sqlx::AssertSqlSafe(probe))
            .execute(&mut *next)
            .await
            .map(drop);
        next.rollback().await?;
        self.tx.rollback().await?;
        Ok(met)
    }
}

/// Runs `work` while a transaction of the test's own holds the lock that
/// `lock` takes; once something waits for that lock, `probe` must get its
/// locks at once (`what` says what it means if not). Returns `work`'s
/// output, once the lock is let go.
async fn while_holding<T>(
    db: &PgPool,
    lock: String,
    work: impl Future<Output = T>,
    probe: String,
    what: &str,
) -> anyhow::Result<T> {
    let held = Held::take(db, lock).await?;
    let (out, met) = tokio::join!(work, held.probe_then_release(db, probe));
    let met = met?;
    assert!(met.is_ok(), "{what}: {met:?}");
    Ok(out)
}

/// Waits until `query` (one text column, one bind: `id`) reads `want`.
async fn wait_for_state(
    db: &PgPool,
    query: &'static str,
    id: Uuid,
    want: &str,
) -> anyhow::Result<()> {
    saga_tests::eventually(&format!("{id} to be {want}"), WAIT, || async {
        let state: Option<String> = sqlx::query_scalar(query)
            .bind(id)
            .fetch_optional(db)
            .await?;
        Ok(state.as_deref() == Some(want))
    })
    .await
}

fn lines(items: &[(&str, i64)]) -> Vec<pb::OrderLine> {
    items
        .iter()
        .map(|(sku, quantity)| pb::OrderLine {
            sku: (*sku).into(),
            quantity: *quantity,
        })
        .collect()
}

fn placed(order: Uuid, items: &[(&str, i64)], slot: Option<&str>) -> SagaEvent {
    SagaEvent::OrderPlaced(pb::OrderPlaced {
        order_id: order.to_string(),
        customer_id: "c".into(),
        lines: lines(items),
        slot_id: slot.map(str::to_owned),
        placed_at: None,
    })
}

/// What the payment tests' wallet lock takes.
const LOCK_WALLET: &str = "SELECT 1 FROM wallets WHERE customer_id = 'c' FOR UPDATE";

/// orders.reserved of 7.00 for customer "c".
fn reserved(order: Uuid) -> SagaEvent {
    SagaEvent::OrderReserved(pb::OrderReserved {
        order_id: order.to_string(),
        customer_id: "c".into(),
        amount_cents: 700,
    })
}

/// Runs `test` against a database of its own whose collation is `en-US`
/// (the default of the usual Postgres images), where "a" sorts before "B",
/// unlike in byte order; the database is dropped whatever the outcome.
async fn in_icu_database<F, Fut>(test: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let name = format!(
        "saga_test_icu_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = PgPool::connect(&format!("{}/postgres", saga_tests::pg_base())).await?;
    let create = format!(
        "CREATE DATABASE \"{name}\" TEMPLATE template0 \
         LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    );
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&admin)
        .await?;
    let url = format!("{}/{name}", saga_tests::pg_base());
    let result = std::panic::AssertUnwindSafe(test(url)).catch_unwind().await;
    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&admin)
        .await?;
    admin.close().await;
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Starts the system with inventory on `url` (nothing else of inventory's
/// taking product locks), products "a" and "B"; checks that the database
/// sorts "a" first.
async fn icu_inventory(url: &str) -> anyhow::Result<(TestSystem, PgPool)> {
    let (sys, db) = started(
        |cfg| {
            cfg.inventory.database.url = url.to_owned();
            quiet_inventory(cfg);
        },
        |c| &c.inventory.database,
    )
    .await?;
    sys.seed_product("a", 100, 10).await?;
    sys.seed_product("B", 100, 10).await?;
    let first: String =
        sqlx::query_scalar("SELECT sku FROM products WHERE sku IN ('a', 'B') ORDER BY sku LIMIT 1")
            .fetch_one(&db)
            .await?;
    assert_eq!(first, "a", "the database does not sort in byte order");
    Ok((sys, db))
}

/// A direct CommitStock (and ReleaseStock, and the repair loop, which close
/// the same way) locks its products in the database's order: one that
/// locked in Rust's byte order held "B" while it waited for "a".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_commit_locks_its_products_in_the_databases_order() -> anyhow::Result<()> {
    in_icu_database(|url| async move {
        let (sys, db) = icu_inventory(&url).await?;
        let id = Uuid::now_v7().to_string();
        let held = crate::inventory::reserve(&sys, &id, &[("a", 1), ("B", 1)]).await?;
        assert_eq!(
            crate::inventory::reservation_state(&held),
            inv::ReservationState::Reserved
        );

        let mut inventory = sys.clients.inventory.clone();
        let commit = while_holding(
            &db,
            "SELECT 1 FROM products WHERE sku = 'a' FOR UPDATE".into(),
            inventory.commit_stock(inv::CommitStockRequest { reservation_id: id }),
            "SELECT 1 FROM products WHERE sku = 'B' FOR UPDATE".into(),
            "the commit waiting for \"a\" already holds \"B\"",
        )
        .await?;
        let committed = commit?.into_inner().reservation.unwrap_or_default();
        assert_eq!(
            crate::inventory::reservation_state(&committed),
            inv::ReservationState::Committed
        );
        let (a, b) = (sys.stock("a").await?, sys.stock("B").await?);
        assert_eq!((a.sold, a.reserved, b.sold, b.reserved), (1, 0, 1, 0));
        db.close().await;
        sys.stop().await
    })
    .await
}

/// An orders.confirmed applied on its own (not in a batch) locks its
/// products in the database's order too, as a batch does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_applied_alone_locks_its_products_in_the_databases_order()
-> anyhow::Result<()> {
    in_icu_database(|url| async move {
        let (sys, db) = icu_inventory(&url).await?;
        let order = Uuid::now_v7();
        let items = [("a", 1), ("B", 1)];
        sys.publish_event(order, placed(order, &items, None))
            .await?;
        let decision = "SELECT state FROM order_holds WHERE order_id = $1";
        wait_for_state(&db, decision, order, "RESERVED").await?;

        let confirmed = SagaEvent::OrderConfirmed(pb::OrderConfirmed {
            order_id: order.to_string(),
            customer_id: "c".into(),
            lines: lines(&items),
            slot_id: None,
            amount_cents: 200,
        });
        while_holding(
            &db,
            "SELECT 1 FROM products WHERE sku = 'a' FOR UPDATE".into(),
            sys.publish_event(order, confirmed),
            "SELECT 1 FROM products WHERE sku = 'B' FOR UPDATE".into(),
            "the confirmation waiting for \"a\" already holds \"B\"",
        )
        .await??;

        wait_for_state(&db, decision, order, "COMMITTED").await?;
        let (a, b) = (sys.stock("a").await?, sys.stock("B").await?);
        assert_eq!((a.sold, a.reserved, b.sold, b.reserved), (1, 0, 1, 0));
        db.close().await;
        sys.stop().await
    })
    .await
}

/// An orders.placed of one line, applied alone, locks its product before
/// it claims the order's decision (a batch holding the product and
/// cancelling the order would wait for the claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_applied_alone_locks_its_product_before_its_decision() -> anyhow::Result<()> {
    let (sys, db) = started(quiet_inventory, |c| &c.inventory.database).await?;
    sys.seed_product("P", 100, 10).await?;
    let order = Uuid::now_v7();

    while_holding(
        &db,
        "SELECT 1 FROM products WHERE sku = 'P' FOR UPDATE".into(),
        sys.publish_event(order, placed(order, &[("P", 2)], None)),
        format!(
            "INSERT INTO order_holds (order_id, state) VALUES ('{order}', 'RELEASED') \
             ON CONFLICT DO NOTHING"
        ),
        "the placement waiting for \"P\" already claims the order",
    )
    .await??;

    let decision = "SELECT state FROM order_holds WHERE order_id = $1";
    wait_for_state(&db, decision, order, "RESERVED").await?;
    assert_eq!(sys.stock("P").await?.reserved, 2);
    db.close().await;
    sys.stop().await
}

/// An orders.reserved applied alone locks the customer's wallet before it
/// writes the order's payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_applied_alone_locks_the_wallet_before_the_payment() -> anyhow::Result<()> {
    let (sys, db) = started(
        |cfg| cfg.payment.repair.interval_ms = 0,
        |c| &c.payment.database,
    )
    .await?;
    sys.top_up("c", 10_000).await?;
    let order = Uuid::now_v7();

    while_holding(
        &db,
        LOCK_WALLET.into(),
        sys.publish_event(order, reserved(order)),
        format!(
            "INSERT INTO payments (order_id, payment_id, customer_id, amount_cents, state) \
             VALUES ('{order}', gen_random_uuid(), 'c', 0, 'VOIDED') ON CONFLICT DO NOTHING"
        ),
        "the charge waiting for the wallet already holds the payment",
    )
    .await??;

    let payment = "SELECT state FROM payments WHERE order_id = $1";
    wait_for_state(&db, payment, order, "CAPTURED").await?;
    assert_eq!(sys.wallet("c").await?.balance_cents, 10_000 - 700);
    db.close().await;
    sys.stop().await
}

/// The repair loop's refund of a cancelled order's capture locks the
/// wallet before the payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_refund_locks_the_wallet_before_the_payment() -> anyhow::Result<()> {
    let (sys, db) = started(
        |cfg| cfg.payment.repair.interval_ms = 0,
        |c| &c.payment.database,
    )
    .await?;
    sys.top_up("c", 10_000).await?;
    let order = Uuid::now_v7();
    sys.publish_event(order, reserved(order)).await?;
    let payment = "SELECT state FROM payments WHERE order_id = $1";
    wait_for_state(&db, payment, order, "CAPTURED").await?;

    // The repair as payment-svc runs it, told that the order was cancelled.
    let repair = payment_svc::service::repair::CaptureRepair::new(payment_svc::payments(
        &sys.config.payment,
        db.clone(),
        saga_shared::bus::Outbox::new(),
    ));
    let refunded = while_holding(
        &db,
        LOCK_WALLET.into(),
        repair.finish(order, Outcome::Cancelled),
        format!("SELECT 1 FROM payments WHERE order_id = '{order}' FOR UPDATE"),
        "the refund waiting for the wallet already holds the payment",
    )
    .await?;
    assert!(
        refunded.map_err(|e| anyhow::anyhow!(e))?,
        "nothing refunded"
    );
    wait_for_state(&db, payment, order, "REFUNDED").await?;
    assert_eq!(sys.wallet("c").await?.balance_cents, 10_000);
    db.close().await;
    sys.stop().await
}

/// ReleaseSlot locks the slot before the hold's booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_release_locks_the_slot_before_the_booking() -> anyhow::Result<()> {
    let (sys, db) = started(
        |cfg| cfg.reservation.repair.interval_ms = 0,
        |c| &c.reservation.database,
    )
    .await?;
    let slot = sys.create_slot("one", 3).await?.slot_id;
    let hold_id = Uuid::now_v7().to_string();
    let mut reservation = sys.clients.reservation.clone();
    reservation
        .hold_slot(rsv::HoldSlotRequest {
            hold_id: hold_id.clone(),
            slot_id: slot.clone(),
        })
        .await?;
    assert_eq!(sys.slot(&slot).await?.held, 1);

    while_holding(
        &db,
        format!("SELECT 1 FROM slots WHERE id = '{slot}' FOR UPDATE"),
        reservation.release_slot(rsv::ReleaseSlotRequest { hold_id }),
        format!("SELECT 1 FROM bookings WHERE slot_id = '{slot}' FOR UPDATE"),
        "the release waiting for the slot already holds the booking",
    )
    .await??;
    assert_eq!(sys.slot(&slot).await?.held, 0);
    db.close().await;
    sys.stop().await
}

/// A ReleaseSlot that met a HoldSlot of the same hold_id in flight (its
/// tombstone waited for the hold's booking to commit) then releases that
/// hold: it too locks the slot before the booking. It used to lock the
/// booking first and then wait for the slot, and deadlocked with a second
/// ReleaseSlot of the hold that held the slot and wanted the booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_release_that_waited_for_its_hold_locks_the_slot_first() -> anyhow::Result<()> {
    let (sys, db) = started(
        |cfg| cfg.reservation.repair.interval_ms = 0,
        |c| &c.reservation.database,
    )
    .await?;
    let slot = sys.create_slot("one", 3).await?.slot_id;
    let slot_id: Uuid = slot.parse()?;
    let hold = Uuid::now_v7();
    let booking = reservation_svc::domain::direct_booking_id(hold);
    // A HoldSlot in flight: its place counted, its booking written and not
    // yet committed.
    sqlx::query("UPDATE slots SET held = held + 1 WHERE id = $1")
        .bind(slot_id)
        .execute(&db)
        .await?;
    let mut holding = db.begin().await?;
    let holding_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *holding)
        .await?;
    sqlx::query(
        "INSERT INTO bookings (order_id, slot_id, state, kind, hold_id) \
         VALUES ($1, $2, 'HELD', 'direct', $3)",
    )
    .bind(booking)
    .bind(slot_id)
    .bind(hold)
    .execute(&mut *holding)
    .await?;
    let slot_lock = Held::take(
        &db,
        format!("SELECT 1 FROM slots WHERE id = '{slot}' FOR UPDATE"),
    )
    .await?;

    let mut reservation = sys.clients.reservation.clone();
    let release = reservation.release_slot(rsv::ReleaseSlotRequest {
        hold_id: hold.to_string(),
    });
    let control = async {
        // The release's tombstone waits for the hold's booking...
        saga_tests::eventually("the release to wait for the hold", WAIT, || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            )
            .bind(holding_pid)
            .fetch_one(&db)
            .await?;
            Ok(waiting > 0)
        })
        .await?;
        // ...which commits; the release now finds the hold and must take
        // the slot (held by the test) before the booking.
        holding.commit().await?;
        slot_lock
            .probe_then_release(
                &db,
                format!("SELECT 1 FROM bookings WHERE order_id = '{booking}' FOR UPDATE"),
            )
            .await
    };
    let (released, met) = tokio::join!(release, control);
    let met = met?;
    assert!(
        met.is_ok(),
        "the release waiting for the slot already holds the booking: {met:?}"
    );
    let released = released?.into_inner().hold.expect("a hold");
    assert_eq!(released.state(), rsv::HoldState::Released, "{released:?}");
    assert_eq!(sys.slot(&slot).await?.held, 0);
    db.close().await;
    sys.stop().await
}

/// The repair loop's release of a cancelled order's booking locks the
/// slot before the booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_release_locks_the_slot_before_the_booking() -> anyhow::Result<()> {
    let (sys, db) = started(
        |cfg| cfg.reservation.repair.interval_ms = 0,
        |c| &c.reservation.database,
    )
    .await?;
    let slot = sys.create_slot("one", 3).await?.slot_id;
    let order = Uuid::now_v7();
    sys.publish_event(order, placed(order, &[("P", 1)], Some(&slot)))
        .await?;
    let booking = "SELECT state FROM bookings WHERE order_id = $1";
    wait_for_state(&db, booking, order, "HELD").await?;

    // The repair as reservation-svc runs it, told that the order was cancelled.
    let repair = reservation_svc::service::repair::BookingRepair::new(
        reservation_svc::reservations(&sys.config.reservation, db.clone(), sys.redis.clone()),
    );
    let finished = while_holding(
        &db,
        format!("SELECT 1 FROM slots WHERE id = '{slot}' FOR UPDATE"),
        repair.finish(order, Outcome::Cancelled),
        format!("SELECT 1 FROM bookings WHERE order_id = '{order}' FOR UPDATE"),
        "the release waiting for the slot already holds the booking",
    )
    .await?;
    assert!(
        finished.map_err(|e| anyhow::anyhow!(e))?,
        "nothing released"
    );
    wait_for_state(&db, booking, order, "RELEASED").await?;
    assert_eq!(sys.slot(&slot).await?.held, 0);
    db.close().await;
    sys.stop().await
}
