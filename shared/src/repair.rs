//! The repair loop: compensation and completion happen without an operator,
//! even when the event that should have caused them was dead-lettered or
//! outlived its stream.
//!
//! A participant (inventory, payment, reservation) lists the orders whose
//! records it still holds open after `repair.after_secs` (stock RESERVED, a
//! slot HELD, a payment CAPTURED it has not yet seen confirmed), asks
//! order-svc how those sagas ended ([`Outcomes`], one request per
//! `batch_size` orders), and finishes the ones that ended: a cancelled
//! order's stock and slot are released and its charge refunded, a confirmed
//! order's stock is sold and its slot confirmed. It runs the same use-cases as
//! the event handlers, under the same row locks, so it may race a late event
//! without doing anything twice. Orders still open, or unknown to order-svc,
//! are left alone and looked at again next round. See docs/adr/0011.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};
use tracing::Instrument;
use uuid::Uuid;

use crate::BoxError;
use crate::auth::WithToken;
use crate::config::{ConfigError, RepairConfig};
use crate::proto::order::v1 as pb;
use crate::proto::order::v1::order_service_client::OrderServiceClient;

/// How a saga ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Confirmed,
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// A participant that can finish what its records of a saga left open.
pub trait Participant: Send + Sync + 'static {
    /// Orders whose records here are still open, one [`Page`] of them.
    fn open_orders(&self, page: Page) -> impl Future<Output = Result<Vec<Uuid>, BoxError>> + Send;

    /// Finishes this order's records as its saga ended. Returns whether it
    /// changed them (a record finished meanwhile is not counted). An error
    /// is logged and the order is tried again on the next pass.
    fn finish(
        &self,
        order: Uuid,
        outcome: Outcome,
    ) -> impl Future<Output = Result<bool, BoxError>> + Send;
}

/// Which open records [`Participant::open_orders`] returns: those unchanged
/// for `older_than`, with order ids above `after`, in id order, at most
/// `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub older_than: Duration,
    pub after: Uuid,
    pub limit: i64,
}

impl Page {
    /// This page of the rows of `table` that are `open` (an SQL condition),
    /// by their `order_id` and `updated_at` columns. `table` and `open` are
    /// the caller's constants, never input.
    pub async fn of(
        self,
        pool: &sqlx::PgPool,
        table: &'static str,
        open: &'static str,
    ) -> sqlx::Result<Vec<Uuid>> {
        let sql = format!(
            "SELECT order_id FROM {table} WHERE {open} AND order_id > $1 \
               AND updated_at < now() - make_interval(secs => $2) ORDER BY order_id LIMIT $3"
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(self.after)
            .bind(self.older_than.as_secs_f64())
            .bind(self.limit)
            .fetch_all(pool)
            .await
    }
}

/// Asks order-svc how sagas ended.
#[derive(Clone)]
pub struct Outcomes {
    client: OrderServiceClient<InterceptedService<Channel, WithToken>>,
}

impl Outcomes {
    /// A client of order-svc at `url` (connected on first use), whose calls
    /// carry `caller`'s token.
    pub fn new(
        url: &str,
        caller: WithToken,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Self, ConfigError> {
        let endpoint = crate::grpc::endpoint("repair.order_url", url, tls)?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Self {
            client: OrderServiceClient::with_interceptor(channel, caller),
        })
    }

    /// The outcome of each of `ids` that has ended; ids of orders still
    /// open, or unknown to order-svc, are absent.
    pub async fn of(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Outcome>, tonic::Status> {
        let answer = self
            .client
            .clone()
            .get_order_outcomes(pb::GetOrderOutcomesRequest {
                order_ids: ids.iter().map(Uuid::to_string).collect(),
            })
            .await?
            .into_inner();
        Ok(answer
            .outcomes
            .into_iter()
            .filter_map(|o| {
                let id = Uuid::parse_str(&o.order_id).ok()?;
                let outcome = match pb::OrderState::try_from(o.state).ok()? {
                    pb::OrderState::Confirmed => Outcome::Confirmed,
                    pb::OrderState::Cancelled => Outcome::Cancelled,
                    _ => return None,
                };
                Some((id, outcome))
            })
            .collect())
    }
}

/// What one pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Open records older than the threshold.
    pub open: usize,
    /// Of those, orders that had ended.
    pub ended: usize,
    /// Records this pass finished.
    pub finished: usize,
}

/// One pass over every open record older than `cfg.after_secs`.
pub async fn pass<P: Participant>(
    service: &'static str,
    participant: &P,
    outcomes: &Outcomes,
    cfg: &RepairConfig,
) -> Result<Report, BoxError> {
    let older_than = Duration::from_secs(cfg.after_secs);
    let batch = cfg.batch_size.clamp(1, 500);
    let mut report = Report::default();
    let mut after = Uuid::nil();
    loop {
        let page = Page {
            older_than,
            after,
            limit: batch as i64,
        };
        let open = participant.open_orders(page).await?;
        let Some(last) = open.last() else { break };
        after = *last;
        report.open += open.len();
        let ended = outcomes.of(&open).await?;
        if !ended.is_empty() {
            report.ended += ended.len();
            let mut ended: Vec<(Uuid, Outcome)> = ended.into_iter().collect();
            ended.sort();
            let mut finished = 0;
            for (order, outcome) in ended {
                tracing::info!(service, order_id = %order, outcome = outcome.as_str(), "finishing a saga's records left open");
                // In a span of its own: what the repair publishes (a
                // refund) carries a trace to what it starts downstream.
                let span = tracing::info_span!("repair", service, order_id = %order, outcome = outcome.as_str());
                match participant.finish(order, outcome).instrument(span).await {
                    Ok(true) => finished += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(service, order_id = %order, outcome = outcome.as_str(), error = %e, "records of an ended saga not finished; next pass retries");
                    }
                }
            }
            report.finished += finished;
            metrics::counter!("saga_repairs_total", "service" => service)
                .increment(finished as u64);
        }
        if open.len() < batch {
            break;
        }
    }
    Ok(report)
}

/// Runs [`pass`] every `cfg.interval_ms` until `stop`.
pub async fn run<P: Participant>(
    service: &'static str,
    participant: Arc<P>,
    outcomes: Outcomes,
    cfg: RepairConfig,
    stop: CancellationToken,
) {
    if cfg.interval_ms == 0 {
        return;
    }
    let every = Duration::from_millis(cfg.interval_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match pass(service, participant.as_ref(), &outcomes, &cfg).await {
            Ok(r) if r.finished > 0 => {
                tracing::info!(
                    service,
                    open = r.open,
                    ended = r.ended,
                    finished = r.finished,
                    "repair pass finished sagas' records"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(service, error = %e, "repair pass failed; next round retries"),
        }
    }
}
