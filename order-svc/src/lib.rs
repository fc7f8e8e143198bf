//! `order-svc`: orders and the saga that carries them.
//!
//! `PlaceOrder` stores the order PENDING and its `orders.placed` event in one
//! transaction. Inventory and reservation answer in parallel; when every hold
//! is in, the order is RESERVED and owes `orders.reserved` (the amount, from
//! the prices inventory held at); payment answers; the order ends CONFIRMED
//! (`orders.confirmed`) or CANCELLED with a reason (`orders.cancelled`, which
//! every participant compensates). Orders left open past their deadline are
//! cancelled (`timeout`).
//!
//! Layout, the same in every service: [`domain`] (the state machine, no
//! I/O), [`store`] (SQL), [`service`] (the use-cases, which [`events`] and
//! [`grpc`] call; it asks inventory and reservation whether SKUs and slots
//! exist), [`config`].

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use saga_shared::proto::order::v1::order_service_server::OrderServiceServer;
use saga_shared::runtime::{App, Platform, PlatformError};
use saga_shared::service::Service;
use sqlx::migrate::Migrator;

pub use config::OrderConfig;

pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The order service: [`Service`] connects, builds and runs it.
pub struct OrderSvc;

impl Service for OrderSvc {
    type Config = OrderConfig;

    const MIGRATIONS: &'static Migrator = &MIGRATIONS;

    /// The service on a connected platform: its consumers, background tasks
    /// and gRPC routes.
    async fn assemble(mut platform: Platform, config: OrderConfig) -> Result<App, PlatformError> {
        let orders = orders(
            &config,
            platform.pool.clone(),
            platform.outbox.clone(),
            platform.caller.clone(),
            platform.client_tls.as_ref(),
            platform.stopping(),
        )?;
        let handler = events::ParticipantEvents {
            orders: orders.clone(),
        };
        platform.consume(events::INPUT, handler).await?;
        let sweeper = orders.clone();
        platform.spawn_background(move |stop| async move { sweeper.sweep_deadlines(stop).await });
        orders.count_open_orders_now().await;
        let counter = orders.clone();
        platform.spawn_background(move |stop| async move { counter.count_open_orders(stop).await });
        platform.serve(OrderServiceServer::new(grpc::OrderGrpc { orders }))
    }
}

/// The order use-cases over a migrated pool (also what `sagactl replay`
/// runs events through).
pub fn orders(
    config: &OrderConfig,
    pool: sqlx::PgPool,
    outbox: saga_shared::bus::Outbox,
    caller: saga_shared::auth::WithToken,
    tls: Option<&tonic::transport::ClientTlsConfig>,
    stopping: tokio_util::sync::CancellationToken,
) -> Result<Arc<service::Orders>, PlatformError> {
    let catalog = service::Catalog::new(
        &config.order.inventory_url,
        &config.order.reservation_url,
        Duration::from_secs(config.order.catalog_cache_secs),
        caller,
        tls,
    )
    .map_err(|e| {
        PlatformError::Config(saga_shared::config::ConfigError::Invalid {
            field: "order".into(),
            message: e.to_string(),
        })
    })?;
    Ok(Arc::new(service::Orders::new(
        store::Store { pool },
        outbox,
        catalog,
        config.order.clone(),
        stopping,
    )))
}
