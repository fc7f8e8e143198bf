//! Settings of the order service. Environment prefix: `ORDER_SVC__`
//! (e.g. `ORDER_SVC__ORDER__DEADLINE_SECS=60`).

use saga_shared::config::{BusConfig, DatabaseConfig, ListenConfig, NatsConfig, TelemetryConfig};
use saga_shared::runtime::PlatformConfig;
use serde::{Deserialize, Serialize};

pub const SERVICE: &str = "order-svc";
pub const ENV_PREFIX: &str = "ORDER_SVC__";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderConfig {
    /// Prefix of stream names and subjects.
    pub namespace: String,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    /// gRPC listener (default 127.0.0.1:50051).
    pub grpc: ListenConfig,
    /// Admin HTTP listener (default 127.0.0.1:9091).
    pub admin: ListenConfig,
    pub bus: BusConfig,
    pub telemetry: TelemetryConfig,
    pub order: OrderSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderSettings {
    /// Most lines in one order.
    pub max_lines: usize,
    /// Most units of one SKU in one order.
    pub max_quantity: i64,
    /// An order still PENDING or RESERVED this long after it was placed is
    /// cancelled with reason `timeout`, in seconds.
    pub deadline_secs: u64,
    /// How often overdue orders are looked for, in milliseconds.
    pub sweep_interval_ms: u64,
    /// The inventory service, asked whether SKUs exist.
    pub inventory_url: String,
    /// The reservation service, asked whether slots exist.
    pub reservation_url: String,
    /// How long a SKU or slot seen to exist is remembered, in seconds.
    pub catalog_cache_secs: u64,
}

impl Default for OrderSettings {
    fn default() -> Self {
        Self {
            max_lines: 50,
            max_quantity: 10_000,
            deadline_secs: 300,
            sweep_interval_ms: 1_000,
            inventory_url: "http://127.0.0.1:50052".into(),
            reservation_url: "http://127.0.0.1:50054".into(),
            catalog_cache_secs: 60,
        }
    }
}

impl Default for OrderConfig {
    fn default() -> Self {
        Self {
            namespace: "saga".into(),
            database: DatabaseConfig::with_schema("orders"),
            nats: NatsConfig::default(),
            grpc: ListenConfig::on_port(50051),
            admin: ListenConfig::on_port(9091),
            bus: BusConfig::default(),
            telemetry: TelemetryConfig::default(),
            order: OrderSettings::default(),
        }
    }
}

impl OrderConfig {
    /// Defaults, then `file`, then `ORDER_SVC__*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, saga_shared::config::ConfigError> {
        saga_shared::config::load(ENV_PREFIX, file)
    }

    pub fn platform(&self) -> PlatformConfig<'_> {
        PlatformConfig {
            service: SERVICE,
            own_stream: saga_shared::bus::StreamKind::Orders,
            namespace: &self.namespace,
            database: &self.database,
            nats: &self.nats,
            bus: &self.bus,
            grpc: &self.grpc,
            admin: &self.admin,
        }
    }
}
