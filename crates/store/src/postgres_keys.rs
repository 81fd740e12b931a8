//! `KeyStore` for PostgreSQL, mirroring `sqlite_keys.rs` statement for
//! statement. Limits are kept as JSONB (written and read as the same JSON
//! text SQLite keeps), the operator's metadata as JSON (so it reads back
//! byte for byte); every write bumps `key_changes.version` in the same
//! transaction.
//!
//! Several instances write here at once, so what SQLite gets from its
//! single writer is made explicit: a key written with a team takes a
//! `FOR KEY SHARE` lock on the team's row, and deleting a team locks it
//! `FOR UPDATE` first, so a team cannot disappear between the check that
//! it exists and the insert that names it. Text is ordered with
//! `COLLATE "C"` (byte order, as SQLite's default), whatever the database's
//! collation.

use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use switchboard_core::keys::{KeyRecord, SpendGroup, SpendRow, TeamRecord};

use crate::keys::{KeyStore, KeyStoreConflict, SpendQuery};
use crate::postgres::PgStore;
use crate::sqlite_keys::{limits_from, limits_json};
use crate::{StoreError, StoreFuture};

const TEAM_COLUMNS: &str = "SELECT id, name, limits::TEXT AS limits, expires_at_ms, \
     metadata::TEXT AS metadata, created_at_ms, updated_at_ms FROM teams ORDER BY created_at_ms, id COLLATE \"C\"";

const KEY_COLUMNS: &str = "SELECT id, name, team_id, hash, prefix, limits::TEXT AS limits, \
     user_limits::TEXT AS user_limits, expires_at_ms, revoked_at_ms, metadata::TEXT AS metadata, \
     created_at_ms, updated_at_ms FROM keys ORDER BY created_at_ms, id COLLATE \"C\"";

async fn bump(transaction: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("UPDATE key_changes SET version = version + 1 WHERE id = 1")
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.is_unique_violation())
}

/// Whether the team exists, holding its row until the transaction ends so
/// that a concurrent `delete_team` waits for the key that names it.
async fn team_exists(
    transaction: &mut Transaction<'_, Postgres>,
    id: &str,
) -> Result<bool, StoreError> {
    Ok(
        sqlx::query("SELECT 1 FROM teams WHERE id = $1 FOR KEY SHARE")
            .bind(id)
            .fetch_optional(&mut **transaction)
            .await?
            .is_some(),
    )
}

fn team_from(row: &PgRow) -> Result<TeamRecord, StoreError> {
    Ok(TeamRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        limits: limits_from(row.try_get("limits")?)?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        metadata: row.try_get("metadata")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

fn key_from(row: &PgRow) -> Result<KeyRecord, StoreError> {
    let user_limits: Option<&str> = row.try_get("user_limits")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        team_id: row.try_get("team_id")?,
        hash: row.try_get("hash")?,
        prefix: row.try_get("prefix")?,
        limits: limits_from(row.try_get("limits")?)?,
        user_limits: user_limits.map(limits_from).transpose()?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        metadata: row.try_get("metadata")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

/// The spend query for a group: one fixed statement per group, so each is
/// prepared once. Sums of BIGINT are NUMERIC in PostgreSQL, hence the
/// casts back; groups compare in byte order (`COLLATE "C"`), as in SQLite.
fn spend_sql(group: SpendGroup) -> &'static str {
    match group {
        SpendGroup::Key => {
            "SELECT COALESCE(key_id, '') COLLATE \"C\" AS grp, COUNT(*) AS requests, \
             COALESCE(SUM(input_tokens), 0)::BIGINT AS input, COALESCE(SUM(output_tokens), 0)::BIGINT AS output, \
             COALESCE(SUM(cost_nanos), 0)::BIGINT AS cost \
             FROM requests WHERE started_at_ms >= $1 AND started_at_ms < $2 \
             GROUP BY 1 ORDER BY cost DESC, grp"
        }
        SpendGroup::Team => {
            "SELECT COALESCE(team_id, '') COLLATE \"C\" AS grp, COUNT(*) AS requests, \
             COALESCE(SUM(input_tokens), 0)::BIGINT AS input, COALESCE(SUM(output_tokens), 0)::BIGINT AS output, \
             COALESCE(SUM(cost_nanos), 0)::BIGINT AS cost \
             FROM requests WHERE started_at_ms >= $1 AND started_at_ms < $2 \
             GROUP BY 1 ORDER BY cost DESC, grp"
        }
        SpendGroup::Model => {
            "SELECT model COLLATE \"C\" AS grp, COUNT(*) AS requests, \
             COALESCE(SUM(input_tokens), 0)::BIGINT AS input, COALESCE(SUM(output_tokens), 0)::BIGINT AS output, \
             COALESCE(SUM(cost_nanos), 0)::BIGINT AS cost \
             FROM requests WHERE started_at_ms >= $1 AND started_at_ms < $2 \
             GROUP BY 1 ORDER BY cost DESC, grp"
        }
        // The UTC day, as SQLite's strftime('%Y-%m-%d', ms / 1000, 'unixepoch').
        SpendGroup::Day => {
            "SELECT to_char(to_timestamp(started_at_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS grp, \
             COUNT(*) AS requests, \
             COALESCE(SUM(input_tokens), 0)::BIGINT AS input, COALESCE(SUM(output_tokens), 0)::BIGINT AS output, \
             COALESCE(SUM(cost_nanos), 0)::BIGINT AS cost \
             FROM requests WHERE started_at_ms >= $1 AND started_at_ms < $2 \
             GROUP BY 1 ORDER BY cost DESC, grp"
        }
    }
}

impl KeyStore for PgStore {
    fn create_team<'a>(
        &'a self,
        team: &'a TeamRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        Box::pin(async move {
            let mut transaction = self.pool().begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO teams (id, name, limits, expires_at_ms, metadata, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3::JSONB, $4, $5::JSON, $6, $7)",
            )
            .bind(&team.id)
            .bind(&team.name)
            .bind(limits_json(&team.limits))
            .bind(team.expires_at_ms)
            .bind(&team.metadata)
            .bind(team.created_at_ms)
            .bind(team.updated_at_ms)
            .execute(&mut *transaction)
            .await;
            match inserted {
                Err(error) if is_unique_violation(&error) => {
                    return Ok(Err(KeyStoreConflict::TeamNameTaken(team.name.clone())));
                }
                other => other?,
            };
            bump(&mut transaction).await?;
            transaction.commit().await?;
            Ok(Ok(()))
        })
    }

    fn update_team<'a>(
        &'a self,
        team: &'a TeamRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        Box::pin(async move {
            let mut transaction = self.pool().begin().await?;
            let updated = sqlx::query(
                "UPDATE teams SET name = $1, limits = $2::JSONB, expires_at_ms = $3, metadata = $4::JSON, \
                 updated_at_ms = $5 WHERE id = $6",
            )
            .bind(&team.name)
            .bind(limits_json(&team.limits))
            .bind(team.expires_at_ms)
            .bind(&team.metadata)
            .bind(team.updated_at_ms)
            .bind(&team.id)
            .execute(&mut *transaction)
            .await;
            let updated = match updated {
                Err(error) if is_unique_violation(&error) => {
                    return Ok(Err(KeyStoreConflict::TeamNameTaken(team.name.clone())));
                }
                other => other?,
            };
            if updated.rows_affected() == 0 {
                return Ok(Err(KeyStoreConflict::NoSuchTeam(team.id.clone())));
            }
            bump(&mut transaction).await?;
            transaction.commit().await?;
            Ok(Ok(()))
        })
    }

    fn delete_team<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        Box::pin(async move {
            let mut transaction = self.pool().begin().await?;
            // Waits for any transaction writing a key of this team.
            sqlx::query("SELECT 1 FROM teams WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *transaction)
                .await?;
            let members = sqlx::query(
                "SELECT 1 FROM keys WHERE team_id = $1 AND revoked_at_ms IS NULL LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&mut *transaction)
            .await?;
            if members.is_some() {
                return Ok(Err(KeyStoreConflict::TeamHasKeys(id.to_owned())));
            }
            sqlx::query("UPDATE keys SET team_id = NULL WHERE team_id = $1")
                .bind(id)
                .execute(&mut *transaction)
                .await?;
            let deleted = sqlx::query("DELETE FROM teams WHERE id = $1")
                .bind(id)
                .execute(&mut *transaction)
                .await?;
            if deleted.rows_affected() == 0 {
                return Ok(Err(KeyStoreConflict::NoSuchTeam(id.to_owned())));
            }
            bump(&mut transaction).await?;
            transaction.commit().await?;
            Ok(Ok(()))
        })
    }

    fn teams(&self) -> StoreFuture<'_, Vec<TeamRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(TEAM_COLUMNS).fetch_all(self.pool()).await?;
            rows.iter().map(team_from).collect()
        })
    }

    fn create_key<'a>(
        &'a self,
        key: &'a KeyRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        Box::pin(async move {
            let mut transaction = self.pool().begin().await?;
            if let Some(team) = &key.team_id
                && !team_exists(&mut transaction, team).await?
            {
                return Ok(Err(KeyStoreConflict::NoSuchTeam(team.clone())));
            }
            sqlx::query(
                "INSERT INTO keys (id, name, team_id, hash, prefix, limits, user_limits, expires_at_ms, \
                 revoked_at_ms, metadata, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6::JSONB, $7::JSONB, $8, $9, $10::JSON, $11, $12)",
            )
            .bind(&key.id)
            .bind(key.name.as_deref())
            .bind(key.team_id.as_deref())
            .bind(&key.hash)
            .bind(&key.prefix)
            .bind(limits_json(&key.limits))
            .bind(key.user_limits.as_ref().map(limits_json))
            .bind(key.expires_at_ms)
            .bind(key.revoked_at_ms)
            .bind(&key.metadata)
            .bind(key.created_at_ms)
            .bind(key.updated_at_ms)
            .execute(&mut *transaction)
            .await?;
            bump(&mut transaction).await?;
            transaction.commit().await?;
            Ok(Ok(()))
        })
    }

    fn update_key<'a>(
        &'a self,
        key: &'a KeyRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        Box::pin(async move {
            let mut transaction = self.pool().begin().await?;
            if let Some(team) = &key.team_id
                && !team_exists(&mut transaction, team).await?
            {
                return Ok(Err(KeyStoreConflict::NoSuchTeam(team.clone())));
            }
            let updated = sqlx::query(
                "UPDATE keys SET name = $1, team_id = $2, hash = $3, prefix = $4, limits = $5::JSONB, \
                 user_limits = $6::JSONB, expires_at_ms = $7, revoked_at_ms = COALESCE(revoked_at_ms, $8), metadata = $9::JSON, \
                 updated_at_ms = $10 WHERE id = $11",
            )
            .bind(key.name.as_deref())
            .bind(key.team_id.as_deref())
            .bind(&key.hash)
            .bind(&key.prefix)
            .bind(limits_json(&key.limits))
            .bind(key.user_limits.as_ref().map(limits_json))
            .bind(key.expires_at_ms)
            .bind(key.revoked_at_ms)
            .bind(&key.metadata)
            .bind(key.updated_at_ms)
            .bind(&key.id)
            .execute(&mut *transaction)
            .await?;
            if updated.rows_affected() == 0 {
                return Ok(Err(KeyStoreConflict::NoSuchKey(key.id.clone())));
            }
            bump(&mut transaction).await?;
            transaction.commit().await?;
            Ok(Ok(()))
        })
    }

    fn keys(&self) -> StoreFuture<'_, Vec<KeyRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(KEY_COLUMNS).fetch_all(self.pool()).await?;
            rows.iter().map(key_from).collect()
        })
    }

    fn key_version(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            let row = sqlx::query("SELECT version FROM key_changes WHERE id = 1")
                .fetch_one(self.pool())
                .await?;
            Ok(row.try_get("version")?)
        })
    }

    fn spend(&self, query: SpendQuery) -> StoreFuture<'_, Vec<SpendRow>> {
        Box::pin(async move {
            let rows = sqlx::query(spend_sql(query.group))
                .bind(query.from_ms)
                .bind(query.to_ms)
                .fetch_all(self.pool())
                .await?;
            rows.iter()
                .map(|row| {
                    let number = |name: &str| -> Result<u64, StoreError> {
                        Ok(row.try_get::<i64, _>(name)?.max(0) as u64)
                    };
                    Ok(SpendRow {
                        group: row.try_get("grp")?,
                        requests: number("requests")?,
                        input_tokens: number("input")?,
                        output_tokens: number("output")?,
                        cost_nanos: number("cost")?,
                    })
                })
                .collect()
        })
    }

    fn spent_since<'a>(
        &'a self,
        key_id: Option<&'a str>,
        team_id: Option<&'a str>,
        from_ms: i64,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let (sql, id) = match (key_id, team_id) {
                (Some(key), _) => (
                    "SELECT COALESCE(SUM(cost_nanos), 0)::BIGINT AS cost FROM requests \
                     WHERE key_id = $1 AND started_at_ms >= $2",
                    key,
                ),
                (None, Some(team)) => (
                    "SELECT COALESCE(SUM(cost_nanos), 0)::BIGINT AS cost FROM requests \
                     WHERE team_id = $1 AND started_at_ms >= $2",
                    team,
                ),
                (None, None) => return Ok(0),
            };
            let row = sqlx::query(sql)
                .bind(id)
                .bind(from_ms)
                .fetch_one(self.pool())
                .await?;
            Ok(row.try_get::<i64, _>("cost")?.max(0) as u64)
        })
    }

    fn user_spent_since<'a>(
        &'a self,
        key_id: &'a str,
        from_ms: i64,
    ) -> StoreFuture<'a, Vec<(String, u64)>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT end_user COLLATE \"C\" AS end_user, COALESCE(SUM(cost_nanos), 0)::BIGINT AS cost \
                 FROM requests WHERE key_id = $1 AND end_user IS NOT NULL AND started_at_ms >= $2 \
                 GROUP BY 1 ORDER BY 1",
            )
            .bind(key_id)
            .bind(from_ms)
            .fetch_all(self.pool())
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("end_user")?,
                        row.try_get::<i64, _>("cost")?.max(0) as u64,
                    ))
                })
                .collect()
        })
    }
}
