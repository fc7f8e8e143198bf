//! The payment service binary: configuration from `PAYMENT_SVC__*`
//! variables (and an optional TOML file named by `PAYMENT_SVC_CONFIG`).

use payment_svc::PaymentConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let file = std::env::var_os("PAYMENT_SVC_CONFIG").map(std::path::PathBuf::from);
    let config = PaymentConfig::load(file.as_deref())?;
    let _telemetry = saga_shared::telemetry::init(payment_svc::config::SERVICE, &config.telemetry);
    tracing::info!(config = ?config, "starting");
    payment_svc::run(config, saga_shared::runtime::shutdown_signal()).await?;
    Ok(())
}
