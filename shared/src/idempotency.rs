//! Durable idempotency keys for mutating gRPC calls.
//!
//! A call carrying an `idempotency-key` metadata entry claims the key inside
//! the same transaction as its effect, and stores its response there too:
//!
//! - same key, same request: the stored response, nothing done again;
//! - same key, different request: `INVALID_ARGUMENT`;
//! - same key while the first call's transaction is still open: the second
//!   waits on the key's row lock and then gets the stored response (or, if the
//!   first rolled back, does the work itself). No caller sees a half-done call.
//!   A call whose work runs transactions of its own ([`around`]) cannot be
//!   waited for that way: a retry while it runs is `ABORTED`.
//!
//! Keys live in Postgres, so a restart or a Redis flush forgets nothing.
//!
//! A handler uses [`once`], which does all of the above around its work;
//! [`begin`] and [`Ticket::complete`] are the steps it is made of.

use futures::future::BoxFuture;
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

/// The metadata entry clients set.
pub const METADATA_KEY: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("idempotency-key: {0}")]
    InvalidKey(String),
    #[error(
        "idempotency-key {0:?} was already used with a different request; use a new key for a new request"
    )]
    Mismatch(String),
    #[error("idempotency-key {0:?}: the stored response is unreadable")]
    Corrupt(String),
    #[error("idempotency store: {0}")]
    Sql(#[from] sqlx::Error),
}

impl From<IdempotencyError> for tonic::Status {
    fn from(e: IdempotencyError) -> Self {
        match e {
            IdempotencyError::InvalidKey(_) | IdempotencyError::Mismatch(_) => {
                tonic::Status::invalid_argument(e.to_string())
            }
            IdempotencyError::Sql(ref db) => crate::grpc::database("idempotency store", db),
            IdempotencyError::Corrupt(_) => {
                tracing::error!(error = %e, "idempotency store failed");
                tonic::Status::internal("internal error")
            }
        }
    }
}

/// The key of a request, if it has one. A present but unusable key is an error.
pub fn key_of<T>(request: &tonic::Request<T>) -> Result<Option<String>, IdempotencyError> {
    let Some(value) = request.metadata().get(METADATA_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| IdempotencyError::InvalidKey("must be printable ASCII".into()))?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(IdempotencyError::InvalidKey(format!(
            "must be 1..={MAX_KEY_LEN} characters, got {}",
            key.len()
        )));
    }
    // Keys are the caller's own: the same key from two callers names two
    // calls, and one caller can never be answered with another's response.
    Ok(Some(
        match request.extensions().get::<crate::auth::Principal>() {
            Some(caller) => format!("{}{SCOPE_END}{key}", caller.key_scope()),
            None => key.to_owned(),
        },
    ))
}

/// Ends the caller's part of a stored key (keys themselves are printable
/// ASCII, so they cannot hold it).
const SCOPE_END: char = '\u{1f}';

/// A stored key as its caller wrote it.
fn as_sent(key: &str) -> String {
    key.rsplit(SCOPE_END).next().unwrap_or(key).to_owned()
}

/// What [`once`] answered.
#[derive(Debug)]
pub struct Answer<R> {
    pub response: R,
    /// The key's first call had completed: its stored response, and the
    /// work did not run again (nor should anything that follows it).
    pub replayed: bool,
}

/// A mutating call, once per `idempotency-key` (see the module): begins a
/// transaction on `pool`, claims the key of `request` (a retry of a
/// completed call is answered with the stored response and `work` does not
/// run), runs `work` in the transaction, stores its response with the key
/// and commits. Without a key, `work` runs in a transaction of its own.
///
/// `work` gets the transaction and the request; what else it needs it
/// owns (clone the service handle into it).
pub async fn once<Q, R, F>(
    pool: &sqlx::PgPool,
    scope: &'static str,
    key: Option<String>,
    request: Q,
    work: F,
) -> Result<Answer<R>, tonic::Status>
where
    Q: Message + Send,
    R: Message + Default,
    F: for<'c> FnOnce(&'c mut PgConnection, &'c Q) -> BoxFuture<'c, Result<R, tonic::Status>>,
{
    let db = |e: sqlx::Error| crate::grpc::database(scope, &e);
    let mut tx = pool.begin().await.map_err(db)?;
    let ticket = match begin(&mut tx, scope, key, &request).await? {
        Begin::Replay(response) => {
            return Ok(Answer {
                response,
                replayed: true,
            });
        }
        Begin::Proceed(ticket) => ticket,
    };
    crate::telemetry::recording_on_commit(async {
        let response = work(&mut tx, &request).await?;
        ticket.complete(&mut tx, &response).await?;
        tx.commit().await.map_err(db)?;
        Ok(Answer {
            response,
            replayed: false,
        })
    })
    .await
}

/// [`once`] for `work` that changes the database with one statement, and
/// so is atomic on its own: without a key it runs in autocommit on a pooled
/// connection, without the BEGIN and COMMIT round trips of a transaction;
/// with a key, in the key's transaction, as [`once`] runs it. `work` must
/// not write with a second statement: without a key, a failure between the
/// two would leave the first one's change behind.
pub async fn once_statement<Q, R, F>(
    pool: &sqlx::PgPool,
    scope: &'static str,
    key: Option<String>,
    request: Q,
    work: F,
) -> Result<Answer<R>, tonic::Status>
where
    Q: Message + Send,
    R: Message + Default,
    F: for<'c> FnOnce(&'c mut PgConnection, &'c Q) -> BoxFuture<'c, Result<R, tonic::Status>>,
{
    if key.is_some() {
        return once(pool, scope, key, request, work).await;
    }
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| crate::grpc::database(scope, &e))?;
    // One statement: it committed if it succeeded.
    let response = crate::telemetry::recording_on_commit(work(&mut conn, &request)).await?;
    Ok(Answer {
        response,
        replayed: false,
    })
}

/// What a call that may carry a key does next.
pub enum Begin<R> {
    /// The key was used before with this request: answer this.
    Replay(R),
    /// Do the work, then store the answer with [`Ticket::complete`].
    Proceed(Ticket),
}

/// A claimed key (or no key): stores the response in the caller's transaction.
#[must_use = "complete the ticket in the same transaction as the work"]
pub struct Ticket {
    claimed: Option<(&'static str, String)>,
}

impl Ticket {
    /// Stores `response` with the key, if there was one.
    pub async fn complete<R: Message>(
        self,
        conn: &mut PgConnection,
        response: &R,
    ) -> Result<(), IdempotencyError> {
        let Some((scope, key)) = self.claimed else {
            return Ok(());
        };
        Ok(store(conn, scope, &key, response).await?)
    }
}

/// Claims `key` (if any) for `request` in the caller's transaction. `scope`
/// names the method, so one key may be used with different methods.
pub async fn begin<Q: Message, R: Message + Default>(
    conn: &mut PgConnection,
    scope: &'static str,
    key: Option<String>,
    request: &Q,
) -> Result<Begin<R>, IdempotencyError> {
    let Some(key) = key else {
        return Ok(Begin::Proceed(Ticket { claimed: None }));
    };
    let hash = Sha256::digest(request.encode_to_vec()).to_vec();
    if claim(&mut *conn, scope, &key, &hash).await? {
        return Ok(Begin::Proceed(Ticket {
            claimed: Some((scope, key)),
        }));
    }
    let (stored_hash, response) = stored(&mut *conn, scope, &key).await?;
    // The row lock taken by the INSERT above waited for the first call's
    // transaction: the response is there.
    let response = response.ok_or_else(|| IdempotencyError::Corrupt(as_sent(&key)))?;
    replay(key, &hash, &stored_hash, &response).map(Begin::Replay)
}

/// How long a claimed key with no response yet counts as its call still
/// running, for [`around`]: a retry within it is `ABORTED`; after it, the
/// first attempt is taken to have died, and the retry runs the work.
pub const IN_FLIGHT: std::time::Duration = std::time::Duration::from_secs(30);

/// A call whose effect is idempotent by an id of its own and runs its own
/// transactions (direct reservations and slot holds): the key still binds
/// one request. The first call claims the key with its request's hash (its
/// own short transaction); a call under the key with another request is
/// `INVALID_ARGUMENT`; the work runs and its response is stored with the key,
/// and a retry after that is answered from the store. A retry while the
/// first attempt still runs (its claim younger than [`IN_FLIGHT`]) is
/// `ABORTED`, as the plan says: the work would otherwise run twice at once.
/// A first attempt that died before storing its response (an older claim)
/// is taken over by the retry, which runs the work again; the effect's own
/// id makes that harmless. Work that fails did nothing: its own claim is
/// taken back (not a claim another attempt made since), so the key may be
/// sent again with the request put right (as [`once`] rolls its key back
/// with its work).
pub async fn around<Q, R, F, Fut>(
    pool: &sqlx::PgPool,
    scope: &'static str,
    key: Option<String>,
    request: &Q,
    work: F,
) -> Result<R, tonic::Status>
where
    Q: Message,
    R: Message + Default,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<R, tonic::Status>>,
{
    let Some(key) = key else {
        return work().await;
    };
    let db = |e: sqlx::Error| crate::grpc::database(scope, &e);
    let hash = Sha256::digest(request.encode_to_vec()).to_vec();
    let claimed_at = match claim_or_take_over(pool, scope, &key, &hash)
        .await
        .map_err(db)?
    {
        Claim::Ours(at) => at,
        Claim::Answered(response) => return Ok(replay(key, &hash, &hash, &response)?),
        Claim::Mismatch => return Err(IdempotencyError::Mismatch(as_sent(&key)).into()),
        Claim::InFlight => {
            return Err(tonic::Status::aborted(format!(
                "idempotency-key {:?}: a call with it is still running; retry shortly \
                 to get its answer",
                as_sent(&key)
            )));
        }
    };
    let response = match work().await {
        Ok(response) => response,
        Err(status) => {
            // Best effort: a claim left behind is taken over once it is
            // older than IN_FLIGHT.
            if let Err(e) = unclaim(pool, scope, &key, claimed_at).await {
                tracing::warn!(error = %e, scope, "a failed call's idempotency key stays claimed");
            }
            return Err(status);
        }
    };
    store_claimed(pool, scope, &key, &hash, &response)
        .await
        .map_err(db)?;
    Ok(response)
}

/// Where a key stands for [`around`].
enum Claim {
    /// Claimed for this attempt, at this time (which identifies the attempt).
    Ours(chrono::DateTime<chrono::Utc>),
    /// Answered before, for this request.
    Answered(Vec<u8>),
    /// Claimed for another request.
    Mismatch,
    /// Claimed for this request by an attempt still running.
    InFlight,
}

/// A key's request hash, response, claim time, and whether that claim is
/// younger than [`IN_FLIGHT`].
type KeyRow = (
    Vec<u8>,
    Option<Vec<u8>>,
    chrono::DateTime<chrono::Utc>,
    bool,
);

/// Claims `key` for the request of `hash`, or takes over the claim of an
/// attempt that died; else says why not.
async fn claim_or_take_over(
    pool: &sqlx::PgPool,
    scope: &str,
    key: &str,
    hash: &[u8],
) -> sqlx::Result<Claim> {
    // A claim can vanish between the two reads (its attempt failed and took
    // it back): then claiming is tried again, a few times.
    for _ in 0..3 {
        let claimed: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING RETURNING created_at",
        )
        .bind(scope)
        .bind(key)
        .bind(hash)
        .fetch_optional(pool)
        .await?;
        if let Some(at) = claimed {
            return Ok(Claim::Ours(at));
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT request_hash, response, created_at, \
                     created_at > now() - make_interval(secs => $3) \
                 FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .bind(IN_FLIGHT.as_secs_f64())
        .fetch_optional(pool)
        .await?;
        let Some((stored_hash, response, at, running)) = row else {
            continue;
        };
        if stored_hash != hash {
            return Ok(Claim::Mismatch);
        }
        if let Some(response) = response {
            return Ok(Claim::Answered(response));
        }
        if running {
            return Ok(Claim::InFlight);
        }
        let taken: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "UPDATE idempotency_keys SET created_at = now() \
             WHERE scope = $1 AND key = $2 AND created_at = $3 AND response IS NULL \
             RETURNING created_at",
        )
        .bind(scope)
        .bind(key)
        .bind(at)
        .fetch_optional(pool)
        .await?;
        if let Some(at) = taken {
            return Ok(Claim::Ours(at));
        }
    }
    Ok(Claim::InFlight)
}

/// The stored response for `key` and `request`, if a call with them has
/// completed; `None` if the key is new or its first call is still running
/// (then [`begin`] waits for it). Reads only: for a call that has checks to
/// make before its transaction (checks whose answer may have changed since
/// the first call) and must answer a retry as the first call was answered.
pub async fn completed<Q: Message, R: Message + Default>(
    pool: &sqlx::PgPool,
    scope: &'static str,
    key: Option<&str>,
    request: &Q,
) -> Result<Option<R>, IdempotencyError> {
    let Some(key) = key else {
        return Ok(None);
    };
    let row: Option<(Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    let Some((stored_hash, Some(response))) = row else {
        return Ok(None);
    };
    let hash = Sha256::digest(request.encode_to_vec());
    replay(key.to_owned(), &hash, &stored_hash, &response).map(Some)
}

/// Claims `key` for the request of `hash`; false if it was claimed before
/// (waiting for a claim still in an open transaction).
async fn claim<'e>(
    db: impl sqlx::PgExecutor<'e>,
    scope: &str,
    key: &str,
    hash: &[u8],
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Stores the response of a claimed key.
async fn store<'e, R: Message>(
    db: impl sqlx::PgExecutor<'e>,
    scope: &str,
    key: &str,
    response: &R,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE idempotency_keys SET response = $3 WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .bind(response.encode_to_vec())
        .execute(db)
        .await?;
    Ok(())
}

/// Takes back the claim an attempt made at `claimed_at` when its work
/// failed, unless a response has been stored meanwhile (by a concurrent
/// retry whose work succeeded) or another attempt has taken it over.
async fn unclaim(
    pool: &sqlx::PgPool,
    scope: &str,
    key: &str,
    claimed_at: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM idempotency_keys \
         WHERE scope = $1 AND key = $2 AND created_at = $3 AND response IS NULL",
    )
    .bind(scope)
    .bind(key)
    .bind(claimed_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores the response of a call under [`around`], claiming the key again
/// if a concurrent attempt that failed took its claim back; a key claimed
/// since for another request keeps that request.
async fn store_claimed<R: Message>(
    pool: &sqlx::PgPool,
    scope: &str,
    key: &str,
    hash: &[u8],
    response: &R,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, response) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (scope, key) DO UPDATE SET response = excluded.response \
         WHERE idempotency_keys.request_hash = excluded.request_hash",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .bind(response.encode_to_vec())
    .execute(pool)
    .await?;
    Ok(())
}

/// The hash of the request a key was claimed for, and its response once
/// stored.
async fn stored<'e>(
    db: impl sqlx::PgExecutor<'e>,
    scope: &str,
    key: &str,
) -> sqlx::Result<(Vec<u8>, Option<Vec<u8>>)> {
    sqlx::query_as(
        "SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(db)
    .await
}

/// The stored response, if the stored request is this one.
fn replay<R: Message + Default>(
    key: String,
    hash: &[u8],
    stored_hash: &[u8],
    response: &[u8],
) -> Result<R, IdempotencyError> {
    if stored_hash != hash {
        return Err(IdempotencyError::Mismatch(as_sent(&key)));
    }
    R::decode(response).map_err(|_| IdempotencyError::Corrupt(as_sent(&key)))
}
