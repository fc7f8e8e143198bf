//! Postgres: one pool per service, its tables in the service's own schema.
//!
//! [`connect`] creates the database if asked to, pins `search_path` to the
//! schema on every pooled connection, and runs the shared bus migrations
//! (outbox, inbox, idempotency keys) and then the service's own, each tracked
//! in its own table inside the schema so that services sharing a database
//! never see each other's migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::backoff::Backoff;
use crate::config::DatabaseConfig;

mod schema;
use schema::claim_namespace;
pub use schema::{check_namespace, open_existing};

/// The bus tables every service has (see `shared/migrations`).
pub static BUS_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.url is not a valid Postgres URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("database.schema {0:?} must be 1..=48 characters of [a-z0-9_] starting with a letter")]
    Schema(String),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("schema {schema:?} is not one this build's service made: {why}")]
    NotAsBuilt { schema: String, why: String },
    #[error(
        "schema {schema:?} holds the state of namespace {recorded:?}, not {configured:?}: two \
         namespaces must not share a schema (give this one its own database or \
         database.schema; to move the state to {configured:?} on purpose, stop every instance \
         and DELETE FROM \"{schema}\".namespace_claim)"
    )]
    OtherNamespace {
        schema: String,
        recorded: String,
        configured: String,
    },
    #[error(
        "database {name:?} does not exist and could not be created ({source}); create it, \
         or give the role the right to"
    )]
    Create {
        name: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Opens the service's pool and brings its schema up to date.
pub async fn connect(cfg: &DatabaseConfig, service: &Migrator) -> Result<PgPool, DbError> {
    let options = options(cfg)?;
    if cfg.create_database {
        create_database_if_missing(&options).await?;
    }
    let pool = pool(cfg, options).await?;
    migrate(&pool, &cfg.schema, service).await?;
    Ok(pool)
}

/// Opens the service's pool for `namespace`: refuses a schema that holds
/// another namespace's state (before migrating anything), records the
/// namespace in a schema that holds none yet, then brings the schema up to
/// date as [`connect`] does.
pub async fn connect_as(
    cfg: &DatabaseConfig,
    service: &Migrator,
    namespace: &str,
) -> Result<PgPool, DbError> {
    let options = options(cfg)?;
    if cfg.create_database {
        create_database_if_missing(&options).await?;
    }
    let pool = pool(cfg, options).await?;
    claim_namespace(&pool, &cfg.schema, namespace).await?;
    migrate(&pool, &cfg.schema, service).await?;
    Ok(pool)
}

fn options(cfg: &DatabaseConfig) -> Result<PgConnectOptions, DbError> {
    if !valid_identifier(&cfg.schema) {
        return Err(DbError::Schema(cfg.schema.clone()));
    }
    PgConnectOptions::from_str(&cfg.url).map_err(DbError::Url)
}

async fn pool(cfg: &DatabaseConfig, options: PgConnectOptions) -> Result<PgPool, DbError> {
    let options = options
        .options([("search_path", cfg.schema.as_str())])
        .disable_statement_logging();
    Ok(PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
        .connect_with(options)
        .await?)
}

async fn migrate(pool: &PgPool, schema: &str, service: &Migrator) -> Result<(), DbError> {
    for (migrator, table) in [
        (&BUS_MIGRATIONS, "_sqlx_migrations_bus"),
        (service, "_sqlx_migrations"),
    ] {
        let mut migrator = Migrator {
            migrations: migrator.migrations.clone(),
            ..Migrator::DEFAULT
        };
        migrator.create_schema(format!("\"{schema}\""));
        migrator.dangerous_set_table_name(format!("\"{schema}\".{table}"));
        // Migrations a newer build applied are left alone, so that this
        // build still starts on the schema: a rolling deploy runs both
        // builds at once, and rolling it back starts the older one on the
        // newer schema. Migrations are written for that (add first, take
        // away in a later release). A migration this build knows whose
        // text changed is still refused.
        migrator.set_ignore_missing(true);
        migrator.run(pool).await?;
        let known: Vec<i64> = migrator.migrations.iter().map(|m| m.version).collect();
        let newer: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT version FROM \"{schema}\".{table} WHERE version <> ALL($1) ORDER BY version"
        )))
        .bind(&known)
        .fetch_all(pool)
        .await?;
        if !newer.is_empty() {
            tracing::warn!(
                schema,
                table,
                ?newer,
                "the schema has migrations this build does not know (applied by a newer build); \
                 starting on it"
            );
        }
    }
    Ok(())
}

/// Locks the rows of `table` whose `column` is one of `keys` (in any order,
/// repeats allowed), in the order of `column`. Transactions that each take all the rows they will change
/// this way, before changing any, never deadlock with one another (a batch
/// of events otherwise locks rows in the order its events come).
pub async fn lock_in_order<K>(
    conn: &mut PgConnection,
    table: &'static str,
    column: &'static str,
    keys: &[K],
) -> sqlx::Result<()>
where
    K: for<'q> sqlx::Encode<'q, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
        + sqlx::postgres::PgHasArrayType
        + Clone
        + Send
        + Sync
        + 'static,
{
    if keys.is_empty() {
        return Ok(());
    }
    let sql =
        format!("SELECT 1 FROM {table} WHERE {column} = ANY($1) ORDER BY {column} FOR UPDATE");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(keys.to_vec())
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the row of `table` that an order's row in `owner` names in its
/// `via` column (its wallet, its slot), if there is one: what a transaction
/// that no batch locked for does first, before it touches the order's own
/// row, so that it takes the two in a batch's order (docs/adr/0015).
pub async fn lock_named_by_order(
    conn: &mut PgConnection,
    table: &'static str,
    column: &'static str,
    owner: &'static str,
    via: &'static str,
    order: uuid::Uuid,
) -> sqlx::Result<()> {
    let sql = format!(
        "SELECT 1 FROM {table} WHERE {column} = \
         (SELECT {via} FROM {owner} WHERE order_id = $1) FOR UPDATE"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order)
        .execute(conn)
        .await?;
    Ok(())
}

/// Creates the database named in `url` if it does not exist.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let options = PgConnectOptions::from_str(url).map_err(DbError::Url)?;
    create_database_if_missing(&options).await
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), DbError> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    if !valid_database_name(&name) {
        // Leave unusual names to the operator; connecting will say if it is missing.
        return Ok(());
    }
    // Only a database that is missing needs the `postgres` database (which
    // a hardened server may not let the service's role reach). Any other
    // failure is left to the pool's connect, which retries and says why.
    match options.connect().await {
        Ok(conn) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(_) => return Ok(()),
    }
    let cannot = |source: sqlx::Error| DbError::Create {
        name: name.clone(),
        source,
    };
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(cannot)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .map_err(cannot)?;
    if !exists {
        let create = format!("CREATE DATABASE \"{name}\"");
        match sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another service created it at the same moment.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(cannot(e)),
        }
    }
    admin.close().await?;
    Ok(())
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn valid_database_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Errors that may go away if the same work is tried again.
pub trait Retryable {
    fn is_retryable(&self) -> bool;
}

impl Retryable for sqlx::Error {
    fn is_retryable(&self) -> bool {
        is_retryable(self)
    }
}

/// How many times [`retry`] tries.
pub const RETRY_ATTEMPTS: u32 = 5;

/// Runs `work` until it succeeds, fails for good, or has been tried
/// [`RETRY_ATTEMPTS`] times; between tries it waits 10 ms, 20 ms, 40 ms...
/// (each with up to as much again of random jitter, so that racing callers
/// spread out). For internal conflicts: deadlocks, serialization failures,
/// a hold fenced by a rebuild.
pub async fn retry<T, E, F, Fut>(what: &str, mut work: F) -> Result<T, E>
where
    E: Retryable + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match work().await {
            Err(e) if e.is_retryable() && attempt < RETRY_ATTEMPTS => {
                tracing::debug!(what, attempt, error = %e, "retrying after a conflict");
                metrics::counter!("saga_conflict_retries_total", "what" => what.to_owned())
                    .increment(1);
                let conflict = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
                tokio::time::sleep(conflict.jittered(attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// True when `err` is a unique-constraint violation.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.code().as_deref() == Some("23505"))
}

/// What kind of failure a database error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Two transactions collided (serialization failure, deadlock, a lock
    /// not available): the same work may succeed at once.
    Conflict,
    /// The database cannot be reached or cannot serve now (connection
    /// refused or lost, shutting down, starting up, out of connections,
    /// read-only after a failover): worth retrying once it is back.
    Unavailable,
    /// Anything else: a constraint, a missing table, bad data.
    Other,
}

/// Classifies a database error (see [`Failure`]).
pub fn classify(err: &sqlx::Error) -> Failure {
    match err {
        sqlx::Error::Database(e) => match e.code().as_deref() {
            Some("40001" | "40P01" | "55P03") => Failure::Conflict,
            // 08: connection exception; 53: insufficient resources;
            // 57P01-03: admin/crash shutdown, cannot connect now; 58: system
            // error; 25006: read-only transaction (a standby after failover);
            // 57014: query cancelled (a statement timeout).
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code.starts_with("58")
                    || code == "25006"
                    || code == "57014" =>
            {
                Failure::Unavailable
            }
            _ => Failure::Other,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Failure::Unavailable,
        _ => Failure::Other,
    }
}

/// True when `err` is worth retrying as is: a conflict, or a database that
/// cannot be reached right now.
pub fn is_retryable(err: &sqlx::Error) -> bool {
    classify(err) != Failure::Other
}

/// True when the database cannot be reached or cannot serve right now.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    classify(err) == Failure::Unavailable
}

/// A domain value stored as text. How the database spells it is the
/// store's decision, made where its SQL is: by default the value's name
/// (`strum::IntoStaticStr`, which the domain derives), or whatever
/// [`Spelled::spelling`] says if the store overrides it.
pub trait Spelled:
    Copy + PartialEq + std::fmt::Debug + Into<&'static str> + strum::VariantArray + 'static
{
    /// What the value is called in error messages ("order state").
    const WHAT: &'static str;

    /// How the database spells `self`.
    fn spelling(self) -> &'static str {
        self.into()
    }

    /// The value a database spelling stands for; a decode error naming the
    /// kind of value for a spelling no value has.
    fn read(spelling: &str) -> sqlx::Result<Self> {
        Self::VARIANTS
            .iter()
            .copied()
            .find(|value| value.spelling() == spelling)
            .ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown {} {spelling:?}", Self::WHAT).into())
            })
    }

    /// [`Spelled::read`] for a nullable column: NULL is `None`.
    fn read_optional(spelling: Option<&str>) -> sqlx::Result<Option<Self>> {
        spelling.map(Self::read).transpose()
    }
}

/// For a store's tests: the values of `T` are spelled `words`, in the
/// order they are declared (the words rows already hold: a renamed variant
/// must not change them), and each spelling reads back as its value.
pub fn assert_spelled<T: Spelled>(words: &[&str]) {
    let spelled: Vec<&str> = T::VARIANTS.iter().map(|v| v.spelling()).collect();
    assert_eq!(spelled, words, "{}", T::WHAT);
    for value in T::VARIANTS {
        assert_eq!(T::read(value.spelling()).ok(), Some(*value), "{}", T::WHAT);
    }
    assert!(T::read("no such spelling").is_err());
}
