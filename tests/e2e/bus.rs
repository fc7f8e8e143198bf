//! The delivery contract between JetStream and a service's consumer: the
//! durable follows the configuration, nothing is dropped at the delivery
//! bound, and a message in a consumer's hands is not redelivered behind its
//! back.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, pull};
use saga_shared::bus::{Namespace, StreamKind};
use saga_shared::proto::order::v1::OrderState;
use saga_shared::service::Service;
use saga_tests::{TestSystem, eventually, metric_sum, order_request, state};
use sagactl::dlq;

use crate::WAIT;

async fn consumer_info(
    sys: &TestSystem,
    ns: &Namespace,
    stream: StreamKind,
    durable: &str,
) -> anyhow::Result<consumer::Info> {
    let stream = sys.js.get_stream(ns.stream(stream)).await?;
    Ok(stream.consumer_info(durable).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_restarted_with_other_settings_takes_them_and_refuses_what_cannot_change()
-> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.payment.bus.ack_wait_secs = 4;
        cfg.payment.bus.concurrency = 300;
        // max_ack_pending is 4 x concurrency x batch size.
        cfg.payment.bus.batch_size = 1;
    })
    .await?;
    let ns = sys.namespace();
    let before = consumer_info(&sys, &ns, StreamKind::Orders, "payment-svc").await?;
    assert_eq!(before.config.ack_wait, std::time::Duration::from_secs(4));
    assert_eq!(before.config.max_ack_pending, 1200);
    assert!(
        before.config.max_deliver <= 0,
        "the server's own bound is unlimited: {}",
        before.config.max_deliver
    );

    // The same deployment restarted with other settings (a second instance
    // of payment-svc, as a rolling restart would start it).
    let mut cfg = sys.config.payment.clone();
    cfg.grpc.listen.set_port(0);
    cfg.admin.listen.set_port(0);
    cfg.bus.ack_wait_secs = 9;
    cfg.bus.concurrency = 400;
    let second = payment_svc::PaymentSvc::build(cfg.clone()).await?;
    let after = consumer_info(&sys, &ns, StreamKind::Orders, "payment-svc").await?;
    assert_eq!(after.config.ack_wait, std::time::Duration::from_secs(9));
    assert_eq!(after.config.max_ack_pending, 1600);
    drop(second);

    // A durable that differs in what the server cannot change in place (a
    // narrower subject filter, left by hand) stops the start with an error
    // that names the field.
    let other = Namespace::new(&format!("{}x", sys.ns))?;
    let mut nats = sys.config.payment.nats.clone();
    nats.max_age_hours = 1;
    saga_shared::bus::streams::ensure_streams(&sys.js, &other, &nats).await?;
    let stream = sys.js.get_stream(other.stream(StreamKind::Orders)).await?;
    stream
        .create_consumer(pull::Config {
            durable_name: Some("payment-svc".into()),
            ack_policy: AckPolicy::Explicit,
            filter_subject: format!("{other}.orders.placed"),
            ..Default::default()
        })
        .await?;
    cfg.namespace = other.as_str().to_owned();
    // Another namespace keeps its state in a schema of its own.
    cfg.database.schema = "payment_other".into();
    let refused = payment_svc::PaymentSvc::build(cfg).await;
    saga_shared::bus::streams::delete_streams(&sys.js, &other).await;
    let error = match refused {
        Ok(_) => panic!("started on a durable with another subject filter"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("filter_subject") && error.contains(&format!("{other}.orders.placed")),
        "{error}"
    );
    sys.stop().await
}

/// Fails inventory's hold on one SKU until lifted (an unexpected error: a
/// database rule refusing the change).
const BLOCK_SKU: &str =
    "ALTER TABLE inventory.holds ADD CONSTRAINT bus_block CHECK (sku <> 'POISON')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_at_its_delivery_bound_is_kept_until_its_dead_letter_is_stored()
-> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.bus.max_deliver = 2;
        cfg.inventory.bus.nak_base_delay_ms = 50;
    })
    .await?;
    let ns = sys.namespace();
    sys.seed_product("POISON", 100, 10).await?;
    sqlx::query(BLOCK_SKU).execute(&sys.db).await?;
    // The DLQ is gone and its subjects refuse writes: a full stream of
    // another name holds them (as a DLQ that its server cannot store to).
    sys.js.delete_stream(ns.dlq_stream()).await?;
    let blocker = format!("{}_BLOCKER", ns.dlq_stream());
    sys.js
        .create_stream(async_nats::jetstream::stream::Config {
            name: blocker.clone(),
            subjects: vec![ns.dlq_subjects()],
            max_messages: 1,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await?;
    sys.js
        .publish(ns.dlq_subject("filler", "filler"), "full".into())
        .await?
        .await?;

    sys.place(order_request("pat", &[("POISON", 1)], None))
        .await?;
    // The only message inventory gets is that order's placement: it keeps
    // being delivered past the bound of 2 while its dead letter cannot be
    // written, instead of being dropped by the server at delivery 2.
    eventually("delivery 4 of the placement", WAIT, || async {
        let info = consumer_info(&sys, &ns, StreamKind::Orders, "inventory-svc").await?;
        Ok(info.delivered.consumer_sequence >= 4)
    })
    .await?;
    assert!(dlq::list(&sys.js, &ns).await.is_err(), "no DLQ yet");

    sys.js.delete_stream(&blocker).await?;
    let nats = sys.config.inventory.nats.clone();
    saga_shared::bus::streams::ensure_streams(&sys.js, &ns, &nats).await?;
    eventually("the dead letter to be stored", WAIT, || async {
        Ok(dlq::list(&sys.js, &ns).await?.len() == 1)
    })
    .await?;
    let letter = &dlq::list(&sys.js, &ns).await?[0];
    assert_eq!(letter.consumer, "inventory-svc");
    assert!(letter.error.contains("bus_block"), "{}", letter.error);
    assert!(
        letter.delivered.parse::<i64>()? >= 2,
        "{}",
        letter.delivered
    );
    eventually("the consumer to let go of it", WAIT, || async {
        let info = consumer_info(&sys, &ns, StreamKind::Orders, "inventory-svc").await?;
        Ok(info.num_pending == 0 && info.num_ack_pending == 0)
    })
    .await?;
    sqlx::query("ALTER TABLE inventory.holds DROP CONSTRAINT bus_block")
        .execute(&sys.db)
        .await?;
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_in_a_consumers_hands_are_not_redelivered_behind_its_back()
-> anyhow::Result<()> {
    // Payment handles one event at a time, each taking 300 ms at the card
    // gateway, with an ack wait of 1 s: the twelfth charge waits over 3 s
    // in payment's hands before its turn.
    let sys = TestSystem::start_with(|cfg| {
        cfg.payment.gateway.latency_ms = 300;
        cfg.payment.gateway.jitter_ms = 0;
        cfg.payment.bus.concurrency = 1;
        cfg.payment.bus.ack_wait_secs = 1;
        cfg.payment.bus.fetch_size = 64;
    })
    .await?;
    let ns = sys.namespace();
    sys.seed_product("A", 100, 100).await?;
    sys.top_up("pia", 100_000).await?;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(
            sys.place(order_request("pia", &[("A", 1)], None))
                .await?
                .order_id,
        );
    }
    for o in sys.wait_all_terminal(&ids, WAIT).await? {
        assert_eq!(state(&o), OrderState::Confirmed);
    }
    sys.quiesce(WAIT).await?;
    // Every message of the stream went to payment exactly once.
    let mut orders = sys.js.get_stream(ns.stream(StreamKind::Orders)).await?;
    let messages = orders.info().await?.state.messages;
    let info = consumer_info(&sys, &ns, StreamKind::Orders, "payment-svc").await?;
    assert_eq!(
        info.delivered.consumer_sequence, messages,
        "deliveries to payment-svc beyond one per message were redeliveries"
    );
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_follow_a_quiet_spell_are_delivered_once_to_every_consumer()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let ns = sys.namespace();
    sys.seed_product("Q", 100, 100).await?;
    sys.top_up("quin", 100_000).await?;
    let slot = sys.create_slot("q", 10).await?.slot_id;
    for _ in 0..3 {
        // The fault being injected: consumers idle for longer than a pull
        // request's idle heartbeat and than an ack wait, then work arrives.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        let o = sys
            .place(order_request("quin", &[("Q", 1)], Some(&slot)))
            .await?;
        assert_eq!(
            state(&sys.wait_terminal(&o.order_id, WAIT).await?),
            OrderState::Confirmed
        );
    }
    sys.quiesce(WAIT).await?;
    for (stream, durable) in saga_tests::CONSUMERS {
        let messages = sys
            .js
            .get_stream(ns.stream(stream))
            .await?
            .info()
            .await?
            .state
            .messages;
        let info = consumer_info(&sys, &ns, stream, durable).await?;
        assert_eq!(
            info.delivered.consumer_sequence, messages,
            "{durable} on {stream:?}: deliveries beyond one per message were redeliveries"
        );
    }
    sys.stop().await
}

/// Inside a consumer's batch, outbox rows are held back and written with
/// one statement before the commit: none is written early, none is lost,
/// and their ids (the relay's publishing order) follow the enqueue order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_held_back_in_a_batch_are_written_at_the_flush_in_enqueue_order()
-> anyhow::Result<()> {
    use saga_shared::bus::outbox::{flush_held, holding_back};
    use saga_shared::bus::{EventMeta, Outbox, SagaEvent};
    use saga_shared::proto::events::v1 as ev;
    use sqlx::Connection;

    let sys = TestSystem::start().await?;
    let mut conn = saga_tests::connect_to_schema(&sys.config.order.database).await?;
    let mut tx = conn.begin().await?;
    let order = uuid::Uuid::now_v7();
    let events: Vec<(EventMeta, SagaEvent)> = (0..5)
        .map(|i| {
            let event = SagaEvent::OrderReserved(ev::OrderReserved {
                order_id: order.to_string(),
                customer_id: format!("held-{i}"),
                amount_cents: i,
            });
            (EventMeta::new(order, None), event)
        })
        .collect();
    let ids: Vec<uuid::Uuid> = events.iter().map(|(m, _)| m.event_id).collect();
    let count = "SELECT count(*) FROM outbox WHERE event_id = ANY($1)";

    holding_back(async {
        for (meta, event) in &events {
            Outbox::enqueue(&mut tx, meta, event).await?;
        }
        let early: i64 = sqlx::query_scalar(count)
            .bind(&ids)
            .fetch_one(&mut *tx)
            .await?;
        assert_eq!(early, 0, "nothing is written before the flush");
        flush_held(&mut tx).await?;
        anyhow::Ok(())
    })
    .await?;
    let written: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM outbox WHERE event_id = ANY($1) ORDER BY id")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
    assert_eq!(written, ids, "every row, in the order enqueued");

    // Outside a batch a row is written at once.
    let (meta, event) = (EventMeta::new(order, None), events[0].1.clone());
    Outbox::enqueue(&mut tx, &meta, &event).await?;
    let single: i64 = sqlx::query_scalar(count)
        .bind(vec![meta.event_id])
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(single, 1);
    // Rolled back: the relay never sees these made-up events.
    tx.rollback().await?;
    sys.stop().await
}

/// Outbox rows of an event type this build does not know (written by a
/// newer build before a rollback) stay in the outbox for a build that knows
/// them, and do not hold back the rows behind them. A relay batch used to
/// take the oldest rows whatever their type, so a batch's worth of them
/// stopped every publication of the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_of_an_unknown_event_type_do_not_hold_back_the_rest() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| cfg.order.bus.relay_batch_size = 8).await?;
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("una", 1_000).await?;
    sqlx::query(
        "INSERT INTO orders.outbox (event_id, event_type, payload) \
         SELECT gen_random_uuid(), 'orders.future', '\\x00' FROM generate_series(1, 20)",
    )
    .execute(&sys.db)
    .await?;
    let placed = sys.place(order_request("una", &[("A", 1)], None)).await?;
    let done = sys.wait_terminal(&placed.order_id, WAIT).await?;
    assert_eq!(state(&done), OrderState::Confirmed);
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders.outbox WHERE published_at IS NULL AND event_type = 'orders.future'",
    )
    .fetch_one(&sys.db)
    .await?;
    assert_eq!(left, 20, "kept for a build that knows them");
    sys.stop().await
}

/// The delivery bound counts the unexpected failures of an event, not its
/// deliveries: an event that failed transiently (a conflict, an outage) for
/// as many deliveries as the bound, and then unexpectedly once, is retried,
/// not dead-lettered at once. It used to go to the DLQ on that first
/// unexpected failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_failed_transiently_still_gets_its_retries_for_unexpected_failures()
-> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        let bus = &mut cfg.inventory.bus;
        bus.max_deliver = 3;
        bus.batch_size = 1;
        bus.nak_base_delay_ms = 20;
        bus.nak_max_delay_ms = 50;
    })
    .await?;
    sys.seed_product("FLAKY", 100, 10).await?;
    sys.top_up("fay", 1_000).await?;
    // Inventory's first three attempts to record the hold collide
    // (serialization failure: transient), its fourth fails unexpectedly,
    // and the rest go through.
    for sql in [
        "CREATE SEQUENCE inventory.flaky_attempts",
        "CREATE FUNCTION inventory.flaky() RETURNS trigger LANGUAGE plpgsql AS $$ \
         DECLARE n bigint := nextval('inventory.flaky_attempts'); BEGIN \
           IF n <= 3 THEN RAISE EXCEPTION 'collided' USING ERRCODE = '40001'; END IF; \
           IF n = 4 THEN RAISE EXCEPTION 'a one-off failure'; END IF; \
           RETURN NEW; END $$",
        "CREATE TRIGGER flaky BEFORE INSERT ON inventory.holds \
         FOR EACH ROW WHEN (NEW.sku = 'FLAKY') EXECUTE FUNCTION inventory.flaky()",
    ] {
        sqlx::query(sql).execute(&sys.db).await?;
    }
    let placed = sys
        .place(order_request("fay", &[("FLAKY", 1)], None))
        .await?;
    let done = sys.wait_terminal(&placed.order_id, WAIT).await?;
    assert_eq!(state(&done), OrderState::Confirmed, "{done:?}");
    let attempts: i64 = sqlx::query_scalar("SELECT last_value FROM inventory.flaky_attempts")
        .fetch_one(&sys.db)
        .await?;
    assert!(attempts >= 5, "{attempts} attempts");
    assert!(
        dlq::list(&sys.js, &sys.namespace())
            .await
            .map_or(true, |l| l.is_empty())
    );
    sys.stop().await
}

/// Two messages that a stream stored at the same sequence (the stream was
/// deleted and made again, so its sequences started over) each get their
/// dead letter: the letter's message id also names when the message was
/// stored. It named only the consumer, stream and sequence, so the DLQ's
/// duplicate window took the second letter for the first, and that
/// message was terminated with no copy anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_at_a_reused_sequence_each_get_their_dead_letter() -> anyhow::Result<()> {
    use saga_shared::bus::dlq::{Origin, dead_letter};
    let sys = TestSystem::start().await?;
    let ns = sys.namespace();
    let message = |body: &'static [u8]| async_nats::Message {
        subject: "drill.subject".into(),
        reply: None,
        payload: bytes::Bytes::from_static(body),
        headers: None,
        status: None,
        description: None,
        length: body.len(),
    };
    let stored = chrono::Utc::now();
    for (body, at) in [
        (&b"first"[..], stored),
        (&b"second"[..], stored + chrono::TimeDelta::seconds(3)),
    ] {
        let origin = Origin {
            consumer: "drill",
            stream: "RECREATED",
            stream_seq: 1,
            stored_at: at,
            delivered: 1,
            replay: false,
        };
        dead_letter(&sys.js, &ns, &message(body), origin, "drill")
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let bodies: Vec<bytes::Bytes> = dlq::list(&sys.js, &ns)
        .await?
        .into_iter()
        .map(|l| l.payload)
        .collect();
    assert_eq!(bodies, [&b"first"[..], &b"second"[..]]);
    sys.stop().await
}

/// A graceful stop publishes everything committed before it, not only the
/// first batch of it. The relay's last round used to take one batch: with a
/// backlog larger than the batch (after a NATS outage, say), the rest waited
/// for the next start of the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_publishes_a_backlog_larger_than_one_relay_batch() -> anyhow::Result<()> {
    use saga_shared::bus::{EventMeta, Outbox, SagaEvent};
    use saga_shared::proto::events::v1 as ev;
    use saga_tests::processes::{Ended, Service as Process};
    use sqlx::Connection;

    const BATCH: i64 = 8;
    const BACKLOG: usize = 5 * BATCH as usize + 3;
    let mut sys = TestSystem::start_processes(|cfg| {
        cfg.order.bus.relay_batch_size = BATCH;
        // Rows written outside the service do not wake its relay, and
        // it does not poll for them before the stop.
        cfg.order.bus.relay_poll_ms = 24 * 3_600 * 1_000;
    })
    .await?;
    // One order through, so the relay has run its rounds and waits.
    sys.one_confirmed_order("A", "bea", WAIT).await?;
    let unpublished = "SELECT count(*) FROM orders.outbox WHERE published_at IS NULL";
    eventually("the order's events published", WAIT, || async {
        let left: i64 = sqlx::query_scalar(unpublished).fetch_one(&sys.db).await?;
        Ok(left == 0)
    })
    .await?;

    let mut conn = saga_tests::connect_to_schema(&sys.config.order.database).await?;
    let mut tx = conn.begin().await?;
    for _ in 0..BACKLOG {
        let order = uuid::Uuid::now_v7();
        let event = SagaEvent::OrderCancelled(ev::OrderCancelled {
            order_id: order.to_string(),
            ..Default::default()
        });
        Outbox::enqueue(&mut tx, &EventMeta::new(order, None), &event).await?;
    }
    tx.commit().await?;

    sys.processes().terminate(Process::Order);
    let ended = sys.processes().wait_ended(Process::Order, WAIT).await?;
    assert_eq!(ended, Ended::Code(0), "order-svc stopped cleanly");
    let left: i64 = sqlx::query_scalar(unpublished).fetch_one(&sys.db).await?;
    assert_eq!(left, 0, "a backlog of {BACKLOG} rows published by the stop");
    sys.stop().await
}

/// A batch redone one event at a time (one of its events failed for good)
/// counts each event's business metrics once: what the rolled-back batch
/// counted does not stand. `payment_captured_cents_total` used to count the
/// charge of the batch that rolled back and again the charge that stood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_redone_one_event_at_a_time_counts_each_charge_once() -> anyhow::Result<()> {
    use saga_shared::bus::SagaEvent;
    use saga_shared::proto::events::v1 as ev;
    use saga_tests::processes::{Ended, Service as Process};

    let mut sys = TestSystem::start_processes(|_| {}).await?;
    sys.top_up("mia", 1_000).await?;
    // Both events wait in the stream while payment is stopped, so that its
    // first fetch takes them as one batch.
    sys.processes().terminate(Process::Payment);
    let ended = sys.processes().wait_ended(Process::Payment, WAIT).await?;
    assert_eq!(ended, Ended::Code(0));
    let reserved = |amount_cents| {
        let order = uuid::Uuid::now_v7();
        let event = SagaEvent::OrderReserved(ev::OrderReserved {
            order_id: order.to_string(),
            customer_id: "mia".into(),
            amount_cents,
        });
        (order, event)
    };
    for amount in [100, -1] {
        let (order, event) = reserved(amount);
        sys.publish_event(order, event).await?;
    }
    sys.processes().start(Process::Payment, &[]).await?;
    let admin = sys.processes().instances[&Process::Payment.into()].admin;
    eventually(
        "the batch redone one event at a time",
        WAIT,
        || async move {
            Ok(
                metric_sum(admin, "saga_batches_redone_total", &[("kind", "permanent")]).await?
                    >= 1.0,
            )
        },
    )
    .await?;
    // The redo applies the charge after the batch's failure is counted:
    // wait for it, and for its metric, recorded after its commit.
    eventually("the charge applied and counted", WAIT, || async {
        let balance = sys.wallet("mia").await?.balance_cents;
        let captured = metric_sum(admin, "payment_captured_cents_total", &[]).await?;
        Ok(balance == 900 && captured >= 100.0)
    })
    .await?;
    assert_eq!(sys.wallet("mia").await?.balance_cents, 900, "charged once");
    let captured = metric_sum(admin, "payment_captured_cents_total", &[]).await?;
    assert_eq!(captured, 100.0, "the charge counted once");
    sys.stop().await
}

/// A stream deleted while the services run (by mistake, or lost with its
/// server's storage) is made again by the services that read it, as a
/// restart would, and sagas go on with new events. Its readers used to
/// retry "consumer not available" for ever, and order-svc's relay could
/// not publish to it, until someone restarted a service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_while_the_services_run_is_made_again_by_its_readers() -> anyhow::Result<()>
{
    let sys = TestSystem::start().await?;
    sys.one_confirmed_order("LOST1", "lou", WAIT).await?;
    let ns = sys.namespace();
    sys.js.delete_stream(ns.stream(StreamKind::Orders)).await?;
    sys.one_confirmed_order("LOST2", "lou", Duration::from_secs(60))
        .await?;
    let info = consumer_info(&sys, &ns, StreamKind::Orders, "payment-svc").await?;
    assert!(info.delivered.stream_sequence >= 1, "{info:?}");
    sys.stop().await
}

/// A durable lost while its service runs (deleted by hand, or an R1
/// consumer on a failed node) is made again from the stream's start, and
/// the events it had applied come again as first deliveries. They are now
/// recognised from the inbox before anything is prepared. They used to be
/// prepared again (payment asked the card gateway again for every old
/// charge), then refused by the apply transaction's inbox insert, each
/// batch of them redone one event at a time, while live sagas queued
/// behind the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_made_again_knows_what_it_applied_before_preparing_it() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("AGAIN", 100, 100).await?;
    sys.top_up("ada", 100_000).await?;
    let mut placed = Vec::new();
    for _ in 0..24 {
        placed.push(
            sys.place(order_request("ada", &[("AGAIN", 1)], None))
                .await?,
        );
    }
    for order in &placed {
        let done = sys.wait_terminal(&order.order_id, WAIT).await?;
        assert_eq!(state(&done), OrderState::Confirmed);
    }
    sys.quiesce(WAIT).await?;
    let admin = sys.payment.admin;
    let payment = [("service", "payment-svc")];
    let redone = || metric_sum(admin, "saga_batches_redone_total", &payment);
    let duplicates = || {
        metric_sum(
            admin,
            "saga_events_handled_total",
            &[("service", "payment-svc"), ("outcome", "duplicate")],
        )
    };
    let (redone_before, duplicates_before) = (redone().await?, duplicates().await?);

    let ns = sys.namespace();
    let orders = sys.js.get_stream(ns.stream(StreamKind::Orders)).await?;
    orders.delete_consumer("payment-svc").await?;
    eventually(
        "the old charges delivered again and settled",
        WAIT,
        || async { Ok(duplicates().await? - duplicates_before >= 24.0) },
    )
    .await?;
    assert_eq!(
        redone().await?,
        redone_before,
        "no batch of old events failed and was redone one at a time"
    );
    assert_eq!(
        sys.wallet("ada").await?.balance_cents,
        100_000 - 24 * 100,
        "each order charged once"
    );
    sys.one_confirmed_order("AGAIN2", "ada", WAIT).await?;
    sys.stop().await
}

/// A DLQ deleted while the services run is made again by the first service
/// that has a dead letter to store, as a restart would. The letter used to
/// wait for someone to restart a service, its message redelivered every
/// 5 s and an error logged each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_deleted_while_the_services_run_is_made_again_for_the_next_letter()
-> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.inventory.bus.max_deliver = 2;
        cfg.inventory.bus.nak_base_delay_ms = 50;
    })
    .await?;
    let ns = sys.namespace();
    sys.seed_product("POISON", 100, 10).await?;
    sqlx::query(BLOCK_SKU).execute(&sys.db).await?;
    sys.js.delete_stream(ns.dlq_stream()).await?;
    sys.place(order_request("pia", &[("POISON", 1)], None))
        .await?;
    eventually(
        "the dead letter to be stored",
        Duration::from_secs(60),
        || async {
            Ok(dlq::list(&sys.js, &ns)
                .await
                .is_ok_and(|letters| letters.len() == 1))
        },
    )
    .await?;
    let letter = &dlq::list(&sys.js, &ns).await?[0];
    assert_eq!(letter.consumer, "inventory-svc");
    assert!(letter.error.contains("bus_block"), "{}", letter.error);
    sqlx::query("ALTER TABLE inventory.holds DROP CONSTRAINT bus_block")
        .execute(&sys.db)
        .await?;
    sys.stop().await
}
