//! What each command does, one file per command (the argument types are in
//! [`crate::cli`]). [`run`] hands a parsed command line to its command.
//!
//! `up`, `audit`, `inventory reconcile`, `dlq`, `replay`, `saga` and `bench` work on the
//! services' stores and the bus directly; the others are gRPC clients of
//! running services (see [`crate::client`]).

mod audit;
mod bench;
mod demo;
mod dlq;
mod order;
mod payment;
mod reconcile;
mod replay;
mod saga;
mod slot;
mod stock;
mod token;
mod up;
mod wallet;

use crate::cli::{Cli, Command, InventoryCmd};
use crate::client::{Clients, Urls};

/// Runs the command of a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let urls = Urls::try_from(&cli.urls)?;
    let given = cli.urls.token;
    let clients = || Clients::with_token(&urls, crate::dev::cli_token(given.clone())?);
    match cli.command {
        Command::Up {
            namespace,
            log_format,
        } => up::run(namespace, &log_format).await,
        Command::Inventory(InventoryCmd::Reconcile { skus, namespace }) => {
            reconcile::run(skus, namespace).await
        }
        Command::Dlq {
            command,
            nats_url,
            namespace,
        } => dlq::run(command, &nats_url, &namespace).await,
        Command::Audit { namespace } => audit::run(namespace).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Saga(cmd) => saga::run(cmd).await,
        Command::Demo => demo::run(&urls, &clients()?).await,
        Command::Token(args) => token::run(&args),
        Command::Stock(cmd) => stock::run(&clients()?, cmd).await,
        Command::Wallet(cmd) => wallet::run(&clients()?, cmd).await,
        Command::Slot(cmd) => slot::run(&clients()?, cmd).await,
        Command::Order(cmd) => order::run(&clients()?, cmd).await,
        Command::Payment { order_id } => payment::run(&clients()?, &order_id).await,
    }
}
