//! What the four services have in common, written once: the platform
//! sections of their settings ([`service_config!`]) and the way a service is
//! connected, assembled, run and started from its binary ([`Service`]).
//!
//! A service declares its settings with [`service_config!`] (which adds the
//! sections every service has) and implements [`Service::assemble`]; the
//! rest ([`Service::connect`], [`Service::build`], [`Service::run`],
//! [`Service::main`]) is provided.

use std::future::Future;
use std::path::PathBuf;

use sqlx::migrate::Migrator;

use crate::config::{ConfigError, TelemetryConfig};
use crate::runtime::{App, Platform, PlatformConfig, PlatformError};

/// A service's settings, as [`service_config!`] declares them.
pub trait ServiceConfig: std::fmt::Debug + Send + Sync + Sized + 'static {
    /// The service's name (`order-svc`), in logs, traces and metrics.
    const SERVICE: &'static str;
    /// Prefix of its environment variables (`ORDER_SVC__`).
    const ENV_PREFIX: &'static str;
    /// The variable naming an optional TOML file (`ORDER_SVC_CONFIG`).
    const FILE_VAR: &'static str;

    /// Defaults, then `file`, then the prefixed variables, then [`Check`].
    fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError>;

    /// [`ServiceConfig::load`] with the file named by [`Self::FILE_VAR`],
    /// if set.
    fn from_env() -> Result<Self, ConfigError> {
        let file = std::env::var_os(Self::FILE_VAR).map(PathBuf::from);
        Self::load(file.as_deref())
    }

    /// The sections the platform uses.
    fn platform(&self) -> PlatformConfig<'_>;

    fn telemetry(&self) -> &TelemetryConfig;
}

/// Checks of a service's settings beyond their types, run by
/// [`ServiceConfig::load`]. None by default.
pub trait Check {
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// One service: its settings, its migrations and how it assembles itself on
/// a connected platform.
pub trait Service {
    type Config: ServiceConfig;

    /// The migrations of the service's schema.
    const MIGRATIONS: &'static Migrator;

    /// The second half of [`Service::build`]: the service (consumers,
    /// background tasks, gRPC routes) on a connected platform.
    fn assemble(
        platform: Platform,
        config: Self::Config,
    ) -> impl Future<Output = Result<App, PlatformError>> + Send;

    /// The first half of [`Service::build`]: Postgres (migrated), NATS
    /// (streams) and the bound listeners, whose addresses other services may
    /// need first.
    fn connect(
        config: &Self::Config,
    ) -> impl Future<Output = Result<Platform, PlatformError>> + Send {
        Platform::connect(config.platform(), Self::MIGRATIONS)
    }

    /// Connects, migrates and binds; the returned app knows its addresses.
    fn build(config: Self::Config) -> impl Future<Output = Result<App, PlatformError>> + Send {
        async move {
            let platform = Self::connect(&config).await?;
            Self::assemble(platform, config).await
        }
    }

    /// Builds and runs the service until `shutdown` resolves.
    fn run(
        config: Self::Config,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<(), PlatformError>> + Send {
        async move { Self::build(config).await?.run(shutdown).await }
    }

    /// The binary: settings from the environment, telemetry, then
    /// [`Service::run`] until SIGINT or SIGTERM.
    fn main() -> impl Future<Output = anyhow::Result<()>> + Send {
        async {
            let config = Self::Config::from_env()?;
            let _telemetry = crate::telemetry::init(
                <Self::Config as ServiceConfig>::SERVICE,
                config.telemetry(),
            );
            tracing::info!(config = ?config, "starting");
            Self::run(config, crate::runtime::shutdown_signal()).await?;
            Ok(())
        }
    }
}

/// Declares a service's settings struct: the sections every service has
/// (`namespace`, `database`, `nats`, `grpc`, `admin`, `bus`, `telemetry`),
/// then the service's own, each of which must implement `Default`. It
/// implements `Default`, `Serialize`/`Deserialize` (unknown keys refused)
/// and [`ServiceConfig`]; the service implements [`Check`] (empty for no
/// checks).
///
/// A nested `#[serde(flatten)]` section would say the same with a generic
/// struct, but serde then loses the path and source of errors
/// (`unknown field` without saying which section or variable), so the
/// sections are spelled out by this macro instead.
#[macro_export]
macro_rules! service_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            service: $service:literal,
            env_prefix: $prefix:literal,
            file_var: $file_var:literal,
            own_stream: $stream:ident,
            schema: $schema:literal,
            grpc_port: $grpc:literal,
            admin_port: $admin:literal,
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// Prefix of stream names, subjects and Redis keys.
            pub namespace: String,
            pub database: $crate::config::DatabaseConfig,
            pub nats: $crate::config::NatsConfig,
            #[doc = concat!("gRPC listener (default 127.0.0.1:", stringify!($grpc), ").")]
            pub grpc: $crate::config::GrpcConfig,
            #[doc = concat!("Admin HTTP listener (default 127.0.0.1:", stringify!($admin), ").")]
            pub admin: $crate::config::ListenConfig,
            pub bus: $crate::config::BusConfig,
            pub telemetry: $crate::config::TelemetryConfig,
            /// Who may call the gRPC API, and the token this service sends.
            pub auth: $crate::auth::AuthConfig,
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    namespace: "saga".into(),
                    database: $crate::config::DatabaseConfig::with_schema($schema),
                    nats: Default::default(),
                    grpc: $crate::config::GrpcConfig::on_port($grpc),
                    admin: $crate::config::ListenConfig::on_port($admin),
                    bus: Default::default(),
                    telemetry: Default::default(),
                    auth: Default::default(),
                    $( $field: Default::default(), )*
                }
            }
        }

        impl $name {
            #[doc = concat!("Defaults, then `file`, then `", $prefix, "*` variables, then the service's checks.")]
            pub fn load(
                file: Option<&std::path::Path>,
            ) -> Result<Self, $crate::config::ConfigError> {
                let config: Self = $crate::config::load($prefix, file)?;
                $crate::service::Check::check(&config)?;
                Ok(config)
            }
        }

        impl $crate::service::ServiceConfig for $name {
            const SERVICE: &'static str = $service;
            const ENV_PREFIX: &'static str = $prefix;
            const FILE_VAR: &'static str = $file_var;

            fn load(
                file: Option<&std::path::Path>,
            ) -> Result<Self, $crate::config::ConfigError> {
                $name::load(file)
            }

            fn platform(&self) -> $crate::runtime::PlatformConfig<'_> {
                $crate::runtime::PlatformConfig {
                    service: $service,
                    own_stream: $crate::bus::StreamKind::$stream,
                    namespace: &self.namespace,
                    database: &self.database,
                    nats: &self.nats,
                    bus: &self.bus,
                    grpc: &self.grpc,
                    admin: &self.admin,
                    auth: &self.auth,
                }
            }

            fn telemetry(&self) -> &$crate::config::TelemetryConfig {
                &self.telemetry
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::{Check, ServiceConfig};
    use crate::config::{ConfigError, RepairConfig};

    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct OwnSettings {
        pub limit: u32,
    }

    impl Default for OwnSettings {
        fn default() -> Self {
            Self { limit: 7 }
        }
    }

    crate::service_config! {
        /// A service's settings, as a test declares them.
        pub struct ExampleConfig {
            service: "example-svc",
            env_prefix: "SAGA_SHARED_TEST_EXAMPLE_SVC__",
            file_var: "SAGA_SHARED_TEST_EXAMPLE_SVC_CONFIG",
            own_stream: Payments,
            schema: "example",
            grpc_port: 50099,
            admin_port: 9099,
            pub own: OwnSettings,
            pub repair: RepairConfig,
        }
    }

    impl Check for ExampleConfig {
        fn check(&self) -> Result<(), ConfigError> {
            if self.own.limit == 0 {
                return Err(ConfigError::Invalid {
                    field: "own.limit".into(),
                    message: "must be at least 1".into(),
                });
            }
            Ok(())
        }
    }

    fn load_toml(name: &str, toml: &str) -> Result<ExampleConfig, ConfigError> {
        let path = std::env::temp_dir().join(format!(
            "saga-shared-service-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, toml).unwrap();
        let loaded = ExampleConfig::load(Some(&path));
        std::fs::remove_file(&path).unwrap();
        loaded
    }

    #[test]
    fn the_common_sections_have_the_services_defaults() {
        let config = ExampleConfig::default();
        assert_eq!(config.namespace, "saga");
        assert_eq!(config.database.schema, "example");
        assert_eq!(config.grpc.listen.port(), 50099);
        assert_eq!(config.admin.listen.port(), 9099);
        assert_eq!(config.own.limit, 7);
        let platform = config.platform();
        assert_eq!(platform.service, "example-svc");
        assert_eq!(platform.own_stream, crate::bus::StreamKind::Payments);
        assert_eq!(
            <ExampleConfig as ServiceConfig>::FILE_VAR,
            "SAGA_SHARED_TEST_EXAMPLE_SVC_CONFIG"
        );
    }

    #[test]
    fn a_file_sets_common_and_own_sections() {
        let config = load_toml(
            "sets",
            "namespace = \"n1\"\n[grpc]\nlisten = \"127.0.0.1:1234\"\n[own]\nlimit = 3\n",
        )
        .unwrap();
        assert_eq!(config.namespace, "n1");
        assert_eq!(config.grpc.listen.port(), 1234);
        assert_eq!(config.own.limit, 3);
        assert_eq!(config.database.schema, "example");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_section() {
        let err = load_toml("unknown", "[own]\nlimt = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limt") && err.contains("own"), "{err}");
        let err = load_toml("unknown-top", "nmespace = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nmespace"), "{err}");
    }

    #[test]
    fn the_services_checks_run_on_load() {
        let err = load_toml("check", "[own]\nlimit = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("own.limit: must be at least 1"), "{err}");
    }
}
