//! The auditor: checks the invariants of the whole system (DESIGN.md section
//! 7) across the four services' databases and Redis, and lists every
//! violation. Run it once the system is quiet (`sagactl audit`); tests call
//! it too.
//!
//! Each service's tables are read through a pool pinned to that service's
//! schema, so the audit works whether the services share a database or not.
//! Orders are checked a page at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use fred::clients::Pool as RedisPool;
use inventory_svc::cache::StockCache;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::system::SystemConfig;

/// What is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// on_hand = available + reserved + sold, available >= 0, the ledger
    /// agrees, and Redis agrees with Postgres.
    StockConservation,
    /// balance = top-ups - charges + refunds, by the ledger.
    WalletConservation,
    /// At most one capture per order.
    OneCapturePerOrder,
    /// CONFIRMED: stock committed, slot confirmed, payment captured.
    ConfirmedComplete,
    /// CANCELLED: nothing held, no slot, net charge zero.
    CancelledCompensated,
    /// booked <= capacity, and the counts match the bookings.
    SlotCapacity,
    /// Every order terminal within its deadline (plus slack).
    NoOrderStuck,
    /// Every outbox row published.
    OutboxDrained,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::StockConservation => "stock conservation",
            Check::WalletConservation => "wallet conservation",
            Check::OneCapturePerOrder => "one capture per order",
            Check::ConfirmedComplete => "confirmed orders complete",
            Check::CancelledCompensated => "cancelled orders compensated",
            Check::SlotCapacity => "slot capacity",
            Check::NoOrderStuck => "no order stuck",
            Check::OutboxDrained => "outbox drained",
        }
    }

    pub const ALL: [Check; 8] = [
        Check::StockConservation,
        Check::WalletConservation,
        Check::OneCapturePerOrder,
        Check::ConfirmedComplete,
        Check::CancelledCompensated,
        Check::SlotCapacity,
        Check::NoOrderStuck,
        Check::OutboxDrained,
    ];
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub check: Check,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check.name(), self.detail)
    }
}

/// The outcome of an audit.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub skus: usize,
    pub wallets: usize,
    pub slots: usize,
    pub orders: usize,
    /// Redis counters of an older epoch than Postgres's: rebuilt before
    /// their next use or by the next reconciliation (not a violation).
    pub stale_counters: usize,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    fn flag(&mut self, check: Check, detail: String) {
        self.violations.push(Violation { check, detail });
    }

    /// One line per check (with its count of violations), then the violations.
    pub fn render(&self) -> String {
        let mut out = format!(
            "audited {} SKUs, {} wallets, {} slots, {} orders\n",
            self.skus, self.wallets, self.slots, self.orders
        );
        if self.stale_counters > 0 {
            out.push_str(&format!(
                "  note  {} Redis counters are stale (rebuilt before their next use)\n",
                self.stale_counters
            ));
        }
        let mut counts: BTreeMap<Check, usize> = BTreeMap::new();
        for v in &self.violations {
            *counts.entry(v.check).or_default() += 1;
        }
        for check in Check::ALL {
            match counts.get(&check) {
                None => out.push_str(&format!("  ok    {}\n", check.name())),
                Some(n) => out.push_str(&format!("  FAIL  {} ({n})\n", check.name())),
            }
        }
        for v in &self.violations {
            out.push_str(&format!("  - {v}\n"));
        }
        out
    }
}

/// Read access to every service's state.
pub struct Auditor {
    orders: PgPool,
    inventory: PgPool,
    payment: PgPool,
    reservation: PgPool,
    stock_cache: StockCache,
    /// Orders may be open this long past their deadline (the sweeper's
    /// period, and then some) before they count as stuck.
    pub deadline_slack: Duration,
    /// A hold Redis granted and Postgres has not recorded is in flight while
    /// younger than this (inventory's orphan grace period); older, the
    /// reconciler should have released it.
    pub orphan_grace: Duration,
}

async fn pool(db: &saga_shared::config::DatabaseConfig) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = db.url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("search_path", db.schema.as_str())]))
        .await?)
}

const PAGE: i64 = 5_000;

impl Auditor {
    /// Connects as the services do (their database and Redis settings).
    pub async fn connect(cfg: &SystemConfig) -> anyhow::Result<Self> {
        let redis = saga_shared::redis::connect(&cfg.inventory.redis).await?;
        Self::with_redis(cfg, redis).await
    }

    /// Like [`Auditor::connect`], reusing a Redis pool.
    pub async fn with_redis(cfg: &SystemConfig, redis: RedisPool) -> anyhow::Result<Self> {
        Ok(Self {
            orders: pool(&cfg.order.database).await?,
            inventory: pool(&cfg.inventory.database).await?,
            payment: pool(&cfg.payment.database).await?,
            reservation: pool(&cfg.reservation.database).await?,
            stock_cache: StockCache::new(
                redis,
                &cfg.inventory.namespace,
                Duration::from_secs(5),
                Duration::from_secs(60),
            ),
            deadline_slack: Duration::from_millis(cfg.order.order.sweep_interval_ms * 5 + 5_000),
            orphan_grace: Duration::from_secs(cfg.inventory.inventory.orphan_grace_secs)
                + Duration::from_millis(cfg.inventory.inventory.reconcile_interval_ms),
        })
    }

    pub async fn close(self) {
        for p in [self.orders, self.inventory, self.payment, self.reservation] {
            p.close().await;
        }
    }

    /// Runs every check.
    pub async fn audit(&self) -> anyhow::Result<Report> {
        let mut report = Report::default();
        self.stock(&mut report).await?;
        self.wallets(&mut report).await?;
        self.slots(&mut report).await?;
        self.orders(&mut report).await?;
        for (name, pool) in [
            ("order-svc", &self.orders),
            ("inventory-svc", &self.inventory),
            ("payment-svc", &self.payment),
            ("reservation-svc", &self.reservation),
        ] {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(pool)
                    .await?;
            if n > 0 {
                report.flag(
                    Check::OutboxDrained,
                    format!("{name}: {n} events not published"),
                );
            }
        }
        Ok(report)
    }

    async fn stock(&self, report: &mut Report) -> anyhow::Result<()> {
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
        report.skus = rows.len();
        for r in rows {
            let sku: String = r.get("sku");
            let (on_hand, reserved, sold): (i64, i64, i64) =
                (r.get("on_hand"), r.get("reserved"), r.get("sold"));
            let (held, committed): (i64, i64) = (r.get("held"), r.get("committed"));
            let epoch: i64 = r.get("redis_epoch");
            let mut flag =
                |detail: String| report.flag(Check::StockConservation, format!("{sku}: {detail}"));
            if reserved != held {
                flag(format!("reserved {reserved} but the ledger holds {held}"));
            }
            if sold != committed {
                flag(format!("sold {sold} but the ledger committed {committed}"));
            }
            let available = on_hand - reserved - sold;
            if available < 0 {
                flag(format!(
                    "oversold: on_hand {on_hand} < reserved {reserved} + sold {sold}"
                ));
            }
            let redis = self.stock_cache.read(&sku).await?;
            // A counter never built, or of an older epoch, is rebuilt before
            // its next use: only a current counter must agree.
            if redis.avail.is_none() {
                continue;
            }
            if redis.epoch != Some(epoch) {
                report.stale_counters += 1;
                continue;
            }
            let in_postgres: BTreeSet<String> = sqlx::query_scalar::<_, Uuid>(
                "SELECT order_id FROM holds WHERE sku = $1 AND state = 'RESERVED'",
            )
            .bind(&sku)
            .fetch_all(&self.inventory)
            .await?
            .into_iter()
            .map(|u| u.to_string())
            .collect();
            // Holds Redis granted that Postgres has not recorded (yet): in
            // flight while young, orphans once older than the grace period.
            let now_ms = chrono::Utc::now().timestamp_millis();
            let grace_ms = self.orphan_grace.as_millis() as i64;
            let in_flight: BTreeMap<&String, i64> = redis
                .holds
                .iter()
                .filter(|(order, h)| {
                    !in_postgres.contains(*order) && now_ms - h.granted_ms <= grace_ms
                })
                .map(|(order, h)| (order, h.qty))
                .collect();
            let expected = available - in_flight.values().sum::<i64>();
            if redis.avail != Some(expected) {
                flag(format!(
                    "Redis says {} available, Postgres {available} less {} in flight",
                    redis.avail.unwrap_or_default(),
                    available - expected
                ));
            }
            let in_redis: BTreeSet<String> = redis
                .holds
                .keys()
                .filter(|order| !in_flight.contains_key(order))
                .cloned()
                .collect();
            if in_postgres != in_redis {
                let only_pg: Vec<_> = in_postgres.difference(&in_redis).collect();
                let only_redis: Vec<_> = in_redis.difference(&in_postgres).collect();
                flag(format!(
                    "holds differ: only in Postgres {only_pg:?}, only in Redis {only_redis:?}"
                ));
            }
        }
        Ok(())
    }

    async fn wallets(&self, report: &mut Report) -> anyhow::Result<()> {
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
        report.wallets = rows.len();
        for r in rows {
            let customer: String = r.get("customer_id");
            let balance: i64 = r.get("balance_cents");
            let (t, c, f): (i64, i64, i64) = (r.get("topups"), r.get("charges"), r.get("refunds"));
            if balance != t - c + f {
                report.flag(
                    Check::WalletConservation,
                    format!(
                        "{customer}: balance {balance} != top-ups {t} - charges {c} + refunds {f}"
                    ),
                );
            }
        }
        let doubles: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT order_id, count(*) FROM wallet_ledger WHERE kind = 'CHARGE' \
             GROUP BY order_id HAVING count(*) > 1",
        )
        .fetch_all(&self.payment)
        .await?;
        for (order, n) in doubles {
            report.flag(
                Check::OneCapturePerOrder,
                format!("order {order} charged {n} times"),
            );
        }
        Ok(())
    }

    async fn slots(&self, report: &mut Report) -> anyhow::Result<()> {
        let rows = sqlx::query(
            "SELECT s.id, s.capacity, s.held, s.confirmed, \
                 count(b.*) FILTER (WHERE b.state = 'HELD')::int AS b_held, \
                 count(b.*) FILTER (WHERE b.state = 'CONFIRMED')::int AS b_confirmed \
             FROM slots s LEFT JOIN bookings b ON b.slot_id = s.id \
             GROUP BY s.id, s.capacity, s.held, s.confirmed",
        )
        .fetch_all(&self.reservation)
        .await?;
        report.slots = rows.len();
        for r in rows {
            let id: Uuid = r.get("id");
            let (cap, held, confirmed): (i32, i32, i32) =
                (r.get("capacity"), r.get("held"), r.get("confirmed"));
            let (bh, bc): (i32, i32) = (r.get("b_held"), r.get("b_confirmed"));
            if held + confirmed > cap {
                report.flag(
                    Check::SlotCapacity,
                    format!("slot {id}: {held} held + {confirmed} confirmed > capacity {cap}"),
                );
            }
            if held != bh || confirmed != bc {
                report.flag(
                    Check::SlotCapacity,
                    format!("slot {id}: counts {held}/{confirmed} but bookings {bh}/{bc}"),
                );
            }
        }
        Ok(())
    }

    async fn orders(&self, report: &mut Report) -> anyhow::Result<()> {
        let slack = self.deadline_slack.as_secs_f64();
        let mut after = Uuid::nil();
        loop {
            let page = sqlx::query(
                "SELECT id, state, slot_id, total_cents, \
                     (deadline_at < now() - make_interval(secs => $3)) AS overdue \
                 FROM orders WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(PAGE)
            .bind(slack)
            .fetch_all(&self.orders)
            .await?;
            let Some(last) = page.last() else { break };
            after = last.get("id");
            report.orders += page.len();
            let ids: Vec<Uuid> = page.iter().map(|r| r.get("id")).collect();
            let stock: HashMap<Uuid, String> =
                sqlx::query_as("SELECT order_id, state FROM order_holds WHERE order_id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&self.inventory)
                    .await?
                    .into_iter()
                    .collect();
            let bookings: HashMap<Uuid, String> =
                sqlx::query_as("SELECT order_id, state FROM bookings WHERE order_id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&self.reservation)
                    .await?
                    .into_iter()
                    .collect();
            let payments: HashMap<Uuid, (String, i64)> = sqlx::query_as::<_, (Uuid, String, i64)>(
                "SELECT order_id, state, amount_cents FROM payments WHERE order_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&self.payment)
            .await?
            .into_iter()
            .map(|(o, s, a)| (o, (s, a)))
            .collect();
            let net: HashMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(
                "SELECT order_id, sum(CASE kind WHEN 'CHARGE' THEN amount_cents \
                     WHEN 'REFUND' THEN -amount_cents ELSE 0 END)::bigint \
                 FROM wallet_ledger WHERE order_id = ANY($1) GROUP BY order_id",
            )
            .bind(&ids)
            .fetch_all(&self.payment)
            .await?
            .into_iter()
            .collect();

            for r in &page {
                let id: Uuid = r.get("id");
                let state: String = r.get("state");
                let slot: Option<Uuid> = r.get("slot_id");
                let total: Option<i64> = r.get("total_cents");
                let overdue: bool = r.get("overdue");
                let stock = stock.get(&id).map(String::as_str);
                let booking = bookings.get(&id).map(String::as_str);
                let payment = payments.get(&id);
                let net = net.get(&id).copied().unwrap_or(0);
                match state.as_str() {
                    "CONFIRMED" => {
                        let mut missing = Vec::new();
                        if stock != Some("COMMITTED") {
                            missing.push(format!("stock is {stock:?}"));
                        }
                        if slot.is_some() && booking != Some("CONFIRMED") {
                            missing.push(format!("slot booking is {booking:?}"));
                        }
                        match payment {
                            Some((s, amount)) if s == "CAPTURED" && Some(*amount) == total => {}
                            other => {
                                missing.push(format!("payment is {other:?} for total {total:?}"));
                            }
                        }
                        if net != total.unwrap_or(0) {
                            missing.push(format!("net charge {net} for total {total:?}"));
                        }
                        if !missing.is_empty() {
                            report.flag(
                                Check::ConfirmedComplete,
                                format!("order {id}: {}", missing.join(", ")),
                            );
                        }
                    }
                    "CANCELLED" => {
                        let mut left = Vec::new();
                        if matches!(stock, Some("RESERVED" | "COMMITTED")) {
                            left.push(format!("stock is {stock:?}"));
                        }
                        if matches!(booking, Some("HELD" | "CONFIRMED")) {
                            left.push(format!("slot booking is {booking:?}"));
                        }
                        if net != 0 {
                            left.push(format!("net charge {net}"));
                        }
                        if matches!(payment, Some((s, _)) if s == "CAPTURED") {
                            left.push("payment still captured".to_owned());
                        }
                        if !left.is_empty() {
                            report.flag(
                                Check::CancelledCompensated,
                                format!("order {id}: {}", left.join(", ")),
                            );
                        }
                    }
                    open if overdue => report.flag(
                        Check::NoOrderStuck,
                        format!("order {id} still {open} past its deadline"),
                    ),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}
