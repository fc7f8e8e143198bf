//! Whose a service's schema is: the namespace that claimed it, and the
//! schema as an operator's tool opens it (made by the service, of this
//! build's migrations, of the tool's namespace).

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use super::{BUS_MIGRATIONS, DbError, options, pool};
use crate::config::DatabaseConfig;

/// Records `namespace` as the one whose state `schema` holds, if none is
/// yet, and refuses a schema that holds another namespace's state.
///
/// The record is a table of its own, made here rather than by a migration,
/// so that builds from before it (which refuse migrations they do not
/// know) still start on the schema.
pub(super) async fn claim_namespace(
    pool: &PgPool,
    schema: &str,
    namespace: &str,
) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    // Instances starting at once: `IF NOT EXISTS` does not make creating
    // the same schema or table twice at the same moment safe; this does.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("saga namespace claim of {schema}"))
        .execute(&mut *tx)
        .await?;
    for ddl in [
        format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""),
        format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".namespace_claim (\
             only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row), \
             namespace TEXT NOT NULL, \
             claimed_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".namespace_claim (namespace) VALUES ($1) ON CONFLICT DO NOTHING"
    )))
    .bind(namespace)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    check_namespace(pool, schema, namespace).await
}

/// Refuses a schema that holds another namespace's state (one with none
/// recorded is accepted: nothing has claimed it).
pub async fn check_namespace(pool: &PgPool, schema: &str, namespace: &str) -> Result<(), DbError> {
    let table = format!("\"{schema}\".namespace_claim");
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&table)
        .fetch_one(pool)
        .await?;
    if exists.is_none() {
        return Ok(());
    }
    let recorded: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT namespace FROM {table}"
    )))
    .fetch_optional(pool)
    .await?;
    match recorded {
        Some(recorded) if recorded != namespace => Err(DbError::OtherNamespace {
            schema: schema.to_owned(),
            recorded,
            configured: namespace.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Opens the pool of a schema the service has made, as an operator's tool
/// does: nothing is created or migrated (the service owns its schema), and
/// a schema that lacks this build's migrations (never made, behind, a
/// migration that failed or that differs from this build's) is refused, so
/// that a wrong schema name is not taken for a service that has seen
/// nothing; so is a schema that holds another namespace's state than
/// `namespace`. Migrations a newer build applied as well are accepted
/// (logged), as the services accept them.
pub async fn open_existing(
    cfg: &DatabaseConfig,
    service: &Migrator,
    namespace: &str,
) -> Result<PgPool, DbError> {
    let pool = pool(cfg, options(cfg)?).await?;
    for (migrator, table) in [
        (&BUS_MIGRATIONS, "_sqlx_migrations_bus"),
        (service, "_sqlx_migrations"),
    ] {
        let not_as_built = |why: String| DbError::NotAsBuilt {
            schema: cfg.schema.clone(),
            why,
        };
        let qualified = format!("\"{}\".{table}", cfg.schema);
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(&qualified)
            .fetch_one(&pool)
            .await?;
        if exists.is_none() {
            return Err(not_as_built(format!(
                "it has no {table} table: no service has run on it (is the schema or the \
                 database URL mistyped?)"
            )));
        }
        let applied: Vec<(i64, bool, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version, success, checksum FROM {qualified} ORDER BY version"
        )))
        .fetch_all(&pool)
        .await?;
        let known: Vec<(i64, &[u8])> = migrator
            .migrations
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| (m.version, m.checksum.as_ref()))
            .collect();
        if let Some((version, ..)) = applied.iter().find(|(_, success, _)| !success) {
            return Err(not_as_built(format!("migration {version} failed there")));
        }
        for (version, checksum) in &known {
            match applied.iter().find(|(a, ..)| a == version) {
                None => {
                    return Err(not_as_built(format!(
                        "migration {version} is not applied: start the service of this version \
                         first"
                    )));
                }
                Some((.., applied)) if applied.as_slice() != *checksum => {
                    return Err(not_as_built(format!(
                        "migration {version} there differs from this build's (changed since it \
                         was applied)"
                    )));
                }
                Some(_) => {}
            }
        }
        // Migrations of a newer build are accepted, as the services accept
        // them (see `migrate`): after a rollback, this is the services'
        // version.
        let newer: Vec<i64> = applied
            .iter()
            .map(|(a, ..)| *a)
            .filter(|a| !known.iter().any(|(v, _)| v == a))
            .collect();
        if !newer.is_empty() {
            tracing::warn!(
                schema = cfg.schema,
                table,
                ?newer,
                "the schema has migrations this build does not know (applied by a newer build)"
            );
        }
    }
    check_namespace(&pool, &cfg.schema, namespace).await?;
    Ok(pool)
}
