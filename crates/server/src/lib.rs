//! Switchboard's HTTP front: the axum router, its middleware, the handlers,
//! error rendering and the serve loop with graceful shutdown.
//!
//! Invariant: this is the only crate that names axum. Handlers parse with
//! `switchboard-dialects`, choose with `switchboard-policy`, call upstreams
//! through `switchboard-providers`, and record through the store's
//! `Recorder`, which never blocks the request.

mod access;
mod admin;
mod body;
mod cache;
mod context;
mod dispatch;
mod error;
mod front;
mod h1;
mod handlers;
mod head_lines;
mod keys;
mod listen;
mod metrics;
mod probe;
mod redact;
mod request_log;
mod retention;
mod state;
mod stream;
mod telemetry;
mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use switchboard_config::{Config, StorageUrl};
use switchboard_store::journal::Journal;
use switchboard_store::{Database, PgStore, RecordWriter, SqliteStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use state::{Gateway, ReloadSummary};

/// Builds the router, which serves every request but chat (see `front`).
/// The middleware order is written once, in `context.rs`; `route_layer`
/// applies authentication to the model routes only, and the front opens
/// the request's context outside everything.
fn router(gateway: Arc<Gateway>) -> Router {
    let admin_routes = Router::new()
        .route(
            "/admin/teams",
            get(admin::list_teams).post(admin::create_team),
        )
        .route(
            "/admin/teams/{id}",
            get(admin::show_team)
                .patch(admin::update_team)
                .delete(admin::delete_team),
        )
        .route("/admin/keys", get(admin::list_keys).post(admin::create_key))
        .route(
            "/admin/keys/{id}",
            get(admin::show_key).patch(admin::update_key),
        )
        .route("/admin/keys/{id}/revoke", post(admin::revoke_key))
        .route("/admin/keys/{id}/rotate", post(admin::rotate_key))
        .route("/admin/spend", get(admin::spend))
        .route("/admin/logs", get(request_log::logs))
        .route("/admin/logs/{request_id}", get(request_log::log_entry))
        .route("/admin/usage", get(request_log::usage))
        .route("/admin/openapi.json", get(admin::openapi))
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            context::admin_only,
        ))
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            context::authenticate,
        ));
    // The chat routes authenticate in their handler (`chat_request`, which
    // the front calls directly), so they sit outside `authenticate`.
    let chat_routes = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/messages", post(handlers::messages))
        .route("/chat/completions", post(handlers::chat_completions))
        .route("/messages", post(handlers::messages));
    let model_routes = Router::new()
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{*model}", get(handlers::retrieve_model))
        .route("/health/deployments", get(handlers::deployment_health))
        // The same API without the version prefix, for clients configured
        // with a bare base URL.
        .route("/embeddings", post(handlers::embeddings))
        .route("/models", get(handlers::list_models))
        .route("/models/{*model}", get(handlers::retrieve_model))
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            context::authenticate,
        ));
    Router::new()
        .route("/health", get(handlers::live))
        .route("/health/live", get(handlers::live))
        .route("/health/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
        .merge(chat_routes)
        .merge(model_routes)
        .merge(admin_routes)
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .with_state(gateway)
}

async fn unknown_path(request: Request) -> Response {
    ApiError::not_found_path(request.uri().path()).into_response()
}

async fn wrong_method(request: Request) -> Response {
    ApiError::method_not_allowed(request.method().as_str(), request.uri().path())
        .render(context::dialect_of(request.uri().path()))
}

/// Opens the configured store.
pub async fn open_store(
    config: &Config,
) -> Result<Arc<dyn Database>, switchboard_store::StoreError> {
    Ok(match &config.storage.url {
        StorageUrl::SqliteFile(path) => Arc::new(SqliteStore::open_file(path).await?),
        StorageUrl::SqliteMemory => Arc::new(SqliteStore::open_memory().await?),
        StorageUrl::Postgres(url) => Arc::new(PgStore::connect(url).await?),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] switchboard_store::StoreError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Upstream(#[from] switchboard_providers::UpstreamError),
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot use Redis for limits: {0}")]
    Limiter(String),
}

/// A gateway listening and serving until `shutdown` is cancelled.
pub struct Running {
    pub address: SocketAddr,
    pub gateway: Arc<Gateway>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Waits for the serve loop (and the final flush of records) to end.
    pub async fn wait(self) -> Result<(), ServeError> {
        // The gateway holds a record handle; the writer ends once all are gone.
        drop(self.gateway);
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(ServeError::Io(std::io::Error::other(error.to_string()))),
        }
    }
}

/// Opens the store, binds the listener and starts serving. On `shutdown`:
/// readiness turns 503 and no new connection is accepted; in-flight
/// requests and streams get `server.shutdown_grace` to finish, after which
/// they are ended with an error; then every queued record is written.
pub async fn start(
    config: &Config,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> Result<Running, ServeError> {
    // Every store call a model request awaits is counted (see
    // `switchboard_store::watch`): the request path must make none.
    let store: Arc<dyn Database> =
        Arc::new(switchboard_store::watch::Watched(open_store(config).await?));
    // Records left in the journal by a previous run that the database does
    // not hold are written first.
    let journal = match &config.storage.journal_dir {
        Some(directory) => {
            let (journal, _) = Journal::open(directory, store.as_ref()).await?;
            Some(Arc::new(journal))
        }
        // Without a journal, records the queue cannot take still spill to
        // a private file rather than being dropped (what killed instances
        // left there is cleared, and counted in the log).
        None => {
            Journal::clear_abandoned_spills(&std::env::temp_dir());
            Some(Arc::new(Journal::spill()))
        }
    };
    let (recorder, writer) = RecordWriter::start_bounded(
        store.clone(),
        config.storage.record_queue,
        config.storage.record_queue_bytes,
        journal,
    );
    let cut = CancellationToken::new();
    let limiter: Arc<dyn switchboard_policy::limits::Limiter> = match &config.storage.redis_url {
        Some(url) => Arc::new(
            switchboard_store::RedisLimiter::connect_with(
                url.expose(),
                switchboard_store::redis_limiter::RedisLimiterConfig {
                    fail_open: config.storage.redis_fail_open,
                    fail_open_budgets: config.storage.redis_fail_open_budgets,
                    prefix: config.storage.redis_prefix.clone(),
                    leases: config.storage.redis_leases,
                    ..Default::default()
                },
            )
            .await
            .map_err(|error| ServeError::Limiter(error.to_string()))?
            // Counters Redis lost (a flush, a restart without persistence)
            // are restored from the request log before budgets are checked.
            .with_reseed(Arc::new(keys::RequestLog(store.clone()))),
        ),
        None => {
            let limiter = switchboard_policy::limits::MemoryLimiter::new();
            keys::restore_budgets(store.as_ref(), &limiter).await?;
            Arc::new(limiter)
        }
    };
    let gateway = Arc::new(Gateway::with_limiter(
        config,
        store.clone(),
        recorder,
        cut.clone(),
        limiter,
    )?);
    // Keys are known before the first request, and kept current.
    gateway.keys.refresh(store.as_ref(), true).await?;
    if let Some(days) = config.storage.retention_days {
        retention::spawn(store.clone(), days, shutdown.clone());
    }
    keys::spawn_refresh(gateway.keys.clone(), store, shutdown.clone());
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            address: listen,
            source,
        })?;
    let address = listener.local_addr()?;
    probe::spawn(gateway.clone(), shutdown.clone());
    let grace = config.server.shutdown_grace;
    let idle_timeout = config.server.idle_timeout;
    let app = front::Front::new(gateway.clone());
    // Cancelled once the task below has ended or been dropped (or at once
    // if the serving threads cannot all start): their runtimes stop then.
    let release = CancellationToken::new();
    let shards = listen::Shards::start(&app, &gateway.metrics, idle_timeout, &shutdown, &release)
        .inspect_err(|_| release.cancel())?;
    let release = release.drop_guard();
    let serving_gateway = gateway.clone();

    let task = tokio::spawn(async move {
        let _release = release;
        let drain_signal = shutdown.clone();
        let draining_gateway = serving_gateway.clone();
        let serve = async {
            let announce = async move {
                drain_signal.cancelled().await;
                draining_gateway.draining.store(true, Ordering::Relaxed);
                tracing::info!("shutting down: no new connections; waiting for in-flight requests");
            };
            tokio::join!(
                listen::serve(listener, app, idle_timeout, shutdown.clone(), shards),
                announce
            );
        };
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
            tracing::warn!("shutdown grace period over: ending the requests still in flight");
            cut.cancel();
            // Requests end themselves once cut; this bounds the wait for
            // connections that still do not close.
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        let served = tokio::select! {
            () = serve => Ok(()),
            () = deadline => Ok(()),
        };
        // Requests have ended: the limiter gives back what it holds for
        // requests to come (the Redis limiter's leases).
        serving_gateway.limiter.shutdown().await;
        // Connections are gone; their handlers have queued their records.
        drop(serving_gateway);
        // Connections still open after the deadline record themselves as
        // they close; give them a few seconds before closing the queue.
        writer
            .finish(Duration::from_secs(5), Duration::from_secs(30))
            .await;
        tracing::info!("shutdown complete");
        served
    });
    Ok(Running {
        address,
        gateway,
        task,
    })
}
