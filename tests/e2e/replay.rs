//! Recovery by replay (issue 9): checkpoints.

use saga_shared::bus::checkpoint::Checkpoint;
use saga_shared::bus::consumer::FailureKind;
use saga_shared::bus::dlq::headers as dlq_headers;
use saga_shared::bus::{EventMeta, EventType, StreamKind};
use saga_shared::proto::order::v1::OrderState;
use saga_tests::{TestSystem, eventually, order_request, state};
use sagactl::replay;
use uuid::Uuid;

use crate::WAIT;

async fn checkpoint_of(sys: &TestSystem, service: &str) -> anyhow::Result<Checkpoint> {
    let mut all = replay::status(&sys.config, Some(service)).await?;
    anyhow::ensure!(all.len() == 1, "{service} reads one stream: {all:?}");
    Ok(all.remove(0).checkpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_the_highest_contiguous_applied_position_not_the_highest_seen()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("cam", 10_000).await?;
    let orders_stream = sys.namespace().stream(StreamKind::Orders);
    let last_seq = |sys: &TestSystem| {
        let js = sys.js.clone();
        let name = orders_stream.clone();
        async move {
            let mut s = js.get_stream(&name).await?;
            anyhow::Ok(s.info().await?.state.last_sequence)
        }
    };

    // Every order's events handled: the checkpoint reaches the stream's end
    // as it was once the orders ended (an orders.confirmed may still be on
    // its way then, so at least that far).
    for _ in 0..3 {
        let o = sys.place(order_request("cam", &[("A", 1)], None)).await?;
        assert_eq!(
            state(&sys.wait_terminal(&o.order_id, WAIT).await?),
            OrderState::Confirmed
        );
    }
    let end = last_seq(&sys).await?;
    eventually("payment's checkpoint to reach the end", WAIT, || async {
        let c = checkpoint_of(&sys, "payment").await?;
        Ok(c.seq >= end && c.gap.is_none())
    })
    .await?;

    // An event payment handles that never reaches its inbox (it cannot be
    // decoded, so it is dead-lettered), then more orders that it does handle.
    let meta = EventMeta::new(Uuid::now_v7(), None);
    let poison = sys
        .js
        .publish_with_headers(
            sys.namespace().subject(EventType::OrderReserved),
            meta.to_headers(EventType::OrderReserved),
            vec![0xff, 0x00].into(),
        )
        .await?
        .await?
        .sequence;
    for _ in 0..2 {
        let o = sys.place(order_request("cam", &[("A", 1)], None)).await?;
        assert_eq!(
            state(&sys.wait_terminal(&o.order_id, WAIT).await?),
            OrderState::Confirmed
        );
    }
    let end = last_seq(&sys).await?;
    assert!(end > poison + 1, "events were applied after the gap");

    // Payment's checkpoint stops just before the gap, however far it applied.
    let payment = checkpoint_of(&sys, "payment").await?;
    assert_eq!(payment.seq, poison - 1, "{payment:?}");
    let gap = payment.gap.clone().expect("the gap is named");
    assert_eq!(
        (gap.seq, gap.event_type, gap.event_id),
        (poison, EventType::OrderReserved, Some(meta.event_id))
    );
    let applied_after: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.processed_events WHERE consumer = 'payment-svc' AND stream_seq > $1",
        sys.config.payment.database.schema
    )))
    .bind(poison as i64)
    .fetch_one(&sys.db)
    .await?;
    assert!(applied_after > 0, "payment applied events past the gap");
    // Asking again does not move it: the gap is still there.
    assert_eq!(checkpoint_of(&sys, "payment").await?.seq, poison - 1);

    // Inventory does not handle orders.reserved: the same message is not a
    // gap for it, and its checkpoint goes on to the end.
    eventually("inventory's checkpoint to reach the end", WAIT, || async {
        let c = checkpoint_of(&sys, "inventory").await?;
        Ok(c.seq >= end && c.gap.is_none())
    })
    .await?;

    // The checkpoint lives in the service's schema.
    let stored: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT seq FROM {}.replay_checkpoints WHERE consumer = 'payment-svc' AND stream = $1",
        sys.config.payment.database.schema
    )))
    .bind(&orders_stream)
    .fetch_one(&sys.db)
    .await?;
    assert_eq!(stored as u64, poison - 1);

    let table = replay::render(&replay::status(&sys.config, None).await?);
    assert!(table.contains("payment-svc"), "{table}");
    assert!(
        table.contains(&format!("seq {poison} (orders.reserved")),
        "{table}"
    );
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_moves_its_own_checkpoints_while_it_runs() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        for bus in cfg.buses_mut() {
            bus.checkpoint_interval_secs = 1;
        }
    })
    .await?;
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("dee", 10_000).await?;
    let o = sys.place(order_request("dee", &[("A", 1)], None)).await?;
    assert_eq!(
        state(&sys.wait_terminal(&o.order_id, WAIT).await?),
        OrderState::Confirmed
    );
    let stream = sys.namespace().stream(StreamKind::Orders);
    let end = sys
        .js
        .get_stream(&stream)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let sql = format!(
        "SELECT seq FROM {}.replay_checkpoints WHERE consumer = 'reservation-svc' AND stream = $1",
        sys.config.reservation.database.schema
    );
    // Nobody asks: the service's own consumer walks the stream.
    eventually(
        "reservation's stored checkpoint to reach the end",
        WAIT,
        || async {
            let seq: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&stream)
                .fetch_optional(&sys.db)
                .await?;
            Ok(seq.is_some_and(|s| s >= end as i64))
        },
    )
    .await?;
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_fills_exactly_the_gaps_as_its_dry_run_said_and_a_second_changes_nothing()
-> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.payment.bus.max_deliver = 2;
        cfg.payment.bus.nak_base_delay_ms = 20;
    })
    .await?;
    sys.seed_product("A", 100, 10).await?;
    for customer in ["ola", "blocked"] {
        sys.top_up(customer, 10_000).await?;
    }
    let schema = sys.config.payment.database.schema.clone();
    // Payment cannot record this customer's charges: its orders.reserved is
    // dead-lettered, and payment's inbox has a gap.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {schema}.payments ADD CONSTRAINT drill_block CHECK (customer_id <> 'blocked')"
    )))
    .execute(&sys.db)
    .await?;
    let first = sys.place(order_request("ola", &[("A", 1)], None)).await?;
    let stuck = sys
        .place(order_request("blocked", &[("A", 2)], None))
        .await?;
    eventually(
        "payment to dead-letter the blocked charge",
        WAIT,
        || async {
            let letters = sagactl::dlq::list(&sys.js, &sys.namespace()).await?;
            Ok(letters.iter().any(|l| l.consumer == "payment-svc"))
        },
    )
    .await?;
    let after = sys.place(order_request("ola", &[("A", 1)], None)).await?;
    for o in [&first, &after] {
        assert_eq!(
            state(&sys.wait_terminal(&o.order_id, WAIT).await?),
            OrderState::Confirmed
        );
    }
    assert_eq!(
        state(&sys.get_order(&stuck.order_id).await?),
        OrderState::Reserved
    );
    let request = |start, dry_run| replay::Request {
        service: "payment".into(),
        start,
        to_seq: None,
        stream: None,
        dry_run,
        force: false,
    };
    // The dry run names the one missing event and changes nothing.
    let dry = replay::run(
        &sys.config,
        &request(replay::Start::Checkpoint, true),
        |_, _, _, _| {},
    )
    .await?;
    assert_eq!(dry.len(), 1);
    let would = dry[0].report.missing.clone();
    assert_eq!(would.len(), 1, "{:?}", dry[0].report);
    assert_eq!(would[0].event_type, EventType::OrderReserved);
    assert_eq!(would[0].order_id.to_string(), stuck.order_id);
    assert_eq!(dry[0].report.applied, 0);
    assert_eq!(
        state(&sys.get_order(&stuck.order_id).await?),
        OrderState::Reserved,
        "a dry run changes nothing"
    );

    // A replay while the cause is still there fails on that event and
    // writes it to the DLQ, as a replay's letter beside the consumer's.
    let letters_of = |seq: u64| {
        let (js, ns) = (sys.js.clone(), sys.namespace());
        async move {
            let all = sagactl::dlq::list(&js, &ns).await?;
            anyhow::Ok(
                all.into_iter()
                    .filter(|l| l.consumer == "payment-svc" && l.stream_seq == seq.to_string())
                    .map(|l| l.headers.get(dlq_headers::REPLAY).is_some())
                    .collect::<Vec<bool>>(),
            )
        }
    };
    assert_eq!(
        letters_of(would[0].seq).await?,
        [false],
        "the consumer's letter"
    );
    let failing = replay::run(
        &sys.config,
        &request(replay::Start::Checkpoint, false),
        |_, _, _, _| {},
    )
    .await?;
    let r = &failing[0].report;
    assert_eq!(r.applied, 0, "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    let f = &r.failed[0];
    assert_eq!(
        (f.seq, f.kind, f.dead_lettered),
        (would[0].seq, FailureKind::Failed, true)
    );
    assert!(f.error.contains("drill_block"), "{f:?}");
    assert_eq!(
        letters_of(would[0].seq).await?,
        [false, true],
        "and the replay's"
    );
    let table = replay::render_replay(&failing, false);
    assert!(
        table.contains("dead-lettered (Saga-Dlq-Replay: true)"),
        "{table}"
    );

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {schema}.payments DROP CONSTRAINT drill_block"
    )))
    .execute(&sys.db)
    .await?;

    // The replay applies exactly that event; the saga then ends.
    let real = replay::run(
        &sys.config,
        &request(replay::Start::Checkpoint, false),
        |_, _, _, _| {},
    )
    .await?;
    assert_eq!(real[0].report.missing, would, "what the dry run said");
    assert_eq!(real[0].report.applied, 1);
    assert!(real[0].report.failed.is_empty(), "{:?}", real[0].report);
    assert_eq!(
        state(&sys.wait_terminal(&stuck.order_id, WAIT).await?),
        OrderState::Confirmed
    );
    let balance = sys.wallet("blocked").await?.balance_cents;
    assert_eq!(balance, 10_000 - 2 * 100, "charged once, for two units");

    // Everything again, from the start: all of it is in the inbox by now.
    let again = replay::run(
        &sys.config,
        &request(replay::Start::Seq(1), false),
        |_, _, _, _| {},
    )
    .await?;
    let r = &again[0].report;
    assert_eq!((r.applied, r.failed.len()), (0, 0), "{r:?}");
    assert_eq!(r.already_applied, 3, "the three orders.reserved: {r:?}");
    assert_eq!(r.read, r.already_applied + r.not_for_us);
    assert_eq!(sys.wallet("blocked").await?.balance_cents, balance);
    sys.stop().await
}

/// What a service holds, without random ids and times, as sorted rows.
async fn digest(sys: &TestSystem, service: &str) -> anyhow::Result<Vec<String>> {
    let sql = match service {
        "payment" => {
            let schema = &sys.config.payment.database.schema;
            format!(
                "SELECT 'wallet ' || customer_id || ' ' || balance_cents || ' ' || topped_up_cents \
                   || ' ' || charged_cents || ' ' || refunded_cents FROM {schema}.wallets \
                 UNION ALL SELECT 'payment ' || order_id || ' ' || customer_id || ' ' \
                   || amount_cents || ' ' || state || ' ' || coalesce(failure_reason, '-') \
                   FROM {schema}.payments \
                 UNION ALL SELECT 'ledger ' || customer_id || ' ' || coalesce(order_id::text, '-') \
                   || ' ' || kind || ' ' || amount_cents FROM {schema}.wallet_ledger"
            )
        }
        _ => {
            let schema = &sys.config.inventory.database.schema;
            format!(
                "SELECT 'product ' || sku || ' ' || on_hand || ' ' || reserved || ' ' || sold \
                   FROM {schema}.products \
                 UNION ALL SELECT 'order ' || order_id || ' ' || state || ' ' \
                   || coalesce(reason, '-') FROM {schema}.order_holds \
                 UNION ALL SELECT 'hold ' || order_id || ' ' || sku || ' ' || quantity || ' ' \
                   || unit_price_cents || ' ' || state FROM {schema}.holds"
            )
        }
    };
    let mut rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(&sys.db)
        .await?;
    rows.sort();
    Ok(rows)
}

fn pg(tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(tool).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Orders flow; a dump of `service`'s schema at T0; more orders flow (both
/// ends); the service is killed, its schema dropped and restored from the
/// dump, `reconcile` runs (with the service still down), the service
/// starts again, `sagactl replay <service> --from-checkpoint` runs, and
/// `reconcile` runs once more.
/// Returns what the replay applied; the service's digest must then equal
/// the undisturbed one, and the audit must be clean.
async fn drill(
    service: &str,
    reconcile: impl AsyncFn(&TestSystem) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    use saga_tests::processes::Service;
    let mut sys = TestSystem::start_processes(|_| {}).await?;
    sys.seed_product("A", 100, 1_000).await?;
    sys.top_up("rich", 1_000_000).await?;
    sys.top_up("poor", 250).await?;
    let place_some = |sys: &TestSystem| {
        let clients = sys.clients.clone();
        async move {
            let mut ids = Vec::new();
            for i in 0..6 {
                // Rich orders confirm; each poor one that would overdraw is
                // cancelled for insufficient funds.
                let (who, qty) = if i % 2 == 0 { ("rich", 1) } else { ("poor", 2) };
                let o = clients
                    .place_order(order_request(who, &[("A", qty)], None))
                    .await?;
                ids.push(o.order_id);
            }
            anyhow::Ok(ids)
        }
    };
    let before = place_some(&sys).await?;
    sys.wait_all_terminal(&before, WAIT).await?;
    sys.quiesce(WAIT).await?;

    let (process, database) = match service {
        "payment" => (Service::Payment, sys.config.payment.database.clone()),
        _ => (Service::Inventory, sys.config.inventory.database.clone()),
    };
    let (schema, url) = (database.schema.clone(), database.url.clone());
    let dump = std::env::temp_dir().join(format!("{}-{schema}.dump", sys.ns));
    let dump_path = dump.to_string_lossy().to_string();
    pg(
        "pg_dump",
        &["--dbname", &url, "-n", &schema, "-Fc", "-f", &dump_path],
    )?;

    let after = place_some(&sys).await?;
    let ended = sys.wait_all_terminal(&after, WAIT).await?;
    assert!(
        ended.iter().any(|o| state(o) == OrderState::Cancelled)
            && ended.iter().any(|o| state(o) == OrderState::Confirmed),
        "both ends after T0"
    );
    sys.quiesce(WAIT).await?;
    let undisturbed = digest(&sys, service).await?;

    sys.processes().kill(process);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&sys.db)
        .await?;
    pg("pg_restore", &["--dbname", &url, &dump_path])?;
    std::fs::remove_file(&dump)?;
    assert_ne!(
        digest(&sys, service).await?,
        undisturbed,
        "the restore lost what came after T0"
    );
    reconcile(&sys).await?;
    sys.processes().start(process, &[]).await?;

    let request = replay::Request {
        service: service.into(),
        start: replay::Start::Checkpoint,
        to_seq: None,
        stream: None,
        dry_run: false,
        force: false,
    };
    let replayed = replay::run(&sys.config, &request, |_, _, _, _| {}).await?;
    let r = &replayed[0].report;
    assert!(r.failed.is_empty(), "{r:?}");
    sys.quiesce(WAIT).await?;
    reconcile(&sys).await?;
    assert_eq!(digest(&sys, service).await?, undisturbed);
    let violations = sys.violations().await?;
    assert!(violations.is_empty(), "audit: {violations:?}");
    sys.stop().await?;
    Ok(r.applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_restored_from_a_dump_and_replayed_ends_as_if_nothing_happened()
-> anyhow::Result<()> {
    let applied = drill("payment", async |_| Ok(())).await?;
    // After T0: six orders.reserved, and an orders.cancelled for each of the
    // three poor orders payment refused.
    assert_eq!(applied, 9);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_restored_from_a_dump_rebuilt_and_replayed_ends_as_if_nothing_happened()
-> anyhow::Result<()> {
    let applied = drill("inventory", async |sys| {
        // Redis still counts what came after T0: rebuild every counter from
        // the restored Postgres before inventory takes events again, and
        // after the replay (which held through Postgres, moving epochs).
        let pool =
            saga_shared::db::connect(&sys.config.inventory.database, &inventory_svc::MIGRATIONS)
                .await?;
        let redis = saga_shared::redis::connect(&sys.config.inventory.redis).await?;
        let inventory = inventory_svc::inventory(&sys.config.inventory, pool.clone(), redis, true);
        let report = inventory.reconcile(None).await?;
        assert!(
            !report.fixed.is_empty(),
            "the counter was stale: {report:?}"
        );
        pool.close().await;
        Ok(())
    })
    .await?;
    // After T0: six orders.placed, three orders.confirmed and three
    // orders.cancelled.
    assert_eq!(applied, 12);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_do_not_concern_a_service_leave_no_inbox_row_nor_hold_its_checkpoint()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("nia", 10_000).await?;
    let slot = sys.create_slot("tuesday", 3).await?;
    let without = sys.place(order_request("nia", &[("A", 1)], None)).await?;
    let with = sys
        .place(order_request("nia", &[("A", 1)], Some(&slot.slot_id)))
        .await?;
    for o in [&without, &with] {
        assert_eq!(
            state(&sys.wait_terminal(&o.order_id, WAIT).await?),
            OrderState::Confirmed
        );
    }
    sys.quiesce(WAIT).await?;
    // Reservation applied the slot order's placement and confirmation, and
    // nothing of the order without a slot.
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT correlation_id, event_type FROM reservation.processed_events ORDER BY stream_seq",
    )
    .fetch_all(&sys.db)
    .await?;
    let with_id: Uuid = with.order_id.parse()?;
    assert_eq!(
        rows,
        [
            (with_id, "orders.placed".to_owned()),
            (with_id, "orders.confirmed".to_owned())
        ],
        "without a slot: {}",
        without.order_id
    );
    // Its checkpoint passes what does not concern it.
    let end = sys
        .js
        .get_stream(sys.namespace().stream(StreamKind::Orders))
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let c = checkpoint_of(&sys, "reservation").await?;
    assert_eq!((c.seq, c.gap), (end, None));
    sys.stop().await
}

/// A dry run that cannot read the inbox says so, naming it, rather than
/// listing every event as one a replay would apply (it used to drop the
/// error and answer that the whole range was missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_that_cannot_read_the_inbox_says_so() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("dora", 10_000).await?;
    let placed = sys.place(order_request("dora", &[("A", 1)], None)).await?;
    assert_eq!(
        state(&sys.wait_terminal(&placed.order_id, WAIT).await?),
        OrderState::Confirmed
    );
    let schema = sys.config.payment.database.schema.clone();
    let hide = format!("ALTER TABLE {schema}.processed_events RENAME TO processed_events_hidden");
    let show = format!("ALTER TABLE {schema}.processed_events_hidden RENAME TO processed_events");
    sqlx::query(sqlx::AssertSqlSafe(hide))
        .execute(&sys.db)
        .await?;
    let request = replay::Request {
        service: "payment".into(),
        start: replay::Start::Seq(1),
        to_seq: None,
        stream: None,
        dry_run: true,
        force: false,
    };
    let dry = replay::run(&sys.config, &request, |_, _, _, _| {}).await;
    sqlx::query(sqlx::AssertSqlSafe(show))
        .execute(&sys.db)
        .await?;
    let error = format!("{:#}", dry.expect_err("a dry run without its inbox"));
    assert!(error.contains("processed_events"), "{error}");
    sys.stop().await
}

/// A reader of a stream (what a replay reads with) reads its whole range
/// even through a server that stalls for longer than a fetch waits (the
/// client gives up on a fetch 5 s after its expiry): an empty fetch is not
/// taken for the end of the range while the stream holds more of it. It
/// used to be, and a replay then ended early, successfully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_through_a_stalled_server_reads_its_whole_range() -> anyhow::Result<()> {
    use saga_shared::bus::reader::StreamReader;
    let nats = saga_tests::servers::NatsServer::start().await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "STALL".into(),
        subjects: vec!["stall.>".into()],
        ..Default::default()
    })
    .await?;
    for i in 0..20u32 {
        js.publish(format!("stall.{i}"), i.to_string().into())
            .await?
            .await?;
    }
    let mut reader = StreamReader::open(&js, "STALL", 1, None).await?;
    let mut read: Vec<u64> = Vec::new();
    let seq = |m: &async_nats::jetstream::Message| m.info().map(|i| i.stream_sequence);
    for m in reader.next_batch(5).await? {
        read.push(seq(&m).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    assert_eq!(read, (1..=5).collect::<Vec<_>>());
    // The fault: the server stalls for 7 s, past the 5.5 s the client
    // waits for a fetch of 0.5 s.
    nats.pause()?;
    let stall = tokio::time::sleep(std::time::Duration::from_secs(7));
    let reading = async {
        let mut more = Vec::new();
        loop {
            let batch = reader.next_batch(5).await?;
            if batch.is_empty() {
                return anyhow::Ok(more);
            }
            for m in batch {
                more.push(seq(&m).map_err(|e| anyhow::anyhow!("{e}"))?);
            }
        }
    };
    tokio::pin!(reading);
    let rest = tokio::select! {
        rest = &mut reading => rest,
        () = stall => {
            nats.resume()?;
            reading.await
        }
    }?;
    nats.resume()?;
    read.extend(rest);
    assert_eq!(
        read,
        (1..=20).collect::<Vec<_>>(),
        "the whole range, once, in order"
    );
    Ok(())
}

/// A reader whose consumer the server dropped mid-range (it counts a pull
/// consumer with no pull waiting as inactive, and a replay may handle a
/// batch for longer than the reader's inactivity limit) reads on from where
/// it was. It used to fail the replay part-way with the server's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reader_whose_consumer_the_server_dropped_reads_on() -> anyhow::Result<()> {
    use futures::TryStreamExt;
    use saga_shared::bus::reader::StreamReader;
    let nats = saga_tests::servers::NatsServer::start().await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "DROPPED".into(),
            subjects: vec!["dropped.>".into()],
            ..Default::default()
        })
        .await?;
    for i in 0..20u32 {
        js.publish(format!("dropped.{i}"), i.to_string().into())
            .await?
            .await?;
    }
    let mut reader = StreamReader::open(&js, "DROPPED", 1, None).await?;
    let seq = |m: &async_nats::jetstream::Message| {
        m.info()
            .map(|i| i.stream_sequence)
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let mut read: Vec<u64> = Vec::new();
    for m in reader.next_batch(5).await? {
        read.push(seq(&m)?);
    }
    assert_eq!(read, (1..=5).collect::<Vec<_>>());
    // The fault: the server drops the reader's consumer, as it does one
    // that was inactive for too long.
    let names: Vec<String> = stream.consumer_names().try_collect().await?;
    assert_eq!(names.len(), 1, "the reader's consumer: {names:?}");
    for name in &names {
        stream.delete_consumer(name).await?;
    }
    loop {
        let batch = reader.next_batch(5).await?;
        if batch.is_empty() {
            break;
        }
        for m in batch {
            read.push(seq(&m)?);
        }
    }
    assert_eq!(
        read,
        (1..=20).collect::<Vec<_>>(),
        "the whole range, once, in order"
    );
    Ok(())
}

/// A replay of several streams that fails on a later one still says what it
/// did on those before (their events are applied: the operator must know).
/// It used to answer only the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_fails_on_a_later_stream_reports_the_streams_it_replayed()
-> anyhow::Result<()> {
    // Separate processes: order-svc, the one reader of the stream this
    // test deletes, is stopped first, or it would make the stream again.
    let mut sys = TestSystem::start_processes(|_| {}).await?;
    sys.seed_product("R", 100, 10).await?;
    sys.top_up("rory", 1_000).await?;
    let placed = sys.place(order_request("rory", &[("R", 1)], None)).await?;
    assert_eq!(
        state(&sys.wait_terminal(&placed.order_id, WAIT).await?),
        OrderState::Confirmed
    );
    sys.quiesce(WAIT).await?;
    sys.processes().kill(saga_tests::processes::Service::Order);
    // order-svc reads inventory's, reservation's and payment's streams, in
    // that order; the last is gone.
    let ns = sys.namespace();
    sys.js
        .delete_stream(ns.stream(StreamKind::Payments))
        .await?;
    let request = replay::Request {
        service: "order".into(),
        start: replay::Start::Seq(1),
        to_seq: None,
        stream: None,
        dry_run: false,
        force: false,
    };
    let failed = replay::run(&sys.config, &request, |_, _, _, _| {})
        .await
        .expect_err("a stream that is gone");
    let text = format!("{failed:#}");
    for done in [StreamKind::Inventory, StreamKind::Payments] {
        assert!(text.contains(&ns.stream(done)), "{text}");
    }
    assert!(
        text.contains(&ns.stream(StreamKind::Reservations)),
        "{text}"
    );
    sys.stop().await
}

/// A replay, its dry run or `replay status` against a schema the service
/// never ran on (a typo in `PAYMENT_SVC__DATABASE__SCHEMA`, the URL of
/// another database) is refused, naming the schema, and creates nothing.
/// It used to create and migrate that schema, find its inbox empty, and
/// list every event of the stream as to be applied; without `--dry-run`
/// it applied them all there and reported a recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_into_a_schema_the_service_never_ran_on_is_refused_and_creates_nothing()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.one_confirmed_order("A", "tia", WAIT).await?;
    let mut cfg = sys.config.clone();
    let typo = format!("{}_typo", cfg.payment.database.schema);
    cfg.payment.database.schema = typo.clone();
    let request = replay::Request {
        service: "payment".into(),
        start: replay::Start::Seq(1),
        to_seq: None,
        stream: None,
        dry_run: true,
        force: false,
    };
    let refused = replay::run(&cfg, &request, |_, _, _, _| {}).await;
    let err = format!("{:#}", refused.expect_err("no payment-svc tables there"));
    assert!(err.contains(&typo), "names the schema: {err}");
    let status = replay::status(&cfg, Some("payment")).await;
    assert!(status.is_err(), "status refused too: {status:?}");
    let created: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
    )
    .bind(&typo)
    .fetch_one(&sys.db)
    .await?;
    assert!(!created, "schema {typo} left uncreated");

    // The right schema, but a migration that differs from this build's.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {}._sqlx_migrations SET checksum = '\\x00' \
         WHERE version = (SELECT min(version) FROM {0}._sqlx_migrations)",
        sys.config.payment.database.schema
    )))
    .execute(&sys.db)
    .await?;
    let status = replay::status(&sys.config, Some("payment")).await;
    let err = format!("{:#}", status.expect_err("a migration that differs"));
    assert!(err.contains("differs"), "{err}");
    sys.stop().await
}

/// Sequence numbers are the stream's own: a range of them for a service that
/// reads several streams must name the stream (order-svc's `--from-seq
/// 1200` meant for one of its streams replayed the same numbers of the
/// other two), and a range that ends before it starts is refused rather
/// than reported as a replay of nothing. From seq 1 (every stream from its
/// start) stays open to all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_range_in_sequence_numbers_is_refused_where_it_is_ambiguous_or_empty()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.one_confirmed_order("Q", "quin", WAIT).await?;
    let payments = sys.namespace().stream(StreamKind::Payments);
    let request = |service: &str, start, to_seq, stream: Option<&str>| replay::Request {
        service: service.into(),
        start,
        to_seq,
        stream: stream.map(str::to_owned),
        dry_run: true,
        force: false,
    };
    let refused = |r: replay::Request| {
        let cfg = &sys.config;
        async move {
            match replay::run(cfg, &r, |_, _, _, _| {}).await {
                Ok(done) => anyhow::bail!("{r:?} replayed {done:?}"),
                Err(e) => anyhow::Ok(format!("{e:#}")),
            }
        }
    };
    let ambiguous = [
        request("order", replay::Start::Seq(2), None, None),
        request("order", replay::Start::Seq(1), Some(2), None),
        request("order", replay::Start::Checkpoint, Some(2), None),
    ];
    for r in ambiguous {
        let why = refused(r).await?;
        assert!(why.contains("--stream"), "asks for the stream: {why}");
    }
    for r in [
        request("order", replay::Start::Seq(3), Some(2), Some(&payments)),
        request("payment", replay::Start::Seq(2), Some(1), None),
        request("payment", replay::Start::Seq(1), Some(0), None),
        request(
            "payment",
            replay::Start::Since(replay::parse_since("1d").map_err(anyhow::Error::msg)?),
            Some(0),
            None,
        ),
    ] {
        let why = refused(r).await?;
        assert!(why.contains("ends before"), "names the empty range: {why}");
    }
    // Still open: one stream named, or every stream from its start.
    let one = replay::run(
        &sys.config,
        &request("order", replay::Start::Seq(1), Some(1), Some(&payments)),
        |_, _, _, _| {},
    )
    .await?;
    assert_eq!((one.len(), one[0].from, one[0].to), (1, 1, 1));
    let all = replay::run(
        &sys.config,
        &request("order", replay::Start::Seq(1), None, None),
        |_, _, _, _| {},
    )
    .await?;
    assert_eq!(all.len(), 3, "{all:?}");
    sys.stop().await
}
