//! Virtual keys, teams and spend: the `KeyStore` interface every backend
//! implements, so the admin API and the key cache never name a database.
//!
//! Every write to keys or teams also raises one version number
//! (`key_changes`), in the same transaction; instances poll it to learn,
//! within a fraction of a second and with one cheap query, that their key
//! cache is stale.

use switchboard_core::keys::{KeyRecord, SpendGroup, SpendRow, TeamRecord};

use crate::StoreFuture;

/// Why a key or team write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyStoreConflict {
    #[error("a team named `{0}` already exists")]
    TeamNameTaken(String),
    #[error("no team `{0}`")]
    NoSuchTeam(String),
    #[error("no key `{0}`")]
    NoSuchKey(String),
    #[error("team `{0}` still has keys; revoke or move them first")]
    TeamHasKeys(String),
}

/// Spend over a time range, grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendQuery {
    pub group: SpendGroup,
    /// Milliseconds since the epoch; `from` inclusive, `to` exclusive.
    pub from_ms: i64,
    pub to_ms: i64,
}

pub trait KeyStore: Send + Sync + 'static {
    fn create_team<'a>(
        &'a self,
        team: &'a TeamRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>>;
    fn update_team<'a>(
        &'a self,
        team: &'a TeamRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>>;
    fn delete_team<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Result<(), KeyStoreConflict>>;
    fn teams(&self) -> StoreFuture<'_, Vec<TeamRecord>>;
    fn create_key<'a>(
        &'a self,
        key: &'a KeyRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>>;
    /// Replaces every field of the key with this id (secret hash included,
    /// for rotation), except that a revocation is never undone: a change
    /// that read the key before a concurrent revocation cannot bring it
    /// back.
    fn update_key<'a>(
        &'a self,
        key: &'a KeyRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>>;
    fn keys(&self) -> StoreFuture<'_, Vec<KeyRecord>>;
    /// Grows with every change to keys or teams.
    fn key_version(&self) -> StoreFuture<'_, i64>;
    /// Spend recorded in the request log.
    fn spend(&self, query: SpendQuery) -> StoreFuture<'_, Vec<SpendRow>>;
    /// Spent by one key or team since `from_ms` (to restore budgets at start).
    fn spent_since<'a>(
        &'a self,
        key_id: Option<&'a str>,
        team_id: Option<&'a str>,
        from_ms: i64,
    ) -> StoreFuture<'a, u64>;
    /// Spent by each end user of one key since `from_ms`, by end user in
    /// byte order (to restore end users' budgets at start). Requests that
    /// named no end user are left out.
    fn user_spent_since<'a>(
        &'a self,
        key_id: &'a str,
        from_ms: i64,
    ) -> StoreFuture<'a, Vec<(String, u64)>>;
}
