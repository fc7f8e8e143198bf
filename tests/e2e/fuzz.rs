//! Every RPC fed bytes no client should send: random ones, and valid
//! requests with bytes flipped, cut short or run on. Each answer must be a
//! status that names a cause (INVALID_ARGUMENT, NOT_FOUND, ...), never
//! INTERNAL or UNKNOWN, and no handler may take a service down: afterwards
//! an order still runs to its end. The seed is printed, and
//! `SAGA_FUZZ_SEED` replays a run; `SAGA_FUZZ_CASES` sets the cases per RPC
//! (the cargo-fuzz targets in `fuzz/` go deeper, see the README).

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use saga_shared::auth::Role;
use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::order::v1 as ord;
use saga_shared::proto::payment::v1 as pay;
use saga_shared::proto::reservation::v1 as rsv;
use saga_tests::{TestSystem, order_request};
use tonic::Code;

use crate::WAIT;
use crate::validation::raw_call;

/// A valid request of each unary RPC, encoded, with the service it goes to.
fn seeds(sys: &TestSystem, order: &str, slot: &str) -> Vec<(String, &'static str, Vec<u8>)> {
    let o = sys.urls.order.clone();
    let i = sys.urls.inventory.clone();
    let p = sys.urls.payment.clone();
    let r = sys.urls.reservation.clone();
    let id = uuid::Uuid::new_v4().to_string();
    vec![
        (
            o.clone(),
            "/saga.order.v1.OrderService/PlaceOrder",
            order_request("fz", &[("FZ", 1)], Some(slot)).encode_to_vec(),
        ),
        (
            o.clone(),
            "/saga.order.v1.OrderService/GetOrder",
            ord::GetOrderRequest {
                order_id: order.into(),
            }
            .encode_to_vec(),
        ),
        (
            o.clone(),
            "/saga.order.v1.OrderService/ListOrders",
            ord::ListOrdersRequest {
                page_size: 5,
                customer_id: Some("fz".into()),
                state: Some(1),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            o.clone(),
            "/saga.order.v1.OrderService/CancelOrder",
            ord::CancelOrderRequest {
                order_id: order.into(),
            }
            .encode_to_vec(),
        ),
        (
            o.clone(),
            "/saga.order.v1.OrderService/GetOrderOutcomes",
            ord::GetOrderOutcomesRequest {
                order_ids: vec![order.into()],
            }
            .encode_to_vec(),
        ),
        (
            o,
            "/saga.order.v1.OrderService/GetOrderHistory",
            ord::GetOrderHistoryRequest {
                order_id: order.into(),
            }
            .encode_to_vec(),
        ),
        (
            i.clone(),
            "/saga.inventory.v1.InventoryService/UpsertProduct",
            inv::UpsertProductRequest {
                sku: "FZ2".into(),
                name: "fz".into(),
                unit_price_cents: 5,
            }
            .encode_to_vec(),
        ),
        (
            i.clone(),
            "/saga.inventory.v1.InventoryService/GetStock",
            inv::GetStockRequest { sku: "FZ".into() }.encode_to_vec(),
        ),
        (
            i.clone(),
            "/saga.inventory.v1.InventoryService/ListStock",
            inv::ListStockRequest {
                page_size: 3,
                skus: vec!["FZ".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            i.clone(),
            "/saga.inventory.v1.InventoryService/AdjustStock",
            inv::AdjustStockRequest {
                sku: "FZ".into(),
                delta: 1,
                expected_version: 1,
            }
            .encode_to_vec(),
        ),
        (
            i.clone(),
            "/saga.inventory.v1.InventoryService/ReserveStock",
            inv::ReserveStockRequest {
                reservation_id: id.clone(),
                lines: vec![inv::ReservationLine {
                    sku: "FZ".into(),
                    quantity: 1,
                }],
            }
            .encode_to_vec(),
        ),
        (
            i.clone(),
            "/saga.inventory.v1.InventoryService/ReleaseStock",
            inv::ReleaseStockRequest {
                reservation_id: id.clone(),
            }
            .encode_to_vec(),
        ),
        (
            i,
            "/saga.inventory.v1.InventoryService/CommitStock",
            inv::CommitStockRequest {
                reservation_id: id.clone(),
            }
            .encode_to_vec(),
        ),
        (
            p.clone(),
            "/saga.payment.v1.PaymentService/GetWallet",
            pay::GetWalletRequest {
                customer_id: "fz".into(),
            }
            .encode_to_vec(),
        ),
        (
            p.clone(),
            "/saga.payment.v1.PaymentService/TopUp",
            pay::TopUpRequest {
                customer_id: "fz".into(),
                amount_cents: 1,
            }
            .encode_to_vec(),
        ),
        (
            p,
            "/saga.payment.v1.PaymentService/GetPayment",
            pay::GetPaymentRequest {
                order_id: order.into(),
            }
            .encode_to_vec(),
        ),
        (
            r.clone(),
            "/saga.reservation.v1.ReservationService/CreateSlot",
            rsv::CreateSlotRequest {
                name: "fz".into(),
                capacity: 1,
            }
            .encode_to_vec(),
        ),
        (
            r.clone(),
            "/saga.reservation.v1.ReservationService/GetSlot",
            rsv::GetSlotRequest {
                slot_id: slot.into(),
            }
            .encode_to_vec(),
        ),
        (
            r.clone(),
            "/saga.reservation.v1.ReservationService/ListSlots",
            rsv::ListSlotsRequest {
                page_size: 2,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            r.clone(),
            "/saga.reservation.v1.ReservationService/HoldSlot",
            rsv::HoldSlotRequest {
                hold_id: id.clone(),
                slot_id: slot.into(),
            }
            .encode_to_vec(),
        ),
        (
            r,
            "/saga.reservation.v1.ReservationService/ReleaseSlot",
            rsv::ReleaseSlotRequest { hold_id: id }.encode_to_vec(),
        ),
    ]
}

/// A request no client should send, made from `seed`.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    match rng.random_range(0..5) {
        // Random bytes.
        0 => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
        // Flipped bytes.
        1 if !bytes.is_empty() => {
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= rng.random::<u8>() | 1;
            }
            bytes
        }
        // Cut short.
        2 if !bytes.is_empty() => {
            bytes.truncate(rng.random_range(0..bytes.len()));
            bytes
        }
        // Run on with garbage.
        3 => {
            bytes.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>()));
            bytes
        }
        // A field repeated with other contents (a valid prefix, then the
        // same field numbers again).
        _ => {
            let mut twice = bytes.clone();
            twice.extend(mutate(rng, seed));
            twice
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_to_every_rpc_get_a_named_error_never_internal() -> anyhow::Result<()> {
    let seed: u64 = std::env::var("SAGA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let cases: usize = std::env::var("SAGA_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    println!("SAGA_FUZZ_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let sys = TestSystem::start().await?;
    sys.seed_product("FZ", 100, 1_000).await?;
    sys.top_up("fz", 100_000).await?;
    let slot = sys.create_slot("fz", 1_000).await?;
    let placed = sys.place(order_request("fz", &[("FZ", 1)], None)).await?;
    let token = sys
        .minter
        .mint("fuzz", Role::Admin, std::time::Duration::from_secs(3600))?;

    let mut bad = Vec::new();
    for (url, path, valid) in seeds(&sys, &placed.order_id, &slot.slot_id) {
        for _ in 0..cases {
            let bytes = mutate(&mut rng, &valid);
            let status = raw_call(&url, &token, path, bytes.clone()).await?;
            if matches!(
                status.code(),
                Code::Internal | Code::Unknown | Code::Unavailable
            ) {
                bad.push(format!("{path} {bytes:?}: {status:?}"));
            }
        }
    }
    assert!(bad.is_empty(), "seed {seed}:\n{}", bad.join("\n"));

    // Every service still serves a saga end to end.
    let after = sys
        .place(order_request("fz", &[("FZ", 1)], Some(&slot.slot_id)))
        .await?;
    let ended = sys.wait_terminal(&after.order_id, WAIT).await?;
    assert!(
        ended.state == ord::OrderState::Confirmed as i32
            || ended.state == ord::OrderState::Cancelled as i32,
        "{ended:?}"
    );
    sys.stop().await
}
