//! Looks straight into a system's stores and bus, past the APIs: backlogs,
//! Redis counters, the auditor's verdict, readiness.

use std::time::Duration;

use async_nats::jetstream;
use saga_shared::bus::StreamKind;

use crate::{TestSystem, http_get};

/// The durable consumers of a system: (stream, consumer).
pub const CONSUMERS: [(StreamKind, &str); 6] = [
    (StreamKind::Orders, "inventory-svc"),
    (StreamKind::Orders, "reservation-svc"),
    (StreamKind::Orders, "payment-svc"),
    (StreamKind::Inventory, "order-svc"),
    (StreamKind::Reservations, "order-svc"),
    (StreamKind::Payments, "order-svc"),
];

impl TestSystem {
    /// Unpublished outbox rows across the four services.
    pub async fn outbox_backlog(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        for db in &self.service_dbs {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(db)
                    .await?;
            total += n;
        }
        Ok(total)
    }

    /// Messages not yet delivered or not yet acked, across the consumers;
    /// `None` while a stream or consumer does not exist yet (the services
    /// create them as they start).
    pub async fn consumer_backlog(&self) -> anyhow::Result<Option<u64>> {
        let ns = self.namespace();
        let mut total = 0;
        for (kind, durable) in CONSUMERS {
            let Ok(stream) = self.js.get_stream(ns.stream(kind)).await else {
                return Ok(None);
            };
            let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>(durable)
                .await
            else {
                return Ok(None);
            };
            let info = consumer.info().await?;
            total += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(Some(total))
    }

    /// The inventory operations on this system's Postgres and Redis, with
    /// `tweak`ed settings (to run a reconciliation pass by hand, say).
    pub async fn inventory_with(
        &self,
        tweak: impl FnOnce(&mut inventory_svc::config::InventorySettings),
    ) -> anyhow::Result<inventory_svc::service::Inventory> {
        let mut cfg = self.config.inventory.clone();
        cfg.database.max_connections = 2;
        tweak(&mut cfg.inventory);
        let pool = saga_shared::db::connect(&cfg.database, &inventory_svc::MIGRATIONS).await?;
        Ok(inventory_svc::inventory(
            &cfg,
            pool,
            self.redis.clone(),
            true,
        ))
    }

    /// `/readyz` of inventory: (status code, body).
    pub async fn inventory_readiness(&self) -> anyhow::Result<(u16, String)> {
        http_get(self.inventory.admin, "/readyz").await
    }

    /// The Redis counter of a SKU.
    pub async fn redis_counter(
        &self,
        sku: &str,
    ) -> anyhow::Result<inventory_svc::store::cache::CounterView> {
        let cache = inventory_svc::store::cache::StockCache::new(
            self.redis.clone(),
            &self.ns,
            Duration::from_secs(2),
            Duration::from_secs(60),
        );
        Ok(cache.read(sku).await?)
    }

    /// Every invariant of DESIGN.md section 7, checked by the same auditor
    /// as `sagactl audit`, as a list of violations (empty: all hold). Call
    /// after [`Self::quiesce`].
    pub async fn violations(&self) -> anyhow::Result<Vec<String>> {
        let auditor = sagactl::audit::Auditor::with_redis(&self.config, self.redis.clone()).await?;
        let report = auditor.audit().await?;
        auditor.close().await;
        Ok(report.violations.iter().map(ToString::to_string).collect())
    }

    /// Messages in the namespace's event streams.
    pub async fn stream_messages(&self) -> anyhow::Result<u64> {
        let ns = self.namespace();
        let mut total = 0;
        for kind in StreamKind::ALL {
            let mut stream = self.js.get_stream(ns.stream(kind)).await?;
            total += stream.info().await?.state.messages;
        }
        Ok(total)
    }
}
