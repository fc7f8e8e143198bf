//! The durable consumer of a service on a stream, kept in line with the
//! configuration.
//!
//! A durable outlives the process that created it, so a setting changed in
//! the configuration (`bus.ack_wait_secs`, `bus.concurrency`, ...) must be
//! carried to the server: [`ensure`] creates the durable if it is missing,
//! updates it in place when a setting the server lets change differs, and
//! refuses, naming the field, when one it does not let change differs (the
//! subject filter, the ack policy): deleting the durable to recreate it would
//! lose its position, which is the operator's call.
//!
//! The server never drops a message on its own: `max_deliver` is unlimited
//! on the server, and the consumer enforces `bus.max_deliver` itself, after
//! the dead letter is safely in the DLQ (see [`super::consumer`]).

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};

use super::{Namespace, StreamKind};
use crate::config::BusConfig;

/// Why the durable could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("stream {stream} not available: {source}")]
    Stream {
        stream: String,
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    #[error("consumer {durable} on {stream}: {source}")]
    Server {
        stream: String,
        durable: String,
        #[source]
        source: crate::BoxError,
    },
    #[error(
        "consumer {durable} on {stream} has {field} = {server}, the configuration wants {wanted}; \
         the server cannot change it in place: delete the consumer (it restarts from the stream's \
         first message, which the inbox makes harmless) or restore the old setting"
    )]
    Incompatible {
        stream: String,
        durable: String,
        field: &'static str,
        server: String,
        wanted: String,
    },
}

/// The configuration the durable of `service` on `stream` must have.
pub fn wanted(service: &str, ns: &Namespace, stream: StreamKind, cfg: &BusConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(service.to_owned()),
        description: Some(format!("{service} reading {}", ns.stream(stream))),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: cfg.ack_wait(),
        // Unlimited: the consumer dead-letters at its own bound, once the
        // DLQ has acknowledged the copy (the server would drop it silently).
        max_deliver: -1,
        // One subject filter (nats-server 2.9 ignores `filter_subjects`).
        filter_subject: ns.stream_subjects(stream),
        max_ack_pending: cfg.max_ack_pending(),
        ..Default::default()
    }
}

/// One difference between the server's durable and the wanted one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub server: String,
    pub wanted: String,
    /// Whether the server can change it on an existing durable.
    pub editable: bool,
}

/// How the server's durable differs from `wanted`, field by field.
pub fn differences(server: &jetstream::consumer::Config, wanted: &pull::Config) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut check = |field, a: String, b: String, editable| {
        if a != b {
            out.push(Difference {
                field,
                server: a,
                wanted: b,
                editable,
            });
        }
    };
    check(
        "filter_subject",
        server.filter_subject.clone(),
        wanted.filter_subject.clone(),
        false,
    );
    check(
        "ack_policy",
        format!("{:?}", server.ack_policy),
        format!("{:?}", wanted.ack_policy),
        false,
    );
    check(
        "deliver_policy",
        format!("{:?}", server.deliver_policy),
        format!("{:?}", wanted.deliver_policy),
        false,
    );
    check(
        "ack_wait",
        format!("{:?}", server.ack_wait),
        format!("{:?}", wanted.ack_wait),
        true,
    );
    check(
        "max_deliver",
        normalise_unlimited(server.max_deliver).to_string(),
        normalise_unlimited(wanted.max_deliver).to_string(),
        true,
    );
    check(
        "max_ack_pending",
        server.max_ack_pending.to_string(),
        wanted.max_ack_pending.to_string(),
        true,
    );
    check(
        "backoff",
        format!("{:?}", server.backoff),
        format!("{:?}", wanted.backoff),
        true,
    );
    check(
        "description",
        format!("{:?}", server.description),
        format!("{:?}", wanted.description),
        true,
    );
    out
}

/// The server reports "unlimited" as -1 or 0 depending on the version.
fn normalise_unlimited(n: i64) -> i64 {
    if n <= 0 { -1 } else { n }
}

/// Creates the durable, or brings an existing one in line with `wanted`
/// (see the module documentation). Returns it ready to pull from.
pub async fn ensure(
    js: &jetstream::Context,
    stream_name: &str,
    wanted: pull::Config,
) -> Result<jetstream::consumer::PullConsumer, DurableError> {
    let durable = wanted.durable_name.clone().unwrap_or_default();
    let server_err = |source: crate::BoxError| DurableError::Server {
        stream: stream_name.to_owned(),
        durable: durable.clone(),
        source,
    };
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|source| DurableError::Stream {
            stream: stream_name.to_owned(),
            source,
        })?;
    let existing = match stream.consumer_info(&durable).await {
        Ok(info) => Some(info),
        Err(e) if is_not_found(&e.kind()) => None,
        Err(e) => return Err(server_err(Box::new(e))),
    };
    let Some(info) = existing else {
        return stream
            .create_consumer(wanted)
            .await
            .map_err(|e| server_err(Box::new(e)));
    };
    let diffs = differences(&info.config, &wanted);
    if let Some(d) = diffs.iter().find(|d| !d.editable) {
        return Err(DurableError::Incompatible {
            stream: stream_name.to_owned(),
            durable,
            field: d.field,
            server: d.server.clone(),
            wanted: d.wanted.clone(),
        });
    }
    if diffs.is_empty() {
        return stream.get_consumer(&durable).await.map_err(server_err);
    }
    for d in &diffs {
        tracing::info!(
            stream = stream_name,
            consumer = %durable,
            field = d.field,
            from = %d.server,
            to = %d.wanted,
            "updating the durable consumer to follow the configuration"
        );
    }
    let updated = stream
        .create_consumer(wanted.clone())
        .await
        .map_err(|e| server_err(Box::new(e)))?;
    // A server that accepted the request but kept its old settings would
    // leave the bound where it was: check what it reports now.
    let info = stream
        .consumer_info(&durable)
        .await
        .map_err(|e| server_err(Box::new(e)))?;
    if let Some(d) = differences(&info.config, &wanted).into_iter().next() {
        return Err(DurableError::Incompatible {
            stream: stream_name.to_owned(),
            durable,
            field: d.field,
            server: d.server,
            wanted: d.wanted,
        });
    }
    Ok(updated)
}

/// Whether the stream does not exist (as opposed to a server that did not
/// answer).
pub(crate) fn is_stream_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

fn is_not_found(kind: &async_nats::jetstream::context::ConsumerInfoErrorKind) -> bool {
    use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
    match kind {
        K::NotFound => true,
        K::JetStream(e) => e.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

/// How long a pull request waits for messages before the consumer asks
/// again (and notices a lost durable or connection).
pub const PULL_EXPIRES: Duration = Duration::from_secs(10);
