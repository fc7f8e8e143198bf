//! NATS connections: one place that turns [`NatsConfig`] into a client, with
//! its credentials (user and password, token, `.creds` file) and TLS.

use async_nats::ConnectOptions;

use crate::config::{ConfigError, NatsConfig, redact_url};

/// Why NATS could not be connected.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("nats.credentials_file {path}: {source}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// The connect options `cfg` describes, for a client named `name`.
///
/// async-nats does not read credentials from the URL itself, so a
/// `nats://user:pass@host` URL's are applied here (the settings' own win).
///
/// # Errors
/// A malformed URL, an unreadable credentials file, or a client
/// certificate without its key.
pub async fn options(cfg: &NatsConfig, name: &str) -> Result<ConnectOptions, NatsError> {
    let servers = cfg.server_addrs()?;
    let mut options = ConnectOptions::new().name(name);
    let (url_user, url_pass) = servers
        .first()
        .map(|s| (s.username(), s.password()))
        .unwrap_or_default();
    if !cfg.user.is_empty() || !cfg.password.is_empty() {
        options = options.user_and_password(cfg.user.clone(), cfg.password.clone());
    } else if let (Some(user), Some(pass)) = (url_user, url_pass) {
        options = options.user_and_password(user.to_owned(), pass.to_owned());
    } else if let (Some(token), None) = (url_user, url_pass) {
        options = options.token(token.to_owned());
    }
    if !cfg.token.is_empty() {
        options = options.token(cfg.token.clone());
    }
    if let Some(path) = &cfg.credentials_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| NatsError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
    }
    if let Some(ca) = &cfg.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(ConfigError::Invalid {
                field: "nats.tls_cert_file".into(),
                message: "a client certificate needs both tls_cert_file and tls_key_file".into(),
            }
            .into());
        }
    }
    if cfg.require_tls {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Connects to the servers of `cfg` as `name`.
///
/// # Errors
/// See [`options`]; the servers refuse or cannot be reached.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<async_nats::Client, NatsError> {
    let servers = cfg.server_addrs()?;
    options(cfg, name)
        .await?
        .event_callback(move |event| async move {
            tracing::info!(event = %event, "nats connection event");
        })
        .connect(servers)
        .await
        .map_err(|source| NatsError::Connect {
            url: redact_url(&cfg.url),
            source,
        })
}
