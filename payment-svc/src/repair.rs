//! Payment's part in the repair loop (see `saga_shared::repair`): a capture
//! whose order was cancelled is refunded, through the same use-case as
//! `orders.cancelled`; one whose order was confirmed is noted as checked.

use std::time::Duration;

use saga_shared::BoxError;
use saga_shared::bus::{EventMeta, Outbox};
use saga_shared::repair::{Outcome, Participant};
use sqlx::PgPool;
use uuid::Uuid;

use crate::events::refund_captured;
use crate::store;

pub struct CaptureRepair {
    pool: PgPool,
    outbox: Outbox,
}

impl CaptureRepair {
    pub fn new(pool: PgPool, outbox: Outbox) -> Self {
        Self { pool, outbox }
    }

    async fn refund(&self, order: Uuid) -> Result<bool, BoxError> {
        let mut tx = self.pool.begin().await?;
        let refunded = refund_captured(&mut tx, order, &EventMeta::new(order, None)).await?;
        store::mark_checked(&mut *tx, &[order]).await?;
        tx.commit().await?;
        self.outbox.wake();
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
        Ok(store::unchecked_captures(&self.pool, older_than, after, limit as i64).await?)
    }

    async fn finish(&self, ended: Vec<(Uuid, Outcome)>) -> Result<usize, BoxError> {
        let confirmed: Vec<Uuid> = ended
            .iter()
            .filter(|(_, o)| *o == Outcome::Confirmed)
            .map(|(id, _)| *id)
            .collect();
        if !confirmed.is_empty() {
            store::mark_checked(&self.pool, &confirmed).await?;
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
