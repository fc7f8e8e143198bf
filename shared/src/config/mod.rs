//! Typed configuration shared by the services.
//!
//! Each service has one settings struct built from these sections. Values come
//! from, in order: the struct's defaults (which run against local NATS,
//! Postgres and Redis with no configuration), an optional TOML file, then
//! environment variables with the service's prefix and `__` between levels,
//! e.g. `ORDER_SVC__DATABASE__URL` or `INVENTORY_SVC__GRPC__LISTEN`.
//! Unknown keys are an error, so a misspelt variable does not pass silently.

mod redact;

pub use redact::redact_url;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("configuration: {field}: {message}")]
    Invalid { field: String, message: String },
}

/// Loads `T` from its defaults, then `file` (TOML) if given, then environment
/// variables starting with `env_prefix` (for example `ORDER_SVC__`).
pub fn load<T>(env_prefix: &str, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment = figment.merge(Env::prefixed(env_prefix).split("__"));
    figment
        .extract()
        .map_err(|e| ConfigError::Figment(Box::new(e)))
}

/// Postgres connection for one service. Every service keeps its tables in its
/// own schema; they may share one database.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL. The database is created if it does not exist and
    /// `create_database` is set.
    pub url: String,
    /// Schema holding this service's tables (created by the migrations).
    pub schema: String,
    /// Maximum connections in the pool.
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection, in milliseconds.
    pub acquire_timeout_ms: u64,
    /// Create the database named in `url` when it is missing.
    pub create_database: bool,
}

impl DatabaseConfig {
    /// Defaults for a service whose tables live in `schema`.
    pub fn with_schema(schema: &str) -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/saga".into(),
            schema: schema.into(),
            max_connections: 16,
            acquire_timeout_ms: 10_000,
            create_database: true,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self::with_schema("public")
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_ms", &self.acquire_timeout_ms)
            .field("create_database", &self.create_database)
            .finish()
    }
}

/// NATS connection.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated.
    pub url: String,
    /// Replicas for the streams this service creates (1 on a single server,
    /// 3 on a cluster).
    pub replicas: usize,
    /// Publish duplicate window of the streams, in seconds.
    pub duplicate_window_secs: u64,
    /// How long an event is kept in the streams, in hours (0: forever).
    pub max_age_hours: u64,
    /// User and password (also read from the URL, `nats://user:pass@host`,
    /// when these are empty).
    pub user: String,
    pub password: String,
    /// An authentication token.
    pub token: String,
    /// A `.creds` file (a user JWT and its NKey seed).
    pub credentials_file: Option<std::path::PathBuf>,
    /// PEM CA the server's certificate must chain to; with it, TLS is
    /// required.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for a server that verifies clients.
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Refuse a connection without TLS (also implied by `tls://` URLs and
    /// by `tls_ca_file`).
    pub require_tls: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            replicas: 1,
            duplicate_window_secs: 120,
            max_age_hours: 24 * 7,
            user: String::new(),
            password: String::new(),
            token: String::new(),
            credentials_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            require_tls: false,
        }
    }
}

impl NatsConfig {
    /// The servers of `url`, a comma-separated list.
    pub fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, ConfigError> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| ConfigError::Invalid {
                        field: "nats.url".into(),
                        message: format!("{}: {e}", redact_url(u)),
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|addrs| {
                if addrs.is_empty() {
                    Err(ConfigError::Invalid {
                        field: "nats.url".into(),
                        message: "no server given".into(),
                    })
                } else {
                    Ok(addrs)
                }
            })
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact_url(&self.url))
            .field("replicas", &self.replicas)
            .field("duplicate_window_secs", &self.duplicate_window_secs)
            .field("max_age_hours", &self.max_age_hours)
            .field("user", &self.user)
            .field("password", &redact::secret(&self.password))
            .field("token", &redact::secret(&self.token))
            .field("credentials_file", &self.credentials_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("require_tls", &self.require_tls)
            .finish()
    }
}

/// Redis connection.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `redis-cluster://...`).
    pub url: String,
    /// Per-command timeout in milliseconds (scripts included).
    pub command_timeout_ms: u64,
    /// Connections in the client pool.
    pub pool_size: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            command_timeout_ms: 2_000,
            pool_size: 4,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// A listening socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
}

impl ListenConfig {
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self::on_port(0)
    }
}

/// The gRPC listener, and TLS for it and for this service's calls of the
/// others.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// PEM certificate chain and private key: serve over TLS (plaintext
    /// while unset). The service presents the same identity as its client
    /// certificate when it calls another over `https://`.
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// PEM CA: every caller must present a client certificate it signed
    /// (mutual TLS).
    pub tls_client_ca_file: Option<std::path::PathBuf>,
    /// PEM CA this service trusts when it calls another over `https://`.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl GrpcConfig {
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: ListenConfig::on_port(port).listen,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_ca_file: None,
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self::on_port(0)
    }
}

/// How events are consumed and published.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Messages handled in one database transaction (1: one transaction per
    /// event). A failed batch is retried one event at a time.
    pub batch_size: usize,
    /// Batches handled at once by one consumer.
    pub concurrency: usize,
    /// Messages a pull request asks the server for.
    pub fetch_size: usize,
    /// Unexpected failures (neither a dependency outage or conflict nor
    /// invalid content) of one message before it goes to the DLQ, counted
    /// by the instance handling it. A dependency outage or a conflict is
    /// retried however long it lasts and does not count, and invalid
    /// content goes to the DLQ at once. The consumer enforces this
    /// bound itself; the server's is unlimited, so a message is never
    /// dropped before its DLQ copy is stored.
    pub max_deliver: i64,
    /// Seconds the server waits for an ack before redelivering. A message in
    /// a consumer's hands (waiting or being handled) is reported in progress
    /// every third of this, so it bounds how long a message held by a
    /// process that died waits before another instance gets it.
    pub ack_wait_secs: u64,
    /// First delay before a message that failed transiently is redelivered,
    /// in milliseconds; doubled each delivery up to `nak_max_delay_ms`.
    pub nak_base_delay_ms: u64,
    pub nak_max_delay_ms: u64,
    /// Outbox rows the relay publishes per round.
    pub relay_batch_size: i64,
    /// How often the relay looks for rows written by other instances, in
    /// milliseconds (rows written by this process wake it at once).
    pub relay_poll_ms: u64,
    /// How long one relay round may take to publish its batch and collect
    /// the acks, in seconds. Its rows stay locked meanwhile (a relay that
    /// dies lets go of them at once); a round that runs out of time leaves
    /// them for the next round.
    pub relay_lease_secs: u64,
    /// How long the inbox (`processed_events`), published outbox rows and
    /// idempotency keys are kept, in hours (0: forever). Never shorter than
    /// the streams' `max_age` (a service refuses to start otherwise), so an
    /// event a stream still holds is still recognised on replay. (Formerly
    /// `outbox_retention_hours`, which covered the outbox only; that name is
    /// now refused as unknown, so an old setting cannot pass silently.)
    pub retention_hours: u64,
    /// How often rows past retention are purged, in seconds (0: never).
    pub purge_interval_secs: u64,
    /// How often each consumer walks its stream to move its replay
    /// checkpoint (see `bus::checkpoint`), in seconds (0: only when
    /// `sagactl replay` asks).
    pub checkpoint_interval_secs: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            batch_size: 16,
            concurrency: 32,
            fetch_size: 256,
            max_deliver: 8,
            ack_wait_secs: 5,
            nak_base_delay_ms: 200,
            nak_max_delay_ms: 10_000,
            relay_batch_size: 256,
            relay_poll_ms: 250,
            relay_lease_secs: 10,
            // A day more than the streams' default max_age.
            retention_hours: 24 * 8,
            purge_interval_secs: 600,
            checkpoint_interval_secs: 60,
        }
    }
}

impl BusConfig {
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }

    /// Messages the server lets one durable have unacknowledged, across
    /// its instances.
    pub fn max_ack_pending(&self) -> i64 {
        (self.concurrency * self.batch_size * 4).max(1024) as i64
    }

    /// The delay before redelivery after the `delivered`-th failed attempt.
    pub fn nak_delay(&self, delivered: i64) -> Duration {
        crate::backoff::Backoff::new(
            Duration::from_millis(self.nak_base_delay_ms),
            Duration::from_millis(self.nak_max_delay_ms),
        )
        .delay(delivered.clamp(1, 20) as u32)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        // Upper bounds keep every product the bus computes (max ack pending,
        // a lease plus its margin, a delay times three) in range, and what
        // it hands Postgres and NATS within what they take: a lease goes to
        // Postgres in milliseconds as an int4.
        Bounds::new()
            .check("bus.batch_size", self.batch_size, 1, 1_000)
            .check("bus.concurrency", self.concurrency, 1, 1_000)
            .check("bus.fetch_size", self.fetch_size, 1, 10_000)
            .check("bus.max_deliver", self.max_deliver, 1, i64::MAX)
            .check("bus.relay_batch_size", self.relay_batch_size, 1, 10_000)
            .check("bus.ack_wait_secs", self.ack_wait_secs, 1, DAY_SECS)
            .check("bus.nak_base_delay_ms", self.nak_base_delay_ms, 1, DAY_MS)
            .check("bus.nak_max_delay_ms", self.nak_max_delay_ms, 1, DAY_MS)
            .check("bus.relay_poll_ms", self.relay_poll_ms, 0, DAY_MS)
            // 0 counts as 1 (as it always has).
            .check("bus.relay_lease_secs", self.relay_lease_secs, 0, DAY_SECS)
            .done()
    }
}

/// A day, in seconds and in milliseconds: the usual upper bound of a
/// duration setting.
pub const DAY_SECS: u64 = 86_400;
pub const DAY_MS: u64 = DAY_SECS * 1_000;

/// Range checks of numeric settings, in order; the first setting out of
/// its range is the error, named, with its range and the value given.
#[derive(Debug, Default)]
#[must_use = "call done() for the result"]
pub struct Bounds {
    first_error: Option<ConfigError>,
}

impl Bounds {
    pub fn new() -> Self {
        Self::default()
    }

    /// `field` (as in the configuration, e.g. `bus.batch_size`) must be in
    /// `min..=max`.
    pub fn check<T: Into<i128>>(
        mut self,
        field: &str,
        value: impl TryInto<i128>,
        min: T,
        max: T,
    ) -> Self {
        let (min, max) = (min.into(), max.into());
        if self.first_error.is_none() {
            let value = value.try_into().ok();
            if !value.is_some_and(|v| (min..=max).contains(&v)) {
                let given =
                    value.map_or_else(|| "a value beyond any range".to_owned(), |v| v.to_string());
                self.first_error = Some(ConfigError::Invalid {
                    field: field.into(),
                    message: format!("must be between {min} and {max}, got {given}"),
                });
            }
        }
        self
    }

    pub fn done(self) -> Result<(), ConfigError> {
        self.first_error.map_or(Ok(()), Err)
    }
}

/// A setting's name, and a change of a configuration that puts it out of
/// range (for [`assert_refused_by_name`]).
pub type OutOfRange<C> = (&'static str, fn(&mut C));

/// For a configuration's tests: each of `cases` (a setting's name, and a
/// change that puts it out of range) makes `check` refuse the defaults so
/// changed, naming that setting; the defaults themselves pass.
pub fn assert_refused_by_name<C: Default>(
    cases: &[OutOfRange<C>],
    check: impl Fn(&C) -> Result<(), ConfigError>,
) {
    for (field, set) in cases {
        let mut cfg = C::default();
        set(&mut cfg);
        match check(&cfg) {
            Err(ConfigError::Invalid {
                field: named,
                message,
            }) => {
                assert_eq!(&named, field, "{message}");
                assert!(message.starts_with("must be"), "{field}: {message}");
            }
            other => panic!("{field} out of range: {other:?}"),
        }
    }
    assert!(check(&C::default()).is_ok(), "the defaults pass");
}

/// The repair loop of a participant (inventory, payment, reservation): it
/// finds the orders whose records here are still open after a while, asks
/// order-svc how those sagas ended, and finishes them (see
/// [`crate::repair`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepairConfig {
    /// order-svc's gRPC address, asked how sagas ended.
    pub order_url: String,
    /// How often open records are looked for, in milliseconds (0: never).
    pub interval_ms: u64,
    /// A record is looked at once it has been open this long, in seconds.
    pub after_secs: u64,
    /// Orders asked about per request (at most 500).
    pub batch_size: usize,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            order_url: "http://127.0.0.1:50051".into(),
            interval_ms: 5_000,
            after_secs: 30,
            batch_size: 500,
        }
    }
}

/// Logs and traces.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `json` (default) or `pretty`.
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax; `RUST_LOG` overrides it.
    pub log_filter: String,
    /// OTLP/gRPC endpoint for traces (e.g. `http://127.0.0.1:4317`). Off when
    /// empty; `OTEL_EXPORTER_OTLP_ENDPOINT` also switches it on.
    pub otlp_endpoint: String,
    /// Fraction of new traces sampled (0.0..=1.0); a sampled parent is followed.
    pub sample_ratio: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
        }
    }
}

/// Checks a namespace: 1..=32 characters of `[a-z0-9_]`, starting with a letter.
/// It prefixes stream names, subjects and Redis keys.
pub fn validate_namespace(ns: &str) -> Result<(), ConfigError> {
    let ok = !ns.is_empty()
        && ns.len() <= 32
        && ns.starts_with(|c: char| c.is_ascii_lowercase())
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: "namespace".into(),
            message: format!(
                "{ns:?} must be 1..=32 characters of [a-z0-9_] starting with a letter"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nak_delay_doubles_up_to_the_cap() {
        let bus = BusConfig::default();
        assert_eq!(bus.nak_delay(1), Duration::from_millis(200));
        assert_eq!(bus.nak_delay(2), Duration::from_millis(400));
        assert_eq!(bus.nak_delay(30), Duration::from_millis(10_000));
    }

    /// Settings the bus would overflow on, or hand to Postgres or NATS out
    /// of their range, are refused by name. A relay lease past 24.8 days
    /// used to be taken: Postgres refused the lease every round, so nothing
    /// was ever published (and past u64::MAX - 5 s the relay panicked).
    #[test]
    fn bus_settings_out_of_range_are_refused_by_name() {
        let cases: [OutOfRange<BusConfig>; 11] = [
            ("bus.relay_lease_secs", |b| b.relay_lease_secs = 2_200_000),
            ("bus.relay_lease_secs", |b| b.relay_lease_secs = u64::MAX),
            ("bus.max_deliver", |b| b.max_deliver = -3),
            ("bus.ack_wait_secs", |b| b.ack_wait_secs = u64::MAX),
            ("bus.nak_max_delay_ms", |b| b.nak_max_delay_ms = u64::MAX),
            ("bus.nak_base_delay_ms", |b| b.nak_base_delay_ms = u64::MAX),
            ("bus.concurrency", |b| b.concurrency = usize::MAX),
            ("bus.nak_base_delay_ms", |b| {
                b.nak_base_delay_ms = 90_000_000;
            }),
            ("bus.batch_size", |b| b.batch_size = usize::MAX / 2),
            ("bus.fetch_size", |b| b.fetch_size = 0),
            // A failing event put back at once, over and over.
            ("bus.nak_base_delay_ms", |b| b.nak_base_delay_ms = 0),
        ];
        assert_refused_by_name(&cases, BusConfig::validate);
        let widest = BusConfig {
            relay_lease_secs: 86_400,
            ack_wait_secs: 86_400,
            ..BusConfig::default()
        };
        assert!(widest.validate().is_ok());
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(validate_namespace("saga").is_ok());
        assert!(validate_namespace("t_0a1b").is_ok());
        for bad in ["", "Saga", "1abc", "a.b", "a-b", &"x".repeat(33)] {
            assert!(validate_namespace(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn retention_is_read_and_its_former_name_is_refused_by_name() {
        #[derive(Default, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct Settings {
            bus: BusConfig,
        }
        let dir = std::env::temp_dir().join(format!("retention-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let load_toml = |text: &str| {
            let file = dir.join("settings.toml");
            std::fs::write(&file, text).unwrap();
            load::<Settings>("RETENTION_TEST_UNSET__", Some(&file))
        };
        let old = load_toml("[bus]\noutbox_retention_hours = 300\n")
            .err()
            .expect("the former name is refused");
        assert!(old.to_string().contains("outbox_retention_hours"), "{old}");
        let new = load_toml("[bus]\nretention_hours = 400\n").unwrap();
        assert_eq!(new.bus.retention_hours, 400);
        assert_eq!(Settings::default().bus.retention_hours, 24 * 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
