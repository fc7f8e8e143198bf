//! Decoded requests through the services' own validation: any field
//! values, never a panic, and a refusal always names a field of the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use saga_shared::proto::{
    inventory::v1 as inv, order::v1 as ord, payment::v1 as pay, reservation::v1 as rsv,
};
use saga_shared::validate::FieldError;

fn named(result: Result<impl Sized, FieldError>, fields: &[&str]) {
    if let Err(e) = result {
        let root = e.field.split(['[', '.']).next().unwrap_or_default();
        assert!(fields.contains(&root), "{e:?} names no field of {fields:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 5 {
        0 => {
            if let Ok(r) = ord::PlaceOrderRequest::decode(body) {
                let items: Vec<(String, i64)> = r
                    .items
                    .iter()
                    .map(|i| (i.sku.clone(), i.quantity))
                    .collect();
                let limits = order_svc::domain::Limits {
                    max_lines: 50,
                    max_quantity: 10_000,
                };
                named(
                    order_svc::domain::validate_new_order(
                        &r.customer_id,
                        &items,
                        r.slot_id.as_deref(),
                        limits,
                    ),
                    &["customer_id", "items", "slot_id"],
                );
            }
        }
        1 => {
            if let Ok(r) = inv::UpsertProductRequest::decode(body) {
                named(
                    inventory_svc::domain::validate_product(&r.sku, &r.name, r.unit_price_cents),
                    &["sku", "name", "unit_price_cents"],
                );
            }
        }
        2 => {
            if let Ok(r) = pay::TopUpRequest::decode(body) {
                named(
                    payment_svc::domain::validate_top_up(&r.customer_id, r.amount_cents),
                    &["customer_id", "amount_cents"],
                );
            }
        }
        3 => {
            if let Ok(r) = rsv::CreateSlotRequest::decode(body) {
                named(
                    reservation_svc::domain::validate_new_slot(&r.name, r.capacity),
                    &["name", "capacity"],
                );
            }
        }
        _ => {
            if let Ok(r) = ord::GetOrderRequest::decode(body) {
                named(
                    saga_shared::validate::uuid("order_id", &r.order_id),
                    &["order_id"],
                );
            }
        }
    }
});
