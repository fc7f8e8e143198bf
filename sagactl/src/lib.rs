//! `sagactl`: the operator CLI, the all-in-one dev runner and clients.
//!
//! - [`cli`]: the command line (clap's argument types).
//! - [`cmd`]: what each command does, one file per command.
//! - [`system`]: the four services in one process (`sagactl up`, tests).
//! - [`client`]: gRPC clients of the four services and their typed calls
//!   (the CLI's and the test harness's).
//! - [`dev`]: development credentials (`sagactl up`, `sagactl token`).
//! - [`poll`]: waiting on a condition with a deadline.
//! - [`bench`]: benchmarks (the race lab).
//! - [`audit`]: the invariant auditor (`sagactl audit`).
//! - [`dlq`]: the dead-letter queue (`sagactl dlq list|show|redrive`).
//! - [`replay`]: replay and checkpoints (`sagactl replay`).
//! - [`saga`]: a saga's story and the sagas that wait (`sagactl saga show|stuck`).
//! - [`show`]: human-readable rendering of API messages.

pub mod audit;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cmd;
pub mod dev;
pub mod dlq;
pub mod poll;
pub mod replay;
pub mod saga;
pub mod show;
pub mod system;
