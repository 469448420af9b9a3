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
    /// Its own JetStream directory; `None` when its cluster keeps it across restarts.
    _store: Option<tempfile::TempDir>,
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

/// Makes `config` a node named `node` of the cluster on the NATS servers `nats_urls`, with
/// the default three replicas.
pub fn join_all(config: &mut tern::config::Config, node: &str, nats_urls: &[String]) {
    join(config, node, &nats_urls[0]);
    config.cluster.nats_urls = nats_urls.to_vec();
    config.cluster.replicas = 3;
}

/// NATS servers in one JetStream cluster on loopback. Each keeps its data in a directory of
/// the cluster's, so that a server killed (SIGKILL) restarts with its state, on its ports.
pub struct NatsCluster {
    servers: Vec<Option<NatsServer>>,
    names: Vec<String>,
    args: Vec<Vec<String>>,
    _dir: tempfile::TempDir,
    /// One cluster at a time per test process: three servers each, elections, and the
    /// nodes on top, several at once on two cores, made JetStream take over 30 s to elect
    /// its leaders.
    _alone: tokio::sync::OwnedMutexGuard<()>,
}

/// Held by the running [`NatsCluster`] of this process.
static ONE_CLUSTER: std::sync::LazyLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(Default::default);

impl NatsCluster {
    /// `n` servers, once every one of them reports JetStream healthy.
    pub async fn start(n: usize) -> NatsCluster {
        let alone = ONE_CLUSTER.clone().lock_owned().await;
        let dir = tempfile::tempdir().expect("temp dir for the NATS cluster");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let names: Vec<String> = (1..=n).map(|i| format!("nats-{i}")).collect();
        let args: Vec<Vec<String>> = (0..n)
            .map(|i| {
                let routes: Vec<String> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", ports[j].1))
                    .collect();
                vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    ports[i].0.to_string(),
                    "-m".into(),
                    "-1".into(),
                    "-n".into(),
                    names[i].clone(),
                    "-js".into(),
                    "-sd".into(),
                    dir.path().join(&names[i]).to_string_lossy().into_owned(),
                    "--cluster_name".into(),
                    "tern-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", ports[i].1),
                    "--routes".into(),
                    routes.join(","),
                ]
            })
            .collect();
        let started =
            futures_util::future::join_all(args.iter().map(|args| spawn_kept(args))).await;
        let cluster = NatsCluster {
            servers: started.into_iter().map(Some).collect(),
            names,
            args,
            _dir: dir,
            _alone: alone,
        };
        for i in 0..n {
            cluster.until_healthy(i).await;
        }
        cluster
    }

    /// The client URLs of every server, running or not.
    pub fn urls(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|args| format!("nats://127.0.0.1:{}", args[3]))
            .collect()
    }

    /// Server `i` (from 0), if it runs.
    pub fn server(&self, i: usize) -> Option<&NatsServer> {
        self.servers[i].as_ref()
    }

    /// SIGKILL of server `i`.
    pub async fn kill(&mut self, i: usize) {
        if let Some(server) = self.servers[i].take() {
            server.kill().await;
        }
    }

    /// Starts server `i` again with its data and ports, and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "nats server {i} still runs");
        self.servers[i] = Some(spawn_kept(&self.args[i]).await);
        self.until_healthy(i).await;
    }

    /// Which server leads JetStream stream `name` now (asked of a running server).
    pub async fn stream_leader(&self, name: &str) -> Option<usize> {
        let server = self.servers.iter().flatten().next()?;
        let jsz = server.monitoring("jsz?streams=true").await;
        let leader = jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .find(|stream| stream["name"] == name)?["cluster"]["leader"]
            .as_str()?
            .to_string();
        self.names.iter().position(|n| *n == leader)
    }

    async fn until_healthy(&self, i: usize) {
        let server = self.servers[i].as_ref().expect("a running server");
        let url = format!("http://127.0.0.1:{}/healthz", server.monitor);
        for _ in 0..600 {
            let url = url.clone();
            let healthy = tokio::task::spawn_blocking(move || {
                ureq::get(&url)
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_to_string().ok())
                    .is_some_and(|body| body.contains("ok"))
            })
            .await
            .unwrap_or(false);
            if healthy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("nats server {} not healthy within 60 s", self.names[i]);
    }
}

async fn spawn_kept(args: &[String]) -> NatsServer {
    let (child, port, monitor) = spawn(args).await;
    NatsServer {
        port,
        monitor,
        child,
        _store: None,
    }
}

/// A port free on 127.0.0.1 now (for the servers' routes, which must be known up front).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A tern node as a process (the `tern` binary at `binary`: tests SIGKILL and SIGSTOP
/// it) named `node` on `nats`, with replicas 1 and a `node_ttl_ms` lease; its config and
/// data live in `dir`.
pub async fn process_node(
    binary: &str,
    nats: &NatsServer,
    node: &str,
    node_ttl_ms: u64,
    dir: &std::path::Path,
) -> crate::BrokerProcess {
    let config = dir.join(format!("{node}.toml"));
    std::fs::write(
        &config,
        format!(
            "[cluster]\nengine = \"nats\"\nnode_id = \"{node}\"\nnats_urls = [\"{}\"]\n\
             replicas = 1\nnode_ttl_ms = {node_ttl_ms}\n",
            nats.url()
        ),
    )
    .expect("write the node's config");
    crate::BrokerProcess::start(
        binary,
        &dir.join(format!("{node}-data")),
        &["--config", &config.to_string_lossy()],
    )
    .await
}

impl NatsServer {
    /// A single server with JetStream on a port of its choosing.
    pub async fn start() -> NatsServer {
        Self::start_with(NatsOptions::default()).await
    }

    pub async fn start_with(options: NatsOptions) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the NATS store");
        let port = options.port.map_or("-1".to_string(), |p| p.to_string());
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", &port, "-m", "-1"]
            .map(String::from)
            .to_vec();
        if !options.without_jetstream {
            args.extend(["-js".to_string(), "-sd".to_string()]);
            args.push(store.path().to_string_lossy().into_owned());
        }
        let (child, port, monitor) = spawn(&args).await;
        NatsServer {
            port,
            monitor,
            child,
            _store: Some(store),
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

    /// Two tern nodes on this server with lease `node_ttl_ms`: `a`, a process (the `tern`
    /// binary at `binary`, its files in `dir`: tests SIGKILL or SIGSTOP it), and `b` in
    /// this process.
    pub async fn process_and_local_node(
        &self,
        binary: &str,
        node_ttl_ms: u64,
        dir: &std::path::Path,
    ) -> (crate::BrokerProcess, crate::Broker) {
        let a = process_node(binary, self, "a", node_ttl_ms, dir).await;
        let url = self.url();
        let b = crate::Broker::start_with(|c| {
            join(c, "b", &url);
            c.cluster.node_ttl_ms = node_ttl_ms;
        })
        .await;
        (a, b)
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

/// Starts `nats-server` with `args`; returns it with its client and monitoring ports once
/// it says it is ready.
async fn spawn(args: &[String]) -> (Child, u16, u16) {
    let mut child = Command::new(binary())
        .args(args)
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
    // client port once the server says it is ready, or its log if it ended before.
    tokio::spawn(async move {
        let mut ready = Some(ready);
        let (mut port, mut monitor) = (None, None);
        let mut early = Vec::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.split("Listening for client connections on ").nth(1) {
                port = port_of(addr);
            }
            if let Some(addr) = line.split("Starting http monitor on ").nth(1) {
                monitor = port_of(addr);
            }
            if ready.is_some() {
                early.push(line.clone());
            }
            if line.contains("Server is ready") {
                if let (Some(tx), Some(port), Some(monitor)) = (ready.take(), port, monitor) {
                    let _ = tx.send(Ok((port, monitor)));
                }
            }
        }
        if let Some(tx) = ready {
            let _ = tx.send(Err(early.join("\n")));
        }
    });
    let (port, monitor) = tokio::time::timeout(Duration::from_secs(20), port)
        .await
        .expect("nats-server ready within 20 s")
        .expect("the log reader answers")
        .unwrap_or_else(|log| panic!("nats-server {args:?} exited before it was ready:\n{log}"));
    (child, port, monitor)
}

fn port_of(addr: &str) -> Option<u16> {
    addr.trim().rsplit(':').next().and_then(|p| p.parse().ok())
}
