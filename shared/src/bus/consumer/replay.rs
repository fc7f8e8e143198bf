//! Replay: running a stored range of a stream through the same path as live
//! delivery (open, inbox check, prepare, apply in one transaction with the
//! inbox row, committed, finish), read by a [`StreamReader`] of its own, so
//! the service's durable is untouched and the service can keep running. The
//! inbox makes it safe: what was applied is skipped, what is missing is
//! applied, once.

use super::apply::panicked;
use super::*;
use crate::bus::reader::{ReaderError, StreamReader};
use crate::bus::{dlq, inbox};

const BATCH: usize = 500;

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Reader(#[from] ReaderError),
    /// A dry run learns what was applied from the inbox alone.
    #[error("{service}'s inbox (processed_events) could not be read: {source}")]
    Inbox {
        service: &'static str,
        source: sqlx::Error,
    },
}

/// An event a replay applied, or would apply (`--dry-run`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub seq: u64,
    pub event_type: EventType,
    pub order_id: Uuid,
}

/// Why a replay could not apply an event, and where it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Undecodable or invalid: the live consumer dead-lettered it when it
    /// met it; not written to the DLQ again.
    Poison,
    /// A dependency was down or busy: not dead-lettered; replay again.
    Transient,
    /// The handler failed for good (a rule refused it, a bug): written to
    /// the DLQ (`dead_lettered`), marked as a replay's letter.
    Failed,
}

/// An event a replay could not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayFailure {
    pub seq: u64,
    pub kind: FailureKind,
    pub error: String,
    /// Its copy is in the DLQ (written by this replay).
    pub dead_lettered: bool,
}

/// What a replay read and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub read: u64,
    /// Events of types this service does not handle.
    pub not_for_us: u64,
    /// Events already in the inbox: skipped.
    pub already_applied: u64,
    /// Events applied now (with `dry_run`: none, see `missing`).
    pub applied: u64,
    /// How many events were not in the inbox: applied now, or with
    /// `dry_run` what a replay would apply.
    pub missing_count: u64,
    /// The first [`LISTED`] of them, in stream order.
    pub missing: Vec<Missing>,
    /// How many events failed.
    pub failed_count: u64,
    /// The first [`LISTED`] of them, in stream order.
    pub failed: Vec<ReplayFailure>,
    /// The last sequence read (0: none).
    pub last_seq: u64,
}

/// How many events a report lists of those missing and of those failed (a
/// replay of a whole stream into a restored database may apply millions):
/// the counts go on.
pub const LISTED: usize = 1_000;

impl ReplayReport {
    fn note_missing(&mut self, missing: Missing) {
        self.missing_count += 1;
        if self.missing.len() < LISTED {
            self.missing.push(missing);
        }
    }

    fn note_failed(&mut self, failure: ReplayFailure) {
        self.failed_count += 1;
        if self.failed.len() < LISTED {
            self.failed.push(failure);
        }
    }
}

impl<H: Handler> Consumer<H> {
    /// Replays what `reader` reads. With `dry_run` it changes nothing and
    /// lists the events a replay would apply. `progress` is called after
    /// each batch.
    pub async fn replay(
        &self,
        reader: &mut StreamReader,
        dry_run: bool,
        mut progress: impl FnMut(&ReplayReport),
    ) -> Result<ReplayReport, ReplayError> {
        let mut report = ReplayReport::default();
        loop {
            let batch = reader.next_batch(BATCH).await?;
            if batch.is_empty() {
                break;
            }
            report.read += batch.len() as u64;
            // Each event to handle, with its message (for a dead letter).
            let mut live = Vec::with_capacity(batch.len());
            for msg in &batch {
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                report.last_seq = report.last_seq.max(seq);
                match self.open(msg) {
                    Opened::Event(d) => live.push((*d, msg)),
                    Opened::NotForUs => report.not_for_us += 1,
                    Opened::Poison(error) => report.note_failed(ReplayFailure {
                        seq,
                        kind: FailureKind::Poison,
                        error,
                        dead_lettered: false,
                    }),
                }
            }
            let ids: Vec<Uuid> = live.iter().map(|(d, _)| d.meta.event_id).collect();
            let done = match inbox::already_processed(&self.ctx.pool, self.durable(), &ids).await {
                Ok(done) => done,
                // A dry run would list every event as missing.
                Err(source) if dry_run => {
                    return Err(ReplayError::Inbox {
                        service: self.ctx.service,
                        source,
                    });
                }
                // A replay decides event by event, by its inbox insert.
                Err(_) => HashSet::new(),
            };
            for (d, msg) in live {
                if done.contains(&d.meta.event_id) {
                    report.already_applied += 1;
                    continue;
                }
                let missing = Missing {
                    seq: d.stream_seq,
                    event_type: d.event_type(),
                    order_id: d.order_id,
                };
                if dry_run {
                    report.note_missing(missing);
                    continue;
                }
                match self.replay_one(&d).await {
                    Ok(true) => {
                        report.applied += 1;
                        report.note_missing(missing);
                    }
                    // Applied meanwhile by the live consumer.
                    Ok(false) => report.already_applied += 1,
                    Err(e) => {
                        let failure = self.replay_failed(&d, msg, e).await;
                        report.note_failed(failure);
                    }
                }
            }
            progress(&report);
        }
        Ok(report)
    }

    /// A replayed event that failed: dead-lettered unless the failure is
    /// transient (then the replay can simply run again).
    async fn replay_failed(
        &self,
        d: &Delivery,
        msg: &async_nats::jetstream::Message,
        e: HandlerError,
    ) -> ReplayFailure {
        let error = e.to_string();
        if matches!(e, HandlerError::Transient(_)) {
            return ReplayFailure {
                seq: d.stream_seq,
                kind: FailureKind::Transient,
                error,
                dead_lettered: false,
            };
        }
        let origin = dlq::Origin {
            consumer: self.durable(),
            stream: &d.stream,
            stream_seq: d.stream_seq,
            stored_at: d.published.with_timezone(&chrono::Utc),
            delivered: d.delivered,
            replay: true,
        };
        let written =
            dlq::dead_letter(&self.ctx.js, &self.ctx.ns, &msg.message, origin, &error).await;
        if let Err(ref w) = written {
            tracing::error!(service = self.ctx.service, seq = d.stream_seq, error = %w, "replay could not write a dead letter");
        }
        ReplayFailure {
            seq: d.stream_seq,
            kind: FailureKind::Failed,
            error,
            dead_lettered: written.is_ok(),
        }
    }

    /// One event through prepare, apply (with its inbox row), committed and
    /// finish; false if the inbox had it by then.
    async fn replay_one(&self, d: &Delivery) -> Result<bool, HandlerError> {
        let prepared = self.prepare_one(d).await?;
        let applied = AssertUnwindSafe(
            self.apply_one(d, prepared.clone())
                .instrument(d.span.clone()),
        )
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(panicked("apply", p)));
        let result = match applied {
            Ok(Some(committed)) => {
                self.handler.committed(committed).await;
                self.count(d, "replayed");
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        self.handler.finish(prepared).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replay of millions of events keeps counting them all and lists the
    /// first `LISTED` of each kind, so that its report (and the table
    /// sagactl prints from it) stays small.
    #[test]
    fn a_report_counts_every_event_and_lists_the_first_thousand() {
        let mut report = ReplayReport::default();
        for seq in 1..=2_500u64 {
            report.note_missing(Missing {
                seq,
                event_type: EventType::OrderPlaced,
                order_id: Uuid::nil(),
            });
            report.note_failed(ReplayFailure {
                seq,
                kind: FailureKind::Transient,
                error: "down".into(),
                dead_lettered: false,
            });
        }
        assert_eq!((report.missing_count, report.failed_count), (2_500, 2_500));
        assert_eq!(
            (report.missing.len(), report.failed.len()),
            (LISTED, LISTED)
        );
        assert_eq!(report.missing.last().map(|m| m.seq), Some(LISTED as u64));
    }
}
