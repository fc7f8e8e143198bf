//! Many clients at once on the same SKU: never oversell.

use std::sync::Arc;

use saga_shared::proto::order::v1::{CancelReason, OrderState};
use saga_tests::{TestSystem, order_request, reason, state};

use crate::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_orders_for_fifty_units_confirm_exactly_fifty() -> anyhow::Result<()>
{
    let sys = Arc::new(TestSystem::start().await?);
    sys.seed_product("HOT", 700, 50).await?;
    for i in 0..200 {
        sys.top_up(&format!("c{i}"), 10_000).await?;
    }

    let placed = futures::future::join_all((0..200).map(|i| {
        let sys = sys.clone();
        tokio::spawn(async move {
            sys.place(order_request(&format!("c{i}"), &[("HOT", 1)], None))
                .await
        })
    }))
    .await;
    let ids: Vec<String> = placed
        .into_iter()
        .map(|joined| Ok(joined??.order_id))
        .collect::<anyhow::Result<_>>()?;

    let done = sys.wait_all_terminal(&ids, WAIT).await?;
    let confirmed = done
        .iter()
        .filter(|o| state(o) == OrderState::Confirmed)
        .count();
    let out_of_stock = done
        .iter()
        .filter(|o| state(o) == OrderState::Cancelled && reason(o) == CancelReason::OutOfStock)
        .count();
    assert_eq!((confirmed, out_of_stock), (50, 150));

    sys.quiesce(WAIT).await?;
    let hot = sys.stock("HOT").await?;
    assert_eq!(
        (hot.on_hand, hot.reserved, hot.sold, hot.available),
        (50, 0, 50, 0)
    );
    sys.redis_settles("HOT", 0, WAIT).await?;
    let charged: i64 =
        sqlx::query_scalar("SELECT COALESCE(sum(charged_cents), 0)::bigint FROM payment.wallets")
            .fetch_one(&sys.db)
            .await?;
    assert_eq!(charged, 50 * 700);
    assert_eq!(sys.violations().await?, Vec::<String>::new());
    Arc::into_inner(sys)
        .expect("no task holds the system")
        .stop()
        .await
}
