//! `sagactl up`: the four services in this process until Ctrl-C.

use anyhow::bail;
use saga_shared::config::{LogFormat, TelemetryConfig};

use crate::system::{System, SystemConfig};

pub(super) async fn run(namespace: Option<String>, log_format: &str) -> anyhow::Result<()> {
    let telemetry = TelemetryConfig {
        log_format: match log_format {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => bail!("--log-format {other:?}: expected pretty or json"),
        },
        ..TelemetryConfig::default()
    };
    let _telemetry = saga_shared::telemetry::init("sagactl", &telemetry);
    let mut cfg = SystemConfig::from_env()?;
    if let Some(ns) = namespace {
        cfg = cfg.with_namespace(&ns);
    }
    let mut system = System::start(cfg).await?;
    println!("saga services running (Ctrl-C to stop):");
    for (name, e) in [
        ("order-svc", system.order),
        ("inventory-svc", system.inventory),
        ("payment-svc", system.payment),
        ("reservation-svc", system.reservation),
    ] {
        println!("  {name:<16} gRPC {:<22} admin http://{}", e.grpc, e.admin);
    }
    println!("try: sagactl demo");
    tokio::select! {
        () = saga_shared::runtime::shutdown_signal() => {
            println!("stopping...");
            system.stop().await
        }
        exited = system.exited() => {
            match exited {
                Some((name, Err(e))) => bail!("{name} failed: {e}"),
                Some((name, Ok(()))) => bail!("{name} stopped"),
                None => Ok(()),
            }
        }
    }
}
