//! The gRPC boundary of payment.

use saga_shared::idempotency::{self, Begin};
use saga_shared::proto::payment::v1 as pb;
use saga_shared::proto::payment::v1::payment_service_server::PaymentService;
use saga_shared::validate;
use tonic::{Request, Response, Status};

use crate::domain::{self, Payment, PaymentState, Wallet};
use crate::store::{self, Store, TopUpError};

pub struct PaymentGrpc {
    store: Store,
}

impl PaymentGrpc {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl From<Wallet> for pb::Wallet {
    fn from(w: Wallet) -> Self {
        pb::Wallet {
            customer_id: w.customer_id,
            balance_cents: w.balance_cents,
            topped_up_cents: w.topped_up_cents,
            charged_cents: w.charged_cents,
            refunded_cents: w.refunded_cents,
        }
    }
}

impl From<Payment> for pb::Payment {
    fn from(p: Payment) -> Self {
        let state = match PaymentState::parse(&p.state) {
            Some(PaymentState::Captured) => pb::PaymentState::Captured,
            Some(PaymentState::Failed) => pb::PaymentState::Failed,
            Some(PaymentState::Refunded) => pb::PaymentState::Refunded,
            Some(PaymentState::Voided) => pb::PaymentState::Voided,
            None => pb::PaymentState::Unspecified,
        };
        pb::Payment {
            payment_id: p.payment_id.to_string(),
            order_id: p.order_id.to_string(),
            customer_id: p.customer_id,
            amount_cents: p.amount_cents,
            state: state as i32,
            failure_reason: p.failure_reason.unwrap_or_default(),
            created_at: Some(saga_shared::time::to_proto(p.created_at)),
            updated_at: Some(saga_shared::time::to_proto(p.updated_at)),
        }
    }
}

fn db(e: sqlx::Error) -> Status {
    saga_shared::grpc::database("payment database", &e)
}

#[tonic::async_trait]
impl PaymentService for PaymentGrpc {
    async fn get_wallet(
        &self,
        request: Request<pb::GetWalletRequest>,
    ) -> Result<Response<pb::GetWalletResponse>, Status> {
        let customer = request.into_inner().customer_id;
        domain::validate_customer("customer_id", &customer)?;
        let wallet = self
            .store
            .wallet(&customer)
            .await
            .map_err(db)?
            .ok_or_else(|| Status::not_found(format!("customer_id: no wallet for {customer:?}")))?;
        Ok(Response::new(pb::GetWalletResponse {
            wallet: Some(wallet.into()),
        }))
    }

    async fn top_up(
        &self,
        request: Request<pb::TopUpRequest>,
    ) -> Result<Response<pb::TopUpResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        domain::validate_top_up(&r.customer_id, r.amount_cents)?;
        let mut tx = self.store.pool().begin().await.map_err(db)?;
        let ticket = match idempotency::begin(&mut tx, "payment.TopUp", key, &r).await? {
            Begin::Replay(response) => return Ok(Response::new(response)),
            Begin::Proceed(ticket) => ticket,
        };
        let wallet = match store::top_up(&mut tx, &r.customer_id, r.amount_cents).await {
            Ok(w) => w,
            Err(e @ TopUpError::Overflow { .. }) => {
                return Err(Status::invalid_argument(e.to_string()));
            }
            Err(TopUpError::Sql(e)) => return Err(db(e)),
        };
        let response = pb::TopUpResponse {
            wallet: Some(wallet.into()),
        };
        ticket.complete(&mut tx, &response).await?;
        tx.commit().await.map_err(db)?;
        Ok(Response::new(response))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let order = validate::uuid("order_id", &request.into_inner().order_id)?;
        let payment = self
            .store
            .payment(order)
            .await
            .map_err(db)?
            .ok_or_else(|| Status::not_found(format!("order_id: no payment for order {order}")))?;
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(payment.into()),
        }))
    }
}
