//! `payment-svc`: customer wallets and the one payment per order.
//!
//! A charge is one conditional update (`balance >= amount`), so concurrent
//! charges cannot overspend; a unique payment per order and partial unique
//! indexes on the ledger make double charges and double refunds impossible;
//! a CHECK keeps every wallet conserved. The card gateway is simulated
//! (decline rate, latency, seed).
//!
//! Layout, the same in every service: [`domain`] (rules, no I/O),
//! [`store`] (SQL), [`service`] (the use-cases, which [`events`] and
//! [`grpc`] call; [`service::gateway`] the simulated card gateway,
//! [`service::repair`] its part in the repair loop), [`config`].

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod service;
pub mod store;

use saga_shared::proto::payment::v1::payment_service_server::PaymentServiceServer;
use saga_shared::runtime::{App, Platform, PlatformError};
use saga_shared::service::Service;
use sqlx::migrate::Migrator;

pub use config::PaymentConfig;

pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The payment service: [`Service`] connects, builds and runs it.
pub struct PaymentSvc;

impl Service for PaymentSvc {
    type Config = PaymentConfig;

    const MIGRATIONS: &'static Migrator = &MIGRATIONS;

    /// The service on a connected platform: its consumers, background tasks
    /// and gRPC routes.
    async fn assemble(mut platform: Platform, config: PaymentConfig) -> Result<App, PlatformError> {
        let payments = payments(&config, platform.pool.clone(), platform.outbox.clone());
        let handler = events::OrderEvents {
            payments: payments.clone(),
        };
        platform.consume(events::INPUT, handler).await?;
        platform.repair(
            service::repair::CaptureRepair::new(payments.clone()),
            &config.repair,
        )?;
        platform.serve(PaymentServiceServer::new(grpc::PaymentGrpc { payments }))
    }
}

/// The payment use-cases over a migrated pool (also what `sagactl replay`
/// runs events through).
pub fn payments(
    config: &PaymentConfig,
    pool: sqlx::PgPool,
    outbox: saga_shared::bus::Outbox,
) -> service::Payments {
    service::Payments::new(
        store::Store { pool },
        service::Gateway::new(config.gateway.clone()),
        outbox,
    )
}
