//! `payment-svc`: customer wallets and the one payment per order.
//!
//! A charge is one conditional update (`balance >= amount`), so concurrent
//! charges cannot overspend; a unique payment per order and partial unique
//! indexes on the ledger make double charges and double refunds impossible;
//! a CHECK keeps every wallet conserved. The card gateway is simulated
//! (decline rate, latency, seed).
//!
//! Layout: [`domain`], [`store`] (SQL), [`gateway`], [`events`], [`grpc`],
//! [`config`].

pub mod config;
pub mod domain;
pub mod events;
pub mod gateway;
pub mod grpc;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use saga_shared::bus::StreamKind;
use saga_shared::proto::payment::v1::payment_service_server::PaymentServiceServer;
use saga_shared::runtime::{App, Platform, PlatformError};
use sqlx::migrate::Migrator;
use tonic::server::NamedService;

pub use config::PaymentConfig;

pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Connects, migrates and binds; the returned app knows its addresses.
pub async fn build(config: PaymentConfig) -> Result<App, PlatformError> {
    let mut platform = Platform::connect(config.platform(), &MIGRATIONS).await?;
    let gateway = gateway::Gateway::new(config.gateway.clone());
    platform
        .consume(
            StreamKind::Orders,
            Arc::new(events::OrderEvents::new(gateway)),
        )
        .await?;
    let store = store::Store::new(platform.pool.clone());
    let routes =
        tonic::service::Routes::new(PaymentServiceServer::new(grpc::PaymentGrpc::new(store)));
    platform.into_app(routes, &[PaymentServiceServer::<grpc::PaymentGrpc>::NAME])
}

/// Builds and runs the service until `shutdown` resolves.
pub async fn run(
    config: PaymentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PlatformError> {
    build(config).await?.run(shutdown).await
}
