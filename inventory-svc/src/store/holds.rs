//! The per-order decision (`order_holds`) and the ledger of holds
//! (`holds`): claiming an order, recording holds Redis granted (fenced by
//! the counter epoch), holding through Postgres, and closing holds.

use crate::domain::{Holder, Line, OrderHoldState, Product};
use sqlx::PgConnection;
use uuid::Uuid;

use super::*;
use saga_shared::db::Spelled;

impl Spelled for OrderHoldState {
    const WHAT: &'static str = "order state";
}

/// The outcome of claiming an order's decision row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// No decision existed; the row now holds the given state (uncommitted).
    New,
    /// A decision existed (now locked by this transaction).
    Existing(OrderHoldState),
}

/// A hold line as recorded.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct HoldRow {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

/// Recording holds failed because a counter was rebuilt after it granted them.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the Redis counter of {sku} was rebuilt since it granted the hold (epoch {epoch})")]
    Fenced { sku: String, epoch: i64 },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Takes the decision row of `holder`: inserts it with `state` if missing,
/// otherwise locks it and returns what it says.
#[tracing::instrument(skip_all, fields(holder = ?holder), err(level = "debug"))]
pub async fn claim_order(
    conn: &mut PgConnection,
    holder: Holder,
    state: OrderHoldState,
    reason: Option<&str>,
) -> sqlx::Result<Claimed> {
    claim_order_with(conn, holder, state, reason, None).await
}

/// [`claim_order`], noting which SKU a rejection is about.
#[tracing::instrument(skip_all, fields(holder = ?holder), err(level = "debug"))]
pub async fn claim_order_with(
    conn: &mut PgConnection,
    holder: Holder,
    state: OrderHoldState,
    reason: Option<&str>,
    rejected_sku: Option<&str>,
) -> sqlx::Result<Claimed> {
    let order = holder.ledger_id();
    let inserted = sqlx::query(
        "INSERT INTO order_holds (order_id, state, reason, rejected_sku, kind, reservation_id) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(order)
    .bind(state.spelling())
    .bind(reason)
    .bind(rejected_sku)
    .bind(holder.kind())
    .bind(holder.reservation_id())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claimed::New);
    }
    lock_existing(conn, order).await.map(Claimed::Existing)
}

/// Locks a decision row known to exist (the insert of a claim met it) and
/// returns its state.
async fn lock_existing(conn: &mut PgConnection, order: Uuid) -> sqlx::Result<OrderHoldState> {
    lock_order(conn, order)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// Locks the order's decision row, if there is one.
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn lock_order(
    conn: &mut PgConnection,
    order: Uuid,
) -> sqlx::Result<Option<OrderHoldState>> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM order_holds WHERE order_id = $1 FOR UPDATE")
            .bind(order)
            .fetch_optional(conn)
            .await?;
    OrderHoldState::read_optional(state.as_deref())
}

/// What claiming a granted reservation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The decision is new (RESERVED, uncommitted) and these holds are
    /// recorded, at the prices of this moment.
    Held(Vec<HoldRow>),
    /// A decision existed (now locked by this transaction); nothing written.
    Existing(OrderHoldState),
    /// Postgres has not the units of this SKU that Redis granted (a counter
    /// that lost writes: a Redis restarted from a snapshot, or failed over
    /// to a replica behind, keeps its epoch); nothing written.
    Short(String),
}

/// Claims the decision of `holder` as RESERVED and records the holds Redis
/// granted, in one statement: each SKU's reserved count grows if its counter
/// epoch is still `epochs[i]`, and the ledger gets the lines with their
/// prices. The caller has locked the products of an order of several lines
/// (`Handler::lock_batch`, or the direct call), so that two such orders
/// cannot deadlock; one line takes its one lock in the statement. Postgres
/// decides: a line whose units it
/// has not (whatever Redis granted) claims and records nothing
/// ([`Recorded::Short`]).
#[tracing::instrument(skip_all, fields(holder = ?holder), err(level = "debug"))]
pub async fn claim_and_record(
    conn: &mut PgConnection,
    holder: Holder,
    lines: &[Line],
    epochs: &[i64],
) -> Result<Recorded, RecordError> {
    let order = holder.ledger_id();
    let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    /// One row at least (for the claim), then one per line recorded.
    #[derive(sqlx::FromRow)]
    struct Row {
        claimed: bool,
        short: Option<String>,
        sku: Option<String>,
        quantity: Option<i64>,
        unit_price_cents: Option<i64>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "WITH short AS ( \
             SELECT p.sku FROM products AS p \
             JOIN UNNEST($4::text[], $5::bigint[]) AS w(sku, quantity) ON p.sku = w.sku \
             WHERE p.reserved + p.sold + w.quantity > p.on_hand LIMIT 1), \
         claim AS ( \
             INSERT INTO order_holds (order_id, state, kind, reservation_id) \
             SELECT $1, 'RESERVED', $2, $3 WHERE NOT EXISTS (SELECT FROM short) \
             ON CONFLICT DO NOTHING RETURNING order_id), \
         priced AS ( \
             UPDATE products AS p SET reserved = p.reserved + w.quantity \
             FROM UNNEST($4::text[], $5::bigint[], $6::bigint[]) AS w(sku, quantity, epoch) \
             WHERE p.sku = w.sku AND p.redis_epoch = w.epoch \
                 AND p.reserved + p.sold + w.quantity <= p.on_hand AND EXISTS (SELECT FROM claim) \
             RETURNING p.sku, w.quantity, p.unit_price_cents), \
         held AS ( \
             INSERT INTO holds (order_id, sku, quantity, unit_price_cents, state) \
             SELECT $1, sku, quantity, unit_price_cents, 'RESERVED' FROM priced) \
         SELECT EXISTS (SELECT FROM claim) AS claimed, (SELECT sku FROM short) AS short, \
             priced.sku, priced.quantity, priced.unit_price_cents \
         FROM (VALUES (1)) AS one LEFT JOIN priced ON true",
    )
    .bind(order)
    .bind(holder.kind())
    .bind(holder.reservation_id())
    .bind(&skus)
    .bind(&quantities)
    .bind(epochs)
    .fetch_all(&mut *conn)
    .await?;
    if let Some(sku) = rows.first().and_then(|r| r.short.clone()) {
        // Not claimed; a decision taken already (its own hold counted in
        // the shortage) stands.
        return Ok(match lock_order(conn, order).await? {
            Some(state) => Recorded::Existing(state),
            None => Recorded::Short(sku),
        });
    }
    if !rows.first().is_some_and(|r| r.claimed) {
        return Ok(Recorded::Existing(lock_existing(conn, order).await?));
    }
    let mut held: Vec<HoldRow> = rows
        .into_iter()
        .filter_map(|r| {
            Some(HoldRow {
                sku: r.sku?,
                quantity: r.quantity?,
                unit_price_cents: r.unit_price_cents?,
            })
        })
        .collect();
    // A line not recorded: its counter was rebuilt after it granted the hold
    // (or its units went between the statement's look and its update: the
    // retry finds it short). The caller's transaction is rolled back, claim
    // and all.
    if let Some((line, epoch)) = lines
        .iter()
        .zip(epochs)
        .find(|(line, _)| !held.iter().any(|h| h.sku == line.sku))
    {
        return Err(RecordError::Fenced {
            sku: line.sku.clone(),
            epoch: *epoch,
        });
    }
    held.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok(Recorded::Held(held))
}

/// Locks the products that `order` holds or held, in the database's order
/// of SKUs (as every other path locks them): for a close that no batch has
/// locked for, before [`close_holds`] changes them. Sorting in Rust is not
/// enough: the database's collation need not be byte order.
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn lock_products_of(conn: &mut PgConnection, order: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "SELECT 1 FROM products \
         WHERE sku IN (SELECT sku FROM holds WHERE order_id = $1) ORDER BY sku FOR UPDATE",
    )
    .bind(order)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves the counter epochs of `skus` on: their Redis counters are rebuilt
/// from Postgres before a grant of theirs counts again.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn move_epochs(conn: &mut PgConnection, skus: &[String]) -> sqlx::Result<()> {
    sqlx::query("UPDATE products SET redis_epoch = nextval('redis_epochs') WHERE sku = ANY($1)")
        .bind(skus)
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends a RESERVED order's holds: released (units back) or committed (units
/// sold). The decision and its holds move in one statement, which locks the
/// decision row; `None` if the decision is not RESERVED (or there is none):
/// nothing changed. `stale_counter`: Redis will not be told, so its counters
/// of these SKUs move to a new epoch (rebuilt before their next use). Returns
/// the lines that changed.
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn close_holds(
    conn: &mut PgConnection,
    order: Uuid,
    to: OrderHoldState,
    stale_counter: bool,
) -> sqlx::Result<Option<Vec<Line>>> {
    // No row: not RESERVED. One row of NULLs: RESERVED with no open holds.
    // `(state = 'RESERVED') IS TRUE` means `state = 'RESERVED'` (the column is
    // NOT NULL) but keeps the planner off the partial index of RESERVED holds
    // by SKU: with the plain test it scans every open hold (and every dead
    // entry since the last vacuum) instead of the order's few by primary key.
    let closed: Vec<(Option<String>, Option<i64>)> = sqlx::query_as(
        "WITH decision AS ( \
             UPDATE order_holds SET state = $2, updated_at = now() \
             WHERE order_id = $1 AND state = 'RESERVED' RETURNING order_id), \
         moved AS ( \
             UPDATE holds SET state = $2, updated_at = now() \
             WHERE order_id = $1 AND (state = 'RESERVED') IS TRUE AND EXISTS (SELECT FROM decision) \
             RETURNING sku, quantity) \
         SELECT moved.sku, moved.quantity FROM decision LEFT JOIN moved ON true",
    )
    .bind(order)
    .bind(to.spelling())
    .fetch_all(&mut *conn)
    .await?;
    if closed.is_empty() {
        return Ok(None);
    }
    let mut lines: Vec<Line> = closed
        .into_iter()
        .filter_map(|(sku, quantity)| {
            Some(Line {
                sku: sku?,
                quantity: quantity?,
            })
        })
        .collect();
    lines.sort_by(|a, b| a.sku.cmp(&b.sku));
    let sold_too = to == OrderHoldState::Committed;
    for line in &lines {
        sqlx::query(
            "UPDATE products SET reserved = reserved - $2, \
                 sold = sold + CASE WHEN $3 THEN $2 ELSE 0 END, \
                 redis_epoch = CASE WHEN $4 THEN nextval('redis_epochs') ELSE redis_epoch END \
             WHERE sku = $1",
        )
        .bind(&line.sku)
        .bind(line.quantity)
        .bind(sold_too)
        .bind(stale_counter)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Some(lines))
}

/// What holding an order through Postgres found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgReserve {
    Held(Vec<HoldRow>),
    /// The first SKU without enough units.
    Short(String),
    /// The first SKU that does not exist.
    Unknown(String),
}

/// Holds every line or none through Postgres alone (the fallback path):
/// locks the SKU rows in SKU order (`lines` are sorted), checks what is
/// available, takes it, and moves each counter epoch on (Redis was not
/// told; its counters are rebuilt before their next use).
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn reserve_in_postgres(
    conn: &mut PgConnection,
    order: Uuid,
    lines: &[Line],
) -> sqlx::Result<PgReserve> {
    let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    let rows: Vec<ProductRow> = sqlx::query_as(
        "SELECT sku, name, unit_price_cents, on_hand, reserved, sold, version \
         FROM products WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
    )
    .bind(&skus)
    .fetch_all(&mut *conn)
    .await?;
    let rows: Vec<Product> = rows.into_iter().map(Into::into).collect();
    let mut held = Vec::with_capacity(lines.len());
    for line in lines {
        let Some(p) = rows.iter().find(|p| p.sku == line.sku) else {
            return Ok(PgReserve::Unknown(line.sku.clone()));
        };
        if p.available() < line.quantity {
            return Ok(PgReserve::Short(line.sku.clone()));
        }
        held.push(HoldRow {
            sku: line.sku.clone(),
            quantity: line.quantity,
            unit_price_cents: p.unit_price_cents,
        });
    }
    for h in &held {
        sqlx::query(
            "UPDATE products SET reserved = reserved + $2, redis_epoch = nextval('redis_epochs') \
             WHERE sku = $1",
        )
        .bind(&h.sku)
        .bind(h.quantity)
        .execute(&mut *conn)
        .await?;
    }
    insert_holds(conn, order, &held).await?;
    Ok(PgReserve::Held(held))
}

#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
async fn insert_holds(conn: &mut PgConnection, order: Uuid, held: &[HoldRow]) -> sqlx::Result<()> {
    let skus: Vec<&str> = held.iter().map(|h| h.sku.as_str()).collect();
    let quantities: Vec<i64> = held.iter().map(|h| h.quantity).collect();
    let prices: Vec<i64> = held.iter().map(|h| h.unit_price_cents).collect();
    sqlx::query(
        "INSERT INTO holds (order_id, sku, quantity, unit_price_cents, state) \
         SELECT $1, sku, quantity, price, 'RESERVED' \
         FROM UNNEST($2::text[], $3::bigint[], $4::bigint[]) AS l(sku, quantity, price)",
    )
    .bind(order)
    .bind(&skus)
    .bind(&quantities)
    .bind(&prices)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a freshly claimed order as rejected (the claim was RESERVED).
#[tracing::instrument(skip_all, fields(order_id = %order, sku = %sku), err(level = "debug"))]
pub async fn reject_order(
    conn: &mut PgConnection,
    order: Uuid,
    reason: &str,
    sku: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE order_holds SET state = 'REJECTED', reason = $2, rejected_sku = $3, \
             updated_at = now() WHERE order_id = $1",
    )
    .bind(order)
    .bind(reason)
    .bind(sku)
    .execute(conn)
    .await?;
    Ok(())
}

/// A reservation as stored: its decision and its lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReservation {
    pub state: OrderHoldState,
    pub reason: Option<String>,
    pub rejected_sku: Option<String>,
    pub lines: Vec<HoldRow>,
}

/// Reads a reservation (an order's decision and holds).
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn reservation(
    conn: &mut PgConnection,
    order: Uuid,
) -> sqlx::Result<Option<StoredReservation>> {
    let row: Option<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT state, reason, rejected_sku FROM order_holds WHERE order_id = $1")
            .bind(order)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((state, reason, rejected_sku)) = row else {
        return Ok(None);
    };
    let state = OrderHoldState::read(&state)?;
    let lines: Vec<HoldRow> = sqlx::query_as(
        "SELECT sku, quantity, unit_price_cents FROM holds WHERE order_id = $1 ORDER BY sku",
    )
    .bind(order)
    .fetch_all(conn)
    .await?;
    Ok(Some(StoredReservation {
        state,
        reason,
        rejected_sku,
        lines,
    }))
}

#[cfg(test)]
mod tests {
    use strum::VariantArray;

    use super::*;

    /// The words rows already hold: a renamed variant must not change them.
    #[test]
    fn states_are_spelled_as_the_rows_already_stored() {
        saga_shared::db::assert_spelled::<OrderHoldState>(&[
            "RESERVED",
            "COMMITTED",
            "RELEASED",
            "REJECTED",
        ]);
        // The reason of a rejected order, as reject_order stores it.
        use crate::service::RejectReason;
        let reasons: Vec<&str> = RejectReason::VARIANTS.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons, ["out_of_stock", "unknown_sku", "invalid_lines"]);
    }
}
