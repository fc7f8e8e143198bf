//! Two processes of every service (their real binaries) against the same
//! streams and databases, as a scaled-out deployment runs them.
//!
//! Without faults, both instances of each service do part of the work and
//! none of it is done twice: no relay publishes a row the stream already
//! had, no consumer handles an event the other one handled, and the
//! deadline sweeps of both order instances cancel each overdue order once.
//! Then one instance of each pair is killed at random moments under load:
//! every order ends, once, and the audit is clean.
//!
//! The run prints its seed; `SAGA_INSTANCES_SEED=<seed>` replays its kills.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use saga_shared::proto::order::v1::{CancelReason, OrderState};
use saga_tests::load::Load;
use saga_tests::processes::{Ended, Instance, Service};
use saga_tests::{TestSystem, eventually, metric_sum, order_request, reason, state};
use sagactl::client::Clients;
use uuid::Uuid;

use crate::WAIT;

const SKUS: [&str; 4] = ["I1", "I2", "I3", "I4"];

fn instance(service: Service, index: usize) -> Instance {
    Instance { service, index }
}

/// A metric summed over the series with `labels`, on one instance.
async fn metric(
    sys: &mut TestSystem,
    at: Instance,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<f64> {
    let admin = sys.processes().instances[&at].admin;
    metric_sum(admin, name, labels).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_every_service_share_the_work_do_none_twice_and_survive_kills()
-> anyhow::Result<()> {
    let seed: u64 = match std::env::var("SAGA_INSTANCES_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => rand::random(),
    };
    eprintln!("instances seed {seed} (replay: SAGA_INSTANCES_SEED={seed})");
    let mut sys = TestSystem::start_instances(2, |cfg| {
        crate::chaos::crash_friendly(cfg);
        cfg.order.order.deadline_secs = 6;
        for bus in cfg.buses_mut() {
            // Long enough that a slow round on a loaded machine is not
            // redelivered or re-leased (which would be work done twice
            // for a reason other than a death).
            bus.ack_wait_secs = 10;
            bus.relay_lease_secs = 10;
        }
        for db in cfg.databases_mut() {
            db.max_connections = 4;
        }
    })
    .await?;
    let result = run(&mut sys, seed).await;
    if let Err(e) = &result {
        for service in Service::ALL {
            for index in 0..2 {
                let at = instance(service, index);
                eprintln!(
                    "--- {service:?} #{index} log tail ---\n{}",
                    sys.processes().log_tail(at, 10)
                );
            }
        }
        eprintln!("instances seed {seed} failed: {e:#}");
    }
    sys.stop().await?;
    result
}

async fn run(sys: &mut TestSystem, seed: u64) -> anyhow::Result<()> {
    for sku in SKUS {
        sys.seed_product(sku, 100, 400).await?;
    }
    for i in 0..8 {
        sys.top_up(&format!("m{i}"), 1_000_000_000).await?;
    }
    let slot = sys.create_slot("shared", 10_000).await?.slot_id;
    let order_clients = order_clients(sys)?;

    // 1. No faults: the work is shared, none of it done twice.
    let load = orders(&order_clients, &slot, seed);
    load.wait_placed(120).await?;
    let mut ids = load.stop().await?;
    sys.wait_all_terminal(&ids, WAIT).await?;
    sys.quiesce(WAIT).await?;
    for service in Service::ALL {
        for index in 0..2 {
            let at = instance(service, index);
            let applied = metric(
                sys,
                at,
                "saga_events_handled_total",
                &[("outcome", "applied")],
            );
            assert!(applied.await? > 0.0, "{at:?} handled events");
            let dup = metric(
                sys,
                at,
                "saga_events_handled_total",
                &[("outcome", "duplicate")],
            );
            assert_eq!(dup.await?, 0.0, "{at:?} handled an event twice");
            let again = metric(sys, at, "saga_outbox_duplicates_total", &[]);
            assert_eq!(again.await?, 0.0, "{at:?} published a row twice");
        }
    }
    for index in 0..2 {
        let at = instance(Service::Order, index);
        let published = metric(sys, at, "saga_outbox_published_total", &[]);
        assert!(published.await? > 0.0, "{at:?}'s relay published");
    }

    // 2. Deadlines: with payment stopped, orders wait RESERVED until both
    // order instances' sweeps compete to cancel them.
    for index in 0..2 {
        sys.processes().terminate(instance(Service::Payment, index));
    }
    for index in 0..2 {
        let ended = sys
            .processes()
            .wait_ended(instance(Service::Payment, index), WAIT)
            .await?;
        assert_eq!(ended, Ended::Code(0), "payment #{index} stopped cleanly");
    }
    let load = orders(&order_clients, &slot, seed ^ 1);
    load.wait_placed(30).await?;
    let overdue = load.stop().await?;
    let done = sys.wait_all_terminal(&overdue, WAIT).await?;
    for order in &done {
        assert_eq!(
            (state(order), reason(order)),
            (OrderState::Cancelled, CancelReason::Timeout),
            "{} timed out",
            order.order_id
        );
    }
    for index in 0..2 {
        sys.processes()
            .start(instance(Service::Payment, index), &[])
            .await?;
    }
    ids.extend(overdue);
    sys.wait_all_terminal(&ids, WAIT).await?;
    sys.quiesce(WAIT).await?;
    let mut swept = 0.0;
    for index in 0..2 {
        let at = instance(Service::Order, index);
        let n = metric(sys, at, "orders_deadline_cancelled_total", &[]).await?;
        eprintln!("order #{index} swept {n} overdue orders");
        swept += n;
    }
    let timed_out: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders.orders WHERE cancel_reason = 'timeout'")
            .fetch_one(&sys.db)
            .await?;
    assert_eq!(
        swept, timed_out as f64,
        "each overdue order cancelled by exactly one sweep"
    );

    // 3. One instance of each pair killed at random moments under load.
    let load = orders(&order_clients, &slot, seed ^ 2);
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..6 {
        let service = Service::ALL[round % 4];
        let victim = instance(service, rng.random_range(0..2));
        load.wait_placed(load.placed() + rng.random_range(5..25))
            .await?;
        sys.processes().kill(victim);
        load.wait_placed(load.placed() + rng.random_range(2..10))
            .await?;
        sys.processes().start(victim, &[]).await?;
    }
    ids.extend(load.stop().await?);
    let done = sys
        .wait_all_terminal(&ids, Duration::from_secs(240))
        .await?;
    sys.quiesce(WAIT).await?;
    eventually("the audit to come out clean", WAIT, || async {
        Ok(sys.violations().await?.is_empty())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    each_order_ended_once(sys, &ids).await?;
    let confirmed = done
        .iter()
        .filter(|o| state(o) == OrderState::Confirmed)
        .count();
    eprintln!(
        "instances seed {seed}: {} orders, {confirmed} confirmed",
        done.len()
    );
    assert!(confirmed > 0);
    Ok(())
}

/// Every order has exactly one terminal event in order-svc's outbox, at
/// most one `orders.reserved` and at most one charge; the streams hold
/// every outbox row once (a row published twice is dropped by the stream's
/// duplicate window, a lost one is missing).
async fn each_order_ended_once(sys: &TestSystem, ids: &[String]) -> anyhow::Result<()> {
    let twice: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT correlation_id, event_type, count(*) FROM orders.outbox \
         WHERE event_type IN ('orders.reserved', 'orders.confirmed', 'orders.cancelled') \
         GROUP BY 1, 2 HAVING count(*) > 1 \
         UNION ALL \
         SELECT correlation_id, event_type, count(*) FROM payment.outbox \
         WHERE event_type = 'payments.succeeded' GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .fetch_all(&sys.db)
    .await?;
    assert_eq!(twice, Vec::new(), "events written twice for one order");
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT correlation_id) FROM orders.outbox \
         WHERE event_type IN ('orders.confirmed', 'orders.cancelled')",
    )
    .fetch_one(&sys.db)
    .await?;
    let both: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT correlation_id FROM orders.outbox \
         WHERE event_type IN ('orders.confirmed', 'orders.cancelled') \
         GROUP BY 1 HAVING count(*) > 1) AS t",
    )
    .fetch_one(&sys.db)
    .await?;
    assert_eq!(
        (ended, both),
        (ids.len() as i64, 0),
        "one terminal event per order"
    );
    let mut rows = 0;
    for schema in ["orders", "inventory", "payment", "reservation"] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.outbox"
        )))
        .fetch_one(&sys.db)
        .await?;
        rows += n;
    }
    assert_eq!(
        sys.stream_messages().await?,
        rows as u64,
        "the streams hold every outbox row once"
    );
    Ok(())
}

/// Clients of both order instances.
fn order_clients(sys: &mut TestSystem) -> anyhow::Result<Vec<Clients>> {
    let token = sys.minter.mint(
        "test-admin",
        saga_shared::auth::Role::Admin,
        Duration::from_secs(3600),
    )?;
    (0..2)
        .map(|index| {
            let mut urls = sys.urls.clone();
            urls.order = sys.processes().instances[&instance(Service::Order, index)].grpc_url();
            Clients::with_token(&urls, Some(token.clone()))
        })
        .collect()
}

/// Four clients, one order every 60 ms each, alternating between the order
/// instances: one or two SKUs, a third of them with the slot.
fn orders(clients: &[Clients], slot: &str, seed: u64) -> Load {
    let slot = slot.to_owned();
    let make = move |rng: &mut StdRng| {
        let a = SKUS[rng.random_range(0..SKUS.len())];
        let b = SKUS[rng.random_range(0..SKUS.len())];
        let mut items = vec![(a, 1)];
        if b != a {
            items.push((b, 1));
        }
        let with_slot = rng.random_bool(0.3).then_some(slot.as_str());
        order_request(&format!("m{}", rng.random_range(0..8)), &items, with_slot)
    };
    Load::start(clients, 4, Duration::from_millis(60), seed, Arc::new(make))
}
