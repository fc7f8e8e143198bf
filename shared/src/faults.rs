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
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that arms crash points.
pub const ENV: &str = "SAGA_CRASH_AT";

/// Every crash point.
pub const POINTS: [&str; 5] = [
    "consumer.after_commit",
    "relay.after_take",
    "relay.after_publish",
    "inventory.after_redis_hold",
    "payment.after_charge",
];

struct Armed {
    /// point -> (crash at this hit, hits so far)
    points: HashMap<&'static str, (u64, AtomicU64)>,
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
fn parse(spec: &str) -> Vec<(&'static str, u64)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|item| {
            let (name, nth) = match item.split_once('@') {
                Some((name, n)) => (name, n.parse().unwrap_or(1)),
                None => (item, 1),
            };
            match POINTS.iter().find(|p| **p == name) {
                Some(p) => Some((*p, nth.max(1))),
                None => {
                    eprintln!("{ENV}: unknown crash point {name:?} ignored");
                    None
                }
            }
        })
        .collect()
}

/// Dies here if this crash point is armed and due.
pub fn crash_point(point: &'static str) {
    let Some(armed) = armed() else { return };
    let Some((at, hits)) = armed.points.get(point) else {
        return;
    };
    if hits.fetch_add(1, Ordering::SeqCst) + 1 == *at {
        eprintln!("crash point {point} reached (hit {at}): aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn specs_name_points_and_hits() {
        assert_eq!(
            super::parse("payment.after_charge@3, relay.after_publish,nope@2"),
            vec![("payment.after_charge", 3), ("relay.after_publish", 1)]
        );
        assert_eq!(super::parse(""), vec![]);
        assert_eq!(
            super::parse("consumer.after_commit@0"),
            vec![("consumer.after_commit", 1)]
        );
    }
}
