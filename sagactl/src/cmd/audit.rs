//! `sagactl audit`: the invariants across the four services' stores; exits
//! 1 on any violation.

use crate::audit::Auditor;
use crate::system::SystemConfig;

pub(super) async fn run(namespace: Option<String>) -> anyhow::Result<()> {
    let mut cfg = SystemConfig::from_env()?;
    if let Some(ns) = namespace {
        cfg = cfg.with_namespace(&ns);
    }
    let auditor = Auditor::connect(&cfg).await?;
    let report = auditor.audit().await?;
    print!("{}", report.render());
    auditor.close().await;
    if !report.is_clean() {
        std::process::exit(1);
    }
    Ok(())
}
