//! WatchOrder: an order's changes streamed until it ends, resumable, and
//! bounded per instance.

use std::time::Duration;

use futures::StreamExt;
use saga_shared::auth::Role;
use saga_shared::proto::order::v1 as ord;
use saga_tests::{TestSystem, order_request};
use sagactl::client::Clients;
use tonic::Code;

use crate::WAIT;

fn rank(state: i32) -> i32 {
    // PENDING 1 < RESERVED 2 < CONFIRMED 3 / CANCELLED 4: both terminal.
    state.min(ord::OrderState::Confirmed as i32)
}

async fn watch(
    sys: &TestSystem,
    order_id: &str,
    after: Option<prost_types::Timestamp>,
) -> Result<tonic::Streaming<ord::WatchOrderResponse>, tonic::Status> {
    Ok(sys
        .clients
        .order
        .clone()
        .watch_order(ord::WatchOrderRequest {
            order_id: order_id.to_owned(),
            after,
        })
        .await?
        .into_inner())
}

/// Every message until the stream ends (within `WAIT`).
async fn all(
    mut stream: tonic::Streaming<ord::WatchOrderResponse>,
) -> anyhow::Result<Vec<ord::Order>> {
    let mut orders = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, stream.next()).await? {
            None => return Ok(orders),
            Some(message) => orders.push(message?.order.expect("an order")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_streams_an_orders_changes_until_it_ends_and_resumes_after_the_last()
-> anyhow::Result<()> {
    // A slow gateway keeps the order RESERVED for a while.
    let sys = TestSystem::start_with(|cfg| cfg.payment.gateway.latency_ms = 400).await?;
    sys.seed_product("W", 100, 10).await?;
    sys.top_up("watcher", 1_000).await?;
    let placed = sys
        .place(order_request("watcher", &[("W", 1)], None))
        .await?;
    let seen = all(watch(&sys, &placed.order_id, None).await?).await?;

    assert!(!seen.is_empty());
    let last = seen.last().expect("a message");
    assert_eq!(last.state, ord::OrderState::Confirmed as i32, "{seen:?}");
    for pair in seen.windows(2) {
        assert!(rank(pair[0].state) <= rank(pair[1].state), "{seen:?}");
        let (a, b) = (pair[0].updated_at.unwrap(), pair[1].updated_at.unwrap());
        assert!((a.seconds, a.nanos) < (b.seconds, b.nanos), "{seen:?}");
    }
    assert!(
        seen.iter()
            .filter(|o| rank(o.state) == rank(last.state))
            .count()
            == 1,
        "the terminal state is sent once: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|o| o.state == ord::OrderState::Reserved as i32),
        "the 400 ms the payment takes should show RESERVED: {seen:?}"
    );

    // Resumed after the last message: nothing more, and the stream ends.
    let resumed = all(watch(&sys, &placed.order_id, last.updated_at).await?).await?;
    assert!(resumed.is_empty(), "{resumed:?}");
    // Watching an order that has ended: its state, once.
    let again = all(watch(&sys, &placed.order_id, None).await?).await?;
    assert_eq!(again, vec![last.clone()]);
    // An unknown order is refused before any stream.
    let unknown = watch(&sys, &uuid::Uuid::now_v7().to_string(), None)
        .await
        .expect_err("unknown order");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    sys.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_beyond_the_bound_are_refused_until_one_ends() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| {
        cfg.order.order.max_watchers = 1;
        cfg.payment.gateway.latency_ms = 3_000;
    })
    .await?;
    sys.seed_product("W", 100, 10).await?;
    sys.top_up("watcher", 1_000).await?;
    let placed = sys
        .place(order_request("watcher", &[("W", 1)], None))
        .await?;
    let mut first = watch(&sys, &placed.order_id, None).await?;
    first.next().await.expect("a first message")?;
    let refused = watch(&sys, &placed.order_id, None)
        .await
        .expect_err("a second watch");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // The first runs to its end; then a watch is served again.
    let rest = all(first).await?;
    assert_eq!(
        rest.last().map(|o| o.state),
        Some(ord::OrderState::Confirmed as i32)
    );
    let served =
        saga_tests::wait::poll_until("a watch served again", Duration::from_secs(30), || {
            let sys = &sys;
            let id = placed.order_id.clone();
            async move { Ok(watch(sys, &id, None).await.ok()) }
        })
        .await?;
    assert_eq!(all(served).await?.len(), 1);
    sys.stop().await
}

/// The times a call answers with are the times stored (Postgres keeps
/// microseconds): PlaceOrder's `created_at` and CancelOrder's `updated_at`
/// are what GetOrder and WatchOrder say afterwards, so that a client may
/// compare them, or resume a watch after them. They used to carry the
/// nanoseconds of the service's clock, later read back truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_times_a_call_answers_with_are_the_times_stored() -> anyhow::Result<()> {
    // A slow gateway keeps the order open while it is cancelled.
    let sys = TestSystem::start_with(|cfg| cfg.payment.gateway.latency_ms = 5_000).await?;
    sys.seed_product("T", 100, 10).await?;
    sys.top_up("t", 1_000).await?;
    let placed = sys.place(order_request("t", &[("T", 1)], None)).await?;
    let cancelled = sys.cancel(&placed.order_id).await?;
    assert_eq!(
        cancelled.state,
        ord::OrderState::Cancelled as i32,
        "{cancelled:?}"
    );
    let stored = sys.get_order(&placed.order_id).await?;
    assert_eq!(placed.created_at, stored.created_at, "created_at");
    assert_eq!(cancelled.updated_at, stored.updated_at, "updated_at");
    let watched = all(watch(&sys, &placed.order_id, None).await?).await?;
    assert_eq!(watched.len(), 1, "{watched:?}");
    assert_eq!(watched[0].updated_at, cancelled.updated_at);
    sys.stop().await
}

/// A change stored with an earlier `updated_at` than the one before it (its
/// instance's clock is behind the other's, or stepped back) is still sent:
/// the watch used to end on seeing the terminal state "not newer" than the
/// last message, and its client never learnt the order had ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sends_the_end_even_when_a_clock_went_back() -> anyhow::Result<()> {
    // A slow gateway keeps the order RESERVED while its time is moved.
    let sys = TestSystem::start_with(|cfg| cfg.payment.gateway.latency_ms = 3_000).await?;
    sys.seed_product("C", 100, 10).await?;
    sys.top_up("clock", 1_000).await?;
    let placed = sys.place(order_request("clock", &[("C", 1)], None)).await?;
    let mut stream = watch(&sys, &placed.order_id, None).await?;
    loop {
        let message = tokio::time::timeout(WAIT, stream.next())
            .await?
            .expect("the watch goes on until the order ends")?;
        let order = message.order.expect("an order");
        if order.state == ord::OrderState::Reserved as i32 {
            break;
        }
        assert_eq!(order.state, ord::OrderState::Pending as i32, "{order:?}");
    }
    // The RESERVED change as if an instance an hour ahead had stored it:
    // the instance that stores CONFIRMED next has a clock an hour behind.
    sqlx::query(
        "UPDATE orders.orders SET updated_at = updated_at + interval '1 hour' \
         WHERE id = $1::uuid AND state = 'RESERVED'",
    )
    .bind(&placed.order_id)
    .execute(&sys.db)
    .await?;
    let rest = all(stream).await?;
    let last = rest.last().expect("messages after the clock moved");
    assert_eq!(last.state, ord::OrderState::Confirmed as i32, "{rest:?}");
    // Every message is newer than the one before, and resuming after the
    // last gives nothing more.
    for pair in rest.windows(2) {
        let (a, b) = (pair[0].updated_at.unwrap(), pair[1].updated_at.unwrap());
        assert!((a.seconds, a.nanos) < (b.seconds, b.nanos), "{rest:?}");
    }
    let resumed = all(watch(&sys, &placed.order_id, last.updated_at).await?).await?;
    assert!(resumed.is_empty(), "{resumed:?}");
    sys.stop().await
}

/// A watch with an `after` later than any change of the order (a client's
/// own clock, ahead, taken for a message's time) still gets the terminal
/// state: it cannot have received it. The watch used to end cleanly with no
/// message at all, as if the client had it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_after_a_time_no_change_has_still_gets_the_end() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(|cfg| cfg.payment.gateway.latency_ms = 300).await?;
    sys.seed_product("F", 100, 10).await?;
    sys.top_up("fast", 1_000).await?;
    let placed = sys.place(order_request("fast", &[("F", 1)], None)).await?;
    let ahead = prost_types::Timestamp {
        seconds: placed.created_at.map_or(0, |t| t.seconds) + 86_400,
        nanos: 0,
    };
    let seen = all(watch(&sys, &placed.order_id, Some(ahead)).await?).await?;
    let states: Vec<i32> = seen.iter().map(|o| o.state).collect();
    assert_eq!(
        states,
        vec![ord::OrderState::Confirmed as i32],
        "only the end, once: {seen:?}"
    );
    // Once ended, the same: its state, once.
    let again = all(watch(&sys, &placed.order_id, Some(ahead)).await?).await?;
    assert_eq!(again, seen);
    sys.stop().await
}

/// One customer cannot take every watch an instance serves: watching its
/// own order again and again (each watch lasts until the order ends, up to
/// its deadline) used to leave other customers RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_cannot_take_every_watch() -> anyhow::Result<()> {
    const MAX: usize = 4;
    let sys = TestSystem::start_with(|cfg| {
        cfg.order.order.max_watchers = MAX;
        cfg.order.order.max_watchers_per_customer = 2;
        // Orders stay open while the watches are opened.
        cfg.payment.gateway.latency_ms = 5_000;
    })
    .await?;
    sys.seed_product("G", 100, 10).await?;
    let (greedy, other) = (
        sys.clients_as("greedy", Role::Customer)?,
        sys.clients_as("other", Role::Customer)?,
    );
    sys.top_up("greedy", 1_000).await?;
    sys.top_up("other", 1_000).await?;
    let mine = greedy
        .place_order(order_request("greedy", &[("G", 1)], None))
        .await?;
    let theirs = other
        .place_order(order_request("other", &[("G", 1)], None))
        .await?;
    let open = |clients: &Clients, id: &str| {
        let mut client = clients.order.clone();
        let request = ord::WatchOrderRequest {
            order_id: id.to_owned(),
            after: None,
        };
        async move { client.watch_order(request).await }
    };
    // The greedy customer opens as many watches as it is given.
    let mut held = Vec::new();
    let refusal = loop {
        match open(&greedy, &mine.order_id).await {
            Ok(stream) => held.push(stream),
            Err(status) => break status,
        }
        assert!(held.len() <= MAX, "more watches than the instance serves");
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert_eq!(held.len(), 2, "the customer's own bound");
    assert!(
        refusal.message().contains("you are watching 2"),
        "{refusal:?}"
    );
    // The other customer is still served.
    let mut served = open(&other, &theirs.order_id)
        .await
        .map_err(|s| anyhow::anyhow!("the other customer was refused: {s:?}"))?
        .into_inner();
    let first = tokio::time::timeout(WAIT, served.next())
        .await?
        .expect("a first message")?;
    assert_eq!(first.order.expect("an order").order_id, theirs.order_id);
    // One of the greedy customer's watches ends: it may open another.
    held.pop();
    let again = saga_tests::wait::poll_until("a share given back", WAIT, || {
        let open = &open;
        let (greedy, id) = (&greedy, mine.order_id.clone());
        async move { Ok(open(greedy, &id).await.ok()) }
    })
    .await?;
    drop((held, again));
    sys.stop().await
}
