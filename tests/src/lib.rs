//! The integration-test harness.
//!
//! [`TestSystem::start`] gives each test its own world on the real servers: a
//! fresh Postgres database (one schema per service, as in production), a
//! unique namespace for JetStream streams, subjects and Redis keys, and the
//! four services running in this process on free ports, exactly as
//! `sagactl up` runs them. It offers one typed helper per call the tests
//! need, waits on conditions with deadlines, and checks the system's
//! invariants straight from the services' databases and Redis. Everything
//! it created is removed when it stops (or is dropped).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use fred::prelude::*;
use saga_shared::bus::{Namespace, StreamKind};
use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::order::v1 as ord;
use saga_shared::proto::payment::v1 as pay;
use saga_shared::proto::reservation::v1 as rsv;
use sagactl::client::{Clients, Urls};
use sagactl::system::{Endpoints, System, SystemConfig};
use sqlx::PgPool;
use tonic::Status;
use uuid::Uuid;

pub use saga_shared;
pub use sagactl;

pub mod ports;
pub mod processes;
pub mod servers;

/// Where the servers are (overridable for other machines).
fn pg_base() -> String {
    std::env::var("SAGA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}
fn redis_url() -> String {
    std::env::var("SAGA_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}
fn nats_url() -> String {
    std::env::var("SAGA_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The durable consumers of a system: (stream, consumer).
pub const CONSUMERS: [(StreamKind, &str); 6] = [
    (StreamKind::Orders, "inventory-svc"),
    (StreamKind::Orders, "reservation-svc"),
    (StreamKind::Orders, "payment-svc"),
    (StreamKind::Inventory, "order-svc"),
    (StreamKind::Reservations, "order-svc"),
    (StreamKind::Payments, "order-svc"),
];

/// Polls `check` until it says yes, failing after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
    }
}

struct Cleanup {
    db_name: String,
    ns: String,
}

impl Cleanup {
    async fn run(self) {
        if let Ok(client) = async_nats::connect(nats_url()).await {
            let js = jetstream::new(client);
            if let Ok(ns) = Namespace::new(&self.ns) {
                saga_shared::bus::streams::delete_streams(&js, &ns).await;
            }
        }
        if let Ok(pool) = saga_shared::redis::connect(&saga_shared::config::RedisConfig {
            url: redis_url(),
            ..Default::default()
        })
        .await
        {
            for pattern in [
                format!("inv:{{{}:*", self.ns),
                format!("rsv:{{{}:*", self.ns),
            ] {
                delete_keys(&pool, &pattern).await;
            }
        }
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", pg_base())).await {
            let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db_name);
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
            admin.close().await;
        }
    }
}

async fn delete_keys(pool: &Pool, pattern: &str) {
    use futures::TryStreamExt;
    let client = pool.next().clone();
    let mut scan = client.scan_buffered(pattern, Some(500), None);
    let mut keys: Vec<fred::types::Key> = Vec::new();
    while let Ok(Some(key)) = scan.try_next().await {
        keys.push(key);
    }
    for chunk in keys.chunks(200) {
        let _: Result<i64, _> = client.del(chunk.to_vec()).await;
    }
}

/// The four services, their clients, and direct access to their stores.
pub struct TestSystem {
    pub ns: String,
    /// The test database (schema-qualified queries: `inventory.products`).
    pub db: PgPool,
    pub redis: Pool,
    pub js: jetstream::Context,
    pub nats: async_nats::Client,
    pub clients: Clients,
    pub order: Endpoints,
    pub inventory: Endpoints,
    pub payment: Endpoints,
    pub reservation: Endpoints,
    /// The settings the services run with.
    pub config: SystemConfig,
    /// Each service's own database (wherever its settings point), with its
    /// schema on the search path.
    service_dbs: Vec<PgPool>,
    system: Option<System>,
    processes: Option<processes::Processes>,
    cleanup: Option<Cleanup>,
}

impl TestSystem {
    /// A system with default settings.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// A system whose settings `tweak` may change (decline rate, batch size...).
    pub async fn start_with(tweak: impl FnOnce(&mut SystemConfig)) -> anyhow::Result<Self> {
        Self::launch(tweak, false).await
    }

    /// The four services as separate processes (their real binaries), which
    /// the test may kill and restart: see [`TestSystem::processes`].
    pub async fn start_processes(tweak: impl FnOnce(&mut SystemConfig)) -> anyhow::Result<Self> {
        Self::launch(tweak, true).await
    }

    /// The service processes (for a system started with
    /// [`TestSystem::start_processes`]).
    pub fn processes(&mut self) -> &mut processes::Processes {
        self.processes
            .as_mut()
            .expect("the system was started with start_processes")
    }

    async fn launch(
        tweak: impl FnOnce(&mut SystemConfig),
        as_processes: bool,
    ) -> anyhow::Result<Self> {
        std::mem::forget(saga_shared::telemetry::init_for_tests());
        let ns = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
        let db_name = format!("saga_test_{ns}");
        let db_url = format!("{}/{db_name}", pg_base());
        let mut cfg = SystemConfig::default()
            .with_namespace(&ns)
            .with_database_url(&db_url)
            .with_free_ports();
        for db in cfg.databases_mut() {
            db.max_connections = 5;
        }
        for nats in cfg.nats_mut() {
            nats.url = nats_url();
        }
        cfg.inventory.redis.url = redis_url();
        cfg.reservation.redis.url = redis_url();
        tweak(&mut cfg);
        let inventory_redis = cfg.inventory.redis.url.clone();
        let system_nats = cfg.order.nats.url.clone();

        let cleanup = Cleanup {
            db_name: db_name.clone(),
            ns: ns.clone(),
        };
        let started = if as_processes {
            Self::start_process_set(&mut cfg, &ns)
                .await
                .map(|p| (None, Some(p)))
        } else {
            System::start(cfg.clone()).await.map(|s| (Some(s), None))
        };
        let (system, processes) = match started {
            Ok(started) => started,
            Err(e) => {
                cleanup.run().await;
                return Err(e);
            }
        };
        let config = cfg;
        let endpoint = |s: processes::Service| match (&system, &processes) {
            (Some(sys), _) => match s {
                processes::Service::Order => sys.order,
                processes::Service::Inventory => sys.inventory,
                processes::Service::Payment => sys.payment,
                processes::Service::Reservation => sys.reservation,
            },
            (None, Some(p)) => p.endpoints[&s],
            (None, None) => unreachable!("one runner started"),
        };
        let (order, inventory, payment, reservation) = (
            endpoint(processes::Service::Order),
            endpoint(processes::Service::Inventory),
            endpoint(processes::Service::Payment),
            endpoint(processes::Service::Reservation),
        );
        let urls = Urls {
            order: order.grpc_url(),
            inventory: inventory.grpc_url(),
            payment: payment.grpc_url(),
            reservation: reservation.grpc_url(),
        };
        let nats = async_nats::connect(system_nats).await?;
        let mut service_dbs = Vec::new();
        for db in [
            &config.order.database,
            &config.inventory.database,
            &config.payment.database,
            &config.reservation.database,
        ] {
            let options: sqlx::postgres::PgConnectOptions = db.url.parse()?;
            service_dbs.push(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_lazy_with(options.options([("search_path", db.schema.as_str())])),
            );
        }
        Ok(Self {
            service_dbs,
            // Lazily: a test may put every service on a server of its own.
            db: sqlx::postgres::PgPoolOptions::new()
                .max_connections(3)
                .connect_lazy(&db_url)?,
            redis: saga_shared::redis::connect_or_keep_trying(
                &saga_shared::config::RedisConfig {
                    url: inventory_redis,
                    ..Default::default()
                },
                Duration::from_secs(2),
            )
            .await?
            .0,
            js: jetstream::new(nats.clone()),
            nats,
            clients: Clients::new(&urls)?,
            order,
            inventory,
            payment,
            reservation,
            config,
            ns,
            system,
            processes,
            cleanup: Some(cleanup),
        })
    }

    async fn start_process_set(
        cfg: &mut SystemConfig,
        ns: &str,
    ) -> anyhow::Result<processes::Processes> {
        use processes::Service;
        let mut set = processes::Processes::prepare(cfg, ns)?;
        for s in [
            Service::Inventory,
            Service::Reservation,
            Service::Payment,
            Service::Order,
        ] {
            set.start(s, &[]).await?;
        }
        Ok(set)
    }

    pub fn namespace(&self) -> Namespace {
        Namespace::new(&self.ns).expect("test namespaces are valid")
    }

    /// Stops the services gracefully and removes everything the test made.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let stopped = match self.system.take() {
            Some(system) => system.stop().await,
            None => Ok(()),
        };
        if let Some(mut processes) = self.processes.take() {
            processes.stop().await;
        }
        self.db.close().await;
        for db in &self.service_dbs {
            db.close().await;
        }
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.run().await;
        }
        stopped
    }

    // ----- one helper per call -----

    /// Creates a SKU with `on_hand` units at `price_cents`.
    pub async fn seed_product(
        &self,
        sku: &str,
        price_cents: i64,
        on_hand: i64,
    ) -> anyhow::Result<inv::Stock> {
        let mut c = self.clients.inventory.clone();
        let st = c
            .upsert_product(inv::UpsertProductRequest {
                sku: sku.into(),
                name: format!("product {sku}"),
                unit_price_cents: price_cents,
            })
            .await?
            .into_inner()
            .stock
            .context("no stock in the answer")?;
        if on_hand == 0 {
            return Ok(st);
        }
        c.adjust_stock(inv::AdjustStockRequest {
            sku: sku.into(),
            delta: on_hand,
            expected_version: st.version,
        })
        .await?
        .into_inner()
        .stock
        .context("no stock in the answer")
    }

    pub async fn stock(&self, sku: &str) -> anyhow::Result<inv::Stock> {
        self.clients
            .inventory
            .clone()
            .get_stock(inv::GetStockRequest { sku: sku.into() })
            .await?
            .into_inner()
            .stock
            .context("no stock in the answer")
    }

    pub async fn top_up(&self, customer: &str, amount_cents: i64) -> anyhow::Result<pay::Wallet> {
        self.clients
            .payment
            .clone()
            .top_up(pay::TopUpRequest {
                customer_id: customer.into(),
                amount_cents,
            })
            .await?
            .into_inner()
            .wallet
            .context("no wallet in the answer")
    }

    pub async fn wallet(&self, customer: &str) -> anyhow::Result<pay::Wallet> {
        self.clients
            .payment
            .clone()
            .get_wallet(pay::GetWalletRequest {
                customer_id: customer.into(),
            })
            .await?
            .into_inner()
            .wallet
            .context("no wallet in the answer")
    }

    pub async fn create_slot(&self, name: &str, capacity: i32) -> anyhow::Result<rsv::Slot> {
        self.clients
            .reservation
            .clone()
            .create_slot(rsv::CreateSlotRequest {
                name: name.into(),
                capacity,
            })
            .await?
            .into_inner()
            .slot
            .context("no slot in the answer")
    }

    pub async fn slot(&self, id: &str) -> anyhow::Result<rsv::Slot> {
        self.clients
            .reservation
            .clone()
            .get_slot(rsv::GetSlotRequest { slot_id: id.into() })
            .await?
            .into_inner()
            .slot
            .context("no slot in the answer")
    }

    /// PlaceOrder as a client would send it; the status on refusal.
    pub async fn place(&self, request: ord::PlaceOrderRequest) -> Result<ord::Order, Status> {
        self.place_with_key(request, None).await
    }

    pub async fn place_with_key(
        &self,
        request: ord::PlaceOrderRequest,
        key: Option<&str>,
    ) -> Result<ord::Order, Status> {
        let mut req = tonic::Request::new(request);
        if let Some(key) = key {
            req.metadata_mut().insert(
                saga_shared::idempotency::METADATA_KEY,
                key.parse()
                    .map_err(|_| Status::internal("test key not ASCII"))?,
            );
        }
        self.clients
            .order
            .clone()
            .place_order(req)
            .await
            .map(|r| r.into_inner().order.unwrap_or_default())
    }

    pub async fn get_order(&self, id: &str) -> Result<ord::Order, Status> {
        self.clients
            .order
            .clone()
            .get_order(ord::GetOrderRequest {
                order_id: id.into(),
            })
            .await
            .map(|r| r.into_inner().order.unwrap_or_default())
    }

    /// CancelOrder as a client would send it.
    pub async fn cancel(&self, id: &str) -> Result<ord::Order, Status> {
        self.clients
            .order
            .clone()
            .cancel_order(ord::CancelOrderRequest {
                order_id: id.into(),
            })
            .await
            .map(|r| r.into_inner().order.unwrap_or_default())
    }

    /// Waits until the order is CONFIRMED or CANCELLED.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> anyhow::Result<ord::Order> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let o = self.get_order(id).await?;
            if is_terminal(&o) {
                return Ok(o);
            }
            if started.elapsed() > timeout {
                bail!("order {id} still {:?} after {timeout:?}", state(&o));
            }
        }
    }

    /// Waits until every order ends; returns them in the same order.
    pub async fn wait_all_terminal(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Vec<ord::Order>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let left = deadline.saturating_duration_since(Instant::now());
            out.push(
                self.wait_terminal(id, left.max(Duration::from_millis(1)))
                    .await?,
            );
        }
        Ok(out)
    }

    // ----- quiescence and invariants -----

    /// Unpublished outbox rows across the four services.
    pub async fn outbox_backlog(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        for db in &self.service_dbs {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(db)
                    .await?;
            total += n;
        }
        Ok(total)
    }

    /// Messages not yet delivered or not yet acked, across the consumers;
    /// `None` while a stream or consumer does not exist yet (the services
    /// create them as they start).
    pub async fn consumer_backlog(&self) -> anyhow::Result<Option<u64>> {
        let ns = self.namespace();
        let mut total = 0;
        for (kind, durable) in CONSUMERS {
            let Ok(stream) = self.js.get_stream(ns.stream(kind)).await else {
                return Ok(None);
            };
            let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>(durable)
                .await
            else {
                return Ok(None);
            };
            let info = consumer.info().await?;
            total += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(Some(total))
    }

    /// Waits until nothing is left to publish or to handle, twice in a row.
    pub async fn quiesce(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        // Two calm readings must be apart, not two late ticks back to back.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut calm = 0;
        loop {
            tick.tick().await;
            let (outbox, consumers) =
                (self.outbox_backlog().await?, self.consumer_backlog().await?);
            calm = if outbox == 0 && consumers == Some(0) {
                calm + 1
            } else {
                0
            };
            if calm >= 2 {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "not quiet after {timeout:?}: {outbox} outbox rows, {} messages pending",
                    consumers.map_or("(consumers missing)".to_owned(), |n| n.to_string())
                );
            }
        }
    }

    /// The inventory operations on this system's Postgres and Redis, with
    /// `tweak`ed settings (to run a reconciliation pass by hand, say).
    pub async fn inventory_with(
        &self,
        tweak: impl FnOnce(&mut inventory_svc::config::InventorySettings),
    ) -> anyhow::Result<inventory_svc::service::Inventory> {
        let mut cfg = self.config.inventory.clone();
        cfg.database.max_connections = 2;
        tweak(&mut cfg.inventory);
        let pool = saga_shared::db::connect(&cfg.database, &inventory_svc::MIGRATIONS).await?;
        Ok(inventory_svc::inventory(
            &cfg,
            pool,
            self.redis.clone(),
            true,
        ))
    }

    /// `/readyz` of inventory: (status code, body).
    pub async fn inventory_readiness(&self) -> anyhow::Result<(u16, String)> {
        http_get(self.inventory.admin, "/readyz").await
    }

    /// The Redis counter of a SKU.
    pub async fn redis_counter(
        &self,
        sku: &str,
    ) -> anyhow::Result<inventory_svc::cache::CounterView> {
        let cache = inventory_svc::cache::StockCache::new(
            self.redis.clone(),
            &self.ns,
            Duration::from_secs(2),
            Duration::from_secs(60),
        );
        Ok(cache.read(sku).await?)
    }

    /// Waits until Redis's counter of `sku` shows `avail` and no hold. Redis
    /// follows Postgres right away unless a Redis call failed (a timeout on
    /// a loaded machine); then the next use or reconciliation repairs it.
    pub async fn redis_settles(
        &self,
        sku: &str,
        avail: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("Redis to show {avail} of {sku} and no hold");
        let settled = eventually(&what, timeout, || async {
            let c = self.redis_counter(sku).await?;
            Ok(c.avail == Some(avail) && c.holds.is_empty())
        })
        .await;
        if settled.is_err() {
            bail!(
                "timed out waiting for {what}: {:?}",
                self.redis_counter(sku).await?
            );
        }
        Ok(())
    }

    /// Every invariant of DESIGN.md section 7, checked by the same auditor
    /// as `sagactl audit`, as a list of violations (empty: all hold). Call
    /// after [`Self::quiesce`].
    pub async fn violations(&self) -> anyhow::Result<Vec<String>> {
        let auditor = sagactl::audit::Auditor::with_redis(&self.config, self.redis.clone()).await?;
        let report = auditor.audit().await?;
        auditor.close().await;
        Ok(report.violations.iter().map(ToString::to_string).collect())
    }

    /// A comparable picture of the business state.
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let orders = sqlx::query_as::<_, (Uuid, String, Option<String>, Option<i64>)>(
            "SELECT id, state, cancel_reason, total_cents FROM orders.orders",
        )
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|(id, s, r, t)| (id, (s, r, t)))
        .collect();
        let stock = sqlx::query_as::<_, (String, i64, i64, i64)>(
            "SELECT sku, on_hand, reserved, sold FROM inventory.products",
        )
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|(sku, a, b, c)| (sku, (a, b, c)))
        .collect();
        let wallets = sqlx::query_as::<_, (String, i64, i64, i64)>(
            "SELECT customer_id, balance_cents, charged_cents, refunded_cents FROM payment.wallets",
        )
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|(c, a, b, d)| (c, (a, b, d)))
        .collect();
        let slots = sqlx::query_as::<_, (Uuid, i32, i32)>(
            "SELECT id, held, confirmed FROM reservation.slots",
        )
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|(id, h, c)| (id, (h, c)))
        .collect();
        let ledger_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payment.wallet_ledger")
            .fetch_one(&self.db)
            .await?;
        Ok(Snapshot {
            orders,
            stock,
            wallets,
            slots,
            ledger_rows,
        })
    }

    /// Messages in the namespace's event streams.
    pub async fn stream_messages(&self) -> anyhow::Result<u64> {
        let ns = self.namespace();
        let mut total = 0;
        for kind in StreamKind::ALL {
            let mut stream = self.js.get_stream(ns.stream(kind)).await?;
            total += stream.info().await?.state.messages;
        }
        Ok(total)
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            // A test that failed before `stop`: clean up from a thread of our
            // own (this may run while the test's runtime unwinds).
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(cleanup.run());
                }
            })
            .join();
        }
    }
}

/// The business state of a system, for comparing two runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// id -> (state, cancel reason, total)
    pub orders: BTreeMap<Uuid, (String, Option<String>, Option<i64>)>,
    /// sku -> (on_hand, reserved, sold)
    pub stock: BTreeMap<String, (i64, i64, i64)>,
    /// customer -> (balance, charged, refunded)
    pub wallets: BTreeMap<String, (i64, i64, i64)>,
    /// slot -> (held, confirmed)
    pub slots: BTreeMap<Uuid, (i32, i32)>,
    pub ledger_rows: i64,
}

pub fn is_terminal(o: &ord::Order) -> bool {
    o.state == ord::OrderState::Confirmed as i32 || o.state == ord::OrderState::Cancelled as i32
}

pub fn state(o: &ord::Order) -> ord::OrderState {
    ord::OrderState::try_from(o.state).unwrap_or(ord::OrderState::Unspecified)
}

pub fn reason(o: &ord::Order) -> ord::CancelReason {
    ord::CancelReason::try_from(o.cancel_reason).unwrap_or(ord::CancelReason::Unspecified)
}

/// A PlaceOrder request.
pub fn order_request(
    customer: &str,
    items: &[(&str, i64)],
    slot: Option<&str>,
) -> ord::PlaceOrderRequest {
    ord::PlaceOrderRequest {
        customer_id: customer.into(),
        items: items
            .iter()
            .map(|(sku, quantity)| ord::LineItem {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
        slot_id: slot.map(str::to_owned),
    }
}

/// A minimal HTTP/1.1 GET (admin endpoints): status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
