//! The pooled HTTP clients that every HTTP deployment shares.
//!
//! One client per distinct connect timeout, so deployments on the same host
//! share keep-alive connections. TLS is rustls with the ring provider and
//! the operating system's roots; HTTP/2 is used where the upstream offers it
//! through ALPN. Idle connections are closed after 30 s, before the load
//! balancers in front of most APIs close them under our feet.

use std::collections::HashMap;
use std::sync::{Mutex, Once};
use std::time::Duration;

use crate::UpstreamError;

static INSTALL_CRYPTO: Once = Once::new();

#[derive(Debug, Default)]
pub struct UpstreamClients {
    by_connect_timeout: Mutex<HashMap<Duration, reqwest::Client>>,
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
