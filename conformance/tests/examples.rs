//! The runnable examples (`examples/chat.rs`, `examples/device.rs`) against a broker inside
//! the test process: the example sources themselves are compiled in here and their `run`
//! called with the arguments a user would type, so the examples cannot rot unnoticed.
//!
//! Each test checks what the example did through the broker itself (the admin API: groups,
//! inbox logs, sessions, retained messages), not only that it returned `Ok`.

use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use tern::admin::client::{encode_segment, ApiClient, ClientError};
use tern::im::directory::ChangeError;
use tern_conformance::{Broker, EVENT_TIMEOUT};

#[allow(dead_code)] // its `main`
#[path = "../../examples/chat.rs"]
mod chat;

#[allow(dead_code)] // its `main`
#[path = "../../examples/device.rs"]
mod device;

/// A blocking admin API call, off the async threads (the broker runs on them).
async fn api<F>(broker: &Broker, call: F) -> Result<Value, ClientError>
where
    F: FnOnce(&ApiClient) -> Result<Value, ClientError> + Send + 'static,
{
    let client = ApiClient::new(&broker.admin_url(), Some(broker.admin_token()));
    tokio::task::spawn_blocking(move || call(&client))
        .await
        .expect("admin API call")
}

async fn api_get(broker: &Broker, path: &str) -> Result<Value, ClientError> {
    let path = path.to_string();
    api(broker, move |client| client.get(&path, &[])).await
}

fn chat_options(args: &[&str]) -> chat::Options {
    chat::Options::try_parse_from(std::iter::once("chat").chain(args.iter().copied()))
        .expect("chat arguments")
}

fn device_options(args: &[&str]) -> device::Options {
    device::Options::try_parse_from(std::iter::once("device").chain(args.iter().copied()))
        .expect("device arguments")
}

/// `(user, topic, payload, from, seq)` of each message, sorted.
fn rows(received: &[chat::Received]) -> Vec<(String, String, String, String, u64)> {
    let mut rows: Vec<_> = received
        .iter()
        .map(|r| {
            (
                r.user.clone(),
                r.topic.clone(),
                r.payload.clone(),
                r.from.clone(),
                r.seq,
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The six deliveries of one run, with the seqs starting at `base` for both users (alice
/// and bob each get three messages per run).
fn expected_rows(base: u64) -> Vec<(String, String, String, String, u64)> {
    let row = |user: &str, topic: &str, payload: &str, from: &str, seq: u64| {
        (
            user.to_string(),
            topic.to_string(),
            payload.to_string(),
            from.to_string(),
            base + seq,
        )
    };
    let mut rows = vec![
        // alice -> bob: bob's inbox, and alice's own "sent" copy.
        row(
            "bob",
            "inbox/bob/dm/alice",
            "hi bob, lunch at noon?",
            "alice",
            0,
        ),
        row(
            "alice",
            "inbox/alice/sent/bob",
            "hi bob, lunch at noon?",
            "alice",
            0,
        ),
        // bob -> alice.
        row(
            "alice",
            "inbox/alice/dm/bob",
            "sure, see you there",
            "bob",
            1,
        ),
        row(
            "bob",
            "inbox/bob/sent/alice",
            "sure, see you there",
            "bob",
            1,
        ),
        // alice -> the group: every member, alice included.
        row(
            "alice",
            "inbox/alice/group/friends/alice",
            "lunch at noon, anyone else?",
            "alice",
            2,
        ),
        row(
            "bob",
            "inbox/bob/group/friends/alice",
            "lunch at noon, anyone else?",
            "alice",
            2,
        ),
    ];
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_creates_the_group_and_every_message_arrives_stamped_with_its_sender() {
    let broker = Broker::start().await;
    let port = broker.port().to_string();
    let dir = broker.config.data_dir.display().to_string();
    // The admin API found the way `tern group ...` finds it: {data_dir}/admin.addr and
    // admin.token. (A TERN_ADMIN_TOKEN in the environment would win over the file.)
    let mut args = vec!["--port", &port, "--data-dir", &dir];
    let token = broker.admin_token();
    if std::env::var_os("TERN_ADMIN_TOKEN").is_some() {
        args.extend(["--token", &token]);
    }
    let summary = chat::run(chat_options(&args)).await.expect("chat runs");

    assert!(summary.group_created);
    assert_eq!(summary.group.members, ["alice", "bob"]);
    assert_eq!(rows(&summary.received), expected_rows(0));

    // The broker agrees: the group exists, and both inbox logs hold the conversation.
    let group = api_get(&broker, "/v1/groups/friends")
        .await
        .expect("group exists");
    assert_eq!(group["members"], serde_json::json!(["alice", "bob"]));
    for (user, topics) in [
        (
            "alice",
            [
                "inbox/alice/sent/bob",
                "inbox/alice/dm/bob",
                "inbox/alice/group/friends/alice",
            ],
        ),
        (
            "bob",
            [
                "inbox/bob/dm/alice",
                "inbox/bob/sent/alice",
                "inbox/bob/group/friends/alice",
            ],
        ),
    ] {
        let inbox = api_get(&broker, &format!("/v1/inbox/{user}"))
            .await
            .expect("inbox");
        let logged: Vec<(u64, String)> = inbox
            .as_array()
            .expect("inbox entries")
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().expect("seq"),
                    e["topic"].as_str().expect("topic").to_string(),
                )
            })
            .collect();
        let expected: Vec<(u64, String)> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64, t.to_string()))
            .collect();
        assert_eq!(logged, expected, "{user}'s inbox log");
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completes_an_existing_group_and_runs_again() {
    let broker = Broker::start().await;
    // Someone created the group earlier, without bob.
    let created = api(&broker, |client| {
        client.send(
            false,
            "/v1/groups",
            &serde_json::json!({ "gid": "friends", "members": ["alice", "carol"] }),
        )
    })
    .await
    .expect("create group");
    assert_eq!(created["members"], serde_json::json!(["alice", "carol"]));

    let port = broker.port().to_string();
    let (url, token) = (broker.admin_url(), broker.admin_token());
    let args = ["--port", &port, "--admin", &url, "--token", &token];
    let first = chat::run(chat_options(&args)).await.expect("first run");
    assert!(!first.group_created);
    assert_eq!(first.group.members, ["alice", "bob", "carol"]);
    assert_eq!(rows(&first.received), expected_rows(0));

    // Idempotent: a second run finds everything in place; the inbox logs go on.
    let second = chat::run(chat_options(&args)).await.expect("second run");
    assert!(!second.group_created);
    assert_eq!(second.group.members, ["alice", "bob", "carol"]);
    assert_eq!(rows(&second.received), expected_rows(3));

    let group = api_get(&broker, "/v1/groups/friends").await.expect("group");
    assert_eq!(
        group["members"],
        serde_json::json!(["alice", "bob", "carol"])
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_with_registered_users_needs_their_passwords() {
    let broker = Broker::start().await;
    for (user, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        api(&broker, move |client| {
            client.send(
                false,
                "/v1/users",
                &serde_json::json!({ "user": user, "password": password }),
            )
        })
        .await
        .expect("add user");
    }
    let port = broker.port().to_string();
    let (url, token) = (broker.admin_url(), broker.admin_token());
    let admin = ["--port", &port, "--admin", &url, "--token", &token];

    // Registered users cannot connect anonymously any more.
    let error = chat::run(chat_options(&admin))
        .await
        .expect_err("no passwords")
        .to_string();
    assert!(error.contains("bad user name or password"), "{error}");
    assert!(error.contains("-password"), "{error}");

    let mut args = admin.to_vec();
    args.extend(["--alice-password", "alice-pw", "--bob-password", "bob-pw"]);
    let summary = chat::run(chat_options(&args))
        .await
        .expect("with passwords");
    assert_eq!(rows(&summary.received), expected_rows(0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_without_a_broker_says_what_is_missing() {
    // A data directory no broker runs on.
    let empty = tempfile::tempdir().expect("temp dir");
    let dir = empty.path().display().to_string();
    let error = chat::run(chat_options(&["--data-dir", &dir, "--timeout", "5"]))
        .await
        .expect_err("no broker")
        .to_string();
    assert!(error.contains("no running broker found"), "{error}");

    // A port nobody listens on, for the admin API, then for MQTT.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let dead_url = format!("http://127.0.0.1:{dead}");
    let error = chat::run(chat_options(&[
        "--admin",
        &dead_url,
        "--token",
        "x",
        "--timeout",
        "5",
    ]))
    .await
    .expect_err("no admin API")
    .to_string();
    assert!(
        error.contains("cannot reach the broker's admin API"),
        "{error}"
    );

    let broker = Broker::start().await;
    let (url, token) = (broker.admin_url(), broker.admin_token());
    let error = chat::run(chat_options(&[
        "--port",
        &dead,
        "--admin",
        &url,
        "--token",
        &token,
        "--timeout",
        "5",
    ]))
    .await
    .expect_err("no MQTT listener")
    .to_string();
    assert!(
        error.contains(&format!("cannot talk to the broker at 127.0.0.1:{dead}")),
        "{error}"
    );
    broker.stop().await;
}

/// Waits until the broker has finished with the device's connection (its clean session is
/// gone, or no longer connected): by then any will it was going to publish is published.
async fn device_gone(broker: &Broker, client_id: &str) {
    let path = format!("/v1/sessions/{}", encode_segment(client_id));
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match api_get(broker, &path).await {
                Err(ClientError::Refused(ChangeError::NotFound(_))) => return,
                Ok(session) if session["connected"] == false => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => panic!("GET {path}: {e}"),
            }
        }
    })
    .await
    .expect("the device's connection ends");
}

/// The retained payload on `topic`, through the admin API.
async fn retained(broker: &Broker, topic: &str) -> String {
    let topic = topic.to_string();
    let message = api(broker, move |client| {
        client.get("/v1/retained/message", &[("topic", &topic)])
    })
    .await
    .expect("retained message");
    message["payload"]["data"]
        .as_str()
        .expect("utf8 payload")
        .to_string()
}

fn reading_numbers(monitored: &device::Monitored) -> Vec<u64> {
    monitored
        .readings
        .iter()
        .map(|r| r["reading"].as_u64().expect("reading number"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_publishes_acknowledged_readings_and_goes_offline_cleanly() {
    let broker = Broker::start().await;
    let port = broker.port().to_string();
    let summary = device::run(device_options(&[
        "--port",
        &port,
        "--count",
        "5",
        "--interval-ms",
        "0",
    ]))
    .await
    .expect("device runs");

    assert_eq!(summary.telemetry_acked, 5);
    assert!(!summary.crashed);
    let monitored = summary.monitor.expect("monitor ran");
    assert_eq!(monitored.retained_status, None);
    assert_eq!(reading_numbers(&monitored), [1, 2, 3, 4, 5]);
    assert_eq!(monitored.readings[0]["device"], "sensor-1");
    assert!(monitored.readings[0]["temperature_c"].is_number());
    assert_eq!(monitored.statuses, ["online", "offline"]);

    // A clean DISCONNECT: the broker discarded the will, so "offline" stays.
    device_gone(&broker, "sensor-1").await;
    assert_eq!(
        retained(&broker, "devices/sensor-1/status").await,
        "offline"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_crash_makes_the_broker_publish_the_will() {
    let broker = Broker::start().await;
    let port = broker.port().to_string();
    let crash = [
        "--port",
        &port,
        "--id",
        "meter-7",
        "--count",
        "3",
        "--interval-ms",
        "0",
        "--crash",
    ];
    let summary = device::run(device_options(&crash))
        .await
        .expect("device runs");
    assert_eq!(summary.telemetry_acked, 3);
    assert!(summary.crashed);
    let monitored = summary.monitor.expect("monitor ran");
    assert_eq!(reading_numbers(&monitored), [1, 2, 3]);
    // The monitor got the will live, from the broker, after the readings.
    assert_eq!(monitored.statuses, ["online", "lost"]);
    // And the will is retained for whoever looks later.
    assert_eq!(retained(&broker, "devices/meter-7/status").await, "lost");

    // The next run's monitor finds that retained will first.
    let summary = device::run(device_options(&crash[..8]))
        .await
        .expect("device runs again");
    let monitored = summary.monitor.expect("monitor ran");
    assert_eq!(monitored.retained_status.as_deref(), Some("lost"));
    assert_eq!(monitored.statuses, ["online", "offline"]);
    device_gone(&broker, "meter-7").await;
    assert_eq!(retained(&broker, "devices/meter-7/status").await, "offline");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_without_monitor_counts_its_pubacks() {
    let broker = Broker::start().await;
    let port = broker.port().to_string();
    let summary = device::run(device_options(&[
        "--port",
        &port,
        "--count",
        "4",
        "--interval-ms",
        "0",
        "--no-monitor",
    ]))
    .await
    .expect("device runs");
    assert_eq!(summary.telemetry_acked, 4);
    assert!(summary.monitor.is_none());
    device_gone(&broker, "sensor-1").await;
    assert_eq!(
        retained(&broker, "devices/sensor-1/status").await,
        "offline"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_without_a_broker_fails_fast() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let error = device::run(device_options(&["--port", &dead, "--timeout", "5"]))
        .await
        .expect_err("no broker")
        .to_string();
    assert!(
        error.contains(&format!("cannot talk to the broker at 127.0.0.1:{dead}")),
        "{error}"
    );
}
