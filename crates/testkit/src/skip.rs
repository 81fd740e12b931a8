//! How a test that needs something this machine lacks (PostgreSQL, Redis,
//! python3, node) skips: visibly, and never under CI.
//!
//! libtest captures what a passing test prints with the `print!` and
//! `eprint!` families and throws it away, so a `println!("SKIPPED: …")`
//! never reached the output of a plain `cargo test`: a skipped test looked
//! exactly like one that ran. Writing to the standard error handle directly
//! bypasses that capture.

use std::io::Write;

/// Reports that `test` cannot run here, and `why`: a `SKIPPED: {test}:
/// {why}` line written straight to standard error, which `cargo test`
/// shows whether or not the test passes. Under CI (`CI` set) the missing
/// service or tool is a failure instead, and this panics. The caller
/// returns after it.
#[track_caller]
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: required when CI is set, but {why}");
    }
    // Nothing useful can be done if standard error itself is gone.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}
