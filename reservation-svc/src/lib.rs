//! `reservation-svc`: delivery slots with a capacity, and the places orders
//! hold in them.
//!
//! Booking takes a Redis lock per slot to keep contenders off the database;
//! correctness never depends on it: Postgres takes the place with a
//! conditional update and a CHECK keeps `held + confirmed <= capacity`.
//!
//! Layout: [`domain`], [`store`] (SQL), [`lock`] (Redis), [`events`],
//! [`grpc`], [`config`].

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod lock;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use saga_shared::bus::StreamKind;
use saga_shared::proto::reservation::v1::reservation_service_server::ReservationServiceServer;
use saga_shared::runtime::{App, Platform, PlatformError};
use sqlx::migrate::Migrator;
use tonic::server::NamedService;

pub use config::ReservationConfig;

pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Connects, migrates and binds; the returned app knows its addresses.
pub async fn build(config: ReservationConfig) -> Result<App, PlatformError> {
    let mut platform = Platform::connect(config.platform(), &MIGRATIONS).await?;
    let (redis, _) = platform.connect_redis(&config.redis).await?;
    let locks = lock::SlotLocks::new(
        redis,
        &config.namespace,
        Duration::from_millis(config.reservation.lock_ttl_ms),
        Duration::from_millis(config.reservation.lock_wait_ms),
    );
    platform
        .consume(
            StreamKind::Orders,
            Arc::new(events::OrderEvents::new(locks)),
        )
        .await?;
    let store = store::Store::new(platform.pool.clone());
    let routes = tonic::service::Routes::new(ReservationServiceServer::new(
        grpc::ReservationGrpc::new(store),
    ));
    platform.into_app(
        routes,
        &[ReservationServiceServer::<grpc::ReservationGrpc>::NAME],
    )
}

/// Builds and runs the service until `shutdown` resolves.
pub async fn run(
    config: ReservationConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PlatformError> {
    build(config).await?.run(shutdown).await
}
