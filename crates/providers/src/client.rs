//! The pooled HTTP clients that every HTTP deployment shares.
//!
//! One client per distinct connect timeout, so deployments on the same host
//! share keep-alive connections. TLS is rustls with the ring provider and
//! the operating system's roots; HTTP/2 is used where the upstream offers it
//! through ALPN. Idle connections are closed after 30 s, before the load
//! balancers in front of most APIs close them under our feet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use crate::UpstreamError;

static INSTALL_CRYPTO: Once = Once::new();

/// Shared by clone: every clone sees the same clients.
#[derive(Debug, Default, Clone)]
pub struct UpstreamClients {
    by_connect_timeout: Arc<Mutex<HashMap<Duration, reqwest::Client>>>,
}

/// A per-request connect timeout, rounded up to one of a few steps (tenths
/// of a second below one second, whole seconds up to a minute), so that
/// requests cannot make the gateway build clients without bound.
pub(crate) fn connect_step(requested: Duration) -> Duration {
    let millis = requested.as_millis().clamp(100, 60_000) as u64;
    if millis < 1000 {
        Duration::from_millis(millis.div_ceil(100) * 100)
    } else {
        Duration::from_secs(millis.div_ceil(1000))
    }
}

impl UpstreamClients {
    pub fn new() -> UpstreamClients {
        INSTALL_CRYPTO.call_once(|| {
            // Only one provider is compiled in; installing it explicitly keeps
            // rustls from guessing (it refuses to when it cannot).
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        UpstreamClients::default()
    }

    /// The client for a connect timeout, built on first use.
    pub(crate) fn get(&self, connect_timeout: Duration) -> Result<reqwest::Client, UpstreamError> {
        let mut clients = self
            .by_connect_timeout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&connect_timeout) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .http2_adaptive_window(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| {
                UpstreamError::Misconfigured(format!("cannot build the HTTP client: {error}"))
            })?;
        clients.insert(connect_timeout, client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_request_connect_timeouts_fall_on_few_steps() {
        assert_eq!(
            connect_step(Duration::from_millis(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            connect_step(Duration::from_millis(250)),
            Duration::from_millis(300)
        );
        assert_eq!(
            connect_step(Duration::from_millis(1200)),
            Duration::from_secs(2)
        );
        assert_eq!(
            connect_step(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        let steps: std::collections::HashSet<Duration> = (0..100_000)
            .map(|millis| connect_step(Duration::from_millis(millis)))
            .collect();
        assert!(steps.len() <= 70, "{}", steps.len());
    }
}
