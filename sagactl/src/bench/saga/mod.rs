//! `sagactl bench saga`: the end-to-end benchmark. It runs the four
//! services in this process (on a runtime of their own, so their CPU is
//! told apart from the load generator's), in a namespace and a database of
//! its own, seeds SKUs, wallets and slots, places orders at a fixed
//! concurrency (closed loop) or a fixed offered rate (open loop) with a
//! chosen mix, and learns each order's end from the events order-svc
//! publishes. Over the measured window (after a warm-up) it reports
//! confirmed orders per second, place-to-terminal latency, Postgres
//! transactions per confirmed order and CPU per component; then raw
//! baselines taken in the same run, and the ratios to them.

pub mod baseline;
pub mod load;
pub mod probe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use saga_shared::auth::Role;
use saga_shared::bus::Namespace;
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore, oneshot};
use uuid::Uuid;

use self::baseline::Baselines;
use self::load::{End, Ends, Mix};
use self::probe::Cpu;
use super::percentile_ms;
use crate::client::{Clients, Urls};
use crate::system::{System, SystemConfig};

/// How long an order may take to end before it counts as unfinished.
const END_TIMEOUT: Duration = Duration::from_secs(60);
/// Orders in flight at most under an offered rate (beyond: shed, counted).
const OPEN_LOOP_CAP: usize = 20_000;

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Orders in flight at once (closed loop), when no `rate` is given.
    pub concurrency: usize,
    /// Orders offered per second (open loop).
    pub rate: Option<f64>,
    #[serde(with = "secs")]
    pub duration: Duration,
    #[serde(with = "secs")]
    pub warmup: Duration,
    pub mix: Mix,
    /// The simulated gateway's decline rate (cancelled: payment declined).
    pub decline_rate: f64,
    /// `bus.batch_size` of every service (default: the configured one).
    pub batch_size: Option<usize>,
    /// Instances of every service (each set on a runtime of its own).
    pub instances: usize,
    /// order-svc's `max_open_orders` (default: the configured one).
    pub max_open_orders: Option<u64>,
    #[serde(skip)]
    pub database_url: String,
    /// How long each baseline runs (zero: none).
    #[serde(with = "secs")]
    pub baseline: Duration,
}

/// The most orders per second an open loop may be asked to offer.
const MAX_RATE: f64 = 100_000.0;

impl Options {
    /// Refuses options that cannot make a run, naming the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        let m = &self.mix;
        if self.duration.is_zero()
            || m.skus == 0
            || m.lines == 0
            || m.customers == 0
            || self.instances == 0
        {
            anyhow::bail!(
                "--duration, --skus, --lines, --customers and --instances must be more than 0"
            );
        }
        match self.rate {
            None if self.concurrency == 0 => anyhow::bail!("--concurrency must be at least 1"),
            None => {}
            Some(r) if !(r > 0.0 && r <= MAX_RATE) => anyhow::bail!(
                "--rate must be a number of orders per second above 0 and at most {MAX_RATE}, got {r}"
            ),
            Some(r) if r * self.duration.as_secs_f64() < 1.0 => anyhow::bail!(
                "--rate {r} places no order within --duration {:?}",
                self.duration
            ),
            Some(_) => {}
        }
        if !(m.skew >= 0.0 && m.skew.is_finite()) {
            anyhow::bail!("--skew must be 0 or more, got {}", m.skew);
        }
        for (name, x) in [
            ("slot-share", m.slot_share),
            ("out-of-stock-share", m.out_of_stock_share),
            ("unfunded-share", m.unfunded_share),
            ("decline-rate", self.decline_rate),
        ] {
            if !(0.0..=1.0).contains(&x) {
                anyhow::bail!("--{name} must be within 0..=1, got {x}");
            }
        }
        if m.slots == 0 && m.slot_share > 0.0 {
            anyhow::bail!("--slot-share {} needs --slots of at least 1", m.slot_share);
        }
        if self.batch_size == Some(0) {
            anyhow::bail!("--batch-size must be at least 1");
        }
        Ok(())
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Place-to-terminal latency of the orders placed in the window, in
/// milliseconds (`None`: no order was placed). An order that did not end
/// within [`END_TIMEOUT`] counts as having taken that long, so when
/// `unfinished` is not 0 the figures are lower bounds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub unfinished: u64,
}

/// A run's figures (the JSON output).
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub benchmark: &'static str,
    pub run_at: String,
    pub cpus: usize,
    pub options: Options,
    pub window_secs: f64,
    /// Orders placed in the window (as are `place_errors` and `shed`);
    /// `confirmed` and `cancelled` count orders that ended in it.
    pub placed: u64,
    pub confirmed: u64,
    pub cancelled: BTreeMap<String, u64>,
    pub place_errors: BTreeMap<String, u64>,
    /// Placed in the window and not ended within a minute.
    pub unfinished: u64,
    /// Not placed: the open loop's cap of orders in flight was reached.
    pub shed: u64,
    pub confirmed_per_sec: f64,
    pub ended_per_sec: f64,
    pub latency_ms: Latency,
    pub postgres_transactions_per_sec: f64,
    /// `None` when no order was confirmed in the window.
    pub postgres_transactions_per_confirmed: Option<f64>,
    /// CPU seconds per component over the window.
    pub cpu_seconds: BTreeMap<&'static str, f64>,
    /// Empty when no order was confirmed in the window.
    pub cpu_ms_per_confirmed: BTreeMap<&'static str, f64>,
    pub baselines: Baselines,
    /// confirmed/s over each baseline, and Postgres tx/s over its baseline.
    pub ratios: BTreeMap<&'static str, f64>,
}

/// One order's life, in time since the run started.
#[derive(Clone, Copy, Debug)]
struct Sample {
    placed: Duration,
    ended: Duration,
    end: End,
}

/// What the load generator counts while it runs.
#[derive(Default)]
struct Tally {
    /// The measured window, in time since the run started.
    window: std::ops::Range<Duration>,
    samples: Mutex<Vec<Sample>>,
    /// Of orders placed in the window, as `placed` and `shed`.
    place_errors: Mutex<BTreeMap<String, u64>>,
    placed: AtomicU64,
    unfinished_at: Mutex<Vec<Duration>>,
    shed: AtomicU64,
    /// Placed and confirmed since the start, warm-up included (progress).
    placed_so_far: AtomicU64,
    confirmed_so_far: AtomicU64,
}

impl Tally {
    fn in_window(&self, t: Duration) -> bool {
        self.window.contains(&t)
    }

    /// Counts one more of `counter` if `at` is in the window.
    fn count(&self, counter: &AtomicU64, at: Duration) {
        if self.in_window(at) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The services, on a runtime of their own whose threads are named
/// [`probe::SERVICE_THREADS`]: stopped by [`Services::stop`].
pub(crate) struct Services {
    stop: oneshot::Sender<()>,
    done: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Services {
    /// Starts the services of `cfg` with a secret of their own; returns
    /// where they listen and an admin's clients of them.
    pub(crate) async fn start(cfg: SystemConfig) -> anyhow::Result<(Self, Urls, Clients)> {
        let (cfg, minter) = cfg.with_own_secret()?;
        let admin = minter.mint("bench", Role::Admin, Duration::from_secs(7 * 24 * 3600))?;
        let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<Urls>>();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(probe::SERVICE_THREADS)
            .enable_all()
            .build()?;
        let done = std::thread::spawn(move || {
            runtime.block_on(async move {
                let system = match System::start(cfg).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(Urls {
                    order: system.order.grpc_url(),
                    inventory: system.inventory.grpc_url(),
                    payment: system.payment.grpc_url(),
                    reservation: system.reservation.grpc_url(),
                    tls: None,
                }));
                let _ = stop_rx.await;
                system.stop().await
            })
        });
        let urls = ready_rx.await.context("the services' runtime ended")??;
        let clients = Clients::with_token(&urls, Some(admin))?;
        Ok((Self { stop, done }, urls, clients))
    }

    /// Stops the services and waits for their runtime's thread (off the
    /// async threads).
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let done = self.done;
        tokio::task::spawn_blocking(move || {
            done.join()
                .map_err(|_| anyhow::anyhow!("the services' runtime panicked"))?
        })
        .await?
    }
}

/// Runs the benchmark; `progress` shows on a terminal.
pub async fn run(opts: Options) -> anyhow::Result<Figures> {
    opts.check()?;
    let ns_name = format!("bsaga{}", &Uuid::new_v4().simple().to_string()[..8]);
    let ns = Namespace::new(&ns_name)?;
    let mut cfg = SystemConfig::from_env()?
        .with_namespace(&ns_name)
        .with_database_url(&opts.database_url)
        .with_free_ports();
    cfg.payment.gateway.decline_rate = opts.decline_rate;
    if let Some(batch) = opts.batch_size {
        for bus in cfg.buses_mut() {
            bus.batch_size = batch;
        }
    }
    if let Some(max) = opts.max_open_orders {
        cfg.order.order.max_open_orders = max;
    }
    let database = database_name(&opts.database_url)?;
    saga_shared::db::ensure_database(&opts.database_url).await?;
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(baseline::PG_CLIENTS as u32 + 2)
        .connect(&opts.database_url)
        .await
        .context("the benchmark's database")?;
    // A fresh start: last run's rows would slow this one.
    for db in cfg.databases() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            db.schema
        )))
        .execute(&pg)
        .await?;
    }
    let nats = saga_shared::nats::connect(&cfg.order.nats, "sagactl bench")
        .await
        .context("NATS")?;
    let js = async_nats::jetstream::new(nats.clone());

    // Each set of instances on ports of its own: its order-svc calls its
    // inventory and reservation, all share the streams and the database.
    let mut sets = Vec::new();
    let mut clients = Vec::new();
    let started: anyhow::Result<()> = async {
        for i in 0..opts.instances {
            let ports = if i == 0 {
                cfg.clone()
            } else {
                cfg.clone().with_free_ports()
            };
            let (services, _urls, c) = Services::start(ports).await?;
            sets.push(services);
            clients.push(c);
        }
        Ok(())
    }
    .await;
    let measured = match started {
        Ok(()) => drive(&opts, clients, &nats, &ns, &pg, &database).await,
        Err(e) => Err(e),
    };
    let mut stopped = Ok(());
    for services in sets {
        stopped = stopped.and(services.stop().await);
    }
    saga_shared::bus::streams::delete_streams(&js, &ns).await;
    let (mut figures, bar) = measured?;
    stopped?;

    let redis = saga_shared::redis::connect(&cfg.inventory.redis)
        .await
        .context("Redis")?;
    for pattern in [format!("inv:{{{ns_name}:*"), format!("rsv:{{{ns_name}:*")] {
        super::delete_keys(&redis, &pattern).await?;
    }
    if !opts.baseline.is_zero() {
        bar.set_message("baselines");
        figures.baselines = baseline::measure(
            &pg,
            &js,
            &format!("{}_BASELINE", ns_name.to_ascii_uppercase()),
            &format!("{ns_name}.baseline"),
            &redis,
            opts.baseline,
        )
        .await?;
        let b = &figures.baselines;
        for (name, base, achieved) in [
            (
                "confirmed_per_postgres_commit",
                b.postgres_commits_per_sec,
                figures.confirmed_per_sec,
            ),
            (
                "postgres_tx_per_postgres_commit",
                b.postgres_commits_per_sec,
                figures.postgres_transactions_per_sec,
            ),
            (
                "confirmed_per_jetstream_publish",
                b.jetstream_publishes_per_sec,
                figures.confirmed_per_sec,
            ),
            (
                "confirmed_per_redis_evalsha",
                b.redis_evalsha_per_sec,
                figures.confirmed_per_sec,
            ),
        ] {
            figures.ratios.insert(name, achieved / base.max(1e-9));
        }
    }
    bar.finish_and_clear();
    pg.close().await;
    Ok(figures)
}

fn database_name(url: &str) -> anyhow::Result<String> {
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    options
        .get_database()
        .map(str::to_owned)
        .context("the benchmark's database URL names no database")
}

/// Seeds, loads and measures; returns the figures (without baselines).
async fn drive(
    opts: &Options,
    clients: Vec<Clients>,
    nats: &async_nats::Client,
    ns: &Namespace,
    pg: &sqlx::PgPool,
    database: &str,
) -> anyhow::Result<(Figures, ProgressBar)> {
    let clients = Arc::new(Instances {
        clients,
        next: AtomicUsize::new(0),
    });
    let mix = opts.mix.clone();
    let slots = seed(&clients.clients[0], &mix).await?;
    let ends = Ends::listen(nats, ns).await?;

    let t0 = Instant::now();
    let window_start = opts.warmup;
    let window_end = opts.warmup + opts.duration;
    let tally = Arc::new(Tally {
        window: window_start..window_end,
        ..Tally::default()
    });
    let total = window_end.as_secs().max(1);
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} s  {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix("bench saga");

    // The window's probes: CPU and Postgres counters at its two ends.
    let probes = {
        let pg = pg.clone();
        let database = database.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep_until((t0 + window_start).into()).await;
            let (cpu0, tx0) = (Cpu::now(), probe::transactions(&pg, &database).await?);
            tokio::time::sleep_until((t0 + window_end).into()).await;
            let (cpu1, tx1) = (Cpu::now(), probe::transactions(&pg, &database).await?);
            anyhow::Ok((cpu1.since(&cpu0), tx1 - tx0))
        })
    };
    let ticker = {
        let (bar, tally) = (bar.clone(), tally.clone());
        tokio::spawn(async move {
            let mut last = (0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let confirmed = tally.confirmed_so_far.load(Ordering::Relaxed);
                let rate = (confirmed - last.0) as f64 / last.1.elapsed().as_secs_f64();
                last = (confirmed, Instant::now());
                bar.set_position(t0.elapsed().as_secs());
                bar.set_message(format!(
                    "{} placed, {confirmed} confirmed, {rate:.0} confirmed/s now{}",
                    tally.placed_so_far.load(Ordering::Relaxed),
                    if t0.elapsed() < window_start {
                        " (warm-up)"
                    } else {
                        ""
                    }
                ));
            }
        })
    };

    let weights = Arc::new(mix.weights());
    let slots = Arc::new(slots);
    let one = {
        let (clients, ends, tally, mix) = (clients.clone(), ends.clone(), tally.clone(), mix);
        move |placed: Duration| {
            let request = mix.order(&mut rand::rng(), &weights, &slots);
            one_order(
                clients.clone(),
                ends.clone(),
                tally.clone(),
                t0,
                placed,
                request,
            )
        }
    };
    match opts.rate {
        None => {
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..opts.concurrency {
                let one = one.clone();
                workers.spawn(async move {
                    while t0.elapsed() < window_end {
                        one(t0.elapsed()).await;
                    }
                });
            }
            while workers.join_next().await.is_some() {}
        }
        Some(rate) => {
            let room = Arc::new(Semaphore::new(OPEN_LOOP_CAP));
            let mut orders = tokio::task::JoinSet::new();
            // Each order is due at its own time, k / rate, and its latency
            // counts from then: when the generator falls behind, the orders
            // it owes go out at once and their wait is not hidden
            // (coordinated omission).
            for k in 0u64.. {
                let due = Duration::from_secs_f64(k as f64 / rate);
                if due >= window_end {
                    break;
                }
                tokio::time::sleep_until((t0 + due).into()).await;
                let Ok(permit) = room.clone().try_acquire_owned() else {
                    tally.count(&tally.shed, due);
                    continue;
                };
                let order = one(due);
                orders.spawn(async move {
                    order.await;
                    drop(permit);
                });
                while orders.try_join_next().is_some() {}
            }
            bar.set_message("draining");
            while orders.join_next().await.is_some() {}
        }
    }
    ticker.abort();
    let (cpu, transactions) = probes.await??;

    let samples = tally.samples.lock().await.clone();
    let in_window = |t: Duration| tally.in_window(t);
    let window = opts.duration.as_secs_f64();
    let confirmed = samples
        .iter()
        .filter(|s| s.end == End::Confirmed && in_window(s.ended))
        .count() as u64;
    let ended = samples.iter().filter(|s| in_window(s.ended)).count() as u64;
    let mut cancelled = BTreeMap::new();
    for s in samples.iter().filter(|s| in_window(s.ended)) {
        if let End::Cancelled(reason) = s.end {
            let name = reason.as_str_name().trim_start_matches("CANCEL_REASON_");
            *cancelled.entry(name.to_ascii_lowercase()).or_default() += 1;
        }
    }
    let mut latencies: Vec<u32> = samples
        .iter()
        .filter(|s| in_window(s.placed))
        .map(|s| super::micros(s.ended.saturating_sub(s.placed)))
        .collect();
    let unfinished = tally
        .unfinished_at
        .lock()
        .await
        .iter()
        .filter(|t| in_window(**t))
        .count() as u64;
    // What is known of an unfinished order: it took at least this long.
    latencies.extend((0..unfinished).map(|_| super::micros(END_TIMEOUT)));
    latencies.sort_unstable();
    let per_confirmed = |x: f64| (confirmed > 0).then(|| x / confirmed as f64);
    let figures = Figures {
        benchmark: "saga",
        run_at: chrono::Utc::now().to_rfc3339(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        options: opts.clone(),
        window_secs: window,
        placed: tally.placed.load(Ordering::Relaxed),
        confirmed,
        cancelled,
        place_errors: tally.place_errors.lock().await.clone(),
        unfinished,
        shed: tally.shed.load(Ordering::Relaxed),
        confirmed_per_sec: confirmed as f64 / window,
        ended_per_sec: ended as f64 / window,
        latency_ms: Latency {
            p50: percentile_ms(&latencies, 50.0),
            p95: percentile_ms(&latencies, 95.0),
            p99: percentile_ms(&latencies, 99.0),
            max: percentile_ms(&latencies, 100.0),
            unfinished,
        },
        postgres_transactions_per_sec: transactions as f64 / window,
        postgres_transactions_per_confirmed: per_confirmed(transactions as f64),
        cpu_ms_per_confirmed: cpu
            .iter()
            .filter_map(|(who, s)| Some((*who, per_confirmed(s * 1000.0)?)))
            .collect(),
        cpu_seconds: cpu,
        baselines: Baselines::default(),
        ratios: BTreeMap::new(),
    };
    Ok((figures, bar))
}

/// The clients of each instance set, taken in turn.
struct Instances {
    clients: Vec<Clients>,
    next: AtomicUsize,
}

impl Instances {
    fn next(&self) -> &Clients {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.clients[i % self.clients.len()]
    }
}

/// Places one order and waits for its end.
async fn one_order(
    clients: Arc<Instances>,
    ends: Arc<Ends>,
    tally: Arc<Tally>,
    t0: Instant,
    placed: Duration,
    request: saga_shared::proto::order::v1::PlaceOrderRequest,
) {
    tally.placed_so_far.fetch_add(1, Ordering::Relaxed);
    tally.count(&tally.placed, placed);
    let order = match clients.next().place_order(request).await {
        Ok(o) => o,
        Err(status) => {
            if tally.in_window(placed) {
                *tally
                    .place_errors
                    .lock()
                    .await
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
            }
            return;
        }
    };
    let Ok(id) = order.order_id.parse::<Uuid>() else {
        return;
    };
    match tokio::time::timeout(END_TIMEOUT, ends.wait(id)).await {
        Ok(Ok(end)) => {
            if end == End::Confirmed {
                tally.confirmed_so_far.fetch_add(1, Ordering::Relaxed);
            }
            tally.samples.lock().await.push(Sample {
                placed,
                ended: t0.elapsed(),
                end,
            });
        }
        _ => {
            ends.forget(id);
            tally.unfinished_at.lock().await.push(placed);
        }
    }
}

/// Seeds the mix's SKUs (plenty of stock; one SKU with none), funded
/// customers (and one without funds) and slots; returns the slots' ids.
async fn seed(clients: &Clients, mix: &Mix) -> anyhow::Result<Vec<String>> {
    for i in 0..mix.skus {
        clients
            .seed(&load::sku(i), "bench item", 100, 1_000_000_000)
            .await
            .with_context(|| format!("seeding {}", load::sku(i)))?;
    }
    clients
        .seed(load::OUT_OF_STOCK_SKU, "never in stock", 100, 0)
        .await?;
    for i in 0..mix.customers {
        clients
            .top_up(saga_shared::proto::payment::v1::TopUpRequest {
                customer_id: load::customer(i),
                amount_cents: 100_000_000_000,
            })
            .await?;
    }
    let mut slots = Vec::with_capacity(mix.slots);
    for i in 0..mix.slots {
        slots.push(
            clients
                .create_slot(&format!("bench slot {i}"), 100_000)
                .await?
                .slot_id,
        );
    }
    Ok(slots)
}

/// A map's entries, each as `entry` writes it, separated by commas.
fn listed<K, V>(map: &BTreeMap<K, V>, entry: impl Fn(&K, &V) -> String) -> String {
    map.iter()
        .map(|(k, v)| entry(k, v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The figures as text.
pub fn render(f: &Figures) -> String {
    let o = &f.options;
    let m = &o.mix;
    let load = match o.rate {
        Some(r) => format!("{r:.0} orders/s offered (open loop)"),
        None => format!("{} in flight (closed loop)", o.concurrency),
    };
    let mut out = format!(
        "saga benchmark: {:.0} s measured after {:.0} s warm-up, {load}\n\
         mix: {}-line orders over {} SKUs (skew {}), {:.0}% with a slot, {:.0}% out of stock, \
         {:.0}% unfunded, {:.0}% declined; batch size {}; open orders at most {}; \
         {} instance(s) of each service\n",
        o.duration.as_secs_f64(),
        o.warmup.as_secs_f64(),
        m.lines,
        m.skus,
        m.skew,
        m.slot_share * 100.0,
        m.out_of_stock_share * 100.0,
        m.unfunded_share * 100.0,
        o.decline_rate * 100.0,
        o.batch_size
            .map_or_else(|| "as configured".to_owned(), |b| b.to_string()),
        o.max_open_orders
            .map_or_else(|| "as configured".to_owned(), |m| m.to_string()),
        o.instances,
    );
    out.push_str(&format!(
        "placed {}  confirmed {}  cancelled [{}]  place errors [{}]  unfinished {}  shed {}\n",
        f.placed,
        f.confirmed,
        listed(&f.cancelled, |r, n| format!("{r} {n}")),
        listed(&f.place_errors, |c, n| format!("{c} {n}")),
        f.unfinished,
        f.shed
    ));
    out.push_str(&format!(
        "{:<40} {:>10.1}\n{:<40} {:>10.1}\n",
        "confirmed orders/s", f.confirmed_per_sec, "ended orders/s", f.ended_per_sec
    ));
    let l = &f.latency_ms;
    let ms = super::ms;
    out.push_str(&format!(
        "place -> terminal, ms: p50 {}  p95 {}  p99 {}  max {}{}\n",
        ms(l.p50),
        ms(l.p95),
        ms(l.p99),
        ms(l.max),
        if l.unfinished > 0 {
            format!(
                "  (lower bounds: {} orders had not ended after {} s)",
                l.unfinished,
                END_TIMEOUT.as_secs()
            )
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "{:<40} {:>10}  ({:.0} tx/s)\n",
        "Postgres transactions / confirmed order",
        f.postgres_transactions_per_confirmed
            .map_or_else(|| "n/a".to_owned(), |x| format!("{x:.1}")),
        f.postgres_transactions_per_sec
    ));
    if f.cpu_ms_per_confirmed.is_empty() {
        out.push_str("CPU ms / confirmed order: n/a (no order confirmed)\n");
    } else {
        let total: f64 = f.cpu_ms_per_confirmed.values().sum();
        out.push_str(&format!(
            "CPU ms / confirmed order: {}  (total {total:.2})\n",
            listed(&f.cpu_ms_per_confirmed, |who, ms| format!("{who} {ms:.2}"))
        ));
    }
    let b = &f.baselines;
    if b.postgres_commits_per_sec > 0.0 {
        out.push_str(&format!(
            "raw baselines, same run:\n\
             {:<44} {:>10.0}/s   confirmed/s over it {:.4}, Postgres tx/s over it {:.2}\n\
             {:<44} {:>10.0}/s   confirmed/s over it {:.4}\n\
             {:<44} {:>10.0}/s   confirmed/s over it {:.4}\n",
            format!(
                "  Postgres insert+commit ({} clients)",
                baseline::PG_CLIENTS
            ),
            b.postgres_commits_per_sec,
            f.ratios["confirmed_per_postgres_commit"],
            f.ratios["postgres_tx_per_postgres_commit"],
            format!(
                "  JetStream publish+ack ({} in flight)",
                baseline::IN_FLIGHT
            ),
            b.jetstream_publishes_per_sec,
            f.ratios["confirmed_per_jetstream_publish"],
            format!("  Redis EVALSHA ({} clients)", baseline::REDIS_CLIENTS),
            b.redis_evalsha_per_sec,
            f.ratios["confirmed_per_redis_evalsha"],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            concurrency: 8,
            rate: None,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            mix: Mix {
                skus: 5,
                skew: 1.0,
                lines: 1,
                slot_share: 0.5,
                out_of_stock_share: 0.0,
                unfunded_share: 0.0,
                customers: 4,
                slots: 2,
            },
            decline_rate: 0.0,
            batch_size: None,
            instances: 1,
            max_open_orders: None,
            database_url: String::new(),
            baseline: Duration::ZERO,
        }
    }

    fn refused(change: impl FnOnce(&mut Options)) -> String {
        let mut o = options();
        change(&mut o);
        match o.check() {
            Ok(()) => panic!("accepted: {o:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn options_that_cannot_make_a_run_are_refused_naming_the_flag() {
        assert!(options().check().is_ok());
        for (flag, text) in [
            ("--concurrency", refused(|o| o.concurrency = 0)),
            // 1/rate would round to a zero period.
            ("--rate", refused(|o| o.rate = Some(3e9))),
            ("--rate", refused(|o| o.rate = Some(0.0))),
            ("--rate", refused(|o| o.rate = Some(f64::NAN))),
            // Not one order due within the window.
            ("--rate", refused(|o| o.rate = Some(0.05))),
            ("--slots", refused(|o| o.mix.slots = 0)),
            ("--batch-size", refused(|o| o.batch_size = Some(0))),
            ("--skew", refused(|o| o.mix.skew = -1.0)),
            ("--decline-rate", refused(|o| o.decline_rate = 1.5)),
            ("--duration", refused(|o| o.duration = Duration::ZERO)),
        ] {
            assert!(text.contains(flag), "{flag}: {text}");
        }
        let mut open = options();
        (open.rate, open.concurrency) = (Some(500.0), 0);
        assert!(open.check().is_ok(), "an open loop needs no concurrency");
        let mut no_slots = options();
        (no_slots.mix.slots, no_slots.mix.slot_share) = (0, 0.0);
        assert!(no_slots.check().is_ok());
    }
}
