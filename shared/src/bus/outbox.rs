//! The transactional outbox.
//!
//! A state change and the events it causes commit together: handlers and gRPC
//! calls write events with [`Outbox::enqueue`] in their own transaction. The
//! [`Relay`] publishes committed rows to JetStream with `Nats-Msg-Id` = event
//! id, waits for the PubAcks, and marks the rows sent in one statement.
//!
//! Several relays (one per service instance) share the table: each takes a
//! batch with `FOR UPDATE SKIP LOCKED` in a transaction that lasts while it
//! publishes (bounded by `bus.relay_lease_secs`) and marks what was
//! acknowledged before committing. A relay that dies lets go of its rows the
//! moment Postgres sees its connection close, so another instance (or the
//! restarted one) publishes them at its next round; JetStream's duplicate
//! window, then the consumers' inbox, drop a second copy of a row that was
//! published but not yet marked. One connection per relay is held while it
//! publishes, never one per event.
//!
//! While a consumer applies a batch of events, the rows its handlers enqueue
//! are held back and written with one statement just before the batch
//! commits ([`holding_back`], [`flush_held`]): the same rows, in the same
//! transaction and order, one round trip instead of one per event.

use crate::backoff::Backoff;
use crate::faults::CrashPoint;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{EventMeta, EventType, Namespace, SagaEvent};
use crate::config::BusConfig;
use crate::telemetry::TraceHeaders;

/// Writes events in the caller's transaction and wakes this process's relay.
#[derive(Clone, Default)]
pub struct Outbox {
    wake: Arc<Notify>,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `event` in the caller's transaction. Call [`Outbox::wake`] after
    /// the commit. Inside a consumer's batch the row is held back and
    /// written, in this order, just before the batch's commit.
    pub async fn enqueue(
        conn: &mut PgConnection,
        meta: &EventMeta,
        event: &SagaEvent,
    ) -> sqlx::Result<()> {
        let row = HeldRow::new(meta, event);
        if HELD.try_with(|_| ()).is_ok() {
            HELD.with(|held| held.borrow_mut().push(row));
            return Ok(());
        }
        insert(conn, vec![row]).await
    }

    /// Tells the relay that new rows are committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// An outbox row not yet written.
struct HeldRow {
    event_id: Uuid,
    event_type: &'static str,
    payload: Vec<u8>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl HeldRow {
    fn new(meta: &EventMeta, event: &SagaEvent) -> Self {
        HeldRow {
            event_id: meta.event_id,
            event_type: event.event_type().as_str(),
            payload: event.encode(),
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
            traceparent: meta.trace.traceparent.clone(),
            tracestate: meta.trace.tracestate.clone(),
        }
    }
}

/// Outbox rows as the column arrays that one `INSERT` binds. A statement
/// that changes a service's state may write its events as a part of itself
/// ([`OutboxRows::insert_sql`] as a CTE): one statement is atomic without a
/// transaction of its own, so the change and its events still commit
/// together, with no BEGIN and COMMIT round trips.
pub struct OutboxRows {
    ids: Vec<Uuid>,
    types: Vec<&'static str>,
    payloads: Vec<Vec<u8>>,
    correlations: Vec<Option<Uuid>>,
    causes: Vec<Option<Uuid>>,
    parents: Vec<Option<String>>,
    states: Vec<Option<String>>,
}

impl OutboxRows {
    /// The row of one event.
    pub fn of(meta: &EventMeta, event: &SagaEvent) -> Self {
        Self::from_held(vec![HeldRow::new(meta, event)])
    }

    fn from_held(rows: Vec<HeldRow>) -> Self {
        let mut all = OutboxRows {
            ids: Vec::with_capacity(rows.len()),
            types: Vec::with_capacity(rows.len()),
            payloads: Vec::with_capacity(rows.len()),
            correlations: Vec::with_capacity(rows.len()),
            causes: Vec::with_capacity(rows.len()),
            parents: Vec::with_capacity(rows.len()),
            states: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            all.ids.push(row.event_id);
            all.types.push(row.event_type);
            all.payloads.push(row.payload);
            all.correlations.push(row.correlation_id);
            all.causes.push(row.causation_id);
            all.parents.push(row.traceparent);
            all.states.push(row.tracestate);
        }
        all
    }

    /// The `INSERT` of the rows, its seven parameters numbered from
    /// `$first` in the order [`OutboxRows::bind`] binds them. The rows' ids
    /// (and so the relay's publishing order) follow their order.
    pub fn insert_sql(first: usize) -> String {
        let [e, t, p, c, k, tp, ts] = std::array::from_fn::<_, 7, _>(|i| first + i);
        format!(
            "INSERT INTO outbox (event_id, event_type, payload, correlation_id, causation_id, \
                 traceparent, tracestate) \
             SELECT e, t, p, c, k, tp, ts FROM UNNEST(${e}::uuid[], ${t}::text[], \
                 ${p}::bytea[], ${c}::uuid[], ${k}::uuid[], ${tp}::text[], ${ts}::text[]) \
                 WITH ORDINALITY AS r(e, t, p, c, k, tp, ts, n) ORDER BY n"
        )
    }

    /// Binds the rows after the parameters `query` holds already.
    pub fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(self.ids)
            .bind(self.types)
            .bind(self.payloads)
            .bind(self.correlations)
            .bind(self.causes)
            .bind(self.parents)
            .bind(self.states)
    }
}

/// A statement with its parameters bound so far.
pub type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

tokio::task_local! {
    /// The rows enqueued inside [`holding_back`], not yet written.
    static HELD: std::cell::RefCell<Vec<HeldRow>>;
}

/// Runs `work` with the outbox rows it enqueues held back until
/// [`flush_held`], which `work` must call on its transaction before it
/// commits. A `work` that succeeds with rows still held is an error (they
/// would be lost), not a success.
pub async fn holding_back<T, E, F>(work: F) -> Result<T, E>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: From<sqlx::Error>,
{
    HELD.scope(std::cell::RefCell::default(), async {
        let out = work.await?;
        let left = HELD.with(|held| held.borrow().len());
        if left > 0 {
            return Err(sqlx::Error::Protocol(format!(
                "{left} outbox rows enqueued in a batch and never written"
            ))
            .into());
        }
        Ok(out)
    })
    .await
}

/// Writes the rows held back so far, in the order they were enqueued, with
/// one statement on `conn`.
pub async fn flush_held(conn: &mut PgConnection) -> sqlx::Result<()> {
    let rows = HELD.try_with(|held| held.take()).unwrap_or_default();
    if rows.is_empty() {
        return Ok(());
    }
    insert(conn, rows).await
}

/// Writes `rows` with one statement; their ids (and so the relay's
/// publishing order) follow their order.
async fn insert(conn: &mut PgConnection, rows: Vec<HeldRow>) -> sqlx::Result<()> {
    static INSERT: LazyLock<String> = LazyLock::new(|| OutboxRows::insert_sql(1));
    OutboxRows::from_held(rows)
        .bind(sqlx::query(INSERT.as_str()))
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox: {0}")]
    Sql(#[from] sqlx::Error),
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    event_id: Uuid,
    event_type: String,
    payload: Vec<u8>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    created_at: DateTime<Utc>,
}

/// What one relay round did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// Rows taken.
    pub taken: usize,
    /// Rows the stream acknowledged (and that were marked published).
    pub sent: usize,
}

/// The statement a relay round takes its rows with ($1: how many, $2:
/// the lease, as `idle_in_transaction_session_timeout`), with `filter`
/// added to its condition.
macro_rules! take_rows {
    ($filter:literal) => {
        concat!(
            "SELECT id, event_id, event_type, payload, correlation_id, causation_id, \
                 traceparent, tracestate, created_at \
             FROM (SELECT set_config('idle_in_transaction_session_timeout', $2, true)) AS lease, \
                 outbox \
             WHERE published_at IS NULL ",
            $filter,
            " ORDER BY id LIMIT $1 FOR UPDATE OF outbox SKIP LOCKED"
        )
    };
}

/// Publishes committed outbox rows.
pub struct Relay {
    pub(crate) service: &'static str,
    pub(crate) pool: PgPool,
    pub(crate) js: jetstream::Context,
    pub(crate) ns: Namespace,
    pub(crate) outbox: Outbox,
    pub(crate) cfg: BusConfig,
    /// Set once a round took rows of an event type this build does not know
    /// (written by a newer build): from then on rounds take only rows of
    /// known types, so that those rows do not hold back the others. Until
    /// then rounds do without that filter, which costs Postgres about 8% of
    /// its CPU per order (docs/BENCHMARKS.md).
    unknown_seen: AtomicBool,
}

impl Relay {
    pub fn new(
        service: &'static str,
        pool: PgPool,
        js: jetstream::Context,
        ns: Namespace,
        outbox: Outbox,
        cfg: BusConfig,
    ) -> Self {
        Self {
            service,
            pool,
            js,
            ns,
            outbox,
            cfg,
            unknown_seen: AtomicBool::new(false),
        }
    }

    /// Publishes until `shutdown`; then, for at most `LAST_ROUNDS`, what was
    /// committed before it.
    pub async fn run(self, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.cfg.relay_poll_ms.max(1));
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            let pause = match self.publish_pending().await {
                Ok(round) if round.taken > 0 && round.sent == 0 => {
                    // JetStream refused every row (down, or a stream
                    // without quorum): wait rather than retry at the pace
                    // new rows wake the relay. The rows say why.
                    failures = failures.saturating_add(1);
                    // 50 ms, doubling up to 2 s.
                    Some(
                        Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
                            .delay(failures),
                    )
                }
                Ok(round) => {
                    failures = 0;
                    if round.taken as i64 >= self.cfg.relay_batch_size {
                        continue;
                    }
                    None
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(service = self.service, error = %e, failures, "outbox relay round failed");
                    // 200 ms, doubling up to 6.4 s.
                    Some(
                        Backoff::new(Duration::from_millis(200), Duration::from_millis(6_400))
                            .delay(failures),
                    )
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
            tokio::select! {
                _ = self.outbox.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        match tokio::time::timeout(LAST_ROUNDS, self.publish_committed()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(service = self.service, error = %e, "last outbox round failed");
            }
            Err(_) => tracing::warn!(
                service = self.service,
                limit_secs = LAST_ROUNDS.as_secs(),
                "last outbox rounds ran out of time; the rest waits for the next start"
            ),
        }
    }

    /// The rounds at a stop: batch after batch until the outbox has no more
    /// to give (a round short of a batch) or JetStream takes nothing.
    async fn publish_committed(&self) -> Result<(), RelayError> {
        loop {
            let filtered = self.unknown_seen.load(Ordering::Relaxed);
            let round = self.publish_pending().await?;
            let full = round.taken as i64 >= self.cfg.relay_batch_size;
            // A round that met unknown types for the first time sent
            // nothing, perhaps, yet the next one (filtered) may.
            let filter_just_set = !filtered && self.unknown_seen.load(Ordering::Relaxed);
            if !full || (round.sent == 0 && !filter_just_set) {
                return Ok(());
            }
        }
    }

    /// One round: takes a batch, publishes it in order, awaits the acks and
    /// marks what was acknowledged, all in one transaction holding the rows.
    /// Once rows of an event type this build does not know have been seen
    /// (a newer build wrote them, before a rollback), only rows of known
    /// types are taken: those rows wait for a build that knows them, and do
    /// not hold back the rows behind them (the audit reports them as not
    /// drained).
    pub async fn publish_pending(&self) -> Result<Round, RelayError> {
        let limit = Duration::from_secs(self.cfg.relay_lease_secs.max(1));
        let mut tx = self.pool.begin().await?;
        // A relay paused mid-round (not dead, so its connection stays open)
        // keeps its rows at most this long: then Postgres ends its session.
        // The setting is made by the same statement that takes the rows.
        let lease = (limit + Duration::from_secs(5)).as_millis().to_string();
        let take = sqlx::query_as::<_, Row>;
        let rows: Vec<Row> = if self.unknown_seen.load(Ordering::Relaxed) {
            take(take_rows!("AND event_type = ANY($3)"))
                .bind(self.cfg.relay_batch_size)
                .bind(lease)
                .bind(KNOWN_TYPES.as_slice())
                .fetch_all(&mut *tx)
                .await?
        } else {
            take(take_rows!(""))
                .bind(self.cfg.relay_batch_size)
                .bind(lease)
                .fetch_all(&mut *tx)
                .await?
        };
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Round { taken: 0, sent: 0 });
        }
        let taken = rows.len();
        crate::faults::crash_point(CrashPoint::RelayAfterTake);
        let (sent, failed) = match tokio::time::timeout(limit, self.publish(rows)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!(
                    service = self.service,
                    limit_secs = limit.as_secs(),
                    "outbox round ran out of time; its rows go to the next round"
                );
                (Vec::new(), Vec::new())
            }
        };
        if !sent.is_empty() {
            crate::faults::crash_point(CrashPoint::RelayAfterPublish);
            sqlx::query(
                "UPDATE outbox SET published_at = now(), claimed_until = NULL, last_error = NULL \
                 WHERE id = ANY($1)",
            )
            .bind(&sent)
            .execute(&mut *tx)
            .await?;
        }
        if !failed.is_empty() {
            let (ids, errors): (Vec<i64>, Vec<String>) = failed.into_iter().unzip();
            tracing::warn!(service = self.service, count = ids.len(), first_error = %errors[0], "outbox publish failed; will retry");
            metrics::counter!("saga_outbox_publish_errors_total", "service" => self.service)
                .increment(ids.len() as u64);
            sqlx::query(
                "UPDATE outbox AS o SET attempts = o.attempts + 1, last_error = f.error \
                 FROM UNNEST($1::bigint[], $2::text[]) AS f(id, error) WHERE o.id = f.id",
            )
            .bind(&ids)
            .bind(&errors)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        metrics::counter!("saga_outbox_published_total", "service" => self.service)
            .increment(sent.len() as u64);
        Ok(Round {
            taken,
            sent: sent.len(),
        })
    }

    /// Publishes `rows` in order and awaits their acks: the ids acknowledged,
    /// and those that failed with why.
    async fn publish(&self, rows: Vec<Row>) -> (Vec<i64>, Vec<(i64, String)>) {
        let mut pending = Vec::with_capacity(rows.len());
        let mut failed: Vec<(i64, String)> = Vec::new();
        for row in rows {
            let Some(event_type) = EventType::parse(&row.event_type) else {
                if !self.unknown_seen.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        service = self.service,
                        event_type = %row.event_type,
                        "outbox rows of an event type this build does not know: they wait for a \
                         build that knows it, and rounds now take only rows of known types"
                    );
                }
                failed.push((row.id, format!("unknown event type {:?}", row.event_type)));
                continue;
            };
            let meta = EventMeta {
                event_id: row.event_id,
                correlation_id: row.correlation_id,
                causation_id: row.causation_id,
                trace: TraceHeaders {
                    traceparent: row.traceparent,
                    tracestate: row.tracestate,
                },
            };
            let message = PublishMessage::build()
                .payload(row.payload.into())
                .headers(meta.to_headers(event_type));
            match self
                .js
                .send_publish(self.ns.subject(event_type), message)
                .await
            {
                Ok(ack) => pending.push((row.id, row.created_at, ack)),
                Err(e) => failed.push((row.id, e.to_string())),
            }
        }
        let acks = futures::future::join_all(
            pending
                .into_iter()
                .map(|(id, created, ack)| async move { (id, created, ack.await) }),
        )
        .await;
        let mut sent = Vec::with_capacity(acks.len());
        let now = Utc::now();
        for (id, created, result) in acks {
            match result {
                Ok(ack) => {
                    if ack.duplicate {
                        // The stream had it: published before by a relay
                        // that died before marking it (or by another relay).
                        metrics::counter!("saga_outbox_duplicates_total", "service" => self.service)
                            .increment(1);
                    }
                    sent.push(id);
                    let lag = (now - created).num_microseconds().unwrap_or(0) as f64 / 1e6;
                    metrics::histogram!("saga_outbox_lag_seconds", "service" => self.service)
                        .record(lag);
                }
                Err(e) => failed.push((id, e.to_string())),
            }
        }
        (sent, failed)
    }
}

/// Rows written but not yet published (for readiness detail and audits).
pub async fn unpublished(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
}

/// How long a stopping relay may go on publishing what was committed
/// before the stop.
const LAST_ROUNDS: Duration = Duration::from_secs(5);

/// The spellings of the event types this build publishes.
static KNOWN_TYPES: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| EventType::ALL.iter().map(|t| t.as_str()).collect());

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement that carries the insert as a CTE numbers its own
    /// parameters first: the insert's seven follow, and no others.
    #[test]
    fn the_insert_numbers_its_seven_parameters_from_the_first_it_is_given() {
        let sql = OutboxRows::insert_sql(16);
        for n in 16..=22 {
            assert!(sql.contains(&format!("${n}::")), "${n} missing: {sql}");
        }
        for n in [1, 15, 23] {
            assert!(!sql.contains(&format!("${n}::")), "${n} present: {sql}");
        }
    }
}
