//! Active health probes, for models whose routing sets
//! `probe_interval_secs`: every deployment is checked at that interval,
//! beside what live traffic shows. The default probe lists the upstream's
//! models, which costs nothing; a billed one-token completion is used only
//! when configured. A probe's success closes an open circuit at once
//! (without waiting for the cooldown and a live request); a failure counts
//! like any other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_config::ProbeKind;
use switchboard_policy::Failure;
use switchboard_providers::{Probe, UpstreamError};
use tokio_util::sync::CancellationToken;

use crate::state::Gateway;

/// How often the probe task looks for due probes.
const TICK: Duration = Duration::from_millis(100);

pub(crate) fn spawn(gateway: Arc<Gateway>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        // When each deployment (by name) was last probed.
        let mut last_probe: HashMap<Arc<str>, Instant> = HashMap::new();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let catalog = gateway.catalog();
            let now = Instant::now();
            for route in &catalog.routes {
                let Some(interval) = route.routing.probe_interval else {
                    continue;
                };
                let probe = match route.routing.probe {
                    ProbeKind::Models => Probe::Models,
                    ProbeKind::Completion => Probe::Completion,
                };
                for index in 0..route.group.members().len() {
                    // No free probe exists for some upstreams (Bedrock's
                    // runtime lists nothing): they are judged by their
                    // traffic alone unless billed probes are configured.
                    if probe == Probe::Models && !route.group.member(index).target.has_free_probe()
                    {
                        continue;
                    }
                    let name = route.group.member(index).target.name().clone();
                    if last_probe
                        .get(&name)
                        .is_some_and(|at| now.saturating_duration_since(*at) < interval)
                    {
                        continue;
                    }
                    last_probe.insert(name, now);
                    let route = route.clone();
                    let stop = shutdown.clone();
                    tokio::spawn(async move {
                        let member = route.group.member(index);
                        let result = tokio::select! {
                            () = stop.cancelled() => return,
                            result = member.target.probe(probe) => result,
                        };
                        match result {
                            // A passing probe brings a resting deployment back; it
                            // does not wipe the failures a serving one is piling up.
                            Ok(()) if member.health.is_resting() => member.health.record_success(),
                            Ok(()) => {}
                            Err(error) => match failure_of(&error) {
                                Some(failure) => {
                                    tracing::info!(deployment = %member.target.name(), %error, "health probe failed");
                                    member.health.record_failure(failure, Instant::now());
                                }
                                None => tracing::debug!(
                                    deployment = %member.target.name(), %error,
                                    "the upstream does not answer this probe; it says nothing about health"
                                ),
                            },
                        }
                    });
                }
            }
        }
    });
}

/// What a failed probe says about the deployment. A refusal of the probe
/// itself (no model list, a key not allowed to list) says nothing.
fn failure_of(error: &UpstreamError) -> Option<Failure> {
    Some(match error {
        UpstreamError::Connect(_) | UpstreamError::Transport(_) => Failure::Connection,
        UpstreamError::Timeout { .. } => Failure::Timeout,
        UpstreamError::Status { status: 429, .. } => Failure::RateLimited { retry_after: None },
        UpstreamError::Status { status, .. } if (500..=599).contains(status) => {
            Failure::ServerError
        }
        UpstreamError::Status { .. } => return None,
        UpstreamError::InvalidResponse(_) | UpstreamError::InStream { .. } => {
            Failure::InvalidResponse
        }
        UpstreamError::Misconfigured(_) => Failure::ServerError,
        UpstreamError::Untranslatable { .. } | UpstreamError::Unsupported { .. } => return None,
    })
}
