//! Virtual keys, teams, limits and spend through the real router: the
//! admin API, authentication with a key, model access, rate limits,
//! concurrency, budgets that hold under concurrency, cost in headers and
//! records, and refusals of malformed admin requests.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// A simulated model with a price (so requests cost something), and a
/// slow one for concurrency.
fn models() -> String {
    r#"
[[models]]
name = "priced"
[[models.deployments]]
provider = "simulated"
price = { input_per_mtok = 1000.0, output_per_mtok = 2000.0 }

[[models]]
name = "other"
[[models.deployments]]
provider = "simulated"

[[models]]
name = "slow"
[[models.deployments]]
provider = "simulated"
simulation = { latency_ms = 400 }

[[models]]
name = "trickle"
[[models.deployments]]
provider = "simulated"
price = { input_per_mtok = 1000.0, output_per_mtok = 2000.0 }
simulation = { tokens_per_second = 4 }
"#
    .to_owned()
}

async fn gateway() -> TestGateway {
    TestGateway::start(config_with(&models(), "")).await
}

async fn admin(
    gateway: &TestGateway,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = gateway
        .http
        .request(method.parse().unwrap(), gateway.url(path))
        .bearer_auth(MASTER_KEY);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn chat_with(gateway: &TestGateway, key: &str, model: &str) -> reqwest::Response {
    gateway
        .http
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(
            json!({"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_are_created_used_rotated_and_revoked() {
    let gateway = gateway().await;
    let (status, team) = admin(
        &gateway,
        "POST",
        "/admin/teams",
        Some(json!({"name": "search", "models": ["priced", "slow"]})),
    )
    .await;
    assert_eq!(status, 201, "{team}");
    let team_id = team["id"].as_str().unwrap().to_owned();
    let (status, created) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"name": "app", "team_id": team_id, "models": ["pri*"], "metadata": {"owner": "ana"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sb-") && secret.len() > 40);
    assert_eq!(created["prefix"], secret[..11]);

    // The secret is never shown again, nor its hash.
    let (_, listed) = admin(&gateway, "GET", "/admin/keys", None).await;
    let text = listed.to_string();
    assert!(!text.contains(&secret) && !text.contains("hash"), "{text}");
    assert_eq!(listed["data"][0]["metadata"]["owner"], "ana");

    // The key works for the models it and its team allow.
    let ok = chat_with(&gateway, &secret, "priced").await;
    assert_eq!(ok.status(), 200);
    let cost: f64 = ok.headers()["x-switchboard-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cost > 0.0, "a priced model costs something: {cost}");
    let denied = chat_with(&gateway, &secret, "other").await;
    assert_eq!(denied.status(), 403);
    let error: Value = denied.json().await.unwrap();
    assert_eq!(error["error"]["code"], "model_not_allowed");
    assert_eq!(
        chat_with(&gateway, "sb-not-a-key", "priced").await.status(),
        401
    );

    // A key may not use the admin API.
    let response = gateway
        .http
        .get(gateway.url("/admin/keys"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // Rotation: the old secret stops, the new one works.
    let (status, rotated) =
        admin(&gateway, "POST", &format!("/admin/keys/{id}/rotate"), None).await;
    assert_eq!(status, 200);
    let new_secret = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(chat_with(&gateway, &secret, "priced").await.status(), 401);
    assert_eq!(
        chat_with(&gateway, &new_secret, "priced").await.status(),
        200
    );

    // Revocation is immediate on this instance.
    let (status, revoked) =
        admin(&gateway, "POST", &format!("/admin/keys/{id}/revoke"), None).await;
    assert_eq!(status, 200);
    assert_eq!(revoked["active"], false);
    let refused = chat_with(&gateway, &new_secret, "priced").await;
    assert_eq!(refused.status(), 401);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "inactive_api_key");

    // Records name the key and team, never the secret, and hold the cost.
    let records = gateway.stop_and_records().await;
    let mine: Vec<_> = records
        .iter()
        .filter(|record| record.key_id.as_deref() == Some(&id))
        .collect();
    assert!(mine.len() >= 3);
    assert!(
        mine.iter()
            .all(|record| record.team_id.as_deref() == Some(team_id.as_str()))
    );
    let served = mine.iter().find(|record| record.status == 200).unwrap();
    assert!(served.cost_nanos.unwrap() > 0);
    assert!(!format!("{records:?}").contains(&secret));
}

#[tokio::test]
async fn a_budget_holds_under_200_concurrent_requests() {
    let gateway = gateway().await;
    // Each request's worst case (its body's bytes as prompt tokens, plus 5
    // output tokens) at these prices is about 13 cents, its actual cost
    // about 2: the budget fits a few at once and some dozens in all.
    let (status, created) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"budget_usd": 1.0, "budget_period": "daily"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let requests = (0..200).map(|_| {
        let http = gateway.http.clone();
        let url = gateway.url("/v1/chat/completions");
        let secret = secret.clone();
        tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(secret)
                .header("content-type", "application/json")
                .body(json!({"model": "priced", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}).to_string())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        })
    });
    let mut served = 0;
    let mut refused = 0;
    for request in requests {
        let (status, body) = request.await.unwrap();
        match status {
            200 => served += 1,
            429 => {
                assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
                assert!(body["error"]["message"].as_str().unwrap().contains(&id));
                refused += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let records = gateway.stop_and_records().await;
    let spent: u64 = records
        .iter()
        .filter(|record| record.key_id.as_deref() == Some(&id))
        .filter_map(|record| record.cost_nanos)
        .sum();
    assert!(spent > 0);
    assert!(
        spent <= 1_000_000_000,
        "recorded spend {spent} nano-dollars overshoots the $1.00 budget"
    );
}

#[tokio::test]
async fn rate_limits_and_concurrency_are_enforced_with_headers() {
    let gateway = gateway().await;
    let (_, limited) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"rpm": 2, "tpm": 1_000_000})),
    )
    .await;
    let secret = limited["key"].as_str().unwrap().to_owned();
    let first = chat_with(&gateway, &secret, "other").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(first.headers()["x-ratelimit-limit-tokens"], "1000000");
    // What is left once this request's worst case is reserved.
    let left: u64 = first.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..1_000_000).contains(&left), "{left}");
    // The minute's reset, in OpenAI's form: whole seconds, 1 to 60, then "s".
    for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        let reset = first.headers()[name].to_str().unwrap();
        let seconds: u64 = reset
            .strip_suffix('s')
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {reset:?} is not whole seconds"));
        assert!((1..=60).contains(&seconds), "{name}: {reset}");
    }
    assert_eq!(chat_with(&gateway, &secret, "other").await.status(), 200);
    let third = chat_with(&gateway, &secret, "other").await;
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let error: Value = third.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");

    let (_, single) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"max_concurrent": 1})),
    )
    .await;
    let secret = single["key"].as_str().unwrap().to_owned();
    let (slow, fast) = tokio::join!(chat_with(&gateway, &secret, "slow"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        chat_with(&gateway, &secret, "slow").await
    });
    assert_eq!(slow.status(), 200);
    assert_eq!(fast.status(), 429, "a second request while the first runs");
    // Once the first has ended, its slot is free again.
    assert_eq!(chat_with(&gateway, &secret, "slow").await.status(), 200);
}

#[tokio::test]
async fn end_users_have_limits_of_their_own() {
    let gateway = gateway().await;
    let (_, created) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"user_limits": {"rpm": 1}})),
    )
    .await;
    let secret = created["key"].as_str().unwrap().to_owned();
    let send = |user: &'static str| {
        gateway
            .http
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .header("content-type", "application/json")
            .body(json!({"model": "other", "user": user, "messages": [{"role": "user", "content": "hi"}]}).to_string())
            .send()
    };
    assert_eq!(send("alice").await.unwrap().status(), 200);
    assert_eq!(send("bob").await.unwrap().status(), 200);
    assert_eq!(send("alice").await.unwrap().status(), 429);
    let records = gateway.stop_and_records().await;
    assert_eq!(records[0].end_user.as_deref(), Some("alice"));
}

#[tokio::test]
async fn malformed_admin_requests_are_refused_and_create_nothing() {
    let gateway = gateway().await;
    for (body, param) in [
        (json!({"budget_usd": -1}), "budget_usd"),
        (json!({"budget_usd": 1e12}), "budget_usd"),
        (json!({"rpm": 0}), "rpm"),
        (json!({"tpm": 10_000_000_000u64}), "tpm"),
        (json!({"budget_period": "daily"}), "budget_period"),
        (
            json!({"budget_usd": 1, "budget_period": "hourly"}),
            "budget_period",
        ),
        (json!({"modles": ["x"]}), "modles"),
        (json!({"metadata": "not an object"}), "metadata"),
        (json!({"user_limits": {"rpm": -3}}), "user_limits.rpm"),
        (json!({"expires_at": 1}), "expires_at"),
    ] {
        let (status, error) = admin(&gateway, "POST", "/admin/keys", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {error}");
        let named = error["error"]["param"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
            + error["error"]["message"].as_str().unwrap_or_default();
        assert!(named.contains(param), "{body}: {error}");
    }
    let (status, _) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"team_id": "team_nope"})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = admin(&gateway, "POST", "/admin/teams", Some(json!({"rpm": 5}))).await;
    assert_eq!(status, 400, "a team needs a name");
    for (body, param) in [
        (json!({"name": "t", "expires_at": 1}), "expires_at"),
        (json!({"name": "t", "expires_at": "tomorrow"}), "expires_at"),
        (json!({"name": "t", "expires_at": 1.5e9}), "expires_at"),
    ] {
        let (status, error) = admin(&gateway, "POST", "/admin/teams", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }
    let (_, teams) = admin(&gateway, "GET", "/admin/teams", None).await;
    assert_eq!(teams["data"], json!([]), "no team was partly created");
    let (_, keys) = admin(&gateway, "GET", "/admin/keys", None).await;
    assert_eq!(keys["data"], json!([]), "nothing was partly created");
    let (status, _) = admin(&gateway, "GET", "/admin/keys/key_missing", None).await;
    assert_eq!(status, 404);
    let (status, _) = admin(&gateway, "POST", "/admin/teams", Some(json!({"name": "a"}))).await;
    assert_eq!(status, 201);
    let (status, _) = admin(&gateway, "POST", "/admin/teams", Some(json!({"name": "a"}))).await;
    assert_eq!(status, 409, "team names are unique");
    let (status, document) = admin(&gateway, "GET", "/admin/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/admin/keys"]["post"].is_object());
    let schemas = &document["components"]["schemas"];
    assert!(schemas["TeamInput"]["properties"]["expires_at"].is_object());
    assert!(schemas["Team"]["properties"]["expires_at"].is_object());
}

#[tokio::test]
async fn spend_is_aggregated_by_key_team_model_and_day() {
    let gateway = gateway().await;
    let (_, team) = admin(&gateway, "POST", "/admin/teams", Some(json!({"name": "t"}))).await;
    let (_, created) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"team_id": team["id"]})),
    )
    .await;
    let secret = created["key"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(chat_with(&gateway, &secret, "priced").await.status(), 200);
    }
    // Records are written in batches off the request path.
    let mut rows = Value::Null;
    for _ in 0..50 {
        let (_, spend) = admin(&gateway, "GET", "/admin/spend?group_by=key", None).await;
        if spend["data"][0]["requests"] == 3 {
            rows = spend;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows["data"][0]["group"], created["id"], "{rows}");
    assert!(rows["data"][0]["cost_usd"].as_f64().unwrap() > 0.0);
    for group in ["team", "model", "day"] {
        let (status, spend) = admin(
            &gateway,
            "GET",
            &format!("/admin/spend?group_by={group}"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(spend["data"][0]["requests"], 3, "{group}: {spend}");
    }
    let (status, _) = admin(&gateway, "GET", "/admin/spend?group_by=week", None).await;
    assert_eq!(status, 400);
}

/// A configuration keeping its database in `database`, to restart on.
fn on_file(database: &std::path::Path) -> switchboard_config::Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmaster_key = \"{MASTER_KEY}\"\n[storage]\nurl = \"sqlite://{}\"\n{}",
        database.display(),
        models()
    );
    switchboard_config::Config::from_toml("test.toml", &text).unwrap()
}

/// A fresh directory for one test's database.
fn scratch(name: &str) -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("sb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

#[tokio::test]
async fn a_restart_does_not_hand_out_budgets_afresh() {
    let directory = scratch("budget");
    let database = directory.join("switchboard.db");
    let config = || on_file(&database);
    let first = TestGateway::start(config()).await;
    let (_, created) = admin(
        &first,
        "POST",
        "/admin/keys",
        Some(json!({"budget_usd": 0.2, "budget_period": "daily"})),
    )
    .await;
    let secret = created["key"].as_str().unwrap().to_owned();
    let mut served = 0;
    while chat_with(&first, &secret, "priced").await.status() == 200 {
        served += 1;
        assert!(served < 50, "the budget never ran out");
    }
    assert!(served > 0);
    first.stop_and_records().await;

    let second = TestGateway::start(config()).await;
    let refused = chat_with(&second, &secret, "priced").await;
    assert_eq!(
        refused.status(),
        429,
        "the spend recorded before the restart still counts"
    );
    second.stop_and_records().await;
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_restart_does_not_hand_out_end_users_budgets_afresh() {
    let directory = scratch("user-budget");
    let database = directory.join("switchboard.db");
    let first = TestGateway::start(on_file(&database)).await;
    let (_, created) = admin(
        &first,
        "POST",
        "/admin/keys",
        Some(json!({"user_limits": {"budget_usd": 0.2, "budget_period": "daily"}})),
    )
    .await;
    let secret = created["key"].as_str().unwrap().to_owned();
    let (_, other) = admin(
        &first,
        "POST",
        "/admin/keys",
        Some(json!({"user_limits": {"budget_usd": 0.2, "budget_period": "daily"}})),
    )
    .await;
    let other = other["key"].as_str().unwrap().to_owned();
    let send = |gateway: &TestGateway, secret: &str, user: &str| {
        gateway
            .http
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(secret)
            .header("content-type", "application/json")
            .body(
                json!({"model": "priced", "user": user, "max_tokens": 5,
                       "messages": [{"role": "user", "content": "hello there"}]})
                .to_string(),
            )
            .send()
    };
    let mut served = 0;
    while send(&first, &secret, "alice").await.unwrap().status() == 200 {
        served += 1;
        assert!(served < 50, "the end user's budget never ran out");
    }
    assert!(served > 0);
    first.stop_and_records().await;

    let second = TestGateway::start(on_file(&database)).await;
    let refused = send(&second, &secret, "alice").await.unwrap();
    assert_eq!(
        refused.status(),
        429,
        "alice's spend recorded before the restart still counts"
    );
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["type"], "insufficient_quota", "{error}");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("user"),
        "{error}"
    );
    // Another user of the key, and the same user name with another key,
    // have budgets of their own.
    assert_eq!(send(&second, &secret, "bob").await.unwrap().status(), 200);
    assert_eq!(send(&second, &other, "alice").await.unwrap().status(), 200);
    second.stop_and_records().await;
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_revocation_is_never_undone_by_a_concurrent_change() {
    let gateway = gateway().await;
    for _ in 0..5 {
        let (_, created) = admin(&gateway, "POST", "/admin/keys", Some(json!({"name": "k"}))).await;
        let id = created["id"].as_str().unwrap().to_owned();
        let secret = created["key"].as_str().unwrap().to_owned();
        let key_path = format!("/admin/keys/{id}");
        let revoke_path = format!("/admin/keys/{id}/revoke");
        let patches = (0..8).map(|index| {
            admin(
                &gateway,
                "PATCH",
                &key_path,
                Some(json!({"name": format!("k{index}")})),
            )
        });
        let revoke = admin(&gateway, "POST", &revoke_path, None);
        let (revoked, _) = tokio::join!(revoke, futures_util::future::join_all(patches));
        assert_eq!(revoked.0, 200);
        let (_, shown) = admin(&gateway, "GET", &format!("/admin/keys/{id}"), None).await;
        assert_eq!(shown["active"], false, "{shown}");
        assert_eq!(chat_with(&gateway, &secret, "priced").await.status(), 401);
    }
}

#[tokio::test]
async fn the_worst_case_counts_every_choice_and_needs_a_price() {
    let gateway = gateway().await;
    let (_, created) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"budget_usd": 1.0})),
    )
    .await;
    let secret = created["key"].as_str().unwrap().to_owned();
    // 200 answers of 5 tokens at $2000 per million: $2, over the budget.
    let response = gateway
        .http
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("content-type", "application/json")
        .body(json!({"model": "priced", "n": 200, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "insufficient_quota");
    // A model without a price cannot be covered by a budget.
    let response = chat_with(&gateway, &secret, "other").await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unpriced_model");
    // Keys are not operators.
    let health = gateway
        .http
        .get(gateway.url("/health/deployments"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 403);
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_is_charged_the_worst_case() {
    let gateway = gateway().await;
    let (_, created) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"budget_usd": 10.0})),
    )
    .await;
    let secret = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let mut response = gateway
        .http
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("content-type", "application/json")
        .body(json!({"model": "trickle", "stream": true, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Some of the answer arrives; then the client goes away, before the
    // usage the upstream would report at the end.
    let first = response.chunk().await.unwrap();
    assert!(first.is_some());
    drop(response);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = gateway.stop_and_records().await;
    let record = records
        .iter()
        .find(|record| record.key_id.as_deref() == Some(id.as_str()))
        .unwrap();
    assert_eq!(record.status, 499);
    let charged = record.cost_nanos.unwrap();
    // The worst case: the body's bytes as prompt tokens at $1000 per
    // million, plus 20 output tokens at $2000 per million.
    assert!(charged >= 20 * 2_000_000, "charged {charged} nano-dollars");
}

#[tokio::test]
async fn an_update_can_clear_what_it_set() {
    let gateway = gateway().await;
    let (_, team) = admin(&gateway, "POST", "/admin/teams", Some(json!({"name": "t"}))).await;
    let (_, created) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(
            json!({"team_id": team["id"], "rpm": 1, "budget_usd": 5, "models": ["priced"],
                    "expires_at": 4_000_000_000u64, "user_limits": {"models": ["slow"]}}),
        ),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["key"].as_str().unwrap().to_owned();
    // End users of this key may use only `slow`.
    let response = gateway
        .http
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("content-type", "application/json")
        .body(json!({"model": "priced", "user": "u1", "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let (status, cleared) = admin(
        &gateway,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(
            json!({"team_id": null, "rpm": null, "budget_usd": null, "models": null,
                    "expires_at": null, "user_limits": null}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{cleared}");
    for field in [
        "team_id",
        "rpm",
        "budget_usd",
        "budget_period",
        "expires_at",
        "user_limits",
    ] {
        assert!(cleared[field].is_null(), "{field}: {cleared}");
    }
    assert_eq!(cleared["models"], json!([]));
    // A field left out stays as it was.
    let (_, renamed) = admin(
        &gateway,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"name": "n"})),
    )
    .await;
    assert_eq!(renamed["name"], "n");
    assert!(renamed["rpm"].is_null());
    assert_eq!(chat_with(&gateway, &secret, "other").await.status(), 200);
}

#[tokio::test]
async fn a_budget_set_mid_window_counts_what_was_already_spent() {
    let gateway = gateway().await;
    let (_, created) = admin(&gateway, "POST", "/admin/keys", Some(json!({}))).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["key"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(chat_with(&gateway, &secret, "priced").await.status(), 200);
    }
    // Wait until the request log holds the spend.
    let mut spent = 0.0;
    for _ in 0..50 {
        let (_, spend) = admin(&gateway, "GET", "/admin/spend?group_by=key", None).await;
        spent = spend["data"][0]["cost_usd"].as_f64().unwrap_or(0.0);
        if spend["data"][0]["requests"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(spent > 0.0);
    // A request's worst case: its body's bytes as prompt tokens at $1000
    // per million, plus 5 output tokens at $2000 per million. A daily
    // budget of that plus half of today's spend would fit one request on
    // its own, but not after what was already spent today.
    let body = json!({"model": "priced", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5});
    let worst = body.to_string().len() as f64 * 0.001 + 5.0 * 0.002;
    let (status, _) = admin(
        &gateway,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"budget_usd": worst + spent / 2.0, "budget_period": "daily"})),
    )
    .await;
    assert_eq!(status, 200);
    let refused = chat_with(&gateway, &secret, "priced").await;
    assert_eq!(refused.status(), 429);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["type"], "insufficient_quota");
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A request with `secret` in each client API: (status, body) for OpenAI's
/// chat completions and Anthropic's messages.
async fn both_apis(gateway: &TestGateway, secret: &str) -> [(u16, Value); 2] {
    let openai = chat_with(gateway, secret, "priced").await;
    let openai = (openai.status().as_u16(), openai.json().await.unwrap());
    let anthropic = gateway
        .http
        .post(gateway.url("/v1/messages"))
        .header("x-api-key", secret)
        .header("content-type", "application/json")
        .body(
            json!({"model": "priced", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let anthropic = (anthropic.status().as_u16(), anthropic.json().await.unwrap());
    [openai, anthropic]
}

#[tokio::test]
async fn a_key_whose_team_has_expired_is_refused_as_an_expired_key_is() {
    let gateway = gateway().await;
    let in_an_hour = unix_seconds() + 3_600;
    let (status, team) = admin(
        &gateway,
        "POST",
        "/admin/teams",
        Some(json!({"name": "contractors", "expires_at": in_an_hour})),
    )
    .await;
    assert_eq!(status, 201, "{team}");
    assert_eq!(team["expires_at"], in_an_hour);
    assert_eq!(team["active"], true);
    let team_id = team["id"].as_str().unwrap().to_owned();
    let (_, teamed) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"team_id": team_id})),
    )
    .await;
    let teamed = teamed["key"].as_str().unwrap().to_owned();
    let (_, alone) = admin(
        &gateway,
        "POST",
        "/admin/keys",
        Some(json!({"expires_at": in_an_hour})),
    )
    .await;
    let alone_id = alone["id"].as_str().unwrap().to_owned();
    let alone = alone["key"].as_str().unwrap().to_owned();
    for (status, body) in both_apis(&gateway, &teamed).await {
        assert_eq!(status, 200, "{body}");
    }

    // The team and the other key expire: written to the store as another
    // instance would (the admin API refuses an expiry in the past), so
    // this instance learns of it through its key-cache refresh.
    let store = gateway.running.as_ref().unwrap().gateway.store().clone();
    let a_second_ago = (unix_seconds() - 1) * 1000;
    let mut expired_team = store
        .teams()
        .await
        .unwrap()
        .into_iter()
        .find(|team| team.id == team_id)
        .unwrap();
    expired_team.expires_at_ms = Some(a_second_ago);
    store.update_team(&expired_team).await.unwrap().unwrap();
    let mut expired_key = store
        .keys()
        .await
        .unwrap()
        .into_iter()
        .find(|key| key.id == alone_id)
        .unwrap();
    expired_key.expires_at_ms = Some(a_second_ago);
    store.update_key(&expired_key).await.unwrap().unwrap();
    let started = std::time::Instant::now();
    while chat_with(&gateway, &teamed, "priced").await.status() == 200 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the team's expiry was not seen within the key-cache refresh"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let refused = both_apis(&gateway, &teamed).await;
    assert_eq!(refused, both_apis(&gateway, &alone).await);
    assert_eq!(refused[0].0, 401);
    assert_eq!(refused[0].1["error"]["code"], "inactive_api_key");
    assert_eq!(refused[1].0, 401);
    assert_eq!(refused[1].1["error"]["type"], "authentication_error");
    let (_, shown) = admin(&gateway, "GET", &format!("/admin/teams/{team_id}"), None).await;
    assert_eq!(shown["active"], false, "{shown}");

    // An expiry in the past or not a number is refused by name, and
    // changes nothing; `null` clears the expiry and the keys work again.
    let team_path = format!("/admin/teams/{team_id}");
    for body in [json!({"expires_at": 1}), json!({"expires_at": "tomorrow"})] {
        let (status, error) = admin(&gateway, "PATCH", &team_path, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["param"], "expires_at", "{body}: {error}");
    }
    let (status, cleared) = admin(
        &gateway,
        "PATCH",
        &team_path,
        Some(json!({"expires_at": null})),
    )
    .await;
    assert_eq!(status, 200, "{cleared}");
    assert!(cleared["expires_at"].is_null() && cleared["active"] == true);
    assert_eq!(chat_with(&gateway, &teamed, "priced").await.status(), 200);
}
