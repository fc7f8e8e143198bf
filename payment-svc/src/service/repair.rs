//! Payment's part in the repair loop (see `saga_shared::repair`): a capture
//! whose order was cancelled is refunded, through the same use-case as
//! `orders.cancelled`; one whose order was confirmed is noted as checked.

use std::time::Duration;

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
        let mut tx = self.payments.store().pool().begin().await?;
        let refunded = self
            .payments
            .refund_captured(&mut tx, order, &EventMeta::new(order, None))
            .await?;
        store::mark_checked(&mut *tx, &[order]).await?;
        tx.commit().await?;
        self.payments.wake_outbox();
        Ok(refunded)
    }
}

impl Participant for CaptureRepair {
    async fn open_orders(
        &self,
        older_than: Duration,
        after: Uuid,
        limit: usize,
    ) -> Result<Vec<Uuid>, BoxError> {
        let pool = self.payments.store().pool();
        Ok(store::unchecked_captures(pool, older_than, after, limit as i64).await?)
    }

    async fn finish(&self, ended: Vec<(Uuid, Outcome)>) -> Result<usize, BoxError> {
        let confirmed: Vec<Uuid> = ended
            .iter()
            .filter(|(_, o)| *o == Outcome::Confirmed)
            .map(|(id, _)| *id)
            .collect();
        if !confirmed.is_empty() {
            store::mark_checked(self.payments.store().pool(), &confirmed).await?;
        }
        let mut refunded = 0;
        for (order, _) in ended.iter().filter(|(_, o)| *o == Outcome::Cancelled) {
            match self.refund(*order).await {
                Ok(true) => refunded += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(order_id = %order, error = %e, "capture of a cancelled order not refunded");
                }
            }
        }
        Ok(refunded)
    }
}
