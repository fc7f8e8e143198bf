//! The end-to-end benchmark's harness counts what it claims to (a short
//! run in the debug build; the figures themselves come from release runs,
//! never from a test).

use std::time::Duration;

use sagactl::bench::saga::{self, Options, load::Mix};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_saga_learns_every_orders_end_and_counts_its_costs() -> anyhow::Result<()> {
    let db = format!("saga_bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let opts = Options {
        concurrency: 8,
        rate: None,
        duration: Duration::from_secs(4),
        warmup: Duration::from_secs(1),
        mix: Mix {
            skus: 5,
            skew: 1.0,
            lines: 1,
            slot_share: 0.3,
            out_of_stock_share: 0.2,
            unfunded_share: 0.2,
            customers: 10,
            slots: 2,
        },
        decline_rate: 0.0,
        batch_size: None,
        // Two sets of the services compete for the streams and the
        // database, as `--instances 2` runs them.
        instances: 2,
        max_open_orders: None,
        database_url: format!("{}/{db}", saga_tests::pg_base()),
        baseline: Duration::from_millis(300),
    };
    let ran = saga::run(opts).await;
    if let Ok(admin) = sqlx::PgPool::connect(&format!("{}/postgres", saga_tests::pg_base())).await {
        let drop = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
        admin.close().await;
    }
    let f = ran?;
    assert!(f.confirmed > 0, "{f:?}");
    for reason in ["out_of_stock", "insufficient_funds"] {
        assert!(
            f.cancelled.get(reason).is_some_and(|n| *n > 0),
            "{reason}: {:?}",
            f.cancelled
        );
    }
    assert_eq!(f.unfinished, 0, "every order ended");
    assert!(f.place_errors.is_empty(), "{:?}", f.place_errors);
    let ended: u64 = f.confirmed + f.cancelled.values().sum::<u64>();
    assert!((f.ended_per_sec * f.window_secs - ended as f64).abs() < 0.5);
    let (p50, max) = (f.latency_ms.p50, f.latency_ms.max);
    assert!(p50.is_some_and(|p50| p50 > 0.0) && p50 <= max, "{f:?}");
    assert_eq!(f.latency_ms.unfinished, 0);
    assert!(
        f.postgres_transactions_per_confirmed
            .is_some_and(|tx| tx >= 1.0),
        "{f:?}"
    );
    assert!(f.placed > 0, "{f:?}");
    for component in ["services", "postgres", "load generator"] {
        assert!(f.cpu_seconds.contains_key(component), "{:?}", f.cpu_seconds);
    }
    let b = &f.baselines;
    assert!(b.postgres_commits_per_sec > 0.0 && b.jetstream_publishes_per_sec > 0.0);
    assert!(b.redis_evalsha_per_sec > 0.0);
    let text = saga::render(&f);
    assert!(
        text.contains("confirmed orders/s")
            && text.contains("raw baselines")
            && text.contains("2 instance(s) of each service"),
        "{text}"
    );
    Ok(())
}

/// The race lab's gRPC row: ReserveStock on the real service, many callers
/// at once on one SKU and on spread SKUs, twice as many requests as units.
/// Exactly the units that exist are granted, through the service as through
/// the raw script beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_race_lab_reserves_through_the_service_and_never_oversells() -> anyhow::Result<()> {
    use sagactl::bench::reserve::{self, Scenario, Strategy};
    let db = format!("saga_bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let opts = reserve::Options {
        database_url: format!("{}/{db}", saga_tests::pg_base()),
        redis_url: saga_tests::system::redis_url(),
        concurrency: 16,
        requests: 400,
        spread_skus: 10,
        strategies: vec![Strategy::RedisLua, Strategy::Grpc],
        scenarios: vec![Scenario::Hot, Scenario::Spread],
        rounds: 1,
    };
    let ran = reserve::run(&opts).await;
    if let Ok(admin) = sqlx::PgPool::connect(&format!("{}/postgres", saga_tests::pg_base())).await {
        let drop = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
        admin.close().await;
    }
    let results = ran?;
    assert_eq!(results.runs.len(), 4);
    for row in &results.runs {
        assert_eq!(row.errors, 0, "{row:?}");
        assert_eq!(row.oversold, 0, "{row:?}");
        assert_eq!(
            row.granted + row.rejected,
            row.requests as u64,
            "every request decided: {row:?}"
        );
        assert_eq!(row.granted, row.units as u64, "every unit granted: {row:?}");
    }
    for scenario in [Scenario::Hot, Scenario::Spread] {
        let r = reserve::ratio(
            &results.medians,
            scenario,
            Strategy::Grpc,
            Strategy::RedisLua,
        );
        assert!(r.is_some_and(|r| r > 0.0), "{scenario:?}: {r:?}");
    }
    assert!(
        results.grpc_floor_per_sec.is_some_and(|f| f > 0.0),
        "the floor of a gRPC call is measured"
    );
    Ok(())
}

/// `bench replay` makes payment's schema itself, on a database that has
/// never held it, and runs again after a run of its own (which drops it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_replay_runs_on_a_fresh_database_and_again_after_itself() -> anyhow::Result<()> {
    let db = format!("saga_bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let url = format!("{}/{db}", saga_tests::pg_base());
    let twice = async {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let cfg = sagactl::system::SystemConfig::from_env()?;
            runs.push(sagactl::bench::replay::run(cfg, &url, 20).await?);
        }
        anyhow::Ok(runs)
    }
    .await;
    if let Ok(admin) = sqlx::PgPool::connect(&format!("{}/postgres", saga_tests::pg_base())).await {
        let drop = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
        admin.close().await;
    }
    for f in twice? {
        assert_eq!(f.events, 20);
        assert!(f.publish_per_sec > 0.0 && f.apply_per_sec > 0.0 && f.skip_per_sec > 0.0);
    }
    Ok(())
}
