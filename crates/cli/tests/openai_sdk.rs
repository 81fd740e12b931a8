//! End to end with the official OpenAI Python SDK: the real binary, the
//! simulated provider and two mock upstreams, driven by
//! `sdk/test_openai_sdk.py` in a virtual environment this test creates
//! (pip installs the pinned SDK from PyPI on first run).
//!
//! Without `python3` the test says so and skips, except under CI (`CI` set),
//! where a missing interpreter is a failure.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;
use switchboard_testkit::{MockUpstream, Script};

const KEY: &str = "sb-sdk-test-master-key";

fn python_venv() -> Option<PathBuf> {
    if Command::new("python3").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 is required for the OpenAI SDK tests under CI"
        );
        eprintln!("SKIPPED: python3 not found, so the OpenAI SDK end-to-end test cannot run");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_works_against_the_gateway() {
    let Some(venv) = python_venv() else { return };
    let mock = MockUpstream::start().await;
    let broken = MockUpstream::start().await;
    broken.push(Script::events(
        &[r#"{"error":{"message":"overloaded","type":"server_error","code":"overloaded"}}"#],
        Duration::ZERO,
    ));

    let directory = scratch_dir("sdk");
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
    let mut gateway = Gateway::start(
        &directory,
        &[],
        &[
            ("SDK_TEST_MASTER_KEY", KEY),
            ("SDK_TEST_UPSTREAM_KEY", "sk-upstream-sdk-secret"),
        ],
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/test_openai_sdk.py");
    let python = venv.join("bin/python");
    let base = gateway.url("/v1");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("SWITCHBOARD_BASE_URL", base)
            .env("SWITCHBOARD_API_KEY", KEY)
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    eprintln!("{report}");
    assert!(
        output.status.success(),
        "the OpenAI SDK tests failed:\n{report}\n{}",
        gateway.log_text()
    );
    assert!(report.contains("OK"), "{report}");

    // What the SDK's requests looked like upstream: extra fields kept, the
    // deployment's key used, the client's key nowhere.
    let relayed = mock
        .received()
        .into_iter()
        .find(|request| request.json().get("x_passthrough").is_some())
        .expect("the request with extra fields reached the upstream");
    assert_eq!(
        relayed.json()["x_passthrough"],
        serde_json::json!({"kept": true})
    );
    assert_eq!(relayed.json()["model"], "mock-upstream-model");
    assert_eq!(
        relayed.header("authorization"),
        Some("Bearer sk-upstream-sdk-secret")
    );
    assert!(!format!("{:?}", mock.received()).contains(KEY));

    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    let log = gateway.log_text();
    assert!(
        !log.contains("sk-upstream-sdk-secret") && !log.contains(KEY),
        "a secret reached the log"
    );
}
