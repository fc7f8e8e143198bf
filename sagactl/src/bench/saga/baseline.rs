//! Raw baselines, measured in the same run as the saga benchmark so that
//! ratios to them survive the machine's swings: a Postgres
//! insert-and-commit rate, the JetStream publish-with-ack rate and the
//! Redis EVALSHA rate of a reserve-shaped script.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use fred::clients::Pool as RedisPool;
use fred::interfaces::{KeysInterface, LuaInterface};
use serde::Serialize;
use sqlx::PgPool;

/// The baselines' figures, per second.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Baselines {
    /// One-row INSERT transactions committed, `PG_CLIENTS` at once.
    pub postgres_commits_per_sec: f64,
    /// JetStream publishes acknowledged, `IN_FLIGHT` at once.
    pub jetstream_publishes_per_sec: f64,
    /// EVALSHA calls of a reserve-shaped script, `REDIS_CLIENTS` at once.
    pub redis_evalsha_per_sec: f64,
}

pub const PG_CLIENTS: usize = 16;
pub const IN_FLIGHT: usize = 256;
pub const REDIS_CLIENTS: usize = 32;

/// Takes, if there is stock, one unit for a hold (idempotent by hold id):
/// the shape of the service's reserve script, without its epochs.
const RESERVE: &str = r"
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 1 end
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left < 1 then return 0 end
redis.call('DECRBY', KEYS[1], 1)
redis.call('SADD', KEYS[2], ARGV[1])
return 1
";

/// Runs `op` from `clients` tasks for `secs`; returns completions per second.
async fn rate<F, Fut>(clients: usize, span: Duration, op: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (op, done) = (op.clone(), done.clone());
        tasks.spawn(async move {
            let mut i = client as u64 * 1_000_000_000;
            while started.elapsed() < span {
                op(i).await?;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Each baseline for `span`, one after the other. `pg` is a pool of the
/// benchmark's own database; `stream` is a name for a stream of its own on
/// subject `subject` (deleted after).
pub async fn measure(
    pg: &PgPool,
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    redis: &RedisPool,
    span: Duration,
) -> anyhow::Result<Baselines> {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_baseline (id BIGSERIAL PRIMARY KEY, v BIGINT)")
        .execute(pg)
        .await?;
    let pool = pg.clone();
    let postgres_commits_per_sec = rate(PG_CLIENTS, span, move |i| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO bench_baseline (v) VALUES ($1)")
                .bind(i as i64)
                .execute(&pool)
                .await?;
            Ok(())
        }
    })
    .await?;
    sqlx::query("DROP TABLE bench_baseline").execute(pg).await?;

    js.get_or_create_stream(jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec![subject.to_owned()],
        ..Default::default()
    })
    .await?;
    let published = {
        let started = Instant::now();
        let mut n = 0u64;
        let mut acks = std::collections::VecDeque::with_capacity(IN_FLIGHT);
        while started.elapsed() < span {
            acks.push_back(js.publish(subject.to_owned(), "x".into()).await?);
            if acks.len() == IN_FLIGHT
                && let Some(ack) = acks.pop_front()
            {
                ack.await?;
                n += 1;
            }
        }
        for ack in acks {
            ack.await?;
            n += 1;
        }
        n as f64 / started.elapsed().as_secs_f64()
    };
    js.delete_stream(stream).await?;

    let sha: String = redis.next().script_load(RESERVE).await?;
    let prefix = stream.to_owned();
    let keys = move |i: u64| {
        let sku = format!("{{{prefix}-{}}}", i % 64);
        (format!("{sku}:left"), format!("{sku}:holds"))
    };
    for i in 0..64 {
        let (left, _) = keys(i);
        let _: () = redis.set(left, i64::MAX / 2, None, None, false).await?;
    }
    let (client, key_of) = (redis.clone(), keys.clone());
    let redis_evalsha_per_sec = rate(REDIS_CLIENTS, span, move |i| {
        let (client, sha) = (client.clone(), sha.clone());
        let (left, holds) = key_of(i);
        async move {
            let _: i64 = client
                .evalsha(sha, vec![left, holds], vec![i.to_string()])
                .await?;
            Ok(())
        }
    })
    .await?;
    for i in 0..64 {
        let (left, holds) = keys(i);
        let _: i64 = redis.del(vec![left, holds]).await?;
    }
    Ok(Baselines {
        postgres_commits_per_sec,
        jetstream_publishes_per_sec: published,
        redis_evalsha_per_sec,
    })
}
