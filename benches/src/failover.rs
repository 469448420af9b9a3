//! Failover, measured on a [`Cluster`] (`tern-cluster-bench --failover-devices N`):
//!
//! - `node_kill`: devices with persistent sessions on node 1 receive QoS 1 messages
//!   published on node 2; node 1 is SIGKILLed; each device reconnects to node 2 (without
//!   clean start, subscribing nothing) until it is let in. Measured: from the kill to each
//!   device's first message on node 2, and the messages each device missed (gaps in its
//!   topic's counter) or got twice.
//! - `leader_kill`: DM senders on node 1 (one unacknowledged DM each); the NATS server
//!   leading the first inbox stream is SIGKILLed. Measured: from the kill to each sender's
//!   first acknowledgement after it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{ByteString, Packet, Protocol, QoS};

use crate::client::{Client, ConnectOptions};
use crate::cluster::Cluster;
use crate::stats::{Latencies, LatencySummary};
use crate::{Error, Result};

/// How often the publisher sends each device's topic a message.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// The longest a failover may take before the run gives up on it.
const PATIENCE: Duration = Duration::from_secs(60);

/// What killing a tern node did to its devices.
#[derive(Debug, Clone)]
pub struct NodeFailover {
    pub devices: usize,
    /// From the kill to the device's first message on the other node, for those that got
    /// one within the run's patience (60 s).
    pub receiving_again: Option<LatencySummary>,
    pub recovered: usize,
    /// Messages of their topics the devices never got, and got twice, over the run.
    pub missed: u64,
    pub duplicates: u64,
}

/// What killing the NATS server leading a stream did to DM senders.
#[derive(Debug, Clone)]
pub struct LeaderFailover {
    pub senders: usize,
    /// From the kill to each sender's first acknowledgement after it.
    pub appends_again: Option<LatencySummary>,
    pub recovered: usize,
}

/// One device's view of its topic's counter.
#[derive(Default)]
struct Counter {
    last: Option<u64>,
    missed: u64,
    duplicates: u64,
}

impl Counter {
    fn saw(&mut self, n: u64) {
        match self.last {
            Some(last) if n <= last => self.duplicates += 1,
            Some(last) => {
                self.missed += n - last - 1;
                self.last = Some(n);
            }
            None => self.last = Some(n),
        }
    }
}

/// See the module's docs.
pub async fn node_kill(cluster: &mut Cluster, devices: usize) -> Result<NodeFailover> {
    let (first, second) = (cluster.nodes[0], cluster.nodes[1]);
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let recovered = Arc::new(Mutex::new(Latencies::default()));
    let (missed, duplicates) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for i in 0..devices {
        let client_id = format!("failover-{i}");
        let mut opts = ConnectOptions::new(&client_id);
        opts.clean_start = false;
        let mut client = connect_patiently(first, &opts).await?;
        client
            .subscribe(&format!("failover/{i}"), QoS::AtLeastOnce)
            .await?;
        let (killed_at, stop, recovered) = (killed_at.clone(), stop.clone(), recovered.clone());
        let (missed, duplicates) = (missed.clone(), duplicates.clone());
        tasks.push(tokio::spawn(async move {
            let mut counter = Counter::default();
            let mut client = Some(client);
            let mut waiting_since: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(connected) = client.as_mut() else {
                    match Client::connect_with(second, Protocol::V311, &opts).await {
                        Ok(again) => client = Some(again),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                    continue;
                };
                let packet =
                    match tokio::time::timeout(Duration::from_millis(200), connected.reader.next())
                        .await
                    {
                        Ok(Ok(packet)) => packet,
                        Ok(Err(_)) => {
                            // Its node is gone: on to the other one.
                            client = None;
                            waiting_since = *killed_at.lock().unwrap_or_else(|e| e.into_inner());
                            continue;
                        }
                        Err(_) => continue,
                    };
                if let Packet::Publish(p) = packet {
                    if let Some(n) = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|s| s.parse().ok())
                    {
                        counter.saw(n);
                    }
                    if let Some(since) = waiting_since.take() {
                        if let Ok(mut all) = recovered.lock() {
                            all.record(since.elapsed());
                        }
                    }
                    let _ = connected.writer.queue_puback(p.packet_id);
                    let _ = connected.writer.flush().await;
                }
            }
            missed.fetch_add(counter.missed, Ordering::Relaxed);
            duplicates.fetch_add(counter.duplicates, Ordering::Relaxed);
        }));
    }
    let publisher = tokio::spawn(publish_counters(second, devices, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    *killed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    cluster.kill_node(0);
    until_all(&recovered, devices).await;
    // A little more traffic after the last device came back, to see gaps close.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.await;
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let recovered = recovered
        .lock()
        .map_err(|_| Error::new("a device task panicked"))?;
    Ok(NodeFailover {
        devices,
        receiving_again: recovered.summary(),
        recovered: recovered.len() as usize,
        missed: missed.load(Ordering::Relaxed),
        duplicates: duplicates.load(Ordering::Relaxed),
    })
}

/// Waits until `recovered` holds a time for each of `all` clients, or [`PATIENCE`] passed.
async fn until_all(recovered: &Mutex<Latencies>, all: usize) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if recovered.lock().map_or(0, |l| l.len()) >= all as u64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects, trying again while the node refuses (the cluster may still be electing the
/// leaders of what a CONNECT writes, after an earlier kill), for up to [`PATIENCE`].
async fn connect_patiently(addr: SocketAddr, opts: &ConnectOptions) -> Result<Client> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match Client::connect_with(addr, Protocol::V311, opts).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Publishes counter `n` to every device's topic each [`PUBLISH_EVERY`], QoS 1, waiting
/// for each round's acknowledgements, until `stop`.
async fn publish_counters(addr: SocketAddr, devices: usize, stop: Arc<AtomicBool>) -> Result<()> {
    let mut client = connect_patiently(addr, &ConnectOptions::new("failover-publisher")).await?;
    let topics: Vec<ByteString> = (0..devices)
        .map(|i| ByteString::from(format!("failover/{i}")))
        .collect();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        n += 1;
        for (i, topic) in topics.iter().enumerate() {
            let id = u16::try_from(i % 65_535 + 1).unwrap_or(1);
            client
                .writer
                .queue_publish(topic, QoS::AtLeastOnce, id, Bytes::from(n.to_string()))?;
        }
        client.writer.flush().await?;
        let mut acked = 0;
        while acked < devices {
            match client.reader.next_timeout(PATIENCE).await? {
                Packet::PubAck(_) => acked += 1,
                _ => continue,
            }
        }
        tokio::time::sleep(PUBLISH_EVERY.saturating_sub(started.elapsed())).await;
    }
    Ok(())
}

/// See the module's docs.
pub async fn leader_kill(cluster: &mut Cluster, senders: usize) -> Result<LeaderFailover> {
    let stream = "TERN_INBOX_0";
    let leader = cluster
        .stream_leader(stream)
        .await
        .ok_or_else(|| Error::new(format!("no leader found for {stream}")))?;
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let again = Arc::new(Mutex::new(Latencies::default()));
    let mut tasks = Vec::new();
    for i in 0..senders {
        let mut opts = ConnectOptions::new(&format!("leader-s{i}"));
        opts.username = Some(format!("ls{i}"));
        let mut client = connect_patiently(cluster.nodes[0], &opts).await?;
        let (killed_at, stop, again) = (killed_at.clone(), stop.clone(), again.clone());
        let topic = ByteString::from(format!("dm/lr{i}"));
        tasks.push(tokio::spawn(async move {
            let mut waiting = true;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if client
                    .writer
                    .queue_publish(&topic, QoS::AtLeastOnce, 1, Bytes::from_static(b"x"))
                    .is_err()
                    || client.writer.flush().await.is_err()
                {
                    return;
                }
                match client.reader.next_timeout(PATIENCE).await {
                    Ok(Packet::PubAck(_)) => {}
                    _ => return,
                }
                let killed = *killed_at.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(killed) = killed.filter(|k| waiting && sent >= *k) {
                    waiting = false;
                    if let Ok(mut all) = again.lock() {
                        all.record(killed.elapsed());
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    *killed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    cluster.kill_nats(leader);
    until_all(&again, senders).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    let again = again
        .lock()
        .map_err(|_| Error::new("a sender task panicked"))?;
    Ok(LeaderFailover {
        senders,
        appends_again: again.summary(),
        recovered: again.len() as usize,
    })
}
