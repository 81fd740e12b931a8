//! `RedisLimiter`: the rate limits, concurrency limits and budgets of
//! `switchboard_policy::limits`, shared by every gateway instance through
//! one Redis, with the semantics of `MemoryLimiter`.
//!
//! **One atomic step per operation, many per round trip.** Reserve checks
//! every scope (concurrency, requests and tokens per minute, budget:
//! spent + held + cost <= limit), and only if all pass reserves in all of
//! them, atomically, so instances can never together overshoot a limit.
//! `reserve`, `settle` and `renew` go through the limiter's batcher, a
//! task that sends whatever operations are waiting as one call of the Lua
//! script `redis_limiter.lua` (EVALSHA; the script is loaded once per
//! Redis process, on the first NOSCRIPT), waits for its answer, and then
//! sends what arrived meanwhile: one call at a time, on a TCP connection of
//! the batcher's own (`resp::Line`: the command's bytes written as they
//! are, the flat array of integers it answers read without the client's
//! general parser or its multiplexing task). Reserves are sent at
//! once, so a reserve waits at most for the call ahead of it, and alone
//! (one request at a time) not at all. Settles, renewals and cancels,
//! which no request waits for, linger for up to `BACKGROUND_LINGER` (2 ms)
//! and ride ahead of the reserves of the next call made meanwhile, or go
//! alone when it passes: a reservation is released up to that much later,
//! never sooner, so no limit loosens, and under load (or between one
//! client's requests) a request's settle shares a later request's call.
//! Redis runs a script whole, so a batch's operations are applied one
//! after the other, in the order they were queued, each with exactly the
//! checks it would have had alone; the script answers each in its place,
//! and every waiting operation receives its own answer. Inside the call
//! each counter is read once and written back once, so a batch of
//! requests on one key costs Redis little more than one request (see
//! `BENCHMARKS.md`). A call carries at most `MAX_BATCH` reserves and as
//! many other operations; at most `MAX_QUEUED` of each wait, and further
//! callers wait for room.
//! `budget_used`, `floor_spent` and reseeding are calls of their
//! own. Window names (`minute_of`, `budget_window`) are computed here from
//! the time the caller passes in and sent as arguments, so every instance
//! and the script agree on them. Keys' layout is unchanged by batching,
//! so instances of the previous release count in the same counters while
//! a deployment is rolled (each reads only its own grants' records).
//!
//! **Leases.** A scope busy on this instance and far from its limits
//! takes slices of them, each one reserve of many requests (`Counts`),
//! and serves its requests from them without a round trip each
//! (`redis_lease.rs`, on by default: `RedisLimiterConfig::leases`).
//! Requests not served from a lease take the path described here.
//!
//! **Keys.** `<prefix>{sb}:<kind>:<escaped id>:<counter>`, where the id keeps
//! `[A-Za-z0-9_.-]` and percent-encodes every other byte (so `{`, `}`,
//! `:` and spaces never reach a key name raw, and two ids never share a
//! key). Counters: `inflight` (hash: minute of reservation → requests in
//! flight), `m:<minute>` (hash: `r` requests, `t` tokens), `spent:<window>`
//! (nano-dollars), `held:<window>` (hash: minute of reservation →
//! nano-dollars reserved). Only limits a scope has are counted. Beside
//! them, `<prefix>{sb}:grant:<id>` records one reservation (below), as a
//! short string (`<minute>:<requests>:<tokens>:<parts settled>`).
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
//! not throughput, for it. (A request costs it two operations of a
//! batched call: about 20 µs of one core at the batch sizes a busy gateway
//! makes, 60 to 100 µs alone; see `BENCHMARKS.md`.)
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
//! **When Redis cannot be reached.** Every call (a whole batch) is bounded
//! by `timeout` (2 s by default), retried once immediately after a dropped
//! connection (the auto-reconnecting `ConnectionManager` reports one error
//! after an idle drop; every operation carries its grant's id, so the
//! repeat is harmless), and after a connection failure Redis is left alone
//! for `outage_pause` (1 s) so an outage does not add the timeout to every
//! request. A batch that fails fails each of its operations, which then
//! go on as they would have alone. Failing open, `reserve` grants without
//! counting (warning at most every 5 s); failing closed, it refuses with
//! `Refusal::Unavailable`. A reserve that got no answer may still have
//! been applied by Redis (a timeout, a connection lost after sending):
//! refused, it is cancelled later by a settle of nothing under its id;
//! granted, its own settle releases it. So is a reserve whose caller
//! stopped waiting (a client hang-up) by the time its answer came: the
//! batcher cancels it. A settle that fails (and such a cancel) is sent
//! again off the request path, after 250 ms and then twice as long each
//! time up to 10 s, for up to the lease, by a task of the limiter's; at
//! most 16,384 wait at once, and those beyond, or still failing after the
//! lease, or waiting when the process ends, are lost: their reservations
//! lapse with the lease and their spend is missing from the counters (the
//! request log has it). `budget_used` answers 0 when Redis is unreachable.
//!
//! **Numbers.** Arguments travel as decimal strings; inside the script
//! counters are compared and summed as Lua doubles, exact below 2^53
//! nano-dollars (about nine million dollars), and written back as
//! integers. Values are capped at `i64::MAX`, Redis's integer range.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::resp::{self, Line, LineError, Target};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisError, RedisResult, Script, ServerErrorKind, Value};
use switchboard_core::mix::{FnvBuild, splitmix64};
use switchboard_policy::limits::{
    Ask, Grant, GrantId, LimitFuture, Limiter, Nanos, Period, Refusal, Remaining, Reserving, Rules,
    Scope, budget_reset_in, budget_window, budget_window_start, minute_of,
};
use tokio::sync::{mpsc, oneshot};

#[path = "redis_lease.rs"]
mod lease;

/// The hash tag in every key: one Redis Cluster slot for all counters.
pub const HASH_TAG: &str = "{sb}";

const SCRIPT_SOURCE: &str = include_str!("redis_limiter.lua");
static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT_SOURCE));

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
/// The most reserves one script call carries, and the most other
/// operations: a call of 128 operations holds Redis for about a
/// millisecond (other clients wait meanwhile).
const MAX_BATCH: usize = 128;
/// The most operations waiting in each of the batcher's queues; further
/// callers wait.
const MAX_QUEUED: usize = 4_096;
/// How long settles, renewals and cancels wait for others to share their
/// call: they are off the request path, and a batch of many costs Redis
/// little more than one.
const BACKGROUND_LINGER: Duration = Duration::from_millis(2);

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
    /// Whether busy scopes far from their limits count requests against
    /// leases, slices of their limits reserved many requests at a time
    /// (see `redis_lease.rs`), instead of one reserve and one settle in
    /// Redis per request.
    pub leases: bool,
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
            leases: true,
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
    /// Where the batcher's own connection goes (`resp::Line`); `None` for
    /// addresses it does not serve, whose batches take `connection`.
    line: Option<Target>,
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
    /// Where operations queue for the batcher task, started by the first
    /// of them.
    lanes: OnceLock<Lanes>,
    /// Script calls made for them (each a round trip), and the operations
    /// they carried.
    batches: AtomicU64,
    batched: AtomicU64,
    /// Leases of busy scopes, when they are on.
    leases: Option<lease::Leases>,
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
#[derive(Debug, Clone)]
enum Failure {
    Paused,
    TimedOut(Duration),
    Redis(RedisError),
    /// On the batcher's own connection.
    Line(LineError),
    Reply(String),
    /// The counters were lost and could not be restored.
    Lost(String),
    /// The batcher task is gone (its runtime is shutting down).
    Stopped,
}

impl Failure {
    fn is_connection_level(&self) -> bool {
        match self {
            Failure::Paused | Failure::TimedOut(_) => true,
            Failure::Redis(error) => {
                error.is_io_error() || error.is_connection_dropped() || error.is_timeout()
            }
            Failure::Line(error) => matches!(error, LineError::Connect(_) | LineError::Io(_)),
            Failure::Reply(_) | Failure::Lost(_) | Failure::Stopped => false,
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
            // Sent, perhaps whole, before the connection failed or the
            // reply was garbled.
            Failure::Line(error) => matches!(error, LineError::Io(_) | LineError::Protocol(_)),
            Failure::Paused | Failure::Reply(_) | Failure::Lost(_) => false,
            // Its batch may have been sent before the task ended.
            Failure::Stopped => true,
        }
    }
}

impl From<LineError> for Failure {
    fn from(error: LineError) -> Failure {
        Failure::Line(error)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Paused => formatter.write_str("skipped after a recent connection failure"),
            Failure::TimedOut(timeout) => write!(formatter, "no answer within {timeout:?}"),
            Failure::Redis(error) => write!(formatter, "{error}"),
            Failure::Line(error) => write!(formatter, "{error}"),
            Failure::Reply(reply) => write!(formatter, "unexpected reply {reply}"),
            Failure::Lost(why) => write!(
                formatter,
                "its counters were lost and are not restored yet: {why}"
            ),
            Failure::Stopped => formatter.write_str("the limiter's batcher has stopped"),
        }
    }
}

enum Request {
    /// An EVALSHA of the limiter's script.
    Script(Cmd),
    Ping,
}

impl Request {
    async fn send(&self, connection: &mut ConnectionManager) -> RedisResult<Value> {
        match self {
            Request::Script(command) => match command.query_async(connection).await {
                // A Redis that restarted, or never saw the script, gets it
                // now, once.
                Err(error)
                    if error.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) =>
                {
                    SCRIPT.load_async(connection).await?;
                    command.query_async(connection).await
                }
                other => other,
            },
            Request::Ping => redis::cmd("PING").query_async(connection).await,
        }
    }
}

/// An EVALSHA of the limiter's script with room for its arguments.
fn script_command() -> Cmd {
    let mut command = redis::cmd("EVALSHA");
    command.arg(SCRIPT.get_hash());
    command
}

/// One reserve, settle or renewal, as the batcher sends it.
#[derive(Debug)]
struct Op {
    kind: OpKind,
    /// The grant's id and part (0: whole; 1, 2: the parts of a split one).
    id: GrantId,
    part: u8,
    scopes: Vec<(Scope, Rules)>,
    /// The minute and time the scopes' counters are named for: the
    /// reserve's own, or the grant's.
    minute: u64,
    now_ms: u64,
}

#[derive(Debug, Clone, Copy)]
enum OpKind {
    Reserve {
        tokens: u64,
        cost: Nanos,
        check_epoch: bool,
        /// `Counts::ONE` for a request; more for a lease.
        counts: Counts,
    },
    Settle {
        /// Actual minus reserved tokens.
        token_change: i64,
        /// The cost reserved, released now.
        held: Nanos,
        cost: Nanos,
        /// Requests given back (a lease's unused ones, as a negative
        /// number; 0 for a request).
        request_change: i64,
        /// Requests in flight that end (1 for a request).
        released: u64,
        /// A lease's settle (its hold is marked as a lease's).
        lease: bool,
    },
    Renew {
        /// The minute the reservation is to count in from now on.
        to_minute: u64,
        held: Nanos,
        /// Requests in flight it holds (1 for a request).
        in_flight: u64,
        /// What a lease holds once its part 1 is settled (`None`: not known
        /// yet, and then a renewal after part 1 moves nothing).
        after_part_one: Option<(Nanos, u64)>,
        lease: bool,
    },
}

/// How much a reserve counts, and how close to its limits it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    pub requests: u64,
    pub in_flight: u64,
    /// Granted only if every counter stays within its limit divided by
    /// this (1: up to the limit).
    pub share: u64,
}

impl Counts {
    const ONE: Counts = Counts {
        requests: 1,
        in_flight: 1,
        share: 1,
    };
}

/// What the script answers an operation: three integers (see
/// `redis_limiter.lua`).
type Answer = [i64; 3];

/// The batcher's two queues: reserves, sent at once, and the operations
/// no request waits for.
struct Lanes {
    reserves: mpsc::Sender<Pending>,
    background: mpsc::Sender<Pending>,
}

/// An operation waiting for its batch, and where its answer goes: to its
/// caller, or, for a settle nobody waits for (`None`), to the batcher,
/// which retries it as `settle_shared` would.
struct Pending {
    op: Arc<Op>,
    answer: Option<oneshot::Sender<Result<Answer, Failure>>>,
}

/// A scope with its rules in one minute and budget window: the unit a
/// batch names once however many of its operations touch it.
#[derive(PartialEq, Eq, Hash)]
struct SlotKey<'a> {
    scope: &'a Scope,
    rules: Rules,
    minute: u64,
    /// When the budget window starts (0 without a budget).
    window_start: u64,
}

struct Slot<'a> {
    scope: &'a Scope,
    rules: Rules,
    minute: u64,
    now_ms: u64,
    /// The index in KEYS (1-based, as Lua counts) of its first key.
    first_key: usize,
}

impl Slot<'_> {
    /// In-flight, minute, spent, held: whether the script needs each.
    fn counters(&self) -> [bool; 4] {
        let rules = &self.rules;
        let budget = rules.budget.is_some();
        [
            rules.max_concurrent.is_some(),
            rules.requests_per_minute.is_some() || rules.tokens_per_minute.is_some(),
            budget,
            budget,
        ]
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
        let line = Target::of(client.get_connection_info());
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|error| RedisLimiterError::Url(error.to_string()))?;
        let mut inner = Inner::new(
            connection,
            escape_prefix(&config.prefix),
            config.fail_open,
            config.fail_open_budgets,
            config.timeout,
            config
                .lease
                .as_secs()
                .div_ceil(60)
                .clamp(1, MAX_LEASE_MINUTES),
            config.outage_pause,
        );
        inner.line = line;
        if config.leases {
            inner.leases = Some(lease::Leases::default());
        }
        let limiter = RedisLimiter {
            inner: Arc::new(inner),
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
        let mut copy = Inner::new(
            inner.connection.clone(),
            escape_prefix(prefix),
            inner.fail_open,
            inner.fail_open_budgets,
            inner.timeout,
            inner.lease_minutes,
            inner.outage_pause,
        );
        copy.line = inner.line.clone();
        if inner.leases.is_some() {
            copy.leases = Some(lease::Leases::default());
        }
        RedisLimiter {
            inner: Arc::new(copy),
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
        // The top bit marks grants served from leases.
        self.inner
            .reserve_shared(ask, id & !lease::SERVED_FROM_LEASE)
            .await
    }

    /// Settles and cancels that failed and are being retried.
    pub fn settles_retrying(&self) -> usize {
        self.inner.retrying.load(Ordering::Relaxed)
    }

    /// Leases Redis granted this limiter, and requests served from them
    /// without a round trip of their own.
    pub fn leases(&self) -> (u64, u64) {
        self.inner.leases.as_ref().map_or((0, 0), |leases| {
            (
                leases.granted.load(Ordering::Relaxed),
                leases.served.load(Ordering::Relaxed),
            )
        })
    }

    /// The script calls the batcher has made, and the reserves, settles
    /// and renewals they carried.
    pub fn batches(&self) -> (u64, u64) {
        (
            self.inner.batches.load(Ordering::Relaxed),
            self.inner.batched.load(Ordering::Relaxed),
        )
    }
}

impl Inner {
    /// A limiter's state with nothing counted, sent or waiting yet.
    fn new(
        connection: ConnectionManager,
        prefix: String,
        fail_open: bool,
        fail_open_budgets: bool,
        timeout: Duration,
        lease_minutes: u64,
        outage_pause: Duration,
    ) -> Inner {
        Inner {
            connection,
            line: None,
            prefix,
            fail_open,
            fail_open_budgets,
            timeout,
            lease_minutes,
            outage_pause,
            paused_until: Mutex::new(None),
            warned_at: Mutex::new(None),
            warnings_suppressed: AtomicU64::new(0),
            retrying: AtomicUsize::new(0),
            reseed: OnceLock::new(),
            reseeding: tokio::sync::Mutex::new(()),
            reseeds: AtomicU64::new(0),
            reseed_failed_at: Mutex::new(None),
            lanes: OnceLock::new(),
            batches: AtomicU64::new(0),
            batched: AtomicU64::new(0),
            leases: None,
        }
    }

    /// `<prefix>{sb}:<kind>:<escaped id>`.
    fn scope_base(&self, scope: &Scope) -> String {
        let mut base = String::with_capacity(self.prefix.len() + scope.id.len() + 16);
        base.push_str(&self.prefix);
        base.push_str(HASH_TAG);
        base.push(':');
        base.push_str(scope.kind.as_str());
        base.push(':');
        push_escaped_id(&mut base, &scope.id);
        base
    }

    /// `<prefix>{sb}:epoch`: exists once budgets were seeded.
    fn epoch_key(&self) -> String {
        format!("{}{HASH_TAG}:epoch", self.prefix)
    }

    /// The script call carrying `ops`, to be applied in this order (see
    /// `redis_limiter.lua` for the layout): each scope, in each minute and
    /// budget window, is named once however many operations touch it.
    fn batch_command(&self, ops: &[&Op]) -> Cmd {
        let mut slots: Vec<Slot<'_>> = Vec::new();
        // FNV: a batch names a few scopes, and SipHash's per-key cost was
        // most of what building a batch cost. End-user ids are the
        // client's, but colliding ones could slow one batch of at most
        // `MAX_BATCH` operations, no more.
        let mut slot_of: HashMap<SlotKey<'_>, usize, FnvBuild> = HashMap::default();
        // Each operation's scopes as slot numbers (1-based), in order.
        let mut op_slots: Vec<usize> = Vec::with_capacity(ops.len());
        // KEYS so far: the epoch marker.
        let mut keys = 1;
        for op in ops {
            for (scope, rules) in &op.scopes {
                let window_start = rules
                    .budget
                    .map_or(0, |budget| budget_window_start(budget.period, op.now_ms));
                let slot_key = SlotKey {
                    scope,
                    rules: *rules,
                    minute: op.minute,
                    window_start,
                };
                let number = *slot_of.entry(slot_key).or_insert_with(|| {
                    let slot = Slot {
                        scope,
                        rules: *rules,
                        minute: op.minute,
                        now_ms: op.now_ms,
                        first_key: keys + 1,
                    };
                    keys += slot.counters().iter().filter(|&&used| used).count();
                    slots.push(slot);
                    slots.len()
                });
                op_slots.push(number);
            }
        }

        let mut command = script_command();
        command.arg(keys + ops.len()).arg(self.epoch_key());
        // Key names are built in one buffer, piece by piece.
        let mut name = String::new();
        for slot in &slots {
            name.clear();
            name.push_str(&self.scope_base(slot.scope));
            name.push(':');
            let base = name.len();
            let [in_flight, minute, budget, _] = slot.counters();
            if in_flight {
                name.push_str("inflight");
                command.arg(name.as_str());
            }
            if minute {
                name.truncate(base);
                let _ = write!(name, "m:{}", slot.minute);
                command.arg(name.as_str());
            }
            if let (true, Some(budget)) = (budget, slot.rules.budget) {
                let window = budget_window(budget.period, slot.now_ms);
                for counter in ["spent:", "held:"] {
                    name.truncate(base);
                    name.push_str(counter);
                    name.push_str(&window);
                    command.arg(name.as_str());
                }
            }
        }
        for op in ops {
            name.clear();
            name.push_str(&self.prefix);
            name.push_str(HASH_TAG);
            name.push_str(":grant:");
            push_hex128(&mut name, op.id.get());
            command.arg(name.as_str());
        }

        command
            .arg("batch")
            .arg(self.lease_minutes)
            .arg(MINUTE_KEY_TTL_SECS)
            .arg(self.record_ttl_secs())
            .arg(slots.len());
        for slot in &slots {
            let mut next = slot.first_key;
            for used in slot.counters() {
                if used {
                    command.arg(next);
                    next += 1;
                } else {
                    command.arg(0);
                }
            }
            let rules = &slot.rules;
            limit_arg(&mut command, rules.max_concurrent);
            limit_arg(&mut command, rules.requests_per_minute);
            limit_arg(&mut command, rules.tokens_per_minute);
            limit_arg(&mut command, rules.budget.map(|budget| budget.limit));
            command.arg(
                rules
                    .budget
                    .map_or(0, |budget| budget_ttl_secs(budget.period, slot.now_ms)),
            );
        }
        let mut op_slots = op_slots.into_iter();
        for op in ops {
            let part = match op.part {
                0 => "0",
                1 => "1",
                _ => "2",
            };
            match op.kind {
                OpKind::Reserve {
                    tokens,
                    cost,
                    check_epoch,
                    counts,
                } => {
                    command
                        .arg(if counts == Counts::ONE { "r" } else { "l" })
                        .arg(tokens.min(REDIS_MAX))
                        .arg(cost.min(REDIS_MAX))
                        .arg(op.minute)
                        .arg(if check_epoch { "1" } else { "0" });
                    if counts != Counts::ONE {
                        command
                            .arg(counts.requests.min(REDIS_MAX))
                            .arg(counts.in_flight.min(REDIS_MAX))
                            .arg(counts.share.max(1));
                    }
                }
                OpKind::Settle {
                    token_change,
                    held,
                    cost,
                    request_change,
                    released,
                    lease,
                } => {
                    let plain = !lease;
                    command
                        .arg(if plain { "s" } else { "d" })
                        .arg(token_change)
                        .arg(held.min(REDIS_MAX))
                        .arg(cost.min(REDIS_MAX))
                        .arg(part);
                    if !plain {
                        command.arg(request_change).arg(released.min(REDIS_MAX));
                    }
                }
                OpKind::Renew {
                    to_minute,
                    held,
                    in_flight,
                    after_part_one,
                    lease,
                } => {
                    command
                        .arg("n")
                        .arg(to_minute)
                        .arg(held.min(REDIS_MAX))
                        .arg(part)
                        .arg(in_flight.min(REDIS_MAX));
                    match after_part_one {
                        Some((held, in_flight)) => command
                            .arg(held.min(REDIS_MAX))
                            .arg(in_flight.min(REDIS_MAX)),
                        None => command.arg(0).arg(-1),
                    };
                    command.arg(if lease { "1" } else { "0" });
                }
            };
            command.arg(op.scopes.len());
            for number in op_slots.by_ref().take(op.scopes.len()) {
                command.arg(number);
            }
        }
        command
    }

    /// The queue of `op`'s lane, the batcher started on first use. `None`
    /// outside a Tokio runtime.
    fn queue(self: &Arc<Self>, op: &Op) -> Option<&mpsc::Sender<Pending>> {
        let lanes = match self.lanes.get() {
            Some(lanes) => lanes,
            None => {
                let runtime = tokio::runtime::Handle::try_current().ok()?;
                self.lanes.get_or_init(|| {
                    let (reserves, reserves_waiting) = mpsc::channel(MAX_QUEUED);
                    let (background, background_waiting) = mpsc::channel(MAX_QUEUED);
                    runtime.spawn(run_batches(
                        Arc::downgrade(self),
                        reserves_waiting,
                        background_waiting,
                    ));
                    Lanes {
                        reserves,
                        background,
                    }
                })
            }
        };
        Some(match op.kind {
            OpKind::Reserve { .. } => &lanes.reserves,
            OpKind::Settle { .. } | OpKind::Renew { .. } => &lanes.background,
        })
    }

    /// Sends `op` with the next batch and waits for its own answer.
    async fn submit(self: &Arc<Self>, op: Arc<Op>) -> Result<Answer, Failure> {
        let Some(queue) = self.queue(&op) else {
            return Err(Failure::Stopped);
        };
        let (answer, answered) = oneshot::channel();
        if queue
            .send(Pending {
                op,
                answer: Some(answer),
            })
            .await
            .is_err()
        {
            return Err(Failure::Stopped);
        }
        answered.await.unwrap_or(Err(Failure::Stopped))
    }

    /// Sends one batch and hands each operation its answer: the script's
    /// answers come in the order of the operations.
    async fn send_batch(self: &Arc<Self>, batch: &mut Vec<Pending>, line: Option<&mut Line>) {
        // A reserve whose caller has left is not sent at all.
        batch.retain(|pending| {
            !(pending
                .answer
                .as_ref()
                .is_some_and(oneshot::Sender::is_closed)
                && matches!(pending.op.kind, OpKind::Reserve { .. }))
        });
        if batch.is_empty() {
            return;
        }
        let command = {
            let ops: Vec<&Op> = batch.iter().map(|pending| pending.op.as_ref()).collect();
            self.batch_command(&ops)
        };
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batched
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let answers = match line {
            Some(line) => self.call_line(line, &command).await,
            None => self
                .call(&Request::Script(command))
                .await
                .and_then(|value| {
                    redis::from_redis_value::<Vec<i64>>(value)
                        .map_err(|error| Failure::Reply(error.to_string()))
                }),
        };
        let answers = match answers {
            Ok(answers) if answers.len() == 3 * batch.len() => Ok(answers),
            Ok(answers) => Err(Failure::Reply(format!(
                "{} numbers for {} operations",
                answers.len(),
                batch.len()
            ))),
            Err(failure) => Err(failure),
        };
        let mut next = answers.as_deref().unwrap_or_default().chunks_exact(3);
        for Pending { op, answer } in batch.drain(..) {
            let result = match (&answers, next.next()) {
                (Ok(_), Some(&[code, first, second])) => Ok([code, first, second]),
                (Err(failure), _) => Err(failure.clone()),
                (Ok(_), _) => Err(Failure::Reply("no answer".to_owned())),
            };
            match answer {
                None => self.after_settle(op, result),
                Some(answer) if answer.is_closed() => self.orphaned(&op, &result),
                Some(answer) => {
                    // Dropped first, so that the caller holds the only reference.
                    drop(op);
                    let _ = answer.send(result);
                }
            }
        }
    }

    /// A reserve whose caller stopped waiting (a client hang-up): whatever
    /// Redis counted for it is released, as for a reserve whose answer was
    /// lost.
    fn orphaned(self: &Arc<Self>, op: &Op, result: &Result<Answer, Failure>) {
        let counted = match result {
            Ok([code, ..]) => *code == 0,
            Err(failure) => failure.may_have_applied(),
        };
        if counted && let Some(cancel) = cancel_op(op) {
            self.retry_later(Arc::new(cancel), "a reserve whose caller left is cancelled");
        }
    }

    /// A batch's script call on the batcher's own connection
    /// (`Line::call_script`: retried once when a connection kept from an
    /// earlier call turns out closed, the script loaded on NOSCRIPT), all
    /// within the timeout, pausing after a connection failure as `call`
    /// does.
    async fn call_line(&self, line: &mut Line, command: &Cmd) -> Result<Vec<i64>, Failure> {
        if self.is_paused() {
            return Err(Failure::Paused);
        }
        let packed = command.get_packed_command();
        // A whole answer that is not the script's (no list of integers)
        // is a reply to report, not a connection to retry.
        let attempt = async {
            let reply = line.call_script(&packed, SCRIPT_SOURCE).await?;
            resp::integers(reply).map_err(|error| Failure::Reply(error.to_string()))
        };
        let failure = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(answers)) => return Ok(answers),
            Ok(Err(failure)) => failure,
            Err(_) => Failure::TimedOut(self.timeout),
        };
        if failure.is_connection_level() {
            *lock(&self.paused_until) = Some(Instant::now() + self.outage_pause);
        }
        Err(failure)
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
        let Ask {
            scopes,
            tokens,
            cost,
            now_ms,
        } = ask;
        let op = Arc::new(Op {
            kind: OpKind::Reserve {
                tokens,
                cost,
                check_epoch,
                counts: Counts::ONE,
            },
            id: GrantId::new(id),
            part: 0,
            scopes,
            minute,
            now_ms,
        });
        let mut reseeded = false;
        let reply = loop {
            let reseeds_seen = self.reseeds.load(Ordering::Acquire);
            // A dropped connection is retried inside `call`; the grant id
            // makes that repeat harmless.
            let reply = self.submit(op.clone()).await;
            // The marker is missing: nothing was counted; the budgets are
            // seeded again from the request log, and the reserve resent
            // (a second round trip, only after a loss).
            if matches!(reply, Ok([3, ..])) {
                let restored = if reseeded {
                    Err("the counters were lost again while being restored".to_owned())
                } else {
                    self.reseed(reseeds_seen, now_ms).await
                };
                if let Err(why) = restored {
                    break Err(Failure::Lost(why));
                }
                reseeded = true;
                continue;
            }
            break reply;
        };
        // The batcher has let go of the operation: its scopes come back
        // for the grant without a copy.
        let ask = Ask {
            scopes: Arc::try_unwrap(op).map_or_else(|op| op.scopes.clone(), |op| op.scopes),
            tokens,
            cost,
            now_ms,
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
        let refusal = match reply {
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
            [4, ..] => {
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
                self.retry_later(
                    Arc::new(settle_op(grant, 0, 0)),
                    "a reserve that timed out is cancelled",
                );
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
            let mut command = script_command();
            command.arg(1 + chunk.len()).arg(self.epoch_key());
            for SpentIn { scope, period, .. } in chunk.iter() {
                let window = budget_window(*period, now_ms);
                command.arg(format!("{}:spent:{window}", self.scope_base(scope)));
            }
            command.arg("seed");
            // The marker goes with the last chunk: until then, requests
            // still find it missing and wait.
            if index + 1 == chunks.len() {
                command.arg(now_ms);
            } else {
                command.arg("");
            }
            for SpentIn { period, spent, .. } in chunk.iter() {
                command
                    .arg(spent.min(&REDIS_MAX))
                    .arg(budget_ttl_secs(*period, now_ms));
            }
            self.call(&Request::Script(command))
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

    async fn settle_shared(self: &Arc<Self>, grant: Grant, tokens: u64, cost: Nanos) {
        if grant.scopes.is_empty() {
            return;
        }
        let Err(grant) = self.settle_into_leases(grant, tokens, cost) else {
            return;
        };
        let op = Arc::new(settle_op(grant, tokens, cost));
        let result = self.submit(op.clone()).await;
        self.after_settle(op, result);
    }

    /// Queues a settle that nobody waits for: the batcher handles its
    /// answer (`after_settle`), so the caller needs no task of its
    /// own. Gives the grant back outside a runtime.
    fn settle_detached(
        self: &Arc<Self>,
        grant: Grant,
        tokens: u64,
        cost: Nanos,
    ) -> Result<(), Grant> {
        if grant.scopes.is_empty() {
            return Ok(());
        }
        let grant = match self.settle_into_leases(grant, tokens, cost) {
            Ok(()) => return Ok(()),
            Err(grant) => grant,
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(grant);
        }
        self.send_detached(settle_op(grant, tokens, cost));
        Ok(())
    }

    /// Queues a settle (or a renewal) nobody waits for; the batcher handles
    /// its answer, retrying it if it fails.
    fn send_detached(self: &Arc<Self>, op: Op) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("a settle could not be sent: no runtime");
            return;
        };
        let op = Arc::new(op);
        let Some(queue) = self.queue(&op) else {
            self.retry_later(op, "a settle is retried");
            return;
        };
        if let Err(refused) = queue.try_send(Pending { op, answer: None }) {
            // The queue is full (or the batcher gone): wait for room on a
            // task, as an awaited settle would.
            let op = match refused {
                mpsc::error::TrySendError::Full(pending)
                | mpsc::error::TrySendError::Closed(pending) => pending.op,
            };
            let inner = self.clone();
            runtime.spawn(async move {
                let result = inner.submit(op.clone()).await;
                inner.after_settle(op, result);
            });
        }
    }

    /// What follows a settle's answer, awaited or not: a refusal
    /// by Redis is logged (sending it again would not help), any other
    /// failure sent again later.
    fn after_settle(self: &Arc<Self>, op: Arc<Op>, result: Result<Answer, Failure>) {
        match result {
            Ok(_) => {}
            Err(failure @ Failure::Reply(_)) => {
                self.warn_unavailable(&failure, "a settle is lost (Redis refused it)");
            }
            Err(_) => self.retry_later(op, "a settle is retried"),
        }
    }

    /// Retries a settle (or cancel) off the request path, with backoff,
    /// for up to the lease: settles are idempotent, so one whose answer
    /// was lost may be sent again. Past the lease its reservation has
    /// lapsed anyway, and only its spend is lost from the counters (the
    /// request log keeps it). At most `MAX_RETRYING` wait at once.
    fn retry_later(self: &Arc<Self>, op: Arc<Op>, what: &'static str) {
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
                match inner.submit(op.clone()).await {
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

    async fn renew_shared(self: &Arc<Self>, op: Arc<Op>) -> bool {
        match self.submit(op).await {
            Ok(_) => true,
            Err(failure) => {
                self.warn_unavailable(&failure, "a reservation in progress was not renewed");
                false
            }
        }
    }

    async fn budget_used_shared(&self, scope: &Scope, period: Period, now_ms: u64) -> Nanos {
        let minute = minute_of(now_ms);
        let window = budget_window(period, now_ms);
        let base = self.scope_base(scope);
        let mut command = script_command();
        command
            .arg(2)
            .arg(format!("{base}:spent:{window}"))
            .arg(format!("{base}:held:{window}"))
            .arg("used")
            .arg(minute)
            .arg(self.lease_minutes)
            .arg(budget_ttl_secs(period, now_ms));
        let reply = match self.call(&Request::Script(command)).await {
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
    /// At once from the leases this instance holds, when they have room;
    /// otherwise in Redis.
    fn start_reserve(&self, ask: Ask) -> Reserving<'_> {
        let ask = if ask.scopes.is_empty() {
            ask
        } else {
            let check_epoch = self.inner.reseed.get().is_some();
            match self.inner.serve_from_leases(ask, check_epoch) {
                Ok(grant) => return Reserving::Now(Ok(grant)),
                Err(ask) => ask,
            }
        };
        Reserving::Later(Box::pin(self.inner.reserve_shared(ask, fresh_grant_id())))
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
            let mut command = script_command();
            command
                .arg(1)
                .arg(format!("{}:spent:{window}", self.inner.scope_base(&scope)))
                .arg("floor")
                .arg(spent.min(REDIS_MAX))
                .arg(ttl);
            if let Err(failure) = self.inner.call(&Request::Script(command)).await {
                self.inner
                    .warn_unavailable(&failure, "past spend not counted for a new budget");
            }
        })
    }

    fn settle_detached(&self, grant: Grant, tokens: u64, cost: Nanos) -> Result<(), Grant> {
        self.inner.settle_detached(grant, tokens, cost)
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

    fn renews_itself(&self, grant: &Grant) -> bool {
        lease::served_from_lease(grant)
    }

    fn shutdown(&self) -> LimitFuture<'_, ()> {
        Box::pin(self.inner.close_leases())
    }

    fn renew(&self, grant: &Grant, now_ms: u64) -> LimitFuture<'_, bool> {
        if grant.scopes.is_empty() {
            return Box::pin(std::future::ready(true));
        }
        // Leases are renewed by their table's ticker.
        if lease::served_from_lease(grant) {
            return Box::pin(std::future::ready(true));
        }
        let op = Op {
            kind: OpKind::Renew {
                to_minute: minute_of(now_ms),
                held: grant.cost,
                in_flight: 1,
                after_part_one: Some((grant.cost, 1)),
                lease: false,
            },
            id: grant.id,
            part: grant.part,
            scopes: grant.scopes.clone(),
            minute: grant.minute,
            now_ms: grant.now_ms,
        };
        Box::pin(self.inner.renew_shared(Arc::new(op)))
    }
}

fn grant_of(ask: Ask, id: u128, minute: u64, remaining: Remaining) -> Grant {
    Grant {
        id: GrantId::new(id),
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
    // The top bit is clear: set, it marks a grant served from leases.
    ((u128::from(random) << 64) | u128::from(sequence)) & !lease::SERVED_FROM_LEASE
}

/// How long a budget window's spend is kept from `now_ms` (0: for ever).
fn budget_ttl_secs(period: Period, now_ms: u64) -> u64 {
    budget_reset_in(period, now_ms).map_or(0, |left| (left + BUDGET_MARGIN).as_secs().max(1))
}

/// A limit as the script reads it: empty for none.
fn limit_arg(command: &mut Cmd, limit: Option<u64>) {
    match limit {
        Some(limit) => command.arg(limit.min(REDIS_MAX)),
        None => command.arg(""),
    };
}

/// The settle that undoes a reserve (by its id: nothing if it was never
/// applied). A request's is counted as a request all the same, as a
/// request refused upstream would be; a lease's gives its requests back.
fn cancel_op(op: &Op) -> Option<Op> {
    let OpKind::Reserve {
        tokens,
        cost,
        counts,
        ..
    } = op.kind
    else {
        return None;
    };
    let request_change = if counts == Counts::ONE {
        0
    } else {
        -(counts.requests.min(REDIS_MAX) as i64)
    };
    Some(Op {
        kind: OpKind::Settle {
            token_change: -(tokens.min(REDIS_MAX) as i64),
            held: cost,
            cost: 0,
            request_change,
            released: counts.in_flight,
            lease: counts != Counts::ONE,
        },
        scopes: op.scopes.clone(),
        ..*op
    })
}

/// The settle of a grant at its actual tokens and cost. The script knows
/// from the grant's record whether, and in which minute, its reservation
/// counts.
fn settle_op(grant: Grant, tokens: u64, cost: Nanos) -> Op {
    let token_change = tokens.min(REDIS_MAX) as i64 - grant.tokens.min(REDIS_MAX) as i64;
    Op {
        kind: OpKind::Settle {
            token_change,
            held: grant.cost,
            cost,
            request_change: 0,
            released: 1,
            lease: false,
        },
        id: grant.id,
        part: grant.part,
        scopes: grant.scopes,
        minute: grant.minute,
        now_ms: grant.now_ms,
    }
}

/// The batcher: sends whatever operations are waiting as one script call,
/// one call at a time, until the limiter is dropped. Reserves go at once;
/// settles, renewals and cancels wait up to `BACKGROUND_LINGER` for
/// company, and ride along, ahead of them, with any reserves sent
/// meanwhile: under load, and between one client's requests, a request's
/// settle shares the call of a later request's reserve, which then finds
/// the capacity it released.
async fn run_batches(
    inner: Weak<Inner>,
    mut reserves: mpsc::Receiver<Pending>,
    mut background: mpsc::Receiver<Pending>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut lingering: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    // When the oldest lingering operation must go.
    let mut due: Option<tokio::time::Instant> = None;
    let mut line = inner
        .upgrade()
        .and_then(|inner| inner.line.clone())
        .map(Line::new);
    loop {
        let room = MAX_BATCH - lingering.len();
        let due_now = tokio::select! {
            biased;
            received = reserves.recv_many(&mut batch, MAX_BATCH) => {
                if received == 0 {
                    return;
                }
                false
            }
            received = background.recv_many(&mut lingering, room), if room > 0 =>
            {
                if received == 0 {
                    return;
                }
                lingering.len() >= MAX_BATCH
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                if due.is_some() => true,
        };
        // Whatever else is lingering rides along too (a steady stream of
        // reserves must not keep it waiting).
        while lingering.len() < MAX_BATCH
            && let Ok(pending) = background.try_recv()
        {
            lingering.push(pending);
        }
        if batch.is_empty() && !due_now {
            if !lingering.is_empty() {
                due.get_or_insert_with(|| tokio::time::Instant::now() + BACKGROUND_LINGER);
            }
            continue;
        }
        // Lingering operations go first: a settle releases what it held
        // before the reserves behind it are checked.
        batch.splice(0..0, lingering.drain(..));
        due = None;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.send_batch(&mut batch, line.as_mut()).await;
    }
}

/// An error after which the same request on a fresh connection may work.
fn is_dropped(error: &RedisError) -> bool {
    !error.is_connection_refusal()
        && !error.is_timeout()
        && (error.is_connection_dropped() || error.is_unrecoverable_error())
}

/// Keeps `[A-Za-z0-9_.-]` and percent-encodes every other byte: injective,
/// and free of the `{`, `}` and `:` that structure key names.
#[cfg(test)]
fn escape_id(id: &str) -> String {
    let mut escaped = String::with_capacity(id.len());
    push_escaped_id(&mut escaped, id);
    escaped
}

/// Appends `id` with every byte outside `[A-Za-z0-9_.-]` percent-encoded.
fn push_escaped_id(out: &mut String, id: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

/// Appends `value` as 32 lowercase hex digits (`{:032x}`), without the
/// formatting machinery: once per operation of every batch.
fn push_hex128(out: &mut String, value: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..32).rev() {
        out.push(char::from(HEX[((value >> (shift * 4)) & 0xf) as usize]));
    }
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

    /// An operation is allocated for every renewal (and held by every
    /// reserve's future): word-aligned, mimalloc serves it through its
    /// plain entry point.
    #[test]
    fn operations_are_word_aligned() {
        assert!(std::mem::align_of::<Op>() <= std::mem::size_of::<usize>());
    }

    #[test]
    fn key_pieces_are_written_as_the_formatting_wrote_them() {
        for value in [
            0,
            1,
            0xabc,
            u128::from(u64::MAX),
            u128::MAX,
            0x0123_4567_89ab_cdef << 40,
        ] {
            let mut ours = String::new();
            push_hex128(&mut ours, value);
            assert_eq!(ours, format!("{value:032x}"));
        }
        assert_eq!(escape_id("key_1.a-b"), "key_1.a-b");
        assert_eq!(escape_id("a b{}:%é"), "a%20b%7B%7D%3A%25%C3%A9");
    }

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
