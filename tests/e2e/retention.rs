//! Retention that keeps replay safe (issue 9): the inbox, published outbox
//! rows and idempotency keys are purged past a retention never shorter than
//! the streams keep events; a replay from before what the inbox remembers is
//! refused unless forced; `--since` starts at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::stream;
use chrono::{DateTime, Utc};
use saga_shared::bus::reader::StreamReader;
use saga_shared::bus::retention::{self, Purged};
use saga_shared::bus::{Namespace, StreamKind};
use saga_shared::proto::order::v1::OrderState;
use saga_shared::service::Service;
use saga_tests::{TestSystem, order_request, state};
use sagactl::replay::{self, Request, Start};

use crate::WAIT;

const DAY: Duration = Duration::from_secs(24 * 3600);

async fn confirmed(sys: &TestSystem, customer: &str, key: &str) -> anyhow::Result<String> {
    let o = sys
        .place_with_key(order_request(customer, &[("A", 1)], None), Some(key))
        .await?;
    assert_eq!(
        state(&sys.wait_terminal(&o.order_id, WAIT).await?),
        OrderState::Confirmed
    );
    Ok(o.order_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_retention_are_purged_and_a_replay_from_before_what_the_inbox_remembers_is_refused_unless_forced()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("old", 10_000).await?;
    sys.top_up("new", 10_000).await?;
    let old = confirmed(&sys, "old", "key-old").await?;
    let cut: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&sys.db)
        .await?;
    confirmed(&sys, "new", "key-new").await?;
    confirmed(&sys, "new", "key-newer").await?;

    // Everything order-svc wrote before `cut` is made nine days old; the
    // retention is eight days.
    let pool = saga_shared::db::connect(&sys.config.order.database, &order_svc::MIGRATIONS).await?;
    let age = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            anyhow::Ok(
                sqlx::query(sql)
                    .bind(cut)
                    .execute(&pool)
                    .await?
                    .rows_affected(),
            )
        }
    };
    // What the inbox will forget, per stream: the highest sequence aged.
    let forgotten: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT stream, max(stream_seq) FROM processed_events WHERE processed_at < $1 GROUP BY stream",
    )
    .bind(cut)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .collect();
    let inbox = age(
        "UPDATE processed_events SET processed_at = processed_at - interval '9 days' \
         WHERE processed_at < $1",
    )
    .await?;
    let outbox = age(
        "UPDATE outbox SET published_at = published_at - interval '9 days' \
         WHERE published_at < $1",
    )
    .await?;
    let keys = age(
        "UPDATE idempotency_keys SET created_at = created_at - interval '9 days' \
         WHERE created_at < $1",
    )
    .await?;
    assert!(
        inbox >= 2 && outbox >= 2,
        "order {old}: {inbox} inbox, {outbox} outbox rows"
    );
    assert_eq!(keys, 1, "key-old");
    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(&pool)
                    .await?;
            anyhow::Ok(n as u64)
        }
    };
    let before = [
        count("processed_events").await?,
        count("outbox").await?,
        count("idempotency_keys").await?,
    ];

    let purged = retention::purge(&pool, 8 * DAY).await?;
    assert_eq!(
        purged,
        Purged {
            inbox,
            outbox,
            idempotency_keys: 1
        }
    );
    let after = [
        count("processed_events").await?,
        count("outbox").await?,
        count("idempotency_keys").await?,
    ];
    assert_eq!(
        after,
        [before[0] - inbox, before[1] - outbox, before[2] - 1],
        "only what was past retention"
    );
    assert_eq!(
        retention::purge(&pool, 8 * DAY).await?,
        Purged::default(),
        "nothing else is old"
    );
    // What the inbox forgot is remembered, per stream.
    let ns = sys.namespace();
    for kind in order_svc::events::INPUT {
        let stream = ns.stream(*kind);
        let horizon = retention::horizon(&pool, "order-svc", &stream).await?;
        assert_eq!(
            horizon.map(|h| h.seq as i64),
            forgotten.get(&stream).copied(),
            "{stream}"
        );
    }
    // A forgotten key is a new call: a new order.
    let again = sys
        .place_with_key(order_request("old", &[("A", 1)], None), Some("key-old"))
        .await?;
    assert_ne!(again.order_id, old);
    sys.wait_terminal(&again.order_id, WAIT).await?;

    // A replay (or its dry run) from before the horizon is refused, naming
    // the stream, where to start instead and --force.
    let payments = ns.stream(StreamKind::Payments);
    let horizon = forgotten[&payments] as u64;
    let request = |start, dry_run, force| Request {
        service: "order".into(),
        start,
        to_seq: None,
        stream: Some(payments.clone()),
        dry_run,
        force,
    };
    for dry_run in [true, false] {
        let refused = replay::run(
            &sys.config,
            &request(Start::Seq(1), dry_run, false),
            |_, _, _, _| {},
        )
        .await
        .expect_err("a replay from before the horizon");
        let text = format!("{refused:#}");
        for needle in [
            "no longer remembers".to_owned(),
            payments.clone(),
            format!("--from-seq {}", horizon + 1),
            "--force".to_owned(),
        ] {
            assert!(text.contains(&needle), "{needle:?} in {text}");
        }
    }
    // From just after it, nothing is missing.
    let after_horizon = replay::run(
        &sys.config,
        &request(Start::Seq(horizon + 1), false, false),
        |_, _, _, _| {},
    )
    .await?;
    let r = &after_horizon[0].report;
    assert_eq!((r.applied, r.failed.len()), (0, 0), "{r:?}");
    // Forced, the forgotten events are applied again: what the refusal
    // protects from. Here they change nothing (the order has ended).
    let forced = replay::run(
        &sys.config,
        &request(Start::Seq(1), false, true),
        |_, _, _, _| {},
    )
    .await?;
    let r = &forced[0].report;
    let forgotten_here: u64 = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM processed_events WHERE stream = $1 AND stream_seq <= $2",
    )
    .bind(&payments)
    .bind(horizon as i64)
    .fetch_one(&pool)
    .await? as u64;
    assert!(r.applied > 0, "{r:?}");
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!(forgotten_here, r.applied, "re-applied rows are back: {r:?}");
    assert_eq!(state(&sys.get_order(&old).await?), OrderState::Confirmed);
    pool.close().await;
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_refuses_a_retention_shorter_than_its_streams_keep_events() -> anyhow::Result<()>
{
    let sys = TestSystem::start().await?;
    let started = |mut cfg: payment_svc::config::PaymentConfig| async move {
        cfg.grpc.listen.set_port(0);
        cfg.admin.listen.set_port(0);
        payment_svc::PaymentSvc::build(cfg)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    };

    // Configured: streams that keep ten days, a retention of eight.
    let mut cfg = sys.config.payment.clone();
    cfg.nats.max_age_hours = 240;
    cfg.bus.retention_hours = 192;
    let error = started(cfg.clone()).await.expect_err("refused");
    for needle in [
        "bus.retention_hours",
        "192 h",
        "240 h",
        "nats.max_age_hours",
    ] {
        assert!(error.contains(needle), "{needle:?} in {error}");
    }

    // Existing streams that keep ten days, whatever the configuration says
    // now (an existing stream keeps its settings).
    let other = Namespace::new(&format!("{}r", sys.ns))?;
    let mut nats = cfg.nats.clone();
    saga_shared::bus::streams::ensure_streams(&sys.js, &other, &nats).await?;
    nats.max_age_hours = 24;
    cfg.nats = nats;
    cfg.namespace = other.as_str().to_owned();
    // Another namespace keeps its state in a schema of its own.
    cfg.database.schema = "payment_other".into();
    let refused = started(cfg.clone()).await;
    cfg.bus.retention_hours = 0;
    let forever = started(cfg).await;
    saga_shared::bus::streams::delete_streams(&sys.js, &other).await;
    let error = refused.expect_err("refused");
    assert!(
        error.contains("bus.retention_hours") && error.contains(&other.stream(StreamKind::Orders)),
        "{error}"
    );
    forever.expect("keeping rows forever is always safe");
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_starts_at_the_first_event_stored_at_or_after_the_time() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let name = format!("{}_SINCE", sys.ns.to_ascii_uppercase());
    let subject = format!("{}.since", sys.ns);
    sys.js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await?;
    let publish = |n: usize| {
        let (js, subject) = (sys.js.clone(), subject.clone());
        async move {
            for _ in 0..n {
                js.publish(subject.clone(), "x".into()).await?.await?;
            }
            anyhow::Ok(())
        }
    };
    let at = |t: DateTime<Utc>| StreamReader::seq_at(&sys.js, &name, t);
    let before = Utc::now() - chrono::TimeDelta::hours(1);
    assert_eq!(at(before).await?, 1, "an empty stream");
    publish(3).await?;
    // Published after the third message's ack, so after its time.
    let between = Utc::now();
    publish(2).await?;
    assert_eq!(at(before).await?, 1);
    assert_eq!(at(between).await?, 4);
    assert_eq!(
        at(Utc::now() + chrono::TimeDelta::hours(1)).await?,
        6,
        "past the end"
    );
    sys.js.delete_stream(&name).await?;

    // Through sagactl: --since long ago reads what --from-seq 1 reads.
    sys.seed_product("A", 100, 10).await?;
    sys.top_up("sam", 1_000).await?;
    confirmed(&sys, "sam", "k").await?;
    let run = |start| {
        let cfg = sys.config.clone();
        async move {
            let request = Request {
                service: "payment".into(),
                start,
                to_seq: None,
                stream: None,
                dry_run: true,
                force: false,
            };
            let r = replay::run(&cfg, &request, |_, _, _, _| {}).await?;
            anyhow::Ok(
                r.into_iter()
                    .map(|s| (s.from, s.report.read))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let by_time = run(Start::Since(
        replay::parse_since("1d").map_err(anyhow::Error::msg)?,
    ))
    .await?;
    let by_seq = run(Start::Seq(1)).await?;
    assert_eq!(by_time, by_seq);
    assert!(by_seq[0].1 > 0, "{by_seq:?}");
    sys.stop().await
}
