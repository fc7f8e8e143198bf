//! The system over TLS: gRPC with client certificates (mutual TLS, the
//! services' calls of each other included) and NATS with TLS, client
//! certificates and a password, on a nats-server of the test's own. An
//! order runs to its end through all of it, and callers without TLS, without
//! a client certificate or with a wrong password are refused.

use saga_shared::auth::Role;
use saga_shared::config::NatsConfig;
use saga_shared::proto::order::v1 as ord;
use saga_tests::servers::NatsServer;
use saga_tests::tls::TestCerts;
use saga_tests::{TestSystem, order_request};
use sagactl::client::{Clients, Urls};
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_runs_over_tls_on_grpc_and_nats_and_callers_without_it_are_refused()
-> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("saga-tls-{}", uuid::Uuid::new_v4().simple()));
    let certs = TestCerts::generate(&dir)?;
    let nats = NatsServer::start_secured(&certs, "saga", "nats-secret").await?;
    let nats_cfg = nats.client_config();
    let sys = TestSystem::start_with(|cfg| {
        for n in cfg.nats_mut() {
            *n = nats_cfg.clone();
        }
        for g in [
            &mut cfg.order.grpc,
            &mut cfg.inventory.grpc,
            &mut cfg.payment.grpc,
            &mut cfg.reservation.grpc,
        ] {
            g.tls_cert_file = Some(certs.cert.clone());
            g.tls_key_file = Some(certs.key.clone());
            g.tls_client_ca_file = Some(certs.ca.clone());
            g.tls_ca_file = Some(certs.ca.clone());
        }
    })
    .await?;
    assert!(sys.urls.order.starts_with("https://"), "{:?}", sys.urls);

    // The whole saga: the catalog check (order-svc -> inventory over mTLS),
    // every event over NATS with TLS.
    sys.seed_product("TLS-A", 100, 10).await?;
    sys.top_up("tls-c1", 1_000).await?;
    let placed = sys
        .place(order_request("tls-c1", &[("TLS-A", 2)], None))
        .await?;
    let ended = sys.wait_terminal(&placed.order_id, WAIT).await?;
    assert_eq!(ended.state, ord::OrderState::Confirmed as i32, "{ended:?}");

    let admin = sys.minter.mint(
        "tls-admin",
        Role::Admin,
        std::time::Duration::from_secs(600),
    )?;
    let with_tls = |tls: Option<ClientTlsConfig>, scheme: &str| Urls {
        order: sys.urls.order.replace("https", scheme),
        inventory: sys.urls.inventory.replace("https", scheme),
        payment: sys.urls.payment.replace("https", scheme),
        reservation: sys.urls.reservation.replace("https", scheme),
        tls,
    };
    // Plaintext is refused.
    let plain = Clients::with_token(&with_tls(None, "http"), Some(admin.clone()))?;
    assert!(plain.get_stock("TLS-A").await.is_err(), "plaintext served");
    // TLS without a client certificate is refused.
    let ca = Certificate::from_pem(std::fs::read(&certs.ca)?);
    let anonymous_tls = ClientTlsConfig::new().ca_certificate(ca);
    let no_cert = Clients::with_token(&with_tls(Some(anonymous_tls), "https"), Some(admin))?;
    assert!(
        no_cert.get_stock("TLS-A").await.is_err(),
        "a caller without a client certificate was served"
    );
    // NATS: without TLS, or with a wrong password, no connection.
    let no_tls = NatsConfig {
        tls_ca_file: None,
        tls_cert_file: None,
        tls_key_file: None,
        ..nats_cfg.clone()
    };
    assert!(
        saga_shared::nats::connect(&no_tls, "tls-test")
            .await
            .is_err(),
        "NATS without TLS connected"
    );
    let wrong = NatsConfig {
        password: "wrong".into(),
        ..nats_cfg.clone()
    };
    assert!(
        saga_shared::nats::connect(&wrong, "tls-test")
            .await
            .is_err(),
        "NATS with a wrong password connected"
    );
    assert!(
        saga_shared::nats::connect(&nats_cfg, "tls-test")
            .await
            .is_ok()
    );
    sys.stop().await?;
    drop(nats);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
