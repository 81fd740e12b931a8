//! A small, database-neutral migration runner: numbered SQL files compiled
//! into the binary, applied in order, each in its own transaction, and
//! remembered in `schema_migrations`. Applying them again is a no-op.

use sqlx::{Executor, Sqlite, SqlitePool};

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
];

pub(crate) async fn run_sqlite(
    pool: &SqlitePool,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    pool.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at_ms INTEGER NOT NULL
        )",
    )
    .await?;
    for migration in migrations {
        let mut transaction = pool.begin().await?;
        let applied: Option<i64> = sqlx::query_scalar::<Sqlite, i64>(
            "SELECT version FROM schema_migrations WHERE version = ?",
        )
        .bind(migration.version)
        .fetch_optional(&mut *transaction)
        .await?;
        if applied.is_some() {
            continue;
        }
        transaction
            .execute(migration.sql)
            .await
            .map_err(|error| StoreError::Migration {
                version: migration.version,
                message: error.to_string(),
            })?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?, ?, ?)",
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
