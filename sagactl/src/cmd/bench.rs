//! `sagactl bench reserve`: the race lab; prints figures and writes JSON.

use anyhow::{Context, bail};

use crate::bench::reserve::{self, Options, Scenario, Strategy};
use crate::cli::BenchCmd;

pub(super) async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
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
    let report = serde_json::json!({
        "benchmark": "reserve",
        "run_at": chrono::Utc::now().to_rfc3339(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "concurrency": concurrency,
        "requests": requests,
        "spread_skus": spread_skus,
        "rounds": rounds,
        "hot_lua_over_for_update": ratio,
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
