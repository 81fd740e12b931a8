//! What a virtual key may do with one request: the models it and its team
//! allow, and the reservation of its rate limits, concurrency and budgets
//! (and those of its team and of the end user the request names) before
//! the request goes upstream. The reservation is settled with the actual
//! tokens and cost when the request's `Trace` finishes, whatever the way it
//! ends. With a limiter whose reservations lapse (Redis: after the lease),
//! a timer renews the reservation every half lease until it is settled, so
//! a long request keeps counting.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use switchboard_core::Usage;
use switchboard_core::keys::Limits;
use switchboard_policy::limits::{
    Ask, Budget, Grant, Limiter, Nanos, Refusal, Rules, Scope, ScopeKind,
};

use crate::context::Principal;
use crate::error::ApiError;
use crate::keys::KeyEntry;
use crate::trace::unix_millis;

/// Output tokens reserved for a request that sets no limit of its own.
pub(crate) const DEFAULT_OUTPUT_RESERVE: u64 = 16_384;

/// Who made a request, for the record.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub key_id: Option<String>,
    pub team_id: Option<String>,
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
        let tokens = usage
            .input_tokens
            .unwrap_or(0)
            .saturating_add(usage.output_tokens.unwrap_or(0));
        let Reservation {
            limiter,
            grant,
            renewal,
        } = self;
        drop(renewal);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { limiter.settle(grant, tokens, cost).await });
            }
            Err(_) => tracing::error!("a reservation could not be settled: no runtime"),
        }
    }

    /// `x-ratelimit-*` headers for the key's own limits.
    pub fn headers(&self) -> Vec<(&'static str, HeaderValue)> {
        let remaining = &self.grant.remaining;
        let mut headers = Vec::new();
        if let Some((limit, left)) = remaining.requests {
            headers.push(("x-ratelimit-limit-requests", HeaderValue::from(limit)));
            headers.push(("x-ratelimit-remaining-requests", HeaderValue::from(left)));
        }
        if let Some((limit, left)) = remaining.tokens {
            headers.push(("x-ratelimit-limit-tokens", HeaderValue::from(limit)));
            headers.push(("x-ratelimit-remaining-tokens", HeaderValue::from(left)));
        }
        if !headers.is_empty()
            && let Ok(reset) =
                HeaderValue::from_str(&format!("{}s", remaining.reset.as_secs().max(1)))
        {
            headers.push(("x-ratelimit-reset-requests", reset.clone()));
            headers.push(("x-ratelimit-reset-tokens", reset));
        }
        headers
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

/// Who is calling, for the record.
pub(crate) fn caller(principal: &Principal, end_user: Option<String>) -> Caller {
    match principal {
        Principal::Key(entry) => Caller {
            key_id: Some(entry.record.id.clone()),
            team_id: entry.team.as_ref().map(|team| team.id.clone()),
            end_user,
        },
        Principal::Open | Principal::Master => Caller {
            end_user,
            ..Caller::default()
        },
    }
}

/// Checks a key's access to the model and reserves its limits. The master
/// key and an open gateway are not limited.
pub(crate) async fn admit(
    principal: &Principal,
    limiter: &Arc<dyn Limiter>,
    demand: Demand<'_>,
) -> Result<Option<Reservation>, ApiError> {
    let Principal::Key(entry) = principal else {
        return Ok(None);
    };
    let KeyEntry { record, team } = entry.as_ref();
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
            id: record.id.clone(),
        },
        rules_of(&record.limits),
    )];
    if let Some(team) = team {
        scopes.push((
            Scope {
                kind: ScopeKind::Team,
                id: team.id.clone(),
            },
            rules_of(&team.limits),
        ));
    }
    if let (Some(user), Some(limits)) = (&demand.end_user, &record.user_limits) {
        scopes.push((
            Scope {
                kind: ScopeKind::User,
                id: format!("{}/{user}", record.id),
            },
            rules_of(limits),
        ));
    }
    if scopes.iter().all(|(_, rules)| rules.is_unlimited()) {
        return Ok(None);
    }
    // Every choice (`n`) may generate the whole output.
    let output = demand
        .max_output_tokens
        .unwrap_or(DEFAULT_OUTPUT_RESERVE)
        .saturating_mul(demand.choices.max(1));
    let cost = (demand.worst_case_cost)(demand.prompt_tokens, output);
    // A budget cannot hold on a model whose price is unknown.
    if cost == 0
        && demand.prompt_tokens.saturating_add(output) > 0
        && scopes.iter().any(|(_, rules)| rules.budget.is_some())
    {
        return Err(ApiError::unpriced_model(demand.model));
    }
    let ask = Ask {
        scopes,
        tokens: demand.prompt_tokens.saturating_add(output),
        cost,
        now_ms: unix_millis().max(0) as u64,
    };
    match limiter.reserve(ask).await {
        Ok(grant) => Ok(Some(Reservation {
            renewal: limiter
                .lease()
                .and_then(|lease| Renewal::start(limiter.clone(), grant.clone(), lease)),
            limiter: limiter.clone(),
            grant,
        })),
        Err(refusal) => Err(refused(refusal)),
    }
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

    use switchboard_policy::limits::{LimitFuture, MemoryLimiter, Period, Remaining};

    use super::*;

    /// A limiter whose reservations lapse after a minute, noting renewals
    /// and settles.
    #[derive(Default)]
    struct Leased {
        memory: MemoryLimiter,
        renewals: Mutex<Vec<u128>>,
        settles: Mutex<Vec<u128>>,
    }

    impl Limiter for Leased {
        fn reserve(&self, ask: Ask) -> LimitFuture<'_, Result<Grant, Refusal>> {
            self.memory.reserve(ask)
        }
        fn settle(&self, grant: Grant, tokens: u64, cost: Nanos) -> LimitFuture<'_, ()> {
            self.settles.lock().unwrap().push(grant.id);
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
            self.renewals.lock().unwrap().push(grant.id);
            Box::pin(std::future::ready(true))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_is_renewed_every_half_lease_until_settled() {
        let leased = Arc::new(Leased::default());
        let limiter: Arc<dyn Limiter> = leased.clone();
        let grant = Grant {
            id: 42,
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
