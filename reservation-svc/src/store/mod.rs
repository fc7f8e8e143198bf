//! Postgres access for slots and bookings. Functions taking
//! `&mut PgConnection` run in the caller's transaction.

pub mod lock;

use saga_shared::repair::Page;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{BookingState, DirectHold, Slot, direct_booking_id};
use saga_shared::db::Spelled;

impl Spelled for BookingState {
    const WHAT: &'static str = "booking state";
}

const SLOT_COLUMNS: &str = "id, name, capacity, held, confirmed, created_at";

/// A `slots` row.
#[derive(sqlx::FromRow)]
struct SlotRow {
    id: Uuid,
    name: String,
    capacity: i32,
    held: i32,
    confirmed: i32,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<SlotRow> for Slot {
    fn from(r: SlotRow) -> Self {
        Slot {
            id: r.id,
            name: r.name,
            capacity: r.capacity,
            held: r.held,
            confirmed: r.confirmed,
            created_at: r.created_at,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pub pool: PgPool,
}

/// What trying to take a place in a slot did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldAttempt {
    Held,
    Full,
    UnknownSlot,
}

impl Store {
    #[tracing::instrument(skip_all, fields(id = %id), err(level = "debug"))]
    pub async fn slot(&self, id: Uuid) -> sqlx::Result<Option<Slot>> {
        let sql = format!("SELECT {SLOT_COLUMNS} FROM slots WHERE id = $1");
        let row: Option<SlotRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    /// A page of slots after `after` (exclusive), oldest first.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn list(&self, after: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<Slot>> {
        let sql = format!(
            "SELECT {SLOT_COLUMNS} FROM slots WHERE ($1::uuid IS NULL OR id > $1) \
             ORDER BY id LIMIT $2"
        );
        let rows: Vec<SlotRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

#[tracing::instrument(skip_all, fields(id = %id), err(level = "debug"))]
pub async fn insert_slot(
    conn: &mut PgConnection,
    id: Uuid,
    name: &str,
    capacity: i32,
) -> sqlx::Result<Slot> {
    let sql = format!(
        "INSERT INTO slots (id, name, capacity) VALUES ($1, $2, $3) RETURNING {SLOT_COLUMNS}"
    );
    let row: SlotRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(name)
        .bind(capacity)
        .fetch_one(conn)
        .await?;
    Ok(row.into())
}

/// Locks the order's booking, if there is one.
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn lock_booking(
    conn: &mut PgConnection,
    order: Uuid,
) -> sqlx::Result<Option<(BookingState, Option<Uuid>)>> {
    let row: Option<(String, Option<Uuid>)> =
        sqlx::query_as("SELECT state, slot_id FROM bookings WHERE order_id = $1 FOR UPDATE")
            .bind(order)
            .fetch_optional(conn)
            .await?;
    row.map(|(state, slot)| BookingState::read(&state).map(|s| (s, slot)))
        .transpose()
}

/// Inserts the order's booking; false if one appeared meanwhile.
#[tracing::instrument(skip_all, fields(order_id = %order, slot_id = ?slot), err(level = "debug"))]
pub async fn insert_booking(
    conn: &mut PgConnection,
    order: Uuid,
    slot: Option<Uuid>,
    state: BookingState,
    reason: Option<&str>,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO bookings (order_id, slot_id, state, reason) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(order)
    .bind(slot)
    .bind(state.spelling())
    .bind(reason)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Takes one place in the slot if it has one free.
#[tracing::instrument(skip_all, fields(slot_id = %slot), err(level = "debug"))]
pub async fn try_hold(conn: &mut PgConnection, slot: Uuid) -> sqlx::Result<HoldAttempt> {
    let held = sqlx::query(
        "UPDATE slots SET held = held + 1, updated_at = now() \
         WHERE id = $1 AND held + confirmed < capacity",
    )
    .bind(slot)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if held == 1 {
        return Ok(HoldAttempt::Held);
    }
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM slots WHERE id = $1)")
        .bind(slot)
        .fetch_one(conn)
        .await?;
    Ok(if exists {
        HoldAttempt::Full
    } else {
        HoldAttempt::UnknownSlot
    })
}

/// Moves the order's booking to `to` if it is HELD (locking it); false if
/// it is not (none, or decided already).
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn finish_held(
    conn: &mut PgConnection,
    order: Uuid,
    to: BookingState,
) -> sqlx::Result<bool> {
    match lock_booking(conn, order).await? {
        Some((BookingState::Held, Some(slot))) => {
            close_booking(conn, order, slot, to).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Sagas' bookings still HELD, unchanged for `older_than`, with order ids
/// above `after`, in id order (direct holds are their callers' business).
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn held_bookings(pool: &PgPool, page: Page) -> sqlx::Result<Vec<Uuid>> {
    page.of(pool, "bookings", "state = 'HELD' AND kind = 'saga'")
        .await
}

/// A `bookings` row of a direct hold.
#[derive(sqlx::FromRow)]
struct DirectHoldRow {
    hold_id: Uuid,
    slot_id: Option<Uuid>,
    state: String,
    reason: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// The direct hold of `hold_id`, locked if `lock`.
#[tracing::instrument(skip_all, fields(hold_id = %hold_id), err(level = "debug"))]
pub async fn direct_hold(
    conn: &mut PgConnection,
    hold_id: Uuid,
    lock: bool,
) -> sqlx::Result<Option<DirectHold>> {
    let sql = format!(
        "SELECT hold_id, slot_id, state, reason, created_at, updated_at FROM bookings          WHERE order_id = $1 AND kind = 'direct'{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row: Option<DirectHoldRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(direct_booking_id(hold_id))
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(DirectHold {
            hold_id: r.hold_id,
            slot_id: r.slot_id,
            state: BookingState::read(&r.state)?,
            reason: r.reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    })
    .transpose()
}

/// Inserts the direct hold's booking; false if it exists already.
#[tracing::instrument(skip_all, fields(hold_id = %hold_id), err(level = "debug"))]
pub async fn insert_direct(
    conn: &mut PgConnection,
    hold_id: Uuid,
    slot: Option<Uuid>,
    state: BookingState,
    reason: Option<&str>,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO bookings (order_id, slot_id, state, reason, kind, hold_id)          VALUES ($1, $2, $3, $4, 'direct', $5) ON CONFLICT DO NOTHING",
    )
    .bind(direct_booking_id(hold_id))
    .bind(slot)
    .bind(state.spelling())
    .bind(reason)
    .bind(hold_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Whether `id` is the id of a saga's booking.
pub async fn saga_booking_exists(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM bookings WHERE order_id = $1 AND kind = 'saga')",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Moves a HELD booking to `to` (RELEASED gives the place back, CONFIRMED
/// keeps it for good).
#[tracing::instrument(skip_all, fields(order_id = %order, slot_id = %slot), err(level = "debug"))]
pub async fn close_booking(
    conn: &mut PgConnection,
    order: Uuid,
    slot: Uuid,
    to: BookingState,
) -> sqlx::Result<()> {
    let confirm = to == BookingState::Confirmed;
    sqlx::query(
        "UPDATE slots SET held = held - 1, \
             confirmed = confirmed + CASE WHEN $2 THEN 1 ELSE 0 END, updated_at = now() \
         WHERE id = $1",
    )
    .bind(slot)
    .bind(confirm)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE bookings SET state = $2, updated_at = now() WHERE order_id = $1")
        .bind(order)
        .bind(to.spelling())
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the slots rows of `keys` in one order (a batch's first step).
pub async fn lock_slots(conn: &mut PgConnection, keys: &[uuid::Uuid]) -> sqlx::Result<()> {
    saga_shared::db::lock_in_order(conn, "slots", "id", keys).await
}

/// Locks the slot that `order`'s booking names, if any: what a transaction
/// that no batch locked for does first, before the booking, so that it
/// takes the two in a batch's order (slot, then booking).
#[tracing::instrument(skip_all, fields(order_id = %order), err(level = "debug"))]
pub async fn lock_slot_of(conn: &mut PgConnection, order: Uuid) -> sqlx::Result<()> {
    saga_shared::db::lock_named_by_order(conn, "slots", "id", "bookings", "slot_id", order).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words rows already hold: a renamed variant must not change them.
    #[test]
    fn states_are_spelled_as_the_rows_already_stored() {
        saga_shared::db::assert_spelled::<BookingState>(&[
            "HELD",
            "CONFIRMED",
            "RELEASED",
            "REJECTED",
        ]);
    }
}
