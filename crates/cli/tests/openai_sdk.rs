//! End to end with the official SDKs: the real binary, the simulated
//! provider and mock upstreams, driven by `sdk/test_openai_sdk.py` and
//! `sdk/test_translation_sdk.py` (OpenAI's and Anthropic's Python SDKs, in a
//! virtual environment this test creates, pip installing the pinned SDKs on
//! first run) and by `sdk/node/openai_sdk.test.mjs` (npm installing the
//! pinned OpenAI Node SDK).
//!
//! Without `python3` or `node` a test writes SKIPPED to standard error
//! (past libtest's capture) and passes, except under CI (`CI` set), where a
//! missing interpreter is a failure.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;
use switchboard_testkit::{MockUpstream, Script, at_once, openai_stream};

const KEY: &str = "sb-sdk-test-master-key";

/// Holds an exclusive lock on `name` in the tests' scratch directory until
/// dropped. Tests of this file run in parallel, and under nextest each in a
/// process of its own, so a lock file (not a mutex) makes one of them at a
/// time build the shared virtual environment or install npm packages.
fn exclusive(name: &str) -> std::fs::File {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    file.lock().unwrap();
    file
}

fn python_venv() -> Option<PathBuf> {
    let _building = exclusive("openai-sdk-venv.lock");
    if Command::new("python3").arg("--version").output().is_err() {
        switchboard_testkit::skip_or_fail(
            "the Python SDK end-to-end tests",
            "python3 is not found",
        );
        return None;
    }
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/requirements.txt");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-sdk-venv");
    let stamp = venv.join("installed-requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let _ = std::fs::remove_dir_all(&venv);
        let created = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(created.success(), "python3 -m venv failed");
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements)
            .status()
            .unwrap();
        assert!(installed.success(), "pip install of the OpenAI SDK failed");
        std::fs::write(&stamp, wanted).unwrap();
    }
    Some(venv)
}

/// The Node SDK installed from `sdk/node/package.json` into a scratch copy.
fn node_project() -> Option<PathBuf> {
    if Command::new("node").arg("--version").output().is_err()
        || Command::new("npm").arg("--version").output().is_err()
    {
        switchboard_testkit::skip_or_fail(
            "the OpenAI Node SDK end-to-end test",
            "node or npm is not found",
        );
        return None;
    }
    let _installing = exclusive("openai-node-sdk.lock");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node");
    let project = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-node-sdk");
    let wanted = std::fs::read_to_string(source.join("package.json")).unwrap();
    let stamp = project.join("installed-package.json");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let _ = std::fs::remove_dir_all(&project);
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(project.join("package.json"), &wanted).unwrap();
        let installed = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
                "--loglevel=error",
            ])
            .current_dir(&project)
            .status()
            .unwrap();
        assert!(
            installed.success(),
            "npm install of the OpenAI Node SDK failed"
        );
        std::fs::write(&stamp, wanted).unwrap();
    }
    std::fs::copy(
        source.join("openai_sdk.test.mjs"),
        project.join("openai_sdk.test.mjs"),
    )
    .unwrap();
    Some(project)
}

/// A gateway with simulated models and two mock upstreams (`mock-chat`
/// answers; `mock-broken` fails inside its stream), as the SDK scripts expect.
struct SdkGateway {
    gateway: Gateway,
    mock: MockUpstream,
    _broken: MockUpstream,
}

async fn start_gateway(name: &str) -> SdkGateway {
    let mock = MockUpstream::start().await;
    let broken = MockUpstream::start().await;
    // Content first, then an error: the stream has opened, so the error
    // reaches the SDK as an event inside it.
    let mut pieces = at_once(&openai_stream("broken-model", &["partial"], false)[..2]);
    pieces.push((
        Duration::ZERO,
        "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":\"overloaded\"}}\n\n".to_owned(),
    ));
    broken.push(Script::Stream {
        pieces,
        close: true,
    });

    let directory = scratch_dir(name);
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
master_key = "${{SDK_TEST_MASTER_KEY}}"
[storage]
url = "sqlite://{db}"

[[models]]
name = "simulated-chat"
[[models.deployments]]
provider = "simulated"

[[models]]
name = "simulated-embedding"
[[models.deployments]]
provider = "simulated"

[[models]]
name = "flaky"
[[models.deployments]]
provider = "simulated"
simulation = {{ failure_rate = 1.0 }}

[[models]]
name = "mock-chat"
[[models.deployments]]
provider = "openai-compatible"
api_base = "{mock}"
model = "mock-upstream-model"
api_key = "${{SDK_TEST_UPSTREAM_KEY}}"

[[models]]
name = "mock-broken"
[[models.deployments]]
provider = "openai-compatible"
api_base = "{broken}"
model = "broken-model"
"#,
        db = directory.join("switchboard.db").display(),
        mock = mock.base_url(),
        broken = broken.base_url(),
    );
    std::fs::write(directory.join("switchboard.toml"), config).unwrap();
    let gateway = Gateway::start(
        &directory,
        &[],
        &[
            ("SDK_TEST_MASTER_KEY", KEY),
            ("SDK_TEST_UPSTREAM_KEY", UPSTREAM_KEY),
        ],
    );
    SdkGateway {
        gateway,
        mock,
        _broken: broken,
    }
}

const UPSTREAM_KEY: &str = "sk-upstream-sdk-secret";

/// Runs a command with the gateway's address and key in its environment.
async fn run_against(gateway: &Gateway, mut command: Command) -> (bool, String) {
    command
        .env("SWITCHBOARD_BASE_URL", gateway.url("/v1"))
        .env("SWITCHBOARD_API_KEY", KEY)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{report}");
    (output.status.success(), report)
}

/// After the SDK run: the upstream saw the deployment's key and never the
/// client's, the gateway exits cleanly, and no secret reached its log.
async fn finish(mut sdk: SdkGateway) {
    assert!(!format!("{:?}", sdk.mock.received()).contains(KEY));
    assert!(
        sdk.mock
            .received()
            .iter()
            .all(|request| request.header("authorization")
                == Some(&format!("Bearer {UPSTREAM_KEY}")))
    );
    let (status, gateway) =
        tokio::task::spawn_blocking(move || (sdk.gateway.terminate(), sdk.gateway))
            .await
            .unwrap();
    assert!(status.success(), "{status:?}");
    let log = gateway.log_text();
    assert!(
        !log.contains(UPSTREAM_KEY) && !log.contains(KEY),
        "a secret reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_works_against_the_gateway() {
    let Some(venv) = python_venv() else { return };
    let sdk = start_gateway("python-sdk").await;
    let mut command = Command::new(venv.join("bin/python"));
    command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/test_openai_sdk.py"));
    let (passed, report) = run_against(&sdk.gateway, command).await;
    assert!(
        passed,
        "the OpenAI Python SDK tests failed:\n{report}\n{}",
        sdk.gateway.log_text()
    );
    assert!(
        report.contains("Ran 13 tests") && report.contains("\nOK"),
        "{report}"
    );

    // Fields the gateway does not model reached the upstream unchanged.
    let relayed = sdk
        .mock
        .received()
        .into_iter()
        .find(|request| request.json().get("x_passthrough").is_some())
        .expect("the request with extra fields reached the upstream");
    assert_eq!(
        relayed.json()["x_passthrough"],
        serde_json::json!({"kept": true})
    );
    assert_eq!(relayed.json()["model"], "mock-upstream-model");
    finish(sdk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_node_sdk_works_against_the_gateway() {
    let Some(project) = node_project() else {
        return;
    };
    let sdk = start_gateway("node-sdk").await;
    let mut command = Command::new("node");
    command
        .args(["--test", "--test-reporter=spec", "openai_sdk.test.mjs"])
        .current_dir(&project);
    let (passed, report) = run_against(&sdk.gateway, command).await;
    assert!(
        passed,
        "the OpenAI Node SDK tests failed:\n{report}\n{}",
        sdk.gateway.log_text()
    );
    assert!(
        report.contains("pass 7") && report.contains("fail 0"),
        "{report}"
    );
    finish(sdk).await;
}

/// The official OpenAI and Anthropic Python SDKs against every provider:
/// one mock upstream speaks OpenAI's, Anthropic's, Gemini's and Bedrock's
/// APIs, and `sdk/test_translation_sdk.py` asserts the same answers from
/// each, through both SDKs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_and_anthropic_sdks_reach_every_provider() {
    let Some(venv) = python_venv() else { return };
    let mock = MockUpstream::start().await;
    let directory = scratch_dir("translation-sdk");
    let root = mock.root_url();
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmaster_key = \"${{SDK_TEST_MASTER_KEY}}\"\n[storage]\nurl = \"sqlite://{}\"\n",
        directory.join("switchboard.db").display()
    );
    for (name, provider, extra) in [
        (
            "via-openai",
            "openai-compatible",
            format!(
                "api_base = \"{root}/v1\"\nmodel = \"gpt-mock\"\napi_key = \"${{SDK_TEST_UPSTREAM_KEY}}\""
            ),
        ),
        (
            "via-anthropic",
            "anthropic",
            format!(
                "api_base = \"{root}\"\nmodel = \"claude-mock\"\napi_key = \"${{SDK_TEST_UPSTREAM_KEY}}\""
            ),
        ),
        (
            "via-gemini",
            "gemini",
            format!(
                "api_base = \"{root}\"\nmodel = \"gemini-mock\"\napi_key = \"${{SDK_TEST_UPSTREAM_KEY}}\""
            ),
        ),
        (
            "via-bedrock",
            "bedrock",
            format!(
                "api_base = \"{root}\"\nregion = \"us-east-1\"\nmodel = \"anthropic.claude-mock-v1:0\"\naws_access_key_id = \"AKIDEXAMPLE\"\naws_secret_access_key = \"${{SDK_TEST_UPSTREAM_KEY}}\""
            ),
        ),
    ] {
        config.push_str(&format!(
            "\n[[models]]\nname = \"{name}\"\n[[models.deployments]]\nprovider = \"{provider}\"\n{extra}\n[models.routing]\nmax_attempts = 1\ncircuit_breaker_failures = 1000\n"
        ));
    }
    std::fs::write(directory.join("switchboard.toml"), config).unwrap();
    let mut gateway = Gateway::start(
        &directory,
        &[],
        &[
            ("SDK_TEST_MASTER_KEY", KEY),
            ("SDK_TEST_UPSTREAM_KEY", UPSTREAM_KEY),
        ],
    );
    let mut command = Command::new(venv.join("bin/python"));
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/test_translation_sdk.py"))
        .env("SWITCHBOARD_ROOT_URL", gateway.url(""))
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL");
    let (passed, report) = run_against(&gateway, command).await;
    assert!(
        passed,
        "the SDK translation tests failed:\n{report}\n{}",
        gateway.log_text()
    );
    assert!(
        report.contains("Ran 12 tests") && report.contains("\nOK"),
        "{report}"
    );
    // Every provider was reached, and never with the client's key.
    let received = mock.received();
    for needle in [
        "/v1/chat/completions",
        "/v1/messages",
        ":generateContent",
        ":streamGenerateContent",
        "/converse",
        "/converse-stream",
    ] {
        assert!(
            received.iter().any(|request| request.uri.contains(needle)),
            "no request reached {needle}"
        );
    }
    assert!(!format!("{received:?}").contains(KEY));
    let status = tokio::task::spawn_blocking(move || gateway.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}
