//! Releasing and selling holds: Postgres decides in the caller's
//! transaction, Redis is told once it has committed.

use sqlx::PgConnection;
use uuid::Uuid;

use super::{Inventory, InventoryError, Result};
use crate::domain::{Holder, Line, OrderHoldState};
use crate::service::breaker::Path;
use crate::store::{self, Claimed};

/// What releasing or committing did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The holds moved on.
    Done(Vec<Line>),
    /// Released before it was reserved: a tombstone now stands.
    Tombstone,
    /// Nothing to do (already closed, or rejected).
    Unchanged(OrderHoldState),
}

/// What Redis must be told once a transaction has committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AfterCommit {
    #[default]
    Nothing,
    /// Give the holds of `ledger` on `skus` back and mark them released:
    /// they were released, or a release or rejection overtook a grant.
    Release { ledger: Uuid, skus: Vec<String> },
    /// Drop the holds of `ledger` on `skus`: their units are sold.
    Commit { ledger: Uuid, skus: Vec<String> },
}

/// A decision this transaction holds locked as RESERVED did not close: it
/// cannot happen while the lock is held, but is an error rather than a panic.
fn changed_meanwhile(holder: Holder) -> InventoryError {
    InventoryError::ReservationConflict {
        id: holder.reservation_id().unwrap_or(holder.ledger_id()),
        why: "its decision changed while it was being closed; retry".into(),
    }
}

/// How a holder's holds end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseAs {
    /// Given back (the order was cancelled, the reservation released).
    Release,
    /// Sold (the order was confirmed, the reservation committed).
    Commit,
}

impl Inventory {
    /// Ends the holds of `holder` in a transaction of its own (retried on
    /// conflicts), then tells Redis: for the direct calls and the repair
    /// loop (events do the same in their inbox transaction).
    pub async fn close(&self, holder: Holder, how: CloseAs) -> Result<Closed> {
        let what = match how {
            CloseAs::Release => "release",
            CloseAs::Commit => "commit",
        };
        let (closed, after) = saga_shared::db::retry(what, || async {
            let mut tx = self.store.pool.begin().await?;
            store::lock_products_of(&mut tx, holder.ledger_id()).await?;
            let done = match how {
                CloseAs::Release => self.apply_release(&mut tx, holder, &[]).await?,
                CloseAs::Commit => self.apply_commit(&mut tx, holder).await?,
            };
            tx.commit().await?;
            Ok::<_, InventoryError>(done)
        })
        .await?;
        self.after_commit(after).await;
        Ok(closed)
    }

    /// Releases the holds of `holder` in the caller's transaction, or leaves
    /// a tombstone if it was never reserved here. `skus`: the SKUs the
    /// release names, if known (for a tombstone, Redis marks them released
    /// so that a late grant is refused there too).
    pub async fn apply_release(
        &self,
        tx: &mut PgConnection,
        holder: Holder,
        skus: &[String],
    ) -> Result<(Closed, AfterCommit)> {
        let ledger = holder.ledger_id();
        let redis = self.breaker.path() == Path::Redis;
        let tell = |skus: Vec<String>| {
            if redis && !skus.is_empty() {
                AfterCommit::Release { ledger, skus }
            } else {
                AfterCommit::Nothing
            }
        };
        match store::claim_order(
            tx,
            holder,
            OrderHoldState::Released,
            Some("released before it was reserved"),
        )
        .await?
        {
            Claimed::New => Ok((Closed::Tombstone, tell(skus.to_vec()))),
            Claimed::Existing(OrderHoldState::Reserved) => {
                // The claim locked the RESERVED decision: it closes.
                let lines = store::close_holds(tx, ledger, OrderHoldState::Released, !redis)
                    .await?
                    .ok_or_else(|| changed_meanwhile(holder))?;
                let after = tell(lines.iter().map(|l| l.sku.clone()).collect());
                Ok((Closed::Done(lines), after))
            }
            Claimed::Existing(state) => Ok((Closed::Unchanged(state), AfterCommit::Nothing)),
        }
    }

    /// Turns the holds of `holder` into sales in the caller's transaction.
    pub async fn apply_commit(
        &self,
        tx: &mut PgConnection,
        holder: Holder,
    ) -> Result<(Closed, AfterCommit)> {
        let ledger = holder.ledger_id();
        let id = holder.reservation_id().unwrap_or(ledger);
        let redis = self.breaker.path() == Path::Redis;
        // The common case (RESERVED) in one statement; the rest looks at
        // the decision under its lock.
        let lines = match store::close_holds(tx, ledger, OrderHoldState::Committed, !redis).await? {
            Some(lines) => lines,
            None => match store::lock_order(tx, ledger).await? {
                // Reserved by a transaction that committed after the first
                // look; locked now, so it closes.
                Some(OrderHoldState::Reserved) => {
                    store::close_holds(tx, ledger, OrderHoldState::Committed, !redis)
                        .await?
                        .ok_or_else(|| changed_meanwhile(holder))?
                }
                Some(OrderHoldState::Committed) => {
                    return Ok((
                        Closed::Unchanged(OrderHoldState::Committed),
                        AfterCommit::Nothing,
                    ));
                }
                Some(state) => {
                    return Err(InventoryError::ReservationConflict {
                        id,
                        why: format!("cannot commit a reservation that is {state}"),
                    });
                }
                None => return Err(InventoryError::UnknownReservation(id)),
            },
        };
        let after = if redis {
            AfterCommit::Commit {
                ledger,
                skus: lines.iter().map(|l| l.sku.clone()).collect(),
            }
        } else {
            AfterCommit::Nothing
        };
        Ok((Closed::Done(lines), after))
    }

    /// Tells Redis what a committed transaction decided. If Redis does not
    /// answer, its counter keeps holds Postgres has closed: it undercounts
    /// (never sells what is not there) until the next reconciliation drops
    /// them.
    pub async fn after_commit(&self, after: AfterCommit) {
        let result = match &after {
            AfterCommit::Nothing => return,
            AfterCommit::Release { ledger, skus } => {
                let skus: Vec<&str> = skus.iter().map(String::as_str).collect();
                self.via_redis(self.cache.release(*ledger, &skus))
                    .await
                    .map(|_| ())
            }
            AfterCommit::Commit { ledger, skus } => {
                let skus: Vec<&str> = skus.iter().map(String::as_str).collect();
                self.via_redis(self.cache.commit(*ledger, &skus))
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, ?after, "Redis not told of a committed change; reconciliation will");
        }
    }
}
