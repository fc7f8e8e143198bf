//! Wiring one service: [`Platform::connect`] opens Postgres (schema and
//! migrations), NATS (streams), binds the gRPC and admin listeners (port 0
//! allowed) and exposes the bound addresses; the service then registers its
//! consumers and background tasks and calls [`Platform::serve`] with its
//! gRPC service. [`App::run`] serves until the shutdown future resolves and
//! then stops in order: readiness and gRPC health flip to not serving, the
//! gRPC server stops taking calls and finishes those in hand, consumers finish
//! the messages in hand, the outbox relay publishes what was committed, NATS
//! is drained and the pool closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::auth::{AuthConfig, AuthLayer, Limits, ServiceToken, Verifier, WithToken};
use crate::bus::consumer::{BusContext, Consumer, Handler};
use crate::bus::outbox::Relay;
use crate::bus::retention;
use crate::bus::streams::{StreamSetupError, ensure_streams};
use crate::bus::{Namespace, Outbox, StreamKind};
use crate::config::{BusConfig, ConfigError, DatabaseConfig, GrpcConfig, ListenConfig, NatsConfig};
use crate::db::{self, DbError};

/// How long calls in flight get to finish once a service stops, before the
/// streams still open are closed (a health Watch or a reflection session
/// never ends by itself). Within the 40 s that deploy/k8s allows a stop,
/// with the relay's lease and last round after it.
const GRPC_DRAIN: Duration = Duration::from_secs(10);
/// How long a stopping service waits for its queued NATS writes.
const FLUSH_AT_STOP: Duration = Duration::from_secs(2);

/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Nats(#[from] crate::nats::NatsError),
    #[error(transparent)]
    Streams(#[from] StreamSetupError),
    #[error(transparent)]
    Retention(#[from] crate::bus::retention::RetentionError),
    #[error(transparent)]
    Durable(#[from] crate::bus::durable::DurableError),
    #[error("Redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: fred::error::Error,
    },
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("admin server: {0}")]
    Admin(#[source] std::io::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

/// The sections of a service's configuration the platform uses.
#[derive(Clone, Copy, Debug)]
pub struct PlatformConfig<'a> {
    pub service: &'static str,
    /// The stream this service publishes to.
    pub own_stream: StreamKind,
    pub namespace: &'a str,
    pub database: &'a DatabaseConfig,
    pub nats: &'a NatsConfig,
    pub bus: &'a BusConfig,
    pub grpc: &'a GrpcConfig,
    pub admin: &'a ListenConfig,
    pub auth: &'a AuthConfig,
}

type Task = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// A service's connections and listeners, before it runs.
pub struct Platform {
    pub service: &'static str,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub outbox: Outbox,
    pub bus: BusConfig,
    /// The settings the namespace's streams are made with.
    pub streams: NatsConfig,
    pub readiness: Readiness,
    /// Checks the callers of this service's gRPC API.
    pub auth: AuthLayer,
    /// What this service's own calls to the other services carry.
    pub caller: WithToken,
    /// The TLS of those calls, for `https://` URLs.
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
    server_tls: Option<tonic::transport::ServerTlsConfig>,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    consumers: Vec<Task>,
    background: Vec<Task>,
    stopping: CancellationToken,
}

impl Platform {
    /// Cancelled when the service begins to shut down, before the gRPC
    /// server stops: long calls (server streams) end on it, so the server
    /// does not wait on them.
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Connects to Postgres and NATS, applies migrations, creates the streams
    /// and binds the listeners.
    pub async fn connect(
        cfg: PlatformConfig<'_>,
        migrations: &Migrator,
    ) -> Result<Self, PlatformError> {
        let ns = Namespace::new(cfg.namespace)?;
        cfg.bus.validate()?;
        let verifier = Verifier::from_config(cfg.auth)?;
        if verifier.is_none() {
            tracing::warn!(
                service = cfg.service,
                "authentication is off (auth.disabled): every caller is an admin"
            );
        }
        let caller = WithToken(Arc::new(ServiceToken::from_config(cfg.service, cfg.auth)?));
        let server_tls = crate::grpc::server_tls(cfg.grpc)?;
        let client_tls = crate::grpc::client_tls(cfg.grpc)?;
        retention::check(
            cfg.bus.retention_hours,
            Duration::from_secs(cfg.nats.max_age_hours.saturating_mul(3600)),
            "nats.max_age_hours",
        )?;
        cfg.nats.server_addrs()?;
        let pool = db::connect_as(cfg.database, migrations, cfg.namespace).await?;
        let nats = crate::nats::connect(cfg.nats, cfg.service).await?;
        let js = jetstream::new(nats.clone());
        ensure_streams(&js, &ns, cfg.nats).await?;
        retention::check_streams(&js, &ns, cfg.bus.retention_hours).await?;
        let grpc_listener = bind("gRPC", cfg.grpc.listen).await?;
        let admin_listener = bind("admin HTTP", cfg.admin.listen).await?;
        let mut readiness = Readiness::default();
        readiness.add("postgres", admin::postgres_check(cfg.service, pool.clone()));
        readiness.add(
            "nats",
            admin::nats_check(js.clone(), ns.stream(cfg.own_stream)),
        );
        let mut platform = Self {
            service: cfg.service,
            pool,
            nats,
            js,
            ns,
            outbox: Outbox::new(),
            bus: cfg.bus.clone(),
            streams: cfg.nats.clone(),
            readiness,
            auth: AuthLayer::new(verifier, Limits::new(cfg.auth)),
            caller,
            client_tls,
            server_tls,
            grpc_listener,
            admin_listener,
            consumers: Vec::new(),
            background: Vec::new(),
            stopping: CancellationToken::new(),
        };
        let (service, pool) = (platform.service, platform.pool.clone());
        let (hours, every) = (
            cfg.bus.retention_hours,
            Duration::from_secs(cfg.bus.purge_interval_secs),
        );
        platform.spawn_background(move |stop| retention::run(service, pool, hours, every, stop));
        Ok(platform)
    }

    /// Connects to Redis, which this service can work without: waits a
    /// moment for it, and otherwise starts anyway (the pool keeps trying).
    /// Redis shows in `/readyz` as an optional dependency. The flag says
    /// whether it answered at start.
    pub async fn connect_redis(
        &mut self,
        cfg: &crate::config::RedisConfig,
    ) -> Result<(fred::clients::Pool, bool), PlatformError> {
        let wait = std::time::Duration::from_millis(cfg.command_timeout_ms.max(1));
        let (pool, connected) = crate::redis::connect_or_keep_trying(cfg, wait)
            .await
            .map_err(|source| PlatformError::Redis {
                url: crate::config::redact_url(&cfg.url),
                source,
            })?;
        if !connected {
            tracing::warn!(
                service = self.service,
                url = %crate::config::redact_url(&cfg.url),
                "Redis does not answer; starting without it and retrying in the background"
            );
        }
        self.readiness
            .add_optional("redis", admin::redis_check(pool.clone()));
        Ok((pool, connected))
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The URL of the gRPC listener: `https://` when it serves TLS.
    pub fn grpc_url(&self) -> String {
        let scheme = if self.server_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.grpc_addr())
    }

    pub fn bus_context(&self) -> BusContext {
        BusContext {
            service: self.service,
            pool: self.pool.clone(),
            js: self.js.clone(),
            ns: self.ns.clone(),
            outbox: self.outbox.clone(),
            cfg: self.bus.clone(),
            streams: self.streams.clone(),
        }
    }

    /// Consumes each of `streams` with `handler` while the service runs: on
    /// each it creates the service's durable, or updates it to follow the
    /// configuration; fails if it differs in a way the server cannot change
    /// in place (see [`crate::bus::durable`]).
    pub async fn consume<H: Handler>(
        &mut self,
        streams: &[StreamKind],
        handler: H,
    ) -> Result<(), PlatformError> {
        let handler = Arc::new(handler);
        for stream in streams {
            let consumer = Consumer::new(self.bus_context(), *stream, handler.clone());
            consumer.ensure_durable().await?;
            self.consumers
                .push(Box::new(move |token| Box::pin(consumer.run(token))));
        }
        Ok(())
    }

    /// Runs the repair loop of a participant while the service runs (see
    /// [`crate::repair`]).
    pub fn repair<P: crate::repair::Participant>(
        &mut self,
        participant: P,
        cfg: &crate::config::RepairConfig,
    ) -> Result<(), PlatformError> {
        let outcomes = crate::repair::Outcomes::new(
            &cfg.order_url,
            self.caller.clone(),
            self.client_tls.as_ref(),
        )?;
        let (service, cfg, participant) = (self.service, cfg.clone(), Arc::new(participant));
        self.spawn_background(move |stop| {
            crate::repair::run(service, participant, outcomes, cfg, stop)
        });
        Ok(())
    }

    /// Runs `task` in the background while the service runs; it must return
    /// soon after its token is cancelled.
    pub fn spawn_background<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.background
            .push(Box::new(move |token| Box::pin(task(token))));
    }

    /// Finishes the service with its gRPC service (plus reflection); the
    /// service's name is the one `grpc.health.v1` reports.
    pub fn serve<S>(self, service: S) -> Result<App, PlatformError>
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Error = std::convert::Infallible,
                Future: Send + 'static,
                Response: axum::response::IntoResponse,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let reflection = crate::grpc::reflection()?;
        Ok(App {
            platform: self,
            routes: tonic::service::Routes::new(service).add_service(reflection),
            grpc_name: S::NAME,
        })
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, PlatformError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| PlatformError::Bind { what, addr, source })
}

/// A service ready to run.
pub struct App {
    platform: Platform,
    routes: tonic::service::Routes,
    /// The gRPC service's fully qualified name.
    grpc_name: &'static str,
}

impl App {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.platform.grpc_addr()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.platform.admin_addr()
    }

    /// See [`Platform::grpc_url`].
    pub fn grpc_url(&self) -> String {
        self.platform.grpc_url()
    }

    pub fn service(&self) -> &'static str {
        self.platform.service
    }

    /// Serves until `shutdown` resolves (or a server fails), then stops in
    /// order. Returns the first server error, if any.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), PlatformError> {
        let App {
            platform,
            routes,
            grpc_name,
        } = self;
        let Platform {
            service,
            pool,
            nats,
            js,
            ns,
            outbox,
            bus,
            streams: _,
            readiness,
            auth,
            caller: _,
            client_tls: _,
            server_tls,
            grpc_listener,
            admin_listener,
            consumers,
            background,
            stopping,
        } = platform;

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        health
            .set_service_status(grpc_name, tonic_health::ServingStatus::Serving)
            .await;

        let consumer_token = CancellationToken::new();
        let relay_token = CancellationToken::new();
        let server_token = CancellationToken::new();

        let mut workers = JoinSet::new();
        for task in consumers.into_iter().chain(background) {
            workers.spawn(task(consumer_token.clone()));
        }
        let relay = tokio::spawn(
            Relay::new(service, pool.clone(), js.clone(), ns, outbox, bus).run(relay_token.clone()),
        );
        let admin_server = tokio::spawn(admin::serve(
            service,
            admin_listener,
            readiness.clone(),
            server_token.clone(),
        ));
        let grpc_token = CancellationToken::new();
        let grpc_server = {
            let token = grpc_token.clone();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = server_tls {
                builder = builder.tls_config(tls)?;
            }
            tokio::spawn(
                builder
                    .trace_fn(crate::grpc::request_span)
                    .layer(auth)
                    .add_routes(routes.add_service(health_service))
                    .serve_with_incoming_shutdown(incoming, token.cancelled_owned()),
            )
        };
        tracing::info!(service, "started");

        let mut grpc_server = grpc_server;
        let mut early: Option<PlatformError> = None;
        tokio::select! {
            () = shutdown => {}
            res = &mut grpc_server => {
                early = Some(match res {
                    Ok(Ok(())) => PlatformError::Admin(std::io::Error::other("gRPC server stopped")),
                    Ok(Err(e)) => PlatformError::Grpc(e),
                    Err(e) => PlatformError::Admin(std::io::Error::other(e)),
                });
            }
        }
        tracing::info!(service, "shutting down");

        readiness.drain();
        stopping.cancel();
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health
            .set_service_status(grpc_name, tonic_health::ServingStatus::NotServing)
            .await;
        grpc_token.cancel();
        if early.is_none() {
            // Calls in flight get GRPC_DRAIN to finish; streams that nothing
            // ends (a health Watch, a reflection session) are then closed.
            match tokio::time::timeout(GRPC_DRAIN, &mut grpc_server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => early = Some(PlatformError::Grpc(e)),
                Ok(Err(e)) => tracing::error!(service, error = %e, "gRPC server task failed"),
                Err(_) => {
                    tracing::warn!(
                        service,
                        drain_secs = GRPC_DRAIN.as_secs(),
                        "gRPC calls still open after the drain (watch or reflection streams); closing them"
                    );
                    grpc_server.abort();
                }
            }
        }

        consumer_token.cancel();
        while let Some(done) = workers.join_next().await {
            if let Err(e) = done {
                tracing::error!(service, error = %e, "a background task failed");
            }
        }
        relay_token.cancel();
        if let Err(e) = relay.await {
            tracing::error!(service, error = %e, "outbox relay failed");
        }
        // Acks, naks and the relay's last publishes are queued writes:
        // flushed before the connection closes, or a process that exits
        // next drops them (the messages are then redelivered only after
        // ack_wait). `drain` only asks for the close.
        match tokio::time::timeout(FLUSH_AT_STOP, nats.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(service, error = %e, "flushing NATS failed"),
            Err(_) => tracing::warn!(service, "flushing NATS took too long"),
        }
        if let Err(e) = nats.drain().await {
            tracing::warn!(service, error = %e, "draining NATS failed");
        }
        server_token.cancel();
        match admin_server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if early.is_none() => early = Some(PlatformError::Admin(e)),
            Ok(Err(_)) => {}
            Err(e) => tracing::error!(service, error = %e, "admin server task failed"),
        }
        pool.close().await;
        tracing::info!(service, "stopped");
        match early {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Resolves on SIGINT or SIGTERM (for `main`).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
