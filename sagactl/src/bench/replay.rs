//! `sagactl bench replay`: how fast a replay runs through payment-svc's
//! handlers, for events that apply and for events already applied, beside
//! the raw JetStream publish-with-ack rate measured in the same run.
//!
//! It needs no running service: it creates the streams of a namespace of its
//! own, publishes `events` synthetic `orders.reserved` (one order each, for a
//! customer without funds, so each applies as a refused charge: a payment
//! row, its event in the outbox and the inbox row), replays them into
//! payment (every event applies), then replays them again (every event is
//! already in the inbox). It deletes its streams and payment's schema after.

use std::time::{Duration, Instant};

use anyhow::Context;
use saga_shared::bus::{EventMeta, EventType, Namespace, SagaEvent};
use saga_shared::proto::events::v1 as pb;
use serde::Serialize;
use uuid::Uuid;

use crate::replay::{self, Request, Start};
use crate::system::SystemConfig;

/// Publishes in flight at once for the raw baseline.
const IN_FLIGHT: usize = 256;

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub events: u64,
    /// Raw baseline: publishing the events with acks, 256 in flight.
    pub publish_per_sec: f64,
    /// Replay of events not yet applied: each applies.
    pub apply_per_sec: f64,
    /// Replay of events all in the inbox already.
    pub skip_per_sec: f64,
}

impl Figures {
    pub fn render(&self) -> String {
        format!(
            "replay into payment-svc, {} events\n\
             {:<34} {:>10.0} events/s\n\
             {:<34} {:>10.0} events/s  ({:.2} of publish)\n\
             {:<34} {:>10.0} events/s  ({:.2} of publish)\n",
            self.events,
            "publish with ack (baseline)",
            self.publish_per_sec,
            "replay, every event applies",
            self.apply_per_sec,
            self.apply_per_sec / self.publish_per_sec.max(1.0),
            "replay, every event already applied",
            self.skip_per_sec,
            self.skip_per_sec / self.publish_per_sec.max(1.0),
        )
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Runs the benchmark with the services' NATS settings, in a namespace of
/// its own and in the database at `database_url` (created if missing; never
/// the services' own: payment's schema there is dropped at the end).
pub async fn run(cfg: SystemConfig, database_url: &str, events: u64) -> anyhow::Result<Figures> {
    let ns_name = format!("bench{}", &Uuid::new_v4().simple().to_string()[..8]);
    let cfg = cfg.with_namespace(&ns_name).with_database_url(database_url);
    let ns = Namespace::new(&ns_name)?;
    // Payment's schema as the service makes it (the database too, if
    // missing), without an earlier run's rows: replay opens the schema it
    // finds and makes nothing itself.
    let connect = || async {
        saga_shared::db::connect(&cfg.payment.database, &payment_svc::MIGRATIONS)
            .await
            .context("payment-svc's database")
    };
    let stale = connect().await?;
    drop_schema(&stale, &cfg.payment.database.schema).await?;
    stale.close().await;
    let pool = connect().await?;
    let nats = saga_shared::nats::connect(&cfg.payment.nats, "sagactl bench")
        .await
        .context("NATS")?;
    let js = async_nats::jetstream::new(nats);
    saga_shared::bus::streams::ensure_streams(&js, &ns, &cfg.payment.nats).await?;
    let outcome = measure(&cfg, &js, &ns, events).await;
    let dropped = drop_schema(&pool, &cfg.payment.database.schema).await;
    pool.close().await;
    for kind in saga_shared::bus::StreamKind::ALL {
        let _ = js.delete_stream(ns.stream(kind)).await;
    }
    let _ = js.delete_stream(ns.dlq_stream()).await;
    let figures = outcome?;
    dropped?;
    Ok(figures)
}

async fn drop_schema(pool: &sqlx::PgPool, schema: &str) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await
    .with_context(|| format!("dropping the schema {schema}"))?;
    Ok(())
}

async fn measure(
    cfg: &SystemConfig,
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    events: u64,
) -> anyhow::Result<Figures> {
    let subject = ns.subject(EventType::OrderReserved);
    let started = Instant::now();
    // A sliding window: a new publish as soon as the oldest is acked.
    let mut acks = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for _ in 0..events {
        let order = Uuid::now_v7();
        let event = SagaEvent::OrderReserved(pb::OrderReserved {
            order_id: order.to_string(),
            customer_id: "bench-unfunded".into(),
            amount_cents: 100,
        });
        let meta = EventMeta::new(order, None);
        if acks.len() == IN_FLIGHT
            && let Some(oldest) = acks.pop_front()
        {
            oldest.await?;
        }
        acks.push_back(
            js.publish_with_headers(
                subject.clone(),
                meta.to_headers(EventType::OrderReserved),
                event.encode().into(),
            )
            .await?,
        );
    }
    for ack in acks.drain(..) {
        ack.await?;
    }
    let publish_per_sec = per_sec(events, started.elapsed());

    let request = Request {
        service: "payment".into(),
        start: Start::Seq(1),
        to_seq: None,
        stream: None,
        dry_run: false,
        force: false,
    };
    let started = Instant::now();
    let applied = replay::run(cfg, &request, |_, _, _, _| {}).await?;
    let apply_time = started.elapsed();
    let n = applied.first().map_or(0, |r| r.report.applied);
    anyhow::ensure!(n == events, "the first replay applied {n} of {events}");

    let started = Instant::now();
    let skipped = replay::run(cfg, &request, |_, _, _, _| {}).await?;
    let skip_time = started.elapsed();
    let n = skipped.first().map_or(0, |r| r.report.already_applied);
    anyhow::ensure!(n == events, "the second replay skipped {n} of {events}");

    Ok(Figures {
        events,
        publish_per_sec,
        apply_per_sec: per_sec(events, apply_time),
        skip_per_sec: per_sec(events, skip_time),
    })
}
