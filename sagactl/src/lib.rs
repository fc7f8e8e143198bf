//! `sagactl`: the operator CLI, the all-in-one dev runner and clients.
//!
//! - [`system`]: the four services in one process (`sagactl up`, tests).
//! - [`client`]: gRPC clients of the four services.
//! - [`bench`]: benchmarks (the race lab).
//! - [`audit`]: the invariant auditor (`sagactl audit`).
//! - [`dlq`]: the dead-letter queue (`sagactl dlq list|show|redrive`).
//! - [`show`]: human-readable rendering of API messages.

pub mod audit;
pub mod bench;
pub mod client;
pub mod dlq;
pub mod show;
pub mod system;
