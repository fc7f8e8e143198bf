//! Payment's reactions to order events:
//! - `orders.reserved`: authorize with the card gateway (outside the
//!   transaction), then charge the wallet with one conditional update;
//!   `payments.succeeded` or `payments.failed`.
//! - `orders.cancelled`: refund a captured payment (`payments.refunded`), or
//!   leave a VOIDED tombstone so a late `orders.reserved` charges nothing.

use saga_shared::bus::consumer::Batch;
use saga_shared::bus::{Delivery, EventType, Handler, HandlerError, SagaEvent, StreamKind};
use sqlx::PgConnection;

use crate::service::Authorization;
use crate::service::{PaymentError, Payments};

/// The streams this service consumes.
pub const INPUT: &[StreamKind] = &[StreamKind::Orders];

/// The events it handles; the rest of its input streams is not for it.
pub const WANTS: &[EventType] = &[EventType::OrderReserved, EventType::OrderCancelled];

pub struct OrderEvents {
    pub payments: Payments,
}

impl From<PaymentError> for HandlerError {
    fn from(e: PaymentError) -> Self {
        match e {
            PaymentError::Db(db) => db.into(),
            PaymentError::Vanished(_) => HandlerError::Transient(Box::new(e)),
            PaymentError::Invalid(_)
            | PaymentError::NotFound(_)
            | PaymentError::Overflow { .. } => HandlerError::Permanent(Box::new(e)),
        }
    }
}

impl Handler for OrderEvents {
    /// The gateway's answer, for `orders.reserved`.
    type Prepared = Option<Authorization>;
    type Committed = ();
    type Locked = ();

    const WANTS: &'static [EventType] = WANTS;

    async fn lock_batch(&self, tx: &mut PgConnection, b: Batch<'_>) -> Result<(), HandlerError> {
        let customers = b.keys(|event| match event {
            SagaEvent::OrderReserved(e) => Some(e.customer_id.clone()),
            SagaEvent::OrderCancelled(e) => Some(e.customer_id.clone()),
            _ => None,
        });
        Ok(self.payments.lock_wallets(tx, &customers).await?)
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn prepare(&self, d: &Delivery) -> Result<Option<Authorization>, HandlerError> {
        // Only a charge asks the card gateway, and it must not wait inside
        // a transaction.
        let SagaEvent::OrderReserved(_) = &d.event else {
            return Ok(None);
        };
        Ok(Some(self.payments.authorize(d.order_id).await))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn apply(
        &self,
        tx: &mut PgConnection,
        d: &Delivery,
        auth: Option<Authorization>,
        _locked: &mut (),
    ) -> Result<(), HandlerError> {
        let order = d.order_id;
        let meta = d.follow_up(order);
        match (&d.event, auth) {
            (SagaEvent::OrderReserved(e), Some(auth)) => {
                self.payments
                    .charge(tx, order, &e.customer_id, e.amount_cents, auth, &meta)
                    .await?;
            }
            (SagaEvent::OrderCancelled(e), _) => {
                self.payments
                    .cancel(tx, order, &e.customer_id, &meta)
                    .await?;
            }
            (other, _) => {
                return Err(HandlerError::permanent(format!(
                    "payment does not handle {}",
                    other.event_type()
                )));
            }
        }
        Ok(())
    }
}
