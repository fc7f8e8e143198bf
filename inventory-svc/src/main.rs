//! The inventory service binary: configuration from `INVENTORY_SVC__*`
//! variables (and an optional TOML file named by `INVENTORY_SVC_CONFIG`).

use saga_shared::service::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    inventory_svc::InventorySvc::main().await
}
