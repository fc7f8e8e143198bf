//! Postgres access for inventory: products, counter snapshots and epochs
//! here; the per-order decision and the ledger of holds in [`holds`]. Functions taking `&mut PgConnection` run inside the
//! caller's transaction. [`cache`]: the Redis side of stock.

pub mod cache;
mod holds;

pub use holds::*;

use saga_shared::repair::Page;

use saga_shared::db::Spelled;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use self::cache::SkuSnapshot;
use crate::domain::{OrderHoldState, Product};

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
    pub pool: PgPool,
}

/// The epoch and price of a SKU, read before recording a hold.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PriceAndEpoch {
    pub sku: String,
    pub unit_price_cents: i64,
    pub redis_epoch: i64,
}

impl Store {
    #[tracing::instrument(skip_all, fields(sku = %sku), err(level = "debug"))]
    pub async fn product(&self, sku: &str) -> sqlx::Result<Option<Product>> {
        product_row(&self.pool, product_by_sku!(), sku).await
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

    /// The order's decision, if any, and the prices and epochs of `skus`
    /// that exist, in one statement and without a lock: what a placement
    /// reads before it asks Redis.
    #[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
    pub async fn decision_and_prices(
        &self,
        order: Uuid,
        skus: &[String],
    ) -> sqlx::Result<(Option<OrderHoldState>, Vec<PriceAndEpoch>)> {
        /// One row at least (for the decision), then one per SKU found.
        #[derive(sqlx::FromRow)]
        struct Row {
            state: Option<String>,
            sku: Option<String>,
            unit_price_cents: Option<i64>,
            redis_epoch: Option<i64>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT (SELECT state FROM order_holds WHERE order_id = $1) AS state, \
                 p.sku, p.unit_price_cents, p.redis_epoch \
             FROM (VALUES (1)) AS one LEFT JOIN products AS p ON p.sku = ANY($2)",
        )
        .bind(order)
        .bind(skus)
        .fetch_all(&self.pool)
        .await?;
        let state = OrderHoldState::read_optional(rows.first().and_then(|r| r.state.as_deref()))?;
        let prices = rows
            .into_iter()
            .filter_map(|r| {
                Some(PriceAndEpoch {
                    sku: r.sku?,
                    unit_price_cents: r.unit_price_cents?,
                    redis_epoch: r.redis_epoch?,
                })
            })
            .collect();
        Ok((state, prices))
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

/// Creates or renames/reprices a product, in the caller's transaction.
/// Returns it and whether it is new.
#[tracing::instrument(skip_all, fields(sku = %sku), err(level = "debug"))]
pub async fn upsert_product(
    conn: &mut PgConnection,
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
    .fetch_one(conn)
    .await?;
    Ok((row.product.into(), row.created))
}

/// Reads what a rebuild needs for `skus`: the products (locked, in SKU
/// order so concurrent callers cannot deadlock, when `lock`) and a snapshot
/// per SKU of its RESERVED holds. The holds it closed are not read here:
/// only those Redis still has matter ([`closed_among`]), and a hot SKU
/// closes thousands an hour.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn snapshots(
    conn: &mut PgConnection,
    skus: &[String],
    lock: bool,
) -> sqlx::Result<Vec<SkuSnapshot>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        sku: String,
        on_hand: i64,
        sold: i64,
        redis_epoch: i64,
    }
    let query = if lock {
        "SELECT sku, on_hand, sold, redis_epoch FROM products WHERE sku = ANY($1) \
         ORDER BY sku FOR UPDATE"
    } else {
        "SELECT sku, on_hand, sold, redis_epoch FROM products WHERE sku = ANY($1) ORDER BY sku"
    };
    let rows: Vec<Row> = sqlx::query_as(query)
        .bind(skus)
        .fetch_all(&mut *conn)
        .await?;
    let holds: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT order_id, sku, quantity FROM holds WHERE sku = ANY($1) AND state = 'RESERVED'",
    )
    .bind(skus)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| SkuSnapshot {
            reserved: holds
                .iter()
                .filter(|(_, sku, _)| *sku == row.sku)
                .map(|(order, _, qty)| (*order, *qty))
                .collect(),
            sku: row.sku,
            on_hand: row.on_hand,
            sold: row.sold,
            epoch: row.redis_epoch,
            closed: Vec::new(),
        })
        .collect())
}

/// Of the holds `(sku, order)` given (those a Redis counter has), the ones
/// Postgres has released or committed, however long ago.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn closed_among<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    holds: &[(String, Uuid)],
) -> sqlx::Result<Vec<(String, Uuid)>> {
    if holds.is_empty() {
        return Ok(Vec::new());
    }
    let (skus, orders): (Vec<&str>, Vec<Uuid>) = holds
        .iter()
        .map(|(sku, order)| (sku.as_str(), *order))
        .unzip();
    sqlx::query_as(
        "SELECT h.sku, h.order_id FROM holds AS h \
         JOIN UNNEST($1::text[], $2::uuid[]) AS w(sku, order_id) \
           ON h.order_id = w.order_id AND h.sku = w.sku \
         WHERE h.state <> 'RESERVED'",
    )
    .bind(skus)
    .bind(orders)
    .fetch_all(conn)
    .await
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

/// The product `sku`, its row locked until the transaction ends.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn lock_product(conn: &mut PgConnection, sku: &str) -> sqlx::Result<Option<Product>> {
    product_row(conn, concat!(product_by_sku!(), " FOR UPDATE"), sku).await
}

/// The statement that reads one product by SKU (`$1`).
macro_rules! product_by_sku {
    () => {
        "SELECT sku, name, unit_price_cents, on_hand, reserved, sold, version \
         FROM products WHERE sku = $1"
    };
}
use product_by_sku;

async fn product_row<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    sql: &'static str,
    sku: &str,
) -> sqlx::Result<Option<Product>> {
    let row: Option<ProductRow> = sqlx::query_as(sql).bind(sku).fetch_optional(conn).await?;
    Ok(row.map(Into::into))
}

/// Locks the products rows of `keys` in one order (a batch's first step).
pub async fn lock_products(conn: &mut PgConnection, keys: &[String]) -> sqlx::Result<()> {
    saga_shared::db::lock_in_order(conn, "products", "sku", keys).await
}
