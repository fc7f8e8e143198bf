//! Creates the namespace's streams (idempotently) at service start.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::{Namespace, StreamKind};
use crate::config::NatsConfig;

#[derive(Debug, thiserror::Error)]
#[error("creating stream {stream}: {source}")]
pub struct StreamSetupError {
    pub stream: String,
    #[source]
    pub source: async_nats::jetstream::context::CreateStreamError,
}

fn stream_config(
    name: String,
    subjects: String,
    cfg: &NatsConfig,
    description: &str,
) -> stream::Config {
    stream::Config {
        name,
        subjects: vec![subjects],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: cfg.replicas.max(1),
        duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
        max_age: Duration::from_secs(cfg.max_age_hours * 3600),
        description: Some(description.to_owned()),
        ..Default::default()
    }
}

/// Makes sure the four event streams and the DLQ of `ns` exist. An existing
/// stream is left as it is.
pub async fn ensure_streams(
    js: &jetstream::Context,
    ns: &Namespace,
    cfg: &NatsConfig,
) -> Result<(), StreamSetupError> {
    let mut configs: Vec<stream::Config> = StreamKind::ALL
        .into_iter()
        .map(|kind| {
            stream_config(
                ns.stream(kind),
                ns.stream_subjects(kind),
                cfg,
                "saga events",
            )
        })
        .collect();
    let mut dlq = stream_config(ns.dlq_stream(), ns.dlq_subjects(), cfg, "saga dead letters");
    // Dead letters wait for an operator: keep them regardless of age.
    dlq.max_age = Duration::ZERO;
    configs.push(dlq);
    for config in configs {
        let name = config.name.clone();
        js.get_or_create_stream(config)
            .await
            .map_err(|source| StreamSetupError {
                stream: name,
                source,
            })?;
    }
    Ok(())
}

/// Deletes every stream of `ns` (tests and `sagactl` teardown).
pub async fn delete_streams(js: &jetstream::Context, ns: &Namespace) {
    let names = StreamKind::ALL
        .into_iter()
        .map(|k| ns.stream(k))
        .chain(std::iter::once(ns.dlq_stream()));
    for name in names {
        if let Err(e) = js.delete_stream(&name).await {
            tracing::debug!(stream = %name, error = %e, "stream not deleted");
        }
    }
}
