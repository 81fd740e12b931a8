//! Getting one request answered: attempts across a model group's
//! deployments, retries with backoff, and the fallback chain, all within
//! the request's time budget.
//!
//! For each model of the chain (the requested one, then its `fallbacks`),
//! up to `routing.max_attempts` attempts are made on deployments the group
//! picks (untried and healthy ones first). A failure that says something
//! about the deployment (connection, timeout, 5xx, 429, garbage) is
//! recorded in its health and retried after a jittered backoff that honours
//! `Retry-After`; a failure that concerns the request itself (a 400) is
//! returned at once, unless `fallback_on` names it (a context-window or
//! content-policy refusal, or a listed status), in which case the next model
//! is tried. A stream counts as answered only once its first content has
//! arrived (see `hold_opening`), so a stream that fails before its first
//! token fails over like any other error.
//!
//! Before an attempt goes upstream it enters its deployment through the
//! request's `Admission`: with a shared limiter, that reserves the
//! deployment's requests and tokens per minute (and, for the first attempt,
//! the key's limits in the same call); a deployment found at capacity is
//! left out for this request and the next one is picked, as one whose local
//! capacity is used up would have been.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use switchboard_config::{FallbackTriggers, Routing};
use switchboard_core::mix::splitmix64;
use switchboard_core::record::{AttemptDetail, push_attempt_detail};
use switchboard_dialects::openai::{RawJson, UpstreamErrorBody};
use switchboard_policy::backoff::{fits, retry_delay};
use switchboard_policy::{Failure, ModelGroup, Pick};
use switchboard_providers::{Deployment, RelayEvent, RelayStream, TimeoutPhase, UpstreamError};

use crate::access::{Admission, Entry, Hold};
use crate::error::ApiError;
use crate::trace::Progress;

/// A public model name, the deployments that serve it and how to route it.
pub(crate) struct Route {
    pub name: Arc<str>,
    pub group: ModelGroup<Arc<Deployment>>,
    pub routing: Routing,
    pub fallbacks: Vec<String>,
    /// The group's recent answer latencies (time to first content for
    /// streams), newest last, for the hedging threshold.
    pub recent_latencies: Mutex<VecDeque<Duration>>,
    /// Each member's prices, when known (its own, or the price table's).
    pub rates: Vec<Option<switchboard_core::cost::Rates>>,
    /// Keep the bodies of this model's requests in the request log.
    pub log_bodies: bool,
    /// What its answers depend on (`state::answers_of`): part of every
    /// response-cache key, so that a reload that changes a model's
    /// deployments stops serving answers cached from the old ones.
    pub answers: u64,
}

/// Latencies kept per group for its p95.
const RECENT_LATENCIES: usize = 200;
/// Answers needed before a p95 is trusted enough to hedge on.
const HEDGE_MIN_SAMPLES: usize = 20;

impl Route {
    pub fn note_latency(&self, latency: Duration) {
        if !self.routing.hedge {
            return;
        }
        let mut recent = self
            .recent_latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == RECENT_LATENCIES {
            recent.pop_front();
        }
        recent.push_back(latency);
    }

    /// When to start a second, racing attempt: the fixed
    /// `hedge_delay`, or else the group's recent p95 once enough answers
    /// have been seen.
    pub fn hedge_delay(&self) -> Option<Duration> {
        if let Some(fixed) = self.routing.hedge_delay {
            return Some(fixed);
        }
        let mut recent: Vec<Duration> = self
            .recent_latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        if recent.len() < HEDGE_MIN_SAMPLES {
            return None;
        }
        let rank = (recent.len() * 95).div_ceil(100) - 1;
        let (_, p95, _) = recent.select_nth_unstable(rank);
        Some(*p95)
    }
}

/// Notes a failed upstream attempt for the request's metrics.
fn note_error(progress: &Mutex<Progress>, deployment: &Arc<str>, error: &UpstreamError) {
    progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .upstream_errors
        .push((deployment.clone(), crate::metrics::error_class(error)));
}

fn note_progress(progress: &Mutex<Progress>, deployment: &Arc<str>, attempts: u32) {
    let mut progress = progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    progress.deployment = Some(deployment.clone());
    progress.attempts = attempts;
}

/// Notes how one upstream attempt ended, for the request's record: `Ok`
/// for an answer, else the failure (its class and status), or `cancelled`
/// when `outcome` is `None` (a hedge that lost its race). Called once per
/// attempt, where the attempt is counted; an attempt that never went
/// upstream (the deployment could not carry the request) is not one.
fn note_attempt(
    progress: &Mutex<Progress>,
    route: &Route,
    index: usize,
    started: Instant,
    outcome: Option<Result<(), &UpstreamError>>,
) {
    let (outcome, status) = match outcome {
        Some(Ok(())) => (AttemptDetail::OK, None),
        Some(Err(error)) => (
            crate::metrics::error_class(error),
            match error {
                UpstreamError::Status { status, .. } => Some(*status),
                _ => None,
            },
        ),
        None => (AttemptDetail::CANCELLED, None),
    };
    let detail = AttemptDetail {
        deployment: route.group.member(index).target.name().clone(),
        model: route.name.clone(),
        outcome: Cow::Borrowed(outcome),
        status,
        duration_ms: started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64,
    };
    let mut progress = progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    push_attempt_detail(&mut progress.attempt_details, detail);
}

/// Records a failed attempt in its deployment's health (when the failure
/// is the deployment's).
fn note_failure(route: &Route, index: usize, error: &UpstreamError) {
    if let Verdict::Deployment(failure) = verdict(error) {
        route
            .group
            .member(index)
            .health
            .record_failure(failure, Instant::now());
    }
}

/// The part of a conversation that a provider's prompt cache would reuse:
/// every message but the last, as the client sent them.
pub(crate) struct ConversationPrefix {
    hash: u64,
    chars: usize,
}

impl ConversationPrefix {
    pub fn of(messages: Option<RawJson<'_>>) -> Option<ConversationPrefix> {
        let messages: Vec<&serde_json::value::RawValue> =
            serde_json::from_str(messages?.get()).ok()?;
        let (_, prefix) = messages.split_last()?;
        let mut hasher = std::hash::DefaultHasher::new();
        let mut chars = 0;
        for message in prefix {
            std::hash::Hash::hash(message.get(), &mut hasher);
            chars += message.get().len();
        }
        Some(ConversationPrefix {
            hash: std::hash::Hasher::finish(&hasher),
            chars,
        })
    }

    /// The affinity key, when the route wants affinity and the prefix is
    /// long enough to be worth caching.
    fn key_for(&self, routing: &Routing) -> Option<u64> {
        (routing.prompt_cache_affinity && self.chars >= routing.affinity_min_prefix_chars as usize)
            .then_some(self.hash)
    }
}

/// A successful dispatch: the answer and who gave it.
pub(crate) struct Answered<T> {
    pub value: T,
    pub deployment: Arc<Deployment>,
    /// The route and member that answered, to account its tokens.
    pub route: Arc<Route>,
    pub member: usize,
    /// The public model whose deployment answered (differs from the
    /// requested one after a fallback).
    pub model: Arc<str>,
    pub attempts: u32,
    /// Counts the request in flight on its deployment until dropped.
    pub in_flight: InFlightTicket,
    /// The answering deployment's hold on its shared capacity.
    pub hold: Hold,
}

/// A failed dispatch: the error for the client and the last deployment tried.
pub(crate) struct Unanswered {
    pub error: ApiError,
    pub deployment: Option<Arc<Deployment>>,
    pub attempts: u32,
    /// The request's own limits refused it before any attempt (answered
    /// as such a refusal is, without route headers).
    pub refused_by_limits: bool,
}

/// How a failure counts.
enum Verdict {
    /// The deployment failed: note it, and try again elsewhere.
    Deployment(Failure),
    /// The request was refused for what it is: retrying elsewhere in the
    /// same group would get the same answer.
    Request,
    /// This deployment's API cannot carry the request (a parameter it
    /// cannot honour, under the `reject` policy); another deployment or
    /// fallback of another API may. Nothing was sent upstream.
    Unfit,
}

fn verdict(error: &UpstreamError) -> Verdict {
    match error {
        UpstreamError::Connect(_) | UpstreamError::Transport(_) => {
            Verdict::Deployment(Failure::Connection)
        }
        UpstreamError::Timeout { .. } => Verdict::Deployment(Failure::Timeout),
        // A refusal reported inside a stream concerns the request, as the
        // same refusal with a 400 status would.
        UpstreamError::InStream { body } if refusal_of(body).is_some() => Verdict::Request,
        UpstreamError::InStream { body } if is_rate_limit(body) => {
            Verdict::Deployment(Failure::RateLimited { retry_after: None })
        }
        UpstreamError::InvalidResponse(_) | UpstreamError::InStream { .. } => {
            Verdict::Deployment(Failure::InvalidResponse)
        }
        UpstreamError::Misconfigured(_) => Verdict::Deployment(Failure::ServerError),
        UpstreamError::Untranslatable { .. } | UpstreamError::Unsupported { .. } => Verdict::Unfit,
        UpstreamError::Status {
            status,
            retry_after,
            ..
        } => match *status {
            429 => Verdict::Deployment(Failure::RateLimited {
                retry_after: retry_after.as_deref().and_then(parse_retry_after),
            }),
            // 401/403: the deployment's own credentials are wrong.
            401 | 403 | 408 | 500..=599 => Verdict::Deployment(Failure::ServerError),
            _ => Verdict::Request,
        },
    }
}

/// `Retry-After` as seconds (the HTTP-date form is rare from model APIs
/// and is treated as absent).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(|seconds| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// Whether this failure moves the request on to the fallback models.
fn triggers_fallback(triggers: &FallbackTriggers, error: &UpstreamError) -> bool {
    let refused = |body: &UpstreamErrorBody| match refusal_of(body) {
        Some(Refusal::ContextWindow) => triggers.context_window,
        Some(Refusal::ContentPolicy) => triggers.content_policy,
        None => false,
    };
    let status = match error {
        UpstreamError::Connect(_) | UpstreamError::Transport(_) => return triggers.connection,
        UpstreamError::Timeout { .. } => return triggers.timeout,
        UpstreamError::InStream { body } if refusal_of(body).is_some() => return refused(body),
        UpstreamError::InvalidResponse(_) | UpstreamError::InStream { .. } => {
            return triggers.invalid_response;
        }
        UpstreamError::Misconfigured(_) => return triggers.server_error,
        UpstreamError::Untranslatable { .. } | UpstreamError::Unsupported { .. } => return false,
        UpstreamError::Status { status, body, .. } => {
            if refused(body) {
                return true;
            }
            *status
        }
    };
    triggers.statuses.contains(&status)
        || (triggers.rate_limited && status == 429)
        || (triggers.server_error && (500..=599).contains(&status))
}

/// A rate limit reported inside a stream rather than by a 429: OpenAI's
/// and Anthropic's error types, Gemini's status, Bedrock's exception.
pub(crate) fn is_rate_limit(body: &UpstreamErrorBody) -> bool {
    let names = [body.kind.as_deref(), body.code.as_deref()];
    names.iter().flatten().any(|name| {
        matches!(
            *name,
            "rate_limit_error"
                | "rate_limit_exceeded"
                | "RESOURCE_EXHAUSTED"
                | "throttlingException"
                | "ThrottlingException"
                | "429"
        )
    })
}

/// Refusals that concern the request and that a fallback model may serve.
enum Refusal {
    ContextWindow,
    ContentPolicy,
}

/// Recognises a refusal by OpenAI's codes or its usual wording.
fn refusal_of(body: &UpstreamErrorBody) -> Option<Refusal> {
    let code = body.code.as_deref().unwrap_or_default();
    let message = body
        .message
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    // OpenAI's code and wording; Anthropic's "prompt is too long"; Gemini's
    // "input token count ... exceeds the maximum"; Bedrock's "input is too
    // long".
    if code == "context_length_exceeded"
        || message.contains("maximum context length")
        || message.contains("prompt is too long")
        || (message.contains("input token count") && message.contains("exceeds"))
        || message.contains("input is too long")
        || message.contains("too many input tokens")
    {
        Some(Refusal::ContextWindow)
    } else if matches!(code, "content_filter" | "content_policy_violation")
        || message.contains("content management policy")
    {
        Some(Refusal::ContentPolicy)
    } else {
        None
    }
}

static JITTER: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);

/// A cheap, well-spread random value for backoff jitter.
fn jitter() -> u64 {
    splitmix64(JITTER.fetch_add(1, Ordering::Relaxed))
}

/// Keeps a request counted in flight on its deployment until dropped: for
/// a stream, until the stream ends. Carries the attempt's hold on the
/// deployment's shared capacity until the attempt is over.
pub(crate) struct InFlightTicket {
    route: Arc<Route>,
    member: usize,
    hold: Hold,
}

impl InFlightTicket {
    fn new(route: &Arc<Route>, member: usize, hold: Hold) -> InFlightTicket {
        route.group.member(member).health.enter();
        InFlightTicket {
            route: route.clone(),
            member,
            hold,
        }
    }

    fn take_hold(&mut self) -> Hold {
        std::mem::replace(&mut self.hold, Hold::none())
    }
}

impl Drop for InFlightTicket {
    fn drop(&mut self) {
        self.route.group.member(self.member).health.leave();
    }
}

/// How one attempt (with its hedge, if any) ended.
struct AttemptResult<T> {
    outcome: Result<T, UpstreamError>,
    /// The member whose answer `outcome` is.
    member: usize,
    /// When that member's request started (the hedge starts late).
    started: Instant,
    ticket: InFlightTicket,
    /// The request's own time budget ran out: nobody's fault upstream.
    out_of_budget: bool,
}

/// Runs `call` on deployments of `chain[0]`, then of its fallbacks, until
/// one answers, an error must be returned, or `deadline` passes. Each
/// attempt enters its deployment through `admission` first.
pub(crate) async fn dispatch<T, F, Fut>(
    chain: &[Arc<Route>],
    deadline: Option<Instant>,
    tags: &[String],
    affinity: Option<&ConversationPrefix>,
    progress: &Mutex<Progress>,
    admission: &Arc<Admission>,
    mut call: F,
) -> Result<Answered<T>, Unanswered>
where
    F: FnMut(Arc<Deployment>) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let primary = &chain[0];
    // An attempt's span, when the budget cuts it, tells a timeout from a
    // hedge that lost its race by this.
    progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .deadline = deadline;
    let mut attempts = 0u32;
    let mut last: Option<(UpstreamError, Arc<Deployment>)> = None;
    // The first refusal by a deployment that cannot carry the request,
    // returned only when no other deployment could be tried.
    let mut unfit: Option<(UpstreamError, Arc<Deployment>)> = None;
    let mut soonest_reopening: Option<Instant> = None;

    for (position, route) in chain.iter().enumerate() {
        if position > 0
            && let Some((error, _)) = &last
            && !triggers_fallback(&primary.routing.fallback_on, error)
        {
            break;
        }
        let mut tried: Vec<usize> = Vec::new();
        // Deployments whose credentials were refused: never again for this request.
        let mut excluded: Vec<usize> = Vec::new();
        let mut group_attempts = 0u32;
        while group_attempts < route.routing.max_attempts {
            let pick = Pick {
                tried: &tried,
                excluded: &excluded,
                tags,
                random: jitter(),
                affinity: affinity.and_then(|prefix| prefix.key_for(&route.routing)),
                shared_capacity: admission.shared(),
            };
            let Some(index) = route.group.pick(Instant::now(), pick) else {
                for member in route.group.members() {
                    if let Some(at) = member.health.reopens_at() {
                        soonest_reopening =
                            Some(soonest_reopening.map_or(at, |soonest| soonest.min(at)));
                    }
                }
                break;
            };
            let mut delay = Duration::ZERO;
            if group_attempts > 0 {
                let retry_after = match &last {
                    Some((UpstreamError::Status { retry_after, .. }, _)) => {
                        retry_after.as_deref().and_then(parse_retry_after)
                    }
                    _ => None,
                };
                // A different deployment need not wait for the one that
                // asked us to; the same one must, unless it asks for more
                // than this group would ever wait.
                let asked = if tried.contains(&index) {
                    retry_after
                } else {
                    None
                };
                if asked.is_some_and(|asked| asked > route.routing.retry_max_backoff) {
                    route
                        .group
                        .member(index)
                        .health
                        .release_probe(Instant::now());
                    break;
                }
                delay = retry_delay(
                    group_attempts,
                    route.routing.retry_backoff,
                    route.routing.retry_max_backoff,
                    asked,
                    jitter(),
                );
                if let Some(deadline) = deadline
                    && !fits(delay, deadline.saturating_duration_since(Instant::now()))
                {
                    route
                        .group
                        .member(index)
                        .health
                        .release_probe(Instant::now());
                    return Err(give_up(last, attempts, true));
                }
            }
            let member = route.group.member(index);
            let hold = match admission
                .enter(member.target.name(), &member.capacity)
                .await
            {
                Entry::Go(hold) => hold,
                Entry::Full => {
                    // At capacity across instances: as if the pick had
                    // found it so.
                    member.health.release_probe(Instant::now());
                    excluded.push(index);
                    continue;
                }
                Entry::Refused(error) => {
                    member.health.release_probe(Instant::now());
                    return Err(Unanswered {
                        error,
                        deployment: None,
                        attempts,
                        refused_by_limits: true,
                    });
                }
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            tried.push(index);
            attempts += 1;
            group_attempts += 1;
            note_progress(progress, route.group.member(index).target.name(), attempts);
            let hedge_delay = if route.routing.hedge && group_attempts < route.routing.max_attempts
            {
                route.hedge_delay()
            } else {
                None
            };
            // A hedge still running, so that one cut by the request's
            // time budget is noted too.
            let mut hedge_running: Option<(usize, Instant)> = None;
            let attempt_started = Instant::now();
            // Pinned where it is made, so that the budget's timeout holds a
            // reference to it rather than a second copy.
            let result = {
                let attempt = std::pin::pin!(async {
                    let started = attempt_started;
                    let ticket = InFlightTicket::new(route, index, hold);
                    // Boxed: an upstream call's future is large, and moving it (into
                    // the timeout, the select) would copy all of it each time.
                    let primary = Box::pin(call(route.group.member(index).target.clone()));
                    let Some(delay) = hedge_delay else {
                        return (primary.await, index, started, ticket);
                    };
                    tokio::pin!(primary);
                    if let Ok(result) = tokio::time::timeout(delay, &mut primary).await {
                        return (result, index, started, ticket);
                    }
                    // Slower than the group's recent p95: race a second deployment.
                    let hedge_pick = Pick {
                        tried: &tried,
                        excluded: &excluded,
                        tags,
                        random: jitter(),
                        affinity: None,
                        shared_capacity: admission.shared(),
                    };
                    let Some(hedge_index) = route
                        .group
                        .pick(Instant::now(), hedge_pick)
                        .filter(|&other| other != index)
                    else {
                        return (primary.await, index, started, ticket);
                    };
                    let hedge_member = route.group.member(hedge_index);
                    let hedge_hold = match admission
                        .enter(hedge_member.target.name(), &hedge_member.capacity)
                        .await
                    {
                        Entry::Go(hold) => hold,
                        Entry::Full | Entry::Refused(_) => {
                            hedge_member.health.release_probe(Instant::now());
                            return (primary.await, index, started, ticket);
                        }
                    };
                    attempts += 1;
                    group_attempts += 1;
                    note_progress(
                        progress,
                        route.group.member(hedge_index).target.name(),
                        attempts,
                    );
                    let hedge_started = Instant::now();
                    hedge_running = Some((hedge_index, hedge_started));
                    let hedge_ticket = InFlightTicket::new(route, hedge_index, hedge_hold);
                    let hedge = Box::pin(call(route.group.member(hedge_index).target.clone()));
                    tokio::pin!(hedge);
                    // The first success wins and the other request is dropped,
                    // which cancels it; a failure waits for the other.
                    tokio::select! {
                        result = &mut primary => match result {
                            Ok(value) => {
                                // The hedge is dropped, which cancels it.
                                hedge_running = None;
                                note_attempt(progress, route, hedge_index, hedge_started, None);
                                (Ok(value), index, started, ticket)
                            }
                            Err(error) => {
                                note_failure(route, index, &error);
                                note_error(progress, route.group.member(index).target.name(), &error);
                                note_attempt(progress, route, index, started, Some(Err(&error)));
                                let result = hedge.await;
                                hedge_running = None;
                                (result, hedge_index, hedge_started, hedge_ticket)
                            }
                        },
                        result = &mut hedge => {
                            hedge_running = None;
                            match result {
                                Ok(value) => {
                                    note_attempt(progress, route, index, started, None);
                                    (Ok(value), hedge_index, hedge_started, hedge_ticket)
                                }
                                Err(error) => {
                                    note_failure(route, hedge_index, &error);
                                    note_error(progress, route.group.member(hedge_index).target.name(), &error);
                                    note_attempt(progress, route, hedge_index, hedge_started, Some(Err(&error)));
                                    (primary.await, index, started, ticket)
                                }
                            }
                        }
                    }
                });
                match deadline {
                    Some(deadline) => {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(remaining, attempt).await {
                            Ok((outcome, member, started, ticket)) => AttemptResult {
                                outcome,
                                member,
                                started,
                                ticket,
                                out_of_budget: false,
                            },
                            Err(_) => AttemptResult {
                                outcome: Err(UpstreamError::Timeout {
                                    phase: TimeoutPhase::Request,
                                }),
                                member: index,
                                started: attempt_started,
                                ticket: InFlightTicket::new(route, index, Hold::none()),
                                out_of_budget: true,
                            },
                        }
                    }
                    None => {
                        let (outcome, member, started, ticket) = attempt.await;
                        AttemptResult {
                            outcome,
                            member,
                            started,
                            ticket,
                            out_of_budget: false,
                        }
                    }
                }
            };
            if !tried.contains(&result.member) {
                tried.push(result.member);
            }
            let index = result.member;
            let member = route.group.member(index);
            let deployment = member.target.clone();
            if let Some(headroom) = deployment.headroom() {
                member.health.record_headroom(headroom);
            }
            let mut ticket = result.ticket;
            match result.outcome {
                Ok(value) => {
                    note_attempt(progress, route, index, result.started, Some(Ok(())));
                    member.health.record_success();
                    // For a stream this is the time to its first content.
                    member.health.record_latency(result.started.elapsed());
                    route.note_latency(result.started.elapsed());
                    return Ok(Answered {
                        value,
                        deployment,
                        route: route.clone(),
                        member: index,
                        model: route.name.clone(),
                        attempts,
                        hold: ticket.take_hold(),
                        in_flight: ticket,
                    });
                }
                Err(error) if result.out_of_budget => {
                    note_error(progress, deployment.name(), &error);
                    note_attempt(progress, route, index, result.started, Some(Err(&error)));
                    if let Some((hedge_index, hedge_started)) = hedge_running {
                        note_attempt(
                            progress,
                            route,
                            hedge_index,
                            hedge_started,
                            Some(Err(&error)),
                        );
                    }
                    // The client's budget ran out: not the deployment's fault.
                    member.health.release_probe(Instant::now());
                    last = Some((error, deployment));
                    return Err(give_up(last, attempts, true));
                }
                Err(error) => {
                    tracing::debug!(deployment = %deployment.name(), %error, attempt = attempts, "attempt failed");
                    if !matches!(verdict(&error), Verdict::Unfit) {
                        note_error(progress, deployment.name(), &error);
                        note_attempt(progress, route, index, result.started, Some(Err(&error)));
                    }
                    match verdict(&error) {
                        Verdict::Deployment(failure) => {
                            member.health.record_failure(failure, Instant::now());
                            if matches!(
                                error,
                                UpstreamError::Status {
                                    status: 401 | 403,
                                    ..
                                }
                            ) {
                                excluded.push(index);
                            }
                            last = Some((error, deployment));
                        }
                        Verdict::Unfit => {
                            // Nothing went upstream: not an attempt, and
                            // not this deployment's fault.
                            member.health.release_probe(Instant::now());
                            excluded.push(index);
                            attempts -= 1;
                            group_attempts -= 1;
                            unfit.get_or_insert((error, deployment));
                        }
                        Verdict::Request => {
                            // The deployment answered properly; the request is at fault.
                            member.health.record_success();
                            let falls_back =
                                triggers_fallback(&primary.routing.fallback_on, &error);
                            last = Some((error, deployment));
                            if falls_back {
                                break;
                            }
                            return Err(give_up(last, attempts, false));
                        }
                    }
                }
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(give_up(last, attempts, true));
            }
        }
    }
    if last.is_none() && unfit.is_some() {
        return Err(give_up(unfit, attempts, false));
    }
    if last.is_none() {
        // No deployment could be tried: the key's limits are reserved (and
        // may refuse) all the same, as when they are reserved up front.
        if let Err(error) = admission.reserve_keys().await {
            return Err(Unanswered {
                error,
                deployment: None,
                attempts,
                refused_by_limits: true,
            });
        }
        return Err(Unanswered {
            error: ApiError::no_healthy_deployment(
                &primary.name,
                soonest_reopening.map(|at| at.saturating_duration_since(Instant::now())),
            ),
            deployment: None,
            attempts,
            refused_by_limits: false,
        });
    }
    Err(give_up(last, attempts, false))
}

fn give_up(
    last: Option<(UpstreamError, Arc<Deployment>)>,
    attempts: u32,
    out_of_time: bool,
) -> Unanswered {
    match last {
        Some((error, deployment)) => {
            let mut api_error = ApiError::from_upstream(&error, deployment.name());
            if out_of_time && !matches!(error, UpstreamError::Timeout { .. }) {
                api_error
                    .message
                    .push_str(" The request's time budget ran out before another attempt.");
            }
            Unanswered {
                error: api_error,
                deployment: Some(deployment),
                attempts,
                refused_by_limits: false,
            }
        }
        None => Unanswered {
            error: ApiError::deadline_exceeded(attempts),
            deployment: None,
            attempts,
            refused_by_limits: false,
        },
    }
}

/// Waits for a stream's first content (text, a tool call, a finish), keeping
/// what came before it, so that a stream failing before its first token is
/// an ordinary failed attempt. Returns the stream with the held events
/// first. Bounded by `first_token_timeout` when set.
/// The most a stream opening is held before it is passed on anyway.
const MAX_HELD_EVENTS: usize = 256;
const MAX_HELD_BYTES: usize = 256 * 1024;

pub(crate) async fn hold_opening(
    mut events: RelayStream,
    first_token_timeout: Option<Duration>,
) -> Result<RelayStream, UpstreamError> {
    let mut held = Vec::new();
    let mut held_bytes = 0usize;
    let opening = async {
        loop {
            match events.next().await {
                Some(RelayEvent::Failed(error)) => return Err(error),
                Some(event @ (RelayEvent::Done | RelayEvent::Data { content: true, .. })) => {
                    held.push(event);
                    return Ok(());
                }
                Some(event) => {
                    if let RelayEvent::Data { frame, .. } = &event {
                        held_bytes += frame.len();
                    }
                    held.push(event);
                    // An upstream that sends much before any content (empty
                    // deltas, keep-alives) gets its stream passed on as it
                    // is: holding it would cost memory without bound.
                    if held.len() >= MAX_HELD_EVENTS || held_bytes >= MAX_HELD_BYTES {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            }
        }
    };
    match first_token_timeout {
        Some(limit) => {
            tokio::time::timeout(limit, opening)
                .await
                .unwrap_or(Err(UpstreamError::Timeout {
                    phase: TimeoutPhase::FirstToken,
                }))?
        }
        None => opening.await?,
    }
    Ok(Box::pin(futures_util::stream::iter(held).chain(events)))
}

#[cfg(test)]
mod tests {

    use super::*;

    fn status(status: u16, code: Option<&str>, message: &str) -> UpstreamError {
        UpstreamError::Status {
            status,
            body: UpstreamErrorBody {
                message: Some(message.to_owned()),
                kind: None,
                param: None,
                code: code.map(str::to_owned),
            },
            retry_after: None,
        }
    }

    #[tokio::test]
    async fn an_opening_without_content_is_held_only_so_long() {
        let empty = || RelayEvent::Data {
            frame: bytes::Bytes::from_static(b"data: {}\n\n"),
            content: false,
        };
        // Endless empty events: the opening is released after the cap.
        let events: RelayStream = Box::pin(futures_util::stream::repeat_with(empty));
        let released = tokio::time::timeout(Duration::from_secs(5), hold_opening(events, None))
            .await
            .expect("released without content")
            .expect("no failure");
        let first: Vec<RelayEvent> = released.take(MAX_HELD_EVENTS + 1).collect().await;
        assert_eq!(first.len(), MAX_HELD_EVENTS + 1);
        // A failure before content is still an ordinary failed attempt.
        let failing: RelayStream = Box::pin(futures_util::stream::iter(vec![
            empty(),
            RelayEvent::Failed(UpstreamError::InvalidResponse("x".to_owned())),
        ]));
        assert!(hold_opening(failing, None).await.is_err());
    }

    #[test]
    fn failures_are_classified_once() {
        assert!(matches!(
            verdict(&status(503, None, "")),
            Verdict::Deployment(Failure::ServerError)
        ));
        assert!(matches!(
            verdict(&status(401, None, "")),
            Verdict::Deployment(Failure::ServerError)
        ));
        assert!(matches!(verdict(&status(400, None, "")), Verdict::Request));
        assert!(matches!(verdict(&status(404, None, "")), Verdict::Request));
        let limited = UpstreamError::Status {
            status: 429,
            body: UpstreamErrorBody::default(),
            retry_after: Some("2".into()),
        };
        assert!(matches!(
            verdict(&limited),
            Verdict::Deployment(Failure::RateLimited { retry_after: Some(wait) }) if wait == Duration::from_secs(2)
        ));
        assert!(matches!(
            verdict(&UpstreamError::Timeout {
                phase: TimeoutPhase::FirstToken
            }),
            Verdict::Deployment(Failure::Timeout)
        ));
    }

    #[test]
    fn fallback_triggers_follow_the_configuration() {
        let defaults = FallbackTriggers::default();
        assert!(triggers_fallback(&defaults, &status(502, None, "")));
        assert!(triggers_fallback(&defaults, &status(429, None, "")));
        assert!(!triggers_fallback(
            &defaults,
            &status(400, Some("context_length_exceeded"), "")
        ));
        let wider = FallbackTriggers {
            context_window: true,
            content_policy: true,
            statuses: vec![404],
            ..FallbackTriggers::default()
        };
        assert!(triggers_fallback(
            &wider,
            &status(400, Some("context_length_exceeded"), "")
        ));
        assert!(triggers_fallback(
            &wider,
            &status(
                400,
                None,
                "This model's maximum context length is 8192 tokens"
            )
        ));
        assert!(triggers_fallback(
            &wider,
            &status(400, Some("content_filter"), "")
        ));
        assert!(triggers_fallback(&wider, &status(404, None, "")));
        assert!(!triggers_fallback(
            &wider,
            &status(400, None, "bad temperature")
        ));
    }

    fn route(routing: Routing) -> Route {
        let config = switchboard_config::Config::from_toml(
            "test",
            "[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\n",
        )
        .unwrap();
        let deployment = Deployment::new(
            &config.models[0].deployments[0],
            &switchboard_providers::UpstreamClients::new(),
        )
        .unwrap();
        Route {
            name: Arc::from("m"),
            group: ModelGroup::new(
                vec![switchboard_policy::MemberSpec::plain(Arc::new(deployment))],
                switchboard_policy::Strategy::RoundRobin,
                switchboard_policy::CircuitSettings::default(),
            )
            .unwrap(),
            routing,
            fallbacks: Vec::new(),
            recent_latencies: Mutex::default(),
            rates: vec![None],
            log_bodies: false,
            answers: 0,
        }
    }

    #[test]
    fn the_hedge_delay_is_the_recent_p95_once_enough_is_known() {
        let hedged = route(Routing {
            hedge: true,
            ..Routing::default()
        });
        for millis in 1..20 {
            hedged.note_latency(Duration::from_millis(millis));
        }
        assert_eq!(hedged.hedge_delay(), None, "19 answers are not enough");
        for millis in 20..=100 {
            hedged.note_latency(Duration::from_millis(millis));
        }
        assert_eq!(hedged.hedge_delay(), Some(Duration::from_millis(95)));
        // Only the newest answers count.
        for _ in 0..RECENT_LATENCIES {
            hedged.note_latency(Duration::from_millis(7));
        }
        assert_eq!(hedged.hedge_delay(), Some(Duration::from_millis(7)));

        let fixed = route(Routing {
            hedge: true,
            hedge_delay: Some(Duration::from_millis(250)),
            ..Routing::default()
        });
        assert_eq!(fixed.hedge_delay(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn refusals_inside_a_stream_count_like_refusals_with_a_status() {
        let in_stream = |code: &str| UpstreamError::InStream {
            body: UpstreamErrorBody {
                message: Some("refused".to_owned()),
                kind: None,
                param: None,
                code: Some(code.to_owned()),
            },
        };
        assert!(matches!(
            verdict(&in_stream("context_length_exceeded")),
            Verdict::Request
        ));
        assert!(matches!(
            verdict(&in_stream("server_error")),
            Verdict::Deployment(Failure::InvalidResponse)
        ));
        let wider = FallbackTriggers {
            context_window: true,
            ..FallbackTriggers::default()
        };
        assert!(triggers_fallback(
            &wider,
            &in_stream("context_length_exceeded")
        ));
        assert!(!triggers_fallback(
            &FallbackTriggers::default(),
            &in_stream("context_length_exceeded")
        ));
        assert!(!triggers_fallback(&wider, &in_stream("content_filter")));
        assert!(triggers_fallback(
            &FallbackTriggers::default(),
            &in_stream("overloaded")
        ));
    }

    #[test]
    fn retry_after_is_read_as_seconds() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
