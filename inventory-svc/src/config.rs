//! Settings of the inventory service. Environment prefix: `INVENTORY_SVC__`
//! (e.g. `INVENTORY_SVC__REDIS__URL`).

use saga_shared::config::{
    BusConfig, DatabaseConfig, ListenConfig, NatsConfig, RedisConfig, RepairConfig, TelemetryConfig,
};
use saga_shared::runtime::PlatformConfig;
use serde::{Deserialize, Serialize};

pub const SERVICE: &str = "inventory-svc";
pub const ENV_PREFIX: &str = "INVENTORY_SVC__";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryConfig {
    /// Prefix of stream names, subjects and Redis keys.
    pub namespace: String,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    pub redis: RedisConfig,
    /// gRPC listener (default 127.0.0.1:50052).
    pub grpc: ListenConfig,
    /// Admin HTTP listener (default 127.0.0.1:9092).
    pub admin: ListenConfig,
    pub bus: BusConfig,
    pub telemetry: TelemetryConfig,
    pub inventory: InventorySettings,
    /// Finishing the stock of sagas that ended while their events could not
    /// be applied.
    pub repair: RepairConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventorySettings {
    /// Most lines one order may hold.
    pub max_lines: usize,
    /// How long Redis remembers that an order's holds were released or
    /// committed (so a late placement is refused), in seconds.
    pub tombstone_ttl_secs: u64,
    /// A hold that Redis granted but Postgres never recorded is an orphan
    /// once older than this, in seconds; a counter rebuild drops it.
    pub orphan_grace_secs: u64,
    /// How far back a counter rebuild looks for holds that Postgres released
    /// or committed, in seconds.
    pub closed_window_secs: u64,
    /// `auto`: Redis, falling back to Postgres when it fails (circuit
    /// breaker); `postgres`: always Postgres (e.g. during Redis maintenance).
    pub reserve_path: ReservePath,
    /// Redis failures in a row that switch reservations to Postgres.
    pub breaker_threshold: u32,
    /// While on Postgres, how often Redis is probed, in milliseconds.
    pub probe_interval_ms: u64,
    /// How often the Redis counters are compared with Postgres and fixed, in
    /// milliseconds (0: never, except when returning to Redis).
    pub reconcile_interval_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservePath {
    Auto,
    Postgres,
}

impl Default for InventorySettings {
    fn default() -> Self {
        Self {
            max_lines: 100,
            tombstone_ttl_secs: 24 * 3600,
            orphan_grace_secs: 120,
            closed_window_secs: 3600,
            reserve_path: ReservePath::Auto,
            breaker_threshold: 3,
            probe_interval_ms: 500,
            reconcile_interval_ms: 30_000,
        }
    }
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            namespace: "saga".into(),
            database: DatabaseConfig::with_schema("inventory"),
            nats: NatsConfig::default(),
            redis: RedisConfig::default(),
            grpc: ListenConfig::on_port(50052),
            admin: ListenConfig::on_port(9092),
            bus: BusConfig::default(),
            telemetry: TelemetryConfig::default(),
            inventory: InventorySettings::default(),
            repair: RepairConfig::default(),
        }
    }
}

impl InventoryConfig {
    /// Defaults, then `file`, then `INVENTORY_SVC__*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, saga_shared::config::ConfigError> {
        saga_shared::config::load(ENV_PREFIX, file)
    }

    pub fn platform(&self) -> PlatformConfig<'_> {
        PlatformConfig {
            service: SERVICE,
            own_stream: saga_shared::bus::StreamKind::Inventory,
            namespace: &self.namespace,
            database: &self.database,
            nats: &self.nats,
            bus: &self.bus,
            grpc: &self.grpc,
            admin: &self.admin,
        }
    }
}
