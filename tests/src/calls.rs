//! One helper per call the tests make, through the typed calls of
//! [`sagactl::client::Clients`] (the CLI's own), and the requests and
//! answers they build and read.
//!
//! The helpers of the calls the tests judge by their status (place, get,
//! cancel) return the [`Status`]; the others an [`anyhow::Error`] holding
//! it.

use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::order::v1 as ord;
use saga_shared::proto::payment::v1 as pay;
use saga_shared::proto::reservation::v1 as rsv;
use sagactl::client::with_key;
use tonic::Status;

use crate::TestSystem;

impl TestSystem {
    /// Creates a SKU with `on_hand` units at `price_cents`.
    pub async fn seed_product(
        &self,
        sku: &str,
        price_cents: i64,
        on_hand: i64,
    ) -> anyhow::Result<inv::Stock> {
        let name = format!("product {sku}");
        Ok(self.clients.seed(sku, &name, price_cents, on_hand).await?)
    }

    pub async fn stock(&self, sku: &str) -> anyhow::Result<inv::Stock> {
        Ok(self.clients.get_stock(sku).await?)
    }

    pub async fn top_up(&self, customer: &str, amount_cents: i64) -> anyhow::Result<pay::Wallet> {
        let request = pay::TopUpRequest {
            customer_id: customer.into(),
            amount_cents,
        };
        Ok(self.clients.top_up(request).await?)
    }

    pub async fn wallet(&self, customer: &str) -> anyhow::Result<pay::Wallet> {
        Ok(self.clients.get_wallet(customer).await?)
    }

    pub async fn create_slot(&self, name: &str, capacity: i32) -> anyhow::Result<rsv::Slot> {
        Ok(self.clients.create_slot(name, capacity).await?)
    }

    pub async fn slot(&self, id: &str) -> anyhow::Result<rsv::Slot> {
        Ok(self.clients.get_slot(id).await?)
    }

    /// PlaceOrder as a client would send it; the status on refusal.
    pub async fn place(&self, request: ord::PlaceOrderRequest) -> Result<ord::Order, Status> {
        self.place_with_key(request, None).await
    }

    pub async fn place_with_key(
        &self,
        request: ord::PlaceOrderRequest,
        key: Option<&str>,
    ) -> Result<ord::Order, Status> {
        let request = with_key(request, key).map_err(|_| Status::internal("test key not ASCII"))?;
        self.clients.place_order(request).await
    }

    pub async fn get_order(&self, id: &str) -> Result<ord::Order, Status> {
        self.clients.get_order(id).await
    }

    /// CancelOrder as a client would send it.
    pub async fn cancel(&self, id: &str) -> Result<ord::Order, Status> {
        self.clients.cancel_order(id).await
    }
}

pub fn state(o: &ord::Order) -> ord::OrderState {
    ord::OrderState::try_from(o.state).unwrap_or(ord::OrderState::Unspecified)
}

pub fn reason(o: &ord::Order) -> ord::CancelReason {
    ord::CancelReason::try_from(o.cancel_reason).unwrap_or(ord::CancelReason::Unspecified)
}

/// A PlaceOrder request.
/// The events of a saga that confirms an order with a slot, each once.
pub const CONFIRMED_WITH_SLOT: [&str; 6] = [
    "orders.placed",
    "inventory.reserved",
    "reservations.held",
    "orders.reserved",
    "payments.succeeded",
    "orders.confirmed",
];

pub fn order_request(
    customer: &str,
    items: &[(&str, i64)],
    slot: Option<&str>,
) -> ord::PlaceOrderRequest {
    ord::PlaceOrderRequest {
        customer_id: customer.into(),
        items: items
            .iter()
            .map(|(sku, quantity)| ord::LineItem {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
        slot_id: slot.map(str::to_owned),
    }
}
