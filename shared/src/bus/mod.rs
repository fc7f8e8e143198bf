//! The JetStream bus: streams under a namespace, the event envelope, the
//! transactional outbox and its relay, durable consumers with an inbox, and
//! the dead-letter queue.
//!
//! Names: with namespace `saga`, the order service publishes to stream
//! `SAGA_ORDERS` on subjects `saga.orders.>` (`saga.orders.placed`, ...);
//! likewise `SAGA_INVENTORY`, `SAGA_PAYMENTS`, `SAGA_RESERVATIONS`, and
//! `SAGA_DLQ` on `saga.dlq.>`. Tests and environments pick their own
//! namespace so that they never share a stream.

pub mod checkpoint;
pub mod consumer;
pub mod dlq;
pub mod durable;
pub mod envelope;
pub mod history;
pub mod inbox;
pub mod outbox;
pub mod reader;
pub mod retention;
pub mod streams;

pub use consumer::{Delivery, Handler, HandlerError};
pub use envelope::{EventMeta, SagaEvent};
pub use outbox::{Outbox, OutboxRows};

use std::fmt;

use crate::config::{ConfigError, validate_namespace};

/// A validated namespace that prefixes streams, subjects and Redis keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    pub fn new(ns: &str) -> Result<Self, ConfigError> {
        validate_namespace(ns)?;
        Ok(Self(ns.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `SAGA_ORDERS` for [`StreamKind::Orders`] in namespace `saga`.
    pub fn stream(&self, kind: StreamKind) -> String {
        format!("{}_{}", self.0.to_ascii_uppercase(), kind.suffix())
    }

    /// `saga.orders.>`: every subject of a stream.
    pub fn stream_subjects(&self, kind: StreamKind) -> String {
        format!("{}.{}.>", self.0, kind.subject_token())
    }

    /// `saga.orders.placed`.
    pub fn subject(&self, event: EventType) -> String {
        format!("{}.{}", self.0, event.as_str())
    }

    /// The event type named by a subject of this namespace.
    pub fn event_type_of(&self, subject: &str) -> Option<EventType> {
        let rest = subject.strip_prefix(self.0.as_str())?.strip_prefix('.')?;
        EventType::parse(rest)
    }

    /// `SAGA_DLQ`.
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.0.to_ascii_uppercase())
    }

    /// `saga.dlq.>`.
    pub fn dlq_subjects(&self) -> String {
        format!("{}.dlq.>", self.0)
    }

    /// `saga.dlq.<consumer>.<stream>`: where a consumer's dead letters go.
    pub fn dlq_subject(&self, consumer: &str, stream: &str) -> String {
        format!("{}.dlq.{consumer}.{stream}", self.0)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The streams, one per publishing service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Orders,
    Inventory,
    Payments,
    Reservations,
}

impl StreamKind {
    pub const ALL: [StreamKind; 4] = [
        StreamKind::Orders,
        StreamKind::Inventory,
        StreamKind::Payments,
        StreamKind::Reservations,
    ];

    fn suffix(self) -> &'static str {
        match self {
            StreamKind::Orders => "ORDERS",
            StreamKind::Inventory => "INVENTORY",
            StreamKind::Payments => "PAYMENTS",
            StreamKind::Reservations => "RESERVATIONS",
        }
    }

    fn subject_token(self) -> &'static str {
        match self {
            StreamKind::Orders => "orders",
            StreamKind::Inventory => "inventory",
            StreamKind::Payments => "payments",
            StreamKind::Reservations => "reservations",
        }
    }
}

/// What a participant that holds something for an order from its placement
/// to its end (stock, a slot) handles: the placement and both ends.
pub const HOLDER_EVENTS: &[EventType] = &[
    EventType::OrderPlaced,
    EventType::OrderCancelled,
    EventType::OrderConfirmed,
];

/// Every event type of the saga; the string form is the subject suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    OrderPlaced,
    OrderReserved,
    OrderConfirmed,
    OrderCancelled,
    InventoryReserved,
    InventoryRejected,
    ReservationHeld,
    ReservationRejected,
    PaymentSucceeded,
    PaymentFailed,
    PaymentRefunded,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::OrderPlaced,
        EventType::OrderReserved,
        EventType::OrderConfirmed,
        EventType::OrderCancelled,
        EventType::InventoryReserved,
        EventType::InventoryRejected,
        EventType::ReservationHeld,
        EventType::ReservationRejected,
        EventType::PaymentSucceeded,
        EventType::PaymentFailed,
        EventType::PaymentRefunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderPlaced => "orders.placed",
            EventType::OrderReserved => "orders.reserved",
            EventType::OrderConfirmed => "orders.confirmed",
            EventType::OrderCancelled => "orders.cancelled",
            EventType::InventoryReserved => "inventory.reserved",
            EventType::InventoryRejected => "inventory.rejected",
            EventType::ReservationHeld => "reservations.held",
            EventType::ReservationRejected => "reservations.rejected",
            EventType::PaymentSucceeded => "payments.succeeded",
            EventType::PaymentFailed => "payments.failed",
            EventType::PaymentRefunded => "payments.refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn stream(self) -> StreamKind {
        match self {
            EventType::OrderPlaced
            | EventType::OrderReserved
            | EventType::OrderConfirmed
            | EventType::OrderCancelled => StreamKind::Orders,
            EventType::InventoryReserved | EventType::InventoryRejected => StreamKind::Inventory,
            EventType::ReservationHeld | EventType::ReservationRejected => StreamKind::Reservations,
            EventType::PaymentSucceeded | EventType::PaymentFailed | EventType::PaymentRefunded => {
                StreamKind::Payments
            }
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_namespace() {
        let ns = Namespace::new("t_1").unwrap();
        assert_eq!(ns.stream(StreamKind::Orders), "T_1_ORDERS");
        assert_eq!(ns.stream_subjects(StreamKind::Payments), "t_1.payments.>");
        assert_eq!(ns.subject(EventType::OrderPlaced), "t_1.orders.placed");
        assert_eq!(
            ns.event_type_of("t_1.inventory.rejected"),
            Some(EventType::InventoryRejected)
        );
        assert_eq!(ns.event_type_of("t_2.inventory.rejected"), None);
        assert_eq!(ns.event_type_of("t_1.inventory.nope"), None);
    }

    #[test]
    fn every_event_type_round_trips_and_lives_in_its_stream() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let ns = Namespace::new("saga").unwrap();
            let subject = ns.subject(t);
            let prefix = ns.stream_subjects(t.stream());
            assert!(
                subject.starts_with(prefix.trim_end_matches('>')),
                "{subject} not in {prefix}"
            );
        }
    }
}
