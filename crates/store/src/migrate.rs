//! A small, database-neutral migration runner: numbered SQL files compiled
//! into the binary (one list per backend, `SQLITE` and `POSTGRES`, in step:
//! the same versions and names), applied in order, each in its own
//! transaction, and remembered in `schema_migrations`. Applying them again
//! is a no-op.
//!
//! Several gateway instances may start at once against one PostgreSQL
//! database. Every transaction of the runner there begins by taking a
//! transaction-scoped advisory lock (`pg_advisory_xact_lock`, keyed by the
//! schema migrated), so migrators queue instead of racing: the second one
//! finds each version recorded by the first and skips it. A lock scoped to
//! the transaction, not the session, is released by COMMIT or ROLLBACK
//! whatever happens to the connection, and it also holds behind PgBouncer
//! in transaction mode, where a session lock could be taken on one server
//! connection and released on another.

use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Postgres, Sqlite, Type,
};

use crate::StoreError;

pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "requests",
        sql: include_str!("../migrations/sqlite/0001_requests.sql"),
    },
    Migration {
        version: 2,
        name: "routing",
        sql: include_str!("../migrations/sqlite/0002_routing.sql"),
    },
    Migration {
        version: 3,
        name: "keys",
        sql: include_str!("../migrations/sqlite/0003_keys.sql"),
    },
    Migration {
        version: 4,
        name: "cache_write",
        sql: include_str!("../migrations/sqlite/0004_cache_write.sql"),
    },
    Migration {
        version: 5,
        name: "team_expiry",
        sql: include_str!("../migrations/sqlite/0005_team_expiry.sql"),
    },
    Migration {
        version: 6,
        name: "request_log_order",
        sql: include_str!("../migrations/sqlite/0006_request_log_order.sql"),
    },
    Migration {
        version: 7,
        name: "cache_hit_metadata",
        sql: include_str!("../migrations/sqlite/0007_cache_hit_metadata.sql"),
    },
    Migration {
        version: 8,
        name: "request_bodies",
        sql: include_str!("../migrations/sqlite/0008_request_bodies.sql"),
    },
    Migration {
        version: 9,
        name: "attempt_details",
        sql: include_str!("../migrations/sqlite/0009_attempt_details.sql"),
    },
    Migration {
        version: 10,
        name: "partial_key_indexes",
        sql: include_str!("../migrations/sqlite/0010_partial_key_indexes.sql"),
    },
    Migration {
        version: 11,
        name: "timed_request_ids",
        sql: include_str!("../migrations/sqlite/0011_timed_request_ids.sql"),
    },
    Migration {
        version: 12,
        name: "requests_without_primary_key",
        sql: include_str!("../migrations/sqlite/0012_requests_without_primary_key.sql"),
    },
];

pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "requests",
        sql: include_str!("../migrations/postgres/0001_requests.sql"),
    },
    Migration {
        version: 2,
        name: "routing",
        sql: include_str!("../migrations/postgres/0002_routing.sql"),
    },
    Migration {
        version: 3,
        name: "keys",
        sql: include_str!("../migrations/postgres/0003_keys.sql"),
    },
    Migration {
        version: 4,
        name: "cache_write",
        sql: include_str!("../migrations/postgres/0004_cache_write.sql"),
    },
    Migration {
        version: 5,
        name: "team_expiry",
        sql: include_str!("../migrations/postgres/0005_team_expiry.sql"),
    },
    Migration {
        version: 6,
        name: "request_log_order",
        sql: include_str!("../migrations/postgres/0006_request_log_order.sql"),
    },
    Migration {
        version: 7,
        name: "cache_hit_metadata",
        sql: include_str!("../migrations/postgres/0007_cache_hit_metadata.sql"),
    },
    Migration {
        version: 8,
        name: "request_bodies",
        sql: include_str!("../migrations/postgres/0008_request_bodies.sql"),
    },
    Migration {
        version: 9,
        name: "attempt_details",
        sql: include_str!("../migrations/postgres/0009_attempt_details.sql"),
    },
    Migration {
        version: 10,
        name: "partial_key_indexes",
        sql: include_str!("../migrations/postgres/0010_partial_key_indexes.sql"),
    },
    Migration {
        version: 11,
        name: "timed_request_ids",
        sql: include_str!("../migrations/postgres/0011_timed_request_ids.sql"),
    },
    Migration {
        version: 12,
        name: "requests_without_primary_key",
        sql: include_str!("../migrations/postgres/0012_requests_without_primary_key.sql"),
    },
];

/// What running migrations differs in between backends. The queries that
/// read and write `schema_migrations` are shared: SQLite accepts `$1`
/// placeholders as PostgreSQL does.
struct Dialect {
    create_table: &'static str,
    /// Run first in every transaction of the runner, to serialise
    /// concurrent migrators.
    lock: Option<&'static str>,
}

const SQLITE_DIALECT: Dialect = Dialect {
    create_table: "CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        applied_at_ms INTEGER NOT NULL
    )",
    lock: None,
};

const POSTGRES_DIALECT: Dialect = Dialect {
    create_table: "CREATE TABLE IF NOT EXISTS schema_migrations (
        version BIGINT PRIMARY KEY,
        name TEXT NOT NULL,
        applied_at_ms BIGINT NOT NULL
    )",
    // Two 32-bit keys: one for "Switchboard's migrations", one for the
    // schema they go into, so that instances using different schemas of one
    // database (tests, tenants) do not wait for each other.
    lock: Some(
        "SELECT pg_advisory_xact_lock(hashtext('switchboard.schema_migrations'), hashtext(current_schema()))",
    ),
};

pub(crate) async fn run_sqlite(
    pool: &Pool<Sqlite>,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    run(pool, &SQLITE_DIALECT, migrations).await
}

pub(crate) async fn run_postgres(
    pool: &Pool<Postgres>,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    run(pool, &POSTGRES_DIALECT, migrations).await
}

async fn run<DB>(
    pool: &Pool<DB>,
    dialect: &Dialect,
    migrations: &[Migration],
) -> Result<(), StoreError>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    for<'q> &'q str: Type<DB> + Encode<'q, DB>,
{
    let mut transaction = pool.begin().await?;
    if let Some(lock) = dialect.lock {
        (&mut *transaction).execute(lock).await?;
    }
    (&mut *transaction).execute(dialect.create_table).await?;
    transaction.commit().await?;
    for migration in migrations {
        let mut transaction = pool.begin().await?;
        if let Some(lock) = dialect.lock {
            (&mut *transaction).execute(lock).await?;
        }
        let applied: Option<i64> = sqlx::query_scalar::<DB, i64>(
            "SELECT version FROM schema_migrations WHERE version = $1",
        )
        .bind(migration.version)
        .fetch_optional(&mut *transaction)
        .await?;
        if applied.is_some() {
            continue;
        }
        (&mut *transaction)
            .execute(migration.sql)
            .await
            .map_err(|error| StoreError::Migration {
                version: migration.version,
                message: error.to_string(),
            })?;
        sqlx::query::<DB>(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
        )
        .bind(migration.version)
        .bind(migration.name)
        .bind(now_ms())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied database migration"
        );
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_migrations_in_order() {
        let versions = |list: &[Migration]| -> Vec<(i64, &str)> {
            list.iter()
                .map(|migration| (migration.version, migration.name))
                .collect()
        };
        assert_eq!(versions(SQLITE), versions(POSTGRES));
        for (index, migration) in SQLITE.iter().enumerate() {
            assert_eq!(migration.version, index as i64 + 1);
        }
    }
}
