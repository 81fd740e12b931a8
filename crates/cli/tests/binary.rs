//! The `switchboard` binary as a user runs it: `--version`, `check`, and
//! `serve` with the embedded default, with a file, with bad configs, and
//! stopped by SIGTERM with nothing lost.

mod support;

use std::time::Duration;

use support::*;
use switchboard_core::{AttemptDetail, Endpoint, Outcome, RequestRecord, Usage};
use switchboard_store::{SqliteStore, Store};

#[test]
fn version_is_printed() {
    let output = binary().arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("switchboard {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_prints_the_model_table_with_secrets_masked() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/switchboard.toml"
    );
    let output = binary()
        .args(["check", "--config", example])
        .env("SWITCHBOARD_MASTER_KEY", "sb-master-0123456789")
        .env("OPENAI_API_KEY", "sk-live-abcdefghijklmnop")
        .env("AZURE_OPENAI_RESOURCE", "contoso")
        .env("AZURE_OPENAI_API_KEY", "azure-secret-key-value")
        .env("GROQ_API_KEY", "gsk_secret_groq_key")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("is valid"));
    assert!(stdout.contains("gpt-4o-mini-azure"));
    assert!(stdout.contains("https://contoso.openai.azure.com/openai/deployments/gpt-4o-mini-prod?api-version=2024-10-21"));
    assert!(
        stdout.contains("api_key=${OPENAI_API_KEY} (24 chars)"),
        "{stdout}"
    );
    for secret in [
        "sb-master-0123456789",
        "sk-live-abcdefghijklmnop",
        "azure-secret-key-value",
        "gsk_secret_groq_key",
    ] {
        assert!(
            !stdout.contains(secret),
            "secret {secret} printed:\n{stdout}"
        );
    }
}

const BAD_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[[models]]
name = "m"
[[models.deployments]]
provider = "openai"
model = "gpt-4o"
api_key = "${SWITCHBOARD_TEST_UNSET_VARIABLE}"
[[models]]
name = "m"
[[models.deployments]]
provider = "simulated"
name = "other"
"#;

#[test]
fn check_and_serve_reject_a_bad_config_naming_file_path_and_fix() {
    let directory = scratch_dir("bad-config");
    let path = directory.join("bad.toml");
    std::fs::write(&path, BAD_CONFIG).unwrap();
    for command in ["check", "serve"] {
        let output = binary()
            .args([command, "--config"])
            .arg(&path)
            .env_remove("SWITCHBOARD_TEST_UNSET_VARIABLE")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let file = path.display().to_string();
        assert!(
            stderr.contains(&format!("{file}: models[0].deployments[0].api_key")),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("SWITCHBOARD_TEST_UNSET_VARIABLE"),
            "{stderr}"
        );
        assert!(
            stderr.contains("fix: export SWITCHBOARD_TEST_UNSET_VARIABLE"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("{file}: models[1].name")),
            "{stderr}"
        );
        assert!(stderr.contains("already declared"), "{stderr}");
    }

    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:0\"\nport = 8080\n").unwrap();
    let output = binary()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.port") && stderr.contains("unknown field"),
        "{stderr}"
    );
}

/// The README's quickstart: no config, no key, a chat answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_answers_without_any_key_and_records_to_sqlite() {
    let directory = scratch_dir("default");
    let mut gateway = Gateway::start(&directory, &["--listen", "127.0.0.1:0"], &[]);
    let client = reqwest::Client::new();
    let response = client
        .post(gateway.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "simulated-chat", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Simulated reply to: hello")
    );
    let log = without_colors(&gateway.log_text());
    assert!(log.contains("<embedded default>"));
    // One serving thread per CPU the process may use, each with a runtime
    // of its own.
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(log.contains(&format!("serving_threads={cpus}")), "{log}");
    assert!(log.contains("scheduler=\"per-thread\""), "{log}");

    let status = tokio::task::spawn_blocking(move || {
        let status = gateway.terminate();
        (status, gateway)
    })
    .await
    .unwrap();
    assert!(status.0.success());
    let store = SqliteStore::open_file(&directory.join("switchboard.db"))
        .await
        .unwrap();
    let records = store.recent_records(10).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].model, "simulated-chat");
}

/// The text log without its ANSI colour sequences (`ESC [ … m`).
fn without_colors(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

/// SIGTERM while requests are in flight: the stream finishes, the process
/// exits cleanly, and every request is in the database. On one worker
/// thread, so on tokio's current-thread scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_and_flushes_every_record() {
    let directory = scratch_dir("sigterm");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = 20
worker_threads = 1
[storage]
url = "sqlite://{}"
[[models]]
name = "fast"
[[models.deployments]]
provider = "simulated"
[[models]]
name = "slow"
[[models.deployments]]
provider = "simulated"
simulation = {{ reply_tokens = 20, tokens_per_second = 20 }}
"#,
        directory.join("data/requests.db").display()
    );
    std::fs::write(directory.join("gateway.toml"), config).unwrap();
    let mut gateway = Gateway::start(
        &directory,
        &["--config", "gateway.toml", "--log-format", "json"],
        // tokio's own variable does not override the configuration.
        &[("TOKIO_WORKER_THREADS", "3")],
    );
    let client = reqwest::Client::new();
    for index in 0..50 {
        let response = client
            .post(gateway.url("/v1/chat/completions"))
            .header("x-request-id", format!("burst-{index}"))
            .json(&serde_json::json!({"model": "fast", "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let stream = client
        .post(gateway.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(async move { stream.text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, gateway) = tokio::task::spawn_blocking(move || (gateway.terminate(), gateway))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let streamed = reader.await.unwrap();
    assert!(streamed.ends_with("data: [DONE]\n\n"), "{streamed}");

    // Structured logs carry the request id.
    let log = gateway.log_text();
    assert!(log.contains(r#""scheduler":"per-thread""#), "{log}");
    assert!(log.contains(r#""serving_threads":1"#), "{log}");
    assert!(log.contains("TOKIO_WORKER_THREADS is not read"), "{log}");
    assert!(log.contains(r#""request_id":"burst-7""#), "{log}");

    let store = SqliteStore::open_file(&directory.join("data/requests.db"))
        .await
        .unwrap();
    let records = store.recent_records(1000).await.unwrap();
    assert_eq!(records.len(), 51, "every request is recorded");
    assert!(records.iter().all(|record| record.status == 200));
}

fn reload_config(model: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"sqlite::memory:\"\n[[models]]\nname = \"{model}\"\n[[models.deployments]]\nprovider = \"simulated\"\n"
    )
}

async fn model_ids(client: &reqwest::Client, gateway: &Gateway) -> Vec<String> {
    let list: serde_json::Value = client
        .get(gateway.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_for_models(client: &reqwest::Client, gateway: &Gateway, expected: &[&str]) {
    for _ in 0..100 {
        if model_ids(client, gateway).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("models never became {expected:?}:\n{}", gateway.log_text());
}

/// SIGHUP reloads the file (no watcher runs, so only the signal can);
/// a broken file is refused and the running configuration keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration_and_refuses_a_broken_one() {
    let directory = scratch_dir("reload-sighup");
    let path = directory.join("live.toml");
    std::fs::write(&path, reload_config("before")).unwrap();
    let gateway = Gateway::start(&directory, &["--config", "live.toml"], &[]);
    let pid = gateway.child.as_ref().unwrap().id().to_string();
    let client = reqwest::Client::new();
    assert_eq!(model_ids(&client, &gateway).await, vec!["before"]);

    std::fs::write(&path, reload_config("after-sighup")).unwrap();
    // Without a signal nothing changes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(model_ids(&client, &gateway).await, vec!["before"]);
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for_models(&client, &gateway, &["after-sighup"]).await;

    std::fs::write(&path, "[[models]]\nname = \"broken\"\nbogus = 1\n").unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    for _ in 0..100 {
        if gateway.log_text().contains("configuration reload refused") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = gateway.log_text();
    assert!(
        log.contains("configuration reload refused") && log.contains("models[0].bogus"),
        "{log}"
    );
    assert_eq!(
        model_ids(&client, &gateway).await,
        vec!["after-sighup"],
        "the running configuration stays"
    );
}

/// With `--watch`, saving the file is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reloads_the_configuration_when_the_file_changes() {
    let directory = scratch_dir("reload-watch");
    let path = directory.join("live.toml");
    std::fs::write(&path, reload_config("before")).unwrap();
    let gateway = Gateway::start(&directory, &["--config", "live.toml", "--watch"], &[]);
    let client = reqwest::Client::new();
    assert_eq!(model_ids(&client, &gateway).await, vec!["before"]);
    std::fs::write(&path, reload_config("after-watch")).unwrap();
    wait_for_models(&client, &gateway, &["after-watch"]).await;
}

/// `switchboard check | head -1` must not panic when `head` stops reading.
#[test]
fn check_survives_a_closed_stdout() {
    let mut child = binary()
        .arg("check")
        .current_dir(scratch_dir("closed-stdout"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
}

/// `switchboard keys`, `teams` and `spend` against a running gateway.
#[test]
fn keys_teams_and_spend_from_the_command_line() {
    let directory = scratch_dir("admin-cli");
    std::fs::write(
        directory.join("switchboard.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\nmaster_key = \"${CLI_MASTER}\"\n[storage]\nurl = \"sqlite://switchboard.db\"\n[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\nprice = { input_per_mtok = 1.0, output_per_mtok = 2.0 }\n",
    )
    .unwrap();
    let master = "cli-master-key-0123456789";
    let mut gateway = Gateway::start(&directory, &[], &[("CLI_MASTER", master)]);
    let run = |args: &[&str]| {
        let output = binary()
            .args(args)
            .env("SWITCHBOARD_URL", &gateway.base)
            .env("SWITCHBOARD_MASTER_KEY", master)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let in_a_day = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400)
        .to_string();
    let (ok, team, _) = run(&[
        "teams",
        "create",
        "--name",
        "search",
        "--budget-usd",
        "10",
        "--expires-at",
        &in_a_day,
    ]);
    assert!(ok, "{team}");
    let team: serde_json::Value = serde_json::from_str(&team).unwrap();
    let team_id = team["id"].as_str().unwrap();
    assert_eq!(team["expires_at"].to_string(), in_a_day, "{team}");
    assert_eq!(team["active"], true, "{team}");
    let (ok, _, error) = run(&["teams", "update", team_id, "--expires-at", "1"]);
    assert!(!ok && error.contains("expires_at"), "{error}");
    let later = (in_a_day.parse::<u64>().unwrap() + 3_600).to_string();
    let (ok, updated, error) = run(&["teams", "update", team_id, "--expires-at", &later]);
    assert!(ok, "{error}");
    let updated: serde_json::Value = serde_json::from_str(&updated).unwrap();
    assert_eq!(updated["expires_at"].to_string(), later, "{updated}");
    let (ok, created, _) = run(&[
        "keys",
        "create",
        "--name",
        "app",
        "--team",
        team_id,
        "--rpm",
        "5",
        "--models",
        "m,other*",
        "--metadata",
        r#"{"owner":"ana"}"#,
        "--user-limits",
        r#"{"rpm":3}"#,
    ]);
    assert!(created.contains("\"owner\": \"ana\""), "{created}");
    assert!(ok, "{created}");
    let secret = created.lines().next().unwrap().to_owned();
    assert!(secret.starts_with("sb-"), "{created}");
    let id = created
        .split("\"id\": \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();

    // The key works against the gateway.
    let status = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {secret}"))
        .args(["-H", "content-type: application/json", "-d"])
        .arg(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
        .arg(gateway.url("/v1/chat/completions"))
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned());
    if let Ok(status) = status {
        assert_eq!(status, "200");
    }

    let (ok, listed, _) = run(&["keys", "list"]);
    assert!(ok);
    assert!(
        listed.starts_with("ID") && listed.contains(&id) && listed.contains("app"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "a list never shows a secret");
    let (ok, revoked, _) = run(&["keys", "revoke", &id]);
    assert!(ok && revoked.contains("\"active\": false"), "{revoked}");
    let (ok, _, error) = run(&["keys", "show", "key_missing"]);
    assert!(
        !ok && error.contains("404") && error.contains("key_missing"),
        "{error}"
    );
    let (ok, _, error) = run(&["keys", "create", "--rpm", "0"]);
    assert!(!ok && error.contains("rpm"), "{error}");
    let (ok, _, error) = run(&["keys", "create", "--metadata", "{not json"]);
    assert!(!ok && error.contains("--metadata"), "{error}");
    let (ok, spend, _) = run(&["spend", "--group-by", "team"]);
    assert!(ok && spend.starts_with("GROUP"), "{spend}");
    let (ok, teams, _) = run(&["teams", "list"]);
    assert!(ok && teams.contains("search"), "{teams}");
    let output = binary()
        .args(["keys", "list"])
        .env("SWITCHBOARD_URL", &gateway.base)
        .env("SWITCHBOARD_MASTER_KEY", "wrong")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
    assert!(gateway.terminate().success());
    assert!(
        !gateway.log_text().contains(&secret),
        "no secret reaches the log"
    );
}

/// A record for the request log the `logs` and `usage` commands read.
fn logged(
    request_id: &str,
    started_at_ms: i64,
    model: &str,
    status: u16,
    latency_ms: u64,
    cost_nanos: u64,
) -> RequestRecord {
    RequestRecord {
        request_id: request_id.to_owned(),
        started_at_ms,
        endpoint: Endpoint::ChatCompletions,
        model: model.to_owned(),
        deployment: Some(format!("{model}-east")),
        served_model: None,
        attempts: 1,
        attempt_details: Vec::new(),
        stream: false,
        status,
        outcome: if status == 200 {
            Outcome::Success
        } else {
            Outcome::UpstreamError
        },
        error_code: None,
        latency_ms,
        ttft_ms: None,
        usage: Usage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            ..Usage::default()
        },
        key_id: Some("key_cli".into()),
        team_id: None,
        end_user: None,
        cost_nanos: Some(cost_nanos),
        cache_hit: false,
        metadata: None,
        bodies: None,
    }
}

/// `switchboard logs` and `switchboard usage` against a running gateway
/// whose request log holds three known records.
#[test]
fn logs_and_usage_from_the_command_line() {
    let directory = scratch_dir("log-cli");
    let base = 1_700_000_000_000; // 2023-11-14T22:13:20Z
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = SqliteStore::open_file(&directory.join("switchboard.db"))
                .await
                .unwrap();
            store
                .insert_records(&[
                    logged("cli-1", base, "gpt", 200, 120, 1_500),
                    RequestRecord {
                        attempts: 2,
                        attempt_details: vec![
                            AttemptDetail {
                                deployment: "gpt-east".into(),
                                model: "gpt".into(),
                                outcome: "server_error".into(),
                                status: Some(503),
                                duration_ms: 900,
                            },
                            AttemptDetail {
                                deployment: "gpt-west".into(),
                                model: "gpt".into(),
                                outcome: "timeout".into(),
                                status: None,
                                duration_ms: 1_600,
                            },
                        ],
                        error_code: Some("upstream_timeout".to_owned()),
                        ..logged("cli-2", base + 1000, "gpt", 502, 2_500, 0)
                    },
                    logged("cli-3", base + 2000, "claude", 200, 40, 2_000_000_000),
                    RequestRecord {
                        metadata: Some(r#"{"feature":"digest"}"#.to_owned()),
                        ..logged("cli-4", base - 1000, "gpt", 200, 10, 0)
                    },
                ])
                .await
                .unwrap();
            store.close().await;
        });
    std::fs::write(
        directory.join("switchboard.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\nmaster_key = \"${CLI_MASTER}\"\n[storage]\nurl = \"sqlite://switchboard.db\"\n[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\n",
    )
    .unwrap();
    let master = "cli-master-key-for-logs";
    let mut gateway = Gateway::start(&directory, &[], &[("CLI_MASTER", master)]);
    let run = |args: &[&str]| {
        let output = binary()
            .args(args)
            .env("SWITCHBOARD_URL", &gateway.base)
            .env("SWITCHBOARD_MASTER_KEY", master)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    // One metadata member picks its record.
    let (code, tagged, error) = run(&["logs", "--metadata", "feature:digest", "--json"]);
    assert_eq!(code, Some(0), "{error}");
    let tagged: serde_json::Value = serde_json::from_str(&tagged).unwrap();
    assert_eq!(tagged["data"].as_array().unwrap().len(), 1, "{tagged}");
    assert_eq!(tagged["data"][0]["request_id"], "cli-4");

    // A page of two, then the rest through the printed cursor.
    let (code, first, error) = run(&["logs", "--limit", "2"]);
    assert_eq!(code, Some(0), "{error}");
    let header = first.lines().next().unwrap();
    for column in [
        "TIME",
        "REQUEST ID",
        "MODEL",
        "DEPLOYMENT",
        "STATUS",
        "LATENCY",
        "TOKENS",
        "COST",
    ] {
        assert!(header.contains(column), "{first}");
    }
    let row = first.lines().nth(1).unwrap();
    for cell in [
        "2023-11-14T22:13:22.000Z",
        "cli-3",
        "claude",
        "claude-east",
        "200 success",
        "40ms",
        "10/5",
        "$2.000000",
    ] {
        assert!(row.contains(cell), "{cell} in {first}");
    }
    assert!(first.lines().nth(2).unwrap().contains("cli-2"), "{first}");
    assert!(!first.contains("cli-1"), "{first}");
    let cursor = first
        .lines()
        .find_map(|line| line.strip_prefix("next cursor: "))
        .unwrap_or_else(|| panic!("no cursor in {first}"));
    let (code, rest, _) = run(&["logs", "--limit", "2", "--cursor", cursor]);
    assert_eq!(code, Some(0));
    assert!(rest.contains("cli-1") && !rest.contains("cli-2"), "{rest}");
    assert!(rest.contains("(no more records)"), "{rest}");

    // One request in detail, with its attempts one by one.
    let (code, detail, error) = run(&["logs", "cli-2"]);
    assert_eq!(code, Some(0), "{error}");
    for line in [
        "request     cli-2",
        "status      502 upstream_error (upstream_timeout)",
        "attempts    2",
    ] {
        assert!(detail.contains(line), "{line} in {detail}");
    }
    let attempts: Vec<Vec<&str>> = detail
        .lines()
        .skip_while(|line| !line.starts_with("# "))
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        attempts,
        [
            vec!["#", "DEPLOYMENT", "MODEL", "OUTCOME", "STATUS", "DURATION"],
            vec!["1", "gpt-east", "gpt", "server_error", "503", "900ms"],
            vec!["2", "gpt-west", "gpt", "timeout", "-", "1600ms"],
        ],
        "{detail}"
    );
    let (code, _, error) = run(&["logs", "nobody-sent-this"]);
    assert!(code == Some(1) && error.contains("404"), "{error}");
    let (code, _, error) = run(&["logs", "cli-2", "--model", "gpt"]);
    assert!(code == Some(2) && error.contains("--model"), "{error}");

    // Filters, and the JSON answer.
    let (_, failed, _) = run(&["logs", "--model", "gpt", "--status", "502"]);
    assert_eq!(failed.lines().count(), 3, "{failed}");
    assert!(
        failed.contains("cli-2")
            && failed.contains("502 upstream_error")
            && failed.contains("2500ms"),
        "{failed}"
    );
    let (code, json, _) = run(&[
        "logs",
        "--json",
        "--key",
        "key_cli",
        "--from",
        "2023-11-14T22:13:21Z",
    ]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ids: Vec<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cli-3", "cli-2"]);

    // Usage as a table and as JSON.
    let (code, usage, error) = run(&[
        "usage",
        "--group-by",
        "model",
        "--from",
        "1700000000",
        "--to",
        "1700000100",
    ]);
    assert_eq!(code, Some(0), "{error}");
    let lines: Vec<&str> = usage.lines().collect();
    assert!(
        lines[0].starts_with("GROUP") && lines[0].contains("P95"),
        "{usage}"
    );
    assert!(
        lines[1].starts_with("claude") && lines[1].contains("$2.000000"),
        "{usage}"
    );
    assert!(
        lines[2].starts_with("gpt")
            && lines[2].contains("1 (50.0%)")
            && lines[2].contains("2500ms"),
        "{usage}"
    );
    let (code, usage, _) = run(&[
        "usage",
        "--group-by",
        "deployment",
        "--bucket",
        "hour",
        "--from",
        "2023-11-14",
        "--to",
        "2023-11-15",
        "--json",
    ]);
    assert_eq!(code, Some(0));
    let usage: serde_json::Value = serde_json::from_str(&usage).unwrap();
    assert_eq!(usage["data"][0]["bucket"], "2023-11-14T22:00:00Z");
    assert_eq!(usage["data"][0]["group"], "claude-east");
    assert_eq!(usage["data"][1]["latency_p95_ms"], 2500);
    let (code, bucketed, _) = run(&["usage", "--bucket", "day", "--from", "2023-11-14"]);
    assert_eq!(code, Some(0));
    assert!(
        bucketed.starts_with("BUCKET") && bucketed.contains("2023-11-14T00:00:00Z"),
        "{bucketed}"
    );

    // Refusals: the gateway's, naming the parameter, and the command's own.
    let (code, _, error) = run(&["usage", "--group-by", "week"]);
    assert_eq!(code, Some(1));
    assert!(
        error.contains("400") && error.contains("group_by"),
        "{error}"
    );
    let (code, _, error) = run(&["logs", "--limit", "0"]);
    assert!(code == Some(1) && error.contains("limit"), "{error}");
    let (code, _, error) = run(&["logs", "--since", "1y"]);
    assert!(code == Some(2) && error.contains("--since"), "{error}");
    let (code, recent, _) = run(&["logs", "--since", "1h"]);
    assert!(code == Some(0) && !recent.contains("cli-"), "{recent}");
    assert!(gateway.terminate().success());
}

/// SIGKILL right after requests completed: their records were journaled
/// before their responses ended, and the next start writes those the
/// database did not receive. Nothing a client saw complete is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_record_of_a_completed_request() {
    let directory = scratch_dir("sigkill");
    std::fs::write(
        directory.join("switchboard.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"sqlite://switchboard.db\"\n[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\nprice = { input_per_mtok = 1.0, output_per_mtok = 2.0 }\n",
    )
    .unwrap();
    let mut gateway = Gateway::start(&directory, &[], &[]);
    let client = reqwest::Client::new();
    let mut completed = 0;
    for index in 0..300 {
        let stream = index % 3 == 0;
        let response = client
            .post(gateway.url("/v1/chat/completions"))
            .json(&serde_json::json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // The whole body: the request has completed for the client.
        response.bytes().await.unwrap();
        completed += 1;
    }
    // Killed at once, with the last batch of records still on its way.
    let mut child = gateway.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        directory.join("switchboard.db.journal").is_dir(),
        "the journal sits beside the database"
    );

    let mut restarted = Gateway::start(&directory, &[], &[]);
    let status = tokio::task::spawn_blocking(move || restarted.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let store = SqliteStore::open_file(&directory.join("switchboard.db"))
        .await
        .unwrap();
    let records = store.recent_records(10_000).await.unwrap();
    assert_eq!(
        records.len(),
        completed,
        "every completed request is recorded once"
    );
    assert!(
        records
            .iter()
            .all(|record| record.status == 200 && record.cost_nanos.is_some())
    );
}
