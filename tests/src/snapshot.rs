//! A comparable picture of a system's business state, for comparing two
//! runs.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::TestSystem;

/// The business state of a system, for comparing two runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// id -> (state, cancel reason, total)
    pub orders: BTreeMap<Uuid, (String, Option<String>, Option<i64>)>,
    /// sku -> (on_hand, reserved, sold)
    pub stock: BTreeMap<String, (i64, i64, i64)>,
    /// customer -> (balance, charged, refunded)
    pub wallets: BTreeMap<String, (i64, i64, i64)>,
    /// slot -> (held, confirmed)
    pub slots: BTreeMap<Uuid, (i32, i32)>,
    pub ledger_rows: i64,
}

impl TestSystem {
    /// A comparable picture of the business state.
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let orders = sqlx::query_as::<_, (Uuid, String, Option<String>, Option<i64>)>(
            "SELECT id, state, cancel_reason, total_cents FROM orders.orders",
        )
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|(id, s, r, t)| (id, (s, r, t)))
        .collect();
        let stock = sqlx::query_as::<_, (String, i64, i64, i64)>(
            "SELECT sku, on_hand, reserved, sold FROM inventory.products",
        )
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|(sku, a, b, c)| (sku, (a, b, c)))
        .collect();
        let wallets = sqlx::query_as::<_, (String, i64, i64, i64)>(
            "SELECT customer_id, balance_cents, charged_cents, refunded_cents FROM payment.wallets",
        )
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|(c, a, b, d)| (c, (a, b, d)))
        .collect();
        let slots = sqlx::query_as::<_, (Uuid, i32, i32)>(
            "SELECT id, held, confirmed FROM reservation.slots",
        )
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|(id, h, c)| (id, (h, c)))
        .collect();
        let ledger_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payment.wallet_ledger")
            .fetch_one(&self.db)
            .await?;
        Ok(Snapshot {
            orders,
            stock,
            wallets,
            slots,
            ledger_rows,
        })
    }
}
