//! A saga's story (issue 9): `sagactl saga show` across the four services,
//! OrderService.GetOrderHistory for tools, and `sagactl saga stuck` naming
//! the step an open order waits for and who owes it.

use std::collections::BTreeSet;
use std::time::Duration;

use saga_shared::bus::StreamKind;
use saga_shared::proto::order::v1::{self as ord, OrderState};
use saga_tests::{TestSystem, order_request, poll_until, state};
use sagactl::audit::Auditor;
use sagactl::saga;
use tonic::Code;
use uuid::Uuid;

use crate::WAIT;

fn types(steps: &[saga_shared::bus::history::Step]) -> Vec<&str> {
    steps.iter().map(|s| s.event_type.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_story_has_every_event_across_the_services_with_causes_and_who_applied_them()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 250, 10).await?;
    sys.top_up("sue", 10_000).await?;
    let slot = sys.create_slot("monday", 5).await?;
    let o = sys
        .place(order_request("sue", &[("A", 2)], Some(&slot.slot_id)))
        .await?;
    assert_eq!(
        state(&sys.wait_terminal(&o.order_id, WAIT).await?),
        OrderState::Confirmed
    );
    let id: Uuid = o.order_id.parse()?;
    // Inventory and reservation apply orders.confirmed after order-svc
    // wrote it: the story is whole once the system is quiet.
    sys.quiesce(WAIT).await?;

    let auditor = Auditor::with_redis(&sys.config, sys.redis.clone()).await?;
    let story = saga::show(&auditor, id).await?.expect("a known order");
    let steps = &story.steps;
    let all: BTreeSet<&str> = types(steps).into_iter().collect();
    let expected: BTreeSet<&str> = saga_tests::CONFIRMED_WITH_SLOT.into();
    assert_eq!(all, expected, "{:?}", types(steps));
    assert_eq!(steps.len(), 6, "each event once: {:?}", types(steps));
    assert_eq!(steps[0].event_type, "orders.placed");
    assert_eq!(steps[5].event_type, "orders.confirmed");
    for pair in steps.windows(2) {
        assert!(pair[0].at <= pair[1].at, "in order: {:?}", types(steps));
    }
    let step = |ty: &str| steps.iter().find(|s| s.event_type == ty).unwrap();
    // Causes, producers, positions and who applied what.
    for (ty, cause, producer) in [
        ("inventory.reserved", "orders.placed", "inventory-svc"),
        ("reservations.held", "orders.placed", "reservation-svc"),
        ("payments.succeeded", "orders.reserved", "payment-svc"),
        ("orders.confirmed", "payments.succeeded", "order-svc"),
    ] {
        let s = step(ty);
        assert_eq!(s.caused_by.as_deref(), Some(cause), "{ty}: {s:?}");
        assert!(
            s.after_cause
                .is_some_and(|d| d >= chrono::TimeDelta::zero()),
            "{s:?}"
        );
        assert_eq!(s.producer, Some(producer));
        assert!(s.seq.is_some() && s.stored_at.is_some(), "{s:?}");
    }
    let appliers = |ty: &str| -> BTreeSet<String> {
        step(ty).applied_by.iter().map(|(c, _)| c.clone()).collect()
    };
    assert_eq!(
        appliers("orders.placed"),
        ["inventory-svc".to_owned(), "reservation-svc".to_owned()].into()
    );
    assert_eq!(
        appliers("orders.reserved"),
        ["payment-svc".to_owned()].into()
    );
    assert_eq!(
        appliers("payments.succeeded"),
        ["order-svc".to_owned()].into()
    );
    assert_eq!(
        appliers("orders.confirmed"),
        ["inventory-svc".to_owned(), "reservation-svc".to_owned()].into()
    );
    let placed_seq = step("orders.placed").seq.unwrap();
    let stream = sys.namespace().stream(StreamKind::Orders);
    assert_eq!(
        step("orders.placed").stream.as_deref(),
        Some(stream.as_str())
    );
    assert!(step("orders.confirmed").seq.unwrap() > placed_seq);
    // Each participant's record.
    assert_eq!(story.order.state, "CONFIRMED");
    assert_eq!(story.order.stock.as_deref(), Some("COMMITTED"));
    assert_eq!(story.order.booking.as_deref(), Some("CONFIRMED"));
    assert_eq!(
        story
            .order
            .payment
            .as_ref()
            .map(|p| (p.state.as_str(), p.amount)),
        Some(("CAPTURED", 500))
    );
    let text = saga::render_story(&story);
    for needle in [
        o.order_id.as_str(),
        "payments.succeeded",
        "applied by",
        "CAPTURED",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    assert!(saga::show(&auditor, Uuid::now_v7()).await?.is_none());

    // Over gRPC, what order-svc knows: what it published and applied.
    let history = sys
        .clients
        .order
        .clone()
        .get_order_history(ord::GetOrderHistoryRequest {
            order_id: o.order_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(history.order.map(|o| o.order_id), Some(o.order_id.clone()));
    let seen: Vec<&str> = history
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        seen.iter().copied().collect::<BTreeSet<_>>(),
        expected,
        "order-svc publishes or applies each: {seen:?}"
    );
    for e in &history.events {
        let applied_here = !e.event_type.starts_with("orders.");
        assert_eq!(e.applied_at.is_some(), applied_here, "{e:?}");
        assert_eq!(e.stream_seq > 0, applied_here, "{e:?}");
        assert!(e.at.is_some() && !e.producer.is_empty(), "{e:?}");
        if e.event_type != "orders.placed" {
            assert!(!e.caused_by.is_empty() && e.after_cause.is_some(), "{e:?}");
        }
    }
    let code = |r: Result<tonic::Response<ord::GetOrderHistoryResponse>, tonic::Status>| {
        r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
    };
    let mut client = sys.clients.order.clone();
    let unknown = client
        .get_order_history(ord::GetOrderHistoryRequest {
            order_id: Uuid::now_v7().to_string(),
        })
        .await;
    assert_eq!(code(unknown), Code::NotFound);
    let bad = client
        .get_order_history(ord::GetOrderHistoryRequest {
            order_id: "not-an-id".into(),
        })
        .await;
    match bad {
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(s.message().contains("order_id"), "{}", s.message());
        }
        Ok(_) => panic!("a bad id was answered"),
    }
    auditor.close().await;
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_saga_names_its_next_step_and_the_participant_that_owes_it() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        // Payment keeps retrying what it cannot record (no dead letter).
        cfg.payment.bus.max_deliver = 10_000;
        cfg.payment.bus.nak_base_delay_ms = 50;
        cfg.payment.bus.nak_max_delay_ms = 200;
    })
    .await?;
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("blocked", 10_000).await?;
    let schema = sys.config.payment.database.schema.clone();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {schema}.payments ADD CONSTRAINT stuck_block CHECK (customer_id <> 'blocked')"
    )))
    .execute(&sys.db)
    .await?;
    let o = sys
        .place(order_request("blocked", &[("A", 1)], None))
        .await?;
    let id: Uuid = o.order_id.parse()?;
    let auditor = Auditor::with_redis(&sys.config, sys.redis.clone()).await?;
    let stuck = poll_until("the order to wait on payment", WAIT, || async {
        let all = saga::stuck(&auditor, Duration::ZERO, 50).await?;
        Ok(all
            .into_iter()
            .find(|s| s.order.id == id && s.order.state == "RESERVED"))
    })
    .await?;
    assert_eq!(stuck.owed.len(), 1, "{stuck:?}");
    let (owed, lag) = &stuck.owed[0];
    assert_eq!(owed.by, "payment-svc");
    assert_eq!(owed.reads, Some(StreamKind::Orders));
    assert!(owed.step.contains("for orders.reserved"), "{owed:?}");
    let lag = lag
        .as_ref()
        .expect("payment's consumer of the orders stream");
    assert!(
        lag.unacked + lag.pending >= 1,
        "the orders.reserved it keeps retrying: {lag:?}"
    );
    let table = saga::render_stuck(std::slice::from_ref(&stuck), chrono::Utc::now());
    assert!(
        table.contains(&o.order_id) && table.contains("payment-svc"),
        "{table}"
    );
    // Not stuck when asked for orders older than it.
    let older = saga::stuck(&auditor, Duration::from_secs(3_600), 50).await?;
    assert!(older.iter().all(|s| s.order.id != id));

    // Lifted, the saga ends and is no longer listed.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {schema}.payments DROP CONSTRAINT stuck_block"
    )))
    .execute(&sys.db)
    .await?;
    assert_eq!(
        state(&sys.wait_terminal(&o.order_id, WAIT).await?),
        OrderState::Confirmed
    );
    let after = saga::stuck(&auditor, Duration::ZERO, 50).await?;
    assert!(after.iter().all(|s| s.order.id != id), "{after:?}");
    auditor.close().await;
    sys.stop().await
}
