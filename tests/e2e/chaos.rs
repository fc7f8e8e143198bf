//! The services as separate processes (their real binaries), killed at
//! random and crashed at the crash points, under a steady load of orders.
//! Afterwards every order is terminal and the audit is clean.
//!
//! The chaos run prints its seed; `SAGA_CHAOS_SEED=<seed>` replays the same
//! schedule of kills. `SAGA_CHAOS_KILLS=<n>` kills every service n times
//! instead of 3: a longer soak (see README, "Chaos and soak").

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use saga_shared::faults::CrashPoint;
use saga_shared::proto::order::v1::OrderState;
use saga_tests::load::Load;
use saga_tests::processes::{Ended, Service};
use saga_tests::{TestSystem, order_request, state};
use sagactl::client::Clients;
use sagactl::system::SystemConfig;

const SKUS: [&str; 4] = ["C1", "C2", "C3", "C4"];

/// Settings for runs with crashes: short deadlines and ack waits (so that
/// what a dead process held comes back quickly), a short orphan grace.
pub(crate) fn crash_friendly(cfg: &mut SystemConfig) {
    cfg.order.order.deadline_secs = 20;
    cfg.order.order.sweep_interval_ms = 200;
    cfg.inventory.inventory.orphan_grace_secs = 3;
    cfg.inventory.inventory.reconcile_interval_ms = 500;
    for bus in cfg.buses_mut() {
        bus.ack_wait_secs = 3;
        bus.relay_lease_secs = 3;
        bus.max_deliver = 20;
    }
    for db in cfg.databases_mut() {
        db.max_connections = 5;
    }
}

async fn seed_world(sys: &TestSystem) -> anyhow::Result<Vec<String>> {
    for sku in SKUS {
        sys.seed_product(sku, 150, 3_000).await?;
    }
    for i in 0..8 {
        sys.top_up(&format!("buyer{i}"), 1_000_000_000).await?;
    }
    let mut slots = Vec::new();
    for name in ["am", "pm"] {
        slots.push(sys.create_slot(name, 10_000).await?.slot_id);
    }
    Ok(slots)
}

/// Four clients, an order every 30 ms each: one or two SKUs, half of them
/// with a slot. Each order is retried with its idempotency key until
/// order-svc takes it (it may be down).
fn load(clients: &Clients, slots: &[String], seed: u64) -> Load {
    let slots = slots.to_vec();
    let make = move |rng: &mut StdRng| {
        let a = SKUS[rng.random_range(0..SKUS.len())];
        let b = SKUS[rng.random_range(0..SKUS.len())];
        let mut items = vec![(a, rng.random_range(1..3))];
        if b != a {
            items.push((b, 1));
        }
        let slot = rng
            .random_bool(0.5)
            .then(|| slots[rng.random_range(0..slots.len())].as_str());
        order_request(&format!("buyer{}", rng.random_range(0..8)), &items, slot)
    };
    Load::start(
        std::slice::from_ref(clients),
        4,
        Duration::from_millis(30),
        seed,
        Arc::new(make),
    )
}

/// Every order ends, the system goes quiet, and the audit comes out clean
/// (once holds orphaned by the crashes are past their grace period).
async fn all_ends_well(sys: &TestSystem, ids: &[String]) -> anyhow::Result<(usize, usize)> {
    let done = sys.wait_all_terminal(ids, Duration::from_secs(240)).await?;
    sys.quiesce(Duration::from_secs(120)).await?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let violations = sys.violations().await?;
        if violations.is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("audit not clean:\n  {}", violations.join("\n  "));
        }
    }
    let confirmed = done
        .iter()
        .filter(|o| state(o) == OrderState::Confirmed)
        .count();
    Ok((confirmed, done.len() - confirmed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_killed_at_random_under_load_leave_every_order_terminal_and_the_audit_clean()
-> anyhow::Result<()> {
    let seed: u64 = match std::env::var("SAGA_CHAOS_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => rand::random(),
    };
    eprintln!("chaos seed {seed} (replay: SAGA_CHAOS_SEED={seed})");
    let mut sys = TestSystem::start_processes(crash_friendly).await?;
    let result = chaos(&mut sys, seed).await;
    finish(sys, result, &format!("chaos seed {seed}")).await
}

/// Stops the system; on failure first prints the end of every service's
/// log and what failed.
async fn finish(mut sys: TestSystem, result: anyhow::Result<()>, what: &str) -> anyhow::Result<()> {
    if let Err(e) = &result {
        for s in Service::ALL {
            eprintln!(
                "--- {} log tail ---\n{}",
                s.binary(),
                sys.processes().log_tail(s, 15)
            );
        }
        eprintln!("{what} failed: {e:#}");
    }
    sys.stop().await?;
    result
}

async fn chaos(sys: &mut TestSystem, seed: u64) -> anyhow::Result<()> {
    let slots = seed_world(sys).await?;
    let load = load(&sys.clients, &slots, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let kills: usize = match std::env::var("SAGA_CHAOS_KILLS") {
        Ok(n) => n.parse()?,
        Err(_) => 3,
    };
    let mut schedule: Vec<Service> = Service::ALL
        .iter()
        .flat_map(|s| std::iter::repeat_n(*s, kills))
        .collect();
    schedule.shuffle(&mut rng);
    for victim in schedule {
        // A kill at a random moment of the load (after 40 to 200 more
        // orders, about 0.3 to 1.5 s at its pace), then the fault being
        // injected: a random time down, during which no order may be placed
        // at all (order-svc may be the one down).
        load.wait_placed(load.placed() + rng.random_range(40..200))
            .await?;
        sys.processes().kill(victim);
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
        sys.processes().start(victim, &[]).await?;
    }
    let ids = load.stop().await?;
    assert!(ids.len() >= 50, "only {} orders placed", ids.len());
    let (confirmed, cancelled) = all_ends_well(sys, &ids).await?;
    eprintln!(
        "chaos seed {seed}: {} orders, {confirmed} confirmed, {cancelled} cancelled",
        ids.len()
    );
    assert!(confirmed > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_crash_point_hit_under_load_leaves_every_order_terminal_and_the_audit_clean()
-> anyhow::Result<()> {
    let mut sys = TestSystem::start_processes(crash_friendly).await?;
    let result = crash_points(&mut sys).await;
    finish(sys, result, "crash points").await
}

async fn crash_points(sys: &mut TestSystem) -> anyhow::Result<()> {
    let slots = seed_world(sys).await?;
    let load = load(&sys.clients, &slots, 7);
    for (service, point) in [
        (Service::Order, CrashPoint::ConsumerAfterCommit),
        (Service::Order, CrashPoint::RelayAfterTake),
        (Service::Order, CrashPoint::RelayAfterPublish),
        (Service::Inventory, CrashPoint::InventoryAfterRedisHold),
        (Service::Payment, CrashPoint::PaymentAfterCharge),
    ] {
        let processes = sys.processes();
        processes.kill(service);
        processes.spawn(service, &[("SAGA_CRASH_AT", &format!("{point}@3"))])?;
        let ended = processes
            .wait_ended(service, Duration::from_secs(60))
            .await?;
        assert_eq!(ended, Ended::Signal(6), "{point}: aborted (SIGABRT)");
        let log = std::fs::read_to_string(processes.log_path(service))?;
        assert!(
            log.contains(&format!("crash point {point} reached")),
            "{point} was the cause"
        );
        processes.start(service, &[]).await?;
    }
    let ids = load.stop().await?;
    assert!(ids.len() >= 20, "only {} orders placed", ids.len());
    all_ends_well(sys, &ids).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_held_by_a_relay_that_died_are_published_by_the_next_one_at_once()
-> anyhow::Result<()> {
    // A relay round may take an hour: only a relay's death, not a timer,
    // lets another have its rows.
    let mut sys = TestSystem::start_processes(|cfg| {
        for bus in cfg.buses_mut() {
            bus.relay_lease_secs = 3_600;
        }
    })
    .await?;
    sys.seed_product("R1", 100, 10).await?;
    sys.top_up("rhea", 10_000).await?;
    let processes = sys.processes();
    processes.kill(Service::Order);
    processes
        .start(
            Service::Order,
            &[("SAGA_CRASH_AT", CrashPoint::RelayAfterTake.name())],
        )
        .await?;
    // The order is stored with its event; the relay takes the event and
    // dies, perhaps before the answer left: the client retries with its key.
    let request = order_request("rhea", &[("R1", 1)], None);
    let first = sys.place_with_key(request.clone(), Some("rhea-1")).await;
    let processes = sys.processes();
    let ended = processes
        .wait_ended(Service::Order, Duration::from_secs(60))
        .await?;
    assert_eq!(ended, Ended::Signal(6), "died at relay.after_take");
    processes.start(Service::Order, &[]).await?;
    let order = match first {
        Ok(order) => order,
        Err(_) => sys.place_with_key(request, Some("rhea-1")).await?,
    };
    let done = sys.wait_terminal(&order.order_id, crate::WAIT).await?;
    assert_eq!(state(&done), OrderState::Confirmed);
    sys.quiesce(crate::WAIT).await?;
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}
