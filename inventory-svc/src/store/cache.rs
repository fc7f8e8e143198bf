//! The Redis side of stock: one counter per SKU, derived from Postgres.
//!
//! Keys carry the SKU as hash tag, `inv:{<ns>:<sku>}...`, so every script
//! touches one slot per SKU:
//! - `inv:{<ns>:<sku>}` one hash per SKU: `~avail` (units free to reserve),
//!   `~epoch` (of the rebuild that set it), and one field per hold this
//!   counter granted, `order_id -> "qty:granted_ms"`. A missing `~avail`
//!   means "not rebuilt": the fast path refuses to run on it (Redis may come
//!   back empty). One hash lets a reservation read readiness, epoch and
//!   "already held" in one call and write the count and the hold in another.
//! - `inv:{<ns>:<sku>}:m:<order>` marker (`R` released / `C` committed) with
//!   a TTL.
//!
//! A multi-SKU order is held by one script call (all or none); on Redis
//! Cluster that needs its SKUs in one slot (see docs/adr/0002).

use std::collections::BTreeMap;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;
use fred::types::scripts::Script;
use uuid::Uuid;

use crate::domain::Line;

const RESERVE: &str = include_str!("../lua/reserve.lua");
const CLOSE: &str = include_str!("../lua/close.lua");
const REBUILD: &str = include_str!("../lua/rebuild.lua");

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("redis: no answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: unexpected script reply: {0}")]
    Reply(String),
}

impl CacheError {
    /// Redis did not answer (down, unreachable, timed out, or failing):
    /// worth falling back to Postgres, unlike a reply we do not understand.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, CacheError::Reply(_))
    }
}

/// What the reserve script answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// Every line is held; the counters' epochs, line by line.
    Granted(Vec<i64>),
    /// Line `index` (0-based) has only `available` units.
    Rejected { index: usize, available: i64 },
    /// Line `index`'s counter was never rebuilt (or Redis lost it).
    NotReady { index: usize },
    /// The order's holds were already released or committed.
    Closed { index: usize, marker: String },
    /// The order already holds `held` units of line `index`, not the number
    /// asked for: a retry with other lines. Nothing changed.
    Mismatch { index: usize, held: i64 },
}

/// A SKU's state in Postgres, read under its row lock, for a rebuild.
#[derive(Clone, Debug)]
pub struct SkuSnapshot {
    pub sku: String,
    pub on_hand: i64,
    pub sold: i64,
    /// The counter epoch Postgres has.
    pub epoch: i64,
    /// Holds Postgres has as RESERVED.
    pub reserved: Vec<(Uuid, i64)>,
    /// Holds Postgres released or committed recently.
    pub closed: Vec<Uuid>,
}

/// What a rebuild did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    pub avail: i64,
    /// Holds dropped (closed in Postgres, or orphans).
    pub removed: i64,
    /// Holds Postgres had and Redis did not.
    pub added: i64,
    /// Holds both had, whose Redis quantity was corrected to Postgres's.
    pub resized: i64,
    /// The counter before, if there was one.
    pub previous: Option<i64>,
    /// Redis-only holds older than the grace period, dropped.
    pub orphans: i64,
    /// The epoch moved to the `next_epoch` given (Postgres must follow).
    pub epoch_moved: bool,
}

pub use crate::domain::{CounterView, HoldView};

#[derive(Clone)]
pub struct StockCache {
    redis: Pool,
    ns: String,
    timeout: Duration,
    marker_ttl: Duration,
    reserve: Script,
    close: Script,
    rebuild: Script,
}

impl StockCache {
    pub fn new(redis: Pool, ns: &str, timeout: Duration, marker_ttl: Duration) -> Self {
        Self {
            redis,
            ns: ns.to_owned(),
            timeout,
            marker_ttl,
            reserve: Script::from_lua(RESERVE),
            close: Script::from_lua(CLOSE),
            rebuild: Script::from_lua(REBUILD),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.redis
    }

    /// The SKU's hash (counter and holds).
    fn sku_key(&self, sku: &str) -> String {
        format!("inv:{{{}:{}}}", self.ns, sku)
    }

    fn marker_prefix(&self, sku: &str) -> String {
        format!("{}:m:", self.sku_key(sku))
    }

    /// The glob matching every key of this namespace.
    pub fn key_pattern(&self) -> String {
        format!("inv:{{{}:*", self.ns)
    }

    fn order_keys<'a>(&self, order: Uuid, skus: impl Iterator<Item = &'a str>) -> Vec<String> {
        skus.flat_map(|sku| {
            [
                self.sku_key(sku),
                format!("{}{order}", self.marker_prefix(sku)),
            ]
        })
        .collect()
    }

    async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, CacheError> {
        let call = script.evalsha_with_reload::<Value, _, _>(self.redis.next(), keys, args);
        // fred's per-command timeout does not cover EVAL/EVALSHA (fred #353).
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(CacheError::Timeout(self.timeout)),
        }
    }

    /// Holds every line for `order`, or none.
    pub async fn reserve(&self, order: Uuid, lines: &[Line]) -> Result<Reserve, CacheError> {
        let keys = self.order_keys(order, lines.iter().map(|l| l.sku.as_str()));
        let mut args = vec![order.to_string(), now_ms().to_string()];
        args.extend(lines.iter().map(|l| l.quantity.to_string()));
        let reply = self.eval(&self.reserve, keys, args).await?;
        parse_reserve(reply, lines.len())
    }

    /// Gives the order's holds back and leaves release markers.
    pub async fn release(&self, order: Uuid, skus: &[&str]) -> Result<i64, CacheError> {
        self.close(order, skus, "R").await
    }

    /// Drops the order's holds (their units are sold) and leaves commit markers.
    pub async fn commit(&self, order: Uuid, skus: &[&str]) -> Result<i64, CacheError> {
        self.close(order, skus, "C").await
    }

    /// Gives back holds granted by a stale counter, leaving no marker.
    pub async fn revoke(&self, order: Uuid, skus: &[&str]) -> Result<i64, CacheError> {
        self.close(order, skus, "X").await
    }

    async fn close(&self, order: Uuid, skus: &[&str], kind: &str) -> Result<i64, CacheError> {
        if skus.is_empty() {
            return Ok(0);
        }
        let keys = self.order_keys(order, skus.iter().copied());
        let args = vec![
            order.to_string(),
            kind.to_owned(),
            self.marker_ttl.as_millis().to_string(),
        ];
        let reply = self.eval(&self.close, keys, args).await?;
        as_int(&reply).ok_or_else(|| CacheError::Reply(format!("{reply:?}")))
    }

    /// Rebuilds a counter from `snap` (see `lua/rebuild.lua`). `grace`: drop
    /// Redis-only holds older than this (None keeps them all). `next_epoch`
    /// is a fresh value of Postgres's epoch sequence: when the answer says
    /// the epoch moved, Postgres must store it before the row lock is let go.
    pub async fn rebuild(
        &self,
        snap: &SkuSnapshot,
        next_epoch: i64,
        grace: Option<Duration>,
    ) -> Result<Rebuilt, CacheError> {
        let keys = vec![self.sku_key(&snap.sku)];
        let mut args = vec![
            snap.epoch.to_string(),
            next_epoch.to_string(),
            snap.on_hand.to_string(),
            snap.sold.to_string(),
            now_ms().to_string(),
            grace.map_or(-1, |g| g.as_millis() as i64).to_string(),
            self.marker_prefix(&snap.sku),
            snap.reserved.len().to_string(),
        ];
        for (order, qty) in &snap.reserved {
            args.push(order.to_string());
            args.push(qty.to_string());
        }
        args.push(snap.closed.len().to_string());
        args.extend(snap.closed.iter().map(Uuid::to_string));
        let reply = self.eval(&self.rebuild, keys, args).await?;
        let bad = || CacheError::Reply(format!("{reply:?}"));
        let items = as_array(&reply).ok_or_else(bad)?;
        let int = |i: usize| items.get(i).and_then(as_int).ok_or_else(bad);
        match items.first().and_then(as_text).as_deref() {
            Some("OK") => Ok(Rebuilt {
                avail: int(1)?,
                removed: int(2)?,
                added: int(3)?,
                previous: (int(4)? == 1).then(|| int(5)).transpose()?,
                orphans: int(6)?,
                epoch_moved: int(7)? == 1,
                resized: int(8)?,
            }),
            _ => Err(bad()),
        }
    }

    /// Reads a SKU's counter and holds.
    pub async fn read(&self, sku: &str) -> Result<CounterView, CacheError> {
        let mut holds: BTreeMap<String, String> =
            self.redis.next().hgetall(self.sku_key(sku)).await?;
        let mut num = |field: &str| holds.remove(field).and_then(|v| v.parse::<i64>().ok());
        let (avail, epoch) = (num("~avail"), num("~epoch"));
        Ok(CounterView {
            avail,
            epoch,
            holds: holds
                .into_iter()
                .map(|(order, v)| {
                    let mut parts = v.split(':');
                    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let qty = next();
                    let granted_ms = next();
                    (order, HoldView { qty, granted_ms })
                })
                .collect(),
        })
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::String(s) => s.parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        _ => None,
    }
}

fn parse_reserve(reply: Value, lines: usize) -> Result<Reserve, CacheError> {
    let bad = || CacheError::Reply(format!("{reply:?}"));
    let items = as_array(&reply).ok_or_else(bad)?;
    let int = |i: usize| items.get(i).and_then(as_int).ok_or_else(bad);
    let index = |i: usize| -> Result<usize, CacheError> {
        let one_based = int(i)?;
        usize::try_from(one_based - 1)
            .ok()
            .filter(|i| *i < lines)
            .ok_or_else(bad)
    };
    match items.first().and_then(as_text).as_deref() {
        Some("GRANTED") => {
            let epochs = (1..items.len()).map(int).collect::<Result<Vec<_>, _>>()?;
            if epochs.len() != lines {
                return Err(bad());
            }
            Ok(Reserve::Granted(epochs))
        }
        Some("REJECTED") => Ok(Reserve::Rejected {
            index: index(1)?,
            available: int(2)?,
        }),
        Some("NOT_READY") => Ok(Reserve::NotReady { index: index(1)? }),
        Some("CLOSED") => Ok(Reserve::Closed {
            index: index(1)?,
            marker: items.get(2).and_then(as_text).ok_or_else(bad)?,
        }),
        Some("MISMATCH") => Ok(Reserve::Mismatch {
            index: index(1)?,
            held: int(2)?,
        }),
        _ => Err(bad()),
    }
}
