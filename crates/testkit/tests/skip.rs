//! `skip_or_fail` as `cargo test` shows it: this test binary runs itself
//! again, one ignored test only, with libtest capturing output as it does
//! for any plain `cargo test`, and checks what reached the terminal.

use std::process::{Command, Output};

/// Set for the child run, so the ignored test below does something only
/// when run by the tests beside it.
const CHILD: &str = "SWITCHBOARD_TESTKIT_SKIP_CHILD";

#[test]
#[ignore = "run in a child process by the tests of this file"]
fn a_test_without_its_service() {
    if std::env::var_os(CHILD).is_some() {
        switchboard_testkit::skip_or_fail("a_test_without_its_service", "the service is away");
    }
}

/// Runs `a_test_without_its_service` in a child process, with `CI` set or
/// not, and output captured as in a plain `cargo test` (no `--nocapture`).
fn run_child(ci: bool) -> Output {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", "a_test_without_its_service"])
        .args(["--test-threads", "1"])
        .env(CHILD, "1")
        .env_remove("CI")
        .env_remove("RUST_TEST_NOCAPTURE");
    if ci {
        command.env("CI", "true");
    }
    command.output().unwrap()
}

#[test]
fn a_skip_is_shown_by_a_plain_cargo_test() {
    let output = run_child(false);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child test ran and passed: {stdout}"
    );
    assert!(
        stderr.contains("SKIPPED: a_test_without_its_service: the service is away"),
        "the skip must get past libtest's capture: stdout {stdout:?}, stderr {stderr:?}"
    );
}

#[test]
fn under_ci_a_skip_is_a_failure() {
    let output = run_child(true);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("required when CI is set, but the service is away"),
        "{stdout}"
    );
    assert!(!stdout.contains("SKIPPED"), "{stdout}");
}
