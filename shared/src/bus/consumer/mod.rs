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
//!    batch is redone one event at a time, unless it failed for want of the
//!    database: then it is handed back whole), then [`Handler::committed`];
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
//!
//! Files: [`handler`] (what a service implements and what it gets),
//! [`hands`] (the messages in hand and their progress reports), `apply.rs`
//! (handling a chunk: inbox check, prepare, apply, settle, dead-letter); the
//! inbox's SQL is [`super::inbox`].

mod apply;
pub mod handler;
mod hands;
mod replay;

use crate::backoff::Backoff;
use crate::faults::CrashPoint;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::checkpoint::Interest;
use super::dlq::{self, Origin};
use super::{EventMeta, EventType, Namespace, Outbox, SagaEvent, StreamKind};
use crate::config::{BusConfig, NatsConfig};

pub use handler::{Batch, Delivery, Handler, HandlerError, event_uuid, every_event};
use hands::{Hands, Held};
pub use replay::{FailureKind, LISTED, Missing, ReplayError, ReplayFailure, ReplayReport};

/// What a consumer needs from its service.
#[derive(Clone)]
pub struct BusContext {
    pub service: &'static str,
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub outbox: Outbox,
    pub cfg: BusConfig,
    /// The settings a stream found missing is made again with.
    pub streams: NatsConfig,
}

/// A durable consumer of one stream, driving a [`Handler`].
pub struct Consumer<H: Handler> {
    ctx: BusContext,
    stream: StreamKind,
    handler: Arc<H>,
    hands: Arc<Hands>,
    /// The stream's last sequence when its durable was found to have
    /// delivered nothing yet (made anew, or made again after it was lost):
    /// first deliveries up to it may have been applied before, so they
    /// are looked up in the inbox like redeliveries.
    recheck_through: Arc<AtomicU64>,
}

impl<H: Handler> Clone for Consumer<H> {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
            stream: self.stream,
            handler: self.handler.clone(),
            hands: self.hands.clone(),
            recheck_through: self.recheck_through.clone(),
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
            hands: Arc::default(),
            recheck_through: Arc::default(),
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
        let stream = self.stream_name();
        let consumer = self.ensure_durable_on(&stream, wanted).await?;
        if consumer.cached_info().delivered.stream_sequence == 0 {
            // Nothing delivered yet: a new durable, or one made again after
            // it was lost, which reads the stream from its start.
            match self.last_sequence(&stream).await {
                Ok(last) => {
                    self.recheck_through.fetch_max(last, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(service = self.ctx.service, %stream, error = %e, "the stream's last sequence unknown; first deliveries are not looked up in the inbox");
                }
            }
        }
        Ok(consumer)
    }

    async fn last_sequence(&self, stream: &str) -> Result<u64, crate::BoxError> {
        let mut s = self.ctx.js.get_stream(stream).await?;
        Ok(s.info().await?.state.last_sequence)
    }

    async fn ensure_durable_on(
        &self,
        stream: &str,
        wanted: async_nats::jetstream::consumer::pull::Config,
    ) -> Result<jetstream::consumer::PullConsumer, super::durable::DurableError> {
        let stream = stream.to_owned();
        match super::durable::ensure(&self.ctx.js, &stream, wanted.clone()).await {
            Err(super::durable::DurableError::Stream { source, .. })
                if super::durable::is_stream_not_found(&source) =>
            {
                // Deleted, or lost with its server's storage: made again,
                // as a restart would, so that new events flow (those it
                // held are gone with it).
                crate::bus::streams::ensure_streams(&self.ctx.js, &self.ctx.ns, &self.ctx.streams)
                    .await
                    .map_err(|e| super::durable::DurableError::Server {
                        stream: stream.clone(),
                        durable: self.durable().to_owned(),
                        source: Box::new(e),
                    })?;
                tracing::warn!(service = self.ctx.service, %stream, "the stream was missing; made it again");
                super::durable::ensure(&self.ctx.js, &stream, wanted).await
            }
            other => other,
        }
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
        let checkpointer = tokio::spawn(this.clone().checkpointer(keeper_stop.clone()));

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
        let _ = checkpointer.await;
    }

    /// Every `checkpoint_interval_secs`, moves this consumer's replay
    /// checkpoint as far as its inbox accounts for the stream.
    async fn checkpointer(self: Arc<Self>, stop: CancellationToken) {
        let every = Duration::from_secs(self.ctx.cfg.checkpoint_interval_secs);
        if every.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            let ctx = &self.ctx;
            let walked = crate::bus::checkpoint::advance(
                &ctx.pool,
                &ctx.js,
                &ctx.ns,
                self.durable(),
                self.stream,
                Interest {
                    wants: |t| self.handler.wants(t),
                    concerns: |e: &SagaEvent| self.handler.concerns(e),
                },
            );
            let walked = tokio::select! {
                w = walked => w,
                _ = stop.cancelled() => return,
            };
            match walked {
                Ok(c) => {
                    tracing::debug!(service = ctx.service, stream = %c.stream, checkpoint = c.seq, "replay checkpoint");
                }
                Err(e) => {
                    tracing::warn!(service = ctx.service, stream = %self.stream_name(), error = %e, "replay checkpoint not moved; next round retries");
                }
            }
        }
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
            let mut consumer = match self.ensure_durable().await {
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
                let mut got = 0usize;
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
                            got += 1;
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
                // An empty pull is also all that a durable deleted meanwhile
                // gives, with no error when its stream was made again at
                // once: make sure it is still there.
                if got == 0 && consumer.info().await.is_err() {
                    tracing::warn!(service = self.ctx.service, stream = %self.stream_name(), "the consumer is gone; reconnecting it");
                    continue 'connect;
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
        if !self.handler.concerns(&event) {
            return Opened::NotForUs;
        }
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
