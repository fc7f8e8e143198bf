//! Replay checkpoints: per consumer and input stream, the sequence up to
//! which every message is accounted for, either not for this consumer or
//! applied (its event id is in the inbox). It is the highest *contiguous*
//! such sequence, not the highest seen: a message that was dead-lettered, or
//! is still being retried, holds it back. It lives in the service's schema
//! (`replay_checkpoints`), so a backup of the schema carries the checkpoint
//! that matches its inbox, and never moves backwards.
//!
//! [`advance`] walks the stream from the stored checkpoint with a reader of
//! its own ([`super::reader`]) and stores how far it got.

use std::collections::HashSet;

use sqlx::PgPool;
use uuid::Uuid;

use super::reader::{ReaderError, StreamReader};
use super::{EventMeta, EventType, Namespace, SagaEvent, StreamKind};

const BATCH: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error("checkpoint store: {0}")]
    Sql(#[from] sqlx::Error),
}

/// The first message that holds a checkpoint back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub seq: u64,
    pub event_type: EventType,
    /// None: the message has no readable event id.
    pub event_id: Option<Uuid>,
}

/// Where a consumer stands on one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub consumer: String,
    pub stream: String,
    /// Every message up to here is accounted for.
    pub seq: u64,
    /// The stream's first and last sequence when it was walked.
    pub stream_first: u64,
    pub stream_last: u64,
    /// What stopped the walk before the stream's end.
    pub gap: Option<Gap>,
}

/// The stored checkpoint of `consumer` on `stream` (0: none yet).
pub async fn stored(pool: &PgPool, consumer: &str, stream: &str) -> sqlx::Result<u64> {
    let seq: Option<i64> = sqlx::query_scalar(
        "SELECT seq FROM replay_checkpoints WHERE consumer = $1 AND stream = $2",
    )
    .bind(consumer)
    .bind(stream)
    .fetch_optional(pool)
    .await?;
    Ok(seq.map_or(0, |s| u64::try_from(s).unwrap_or(0)))
}

async fn store(pool: &PgPool, consumer: &str, stream: &str, seq: u64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO replay_checkpoints (consumer, stream, seq) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer, stream) DO UPDATE \
         SET seq = GREATEST(replay_checkpoints.seq, EXCLUDED.seq), updated_at = now()",
    )
    .bind(consumer)
    .bind(stream)
    .bind(i64::try_from(seq).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// What a consumer handles: the event types it wants and, of those, the
/// events that concern it (see `Handler::wants`, `Handler::concerns`).
pub struct Interest<W, C> {
    pub wants: W,
    pub concerns: C,
}

/// Moves the checkpoint of `consumer` (the durable's name, which its inbox
/// rows carry) on `kind` as far as every message is accounted for: not of
/// interest to the consumer, or in its inbox. Messages the stream no longer
/// holds are passed over: they cannot be replayed either.
pub async fn advance<W, C>(
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    consumer: &str,
    kind: StreamKind,
    interest: Interest<W, C>,
) -> Result<Checkpoint, CheckpointError>
where
    W: Fn(EventType) -> bool,
    C: Fn(&SagaEvent) -> bool,
{
    let wants = &interest.wants;
    let stream = ns.stream(kind);
    let was = stored(pool, consumer, &stream).await?;
    let mut seq = was;
    let mut reader = StreamReader::open(js, &stream, seq + 1, None).await?;
    let (stream_first, stream_last) = (reader.first, reader.last);
    if seq + 1 < stream_first {
        seq = stream_first - 1;
    }
    let mut gap = None;
    'walk: loop {
        let batch = reader.next_batch(BATCH).await?;
        if batch.is_empty() {
            break;
        }
        // (sequence, wanted event type and id, message) of each message.
        let mut positions = Vec::with_capacity(batch.len());
        for msg in &batch {
            let Ok(info) = msg.info() else { continue };
            let wanted = ns
                .event_type_of(msg.subject.as_str())
                .filter(|t| wants(*t))
                .map(|t| {
                    let id = msg
                        .headers
                        .as_ref()
                        .and_then(EventMeta::from_headers)
                        .map(|m| m.event_id);
                    (t, id)
                });
            positions.push((info.stream_sequence, wanted, msg));
        }
        let ids: Vec<Uuid> = positions
            .iter()
            .filter_map(|(_, w, _)| w.and_then(|(_, id)| id))
            .collect();
        let applied: HashSet<Uuid> = super::inbox::already_processed(pool, consumer, &ids).await?;
        for (at, wanted, msg) in positions {
            match wanted {
                None => seq = at,
                Some((_, Some(id))) if applied.contains(&id) => seq = at,
                // Not in the inbox because it does not concern the consumer
                // (decoded only here, for what the inbox lacks); one that
                // does not decode is a gap.
                Some((t, _))
                    if SagaEvent::decode(t, &msg.payload)
                        .is_ok_and(|e| !(interest.concerns)(&e)) =>
                {
                    seq = at;
                }
                Some((event_type, event_id)) => {
                    gap = Some(Gap {
                        seq: at,
                        event_type,
                        event_id,
                    });
                    break 'walk;
                }
            }
        }
    }
    reader.close().await;
    if seq > was {
        store(pool, consumer, &stream, seq).await?;
    }
    Ok(Checkpoint {
        consumer: consumer.to_owned(),
        stream,
        seq,
        stream_first,
        stream_last,
        gap,
    })
}
