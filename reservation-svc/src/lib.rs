//! `reservation-svc`: delivery slots with a capacity, and the places orders
//! hold in them.
//!
//! Booking takes a Redis lock per slot to keep contenders off the database;
//! correctness never depends on it: Postgres takes the place with a
//! conditional update and a CHECK keeps `held + confirmed <= capacity`.
//!
//! Layout, the same in every service: [`domain`] (rules, no I/O),
//! [`store`] (SQL; [`store::lock`] the Redis slot locks), [`service`] (the
//! use-cases, which [`events`] and [`grpc`] call; [`service::repair`] its
//! part in the repair loop), [`config`].

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod service;
pub mod store;

use std::time::Duration;

use saga_shared::proto::reservation::v1::reservation_service_server::ReservationServiceServer;
use saga_shared::runtime::{App, Platform, PlatformError};
use saga_shared::service::Service;
use sqlx::migrate::Migrator;

pub use config::ReservationConfig;

pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The reservation service: [`Service`] connects, builds and runs it.
pub struct ReservationSvc;

impl Service for ReservationSvc {
    type Config = ReservationConfig;

    const MIGRATIONS: &'static Migrator = &MIGRATIONS;

    /// The service on a connected platform: its consumers, background tasks
    /// and gRPC routes.
    async fn assemble(
        mut platform: Platform,
        config: ReservationConfig,
    ) -> Result<App, PlatformError> {
        let (redis, _) = platform.connect_redis(&config.redis).await?;
        let reservations = reservations(&config, platform.pool.clone(), redis);
        let handler = events::OrderEvents {
            reservations: reservations.clone(),
            slot_locks: config.bus.batch_size <= 1,
        };
        platform.consume(events::INPUT, handler).await?;
        platform.repair(
            service::repair::BookingRepair::new(reservations.clone()),
            &config.repair,
        )?;
        platform.serve(ReservationServiceServer::new(grpc::ReservationGrpc {
            reservations,
        }))
    }
}

/// The reservation use-cases over a migrated pool and a Redis pool (also
/// what `sagactl replay` runs events through).
pub fn reservations(
    config: &ReservationConfig,
    pool: sqlx::PgPool,
    redis: fred::clients::Pool,
) -> service::Reservations {
    let locks = store::lock::SlotLocks::new(
        redis,
        &config.namespace,
        Duration::from_millis(config.reservation.lock_ttl_ms),
        Duration::from_millis(config.reservation.lock_wait_ms),
        Duration::from_millis(config.redis.command_timeout_ms),
    );
    service::Reservations::new(store::Store { pool }, locks)
}
