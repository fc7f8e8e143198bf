//! The inventory application: what the gRPC API and the event handlers do,
//! in terms of the store (Postgres), the stock cache (Redis) and the breaker
//! that chooses between them.
//!
//! Holding stock is two steps, so that no database transaction waits on
//! Redis: [`Inventory::reserve_step`] (Redis, or the decision to use
//! Postgres) and [`Inventory::apply_reserve`] (in the caller's transaction,
//! which for events also holds the inbox row). Releasing and committing go
//! the other way round: Postgres decides in the caller's transaction
//! ([`Inventory::apply_release`], [`Inventory::apply_commit`]) and Redis is
//! told once it has committed ([`Inventory::after_commit`]). So Redis never
//! gives back units Postgres still counts as held, and a transaction that
//! fails leaves Redis as it was.
//!
//! Every write that may leave Redis behind Postgres moves the SKU's counter
//! epoch to a fresh value of a Postgres sequence: a hold granted by the old
//! counter is then refused when it is recorded, and the counter is rebuilt.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use saga_shared::db::Retryable;
use saga_shared::validate::FieldError;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::breaker::{Breaker, Path};
use crate::cache::{CacheError, CounterView, Rebuilt, Reserve, SkuSnapshot, StockCache};
use crate::config::InventorySettings;
use crate::domain::{self, AdjustError, Holder, Line, OrderHoldState, Product};
use crate::store::{self, Claimed, HoldRow, PgReserve, RecordError, Store, StoredReservation};

/// Why an inventory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("sku: no product {0:?}")]
    UnknownSku(String),
    #[error(transparent)]
    Adjust(#[from] AdjustError),
    #[error("reservation_id: no reservation {0}")]
    UnknownReservation(Uuid),
    #[error(
        "reservation_id {0} is the id of an order's saga; direct calls cannot touch a saga's holds: use an id of your own"
    )]
    BelongsToSaga(Uuid),
    #[error("reservation_id {id}: {why}")]
    ReservationConflict { id: Uuid, why: String },
    #[error("stock cache unavailable: {0}")]
    Cache(#[from] CacheError),
    #[error("a hold was granted by a counter rebuilt since: {0}")]
    Fenced(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<RecordError> for InventoryError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Fenced { .. } => InventoryError::Fenced(e.to_string()),
            RecordError::Sql(e) => InventoryError::Db(e),
        }
    }
}

impl Retryable for InventoryError {
    fn is_retryable(&self) -> bool {
        match self {
            InventoryError::Db(e) => e.is_retryable(),
            InventoryError::Fenced(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = InventoryError> = std::result::Result<T, E>;

/// Why an order cannot be held at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    OutOfStock,
    UnknownSku,
    InvalidLines,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfStock => "out_of_stock",
            RejectReason::UnknownSku => "unknown_sku",
            RejectReason::InvalidLines => "invalid_lines",
        }
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
    /// The order was cancelled before it was placed here: hold nothing.
    Closed,
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

#[derive(Clone)]
pub struct Inventory {
    store: Store,
    cache: StockCache,
    settings: InventorySettings,
    breaker: Arc<Breaker>,
}

impl Inventory {
    pub fn new(
        store: Store,
        cache: StockCache,
        settings: InventorySettings,
        breaker: Arc<Breaker>,
    ) -> Self {
        Self {
            store,
            cache,
            settings,
            breaker,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn cache(&self) -> &StockCache {
        &self.cache
    }

    pub fn settings(&self) -> &InventorySettings {
        &self.settings
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.settings.orphan_grace_secs)
    }

    fn closed_window(&self) -> Duration {
        Duration::from_secs(self.settings.closed_window_secs)
    }

    /// Runs a Redis call through the breaker: `None` when Redis is not in
    /// use or did not answer (the caller falls back to Postgres).
    async fn via_redis<T>(
        &self,
        call: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<Option<T>> {
        if self.breaker.path() == Path::Postgres {
            return Ok(None);
        }
        match call.await {
            Ok(v) => {
                self.breaker.success();
                Ok(Some(v))
            }
            Err(e) if e.is_unavailable() => {
                self.breaker.failure(&e.to_string());
                tracing::warn!(error = %e, "Redis call failed; using Postgres");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates or updates a catalog entry. A new SKU gets its (empty) Redis
    /// counter at once; if Redis is down, the first reservation builds it.
    pub async fn upsert_product(
        &self,
        sku: &str,
        name: &str,
        unit_price_cents: i64,
    ) -> Result<(Product, bool)> {
        domain::validate_product(sku, name, unit_price_cents)?;
        let (product, created) = self
            .store
            .upsert_product(sku, name, unit_price_cents)
            .await?;
        if created
            && self.breaker.path() == Path::Redis
            && let Err(e) = self.rebuild(std::slice::from_ref(&product.sku)).await
        {
            tracing::warn!(sku, error = %e, "new product's counter not built yet");
        }
        Ok((product, created))
    }

    pub async fn product(&self, sku: &str) -> Result<Product> {
        saga_shared::validate::ident("sku", sku, domain::MAX_SKU_LEN)?;
        self.store
            .product(sku)
            .await?
            .ok_or_else(|| InventoryError::UnknownSku(sku.to_owned()))
    }

    /// Adds or removes units on hand if `expected_version` is current, in
    /// the caller's transaction (which must commit soon: it holds the SKU's
    /// row lock). Removing units moves the counter's epoch on, so that Redis
    /// cannot grant them before it is rebuilt; call [`Inventory::after_adjust`]
    /// once the transaction has committed. If it rolls back, Redis is as it
    /// was.
    pub async fn adjust_in(
        &self,
        tx: &mut PgConnection,
        sku: &str,
        delta: i64,
        expected_version: i64,
    ) -> Result<Product> {
        domain::validate_adjust(sku, delta, expected_version)?;
        let (products, _) =
            store::snapshots(tx, &[sku.to_owned()], self.closed_window(), true).await?;
        let Some(product) = products.into_iter().next() else {
            return Err(InventoryError::UnknownSku(sku.to_owned()));
        };
        let on_hand = domain::adjust(&product, delta, expected_version)?;
        let updated = store::set_on_hand(tx, sku, on_hand).await?;
        if delta < 0 {
            let epoch = store::next_epoch(tx).await?;
            store::set_epoch(tx, sku, epoch).await?;
        }
        metrics::counter!("inventory_stock_adjustments_total").increment(1);
        Ok(updated)
    }

    /// Brings the Redis counter of `sku` up to an adjustment that committed.
    /// Best effort: a counter left behind undercounts (units added) or is
    /// fenced (units removed) until its next use or reconciliation.
    pub async fn after_adjust(&self, sku: &str) {
        if self.breaker.path() == Path::Postgres {
            return;
        }
        if let Err(e) = self.rebuild_or_fall_back(&[sku.to_owned()]).await {
            tracing::warn!(sku, error = %e, "counter not rebuilt after an adjustment");
        }
    }

    /// Rebuilds the Redis counters of `skus` from Postgres (see
    /// `lua/rebuild.lua`). The rows stay locked while Redis is updated, so no
    /// hold can be recorded against a counter that is being replaced. An
    /// epoch the rebuild moves to is a fresh sequence value: if this
    /// transaction fails after Redis took it, Postgres never has it.
    pub async fn rebuild(&self, skus: &[String]) -> Result<Vec<(String, Rebuilt)>> {
        let mut tx = self.store.pool().begin().await?;
        let (_, snapshots) = store::snapshots(&mut tx, skus, self.closed_window(), true).await?;
        let mut out = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots {
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
            let mut conn = self.store.pool().acquire().await?;
            let (_, snapshots) =
                store::snapshots(&mut conn, chunk, self.closed_window(), false).await?;
            drop(conn);
            let now = chrono::Utc::now().timestamp_millis();
            let mut suspects = Vec::new();
            for snapshot in &snapshots {
                let view = self.cache.read(&snapshot.sku).await?;
                if !agrees(snapshot, &view, self.grace(), now) {
                    suspects.push(snapshot.sku.clone());
                }
            }
            report.checked += snapshots.len();
            if suspects.is_empty() {
                continue;
            }
            for (sku, r) in self.rebuild(&suspects).await? {
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

    /// Holds `lines` (sorted, as [`domain::order_lines`] returns them) for
    /// `holder` in Redis, all or none; or says to use Postgres. A counter that
    /// is missing is rebuilt first; a grant from a counter whose epoch is no
    /// longer Postgres's is given back and redone after a rebuild.
    pub async fn reserve_step(&self, holder: Holder, lines: Vec<Line>) -> Result<ReserveStep> {
        let ledger = holder.ledger_id();
        if self.store.order_state(ledger).await?.is_some() {
            return Ok(ReserveStep::Decided);
        }
        const ATTEMPTS: usize = 4;
        for _ in 0..ATTEMPTS {
            let Some(answer) = self.via_redis(self.cache.reserve(ledger, &lines)).await? else {
                return Ok(ReserveStep::ViaPostgres { lines });
            };
            let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
            match answer {
                Reserve::Granted(epochs) => {
                    let current = self.store.prices_and_epochs(&skus).await?;
                    let stale: Vec<String> = lines
                        .iter()
                        .zip(&epochs)
                        .filter(|(line, epoch)| {
                            !current
                                .iter()
                                .any(|c| c.sku == line.sku && c.redis_epoch == **epoch)
                        })
                        .map(|(line, _)| line.sku.clone())
                        .collect();
                    if stale.is_empty() {
                        saga_shared::faults::crash_point("inventory.after_redis_hold");
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
                Reserve::Rejected { index, .. } => {
                    return Ok(ReserveStep::Rejected {
                        sku: lines[index].sku.clone(),
                        reason: RejectReason::OutOfStock,
                    });
                }
                Reserve::NotReady { index } => {
                    let known = self.store.prices_and_epochs(&skus).await?;
                    if let Some(unknown) =
                        lines.iter().find(|l| !known.iter().any(|k| k.sku == l.sku))
                    {
                        return Ok(ReserveStep::Rejected {
                            sku: unknown.sku.clone(),
                            reason: RejectReason::UnknownSku,
                        });
                    }
                    tracing::info!(sku = %lines[index].sku, "counter missing in Redis; rebuilding");
                    self.rebuild_or_fall_back(&skus).await?;
                }
                Reserve::Closed { .. } => return Ok(ReserveStep::Closed),
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

    async fn rebuild_or_fall_back(&self, skus: &[String]) -> Result<()> {
        match self.rebuild(skus).await {
            Ok(_) => Ok(()),
            Err(InventoryError::Cache(e)) if e.is_unavailable() => {
                self.breaker.failure(&e.to_string());
                Ok(())
            }
            Err(e) => Err(e),
        }
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
                match store::claim_order(tx, holder, OrderHoldState::Reserved, None).await? {
                    Claimed::New => {
                        let held = store::record_holds(tx, ledger, &lines, &epochs).await?;
                        ("redis", Reserved::Held(held))
                    }
                    Claimed::Existing(state) => {
                        if matches!(state, OrderHoldState::Released | OrderHoldState::Rejected) {
                            after = AfterCommit::Release {
                                ledger,
                                skus: lines.into_iter().map(|l| l.sku).collect(),
                            };
                        }
                        ("redis", Reserved::Unchanged(state))
                    }
                }
            }
            ReserveStep::ViaPostgres { lines } => {
                match store::claim_order(tx, holder, OrderHoldState::Reserved, None).await? {
                    Claimed::New => match store::reserve_in_postgres(tx, ledger, &lines).await? {
                        PgReserve::Held(held) => ("postgres", Reserved::Held(held)),
                        PgReserve::Short(sku) => {
                            let reason = RejectReason::OutOfStock;
                            store::reject_order(tx, ledger, reason.as_str(), &sku).await?;
                            ("postgres", Reserved::Rejected { sku, reason })
                        }
                        PgReserve::Unknown(sku) => {
                            let reason = RejectReason::UnknownSku;
                            store::reject_order(tx, ledger, reason.as_str(), &sku).await?;
                            ("postgres", Reserved::Rejected { sku, reason })
                        }
                    },
                    Claimed::Existing(state) => ("postgres", Reserved::Unchanged(state)),
                }
            }
            ReserveStep::Rejected { sku, reason } => {
                match store::claim_order_with(
                    tx,
                    holder,
                    OrderHoldState::Rejected,
                    Some(reason.as_str()),
                    Some(&sku),
                )
                .await?
                {
                    Claimed::New => ("redis", Reserved::Rejected { sku, reason }),
                    Claimed::Existing(state) => ("redis", Reserved::Unchanged(state)),
                }
            }
            ReserveStep::Closed => {
                store::claim_order(
                    tx,
                    holder,
                    OrderHoldState::Released,
                    Some("cancelled before placement"),
                )
                .await?;
                ("redis", Reserved::Unchanged(OrderHoldState::Released))
            }
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
        metrics::counter!("inventory_reservations_total", "path" => path, "outcome" => outcome)
            .increment(1);
        Ok((reserved, after))
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
                let lines =
                    store::close_holds(tx, ledger, OrderHoldState::Released, !redis).await?;
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
        match store::lock_order(tx, ledger).await? {
            Some(OrderHoldState::Reserved) => {
                let lines =
                    store::close_holds(tx, ledger, OrderHoldState::Committed, !redis).await?;
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
            Some(OrderHoldState::Committed) => Ok((
                Closed::Unchanged(OrderHoldState::Committed),
                AfterCommit::Nothing,
            )),
            Some(state) => Err(InventoryError::ReservationConflict {
                id,
                why: format!("cannot commit a reservation that is {state}"),
            }),
            None => Err(InventoryError::UnknownReservation(id)),
        }
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

    /// A reservation as stored, by ledger id.
    pub async fn reservation(&self, ledger: Uuid) -> Result<Option<StoredReservation>> {
        let mut conn = self.store.pool().acquire().await?;
        Ok(store::reservation(&mut conn, ledger).await?)
    }

    /// Runs one direct call's transaction (retried on conflicts) and tells
    /// Redis once it has committed.
    async fn direct<F, Fut>(&self, what: &str, work: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<AfterCommit>>,
    {
        let after = saga_shared::db::retry(what, work).await?;
        self.after_commit(after).await;
        Ok(())
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
        self.direct("ReserveStock", || async {
            let step = self.reserve_step(holder, lines.clone()).await?;
            let mut tx = self.store.pool().begin().await?;
            let (_, after) = self.apply_reserve(&mut tx, holder, step).await?;
            tx.commit().await?;
            Ok(after)
        })
        .await?;
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
        self.direct("ReleaseStock", || async {
            let mut tx = self.store.pool().begin().await?;
            let (_, after) = self.apply_release(&mut tx, holder, &[]).await?;
            tx.commit().await?;
            Ok(after)
        })
        .await?;
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
        self.direct("CommitStock", || async {
            let mut tx = self.store.pool().begin().await?;
            let (_, after) = self.apply_commit(&mut tx, holder).await?;
            tx.commit().await?;
            Ok(after)
        })
        .await?;
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

/// Whether a Redis counter agrees with a (possibly slightly old) Postgres
/// snapshot, allowing for holds in flight.
fn agrees(snap: &SkuSnapshot, view: &CounterView, grace: Duration, now_ms: i64) -> bool {
    let (Some(avail), Some(epoch)) = (view.avail, view.epoch) else {
        return false;
    };
    if epoch != snap.epoch {
        return false;
    }
    let grace_ms = grace.as_millis() as i64;
    for (order, qty) in &snap.reserved {
        if view.holds.get(&order.to_string()).map(|h| h.qty) != Some(*qty) {
            return false;
        }
    }
    for (order, hold) in &view.holds {
        let in_postgres = snap.reserved.iter().any(|(o, _)| o.to_string() == *order);
        let closed = snap.closed.iter().any(|o| o.to_string() == *order);
        if closed || (!in_postgres && now_ms - hold.granted_ms > grace_ms) {
            return false;
        }
    }
    let held: i64 = view.holds.values().map(|h| h.qty).sum();
    avail == snap.on_hand - snap.sold - held
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
