//! Settings of the reservation service. Environment prefix:
//! `RESERVATION_SVC__` (e.g. `RESERVATION_SVC__RESERVATION__LOCK_TTL_MS`).

use saga_shared::config::{
    BusConfig, DatabaseConfig, ListenConfig, NatsConfig, RedisConfig, RepairConfig, TelemetryConfig,
};
use saga_shared::runtime::PlatformConfig;
use serde::{Deserialize, Serialize};

pub const SERVICE: &str = "reservation-svc";
pub const ENV_PREFIX: &str = "RESERVATION_SVC__";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReservationConfig {
    /// Prefix of stream names, subjects and Redis keys.
    pub namespace: String,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    pub redis: RedisConfig,
    /// gRPC listener (default 127.0.0.1:50054).
    pub grpc: ListenConfig,
    /// Admin HTTP listener (default 127.0.0.1:9094).
    pub admin: ListenConfig,
    pub bus: BusConfig,
    pub telemetry: TelemetryConfig,
    pub reservation: ReservationSettings,
    /// Finishing what sagas that ended left open here, when their events
    /// could not be applied.
    pub repair: RepairConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReservationSettings {
    /// Lifetime of a slot lock in milliseconds (it is released as soon as the
    /// booking commits; the TTL only bounds a crashed holder).
    pub lock_ttl_ms: u64,
    /// How long a booking waits for a slot's lock before going ahead without
    /// it (Postgres still enforces the capacity), in milliseconds.
    pub lock_wait_ms: u64,
}

impl Default for ReservationSettings {
    fn default() -> Self {
        Self {
            lock_ttl_ms: 2_000,
            lock_wait_ms: 500,
        }
    }
}

impl Default for ReservationConfig {
    fn default() -> Self {
        Self {
            namespace: "saga".into(),
            database: DatabaseConfig::with_schema("reservation"),
            nats: NatsConfig::default(),
            redis: RedisConfig::default(),
            grpc: ListenConfig::on_port(50054),
            admin: ListenConfig::on_port(9094),
            bus: BusConfig::default(),
            telemetry: TelemetryConfig::default(),
            reservation: ReservationSettings::default(),
            repair: RepairConfig::default(),
        }
    }
}

impl ReservationConfig {
    /// Defaults, then `file`, then `RESERVATION_SVC__*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, saga_shared::config::ConfigError> {
        saga_shared::config::load(ENV_PREFIX, file)
    }

    pub fn platform(&self) -> PlatformConfig<'_> {
        PlatformConfig {
            service: SERVICE,
            own_stream: saga_shared::bus::StreamKind::Reservations,
            namespace: &self.namespace,
            database: &self.database,
            nats: &self.nats,
            bus: &self.bus,
            grpc: &self.grpc,
            admin: &self.admin,
        }
    }
}
