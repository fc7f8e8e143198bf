//! Products and their stock: the catalog entries and AdjustStock.

use saga_shared::telemetry::record_on_commit;
use sqlx::PgConnection;

use super::{Inventory, InventoryError, Result};
use crate::domain::{self, Product};
use crate::service::breaker::Path;
use crate::store;

impl Inventory {
    /// Creates or updates a catalog entry in the caller's transaction; once
    /// a new SKU has committed, [`Inventory::after_create`] builds its
    /// (empty) Redis counter (if Redis is down, the first reservation does).
    pub async fn upsert_product_in(
        &self,
        tx: &mut PgConnection,
        sku: &str,
        name: &str,
        unit_price_cents: i64,
    ) -> Result<(Product, bool)> {
        domain::validate_product(sku, name, unit_price_cents)?;
        Ok(store::upsert_product(tx, sku, name, unit_price_cents).await?)
    }

    /// After a new product committed: its Redis counter, built at once
    /// (reconciliation builds it otherwise).
    pub async fn after_create(&self, sku: &str) {
        if self.breaker.path() == Path::Redis
            && let Err(e) = self.rebuild(&[sku.to_owned()]).await
        {
            tracing::warn!(sku, error = %e, "new product's counter not built yet");
        }
    }

    /// These SKUs' products (those that exist), by SKU.
    pub async fn products(&self, skus: &[String]) -> Result<Vec<Product>> {
        Ok(self.store.products(skus).await?)
    }

    /// One page of products, by SKU, after `after` ("" for the first).
    pub async fn product_page(&self, after: &str, limit: i64) -> Result<Vec<Product>> {
        Ok(self.store.list(after, limit).await?)
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
    /// row lock). It moves the counter's epoch on: Redis cannot grant units
    /// removed before it is rebuilt, and its refusal of units added is not
    /// taken for current (if the rebuild after the commit never runs, the
    /// next use rebuilds it). Call [`Inventory::after_adjust`] once the
    /// transaction has committed. If it rolls back, Redis is as it was.
    pub async fn adjust_in(
        &self,
        tx: &mut PgConnection,
        sku: &str,
        delta: i64,
        expected_version: i64,
    ) -> Result<Product> {
        domain::validate_adjust(sku, delta, expected_version)?;
        let Some(product) = store::lock_product(tx, sku).await? else {
            return Err(InventoryError::UnknownSku(sku.to_owned()));
        };
        let on_hand = domain::adjust(&product, delta, expected_version)?;
        let updated = store::set_on_hand(tx, sku, on_hand).await?;
        let epoch = store::next_epoch(tx).await?;
        store::set_epoch(tx, sku, epoch).await?;
        record_on_commit(|| metrics::counter!("inventory_stock_adjustments_total").increment(1));
        Ok(updated)
    }

    /// Brings the Redis counter of `sku` up to an adjustment that committed.
    /// Best effort: a counter left behind is under an old epoch, so its next
    /// use finds it stale and rebuilds it.
    pub async fn after_adjust(&self, sku: &str) {
        if self.breaker.path() == Path::Postgres {
            return;
        }
        if let Err(e) = self.rebuild_or_fall_back(&[sku.to_owned()]).await {
            tracing::warn!(sku, error = %e, "counter not rebuilt after an adjustment");
        }
    }
}
