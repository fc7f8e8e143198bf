//! `sagactl stock upsert|seed|adjust|get|list`: catalog and stock.

use crate::cli::StockCmd;
use crate::client::{Clients, status_error};
use crate::show;

pub(super) async fn run(c: &Clients, cmd: StockCmd) -> anyhow::Result<()> {
    match cmd {
        StockCmd::Upsert {
            sku,
            name,
            price_cents,
        } => {
            let st = c
                .upsert_product(&sku, &name, price_cents)
                .await
                .map_err(status_error)?;
            println!("{}", show::stock(&st));
        }
        StockCmd::Seed {
            sku,
            name,
            price_cents,
            quantity,
        } => {
            let st = c
                .seed(&sku, &name, price_cents, quantity)
                .await
                .map_err(status_error)?;
            println!("{}", show::stock(&st));
        }
        StockCmd::Adjust {
            sku,
            delta,
            expected_version,
        } => {
            let expected_version = match expected_version {
                Some(v) => v,
                None => c.get_stock(&sku).await.map_err(status_error)?.version,
            };
            let st = c
                .adjust_stock(&sku, delta, expected_version)
                .await
                .map_err(status_error)?;
            println!("{}", show::stock(&st));
        }
        StockCmd::Get { sku } => {
            let st = c.get_stock(&sku).await.map_err(status_error)?;
            println!("{}", show::stock(&st));
        }
        StockCmd::List => {
            let mut token = String::new();
            loop {
                let page = c.list_stock(token).await.map_err(status_error)?;
                for st in &page.stocks {
                    println!("{}", show::stock(st));
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
    }
    Ok(())
}
