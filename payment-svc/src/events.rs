//! Payment's reactions to order events:
//! - `orders.reserved`: authorize with the card gateway (outside the
//!   transaction), then charge the wallet with one conditional update;
//!   `payments.succeeded` or `payments.failed`.
//! - `orders.cancelled`: refund a captured payment (`payments.refunded`), or
//!   leave a VOIDED tombstone so a late `orders.reserved` charges nothing.

use saga_shared::bus::consumer::event_uuid;
use saga_shared::bus::{Delivery, EventMeta, EventType, Handler, HandlerError, Outbox, SagaEvent};
use saga_shared::faults::{CrashPoint, crash_point};
use saga_shared::proto::events::v1 as pb;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, FailureReason, PaymentState};
use crate::gateway::{Authorization, Gateway};
use crate::store;

pub struct OrderEvents {
    gateway: Gateway,
}

impl OrderEvents {
    pub fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }
}

impl Handler for OrderEvents {
    /// The gateway's answer, for `orders.reserved`.
    type Prepared = Option<Authorization>;
    type Committed = ();

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::OrderReserved | EventType::OrderCancelled
        )
    }

    async fn prepare(&self, d: &Delivery) -> Result<Option<Authorization>, HandlerError> {
        match &d.event {
            SagaEvent::OrderReserved(_) => {
                let order = event_uuid("order_id", d.event.order_id())?;
                Ok(Some(self.gateway.authorize(order).await))
            }
            _ => Ok(None),
        }
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        d: &Delivery,
        auth: Option<Authorization>,
    ) -> Result<(), HandlerError> {
        let order = event_uuid("order_id", d.event.order_id())?;
        match (&d.event, auth) {
            (SagaEvent::OrderReserved(e), Some(auth)) => reserved(tx, d, order, e, auth).await,
            (SagaEvent::OrderCancelled(e), _) => cancelled(tx, d, order, &e.customer_id).await,
            (other, _) => Err(HandlerError::permanent(format!(
                "payment does not handle {}",
                other.event_type()
            ))),
        }
    }
}

async fn reserved(
    tx: &mut PgConnection,
    d: &Delivery,
    order: Uuid,
    e: &pb::OrderReserved,
    auth: Authorization,
) -> Result<(), HandlerError> {
    domain::validate_customer("customer_id", &e.customer_id)
        .map_err(|fe| HandlerError::permanent(fe.to_string()))?;
    if e.amount_cents < 0 {
        return Err(HandlerError::permanent(format!(
            "amount_cents: negative ({})",
            e.amount_cents
        )));
    }
    let Some(payment_id) = store::begin_payment(tx, order, &e.customer_id, e.amount_cents).await?
    else {
        // Charged already, or the order was cancelled before this arrived.
        return Ok(());
    };
    let failure = match auth {
        Authorization::Declined => Some(FailureReason::CardDeclined),
        Authorization::Approved if e.amount_cents == 0 => None,
        Authorization::Approved => {
            if store::charge(tx, order, &e.customer_id, e.amount_cents).await? {
                crash_point(CrashPoint::PaymentAfterCharge);
                None
            } else {
                Some(FailureReason::InsufficientFunds)
            }
        }
    };
    let event = match failure {
        None => {
            store::settle(tx, order, PaymentState::Captured, None).await?;
            metrics::counter!("payment_captured_cents_total").increment(e.amount_cents as u64);
            SagaEvent::PaymentSucceeded(pb::PaymentSucceeded {
                order_id: order.to_string(),
                payment_id: payment_id.to_string(),
                customer_id: e.customer_id.clone(),
                amount_cents: e.amount_cents,
            })
        }
        Some(reason) => {
            store::settle(tx, order, PaymentState::Failed, Some(reason)).await?;
            metrics::counter!("payment_failures_total", "reason" => reason.as_str()).increment(1);
            SagaEvent::PaymentFailed(pb::PaymentFailed {
                order_id: order.to_string(),
                customer_id: e.customer_id.clone(),
                reason: match reason {
                    FailureReason::InsufficientFunds => pb::PaymentFailureReason::InsufficientFunds,
                    FailureReason::CardDeclined => pb::PaymentFailureReason::CardDeclined,
                } as i32,
            })
        }
    };
    Outbox::enqueue(tx, &d.follow_up(order), &event).await?;
    Ok(())
}

async fn cancelled(
    tx: &mut PgConnection,
    d: &Delivery,
    order: Uuid,
    customer: &str,
) -> Result<(), HandlerError> {
    if store::void(tx, order, customer).await? {
        return Ok(());
    }
    refund_captured(tx, order, &d.follow_up(order)).await?;
    Ok(())
}

/// Refunds the order's payment if it is captured, writing
/// `payments.refunded` with `meta`; false if there was nothing to refund.
/// The order's payment row must exist.
pub async fn refund_captured(
    tx: &mut PgConnection,
    order: Uuid,
    meta: &EventMeta,
) -> Result<bool, HandlerError> {
    let Some(payment) = store::lock_payment(tx, order).await? else {
        return Err(HandlerError::transient("payment vanished while locking it"));
    };
    if PaymentState::parse(&payment.state) != Some(PaymentState::Captured) {
        return Ok(false);
    }
    store::refund(tx, &payment).await?;
    metrics::counter!("payment_refunded_cents_total").increment(payment.amount_cents as u64);
    let event = SagaEvent::PaymentRefunded(pb::PaymentRefunded {
        order_id: order.to_string(),
        payment_id: payment.payment_id.to_string(),
        customer_id: payment.customer_id.clone(),
        amount_cents: payment.amount_cents,
    });
    Outbox::enqueue(tx, meta, &event).await?;
    Ok(true)
}
