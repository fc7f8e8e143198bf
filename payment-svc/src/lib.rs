//! `payment-svc`: customer wallets and the one payment per order.
//!
//! A charge is one conditional update (`balance >= amount`), so concurrent
//! charges cannot overspend; a unique payment per order and partial unique
//! indexes on the ledger make double charges and double refunds impossible;
//! a CHECK keeps every wallet conserved. The card gateway is simulated
//! (decline rate, latency, seed).
//!
//! Layout: [`domain`] (rules, no I/O), [`store`] (SQL), [`gateway`]
//! (simulated), [`service`] (the use-cases, which [`events`], [`grpc`] and
//! [`repair`] call), [`config`].

pub mod config;
pub mod domain;
pub mod events;
pub mod gateway;
pub mod grpc;
pub mod repair;
pub mod service;
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
    let platform = connect(&config).await?;
    assemble(platform, config).await
}

/// The first half of [`build`]: Postgres (migrated), NATS (streams) and the
/// bound listeners, whose addresses other services may need first.
pub async fn connect(config: &PaymentConfig) -> Result<Platform, PlatformError> {
    Platform::connect(config.platform(), &MIGRATIONS).await
}

/// The second half of [`build`]: the service on a connected platform.
pub async fn assemble(mut platform: Platform, config: PaymentConfig) -> Result<App, PlatformError> {
    let payments = service::Payments::new(
        store::Store::new(platform.pool.clone()),
        gateway::Gateway::new(config.gateway.clone()),
        platform.outbox.clone(),
    );
    platform
        .consume(
            StreamKind::Orders,
            Arc::new(events::OrderEvents::new(payments.clone())),
        )
        .await?;
    platform.repair(repair::CaptureRepair::new(payments.clone()), &config.repair)?;
    let routes =
        tonic::service::Routes::new(PaymentServiceServer::new(grpc::PaymentGrpc::new(payments)));
    platform.into_app(routes, &[PaymentServiceServer::<grpc::PaymentGrpc>::NAME])
}

/// Builds and runs the service until `shutdown` resolves.
pub async fn run(
    config: PaymentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PlatformError> {
    build(config).await?.run(shutdown).await
}
