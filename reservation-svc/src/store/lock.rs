//! A Redis lock per slot (`SET key token NX PX ttl`, released by a Lua
//! compare-and-delete). It keeps contenders for one slot from piling onto its
//! Postgres row; it is not what keeps a slot from being overbooked (the
//! conditional update and the table's CHECK do that), so a lock that cannot be
//! had in time, or a Redis that is down, only means going ahead without it.

use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions, Value};
use rand::Rng;
use uuid::Uuid;

const UNLOCK: &str = include_str!("../lua/unlock.lua");

/// A lock this process holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLock {
    key: String,
    token: String,
}

/// Why a slot's lock was not had (the caller goes ahead without it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockMiss {
    /// Another contender held it for the whole wait.
    #[error("held by another contender for the whole wait")]
    Busy,
    /// Redis failed, or did not answer within its command timeout.
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct SlotLocks {
    redis: Pool,
    ns: String,
    ttl: Duration,
    wait: Duration,
    command_timeout: Duration,
    unlock: Script,
}

impl SlotLocks {
    /// Locks of `ttl`, waited for up to `wait`; each Redis call may take up
    /// to `command_timeout`.
    pub fn new(
        redis: Pool,
        ns: &str,
        ttl: Duration,
        wait: Duration,
        command_timeout: Duration,
    ) -> Self {
        Self {
            redis,
            ns: ns.to_owned(),
            ttl,
            wait,
            command_timeout: command_timeout.max(Duration::from_millis(1)),
            unlock: Script::from_lua(UNLOCK),
        }
    }

    fn key(&self, slot: Uuid) -> String {
        format!("rsv:{{{}:{slot}}}:lock", self.ns)
    }

    /// Takes the slot's lock, trying until the configured wait has passed.
    /// Each try gets Redis's full command timeout: a wait that runs out is
    /// [`LockMiss::Busy`], only a Redis that fails or does not answer is
    /// [`LockMiss::Unavailable`].
    pub async fn acquire(&self, slot: Uuid) -> Result<HeldLock, LockMiss> {
        let key = self.key(slot);
        let token = Uuid::new_v4().to_string();
        let deadline = Instant::now() + self.wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let set = self.redis.next().set::<Value, _, _>(
                &key,
                token.as_str(),
                Some(Expiration::PX(self.ttl.as_millis() as i64)),
                Some(SetOptions::NX),
                false,
            );
            let set = match tokio::time::timeout(self.command_timeout, set).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.command_timeout)),
            };
            match set {
                Ok(Value::Null) => {}
                Ok(_) => {
                    metrics::counter!("reservation_slot_lock_total", "outcome" => "acquired")
                        .increment(1);
                    return Ok(HeldLock { key, token });
                }
                Err(e) => {
                    tracing::warn!(%slot, error = %e, "slot lock unavailable; going ahead without it");
                    metrics::counter!("reservation_slot_lock_total", "outcome" => "error")
                        .increment(1);
                    return Err(LockMiss::Unavailable(e));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::debug!(%slot, "slot lock busy for the whole wait; going ahead without it");
                metrics::counter!("reservation_slot_lock_total", "outcome" => "timed_out")
                    .increment(1);
                return Err(LockMiss::Busy);
            }
            let jitter = rand::rng().random_range(0..=pause.as_micros() as u64);
            let sleep = (pause + Duration::from_micros(jitter)).min(deadline - now);
            tokio::time::sleep(sleep).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Lets go of a lock if it is still ours.
    pub async fn release(&self, lock: HeldLock) {
        let result: Result<i64, _> = self
            .unlock
            .evalsha_with_reload(self.redis.next(), vec![lock.key], vec![lock.token])
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "slot lock not released; it expires on its own");
        }
    }
}
