//! `sagactl demo`: seeds stock, a wallet and a slot, places an order and
//! follows it to its end.

use std::time::{Duration, Instant};

use saga_shared::proto::order::v1 as ord;
use saga_shared::proto::payment::v1 as pay;

use crate::client::{Clients, Urls, status_error};
use crate::dev::DEMO_CUSTOMER;
use crate::show;

/// Sets up with `c` (an admin's clients) and orders as the demo customer
/// when `sagactl up` wrote its token (otherwise with `c` too).
pub(super) async fn run(urls: &Urls, c: &Clients) -> anyhow::Result<()> {
    let customer = match crate::dev::demo_customer_token()? {
        Some(token) => Clients::with_token(urls, Some(token))?,
        None => c.clone(),
    };
    println!("1. stock");
    for (sku, name, price) in [
        ("demo-widget", "Widget", 2_500),
        ("demo-gadget", "Gadget", 1_250),
    ] {
        let st = c.seed(sku, name, price, 100).await.map_err(status_error)?;
        println!("   {}", show::stock(&st));
    }
    println!("2. wallet");
    let w = c
        .top_up(pay::TopUpRequest {
            customer_id: DEMO_CUSTOMER.into(),
            amount_cents: 10_000,
        })
        .await
        .map_err(status_error)?;
    println!("   {}", show::wallet(&w));
    println!("3. delivery slot");
    let slot = c.create_slot("demo slot", 10).await.map_err(status_error)?;
    println!("   {}", show::slot(&slot));
    println!("4. order: 2 widgets, 1 gadget, in that slot");
    let started = Instant::now();
    let placed = customer
        .place_order(ord::PlaceOrderRequest {
            customer_id: DEMO_CUSTOMER.into(),
            items: vec![
                ord::LineItem {
                    sku: "demo-widget".into(),
                    quantity: 2,
                },
                ord::LineItem {
                    sku: "demo-gadget".into(),
                    quantity: 1,
                },
            ],
            slot_id: Some(slot.slot_id.clone()),
        })
        .await
        .map_err(status_error)?;
    println!("{}", indent(&show::order(&placed)));
    let done = customer
        .wait_for_end(&placed.order_id, Duration::from_secs(30))
        .await?;
    println!("5. the saga ended after {:?}", started.elapsed());
    println!("{}", indent(&show::order(&done)));
    let w = customer
        .get_wallet(DEMO_CUSTOMER)
        .await
        .map_err(status_error)?;
    println!("   {}", show::wallet(&w));
    for sku in ["demo-widget", "demo-gadget"] {
        let st = c.get_stock(sku).await.map_err(status_error)?;
        println!("   {}", show::stock(&st));
    }
    let slot = c.get_slot(&slot.slot_id).await.map_err(status_error)?;
    println!("   {}", show::slot(&slot));
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("   {l}\n"))
        .collect::<String>()
        .trim_end()
        .to_owned()
}
