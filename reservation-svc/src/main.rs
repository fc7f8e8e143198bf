//! The reservation service binary: configuration from `RESERVATION_SVC__*`
//! variables (and an optional TOML file named by `RESERVATION_SVC_CONFIG`).

use reservation_svc::ReservationConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let file = std::env::var_os("RESERVATION_SVC_CONFIG").map(std::path::PathBuf::from);
    let config = ReservationConfig::load(file.as_deref())?;
    let _telemetry =
        saga_shared::telemetry::init(reservation_svc::config::SERVICE, &config.telemetry);
    tracing::info!(config = ?config, "starting");
    reservation_svc::run(config, saga_shared::runtime::shutdown_signal()).await?;
    Ok(())
}
