//! What a virtual key may do with one request: the models it and its team
//! allow, and the reservation of its rate limits, concurrency and budgets
//! (and those of its team and of the end user the request names) before
//! the request goes upstream. The reservation is settled with the actual
//! tokens and cost when the request's `Trace` finishes, whatever the way it
//! ends.
//!
//! With a shared limiter (Redis), deployments' requests and tokens per
//! minute are counted there too, and the key's scopes are reserved only
//! once the first deployment is chosen, together with that deployment's
//! scope, in one call: a deployment at capacity is then refused without
//! the key being charged, and the dispatcher moves on (`Admission::enter`).
//! Later attempts reserve only their deployment's scope. Each attempt's
//! hold on its deployment (`Hold`) is settled when the attempt fails, or
//! with the request's usage when its answer was served.
//!
//! With a limiter whose reservations lapse (Redis: after the lease), a
//! timer renews the key's reservation every half lease until it is
//! settled, so a long request keeps counting.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_core::Usage;
use switchboard_core::keys::Limits;
use switchboard_policy::capacity::Capacity;
use switchboard_policy::limits::{
    Ask, Budget, Grant, Limiter, Nanos, Refusal, Remaining, Rules, Scope, ScopeKind,
};

use crate::context::Principal;
use crate::error::ApiError;
use crate::head_lines::{HeadLines, LineStart};
use crate::keys::KeyEntry;
use crate::trace::unix_millis;

/// Output tokens reserved for a request that sets no limit of its own.
pub(crate) const DEFAULT_OUTPUT_RESERVE: u64 = 16_384;

/// Who made a request, for the record.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub key_id: Option<Arc<str>>,
    pub team_id: Option<Arc<str>>,
    pub end_user: Option<String>,
}

/// After a renewal that could not reach the counters, the wait before the
/// next attempt (at most half the lease).
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// A reservation to settle when the request ends.
pub(crate) struct Reservation {
    limiter: Arc<dyn Limiter>,
    grant: Grant,
    /// Renews the reservation while the request runs; stopped at settle
    /// (or when the reservation is dropped unsettled).
    renewal: Option<Renewal>,
}

/// The timer task renewing a reservation; aborted when dropped.
struct Renewal(tokio::task::JoinHandle<()>);

impl Renewal {
    /// Renews `grant` every half `lease` from now. `None` outside a runtime.
    fn start(limiter: Arc<dyn Limiter>, grant: Grant, lease: Duration) -> Option<Renewal> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let half = lease / 2;
        let task = runtime.spawn(async move {
            let mut wait = half;
            loop {
                tokio::time::sleep(wait).await;
                let now_ms = unix_millis().max(0) as u64;
                wait = if limiter.renew(&grant, now_ms).await {
                    half
                } else {
                    RENEW_RETRY.min(half)
                };
            }
        });
        Some(Renewal(task))
    }

    /// The renewal of `grant`, when `limiter`'s reservations lapse and it
    /// does not renew them itself.
    fn of(limiter: &Arc<dyn Limiter>, grant: &Grant) -> Option<Renewal> {
        if limiter.renews_itself(grant) {
            return None;
        }
        limiter
            .lease()
            .and_then(|lease| Renewal::start(limiter.clone(), grant.clone(), lease))
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Reservation {
    /// The cost reserved: the request's worst case.
    pub fn worst_case(&self) -> Nanos {
        self.grant.cost
    }

    /// Settles with what the request actually used and cost. Runs on a
    /// task of its own, so that a client hang-up cannot cut it short.
    pub fn settle(self, usage: &Usage, cost: Nanos) {
        let Reservation {
            limiter,
            grant,
            renewal,
        } = self;
        drop(renewal);
        spawn_settle(limiter, grant, tokens_of(usage), cost);
    }
}

fn tokens_of(usage: &Usage) -> u64 {
    usage
        .input_tokens
        .unwrap_or(0)
        .saturating_add(usage.output_tokens.unwrap_or(0))
}

/// Settles on a task of its own, unless the limiter takes the settle at
/// once (the memory limiter applies it; the Redis limiter queues it with
/// its own retries): either way a client hang-up cannot cut it short.
fn spawn_settle(limiter: Arc<dyn Limiter>, grant: Grant, tokens: u64, cost: Nanos) {
    let Err(grant) = limiter.settle_detached(grant, tokens, cost) else {
        return;
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move { limiter.settle(grant, tokens, cost).await });
        }
        Err(_) => tracing::error!("a reservation could not be settled: no runtime"),
    }
}

/// What a request reserves: its key's, team's and end user's scopes, and
/// with a shared limiter the scope of each deployment it tries.
pub(crate) struct Admission {
    limiter: Arc<dyn Limiter>,
    /// Whether deployments' per-minute capacity is counted by the limiter.
    shared: bool,
    /// Worst-case tokens (prompt bound plus the most it may generate).
    tokens: u64,
    /// Worst-case cost.
    cost: Nanos,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Key, team and user scopes with limits, not reserved yet.
    pending: Vec<(Scope, Rules)>,
    /// Their reservation, once made. While `joint`, its last scope is the
    /// first attempt's deployment, held for that attempt.
    grant: Option<Grant>,
    /// Renews `grant` while the request runs.
    renewal: Option<Renewal>,
    joint: bool,
    /// Room left in the key's own limits after this request, for headers.
    remaining: Option<Remaining>,
}

/// Whether an attempt may go to the deployment chosen for it.
pub(crate) enum Entry {
    /// It may, holding the deployment's capacity until the hold is settled
    /// or dropped.
    Go(Hold),
    /// The deployment has no capacity left: try another.
    Full,
    /// The request's own limits (key, team, end user) refuse it.
    Refused(ApiError),
}

impl Admission {
    /// Whether deployments' capacity is reserved here (a shared limiter),
    /// rather than taken from each instance's `Capacity` when picked.
    pub fn shared(&self) -> bool {
        self.shared
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ask(&self, scopes: Vec<(Scope, Rules)>) -> Ask {
        Ask {
            scopes,
            tokens: self.tokens,
            cost: self.cost,
            now_ms: unix_millis().max(0) as u64,
        }
    }

    /// Reserves the key's scopes on their own (not yet reserved ones; a
    /// no-op once they are). Done before dispatch without a shared limiter,
    /// and when no deployment could be tried at all.
    pub async fn reserve_keys(&self) -> Result<(), ApiError> {
        let scopes = std::mem::take(&mut self.held().pending);
        if scopes.is_empty() {
            return Ok(());
        }
        let grant = self
            .limiter
            .start_reserve(self.ask(scopes))
            .answer()
            .await
            .map_err(refused)?;
        let mut held = self.held();
        held.remaining = Some(grant.remaining);
        held.renewal = Renewal::of(&self.limiter, &grant);
        held.grant = Some(grant);
        Ok(())
    }

    /// Reserves what an attempt on the deployment `name` (with its
    /// `capacity`) needs, in one call: with a shared limiter, the
    /// deployment's requests and tokens per minute, and for the first
    /// attempt the key's scopes too. Without one, there is nothing to do
    /// (the pick took the deployment's capacity).
    pub async fn enter(self: &Arc<Self>, name: &str, capacity: &Capacity) -> Entry {
        if !self.shared {
            return Entry::Go(Hold::none());
        }
        let (requests_per_minute, tokens_per_minute) = capacity.limits();
        let deployment =
            (requests_per_minute.is_some() || tokens_per_minute.is_some()).then(|| {
                (
                    Scope {
                        kind: ScopeKind::Deployment,
                        id: name.into(),
                    },
                    Rules {
                        requests_per_minute,
                        tokens_per_minute,
                        ..Rules::default()
                    },
                )
            });
        let mut scopes = self.held().pending.clone();
        let with_keys = !scopes.is_empty();
        if deployment.is_none() {
            return match self.reserve_keys().await {
                Ok(()) => Entry::Go(Hold::none()),
                Err(error) => Entry::Refused(error),
            };
        }
        scopes.extend(deployment);
        match self.limiter.start_reserve(self.ask(scopes)).answer().await {
            Ok(grant) if with_keys => {
                let mut held = self.held();
                held.pending.clear();
                held.remaining = Some(grant.remaining);
                held.renewal = Renewal::of(&self.limiter, &grant);
                held.grant = Some(grant);
                held.joint = true;
                Entry::Go(Hold(Some(Holding::Joint(self.clone()))))
            }
            Ok(grant) => Entry::Go(Hold(Some(Holding::Own(
                self.limiter.clone(),
                Box::new(grant),
            )))),
            Err(Refusal::Limited {
                scope,
                limit,
                retry_after,
            }) if scope.kind == ScopeKind::Deployment => {
                // A minute's requests only grow: every pick on this instance
                // can skip the deployment until the minute turns. (Tokens
                // may be handed back by requests settling, so a refusal for
                // tokens is not remembered.)
                if limit == "requests_per_minute" {
                    capacity.mark_full_until(Instant::now() + retry_after);
                }
                Entry::Full
            }
            // Without the shared counters, the deployment's own limits are
            // kept by this instance, as they are without Redis.
            Err(Refusal::Unavailable(_)) if !with_keys => {
                if capacity.try_take(Instant::now()) {
                    Entry::Go(Hold::none())
                } else {
                    Entry::Full
                }
            }
            Err(refusal) => Entry::Refused(refused(refusal)),
        }
    }

    /// The key's reservation, to settle when the request ends (with the
    /// first attempt's deployment, if that attempt served it).
    pub fn take_keys(&self) -> Option<Reservation> {
        let mut held = self.held();
        held.joint = false;
        let renewal = held.renewal.take();
        held.grant.take().map(|grant| Reservation {
            limiter: self.limiter.clone(),
            grant,
            renewal,
        })
    }

    /// The first attempt failed: its deployment's part of the key's
    /// reservation is settled now, with nothing used.
    fn release_joint(&self) {
        let mut held = self.held();
        if !std::mem::take(&mut held.joint) {
            return;
        }
        if let Some(grant) = held.grant.as_mut() {
            let at = grant.scopes.len().saturating_sub(1);
            let tail = self.limiter.split(grant, at);
            drop(held);
            spawn_settle(self.limiter.clone(), tail, 0, 0);
        }
    }

    /// Adds the `x-ratelimit-*` headers for the key's own limits.
    pub fn add_headers(&self, headers: &mut HeadLines) {
        let Some(remaining) = self.held().remaining else {
            return;
        };
        if remaining.requests.is_none() && remaining.tokens.is_none() {
            return;
        }
        if let Some((limit, left)) = remaining.requests {
            headers.push_counted(LIMIT_REQUESTS, limit, b"");
            headers.push_counted(REMAINING_REQUESTS, left, b"");
        }
        if let Some((limit, left)) = remaining.tokens {
            headers.push_counted(LIMIT_TOKENS, limit, b"");
            headers.push_counted(REMAINING_TOKENS, left, b"");
        }
        // Whole seconds until the window resets, at least 1.
        let reset = remaining.reset.as_secs().max(1);
        headers.push_counted(RESET_REQUESTS, reset, b"s");
        headers.push_counted(RESET_TOKENS, reset, b"s");
    }
}

/// The rate-limit headers of a keyed answer, in OpenAI's names.
const LIMIT_REQUESTS: LineStart = LineStart::new("x-ratelimit-limit-requests: ");
const REMAINING_REQUESTS: LineStart = LineStart::new("x-ratelimit-remaining-requests: ");
const LIMIT_TOKENS: LineStart = LineStart::new("x-ratelimit-limit-tokens: ");
const REMAINING_TOKENS: LineStart = LineStart::new("x-ratelimit-remaining-tokens: ");
const RESET_REQUESTS: LineStart = LineStart::new("x-ratelimit-reset-requests: ");
const RESET_TOKENS: LineStart = LineStart::new("x-ratelimit-reset-tokens: ");

/// What one attempt holds of its deployment's shared capacity. Dropped, it
/// is settled as unused (the attempt failed, lost a hedge race, or was cut
/// off); the answering attempt's hold is settled with the request's usage.
#[must_use]
pub(crate) struct Hold(Option<Holding>);

enum Holding {
    /// The deployment's scope is the last of the key's reservation.
    Joint(Arc<Admission>),
    /// Boxed: a grant is over a hundred bytes, and a hold rides in every
    /// attempt's ticket and in the trace, which it would make that much
    /// larger (more to copy) for every request; a hold of its own is taken
    /// only where a shared limiter counts a deployment's requests or tokens
    /// per minute apart from a key's reservation (no key, or an attempt
    /// after the first).
    Own(Arc<dyn Limiter>, Box<Grant>),
}

impl Hold {
    pub fn none() -> Hold {
        Hold(None)
    }

    /// Settles with what the request used on this deployment.
    pub fn settle(mut self, usage: &Usage) {
        match self.0.take() {
            // Settled with the key's reservation, which it is part of.
            Some(Holding::Joint(_)) | None => {}
            Some(Holding::Own(limiter, grant)) => {
                spawn_settle(limiter, *grant, tokens_of(usage), 0);
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        match self.0.take() {
            Some(Holding::Joint(admission)) => admission.release_joint(),
            Some(Holding::Own(limiter, grant)) => spawn_settle(limiter, *grant, 0, 0),
            None => {}
        }
    }
}

fn rules_of(limits: &Limits) -> Rules {
    Rules {
        requests_per_minute: limits.rpm,
        tokens_per_minute: limits.tpm,
        max_concurrent: limits.max_concurrent,
        budget: limits.budget_nanos.map(|limit| Budget {
            limit,
            period: limits
                .budget_period
                .unwrap_or(switchboard_core::keys::Period::Total),
        }),
    }
}

/// What the request is, for its reservation.
pub(crate) struct Demand<'a> {
    pub model: &'a str,
    pub end_user: Option<String>,
    /// An upper bound on the prompt's tokens.
    pub prompt_tokens: u64,
    /// The most the request may generate, if it says.
    pub max_output_tokens: Option<u64>,
    /// How many answers it asks for (OpenAI's `n`).
    pub choices: u64,
    /// The worst-case cost of `tokens` (see `worst_case_cost`).
    pub worst_case_cost: &'a (dyn Fn(u64, u64) -> Nanos + Sync),
}

/// The limiter's scope of an end user: within its key, so that the same
/// user name sent with two keys has two sets of limits.
pub(crate) fn user_scope(key_id: &str, end_user: &str) -> Scope {
    // Joined on the stack when short, so that the id is one allocation
    // (a `String` made into an `Arc<str>` is two).
    let mut joined = [0u8; 128];
    let length = key_id.len() + 1 + end_user.len();
    if let Some(joined) = joined.get_mut(..length) {
        joined[..key_id.len()].copy_from_slice(key_id.as_bytes());
        joined[key_id.len()] = b'/';
        joined[key_id.len() + 1..].copy_from_slice(end_user.as_bytes());
        // Two texts joined by an ASCII byte are text.
        if let Ok(joined) = std::str::from_utf8(joined) {
            return Scope {
                kind: ScopeKind::User,
                id: Arc::from(joined),
            };
        }
    }
    Scope {
        kind: ScopeKind::User,
        id: format!("{key_id}/{end_user}").into(),
    }
}

/// Who is calling, for the record.
pub(crate) fn caller(principal: &Principal, end_user: Option<String>) -> Caller {
    match principal {
        Principal::Key(entry) => Caller {
            key_id: Some(entry.key_id.clone()),
            team_id: entry.team_id.clone(),
            end_user,
        },
        Principal::Open | Principal::Master => Caller {
            end_user,
            ..Caller::default()
        },
    }
}

/// Checks a key's access to the model and prepares the reservation of its
/// limits (made by `Admission::reserve_keys` or `Admission::enter`). The
/// master key and an open gateway are not limited, but with a shared
/// limiter their requests still reserve deployments' capacity.
pub(crate) fn admit(
    principal: &Principal,
    limiter: &Arc<dyn Limiter>,
    demand: Demand<'_>,
) -> Result<Arc<Admission>, ApiError> {
    let shared = limiter.is_shared();
    let scopes = match principal {
        Principal::Key(entry) => key_scopes(entry, &demand)?,
        Principal::Open | Principal::Master => Vec::new(),
    };
    // Every choice (`n`) may generate the whole output.
    let output = demand
        .max_output_tokens
        .unwrap_or(DEFAULT_OUTPUT_RESERVE)
        .saturating_mul(demand.choices.max(1));
    let cost = if scopes.is_empty() {
        0
    } else {
        (demand.worst_case_cost)(demand.prompt_tokens, output)
    };
    // A budget cannot hold on a model whose price is unknown.
    if cost == 0
        && demand.prompt_tokens.saturating_add(output) > 0
        && scopes.iter().any(|(_, rules)| rules.budget.is_some())
    {
        return Err(ApiError::unpriced_model(demand.model));
    }
    Ok(Arc::new(Admission {
        limiter: limiter.clone(),
        shared,
        tokens: demand.prompt_tokens.saturating_add(output),
        cost,
        held: Mutex::new(Held {
            pending: scopes,
            ..Held::default()
        }),
    }))
}

/// The scopes a key's request reserves (none when none has a limit), once
/// the key, its team and its end user's limits allow the model.
fn key_scopes(entry: &KeyEntry, demand: &Demand<'_>) -> Result<Vec<(Scope, Rules)>, ApiError> {
    let KeyEntry {
        record,
        team,
        key_id,
        team_id,
    } = entry;
    if !record.limits.allows_model(demand.model)
        || team
            .as_ref()
            .is_some_and(|team| !team.limits.allows_model(demand.model))
        || (demand.end_user.is_some()
            && record
                .user_limits
                .as_ref()
                .is_some_and(|limits| !limits.allows_model(demand.model)))
    {
        return Err(ApiError::model_not_allowed(demand.model));
    }
    // The key's own scope first: its room is what the headers report.
    let mut scopes = vec![(
        Scope {
            kind: ScopeKind::Key,
            id: key_id.clone(),
        },
        rules_of(&record.limits),
    )];
    if let (Some(team), Some(team_id)) = (team, team_id) {
        scopes.push((
            Scope {
                kind: ScopeKind::Team,
                id: team_id.clone(),
            },
            rules_of(&team.limits),
        ));
    }
    if let (Some(user), Some(limits)) = (&demand.end_user, &record.user_limits) {
        scopes.push((user_scope(&record.id, user), rules_of(limits)));
    }
    if scopes.iter().all(|(_, rules)| rules.is_unlimited()) {
        scopes.clear();
    }
    Ok(scopes)
}

fn scope_name(scope: &Scope) -> String {
    format!("{} `{}`", scope.kind.as_str(), scope.id)
}

fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Limited {
            scope,
            limit,
            retry_after,
        } => ApiError::rate_limited(&scope_name(&scope), limit, retry_after),
        Refusal::Budget {
            scope,
            limit,
            used,
            period,
        } => ApiError::budget_exceeded(&scope_name(&scope), limit, used, period.as_str()),
        Refusal::Unavailable(why) => ApiError::limits_unavailable(&why),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use switchboard_policy::limits::{LimitFuture, MemoryLimiter, Period, Remaining, Reserving};

    use super::*;

    /// A keyed request allocates its admission, and every attempt carries
    /// a hold: word-aligned, the admission comes from mimalloc's plain
    /// entry point, and a hold stays small.
    #[test]
    fn admissions_and_holds_are_word_aligned() {
        let word = std::mem::size_of::<usize>();
        assert!(std::mem::align_of::<Admission>() <= word);
        assert!(std::mem::align_of::<Hold>() <= word);
        assert!(std::mem::size_of::<Hold>() <= 4 * word);
    }

    /// A limiter whose reservations lapse after a minute, noting renewals
    /// and settles.
    #[derive(Default)]
    struct Leased {
        memory: MemoryLimiter,
        renewals: Mutex<Vec<u128>>,
        settles: Mutex<Vec<u128>>,
    }

    impl Limiter for Leased {
        fn start_reserve(&self, ask: Ask) -> Reserving<'_> {
            self.memory.start_reserve(ask)
        }
        fn settle(&self, grant: Grant, tokens: u64, cost: Nanos) -> LimitFuture<'_, ()> {
            self.settles.lock().unwrap().push(grant.id.get());
            self.memory.settle(grant, tokens, cost)
        }
        fn budget_used(
            &self,
            scope: &Scope,
            period: Period,
            now_ms: u64,
        ) -> LimitFuture<'_, Nanos> {
            self.memory.budget_used(scope, period, now_ms)
        }
        fn lease(&self) -> Option<Duration> {
            Some(Duration::from_secs(60))
        }
        fn renew(&self, grant: &Grant, _now_ms: u64) -> LimitFuture<'_, bool> {
            self.renewals.lock().unwrap().push(grant.id.get());
            Box::pin(std::future::ready(true))
        }
    }

    #[test]
    fn an_end_users_scope_is_named_within_its_key() {
        for user in ["alice", "ü-名前", &"u".repeat(200), ""] {
            let scope = user_scope("key_01", user);
            assert_eq!(scope.kind, ScopeKind::User);
            assert_eq!(&*scope.id, format!("key_01/{user}"), "{user}");
        }
        let long_key = "k".repeat(127);
        assert_eq!(&*user_scope(&long_key, "").id, format!("{long_key}/"));
        assert_eq!(&*user_scope(&long_key, "x").id, format!("{long_key}/x"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_is_renewed_every_half_lease_until_settled() {
        let leased = Arc::new(Leased::default());
        let limiter: Arc<dyn Limiter> = leased.clone();
        let grant = Grant {
            id: switchboard_policy::limits::GrantId::new(42),
            part: 0,
            scopes: Vec::new(),
            tokens: 0,
            cost: 0,
            minute: 0,
            now_ms: 0,
            remaining: Remaining::default(),
        };
        let reservation = Reservation {
            renewal: Renewal::start(limiter.clone(), grant.clone(), Duration::from_secs(60)),
            limiter,
            grant,
        };
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(leased.renewals.lock().unwrap().is_empty());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(*leased.renewals.lock().unwrap(), [42]);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(leased.renewals.lock().unwrap().len(), 2);

        reservation.settle(&Usage::default(), 0);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(*leased.settles.lock().unwrap(), [42]);
        assert_eq!(
            leased.renewals.lock().unwrap().len(),
            2,
            "no renewal after the settle"
        );
    }
}
