//! Postgres access for wallets, payments and the ledger. Functions taking
//! `&mut PgConnection` run in the caller's transaction.

use saga_shared::repair::Page;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{FailureReason, Payment, PaymentState, Wallet};
use saga_shared::db::Spelled;

impl Spelled for PaymentState {
    const WHAT: &'static str = "payment state";
}

impl Spelled for FailureReason {
    const WHAT: &'static str = "failure reason";
}

const WALLET_COLUMNS: &str =
    "customer_id, balance_cents, topped_up_cents, charged_cents, refunded_cents";
const PAYMENT_COLUMNS: &str = "payment_id, order_id, customer_id, amount_cents, state, \
     failure_reason, created_at, updated_at";

#[derive(Clone)]
pub struct Store {
    pub pool: PgPool,
}

/// A `wallets` row.
#[derive(sqlx::FromRow)]
struct WalletRow {
    customer_id: String,
    balance_cents: i64,
    topped_up_cents: i64,
    charged_cents: i64,
    refunded_cents: i64,
}

impl From<WalletRow> for Wallet {
    fn from(r: WalletRow) -> Self {
        Wallet {
            customer_id: r.customer_id,
            balance_cents: r.balance_cents,
            topped_up_cents: r.topped_up_cents,
            charged_cents: r.charged_cents,
            refunded_cents: r.refunded_cents,
        }
    }
}

/// A `payments` row; states and reasons as the table spells them.
#[derive(sqlx::FromRow)]
struct PaymentRow {
    payment_id: Uuid,
    order_id: Uuid,
    customer_id: String,
    amount_cents: i64,
    state: String,
    failure_reason: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl TryFrom<PaymentRow> for Payment {
    type Error = sqlx::Error;

    fn try_from(r: PaymentRow) -> sqlx::Result<Self> {
        Ok(Payment {
            state: PaymentState::read(&r.state)?,
            failure_reason: FailureReason::read_optional(r.failure_reason.as_deref())?,
            payment_id: r.payment_id,
            order_id: r.order_id,
            customer_id: r.customer_id,
            amount_cents: r.amount_cents,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// Why a top-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TopUpError {
    #[error("amount_cents: {amount} would overflow the balance of {customer:?}")]
    Overflow { customer: String, amount: i64 },
    #[error(transparent)]
    Sql(sqlx::Error),
}

impl Store {
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn wallet(&self, customer: &str) -> sqlx::Result<Option<Wallet>> {
        let sql = format!("SELECT {WALLET_COLUMNS} FROM wallets WHERE customer_id = $1");
        let row: Option<WalletRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(customer)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    #[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
    pub async fn payment(&self, order: Uuid) -> sqlx::Result<Option<Payment>> {
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 AND state <> 'PENDING'"
        );
        let row: Option<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Payment::try_from).transpose()
    }
}

/// Orders with a capture whose saga outcome payment has not checked, older
/// than `older_than`, with ids above `after`, in id order.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn unchecked_captures(pool: &PgPool, page: Page) -> sqlx::Result<Vec<Uuid>> {
    page.of(
        pool,
        "payments",
        "state = 'CAPTURED' AND NOT outcome_checked",
    )
    .await
}

/// Notes that these orders' sagas ended as their payments say.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn mark_checked<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    orders: &[Uuid],
) -> sqlx::Result<()> {
    sqlx::query("UPDATE payments SET outcome_checked = true WHERE order_id = ANY($1)")
        .bind(orders)
        .execute(executor)
        .await?;
    Ok(())
}

/// Adds funds, creating the wallet on first use.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn top_up(
    conn: &mut PgConnection,
    customer: &str,
    amount: i64,
) -> Result<Wallet, TopUpError> {
    let sql = format!(
        "INSERT INTO wallets (customer_id, balance_cents, topped_up_cents) VALUES ($1, $2, $2) \
         ON CONFLICT (customer_id) DO UPDATE SET \
             balance_cents = wallets.balance_cents + EXCLUDED.balance_cents, \
             topped_up_cents = wallets.topped_up_cents + EXCLUDED.topped_up_cents, \
             updated_at = now() \
         RETURNING {WALLET_COLUMNS}"
    );
    let wallet: WalletRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(customer)
        .bind(amount)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| match &e {
            // numeric_value_out_of_range
            sqlx::Error::Database(d) if d.code().as_deref() == Some("22003") => {
                TopUpError::Overflow {
                    customer: customer.to_owned(),
                    amount,
                }
            }
            _ => TopUpError::Sql(e),
        })?;
    ledger(conn, customer, None, "TOPUP", amount)
        .await
        .map_err(TopUpError::Sql)?;
    Ok(wallet.into())
}

#[tracing::instrument(skip_all, fields(order_id = ?order), err(level = "debug"))]
async fn ledger(
    conn: &mut PgConnection,
    customer: &str,
    order: Option<Uuid>,
    kind: &str,
    amount: i64,
) -> sqlx::Result<()> {
    if amount == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO wallet_ledger (customer_id, order_id, kind, amount_cents) VALUES ($1, $2, $3, $4)",
    )
    .bind(customer)
    .bind(order)
    .bind(kind)
    .bind(amount)
    .execute(conn)
    .await?;
    Ok(())
}

/// Starts the order's one payment. `None` if the order already has one (a
/// duplicate, or a VOIDED tombstone from an earlier cancellation).
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn begin_payment(
    conn: &mut PgConnection,
    order: Uuid,
    customer: &str,
    amount: i64,
) -> sqlx::Result<Option<Uuid>> {
    let payment_id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO payments (order_id, payment_id, customer_id, amount_cents, state) \
         VALUES ($1, $2, $3, $4, 'PENDING') ON CONFLICT DO NOTHING",
    )
    .bind(order)
    .bind(payment_id)
    .bind(customer)
    .bind(amount)
    .execute(conn)
    .await?
    .rows_affected();
    Ok((inserted == 1).then_some(payment_id))
}

/// Charges the wallet if it holds enough and settles the payment started by
/// [`begin_payment`] accordingly, in one statement: the conditional update of
/// the wallet (no double-spend whatever runs at once), its ledger entry, and
/// the payment CAPTURED, or FAILED for insufficient funds. True if charged.
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn charge_and_settle(
    conn: &mut PgConnection,
    order: Uuid,
    customer: &str,
    amount: i64,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "WITH charged AS ( \
             UPDATE wallets SET balance_cents = balance_cents - $2, \
                 charged_cents = charged_cents + $2, updated_at = now() \
             WHERE customer_id = $1 AND balance_cents >= $2 RETURNING customer_id), \
         entry AS ( \
             INSERT INTO wallet_ledger (customer_id, order_id, kind, amount_cents) \
             SELECT customer_id, $3, 'CHARGE', $2 FROM charged), \
         settled AS ( \
             UPDATE payments SET updated_at = now(), \
                 state = CASE WHEN EXISTS (SELECT FROM charged) THEN $4 ELSE $5 END, \
                 failure_reason = CASE WHEN EXISTS (SELECT FROM charged) THEN NULL ELSE $6 END \
             WHERE order_id = $3) \
         SELECT EXISTS (SELECT FROM charged)",
    )
    .bind(customer)
    .bind(amount)
    .bind(order)
    .bind(PaymentState::Captured.spelling())
    .bind(PaymentState::Failed.spelling())
    .bind(FailureReason::InsufficientFunds.spelling())
    .fetch_one(conn)
    .await
}

/// Settles a payment started by [`begin_payment`].
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn settle(
    conn: &mut PgConnection,
    order: Uuid,
    state: PaymentState,
    failure: Option<FailureReason>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE payments SET state = $2, failure_reason = $3, updated_at = now() WHERE order_id = $1",
    )
    .bind(order)
    .bind(state.spelling())
    .bind(failure.map(FailureReason::spelling))
    .execute(conn)
    .await?;
    Ok(())
}

/// Leaves a VOIDED tombstone for an order cancelled before its charge;
/// false if the order already has a payment.
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn void(conn: &mut PgConnection, order: Uuid, customer: &str) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO payments (order_id, payment_id, customer_id, amount_cents, state) \
         VALUES ($1, $2, $3, 0, 'VOIDED') ON CONFLICT DO NOTHING",
    )
    .bind(order)
    .bind(Uuid::now_v7())
    .bind(customer)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Locks the order's payment.
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn lock_payment(conn: &mut PgConnection, order: Uuid) -> sqlx::Result<Option<Payment>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 FOR UPDATE");
    let row: Option<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(order)
        .fetch_optional(conn)
        .await?;
    row.map(Payment::try_from).transpose()
}

/// Gives a captured payment back to the wallet.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn refund(conn: &mut PgConnection, payment: &Payment) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE wallets SET balance_cents = balance_cents + $2, \
             refunded_cents = refunded_cents + $2, updated_at = now() \
         WHERE customer_id = $1",
    )
    .bind(&payment.customer_id)
    .bind(payment.amount_cents)
    .execute(&mut *conn)
    .await?;
    ledger(
        conn,
        &payment.customer_id,
        Some(payment.order_id),
        "REFUND",
        payment.amount_cents,
    )
    .await?;
    settle(conn, payment.order_id, PaymentState::Refunded, None).await
}

/// Locks the wallets rows of `keys` in one order (a batch's first step).
pub async fn lock_wallets(conn: &mut PgConnection, keys: &[String]) -> sqlx::Result<()> {
    saga_shared::db::lock_in_order(conn, "wallets", "customer_id", keys).await
}

/// Locks the wallet that `order`'s payment charged, if there is one: what
/// a transaction that no batch locked for does first, before the payment,
/// so that it takes the two in a batch's order (wallet, then payment).
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn lock_wallet_of(conn: &mut PgConnection, order: Uuid) -> sqlx::Result<()> {
    saga_shared::db::lock_named_by_order(
        conn,
        "wallets",
        "customer_id",
        "payments",
        "customer_id",
        order,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words rows already hold: a renamed variant must not change them.
    #[test]
    fn states_are_spelled_as_the_rows_already_stored() {
        saga_shared::db::assert_spelled::<PaymentState>(&[
            "PENDING", "CAPTURED", "FAILED", "REFUNDED", "VOIDED",
        ]);
        saga_shared::db::assert_spelled::<FailureReason>(&["insufficient_funds", "card_declined"]);
    }
}
