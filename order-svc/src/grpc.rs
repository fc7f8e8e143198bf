//! The gRPC boundary of orders: proto <-> domain, and the one mapping of
//! errors to status codes.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;

use saga_shared::proto::order::v1 as pb;
use saga_shared::proto::order::v1::order_service_server::OrderService;
use saga_shared::validate::{self, FieldError};
use saga_shared::{auth, idempotency};
use tonic::{Request, Response, Status};

use crate::domain::{self, CancelReason, ListFilter, Order, OrderState, Refusal};
use crate::service::CatalogError;
use crate::service::{OrderError, Orders, WatchEnd};

pub struct OrderGrpc {
    pub orders: Arc<Orders>,
}

impl From<OrderState> for pb::OrderState {
    fn from(s: OrderState) -> Self {
        match s {
            OrderState::Pending => pb::OrderState::Pending,
            OrderState::Reserved => pb::OrderState::Reserved,
            OrderState::Confirmed => pb::OrderState::Confirmed,
            OrderState::Cancelled => pb::OrderState::Cancelled,
        }
    }
}

impl From<CancelReason> for pb::CancelReason {
    fn from(r: CancelReason) -> Self {
        match r {
            CancelReason::OutOfStock => pb::CancelReason::OutOfStock,
            CancelReason::SlotUnavailable => pb::CancelReason::SlotUnavailable,
            CancelReason::PaymentDeclined => pb::CancelReason::PaymentDeclined,
            CancelReason::InsufficientFunds => pb::CancelReason::InsufficientFunds,
            CancelReason::Timeout => pb::CancelReason::Timeout,
            CancelReason::CustomerCancelled => pb::CancelReason::CustomerCancelled,
        }
    }
}

impl From<Order> for pb::Order {
    fn from(o: Order) -> Self {
        pb::Order {
            order_id: o.id.to_string(),
            customer_id: o.customer_id,
            state: pb::OrderState::from(o.state) as i32,
            cancel_reason: o
                .cancel_reason
                .map_or(pb::CancelReason::Unspecified, Into::into)
                as i32,
            lines: o
                .lines
                .into_iter()
                .map(|l| pb::OrderLine {
                    sku: l.sku,
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                })
                .collect(),
            slot_id: o.slot_id.map(|s| s.to_string()),
            total_cents: o.total_cents,
            created_at: Some(saga_shared::time::to_proto(o.created_at)),
            updated_at: Some(saga_shared::time::to_proto(o.updated_at)),
        }
    }
}

impl From<OrderError> for Status {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Invalid(fe) => fe.into(),
            OrderError::NotFound(msg) => Status::not_found(msg),
            OrderError::Refused(Refusal::AlreadyConfirmed) => {
                Status::failed_precondition(Refusal::AlreadyConfirmed.to_string())
            }
            OrderError::Refused(ref r) => saga_shared::grpc::internal("order refused an input", r),
            OrderError::Catalog(c @ CatalogError::Unavailable { .. }) => {
                tracing::warn!(error = %c, "catalog check failed");
                Status::unavailable(c.to_string())
            }
            OrderError::Catalog(ref c) => saga_shared::grpc::internal("catalog misconfigured", c),
            OrderError::Busy(busy) => {
                let mut status = Status::resource_exhausted(busy.to_string());
                // The hint gRPC retry policies read (gRFC A6).
                let ms = u64::try_from(busy.retry_after.as_millis()).unwrap_or(u64::MAX);
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", ms.into());
                status
            }
            OrderError::Watch(WatchEnd::Full(_) | WatchEnd::YoursFull(_)) => {
                Status::resource_exhausted(e.to_string())
            }
            OrderError::Watch(WatchEnd::Stopping) => Status::unavailable(e.to_string()),
            OrderError::Db(ref db) => saga_shared::grpc::database("order database", db),
        }
    }
}

const LIST_DEFAULT: i64 = 50;
const OUTCOMES_MAX: usize = 500;
const LIST_MAX: i64 = 500;

#[tonic::async_trait]
impl OrderService for OrderGrpc {
    type WatchOrderStream = BoxStream<'static, Result<pb::WatchOrderResponse, Status>>;

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let id = validate::uuid("order_id", &r.order_id)?;
        let after = r
            .after
            .map(|t| {
                saga_shared::time::from_proto(&t)
                    .ok_or_else(|| FieldError::new("after", "not a valid time"))
            })
            .transpose()?;
        let changes = self
            .orders
            .watch(id, caller.customer().map(str::to_owned), after)
            .await?;
        Ok(Response::new(Box::pin(changes.map(|change| {
            change
                .map(|order| pb::WatchOrderResponse {
                    order: Some(order.into()),
                })
                .map_err(Status::from)
        }))))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let caller = auth::caller(&request)?;
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        if !caller.may_act_for(&r.customer_id) {
            return Err(auth::not_yours("customer_id"));
        }
        let items: Vec<(String, i64)> = r
            .items
            .iter()
            .map(|i| (i.sku.clone(), i.quantity))
            .collect();
        // A retry of a placed order gets that order, even if inventory or
        // reservation cannot be asked right now (or would answer otherwise)
        // and even if the limits have changed since (ADR 0004).
        let pool = &self.orders.store().pool;
        if let Some(placed) =
            idempotency::completed(pool, "order.PlaceOrder", key.as_deref(), &r).await?
        {
            return Ok(Response::new(placed));
        }
        let slot = r.slot_id.as_deref().filter(|s| !s.is_empty());
        let new = domain::validate_new_order(&r.customer_id, &items, slot, self.orders.limits())?;
        self.orders.check_references(&new).await?;
        let ticket = self.orders.admit()?;

        let orders = self.orders.clone();
        let answer = idempotency::once_statement(pool, "order.PlaceOrder", key, r, |conn, _| {
            Box::pin(async move {
                let order = orders.place_in(conn, new).await?;
                tracing::info!(order_id = %order.id, "order placed");
                Ok(pb::PlaceOrderResponse {
                    order: Some(order.into()),
                })
            })
        })
        .await?;
        if !answer.replayed {
            ticket.placed();
            self.orders.outbox().wake();
        }
        Ok(Response::new(answer.response))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let caller = auth::caller(&request)?;
        let id = validate::uuid("order_id", &request.into_inner().order_id)?;
        let order = self.orders.get(id, caller.customer()).await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order.into()),
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn get_order_history(
        &self,
        request: Request<pb::GetOrderHistoryRequest>,
    ) -> Result<Response<pb::GetOrderHistoryResponse>, Status> {
        let caller = auth::caller(&request)?;
        let id = validate::uuid("order_id", &request.into_inner().order_id)?;
        let (order, steps) = self.orders.history(id, caller.customer()).await?;
        Ok(Response::new(pb::GetOrderHistoryResponse {
            order: Some(order.into()),
            events: steps.into_iter().map(order_event).collect(),
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let limit = validate::page_size("page_size", r.page_size, LIST_DEFAULT, LIST_MAX)?;
        let mut filter = ListFilter::default();
        if !r.page_token.is_empty() {
            filter.before = Some(validate::uuid("page_token", &r.page_token)?);
        }
        if let Some(customer) = r.customer_id.filter(|c| !c.is_empty()) {
            validate::ident("customer_id", &customer, domain::MAX_CUSTOMER_ID_LEN)?;
            filter.customer_id = Some(customer);
        }
        // A customer lists its own orders only.
        if let Some(me) = caller.customer() {
            if filter.customer_id.as_deref().is_some_and(|c| c != me) {
                return Err(auth::not_yours("customer_id"));
            }
            filter.customer_id = Some(me.to_owned());
        }
        if let Some(state) = r.state {
            filter.state = Some(match pb::OrderState::try_from(state) {
                Ok(pb::OrderState::Pending) => OrderState::Pending,
                Ok(pb::OrderState::Reserved) => OrderState::Reserved,
                Ok(pb::OrderState::Confirmed) => OrderState::Confirmed,
                Ok(pb::OrderState::Cancelled) => OrderState::Cancelled,
                _ => {
                    return Err(
                        FieldError::new("state", format!("unknown order state {state}")).into(),
                    );
                }
            });
        }
        let orders = self.orders.list(&filter, limit + 1).await?;
        let (orders, next_page_token) =
            saga_shared::grpc::page(orders, limit, |o| o.id.to_string());
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn get_order_outcomes(
        &self,
        request: Request<pb::GetOrderOutcomesRequest>,
    ) -> Result<Response<pb::GetOrderOutcomesResponse>, Status> {
        let r = request.into_inner();
        if r.order_ids.len() > OUTCOMES_MAX {
            return Err(FieldError::new(
                "order_ids",
                format!("at most {OUTCOMES_MAX} ids, got {}", r.order_ids.len()),
            )
            .into());
        }
        let ids = r
            .order_ids
            .iter()
            .enumerate()
            .map(|(i, id)| validate::uuid(&format!("order_ids[{i}]"), id))
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes = self.orders.outcomes(&ids).await?;
        Ok(Response::new(pb::GetOrderOutcomesResponse {
            outcomes: outcomes
                .into_iter()
                .map(|(id, state, reason)| pb::OrderOutcome {
                    order_id: id.to_string(),
                    state: pb::OrderState::from(state) as i32,
                    cancel_reason: reason.map_or(pb::CancelReason::Unspecified, Into::into) as i32,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let caller = auth::caller(&request)?;
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        let id = validate::uuid("order_id", &r.order_id)?;
        let owner = caller.customer().map(str::to_owned);
        let orders = self.orders.clone();
        let pool = &self.orders.store().pool;
        let answer = idempotency::once(pool, "order.CancelOrder", key, r, |tx, _| {
            Box::pin(async move {
                let order = orders.cancel_in(tx, id, owner.as_deref()).await?;
                Ok(pb::CancelOrderResponse {
                    order: Some(order.into()),
                })
            })
        })
        .await?;
        if !answer.replayed {
            self.orders.outbox().wake();
        }
        Ok(Response::new(answer.response))
    }
}

fn order_event(s: saga_shared::bus::history::Step) -> pb::OrderEvent {
    use saga_shared::time::to_proto;
    pb::OrderEvent {
        event_id: s.event_id.to_string(),
        event_type: s.event_type,
        producer: s.producer.unwrap_or_default().to_owned(),
        at: Some(to_proto(s.at)),
        stored_at: s.stored_at.map(to_proto),
        stream: s.stream.unwrap_or_default(),
        stream_seq: s.seq.unwrap_or_default(),
        causation_id: s.causation_id.map(|c| c.to_string()).unwrap_or_default(),
        caused_by: s.caused_by.unwrap_or_default(),
        after_cause: s.after_cause.map(saga_shared::time::delta_to_proto),
        applied_at: s.applied_by.first().map(|(_, t)| to_proto(*t)),
    }
}
