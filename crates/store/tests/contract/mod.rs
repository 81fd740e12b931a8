//! The behaviour every storage backend must have, written once and run
//! against each (`tests/sqlite.rs`, `tests/postgres.rs`): request records
//! round-trip exactly and read newest first; keys, teams, the change
//! counter and spend answer the same on every backend.
//!
//! Each function takes a freshly migrated, empty store.

use switchboard_core::keys::{KeyRecord, Limits, Period, SpendGroup, SpendRow, TeamRecord};
use switchboard_core::{Endpoint, Outcome, RequestRecord, Usage};
use switchboard_store::{KeyStore, KeyStoreConflict, SpendQuery, Store};

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
        key_id: text_if(9, format!("key_{:016x}", index % 4)),
        team_id: text_if(3, "team_with 'quotes' \"and\" \\slashes".to_owned()),
        end_user: text_if(5, format!("user-{index}@example.com")),
        cost_nanos: some_if(1, number * 1_000_003),
    }
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
        team_id: team_id.map(str::to_owned),
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
        key_id: key_id.map(str::to_owned),
        team_id: team_id.map(str::to_owned),
        end_user: None,
        cost_nanos,
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
