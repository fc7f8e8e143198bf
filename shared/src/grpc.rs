//! gRPC plumbing shared by the services: the per-request span (a child of the
//! caller's `traceparent`), health and reflection services, and the mapping of
//! unexpected errors to an opaque `INTERNAL`.

use tracing::Span;

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
