//! `sagactl replay`: a range of a service's input streams through its own
//! handlers; `sagactl replay status`: where each service stands.

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};

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
    let start = match (args.from_seq, args.since, args.from_checkpoint) {
        (Some(n), None, false) => Start::Seq(n),
        (None, Some(t), false) => Start::Since(t),
        (None, None, true) => Start::Checkpoint,
        _ => bail!("say where to start: --from-seq N, --since TIME or --from-checkpoint"),
    };
    let request = Request {
        service,
        start,
        to_seq: args.to_seq,
        stream: args.stream,
        dry_run: args.dry_run,
        force: args.force,
    };
    let cfg = config(args.namespace)?;
    // One bar per stream (drawn only on a terminal): read/total, rate, ETA.
    let mut bar: Option<(String, ProgressBar)> = None;
    let replays = replay::run(&cfg, &request, |stream, from, to, r| {
        if bar.as_ref().is_none_or(|(s, _)| s != stream) {
            if let Some((_, done)) = bar.take() {
                done.finish();
            }
            let b = ProgressBar::new(to.saturating_sub(from) + 1).with_style(
                ProgressStyle::with_template(
                    "{prefix:<20} [{bar:30}] {pos}/{len} events, {per_sec}, ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(stream.to_owned());
            bar = Some((stream.to_owned(), b));
        }
        if let Some((_, b)) = &bar {
            b.set_position(r.read);
        }
    })
    .await;
    if let Some((_, b)) = bar {
        b.finish();
    }
    let replays = replays?;
    print!("{}", replay::render_replay(&replays, request.dry_run));
    if replays.iter().any(|r| r.report.failed_count > 0) {
        std::process::exit(1);
    }
    Ok(())
}
