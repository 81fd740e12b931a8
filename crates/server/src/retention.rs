//! Retention: request records older than `storage.retention_days` are
//! deleted at start and every hour after, a few thousand rows per
//! statement so that no delete holds the table for long.

use std::sync::Arc;
use std::time::Duration;

use switchboard_store::Database;
use tokio_util::sync::CancellationToken;

/// How often old records are looked for.
const EVERY: Duration = Duration::from_secs(3600);
/// Rows deleted per statement.
const CHUNK: u32 = 5_000;

/// Deletes every record that started more than `days` days before
/// `now_ms`; returns how many went.
pub(crate) async fn prune(
    store: &dyn Database,
    days: u32,
    now_ms: i64,
) -> Result<u64, switchboard_store::StoreError> {
    let cut = now_ms - i64::from(days) * 86_400_000;
    let mut total = 0;
    loop {
        let deleted = store.prune_records(cut, CHUNK).await?;
        total += deleted;
        if deleted < u64::from(CHUNK) {
            return Ok(total);
        }
        // Let the record writer in between chunks.
        tokio::task::yield_now().await;
    }
}

/// Prunes now and every hour until `stop`.
pub(crate) fn spawn(store: Arc<dyn Database>, days: u32, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let now_ms = crate::trace::unix_millis();
            match prune(store.as_ref(), days, now_ms).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(
                        deleted,
                        days,
                        "request records past their retention deleted"
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "deleting old request records failed; retrying in an hour")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = stop.cancelled() => return,
            }
        }
    });
}
