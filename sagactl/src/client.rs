//! gRPC clients of the four services, each call carrying the current trace
//! context.

use std::time::Duration;

use anyhow::Context;
use saga_shared::proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use saga_shared::proto::order::v1::order_service_client::OrderServiceClient;
use saga_shared::proto::payment::v1::payment_service_client::PaymentServiceClient;
use saga_shared::proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

pub type TraceFn = fn(Request<()>) -> Result<Request<()>, Status>;
pub type Traced = InterceptedService<Channel, TraceFn>;

/// Where the services listen.
#[derive(Clone, Debug)]
pub struct Urls {
    pub order: String,
    pub inventory: String,
    pub payment: String,
    pub reservation: String,
}

impl Default for Urls {
    fn default() -> Self {
        Self {
            order: "http://127.0.0.1:50051".into(),
            inventory: "http://127.0.0.1:50052".into(),
            payment: "http://127.0.0.1:50053".into(),
            reservation: "http://127.0.0.1:50054".into(),
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

fn lazy(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid URL {url:?}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect_lazy())
}

impl Clients {
    /// Clients that connect on first use.
    pub fn new(urls: &Urls) -> anyhow::Result<Self> {
        let trace: TraceFn = saga_shared::telemetry::propagate_trace;
        Ok(Self {
            order: OrderServiceClient::with_interceptor(lazy(&urls.order)?, trace),
            inventory: InventoryServiceClient::with_interceptor(lazy(&urls.inventory)?, trace),
            payment: PaymentServiceClient::with_interceptor(lazy(&urls.payment)?, trace),
            reservation: ReservationServiceClient::with_interceptor(
                lazy(&urls.reservation)?,
                trace,
            ),
        })
    }
}
