//! Redis connections (fred), for the services that use Redis.

use std::time::Duration;

use fred::prelude::*;

use crate::config::RedisConfig;

/// Opens a pool of `cfg.pool_size` connections and waits until it is up.
/// Commands (scripts included) time out after `cfg.command_timeout_ms`; the
/// connections reconnect on their own with exponential backoff.
pub async fn connect(cfg: &RedisConfig) -> Result<Pool, Error> {
    let pool = build(cfg, true)?;
    pool.init().await?;
    Ok(pool)
}

/// Like [`connect`], for a service that can run without Redis: waits up to
/// `wait` for the connection and returns the pool either way (it keeps
/// trying in the background). The flag says whether it is connected.
pub async fn connect_or_keep_trying(
    cfg: &RedisConfig,
    wait: Duration,
) -> Result<(Pool, bool), Error> {
    let pool = build(cfg, false)?;
    pool.connect_pool();
    let connected = matches!(
        tokio::time::timeout(wait, pool.wait_for_connect()).await,
        Ok(Ok(()))
    );
    Ok((pool, connected))
}

/// Builds the pool without connecting. `fail_fast`: whether a first
/// connection that fails is an error (else it is retried like a lost one).
pub fn build(cfg: &RedisConfig, fail_fast: bool) -> Result<Pool, Error> {
    let mut config = Config::from_url(&cfg.url)?;
    config.fail_fast = fail_fast;
    let timeout = Duration::from_millis(cfg.command_timeout_ms.max(1));
    Builder::from_config(config)
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
        })
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            c.max_command_attempts = 2;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build_pool(cfg.pool_size.max(1))
}

/// `PING` with the configured timeout.
pub async fn ping(pool: &Pool) -> Result<(), Error> {
    pool.next().ping::<()>(None).await
}

/// Deletes every key matching `pattern`: on a single Redis, or on every
/// master of a cluster (one DEL per hash slot, as a cluster requires).
/// For a namespace's clean-up (tests, benchmarks), not for hot paths.
pub async fn delete_matching(pool: &Pool, pattern: &str) -> Result<(), Error> {
    use futures::TryStreamExt;
    let client = pool.next().clone();
    let keys: Vec<Key> = if client.is_clustered() {
        client
            .scan_cluster_buffered(pattern, Some(1_000), None)
            .try_collect()
            .await?
    } else {
        client
            .scan_buffered(pattern, Some(1_000), None)
            .try_collect()
            .await?
    };
    let mut by_slot: std::collections::BTreeMap<u16, Vec<Key>> = Default::default();
    for key in keys {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        by_slot.entry(slot).or_default().push(key);
    }
    for keys in by_slot.into_values() {
        for chunk in keys.chunks(500) {
            let _: i64 = client.del(chunk.to_vec()).await?;
        }
    }
    Ok(())
}
