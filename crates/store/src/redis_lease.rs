//! Leases: slices of a busy scope's limits, reserved in Redis in one
//! operation and handed out to this instance's requests without a round
//! trip each.
//!
//! **Why.** A request counted in Redis costs a reserve and a settle in the
//! limiter's script: Redis's own CPU, on the same cores as everything else,
//! and most of what a virtual key adds to a request (see `BENCHMARKS.md`).
//! A key, team or deployment serving many requests a second instead takes a
//! *lease*: one reserve of many requests at once (`Counts`: so many
//! requests, so many in flight, so many tokens and so much cost), counted
//! in the same counters as single requests. Requests are then counted
//! against the lease here, in memory, and the lease is settled in Redis
//! with what its requests actually used. Nothing is counted twice or left
//! out: every counter in Redis holds the lease whole until it is settled,
//! so instances together can never pass a limit, exactly as with one
//! reserve per request.
//!
//! **When.** A scope takes a lease only when
//! - it is busy: at least `HOT` requests in the previous `SPAN` on this
//!   instance and more in the current one (a lease costs what two requests
//!   cost in Redis; a single burst is counted request by request);
//! - every limit it has is large: a lease is at most an eighth of each
//!   limit (`SLICE`), and must hold at least `MIN_REQUESTS` requests of
//!   the current request's size;
//! - it is far from its limits: Redis grants a lease only if every counter
//!   stays within half its limit after it (`Counts::share` = 2). Past
//!   half, every request of the scope is counted in Redis one by one,
//!   exactly as without leases, so a limit's last half is never handed out
//!   in slices.
//!
//! A request is served from leases only if every limited scope it touches
//! has one with room; otherwise it goes to Redis alone as before (and a
//! lease is fetched in the background for the scopes that lacked one).
//!
//! **How long.** A lease serves requests for at most `SPAN` (250 ms), and
//! only within the minute it was taken in (per-minute counters are per
//! minute). Then it is *retired*: its unused part (requests, tokens,
//! requests in flight, held cost) is given back to Redis at once, with the
//! spend and tokens of its finished requests (the settle's part 1); what
//! its requests still in flight hold is settled when the last one ends
//! (part 2), or at once (a whole settle) if none is. A ticker retires idle
//! leases, so nothing unused stays taken for longer than about `SPAN`.
//! Each lease is sized from the previous span's demand (twice the requests
//! seen, within the caps above).
//!
//! **What it costs.** A request may be refused while another instance
//! holds part of a limit it has not used: by at most that instance's
//! slices (an eighth of the limit each), for at most about `SPAN`, and
//! only once the counters have passed half the limit in that time. Headers
//! (`x-ratelimit-remaining-*`) of a request served from a lease count the
//! lease's own requests and the counters as they were when it was taken.
//! If the instance dies, its leases lapse like any reservation (after the
//! limiter's lease, 15 minutes by default), and the spend of requests
//! finished since its last settle (at most `SPAN`'s) is missing from
//! Redis's counters, not from the request log. A split grant's parts
//! settle into their leases separately, as with single reserves.
//!
//! Leases are on by default (`RedisLimiterConfig::leases`); off, every
//! request is counted in Redis by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use switchboard_policy::limits::{Ask, Grant, Nanos, Remaining, Rules, Scope, minute_of};

use super::{Counts, Inner, Op, OpKind, REDIS_MAX, cancel_op, fresh_grant_id, lock};
use switchboard_core::mix::FnvBuild;

/// How long a lease serves requests before it is retired.
pub(crate) const SPAN: Duration = Duration::from_millis(250);
/// Requests a scope must see within a span to take a lease.
const HOT: u64 = 4;
/// A lease takes at most this fraction of a limit (1/SLICE) ...
const SLICE: u64 = 8;
/// ... and holds room for at least this many requests.
const MIN_REQUESTS: u64 = 8;
/// Redis grants a lease only while every counter stays within its limit
/// divided by this.
const SHARE: u64 = 2;
/// A scope state unused this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// What a lease holds, or a request takes from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Amounts {
    requests: u64,
    in_flight: u64,
    tokens: u64,
    cost: Nanos,
}

/// A lease's use at the moment it was retired: what its settle's part 1
/// kept for the requests then still in flight.
#[derive(Debug, Clone, Copy)]
struct Retired {
    in_flight: u64,
    tokens: u64,
    held: Nanos,
    spent: Nanos,
}

#[derive(Debug)]
struct Lease {
    scope: Scope,
    rules: Rules,
    /// The minute it counts in and was taken for, and the time it was
    /// asked at (its budget window).
    minute: u64,
    now_ms: u64,
    born: Instant,
    granted: Amounts,
    /// Requests taken so far, those in flight, tokens counted (worst case
    /// for those in flight, actual for those finished), cost held by those
    /// in flight and spent by those finished.
    taken: u64,
    in_flight: u64,
    tokens: u64,
    held: Nanos,
    spent: Nanos,
    /// The most requests it had in flight at once.
    peak: u64,
    /// The scope's requests and tokens of the minute before the lease (for
    /// headers).
    before: (u64, u64),
    retired: Option<Retired>,
}

impl Lease {
    fn has_room(&self, ask: &Ask) -> bool {
        let rules = &self.rules;
        self.taken < self.granted.requests
            && (rules.max_concurrent.is_none() || self.in_flight < self.granted.in_flight)
            && (rules.tokens_per_minute.is_none()
                || self.tokens.saturating_add(ask.tokens) <= self.granted.tokens)
            && (rules.budget.is_none()
                || self
                    .held
                    .saturating_add(self.spent)
                    .saturating_add(ask.cost)
                    <= self.granted.cost)
    }

    fn take(&mut self, ask: &Ask) {
        self.taken += 1;
        self.in_flight += 1;
        self.peak = self.peak.max(self.in_flight);
        self.tokens = self.tokens.saturating_add(ask.tokens);
        self.held = self.held.saturating_add(ask.cost);
    }

    /// A request it served ended, with its actual tokens and cost.
    fn finish(&mut self, grant: &Grant, tokens: u64, cost: Nanos) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.tokens = self
            .tokens
            .saturating_sub(grant.tokens)
            .saturating_add(tokens);
        self.held = self.held.saturating_sub(grant.cost);
        self.spent = self.spent.saturating_add(cost);
    }

    fn op(&self, id: u128, part: u8, kind: OpKind) -> Op {
        Op {
            kind,
            id,
            part,
            scopes: vec![(self.scope.clone(), self.rules)],
            minute: self.minute,
            now_ms: self.now_ms,
        }
    }

    /// Stops it serving requests; the settle that gives back what it did
    /// not use (all of it, a whole settle, if nothing is in flight).
    fn retire(&mut self, id: u128) -> Op {
        let retired = Retired {
            in_flight: self.in_flight,
            tokens: self.tokens,
            held: self.held,
            spent: self.spent,
        };
        self.retired = Some(retired);
        let part = if retired.in_flight == 0 { 0 } else { 1 };
        self.op(
            id,
            part,
            OpKind::Settle {
                token_change: signed(retired.tokens) - signed(self.granted.tokens),
                held: self.granted.cost.saturating_sub(retired.held),
                cost: retired.spent,
                request_change: signed(self.taken) - signed(self.granted.requests),
                released: self.granted.in_flight - retired.in_flight.min(self.granted.in_flight),
            },
        )
    }

    /// The settle of what a retired lease kept for its requests in flight,
    /// once the last has ended.
    fn drained(&self, id: u128, retired: Retired) -> Op {
        self.op(
            id,
            2,
            OpKind::Settle {
                token_change: signed(self.tokens) - signed(retired.tokens),
                held: retired.held,
                cost: self.spent.saturating_sub(retired.spent),
                request_change: 0,
                released: retired.in_flight.min(self.granted.in_flight),
            },
        )
    }

    /// The renewal of what it holds in Redis now.
    fn renewal(&self, id: u128, now_ms: u64) -> Op {
        let (in_flight, held) = match self.retired {
            Some(retired) => (retired.in_flight, retired.held),
            None => (self.granted.in_flight, self.granted.cost),
        };
        self.op(
            id,
            2,
            OpKind::Renew {
                to_minute: minute_of(now_ms),
                held,
                in_flight,
            },
        )
    }

    fn remaining(&self, reset: Duration) -> Remaining {
        let rules = &self.rules;
        let left = |limit: u64, used: u64| (limit, limit.saturating_sub(used));
        Remaining {
            requests: rules
                .requests_per_minute
                .map(|limit| left(limit, self.before.0.saturating_add(self.taken))),
            tokens: rules
                .tokens_per_minute
                .map(|limit| left(limit, self.before.1.saturating_add(self.tokens))),
            reset,
        }
    }
}

fn signed(value: u64) -> i64 {
    value.min(REDIS_MAX) as i64
}

/// What this instance knows of a scope: its lease, and its recent demand.
#[derive(Debug)]
struct ScopeState {
    rules: Rules,
    current: Option<u128>,
    acquiring: bool,
    /// No lease is asked for before then (one was refused or failed).
    quiet_until: Option<Instant>,
    /// Demand in the span starting at `window`, and in the one before.
    window: Instant,
    seen: Demand,
    last: Demand,
    /// The most requests the last lease replaced had in flight at once,
    /// its room for them, and whether requests found it full (the next one
    /// then has twice the room).
    peak: u64,
    last_in_flight: u64,
    dry: bool,
    last_used: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct Demand {
    requests: u64,
    tokens: u64,
    cost: Nanos,
}

impl ScopeState {
    fn new(rules: Rules, now: Instant) -> ScopeState {
        ScopeState {
            rules,
            current: None,
            acquiring: false,
            quiet_until: None,
            window: now,
            seen: Demand::default(),
            last: Demand::default(),
            peak: 0,
            last_in_flight: 0,
            dry: false,
            last_used: now,
        }
    }

    /// Its lease is replaced: what it learnt about requests in flight.
    fn replaced(&mut self, lease: &Lease) {
        self.peak = lease.peak;
        self.last_in_flight = lease.granted.in_flight;
        self.dry =
            lease.rules.max_concurrent.is_some() && lease.in_flight >= lease.granted.in_flight;
    }

    fn note(&mut self, ask: &Ask, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window);
        if elapsed >= SPAN {
            self.last = if elapsed >= 2 * SPAN {
                Demand::default()
            } else {
                self.seen
            };
            self.seen = Demand::default();
            self.window = now;
        }
        self.seen.requests += 1;
        self.seen.tokens = self.seen.tokens.saturating_add(ask.tokens);
        self.seen.cost = self.seen.cost.saturating_add(ask.cost);
        self.last_used = now;
    }

    /// The lease to ask for now, if the scope is busy and its limits large.
    fn wanted(&self, ask: &Ask, now: Instant) -> Option<(Amounts, bool)> {
        if self.acquiring || self.quiet_until.is_some_and(|until| now < until) {
            return None;
        }
        // Busy for a whole span, not in one burst: a burst is counted in
        // Redis request by request, exactly.
        if self.last.requests < HOT {
            return None;
        }
        let busy = self.seen.requests.max(self.last.requests);
        let rules = &self.rules;
        let requests = busy.saturating_mul(2).max(MIN_REQUESTS);
        let requests = match rules.requests_per_minute {
            Some(limit) if limit / SLICE < MIN_REQUESTS => return None,
            Some(limit) => requests.min(limit / SLICE),
            None => requests,
        };
        let mut peak = self.peak;
        if self.dry {
            peak = peak.max(self.last_in_flight);
        }
        let in_flight = match rules.max_concurrent {
            Some(limit) if limit / SLICE < MIN_REQUESTS => return None,
            Some(limit) => peak.saturating_mul(2).max(MIN_REQUESTS).min(limit / SLICE),
            None => 0,
        };
        // Room for `requests` of the larger of this request and the
        // average one seen.
        let per_request =
            |sum: u64, count: u64, this: u64| this.max(sum.checked_div(count).unwrap_or(0));
        let demand = if self.last.requests > self.seen.requests {
            self.last
        } else {
            self.seen
        };
        let tokens = match rules.tokens_per_minute {
            Some(limit) => {
                let each = per_request(demand.tokens, demand.requests, ask.tokens);
                if each.saturating_mul(MIN_REQUESTS) > limit / SLICE {
                    return None;
                }
                each.saturating_mul(requests).min(limit / SLICE)
            }
            None => 0,
        };
        let cost = match rules.budget {
            Some(budget) => {
                let each = per_request(demand.cost, demand.requests, ask.cost);
                if each.saturating_mul(MIN_REQUESTS) > budget.limit / SLICE {
                    return None;
                }
                each.saturating_mul(requests).min(budget.limit / SLICE)
            }
            None => 0,
        };
        Some((
            Amounts {
                requests,
                in_flight,
                tokens,
                cost,
            },
            rules.budget.is_some(),
        ))
    }
}

/// A lease to ask Redis for.
struct Wanted {
    scope: Scope,
    rules: Rules,
    amounts: Amounts,
    minute: u64,
    now_ms: u64,
    check_epoch: bool,
}

enum Fit {
    Serve {
        renew: bool,
    },
    /// Not served from leases; the lease stays.
    Pass,
    /// Not served; the lease (if any) is retired and another asked for.
    Replace,
}

/// What the table decided and the caller sends once the lock is let go.
#[derive(Default)]
pub(crate) struct Actions {
    settles: Vec<Op>,
    wanted: Vec<Wanted>,
}

impl Actions {
    fn is_empty(&self) -> bool {
        self.settles.is_empty() && self.wanted.is_empty()
    }
}

#[derive(Default)]
struct Table {
    /// By scope: end users' ids are the client's, so these keep SipHash.
    scopes: HashMap<Scope, ScopeState>,
    leases: ById<Lease>,
    /// Grants served from leases: for each of the grant's scopes, the lease
    /// it took from (`None`: an unlimited scope, or a part settled).
    grants: ById<Vec<Option<u128>>>,
    ticking: bool,
}

/// Leases and grants by id: ids are drawn at random, so FNV suffices.
type ById<T> = HashMap<u128, T, FnvBuild>;

/// Stops a lease serving requests, and queues the settle that gives back
/// what it did not use.
fn retire(leases: &mut ById<Lease>, id: u128, actions: &mut Actions) {
    let Some(lease) = leases.get_mut(&id) else {
        return;
    };
    if lease.retired.is_some() {
        return;
    }
    actions.settles.push(lease.retire(id));
    if lease.in_flight == 0 {
        leases.remove(&id);
    }
}

/// Whether the scope's lease can serve the request, or must be
/// replaced.
fn fit(
    leases: &ById<Lease>,
    state: &ScopeState,
    rules: &Rules,
    ask: &Ask,
    minute: u64,
    now: Instant,
) -> Fit {
    let Some(lease) = state.current.and_then(|id| leases.get(&id)) else {
        return Fit::Replace;
    };
    if lease.minute > minute {
        // A request timed just before the minute a newer lease is for.
        return Fit::Pass;
    }
    if state.rules != *rules
        || lease.retired.is_some()
        || lease.minute < minute
        || now.saturating_duration_since(lease.born) >= SPAN
        || !lease.has_room(ask)
    {
        return Fit::Replace;
    }
    // Past three quarters of its span or of its requests, the next
    // lease is asked for, so that it is there when this one ends.
    let age = now.saturating_duration_since(lease.born);
    let renew = age >= SPAN * 3 / 4 || lease.taken * 4 >= lease.granted.requests * 3;
    Fit::Serve { renew }
}

/// This instance's leases (see the module documentation).
#[derive(Default)]
pub(crate) struct Leases {
    table: Mutex<Table>,
    /// Leases Redis granted, and requests served from them.
    pub granted: AtomicU64,
    pub served: AtomicU64,
}

impl Leases {
    /// Serves `ask` from leases, if every limited scope has one with room;
    /// otherwise `None`, and the leases to ask for. Either way, the
    /// actions to take once the lock is let go.
    fn try_serve(&self, ask: &Ask, check_epoch: bool, actions: &mut Actions) -> Option<Grant> {
        let now = Instant::now();
        let minute = minute_of(ask.now_ms);
        let mut table = lock(&self.table);
        let Table {
            scopes,
            leases,
            grants,
            ..
        } = &mut *table;
        let mut shares: Vec<Option<u128>> = Vec::with_capacity(ask.scopes.len());
        let mut served = true;
        // One lookup per scope: its state, noted, checked and (if it needs
        // one) given a new lease to ask for.
        for (scope, rules) in &ask.scopes {
            if rules.is_unlimited() {
                shares.push(None);
                continue;
            }
            let state = match scopes.get_mut(scope) {
                Some(state) => state,
                None => scopes
                    .entry(scope.clone())
                    .or_insert_with(|| ScopeState::new(*rules, now)),
            };
            state.note(ask, now);
            let want = match fit(leases, state, rules, ask, minute, now) {
                Fit::Serve { renew } => {
                    shares.push(state.current);
                    renew
                }
                Fit::Pass => {
                    served = false;
                    false
                }
                Fit::Replace => {
                    served = false;
                    if let Some(current) = state.current.take() {
                        if let Some(lease) = leases.get(&current) {
                            state.replaced(lease);
                        }
                        retire(leases, current, actions);
                    }
                    true
                }
            };
            state.rules = *rules;
            if want && let Some((amounts, budgeted)) = state.wanted(ask, now) {
                state.acquiring = true;
                actions.wanted.push(Wanted {
                    scope: scope.clone(),
                    rules: *rules,
                    amounts,
                    minute,
                    now_ms: ask.now_ms,
                    check_epoch: check_epoch && budgeted,
                });
            }
        }
        if !served || shares.iter().all(Option::is_none) {
            return None;
        }
        for id in shares.iter().flatten() {
            if let Some(lease) = leases.get_mut(id) {
                lease.take(ask);
            }
        }
        let reset =
            Duration::from_millis((minute + 1) * 60_000 - ask.now_ms.min((minute + 1) * 60_000));
        let remaining = match shares.first() {
            Some(Some(id)) => leases.get(id).map(|lease| lease.remaining(reset)),
            _ => None,
        }
        .unwrap_or(Remaining {
            reset,
            ..Remaining::default()
        });
        let id = fresh_grant_id();
        grants.insert(id, shares);
        self.served.fetch_add(1, Ordering::Relaxed);
        Some(Grant {
            id,
            part: 0,
            scopes: ask.scopes.clone(),
            tokens: ask.tokens,
            cost: ask.cost,
            minute,
            now_ms: ask.now_ms,
            remaining,
        })
    }

    /// Settles a grant served from leases into them; gives it back if it
    /// was not.
    fn settle(
        &self,
        grant: Grant,
        tokens: u64,
        cost: Nanos,
        actions: &mut Actions,
    ) -> Result<(), Grant> {
        let mut table = lock(&self.table);
        let Table { leases, grants, .. } = &mut *table;
        let Some(shares) = grants.get_mut(&grant.id) else {
            return Err(grant);
        };
        // A part's scopes are the first (part 1) or the last (part 2) of
        // the whole grant's.
        let count = grant.scopes.len().min(shares.len());
        let range = if grant.part == 2 {
            shares.len() - count..shares.len()
        } else {
            0..count
        };
        for share in &mut shares[range] {
            let Some(id) = share.take() else {
                continue;
            };
            let Some(lease) = leases.get_mut(&id) else {
                continue;
            };
            lease.finish(&grant, tokens, cost);
            if let Some(retired) = lease.retired
                && lease.in_flight == 0
            {
                actions.settles.push(lease.drained(id, retired));
                leases.remove(&id);
            }
        }
        if shares.iter().all(Option::is_none) {
            grants.remove(&grant.id);
        }
        Ok(())
    }

    /// The renewals of the leases a grant served from them took from;
    /// `None` if it was not served from leases.
    fn renewals(&self, grant: &Grant, now_ms: u64) -> Option<Vec<Op>> {
        let table = lock(&self.table);
        let shares = table.grants.get(&grant.id)?;
        Some(
            shares
                .iter()
                .flatten()
                .filter_map(|id| table.leases.get(id).map(|lease| lease.renewal(*id, now_ms)))
                .collect(),
        )
    }

    /// Retires leases past their span, and forgets scopes long unused.
    fn tick(&self, actions: &mut Actions) {
        let now = Instant::now();
        let mut table = lock(&self.table);
        let Table { scopes, leases, .. } = &mut *table;
        scopes.retain(|_, state| {
            if let Some(id) = state.current {
                let stale = leases.get(&id).is_none_or(|lease| {
                    lease.retired.is_some() || now.saturating_duration_since(lease.born) >= SPAN
                });
                if stale {
                    if let Some(lease) = leases.get(&id) {
                        state.replaced(lease);
                    }
                    retire(leases, id, actions);
                    state.current = None;
                }
            }
            state.current.is_some()
                || state.acquiring
                || now.saturating_duration_since(state.last_used) < FORGET_AFTER
        });
        // A lease whose scope is gone (it cannot be current then).
        let orphans: Vec<u128> = leases
            .iter()
            .filter(|(_, lease)| {
                lease.retired.is_none() && now.saturating_duration_since(lease.born) >= SPAN
            })
            .map(|(id, _)| *id)
            .collect();
        for id in orphans {
            retire(leases, id, actions);
        }
    }

    /// Installs a lease Redis granted, retiring the one it replaces.
    fn install(&self, wanted: &Wanted, id: u128, answer: [i64; 3], actions: &mut Actions) -> bool {
        self.granted.fetch_add(1, Ordering::Relaxed);
        let mut table = lock(&self.table);
        let Table {
            scopes,
            leases,
            ticking,
            ..
        } = &mut *table;
        let amounts = wanted.amounts;
        let before = (
            (answer[1].max(0) as u64).saturating_sub(amounts.requests),
            (answer[2].max(0) as u64).saturating_sub(amounts.tokens),
        );
        leases.insert(
            id,
            Lease {
                scope: wanted.scope.clone(),
                rules: wanted.rules,
                minute: wanted.minute,
                now_ms: wanted.now_ms,
                born: Instant::now(),
                granted: amounts,
                taken: 0,
                in_flight: 0,
                tokens: 0,
                held: 0,
                spent: 0,
                peak: 0,
                before,
                retired: None,
            },
        );
        match scopes.get_mut(&wanted.scope) {
            Some(state) => {
                state.acquiring = false;
                if let Some(old) = state.current.replace(id) {
                    if let Some(lease) = leases.get(&old) {
                        state.replaced(lease);
                    }
                    retire(leases, old, actions);
                }
            }
            // Forgotten meanwhile: the lease goes back at once.
            None => retire(leases, id, actions),
        }
        !std::mem::replace(ticking, true)
    }

    /// A lease was not granted: none is asked for again for a span.
    fn refused(&self, scope: &Scope) {
        let mut table = lock(&self.table);
        if let Some(state) = table.scopes.get_mut(scope) {
            state.acquiring = false;
            state.quiet_until = Some(Instant::now() + SPAN);
        }
    }
}

impl Inner {
    /// `reserve` from leases, when every limited scope of the request has
    /// one with room; sends what that decided (settles of retired leases,
    /// requests for new ones).
    pub(crate) fn serve_from_leases(
        self: &Arc<Self>,
        ask: &Ask,
        check_epoch: bool,
    ) -> Option<Grant> {
        let leases = self.leases.as_ref()?;
        let mut actions = Actions::default();
        let grant = leases.try_serve(ask, check_epoch, &mut actions);
        self.act(actions);
        grant
    }

    /// Settles a grant served from leases into them; gives it back if it
    /// was not.
    pub(crate) fn settle_into_leases(
        self: &Arc<Self>,
        grant: Grant,
        tokens: u64,
        cost: Nanos,
    ) -> Result<(), Grant> {
        let Some(leases) = self.leases.as_ref() else {
            return Err(grant);
        };
        let mut actions = Actions::default();
        let result = leases.settle(grant, tokens, cost, &mut actions);
        self.act(actions);
        result
    }

    /// Renews the leases a grant served from them holds (`None`: it was
    /// not).
    pub(crate) fn lease_renewals(&self, grant: &Grant, now_ms: u64) -> Option<Vec<Op>> {
        self.leases.as_ref()?.renewals(grant, now_ms)
    }

    fn act(self: &Arc<Self>, actions: Actions) {
        if actions.is_empty() {
            return;
        }
        for op in actions.settles {
            self.send_detached(op);
        }
        for wanted in actions.wanted {
            self.acquire(wanted);
        }
    }

    /// Asks Redis for a lease, on a task; installs it if granted.
    fn acquire(self: &Arc<Self>, wanted: Wanted) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            if let Some(leases) = &self.leases {
                leases.refused(&wanted.scope);
            }
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            let Some(leases) = inner.leases.as_ref() else {
                return;
            };
            let amounts = wanted.amounts;
            let op = Arc::new(Op {
                kind: OpKind::Reserve {
                    tokens: amounts.tokens,
                    cost: amounts.cost,
                    check_epoch: wanted.check_epoch,
                    counts: Counts {
                        requests: amounts.requests,
                        in_flight: amounts.in_flight,
                        share: SHARE,
                    },
                },
                id: fresh_grant_id(),
                part: 0,
                scopes: vec![(wanted.scope.clone(), wanted.rules)],
                minute: wanted.minute,
                now_ms: wanted.now_ms,
            });
            let result = inner.submit(op.clone()).await;
            match result {
                Ok(answer @ [0, ..]) => {
                    let mut actions = Actions::default();
                    let start_ticker = leases.install(&wanted, op.id, answer, &mut actions);
                    inner.act(actions);
                    if start_ticker {
                        tokio::spawn(tick(Arc::downgrade(&inner)));
                    }
                }
                Ok(_) => leases.refused(&wanted.scope),
                Err(failure) => {
                    leases.refused(&wanted.scope);
                    if failure.may_have_applied()
                        && let Some(cancel) = cancel_op(&op)
                    {
                        inner.retry_later(
                            Arc::new(cancel),
                            "a lease whose answer was lost is given back",
                        );
                    }
                }
            }
        });
    }
}

/// Retires leases past their span every half span, for as long as the
/// limiter lives.
async fn tick(inner: Weak<Inner>) {
    let mut interval = tokio::time::interval(SPAN / 2);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(leases) = inner.leases.as_ref() else {
            return;
        };
        let mut actions = Actions::default();
        leases.tick(&mut actions);
        inner.act(actions);
    }
}
