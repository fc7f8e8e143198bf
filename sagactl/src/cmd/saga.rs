//! `sagactl saga show <order id>`: an order's story; `sagactl saga stuck`:
//! the open orders that wait, and who owes their next step.

use anyhow::Context;

use crate::audit::Auditor;
use crate::cli::SagaCmd;
use crate::saga;
use crate::system::SystemConfig;

async fn auditor(namespace: Option<String>) -> anyhow::Result<Auditor> {
    let mut cfg = SystemConfig::from_env()?;
    if let Some(ns) = namespace {
        cfg = cfg.with_namespace(&ns);
    }
    // The story needs no Redis: do not wait for it when it is down.
    let (redis, _) = saga_shared::redis::connect_or_keep_trying(
        &cfg.inventory.redis,
        std::time::Duration::from_millis(200),
    )
    .await?;
    Auditor::with_redis(&cfg, redis).await
}

pub(super) async fn run(cmd: SagaCmd) -> anyhow::Result<()> {
    match cmd {
        SagaCmd::Show {
            order_id,
            namespace,
        } => {
            let id = uuid::Uuid::parse_str(order_id.trim())
                .with_context(|| format!("order id {order_id:?} is not a UUID"))?;
            let auditor = auditor(namespace).await?;
            let story = saga::show(&auditor, id).await;
            auditor.close().await;
            match story? {
                Some(story) => print!("{}", saga::render_story(&story)),
                None => anyhow::bail!("no order {id}"),
            }
        }
        SagaCmd::Stuck {
            older_than,
            limit,
            namespace,
        } => {
            let auditor = auditor(namespace).await?;
            let stuck = saga::stuck(&auditor, older_than, limit).await;
            auditor.close().await;
            print!("{}", saga::render_stuck(&stuck?, chrono::Utc::now()));
        }
    }
    Ok(())
}
