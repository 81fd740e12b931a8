//! The middleware every request passes through, in this order (outermost
//! first), as `router` assembles it:
//!
//! 1. `request_context`: accepts the client's `x-request-id` when it is
//!    sane or makes one, stores it with the start time in the request's
//!    extensions, and echoes it on every response, errors included.
//! 2. `authenticate` (on `/v1` routes only): checks the bearer key.
//! 3. the handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use switchboard_core::mix::splitmix64;
use tracing::Instrument;

use switchboard_providers::Dialect;

use crate::error::ApiError;
use crate::state::Gateway;
use crate::trace::{now, unix_millis};

pub(crate) const REQUEST_ID: &str = "x-request-id";

#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    pub request_id: Arc<str>,
    pub started: Instant,
    pub started_at_ms: i64,
}

pub(crate) async fn request_context(mut request: Request, next: Next) -> Response {
    let request_id: Arc<str> = match request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
    {
        Some(given) if is_acceptable_id(given) => Arc::from(given),
        _ => Arc::from(new_request_id().as_str()),
    };
    let context = RequestContext {
        request_id: request_id.clone(),
        started: now(),
        started_at_ms: unix_millis(),
    };
    request.extensions_mut().insert(context);
    // Every log line written while the handler runs carries the id.
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Client ids are echoed in headers and logs: keep them short and plain.
fn is_acceptable_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':'))
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);
static PROCESS_SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// `req_` and 32 hex digits: a per-process random prefix and a scrambled
/// sequence number (splitmix64 is a bijection, so ids never repeat within
/// a process, and the prefix separates processes).
fn new_request_id() -> String {
    let seed = *PROCESS_SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        splitmix64(nanos ^ (u64::from(std::process::id()) << 32))
    });
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("req_{seed:016x}{:016x}", splitmix64(sequence ^ seed))
}

pub(crate) async fn authenticate(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let catalog = gateway.catalog();
    let Some(master_key) = &catalog.master_key else {
        return next.run(request).await;
    };
    // OpenAI's SDKs send `Authorization: Bearer`, Anthropic's `x-api-key`.
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .or_else(|| {
            request
                .headers()
                .get("x-api-key")
                .and_then(|value| value.to_str().ok())
        })
        .map(str::trim);
    let dialect = dialect_of(request.uri().path());
    match presented {
        None => ApiError::missing_key().render(dialect),
        Some(key) if constant_time_eq(key.as_bytes(), master_key.expose().as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::invalid_key().render(dialect),
    }
}

/// The API dialect a path belongs to, for errors raised before a handler.
pub(crate) fn dialect_of(path: &str) -> Dialect {
    if path.ends_with("/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed key was right. (The length is not secret.)
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 36 && is_acceptable_id(id)));
    }

    #[test]
    fn client_ids_are_accepted_only_when_plain() {
        assert!(is_acceptable_id("abc-123_x.y:z"));
        assert!(!is_acceptable_id(""));
        assert!(!is_acceptable_id("has space"));
        assert!(!is_acceptable_id(&"a".repeat(129)));
    }

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"secret-key", b"secret-key"));
        assert!(!constant_time_eq(b"secret-key", b"secret-kez"));
        assert!(!constant_time_eq(b"secret", b"secret-key"));
    }
}
