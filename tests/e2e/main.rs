//! End-to-end tests: the four services in-process against the real NATS,
//! Postgres and Redis of this machine, each test in its own database and
//! namespace (see `saga_tests::TestSystem`). One binary keeps link time down.

mod admission;
mod auth;
mod bench;
mod bus;
mod chaos;
mod contention;
mod delivery;
mod fuzz;
mod history;
mod holds;
mod idempotency;
mod instances;
mod inventory;
mod lock_order;
mod nats_cluster;
mod outages;
mod platform;
mod properties;
mod recovery;
mod redis_cluster;
mod replay;
mod retention;
mod saga;
mod stock;
mod tls;
mod validation;
mod watch;

use std::time::Duration;

/// How long a test waits for sagas to end or the system to go quiet: long,
/// because three tests share two cores and some run hundreds of sagas; a
/// passing test waits only as long as its sagas take.
pub const WAIT: Duration = Duration::from_secs(120);
