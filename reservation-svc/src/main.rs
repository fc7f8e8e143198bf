//! The reservation service binary: configuration from `RESERVATION_SVC__*`
//! variables (and an optional TOML file named by `RESERVATION_SVC_CONFIG`).

use saga_shared::service::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    reservation_svc::ReservationSvc::main().await
}
