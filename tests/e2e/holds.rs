//! HoldSlot and ReleaseSlot: direct callers' places in slots, raced with
//! each other and with sagas for the same slot, retried, released early,
//! and kept apart from the sagas' bookings.

use saga_shared::proto::order::v1 as ord;
use saga_shared::proto::reservation::v1 as rsv;
use saga_tests::{TestSystem, order_request};
use sagactl::client::Clients;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::WAIT;

async fn hold(c: &Clients, hold_id: &str, slot: &str) -> Result<rsv::SlotHold, Status> {
    Ok(c.reservation
        .clone()
        .hold_slot(rsv::HoldSlotRequest {
            hold_id: hold_id.to_owned(),
            slot_id: slot.to_owned(),
        })
        .await?
        .into_inner()
        .hold
        .expect("a hold"))
}

async fn release(c: &Clients, hold_id: &str) -> Result<rsv::SlotHold, Status> {
    Ok(c.reservation
        .clone()
        .release_slot(rsv::ReleaseSlotRequest {
            hold_id: hold_id.to_owned(),
        })
        .await?
        .into_inner()
        .hold
        .expect("a hold"))
}

fn is(state: rsv::HoldState) -> impl Fn(&rsv::SlotHold) -> bool {
    move |h| h.state == state as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_holds_and_sagas_racing_for_a_slot_never_overbook_it() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let slot = sys.create_slot("race", 6).await?;
    sys.seed_product("H", 100, 1_000).await?;
    // 16 direct holds (each sent twice at once) and 16 orders, all at once,
    // for 6 places.
    let ids: Vec<String> = (0..16).map(|_| Uuid::new_v4().to_string()).collect();
    let holds = futures::future::join_all(
        ids.iter()
            .chain(ids.iter())
            .map(|id| hold(&sys.clients, id, &slot.slot_id)),
    );
    let orders = futures::future::join_all((0..16).map(|i| {
        let customer = format!("race-{i}");
        let slot = slot.slot_id.clone();
        let sys = &sys;
        async move {
            sys.top_up(&customer, 1_000).await?;
            Ok::<_, anyhow::Error>(
                sys.place(order_request(&customer, &[("H", 1)], Some(&slot)))
                    .await?,
            )
        }
    }));
    let (holds, orders) = tokio::join!(holds, orders);
    let holds = holds.into_iter().collect::<Result<Vec<_>, _>>()?;
    let orders = orders.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let ids_of: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();
    let ended = sys.wait_all_terminal(&ids_of, WAIT).await?;

    // Both copies of a hold got the same answer.
    for (first, second) in holds[..16].iter().zip(&holds[16..]) {
        assert_eq!(first.state, second.state, "{first:?} / {second:?}");
    }
    let held = holds[..16]
        .iter()
        .filter(|h| is(rsv::HoldState::Held)(h))
        .count();
    let confirmed = ended
        .iter()
        .filter(|o| o.state == ord::OrderState::Confirmed as i32)
        .count();
    assert_eq!(
        held + confirmed,
        6,
        "{held} held + {confirmed} confirmed for 6 places"
    );
    assert!(
        holds[..16]
            .iter()
            .all(|h| is(rsv::HoldState::Held)(h) || is(rsv::HoldState::Rejected)(h))
    );
    let now = sys.slot(&slot.slot_id).await?;
    assert_eq!(
        (now.held, now.confirmed, now.available),
        (held as i32, confirmed as i32, 0)
    );

    // Releasing gives the places back, once.
    let mine: Vec<&String> = ids
        .iter()
        .zip(&holds[..16])
        .filter(|(_, h)| is(rsv::HoldState::Held)(h))
        .map(|(id, _)| id)
        .collect();
    for id in &mine {
        assert!(is(rsv::HoldState::Released)(
            &release(&sys.clients, id).await?
        ));
        assert!(is(rsv::HoldState::Released)(
            &release(&sys.clients, id).await?
        ));
    }
    let after = sys.slot(&slot.slot_id).await?;
    assert_eq!((after.held, after.available), (0, held as i32));
    sys.quiesce(WAIT).await?;
    let violations = sys.violations().await?;
    assert!(violations.is_empty(), "{violations:?}");
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_holds_are_idempotent_kept_apart_from_sagas_and_tombstoned() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let a = sys.create_slot("a", 3).await?;
    let b = sys.create_slot("b", 3).await?;
    let id = Uuid::new_v4().to_string();
    let first = hold(&sys.clients, &id, &a.slot_id).await?;
    assert!(is(rsv::HoldState::Held)(&first));
    assert_eq!(hold(&sys.clients, &id, &a.slot_id).await?, first, "a retry");
    assert_eq!(sys.slot(&a.slot_id).await?.held, 1, "held once");
    // The same hold_id for another slot is a conflict that changes nothing.
    let other = hold(&sys.clients, &id, &b.slot_id)
        .await
        .expect_err("other slot");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    assert_eq!(sys.slot(&b.slot_id).await?.held, 0);

    // A release that comes first leaves a tombstone: the late hold holds
    // nothing.
    let early = Uuid::new_v4().to_string();
    let tomb = release(&sys.clients, &early).await?;
    assert!(is(rsv::HoldState::Released)(&tomb) && tomb.slot_id.is_empty());
    assert!(is(rsv::HoldState::Released)(
        &hold(&sys.clients, &early, &a.slot_id).await?
    ));
    assert_eq!(sys.slot(&a.slot_id).await?.held, 1);

    // An order's id is not a hold_id: its booking cannot be touched.
    sys.seed_product("H", 100, 10).await?;
    sys.top_up("sep", 1_000).await?;
    let placed = sys
        .place(order_request("sep", &[("H", 1)], Some(&b.slot_id)))
        .await?;
    let done = sys.wait_terminal(&placed.order_id, WAIT).await?;
    assert_eq!(done.state, ord::OrderState::Confirmed as i32);
    for refused in [
        release(&sys.clients, &placed.order_id)
            .await
            .expect_err("release a saga's"),
        hold(&sys.clients, &placed.order_id, &b.slot_id)
            .await
            .expect_err("hold as a saga"),
    ] {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    // Reservation confirms the booking when it reads `orders.confirmed`,
    // which may come after the order's own CONFIRMED.
    let slot = sys.slot(&b.slot_id).await?;
    assert_eq!(slot.held + slot.confirmed, 1, "the saga's place stands");
    saga_tests::eventually("the saga's booking confirmed", WAIT, || async {
        Ok(sys.slot(&b.slot_id).await?.confirmed == 1)
    })
    .await?;
    // Unknown slots and malformed ids store nothing.
    let unknown = hold(
        &sys.clients,
        &Uuid::new_v4().to_string(),
        &Uuid::new_v4().to_string(),
    )
    .await
    .expect_err("unknown slot");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let bad = hold(&sys.clients, "not-a-uuid", &a.slot_id)
        .await
        .expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        bad.message(),
        "hold_id: must be a UUID, got \"not-a-uuid\"",
        "{bad:?}"
    );
    sys.stop().await
}
