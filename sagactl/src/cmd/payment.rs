//! `sagactl payment ORDER_ID`: the payment of an order.

use crate::client::{Clients, status_error};
use crate::show;

pub(super) async fn run(c: &Clients, order_id: &str) -> anyhow::Result<()> {
    let p = c.get_payment(order_id).await.map_err(status_error)?;
    println!("{}", show::payment(&p));
    Ok(())
}
