//! The command line: every argument type of `sagactl`, as clap parses it.
//! What each command does is in [`crate::cmd`]. It is over 500 lines on
//! purpose: the doc comments are the `--help` text of every flag, and one
//! file shows the whole command line in one place.

use clap::{Args, Parser, Subcommand};

use crate::client::Urls;

#[derive(Parser)]
#[command(name = "sagactl", version, about = "Run and operate the saga services")]
pub struct Cli {
    #[command(flatten)]
    pub urls: UrlArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct UrlArgs {
    /// order-svc gRPC address.
    #[arg(
        long,
        env = "SAGACTL_ORDER_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub order_url: String,
    /// inventory-svc gRPC address.
    #[arg(
        long,
        env = "SAGACTL_INVENTORY_URL",
        default_value = "http://127.0.0.1:50052",
        global = true
    )]
    pub inventory_url: String,
    /// payment-svc gRPC address.
    #[arg(
        long,
        env = "SAGACTL_PAYMENT_URL",
        default_value = "http://127.0.0.1:50053",
        global = true
    )]
    pub payment_url: String,
    /// reservation-svc gRPC address.
    #[arg(
        long,
        env = "SAGACTL_RESERVATION_URL",
        default_value = "http://127.0.0.1:50054",
        global = true
    )]
    pub reservation_url: String,
    /// Bearer token sent with every call (default: the admin token `sagactl
    /// up` writes under SAGA_HOME, ~/.saga by default).
    #[arg(long, env = "SAGA_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA that signed the services' certificates (for https:// URLs).
    #[arg(long, env = "SAGACTL_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for services that require one.
    #[arg(long, env = "SAGACTL_CERT_FILE", global = true, requires = "key_file")]
    pub cert_file: Option<std::path::PathBuf>,
    #[arg(long, env = "SAGACTL_KEY_FILE", global = true, requires = "cert_file")]
    pub key_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run all four services in this process (migrations applied, streams
    /// created) until Ctrl-C. Configured by the services' own variables
    /// (ORDER_SVC__*, INVENTORY_SVC__*, PAYMENT_SVC__*, RESERVATION_SVC__*).
    Up {
        /// Namespace of streams, subjects and Redis keys for all services.
        #[arg(long, env = "SAGA_NAMESPACE")]
        namespace: Option<String>,
        /// Log format: pretty or json.
        #[arg(long, default_value = "pretty")]
        log_format: String,
    },
    /// Seed stock, a wallet and a slot, place an order and follow it to its end.
    Demo,
    /// Mint a token (HS256) with the secret in --secret-file, else
    /// SAGA_AUTH_SECRET, else the development secret `sagactl up` made:
    /// `sagactl token --customer c1`.
    Token(TokenArgs),
    /// Catalog and stock.
    #[command(subcommand)]
    Stock(StockCmd),
    /// Customer wallets.
    #[command(subcommand)]
    Wallet(WalletCmd),
    /// Delivery slots.
    #[command(subcommand)]
    Slot(SlotCmd),
    /// Orders.
    #[command(subcommand)]
    Order(OrderCmd),
    /// The payment of an order.
    Payment {
        /// Order id.
        order_id: String,
    },
    /// Inventory operations.
    #[command(subcommand)]
    Inventory(InventoryCmd),
    /// A saga's story, and the sagas that wait. Reads the four services'
    /// databases and the streams (ORDER_SVC__*, INVENTORY_SVC__*, ...).
    #[command(subcommand)]
    Saga(SagaCmd),
    /// Check the invariants across the four services' databases and Redis
    /// (run it when the system is quiet); exits 1 on any violation.
    /// Connects like the services (ORDER_SVC__*, INVENTORY_SVC__*, ...).
    Audit {
        /// Namespace of the Redis keys (default: the configured one).
        #[arg(long, env = "SAGA_NAMESPACE")]
        namespace: Option<String>,
    },
    /// The dead-letter queue: look at what failed, send it back once fixed.
    Dlq {
        #[command(subcommand)]
        command: DlqCmd,
        /// NATS server.
        #[arg(long, env = "SAGA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// Namespace of the streams.
        #[arg(long, env = "SAGA_NAMESPACE", default_value = "saga")]
        namespace: String,
    },
    /// Benchmarks (they print figures and write JSON).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Recovery by JetStream replay: `sagactl replay <service> --from-seq N |
    /// --from-checkpoint [--to-seq N] [--stream NAME] [--dry-run]` runs that
    /// range of the service's input streams through the service's own
    /// handlers (what its inbox has is skipped, what is missing is applied,
    /// once), with a reader of its own, while the service keeps running.
    /// Connects like the services (ORDER_SVC__*, INVENTORY_SVC__*, ...).
    Replay(ReplayArgs),
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("who").required(true).args(["customer", "admin", "service"]))]
pub struct TokenArgs {
    /// A customer's token: it acts for this customer id only.
    #[arg(long)]
    pub customer: Option<String>,
    /// An admin's token, with this name as its subject.
    #[arg(long, num_args = 0..=1, default_missing_value = "admin")]
    pub admin: Option<String>,
    /// A service's token, with this name as its subject.
    #[arg(long)]
    pub service: Option<String>,
    /// How long it is valid (30m, 12h, 7d).
    #[arg(long, default_value = "24h", value_parser = crate::replay::parse_ago)]
    pub ttl: std::time::Duration,
    /// A file holding the services' auth.hs256_secret (default:
    /// SAGA_AUTH_SECRET, else the development secret under SAGA_HOME).
    #[arg(long, env = "SAGA_AUTH_SECRET_FILE")]
    pub secret_file: Option<std::path::PathBuf>,
    /// The `iss` to write (the services' auth.issuer).
    #[arg(long, default_value = "saga")]
    pub issuer: String,
    /// The `aud` to write (the services' auth.audience).
    #[arg(long, default_value = "saga")]
    pub audience: String,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReplayArgs {
    #[command(subcommand)]
    pub command: Option<ReplayCmd>,
    /// The service to replay into (order, inventory, payment, reservation).
    pub service: Option<String>,
    /// Start at this stream sequence.
    #[arg(long, group = "start")]
    pub from_seq: Option<u64>,
    /// Start at the first event stored at or after this time: an RFC 3339
    /// timestamp (2026-11-24T09:30:00Z) or a time ago (90s, 15m, 2h, 3d).
    #[arg(long, group = "start", value_parser = crate::replay::parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Start just after the service's checkpoint on each stream.
    #[arg(long, group = "start")]
    pub from_checkpoint: bool,
    /// Stop after this sequence (default: the last message now).
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Only this input stream (e.g. SAGA_ORDERS).
    #[arg(long)]
    pub stream: Option<String>,
    /// List the events that would still change state; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replay even from before what the service's inbox remembers (rows
    /// purged past retention): events applied long ago may apply again.
    #[arg(long)]
    pub force: bool,
    /// Namespace of the streams (default: the configured one).
    #[arg(long, env = "SAGA_NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Subcommand)]
pub enum ReplayCmd {
    /// Each service's checkpoint on each of its input streams: every
    /// message up to it is accounted for (not for the service, or in its
    /// inbox). Walks the streams from the stored checkpoints and stores how
    /// far it got.
    Status {
        /// Only this service (order, inventory, payment, reservation).
        service: Option<String>,
        /// Namespace of the streams (default: the configured one).
        #[arg(long, env = "SAGA_NAMESPACE")]
        namespace: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum DlqCmd {
    /// Every dead letter, oldest first.
    List,
    /// One dead letter: where it came from, why, its headers and body.
    Show { seq: u64 },
    /// Send dead letters back to their original subject (and out of the DLQ).
    Redrive {
        /// DLQ sequence numbers (see `list`).
        seqs: Vec<u64>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
        /// Send back even a letter whose event some consumer's inbox may
        /// have forgotten (purged past retention): that consumer would apply
        /// it again. Without it, the services' databases (as configured:
        /// `<SVC>__DATABASE__URL`) are read to check.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// End to end: the four services in this process (a namespace and a
    /// database of its own), orders placed at a fixed concurrency or an
    /// offered rate with a chosen mix; confirmed orders/s, place-to-terminal
    /// latency, Postgres transactions and CPU per confirmed order, and raw
    /// baselines taken in the same run. Run it on the release build.
    Saga(Box<SagaBenchArgs>),
    /// Replay into payment-svc: events/s for events that apply and for
    /// events already applied, beside the raw publish-with-ack rate. Needs
    /// no running service; uses a namespace of its own.
    Replay {
        /// Events to publish and replay.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// A database of the benchmark's own (created if missing).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/saga_bench")]
        database_url: String,
        /// Also write the figures as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// The race lab: ways to reserve stock under contention, side by side.
    Reserve {
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Runs of each strategy, interleaved; the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Requests per strategy and scenario (twice the units in stock).
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        /// SKUs of the spread scenario.
        #[arg(long, default_value_t = 100)]
        spread_skus: usize,
        /// Strategies to run (default: all).
        #[arg(long = "strategy", value_enum)]
        strategies: Vec<crate::bench::reserve::Strategy>,
        /// Scenarios to run (default: hot and spread).
        #[arg(long = "scenario", value_enum)]
        scenarios: Vec<crate::bench::reserve::Scenario>,
        /// A database of its own (created if missing).
        #[arg(
            long,
            env = "SAGA_BENCH_DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/saga_bench"
        )]
        database_url: String,
        #[arg(
            long,
            env = "SAGA_BENCH_REDIS_URL",
            default_value = "redis://127.0.0.1:6379"
        )]
        redis_url: String,
        /// Where to write the results as JSON.
        #[arg(long, default_value = "bench-results/reserve.json")]
        json: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
pub enum InventoryCmd {
    /// Compare the Redis stock counters with Postgres once and fix those that
    /// disagree (orphan holds older than the grace period are released).
    /// Connects like inventory-svc (INVENTORY_SVC__* variables); safe while
    /// the service runs.
    Reconcile {
        /// Only these SKUs (default: all).
        #[arg(long = "sku")]
        skus: Vec<String>,
        /// Namespace of the Redis keys (default: the configured one).
        #[arg(long, env = "SAGA_NAMESPACE")]
        namespace: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum StockCmd {
    /// Create or update a catalog entry.
    Upsert {
        #[arg(long)]
        sku: String,
        #[arg(long)]
        name: String,
        /// Unit price in minor units (cents).
        #[arg(long)]
        price_cents: i64,
    },
    /// Create the entry if needed and add units on hand.
    Seed {
        #[arg(long)]
        sku: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        price_cents: i64,
        #[arg(long)]
        quantity: i64,
    },
    /// Add (or remove, negative) units on hand.
    Adjust {
        #[arg(long)]
        sku: String,
        #[arg(long, allow_hyphen_values = true)]
        delta: i64,
        /// The version you read; defaults to the current one.
        #[arg(long)]
        expected_version: Option<i64>,
    },
    Get {
        #[arg(long)]
        sku: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum WalletCmd {
    /// Add funds (creates the wallet).
    Topup {
        #[arg(long)]
        customer: String,
        /// Minor units (cents).
        #[arg(long)]
        amount_cents: i64,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    Get {
        #[arg(long)]
        customer: String,
    },
}

#[derive(Subcommand)]
pub enum SlotCmd {
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        capacity: i32,
    },
    Get {
        slot_id: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum OrderCmd {
    /// Place an order: --item SKU:QTY, repeated.
    Place {
        #[arg(long)]
        customer: String,
        #[arg(long = "item", required = true, value_name = "SKU:QTY")]
        items: Vec<String>,
        #[arg(long)]
        slot: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait up to this many seconds for the order to end.
        #[arg(long)]
        wait: Option<u64>,
    },
    Get {
        order_id: String,
        /// Wait up to this many seconds for the order to end.
        #[arg(long)]
        wait: Option<u64>,
    },
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    Cancel {
        order_id: String,
    },
    /// Follow an order (WatchOrder): print it now and at each change until it
    /// ends.
    Watch {
        order_id: String,
    },
}

impl TryFrom<&UrlArgs> for Urls {
    type Error = anyhow::Error;

    fn try_from(urls: &UrlArgs) -> anyhow::Result<Self> {
        let grpc = saga_shared::config::GrpcConfig {
            tls_ca_file: urls.ca_file.clone(),
            tls_cert_file: urls.cert_file.clone(),
            tls_key_file: urls.key_file.clone(),
            ..Default::default()
        };
        Ok(Self {
            order: urls.order_url.clone(),
            inventory: urls.inventory_url.clone(),
            payment: urls.payment_url.clone(),
            reservation: urls.reservation_url.clone(),
            tls: saga_shared::grpc::client_tls(&grpc)?,
        })
    }
}

#[derive(Subcommand)]
pub enum SagaCmd {
    /// Every event of an order across the four services, in order: time,
    /// type, producer, stream position, cause and the delay from it, who
    /// applied it and after how long; then each participant's record.
    Show {
        /// Order id.
        order_id: String,
        /// Namespace of the streams (default: the configured one).
        #[arg(long, env = "SAGA_NAMESPACE")]
        namespace: Option<String>,
    },
    /// Open orders unchanged for a while: the step each waits for, the
    /// service that owes it, and how that service's consumer stands
    /// (pending, unacknowledged, age of the oldest unacknowledged).
    Stuck {
        /// Unchanged for at least this long (90s, 15m, 2h, 3d).
        #[arg(long, default_value = "30s", value_parser = crate::replay::parse_ago)]
        older_than: std::time::Duration,
        /// At most this many orders, oldest first (1..=10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        /// Namespace of the streams (default: the configured one).
        #[arg(long, env = "SAGA_NAMESPACE")]
        namespace: Option<String>,
    },
}

#[derive(Args)]
pub struct SagaBenchArgs {
    /// Orders in flight at once (closed loop).
    #[arg(long, default_value_t = 64, conflicts_with = "rate")]
    pub concurrency: usize,
    /// Orders offered per second instead (open loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured time (90s, 2m).
    #[arg(long, default_value = "30s", value_parser = crate::replay::parse_ago)]
    pub duration: std::time::Duration,
    /// Warm-up before it, not measured.
    #[arg(long, default_value = "5s", value_parser = crate::replay::parse_ago)]
    pub warmup: std::time::Duration,
    /// SKUs in stock.
    #[arg(long, default_value_t = 100)]
    pub skus: usize,
    /// Zipf exponent of SKU popularity (0: uniform; 1.2: a few hot SKUs).
    #[arg(long, default_value_t = 0.0)]
    pub skew: f64,
    /// Lines per order.
    #[arg(long, default_value_t = 1)]
    pub lines: usize,
    /// Share of orders with a delivery slot (0..=1).
    #[arg(long, default_value_t = 0.0)]
    pub slot_share: f64,
    /// Share of orders for a SKU out of stock (cancelled).
    #[arg(long, default_value_t = 0.0)]
    pub out_of_stock_share: f64,
    /// Share of orders by a customer without funds (cancelled).
    #[arg(long, default_value_t = 0.0)]
    pub unfunded_share: f64,
    /// The simulated card gateway's decline rate (cancelled).
    #[arg(long, default_value_t = 0.0)]
    pub decline_rate: f64,
    /// Funded customers.
    #[arg(long, default_value_t = 1_000)]
    pub customers: usize,
    /// Slots (capacity 100,000 each).
    #[arg(long, default_value_t = 20)]
    pub slots: usize,
    /// BUS__BATCH_SIZE of every service (default: as configured).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Instances of every service, competing for the same streams and
    /// databases (each on a runtime of its own in this process); orders
    /// are placed on the order instances in turn.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// ORDER_SVC__ORDER__MAX_OPEN_ORDERS: open orders beyond which
    /// PlaceOrder answers RESOURCE_EXHAUSTED (0: no limit; default: as
    /// configured). Refusals count as place errors.
    #[arg(long)]
    pub max_open_orders: Option<u64>,
    /// How long each raw baseline runs (0s: none).
    #[arg(long, default_value = "3s", value_parser = crate::replay::parse_ago)]
    pub baseline: std::time::Duration,
    /// A database of its own (created if missing; its service schemas are
    /// dropped at the start of each run).
    #[arg(
        long,
        env = "SAGA_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/saga_bench"
    )]
    pub database_url: String,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("sagactl").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    /// `saga stuck`'s bounds are refused by the parser, naming the flag,
    /// before anything is asked of Postgres. `--limit 0` used to print that
    /// no order waits, `--limit -1` Postgres's own error, and a huge
    /// `--older-than` Postgres's "interval out of range".
    #[test]
    fn saga_stuck_refuses_bounds_that_mean_nothing() {
        for args in [
            ["saga", "stuck", "--limit", "0"],
            ["saga", "stuck", "--limit=-1", ""],
            ["saga", "stuck", "--older-than", "9999999999d"],
        ] {
            let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
            let err = parse(&args).err().unwrap_or_default();
            assert!(
                err.contains("--limit") || err.contains("--older-than"),
                "{args:?} refused by name: {err:?}"
            );
        }
        assert!(parse(&["saga", "stuck", "--limit", "1", "--older-than", "3650d"]).is_ok());
    }
}
