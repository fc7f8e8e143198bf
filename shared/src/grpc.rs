//! gRPC plumbing shared by the services: the per-request span (a child of the
//! caller's `traceparent`), health and reflection services, and the mapping of
//! unexpected errors to an opaque `INTERNAL`.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tracing::Span;

use crate::config::{ConfigError, GrpcConfig};

use crate::telemetry::TraceHeaders;

/// The span of one gRPC request, continuing the caller's trace if it sent one.
pub fn request_span(req: &http::Request<()>) -> Span {
    let span = tracing::info_span!(
        "grpc_request",
        otel.name = %req.uri().path(),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %req.uri().path(),
    );
    TraceHeaders::from_http(req.headers()).set_parent_of(&span);
    span
}

/// The reflection service for every saga API plus `grpc.health.v1`.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

fn read_pem(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Invalid {
        field: field.into(),
        message: format!("{}: {e}", path.display()),
    })
}

fn identity(cfg: &GrpcConfig) -> Result<Option<Identity>, ConfigError> {
    match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(
            read_pem("grpc.tls_cert_file", cert)?,
            read_pem("grpc.tls_key_file", key)?,
        ))),
        (None, None) => Ok(None),
        _ => Err(ConfigError::Invalid {
            field: "grpc.tls_cert_file".into(),
            message: "TLS needs both tls_cert_file and tls_key_file".into(),
        }),
    }
}

/// The TLS of a service's gRPC server (`None`: plaintext). With a client
/// CA, every caller must present a certificate it signed.
///
/// # Errors
/// A file cannot be read, or a certificate comes without its key.
pub fn server_tls(cfg: &GrpcConfig) -> Result<Option<ServerTlsConfig>, ConfigError> {
    let Some(identity) = identity(cfg)? else {
        if cfg.tls_client_ca_file.is_some() {
            return Err(ConfigError::Invalid {
                field: "grpc.tls_client_ca_file".into(),
                message: "client certificates need TLS: set tls_cert_file and tls_key_file".into(),
            });
        }
        return Ok(None);
    };
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &cfg.tls_client_ca_file {
        tls = tls.client_ca_root(Certificate::from_pem(read_pem(
            "grpc.tls_client_ca_file",
            ca,
        )?));
    }
    Ok(Some(tls))
}

/// The TLS of a service's calls of the others over `https://`: the CA it
/// trusts, and its own certificate as the client's (`None` when no CA is
/// set).
///
/// # Errors
/// A file cannot be read, or a certificate comes without its key.
pub fn client_tls(cfg: &GrpcConfig) -> Result<Option<ClientTlsConfig>, ConfigError> {
    let Some(ca) = &cfg.tls_ca_file else {
        return Ok(None);
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_pem("grpc.tls_ca_file", ca)?));
    if let Some(identity) = identity(cfg)? {
        tls = tls.identity(identity);
    }
    Ok(Some(tls))
}

/// How often a client of another service pings its connection, and how
/// long it waits for the answer before it drops the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// An endpoint of `url` (named by the setting `field`), connected on first
/// use, with `tls` for an `https://` URL, and HTTP/2 keepalive pings.
///
/// # Errors
/// A malformed URL, or an `https://` URL without a CA to check it with.
pub fn endpoint(
    field: &str,
    url: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        field: field.into(),
        message,
    };
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| invalid(format!("{url:?}: {e}")))?
        // A peer gone silent with its connection open (its node lost, a
        // network dropping packets) is found by a ping unanswered within
        // seconds, and the next call connects anew; without the ping the
        // connection waits for the kernel to give up, about 15 minutes,
        // every call failing by its timeout meanwhile.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let tls = tls.ok_or_else(|| {
        invalid(format!(
            "{url:?} is https: set grpc.tls_ca_file to the CA that signed its certificate"
        ))
    })?;
    endpoint
        .tls_config(tls.clone())
        .map_err(|e| invalid(format!("{url:?}: {e}")))
}

/// Cuts rows fetched with `LIMIT limit + 1` down to a page of `limit`, and
/// returns the next page's token (empty when this is the last page).
pub fn page<T>(mut rows: Vec<T>, limit: i64, token_of: impl Fn(&T) -> String) -> (Vec<T>, String) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let token = rows.last().map(token_of).unwrap_or_default();
        (rows, token)
    } else {
        (rows, String::new())
    }
}

/// Logs an unexpected error with its chain and returns an `INTERNAL` status
/// that does not leak it.
pub fn internal(context: &str, err: &(dyn std::error::Error + 'static)) -> tonic::Status {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    tracing::error!(error = %chain, "{context}");
    tonic::Status::internal("internal error")
}

/// The status for a database error: `UNAVAILABLE` while the database cannot
/// be reached or cannot serve (the client retries later), `ABORTED` for a
/// conflict with another transaction (the client retries at once), and an
/// opaque `INTERNAL` for anything else. The cause is logged, not sent.
pub fn database(context: &str, err: &sqlx::Error) -> tonic::Status {
    match crate::db::classify(err) {
        crate::db::Failure::Unavailable => {
            tracing::warn!(error = %err, "{context}: database unavailable");
            tonic::Status::unavailable("the database is unavailable; retry later")
        }
        crate::db::Failure::Conflict => {
            tracing::info!(error = %err, "{context}: conflict");
            tonic::Status::aborted("the change conflicted with another; retry")
        }
        crate::db::Failure::Other => internal(context, err),
    }
}

/// `UNAVAILABLE` for a dependency that is down (the client may retry).
pub fn unavailable(context: &str, err: &(dyn std::error::Error + 'static)) -> tonic::Status {
    tracing::warn!(error = %err, "{context}");
    tonic::Status::unavailable(format!("{context}; retry later"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_are_cut_and_tokened() {
        let (rows, next) = super::page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!((rows, next.as_str()), (vec![1, 2], "2"));
        let (rows, next) = super::page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!((rows, next.as_str()), (vec![1, 2], ""));
    }
}
