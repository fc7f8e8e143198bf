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
//!
//! The use-cases are grouped by job: [`catalog`] (products and stock
//! adjustments), [`reserve`] (holding stock), [`close`] (releasing and
//! selling it), [`direct`] (the direct reservation calls), [`reconcile`]
//! (Redis counters against Postgres), [`reconciler`] (the background task
//! that runs it), [`breaker`] (Redis or Postgres), [`repair`] (finishing
//! sagas whose events could not be applied), [`error`].

pub mod breaker;
mod catalog;
mod close;
mod direct;
mod error;
mod reconcile;
pub mod reconciler;
pub mod repair;
mod reserve;

use std::sync::Arc;
use std::time::Duration;

use crate::config::InventorySettings;
use crate::service::breaker::{Breaker, Path};
use crate::store::Store;
use crate::store::cache::{CacheError, StockCache};

pub use close::{AfterCommit, CloseAs, Closed};
pub use error::{InventoryError, Result};
pub use reconcile::{ReconcileReport, SkuFix};
pub use reserve::{RejectReason, ReserveStep, Reserved};

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

    /// Locks the products of `skus` in one order, first in a transaction
    /// (an event's or a batch's, a direct reservation's), so that no two of
    /// them deadlock on them.
    pub async fn lock_products(
        &self,
        tx: &mut sqlx::PgConnection,
        skus: &[String],
    ) -> sqlx::Result<()> {
        crate::store::lock_products(tx, skus).await
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
}
