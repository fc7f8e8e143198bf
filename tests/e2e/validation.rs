//! Bad input is refused before anything is stored, with the field named.

use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::order::v1 as ord;
use saga_shared::proto::payment::v1 as pay;
use saga_shared::proto::reservation::v1 as rsv;
use saga_tests::{TestSystem, order_request};
use tonic::Code;

fn expect(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    field: &str,
    case: &str,
) {
    match result {
        Ok(v) => panic!("{case}: accepted: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{case}: {s:?}");
            assert!(
                s.message().contains(field),
                "{case}: {:?} does not name {field:?}",
                s.message()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_order_gets_its_error_and_nothing_is_stored() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 10).await?;
    let slot = sys.create_slot("s", 1).await?.slot_id;
    let unknown_slot = uuid::Uuid::now_v7().to_string();
    let too_many: Vec<(String, i64)> = (0..51).map(|i| (format!("S{i}"), 1)).collect();
    let too_many: Vec<(&str, i64)> = too_many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
    let huge = "x".repeat(100_000);

    let cases: Vec<(&str, ord::PlaceOrderRequest, Code, &str)> = vec![
        (
            "no items",
            order_request("c", &[], None),
            Code::InvalidArgument,
            "items",
        ),
        (
            "quantity 0",
            order_request("c", &[("A", 0)], None),
            Code::InvalidArgument,
            "items[0].quantity",
        ),
        (
            "negative quantity",
            order_request("c", &[("A", -2)], None),
            Code::InvalidArgument,
            "items[0].quantity",
        ),
        (
            "overflowing quantity",
            order_request("c", &[("A", i64::MAX)], None),
            Code::InvalidArgument,
            "items[0].quantity",
        ),
        (
            "duplicate SKU",
            order_request("c", &[("A", 1), ("A", 2)], None),
            Code::InvalidArgument,
            "items[1].sku",
        ),
        (
            "unknown SKU",
            order_request("c", &[("A", 1), ("NOPE", 1)], None),
            Code::NotFound,
            "items[1].sku",
        ),
        (
            "unknown slot",
            order_request("c", &[("A", 1)], Some(&unknown_slot)),
            Code::NotFound,
            "slot_id",
        ),
        (
            "malformed slot",
            order_request("c", &[("A", 1)], Some("tuesday")),
            Code::InvalidArgument,
            "slot_id",
        ),
        (
            "too many lines",
            order_request("c", &too_many, None),
            Code::InvalidArgument,
            "items",
        ),
        (
            "missing customer",
            order_request("", &[("A", 1)], None),
            Code::InvalidArgument,
            "customer_id",
        ),
        (
            "oversized customer",
            order_request(&huge, &[("A", 1)], None),
            Code::InvalidArgument,
            "customer_id",
        ),
        (
            "oversized SKU",
            order_request("c", &[(&huge, 1)], None),
            Code::InvalidArgument,
            "items[0].sku",
        ),
        (
            "control characters",
            order_request("c\n", &[("A", 1)], None),
            Code::InvalidArgument,
            "customer_id",
        ),
    ];
    for (case, request, code, field) in cases {
        expect(sys.place(request).await, code, field, case);
    }
    expect(
        sys.place_with_key(
            order_request("c", &[("A", 1)], Some(&slot)),
            Some(&"k".repeat(201)),
        )
        .await,
        Code::InvalidArgument,
        "idempotency-key",
        "oversized idempotency key",
    );

    let mut orders = sys.clients.order.clone();
    expect(
        orders
            .get_order(ord::GetOrderRequest {
                order_id: "42".into(),
            })
            .await,
        Code::InvalidArgument,
        "order_id",
        "malformed order id",
    );
    expect(
        orders
            .get_order(ord::GetOrderRequest {
                order_id: uuid::Uuid::now_v7().to_string(),
            })
            .await,
        Code::NotFound,
        "order_id",
        "unknown order",
    );
    expect(
        orders
            .list_orders(ord::ListOrdersRequest {
                page_size: 10_000,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_size",
        "page too large",
    );
    expect(
        orders
            .list_orders(ord::ListOrdersRequest {
                state: Some(99),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "state",
        "unknown state filter",
    );

    // Nothing of the above was stored or published.
    for table in [
        "orders.orders",
        "orders.order_lines",
        "orders.outbox",
        "orders.idempotency_keys",
    ] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&sys.db)
                .await?;
        assert_eq!(n, 0, "{table} has rows");
    }
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_catalog_wallet_and_slot_requests_are_refused_and_change_nothing() -> anyhow::Result<()>
{
    let sys = TestSystem::start().await?;
    let a = sys.seed_product("A", 100, 10).await?;
    let mut inventory = sys.clients.inventory.clone();
    let mut payment = sys.clients.payment.clone();
    let mut reservation = sys.clients.reservation.clone();
    let upsert = |sku: &str, name: &str, price: i64| inv::UpsertProductRequest {
        sku: sku.into(),
        name: name.into(),
        unit_price_cents: price,
    };
    expect(
        inventory.upsert_product(upsert("", "n", 1)).await,
        Code::InvalidArgument,
        "sku",
        "empty SKU",
    );
    expect(
        inventory.upsert_product(upsert("a b", "n", 1)).await,
        Code::InvalidArgument,
        "sku",
        "SKU with a space",
    );
    expect(
        inventory.upsert_product(upsert("B", "", 1)).await,
        Code::InvalidArgument,
        "name",
        "empty name",
    );
    expect(
        inventory.upsert_product(upsert("B", "n", -1)).await,
        Code::InvalidArgument,
        "unit_price_cents",
        "negative price",
    );
    expect(
        inventory.upsert_product(upsert("B", "n", i64::MAX)).await,
        Code::InvalidArgument,
        "unit_price_cents",
        "huge price",
    );
    let adjust = |delta: i64, version: i64| inv::AdjustStockRequest {
        sku: "A".into(),
        delta,
        expected_version: version,
    };
    expect(
        inventory.adjust_stock(adjust(0, a.version)).await,
        Code::InvalidArgument,
        "delta",
        "zero delta",
    );
    expect(
        inventory.adjust_stock(adjust(i64::MAX, a.version)).await,
        Code::InvalidArgument,
        "delta",
        "overflowing delta",
    );
    expect(
        inventory.adjust_stock(adjust(5, a.version - 1)).await,
        Code::FailedPrecondition,
        "version",
        "stale version",
    );
    expect(
        inventory.adjust_stock(adjust(-11, a.version)).await,
        Code::FailedPrecondition,
        "on_hand",
        "below zero",
    );
    expect(
        inventory
            .get_stock(inv::GetStockRequest { sku: "NOPE".into() })
            .await,
        Code::NotFound,
        "NOPE",
        "unknown SKU",
    );
    let top_up = |customer: &str, amount: i64| pay::TopUpRequest {
        customer_id: customer.into(),
        amount_cents: amount,
    };
    expect(
        payment.top_up(top_up("c", 0)).await,
        Code::InvalidArgument,
        "amount_cents",
        "zero top-up",
    );
    expect(
        payment.top_up(top_up("c", -5)).await,
        Code::InvalidArgument,
        "amount_cents",
        "negative top-up",
    );
    expect(
        payment.top_up(top_up("c", i64::MAX)).await,
        Code::InvalidArgument,
        "amount_cents",
        "overflowing top-up",
    );
    expect(
        payment.top_up(top_up("", 5)).await,
        Code::InvalidArgument,
        "customer_id",
        "no customer",
    );
    expect(
        payment
            .get_wallet(pay::GetWalletRequest {
                customer_id: "ghost".into(),
            })
            .await,
        Code::NotFound,
        "customer_id",
        "unknown wallet",
    );
    let slot = |name: &str, capacity: i32| rsv::CreateSlotRequest {
        name: name.into(),
        capacity,
    };
    expect(
        reservation.create_slot(slot("s", 0)).await,
        Code::InvalidArgument,
        "capacity",
        "zero capacity",
    );
    expect(
        reservation.create_slot(slot("s", -1)).await,
        Code::InvalidArgument,
        "capacity",
        "negative capacity",
    );
    expect(
        reservation.create_slot(slot("", 1)).await,
        Code::InvalidArgument,
        "name",
        "no name",
    );
    expect(
        reservation
            .get_slot(rsv::GetSlotRequest {
                slot_id: "x".into(),
            })
            .await,
        Code::InvalidArgument,
        "slot_id",
        "malformed slot id",
    );

    let after = sys.stock("A").await?;
    assert_eq!((after.on_hand, after.version), (a.on_hand, a.version));
    for table in ["payment.wallets", "reservation.slots"] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&sys.db)
                .await?;
        assert_eq!(n, 0, "{table} has rows");
    }
    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory.products")
        .fetch_one(&sys.db)
        .await?;
    assert_eq!(products, 1);
    sys.stop().await
}

/// Sends `bytes` as the body of a unary call to `path` and returns the
/// status it is answered with (OK included).
pub(crate) async fn raw_call(
    url: &str,
    token: &str,
    path: &'static str,
    bytes: Vec<u8>,
) -> anyhow::Result<tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut request = tonic::Request::new(bytes);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let answer = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static(path),
            raw::RawCodec,
        )
        .await;
    Ok(match answer {
        Ok(_) => tonic::Status::ok(""),
        Err(s) => s,
    })
}

/// A codec that sends a body as given and ignores the answer's.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    pub struct RawCodec;
    pub struct Raw;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = ();
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = ();
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
            src.advance(src.remaining());
            Ok(Some(()))
        }
    }
}

/// `message` encoded, with each "XX" of its strings turned into two bytes
/// that are not UTF-8 (the length prefixes stay right).
fn not_utf8(message: &impl prost::Message) -> Vec<u8> {
    let mut bytes = message.encode_to_vec();
    for i in 0..bytes.len().saturating_sub(1) {
        if &bytes[i..i + 2] == b"XX" {
            bytes[i] = 0xff;
            bytes[i + 1] = 0xfe;
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_that_is_not_utf8_is_an_invalid_argument_naming_its_field_on_every_service()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let cases: Vec<(String, &'static str, Vec<u8>, &str)> = vec![
        (
            sys.order.grpc_url(),
            "/saga.order.v1.OrderService/PlaceOrder",
            not_utf8(&order_request("c1", &[("A", 1), ("BXX", 2)], None)),
            "items[1].sku",
        ),
        (
            sys.order.grpc_url(),
            "/saga.order.v1.OrderService/GetOrder",
            not_utf8(&ord::GetOrderRequest {
                order_id: "XX".into(),
            }),
            "order_id",
        ),
        (
            sys.inventory.grpc_url(),
            "/saga.inventory.v1.InventoryService/UpsertProduct",
            not_utf8(&inv::UpsertProductRequest {
                sku: "A".into(),
                name: "WidgetXX".into(),
                unit_price_cents: 1,
            }),
            "name",
        ),
        (
            sys.inventory.grpc_url(),
            "/saga.inventory.v1.InventoryService/ReserveStock",
            not_utf8(&inv::ReserveStockRequest {
                reservation_id: uuid::Uuid::now_v7().to_string(),
                lines: vec![inv::ReservationLine {
                    sku: "XX".into(),
                    quantity: 1,
                }],
            }),
            "lines[0].sku",
        ),
        (
            sys.payment.grpc_url(),
            "/saga.payment.v1.PaymentService/TopUp",
            not_utf8(&pay::TopUpRequest {
                customer_id: "cXX".into(),
                amount_cents: 100,
            }),
            "customer_id",
        ),
        (
            sys.reservation.grpc_url(),
            "/saga.reservation.v1.ReservationService/CreateSlot",
            not_utf8(&rsv::CreateSlotRequest {
                name: "MonXX".into(),
                capacity: 2,
            }),
            "name",
        ),
    ];
    let token = sys.minter.mint(
        "test-admin",
        saga_shared::auth::Role::Admin,
        std::time::Duration::from_secs(600),
    )?;
    for (url, path, bytes, field) in cases {
        let status = raw_call(&url, &token, path, bytes).await?;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert_eq!(
            status.message(),
            format!("{field}: not valid UTF-8"),
            "{path}"
        );
    }
    // Nothing was stored by any of them.
    assert!(sys.stock("A").await.is_err());
    assert!(sys.wallet("c1").await.is_err());
    let slots = sys
        .clients
        .reservation
        .clone()
        .list_slots(rsv::ListSlotsRequest::default())
        .await?
        .into_inner()
        .slots;
    assert!(slots.is_empty(), "{slots:?}");
    sys.stop().await
}
