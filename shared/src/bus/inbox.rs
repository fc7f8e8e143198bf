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

/// Records the event in the inbox, in the caller's transaction; false if it
/// was there already (another delivery applied it: the caller rolls back).
pub async fn record(tx: &mut PgConnection, consumer: &str, d: &Delivery) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO processed_events \
             (consumer, event_id, event_type, stream, stream_seq, correlation_id, causation_id, \
              published_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(d.meta.event_id)
    .bind(d.event_type().as_str())
    .bind(&d.stream)
    .bind(i64::try_from(d.stream_seq).unwrap_or(i64::MAX))
    .bind(d.order_id)
    .bind(d.meta.causation_id)
    .bind(d.published)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
