//! `sagactl wallet topup|get`: customer wallets.

use saga_shared::proto::payment::v1 as pay;

use crate::cli::WalletCmd;
use crate::client::{Clients, status_error, with_key};
use crate::show;

pub(super) async fn run(c: &Clients, cmd: WalletCmd) -> anyhow::Result<()> {
    let w = match cmd {
        WalletCmd::Topup {
            customer,
            amount_cents,
            idempotency_key,
        } => {
            let req = with_key(
                pay::TopUpRequest {
                    customer_id: customer,
                    amount_cents,
                },
                idempotency_key.as_deref(),
            )?;
            c.top_up(req).await.map_err(status_error)?
        }
        WalletCmd::Get { customer } => c.get_wallet(&customer).await.map_err(status_error)?,
    };
    println!("{}", show::wallet(&w));
    Ok(())
}
