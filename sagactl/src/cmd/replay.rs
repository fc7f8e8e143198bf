//! `sagactl replay`: a range of a service's input streams through its own
//! handlers; `sagactl replay status`: where each service stands.

use std::time::Instant;

use anyhow::bail;

use crate::cli::{ReplayArgs, ReplayCmd};
use crate::replay::{self, Request, Start};
use crate::system::SystemConfig;

fn config(namespace: Option<String>) -> anyhow::Result<SystemConfig> {
    let cfg = SystemConfig::from_env()?;
    Ok(match namespace {
        Some(ns) => cfg.with_namespace(&ns),
        None => cfg,
    })
}

pub(super) async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    if let Some(ReplayCmd::Status { service, namespace }) = args.command {
        let cfg = config(namespace)?;
        let checkpoints = replay::status(&cfg, service.as_deref()).await?;
        print!("{}", replay::render(&checkpoints));
        return Ok(());
    }
    let Some(service) = args.service else {
        bail!("name the service to replay into (or `sagactl replay status`)");
    };
    let start = match (args.from_seq, args.from_checkpoint) {
        (Some(n), false) => Start::Seq(n),
        (None, true) => Start::Checkpoint,
        _ => bail!("say where to start: --from-seq N or --from-checkpoint"),
    };
    let request = Request {
        service,
        start,
        to_seq: args.to_seq,
        stream: args.stream,
        dry_run: args.dry_run,
    };
    let cfg = config(args.namespace)?;
    let started = Instant::now();
    let replays = replay::run(&cfg, &request, |stream, from, to, r| {
        let total = to.saturating_sub(from) + 1;
        let rate = r.read as f64 / started.elapsed().as_secs_f64().max(0.001);
        let eta = total.saturating_sub(r.read) as f64 / rate.max(1.0);
        eprint!(
            "\r{stream}: {}/{total} read, {rate:.0} events/s, ETA {eta:.0} s   ",
            r.read
        );
    })
    .await?;
    eprintln!();
    print!("{}", replay::render_replay(&replays, request.dry_run));
    if replays.iter().any(|r| !r.report.failed.is_empty()) {
        std::process::exit(1);
    }
    Ok(())
}
