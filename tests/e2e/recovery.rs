//! When things break: poison messages and the DLQ, deadlines, NATS
//! restarted under load, and the auditor itself.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use saga_shared::bus::{EventMeta, EventType, SagaEvent, StreamKind};
use saga_shared::proto::order::v1::{CancelReason, OrderState};
use saga_tests::servers::NatsServer;
use saga_tests::{TestSystem, eventually, order_request, reason, state};
use sagactl::audit::{Auditor, Check};
use sagactl::dlq;
use uuid::Uuid;

use crate::WAIT;

/// A Postgres rule that makes inventory fail on one SKU until it is lifted:
/// a fault an operator could meet (a constraint added by a migration, say).
const BLOCK_SKU: &str =
    "ALTER TABLE inventory.holds ADD CONSTRAINT drill_block CHECK (sku <> 'POISON')";
const UNBLOCK_SKU: &str = "ALTER TABLE inventory.holds DROP CONSTRAINT drill_block";

async fn dead_letters(sys: &TestSystem) -> anyhow::Result<Vec<dlq::DeadLetter>> {
    dlq::list(&sys.js, &sys.namespace()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_failing_is_dead_lettered_after_the_bound_and_redriven_once_fixed()
-> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.bus.max_deliver = 3;
        cfg.inventory.bus.nak_base_delay_ms = 50;
    })
    .await?;
    sys.seed_product("POISON", 100, 10).await?;
    sys.seed_product("OK", 100, 10).await?;
    sys.top_up("pat", 10_000).await?;
    sqlx::query(BLOCK_SKU).execute(&sys.db).await?;

    let stuck = sys
        .place(order_request("pat", &[("POISON", 1)], None))
        .await?;
    let fine = sys.place(order_request("pat", &[("OK", 1)], None)).await?;
    assert_eq!(
        state(&sys.wait_terminal(&fine.order_id, WAIT).await?),
        OrderState::Confirmed
    );

    eventually("the failing event to reach the DLQ", WAIT, || async {
        Ok(!dead_letters(&sys).await?.is_empty())
    })
    .await?;
    let letters = dead_letters(&sys).await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(
        letter.subject,
        sys.namespace().subject(EventType::OrderPlaced)
    );
    assert_eq!(letter.consumer, "inventory-svc");
    assert_eq!(letter.delivered, "3", "retried up to max_deliver");
    assert!(letter.error.contains("drill_block"), "{}", letter.error);
    assert!(
        letter.headers.get("Saga-Event-Id").is_some(),
        "original headers kept"
    );
    match letter.decoded(&sys.namespace()) {
        Ok(SagaEvent::OrderPlaced(e)) => assert_eq!(e.order_id, stuck.order_id),
        other => panic!("unexpected body {other:?}"),
    }
    assert_eq!(
        state(&sys.get_order(&stuck.order_id).await?),
        OrderState::Pending
    );

    // The operator lifts the cause and sends the event back.
    sqlx::query(UNBLOCK_SKU).execute(&sys.db).await?;
    let inboxes = dlq::Inboxes::open(&sys.config).await?;
    dlq::redrive(
        &sys.js,
        &sys.namespace(),
        letter.seq,
        dlq::Guard::Inboxes(&inboxes),
    )
    .await?;
    inboxes.close().await;
    let done = sys.wait_terminal(&stuck.order_id, WAIT).await?;
    assert_eq!(state(&done), OrderState::Confirmed);
    assert!(
        dead_letters(&sys).await?.is_empty(),
        "redriven letters leave the DLQ"
    );
    sys.quiesce(WAIT).await?;
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

/// Two operators (or one who runs it again after a crash) redriving the
/// same letter at once both succeed, and the event goes back to its stream
/// once: the republication has an id of its own letter's, which JetStream
/// deduplicates, and a letter already gone from the DLQ is a redrive done.
/// Each run used to publish a copy under an id of the moment, and the
/// second to remove the letter failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_redriven_twice_at_once_goes_back_once() -> anyhow::Result<()> {
    use futures::TryStreamExt;
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.bus.max_deliver = 2;
        cfg.inventory.bus.nak_base_delay_ms = 50;
    })
    .await?;
    sys.seed_product("POISON", 100, 10).await?;
    sys.top_up("rhea", 10_000).await?;
    sqlx::query(BLOCK_SKU).execute(&sys.db).await?;
    let stuck = sys
        .place(order_request("rhea", &[("POISON", 1)], None))
        .await?;
    eventually("the failing event to reach the DLQ", WAIT, || async {
        Ok(!dead_letters(&sys).await?.is_empty())
    })
    .await?;
    let seq = dead_letters(&sys).await?[0].seq;
    sqlx::query(UNBLOCK_SKU).execute(&sys.db).await?;

    let ns = sys.namespace();
    let inboxes = dlq::Inboxes::open(&sys.config).await?;
    let (first, second) = tokio::join!(
        dlq::redrive(&sys.js, &ns, seq, dlq::Guard::Inboxes(&inboxes)),
        dlq::redrive(&sys.js, &ns, seq, dlq::Guard::Force)
    );
    inboxes.close().await;
    let placed = ns.subject(EventType::OrderPlaced);
    let (first, second) = (first?, second?);
    for outcome in [&first, &second] {
        assert!(
            *outcome == dlq::Redriven::SentBack(placed.clone())
                || *outcome == dlq::Redriven::AlreadyGone,
            "{outcome:?}"
        );
    }
    assert!(
        [&first, &second].contains(&&dlq::Redriven::SentBack(placed.clone())),
        "{first:?} {second:?}"
    );
    assert!(
        dead_letters(&sys).await?.is_empty(),
        "the letter left the DLQ"
    );
    let done = sys.wait_terminal(&stuck.order_id, WAIT).await?;
    assert_eq!(state(&done), OrderState::Confirmed);
    let stream = sys
        .js
        .get_stream(ns.stream(EventType::OrderPlaced.stream()))
        .await?;
    let counts: Vec<(String, usize)> = stream
        .info_with_subjects(&placed)
        .await?
        .try_collect()
        .await?;
    assert_eq!(
        counts,
        vec![(placed.clone(), 2)],
        "the order's orders.placed and one redriven copy"
    );
    // Run again later (a second operator, a retried script): the letter is
    // gone, which is a redrive done, not an error. It used to fail with
    // "no dead letter".
    assert_eq!(
        dlq::redrive(&sys.js, &ns, seq, dlq::Guard::Force).await?,
        dlq::Redriven::AlreadyGone
    );
    sys.stop().await
}

/// A batch of letters goes on past one that cannot be sent back: the CLI
/// used to stop at the first error, leaving every letter after it in the
/// DLQ (and `--all` lists the oldest, likeliest refused, first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_of_several_letters_goes_on_past_one_it_cannot_send_back() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.bus.max_deliver = 2;
        cfg.inventory.bus.nak_base_delay_ms = 50;
    })
    .await?;
    let ns = sys.namespace();
    // A letter that is no event (an operator's drill).
    sys.js
        .publish(
            ns.dlq_subject("drill", "X"),
            bytes::Bytes::from_static(b"?"),
        )
        .await?
        .await?;
    sys.seed_product("POISON", 100, 10).await?;
    sys.top_up("sid", 10_000).await?;
    sqlx::query(BLOCK_SKU).execute(&sys.db).await?;
    let stuck = sys
        .place(order_request("sid", &[("POISON", 1)], None))
        .await?;
    eventually("the failing event to reach the DLQ", WAIT, || async {
        Ok(dead_letters(&sys).await?.len() == 2)
    })
    .await?;
    sqlx::query(UNBLOCK_SKU).execute(&sys.db).await?;
    let seqs: Vec<u64> = dead_letters(&sys).await?.iter().map(|l| l.seq).collect();
    let (drill, real) = (seqs[0], seqs[1]);
    let outcomes =
        dlq::redrive_all(&sys.js, &ns, &[drill, real, real + 10], dlq::Guard::Force).await;
    let text: Vec<String> = outcomes
        .iter()
        .map(|(seq, o)| format!("{seq}: {o:?}"))
        .collect();
    assert_eq!(outcomes.len(), 3, "{text:?}");
    assert!(
        matches!(&outcomes[0].1, Err(e) if e.to_string().contains("not an event subject")),
        "{text:?}"
    );
    assert!(
        matches!(&outcomes[1].1, Ok(dlq::Redriven::SentBack(s)) if *s == ns.subject(EventType::OrderPlaced)),
        "{text:?}"
    );
    assert!(
        matches!(&outcomes[2].1, Err(e) if e.to_string().contains("no dead letter")),
        "{text:?}"
    );
    let done = sys.wait_terminal(&stuck.order_id, WAIT).await?;
    assert_eq!(state(&done), OrderState::Confirmed);
    let left: Vec<u64> = dead_letters(&sys).await?.iter().map(|l| l.seq).collect();
    assert_eq!(left, vec![drill], "only the drill is left");
    sys.stop().await
}

/// A letter whose event another consumer applied, and whose inbox row
/// that consumer has since purged (past retention), is not sent back
/// unless forced: the consumer would no longer know it applied the event,
/// and would apply it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_some_inbox_has_forgotten_is_not_redriven_unless_forced() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.bus.max_deliver = 2;
        cfg.inventory.bus.nak_base_delay_ms = 50;
    })
    .await?;
    sys.seed_product("POISON", 100, 10).await?;
    sys.top_up("rex", 10_000).await?;
    let slot = sys.create_slot("forgotten", 5).await?.slot_id;
    sqlx::query(BLOCK_SKU).execute(&sys.db).await?;
    // reservation-svc holds the slot (it applies the orders.placed);
    // inventory-svc dead-letters it.
    let placed = sys
        .place(order_request("rex", &[("POISON", 1)], Some(&slot)))
        .await?;
    eventually("the failing event to reach the DLQ", WAIT, || async {
        Ok(dead_letters(&sys).await?.len() == 1)
    })
    .await?;
    let letter = dead_letters(&sys).await?.remove(0);
    let event_id: Uuid = letter
        .headers
        .get("Saga-Event-Id")
        .expect("an event id")
        .as_str()
        .parse()?;
    let reservation = saga_shared::db::connect(
        &sys.config.reservation.database,
        &reservation_svc::MIGRATIONS,
    )
    .await?;
    let applied = |pool: sqlx::PgPool| async move {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_id = $1")
                .bind(event_id)
                .fetch_one(&pool)
                .await?;
        anyhow::Ok(n)
    };
    eventually("reservation-svc to apply the event", WAIT, || {
        let pool = reservation.clone();
        async move { Ok(applied(pool).await? == 1) }
    })
    .await?;
    // Time passes: reservation-svc's inbox forgets everything it applied.
    let purged = saga_shared::bus::retention::purge(&reservation, Duration::ZERO).await?;
    assert!(purged.inbox >= 1, "{purged:?}");
    sqlx::query(UNBLOCK_SKU).execute(&sys.db).await?;

    let inboxes = dlq::Inboxes::open(&sys.config).await?;
    let refused = dlq::redrive(
        &sys.js,
        &sys.namespace(),
        letter.seq,
        dlq::Guard::Inboxes(&inboxes),
    )
    .await
    .expect_err("a letter reservation-svc's inbox has forgotten");
    inboxes.close().await;
    let text = format!("{refused:#}");
    assert!(
        text.contains("reservation-svc") && text.contains("--force"),
        "{text}"
    );
    assert_eq!(dead_letters(&sys).await?.len(), 1, "the letter stays");
    assert_eq!(applied(reservation.clone()).await?, 0, "not applied again");

    // Forced, it goes back: inventory-svc applies it, and the saga ends.
    dlq::redrive(&sys.js, &sys.namespace(), letter.seq, dlq::Guard::Force).await?;
    assert!(
        dead_letters(&sys).await?.is_empty(),
        "the letter left the DLQ"
    );
    let done = sys.wait_terminal(&placed.order_id, WAIT).await?;
    assert_eq!(state(&done), OrderState::Confirmed);
    reservation.close().await;
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_event_is_dead_lettered_still_ends_by_its_deadline() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.bus.max_deliver = 2;
        cfg.inventory.bus.nak_base_delay_ms = 50;
        cfg.order.order.deadline_secs = 5;
        cfg.order.order.sweep_interval_ms = 100;
    })
    .await?;
    sys.seed_product("POISON", 100, 10).await?;
    sys.top_up("quinn", 10_000).await?;
    sqlx::query(BLOCK_SKU).execute(&sys.db).await?;
    let o = sys
        .place(order_request("quinn", &[("POISON", 2)], None))
        .await?;
    let done = sys.wait_terminal(&o.order_id, WAIT).await?;
    assert_eq!(state(&done), OrderState::Cancelled);
    assert_eq!(reason(&done), CancelReason::Timeout);
    eventually("the failing event to reach the DLQ", WAIT, || async {
        Ok(dead_letters(&sys).await?.len() == 1)
    })
    .await?;
    sys.quiesce(WAIT).await?;
    // What Redis held for the order before Postgres refused was given back.
    let poison = sys.stock("POISON").await?;
    assert_eq!((poison.available, poison.reserved), (10, 0));
    sys.redis_settles("POISON", 10, WAIT).await?;
    let violations = sys.violations().await?;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].starts_with("dead letters: 1 wait in"),
        "the letter is reported until an operator sees to it: {violations:?}"
    );
    sqlx::query(UNBLOCK_SKU).execute(&sys.db).await?;
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_events_and_events_without_an_order_are_dead_lettered_at_once_and_the_rest_keeps_flowing()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("rae", 10_000).await?;
    let meta = EventMeta::new(Uuid::now_v7(), None);
    sys.js
        .publish_with_headers(
            sys.namespace().subject(EventType::OrderPlaced),
            meta.to_headers(EventType::OrderPlaced),
            vec![0xff, 0xfe, 0xfd, 0x00].into(),
        )
        .await?
        .await?;
    // A body that decodes, about an order whose id is not a UUID.
    let meta = EventMeta::new(Uuid::now_v7(), None);
    let no_order = SagaEvent::OrderPlaced(saga_shared::proto::events::v1::OrderPlaced {
        order_id: "not-an-order".into(),
        customer_id: "rae".into(),
        lines: Vec::new(),
        slot_id: None,
        placed_at: None,
    });
    sys.js
        .publish_with_headers(
            sys.namespace().subject(EventType::OrderPlaced),
            meta.to_headers(EventType::OrderPlaced),
            no_order.encode().into(),
        )
        .await?
        .await?;
    let o = sys.place(order_request("rae", &[("A", 1)], None)).await?;
    assert_eq!(
        state(&sys.wait_terminal(&o.order_id, WAIT).await?),
        OrderState::Confirmed
    );
    eventually(
        "inventory and reservation to dead-letter both",
        WAIT,
        || async { Ok(dead_letters(&sys).await?.len() == 4) },
    )
    .await?;
    let mut consumers: Vec<(String, bool)> = Vec::new();
    for letter in dead_letters(&sys).await? {
        assert_eq!(
            letter.delivered, "1",
            "not retried: it can never be handled"
        );
        let undecodable = letter.error.contains("undecodable");
        if undecodable {
            assert!(letter.decoded(&sys.namespace()).is_err());
        } else {
            assert!(
                letter.error.contains("order_id: not a UUID"),
                "{}",
                letter.error
            );
        }
        consumers.push((letter.consumer, undecodable));
    }
    consumers.sort();
    assert_eq!(
        consumers,
        [
            ("inventory-svc".to_owned(), false),
            ("inventory-svc".to_owned(), true),
            ("reservation-svc".to_owned(), false),
            ("reservation-svc".to_owned(), true)
        ]
    );
    sys.stop().await
}

/// A message its stream took can always be dead-lettered: one that carries
/// a publish condition for its own stream (`Nats-Expected-Stream`), which
/// the DLQ stream refuses, or one so close to the server's max payload that
/// the letter's added headers take it past. Both used to be put back every
/// 5 s for ever, the DLQ refusing each copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_dlq_would_refuse_as_it_came_is_still_dead_lettered() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let ns = sys.namespace();
    let subject = ns.subject(EventType::OrderPlaced);
    let conditional = EventMeta::new(Uuid::now_v7(), None);
    let mut headers = conditional.to_headers(EventType::OrderPlaced);
    headers.insert(
        "Nats-Expected-Stream",
        ns.stream(StreamKind::Orders).as_str(),
    );
    sys.js
        .publish_with_headers(subject.clone(), headers, vec![0xff].into())
        .await?
        .await?;
    // The biggest body the stream takes with the event's headers: within
    // 16 bytes of the max payload.
    let max_payload = sys.js.client().server_info().max_payload;
    let big = EventMeta::new(Uuid::now_v7(), None);
    let mut size = max_payload;
    loop {
        let message = PublishMessage::build()
            .payload(vec![0xff; size].into())
            .headers(big.to_headers(EventType::OrderPlaced));
        match sys.js.send_publish(subject.clone(), message).await {
            Ok(ack) => {
                ack.await?;
                break;
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => size -= 16,
            Err(e) => return Err(e.into()),
        }
    }
    eventually(
        "inventory and reservation to dead-letter both",
        WAIT,
        || async { Ok(dead_letters(&sys).await?.len() == 4) },
    )
    .await?;
    for letter in dead_letters(&sys).await? {
        let id = letter
            .headers
            .get("Saga-Event-Id")
            .expect("an event id")
            .as_str()
            .to_owned();
        assert!(
            letter.headers.get("Nats-Expected-Stream").is_none(),
            "{:?}",
            letter.headers
        );
        if id == big.event_id.to_string() {
            assert!(letter.payload.is_empty(), "the body is dropped");
            assert_eq!(
                letter
                    .headers
                    .get("Saga-Dlq-Body-Dropped")
                    .map(|v| v.as_str().to_owned()),
                Some(format!("{size} bytes"))
            );
            let refused = dlq::redrive(&sys.js, &ns, letter.seq, dlq::Guard::Force)
                .await
                .expect_err("a letter without its body");
            assert!(refused.to_string().contains("body"), "{refused:#}");
        } else {
            assert_eq!(id, conditional.event_id.to_string());
            assert_eq!(letter.payload.as_ref(), &[0xff]);
        }
    }
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_racing_a_slow_payment_ends_confirmed_or_with_net_charge_zero_never_both()
-> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.payment.gateway.latency_ms = 700;
        cfg.payment.gateway.jitter_ms = 800;
        cfg.order.order.deadline_secs = 1;
        cfg.order.order.sweep_interval_ms = 50;
    })
    .await?;
    sys.seed_product("A", 250, 1_000).await?;
    sys.top_up("sam", 1_000_000).await?;
    let slot = sys.create_slot("late", 100).await?.slot_id;
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(
            sys.place(order_request("sam", &[("A", 2)], Some(&slot)))
                .await?
                .order_id,
        );
    }
    let done = sys.wait_all_terminal(&ids, WAIT).await?;
    sys.quiesce(WAIT).await?;
    let timed_out = done
        .iter()
        .filter(|o| state(o) == OrderState::Cancelled && reason(o) == CancelReason::Timeout)
        .count();
    assert!(timed_out > 0, "some deadlines beat the gateway");
    for o in &done {
        let net: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(CASE kind WHEN 'CHARGE' THEN amount_cents ELSE -amount_cents END), 0)::bigint \
             FROM payment.wallet_ledger WHERE order_id = $1::uuid",
        )
        .bind(&o.order_id)
        .fetch_one(&sys.db)
        .await?;
        match state(o) {
            OrderState::Confirmed => assert_eq!(Some(net), o.total_cents, "{o:?}"),
            _ => assert_eq!(net, 0, "{o:?}"),
        }
    }
    let w = sys.wallet("sam").await?;
    let confirmed = done
        .iter()
        .filter(|o| state(o) == OrderState::Confirmed)
        .count() as i64;
    assert_eq!(w.charged_cents - w.refunded_cents, confirmed * 500);
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_under_load_loses_no_event() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let url = nats.url();
    let sys = TestSystem::start_with(|cfg| {
        for n in cfg.nats_mut() {
            n.url = url.clone();
        }
    })
    .await?;
    sys.seed_product("N", 100, 500).await?;
    sys.top_up("nia", 10_000_000).await?;
    let slot = sys.create_slot("n", 500).await?.slot_id;
    let place = |n: usize| {
        let sys = &sys;
        let slot = slot.clone();
        async move {
            let mut ids = Vec::new();
            for _ in 0..n {
                ids.push(
                    sys.place(order_request("nia", &[("N", 1)], Some(&slot)))
                        .await?
                        .order_id,
                );
            }
            Ok::<_, anyhow::Error>(ids)
        }
    };
    let mut ids = place(40).await?;
    nats.restart().await?;
    ids.extend(place(40).await?);
    nats.restart().await?;
    ids.extend(place(40).await?);
    let done = sys
        .wait_all_terminal(&ids, Duration::from_secs(180))
        .await?;
    assert!(
        done.iter().all(|o| state(o) == OrderState::Confirmed),
        "every order confirmed"
    );
    sys.quiesce(WAIT).await?;
    let n = sys.stock("N").await?;
    assert_eq!((n.sold, n.reserved), (120, 0));
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_reports_every_kind_of_violation() -> anyhow::Result<()> {
    // No deadline sweep during the test: it would repair the stuck order.
    let sys = TestSystem::start_with(|cfg| cfg.order.order.sweep_interval_ms = 3_600_000).await?;
    sys.seed_product("A", 100, 10).await?;
    sys.seed_product("B", 100, 5).await?;
    sys.top_up("tia", 10_000).await?;
    let slot = sys.create_slot("s", 5).await?.slot_id;
    let kept = sys
        .place(order_request("tia", &[("A", 1)], Some(&slot)))
        .await?;
    let dropped = sys
        .place(order_request("tia", &[("A", 100)], Some(&slot)))
        .await?;
    let open = sys.place(order_request("tia", &[("A", 1)], None)).await?;
    let ids = [
        kept.order_id.clone(),
        dropped.order_id.clone(),
        open.order_id.clone(),
    ];
    let done = sys.wait_all_terminal(&ids, WAIT).await?;
    assert_eq!(reason(&done[1]), CancelReason::OutOfStock);
    sys.quiesce(WAIT).await?;
    let auditor = Auditor::with_redis(&sys.config, sys.redis.clone()).await?;
    let clean = auditor.audit().await?;
    assert!(clean.is_clean(), "{}", clean.render());
    assert_eq!(
        (clean.skus, clean.wallets, clean.slots, clean.orders),
        (2, 1, 1, 3)
    );

    // Break each invariant, behind the services' backs.
    let breakage = [
        "UPDATE inventory.products SET reserved = reserved + 1 WHERE sku = 'A'",
        "INSERT INTO payment.wallet_ledger (customer_id, kind, amount_cents) VALUES ('tia', 'TOPUP', 1)",
        "DROP INDEX payment.one_charge_per_order",
        "ALTER TABLE reservation.slots DROP CONSTRAINT slot_is_not_overbooked",
        "UPDATE reservation.slots SET confirmed = confirmed + 5",
        "UPDATE orders.orders SET state = 'PENDING', deadline_at = now() - interval '10 days' WHERE id = $1::uuid",
        "INSERT INTO orders.outbox (event_id, event_type, payload) VALUES (gen_random_uuid(), 'orders.unknown', '\\x00')",
        "UPDATE inventory.holds SET unit_price_cents = unit_price_cents + 1 WHERE order_id = $1::uuid",
        "UPDATE orders.orders SET total_cents = total_cents + 1 WHERE id = $1::uuid",
    ];
    for sql in breakage {
        let q = sqlx::query(sqlx::AssertSqlSafe(sql));
        let q = match sql {
            _ if sql.starts_with("UPDATE orders.orders SET state") => q.bind(&open.order_id),
            _ if sql.contains("$1") => q.bind(&kept.order_id),
            _ => q,
        };
        q.execute(&sys.db).await?;
    }
    // Redis loses a counter (flushed), and a letter lands in the DLQ.
    let _: i64 =
        fred::prelude::KeysInterface::del(sys.redis.next(), format!("inv:{{{}:B}}", sys.ns))
            .await?;
    sys.js
        .publish(
            sys.namespace().dlq_subject("drill", "X"),
            bytes::Bytes::from_static(b"?"),
        )
        .await?
        .await?;
    sqlx::query(
        "INSERT INTO payment.wallet_ledger (customer_id, order_id, kind, amount_cents) \
         SELECT customer_id, order_id, 'CHARGE', amount_cents FROM payment.payments WHERE order_id = $1::uuid",
    )
    .bind(&kept.order_id)
    .execute(&sys.db)
    .await?;
    sqlx::query("UPDATE inventory.order_holds SET state = 'RESERVED' WHERE order_id = $1::uuid")
        .bind(&dropped.order_id)
        .execute(&sys.db)
        .await?;
    sqlx::query("UPDATE reservation.bookings SET state = 'HELD' WHERE order_id = $1::uuid")
        .bind(&dropped.order_id)
        .execute(&sys.db)
        .await?;
    // A hold left behind its order's decision (which every count agrees
    // with, so only the hold's own state shows it).
    sqlx::query("UPDATE inventory.holds SET state = 'RESERVED' WHERE order_id = $1::uuid")
        .bind(&open.order_id)
        .execute(&sys.db)
        .await?;

    let report = auditor.audit().await?;
    let found: std::collections::BTreeSet<Check> =
        report.violations.iter().map(|v| v.check).collect();
    assert!(
        report.violations.iter().any(
            |v| v.check == Check::RedisMatchesPostgres && v.detail.starts_with("B: no counter")
        ),
        "an emptied Redis is reported:\n{}",
        report.render()
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.check == Check::HoldsMatchOrders
                && v.detail.contains("is RESERVED, the decision is COMMITTED")),
        "a hold left open behind its decision is reported:\n{}",
        report.render()
    );
    for check in Check::ALL {
        assert!(
            found.contains(&check),
            "{} not reported:\n{}",
            check.name(),
            report.render()
        );
    }
    auditor.close().await;
    sys.stop().await
}
