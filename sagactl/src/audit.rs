//! The auditor: checks the invariants of the whole system (DESIGN.md section
//! 7) across the four services' databases, Redis and the DLQ, and lists
//! every violation. Run it once the system is quiet (`sagactl audit`); tests
//! call it too.
//!
//! Reading and checking are apart: the `read_*` methods gather the facts
//! (each service's tables through a pool pinned to that service's schema,
//! so the audit works whether the services share a database or not; orders a
//! page at a time), and the `check_*` functions are pure: facts in,
//! violations out, each with unit tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use async_nats::jetstream;
use fred::clients::Pool as RedisPool;
use inventory_svc::cache::{CounterView, StockCache};
use inventory_svc::config::ReservePath;
use saga_shared::bus::Namespace;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::system::SystemConfig;

/// What is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// on_hand = available + reserved + sold, available >= 0, and the
    /// ledger of holds agrees with the counts.
    StockConservation,
    /// While reservations go through Redis: every counter exists, is of
    /// Postgres's epoch, holds exactly what Postgres holds (quantities
    /// too) plus holds in flight, and counts on_hand - sold - holds.
    RedisMatchesPostgres,
    /// balance = top-ups - charges + refunds, by the ledger.
    WalletConservation,
    /// Every charge and refund in the ledger matches its order's payment
    /// (state, amount, customer) and the order's total; no payment for an
    /// order nobody placed.
    ChargesMatchPayments,
    /// An order's holds are its lines (SKU and quantity), at the prices its
    /// lines record.
    HoldsMatchOrders,
    /// An order's total is the sum of price x quantity over its lines.
    TotalsMatchPrices,
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
    /// Nothing waits in the DLQ for an operator.
    DeadLettersHandled,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::StockConservation => "stock conservation",
            Check::RedisMatchesPostgres => "redis matches postgres",
            Check::WalletConservation => "wallet conservation",
            Check::ChargesMatchPayments => "charges match payments",
            Check::HoldsMatchOrders => "holds match orders",
            Check::TotalsMatchPrices => "totals match prices",
            Check::ConfirmedComplete => "confirmed orders complete",
            Check::CancelledCompensated => "cancelled orders compensated",
            Check::SlotCapacity => "slot capacity",
            Check::NoOrderStuck => "no order stuck",
            Check::OutboxDrained => "outbox drained",
            Check::DeadLettersHandled => "dead letters",
        }
    }

    pub const ALL: [Check; 12] = [
        Check::StockConservation,
        Check::RedisMatchesPostgres,
        Check::WalletConservation,
        Check::ChargesMatchPayments,
        Check::HoldsMatchOrders,
        Check::TotalsMatchPrices,
        Check::ConfirmedComplete,
        Check::CancelledCompensated,
        Check::SlotCapacity,
        Check::NoOrderStuck,
        Check::OutboxDrained,
        Check::DeadLettersHandled,
    ];
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub check: Check,
    pub detail: String,
}

impl Violation {
    fn new(check: Check, detail: impl Into<String>) -> Self {
        Self {
            check,
            detail: detail.into(),
        }
    }
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
    /// Whether the Redis counters were checked (not when reservations are
    /// pinned to Postgres by configuration).
    pub redis_checked: bool,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// One line per check (with its count of violations), then the violations.
    pub fn render(&self) -> String {
        let mut out = format!(
            "audited {} SKUs, {} wallets, {} slots, {} orders\n",
            self.skus, self.wallets, self.slots, self.orders
        );
        if !self.redis_checked {
            out.push_str("  note  reservations are pinned to Postgres: Redis not checked\n");
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

// ----- the facts -----

/// A SKU as Postgres and Redis have it.
#[derive(Clone, Debug, Default)]
pub struct SkuFacts {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub sold: i64,
    pub epoch: i64,
    /// Sums over the ledger of holds.
    pub ledger_held: i64,
    pub ledger_committed: i64,
    /// Holds Postgres has RESERVED: ledger id -> quantity.
    pub pg_holds: BTreeMap<String, i64>,
    /// The Redis counter (None: not checked).
    pub redis: Option<CounterView>,
    /// For holds Redis has and Postgres does not hold: the decision
    /// Postgres has for their ledger id, if any.
    pub decided: HashMap<String, String>,
}

/// A payment row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentFacts {
    pub state: String,
    pub amount: i64,
    pub customer: String,
}

/// One ledger movement of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movement {
    /// CHARGE or REFUND.
    pub kind: String,
    pub amount: i64,
    pub customer: String,
}

/// An order line: SKU, quantity, unit price if priced.
pub type LineFacts = (String, i64, Option<i64>);

/// An order and what each participant has of it.
#[derive(Clone, Debug, Default)]
pub struct OrderFacts {
    pub id: Uuid,
    pub state: String,
    pub customer: String,
    pub slot: Option<Uuid>,
    pub total: Option<i64>,
    pub overdue: bool,
    pub lines: Vec<LineFacts>,
    /// Inventory's decision.
    pub stock: Option<String>,
    /// Inventory's holds: SKU, quantity, unit price.
    pub holds: Vec<(String, i64, i64)>,
    pub booking: Option<String>,
    pub payment: Option<PaymentFacts>,
    pub ledger: Vec<Movement>,
}

impl OrderFacts {
    fn net_charge(&self) -> i64 {
        self.ledger
            .iter()
            .map(|m| {
                if m.kind == "CHARGE" {
                    m.amount
                } else {
                    -m.amount
                }
            })
            .sum()
    }
}

// ----- the checks -----

/// Postgres's own stock arithmetic.
pub fn check_stock(s: &SkuFacts) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut flag = |d: String| {
        out.push(Violation::new(
            Check::StockConservation,
            format!("{}: {d}", s.sku),
        ));
    };
    if s.reserved != s.ledger_held {
        flag(format!(
            "reserved {} but the ledger holds {}",
            s.reserved, s.ledger_held
        ));
    }
    if s.sold != s.ledger_committed {
        flag(format!(
            "sold {} but the ledger committed {}",
            s.sold, s.ledger_committed
        ));
    }
    if s.on_hand - s.reserved - s.sold < 0 {
        flag(format!(
            "oversold: on_hand {} < reserved {} + sold {}",
            s.on_hand, s.reserved, s.sold
        ));
    }
    out
}

/// Redis against Postgres, for a SKU whose counter was read. A hold only
/// Redis has is in flight (a reservation between its Redis grant and its
/// Postgres record) while Postgres has no decision for it and it is younger
/// than `grace`; otherwise Redis keeps a hold nobody will record or close.
pub fn check_redis(s: &SkuFacts, now_ms: i64, grace: Duration) -> Vec<Violation> {
    let Some(redis) = &s.redis else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut flag = |d: String| {
        out.push(Violation::new(
            Check::RedisMatchesPostgres,
            format!("{}: {d}", s.sku),
        ));
    };
    let Some(avail) = redis.avail else {
        flag("no counter in Redis (flushed, or never built)".into());
        return out;
    };
    if redis.epoch != Some(s.epoch) {
        flag(format!(
            "the counter is of epoch {:?}, Postgres's is {}: stale, not rebuilt",
            redis.epoch, s.epoch
        ));
        return out;
    }
    let grace_ms = grace.as_millis() as i64;
    let mut in_flight = 0;
    for (order, hold) in &redis.holds {
        match s.pg_holds.get(order) {
            Some(qty) if *qty != hold.qty => flag(format!(
                "Redis holds {} for {order}, Postgres {qty}",
                hold.qty
            )),
            Some(_) => {}
            None => match s.decided.get(order) {
                Some(state) => flag(format!(
                    "Redis still holds {} for {order}, which Postgres has {state}",
                    hold.qty
                )),
                None if now_ms - hold.granted_ms > grace_ms => flag(format!(
                    "Redis holds {} for {order}, unknown to Postgres for over {:?}",
                    hold.qty, grace
                )),
                None => in_flight += hold.qty,
            },
        }
    }
    for (order, qty) in &s.pg_holds {
        if !redis.holds.contains_key(order) {
            flag(format!("Postgres holds {qty} for {order}, Redis nothing"));
        }
    }
    let held: i64 = s.pg_holds.values().sum();
    let expected = s.on_hand - s.sold - held - in_flight;
    if avail != expected {
        flag(format!(
            "Redis says {avail} available, Postgres {} less {in_flight} in flight",
            s.on_hand - s.sold - held
        ));
    }
    out
}

/// Each ledger movement of an order against its payment and the order.
pub fn check_charges(o: &OrderFacts) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut flag = |d: String| {
        out.push(Violation::new(
            Check::ChargesMatchPayments,
            format!("order {}: {d}", o.id),
        ));
    };
    let charges: Vec<&Movement> = o.ledger.iter().filter(|m| m.kind == "CHARGE").collect();
    let refunds: Vec<&Movement> = o.ledger.iter().filter(|m| m.kind == "REFUND").collect();
    let Some(p) = &o.payment else {
        if !o.ledger.is_empty() {
            flag(format!(
                "{} ledger movements and no payment",
                o.ledger.len()
            ));
        }
        return out;
    };
    let (want_charges, want_refunds) = match p.state.as_str() {
        "CAPTURED" => (1, 0),
        "REFUNDED" => (1, 1),
        _ => (0, 0),
    };
    if charges.len() != want_charges || refunds.len() != want_refunds {
        flag(format!(
            "payment {} with {} charges and {} refunds in the ledger",
            p.state,
            charges.len(),
            refunds.len()
        ));
    }
    for m in &o.ledger {
        if m.amount != p.amount {
            flag(format!(
                "{} of {} for a payment of {}",
                m.kind, m.amount, p.amount
            ));
        }
        if m.customer != p.customer {
            flag(format!(
                "{} to {:?}, the payment is {:?}'s",
                m.kind, m.customer, p.customer
            ));
        }
    }
    if matches!(p.state.as_str(), "CAPTURED" | "REFUNDED") {
        if p.customer != o.customer {
            flag(format!(
                "paid by {:?}, placed by {:?}",
                p.customer, o.customer
            ));
        }
        if Some(p.amount) != o.total {
            flag(format!("paid {} for a total of {:?}", p.amount, o.total));
        }
    }
    out
}

/// An order's holds against its lines.
pub fn check_holds(o: &OrderFacts) -> Vec<Violation> {
    let mut out = Vec::new();
    if o.holds.is_empty() {
        return out;
    }
    let lines: BTreeMap<&str, i64> = o.lines.iter().map(|(s, q, _)| (s.as_str(), *q)).collect();
    let holds: BTreeMap<&str, i64> = o.holds.iter().map(|(s, q, _)| (s.as_str(), *q)).collect();
    if lines != holds {
        out.push(Violation::new(
            Check::HoldsMatchOrders,
            format!("order {}: holds {holds:?}, lines {lines:?}", o.id),
        ));
    }
    for (sku, _, price) in &o.lines {
        let held_at = o.holds.iter().find(|(s, _, _)| s == sku).map(|h| h.2);
        if let (Some(price), Some(held_at)) = (price, held_at)
            && *price != held_at
        {
            out.push(Violation::new(
                Check::HoldsMatchOrders,
                format!("order {}: {sku} priced {price}, held at {held_at}", o.id),
            ));
        }
    }
    out
}

/// An order's total against its priced lines.
pub fn check_total(o: &OrderFacts) -> Vec<Violation> {
    let Some(total) = o.total else {
        return Vec::new();
    };
    let sum: Option<i64> = o
        .lines
        .iter()
        .map(|(_, q, p)| p.and_then(|p| p.checked_mul(*q)))
        .sum();
    if sum == Some(total) {
        Vec::new()
    } else {
        vec![Violation::new(
            Check::TotalsMatchPrices,
            format!("order {}: total {total}, lines sum to {sum:?}", o.id),
        )]
    }
}

/// What a terminal (or overdue) order requires of its participants.
pub fn check_outcome(o: &OrderFacts) -> Vec<Violation> {
    let stock = o.stock.as_deref();
    let booking = o.booking.as_deref();
    let net = o.net_charge();
    match o.state.as_str() {
        "CONFIRMED" => {
            let mut missing = Vec::new();
            if stock != Some("COMMITTED") {
                missing.push(format!("stock is {stock:?}"));
            }
            if o.slot.is_some() && booking != Some("CONFIRMED") {
                missing.push(format!("slot booking is {booking:?}"));
            }
            match &o.payment {
                Some(p) if p.state == "CAPTURED" && Some(p.amount) == o.total => {}
                other => missing.push(format!("payment is {other:?} for total {:?}", o.total)),
            }
            if net != o.total.unwrap_or(0) {
                missing.push(format!("net charge {net} for total {:?}", o.total));
            }
            if missing.is_empty() {
                Vec::new()
            } else {
                vec![Violation::new(
                    Check::ConfirmedComplete,
                    format!("order {}: {}", o.id, missing.join(", ")),
                )]
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
            if matches!(&o.payment, Some(p) if p.state == "CAPTURED") {
                left.push("payment still captured".to_owned());
            }
            if left.is_empty() {
                Vec::new()
            } else {
                vec![Violation::new(
                    Check::CancelledCompensated,
                    format!("order {}: {}", o.id, left.join(", ")),
                )]
            }
        }
        open if o.overdue => vec![Violation::new(
            Check::NoOrderStuck,
            format!("order {} still {open} past its deadline", o.id),
        )],
        _ => Vec::new(),
    }
}

/// Every check of one order.
pub fn check_order(o: &OrderFacts) -> Vec<Violation> {
    let mut out = check_charges(o);
    out.extend(check_holds(o));
    out.extend(check_total(o));
    out.extend(check_outcome(o));
    out
}

// ----- reading -----

/// Read access to every service's state.
pub struct Auditor {
    orders: PgPool,
    inventory: PgPool,
    payment: PgPool,
    reservation: PgPool,
    stock_cache: StockCache,
    js: jetstream::Context,
    ns: Namespace,
    /// Whether reservations may go through Redis (its counters are checked).
    pub fast_path: bool,
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
    /// Connects as the services do (their database, Redis and NATS settings).
    pub async fn connect(cfg: &SystemConfig) -> anyhow::Result<Self> {
        let redis = saga_shared::redis::connect(&cfg.inventory.redis).await?;
        Self::with_redis(cfg, redis).await
    }

    /// Like [`Auditor::connect`], reusing a Redis pool.
    pub async fn with_redis(cfg: &SystemConfig, redis: RedisPool) -> anyhow::Result<Self> {
        let nats = async_nats::connect(cfg.order.nats.server_addrs()?).await?;
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
            js: jetstream::new(nats),
            ns: Namespace::new(&cfg.order.namespace)?,
            fast_path: cfg.inventory.inventory.reserve_path != ReservePath::Postgres,
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
        let mut report = Report {
            redis_checked: self.fast_path,
            ..Report::default()
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let skus = self.read_skus().await?;
        report.skus = skus.len();
        for s in &skus {
            report.violations.extend(check_stock(s));
            report
                .violations
                .extend(check_redis(s, now_ms, self.orphan_grace));
        }
        self.wallets(&mut report).await?;
        self.slots(&mut report).await?;
        self.orders(&mut report).await?;
        self.unknown_orders(&mut report).await?;
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
                report.violations.push(Violation::new(
                    Check::OutboxDrained,
                    format!("{name}: {n} events not published"),
                ));
            }
        }
        let letters = self.dead_letters().await?;
        if letters > 0 {
            report.violations.push(Violation::new(
                Check::DeadLettersHandled,
                format!(
                    "{letters} wait in {} for an operator (sagactl dlq list)",
                    self.ns.dlq_stream()
                ),
            ));
        }
        Ok(report)
    }

    /// Messages in the DLQ (0 if it does not exist).
    async fn dead_letters(&self) -> anyhow::Result<u64> {
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

    async fn read_skus(&self) -> anyhow::Result<Vec<SkuFacts>> {
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
                report.violations.push(Violation::new(
                    Check::WalletConservation,
                    format!(
                        "{customer}: balance {balance} != top-ups {t} - charges {c} + refunds {f}"
                    ),
                ));
            }
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
                report.violations.push(Violation::new(
                    Check::SlotCapacity,
                    format!("slot {id}: {held} held + {confirmed} confirmed > capacity {cap}"),
                ));
            }
            if held != bh || confirmed != bc {
                report.violations.push(Violation::new(
                    Check::SlotCapacity,
                    format!("slot {id}: counts {held}/{confirmed} but bookings {bh}/{bc}"),
                ));
            }
        }
        Ok(())
    }

    async fn orders(&self, report: &mut Report) -> anyhow::Result<()> {
        let mut after = Uuid::nil();
        loop {
            let page = self.read_orders(after).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            report.orders += page.len();
            for o in &page {
                report.violations.extend(check_order(o));
            }
        }
        Ok(())
    }

    /// A page of orders after `after`, with what each participant has.
    pub async fn read_orders(&self, after: Uuid) -> anyhow::Result<Vec<OrderFacts>> {
        let slack = self.deadline_slack.as_secs_f64();
        let rows = sqlx::query(
            "SELECT id, state, customer_id, slot_id, total_cents, \
                 (deadline_at < now() - make_interval(secs => $3)) AS overdue \
             FROM orders WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(PAGE)
        .bind(slack)
        .fetch_all(&self.orders)
        .await?;
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
        let holds: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
            "SELECT order_id, sku, quantity, unit_price_cents FROM holds WHERE order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.inventory)
        .await?;
        for (id, sku, qty, price) in holds {
            if let Some(i) = at(&id) {
                orders[i].holds.push((sku, qty, price));
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

    /// Money moved for orders that order-svc does not know.
    async fn unknown_orders(&self, report: &mut Report) -> anyhow::Result<()> {
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
            for order in paid.iter().filter(|o| !known.contains(*o)) {
                report.violations.push(Violation::new(
                    Check::ChargesMatchPayments,
                    format!("order {order}: money moved for an order nobody placed"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use inventory_svc::cache::HoldView;

    use super::*;

    fn sku() -> SkuFacts {
        SkuFacts {
            sku: "A".into(),
            on_hand: 10,
            reserved: 2,
            sold: 3,
            epoch: 7,
            ledger_held: 2,
            ledger_committed: 3,
            pg_holds: [("o1".to_owned(), 2)].into(),
            redis: Some(CounterView {
                avail: Some(5),
                epoch: Some(7),
                holds: [(
                    "o1".to_owned(),
                    HoldView {
                        qty: 2,
                        granted_ms: 0,
                    },
                )]
                .into(),
            }),
            decided: HashMap::new(),
        }
    }

    fn checks(v: &[Violation]) -> Vec<Check> {
        v.iter().map(|v| v.check).collect()
    }

    #[test]
    fn a_consistent_sku_passes_and_each_kind_of_drift_is_named() {
        let now = 1_000_000;
        let grace = Duration::from_secs(10);
        assert!(check_stock(&sku()).is_empty());
        assert!(check_redis(&sku(), now, grace).is_empty());

        let mut s = sku();
        s.reserved = 3;
        assert_eq!(checks(&check_stock(&s)), [Check::StockConservation]);
        s.sold = 8;
        assert!(
            check_stock(&s)
                .iter()
                .any(|v| v.detail.contains("oversold"))
        );

        let mut flushed = sku();
        flushed.redis = Some(CounterView::default());
        assert!(
            check_redis(&flushed, now, grace)[0]
                .detail
                .contains("no counter")
        );
        let mut stale = sku();
        stale.redis.as_mut().unwrap().epoch = Some(6);
        assert!(check_redis(&stale, now, grace)[0].detail.contains("stale"));

        let mut resized = sku();
        resized
            .redis
            .as_mut()
            .unwrap()
            .holds
            .get_mut("o1")
            .unwrap()
            .qty = 3;
        assert!(!check_redis(&resized, now, grace).is_empty());

        // A hold only Redis has: in flight while young and undecided...
        let mut young = sku();
        let view = young.redis.as_mut().unwrap();
        view.holds.insert(
            "o2".into(),
            HoldView {
                qty: 1,
                granted_ms: now - 1_000,
            },
        );
        view.avail = Some(4);
        assert!(check_redis(&young, now, grace).is_empty());
        // ...never once Postgres has decided its order...
        let mut closed = young.clone();
        closed.decided.insert("o2".into(), "COMMITTED".into());
        assert!(
            check_redis(&closed, now, grace)[0]
                .detail
                .contains("COMMITTED")
        );
        // ...nor once older than the grace period.
        assert!(!check_redis(&young, now + 20_000, grace).is_empty());

        let mut pinned = sku();
        pinned.redis = None;
        assert!(check_redis(&pinned, now, grace).is_empty(), "not checked");
    }

    fn order() -> OrderFacts {
        OrderFacts {
            id: Uuid::nil(),
            state: "CONFIRMED".into(),
            customer: "c".into(),
            slot: None,
            total: Some(500),
            overdue: false,
            lines: vec![("A".into(), 2, Some(250))],
            stock: Some("COMMITTED".into()),
            holds: vec![("A".into(), 2, 250)],
            booking: None,
            payment: Some(PaymentFacts {
                state: "CAPTURED".into(),
                amount: 500,
                customer: "c".into(),
            }),
            ledger: vec![Movement {
                kind: "CHARGE".into(),
                amount: 500,
                customer: "c".into(),
            }],
        }
    }

    #[test]
    fn a_complete_order_passes_and_each_inconsistency_is_named() {
        assert_eq!(check_order(&order()), Vec::new());

        let mut twice = order();
        twice.ledger.push(twice.ledger[0].clone());
        assert!(checks(&check_order(&twice)).contains(&Check::ChargesMatchPayments));

        let mut stranger = order();
        stranger.ledger[0].customer = "d".into();
        assert_eq!(
            checks(&check_charges(&stranger)),
            [Check::ChargesMatchPayments]
        );

        let mut failed = order();
        failed.state = "CANCELLED".into();
        failed.payment.as_mut().unwrap().state = "FAILED".into();
        failed.stock = Some("RELEASED".into());
        assert!(checks(&check_order(&failed)).contains(&Check::ChargesMatchPayments));
        assert!(checks(&check_order(&failed)).contains(&Check::CancelledCompensated));

        let mut more = order();
        more.holds[0].1 = 3;
        assert_eq!(checks(&check_holds(&more)), [Check::HoldsMatchOrders]);
        let mut repriced = order();
        repriced.holds[0].2 = 200;
        assert_eq!(checks(&check_holds(&repriced)), [Check::HoldsMatchOrders]);

        let mut total = order();
        total.total = Some(499);
        assert!(checks(&check_total(&total)) == [Check::TotalsMatchPrices]);

        let mut stuck = order();
        stuck.state = "PENDING".into();
        stuck.overdue = true;
        assert_eq!(checks(&check_outcome(&stuck)), [Check::NoOrderStuck]);
    }
}
