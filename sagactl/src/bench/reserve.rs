//! The race lab: seven ways to reserve one unit of stock, run side by side
//! against the same Postgres and Redis, on one hot SKU and on spread SKUs.
//!
//! | strategy | what it does |
//! |---|---|
//! | naive | read available, then write `reserved = read + 1` (no lock): lost updates oversell |
//! | optimistic | read with a version, `UPDATE ... WHERE version = $read`, retry on conflict |
//! | conditional | one `UPDATE ... SET reserved = reserved + 1 WHERE on_hand - reserved >= 1` |
//! | for-update | `BEGIN; SELECT ... FOR UPDATE; UPDATE; COMMIT` |
//! | redis-lock | Redis `SET NX PX` lock per SKU, then read and write Postgres, then unlock |
//! | redis-lua | the inventory service's own reserve script (`inventory-svc/src/lua/reserve.lua`) |
//! | grpc | ReserveStock on inventory-svc (run in this process for the run), which runs that script and records the hold in Postgres |
//!
//! Each run offers twice as many requests as there are units, so exactly half
//! must be granted; a strategy that grants more has oversold.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions, Value};
use inventory_svc::domain::Line;
use inventory_svc::store::cache::{Reserve, SkuSnapshot, StockCache};
use saga_shared::backoff::Backoff;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tonic::transport::Endpoint;
use uuid::Uuid;

use super::saga::Services;
use super::{delete_keys, micros, percentile_ms};
use crate::client::Clients;
use crate::system::SystemConfig;
use saga_shared::proto::inventory::v1 as inv;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Naive,
    Optimistic,
    Conditional,
    ForUpdate,
    RedisLock,
    RedisLua,
    Grpc,
}

impl Strategy {
    pub const ALL: [Strategy; 7] = [
        Strategy::Naive,
        Strategy::Optimistic,
        Strategy::Conditional,
        Strategy::ForUpdate,
        Strategy::RedisLock,
        Strategy::RedisLua,
        Strategy::Grpc,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Strategy::Naive => "naive read-then-write",
            Strategy::Optimistic => "optimistic version + retry",
            Strategy::Conditional => "conditional UPDATE",
            Strategy::ForUpdate => "SELECT ... FOR UPDATE",
            Strategy::RedisLock => "Redis lock + Postgres",
            Strategy::RedisLua => "Redis Lua (the service's)",
            Strategy::Grpc => "ReserveStock over gRPC",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Every request for one SKU.
    Hot,
    /// Requests spread over many SKUs.
    Spread,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub database_url: String,
    pub redis_url: String,
    pub concurrency: usize,
    pub requests: usize,
    pub spread_skus: usize,
    pub strategies: Vec<Strategy>,
    pub scenarios: Vec<Scenario>,
    /// Each strategy runs this many times, interleaved with the others; the
    /// median run is reported (the machine's speed drifts).
    pub rounds: usize,
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub round: usize,
    pub scenario: Scenario,
    pub strategy: Strategy,
    pub concurrency: usize,
    pub requests: usize,
    pub units: i64,
    pub elapsed_s: f64,
    /// Requests decided (granted or refused) per second; requests that
    /// failed (`errors`) count neither here nor in the latencies.
    pub per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub granted: u64,
    pub rejected: u64,
    pub retries: u64,
    /// Units granted beyond those that exist.
    pub oversold: i64,
    pub errors: u64,
}

enum Outcome {
    Granted,
    Rejected,
}

struct Lab {
    pg: PgPool,
    redis: Pool,
    cache: StockCache,
    unlock: Script,
    ns: String,
}

const UNLOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
const MAX_OPTIMISTIC_TRIES: u32 = 1_000;

impl Lab {
    async fn attempt(
        &self,
        strategy: Strategy,
        sku: &str,
        retries: &mut u64,
        direct: Option<&Clients>,
    ) -> anyhow::Result<Outcome> {
        match strategy {
            Strategy::Naive => {
                let (on_hand, reserved): (i64, i64) =
                    sqlx::query_as("SELECT on_hand, reserved FROM bench_stock WHERE sku = $1")
                        .bind(sku)
                        .fetch_one(&self.pg)
                        .await?;
                if on_hand - reserved < 1 {
                    return Ok(Outcome::Rejected);
                }
                sqlx::query("UPDATE bench_stock SET reserved = $2 WHERE sku = $1")
                    .bind(sku)
                    .bind(reserved + 1)
                    .execute(&self.pg)
                    .await?;
                Ok(Outcome::Granted)
            }
            Strategy::Optimistic => {
                for attempt in 0..MAX_OPTIMISTIC_TRIES {
                    let (on_hand, reserved, version): (i64, i64, i64) = sqlx::query_as(
                        "SELECT on_hand, reserved, version FROM bench_stock WHERE sku = $1",
                    )
                    .bind(sku)
                    .fetch_one(&self.pg)
                    .await?;
                    if on_hand - reserved < 1 {
                        return Ok(Outcome::Rejected);
                    }
                    let won = sqlx::query(
                        "UPDATE bench_stock SET reserved = reserved + 1, version = version + 1 \
                         WHERE sku = $1 AND version = $2",
                    )
                    .bind(sku)
                    .bind(version)
                    .execute(&self.pg)
                    .await?
                    .rows_affected()
                        == 1;
                    if won {
                        return Ok(Outcome::Granted);
                    }
                    *retries += 1;
                    backoff(attempt).await;
                }
                anyhow::bail!("gave up after {MAX_OPTIMISTIC_TRIES} version conflicts")
            }
            Strategy::Conditional => {
                let won = sqlx::query(
                    "UPDATE bench_stock SET reserved = reserved + 1 \
                     WHERE sku = $1 AND on_hand - reserved >= 1",
                )
                .bind(sku)
                .execute(&self.pg)
                .await?
                .rows_affected()
                    == 1;
                Ok(if won {
                    Outcome::Granted
                } else {
                    Outcome::Rejected
                })
            }
            Strategy::ForUpdate => {
                let mut tx = self.pg.begin().await?;
                let (on_hand, reserved): (i64, i64) = sqlx::query_as(
                    "SELECT on_hand, reserved FROM bench_stock WHERE sku = $1 FOR UPDATE",
                )
                .bind(sku)
                .fetch_one(&mut *tx)
                .await?;
                if on_hand - reserved < 1 {
                    tx.commit().await?;
                    return Ok(Outcome::Rejected);
                }
                sqlx::query("UPDATE bench_stock SET reserved = reserved + 1 WHERE sku = $1")
                    .bind(sku)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Outcome::Granted)
            }
            Strategy::RedisLock => {
                let key = format!("bench:{{{}:{sku}}}:lock", self.ns);
                let token = Uuid::new_v4().to_string();
                let mut attempt = 0;
                loop {
                    let set: Value = self
                        .redis
                        .next()
                        .set(
                            &key,
                            token.as_str(),
                            Some(Expiration::PX(5_000)),
                            Some(SetOptions::NX),
                            false,
                        )
                        .await?;
                    if set != Value::Null {
                        break;
                    }
                    *retries += 1;
                    backoff(attempt).await;
                    attempt += 1;
                }
                let result = async {
                    let (on_hand, reserved): (i64, i64) =
                        sqlx::query_as("SELECT on_hand, reserved FROM bench_stock WHERE sku = $1")
                            .bind(sku)
                            .fetch_one(&self.pg)
                            .await?;
                    if on_hand - reserved < 1 {
                        return Ok::<_, anyhow::Error>(Outcome::Rejected);
                    }
                    sqlx::query("UPDATE bench_stock SET reserved = $2 WHERE sku = $1")
                        .bind(sku)
                        .bind(reserved + 1)
                        .execute(&self.pg)
                        .await?;
                    Ok(Outcome::Granted)
                }
                .await;
                let _: i64 = self
                    .unlock
                    .evalsha_with_reload(self.redis.next(), vec![key], vec![token])
                    .await?;
                result
            }
            Strategy::RedisLua => {
                let line = Line {
                    sku: sku.to_owned(),
                    quantity: 1,
                };
                match self.cache.reserve(Uuid::now_v7(), &[line]).await? {
                    Reserve::Granted(_) => Ok(Outcome::Granted),
                    Reserve::Rejected { .. } => Ok(Outcome::Rejected),
                    other => anyhow::bail!("unexpected answer {other:?}"),
                }
            }
            Strategy::Grpc => {
                let clients = direct.context("no inventory-svc for the gRPC strategy")?;
                let request = inv::ReserveStockRequest {
                    reservation_id: Uuid::now_v7().to_string(),
                    lines: vec![inv::ReservationLine {
                        sku: sku.to_owned(),
                        quantity: 1,
                    }],
                };
                let answer = clients.inventory.clone().reserve_stock(request).await?;
                let state = answer
                    .into_inner()
                    .reservation
                    .map(|r| r.state())
                    .context("an answer without its reservation")?;
                match state {
                    inv::ReservationState::Reserved => Ok(Outcome::Granted),
                    inv::ReservationState::Rejected => Ok(Outcome::Rejected),
                    other => anyhow::bail!("unexpected state {other:?}"),
                }
            }
        }
    }
}

/// inventory-svc (with the three other services) on a runtime of its own,
/// in a namespace of its own, stocked for one gRPC run. The service schemas
/// of the lab's database are dropped when it starts (as `bench saga` does
/// with its own): the lab's database is for benchmarks only.
struct Direct {
    services: Services,
    clients: Clients,
    /// inventory-svc's gRPC address.
    url: String,
    ns: String,
    cfg: SystemConfig,
}

impl Direct {
    async fn start(
        lab: &Lab,
        opts: &Options,
        units: &HashMap<String, i64>,
    ) -> anyhow::Result<Self> {
        let ns = format!("bres{}", &Uuid::new_v4().simple().to_string()[..8]);
        let mut cfg = SystemConfig::from_env()?
            .with_namespace(&ns)
            .with_database_url(&opts.database_url)
            .with_free_ports();
        cfg.inventory.redis.url = opts.redis_url.clone();
        cfg.reservation.redis.url = opts.redis_url.clone();
        for db in cfg.databases() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                db.schema
            )))
            .execute(&lab.pg)
            .await?;
        }
        let (services, urls, clients) = Services::start(cfg.clone()).await?;
        let direct = Self {
            services,
            clients,
            url: urls.inventory,
            ns,
            cfg,
        };
        for (sku, n) in units {
            if let Err(e) = direct.clients.seed(sku, "race lab", 100, *n).await {
                direct.stop(lab).await?;
                return Err(e).context("stocking the race lab");
            }
        }
        Ok(direct)
    }

    /// Stops the services (the clients let go first, so that the servers'
    /// graceful shutdown is not left waiting on them) and removes the
    /// namespace's streams and keys.
    async fn stop(self, lab: &Lab) -> anyhow::Result<()> {
        drop(self.clients);
        let stopped = self.services.stop().await;
        let nats = saga_shared::nats::connect(&self.cfg.order.nats, "sagactl bench").await?;
        let ns = saga_shared::bus::Namespace::new(&self.ns)?;
        saga_shared::bus::streams::delete_streams(&async_nats::jetstream::new(nats), &ns).await;
        for pattern in [
            format!("inv:{{{}:*", self.ns),
            format!("rsv:{{{}:*", self.ns),
        ] {
            delete_keys(&lab.redis, &pattern).await?;
        }
        stopped
    }
}

/// A short pause after a conflict: 50 µs doubling to 3.2 ms, with jitter.
async fn backoff(attempt: u32) {
    const CONFLICT: Backoff = Backoff::new(Duration::from_micros(50), Duration::from_micros(3_200));
    tokio::time::sleep(CONFLICT.jittered(attempt + 1)).await;
}

fn sku_of(scenario: Scenario, i: usize, spread: usize) -> String {
    match scenario {
        Scenario::Hot => "HOT".to_owned(),
        Scenario::Spread => {
            // A fixed, well-mixed sequence (the same for every strategy).
            let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
            format!("S{:04}", h as usize % spread)
        }
    }
}

async fn reset(lab: &Lab, units: &HashMap<String, i64>) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE bench_stock").execute(&lab.pg).await?;
    let skus: Vec<&str> = units.keys().map(String::as_str).collect();
    let stock: Vec<i64> = skus.iter().map(|s| units[*s]).collect();
    sqlx::query(
        "INSERT INTO bench_stock (sku, on_hand, reserved, version) \
         SELECT sku, n, 0, 1 FROM UNNEST($1::text[], $2::bigint[]) AS s(sku, n)",
    )
    .bind(&skus)
    .bind(&stock)
    .execute(&lab.pg)
    .await?;
    delete_keys(&lab.redis, &format!("inv:{{{}:*", lab.ns)).await?;
    delete_keys(&lab.redis, &format!("bench:{{{}:*", lab.ns)).await?;
    for (sku, n) in units {
        let snapshot = SkuSnapshot {
            sku: sku.clone(),
            on_hand: *n,
            sold: 0,
            epoch: 0,
            reserved: Vec::new(),
            closed: Vec::new(),
        };
        lab.cache.rebuild(&snapshot, 1, None).await?;
    }
    Ok(())
}

async fn run_one(
    lab: Arc<Lab>,
    opts: &Options,
    strategy: Strategy,
    scenario: Scenario,
) -> anyhow::Result<Row> {
    let mut units: HashMap<String, i64> = HashMap::new();
    for i in 0..opts.requests {
        *units
            .entry(sku_of(scenario, i, opts.spread_skus))
            .or_default() += 1;
    }
    // Half of what is asked for exists.
    for n in units.values_mut() {
        *n /= 2;
    }
    let direct = match strategy {
        Strategy::Grpc => Some(Direct::start(&lab, opts, &units).await?),
        _ => {
            reset(&lab, &units).await?;
            None
        }
    };

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let lab = lab.clone();
            let next = next.clone();
            let clients = direct.as_ref().map(|d| d.clients.clone());
            let (requests, spread) = (opts.requests, opts.spread_skus);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut granted: HashMap<String, i64> = HashMap::new();
                let (mut rejected, mut retries, mut errors) = (0u64, 0u64, 0u64);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    let sku = sku_of(scenario, i, spread);
                    let t = Instant::now();
                    let outcome = lab
                        .attempt(strategy, &sku, &mut retries, clients.as_ref())
                        .await;
                    let took = micros(t.elapsed());
                    match outcome {
                        Ok(Outcome::Granted) => {
                            latencies.push(took);
                            *granted.entry(sku).or_default() += 1;
                        }
                        Ok(Outcome::Rejected) => {
                            latencies.push(took);
                            rejected += 1;
                        }
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("{}: {e:#}", strategy.label());
                            }
                            errors += 1;
                        }
                    }
                }
                (latencies, granted, rejected, retries, errors)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(opts.requests);
    let mut granted: HashMap<String, i64> = HashMap::new();
    let (mut rejected, mut retries, mut errors) = (0, 0, 0);
    let joined = futures::future::join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(direct) = direct {
        direct.stop(&lab).await?;
    }
    for w in joined {
        let (l, g, r, t, e) = w?;
        latencies.extend(l);
        for (sku, n) in g {
            *granted.entry(sku).or_default() += n;
        }
        rejected += r;
        retries += t;
        errors += e;
    }
    latencies.sort_unstable();
    let oversold = granted.iter().map(|(sku, n)| (n - units[sku]).max(0)).sum();
    Ok(Row {
        round: 0,
        scenario,
        strategy,
        concurrency: opts.concurrency,
        requests: opts.requests,
        units: units.values().sum(),
        elapsed_s: elapsed,
        per_sec: latencies.len() as f64 / elapsed,
        p50_ms: percentile_ms(&latencies, 50.0),
        p99_ms: percentile_ms(&latencies, 99.0),
        granted: granted.values().sum::<i64>() as u64,
        rejected,
        retries,
        oversold,
        errors,
    })
}

/// The results: every run, and the median run of each strategy and scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub medians: Vec<Row>,
    pub runs: Vec<Row>,
    /// With the gRPC strategy: calls/s of a call that does no work (the
    /// health Check) on the same server at the same concurrency, the most
    /// any gRPC call reaches here.
    pub grpc_floor_per_sec: Option<f64>,
}

/// Runs every chosen strategy on every chosen scenario, `rounds` times
/// interleaved, printing each run as it completes and then the medians.
pub async fn run(opts: &Options) -> anyhow::Result<Results> {
    saga_shared::db::ensure_database(&opts.database_url).await?;
    let pg = PgPoolOptions::new()
        .max_connections(opts.concurrency as u32)
        .connect(&opts.database_url)
        .await
        .with_context(|| {
            format!(
                "connecting to {}",
                saga_shared::config::redact_url(&opts.database_url)
            )
        })?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_stock (sku TEXT PRIMARY KEY, on_hand BIGINT NOT NULL, \
         reserved BIGINT NOT NULL, version BIGINT NOT NULL)",
    )
    .execute(&pg)
    .await?;
    let redis = saga_shared::redis::connect(&saga_shared::config::RedisConfig {
        url: opts.redis_url.clone(),
        pool_size: 4,
        command_timeout_ms: 10_000,
    })
    .await
    .context("connecting to Redis")?;
    let ns = format!("bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let lab = Arc::new(Lab {
        cache: StockCache::new(
            redis.clone(),
            &ns,
            Duration::from_secs(10),
            Duration::from_secs(60),
        ),
        unlock: Script::from_lua(UNLOCK),
        pg,
        redis,
        ns,
    });

    println!(
        "race lab: {} requests per run, {} at once, twice as many requests as units, {} round(s)",
        opts.requests, opts.concurrency, opts.rounds
    );
    println!("{}", header());
    let mut runs = Vec::new();
    for round in 1..=opts.rounds.max(1) {
        for scenario in &opts.scenarios {
            for strategy in &opts.strategies {
                let mut row = run_one(lab.clone(), opts, *strategy, *scenario).await?;
                row.round = round;
                println!("{}", line(&row));
                runs.push(row);
            }
        }
    }
    let mut medians = Vec::new();
    for scenario in &opts.scenarios {
        for strategy in &opts.strategies {
            let mut mine: Vec<&Row> = runs
                .iter()
                .filter(|r| r.scenario == *scenario && r.strategy == *strategy)
                .collect();
            mine.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
            // Of an even count, the slower of the two middle runs.
            if let Some(median) = mine.get(mine.len().saturating_sub(1) / 2) {
                medians.push((*median).clone());
            }
        }
    }
    if opts.rounds > 1 {
        println!("\nmedian of {} rounds:", opts.rounds);
        println!("{}", header());
        for row in &medians {
            println!("{}", line(row));
        }
    }
    let grpc_floor_per_sec = if opts.strategies.contains(&Strategy::Grpc) {
        let floor = grpc_floor(&lab, opts).await?;
        println!(
            "gRPC call that does no work (health Check), {} at once: {floor:.0}/s",
            opts.concurrency
        );
        Some(floor)
    } else {
        None
    };
    delete_keys(&lab.redis, &format!("inv:{{{}:*", lab.ns)).await?;
    delete_keys(&lab.redis, &format!("bench:{{{}:*", lab.ns)).await?;
    sqlx::query("DROP TABLE IF EXISTS bench_stock")
        .execute(&lab.pg)
        .await?;
    Ok(Results {
        medians,
        runs,
        grpc_floor_per_sec,
    })
}

/// Health Checks per second on inventory-svc, `concurrency` at once.
async fn grpc_floor(lab: &Lab, opts: &Options) -> anyhow::Result<f64> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let direct = Direct::start(lab, opts, &HashMap::new()).await?;
    let channel = Endpoint::from_shared(direct.url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let (next, requests) = (next.clone(), opts.requests);
            let mut health = HealthClient::new(channel.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    health.check(HealthCheckRequest::default()).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let joined = futures::future::join_all(workers).await;
    let per_sec = opts.requests as f64 / started.elapsed().as_secs_f64();
    drop(channel);
    direct.stop(lab).await?;
    for w in joined {
        w??;
    }
    Ok(per_sec)
}

pub fn header() -> String {
    format!(
        "{:<7} {:<28} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "skus",
        "strategy",
        "decided/s",
        "p50 ms",
        "p99 ms",
        "granted",
        "refused",
        "retries",
        "oversold",
        "errors"
    )
}

pub fn line(r: &Row) -> String {
    format!(
        "{:<7} {:<28} {:>11.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        match r.scenario {
            Scenario::Hot => "hot",
            Scenario::Spread => "spread",
        },
        r.strategy.label(),
        r.per_sec,
        super::ms(r.p50_ms),
        super::ms(r.p99_ms),
        r.granted,
        r.rejected,
        r.retries,
        r.oversold,
        r.errors
    )
}

/// Redis Lua throughput over `SELECT ... FOR UPDATE` at the hot SKU.
pub fn hot_ratio(rows: &[Row]) -> Option<f64> {
    ratio(rows, Scenario::Hot, Strategy::RedisLua, Strategy::ForUpdate)
}

/// Decided/s of `over` over decided/s of `under` in `scenario`.
pub fn ratio(rows: &[Row], scenario: Scenario, over: Strategy, under: Strategy) -> Option<f64> {
    let find = |s: Strategy| {
        rows.iter()
            .find(|r| r.strategy == s && r.scenario == scenario)
            .map(|r| r.per_sec)
    };
    Some(find(over)? / find(under)?)
}
