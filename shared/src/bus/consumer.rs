//! Durable pull consumers with an inbox.
//!
//! A service implements [`Handler`] for the events of one stream; [`Consumer`]
//! does the rest:
//!
//! 1. pulls from a durable consumer (explicit ack, bounded `max_deliver`);
//!    several instances of a service share it and compete for messages;
//! 2. decodes the envelope; what cannot be decoded goes to the DLQ;
//! 3. skips events already in `processed_events` (a cheap read, so a replay
//!    of handled events costs little);
//! 4. runs [`Handler::prepare`] outside any transaction (Redis, the card
//!    gateway: idempotent steps that must not hold a database transaction);
//! 5. inserts the inbox row and runs [`Handler::apply`] in one transaction,
//!    with `batch_size` events per transaction when so configured (a failed
//!    batch is redone one event at a time);
//! 6. acks after the commit. A transient error naks with exponential delay; a
//!    permanent one, or the last allowed delivery, goes to the DLQ.
//!
//! A conflict on the inbox row means another delivery already did the work:
//! the transaction is dropped and the message acked.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::{FutureExt, StreamExt};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use uuid::Uuid;

use super::dlq::{self, Origin};
use super::{EventMeta, EventType, Namespace, Outbox, SagaEvent, StreamKind};
use crate::BoxError;
use crate::config::BusConfig;
use crate::telemetry::TraceHeaders;

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (a database or Redis hiccup): nak with backoff; after
    /// `max_deliver` deliveries the message goes to the DLQ.
    #[error("transient: {0}")]
    Transient(#[source] BoxError),
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
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        Self::Transient(Box::new(e))
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
    pub subject: String,
    pub stream: String,
    pub stream_seq: u64,
    /// 1 on first delivery.
    pub delivered: i64,
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
    fn apply(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

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
}

impl<H: Handler> Clone for Consumer<H> {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
            stream: self.stream,
            handler: self.handler.clone(),
        }
    }
}

enum Opened {
    Event(Box<Delivery>),
    NotForUs,
    Poison(String),
}

impl<H: Handler> Consumer<H> {
    /// The durable is named after the service, so its instances share it.
    pub fn new(ctx: BusContext, stream: StreamKind, handler: Arc<H>) -> Self {
        Self {
            ctx,
            stream,
            handler,
        }
    }

    fn durable(&self) -> &'static str {
        self.ctx.service
    }

    fn stream_name(&self) -> String {
        self.ctx.ns.stream(self.stream)
    }

    async fn pull_consumer(&self) -> Result<jetstream::consumer::PullConsumer, BoxError> {
        let stream = self.ctx.js.get_stream(self.stream_name()).await?;
        let config = pull::Config {
            durable_name: Some(self.durable().to_owned()),
            description: Some(format!(
                "{} reading {}",
                self.ctx.service,
                self.stream_name()
            )),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ctx.cfg.ack_wait(),
            max_deliver: self.ctx.cfg.max_deliver,
            // One subject filter (nats-server 2.9 ignores `filter_subjects`).
            filter_subject: self.ctx.ns.stream_subjects(self.stream),
            max_ack_pending: (self.ctx.cfg.concurrency * self.ctx.cfg.batch_size * 4).max(1024)
                as i64,
            ..Default::default()
        };
        Ok(stream
            .get_or_create_consumer(self.durable(), config)
            .await?)
    }

    /// Consumes until `shutdown`, then finishes the messages in hand.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.ctx.cfg.concurrency));
        let mut tasks = JoinSet::new();
        'connect: while !shutdown.is_cancelled() {
            let messages = match this.pull_consumer().await {
                Ok(consumer) => {
                    consumer
                        .stream()
                        .max_messages_per_batch(this.ctx.cfg.fetch_size)
                        .heartbeat(Duration::from_secs(5))
                        .expires(Duration::from_secs(30))
                        .messages()
                        .await
                }
                Err(e) => {
                    tracing::warn!(service = this.ctx.service, stream = %this.stream_name(), error = %e, "consumer not available; retrying");
                    pause(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(service = this.ctx.service, error = %e, "pull failed; retrying");
                    pause(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::debug!(service = this.ctx.service, stream = %this.stream_name(), "consuming");
            let mut errors = 0u32;
            loop {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => break 'connect,
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                };
                let first = tokio::select! {
                    _ = shutdown.cancelled() => break 'connect,
                    m = messages.next() => m,
                };
                let mut batch = match first {
                    Some(Ok(m)) => {
                        errors = 0;
                        vec![m]
                    }
                    Some(Err(e)) => {
                        errors += 1;
                        tracing::debug!(service = this.ctx.service, error = %e, errors, "pull stream error");
                        if errors >= 5 {
                            // Possibly the durable was deleted (nats.rs #1584):
                            // look it up again, recreating it if needed.
                            tracing::warn!(service = this.ctx.service, error = %e, "repeated pull errors; reconnecting the consumer");
                            pause(&shutdown, Duration::from_millis(500)).await;
                            continue 'connect;
                        }
                        continue;
                    }
                    None => {
                        pause(&shutdown, Duration::from_millis(200)).await;
                        continue 'connect;
                    }
                };
                while batch.len() < this.ctx.cfg.batch_size {
                    match messages.next().now_or_never() {
                        Some(Some(Ok(m))) => batch.push(m),
                        _ => break,
                    }
                }
                let worker = this.clone();
                tasks.spawn(async move {
                    worker.handle_chunk(batch).await;
                    drop(permit);
                });
                while let Some(done) = tasks.try_join_next() {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "event task panicked");
                    }
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "event task panicked");
            }
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
            subject: msg.subject.to_string(),
            stream: info.stream.to_owned(),
            stream_seq: info.stream_sequence,
            delivered: info.delivered,
            span,
        }))
    }

    async fn handle_chunk(&self, msgs: Vec<jetstream::Message>) {
        let started = Instant::now();
        let mut live = Vec::with_capacity(msgs.len());
        for msg in msgs {
            match self.open(&msg) {
                Opened::Event(d) => live.push((msg, *d)),
                Opened::NotForUs => self.ack(&msg, AckKind::Ack).await,
                Opened::Poison(why) => {
                    let delivered = msg.info().map(|i| i.delivered).unwrap_or(0);
                    tracing::error!(service = self.ctx.service, subject = %msg.subject, error = %why, "poison message");
                    self.dead_letter(&msg, None, delivered, &why).await;
                }
            }
        }
        if live.is_empty() {
            return;
        }

        match self.already_processed(&live).await {
            Ok(done) if !done.is_empty() => {
                let mut rest = Vec::with_capacity(live.len());
                for (msg, d) in live {
                    if done.contains(&d.meta.event_id) {
                        self.count(&d, "duplicate");
                        self.ack(&msg, AckKind::Ack).await;
                    } else {
                        rest.push((msg, d));
                    }
                }
                live = rest;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(service = self.ctx.service, error = %e, "inbox lookup failed; handling anyway");
            }
        }

        let prepared = futures::future::join_all(
            live.iter()
                .map(|(_, d)| self.handler.prepare(d).instrument(d.span.clone())),
        )
        .await;
        let mut ready = Vec::with_capacity(live.len());
        for ((msg, d), p) in live.into_iter().zip(prepared) {
            match p {
                Ok(p) => ready.push((msg, d, p)),
                Err(e) => self.failed(&msg, &d, &e).await,
            }
        }

        let prepared: Vec<H::Prepared> = ready.iter().map(|(_, _, p)| p.clone()).collect();
        self.apply_ready(ready).await;
        for p in prepared {
            self.handler.finish(p).await;
        }
        self.observe(started);
    }

    async fn apply_ready(&self, ready: Vec<(jetstream::Message, Delivery, H::Prepared)>) {
        if ready.len() > 1 {
            match self.apply_batch(&ready).await {
                Ok(()) => {
                    for (msg, d, _) in &ready {
                        self.count(d, "applied");
                        self.ack(msg, AckKind::Ack).await;
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(service = self.ctx.service, error = %e, "batch failed; one event at a time");
                }
            }
        }
        for (msg, d, p) in ready {
            match self.apply_one(&d, p).instrument(d.span.clone()).await {
                Ok(fresh) => {
                    self.count(&d, if fresh { "applied" } else { "duplicate" });
                    self.ack(&msg, AckKind::Ack).await;
                }
                Err(e) => self.failed(&msg, &d, &e).await,
            }
        }
    }

    async fn already_processed(
        &self,
        live: &[(jetstream::Message, Delivery)],
    ) -> sqlx::Result<HashSet<Uuid>> {
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

    async fn apply_one(&self, d: &Delivery, p: H::Prepared) -> Result<bool, HandlerError> {
        let mut tx = self.ctx.pool.begin().await?;
        if !self.record(&mut tx, d).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        self.handler.apply(&mut tx, d, p).await?;
        tx.commit().await?;
        crate::faults::crash_point("consumer.after_commit");
        self.ctx.outbox.wake();
        Ok(true)
    }

    async fn apply_batch(
        &self,
        ready: &[(jetstream::Message, Delivery, H::Prepared)],
    ) -> Result<(), HandlerError> {
        let mut tx = self.ctx.pool.begin().await?;
        for (_, d, p) in ready {
            if !self.record(&mut tx, d).await? {
                // A duplicate inside the batch: let the one-by-one path sort it out.
                return Err(HandlerError::transient("duplicate within batch"));
            }
            self.handler
                .apply(&mut tx, d, p.clone())
                .instrument(d.span.clone())
                .await?;
        }
        tx.commit().await?;
        crate::faults::crash_point("consumer.after_commit");
        self.ctx.outbox.wake();
        Ok(())
    }

    async fn failed(&self, msg: &jetstream::Message, d: &Delivery, e: &HandlerError) {
        let last = d.delivered >= self.ctx.cfg.max_deliver;
        match e {
            HandlerError::Permanent(_) => {
                d.span
                    .in_scope(|| tracing::error!(error = %e, "event rejected for good"));
                self.dead_letter(msg, Some(d), d.delivered, &e.to_string())
                    .await;
            }
            HandlerError::Transient(_) if last => {
                d.span
                    .in_scope(|| tracing::error!(error = %e, "event failed on its last delivery"));
                self.dead_letter(msg, Some(d), d.delivered, &e.to_string())
                    .await;
            }
            HandlerError::Transient(_) => {
                let delay = self.ctx.cfg.nak_delay(d.delivered);
                d.span.in_scope(|| tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "event failed; will retry"));
                self.count(d, "retried");
                self.ack(msg, AckKind::Nak(Some(delay))).await;
            }
        }
    }

    async fn dead_letter(
        &self,
        msg: &jetstream::Message,
        d: Option<&Delivery>,
        delivered: i64,
        error: &str,
    ) {
        let (stream, seq) = match msg.info() {
            Ok(i) => (i.stream.to_owned(), i.stream_sequence),
            Err(_) => (self.stream_name(), 0),
        };
        let origin = Origin {
            consumer: self.durable(),
            stream: &stream,
            stream_seq: seq,
            delivered,
        };
        match dlq::dead_letter(&self.ctx.js, &self.ctx.ns, &msg.message, origin, error).await {
            Ok(()) => {
                metrics::counter!("saga_events_dead_lettered_total", "service" => self.ctx.service)
                    .increment(1);
                if let Some(d) = d {
                    self.count(d, "dead_lettered");
                }
                self.ack(msg, AckKind::Term).await;
            }
            Err(e) => {
                // Keep the message: better late than lost.
                tracing::error!(service = self.ctx.service, error = %e, "could not write to the DLQ; will retry");
                self.ack(msg, AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }

    async fn ack(&self, msg: &jetstream::Message, kind: AckKind) {
        if let Err(e) = msg.ack_with(kind).await {
            tracing::warn!(service = self.ctx.service, error = %e, "ack failed; the message will be redelivered");
        }
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

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}
