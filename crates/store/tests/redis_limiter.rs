//! `RedisLimiter` against a real Redis (127.0.0.1:6379, or
//! `SWITCHBOARD_TEST_REDIS_URL`): the same answers as `MemoryLimiter`,
//! atomic reservations across two instances, expiry of lost reservations,
//! behaviour when Redis is unreachable, and key names. Without a Redis a
//! test writes `SKIPPED: ...` to standard error (past libtest's capture)
//! and passes, except when `CI` is set, where it fails. Each test writes
//! under a random key prefix and deletes its keys.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard_core::mix::splitmix64;
use switchboard_policy::limits::LimitFuture;
use switchboard_policy::limits::{
    Ask, Budget, Grant, GrantId, Limiter, MemoryLimiter, Nanos, Period, Refusal, Rules, Scope,
    ScopeKind,
};
use switchboard_store::RedisLimiter;
use switchboard_store::redis_limiter::{HASH_TAG, RedisLimiterConfig, Reseed, SpentIn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// The Redis to test against, or `None` (after printing why) when there is
/// none and `CI` is not set.
async fn redis_url(test: &str) -> Option<String> {
    let url =
        std::env::var("SWITCHBOARD_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let probe = async {
        let client = redis::Client::open(url.as_str())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
    };
    let why = match tokio::time::timeout(Duration::from_secs(3), probe).await {
        Ok(Ok(_)) => return Some(url),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no answer within 3 s".to_owned(),
    };
    switchboard_testkit::skip_or_fail(
        test,
        &format!(
            "Redis is not reachable at SWITCHBOARD_TEST_REDIS_URL (default {DEFAULT_URL}): {why}"
        ),
    );
    None
}

/// A key prefix no other test run shares.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let random = splitmix64(nanos ^ u64::from(std::process::id()).rotate_left(32));
    format!("sbtest:{test}:{random:016x}:")
}

/// Milliseconds since the epoch, one second into the current minute, so a
/// test's offsets of a few seconds stay in one minute.
/// Waits, if need be, for the next minute to begin, so that a test that
/// takes a few seconds runs within one minute: a lease's hold lapses by
/// the minute it was taken in, which a test crossing a minute would split.
async fn early_in_a_minute() {
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        % 60_000;
    if into > 45_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into + 1_200)).await;
    }
}

fn minute_start_now() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    now / 60_000 * 60_000 + 1_000
}

async fn limiter(url: &str, prefix: &str, fail_open: bool) -> RedisLimiter {
    RedisLimiter::connect(url, fail_open)
        .await
        .expect("connect")
        .with_prefix(prefix)
}

async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every key under a prefix.
async fn keys_under(url: &str, prefix: &str) -> Vec<String> {
    let mut connection = raw_connection(url).await;
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

async fn clean_up(url: &str, prefix: &str) {
    let keys = keys_under(url, prefix).await;
    if !keys.is_empty() {
        let mut connection = raw_connection(url).await;
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

fn scope(kind: ScopeKind, id: &str) -> Scope {
    Scope {
        kind,
        id: id.into(),
    }
}

fn budget(limit: Nanos, period: Period) -> Option<Budget> {
    Some(Budget { limit, period })
}

fn ask(scopes: &[(Scope, Rules)], tokens: u64, cost: Nanos, now_ms: u64) -> Ask {
    Ask {
        scopes: scopes.to_vec(),
        tokens,
        cost,
        now_ms,
    }
}

// ---------------------------------------------------------------------------
// (1) Same answers as MemoryLimiter.

#[derive(Debug, Clone)]
enum Step {
    /// Scopes by index into the pool.
    Reserve {
        scopes: Vec<usize>,
        tokens: u64,
        cost: Nanos,
        at: u64,
    },
    /// Settles the grant of an earlier step (by step index), if any.
    Settle {
        reserve_step: usize,
        tokens: u64,
        cost: Nanos,
    },
    Used {
        scope: usize,
        at: u64,
    },
}

fn pool() -> Vec<(Scope, Rules)> {
    vec![
        (
            scope(ScopeKind::Key, "key:α/1 {x}"),
            Rules {
                requests_per_minute: Some(6),
                tokens_per_minute: Some(1_000),
                max_concurrent: Some(3),
                budget: budget(10_000, Period::Daily),
            },
        ),
        (
            scope(ScopeKind::Team, "team one"),
            Rules {
                max_concurrent: Some(4),
                budget: budget(25_000, Period::Monthly),
                ..Rules::default()
            },
        ),
        (
            scope(ScopeKind::User, "user\n%41"),
            Rules {
                tokens_per_minute: Some(300),
                ..Rules::default()
            },
        ),
        (scope(ScopeKind::Deployment, "dep"), Rules::default()),
        (
            scope(ScopeKind::Key, "k2"),
            Rules {
                requests_per_minute: Some(20),
                budget: budget(5_000, Period::Weekly),
                ..Rules::default()
            },
        ),
        (
            scope(ScopeKind::Team, "t-total"),
            Rules {
                budget: budget(8_000, Period::Total),
                ..Rules::default()
            },
        ),
    ]
}

/// A fixed opening that reaches every kind of answer, then a seeded random
/// walk. Time moves forward by seconds, now and then to the next minute,
/// and once to the next day after everything is settled; reservations
/// never stay open longer than the lease.
fn script(base: u64) -> Vec<Step> {
    // The opening, with the state it leaves in key 0 (6 requests and 1000
    // tokens a minute, 3 concurrent, 10000 a day).
    let mut steps = vec![
        // 0-3: three in flight, a fourth refused for concurrency.
        Step::Reserve {
            scopes: vec![0, 1, 3],
            tokens: 100,
            cost: 2_000,
            at: base,
        },
        Step::Reserve {
            scopes: vec![0, 1],
            tokens: 100,
            cost: 2_000,
            at: base + 10,
        },
        Step::Reserve {
            scopes: vec![0, 2],
            tokens: 100,
            cost: 2_000,
            at: base + 20,
        },
        Step::Reserve {
            scopes: vec![0],
            tokens: 1,
            cost: 1,
            at: base + 30,
        },
        // 4-5: 6000 held; settling one at 40 tokens and 500 spent.
        Step::Used {
            scope: 0,
            at: base + 40,
        },
        Step::Settle {
            reserve_step: 0,
            tokens: 40,
            cost: 500,
        },
        // 6-9: 240 tokens + 500 fit; then 300 more do not, nor 201 on
        // user 2 (already at 100 of 300).
        Step::Reserve {
            scopes: vec![0],
            tokens: 500,
            cost: 0,
            at: base + 50,
        },
        Step::Settle {
            reserve_step: 6,
            tokens: 500,
            cost: 0,
        },
        Step::Reserve {
            scopes: vec![0],
            tokens: 300,
            cost: 0,
            at: base + 60,
        },
        Step::Reserve {
            scopes: vec![2, 3],
            tokens: 201,
            cost: 0,
            at: base + 70,
        },
        // 10-13: 2500 spent, nothing held: 7501 does not fit, 7500 does.
        Step::Settle {
            reserve_step: 1,
            tokens: 100,
            cost: 2_000,
        },
        Step::Settle {
            reserve_step: 2,
            tokens: 0,
            cost: 0,
        },
        Step::Reserve {
            scopes: vec![3, 0],
            tokens: 1,
            cost: 7_501,
            at: base + 80,
        },
        Step::Reserve {
            scopes: vec![3, 0],
            tokens: 1,
            cost: 7_500,
            at: base + 90,
        },
        // 14-15: the sixth request of the minute, then a seventh refused.
        Step::Reserve {
            scopes: vec![0],
            tokens: 0,
            cost: 0,
            at: base + 100,
        },
        Step::Reserve {
            scopes: vec![0],
            tokens: 0,
            cost: 0,
            at: base + 110,
        },
        Step::Used {
            scope: 0,
            at: base + 120,
        },
        Step::Used {
            scope: 1,
            at: base + 120,
        },
        // 18-19: refused by key 0 in second place, so key 4 counted nothing.
        Step::Reserve {
            scopes: vec![4, 0],
            tokens: 0,
            cost: 0,
            at: base + 130,
        },
        Step::Reserve {
            scopes: vec![4],
            tokens: 0,
            cost: 10,
            at: base + 140,
        },
        Step::Settle {
            reserve_step: 13,
            tokens: 1,
            cost: 7_000,
        },
        Step::Settle {
            reserve_step: 14,
            tokens: 0,
            cost: 0,
        },
        Step::Settle {
            reserve_step: 19,
            tokens: 0,
            cost: 5,
        },
        // 23-26: the next minute starts the per-minute counters again.
        Step::Reserve {
            scopes: vec![0, 2],
            tokens: 250,
            cost: 0,
            at: base + 60_000,
        },
        Step::Used {
            scope: 0,
            at: base + 60_000,
        },
        Step::Used {
            scope: 4,
            at: base + 60_000,
        },
        Step::Used {
            scope: 5,
            at: base + 60_000,
        },
    ];
    let mut seed = 0x5EED_u64;
    let mut draw = |below: u64| {
        seed = splitmix64(seed);
        seed % below
    };
    let mut at = base + 60_000;
    // Every reservation of the opening that is not settled there (refused
    // ones settle as "nothing to settle").
    let mut open: Vec<usize> = (0..steps.len())
        .filter(|index| matches!(steps[*index], Step::Reserve { .. }))
        .filter(|index| {
            !steps.iter().any(
                |step| matches!(step, Step::Settle { reserve_step, .. } if reserve_step == index),
            )
        })
        .collect();
    let day_jump_at = steps.len() + 200;
    while steps.len() < 600 {
        if steps.len() == day_jump_at {
            for reserve_step in open.drain(..) {
                steps.push(Step::Settle {
                    reserve_step,
                    tokens: 10,
                    cost: 100,
                });
            }
            at += 86_400_000;
        }
        let roll = draw(100);
        if roll < 55 {
            let mut scopes = BTreeSet::new();
            for _ in 0..1 + draw(3) {
                scopes.insert(draw(6) as usize);
            }
            let mut scopes: Vec<usize> = scopes.into_iter().collect();
            if draw(2) == 0 {
                scopes.reverse();
            }
            at += draw(3_000);
            if draw(40) == 0 {
                at += 60_000;
            }
            open.push(steps.len());
            steps.push(Step::Reserve {
                scopes,
                tokens: draw(250),
                cost: draw(3_000),
                at,
            });
        } else if roll < 92 && !open.is_empty() {
            let reserve_step = open.swap_remove(draw(open.len() as u64) as usize);
            let (tokens, cost) = match &steps[reserve_step] {
                Step::Reserve { tokens, cost, .. } => (*tokens, *cost),
                _ => unreachable!(),
            };
            steps.push(Step::Settle {
                reserve_step,
                tokens: draw(tokens * 3 / 2 + 1),
                cost: draw(cost + 1),
            });
        } else {
            steps.push(Step::Used {
                scope: [0, 1, 4, 5][draw(4) as usize],
                at,
            });
        }
    }
    steps
}

/// Runs the steps, answering one line per step.
async fn run(limiter: &dyn Limiter, steps: &[Step]) -> Vec<String> {
    let pool = pool();
    let mut grants: Vec<Option<Grant>> = Vec::new();
    let mut answers = Vec::new();
    for step in steps {
        let mut granted = None;
        let answer = match step {
            Step::Reserve {
                scopes,
                tokens,
                cost,
                at,
            } => {
                let scopes: Vec<(Scope, Rules)> =
                    scopes.iter().map(|index| pool[*index].clone()).collect();
                let result = limiter.reserve(ask(&scopes, *tokens, *cost, *at)).await;
                granted = result.as_ref().ok().cloned();
                // Grant ids differ between limiters by design.
                format!(
                    "{:?}",
                    result.map(|grant| Grant {
                        id: GrantId::new(0),
                        ..grant
                    })
                )
            }
            Step::Settle {
                reserve_step,
                tokens,
                cost,
            } => match grants[*reserve_step].take() {
                Some(grant) => {
                    limiter.settle(grant, *tokens, *cost).await;
                    "settled".to_owned()
                }
                None => "nothing to settle".to_owned(),
            },
            Step::Used { scope, at } => {
                let (scope, rules) = &pool[*scope];
                let period = rules.budget.unwrap().period;
                format!("used {}", limiter.budget_used(scope, period, *at).await)
            }
        };
        grants.push(granted);
        answers.push(answer);
    }
    answers
}

#[tokio::test]
async fn redis_answers_every_call_as_the_memory_limiter_does() {
    let Some(url) = redis_url("redis_answers_every_call_as_the_memory_limiter_does").await else {
        return;
    };
    let prefix = unique_prefix("conformance");
    let redis = limiter(&url, &prefix, false).await;
    let memory = MemoryLimiter::new();
    let steps = script(minute_start_now());
    let expected = run(&memory, &steps).await;
    let actual = run(&redis, &steps).await;
    clean_up(&url, &prefix).await;

    for (index, (expected, actual)) in expected.iter().zip(&actual).enumerate() {
        assert_eq!(
            actual, expected,
            "step {index} ({:?}): Redis answered differently from memory",
            steps[index]
        );
    }
    assert_eq!(actual.len(), steps.len());
    // The sequence must reach every kind of answer, or it proves little.
    let all = expected.join("\n");
    for needle in [
        "Ok(Grant",
        "max_concurrent",
        "requests_per_minute",
        "tokens_per_minute",
        "Err(Budget",
        "requests: Some((6, 0))",
        "used 0",
    ] {
        assert!(all.contains(needle), "the script never produced {needle:?}");
    }
    assert!(
        expected
            .iter()
            .filter(|answer| answer.starts_with("used ") && *answer != "used 0")
            .count()
            > 10,
        "budget reads must see non-zero use"
    );
}

// ---------------------------------------------------------------------------
// (2) A budget under a concurrent burst from two instances.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_from_two_instances_never_overshoot_a_budget() {
    let Some(url) =
        redis_url("concurrent_reservations_from_two_instances_never_overshoot_a_budget").await
    else {
        return;
    };
    const LIMIT: Nanos = 1_000_000_000;
    const WORST: Nanos = 7_000_000;
    let prefix = unique_prefix("budget-race");
    let instances = [
        Arc::new(limiter(&url, &prefix, false).await),
        Arc::new(limiter(&url, &prefix, false).await),
    ];
    let key = scope(ScopeKind::Key, "shared key");
    let rules = Rules {
        budget: budget(LIMIT, Period::Monthly),
        ..Rules::default()
    };
    let now_ms = minute_start_now();

    // Phase 1: 200 reserves at once, none settled until all have answered.
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for index in 0..200usize {
        let limiter = instances[index % 2].clone();
        let barrier = barrier.clone();
        let scopes = vec![(key.clone(), rules)];
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            limiter.reserve(ask(&scopes, 10, WORST, now_ms)).await
        }));
    }
    let mut granted = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(grant) => granted.push(grant),
            Err(Refusal::Budget { used, limit, .. }) => {
                assert_eq!(limit, LIMIT);
                assert!(used + WORST > LIMIT, "refused with room left: used {used}");
            }
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    let fits = (LIMIT / WORST) as usize;
    assert_eq!(granted.len(), fits, "exactly the reservations that fit");
    assert_eq!(
        instances[0]
            .budget_used(&key, Period::Monthly, now_ms)
            .await,
        fits as u64 * WORST
    );

    // Settle at random actual costs, from either instance.
    let mut spent: Nanos = 0;
    let mut tasks = Vec::new();
    for (index, grant) in granted.into_iter().enumerate() {
        let actual = splitmix64(index as u64) % (WORST + 1);
        spent += actual;
        let limiter = instances[(index + 1) % 2].clone();
        tasks.push(tokio::spawn(async move {
            limiter.settle(grant, 5, actual).await
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        instances[1]
            .budget_used(&key, Period::Monthly, now_ms)
            .await,
        spent
    );

    // Phase 2: waves of reserve-then-settle (settling near the worst case)
    // until the budget refuses; spend never passes the limit.
    let mut refused = 0;
    for wave in 0..6u64 {
        let mut tasks = Vec::new();
        for index in 0..100u64 {
            let limiter = instances[(index % 2) as usize].clone();
            let scopes = vec![(key.clone(), rules)];
            let actual = WORST - splitmix64(wave * 1_000 + index) % 2_000_000;
            tasks.push(tokio::spawn(async move {
                match limiter.reserve(ask(&scopes, 10, WORST, now_ms)).await {
                    Ok(grant) => {
                        limiter.settle(grant, 5, actual).await;
                        Some(actual)
                    }
                    Err(Refusal::Budget { .. }) => None,
                    Err(other) => panic!("unexpected refusal {other:?}"),
                }
            }));
        }
        for task in tasks {
            match task.await.unwrap() {
                Some(actual) => spent += actual,
                None => refused += 1,
            }
        }
    }
    let used = instances[0]
        .budget_used(&key, Period::Monthly, now_ms)
        .await;
    clean_up(&url, &prefix).await;
    assert_eq!(used, spent, "every settled cost counted once, nothing held");
    assert!(used <= LIMIT, "spent {used} over the limit {LIMIT}");
    assert!(refused > 0, "the waves must reach the limit");
}

// ---------------------------------------------------------------------------
// (3) Per-minute and concurrency limits across two instances.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_minute_and_concurrency_limits_hold_across_instances() {
    let Some(url) = redis_url("per_minute_and_concurrency_limits_hold_across_instances").await
    else {
        return;
    };
    let prefix = unique_prefix("across");
    let first = Arc::new(limiter(&url, &prefix, false).await);
    let second = Arc::new(limiter(&url, &prefix, false).await);
    let now_ms = minute_start_now();
    let both = [first.clone(), second.clone()];

    // Requests per minute: 10 in total, whichever instance asks.
    let key = scope(ScopeKind::Key, "rpm");
    let rules = Rules {
        requests_per_minute: Some(10),
        ..Rules::default()
    };
    let scopes = [(key.clone(), rules)];
    for index in 0..15u64 {
        let limiter = &both[(index % 2) as usize];
        match limiter.reserve(ask(&scopes, 1, 0, now_ms + index)).await {
            Ok(grant) => {
                assert!(index < 10, "request {index} over the limit was granted");
                assert_eq!(grant.remaining.requests, Some((10, 9 - index)));
                both[((index + 1) % 2) as usize].settle(grant, 1, 0).await;
            }
            Err(Refusal::Limited {
                limit: "requests_per_minute",
                retry_after,
                scope,
            }) => {
                assert!(index >= 10, "request {index} refused early");
                assert_eq!(scope, key);
                assert_eq!(retry_after, Duration::from_millis(59_000 - index));
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    // The next minute starts again.
    assert!(
        second
            .reserve(ask(&scopes, 1, 0, now_ms + 60_000))
            .await
            .is_ok()
    );

    // Tokens per minute, with settling on the other instance.
    let tokens_scopes = [(
        scope(ScopeKind::User, "tpm"),
        Rules {
            tokens_per_minute: Some(1_000),
            ..Rules::default()
        },
    )];
    let mut grants = Vec::new();
    for index in 0..3 {
        grants.push(
            both[index % 2]
                .reserve(ask(&tokens_scopes, 300, 0, now_ms))
                .await
                .unwrap(),
        );
    }
    assert!(matches!(
        second.reserve(ask(&tokens_scopes, 300, 0, now_ms)).await,
        Err(Refusal::Limited {
            limit: "tokens_per_minute",
            ..
        })
    ));
    second.settle(grants.pop().unwrap(), 100, 0).await;
    let grant = first
        .reserve(ask(&tokens_scopes, 300, 0, now_ms))
        .await
        .expect("settling at 100 tokens freed 200");
    assert_eq!(grant.remaining.tokens, Some((1_000, 0)));

    // Concurrency: 40 at once over both instances, 5 allowed.
    let team = scope(ScopeKind::Team, "concurrency");
    let concurrency_scopes = vec![(
        team.clone(),
        Rules {
            max_concurrent: Some(5),
            ..Rules::default()
        },
    )];
    let barrier = Arc::new(tokio::sync::Barrier::new(40));
    let mut tasks = Vec::new();
    for index in 0..40usize {
        let limiter = both[index % 2].clone();
        let barrier = barrier.clone();
        let scopes = concurrency_scopes.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            limiter.reserve(ask(&scopes, 1, 0, now_ms)).await
        }));
    }
    let mut in_flight = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(grant) => in_flight.push(grant),
            Err(Refusal::Limited {
                limit: "max_concurrent",
                retry_after,
                ..
            }) => assert_eq!(retry_after, Duration::from_secs(1)),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(in_flight.len(), 5, "exactly max_concurrent in flight");
    // Two end (settled by the other instance): two more may start.
    for grant in in_flight.drain(..2) {
        second.settle(grant, 1, 0).await;
    }
    for _ in 0..2 {
        in_flight.push(
            first
                .reserve(ask(&concurrency_scopes, 1, 0, now_ms + 5))
                .await
                .unwrap(),
        );
    }
    assert!(
        first
            .reserve(ask(&concurrency_scopes, 1, 0, now_ms + 5))
            .await
            .is_err()
    );
    clean_up(&url, &prefix).await;
}

// ---------------------------------------------------------------------------
// Lost settles (a crashed instance) lapse with the lease.

#[tokio::test]
async fn reservations_never_settled_lapse_after_the_lease() {
    let Some(url) = redis_url("reservations_never_settled_lapse_after_the_lease").await else {
        return;
    };
    let prefix = unique_prefix("lease");
    let config = RedisLimiterConfig {
        lease: Duration::from_secs(120),
        ..RedisLimiterConfig::default()
    };
    let crashed = RedisLimiter::connect_with(&url, config.clone())
        .await
        .unwrap()
        .with_prefix(&prefix);
    let survivor = RedisLimiter::connect_with(&url, config)
        .await
        .unwrap()
        .with_prefix(&prefix);
    let key = scope(ScopeKind::Key, "k");
    let scopes = [(
        key.clone(),
        Rules {
            max_concurrent: Some(1),
            budget: budget(1_000, Period::Total),
            ..Rules::default()
        },
    )];
    let now_ms = minute_start_now();
    let lost = crashed.reserve(ask(&scopes, 1, 800, now_ms)).await.unwrap();
    drop(crashed);
    // Within the lease, the lost reservation still counts...
    assert!(matches!(
        survivor
            .reserve(ask(&scopes, 1, 100, now_ms + 60_000))
            .await,
        Err(Refusal::Limited {
            limit: "max_concurrent",
            ..
        })
    ));
    assert_eq!(
        survivor
            .budget_used(&key, Period::Total, now_ms + 60_000)
            .await,
        800
    );
    // ...and two minutes later it does not.
    assert_eq!(
        survivor
            .budget_used(&key, Period::Total, now_ms + 120_000)
            .await,
        0
    );
    let grant = survivor
        .reserve(ask(&scopes, 1, 900, now_ms + 120_000))
        .await
        .expect("the lost reservation lapsed");
    // A late settle of the lapsed grant adds its spend and releases nothing
    // that belongs to the live one.
    survivor.settle(lost, 1, 50).await;
    assert_eq!(
        survivor
            .budget_used(&key, Period::Total, now_ms + 120_000)
            .await,
        950
    );
    survivor.settle(grant, 1, 900).await;
    assert_eq!(
        survivor
            .budget_used(&key, Period::Total, now_ms + 120_000)
            .await,
        950
    );
    clean_up(&url, &prefix).await;
}

/// A request still running when half its lease is gone renews it, and
/// keeps counting past the lease; its settle releases it where it counts.
#[tokio::test]
async fn a_renewed_reservation_keeps_counting_past_the_lease() {
    let Some(url) = redis_url("a_renewed_reservation_keeps_counting_past_the_lease").await else {
        return;
    };
    let prefix = unique_prefix("renew");
    let config = RedisLimiterConfig {
        lease: Duration::from_secs(120),
        ..RedisLimiterConfig::default()
    };
    let limiter = RedisLimiter::connect_with(&url, config)
        .await
        .unwrap()
        .with_prefix(&prefix);
    assert_eq!(limiter.lease(), Some(Duration::from_secs(120)));
    let key = scope(ScopeKind::Key, "k");
    let scopes = [(
        key.clone(),
        Rules {
            max_concurrent: Some(1),
            budget: budget(1_000, Period::Total),
            ..Rules::default()
        },
    )];
    let now_ms = minute_start_now();
    let running = limiter.reserve(ask(&scopes, 1, 800, now_ms)).await.unwrap();
    assert!(limiter.renew(&running, now_ms + 60_000).await);

    // Past the lease of the reservation, within that of its renewal.
    let later = now_ms + 120_000;
    assert_eq!(limiter.budget_used(&key, Period::Total, later).await, 800);
    assert!(matches!(
        limiter.reserve(ask(&scopes, 1, 100, later)).await,
        Err(Refusal::Limited {
            limit: "max_concurrent",
            ..
        })
    ));

    // The settle releases the request and its hold from the renewed minute.
    limiter.settle(running.clone(), 1, 300).await;
    assert_eq!(limiter.budget_used(&key, Period::Total, later).await, 300);
    limiter
        .reserve(ask(&scopes, 1, 100, later))
        .await
        .expect("the settled request no longer counts");
    // Renewing a settled grant brings nothing back.
    assert!(limiter.renew(&running, later + 60_000).await);
    assert_eq!(
        limiter
            .budget_used(&key, Period::Total, later + 60_000)
            .await,
        400
    );
    clean_up(&url, &prefix).await;
}

// ---------------------------------------------------------------------------
// (4) Redis unreachable: fail open, fail closed, never hang.

fn quick(fail_open: bool) -> RedisLimiterConfig {
    RedisLimiterConfig {
        fail_open,
        fail_open_budgets: fail_open,
        timeout: Duration::from_millis(300),
        outage_pause: Duration::from_millis(400),
        ..RedisLimiterConfig::default()
    }
}

fn limited_scopes() -> Vec<(Scope, Rules)> {
    vec![(
        scope(ScopeKind::Key, "k"),
        Rules {
            requests_per_minute: Some(1),
            max_concurrent: Some(1),
            budget: budget(10, Period::Daily),
            ..Rules::default()
        },
    )]
}

/// Accepts connections and never answers.
async fn black_hole() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (address, task)
}

#[tokio::test]
async fn an_unreachable_redis_fails_open_or_closed_within_the_timeout() {
    let (silent, silent_task) = black_hole().await;
    let silent_url = format!("redis://{silent}");
    // Port 1 refuses at once; the black hole accepts and never answers.
    for url in ["redis://127.0.0.1:1", silent_url.as_str()] {
        for fail_open in [true, false] {
            let started = Instant::now();
            let limiter = RedisLimiter::connect_with(url, quick(fail_open))
                .await
                .expect("an unreachable Redis is no error at connect");
            assert!(started.elapsed() < Duration::from_secs(1), "connect hung");
            tokio::time::sleep(Duration::from_millis(450)).await; // past the pause

            let started = Instant::now();
            let first = limiter.reserve(ask(&limited_scopes(), 10, 5, 1_000)).await;
            assert!(
                started.elapsed() < Duration::from_millis(1_000),
                "{url}: reserve took {:?}",
                started.elapsed()
            );
            // Inside the pause, Redis is not even tried.
            let started = Instant::now();
            let second = limiter.reserve(ask(&limited_scopes(), 10, 5, 1_000)).await;
            assert!(
                started.elapsed() < Duration::from_millis(200),
                "{url}: no pause"
            );
            if fail_open {
                // Both granted although rpm and concurrency are 1: uncounted.
                let grant = first.expect("fail open grants");
                assert_eq!(grant.remaining.requests, None);
                second.expect("fail open grants again");
                let started = Instant::now();
                limiter.settle(grant, 1, 1).await;
                assert!(started.elapsed() < Duration::from_secs(1), "settle hung");
            } else {
                for answer in [first, second] {
                    match answer {
                        Err(Refusal::Unavailable(message)) => assert!(
                            message.contains("cannot be reached"),
                            "unclear message {message:?}"
                        ),
                        other => panic!("{url}: fail closed answered {other:?}"),
                    }
                }
            }
            let started = Instant::now();
            assert_eq!(
                limiter
                    .budget_used(&limited_scopes()[0].0, Period::Daily, 1_000)
                    .await,
                0
            );
            assert!(limiter.ping().await.is_err());
            assert!(started.elapsed() < Duration::from_secs(1));
        }
    }
    silent_task.abort();
    assert!(RedisLimiter::connect("not a url", true).await.is_err());
}

/// A TCP relay to Redis that a test can cut or take down.
struct Relay {
    address: SocketAddr,
    down: Arc<AtomicBool>,
    /// Requests still reach Redis, its replies are dropped.
    muted: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let muted = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = {
            let (down, muted, links) = (down.clone(), muted.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped: the connection closes
                    }
                    let target = target.clone();
                    let muted = muted.clone();
                    links.lock().unwrap().push(tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut inbound_read, mut inbound_write) = inbound.split();
                        let (mut outbound_read, mut outbound_write) = outbound.into_split();
                        let requests = tokio::io::copy(&mut inbound_read, &mut outbound_write);
                        let replies = async {
                            let mut buffer = vec![0u8; 16_384];
                            loop {
                                let read = outbound_read.read(&mut buffer).await?;
                                if read == 0 {
                                    return Ok::<(), std::io::Error>(());
                                }
                                if !muted.load(Ordering::SeqCst) {
                                    inbound_write.write_all(&buffer[..read]).await?;
                                }
                            }
                        };
                        tokio::select! {
                            _ = requests => {}
                            _ = replies => {}
                        }
                    }));
                }
            })
        };
        Relay {
            address,
            down,
            muted,
            links,
            acceptor,
        }
    }

    /// Closes every open connection, as an idle timeout would.
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Drops Redis's replies (or, unmuting, cuts the connections whose
    /// replies went missing, as a client would give up on them).
    fn set_muted(&self, muted: bool) {
        self.muted.store(muted, Ordering::SeqCst);
        if !muted {
            self.cut();
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

/// `redis://[auth@]host:port[/db]` → (`host:port`, the URL with it replaced).
fn through(url: &str, relay: SocketAddr) -> (String, String) {
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (auth, host_port) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    (
        host_port.to_owned(),
        format!("redis://{auth}{relay}{}", &rest[authority_end..]),
    )
}

#[tokio::test]
async fn a_dropped_connection_is_retried_and_an_outage_recovers() {
    let Some(url) = redis_url("a_dropped_connection_is_retried_and_an_outage_recovers").await
    else {
        return;
    };
    let prefix = unique_prefix("relay");
    let (target, _) = through(&url, "127.0.0.1:0".parse().unwrap());
    let relay = Relay::start(target).await;
    let (_, relayed_url) = through(&url, relay.address);

    let closed = RedisLimiter::connect_with(&relayed_url, quick(false))
        .await
        .unwrap()
        .with_prefix(&prefix);
    let open = RedisLimiter::connect_with(&relayed_url, quick(true))
        .await
        .unwrap()
        .with_prefix(&prefix);
    let key = scope(ScopeKind::Key, "k");
    let scopes = [(
        key.clone(),
        Rules {
            budget: budget(1_000, Period::Daily),
            ..Rules::default()
        },
    )];
    let now_ms = minute_start_now();
    let counted = open.reserve(ask(&scopes, 1, 400, now_ms)).await.unwrap();
    assert!(closed.reserve(ask(&scopes, 1, 0, now_ms)).await.is_ok());

    // An idle drop: the next call is retried on a new connection.
    relay.cut();
    tokio::time::sleep(Duration::from_millis(50)).await;
    closed
        .reserve(ask(&scopes, 1, 0, now_ms))
        .await
        .expect("retried once after the dropped connection");
    assert_eq!(closed.budget_used(&key, Period::Daily, now_ms).await, 400);

    // An outage: fail open grants uncounted, fail closed refuses.
    relay.set_down(true);
    let uncounted = open.reserve(ask(&scopes, 1, 400, now_ms)).await.unwrap();
    assert!(matches!(
        closed.reserve(ask(&scopes, 1, 0, now_ms)).await,
        Err(Refusal::Unavailable(_))
    ));

    // Back up: after the pause both work again, and settling the uncounted
    // grant records its spend without releasing the counted one's hold.
    relay.set_down(false);
    tokio::time::sleep(Duration::from_millis(450)).await;
    open.settle(uncounted, 1, 50).await;
    assert_eq!(
        closed.budget_used(&key, Period::Daily, now_ms).await,
        450,
        "400 held by the counted grant, 50 spent by the uncounted one"
    );
    open.settle(counted, 1, 300).await;
    assert_eq!(open.budget_used(&key, Period::Daily, now_ms).await, 350);
    clean_up(&url, &prefix).await;
}

// ---------------------------------------------------------------------------
// (5) Retries: a reserve or settle applied at most once, a settle that
// fails retried until Redis is back, a reserve that timed out cancelled.

/// A relay to Redis, with a fail-closed limiter through it and one
/// connected directly that sees the truth.
async fn relayed(url: &str, prefix: &str) -> (Relay, RedisLimiter, RedisLimiter) {
    let (target, _) = through(url, "127.0.0.1:0".parse().unwrap());
    let relay = Relay::start(target).await;
    let (_, relayed_url) = through(url, relay.address);
    let through_relay = RedisLimiter::connect_with(&relayed_url, quick(false))
        .await
        .unwrap()
        .with_prefix(prefix);
    let direct = limiter(url, prefix, false).await;
    (relay, through_relay, direct)
}

/// Waits (up to 10 s) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn two_at_once() -> Vec<(Scope, Rules)> {
    vec![(
        scope(ScopeKind::Key, "k"),
        Rules {
            requests_per_minute: Some(100),
            max_concurrent: Some(2),
            budget: budget(10_000, Period::Daily),
            ..Rules::default()
        },
    )]
}

#[tokio::test]
async fn a_settle_sent_twice_is_applied_once() {
    let Some(url) = redis_url("a_settle_sent_twice_is_applied_once").await else {
        return;
    };
    let prefix = unique_prefix("settle-twice");
    let limiter = limiter(&url, &prefix, false).await;
    let scopes = two_at_once();
    let key = scopes[0].0.clone();
    let now_ms = minute_start_now();
    let first = limiter
        .reserve(ask(&scopes, 10, 1_000, now_ms))
        .await
        .unwrap();
    let second = limiter
        .reserve(ask(&scopes, 10, 1_000, now_ms))
        .await
        .unwrap();
    assert_ne!(first.id, second.id, "every grant has an id of its own");
    // The same settle twice, as a retry after a lost answer would send it.
    limiter.settle(first.clone(), 5, 300).await;
    limiter.settle(first, 5, 300).await;
    assert_eq!(
        limiter.budget_used(&key, Period::Daily, now_ms).await,
        300 + 1_000,
        "spent once, the second grant still held"
    );
    // One of two in flight: one more may start, not two.
    assert!(limiter.reserve(ask(&scopes, 10, 0, now_ms)).await.is_ok());
    assert!(matches!(
        limiter.reserve(ask(&scopes, 10, 0, now_ms)).await,
        Err(Refusal::Limited {
            limit: "max_concurrent",
            ..
        })
    ));
    clean_up(&url, &prefix).await;
}

#[tokio::test]
async fn a_reserve_sent_twice_is_counted_once() {
    let Some(url) = redis_url("a_reserve_sent_twice_is_counted_once").await else {
        return;
    };
    let prefix = unique_prefix("reserve-twice");
    let limiter = limiter(&url, &prefix, false).await;
    let scopes = two_at_once();
    let key = scopes[0].0.clone();
    let now_ms = minute_start_now();
    let id = 0x5eed_u128 << 64 | 7;
    let first = limiter
        .reserve_as(ask(&scopes, 10, 1_000, now_ms), id)
        .await
        .unwrap();
    let repeat = limiter
        .reserve_as(ask(&scopes, 10, 1_000, now_ms), id)
        .await
        .unwrap();
    assert_eq!(first, repeat, "the repeat answers as the first did");
    assert_eq!(first.remaining.requests, Some((100, 99)));
    assert_eq!(
        limiter.budget_used(&key, Period::Daily, now_ms).await,
        1_000
    );
    // Counted once for concurrency too: one more fits.
    assert!(limiter.reserve(ask(&scopes, 10, 0, now_ms)).await.is_ok());
    // Once settled, a late repeat counts nothing.
    limiter.settle(first, 5, 400).await;
    assert!(matches!(
        limiter
            .reserve_as(ask(&scopes, 10, 1_000, now_ms), id)
            .await,
        Err(Refusal::Unavailable(_))
    ));
    assert_eq!(limiter.budget_used(&key, Period::Daily, now_ms).await, 400);
    clean_up(&url, &prefix).await;
}

/// Once Redis is back: the settle waiting to be sent again is applied,
/// the first scope has spent `spent`, and both of `two_at_once`'s slots
/// are free again.
async fn applied_once_back(
    through_relay: &RedisLimiter,
    direct: &RedisLimiter,
    scopes: &[(Scope, Rules)],
    now_ms: u64,
    spent: Nanos,
) {
    eventually("the settle is applied once Redis is back", || async {
        through_relay.settles_retrying() == 0
    })
    .await;
    assert_eq!(
        direct
            .budget_used(&scopes[0].0, Period::Daily, now_ms)
            .await,
        spent
    );
    // Released: two may run again.
    for _ in 0..2 {
        direct.reserve(ask(scopes, 1, 0, now_ms)).await.unwrap();
    }
}

/// A settle nobody waits for (`settle_detached`, what the server uses) is
/// queued at once, applied by the batcher, and, when Redis is away, sent
/// again later exactly as an awaited one is.
#[tokio::test]
async fn a_detached_settle_is_applied_and_retried_like_an_awaited_one() {
    let Some(url) = redis_url("a_detached_settle_is_applied_and_retried_like_an_awaited_one").await
    else {
        return;
    };
    let prefix = unique_prefix("settle-detached");
    let (relay, through_relay, direct) = relayed(&url, &prefix).await;
    let scopes = two_at_once();
    let key = scopes[0].0.clone();
    let now_ms = minute_start_now();

    let grant = through_relay
        .reserve(ask(&scopes, 10, 1_000, now_ms))
        .await
        .unwrap();
    assert!(through_relay.settle_detached(grant, 5, 100).is_ok());
    eventually("the detached settle is applied", || async {
        direct.budget_used(&key, Period::Daily, now_ms).await == 100
    })
    .await;

    let grant = through_relay
        .reserve(ask(&scopes, 10, 1_000, now_ms))
        .await
        .unwrap();
    relay.set_down(true);
    assert!(through_relay.settle_detached(grant, 5, 250).is_ok());
    eventually("the failed settle waits to be sent again", || async {
        through_relay.settles_retrying() == 1
    })
    .await;
    assert_eq!(direct.budget_used(&key, Period::Daily, now_ms).await, 1_100);
    relay.set_down(false);
    applied_once_back(&through_relay, &direct, &scopes, now_ms, 350).await;
    clean_up(&url, &prefix).await;
}

#[tokio::test]
async fn a_settle_while_redis_is_away_is_applied_when_it_is_back() {
    let Some(url) = redis_url("a_settle_while_redis_is_away_is_applied_when_it_is_back").await
    else {
        return;
    };
    let prefix = unique_prefix("settle-later");
    let (relay, through_relay, direct) = relayed(&url, &prefix).await;
    let scopes = two_at_once();
    let key = scopes[0].0.clone();
    let now_ms = minute_start_now();
    let grant = through_relay
        .reserve(ask(&scopes, 10, 1_000, now_ms))
        .await
        .unwrap();

    relay.set_down(true);
    let started = Instant::now();
    through_relay.settle(grant, 5, 250).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a settle never waits for Redis to come back"
    );
    assert_eq!(through_relay.settles_retrying(), 1);
    assert_eq!(
        direct.budget_used(&key, Period::Daily, now_ms).await,
        1_000,
        "not settled yet"
    );

    relay.set_down(false);
    applied_once_back(&through_relay, &direct, &scopes, now_ms, 250).await;
    clean_up(&url, &prefix).await;
}

#[tokio::test]
async fn a_reserve_whose_answer_was_lost_is_cancelled() {
    let Some(url) = redis_url("a_reserve_whose_answer_was_lost_is_cancelled").await else {
        return;
    };
    let prefix = unique_prefix("reserve-lost");
    let (relay, through_relay, direct) = relayed(&url, &prefix).await;
    let scopes = two_at_once();
    let key = scopes[0].0.clone();
    let now_ms = minute_start_now();
    // Connected, then deaf: the reserve reaches Redis, its answer does not
    // come back, and the request is refused (fail closed).
    through_relay.ping().await.unwrap();
    relay.set_muted(true);
    assert!(matches!(
        through_relay.reserve(ask(&scopes, 10, 1_000, now_ms)).await,
        Err(Refusal::Unavailable(_))
    ));
    eventually("the lost reserve reached Redis", || async {
        direct.budget_used(&key, Period::Daily, now_ms).await == 1_000
    })
    .await;
    assert_eq!(through_relay.settles_retrying(), 1, "its cancel waits");

    relay.set_muted(false);
    eventually("the refused reservation is released", || async {
        through_relay.settles_retrying() == 0
            && direct.budget_used(&key, Period::Daily, now_ms).await == 0
    })
    .await;
    for _ in 0..2 {
        direct.reserve(ask(&scopes, 1, 0, now_ms)).await.unwrap();
    }
    clean_up(&url, &prefix).await;
}

// ---------------------------------------------------------------------------
// (6) Counters lost in a flush or a restart are restored from the log.

/// A request log as the server would read it: what each budget spent.
#[derive(Default)]
struct FakeLog {
    spent: Mutex<Vec<SpentIn>>,
    reads: AtomicUsize,
    failing: AtomicBool,
}

impl Reseed for FakeLog {
    fn budget_spend(&self, _now_ms: u64) -> LimitFuture<'_, Result<Vec<SpentIn>, String>> {
        Box::pin(async move {
            self.reads.fetch_add(1, Ordering::SeqCst);
            // Slow enough for concurrent requests to pile up behind it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err("the database is away".to_owned());
            }
            Ok(self.spent.lock().unwrap().clone())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_counters_are_restored_from_the_request_log() {
    let Some(url) = redis_url("lost_counters_are_restored_from_the_request_log").await else {
        return;
    };
    let prefix = unique_prefix("reseed");
    let log = Arc::new(FakeLog::default());
    let key = scope(ScopeKind::Key, "k");
    let logged = |spent| {
        vec![SpentIn {
            scope: key.clone(),
            period: Period::Daily,
            spent,
        }]
    };
    *log.spent.lock().unwrap() = logged(700);
    let limiter = Arc::new(limiter(&url, &prefix, false).await.with_reseed(log.clone()));
    let scopes = vec![(
        key.clone(),
        Rules {
            budget: budget(1_000, Period::Daily),
            ..Rules::default()
        },
    )];
    let now_ms = minute_start_now();

    // A Redis that never saw this log: seeded before the first budget check.
    let grant = limiter.reserve(ask(&scopes, 1, 200, now_ms)).await.unwrap();
    assert_eq!(limiter.budget_used(&key, Period::Daily, now_ms).await, 900);
    assert_eq!(
        (limiter.reseeds(), log.reads.load(Ordering::SeqCst)),
        (1, 1)
    );
    limiter.settle(grant, 1, 200).await;
    *log.spent.lock().unwrap() = logged(900);
    // Requests without a budget never wait for a reseed.
    let unbudgeted = vec![(
        scope(ScopeKind::Key, "rate only"),
        Rules {
            requests_per_minute: Some(100),
            ..Rules::default()
        },
    )];

    // A flush: every counter and the marker gone. Twenty requests at once
    // find out, one reseed serves them all, and the budget holds.
    clean_up(&url, &prefix).await;
    assert!(
        limiter
            .reserve(ask(&unbudgeted, 1, 0, now_ms))
            .await
            .is_ok()
    );
    assert_eq!(limiter.reseeds(), 1);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let limiter = limiter.clone();
            let scopes = scopes.clone();
            tokio::spawn(async move { limiter.reserve(ask(&scopes, 1, 200, now_ms)).await })
        })
        .collect();
    for task in tasks {
        match task.await.unwrap() {
            Err(Refusal::Budget { used: 900, .. }) => {}
            other => panic!("a lost budget was handed out afresh: {other:?}"),
        }
    }
    assert_eq!(
        (limiter.reseeds(), log.reads.load(Ordering::SeqCst)),
        (2, 2),
        "one reseed for all"
    );
    let grant = limiter.reserve(ask(&scopes, 1, 100, now_ms)).await.unwrap();
    limiter.settle(grant, 1, 100).await;

    // When the log cannot be read, budgeted requests are refused (fail
    // closed) until it can.
    clean_up(&url, &prefix).await;
    log.failing.store(true, Ordering::SeqCst);
    *log.spent.lock().unwrap() = logged(1_000);
    assert!(matches!(
        limiter.reserve(ask(&scopes, 1, 1, now_ms)).await,
        Err(Refusal::Unavailable(message)) if message.contains("lost")
    ));
    log.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(matches!(
        limiter.reserve(ask(&scopes, 1, 1, now_ms)).await,
        Err(Refusal::Budget { used: 1_000, .. })
    ));
    clean_up(&url, &prefix).await;
}

// ---------------------------------------------------------------------------
// (7) Key names.

#[tokio::test]
async fn keys_share_one_hash_tag_and_never_hold_raw_ids() {
    let Some(url) = redis_url("keys_share_one_hash_tag_and_never_hold_raw_ids").await else {
        return;
    };
    let prefix = unique_prefix("keys");
    let limiter = limiter(&url, &prefix, false).await;
    let everything = Rules {
        requests_per_minute: Some(100),
        tokens_per_minute: Some(10_000),
        max_concurrent: Some(10),
        budget: budget(1_000_000, Period::Daily),
    };
    let lifetime = Rules {
        budget: budget(1_000_000, Period::Total),
        ..everything
    };
    let odd_ids = ["a b{evil}:c", "{sb}", "new\nline*?[x]", "é%20"];
    let scopes = vec![
        (scope(ScopeKind::Key, odd_ids[0]), everything),
        (scope(ScopeKind::Team, odd_ids[1]), lifetime),
        (scope(ScopeKind::User, odd_ids[2]), everything),
        (scope(ScopeKind::Deployment, odd_ids[3]), everything),
    ];
    let now_ms = minute_start_now();
    // One grant settled (spend written), one left in flight.
    let settled = limiter
        .reserve(ask(&scopes, 10, 1_000, now_ms))
        .await
        .unwrap();
    limiter.settle(settled, 5, 500).await;
    limiter
        .reserve(ask(&scopes, 10, 1_000, now_ms))
        .await
        .unwrap();

    let keys = keys_under(&url, &prefix).await;
    let mut connection = raw_connection(&url).await;
    let mut ttls = Vec::new();
    for key in &keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        ttls.push(ttl);
    }
    clean_up(&url, &prefix).await;

    // Four scopes × (in flight, minute, spend, hold), and one record per
    // grant.
    assert_eq!(keys.len(), 16 + 2, "{keys:#?}");
    let grant_records = format!("{prefix}{HASH_TAG}:grant:");
    assert_eq!(
        keys.iter()
            .filter(|key| key.starts_with(&grant_records))
            .count(),
        2,
        "{keys:#?}"
    );
    for (key, ttl) in keys.iter().zip(&ttls) {
        let rest = key
            .strip_prefix(&format!("{prefix}{HASH_TAG}:"))
            .unwrap_or_else(|| panic!("{key:?} lacks the prefix and hash tag"));
        assert!(
            !rest.contains(['{', '}', ' ', '\n', '*', '?', '[', 'é']),
            "{key:?} holds raw id characters"
        );
        for id in odd_ids {
            assert!(!rest.contains(id), "{key:?} holds the raw id {id:?}");
        }
        // Budgets' spend and holds live as long as their window (a
        // lapsed lease's hold becomes spend); the rest, minutes.
        let expected_ttl = if rest.contains(":m:") {
            1..=120
        } else if rest.contains(":spent:total") || rest.contains(":held:total") {
            -1..=-1
        } else if rest.contains(":spent:") || rest.contains(":held:") {
            1..=2 * 86_400
        } else {
            1..=17 * 60
        };
        assert!(expected_ttl.contains(ttl), "{key:?} has TTL {ttl}");
    }
    // Each scope gets its own keys: four distinct `<kind>:<escaped id>`.
    let scopes_seen: BTreeSet<String> = keys
        .iter()
        .filter(|key| !key.starts_with(&grant_records))
        .map(|key| {
            let rest = &key[prefix.len() + HASH_TAG.len() + 1..];
            rest.splitn(3, ':').take(2).collect::<Vec<_>>().join(":")
        })
        .collect();
    assert_eq!(scopes_seen.len(), 4, "{scopes_seen:?}");

    // A prefix cannot smuggle in a second hash tag.
    let braced = limiter.with_prefix(&format!("{prefix}{{x}}"));
    assert!(braced.prefix().ends_with("%7Bx%7D"));
    braced
        .reserve(ask(&scopes[..1], 1, 1, now_ms))
        .await
        .unwrap();
    let keys = keys_under(&url, &prefix).await;
    clean_up(&url, &prefix).await;
    assert!(!keys.is_empty());
    for key in keys {
        assert_eq!(key.find('{'), key.find(HASH_TAG), "{key:?}");
        assert_eq!(key.matches('{').count(), 1, "{key:?}");
    }
}

#[test]
fn relay_urls_keep_credentials_and_database() {
    let relay: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    assert_eq!(
        through("redis://:secret@10.0.0.1:6380/2", relay),
        (
            "10.0.0.1:6380".to_owned(),
            "redis://:secret@127.0.0.1:7000/2".to_owned()
        )
    );
}

/// Failing open for rate limits does not fail open for budgets unless
/// said so: money is not overspent because Redis is away.
#[tokio::test]
async fn budgets_fail_closed_while_rate_limits_fail_open() {
    let config = RedisLimiterConfig {
        fail_open: true,
        fail_open_budgets: false,
        ..quick(true)
    };
    let limiter = RedisLimiter::connect_with("redis://127.0.0.1:1", config)
        .await
        .unwrap();
    let rate_only = vec![(
        scope(ScopeKind::Key, "rate-only"),
        Rules {
            requests_per_minute: Some(10),
            ..Rules::default()
        },
    )];
    assert!(limiter.reserve(ask(&rate_only, 1, 1, 1_000)).await.is_ok());
    let budgeted = vec![(
        scope(ScopeKind::Key, "budgeted"),
        Rules {
            budget: budget(1_000, Period::Daily),
            ..Rules::default()
        },
    )];
    assert!(matches!(
        limiter.reserve(ask(&budgeted, 1, 1, 1_000)).await,
        Err(Refusal::Unavailable(_))
    ));
}

/// Spend the request log holds for a budget set mid-window is counted.
#[tokio::test]
async fn past_spend_is_a_floor_for_a_new_budget() {
    let Some(url) = redis_url("past_spend_is_a_floor_for_a_new_budget").await else {
        return;
    };
    let prefix = unique_prefix("floor");
    let limiter = limiter(&url, &prefix, false).await;
    let now = minute_start_now();
    let scope = scope(ScopeKind::Key, "floored");
    limiter
        .floor_spent(scope.clone(), Period::Daily, now, 700)
        .await;
    limiter
        .floor_spent(scope.clone(), Period::Daily, now, 300)
        .await;
    assert_eq!(
        limiter.budget_used(&scope, Period::Daily, now).await,
        700,
        "a floor never lowers"
    );
    let rules = Rules {
        budget: budget(1_000, Period::Daily),
        ..Rules::default()
    };
    let scopes = vec![(scope.clone(), rules)];
    assert!(matches!(
        limiter.reserve(ask(&scopes, 1, 400, now)).await,
        Err(Refusal::Budget { used: 700, .. })
    ));
    assert!(limiter.reserve(ask(&scopes, 1, 300, now)).await.is_ok());
}

/// A grant split between the key's scopes and its first deployment (the
/// deployment's part settled when that attempt fails, the key's when the
/// request ends): each part applies once, neither blocks the other.
#[tokio::test]
async fn the_two_parts_of_a_split_grant_settle_once_each() {
    let Some(url) = redis_url("the_two_parts_of_a_split_grant_settle_once_each").await else {
        return;
    };
    let prefix = unique_prefix("split-parts");
    let limiter = limiter(&url, &prefix, false).await;
    let mut scopes = two_at_once();
    let key = scopes[0].0.clone();
    scopes.push((
        scope(ScopeKind::Deployment, "d"),
        Rules {
            tokens_per_minute: Some(1_000),
            ..Rules::default()
        },
    ));
    let now_ms = minute_start_now();
    let mut head = limiter
        .reserve(ask(&scopes, 400, 1_000, now_ms))
        .await
        .unwrap();
    // The server's renewal task holds the grant as it was reserved.
    let whole = head.clone();
    let tail = limiter.split(&mut head, 1);
    assert_eq!((head.part, tail.part), (1, 2));
    // The deployment's part first, and twice (a retried settle).
    limiter.settle(tail.clone(), 0, 0).await;
    limiter.settle(tail, 0, 0).await;
    // The deployment's 400 reserved tokens were handed back: 900 more fit.
    let deployment_only = vec![scopes[1].clone()];
    let again = limiter
        .reserve(ask(&deployment_only, 900, 0, now_ms))
        .await
        .expect("the tail's tokens were released");
    limiter.settle(again, 900, 0).await;
    // The key's part still holds its budget and its slot, then settles.
    assert_eq!(
        limiter.budget_used(&key, Period::Daily, now_ms).await,
        1_000
    );
    limiter.settle(head.clone(), 300, 250).await;
    limiter.settle(head, 300, 250).await;
    assert_eq!(
        limiter.budget_used(&key, Period::Daily, now_ms).await,
        250,
        "the key's part released its hold and spent once"
    );
    // A renewal of the whole grant arriving after its parts settled (its
    // task was stopping) moves nothing: no slot or hold comes back.
    assert!(limiter.renew(&whole, now_ms + 120_000).await);
    assert_eq!(
        limiter
            .budget_used(&key, Period::Daily, now_ms + 120_000)
            .await,
        250
    );
    // Both slots free again.
    let key_scopes = scopes[..1].to_vec();
    assert!(
        limiter
            .reserve(ask(&key_scopes, 1, 0, now_ms))
            .await
            .is_ok()
    );
    assert!(
        limiter
            .reserve(ask(&key_scopes, 1, 0, now_ms))
            .await
            .is_ok()
    );
    clean_up(&url, &prefix).await;
}

// ---------------------------------------------------------------------------
// (8) The batcher: operations waiting together share one script call, and
// each gets its own answer.

/// Request `index`'s own key, with a limit that lets it through or refuses
/// it for a reason of its own, and a team shared by all.
fn batch_scopes(index: u64, team_requests: u64) -> Vec<(Scope, Rules)> {
    let rules = match index % 4 {
        0 => Rules {
            tokens_per_minute: Some(1_000_000),
            ..Rules::default()
        },
        1 => Rules {
            requests_per_minute: Some(0),
            ..Rules::default()
        },
        2 => Rules {
            budget: budget(index, Period::Daily),
            ..Rules::default()
        },
        _ => Rules {
            max_concurrent: Some(0),
            ..Rules::default()
        },
    };
    vec![
        (scope(ScopeKind::Key, &format!("k{index}")), rules),
        (
            scope(ScopeKind::Team, "shared"),
            Rules {
                requests_per_minute: Some(team_requests),
                ..Rules::default()
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_share_calls_and_each_gets_its_own_answer() {
    let Some(url) =
        redis_url("concurrent_operations_share_calls_and_each_gets_its_own_answer").await
    else {
        return;
    };
    let prefix = unique_prefix("batch-answers");
    let limiter = Arc::new(limiter(&url, &prefix, false).await);
    let now_ms = minute_start_now();
    const REQUESTS: u64 = 300;
    // Every fourth request is granted; the team has room for exactly them
    // and one more.
    let team_requests = REQUESTS / 4 + 1;

    let barrier = Arc::new(tokio::sync::Barrier::new(REQUESTS as usize));
    let mut tasks = Vec::new();
    for index in 0..REQUESTS {
        let (limiter, barrier) = (limiter.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let scopes = batch_scopes(index, team_requests);
            // Tokens and cost differ per request, so an answer meant for
            // another request shows.
            limiter
                .reserve(ask(&scopes, 1_000 + index, 1_000 + index, now_ms))
                .await
        }));
    }
    let mut granted = Vec::new();
    for (index, task) in (0..REQUESTS).zip(tasks) {
        let answer = task.await.unwrap();
        let own = format!("k{index}");
        match (index % 4, answer) {
            (0, Ok(grant)) => {
                assert_eq!(
                    grant.remaining.tokens,
                    Some((1_000_000, 1_000_000 - 1_000 - index)),
                    "request {index} got another's answer"
                );
                granted.push((index, grant));
            }
            (
                1,
                Err(Refusal::Limited {
                    scope,
                    limit: "requests_per_minute",
                    ..
                }),
            ) => assert_eq!(&*scope.id, own),
            (
                2,
                Err(Refusal::Budget {
                    scope, limit, used, ..
                }),
            ) => {
                assert_eq!((&*scope.id, limit, used), (own.as_str(), index, 0));
            }
            (
                3,
                Err(Refusal::Limited {
                    scope,
                    limit: "max_concurrent",
                    ..
                }),
            ) => assert_eq!(&*scope.id, own),
            (_, other) => panic!("request {index} answered {other:?}"),
        }
    }
    assert_eq!(granted.len() as u64, REQUESTS / 4);
    let (calls, operations) = limiter.batches();
    assert_eq!(operations, REQUESTS);
    assert!(
        calls < operations,
        "{operations} concurrent reserves took {calls} calls: none was batched"
    );

    // Reserving is all or nothing within a batch too: only the granted
    // requests counted on the team, which has room for one more.
    let team_only = vec![batch_scopes(0, team_requests)[1].clone()];
    limiter
        .reserve(ask(&team_only, 1, 0, now_ms))
        .await
        .expect("room for one more on the team");
    assert!(matches!(
        limiter.reserve(ask(&team_only, 1, 0, now_ms)).await,
        Err(Refusal::Limited {
            limit: "requests_per_minute",
            ..
        })
    ));

    // Settles together, each at tokens of its own: each key's minute then
    // holds exactly its own request's tokens.
    let mut tasks = Vec::new();
    for (index, grant) in granted {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move {
            limiter.settle(grant, index, 0).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for index in (0..REQUESTS).step_by(4) {
        let own = vec![batch_scopes(index, team_requests)[0].clone()];
        let grant = limiter.reserve(ask(&own, 1, 0, now_ms)).await.unwrap();
        assert_eq!(
            grant.remaining.tokens,
            Some((1_000_000, 1_000_000 - index - 1)),
            "the settle of request {index} landed elsewhere"
        );
    }
    clean_up(&url, &prefix).await;
}

/// A settle rides ahead of the next reserve instead of making a call of
/// its own, and that reserve finds the capacity it released: one request
/// at a time on a key with room for one costs one call per request.
#[tokio::test]
async fn a_settle_rides_with_the_next_reserve_and_releases_first() {
    let Some(url) = redis_url("a_settle_rides_with_the_next_reserve_and_releases_first").await
    else {
        return;
    };
    let prefix = unique_prefix("ride-along");
    let limiter = limiter(&url, &prefix, false).await;
    let now_ms = minute_start_now();
    let one_at_a_time = vec![(
        scope(ScopeKind::Key, "single"),
        Rules {
            max_concurrent: Some(1),
            budget: budget(1_000_000, Period::Daily),
            ..Rules::default()
        },
    )];
    let mut grant = limiter
        .reserve(ask(&one_at_a_time, 10, 1_000, now_ms))
        .await
        .expect("the first request has room");
    for request in 1..=5u64 {
        // The settle is queued first (its future's first poll), then the
        // next request's reserve: both go in one call, settle first.
        let (_, next) = tokio::join!(limiter.settle(grant, 10, 1_000), async {
            tokio::task::yield_now().await;
            limiter
                .reserve(ask(&one_at_a_time, 10, 1_000, now_ms))
                .await
        });
        grant = next.unwrap_or_else(|refusal| {
            panic!("request {request} was refused although the one before it ended: {refusal:?}")
        });
        let (calls, operations) = limiter.batches();
        assert_eq!(
            (calls, operations),
            (1 + request, 1 + 2 * request),
            "after request {request}, each settle should share the next reserve's call"
        );
    }
    // A settle with no reserve after it goes alone once it has lingered.
    limiter.settle(grant, 10, 1_000).await;
    assert_eq!(limiter.batches(), (7, 12));
    assert_eq!(
        limiter
            .budget_used(&one_at_a_time[0].0, Period::Daily, now_ms)
            .await,
        6_000,
        "six requests settled at 1,000 each, nothing left held"
    );
    clean_up(&url, &prefix).await;
}

/// A reserve whose caller stopped waiting (a client hang-up) while Redis
/// held its answer is cancelled: it does not hold its budget and its slot
/// until the lease ends.
#[tokio::test]
async fn a_reserve_whose_caller_left_is_cancelled() {
    let Some(url) = redis_url("a_reserve_whose_caller_left_is_cancelled").await else {
        return;
    };
    let prefix = unique_prefix("caller-left");
    let (relay, through_relay, direct) = relayed(&url, &prefix).await;
    let scopes = two_at_once();
    let key = scopes[0].0.clone();
    let now_ms = minute_start_now();
    through_relay.ping().await.unwrap();
    relay.set_muted(true);
    // The caller gives up before the limiter's own timeout.
    let left = tokio::time::timeout(
        Duration::from_millis(50),
        through_relay.reserve(ask(&scopes, 10, 1_000, now_ms)),
    )
    .await;
    assert!(left.is_err(), "the reserve cannot have answered");
    eventually("the abandoned reserve reached Redis", || async {
        direct.budget_used(&key, Period::Daily, now_ms).await == 1_000
    })
    .await;
    eventually("its cancel waits", || async {
        through_relay.settles_retrying() == 1
    })
    .await;

    relay.set_muted(false);
    eventually("the abandoned reservation is released", || async {
        through_relay.settles_retrying() == 0
            && direct.budget_used(&key, Period::Daily, now_ms).await == 0
    })
    .await;
    for _ in 0..2 {
        direct.reserve(ask(&scopes, 1, 0, now_ms)).await.unwrap();
    }
    clean_up(&url, &prefix).await;
}

#[tokio::test]
async fn batches_go_to_the_database_the_url_names() {
    let test = "batches_go_to_the_database_the_url_names";
    let Some(url) = redis_url(test).await else {
        return;
    };
    // Database 5 of the same server, unless the URL names one already.
    let info = redis::Client::open(url.as_str()).unwrap();
    let names_database = info.get_connection_info().redis_settings().db() != 0
        || url.contains('?')
        || url.trim_start_matches("redis://").contains('/');
    let other = if names_database {
        url.clone()
    } else {
        format!("{url}/5")
    };
    let prefix = unique_prefix("database");
    // (A script Redis lost is loaded again: `resp`'s tests, against a
    // stand-in, since flushing this Redis's scripts would disturb the
    // tests running beside this one.)
    let limiter = limiter(&other, &prefix, false).await;
    let scopes = two_at_once();
    let grant = limiter
        .reserve(ask(&scopes, 10, 1_000, minute_start_now()))
        .await
        .expect("reserved");
    limiter.settle(grant, 5, 300).await;
    assert!(
        !keys_under(&other, &prefix).await.is_empty(),
        "the counters are in the URL's database"
    );
    if !names_database {
        assert!(
            keys_under(&url, &prefix).await.is_empty(),
            "nothing is counted in database 0"
        );
    }
    clean_up(&other, &prefix).await;
}

/// A scope's counters in Redis: requests and tokens of the minute,
/// requests in flight, cost held and spent in the daily window. The id
/// must need no escaping.
async fn counters_of(url: &str, prefix: &str, scope: &Scope, now_ms: u64) -> [u64; 5] {
    let mut connection = raw_connection(url).await;
    let base = format!("{prefix}{HASH_TAG}:{}:{}", scope.kind.as_str(), scope.id);
    let window = switchboard_policy::limits::budget_window(Period::Daily, now_ms);
    let minute: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(format!("{base}:m:{}", now_ms / 60_000))
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut sum = async |key: String| -> u64 {
        let values: Vec<u64> = redis::cmd("HVALS")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        values.iter().sum()
    };
    let in_flight = sum(format!("{base}:inflight")).await;
    let held = sum(format!("{base}:held:{window}")).await;
    let spent: Option<u64> = redis::cmd("GET")
        .arg(format!("{base}:spent:{window}"))
        .query_async(&mut raw_connection(url).await)
        .await
        .unwrap();
    [
        minute.get("r").copied().unwrap_or(0),
        minute.get("t").copied().unwrap_or(0),
        in_flight,
        held,
        spent.unwrap_or(0),
    ]
}

fn large_rules() -> Rules {
    Rules {
        requests_per_minute: Some(1_000_000),
        tokens_per_minute: Some(1_000_000_000),
        max_concurrent: Some(10_000),
        budget: budget(1_000_000_000_000, Period::Daily),
    }
}

/// A key and team busy for longer than a lease's span are served from
/// leases (far fewer operations reach Redis than requests), and once the
/// limiter shuts down, having given its leases back, Redis's counters hold
/// exactly what the requests used: every request, its actual tokens and
/// cost, nothing in flight or held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_scope_is_served_from_leases_and_its_counters_end_exact() {
    let Some(url) =
        redis_url("a_busy_scope_is_served_from_leases_and_its_counters_end_exact").await
    else {
        return;
    };
    let prefix = unique_prefix("leases");
    let limiter = Arc::new(limiter(&url, &prefix, false).await);
    let now_ms = minute_start_now();
    let scopes = vec![
        (scope(ScopeKind::Key, "busy"), large_rules()),
        (scope(ScopeKind::Team, "busy-team"), large_rules()),
    ];
    const WORST_TOKENS: u64 = 100;
    const WORST_COST: Nanos = 50_000;
    let totals = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let deadline = Instant::now() + Duration::from_millis(1_500);
    let mut workers = Vec::new();
    for worker in 0..8u64 {
        let (limiter, scopes, totals) = (limiter.clone(), scopes.clone(), totals.clone());
        workers.push(tokio::spawn(async move {
            let mut index = worker << 32;
            while Instant::now() < deadline {
                index += 1;
                let grant = limiter
                    .reserve(ask(&scopes, WORST_TOKENS, WORST_COST, now_ms))
                    .await
                    .expect("far from every limit");
                tokio::time::sleep(Duration::from_micros(500)).await;
                let tokens = splitmix64(index) % (WORST_TOKENS + 1);
                let cost = splitmix64(!index) % (WORST_COST + 1);
                limiter.settle(grant, tokens, cost).await;
                let mut totals = totals.lock().unwrap();
                totals.0 += 1;
                totals.1 += tokens;
                totals.2 += cost;
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let (requests, tokens, cost) = *totals.lock().unwrap();
    let (leases, served) = limiter.leases();
    assert!(
        leases > 0 && served * 10 > requests * 9,
        "{served} of {requests} requests served from {leases} leases"
    );
    let (calls, operations) = limiter.batches();
    assert!(
        operations * 4 < requests,
        "{requests} requests sent {operations} operations to Redis (in {calls} calls): \
         leases served too few"
    );
    // Shutting down gives every lease back before it returns.
    limiter.shutdown().await;
    for (scope, _) in &scopes {
        assert_eq!(
            counters_of(&url, &prefix, scope, now_ms).await,
            [requests, tokens, 0, 0, cost],
            "{scope:?}: requests, tokens, in flight, held, spent"
        );
    }
    clean_up(&url, &prefix).await;
}

/// A request counts once toward a lease's demand: `start_reserve` (what
/// the gateway calls) tries the leases once. Two requests a quarter second,
/// under the four a lease needs, never take one (counted twice they would);
/// ten a quarter second do.
#[tokio::test]
async fn a_lease_is_taken_only_when_the_demand_asks_for_one() {
    let Some(url) = redis_url("a_lease_is_taken_only_when_the_demand_asks_for_one").await else {
        return;
    };
    early_in_a_minute().await;
    let prefix = unique_prefix("lease-demand");
    let now_ms = minute_start_now();
    for (gap, leased) in [(125u64, false), (25, true)] {
        let limiter = limiter(&url, &prefix, false).await;
        let scopes = vec![(
            scope(ScopeKind::Key, &format!("paced-{gap}")),
            large_rules(),
        )];
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < Duration::from_millis(1_500) {
            let grant = limiter
                .start_reserve(ask(&scopes, 10, 100, now_ms))
                .answer()
                .await
                .expect("far from every limit");
            limiter.settle(grant, 1, 1).await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        let (leases, served) = limiter.leases();
        assert_eq!(
            leases > 0,
            leased,
            "a request every {gap} ms ({sent} requests): {leases} leases, {served} served from them"
        );
        limiter.shutdown().await;
    }
    clean_up(&url, &prefix).await;
}

/// Two instances taking leases on one key never pass its limits together:
/// the minute's requests end exactly at the limit once the slices left
/// unused have come back, neither more nor fewer, and the counters then
/// hold exactly the spend, with nothing in flight or held. (Concurrency
/// is leased too, but a lease is granted only while a scope's requests in
/// flight stay under half its limit, so clients pressing on it are counted
/// one by one: `per_minute_and_concurrency_limits_hold_across_instances`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_never_let_instances_pass_a_limit_and_come_back_unused() {
    let Some(url) = redis_url("leases_never_let_instances_pass_a_limit_and_come_back_unused").await
    else {
        return;
    };
    let prefix = unique_prefix("lease-race");
    let instances = [
        Arc::new(limiter(&url, &prefix, false).await),
        Arc::new(limiter(&url, &prefix, false).await),
    ];
    const RPM: u64 = 12_000;
    const CONCURRENT: u64 = 1_000;
    let key = scope(ScopeKind::Key, "raced");
    let rules = Rules {
        requests_per_minute: Some(RPM),
        max_concurrent: Some(CONCURRENT),
        budget: budget(1_000_000_000, Period::Daily),
        ..Rules::default()
    };
    let now_ms = minute_start_now();
    let granted = Arc::new(AtomicUsize::new(0));
    let spent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let last_grant = Arc::new(Mutex::new(Instant::now()));
    let mut workers = Vec::new();
    for worker in 0..40usize {
        let limiter = instances[worker % 2].clone();
        let scopes = vec![(key.clone(), rules)];
        let (granted, spent, last_grant) = (granted.clone(), spent.clone(), last_grant.clone());
        workers.push(tokio::spawn(async move {
            let mut index = (worker as u64) << 32;
            // Until the limit has refused everyone for a second: by then
            // every unused slice has come back.
            while last_grant.lock().unwrap().elapsed() < Duration::from_secs(1)
                && started.elapsed() < Duration::from_secs(20)
            {
                index += 1;
                match limiter.reserve(ask(&scopes, 10, 20_000, now_ms)).await {
                    Ok(grant) => {
                        *last_grant.lock().unwrap() = Instant::now();
                        granted.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let cost = (splitmix64(index) % 20_001) as usize;
                        limiter.settle(grant, 5, cost as Nanos).await;
                        spent.fetch_add(cost, Ordering::SeqCst);
                    }
                    Err(Refusal::Limited {
                        limit: "requests_per_minute",
                        ..
                    }) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(other) => panic!("unexpected refusal {other:?}"),
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(
        granted.load(Ordering::SeqCst) as u64,
        RPM,
        "exactly the minute's requests were granted"
    );
    for instance in &instances {
        let (leases, served) = instance.leases();
        assert!(
            leases > 0 && served > 0,
            "an instance took {leases} leases and served {served} requests from them (in {:?})",
            started.elapsed()
        );
    }
    let spent = spent.load(Ordering::SeqCst) as u64;
    eventually("the counters hold exactly what was used", || async {
        let [requests, _, in_flight, held, counted] =
            counters_of(&url, &prefix, &key, now_ms).await;
        [requests, in_flight, held, counted] == [RPM, 0, 0, spent]
    })
    .await;
    clean_up(&url, &prefix).await;
}

/// Drives `limiter` with `workers` clients reserving on `scopes` until
/// `until` says stop, each settling at a random actual cost of at most
/// `worst`; answers the requests granted and their actual spend.
async fn sustained(
    limiter: Arc<RedisLimiter>,
    scopes: Vec<(Scope, Rules)>,
    worst: Nanos,
    now_ms: u64,
    until: impl Fn() -> bool + Send + Sync + 'static,
) -> (u64, Nanos) {
    let until = Arc::new(until);
    let mut workers = Vec::new();
    for worker in 0..8u64 {
        let (limiter, scopes, until) = (limiter.clone(), scopes.clone(), until.clone());
        workers.push(tokio::spawn(async move {
            let (mut granted, mut spent, mut index) = (0, 0, worker << 32);
            while !until() {
                index += 1;
                match limiter.reserve(ask(&scopes, 10, worst, now_ms)).await {
                    Ok(grant) => {
                        tokio::time::sleep(Duration::from_micros(500)).await;
                        let cost = splitmix64(index) % (worst + 1);
                        limiter.settle(grant, 5, cost).await;
                        granted += 1;
                        spent += cost;
                    }
                    Err(Refusal::Budget { .. }) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(other) => panic!("unexpected refusal {other:?}"),
                }
            }
            (granted, spent)
        }));
    }
    let mut totals = (0, 0);
    for worker in workers {
        let (granted, spent) = worker.await.unwrap();
        totals.0 += granted;
        totals.1 += spent;
    }
    totals
}

/// An instance killed while serving a budget from leases (it never gives
/// them back, nor settles what its requests spent) leaves the budget's
/// counters no lower than its actual spend once its leases lapse: a lapsed
/// lease's hold counts as spent, so no budget can be overspent for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_leases_count_as_spent_when_they_lapse() {
    let Some(url) = redis_url("a_killed_instances_leases_count_as_spent_when_they_lapse").await
    else {
        return;
    };
    let prefix = unique_prefix("lease-lapse");
    let config = RedisLimiterConfig {
        lease: Duration::from_secs(60),
        ..RedisLimiterConfig::default()
    };
    let killed = Arc::new(
        RedisLimiter::connect_with(&url, config.clone())
            .await
            .unwrap()
            .with_prefix(&prefix),
    );
    let key = scope(ScopeKind::Key, "lapsing");
    let rules = Rules {
        budget: budget(1_000_000_000_000, Period::Daily),
        ..Rules::default()
    };
    early_in_a_minute().await;
    let now_ms = minute_start_now();
    let deadline = Instant::now() + Duration::from_millis(800);
    let (_, spent) = sustained(
        killed.clone(),
        vec![(key.clone(), rules)],
        100_000,
        now_ms,
        move || Instant::now() >= deadline,
    )
    .await;
    assert!(killed.leases().1 > 0, "requests were served from leases");
    // Killed: dropped without giving its leases back. A dropped limiter's
    // tasks still finish the calls they had made (a dead process would
    // make none): wait until Redis has seen the last of them.
    drop(killed);
    let mut last = counters_of(&url, &prefix, &key, now_ms).await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counters_of(&url, &prefix, &key, now_ms).await;
        if now == last {
            break;
        }
        last = now;
    }
    let survivor = RedisLimiter::connect_with(&url, config)
        .await
        .unwrap()
        .with_prefix(&prefix);
    // Until they lapse, the leases' holds count as held...
    let held = survivor
        .budget_used(&key, Period::Daily, now_ms + 60_000)
        .await;
    assert!(held >= spent, "{held} nano-dollars used for {spent} spent");
    // ...and once they have (a lease's hold two minutes later, with a
    // one-minute lease), as spent.
    let used = survivor
        .budget_used(&key, Period::Daily, now_ms + 120_000)
        .await;
    assert_eq!(used, held, "the leases' holds moved to spent whole");
    assert!(
        used >= spent,
        "the counters hold {used} nano-dollars for {spent} spent: a budget could be overspent"
    );
    let [_, _, _, held, counted] = counters_of(&url, &prefix, &key, now_ms).await;
    assert_eq!(
        (held, counted),
        (0, used),
        "the lapsed holds moved to spent"
    );
    clean_up(&url, &prefix).await;
}

/// Two instances serving one budget from leases, until it refuses them
/// for a second: at every moment the actual spend of finished requests
/// plus the worst case of those in flight stays within the budget, and
/// Redis's spent counter then holds exactly the actual spend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_hold_a_budget_across_instances() {
    let Some(url) = redis_url("leases_hold_a_budget_across_instances").await else {
        return;
    };
    let prefix = unique_prefix("lease-budget");
    let instances = [
        Arc::new(limiter(&url, &prefix, false).await),
        Arc::new(limiter(&url, &prefix, false).await),
    ];
    const LIMIT: Nanos = 4_000_000_000;
    const WORST: Nanos = 1_000_000;
    let key = scope(ScopeKind::Key, "budgeted");
    let rules = Rules {
        budget: budget(LIMIT, Period::Daily),
        ..Rules::default()
    };
    let now_ms = minute_start_now();
    // Finished requests' actual spend plus in-flight worst cases, as the
    // clients see them; the most it reached.
    let committed = Arc::new(Mutex::new((0u64, 0u64)));
    let last_grant = Arc::new(Mutex::new(Instant::now()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..20usize {
        let limiter = instances[worker % 2].clone();
        let scopes = vec![(key.clone(), rules)];
        let (committed, last_grant) = (committed.clone(), last_grant.clone());
        workers.push(tokio::spawn(async move {
            let mut index = (worker as u64) << 32;
            while last_grant.lock().unwrap().elapsed() < Duration::from_secs(1)
                && started.elapsed() < Duration::from_secs(20)
            {
                index += 1;
                match limiter.reserve(ask(&scopes, 10, WORST, now_ms)).await {
                    Ok(grant) => {
                        *last_grant.lock().unwrap() = Instant::now();
                        {
                            let mut committed = committed.lock().unwrap();
                            committed.0 += WORST;
                            committed.1 = committed.1.max(committed.0);
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let cost = splitmix64(index) % (WORST + 1);
                        committed.lock().unwrap().0 -= WORST - cost;
                        limiter.settle(grant, 5, cost).await;
                    }
                    Err(Refusal::Budget { .. }) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(other) => panic!("unexpected refusal {other:?}"),
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let (spent, most) = *committed.lock().unwrap();
    assert!(
        most <= LIMIT,
        "{most} nano-dollars committed at once, over {LIMIT}"
    );
    assert!(
        spent + WORST > LIMIT / 2,
        "the budget was far from used up: {spent} of {LIMIT}"
    );
    for instance in &instances {
        assert!(
            instance.leases().1 > 0,
            "an instance served no request from leases"
        );
    }
    eventually("the counters hold exactly the spend", || async {
        let [_, _, in_flight, held, counted] = counters_of(&url, &prefix, &key, now_ms).await;
        [in_flight, held, counted] == [0, 0, spent]
    })
    .await;
    clean_up(&url, &prefix).await;
}
