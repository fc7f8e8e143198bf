//! Failures that last: a participant's database down for a minute, and
//! compensations or completions dead-lettered for good. Every order still
//! ends complete, with no operator action.

use std::time::Duration;

use saga_shared::proto::order::v1::{self as ord, OrderState};
use saga_tests::processes::Service;
use saga_tests::servers::PostgresServer;
use saga_tests::{TestSystem, eventually, http_get, metric_sum, order_request, state};
use sagactl::dlq;

use crate::WAIT;

async fn scalar(sys: &TestSystem, sql: &'static str, id: &str) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(sql)
        .bind(id)
        .fetch_optional(&sys.db)
        .await?)
}

/// The audit, leaving out what waits in the DLQ (the letters a test made on
/// purpose).
async fn violations_besides_dead_letters(sys: &TestSystem) -> anyhow::Result<Vec<String>> {
    Ok(sys
        .violations()
        .await?
        .into_iter()
        .filter(|v| !v.starts_with("dead letters"))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensations_and_completions_that_were_dead_lettered_are_finished_without_a_redrive()
-> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        for bus in cfg.participant_buses_mut() {
            bus.max_deliver = 2;
            bus.nak_base_delay_ms = 20;
        }
        cfg.order.bus.max_deliver = 1_000_000;
        cfg.order.bus.nak_max_delay_ms = 200;
        for repair in cfg.repairs_mut() {
            repair.interval_ms = 200;
            repair.after_secs = 1;
        }
    })
    .await?;
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("rex", 100_000).await?;
    let slot = sys.create_slot("s", 5).await?.slot_id;

    // Selling the stock and confirming the place fail for good (rules an
    // operator added by mistake): those events go to the DLQ.
    for sql in [
        "ALTER TABLE inventory.holds ADD CONSTRAINT no_sale CHECK (state <> 'COMMITTED') NOT VALID",
        "ALTER TABLE reservation.bookings ADD CONSTRAINT no_confirm CHECK (state <> 'CONFIRMED') NOT VALID",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&sys.db)
            .await?;
    }
    let sold = sys
        .place(order_request("rex", &[("A", 2)], Some(&slot)))
        .await?;
    assert_eq!(
        state(&sys.wait_terminal(&sold.order_id, WAIT).await?),
        OrderState::Confirmed
    );

    // A charged order that cannot confirm (its confirmation keeps failing)
    // is cancelled by its customer; its refund fails for good.
    for sql in [
        "ALTER TABLE orders.orders ADD CONSTRAINT no_confirmation CHECK (state <> 'CONFIRMED') NOT VALID",
        "ALTER TABLE payment.wallet_ledger ADD CONSTRAINT no_refund CHECK (kind <> 'REFUND') NOT VALID",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&sys.db)
            .await?;
    }
    let refunded = sys.place(order_request("rex", &[("A", 1)], None)).await?;
    eventually("the second order to be charged", WAIT, || async {
        Ok(scalar(
            &sys,
            "SELECT state FROM payment.payments WHERE order_id = $1::uuid",
            &refunded.order_id,
        )
        .await?
        .as_deref()
            == Some("CAPTURED"))
    })
    .await?;
    assert_eq!(
        state(&sys.cancel(&refunded.order_id).await?),
        OrderState::Cancelled
    );

    let ns = sys.namespace();
    eventually("three events to be dead-lettered", WAIT, || async {
        Ok(dlq::list(&sys.js, &ns).await?.len() == 3)
    })
    .await?;
    for sql in [
        "ALTER TABLE inventory.holds DROP CONSTRAINT no_sale",
        "ALTER TABLE reservation.bookings DROP CONSTRAINT no_confirm",
        "ALTER TABLE orders.orders DROP CONSTRAINT no_confirmation",
        "ALTER TABLE payment.wallet_ledger DROP CONSTRAINT no_refund",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&sys.db)
            .await?;
    }

    // Nobody redrives: the participants finish on their own.
    eventually("the stock to be sold", WAIT, || async {
        let a = sys.stock("A").await?;
        Ok((a.reserved, a.sold) == (0, 2))
    })
    .await?;
    eventually("the place to be confirmed", WAIT, || async {
        Ok(sys.slot(&slot).await?.confirmed == 1)
    })
    .await?;
    eventually("the charge to be refunded", WAIT, || async {
        Ok(scalar(
            &sys,
            "SELECT state FROM payment.payments WHERE order_id = $1::uuid",
            &refunded.order_id,
        )
        .await?
        .as_deref()
            == Some("REFUNDED"))
    })
    .await?;
    assert_eq!(
        state(&sys.get_order(&refunded.order_id).await?),
        OrderState::Cancelled,
        "a late payments.succeeded does not revive a cancelled order"
    );
    assert_eq!(dlq::list(&sys.js, &ns).await?.len(), 3, "no redrive");
    sys.quiesce(WAIT).await?;
    assert_eq!(
        violations_besides_dead_letters(&sys).await?,
        Vec::<String>::new()
    );
    let w = sys.wallet("rex").await?;
    assert_eq!(
        w.charged_cents - w.refunded_cents,
        200,
        "only the sold order is paid"
    );
    sys.stop().await
}

/// `saga_event_retry_age_seconds` of a service, the largest over its labels.
async fn retry_age(admin: std::net::SocketAddr) -> anyhow::Result<f64> {
    let (_, body) = http_get(admin, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("saga_event_retry_age_seconds"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participants_database_down_for_a_minute_loses_no_compensation_or_completion()
-> anyhow::Result<()> {
    let mut own = PostgresServer::start().await?;
    let db = own.url("inventory_outage");
    let mut sys = TestSystem::start_processes(|cfg| {
        cfg.inventory.database.url = db.clone();
        // Failures come back fast (as in a failover): each delivery fails
        // in half a second, not after the default 10 s wait for a connection.
        cfg.inventory.database.acquire_timeout_ms = 500;
        cfg.payment.gateway.latency_ms = 1_500;
        cfg.payment.gateway.jitter_ms = 500;
    })
    .await?;
    sys.seed_product("A", 100, 100).await?;
    sys.top_up("oz", 1_000_000).await?;
    let mut placed = Vec::new();
    for _ in 0..20 {
        placed.push(
            sys.place(order_request("oz", &[("A", 2)], None))
                .await?
                .order_id,
        );
    }
    eventually("every order to hold its stock", WAIT, || async {
        for id in &placed {
            if state(&sys.get_order(id).await?) == OrderState::Pending {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;

    // Inventory's database goes away while charges are under way: half the
    // orders are cancelled by their customers, the others confirm.
    own.stop()?;
    let stopped = tokio::time::Instant::now();
    for id in &placed[..10] {
        sys.cancel(id).await?;
    }
    let during: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(
                sys.place(order_request("oz", &[("A", 1)], None))
                    .await?
                    .order_id,
            );
        }
        ids
    };
    // The stuck releases and sales show as a growing retry age.
    let admin = sys.inventory.admin;
    eventually("inventory's retry age to pass 20 s", WAIT, || async {
        Ok(retry_age(admin).await? > 20.0)
    })
    .await?;
    // The fault being injected: a minute without the database.
    tokio::time::sleep_until(stopped + Duration::from_secs(60)).await;
    own.start_again().await?;

    let all: Vec<String> = placed.iter().chain(&during).cloned().collect();
    let done = sys
        .wait_all_terminal(&all, Duration::from_secs(180))
        .await?;
    sys.quiesce(Duration::from_secs(180)).await?;
    let confirmed: i64 = done
        .iter()
        .filter(|o| state(o) == OrderState::Confirmed)
        .map(|o| o.lines.iter().map(|l| l.quantity).sum::<i64>())
        .sum();
    for o in &done[..10] {
        assert_eq!(state(o), OrderState::Cancelled, "{o:?}");
    }
    let a = sys.stock("A").await?;
    assert_eq!((a.reserved, a.sold), (0, confirmed), "{a:?}");
    assert!(
        dlq::list(&sys.js, &sys.namespace()).await?.is_empty(),
        "an outage is not a dead letter"
    );
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    let log = std::fs::read_to_string(sys.processes().log_path(Service::Inventory))?;
    assert!(log.contains("age_secs"), "retries log their age");
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_answers_unavailable_while_the_database_is_down_and_works_once_it_is_back()
-> anyhow::Result<()> {
    use saga_shared::proto::inventory::v1 as inv;
    use saga_shared::proto::payment::v1 as pay;
    use saga_shared::proto::reservation::v1 as rsv;
    use tonic::Code;

    let mut own = PostgresServer::start().await?;
    let url = own.url("all_down");
    let sys = TestSystem::start_with(|cfg| {
        for db in cfg.databases_mut() {
            db.url = url.clone();
            db.acquire_timeout_ms = 1_000;
        }
        // The catalog must be asked: nothing remembered from before.
        cfg.order.order.catalog_cache_secs = 0;
    })
    .await?;
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("una", 10_000).await?;
    let slot = sys.create_slot("s", 5).await?.slot_id;
    let order = sys.place(order_request("una", &[("A", 1)], None)).await?;
    sys.wait_terminal(&order.order_id, WAIT).await?;
    let id = order.order_id.clone();
    let fresh = uuid::Uuid::now_v7().to_string();

    own.stop()?;
    let c = &sys.clients;
    let keyed = {
        let mut r = tonic::Request::new(order_request("una", &[("A", 1)], None));
        r.metadata_mut()
            .insert(saga_shared::idempotency::METADATA_KEY, "k-1".parse()?);
        r
    };
    let answers: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "PlaceOrder",
            sys.place(order_request("una", &[("A", 1)], None))
                .await
                .map(drop),
        ),
        (
            "PlaceOrder with a key",
            c.order.clone().place_order(keyed).await.map(drop),
        ),
        ("GetOrder", sys.get_order(&id).await.map(drop)),
        (
            "ListOrders",
            c.order
                .clone()
                .list_orders(ord::ListOrdersRequest::default())
                .await
                .map(drop),
        ),
        ("CancelOrder", sys.cancel(&id).await.map(drop)),
        (
            "GetOrderOutcomes",
            c.order
                .clone()
                .get_order_outcomes(ord::GetOrderOutcomesRequest {
                    order_ids: vec![id.clone()],
                })
                .await
                .map(drop),
        ),
        (
            "UpsertProduct",
            c.inventory
                .clone()
                .upsert_product(inv::UpsertProductRequest {
                    sku: "B".into(),
                    name: "b".into(),
                    unit_price_cents: 1,
                })
                .await
                .map(drop),
        ),
        (
            "GetStock",
            sys.stock("A").await.map(drop).map_err(to_status),
        ),
        (
            "ListStock",
            c.inventory
                .clone()
                .list_stock(inv::ListStockRequest::default())
                .await
                .map(drop),
        ),
        (
            "AdjustStock",
            c.inventory
                .clone()
                .adjust_stock(inv::AdjustStockRequest {
                    sku: "A".into(),
                    delta: 1,
                    expected_version: 2,
                })
                .await
                .map(drop),
        ),
        (
            "ReserveStock",
            crate::inventory::reserve(&sys, &fresh, &[("A", 1)])
                .await
                .map(drop),
        ),
        (
            "ReleaseStock",
            c.inventory
                .clone()
                .release_stock(inv::ReleaseStockRequest {
                    reservation_id: fresh.clone(),
                })
                .await
                .map(drop),
        ),
        (
            "CommitStock",
            c.inventory
                .clone()
                .commit_stock(inv::CommitStockRequest {
                    reservation_id: fresh.clone(),
                })
                .await
                .map(drop),
        ),
        (
            "GetWallet",
            sys.wallet("una").await.map(drop).map_err(to_status),
        ),
        (
            "TopUp",
            c.payment
                .clone()
                .top_up(pay::TopUpRequest {
                    customer_id: "una".into(),
                    amount_cents: 1,
                })
                .await
                .map(drop),
        ),
        (
            "GetPayment",
            c.payment
                .clone()
                .get_payment(pay::GetPaymentRequest {
                    order_id: id.clone(),
                })
                .await
                .map(drop),
        ),
        (
            "CreateSlot",
            c.reservation
                .clone()
                .create_slot(rsv::CreateSlotRequest {
                    name: "t".into(),
                    capacity: 1,
                })
                .await
                .map(drop),
        ),
        (
            "GetSlot",
            sys.slot(&slot).await.map(drop).map_err(to_status),
        ),
        (
            "ListSlots",
            c.reservation
                .clone()
                .list_slots(rsv::ListSlotsRequest::default())
                .await
                .map(drop),
        ),
    ];
    let wrong: Vec<String> = answers
        .iter()
        .filter(|(_, a)| !matches!(a, Err(s) if s.code() == Code::Unavailable))
        .map(|(call, a)| format!("{call}: {a:?}"))
        .collect();
    assert!(wrong.is_empty(), "not UNAVAILABLE:\n{}", wrong.join("\n"));

    own.start_again().await?;
    eventually("the services to answer again", WAIT, || async {
        Ok(sys.get_order(&id).await.is_ok() && sys.stock("A").await.is_ok())
    })
    .await?;
    let again = sys.place(order_request("una", &[("A", 1)], None)).await?;
    assert_eq!(
        state(&sys.wait_terminal(&again.order_id, WAIT).await?),
        OrderState::Confirmed
    );
    sys.stop().await
}

/// The status inside an error of a test helper.
fn to_status(e: anyhow::Error) -> tonic::Status {
    match e.downcast::<tonic::Status>() {
        Ok(s) => s,
        Err(e) => tonic::Status::unknown(e.to_string()),
    }
}

/// A service whose database exists starts with a role that may not connect
/// to the `postgres` database (a common hardening): the check for a missing
/// database connects to the service's own first. It always connected to
/// `postgres`, and such a service refused to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_starts_without_access_to_the_postgres_database_when_its_own_exists()
-> anyhow::Result<()> {
    let own = PostgresServer::start().await?;
    let admin = sqlx::PgPool::connect(&own.url("postgres")).await?;
    for sql in [
        "CREATE ROLE app LOGIN",
        "CREATE DATABASE appdb OWNER app",
        "REVOKE CONNECT ON DATABASE postgres FROM PUBLIC",
    ] {
        sqlx::query(sql).execute(&admin).await?;
    }
    admin.close().await;
    let cfg = saga_shared::config::DatabaseConfig {
        url: own.url("appdb").replace("postgres@", "app@"),
        schema: "payment".into(),
        create_database: true,
        ..Default::default()
    };
    let pool = saga_shared::db::connect(&cfg, &payment_svc::MIGRATIONS).await?;
    let wallets: i64 = sqlx::query_scalar("SELECT count(*) FROM wallets")
        .fetch_one(&pool)
        .await?;
    assert_eq!(wallets, 0, "migrated");
    pool.close().await;
    // A database that is missing is still said to be, naming it.
    let missing = saga_shared::config::DatabaseConfig {
        url: own.url("nodb").replace("postgres@", "app@"),
        ..cfg
    };
    let refused = saga_shared::db::connect(&missing, &payment_svc::MIGRATIONS)
        .await
        .expect_err("no database, and no right to make one");
    assert!(
        refused.to_string().contains("postgres") || refused.to_string().contains("nodb"),
        "{refused}"
    );
    Ok(())
}

/// A peer that goes silent without closing its connections (its node lost,
/// a network that drops packets) while its replacement answers at the same
/// address. A service's client of another (here a participant's repair
/// loop asking order-svc how sagas ended; order-svc's checks of SKUs and
/// slots are built the same way) used to wait on the dead connection until
/// the kernel gave up on it, about 15 minutes, every call failing by its
/// timeout meanwhile. HTTP/2 keepalive pings now find the dead connection
/// within seconds, and the next call connects anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_service_leaves_a_connection_that_went_silent() -> anyhow::Result<()> {
    use saga_shared::auth::{ServiceToken, WithToken};
    let sys = TestSystem::start().await?;
    let hole = saga_tests::blackhole::Blackhole::start().await?;
    hole.point_at(sys.order.grpc);
    let caller = WithToken(std::sync::Arc::new(ServiceToken::from_config(
        "payment-svc",
        &sys.config.payment.auth,
    )?));
    let outcomes = saga_shared::repair::Outcomes::new(&hole.url(), caller, None)?;
    let ids = [uuid::Uuid::now_v7()];
    let ask = || outcomes.of(&ids);
    ask().await?;
    let before = hole.connections();
    assert_eq!(before, 1, "one connection through the proxy");

    hole.cut();
    eventually(
        "order-svc to answer over a new connection",
        Duration::from_secs(60),
        || async { Ok(ask().await.is_ok()) },
    )
    .await?;
    assert!(hole.connections() > before, "a new connection was made");
    sys.stop().await
}

/// A batch that fails because the database cannot be reached is handed
/// back whole, to be tried again after the backoff. It used to be redone
/// one event at a time, each event waiting out the pool's acquire timeout
/// again (16 events: 16 more waits, the messages held all along, a warning
/// each), though nothing in the batch was at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_for_want_of_its_database_is_not_redone_one_event_at_a_time()
-> anyhow::Result<()> {
    use saga_shared::bus::SagaEvent;
    use saga_shared::proto::events::v1 as ev;
    let mut own = PostgresServer::start().await?;
    let db = own.url("payment_outage");
    let sys = TestSystem::start_processes(|cfg| {
        cfg.payment.database.url = db.clone();
        cfg.payment.database.acquire_timeout_ms = 500;
    })
    .await?;
    sys.top_up("bo", 100_000).await?;
    let admin = sys.payment.admin;
    let payment = [("service", "payment-svc")];
    own.stop()?;
    for _ in 0..16 {
        let order = uuid::Uuid::now_v7();
        let charge = SagaEvent::OrderReserved(ev::OrderReserved {
            order_id: order.to_string(),
            customer_id: "bo".into(),
            amount_cents: 100,
        });
        sys.publish_event(order, charge).await?;
    }
    eventually(
        "the charges to fail for want of the database",
        WAIT,
        || async {
            let retried = metric_sum(
                admin,
                "saga_events_handled_total",
                &[("service", "payment-svc"), ("outcome", "retried")],
            )
            .await?;
            Ok(retried >= 16.0)
        },
    )
    .await?;
    let redone = metric_sum(admin, "saga_batches_redone_total", &payment).await?;
    assert_eq!(redone, 0.0, "no batch redone one event at a time");

    own.start_again().await?;
    eventually(
        "every charge applied once the database is back",
        WAIT,
        || async { Ok(sys.wallet("bo").await?.balance_cents == 100_000 - 16 * 100) },
    )
    .await?;
    sys.quiesce(WAIT).await?;
    assert_eq!(sys.wallet("bo").await?.balance_cents, 100_000 - 16 * 100);
    sys.stop().await
}
