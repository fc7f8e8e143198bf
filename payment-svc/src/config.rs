//! Settings of the payment service. Environment prefix: `PAYMENT_SVC__`
//! (e.g. `PAYMENT_SVC__GATEWAY__DECLINE_RATE=0.1`).

use saga_shared::config::{
    BusConfig, DatabaseConfig, ListenConfig, NatsConfig, RepairConfig, TelemetryConfig,
};
use saga_shared::runtime::PlatformConfig;
use serde::{Deserialize, Serialize};

pub const SERVICE: &str = "payment-svc";
pub const ENV_PREFIX: &str = "PAYMENT_SVC__";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentConfig {
    /// Prefix of stream names and subjects.
    pub namespace: String,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    /// gRPC listener (default 127.0.0.1:50053).
    pub grpc: ListenConfig,
    /// Admin HTTP listener (default 127.0.0.1:9093).
    pub admin: ListenConfig,
    pub bus: BusConfig,
    pub telemetry: TelemetryConfig,
    pub gateway: GatewayConfig,
    /// Finishing what sagas that ended left open here, when their events
    /// could not be applied.
    pub repair: RepairConfig,
}

/// The simulated card gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Fraction of authorizations declined, 0.0..=1.0.
    pub decline_rate: f64,
    /// Time an authorization takes, in milliseconds.
    pub latency_ms: u64,
    /// Up to this much more, in milliseconds (drawn per order).
    pub jitter_ms: u64,
    /// Seed of the decisions: the same seed and order id give the same answer.
    pub seed: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            decline_rate: 0.0,
            latency_ms: 0,
            jitter_ms: 0,
            seed: 0,
        }
    }
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            namespace: "saga".into(),
            database: DatabaseConfig::with_schema("payment"),
            nats: NatsConfig::default(),
            grpc: ListenConfig::on_port(50053),
            admin: ListenConfig::on_port(9093),
            bus: BusConfig::default(),
            telemetry: TelemetryConfig::default(),
            gateway: GatewayConfig::default(),
            repair: RepairConfig::default(),
        }
    }
}

impl PaymentConfig {
    /// Defaults, then `file`, then `PAYMENT_SVC__*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, saga_shared::config::ConfigError> {
        let config: Self = saga_shared::config::load(ENV_PREFIX, file)?;
        if !(0.0..=1.0).contains(&config.gateway.decline_rate) {
            return Err(saga_shared::config::ConfigError::Invalid {
                field: "gateway.decline_rate".into(),
                message: format!(
                    "must be within 0.0..=1.0, got {}",
                    config.gateway.decline_rate
                ),
            });
        }
        Ok(config)
    }

    pub fn platform(&self) -> PlatformConfig<'_> {
        PlatformConfig {
            service: SERVICE,
            own_stream: saga_shared::bus::StreamKind::Payments,
            namespace: &self.namespace,
            database: &self.database,
            nats: &self.nats,
            bus: &self.bus,
            grpc: &self.grpc,
            admin: &self.admin,
        }
    }
}
