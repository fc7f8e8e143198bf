//! Reading: the queries that gather the facts from the services' databases
//! (each through a pool on that service's schema), Redis and the DLQ
//! stream. No judgement here; the checks are in [`super::checks`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::Row;
use uuid::Uuid;

use saga_shared::bus::history::{self, Applied, Published};

use crate::saga::OpenOrder;

use super::Auditor;
use super::facts::{
    HoldFacts, Movement, OrderFacts, PaymentFacts, SkuFacts, SlotFacts, WalletFacts,
};

/// Orders (and order ids) read at once.
const PAGE: i64 = 5_000;

impl Auditor {
    /// Messages in the DLQ (0 if it does not exist).
    pub(super) async fn read_dead_letters(&self) -> anyhow::Result<u64> {
        match self.js.get_stream(self.ns.dlq_stream()).await {
            Ok(mut stream) => Ok(stream.info().await?.state.messages),
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref j)
                        if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn read_skus(&self) -> anyhow::Result<Vec<SkuFacts>> {
        let rows = sqlx::query(
            "SELECT p.sku, p.on_hand, p.reserved, p.sold, p.redis_epoch, \
                 COALESCE(h.held, 0)::bigint AS held, COALESCE(h.committed, 0)::bigint AS committed \
             FROM products p LEFT JOIN ( \
                 SELECT sku, sum(quantity) FILTER (WHERE state = 'RESERVED') AS held, \
                        sum(quantity) FILTER (WHERE state = 'COMMITTED') AS committed \
                 FROM holds GROUP BY sku) h USING (sku) \
             ORDER BY p.sku",
        )
        .fetch_all(&self.inventory)
        .await?;
        let mut pg_holds: HashMap<String, BTreeMap<String, i64>> = HashMap::new();
        let held: Vec<(String, Uuid, i64)> =
            sqlx::query_as("SELECT sku, order_id, quantity FROM holds WHERE state = 'RESERVED'")
                .fetch_all(&self.inventory)
                .await?;
        for (sku, order, qty) in held {
            pg_holds
                .entry(sku)
                .or_default()
                .insert(order.to_string(), qty);
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let sku: String = r.get("sku");
            let mut facts = SkuFacts {
                pg_holds: pg_holds.remove(&sku).unwrap_or_default(),
                sku,
                on_hand: r.get("on_hand"),
                reserved: r.get("reserved"),
                sold: r.get("sold"),
                epoch: r.get("redis_epoch"),
                ledger_held: r.get("held"),
                ledger_committed: r.get("committed"),
                ..SkuFacts::default()
            };
            if self.fast_path {
                let view = self.stock_cache.read(&facts.sku).await?;
                let unknown: Vec<Uuid> = view
                    .holds
                    .keys()
                    .filter(|o| !facts.pg_holds.contains_key(*o))
                    .filter_map(|o| Uuid::parse_str(o).ok())
                    .collect();
                if !unknown.is_empty() {
                    let decided: Vec<(Uuid, String)> = sqlx::query_as(
                        "SELECT order_id, state FROM order_holds WHERE order_id = ANY($1)",
                    )
                    .bind(&unknown)
                    .fetch_all(&self.inventory)
                    .await?;
                    facts.decided = decided
                        .into_iter()
                        .map(|(o, s)| (o.to_string(), s))
                        .collect();
                }
                facts.redis = Some(view);
            }
            out.push(facts);
        }
        Ok(out)
    }

    /// Every wallet with the sums of its ledger.
    pub(super) async fn read_wallets(&self) -> anyhow::Result<Vec<WalletFacts>> {
        let rows = sqlx::query(
            "SELECT w.customer_id, w.balance_cents, \
                 COALESCE(sum(l.amount_cents) FILTER (WHERE l.kind = 'TOPUP'), 0)::bigint AS topups, \
                 COALESCE(sum(l.amount_cents) FILTER (WHERE l.kind = 'CHARGE'), 0)::bigint AS charges, \
                 COALESCE(sum(l.amount_cents) FILTER (WHERE l.kind = 'REFUND'), 0)::bigint AS refunds \
             FROM wallets w LEFT JOIN wallet_ledger l USING (customer_id) \
             GROUP BY w.customer_id, w.balance_cents",
        )
        .fetch_all(&self.payment)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| WalletFacts {
                customer: r.get("customer_id"),
                balance: r.get("balance_cents"),
                topups: r.get("topups"),
                charges: r.get("charges"),
                refunds: r.get("refunds"),
            })
            .collect())
    }

    /// Every slot with the count of its bookings.
    pub(super) async fn read_slots(&self) -> anyhow::Result<Vec<SlotFacts>> {
        let rows = sqlx::query(
            "SELECT s.id, s.capacity, s.held, s.confirmed, \
                 count(b.*) FILTER (WHERE b.state = 'HELD')::int AS b_held, \
                 count(b.*) FILTER (WHERE b.state = 'CONFIRMED')::int AS b_confirmed \
             FROM slots s LEFT JOIN bookings b ON b.slot_id = s.id \
             GROUP BY s.id, s.capacity, s.held, s.confirmed",
        )
        .fetch_all(&self.reservation)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SlotFacts {
                id: r.get("id"),
                capacity: r.get("capacity"),
                held: r.get("held"),
                confirmed: r.get("confirmed"),
                booked_held: r.get("b_held"),
                booked_confirmed: r.get("b_confirmed"),
            })
            .collect())
    }

    /// A page of orders after `after`, with what each participant has.
    pub async fn read_orders(&self, after: Uuid) -> anyhow::Result<Vec<OrderFacts>> {
        let rows = sqlx::query(
            "SELECT id, state, customer_id, slot_id, total_cents, \
                 (deadline_at < now() - make_interval(secs => $3)) AS overdue \
             FROM orders WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(PAGE)
        .bind(self.deadline_slack.as_secs_f64())
        .fetch_all(&self.orders)
        .await?;
        self.with_participants(&rows).await
    }

    /// One order with what each participant has of it (None: order-svc
    /// does not know it).
    pub async fn read_order(&self, id: Uuid) -> anyhow::Result<Option<OrderFacts>> {
        let rows = sqlx::query(
            "SELECT id, state, customer_id, slot_id, total_cents, \
                 (deadline_at < now() - make_interval(secs => $2)) AS overdue \
             FROM orders WHERE id = $1",
        )
        .bind(id)
        .bind(self.deadline_slack.as_secs_f64())
        .fetch_all(&self.orders)
        .await?;
        Ok(self.with_participants(&rows).await?.pop())
    }

    /// What each service's outbox (events it published) and inbox (events
    /// it applied) hold of an order's events.
    pub async fn read_events(&self, id: Uuid) -> anyhow::Result<(Vec<Published>, Vec<Applied>)> {
        let (mut published, mut applied) = (Vec::new(), Vec::new());
        for (_, pool) in self.service_pools() {
            published.extend(history::published(pool, id).await?);
            applied.extend(history::applied(pool, id).await?);
        }
        Ok((published, applied))
    }

    /// Each service's outbox rows of an order (events it published).
    pub async fn read_published(&self, id: Uuid) -> anyhow::Result<Vec<(&'static str, Published)>> {
        let mut out = Vec::new();
        for (service, pool) in self.service_pools() {
            out.extend(
                history::published(pool, id)
                    .await?
                    .into_iter()
                    .map(|p| (service, p)),
            );
        }
        Ok(out)
    }

    /// Open orders (PENDING, RESERVED) unchanged for `older_than`, oldest
    /// first, at most `limit`.
    pub async fn read_open_orders(
        &self,
        older_than: std::time::Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<OpenOrder>> {
        Ok(sqlx::query_as::<_, OpenOrder>(
            "SELECT id, state, inventory, slot, payment, updated_at, deadline_at FROM orders \
             WHERE state IN ('PENDING', 'RESERVED') \
               AND updated_at < now() - make_interval(secs => $1) \
             ORDER BY updated_at LIMIT $2",
        )
        .bind(older_than.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.orders)
        .await?)
    }

    /// The orders of `rows` with what each participant has of them.
    async fn with_participants(
        &self,
        rows: &[sqlx::postgres::PgRow],
    ) -> anyhow::Result<Vec<OrderFacts>> {
        let mut orders: Vec<OrderFacts> = rows
            .iter()
            .map(|r| OrderFacts {
                id: r.get("id"),
                state: r.get("state"),
                customer: r.get("customer_id"),
                slot: r.get("slot_id"),
                total: r.get("total_cents"),
                overdue: r.get("overdue"),
                ..OrderFacts::default()
            })
            .collect();
        if orders.is_empty() {
            return Ok(orders);
        }
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let index: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let at = |id: &Uuid| index.get(id).copied();

        let lines: Vec<(Uuid, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT order_id, sku, quantity, unit_price_cents FROM order_lines \
             WHERE order_id = ANY($1) ORDER BY order_id, line_no",
        )
        .bind(&ids)
        .fetch_all(&self.orders)
        .await?;
        for (id, sku, qty, price) in lines {
            if let Some(i) = at(&id) {
                orders[i].lines.push((sku, qty, price));
            }
        }
        let decisions: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT order_id, state FROM order_holds WHERE order_id = ANY($1) AND kind = 'saga'",
        )
        .bind(&ids)
        .fetch_all(&self.inventory)
        .await?;
        for (id, state) in decisions {
            if let Some(i) = at(&id) {
                orders[i].stock = Some(state);
            }
        }
        let holds: Vec<(Uuid, String, i64, i64, String, String)> = sqlx::query_as(
            "SELECT h.order_id, h.sku, h.quantity, h.unit_price_cents, h.state, d.state \
             FROM holds h JOIN order_holds d USING (order_id) WHERE h.order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.inventory)
        .await?;
        for (id, sku, quantity, unit_price, state, decision) in holds {
            if let Some(i) = at(&id) {
                orders[i].holds.push(HoldFacts {
                    sku,
                    quantity,
                    unit_price,
                    state,
                    decision,
                });
            }
        }
        let bookings: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT order_id, state FROM bookings WHERE order_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&self.reservation)
                .await?;
        for (id, state) in bookings {
            if let Some(i) = at(&id) {
                orders[i].booking = Some(state);
            }
        }
        let payments: Vec<(Uuid, String, i64, String)> = sqlx::query_as(
            "SELECT order_id, state, amount_cents, customer_id FROM payments WHERE order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.payment)
        .await?;
        for (id, state, amount, customer) in payments {
            if let Some(i) = at(&id) {
                orders[i].payment = Some(PaymentFacts {
                    state,
                    amount,
                    customer,
                });
            }
        }
        let ledger: Vec<(Uuid, String, i64, String)> = sqlx::query_as(
            "SELECT order_id, kind, amount_cents, customer_id FROM wallet_ledger \
             WHERE order_id = ANY($1) ORDER BY id",
        )
        .bind(&ids)
        .fetch_all(&self.payment)
        .await?;
        for (id, kind, amount, customer) in ledger {
            if let Some(i) = at(&id) {
                orders[i].ledger.push(Movement {
                    kind,
                    amount,
                    customer,
                });
            }
        }
        Ok(orders)
    }

    /// Orders that money moved for and order-svc does not know.
    pub(super) async fn read_unknown_orders(&self) -> anyhow::Result<Vec<Uuid>> {
        let mut unknown = Vec::new();
        let mut after = Uuid::nil();
        loop {
            let paid: Vec<Uuid> = sqlx::query_scalar(
                "SELECT DISTINCT order_id FROM wallet_ledger \
                 WHERE order_id IS NOT NULL AND order_id > $1 ORDER BY order_id LIMIT $2",
            )
            .bind(after)
            .bind(PAGE)
            .fetch_all(&self.payment)
            .await?;
            let Some(last) = paid.last() else { break };
            after = *last;
            let known: BTreeSet<Uuid> =
                sqlx::query_scalar::<_, Uuid>("SELECT id FROM orders WHERE id = ANY($1)")
                    .bind(&paid)
                    .fetch_all(&self.orders)
                    .await?
                    .into_iter()
                    .collect();
            unknown.extend(paid.into_iter().filter(|o| !known.contains(o)));
        }
        Ok(unknown)
    }

    /// Each service's outbox rows not yet published.
    pub(super) async fn read_outboxes(&self) -> anyhow::Result<Vec<(&'static str, i64)>> {
        let mut out = Vec::with_capacity(4);
        for (name, pool) in self.service_pools() {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(pool)
                    .await?;
            out.push((name, n));
        }
        Ok(out)
    }
}
