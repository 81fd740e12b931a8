//! `KeyStore` for SQLite. Limits are kept as JSON text; every write bumps
//! `key_changes.version` in the same transaction.

use sqlx::{Row, Sqlite, Transaction};
use switchboard_core::keys::{KeyRecord, Limits, SpendGroup, SpendRow, TeamRecord};

use crate::keys::{KeyStore, KeyStoreConflict, SpendQuery};
use crate::sqlite::SqliteStore;
use crate::{StoreError, StoreFuture};

pub(crate) fn limits_json(limits: &Limits) -> String {
    serde_json::to_string(limits).unwrap_or_else(|_| "{}".to_owned())
}

pub(crate) fn limits_from(text: &str) -> Result<Limits, StoreError> {
    serde_json::from_str(text)
        .map_err(|error| StoreError::Query(format!("stored limits are not valid: {error}")))
}

async fn bump(transaction: &mut Transaction<'_, Sqlite>) -> Result<(), StoreError> {
    sqlx::query("UPDATE key_changes SET version = version + 1 WHERE id = 1")
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.is_unique_violation())
}

async fn team_exists(
    transaction: &mut Transaction<'_, Sqlite>,
    id: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query("SELECT 1 FROM teams WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut **transaction)
        .await?
        .is_some())
}

fn team_from(row: &sqlx::sqlite::SqliteRow) -> Result<TeamRecord, StoreError> {
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

fn key_from(row: &sqlx::sqlite::SqliteRow) -> Result<KeyRecord, StoreError> {
    let user_limits: Option<String> = row.try_get("user_limits")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        team_id: row.try_get("team_id")?,
        hash: row.try_get("hash")?,
        prefix: row.try_get("prefix")?,
        limits: limits_from(row.try_get("limits")?)?,
        user_limits: user_limits.as_deref().map(limits_from).transpose()?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        metadata: row.try_get("metadata")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

/// The SQL expression a spend group reads.
fn group_column(group: SpendGroup) -> &'static str {
    match group {
        SpendGroup::Key => "COALESCE(key_id, '')",
        SpendGroup::Team => "COALESCE(team_id, '')",
        SpendGroup::Model => "model",
        SpendGroup::Day => "strftime('%Y-%m-%d', started_at_ms / 1000, 'unixepoch')",
    }
}

impl KeyStore for SqliteStore {
    fn create_team<'a>(
        &'a self,
        team: &'a TeamRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        Box::pin(async move {
            let mut transaction = self.pool().begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO teams (id, name, limits, expires_at_ms, metadata, created_at_ms, updated_at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
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
                "UPDATE teams SET name = ?, limits = ?, expires_at_ms = ?, metadata = ?, updated_at_ms = ? WHERE id = ?",
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
            let members = sqlx::query(
                "SELECT 1 FROM keys WHERE team_id = ? AND revoked_at_ms IS NULL LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&mut *transaction)
            .await?;
            if members.is_some() {
                return Ok(Err(KeyStoreConflict::TeamHasKeys(id.to_owned())));
            }
            sqlx::query("UPDATE keys SET team_id = NULL WHERE team_id = ?")
                .bind(id)
                .execute(&mut *transaction)
                .await?;
            let deleted = sqlx::query("DELETE FROM teams WHERE id = ?")
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
            let rows = sqlx::query("SELECT * FROM teams ORDER BY created_at_ms, id")
                .fetch_all(self.pool())
                .await?;
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
                "INSERT INTO keys (id, name, team_id, hash, prefix, limits, user_limits, expires_at_ms, revoked_at_ms, \
                 metadata, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                "UPDATE keys SET name = ?, team_id = ?, hash = ?, prefix = ?, limits = ?, user_limits = ?, \
                 expires_at_ms = ?, revoked_at_ms = COALESCE(revoked_at_ms, ?), metadata = ?, updated_at_ms = ? WHERE id = ?",
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
            let rows = sqlx::query("SELECT * FROM keys ORDER BY created_at_ms, id")
                .fetch_all(self.pool())
                .await?;
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
            let column = group_column(query.group);
            let sql = format!(
                "SELECT {column} AS grp, COUNT(*) AS requests, COALESCE(SUM(input_tokens), 0) AS input, \
                 COALESCE(SUM(output_tokens), 0) AS output, COALESCE(SUM(cost_nanos), 0) AS cost \
                 FROM requests WHERE started_at_ms >= ? AND started_at_ms < ? GROUP BY grp ORDER BY cost DESC, grp"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
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
            let (column, id) = match (key_id, team_id) {
                (Some(key), _) => ("key_id", key),
                (None, Some(team)) => ("team_id", team),
                (None, None) => return Ok(0),
            };
            let sql = format!(
                "SELECT COALESCE(SUM(cost_nanos), 0) AS cost FROM requests WHERE {column} = ? AND started_at_ms >= ?"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
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
                "SELECT end_user, COALESCE(SUM(cost_nanos), 0) AS cost FROM requests \
                 WHERE key_id = ? AND end_user IS NOT NULL AND started_at_ms >= ? \
                 GROUP BY end_user ORDER BY end_user",
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
