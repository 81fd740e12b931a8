//! Proof that the request path does not wait on the database.
//!
//! The server runs each model request inside `on_request_path`, and opens
//! its store through `Watched`, which counts every store call made from
//! inside such a scope. Work a request hands to another task (the record
//! writer, the key refresh, a settle retry) runs outside the scope and is
//! not counted: only a request that awaits the database itself is. The
//! count is process-wide (`calls_on_request_path`); tests assert that it
//! stays at zero while requests of every kind are served, and the gateway
//! logs a warning naming the call the first time it grows.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard_core::{Bodies, RequestRecord};

use switchboard_core::keys::{KeyRecord, SpendRow, TeamRecord};

use crate::keys::{KeyStore, KeyStoreConflict, SpendQuery};
use crate::log::{LogPage, LogQuery, UsageQuery, UsageRow};
use crate::{Database, Store, StoreFuture};

tokio::task_local! {
    static REQUEST_PATH: ();
}

static CALLS_ON_REQUEST_PATH: AtomicU64 = AtomicU64::new(0);

/// Runs `work` as a request: store calls it awaits are counted.
///
/// A plain function rather than an `async fn`: an `async fn` would keep
/// `work` as its argument beside the scope that holds it, doubling the size
/// of every request's future.
pub fn on_request_path<F: Future>(work: F) -> impl Future<Output = F::Output> {
    REQUEST_PATH.scope((), work)
}

/// Store calls made from inside `on_request_path` since the process began.
pub fn calls_on_request_path() -> u64 {
    CALLS_ON_REQUEST_PATH.load(Ordering::Relaxed)
}

fn note(call: &'static str) {
    if REQUEST_PATH.try_with(|_| ()).is_ok() {
        let before = CALLS_ON_REQUEST_PATH.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            tracing::warn!(call, "a request waited on the database");
        }
    }
}

/// A store whose calls from the request path are counted.
pub struct Watched<D: ?Sized>(pub std::sync::Arc<D>);

impl<D: Database + ?Sized> Store for Watched<D> {
    fn insert_records<'a>(&'a self, records: &'a [RequestRecord]) -> StoreFuture<'a, ()> {
        note("insert_records");
        self.0.insert_records(records)
    }
    fn recent_records(&self, limit: u32) -> StoreFuture<'_, Vec<RequestRecord>> {
        note("recent_records");
        self.0.recent_records(limit)
    }
    fn log_page<'a>(&'a self, query: &'a LogQuery) -> StoreFuture<'a, LogPage> {
        note("log_page");
        self.0.log_page(query)
    }
    fn usage(&self, query: UsageQuery) -> StoreFuture<'_, Vec<UsageRow>> {
        note("usage");
        self.0.usage(query)
    }
    fn record_bodies<'a>(&'a self, request_id: &'a str) -> StoreFuture<'a, Vec<(i64, Bodies)>> {
        note("record_bodies");
        self.0.record_bodies(request_id)
    }
    fn prune_records(&self, before_ms: i64, limit: u32) -> StoreFuture<'_, u64> {
        note("prune_records");
        self.0.prune_records(before_ms, limit)
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        note("ping");
        self.0.ping()
    }
    fn writer_lanes(&self) -> Option<crate::WriterLanes> {
        note("writer_lanes");
        self.0.writer_lanes()
    }
    fn held_records<'a>(
        &'a self,
        records: &'a [RequestRecord],
    ) -> StoreFuture<'a, Vec<(String, i64)>> {
        note("held_records");
        self.0.held_records(records)
    }
    fn insert_missing_records<'a>(
        &'a self,
        records: &'a [RequestRecord],
    ) -> StoreFuture<'a, usize> {
        note("insert_missing_records");
        self.0.insert_missing_records(records)
    }
}

impl<D: Database + ?Sized> KeyStore for Watched<D> {
    fn create_team<'a>(
        &'a self,
        team: &'a TeamRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        note("create_team");
        self.0.create_team(team)
    }
    fn update_team<'a>(
        &'a self,
        team: &'a TeamRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        note("update_team");
        self.0.update_team(team)
    }
    fn delete_team<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        note("delete_team");
        self.0.delete_team(id)
    }
    fn teams(&self) -> StoreFuture<'_, Vec<TeamRecord>> {
        note("teams");
        self.0.teams()
    }
    fn create_key<'a>(
        &'a self,
        key: &'a KeyRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        note("create_key");
        self.0.create_key(key)
    }
    fn update_key<'a>(
        &'a self,
        key: &'a KeyRecord,
    ) -> StoreFuture<'a, Result<(), KeyStoreConflict>> {
        note("update_key");
        self.0.update_key(key)
    }
    fn keys(&self) -> StoreFuture<'_, Vec<KeyRecord>> {
        note("keys");
        self.0.keys()
    }
    fn key_version(&self) -> StoreFuture<'_, i64> {
        note("key_version");
        self.0.key_version()
    }
    fn spend(&self, query: SpendQuery) -> StoreFuture<'_, Vec<SpendRow>> {
        note("spend");
        self.0.spend(query)
    }
    fn spent_since<'a>(
        &'a self,
        key_id: Option<&'a str>,
        team_id: Option<&'a str>,
        from_ms: i64,
    ) -> StoreFuture<'a, u64> {
        note("spent_since");
        self.0.spent_since(key_id, team_id, from_ms)
    }
    fn user_spent_since<'a>(
        &'a self,
        key_id: &'a str,
        from_ms: i64,
    ) -> StoreFuture<'a, Vec<(String, u64)>> {
        note("user_spent_since");
        self.0.user_spent_since(key_id, from_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::SqliteStore;

    #[tokio::test]
    async fn only_calls_from_inside_a_request_are_counted() {
        let store = Watched(Arc::new(SqliteStore::open_memory().await.unwrap()));
        let before = calls_on_request_path();
        store.ping().await.unwrap();
        // A task spawned by a request runs outside its scope.
        on_request_path(async {
            let inner = Watched(store.0.clone());
            tokio::spawn(async move { inner.ping().await.unwrap() })
                .await
                .unwrap();
        })
        .await;
        assert_eq!(calls_on_request_path(), before);
        on_request_path(async {
            store.ping().await.unwrap();
            store.keys().await.unwrap();
        })
        .await;
        assert_eq!(calls_on_request_path(), before + 2);
    }

    #[test]
    fn a_request_scope_holds_its_work_once() {
        let work = async {
            let page = [7u8; 4096];
            tokio::task::yield_now().await;
            page[0]
        };
        let work_size = std::mem::size_of_val(&work);
        let scoped = on_request_path(work);
        // An `async fn` wrapper held its argument beside the scope: twice.
        assert!(
            std::mem::size_of_val(&scoped) < work_size + 64,
            "{} bytes for work of {work_size}",
            std::mem::size_of_val(&scoped)
        );
    }
}
