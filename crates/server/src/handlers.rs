//! The endpoints: OpenAI's chat completions, embeddings and models,
//! Anthropic's messages, and the health probes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::time::{Duration, Instant};
use switchboard_core::{Endpoint, Outcome};
use switchboard_dialects::anthropic::MessagesRequest;
use switchboard_dialects::openai::{ChatRequest, EmbeddingsRequest, RequestError};

use switchboard_providers::{CallOptions, ChatCall, ClientRequest, Dialect, Reply};
use switchboard_store::watch::on_request_path;

use crate::access::{self, Admission, Demand, Hold};
use crate::body::read_json_body;
use crate::cache::{CACHE_HEADER, CACHE_LINE, CacheFill, CachePlan};
use crate::context::{Principal, RequestContext, principal_of};
use crate::dispatch::{Answered, ConversationPrefix, Route, Unanswered, dispatch, hold_opening};
use crate::error::ApiError;
use crate::head_lines::{HeadLines, LineStart};
use crate::state::{Catalog, Gateway};
use crate::stream::sse_response;
use crate::trace::{BodyCapture, Trace};

/// The line naming the deployment that answered.
const DEPLOYMENT_LINE: LineStart = LineStart::new("x-switchboard-deployment: ");

/// `POST /v1/chat/completions` as a route of the router. The front
/// (`front.rs`) serves every POST to the chat paths itself, so this route
/// is there for the router's method matching (other methods get 405), and
/// serves the same way should a chat request ever reach the router.
pub(crate) async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    Extension(context): Extension<RequestContext>,
    request: axum::extract::Request,
) -> Response {
    // Boxed once here: the whole request's future is large, and the
    // router would otherwise move (copy) it as it wraps it.
    Box::pin(chat_request(gateway, context, request, Dialect::OpenAi)).await
}

/// `POST /v1/messages`: Anthropic's Messages API, served by any model.
pub(crate) async fn messages(
    State(gateway): State<Arc<Gateway>>,
    Extension(context): Extension<RequestContext>,
    request: axum::extract::Request,
) -> Response {
    Box::pin(chat_request(gateway, context, request, Dialect::Anthropic)).await
}

/// A chat request in either dialect, before authentication (which it
/// does itself, so that the front can call it without the router's
/// middleware and extractors, which clone the header map).
pub(crate) async fn chat_request(
    gateway: Arc<Gateway>,
    context: RequestContext,
    request: axum::extract::Request,
    dialect: Dialect,
) -> Response {
    let (parts, body) = request.into_parts();
    let principal = match principal_of(&gateway, &parts.headers, parts.uri.path()) {
        Ok(principal) => principal,
        Err(refusal) => return refusal,
    };
    on_request_path(chat(
        gateway,
        context,
        principal,
        parts.headers,
        body,
        dialect,
    ))
    .await
}

/// A chat request in either dialect: parsed in the client's dialect,
/// dispatched, and answered in the same dialect whatever the deployment
/// that serves it speaks.
async fn chat(
    gateway: Arc<Gateway>,
    context: RequestContext,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
    dialect: Dialect,
) -> Response {
    let endpoint = match dialect {
        Dialect::OpenAi => Endpoint::ChatCompletions,
        Dialect::Anthropic => Endpoint::Messages,
    };
    let options = switchboard_options(&headers);
    let (mut trace, catalog, bytes) = match begin(
        &gateway, context, endpoint, &headers, options, body, dialect,
    )
    .await
    {
        Ok(begun) => begun,
        Err(response) => return response,
    };
    let openai_request;
    let anthropic_request;
    let request = match dialect {
        Dialect::OpenAi => match ChatRequest::parse(&bytes) {
            Ok(request) => {
                openai_request = request;
                ClientRequest::OpenAi(&openai_request)
            }
            Err(error) => return reject(&mut trace, ApiError::invalid_request(error), dialect),
        },
        Dialect::Anthropic => match MessagesRequest::parse(&bytes) {
            Ok(request) => {
                anthropic_request = request;
                ClientRequest::Anthropic(&anthropic_request)
            }
            Err(error) => return reject(&mut trace, ApiError::invalid_request(error), dialect),
        },
    };
    let model = request.model();
    trace.model = model.to_owned();
    trace.model_known = catalog.chains.contains_key(model);
    let Plan {
        chain,
        deadline,
        tags,
    } = match plan(&catalog, model, options) {
        Ok(plan) => plan,
        Err(error) => return reject(&mut trace, error, dialect),
    };
    keep_bodies(&mut trace, &catalog, &chain[0], &principal, &bytes);
    let overrides = match TimeoutOverrides::read(options) {
        Ok(overrides) => overrides,
        Err(error) => return reject(&mut trace, error, dialect),
    };
    let first_token_timeout = overrides
        .first_token
        .or(chain[0].routing.first_token_timeout);
    let end_user = end_user_of(&request);
    trace.temperature = temperature_of(&request);
    let max_output_tokens = max_output_of(&request);
    trace.max_tokens = max_output_tokens;
    let demand = Demand {
        model,
        end_user,
        prompt_tokens: bytes.len() as u64,
        max_output_tokens,
        choices: choices_of(&request),
        worst_case_cost: &|prompt, output| worst_case_cost(chain, prompt, output),
    };
    let admission = match admit(&gateway, &principal, &mut trace, demand).await {
        Ok(admission) => admission,
        Err(error) => return reject(&mut trace, error, dialect),
    };
    let mut call = ChatCall::new(
        request,
        CallOptions {
            stream_idle: overrides.stream_idle,
            connect: overrides.connect,
        },
    );
    if dialect == Dialect::Anthropic {
        call.anthropic_beta = headers.get("anthropic-beta").cloned();
    }
    trace.stream = call.stream();
    let cache_plan = match plan_cache(&gateway, endpoint, &bytes, &headers, &trace, chain) {
        Ok(plan) => plan,
        Err(error) => return reject(&mut trace, error, dialect),
    };
    match cached_answer(&gateway, cache_plan.as_ref(), &mut trace, &admission).await {
        Ok(Some(response)) => return response,
        Ok(None) => {}
        Err(error) => return reject(&mut trace, error, dialect),
    }
    let progress = trace.progress.clone();
    let progress = &*progress;
    let span = trace.span.clone();
    let prefix = if chain
        .iter()
        .any(|route| route.routing.prompt_cache_affinity)
    {
        ConversationPrefix::of(request.fields().raw("messages"))
    } else {
        None
    };
    // Pinned where it is made: moved into a `select!`, the dispatch's
    // future would take its room in this future twice. The block drops it
    // (an attempt cut by the shutdown notes its span as it goes) before
    // the request is recorded.
    let answer = {
        let mut answer = std::pin::pin!(dispatch(
            chain,
            deadline,
            &tags,
            prefix.as_ref(),
            progress,
            &admission,
            |deployment| {
                let call = &call;
                // A whole answer the model refused (a content filter's finish)
                // moves on to the fallbacks when `fallback_on` names
                // `content_policy` and a fallback is left to try.
                let refusal_falls_back = chain[0].routing.fallback_on.content_policy
                    && chain.len() > 1
                    && !chain[chain.len() - 1]
                        .group
                        .members()
                        .iter()
                        .any(|member| Arc::ptr_eq(&member.target, &deployment));
                let span = span.clone();
                async move {
                    let answer = match &span {
                        Some((telemetry, ids)) => {
                            telemetry
                                .attempt(ids, progress, &deployment, deployment.chat(call))
                                .await
                        }
                        None => deployment.chat(call).await,
                    };
                    match answer? {
                        Reply::Stream { events, dropped } => {
                            hold_opening(events, first_token_timeout)
                                .await
                                .map(|events| Reply::Stream { events, dropped })
                        }
                        Reply::Complete { body, .. }
                            if refusal_falls_back && refused(&body, dialect) =>
                        {
                            Err(switchboard_providers::UpstreamError::InStream {
                                body: switchboard_dialects::openai::UpstreamErrorBody {
                                    message: Some(
                                        "the model refused to answer (content filter)".to_owned(),
                                    ),
                                    kind: Some("content_filter".to_owned()),
                                    param: None,
                                    code: Some("content_filter".to_owned()),
                                },
                            })
                        }
                        complete => Ok(complete),
                    }
                }
            },
        ));
        let mut cut = std::pin::pin!(gateway.cut.cancelled());
        std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = answer.as_mut().poll(cx) {
                return Poll::Ready(Some(answer));
            }
            cut.as_mut().poll(cx).map(|()| None)
        })
        .await
    };
    let Some(answer) = answer else {
        return reject(&mut trace, ApiError::shutting_down(), dialect);
    };
    let mut answered = match answer {
        Ok(answered) => answered,
        Err(unanswered) => return reject_unanswered(&mut trace, unanswered, dialect),
    };
    note_route(&mut trace, &mut answered, admission.shared());
    let mut headers = route_headers(&answered, model);
    admission.add_headers(&mut headers);
    dropped_header(&mut headers, answered.value.dropped());
    let Answered {
        value,
        deployment,
        in_flight,
        ..
    } = answered;
    if let Some(plan) = &cache_plan {
        headers.push(CACHE_LINE, b"miss");
        trace.cache = Some(false);
        if let (Some(cache), Reply::Stream { .. }) = (&gateway.cache, &value) {
            trace.cache_fill = CacheFill::new(cache, plan);
        }
    }
    match value {
        Reply::Complete {
            body, usage, info, ..
        } => {
            if let Some(bodies) = &mut trace.bodies {
                bodies.push_response(&body);
            }
            trace.usage = usage;
            trace.response = info;
            cost_header(&mut headers, &trace);
            trace.finish(200, Outcome::Success, None);
            if let (Some(cache), Some(plan)) = (&gateway.cache, &cache_plan) {
                cache.store(plan, body.clone());
            }
            with_headers(json_response(body), headers)
        }
        Reply::Stream { events, .. } => {
            // A stream stays in flight on its deployment until it ends.
            trace.in_flight = Some(in_flight);
            with_headers(
                sse_response(
                    events,
                    dialect,
                    trace,
                    gateway.cut.clone(),
                    deployment.name(),
                    deadline,
                ),
                headers,
            )
        }
    }
}

/// Starts gathering the request's bodies for the log when its model, its
/// key or its key's team asks for them.
fn keep_bodies(
    trace: &mut Trace,
    catalog: &Catalog,
    route: &Route,
    principal: &Principal,
    request: &Bytes,
) {
    let by_key = match principal {
        Principal::Key(entry) => {
            entry.record.limits.log_bodies
                || entry
                    .team
                    .as_ref()
                    .is_some_and(|team| team.limits.log_bodies)
        }
        Principal::Master | Principal::Open => false,
    };
    // Without a request log there is nowhere to keep them.
    if catalog.record_requests && (route.log_bodies || by_key) {
        trace.bodies = Some(BodyCapture::new(catalog.redactor.clone(), request.clone()));
    }
}

/// What the response cache does for this request (`None`: nothing).
fn plan_cache(
    gateway: &Gateway,
    endpoint: Endpoint,
    body: &[u8],
    headers: &HeaderMap,
    trace: &Trace,
    chain: &[Arc<Route>],
) -> Result<Option<CachePlan>, ApiError> {
    let Some(cache) = &gateway.cache else {
        return Ok(None);
    };
    let answers = chain.iter().map(|route| route.answers);
    cache.plan(endpoint, body, headers, &trace.caller, answers)
}

/// The cached answer to the request, when there is one: the exact bytes a
/// client got before (a JSON body or a whole stream), at no cost.
/// A hit still counts against the key's limits (reserved here when a
/// shared limiter would have reserved them with the first deployment).
async fn cached_answer(
    gateway: &Gateway,
    plan: Option<&CachePlan>,
    trace: &mut Trace,
    admission: &Admission,
) -> Result<Option<Response>, ApiError> {
    let (Some(cache), Some(plan)) = (gateway.cache.as_ref(), plan) else {
        return Ok(None);
    };
    if !plan.lookup {
        return Ok(None);
    }
    let Some(answer) = cache.store.get(plan.key).await else {
        return Ok(None);
    };
    admission.reserve_keys().await?;
    trace.cache = Some(true);
    if let Some(bodies) = &mut trace.bodies {
        bodies.push_response(&answer);
    }
    trace.finish(200, Outcome::Success, None);
    let mut response = Response::new(Body::from(answer));
    let response_headers = response.headers_mut();
    if trace.stream {
        response_headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        response_headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    response_headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    response_headers.insert(COST_HEADER, HeaderValue::from_static("0.000000000"));
    let mut limits = HeadLines::new();
    admission.add_headers(&mut limits);
    limits.attach(&mut response);
    Ok(Some(response))
}

/// Notes who is calling and prepares the reservation of the request's
/// limits, keeping it in the trace (which settles it). Without a shared
/// limiter the key's limits are reserved here; with one, together with
/// the first deployment the dispatcher chooses.
async fn admit(
    gateway: &Gateway,
    principal: &Principal,
    trace: &mut Trace,
    demand: Demand<'_>,
) -> Result<Arc<Admission>, ApiError> {
    trace.caller = access::caller(principal, demand.end_user.clone());
    let admission = access::admit(principal, &gateway.limiter, demand)?;
    trace.admission = Some(admission.clone());
    if !admission.shared() {
        admission.reserve_keys().await?;
    }
    Ok(admission)
}

/// The most a request to this chain can cost: the dearest deployment of
/// every model it may fall back to. Deployments without a known price
/// count as free; a budgeted key is refused on a chain with no price at
/// all (`access::admit`).
fn worst_case_cost(chain: &[Arc<Route>], prompt: u64, output: u64) -> u64 {
    chain
        .iter()
        .flat_map(|route| route.rates.iter().flatten())
        .map(|rates| switchboard_core::cost::worst_case_cost(prompt, output, rates))
        .max()
        .unwrap_or(0)
}

/// The end user a request names: OpenAI's `user`, Anthropic's
/// `metadata.user_id`.
fn end_user_of(request: &ClientRequest<'_>) -> Option<String> {
    let fields = request.fields();
    let user = match request {
        ClientRequest::OpenAi(_) => fields.get::<String>("user", "a string").ok().flatten(),
        ClientRequest::Anthropic(_) => fields
            .get::<serde_json::Value>("metadata", "an object")
            .ok()
            .flatten()
            .and_then(|metadata| metadata.get("user_id")?.as_str().map(str::to_owned)),
    };
    user.filter(|user| !user.is_empty() && user.len() <= 256)
}

/// The most the request says it may generate.
fn max_output_of(request: &ClientRequest<'_>) -> Option<u64> {
    match request {
        ClientRequest::OpenAi(request) => request.max_tokens.map(u64::from),
        ClientRequest::Anthropic(request) => request.max_tokens.map(u64::from),
    }
}

/// The sampling temperature asked for, as parsed (OpenAI) or read.
fn temperature_of(request: &ClientRequest<'_>) -> Option<f64> {
    match request {
        ClientRequest::OpenAi(request) => request.temperature,
        ClientRequest::Anthropic(request) => request
            .fields
            .get::<f64>("temperature", "a number")
            .ok()
            .flatten(),
    }
}

/// How many answers the request asks for (OpenAI's `n`; Anthropic has one).
fn choices_of(request: &ClientRequest<'_>) -> u64 {
    match request {
        ClientRequest::OpenAi(request) => request.choices.map_or(1, u64::from),
        ClientRequest::Anthropic(_) => 1,
    }
}

/// Whether a whole answer, in the client's dialect, is a refusal: OpenAI's
/// `content_filter` finish or `refusal` message, Anthropic's `refusal`
/// stop reason.
fn refused(body: &[u8], dialect: Dialect) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    match dialect {
        Dialect::OpenAi => {
            let choice = &value["choices"][0];
            choice["finish_reason"] == "content_filter"
                || choice["message"]["refusal"]
                    .as_str()
                    .is_some_and(|text| !text.is_empty())
        }
        Dialect::Anthropic => value["stop_reason"] == "refusal",
    }
}

/// Header giving a whole answer's cost in USD, when its price is known.
/// (A stream's cost is known only at its end: it is in the record.)
pub(crate) const COST_HEADER: HeaderName = HeaderName::from_static("x-switchboard-cost");
pub(crate) const COST_LINE: LineStart = LineStart::new("x-switchboard-cost: ");

fn cost_header(headers: &mut HeadLines, trace: &Trace) {
    if let Some(pricing) = &trace.pricing {
        headers.push(COST_LINE, nine_decimals(pricing(&trace.usage)).as_bytes());
    }
}

/// Nano-dollars as dollars with nine decimals (`0.000021000`), written
/// without `format!`, which was 1% of a proxied request's instructions.
fn nine_decimals(nanos: u64) -> NineDecimals {
    let mut buffer = itoa::Buffer::new();
    let mut text = NineDecimals {
        bytes: [b'0'; 32],
        len: 0,
    };
    let whole = buffer.format(nanos / 1_000_000_000).as_bytes();
    let point = whole.len();
    text.bytes[..point].copy_from_slice(whole);
    text.bytes[point] = b'.';
    let fraction = buffer.format(nanos % 1_000_000_000).as_bytes();
    // The fraction's leading zeros are the buffer's own.
    let end = point + 1 + 9;
    text.bytes[end - fraction.len()..end].copy_from_slice(fraction);
    text.len = end;
    text
}

/// A cost's text: at most 20 digits, a point and nine decimals.
struct NineDecimals {
    bytes: [u8; 32],
    len: usize,
}

impl NineDecimals {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Header naming the parameters a deployment could not honour and left
/// out, under its `unsupported_params = "drop"` policy.
const DROPPED_PARAMS_LINE: LineStart = LineStart::new("x-switchboard-dropped-params: ");

fn dropped_header(headers: &mut HeadLines, dropped: &[String]) {
    if dropped.is_empty() {
        return;
    }
    let text: String = dropped
        .join(", ")
        .chars()
        .map(|character| {
            if character.is_ascii_graphic() || character == ' ' {
                character
            } else {
                '?'
            }
        })
        .take(2000)
        .collect();
    headers.push(DROPPED_PARAMS_LINE, text.as_bytes());
}

pub(crate) async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    Extension(context): Extension<RequestContext>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    Box::pin(on_request_path(embed(
        gateway, context, principal, headers, body,
    )))
    .await
}

async fn embed(
    gateway: Arc<Gateway>,
    context: RequestContext,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let options = switchboard_options(&headers);
    let (mut trace, catalog, bytes) = match begin(
        &gateway,
        context,
        Endpoint::Embeddings,
        &headers,
        options,
        body,
        Dialect::OpenAi,
    )
    .await
    {
        Ok(begun) => begun,
        Err(response) => return response,
    };
    let request = match EmbeddingsRequest::parse(&bytes) {
        Ok(request) => request,
        Err(error) => {
            return reject(
                &mut trace,
                ApiError::invalid_request(error),
                Dialect::OpenAi,
            );
        }
    };
    trace.model.clone_from(&request.model);
    trace.model_known = catalog.chains.contains_key(&request.model);
    let Plan {
        chain,
        deadline,
        tags,
    } = match plan(&catalog, &request.model, options) {
        Ok(plan) => plan,
        Err(error) => return reject(&mut trace, error, Dialect::OpenAi),
    };
    keep_bodies(&mut trace, &catalog, &chain[0], &principal, &bytes);
    let end_user = request
        .fields
        .get::<String>("user", "a string")
        .ok()
        .flatten();
    let demand = Demand {
        model: &request.model,
        end_user,
        prompt_tokens: bytes.len() as u64,
        max_output_tokens: Some(0),
        choices: 1,
        worst_case_cost: &|prompt, output| worst_case_cost(chain, prompt, output),
    };
    let admission = match admit(&gateway, &principal, &mut trace, demand).await {
        Ok(admission) => admission,
        Err(error) => return reject(&mut trace, error, Dialect::OpenAi),
    };
    let call_options = match TimeoutOverrides::read(options) {
        Ok(overrides) => CallOptions {
            stream_idle: None,
            connect: overrides.connect,
        },
        Err(error) => return reject(&mut trace, error, Dialect::OpenAi),
    };
    let cache_plan = match plan_cache(
        &gateway,
        Endpoint::Embeddings,
        &bytes,
        &headers,
        &trace,
        chain,
    ) {
        Ok(plan) => plan,
        Err(error) => return reject(&mut trace, error, Dialect::OpenAi),
    };
    match cached_answer(&gateway, cache_plan.as_ref(), &mut trace, &admission).await {
        Ok(Some(response)) => return response,
        Ok(None) => {}
        Err(error) => return reject(&mut trace, error, Dialect::OpenAi),
    }
    let progress = trace.progress.clone();
    let span = trace.span.clone();
    let answer = dispatch(
        chain,
        deadline,
        &tags,
        None,
        &progress,
        &admission,
        |deployment| {
            let request = &request;
            let options = &call_options;
            let (span, progress) = (span.clone(), &*progress);
            async move {
                match &span {
                    Some((telemetry, ids)) => {
                        telemetry
                            .attempt(
                                ids,
                                progress,
                                &deployment,
                                deployment.embeddings(request, options),
                            )
                            .await
                    }
                    None => deployment.embeddings(request, options).await,
                }
            }
        },
    );
    let answer = tokio::select! {
        answer = answer => answer,
        () = gateway.cut.cancelled() => return reject(&mut trace, ApiError::shutting_down(), Dialect::OpenAi),
    };
    match answer {
        Ok(mut answered) => {
            note_route(&mut trace, &mut answered, admission.shared());
            let mut headers = route_headers(&answered, &request.model);
            admission.add_headers(&mut headers);
            let (body, usage) = answered.value;
            if let Some(bodies) = &mut trace.bodies {
                bodies.push_response(&body);
            }
            trace.usage = usage;
            cost_header(&mut headers, &trace);
            if let (Some(cache), Some(plan)) = (&gateway.cache, &cache_plan) {
                headers.push(CACHE_LINE, b"miss");
                trace.cache = Some(false);
                cache.store(plan, body.clone());
            }
            trace.finish(200, Outcome::Success, None);
            with_headers(json_response(body), headers)
        }
        Err(unanswered) => reject_unanswered(&mut trace, unanswered, Dialect::OpenAi),
    }
}

/// What every model endpoint does first: start the request's trace (with
/// the metadata `options`, the request's `switchboard_options`, carry), take
/// the current catalog, and read the JSON body within its limit. The trace
/// is boxed, so handing it back through the `Result` moves a pointer.
async fn begin(
    gateway: &Gateway,
    context: RequestContext,
    endpoint: Endpoint,
    headers: &HeaderMap,
    options: &HeaderMap,
    body: Body,
    dialect: Dialect,
) -> Result<(Box<Trace>, Arc<Catalog>, Bytes), Response> {
    let span = gateway.telemetry.as_ref().map(|telemetry| {
        let ids = telemetry.begin(headers);
        let _ = context.span.set(ids.clone());
        (telemetry.clone(), ids)
    });
    let catalog = gateway.catalog();
    let mut trace = Trace::new(
        context,
        endpoint,
        catalog.record_requests.then(|| gateway.recorder.clone()),
        gateway.metrics.clone(),
        gateway.cut.clone(),
    );
    trace.span = span;
    match request_metadata(options) {
        Ok(metadata) => trace.metadata = metadata,
        Err(error) => return Err(reject(&mut trace, error, dialect)),
    }
    match read_json_body(headers, body, catalog.max_body_bytes).await {
        Ok(bytes) => Ok((trace, catalog, bytes)),
        Err(error) => Err(reject(&mut trace, error, dialect)),
    }
}

/// The request's headers when one of them is an `x-switchboard-` option,
/// else an empty map. Few requests carry options, and each reader of one
/// (the timeouts, tags, metadata) would otherwise hash its name and probe
/// the request's map for nothing, about 2% of a request's instructions;
/// one pass over the names, comparing their start, settles it for them all.
fn switchboard_options(headers: &HeaderMap) -> &HeaderMap {
    static NO_OPTIONS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
    if headers
        .keys()
        .any(|name| name.as_str().starts_with("x-switchboard-"))
    {
        headers
    } else {
        &NO_OPTIONS
    }
}

/// Header carrying metadata for the request's record: a JSON object of
/// strings (at most 16 members, names up to 64 bytes, values up to 256).
pub(crate) const METADATA_HEADER: HeaderName = HeaderName::from_static("x-switchboard-metadata");

/// The request's metadata as canonical JSON (members sorted), or a 400
/// saying what is wrong with the header.
fn request_metadata(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(METADATA_HEADER) else {
        return Ok(None);
    };
    const EXPECTED: &str =
        "a JSON object of at most 16 string values (names up to 64 bytes, values up to 256)";
    let bad = || ApiError::bad_header(METADATA_HEADER.as_str(), EXPECTED);
    let text = value.to_str().map_err(|_| bad())?;
    let members: std::collections::BTreeMap<String, String> =
        serde_json::from_str(text).map_err(|_| bad())?;
    if members.len() > 16
        || members
            .iter()
            .any(|(name, value)| name.is_empty() || name.len() > 64 || value.len() > 256)
    {
        return Err(bad());
    }
    if members.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(&members).map(Some).map_err(|_| bad())
}

/// Header that sets the request's whole time budget, in seconds,
/// overriding the model's `routing.timeout_secs`.
pub(crate) const TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-switchboard-timeout");
/// Headers overriding the first-token, stream-idle and connect limits, in
/// seconds.
pub(crate) const FIRST_TOKEN_TIMEOUT_HEADER: HeaderName =
    HeaderName::from_static("x-switchboard-first-token-timeout");
pub(crate) const STREAM_IDLE_TIMEOUT_HEADER: HeaderName =
    HeaderName::from_static("x-switchboard-stream-idle-timeout");
pub(crate) const CONNECT_TIMEOUT_HEADER: HeaderName =
    HeaderName::from_static("x-switchboard-connect-timeout");

/// Per-request timeout overrides read from headers.
struct TimeoutOverrides {
    first_token: Option<Duration>,
    stream_idle: Option<Duration>,
    connect: Option<Duration>,
}

impl TimeoutOverrides {
    fn read(headers: &HeaderMap) -> Result<TimeoutOverrides, ApiError> {
        Ok(TimeoutOverrides {
            first_token: seconds_header(headers, FIRST_TOKEN_TIMEOUT_HEADER)?,
            stream_idle: seconds_header(headers, STREAM_IDLE_TIMEOUT_HEADER)?,
            connect: seconds_header(headers, CONNECT_TIMEOUT_HEADER)?,
        })
    }
}

/// A header holding a number of seconds, if present.
fn seconds_header(headers: &HeaderMap, name: HeaderName) -> Result<Option<Duration>, ApiError> {
    let Some(value) = headers.get(&name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0 && *seconds <= 86_400.0)
        .map(|seconds| Some(Duration::from_secs_f64(seconds)))
        .ok_or_else(|| {
            ApiError::bad_header(name.as_str(), "a number of seconds between 0 and 86400")
        })
}
const ATTEMPTS_LINE: LineStart = LineStart::new("x-switchboard-attempts: ");
/// The line naming the model that answered, when not the one asked for.
const SERVED_MODEL_LINE: LineStart = LineStart::new("x-switchboard-model: ");

/// How a request will be routed: its model's chain of routes (borrowed
/// from the catalog the request holds), its deadline and required tags.
struct Plan<'a> {
    chain: &'a [Arc<Route>],
    deadline: Option<Instant>,
    tags: Vec<String>,
}

fn plan<'a>(catalog: &'a Catalog, model: &str, headers: &HeaderMap) -> Result<Plan<'a>, ApiError> {
    let chain = catalog
        .chains
        .get(model)
        .ok_or_else(|| ApiError::model_not_found(model))?;
    let tags = requested_tags(headers);
    if !tags.is_empty()
        && !chain.iter().any(|route| {
            route
                .group
                .members()
                .iter()
                .any(|member| tags.iter().all(|tag| member.tags.contains(tag)))
        })
    {
        return Err(ApiError::no_matching_deployment(model, &tags));
    }
    let budget = seconds_header(headers, TIMEOUT_HEADER)?.or(chain[0].routing.timeout);
    Ok(Plan {
        chain,
        deadline: budget.map(|budget| Instant::now() + budget),
        tags,
    })
}

/// Header naming tags (comma-separated) that the serving deployment must carry.
pub(crate) const TAGS_HEADER: HeaderName = HeaderName::from_static("x-switchboard-tags");

fn requested_tags(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(TAGS_HEADER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Notes the answering route in the trace, with what it settles for the
/// deployment: its hold on the shared capacity, or (counted here) its
/// per-minute tokens.
fn note_route<T>(trace: &mut Trace, answered: &mut Answered<T>, shared: bool) {
    if let Some(rates) = answered.route.rates.get(answered.member).copied().flatten() {
        trace.pricing = Some(Arc::new(move |usage: &switchboard_core::Usage| {
            switchboard_core::cost::request_cost(usage, usage.cache_write_tokens, &rates)
        }));
    }
    trace.hold = Some(std::mem::replace(&mut answered.hold, Hold::none()));
    if !shared {
        trace.capacity = Some((answered.route.clone(), answered.member));
    }
    trace.deployment = Some(answered.deployment.name().clone());
    trace.attempts = answered.attempts;
    if *answered.model != *trace.model {
        trace.served_model = Some(answered.model.clone());
    }
}

/// Headers that explain the route taken.
fn route_headers<T>(answered: &Answered<T>, requested: &str) -> HeadLines {
    let mut headers = HeadLines::new();
    headers.push(DEPLOYMENT_LINE, answered.deployment.name().as_bytes());
    headers.push_counted(ATTEMPTS_LINE, u64::from(answered.attempts), b"");
    if *answered.model != *requested {
        headers.push(SERVED_MODEL_LINE, answered.model.as_bytes());
    }
    headers
}

fn with_headers(mut response: Response, headers: HeadLines) -> Response {
    headers.attach(&mut response);
    response
}

fn reject_unanswered(trace: &mut Trace, unanswered: Unanswered, dialect: Dialect) -> Response {
    if unanswered.refused_by_limits {
        return reject(trace, unanswered.error, dialect);
    }
    trace.attempts = unanswered.attempts;
    trace.deployment = unanswered
        .deployment
        .as_ref()
        .map(|deployment| deployment.name().clone());
    let mut headers = HeadLines::new();
    headers.push_counted(ATTEMPTS_LINE, u64::from(unanswered.attempts), b"");
    with_headers(reject(trace, unanswered.error, dialect), headers)
}

/// Records the failure and renders it in the client's dialect.
fn reject(trace: &mut Trace, error: ApiError, dialect: Dialect) -> Response {
    trace.finish(error.status.as_u16(), error.outcome(), Some(error.code));
    error.render(dialect)
}

fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET /metrics`: the Prometheus text exposition.
pub(crate) async fn metrics(State(gateway): State<Arc<Gateway>>, uri: axum::http::Uri) -> Response {
    let catalog = gateway.catalog();
    if !catalog.metrics_enabled {
        return ApiError::not_found_path(uri.path()).into_response();
    }
    let spans_dropped = gateway
        .telemetry
        .as_ref()
        .map(|telemetry| telemetry.dropped.load(Ordering::Relaxed));
    let text = gateway.metrics.render(
        &catalog,
        &gateway.recorder,
        gateway.store.writer_lanes(),
        spans_dropped,
    );
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

pub(crate) async fn list_models(State(gateway): State<Arc<Gateway>>) -> Response {
    json_response(gateway.catalog().model_list.clone())
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
    match gateway.catalog().model_objects.get(&model) {
        Some(object) => json_response(object.clone()),
        None => ApiError::model_not_found(&model).into_response(),
    }
}

/// `GET /health/deployments`: every deployment's circuit and load, from
/// live traffic.
pub(crate) async fn deployment_health(
    State(gateway): State<Arc<Gateway>>,
    Extension(principal): Extension<Principal>,
) -> Response {
    // Deployments, their providers and their load are the operator's to see.
    if matches!(principal, Principal::Key(_)) {
        return ApiError::admin_only().into_response();
    }
    let now = Instant::now();
    let models: Vec<serde_json::Value> = gateway
        .catalog()
        .routes
        .iter()
        .map(|route| {
            let deployments: Vec<serde_json::Value> = route
                .group
                .members()
                .iter()
                .map(|member| {
                    let health = member.health.snapshot(now);
                    serde_json::json!({
                        "name": member.target.name().as_ref(),
                        "provider": member.target.kind().name(),
                        "upstream_model": member.target.upstream_model(),
                        "weight": member.weight,
                        "state": health.state,
                        "consecutive_failures": health.consecutive_failures,
                        "retry_in_ms": health.retry_in.map(|wait| wait.as_millis() as u64),
                        "in_flight": health.in_flight,
                        "requests": health.requests,
                        "failures": health.failures,
                        "latency_ms": health.latency.map(|latency| latency.as_secs_f64() * 1000.0),
                        "rate_limit_headroom": health.headroom,
                        "priority": member.priority,
                        "tags": member.tags,
                    })
                })
                .collect();
            serde_json::json!({
                "model": route.name.as_ref(),
                "strategy": format!("{:?}", route.group.strategy()),
                "fallbacks": route.fallbacks,
                "deployments": deployments,
            })
        })
        .collect();
    json_response(Bytes::from(
        serde_json::json!({"models": models}).to_string(),
    ))
}

pub(crate) async fn live() -> Response {
    json_response(Bytes::from_static(b"{\"status\":\"ok\"}"))
}

/// Ready when the store answers and the gateway is not draining.
pub(crate) async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    if gateway.draining.load(Ordering::Relaxed) {
        return unavailable("draining");
    }
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), gateway.store.ping()).await;
    match ping {
        Ok(Ok(())) => json_response(Bytes::from_static(b"{\"status\":\"ready\"}")),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The size of the future a four-argument async function returns,
    /// without calling it.
    pub(crate) fn future_size4<A, B, C, D, F, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The same for six arguments.
    fn future_size<A, B, C, D, E, G, F, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D, E, G) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_chat_requests_future_stays_small() {
        // Every request allocates this future (and once copied it whole).
        // It measured 44 KiB while wrappers and `select!` held the dispatch
        // and attempt futures twice over; about 5 KiB since.
        let size = future_size(chat);
        assert!(size < 6 * 1024, "the chat request's future is {size} bytes");
    }

    /// The alignment of the future a four-argument async function returns.
    fn future_align4<A, B, C, D, F, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> Fut,
    {
        std::mem::align_of::<Fut>()
    }

    #[test]
    fn a_chat_requests_future_is_word_aligned() {
        // The front boxes it for every request: aligned to more than a word
        // (a `u128` held across an await did it), the box came from
        // mimalloc's aligned entry point, which over-allocates a block of
        // this size, at about 230 instructions more.
        let align = future_align4(chat_request);
        assert!(align <= std::mem::size_of::<usize>(), "aligned to {align}");
    }

    #[test]
    fn the_chat_request_future_holds_the_chat_future_once() {
        // Authentication, then the chat future: not a second copy of it.
        let size = future_size4(chat_request);
        assert!(size < future_size(chat) + 1024, "{size} bytes");
    }

    #[test]
    fn option_headers_are_read_only_when_the_request_carries_one() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-switchboard", HeaderValue::from_static("not an option"));
        assert!(switchboard_options(&headers).is_empty());
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("2.5"));
        let options = switchboard_options(&headers);
        assert_eq!(options.len(), 3);
        assert_eq!(
            seconds_header(options, TIMEOUT_HEADER).unwrap(),
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn costs_have_nine_decimals() {
        for nanos in [
            0,
            7,
            20_850,
            999_999_999,
            1_000_000_000,
            12_345_678_901,
            u64::MAX,
        ] {
            let expected = format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000);
            assert_eq!(nine_decimals(nanos).as_bytes(), expected.as_bytes());
        }
    }
}
