//! A saga's story: the events of one order, from the tables every service
//! keeps. A producer's outbox holds each event it published (written with
//! the state change, under the same id the stream carries), and a
//! consumer's inbox holds each event it applied, with the stream, sequence
//! and time the stream stored it. Both are found by the order's id (the
//! events' correlation id). [`story`] merges what one or several services
//! know into one ordered list with causes and delays.
//!
//! Rows live as long as the retention ([`super::retention`]), which is never
//! shorter than the streams keep the events.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{EventType, StreamKind};

/// An event of the order in a producer's outbox.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Published {
    pub event_id: Uuid,
    pub event_type: String,
    pub causation_id: Option<Uuid>,
    /// When the producer committed it.
    pub created_at: DateTime<Utc>,
    /// When the relay had the stream's ack (None: not yet published).
    pub published_at: Option<DateTime<Utc>>,
}

/// An event of the order in a consumer's inbox.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Applied {
    pub consumer: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub causation_id: Option<Uuid>,
    pub stream: String,
    pub stream_seq: i64,
    /// When the stream stored it (None: a row from before this was kept).
    pub published_at: Option<DateTime<Utc>>,
    /// When the consumer's transaction applied it.
    pub processed_at: DateTime<Utc>,
}

/// The events this service's outbox holds for `order_id`.
pub async fn published(pool: &PgPool, order_id: Uuid) -> sqlx::Result<Vec<Published>> {
    sqlx::query_as(
        "SELECT event_id, event_type, causation_id, created_at, published_at \
         FROM outbox WHERE correlation_id = $1",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
}

/// The events this service's inbox holds for `order_id`.
pub async fn applied(pool: &PgPool, order_id: Uuid) -> sqlx::Result<Vec<Applied>> {
    sqlx::query_as(
        "SELECT consumer, event_id, event_type, causation_id, stream, stream_seq, published_at, \
             processed_at \
         FROM processed_events WHERE correlation_id = $1",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
}

/// One event of the story.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub event_id: Uuid,
    pub event_type: String,
    /// The service that publishes events of this type.
    pub producer: Option<&'static str>,
    /// When it happened: its producer's commit if known, else when the
    /// stream stored it, else when it was first applied.
    pub at: DateTime<Utc>,
    /// When the stream stored it (or the relay had the ack), if known.
    pub stored_at: Option<DateTime<Utc>>,
    pub stream: Option<String>,
    pub seq: Option<u64>,
    pub causation_id: Option<Uuid>,
    /// The cause's type, when the cause is in the story.
    pub caused_by: Option<String>,
    /// From the cause to this event (`at` to `at`).
    pub after_cause: Option<TimeDelta>,
    /// Who applied it, and when, in order.
    pub applied_by: Vec<(String, DateTime<Utc>)>,
}

/// The service publishing events of type `event_type` (as stored).
pub fn producer_of(event_type: &str) -> Option<&'static str> {
    EventType::parse(event_type).map(|t| match t.stream() {
        StreamKind::Orders => "order-svc",
        StreamKind::Inventory => "inventory-svc",
        StreamKind::Payments => "payment-svc",
        StreamKind::Reservations => "reservation-svc",
    })
}

/// Merges what outboxes and inboxes know of one order's events: one step
/// per event, ordered by when it happened (then by stream position).
pub fn story(
    published: impl IntoIterator<Item = Published>,
    applied: impl IntoIterator<Item = Applied>,
) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // Per step: whether its producer's commit time is known.
    let mut committed: Vec<bool> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut step_of = |steps: &mut Vec<Step>, committed: &mut Vec<bool>, id: Uuid, ty: &str, at| {
        *index.entry(id).or_insert_with(|| {
            steps.push(Step {
                event_id: id,
                event_type: ty.to_owned(),
                producer: producer_of(ty),
                at,
                stored_at: None,
                stream: None,
                seq: None,
                causation_id: None,
                caused_by: None,
                after_cause: None,
                applied_by: Vec::new(),
            });
            committed.push(false);
            steps.len() - 1
        })
    };
    for p in published {
        let i = step_of(
            &mut steps,
            &mut committed,
            p.event_id,
            &p.event_type,
            p.created_at,
        );
        let s = &mut steps[i];
        s.at = p.created_at;
        committed[i] = true;
        s.causation_id = s.causation_id.or(p.causation_id);
        s.stored_at = s.stored_at.or(p.published_at);
    }
    for a in applied {
        let seen = a.published_at.unwrap_or(a.processed_at);
        let i = step_of(&mut steps, &mut committed, a.event_id, &a.event_type, seen);
        let s = &mut steps[i];
        if !committed[i] && seen < s.at {
            s.at = seen;
        }
        s.causation_id = s.causation_id.or(a.causation_id);
        // The stream's own time beats the relay's ack time.
        if a.published_at.is_some() {
            s.stored_at = a.published_at;
        }
        s.stream.get_or_insert(a.stream);
        s.seq = s.seq.or(u64::try_from(a.stream_seq).ok());
        s.applied_by.push((a.consumer, a.processed_at));
    }
    let causes: HashMap<Uuid, (String, DateTime<Utc>)> = steps
        .iter()
        .map(|s| (s.event_id, (s.event_type.clone(), s.at)))
        .collect();
    for s in &mut steps {
        s.applied_by.sort_by_key(|(_, t)| *t);
        if let Some((cause, at)) = s.causation_id.and_then(|c| causes.get(&c)) {
            s.caused_by = Some(cause.clone());
            s.after_cause = Some(s.at - *at);
        }
    }
    steps.sort_by_key(|s| (s.at, s.seq));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::milliseconds(ms)
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn outbox_and_inbox_rows_of_one_event_make_one_step_with_its_cause_and_delay() {
        let placed = Published {
            event_id: id(1),
            event_type: "orders.placed".into(),
            causation_id: None,
            created_at: t(0),
            published_at: Some(t(5)),
        };
        let reserved = Published {
            event_id: id(2),
            event_type: "inventory.reserved".into(),
            causation_id: Some(id(1)),
            created_at: t(30),
            published_at: Some(t(31)),
        };
        let applied = |consumer: &str, event: &Published, stored: i64, seq: i64, at: i64| Applied {
            consumer: consumer.into(),
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            causation_id: event.causation_id,
            stream: "S".into(),
            stream_seq: seq,
            published_at: Some(t(stored)),
            processed_at: t(at),
        };
        let inbox = vec![
            applied("payment-svc", &placed, 4, 1, 25),
            applied("inventory-svc", &placed, 4, 1, 20),
            applied("order-svc", &reserved, 31, 7, 40),
        ];
        let steps = story(vec![reserved, placed], inbox);
        assert_eq!(steps.len(), 2);
        let (first, second) = (&steps[0], &steps[1]);
        assert_eq!(first.event_type, "orders.placed");
        assert_eq!(first.producer, Some("order-svc"));
        assert_eq!(first.at, t(0), "the producer's commit");
        assert_eq!(
            first.stored_at,
            Some(t(4)),
            "the stream's time beats the ack's"
        );
        assert_eq!((first.stream.as_deref(), first.seq), (Some("S"), Some(1)));
        let consumers: Vec<&str> = first.applied_by.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            consumers,
            ["inventory-svc", "payment-svc"],
            "in the order applied"
        );
        assert_eq!(first.caused_by, None);
        assert_eq!(second.caused_by.as_deref(), Some("orders.placed"));
        assert_eq!(second.after_cause, Some(TimeDelta::milliseconds(30)));
        assert_eq!(second.producer, Some("inventory-svc"));
    }

    #[test]
    fn an_event_known_only_from_an_inbox_happens_when_the_stream_stored_it() {
        let a = Applied {
            consumer: "order-svc".into(),
            event_id: id(9),
            event_type: "payments.succeeded".into(),
            causation_id: Some(id(404)),
            stream: "P".into(),
            stream_seq: 3,
            published_at: Some(t(70)),
            processed_at: t(90),
        };
        let steps = story(Vec::new(), vec![a]);
        assert_eq!(steps[0].at, t(70));
        assert_eq!(steps[0].causation_id, Some(id(404)));
        assert_eq!(steps[0].caused_by, None, "its cause is not in the story");
        assert_eq!(steps[0].producer, Some("payment-svc"));
    }
}
