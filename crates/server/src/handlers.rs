//! The endpoints: OpenAI's chat completions, embeddings and models, and the
//! health probes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use switchboard_core::{Endpoint, Outcome};
use switchboard_dialects::openai::{ChatRequest, EmbeddingsRequest, RequestError};
use switchboard_providers::{Deployment, Reply};

use crate::body::read_json_body;
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::state::Gateway;
use crate::stream::sse_response;
use crate::trace::Trace;

pub(crate) const DEPLOYMENT_HEADER: &str = "x-switchboard-deployment";

pub(crate) async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut trace = Trace::new(
        context,
        Endpoint::ChatCompletions,
        gateway.recorder.clone(),
        gateway.cut.clone(),
    );
    let bytes = match read_json_body(&headers, body, gateway.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(error) => return reject(&mut trace, error),
    };
    let request = match ChatRequest::parse(&bytes) {
        Ok(request) => request,
        Err(error) => return reject(&mut trace, ApiError::invalid_request(error)),
    };
    trace.model.clone_from(&request.model);
    trace.stream = request.stream;
    let deployment = match pick(&gateway, &request.model) {
        Ok(deployment) => deployment,
        Err(error) => return reject(&mut trace, error),
    };
    trace.deployment = Some(deployment.name().clone());

    let reply = tokio::select! {
        reply = deployment.chat(&request) => reply,
        () = gateway.cut.cancelled() => return reject(&mut trace, ApiError::shutting_down()),
    };
    match reply {
        Ok(Reply::Complete { body, usage }) => {
            trace.usage = usage;
            trace.finish(200, Outcome::Success, None);
            json_response(body, Some(deployment.name()))
        }
        Ok(Reply::Stream(events)) => {
            sse_response(events, trace, gateway.cut.clone(), deployment.name())
        }
        Err(error) => reject(
            &mut trace,
            ApiError::from_upstream(&error, deployment.name()),
        ),
    }
}

pub(crate) async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut trace = Trace::new(
        context,
        Endpoint::Embeddings,
        gateway.recorder.clone(),
        gateway.cut.clone(),
    );
    let bytes = match read_json_body(&headers, body, gateway.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(error) => return reject(&mut trace, error),
    };
    let request = match EmbeddingsRequest::parse(&bytes) {
        Ok(request) => request,
        Err(error) => return reject(&mut trace, ApiError::invalid_request(error)),
    };
    trace.model.clone_from(&request.model);
    let deployment = match pick(&gateway, &request.model) {
        Ok(deployment) => deployment,
        Err(error) => return reject(&mut trace, error),
    };
    trace.deployment = Some(deployment.name().clone());
    let reply = tokio::select! {
        reply = deployment.embeddings(&request) => reply,
        () = gateway.cut.cancelled() => return reject(&mut trace, ApiError::shutting_down()),
    };
    match reply {
        Ok((body, usage)) => {
            trace.usage = usage;
            trace.finish(200, Outcome::Success, None);
            json_response(body, Some(deployment.name()))
        }
        Err(error) => reject(
            &mut trace,
            ApiError::from_upstream(&error, deployment.name()),
        ),
    }
}

fn pick(gateway: &Gateway, model: &str) -> Result<Arc<Deployment>, ApiError> {
    gateway
        .models
        .get(model)
        .map(|group| group.pick().clone())
        .ok_or_else(|| ApiError::model_not_found(model))
}

/// Records the failure and renders it.
fn reject(trace: &mut Trace, error: ApiError) -> Response {
    trace.finish(error.status.as_u16(), error.outcome(), Some(error.code));
    error.into_response()
}

fn json_response(body: Bytes, deployment: Option<&Arc<str>>) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(value) = deployment.and_then(|name| HeaderValue::from_str(name).ok()) {
        headers.insert(DEPLOYMENT_HEADER, value);
    }
    response
}

pub(crate) async fn list_models(State(gateway): State<Arc<Gateway>>) -> Response {
    json_response(gateway.model_list.clone(), None)
}

pub(crate) async fn retrieve_model(
    State(gateway): State<Arc<Gateway>>,
    model: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(model)) = model else {
        return ApiError::invalid_request(RequestError {
            message: "the model id in the URL is not valid percent-encoded UTF-8".to_owned(),
            param: Some("model".to_owned()),
        })
        .into_response();
    };
    match gateway.model_objects.get(&model) {
        Some(object) => json_response(object.clone(), None),
        None => ApiError::model_not_found(&model).into_response(),
    }
}

pub(crate) async fn live() -> Response {
    json_response(Bytes::from_static(b"{\"status\":\"ok\"}"), None)
}

/// Ready when the store answers and the gateway is not draining.
pub(crate) async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    if gateway.draining.load(Ordering::Relaxed) {
        return unavailable("draining");
    }
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), gateway.store.ping()).await;
    match ping {
        Ok(Ok(())) => json_response(Bytes::from_static(b"{\"status\":\"ready\"}"), None),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: the store does not answer");
            unavailable("store unavailable")
        }
        Err(_) => unavailable("store timed out"),
    }
}

fn unavailable(reason: &str) -> Response {
    let body = serde_json::json!({"status": "unavailable", "reason": reason}).to_string();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
