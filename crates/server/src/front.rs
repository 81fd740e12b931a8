//! The service the listener runs. Every request gets its context here (its
//! id, start time and log span, echoed on the response); chat requests, the
//! path nearly all traffic takes, then go straight to their handler, and
//! everything else through the axum router.
//!
//! Going around the router for chat saves, per request, the route lookup,
//! two middleware layers (each boxes the inner service and its future), the
//! extension-map inserts and the header-map clone its extractors make: the
//! front boxes one future per request, whatever the route. The router
//! still holds the chat routes, so that another method on their paths is
//! answered 405, and so that they are served the same way should the front
//! ever pass them on.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use futures_util::FutureExt;
use switchboard_providers::Dialect;
use tower::Service;

use crate::context::RequestContext;
use crate::handlers;
use crate::state::Gateway;

#[derive(Clone)]
pub(crate) struct Front {
    gateway: Arc<Gateway>,
    router: Router,
}

impl Front {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Self {
        Front {
            router: crate::router(gateway.clone()),
            gateway,
        }
    }
}

/// The chat endpoints, by the dialect their path speaks. Exact paths only,
/// as the router matches them; anything else goes to the router.
fn chat_dialect(method: &Method, path: &str) -> Option<Dialect> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" | "/chat/completions" => Some(Dialect::OpenAi),
        "/v1/messages" | "/messages" => Some(Dialect::Anthropic),
        _ => None,
    }
}

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let context = RequestContext::open(request.headers());
        match chat_dialect(request.method(), request.uri().path()) {
            Some(dialect) => Box::pin(chat(self.gateway.clone(), context, request, dialect)),
            None => {
                let id = context.request_id.clone();
                let span = context.span.clone();
                request.extensions_mut().insert(context);
                let routed = self.router.call(request).map(|routed| match routed {
                    Ok(response) => response,
                    Err(never) => match never {},
                });
                Box::pin(RequestContext::around(id, span, routed).map(Ok))
            }
        }
    }
}

/// What the front boxes for a chat request: the handler's future, boxed
/// where it is made, inside the request's context. Boxed first, the 5 KiB
/// future is copied once, into its box; the context's combinators and the
/// front's own box then move a pointer, where each had copied the whole
/// future (three copies, about 1,700 instructions per request).
fn chat(
    gateway: Arc<Gateway>,
    context: RequestContext,
    request: Request,
    dialect: Dialect,
) -> impl Future<Output = Result<Response, Infallible>> + use<> {
    let id = context.request_id.clone();
    let span = context.span.clone();
    // The box is allocated before the future is made, which lets the
    // optimiser make the future in it (release builds do; debug builds
    // still copy): `Box::pin(future)` made it on the stack and copied all
    // of it (its full size, about 5 KiB, though only its arguments are set
    // at first) into the box.
    let chat = Box::into_pin(Box::write(
        Box::new_uninit(),
        handlers::chat_request(gateway, context, request, dialect),
    ));
    RequestContext::around(id, span, chat).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::tests::future_size4 as future_size;

    #[test]
    fn the_box_per_chat_request_holds_the_handlers_future_by_pointer() {
        // The context's span, ids and header step take a few hundred bytes;
        // the handler's future (about 5 KiB) inline would be moved, whole,
        // by each combinator and into the front's box.
        let boxed = future_size(chat);
        let handler = future_size(handlers::chat_request);
        assert!(
            boxed < 512 && handler > 2048,
            "the front boxes {boxed} bytes for a handler future of {handler}"
        );
    }

    #[test]
    fn only_posts_to_the_chat_paths_take_the_short_way() {
        for (path, dialect) in [
            ("/v1/chat/completions", Dialect::OpenAi),
            ("/chat/completions", Dialect::OpenAi),
            ("/v1/messages", Dialect::Anthropic),
            ("/messages", Dialect::Anthropic),
        ] {
            assert_eq!(chat_dialect(&Method::POST, path), Some(dialect), "{path}");
            assert_eq!(chat_dialect(&Method::GET, path), None, "GET {path}");
        }
        for path in [
            "/v1/chat/completions/",
            "/v1/embeddings",
            "/v1/models",
            "/admin/keys",
            "/v1/messages/count_tokens",
            "/V1/chat/completions",
        ] {
            assert_eq!(chat_dialect(&Method::POST, path), None, "{path}");
        }
    }
}
