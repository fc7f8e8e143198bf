//! Postgres access for orders. Functions taking `&mut PgConnection` run in
//! the caller's transaction.

use chrono::{DateTime, Utc};
use saga_shared::bus::OutboxRows;
use sqlx::{PgConnection, PgPool};
use std::sync::LazyLock;
use uuid::Uuid;

use crate::domain::{CancelReason, Line, ListFilter, Order, OrderState, Part};
use saga_shared::db::Spelled;

impl Spelled for OrderState {
    const WHAT: &'static str = "order state";
}

impl Spelled for CancelReason {
    const WHAT: &'static str = "cancel reason";
}

const ORDER_COLUMNS: &str = "id, customer_id, state, cancel_reason, slot_id, inventory, slot, \
     payment, total_cents, created_at, updated_at, deadline_at";

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    customer_id: String,
    state: String,
    cancel_reason: Option<String>,
    slot_id: Option<Uuid>,
    inventory: String,
    slot: String,
    payment: String,
    total_cents: Option<i64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deadline_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct LineRow {
    order_id: Uuid,
    sku: String,
    quantity: i64,
    unit_price_cents: Option<i64>,
}

/// How the `inventory`, `slot` and `payment` columns spell where each
/// participant stands (several columns, so not one [`Spelled`] table).
impl Part {
    pub fn as_inventory(self) -> &'static str {
        match self {
            Self::None | Self::Pending => "PENDING",
            Self::Done => "RESERVED",
            Self::Refused => "REJECTED",
        }
    }

    pub fn as_slot(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Pending => "PENDING",
            Self::Done => "HELD",
            Self::Refused => "REJECTED",
        }
    }

    pub fn as_payment(self) -> &'static str {
        match self {
            Self::None | Self::Pending => "NONE",
            Self::Done => "CAPTURED",
            Self::Refused => "FAILED",
        }
    }

    pub fn from_inventory(s: &str) -> Option<Self> {
        match s {
            "PENDING" => Some(Self::Pending),
            "RESERVED" => Some(Self::Done),
            "REJECTED" => Some(Self::Refused),
            _ => None,
        }
    }

    pub fn from_slot(s: &str) -> Option<Self> {
        match s {
            "NONE" => Some(Self::None),
            "PENDING" => Some(Self::Pending),
            "HELD" => Some(Self::Done),
            "REJECTED" => Some(Self::Refused),
            _ => None,
        }
    }

    pub fn from_payment(s: &str) -> Option<Self> {
        match s {
            "NONE" => Some(Self::Pending),
            "CAPTURED" => Some(Self::Done),
            "FAILED" => Some(Self::Refused),
            _ => None,
        }
    }
}

fn corrupt(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} {value:?} in the orders table").into())
}

impl OrderRow {
    fn into_order(self, lines: Vec<Line>) -> sqlx::Result<Order> {
        Ok(Order {
            id: self.id,
            state: OrderState::read(&self.state)?,
            cancel_reason: CancelReason::read_optional(self.cancel_reason.as_deref())?,
            customer_id: self.customer_id,
            slot_id: self.slot_id,
            lines,
            inventory: Part::from_inventory(&self.inventory)
                .ok_or_else(|| corrupt("inventory status", &self.inventory))?,
            slot: Part::from_slot(&self.slot).ok_or_else(|| corrupt("slot status", &self.slot))?,
            payment: Part::from_payment(&self.payment)
                .ok_or_else(|| corrupt("payment status", &self.payment))?,
            total_cents: self.total_cents,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deadline_at: self.deadline_at,
        })
    }
}

#[derive(Clone)]
pub struct Store {
    pub pool: PgPool,
}

impl Store {
    #[tracing::instrument(skip_all, fields(id = %id), err(level = "debug"))]
    pub async fn order(&self, id: Uuid) -> sqlx::Result<Option<Order>> {
        let mut conn = self.pool.acquire().await?;
        load(&mut conn, id, false).await
    }

    /// Newest first.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn list(&self, filter: &ListFilter, limit: i64) -> sqlx::Result<Vec<Order>> {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM orders \
             WHERE ($1::text IS NULL OR customer_id = $1) AND ($2::text IS NULL OR state = $2) \
               AND ($3::uuid IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4"
        );
        let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(filter.customer_id.as_deref())
            .bind(filter.state.map(OrderState::spelling))
            .bind(filter.before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut lines = lines_of(&self.pool, &ids).await?;
        rows.into_iter()
            .map(|row| {
                let mine = lines
                    .iter()
                    .position(|(id, _)| *id == row.id)
                    .map(|i| lines.swap_remove(i).1)
                    .unwrap_or_default();
                row.into_order(mine)
            })
            .collect()
    }
}

/// The state and cancel reason of each of `ids` that exists.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn outcomes(
    pool: &PgPool,
    ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, OrderState, Option<CancelReason>)>> {
    let rows: Vec<(Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT id, state, cancel_reason FROM orders WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(id, state, reason)| {
            let state = OrderState::read(&state)?;
            let reason = CancelReason::read_optional(reason.as_deref())?;
            Ok((id, state, reason))
        })
        .collect()
}

#[tracing::instrument(skip_all, err(level = "debug"))]
async fn lines_of<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, Vec<Line>)>> {
    let rows: Vec<LineRow> = sqlx::query_as(
        "SELECT order_id, sku, quantity, unit_price_cents FROM order_lines \
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(ids)
    .fetch_all(executor)
    .await?;
    let mut out: Vec<(Uuid, Vec<Line>)> = Vec::new();
    for r in rows {
        let line = Line {
            sku: r.sku,
            quantity: r.quantity,
            unit_price_cents: r.unit_price_cents,
        };
        match out.last_mut() {
            Some((id, lines)) if *id == r.order_id => lines.push(line),
            _ => out.push((r.order_id, vec![line])),
        }
    }
    Ok(out)
}

/// An order row joined with one of its lines.
#[derive(sqlx::FromRow)]
struct OrderLineRow {
    #[sqlx(flatten)]
    order: OrderRow,
    sku: String,
    quantity: i64,
    unit_price_cents: Option<i64>,
}

/// Reads an order and its lines in one round trip (every order has at
/// least one line), locking the order's row and its lines' rows if `lock`.
/// Both are locked so that a read that waited for the lock sees the lines
/// as the transaction it waited for left them, as it sees the order.
#[tracing::instrument(skip_all, fields(id = %id), err(level = "debug"))]
pub async fn load(conn: &mut PgConnection, id: Uuid, lock: bool) -> sqlx::Result<Option<Order>> {
    Ok(select_with_lines(conn, &[id], lock).await?.pop())
}

/// Reads the orders `ids` with their lines and locks them, as [`load`] does
/// one, in one statement that takes the locks in id order (a batch's first
/// step, so that batches never deadlock on them). Orders that do not exist
/// are not in the answer.
#[tracing::instrument(skip_all, fields(orders = ids.len()), err(level = "debug"))]
pub async fn load_locked(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Order>> {
    select_with_lines(conn, ids, true).await
}

/// The orders `ids` joined with their lines, in id order, locked if `lock`.
async fn select_with_lines(
    conn: &mut PgConnection,
    ids: &[Uuid],
    lock: bool,
) -> sqlx::Result<Vec<Order>> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS}, sku, quantity, unit_price_cents \
         FROM orders o JOIN order_lines l ON l.order_id = o.id \
         WHERE o.id = ANY($1) ORDER BY o.id, l.line_no{}",
        if lock { " FOR UPDATE OF o, l" } else { "" },
    );
    let rows: Vec<OrderLineRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    // The rows of one order are next to each other, in line order.
    let mut grouped: Vec<(OrderRow, Vec<Line>)> = Vec::new();
    for row in rows {
        let line = Line {
            sku: row.sku,
            quantity: row.quantity,
            unit_price_cents: row.unit_price_cents,
        };
        match grouped.last_mut() {
            Some((order, lines)) if order.id == row.order.id => lines.push(line),
            _ => grouped.push((row.order, vec![line])),
        }
    }
    grouped
        .into_iter()
        .map(|(order, lines)| order.into_order(lines))
        .collect()
}

/// Inserts a new order and its lines, in one statement.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn insert(conn: &mut PgConnection, o: &Order, events: OutboxRows) -> sqlx::Result<()> {
    static INSERT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH lines AS ( \
                 INSERT INTO order_lines (order_id, line_no, sku, quantity) \
                 SELECT $1, n, s, q FROM UNNEST($13::int[], $14::text[], $15::bigint[]) \
                     AS l(n, s, q)), \
             events AS ({}) \
             INSERT INTO orders (id, customer_id, state, cancel_reason, slot_id, inventory, slot, \
                 payment, total_cents, created_at, updated_at, deadline_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            OutboxRows::insert_sql(16)
        )
    });
    let line_nos: Vec<i32> = (0..o.lines.len() as i32).collect();
    let skus: Vec<&str> = o.lines.iter().map(|l| l.sku.as_str()).collect();
    let quantities: Vec<i64> = o.lines.iter().map(|l| l.quantity).collect();
    let query = sqlx::query(INSERT.as_str())
        .bind(o.id)
        .bind(&o.customer_id)
        .bind(o.state.spelling())
        .bind(o.cancel_reason.map(CancelReason::spelling))
        .bind(o.slot_id)
        .bind(o.inventory.as_inventory())
        .bind(o.slot.as_slot())
        .bind(o.payment.as_payment())
        .bind(o.total_cents)
        .bind(o.created_at)
        .bind(o.updated_at)
        .bind(o.deadline_at)
        .bind(&line_nos)
        .bind(&skus)
        .bind(&quantities);
    events.bind(query).execute(conn).await?;
    Ok(())
}

/// Saves what [`Order::apply`](crate::domain::Order::apply) may change: the
/// order's state, and its lines' prices when `prices_changed`, in one
/// statement.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn save(conn: &mut PgConnection, o: &Order, prices_changed: bool) -> sqlx::Result<()> {
    let (skus, prices): (Vec<&str>, Vec<Option<i64>>) = if prices_changed {
        o.lines
            .iter()
            .map(|l| (l.sku.as_str(), l.unit_price_cents))
            .unzip()
    } else {
        (Vec::new(), Vec::new())
    };
    sqlx::query(
        "WITH prices AS ( \
             UPDATE order_lines AS ol SET unit_price_cents = p.price \
             FROM UNNEST($9::text[], $10::bigint[]) AS p(sku, price) \
             WHERE ol.order_id = $1 AND ol.sku = p.sku) \
         UPDATE orders SET state = $2, cancel_reason = $3, inventory = $4, slot = $5, \
             payment = $6, total_cents = $7, updated_at = $8 WHERE id = $1",
    )
    .bind(o.id)
    .bind(o.state.spelling())
    .bind(o.cancel_reason.map(CancelReason::spelling))
    .bind(o.inventory.as_inventory())
    .bind(o.slot.as_slot())
    .bind(o.payment.as_payment())
    .bind(o.total_cents)
    .bind(o.updated_at)
    .bind(&skus)
    .bind(&prices)
    .execute(conn)
    .await?;
    Ok(())
}

/// Orders not yet CONFIRMED or CANCELLED (through the partial index of open
/// orders).
pub async fn count_open(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE state IN ('PENDING', 'RESERVED')")
        .fetch_one(pool)
        .await
}

/// Locks up to `limit` open orders past their deadline that no other
/// instance is handling.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn overdue(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT id FROM orders WHERE state IN ('PENDING', 'RESERVED') AND deadline_at < now() \
         ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words rows already hold: a renamed variant must not change them.
    #[test]
    fn states_are_spelled_as_the_rows_already_stored() {
        saga_shared::db::assert_spelled::<OrderState>(&[
            "PENDING",
            "RESERVED",
            "CONFIRMED",
            "CANCELLED",
        ]);
        saga_shared::db::assert_spelled::<CancelReason>(&[
            "out_of_stock",
            "slot_unavailable",
            "payment_declined",
            "insufficient_funds",
            "timeout",
            "customer_cancelled",
        ]);
    }
}
