//! W3C trace context for upstream requests: the server sets a
//! `traceparent` for each attempt (its own span as the parent), and every
//! request that attempt sends upstream carries it. A task-local, so that
//! no call signature has to carry it.

use std::future::Future;

use http::header::{HeaderMap, HeaderValue};

tokio::task_local! {
    static CONTEXT: Option<(HeaderValue, Option<HeaderValue>)>;
}

/// Runs `future` with `traceparent` (and the caller's `tracestate`, passed
/// on unchanged) added to every upstream request it sends (none when
/// `traceparent` is `None`, even inside another such scope).
///
/// A plain function, not an `async fn`: an `async fn` would hold `future`
/// twice, as its argument and inside the scope, and an attempt's future is
/// the largest part of a request's.
pub fn with_traceparent<F: Future>(
    traceparent: Option<HeaderValue>,
    tracestate: Option<HeaderValue>,
    future: F,
) -> impl Future<Output = F::Output> {
    CONTEXT.scope(traceparent.map(|value| (value, tracestate)), future)
}

/// Adds the current attempt's trace context to a request's headers, if
/// one is set.
pub(crate) fn add_traceparent(headers: &mut HeaderMap) {
    let _ = CONTEXT.try_with(|context| {
        if let Some((traceparent, tracestate)) = context {
            headers.insert("traceparent", traceparent.clone());
            if let Some(state) = tracestate {
                headers.insert("tracestate", state.clone());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traced_attempt_holds_its_future_once() {
        let work = async {
            let page = [7u8; 4096];
            tokio::task::yield_now().await;
            page[0]
        };
        let work_size = std::mem::size_of_val(&work);
        let traced = with_traceparent(Some(HeaderValue::from_static("00-1-2-01")), None, work);
        assert!(
            std::mem::size_of_val(&traced) < work_size + 128,
            "{} bytes for work of {work_size}",
            std::mem::size_of_val(&traced)
        );
    }

    /// The trace headers a request sent here would carry.
    fn trace_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        add_traceparent(&mut headers);
        headers
    }

    #[tokio::test]
    async fn the_context_reaches_requests_only_inside_its_scope() {
        let header =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let state = HeaderValue::from_static("vendor=1");
        let inside = with_traceparent(Some(header.clone()), Some(state.clone()), async {
            trace_headers()
        })
        .await;
        assert_eq!(inside.get("traceparent"), Some(&header));
        assert_eq!(inside.get("tracestate"), Some(&state));
        let untraced = with_traceparent(None, Some(state), async { trace_headers() }).await;
        assert!(untraced.is_empty());
        assert!(trace_headers().is_empty());
    }
}
