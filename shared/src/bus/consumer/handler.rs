//! What a service implements to consume a stream ([`Handler`]), what it
//! gets ([`Delivery`]), and how it says what went wrong ([`HandlerError`]).

use std::future::Future;

use sqlx::PgConnection;
use tracing::Span;
use uuid::Uuid;

use super::{EventMeta, EventType, SagaEvent};
use crate::BoxError;
use crate::telemetry::TraceHeaders;

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

    pub(super) fn kind(&self) -> &'static str {
        match self {
            HandlerError::Transient(_) => "transient",
            HandlerError::Unexpected(_) => "unexpected",
            HandlerError::Permanent(_) => "permanent",
        }
    }
}

impl HandlerError {
    /// Whether the database could not be reached: nothing the work did is
    /// at fault, and doing it again at once would only wait again.
    pub fn is_database_unavailable(&self) -> bool {
        match self {
            Self::Transient(e) => e
                .downcast_ref::<sqlx::Error>()
                .is_some_and(crate::db::is_unavailable),
            _ => false,
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

    /// What [`Handler::lock_batch`] read along with its locks, handed to
    /// every [`Handler::apply`] of the batch. `()` where nothing is read.
    type Locked: Default + Send;

    /// The event types it handles; events of other types are acked without
    /// a trace in the inbox.
    const WANTS: &'static [EventType];

    /// Whether it handles events of `event_type` (one of [`Handler::WANTS`]).
    fn wants(&self, event_type: EventType) -> bool {
        Self::WANTS.contains(&event_type)
    }

    /// Whether an event of a type it wants is about something this service
    /// keeps (reservation: an order with a slot). One that is not is acked
    /// like an event of another type: no transaction, no inbox row. It must
    /// decide from the event alone, the same way every time (checkpoints
    /// and replays ask it too).
    fn concerns(&self, _event: &SagaEvent) -> bool {
        true
    }

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
        locked: &mut Self::Locked,
    ) -> impl Future<Output = Result<Self::Committed, HandlerError>> + Send;

    /// Called first in every apply transaction, a batch's (`bus.batch_size`
    /// above 1) or an event's applied alone (a batch of one), before any
    /// event is applied: lock, in one fixed order, the rows that the events
    /// will change and that other transactions may change too (see
    /// [`crate::db::lock_in_order`]). Without it, batches lock shared rows
    /// in event order and deadlock, and an event applied alone that writes
    /// its order's own row before a shared one deadlocks with a batch that
    /// holds the shared row. Other writers of those rows (direct calls,
    /// repair) lock them in the same order. What it reads with the locks
    /// may serve the [`Handler::apply`]s.
    fn lock_batch(
        &self,
        _tx: &mut PgConnection,
        _batch: Batch<'_>,
    ) -> impl Future<Output = Result<Self::Locked, HandlerError>> + Send {
        async { Ok(Self::Locked::default()) }
    }

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

/// The events of one batch, in delivery order (what [`Handler::lock_batch`]
/// is given).
#[derive(Clone, Copy)]
pub struct Batch<'a>(pub &'a [&'a Delivery]);

impl Batch<'_> {
    /// The keys that the batch's events name, in event order, repeats and
    /// all (what [`Handler::lock_batch`] hands to
    /// [`crate::db::lock_in_order`]).
    pub fn keys<K, I: IntoIterator<Item = K>>(self, keys: impl Fn(&SagaEvent) -> I) -> Vec<K> {
        self.0.iter().flat_map(|d| keys(&d.event)).collect()
    }

    /// The orders the batch's events belong to, in event order.
    pub fn orders(self) -> Vec<Uuid> {
        self.0.iter().map(|d| d.order_id).collect()
    }
}

/// [`Handler::concerns`] of a service that handles every event of the types
/// it wants.
pub fn every_event(_event: &SagaEvent) -> bool {
    true
}
