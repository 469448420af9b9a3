//! Third-party clients run as child processes (mosquitto_pub, paho scripts, node): run one
//! to completion with a time limit, and read its output as text.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

/// Runs `cmd` to completion with piped output, failing the test if it cannot start (the
/// message points to `scripts/setup.sh --tests`) or takes longer than `limit`.
pub async fn output(cmd: &mut Command, what: &str, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {what}: {e} (scripts/setup.sh --tests installs it)")
        });
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .expect("wait for child process")
}

/// A child's output as text (lossy: a test prints it, it does not parse bytes).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
