//! The storage contract (`contract/mod.rs`) against SQLite, in memory: the
//! same functions `tests/postgres.rs` runs against PostgreSQL.

mod contract;

use switchboard_store::SqliteStore;

#[tokio::test]
async fn sqlite_records_round_trip() {
    let store = SqliteStore::open_memory().await.unwrap();
    contract::records_round_trip(&store).await;
}

#[tokio::test]
async fn sqlite_texts_with_escapes_round_trip() {
    let store = SqliteStore::open_memory().await.unwrap();
    contract::texts_with_escapes_round_trip(&store).await;
}

#[tokio::test]
async fn sqlite_key_store_contract() {
    let store = SqliteStore::open_memory().await.unwrap();
    contract::key_store(&store).await;
}

#[tokio::test]
async fn sqlite_request_log_pages() {
    let store = SqliteStore::open_memory().await.unwrap();
    contract::request_log_pages(&store).await;
}

#[tokio::test]
async fn sqlite_request_ids_of_every_kind() {
    let store = SqliteStore::open_memory().await.unwrap();
    contract::request_ids_of_every_kind(&store).await;
}

#[tokio::test]
async fn sqlite_usage_aggregates() {
    let store = SqliteStore::open_memory().await.unwrap();
    contract::usage_aggregates(&store).await;
}

#[tokio::test]
async fn sqlite_usage_matches_the_reference() {
    let store = SqliteStore::open_memory().await.unwrap();
    contract::usage_matches_the_reference(&store).await;
}

#[tokio::test]
async fn sqlite_prune_records() {
    let store = SqliteStore::open_memory().await.unwrap();
    contract::prune_records(&store).await;
}

#[tokio::test]
async fn sqlite_bodies_round_trip() {
    let store = SqliteStore::open_memory().await.unwrap();
    contract::bodies_round_trip(&store).await;
}
