//! ReserveStock, ReleaseStock and CommitStock: direct reservations, in an
//! id space of their own (docs/adr/0008).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{CloseAs, Inventory, InventoryError, Result};
use crate::domain::{Holder, Line, OrderHoldState};
use crate::store::{self, StoredReservation};

impl Inventory {
    /// A reservation as stored, by ledger id.
    pub async fn reservation(&self, ledger: Uuid) -> Result<Option<StoredReservation>> {
        let mut conn = self.store.pool.acquire().await?;
        Ok(store::reservation(&mut conn, ledger).await?)
    }

    /// ReserveStock: hold `lines` under the caller's `id`, or answer the
    /// decision taken for `id` before (the same lines, or a conflict). An id
    /// that names an order's saga is refused.
    pub async fn reserve_direct(&self, id: Uuid, lines: Vec<Line>) -> Result<StoredReservation> {
        let holder = Holder::Direct(id);
        let ledger = holder.ledger_id();
        if let Some(existing) = self.reservation(ledger).await? {
            return same_lines(id, existing, &lines);
        }
        if self.store.saga_known(id).await? {
            return Err(InventoryError::BelongsToSaga(id));
        }
        let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
        let known = self.store.products(&skus).await?;
        if let Some(unknown) = lines.iter().find(|l| !known.iter().any(|p| p.sku == l.sku)) {
            return Err(InventoryError::UnknownSku(unknown.sku.clone()));
        }
        let after = saga_shared::db::retry("ReserveStock", || {
            // Each attempt's metrics count only if it commits.
            saga_shared::telemetry::recording_on_commit(async {
                let step = self.reserve_step(holder, lines.clone()).await?;
                let mut tx = self.store.pool.begin().await?;
                // What an event's transaction does first (`lock_batch`); one
                // line takes its one lock in the statement that records it.
                if lines.len() > 1 {
                    self.lock_products(&mut tx, &skus).await?;
                }
                let (_, after) = self.apply_reserve(&mut tx, holder, step).await?;
                tx.commit().await?;
                Ok::<_, InventoryError>(after)
            })
        })
        .await?;
        self.after_commit(after).await;
        let stored = self
            .reservation(ledger)
            .await?
            .ok_or(InventoryError::UnknownReservation(id))?;
        same_lines(id, stored, &lines)
    }

    /// ReleaseStock (a tombstone if `id` was never reserved).
    pub async fn release_direct(&self, id: Uuid) -> Result<StoredReservation> {
        let holder = Holder::Direct(id);
        let ledger = holder.ledger_id();
        if self.reservation(ledger).await?.is_none() && self.store.saga_known(id).await? {
            return Err(InventoryError::BelongsToSaga(id));
        }
        self.close(holder, CloseAs::Release).await?;
        self.reservation(ledger)
            .await?
            .ok_or(InventoryError::UnknownReservation(id))
    }

    /// CommitStock.
    pub async fn commit_direct(&self, id: Uuid) -> Result<StoredReservation> {
        let holder = Holder::Direct(id);
        let ledger = holder.ledger_id();
        if self.reservation(ledger).await?.is_none() {
            return Err(if self.store.saga_known(id).await? {
                InventoryError::BelongsToSaga(id)
            } else {
                InventoryError::UnknownReservation(id)
            });
        }
        self.close(holder, CloseAs::Commit).await?;
        self.reservation(ledger)
            .await?
            .ok_or(InventoryError::UnknownReservation(id))
    }
}

/// A retried ReserveStock must name the same lines as the first.
fn same_lines(id: Uuid, stored: StoredReservation, asked: &[Line]) -> Result<StoredReservation> {
    if stored.state == OrderHoldState::Rejected || stored.lines.is_empty() {
        return Ok(stored);
    }
    let have: BTreeMap<&str, i64> = stored
        .lines
        .iter()
        .map(|h| (h.sku.as_str(), h.quantity))
        .collect();
    let want: BTreeMap<&str, i64> = asked.iter().map(|l| (l.sku.as_str(), l.quantity)).collect();
    if have == want {
        Ok(stored)
    } else {
        Err(InventoryError::ReservationConflict {
            id,
            why: "already used for other lines; use a new id".into(),
        })
    }
}
