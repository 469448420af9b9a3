//! The operator side: every `tern` operator command run as a process against a live broker
//! (through its admin API) and against the data directory of a stopped one, with its
//! expected output; and the admin HTTP API itself (tokens, status codes, provisioning users
//! that then log in over MQTT).
//!
//! The CLI is the `tern-test-broker` binary, which runs the same `tern::run` as `tern`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tern::admin::model::format_time;
use tern_codec::{Packet, Protocol, QoS, ReasonCode};
use tern_conformance::{connect_packet, http, Broker, RawClient};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const TERN: &str = env!("CARGO_BIN_EXE_tern-test-broker");
/// How long one CLI run may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// What a CLI run printed, and its exit code.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `tern ARGS --data-dir DIR`, with `stdin` written to its standard input.
async fn tern_with(dir: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    let mut child = Command::new(TERN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("TERN_ADMIN_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the tern CLI");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("tern {args:?} did not finish within {CLI_TIMEOUT:?}"))
        .expect("wait for the tern CLI");
    Out {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn tern(dir: &Path, args: &[&str]) -> Out {
    tern_with(dir, args, None).await
}

/// Runs a command that must succeed; returns its standard output.
async fn ok(dir: &Path, args: &[&str]) -> String {
    let out = tern(dir, args).await;
    assert_eq!(out.code, Some(0), "tern {args:?} failed: {out:?}");
    out.stdout
}

/// Runs a command with `--json`; returns the parsed output.
async fn json(dir: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let text = ok(dir, &args).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("tern {args:?}: not JSON ({e}): {text}"))
}

/// Runs a command that must fail with `code`; returns its standard error.
async fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let out = tern(dir, args).await;
    assert_eq!(out.code, Some(code), "tern {args:?}: {out:?}");
    assert!(out.stdout.is_empty(), "tern {args:?} printed: {out:?}");
    out.stderr
}

/// The data directory of a running test broker.
fn data_dir(broker: &Broker) -> PathBuf {
    broker.config.data_dir.clone()
}

/// Stops the broker cleanly; returns its data directory, kept alive by the returned guard.
async fn stop(broker: Broker) -> (PathBuf, tempfile::TempDir) {
    let dir = data_dir(&broker);
    let guard = broker
        .stop()
        .await
        .expect("the harness created the data dir");
    (dir, guard)
}

/// Starts a broker again on a stopped broker's data directory.
async fn restart(dir: &Path) -> Broker {
    Broker::start_config(tern_conformance::test_config(dir)).await
}

/// A v5 client with user name and password; returns the CONNACK code.
async fn login(broker: &Broker, protocol: Protocol, user: &str, password: &str) -> ReasonCode {
    let (_client, ack) = RawClient::open(broker.addr, protocol, "login-probe", true, |c| {
        c.username = Some(user.into());
        c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    })
    .await;
    ack.code
}

/// A connected v5 client with the given user name (no password: anonymous on loopback,
/// or a registered user when `password` is given).
async fn client(
    broker: &Broker,
    client_id: &str,
    clean_start: bool,
    user: Option<(&str, Option<&str>)>,
    adjust: impl FnOnce(&mut tern_codec::Connect),
) -> RawClient {
    RawClient::open_ok(broker.addr, Protocol::V5, client_id, clean_start, |c| {
        if let Some((name, password)) = user {
            c.username = Some(name.into());
            c.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
        }
        adjust(c);
    })
    .await
    .0
}

// ---------------------------------------------------------------------------------------
// retained
// ---------------------------------------------------------------------------------------

const RETAINED_LIST: &str = "\
TOPIC           QOS  BYTES  EXPIRES (UTC)  PAYLOAD
big             1    100    never          xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...
sensors/1/temp  1    4      never          21.5
sensors/2/temp  1    4      never          19.0
status/door     1    3      never          base64:/wAB
";

const RETAINED_SENSORS: &str = "\
TOPIC           QOS  BYTES  EXPIRES (UTC)  PAYLOAD
sensors/1/temp  1    4      never          21.5
sensors/2/temp  1    4      never          19.0
";

const RETAINED_GET: &str = "\
topic    sensors/1/temp
qos      1
bytes    4
expires  never
payload  21.5
";

const RETAINED_STATS: &str = "\
retained messages  4
payload bytes      111

LARGEST TOPICS  BYTES
big             100
sensors/1/temp  4
";

/// The retained commands give the same answers live and offline.
async fn check_retained_reads(dir: &Path) {
    assert_eq!(ok(dir, &["retained", "list"]).await, RETAINED_LIST);
    assert_eq!(
        ok(dir, &["retained", "list", "sensors/+/temp"]).await,
        RETAINED_SENSORS
    );
    assert_eq!(
        ok(dir, &["retained", "list", "nothing/#"]).await,
        "no retained messages match nothing/#\n"
    );
    assert_eq!(
        ok(dir, &["retained", "get", "sensors/1/temp"]).await,
        RETAINED_GET
    );
    assert_eq!(
        ok(dir, &["retained", "stats", "--top", "2"]).await,
        RETAINED_STATS
    );
    let list = json(dir, &["retained", "list"]).await;
    assert_eq!(list.as_array().map(Vec::len), Some(4), "{list}");
    assert_eq!(
        list[3],
        json!({
            "topic": "status/door", "qos": 1, "bytes": 3, "expires_at_ms": null,
            "payload": { "encoding": "base64", "data": "/wAB", "truncated": false }
        })
    );
    assert_eq!(list[0]["payload"]["truncated"], json!(true));
    let big = json(dir, &["retained", "get", "big"]).await;
    assert_eq!(big["payload"]["data"], json!("x".repeat(100)));
    assert_eq!(big["payload"]["truncated"], json!(false));
    let stats = json(dir, &["retained", "stats"]).await;
    assert_eq!(stats["count"], json!(4));
    assert_eq!(stats["bytes"], json!(111));
    assert_eq!(stats["largest"][0], json!({ "topic": "big", "bytes": 100 }));
    let err = fails(dir, &["retained", "get", "nope"], 1).await;
    assert_eq!(err, "tern: no retained message on \"nope\"\n");
    let err = fails(dir, &["retained", "list", "a/#/b"], 2).await;
    assert!(err.contains("a/#/b"), "{err}");
}

#[tokio::test]
async fn retained_commands_live_and_offline() {
    let broker = Broker::start().await;
    let dir = data_dir(&broker);
    let mut publisher = client(&broker, "publisher", true, None, |_| {}).await;
    for (i, (topic, payload)) in [
        ("sensors/1/temp", b"21.5".to_vec()),
        ("sensors/2/temp", b"19.0".to_vec()),
        ("status/door", vec![0xff, 0x00, 0x01]),
        ("big", vec![b'x'; 100]),
    ]
    .into_iter()
    .enumerate()
    {
        publisher
            .publish_qos1(i as u16 + 1, topic, payload, true)
            .await;
    }

    check_retained_reads(&dir).await;

    // Deleting through the broker: gone from the router's tree too, so a new subscriber
    // gets the next live message first, not the deleted retained one.
    assert_eq!(
        ok(&dir, &["retained", "delete", "status/door"]).await,
        "deleted the retained message on status/door\n"
    );
    let mut watcher = client(&broker, "watcher", true, None, |_| {}).await;
    watcher.subscribe(1, "status/door", QoS::AtLeastOnce).await;
    publisher
        .publish_qos1(9, "status/door", b"live".to_vec(), false)
        .await;
    let first = watcher.expect_publish("the live message").await;
    assert_eq!(&first.payload[..], b"live");
    assert!(!first.retain);
    let err = fails(&dir, &["retained", "delete", "status/door"], 1).await;
    assert_eq!(err, "tern: no retained message on \"status/door\"\n");
    // Put it back for the offline half.
    publisher
        .publish_qos1(10, "status/door", vec![0xff, 0x00, 0x01], true)
        .await;
    drop((publisher, watcher));

    let (dir, _guard) = stop(broker).await;
    check_retained_reads(&dir).await;
    assert_eq!(
        ok(&dir, &["retained", "delete", "big"]).await,
        "deleted the retained message on big\n"
    );
    fails(&dir, &["retained", "delete", "big"], 1).await;
    let broker = restart(&dir).await;
    let topics: Vec<Value> = json(&dir, &["retained", "list"])
        .await
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["topic"].clone())
        .collect();
    assert_eq!(
        topics,
        vec![
            json!("sensors/1/temp"),
            json!("sensors/2/temp"),
            json!("status/door")
        ]
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// sessions and queues
// ---------------------------------------------------------------------------------------

const SESSIONS_LIVE: &str = "\
CLIENT ID  USER    CONNECTED  PERSISTENT  PROTOCOL  SUBSCRIPTIONS  QUEUED  QUEUED BYTES  IN FLIGHT
laptop     laptop  yes        no          3.1.1     1              0       0             0
phone      alice   no         yes         5.0       2              2       11            0
";

const SESSIONS_OFFLINE: &str = "\
CLIENT ID  USER   CONNECTED  PERSISTENT  PROTOCOL  SUBSCRIPTIONS  QUEUED  QUEUED BYTES  IN FLIGHT
phone      alice  no         yes         5.0       2              2       11            0
";

const SESSION_PHONE: &str = "\
client id       phone
user            alice
connected       no
persistent      yes
protocol        MQTT 5.0
session expiry  3600 s
queued          2 messages, 11 bytes
in flight       0

SUBSCRIPTION  QOS
chat/#        1
news          0
";

async fn check_phone(dir: &Path) {
    assert_eq!(ok(dir, &["sessions", "show", "phone"]).await, SESSION_PHONE);
    let peek = ok(dir, &["queue", "peek", "phone"]).await;
    let seqs: Vec<u64> = json(dir, &["queue", "peek", "phone"]).await["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs.len(), 2);
    assert_eq!(
        peek,
        format!(
            "phone: 2 queued, 11 bytes\n\n\
             SEQ  TOPIC   QOS  STATE    BYTES  PAYLOAD\n\
             {:<3}  chat/1  1    pending  5      hello\n\
             {:<3}  chat/2  1    pending  6      world!\n",
            seqs[0], seqs[1]
        )
    );
    let one = json(dir, &["queue", "peek", "phone", "-n", "1"]).await;
    assert_eq!(one["queued"], json!(2));
    assert_eq!(one["queued_bytes"], json!(11));
    assert_eq!(
        one["entries"],
        json!([{
            "seq": seqs[0], "topic": "chat/1", "qos": 1, "state": "pending", "bytes": 5,
            "payload": { "encoding": "utf8", "data": "hello", "truncated": false },
            "message_deleted": false
        }])
    );
    let err = fails(dir, &["sessions", "show", "tablet"], 1).await;
    assert_eq!(err, "tern: no session with client id \"tablet\"\n");
    fails(dir, &["queue", "peek", "tablet"], 1).await;
}

#[tokio::test]
async fn session_and_queue_commands_live_and_offline() {
    let broker = Broker::start().await;
    let dir = data_dir(&broker);
    // A persistent v5 session of user alice, offline, with two subscriptions.
    let mut phone = client(&broker, "phone", false, Some(("alice", None)), |c| {
        c.properties.session_expiry_interval = Some(3600);
    })
    .await;
    phone.subscribe(1, "chat/#", QoS::AtLeastOnce).await;
    phone.subscribe(2, "news", QoS::AtMostOnce).await;
    phone.disconnect().await;
    // Two messages queued for it while it is away.
    let mut sender = client(&broker, "sender", true, None, |_| {}).await;
    sender
        .publish_qos1(1, "chat/1", b"hello".to_vec(), false)
        .await;
    sender
        .publish_qos1(2, "chat/2", b"world!".to_vec(), false)
        .await;
    sender.disconnect().await;
    // A connected 3.1.1 clean session.
    let (mut laptop, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "laptop", true, |_| {}).await;
    laptop.subscribe(1, "a/b", QoS::AtMostOnce).await;

    assert_eq!(ok(&dir, &["sessions", "list"]).await, SESSIONS_LIVE);
    let laptop_json = json(&dir, &["sessions", "show", "laptop"]).await;
    assert_eq!(
        laptop_json,
        json!({
            "client_id": "laptop", "user": "laptop", "connected": true, "persistent": false,
            "protocol_level": 4, "expiry_secs": 0,
            "subscriptions": [{ "filter": "a/b", "qos": 0 }],
            "queued": 0, "queued_bytes": 0, "in_flight": 0
        })
    );
    check_phone(&dir).await;
    let live_json = json(&dir, &["sessions", "show", "phone"]).await;
    drop(laptop);

    let (dir, _guard) = stop(broker).await;
    assert_eq!(ok(&dir, &["sessions", "list"]).await, SESSIONS_OFFLINE);
    check_phone(&dir).await;
    assert_eq!(json(&dir, &["sessions", "show", "phone"]).await, live_json);
}

// ---------------------------------------------------------------------------------------
// users
// ---------------------------------------------------------------------------------------

/// `tern user list` as it must look for these users (times from `--json`).
async fn expected_user_list(dir: &Path) -> String {
    let users = json(dir, &["user", "list"]).await;
    let users = users.as_array().expect("array");
    let rows: Vec<(String, String, String)> = users
        .iter()
        .map(|u| {
            assert_eq!(
                u.as_object().map(|o| o.len()),
                Some(3),
                "user, operator, created_at_ms and nothing else (no hash): {u}"
            );
            (
                u["user"].as_str().expect("user").to_string(),
                if u["operator"] == json!(true) {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
                format_time(u["created_at_ms"].as_u64().expect("created")),
            )
        })
        .collect();
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
    let mut out = format!("{:<width$}  OPERATOR  CREATED (UTC)\n", "USER");
    for (user, op, created) in rows {
        out.push_str(&format!("{user:<width$}  {op:<8}  {created}\n"));
    }
    out
}

#[tokio::test]
async fn user_commands_live_and_offline() {
    let broker = Broker::start().await;
    let dir = data_dir(&broker);
    assert_eq!(ok(&dir, &["user", "list"]).await, "no users\n");
    assert_eq!(
        ok(&dir, &["user", "add", "alice", "--password", "pw1"]).await,
        "added user alice\n"
    );
    // The password from standard input, for scripts.
    let out = tern_with(
        &dir,
        &["user", "add", "ops", "--operator"],
        Some("s3cret\n"),
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "added user ops (operator)\n");
    let out = tern_with(&dir, &["user", "add", "nopw"], Some("")).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("no password"), "{out:?}");

    let err = fails(&dir, &["user", "add", "alice", "--password", "x"], 1).await;
    assert_eq!(err, "tern: user alice already exists\n");
    let err = fails(&dir, &["user", "add", "a/b", "--password", "x"], 2).await;
    assert!(err.contains("\"a/b\" is not usable"), "{err}");
    let err = fails(&dir, &["user", "del", "zed"], 1).await;
    assert_eq!(err, "tern: no user zed\n");

    let list = ok(&dir, &["user", "list"]).await;
    assert_eq!(list, expected_user_list(&dir).await);
    assert!(
        list.starts_with("USER   OPERATOR  CREATED (UTC)\nalice  no        "),
        "{list}"
    );
    let ops = json(&dir, &["user", "list"]).await;
    assert_eq!(ops[1]["user"], json!("ops"));
    assert_eq!(ops[1]["operator"], json!(true));

    assert_eq!(
        ok(&dir, &["user", "passwd", "alice", "--password", "pw2"]).await,
        "changed the password of alice\n"
    );
    assert_eq!(
        login(&broker, Protocol::V5, "alice", "pw2").await,
        ReasonCode::Success
    );
    assert_eq!(
        login(&broker, Protocol::V5, "alice", "pw1").await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(
        ok(&dir, &["user", "del", "ops"]).await,
        "deleted user ops\n"
    );
    assert_eq!(
        json(&dir, &["user", "del", "alice"]).await,
        json!({ "deleted": "alice" })
    );
    ok(&dir, &["user", "add", "alice", "--password", "pw3"]).await;

    let (dir, _guard) = stop(broker).await;
    let list = ok(&dir, &["user", "list"]).await;
    assert_eq!(list, expected_user_list(&dir).await);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert_eq!(
        ok(&dir, &["user", "add", "bob", "--password", "bobpw"]).await,
        "added user bob\n"
    );
    let out = tern_with(&dir, &["user", "passwd", "alice"], Some("pw4\r\n")).await;
    assert_eq!(out.stdout, "changed the password of alice\n", "{out:?}");
    let err = fails(&dir, &["user", "add", "bob", "--password", "x"], 1).await;
    assert_eq!(err, "tern: user bob already exists\n");
    assert_eq!(
        ok(&dir, &["user", "del", "bob"]).await,
        "deleted user bob\n"
    );
    fails(&dir, &["user", "del", "bob"], 1).await;
    ok(
        &dir,
        &[
            "user",
            "add",
            "carol",
            "--password",
            "carolpw",
            "--operator",
        ],
    )
    .await;

    // What the CLI wrote offline is what the broker checks logins against.
    let broker = restart(&dir).await;
    assert_eq!(
        login(&broker, Protocol::V5, "alice", "pw4").await,
        ReasonCode::Success
    );
    assert_eq!(
        login(&broker, Protocol::V5, "carol", "carolpw").await,
        ReasonCode::Success
    );
    assert_eq!(
        login(&broker, Protocol::V311, "carol", "wrong").await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(
        ok(&dir, &["user", "list"]).await,
        expected_user_list(&dir).await
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// groups
// ---------------------------------------------------------------------------------------

/// `tern group show g1` for these members (created time from `--json`).
async fn expected_group(dir: &Path, members: &[&str]) -> String {
    let g = json(dir, &["group", "show", "g1"]).await;
    assert_eq!(g["members"], json!(members));
    let mut out = format!(
        "group    g1\ncreated  {} UTC\nmembers  {}\n",
        format_time(g["created_at_ms"].as_u64().expect("created")),
        members.len()
    );
    for m in members {
        out.push_str(&format!("  {m}\n"));
    }
    out
}

#[tokio::test]
async fn group_commands_live_and_offline() {
    let broker = Broker::start().await;
    let dir = data_dir(&broker);
    assert_eq!(ok(&dir, &["group", "list"]).await, "no groups\n");
    assert_eq!(
        ok(&dir, &["group", "create", "g1", "bob", "alice"]).await,
        "created group g1 with 2 members: alice, bob\n"
    );
    assert_eq!(
        ok(&dir, &["group", "add", "g1", "carol"]).await,
        "added carol to g1 (3 members)\n"
    );
    assert_eq!(
        ok(&dir, &["group", "remove", "g1", "bob"]).await,
        "removed bob from g1 (2 members)\n"
    );
    assert_eq!(
        ok(&dir, &["group", "create", "g2"]).await,
        "created group g2 (no members)\n"
    );
    let err = fails(&dir, &["group", "create", "g1"], 1).await;
    assert_eq!(err, "tern: group g1 already exists\n");
    let err = fails(&dir, &["group", "remove", "g1", "zed"], 1).await;
    assert_eq!(err, "tern: zed is not in g1\n");
    let err = fails(&dir, &["group", "add", "g1", "carol"], 1).await;
    assert_eq!(err, "tern: carol is already in g1\n");
    let err = fails(&dir, &["group", "show", "g9"], 1).await;
    assert_eq!(err, "tern: no group g9\n");
    fails(&dir, &["group", "create", "a+b"], 2).await;
    assert_eq!(
        ok(&dir, &["group", "show", "g1"]).await,
        expected_group(&dir, &["alice", "carol"]).await
    );
    let list = ok(&dir, &["group", "list"]).await;
    let groups = json(&dir, &["group", "list"]).await;
    let created = |i: usize| format_time(groups[i]["created_at_ms"].as_u64().expect("created"));
    assert_eq!(
        list,
        format!(
            "GROUP  MEMBERS  CREATED (UTC)\ng1     2        {}\ng2     0        {}\n",
            created(0),
            created(1)
        )
    );
    assert_eq!(
        ok(&dir, &["group", "delete", "g2"]).await,
        "deleted group g2\n"
    );
    fails(&dir, &["group", "delete", "g2"], 1).await;

    // The router's group table changed, not only storage: a group message reaches carol.
    let mut carol = client(&broker, "carol-phone", true, Some(("carol", None)), |_| {}).await;
    carol.subscribe(1, "inbox/carol/#", QoS::AtLeastOnce).await;
    let mut alice = client(&broker, "alice-phone", true, Some(("alice", None)), |_| {}).await;
    alice
        .publish_qos1(1, "group/g1", b"hi all".to_vec(), false)
        .await;
    let got = carol.expect_publish("the group message").await;
    assert_eq!(&*got.topic, "inbox/carol/group/g1/alice");
    drop((alice, carol));

    let (dir, _guard) = stop(broker).await;
    assert_eq!(
        ok(&dir, &["group", "show", "g1"]).await,
        expected_group(&dir, &["alice", "carol"]).await
    );
    assert_eq!(
        ok(&dir, &["group", "add", "g1", "dave"]).await,
        "added dave to g1 (3 members)\n"
    );
    assert_eq!(
        ok(&dir, &["group", "remove", "g1", "alice"]).await,
        "removed alice from g1 (2 members)\n"
    );
    assert_eq!(
        ok(&dir, &["group", "create", "g3", "erin"]).await,
        "created group g3 with 1 member: erin\n"
    );
    assert_eq!(
        ok(&dir, &["group", "delete", "g3"]).await,
        "deleted group g3\n"
    );
    let err = fails(&dir, &["group", "add", "g1", "dave"], 1).await;
    assert_eq!(err, "tern: dave is already in g1\n");

    let broker = restart(&dir).await;
    assert_eq!(
        ok(&dir, &["group", "show", "g1"]).await,
        expected_group(&dir, &["carol", "dave"]).await
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// inbox
// ---------------------------------------------------------------------------------------

/// `tern inbox tail USER` for the entries of `--json` (times from there).
async fn expected_inbox(dir: &Path, user: &str, extra: &[&str]) -> String {
    let mut args = vec!["inbox", "tail", user];
    args.extend_from_slice(extra);
    let entries = json(dir, &args).await;
    let rows: Vec<[String; 7]> = entries
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            [
                e["seq"].to_string(),
                format_time(e["sent_at_ms"].as_u64().expect("sent")),
                e["role"].as_str().expect("role").to_string(),
                e["from"].as_str().expect("from").to_string(),
                e["topic"].as_str().expect("topic").to_string(),
                e["bytes"].to_string(),
                e["payload"]["data"].as_str().expect("payload").to_string(),
            ]
        })
        .collect();
    let header = [
        "SEQ",
        "SENT (UTC)",
        "ROLE",
        "FROM",
        "TOPIC",
        "BYTES",
        "PAYLOAD",
    ];
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 6 {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        format!("{}\n", l.trim_end())
    };
    let mut out = line(header.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

async fn check_inbox(dir: &Path) {
    let bob = json(dir, &["inbox", "tail", "bob"]).await;
    let bob = bob.as_array().expect("array");
    assert_eq!(bob.len(), 2, "{bob:?}");
    assert_eq!(bob[0]["role"], json!("received"));
    assert_eq!(bob[0]["from"], json!("alice"));
    assert_eq!(bob[0]["topic"], json!("inbox/bob/dm/alice"));
    assert_eq!(bob[0]["payload"]["data"], json!("hi bob"));
    assert_eq!(bob[1]["topic"], json!("inbox/bob/group/g1/alice"));
    let seq = bob[1]["seq"].as_u64().expect("seq");
    assert_eq!(bob[0]["seq"].as_u64(), Some(seq - 1));
    let alice = json(dir, &["inbox", "tail", "alice"]).await;
    assert_eq!(alice[0]["role"], json!("sent"));
    assert_eq!(alice[0]["topic"], json!("inbox/alice/sent/bob"));

    let table = ok(dir, &["inbox", "tail", "bob"]).await;
    assert_eq!(table, expected_inbox(dir, "bob", &[]).await);
    assert!(
        table.contains("received  alice  inbox/bob/dm/alice"),
        "{table}"
    );
    let last = ok(dir, &["inbox", "tail", "bob", "-n", "1"]).await;
    assert_eq!(last, expected_inbox(dir, "bob", &["-n", "1"]).await);
    assert_eq!(last.lines().count(), 2, "{last}");
    assert!(last.contains("group/g1"), "{last}");
    assert_eq!(
        ok(dir, &["inbox", "tail", "carol"]).await,
        "the inbox of carol is empty\n"
    );
    let err = fails(dir, &["inbox", "tail", "nobody"], 1).await;
    assert_eq!(err, "tern: no user nobody\n");
}

#[tokio::test]
async fn inbox_tail_live_and_offline() {
    let broker = Broker::start().await;
    let dir = data_dir(&broker);
    for user in ["alice", "bob", "carol"] {
        ok(&dir, &["user", "add", user, "--password", "pw"]).await;
    }
    ok(&dir, &["group", "create", "g1", "alice", "bob"]).await;
    let mut alice = client(
        &broker,
        "alice-1",
        true,
        Some(("alice", Some("pw"))),
        |_| {},
    )
    .await;
    alice
        .publish_qos1(1, "dm/bob", b"hi bob".to_vec(), false)
        .await;
    alice
        .publish_qos1(2, "group/g1", b"hi group".to_vec(), false)
        .await;
    drop(alice);

    check_inbox(&dir).await;
    let (dir, _guard) = stop(broker).await;
    check_inbox(&dir).await;
}

// ---------------------------------------------------------------------------------------
// choosing live or offline, and clear errors
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_files_come_and_go_with_the_broker() {
    let broker = Broker::start().await;
    let dir = data_dir(&broker);
    let addr = std::fs::read_to_string(dir.join("admin.addr")).expect("admin.addr");
    assert_eq!(addr.trim(), broker.admin.expect("admin API").to_string());
    let token = broker.admin_token();
    assert_eq!(token.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("admin.token"))
            .expect("admin.token")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "admin.token is private");
    }
    let (dir, _guard) = stop(broker).await;
    assert!(!dir.join("admin.addr").exists());
    assert!(!dir.join("admin.token").exists());

    // A broker killed without cleaning up leaves admin.addr behind; nobody answers there,
    // and the CLI uses the data directory.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    std::fs::write(dir.join("admin.addr"), format!("{dead}\n")).expect("stale admin.addr");
    assert_eq!(ok(&dir, &["user", "list"]).await, "no users\n");
    assert_eq!(
        ok(&dir, &["user", "add", "x", "--password", "y"]).await,
        "added user x\n"
    );
}

#[tokio::test]
async fn clear_errors_for_unreachable_locked_and_missing() {
    // --admin pointing at nothing.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let nowhere = tempfile::tempdir().expect("temp dir");
    let url = format!("http://{dead}");
    let err = fails(nowhere.path(), &["user", "list", "--admin", &url], 1).await;
    assert!(
        err.contains(&format!("cannot reach the broker's admin API at {url}"))
            && err.contains("is the broker running?"),
        "{err}"
    );

    // No data directory, or one without a database.
    let missing = nowhere.path().join("missing");
    let err = fails(&missing, &["user", "list"], 1).await;
    assert!(err.contains("no data directory"), "{err}");
    let err = fails(nowhere.path(), &["user", "add", "a", "--password", "b"], 1).await;
    assert!(err.contains("holds no tern database"), "{err}");
    assert!(!nowhere.path().join("CURRENT").exists(), "nothing created");

    // A running broker without an admin API: inspection reads the directory, changes are
    // refused instead of written underneath it.
    let broker = Broker::start_with(|c| c.admin.enabled = false).await;
    let dir = data_dir(&broker);
    assert_eq!(broker.admin, None);
    assert!(!dir.join("admin.addr").exists());
    assert_eq!(ok(&dir, &["sessions", "list"]).await, "no sessions\n");
    let err = fails(&dir, &["user", "add", "a", "--password", "b"], 1).await;
    assert!(
        err.contains("is locked: a broker is running on it, but its admin API does not answer"),
        "{err}"
    );
    broker.stop().await;

    // Usage errors are exit code 2; help works everywhere.
    fails(nowhere.path(), &["user"], 2).await;
    fails(nowhere.path(), &["retained", "list", "--top", "3"], 2).await;
    for args in [
        &["--help"][..],
        &["retained", "--help"],
        &["user", "add", "--help"],
        &["group", "create", "--help"],
        &["queue", "peek", "--help"],
        &["inbox", "tail", "--help"],
        &["sessions", "show", "--help"],
    ] {
        let help = ok(nowhere.path(), args).await;
        assert!(help.contains("Usage:"), "{args:?}: {help}");
        assert!(
            help.contains("--json") || args == ["--help"],
            "{args:?}: {help}"
        );
    }
    let help = ok(nowhere.path(), &["user", "add", "--help"]).await;
    assert!(help.contains("standard input"), "{help}");
}

#[tokio::test]
async fn configured_token_is_needed_and_never_written() {
    let broker = Broker::start_with(|c| c.admin.token = "configured-secret".to_string()).await;
    let dir = data_dir(&broker);
    assert!(!dir.join("admin.token").exists());
    let err = fails(&dir, &["user", "list"], 1).await;
    assert!(err.contains("refused the token"), "{err}");
    let err = fails(&dir, &["user", "list", "--token", "wrong"], 1).await;
    assert!(err.contains("wrong admin token"), "{err}");
    assert_eq!(
        ok(&dir, &["user", "list", "--token", "configured-secret"]).await,
        "no users\n"
    );
    let out = Command::new(TERN)
        .args(["user", "list", "--data-dir"])
        .arg(&dir)
        .env("TERN_ADMIN_TOKEN", "configured-secret")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run tern");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // A config file with the token, as `serve` reads it.
    let config = dir.join("tern.toml");
    std::fs::write(&config, "[admin]\ntoken = \"configured-secret\"\n").expect("config");
    let config = config.to_str().expect("utf-8 path");
    assert_eq!(
        ok(&dir, &["user", "list", "--config", config]).await,
        "no users\n"
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// the admin HTTP API
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_api_refuses_missing_or_wrong_tokens() {
    let broker = Broker::start().await;
    let base = broker.admin_url();
    let token = broker.admin_token();

    let (status, body) = http("GET", format!("{base}/v1/health"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], json!("ok"));

    for path in [
        "/v1/users",
        "/v1/groups",
        "/v1/sessions",
        "/v1/retained",
        "/v1/retained/stats",
        "/v1/inbox/alice",
    ] {
        let (status, body) = http("GET", format!("{base}{path}"), None, None).await;
        assert_eq!(status, 401, "{path} without a token");
        assert!(
            body["error"]
                .as_str()
                .expect("error")
                .contains("missing admin token"),
            "{body}"
        );
        let (status, body) = http("GET", format!("{base}{path}"), Some("wrong".into()), None).await;
        assert_eq!(status, 401, "{path} with a wrong token");
        assert!(
            body["error"]
                .as_str()
                .expect("error")
                .contains("wrong admin token"),
            "{body}"
        );
        let (status, _) = http("GET", format!("{base}{path}"), Some(token.clone()), None).await;
        assert!(
            status == 200 || status == 404,
            "{path} with the token: {status}"
        );
    }
    // Changes too; nothing was created by the refused request.
    let (status, _) = http(
        "POST",
        format!("{base}/v1/users"),
        Some(format!("{token}x")),
        Some(json!({ "user": "eve", "password": "pw" })),
    )
    .await;
    assert_eq!(status, 401);
    let (status, users) = http("GET", format!("{base}/v1/users"), Some(token), None).await;
    assert_eq!((status, users), (200, json!([])));
    broker.stop().await;
}

#[tokio::test]
async fn admin_api_provisions_users_that_log_in() {
    let broker = Broker::start().await;
    let base = broker.admin_url();
    let t = || Some(broker.admin_token());

    let (status, body) = http(
        "POST",
        format!("{base}/v1/users"),
        t(),
        Some(json!({ "user": "dana", "password": "s3cret" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"], json!("dana"));
    assert_eq!(body["operator"], json!(false));
    assert!(body.get("password_hash").is_none(), "{body}");

    // Durable and in force at once: the login works with the password and only with it.
    assert_eq!(
        login(&broker, Protocol::V5, "dana", "s3cret").await,
        ReasonCode::Success
    );
    assert_eq!(
        login(&broker, Protocol::V5, "dana", "wrong").await,
        ReasonCode::BadUserNameOrPassword
    );
    let mut raw = RawClient::connect(broker.addr, Protocol::V311).await;
    let mut connect = connect_packet(Protocol::V311, "dana-311", true);
    connect.username = Some("dana".into());
    connect.password = Some(Bytes::from_static(b"wrong"));
    let ack = raw.handshake(connect).await;
    assert_eq!(
        ack.code.to_v3_connack(),
        0x04,
        "3.1.1: bad user name or password"
    );

    let cases: Vec<(&'static str, String, Option<Value>, u16)> = vec![
        (
            "POST",
            "/v1/users".into(),
            Some(json!({ "user": "dana", "password": "x" })),
            409,
        ),
        (
            "POST",
            "/v1/users".into(),
            Some(json!({ "user": "a/b", "password": "x" })),
            400,
        ),
        (
            "POST",
            "/v1/users".into(),
            Some(json!({ "user": "x", "password": "" })),
            400,
        ),
        (
            "POST",
            "/v1/users".into(),
            Some(json!({ "name": "x" })),
            400,
        ),
        ("GET", "/v1/users/dana".into(), None, 200),
        ("GET", "/v1/users/nobody".into(), None, 404),
        ("DELETE", "/v1/users/nobody".into(), None, 404),
        (
            "PUT",
            "/v1/users/nobody/password".into(),
            Some(json!({ "password": "x" })),
            404,
        ),
        (
            "PUT",
            "/v1/users/dana/password".into(),
            Some(json!({ "password": "new" })),
            200,
        ),
        (
            "POST",
            "/v1/groups".into(),
            Some(json!({ "gid": "team", "members": ["dana"] })),
            201,
        ),
        (
            "POST",
            "/v1/groups".into(),
            Some(json!({ "gid": "team" })),
            409,
        ),
        ("PUT", "/v1/groups/team/members/erin".into(), None, 200),
        ("PUT", "/v1/groups/team/members/erin".into(), None, 409),
        ("PUT", "/v1/groups/nope/members/erin".into(), None, 404),
        ("DELETE", "/v1/groups/team/members/zed".into(), None, 404),
        ("GET", "/v1/groups/team".into(), None, 200),
        ("GET", "/v1/sessions/nobody".into(), None, 404),
        ("GET", "/v1/sessions/nobody/queue".into(), None, 404),
        ("GET", "/v1/retained/message?topic=none".into(), None, 404),
        (
            "DELETE",
            "/v1/retained/message?topic=none".into(),
            None,
            404,
        ),
        ("GET", "/v1/retained/message".into(), None, 400),
        ("GET", "/v1/retained?filter=a/%23/b".into(), None, 400),
        ("GET", "/v1/inbox/nobody".into(), None, 404),
        ("GET", "/v1/nothing-here".into(), None, 404),
        ("PATCH", "/v1/users".into(), None, 405),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = http(method, format!("{base}{path}"), t(), body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        if expected >= 400 {
            assert!(answer["error"].is_string(), "{method} {path}: {answer}");
        }
    }
    assert_eq!(
        login(&broker, Protocol::V5, "dana", "new").await,
        ReasonCode::Success
    );
    let (_, team) = http("GET", format!("{base}/v1/groups/team"), t(), None).await;
    assert_eq!(team["members"], json!(["dana", "erin"]));
    let (status, gone) = http("DELETE", format!("{base}/v1/users/dana"), t(), None).await;
    assert_eq!((status, gone), (200, json!({ "deleted": "dana" })));
    assert_eq!(
        login(&broker, Protocol::V5, "dana", "new").await,
        ReasonCode::BadUserNameOrPassword
    );
    broker.stop().await;
}

/// A client id with characters that need escaping in a URL path.
#[tokio::test]
async fn odd_client_ids_reach_their_session() {
    let broker = Broker::start().await;
    let dir = data_dir(&broker);
    let id = "dev/1 ü%";
    let mut odd = client(&broker, id, true, None, |_| {}).await;
    odd.subscribe(1, "x", QoS::AtMostOnce).await;
    let shown = json(&dir, &["sessions", "show", id]).await;
    assert_eq!(shown["client_id"], json!(id));
    assert_eq!(shown["connected"], json!(true));
    let peek = json(&dir, &["queue", "peek", id]).await;
    assert_eq!(peek["queued"], json!(0));
    broker.stop().await;
}

#[tokio::test]
async fn deleting_a_user_closes_its_live_connections() {
    let broker = Broker::start().await;
    let base = broker.admin_url();
    let t = || Some(broker.admin_token());
    let (status, body) = http(
        "POST",
        format!("{base}/v1/users"),
        t(),
        Some(json!({ "user": "erin", "password": "pw" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mut phone = client(
        &broker,
        "erin-phone",
        true,
        Some(("erin", Some("pw"))),
        |_| {},
    )
    .await;

    let (status, body) = http("DELETE", format!("{base}/v1/users/erin"), t(), None).await;
    assert_eq!(status, 200, "{body}");
    match phone.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::NotAuthorized);
            let why = d.properties.reason_string.clone().expect("reason string");
            assert!(why.contains("deleted"), "{why}");
        }
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert_eq!(
        login(&broker, Protocol::V5, "erin", "pw").await,
        ReasonCode::BadUserNameOrPassword
    );
}

#[tokio::test]
async fn init_makes_a_directory_users_can_be_added_to_before_the_first_start() {
    let parent = tempfile::tempdir().expect("dir");
    let dir = parent.path().join("data");
    // Before init, offline commands refuse a directory without a database.
    fails(&dir, &["user", "add", "--password", "pw", "alice"], 1).await;
    let first = json(&dir, &["init"]).await;
    assert_eq!(first["key_created"], true, "{first}");
    let key = std::fs::read_to_string(dir.join("admin.key")).expect("admin.key");
    let key = key.trim().to_string();
    assert_eq!(key.len(), 64);
    // Again: the same token is kept.
    let again = json(&dir, &["init"]).await;
    assert_eq!(again["key_created"], false, "{again}");
    assert_eq!(
        std::fs::read_to_string(dir.join("admin.key"))
            .expect("admin.key")
            .trim(),
        key
    );
    ok(&dir, &["user", "add", "--password", "alice-pw", "alice"]).await;

    // The broker serves with that token, and alice logs in.
    let broker = restart(&dir).await;
    assert_eq!(
        broker.admin_token(),
        key,
        "admin.token holds the lasting key"
    );
    let (status, users) = http(
        "GET",
        format!("{}/v1/users", broker.admin_url()),
        Some(key.clone()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{users}");
    assert_eq!(
        login(&broker, Protocol::V5, "alice", "alice-pw").await,
        ReasonCode::Success
    );
    // init on a running broker's directory is refused, and changes nothing.
    let err = fails(&dir, &["init"], 1).await;
    assert!(err.contains("running"), "{err}");
    broker.stop().await;
    assert_eq!(
        std::fs::read_to_string(dir.join("admin.key"))
            .expect("admin.key kept")
            .trim(),
        key
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_every_message_acknowledged_before_it() {
    let broker = Broker::start().await;
    let dir = data_dir(&broker);
    let addr = broker.addr;
    // Alice sends DMs to bob (offline: they wait in his inbox) one after the other, each
    // acknowledged before the next, until told to stop; the count acknowledged is shared.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let sender = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let (mut alice, _) = RawClient::open_ok(addr, Protocol::V5, "alice-1", true, |c| {
                c.username = Some("alice".into());
            })
            .await;
            let mut n: u64 = 0;
            while !*stop_rx.borrow_and_update() {
                let packet_id = u16::try_from(n % 60_000).expect("fits") + 1;
                let reason = tern_conformance::chat::publish(
                    &mut alice,
                    packet_id,
                    "dm/bob",
                    &format!("m{n}"),
                    &[],
                )
                .await;
                assert_eq!(reason, ReasonCode::Success);
                n += 1;
                acked.store(n, std::sync::atomic::Ordering::SeqCst);
            }
            n
        })
    };
    tern_conformance::eventually("a first hundred DMs acknowledged", || {
        let acked = acked.clone();
        async move { acked.load(std::sync::atomic::Ordering::SeqCst) >= 100 }
    })
    .await;
    let before = acked.load(std::sync::atomic::Ordering::SeqCst);
    let backups = tempfile::tempdir().expect("dir");
    let copy = backups.path().join("copy");
    let answer = json(&dir, &["backup", copy.to_str().expect("utf-8 path")]).await;
    assert_eq!(answer["dir"], copy.display().to_string(), "{answer}");
    let during = acked.load(std::sync::atomic::Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let sent = sender.await.expect("sender");
    assert!(sent > before, "traffic went on during the backup");
    // A backup cannot overwrite anything.
    let err = fails(&dir, &["backup", copy.to_str().expect("utf-8 path")], 2).await;
    assert!(err.contains("already exists"), "{err}");
    let _running = stop(broker).await;

    // A broker on the copy has every DM acknowledged before the backup began, in order.
    let restored = restart(&copy).await;
    let (status, inbox) = http(
        "GET",
        format!("{}/v1/inbox/bob?limit=100000", restored.admin_url()),
        Some(restored.admin_token()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{inbox}");
    let payloads: Vec<String> = inbox
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["payload"]["data"].as_str().map(str::to_string))
        .collect();
    let held = payloads.len() as u64;
    assert!(
        (before..=during + 1).contains(&held),
        "the copy holds {held} DMs: {before} were acknowledged before the backup, {during} when it returned"
    );
    for (n, payload) in payloads.iter().enumerate() {
        assert_eq!(payload, &format!("m{n}"), "DM {n} of the copy");
    }
    restored.stop().await;
}
