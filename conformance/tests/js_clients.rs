//! JavaScript clients against the broker: MQTT.js from Node over TCP, and the web chat
//! (`examples/web-chat`, MQTT.js in a web page) in headless Chromium over WebSocket.
//!
//! The clients are the Node scripts of `conformance/js`, run as child processes against a
//! broker inside the test process; each script checks what it receives, prints it, and exits
//! 0 only if everything arrived. They need `node`, the npm packages of `conformance/js`
//! (`mqtt`, `playwright-core`, pinned by its `package-lock.json`) and `/usr/bin/chromium`:
//! `scripts/setup.sh` installs all of them (the README's `./scripts/test.sh` runs it first).
//! A missing one fails the test with a message saying so, rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tern::admin::client::ApiClient;
use tern_conformance::Broker;
use tokio::process::Command;

/// How long a script may run: longer than its own overall timeout (45 s for MQTT.js over TCP,
/// 90 s for the browser), which ends it with a message first.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// `conformance/js`.
fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Fails unless `node` and the npm packages are installed.
async fn check_node() {
    let node = Command::new("node").arg("--version").output().await;
    match node {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`node --version` failed ({}): run scripts/setup.sh",
            out.status
        ),
        Err(e) => panic!("cannot run node ({e}): run scripts/setup.sh, which installs Node.js"),
    }
    for package in ["mqtt", "playwright-core"] {
        let dir = js_dir().join("node_modules").join(package);
        assert!(
            dir.join("package.json").exists(),
            "{} is missing: run scripts/setup.sh (npm ci in conformance/js)",
            dir.display()
        );
    }
}

/// Runs `node conformance/js/{script} ARGS`; returns its output once it exits.
async fn node(script: &str, args: &[String]) -> Output {
    check_node().await;
    let child = Command::new("node")
        .arg(js_dir().join(script))
        .args(args)
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node {script}: {e} (run scripts/setup.sh)"));
    tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node {script} did not finish within {SCRIPT_TIMEOUT:?}"))
        .expect("wait for node")
}

/// Asserts that the script exited 0 and printed every line of `expected`; returns stdout.
/// An expected line ending in `=` stands for that line followed by a number (an id the
/// broker chose).
fn assert_ran(script: &str, out: &Output, expected: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node {script} failed ({}):\n{stdout}{stderr}",
        out.status
    );
    // Shown with --nocapture.
    println!("node {script}:\n{stdout}");
    for line in expected {
        assert!(
            stdout.lines().any(|l| l == *line
                || (line.ends_with('=')
                    && l.strip_prefix(line).is_some_and(|n| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
                    }))),
            "node {script}: no line {line:?} in its output:\n{stdout}{stderr}"
        );
    }
    stdout
}

/// MQTT.js 5 over TCP, as a 3.1.1 and as a 5.0 client: QoS 0, 1 and 2 arrive at their QoS, a
/// retained message reaches a later subscription with RETAIN set, and a direct message to bob
/// arrives on his inbox, in 5.0 stamped with `from` and `seq`.
#[tokio::test]
async fn mqttjs_over_tcp_v311_and_v5() {
    let broker = Broker::start().await;
    let out = node("mqttjs_tcp.js", &[broker.port().to_string()]).await;
    let mut expected = Vec::new();
    for v in [4, 5] {
        for q in 0..=2 {
            expected.push(format!(
                "v{v} recv js/v{v}/live/q{q} qos={q} retain=false payload=hello qos{q}"
            ));
        }
        expected.push(format!(
            "v{v} recv js/v{v}/kept qos=1 retain=true payload=kept v{v}"
        ));
        expected.push(format!("v{v} OK"));
    }
    expected.push("v4 recv inbox/bob/dm/alice qos=1 retain=false payload=hi bob v4".into());
    // bob's inbox: seq 0 is the 3.1.1 message, 1 this one.
    expected.push(
        "v5 recv inbox/bob/dm/alice qos=1 retain=false payload=hi bob v5 from=alice seq=1 id="
            .into(),
    );
    expected.push("ALL OK".into());
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_ran("mqttjs_tcp.js", &out, &expected);
    broker.stop().await;
}

/// Creates users and groups through the admin API, as an application server would.
async fn provision(broker: &Broker, users: &[(&str, &str)], groups: &[(&str, &[&str])]) {
    let api = ApiClient::new(&broker.admin_url(), Some(broker.admin_token()));
    let requests: Vec<(&str, Value)> = users
        .iter()
        .map(|(user, password)| ("/v1/users", json!({ "user": user, "password": password })))
        .chain(
            groups
                .iter()
                .map(|(gid, members)| ("/v1/groups", json!({ "gid": gid, "members": members }))),
        )
        .collect();
    tokio::task::spawn_blocking(move || {
        for (path, body) in requests {
            api.send::<Value>(false, path, &body)
                .unwrap_or_else(|e| panic!("POST {path} {body}: {e}"));
        }
    })
    .await
    .expect("admin API thread");
}

/// The web chat in two Chromium pages over WebSocket: a wrong password is refused; alice and
/// bob log in with theirs; alice's direct message and group message appear on bob's page
/// with sender alice (and in alice's own inbox); bob's reply appears on alice's page.
#[tokio::test]
async fn web_chat_in_chromium_over_websocket() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: run scripts/setup.sh, which installs it"
    );
    let broker = Broker::start_with(|c| {
        c.listeners.ws.enabled = true;
        c.listeners.ws.listen = "127.0.0.1:0".parse().expect("literal address");
    })
    .await;
    let ws = broker.ws.expect("the WebSocket listener is enabled");
    provision(
        &broker,
        &[("alice", "alice-pw"), ("bob", "bob-pw")],
        &[("friends", &["alice", "bob"])],
    )
    .await;

    let args = [
        format!("ws://{ws}/mqtt"),
        "alice".into(),
        "alice-pw".into(),
        "bob".into(),
        "bob-pw".into(),
        "friends".into(),
    ];
    let out = node("web_chat.js", &args).await;
    let stdout = assert_ran(
        "web_chat.js",
        &out,
        &[
            "bob: error: Connection refused: Bad User Name or Password",
            "alice: logged in as alice",
            "bob: logged in as bob",
            "ALL OK",
        ],
    );
    // What the pages show: seq, sender, recipient, text, and a recall button on alice's own
    // messages (bob's inbox: the DM is seq 0, its recall entry 1, the group message 2;
    // alice's: her sent copy 0, the recall entry 1, the group message 2, bob's reply 3).
    // Then the pages empty the recalled DM: the inboxes dumped at the end say so.
    for row in [
        "step: bob's page reported it read: alice sees the receipt",
        "bob sees: 0 alice → you hello bob, from the browser",
        "bob sees: 2 alice → #friends hello friends",
        "alice sees: 0 you → bob hello bob, from the browser recall",
        "alice sees: 2 you → #friends hello friends recall",
        "alice sees: 3 bob → you hi alice, got it",
        "  0 sent alice bob: (recalled)",
        "  0 dm alice alice: (recalled)",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_end() == row),
            "no line {row:?} in the output of web_chat.js:\n{stdout}"
        );
    }
    broker.stop().await;
}
