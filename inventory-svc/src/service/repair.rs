//! Inventory's part in the repair loop (see `saga_shared::repair`): stock
//! still held for an order whose saga ended is released (cancelled) or sold
//! (confirmed), through the same use-cases as `orders.cancelled` and
//! `orders.confirmed`.

use saga_shared::repair::Page;

use saga_shared::BoxError;
use saga_shared::repair::{Outcome, Participant};
use uuid::Uuid;

use crate::domain::Holder;
use crate::service::{CloseAs, Closed, Inventory};

pub struct SagaRepair {
    inventory: Inventory,
}

impl SagaRepair {
    pub fn new(inventory: Inventory) -> Self {
        Self { inventory }
    }
}

impl Participant for SagaRepair {
    async fn open_orders(&self, page: Page) -> Result<Vec<Uuid>, BoxError> {
        Ok(self.inventory.store().open_sagas(page).await?)
    }

    async fn finish(&self, order: Uuid, outcome: Outcome) -> Result<bool, BoxError> {
        let how = match outcome {
            Outcome::Cancelled => CloseAs::Release,
            Outcome::Confirmed => CloseAs::Commit,
        };
        let closed = self.inventory.close(Holder::Order(order), how).await?;
        Ok(matches!(closed, Closed::Done(_)))
    }
}
