//! Harness for the conformance tests in `tests/`: a real broker on a free loopback port,
//! either inside the test process ([`Broker`], fast, stopped cleanly) or as a child process
//! ([`BrokerProcess`], for tests that SIGKILL it), plus helpers to build real clients.
//!
//! Every test gets its own port and data directory, so tests run in parallel.

pub mod chat;
pub mod device;
pub mod exit;
pub mod flaky;
pub mod nats;
pub mod process;
pub mod stall;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tern::config::{Config, ListenerKind};
use tern::server::Server;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;

/// How long a test waits for any one expected event before failing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Looks at `check` every 20 ms until it holds, failing the test (naming `what`) if it
/// does not within [`EVENT_TIMEOUT`]: for state a test can only look at, such as another
/// server's counters, rather than be told of.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {EVENT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config for tests: free ports on 127.0.0.1 (MQTT and the admin API) and the given data
/// directory.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    config.listeners.use_free_ports();
    config.admin.listen = "127.0.0.1:0".parse().expect("literal address");
    // Presence adds a retained message per user that connects: tests of retained messages
    // and counts would all see them. chat_features.rs turns it on.
    config.im.presence = false;
    config
}

/// The op that stores group `gid` with `members` (sorted, as the broker keeps them).
pub fn group_op(gid: &str, members: &[&str]) -> tern_storage::Op {
    let mut members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    members.sort();
    tern_storage::Op::PutGroup(tern_storage::StoredGroup {
        gid: gid.into(),
        members,
        created_at_ms: 0,
    })
}

/// The broker running inside the test process.
pub struct Broker {
    /// The TCP listener's address.
    pub addr: SocketAddr,
    /// The TLS, WebSocket and WebSocket-over-TLS listeners' addresses, when enabled.
    pub tls: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    /// The admin API's address (`None` with `admin.enabled = false`).
    pub admin: Option<SocketAddr>,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    // Kept alive for the broker's lifetime when the harness created it.
    _dir: Option<tempfile::TempDir>,
}

impl Broker {
    /// A broker with default limits and a fresh data directory.
    pub async fn start() -> Broker {
        Self::start_with(|_| {}).await
    }

    /// A broker with a fresh data directory and the config adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let mut broker = Self::start_config(config).await;
        broker._dir = Some(dir);
        broker
    }

    /// A broker on `store` instead of RocksDB (e.g. [`stall::StallingStore`]), with a
    /// fresh data directory (for the admin files) and the config adjusted by `adjust`.
    pub async fn start_on_store(
        store: std::sync::Arc<dyn tern_storage::Store>,
        adjust: impl FnOnce(&mut Config),
    ) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let server = Server::start_with_store(config.clone(), store)
            .await
            .expect("broker starts");
        let mut broker = Self::serve(server, config);
        broker._dir = Some(dir);
        broker
    }

    /// A broker on an explicit config (for restarts on the same data directory).
    pub async fn start_config(config: Config) -> Broker {
        // The RocksDB store is opened here rather than by `Server::start`, to count it as
        // open until it is closed (see [`exit`]).
        std::fs::create_dir_all(&config.data_dir).expect("create the data directory");
        let dir = config.data_dir.clone();
        let rocks = tokio::task::spawn_blocking(move || tern_storage::RocksStore::open(&dir))
            .await
            .expect("open storage")
            .expect("open storage");
        let store = stall::StallingStore::over(Box::new(rocks), Some(exit::opened()));
        let server = Server::start_with_store(config.clone(), std::sync::Arc::new(store))
            .await
            .expect("broker starts");
        Self::serve(server, config)
    }

    fn serve(server: Server, config: Config) -> Broker {
        let addr = server.local_addr().expect("bound address");
        let tls = server.listener_addr(ListenerKind::Tls);
        let ws = server.listener_addr(ListenerKind::Ws);
        let wss = server.listener_addr(ListenerKind::Wss);
        let admin = server.admin_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("broker stops cleanly");
        });
        Broker {
            addr,
            tls,
            ws,
            wss,
            admin,
            config,
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://{admin address}`; panics if the admin API is off.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin.expect("the admin API is enabled"))
    }

    /// The admin API's token: the configured one, or the one the broker generated into
    /// `{data_dir}/admin.token`.
    pub fn admin_token(&self) -> String {
        if !self.config.admin.token.is_empty() {
            return self.config.admin.token.clone();
        }
        tern::admin::token::read_token(&self.config.data_dir)
            .expect("read admin.token")
            .expect("the broker wrote admin.token")
    }

    /// `method path` on the admin API with the admin token, and a JSON `body`: the status
    /// and the JSON answer.
    pub async fn api(
        &self,
        method: &'static str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        http(
            method,
            format!("{}{path}", self.admin_url()),
            Some(self.admin_token()),
            body,
        )
        .await
    }

    /// The Prometheus exposition of `GET {admin}/metrics` (no token needed).
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.admin_url());
        tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .call()
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
                .body_mut()
                .read_to_string()
                .expect("metrics body")
        })
        .await
        .expect("request thread")
    }

    /// Stops the broker cleanly and waits until storage is closed.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("broker task");
        }
        self._dir.take()
    }

    /// A broker whose data directory (made here, kept with it) holds `ops` (users, groups)
    /// before it starts; `adjust` changes the test configuration first.
    pub async fn start_seeded(
        ops: &[tern_storage::Op],
        adjust: impl FnOnce(&mut Config),
    ) -> Broker {
        use tern_storage::Store;
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = tern_storage::RocksStore::open(dir.path()).expect("open store");
            store.write(ops, true).expect("seed");
        }
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let mut broker = Broker::start_config(config).await;
        broker.keep_dir(dir);
        broker
    }

    /// Keeps `dir` (the broker's data directory, made by the test) until the broker is
    /// stopped, and across [`restart`](Self::restart).
    pub fn keep_dir(&mut self, dir: tempfile::TempDir) {
        self._dir = Some(dir);
    }

    /// Stops the broker cleanly and starts a new one on the same data directory (and a
    /// new port).
    pub async fn restart(self) -> Broker {
        let mut config = self.config.clone();
        config.listeners.use_free_ports();
        let dir = self.stop().await;
        let mut broker = Self::start_config(config).await;
        broker._dir = dir;
        broker
    }
}

/// The broker as a child process (the `tern-test-broker` binary of this package), with its
/// whole log (stderr) collected until it exits.
pub struct BrokerProcess {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: tokio::process::Child,
    log: tokio::task::JoinHandle<String>,
}

impl BrokerProcess {
    /// Starts `tern serve` on a free port with `data_dir`; extra CLI args are appended.
    pub async fn start(binary: &str, data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        let mut child = tokio::process::Command::new(binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn broker process");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = oneshot::channel();
        // Reads the log to the end (so the pipe never fills and blocks the broker), and
        // reports the address of the "tern listening addr=..." line.
        let log = tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            let mut log = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = listen_addr(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                log.push_str(&line);
                log.push('\n');
            }
            log
        });
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(addr)) => BrokerProcess {
                addr,
                data_dir: data_dir.to_path_buf(),
                child,
                log,
            },
            Ok(Err(_)) => {
                let status = child.wait().await;
                let log = log.await.unwrap_or_default();
                panic!("broker exited ({status:?}) before listening:\n{log}");
            }
            Err(_) => panic!("broker did not listen within 60 s"),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("broker still running")
    }

    /// SIGKILL: no flush, no goodbye.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill broker");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, the signal a service manager stops the broker with. Does not wait: see
    /// [`BrokerProcess::wait`].
    pub fn terminate(&self) {
        let pid = self.pid();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }

    /// Waits up to `limit` for the process to exit; returns its status and its whole log.
    pub async fn wait(self, limit: Duration) -> (ExitStatus, String) {
        let BrokerProcess { mut child, log, .. } = self;
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .unwrap_or_else(|_| panic!("broker did not exit within {limit:?}"))
            .expect("wait for broker");
        let log = tokio::time::timeout(Duration::from_secs(5), log)
            .await
            .map(|log| log.unwrap_or_default())
            .unwrap_or_default();
        (status, log)
    }
}

/// The `addr` field of the first "listening" log line (the TCP listener), in either log
/// format.
fn listen_addr(line: &str) -> Option<SocketAddr> {
    if let Some(json) = line.split(r#""addr":""#).nth(1) {
        // log.format = "json": `"addr":"127.0.0.1:1883"`.
        return json.split('"').next().and_then(|a| a.parse().ok());
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
}

/// rumqttc options for MQTT 3.1.1 against `port`.
pub fn v4_options(client_id: &str, port: u16) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// rumqttc options for MQTT 5 against `port`.
pub fn v5_options(client_id: &str, port: u16) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Waits for the first event `pick` accepts from a v3.1.1 event loop, failing the test
/// after [`EVENT_TIMEOUT`] or on a connection error.
pub async fn next_v4<T>(
    eventloop: &mut rumqttc::EventLoop,
    mut pick: impl FnMut(&rumqttc::Event) -> Option<T>,
) -> T {
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let event = eventloop.poll().await.expect("v3.1.1 connection");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
    .expect("expected event within the timeout")
}

/// Same as [`next_v4`] for MQTT 5.
pub async fn next_v5<T>(
    eventloop: &mut rumqttc::v5::EventLoop,
    mut pick: impl FnMut(&rumqttc::v5::Event) -> Option<T>,
) -> T {
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let event = eventloop.poll().await.expect("v5 connection");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
    .expect("expected event within the timeout")
}

/// A bare MQTT client over a TCP socket, speaking through `tern-codec`: for the exact packet
/// sequences (resends with DUP, protocol violations, silence) that real clients never send.
/// Any byte stream a raw client can speak MQTT over (TCP, TLS, WebSocket).
pub trait ClientIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientIo for T {}

pub struct RawClient {
    stream: Box<dyn ClientIo>,
    buf: bytes::BytesMut,
    pub protocol: tern_codec::Protocol,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, protocol: tern_codec::Protocol) -> RawClient {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to broker");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Self::over(stream, protocol)
    }

    /// A raw client on an established stream (TLS, WebSocket: see [`tls_connect`] and
    /// [`ws_connect`]).
    pub fn over(stream: impl ClientIo + 'static, protocol: tern_codec::Protocol) -> RawClient {
        RawClient {
            stream: Box::new(stream),
            buf: bytes::BytesMut::new(),
            protocol,
        }
    }

    /// Connects and sends a CONNECT with the given client ID and clean start, adjusted by
    /// `adjust`; returns the client with the CONNACK, whatever its code.
    pub async fn open(
        addr: SocketAddr,
        protocol: tern_codec::Protocol,
        client_id: &str,
        clean_start: bool,
        adjust: impl FnOnce(&mut tern_codec::Connect),
    ) -> (RawClient, tern_codec::ConnAck) {
        let mut client = RawClient::connect(addr, protocol).await;
        let mut connect = client.connect_packet(client_id, clean_start);
        adjust(&mut connect);
        let ack = client.handshake(connect).await;
        (client, ack)
    }

    /// Like [`RawClient::open`], but the CONNACK must accept the connection.
    pub async fn open_ok(
        addr: SocketAddr,
        protocol: tern_codec::Protocol,
        client_id: &str,
        clean_start: bool,
        adjust: impl FnOnce(&mut tern_codec::Connect),
    ) -> (RawClient, tern_codec::ConnAck) {
        let (client, ack) = Self::open(addr, protocol, client_id, clean_start, adjust).await;
        assert_eq!(
            ack.code,
            tern_codec::ReasonCode::Success,
            "CONNECT of {client_id:?} refused: {ack:?}"
        );
        (client, ack)
    }

    /// Sends CONNECT (built by `connect`) and returns the CONNACK.
    pub async fn handshake(&mut self, connect: tern_codec::Connect) -> tern_codec::ConnAck {
        self.send(tern_codec::Packet::Connect(Box::new(connect)))
            .await;
        match self.recv().await {
            Some(tern_codec::Packet::ConnAck(ack)) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A CONNECT with the given client ID and clean start, other fields empty.
    pub fn connect_packet(&self, client_id: &str, clean_start: bool) -> tern_codec::Connect {
        connect_packet(self.protocol, client_id, clean_start)
    }

    /// Appends the encoding of `packet` to `out` (to write several packets at once).
    pub fn encode(&self, packet: &tern_codec::Packet, out: &mut bytes::BytesMut) {
        packet.encode(self.protocol, out).expect("encode");
    }

    pub async fn send(&mut self, packet: tern_codec::Packet) {
        self.try_send(packet).await.expect("write");
    }

    /// Like [`RawClient::send`], but a write error (the broker went away) is a value.
    pub async fn try_send(&mut self, packet: tern_codec::Packet) -> std::io::Result<()> {
        let mut out = bytes::BytesMut::new();
        self.encode(&packet, &mut out);
        self.try_send_raw(&out).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes).await.expect("write");
    }

    /// Like [`RawClient::send_raw`], but a write error is a value.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next packet, or None once the broker closed the connection. Fails the test
    /// after [`EVENT_TIMEOUT`].
    pub async fn recv(&mut self) -> Option<tern_codec::Packet> {
        self.recv_within(EVENT_TIMEOUT)
            .await
            .expect("a packet or close within the timeout")
    }

    /// Like [`RawClient::recv`], but `Err(())` if nothing happens within `limit` (to assert
    /// that something is *not* sent).
    pub async fn recv_within(&mut self, limit: Duration) -> Result<Option<tern_codec::Packet>, ()> {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(limit, async {
            loop {
                if let Some(packet) =
                    tern_codec::decode(&mut self.buf, self.protocol, 1 << 28).expect("decode")
                {
                    return Some(packet);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .map_err(|_| ())
    }
    /// Subscribes to `filter` and asserts that its SUBACK grants `qos`.
    pub async fn subscribe(&mut self, packet_id: u16, filter: &str, qos: tern_codec::QoS) {
        let options = tern_codec::SubscriptionOptions {
            qos,
            ..tern_codec::SubscriptionOptions::default()
        };
        self.send(tern_codec::Packet::Subscribe(tern_codec::Subscribe {
            packet_id,
            properties: tern_codec::Properties::default(),
            filters: vec![(filter.into(), options)],
        }))
        .await;
        match self.recv().await {
            Some(tern_codec::Packet::SubAck(ack)) => {
                assert_eq!(ack.packet_id, packet_id, "SUBACK packet id");
                assert_eq!(ack.reasons, vec![granted(qos)], "SUBACK for {filter}");
            }
            other => panic!("expected SUBACK for {filter}, got {other:?}"),
        }
    }

    /// Publishes at QoS 1 with `packet_id` and waits for a successful PUBACK.
    pub async fn publish_qos1(
        &mut self,
        packet_id: u16,
        topic: &str,
        payload: impl AsRef<[u8]>,
        retain: bool,
    ) {
        let payload = payload.as_ref();
        let mut p = publish_packet(
            topic,
            tern_codec::QoS::AtLeastOnce,
            packet_id,
            bytes::Bytes::copy_from_slice(payload),
        );
        p.retain = retain;
        self.send(tern_codec::Packet::Publish(p)).await;
        match self.recv().await {
            Some(tern_codec::Packet::PubAck(ack)) => {
                assert_eq!(ack.packet_id, packet_id);
                assert!(
                    !ack.reason.is_error(),
                    "PUBACK for {payload:?} on {topic} failed: {ack:?}"
                );
            }
            other => panic!("expected the PUBACK of {payload:?} on {topic}, got {other:?}"),
        }
    }

    /// Sends DISCONNECT and waits until the broker closes the connection (ignoring PUBLISH
    /// packets still on the way), so that the session is offline before the test goes on.
    pub async fn disconnect(mut self) {
        self.send(tern_codec::Packet::Disconnect(tern_codec::Disconnect::new(
            tern_codec::ReasonCode::Success,
        )))
        .await;
        loop {
            match self.recv().await {
                None => return,
                Some(tern_codec::Packet::Publish(_)) => {}
                Some(other) => panic!("expected the connection to close, got {other:?}"),
            }
        }
    }

    /// The broker closes the connection (without sending anything first).
    pub async fn expect_closed(&mut self, what: &str) {
        if let Some(packet) = self.recv().await {
            panic!("{what}: expected the connection closed, got {packet:?}");
        }
    }

    /// The broker sends DISCONNECT with one of `reasons`, then closes. Returns the reason.
    pub async fn expect_disconnect(
        &mut self,
        reasons: &[tern_codec::ReasonCode],
        what: &str,
    ) -> tern_codec::ReasonCode {
        let reason = match self.recv().await {
            Some(tern_codec::Packet::Disconnect(d)) => {
                assert!(
                    reasons.contains(&d.reason),
                    "{what}: DISCONNECT reason {:?}, expected one of {reasons:?} ({:?})",
                    d.reason,
                    d.properties.reason_string
                );
                d.reason
            }
            other => panic!("{what}: expected DISCONNECT {reasons:?}, got {other:?}"),
        };
        self.expect_closed(what).await;
        reason
    }

    /// Receives one PUBLISH and acknowledges it (QoS 2: PUBREC, PUBREL, PUBCOMP).
    pub async fn expect_publish(&mut self, what: &str) -> tern_codec::Publish {
        match self.recv().await {
            Some(tern_codec::Packet::Publish(p)) => {
                self.ack(&p).await;
                p
            }
            other => panic!("expected PUBLISH ({what}), got {other:?}"),
        }
    }

    /// Acknowledges a received PUBLISH: PUBACK at QoS 1; PUBREC, then PUBCOMP for the
    /// PUBREL at QoS 2.
    pub async fn ack(&mut self, p: &tern_codec::Publish) {
        use tern_codec::{Packet, PubResponse, QoS};
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.send(Packet::PubAck(PubResponse::new(p.packet_id)))
                    .await
            }
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(PubResponse::new(p.packet_id)))
                    .await;
                match self.recv().await {
                    Some(Packet::PubRel(rel)) if rel.packet_id == p.packet_id => {
                        self.send(Packet::PubComp(PubResponse::new(p.packet_id)))
                            .await
                    }
                    other => panic!("expected PUBREL {}, got {other:?}", p.packet_id),
                }
            }
        }
    }
}

/// A CONNECT with the given protocol, client ID and clean start, keep alive 30 s, other
/// fields empty.
pub fn connect_packet(
    protocol: tern_codec::Protocol,
    client_id: &str,
    clean_start: bool,
) -> tern_codec::Connect {
    tern_codec::Connect {
        protocol,
        clean_start,
        keep_alive: 30,
        properties: tern_codec::Properties::default(),
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

/// The SUBACK reason code granting `qos`.
pub fn granted(qos: tern_codec::QoS) -> tern_codec::ReasonCode {
    match qos {
        tern_codec::QoS::AtMostOnce => tern_codec::ReasonCode::Success,
        tern_codec::QoS::AtLeastOnce => tern_codec::ReasonCode::GrantedQoS1,
        tern_codec::QoS::ExactlyOnce => tern_codec::ReasonCode::GrantedQoS2,
    }
}

/// A PUBLISH without DUP, RETAIN or properties.
pub fn publish_packet(
    topic: &str,
    qos: tern_codec::QoS,
    packet_id: u16,
    payload: impl Into<bytes::Bytes>,
) -> tern_codec::Publish {
    tern_codec::Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: tern_codec::Properties::default(),
        payload: payload.into(),
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, made for one test, in PEM
/// files (what `listeners.tls` reads) and as text (what clients trust as their CA).
pub struct TestCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificate in PEM: a client's trusted root.
    pub cert_pem: String,
    _dir: tempfile::TempDir,
}

impl TestCert {
    pub fn localhost() -> TestCert {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let certified = rcgen::generate_simple_self_signed(names).expect("generate a certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        let cert_pem = certified.cert.pem();
        std::fs::write(&cert_file, &cert_pem).expect("write cert.pem");
        std::fs::write(&key_file, certified.signing_key.serialize_pem()).expect("write key.pem");
        TestCert {
            cert_file,
            key_file,
            cert_pem,
            _dir: dir,
        }
    }

    /// Turns on the TLS, WebSocket and WebSocket-over-TLS listeners, on free ports, with
    /// this certificate.
    pub fn enable_all_listeners(&self, config: &mut Config) {
        let l = &mut config.listeners;
        l.tls.enabled = true;
        l.tls.cert_file = self.cert_file.clone();
        l.tls.key_file = self.key_file.clone();
        l.ws.enabled = true;
        l.wss.enabled = true;
        l.wss.cert_file = self.cert_file.clone();
        l.wss.key_file = self.key_file.clone();
        l.use_free_ports();
    }
}

/// A TLS connection to `addr` that trusts only `ca_pem`, for server name `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| std::io::Error::other(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    connector.connect(name, tcp).await
}

/// A WebSocket connection over `stream` to `path`, offering `subprotocol`, as MQTT's byte
/// stream (the broker's own framing adapter, used here from the client side).
pub async fn ws_connect<S>(
    stream: S,
    host: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<tern::net::transport::WsStream<S>, tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{host}{path}").into_client_request()?;
    if let Some(protocol) = subprotocol {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            protocol.parse().expect("a header value"),
        );
    }
    let (ws, _response) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(tern::net::transport::WsStream::new(ws))
}

/// The value of one series (`name{labels}` exactly as exposed) in a Prometheus text
/// exposition; 0 when absent.
pub fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The Python interpreter with paho-mqtt (PyPI, pinned): the virtualenv `scripts/setup.sh
/// --tests` creates under `$TERN_TOOLS` (default `~/.cache/tern-tools`). Panics, saying
/// so, when it is missing.
pub fn paho_python() -> PathBuf {
    let tools = std::env::var_os("TERN_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/tern-tools")))
        .unwrap_or_else(|| PathBuf::from(".cache/tern-tools"));
    let python = tools.join("paho-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh --tests (it installs paho-mqtt from PyPI)",
        python.display()
    );
    python
}

/// A raw HTTP request (the admin API's): (status, parsed JSON body).
pub async fn http(
    method: &'static str,
    url: String,
    token: Option<String>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        let response = match body {
            Some(body) => agent.run(
                req.header("Content-Type", "application/json")
                    .body(body.to_string())
                    .expect("request"),
            ),
            None => agent.run(req.body(()).expect("request")),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url}: {status} body not JSON ({e}): {text}"));
        (status, value)
    })
    .await
    .expect("request thread")
}
