//! The behaviour every storage backend must have, written once and run
//! against each (`tests/sqlite.rs`, `tests/postgres.rs`): request records
//! round-trip exactly and read newest first; pages of the request log
//! (filters, cursors, ties) and usage aggregates with their nearest-rank
//! percentiles, against hand-worked values and a Rust reference; keys,
//! teams, the change counter and spend answer the same on every backend.
//!
//! Each function takes a freshly migrated, empty store.

use switchboard_core::keys::{KeyRecord, Limits, Period, SpendGroup, SpendRow, TeamRecord};
use switchboard_core::mix::splitmix64;
use switchboard_core::{AttemptDetail, Endpoint, Outcome, RequestRecord, Usage, request_id};
use switchboard_store::log::nearest_rank;
use switchboard_store::{
    KeyStore, KeyStoreConflict, LogFilter, LogQuery, SpendQuery, Store, UsageBucket, UsageGroup,
    UsageQuery, UsageRow,
};

/// A record whose every optional field is `Some` or `None` by the bits of
/// `index`, with every endpoint and outcome, extreme numbers and text that
/// is not ASCII.
pub fn varied_record(index: usize) -> RequestRecord {
    let bit = |n: usize| (index >> n) & 1 == 1;
    let some_if = |n: usize, value: u64| bit(n).then_some(value);
    let text_if = |n: usize, value: String| bit(n).then_some(value);
    let endpoints = [
        Endpoint::ChatCompletions,
        Endpoint::Messages,
        Endpoint::Embeddings,
    ];
    let outcomes = [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::UpstreamError,
        Outcome::ClientClosed,
        Outcome::Shutdown,
    ];
    let number = index as u64;
    RequestRecord {
        request_id: format!("req-{index:05}-ü✓"),
        started_at_ms: 1_700_000_000_000 + index as i64 * 7 - 3_500,
        endpoint: endpoints[index % endpoints.len()],
        model: if index.is_multiple_of(11) {
            String::new()
        } else {
            format!("model-{}", index % 7)
        },
        deployment: text_if(0, format!("deployment-{}", index % 5)),
        served_model: text_if(1, format!("fallback-{}", index % 3)),
        attempts: if index == 999 {
            u32::MAX
        } else {
            (index % 4) as u32
        },
        attempt_details: attempt_details(index),
        stream: bit(2),
        status: [200, 400, 401, 429, 499, 502, 504, 999][index % 8],
        outcome: outcomes[index % outcomes.len()],
        error_code: text_if(3, "upstream_timeout".to_owned()),
        latency_ms: if index == 998 {
            i64::MAX as u64
        } else {
            number * 13
        },
        ttft_ms: some_if(4, number),
        usage: Usage {
            input_tokens: some_if(5, number * 100),
            output_tokens: some_if(6, if index == 997 { i64::MAX as u64 } else { 0 }),
            cached_input_tokens: some_if(7, number / 2),
            reasoning_tokens: some_if(8, number + 1),
            cache_write_tokens: some_if(9, number * 3),
        },
        key_id: text_if(9, format!("key_{:016x}", index % 4)).map(Into::into),
        team_id: text_if(3, "team_with 'quotes' \"and\" \\slashes".to_owned()).map(Into::into),
        end_user: text_if(5, format!("user-{index}@example.com")),
        cost_nanos: some_if(1, number * 1_000_003),
        cache_hit: bit(8),
        metadata: text_if(9, format!(r#"{{"feature":"f{index}","note":"ü \"q\""}}"#)),
        bodies: None,
    }
}

/// No attempt, one that served, or a failure then a fallback that served
/// (with a status, names that need escaping in JSON, and an unbounded
/// duration), by `index`.
fn attempt_details(index: usize) -> Vec<AttemptDetail> {
    let served = |model: &str| AttemptDetail {
        deployment: format!("deployment-{}", index % 5).into(),
        model: model.into(),
        outcome: AttemptDetail::OK.into(),
        status: None,
        duration_ms: index as u64,
    };
    match index % 3 {
        0 => Vec::new(),
        1 => vec![served("model")],
        _ => vec![
            AttemptDetail {
                deployment: "east \"ü\" \\ 1".into(),
                model: "model".into(),
                outcome: "server_error".into(),
                status: Some(503),
                duration_ms: if index == 998 { u64::MAX } else { 7 },
            },
            served("fallback"),
        ],
    }
}

/// Texts holding what a bulk format must escape (tab, newline, carriage
/// return, backslash, and what would read as its markers: `\N`, `\.`),
/// control characters, quotes and non-ASCII read back exactly, in every
/// text column, beside a record whose optional texts are all absent.
pub async fn texts_with_escapes_round_trip<S: Store>(store: &S) {
    let awkward = |tag: &str| format!("{tag}\t|\n|\r\n|\\|\\N|\\.|\u{1}\u{7f}|'\"|ü✓|\\t");
    let mut full = varied_record(1023);
    full.request_id = awkward("id");
    full.model = awkward("model");
    full.deployment = Some(awkward("deployment"));
    full.served_model = Some(awkward("served"));
    full.error_code = Some(awkward("error"));
    full.key_id = Some(awkward("key").into());
    full.team_id = Some(awkward("team").into());
    full.end_user = Some(awkward("user"));
    full.metadata = Some(format!(
        r#"{{"note":{}}}"#,
        serde_json::json!(awkward("note"))
    ));
    let mut empty = varied_record(0);
    empty.request_id = "\\N".to_owned();
    empty.model = String::new();
    let records = vec![full, empty];
    store.insert_records(&records).await.unwrap();
    let mut found = store.recent_records(10).await.unwrap();
    found.reverse();
    assert_eq!(found, records);
}

/// A batch of 1,000 varied records written in one call reads back exactly,
/// newest first; `limit` takes the newest.
pub async fn records_round_trip<S: Store>(store: &S) {
    assert!(store.recent_records(10).await.unwrap().is_empty());
    let records: Vec<RequestRecord> = (0..1000).map(varied_record).collect();
    store.insert_records(&records).await.unwrap();
    store.insert_records(&[]).await.unwrap();
    let mut expected = records.clone();
    expected.reverse();
    let found = store.recent_records(5000).await.unwrap();
    assert_eq!(found.len(), expected.len());
    for (found, expected) in found.iter().zip(&expected) {
        assert_eq!(found, expected);
    }
    // Cache writes (billed at their own price) are kept, and an unknown
    // count stays unknown rather than zero.
    assert!(
        found
            .iter()
            .any(|record| record.usage.cache_write_tokens.is_some_and(|n| n > 0))
    );
    assert!(
        found
            .iter()
            .any(|record| record.usage.cache_write_tokens.is_none())
    );
    assert_eq!(
        store.recent_records(3).await.unwrap(),
        expected[..3].to_vec()
    );
    // A second batch reads before the first.
    let later = vec![varied_record(1000), varied_record(1001)];
    store.insert_records(&later).await.unwrap();
    assert_eq!(
        store.recent_records(3).await.unwrap(),
        vec![later[1].clone(), later[0].clone(), records[999].clone()]
    );
    store.ping().await.unwrap();
}

fn limits() -> Limits {
    Limits {
        models: vec!["gpt-4o*".to_owned(), "claude".to_owned()],
        budget_nanos: Some(5_000_000_000),
        budget_period: Some(Period::Monthly),
        rpm: Some(60),
        tpm: None,
        max_concurrent: Some(4),
        log_bodies: true,
    }
}

fn team(id: &str, name: &str, created_at_ms: i64) -> TeamRecord {
    TeamRecord {
        id: id.to_owned(),
        name: name.to_owned(),
        limits: limits(),
        expires_at_ms: Some(created_at_ms + 1_000_000),
        // Compact, with keys out of order: must read back byte for byte.
        metadata: r#"{"z":1,"a":[true,null],"ü":"✓"}"#.to_owned(),
        created_at_ms,
        updated_at_ms: created_at_ms,
    }
}

fn key(id: &str, team_id: Option<&str>, created_at_ms: i64) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        name: Some(format!("name of {id}")),
        team_id: team_id.map(Into::into),
        hash: format!("{id:0>64}"),
        prefix: format!("sb-{id}"),
        limits: Limits::default(),
        user_limits: None,
        expires_at_ms: None,
        revoked_at_ms: None,
        metadata: "{}".to_owned(),
        created_at_ms,
        updated_at_ms: created_at_ms,
    }
}

fn spend_record(
    started_at_ms: i64,
    model: &str,
    key_id: Option<&str>,
    team_id: Option<&str>,
    tokens: (u64, u64),
    cost_nanos: Option<u64>,
) -> RequestRecord {
    RequestRecord {
        request_id: format!("spend-{started_at_ms}-{model}"),
        started_at_ms,
        endpoint: Endpoint::ChatCompletions,
        model: model.to_owned(),
        deployment: None,
        served_model: None,
        attempts: 1,
        attempt_details: Vec::new(),
        stream: false,
        status: 200,
        outcome: Outcome::Success,
        error_code: None,
        latency_ms: 5,
        ttft_ms: None,
        usage: Usage {
            input_tokens: Some(tokens.0),
            output_tokens: Some(tokens.1),
            cached_input_tokens: None,
            reasoning_tokens: None,
            cache_write_tokens: None,
        },
        key_id: key_id.map(Into::into),
        team_id: team_id.map(Into::into),
        end_user: None,
        cost_nanos,
        cache_hit: false,
        metadata: None,
        bodies: None,
    }
}

fn row(group: &str, requests: u64, input: u64, output: u64, cost_nanos: u64) -> SpendRow {
    SpendRow {
        group: group.to_owned(),
        requests,
        input_tokens: input,
        output_tokens: output,
        cost_nanos,
    }
}

/// Teams and keys: writes, conflicts, ordering, exact round trips, the
/// change counter (raised by every write, by no refusal), and spend.
pub async fn key_store<S: Store + KeyStore>(store: &S) {
    let mut version = store.key_version().await.unwrap();
    assert!(store.teams().await.unwrap().is_empty());
    assert!(store.keys().await.unwrap().is_empty());

    // Each successful write raises the version; a refusal leaves it.
    macro_rules! wrote {
        ($write:expr) => {{
            let answer = $write.await.unwrap();
            let now = store.key_version().await.unwrap();
            if answer.is_ok() {
                assert!(now > version, "a write must raise the key version");
            } else {
                assert_eq!(
                    now, version,
                    "a refused write must not raise the key version"
                );
            }
            version = now;
            answer
        }};
    }

    let platform = team("team_b", "Platform", 20);
    let research = team("team_a", "Research", 10);
    wrote!(store.create_team(&platform)).unwrap();
    wrote!(store.create_team(&research)).unwrap();
    assert_eq!(
        wrote!(store.create_team(&team("team_c", "Platform", 30))),
        Err(KeyStoreConflict::TeamNameTaken("Platform".to_owned()))
    );
    assert_eq!(
        store.teams().await.unwrap(),
        vec![research.clone(), platform.clone()]
    );

    let renamed = TeamRecord {
        name: "Platform & Infra".to_owned(),
        limits: Limits::default(),
        // An update clears an expiry as it sets one.
        expires_at_ms: None,
        metadata: "[]".to_owned(),
        updated_at_ms: 25,
        ..platform.clone()
    };
    wrote!(store.update_team(&renamed)).unwrap();
    assert_eq!(
        wrote!(store.update_team(&TeamRecord {
            name: "Research".to_owned(),
            ..renamed.clone()
        })),
        Err(KeyStoreConflict::TeamNameTaken("Research".to_owned()))
    );
    assert_eq!(
        wrote!(store.update_team(&team("team_missing", "Nobody", 1))),
        Err(KeyStoreConflict::NoSuchTeam("team_missing".to_owned()))
    );
    assert_eq!(
        store.teams().await.unwrap(),
        vec![research.clone(), renamed.clone()]
    );
    // An update moves an expiry.
    let research = TeamRecord {
        expires_at_ms: Some(i64::MAX),
        updated_at_ms: 12,
        ..research
    };
    wrote!(store.update_team(&research)).unwrap();
    assert_eq!(
        store.teams().await.unwrap(),
        vec![research.clone(), renamed.clone()]
    );

    let mut first = key("key_1", Some("team_b"), 100);
    first.user_limits = Some(Limits {
        tpm: Some(10_000),
        ..Limits::default()
    });
    first.expires_at_ms = Some(i64::MAX);
    first.metadata = r#"{"owner":"ops",  "n": 1}"#.to_owned();
    let second = key("key_0", None, 100);
    wrote!(store.create_key(&first)).unwrap();
    wrote!(store.create_key(&second)).unwrap();
    assert_eq!(
        wrote!(store.create_key(&key("key_2", Some("team_missing"), 200))),
        Err(KeyStoreConflict::NoSuchTeam("team_missing".to_owned()))
    );
    // Same creation time: ordered by id.
    assert_eq!(
        store.keys().await.unwrap(),
        vec![second.clone(), first.clone()]
    );

    let rotated = KeyRecord {
        hash: "f".repeat(64),
        prefix: "sb-rotated".to_owned(),
        name: None,
        limits: limits(),
        user_limits: None,
        updated_at_ms: 150,
        ..first.clone()
    };
    wrote!(store.update_key(&rotated)).unwrap();
    assert_eq!(
        wrote!(store.update_key(&key("key_missing", None, 1))),
        Err(KeyStoreConflict::NoSuchKey("key_missing".to_owned()))
    );
    assert_eq!(
        wrote!(store.update_key(&KeyRecord {
            team_id: Some("team_missing".to_owned()),
            ..rotated.clone()
        })),
        Err(KeyStoreConflict::NoSuchTeam("team_missing".to_owned()))
    );
    assert_eq!(
        store.keys().await.unwrap(),
        vec![second.clone(), rotated.clone()]
    );

    // A team with an active key cannot go; once the key is revoked it can,
    // and the revoked key no longer names it.
    assert_eq!(
        wrote!(store.delete_team("team_b")),
        Err(KeyStoreConflict::TeamHasKeys("team_b".to_owned()))
    );
    let revoked = KeyRecord {
        revoked_at_ms: Some(300),
        updated_at_ms: 300,
        ..rotated.clone()
    };
    wrote!(store.update_key(&revoked)).unwrap();
    wrote!(store.delete_team("team_b")).unwrap();
    assert_eq!(
        wrote!(store.delete_team("team_b")),
        Err(KeyStoreConflict::NoSuchTeam("team_b".to_owned()))
    );
    assert_eq!(store.teams().await.unwrap(), vec![research.clone()]);
    assert_eq!(
        store.keys().await.unwrap(),
        vec![
            second.clone(),
            KeyRecord {
                team_id: None,
                ..revoked.clone()
            }
        ]
    );

    // Spend, from the request log.
    let day_one = 1_700_000_000_000; // 2023-11-14T22:13:20Z
    let day_two = 1_700_050_000_000; // 2023-11-15T12:06:40Z
    let day_three = 1_700_100_000_000; // 2023-11-16T02:00:00Z
    store
        .insert_records(&[
            spend_record(
                day_one,
                "gpt-4o",
                Some("key_1"),
                Some("team_a"),
                (10, 1),
                Some(100),
            ),
            spend_record(
                day_one + 1,
                "claude",
                Some("key_0"),
                None,
                (20, 2),
                Some(300),
            ),
            spend_record(
                day_two,
                "gpt-4o",
                Some("key_1"),
                Some("team_a"),
                (30, 3),
                Some(50),
            ),
            spend_record(day_two + 1, "claude", None, None, (40, 4), None),
            spend_record(day_two + 2, "Zeta", Some("Key_Z"), None, (1, 1), Some(300)),
            // Outside the range (`to` is exclusive).
            spend_record(
                day_three,
                "gpt-4o",
                Some("key_1"),
                Some("team_a"),
                (99, 9),
                Some(7),
            ),
        ])
        .await
        .unwrap();
    let spend = |group| {
        store.spend(SpendQuery {
            group,
            from_ms: day_one,
            to_ms: day_three,
        })
    };
    assert_eq!(
        spend(SpendGroup::Key).await.unwrap(),
        vec![
            row("Key_Z", 1, 1, 1, 300),
            row("key_0", 1, 20, 2, 300),
            row("key_1", 2, 40, 4, 150),
            row("", 1, 40, 4, 0),
        ]
    );
    assert_eq!(
        spend(SpendGroup::Team).await.unwrap(),
        vec![row("", 3, 61, 7, 600), row("team_a", 2, 40, 4, 150)]
    );
    assert_eq!(
        spend(SpendGroup::Model).await.unwrap(),
        vec![
            row("Zeta", 1, 1, 1, 300),
            row("claude", 2, 60, 6, 300),
            row("gpt-4o", 2, 40, 4, 150),
        ]
    );
    assert_eq!(
        spend(SpendGroup::Day).await.unwrap(),
        vec![
            row("2023-11-14", 2, 30, 3, 400),
            row("2023-11-15", 3, 71, 8, 350)
        ]
    );
    assert_eq!(
        store
            .spend(SpendQuery {
                group: SpendGroup::Key,
                from_ms: day_three + 1,
                to_ms: day_three + 2,
            })
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(
        store
            .spent_since(Some("key_1"), None, day_one)
            .await
            .unwrap(),
        157
    );
    assert_eq!(
        store
            .spent_since(Some("key_1"), Some("team_a"), day_two)
            .await
            .unwrap(),
        57
    );
    assert_eq!(
        store
            .spent_since(None, Some("team_a"), day_one + 1)
            .await
            .unwrap(),
        57
    );
    assert_eq!(store.spent_since(None, None, 0).await.unwrap(), 0);
    assert_eq!(
        store
            .spent_since(Some("key_nobody"), None, 0)
            .await
            .unwrap(),
        0
    );

    // Spend by end user, within one key.
    let by_user =
        |started_at_ms: i64, key_id: &str, end_user: Option<&str>, cost: u64| RequestRecord {
            end_user: end_user.map(str::to_owned),
            ..spend_record(
                started_at_ms,
                "gpt-4o",
                Some(key_id),
                None,
                (1, 1),
                Some(cost),
            )
        };
    let week_later = day_three + 7 * 86_400_000;
    store
        .insert_records(&[
            by_user(week_later - 1, "key_u", Some("alice"), 1_000),
            by_user(week_later, "key_u", Some("alice"), 10),
            by_user(week_later + 1, "key_u", Some("bob"), 20),
            by_user(week_later + 2, "key_u", Some("alice"), 30),
            by_user(week_later + 3, "key_u", Some("Zoe"), 5),
            by_user(week_later + 4, "key_u", None, 40),
            by_user(week_later + 5, "key_other", Some("alice"), 50),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.user_spent_since("key_u", week_later).await.unwrap(),
        vec![
            ("Zoe".to_owned(), 5),
            ("alice".to_owned(), 40),
            ("bob".to_owned(), 20)
        ]
    );
    assert_eq!(
        store.user_spent_since("key_other", 0).await.unwrap(),
        vec![("alice".to_owned(), 50)]
    );
    assert!(
        store
            .user_spent_since("key_nobody", 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.key_version().await.unwrap(), version);
}

/// A record of the request log, for the page and usage tests.
#[allow(clippy::too_many_arguments)]
fn log_record(
    request_id: &str,
    started_at_ms: i64,
    model: &str,
    deployment: Option<&str>,
    key_id: Option<&str>,
    team_id: Option<&str>,
    status: u16,
    outcome: Outcome,
) -> RequestRecord {
    RequestRecord {
        request_id: request_id.to_owned(),
        started_at_ms,
        endpoint: Endpoint::ChatCompletions,
        model: model.to_owned(),
        deployment: deployment.map(str::to_owned),
        served_model: None,
        attempts: 1,
        attempt_details: Vec::new(),
        stream: false,
        status,
        outcome,
        error_code: None,
        latency_ms: 10,
        ttft_ms: None,
        usage: Usage {
            input_tokens: Some(1),
            output_tokens: Some(1),
            ..Usage::default()
        },
        key_id: key_id.map(Into::into),
        team_id: team_id.map(Into::into),
        end_user: None,
        cost_nanos: Some(1),
        cache_hit: false,
        metadata: None,
        bodies: None,
    }
}

/// Which records a filter should let through.
type Matches = dyn Fn(&RequestRecord) -> bool;

/// Every page of a query, followed to its end: the records in order, and
/// the number of pages.
async fn all_pages<S: Store>(
    store: &S,
    filter: &LogFilter,
    limit: u32,
) -> (Vec<RequestRecord>, usize) {
    let mut found = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store
            .log_page(&LogQuery {
                filter: filter.clone(),
                after: after.take(),
                limit,
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.records.len() <= limit as usize);
        found.extend(page.records.iter().cloned());
        match page.next {
            Some(next) => {
                assert_eq!(
                    page.records.len(),
                    limit as usize,
                    "only a full page has a next one"
                );
                let last = page.records.last().unwrap();
                assert_eq!(
                    (next.started_at_ms, next.request_id.as_str()),
                    (last.started_at_ms, last.request_id.as_str())
                );
                after = Some(next);
            }
            None => return (found, pages),
        }
        assert!(pages < 1000, "paging does not end");
    }
}

/// A record is found by its request id whether the gateway made the id
/// (the record is then found by the start time the id carries) or a client
/// sent it, and also when a client sends again an id the gateway made for
/// an earlier request; a replay after a crash writes only the records the
/// database does not hold, matched by id and start time alike.
pub async fn request_ids_of_every_kind<S: Store>(store: &S) {
    let start = 1_795_921_250_367;
    let ours = request_id::format(start as u64, 0xbeef, 42);
    let record =
        |id: &str, at: i64| log_record(id, at, "m", None, None, None, 200, Outcome::Success);
    let written = vec![
        // Made by the gateway for this very start.
        record(&ours, start),
        // A client's own id.
        record("client-7", start + 5),
        // The gateway's id sent again by a client, for a later request.
        record(&ours, start + 9_000),
        // Ids of the gateway's shape that do not carry this start.
        record(&request_id::format(start as u64 - 1, 1, 2), start),
        record("req_01A2253F883FBEEF0123456789ABCDEF", start),
    ];
    store.insert_records(&written).await.unwrap();
    let find = |id: &str| {
        let query = LogQuery {
            filter: LogFilter {
                request_id: Some(id.to_owned()),
                ..LogFilter::default()
            },
            limit: 10,
            after: None,
        };
        async move {
            store
                .log_page(&query)
                .await
                .unwrap()
                .records
                .into_iter()
                .map(|record| (record.request_id, record.started_at_ms))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        find(&ours).await,
        vec![(ours.clone(), start + 9_000), (ours.clone(), start)]
    );
    assert_eq!(
        find("client-7").await,
        vec![("client-7".to_owned(), start + 5)]
    );
    for other in &written[3..] {
        assert_eq!(
            find(&other.request_id).await,
            vec![(other.request_id.clone(), start)]
        );
    }
    assert!(
        find(&request_id::format(start as u64, 0xbeef, 43))
            .await
            .is_empty()
    );
    assert!(find("client-8").await.is_empty());

    // Replayed with one record the database lacks: only that one is written.
    let mut replayed = written.clone();
    replayed.push(record(
        &request_id::format(start as u64 + 1, 1, 3),
        start + 1,
    ));
    replayed.push(record(&ours, start + 1));
    assert_eq!(store.insert_missing_records(&replayed).await.unwrap(), 2);
    assert_eq!(store.insert_missing_records(&replayed).await.unwrap(), 0);
    assert_eq!(find(&ours).await.len(), 3);
}

/// The request log read a page at a time: newest first, ties broken by
/// request id in byte order and then by insertion (a request id may
/// repeat), every filter, pages of every size with no row missed or
/// repeated, and rows inserted between pages neither shifting nor
/// repeating those still to be read.
pub async fn request_log_pages<S: Store>(store: &S) {
    let base = 1_700_000_000_000;
    let models = ["gpt-4o", "claude", "Zeta"];
    let outcomes = [
        Outcome::Success,
        Outcome::UpstreamError,
        Outcome::ClientError,
    ];
    // Ids that sort differently by bytes than by a locale's collation, and
    // timestamps shared by up to four rows.
    let ids = ["a", "B", "b", "ü", "z", "Z", "a-1", "_"];
    let mut records = Vec::new();
    for index in 0..60usize {
        let mut record = log_record(
            &format!("{}{}", ids[index % ids.len()], index / 20),
            base + (index as i64 / 4) * 1000,
            models[index % 3],
            (index % 5 != 0).then_some(["d-east", "d-west"][index % 2]),
            (index % 4 != 3).then_some(["key_1", "key_2"][index % 2]),
            (index % 3 == 0).then_some("team_a"),
            [200, 502, 400][index % 3],
            outcomes[index % 3],
        );
        record.end_user = (index % 7 == 0).then(|| format!("user-{}", index % 2));
        record.latency_ms = index as u64;
        records.push(record);
    }
    // The same request id at the same time, twice: told apart by the
    // order they were written in (the later first).
    let mut twin = records[5].clone();
    twin.latency_ms = 5_000;
    // Written in an order unrelated to time, over several batches.
    let mut shuffled: Vec<(usize, RequestRecord)> = records.iter().cloned().enumerate().collect();
    shuffled.sort_by_key(|(index, _)| (index * 37) % 61);
    for chunk in shuffled.chunks(13) {
        let batch: Vec<RequestRecord> = chunk.iter().map(|(_, record)| record.clone()).collect();
        store.insert_records(&batch).await.unwrap();
    }
    store
        .insert_records(std::slice::from_ref(&twin))
        .await
        .unwrap();

    let mut expected = records.clone();
    expected.sort_by(|left, right| {
        (right.started_at_ms, right.request_id.as_bytes())
            .cmp(&(left.started_at_ms, left.request_id.as_bytes()))
    });
    let twin_at = expected
        .iter()
        .position(|record| *record == records[5])
        .unwrap();
    expected.insert(twin_at, twin.clone());
    assert!(
        expected
            .windows(2)
            .any(|pair| pair[0].started_at_ms == pair[1].started_at_ms),
        "the data must hold equal timestamps"
    );

    for limit in [1, 2, 3, 7, 61, 62, 1000] {
        let (found, pages) = all_pages(store, &LogFilter::default(), limit).await;
        assert_eq!(found.len(), expected.len(), "limit {limit}");
        for (position, (found, expected)) in found.iter().zip(&expected).enumerate() {
            assert_eq!(found, expected, "limit {limit}, position {position}");
        }
        assert_eq!(
            pages,
            expected.len().div_ceil(limit as usize),
            "limit {limit}"
        );
    }

    // Each filter, alone and combined, over pages of four.
    let filters: Vec<(LogFilter, Box<Matches>)> = vec![
        (
            LogFilter {
                model: Some("claude".into()),
                ..LogFilter::default()
            },
            Box::new(|record| record.model == "claude"),
        ),
        (
            LogFilter {
                deployment: Some("d-east".into()),
                ..LogFilter::default()
            },
            Box::new(|record| record.deployment.as_deref() == Some("d-east")),
        ),
        (
            LogFilter {
                key_id: Some("key_2".into()),
                ..LogFilter::default()
            },
            Box::new(|record| record.key_id.as_deref() == Some("key_2")),
        ),
        (
            LogFilter {
                team_id: Some("team_a".into()),
                ..LogFilter::default()
            },
            Box::new(|record| record.team_id.as_deref() == Some("team_a")),
        ),
        (
            LogFilter {
                status: Some(502),
                ..LogFilter::default()
            },
            Box::new(|record| record.status == 502),
        ),
        (
            LogFilter {
                outcome: Some(Outcome::ClientError),
                ..LogFilter::default()
            },
            Box::new(|record| record.outcome == Outcome::ClientError),
        ),
        (
            LogFilter {
                request_id: Some(records[5].request_id.clone()),
                ..LogFilter::default()
            },
            Box::new(|record| record.request_id == "Z0"),
        ),
        (
            LogFilter {
                end_user: Some("user-0".into()),
                ..LogFilter::default()
            },
            Box::new(|record| record.end_user.as_deref() == Some("user-0")),
        ),
        (
            LogFilter {
                from_ms: Some(base + 3_000),
                to_ms: Some(base + 9_000),
                ..LogFilter::default()
            },
            Box::new(move |record| (base + 3_000..base + 9_000).contains(&record.started_at_ms)),
        ),
        (
            LogFilter {
                from_ms: Some(base + 2_000),
                model: Some("gpt-4o".into()),
                key_id: Some("key_1".into()),
                status: Some(200),
                outcome: Some(Outcome::Success),
                ..LogFilter::default()
            },
            Box::new(move |record| {
                record.started_at_ms >= base + 2_000
                    && record.model == "gpt-4o"
                    && record.key_id.as_deref() == Some("key_1")
                    && record.status == 200
            }),
        ),
        (
            LogFilter {
                model: Some("nobody".into()),
                ..LogFilter::default()
            },
            Box::new(|_| false),
        ),
    ];
    for (filter, matches) in &filters {
        let wanted: Vec<RequestRecord> = expected.iter().filter(|r| matches(r)).cloned().collect();
        let (found, _) = all_pages(store, filter, 4).await;
        assert_eq!(found, wanted, "{filter:?}");
    }
    let twins = all_pages(
        store,
        &LogFilter {
            request_id: Some("Z0".into()),
            from_ms: Some(records[5].started_at_ms),
            to_ms: Some(records[5].started_at_ms + 1),
            ..LogFilter::default()
        },
        1,
    )
    .await
    .0;
    assert_eq!(twins, vec![twin.clone(), records[5].clone()]);

    // Rows written between pages: newer ones (and one at the very time of
    // the last row read, with a smaller id) do not disturb the pages still
    // to come; an older one is met in its place.
    let first = store
        .log_page(&LogQuery {
            filter: LogFilter::default(),
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(first.records, expected[..10].to_vec());
    let cursor = first.next.clone().unwrap();
    assert!(cursor.request_id.as_str() < "~", "{cursor:?}");
    let mut newer = log_record(
        "new",
        base + 1_000_000,
        "gpt-4o",
        None,
        None,
        None,
        200,
        Outcome::Success,
    );
    let mut older = newer.clone();
    older.request_id = "old".into();
    older.started_at_ms = base - 1;
    let mut beside = newer.clone();
    // Above the cursor's id at the cursor's time: before it, newest first.
    beside.request_id = "~".into();
    beside.started_at_ms = cursor.started_at_ms;
    newer.latency_ms = 1;
    store
        .insert_records(&[newer.clone(), older.clone(), beside.clone()])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let mut after = Some(cursor);
    while let Some(cursor) = after {
        let page = store
            .log_page(&LogQuery {
                filter: LogFilter::default(),
                after: Some(cursor),
                limit: 9,
            })
            .await
            .unwrap();
        rest.extend(page.records);
        after = page.next;
    }
    let mut wanted = expected[10..].to_vec();
    wanted.push(older);
    assert_eq!(rest, wanted);
}

/// A record for the usage tests: a latency, a time to first token and an
/// outcome; tokens (1 in, 1 out) and cost (10) unless `unpriced`.
#[allow(clippy::too_many_arguments)]
fn usage_record(
    name: &str,
    started_at_ms: i64,
    model: &str,
    deployment: Option<&str>,
    key_id: Option<&str>,
    team_id: Option<&str>,
    latency_ms: u64,
    ttft_ms: Option<u64>,
    outcome: Outcome,
) -> RequestRecord {
    let mut record = log_record(
        name,
        started_at_ms,
        model,
        deployment,
        key_id,
        team_id,
        if outcome == Outcome::Success {
            200
        } else {
            502
        },
        outcome,
    );
    record.latency_ms = latency_ms;
    record.ttft_ms = ttft_ms;
    record.cost_nanos = Some(10);
    record
}

#[allow(clippy::too_many_arguments)]
fn usage_row(
    group: &str,
    bucket_start_ms: Option<i64>,
    (requests, errors): (u64, u64),
    (input_tokens, output_tokens, cost_nanos): (u64, u64, u64),
    (latency_p50_ms, latency_p95_ms): (u64, u64),
    (ttft_p50_ms, ttft_p95_ms): (Option<u64>, Option<u64>),
) -> UsageRow {
    UsageRow {
        group: group.to_owned(),
        bucket_start_ms,
        requests,
        errors,
        input_tokens,
        output_tokens,
        cost_nanos,
        latency_p50_ms: Some(latency_p50_ms),
        latency_p95_ms: Some(latency_p95_ms),
        ttft_p50_ms,
        ttft_p95_ms,
    }
}

/// Usage over a range, by model, deployment, key and team, alone and by
/// hour and day: counts, errors, token and cost sums, and nearest-rank
/// percentiles, against values worked out by hand (where nearest rank
/// differs from interpolation and from a float-rounded rank).
pub async fn usage_aggregates<S: Store>(store: &S) {
    let day = 1_699_920_000_000; // 2023-11-14T00:00:00Z
    let hour = 3_600_000;
    let start = day + 10 * hour;
    let mut records = Vec::new();
    // alpha: latencies 10..=100, five in each hour; four times to first
    // token (5, 1 | 3, 2); three failures; the last unpriced, untokened.
    for index in 0..10u64 {
        let at = start + if index < 5 { 0 } else { hour } + index as i64 * 60_000;
        let ttft = match index {
            0 => Some(5),
            1 => Some(1),
            5 => Some(3),
            6 => Some(2),
            _ => None,
        };
        let outcome = match index {
            2 => Outcome::ClientError,
            7 => Outcome::UpstreamError,
            9 => Outcome::ClientClosed,
            _ => Outcome::Success,
        };
        let mut record = usage_record(
            &format!("alpha-{index}"),
            at,
            "alpha",
            Some("d1"),
            Some("key_a"),
            Some("team_x"),
            10 * (index + 1),
            ttft,
            outcome,
        );
        record.usage.input_tokens = Some(100);
        record.usage.output_tokens = Some(10);
        record.cost_nanos = Some(1_000);
        if index == 9 {
            record.usage = Usage::default();
            record.cost_nanos = None;
        }
        records.push(record);
    }
    // beta: one request, without deployment, key or team, no first token.
    let mut beta = usage_record(
        "beta",
        start + hour / 2,
        "beta",
        None,
        None,
        None,
        7,
        None,
        Outcome::Success,
    );
    beta.usage.input_tokens = Some(3);
    beta.usage.output_tokens = Some(4);
    beta.cost_nanos = Some(50_000);
    records.push(beta);
    // gamma: twenty requests in the second hour, latencies 20 down to 1,
    // times to first token twice that; the first cut by a shutdown.
    for index in 0..20u64 {
        records.push(usage_record(
            &format!("gamma-{index}"),
            start + hour + index as i64 * 1000,
            "gamma",
            Some("d1"),
            Some("key_b"),
            Some("team_x"),
            20 - index,
            Some(2 * (20 - index)),
            if index == 0 {
                Outcome::Shutdown
            } else {
                Outcome::Success
            },
        ));
    }
    // delta: twelve requests, latencies 101..=112: the 95th percentile is
    // at rank ceil(11.4) = 12 (a rounded rank would say 11).
    for index in 0..12u64 {
        records.push(usage_record(
            &format!("delta-{index}"),
            start + 40 * 60_000 + index as i64,
            "delta",
            Some("d2"),
            Some("key_d"),
            Some("team_d"),
            101 + index,
            None,
            Outcome::Success,
        ));
    }
    // Outside the range on either side (`to` is exclusive).
    for at in [start - 1, start + 2 * hour] {
        let mut outside = usage_record(
            "outside",
            at,
            "alpha",
            Some("d1"),
            Some("key_a"),
            Some("team_x"),
            1_000_000,
            Some(1_000_000),
            Outcome::UpstreamError,
        );
        outside.cost_nanos = Some(1_000_000_000);
        records.push(outside);
    }
    store.insert_records(&records).await.unwrap();
    let usage = |group, bucket| {
        store.usage(UsageQuery {
            group,
            bucket,
            from_ms: start,
            to_ms: start + 2 * hour,
        })
    };

    let alpha = usage_row(
        "alpha",
        None,
        (10, 3),
        (900, 90, 9_000),
        (50, 100),
        (Some(2), Some(5)),
    );
    let beta = usage_row("beta", None, (1, 0), (3, 4, 50_000), (7, 7), (None, None));
    let gamma = usage_row(
        "gamma",
        None,
        (20, 1),
        (20, 20, 200),
        (10, 19),
        (Some(20), Some(38)),
    );
    let delta = usage_row(
        "delta",
        None,
        (12, 0),
        (12, 12, 120),
        (106, 112),
        (None, None),
    );
    let renamed = |row: &UsageRow, group: &str| UsageRow {
        group: group.to_owned(),
        ..row.clone()
    };
    assert_eq!(
        usage(UsageGroup::Model, None).await.unwrap(),
        vec![beta.clone(), alpha.clone(), gamma.clone(), delta.clone()]
    );
    // alpha and gamma together: latencies 1..=20 and 10, 20, ..., 100
    // (30 values: rank 15 is 14, rank 29 is 90); times to first token 1,
    // 2, 3, 5 and 2, 4, ..., 40 (24 values: rank 12 is 16, rank 23 is 38).
    let together = |group: &str| {
        usage_row(
            group,
            None,
            (30, 4),
            (920, 110, 9_200),
            (14, 90),
            (Some(16), Some(38)),
        )
    };
    let alone = |group: &str| UsageRow {
        group: group.to_owned(),
        ..beta.clone()
    };
    assert_eq!(
        usage(UsageGroup::Deployment, None).await.unwrap(),
        vec![alone(""), together("d1"), renamed(&delta, "d2")]
    );
    assert_eq!(
        usage(UsageGroup::Team, None).await.unwrap(),
        vec![alone(""), together("team_x"), renamed(&delta, "team_d")]
    );
    assert_eq!(
        usage(UsageGroup::Key, None).await.unwrap(),
        vec![
            alone(""),
            UsageRow {
                group: "key_a".into(),
                ..alpha.clone()
            },
            UsageRow {
                group: "key_b".into(),
                ..gamma.clone()
            },
            renamed(&delta, "key_d"),
        ]
    );
    // By hour: alpha's first five (10..=50; first tokens 1, 5), beta and
    // delta, then alpha's last five (60..=100; first tokens 2, 3) and gamma.
    assert_eq!(
        usage(UsageGroup::Model, Some(UsageBucket::Hour))
            .await
            .unwrap(),
        vec![
            UsageRow {
                bucket_start_ms: Some(start),
                ..beta.clone()
            },
            usage_row(
                "alpha",
                Some(start),
                (5, 1),
                (500, 50, 5_000),
                (30, 50),
                (Some(1), Some(5)),
            ),
            UsageRow {
                bucket_start_ms: Some(start),
                ..delta.clone()
            },
            usage_row(
                "alpha",
                Some(start + hour),
                (5, 2),
                (400, 40, 4_000),
                (80, 100),
                (Some(2), Some(3)),
            ),
            UsageRow {
                bucket_start_ms: Some(start + hour),
                ..gamma.clone()
            },
        ]
    );
    assert_eq!(
        usage(UsageGroup::Model, Some(UsageBucket::Day))
            .await
            .unwrap(),
        [beta, alpha, gamma, delta]
            .into_iter()
            .map(|row| UsageRow {
                bucket_start_ms: Some(day),
                ..row
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        store
            .usage(UsageQuery {
                group: UsageGroup::Model,
                bucket: None,
                from_ms: start + 3 * hour,
                to_ms: start + 4 * hour,
            })
            .await
            .unwrap(),
        vec![]
    );
}

/// The usage of `records` worked out in Rust, as the store must answer it.
fn usage_reference(
    records: &[RequestRecord],
    group: UsageGroup,
    bucket: Option<UsageBucket>,
) -> Vec<UsageRow> {
    let mut groups: std::collections::BTreeMap<(Option<i64>, String), Vec<&RequestRecord>> =
        Default::default();
    for record in records {
        let name = match group {
            UsageGroup::Model => record.model.clone(),
            UsageGroup::Deployment => record.deployment.clone().unwrap_or_default(),
            UsageGroup::Key => record.key_id.as_deref().unwrap_or_default().to_owned(),
            UsageGroup::Team => record.team_id.as_deref().unwrap_or_default().to_owned(),
        };
        let start = bucket.map(|bucket| record.started_at_ms / bucket.millis() * bucket.millis());
        groups.entry((start, name)).or_default().push(record);
    }
    let percentile = |mut values: Vec<u64>, percent: u64| {
        values.sort_unstable();
        let rank = nearest_rank(percent, values.len() as u64);
        (rank > 0).then(|| values[rank as usize - 1])
    };
    let mut rows: Vec<UsageRow> = groups
        .into_iter()
        .map(|((start, name), members)| {
            let latencies: Vec<u64> = members.iter().map(|record| record.latency_ms).collect();
            let ttfts: Vec<u64> = members.iter().filter_map(|record| record.ttft_ms).collect();
            UsageRow {
                group: name,
                bucket_start_ms: start,
                requests: members.len() as u64,
                errors: members
                    .iter()
                    .filter(|record| record.outcome != Outcome::Success)
                    .count() as u64,
                input_tokens: members
                    .iter()
                    .filter_map(|record| record.usage.input_tokens)
                    .sum(),
                output_tokens: members
                    .iter()
                    .filter_map(|record| record.usage.output_tokens)
                    .sum(),
                cost_nanos: members.iter().filter_map(|record| record.cost_nanos).sum(),
                latency_p50_ms: percentile(latencies.clone(), 50),
                latency_p95_ms: percentile(latencies, 95),
                ttft_p50_ms: percentile(ttfts.clone(), 50),
                ttft_p95_ms: percentile(ttfts, 95),
            }
        })
        .collect();
    rows.sort_by(|left, right| {
        (
            left.bucket_start_ms,
            std::cmp::Reverse(left.cost_nanos),
            left.group.as_bytes(),
        )
            .cmp(&(
                right.bucket_start_ms,
                std::cmp::Reverse(right.cost_nanos),
                right.group.as_bytes(),
            ))
    });
    rows
}

/// Usage of 1,500 pseudo-random records over three days equals the Rust
/// reference for every grouping and bucket.
pub async fn usage_matches_the_reference<S: Store>(store: &S) {
    let start = 1_700_000_000_000;
    let span = 3 * 86_400_000;
    let models = ["gpt-4o", "claude", "Zeta", "é-model"];
    let records: Vec<RequestRecord> = (0..1500u64)
        .map(|index| {
            let random = |salt: u64| splitmix64(index * 16 + salt);
            let outcome = match random(1) % 10 {
                0 => Outcome::UpstreamError,
                1 => Outcome::ClientError,
                _ => Outcome::Success,
            };
            let mut record = usage_record(
                &format!("r{index}"),
                start + (random(2) % span as u64) as i64,
                models[(random(3) % 4) as usize],
                (random(4) % 3 > 0).then_some(["d-a", "d-b"][(random(5) % 2) as usize]),
                (random(6) % 4 > 0)
                    .then_some(["key_a", "key_b", "key_C"][(random(7) % 3) as usize]),
                (random(8) % 2 > 0).then_some("team_t"),
                random(9) % 2_000,
                (random(10) % 3 > 0).then_some(random(11) % 500),
                outcome,
            );
            record.usage.input_tokens = (random(12) % 5 > 0).then_some(random(13) % 10_000);
            record.usage.output_tokens = Some(random(14) % 1_000);
            record.cost_nanos = (random(15) % 5 > 0).then_some(random(16) % 1_000_000);
            record
        })
        .collect();
    for chunk in records.chunks(500) {
        store.insert_records(chunk).await.unwrap();
    }
    let (from_ms, to_ms) = (start + 3_600_000, start + span - 3_600_000);
    let inside: Vec<RequestRecord> = records
        .iter()
        .filter(|record| (from_ms..to_ms).contains(&record.started_at_ms))
        .cloned()
        .collect();
    for group in [
        UsageGroup::Model,
        UsageGroup::Deployment,
        UsageGroup::Key,
        UsageGroup::Team,
    ] {
        for bucket in [None, Some(UsageBucket::Hour), Some(UsageBucket::Day)] {
            let found = store
                .usage(UsageQuery {
                    group,
                    bucket,
                    from_ms,
                    to_ms,
                })
                .await
                .unwrap();
            let expected = usage_reference(&inside, group, bucket);
            assert_eq!(found.len(), expected.len(), "{group:?} {bucket:?}");
            for (found, expected) in found.iter().zip(&expected) {
                assert_eq!(found, expected, "{group:?} {bucket:?}");
            }
        }
    }
}

/// Retention: records that started before the cut are deleted, oldest
/// first, at most `limit` per call; newer ones stay.
pub async fn prune_records<S: Store>(store: &S) {
    let records: Vec<RequestRecord> = (0..30).map(varied_record).collect();
    store.insert_records(&records).await.unwrap();
    let mut by_start: Vec<i64> = records.iter().map(|record| record.started_at_ms).collect();
    by_start.sort_unstable();
    // Everything before the 21st start: 20 records.
    let cut = by_start[20];
    let old = records
        .iter()
        .filter(|record| record.started_at_ms < cut)
        .count() as u64;
    assert_eq!(old, 20);
    assert_eq!(store.prune_records(cut, 15).await.unwrap(), 15);
    assert_eq!(store.prune_records(cut, 15).await.unwrap(), 5);
    assert_eq!(store.prune_records(cut, 15).await.unwrap(), 0);
    let left = store.recent_records(100).await.unwrap();
    assert_eq!(left.len(), 10);
    assert!(left.iter().all(|record| record.started_at_ms >= cut));
}

/// Bodies kept with a record are read back by its request id, and leave
/// with it at retention.
pub async fn bodies_round_trip<S: Store>(store: &S) {
    let mut with = varied_record(1);
    with.bodies = Some(switchboard_core::Bodies {
        // A tab, and what reads as escapes in a bulk format: `\N`, `\\`, `\n`.
        request:
            "{\"messages\":[{\"role\":\"user\",\"content\":\"ü [REDACTED:email]\t\\N \\\\ \\n\"}]}"
                .to_owned(),
        response: Some("data: {\"x\":1}\n\ndata: [DONE]\n\n".to_owned()),
    });
    let mut unanswered = varied_record(2);
    unanswered.request_id = with.request_id.clone();
    unanswered.started_at_ms = with.started_at_ms + 10;
    unanswered.bodies = Some(switchboard_core::Bodies {
        request: "{}".to_owned(),
        response: None,
    });
    let without = varied_record(3);
    store
        .insert_records(&[with.clone(), unanswered.clone(), without.clone()])
        .await
        .unwrap();
    let found = store.record_bodies(&with.request_id).await.unwrap();
    assert_eq!(
        found,
        vec![
            (unanswered.started_at_ms, unanswered.bodies.clone().unwrap()),
            (with.started_at_ms, with.bodies.clone().unwrap()),
        ]
    );
    assert!(
        store
            .record_bodies(&without.request_id)
            .await
            .unwrap()
            .is_empty()
    );
    // The log's own reads do not carry bodies.
    assert!(
        store
            .recent_records(10)
            .await
            .unwrap()
            .iter()
            .all(|record| record.bodies.is_none())
    );
    store
        .prune_records(with.started_at_ms + 5, 100)
        .await
        .unwrap();
    let left = store.record_bodies(&with.request_id).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, unanswered.started_at_ms);
}
