//! The gRPC boundary of payment: proto <-> domain, and the one mapping of
//! errors to status codes.

use saga_shared::proto::payment::v1 as pb;
use saga_shared::proto::payment::v1::payment_service_server::PaymentService;
use saga_shared::validate;
use saga_shared::{auth, idempotency};
use tonic::{Request, Response, Status};

use crate::domain::{Payment, PaymentState, Wallet};
use crate::service::{PaymentError, Payments};

pub struct PaymentGrpc {
    pub payments: Payments,
}

impl From<PaymentError> for Status {
    fn from(e: PaymentError) -> Self {
        match e {
            PaymentError::Invalid(fe) => fe.into(),
            PaymentError::NotFound(msg) => Status::not_found(msg),
            PaymentError::Overflow { .. } => Status::invalid_argument(e.to_string()),
            PaymentError::Vanished(_) => Status::aborted(format!("{e}; retry")),
            PaymentError::Db(ref db) => saga_shared::grpc::database("payment database", db),
        }
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
        let state = match p.state {
            PaymentState::Captured => pb::PaymentState::Captured,
            PaymentState::Failed => pb::PaymentState::Failed,
            PaymentState::Refunded => pb::PaymentState::Refunded,
            PaymentState::Voided => pb::PaymentState::Voided,
            PaymentState::Pending => pb::PaymentState::Unspecified,
        };
        pb::Payment {
            payment_id: p.payment_id.to_string(),
            order_id: p.order_id.to_string(),
            customer_id: p.customer_id,
            amount_cents: p.amount_cents,
            state: state as i32,
            failure_reason: p
                .failure_reason
                .map(|f| f.as_str().to_owned())
                .unwrap_or_default(),
            created_at: Some(saga_shared::time::to_proto(p.created_at)),
            updated_at: Some(saga_shared::time::to_proto(p.updated_at)),
        }
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentGrpc {
    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn get_wallet(
        &self,
        request: Request<pb::GetWalletRequest>,
    ) -> Result<Response<pb::GetWalletResponse>, Status> {
        let caller = auth::caller(&request)?;
        let customer = request.into_inner().customer_id;
        if !caller.may_act_for(&customer) {
            return Err(auth::not_yours("customer_id"));
        }
        let wallet = self.payments.wallet(&customer).await?;
        Ok(Response::new(pb::GetWalletResponse {
            wallet: Some(wallet.into()),
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn top_up(
        &self,
        request: Request<pb::TopUpRequest>,
    ) -> Result<Response<pb::TopUpResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        crate::domain::validate_top_up(&r.customer_id, r.amount_cents)?;
        let payments = self.payments.clone();
        let pool = &self.payments.store().pool;
        let answer = idempotency::once(pool, "payment.TopUp", key, r, |tx, r| {
            Box::pin(async move {
                let wallet = payments
                    .top_up_in(tx, &r.customer_id, r.amount_cents)
                    .await?;
                Ok(pb::TopUpResponse {
                    wallet: Some(wallet.into()),
                })
            })
        })
        .await?;
        Ok(Response::new(answer.response))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let caller = auth::caller(&request)?;
        let order = validate::uuid("order_id", &request.into_inner().order_id)?;
        let payment = self.payments.payment(order, caller.customer()).await?;
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(payment.into()),
        }))
    }
}
