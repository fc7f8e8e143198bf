//! The inventory service binary: configuration from `INVENTORY_SVC__*`
//! variables (and an optional TOML file named by `INVENTORY_SVC_CONFIG`).

use inventory_svc::InventoryConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let file = std::env::var_os("INVENTORY_SVC_CONFIG").map(std::path::PathBuf::from);
    let config = InventoryConfig::load(file.as_deref())?;
    let _telemetry =
        saga_shared::telemetry::init(inventory_svc::config::SERVICE, &config.telemetry);
    tracing::info!(config = ?config, "starting");
    inventory_svc::run(config, saga_shared::runtime::shutdown_signal()).await?;
    Ok(())
}
