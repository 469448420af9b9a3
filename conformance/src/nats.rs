//! A real `nats-server` for the cluster tests, as a child process on loopback: JetStream on,
//! its store in a temporary directory, its client port chosen by the server itself (read
//! back from its log) unless the test names one.
//!
//! The binary is `$TERN_NATS_SERVER`, or the one `scripts/setup.sh --tests` installs under
//! `~/.cache/tern-tools/nats-venv/bin/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Where the test finds `nats-server`.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TERN_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let tools = std::env::var_os("TERN_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/tern-tools")
        });
    tools.join("nats-venv/bin/nats-server")
}

/// One running NATS server, killed when dropped.
pub struct NatsServer {
    pub port: u16,
    /// The HTTP monitoring port (`/connz` and the rest).
    pub monitor: u16,
    child: Child,
    _store: tempfile::TempDir,
}

/// How to start a server.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsOptions {
    /// Client port; `None`: one the server picks.
    pub port: Option<u16>,
    /// Leave JetStream off (a misconfigured engine).
    pub without_jetstream: bool,
}

/// Makes `config` a node named `node` of the cluster on the NATS server at `nats_url`.
pub fn join(config: &mut tern::config::Config, node: &str, nats_url: &str) {
    config.cluster.engine = tern::config::ClusterEngine::Nats;
    config.cluster.node_id = node.to_string();
    config.cluster.nats_urls = vec![nats_url.to_string()];
    config.cluster.replicas = 1;
    config.im.operators = vec!["ops".into()];
}

impl NatsServer {
    /// A single server with JetStream on a port of its choosing.
    pub async fn start() -> NatsServer {
        Self::start_with(NatsOptions::default()).await
    }

    pub async fn start_with(options: NatsOptions) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the NATS store");
        let port = options.port.map_or("-1".to_string(), |p| p.to_string());
        let mut command = Command::new(binary());
        command.args(["-a", "127.0.0.1", "-p", &port, "-m", "-1"]);
        if !options.without_jetstream {
            command.arg("-js").arg("-sd").arg(store.path());
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (scripts/setup.sh --tests installs it)",
                    binary().display()
                )
            });
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready, port) = oneshot::channel();
        // Reads the log to the end (a full pipe would stop the server) and reports the
        // client port once the server says it is ready.
        tokio::spawn(async move {
            let mut ready = Some(ready);
            let (mut port, mut monitor) = (None, None);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.split("Listening for client connections on ").nth(1) {
                    port = port_of(addr);
                }
                if let Some(addr) = line.split("Starting http monitor on ").nth(1) {
                    monitor = port_of(addr);
                }
                if line.contains("Server is ready") {
                    if let (Some(tx), Some(port), Some(monitor)) = (ready.take(), port, monitor) {
                        let _ = tx.send((port, monitor));
                    }
                }
            }
        });
        let (port, monitor) = tokio::time::timeout(Duration::from_secs(20), port)
            .await
            .expect("nats-server ready within 20 s")
            .expect("nats-server exited before it was ready");
        NatsServer {
            port,
            monitor,
            child,
            _store: store,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A tern node named `node` on this server (replicas 1; the user `ops` an operator).
    pub async fn node(&self, node: &str) -> crate::Broker {
        let url = self.url();
        crate::Broker::start_with(|c| join(c, node, &url)).await
    }

    /// The server's open client connections (`/connz`), as JSON.
    pub async fn connections(&self) -> serde_json::Value {
        self.connz("subs=detail").await
    }

    /// How many client connections the server has seen close.
    pub async fn closed_connections(&self) -> u64 {
        self.connz("state=closed").await["total"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Messages the JetStream stream `name` holds now (0 if it does not exist yet).
    pub async fn stream_messages(&self, name: &str) -> u64 {
        let jsz = self.monitoring("jsz?streams=true").await;
        jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .find(|stream| stream["name"] == name)
            .and_then(|stream| stream["state"]["messages"].as_u64())
            .unwrap_or(0)
    }

    async fn connz(&self, query: &str) -> serde_json::Value {
        self.monitoring(&format!("connz?{query}")).await
    }

    async fn monitoring(&self, path: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/{path}", self.monitor);
        tokio::task::spawn_blocking(move || {
            let body = ureq::get(&url)
                .call()
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
                .body_mut()
                .read_to_string()
                .expect("read the monitoring answer");
            serde_json::from_str(&body).expect("monitoring answers JSON")
        })
        .await
        .expect("monitoring request")
    }

    /// SIGKILL.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn port_of(addr: &str) -> Option<u16> {
    addr.trim().rsplit(':').next().and_then(|p| p.parse().ok())
}
