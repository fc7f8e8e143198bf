//! Inventory's part in the repair loop (see `saga_shared::repair`): stock
//! still held for an order whose saga ended is released (cancelled) or sold
//! (confirmed), through the same use-cases as `orders.cancelled` and
//! `orders.confirmed`.

use std::time::Duration;

use saga_shared::BoxError;
use saga_shared::repair::{Outcome, Participant};
use uuid::Uuid;

use crate::domain::Holder;
use crate::service::{CloseAs, Closed, Inventory, InventoryError};

pub struct SagaRepair {
    inventory: Inventory,
}

impl SagaRepair {
    pub fn new(inventory: Inventory) -> Self {
        Self { inventory }
    }

    async fn finish_one(&self, order: Uuid, outcome: Outcome) -> Result<bool, InventoryError> {
        let how = match outcome {
            Outcome::Cancelled => CloseAs::Release,
            Outcome::Confirmed => CloseAs::Commit,
        };
        let closed = self.inventory.close(Holder::Order(order), how).await?;
        Ok(matches!(closed, Closed::Done(_)))
    }
}

impl Participant for SagaRepair {
    async fn open_orders(
        &self,
        older_than: Duration,
        after: Uuid,
        limit: usize,
    ) -> Result<Vec<Uuid>, BoxError> {
        Ok(self
            .inventory
            .store()
            .open_sagas(older_than, after, limit as i64)
            .await?)
    }

    async fn finish(&self, ended: Vec<(Uuid, Outcome)>) -> Result<usize, BoxError> {
        let mut finished = 0;
        for (order, outcome) in ended {
            match self.finish_one(order, outcome).await {
                Ok(true) => finished += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(order_id = %order, outcome = outcome.as_str(), error = %e, "stock of an ended saga not finished");
                }
            }
        }
        Ok(finished)
    }
}
