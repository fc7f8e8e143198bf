//! The auditor: checks the invariants of the whole system (DESIGN.md section
//! 7) across the four services' databases, Redis and the DLQ, and lists
//! every violation. Run it once the system is quiet (`sagactl audit`); tests
//! call it too.
//!
//! Reading and checking are apart:
//! - `read`: the `read_*` methods gather the facts (each service's tables
//!   through a pool pinned to that service's schema, so the audit works
//!   whether the services share a database or not; orders a page at a time);
//! - [`facts`]: the facts, plain data;
//! - [`checks`]: the `check_*` functions are pure: facts in, violations out,
//!   each with unit tests;
//! - here: what is checked, the report, and [`Auditor::audit`], which reads
//!   and checks everything.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream;
use fred::clients::Pool as RedisPool;
use inventory_svc::config::ReservePath;
use inventory_svc::store::cache::StockCache;
use saga_shared::bus::Namespace;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::system::SystemConfig;

pub mod checks;
pub mod facts;
mod read;

pub use checks::{
    check_charges, check_dead_letters, check_holds, check_order, check_outbox, check_outcome,
    check_redis, check_slot, check_stock, check_total, check_unknown_orders, check_wallet,
};
pub use facts::{LineFacts, Movement, OrderFacts, PaymentFacts, SkuFacts, SlotFacts, WalletFacts};

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
    /// lines record, each in its order's decision's state.
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

impl Auditor {
    /// Connects as the services do (their database, Redis and NATS settings).
    pub async fn connect(cfg: &SystemConfig) -> anyhow::Result<Self> {
        let redis = saga_shared::redis::connect(&cfg.inventory.redis).await?;
        Self::with_redis(cfg, redis).await
    }

    /// Like [`Auditor::connect`], reusing a Redis pool.
    pub async fn with_redis(cfg: &SystemConfig, redis: RedisPool) -> anyhow::Result<Self> {
        let nats = saga_shared::nats::connect(&cfg.order.nats, "sagactl audit").await?;
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

    /// Each service's name and database.
    fn service_pools(&self) -> [(&'static str, &PgPool); 4] {
        [
            ("order-svc", &self.orders),
            ("inventory-svc", &self.inventory),
            ("payment-svc", &self.payment),
            ("reservation-svc", &self.reservation),
        ]
    }

    pub fn js(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn ns(&self) -> &Namespace {
        &self.ns
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
        let wallets = self.read_wallets().await?;
        report.wallets = wallets.len();
        for w in &wallets {
            report.violations.extend(check_wallet(w));
        }
        let slots = self.read_slots().await?;
        report.slots = slots.len();
        for s in &slots {
            report.violations.extend(check_slot(s));
        }
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
        let unknown = self.read_unknown_orders().await?;
        report.violations.extend(check_unknown_orders(&unknown));
        for (service, unpublished) in self.read_outboxes().await? {
            report.violations.extend(check_outbox(service, unpublished));
        }
        let letters = self.read_dead_letters().await?;
        report
            .violations
            .extend(check_dead_letters(letters, &self.ns.dlq_stream()));
        Ok(report)
    }
}
