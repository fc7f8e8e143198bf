//! `sagactl bench saga|replay|reserve`: print figures and write JSON.

use anyhow::{Context, bail};

use crate::bench::reserve::{self, Options, Scenario, Strategy};
use crate::bench::saga::load::Mix;
use crate::cli::{BenchCmd, SagaBenchArgs};

pub(super) async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    if let BenchCmd::Saga(args) = cmd {
        return saga(*args).await;
    }
    if let BenchCmd::Replay {
        events,
        database_url,
        json,
    } = cmd
    {
        if events == 0 {
            bail!("--events must be at least 1");
        }
        let cfg = crate::system::SystemConfig::from_env()?;
        let figures = crate::bench::replay::run(cfg, &database_url, events).await?;
        print!("{}", figures.render());
        if let Some(path) = json {
            std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    let BenchCmd::Reserve {
        concurrency,
        rounds,
        requests,
        spread_skus,
        strategies,
        scenarios,
        database_url,
        redis_url,
        json,
    } = cmd
    else {
        bail!("not a benchmark this build knows")
    };
    if concurrency == 0 || requests < 2 || spread_skus == 0 || rounds == 0 {
        bail!(
            "--concurrency, --rounds and --spread-skus must be at least 1, --requests at least 2"
        );
    }
    let opts = Options {
        database_url,
        redis_url,
        concurrency,
        requests,
        spread_skus,
        strategies: if strategies.is_empty() {
            Strategy::ALL.to_vec()
        } else {
            strategies
        },
        scenarios: if scenarios.is_empty() {
            vec![Scenario::Hot, Scenario::Spread]
        } else {
            scenarios
        },
        rounds,
    };
    let results = reserve::run(&opts).await?;
    let ratio = reserve::hot_ratio(&results.medians);
    if let Some(r) = ratio {
        println!("Redis Lua / SELECT ... FOR UPDATE at the hot SKU: {r:.1}x");
    }
    let mut direct = serde_json::Map::new();
    for scenario in &opts.scenarios {
        let over = reserve::ratio(
            &results.medians,
            *scenario,
            Strategy::Grpc,
            Strategy::RedisLua,
        );
        if let Some(r) = over {
            let name = format!("{scenario:?}").to_lowercase();
            println!(
                "ReserveStock over gRPC / the raw script ({name}): {:.1}% (target >= 40%)",
                r * 100.0
            );
            direct.insert(name, r.into());
        }
    }
    let raw_hot = results
        .medians
        .iter()
        .find(|r| r.strategy == Strategy::RedisLua && r.scenario == Scenario::Hot);
    if let (Some(floor), Some(raw)) = (results.grpc_floor_per_sec, raw_hot) {
        println!(
            "a gRPC call that does no work / the raw script (hot): {:.1}%: no gRPC call goes faster here",
            floor / raw.per_sec * 100.0
        );
    }
    let report = serde_json::json!({
        "benchmark": "reserve",
        "run_at": chrono::Utc::now().to_rfc3339(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "concurrency": concurrency,
        "requests": requests,
        "spread_skus": spread_skus,
        "rounds": rounds,
        "hot_lua_over_for_update": ratio,
        "grpc_over_lua": direct,
        "grpc_floor_per_sec": results.grpc_floor_per_sec,
        "medians": results.medians,
        "runs": results.runs,
    });
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    println!("wrote {}", json.display());
    Ok(())
}

async fn saga(a: SagaBenchArgs) -> anyhow::Result<()> {
    let opts = crate::bench::saga::Options {
        concurrency: a.concurrency,
        rate: a.rate,
        duration: a.duration,
        warmup: a.warmup,
        mix: Mix {
            skus: a.skus,
            skew: a.skew,
            lines: a.lines,
            slot_share: a.slot_share,
            out_of_stock_share: a.out_of_stock_share,
            unfunded_share: a.unfunded_share,
            customers: a.customers,
            slots: a.slots,
        },
        decline_rate: a.decline_rate,
        batch_size: a.batch_size,
        instances: a.instances,
        max_open_orders: a.max_open_orders,
        database_url: a.database_url,
        baseline: a.baseline,
    };
    let figures = crate::bench::saga::run(opts).await?;
    print!("{}", crate::bench::saga::render(&figures));
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
