//! [`TestSystem`]: each test's own world on the real servers, and its
//! lifecycle (start, stop, clean up).
//!
//! A fresh Postgres database (one schema per service, as in production), a
//! unique namespace for JetStream streams, subjects and Redis keys, and the
//! four services running in this process on free ports, exactly as `sagactl
//! up` runs them (or as separate processes, see [`crate::processes`]).
//! Everything it created is removed when it stops (or is dropped).

use std::time::Duration;

use async_nats::jetstream;
use fred::prelude::*;
use saga_shared::auth::{Minter, Role};
use saga_shared::bus::Namespace;
use sagactl::client::{Clients, Urls};
use sagactl::system::{Endpoints, System, SystemConfig};
use sqlx::PgPool;
use uuid::Uuid;

use crate::processes;

/// Where the servers are (overridable for other machines).
pub fn pg_base() -> String {
    std::env::var("SAGA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}
/// A connection of its own to a service's database, its schema first on
/// the search path (for a test that writes as the service does).
pub async fn connect_to_schema(
    db: &saga_shared::config::DatabaseConfig,
) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::Connection;
    let options: sqlx::postgres::PgConnectOptions = db.url.parse()?;
    Ok(
        sqlx::PgConnection::connect_with(&options.options([("search_path", db.schema.as_str())]))
            .await?,
    )
}

pub fn redis_url() -> String {
    std::env::var("SAGA_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}
fn nats_url() -> String {
    std::env::var("SAGA_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
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
                // Best effort: a namespace's keys are unique to it.
                let _ = saga_shared::redis::delete_matching(&pool, &pattern).await;
            }
        }
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", pg_base())).await {
            let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db_name);
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
            admin.close().await;
        }
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
    /// An admin's clients.
    pub clients: Clients,
    /// Mints tokens the services accept (unless a test changed their auth
    /// settings): see [`TestSystem::clients_as`].
    pub minter: Minter,
    pub urls: Urls,
    pub order: Endpoints,
    pub inventory: Endpoints,
    pub payment: Endpoints,
    pub reservation: Endpoints,
    /// The settings the services run with.
    pub config: SystemConfig,
    /// Each service's own database (wherever its settings point), with its
    /// schema on the search path.
    pub(crate) service_dbs: Vec<PgPool>,
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
        Self::launch(tweak, 0).await
    }

    /// The four services as separate processes (their real binaries), which
    /// the test may kill and restart: see [`TestSystem::processes`].
    pub async fn start_processes(tweak: impl FnOnce(&mut SystemConfig)) -> anyhow::Result<Self> {
        Self::launch(tweak, 1).await
    }

    /// Like [`TestSystem::start_processes`], with `count` processes of every
    /// service competing for the same streams and databases. The clients
    /// call instance 0; [`processes::Processes::instances`] has the others.
    pub async fn start_instances(
        count: usize,
        tweak: impl FnOnce(&mut SystemConfig),
    ) -> anyhow::Result<Self> {
        Self::launch(tweak, count.max(1)).await
    }

    /// Clients whose calls carry a token for `subject` as `role`.
    pub fn clients_as(&self, subject: &str, role: Role) -> anyhow::Result<Clients> {
        let token = self.minter.mint(subject, role, Duration::from_secs(3600))?;
        Clients::with_token(&self.urls, Some(token))
    }

    /// The service processes (for a system started with
    /// [`TestSystem::start_processes`]).
    pub fn processes(&mut self) -> &mut processes::Processes {
        self.processes
            .as_mut()
            .expect("the system was started with start_processes")
    }

    /// `processes`: how many processes of each service (0: all four in
    /// this process).
    async fn launch(
        tweak: impl FnOnce(&mut SystemConfig),
        processes: usize,
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
        let (mut cfg, minter) = cfg.with_own_secret()?;
        tweak(&mut cfg);
        let inventory_redis = cfg.inventory.redis.url.clone();

        let cleanup = Cleanup {
            db_name: db_name.clone(),
            ns: ns.clone(),
        };
        let started = if processes > 0 {
            Self::start_process_set(&mut cfg, &ns, processes)
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
            // A system served over TLS is called with order-svc's identity.
            tls: saga_shared::grpc::client_tls(&config.order.grpc)?,
        };
        let nats = saga_shared::nats::connect(&config.order.nats, "tests").await?;
        let mut service_dbs = Vec::new();
        for db in config.databases() {
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
            clients: Clients::with_token(
                &urls,
                Some(minter.mint("test-admin", Role::Admin, Duration::from_secs(24 * 3600))?),
            )?,
            minter,
            urls,
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
        count: usize,
    ) -> anyhow::Result<processes::Processes> {
        use processes::{Instance, Service};
        let mut set = processes::Processes::prepare_instances(cfg, ns, count)?;
        for service in [
            Service::Inventory,
            Service::Reservation,
            Service::Payment,
            Service::Order,
        ] {
            for index in 0..count {
                set.start(Instance { service, index }, &[]).await?;
            }
        }
        Ok(set)
    }

    pub fn namespace(&self) -> Namespace {
        Namespace::new(&self.ns).expect("test namespaces are valid")
    }

    /// Publishes `event` of `order` to its stream as a service would (a new
    /// event id, the order as correlation) and awaits the ack; returns the
    /// event id.
    pub async fn publish_event(
        &self,
        order: Uuid,
        event: saga_shared::bus::SagaEvent,
    ) -> anyhow::Result<Uuid> {
        let meta = saga_shared::bus::EventMeta::new(order, None);
        let subject = self.namespace().subject(event.event_type());
        self.js
            .publish_with_headers(
                subject,
                meta.to_headers(event.event_type()),
                event.encode().into(),
            )
            .await?
            .await?;
        Ok(meta.event_id)
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
