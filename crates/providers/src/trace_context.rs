//! W3C trace context for upstream requests: the server sets a
//! `traceparent` for each attempt (its own span as the parent), and every
//! request that attempt sends upstream carries it. A task-local, so that
//! no call signature has to carry it.

use std::future::Future;

use http::header::{HeaderMap, HeaderValue};

tokio::task_local! {
    static CONTEXT: (HeaderValue, Option<HeaderValue>);
}

/// Runs `future` with `traceparent` (and the caller's `tracestate`, passed
/// on unchanged) added to every upstream request it sends (none when
/// `traceparent` is `None`).
pub async fn with_traceparent<F: Future>(
    traceparent: Option<HeaderValue>,
    tracestate: Option<HeaderValue>,
    future: F,
) -> F::Output {
    match traceparent {
        Some(value) => CONTEXT.scope((value, tracestate), future).await,
        None => future.await,
    }
}

/// Adds the current attempt's trace context to a request's headers, if
/// one is set.
pub(crate) fn add_traceparent(headers: &mut HeaderMap) {
    let _ = CONTEXT.try_with(|(traceparent, tracestate)| {
        headers.insert("traceparent", traceparent.clone());
        if let Some(state) = tracestate {
            headers.insert("tracestate", state.clone());
        }
    });
}
