//! At-least-once transport, exactly-once effects: events delivered twice,
//! replayed, or arriving in the wrong order change nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use saga_shared::bus::{SagaEvent, StreamKind};
use saga_shared::proto::events::v1 as pb;
use saga_shared::proto::order::v1::{CancelOrderRequest, OrderState};
use saga_tests::{TestSystem, eventually, order_request, reason, state};
use uuid::Uuid;

use crate::WAIT;

const COPY_HEADER: &str = "Saga-Test-Copy";

/// Publishes a second copy of every event of the namespace (same event id,
/// another `Nats-Msg-Id`, so the stream keeps both).
struct Copier {
    task: tokio::task::JoinHandle<()>,
    /// Events seen (not copies, not dead letters), and copies published.
    originals: Arc<AtomicU64>,
    copies: Arc<AtomicU64>,
}

impl Copier {
    /// Waits until the system is quiet and every event in the streams has
    /// its copy there too, then stops copying; returns how many events were
    /// copied.
    async fn finish(self, sys: &TestSystem) -> anyhow::Result<u64> {
        eventually("every event copied", WAIT, || async {
            sys.quiesce(WAIT).await?;
            let copies = self.copies.load(Ordering::SeqCst);
            Ok(copies == self.originals.load(Ordering::SeqCst)
                && sys.stream_messages().await? == 2 * copies)
        })
        .await?;
        self.task.abort();
        Ok(self.copies.load(Ordering::SeqCst))
    }
}

async fn duplicate_every_event(sys: &TestSystem) -> anyhow::Result<Copier> {
    let mut events = sys.nats.subscribe(format!("{}.>", sys.ns)).await?;
    let js = sys.js.clone();
    let dlq = format!("{}.dlq.", sys.ns);
    let originals = Arc::new(AtomicU64::new(0));
    let copies = Arc::new(AtomicU64::new(0));
    // The subscription is registered once the server has seen it.
    sys.nats.flush().await?;
    let (seen, copied) = (originals.clone(), copies.clone());
    let task = tokio::spawn(async move {
        while let Some(msg) = events.next().await {
            let mut headers = msg.headers.clone().unwrap_or_default();
            if msg.subject.starts_with(&dlq) || headers.get(COPY_HEADER).is_some() {
                continue;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let id = headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("copy-{id}").as_str(),
            );
            headers.insert(COPY_HEADER, "1");
            // Retried until JetStream has it: a lost copy would make the
            // test prove less than it says.
            loop {
                let published = match js
                    .publish_with_headers(msg.subject.clone(), headers.clone(), msg.payload.clone())
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if published {
                    copied.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        }
    });
    Ok(Copier {
        task,
        originals,
        copies,
    })
}

/// Publishes every message of the namespace's event streams once more.
async fn replay_all(sys: &TestSystem) -> anyhow::Result<u64> {
    let ns = sys.namespace();
    let mut replayed = 0;
    for kind in StreamKind::ALL {
        let mut stream = sys.js.get_stream(ns.stream(kind)).await?;
        let last = stream.info().await?.state.last_sequence;
        for seq in 1..=last {
            let msg = stream.get_raw_message(seq).await?;
            let mut headers = msg.headers.clone();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("replay-{seq}").as_str(),
            );
            headers.insert(COPY_HEADER, "replay");
            sys.js
                .publish_with_headers(msg.subject.to_string(), headers, msg.payload)
                .await?
                .await?;
            replayed += 1;
        }
    }
    Ok(replayed)
}

/// Outcome of the scenario by label, comparable across systems.
type Outcome = Vec<(String, String, String, Option<i64>)>;

/// A fixed sequence of orders with known outcomes: confirmed, out of stock,
/// insufficient funds, slot full. Returns the outcomes and the two slots.
async fn scenario(sys: &TestSystem) -> anyhow::Result<(Outcome, [String; 2])> {
    sys.seed_product("X", 500, 10).await?;
    sys.seed_product("Y", 300, 5).await?;
    sys.seed_product("Z", 100, 3).await?;
    sys.top_up("rich", 100_000).await?;
    sys.top_up("poor", 100).await?;
    let big = sys.create_slot("big", 5).await?.slot_id;
    let tiny = sys.create_slot("tiny", 1).await?.slot_id;
    let steps = [
        (
            "o1",
            order_request("rich", &[("X", 2), ("Y", 1)], Some(&big)),
        ),
        ("o2", order_request("rich", &[("Y", 10)], None)),
        ("o3", order_request("poor", &[("X", 1)], None)),
        ("o4", order_request("rich", &[("Z", 1)], Some(&tiny))),
        ("o5", order_request("rich", &[("X", 1)], Some(&tiny))),
        (
            "o6",
            order_request("rich", &[("X", 3), ("Z", 2)], Some(&big)),
        ),
    ];
    let mut out = Vec::new();
    for (label, request) in steps {
        let placed = sys.place(request).await?;
        let o = sys.wait_terminal(&placed.order_id, WAIT).await?;
        // A cancelled order may or may not have been priced before it was
        // cancelled (inventory and reservation answer in parallel): compare
        // totals of confirmed orders only.
        let total = o.total_cents.filter(|_| state(&o) == OrderState::Confirmed);
        out.push((
            label.to_owned(),
            state(&o).as_str_name().to_owned(),
            reason(&o).as_str_name().to_owned(),
            total,
        ));
    }
    Ok((out, [big, tiny]))
}

/// The stock, wallets and slots of the scenario, once the system is quiet.
async fn holdings(sys: &TestSystem, [big, tiny]: &[String; 2]) -> anyhow::Result<Outcome> {
    sys.quiesce(WAIT).await?;
    let mut out = Vec::new();
    for sku in ["X", "Y", "Z"] {
        let s = sys.stock(sku).await?;
        out.push((
            sku.to_owned(),
            format!("{}/{}/{}", s.on_hand, s.reserved, s.sold),
            String::new(),
            None,
        ));
    }
    for customer in ["rich", "poor"] {
        let w = sys.wallet(customer).await?;
        out.push((
            customer.to_owned(),
            format!(
                "{}/{}/{}",
                w.balance_cents, w.charged_cents, w.refunded_cents
            ),
            String::new(),
            None,
        ));
    }
    for (name, id) in [("big", big), ("tiny", tiny)] {
        let s = sys.slot(id).await?;
        out.push((
            name.to_owned(),
            format!("{}/{}", s.held, s.confirmed),
            String::new(),
            None,
        ));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_delivered_twice_or_replayed_ends_in_the_same_state_as_once()
-> anyhow::Result<()> {
    let once = TestSystem::start().await?;
    let (mut expected, slots) = scenario(&once).await?;
    expected.extend(holdings(&once, &slots).await?);
    assert_eq!(once.violations().await?, Vec::<String>::new());
    once.stop().await?;

    let twice = TestSystem::start().await?;
    let copier = duplicate_every_event(&twice).await?;
    let (mut got, slots) = scenario(&twice).await?;
    // The copies of the last events may still be on their way.
    let copied = copier.finish(&twice).await?;
    got.extend(holdings(&twice, &slots).await?);
    assert_eq!(got, expected);
    assert!(copied > 0, "nothing was copied");
    assert_eq!(
        twice.stream_messages().await?,
        2 * copied,
        "every event was in the streams twice"
    );
    let handled_twice: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory.processed_events")
        .fetch_one(&twice.db)
        .await?;
    assert!(handled_twice > 0);
    assert_eq!(twice.violations().await?, Vec::<String>::new());

    // An operator replays the streams from the start: nothing changes.
    let before = twice.snapshot().await?;
    let replayed = replay_all(&twice).await?;
    assert_eq!(replayed, 2 * copied);
    twice.quiesce(WAIT).await?;
    assert_eq!(twice.snapshot().await?, before);
    assert_eq!(twice.violations().await?, Vec::<String>::new());
    twice.stop().await
}

async fn processed(sys: &TestSystem, schema: &str, event: Uuid) -> anyhow::Result<bool> {
    let sql =
        format!("SELECT EXISTS (SELECT 1 FROM \"{schema}\".processed_events WHERE event_id = $1)");
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(event)
        .fetch_one(&sys.db)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_that_overtakes_its_placement_leaks_no_stock_slot_or_money()
-> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    sys.seed_product("X", 250, 10).await?;
    sys.top_up("lou", 10_000).await?;
    let slot = sys.create_slot("one", 1).await?.slot_id;
    let order = Uuid::now_v7();
    let lines = vec![pb::OrderLine {
        sku: "X".into(),
        quantity: 4,
    }];

    // The cancellation arrives first...
    let cancelled = sys
        .publish_event(
            order,
            SagaEvent::OrderCancelled(pb::OrderCancelled {
                order_id: order.to_string(),
                customer_id: "lou".into(),
                reason: pb::CancelReason::CustomerCancelled as i32,
                lines: lines.clone(),
                slot_id: Some(slot.clone()),
            }),
        )
        .await?;
    eventually(
        "every participant to see the cancellation",
        WAIT,
        || async {
            Ok(processed(&sys, "inventory", cancelled).await?
                && processed(&sys, "reservation", cancelled).await?
                && processed(&sys, "payment", cancelled).await?)
        },
    )
    .await?;

    // ...then the placement and the request to charge.
    let placed = sys
        .publish_event(
            order,
            SagaEvent::OrderPlaced(pb::OrderPlaced {
                order_id: order.to_string(),
                customer_id: "lou".into(),
                lines,
                slot_id: Some(slot.clone()),
                placed_at: None,
            }),
        )
        .await?;
    let reserved = sys
        .publish_event(
            order,
            SagaEvent::OrderReserved(pb::OrderReserved {
                order_id: order.to_string(),
                customer_id: "lou".into(),
                amount_cents: 1_000,
            }),
        )
        .await?;
    eventually("the late events to be handled", WAIT, || async {
        Ok(processed(&sys, "inventory", placed).await?
            && processed(&sys, "reservation", placed).await?
            && processed(&sys, "payment", reserved).await?)
    })
    .await?;
    sys.quiesce(WAIT).await?;

    let x = sys.stock("X").await?;
    assert_eq!((x.available, x.reserved), (10, 0));
    let redis = sys.redis_counter("X").await?;
    assert_eq!(redis.avail, Some(10));
    assert!(!redis.holds.contains_key(&order.to_string()));
    let holds: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory.holds WHERE order_id = $1")
        .bind(order)
        .fetch_one(&sys.db)
        .await?;
    assert_eq!(holds, 0);
    let s = sys.slot(&slot).await?;
    assert_eq!((s.held, s.confirmed, s.available), (0, 0, 1));
    let w = sys.wallet("lou").await?;
    assert_eq!((w.balance_cents, w.charged_cents), (10_000, 0));
    // No participant answered with a hold or a charge.
    let ns = sys.namespace();
    for kind in [
        StreamKind::Inventory,
        StreamKind::Reservations,
        StreamKind::Payments,
    ] {
        let mut stream = sys.js.get_stream(ns.stream(kind)).await?;
        assert_eq!(stream.info().await?.state.messages, 0, "{kind:?} stream");
    }
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_racing_the_saga_leaves_either_everything_or_nothing() -> anyhow::Result<()>
{
    let sys = TestSystem::start().await?;
    sys.seed_product("X", 100, 1_000).await?;
    sys.top_up("max", 1_000_000).await?;
    let slot = sys.create_slot("wide", 1_000).await?.slot_id;
    let mut ids = Vec::new();
    for _ in 0..40 {
        let o = sys
            .place(order_request("max", &[("X", 3)], Some(&slot)))
            .await?;
        ids.push(o.order_id);
    }
    // Cancel every other order at once, wherever it stands.
    let cancels = futures::future::join_all(ids.iter().step_by(2).map(|id| {
        let mut client = sys.clients.order.clone();
        let id = id.clone();
        async move {
            client
                .cancel_order(CancelOrderRequest { order_id: id })
                .await
        }
    }))
    .await;
    for c in cancels {
        if let Err(s) = c {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
        }
    }
    let done = sys.wait_all_terminal(&ids, WAIT).await?;
    sys.quiesce(WAIT).await?;
    let confirmed = done
        .iter()
        .filter(|o| reason(o) == saga_shared::proto::order::v1::CancelReason::Unspecified)
        .count() as i64;
    let x = sys.stock("X").await?;
    assert_eq!((x.sold, x.reserved), (3 * confirmed, 0));
    let w = sys.wallet("max").await?;
    assert_eq!(w.charged_cents - w.refunded_cents, 300 * confirmed);
    assert_eq!(sys.slot(&slot).await?.confirmed as i64, confirmed);
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    sys.stop().await
}
