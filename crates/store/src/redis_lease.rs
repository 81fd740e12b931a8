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
//! seen, within the caps above); the next one is asked for at three
//! quarters of the span, and only while the current one serves. A lease
//! that served nothing (another scope of its requests never had one) is
//! followed by none for 2 s. A lease taken under limits that have since
//! changed serves nothing and goes back. The ticker also renews leases
//! whose requests are still in flight after half the limiter's lease (15
//! minutes by default), so requests served from leases need no renewal
//! of their own (`Limiter::renews_itself`); a grant served from leases is
//! marked by the top bit of its id.
//!
//! **What it costs.** A request may be refused while another instance
//! holds part of a limit it has not used: by at most that instance's
//! slices (an eighth of the limit each), for at most about `SPAN`, and
//! only once the counters have passed half the limit in that time. Headers
//! (`x-ratelimit-remaining-*`) of a request served from a lease count the
//! lease's own requests and the counters as they were when it was taken.
//! At a graceful shutdown, once requests have ended, every lease is given
//! back before the process exits (`Limiter::shutdown`, within the
//! limiter's timeout; leases still being asked for are waited for and
//! given back too). If the instance dies, its leases lapse like any
//! reservation (after the limiter's lease, 15 minutes by default), but a
//! lease's held cost is kept apart (under 10^12 plus its minute in the held hash)
//! and, when it lapses, counts as spent: Redis cannot know how much of it
//! the lease's requests spent, so it assumes all of it. A budget then reads
//! as more spent than it is (by at most what the lease held, an eighth of
//! it), never less, and cannot be overspent for the killed instance. A split grant's parts
//! settle into their leases separately, as with single reserves.
//!
//! Leases are on by default (`RedisLimiterConfig::leases`); off, every
//! request is counted in Redis by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use switchboard_policy::limits::{Ask, Grant, GrantId, Nanos, Remaining, Rules, Scope, minute_of};

use super::{Counts, Inner, Op, OpKind, REDIS_MAX, cancel_op, fresh_grant_id, lock};
use switchboard_core::mix::FnvBuild;

/// The bit of a grant's id that marks it served from leases (no other
/// grant id has it: `fresh_grant_id`).
pub(crate) const SERVED_FROM_LEASE: u128 = 1 << 127;

/// Whether a grant was served from leases (and is then renewed with them).
pub(crate) fn served_from_lease(grant: &Grant) -> bool {
    grant.id.get() & SERVED_FROM_LEASE != 0
}

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
/// A scope state unused this long is forgotten...
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// ...by the ticker, every this many ticks.
const FORGET_EVERY: u64 = 32;
/// After a lease that served nothing, how long none is asked for.
const UNUSED_QUIET: Duration = Duration::from_secs(2);

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
    /// The minute its reservation counts in, in Redis (moved by renewals),
    /// and whether a renewal is on its way.
    counts_in: u64,
    renewing: bool,
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
            id: GrantId::new(id),
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
                lease: true,
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
                lease: true,
            },
        )
    }

    /// The renewal of what it holds in Redis now. Redis holds the whole lease until its part 1 is applied, and then
    /// what part 1 left, which is known once it is retired: the script
    /// moves whichever its record says.
    fn renewal(&self, id: u128, now_ms: u64) -> Op {
        self.op(
            id,
            2,
            OpKind::Renew {
                to_minute: minute_of(now_ms),
                held: self.granted.cost,
                in_flight: self.granted.in_flight,
                after_part_one: self
                    .retired
                    .map(|retired| (retired.held, retired.in_flight.min(self.granted.in_flight))),
                lease: true,
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
    fn replaced(&mut self, lease: &Lease, now: Instant) {
        if lease.taken == 0 {
            // It served nothing (another scope of the requests never had
            // a lease): none is asked for a while.
            self.quiet_until = Some(now + UNUSED_QUIET);
        }
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
    renewals: Vec<Op>,
    start_ticker: bool,
}

impl Actions {
    fn is_empty(&self) -> bool {
        self.settles.is_empty()
            && self.wanted.is_empty()
            && self.renewals.is_empty()
            && !self.start_ticker
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
    ticks: u64,
    /// Shut down: no request is served from leases, none is asked for.
    closed: bool,
}

/// The grant of a request served from leases.
fn served_grant(id: u128, ask: Ask, remaining: Remaining) -> Grant {
    Grant {
        id: GrantId::new(id),
        part: 0,
        minute: minute_of(ask.now_ms),
        scopes: ask.scopes,
        tokens: ask.tokens,
        cost: ask.cost,
        now_ms: ask.now_ms,
        remaining,
    }
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
    if lease.rules != *rules
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
    /// Leases asked for and not yet answered (counted under the table's
    /// lock when decided, so a shutdown that closed the table sees them).
    asking: AtomicUsize,
}

impl Leases {
    /// Serves `ask` from leases, if every limited scope has one with room;
    /// otherwise `None`, and the leases to ask for. Either way, the
    /// actions to take once the lock is let go.
    #[cfg(test)]
    fn try_serve(&self, ask: &Ask, check_epoch: bool, actions: &mut Actions) -> Option<Grant> {
        let (id, remaining) = self.take(ask, check_epoch, actions)?;
        Some(served_grant(id, ask.clone(), remaining))
    }

    /// `try_serve` for the request path: the request's scopes move into
    /// its grant, or come back with the ask.
    fn serve(&self, ask: Ask, check_epoch: bool, actions: &mut Actions) -> Result<Grant, Ask> {
        match self.take(&ask, check_epoch, actions) {
            Some((id, remaining)) => Ok(served_grant(id, ask, remaining)),
            None => Err(ask),
        }
    }

    /// Takes a request from leases if every limited scope has one with
    /// room: the grant's id and the first scope's room left.
    fn take(
        &self,
        ask: &Ask,
        check_epoch: bool,
        actions: &mut Actions,
    ) -> Option<(u128, Remaining)> {
        let now = Instant::now();
        let minute = minute_of(ask.now_ms);
        let mut table = lock(&self.table);
        let Table {
            scopes,
            leases,
            grants,
            ticking,
            closed,
            ..
        } = &mut *table;
        if *closed {
            return None;
        }
        let mut shares: Vec<Option<u128>> = Vec::with_capacity(ask.scopes.len());
        let mut served = true;
        // Scopes whose lease serves, but should be followed by another.
        let mut followed: Vec<(&Scope, &Rules)> = Vec::new();
        // One lookup per scope: its state, noted, checked and (if it needs
        // one) given a new lease to ask for.
        for (scope, rules) in &ask.scopes {
            if rules.is_unlimited() {
                shares.push(None);
                continue;
            }
            let state = match scopes.get_mut(scope) {
                Some(state) => state,
                None => {
                    // The ticker forgets scopes, so it runs once there are.
                    actions.start_ticker |= !std::mem::replace(ticking, true);
                    scopes
                        .entry(scope.clone())
                        .or_insert_with(|| ScopeState::new(*rules, now))
                }
            };
            state.note(ask, now);
            let want = match fit(leases, state, rules, ask, minute, now) {
                Fit::Serve { renew } => {
                    shares.push(state.current);
                    if renew {
                        followed.push((scope, rules));
                    }
                    false
                }
                Fit::Pass => {
                    served = false;
                    false
                }
                Fit::Replace => {
                    served = false;
                    if let Some(current) = state.current.take() {
                        if let Some(lease) = leases.get(&current) {
                            state.replaced(lease, now);
                        }
                        retire(leases, current, actions);
                    }
                    true
                }
            };
            state.rules = *rules;
            if want {
                self.ask_for(state, scope, rules, ask, check_epoch, now, actions);
            }
        }
        if !served || shares.iter().all(Option::is_none) {
            return None;
        }
        // Only a lease that serves is followed by another.
        for (scope, rules) in followed {
            if let Some(state) = scopes.get_mut(scope) {
                self.ask_for(state, scope, rules, ask, check_epoch, now, actions);
            }
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
        let id = fresh_grant_id() | SERVED_FROM_LEASE;
        grants.insert(id, shares);
        self.served.fetch_add(1, Ordering::Relaxed);
        Some((id, remaining))
    }

    /// Decides to ask for a lease for the scope, if it wants one; counted
    /// as asked for at once, under the table's lock.
    #[allow(clippy::too_many_arguments)]
    fn ask_for(
        &self,
        state: &mut ScopeState,
        scope: &Scope,
        rules: &Rules,
        ask: &Ask,
        check_epoch: bool,
        now: Instant,
        actions: &mut Actions,
    ) {
        let Some((amounts, budgeted)) = state.wanted(ask, now) else {
            return;
        };
        state.acquiring = true;
        self.asking.fetch_add(1, Ordering::AcqRel);
        actions.wanted.push(Wanted {
            scope: scope.clone(),
            rules: *rules,
            amounts,
            minute: minute_of(ask.now_ms),
            now_ms: ask.now_ms,
            check_epoch: check_epoch && budgeted,
        });
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
        let Some(shares) = grants.get_mut(&grant.id.get()) else {
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
            grants.remove(&grant.id.get());
        }
        Ok(())
    }

    /// Retires leases past their span, renews those whose requests have
    /// been in flight for half the limiter's lease, and forgets scopes
    /// long unused.
    fn tick(&self, actions: &mut Actions, now_ms: u64, lease_minutes: u64) {
        let now = Instant::now();
        let mut table = lock(&self.table);
        let Table {
            scopes,
            leases,
            ticks,
            ..
        } = &mut *table;
        let stale: Vec<u128> = leases
            .iter()
            .filter(|(_, lease)| {
                lease.retired.is_none() && now.saturating_duration_since(lease.born) >= SPAN
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(lease) = leases.get(&id)
                && let Some(state) = scopes.get_mut(&lease.scope)
                && state.current == Some(id)
            {
                state.replaced(lease, now);
                state.current = None;
            }
            retire(leases, id, actions);
        }
        // A reservation lapses a lease after the minute it counts in; it is
        // moved to the current minute once half of that has passed.
        let minute = minute_of(now_ms);
        for (id, lease) in leases.iter_mut() {
            if !lease.renewing && minute >= lease.counts_in + (lease_minutes / 2).max(1) {
                lease.renewing = true;
                actions.renewals.push(lease.renewal(*id, now_ms));
            }
        }
        *ticks += 1;
        if *ticks % FORGET_EVERY == 0 {
            scopes.retain(|_, state| {
                state.current.is_some()
                    || state.acquiring
                    || now.saturating_duration_since(state.last_used) < FORGET_AFTER
            });
        }
    }

    /// Retires every lease, and serves no more requests from leases.
    fn close(&self, actions: &mut Actions) {
        let mut table = lock(&self.table);
        let Table {
            scopes,
            leases,
            closed,
            ..
        } = &mut *table;
        *closed = true;
        for state in scopes.values_mut() {
            state.current = None;
        }
        let open: Vec<u128> = leases
            .iter()
            .filter(|(_, lease)| lease.retired.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in open {
            retire(leases, id, actions);
        }
    }

    /// Installs a lease Redis granted, retiring the one it replaces.
    /// Answers whether the limiter has shut down (the lease then goes back
    /// at once).
    fn install(&self, wanted: &Wanted, id: u128, answer: [i64; 3], actions: &mut Actions) -> bool {
        self.granted.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut table = lock(&self.table);
        let Table {
            scopes,
            leases,
            closed,
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
                counts_in: wanted.minute,
                renewing: false,
                before,
                retired: None,
            },
        );
        match scopes.get_mut(&wanted.scope) {
            // Its limits changed meanwhile, or the limiter shut down: the
            // lease goes back at once.
            Some(state) if state.rules != wanted.rules || *closed => {
                state.acquiring = false;
                retire(leases, id, actions);
            }
            Some(state) => {
                state.acquiring = false;
                if let Some(old) = state.current.replace(id) {
                    if let Some(lease) = leases.get(&old) {
                        state.replaced(lease, now);
                    }
                    retire(leases, old, actions);
                }
            }
            // Forgotten meanwhile: the lease goes back at once.
            None => retire(leases, id, actions),
        }
        *closed
    }

    /// A lease's renewal came back: moved to `to`, or not (tried again).
    fn renewed(&self, id: u128, to: Option<u64>) {
        let mut table = lock(&self.table);
        if let Some(lease) = table.leases.get_mut(&id) {
            lease.renewing = false;
            if let Some(to) = to {
                lease.counts_in = lease.counts_in.max(to);
            }
        }
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
        ask: Ask,
        check_epoch: bool,
    ) -> Result<Grant, Ask> {
        let Some(leases) = self.leases.as_ref() else {
            return Err(ask);
        };
        let mut actions = Actions::default();
        let grant = leases.serve(ask, check_epoch, &mut actions);
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

    /// Retires every lease and waits (within the timeout) for Redis to
    /// take back what they did not use; no request is served from leases
    /// after.
    pub(crate) async fn close_leases(self: &Arc<Self>) {
        let Some(leases) = self.leases.as_ref() else {
            return;
        };
        let mut actions = Actions::default();
        leases.close(&mut actions);
        let settles = futures_util::future::join_all(
            actions.settles.into_iter().map(|op| self.give_back(op)),
        );
        // Leases granted after this are given back by their own task,
        // which ends once Redis has answered.
        let asked = async {
            while leases.asking.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(self.timeout, async { tokio::join!(settles, asked) })
            .await
            .is_err()
        {
            tracing::warn!("leases not given back within the timeout: they lapse with the lease");
        }
    }

    /// Settles a lease and waits for Redis's answer.
    async fn give_back(self: &Arc<Self>, op: Op) {
        if let Err(failure) = self.submit(Arc::new(op)).await {
            self.warn_unavailable(&failure, "a lease was not given back at shutdown");
        }
    }

    fn act(self: &Arc<Self>, actions: Actions) {
        if actions.is_empty() {
            return;
        }
        if actions.start_ticker
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(tick(Arc::downgrade(self)));
        }
        for op in actions.settles {
            self.send_detached(op);
        }
        for wanted in actions.wanted {
            self.acquire(wanted);
        }
        for renewal in actions.renewals {
            self.renew_lease(renewal);
        }
    }

    /// Renews a lease, on a task; notes the minute it counts in from then
    /// on if Redis moved it (otherwise the next tick tries again).
    fn renew_lease(self: &Arc<Self>, op: Op) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            let (id, to) = match op.kind {
                OpKind::Renew { to_minute, .. } => (op.id, to_minute),
                _ => return,
            };
            let moved = match inner.submit(Arc::new(op)).await {
                Ok([1, ..]) => true,
                Ok(_) => false,
                Err(failure) => {
                    inner.warn_unavailable(&failure, "a lease in use was not renewed");
                    false
                }
            };
            if let Some(leases) = inner.leases.as_ref() {
                leases.renewed(id.get(), moved.then_some(to));
            }
        });
    }

    /// Asks Redis for a lease, on a task; installs it if granted.
    fn acquire(self: &Arc<Self>, wanted: Wanted) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            if let Some(leases) = &self.leases {
                leases.refused(&wanted.scope);
                leases.asking.fetch_sub(1, Ordering::AcqRel);
            }
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            let Some(leases) = inner.leases.as_ref() else {
                return;
            };
            inner.ask_for_lease(leases, wanted).await;
            leases.asking.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// One lease asked for: installed if granted, given back at once if
    /// the limiter shut down meanwhile.
    async fn ask_for_lease(self: &Arc<Self>, leases: &Leases, wanted: Wanted) {
        let inner = self;
        {
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
                id: GrantId::new(fresh_grant_id()),
                part: 0,
                scopes: vec![(wanted.scope.clone(), wanted.rules)],
                minute: wanted.minute,
                now_ms: wanted.now_ms,
            });
            let result = inner.submit(op.clone()).await;
            match result {
                Ok(answer @ [0, ..]) => {
                    let mut actions = Actions::default();
                    if leases.install(&wanted, op.id.get(), answer, &mut actions) {
                        // Shut down meanwhile: given back before the
                        // shutdown's wait ends.
                        for op in std::mem::take(&mut actions.settles) {
                            inner.give_back(op).await;
                        }
                    }
                    inner.act(actions);
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
        }
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
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        leases.tick(&mut actions, now_ms, inner.lease_minutes);
        inner.act(actions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_policy::limits::{Budget, Period, ScopeKind};

    fn large() -> Rules {
        Rules {
            requests_per_minute: Some(1_000_000),
            tokens_per_minute: Some(100_000_000),
            max_concurrent: Some(10_000),
            budget: Some(Budget {
                limit: 1_000_000_000_000,
                period: Period::Daily,
            }),
        }
    }

    fn scope(id: &str) -> Scope {
        Scope {
            kind: ScopeKind::Key,
            id: id.into(),
        }
    }

    fn ask(scopes: &[(Scope, Rules)], tokens: u64, cost: Nanos) -> Ask {
        Ask {
            scopes: scopes.to_vec(),
            tokens,
            cost,
            now_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn a_lease_is_wanted_only_by_a_scope_busy_for_a_whole_span_with_large_limits() {
        let t0 = Instant::now();
        let one = ask(&[(scope("k"), large())], 100, 1_000);
        let mut state = ScopeState::new(large(), t0);
        for _ in 0..10 {
            state.note(&one, t0);
        }
        assert_eq!(
            state.wanted(&one, t0),
            None,
            "a burst is counted one by one"
        );
        state.note(&one, t0 + SPAN);
        let (amounts, budgeted) = state.wanted(&one, t0 + SPAN).expect("busy for a span");
        assert!(budgeted);
        assert_eq!(amounts.requests, 20, "twice the last span's requests");
        assert_eq!(amounts.in_flight, MIN_REQUESTS);
        assert_eq!(amounts.tokens, 20 * 100);
        assert_eq!(amounts.cost, 20 * 1_000);

        let mut quiet = state_like(&state);
        quiet.quiet_until = Some(t0 + 2 * SPAN);
        assert_eq!(quiet.wanted(&one, t0 + SPAN), None, "after a refusal");
        let mut asking = state_like(&state);
        asking.acquiring = true;
        assert_eq!(
            asking.wanted(&one, t0 + SPAN),
            None,
            "one request at a time"
        );

        // Limits too small for a slice of eight requests: none.
        for small in [
            Rules {
                requests_per_minute: Some(63),
                ..large()
            },
            Rules {
                max_concurrent: Some(63),
                ..large()
            },
            Rules {
                tokens_per_minute: Some(100 * 8 * 8 - 1),
                ..large()
            },
            Rules {
                budget: Some(Budget {
                    limit: 1_000 * 8 * 8 - 1,
                    period: Period::Daily,
                }),
                ..large()
            },
        ] {
            let mut state = state_like(&state);
            state.rules = small;
            assert_eq!(state.wanted(&one, t0 + SPAN), None, "{small:?}");
        }
        // A slice is at most an eighth of a limit.
        let mut capped = state_like(&state);
        capped.rules.requests_per_minute = Some(80);
        assert_eq!(capped.wanted(&one, t0 + SPAN).unwrap().0.requests, 10);
        // Room for requests in flight doubles when the last lease ran dry.
        let mut dry = state_like(&state);
        dry.peak = 8;
        dry.last_in_flight = 8;
        dry.dry = true;
        assert_eq!(dry.wanted(&one, t0 + SPAN).unwrap().0.in_flight, 16);
    }

    fn state_like(state: &ScopeState) -> ScopeState {
        ScopeState {
            rules: state.rules,
            current: None,
            acquiring: false,
            quiet_until: None,
            window: state.window,
            seen: state.seen,
            last: state.last,
            peak: state.peak,
            last_in_flight: state.last_in_flight,
            dry: state.dry,
            last_used: state.last_used,
        }
    }

    fn settle_of(op: &Op) -> (u8, i64, Nanos, Nanos, i64, u64) {
        match op.kind {
            OpKind::Settle {
                token_change,
                held,
                cost,
                request_change,
                released,
                lease: true,
            } => (op.part, token_change, held, cost, request_change, released),
            other => panic!("not a lease's settle: {other:?}"),
        }
    }

    #[test]
    fn a_lease_settled_in_two_parts_gives_back_exactly_what_was_not_used() {
        let key = scope("k");
        let one = ask(&[(key.clone(), large())], 100, 1_000);
        let mut lease = Lease {
            scope: key,
            rules: large(),
            minute: 30_000_000,
            now_ms: one.now_ms,
            born: Instant::now(),
            granted: Amounts {
                requests: 10,
                in_flight: 3,
                tokens: 1_000,
                cost: 10_000,
            },
            taken: 0,
            in_flight: 0,
            tokens: 0,
            held: 0,
            spent: 0,
            peak: 0,
            counts_in: 30_000_000,
            renewing: false,
            before: (0, 0),
            retired: None,
        };
        let grant = Grant {
            id: GrantId::new(1),
            part: 0,
            scopes: one.scopes.clone(),
            tokens: one.tokens,
            cost: one.cost,
            minute: lease.minute,
            now_ms: one.now_ms,
            remaining: Remaining::default(),
        };
        for _ in 0..3 {
            assert!(lease.has_room(&one));
            lease.take(&one);
        }
        assert!(!lease.has_room(&one), "three in flight fill its room");
        lease.finish(&grant, 40, 300);
        assert_eq!(lease.peak, 3);

        let first = lease.retire(7);
        assert_eq!(first.id.get(), 7);
        // Unused: 7 requests, 1 in flight, 1000 - 240 tokens, 10000 - 2000
        // held; spent: the finished request's 300.
        assert_eq!(settle_of(&first), (1, 240 - 1_000, 8_000, 300, -7, 1));
        lease.finish(&grant, 10, 100);
        lease.finish(&grant, 0, 0);
        let retired = lease.retired.unwrap();
        let second = lease.drained(7, retired);
        assert_eq!(settle_of(&second), (2, 50 - 240, 2_000, 100, 0, 2));

        // A lease retired with nothing in flight settles whole, at once.
        let mut idle = Lease {
            retired: None,
            taken: 0,
            in_flight: 0,
            tokens: 0,
            held: 0,
            spent: 0,
            ..lease
        };
        assert_eq!(settle_of(&idle.retire(8)), (0, -1_000, 10_000, 0, -10, 3));
    }

    #[test]
    fn requests_are_served_from_leases_only_while_every_scope_has_room() {
        let leases = Leases::default();
        let (key, team) = (scope("k"), scope("t"));
        let scopes = vec![(key.clone(), large()), (team.clone(), large())];
        let one = ask(&scopes, 100, 1_000);
        let mut actions = Actions::default();
        assert!(leases.try_serve(&one, false, &mut actions).is_none());
        let install = |scope: &Scope, requests: u64, id: u128| {
            let wanted = Wanted {
                scope: scope.clone(),
                rules: large(),
                amounts: Amounts {
                    requests,
                    in_flight: 8,
                    tokens: 100 * requests,
                    cost: 1_000 * requests,
                },
                minute: minute_of(one.now_ms),
                now_ms: one.now_ms,
                check_epoch: false,
            };
            let mut actions = Actions::default();
            leases.install(&wanted, id, [0, 500, 50_000], &mut actions);
            assert!(actions.is_empty());
        };
        install(&key, 8, 1);
        assert!(
            leases.try_serve(&one, false, &mut actions).is_none(),
            "the team has no lease yet"
        );
        install(&team, 2, 2);
        let first = leases
            .try_serve(&one, false, &mut actions)
            .expect("both have room");
        // The key's headers: its requests and tokens before the lease plus
        // this request.
        assert_eq!(
            first.remaining.requests,
            Some((1_000_000, 1_000_000 - (500 - 8) - 1))
        );
        let second = leases
            .try_serve(&one, false, &mut actions)
            .expect("room for two");
        let mut actions = Actions::default();
        assert!(
            leases.try_serve(&one, false, &mut actions).is_none(),
            "the team's lease is used up"
        );
        assert_eq!(
            actions.settles.len(),
            1,
            "the team's lease is retired (its two requests still in flight)"
        );
        assert_eq!(settle_of(&actions.settles[0]).0, 1);

        // A split grant's parts settle into their own scopes' leases; the
        // team's lease drains when its last request ends.
        let mut head = second;
        let tail = head.split_off(1);
        let mut actions = Actions::default();
        assert!(leases.settle(tail, 50, 500, &mut actions).is_ok());
        assert!(
            actions.settles.is_empty(),
            "one team request still in flight"
        );
        assert!(leases.settle(first, 50, 500, &mut actions).is_ok());
        assert_eq!(actions.settles.len(), 1);
        assert_eq!(
            settle_of(&actions.settles[0]),
            (2, 100 - 200, 2_000, 1_000, 0, 2)
        );
        assert!(leases.settle(head, 50, 500, &mut actions).is_ok());
        let table = lock(&leases.table);
        assert!(table.grants.is_empty(), "every grant settled");
        assert_eq!(table.leases[&1].in_flight, 0);
        assert_eq!(table.leases[&1].spent, 1_000);
        drop(table);

        // A grant not served from leases is given back.
        let foreign = Grant {
            id: GrantId::new(99),
            ..head_like(&one)
        };
        assert!(
            leases
                .settle(foreign, 0, 0, &mut Actions::default())
                .is_err()
        );
    }

    fn wanted_for(scope: &Scope, rules: Rules, now_ms: u64) -> Wanted {
        Wanted {
            scope: scope.clone(),
            rules,
            amounts: Amounts {
                requests: 100,
                in_flight: 8,
                tokens: 10_000,
                cost: 100_000,
            },
            minute: minute_of(now_ms),
            now_ms,
            check_epoch: false,
        }
    }

    #[test]
    fn a_lease_serves_only_the_limits_it_was_taken_for_and_none_after_shutdown() {
        let leases = Leases::default();
        let key = scope("k");
        let one = ask(&[(key.clone(), large())], 100, 1_000);
        let mut actions = Actions::default();
        assert!(leases.try_serve(&one, false, &mut actions).is_none());
        assert!(actions.start_ticker, "the first scope starts the ticker");
        leases.install(
            &wanted_for(&key, large(), one.now_ms),
            1,
            [0, 100, 10_000],
            &mut actions,
        );
        assert!(leases.try_serve(&one, false, &mut actions).is_some());

        // The key's limits change: its lease is retired, not used.
        let tighter = Rules {
            requests_per_minute: Some(500_000),
            ..large()
        };
        let changed = ask(&[(key.clone(), tighter)], 100, 1_000);
        let mut actions = Actions::default();
        assert!(leases.try_serve(&changed, false, &mut actions).is_none());
        assert_eq!(actions.settles.len(), 1);
        // A lease asked for under the old limits and granted after the
        // change goes back at once.
        let mut actions = Actions::default();
        leases.install(
            &wanted_for(&key, large(), one.now_ms),
            2,
            [0, 100, 10_000],
            &mut actions,
        );
        assert_eq!(settle_of(&actions.settles[0]).0, 0);
        assert!(
            leases
                .try_serve(&changed, false, &mut Actions::default())
                .is_none()
        );

        // Under the new limits it serves; at shutdown every lease is given
        // back and none serves again.
        leases.install(
            &wanted_for(&key, tighter, one.now_ms),
            3,
            [0, 100, 10_000],
            &mut actions,
        );
        assert!(
            leases
                .try_serve(&changed, false, &mut Actions::default())
                .is_some()
        );
        let mut actions = Actions::default();
        leases.close(&mut actions);
        assert_eq!(actions.settles.len(), 1);
        assert_eq!(
            settle_of(&actions.settles[0]).0,
            1,
            "one request still in flight"
        );
        assert!(
            leases
                .try_serve(&changed, false, &mut Actions::default())
                .is_none()
        );
        let mut actions = Actions::default();
        leases.install(
            &wanted_for(&key, tighter, one.now_ms),
            4,
            [0, 100, 10_000],
            &mut actions,
        );
        assert_eq!(
            actions.settles.len(),
            1,
            "a lease granted after shutdown goes back"
        );
    }

    #[test]
    fn leases_in_use_are_renewed_by_the_ticker_with_what_redis_holds() {
        let leases = Leases::default();
        let key = scope("k");
        let one = ask(&[(key.clone(), large())], 100, 1_000);
        let mut actions = Actions::default();
        leases.try_serve(&one, false, &mut actions);
        leases.install(
            &wanted_for(&key, large(), one.now_ms),
            1,
            [0, 100, 10_000],
            &mut actions,
        );
        let grant = leases.try_serve(&one, false, &mut actions).expect("served");
        assert!(served_from_lease(&grant));
        let minute = minute_of(one.now_ms);
        let renewals_at = |minutes: u64| {
            let mut actions = Actions::default();
            leases.tick(&mut actions, (minute + minutes) * 60_000, 15);
            actions.renewals
        };
        // Retired by the first tick once its span is over; no renewal
        // before half the lease.
        std::thread::sleep(SPAN);
        assert!(renewals_at(0).is_empty());
        assert!(lock(&leases.table).leases[&1].retired.is_some());
        assert!(renewals_at(6).is_empty());
        let renewals = renewals_at(7);
        assert_eq!(renewals.len(), 1);
        match renewals[0].kind {
            OpKind::Renew {
                to_minute,
                held,
                in_flight,
                after_part_one,
                lease: true,
            } => {
                assert_eq!((to_minute, held, in_flight), (minute + 7, 100_000, 8));
                // Retired with one request in flight, worst case held.
                assert_eq!(after_part_one, Some((1_000, 1)));
            }
            other => panic!("not a lease's renewal: {other:?}"),
        }
        assert_eq!(renewals[0].part, 2);
        assert!(renewals_at(8).is_empty(), "one renewal at a time");
        leases.renewed(1, Some(minute + 7));
        assert!(renewals_at(13).is_empty());
        assert_eq!(renewals_at(14).len(), 1, "renewed again half a lease later");
    }

    fn head_like(ask: &Ask) -> Grant {
        Grant {
            id: GrantId::new(0),
            part: 0,
            scopes: ask.scopes.clone(),
            tokens: ask.tokens,
            cost: ask.cost,
            minute: minute_of(ask.now_ms),
            now_ms: ask.now_ms,
            remaining: Remaining::default(),
        }
    }
}
