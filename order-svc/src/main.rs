//! The order service binary: configuration from `ORDER_SVC__*`
//! variables (and an optional TOML file named by `ORDER_SVC_CONFIG`).

use order_svc::OrderConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let file = std::env::var_os("ORDER_SVC_CONFIG").map(std::path::PathBuf::from);
    let config = OrderConfig::load(file.as_deref())?;
    let _telemetry = saga_shared::telemetry::init(order_svc::config::SERVICE, &config.telemetry);
    tracing::info!(config = ?config, "starting");
    order_svc::run(config, saga_shared::runtime::shutdown_signal()).await?;
    Ok(())
}
