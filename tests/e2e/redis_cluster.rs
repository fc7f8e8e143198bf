//! Redis Cluster (three masters, a replica each, on loopback), with the
//! services as processes of their own: orders whose SKUs live on different
//! masters take the Redis fast path (no CROSSSLOT), stay exact under
//! contention, and slot locks work; a master killed under load fails over,
//! inventory falls back to Postgres meanwhile and rebuilds its counters, and
//! nothing is oversold.

use std::sync::Arc;
use std::time::Duration;

use saga_shared::proto::order::v1::OrderState;
use saga_tests::clusters::RedisCluster;
use saga_tests::load::Load;
use saga_tests::processes::Service;
use saga_tests::{TestSystem, eventually, metric_sum, order_request, state};

use crate::WAIT;

/// SKUs two per master, named `<prefix><n>`, found by hashing their keys.
fn skus_on_every_master(
    cluster: &RedisCluster,
    ns: &str,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut per_master = std::collections::BTreeMap::<usize, Vec<String>>::new();
    for n in 0..200 {
        let sku = format!("{prefix}{n}");
        let master = cluster.master_of(&format!("inv:{{{ns}:{sku}}}"))?;
        let on = per_master.entry(master).or_default();
        if on.len() < 2 {
            on.push(sku);
        }
        if per_master.len() == 3 && per_master.values().all(|s| s.len() == 2) {
            return Ok(per_master.into_values().flatten().collect());
        }
    }
    anyhow::bail!("200 SKUs did not cover three masters twice")
}

/// The units each confirmed order of `ids` bought, per SKU.
async fn sold_by_orders(
    sys: &TestSystem,
    ids: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let done = sys.wait_all_terminal(ids, WAIT).await?;
    let mut sold = std::collections::BTreeMap::new();
    for order in done.iter().filter(|o| state(o) == OrderState::Confirmed) {
        for line in &order.lines {
            *sold.entry(line.sku.clone()).or_insert(0) += line.quantity;
        }
    }
    Ok(sold)
}

/// Every SKU: Postgres sold exactly what confirmed orders bought, within
/// its stock, and Redis agrees with Postgres.
async fn stock_is_exact(
    sys: &TestSystem,
    skus: &[String],
    on_hand: i64,
    sold: &std::collections::BTreeMap<String, i64>,
) -> anyhow::Result<()> {
    for sku in skus {
        let stock = sys.stock(sku).await?;
        let bought = sold.get(sku).copied().unwrap_or(0);
        assert_eq!(
            (stock.on_hand, stock.reserved, stock.sold),
            (on_hand, 0, bought),
            "{sku}: sold what confirmed orders bought, nothing still held"
        );
        assert!(stock.sold <= on_hand, "{sku} oversold");
        sys.redis_settles(sku, stock.available, WAIT).await?;
    }
    Ok(())
}

/// Inventory's reservations so far, over the series with these labels.
async fn reservations(sys: &mut TestSystem, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let admin = sys.processes().endpoints[&Service::Inventory].admin;
    metric_sum(admin, "inventory_reservations_total", labels).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_orders_across_masters_take_the_fast_path_and_a_failover_oversells_nothing()
-> anyhow::Result<()> {
    let mut cluster = RedisCluster::start(3).await?;
    let url = cluster.url();
    let mut sys = TestSystem::start_processes(|cfg| {
        cfg.inventory.redis.url = url.clone();
        cfg.reservation.redis.url = url.clone();
        // A loaded machine's slow answer is not a fallback this test counts.
        cfg.inventory.redis.command_timeout_ms = 3_000;
        cfg.inventory.inventory.reconcile_interval_ms = 500;
        cfg.inventory.inventory.orphan_grace_secs = 3;
        // One event at a time: reservation-svc then takes the slot's Redis
        // lock (a batch locks its slots' rows in Postgres instead).
        cfg.reservation.bus.batch_size = 1;
    })
    .await?;
    cleaned_up_on_every_master(&url, &format!("{}-probe", sys.ns)).await?;
    let result = run(&mut sys, &mut cluster).await;
    if result.is_err() {
        eprintln!(
            "--- inventory-svc log tail ---\n{}",
            sys.processes().log_tail(Service::Inventory, 30)
        );
    }
    sys.stop().await?;
    result
}

/// A namespace's keys are spread over every master; the clean-up that
/// tests and benchmarks use finds and deletes them all. Checked on the
/// healthy cluster, with keys of a namespace of its own: after the failover
/// below, the count was seen to stay above zero under load (the cause is
/// not established; see the closing note of 2026-11-25).
async fn cleaned_up_on_every_master(url: &str, ns: &str) -> anyhow::Result<()> {
    use fred::prelude::KeysInterface;
    use futures::TryStreamExt;
    let pool = saga_shared::redis::connect(&saga_shared::config::RedisConfig {
        url: url.to_owned(),
        ..Default::default()
    })
    .await?;
    const KEYS: usize = 30;
    for i in 0..KEYS {
        let _: () = pool
            .next()
            .set(format!("inv:{{{ns}:S{i}}}"), "1", None, None, false)
            .await?;
    }
    let pattern = format!("inv:{{{ns}:*");
    let count = || async {
        let keys: Vec<fred::types::Key> = pool
            .next()
            .scan_cluster_buffered(pattern.as_str(), Some(1_000), None)
            .try_collect()
            .await?;
        anyhow::Ok(keys.len())
    };
    assert_eq!(count().await?, KEYS, "every key found, on every master");
    saga_shared::redis::delete_matching(&pool, &pattern).await?;
    assert_eq!(count().await?, 0, "every master's keys deleted");
    Ok(())
}

async fn run(sys: &mut TestSystem, cluster: &mut RedisCluster) -> anyhow::Result<()> {
    // 1. Contention: 60 orders of two lines on two masters each, for half
    // the units they ask; a third of them book a slot of 12 places.
    let ns = sys.ns.clone();
    let skus = skus_on_every_master(cluster, &ns, "X")?;
    for sku in &skus {
        sys.seed_product(sku, 100, 10).await?;
    }
    for i in 0..8 {
        sys.top_up(&format!("b{i}"), 1_000_000).await?;
    }
    let slot = sys.create_slot("noon", 12).await?.slot_id;
    let shared = Arc::new(sys.clients.clone());
    let placed = futures::future::join_all((0..60).map(|i| {
        // Lines i and i+2 (mod 6) are on different masters.
        let items = [(skus[i % 6].clone(), 1), (skus[(i + 2) % 6].clone(), 1)];
        let slot = (i % 3 == 0).then(|| slot.clone());
        let clients = shared.clone();
        tokio::spawn(async move {
            let items: Vec<(&str, i64)> = items.iter().map(|(s, q)| (s.as_str(), *q)).collect();
            let request = order_request(&format!("b{}", i % 8), &items, slot.as_deref());
            clients.order.clone().place_order(request).await
        })
    }))
    .await;
    let mut ids = Vec::new();
    for joined in placed {
        ids.push(joined??.into_inner().order.unwrap_or_default().order_id);
    }
    let sold = sold_by_orders(sys, &ids).await?;
    eprintln!("redis cluster: contention round done: {sold:?}");
    assert!(
        sold.values().sum::<i64>() > 0,
        "some orders across masters confirmed"
    );
    sys.quiesce(WAIT).await?;
    stock_is_exact(sys, &skus, 10, &sold).await?;
    assert_eq!(
        reservations(sys, &[("path", "postgres")]).await?,
        0.0,
        "no reservation fell back to Postgres (a CROSSSLOT error would)"
    );
    assert!(reservations(sys, &[("path", "redis"), ("outcome", "held")]).await? > 0.0);
    let rsv_admin = sys.processes().endpoints[&Service::Reservation].admin;
    let lock = |outcome| async move {
        metric_sum(
            rsv_admin,
            "reservation_slot_lock_total",
            &[("outcome", outcome)],
        )
        .await
    };
    assert!(
        lock("acquired").await? > 0.0,
        "slot locks taken on the cluster"
    );
    assert_eq!(
        lock("error").await?,
        0.0,
        "no slot lock failed on the cluster"
    );
    let with_slot = sys
        .wait_all_terminal(&ids, WAIT)
        .await?
        .iter()
        .filter(|o| state(o) == OrderState::Confirmed && o.slot_id.as_deref() == Some(&slot))
        .count();
    let booked = sys.slot(&slot).await?;
    assert_eq!(
        (booked.confirmed, booked.held),
        (with_slot as i32, 0),
        "the slot took exactly its confirmed orders"
    );
    assert!(booked.confirmed <= 12, "slot overbooked: {booked:?}");
    assert_eq!(sys.violations().await?, Vec::<String>::new());

    // 2. A master killed under load: other SKUs, orders placed until the
    // cluster has failed over, the node is back, and more were placed.
    let skus = skus_on_every_master(cluster, &ns, "F")?;
    for sku in &skus {
        sys.seed_product(sku, 100, 200).await?;
    }
    // Four clients, an order of two lines on two masters every 100 ms each.
    let lines = skus.clone();
    let make = move |rng: &mut rand::rngs::StdRng| {
        use rand::Rng;
        let n = rng.random_range(0..6);
        let items = [(lines[n].as_str(), 1), (lines[(n + 3) % 6].as_str(), 1)];
        order_request(&format!("b{}", rng.random_range(0..8)), &items, None)
    };
    let clients = [sys.clients.clone()];
    let load = Load::start(&clients, 4, Duration::from_millis(100), 12, Arc::new(make));
    load.wait_placed(20).await?;
    let victim = cluster.master_of(&format!("inv:{{{ns}:{}}}", skus[0]))?;
    cluster.kill(victim);
    eprintln!(
        "redis cluster: master {victim} killed after {} orders",
        load.placed()
    );
    let admin = sys.processes().endpoints[&Service::Inventory].admin;
    eventually("a reservation to fall back to Postgres", WAIT, || async {
        let n = metric_sum(
            admin,
            "inventory_reservations_total",
            &[("path", "postgres")],
        )
        .await?;
        Ok(n > 0.0)
    })
    .await?;
    cluster.wait_healthy(WAIT).await?;
    assert_ne!(
        cluster.master_of(&format!("inv:{{{ns}:{}}}", skus[0]))?,
        victim,
        "a replica took over"
    );
    eprintln!("redis cluster: failed over after {} orders", load.placed());
    cluster.restart(victim).await?;
    cluster.wait_healthy(WAIT).await?;
    // The fast path comes back (the breaker closes, the counters are
    // rebuilt on the new master) while orders keep coming.
    let redis_before = reservations(sys, &[("path", "redis")]).await?;
    eventually("orders to take the Redis path again", WAIT, || async {
        let now = metric_sum(admin, "inventory_reservations_total", &[("path", "redis")]).await?;
        Ok(now > redis_before)
    })
    .await?;
    let ids = load.stop().await?;
    eprintln!("redis cluster: fast path back; {} orders placed", ids.len());
    let sold = sold_by_orders(sys, &ids).await?;
    sys.quiesce(WAIT).await?;
    stock_is_exact(sys, &skus, 200, &sold).await?;
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    Ok(())
}
