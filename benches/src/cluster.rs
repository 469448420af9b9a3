//! Several tern nodes on a three-server NATS JetStream cluster, all on this machine
//! (`tern-cluster-bench`): processes, and the measurements the cluster issue asks for.
//!
//! - `run_pairs` with [`Shape::Dms`]: cross-node direct messages. Senders on node 1
//!   write QoS 1 DMs to recipients whose devices are on node 2 (replicas 3): acknowledged
//!   DMs/s with the PUBACK's p50/p99, and deliveries/s with the end-to-end p50/p99.
//! - `engine`: the engine's own ceiling for the same work: an async-nats client appending
//!   to the same inbox streams with the same compare-and-set (one append in flight per
//!   log, two logs per DM as tern does), so tern's share of it is known.
//! - `run_pairs` with [`Shape::Plain`]: QoS 1 pairs on plain topics, publishers on one
//!   node and subscribers on the other, through tern and through NATS's own MQTT support
//!   on the same servers (the anchor), with clean and with persistent subscriber sessions.
//! - [`failover`](crate::failover): SIGKILL of a NATS stream leader and of a tern node.
//!
//! Every process (the 3 NATS servers, the 2 nodes, the load) shares this machine's cores.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tern_codec::{ByteString, Packet, Protocol, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::broker::free_port;
use crate::client::{Client, ConnectOptions};
use crate::stats::{payload_latency, stamped_payload, Latencies, LatencySummary};
use crate::{Error, Result};

/// A process killed when dropped.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Three NATS servers in one JetStream cluster and two tern nodes on it.
pub struct Cluster {
    pub nats_urls: Vec<String>,
    pub nodes: Vec<SocketAddr>,
    /// The NATS servers' own MQTT listeners (NATS's MQTT support, the anchor).
    pub nats_mqtt: Vec<SocketAddr>,
    /// The NATS servers' monitoring ports.
    monitors: Vec<u16>,
    /// The tern nodes' admin ports (`GET /metrics`).
    admin: Vec<u16>,
    nats_processes: Vec<Process>,
    node_processes: Vec<Process>,
    _dir: PathBuf,
}

impl Cluster {
    /// Starts the NATS servers (`nats_server`), waits until JetStream is healthy on each,
    /// then the tern nodes (`tern`, shards `shards`), under `dir`.
    pub async fn start(
        nats_server: &Path,
        tern: &Path,
        dir: &Path,
        shards: u32,
    ) -> Result<Cluster> {
        Cluster::start_with_ttl(nats_server, tern, dir, shards, 10_000, "").await
    }

    /// [`Cluster::start`] with the nodes' `cluster.node_ttl_ms`, and `more` (TOML lines)
    /// in their `[cluster]` table.
    pub async fn start_with_ttl(
        nats_server: &Path,
        tern: &Path,
        dir: &Path,
        shards: u32,
        node_ttl_ms: u64,
        more: &str,
    ) -> Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let mut processes = Vec::new();
        let ports: Vec<(u16, u16, u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        for (i, (client, route, monitor, mqtt)) in ports.iter().enumerate() {
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("\"nats://127.0.0.1:{}\"", p.1))
                .collect();
            let name = format!("nats-{}", i + 1);
            // A config file: MQTT has no command-line flags.
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{client}\"\n\
                     http: \"127.0.0.1:{monitor}\"\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: bench, listen: \"127.0.0.1:{route}\", routes: [{}] }}\n\
                     mqtt {{ listen: \"127.0.0.1:{mqtt}\" }}\n",
                    dir.join(&name).display(),
                    routes.join(", ")
                ),
            )?;
            let child = Command::new(nats_server)
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| Error::new(format!("cannot run {}: {e}", nats_server.display())))?;
            processes.push(Process { child });
        }
        for (_, _, monitor, _) in &ports {
            until_healthy(*monitor).await?;
        }
        let nats_mqtt = ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p.3)))
            .collect();
        let nats_urls: Vec<String> = ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.0))
            .collect();
        let mut nodes = Vec::new();
        let mut node_processes = Vec::new();
        let mut admin = Vec::new();
        for i in 1..=2 {
            let port = free_port()?;
            let admin_port = free_port()?;
            let config = dir.join(format!("tern-{i}.toml"));
            let urls: Vec<String> = nats_urls.iter().map(|u| format!("\"{u}\"")).collect();
            std::fs::write(
                &config,
                format!(
                    "data_dir = \"{}\"\nallow_anonymous = true\n\
                     [listeners.tcp]\nlisten = \"127.0.0.1:{port}\"\n\
                     [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[log]\nlevel = \"warn\"\n\
                     [cluster]\nengine = \"nats\"\nnode_id = \"node-{i}\"\n\
                     nats_urls = [{}]\nshards = {shards}\nnode_ttl_ms = {node_ttl_ms}\n{more}\n",
                    dir.join(format!("tern-{i}")).display(),
                    urls.join(", ")
                ),
            )?;
            let log = std::fs::File::create(dir.join(format!("tern-{i}.log")))?;
            let child = Command::new(tern)
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| Error::new(format!("cannot run {}: {e}", tern.display())))?;
            node_processes.push(Process { child });
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            until_listening(addr).await?;
            nodes.push(addr);
            admin.push(admin_port);
        }
        Ok(Cluster {
            nats_urls,
            nodes,
            nats_mqtt,
            monitors: ports.iter().map(|p| p.2).collect(),
            admin,
            nats_processes: processes,
            node_processes,
            _dir: dir.to_path_buf(),
        })
    }

    /// SIGKILLs tern node `i` (0-based).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(node) = self.node_processes.get_mut(i) {
            let _ = node.child.start_kill();
        }
    }

    /// SIGKILLs NATS server `i` (0-based).
    pub fn kill_nats(&mut self, i: usize) {
        if let Some(server) = self.nats_processes.get_mut(i) {
            let _ = server.child.start_kill();
        }
    }

    /// Which NATS server (0-based) leads stream `name`, as the first server that answers
    /// its monitoring port says.
    pub async fn stream_leader(&self, name: &str) -> Option<usize> {
        for monitor in &self.monitors {
            let Ok(body) = http_get(*monitor, "/jsz?streams=true").await else {
                continue;
            };
            let Ok(jsz) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let leader = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|stream| stream["name"] == name)
                .and_then(|stream| stream["cluster"]["leader"].as_str())
                .and_then(|leader| leader.strip_prefix("nats-"))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(n) = leader {
                return Some(n - 1);
            }
        }
        None
    }
}

impl Cluster {
    /// The value of the counter `name` in node `i`'s (0-based) `/metrics`, summed over
    /// its label sets.
    pub async fn node_counter(&self, i: usize, name: &str) -> Result<f64> {
        let port = self
            .admin
            .get(i)
            .ok_or_else(|| Error::new(format!("no node {i}")))?;
        let text = http_get(*port, "/metrics").await?;
        Ok(text
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

/// The body of `GET path` on a local monitoring port.
async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string()))
}

/// Waits until a NATS server's `/healthz` says ok (JetStream has its meta leader).
async fn until_healthy(monitor: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", monitor)).await {
            let request = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
            let mut answer = String::new();
            let answered = stream.write_all(request.as_bytes()).await.is_ok()
                && stream.read_to_string(&mut answer).await.is_ok();
            if answered
                && (answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::new(format!(
        "NATS server (monitor port {monitor}) not healthy within 60 s"
    )))
}

async fn until_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::new(format!(
        "tern node on {addr} not listening within 120 s"
    )))
}

/// Runs `tasks` for `warmup`, then counts for `duration` (`measuring` set), then tells
/// them to `stop` and waits for them; returns the measured window in seconds.
async fn timed(
    measuring: &AtomicBool,
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    warmup: Duration,
    duration: Duration,
) -> f64 {
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let window_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
    }
    window_secs
}

/// What a timed run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Acknowledged operations per second (DMs, or appends) in the window.
    pub rate: f64,
    /// Time to the acknowledgement.
    pub ack: Option<LatencySummary>,
    /// Deliveries per second to the recipients (DMs only).
    pub delivered: Option<f64>,
    /// Publish to delivery (DMs only).
    pub end_to_end: Option<LatencySummary>,
    /// Inbox entries per JetStream message the sending node appended (tern DMs only).
    pub entries_per_append: Option<f64>,
    /// The sending node's mean time from an append's publish to its acknowledgement, in
    /// microseconds (tern DMs only).
    pub append_us: Option<f64>,
}

/// What the pairs of a run send: chat DMs (`dm/r{i}` into `inbox/r{i}/#`, logged in as
/// `s{i}` and `r{i}`) or plain topics (`pairs/{i}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Dms,
    /// Plain topics; `persistent`: the subscribers' sessions are persistent (clean
    /// session off).
    Plain {
        persistent: bool,
    },
}

/// `pairs` QoS 1 publishers on `from`, each to its own subscriber on `to` (`shape`),
/// `window` unacknowledged at most per publisher, `payload` bytes: acknowledged and
/// delivered messages/s, with their latencies. Any MQTT broker's two nodes will do.
#[allow(clippy::too_many_arguments)]
pub async fn run_pairs(
    shape: Shape,
    from: SocketAddr,
    to: SocketAddr,
    pairs: usize,
    window: usize,
    payload: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Measured> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let ack_latency = Arc::new(Mutex::new(Latencies::default()));
    let e2e_latency = Arc::new(Mutex::new(Latencies::default()));
    // Client ids of their own per shape: a persistent session left by one run must not
    // meet a client of another user in the next.
    let tag = match shape {
        Shape::Dms => "dm",
        Shape::Plain { persistent: false } => "clean",
        Shape::Plain { persistent: true } => "kept",
    };
    let mut recipients = Vec::new();
    for i in 0..pairs {
        let mut opts = ConnectOptions::new(&format!("bench-{tag}-r{i}"));
        let filter = match shape {
            Shape::Dms => {
                opts.username = Some(format!("r{i}"));
                format!("inbox/r{i}/#")
            }
            Shape::Plain { persistent } => {
                opts.clean_start = !persistent;
                format!("pairs/{i}")
            }
        };
        let mut client = Client::connect_with(to, Protocol::V311, &opts).await?;
        client.subscribe(&filter, QoS::AtLeastOnce).await?;
        recipients.push(client);
    }
    let mut senders = Vec::new();
    for i in 0..pairs {
        let mut opts = ConnectOptions::new(&format!("bench-{tag}-s{i}"));
        if shape == Shape::Dms {
            opts.username = Some(format!("s{i}"));
        }
        senders.push(Client::connect_with(from, Protocol::V311, &opts).await?);
    }
    // The subscribers' nodes subscribe in NATS after their SUBACKs (the warm-up covers
    // the rest).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tasks = Vec::new();
    for mut client in recipients {
        let (measuring, stop, delivered, latency) = (
            measuring.clone(),
            stop.clone(),
            delivered.clone(),
            e2e_latency.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Latencies::default();
            while !stop.load(Ordering::Relaxed) {
                let packet =
                    match tokio::time::timeout(Duration::from_millis(200), client.reader.next())
                        .await
                    {
                        Ok(Ok(packet)) => packet,
                        Ok(Err(_)) => break,
                        Err(_) => continue,
                    };
                // What one read brought is acknowledged with one write, as a client with
                // a write buffer does: the tool's own syscalls stay out of the measure.
                let mut next = Some(packet);
                while let Some(packet) = next {
                    if let Packet::Publish(p) = packet {
                        if measuring.load(Ordering::Relaxed) {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            if let Some(d) = payload_latency(&p.payload) {
                                local.record(d);
                            }
                        }
                        if p.qos != QoS::AtMostOnce {
                            let _ = client.writer.queue_puback(p.packet_id);
                        }
                    }
                    next = client.reader.try_next().ok().flatten();
                }
                if client.writer.pending() > 0 && client.writer.flush().await.is_err() {
                    break;
                }
            }
            if let Ok(mut all) = latency.lock() {
                all.merge(&local);
            }
        }));
    }
    let filler = Bytes::from(vec![b'x'; payload.max(16)]);
    for (i, mut client) in senders.into_iter().enumerate() {
        let (measuring, stop, acked, latency, filler) = (
            measuring.clone(),
            stop.clone(),
            acked.clone(),
            ack_latency.clone(),
            filler.clone(),
        );
        let topic = ByteString::from(match shape {
            Shape::Dms => format!("dm/r{i}"),
            Shape::Plain { .. } => format!("pairs/{i}"),
        });
        tasks.push(tokio::spawn(async move {
            let mut sent_at: Vec<Option<Instant>> = vec![None; window + 1];
            let mut in_flight = 0usize;
            let mut next_id = 1u16;
            let mut local = Latencies::default();
            loop {
                while in_flight < window && !stop.load(Ordering::Relaxed) {
                    let id = next_id;
                    next_id = if next_id as usize >= window {
                        1
                    } else {
                        next_id + 1
                    };
                    let body = stamped_payload(payload.max(16), &filler);
                    if client
                        .writer
                        .queue_publish(&topic, QoS::AtLeastOnce, id, body)
                        .is_err()
                    {
                        return;
                    }
                    sent_at[id as usize] = Some(Instant::now());
                    in_flight += 1;
                }
                if client.writer.flush().await.is_err() {
                    break;
                }
                if stop.load(Ordering::Relaxed) && in_flight == 0 {
                    break;
                }
                let packet =
                    match tokio::time::timeout(Duration::from_secs(30), client.reader.next()).await
                    {
                        Ok(Ok(packet)) => packet,
                        _ => break,
                    };
                // Every PUBACK one read brought frees its slot before the window refills.
                let mut next = Some(packet);
                while let Some(packet) = next {
                    if let Packet::PubAck(ack) = packet {
                        in_flight = in_flight.saturating_sub(1);
                        let sent = sent_at
                            .get_mut(ack.packet_id as usize)
                            .and_then(Option::take);
                        if measuring.load(Ordering::Relaxed) {
                            acked.fetch_add(1, Ordering::Relaxed);
                            if let Some(sent) = sent {
                                local.record(sent.elapsed());
                            }
                        }
                    }
                    next = client.reader.try_next().ok().flatten();
                }
            }
            if let Ok(mut all) = latency.lock() {
                all.merge(&local);
            }
        }));
    }
    let window_secs = timed(&measuring, &stop, tasks, warmup, duration).await;
    let summary = |l: &Arc<Mutex<Latencies>>| l.lock().ok().and_then(|l| l.summary());
    Ok(Measured {
        rate: acked.load(Ordering::Relaxed) as f64 / window_secs,
        ack: summary(&ack_latency),
        delivered: Some(delivered.load(Ordering::Relaxed) as f64 / window_secs),
        end_to_end: summary(&e2e_latency),
        entries_per_append: None,
        append_us: None,
    })
}

/// The engine alone: `logs` logs, each one append in flight at a time, every append
/// conditional on the log's last sequence and carrying `entries` entries of `payload`
/// bytes (plus the 32 bytes tern adds to each: role, dedupe id, lengths), as tern's
/// appender makes them (into the streams tern made: `shards` of them). Every other log
/// is a recipient's: a second connection takes its deliveries, as the recipients' node
/// does. The rate counts entries appended; `delivered`, entries delivered.
pub async fn engine(
    nats_urls: &[String],
    shards: u32,
    logs: usize,
    entries: usize,
    payload: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Measured> {
    use async_nats::jetstream;
    let entries = entries.max(1);
    let addrs: Vec<async_nats::ServerAddr> =
        nats_urls.iter().filter_map(|u| u.parse().ok()).collect();
    let client = async_nats::connect(addrs)
        .await
        .map_err(|e| Error::new(format!("cannot connect to NATS: {e}")))?;
    let js = jetstream::ContextBuilder::new()
        .backpressure_on_inflight(true)
        .build(client);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Latencies::default()));
    let body = Bytes::from(vec![b'x'; entries * (payload + 32)]);
    let mut tasks = Vec::new();
    let delivered = Arc::new(AtomicU64::new(0));
    let receiver = async_nats::connect(
        nats_urls
            .iter()
            .rev()
            .filter_map(|u| u.parse().ok())
            .collect::<Vec<async_nats::ServerAddr>>(),
    )
    .await
    .map_err(|e| Error::new(format!("cannot connect to NATS: {e}")))?;
    for i in (1..logs).step_by(2) {
        let mut deliveries = receiver
            .subscribe(format!("tern.deliver.engine-bench-{i}"))
            .await
            .map_err(|e| Error::new(format!("cannot subscribe in NATS: {e}")))?;
        let (measuring, stop, delivered) = (measuring.clone(), stop.clone(), delivered.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(message)) =
                    tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await
                else {
                    continue;
                };
                if measuring.load(Ordering::Relaxed) {
                    let count = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Tern-Count"))
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(0);
                    delivered.fetch_add(count, Ordering::Relaxed);
                }
            }
        }));
    }
    receiver
        .flush()
        .await
        .map_err(|e| Error::new(format!("NATS: {e}")))?;
    for i in 0..logs {
        let subject = format!("tern.inbox.{}.engine-bench-{i}", i as u32 % shards.max(1));
        let (js, measuring, stop, acked, latency, body) = (
            js.clone(),
            measuring.clone(),
            stop.clone(),
            acked.clone(),
            latency.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut last = 0u64;
            let mut seq = 0u64;
            let mut local = Latencies::default();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let publish = jetstream::message::PublishMessage::build()
                    .payload(body.clone())
                    .expected_last_subject_sequence(last)
                    .header("Tern-Seq", seq.to_string().as_str())
                    .header("Tern-Count", entries.to_string().as_str());
                let result = match js.send_publish(subject.clone(), publish).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(ack) => {
                        last = ack.sequence;
                        seq += entries as u64;
                        if measuring.load(Ordering::Relaxed) {
                            acked.fetch_add(entries as u64, Ordering::Relaxed);
                            local.record(started.elapsed());
                        }
                    }
                    Err(_) => {
                        // A log that already has entries (an earlier run): start after
                        // its last one.
                        let Ok(mut stream) = js
                            .get_stream(format!("TERN_INBOX_{}", i as u32 % shards.max(1)))
                            .await
                        else {
                            continue;
                        };
                        if let Ok(message) = stream
                            .get_last_raw_message_by_subject(subject.as_str())
                            .await
                        {
                            last = message.sequence;
                        }
                        let _ = stream.info().await;
                    }
                }
            }
            if let Ok(mut all) = latency.lock() {
                all.merge(&local);
            }
        }));
    }
    let window_secs = timed(&measuring, &stop, tasks, warmup, duration).await;
    Ok(Measured {
        rate: acked.load(Ordering::Relaxed) as f64 / window_secs,
        ack: latency.lock().ok().and_then(|l| l.summary()),
        delivered: Some(delivered.load(Ordering::Relaxed) as f64 / window_secs),
        end_to_end: None,
        entries_per_append: None,
        append_us: None,
    })
}
