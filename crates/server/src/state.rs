//! The gateway's shared state, built once from a validated configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use serde_json::json;
use switchboard_config::RoutingStrategy;
use switchboard_config::{Config, Secret};
use switchboard_policy::{CircuitSettings, ModelGroup, Strategy};

use crate::dispatch::Route;
use switchboard_providers::{Deployment, UpstreamClients, UpstreamError};
use switchboard_store::{Recorder, Store};
use tokio_util::sync::CancellationToken;

/// Everything a handler needs, behind one `Arc`.
pub struct Gateway {
    /// Each public model's route, and the chain (itself, then its
    /// fallbacks) a request for it walks.
    pub(crate) chains: HashMap<String, Vec<Arc<Route>>>,
    /// Routes in configuration order, for the health endpoint.
    pub(crate) routes: Vec<Arc<Route>>,
    /// `GET /v1/models`, rendered once.
    pub(crate) model_list: Bytes,
    /// `GET /v1/models/{id}` for each model, rendered once.
    pub(crate) model_objects: HashMap<String, Bytes>,
    pub(crate) master_key: Option<Secret>,
    pub(crate) max_body_bytes: usize,
    pub(crate) recorder: Recorder,
    pub(crate) store: Arc<dyn Store>,
    /// Set when shutdown begins: readiness turns 503.
    pub(crate) draining: AtomicBool,
    /// Cancelled when the shutdown grace period is over.
    pub(crate) cut: CancellationToken,
}

impl Gateway {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        recorder: Recorder,
        cut: CancellationToken,
    ) -> Result<Gateway, UpstreamError> {
        let clients = UpstreamClients::new();
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
                .map(|deployment| Deployment::new(deployment, &clients).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            let weighted = deployments
                .into_iter()
                .zip(&model.deployments)
                .map(|(deployment, config)| (deployment, config.weight))
                .collect();
            let strategy = match model.routing.strategy {
                RoutingStrategy::RoundRobin => Strategy::RoundRobin,
                RoutingStrategy::Weighted => Strategy::Weighted,
                RoutingStrategy::LeastBusy => Strategy::LeastBusy,
            };
            let circuit = CircuitSettings {
                failures_to_open: model.routing.circuit_breaker_failures,
                cooldown: model.routing.circuit_breaker_cooldown,
            };
            let group = ModelGroup::new(weighted, strategy, circuit).ok_or_else(|| {
                UpstreamError::Misconfigured(format!("model {} has no deployment", model.name))
            })?;
            let route = Arc::new(Route {
                name: Arc::from(model.name.as_str()),
                group,
                routing: model.routing.clone(),
                fallbacks: model.fallbacks.clone(),
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
        Ok(Gateway {
            chains,
            routes: ordered,
            model_list,
            model_objects,
            master_key: config.server.master_key.clone(),
            max_body_bytes: config.server.max_body_bytes,
            recorder,
            store,
            draining: AtomicBool::new(false),
            cut,
        })
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
