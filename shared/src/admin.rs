//! The admin HTTP port: `/healthz` (the process answers), `/readyz` (every
//! dependency answers now; JSON detail, 503 when not ready or shutting down)
//! and `/metrics` (Prometheus text).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A named dependency check: `Ok(detail)` when usable, `Err(why)` when not.
pub type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` asks.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, bool, CheckFn)>,
    draining: Arc<AtomicBool>,
}

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub ok: bool,
    /// A failing critical check makes the service not ready; a failing
    /// optional one only degrades it (it has a fallback).
    pub critical: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub service: &'static str,
    pub ready: bool,
    /// An optional dependency is failing; the service works around it.
    pub degraded: bool,
    pub checks: BTreeMap<&'static str, CheckResult>,
}

impl Readiness {
    /// A dependency the service cannot work without.
    pub fn add(&mut self, name: &'static str, check: CheckFn) {
        self.checks.push((name, true, check));
    }

    /// A dependency the service can work around (shown, not required).
    pub fn add_optional(&mut self, name: &'static str, check: CheckFn) {
        self.checks.push((name, false, check));
    }

    /// From now on the service reports not ready (shutting down).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Runs every check (concurrently, each with a timeout).
    pub async fn report(&self, service: &'static str) -> Report {
        let results =
            futures::future::join_all(self.checks.iter().map(|(name, critical, check)| {
                let fut = check();
                let critical = *critical;
                async move {
                    let (ok, detail) = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
                        Ok(Ok(detail)) => (true, detail),
                        Ok(Err(detail)) => (false, detail),
                        Err(_) => (false, format!("no answer within {CHECK_TIMEOUT:?}")),
                    };
                    (
                        *name,
                        CheckResult {
                            ok,
                            critical,
                            detail,
                        },
                    )
                }
            }))
            .await;
        let mut checks: BTreeMap<_, _> = results.into_iter().collect();
        let draining = self.draining.load(Ordering::SeqCst);
        if draining {
            checks.insert(
                "lifecycle",
                CheckResult {
                    ok: false,
                    critical: true,
                    detail: "shutting down".into(),
                },
            );
        }
        Report {
            service,
            ready: checks.values().all(|c| c.ok || !c.critical),
            degraded: checks.values().any(|c| !c.ok && !c.critical),
            checks,
        }
    }
}

#[derive(Clone)]
struct AdminState {
    service: &'static str,
    readiness: Readiness,
}

/// Serves the admin endpoints on `listener` until `shutdown`.
pub async fn serve(
    service: &'static str,
    listener: TcpListener,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { service, readiness });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let report = state.readiness.report(state.service).await;
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report))
}

async fn metrics() -> impl IntoResponse {
    let handle = crate::telemetry::prometheus();
    handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle.render(),
    )
}

/// Checks that Postgres answers, on a connection of the check's own (made
/// with the pool's settings, named `<service> readyz` in
/// `pg_stat_activity`): a pool whose every connection is busy is a service
/// under load, not a Postgres that is down.
pub fn postgres_check(service: &'static str, pool: sqlx::PgPool) -> CheckFn {
    use sqlx::PgConnection;
    let own: Arc<tokio::sync::Mutex<Option<PgConnection>>> = Arc::default();
    Arc::new(move || {
        let (pool, own) = (pool.clone(), own.clone());
        Box::pin(async move {
            let mut own = own.lock().await;
            // Taken out while in use: a check cut off by its time limit
            // drops the connection with it (it may be mid-statement), and
            // the next check opens another.
            let kept = own.take();
            let reused = kept.is_some();
            let answer = match kept {
                Some(conn) => select_one(conn).await,
                None => select_one(connect(service, &pool).await?).await,
            };
            let conn = match answer {
                Ok(conn) => conn,
                // A kept connection may have died in between (Postgres
                // restarted, an idle timeout): one more try on a new one.
                Err(_) if reused => select_one(connect(service, &pool).await?).await?,
                Err(e) => return Err(e),
            };
            *own = Some(conn);
            Ok(format!(
                "pool: {} connections, {} idle",
                pool.size(),
                pool.num_idle()
            ))
        })
    })
}

async fn connect(service: &str, pool: &sqlx::PgPool) -> Result<sqlx::PgConnection, String> {
    use sqlx::ConnectOptions;
    let options = (*pool.connect_options())
        .clone()
        .application_name(&format!("{service} readyz"));
    options.connect().await.map_err(|e| e.to_string())
}

async fn select_one(mut conn: sqlx::PgConnection) -> Result<sqlx::PgConnection, String> {
    sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Checks that the NATS connection is up and JetStream answers for `stream`
/// (`STREAM.INFO`: the account-info reply of nats-server 2.9 does not parse
/// with this client, stream info does on every version).
pub fn nats_check(js: async_nats::jetstream::Context, stream: String) -> CheckFn {
    Arc::new(move || {
        let js = js.clone();
        let stream = stream.clone();
        Box::pin(async move {
            let state = js.client().connection_state();
            if state != async_nats::connection::State::Connected {
                return Err(format!("connection {state}"));
            }
            let mut s = js
                .get_stream(&stream)
                .await
                .map_err(|e| format!("JetStream, stream {stream}: {e}"))?;
            let info = s
                .info()
                .await
                .map_err(|e| format!("JetStream, stream {stream}: {e}"))?;
            Ok(format!(
                "connected; stream {stream} holds {} messages",
                info.state.messages
            ))
        })
    })
}

/// Checks that Redis answers `PING`.
pub fn redis_check(pool: fred::clients::Pool) -> CheckFn {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            crate::redis::ping(&pool)
                .await
                .map(|()| "PONG".to_owned())
                .map_err(|e| e.to_string())
        })
    })
}

/// Binds a listener (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
