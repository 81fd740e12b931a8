//! W3C trace context for upstream requests: the server sets a
//! `traceparent` for each attempt (its own span as the parent), and every
//! request that attempt sends upstream carries it. A task-local, so that
//! no call signature has to carry it.

use std::future::Future;

use reqwest::header::HeaderValue;

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

/// The request with the current attempt's trace context, if one is set.
pub(crate) fn add_traceparent(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match CONTEXT.try_with(Clone::clone) {
        Ok((traceparent, tracestate)) => {
            let request = request.header("traceparent", traceparent);
            match tracestate {
                Some(state) => request.header("tracestate", state),
                None => request,
            }
        }
        Err(_) => request,
    }
}
