//! Third-party clients against the broker: the Mosquitto command-line clients, Eclipse Paho
//! for Python (1.x and 2.x API) and the `tern serve` command line itself.
//!
//! `scripts/setup.sh --tests` installs `mosquitto-clients` and paho-mqtt (PyPI, pinned, in
//! a virtualenv: [`tern_conformance::paho_python`]); a missing one fails the test loudly
//! rather than skipping it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tern_conformance::process::{output, text};
use tern_conformance::{
    next_v4, next_v5, v4_options, v5_options, Broker, BrokerProcess, RawClient,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const BROKER: &str = env!("CARGO_BIN_EXE_tern-test-broker");
/// How long an external client may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// mosquitto_sub's output format: QoS, retain flag, topic, payload.
const SUB_FORMAT: &str = "MSG %q %r %t %p";

/// Reads lines from `lines` until one satisfies `done`; returns all lines read.
async fn read_until(
    lines: &mut Lines<BufReader<ChildStdout>>,
    what: &str,
    mut done: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(CLIENT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read child stdout") {
            let stop = done(&line);
            seen.push(line);
            if stop {
                return true;
            }
        }
        false
    })
    .await;
    match found {
        Ok(true) => seen,
        Ok(false) => panic!("{what}: output ended first; it was:\n{}", seen.join("\n")),
        Err(_) => panic!(
            "{what}: not within {CLIENT_TIMEOUT:?}; output:\n{}",
            seen.join("\n")
        ),
    }
}

// ---------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub
// ---------------------------------------------------------------------------------------

async fn mosquitto_pub(port: u16, version: &str, qos: u8, topic: &str, msg: &str, retain: bool) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(["-q", &qos.to_string(), "-t", topic, "-m", msg]);
    if retain {
        cmd.arg("-r");
    }
    let out = output(&mut cmd, "mosquitto_pub", CLIENT_TIMEOUT).await;
    assert!(
        out.status.success(),
        "mosquitto_pub -V {version} -q {qos} -t {topic} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A running `mosquitto_sub` that has its SUBACK.
struct MosquittoSub {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -C count` in debug mode (`-d`) and waits for its SUBACK, so
    /// that nothing published afterwards can be missed.
    async fn start(port: u16, version: &str, qos: u8, filter: &str, count: u32) -> MosquittoSub {
        // mosquitto_sub's stdout is a pipe here, which libc buffers fully: stdbuf makes it
        // line-buffered so that the SUBACK debug line arrives while the process runs.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-V",
                version,
            ])
            .args([
                "-q",
                &qos.to_string(),
                "-t",
                filter,
                "-C",
                &count.to_string(),
            ])
            .args(["-W", "20", "-d", "-F", SUB_FORMAT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mosquitto_sub: {e} (scripts/setup.sh)"));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let seen = read_until(&mut lines, "mosquitto_sub SUBACK", |l| {
            l.contains("received SUBACK")
        })
        .await;
        MosquittoSub { child, lines, seen }
    }

    /// Waits for the process to exit (after its `-C` messages); returns the message lines.
    async fn finish(mut self) -> Vec<String> {
        let rest = tokio::time::timeout(CLIENT_TIMEOUT, async {
            let mut rest = Vec::new();
            while let Some(line) = self.lines.next_line().await.expect("read stdout") {
                rest.push(line);
            }
            rest
        })
        .await;
        self.seen.extend(rest.unwrap_or_else(|_| {
            panic!(
                "mosquitto_sub did not finish; output so far:\n{}",
                self.seen.join("\n")
            )
        }));
        let status = self.child.wait().await.expect("wait for mosquitto_sub");
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut stderr).await;
        }
        assert!(
            status.success(),
            "mosquitto_sub exited with {status}: {stderr}\n{}",
            self.seen.join("\n")
        );
        self.seen
            .into_iter()
            .filter(|l| l.starts_with("MSG "))
            .collect()
    }
}

/// `mosquitto_sub -V mqttv311 -q 1 -C 3` receives the three messages of `mosquitto_pub`
/// (QoS 1 and 2, 3.1.1 and v5 publishers), each at min(publish QoS, subscription QoS)
/// (MQTT-3.8.4-6), in order, without RETAIN (MQTT-3.3.1-9), and exits 0.
#[tokio::test]
async fn mosquitto_clients_v311_subscriber_receives_qos1_and_qos2() {
    let broker = Broker::start().await;
    let port = broker.port();
    let sub = MosquittoSub::start(port, "mqttv311", 1, "t/#", 3).await;
    mosquitto_pub(port, "mqttv311", 1, "t/a", "one", false).await;
    mosquitto_pub(port, "mqttv311", 2, "t/b/c", "two", false).await;
    mosquitto_pub(port, "mqttv5", 2, "t/a", "three", false).await;
    assert_eq!(
        sub.finish().await,
        ["MSG 1 0 t/a one", "MSG 1 0 t/b/c two", "MSG 1 0 t/a three"]
    );
    broker.stop().await;
}

/// The same with `-V mqttv5 -q 2`: QoS 2 publishes arrive at QoS 2, QoS 1 at QoS 1.
#[tokio::test]
async fn mosquitto_clients_v5_subscriber_receives_qos1_and_qos2() {
    let broker = Broker::start().await;
    let port = broker.port();
    let sub = MosquittoSub::start(port, "mqttv5", 2, "t/#", 3).await;
    mosquitto_pub(port, "mqttv5", 1, "t/a", "one", false).await;
    mosquitto_pub(port, "mqttv5", 2, "t/x", "two", false).await;
    mosquitto_pub(port, "mqttv311", 2, "t/a", "three", false).await;
    assert_eq!(
        sub.finish().await,
        ["MSG 1 0 t/a one", "MSG 2 0 t/x two", "MSG 2 0 t/a three"]
    );
    broker.stop().await;
}

/// `mosquitto_pub -r` stores a retained message that a later `mosquitto_sub -C 1` gets
/// with RETAIN set (MQTT-3.3.1-6, MQTT-3.3.1-8), in both protocol versions.
#[tokio::test]
async fn mosquitto_clients_retained_message_reaches_later_subscriber() {
    let broker = Broker::start().await;
    let port = broker.port();
    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("t/retained/{version}");
        let payload = format!("kept-{version}");
        mosquitto_pub(port, version, 1, &topic, &payload, true).await;
        let sub = MosquittoSub::start(port, version, 1, &topic, 1).await;
        assert_eq!(sub.finish().await, [format!("MSG 1 1 {topic} {payload}")]);
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// Eclipse Paho (Python)
// ---------------------------------------------------------------------------------------

fn python_command(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(tern_conformance::paho_python());
    cmd.arg("-c")
        .arg(format!("{PAHO_COMMON}\n{script}"))
        .args(args)
        .env("PYTHONIOENCODING", "utf-8")
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Shared by the scripts: a client on the paho 2.x API with version-1 callbacks, or on the
/// paho 1.x API (Debian bookworm ships 1.6, which has no CallbackAPIVersion), and a
/// watchdog so a stuck script cannot outlive the test.
const PAHO_COMMON: &str = r#"
import os, sys, threading
import paho.mqtt.client as mqtt

def new_client(client_id, protocol):
    try:
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=client_id, protocol=protocol)
    except AttributeError:
        return mqtt.Client(client_id=client_id, protocol=protocol)

watchdog = threading.Timer(20, lambda: os._exit(3))
watchdog.daemon = True
watchdog.start()
"#;

/// argv: port, topic. Publishes "from paho" at QoS 1 over 3.1.1 once connected, waits for
/// the PUBACK.
const PAHO_PUBLISHER: &str = r#"
port, topic = int(sys.argv[1]), sys.argv[2]
connected = threading.Event()
client = new_client("paho-pub", mqtt.MQTTv311)
client.on_connect = lambda *args: connected.set()
client.connect("127.0.0.1", port, keepalive=30)
client.loop_start()
if not connected.wait(10):
    sys.exit("no CONNACK")
info = client.publish(topic, b"from paho", qos=1)
info.wait_for_publish(timeout=10)
if not info.is_published():
    sys.exit("no PUBACK")
client.disconnect()
client.loop_stop()
print("PUBLISHED", flush=True)
"#;

/// argv: port. An MQTT 5 subscriber on paho/v5/in that prints the message and its user
/// properties, then echoes the payload to paho/v5/out with the same user properties plus
/// ("echoed-by", "paho"), and exits once that is acknowledged.
const PAHO_V5_ECHO: &str = r#"
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port = int(sys.argv[1])
state = {}
client = new_client("paho-v5-echo", mqtt.MQTTv5)

def on_connect(client, *args):
    client.subscribe("paho/v5/in", qos=1)

def on_subscribe(client, *args):
    print("READY", flush=True)

def on_message(client, userdata, msg):
    user = list(getattr(msg.properties, "UserProperty", None) or [])
    print("GOT", msg.topic, msg.qos, msg.payload.decode(), flush=True)
    for key, value in user:
        print("USER", key, "->", value, flush=True)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = user + [("echoed-by", "paho")]
    state["mid"] = client.publish("paho/v5/out", msg.payload, qos=1, properties=props).mid

def on_publish(client, userdata, mid, *args):
    if mid == state.get("mid"):
        client.disconnect()

client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.on_publish = on_publish
client.connect("127.0.0.1", port, keepalive=30)
client.loop_forever()
print("DONE", flush=True)
"#;

/// A paho (3.1.1) QoS 1 publish reaches a rumqttc subscriber at QoS 1, payload intact.
#[tokio::test]
async fn paho_v311_publisher_reaches_rumqttc_subscriber() {
    let broker = Broker::start().await;
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(v4_options("rumqttc-sub", broker.port()), 10);
    client
        .subscribe("paho/in", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_v4(&mut eventloop, |e| match e {
        rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => Some(()),
        _ => None,
    })
    .await;

    let port = broker.port().to_string();
    let out = output(
        &mut python_command(PAHO_PUBLISHER, &[&port, "paho/in"]),
        "python3 (paho publisher)",
        CLIENT_TIMEOUT,
    )
    .await;
    assert!(
        out.status.success() && text(&out.stdout).contains("PUBLISHED"),
        "paho publisher failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let publish = next_v4(&mut eventloop, |e| match e {
        rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(publish.topic, "paho/in");
    assert_eq!(&publish.payload[..], b"from paho");
    assert_eq!(publish.qos, rumqttc::QoS::AtLeastOnce);
    broker.stop().await;
}

/// User properties round-trip through the broker between rumqttc and paho over MQTT 5,
/// in order and with a repeated key kept (MQTT-3.3.2-18: forwarded unaltered, order
/// maintained): rumqttc -> broker -> paho, then paho echoes them (plus one) -> broker ->
/// rumqttc.
#[tokio::test]
async fn paho_v5_subscriber_user_properties_round_trip() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event};

    let broker = Broker::start().await;
    let (client, mut eventloop) = AsyncClient::new(v5_options("rumqttc-v5", broker.port()), 10);
    client
        .subscribe("paho/v5/out", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_v5(&mut eventloop, |e| match e {
        Event::Incoming(Packet::SubAck(_)) => Some(()),
        _ => None,
    })
    .await;

    let port = broker.port().to_string();
    let mut paho = python_command(PAHO_V5_ECHO, &[&port])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    let mut lines = BufReader::new(paho.stdout.take().expect("piped stdout")).lines();
    read_until(&mut lines, "paho SUBACK", |l| l == "READY").await;

    let sent = vec![
        ("lang".to_string(), "rust".to_string()),
        ("lang".to_string(), "second".to_string()),
        ("note".to_string(), "tern ✓ ünïcode".to_string()),
    ];
    let properties = PublishProperties {
        user_properties: sent.clone(),
        ..PublishProperties::default()
    };
    client
        .publish_with_properties(
            "paho/v5/in",
            QoS::AtLeastOnce,
            false,
            "hello paho",
            properties,
        )
        .await
        .expect("publish");
    let echoed = next_v5(&mut eventloop, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await;

    let printed = read_until(&mut lines, "paho DONE", |l| l == "DONE").await;
    let status = tokio::time::timeout(CLIENT_TIMEOUT, paho.wait())
        .await
        .expect("paho exits")
        .expect("wait for python3");
    let mut stderr = String::new();
    if let Some(mut err) = paho.stderr.take() {
        let _ = err.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "paho script failed ({status}): {stderr}");
    assert_eq!(
        printed,
        [
            "GOT paho/v5/in 1 hello paho",
            "USER lang -> rust",
            "USER lang -> second",
            "USER note -> tern ✓ ünïcode",
            "DONE",
        ],
        "what paho received"
    );

    assert_eq!(&echoed.topic[..], b"paho/v5/out");
    assert_eq!(&echoed.payload[..], b"hello paho");
    let mut expected = sent;
    expected.push(("echoed-by".to_string(), "paho".to_string()));
    assert_eq!(
        echoed.properties.map(|p| p.user_properties),
        Some(expected),
        "user properties paho published, as rumqttc received them"
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// `tern serve` (the tern-test-broker binary is the same command line)
// ---------------------------------------------------------------------------------------

fn tern_serve(args: &[&str], data_dir: &Path) -> Command {
    let mut cmd = Command::new(BROKER);
    cmd.arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("NO_COLOR", "1");
    cmd
}

/// A config file with a misspelt key stops the start: non-zero exit, and stderr names the
/// key with its table.
#[tokio::test]
async fn tern_serve_config_with_unknown_key_fails_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[limits]\nmax_pakcet_size = 4096\n",
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path");
    let out = output(
        &mut tern_serve(&["--config", config], &dir.path().join("data")),
        "tern serve",
        CLIENT_TIMEOUT,
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "started with an unknown key: {stderr}"
    );
    assert!(
        stderr.contains("limits.max_pakcet_size"),
        "stderr does not name the key: {stderr}"
    );
}

/// `--listen` with a value that is not ADDR:PORT fails at once (exit code 2, the usage
/// error code) with a message naming the flag and the value.
#[tokio::test]
async fn tern_serve_bad_listen_value_fails_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    for bad in [
        "localhost",
        "127.0.0.1",
        "127.0.0.1:99999",
        "not an address",
    ] {
        let out = output(
            &mut tern_serve(&["--listen", bad], &dir.path().join("data")),
            "tern serve",
            CLIENT_TIMEOUT,
        )
        .await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--listen {bad:?}: {stderr}");
        assert!(
            stderr.contains("--listen") && stderr.contains(bad),
            "--listen {bad:?}: the message names neither the flag nor the value: {stderr}"
        );
    }
}

/// SIGTERM stops `tern serve` cleanly: the connected client's socket is closed, the process
/// exits with status 0, and its log says it stopped.
#[tokio::test]
async fn tern_serve_sigterm_stops_cleanly_with_exit_code_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(BROKER, dir.path(), &[]).await;

    let mut client = RawClient::connect(broker.addr, tern_codec::Protocol::V311).await;
    let connect = client.connect_packet("sigterm-client", true);
    let ack = client.handshake(connect).await;
    assert_eq!(ack.code, tern_codec::ReasonCode::Success);

    broker.terminate();
    assert_eq!(
        client.recv().await,
        None,
        "the client's connection is closed"
    );
    let (status, log) = broker.wait(Duration::from_secs(15)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; log:\n{log}"
    );
    assert!(log.contains("stopped"), "log of a clean stop:\n{log}");
}
