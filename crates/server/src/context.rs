//! What every request goes through, in this order (outermost first), as
//! `front::Front` and `router` assemble it:
//!
//! 1. the request's context (`RequestContext::open` and `around`, applied
//!    by `front::Front` to every request): accepts the client's
//!    `x-request-id` when it is sane or makes one, keeps it with the start
//!    time, and echoes it on every response, errors included.
//! 2. authentication (`principal_of`; on model and admin routes): finds
//!    who the key belongs to (the master key, a virtual key from the
//!    in-memory key index, or anyone when no master key is set). The front
//!    calls it directly for the chat routes; `authenticate` is the same as
//!    middleware for the routes the router serves, and stores the
//!    `Principal` in the request's extensions.
//! 3. `admin_only` (on `/admin` routes): the master key only.
//! 4. the handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use switchboard_core::mix::splitmix64;
use switchboard_core::request_id;
use tracing::Instrument;

use switchboard_providers::Dialect;

use crate::error::ApiError;
use crate::head_lines::{HeadLines, LineStart};
use crate::keys::KeyEntry;
use crate::state::Gateway;
use crate::trace::{now, unix_millis};

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const REQUEST_ID_LINE: LineStart = LineStart::new("x-request-id: ");

#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    pub request_id: Arc<str>,
    pub started: Instant,
    pub started_at_ms: i64,
    /// The request's span, when a model endpoint traces it: named back to
    /// the caller in `traceresponse`.
    pub span: Arc<std::sync::OnceLock<crate::telemetry::SpanIds>>,
}

impl RequestContext {
    /// Opens the context of a request that has just arrived: its id (the
    /// client's `x-request-id` when it is sane, a new one otherwise) and its
    /// start time.
    pub(crate) fn open(headers: &HeaderMap) -> Self {
        // One reading of the clock: a new id carries the start time exactly.
        let started_at_ms = unix_millis();
        let request_id: Arc<str> = match headers
            .get(REQUEST_ID)
            .and_then(|value| value.to_str().ok())
        {
            Some(given) if is_acceptable_id(given) => Arc::from(given),
            _ => Arc::from(new_request_id(started_at_ms).as_str()),
        };
        RequestContext {
            request_id,
            started: now(),
            started_at_ms,
            span: Arc::default(),
        }
    }

    /// Runs the rest of the request inside the context's log span (every log
    /// line written meanwhile carries the id) and names the request on its
    /// response: `x-request-id` always, `traceresponse` when it was traced.
    ///
    /// A plain function returning a combinator, not an `async fn`: an async
    /// function keeps its argument beside the future it moves it into, so
    /// it would hold the whole request's future twice.
    pub(crate) fn around<F>(
        request_id: Arc<str>,
        span_slot: Arc<std::sync::OnceLock<crate::telemetry::SpanIds>>,
        inner: F,
    ) -> impl std::future::Future<Output = Response> + use<F>
    where
        F: std::future::Future<Output = Response>,
    {
        let span = tracing::info_span!("request", request_id = %request_id);
        inner.instrument(span).map(move |mut response| {
            // With the lines a model's answer carries, when it has them.
            match response.extensions_mut().get_mut::<HeadLines>() {
                Some(lines) => {
                    lines.push(REQUEST_ID_LINE, request_id.as_bytes());
                }
                None => {
                    if let Ok(value) = HeaderValue::from_str(&request_id) {
                        response.headers_mut().insert(REQUEST_ID, value);
                    }
                }
            }
            if let Some(ids) = span_slot.get() {
                response
                    .headers_mut()
                    .insert("traceresponse", ids.response_header());
            }
            response
        })
    }
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

/// A new id for a request that started at `millis`, in the shape of
/// `switchboard_core::request_id`: the start time, a per-process random
/// tag, and a scrambled sequence number (splitmix64 is a bijection, so ids
/// never repeat within a process). Leading with the time keeps new ids at
/// the end of the request log's order, so a batch of records dirties a few
/// index pages rather than one page per record, and lets the log find a
/// record by its start time; the scrambled tail does not reveal how many
/// requests the gateway serves.
fn new_request_id(millis: i64) -> String {
    let seed = *PROCESS_SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        splitmix64(nanos ^ (u64::from(std::process::id()) << 32))
    });
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    // Written digit by digit: `format!` with three hex fields was about
    // 1.5% of a proxied request's instructions.
    request_id::format(
        millis.max(0) as u64,
        (seed >> 48) as u16,
        splitmix64(sequence ^ seed),
    )
}

/// Who a request comes from, as `authenticate` found out.
#[derive(Debug, Clone)]
pub(crate) enum Principal {
    /// No master key is configured (a loopback-only gateway): anyone.
    Open,
    /// The master key: every model, and the admin API.
    Master,
    /// A virtual key, with its team.
    Key(Arc<KeyEntry>),
}

/// Finds who a request comes from, or the error that refuses it (in the
/// dialect of the path it was sent to).
pub(crate) fn principal_of(
    gateway: &Gateway,
    headers: &HeaderMap,
    path: &str,
) -> Result<Principal, Response> {
    // OpenAI's SDKs send `Authorization: Bearer`, Anthropic's `x-api-key`.
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|value| value.to_str().ok())
        })
        .map(str::trim);
    let catalog = gateway.catalog();
    let refuse = |error: ApiError| Err(error.render(dialect_of(path)));
    match (&catalog.master_key, presented) {
        (Some(master), Some(key))
            if constant_time_eq(key.as_bytes(), master.expose().as_bytes()) =>
        {
            Ok(Principal::Master)
        }
        (master, Some(key)) => match gateway.keys.current().find(key) {
            Some(entry) if entry.is_active(unix_millis()) => Ok(Principal::Key(entry)),
            Some(_) => refuse(ApiError::inactive_key()),
            None if master.is_none() => Ok(Principal::Open),
            None => refuse(ApiError::invalid_key()),
        },
        (None, None) => Ok(Principal::Open),
        (Some(_), None) => refuse(ApiError::missing_key()),
    }
}

/// `principal_of` as middleware, for the routes the router serves.
pub(crate) async fn authenticate(
    State(gateway): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    match principal_of(&gateway, request.headers(), request.uri().path()) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(refusal) => refusal,
    }
}

/// Lets only the master key through (after `authenticate`).
pub(crate) async fn admin_only(request: Request, next: Next) -> Response {
    match request.extensions().get::<Principal>() {
        Some(Principal::Master) => next.run(request).await,
        _ => ApiError::admin_only().into_response(),
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
        let now = unix_millis();
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id(now)).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 36 && is_acceptable_id(id)));
        // Each carries its start time, for the request log to find it by.
        assert!(ids.iter().all(|id| request_id::is_timed(id, now)));
    }

    #[test]
    fn request_ids_sort_by_time() {
        let earlier = new_request_id(unix_millis());
        std::thread::sleep(std::time::Duration::from_millis(3));
        let later = new_request_id(unix_millis());
        assert!(earlier < later, "{earlier} should sort before {later}");
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
