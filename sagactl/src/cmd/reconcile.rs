//! `sagactl inventory reconcile`: Redis's stock counters against Postgres,
//! once.

use anyhow::Context;

pub(super) async fn run(skus: Vec<String>, namespace: Option<String>) -> anyhow::Result<()> {
    let mut cfg = inventory_svc::InventoryConfig::load(None)?;
    if let Some(ns) = namespace {
        cfg.namespace = ns;
    }
    let pool =
        saga_shared::db::open_existing(&cfg.database, &inventory_svc::MIGRATIONS, &cfg.namespace)
            .await
            .context("inventory-svc's database")?;
    let redis = saga_shared::redis::connect(&cfg.redis)
        .await
        .context("Redis must answer to reconcile its counters")?;
    let inventory = inventory_svc::inventory(&cfg, pool, redis, true);
    let only = (!skus.is_empty()).then_some(skus.as_slice());
    let report = inventory.reconcile(only).await?;
    println!(
        "checked {} SKUs, fixed {}",
        report.checked,
        report.fixed.len()
    );
    for f in &report.fixed {
        let before = f
            .before
            .map_or_else(|| "missing".to_owned(), |b| b.to_string());
        println!(
            "  {:<16} available {before} -> {}  orphans released {}  holds restored {}  closed holds dropped {}{}",
            f.sku,
            f.after,
            f.orphans_released,
            f.restored,
            f.closed_dropped,
            if f.epoch_moved { "  (new epoch)" } else { "" }
        );
    }
    Ok(())
}
