//! Holding stock: the Redis grant (or the decision to use Postgres) before
//! the transaction, then the record in the caller's transaction.

use saga_shared::faults::{CrashPoint, crash_point};
use saga_shared::telemetry::record_on_commit;
use sqlx::PgConnection;

use super::{AfterCommit, Inventory, InventoryError, Result};
use crate::domain::{Holder, Line, OrderHoldState};
use crate::store::cache::{CacheError, Reserve};
use crate::store::{self, Claimed, HoldRow, PgReserve, PriceAndEpoch, Recorded};

/// Why an order cannot be held at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum RejectReason {
    OutOfStock,
    UnknownSku,
    InvalidLines,
}

impl RejectReason {
    /// Its name in APIs, events, metrics and messages.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The first half of holding an order, done before its transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReserveStep {
    /// Redis holds every line; record them under these counter epochs.
    Granted { lines: Vec<Line>, epochs: Vec<i64> },
    /// Redis is not in use: hold through Postgres in the transaction.
    ViaPostgres { lines: Vec<Line> },
    /// Nothing is held.
    Rejected { sku: String, reason: RejectReason },
    /// Redis has a tombstone for the order (closed before it was placed
    /// here). Postgres decides whether it stands: see `apply_reserve`.
    Closed { lines: Vec<Line> },
    /// Postgres already has a decision for this order.
    Decided,
}

/// What the second half of holding an order did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// Newly held, at these prices.
    Held(Vec<HoldRow>),
    /// Newly rejected.
    Rejected { sku: String, reason: RejectReason },
    /// Decided before (a duplicate, or a tombstone): nothing changed.
    Unchanged(OrderHoldState),
}

impl Inventory {
    /// Holds `lines` (sorted, as [`domain::order_lines`] returns them) for
    /// `holder` in Redis, all or none; or says to use Postgres. A counter that
    /// is missing is rebuilt first; a grant from a counter whose epoch is no
    /// longer Postgres's is given back and redone after a rebuild.
    pub async fn reserve_step(&self, holder: Holder, lines: Vec<Line>) -> Result<ReserveStep> {
        let ledger = holder.ledger_id();
        let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
        // The epochs are read before the script: a rebuild in between makes
        // the grant look stale and it is redone; one after it is caught by
        // the fence in `claim_and_record`, as before.
        let (decided, mut current) = self.store.decision_and_prices(ledger, &skus).await?;
        if decided.is_some() {
            return Ok(ReserveStep::Decided);
        }
        const ATTEMPTS: usize = 4;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                // A counter was rebuilt: its epoch moved.
                current = self.store.prices_and_epochs(&skus).await?;
            }
            let Some(answer) = self.via_redis(self.cache.reserve(ledger, &lines)).await? else {
                return Ok(ReserveStep::ViaPostgres { lines });
            };
            match answer {
                Reserve::Granted(epochs) => {
                    let stale = self.stale_now(&lines, &epochs, &skus, &mut current).await?;
                    if stale.is_empty() {
                        crash_point(CrashPoint::InventoryAfterRedisHold);
                        return Ok(ReserveStep::Granted { lines, epochs });
                    }
                    tracing::info!(
                        ?stale,
                        "counter epoch differs from Postgres; redoing the hold"
                    );
                    let all: Vec<&str> = skus.iter().map(String::as_str).collect();
                    if self
                        .via_redis(self.cache.revoke(ledger, &all))
                        .await?
                        .is_none()
                    {
                        return Ok(ReserveStep::ViaPostgres { lines });
                    }
                    self.rebuild_or_fall_back(&stale).await?;
                }
                Reserve::Rejected { index, epoch, .. } => {
                    let line = std::slice::from_ref(&lines[index]);
                    let stale = self.stale_now(line, &[epoch], &skus, &mut current).await?;
                    if stale.is_empty() {
                        return Ok(ReserveStep::Rejected {
                            sku: lines[index].sku.clone(),
                            reason: RejectReason::OutOfStock,
                        });
                    }
                    // Postgres changed the SKU since the counter was built
                    // (units given back or added, say): it answers again
                    // once rebuilt.
                    tracing::info!(?stale, "a stale counter refused; rebuilding it");
                    self.rebuild_or_fall_back(&stale).await?;
                }
                Reserve::NotReady { index } => {
                    if let Some(unknown) = lines
                        .iter()
                        .find(|l| !current.iter().any(|k| k.sku == l.sku))
                    {
                        return Ok(ReserveStep::Rejected {
                            sku: unknown.sku.clone(),
                            reason: RejectReason::UnknownSku,
                        });
                    }
                    tracing::info!(sku = %lines[index].sku, "counter missing in Redis; rebuilding");
                    self.rebuild_or_fall_back(&skus).await?;
                }
                Reserve::Closed { .. } => return Ok(ReserveStep::Closed { lines }),
                Reserve::Mismatch { index, held } => {
                    let id = holder.reservation_id().unwrap_or(ledger);
                    return Err(InventoryError::ReservationConflict {
                        id,
                        why: format!(
                            "already holds {held} of {:?} under this id, not {}; a retry must ask for the same lines",
                            lines[index].sku, lines[index].quantity
                        ),
                    });
                }
            }
        }
        Err(InventoryError::Cache(CacheError::Reply(format!(
            "counters kept changing during {ATTEMPTS} attempts"
        ))))
    }

    /// The SKUs of `lines` whose counter answered under another epoch than
    /// Postgres's (`epochs`, line by line). One that seems stale is looked
    /// at again (into `current`): a rebuild between the read and the script
    /// makes the answer current.
    async fn stale_now(
        &self,
        lines: &[Line],
        epochs: &[i64],
        skus: &[String],
        current: &mut Vec<PriceAndEpoch>,
    ) -> Result<Vec<String>> {
        if stale_lines(lines, epochs, current).is_empty() {
            return Ok(Vec::new());
        }
        *current = self.store.prices_and_epochs(skus).await?;
        Ok(stale_lines(lines, epochs, current))
    }

    /// The second half of holding stock for `holder`, in the caller's
    /// transaction. A grant Redis made for a decision that was closed
    /// meanwhile (a release or a rejection overtook it) is given back once
    /// the transaction commits: see the [`AfterCommit`] returned.
    pub async fn apply_reserve(
        &self,
        tx: &mut PgConnection,
        holder: Holder,
        step: ReserveStep,
    ) -> Result<(Reserved, AfterCommit)> {
        let ledger = holder.ledger_id();
        let mut after = AfterCommit::Nothing;
        let (path, reserved) = match step {
            ReserveStep::Granted { lines, epochs } => {
                match store::claim_and_record(tx, holder, &lines, &epochs).await? {
                    Recorded::Held(held) => ("redis", Reserved::Held(held)),
                    Recorded::Existing(state) => {
                        if matches!(state, OrderHoldState::Released | OrderHoldState::Rejected) {
                            after = AfterCommit::Release {
                                ledger,
                                skus: lines.into_iter().map(|l| l.sku).collect(),
                            };
                        }
                        ("redis", Reserved::Unchanged(state))
                    }
                    Recorded::Short(sku) => {
                        // The counter granted what Postgres has not: it is
                        // rebuilt before its next grant counts, and what it
                        // granted here is given back.
                        store::move_epochs(tx, std::slice::from_ref(&sku)).await?;
                        let reserved = reject(tx, holder, sku, RejectReason::OutOfStock).await?;
                        if !matches!(
                            reserved,
                            Reserved::Unchanged(
                                OrderHoldState::Reserved | OrderHoldState::Committed
                            )
                        ) {
                            let skus = lines.into_iter().map(|l| l.sku).collect();
                            after = AfterCommit::Release { ledger, skus };
                        }
                        ("redis", reserved)
                    }
                }
            }
            ReserveStep::ViaPostgres { lines } => {
                ("postgres", hold_via_postgres(tx, holder, &lines).await?)
            }
            ReserveStep::Rejected { sku, reason } => {
                ("redis", reject(tx, holder, sku, reason).await?)
            }
            ReserveStep::Closed { lines } => match store::lock_order(tx, ledger).await? {
                // The cancellation that left the tombstone is in Postgres.
                Some(state) => ("redis", Reserved::Unchanged(state)),
                // A tombstone Postgres knows nothing of (the schema was
                // restored from a backup older than it): Postgres decides,
                // so hold through Postgres, which moves the counters' epochs.
                None => {
                    tracing::warn!(order_id = %ledger, "Redis tombstone unknown to Postgres; holding through Postgres");
                    ("postgres", hold_via_postgres(tx, holder, &lines).await?)
                }
            },
            ReserveStep::Decided => {
                let state = store::lock_order(tx, ledger)
                    .await?
                    .unwrap_or(OrderHoldState::Released);
                ("none", Reserved::Unchanged(state))
            }
        };
        let outcome = match &reserved {
            Reserved::Held(_) => "held",
            Reserved::Rejected { .. } => "rejected",
            Reserved::Unchanged(_) => "unchanged",
        };
        record_on_commit(move || {
            metrics::counter!("inventory_reservations_total", "path" => path, "outcome" => outcome)
                .increment(1);
        });
        Ok((reserved, after))
    }
}

/// The SKUs of `lines` whose grant came from a counter epoch (`epochs[i]`)
/// that is not Postgres's `current` one.
fn stale_lines(lines: &[Line], epochs: &[i64], current: &[PriceAndEpoch]) -> Vec<String> {
    lines
        .iter()
        .zip(epochs)
        .filter(|(line, epoch)| {
            !current
                .iter()
                .any(|c| c.sku == line.sku && c.redis_epoch == **epoch)
        })
        .map(|(line, _)| line.sku.clone())
        .collect()
}

/// Rejects `holder` for `sku`, unless Postgres has decided it already.
async fn reject(
    tx: &mut PgConnection,
    holder: Holder,
    sku: String,
    reason: RejectReason,
) -> Result<Reserved> {
    let decided = store::claim_order_with(
        tx,
        holder,
        OrderHoldState::Rejected,
        Some(reason.as_str()),
        Some(&sku),
    )
    .await?;
    Ok(match decided {
        Claimed::New => Reserved::Rejected { sku, reason },
        Claimed::Existing(state) => Reserved::Unchanged(state),
    })
}

/// Holds `lines` for `holder` through Postgres (`SELECT ... FOR UPDATE` in
/// SKU order, moving the counters' epochs), or rejects the order, unless
/// Postgres has decided it already.
async fn hold_via_postgres(
    tx: &mut PgConnection,
    holder: Holder,
    lines: &[Line],
) -> Result<Reserved> {
    let ledger = holder.ledger_id();
    Ok(
        match store::claim_order(tx, holder, OrderHoldState::Reserved, None).await? {
            Claimed::New => match store::reserve_in_postgres(tx, ledger, lines).await? {
                PgReserve::Held(held) => Reserved::Held(held),
                PgReserve::Short(sku) => {
                    let reason = RejectReason::OutOfStock;
                    store::reject_order(tx, ledger, reason.as_str(), &sku).await?;
                    Reserved::Rejected { sku, reason }
                }
                PgReserve::Unknown(sku) => {
                    let reason = RejectReason::UnknownSku;
                    store::reject_order(tx, ledger, reason.as_str(), &sku).await?;
                    Reserved::Rejected { sku, reason }
                }
            },
            Claimed::Existing(state) => Reserved::Unchanged(state),
        },
    )
}
