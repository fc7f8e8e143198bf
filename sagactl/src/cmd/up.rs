//! `sagactl up`: the four services in this process until Ctrl-C.

use anyhow::bail;
use saga_shared::auth::AuthConfig;
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
    // With no auth settings at all, a development secret of our own, and
    // tokens for the CLI (see `crate::dev`).
    let tokens = if cfg.auths().iter().any(|a| a.is_configured()) {
        None
    } else {
        let secret = crate::dev::secret_or_create()?;
        cfg = cfg.with_auth(&AuthConfig::with_secret(&secret));
        Some(crate::dev::write_tokens(&secret)?)
    };
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
    match tokens {
        Some([admin, customer]) => {
            let secret_from = if std::env::var("SAGA_AUTH_SECRET").is_ok_and(|s| !s.is_empty()) {
                "SAGA_AUTH_SECRET".to_owned()
            } else {
                crate::dev::home().display().to_string()
            };
            println!("development tokens (the secret is in {secret_from}):");
            println!(
                "  admin          {}  (what sagactl sends by default)",
                admin.display()
            );
            println!("  demo customer  {}", customer.display());
            println!("  more: sagactl token --customer c1");
        }
        None => println!("authentication as configured (*_SVC__AUTH__*)"),
    }
    println!("try: sagactl demo");
    tokio::select! {
        () = saga_shared::runtime::shutdown_signal() => {
            println!("stopping...");
            system.stop().await
        }
        exited = system.exited() => {
            let why = match exited {
                Some((name, Err(e))) => anyhow::anyhow!("{name} failed: {e}"),
                Some((name, Ok(()))) => anyhow::anyhow!("{name} stopped"),
                None => return Ok(()),
            };
            // The others stop as on Ctrl-C (their messages handed back,
            // their outboxes published), not cut off by the exit.
            eprintln!("{why}; stopping the others...");
            if let Err(e) = system.stop().await {
                eprintln!("stopping the others: {e:#}");
            }
            Err(why)
        }
    }
}
