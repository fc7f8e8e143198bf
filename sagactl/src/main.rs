//! `sagactl`: run the saga services and talk to them.
//!
//! `sagactl up` runs all four services in this process against the local
//! NATS, Postgres and Redis; the other commands are gRPC clients of running
//! services (the defaults match `up`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use saga_shared::config::{LogFormat, TelemetryConfig};
use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::order::v1 as ord;
use saga_shared::proto::payment::v1 as pay;
use saga_shared::proto::reservation::v1 as rsv;
use sagactl::client::{Clients, Urls};
use sagactl::show;
use sagactl::system::{System, SystemConfig};

#[derive(Parser)]
#[command(name = "sagactl", version, about = "Run and operate the saga services")]
struct Cli {
    #[command(flatten)]
    urls: UrlArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct UrlArgs {
    /// order-svc gRPC address.
    #[arg(
        long,
        env = "SAGACTL_ORDER_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    order_url: String,
    /// inventory-svc gRPC address.
    #[arg(
        long,
        env = "SAGACTL_INVENTORY_URL",
        default_value = "http://127.0.0.1:50052",
        global = true
    )]
    inventory_url: String,
    /// payment-svc gRPC address.
    #[arg(
        long,
        env = "SAGACTL_PAYMENT_URL",
        default_value = "http://127.0.0.1:50053",
        global = true
    )]
    payment_url: String,
    /// reservation-svc gRPC address.
    #[arg(
        long,
        env = "SAGACTL_RESERVATION_URL",
        default_value = "http://127.0.0.1:50054",
        global = true
    )]
    reservation_url: String,
}

#[derive(Subcommand)]
enum Command {
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
}

#[derive(Subcommand)]
enum DlqCmd {
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
    },
}

#[derive(Subcommand)]
enum BenchCmd {
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
        strategies: Vec<sagactl::bench::reserve::Strategy>,
        /// Scenarios to run (default: hot and spread).
        #[arg(long = "scenario", value_enum)]
        scenarios: Vec<sagactl::bench::reserve::Scenario>,
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
enum InventoryCmd {
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
enum StockCmd {
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
enum WalletCmd {
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
enum SlotCmd {
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
enum OrderCmd {
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
}

fn with_key<T>(message: T, key: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert(
            saga_shared::idempotency::METADATA_KEY,
            key.parse()
                .context("the idempotency key must be printable ASCII")?,
        );
    }
    Ok(request)
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn parse_item(item: &str) -> anyhow::Result<ord::LineItem> {
    let (sku, qty) = item
        .rsplit_once(':')
        .with_context(|| format!("--item {item:?}: expected SKU:QUANTITY"))?;
    let quantity = qty
        .parse()
        .with_context(|| format!("--item {item:?}: quantity {qty:?} is not a whole number"))?;
    Ok(ord::LineItem {
        sku: sku.to_owned(),
        quantity,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let urls = Urls {
        order: cli.urls.order_url,
        inventory: cli.urls.inventory_url,
        payment: cli.urls.payment_url,
        reservation: cli.urls.reservation_url,
    };
    match cli.command {
        Command::Up {
            namespace,
            log_format,
        } => up(namespace, &log_format).await,
        Command::Inventory(InventoryCmd::Reconcile { skus, namespace }) => {
            reconcile(skus, namespace).await
        }
        Command::Dlq {
            command,
            nats_url,
            namespace,
        } => dlq(command, &nats_url, &namespace).await,
        Command::Audit { namespace } => {
            let mut cfg = SystemConfig::from_env()?;
            if let Some(ns) = namespace {
                cfg = cfg.with_namespace(&ns);
            }
            let auditor = sagactl::audit::Auditor::connect(&cfg).await?;
            let report = auditor.audit().await?;
            print!("{}", report.render());
            auditor.close().await;
            if !report.is_clean() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Bench(BenchCmd::Reserve {
            concurrency,
            rounds,
            requests,
            spread_skus,
            strategies,
            scenarios,
            database_url,
            redis_url,
            json,
        }) => {
            use sagactl::bench::reserve::{self, Options, Scenario, Strategy};
            if concurrency == 0 || requests < 2 || spread_skus == 0 || rounds == 0 {
                bail!(
                    "--concurrency, --rounds and --spread-skus must be at least 1, --requests at least 2"
                );
            }
            let opts = Options {
                database_url,
                redis_url,
                concurrency,
                requests,
                spread_skus,
                strategies: if strategies.is_empty() {
                    Strategy::ALL.to_vec()
                } else {
                    strategies
                },
                scenarios: if scenarios.is_empty() {
                    vec![Scenario::Hot, Scenario::Spread]
                } else {
                    scenarios
                },
                rounds,
            };
            let results = reserve::run(&opts).await?;
            let ratio = reserve::hot_ratio(&results.medians);
            if let Some(r) = ratio {
                println!("Redis Lua / SELECT ... FOR UPDATE at the hot SKU: {r:.1}x");
            }
            let report = serde_json::json!({
                "benchmark": "reserve",
                "run_at": chrono::Utc::now().to_rfc3339(),
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "concurrency": concurrency,
                "requests": requests,
                "spread_skus": spread_skus,
                "rounds": rounds,
                "hot_lua_over_for_update": ratio,
                "medians": results.medians,
                "runs": results.runs,
            });
            if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&json, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", json.display()))?;
            println!("wrote {}", json.display());
            Ok(())
        }
        command => {
            let clients = Clients::new(&urls)?;
            run(clients, command).await
        }
    }
}

async fn up(namespace: Option<String>, log_format: &str) -> anyhow::Result<()> {
    let telemetry = TelemetryConfig {
        log_format: match log_format {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => bail!("--log-format {other:?}: expected pretty or json"),
        },
        ..TelemetryConfig::default()
    };
    let _telemetry = saga_shared::telemetry::init("sagactl", &telemetry);
    let mut cfg = SystemConfig::from_env()?;
    if let Some(ns) = namespace {
        cfg = cfg.with_namespace(&ns);
    }
    let mut system = System::start(cfg).await?;
    println!("saga services running (Ctrl-C to stop):");
    for (name, e) in [
        ("order-svc", system.order),
        ("inventory-svc", system.inventory),
        ("payment-svc", system.payment),
        ("reservation-svc", system.reservation),
    ] {
        println!("  {name:<16} gRPC {:<22} admin http://{}", e.grpc, e.admin);
    }
    println!("try: sagactl demo");
    tokio::select! {
        () = saga_shared::runtime::shutdown_signal() => {
            println!("stopping...");
            system.stop().await
        }
        exited = system.exited() => {
            match exited {
                Some((name, Err(e))) => bail!("{name} failed: {e}"),
                Some((name, Ok(()))) => bail!("{name} stopped"),
                None => Ok(()),
            }
        }
    }
}

async fn dlq(command: DlqCmd, nats_url: &str, namespace: &str) -> anyhow::Result<()> {
    use sagactl::dlq;
    let ns = saga_shared::bus::Namespace::new(namespace)?;
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {nats_url}"))?;
    let js = async_nats::jetstream::new(client);
    match command {
        DlqCmd::List => {
            let letters = dlq::list(&js, &ns).await?;
            println!("{} dead letters in {}", letters.len(), ns.dlq_stream());
            for l in letters {
                println!(
                    "  #{:<6} {}  {} from {} #{} (delivered {}x at {}): {}",
                    l.seq,
                    l.at,
                    l.subject,
                    l.consumer,
                    l.stream_seq,
                    l.delivered,
                    l.stream,
                    l.error.chars().take(160).collect::<String>()
                );
            }
        }
        DlqCmd::Show { seq } => {
            let l = dlq::get(&js, &ns, seq).await?;
            println!("dead letter #{} ({})", l.seq, l.at);
            println!(
                "  from     {} #{} via consumer {}",
                l.stream, l.stream_seq, l.consumer
            );
            println!("  subject  {}", l.subject);
            println!("  tried    {} times", l.delivered);
            println!("  error    {}", l.error);
            println!("  headers");
            let mut names: Vec<_> = l.headers.iter().collect();
            names.sort_by_key(|(name, _)| AsRef::<str>::as_ref(*name).to_owned());
            for (name, values) in names {
                for v in values {
                    println!("    {}: {}", AsRef::<str>::as_ref(name), v.as_str());
                }
            }
            match l.decoded(&ns) {
                Ok(event) => println!("  body\n    {event:?}"),
                Err(e) => println!("  body ({} bytes) does not decode: {e}", l.payload.len()),
            }
        }
        DlqCmd::Redrive { seqs, all } => {
            let seqs = if all {
                dlq::list(&js, &ns)
                    .await?
                    .into_iter()
                    .map(|l| l.seq)
                    .collect()
            } else {
                seqs
            };
            if seqs.is_empty() {
                bail!("name the dead letters to redrive (see `sagactl dlq list`), or --all");
            }
            for seq in seqs {
                let subject = dlq::redrive(&js, &ns, seq).await?;
                println!("  #{seq} sent back to {subject}");
            }
        }
    }
    Ok(())
}

async fn reconcile(skus: Vec<String>, namespace: Option<String>) -> anyhow::Result<()> {
    let mut cfg = inventory_svc::InventoryConfig::load(None)?;
    if let Some(ns) = namespace {
        cfg.namespace = ns;
    }
    let pool = saga_shared::db::connect(&cfg.database, &inventory_svc::MIGRATIONS).await?;
    let redis = saga_shared::redis::connect(&cfg.redis)
        .await
        .context("Redis must answer to reconcile its counters")?;
    let inventory = inventory_svc::inventory(&cfg, pool, redis, true);
    let only = (!skus.is_empty()).then_some(skus.as_slice());
    let report = inventory.reconcile(only).await?;
    println!(
        "checked {} SKUs, fixed {}",
        report.checked,
        report.fixed.len()
    );
    for f in &report.fixed {
        let before = f
            .before
            .map_or_else(|| "missing".to_owned(), |b| b.to_string());
        println!(
            "  {:<16} available {before} -> {}  orphans released {}  holds restored {}  closed holds dropped {}{}",
            f.sku,
            f.after,
            f.orphans_released,
            f.restored,
            f.closed_dropped,
            if f.epoch_moved { "  (new epoch)" } else { "" }
        );
    }
    Ok(())
}

async fn run(mut c: Clients, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up { .. }
        | Command::Inventory(_)
        | Command::Bench(_)
        | Command::Audit { .. }
        | Command::Dlq { .. } => {
            unreachable!("handled in main")
        }
        Command::Demo => demo(c).await?,
        Command::Stock(cmd) => stock(&mut c, cmd).await?,
        Command::Wallet(WalletCmd::Topup {
            customer,
            amount_cents,
            idempotency_key,
        }) => {
            let req = with_key(
                pay::TopUpRequest {
                    customer_id: customer,
                    amount_cents,
                },
                idempotency_key.as_deref(),
            )?;
            let w = c.payment.top_up(req).await.map_err(status)?.into_inner();
            println!("{}", show::wallet(&w.wallet.unwrap_or_default()));
        }
        Command::Wallet(WalletCmd::Get { customer }) => {
            let w = c
                .payment
                .get_wallet(pay::GetWalletRequest {
                    customer_id: customer,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", show::wallet(&w.wallet.unwrap_or_default()));
        }
        Command::Slot(SlotCmd::Create { name, capacity }) => {
            let s = c
                .reservation
                .create_slot(rsv::CreateSlotRequest { name, capacity })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", show::slot(&s.slot.unwrap_or_default()));
        }
        Command::Slot(SlotCmd::Get { slot_id }) => {
            let s = c
                .reservation
                .get_slot(rsv::GetSlotRequest { slot_id })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", show::slot(&s.slot.unwrap_or_default()));
        }
        Command::Slot(SlotCmd::List) => {
            let mut token = String::new();
            loop {
                let page = c
                    .reservation
                    .list_slots(rsv::ListSlotsRequest {
                        page_size: 100,
                        page_token: token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for s in &page.slots {
                    println!("{}", show::slot(s));
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        Command::Order(cmd) => order(&mut c, cmd).await?,
        Command::Payment { order_id } => {
            let p = c
                .payment
                .get_payment(pay::GetPaymentRequest { order_id })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", show::payment(&p.payment.unwrap_or_default()));
        }
    }
    Ok(())
}

async fn stock(c: &mut Clients, cmd: StockCmd) -> anyhow::Result<()> {
    match cmd {
        StockCmd::Upsert {
            sku,
            name,
            price_cents,
        } => {
            let r = c
                .inventory
                .upsert_product(inv::UpsertProductRequest {
                    sku,
                    name,
                    unit_price_cents: price_cents,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", show::stock(&r.stock.unwrap_or_default()));
        }
        StockCmd::Seed {
            sku,
            name,
            price_cents,
            quantity,
        } => {
            let st = seed(c, &sku, &name, price_cents, quantity).await?;
            println!("{}", show::stock(&st));
        }
        StockCmd::Adjust {
            sku,
            delta,
            expected_version,
        } => {
            let expected_version = match expected_version {
                Some(v) => v,
                None => current(c, &sku).await?.version,
            };
            let r = c
                .inventory
                .adjust_stock(inv::AdjustStockRequest {
                    sku,
                    delta,
                    expected_version,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", show::stock(&r.stock.unwrap_or_default()));
        }
        StockCmd::Get { sku } => println!("{}", show::stock(&current(c, &sku).await?)),
        StockCmd::List => {
            let mut token = String::new();
            loop {
                let page = c
                    .inventory
                    .list_stock(inv::ListStockRequest {
                        page_size: 100,
                        page_token: token,
                        skus: vec![],
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for st in &page.stocks {
                    println!("{}", show::stock(st));
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
    }
    Ok(())
}

async fn current(c: &mut Clients, sku: &str) -> anyhow::Result<inv::Stock> {
    Ok(c.inventory
        .get_stock(inv::GetStockRequest {
            sku: sku.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner()
        .stock
        .unwrap_or_default())
}

async fn seed(
    c: &mut Clients,
    sku: &str,
    name: &str,
    price_cents: i64,
    quantity: i64,
) -> anyhow::Result<inv::Stock> {
    let st = c
        .inventory
        .upsert_product(inv::UpsertProductRequest {
            sku: sku.to_owned(),
            name: name.to_owned(),
            unit_price_cents: price_cents,
        })
        .await
        .map_err(status)?
        .into_inner()
        .stock
        .unwrap_or_default();
    if quantity == 0 {
        return Ok(st);
    }
    Ok(c.inventory
        .adjust_stock(inv::AdjustStockRequest {
            sku: sku.to_owned(),
            delta: quantity,
            expected_version: st.version,
        })
        .await
        .map_err(status)?
        .into_inner()
        .stock
        .unwrap_or_default())
}

async fn order(c: &mut Clients, cmd: OrderCmd) -> anyhow::Result<()> {
    match cmd {
        OrderCmd::Place {
            customer,
            items,
            slot,
            idempotency_key,
            wait,
        } => {
            let items = items
                .iter()
                .map(|i| parse_item(i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let req = with_key(
                ord::PlaceOrderRequest {
                    customer_id: customer,
                    items,
                    slot_id: slot,
                },
                idempotency_key.as_deref(),
            )?;
            let placed = c
                .order
                .place_order(req)
                .await
                .map_err(status)?
                .into_inner()
                .order
                .unwrap_or_default();
            println!("{}", show::order(&placed));
            if let Some(secs) = wait {
                let done = wait_for_end(c, &placed.order_id, Duration::from_secs(secs)).await?;
                println!("{}", show::order(&done));
            }
        }
        OrderCmd::Get { order_id, wait } => {
            let o = match wait {
                Some(secs) => wait_for_end(c, &order_id, Duration::from_secs(secs)).await?,
                None => get_order(c, &order_id).await?,
            };
            println!("{}", show::order(&o));
        }
        OrderCmd::List { customer, limit } => {
            let page = c
                .order
                .list_orders(ord::ListOrdersRequest {
                    page_size: limit,
                    page_token: String::new(),
                    customer_id: customer,
                    state: None,
                })
                .await
                .map_err(status)?
                .into_inner();
            for o in &page.orders {
                println!("{}", show::order(o));
            }
        }
        OrderCmd::Cancel { order_id } => {
            let o = c
                .order
                .cancel_order(ord::CancelOrderRequest { order_id })
                .await
                .map_err(status)?
                .into_inner()
                .order
                .unwrap_or_default();
            println!("{}", show::order(&o));
        }
    }
    Ok(())
}

async fn get_order(c: &mut Clients, id: &str) -> anyhow::Result<ord::Order> {
    Ok(c.order
        .get_order(ord::GetOrderRequest {
            order_id: id.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner()
        .order
        .unwrap_or_default())
}

async fn wait_for_end(c: &mut Clients, id: &str, limit: Duration) -> anyhow::Result<ord::Order> {
    let deadline = Instant::now() + limit;
    loop {
        let o = get_order(c, id).await?;
        let terminal = o.state == ord::OrderState::Confirmed as i32
            || o.state == ord::OrderState::Cancelled as i32;
        if terminal {
            return Ok(o);
        }
        if Instant::now() >= deadline {
            bail!(
                "order {id} is still {} after {limit:?}",
                show::order_state(o.state)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn demo(mut c: Clients) -> anyhow::Result<()> {
    println!("1. stock");
    for (sku, name, price) in [
        ("demo-widget", "Widget", 2_500),
        ("demo-gadget", "Gadget", 1_250),
    ] {
        let st = seed(&mut c, sku, name, price, 100).await?;
        println!("   {}", show::stock(&st));
    }
    println!("2. wallet");
    let w = c
        .payment
        .top_up(pay::TopUpRequest {
            customer_id: "demo-customer".into(),
            amount_cents: 10_000,
        })
        .await
        .map_err(status)?
        .into_inner()
        .wallet
        .unwrap_or_default();
    println!("   {}", show::wallet(&w));
    println!("3. delivery slot");
    let slot = c
        .reservation
        .create_slot(rsv::CreateSlotRequest {
            name: "demo slot".into(),
            capacity: 10,
        })
        .await
        .map_err(status)?
        .into_inner()
        .slot
        .unwrap_or_default();
    println!("   {}", show::slot(&slot));
    println!("4. order: 2 widgets, 1 gadget, in that slot");
    let started = Instant::now();
    let placed = c
        .order
        .place_order(ord::PlaceOrderRequest {
            customer_id: "demo-customer".into(),
            items: vec![
                ord::LineItem {
                    sku: "demo-widget".into(),
                    quantity: 2,
                },
                ord::LineItem {
                    sku: "demo-gadget".into(),
                    quantity: 1,
                },
            ],
            slot_id: Some(slot.slot_id.clone()),
        })
        .await
        .map_err(status)?
        .into_inner()
        .order
        .unwrap_or_default();
    println!("{}", indent(&show::order(&placed)));
    let done = wait_for_end(&mut c, &placed.order_id, Duration::from_secs(30)).await?;
    println!("5. the saga ended after {:?}", started.elapsed());
    println!("{}", indent(&show::order(&done)));
    let w = c
        .payment
        .get_wallet(pay::GetWalletRequest {
            customer_id: "demo-customer".into(),
        })
        .await
        .map_err(status)?
        .into_inner()
        .wallet
        .unwrap_or_default();
    println!("   {}", show::wallet(&w));
    for sku in ["demo-widget", "demo-gadget"] {
        println!("   {}", show::stock(&current(&mut c, sku).await?));
    }
    let slot = c
        .reservation
        .get_slot(rsv::GetSlotRequest {
            slot_id: slot.slot_id,
        })
        .await
        .map_err(status)?
        .into_inner()
        .slot
        .unwrap_or_default();
    println!("   {}", show::slot(&slot));
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("   {l}\n"))
        .collect::<String>()
        .trim_end()
        .to_owned()
}
