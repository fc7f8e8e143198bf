//! A three-node JetStream cluster on loopback, streams with three replicas,
//! every client given all three URLs. Under load the leader of the ORDERS
//! stream is killed (SIGKILL), then a second node, which leaves JetStream
//! without a quorum until they come back: nothing acknowledged is lost
//! (every outbox row marked published is in its stream), every order ends,
//! and the audit is clean.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use saga_shared::bus::StreamKind;
use saga_shared::proto::order::v1::OrderState;
use saga_tests::clusters::NatsCluster;
use saga_tests::load::Load;
use saga_tests::{TestSystem, eventually, order_request, state};

use crate::WAIT;

const SKUS: [&str; 3] = ["N1", "N2", "N3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_nats_cluster_losing_the_stream_leader_and_its_quorum_loses_nothing_acknowledged()
-> anyhow::Result<()> {
    let mut cluster = NatsCluster::start(3).await?;
    let url = cluster.url();
    let sys = TestSystem::start_with(|cfg| {
        for nats in cfg.nats_mut() {
            nats.url = url.clone();
            nats.replicas = 3;
        }
        cfg.order.order.deadline_secs = 60;
        for bus in cfg.buses_mut() {
            bus.ack_wait_secs = 5;
            bus.max_deliver = 50;
        }
    })
    .await?;
    let result = run(&sys, &mut cluster).await;
    sys.stop().await?;
    result
}

async fn run(sys: &TestSystem, cluster: &mut NatsCluster) -> anyhow::Result<()> {
    let ns = sys.namespace();
    for kind in StreamKind::ALL {
        let info = sys
            .js
            .get_stream(ns.stream(kind))
            .await?
            .info()
            .await?
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{kind:?} has three replicas");
    }
    for sku in SKUS {
        sys.seed_product(sku, 100, 10_000).await?;
    }
    for i in 0..4 {
        sys.top_up(&format!("n{i}"), 1_000_000_000).await?;
    }
    let make = |rng: &mut StdRng| {
        let sku = SKUS[rng.random_range(0..SKUS.len())];
        order_request(&format!("n{}", rng.random_range(0..4)), &[(sku, 1)], None)
    };
    let load = Load::start(
        std::slice::from_ref(&sys.clients),
        4,
        Duration::from_millis(50),
        3,
        Arc::new(make),
    );
    load.wait_placed(40).await?;

    // The ORDERS stream's leader dies; the other two elect a new one.
    let leader = cluster
        .stream_leader(&sys.js, &ns.stream(StreamKind::Orders))
        .await?;
    cluster.kill(leader);
    eprintln!(
        "nats cluster: killed {} (leader)",
        NatsCluster::name(leader)
    );
    let confirmed_before = confirmed(sys).await?;
    eventually(
        "orders to confirm with two nodes of three",
        WAIT,
        || async { Ok(confirmed(sys).await? > confirmed_before + 10) },
    )
    .await?;

    // A second node dies: no quorum, JetStream stops; orders are still
    // taken (they wait in the outbox).
    let second = (leader + 1) % 3;
    cluster.kill(second);
    eprintln!(
        "nats cluster: killed {} (no quorum)",
        NatsCluster::name(second)
    );
    load.wait_placed(load.placed() + 40).await?;
    cluster.restart(leader).await?;
    cluster.restart(second).await?;
    eprintln!("nats cluster: both back");
    load.wait_placed(load.placed() + 40).await?;
    let ids = load.stop().await?;

    let done = sys
        .wait_all_terminal(&ids, Duration::from_secs(240))
        .await?;
    sys.quiesce(WAIT).await?;
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    let confirmed = done
        .iter()
        .filter(|o| state(o) == OrderState::Confirmed)
        .count();
    assert!(confirmed > 0, "orders confirmed through the outages");

    // Nothing acknowledged lost: every outbox row was marked published only
    // after its ack, and each is in its stream.
    for (kind, schema) in [
        (StreamKind::Orders, "orders"),
        (StreamKind::Inventory, "inventory"),
        (StreamKind::Payments, "payment"),
        (StreamKind::Reservations, "reservation"),
    ] {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.outbox WHERE published_at IS NOT NULL"
        )))
        .fetch_one(&sys.db)
        .await?;
        let mut stream = sys.js.get_stream(ns.stream(kind)).await?;
        let messages = stream.info().await?.state.messages;
        assert_eq!(
            messages, rows as u64,
            "{kind:?}: every acknowledged event is in the stream, once"
        );
    }
    eprintln!("nats cluster: {} orders, {confirmed} confirmed", ids.len());
    Ok(())
}

async fn confirmed(sys: &TestSystem) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM orders.orders WHERE state = 'CONFIRMED'")
            .fetch_one(&sys.db)
            .await?,
    )
}
