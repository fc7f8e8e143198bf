//! The inventory application: what the gRPC API and the event handlers do,
//! in terms of the store (Postgres), the stock cache (Redis) and the breaker
//! that chooses between them.
//!
//! Holding stock is two steps, so that no database transaction waits on
//! Redis: [`Inventory::reserve_step`] (Redis, or the decision to use
//! Postgres) and [`Inventory::apply_reserve`] (in the caller's transaction,
//! which for events also holds the inbox row). Releasing and committing are
//! alike: [`Inventory::close_step`], then `apply_release` / `apply_commit`.

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
use crate::domain::{self, AdjustError, Line, OrderHoldState, Product};
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
    #[error(
        "sku {sku:?}: removing these units would leave {avail} available; they are held by orders in flight"
    )]
    Short { sku: String, avail: i64 },
    #[error("reservation_id: no reservation {0}")]
    UnknownReservation(Uuid),
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
    /// row lock). The Redis counter is rebuilt under that lock; if Redis is
    /// not in use, the counter's epoch moves on instead (rebuilt before its
    /// next use).
    pub async fn adjust_in(
        &self,
        tx: &mut PgConnection,
        sku: &str,
        delta: i64,
        expected_version: i64,
    ) -> Result<Product> {
        domain::validate_adjust(sku, delta, expected_version)?;
        let (products, snapshots) =
            store::snapshots(tx, &[sku.to_owned()], self.closed_window(), true).await?;
        let (Some(product), Some(mut snapshot)) =
            (products.into_iter().next(), snapshots.into_iter().next())
        else {
            return Err(InventoryError::UnknownSku(sku.to_owned()));
        };
        let on_hand = domain::adjust(&product, delta, expected_version)?;
        let updated = store::set_on_hand(tx, sku, on_hand).await?;
        snapshot.on_hand = on_hand;
        let grace = self.grace();
        match self
            .via_redis(self.cache.rebuild(&snapshot, Some(grace), delta < 0))
            .await?
        {
            Some(Rebuilt::Short { avail }) => {
                return Err(InventoryError::Short {
                    sku: sku.to_owned(),
                    avail,
                });
            }
            Some(Rebuilt::Done { epoch_moved, .. }) => {
                if epoch_moved {
                    store::set_epoch(tx, sku, snapshot.epoch + 1).await?;
                }
            }
            None => store::set_epoch(tx, sku, snapshot.epoch + 1).await?,
        }
        metrics::counter!("inventory_stock_adjustments_total").increment(1);
        Ok(updated)
    }

    /// Rebuilds the Redis counters of `skus` from Postgres (see
    /// `lua/rebuild.lua`). The rows stay locked while Redis is updated, so no
    /// hold can be recorded against a counter that is being replaced.
    pub async fn rebuild(&self, skus: &[String]) -> Result<Vec<(String, Rebuilt)>> {
        let mut tx = self.store.pool().begin().await?;
        let (_, snapshots) = store::snapshots(&mut tx, skus, self.closed_window(), true).await?;
        let mut out = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots {
            let rebuilt = self
                .cache
                .rebuild(&snapshot, Some(self.grace()), false)
                .await?;
            if let Rebuilt::Done {
                epoch_moved: true, ..
            } = rebuilt
            {
                store::set_epoch(&mut tx, &snapshot.sku, snapshot.epoch + 1).await?;
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
            for (sku, rebuilt) in self.rebuild(&suspects).await? {
                let Rebuilt::Done {
                    avail,
                    removed,
                    added,
                    previous,
                    orphans,
                    epoch_moved,
                } = rebuilt
                else {
                    continue;
                };
                let fix = SkuFix {
                    sku,
                    before: previous,
                    after: avail,
                    closed_dropped: removed - orphans,
                    orphans_released: orphans,
                    restored: added,
                    epoch_moved,
                };
                if fix.before == Some(fix.after) && removed == 0 && added == 0 && !epoch_moved {
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
    /// `order` in Redis, all or none; or says to use Postgres. A counter that
    /// is missing is rebuilt first; a grant from a counter whose epoch is no
    /// longer Postgres's is given back and redone after a rebuild.
    pub async fn reserve_step(&self, order: Uuid, lines: Vec<Line>) -> Result<ReserveStep> {
        if self.store.order_state(order).await?.is_some() {
            return Ok(ReserveStep::Decided);
        }
        const ATTEMPTS: usize = 4;
        for _ in 0..ATTEMPTS {
            let Some(answer) = self.via_redis(self.cache.reserve(order, &lines)).await? else {
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
                        .via_redis(self.cache.revoke(order, &all))
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

    /// The second half of holding an order, in the caller's transaction.
    pub async fn apply_reserve(
        &self,
        tx: &mut PgConnection,
        order: Uuid,
        step: ReserveStep,
    ) -> Result<Reserved> {
        let (path, reserved) = match step {
            ReserveStep::Granted { lines, epochs } => {
                match store::claim_order(tx, order, OrderHoldState::Reserved, None).await? {
                    Claimed::New => {
                        let held = store::record_holds(tx, order, &lines, &epochs).await?;
                        ("redis", Reserved::Held(held))
                    }
                    // Decided meanwhile (a cancellation overtook us): the
                    // Redis hold is an orphan that reconciliation gives back.
                    Claimed::Existing(state) => ("redis", Reserved::Unchanged(state)),
                }
            }
            ReserveStep::ViaPostgres { lines } => {
                match store::claim_order(tx, order, OrderHoldState::Reserved, None).await? {
                    Claimed::New => match store::reserve_in_postgres(tx, order, &lines).await? {
                        PgReserve::Held(held) => ("postgres", Reserved::Held(held)),
                        PgReserve::Short(sku) => {
                            let reason = RejectReason::OutOfStock;
                            store::reject_order(tx, order, reason.as_str(), &sku).await?;
                            ("postgres", Reserved::Rejected { sku, reason })
                        }
                        PgReserve::Unknown(sku) => {
                            let reason = RejectReason::UnknownSku;
                            store::reject_order(tx, order, reason.as_str(), &sku).await?;
                            ("postgres", Reserved::Rejected { sku, reason })
                        }
                    },
                    Claimed::Existing(state) => ("postgres", Reserved::Unchanged(state)),
                }
            }
            ReserveStep::Rejected { sku, reason } => {
                match store::claim_order_with(
                    tx,
                    order,
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
                    order,
                    OrderHoldState::Released,
                    Some("cancelled before placement"),
                )
                .await?;
                ("redis", Reserved::Unchanged(OrderHoldState::Released))
            }
            ReserveStep::Decided => {
                let state = store::lock_order(tx, order)
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
        Ok(reserved)
    }

    /// The Redis half of releasing (`commit` false) or committing an
    /// order's holds. Returns whether Redis was told; if not, the
    /// transaction moves the counters' epochs on.
    pub async fn close_step(&self, order: Uuid, skus: &[&str], commit: bool) -> Result<bool> {
        let call = async {
            if commit {
                self.cache.commit(order, skus).await
            } else {
                self.cache.release(order, skus).await
            }
        };
        Ok(self.via_redis(call).await?.is_some())
    }

    /// Releases an order's holds in the caller's transaction, or leaves a
    /// tombstone if it was never reserved here.
    pub async fn apply_release(
        &self,
        tx: &mut PgConnection,
        order: Uuid,
        redis_told: bool,
    ) -> Result<Closed> {
        match store::claim_order(
            tx,
            order,
            OrderHoldState::Released,
            Some("released before it was reserved"),
        )
        .await?
        {
            Claimed::New => Ok(Closed::Tombstone),
            Claimed::Existing(OrderHoldState::Reserved) => Ok(Closed::Done(
                store::close_holds(tx, order, OrderHoldState::Released, !redis_told).await?,
            )),
            Claimed::Existing(state) => Ok(Closed::Unchanged(state)),
        }
    }

    /// Turns an order's holds into sales in the caller's transaction.
    pub async fn apply_commit(
        &self,
        tx: &mut PgConnection,
        order: Uuid,
        redis_told: bool,
    ) -> Result<Closed> {
        match store::lock_order(tx, order).await? {
            Some(OrderHoldState::Reserved) => Ok(Closed::Done(
                store::close_holds(tx, order, OrderHoldState::Committed, !redis_told).await?,
            )),
            Some(OrderHoldState::Committed) => Ok(Closed::Unchanged(OrderHoldState::Committed)),
            Some(state) => Err(InventoryError::ReservationConflict {
                id: order,
                why: format!("cannot commit a reservation that is {state}"),
            }),
            None => Err(InventoryError::UnknownReservation(order)),
        }
    }

    /// A reservation as stored.
    pub async fn reservation(&self, id: Uuid) -> Result<Option<StoredReservation>> {
        let mut conn = self.store.pool().acquire().await?;
        Ok(store::reservation(&mut conn, id).await?)
    }

    /// ReserveStock: hold `lines` under `id`, or answer the decision taken
    /// for `id` before (the same lines, or a conflict).
    pub async fn reserve_direct(&self, id: Uuid, lines: Vec<Line>) -> Result<StoredReservation> {
        if let Some(existing) = self.reservation(id).await? {
            return same_lines(id, existing, &lines);
        }
        let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
        let known = self.store.products(&skus).await?;
        if let Some(unknown) = lines.iter().find(|l| !known.iter().any(|p| p.sku == l.sku)) {
            return Err(InventoryError::UnknownSku(unknown.sku.clone()));
        }
        saga_shared::db::retry("ReserveStock", || async {
            let step = self.reserve_step(id, lines.clone()).await?;
            let mut tx = self.store.pool().begin().await?;
            self.apply_reserve(&mut tx, id, step).await?;
            tx.commit().await?;
            Ok::<_, InventoryError>(())
        })
        .await?;
        let stored = self
            .reservation(id)
            .await?
            .ok_or(InventoryError::UnknownReservation(id))?;
        same_lines(id, stored, &lines)
    }

    /// ReleaseStock (a tombstone if `id` was never reserved).
    pub async fn release_direct(&self, id: Uuid) -> Result<StoredReservation> {
        let held = self
            .reservation(id)
            .await?
            .map(|r| r.lines)
            .unwrap_or_default();
        let skus: Vec<&str> = held.iter().map(|h| h.sku.as_str()).collect();
        saga_shared::db::retry("ReleaseStock", || async {
            let told = self.close_step(id, &skus, false).await?;
            let mut tx = self.store.pool().begin().await?;
            self.apply_release(&mut tx, id, told).await?;
            tx.commit().await?;
            Ok::<_, InventoryError>(())
        })
        .await?;
        self.reservation(id)
            .await?
            .ok_or(InventoryError::UnknownReservation(id))
    }

    /// CommitStock.
    pub async fn commit_direct(&self, id: Uuid) -> Result<StoredReservation> {
        let Some(existing) = self.reservation(id).await? else {
            return Err(InventoryError::UnknownReservation(id));
        };
        let skus: Vec<&str> = existing.lines.iter().map(|h| h.sku.as_str()).collect();
        saga_shared::db::retry("CommitStock", || async {
            let told = self.close_step(id, &skus, true).await?;
            let mut tx = self.store.pool().begin().await?;
            self.apply_commit(&mut tx, id, told).await?;
            tx.commit().await?;
            Ok::<_, InventoryError>(())
        })
        .await?;
        self.reservation(id)
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
    counter("epoch_moved", u64::from(fix.epoch_moved));
    tracing::info!(
        sku = %fix.sku,
        before = ?fix.before,
        after = fix.after,
        orphans = fix.orphans_released,
        restored = fix.restored,
        closed = fix.closed_dropped,
        epoch_moved = fix.epoch_moved,
        "reconciliation fixed a counter"
    );
}
