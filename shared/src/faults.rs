//! Crash points: places where a crash matters, which a drill or a test can
//! make the process die at. Off unless armed, and then only by the
//! environment of the process:
//!
//! ```text
//! SAGA_CRASH_AT=payment.after_charge@3,relay.after_publish
//! ```
//!
//! aborts the process (no unwinding, no cleanup: like `kill -9`) the 3rd time
//! it reaches `payment.after_charge`, or the first time it reaches
//! `relay.after_publish`. Unarmed, a crash point costs one atomic load.
//!
//! | point | where |
//! |---|---|
//! | `consumer.after_commit` | an event's transaction committed, the message not yet acked |
//! | `relay.after_take` | outbox rows taken (locked) by a relay, nothing published yet |
//! | `relay.after_publish` | outbox rows published and acked by JetStream, not yet marked sent |
//! | `inventory.after_redis_hold` | Redis holds the stock, Postgres has not recorded it |
//! | `payment.after_charge` | the wallet was charged in the transaction, the event not yet written |

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that arms crash points.
pub const ENV: &str = "SAGA_CRASH_AT";

/// Every place where a crash leaves work half-done across systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashPoint {
    /// An event's transaction committed, the message not yet acked.
    ConsumerAfterCommit,
    /// Outbox rows taken (locked) by a relay, nothing published yet.
    RelayAfterTake,
    /// Outbox rows published and acked by JetStream, not yet marked sent.
    RelayAfterPublish,
    /// Redis holds the stock, Postgres has not recorded it.
    InventoryAfterRedisHold,
    /// The wallet was charged in the transaction, the event not yet written.
    PaymentAfterCharge,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 5] = [
        CrashPoint::ConsumerAfterCommit,
        CrashPoint::RelayAfterTake,
        CrashPoint::RelayAfterPublish,
        CrashPoint::InventoryAfterRedisHold,
        CrashPoint::PaymentAfterCharge,
    ];

    /// Its name in `SAGA_CRASH_AT`.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::ConsumerAfterCommit => "consumer.after_commit",
            CrashPoint::RelayAfterTake => "relay.after_take",
            CrashPoint::RelayAfterPublish => "relay.after_publish",
            CrashPoint::InventoryAfterRedisHold => "inventory.after_redis_hold",
            CrashPoint::PaymentAfterCharge => "payment.after_charge",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

struct Armed {
    /// point -> (crash at this hit, hits so far)
    points: HashMap<CrashPoint, (u64, AtomicU64)>,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let points = parse(&spec)
                .into_iter()
                .map(|(p, n)| (p, (n, AtomicU64::new(0))))
                .collect::<HashMap<_, _>>();
            (!points.is_empty()).then_some(Armed { points })
        })
        .as_ref()
}

/// `point[@n]` items, comma separated; unknown points are ignored (with a
/// message on stderr).
fn parse(spec: &str) -> Vec<(CrashPoint, u64)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|item| {
            let (name, nth) = match item.split_once('@') {
                Some((name, n)) => (name, n.parse().unwrap_or(1)),
                None => (item, 1),
            };
            match CrashPoint::parse(name) {
                Some(p) => Some((p, nth.max(1))),
                None => {
                    eprintln!("{ENV}: unknown crash point {name:?} ignored");
                    None
                }
            }
        })
        .collect()
}

/// Dies here if this crash point is armed and due.
pub fn crash_point(point: CrashPoint) {
    let Some(armed) = armed() else { return };
    let Some((at, hits)) = armed.points.get(&point) else {
        return;
    };
    if hits.fetch_add(1, Ordering::SeqCst) + 1 == *at {
        eprintln!("crash point {point} reached (hit {at}): aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::CrashPoint;

    #[test]
    fn specs_name_points_and_hits() {
        assert_eq!(
            super::parse("payment.after_charge@3, relay.after_publish,nope@2"),
            vec![
                (CrashPoint::PaymentAfterCharge, 3),
                (CrashPoint::RelayAfterPublish, 1)
            ]
        );
        assert_eq!(super::parse(""), vec![]);
        assert_eq!(
            super::parse("consumer.after_commit@0"),
            vec![(CrashPoint::ConsumerAfterCommit, 1)]
        );
        for p in CrashPoint::ALL {
            assert_eq!(CrashPoint::parse(p.name()), Some(p));
        }
    }
}
