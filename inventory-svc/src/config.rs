//! Settings of the inventory service. Environment prefix: `INVENTORY_SVC__`
//! (e.g. `INVENTORY_SVC__REDIS__URL`); an optional TOML file is named by
//! `INVENTORY_SVC_CONFIG`. The sections every service has come from
//! [`saga_shared::service_config!`].

use saga_shared::config::{Bounds, ConfigError, DAY_MS, DAY_SECS, RedisConfig, RepairConfig};
use saga_shared::service::Check;
use serde::{Deserialize, Serialize};

saga_shared::service_config! {
    pub struct InventoryConfig {
        service: "inventory-svc",
        env_prefix: "INVENTORY_SVC__",
        file_var: "INVENTORY_SVC_CONFIG",
        own_stream: Inventory,
        schema: "inventory",
        grpc_port: 50052,
        admin_port: 9092,
        pub redis: RedisConfig,
        pub inventory: InventorySettings,
        /// Finishing the stock of sagas that ended while their events could
        /// not be applied.
        pub repair: RepairConfig,
    }
}

impl Check for InventoryConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let i = &self.inventory;
        // Redis expiries and the reconciler's clock arithmetic take these.
        Bounds::new()
            .check("inventory.max_lines", i.max_lines, 1, 10_000)
            .check(
                "inventory.tombstone_ttl_secs",
                i.tombstone_ttl_secs,
                1,
                365 * DAY_SECS,
            )
            .check(
                "inventory.orphan_grace_secs",
                i.orphan_grace_secs,
                0,
                30 * DAY_SECS,
            )
            .check(
                "inventory.closed_window_secs",
                i.closed_window_secs,
                0,
                365 * DAY_SECS,
            )
            .check(
                "inventory.probe_interval_ms",
                i.probe_interval_ms,
                0,
                DAY_MS,
            )
            .check(
                "inventory.reconcile_interval_ms",
                i.reconcile_interval_ms,
                0,
                DAY_MS,
            )
            .done()
    }
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
    /// No longer used: a counter rebuild asks Postgres about exactly the
    /// holds Redis has, however long ago they closed. Still accepted (and
    /// range-checked) so that settings naming it load.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations the service turns into Redis expiries and clock
    /// arithmetic are refused at start, by name, beyond what those take.
    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        let cases: [saga_shared::config::OutOfRange<InventoryConfig>; 4] = [
            ("inventory.tombstone_ttl_secs", |c| {
                c.inventory.tombstone_ttl_secs = u64::MAX;
            }),
            ("inventory.orphan_grace_secs", |c| {
                c.inventory.orphan_grace_secs = u64::MAX;
            }),
            ("inventory.closed_window_secs", |c| {
                c.inventory.closed_window_secs = u64::MAX;
            }),
            ("inventory.max_lines", |c| {
                c.inventory.max_lines = 0;
            }),
        ];
        saga_shared::config::assert_refused_by_name(&cases, InventoryConfig::check);
    }
}
