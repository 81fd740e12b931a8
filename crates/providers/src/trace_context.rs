//! W3C trace context for upstream requests: the server sets a
//! `traceparent` for each attempt (its own span as the parent), and every
//! request that attempt sends upstream carries it. A task-local, so that
//! no call signature has to carry it.

use std::future::Future;

use reqwest::header::HeaderValue;

tokio::task_local! {
    static TRACEPARENT: HeaderValue;
}

/// Runs `future` with `traceparent` added to every upstream request it
/// sends (none when `None`).
pub async fn with_traceparent<F: Future>(traceparent: Option<HeaderValue>, future: F) -> F::Output {
    match traceparent {
        Some(value) => TRACEPARENT.scope(value, future).await,
        None => future.await,
    }
}

/// The request with the current attempt's `traceparent`, if one is set.
pub(crate) fn add_traceparent(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match TRACEPARENT.try_with(HeaderValue::clone) {
        Ok(value) => request.header("traceparent", value),
        Err(_) => request,
    }
}
