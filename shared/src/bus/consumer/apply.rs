//! Handling a chunk of received messages: the inbox check, prepare, apply
//! (one event or a batch per transaction), and settling each message: ack,
//! retry by kind of failure, or dead-letter.

use super::*;
use crate::bus::{inbox, outbox};

impl<H: Handler> Consumer<H> {
    pub(super) async fn handle_chunk(&self, msgs: Vec<Held>) {
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

    pub(super) async fn prepare_one(&self, d: &Delivery) -> Result<H::Prepared, HandlerError> {
        let prepare = self.handler.prepare(d).instrument(d.span.clone());
        match AssertUnwindSafe(prepare).catch_unwind().await {
            Ok(result) => result,
            Err(p) => Err(panicked("prepare", p)),
        }
    }

    async fn apply_ready(&self, ready: Vec<(Held, Delivery, H::Prepared)>) {
        if ready.len() > 1 {
            let batch = AssertUnwindSafe(crate::telemetry::recording_on_commit(
                self.apply_batch(&ready),
            ))
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
                Err(e) if e.is_database_unavailable() => {
                    // Each event alone would wait for the database again:
                    // the batch goes back whole, to be tried after the
                    // backoff.
                    for (held, d, _) in ready {
                        self.failed(held, &d, &e).await;
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(service = self.ctx.service, error = %e, "batch failed; one event at a time");
                    metrics::counter!(
                        "saga_batches_redone_total",
                        "service" => self.ctx.service,
                        "kind" => e.kind(),
                    )
                    .increment(1);
                }
            }
        }
        for (held, d, p) in ready {
            let one = AssertUnwindSafe(
                crate::telemetry::recording_on_commit(self.apply_one(&d, p))
                    .instrument(d.span.clone()),
            )
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

    /// Which of the redelivered events the inbox has already: they are
    /// acked without any work. A first delivery is not looked up (the
    /// lookup would cost a round trip and a transaction for every event to
    /// spare the rare duplicate its `prepare`), unless its durable was made
    /// again after the event was stored (`recheck_through`): then it may
    /// well have been applied. Otherwise the apply transaction's own
    /// inbox insert decides, and `prepare` is safe to run for an event that
    /// was applied (it already is when this lookup fails, or when another
    /// instance applies the event meanwhile).
    async fn already_processed(&self, live: &[(Held, Delivery)]) -> sqlx::Result<HashSet<Uuid>> {
        let ids: Vec<Uuid> = live
            .iter()
            .filter(|(_, d)| {
                d.delivered > 1 || d.stream_seq <= self.recheck_through.load(Ordering::Relaxed)
            })
            .map(|(_, d)| d.meta.event_id)
            .collect();
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        inbox::already_processed(&self.ctx.pool, self.durable(), &ids).await
    }

    /// Applies one event; `None` if the inbox already had it.
    pub(super) async fn apply_one(
        &self,
        d: &Delivery,
        p: H::Prepared,
    ) -> Result<Option<H::Committed>, HandlerError> {
        let mut tx = self.ctx.pool.begin().await?;
        // Alone as in a batch, the shared rows are locked first and in one
        // order: an event applied alone races batches too.
        let mut locked = self.handler.lock_batch(&mut tx, Batch(&[d])).await?;
        if !inbox::record(&mut tx, self.durable(), &[d]).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        let committed = self.handler.apply(&mut tx, d, p, &mut locked).await?;
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
        let events: Vec<&Delivery> = ready.iter().map(|(_, d, _)| d).collect();
        let mut locked = self.handler.lock_batch(&mut tx, Batch(&events)).await?;
        if !inbox::record(&mut tx, self.durable(), &events).await? {
            // One of them was applied already (or is twice in the batch):
            // the one-by-one path sorts it out.
            return Err(HandlerError::transient("duplicate within batch"));
        }
        let committed = outbox::holding_back(async {
            let mut committed = Vec::with_capacity(ready.len());
            for (_, d, p) in ready {
                committed.push(
                    self.handler
                        .apply(&mut tx, d, p.clone(), &mut locked)
                        .instrument(d.span.clone())
                        .await?,
                );
            }
            outbox::flush_held(&mut tx).await?;
            Ok::<_, HandlerError>(committed)
        })
        .await?;
        tx.commit().await?;
        crate::faults::crash_point(CrashPoint::ConsumerAfterCommit);
        self.ctx.outbox.wake();
        Ok(committed)
    }

    async fn failed(&self, held: Held, d: &Delivery, e: &HandlerError) {
        if let HandlerError::Permanent(_) = e {
            d.span
                .in_scope(|| tracing::error!(error = %e, "event rejected for good"));
            self.dead_letter(held, Some(d), d.delivered, &e.to_string())
                .await;
            return;
        }
        // The bound counts unexpected failures: deliveries that failed
        // transiently (an outage, a conflict) do not use it up.
        let unexpected = matches!(e, HandlerError::Unexpected(_));
        let (age, failures) = self.hands.retrying(d, d.published, unexpected);
        if unexpected && i64::from(failures) >= self.ctx.cfg.max_deliver {
            d.span.in_scope(|| {
                tracing::error!(error = %e, failures, deliveries = d.delivered, "event failed unexpectedly as often as allowed");
            });
            self.dead_letter(held, Some(d), d.delivered, &e.to_string())
                .await;
            return;
        }
        let delay = self.ctx.cfg.nak_delay(d.delivered);
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

    /// Copies the message to the DLQ and, once the DLQ has acknowledged the
    /// copy, terminates it. If the copy fails the message is handed back to
    /// be delivered again (the server's bound is unlimited): late, not lost.
    async fn dead_letter(&self, held: Held, d: Option<&Delivery>, delivered: i64, error: &str) {
        let (stream, seq, stored_at) = match held.msg.info() {
            Ok(i) => (
                i.stream.to_owned(),
                i.stream_sequence,
                i.published.with_timezone(&chrono::Utc),
            ),
            Err(_) => (self.stream_name(), 0, chrono::Utc::now()),
        };
        let origin = Origin {
            consumer: self.durable(),
            stream: &stream,
            stream_seq: seq,
            stored_at,
            delivered,
            replay: false,
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
                // If the DLQ was lost, it is made again (as a restart
                // would) for the next delivery's letter.
                let ctx = &self.ctx;
                if let Err(e) =
                    crate::bus::streams::ensure_streams(&ctx.js, &ctx.ns, &ctx.streams).await
                {
                    tracing::warn!(service = ctx.service, error = %e, "could not make the streams again");
                }
                self.settle(held, AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }

    /// Acks, naks or terminates a message and lets go of it.
    pub(super) async fn settle(&self, held: Held, kind: AckKind) {
        if let Err(e) = held.msg.ack_with(kind).await {
            tracing::warn!(service = self.ctx.service, error = %e, "ack failed; the message will be redelivered");
        }
        drop(held);
    }

    pub(super) fn count(&self, d: &Delivery, outcome: &'static str) {
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
pub(super) fn panicked(step: &str, payload: Box<dyn std::any::Any + Send>) -> HandlerError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    HandlerError::unexpected(format!("{step} panicked: {what}"))
}
