//! The inbox (`processed_events`): one row per event a consumer applied,
//! written in the same transaction as the event's effects, so an event is
//! applied at most once however often it is delivered. Each row keeps the
//! stream and sequence the event came from, when the stream stored it, its
//! order and its cause (for a saga's story, [`super::history`]).

use std::collections::HashSet;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::consumer::Delivery;

/// Which of `events` the consumer `consumer` has applied already (a cheap
/// read before any work, so redelivered and replayed events cost little).
pub async fn already_processed(
    pool: &PgPool,
    consumer: &str,
    events: &[Uuid],
) -> sqlx::Result<HashSet<Uuid>> {
    let done: Vec<Uuid> = sqlx::query_scalar(
        "SELECT event_id FROM processed_events WHERE consumer = $1 AND event_id = ANY($2)",
    )
    .bind(consumer)
    .bind(events)
    .fetch_all(pool)
    .await?;
    Ok(done.into_iter().collect())
}

/// Records events (one, or a batch) in the inbox with one statement, in the
/// caller's transaction; false unless every one of them was new (another
/// delivery applied it: the caller rolls back, and a batch is then handled
/// one event at a time).
pub async fn record(
    tx: &mut PgConnection,
    consumer: &str,
    batch: &[&Delivery],
) -> sqlx::Result<bool> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut types = Vec::with_capacity(batch.len());
    let mut streams = Vec::with_capacity(batch.len());
    let mut seqs = Vec::with_capacity(batch.len());
    let mut orders = Vec::with_capacity(batch.len());
    let mut causes = Vec::with_capacity(batch.len());
    let mut published = Vec::with_capacity(batch.len());
    for d in batch {
        ids.push(d.meta.event_id);
        types.push(d.event_type().as_str());
        streams.push(d.stream.as_str());
        seqs.push(i64::try_from(d.stream_seq).unwrap_or(i64::MAX));
        orders.push(d.order_id);
        causes.push(d.meta.causation_id);
        published.push(d.published);
    }
    let inserted = sqlx::query(
        "INSERT INTO processed_events \
             (consumer, event_id, event_type, stream, stream_seq, correlation_id, causation_id, \
              published_at) \
         SELECT $1, * FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::uuid[], \
                                  $7::uuid[], $8::timestamptz[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(&ids)
    .bind(&types)
    .bind(&streams)
    .bind(&seqs)
    .bind(&orders)
    .bind(&causes)
    .bind(&published)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == batch.len() as u64)
}
