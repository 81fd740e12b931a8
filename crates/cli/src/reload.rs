//! Live configuration changes: SIGHUP (and, with `--watch`, a change to the
//! file) reloads the configuration. A new configuration that does not
//! validate is refused with its reasons logged, and the running one keeps
//! serving; requests in flight finish on the configuration they started
//! with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchboard_config::Config;
use switchboard_server::Gateway;
use tokio_util::sync::CancellationToken;

/// How often `--watch` looks at the file.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) fn spawn(
    gateway: Arc<Gateway>,
    running: Config,
    path: Option<PathBuf>,
    watch: bool,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut hangups = hangup_signals();
        let mut seen = path.as_ref().and_then(|path| fingerprint(path));
        let mut ticker = tokio::time::interval(WATCH_INTERVAL);
        loop {
            let changed_on_disk = tokio::select! {
                () = shutdown.cancelled() => return,
                () = next_hangup(&mut hangups) => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    false
                }
                _ = ticker.tick(), if watch && path.is_some() => true,
            };
            let Some(path) = &path else {
                tracing::warn!(
                    "running on the embedded default configuration: there is no file to reload"
                );
                continue;
            };
            if changed_on_disk {
                let now = fingerprint(path);
                if now == seen {
                    continue;
                }
                seen = now;
                tracing::info!(file = %path.display(), "the configuration file changed: reloading");
            } else {
                seen = fingerprint(path);
            }
            reload(&gateway, &running, path);
        }
    });
}

fn reload(gateway: &Gateway, running: &Config, path: &std::path::Path) {
    let config = match Config::load_file(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(
                "configuration reload refused, the running configuration stays: {}",
                error.to_string().trim_end()
            );
            return;
        }
    };
    match gateway.reload(&config, running) {
        Ok(summary) => {
            tracing::info!(
                models = summary.models,
                deployments = summary.deployments,
                "configuration reloaded"
            );
            if !summary.needs_restart.is_empty() {
                tracing::warn!(
                    settings = summary.needs_restart.join(", "),
                    "these settings changed but take effect only after a restart"
                );
            }
        }
        Err(error) => {
            tracing::error!(%error, "configuration reload refused, the running configuration stays");
        }
    }
}

/// Modification time and length: enough to notice an edit.
fn fingerprint(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {}

#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) {
    match hangups {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_hangups: &mut Hangups) {
    std::future::pending().await
}
