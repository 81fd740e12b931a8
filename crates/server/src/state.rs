//! The gateway's shared state, built once from a validated configuration.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde_json::json;
use switchboard_config::RoutingStrategy;
use switchboard_config::{Config, PriceTable, Secret};
use switchboard_core::cost::Rates;
use switchboard_core::mix::FnvBuild;
use switchboard_policy::capacity::Capacity;
use switchboard_policy::{CircuitSettings, Health, MemberSpec, ModelGroup, Strategy};

use crate::dispatch::Route;
use switchboard_policy::limits::{Limiter, MemoryLimiter};
use switchboard_providers::{Deployment, UpstreamClients, UpstreamError};
use switchboard_store::{Database, Recorder};

use crate::cache::Cache;
use crate::keys::KeyCache;
use crate::metrics::Metrics;
use crate::redact::Redactor;
use crate::telemetry::Telemetry;
use switchboard_config::CacheBackend;
use switchboard_store::response_cache::{MemoryCache, RedisCache, ResponseCache};
use tokio_util::sync::CancellationToken;

/// Everything a handler needs, behind one `Arc`.
pub struct Gateway {
    /// What the configuration declares; replaced whole on reload, while
    /// requests in flight keep the catalog they started with.
    catalog: RwLock<Arc<Catalog>>,
    /// Connection pools, kept across reloads.
    clients: UpstreamClients,
    pub(crate) recorder: Recorder,
    pub(crate) store: Arc<dyn Database>,
    /// Every virtual key, by the hash of its secret.
    pub(crate) keys: Arc<KeyCache>,
    /// Rate limits, concurrency and budgets of keys, teams and end users.
    pub(crate) limiter: Arc<dyn Limiter>,
    /// Set when shutdown begins: readiness turns 503.
    pub(crate) draining: AtomicBool,
    /// Cancelled when the shutdown grace period is over.
    pub(crate) cut: CancellationToken,
    /// What `GET /metrics` reports.
    pub(crate) metrics: Arc<Metrics>,
    /// The response cache, when enabled.
    pub(crate) cache: Option<Arc<Cache>>,
    /// The OTLP trace exporter, when an endpoint is configured.
    pub(crate) telemetry: Option<Arc<Telemetry>>,
}

/// The part of the gateway that a configuration reload replaces.
pub(crate) struct Catalog {
    /// Each public model's chain: its route, then its fallbacks' routes.
    /// Hashed with FNV-1a: its names are the configuration's, and a client
    /// naming a model only looks one up (SipHash cost about 140
    /// instructions a lookup, twice a request).
    pub chains: HashMap<String, Vec<Arc<Route>>, FnvBuild>,
    /// Routes in configuration order, for the health endpoint.
    pub routes: Vec<Arc<Route>>,
    /// `GET /v1/models`, rendered once.
    pub model_list: Bytes,
    /// `GET /v1/models/{id}` for each model, rendered once.
    pub model_objects: HashMap<String, Bytes>,
    pub master_key: Option<Secret>,
    pub max_body_bytes: usize,
    /// Whether `GET /metrics` answers.
    pub metrics_enabled: bool,
    /// Whether requests are recorded in the request log
    /// (`logging.requests`).
    pub record_requests: bool,
    /// Redacts bodies before the request log keeps them.
    pub redactor: Arc<Redactor>,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub models: usize,
    pub deployments: usize,
    /// Settings that only take effect on restart (listen address, storage).
    pub needs_restart: Vec<&'static str>,
}

impl Gateway {
    pub fn new(
        config: &Config,
        store: Arc<dyn Database>,
        recorder: Recorder,
        cut: CancellationToken,
    ) -> Result<Gateway, UpstreamError> {
        Gateway::with_limiter(config, store, recorder, cut, Arc::new(MemoryLimiter::new()))
    }

    /// As `new`, with the counters of rate limits and budgets kept by
    /// `limiter` (Redis, to share them between instances).
    pub fn with_limiter(
        config: &Config,
        store: Arc<dyn Database>,
        recorder: Recorder,
        cut: CancellationToken,
        limiter: Arc<dyn Limiter>,
    ) -> Result<Gateway, UpstreamError> {
        let clients = UpstreamClients::new();
        let catalog = Catalog::build(config, &clients, None)?;
        let cache = response_cache(config)?;
        Ok(Gateway {
            catalog: RwLock::new(Arc::new(catalog)),
            clients,
            recorder,
            store,
            keys: Arc::new(KeyCache::default()),
            limiter,
            draining: AtomicBool::new(false),
            cut,
            metrics: Arc::new(
                Metrics::new(config.metrics.enabled, config.metrics.key_labels)
                    .with_serving_threads(config.server.serving_threads()),
            ),
            cache,
            telemetry: Telemetry::start(&config.telemetry),
        })
    }

    /// The current catalog; cheap (a read lock and a reference count).
    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces models, deployments, keys and limits with those of a new,
    /// already validated configuration. Requests in flight finish on the
    /// old ones. On error nothing changes. `running` is the configuration
    /// the gateway started with, to report settings that need a restart.
    pub fn reload(
        &self,
        config: &Config,
        running: &Config,
    ) -> Result<ReloadSummary, UpstreamError> {
        let catalog = Catalog::build(config, &self.clients, Some(&self.catalog()))?;
        let mut needs_restart = Vec::new();
        if config.server.listen != running.server.listen {
            needs_restart.push("server.listen");
        }
        if config.storage.url != running.storage.url {
            needs_restart.push("storage.url");
        }
        if config.server.shutdown_grace != running.server.shutdown_grace {
            needs_restart.push("server.shutdown_grace_secs");
        }
        if config.server.idle_timeout != running.server.idle_timeout {
            needs_restart.push("server.idle_timeout_secs");
        }
        // Compared as counts: naming the number of CPUs changes nothing.
        if config.server.threads() != running.server.threads() {
            needs_restart.push("server.worker_threads");
        }
        if config.server.scheduler != running.server.scheduler {
            needs_restart.push("server.scheduler");
        }
        if config.storage.record_queue != running.storage.record_queue {
            needs_restart.push("storage.record_queue");
        }
        if config.storage.record_queue_bytes != running.storage.record_queue_bytes {
            needs_restart.push("storage.record_queue_mib");
        }
        let summary = ReloadSummary {
            models: catalog.routes.len(),
            deployments: catalog
                .routes
                .iter()
                .map(|route| route.group.members().len())
                .sum(),
            needs_restart,
        };
        self.metrics.set_counting(config.metrics.enabled);
        *self
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(catalog);
        Ok(summary)
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub fn store(&self) -> &Arc<dyn Database> {
        &self.store
    }
}

/// The response cache the configuration asks for, if any.
fn response_cache(config: &Config) -> Result<Option<Arc<Cache>>, UpstreamError> {
    if !config.cache.enabled {
        return Ok(None);
    }
    let store: Arc<dyn ResponseCache> = match config.cache.backend {
        CacheBackend::Memory => Arc::new(MemoryCache::new(config.cache.max_bytes)),
        CacheBackend::Redis => {
            let url = config.storage.redis_url.as_ref().ok_or_else(|| {
                UpstreamError::Misconfigured("the Redis cache needs storage.redis_url".to_owned())
            })?;
            // Under the gateway's own prefix: separate gateways sharing a
            // Redis never answer from each other's cache.
            Arc::new(
                RedisCache::connect(url.expose(), &config.storage.redis_prefix).map_err(
                    |error| UpstreamError::Misconfigured(format!("the cache's Redis URL: {error}")),
                )?,
            )
        }
    };
    Ok(Some(Arc::new(Cache {
        store,
        config: config.cache.clone(),
    })))
}

impl Catalog {
    /// Builds the catalog of a configuration. With the `previous` catalog
    /// (a reload), deployments keep their circuit, latency and per-minute
    /// counts by name, as long as their limits did not change.
    fn build(
        config: &Config,
        clients: &UpstreamClients,
        previous: Option<&Catalog>,
    ) -> Result<Catalog, UpstreamError> {
        let mut carried: HashMap<&str, (Arc<Health>, Arc<Capacity>)> = HashMap::new();
        for route in previous
            .map(|catalog| catalog.routes.as_slice())
            .unwrap_or_default()
        {
            for member in route.group.members() {
                carried.insert(
                    member.target.name(),
                    (member.health.clone(), member.capacity.clone()),
                );
            }
        }
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let mut routes: HashMap<String, Arc<Route>> = HashMap::with_capacity(config.models.len());
        let mut ordered = Vec::with_capacity(config.models.len());
        let mut model_objects = HashMap::with_capacity(config.models.len());
        let mut listed = Vec::with_capacity(config.models.len());
        for model in &config.models {
            let deployments = model
                .deployments
                .iter()
                .map(|deployment| Deployment::new(deployment, clients).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            // Each deployment's prices: its own, else the shipped table's.
            let rates: Vec<Option<Rates>> = model
                .deployments
                .iter()
                .map(|config| {
                    let price = PriceTable::shipped().price_for(config)?.price;
                    Rates::from_usd_per_mtok(
                        price.input_per_mtok,
                        price.output_per_mtok,
                        price.cached_input_per_mtok,
                        price.cache_write_per_mtok,
                        price.reasoning_per_mtok,
                    )
                })
                .collect();
            let members = deployments
                .into_iter()
                .zip(&model.deployments)
                .zip(&rates)
                .map(|((deployment, config), rates)| MemberSpec {
                    target: deployment,
                    weight: config.weight,
                    priority: config.priority,
                    tags: config.tags.clone(),
                    price: rates
                        .map(|rates| rates.input.usd_per_mtok() + rates.output.usd_per_mtok()),
                    requests_per_minute: config.requests_per_minute,
                    tokens_per_minute: config.tokens_per_minute,
                    carried: carried.get(config.name.as_str()).cloned(),
                })
                .collect();
            let strategy = match model.routing.strategy {
                RoutingStrategy::RoundRobin => Strategy::RoundRobin,
                RoutingStrategy::Weighted => Strategy::Weighted,
                RoutingStrategy::LeastBusy => Strategy::LeastBusy,
                RoutingStrategy::LowestLatency => Strategy::LowestLatency,
                RoutingStrategy::LowestCost => Strategy::LowestCost,
                RoutingStrategy::MostHeadroom => Strategy::MostHeadroom,
            };
            let circuit = CircuitSettings {
                failures_to_open: model.routing.circuit_breaker_failures,
                cooldown: model.routing.circuit_breaker_cooldown,
            };
            let group = ModelGroup::new(members, strategy, circuit).ok_or_else(|| {
                UpstreamError::Misconfigured(format!("model {} has no deployment", model.name))
            })?;
            let route = Arc::new(Route {
                name: Arc::from(model.name.as_str()),
                group,
                routing: model.routing.clone(),
                fallbacks: model.fallbacks.clone(),
                recent_latencies: std::sync::Mutex::default(),
                rates,
                log_bodies: model.log_bodies || config.logging.bodies,
                answers: answers_of(&model.deployments),
            });
            routes.insert(model.name.clone(), route.clone());
            ordered.push(route);
            let object = json!({"id": model.name, "object": "model", "created": created, "owned_by": "switchboard"});
            model_objects.insert(model.name.clone(), Bytes::from(object.to_string()));
            listed.push(object);
        }
        let model_list = Bytes::from(json!({"object": "list", "data": listed}).to_string());
        // Validation guarantees that every fallback names a declared model.
        let chains = ordered
            .iter()
            .map(|route| {
                let mut chain = vec![route.clone()];
                chain.extend(
                    route
                        .fallbacks
                        .iter()
                        .filter_map(|name| routes.get(name).cloned()),
                );
                (route.name.to_string(), chain)
            })
            .collect();
        Ok(Catalog {
            chains,
            routes: ordered,
            model_list,
            model_objects,
            master_key: config.server.master_key.clone(),
            max_body_bytes: config.server.max_body_bytes,
            metrics_enabled: config.metrics.enabled,
            record_requests: config.logging.requests,
            redactor: Arc::new(Redactor::new(&config.logging)),
        })
    }
}

/// A digest of what a model's answers depend on: each deployment's
/// provider, upstream model, endpoint, API version, Azure deployment,
/// region, the names of the headers it adds, how it treats parameters it
/// cannot honour, and its simulation. Weights, priorities, tags, limits,
/// timeouts, prices and credentials are left out: they choose among the
/// same answers, or price them, but do not change them. The same on every
/// instance with the same configuration (cache keys are shared in Redis).
pub(crate) fn answers_of(deployments: &[switchboard_config::DeploymentConfig]) -> u64 {
    use std::fmt::Write as _;
    let mut text = String::new();
    for deployment in deployments {
        let headers: Vec<&str> = deployment
            .headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        let _ = writeln!(
            text,
            "{:?}\t{}\t{:?}\t{:?}\t{:?}\t{:?}\t{:?}\t{:?}\t{:?}",
            deployment.provider,
            deployment.upstream_model,
            deployment.api_base.as_ref().map(|base| base.as_str()),
            deployment.api_version,
            deployment.azure_deployment,
            deployment.region,
            headers,
            deployment.unsupported_params,
            deployment.simulation,
        );
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(first)
}
