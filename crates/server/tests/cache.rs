//! The response cache through the real router: a repeated request is
//! answered without going upstream, byte for byte, at no cost; a changed
//! parameter, `Cache-Control`, the temperature rule and the key scope all
//! decide correctly; a cached stream replays as a well-formed stream; two
//! instances share answers through Redis (and separate gateways, with
//! prefixes of their own, do not).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use switchboard_testkit::MockUpstream;

const COLD: &str =
    r#"{"model":"chat","temperature":0,"messages":[{"role":"user","content":"hello"}]}"#;

fn models(mock: &MockUpstream) -> String {
    openai_models(
        &mock.base_url(),
        "price = { input_per_mtok = 1.0, output_per_mtok = 2.0 }",
    )
}

async fn gateway_with(mock: &MockUpstream, cache: &str) -> TestGateway {
    let text = format!("[cache]\nenabled = true\n{cache}\n{}", models(mock));
    TestGateway::start(config_with(&text, "")).await
}

fn cache_header(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-switchboard-cache")
        .map(|value| value.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_cache_at_no_cost() {
    let mock = MockUpstream::start().await;
    let gateway = gateway_with(&mock, "").await;

    let first = gateway.send("/v1/chat/completions", COLD).await;
    assert_eq!(first.status(), 200);
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    assert_ne!(first.headers()["x-switchboard-cost"], "0.000000000");
    let first_body = first.bytes().await.unwrap();

    // Same request, members reordered and an end user named: a hit.
    let same = r#"{"messages":[{"content":"hello","role":"user"}],"user":"u-7","temperature":0.0,"model":"chat"}"#;
    let second = gateway.send("/v1/chat/completions", same).await;
    assert_eq!(second.status(), 200);
    assert_eq!(cache_header(&second).as_deref(), Some("hit"));
    assert_eq!(second.headers()["x-switchboard-cost"], "0.000000000");
    assert_eq!(second.headers()["content-type"], "application/json");
    assert_eq!(second.bytes().await.unwrap(), first_body);
    assert_eq!(mock.received().len(), 1, "the hit never went upstream");

    // A changed parameter misses.
    let longer = r#"{"model":"chat","temperature":0,"max_tokens":7,"messages":[{"role":"user","content":"hello"}]}"#;
    let third = gateway.send("/v1/chat/completions", longer).await;
    assert_eq!(cache_header(&third).as_deref(), Some("miss"));
    assert_eq!(mock.received().len(), 2);

    let metrics = gateway.metrics_text().await;
    assert!(
        metrics.contains("switchboard_cache_hits_total{model=\"chat\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_cache_misses_total{model=\"chat\"} 2\n"));

    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 3);
    let hit = &records[1];
    assert_eq!(hit.status, 200);
    assert_eq!(hit.cost_nanos, Some(0), "a hit costs nothing");
    assert_eq!(hit.deployment, None, "no deployment served it");
    assert_eq!(hit.attempts, 0);
    assert!(hit.cache_hit, "the record says the cache answered");
    assert!(!records[0].cache_hit && !records[2].cache_hit);
    assert!(records[0].cost_nanos.unwrap() > 0);
}

/// A reload that changes what a model answers with (here its upstream
/// model) stops its cached answers from being served; one that changes
/// only how its deployments are chosen or priced keeps them.
#[tokio::test]
async fn a_reload_that_changes_a_models_deployments_misses_the_cache() {
    let mock = MockUpstream::start().await;
    let text = |extra: &str| {
        format!(
            "[cache]\nenabled = true\n{}",
            openai_models(&mock.base_url(), extra)
        )
    };
    let running_config = config_with(&text(""), "");
    let gateway = TestGateway::start(running_config.clone()).await;
    let reload = |next: &switchboard_config::Config, running: &switchboard_config::Config| {
        gateway
            .running
            .as_ref()
            .unwrap()
            .gateway
            .reload(next, running)
            .unwrap();
    };
    let send = || gateway.send("/v1/chat/completions", COLD);
    assert_eq!(cache_header(&send().await).as_deref(), Some("miss"));
    assert_eq!(cache_header(&send().await).as_deref(), Some("hit"));

    // Priced and weighted anew: the same answers, still cached.
    let repriced = config_with(
        &text("price = { input_per_mtok = 3.0, output_per_mtok = 4.0 }\nweight = 5"),
        "",
    );
    reload(&repriced, &running_config);
    assert_eq!(cache_header(&send().await).as_deref(), Some("hit"));
    assert_eq!(mock.received().len(), 1);

    // Another upstream model behind the same public name: a miss, sent
    // upstream to the new model, and cached anew.
    let upgraded = config_with(
        &text("").replace("model = \"upstream-model\"", "model = \"upstream-model-2\""),
        "",
    );
    reload(&upgraded, &repriced);
    assert_eq!(cache_header(&send().await).as_deref(), Some("miss"));
    let received = mock.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].json()["model"], "upstream-model-2");
    assert_eq!(cache_header(&send().await).as_deref(), Some("hit"));
}

#[tokio::test]
async fn a_cached_stream_replays_as_the_same_well_formed_stream() {
    let mock = MockUpstream::start().await;
    let gateway = gateway_with(&mock, "").await;
    let stream = r#"{"model":"chat","temperature":0,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#;

    let first = gateway.send("/v1/chat/completions", stream).await;
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let first_text = first.text().await.unwrap();
    assert!(first_text.ends_with("data: [DONE]\n\n"));

    let second = gateway.send("/v1/chat/completions", stream).await;
    assert_eq!(cache_header(&second).as_deref(), Some("hit"));
    assert!(
        second.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let second_text = second.text().await.unwrap();
    assert_eq!(second_text, first_text);
    let events = data_events(&second_text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).expect("each event is JSON");
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
    assert_eq!(mock.received().len(), 1);

    // The plain request is another entry: a stream never answers it.
    let plain = gateway.send("/v1/chat/completions", COLD).await;
    assert_eq!(cache_header(&plain).as_deref(), Some("miss"));
    assert_eq!(mock.received().len(), 2);
}

#[tokio::test]
async fn an_anthropic_client_gets_its_own_answer_back_from_the_cache() {
    let mock = MockUpstream::start().await;
    let gateway = gateway_with(&mock, "").await;
    let body = r#"{"model":"chat","max_tokens":50,"temperature":0,"messages":[{"role":"user","content":"hello"}]}"#;
    let first = gateway.send("/v1/messages", body).await;
    assert_eq!(first.status(), 200);
    let first_body: Value = first.json().await.unwrap();
    assert_eq!(first_body["type"], "message");
    let second = gateway.send("/v1/messages", body).await;
    assert_eq!(cache_header(&second).as_deref(), Some("hit"));
    assert_eq!(second.json::<Value>().await.unwrap(), first_body);
    // The same body on the OpenAI endpoint is not answered in Anthropic's shape.
    let openai = gateway.send("/v1/chat/completions", body).await;
    assert_eq!(cache_header(&openai).as_deref(), Some("miss"));
    assert_eq!(mock.received().len(), 2);
}

#[tokio::test]
async fn cache_control_and_the_temperature_rule_decide_what_is_cached() {
    let mock = MockUpstream::start().await;
    let gateway = gateway_with(&mock, "").await;

    // no-store: neither read nor written.
    let response = gateway
        .post("/v1/chat/completions", COLD)
        .header("cache-control", "no-store")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(cache_header(&response), None);
    let response = gateway.send("/v1/chat/completions", COLD).await;
    assert_eq!(cache_header(&response).as_deref(), Some("miss"));
    assert_eq!(mock.received().len(), 2);
    // no-cache: goes upstream although an answer is cached.
    let response = gateway
        .post("/v1/chat/completions", COLD)
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&response).as_deref(), Some("miss"));
    assert_eq!(mock.received().len(), 3);
    let response = gateway.send("/v1/chat/completions", COLD).await;
    assert_eq!(cache_header(&response).as_deref(), Some("hit"));
    assert_eq!(mock.received().len(), 3);

    // A TTL of 0.2 s from the request: gone after it.
    let short =
        r#"{"model":"chat","temperature":0,"messages":[{"role":"user","content":"brief"}]}"#;
    let response = gateway
        .post("/v1/chat/completions", short)
        .header("x-switchboard-cache-ttl", "0.2")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&response).as_deref(), Some("miss"));
    assert_eq!(
        cache_header(&gateway.send("/v1/chat/completions", short).await).as_deref(),
        Some("hit")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cache_header(&gateway.send("/v1/chat/completions", short).await).as_deref(),
        Some("miss")
    );

    // Temperature absent (the providers' default, 1) or above 0: not cached.
    let warm = r#"{"model":"chat","messages":[{"role":"user","content":"hello"}]}"#;
    for _ in 0..2 {
        let response = gateway.send("/v1/chat/completions", warm).await;
        assert_eq!(response.status(), 200);
        assert_eq!(cache_header(&response), None);
    }

    // A malformed TTL is refused by name.
    let response = gateway
        .post("/v1/chat/completions", COLD)
        .header("x-switchboard-cache-ttl", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_header");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-switchboard-cache-ttl")
    );
}

#[tokio::test]
async fn nonzero_temperature_is_cached_when_configured() {
    let mock = MockUpstream::start().await;
    let gateway = gateway_with(&mock, "nonzero_temperature = true").await;
    let warm =
        r#"{"model":"chat","temperature":0.8,"messages":[{"role":"user","content":"hello"}]}"#;
    gateway.send("/v1/chat/completions", warm).await;
    let again = gateway.send("/v1/chat/completions", warm).await;
    assert_eq!(cache_header(&again).as_deref(), Some("hit"));
    assert_eq!(mock.received().len(), 1);
}

#[tokio::test]
async fn answers_are_never_served_across_keys_unless_the_scope_allows() {
    let mock = MockUpstream::start().await;
    for (scope, shared) in [("key", false), ("global", true)] {
        let gateway = gateway_with(&mock, &format!("scope = \"{scope}\"")).await;
        let (_, secret) = gateway.create_key(json!({"name": "app"})).await;
        let body = format!(
            r#"{{"model":"chat","temperature":0,"messages":[{{"role":"user","content":"scope {scope}"}}]}}"#
        );
        let master = gateway.send("/v1/chat/completions", &body).await;
        assert_eq!(cache_header(&master).as_deref(), Some("miss"));
        let by_key = gateway
            .http
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(by_key.status(), 200, "{scope}");
        let expected = if shared { "hit" } else { "miss" };
        assert_eq!(cache_header(&by_key).as_deref(), Some(expected), "{scope}");
    }
}

/// With `scope = "team"`, keys of one team share answers; a key of
/// another team, a key without a team and the master key do not.
#[tokio::test]
async fn a_team_scope_shares_answers_within_a_team_only() {
    let mock = MockUpstream::start().await;
    let gateway = gateway_with(&mock, "scope = \"team\"").await;
    let admin = |path: &'static str, body: Value| {
        let gateway = &gateway;
        async move {
            let response = gateway
                .http
                .post(gateway.url(path))
                .bearer_auth(MASTER_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()
        }
    };
    let team = |name: &'static str| admin("/admin/teams", json!({"name": name}));
    let (search, billing) = (team("search").await, team("billing").await);
    let key = |team: Option<&Value>| {
        let mut body = json!({"name": "app"});
        if let Some(team) = team {
            body["team_id"] = team["id"].clone();
        }
        let created = admin("/admin/keys", body);
        async move { created.await["key"].as_str().unwrap().to_owned() }
    };
    let (first, second) = (key(Some(&search)).await, key(Some(&search)).await);
    let (other_team, no_team) = (key(Some(&billing)).await, key(None).await);
    let body =
        r#"{"model":"chat","temperature":0,"messages":[{"role":"user","content":"team scope"}]}"#;
    let ask = |secret: String| {
        let gateway = &gateway;
        async move {
            let response = gateway
                .post_as(&secret, "/v1/chat/completions", body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            cache_header(&response)
        }
    };
    assert_eq!(ask(first).await.as_deref(), Some("miss"));
    assert_eq!(ask(second.clone()).await.as_deref(), Some("hit"));
    assert_eq!(ask(other_team).await.as_deref(), Some("miss"));
    assert_eq!(ask(no_team).await.as_deref(), Some("miss"));
    assert_eq!(ask(MASTER_KEY.to_owned()).await.as_deref(), Some("miss"));
    assert_eq!(ask(second).await.as_deref(), Some("hit"));
}

#[tokio::test]
async fn embeddings_are_cached() {
    let mock = MockUpstream::start().await;
    let gateway = gateway_with(&mock, "").await;
    let body = r#"{"model":"embed","input":"hello"}"#;
    let first = gateway.send("/v1/embeddings", body).await;
    assert_eq!(first.status(), 200);
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let first_body = first.bytes().await.unwrap();
    let second = gateway.send("/v1/embeddings", body).await;
    assert_eq!(cache_header(&second).as_deref(), Some("hit"));
    assert_eq!(second.bytes().await.unwrap(), first_body);
    assert_eq!(mock.received().len(), 1);
}

#[tokio::test]
async fn without_the_cache_nothing_is_looked_up() {
    let mock = MockUpstream::start().await;
    let gateway = TestGateway::start(config_with(&models(&mock), "")).await;
    for _ in 0..2 {
        let response = gateway.send("/v1/chat/completions", COLD).await;
        assert_eq!(cache_header(&response), None);
    }
    assert_eq!(mock.received().len(), 2);
}

fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[tokio::test]
async fn two_instances_share_answers_through_redis() {
    let url = redis_url();
    let address = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let reachable = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&address),
    )
    .await
    .is_ok_and(|connected| connected.is_ok());
    if !reachable {
        switchboard_testkit::skip_or_fail(
            "two_instances_share_answers_through_redis",
            &format!("needs Redis at {address}"),
        );
        return;
    }
    let mock = MockUpstream::start().await;
    let cache = "backend = \"redis\"\nscope = \"global\"";
    // Written right after `[storage]`'s url, so it lands in that table.
    let text = format!(
        "redis_url = \"{url}\"\n[cache]\nenabled = true\n{cache}\n{}",
        models(&mock)
    );
    let first = TestGateway::start(config_with(&text, "")).await;
    let second = TestGateway::start(config_with(&text, "")).await;
    // A body no other run shares.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let body = format!(
        r#"{{"model":"chat","temperature":0,"messages":[{{"role":"user","content":"redis {nonce}"}}]}}"#
    );
    let answer = first.send("/v1/chat/completions", &body).await;
    assert_eq!(cache_header(&answer).as_deref(), Some("miss"));
    let answer = answer.bytes().await.unwrap();
    // The write is off the request path: wait for it to land.
    let mut hit = None;
    for _ in 0..50 {
        // Looks up without storing: a hit can only be the first's answer.
        let response = second
            .post("/v1/chat/completions", &body)
            .header("x-switchboard-cache-ttl", "0")
            .send()
            .await
            .unwrap();
        if cache_header(&response).as_deref() == Some("hit") {
            hit = Some(response.bytes().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hit.expect("the second instance hits"), answer);
    // Another gateway on the same Redis, with a prefix of its own: it does
    // not answer from this one's cache.
    let other = format!(
        "redis_url = \"{url}\"\nredis_prefix = \"other-{nonce}:\"\n[cache]\nenabled = true\n{cache}\n{}",
        models(&mock)
    );
    let other = TestGateway::start(config_with(&other, "")).await;
    let response = other
        .post("/v1/chat/completions", &body)
        .header("x-switchboard-cache-ttl", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&response).as_deref(), Some("miss"));
}
