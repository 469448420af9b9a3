//! The machinery the scenarios share: run options, connecting many clients, the run
//! timeline (warm-up, measurement, drain), and the publisher and subscriber loops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{ByteString, Packet, Protocol, QoS};
use tokio::sync::{Semaphore, TryAcquireError};
use tokio::task::JoinSet;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::stats::{payload_latency_at, stamped_payload, Latencies, Report};

/// Options every scenario takes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The broker.
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// Payload size in bytes (at least 8: the first 8 carry the send time).
    pub payload: usize,
    /// Length of the measurement window.
    pub duration: Duration,
    /// Traffic before the measurement window, not counted in rates or latencies.
    pub warmup: Duration,
    /// QoS 1 messages a publisher keeps in flight.
    pub inflight: u16,
    /// Prefix of client IDs and topics, unique per run.
    pub run_id: String,
    /// How long subscribers keep reading after the last publish once nothing arrives.
    pub drain_idle: Duration,
    /// The longest subscribers keep reading after the last publish in any case (a broker
    /// with a deep backlog of QoS 0 messages may take long to empty it); what has not
    /// arrived by then counts as dropped.
    pub max_drain: Duration,
    /// A subscriber whose connection the broker closes stops there and counts as lost
    /// (what it did not get counts as dropped) instead of ending the run with an error:
    /// some brokers disconnect subscribers that fall behind a QoS 0 flood.
    pub tolerate_disconnects: bool,
}

impl Options {
    /// Defaults: MQTT 3.1.1, 64-byte payloads, 10 s measured after 1 s of warm-up, 16 in
    /// flight, and a run ID from the process ID and clock.
    pub fn new(addr: SocketAddr) -> Options {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Options {
            addr,
            protocol: Protocol::V311,
            payload: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            inflight: 16,
            run_id: format!("tb{}x{:x}", std::process::id(), nanos),
            drain_idle: Duration::from_millis(500),
            max_drain: Duration::from_secs(30),
            tolerate_disconnects: false,
        }
    }

    /// A topic of this run.
    pub fn topic(&self, name: &str) -> String {
        format!("tern-bench/{}/{name}", self.run_id)
    }
}

/// The phases of a run, fixed once every client is connected and subscribed.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub start: Instant,
    pub measure_start: Instant,
    pub end: Instant,
}

impl Timeline {
    pub fn new(opts: &Options) -> Timeline {
        let start = Instant::now();
        let measure_start = start + opts.warmup;
        Timeline {
            start,
            measure_start,
            end: measure_start + opts.duration,
        }
    }

    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.end
    }
}

/// Connects `n` clients named `{run_id}-{role}-{i}` (a bounded number at a time), each
/// subscribed to `topic(i)` when it gives one. The result is in index order.
pub async fn connect_many(
    opts: &Options,
    role: &str,
    n: usize,
    topic: impl Fn(usize) -> Option<String>,
    qos: QoS,
) -> Result<Vec<Client>> {
    const PARALLEL: usize = 64;
    let mut out: Vec<Option<Client>> = (0..n).map(|_| None).collect();
    let mut next = 0;
    let mut set = JoinSet::new();
    while next < n || !set.is_empty() {
        while next < n && set.len() < PARALLEL {
            let id = format!("{}-{role}-{next}", opts.run_id);
            let filter = topic(next);
            let (addr, protocol, i) = (opts.addr, opts.protocol, next);
            set.spawn(async move {
                let mut client = Client::connect(addr, protocol, &id).await?;
                if let Some(f) = filter {
                    client.subscribe(&f, qos).await?;
                }
                Ok::<_, Error>((i, client))
            });
            next += 1;
        }
        if let Some(joined) = set.join_next().await {
            let (i, client) = joined.map_err(|e| Error::new(format!("connect task: {e}")))??;
            out[i] = Some(client);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// What one publisher does.
#[derive(Debug, Clone)]
pub struct PubSpec {
    pub topic: String,
    pub qos: QoS,
    pub payload: usize,
    /// QoS 1 window.
    pub inflight: u16,
    /// Messages per second, or `None` for full speed.
    pub rate: Option<f64>,
}

impl PubSpec {
    /// A publisher of `opts`' payload and window to `topic`; `rate` None = full speed.
    pub fn new(opts: &Options, topic: &str, qos: QoS, rate: Option<f64>) -> PubSpec {
        PubSpec {
            topic: topic.to_string(),
            qos,
            payload: opts.payload,
            inflight: opts.inflight,
            rate,
        }
    }
}

/// What one publisher did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PubStats {
    pub sent: u64,
    pub sent_in_window: u64,
    pub acked: u64,
}

/// What one subscriber received.
#[derive(Default)]
pub struct SubStats {
    /// The broker closed the connection before the end (with `tolerate_disconnects`).
    pub lost: bool,
    pub received: u64,
    pub received_in_window: u64,
    pub latencies: Latencies,
}

/// What a publisher does next: send a batch of this many, or wait until the next message is
/// due.
pub(crate) enum Pace {
    Send(u64),
    Wait(Instant),
}

/// Full speed (`rate` None): batches of `batch`. Paced at `rate` msgs/s from `start`: every
/// message due by `now` (at most 1,024 at once), or the instant the next one is due.
pub(crate) fn pace(rate: Option<f64>, start: Instant, sent: u64, now: Instant, batch: u64) -> Pace {
    let Some(rate) = rate else {
        return Pace::Send(batch);
    };
    let due = (rate * (now - start).as_secs_f64()) as u64 + 1;
    if due <= sent {
        Pace::Wait(start + Duration::from_secs_f64((sent as f64) / rate))
    } else {
        Pace::Send((due - sent).min(1024))
    }
}

/// Publishes until the end of the timeline: full speed or paced, in batches, with a window
/// of QoS 1 messages in flight; then awaits the outstanding PUBACKs and disconnects.
pub async fn publisher(client: Client, spec: PubSpec, tl: Timeline) -> Result<PubStats> {
    const BATCH: u64 = 64;
    let Client {
        mut reader,
        mut writer,
    } = client;
    let id = reader.id().to_string();
    let qos1 = spec.qos != QoS::AtMostOnce;
    let window = spec.inflight.max(1) as usize;
    let permits = Arc::new(Semaphore::new(if qos1 { window } else { 0 }));
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut read_task = {
        let (permits, acked, done) = (permits.clone(), acked.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Ok(Packet::PubAck(_)) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        permits.add_permits(1);
                    }
                    Ok(_) => {}
                    Err(_) if done.load(Ordering::Relaxed) => return Ok(()),
                    Err(e) => {
                        permits.close();
                        return Err(e);
                    }
                }
            }
        })
    };

    let topic = ByteString::from(spec.topic.clone());
    let filler = Bytes::from(vec![b'x'; spec.payload]);
    let mut stats = PubStats::default();
    let mut packet_id: u16 = 0;
    let result: Result<()> = async {
        loop {
            let now = Instant::now();
            if now >= tl.end {
                break;
            }
            let n = match pace(spec.rate, tl.start, stats.sent, now, BATCH) {
                Pace::Send(n) => n,
                Pace::Wait(next) => {
                    tokio::time::sleep_until(next.into()).await;
                    continue;
                }
            };
            let in_window = tl.in_window(now);
            for _ in 0..n {
                if qos1 {
                    match permits.try_acquire() {
                        Ok(p) => p.forget(),
                        Err(TryAcquireError::NoPermits) => {
                            writer.flush().await?;
                            match permits.acquire().await {
                                Ok(p) => p.forget(),
                                Err(_) => return Err(Error::new("connection lost")),
                            }
                        }
                        Err(TryAcquireError::Closed) => return Err(Error::new("connection lost")),
                    }
                    packet_id = packet_id.wrapping_add(1).max(1);
                }
                writer.queue_publish(
                    &topic,
                    spec.qos,
                    packet_id,
                    stamped_payload(spec.payload, &filler),
                )?;
                stats.sent += 1;
                if in_window {
                    stats.sent_in_window += 1;
                }
            }
            writer.flush().await?;
        }
        if qos1 {
            let wait = permits.acquire_many(window as u32);
            match tokio::time::timeout(Duration::from_secs(10), wait).await {
                Ok(Ok(p)) => p.forget(),
                Ok(Err(_)) => return Err(Error::new("connection lost")),
                Err(_) => {
                    return Err(Error::new(format!(
                        "{id}: {} PUBACKs missing 10 s after the last publish",
                        stats.sent - acked.load(Ordering::Relaxed)
                    )))
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // The reader's error explains a failed write or a closed window better.
        return Err(
            match tokio::time::timeout(Duration::from_secs(1), &mut read_task).await {
                Ok(Ok(Err(read_err))) => read_err,
                _ => {
                    read_task.abort();
                    Error::new(format!("{id}: {e}"))
                }
            },
        );
    }
    done.store(true, Ordering::Relaxed);
    writer.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(2), &mut read_task)
        .await
        .is_err()
    {
        read_task.abort();
    }
    stats.acked = acked.load(Ordering::Relaxed);
    Ok(stats)
}

/// Receives (and acknowledges QoS 1) until the timeline's end and then until nothing has
/// arrived for `drain_idle` (at most `max_drain` more); then disconnects. With `tolerate`,
/// a connection the broker closes ends the subscriber early (`lost`) instead of with an
/// error.
pub async fn subscriber(
    client: Client,
    tl: Timeline,
    (drain_idle, max_drain): (Duration, Duration),
    record_latency: bool,
    tolerate: bool,
) -> Result<SubStats> {
    let Client {
        mut reader,
        mut writer,
    } = client;
    let hard_end = tl.end + max_drain;
    let mut stats = SubStats::default();
    let result = receive(
        &mut reader,
        &mut writer,
        tl,
        (drain_idle, hard_end),
        record_latency,
        &mut stats,
    )
    .await;
    match result {
        Ok(()) => writer.disconnect().await,
        Err(_) if tolerate => stats.lost = true,
        Err(e) => return Err(e),
    }
    Ok(stats)
}

/// The subscriber's loop (see [`subscriber`]).
///
/// A message counts as received when the read that brought it returned: one clock read per
/// read, not per message, and one timer for the whole window rather than one per wait, so
/// that at a million messages a second the tool's own bookkeeping stays out of the way of
/// the broker it measures.
async fn receive(
    reader: &mut crate::client::Reader,
    writer: &mut crate::client::Writer,
    tl: Timeline,
    (drain_idle, hard_end): (Duration, Instant),
    record_latency: bool,
    stats: &mut SubStats,
) -> Result<()> {
    let mut read_at = Instant::now();
    let deadline = |now: Instant| {
        let at = if now < tl.end { tl.end } else { now };
        tokio::time::Instant::from_std(at + drain_idle)
    };
    let idle = tokio::time::sleep_until(deadline(read_at));
    tokio::pin!(idle);
    loop {
        let packet = match reader.try_next()? {
            Some(p) => p,
            None => {
                writer.flush().await?;
                let now = Instant::now();
                if now >= hard_end {
                    break;
                }
                // Before the end the deadline stays put (no timer update per wait); after
                // it, it moves with every message.
                let at = deadline(now);
                if idle.deadline() != at {
                    idle.as_mut().reset(at);
                }
                tokio::select! {
                    biased;
                    p = reader.next() => {
                        read_at = Instant::now();
                        p?
                    }
                    () = &mut idle => {
                        if Instant::now() >= tl.end {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        if let Packet::Publish(p) = packet {
            if p.qos != QoS::AtMostOnce {
                writer.queue_puback(p.packet_id)?;
                if writer.pending() > 32 * 1024 {
                    writer.flush().await?;
                }
            }
            stats.received += 1;
            if tl.in_window(read_at) {
                stats.received_in_window += 1;
                if record_latency {
                    if let Some(d) = payload_latency_at(&p.payload, read_at) {
                        stats.latencies.record(d);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Everything a run measured, before it becomes a report.
pub struct Outcome {
    pub publishers: Vec<PubStats>,
    pub subscribers: Vec<SubStats>,
    pub measured_secs: f64,
}

impl Outcome {
    pub fn sent(&self) -> u64 {
        self.publishers.iter().map(|p| p.sent).sum()
    }
    pub fn sent_in_window(&self) -> u64 {
        self.publishers.iter().map(|p| p.sent_in_window).sum()
    }
    pub fn acked(&self) -> u64 {
        self.publishers.iter().map(|p| p.acked).sum()
    }
    pub fn received(&self) -> u64 {
        self.subscribers.iter().map(|s| s.received).sum()
    }
    pub fn received_in_window(&self) -> u64 {
        self.subscribers.iter().map(|s| s.received_in_window).sum()
    }
    pub fn latencies(&self) -> Latencies {
        let mut all = Latencies::default();
        for s in &self.subscribers {
            all.merge(&s.latencies);
        }
        all
    }

    /// The scenario's report. `copies`: deliveries each published message should make
    /// (1, or the subscriber count for a fan-out). Latency only where `with_latency`.
    pub fn report(&self, scenario: &'static str, shape: Shape, with_latency: bool) -> Report {
        Report {
            scenario,
            qos: shape.qos.as_u8(),
            publishers: shape.publishers,
            subscribers: shape.subscribers,
            measured_secs: self.measured_secs,
            sent: self.sent(),
            acked: self.acked(),
            received: self.received(),
            expected: self.sent() * shape.copies,
            sent_in_window: self.sent_in_window(),
            received_in_window: self.received_in_window(),
            latency: if with_latency {
                self.latencies().summary()
            } else {
                None
            },
            lost_subscribers: self.subscribers.iter().filter(|s| s.lost).count(),
        }
    }
}

/// The shape of a scenario, for its report.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub qos: QoS,
    pub publishers: usize,
    pub subscribers: usize,
    /// Deliveries each published message should make.
    pub copies: u64,
}

/// Runs connected publishers and subscribers over one timeline; the first error ends the
/// run (the other tasks are aborted).
pub async fn run(
    opts: &Options,
    publishers: Vec<(Client, PubSpec)>,
    subscribers: Vec<Client>,
    record_latency: bool,
) -> Result<Outcome> {
    enum Done {
        Pub(usize, PubStats),
        Sub(usize, SubStats),
    }
    let tl = Timeline::new(opts);
    let mut set = JoinSet::new();
    let (np, ns) = (publishers.len(), subscribers.len());
    for (i, c) in subscribers.into_iter().enumerate() {
        let drain = (opts.drain_idle, opts.max_drain);
        let tolerate = opts.tolerate_disconnects;
        set.spawn(async move {
            subscriber(c, tl, drain, record_latency, tolerate)
                .await
                .map(|s| Done::Sub(i, s))
        });
    }
    for (i, (c, spec)) in publishers.into_iter().enumerate() {
        set.spawn(async move { publisher(c, spec, tl).await.map(|s| Done::Pub(i, s)) });
    }
    let mut pubs = vec![PubStats::default(); np];
    let mut subs: Vec<SubStats> = (0..ns).map(|_| SubStats::default()).collect();
    while let Some(joined) = set.join_next().await {
        match joined.map_err(|e| Error::new(format!("client task failed: {e}")))?? {
            Done::Pub(i, s) => pubs[i] = s,
            Done::Sub(i, s) => subs[i] = s,
        }
    }
    Ok(Outcome {
        publishers: pubs,
        subscribers: subs,
        measured_secs: opts.duration.as_secs_f64(),
    })
}

/// Raises the soft limit on open files towards `want` (up to the hard limit) and returns
/// the soft limit now. Every connection of the tool is one open file.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
pub fn raise_open_files(want: u64) -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let current = limit.rlim_cur as u64;
    if current >= want {
        return Ok(current);
    }
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        want
    } else {
        want.min(limit.rlim_max as u64)
    };
    if target <= current {
        return Ok(current);
    }
    limit.rlim_cur = target as libc::rlim_t;
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Ok(current);
    }
    Ok(target)
}

/// Raises the soft limit on open files (nothing to do off Unix).
#[cfg(not(unix))]
pub fn raise_open_files(want: u64) -> std::io::Result<u64> {
    Ok(want)
}
