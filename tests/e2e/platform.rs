//! What every service offers operators and integrators: gRPC health and
//! reflection, admin readiness and metrics, and one trace per saga.

use saga_shared::bus::StreamKind;
use saga_shared::proto::order::v1::OrderState;
use saga_tests::{TestSystem, http_get, order_request, state};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_health_reflection_readiness_and_metrics() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let services = [
        (sys.order, "saga.order.v1.OrderService"),
        (sys.inventory, "saga.inventory.v1.InventoryService"),
        (sys.payment, "saga.payment.v1.PaymentService"),
        (sys.reservation, "saga.reservation.v1.ReservationService"),
    ];
    for (endpoints, name) in services {
        let channel = tonic::transport::Endpoint::from_shared(endpoints.grpc_url())?
            .connect()
            .await?;
        let mut health = HealthClient::new(channel.clone());
        for service in ["", name] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await?
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{name} health of {service:?}"
            );
        }

        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(futures::stream::iter([request]))
            .await?
            .into_inner();
        let answer = answers.message().await?.expect("one reflection answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("{name}: unexpected reflection answer {answer:?}");
        };
        let listed: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(listed.iter().any(|s| s == name), "{name} not in {listed:?}");
        assert!(
            listed.iter().any(|s| s == "grpc.health.v1.Health"),
            "{listed:?}"
        );

        let (code, body) = http_get(endpoints.admin, "/readyz").await?;
        assert_eq!(code, 200, "{name} /readyz: {body}");
        assert!(body.contains("\"ready\":true"), "{body}");
        assert!(
            body.contains("\"postgres\"") && body.contains("\"nats\""),
            "{body}"
        );
        let (code, _) = http_get(endpoints.admin, "/healthz").await?;
        assert_eq!(code, 200);
    }

    sys.seed_product("A", 100, 1).await?;
    sys.top_up("m", 1_000).await?;
    let o = sys.place(order_request("m", &[("A", 1)], None)).await?;
    sys.wait_terminal(&o.order_id, WAIT).await?;
    let (code, metrics) = http_get(sys.order.admin, "/metrics").await?;
    assert_eq!(code, 200);
    assert!(metrics.contains("saga_outbox_published_total"), "{metrics}");
    assert!(metrics.contains("saga_events_handled_total"), "{metrics}");
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_of_a_placed_order_runs_through_every_event_of_its_saga() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 5).await?;
    sys.top_up("t", 1_000).await?;
    let slot = sys.create_slot("s", 5).await?.slot_id;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(order_request("t", &[("A", 1)], Some(&slot)));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01").parse()?,
    );
    let placed = sys
        .clients
        .order
        .clone()
        .place_order(request)
        .await?
        .into_inner()
        .order
        .unwrap_or_default();
    let done = sys.wait_terminal(&placed.order_id, WAIT).await?;
    assert_eq!(state(&done), OrderState::Confirmed);
    sys.quiesce(WAIT).await?;

    let ns = sys.namespace();
    let mut seen = Vec::new();
    for kind in StreamKind::ALL {
        let mut stream = sys.js.get_stream(ns.stream(kind)).await?;
        let last = stream.info().await?.state.last_sequence;
        for seq in 1..=last {
            let msg = stream.get_raw_message(seq).await?;
            let correlation = msg
                .headers
                .get(saga_shared::bus::envelope::headers::CORRELATION_ID)
                .map(|v| v.as_str().to_owned());
            if correlation.as_deref() != Some(placed.order_id.as_str()) {
                continue;
            }
            let traceparent = msg
                .headers
                .get("traceparent")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            seen.push((msg.subject.to_string(), traceparent));
        }
    }
    let types: std::collections::BTreeSet<&str> = seen
        .iter()
        .map(|(subject, _)| subject.trim_start_matches(&format!("{}.", sys.ns)))
        .collect();
    assert_eq!(
        types,
        saga_tests::CONFIRMED_WITH_SLOT.into_iter().collect(),
        "{seen:?}"
    );
    for (subject, traceparent) in &seen {
        assert!(
            traceparent.starts_with(&format!("00-{trace_id}-")),
            "{subject} carries {traceparent:?}"
        );
    }
    sys.stop().await
}

/// An order cancelled by its deadline carries a trace context on its
/// `orders.cancelled`, so the compensations it starts downstream (stock
/// released, payment voided, slot freed) share one trace. The event's
/// context used to be read outside the sweep's span: the event went
/// without one, and each compensation started a trace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_by_its_deadline_carries_a_trace_to_its_compensations()
-> anyhow::Result<()> {
    use saga_shared::bus::envelope::headers;
    use saga_shared::proto::order::v1::CancelReason;
    let sys = TestSystem::start_with(|cfg| {
        cfg.order.order.deadline_secs = 1;
        cfg.order.order.sweep_interval_ms = 100;
        // The charge is still at the card gateway when the deadline passes.
        cfg.payment.gateway.latency_ms = 5_000;
        cfg.payment.gateway.jitter_ms = 0;
    })
    .await?;
    sys.seed_product("A", 100, 5).await?;
    sys.top_up("dee", 1_000).await?;
    let placed = sys.place(order_request("dee", &[("A", 1)], None)).await?;
    let done = sys.wait_terminal(&placed.order_id, WAIT).await?;
    assert_eq!(
        (state(&done), saga_tests::reason(&done)),
        (OrderState::Cancelled, CancelReason::Timeout)
    );
    let ns = sys.namespace();
    let subject = ns.subject(saga_shared::bus::EventType::OrderCancelled);
    let cancelled = saga_tests::poll_until("orders.cancelled in the stream", WAIT, || {
        let (js, name) = (sys.js.clone(), ns.stream(StreamKind::Orders));
        let (subject, order) = (subject.clone(), placed.order_id.clone());
        async move {
            let mut stream = js.get_stream(name).await?;
            let last = stream.info().await?.state.last_sequence;
            for seq in 1..=last {
                let msg = stream.get_raw_message(seq).await?;
                let ours = msg
                    .headers
                    .get(headers::CORRELATION_ID)
                    .is_some_and(|v| v.as_str() == order);
                if ours && msg.subject.as_str() == subject {
                    return anyhow::Ok(Some(msg));
                }
            }
            Ok(None)
        }
    })
    .await?;
    let traceparent = cancelled
        .headers
        .get("traceparent")
        .map(|v| v.as_str().to_owned());
    assert!(
        traceparent
            .as_deref()
            .is_some_and(|t| t.starts_with("00-") && t.len() == 55),
        "orders.cancelled carries a trace context: {traceparent:?}"
    );
    sys.stop().await
}

/// A service whose every pooled connection is busy (each in a transaction
/// waiting on a row lock) is still ready: Postgres answers. `/readyz` asked
/// Postgres through the same pool, so it waited for a connection past its
/// 2 s limit and answered 503: under load every instance could leave the
/// load balancer at once although nothing was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_pool_is_all_busy_is_still_ready() -> anyhow::Result<()> {
    use sqlx::Connection;
    let sys = TestSystem::start_with(|cfg| cfg.payment.database.max_connections = 2).await?;
    sys.top_up("lock", 100).await?;
    // The test holds the wallet's row; top-ups of it wait, each holding one
    // of payment-svc's two connections.
    let options: sqlx::postgres::PgConnectOptions = sys.config.payment.database.url.parse()?;
    let mut holder = sqlx::PgConnection::connect_with(&options).await?;
    let mut tx = holder.begin().await?;
    sqlx::query("SELECT 1 FROM payment.wallets WHERE customer_id = 'lock' FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let clients = sys.clients.clone();
            tokio::spawn(async move {
                let request = saga_shared::proto::payment::v1::TopUpRequest {
                    customer_id: "lock".into(),
                    amount_cents: 1,
                };
                clients.top_up(request).await
            })
        })
        .collect();
    saga_tests::eventually("both connections waiting on the row", WAIT, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&sys.db)
        .await?;
        Ok(n >= 2)
    })
    .await?;
    let (code, body) = http_get(sys.payment.admin, "/readyz").await?;
    assert_eq!(code, 200, "ready while its pool is busy: {body}");
    tx.rollback().await?;
    for top_up in waiting {
        top_up.await??;
    }
    assert_eq!(sys.wallet("lock").await?.balance_cents, 104);
    sys.stop().await
}

/// The readiness check's own connection ended by the server (Postgres
/// restarted, an idle timeout, an operator's pg_terminate_backend) costs no
/// 503: the check tries once more on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readiness_connection_the_server_ended_is_replaced_at_once() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (code, body) = http_get(sys.payment.admin, "/readyz").await?;
    assert_eq!(code, 200, "{body}");
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'payment-svc readyz'",
    )
    .fetch_all(&sys.db)
    .await?;
    assert_eq!(ended, vec![true], "the check's one connection ended");
    let (code, body) = http_get(sys.payment.admin, "/readyz").await?;
    assert_eq!(code, 200, "ready at the next check: {body}");
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_with_secrets_in_its_urls_never_logs_them() -> anyhow::Result<()> {
    use saga_tests::processes::{Processes, Service};
    let sys = TestSystem::start().await?;
    // A second payment-svc, the real binary, whose Postgres URL carries a
    // password twice and whose NATS list names a second server with one.
    let mut cfg = sys.config.clone();
    let db = cfg
        .payment
        .database
        .url
        .replacen("postgres@", "postgres:PgUserS3cret@", 1);
    cfg.payment.database.url = format!("{db}?sslmode=disable&password=PgParamS3cret");
    let nats = cfg.payment.nats.url.clone();
    let with_user = nats.replacen("nats://", "nats://alice:NatsS3cret@", 1);
    cfg.payment.nats.url = format!("{nats},{with_user}");
    let mut processes = Processes::prepare(&mut cfg, &sys.ns)?;
    processes
        .start(Service::Payment, &[("RUST_LOG", "info")])
        .await?;
    processes.stop().await;
    let log = std::fs::read_to_string(processes.log_path(Service::Payment))?;
    assert!(
        log.contains("\"starting\"") && log.contains("PaymentConfig"),
        "the configuration is logged at start:\n{log}"
    );
    for secret in ["PgUserS3cret", "PgParamS3cret", "NatsS3cret"] {
        assert!(!log.contains(secret), "{secret} printed:\n{log}");
    }
    sys.stop().await
}

/// A service stops even while clients hold streams open that nothing ends
/// (a health Watch, a reflection session): in-flight calls get a bounded
/// time to finish, then the rest are closed, and the consumers, the relay
/// and NATS are shut down in order. Such a stream used to hold the stop
/// for ever (a pod then only ends by SIGKILL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_stops_while_health_and_reflection_streams_stay_open() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let channel = tonic::transport::Endpoint::from_shared(sys.order.grpc_url())?
        .connect()
        .await?;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let first = watch.message().await?.expect("the current status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let (_keep_open, requests) = futures::channel::mpsc::unbounded::<ServerReflectionRequest>();
    let _reflection = ServerReflectionClient::new(channel)
        .server_reflection_info(requests)
        .await?;
    // The stop is bounded; a minute is far beyond it.
    tokio::time::timeout(std::time::Duration::from_secs(60), sys.stop())
        .await
        .map_err(|_| anyhow::anyhow!("the system did not stop within a minute"))??;
    drop(watch);
    Ok(())
}

/// A namespace keeps environments apart in Postgres as it does in NATS and
/// Redis: a service refuses to start on a schema that holds another
/// namespace's state. Its relay would otherwise publish the other system's
/// outbox into its own streams, and its deadline sweep would cancel the
/// other system's orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_refuses_a_schema_that_holds_another_namespaces_state() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.one_confirmed_order("N1", "c1", WAIT).await?;
    let other = format!("{}x", sys.ns);
    let cfg = sys.config.clone().with_namespace(&other).with_free_ports();
    let started = tokio::time::timeout(WAIT, sagactl::system::System::start(cfg)).await?;
    let refused = match started {
        Ok(system) => {
            system.stop().await?;
            anyhow::bail!(
                "a system in namespace {other} started on {}'s schemas",
                sys.ns
            );
        }
        Err(e) => format!("{e:#}"),
    };
    let named = |ns: &str| format!("{ns:?}");
    assert!(
        refused.contains(&named(&sys.ns)) && refused.contains(&named(&other)),
        "the refusal names both namespaces: {refused}"
    );
    // So do the operator's tools that open a service's schema.
    let status =
        sagactl::replay::status(&sys.config.clone().with_namespace(&other), Some("payment")).await;
    let refused = format!("{:#}", status.expect_err("another namespace's schema"));
    assert!(refused.contains(&named(&sys.ns)), "{refused}");
    // The first system goes on as before.
    sys.one_confirmed_order("N2", "c2", WAIT).await?;
    for kind in StreamKind::ALL {
        let name = saga_shared::bus::Namespace::new(&other)?.stream(kind);
        let _ = sys.js.delete_stream(name).await;
    }
    sys.stop().await
}

/// A rollback: a newer build has applied a migration this build does not
/// know (expand first, contract later). This build's services still start
/// on that schema, as a rolling deploy and its undo need; they used to
/// refuse (sqlx: "migration ... was previously applied but is missing").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_starts_on_a_schema_a_newer_build_has_migrated() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let db = &sys.config.payment.database;
    for table in ["_sqlx_migrations", "_sqlx_migrations_bus"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{}\".{table} (version, description, success, checksum, execution_time) \
             VALUES (99991231000000, 'from a newer build', true, '\\x00', 1)",
            db.schema
        )))
        .execute(&sys.db)
        .await?;
    }
    let pool = saga_shared::db::connect(db, &payment_svc::MIGRATIONS).await;
    let pool = pool.map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    pool.close().await;
    // So do the operator's tools of this build, which the rollback left
    // in place with the services.
    let status = sagactl::replay::status(&sys.config, Some("payment")).await;
    status.map_err(|e| anyhow::anyhow!("replay status refused: {e:#}"))?;
    sys.one_confirmed_order("R1", "c1", WAIT).await?;
    sys.stop().await
}
