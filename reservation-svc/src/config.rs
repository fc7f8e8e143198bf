//! Settings of the reservation service. Environment prefix:
//! `RESERVATION_SVC__` (e.g. `RESERVATION_SVC__RESERVATION__LOCK_TTL_MS`); an
//! optional TOML file is named by `RESERVATION_SVC_CONFIG`. The sections
//! every service has come from [`saga_shared::service_config!`].

use saga_shared::config::{RedisConfig, RepairConfig};
use saga_shared::service::Check;
use serde::{Deserialize, Serialize};

saga_shared::service_config! {
    pub struct ReservationConfig {
        service: "reservation-svc",
        env_prefix: "RESERVATION_SVC__",
        file_var: "RESERVATION_SVC_CONFIG",
        own_stream: Reservations,
        schema: "reservation",
        grpc_port: 50054,
        admin_port: 9094,
        pub redis: RedisConfig,
        pub reservation: ReservationSettings,
        /// Finishing what sagas that ended left open here, when their events
        /// could not be applied.
        pub repair: RepairConfig,
    }
}

impl Check for ReservationConfig {}

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
