//! Third-party clients over the broker's TLS, WebSocket and WebSocket-over-TLS listeners
//! (plain TCP with the same clients is in `clients.rs`):
//!
//! - `mosquitto_pub` / `mosquitto_sub` (Debian `mosquitto-clients`) over TLS, verifying the
//!   broker's certificate against `--cafile` for host `localhost`: QoS 1 and 2 in MQTT
//!   3.1.1 and 5, a retained message, and the refusal of a certificate signed by another CA.
//! - Eclipse Paho for Python (paho-mqtt from PyPI, 2.x with version-1 callbacks; the 1.x
//!   API works too) in MQTT 3.1.1 and 5 over each of TCP, TLS, WebSocket and WSS
//!   (path `/mqtt`): subscribe, publish at QoS 1 (a short text and a 200 kB message, more
//!   than one TLS record or WebSocket frame) and receive, both its own messages and one from
//!   a raw MQTT client on plain TCP, which receives paho's in turn; the refusal of an
//!   untrusted certificate over TLS and WSS; and a paho subscriber on WebSocket receiving
//!   what `mosquitto_pub` publishes over TLS.
//!
//! Every test starts its own broker with all four listeners and its own self-signed
//! certificate ([`TestCert`]), runs the clients as child processes (killed if the test
//! fails) and waits for the lines they print, with timeouts, never for fixed delays.
//! `scripts/setup.sh --tests` installs `mosquitto-clients` and paho-mqtt; a missing one
//! fails the test loudly rather than skipping it.
//!
//! The small process helpers (`output`, the paho 1.x/2.x shim) are copies of those in
//! `clients.rs`, generalised to TLS and WebSocket.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tern_codec::{Protocol, QoS};
use tern_conformance::process::{output, text};
use tern_conformance::{Broker, RawClient, TestCert};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long an external client may take (the paho scripts' own watchdog is 25 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// mosquitto_sub's output format: QoS, retain flag, topic, payload.
const SUB_FORMAT: &str = "MSG %q %r %t %p";
/// Size of the large messages: more than a TLS record (16 kB) and than one socket write.
const LARGE: usize = 200_000;

/// A broker with the TCP, TLS, WebSocket and WSS listeners, and the certificate it serves.
async fn broker_with_all_listeners() -> (Broker, TestCert) {
    let cert = TestCert::localhost();
    let broker = Broker::start_with(|c| cert.enable_all_listeners(c)).await;
    (broker, cert)
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// `len` bytes of a fixed pattern (i mod 251), recognisable at both ends: the paho script
/// builds the same for `pattern*LEN`.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A payload as the paho script prints it: the text when short, `pattern*LEN` for an
/// intact [`pattern`].
fn describe(payload: &[u8]) -> String {
    if payload.len() <= 64 {
        String::from_utf8_lossy(payload).into_owned()
    } else if payload == pattern(payload.len()) {
        format!("pattern*{}", payload.len())
    } else {
        format!(
            "{} bytes, not the pattern, starting {:?}",
            payload.len(),
            &payload[..32]
        )
    }
}

/// A client running as a child process, its stdout read line by line as it comes.
struct Running {
    what: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Running {
    fn spawn(what: &str, cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e} (scripts/setup.sh installs it)"));
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Running {
            what: what.to_string(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `done` and returns it; fails the test (with the
    /// client's whole output) if the output ends first or nothing matches in time.
    async fn until(&mut self, event: &str, mut done: impl FnMut(&str) -> bool) -> String {
        let seen = &mut self.seen;
        let lines = &mut self.lines;
        let found = tokio::time::timeout(CLIENT_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.expect("read child stdout") {
                seen.push(line.clone());
                if done(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "{}",
                self.fail(&format!("output ended before {event}")).await
            ),
            Err(_) => panic!(
                "{}",
                self.fail(&format!("no {event} within {CLIENT_TIMEOUT:?}"))
                    .await
            ),
        }
    }

    /// Reads the output to its end and waits for the exit; returns the exit status, every
    /// line printed and stderr.
    async fn wait(mut self) -> (std::process::ExitStatus, Vec<String>, String) {
        let read_all = tokio::time::timeout(CLIENT_TIMEOUT, async {
            while let Some(line) = self.lines.next_line().await.expect("read child stdout") {
                self.seen.push(line);
            }
        })
        .await;
        if read_all.is_err() {
            panic!("{}", self.fail("did not exit").await);
        }
        let status = tokio::time::timeout(CLIENT_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} closed stdout but did not exit", self.what))
            .expect("wait for child process");
        let stderr = self.stderr().await;
        (status, self.seen, stderr)
    }

    /// Like [`Running::wait`], but the client must exit 0; returns its lines.
    async fn finish(self) -> Vec<String> {
        let what = self.what.clone();
        let (status, seen, stderr) = self.wait().await;
        assert!(
            status.success(),
            "{what} exited with {status}\nstdout:\n{}\nstderr:\n{stderr}",
            seen.join("\n")
        );
        seen
    }

    async fn stderr(&mut self) -> String {
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), err.read_to_string(&mut stderr)).await;
        }
        stderr
    }

    /// Kills the client; returns the failure message, with everything it printed.
    async fn fail(&mut self, why: &str) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let stderr = self.stderr().await;
        format!(
            "{}: {why}\nstdout:\n{}\nstderr:\n{stderr}",
            self.what,
            self.seen.join("\n")
        )
    }
}

// ---------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub over TLS
// ---------------------------------------------------------------------------------------

/// `-h localhost -p PORT --cafile CA`: TLS, with the certificate checked against `ca` and
/// the name `localhost`.
fn tls_args(tls: SocketAddr, ca: &Path) -> [String; 6] {
    [
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        tls.port().to_string(),
        "--cafile".into(),
        path_arg(ca).into(),
    ]
}

fn mosquitto_tls(program: &str, tls: SocketAddr, ca: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(tls_args(tls, ca));
    cmd
}

/// `mosquitto_pub` over TLS; returns its output, whatever its exit status. `message` is
/// the payload, or `@FILE` for `-f FILE`.
async fn mosquitto_pub_tls(
    tls: SocketAddr,
    ca: &Path,
    version: &str,
    qos: u8,
    topic: &str,
    message: &str,
    retain: bool,
) -> Output {
    let mut cmd = mosquitto_tls("mosquitto_pub", tls, ca);
    cmd.args(["-V", version, "-q", &qos.to_string(), "-t", topic]);
    match message.strip_prefix('@') {
        Some(file) => cmd.args(["-f", file]),
        None => cmd.args(["-m", message]),
    };
    if retain {
        cmd.arg("-r");
    }
    output(&mut cmd, "mosquitto_pub", CLIENT_TIMEOUT).await
}

/// Like [`mosquitto_pub_tls`], but it must succeed.
async fn mosquitto_pub_tls_ok(
    tls: SocketAddr,
    ca: &Path,
    version: &str,
    qos: u8,
    topic: &str,
    message: &str,
    retain: bool,
) {
    let out = mosquitto_pub_tls(tls, ca, version, qos, topic, message, retain).await;
    assert!(
        out.status.success(),
        "mosquitto_pub over TLS -V {version} -q {qos} -t {topic} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Starts `mosquitto_sub -C count` over TLS in debug mode (`-d`) and waits for its
/// SUBACK, so that nothing published afterwards can be missed.
async fn mosquitto_sub_tls(
    tls: SocketAddr,
    ca: &Path,
    version: &str,
    qos: u8,
    filter: &str,
    count: u32,
) -> Running {
    // mosquitto_sub's stdout is a pipe here, which libc buffers fully: stdbuf makes it
    // line-buffered so that the SUBACK debug line arrives while the process runs.
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub"])
        .args(tls_args(tls, ca))
        .args(["-V", version, "-q", &qos.to_string(), "-t", filter])
        .args(["-C", &count.to_string(), "-W", "30", "-d", "-F", SUB_FORMAT]);
    let mut sub = Running::spawn("mosquitto_sub over TLS", &mut cmd);
    sub.until("SUBACK", |l| l.contains("received SUBACK")).await;
    sub
}

/// The message lines of a `mosquitto_sub` that must exit 0 after its `-C` messages.
async fn sub_messages(sub: Running) -> Vec<String> {
    sub.finish()
        .await
        .into_iter()
        .filter(|l| l.starts_with("MSG "))
        .collect()
}

/// `mosquitto_sub -V mqttv311 -q 1` over TLS receives what `mosquitto_pub` publishes over
/// TLS at QoS 1 and 2 in both protocol versions, each at min(publish QoS, subscription QoS)
/// (MQTT-3.8.4-6), in order, without RETAIN.
#[tokio::test]
async fn mosquitto_tls_v311_subscriber_receives_qos1_and_qos2() {
    let (broker, cert) = broker_with_all_listeners().await;
    let (tls, ca) = (broker.tls.expect("TLS listener"), &cert.cert_file);
    let sub = mosquitto_sub_tls(tls, ca, "mqttv311", 1, "t/#", 3).await;
    mosquitto_pub_tls_ok(tls, ca, "mqttv311", 1, "t/a", "one", false).await;
    mosquitto_pub_tls_ok(tls, ca, "mqttv311", 2, "t/b/c", "two", false).await;
    mosquitto_pub_tls_ok(tls, ca, "mqttv5", 2, "t/a", "three", false).await;
    assert_eq!(
        sub_messages(sub).await,
        ["MSG 1 0 t/a one", "MSG 1 0 t/b/c two", "MSG 1 0 t/a three"]
    );
    broker.stop().await;
}

/// The same with `-V mqttv5 -q 2`: QoS 2 publishes arrive at QoS 2, QoS 1 at QoS 1.
#[tokio::test]
async fn mosquitto_tls_v5_subscriber_receives_qos1_and_qos2() {
    let (broker, cert) = broker_with_all_listeners().await;
    let (tls, ca) = (broker.tls.expect("TLS listener"), &cert.cert_file);
    let sub = mosquitto_sub_tls(tls, ca, "mqttv5", 2, "t/#", 3).await;
    mosquitto_pub_tls_ok(tls, ca, "mqttv5", 1, "t/a", "one", false).await;
    mosquitto_pub_tls_ok(tls, ca, "mqttv5", 2, "t/x", "two", false).await;
    mosquitto_pub_tls_ok(tls, ca, "mqttv311", 2, "t/a", "three", false).await;
    assert_eq!(
        sub_messages(sub).await,
        ["MSG 1 0 t/a one", "MSG 2 0 t/x two", "MSG 2 0 t/a three"]
    );
    broker.stop().await;
}

/// `mosquitto_pub -r` over TLS stores a retained message that a later `mosquitto_sub -C 1`
/// over TLS gets with RETAIN set (MQTT-3.3.1-6, MQTT-3.3.1-8), in both protocol versions.
#[tokio::test]
async fn mosquitto_tls_retained_message_reaches_later_subscriber() {
    let (broker, cert) = broker_with_all_listeners().await;
    let (tls, ca) = (broker.tls.expect("TLS listener"), &cert.cert_file);
    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("t/retained/{version}");
        let payload = format!("kept-{version}");
        mosquitto_pub_tls_ok(tls, ca, version, 1, &topic, &payload, true).await;
        let sub = mosquitto_sub_tls(tls, ca, version, 1, &topic, 1).await;
        assert_eq!(
            sub_messages(sub).await,
            [format!("MSG 1 1 {topic} {payload}")]
        );
    }
    broker.stop().await;
}

/// With a `--cafile` that did not sign the broker's certificate, `mosquitto_pub` and
/// `mosquitto_sub` refuse the connection (non-zero exit, a TLS error) and the refused
/// message never reaches a trusting subscriber, whose first message is the one published
/// afterwards with the right CA.
#[tokio::test]
async fn mosquitto_tls_untrusted_certificate_is_refused() {
    let (broker, cert) = broker_with_all_listeners().await;
    let other = TestCert::localhost();
    let (tls, ca) = (broker.tls.expect("TLS listener"), &cert.cert_file);
    let sub = mosquitto_sub_tls(tls, ca, "mqttv5", 1, "t/#", 1).await;

    let out = mosquitto_pub_tls(
        tls,
        &other.cert_file,
        "mqttv5",
        1,
        "t/x",
        "must not arrive",
        false,
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "mosquitto_pub trusted a certificate its --cafile did not sign: {}{stderr}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains("TLS") || stderr.contains("certificate"),
        "mosquitto_pub failed, but not with a TLS error: {stderr}"
    );

    let mut refused = mosquitto_tls("mosquitto_sub", tls, &other.cert_file);
    refused.args(["-V", "mqttv311", "-t", "t/#", "-C", "1", "-W", "10"]);
    let out = output(&mut refused, "mosquitto_sub", CLIENT_TIMEOUT).await;
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && (stderr.contains("TLS") || stderr.contains("certificate")),
        "mosquitto_sub with an untrusted certificate: exit {}, stdout {:?}, stderr {stderr}",
        out.status,
        text(&out.stdout)
    );

    mosquitto_pub_tls_ok(tls, ca, "mqttv5", 1, "t/x", "trusted", false).await;
    assert_eq!(sub_messages(sub).await, ["MSG 1 0 t/x trusted"]);
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// Eclipse Paho (Python) over TCP, TLS, WebSocket and WSS
// ---------------------------------------------------------------------------------------

/// argv: transport (tcp, tls, ws, wss), port, CA file (or -), protocol (311 or 5), client
/// id, filter, topic, expected message count, then the payloads to publish (`pattern*LEN`
/// for [`pattern`]).
///
/// Connects (host `localhost`, certificate checked, over TLS and WSS; path `/mqtt` over
/// WebSocket), subscribes to the filter at QoS 1, prints `READY <granted QoS>`, publishes
/// the payloads at QoS 1 to the topic, prints `PUBACK <n>` for each acknowledgement and
/// `GOT <topic> <qos> <retain> <payload>` for each message, and disconnects and prints
/// `DONE` once it has every PUBACK and the expected count of messages. A failed connection
/// prints `CONNECT-ERROR` and exits 2. Paho 1.x (Debian bookworm ships 1.6, which has no
/// CallbackAPIVersion) or 2.x with version-1 callbacks; a watchdog ends a stuck script.
const PAHO_CLIENT: &str = r#"
import os, sys, threading
import paho.mqtt.client as mqtt

def give_up():
    print("WATCHDOG", flush=True)
    os._exit(3)

watchdog = threading.Timer(25, give_up)
watchdog.daemon = True
watchdog.start()

transport, port, cafile, version, client_id, filter_, topic, expect = sys.argv[1:9]
payload_specs = sys.argv[9:]
port, expect = int(port), int(expect)

def pattern(n):
    return bytes(i % 251 for i in range(n))

def payload_of(spec):
    if spec.startswith("pattern*"):
        return pattern(int(spec[len("pattern*"):]))
    return spec.encode()

def describe(p):
    if len(p) <= 64:
        return p.decode("utf-8", "backslashreplace")
    if p == pattern(len(p)):
        return "pattern*%d" % len(p)
    return "%d bytes, not the pattern, starting %r" % (len(p), p[:32])

def value(code):
    return int(getattr(code, "value", code))

def fail(why):
    print("FAIL", why, flush=True)
    os._exit(4)

protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
kind = "websockets" if transport in ("ws", "wss") else "tcp"
try:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=client_id, protocol=protocol, transport=kind)
except AttributeError:
    client = mqtt.Client(client_id=client_id, protocol=protocol, transport=kind)
if kind == "websockets":
    client.ws_set_options(path="/mqtt")
host = "127.0.0.1"
if transport in ("tls", "wss"):
    client.tls_set(ca_certs=cafile)
    host = "localhost"

state = {"mids": {}, "acked": 0, "got": 0}

def check_done(client):
    if state["acked"] == len(payload_specs) and state["got"] >= expect:
        client.disconnect()

def on_connect(client, userdata, flags, rc, *rest):
    if value(rc) != 0:
        fail("CONNACK %s" % rc)
    print("CONNECTED", flush=True)
    client.subscribe(filter_, qos=1)

def on_subscribe(client, userdata, mid, granted, *rest):
    print("READY", value(granted[0]), flush=True)
    for n, spec in enumerate(payload_specs, 1):
        info = client.publish(topic, payload_of(spec), qos=1)
        if info.rc != 0:
            fail("publish %d: rc %s" % (n, info.rc))
        state["mids"][info.mid] = n
    check_done(client)

def on_publish(client, userdata, mid, *rest):
    print("PUBACK", state["mids"].get(mid, "unknown mid %d" % mid), flush=True)
    state["acked"] += 1
    check_done(client)

def on_message(client, userdata, msg):
    print("GOT", msg.topic, msg.qos, int(msg.retain), describe(msg.payload), flush=True)
    state["got"] += 1
    check_done(client)

client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_publish = on_publish
client.on_message = on_message
try:
    client.connect(host, port, keepalive=30)
except Exception as e:
    print("CONNECT-ERROR", type(e).__name__, e, flush=True)
    sys.exit(2)
client.loop_forever()
print("DONE", flush=True)
"#;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    fn addr(self, broker: &Broker) -> SocketAddr {
        let addr = match self {
            Transport::Tcp => Some(broker.addr),
            Transport::Tls => broker.tls,
            Transport::Ws => broker.ws,
            Transport::Wss => broker.wss,
        };
        addr.unwrap_or_else(|| panic!("the broker has no {} listener", self.name()))
    }
}

#[derive(Clone, Copy, Debug)]
enum Version {
    V311,
    V5,
}

impl Version {
    /// Paho's protocol argument of the script.
    fn arg(self) -> &'static str {
        match self {
            Version::V311 => "311",
            Version::V5 => "5",
        }
    }
}

/// One run of [`PAHO_CLIENT`].
struct PahoRun<'a> {
    transport: Transport,
    version: Version,
    /// The CA file to trust over TLS and WSS.
    ca: &'a Path,
    client_id: &'a str,
    filter: &'a str,
    topic: &'a str,
    expect: usize,
    publish: &'a [&'a str],
}

impl PahoRun<'_> {
    fn spawn(&self, broker: &Broker) -> Running {
        let port = self.transport.addr(broker).port().to_string();
        let expect = self.expect.to_string();
        let mut cmd = Command::new(tern_conformance::paho_python());
        cmd.arg("-c")
            .arg(PAHO_CLIENT)
            .args([self.transport.name(), &port, path_arg(self.ca)])
            .args([self.version.arg(), self.client_id, self.filter, self.topic])
            .arg(&expect)
            .args(self.publish)
            .env("PYTHONIOENCODING", "utf-8")
            .env("PYTHONUNBUFFERED", "1");
        let what = format!(
            "paho {:?} over {} ({})",
            self.version,
            self.transport.name(),
            self.client_id
        );
        Running::spawn(&what, &mut cmd)
    }
}

fn got_lines(lines: &[String], prefix: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .cloned()
        .collect()
}

/// Paho over `transport` in `version`: subscribes at QoS 1 (granted QoS 1), publishes a
/// short text and a [`LARGE`] message at QoS 1 (both PUBACKed) and receives them back
/// intact and in order; a raw MQTT 5 client on plain TCP receives both too, and what it
/// publishes reaches paho.
async fn paho_round_trip(transport: Transport, version: Version) {
    let (broker, cert) = broker_with_all_listeners().await;
    let tag = format!("{version:?}-{}", transport.name()).to_lowercase();
    let from_paho = format!("tern/{tag}/paho");
    let from_tcp = format!("tern/{tag}/tcp");
    let text_payload = format!("hello from paho {tag}");
    let large = format!("pattern*{LARGE}");

    let (mut tcp, _) = RawClient::open_ok(
        broker.addr,
        Protocol::V5,
        &format!("tcp-{tag}"),
        true,
        |_| {},
    )
    .await;
    tcp.subscribe(1, &from_paho, QoS::AtLeastOnce).await;

    let mut paho = PahoRun {
        transport,
        version,
        ca: &cert.cert_file,
        client_id: &format!("paho-{tag}"),
        filter: &format!("tern/{tag}/#"),
        topic: &from_paho,
        expect: 3,
        publish: &[&text_payload, &large],
    }
    .spawn(&broker);
    let ready = paho.until("SUBACK", |l| l.starts_with("READY")).await;
    assert_eq!(ready, "READY 1", "paho's granted QoS");
    paho.until("the second PUBACK", |l| l == "PUBACK 2").await;

    for expected in [&text_payload, &large] {
        let p = tcp.expect_publish("paho's message").await;
        assert_eq!(&p.topic[..], from_paho.as_str());
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert_eq!(&describe(&p.payload), expected, "paho's message over TCP");
    }
    tcp.publish_qos1(2, &from_tcp, "hello from tcp", false)
        .await;

    let lines = paho.finish().await;
    assert_eq!(
        got_lines(&lines, &format!("GOT {from_paho} ")),
        [
            format!("GOT {from_paho} 1 0 {text_payload}"),
            format!("GOT {from_paho} 1 0 {large}"),
        ],
        "paho's own messages, as paho received them; output:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        got_lines(&lines, &format!("GOT {from_tcp} ")),
        [format!("GOT {from_tcp} 1 0 hello from tcp")],
        "the TCP client's message, as paho received it; output:\n{}",
        lines.join("\n")
    );
    let mut acks = got_lines(&lines, "PUBACK");
    acks.sort();
    assert_eq!(acks, ["PUBACK 1", "PUBACK 2"]);
    assert_eq!(lines.first().map(String::as_str), Some("CONNECTED"));
    assert_eq!(lines.last().map(String::as_str), Some("DONE"));

    tcp.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn paho_v311_over_tcp() {
    paho_round_trip(Transport::Tcp, Version::V311).await;
}

#[tokio::test]
async fn paho_v311_over_tls() {
    paho_round_trip(Transport::Tls, Version::V311).await;
}

#[tokio::test]
async fn paho_v311_over_websocket() {
    paho_round_trip(Transport::Ws, Version::V311).await;
}

#[tokio::test]
async fn paho_v311_over_websocket_tls() {
    paho_round_trip(Transport::Wss, Version::V311).await;
}

#[tokio::test]
async fn paho_v5_over_tcp() {
    paho_round_trip(Transport::Tcp, Version::V5).await;
}

#[tokio::test]
async fn paho_v5_over_tls() {
    paho_round_trip(Transport::Tls, Version::V5).await;
}

#[tokio::test]
async fn paho_v5_over_websocket() {
    paho_round_trip(Transport::Ws, Version::V5).await;
}

#[tokio::test]
async fn paho_v5_over_websocket_tls() {
    paho_round_trip(Transport::Wss, Version::V5).await;
}

/// Paho over TLS and over WSS, trusting a CA that did not sign the broker's certificate,
/// refuses to connect: certificate verification really happens.
#[tokio::test]
async fn paho_tls_and_wss_untrusted_certificate_is_refused() {
    let (broker, _cert) = broker_with_all_listeners().await;
    let other = TestCert::localhost();
    for transport in [Transport::Tls, Transport::Wss] {
        for version in [Version::V311, Version::V5] {
            let paho = PahoRun {
                transport,
                version,
                ca: &other.cert_file,
                client_id: "paho-untrusting",
                filter: "t/#",
                topic: "t/x",
                expect: 1,
                publish: &["must not arrive"],
            }
            .spawn(&broker);
            let (status, lines, stderr) = paho.wait().await;
            assert!(
                status.code() == Some(2)
                    && lines.len() == 1
                    && lines[0].starts_with("CONNECT-ERROR")
                    && lines[0].contains("CERTIFICATE_VERIFY_FAILED"),
                "paho {version:?} over {} with an untrusted certificate: exit {status}\n\
                 stdout:\n{}\nstderr:\n{stderr}",
                transport.name(),
                lines.join("\n")
            );
        }
    }
    broker.stop().await;
}

/// Across transports and clients: a paho MQTT 5 subscriber on WebSocket receives what
/// `mosquitto_pub` publishes over TLS (3.1.1 at QoS 1, 5 at QoS 2, and a [`LARGE`]
/// message from a file), at QoS 1, intact and in order.
#[tokio::test]
async fn paho_websocket_subscriber_receives_mosquitto_tls_publishes() {
    let (broker, cert) = broker_with_all_listeners().await;
    let (tls, ca) = (broker.tls.expect("TLS listener"), &cert.cert_file);
    let dir = tempfile::tempdir().expect("temp dir");
    let large_file = dir.path().join("large.bin");
    std::fs::write(&large_file, pattern(LARGE)).expect("write the large payload");

    let mut paho = PahoRun {
        transport: Transport::Ws,
        version: Version::V5,
        ca: Path::new("-"),
        client_id: "paho-ws-sub",
        filter: "cross/#",
        topic: "-",
        expect: 3,
        publish: &[],
    }
    .spawn(&broker);
    let ready = paho.until("SUBACK", |l| l.starts_with("READY")).await;
    assert_eq!(ready, "READY 1", "paho's granted QoS");

    mosquitto_pub_tls_ok(tls, ca, "mqttv311", 1, "cross/a", "tls 311 qos 1", false).await;
    mosquitto_pub_tls_ok(tls, ca, "mqttv5", 2, "cross/b", "tls 5 qos 2", false).await;
    let large_arg = format!("@{}", path_arg(&large_file));
    mosquitto_pub_tls_ok(tls, ca, "mqttv5", 1, "cross/large", &large_arg, false).await;

    let lines = paho.finish().await;
    assert_eq!(
        got_lines(&lines, "GOT "),
        [
            "GOT cross/a 1 0 tls 311 qos 1".to_string(),
            "GOT cross/b 1 0 tls 5 qos 2".to_string(),
            format!("GOT cross/large 1 0 pattern*{LARGE}"),
        ],
        "what paho received over WebSocket; output:\n{}",
        lines.join("\n")
    );
    broker.stop().await;
}
