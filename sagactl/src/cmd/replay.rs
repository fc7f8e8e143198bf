//! `sagactl replay status`: where each service stands on its input streams.

use crate::cli::ReplayCmd;
use crate::system::SystemConfig;

pub(super) async fn run(cmd: ReplayCmd) -> anyhow::Result<()> {
    match cmd {
        ReplayCmd::Status { service, namespace } => {
            let mut cfg = SystemConfig::from_env()?;
            if let Some(ns) = namespace {
                cfg = cfg.with_namespace(&ns);
            }
            let checkpoints = crate::replay::status(&cfg, service.as_deref()).await?;
            print!("{}", crate::replay::render(&checkpoints));
            Ok(())
        }
    }
}
