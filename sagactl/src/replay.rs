//! Recovery by JetStream replay: where each service stands on each of its
//! input streams ([`status`], `sagactl replay status`: the checkpoint up to
//! which every message is accounted for, and the first message that holds
//! it back), and replaying a range through the service's own handlers
//! ([`run`], `sagactl replay <service>`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use saga_shared::bus::checkpoint::{self, Checkpoint};
use saga_shared::bus::consumer::{BusContext, Consumer, FailureKind, ReplayReport, every_event};
use saga_shared::bus::reader::StreamReader;
use saga_shared::bus::retention::{self, Horizon};
use saga_shared::bus::{EventType, Handler, Namespace, Outbox, SagaEvent, StreamKind};
use sqlx::migrate::Migrator;

use crate::system::SystemConfig;

/// What replay needs to know of one service.
pub struct Consumes {
    /// The service, which is also its durables' and inbox rows' name.
    pub service: &'static str,
    pub input: &'static [StreamKind],
    pub wants: &'static [EventType],
    /// Of the events it wants, those that concern it (`Handler::concerns`).
    pub concerns: fn(&SagaEvent) -> bool,
}

/// The four services' inputs.
pub const SERVICES: [Consumes; 4] = [
    Consumes {
        service: "order-svc",
        input: order_svc::events::INPUT,
        wants: order_svc::events::WANTS,
        concerns: every_event,
    },
    Consumes {
        service: "inventory-svc",
        input: inventory_svc::events::INPUT,
        wants: inventory_svc::events::WANTS,
        concerns: every_event,
    },
    Consumes {
        service: "payment-svc",
        input: payment_svc::events::INPUT,
        wants: payment_svc::events::WANTS,
        concerns: every_event,
    },
    Consumes {
        service: "reservation-svc",
        input: reservation_svc::events::INPUT,
        wants: reservation_svc::events::WANTS,
        concerns: reservation_svc::events::concerns,
    },
];

/// What `c` handles, for a checkpoint walk.
fn interest(
    c: &Consumes,
) -> checkpoint::Interest<impl Fn(EventType) -> bool + '_, fn(&SagaEvent) -> bool> {
    checkpoint::Interest {
        wants: |t: EventType| c.wants.contains(&t),
        concerns: c.concerns,
    }
}

/// The service named `name` (`payment` or `payment-svc`).
pub fn service(name: &str) -> anyhow::Result<&'static Consumes> {
    let full = if name.ends_with("-svc") {
        name.to_owned()
    } else {
        format!("{name}-svc")
    };
    SERVICES
        .iter()
        .find(|c| c.service == full)
        .with_context(|| {
            format!("unknown service {name:?}: one of order, inventory, payment, reservation")
        })
}

/// Where a service stands on one input stream.
#[derive(Clone, Debug)]
pub struct Standing {
    pub checkpoint: Checkpoint,
    /// What its inbox forgot of the stream (purged past retention).
    pub horizon: Option<Horizon>,
}

/// The database of service `c`, as its service made it (nothing created or
/// migrated: a mistyped schema is refused, not taken for an empty one).
pub(crate) async fn service_pool(cfg: &SystemConfig, c: &Consumes) -> anyhow::Result<sqlx::PgPool> {
    let (database, migrations, namespace): (_, &Migrator, _) = match c.service {
        "order-svc" => (
            &cfg.order.database,
            &order_svc::MIGRATIONS,
            &cfg.order.namespace,
        ),
        "inventory-svc" => (
            &cfg.inventory.database,
            &inventory_svc::MIGRATIONS,
            &cfg.inventory.namespace,
        ),
        "payment-svc" => (
            &cfg.payment.database,
            &payment_svc::MIGRATIONS,
            &cfg.payment.namespace,
        ),
        _ => (
            &cfg.reservation.database,
            &reservation_svc::MIGRATIONS,
            &cfg.reservation.namespace,
        ),
    };
    saga_shared::db::open_existing(database, migrations, namespace)
        .await
        .with_context(|| format!("{}'s database", c.service))
}

async fn jetstream(
    cfg: &SystemConfig,
) -> anyhow::Result<(async_nats::jetstream::Context, Namespace)> {
    let nats = saga_shared::nats::connect(&cfg.order.nats, "sagactl replay")
        .await
        .context("NATS")?;
    Ok((
        async_nats::jetstream::new(nats),
        Namespace::new(&cfg.order.namespace)?,
    ))
}

/// Advances and returns the checkpoints of `only` (or every service) on
/// each of their input streams, with what each inbox forgot.
pub async fn status(cfg: &SystemConfig, only: Option<&str>) -> anyhow::Result<Vec<Standing>> {
    let chosen: Vec<&Consumes> = match only {
        Some(name) => vec![service(name)?],
        None => SERVICES.iter().collect(),
    };
    let (js, ns) = jetstream(cfg).await?;
    let mut out = Vec::new();
    for c in chosen {
        let pool = service_pool(cfg, c).await?;
        for kind in c.input {
            let checkpoint =
                checkpoint::advance(&pool, &js, &ns, c.service, *kind, interest(c)).await?;
            let horizon = retention::horizon(&pool, c.service, &checkpoint.stream).await?;
            out.push(Standing {
                checkpoint,
                horizon,
            });
        }
        pool.close().await;
    }
    Ok(out)
}

/// The standings as a table.
pub fn render(standings: &[Standing]) -> String {
    let mut out = format!(
        "{:<16} {:<22} {:>10} {:>10} {:>8} {:>14}  held back by\n",
        "service", "stream", "checkpoint", "last seq", "behind", "inbox forgot"
    );
    for Standing {
        checkpoint: c,
        horizon,
    } in standings
    {
        let held = c.gap.as_ref().map_or_else(String::new, |g| {
            format!(
                "seq {} ({}, event {})",
                g.seq,
                g.event_type,
                g.event_id
                    .map_or_else(|| "without an id".to_owned(), |id| id.to_string())
            )
        });
        let forgot = horizon
            .as_ref()
            .map_or_else(|| "nothing".to_owned(), |h| format!("..={}", h.seq));
        out.push_str(&format!(
            "{:<16} {:<22} {:>10} {:>10} {:>8} {:>14}  {held}\n",
            c.consumer,
            c.stream,
            c.seq,
            c.stream_last,
            c.stream_last.saturating_sub(c.seq),
            forgot
        ));
    }
    out
}

/// Where a replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At this stream sequence.
    Seq(u64),
    /// At the first message stored at or after this time.
    Since(DateTime<Utc>),
    /// Just after the service's checkpoint on each stream (moved first).
    Checkpoint,
}

/// What to replay.
#[derive(Clone, Debug)]
pub struct Request {
    pub service: String,
    pub start: Start,
    /// Up to this sequence (default: the stream's last message now).
    pub to_seq: Option<u64>,
    /// Only this input stream (its name, e.g. `SAGA_ORDERS`).
    pub stream: Option<String>,
    /// List what would be applied; change nothing.
    pub dry_run: bool,
    /// Replay even from before what the service's inbox remembers.
    pub force: bool,
}

/// One stream's replay.
#[derive(Clone, Debug)]
pub struct StreamReplay {
    pub service: &'static str,
    pub stream: String,
    pub from: u64,
    pub to: u64,
    pub report: ReplayReport,
}

/// Runs every event of the request's range through the service's own
/// handlers, in this process, with an ephemeral reader (the service's
/// durable is untouched; the service may keep running). `progress` gets the
/// stream, the range and the report so far after each batch.
pub async fn run(
    cfg: &SystemConfig,
    request: &Request,
    progress: impl FnMut(&str, u64, u64, &ReplayReport),
) -> anyhow::Result<Vec<StreamReplay>> {
    let c = service(&request.service)?;
    let (js, ns) = jetstream(cfg).await?;
    let kinds: Vec<StreamKind> = match &request.stream {
        None => c.input.to_vec(),
        Some(name) => {
            let kind = c
                .input
                .iter()
                .find(|k| ns.stream(**k) == *name)
                .with_context(|| {
                    let names: Vec<String> = c.input.iter().map(|k| ns.stream(*k)).collect();
                    format!("{} does not read {name:?}; it reads {names:?}", c.service)
                })?;
            vec![*kind]
        }
    };
    // Sequence numbers are each stream's own: past the start of every
    // stream, a range of them is one stream's.
    let numbered = matches!(request.start, Start::Seq(n) if n > 1) || request.to_seq.is_some();
    if numbered && kinds.len() > 1 {
        let names: Vec<String> = kinds.iter().map(|k| ns.stream(*k)).collect();
        bail!(
            "sequence numbers are each stream's own, and {} reads {names:?}: name the stream \
             of the range with --stream",
            c.service
        );
    }
    if let (Start::Seq(from), Some(to)) = (request.start, request.to_seq)
        && to < from.max(1)
    {
        bail!("the range ends before it starts: --to-seq {to} is below --from-seq {from}");
    }
    let outbox = Outbox::new();
    let pool = service_pool(cfg, c).await?;
    let (bus, streams) = match c.service {
        "order-svc" => (cfg.order.bus.clone(), cfg.order.nats.clone()),
        "inventory-svc" => (cfg.inventory.bus.clone(), cfg.inventory.nats.clone()),
        "payment-svc" => (cfg.payment.bus.clone(), cfg.payment.nats.clone()),
        _ => (cfg.reservation.bus.clone(), cfg.reservation.nats.clone()),
    };
    let ctx = BusContext {
        service: c.service,
        pool: pool.clone(),
        js: js.clone(),
        ns: ns.clone(),
        outbox: outbox.clone(),
        cfg: bus,
        streams,
    };
    // Where each stream starts, all checked before anything is replayed.
    let mut starts = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let stream = ns.stream(kind);
        let from = match request.start {
            Start::Seq(n) => n.max(1),
            Start::Since(time) => {
                let from = StreamReader::seq_at(&js, &stream, time).await?;
                if let Some(to) = request.to_seq
                    && to < from
                {
                    bail!(
                        "the range ends before it starts: --to-seq {to} is below seq {from}, \
                         where --since starts on {stream}"
                    );
                }
                from
            }
            Start::Checkpoint => {
                checkpoint::advance(&pool, &js, &ns, c.service, kind, interest(c))
                    .await?
                    .seq
                    + 1
            }
        };
        if let Some(h) = retention::horizon(&pool, c.service, &stream).await?
            && from <= h.seq
            && !request.force
        {
            bail!(
                "{service}'s inbox no longer remembers {stream} up to seq {seq} (its rows of \
                     events applied before {before} were purged past retention): a replay from \
                     seq {from} cannot tell which of those events were applied and would apply \
                     them again. Start after it (--stream {stream} --from-seq {next}), or pass --force to accept \
                     that knowingly",
                service = c.service,
                seq = h.seq,
                before = h
                    .purged_before
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                next = h.seq + 1,
            );
        }
        starts.push((kind, stream, from));
    }
    // The service's handler, built once (a Redis connection included) for
    // all its streams; four handler types, one generic call each.
    let out = match c.service {
        "order-svc" => {
            // Replay applies events; it never asks the catalog, so no token.
            let orders = order_svc::orders(
                &cfg.order,
                pool.clone(),
                outbox.clone(),
                saga_shared::auth::WithToken::none(),
                None,
                tokio_util::sync::CancellationToken::new(),
            )?;
            let handler = order_svc::events::ParticipantEvents { orders };
            replay_streams(&ctx, handler, &starts, request, progress).await?
        }
        "inventory-svc" => {
            let redis = saga_shared::redis::connect(&cfg.inventory.redis)
                .await
                .context("inventory's Redis")?;
            let inventory = inventory_svc::inventory(&cfg.inventory, pool.clone(), redis, true);
            let handler = inventory_svc::events::OrderEvents { inventory };
            replay_streams(&ctx, handler, &starts, request, progress).await?
        }
        "payment-svc" => {
            let payments = payment_svc::payments(&cfg.payment, pool.clone(), outbox.clone());
            let handler = payment_svc::events::OrderEvents { payments };
            replay_streams(&ctx, handler, &starts, request, progress).await?
        }
        _ => {
            let redis = saga_shared::redis::connect(&cfg.reservation.redis)
                .await
                .context("reservation's Redis")?;
            let reservations = reservation_svc::reservations(&cfg.reservation, pool.clone(), redis);
            // A replay applies one event at a time.
            let handler = reservation_svc::events::OrderEvents {
                reservations,
                slot_locks: true,
            };
            replay_streams(&ctx, handler, &starts, request, progress).await?
        }
    };
    pool.close().await;
    Ok(out)
}

/// Replays each of `starts` (stream kind, name, first sequence) through
/// `handler`, one stream after the other.
async fn replay_streams<H: Handler>(
    ctx: &BusContext,
    handler: H,
    starts: &[(StreamKind, String, u64)],
    request: &Request,
    mut progress: impl FnMut(&str, u64, u64, &ReplayReport),
) -> anyhow::Result<Vec<StreamReplay>> {
    let handler = Arc::new(handler);
    let mut out = Vec::with_capacity(starts.len());
    for (kind, stream, from) in starts {
        let replayed = async {
            let mut reader = StreamReader::open(&ctx.js, stream, *from, request.to_seq).await?;
            // What the stream no longer holds is not read.
            let from = (*from).max(reader.first);
            let to = request.to_seq.map_or(reader.last, |t| t.min(reader.last));
            let consumer = Consumer::new(ctx.clone(), *kind, handler.clone());
            let report = consumer
                .replay(&mut reader, request.dry_run, |r| {
                    progress(stream, from, to, r);
                })
                .await?;
            anyhow::Ok(StreamReplay {
                service: ctx.service,
                stream: stream.clone(),
                from,
                to,
                report,
            })
        }
        .await;
        match replayed {
            Ok(replay) => out.push(replay),
            // What the streams before it had replayed is done: say so.
            Err(e) if !out.is_empty() => {
                return Err(e.context(format!(
                    "replaying {stream} failed; the streams before it were replayed:\n{}",
                    render_replay(&out, request.dry_run)
                )));
            }
            Err(e) => return Err(e.context(format!("replaying {stream} failed"))),
        }
    }
    Ok(out)
}

/// A replay's closing table, and what it applied (or would apply).
pub fn render_replay(replays: &[StreamReplay], dry_run: bool) -> String {
    let mut out = format!(
        "{:<16} {:<22} {:>15} {:>8} {:>9} {:>11} {:>12} {:>7}\n",
        "service",
        "stream",
        "range",
        "read",
        "already",
        if dry_run {
            "would apply"
        } else {
            "applied now"
        },
        "not for it",
        "failed"
    );
    for r in replays {
        let p = &r.report;
        out.push_str(&format!(
            "{:<16} {:<22} {:>15} {:>8} {:>9} {:>11} {:>12} {:>7}\n",
            r.service,
            r.stream,
            format!("{}..={}", r.from, r.to),
            p.read,
            p.already_applied,
            p.missing_count,
            p.not_for_us,
            p.failed_count
        ));
    }
    for r in replays {
        for m in &r.report.missing {
            out.push_str(&format!(
                "  {} seq {:<8} {:<22} order {}\n",
                if dry_run { "would apply" } else { "applied" },
                m.seq,
                m.event_type.to_string(),
                m.order_id
            ));
        }
        let unlisted = r.report.missing_count - r.report.missing.len() as u64;
        if unlisted > 0 {
            out.push_str(&format!(
                "  ... and {unlisted} more events {} on {} (only the first {} are listed)\n",
                if dry_run { "to apply" } else { "applied" },
                r.stream,
                saga_shared::bus::consumer::LISTED
            ));
        }
        for f in &r.report.failed {
            let fate = match f.kind {
                FailureKind::Poison => "poison, dead-lettered by the live consumer",
                FailureKind::Transient => "transient, not dead-lettered: replay again",
                FailureKind::Failed if f.dead_lettered => "dead-lettered (Saga-Dlq-Replay: true)",
                FailureKind::Failed => "NOT dead-lettered: the DLQ did not take it",
            };
            out.push_str(&format!("  failed seq {:<8} {fate}: {}\n", f.seq, f.error));
        }
        let unlisted = r.report.failed_count - r.report.failed.len() as u64;
        if unlisted > 0 {
            out.push_str(&format!(
                "  ... and {unlisted} more failures on {} (only the first {} are listed)\n",
                r.stream,
                saga_shared::bus::consumer::LISTED
            ));
        }
    }
    out
}

/// A time ago as a whole number and a unit: `90s`, `15m`, `2h`, `3d`.
pub fn parse_ago(text: &str) -> Result<Duration, String> {
    ago(text).map_err(|e| match e {
        Ago::Malformed => format!("{text:?} is not a time ago (90s, 15m, 2h, 3d)"),
        Ago::TooLong => too_long(text),
    })
}

/// Why a text is not a time ago.
enum Ago {
    Malformed,
    TooLong,
}

fn ago(text: &str) -> Result<Duration, Ago> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or(Ago::Malformed)?;
    let (number, unit) = text.split_at(digits);
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(Ago::Malformed),
    };
    if number.is_empty() {
        return Err(Ago::Malformed);
    }
    // All digits: a number too large for u64 is too long ago too.
    let n: u64 = number.parse().map_err(|_| Ago::TooLong)?;
    n.checked_mul(unit_secs)
        .filter(|secs| *secs <= MAX_AGO_SECS)
        .map(Duration::from_secs)
        .ok_or(Ago::TooLong)
}

fn too_long(text: &str) -> String {
    format!("{text:?} is too long ago (at most 36500d)")
}

/// The longest time ago [`parse_ago`] takes: a hundred years, well inside
/// what Postgres intervals and timestamps hold.
const MAX_AGO_SECS: u64 = 36_500 * 86_400;

/// `--since`: an RFC 3339 timestamp, or a time ago ([`parse_ago`]).
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = ago(text).map_err(|e| match e {
        Ago::Malformed => format!(
            "{text:?} is neither an RFC 3339 time (2026-11-24T09:30:00Z) nor a time ago (90s, 15m, 2h, 3d)"
        ),
        Ago::TooLong => too_long(text),
    })?;
    chrono::TimeDelta::from_std(ago)
        .ok()
        .and_then(|ago| Utc::now().checked_sub_signed(ago))
        .ok_or_else(|| too_long(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_a_timestamp_or_a_time_ago() {
        let t = parse_since("2026-11-24T09:30:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-24T09:30:00+00:00");
        let t = parse_since("2026-11-24T10:30:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-24T09:30:00+00:00");
        let ago = Utc::now() - parse_since("2h").unwrap();
        assert!((7_199..=7_201).contains(&ago.num_seconds()), "{ago}");
        let ago = Utc::now() - parse_since("3d").unwrap();
        assert!((259_199..=259_201).contains(&ago.num_seconds()), "{ago}");
    }

    /// The closing table of a replay that applied more events than its
    /// report lists says how many it does not list.
    #[test]
    fn the_closing_table_says_how_many_events_it_does_not_list() {
        let report = ReplayReport {
            read: 5_000,
            applied: 5_000,
            missing_count: 5_000,
            missing: (1..=saga_shared::bus::consumer::LISTED as u64)
                .map(|seq| saga_shared::bus::consumer::Missing {
                    seq,
                    event_type: saga_shared::bus::EventType::OrderPlaced,
                    order_id: uuid::Uuid::nil(),
                })
                .collect(),
            ..ReplayReport::default()
        };
        let replays = [StreamReplay {
            service: "inventory-svc",
            stream: "SAGA_ORDERS".into(),
            from: 1,
            to: 5_000,
            report,
        }];
        let table = render_replay(&replays, false);
        assert_eq!(table.lines().count(), 2 + 1_000 + 1, "{table}");
        assert!(
            table.contains("... and 4000 more events applied on SAGA_ORDERS"),
            "{table}"
        );
    }

    #[test]
    fn since_names_what_it_cannot_read() {
        for bad in [
            "",
            "h",
            "2",
            "2w",
            "-2h",
            "2 h",
            "yesterday",
            "99999999999999999999d",
        ] {
            let e = parse_since(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        let e = parse_since("9999999999999d").unwrap_err();
        assert!(e.contains("too long ago"), "{e}");
    }
}
