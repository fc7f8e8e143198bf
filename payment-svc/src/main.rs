//! The payment service binary: configuration from `PAYMENT_SVC__*`
//! variables (and an optional TOML file named by `PAYMENT_SVC_CONFIG`).

use saga_shared::service::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    payment_svc::PaymentSvc::main().await
}
