//! gRPC clients of the four services, each call carrying the current trace
//! context, and the typed calls the CLI and the test harness make through
//! them: one method of [`Clients`] per call, taking plain values and
//! returning the object the answer carries.
//!
//! A typed call fails with the service's [`Status`]; an answer without the
//! object it must carry is an `INTERNAL` status. [`status_error`] turns a
//! status into the CLI's error.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use saga_shared::auth::{ServiceToken, WithToken};
use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use saga_shared::proto::order::v1 as ord;
use saga_shared::proto::order::v1::order_service_client::OrderServiceClient;
use saga_shared::proto::payment::v1 as pay;
use saga_shared::proto::payment::v1::payment_service_client::PaymentServiceClient;
use saga_shared::proto::reservation::v1 as rsv;
use saga_shared::proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{IntoRequest, Request, Status};

use crate::poll::Poll;
use crate::show;

/// A client whose calls carry the trace context and the caller's token.
pub type Traced = InterceptedService<Channel, WithToken>;

/// Where the services listen, and the TLS of `https://` URLs.
#[derive(Clone, Debug)]
pub struct Urls {
    pub order: String,
    pub inventory: String,
    pub payment: String,
    pub reservation: String,
    /// The CA to trust (and the client certificate to present) for
    /// `https://` URLs.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Default for Urls {
    fn default() -> Self {
        Self {
            order: "http://127.0.0.1:50051".into(),
            inventory: "http://127.0.0.1:50052".into(),
            payment: "http://127.0.0.1:50053".into(),
            reservation: "http://127.0.0.1:50054".into(),
            tls: None,
        }
    }
}

#[derive(Clone)]
pub struct Clients {
    pub order: OrderServiceClient<Traced>,
    pub inventory: InventoryServiceClient<Traced>,
    pub payment: PaymentServiceClient<Traced>,
    pub reservation: ReservationServiceClient<Traced>,
}

fn lazy(url: &str, tls: Option<&tonic::transport::ClientTlsConfig>) -> anyhow::Result<Channel> {
    Ok(saga_shared::grpc::endpoint("url", url, tls)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect_lazy())
}

/// A request carrying an idempotency key (when there is one).
///
/// # Errors
/// The key is not printable ASCII.
pub fn with_key<T>(message: T, key: Option<&str>) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert(
            saga_shared::idempotency::METADATA_KEY,
            key.parse()
                .context("the idempotency key must be printable ASCII")?,
        );
    }
    Ok(request)
}

/// A refusal as the CLI reports it: `Code: message`, and for a refusal of
/// the credentials, where the CLI finds them.
pub fn status_error(s: Status) -> anyhow::Error {
    let hint = match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            "\n(sagactl sends --token or SAGA_TOKEN, else the admin token `sagactl up` writes \
             under SAGA_HOME (default ~/.saga); `sagactl token` mints one)"
        }
        _ => "",
    };
    anyhow::anyhow!("{:?}: {}{hint}", s.code(), s.message())
}

/// Whether the order has ended (CONFIRMED or CANCELLED).
pub fn is_terminal(o: &ord::Order) -> bool {
    o.state == ord::OrderState::Confirmed as i32 || o.state == ord::OrderState::Cancelled as i32
}

/// The object an answer must carry.
fn required<T>(field: Option<T>, what: &str) -> Result<T, Status> {
    field.ok_or_else(|| Status::internal(format!("no {what} in the answer")))
}

impl Clients {
    /// Clients that connect on first use; every call carries `caller`'s
    /// token.
    pub fn new(urls: &Urls, caller: &WithToken) -> anyhow::Result<Self> {
        Ok(Self {
            order: OrderServiceClient::with_interceptor(
                lazy(&urls.order, urls.tls.as_ref())?,
                caller.clone(),
            ),
            inventory: InventoryServiceClient::with_interceptor(
                lazy(&urls.inventory, urls.tls.as_ref())?,
                caller.clone(),
            ),
            payment: PaymentServiceClient::with_interceptor(
                lazy(&urls.payment, urls.tls.as_ref())?,
                caller.clone(),
            ),
            reservation: ReservationServiceClient::with_interceptor(
                lazy(&urls.reservation, urls.tls.as_ref())?,
                caller.clone(),
            ),
        })
    }

    /// Clients whose calls carry `token` (none if `None`).
    pub fn with_token(urls: &Urls, token: Option<String>) -> anyhow::Result<Self> {
        let caller = WithToken(Arc::new(
            token.map_or_else(ServiceToken::none, ServiceToken::fixed),
        ));
        Self::new(urls, &caller)
    }

    // ----- inventory -----

    /// Creates or updates a catalog entry.
    pub async fn upsert_product(
        &self,
        sku: &str,
        name: &str,
        unit_price_cents: i64,
    ) -> Result<inv::Stock, Status> {
        let answer = self
            .inventory
            .clone()
            .upsert_product(inv::UpsertProductRequest {
                sku: sku.to_owned(),
                name: name.to_owned(),
                unit_price_cents,
            })
            .await?;
        required(answer.into_inner().stock, "stock")
    }

    /// Adds (or removes, negative) units on hand, if the stock is still at
    /// `expected_version`.
    pub async fn adjust_stock(
        &self,
        sku: &str,
        delta: i64,
        expected_version: i64,
    ) -> Result<inv::Stock, Status> {
        let answer = self
            .inventory
            .clone()
            .adjust_stock(inv::AdjustStockRequest {
                sku: sku.to_owned(),
                delta,
                expected_version,
            })
            .await?;
        required(answer.into_inner().stock, "stock")
    }

    /// Creates or updates the catalog entry, then adds `quantity` units on
    /// hand (none if 0).
    pub async fn seed(
        &self,
        sku: &str,
        name: &str,
        unit_price_cents: i64,
        quantity: i64,
    ) -> Result<inv::Stock, Status> {
        let st = self.upsert_product(sku, name, unit_price_cents).await?;
        if quantity == 0 {
            return Ok(st);
        }
        self.adjust_stock(sku, quantity, st.version).await
    }

    pub async fn get_stock(&self, sku: &str) -> Result<inv::Stock, Status> {
        let answer = self
            .inventory
            .clone()
            .get_stock(inv::GetStockRequest {
                sku: sku.to_owned(),
            })
            .await?;
        required(answer.into_inner().stock, "stock")
    }

    /// A page of 100 stock entries from `page_token` (empty: the first).
    pub async fn list_stock(&self, page_token: String) -> Result<inv::ListStockResponse, Status> {
        let answer = self
            .inventory
            .clone()
            .list_stock(inv::ListStockRequest {
                page_size: 100,
                page_token,
                skus: vec![],
            })
            .await?;
        Ok(answer.into_inner())
    }

    // ----- payment -----

    /// Adds funds (creates the wallet); the request may carry an
    /// idempotency key (see [`with_key`]).
    pub async fn top_up(
        &self,
        request: impl IntoRequest<pay::TopUpRequest>,
    ) -> Result<pay::Wallet, Status> {
        let answer = self.payment.clone().top_up(request).await?;
        required(answer.into_inner().wallet, "wallet")
    }

    pub async fn get_wallet(&self, customer: &str) -> Result<pay::Wallet, Status> {
        let answer = self
            .payment
            .clone()
            .get_wallet(pay::GetWalletRequest {
                customer_id: customer.to_owned(),
            })
            .await?;
        required(answer.into_inner().wallet, "wallet")
    }

    /// The payment of an order.
    pub async fn get_payment(&self, order_id: &str) -> Result<pay::Payment, Status> {
        let answer = self
            .payment
            .clone()
            .get_payment(pay::GetPaymentRequest {
                order_id: order_id.to_owned(),
            })
            .await?;
        required(answer.into_inner().payment, "payment")
    }

    // ----- reservation -----

    pub async fn create_slot(&self, name: &str, capacity: i32) -> Result<rsv::Slot, Status> {
        let answer = self
            .reservation
            .clone()
            .create_slot(rsv::CreateSlotRequest {
                name: name.to_owned(),
                capacity,
            })
            .await?;
        required(answer.into_inner().slot, "slot")
    }

    pub async fn get_slot(&self, slot_id: &str) -> Result<rsv::Slot, Status> {
        let answer = self
            .reservation
            .clone()
            .get_slot(rsv::GetSlotRequest {
                slot_id: slot_id.to_owned(),
            })
            .await?;
        required(answer.into_inner().slot, "slot")
    }

    /// A page of 100 slots from `page_token` (empty: the first).
    pub async fn list_slots(&self, page_token: String) -> Result<rsv::ListSlotsResponse, Status> {
        let answer = self
            .reservation
            .clone()
            .list_slots(rsv::ListSlotsRequest {
                page_size: 100,
                page_token,
            })
            .await?;
        Ok(answer.into_inner())
    }

    // ----- orders -----

    /// Places an order; the request may carry an idempotency key (see
    /// [`with_key`]).
    pub async fn place_order(
        &self,
        request: impl IntoRequest<ord::PlaceOrderRequest>,
    ) -> Result<ord::Order, Status> {
        let answer = self.order.clone().place_order(request).await?;
        required(answer.into_inner().order, "order")
    }

    pub async fn get_order(&self, order_id: &str) -> Result<ord::Order, Status> {
        let answer = self
            .order
            .clone()
            .get_order(ord::GetOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await?;
        required(answer.into_inner().order, "order")
    }

    /// The first `limit` orders (of `customer`, if given).
    pub async fn list_orders(
        &self,
        customer: Option<String>,
        limit: i32,
    ) -> Result<ord::ListOrdersResponse, Status> {
        let answer = self
            .order
            .clone()
            .list_orders(ord::ListOrdersRequest {
                page_size: limit,
                page_token: String::new(),
                customer_id: customer,
                state: None,
            })
            .await?;
        Ok(answer.into_inner())
    }

    pub async fn cancel_order(&self, order_id: &str) -> Result<ord::Order, Status> {
        let answer = self
            .order
            .clone()
            .cancel_order(ord::CancelOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await?;
        required(answer.into_inner().order, "order")
    }

    /// Waits until the order ends (see [`is_terminal`]), asking every 20 ms.
    ///
    /// # Errors
    /// A refusal of GetOrder (as [`status_error`] puts it), or the order is
    /// still open after `limit`.
    pub async fn wait_for_end(
        &self,
        order_id: &str,
        limit: Duration,
    ) -> anyhow::Result<ord::Order> {
        let unknown = ord::OrderState::Unspecified as i32;
        let polled = Poll::new(Duration::from_millis(20), limit)
            .until(unknown, |_| async move {
                let o = self.get_order(order_id).await.map_err(status_error)?;
                Ok(if is_terminal(&o) {
                    ControlFlow::Break(o)
                } else {
                    ControlFlow::Continue(o.state)
                })
            })
            .await?;
        match polled {
            ControlFlow::Break(o) => Ok(o),
            ControlFlow::Continue(state) => anyhow::bail!(
                "order {order_id} is still {} after {limit:?}",
                show::order_state(state)
            ),
        }
    }
}
