//! `reservation-svc`: delivery slots with a capacity, and the places orders
//! hold in them.
//!
//! Booking takes a Redis lock per slot to keep contenders off the database;
//! correctness never depends on it: Postgres takes the place with a
//! conditional update and a CHECK keeps `held + confirmed <= capacity`.
//!
//! Layout: [`domain`] (rules, no I/O), [`store`] (SQL), [`lock`] (Redis),
//! [`service`] (the use-cases, which [`events`], [`grpc`] and [`repair`]
//! call), [`config`].

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod lock;
pub mod repair;
pub mod service;
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
    let platform = connect(&config).await?;
    assemble(platform, config).await
}

/// The first half of [`build`]: Postgres (migrated), NATS (streams) and the
/// bound listeners, whose addresses other services may need first.
pub async fn connect(config: &ReservationConfig) -> Result<Platform, PlatformError> {
    Platform::connect(config.platform(), &MIGRATIONS).await
}

/// The second half of [`build`]: the service on a connected platform.
pub async fn assemble(
    mut platform: Platform,
    config: ReservationConfig,
) -> Result<App, PlatformError> {
    let (redis, _) = platform.connect_redis(&config.redis).await?;
    let locks = lock::SlotLocks::new(
        redis,
        &config.namespace,
        Duration::from_millis(config.reservation.lock_ttl_ms),
        Duration::from_millis(config.reservation.lock_wait_ms),
        Duration::from_millis(config.redis.command_timeout_ms),
    );
    let reservations = service::Reservations::new(store::Store::new(platform.pool.clone()), locks);
    platform
        .consume(
            StreamKind::Orders,
            Arc::new(events::OrderEvents::new(reservations.clone())),
        )
        .await?;
    platform.repair(
        repair::BookingRepair::new(reservations.clone()),
        &config.repair,
    )?;
    let routes = tonic::service::Routes::new(ReservationServiceServer::new(
        grpc::ReservationGrpc::new(reservations),
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
