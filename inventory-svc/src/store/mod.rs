//! Postgres access for inventory: products, the per-order decision and the
//! ledger of holds. Functions taking `&mut PgConnection` run inside the
//! caller's transaction. [`cache`]: the Redis side of stock.

pub mod cache;

use saga_shared::repair::Page;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use self::cache::SkuSnapshot;
use crate::domain::{Holder, Line, OrderHoldState, Product};

const PRODUCT_COLUMNS: &str = "sku, name, unit_price_cents, on_hand, reserved, sold, version";

/// A `products` row (its catalog and stock columns).
#[derive(sqlx::FromRow)]
struct ProductRow {
    sku: String,
    name: String,
    unit_price_cents: i64,
    on_hand: i64,
    reserved: i64,
    sold: i64,
    version: i64,
}

impl From<ProductRow> for Product {
    fn from(r: ProductRow) -> Self {
        Product {
            sku: r.sku,
            name: r.name,
            unit_price_cents: r.unit_price_cents,
            on_hand: r.on_hand,
            reserved: r.reserved,
            sold: r.sold,
            version: r.version,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

/// The epoch and price of a SKU, read before recording a hold.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PriceAndEpoch {
    pub sku: String,
    pub unit_price_cents: i64,
    pub redis_epoch: i64,
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

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or renames/reprices a product. Returns it and whether it is new.
    #[tracing::instrument(skip_all, fields(sku = %sku), err(level = "debug"))]
    pub async fn upsert_product(
        &self,
        sku: &str,
        name: &str,
        unit_price_cents: i64,
    ) -> sqlx::Result<(Product, bool)> {
        #[derive(sqlx::FromRow)]
        struct Upserted {
            #[sqlx(flatten)]
            product: ProductRow,
            created: bool,
        }
        let row: Upserted = sqlx::query_as(
            "INSERT INTO products (sku, name, unit_price_cents) VALUES ($1, $2, $3) \
             ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, \
                 unit_price_cents = EXCLUDED.unit_price_cents, \
                 version = products.version + 1, updated_at = now() \
             RETURNING sku, name, unit_price_cents, on_hand, reserved, sold, version, \
                 (xmax = 0) AS created",
        )
        .bind(sku)
        .bind(name)
        .bind(unit_price_cents)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.product.into(), row.created))
    }

    #[tracing::instrument(skip_all, fields(sku = %sku), err(level = "debug"))]
    pub async fn product(&self, sku: &str) -> sqlx::Result<Option<Product>> {
        let row: Option<ProductRow> = sqlx::query_as(
            "SELECT sku, name, unit_price_cents, on_hand, reserved, sold, version \
             FROM products WHERE sku = $1",
        )
        .bind(sku)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    /// The given SKUs that exist, ordered by SKU.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn products(&self, skus: &[String]) -> sqlx::Result<Vec<Product>> {
        let rows: Vec<ProductRow> = sqlx::query_as(
            "SELECT sku, name, unit_price_cents, on_hand, reserved, sold, version \
             FROM products WHERE sku = ANY($1) ORDER BY sku",
        )
        .bind(skus)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// A page of products after `after` (exclusive), ordered by SKU.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn list(&self, after: &str, limit: i64) -> sqlx::Result<Vec<Product>> {
        let rows: Vec<ProductRow> = sqlx::query_as(
            "SELECT sku, name, unit_price_cents, on_hand, reserved, sold, version \
             FROM products WHERE sku > $1 ORDER BY sku LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Every SKU (for a full rebuild).
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn all_skus(&self) -> sqlx::Result<Vec<String>> {
        sqlx::query_scalar("SELECT sku FROM products ORDER BY sku")
            .fetch_all(&self.pool)
            .await
    }

    /// Prices and counter epochs of the given SKUs.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn prices_and_epochs(&self, skus: &[String]) -> sqlx::Result<Vec<PriceAndEpoch>> {
        sqlx::query_as(
            "SELECT sku, unit_price_cents, redis_epoch FROM products WHERE sku = ANY($1)",
        )
        .bind(skus)
        .fetch_all(&self.pool)
        .await
    }

    /// The order's decision, if any (no lock).
    #[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
    pub async fn order_state(&self, order: Uuid) -> sqlx::Result<Option<OrderHoldState>> {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM order_holds WHERE order_id = $1")
                .bind(order)
                .fetch_optional(&self.pool)
                .await?;
        Ok(state.as_deref().and_then(OrderHoldState::parse))
    }

    /// Whether the ledger has a decision for this order's saga (a direct
    /// call naming it is refused).
    #[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
    pub async fn saga_known(&self, order: Uuid) -> sqlx::Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM order_holds WHERE order_id = $1 AND kind = 'saga')",
        )
        .bind(order)
        .fetch_one(&self.pool)
        .await
    }

    /// Sagas whose holds are still RESERVED, unchanged for `older_than`,
    /// with ids above `after`, in id order: the repair loop asks their
    /// orders how they ended.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn open_sagas(&self, page: Page) -> sqlx::Result<Vec<Uuid>> {
        page.of(
            &self.pool,
            "order_holds",
            "state = 'RESERVED' AND kind = 'saga'",
        )
        .await
    }

    /// The order's holds (any state).
    #[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
    pub async fn holds_of(&self, order: Uuid) -> sqlx::Result<Vec<(String, i64, String)>> {
        sqlx::query_as("SELECT sku, quantity, state FROM holds WHERE order_id = $1 ORDER BY sku")
            .bind(order)
            .fetch_all(&self.pool)
            .await
    }
}

/// Reads what a rebuild needs for `skus`: the products (locked, in SKU
/// order so concurrent callers cannot deadlock, when `lock`) and a snapshot
/// per SKU of its holds: those RESERVED, and those closed within
/// `closed_window`.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn snapshots(
    conn: &mut PgConnection,
    skus: &[String],
    closed_window: Duration,
    lock: bool,
) -> sqlx::Result<(Vec<Product>, Vec<SkuSnapshot>)> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        product: ProductRow,
        redis_epoch: i64,
    }
    let query = if lock {
        "SELECT sku, name, unit_price_cents, on_hand, reserved, sold, version, redis_epoch \
         FROM products WHERE sku = ANY($1) ORDER BY sku FOR UPDATE"
    } else {
        "SELECT sku, name, unit_price_cents, on_hand, reserved, sold, version, redis_epoch \
         FROM products WHERE sku = ANY($1) ORDER BY sku"
    };
    let rows: Vec<Row> = sqlx::query_as(query)
        .bind(skus)
        .fetch_all(&mut *conn)
        .await?;
    let holds: Vec<(Uuid, String, i64, String)> = sqlx::query_as(
        "SELECT order_id, sku, quantity, state FROM holds WHERE sku = ANY($1) \
         AND (state = 'RESERVED' OR updated_at > now() - make_interval(secs => $2))",
    )
    .bind(skus)
    .bind(closed_window.as_secs_f64())
    .fetch_all(&mut *conn)
    .await?;
    let mut products = Vec::with_capacity(rows.len());
    let mut snapshots = Vec::with_capacity(rows.len());
    for row in rows {
        let mut snap = SkuSnapshot {
            sku: row.product.sku.clone(),
            on_hand: row.product.on_hand,
            sold: row.product.sold,
            epoch: row.redis_epoch,
            reserved: Vec::new(),
            closed: Vec::new(),
        };
        for (order, sku, qty, state) in &holds {
            if *sku != snap.sku {
                continue;
            }
            if state == "RESERVED" {
                snap.reserved.push((*order, *qty));
            } else {
                snap.closed.push(*order);
            }
        }
        snapshots.push(snap);
        products.push(row.product.into());
    }
    Ok((products, snapshots))
}

/// A fresh counter epoch: a value of the `redis_epochs` sequence, never
/// handed out before and never again, whatever becomes of the transaction
/// that drew it.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn next_epoch(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT nextval('redis_epochs')")
        .fetch_one(conn)
        .await
}

/// Stores a locked SKU's new counter epoch.
#[tracing::instrument(skip_all, fields(sku = %sku), err(level = "debug"))]
pub async fn set_epoch(conn: &mut PgConnection, sku: &str, epoch: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE products SET redis_epoch = $2 WHERE sku = $1")
        .bind(sku)
        .bind(epoch)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets a locked product's on_hand and bumps its version.
#[tracing::instrument(skip_all, fields(sku = %sku), err(level = "debug"))]
pub async fn set_on_hand(
    conn: &mut PgConnection,
    sku: &str,
    on_hand: i64,
) -> sqlx::Result<Product> {
    let sql = format!(
        "UPDATE products SET on_hand = $2, version = version + 1, updated_at = now() \
         WHERE sku = $1 RETURNING {PRODUCT_COLUMNS}"
    );
    let row: ProductRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(sku)
        .bind(on_hand)
        .fetch_one(conn)
        .await?;
    Ok(row.into())
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
    .bind(state.as_str())
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
    let existing: String =
        sqlx::query_scalar("SELECT state FROM order_holds WHERE order_id = $1 FOR UPDATE")
            .bind(order)
            .fetch_one(&mut *conn)
            .await?;
    OrderHoldState::parse(&existing)
        .map(Claimed::Existing)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown order state {existing:?}").into()))
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
    Ok(state.as_deref().and_then(OrderHoldState::parse))
}

/// Records the holds of a granted reservation: adds to each SKU's reserved
/// count if its counter epoch is still `epochs[i]`, and writes the ledger.
/// Returns the lines with their prices at this moment.
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn record_holds(
    conn: &mut PgConnection,
    order: Uuid,
    lines: &[Line],
    epochs: &[i64],
) -> Result<Vec<HoldRow>, RecordError> {
    let mut priced = Vec::with_capacity(lines.len());
    for (line, epoch) in lines.iter().zip(epochs) {
        let price: Option<i64> = sqlx::query_scalar(
            "UPDATE products SET reserved = reserved + $2 \
             WHERE sku = $1 AND redis_epoch = $3 RETURNING unit_price_cents",
        )
        .bind(&line.sku)
        .bind(line.quantity)
        .bind(epoch)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(unit_price_cents) = price else {
            return Err(RecordError::Fenced {
                sku: line.sku.clone(),
                epoch: *epoch,
            });
        };
        priced.push(HoldRow {
            sku: line.sku.clone(),
            quantity: line.quantity,
            unit_price_cents,
        });
    }
    insert_holds(conn, order, &priced).await?;
    Ok(priced)
}

/// Ends a RESERVED order's holds: released (units back) or committed (units
/// sold). `stale_counter`: Redis will not be told, so its counters of these
/// SKUs move to a new epoch (rebuilt before their next use). Returns the
/// lines that changed.
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn close_holds(
    conn: &mut PgConnection,
    order: Uuid,
    to: OrderHoldState,
    stale_counter: bool,
) -> sqlx::Result<Vec<Line>> {
    let closed: Vec<(String, i64)> = sqlx::query_as(
        "UPDATE holds SET state = $2, updated_at = now() \
         WHERE order_id = $1 AND state = 'RESERVED' RETURNING sku, quantity",
    )
    .bind(order)
    .bind(to.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut lines: Vec<Line> = closed
        .into_iter()
        .map(|(sku, quantity)| Line { sku, quantity })
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
    sqlx::query("UPDATE order_holds SET state = $2, updated_at = now() WHERE order_id = $1")
        .bind(order)
        .bind(to.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(lines)
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
    let state = OrderHoldState::parse(&state)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown order state {state:?}").into()))?;
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
