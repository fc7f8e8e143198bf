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
//! On a single Redis a multi-SKU order is held by one script call (all or
//! none, atomically). On Redis Cluster the lines are grouped by hash slot,
//! one call per group in slot order, and the groups this call took are given
//! back if a later one is refused: all or none as an outcome (docs/adr/0014).

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
    /// Line `index` (0-based) has only `available` units, by a counter of
    /// `epoch` (a refusal from a stale counter is no answer).
    Rejected {
        index: usize,
        available: i64,
        epoch: i64,
    },
    /// Line `index`'s counter was never rebuilt (or Redis lost it).
    NotReady { index: usize },
    /// The order's holds were already released or committed.
    Closed { index: usize, marker: String },
    /// The order already holds `held` units of line `index`, not the number
    /// asked for: a retry with other lines. Nothing changed.
    Mismatch { index: usize, held: i64 },
}

impl Reserve {
    /// The same answer, its line index mapped through `at` (from a group's
    /// lines to the order's).
    fn for_line(self, at: impl Fn(usize) -> usize) -> Self {
        match self {
            Reserve::Granted(epochs) => Reserve::Granted(epochs),
            Reserve::Rejected {
                index,
                available,
                epoch,
            } => Reserve::Rejected {
                index: at(index),
                available,
                epoch,
            },
            Reserve::NotReady { index } => Reserve::NotReady { index: at(index) },
            Reserve::Closed { index, marker } => Reserve::Closed {
                index: at(index),
                marker,
            },
            Reserve::Mismatch { index, held } => Reserve::Mismatch {
                index: at(index),
                held,
            },
        }
    }
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
    /// Holds Postgres released or committed, of those Redis has.
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

    /// The positions of `skus` grouped so that each group's keys share a
    /// hash slot: one group on a single Redis; on a cluster one per slot,
    /// in slot order (so that two orders meet their groups in one order).
    fn slot_groups<'a>(&self, skus: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
        let skus: Vec<&str> = skus.collect();
        if !self.redis.next().is_clustered() {
            return vec![(0..skus.len()).collect()];
        }
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, sku) in skus.iter().enumerate() {
            let slot = fred::util::redis_keyslot(self.sku_key(sku).as_bytes());
            by_slot.entry(slot).or_default().push(i);
        }
        by_slot.into_values().collect()
    }

    /// Holds every line for `order`, or none.
    pub async fn reserve(&self, order: Uuid, lines: &[Line]) -> Result<Reserve, CacheError> {
        let groups = self.slot_groups(lines.iter().map(|l| l.sku.as_str()));
        let mut epochs = vec![0; lines.len()];
        // The SKUs whose holds this call took, to give back if a later group
        // is refused or fails.
        let mut taken: Vec<&str> = Vec::new();
        for group in &groups {
            let part = group.iter().map(|&i| &lines[i]);
            let answer = match self.reserve_group(order, part).await {
                Ok(answer) => answer,
                Err(e) => {
                    // Best effort: what is not given back here is an orphan
                    // that reconciliation drops after its grace period.
                    let _ = self.revoke(order, &taken).await;
                    return Err(e);
                }
            };
            let at = |index: usize| group[index];
            match answer {
                GroupReply::Granted { epochs: got, fresh } => {
                    for (k, &i) in group.iter().enumerate() {
                        epochs[i] = got[k];
                        if fresh[k] {
                            taken.push(lines[i].sku.as_str());
                        }
                    }
                }
                GroupReply::Other(refused) => {
                    if !taken.is_empty() {
                        self.revoke(order, &taken).await?;
                    }
                    return Ok(refused.for_line(at));
                }
            }
        }
        Ok(Reserve::Granted(epochs))
    }

    /// One script call for lines whose keys share a slot.
    async fn reserve_group<'a>(
        &self,
        order: Uuid,
        lines: impl ExactSizeIterator<Item = &'a Line> + Clone,
    ) -> Result<GroupReply, CacheError> {
        let count = lines.len();
        let keys = self.order_keys(order, lines.clone().map(|l| l.sku.as_str()));
        let mut args = vec![order.to_string(), now_ms().to_string()];
        args.extend(lines.map(|l| l.quantity.to_string()));
        let reply = self.eval(&self.reserve, keys, args).await?;
        parse_reserve(reply, count)
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

    /// Closes the order's holds on `skus`, one script call per slot group
    /// (each is idempotent, so a retry after a partial failure finishes it).
    async fn close(&self, order: Uuid, skus: &[&str], kind: &str) -> Result<i64, CacheError> {
        let mut removed = 0;
        for group in self.slot_groups(skus.iter().copied()) {
            if group.is_empty() {
                continue;
            }
            let keys = self.order_keys(order, group.iter().map(|&i| skus[i]));
            let args = vec![
                order.to_string(),
                kind.to_owned(),
                self.marker_ttl.as_millis().to_string(),
            ];
            let reply = self.eval(&self.close, keys, args).await?;
            removed += as_int(&reply).ok_or_else(|| CacheError::Reply(format!("{reply:?}")))?;
        }
        Ok(removed)
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

    /// The orders a SKU's counter holds units for.
    pub async fn hold_ids(&self, sku: &str) -> Result<Vec<Uuid>, CacheError> {
        let fields: Vec<String> = self.redis.next().hkeys(self.sku_key(sku)).await?;
        Ok(fields
            .iter()
            .filter_map(|f| Uuid::parse_str(f).ok())
            .collect())
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

/// What one reserve script call answered.
enum GroupReply {
    /// Every line held: the counters' epochs, and whether this call took
    /// each hold (false: the order held it already).
    Granted { epochs: Vec<i64>, fresh: Vec<bool> },
    /// Anything but a grant (indices are within the call's lines).
    Other(Reserve),
}

fn parse_reserve(reply: Value, lines: usize) -> Result<GroupReply, CacheError> {
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
            if items.len() != 1 + 2 * lines {
                return Err(bad());
            }
            let epochs = (1..=lines).map(int).collect::<Result<Vec<_>, _>>()?;
            let fresh = (lines + 1..=2 * lines)
                .map(|i| int(i).map(|f| f == 1))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(GroupReply::Granted { epochs, fresh })
        }
        Some("REJECTED") => Ok(GroupReply::Other(Reserve::Rejected {
            index: index(1)?,
            available: int(2)?,
            epoch: int(3)?,
        })),
        Some("NOT_READY") => Ok(GroupReply::Other(Reserve::NotReady { index: index(1)? })),
        Some("CLOSED") => Ok(GroupReply::Other(Reserve::Closed {
            index: index(1)?,
            marker: items.get(2).and_then(as_text).ok_or_else(bad)?,
        })),
        Some("MISMATCH") => Ok(GroupReply::Other(Reserve::Mismatch {
            index: index(1)?,
            held: int(2)?,
        })),
        _ => Err(bad()),
    }
}
