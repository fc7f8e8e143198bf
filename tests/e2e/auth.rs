//! Who may call what: every RPC called by an anonymous caller, the customer
//! who owns the records, another customer, an admin and a service, each
//! answered as the README's access matrix says; and tokens that must not
//! pass (expired, not yet valid, for another audience or issuer, signed
//! with another secret, unsigned, malformed) are refused as such.

use std::time::Duration;

use saga_shared::auth::{AuthConfig, Minter, Role};
use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::order::v1 as ord;
use saga_shared::proto::payment::v1 as pay;
use saga_shared::proto::reservation::v1 as rsv;
use saga_tests::{TestSystem, order_request};
use sagactl::client::Clients;
use strum::VariantArray;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::WAIT;

const OWNER: &str = "auth-owner";
const OTHER: &str = "auth-other";
const SKU: &str = "AUTH-A";

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::VariantArray)]
enum Who {
    Anonymous,
    Owner,
    OtherCustomer,
    Admin,
    Service,
}

/// How a call must be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Served: anything but UNAUTHENTICATED, PERMISSION_DENIED or NOT_FOUND.
    Served,
    Unauthenticated,
    Denied,
    /// As if the record did not exist.
    Hidden,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::VariantArray)]
enum Rpc {
    PlaceOrder,
    GetOrder,
    ListOrders,
    CancelOrder,
    GetOrderOutcomes,
    GetOrderHistory,
    WatchOrder,
    UpsertProduct,
    GetStock,
    ListStock,
    AdjustStock,
    ReserveStock,
    ReleaseStock,
    CommitStock,
    GetWallet,
    TopUp,
    GetPayment,
    CreateSlot,
    GetSlot,
    ListSlots,
    HoldSlot,
    ReleaseSlot,
}

/// The matrix, written out independently of the services' rule table.
fn expect(rpc: Rpc, who: Who) -> Expect {
    use Expect::*;
    use Rpc::*;
    if who == Who::Anonymous {
        return Unauthenticated;
    }
    match rpc {
        // A customer's own records; an admin's for anyone.
        PlaceOrder | ListOrders | GetWallet => match who {
            Who::Owner | Who::Admin => Served,
            _ => Denied,
        },
        GetOrder | CancelOrder | GetOrderHistory | WatchOrder | GetPayment => match who {
            Who::Owner | Who::Admin => Served,
            Who::OtherCustomer => Hidden,
            _ => Denied,
        },
        // Services' calls of each other, and operators'.
        GetOrderOutcomes | GetStock | ListStock | ReserveStock | ReleaseStock | CommitStock
        | GetSlot | ListSlots | HoldSlot | ReleaseSlot => match who {
            Who::Admin | Who::Service => Served,
            _ => Denied,
        },
        // Operators only.
        UpsertProduct | AdjustStock | TopUp | CreateSlot => match who {
            Who::Admin => Served,
            _ => Denied,
        },
    }
}

/// Records the calls act on, made by an admin.
struct Fixture {
    /// The owner's order, ended.
    order_id: String,
    slot_id: String,
}

async fn call(rpc: Rpc, c: &Clients, admin: &Clients, fx: &Fixture) -> Result<(), Status> {
    let (mut o, mut i, mut p, mut r) = (
        c.order.clone(),
        c.inventory.clone(),
        c.payment.clone(),
        c.reservation.clone(),
    );
    let order_id = fx.order_id.clone();
    match rpc {
        Rpc::PlaceOrder => o
            .place_order(order_request(OWNER, &[(SKU, 1)], None))
            .await
            .map(drop),
        Rpc::GetOrder => o
            .get_order(ord::GetOrderRequest { order_id })
            .await
            .map(drop),
        Rpc::ListOrders => o
            .list_orders(ord::ListOrdersRequest {
                customer_id: Some(OWNER.into()),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::CancelOrder => match o.cancel_order(ord::CancelOrderRequest { order_id }).await {
            // The order has ended: cancelling it is refused on its merits.
            Err(s) if s.code() == Code::FailedPrecondition => Ok(()),
            other => other.map(drop),
        },
        Rpc::GetOrderOutcomes => o
            .get_order_outcomes(ord::GetOrderOutcomesRequest {
                order_ids: vec![order_id],
            })
            .await
            .map(drop),
        Rpc::GetOrderHistory => o
            .get_order_history(ord::GetOrderHistoryRequest { order_id })
            .await
            .map(drop),
        Rpc::WatchOrder => o
            .watch_order(ord::WatchOrderRequest {
                order_id,
                after: None,
            })
            .await
            .map(drop),
        Rpc::UpsertProduct => i
            .upsert_product(inv::UpsertProductRequest {
                sku: SKU.into(),
                name: "auth product".into(),
                unit_price_cents: 100,
            })
            .await
            .map(drop),
        Rpc::GetStock => i
            .get_stock(inv::GetStockRequest { sku: SKU.into() })
            .await
            .map(drop),
        Rpc::ListStock => i
            .list_stock(inv::ListStockRequest::default())
            .await
            .map(drop),
        Rpc::AdjustStock => {
            let version = admin.get_stock(SKU).await?.version;
            i.adjust_stock(inv::AdjustStockRequest {
                sku: SKU.into(),
                delta: 1,
                expected_version: version,
            })
            .await
            .map(drop)
        }
        Rpc::ReserveStock => i
            .reserve_stock(reserve(&Uuid::new_v4().to_string()))
            .await
            .map(drop),
        Rpc::ReleaseStock | Rpc::CommitStock => {
            // A reservation of the admin's, for this caller to close.
            let id = Uuid::new_v4().to_string();
            admin.inventory.clone().reserve_stock(reserve(&id)).await?;
            if rpc == Rpc::ReleaseStock {
                i.release_stock(inv::ReleaseStockRequest { reservation_id: id })
                    .await
                    .map(drop)
            } else {
                i.commit_stock(inv::CommitStockRequest { reservation_id: id })
                    .await
                    .map(drop)
            }
        }
        Rpc::GetWallet => p
            .get_wallet(pay::GetWalletRequest {
                customer_id: OWNER.into(),
            })
            .await
            .map(drop),
        Rpc::TopUp => p
            .top_up(pay::TopUpRequest {
                customer_id: OWNER.into(),
                amount_cents: 1,
            })
            .await
            .map(drop),
        Rpc::GetPayment => p
            .get_payment(pay::GetPaymentRequest { order_id })
            .await
            .map(drop),
        Rpc::CreateSlot => r
            .create_slot(rsv::CreateSlotRequest {
                name: "auth slot".into(),
                capacity: 1,
            })
            .await
            .map(drop),
        Rpc::GetSlot => r
            .get_slot(rsv::GetSlotRequest {
                slot_id: fx.slot_id.clone(),
            })
            .await
            .map(drop),
        Rpc::HoldSlot => r
            .hold_slot(rsv::HoldSlotRequest {
                hold_id: Uuid::new_v4().to_string(),
                slot_id: fx.slot_id.clone(),
            })
            .await
            .map(drop),
        Rpc::ReleaseSlot => r
            .release_slot(rsv::ReleaseSlotRequest {
                hold_id: Uuid::new_v4().to_string(),
            })
            .await
            .map(drop),
        Rpc::ListSlots => r
            .list_slots(rsv::ListSlotsRequest::default())
            .await
            .map(drop),
    }
}

fn reserve(id: &str) -> inv::ReserveStockRequest {
    inv::ReserveStockRequest {
        reservation_id: id.to_owned(),
        lines: vec![inv::ReservationLine {
            sku: SKU.into(),
            quantity: 1,
        }],
    }
}

fn answered(result: &Result<(), Status>) -> Expect {
    match result {
        Err(s) if s.code() == Code::Unauthenticated => Expect::Unauthenticated,
        Err(s) if s.code() == Code::PermissionDenied => Expect::Denied,
        Err(s) if s.code() == Code::NotFound => Expect::Hidden,
        _ => Expect::Served,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_each_kind_of_caller_as_the_access_matrix_says() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product(SKU, 100, 10_000).await?;
    sys.top_up(OWNER, 1_000_000).await?;
    let slot = sys.create_slot("auth", 5).await?;
    let owner = sys.clients_as(OWNER, Role::Customer)?;
    let placed = owner
        .place_order(order_request(OWNER, &[(SKU, 1)], None))
        .await?;
    let ended = sys.wait_terminal(&placed.order_id, WAIT).await?;
    assert_eq!(ended.state, ord::OrderState::Confirmed as i32, "{ended:?}");
    let fx = Fixture {
        order_id: placed.order_id,
        slot_id: slot.slot_id,
    };

    let callers = [
        (Who::Anonymous, Clients::with_token(&sys.urls, None)?),
        (Who::Owner, owner),
        (Who::OtherCustomer, sys.clients_as(OTHER, Role::Customer)?),
        (Who::Admin, sys.clients.clone()),
        (Who::Service, sys.clients_as("some-svc", Role::Service)?),
    ];
    assert_eq!(callers.len(), Who::VARIANTS.len());
    let mut wrong = Vec::new();
    for rpc in Rpc::VARIANTS {
        for (who, clients) in &callers {
            let result = call(*rpc, clients, &sys.clients, &fx).await;
            let (want, got) = (expect(*rpc, *who), answered(&result));
            if want != got {
                wrong.push(format!("{rpc:?} by {who:?}: want {want:?}, got {result:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // What a customer lists is its own, with or without a filter; and the
    // other customer's list holds none of the owner's orders.
    let other = &callers[2].1;
    let listed = other
        .order
        .clone()
        .list_orders(ord::ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders;
    assert!(listed.iter().all(|o| o.customer_id == OTHER), "{listed:?}");
    let mine = callers[1]
        .1
        .order
        .clone()
        .list_orders(ord::ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders;
    assert!(!mine.is_empty() && mine.iter().all(|o| o.customer_id == OWNER));
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_must_not_pass_are_refused_as_unauthenticated() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let secret = sys.config.order.auth.hs256_secret.clone();
    let minter_with = |f: &dyn Fn(&mut AuthConfig)| {
        let mut cfg = AuthConfig::with_secret(&secret);
        f(&mut cfg);
        Minter::from_config(&cfg)
    };
    let hour = Duration::from_secs(3600);
    let claims = || {
        let now = jsonwebtoken::get_current_timestamp();
        format!(
            r#"{{"sub":"x","role":"admin","iss":"saga","aud":"saga","iat":{now},"nbf":{now},"exp":{}}}"#,
            now + 3600
        )
    };
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let signed = |claims: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::from_str::<serde_json::Value>(claims).unwrap(),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let now = jsonwebtoken::get_current_timestamp();
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "not.a.token".into()),
        (
            "unsigned (alg none)",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&claims())
            ),
        ),
        (
            "another secret",
            Minter::from_config(&AuthConfig::with_secret(&saga_shared::auth::random_secret()))?
                .mint("x", Role::Admin, hour)?,
        ),
        (
            "another audience",
            minter_with(&|c| c.audience = "elsewhere".into())?.mint("x", Role::Admin, hour)?,
        ),
        (
            "another issuer",
            minter_with(&|c| c.issuer = "mallory".into())?.mint("x", Role::Admin, hour)?,
        ),
        (
            "expired",
            signed(&format!(
                r#"{{"sub":"x","role":"admin","iss":"saga","aud":"saga","iat":{},"nbf":{},"exp":{}}}"#,
                now - 7200,
                now - 7200,
                now - 3600
            )),
        ),
        (
            "not valid yet",
            signed(&format!(
                r#"{{"sub":"x","role":"admin","iss":"saga","aud":"saga","iat":{now},"nbf":{},"exp":{}}}"#,
                now + 3600,
                now + 7200
            )),
        ),
        (
            "no nbf",
            signed(&format!(
                r#"{{"sub":"x","role":"admin","iss":"saga","aud":"saga","exp":{}}}"#,
                now + 3600
            )),
        ),
        (
            "an unknown role",
            signed(&claims().replace(r#""role":"admin""#, r#""role":"root""#)),
        ),
    ];
    for (what, token) in cases {
        let clients = Clients::with_token(&sys.urls, Some(token))?;
        for result in [
            clients.get_stock(SKU).await.map(drop),
            clients.get_wallet(OWNER).await.map(drop),
        ] {
            let status = result.expect_err(what);
            assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        }
    }
    // The same token signed properly passes (the cases fail for their
    // flaw alone): NOT_FOUND for a SKU that does not exist.
    let good = Clients::with_token(&sys.urls, Some(signed(&claims())))?;
    let status = good.get_stock(SKU).await.expect_err("no such SKU");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // And no scheme but Bearer (sent on a client that adds no token).
    let mut bare = Clients::with_token(&sys.urls, None)?.inventory;
    let mut request = tonic::Request::new(inv::GetStockRequest { sku: SKU.into() });
    request.metadata_mut().insert(
        "authorization",
        format!("Basic {}", b64("admin:admin")).parse()?,
    );
    let status = bare.get_stock(request).await.expect_err("basic auth");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_by_two_customers_names_two_calls() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product(SKU, 100, 100).await?;
    let (a, b) = ("key-owner-a", "key-owner-b");
    let mut placed = Vec::new();
    for customer in [a, b, a] {
        let mut request = tonic::Request::new(order_request(customer, &[(SKU, 1)], None));
        request
            .metadata_mut()
            .insert("idempotency-key", "shared-key".parse()?);
        let order = sys
            .clients_as(customer, Role::Customer)?
            .order
            .clone()
            .place_order(request)
            .await?
            .into_inner()
            .order
            .expect("an order");
        assert_eq!(order.customer_id, customer);
        placed.push(order.order_id);
    }
    assert_ne!(placed[0], placed[1], "b was answered with a's order");
    assert_eq!(placed[0], placed[2], "a's retry is still a's order");
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_past_its_rate_is_told_to_wait_while_others_are_served() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        for auth in [
            &mut cfg.order.auth,
            &mut cfg.inventory.auth,
            &mut cfg.payment.auth,
            &mut cfg.reservation.auth,
        ] {
            // One call a second, five at once: a burst of twenty cannot pass.
            auth.customer_rate_per_sec = 1;
            auth.customer_burst = 5;
            // Services too, when given a rate (the default is none).
            auth.service_rate_per_sec = 1;
            auth.service_burst = 5;
        }
    })
    .await?;
    sys.top_up("rate-a", 100).await?;
    sys.top_up("rate-b", 100).await?;
    let a = sys.clients_as("rate-a", Role::Customer)?;
    let mut limited = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        if let Err(s) = a.get_wallet("rate-a").await {
            limited.push(s);
        }
    }
    // The burst, and one more for each second the calls took.
    let allowed = 5 + started.elapsed().as_secs() as usize + 1;
    assert!(
        20 - limited.len() <= allowed && !limited.is_empty(),
        "{} of 20 refused, at most {allowed} may pass",
        limited.len()
    );
    for s in &limited {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(
            s.metadata().get("grpc-retry-pushback-ms").is_some(),
            "{s:?}"
        );
    }
    // Another customer has its own allowance, and an admin has no limit.
    let b = sys.clients_as("rate-b", Role::Customer)?;
    b.get_wallet("rate-b").await?;
    for _ in 0..20 {
        sys.clients.get_wallet("rate-a").await?;
    }
    // A service given a rate is held to it.
    let svc = sys.clients_as("rate-svc", Role::Service)?;
    let mut refused = 0;
    for _ in 0..20 {
        if let Err(s) = svc
            .inventory
            .clone()
            .list_stock(inv::ListStockRequest::default())
            .await
        {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            refused += 1;
        }
    }
    assert!(refused > 0, "a service past its rate was served");
    sys.stop().await
}

/// A catalog check that inventory refuses for good (order-svc's service
/// token is missing or wrong: UNAUTHENTICATED, PERMISSION_DENIED) is an
/// INTERNAL error, its cause logged, not UNAVAILABLE: a client retried
/// every PlaceOrder forever, and nothing pointed the operator at the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_check_refused_for_good_is_internal_not_unavailable() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("A", 100, 10).await?;
    let pool = saga_shared::db::open_existing(
        &sys.config.order.database,
        &order_svc::MIGRATIONS,
        &sys.config.order.namespace,
    )
    .await?;
    // order-svc's use-cases with no service token for their calls.
    let mut cfg = sys.config.order.clone();
    cfg.order.inventory_url = sys.inventory.grpc_url();
    let orders = order_svc::orders(
        &cfg,
        pool,
        saga_shared::bus::Outbox::new(),
        saga_shared::auth::WithToken::none(),
        None,
        tokio_util::sync::CancellationToken::new(),
    )?;
    let new = order_svc::domain::validate_new_order(
        "cat",
        &[("A".to_owned(), 1)],
        None,
        orders.limits(),
    )?;
    let refused = orders
        .check_references(&new)
        .await
        .expect_err("inventory refuses a call without a token");
    let status = tonic::Status::from(refused);
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    sys.stop().await
}
