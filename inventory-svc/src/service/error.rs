//! Why an inventory operation failed.

use saga_shared::db::Retryable;
use saga_shared::validate::FieldError;
use uuid::Uuid;

use crate::domain::AdjustError;
use crate::store::RecordError;
use crate::store::cache::CacheError;

/// Why an inventory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("sku: no product {0:?}")]
    UnknownSku(String),
    #[error(transparent)]
    Adjust(#[from] AdjustError),
    #[error("reservation_id: no reservation {0}")]
    UnknownReservation(Uuid),
    #[error(
        "reservation_id {0} is the id of an order's saga; direct calls cannot touch a saga's holds: use an id of your own"
    )]
    BelongsToSaga(Uuid),
    #[error("reservation_id {id}: {why}")]
    ReservationConflict { id: Uuid, why: String },
    #[error("stock cache unavailable: {0}")]
    Cache(#[from] CacheError),
    #[error("a hold was granted by a counter rebuilt since: {0}")]
    Fenced(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<RecordError> for InventoryError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Fenced { .. } => InventoryError::Fenced(e.to_string()),
            RecordError::Sql(e) => InventoryError::Db(e),
        }
    }
}

impl Retryable for InventoryError {
    fn is_retryable(&self) -> bool {
        match self {
            InventoryError::Db(e) => e.is_retryable(),
            InventoryError::Fenced(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = InventoryError> = std::result::Result<T, E>;
