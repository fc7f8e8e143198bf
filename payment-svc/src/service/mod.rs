//! The payment application: what the gRPC API, the event handlers and the
//! repair loop do, in terms of the store (Postgres) and the card gateway.
//! Each saga use-case runs in the caller's transaction and writes the event
//! it owes through the outbox there.

pub mod gateway;
pub mod repair;

use saga_shared::bus::{EventMeta, Outbox, SagaEvent};
use saga_shared::faults::{CrashPoint, crash_point};
use saga_shared::proto::events::v1 as pb;
use saga_shared::telemetry::record_on_commit;
use saga_shared::validate::FieldError;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, FailureReason, Payment, PaymentState, Wallet};
use crate::store::{self, Store, TopUpError};

pub use gateway::{Authorization, Gateway};

/// Why a payment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("amount_cents: {amount} would overflow the balance of {customer:?}")]
    Overflow { customer: String, amount: i64 },
    #[error("the payment of order {0} vanished while it was being locked")]
    Vanished(Uuid),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<TopUpError> for PaymentError {
    fn from(e: TopUpError) -> Self {
        match e {
            TopUpError::Overflow { customer, amount } => {
                PaymentError::Overflow { customer, amount }
            }
            TopUpError::Sql(e) => PaymentError::Db(e),
        }
    }
}

pub type Result<T, E = PaymentError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Payments {
    store: Store,
    gateway: Gateway,
    outbox: Outbox,
}

impl Payments {
    /// Locks the wallets of `customers` in one order, first in a batch's
    /// transaction, so that batches never deadlock on them.
    pub async fn lock_wallets(&self, tx: &mut PgConnection, customers: &[String]) -> Result<()> {
        Ok(store::lock_wallets(tx, customers).await?)
    }

    pub fn new(store: Store, gateway: Gateway, outbox: Outbox) -> Self {
        Self {
            store,
            gateway,
            outbox,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Tells this process's relay that new events are committed.
    pub fn wake_outbox(&self) {
        self.outbox.wake();
    }

    pub async fn wallet(&self, customer: &str) -> Result<Wallet> {
        domain::validate_customer("customer_id", customer)?;
        self.store.wallet(customer).await?.ok_or_else(|| {
            PaymentError::NotFound(format!("customer_id: no wallet for {customer:?}"))
        })
    }

    /// The payment of `order`; `owner`: the customer asking, who sees only
    /// its own (another's is as missing as one that never was), or `None`.
    pub async fn payment(&self, order: Uuid, owner: Option<&str>) -> Result<Payment> {
        match self.store.payment(order).await? {
            Some(p) if owner.is_none_or(|c| c == p.customer_id) => Ok(p),
            _ => Err(PaymentError::NotFound(format!(
                "order_id: no payment for order {order}"
            ))),
        }
    }

    /// Adds funds in the caller's transaction, creating the wallet on first
    /// use.
    pub async fn top_up_in(
        &self,
        tx: &mut PgConnection,
        customer: &str,
        amount: i64,
    ) -> Result<Wallet> {
        domain::validate_top_up(customer, amount)?;
        Ok(store::top_up(tx, customer, amount).await?)
    }

    /// The card gateway's answer for an order (outside any transaction).
    pub async fn authorize(&self, order: Uuid) -> Authorization {
        self.gateway.authorize(order).await
    }

    /// Takes the order's one payment in the caller's transaction: charges
    /// the wallet if the gateway approved and it holds enough, and writes
    /// `payments.succeeded` or `payments.failed` with `meta`. Does nothing if
    /// the order already has a payment (charged before, or cancelled first).
    pub async fn charge(
        &self,
        tx: &mut PgConnection,
        order: Uuid,
        customer: &str,
        amount: i64,
        auth: Authorization,
        meta: &EventMeta,
    ) -> Result<()> {
        domain::validate_customer("customer_id", customer)?;
        if amount < 0 {
            return Err(FieldError::new("amount_cents", format!("negative ({amount})")).into());
        }
        let Some(payment_id) = store::begin_payment(tx, order, customer, amount).await? else {
            return Ok(());
        };
        // Whether the payment row is settled already (a charge settles it).
        let (failure, settled) = match auth {
            Authorization::Declined => (Some(FailureReason::CardDeclined), false),
            Authorization::Approved if amount == 0 => (None, false),
            Authorization::Approved => {
                if store::charge_and_settle(tx, order, customer, amount).await? {
                    crash_point(CrashPoint::PaymentAfterCharge);
                    (None, true)
                } else {
                    (Some(FailureReason::InsufficientFunds), true)
                }
            }
        };
        if !settled {
            let state = match failure {
                None => PaymentState::Captured,
                Some(_) => PaymentState::Failed,
            };
            store::settle(tx, order, state, failure).await?;
        }
        let event = match failure {
            None => {
                record_on_commit(move || {
                    metrics::counter!("payment_captured_cents_total").increment(amount as u64);
                });
                SagaEvent::PaymentSucceeded(pb::PaymentSucceeded {
                    order_id: order.to_string(),
                    payment_id: payment_id.to_string(),
                    customer_id: customer.to_owned(),
                    amount_cents: amount,
                })
            }
            Some(reason) => {
                record_on_commit(move || {
                    metrics::counter!("payment_failures_total", "reason" => reason.as_str())
                        .increment(1);
                });
                SagaEvent::PaymentFailed(pb::PaymentFailed {
                    order_id: order.to_string(),
                    customer_id: customer.to_owned(),
                    reason: match reason {
                        FailureReason::InsufficientFunds => {
                            pb::PaymentFailureReason::InsufficientFunds
                        }
                        FailureReason::CardDeclined => pb::PaymentFailureReason::CardDeclined,
                    } as i32,
                })
            }
        };
        Outbox::enqueue(tx, meta, &event).await?;
        Ok(())
    }

    /// The order was cancelled: refund its captured payment, or leave a
    /// VOIDED tombstone so that a late charge takes nothing.
    pub async fn cancel(
        &self,
        tx: &mut PgConnection,
        order: Uuid,
        customer: &str,
        meta: &EventMeta,
    ) -> Result<()> {
        if store::void(tx, order, customer).await? {
            return Ok(());
        }
        self.refund_captured(tx, order, meta).await?;
        Ok(())
    }

    /// Refunds the order's payment if it is captured, writing
    /// `payments.refunded` with `meta`; false if there was nothing to refund.
    /// The order's payment row must exist.
    pub async fn refund_captured(
        &self,
        tx: &mut PgConnection,
        order: Uuid,
        meta: &EventMeta,
    ) -> Result<bool> {
        let Some(payment) = store::lock_payment(tx, order).await? else {
            return Err(PaymentError::Vanished(order));
        };
        if payment.state != PaymentState::Captured {
            return Ok(false);
        }
        store::refund(tx, &payment).await?;
        let refunded = payment.amount_cents as u64;
        record_on_commit(move || {
            metrics::counter!("payment_refunded_cents_total").increment(refunded);
        });
        let event = SagaEvent::PaymentRefunded(pb::PaymentRefunded {
            order_id: order.to_string(),
            payment_id: payment.payment_id.to_string(),
            customer_id: payment.customer_id.clone(),
            amount_cents: payment.amount_cents,
        });
        Outbox::enqueue(tx, meta, &event).await?;
        Ok(true)
    }
}
