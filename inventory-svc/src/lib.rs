//! `inventory-svc`: the catalog (SKU, name, unit price) and its stock.
//!
//! Postgres is the source of truth (stock per SKU and a ledger of holds per
//! order and SKU); reservations for orders go through a Redis Lua script that
//! holds every line or none, idempotently per order, on a counter derived
//! from Postgres and fenced by an epoch.
//!
//! When Redis fails, a circuit breaker ([`service::breaker`]) sends
//! reservations through Postgres (`SELECT ... FOR UPDATE` in SKU order); the
//! [`service::reconciler`] brings Redis back once its counters are rebuilt,
//! and otherwise keeps comparing them with Postgres in the background.
//!
//! Layout, the same in every service: [`domain`] (rules, no I/O), [`store`]
//! (SQL; [`store::cache`] the Redis counters and scripts), [`service`] (the
//! use-cases), [`events`] (JetStream handlers), [`grpc`] (the API),
//! [`config`].

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use saga_shared::proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use saga_shared::runtime::{App, Platform, PlatformError};
use saga_shared::service::Service;
use sqlx::migrate::Migrator;

pub use config::InventoryConfig;

pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The inventory service: [`Service`] connects, builds and runs it.
pub struct InventorySvc;

impl Service for InventorySvc {
    type Config = InventoryConfig;

    const MIGRATIONS: &'static Migrator = &MIGRATIONS;

    /// The service on a connected platform: its consumers, background tasks
    /// and gRPC routes.
    async fn assemble(
        mut platform: Platform,
        config: InventoryConfig,
    ) -> Result<App, PlatformError> {
        let (redis, connected) = platform.connect_redis(&config.redis).await?;
        let inventory = inventory(&config, platform.pool.clone(), redis, connected);
        let status = inventory.clone();
        platform.readiness.add_optional(
            "reserve_path",
            Arc::new(move || {
                let s = status.breaker().status();
                Box::pin(async move {
                    match s.open_for {
                        None => Ok("redis (fast path)".to_owned()),
                        Some(_) if s.pinned => Ok("postgres (pinned by configuration)".to_owned()),
                        Some(d) => Err(format!(
                            "postgres: Redis breaker open for {:.1}s ({})",
                            d.as_secs_f64(),
                            s.last_error
                        )),
                    }
                })
            }),
        );
        let handler = events::OrderEvents {
            inventory: inventory.clone(),
        };
        platform.consume(events::INPUT, handler).await?;
        let background = inventory.clone();
        platform.spawn_background(move |stop| service::reconciler::run(background, stop));
        platform.repair(
            service::repair::SagaRepair::new(inventory.clone()),
            &config.repair,
        )?;
        platform.serve(InventoryServiceServer::new(grpc::InventoryGrpc {
            inventory,
        }))
    }
}

/// The inventory operations over a migrated pool and a Redis pool (also
/// what `sagactl inventory reconcile` uses). `redis_up`: whether Redis
/// answered; if not, reservations start on Postgres.
pub fn inventory(
    config: &InventoryConfig,
    pool: sqlx::PgPool,
    redis: fred::clients::Pool,
    redis_up: bool,
) -> service::Inventory {
    let pinned = config.inventory.reserve_path == config::ReservePath::Postgres;
    let breaker = Arc::new(service::breaker::Breaker::new(
        config.inventory.breaker_threshold,
        pinned,
    ));
    if !redis_up {
        breaker.trip("Redis did not answer at start");
    }
    let cache = store::cache::StockCache::new(
        redis,
        &config.namespace,
        Duration::from_millis(config.redis.command_timeout_ms),
        Duration::from_secs(config.inventory.tombstone_ttl_secs),
    );
    service::Inventory::new(
        store::Store { pool },
        cache,
        config.inventory.clone(),
        breaker,
    )
}
