//! Redis counters against Postgres: rebuilding a counter from a Postgres
//! snapshot, and the reconciliation pass that finds the ones that drifted.

use std::time::Duration;

use super::{Inventory, InventoryError, Result};
use crate::domain::{self, StockRecord};
use crate::store;
use crate::store::cache::{CounterView, Rebuilt, SkuSnapshot};

/// One SKU a reconciliation pass changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuFix {
    pub sku: String,
    /// The Redis counter before (None: it was missing).
    pub before: Option<i64>,
    pub after: i64,
    /// Holds dropped from Redis because Postgres closed them.
    pub closed_dropped: i64,
    /// Holds Redis granted that Postgres never recorded, older than the
    /// grace period: given back.
    pub orphans_released: i64,
    /// Holds Postgres had that Redis had lost.
    pub restored: i64,
    /// Holds whose Redis quantity differed from Postgres's, corrected.
    pub resized: i64,
    /// The counter moved to a new epoch (holds it granted before are void).
    pub epoch_moved: bool,
}

/// What a reconciliation pass found and fixed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub checked: usize,
    pub fixed: Vec<SkuFix>,
}

impl Inventory {
    /// Rebuilds the Redis counters of `skus` from Postgres (see
    /// `lua/rebuild.lua`). The rows stay locked while Redis is updated, so no
    /// hold can be recorded against a counter that is being replaced. An
    /// epoch the rebuild moves to is a fresh sequence value: if this
    /// transaction fails after Redis took it, Postgres never has it.
    pub async fn rebuild(&self, skus: &[String]) -> Result<Vec<(String, Rebuilt)>> {
        let mut tx = self.store.pool.begin().await?;
        let snapshots = store::snapshots(&mut tx, skus, true).await?;
        let mut out = Vec::with_capacity(snapshots.len());
        for mut snapshot in snapshots {
            // Under the row lock no hold of the SKU is recorded or closed:
            // what Redis holds now that Postgres closed stays closed, and a
            // hold Redis grants from now on is one in flight.
            let held = self.cache.hold_ids(&snapshot.sku).await?;
            let held: Vec<(String, uuid::Uuid)> = held
                .into_iter()
                .map(|o| (snapshot.sku.clone(), o))
                .collect();
            snapshot.closed = store::closed_among(&mut *tx, &held)
                .await?
                .into_iter()
                .map(|(_, order)| order)
                .collect();
            let next = store::next_epoch(&mut tx).await?;
            let rebuilt = self
                .cache
                .rebuild(&snapshot, next, Some(self.grace()))
                .await?;
            if rebuilt.epoch_moved {
                store::set_epoch(&mut tx, &snapshot.sku, next).await?;
            }
            out.push((snapshot.sku, rebuilt));
        }
        tx.commit().await?;
        metrics::counter!("inventory_counter_rebuilds_total").increment(out.len() as u64);
        Ok(out)
    }

    /// Compares every counter (or those of `only`) with Postgres and
    /// rebuilds the ones that disagree: missing, of another epoch, drifted,
    /// missing a hold Postgres has, keeping one Postgres closed, or keeping
    /// an orphan past the grace period. Safe with reservations in flight:
    /// the comparison is a cheap unlocked read, and the fix runs under the
    /// SKU's row lock with the rebuild script.
    pub async fn reconcile(&self, only: Option<&[String]>) -> Result<ReconcileReport> {
        let skus = match only {
            Some(skus) => skus.to_vec(),
            None => self.store.all_skus().await?,
        };
        let mut report = ReconcileReport::default();
        for chunk in skus.chunks(64) {
            let mut conn = self.store.pool.acquire().await?;
            let mut snapshots = store::snapshots(&mut conn, chunk, false).await?;
            drop(conn);
            let mut views = Vec::with_capacity(snapshots.len());
            for snapshot in &snapshots {
                views.push(self.cache.read(&snapshot.sku).await?);
            }
            // Which of the holds Redis has Postgres closed.
            let held: Vec<(String, uuid::Uuid)> = snapshots
                .iter()
                .zip(&views)
                .flat_map(|(snapshot, view)| {
                    view.holds
                        .keys()
                        .filter_map(|o| uuid::Uuid::parse_str(o).ok())
                        .map(|o| (snapshot.sku.clone(), o))
                })
                .collect();
            for (sku, order) in store::closed_among(&self.store.pool, &held).await? {
                if let Some(snapshot) = snapshots.iter_mut().find(|s| s.sku == sku) {
                    snapshot.closed.push(order);
                }
            }
            let now = chrono::Utc::now().timestamp_millis();
            let mut suspects = Vec::new();
            for (snapshot, view) in snapshots.iter().zip(&views) {
                if !agrees(snapshot, view, self.grace(), now) {
                    suspects.push(snapshot.sku.clone());
                }
            }
            report.checked += snapshots.len();
            if suspects.is_empty() {
                continue;
            }
            // One SKU per transaction: a product row stays locked for its
            // own Redis call only, not for every suspect's in turn.
            let mut rebuilt = Vec::with_capacity(suspects.len());
            for sku in &suspects {
                rebuilt.extend(self.rebuild(std::slice::from_ref(sku)).await?);
            }
            for (sku, r) in rebuilt {
                let fix = SkuFix {
                    sku,
                    before: r.previous,
                    after: r.avail,
                    closed_dropped: r.removed - r.orphans,
                    orphans_released: r.orphans,
                    restored: r.added,
                    resized: r.resized,
                    epoch_moved: r.epoch_moved,
                };
                if fix.before == Some(fix.after)
                    && r.removed == 0
                    && r.added == 0
                    && r.resized == 0
                    && !r.epoch_moved
                {
                    continue;
                }
                count_fix(&fix);
                report.fixed.push(fix);
            }
        }
        metrics::counter!("inventory_reconcile_runs_total").increment(1);
        Ok(report)
    }

    /// Rebuilds the counters of `skus`; if Redis does not answer, notes the
    /// failure with the breaker instead of failing.
    pub(super) async fn rebuild_or_fall_back(&self, skus: &[String]) -> Result<()> {
        match self.rebuild(skus).await {
            Ok(_) => Ok(()),
            Err(InventoryError::Cache(e)) if e.is_unavailable() => {
                self.breaker.failure(&e.to_string());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether a Redis counter agrees with a (possibly slightly old) Postgres
/// snapshot, allowing for holds in flight: the domain's rule, on the
/// snapshot's holds (those it saw closed count as decided).
fn agrees(snap: &SkuSnapshot, view: &CounterView, grace: Duration, now_ms: i64) -> bool {
    let record = StockRecord {
        on_hand: snap.on_hand,
        sold: snap.sold,
        epoch: snap.epoch,
        held: snap
            .reserved
            .iter()
            .map(|(order, qty)| (order.to_string(), *qty))
            .collect(),
        decided: snap
            .closed
            .iter()
            .map(|order| (order.to_string(), "closed".to_owned()))
            .collect(),
    };
    domain::redis_disagreements(&record, view, now_ms, grace).is_empty()
}

fn count_fix(fix: &SkuFix) {
    let counter = |kind: &'static str, n: u64| {
        if n > 0 {
            metrics::counter!("inventory_reconcile_fixed_total", "kind" => kind).increment(n);
        }
    };
    counter("counter", u64::from(fix.before != Some(fix.after)));
    counter("orphan_released", fix.orphans_released as u64);
    counter("closed_dropped", fix.closed_dropped as u64);
    counter("restored", fix.restored as u64);
    counter("resized", fix.resized as u64);
    counter("epoch_moved", u64::from(fix.epoch_moved));
    tracing::info!(
        sku = %fix.sku,
        before = ?fix.before,
        after = fix.after,
        orphans = fix.orphans_released,
        restored = fix.restored,
        resized = fix.resized,
        closed = fix.closed_dropped,
        epoch_moved = fix.epoch_moved,
        "reconciliation fixed a counter"
    );
}
