//! Harness for the conformance tests in `tests/`: a real broker on a free loopback port,
//! either inside the test process ([`Broker`], fast, stopped cleanly) or as a child process
//! ([`BrokerProcess`], for tests that SIGKILL it), plus helpers to build real clients.
//!
//! Every test gets its own port and data directory, so tests run in parallel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tern::config::Config;
use tern::server::Server;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;

/// How long a test waits for any one expected event before failing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A config for tests: a free port on 127.0.0.1 and the given data directory.
pub fn test_config(data_dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    }
}

/// The broker running inside the test process.
pub struct Broker {
    pub addr: SocketAddr,
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

    /// A broker on an explicit config (for restarts on the same data directory).
    pub async fn start_config(config: Config) -> Broker {
        let server = Server::start(config.clone()).await.expect("broker starts");
        let addr = server.local_addr().expect("bound address");
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
            config,
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
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

    /// Stops the broker cleanly and starts a new one on the same data directory (and a
    /// new port).
    pub async fn restart(self) -> Broker {
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().expect("literal address");
        let dir = self.stop().await;
        let mut broker = Self::start_config(config).await;
        broker._dir = dir;
        broker
    }
}

/// The broker as a child process (the `tern-test-broker` binary of this package).
pub struct BrokerProcess {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: tokio::process::Child,
}

impl BrokerProcess {
    /// Starts `tern serve` on a free port with `data_dir`; extra CLI args are appended.
    pub async fn start(binary: &str, data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        let mut child = tokio::process::Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn broker process");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("broker stderr") {
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    return addr;
                }
            }
            panic!("broker exited before listening");
        })
        .await
        .expect("broker listens within 60 s");
        // Keep draining its log so the pipe never fills and blocks the broker.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        BrokerProcess {
            addr,
            data_dir: data_dir.to_path_buf(),
            child,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// SIGKILL: no flush, no goodbye.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill broker");
        let _ = self.child.wait().await;
    }
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
pub struct RawClient {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
    pub protocol: tern_codec::Protocol,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, protocol: tern_codec::Protocol) -> RawClient {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to broker");
        RawClient {
            stream,
            buf: bytes::BytesMut::new(),
            protocol,
        }
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
        tern_codec::Connect {
            protocol: self.protocol,
            clean_start,
            keep_alive: 30,
            properties: tern_codec::Properties::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    pub async fn send(&mut self, packet: tern_codec::Packet) {
        let mut out = bytes::BytesMut::new();
        packet.encode(self.protocol, &mut out).expect("encode");
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write");
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
}
