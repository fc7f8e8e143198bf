//! Durable pull consumers with an inbox.
//!
//! A service implements [`Handler`] for the events of one stream; [`Consumer`]
//! does the rest:
//!
//! 1. pulls from the service's durable (explicit ack; see [`super::durable`]
//!    for how it follows the configuration); instances of a service share it
//!    and compete for messages. It asks the server for no more messages than
//!    it has room for (`fetch_size`), and while a message is in its hands,
//!    waiting or being handled, it tells the server so every third of
//!    `ack_wait` ("in progress"), so no message is redelivered behind the
//!    back of the one handling it;
//! 2. decodes the envelope; what cannot be decoded goes to the DLQ;
//! 3. skips events already in `processed_events` (a cheap read, so a replay
//!    of handled events costs little);
//! 4. runs [`Handler::prepare`] outside any transaction (Redis, the card
//!    gateway: idempotent steps that must not hold a database transaction);
//! 5. inserts the inbox row and runs [`Handler::apply`] in one transaction,
//!    with `batch_size` events per transaction when so configured (a failed
//!    batch is redone one event at a time), then [`Handler::committed`];
//! 6. acks after the commit. What happens on failure depends on its kind
//!    ([`HandlerError`]): a dependency that is down is retried for as long
//!    as it takes, with capped backoff and a growing age in the logs and in
//!    `saga_event_retry_age_seconds`; invalid content goes to the DLQ at
//!    once; anything else is retried up to `bus.max_deliver` deliveries and
//!    then dead-lettered. A message is terminated only once its DLQ copy is
//!    acknowledged; until then the server keeps redelivering it (its own
//!    bound is unlimited), so nothing is dropped silently.
//!
//! A conflict on the inbox row means another delivery already did the work:
//! the transaction is dropped and the message acked.

use crate::backoff::Backoff;
use crate::faults::CrashPoint;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use uuid::Uuid;

use super::dlq::{self, Origin};
use super::{EventMeta, EventType, Namespace, Outbox, SagaEvent, StreamKind};
use crate::BoxError;
use crate::config::BusConfig;
use crate::telemetry::TraceHeaders;

/// Why handling an event failed, and so what happens to it.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency is down or busy, or a conflict (the database, Redis, a
    /// deadlock): retried with capped backoff until it succeeds, however
    /// long the outage lasts. Never dead-lettered.
    #[error("transient: {0}")]
    Transient(#[source] BoxError),
    /// Neither an outage nor invalid content (a database rule refusing the
    /// change, a bug): retried up to `bus.max_deliver` deliveries, then
    /// dead-lettered for an operator.
    #[error("unexpected: {0}")]
    Unexpected(#[source] BoxError),
    /// Will never succeed (invalid content): straight to the DLQ.
    #[error("permanent: {0}")]
    Permanent(#[source] BoxError),
}

impl HandlerError {
    pub fn permanent(msg: impl Into<String>) -> Self {
        Self::Permanent(msg.into().into())
    }

    pub fn transient(msg: impl Into<String>) -> Self {
        Self::Transient(msg.into().into())
    }

    pub fn unexpected(msg: impl Into<String>) -> Self {
        Self::Unexpected(msg.into().into())
    }

    fn kind(&self) -> &'static str {
        match self {
            HandlerError::Transient(_) => "transient",
            HandlerError::Unexpected(_) => "unexpected",
            HandlerError::Permanent(_) => "permanent",
        }
    }
}

impl From<sqlx::Error> for HandlerError {
    /// An outage or a conflict is transient; any other database error
    /// (a constraint, a missing table) is unexpected.
    fn from(e: sqlx::Error) -> Self {
        match crate::db::classify(&e) {
            crate::db::Failure::Unavailable | crate::db::Failure::Conflict => {
                Self::Transient(Box::new(e))
            }
            crate::db::Failure::Other => Self::Unexpected(Box::new(e)),
        }
    }
}

impl From<fred::error::Error> for HandlerError {
    fn from(e: fred::error::Error) -> Self {
        Self::Transient(Box::new(e))
    }
}

/// Parses an id field of an event; a malformed one is a permanent error.
pub fn event_uuid(field: &str, value: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(value)
        .map_err(|_| HandlerError::permanent(format!("{field}: not a UUID: {value:?}")))
}

/// One received event.
#[derive(Debug)]
pub struct Delivery {
    pub meta: EventMeta,
    pub event: SagaEvent,
    /// The event's order, parsed once here for every handler (an event
    /// whose `order_id` is not a UUID is dead-lettered before any handler).
    pub order_id: Uuid,
    pub subject: String,
    pub stream: String,
    pub stream_seq: u64,
    /// 1 on first delivery.
    pub delivered: i64,
    /// When the stream stored the event.
    pub published: chrono::DateTime<chrono::Utc>,
    /// The span of this event's handling, a child of the producer's trace.
    pub span: Span,
}

impl Delivery {
    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }

    /// Metadata for an event caused by this one: same order, same trace.
    pub fn follow_up(&self, order_id: Uuid) -> EventMeta {
        EventMeta {
            event_id: Uuid::now_v7(),
            correlation_id: Some(order_id),
            causation_id: Some(self.meta.event_id),
            trace: TraceHeaders::of(&self.span),
        }
    }
}

/// What a service does with the events of one stream.
pub trait Handler: Send + Sync + 'static {
    /// What [`Handler::prepare`] hands to [`Handler::apply`].
    type Prepared: Clone + Send + Sync + 'static;

    /// What [`Handler::apply`] leaves for [`Handler::committed`].
    type Committed: Send + 'static;

    /// Events of other types are acked without a trace in the inbox.
    fn wants(&self, event_type: EventType) -> bool;

    /// Work outside the database transaction. It may run more than once for
    /// one event (redelivery, a batch redone), so it must be idempotent.
    fn prepare(
        &self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Self::Prepared, HandlerError>> + Send;

    /// The effect, in the transaction that also records the event in the
    /// inbox. Events it publishes go through [`Outbox::enqueue`] on `tx`.
    /// What it returns is handed to [`Handler::committed`] once the
    /// transaction has committed (and dropped if it did not).
    fn apply(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<Self::Committed, HandlerError>> + Send;

    /// Work that must follow the commit of [`Handler::apply`]'s transaction
    /// (telling Redis what Postgres now says, say). It runs at most once per
    /// commit; if the process dies first, a later pass (reconciliation,
    /// repair) must be able to do it.
    fn committed(&self, _done: Self::Committed) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Runs once the event's transaction is over, whatever its outcome (to
    /// let go of a lock taken in `prepare`, say).
    fn finish(&self, _prepared: Self::Prepared) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a consumer needs from its service.
#[derive(Clone)]
pub struct BusContext {
    pub service: &'static str,
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub outbox: Outbox,
    pub cfg: BusConfig,
}

/// A durable consumer of one stream, driving a [`Handler`].
pub struct Consumer<H: Handler> {
    ctx: BusContext,
    stream: StreamKind,
    handler: Arc<H>,
    hands: Arc<Hands>,
}

impl<H: Handler> Clone for Consumer<H> {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
            stream: self.stream,
            handler: self.handler.clone(),
            hands: self.hands.clone(),
        }
    }
}

enum Opened {
    Event(Box<Delivery>),
    NotForUs,
    Poison(String),
}

/// The messages in this consumer's hands (received, not yet settled), and
/// the events that are failing transiently, for their age.
#[derive(Default)]
struct Hands {
    next_id: AtomicU64,
    held: Mutex<HashMap<u64, InHand>>,
    retrying: Mutex<HashMap<Uuid, Retrying>>,
}

struct InHand {
    reply: Option<async_nats::Subject>,
    client: async_nats::Client,
    /// When the server last heard about it (delivery, or "in progress").
    touched: Instant,
}

struct Retrying {
    event_type: EventType,
    /// When the event was first stored in its stream.
    published: chrono::DateTime<chrono::Utc>,
    seen: Instant,
}

/// A message in hand, from its arrival until it is settled; dropping it
/// (settled, or a task that died) stops the "in progress" notices, so a
/// message nobody settles is redelivered after `ack_wait`.
struct Held {
    id: u64,
    msg: jetstream::Message,
    hands: Arc<Hands>,
    _room: OwnedSemaphorePermit,
}

impl Drop for Held {
    fn drop(&mut self) {
        lock(&self.hands.held).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hands {
    fn hold(self: &Arc<Self>, msg: jetstream::Message, room: OwnedSemaphorePermit) -> Held {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.held).insert(
            id,
            InHand {
                reply: msg.reply.clone(),
                client: msg.context.client(),
                touched: Instant::now(),
            },
        );
        Held {
            id,
            msg,
            hands: self.clone(),
            _room: room,
        }
    }

    /// Tells the server "in progress" for every message in hand it has not
    /// heard about for `after`, so that its ack wait starts again.
    async fn keep_alive(&self, after: Duration) {
        let due: Vec<(async_nats::Subject, async_nats::Client)> = {
            let mut held = lock(&self.held);
            let now = Instant::now();
            held.values_mut()
                .filter(|h| now.duration_since(h.touched) >= after)
                .filter_map(|h| {
                    h.touched = now;
                    h.reply.clone().map(|r| (r, h.client.clone()))
                })
                .collect()
        };
        for (reply, client) in due {
            if let Err(e) = client.publish(reply, AckKind::Progress.into()).await {
                tracing::debug!(error = %e, "in-progress notice not sent");
            }
        }
    }

    fn retrying(&self, d: &Delivery, published: chrono::DateTime<chrono::Utc>) -> Duration {
        let mut retrying = lock(&self.retrying);
        let entry = retrying.entry(d.meta.event_id).or_insert(Retrying {
            event_type: d.event_type(),
            published,
            seen: Instant::now(),
        });
        entry.seen = Instant::now();
        (chrono::Utc::now() - entry.published)
            .to_std()
            .unwrap_or_default()
    }

    fn settled(&self, event_id: Uuid) {
        lock(&self.retrying).remove(&event_id);
    }

    /// The age of the oldest event still failing transiently, per event
    /// type (forgetting those not seen again for `forget`: another instance
    /// took them).
    fn retry_ages(&self, forget: Duration) -> HashMap<EventType, f64> {
        let mut retrying = lock(&self.retrying);
        retrying.retain(|_, r| r.seen.elapsed() < forget);
        let now = chrono::Utc::now();
        let mut out: HashMap<EventType, f64> = HashMap::new();
        for r in retrying.values() {
            let age = (now - r.published).num_milliseconds().max(0) as f64 / 1e3;
            let e = out.entry(r.event_type).or_default();
            *e = e.max(age);
        }
        out
    }
}

impl<H: Handler> Consumer<H> {
    /// The durable is named after the service, so its instances share it.
    pub fn new(ctx: BusContext, stream: StreamKind, handler: Arc<H>) -> Self {
        Self {
            ctx,
            stream,
            handler,
            hands: Arc::default(),
        }
    }

    fn durable(&self) -> &'static str {
        self.ctx.service
    }

    fn stream_name(&self) -> String {
        self.ctx.ns.stream(self.stream)
    }

    /// Creates the durable or brings it in line with the configuration; an
    /// error names a setting the server cannot change in place.
    pub async fn ensure_durable(
        &self,
    ) -> Result<jetstream::consumer::PullConsumer, super::durable::DurableError> {
        let wanted =
            super::durable::wanted(self.ctx.service, &self.ctx.ns, self.stream, &self.ctx.cfg);
        super::durable::ensure(&self.ctx.js, &self.stream_name(), wanted).await
    }

    /// Consumes until `shutdown`, then finishes the messages being handled
    /// and hands back (nak) those still waiting.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let cfg = &this.ctx.cfg;
        let room = Arc::new(Semaphore::new(cfg.fetch_size.max(cfg.batch_size)));
        let (tx, mut rx) = mpsc::unbounded_channel::<Held>();
        let intake_stop = CancellationToken::new();
        let intake = tokio::spawn(this.clone().intake(tx, room, intake_stop.clone()));
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(this.clone().keeper(keeper_stop.clone()));

        let permits = Arc::new(Semaphore::new(cfg.concurrency));
        let mut tasks = JoinSet::new();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = rx.recv() => m,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < cfg.batch_size {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let worker = this.clone();
            tasks.spawn(async move {
                worker.handle_chunk(batch).await;
                drop(permit);
            });
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "event task failed");
                }
            }
        }
        intake_stop.cancel();
        if let Err(e) = intake.await {
            tracing::error!(error = %e, "consumer intake failed");
        }
        // What waits unhandled goes back to the server at once, for another
        // instance (or the next start) to take.
        rx.close();
        while let Some(held) = rx.recv().await {
            this.settle(held, AckKind::Nak(None)).await;
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "event task failed");
            }
        }
        keeper_stop.cancel();
        let _ = keeper.await;
    }

    /// Pulls messages while there is room for them: each pull request asks
    /// for as many as there is room for, so nothing waits unseen in the
    /// client library's buffer, where its ack wait would run out.
    async fn intake(
        self: Arc<Self>,
        tx: mpsc::UnboundedSender<Held>,
        room: Arc<Semaphore>,
        stop: CancellationToken,
    ) {
        let mut failures = 0u32;
        'connect: while !stop.is_cancelled() {
            let consumer = match self.ensure_durable().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(service = self.ctx.service, stream = %self.stream_name(), error = %e, "consumer not available; retrying");
                    pause(&stop, backoff(&mut failures)).await;
                    continue;
                }
            };
            loop {
                // Wait until there is room for at least one message.
                let free = tokio::select! {
                    _ = stop.cancelled() => break 'connect,
                    p = room.clone().acquire_owned() => {
                        drop(p.expect("the semaphore is never closed"));
                        room.available_permits()
                    }
                };
                // No idle heartbeat: async-nats 0.51's batch stream returns
                // Pending on a heartbeat without asking to be woken, so the
                // messages after it sat unread until the request's own timer
                // fired (and some were redelivered). The server answers 408 at
                // expiry, which ends the request; a lost connection ends it at
                // async-nats's timer (expiry + 5 s).
                let batch = consumer
                    .batch()
                    .max_messages(free)
                    .expires(super::durable::PULL_EXPIRES)
                    .messages()
                    .await;
                let mut batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(service = self.ctx.service, stream = %self.stream_name(), error = %e, "pull failed; reconnecting the consumer");
                        pause(&stop, backoff(&mut failures)).await;
                        continue 'connect;
                    }
                };
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => break 'connect,
                        m = batch.next() => m,
                    };
                    match next {
                        Some(Ok(msg)) => {
                            failures = 0;
                            let Ok(slot) = room.clone().try_acquire_owned() else {
                                // More than asked for: let the server resend it.
                                tracing::debug!("message beyond the pull's size; handed back");
                                let _ = msg.ack_with(AckKind::Nak(None)).await;
                                continue;
                            };
                            let held = self.hands.hold(msg, slot);
                            if tx.send(held).is_err() {
                                break 'connect;
                            }
                        }
                        Some(Err(e)) => {
                            // Possibly the durable was deleted (nats.rs #1584):
                            // look it up again, recreating it if needed.
                            tracing::warn!(service = self.ctx.service, stream = %self.stream_name(), error = %e, "pull stream error; reconnecting the consumer");
                            pause(&stop, backoff(&mut failures)).await;
                            continue 'connect;
                        }
                        None => break,
                    }
                }
            }
        }
    }

    /// Every third of `ack_wait`: "in progress" for the messages in hand,
    /// and the age of the oldest event failing transiently.
    async fn keeper(self: Arc<Self>, stop: CancellationToken) {
        let every = (self.ctx.cfg.ack_wait() / 3).max(Duration::from_millis(100));
        let forget =
            Duration::from_millis(self.ctx.cfg.nak_max_delay_ms) * 3 + self.ctx.cfg.ack_wait() * 2;
        let stream = self.stream_name();
        let mut reported: HashSet<EventType> = HashSet::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            self.hands.keep_alive(every).await;
            let ages = self.hands.retry_ages(forget);
            for t in reported
                .iter()
                .chain(ages.keys())
                .copied()
                .collect::<HashSet<_>>()
            {
                metrics::gauge!(
                    "saga_event_retry_age_seconds",
                    "service" => self.ctx.service,
                    "stream" => stream.clone(),
                    "event_type" => t.as_str(),
                )
                .set(ages.get(&t).copied().unwrap_or(0.0));
            }
            reported.extend(ages.keys().copied());
        }
    }

    fn open(&self, msg: &jetstream::Message) -> Opened {
        let info = match msg.info() {
            Ok(info) => info,
            Err(e) => return Opened::Poison(format!("not a JetStream message: {e}")),
        };
        let Some(event_type) = self.ctx.ns.event_type_of(msg.subject.as_str()) else {
            return Opened::NotForUs;
        };
        if !self.handler.wants(event_type) {
            return Opened::NotForUs;
        }
        let Some(meta) = msg.headers.as_ref().and_then(EventMeta::from_headers) else {
            return Opened::Poison("missing or malformed Saga-Event-Id header".into());
        };
        let event = match SagaEvent::decode(event_type, &msg.payload) {
            Ok(e) => e,
            Err(e) => return Opened::Poison(format!("undecodable {event_type} body: {e}")),
        };
        let Ok(order_id) = Uuid::parse_str(event.order_id()) else {
            return Opened::Poison(format!("order_id: not a UUID: {:?}", event.order_id()));
        };
        let span = tracing::info_span!(
            "handle_event",
            otel.name = %format!("handle {event_type}"),
            service = self.ctx.service,
            event_type = %event_type,
            event_id = %meta.event_id,
            order_id = %event.order_id(),
            stream_seq = info.stream_sequence,
            delivered = info.delivered,
        );
        meta.trace.set_parent_of(&span);
        Opened::Event(Box::new(Delivery {
            meta,
            event,
            order_id,
            subject: msg.subject.to_string(),
            stream: info.stream.to_owned(),
            stream_seq: info.stream_sequence,
            delivered: info.delivered,
            published: info.published,
            span,
        }))
    }

    async fn handle_chunk(&self, msgs: Vec<Held>) {
        let started = Instant::now();
        let mut live = Vec::with_capacity(msgs.len());
        for held in msgs {
            match self.open(&held.msg) {
                Opened::Event(d) => live.push((held, *d)),
                Opened::NotForUs => self.settle(held, AckKind::Ack).await,
                Opened::Poison(why) => {
                    let delivered = held.msg.info().map(|i| i.delivered).unwrap_or(0);
                    tracing::error!(service = self.ctx.service, subject = %held.msg.subject, error = %why, "poison message");
                    self.dead_letter(held, None, delivered, &why).await;
                }
            }
        }
        if live.is_empty() {
            return;
        }

        match self.already_processed(&live).await {
            Ok(done) if !done.is_empty() => {
                let mut rest = Vec::with_capacity(live.len());
                for (held, d) in live {
                    if done.contains(&d.meta.event_id) {
                        self.count(&d, "duplicate");
                        self.hands.settled(d.meta.event_id);
                        self.settle(held, AckKind::Ack).await;
                    } else {
                        rest.push((held, d));
                    }
                }
                live = rest;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(service = self.ctx.service, error = %e, "inbox lookup failed; handling anyway");
            }
        }

        let prepared =
            futures::future::join_all(live.iter().map(|(_, d)| self.prepare_one(d))).await;
        let mut ready = Vec::with_capacity(live.len());
        for ((held, d), p) in live.into_iter().zip(prepared) {
            match p {
                Ok(p) => ready.push((held, d, p)),
                Err(e) => self.failed(held, &d, &e).await,
            }
        }

        let prepared: Vec<H::Prepared> = ready.iter().map(|(_, _, p)| p.clone()).collect();
        self.apply_ready(ready).await;
        for p in prepared {
            self.handler.finish(p).await;
        }
        self.observe(started);
    }

    async fn prepare_one(&self, d: &Delivery) -> Result<H::Prepared, HandlerError> {
        let prepare = self.handler.prepare(d).instrument(d.span.clone());
        match AssertUnwindSafe(prepare).catch_unwind().await {
            Ok(result) => result,
            Err(p) => Err(panicked("prepare", p)),
        }
    }

    async fn apply_ready(&self, ready: Vec<(Held, Delivery, H::Prepared)>) {
        if ready.len() > 1 {
            let batch = AssertUnwindSafe(self.apply_batch(&ready))
                .catch_unwind()
                .await
                .unwrap_or_else(|p| Err(panicked("apply", p)));
            match batch {
                Ok(committed) => {
                    for c in committed {
                        self.handler.committed(c).await;
                    }
                    for (held, d, _) in ready {
                        self.count(&d, "applied");
                        self.hands.settled(d.meta.event_id);
                        self.settle(held, AckKind::Ack).await;
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(service = self.ctx.service, error = %e, "batch failed; one event at a time");
                }
            }
        }
        for (held, d, p) in ready {
            let one = AssertUnwindSafe(self.apply_one(&d, p).instrument(d.span.clone()))
                .catch_unwind()
                .await
                .unwrap_or_else(|p| Err(panicked("apply", p)));
            match one {
                Ok(fresh) => {
                    let outcome = match fresh {
                        Some(c) => {
                            self.handler.committed(c).await;
                            "applied"
                        }
                        None => "duplicate",
                    };
                    self.count(&d, outcome);
                    self.hands.settled(d.meta.event_id);
                    self.settle(held, AckKind::Ack).await;
                }
                Err(e) => self.failed(held, &d, &e).await,
            }
        }
    }

    async fn already_processed(&self, live: &[(Held, Delivery)]) -> sqlx::Result<HashSet<Uuid>> {
        let ids: Vec<Uuid> = live.iter().map(|(_, d)| d.meta.event_id).collect();
        let done: Vec<Uuid> = sqlx::query_scalar(
            "SELECT event_id FROM processed_events WHERE consumer = $1 AND event_id = ANY($2)",
        )
        .bind(self.durable())
        .bind(&ids)
        .fetch_all(&self.ctx.pool)
        .await?;
        Ok(done.into_iter().collect())
    }

    /// Records the event in the inbox; false if it was there already.
    async fn record(&self, tx: &mut PgConnection, d: &Delivery) -> sqlx::Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, event_type, stream, stream_seq) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(self.durable())
        .bind(d.meta.event_id)
        .bind(d.event_type().as_str())
        .bind(&d.stream)
        .bind(i64::try_from(d.stream_seq).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Applies one event; `None` if the inbox already had it.
    async fn apply_one(
        &self,
        d: &Delivery,
        p: H::Prepared,
    ) -> Result<Option<H::Committed>, HandlerError> {
        let mut tx = self.ctx.pool.begin().await?;
        if !self.record(&mut tx, d).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        let committed = self.handler.apply(&mut tx, d, p).await?;
        tx.commit().await?;
        crate::faults::crash_point(CrashPoint::ConsumerAfterCommit);
        self.ctx.outbox.wake();
        Ok(Some(committed))
    }

    async fn apply_batch(
        &self,
        ready: &[(Held, Delivery, H::Prepared)],
    ) -> Result<Vec<H::Committed>, HandlerError> {
        let mut tx = self.ctx.pool.begin().await?;
        let mut committed = Vec::with_capacity(ready.len());
        for (_, d, p) in ready {
            if !self.record(&mut tx, d).await? {
                // A duplicate inside the batch: let the one-by-one path sort it out.
                return Err(HandlerError::transient("duplicate within batch"));
            }
            committed.push(
                self.handler
                    .apply(&mut tx, d, p.clone())
                    .instrument(d.span.clone())
                    .await?,
            );
        }
        tx.commit().await?;
        crate::faults::crash_point(CrashPoint::ConsumerAfterCommit);
        self.ctx.outbox.wake();
        Ok(committed)
    }

    async fn failed(&self, held: Held, d: &Delivery, e: &HandlerError) {
        let bound = self.ctx.cfg.max_deliver;
        match e {
            HandlerError::Permanent(_) => {
                d.span
                    .in_scope(|| tracing::error!(error = %e, "event rejected for good"));
                self.dead_letter(held, Some(d), d.delivered, &e.to_string())
                    .await;
            }
            HandlerError::Unexpected(_) if d.delivered >= bound => {
                d.span.in_scope(|| {
                    tracing::error!(error = %e, deliveries = d.delivered, "event failed on its last allowed delivery");
                });
                self.dead_letter(held, Some(d), d.delivered, &e.to_string())
                    .await;
            }
            HandlerError::Unexpected(_) | HandlerError::Transient(_) => {
                let delay = self.ctx.cfg.nak_delay(d.delivered);
                let age = self.hands.retrying(d, d.published);
                d.span.in_scope(|| {
                    tracing::warn!(
                        error = %e,
                        kind = e.kind(),
                        deliveries = d.delivered,
                        age_secs = age.as_secs(),
                        retry_in_ms = delay.as_millis() as u64,
                        "event failed; will retry"
                    );
                });
                self.count(d, "retried");
                self.settle(held, AckKind::Nak(Some(delay))).await;
            }
        }
    }

    /// Copies the message to the DLQ and, once the DLQ has acknowledged the
    /// copy, terminates it. If the copy fails the message is handed back to
    /// be delivered again (the server's bound is unlimited): late, not lost.
    async fn dead_letter(&self, held: Held, d: Option<&Delivery>, delivered: i64, error: &str) {
        let (stream, seq) = match held.msg.info() {
            Ok(i) => (i.stream.to_owned(), i.stream_sequence),
            Err(_) => (self.stream_name(), 0),
        };
        let origin = Origin {
            consumer: self.durable(),
            stream: &stream,
            stream_seq: seq,
            delivered,
        };
        match dlq::dead_letter(&self.ctx.js, &self.ctx.ns, &held.msg.message, origin, error).await {
            Ok(()) => {
                metrics::counter!("saga_events_dead_lettered_total", "service" => self.ctx.service)
                    .increment(1);
                if let Some(d) = d {
                    self.count(d, "dead_lettered");
                    self.hands.settled(d.meta.event_id);
                }
                self.settle(held, AckKind::Term).await;
            }
            Err(e) => {
                tracing::error!(service = self.ctx.service, error = %e, "could not write to the DLQ; the message will be delivered again");
                metrics::counter!("saga_dlq_write_errors_total", "service" => self.ctx.service)
                    .increment(1);
                self.settle(held, AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }

    /// Acks, naks or terminates a message and lets go of it.
    async fn settle(&self, held: Held, kind: AckKind) {
        if let Err(e) = held.msg.ack_with(kind).await {
            tracing::warn!(service = self.ctx.service, error = %e, "ack failed; the message will be redelivered");
        }
        drop(held);
    }

    fn count(&self, d: &Delivery, outcome: &'static str) {
        metrics::counter!(
            "saga_events_handled_total",
            "service" => self.ctx.service,
            "event_type" => d.event_type().as_str(),
            "outcome" => outcome,
        )
        .increment(1);
    }

    fn observe(&self, started: Instant) {
        metrics::histogram!("saga_event_batch_seconds", "service" => self.ctx.service)
            .record(started.elapsed().as_secs_f64());
    }
}

/// A handler that panicked: an unexpected error (retried up to the bound,
/// then dead-lettered), not a dead task holding a message.
fn panicked(step: &str, payload: Box<dyn std::any::Any + Send>) -> HandlerError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    HandlerError::unexpected(format!("{step} panicked: {what}"))
}

/// 100 ms, doubling up to 5 s.
fn backoff(failures: &mut u32) -> Duration {
    const FETCH: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    *failures = failures.saturating_add(1);
    FETCH.delay(*failures)
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}
