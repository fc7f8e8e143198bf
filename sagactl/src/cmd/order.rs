//! `sagactl order place|get|list|cancel|watch`: orders.

use std::time::Duration;

use anyhow::Context;
use saga_shared::proto::order::v1 as ord;

use crate::cli::OrderCmd;
use crate::client::{Clients, status_error, with_key};
use crate::show;

pub(super) async fn run(c: &Clients, cmd: OrderCmd) -> anyhow::Result<()> {
    match cmd {
        OrderCmd::Place {
            customer,
            items,
            slot,
            idempotency_key,
            wait,
        } => {
            let items = items
                .iter()
                .map(|i| parse_item(i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let req = with_key(
                ord::PlaceOrderRequest {
                    customer_id: customer,
                    items,
                    slot_id: slot,
                },
                idempotency_key.as_deref(),
            )?;
            let placed = c.place_order(req).await.map_err(status_error)?;
            println!("{}", show::order(&placed));
            if let Some(secs) = wait {
                let done = c
                    .wait_for_end(&placed.order_id, Duration::from_secs(secs))
                    .await?;
                println!("{}", show::order(&done));
            }
        }
        OrderCmd::Get { order_id, wait } => {
            let o = match wait {
                Some(secs) => c.wait_for_end(&order_id, Duration::from_secs(secs)).await?,
                None => c.get_order(&order_id).await.map_err(status_error)?,
            };
            println!("{}", show::order(&o));
        }
        OrderCmd::List { customer, limit } => {
            let page = c.list_orders(customer, limit).await.map_err(status_error)?;
            for o in &page.orders {
                println!("{}", show::order(o));
            }
        }
        OrderCmd::Cancel { order_id } => {
            let o = c.cancel_order(&order_id).await.map_err(status_error)?;
            println!("{}", show::order(&o));
        }
        OrderCmd::Watch { order_id } => {
            let mut changes = c
                .order
                .clone()
                .watch_order(ord::WatchOrderRequest {
                    order_id,
                    after: None,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            while let Some(change) = changes.message().await.map_err(status_error)? {
                if let Some(o) = change.order {
                    println!("{}", show::order(&o));
                }
            }
        }
    }
    Ok(())
}

/// `--item SKU:QTY` as a line of the order.
fn parse_item(item: &str) -> anyhow::Result<ord::LineItem> {
    let (sku, qty) = item
        .rsplit_once(':')
        .with_context(|| format!("--item {item:?}: expected SKU:QUANTITY"))?;
    let quantity = qty
        .parse()
        .with_context(|| format!("--item {item:?}: quantity {qty:?} is not a whole number"))?;
    Ok(ord::LineItem {
        sku: sku.to_owned(),
        quantity,
    })
}
