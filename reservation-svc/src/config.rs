//! Settings of the reservation service. Environment prefix:
//! `RESERVATION_SVC__` (e.g. `RESERVATION_SVC__RESERVATION__LOCK_TTL_MS`); an
//! optional TOML file is named by `RESERVATION_SVC_CONFIG`. The sections
//! every service has come from [`saga_shared::service_config!`].

use saga_shared::config::{Bounds, ConfigError, DAY_MS, RedisConfig, RepairConfig};
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

impl Check for ReservationConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let r = &self.reservation;
        // The lock's lifetime goes to Redis (PX), its wait to a timer.
        Bounds::new()
            .check("reservation.lock_ttl_ms", r.lock_ttl_ms, 1, DAY_MS)
            .check("reservation.lock_wait_ms", r.lock_wait_ms, 0, DAY_MS)
            .done()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot lock's times go to Redis (PX) and to a timer: values beyond
    /// what they take are refused at start, by name.
    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        let cases: [saga_shared::config::OutOfRange<ReservationConfig>; 3] = [
            ("reservation.lock_ttl_ms", |c| {
                c.reservation.lock_ttl_ms = u64::MAX;
            }),
            ("reservation.lock_ttl_ms", |c| {
                c.reservation.lock_ttl_ms = 0;
            }),
            ("reservation.lock_wait_ms", |c| {
                c.reservation.lock_wait_ms = u64::MAX;
            }),
        ];
        saga_shared::config::assert_refused_by_name(&cases, ReservationConfig::check);
    }
}
