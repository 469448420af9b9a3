//! Durable: QoS 1 messages for offline persistent sessions, as steps the caller strings
//! together around broker restarts (`tern-compare` does: create the sessions, publish,
//! restart the broker, time its first CONNACK and first queued delivery, drain).
//!
//! - [`create_sessions`]: `sessions` clients (`{run id}-d{i}`, clean session false)
//!   subscribe to one topic at QoS 1 and disconnect: persistent sessions, now offline.
//! - [`publish_count`]: one publisher sends `messages` QoS 1 PUBLISHes to that topic at full
//!   speed within its window of `inflight` unacknowledged; the acknowledged rate is what
//!   the broker persisted per second (each message queued once per session).
//! - [`first_delivery`]: after a restart, one session reconnects and waits for its first
//!   queued message (left unacknowledged, so that it is sent again).
//! - [`drain_sessions`]: every session reconnects and receives (and acknowledges) its queue;
//!   every payload carries its sequence number, so duplicates (QoS 1 redeliveries) are told
//!   apart from new messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tern_codec::{ByteString, Packet, QoS};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Client, ConnectOptions};
use crate::error::{Error, Result};
use crate::run::Options;
use crate::stats::{now_nanos, payload_latency, Latencies, LatencySummary};

/// Connections in progress at once.
const PARALLEL: usize = 64;

#[derive(Debug, Clone)]
pub struct DurableConfig {
    pub sessions: usize,
    /// Messages the publisher sends (each queued for every session).
    pub messages: usize,
    /// Read buffer of a draining session.
    pub buffer: usize,
    /// A draining session gives up after this long without a message.
    pub idle_timeout: Duration,
}

impl DurableConfig {
    pub fn new(sessions: usize, messages: usize) -> DurableConfig {
        DurableConfig {
            sessions,
            messages,
            buffer: 16 * 1024,
            idle_timeout: Duration::from_secs(20),
        }
    }

    /// The topic every session subscribes to.
    pub fn topic(opts: &Options) -> String {
        opts.topic("durable")
    }

    fn client_id(opts: &Options, i: usize) -> String {
        format!("{}-d{i}", opts.run_id)
    }
}

/// A payload of `len` bytes (at least 16): send time, then sequence number.
pub fn numbered_payload(len: usize, seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(len.max(16));
    b.put_u64_le(now_nanos());
    b.put_u64_le(seq);
    b.resize(len.max(16), b'x');
    b.freeze()
}

fn payload_seq(p: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(8..16)?.try_into().ok()?))
}

/// Creates the offline persistent sessions; returns how long it took.
pub async fn create_sessions(opts: &Options, cfg: &DurableConfig) -> Result<Duration> {
    let started = Instant::now();
    let topic = DurableConfig::topic(opts);
    let sessions = (0..cfg.sessions).map(|i| {
        (
            ConnectOptions::new(&DurableConfig::client_id(opts, i)),
            topic.clone(),
        )
    });
    leave_offline(opts, sessions).await?;
    Ok(started.elapsed())
}

/// Each (client, filter) connects with a persistent session, subscribes to its filter at
/// QoS 1 and disconnects, [`PARALLEL`] at a time: sessions that queue what comes for them.
pub async fn leave_offline(
    opts: &Options,
    sessions: impl Iterator<Item = (ConnectOptions, String)>,
) -> Result<()> {
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut set = JoinSet::new();
    for (mut conn, filter) in sessions {
        let (addr, protocol) = (opts.addr, opts.protocol);
        conn.clean_start = false;
        conn.buffer = 1024;
        let permits = permits.clone();
        set.spawn(async move {
            let _p = permits.acquire().await;
            let mut c = Client::connect_with(addr, protocol, &conn).await?;
            c.subscribe(&filter, QoS::AtLeastOnce).await?;
            c.writer.disconnect().await;
            Ok::<_, Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| Error::new(format!("session task failed: {e}")))??;
    }
    Ok(())
}

/// What [`publish_count`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishReport {
    pub sent: u64,
    pub acked: u64,
    /// From the first PUBLISH to the last PUBACK.
    pub secs: f64,
    /// From the write to the PUBACK.
    pub ack_latency: Option<LatencySummary>,
}

impl PublishReport {
    pub fn acked_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.acked as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// One publisher (`client_id`, user `username` when given) sends `n` QoS 1 messages to
/// `topic` at full speed, at most `inflight` unacknowledged, and waits for every PUBACK
/// (at most `ack_timeout` for the last ones).
pub async fn publish_count(
    opts: &Options,
    client_id: &str,
    username: Option<&str>,
    topic: &str,
    n: u64,
    ack_timeout: Duration,
) -> Result<PublishReport> {
    let mut conn = ConnectOptions::new(client_id);
    conn.username = username.map(str::to_string);
    let Client {
        mut reader,
        mut writer,
    } = Client::connect_with(opts.addr, opts.protocol, &conn).await?;
    let window = u64::from(opts.inflight.max(1));
    let topic = ByteString::from(topic.to_string());
    let mut sent_at: Vec<Option<Instant>> = vec![None; 65_536];
    let mut latencies = Latencies::default();
    let (mut sent, mut acked) = (0u64, 0u64);
    let started = Instant::now();
    let mut last_progress = Instant::now();
    while acked < n {
        while sent < n && sent - acked < window {
            let pid = (sent % 65_535 + 1) as u16;
            writer.queue_publish(
                &topic,
                QoS::AtLeastOnce,
                pid,
                numbered_payload(opts.payload, sent),
            )?;
            sent_at[pid as usize] = Some(Instant::now());
            sent += 1;
        }
        writer.flush().await?;
        let wait = ack_timeout.saturating_sub(last_progress.elapsed());
        match tokio::time::timeout(wait, reader.next()).await {
            Err(_) => {
                return Err(Error::new(format!(
                    "{client_id}: no PUBACK for {ack_timeout:?} ({acked} of {n} acknowledged)"
                )))
            }
            Ok(p) => {
                if let Packet::PubAck(ack) = p? {
                    if ack.reason.is_error() {
                        return Err(Error::new(format!(
                            "{client_id}: PUBLISH refused: {:?}",
                            ack.reason
                        )));
                    }
                    if let Some(t) = sent_at[ack.packet_id as usize].take() {
                        latencies.record(t.elapsed());
                    }
                    acked += 1;
                    last_progress = Instant::now();
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    writer.disconnect().await;
    Ok(PublishReport {
        sent,
        acked,
        secs,
        ack_latency: latencies.summary(),
    })
}

/// Session `i` reconnects and waits (at most `limit`) for its first queued message, which
/// it leaves unacknowledged; returns when it arrived.
pub async fn first_delivery(opts: &Options, i: usize, limit: Duration) -> Result<Instant> {
    let mut conn = ConnectOptions::new(&DurableConfig::client_id(opts, i));
    conn.clean_start = false;
    let mut c = Client::connect_with(opts.addr, opts.protocol, &conn).await?;
    let wait = async {
        loop {
            if let Packet::Publish(_) = c.reader.next().await? {
                return Ok::<_, Error>(Instant::now());
            }
        }
    };
    let at = match tokio::time::timeout(limit, wait).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::new(format!(
                "no queued message for session {i} within {limit:?} of reconnecting"
            )))
        }
    };
    // Close without DISCONNECT handling of the message: the broker keeps it in flight.
    c.writer.reset();
    drop(c.reader);
    Ok(at)
}

/// What [`drain_sessions`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainReport {
    pub expected: u64,
    /// Distinct messages received over all sessions, and redeliveries of ones already had.
    pub unique: u64,
    pub duplicates: u64,
    /// Sessions that got their whole queue.
    pub complete_sessions: usize,
    /// From the first reconnect to the last message of the last session.
    pub secs: f64,
    /// From the first reconnect to every session being connected.
    pub connect_secs: f64,
    /// Latency of the queued messages (from their publication: time spent queued).
    pub queued_for: Option<LatencySummary>,
}

impl DrainReport {
    pub fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.unique as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Every session reconnects and receives its `messages` queued messages.
pub async fn drain_sessions(opts: &Options, cfg: &DurableConfig) -> Result<DrainReport> {
    let started = Instant::now();
    let m = cfg.messages as u64;
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let connected = Arc::new(AtomicU64::new(0));
    let last_connect = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for i in 0..cfg.sessions {
        let (addr, protocol) = (opts.addr, opts.protocol);
        let mut conn = ConnectOptions::new(&DurableConfig::client_id(opts, i));
        conn.clean_start = false;
        conn.buffer = cfg.buffer;
        let (permits, connected, last_connect) =
            (permits.clone(), connected.clone(), last_connect.clone());
        let idle = cfg.idle_timeout;
        let sample = i % 50 == 0;
        set.spawn(async move {
            let c = {
                let _p = permits.acquire().await;
                Client::connect_with(addr, protocol, &conn).await?
            };
            connected.fetch_add(1, Ordering::Relaxed);
            last_connect.fetch_max(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let Client {
                mut reader,
                mut writer,
            } = c;
            let mut seen = vec![false; m as usize];
            let (mut unique, mut dups) = (0u64, 0u64);
            let mut latencies = Latencies::default();
            let mut last = Instant::now();
            while unique < m {
                let packet = match reader.try_next()? {
                    Some(p) => p,
                    None => {
                        writer.flush().await?;
                        match tokio::time::timeout(idle, reader.next()).await {
                            Ok(p) => p?,
                            Err(_) => break,
                        }
                    }
                };
                if let Packet::Publish(p) = packet {
                    if p.qos != QoS::AtMostOnce {
                        writer.queue_puback(p.packet_id)?;
                    }
                    match payload_seq(&p.payload) {
                        Some(s) if (s as usize) < seen.len() && !seen[s as usize] => {
                            seen[s as usize] = true;
                            unique += 1;
                            if sample {
                                if let Some(d) = payload_latency(&p.payload) {
                                    latencies.record(d);
                                }
                            }
                        }
                        _ => dups += 1,
                    }
                    last = Instant::now();
                }
            }
            writer.flush().await?;
            writer.disconnect().await;
            Ok::<_, Error>((unique, dups, last, latencies))
        });
    }
    let mut report = DrainReport {
        expected: m * cfg.sessions as u64,
        unique: 0,
        duplicates: 0,
        complete_sessions: 0,
        secs: 0.0,
        connect_secs: 0.0,
        queued_for: None,
    };
    let mut latencies = Latencies::default();
    let mut end = started;
    while let Some(r) = set.join_next().await {
        let (unique, dups, last, l) =
            r.map_err(|e| Error::new(format!("drain task failed: {e}")))??;
        report.unique += unique;
        report.duplicates += dups;
        if unique >= m {
            report.complete_sessions += 1;
        }
        end = end.max(last);
        latencies.merge(&l);
    }
    report.secs = end.duration_since(started).as_secs_f64();
    report.connect_secs = last_connect.load(Ordering::Relaxed) as f64 / 1e9;
    report.queued_for = latencies.summary();
    Ok(report)
}
