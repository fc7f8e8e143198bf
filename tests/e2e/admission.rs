//! Admission: PlaceOrder refuses new orders while `max_open_orders` are
//! open, so a saturated system keeps its queue (and its latency) bounded
//! instead of accepting work it cannot finish.

use std::time::Duration;

use saga_tests::processes::Service;
use saga_tests::{TestSystem, order_request};

use crate::idempotency::orders_of;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placements_beyond_the_open_order_limit_are_refused_until_orders_end() -> anyhow::Result<()>
{
    const LIMIT: usize = 5;
    let mut sys =
        TestSystem::start_processes(|cfg| cfg.order.order.max_open_orders = LIMIT as u64).await?;
    sys.seed_product("A", 100, 1_000).await?;
    sys.top_up("ada", 1_000_000).await?;
    // Without payment every order stays open (RESERVED) once placed.
    sys.processes().kill(Service::Payment);

    // Twenty placements race for five places.
    let keys: Vec<String> = (0..20).map(|i| format!("adm-{i}")).collect();
    let results = futures::future::join_all(
        keys.iter()
            .map(|k| sys.place_with_key(order_request("ada", &[("A", 1)], None), Some(k))),
    )
    .await;
    let mut admitted = Vec::new();
    for (key, result) in keys.iter().zip(results) {
        match result {
            Ok(order) => admitted.push((key.clone(), order)),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("open orders")
                        && status.message().contains("MAX_OPEN_ORDERS"),
                    "the refusal says which limit: {status:?}"
                );
                assert!(
                    status.metadata().get("grpc-retry-pushback-ms").is_some(),
                    "a refusal carries a pushback hint: {status:?}"
                );
            }
        }
    }
    // Never more than the limit. A count of the table that overlaps a
    // commit may count that order twice until the next count (by design:
    // it errs towards refusing), so the race may admit fewer; placements
    // one at a time then fill the limit, exactly.
    assert!(
        (1..=LIMIT).contains(&admitted.len()),
        "{} admitted, the limit is {LIMIT}",
        admitted.len()
    );
    assert_eq!(
        orders_of(&sys, "ada").await?,
        admitted.len(),
        "a refused order stores nothing"
    );
    while admitted.len() < LIMIT {
        let key = format!("adm-more-{}", admitted.len());
        let placed = saga_tests::poll_until("room for the limit's next order", crate::WAIT, || {
            let request = order_request("ada", &[("A", 1)], None);
            let sys = &sys;
            let key = key.clone();
            async move {
                match sys.place_with_key(request, Some(&key)).await {
                    Ok(o) => Ok(Some(o)),
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => Ok(None),
                    Err(s) => Err(s.into()),
                }
            }
        })
        .await?;
        admitted.push((key, placed));
    }
    assert_eq!(orders_of(&sys, "ada").await?, LIMIT, "the limit filled");

    // A retry of an admitted order is answered from its key, even now.
    let (key, first) = &admitted[0];
    let again = sys
        .place_with_key(order_request("ada", &[("A", 1)], None), Some(key))
        .await?;
    assert_eq!(&again, first);
    let refused = sys
        .place(order_request("ada", &[("A", 1)], None))
        .await
        .expect_err("still full");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);

    // Payment back: the open orders end, and room comes back.
    sys.processes().start(Service::Payment, &[]).await?;
    for (_, order) in &admitted {
        let done = sys.wait_terminal(&order.order_id, crate::WAIT).await?;
        assert_eq!(
            saga_tests::state(&done),
            saga_shared::proto::order::v1::OrderState::Confirmed
        );
    }
    let next = saga_tests::poll_until("a placement is admitted again", crate::WAIT, || async {
        match sys.place(order_request("ada", &[("A", 1)], None)).await {
            Ok(o) => Ok(Some(o)),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => Ok(None),
            Err(s) => Err(s.into()),
        }
    })
    .await?;
    sys.wait_terminal(&next.order_id, Duration::from_secs(60))
        .await?;
    assert_eq!(orders_of(&sys, "ada").await?, LIMIT + 1);
    sys.stop().await
}
