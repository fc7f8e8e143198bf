//! Retention of what makes events and calls recognisable: the inbox
//! (`processed_events`), published outbox rows and idempotency keys. Each
//! is purged once older than `bus.retention_hours`, which is never shorter
//! than the streams' `max_age` ([`check`], [`check_streams`]: a service
//! refuses to start otherwise), so an event a stream still holds is still
//! recognised by every inbox that applied it and a replay never applies it
//! twice.
//!
//! What the inbox forgot is recorded per consumer and stream
//! (`inbox_horizon`, [`horizon`]): a replay that starts at or below it is
//! refused unless forced, since the inbox could no longer tell which of
//! those events were applied.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{Namespace, StreamKind};
use crate::config::ConfigError;

/// Rows one purge statement deletes at most (so no statement holds many
/// locks or runs long).
const BATCH: i64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("stream {stream}: {message}")]
    Stream { stream: String, message: String },
}

/// Whether a retention of `retention_hours` (0: forever) is safe for a
/// stream keeping events for `max_age` (zero: forever). `what` names the
/// stream (or the configured max_age) in the error.
pub fn check(retention_hours: u64, max_age: Duration, what: &str) -> Result<(), ConfigError> {
    if retention_hours == 0 {
        return Ok(());
    }
    let invalid = |message: String| ConfigError::Invalid {
        field: "bus.retention_hours".into(),
        message,
    };
    if max_age.is_zero() {
        return Err(invalid(format!(
            "is {retention_hours} h but {what} keeps events forever: the inbox would forget \
             events the stream still holds, and a replay would apply them again; set it to 0 \
             (keep forever) or give the streams a max_age"
        )));
    }
    let retention = Duration::from_secs(retention_hours.saturating_mul(3600));
    if retention < max_age {
        return Err(invalid(format!(
            "is {retention_hours} h, shorter than the {} h {what} keeps events: the inbox \
             would forget events the stream still holds, and a replay would apply them again; \
             make it at least {} (or 0: keep forever)",
            max_age.as_secs() / 3600,
            max_age.as_secs().div_ceil(3600)
        )));
    }
    Ok(())
}

/// [`check`] against the max_age the namespace's event streams really have
/// (an existing stream keeps the settings it was created with, whatever
/// the configuration says now).
pub async fn check_streams(
    js: &jetstream::Context,
    ns: &Namespace,
    retention_hours: u64,
) -> Result<(), RetentionError> {
    if retention_hours == 0 {
        return Ok(());
    }
    for kind in StreamKind::ALL {
        let name = ns.stream(kind);
        let error = |message: String| RetentionError::Stream {
            stream: name.clone(),
            message,
        };
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|e| error(e.to_string()))?;
        let max_age = stream
            .info()
            .await
            .map_err(|e| error(e.to_string()))?
            .config
            .max_age;
        check(retention_hours, max_age, &format!("stream {name}"))?;
    }
    Ok(())
}

/// Rows one purge deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub inbox: u64,
    pub outbox: u64,
    pub idempotency_keys: u64,
}

/// Deletes inbox rows, published outbox rows and idempotency keys older
/// than `retention`, in statements of a bounded size, and records in
/// `inbox_horizon` the highest sequence the inbox forgot per consumer and
/// stream. Unpublished outbox rows are never deleted.
pub async fn purge(pool: &PgPool, retention: Duration) -> sqlx::Result<Purged> {
    let secs = retention.as_secs_f64();
    let mut purged = Purged::default();
    loop {
        let n: i64 = sqlx::query_scalar(
            "WITH cut AS (SELECT now() - make_interval(secs => $1) AS at), \
             gone AS ( \
                 DELETE FROM processed_events p USING ( \
                     SELECT consumer, event_id FROM processed_events \
                     WHERE processed_at < (SELECT at FROM cut) LIMIT $2 \
                 ) old \
                 WHERE p.consumer = old.consumer AND p.event_id = old.event_id \
                 RETURNING p.consumer, p.stream, p.stream_seq \
             ), \
             remembered AS ( \
                 INSERT INTO inbox_horizon (consumer, stream, seq, purged_before) \
                 SELECT consumer, stream, max(stream_seq), (SELECT at FROM cut) \
                 FROM gone GROUP BY consumer, stream \
                 ON CONFLICT (consumer, stream) DO UPDATE SET \
                     seq = GREATEST(inbox_horizon.seq, EXCLUDED.seq), \
                     purged_before = GREATEST(inbox_horizon.purged_before, EXCLUDED.purged_before), \
                     updated_at = now() \
             ) \
             SELECT count(*) FROM gone",
        )
        .bind(secs)
        .bind(BATCH)
        .fetch_one(pool)
        .await?;
        purged.inbox += n as u64;
        if n < BATCH {
            break;
        }
    }
    purged.outbox = delete_in_batches(
        pool,
        secs,
        "DELETE FROM outbox WHERE id IN ( \
             SELECT id FROM outbox \
             WHERE published_at < now() - make_interval(secs => $1) LIMIT $2)",
    )
    .await?;
    purged.idempotency_keys = delete_in_batches(
        pool,
        secs,
        "DELETE FROM idempotency_keys k USING ( \
             SELECT scope, key FROM idempotency_keys \
             WHERE created_at < now() - make_interval(secs => $1) LIMIT $2 \
         ) old WHERE k.scope = old.scope AND k.key = old.key",
    )
    .await?;
    Ok(purged)
}

/// Runs `delete` (rows older than `$1` seconds, at most `$2` of them) until
/// it deletes fewer than a batch; returns how many it deleted.
async fn delete_in_batches(pool: &PgPool, secs: f64, delete: &'static str) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(delete)
            .bind(secs)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// What the inbox of a consumer forgot of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Horizon {
    /// The highest sequence of a purged inbox row: a replay from here or
    /// below cannot tell every applied event from a missing one.
    pub seq: u64,
    /// Inbox rows written before this time may be gone.
    pub purged_before: DateTime<Utc>,
}

/// How far apart the clock that stamps an event id (a service's) and the
/// one that stamps inbox rows (Postgres's) may be, for [`Horizon::may_have_forgotten`].
pub const CLOCK_SLACK: chrono::TimeDelta = chrono::TimeDelta::hours(1);

impl Horizon {
    /// Whether the inbox may have forgotten an event stored at stream
    /// sequence `seq`, whose id was minted at `minted` (a UUIDv7's time;
    /// None if the id carries none). An inbox row is written after its event
    /// is minted, so it is gone only if rows that young were purged; and a
    /// sequence at or below the horizon was forgotten, whatever its time.
    pub fn may_have_forgotten(&self, seq: u64, minted: Option<DateTime<Utc>>) -> bool {
        match minted {
            Some(at) => self.seq >= seq || self.purged_before > at - CLOCK_SLACK,
            None => true,
        }
    }
}

/// When the UUIDv7 `id` was minted (None for ids of other versions).
pub fn minted_at(id: uuid::Uuid) -> Option<DateTime<Utc>> {
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

/// What `consumer`'s inbox forgot of `stream` (None: nothing yet).
pub async fn horizon(pool: &PgPool, consumer: &str, stream: &str) -> sqlx::Result<Option<Horizon>> {
    let row: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT seq, purged_before FROM inbox_horizon WHERE consumer = $1 AND stream = $2",
    )
    .bind(consumer)
    .bind(stream)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(seq, purged_before)| Horizon {
        seq: u64::try_from(seq).unwrap_or(0),
        purged_before,
    }))
}

/// Purges every `every` while the service runs (several instances may:
/// each statement deletes what is still there).
pub async fn run(
    service: &'static str,
    pool: PgPool,
    retention_hours: u64,
    every: Duration,
    stop: CancellationToken,
) {
    if retention_hours == 0 || every.is_zero() {
        return;
    }
    let retention = Duration::from_secs(retention_hours.saturating_mul(3600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match purge(&pool, retention).await {
            Ok(p) => {
                for (table, n) in [
                    ("processed_events", p.inbox),
                    ("outbox", p.outbox),
                    ("idempotency_keys", p.idempotency_keys),
                ] {
                    metrics::counter!("saga_purged_rows_total", "service" => service, "table" => table)
                        .increment(n);
                }
                if p != Purged::default() {
                    tracing::info!(
                        service,
                        inbox = p.inbox,
                        outbox = p.outbox,
                        idempotency_keys = p.idempotency_keys,
                        "purged past retention"
                    );
                }
            }
            Err(e) => tracing::warn!(service, error = %e, "purge failed; next round retries"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_forgotten_if_its_sequence_or_its_time_was_purged() {
        let now = Utc::now();
        let h = Horizon {
            seq: 100,
            purged_before: now - chrono::TimeDelta::days(8),
        };
        let young = Some(now - chrono::TimeDelta::days(1));
        assert!(!h.may_have_forgotten(101, young), "past both");
        assert!(
            h.may_have_forgotten(100, young),
            "at the horizon's sequence"
        );
        let old = Some(now - chrono::TimeDelta::days(9));
        assert!(h.may_have_forgotten(500, old), "minted before the cut");
        let near = Some(now - chrono::TimeDelta::days(8) + chrono::TimeDelta::minutes(30));
        assert!(h.may_have_forgotten(500, near), "within the clocks' slack");
        assert!(h.may_have_forgotten(500, None), "no time to go by");
    }

    #[test]
    fn a_uuid_v7_tells_when_it_was_minted() {
        let before = Utc::now() - chrono::TimeDelta::milliseconds(1);
        let at = minted_at(uuid::Uuid::now_v7()).expect("a v7 id has a time");
        assert!(at >= before && at <= Utc::now(), "{at}");
        assert_eq!(minted_at(uuid::Uuid::new_v4()), None);
        assert_eq!(minted_at(uuid::Uuid::nil()), None);
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_retention_shorter_than_the_streams_max_age_is_refused_naming_the_field() {
        let e = check(24, HOUR * 48, "stream SAGA_ORDERS").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("bus.retention_hours"), "{text}");
        assert!(text.contains("48 h stream SAGA_ORDERS"), "{text}");
        assert!(text.contains("at least 48"), "{text}");
    }

    #[test]
    fn a_finite_retention_of_streams_that_keep_forever_is_refused() {
        let e = check(24, Duration::ZERO, "stream SAGA_ORDERS").unwrap_err();
        assert!(e.to_string().contains("keeps events forever"), "{e}");
    }

    #[test]
    fn equal_longer_and_forever_retentions_are_accepted() {
        check(48, HOUR * 48, "s").unwrap();
        check(49, HOUR * 48, "s").unwrap();
        check(0, HOUR * 48, "s").unwrap();
        check(0, Duration::ZERO, "s").unwrap();
        // A max_age that is not a whole number of hours needs the next hour.
        let e = check(1, HOUR + Duration::from_secs(1), "s").unwrap_err();
        assert!(e.to_string().contains("at least 2"), "{e}");
    }
}
