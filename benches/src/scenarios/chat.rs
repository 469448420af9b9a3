//! A chat workload on tern (MQTT 5): `users` users `u{i}` with two devices each
//! (`u{i}-a`, `u{i}-b`, persistent sessions subscribed to `inbox/u{i}/#`), in groups of
//! `group_size` (`g{i / group_size}`, created by the caller). Every device sends at full
//! speed, `window` QoS 1 messages in flight: four in five are DMs to a random user, the
//! rest go to its group. With `receipts`, a device reports every 10th message it gets
//! read (`$read/...`, QoS 0), which also sends the DM peer a receipt; with `presence`,
//! device `b` watches the presence of the next user of its group. One user in ten has a
//! flapping device `b`: every 2 s it goes away for half a second, comes back and syncs
//! from the last seq it has (`$sync`), as a phone on a weak network does.
//!
//! Counted over the measurement window: messages acknowledged, inbox deliveries received,
//! end-to-end latency (send time carried in the payload, to every online device), reads
//! and resyncs made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{ByteString, Packet, Protocol, QoS};
use tokio::task::JoinSet;

use super::durable::numbered_payload;
use crate::client::{Client, ConnectOptions};
use crate::error::{Error, Result};
use crate::run::Options;
use crate::stats::{payload_latency, Latencies, LatencySummary};

#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub users: usize,
    pub group_size: usize,
    /// QoS 1 messages in flight per device.
    pub window: u16,
    pub receipts: bool,
    pub presence: bool,
}

impl ChatConfig {
    pub fn user(opts: &Options, i: usize) -> String {
        format!("{}u{i}", opts.run_id)
    }

    pub fn group(opts: &Options, g: usize) -> String {
        format!("{}g{g}", opts.run_id)
    }

    /// Every group with its members.
    pub fn groups(&self, opts: &Options) -> Vec<(String, Vec<String>)> {
        let size = self.group_size.max(1);
        (0..self.users.div_ceil(size))
            .map(|g| {
                let members = (g * size..((g + 1) * size).min(self.users))
                    .map(|i| ChatConfig::user(opts, i))
                    .collect();
                (ChatConfig::group(opts, g), members)
            })
            .collect()
    }
}

#[derive(Debug, Default)]
struct Counters {
    acked: AtomicU64,
    delivered: AtomicU64,
    reads: AtomicU64,
    resyncs: AtomicU64,
}

/// What a run measured (over the measurement window).
#[derive(Debug, Clone)]
pub struct ChatReport {
    pub acked: u64,
    pub delivered: u64,
    pub reads: u64,
    pub resyncs: u64,
    pub secs: f64,
    pub latency: Option<LatencySummary>,
}

impl ChatReport {
    pub fn acked_per_sec(&self) -> f64 {
        self.acked as f64 / self.secs.max(1e-9)
    }

    pub fn delivered_per_sec(&self) -> f64 {
        self.delivered as f64 / self.secs.max(1e-9)
    }
}

/// One device's part of the run.
struct DeviceRun {
    opts: Options,
    cfg: ChatConfig,
    user: usize,
    device: char,
    flapping: bool,
    counters: Arc<Counters>,
    measure: (Instant, Instant),
    seed: u64,
    /// Every device has subscribed.
    subscribed: Arc<tokio::sync::Barrier>,
}

/// A small PRNG (splitmix64): each device draws its recipients from its own seed.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DeviceRun {
    fn options(&self) -> ConnectOptions {
        let user = ChatConfig::user(&self.opts, self.user);
        let mut conn = ConnectOptions::new(&format!("{user}-{}", self.device));
        conn.username = Some(user);
        conn.clean_start = false;
        conn.buffer = 8 * 1024;
        conn
    }

    /// Connects; the first time, subscribes too (the inbox; device `b` the presence of a
    /// group mate) and waits for every device to have done so, so that no message comes
    /// between a SUBSCRIBE and its SUBACK. A persistent session keeps them afterwards.
    async fn connect(&self, first: bool) -> Result<Client> {
        let mut c = Client::connect_with(self.opts.addr, Protocol::V5, &self.options()).await?;
        if !first {
            return Ok(c);
        }
        let user = ChatConfig::user(&self.opts, self.user);
        c.subscribe(&format!("inbox/{user}/#"), QoS::AtLeastOnce)
            .await?;
        if self.cfg.presence && self.device == 'b' {
            let size = self.cfg.group_size.max(1);
            let mate = (self.user / size) * size + (self.user + 1) % size;
            if mate < self.cfg.users && mate != self.user {
                let topic = format!("presence/{}", ChatConfig::user(&self.opts, mate));
                c.subscribe(&topic, QoS::AtLeastOnce).await?;
            }
        }
        self.subscribed.wait().await;
        Ok(c)
    }

    async fn run(self) -> Result<Latencies> {
        let mut latencies = Latencies::default();
        let mut random = self.seed;
        let (start, end) = self.measure;
        let size = self.cfg.group_size.max(1);
        let group = ByteString::from(format!(
            "group/{}",
            ChatConfig::group(&self.opts, self.user / size)
        ));
        let mut last_seq: Option<u64> = None;
        let mut received = 0u64;
        let mut counter = 0u64;
        let mut next_flap = Instant::now() + Duration::from_secs(2);
        let mut first = true;
        'connection: loop {
            let Client {
                mut reader,
                mut writer,
            } = self.connect(first).await?;
            first = false;
            if let Some(seq) = last_seq {
                // Back from a flap: the entries it missed.
                writer.queue_publish(
                    &ByteString::from_static("$sync"),
                    QoS::AtMostOnce,
                    0,
                    Bytes::from(seq.to_string()),
                )?;
                if Instant::now() >= start {
                    self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                }
            }
            let mut in_flight: u16 = 0;
            let mut next_pid: u16 = 1;
            loop {
                let now = Instant::now();
                if now >= end {
                    writer.disconnect().await;
                    return Ok(latencies);
                }
                while in_flight < self.cfg.window {
                    let topic = if next_random(&mut random).is_multiple_of(5) {
                        group.clone()
                    } else {
                        let to = (next_random(&mut random) % self.cfg.users as u64) as usize;
                        ByteString::from(format!("dm/{}", ChatConfig::user(&self.opts, to)))
                    };
                    writer.queue_publish(
                        &topic,
                        QoS::AtLeastOnce,
                        next_pid,
                        numbered_payload(self.opts.payload, counter),
                    )?;
                    counter += 1;
                    next_pid = next_pid.checked_add(1).unwrap_or(1);
                    in_flight += 1;
                }
                writer.flush().await?;
                if self.flapping && now >= next_flap {
                    // Gone for a moment, without a DISCONNECT (the network dropped).
                    drop((reader, writer));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    next_flap = Instant::now() + Duration::from_secs(2);
                    continue 'connection;
                }
                let wait = end.min(next_flap).saturating_duration_since(now);
                let packet = match tokio::time::timeout(wait, reader.next()).await {
                    Err(_) => continue,
                    Ok(p) => p?,
                };
                let measuring = Instant::now() >= start;
                match packet {
                    Packet::PubAck(ack) => {
                        if ack.reason.is_error() {
                            return Err(Error::new(format!(
                                "{}: message refused: {:?}",
                                reader.id(),
                                ack.reason
                            )));
                        }
                        in_flight = in_flight.saturating_sub(1);
                        if measuring {
                            self.counters.acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Packet::Publish(p) => {
                        if p.packet_id != 0 {
                            writer.queue_puback(p.packet_id)?;
                        }
                        let seq = p
                            .properties
                            .user_properties
                            .iter()
                            .find(|(k, _)| &**k == "seq")
                            .and_then(|(_, v)| v.parse::<u64>().ok());
                        let Some(seq) = seq else {
                            continue; // presence, notices, sync ends
                        };
                        last_seq = last_seq.max(Some(seq));
                        received += 1;
                        if measuring {
                            self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                            if let Some(latency) = payload_latency(&p.payload) {
                                latencies.record(latency);
                            }
                        }
                        if self.cfg.receipts && received.is_multiple_of(10) {
                            if let Some(read) = read_topic(&p.topic) {
                                writer.queue_publish(
                                    &ByteString::from(read),
                                    QoS::AtMostOnce,
                                    0,
                                    Bytes::from(seq.to_string()),
                                )?;
                                if measuring {
                                    self.counters.reads.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The `$read/...` topic for a message on `inbox/{me}/dm/{from}` or
/// `inbox/{me}/group/{gid}/{from}` (not for the sender's own copies).
fn read_topic(topic: &str) -> Option<String> {
    let mut levels = topic.split('/').skip(2);
    match (levels.next(), levels.next()) {
        (Some("dm"), Some(from)) => Some(format!("$read/dm/{from}")),
        (Some("group"), Some(gid)) => Some(format!("$read/group/{gid}")),
        _ => None,
    }
}

/// Runs the workload: every device connects, `warmup` passes, then `duration` is measured.
pub async fn chat(opts: &Options, cfg: &ChatConfig) -> Result<ChatReport> {
    let counters = Arc::new(Counters::default());
    // Connections take their time; the measurement starts once they had it.
    let connect_time = Duration::from_millis(20 * cfg.users as u64).max(Duration::from_secs(2));
    let start = Instant::now() + connect_time + opts.warmup;
    let end = start + opts.duration;
    let mut set = JoinSet::new();
    let subscribed = Arc::new(tokio::sync::Barrier::new(2 * cfg.users));
    for user in 0..cfg.users {
        for device in ['a', 'b'] {
            let run = DeviceRun {
                opts: opts.clone(),
                cfg: cfg.clone(),
                user,
                device,
                flapping: device == 'b' && user % 10 == 0,
                counters: counters.clone(),
                measure: (start, end),
                seed: (user as u64) << 1 | u64::from(device == 'b'),
                subscribed: subscribed.clone(),
            };
            set.spawn(run.run());
        }
    }
    let mut latencies = Latencies::default();
    while let Some(r) = set.join_next().await {
        let device = r.map_err(|e| Error::new(format!("device task failed: {e}")))??;
        latencies.merge(&device);
    }
    Ok(ChatReport {
        acked: counters.acked.load(Ordering::Relaxed),
        delivered: counters.delivered.load(Ordering::Relaxed),
        reads: counters.reads.load(Ordering::Relaxed),
        resyncs: counters.resyncs.load(Ordering::Relaxed),
        secs: opts.duration.as_secs_f64(),
        latency: latencies.summary(),
    })
}
