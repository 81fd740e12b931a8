//! `RedisLimiter`: the rate limits, concurrency limits and budgets of
//! `switchboard_policy::limits`, shared by every gateway instance through
//! one Redis, with the semantics of `MemoryLimiter`.
//!
//! **One round trip.** `reserve`, `settle`, `renew` and `budget_used` are
//! each one call of the Lua script `redis_limiter.lua` (EVALSHA; the script is
//! loaded once per Redis process, on the first NOSCRIPT). Reserve checks
//! every scope (concurrency, requests and tokens per minute, budget:
//! spent + held + cost <= limit), and only if all pass reserves in all of
//! them, atomically, so instances can never together overshoot a limit.
//! Window names (`minute_of`, `budget_window`) are computed here from the
//! time the caller passes in and sent as arguments, so every instance and
//! the script agree on them.
//!
//! **Keys.** `<prefix>{sb}:<kind>:<escaped id>:<counter>`, where the id keeps
//! `[A-Za-z0-9_.-]` and percent-encodes every other byte (so `{`, `}`,
//! `:` and spaces never reach a key name raw, and two ids never share a
//! key). Counters: `inflight` (hash: minute of reservation → requests in
//! flight), `m:<minute>` (hash: `r` requests, `t` tokens), `spent:<window>`
//! (nano-dollars), `held:<window>` (hash: minute of reservation →
//! nano-dollars reserved). Only limits a scope has are counted. Beside
//! them, `<prefix>{sb}:grant:<id>` records one reservation (below).
//!
//! **Each reserve and settle applies at most once.** Every `Grant` carries
//! an id drawn at reserve time (`fresh_grant_id`: 64 random bits per
//! process, 64 unique within it). The reserve script records the id with
//! the minute the reservation counts in and its answer, for as long as the
//! reservation can count (the lease plus two minutes); a repeat of the
//! reserve (the retry after a dropped connection) answers the same and
//! counts nothing. The settle script marks the record done and releases
//! only what the record says was reserved: a repeated settle does nothing;
//! a settle without a record (the grant was given while Redis was
//! unreachable, its reserve never arrived, or its lease lapsed) records
//! only the spend, and leaves a done record so that a reserve arriving
//! after it is not counted.
//!
//! **One hash tag, `{sb}`, for every key.** Redis Cluster runs a script only
//! if all its keys live in one slot, and a request's scopes span its user,
//! key, team and deployment: no narrower tag (per key, per team) can group
//! them, because a team's counters are shared with all its keys and a
//! deployment's with every team. The cost: one slot, so one primary, holds
//! and serves every counter of the limiter; a cluster adds availability,
//! not throughput, for it. (Each call is a few hash operations; one Redis
//! primary serves well over 50,000 of them a second.)
//!
//! **Expiry.** Minute counters live 2 minutes. A budget's spend lives until
//! its window ends plus a day (so the last window can still be read);
//! lifetime budgets never expire. Requests in flight and budget holds are
//! kept per minute of reservation, and a reservation counts only for the
//! `lease` (15 minutes by default) after it was made or last renewed: if
//! an instance crashes, or a settle is lost for good, its in-flight count
//! and its held cost decay when the lease ends, even on a scope that stays
//! busy (a single counter with a refreshed TTL would keep the leak as long
//! as traffic continues). A request still running renews its reservation
//! (`Limiter::renew`, the script's `renew`): the server does so every half
//! lease, moving the request and its held cost from the minute they count
//! in to the current one, which the grant's record then names, so its
//! settle releases them there. A renewal that fails is tried again within
//! 30 seconds; a request whose instance cannot reach Redis for more than
//! half a lease stops counting. Both hashes expire whole when no
//! reservation has touched them for the lease plus two minutes.
//!
//! **Counters lost.** A Redis flushed, or restarted without persistence,
//! forgets budgets' spend, which would then be handed out again. The key
//! `<prefix>{sb}:epoch` marks counters seeded from the durable request log;
//! with a `Reseed` source installed (the server installs one reading its
//! store), a reserve covering a budget finds the marker missing inside its
//! script, counts nothing and answers so. The limiter then asks the source
//! for every key's and team's spend in its current window, floors the
//! `spent` counters to it, writes the marker (all in calls of the script,
//! the marker last), and sends the reserve again: a second round trip only
//! after a loss, and one reseed for all the requests that found it at once
//! (they wait on it). A first start on an empty Redis is seeded the same
//! way. If the source fails, budgeted requests are refused (or admitted
//! uncounted, failing open) for a second before it is tried again. What
//! this cannot restore: reservations in flight at the loss (their settles
//! find no record and record only their spend), spend settled before the
//! loss whose records the writer had not yet committed, end users'
//! budgets (the log is not summed per end user), and counters evicted
//! while the marker stays (run Redis with `maxmemory-policy noeviction`).
//! Requests without a budget never look at the marker. The marker is one
//! per prefix, so instances sharing a prefix must share a request log
//! (`storage.redis_prefix` separates gateways on one Redis).
//!
//! **When Redis cannot be reached.** Every call is bounded by `timeout`
//! (2 s by default), retried once immediately after a dropped connection
//! (the auto-reconnecting `ConnectionManager` reports one error after an
//! idle drop), and after a connection failure Redis is left alone for
//! `outage_pause` (1 s) so an outage does not add the timeout to every
//! request. Failing open, `reserve` grants without counting (warning at
//! most every 5 s); failing closed, it refuses with `Refusal::Unavailable`.
//! A reserve that got no answer may still have been applied by Redis (a
//! timeout, a connection lost after sending): refused, it is cancelled
//! later by a settle of nothing under its id; granted, its own settle
//! releases it. A settle that fails (and such a cancel) is sent again off
//! the request path, after 250 ms and then twice as long each time up to
//! 10 s, for up to the lease, by a task of the limiter's; at most 16,384
//! wait at once, and those beyond, or still failing after the lease, or
//! waiting when the process ends, are lost: their reservations lapse with
//! the lease and their spend is missing from the counters (the request log
//! has it). `budget_used` answers 0 when Redis is unreachable.
//!
//! **Numbers.** Increments travel as decimal strings; comparisons inside
//! the script use Lua doubles, exact below 2^53 nano-dollars (about nine
//! million dollars). Values are capped at `i64::MAX`, Redis's integer range.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Script, ScriptInvocation, Value};
use switchboard_core::mix::splitmix64;
use switchboard_policy::limits::{
    Ask, Grant, LimitFuture, Limiter, Nanos, Period, Refusal, Remaining, Rules, Scope,
    budget_reset_in, budget_window, minute_of,
};

/// The hash tag in every key: one Redis Cluster slot for all counters.
pub const HASH_TAG: &str = "{sb}";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis_limiter.lua")));

/// Redis integers are signed 64-bit.
const REDIS_MAX: u64 = i64::MAX as u64;
const MINUTE_KEY_TTL_SECS: u64 = 120;
/// How long a budget window's spend outlives the window.
const BUDGET_MARGIN: Duration = Duration::from_secs(86_400);
/// At most one warning about an unreachable Redis per this interval.
const WARN_EVERY: Duration = Duration::from_secs(5);
/// The longest lease accepted: a week.
const MAX_LEASE_MINUTES: u64 = 7 * 24 * 60;
/// At most this many settles wait to be retried; more are lost (their
/// reservations lapse with the lease).
const MAX_RETRYING: usize = 16_384;
/// The first wait before a failed settle is sent again, doubled up to
/// `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// After a failed reseed, how long budgeted requests are refused (or
/// admitted uncounted, failing open) before the next attempt.
const RESEED_RETRY: Duration = Duration::from_secs(1);
/// Budgets floored per script call when reseeding.
const RESEED_CHUNK: usize = 500;

/// How a `RedisLimiter` behaves; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct RedisLimiterConfig {
    /// Grant (true) or refuse (false) when Redis cannot be reached: for
    /// rate and concurrency limits.
    pub fail_open: bool,
    /// The same choice for requests a budget covers (refusing by default
    /// even when rate limits fail open: money is not to be overspent).
    pub fail_open_budgets: bool,
    /// Prepended to every key, so several gateways (or tests) can share a
    /// Redis. Braces are escaped: the hash tag must stay the only one.
    pub prefix: String,
    /// The most any call may take, connecting included.
    pub timeout: Duration,
    /// How long a reservation counts if it is neither settled nor renewed
    /// (the server renews every half lease while a request runs). Rounded
    /// up to whole minutes, at most a week.
    pub lease: Duration,
    /// After a connection failure, how long calls skip Redis.
    pub outage_pause: Duration,
}

impl Default for RedisLimiterConfig {
    fn default() -> RedisLimiterConfig {
        RedisLimiterConfig {
            fail_open: false,
            fail_open_budgets: false,
            prefix: "switchboard:".to_owned(),
            timeout: Duration::from_secs(2),
            lease: Duration::from_secs(15 * 60),
            outage_pause: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisLimiterError {
    /// The URL does not parse, or asks for something this build lacks
    /// (such as TLS). The URL itself is not repeated: it may hold a password.
    #[error("invalid Redis URL for the limiter: {0}")]
    Url(String),
    #[error("the limiter's Redis cannot be reached: {0}")]
    Unreachable(String),
}

/// Rate limits, concurrency and budgets shared between instances through
/// Redis. See the module documentation for the design and its trade-offs.
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

/// What a `RedisLimiter` shares with its settles being retried.
struct Inner {
    connection: ConnectionManager,
    prefix: String,
    fail_open: bool,
    fail_open_budgets: bool,
    timeout: Duration,
    lease_minutes: u64,
    outage_pause: Duration,
    paused_until: Mutex<Option<Instant>>,
    warned_at: Mutex<Option<Instant>>,
    warnings_suppressed: AtomicU64,
    /// Settles (and cancels) waiting to be retried.
    retrying: AtomicUsize,
    /// Where budgets' spend is found again after the counters were lost.
    reseed: OnceLock<Arc<dyn Reseed>>,
    /// Held by the one reseed in progress.
    reseeding: tokio::sync::Mutex<()>,
    /// Reseeds done: a request that saw the marker missing before the
    /// count moved need not reseed again.
    reseeds: AtomicU64,
    /// When the last reseed failed: for `RESEED_RETRY`, requests that find
    /// the marker missing are refused without trying again.
    reseed_failed_at: Mutex<Option<Instant>>,
}

/// Where a `RedisLimiter` finds budgets' spend again when its counters
/// were lost (Redis flushed, or restarted without persistence): the
/// durable request log, which the server reads.
pub trait Reseed: Send + Sync + 'static {
    /// Every budget's spend in its window of `now_ms`.
    fn budget_spend(&self, now_ms: u64) -> LimitFuture<'_, Result<Vec<SpentIn>, String>>;
}

/// What a scope has spent in the budget window of a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpentIn {
    pub scope: Scope,
    pub period: Period,
    pub spent: Nanos,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection is left out: its address may carry a password.
        formatter
            .debug_struct("RedisLimiter")
            .field("prefix", &self.inner.prefix)
            .field("fail_open", &self.inner.fail_open)
            .field("timeout", &self.inner.timeout)
            .field("lease_minutes", &self.inner.lease_minutes)
            .finish_non_exhaustive()
    }
}

/// Why a call did not get an answer from Redis.
#[derive(Debug)]
enum Failure {
    Paused,
    TimedOut(Duration),
    Redis(RedisError),
    Reply(String),
    /// The counters were lost and could not be restored.
    Lost(String),
}

impl Failure {
    fn is_connection_level(&self) -> bool {
        match self {
            Failure::Paused | Failure::TimedOut(_) => true,
            Failure::Redis(error) => {
                error.is_io_error() || error.is_connection_dropped() || error.is_timeout()
            }
            Failure::Reply(_) | Failure::Lost(_) => false,
        }
    }

    /// Whether Redis may have run the call although no answer came: the
    /// request may have been sent before the connection failed.
    fn may_have_applied(&self) -> bool {
        match self {
            Failure::TimedOut(_) => true,
            Failure::Redis(error) => {
                !error.is_connection_refusal()
                    && (error.is_io_error() || error.is_connection_dropped() || error.is_timeout())
            }
            Failure::Paused | Failure::Reply(_) | Failure::Lost(_) => false,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Paused => formatter.write_str("skipped after a recent connection failure"),
            Failure::TimedOut(timeout) => write!(formatter, "no answer within {timeout:?}"),
            Failure::Redis(error) => write!(formatter, "{error}"),
            Failure::Reply(reply) => write!(formatter, "unexpected reply {reply}"),
            Failure::Lost(why) => write!(
                formatter,
                "its counters were lost and are not restored yet: {why}"
            ),
        }
    }
}

enum Request {
    Script(ScriptInvocation<'static>),
    Ping,
}

impl Request {
    async fn send(&self, connection: &mut ConnectionManager) -> RedisResult<Value> {
        match self {
            Request::Script(invocation) => invocation.invoke_async(connection).await,
            Request::Ping => redis::cmd("PING").query_async(connection).await,
        }
    }
}

impl RedisLimiter {
    /// Connects with the default settings. An unreachable Redis is not an
    /// error here (the connection is retried on use, and `fail_open`
    /// decides what requests get meanwhile); only a bad URL is. Must run
    /// within a Tokio runtime, which drives the connection.
    /// `fail_open` applies to every rule, budgets included.
    pub async fn connect(url: &str, fail_open: bool) -> Result<RedisLimiter, RedisLimiterError> {
        RedisLimiter::connect_with(
            url,
            RedisLimiterConfig {
                fail_open,
                fail_open_budgets: fail_open,
                ..RedisLimiterConfig::default()
            },
        )
        .await
    }

    /// Connects with explicit settings; see `connect`. Waits at most
    /// `config.timeout` for a first answer, and logs a warning without one.
    pub async fn connect_with(
        url: &str,
        config: RedisLimiterConfig,
    ) -> Result<RedisLimiter, RedisLimiterError> {
        let client =
            redis::Client::open(url).map_err(|error| RedisLimiterError::Url(error.to_string()))?;
        // No reconnection retries inside the manager: a failed attempt
        // surfaces at once (bounded by our timeout), and the next call
        // starts a new one.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(0);
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|error| RedisLimiterError::Url(error.to_string()))?;
        let limiter = RedisLimiter {
            inner: Arc::new(Inner {
                connection,
                prefix: escape_prefix(&config.prefix),
                fail_open: config.fail_open,
                fail_open_budgets: config.fail_open_budgets,
                timeout: config.timeout,
                lease_minutes: config
                    .lease
                    .as_secs()
                    .div_ceil(60)
                    .clamp(1, MAX_LEASE_MINUTES),
                outage_pause: config.outage_pause,
                paused_until: Mutex::new(None),
                warned_at: Mutex::new(None),
                warnings_suppressed: AtomicU64::new(0),
                retrying: AtomicUsize::new(0),
                reseed: OnceLock::new(),
                reseeding: tokio::sync::Mutex::new(()),
                reseeds: AtomicU64::new(0),
                reseed_failed_at: Mutex::new(None),
            }),
        };
        if let Err(error) = limiter.ping().await {
            tracing::warn!(
                %error,
                fail_open = limiter.inner.fail_open,
                "the shared limiter's Redis does not answer yet"
            );
        }
        Ok(limiter)
    }

    /// A limiter like this one whose keys start with another prefix (braces
    /// escaped), such as a random one per test.
    pub fn with_prefix(self, prefix: &str) -> RedisLimiter {
        let inner = &self.inner;
        RedisLimiter {
            inner: Arc::new(Inner {
                connection: inner.connection.clone(),
                prefix: escape_prefix(prefix),
                fail_open: inner.fail_open,
                fail_open_budgets: inner.fail_open_budgets,
                timeout: inner.timeout,
                lease_minutes: inner.lease_minutes,
                outage_pause: inner.outage_pause,
                paused_until: Mutex::new(None),
                warned_at: Mutex::new(None),
                warnings_suppressed: AtomicU64::new(0),
                retrying: AtomicUsize::new(0),
                reseed: OnceLock::new(),
                reseeding: tokio::sync::Mutex::new(()),
                reseeds: AtomicU64::new(0),
                reseed_failed_at: Mutex::new(None),
            }),
        }
    }

    /// Installs where budgets' spend is found again when the counters were
    /// lost. Without it, lost counters go unnoticed. Set once; a second
    /// call changes nothing.
    pub fn with_reseed(self, source: Arc<dyn Reseed>) -> RedisLimiter {
        let _ = self.inner.reseed.set(source);
        self
    }

    /// How many times this limiter has found the counters lost and seeded
    /// budgets again.
    pub fn reseeds(&self) -> u64 {
        self.inner.reseeds.load(Ordering::Relaxed)
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Answers when Redis does (readiness).
    pub async fn ping(&self) -> Result<(), RedisLimiterError> {
        self.inner
            .call(&Request::Ping)
            .await
            .map(drop)
            .map_err(|failure| RedisLimiterError::Unreachable(failure.to_string()))
    }

    /// `reserve` under a grant id the caller chooses. A repeat with the
    /// same id (a retry whose first answer was lost) answers as the first
    /// did and counts nothing again; after the grant is settled, a repeat
    /// is refused as `Unavailable`. `reserve` itself draws a fresh id.
    pub async fn reserve_as(&self, ask: Ask, id: u128) -> Result<Grant, Refusal> {
        self.inner.reserve_shared(ask, id).await
    }

    /// Settles and cancels that failed and are being retried.
    pub fn settles_retrying(&self) -> usize {
        self.inner.retrying.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// `<prefix>{sb}:<kind>:<escaped id>`.
    fn scope_base(&self, scope: &Scope) -> String {
        format!(
            "{}{HASH_TAG}:{}:{}",
            self.prefix,
            scope.kind.as_str(),
            escape_id(&scope.id)
        )
    }

    /// The four keys of a scope, in the script's order.
    fn scope_keys(&self, scope: &Scope, rules: &Rules, minute: u64, now_ms: u64) -> [String; 4] {
        let base = self.scope_base(scope);
        let window = rules.budget.map_or_else(
            || "none".to_owned(),
            |budget| budget_window(budget.period, now_ms),
        );
        [
            format!("{base}:inflight"),
            format!("{base}:m:{minute}"),
            format!("{base}:spent:{window}"),
            format!("{base}:held:{window}"),
        ]
    }

    /// `<prefix>{sb}:epoch`: exists once budgets were seeded.
    fn epoch_key(&self) -> String {
        format!("{}{HASH_TAG}:epoch", self.prefix)
    }

    /// `<prefix>{sb}:grant:<id>`: the record of one reservation.
    fn grant_key(&self, id: u128) -> String {
        format!("{}{HASH_TAG}:grant:{id:032x}", self.prefix)
    }

    /// Keys, header and per-scope rules of a reserve or settle call.
    fn invocation(
        &self,
        id: u128,
        scopes: &[(Scope, Rules)],
        minute: u64,
        now_ms: u64,
        header: [String; 8],
    ) -> ScriptInvocation<'static> {
        let mut invocation = SCRIPT.prepare_invoke();
        invocation.key(self.grant_key(id));
        invocation.key(self.epoch_key());
        for (scope, rules) in scopes {
            for key in self.scope_keys(scope, rules, minute, now_ms) {
                invocation.key(key);
            }
        }
        for value in header {
            invocation.arg(value);
        }
        for (_, rules) in scopes {
            let budget_ttl = rules
                .budget
                .map_or(0, |budget| budget_ttl_secs(budget.period, now_ms));
            invocation
                .arg(limit_arg(rules.max_concurrent))
                .arg(limit_arg(rules.requests_per_minute))
                .arg(limit_arg(rules.tokens_per_minute))
                .arg(limit_arg(rules.budget.map(|budget| budget.limit)))
                .arg(budget_ttl);
        }
        invocation
    }

    /// One request to Redis, retried once after a dropped connection, all
    /// within the timeout.
    async fn call(&self, request: &Request) -> Result<Value, Failure> {
        if self.is_paused() {
            return Err(Failure::Paused);
        }
        let attempt = async {
            let mut connection = self.connection.clone();
            match request.send(&mut connection).await {
                // The manager reconnects after reporting the drop; the
                // retry waits for that connection.
                Err(error) if is_dropped(&error) => request.send(&mut connection).await,
                other => other,
            }
        };
        let failure = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => Failure::Redis(error),
            Err(_) => Failure::TimedOut(self.timeout),
        };
        if failure.is_connection_level() {
            *lock(&self.paused_until) = Some(Instant::now() + self.outage_pause);
        }
        Err(failure)
    }

    fn is_paused(&self) -> bool {
        lock(&self.paused_until).is_some_and(|until| Instant::now() < until)
    }

    fn warn_unavailable(&self, failure: &Failure, what: &str) {
        let now = Instant::now();
        let mut warned_at = lock(&self.warned_at);
        if warned_at.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            self.warnings_suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *warned_at = Some(now);
        drop(warned_at);
        let suppressed = self.warnings_suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            %failure,
            fail_open = self.fail_open,
            suppressed,
            "the shared limiter's Redis cannot be reached: {what}"
        );
    }

    async fn reserve_shared(self: &Arc<Self>, ask: Ask, id: u128) -> Result<Grant, Refusal> {
        let minute = minute_of(ask.now_ms);
        let reset = Duration::from_millis((minute + 1) * 60_000 - ask.now_ms);
        if ask.scopes.is_empty() {
            return Ok(grant_of(
                ask,
                id,
                minute,
                Remaining {
                    reset,
                    ..Remaining::default()
                },
            ));
        }
        // Only budgets need the lost counters back before they are
        // checked; rate limits restart with the next minute anyway.
        let check_epoch = self.reseed.get().is_some()
            && ask.scopes.iter().any(|(_, rules)| rules.budget.is_some());
        let header = [
            "reserve".to_owned(),
            ask.tokens.min(REDIS_MAX).to_string(),
            ask.cost.min(REDIS_MAX).to_string(),
            minute.to_string(),
            self.lease_minutes.to_string(),
            MINUTE_KEY_TTL_SECS.to_string(),
            self.record_ttl_secs().to_string(),
            if check_epoch { "1" } else { "0" }.to_owned(),
        ];
        let request = Request::Script(self.invocation(id, &ask.scopes, minute, ask.now_ms, header));
        let mut reseeded = false;
        let reply = loop {
            let reseeds_seen = self.reseeds.load(Ordering::Acquire);
            // A dropped connection is retried inside `call`; the grant id
            // makes that repeat harmless.
            let reply = match self.call(&request).await {
                Ok(value) => redis::from_redis_value::<Vec<i64>>(value)
                    .map_err(|error| Failure::Reply(error.to_string())),
                Err(failure) => Err(failure),
            };
            // The marker is missing: nothing was counted; the budgets are
            // seeded again from the request log, and the reserve resent
            // (a second round trip, only after a loss).
            if matches!(reply.as_deref(), Ok([3])) {
                let restored = if reseeded {
                    Err("the counters were lost again while being restored".to_owned())
                } else {
                    self.reseed(reseeds_seen, ask.now_ms).await
                };
                if let Err(why) = restored {
                    return self.unavailable(ask, id, minute, reset, &Failure::Lost(why));
                }
                reseeded = true;
                continue;
            }
            break reply;
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(failure) => return self.unavailable(ask, id, minute, reset, &failure),
        };
        let scope_at = |index: i64| {
            usize::try_from(index)
                .ok()
                .and_then(|index| index.checked_sub(1))
                .and_then(|index| ask.scopes.get(index))
        };
        let refusal = match *reply.as_slice() {
            [0, requests, tokens] => {
                let rules = ask
                    .scopes
                    .first()
                    .map(|(_, rules)| *rules)
                    .unwrap_or_default();
                let left =
                    |limit: u64, count: i64| (limit, limit.saturating_sub(count.max(0) as u64));
                let remaining = Remaining {
                    requests: rules.requests_per_minute.map(|limit| left(limit, requests)),
                    tokens: rules.tokens_per_minute.map(|limit| left(limit, tokens)),
                    reset,
                };
                return Ok(grant_of(ask, id, minute, remaining));
            }
            [1, index, which] => scope_at(index).map(|(scope, _)| {
                let (limit, retry_after) = match which {
                    1 => ("max_concurrent", Duration::from_secs(1)),
                    2 => ("requests_per_minute", reset),
                    _ => ("tokens_per_minute", reset),
                };
                Refusal::Limited {
                    scope: scope.clone(),
                    limit,
                    retry_after,
                }
            }),
            [2, index, used] => match scope_at(index) {
                Some((
                    scope,
                    Rules {
                        budget: Some(budget),
                        ..
                    },
                )) => Some(Refusal::Budget {
                    scope: scope.clone(),
                    limit: budget.limit,
                    used: used.max(0) as u64,
                    period: budget.period,
                }),
                _ => None,
            },
            [4] => {
                return Err(Refusal::Unavailable(
                    "this reservation was already settled or cancelled".to_owned(),
                ));
            }
            _ => None,
        };
        match refusal {
            Some(refusal) => Err(refusal),
            None => {
                let failure = Failure::Reply(format!("{reply:?}"));
                self.unavailable(ask, id, minute, reset, &failure)
            }
        }
    }

    /// What `reserve` answers without Redis. A reserve that Redis may have
    /// applied although no answer came is cancelled later (with its id) if
    /// it is refused here; if it is granted, its settle releases it.
    fn unavailable(
        self: &Arc<Self>,
        ask: Ask,
        id: u128,
        minute: u64,
        reset: Duration,
        failure: &Failure,
    ) -> Result<Grant, Refusal> {
        let budgeted = ask.scopes.iter().any(|(_, rules)| rules.budget.is_some());
        let open = if budgeted {
            self.fail_open_budgets
        } else {
            self.fail_open
        };
        // Remaining room is unknown, so none is reported.
        let grant = grant_of(
            ask,
            id,
            minute,
            Remaining {
                reset,
                ..Remaining::default()
            },
        );
        if !open {
            self.warn_unavailable(failure, "refusing requests (fail closed)");
            if failure.may_have_applied() {
                let request = self.settle_request(&grant, 0, 0);
                self.retry_later(request, "a reserve that timed out is cancelled");
            }
            return Err(Refusal::Unavailable(format!(
                "the shared rate-limit and budget counters cannot be reached ({failure}); \
                 requests are refused until they can"
            )));
        }
        self.warn_unavailable(failure, "admitting requests uncounted (fail open)");
        Ok(grant)
    }

    /// Seeds every budget's spend from the request log into Redis, then
    /// writes the epoch marker. Requests that found the marker missing
    /// together wait for one reseed: whoever comes after it finished (the
    /// count moved past `reseeds_seen`) returns at once.
    async fn reseed(&self, reseeds_seen: u64, now_ms: u64) -> Result<(), String> {
        let Some(source) = self.reseed.get() else {
            return Ok(());
        };
        let _one_at_a_time = self.reseeding.lock().await;
        if self.reseeds.load(Ordering::Acquire) != reseeds_seen {
            return Ok(());
        }
        if let Some(failed_at) = *lock(&self.reseed_failed_at)
            && failed_at.elapsed() < RESEED_RETRY
        {
            return Err("restoring them failed moments ago".to_owned());
        }
        let result = self.reseed_from(source.as_ref(), now_ms).await;
        match &result {
            Ok(budgets) => {
                *lock(&self.reseed_failed_at) = None;
                self.reseeds.fetch_add(1, Ordering::Release);
                tracing::warn!(
                    budgets,
                    "the shared limiter's Redis had lost its counters (or never held them): \
                     budgets' spend was restored from the request log"
                );
            }
            Err(why) => {
                *lock(&self.reseed_failed_at) = Some(Instant::now());
                tracing::error!(%why, "the shared limiter's lost counters could not be restored");
            }
        }
        result.map(drop)
    }

    async fn reseed_from(&self, source: &dyn Reseed, now_ms: u64) -> Result<usize, String> {
        let spend = source.budget_spend(now_ms).await?;
        let chunks: Vec<&[SpentIn]> = if spend.is_empty() {
            vec![&[]]
        } else {
            spend.chunks(RESEED_CHUNK).collect()
        };
        for (index, chunk) in chunks.iter().enumerate() {
            let mut invocation = SCRIPT.prepare_invoke();
            invocation.key(self.epoch_key()).arg("seed");
            // The marker goes with the last chunk: until then, requests
            // still find it missing and wait.
            if index + 1 == chunks.len() {
                invocation.arg(now_ms);
            } else {
                invocation.arg("");
            }
            for SpentIn {
                scope,
                period,
                spent,
            } in chunk.iter()
            {
                let window = budget_window(*period, now_ms);
                invocation
                    .key(format!("{}:spent:{window}", self.scope_base(scope)))
                    .arg(spent.min(&REDIS_MAX).to_string())
                    .arg(budget_ttl_secs(*period, now_ms));
            }
            self.call(&Request::Script(invocation))
                .await
                .map_err(|failure| failure.to_string())?;
        }
        Ok(spend.len())
    }

    /// How long a grant's record lives after its last change: as long as
    /// its buckets may count, and longer than settles are retried.
    fn record_ttl_secs(&self) -> u64 {
        self.lease_minutes * 60 + MINUTE_KEY_TTL_SECS
    }

    /// The settle call of a grant. The script knows from the grant's
    /// record whether, and in which minute, its reservation counts.
    fn settle_request(&self, grant: &Grant, tokens: u64, cost: Nanos) -> Request {
        let reserved_tokens = grant.tokens.min(REDIS_MAX) as i64;
        let token_change = tokens.min(REDIS_MAX) as i64 - reserved_tokens;
        let held_release = match grant.cost.min(REDIS_MAX) {
            0 => "0".to_owned(),
            held => format!("-{held}"),
        };
        let header = [
            "settle".to_owned(),
            token_change.to_string(),
            held_release,
            cost.min(REDIS_MAX).to_string(),
            self.record_ttl_secs().to_string(),
            match grant.part {
                0 => "done",
                1 => "done1",
                _ => "done2",
            }
            .to_owned(),
            String::new(),
            String::new(),
        ];
        Request::Script(self.invocation(
            grant.id,
            &grant.scopes,
            grant.minute,
            grant.now_ms,
            header,
        ))
    }

    async fn settle_shared(self: &Arc<Self>, grant: Grant, tokens: u64, cost: Nanos) {
        if grant.scopes.is_empty() {
            return;
        }
        let request = self.settle_request(&grant, tokens, cost);
        match self.call(&request).await {
            Ok(_) => {}
            Err(failure @ Failure::Reply(_)) => {
                self.warn_unavailable(&failure, "a settle is lost (Redis refused it)")
            }
            Err(_) => self.retry_later(request, "a settle is retried"),
        }
    }

    /// Retries a settle (or cancel) off the request path, with backoff,
    /// for up to the lease: settles are idempotent, so one whose answer
    /// was lost may be sent again. Past the lease its reservation has
    /// lapsed anyway, and only its spend is lost from the counters (the
    /// request log keeps it). At most `MAX_RETRYING` wait at once.
    fn retry_later(self: &Arc<Self>, request: Request, what: &'static str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("{what}, but there is no runtime to retry it on: it is lost");
            return;
        };
        if self.retrying.fetch_add(1, Ordering::Relaxed) >= MAX_RETRYING {
            self.retrying.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("too many settles waiting for Redis: one is lost");
            return;
        }
        let inner = self.clone();
        runtime.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(inner.lease_minutes * 60);
            let mut wait = RETRY_FIRST;
            loop {
                tokio::time::sleep(wait).await;
                match inner.call(&request).await {
                    Ok(_) => break,
                    Err(failure) => {
                        if matches!(failure, Failure::Reply(_)) || Instant::now() + wait > deadline
                        {
                            inner.warn_unavailable(&failure, "a settle could not be retried");
                            break;
                        }
                        inner.warn_unavailable(&failure, what);
                    }
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
            inner.retrying.fetch_sub(1, Ordering::Relaxed);
        });
    }

    async fn renew_shared(&self, request: Request) -> bool {
        match self.call(&request).await {
            Ok(_) => true,
            Err(failure) => {
                self.warn_unavailable(&failure, "a reservation in progress was not renewed");
                false
            }
        }
    }

    /// The renew call of a grant still in progress at `now_ms`.
    fn renew_request(&self, grant: &Grant, now_ms: u64) -> Request {
        let cost = grant.cost.min(REDIS_MAX);
        let header = [
            "renew".to_owned(),
            minute_of(now_ms).to_string(),
            cost.to_string(),
            if cost == 0 {
                "0".to_owned()
            } else {
                format!("-{cost}")
            },
            self.record_ttl_secs().to_string(),
            String::new(),
            String::new(),
            String::new(),
        ];
        Request::Script(self.invocation(
            grant.id,
            &grant.scopes,
            grant.minute,
            grant.now_ms,
            header,
        ))
    }

    async fn budget_used_shared(&self, scope: &Scope, period: Period, now_ms: u64) -> Nanos {
        let minute = minute_of(now_ms);
        let window = budget_window(period, now_ms);
        let base = self.scope_base(scope);
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(format!("{base}:spent:{window}"))
            .key(format!("{base}:held:{window}"))
            .arg("used")
            .arg(minute)
            .arg(self.lease_minutes);
        let reply = match self.call(&Request::Script(invocation)).await {
            Ok(value) => redis::from_redis_value::<i64>(value)
                .map_err(|error| Failure::Reply(error.to_string())),
            Err(failure) => Err(failure),
        };
        match reply {
            Ok(used) => used.max(0) as u64,
            Err(failure) => {
                self.warn_unavailable(&failure, "budget use reads as 0");
                0
            }
        }
    }
}

impl Limiter for RedisLimiter {
    fn reserve(&self, ask: Ask) -> LimitFuture<'_, Result<Grant, Refusal>> {
        Box::pin(self.inner.reserve_shared(ask, fresh_grant_id()))
    }

    fn floor_spent(
        &self,
        scope: Scope,
        period: Period,
        now_ms: u64,
        spent: Nanos,
    ) -> LimitFuture<'_, ()> {
        Box::pin(async move {
            let window = budget_window(period, now_ms);
            let ttl = budget_ttl_secs(period, now_ms);
            let mut invocation = SCRIPT.prepare_invoke();
            invocation
                .key(format!("{}:spent:{window}", self.inner.scope_base(&scope)))
                .arg("floor")
                .arg(spent.to_string())
                .arg(ttl);
            if let Err(failure) = self.inner.call(&Request::Script(invocation)).await {
                self.inner
                    .warn_unavailable(&failure, "past spend not counted for a new budget");
            }
        })
    }

    fn settle(&self, grant: Grant, tokens: u64, cost: Nanos) -> LimitFuture<'_, ()> {
        Box::pin(self.inner.settle_shared(grant, tokens, cost))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn budget_used(&self, scope: &Scope, period: Period, now_ms: u64) -> LimitFuture<'_, Nanos> {
        let scope = scope.clone();
        Box::pin(async move { self.inner.budget_used_shared(&scope, period, now_ms).await })
    }

    fn lease(&self) -> Option<Duration> {
        Some(Duration::from_secs(self.inner.lease_minutes * 60))
    }

    fn renew(&self, grant: &Grant, now_ms: u64) -> LimitFuture<'_, bool> {
        if grant.scopes.is_empty() {
            return Box::pin(std::future::ready(true));
        }
        let request = self.inner.renew_request(grant, now_ms);
        Box::pin(self.inner.renew_shared(request))
    }
}

fn grant_of(ask: Ask, id: u128, minute: u64, remaining: Remaining) -> Grant {
    Grant {
        id,
        part: 0,
        scopes: ask.scopes,
        tokens: ask.tokens,
        cost: ask.cost,
        minute,
        now_ms: ask.now_ms,
        remaining,
    }
}

/// A grant id no other grant of any instance has: a random half drawn
/// once per process, and a half unique within it.
fn fresh_grant_id() -> u128 {
    static PROCESS: LazyLock<(u64, u64)> = LazyLock::new(|| {
        // `RandomState` is seeded from the operating system's randomness.
        let draw = |salt: u64| {
            let mut hasher = RandomState::new().build_hasher();
            salt.hash(&mut hasher);
            std::process::id().hash(&mut hasher);
            Instant::now().hash(&mut hasher);
            hasher.finish()
        };
        (draw(1), draw(2))
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (random, scramble) = *PROCESS;
    // SplitMix64 is a bijection, so distinct counts stay distinct.
    let sequence = splitmix64(COUNTER.fetch_add(1, Ordering::Relaxed) ^ scramble);
    (u128::from(random) << 64) | u128::from(sequence)
}

/// How long a budget window's spend is kept from `now_ms` (0: for ever).
fn budget_ttl_secs(period: Period, now_ms: u64) -> u64 {
    budget_reset_in(period, now_ms).map_or(0, |left| (left + BUDGET_MARGIN).as_secs().max(1))
}

/// A limit as the script reads it: empty for none.
fn limit_arg(limit: Option<u64>) -> String {
    limit.map_or_else(String::new, |limit| limit.min(REDIS_MAX).to_string())
}

/// An error after which the same request on a fresh connection may work.
fn is_dropped(error: &RedisError) -> bool {
    !error.is_connection_refusal()
        && !error.is_timeout()
        && (error.is_connection_dropped() || error.is_unrecoverable_error())
}

/// Keeps `[A-Za-z0-9_.-]` and percent-encodes every other byte: injective,
/// and free of the `{`, `}` and `:` that structure key names.
fn escape_id(id: &str) -> String {
    let mut escaped = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-') {
            escaped.push(char::from(byte));
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

/// A prefix may not carry braces: Redis Cluster hashes the first `{...}`
/// of a key, which must be the limiter's tag.
fn escape_prefix(prefix: &str) -> String {
    prefix.replace('{', "%7B").replace('}', "%7D")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_escaped_injectively() {
        assert_eq!(escape_id("key_01H.x-y"), "key_01H.x-y");
        assert_eq!(escape_id("a b{c}:d"), "a%20b%7Bc%7D%3Ad");
        assert_eq!(escape_id("%"), "%25");
        assert_eq!(escape_id("é"), "%C3%A9");
        assert_ne!(escape_id("a:b"), escape_id("a%3Ab"));
        assert_eq!(escape_prefix("t{x}:"), "t%7Bx%7D:");
    }

    #[test]
    fn grant_ids_are_unique() {
        let ids: std::collections::HashSet<u128> = (0..10_000).map(|_| fresh_grant_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| id >> 64 == ids.iter().next().unwrap() >> 64)
        );
    }
}
