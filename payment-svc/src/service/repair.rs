//! Payment's part in the repair loop (see `saga_shared::repair`): a capture
//! whose order was cancelled is refunded, through the same use-case as
//! `orders.cancelled`; one whose order was confirmed is noted as checked.

use saga_shared::repair::Page;

use saga_shared::BoxError;
use saga_shared::bus::EventMeta;
use saga_shared::repair::{Outcome, Participant};
use uuid::Uuid;

use crate::service::Payments;
use crate::store;

pub struct CaptureRepair {
    payments: Payments,
}

impl CaptureRepair {
    pub fn new(payments: Payments) -> Self {
        Self { payments }
    }

    async fn refund(&self, order: Uuid) -> Result<bool, BoxError> {
        // The refund's metric counts only if it commits (a pass that fails
        // refunds again on the next).
        let refunded = saga_shared::telemetry::recording_on_commit(async {
            let mut tx = self.payments.store().pool.begin().await?;
            store::lock_wallet_of(&mut tx, order).await?;
            let refunded = self
                .payments
                .refund_captured(&mut tx, order, &EventMeta::new(order, None))
                .await?;
            store::mark_checked(&mut *tx, &[order]).await?;
            tx.commit().await?;
            Ok::<_, BoxError>(refunded)
        })
        .await?;
        self.payments.wake_outbox();
        Ok(refunded)
    }
}

impl Participant for CaptureRepair {
    async fn open_orders(&self, page: Page) -> Result<Vec<Uuid>, BoxError> {
        Ok(store::unchecked_captures(&self.payments.store().pool, page).await?)
    }

    /// A confirmed order's capture is marked checked (it stays); a cancelled
    /// one's is refunded. Only a refund counts as a change.
    async fn finish(&self, order: Uuid, outcome: Outcome) -> Result<bool, BoxError> {
        match outcome {
            Outcome::Confirmed => {
                store::mark_checked(&self.payments.store().pool, &[order]).await?;
                Ok(false)
            }
            Outcome::Cancelled => self.refund(order).await,
        }
    }
}
