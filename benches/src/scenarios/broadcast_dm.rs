//! Broadcast vs DM: does a system broadcast to every connected user hold up the direct
//! messages queued behind it?
//!
//! `subscribers` idle users (`u0`, `u1`, ..., one connection each, keep alive 60 s,
//! subscribed to `broadcast/all` at QoS 0; on a loopback broker their sockets are spread
//! over the source addresses 127.0.0.2, 127.0.0.3, ... so that ephemeral ports never run
//! out). A DM pair: `alice` publishes `dm/bob` at QoS 1 at a fixed rate, `bob` (subscribed
//! to `inbox/bob/#`, and like every user to `broadcast/all` unless told otherwise, so that
//! his own connection carries both lanes) measures the latency. Then two phases of warm-up + duration each:
//!
//! 1. *quiet*: DMs only;
//! 2. *broadcast*: the operator (`ops`, listed in the broker's `im.operators`) also
//!    publishes `broadcast/all`, at full speed or at a given rate.
//!
//! The report compares DM latency in the two phases and gives the broadcast deliveries per
//! second the subscribers saw (and how many broadcasts never reached them: the broker drops
//! them when a connection's broadcast lane is full).
//!
//! Every DM carries two timestamps: when it was *due* on alice's schedule, and when it was
//! written to the socket. The DM latency is from the write to bob (the broker's delivery
//! path, which the broadcast lanes are meant to protect). Two more figures tell where else
//! time goes: the PUBACK latency (write to PUBACK at alice: tern acknowledges a DM once it
//! is durable), and the latency from the due time, what a user sees, which includes the time
//! alice waits for her QoS 1 window (`inflight`) when PUBACKs come slowly, so a broker that
//! cannot keep up shows as growing latency instead of a slower send rate. alice gives up on
//! DMs still unsent `max_drain` after the end. alice and bob run on a thread and runtime of their own, so
//! that the thousands of subscriber tasks do not delay them inside the tool (the two still
//! share the machine's cores with them and with the broker).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{ByteString, Packet, Protocol, QoS};
use tokio::sync::{mpsc, oneshot, watch, Semaphore, TryAcquireError};
use tokio::task::JoinSet;

use crate::client::{stay_connected, Client, ConnectOptions};
use crate::error::{Error, Result};
use crate::run::{pace, raise_open_files, Options, Pace, PubSpec, PubStats, Timeline};
use crate::stats::{
    nanos_at, now_nanos, payload_latency, payload_stamp, stamped_payload, Latencies, LatencySummary,
};

/// The DM sender, recipient, and the broadcast channel.
const SENDER: &str = "alice";
const RECIPIENT: &str = "bob";
const BROADCAST_TOPIC: &str = "broadcast/all";
/// Subscribers connecting at the same time.
const CONNECT_PARALLEL: usize = 64;
/// Read/write buffer of an idle subscriber (a few KiB: there are thousands).
const SUBSCRIBER_BUFFER: usize = 4 * 1024;
/// Subscribers that record the latency of the broadcasts they receive (evenly spread).
const LATENCY_SAMPLE: usize = 64;
/// Open files the tool needs besides one per subscriber (DM pair, operator, runtime,
/// standard streams).
const SPARE_FILES: u64 = 64;
/// A DM payload starts with two timestamps: due, then written.
const DM_STAMPS: usize = 16;

/// What the scenario runs, beyond the common [`Options`].
#[derive(Debug, Clone)]
pub struct BroadcastDmConfig {
    /// Idle users subscribed to `broadcast/all`, one connection each.
    pub subscribers: usize,
    /// DMs alice sends per second (both phases).
    pub dm_rate: f64,
    /// Broadcasts per second in phase 2; `None`: as fast as the broker takes them.
    pub broadcast_rate: Option<f64>,
    /// QoS of the broadcast PUBLISH (subscribers get QoS 0 either way). At QoS 1 the
    /// operator keeps `inflight` broadcasts unacknowledged at most, so "full speed" is the
    /// speed at which the broker routes them rather than the speed of the socket.
    pub broadcast_qos: QoS,
    /// The user name of the operator (must have the operator role on the broker).
    pub operator: String,
    /// Keep alive of the subscribers, in seconds (they send PINGREQ at half of it).
    pub keep_alive: u16,
    /// Subscribers per loopback source address (127.0.0.2, 127.0.0.3, ...); 0 connects
    /// from the default address. Ignored unless the broker is on 127.x.x.x.
    pub per_source: usize,
    /// bob subscribes to `broadcast/all` too: his connection then has broadcasts queued
    /// beside his DMs (the case the per-connection lanes are for). Without, only the rest of
    /// the broker is busy with them.
    pub recipient_broadcasts: bool,
}

impl BroadcastDmConfig {
    /// `subscribers` subscribers, 1,000 DMs/s, broadcasts at full speed at QoS 0 by `ops`,
    /// keep alive 60 s, 1,000 subscribers per source address.
    pub fn new(subscribers: usize) -> BroadcastDmConfig {
        BroadcastDmConfig {
            subscribers,
            dm_rate: 1000.0,
            broadcast_rate: None,
            broadcast_qos: QoS::AtMostOnce,
            operator: "ops".to_string(),
            keep_alive: 60,
            per_source: 1000,
            recipient_broadcasts: true,
        }
    }
}

/// One phase's measurement window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseReport {
    /// DMs due in the window on alice's schedule, how many of those she sent, and how many
    /// bob received (in the window or later).
    pub dm_due: u64,
    pub dm_sent: u64,
    pub dm_received: u64,
    /// Latency from the write to bob of the DMs alice *wrote* in the window (she may write
    /// DMs due in it later, once the broadcasts are over).
    pub dm_latency: Option<LatencySummary>,
    /// From the write to the PUBACK at alice, of the DMs written in the window.
    pub dm_ack_latency: Option<LatencySummary>,
    /// From the time each was due to bob receiving it (what a user sees, alice's waits for
    /// her QoS 1 window included).
    pub dm_latency_from_due: Option<LatencySummary>,
    /// The longest alice wrote a DM after it was due (waiting for her QoS 1 window), in µs.
    pub dm_max_send_lag_us: u64,
    /// Broadcasts the operator sent in the window.
    pub broadcasts_sent: u64,
    /// Broadcast deliveries the subscribers received in the window (every copy counts), and
    /// the window's actual length as the tool observed it.
    pub broadcast_deliveries: u64,
    pub secs: f64,
}

impl PhaseReport {
    pub fn broadcasts_sent_per_sec(&self) -> f64 {
        per_sec(self.broadcasts_sent, self.secs)
    }

    pub fn broadcast_deliveries_per_sec(&self) -> f64 {
        per_sec(self.broadcast_deliveries, self.secs)
    }

    fn json(&self) -> String {
        format!(
            "{{\"dm_due\":{},\"dm_sent\":{},\"dm_received\":{},\"dm_latency_us\":{},\"dm_ack_latency_us\":{},\"dm_latency_from_due_us\":{},\"dm_max_send_lag_us\":{},\"broadcasts_sent\":{},\"broadcasts_sent_per_sec\":{:.1},\"broadcast_deliveries\":{},\"broadcast_deliveries_per_sec\":{:.1},\"secs\":{:.3}}}",
            self.dm_due,
            self.dm_sent,
            self.dm_received,
            LatencySummary::json(self.dm_latency.as_ref()),
            LatencySummary::json(self.dm_ack_latency.as_ref()),
            LatencySummary::json(self.dm_latency_from_due.as_ref()),
            self.dm_max_send_lag_us,
            self.broadcasts_sent,
            self.broadcasts_sent_per_sec(),
            self.broadcast_deliveries,
            self.broadcast_deliveries_per_sec(),
            self.secs,
        )
    }
}

/// What a broadcast-dm run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastDmReport {
    pub subscribers: usize,
    /// Seconds it took to connect and subscribe every subscriber.
    pub connect_secs: f64,
    pub payload: usize,
    pub dm_rate: f64,
    /// `None`: full speed.
    pub broadcast_rate: Option<f64>,
    pub broadcast_qos: u8,
    /// Length of each phase's measurement window (after its warm-up).
    pub measured_secs: f64,
    /// Phase 1 (DMs only) and phase 2 (DMs during broadcasts).
    pub quiet: PhaseReport,
    pub broadcast: PhaseReport,
    /// DMs over the whole run: due on alice's schedule, sent, acknowledged to alice,
    /// received by bob.
    pub dm_due: u64,
    pub dm_sent: u64,
    pub dm_acked: u64,
    pub dm_received: u64,
    /// Broadcasts over the whole run: sent by the operator, deliveries expected (sent times
    /// subscribers) and received (after the drain).
    pub broadcasts_sent: u64,
    pub broadcast_expected: u64,
    pub broadcast_received: u64,
    /// Latency of every broadcast received by a sample of the subscribers.
    pub broadcast_latency: Option<LatencySummary>,
    pub broadcast_latency_subscribers: usize,
    /// Whether bob was subscribed to the broadcasts too, and how many he received.
    pub recipient_broadcasts: bool,
    pub recipient_broadcasts_received: u64,
    /// Subscribers whose connection failed during the run, and the first failure.
    pub subscribers_lost: usize,
    pub first_loss: Option<String>,
}

impl BroadcastDmReport {
    /// Share of expected broadcast deliveries that never arrived, in percent.
    pub fn broadcast_dropped_pct(&self) -> f64 {
        if self.broadcast_expected == 0 {
            return 0.0;
        }
        self.broadcast_expected
            .saturating_sub(self.broadcast_received) as f64
            * 100.0
            / self.broadcast_expected as f64
    }

    /// DM p99 during broadcasts over DM p99 without, when both were measured.
    pub fn p99_ratio(&self) -> Option<f64> {
        let quiet = self.quiet.dm_latency?.p99_us.max(1);
        let loud = self.broadcast.dm_latency?.p99_us;
        Some(loud as f64 / quiet as f64)
    }

    fn rate_text(&self) -> String {
        match self.broadcast_rate {
            Some(r) => format!("{r:.0}/s"),
            None => "full speed".to_string(),
        }
    }

    /// The human summary (a few lines).
    pub fn text(&self) -> String {
        let mut s = format!(
            "broadcast-dm subs={} dm={:.0}/s qos1 broadcast={} qos{} payload={}B, {:.1}s measured per phase (subscribers connected in {:.1}s)",
            self.subscribers,
            self.dm_rate,
            self.rate_text(),
            self.broadcast_qos,
            self.payload,
            self.measured_secs,
            self.connect_secs,
        );
        let short = |l: &Option<LatencySummary>| match l {
            Some(l) => format!("p50={}us p99={}us max={}us", l.p50_us, l.p99_us, l.max_us),
            None => "n/a".to_string(),
        };
        let dm = |p: &PhaseReport| {
            let latency = match &p.dm_latency {
                Some(l) => format!("DM latency {}", l.text()),
                None => "DM latency not measured".to_string(),
            };
            format!(
                "{latency} ({} due, {} sent, {} received)\n{:27}PUBACK {}; from due time {} (alice up to {}us late)",
                p.dm_due,
                p.dm_sent,
                p.dm_received,
                "",
                short(&p.dm_ack_latency),
                short(&p.dm_latency_from_due),
                p.dm_max_send_lag_us,
            )
        };
        let _ = write!(s, "\n  phase 1, no broadcast:   {}", dm(&self.quiet));
        let _ = write!(s, "\n  phase 2, with broadcast: {}", dm(&self.broadcast));
        let _ = write!(
            s,
            "\n  phase 2 broadcasts: {:.0}/s sent, {:.0} deliveries/s received by the subscribers",
            self.broadcast.broadcasts_sent_per_sec(),
            self.broadcast.broadcast_deliveries_per_sec(),
        );
        let _ = write!(
            s,
            "\n  DM p99 with/without broadcast: {}",
            self.p99_ratio()
                .map_or("n/a".to_string(), |r| format!("{r:.1}x"))
        );
        let _ = write!(
            s,
            "\n  broadcasts: sent={} expected={} received={} dropped={:.2}%",
            self.broadcasts_sent,
            self.broadcast_expected,
            self.broadcast_received,
            self.broadcast_dropped_pct(),
        );
        if let Some(l) = &self.broadcast_latency {
            let _ = write!(
                s,
                ", latency ({} sampled subscribers) {}",
                self.broadcast_latency_subscribers,
                l.text()
            );
        }
        let _ = write!(
            s,
            "\n  DMs: due={} sent={} acked={} received={}; bob {}",
            self.dm_due,
            self.dm_sent,
            self.dm_acked,
            self.dm_received,
            if self.recipient_broadcasts {
                format!(
                    "subscribed to the broadcasts too, received {}",
                    self.recipient_broadcasts_received
                )
            } else {
                "not subscribed to the broadcasts".to_string()
            }
        );
        if self.subscribers_lost > 0 {
            let _ = write!(
                s,
                "\n  WARNING: {} subscribers lost their connection, first: {}",
                self.subscribers_lost,
                self.first_loss.as_deref().unwrap_or("?")
            );
        }
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        format!(
            "{{\"scenario\":\"broadcast-dm\",\"subscribers\":{},\"connect_secs\":{:.3},\"payload\":{},\"dm_rate\":{:.1},\"broadcast_rate\":{},\"broadcast_qos\":{},\"measured_secs\":{:.3},\"quiet\":{},\"broadcast\":{},\"p99_ratio\":{},\"dm_due\":{},\"dm_sent\":{},\"dm_acked\":{},\"dm_received\":{},\"broadcasts_sent\":{},\"broadcast_expected\":{},\"broadcast_received\":{},\"broadcast_dropped_pct\":{:.4},\"broadcast_latency_us\":{},\"broadcast_latency_subscribers\":{},\"recipient_broadcasts\":{},\"recipient_broadcasts_received\":{},\"subscribers_lost\":{}}}",
            self.subscribers,
            self.connect_secs,
            self.payload,
            self.dm_rate,
            opt(self.broadcast_rate),
            self.broadcast_qos,
            self.measured_secs,
            self.quiet.json(),
            self.broadcast.json(),
            opt(self.p99_ratio()),
            self.dm_due,
            self.dm_sent,
            self.dm_acked,
            self.dm_received,
            self.broadcasts_sent,
            self.broadcast_expected,
            self.broadcast_received,
            self.broadcast_dropped_pct(),
            LatencySummary::json(self.broadcast_latency.as_ref()),
            self.broadcast_latency_subscribers,
            self.recipient_broadcasts,
            self.recipient_broadcasts_received,
            self.subscribers_lost,
        )
    }
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// The run's timeline, fixed once every client is connected.
#[derive(Debug, Clone, Copy)]
struct Phases {
    /// alice starts.
    start: Instant,
    /// Phase 1's measurement window.
    quiet: (Instant, Instant),
    /// The operator starts broadcasting (= the end of phase 1's window).
    broadcast_start: Instant,
    /// Phase 2's measurement window; its end is the end of sending.
    broadcast: (Instant, Instant),
}

impl Phases {
    fn new(opts: &Options) -> Phases {
        let start = Instant::now() + Duration::from_millis(50);
        let quiet = (start + opts.warmup, start + opts.warmup + opts.duration);
        let broadcast_start = quiet.1;
        let measure = broadcast_start + opts.warmup;
        Phases {
            start,
            quiet,
            broadcast_start,
            broadcast: (measure, measure + opts.duration),
        }
    }

    fn end(&self) -> Instant {
        self.broadcast.1
    }
}

/// Where the idle subscribers report.
#[derive(Default)]
struct Fleet {
    /// Broadcast deliveries received by all subscribers so far.
    deliveries: AtomicU64,
    lost: AtomicUsize,
    first_loss: Mutex<Option<String>>,
}

/// Runs the scenario (see the module documentation).
pub async fn broadcast_dm(opts: &Options, cfg: &BroadcastDmConfig) -> Result<BroadcastDmReport> {
    if !cfg.dm_rate.is_finite() || cfg.dm_rate <= 0.0 {
        return Err(Error::new("--rate must be positive"));
    }
    if let Some(r) = cfg.broadcast_rate {
        if !r.is_finite() || r <= 0.0 {
            return Err(Error::new("--broadcast-rate must be positive"));
        }
    }
    // The payload timestamps' origin, fixed before any phase is.
    now_nanos();
    let n = cfg.subscribers;
    let need = n as u64 + SPARE_FILES;
    let limit = raise_open_files(need)
        .map_err(|e| Error::new(format!("cannot read the open files limit: {e}")))?;
    if limit < need {
        return Err(Error::new(format!(
            "{n} subscribers need about {need} open files, the limit is {limit} \
             (the hard limit, `ulimit -Hn`): use fewer --subscribers"
        )));
    }

    // 1. The idle subscribers, each reading from the moment it is subscribed.
    let connected_at = Instant::now();
    let fleet = Arc::new(Fleet::default());
    let (stop, stop_rx) = watch::channel(false);
    let connecting = Arc::new(Semaphore::new(CONNECT_PARALLEL));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<()>>();
    let stride = n.div_ceil(LATENCY_SAMPLE).max(1);
    let mut subscribers = JoinSet::new();
    for i in 0..n {
        let conn = ConnectOptions {
            client_id: format!("{}-u{i}", opts.run_id),
            username: Some(format!("u{i}")),
            password: None,
            keep_alive: cfg.keep_alive,
            bind: source_address(opts.addr, cfg.per_source, i),
            buffer: SUBSCRIBER_BUFFER,
            clean_start: true,
        };
        subscribers.spawn(idle_subscriber(
            (opts.addr, opts.protocol, conn),
            connecting.clone(),
            ready_tx.clone(),
            fleet.clone(),
            stop_rx.clone(),
            i % stride == 0,
        ));
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(Error::new("a subscriber task failed")),
        }
    }
    let connect_secs = connected_at.elapsed().as_secs_f64();

    // 2. The DM pair on its own thread, and the operator.
    let (dm_ready_tx, dm_ready) = oneshot::channel();
    let (phases_tx, phases_rx) = oneshot::channel();
    let (dm_result_tx, dm_result) = oneshot::channel();
    let pair = DmPair {
        addr: opts.addr,
        protocol: opts.protocol,
        run_id: opts.run_id.clone(),
        payload: opts.payload.max(DM_STAMPS),
        inflight: opts.inflight.max(1),
        rate: cfg.dm_rate,
        max_drain: opts.max_drain,
        recipient_broadcasts: cfg.recipient_broadcasts,
    };
    std::thread::Builder::new()
        .name("dm-pair".into())
        .spawn(move || {
            let result = dm_thread(pair, dm_ready_tx, phases_rx);
            let _ = dm_result_tx.send(result);
        })
        .map_err(|e| Error::new(format!("cannot start the DM thread: {e}")))?;
    match dm_ready.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(Error::new("the DM thread failed")),
    }
    let ops = Client::connect_with(
        opts.addr,
        opts.protocol,
        &ConnectOptions {
            username: Some(cfg.operator.clone()),
            ..ConnectOptions::new(&format!("{}-{}", opts.run_id, cfg.operator))
        },
    )
    .await?;

    // 3. The timeline: phase 1, then phase 2 with the operator broadcasting.
    let phases = Phases::new(opts);
    if phases_tx.send(phases).is_err() {
        return Err(Error::new("the DM thread failed"));
    }
    let spec = PubSpec {
        topic: BROADCAST_TOPIC.to_string(),
        qos: cfg.broadcast_qos,
        payload: opts.payload.max(8),
        inflight: opts.inflight.max(1),
        rate: cfg.broadcast_rate,
    };
    let tl = Timeline {
        start: phases.broadcast_start,
        measure_start: phases.broadcast.0,
        end: phases.broadcast.1,
    };
    // The operator starts only once phase 1's closing count is taken: on a loaded machine
    // that snapshot can wake late, and must not count the first broadcasts as phase 1's.
    let (quiet_counted, counted) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(async move {
        tokio::time::sleep_until(tl.start.into()).await;
        let _ = counted.await;
        operator(ops, spec, tl).await
    });
    let snapshot = |at: Instant| {
        let fleet = fleet.clone();
        async move {
            tokio::time::sleep_until(at.into()).await;
            (fleet.deliveries.load(Ordering::Relaxed), Instant::now())
        }
    };
    let q0 = snapshot(phases.quiet.0).await;
    let q1 = snapshot(phases.quiet.1).await;
    let _ = quiet_counted.send(());
    let b0 = snapshot(phases.broadcast.0).await;
    let b1 = snapshot(phases.broadcast.1).await;
    let ops_stats: PubStats = operator
        .await
        .map_err(|e| Error::new(format!("operator task failed: {e}")))??;

    // 4. Drain: subscribers read until every broadcast arrived or nothing came for
    // `drain_idle` (at most `max_drain` after the end).
    let expected = ops_stats.sent * n as u64;
    let hard_end = phases.end() + opts.max_drain;
    let mut last = fleet.deliveries.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = Instant::now();
        if last >= expected || now >= hard_end || now - last_change >= opts.drain_idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let current = fleet.deliveries.load(Ordering::Relaxed);
        if current != last {
            last = current;
            last_change = Instant::now();
        }
    }
    let _ = stop.send(true);
    let mut broadcast_latency = Latencies::default();
    let mut sampled = 0;
    while let Some(joined) = subscribers.join_next().await {
        if let Some(l) = joined.map_err(|e| Error::new(format!("subscriber task failed: {e}")))? {
            broadcast_latency.merge(&l);
            sampled += 1;
        }
    }
    let dm = match dm_result.await {
        Ok(r) => r?,
        Err(_) => return Err(Error::new("the DM thread failed")),
    };
    let broadcast_received = fleet.deliveries.load(Ordering::Relaxed);
    if ops_stats.sent > 0 && broadcast_received == 0 && n > 0 {
        return Err(Error::new(format!(
            "no broadcast reached any subscriber: is {:?} an operator (im.operators in the \
             broker's config)?",
            cfg.operator
        )));
    }

    let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
    let first_loss = fleet.first_loss.lock().map(|g| g.clone()).unwrap_or(None);
    Ok(BroadcastDmReport {
        subscribers: n,
        connect_secs,
        payload: opts.payload.max(8),
        dm_rate: cfg.dm_rate,
        broadcast_rate: cfg.broadcast_rate,
        broadcast_qos: cfg.broadcast_qos.as_u8(),
        measured_secs: opts.duration.as_secs_f64(),
        quiet: PhaseReport {
            dm_due: dm.quiet.due,
            dm_sent: dm.quiet.sent,
            dm_received: dm.quiet.received,
            dm_latency: dm.quiet.from_write.summary(),
            dm_ack_latency: dm.quiet.ack.summary(),
            dm_latency_from_due: dm.quiet.from_due.summary(),
            dm_max_send_lag_us: dm.quiet.max_lag.as_micros() as u64,
            broadcasts_sent: 0,
            broadcast_deliveries: q1.0 - q0.0,
            secs: secs(q0.1, q1.1),
        },
        broadcast: PhaseReport {
            dm_due: dm.broadcast.due,
            dm_sent: dm.broadcast.sent,
            dm_received: dm.broadcast.received,
            dm_latency: dm.broadcast.from_write.summary(),
            dm_ack_latency: dm.broadcast.ack.summary(),
            dm_latency_from_due: dm.broadcast.from_due.summary(),
            dm_max_send_lag_us: dm.broadcast.max_lag.as_micros() as u64,
            broadcasts_sent: ops_stats.sent_in_window,
            broadcast_deliveries: b1.0 - b0.0,
            secs: secs(b0.1, b1.1),
        },
        dm_due: dm.due,
        dm_sent: dm.sent,
        dm_acked: dm.acked,
        dm_received: dm.received,
        broadcasts_sent: ops_stats.sent,
        broadcast_expected: expected,
        broadcast_received,
        broadcast_latency: broadcast_latency.summary(),
        broadcast_latency_subscribers: sampled,
        recipient_broadcasts: cfg.recipient_broadcasts,
        recipient_broadcasts_received: dm.recipient_broadcasts,
        subscribers_lost: fleet.lost.load(Ordering::Relaxed),
        first_loss,
    })
}

/// Subscriber `i`'s source address: 127.0.0.2 for the first `per_source`, 127.0.0.3 for
/// the next, ...; `None` (the system's choice) unless the broker is on 127.x.x.x.
pub fn source_address(broker: SocketAddr, per_source: usize, i: usize) -> Option<IpAddr> {
    match broker.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && per_source > 0 => {
            let offset = 2 + (i / per_source) as u32;
            Some(IpAddr::V4(Ipv4Addr::from(
                0x7f00_0000 + offset.min(0x00ff_fffe),
            )))
        }
        _ => None,
    }
}

/// One idle subscriber: connects (a bounded number at a time), subscribes to the broadcast
/// channel, says so on `ready`, then reads and counts until `stop`, sending PINGREQ at half
/// its keep alive. Returns its broadcast latencies when it is one of the sample.
async fn idle_subscriber(
    (addr, protocol, conn): (SocketAddr, Protocol, ConnectOptions),
    connecting: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<()>>,
    fleet: Arc<Fleet>,
    mut stop: watch::Receiver<bool>,
    sample: bool,
) -> Option<Latencies> {
    let keep_alive = conn.keep_alive;
    let connected = async {
        let _permit = connecting.acquire().await;
        let mut client = Client::connect_with(addr, protocol, &conn).await?;
        client.subscribe(BROADCAST_TOPIC, QoS::AtMostOnce).await?;
        Ok::<_, Error>(client)
    }
    .await;
    let Client {
        mut reader,
        mut writer,
    } = match connected {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    drop(ready);
    let mut latencies = sample.then(Latencies::default);
    let result = stay_connected(&mut reader, &mut writer, keep_alive, &mut stop, |r, w| {
        let mut received = 0;
        while let Some(packet) = r.try_next()? {
            if let Packet::Publish(p) = packet {
                received += 1;
                if p.qos != QoS::AtMostOnce {
                    w.queue_puback(p.packet_id)?;
                }
                if let (Some(l), Some(d)) = (latencies.as_mut(), payload_latency(&p.payload)) {
                    l.record(d);
                }
            }
        }
        if received > 0 {
            fleet.deliveries.fetch_add(received, Ordering::Relaxed);
        }
        Ok(())
    })
    .await;
    match result {
        Ok(()) => writer.disconnect().await,
        Err(e) => {
            fleet.lost.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = fleet.first_loss.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
    latencies
}

/// The operator: publishes broadcasts from `tl.start` to `tl.end`, at full speed or paced,
/// in batches (QoS 1 within its window). Unlike [`crate::run::publisher`] it does not wait
/// for the broker after the end: a broker that fell behind a full-speed QoS 0 flood has
/// megabytes of broadcasts waiting in the socket, so the connection is reset (dropping that
/// backlog) rather than drained for minutes. A message counts as sent once written to the
/// socket; in the window if written in it.
async fn operator(client: Client, spec: PubSpec, tl: Timeline) -> Result<PubStats> {
    const BATCH: u64 = 64;
    let Client {
        mut reader,
        mut writer,
    } = client;
    let qos1 = spec.qos != QoS::AtMostOnce;
    let window = spec.inflight.max(1) as usize;
    let permits = Arc::new(Semaphore::new(if qos1 { window } else { 0 }));
    let acked = Arc::new(AtomicU64::new(0));
    let read_task = {
        let (permits, acked) = (permits.clone(), acked.clone());
        tokio::spawn(async move {
            while let Ok(packet) = reader.next().await {
                if let Packet::PubAck(_) = packet {
                    acked.fetch_add(1, Ordering::Relaxed);
                    permits.add_permits(1);
                }
            }
            permits.close();
        })
    };
    let topic = ByteString::from(spec.topic.clone());
    let filler = Bytes::from(vec![b'x'; spec.payload]);
    let mut stats = PubStats::default();
    let mut packet_id: u16 = 0;
    let mut behind = false;
    let result: Result<()> = async {
        'run: loop {
            let now = Instant::now();
            if now >= tl.end {
                break;
            }
            let n = match pace(spec.rate, tl.start, stats.sent, now, BATCH) {
                Pace::Send(n) => n,
                Pace::Wait(next) => {
                    tokio::time::sleep_until(next.min(tl.end).into()).await;
                    continue;
                }
            };
            let mut queued = 0;
            for _ in 0..n {
                if qos1 {
                    match permits.try_acquire() {
                        Ok(p) => p.forget(),
                        Err(TryAcquireError::NoPermits) if queued > 0 => break,
                        Err(TryAcquireError::NoPermits) => {
                            match tokio::time::timeout_at(tl.end.into(), permits.acquire()).await {
                                Ok(Ok(p)) => p.forget(),
                                Ok(Err(_)) => return Err(Error::new("operator: connection lost")),
                                Err(_) => break 'run,
                            }
                        }
                        Err(TryAcquireError::Closed) => {
                            return Err(Error::new("operator: connection lost"))
                        }
                    }
                    packet_id = packet_id.wrapping_add(1).max(1);
                }
                writer.queue_publish(
                    &topic,
                    spec.qos,
                    packet_id,
                    stamped_payload(spec.payload, &filler),
                )?;
                queued += 1;
            }
            match tokio::time::timeout_at(tl.end.into(), writer.flush()).await {
                Ok(written) => written?,
                Err(_) => {
                    behind = true;
                    break;
                }
            }
            stats.sent += queued;
            if tl.in_window(Instant::now()) {
                stats.sent_in_window += queued;
            }
        }
        Ok(())
    }
    .await;
    stats.acked = acked.load(Ordering::Relaxed);
    if behind {
        writer.reset();
    } else if result.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.disconnect()).await;
    }
    read_task.abort();
    result.map(|()| stats)
}

/// What the DM thread needs.
struct DmPair {
    addr: SocketAddr,
    protocol: Protocol,
    run_id: String,
    payload: usize,
    inflight: u16,
    rate: f64,
    max_drain: Duration,
    recipient_broadcasts: bool,
}

/// The DMs due in one phase's window.
#[derive(Default)]
struct DmPhase {
    due: u64,
    sent: u64,
    received: u64,
    /// The longest alice wrote one after it was due.
    max_lag: Duration,
    from_due: Latencies,
    from_write: Latencies,
    /// Write to PUBACK.
    ack: Latencies,
}

/// What the DM pair measured.
#[derive(Default)]
struct DmOutcome {
    due: u64,
    sent: u64,
    acked: u64,
    received: u64,
    quiet: DmPhase,
    broadcast: DmPhase,
    /// Broadcasts bob received.
    recipient_broadcasts: u64,
}

impl DmOutcome {
    /// The phase whose window (in stamp nanoseconds) holds `t`, if any.
    fn phase(
        &mut self,
        (quiet, broadcast): ((u64, u64), (u64, u64)),
        t: u64,
    ) -> Option<&mut DmPhase> {
        if t >= quiet.0 && t < quiet.1 {
            Some(&mut self.quiet)
        } else if t >= broadcast.0 && t < broadcast.1 {
            Some(&mut self.broadcast)
        } else {
            None
        }
    }
}

/// The DM thread: a current-thread runtime that connects bob and alice, says so on
/// `ready`, awaits the timeline and runs both.
fn dm_thread(
    pair: DmPair,
    ready: oneshot::Sender<Result<()>>,
    phases: oneshot::Receiver<Phases>,
) -> Result<DmOutcome> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let e = Error::new(format!("cannot start the DM runtime: {e}"));
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    runtime.block_on(async move {
        let user = |name: &str| ConnectOptions {
            username: Some(name.to_string()),
            ..ConnectOptions::new(&format!("{}-{name}", pair.run_id))
        };
        let connected = async {
            let mut bob = Client::connect_with(pair.addr, pair.protocol, &user(RECIPIENT)).await?;
            bob.subscribe(&format!("inbox/{RECIPIENT}/#"), QoS::AtLeastOnce)
                .await?;
            if pair.recipient_broadcasts {
                bob.subscribe(BROADCAST_TOPIC, QoS::AtMostOnce).await?;
            }
            let alice = Client::connect_with(pair.addr, pair.protocol, &user(SENDER)).await?;
            Ok::<_, Error>((alice, bob))
        }
        .await;
        let (alice, bob) = match connected {
            Ok(c) => {
                let _ = ready.send(Ok(()));
                c
            }
            Err(e) => {
                let _ = ready.send(Err(e.clone()));
                return Err(e);
            }
        };
        let phases = phases
            .await
            .map_err(|_| Error::new("the run ended before it started"))?;
        let (sent_tx, sent_rx) = oneshot::channel();
        let max_drain = pair.max_drain;
        let sender = tokio::spawn(dm_sender(alice, pair, phases, sent_tx));
        let received = dm_receiver(bob, phases, sent_rx, max_drain).await;
        let sent = sender
            .await
            .map_err(|e| Error::new(format!("alice's task failed: {e}")))??;
        let mut out = received?;
        out.due = sent.due;
        out.sent = sent.sent;
        out.acked = sent.acked;
        for (phase, from) in [
            (&mut out.quiet, sent.quiet),
            (&mut out.broadcast, sent.broadcast),
        ] {
            phase.due = from.due;
            phase.sent = from.sent;
            phase.max_lag = from.max_lag;
            phase.ack = from.ack;
        }
        Ok(out)
    })
}

/// What alice did (`received` and bob's latencies stay empty).
#[derive(Default)]
struct SenderStats {
    due: u64,
    sent: u64,
    acked: u64,
    quiet: DmPhase,
    broadcast: DmPhase,
}

impl SenderStats {
    /// The phase window `due` falls in, if any.
    fn phase(&mut self, phases: &Phases, due: Instant) -> Option<&mut DmPhase> {
        let inside = |w: (Instant, Instant)| due >= w.0 && due < w.1;
        if inside(phases.quiet) {
            Some(&mut self.quiet)
        } else if inside(phases.broadcast) {
            Some(&mut self.broadcast)
        } else {
            None
        }
    }
}

/// A DM payload of `len` bytes (at least 16): the due time, the write time, filler.
fn dm_payload(len: usize, filler: &Bytes, due: u64, written: u64) -> Bytes {
    let mut b = bytes::BytesMut::with_capacity(len.max(DM_STAMPS));
    b.extend_from_slice(&due.to_le_bytes());
    b.extend_from_slice(&written.to_le_bytes());
    b.extend_from_slice(&filler[..len.saturating_sub(DM_STAMPS)]);
    b.freeze()
}

/// alice: `dm/bob` at QoS 1 on a fixed schedule from the start to the end of phase 2, at
/// most `inflight` unacknowledged; DMs still unsent `max_drain` after the end are given up.
/// Tells `sent_total` how many she sent, then awaits the PUBACKs (at most `max_drain`).
async fn dm_sender(
    client: Client,
    pair: DmPair,
    phases: Phases,
    sent_total: oneshot::Sender<u64>,
) -> Result<SenderStats> {
    let Client {
        mut reader,
        mut writer,
    } = client;
    let window = pair.inflight as usize;
    let permits = Arc::new(Semaphore::new(window));
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // When each packet ID in flight was written, and the PUBACK latencies of the DMs
    // written in each window.
    let book = Arc::new(Mutex::new((
        vec![0u64; 1 << 16],
        Latencies::default(),
        Latencies::default(),
    )));
    let read_task = {
        let (permits, acked, done) = (permits.clone(), acked.clone(), done.clone());
        let book = book.clone();
        let window = |w: (Instant, Instant)| (nanos_at(w.0), nanos_at(w.1));
        let (quiet, broadcast) = (window(phases.quiet), window(phases.broadcast));
        tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Ok(Packet::PubAck(ack)) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        permits.add_permits(1);
                        if let Ok(mut book) = book.lock() {
                            let written = book.0[usize::from(ack.packet_id)];
                            let latency = Duration::from_nanos(now_nanos().saturating_sub(written));
                            if written >= quiet.0 && written < quiet.1 {
                                book.1.record(latency);
                            } else if written >= broadcast.0 && written < broadcast.1 {
                                book.2.record(latency);
                            }
                        }
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
    let topic = ByteString::from(format!("dm/{RECIPIENT}"));
    let filler = Bytes::from(vec![b'x'; pair.payload]);
    let give_up = phases.end() + pair.max_drain;
    let due_at = |k: u64| phases.start + Duration::from_secs_f64(k as f64 / pair.rate);
    let mut stats = SenderStats::default();
    let mut packet_id: u16 = 0;
    let result: Result<()> = async {
        loop {
            let due = due_at(stats.due);
            if due >= phases.end() {
                break;
            }
            if due > Instant::now() {
                writer.flush().await?;
                tokio::time::sleep_until(due.into()).await;
                continue;
            }
            match permits.try_acquire() {
                Ok(p) => p.forget(),
                Err(TryAcquireError::NoPermits) => {
                    writer.flush().await?;
                    match tokio::time::timeout_at(give_up.into(), permits.acquire()).await {
                        Ok(Ok(p)) => p.forget(),
                        Ok(Err(_)) => return Err(Error::new("connection lost")),
                        Err(_) => break,
                    }
                }
                Err(TryAcquireError::Closed) => return Err(Error::new("connection lost")),
            }
            let written = Instant::now();
            if written >= give_up {
                break;
            }
            packet_id = packet_id.wrapping_add(1).max(1);
            let stamps = (nanos_at(due), nanos_at(written));
            if let Ok(mut book) = book.lock() {
                book.0[usize::from(packet_id)] = stamps.1;
            }
            let payload = dm_payload(pair.payload, &filler, stamps.0, stamps.1);
            writer.queue_publish(&topic, QoS::AtLeastOnce, packet_id, payload)?;
            stats.due += 1;
            stats.sent += 1;
            if let Some(phase) = stats.phase(&phases, due) {
                phase.due += 1;
                phase.sent += 1;
                phase.max_lag = phase.max_lag.max(written - due);
            }
        }
        writer.flush().await?;
        let _ = sent_total.send(stats.sent);
        // The DMs given up still count as due.
        loop {
            let due = due_at(stats.due);
            if due >= phases.end() {
                break;
            }
            stats.due += 1;
            if let Some(phase) = stats.phase(&phases, due) {
                phase.due += 1;
            }
        }
        let wait = permits.acquire_many(window as u32);
        match tokio::time::timeout(pair.max_drain, wait).await {
            Ok(Ok(p)) => p.forget(),
            Ok(Err(_)) => return Err(Error::new("connection lost")),
            // Reported as sent > acked.
            Err(_) => {}
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        return Err(
            match tokio::time::timeout(Duration::from_secs(1), read_task).await {
                Ok(Ok(Err(read_err))) => read_err,
                _ => Error::new(format!("{SENDER}: {e}")),
            },
        );
    }
    done.store(true, Ordering::Relaxed);
    writer.disconnect().await;
    read_task.abort();
    if let Ok(mut book) = book.lock() {
        stats.quiet.ack = std::mem::take(&mut book.1);
        stats.broadcast.ack = std::mem::take(&mut book.2);
    }
    stats.acked = acked.load(Ordering::Relaxed);
    Ok(stats)
}

/// bob: acknowledges every DM and times it (from its due and its write time) by the phase
/// window it was due in; stops once every DM alice sent has arrived, or `max_drain` after
/// she finished sending.
async fn dm_receiver(
    client: Client,
    phases: Phases,
    mut sent_total: oneshot::Receiver<u64>,
    max_drain: Duration,
) -> Result<DmOutcome> {
    let Client {
        mut reader,
        mut writer,
    } = client;
    let window = |w: (Instant, Instant)| (nanos_at(w.0), nanos_at(w.1));
    let (quiet, broadcast) = (window(phases.quiet), window(phases.broadcast));
    // alice sends for at most `max_drain` after the end: a backstop should she never say
    // how many she sent.
    let mut hard_end = phases.end() + max_drain * 2;
    let mut out = DmOutcome::default();
    let mut total: Option<u64> = None;
    loop {
        while let Some(packet) = reader.try_next()? {
            let Packet::Publish(p) = packet else { continue };
            if p.qos != QoS::AtMostOnce {
                writer.queue_puback(p.packet_id)?;
            }
            if p.topic.starts_with("broadcast/") {
                out.recipient_broadcasts += 1;
                continue;
            }
            out.received += 1;
            let (Some(due), Some(written)) = (
                payload_stamp(&p.payload),
                p.payload.get(8..).and_then(payload_stamp),
            ) else {
                continue;
            };
            let now = now_nanos();
            // Counts and the latency from the due time go by the window the DM was due in;
            // the latency from the write by the window it was written in (the broker's
            // conditions when it got the DM: alice may write late, after the broadcasts).
            if let Some(phase) = out.phase((quiet, broadcast), due) {
                phase.received += 1;
                phase
                    .from_due
                    .record(Duration::from_nanos(now.saturating_sub(due)));
            }
            if let Some(phase) = out.phase((quiet, broadcast), written) {
                phase
                    .from_write
                    .record(Duration::from_nanos(now.saturating_sub(written)));
            }
        }
        writer.flush().await?;
        if total.is_some_and(|t| out.received >= t) {
            break;
        }
        tokio::select! {
            read = reader.fill() => read?,
            sent = &mut sent_total, if total.is_none() => match sent {
                Ok(t) => {
                    total = Some(t);
                    hard_end = Instant::now() + max_drain;
                }
                // alice failed: her error explains it.
                Err(_) => break,
            },
            _ = tokio::time::sleep_until(hard_end.into()) => break,
        }
    }
    writer.disconnect().await;
    Ok(out)
}
