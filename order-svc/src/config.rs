//! Settings of the order service. Environment prefix: `ORDER_SVC__`
//! (e.g. `ORDER_SVC__ORDER__DEADLINE_SECS=60`); an optional TOML file is
//! named by `ORDER_SVC_CONFIG`. The sections every service has come from
//! [`saga_shared::service_config!`].

use saga_shared::config::{Bounds, ConfigError, DAY_MS, DAY_SECS};
use saga_shared::service::Check;
use serde::{Deserialize, Serialize};

/// The most SKUs inventory's ListStock answers for at once: the catalog
/// check asks about an order's SKUs in one call.
pub const MAX_LINES_BOUND: usize = 500;

saga_shared::service_config! {
    pub struct OrderConfig {
        service: "order-svc",
        env_prefix: "ORDER_SVC__",
        file_var: "ORDER_SVC_CONFIG",
        own_stream: Orders,
        schema: "orders",
        grpc_port: 50051,
        admin_port: 9091,
        pub order: OrderSettings,
    }
}

impl Check for OrderConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let o = &self.order;
        Bounds::new()
            .check("order.max_lines", o.max_lines, 1, MAX_LINES_BOUND as i128)
            .check("order.max_quantity", o.max_quantity, 1, 1_000_000)
            // A year: the deadline is added to the time of each order.
            .check("order.deadline_secs", o.deadline_secs, 1, 365 * DAY_SECS)
            .check("order.sweep_interval_ms", o.sweep_interval_ms, 0, DAY_MS)
            .check(
                "order.catalog_cache_secs",
                o.catalog_cache_secs,
                0,
                DAY_SECS,
            )
            .check(
                "order.admission_refresh_ms",
                o.admission_refresh_ms,
                0,
                DAY_MS,
            )
            .check("order.watch_poll_ms", o.watch_poll_ms, 0, DAY_MS)
            .done()
    }
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
    /// Most orders open (placed, not yet CONFIRMED or CANCELLED) before
    /// PlaceOrder answers RESOURCE_EXHAUSTED; 0 admits everything.
    pub max_open_orders: u64,
    /// How often the open orders are counted, in milliseconds.
    pub admission_refresh_ms: u64,
    /// How often a watched order is read again (WatchOrder), in
    /// milliseconds.
    pub watch_poll_ms: u64,
    /// Most WatchOrder streams open at once on one instance; more are
    /// answered RESOURCE_EXHAUSTED.
    pub max_watchers: usize,
    /// Most of those one customer may hold at once (0: no bound of its
    /// own), so that one customer cannot take them all. Admins and
    /// services (a storefront watching for its shoppers) have only
    /// `max_watchers`.
    pub max_watchers_per_customer: usize,
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
            max_open_orders: 1_000,
            admission_refresh_ms: 100,
            watch_poll_ms: 200,
            max_watchers: 1_000,
            max_watchers_per_customer: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings PlaceOrder would overflow on, or that other services
    /// cannot serve, are refused at start by name. A deadline of
    /// u64::MAX / 2 seconds used to be taken, and every PlaceOrder panicked
    /// adding it to the time; more lines than inventory's ListStock answers
    /// for at once (500) made every such order's catalog check UNAVAILABLE.
    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        let cases: [saga_shared::config::OutOfRange<OrderConfig>; 5] = [
            ("order.deadline_secs", |c| {
                c.order.deadline_secs = u64::MAX / 2;
            }),
            ("order.max_lines", |c| {
                c.order.max_lines = 600;
            }),
            ("order.max_lines", |c| {
                c.order.max_lines = 0;
            }),
            ("order.max_quantity", |c| {
                c.order.max_quantity = 0;
            }),
            ("order.watch_poll_ms", |c| {
                c.order.watch_poll_ms = u64::MAX;
            }),
        ];
        saga_shared::config::assert_refused_by_name(&cases, OrderConfig::check);
    }
}
