//! Rate limits, concurrency and budgets: what a request must reserve before
//! it goes upstream, and settle when it ends.
//!
//! A request touches several scopes at once (its end user, its virtual key,
//! the key's team, the deployment), each with its own `Rules`. `Limiter::reserve`
//! checks and reserves all of them in one atomic step, so that concurrent
//! requests can never together overshoot a limit: a budget is charged the
//! request's worst-case cost up front, and `Limiter::settle` replaces that
//! with the actual cost once it is known. Money is counted in nano-dollars
//! (`Nanos`), so a price in USD per million tokens is exactly a number of
//! nano-dollars per thousand tokens and no rounding accumulates.
//!
//! Windows are fixed and aligned to UTC: requests and tokens per minute
//! count within the current minute; budgets within the current day, ISO
//! week (from Monday), calendar month, or forever.
//!
//! `MemoryLimiter` keeps the counters of one instance; the store crate's
//! Redis limiter shares them between instances, with the same semantics.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// US dollars times 10⁹.
pub type Nanos = u64;

/// What a scope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    /// An end user named by the request (OpenAI's `user`, Anthropic's
    /// `metadata.user_id`), within its key.
    User,
    Key,
    Team,
    /// A deployment's own requests and tokens per minute (id: its name),
    /// reserved here only with a shared limiter (see `Limiter::is_shared`).
    Deployment,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::User => "user",
            ScopeKind::Key => "key",
            ScopeKind::Team => "team",
            ScopeKind::Deployment => "deployment",
        }
    }
}

/// One thing limits apply to, such as `(Key, "key_01H...")`. The id is
/// shared, so that a key's scope is made once, not on each request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scope {
    pub kind: ScopeKind,
    pub id: Arc<str>,
}

/// The id's bytes, then the kind as one byte: two writes where the derived
/// `Hash` made three (the kind as a whole word, the id, a terminator), for
/// about 100 instructions fewer in each limiter's map. The single trailing
/// byte keeps the input unambiguous: equal inputs are equal scopes.
impl std::hash::Hash for Scope {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.id.as_bytes());
        state.write_u8(self.kind as u8);
    }
}

pub use switchboard_core::keys::Period;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    pub limit: Nanos,
    pub period: Period,
}

/// The limits of one scope; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Rules {
    pub requests_per_minute: Option<u64>,
    /// Prompt and completion tokens per minute (the first request of a
    /// minute is let through whatever its size).
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub budget: Option<Budget>,
}

impl Rules {
    pub fn is_unlimited(&self) -> bool {
        *self == Rules::default()
    }
}

/// What a request asks to reserve.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Distinct scopes (each is checked against the counters as the
    /// scopes before it in the list left them).
    pub scopes: Vec<(Scope, Rules)>,
    /// Worst-case tokens (prompt bound plus the most it may generate).
    pub tokens: u64,
    /// Worst-case cost.
    pub cost: Nanos,
    /// Milliseconds since the Unix epoch (UTC).
    pub now_ms: u64,
}

/// A grant's 128-bit id, kept as two words: a `u128` is aligned to 16
/// bytes, which would align every grant to 16, and with it every future,
/// ticket and allocation that holds one, through the request's whole path
/// (mimalloc serves such blocks through its slower aligned entry point, and
/// over-allocates those whose size is not a power of two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GrantId([u64; 2]);

impl GrantId {
    pub const fn new(id: u128) -> GrantId {
        GrantId([(id >> 64) as u64, id as u64])
    }

    pub const fn get(self) -> u128 {
        ((self.0[0] as u128) << 64) | self.0[1] as u128
    }
}

impl From<u128> for GrantId {
    fn from(id: u128) -> GrantId {
        GrantId::new(id)
    }
}

/// What a reservation holds, to be settled exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Names this reservation, unique among every instance's grants: a
    /// shared limiter applies a reserve or a settle carrying it at most
    /// once, so either may be retried.
    pub id: GrantId,
    /// 0 for a whole grant; 1 and 2 for the two parts of a split one
    /// (`split_off`), which a shared limiter settles once each.
    pub part: u8,
    pub scopes: Vec<(Scope, Rules)>,
    pub tokens: u64,
    pub cost: Nanos,
    /// The minute and budget windows the reservation was made in, so that
    /// settling lands in the same windows.
    pub minute: u64,
    pub now_ms: u64,
    /// What is left in the first scope (normally the key) after this
    /// request, for `x-ratelimit-*` headers.
    pub remaining: Remaining,
}

impl Grant {
    /// Splits off the scopes from `at` on into a grant of their own (same
    /// tokens, cost and windows), so that the two parts are settled
    /// separately, each exactly once.
    /// A grant splits once: its parts keep its id, as parts 1 and 2.
    pub fn split_off(&mut self, at: usize) -> Grant {
        debug_assert_eq!(self.part, 0, "a grant splits once");
        self.part = 1;
        Grant {
            part: 2,
            scopes: self.scopes.split_off(at.min(self.scopes.len())),
            remaining: Remaining {
                reset: self.remaining.reset,
                ..Remaining::default()
            },
            ..self.clone()
        }
    }
}

/// Room left in a scope, where it has a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remaining {
    pub requests: Option<(u64, u64)>,
    pub tokens: Option<(u64, u64)>,
    /// Until the minute window resets.
    pub reset: Duration,
}

/// Why a request may not go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A per-minute or concurrency limit is reached; retry after the wait.
    Limited {
        scope: Scope,
        /// `requests_per_minute`, `tokens_per_minute` or `max_concurrent`.
        limit: &'static str,
        retry_after: Duration,
    },
    /// The request's worst-case cost does not fit in the budget left.
    Budget {
        scope: Scope,
        limit: Nanos,
        /// Spent plus reserved by requests in flight.
        used: Nanos,
        period: Period,
    },
    /// The shared counters cannot be reached and the rule fails closed.
    Unavailable(String),
}

pub type LimitFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reservation's answer, given at once or to be waited for.
pub enum Reserving<'a> {
    Now(Result<Grant, Refusal>),
    Later(LimitFuture<'a, Result<Grant, Refusal>>),
}

impl Reserving<'_> {
    pub async fn answer(self) -> Result<Grant, Refusal> {
        match self {
            Reserving::Now(answer) => answer,
            Reserving::Later(future) => future.await,
        }
    }
}

/// Counters shared by the requests of one instance, or of many.
pub trait Limiter: Send + Sync + 'static {
    /// Checks every scope and reserves in all of them, or in none: at once
    /// when the limiter can answer at once (the memory limiter always, the
    /// Redis limiter from a lease), so that a keyed request allocates no
    /// future, otherwise by a future to wait for.
    fn start_reserve(&self, ask: Ask) -> Reserving<'_>;
    /// `start_reserve` as one future.
    fn reserve(&self, ask: Ask) -> LimitFuture<'_, Result<Grant, Refusal>> {
        match self.start_reserve(ask) {
            Reserving::Now(answer) => Box::pin(std::future::ready(answer)),
            Reserving::Later(future) => future,
        }
    }
    /// Ends a reservation: the request's actual tokens and cost replace the
    /// worst case, and it stops counting as concurrent. A request that
    /// never reached the upstream settles with zeros.
    fn settle(&self, grant: Grant, tokens: u64, cost: Nanos) -> LimitFuture<'_, ()>;
    /// Settles without the caller waiting for anything, when the limiter
    /// can take the settle at once (applied, or queued with its own
    /// retries); otherwise gives the grant back, for `settle` on a task.
    fn settle_detached(&self, grant: Grant, tokens: u64, cost: Nanos) -> Result<(), Grant> {
        let _ = (tokens, cost);
        Err(grant)
    }
    /// Divides a grant in two (see `Grant::split_off`): `grant` keeps the
    /// scopes before `at`, the returned grant has the others.
    fn split(&self, grant: &mut Grant, at: usize) -> Grant {
        grant.split_off(at)
    }
    /// Whether the counters are shared between instances. Then deployments'
    /// requests and tokens per minute are counted here too (scope kind
    /// `Deployment`, id the deployment's name), rather than by each
    /// instance's `Capacity`.
    fn is_shared(&self) -> bool {
        false
    }
    /// Spent and reserved in a scope's current budget window.
    fn budget_used(&self, scope: &Scope, period: Period, now_ms: u64) -> LimitFuture<'_, Nanos>;
    /// How long a reservation counts if it is neither settled nor renewed
    /// (`None`: until it is settled).
    fn lease(&self) -> Option<Duration> {
        None
    }
    /// Whether the limiter keeps this grant's reservation from lapsing by
    /// itself, so that the caller need not `renew` it.
    fn renews_itself(&self, grant: &Grant) -> bool {
        let _ = grant;
        false
    }
    /// Makes a reservation still in progress count for another lease from
    /// `now_ms`; one already settled stays settled. Answers whether the
    /// counters could be reached (false: try again sooner).
    fn renew(&self, grant: &Grant, now_ms: u64) -> LimitFuture<'_, bool> {
        let _ = (grant, now_ms);
        Box::pin(std::future::ready(true))
    }
    /// The instance is stopping, its requests ended: gives back whatever
    /// the limiter holds for requests to come (the Redis limiter's
    /// leases), within its own time bound.
    fn shutdown(&self) -> LimitFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
    /// Tells the limiter that the scope has spent at least `spent` in the
    /// budget window of `now_ms` (from the request log), for a budget set
    /// or changed mid-window. Counters that already know more keep it.
    fn floor_spent(
        &self,
        scope: Scope,
        period: Period,
        now_ms: u64,
        spent: Nanos,
    ) -> LimitFuture<'_, ()> {
        let _ = (scope, period, now_ms, spent);
        Box::pin(std::future::ready(()))
    }
}

/// The minute window a time falls in.
pub fn minute_of(now_ms: u64) -> u64 {
    now_ms / 60_000
}

/// A name for the budget window a time falls in (`d20261128`, `w2026-48`,
/// `m2026-11`, `total`), the same on every instance.
pub fn budget_window(period: Period, now_ms: u64) -> String {
    let days = (now_ms / 86_400_000) as i64;
    let (year, month, day) = civil_from_days(days);
    match period {
        Period::Total => "total".to_owned(),
        Period::Daily => format!("d{year:04}{month:02}{day:02}"),
        Period::Monthly => format!("m{year:04}-{month:02}"),
        Period::Weekly => {
            // 1970-01-01 was a Thursday; Monday-based weeks.
            let monday = days - (days + 3).rem_euclid(7);
            let (year, month, day) = civil_from_days(monday);
            format!("w{year:04}{month:02}{day:02}")
        }
    }
}

/// When the budget window `now_ms` falls in began, in milliseconds since
/// the epoch (0 for a lifetime budget).
pub fn budget_window_start(period: Period, now_ms: u64) -> u64 {
    let days = (now_ms / 86_400_000) as i64;
    let first_day = match period {
        Period::Total => return 0,
        Period::Daily => days,
        Period::Weekly => days - (days + 3).rem_euclid(7),
        Period::Monthly => {
            let (year, month, _) = civil_from_days(days);
            days_from_civil(year, month, 1)
        }
    };
    first_day.max(0) as u64 * 86_400_000
}

/// Milliseconds until the budget window after `now_ms` starts (`None` for
/// a lifetime budget).
pub fn budget_reset_in(period: Period, now_ms: u64) -> Option<Duration> {
    let days = (now_ms / 86_400_000) as i64;
    let next_day = match period {
        Period::Total => return None,
        Period::Daily => days + 1,
        Period::Weekly => days - (days + 3).rem_euclid(7) + 7,
        Period::Monthly => {
            let (year, month, _) = civil_from_days(days);
            let (year, month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            days_from_civil(year, month, 1)
        }
    };
    Some(Duration::from_millis(
        (next_day as u64 * 86_400_000).saturating_sub(now_ms),
    ))
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Above this many scopes, idle ones are forgotten.
const PRUNE_AT: usize = 100_000;

/// Counters of one scope.
#[derive(Debug, Default)]
struct Counters {
    minute: u64,
    requests: u64,
    tokens: u64,
    concurrent: u64,
    /// `tokens` before the last reservation, for `give_back` (a sum that
    /// saturated cannot be undone by a subtraction).
    tokens_before: u64,
    /// Budget window → (spent, reserved).
    budget: Windows,
}

/// A scope's budget windows: the current one, and past ones only while
/// reservations made in them are still to be settled, so almost always
/// one. Found by a comparison rather than a hash (three lookups a request
/// and scope; a hash of the window cost more than the search).
#[derive(Debug, Default)]
struct Windows(Vec<(Window, (Nanos, Nanos))>);

impl Windows {
    fn get(&self, window: &Window) -> Option<&(Nanos, Nanos)> {
        self.0
            .iter()
            .find(|(held, _)| held == window)
            .map(|(_, counts)| counts)
    }

    /// The counts of `window`, added as (0, 0) if it is not there.
    fn entry(&mut self, window: Window) -> &mut (Nanos, Nanos) {
        let index = match self.0.iter().position(|(held, _)| *held == window) {
            Some(index) => index,
            None => {
                self.0.push((window, (0, 0)));
                self.0.len() - 1
            }
        };
        &mut self.0[index].1
    }

    fn retain(&mut self, mut keep: impl FnMut(&Window, &(Nanos, Nanos)) -> bool) {
        self.0.retain(|(window, counts)| keep(window, counts));
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A budget window as the memory limiter names it: its period and when it
/// began (`budget_window` names the same window for Redis, but making the
/// name costs a formatted string per scope per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    period: Period,
    start_ms: u64,
}

impl Window {
    fn of(period: Period, now_ms: u64) -> Window {
        Window {
            period,
            start_ms: budget_window_start(period, now_ms),
        }
    }
}

/// The limiter of a single instance: counters in memory, one lock for the
/// atomic check-and-reserve.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    scopes: Mutex<HashMap<Scope, Counters>>,
    /// The last grant id given (ids need only be unique here).
    last_id: AtomicU64,
}

impl MemoryLimiter {
    pub fn new() -> MemoryLimiter {
        MemoryLimiter::default()
    }

    fn reserve_now(&self, ask: Ask) -> Result<Grant, Refusal> {
        let minute = minute_of(ask.now_ms);
        let reset = Duration::from_millis((minute + 1) * 60_000 - ask.now_ms);
        let mut scopes = self
            .scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Scopes come and go (end users most of all): idle ones that hold
        // no budget are forgotten once there are many.
        if scopes.len() >= PRUNE_AT {
            scopes.retain(|_, counters| {
                counters.concurrent > 0 || counters.minute == minute || !counters.budget.is_empty()
            });
        }
        // Check and reserve scope by scope, one lookup each; a refusal
        // takes back what the scopes before it reserved, under the same
        // lock, so that a request reserves in all of them or in none.
        let mut remaining = Remaining {
            reset,
            ..Remaining::default()
        };
        for (index, (scope, rules)) in ask.scopes.iter().enumerate() {
            let taken = match scopes.get_mut(scope) {
                Some(counters) => take(counters, scope, rules, &ask, minute, reset),
                None => {
                    let mut counters = Counters::default();
                    let taken = take(&mut counters, scope, rules, &ask, minute, reset);
                    if taken.is_ok() {
                        scopes.insert(scope.clone(), counters);
                    }
                    taken
                }
            };
            match taken {
                Ok(counts) if index == 0 => {
                    remaining.requests = rules
                        .requests_per_minute
                        .map(|limit| (limit, limit.saturating_sub(counts.requests)));
                    remaining.tokens = rules
                        .tokens_per_minute
                        .map(|limit| (limit, limit.saturating_sub(counts.tokens)));
                }
                Ok(_) => {}
                Err(refusal) => {
                    for (scope, rules) in &ask.scopes[..index] {
                        if let Some(counters) = scopes.get_mut(scope) {
                            give_back(counters, rules, &ask);
                        }
                    }
                    return Err(refusal);
                }
            }
        }
        Ok(Grant {
            id: GrantId::new(u128::from(self.last_id.fetch_add(1, Ordering::Relaxed) + 1)),
            part: 0,
            scopes: ask.scopes,
            tokens: ask.tokens,
            cost: ask.cost,
            minute,
            now_ms: ask.now_ms,
            remaining,
        })
    }

    fn settle_now(&self, grant: &Grant, tokens: u64, cost: Nanos) {
        let mut scopes = self
            .scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (scope, rules) in &grant.scopes {
            let Some(counters) = scopes.get_mut(scope) else {
                continue;
            };
            counters.concurrent = counters.concurrent.saturating_sub(1);
            if counters.minute == grant.minute {
                counters.tokens = counters
                    .tokens
                    .saturating_sub(grant.tokens)
                    .saturating_add(tokens);
            }
            if let Some(budget) = rules.budget {
                let window = Window::of(budget.period, grant.now_ms);
                let entry = counters.budget.entry(window);
                entry.1 = entry.1.saturating_sub(grant.cost);
                entry.0 = entry.0.saturating_add(cost);
            }
        }
    }

    /// Adds spend recorded elsewhere (at start-up, from the store) to a
    /// scope's budget window.
    pub fn preload_spend(&self, scope: Scope, period: Period, now_ms: u64, spent: Nanos) {
        self.with_spent(scope, period, now_ms, |recorded| {
            *recorded = recorded.saturating_add(spent);
        });
    }

    /// Runs `change` on the spend recorded in a scope's current budget
    /// window.
    fn with_spent(
        &self,
        scope: Scope,
        period: Period,
        now_ms: u64,
        change: impl FnOnce(&mut Nanos),
    ) {
        let mut scopes = self
            .scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = scopes
            .entry(scope)
            .or_default()
            .budget
            .entry(Window::of(period, now_ms));
        change(&mut entry.0);
    }
}

/// The minute's counts of a scope after a reservation.
struct Counts {
    requests: u64,
    tokens: u64,
}

/// Reserves `ask` in one scope if its limits leave room, on its counters
/// (a new minute resets the minute's counts; past budget windows with
/// nothing in flight are dropped). Refused, the counters hold nothing of
/// the request.
fn take(
    counters: &mut Counters,
    scope: &Scope,
    rules: &Rules,
    ask: &Ask,
    minute: u64,
    reset: Duration,
) -> Result<Counts, Refusal> {
    if counters.minute != minute {
        counters.minute = minute;
        counters.requests = 0;
        counters.tokens = 0;
    }
    if let Some(limit) = rules.max_concurrent
        && counters.concurrent >= limit
    {
        return Err(Refusal::Limited {
            scope: scope.clone(),
            limit: "max_concurrent",
            retry_after: Duration::from_secs(1),
        });
    }
    if let Some(limit) = rules.requests_per_minute
        && counters.requests >= limit
    {
        return Err(Refusal::Limited {
            scope: scope.clone(),
            limit: "requests_per_minute",
            retry_after: reset,
        });
    }
    // A minute with nothing counted yet takes any one request, so a
    // worst case larger than the whole limit is not refused forever.
    if let Some(limit) = rules.tokens_per_minute
        && counters.tokens > 0
        && counters.tokens.saturating_add(ask.tokens) > limit
    {
        return Err(Refusal::Limited {
            scope: scope.clone(),
            limit: "tokens_per_minute",
            retry_after: reset,
        });
    }
    if let Some(budget) = rules.budget {
        let window = Window::of(budget.period, ask.now_ms);
        // Past windows are over: only reservations still in flight
        // there (to be settled) are worth keeping.
        if counters.budget.len() > 1 {
            counters
                .budget
                .retain(|name, (_, reserved)| *name == window || *reserved > 0);
        }
        let (spent, reserved) = counters.budget.get(&window).copied().unwrap_or_default();
        let used = spent.saturating_add(reserved);
        if used.saturating_add(ask.cost) > budget.limit {
            return Err(Refusal::Budget {
                scope: scope.clone(),
                limit: budget.limit,
                used,
                period: budget.period,
            });
        }
        // Within the limit, so never saturated.
        counters.budget.entry(window).1 = reserved + ask.cost;
    }
    counters.requests += 1;
    counters.tokens_before = counters.tokens;
    counters.tokens = counters.tokens.saturating_add(ask.tokens);
    counters.concurrent += 1;
    Ok(Counts {
        requests: counters.requests,
        tokens: counters.tokens,
    })
}

/// Takes back what `take` reserved in a scope, exactly, when a later scope
/// refused the request (under the same lock, so in the same minute and
/// window, and nothing else reserved in between).
fn give_back(counters: &mut Counters, rules: &Rules, ask: &Ask) {
    counters.requests = counters.requests.saturating_sub(1);
    counters.tokens = counters.tokens_before;
    counters.concurrent = counters.concurrent.saturating_sub(1);
    if let Some(budget) = rules.budget {
        let entry = counters.budget.entry(Window::of(budget.period, ask.now_ms));
        entry.1 = entry.1.saturating_sub(ask.cost);
    }
}

impl Limiter for MemoryLimiter {
    fn start_reserve(&self, ask: Ask) -> Reserving<'_> {
        Reserving::Now(self.reserve_now(ask))
    }

    fn settle(&self, grant: Grant, tokens: u64, cost: Nanos) -> LimitFuture<'_, ()> {
        self.settle_now(&grant, tokens, cost);
        Box::pin(std::future::ready(()))
    }

    fn settle_detached(&self, grant: Grant, tokens: u64, cost: Nanos) -> Result<(), Grant> {
        self.settle_now(&grant, tokens, cost);
        Ok(())
    }

    fn floor_spent(
        &self,
        scope: Scope,
        period: Period,
        now_ms: u64,
        spent: Nanos,
    ) -> LimitFuture<'_, ()> {
        self.with_spent(scope, period, now_ms, |recorded| {
            *recorded = (*recorded).max(spent);
        });
        Box::pin(std::future::ready(()))
    }

    fn budget_used(&self, scope: &Scope, period: Period, now_ms: u64) -> LimitFuture<'_, Nanos> {
        let scopes = self
            .scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let used = scopes
            .get(scope)
            .and_then(|counters| counters.budget.get(&Window::of(period, now_ms)))
            .map_or(0, |(spent, reserved)| spent + reserved);
        Box::pin(std::future::ready(used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_hash_by_kind_and_id_alike_only_when_equal() {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = |kind, id: &str| {
            BuildHasherDefault::<DefaultHasher>::default().hash_one(Scope {
                kind,
                id: Arc::from(id),
            })
        };
        assert_eq!(hash(ScopeKind::Key, "key_1"), hash(ScopeKind::Key, "key_1"));
        let distinct = [
            hash(ScopeKind::Key, "key_1"),
            hash(ScopeKind::Team, "key_1"),
            hash(ScopeKind::User, "key_1"),
            hash(ScopeKind::Deployment, "key_1"),
            hash(ScopeKind::Key, "key_2"),
            hash(ScopeKind::Key, "key_"),
            hash(ScopeKind::User, ""),
            hash(ScopeKind::Key, ""),
            // The kind's byte after an id, against an id ending in it.
            hash(ScopeKind::User, "a\u{1}"),
            hash(ScopeKind::Key, "a"),
        ];
        for (at, one) in distinct.iter().enumerate() {
            assert!(!distinct[at + 1..].contains(one), "scope {at}");
        }
    }

    #[test]
    fn grant_ids_keep_all_128_bits_in_two_words() {
        for id in [
            0,
            1,
            u128::from(u64::MAX),
            1 << 64,
            1 << 127,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(GrantId::new(id).get(), id, "{id:#x}");
            assert_eq!(GrantId::from(id), GrantId::new(id));
        }
        assert_ne!(GrantId::new(1), GrantId::new(1 << 64));
        // A grant, and what holds one, needs no more than a word's alignment.
        assert!(std::mem::align_of::<Grant>() <= std::mem::size_of::<usize>());
    }

    const NOW: u64 = 1_764_288_000_000; // 2025-11-28 00:00:00 UTC, a Friday

    fn key(id: &str) -> Scope {
        Scope {
            kind: ScopeKind::Key,
            id: id.into(),
        }
    }

    fn ask(scopes: Vec<(Scope, Rules)>, tokens: u64, cost: Nanos) -> Ask {
        Ask {
            scopes,
            tokens,
            cost,
            now_ms: NOW,
        }
    }

    #[test]
    fn windows_are_named_by_utc_calendar() {
        assert_eq!(budget_window(Period::Daily, NOW), "d20251128");
        assert_eq!(budget_window(Period::Monthly, NOW), "m2025-11");
        assert_eq!(
            budget_window(Period::Weekly, NOW),
            "w20251124",
            "the Monday before"
        );
        assert_eq!(budget_window(Period::Total, NOW), "total");
        assert_eq!(
            budget_window(Period::Weekly, NOW + 3 * 86_400_000),
            "w20251201"
        );
        assert_eq!(
            budget_reset_in(Period::Daily, NOW + 1000),
            Some(Duration::from_millis(86_400_000 - 1000))
        );
        assert_eq!(
            budget_reset_in(Period::Monthly, NOW),
            Some(Duration::from_secs(3 * 86_400))
        );
        assert_eq!(
            budget_reset_in(Period::Weekly, NOW),
            Some(Duration::from_secs(3 * 86_400))
        );
        assert_eq!(budget_reset_in(Period::Total, NOW), None);
        assert_eq!(budget_window_start(Period::Daily, NOW + 5000), NOW);
        assert_eq!(
            budget_window_start(Period::Weekly, NOW),
            NOW - 4 * 86_400_000,
            "Monday 2025-11-24"
        );
        assert_eq!(
            budget_window_start(Period::Monthly, NOW),
            NOW - 27 * 86_400_000,
            "2025-11-01"
        );
        assert_eq!(budget_window_start(Period::Total, NOW), 0);
        for days in [0i64, 59, 365, 10_000, 20_000, -1, -400] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
    }

    #[test]
    fn a_budget_is_never_overshot_by_reservations() {
        let limiter = MemoryLimiter::new();
        let rules = Rules {
            budget: Some(Budget {
                limit: 1_000,
                period: Period::Daily,
            }),
            ..Rules::default()
        };
        let mut grants = Vec::new();
        for _ in 0..10 {
            if let Ok(grant) = limiter.reserve_now(ask(vec![(key("k"), rules)], 1, 300)) {
                grants.push(grant);
            }
        }
        assert_eq!(grants.len(), 3, "300 × 3 fits in 1000, a fourth does not");
        match limiter.reserve_now(ask(vec![(key("k"), rules)], 1, 300)) {
            Err(Refusal::Budget { used, limit, .. }) => assert_eq!((used, limit), (900, 1000)),
            other => panic!("{other:?}"),
        }
        // Settling at the actual (lower) cost frees room.
        for grant in grants {
            limiter.settle_now(&grant, 1, 100);
        }
        assert!(
            limiter
                .reserve_now(ask(vec![(key("k"), rules)], 1, 700))
                .is_ok()
        );
        assert!(
            limiter
                .reserve_now(ask(vec![(key("k"), rules)], 1, 1))
                .is_err()
        );
    }

    /// A scope's requests, tokens, concurrency and budget reserved.
    fn counts(limiter: &MemoryLimiter, scope: &Scope) -> (u64, u64, u64, Nanos) {
        let scopes = limiter.scopes.lock().unwrap();
        let counters = &scopes[scope];
        let reserved = counters.budget.0.iter().map(|(_, (_, held))| held).sum();
        (
            counters.requests,
            counters.tokens,
            counters.concurrent,
            reserved,
        )
    }

    #[test]
    fn a_refusal_in_one_scope_reserves_in_none() {
        let limiter = MemoryLimiter::new();
        let open = Rules {
            requests_per_minute: Some(100),
            tokens_per_minute: Some(1_000),
            max_concurrent: Some(10),
            budget: Some(Budget {
                limit: 1_000,
                period: Period::Total,
            }),
        };
        let team = Scope {
            kind: ScopeKind::Team,
            id: "t".into(),
        };
        let tight = Rules {
            max_concurrent: Some(1),
            ..Rules::default()
        };
        let first = limiter
            .reserve_now(ask(vec![(key("a"), open), (team.clone(), tight)], 1, 0))
            .unwrap();
        assert_eq!(first.remaining.requests, Some((100, 99)));
        // Key `a` is reserved before the team refuses; key `b`, seen
        // before, too: both are given back whole.
        limiter
            .reserve_now(ask(vec![(key("b"), open)], 7, 30))
            .unwrap();
        for asker in ["a", "b"] {
            let before = counts(&limiter, &key(asker));
            let refused =
                limiter.reserve_now(ask(vec![(key(asker), open), (team.clone(), tight)], 5, 20));
            assert!(matches!(
                refused,
                Err(Refusal::Limited {
                    limit: "max_concurrent",
                    ..
                })
            ));
            assert_eq!(counts(&limiter, &key(asker)), before, "{asker}");
        }
        // A count that saturated is given back whole too.
        let untimed = Rules {
            requests_per_minute: Some(100),
            ..Rules::default()
        };
        limiter
            .reserve_now(ask(vec![(key("d"), untimed)], 7, 0))
            .unwrap();
        let refused = limiter.reserve_now(ask(
            vec![(key("d"), untimed), (team.clone(), tight)],
            u64::MAX,
            0,
        ));
        assert!(refused.is_err());
        assert_eq!(counts(&limiter, &key("d")), (1, 7, 1, 0));
        // A scope first seen in a refused request holds nothing of it.
        assert!(
            limiter
                .reserve_now(ask(vec![(key("c"), open), (team.clone(), tight)], 5, 20))
                .is_err()
        );
        assert_eq!(counts(&limiter, &key("c")), (0, 0, 0, 0));
        limiter.settle_now(&first, 1, 0);
        assert!(
            limiter
                .reserve_now(ask(vec![(key("b"), open), (team, tight)], 1, 0))
                .is_ok()
        );
    }

    #[test]
    fn the_parts_of_a_split_grant_settle_separately() {
        let limiter = MemoryLimiter::new();
        let open = Rules {
            max_concurrent: Some(1),
            tokens_per_minute: Some(1000),
            ..Rules::default()
        };
        let deployment = Scope {
            kind: ScopeKind::Deployment,
            id: "d".into(),
        };
        let capped = Rules {
            tokens_per_minute: Some(1000),
            ..Rules::default()
        };
        let mut grant = limiter
            .reserve_now(ask(
                vec![(key("k"), open), (deployment.clone(), capped)],
                400,
                0,
            ))
            .unwrap();
        let tail = limiter.split(&mut grant, 1);
        assert_eq!(grant.scopes, vec![(key("k"), open)]);
        assert_eq!(tail.scopes, vec![(deployment.clone(), capped)]);
        assert_eq!(grant.remaining.tokens, Some((1000, 600)));
        // The deployment's part goes first, with nothing used.
        limiter.settle_now(&tail, 0, 0);
        let scopes = limiter.scopes.lock().unwrap();
        assert_eq!(
            (scopes[&deployment].tokens, scopes[&key("k")].concurrent),
            (0, 1)
        );
        drop(scopes);
        limiter.settle_now(&grant, 250, 0);
        let scopes = limiter.scopes.lock().unwrap();
        assert_eq!(
            (scopes[&key("k")].tokens, scopes[&key("k")].concurrent),
            (250, 0)
        );
    }

    #[test]
    fn a_request_larger_than_the_token_limit_passes_alone_in_its_minute() {
        let limiter = MemoryLimiter::new();
        let rules = Rules {
            tokens_per_minute: Some(10),
            ..Rules::default()
        };
        assert!(
            limiter
                .reserve_now(ask(vec![(key("k"), rules)], 50, 0))
                .is_ok()
        );
        assert!(matches!(
            limiter.reserve_now(ask(vec![(key("k"), rules)], 1, 0)),
            Err(Refusal::Limited {
                limit: "tokens_per_minute",
                ..
            })
        ));
    }

    #[test]
    fn past_budget_windows_are_forgotten() {
        let limiter = MemoryLimiter::new();
        let rules = Rules {
            budget: Some(Budget {
                limit: 1_000,
                period: Period::Daily,
            }),
            ..Rules::default()
        };
        for day in 0..5 {
            let ask = Ask {
                now_ms: NOW + day * 86_400_000,
                ..ask(vec![(key("k"), rules)], 1, 10)
            };
            let grant = limiter.reserve_now(ask).unwrap();
            limiter.settle_now(&grant, 1, 10);
        }
        let scopes = limiter.scopes.lock().unwrap();
        assert_eq!(
            scopes[&key("k")].budget.len(),
            1,
            "only today's window is kept"
        );
    }

    #[test]
    fn per_minute_limits_reset_with_the_minute() {
        let limiter = MemoryLimiter::new();
        let rules = Rules {
            requests_per_minute: Some(2),
            tokens_per_minute: Some(100),
            ..Rules::default()
        };
        assert!(
            limiter
                .reserve_now(ask(vec![(key("k"), rules)], 40, 0))
                .is_ok()
        );
        match limiter.reserve_now(ask(vec![(key("k"), rules)], 70, 0)) {
            Err(Refusal::Limited {
                limit: "tokens_per_minute",
                retry_after,
                ..
            }) => assert_eq!(retry_after, Duration::from_secs(60)),
            other => panic!("{other:?}"),
        }
        assert!(
            limiter
                .reserve_now(ask(vec![(key("k"), rules)], 40, 0))
                .is_ok()
        );
        assert!(matches!(
            limiter.reserve_now(ask(vec![(key("k"), rules)], 1, 0)),
            Err(Refusal::Limited {
                limit: "requests_per_minute",
                ..
            })
        ));
        let later = Ask {
            now_ms: NOW + 60_000,
            ..ask(vec![(key("k"), rules)], 40, 0)
        };
        assert!(limiter.reserve_now(later).is_ok());
    }
}
