//! The event envelope: a protobuf body whose type the subject names, and
//! headers that carry the event id (also `Nats-Msg-Id`, for publish dedup),
//! type, correlation (order id), causation, and W3C trace context.

use prost::Message as _;
use uuid::Uuid;

use super::EventType;
use crate::proto::events::v1 as pb;
use crate::telemetry::TraceHeaders;

/// Header names of the envelope.
pub mod headers {
    pub const EVENT_ID: &str = "Saga-Event-Id";
    pub const EVENT_TYPE: &str = "Saga-Event-Type";
    pub const CORRELATION_ID: &str = "Saga-Correlation-Id";
    pub const CAUSATION_ID: &str = "Saga-Causation-Id";
    pub const CONTENT_TYPE: &str = "Content-Type";
}

/// Any saga event, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum SagaEvent {
    OrderPlaced(pb::OrderPlaced),
    OrderReserved(pb::OrderReserved),
    OrderConfirmed(pb::OrderConfirmed),
    OrderCancelled(pb::OrderCancelled),
    InventoryReserved(pb::InventoryReserved),
    InventoryRejected(pb::InventoryRejected),
    ReservationHeld(pb::ReservationHeld),
    ReservationRejected(pb::ReservationRejected),
    PaymentSucceeded(pb::PaymentSucceeded),
    PaymentFailed(pb::PaymentFailed),
    PaymentRefunded(pb::PaymentRefunded),
}

macro_rules! each_event {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            SagaEvent::OrderPlaced($e) => $body,
            SagaEvent::OrderReserved($e) => $body,
            SagaEvent::OrderConfirmed($e) => $body,
            SagaEvent::OrderCancelled($e) => $body,
            SagaEvent::InventoryReserved($e) => $body,
            SagaEvent::InventoryRejected($e) => $body,
            SagaEvent::ReservationHeld($e) => $body,
            SagaEvent::ReservationRejected($e) => $body,
            SagaEvent::PaymentSucceeded($e) => $body,
            SagaEvent::PaymentFailed($e) => $body,
            SagaEvent::PaymentRefunded($e) => $body,
        }
    };
}

impl SagaEvent {
    pub fn event_type(&self) -> EventType {
        match self {
            SagaEvent::OrderPlaced(_) => EventType::OrderPlaced,
            SagaEvent::OrderReserved(_) => EventType::OrderReserved,
            SagaEvent::OrderConfirmed(_) => EventType::OrderConfirmed,
            SagaEvent::OrderCancelled(_) => EventType::OrderCancelled,
            SagaEvent::InventoryReserved(_) => EventType::InventoryReserved,
            SagaEvent::InventoryRejected(_) => EventType::InventoryRejected,
            SagaEvent::ReservationHeld(_) => EventType::ReservationHeld,
            SagaEvent::ReservationRejected(_) => EventType::ReservationRejected,
            SagaEvent::PaymentSucceeded(_) => EventType::PaymentSucceeded,
            SagaEvent::PaymentFailed(_) => EventType::PaymentFailed,
            SagaEvent::PaymentRefunded(_) => EventType::PaymentRefunded,
        }
    }

    /// The protobuf encoding of the body.
    pub fn encode(&self) -> Vec<u8> {
        each_event!(self, e => e.encode_to_vec())
    }

    /// The order this event belongs to, as written in the body.
    pub fn order_id(&self) -> &str {
        each_event!(self, e => e.order_id.as_str())
    }

    /// Decodes a body of the given type.
    pub fn decode(event_type: EventType, body: &[u8]) -> Result<Self, prost::DecodeError> {
        Ok(match event_type {
            EventType::OrderPlaced => Self::OrderPlaced(pb::OrderPlaced::decode(body)?),
            EventType::OrderReserved => Self::OrderReserved(pb::OrderReserved::decode(body)?),
            EventType::OrderConfirmed => Self::OrderConfirmed(pb::OrderConfirmed::decode(body)?),
            EventType::OrderCancelled => Self::OrderCancelled(pb::OrderCancelled::decode(body)?),
            EventType::InventoryReserved => {
                Self::InventoryReserved(pb::InventoryReserved::decode(body)?)
            }
            EventType::InventoryRejected => {
                Self::InventoryRejected(pb::InventoryRejected::decode(body)?)
            }
            EventType::ReservationHeld => Self::ReservationHeld(pb::ReservationHeld::decode(body)?),
            EventType::ReservationRejected => {
                Self::ReservationRejected(pb::ReservationRejected::decode(body)?)
            }
            EventType::PaymentSucceeded => {
                Self::PaymentSucceeded(pb::PaymentSucceeded::decode(body)?)
            }
            EventType::PaymentFailed => Self::PaymentFailed(pb::PaymentFailed::decode(body)?),
            EventType::PaymentRefunded => Self::PaymentRefunded(pb::PaymentRefunded::decode(body)?),
        })
    }

    /// The fully qualified protobuf message name of the body.
    pub fn message_name(event_type: EventType) -> &'static str {
        match event_type {
            EventType::OrderPlaced => "saga.events.v1.OrderPlaced",
            EventType::OrderReserved => "saga.events.v1.OrderReserved",
            EventType::OrderConfirmed => "saga.events.v1.OrderConfirmed",
            EventType::OrderCancelled => "saga.events.v1.OrderCancelled",
            EventType::InventoryReserved => "saga.events.v1.InventoryReserved",
            EventType::InventoryRejected => "saga.events.v1.InventoryRejected",
            EventType::ReservationHeld => "saga.events.v1.ReservationHeld",
            EventType::ReservationRejected => "saga.events.v1.ReservationRejected",
            EventType::PaymentSucceeded => "saga.events.v1.PaymentSucceeded",
            EventType::PaymentFailed => "saga.events.v1.PaymentFailed",
            EventType::PaymentRefunded => "saga.events.v1.PaymentRefunded",
        }
    }
}

/// Who an event is about and what caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    /// UUIDv7, also the `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// The order id.
    pub correlation_id: Option<Uuid>,
    /// The event (or request) that caused this one.
    pub causation_id: Option<Uuid>,
    pub trace: TraceHeaders,
}

impl EventMeta {
    /// A new event about `order_id`, caused by `causation_id`, in the trace of
    /// the current span.
    pub fn new(order_id: Uuid, causation_id: Option<Uuid>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            correlation_id: Some(order_id),
            causation_id,
            trace: TraceHeaders::current(),
        }
    }

    /// The NATS headers of an event of this type with this metadata.
    pub fn to_headers(&self, event_type: EventType) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        let id = self.event_id.to_string();
        h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        h.insert(headers::EVENT_ID, id.as_str());
        h.insert(headers::EVENT_TYPE, event_type.as_str());
        h.insert(
            headers::CONTENT_TYPE,
            format!(
                "application/protobuf; proto={}",
                SagaEvent::message_name(event_type)
            )
            .as_str(),
        );
        if let Some(c) = self.correlation_id {
            h.insert(headers::CORRELATION_ID, c.to_string().as_str());
        }
        if let Some(c) = self.causation_id {
            h.insert(headers::CAUSATION_ID, c.to_string().as_str());
        }
        self.trace.write_nats(&mut h);
        h
    }

    /// Reads the metadata from received headers; `None` if the event id is
    /// missing or malformed.
    pub fn from_headers(h: &async_nats::HeaderMap) -> Option<Self> {
        let uuid = |name: &str| h.get(name).and_then(|v| Uuid::parse_str(v.as_str()).ok());
        Some(Self {
            event_id: uuid(headers::EVENT_ID)?,
            correlation_id: uuid(headers::CORRELATION_ID),
            causation_id: uuid(headers::CAUSATION_ID),
            trace: TraceHeaders::from_nats(h),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_bytes_and_headers() {
        let ev = SagaEvent::OrderReserved(pb::OrderReserved {
            order_id: "o-1".into(),
            customer_id: "c".into(),
            amount_cents: 42,
        });
        let back = SagaEvent::decode(ev.event_type(), &ev.encode()).unwrap();
        assert_eq!(back, ev);
        assert_eq!(back.order_id(), "o-1");

        let meta = EventMeta {
            event_id: Uuid::now_v7(),
            correlation_id: Some(Uuid::now_v7()),
            causation_id: None,
            trace: TraceHeaders {
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                tracestate: None,
            },
        };
        let h = meta.to_headers(EventType::OrderReserved);
        assert_eq!(
            h.get(async_nats::header::NATS_MESSAGE_ID).unwrap().as_str(),
            meta.event_id.to_string()
        );
        assert_eq!(EventMeta::from_headers(&h).unwrap(), meta);
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(SagaEvent::decode(EventType::OrderPlaced, &[0xff, 0xff, 0xff]).is_err());
    }
}
