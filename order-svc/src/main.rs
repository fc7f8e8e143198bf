//! The order service binary: configuration from `ORDER_SVC__*`
//! variables (and an optional TOML file named by `ORDER_SVC_CONFIG`).

use saga_shared::service::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    order_svc::OrderSvc::main().await
}
