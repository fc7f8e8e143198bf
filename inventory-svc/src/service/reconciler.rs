//! The background task that keeps Redis honest: while reservations go
//! through Redis it reconciles every `reconcile_interval_ms`; while they go
//! through Postgres (breaker open) it probes Redis every `probe_interval_ms`
//! and, once Redis answers, reconciles every counter (rebuilding those that
//! went stale during the outage, or that Redis lost) before closing the
//! breaker.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::service::breaker::Path;
use crate::service::{Inventory, InventoryError};

pub async fn run(inventory: Inventory, stop: CancellationToken) {
    let settings = inventory.settings().clone();
    let probe = Duration::from_millis(settings.probe_interval_ms.max(10));
    let every = Duration::from_millis(settings.reconcile_interval_ms);
    let mut last = Instant::now();
    loop {
        let wait = if inventory.breaker().path() == Path::Postgres || every.is_zero() {
            probe
        } else {
            every.saturating_sub(last.elapsed()).min(probe)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        match inventory.breaker().path() {
            Path::Postgres if !inventory.breaker().is_pinned() => recover(&inventory).await,
            Path::Postgres => {}
            Path::Redis if !every.is_zero() && last.elapsed() >= every => {
                last = Instant::now();
                if let Err(e) = inventory.reconcile(None).await {
                    note_failure(&inventory, &e);
                }
            }
            Path::Redis => {}
        }
    }
}

/// Probes Redis; if it answers, reconciles every counter and closes the
/// breaker, then reconciles once more: a release or commit that went through
/// Postgres while the first pass ran has made its counter stale again (it is
/// also caught on the counter's next use, and by the periodic pass).
pub async fn recover(inventory: &Inventory) {
    if saga_shared::redis::ping(inventory.cache().pool())
        .await
        .is_err()
    {
        return;
    }
    match inventory.reconcile(None).await {
        Ok(report) => {
            tracing::info!(
                checked = report.checked,
                fixed = report.fixed.len(),
                "Redis answers again; counters reconciled"
            );
            inventory.breaker().close();
            if let Err(e) = inventory.reconcile(None).await {
                note_failure(inventory, &e);
            }
        }
        Err(e) => note_failure(inventory, &e),
    }
}

fn note_failure(inventory: &Inventory, e: &InventoryError) {
    match e {
        InventoryError::Cache(c) if c.is_unavailable() => {
            inventory.breaker().failure(&c.to_string());
        }
        _ => tracing::warn!(error = %e, "reconciliation failed"),
    }
}
