//! `sagactl`: run the saga services and talk to them.
//!
//! `sagactl up` runs all four services in this process against the local
//! NATS, Postgres and Redis; the other commands are gRPC clients of running
//! services (the defaults match `up`). The arguments are in
//! [`sagactl::cli`], each command in its file under [`sagactl::cmd`].

use clap::Parser;
use sagactl::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sagactl::cmd::run(Cli::parse()).await
}
