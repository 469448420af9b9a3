//! `tern-compare`: tern side by side with Mosquitto and rumqttd (issue 5). Starts each
//! broker fresh on a free loopback port for every run, runs the scenarios round after round
//! alternating the brokers, prints progress, and writes the medians, ratios tern/peer and
//! targets to `benches/RESULTS.md`. With `--tern-baseline PATH`, a second tern build runs
//! beside tern as `tern-base`, alternated like the others, for new/old ratios.
//!
//! ```text
//! scripts/bench.sh                                   # everything, 3 rounds (~25 minutes)
//! scripts/bench.sh --only fan-in,pairs --rounds 1 --duration 3 --out /tmp/quick.md
//! scripts/bench.sh --only pairs --tern-baseline /tmp/tern-old   # tern / tern-base ratios
//! tern-compare --help
//! ```

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use tern_bench::broker::{dir_bytes, Binaries, BrokerProcess, BrokerSetup, Kind};
use tern_bench::compare::{self, Better, Header, Machine, Section, Verdict};
use tern_bench::run::raise_open_files;
use tern_bench::scenarios::chat::{ChatConfig, ChatReport};
use tern_bench::scenarios::dm_offline::{self, DmOfflineConfig, DmOfflineReport};
use tern_bench::scenarios::durable::{self, DurableConfig};
use tern_bench::scenarios::{
    self, connections, ConnectionsConfig, ConnectionsReport, Credentials, GroupConfig,
    GroupOutcome, RetainedConfig,
};
use tern_bench::{Error, Options, Report, Result};
use tern_codec::{Protocol, QoS};

/// Every scenario, in the issue's order.
const SCENARIOS: &[&str] = &[
    "fan-in",
    "pairs",
    "fan-out",
    "latency",
    "connections",
    "heartbeats",
    "logins",
    "durable",
    "retained",
    "group",
    "dm-offline",
    "chat",
];

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tern-compare",
    about = "tern side by side with Mosquitto and rumqttd: every scenario, brokers alternated, medians and ratios written to benches/RESULTS.md",
    after_help = "Scenarios: fan-in, pairs, fan-out, latency, connections, heartbeats, durable, retained, group (heartbeats: the cost of idle devices' PINGREQs, beside scenario 5; durable: tern under each storage.sync policy vs Mosquitto with persistence; group: tern only)."
)]
struct Cli {
    /// Rounds: each scenario runs every broker this many times, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Leave these scenarios out (comma-separated).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Brokers to compare (comma-separated: tern, tern-base, mosquitto, rumqttd) [default:
    /// tern,mosquitto,rumqttd, with tern-base after tern when --tern-baseline is given].
    #[arg(long, value_delimiter = ',')]
    brokers: Vec<String>,
    /// Measurement window of the timed scenarios (fan-in, pairs, fan-out, latency, group),
    /// in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up before each measurement window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Subscribers stop reading once nothing came for this long after the end (seconds).
    #[arg(long, default_value_t = 0.5)]
    drain: f64,
    /// ... and at the latest this long after the end (seconds).
    #[arg(long, default_value_t = 30.0)]
    max_drain: f64,
    /// QoS 1 messages each publisher keeps in flight.
    #[arg(long, default_value_t = 16)]
    inflight: u16,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// fan-in: publishers (scenario 1).
    #[arg(long, default_value_t = 4)]
    fan_in_publishers: usize,
    /// pairs: publisher/subscriber pairs (scenario 2).
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// fan-out: subscribers (scenario 3).
    #[arg(long, default_value_t = 1000)]
    fan_out_subscribers: usize,
    /// latency: total publish rate, msgs/s (scenario 4).
    #[arg(long, default_value_t = 20_000.0)]
    latency_rate: f64,
    /// connections: idle clients (scenario 5; at most about the open files hard limit
    /// minus 100).
    #[arg(long, default_value_t = 19_000)]
    connections: usize,
    /// connections: keep alive of the idle clients, seconds.
    #[arg(long, default_value_t = 60)]
    keepalive: u16,
    /// connections: clients per loopback source address (127.0.0.2, .3, ...).
    #[arg(long, default_value_t = 1000)]
    per_source: usize,
    /// connections: connects in progress at once.
    #[arg(long, default_value_t = 64)]
    connect_parallel: usize,
    /// logins: devices reconnecting at once, with no credentials, a token each, or a
    /// password (argon2id).
    #[arg(long, default_value_t = 19_000)]
    login_clients: usize,
    /// heartbeats: idle clients, each pinging every `heartbeat_keepalive / 2` seconds.
    #[arg(long, default_value_t = 5_000)]
    heartbeat_clients: usize,
    /// heartbeats: keep alive of those clients, seconds.
    #[arg(long, default_value_t = 2)]
    heartbeat_keepalive: u16,
    /// heartbeats: how long the broker's CPU time and the PINGRESPs are counted, seconds.
    #[arg(long, default_value_t = 5.0)]
    heartbeat_window: f64,
    /// durable: persistent sessions (scenario 6).
    #[arg(long, default_value_t = 1000)]
    durable_sessions: usize,
    /// durable: QoS 1 messages published (each queued for every session: 1,000 x 1,000 =
    /// the 1M queued messages of the restart).
    #[arg(long, default_value_t = 1000)]
    durable_messages: usize,
    /// chat: users (two devices each).
    #[arg(long, default_value_t = 500)]
    chat_users: usize,
    /// chat: members per group.
    #[arg(long, default_value_t = 50)]
    chat_group_size: usize,
    /// chat: QoS 1 messages in flight per device.
    #[arg(long, default_value_t = 2)]
    chat_window: u16,
    /// dm-offline: sender/receiver pairs.
    #[arg(long, default_value_t = 64)]
    dm_pairs: usize,
    /// dm-offline: messages each sender sends.
    #[arg(long, default_value_t = 10_000)]
    dm_messages: u64,
    /// durable: Mosquitto's autosave_interval, seconds.
    #[arg(long, default_value_t = 10)]
    mosquitto_autosave: u32,
    /// retained: store sizes R (comma-separated; scenario 7).
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    retained: Vec<usize>,
    /// retained: size of the subtree matched by `.../sub/#`.
    #[arg(long, default_value_t = 10_000)]
    retained_subtree: usize,
    /// retained: timed subscriptions per filter and run.
    #[arg(long, default_value_t = 5)]
    retained_samples: usize,
    /// group: members (scenario 8; 10% online).
    #[arg(long, default_value_t = 1000)]
    group_members: usize,
    /// The tern binary [default: `tern` next to this program].
    #[arg(long)]
    tern: Option<PathBuf>,
    /// A second tern binary (e.g. an older commit's release build), run as `tern-base`
    /// beside tern in every scenario that runs tern, configured and alternated alike: the
    /// tables then give tern / tern-base, to check a change for regressions.
    #[arg(long, value_name = "PATH")]
    tern_baseline: Option<PathBuf>,
    /// The Mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// The rumqttd binary [default: $HOME/.cache/tern-tools/bin/rumqttd, else on PATH].
    #[arg(long)]
    rumqttd: Option<PathBuf>,
    /// Where to write the Markdown report.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    out: PathBuf,
    /// Directory for the brokers' configurations, data and logs [default: a new directory
    /// under the system's temporary directory, removed at the end].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep every broker's directory (configuration, data, log) after its run.
    #[arg(long)]
    keep: bool,
}

/// What every run needs.
struct Ctx {
    cli: Cli,
    bins: Binaries,
    work: PathBuf,
    kinds: Vec<Kind>,
    /// Broker directories started so far (each gets a new one).
    seq: usize,
    /// Connection runs so far (each uses fresh source addresses).
    connection_runs: usize,
    /// CPUs the run may use (the report's `machine.cpus`).
    cpus: usize,
}

impl Ctx {
    fn options(&self, addr: std::net::SocketAddr) -> Options {
        let mut o = Options::new(addr);
        o.protocol = Protocol::V311;
        o.payload = self.cli.payload.max(16);
        o.duration = Duration::from_secs_f64(self.cli.duration);
        o.warmup = Duration::from_secs_f64(self.cli.warmup);
        o.drain_idle = Duration::from_secs_f64(self.cli.drain);
        o.max_drain = Duration::from_secs_f64(self.cli.max_drain);
        o.inflight = self.cli.inflight.max(1);
        // A broker that disconnects subscribers falling behind shows it as drops.
        o.tolerate_disconnects = true;
        o
    }

    fn next_dir(&mut self, label: &str) -> PathBuf {
        self.seq += 1;
        let name: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        self.work.join(format!("{:03}-{name}", self.seq))
    }

    /// Prepares a broker (configuration written, not started).
    fn prepare(&mut self, setup: &BrokerSetup) -> Result<BrokerProcess> {
        let dir = self.next_dir(&setup.label);
        let mut b = BrokerProcess::prepare(setup, &self.bins, &dir)?;
        b.keep_dir(self.cli.keep);
        Ok(b)
    }

    /// Starts a broker and waits for its first CONNACK. A tern with users to create
    /// starts once (creating its database), stops, gets them offline and starts again.
    async fn start(&mut self, setup: &BrokerSetup) -> Result<BrokerProcess> {
        let mut b = self.prepare(setup)?.spawn()?;
        b.wait_ready(Duration::from_secs(60)).await?;
        if !setup.tern_users.is_empty() {
            b.stop(Duration::from_secs(60)).await;
            for (user, password) in &setup.tern_users {
                let args = [
                    "user",
                    "add",
                    "--password",
                    password.as_str(),
                    user.as_str(),
                ];
                tern_offline(self, setup, &b.data, &args)?;
            }
            b.restart()?;
            b.wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(b)
    }

    fn setups(&self, f: impl Fn(Kind) -> Option<BrokerSetup>) -> Vec<BrokerSetup> {
        self.kinds.iter().filter_map(|k| f(*k)).collect()
    }

    /// The longest one run may take before it counts as failed.
    fn run_limit(&self) -> Duration {
        Duration::from_secs_f64(self.cli.warmup + self.cli.duration + self.cli.max_drain + 600.0)
    }
}

/// The order of the brokers in round `round`: rotated by one each round.
fn order(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round) % n.max(1)).collect()
}

/// Runs `f` with a time limit; a broker that died during the run is named in the error.
async fn limited<T>(limit: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(format!("the run took more than {limit:?}"))),
    }
}

fn alive(b: &mut BrokerProcess) -> Result<()> {
    if b.running() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "{} exited during the run; its log ends with:\n{}",
            b.setup.label,
            b.log_tail(15)
        )))
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn labels(setups: &[BrokerSetup]) -> Vec<String> {
    setups.iter().map(|s| s.label.clone()).collect()
}

fn progress(scenario: &str, round: usize, rounds: usize, label: &str, text: &str) {
    eprintln!("[{scenario} {}/{rounds}] {label}: {text}", round + 1);
}

// ---------------------------------------------------------------------------------------
// Scenarios 1-4: the tern-bench scenarios.

#[derive(Debug, Clone, Copy)]
enum Std {
    FanIn,
    Pairs,
    FanOut(QoS),
    Latency(QoS),
}

/// One run of a tern-bench scenario, with the broker's CPU time over the whole run (from
/// its start, connections and warm-up included) when it could be read.
struct StandardRun {
    report: Report,
    broker_cpu_secs: Option<f64>,
}

impl StandardRun {
    /// The broker's CPU time per message delivered over the whole run, in µs: what a
    /// message costs the broker, less sensitive than a rate to what else the shared cores
    /// run meanwhile.
    fn cpu_per_delivery_us(&self) -> Option<f64> {
        let received = self.report.received;
        self.broker_cpu_secs
            .filter(|_| received > 0)
            .map(|secs| secs * 1e6 / received as f64)
    }
}

async fn standard_run(ctx: &mut Ctx, setup: &BrokerSetup, which: Std) -> Result<StandardRun> {
    let mut b = ctx.start(setup).await?;
    let opts = ctx.options(b.addr);
    let c = &ctx.cli;
    let pid = b.pid();
    let cpu_before = pid.and_then(connections::cpu_secs);
    let run = async {
        match which {
            Std::FanIn => scenarios::fan_in(&opts, c.fan_in_publishers, QoS::AtMostOnce).await,
            Std::Pairs => scenarios::pairs(&opts, c.pairs, QoS::AtLeastOnce).await,
            Std::FanOut(q) => scenarios::fan_out(&opts, c.fan_out_subscribers, q).await,
            Std::Latency(q) => scenarios::latency(&opts, c.latency_rate, q).await,
        }
    };
    let r = limited(ctx.run_limit(), run).await;
    let cpu_after = pid.and_then(connections::cpu_secs);
    alive(&mut b)?;
    Ok(StandardRun {
        report: r?,
        broker_cpu_secs: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
    })
}

fn qname(q: QoS) -> &'static str {
    if q == QoS::AtMostOnce {
        "QoS 0"
    } else {
        "QoS 1"
    }
}

fn record_standard(sec: &mut Section, which: Std, label: &str, run: &StandardRun) {
    let r = &run.report;
    let lat = |f: fn(&tern_bench::LatencySummary) -> u64| r.latency.as_ref().map(f);
    match which {
        Std::FanIn | Std::Pairs => {
            sec.record(
                "delivered",
                "msgs/s",
                Better::Higher,
                label,
                Some(r.delivered_per_sec()),
            );
            sec.record(
                "sent",
                "msgs/s",
                Better::Neither,
                label,
                Some(r.sent_per_sec()),
            );
            sec.record("dropped", "%", Better::Lower, label, Some(r.dropped_pct()));
            sec.record(
                "broker CPU per delivery",
                "µs",
                Better::Lower,
                label,
                run.cpu_per_delivery_us(),
            );
            sec.record(
                "latency p50",
                "ms",
                Better::Lower,
                label,
                lat(|l| l.p50_us).map(ms),
            );
            sec.record(
                "latency p99",
                "ms",
                Better::Lower,
                label,
                lat(|l| l.p99_us).map(ms),
            );
            sec.record(
                "subscribers disconnected by the broker",
                "",
                Better::Neither,
                label,
                Some(r.lost_subscribers as f64),
            );
        }
        Std::FanOut(q) => {
            let n = qname(q);
            sec.record(
                &format!("{n} deliveries"),
                "msgs/s",
                Better::Higher,
                label,
                Some(r.delivered_per_sec()),
            );
            sec.record(
                &format!("{n} published"),
                "msgs/s",
                Better::Neither,
                label,
                Some(r.sent_per_sec()),
            );
            sec.record(
                &format!("{n} dropped"),
                "%",
                Better::Lower,
                label,
                Some(r.dropped_pct()),
            );
            sec.record(
                &format!("{n} broker CPU per delivery"),
                "µs",
                Better::Lower,
                label,
                run.cpu_per_delivery_us(),
            );
            sec.record(
                &format!("{n} subscribers disconnected by the broker"),
                "",
                Better::Neither,
                label,
                Some(r.lost_subscribers as f64),
            );
        }
        Std::Latency(q) => {
            let n = qname(q);
            sec.record(
                &format!("{n} p50"),
                "µs",
                Better::Lower,
                label,
                lat(|l| l.p50_us).map(|v| v as f64),
            );
            sec.record(
                &format!("{n} p99"),
                "µs",
                Better::Lower,
                label,
                lat(|l| l.p99_us).map(|v| v as f64),
            );
            sec.record(
                &format!("{n} p99.9"),
                "µs",
                Better::Lower,
                label,
                lat(|l| l.p999_us).map(|v| v as f64),
            );
            sec.record(
                &format!("{n} received"),
                "msgs/s",
                Better::Neither,
                label,
                Some(r.delivered_per_sec()),
            );
        }
    }
}

/// What the "broker CPU per delivery" rows of scenarios 1-3 measure.
const CPU_PER_DELIVERY: &str = "The broker's CPU time (user + system, /proc/PID/stat) over the whole run, connections and warm-up included, per message delivered: what a message costs the broker, steadier than a rate on shared cores.";

async fn standard_section(ctx: &mut Ctx, id: &str) -> Section {
    let c = ctx.cli.clone();
    let (title, setup_text, runs): (&str, String, Vec<Std>) = match id {
        "fan-in" => (
            "1. fan-in, QoS 0",
            format!(
                "{} publishers at full speed into 1 subscriber on one topic, QoS 0, {}-byte payloads, {} s measured after {} s of warm-up: messages delivered per second in the window, and the share of everything sent that never arrived (after up to {} s of drain). {CPU_PER_DELIVERY}",
                c.fan_in_publishers, c.payload, c.duration, c.warmup, c.max_drain
            ),
            vec![Std::FanIn],
        ),
        "pairs" => (
            "2. pairs, QoS 1",
            format!(
                "{} publisher/subscriber pairs on distinct topics (the direct-message pattern), QoS 1, each publisher at full speed with {} messages in flight, {}-byte payloads, {} s measured: messages delivered per second and end-to-end latency. {CPU_PER_DELIVERY}",
                c.pairs, c.inflight, c.payload, c.duration
            ),
            vec![Std::Pairs],
        ),
        "fan-out" => (
            "3. fan-out, QoS 0 and QoS 1",
            format!(
                "1 publisher at full speed (QoS 1: {} in flight) to {} subscribers on one topic, {}-byte payloads, {} s measured: deliveries per second (every subscriber's copy counts). {CPU_PER_DELIVERY}",
                c.inflight, c.fan_out_subscribers, c.payload, c.duration
            ),
            vec![Std::FanOut(QoS::AtMostOnce), Std::FanOut(QoS::AtLeastOnce)],
        ),
        _ => (
            "4. latency at a fixed rate",
            format!(
                "Publishers paced to {} msgs/s in total into 1 subscriber, QoS 0 and QoS 1 ({} in flight), {}-byte payloads, {} s measured: latency from the publisher's write to the subscriber's read (both in the tool).",
                c.latency_rate, c.inflight, c.payload, c.duration
            ),
            vec![Std::Latency(QoS::AtMostOnce), Std::Latency(QoS::AtLeastOnce)],
        ),
    };
    let setups = ctx.setups(|k| Some(BrokerSetup::new(k)));
    let mut sec = Section::new(id, title, &setup_text, &labels(&setups));
    for which in runs {
        for round in 0..c.rounds {
            for i in order(setups.len(), round) {
                let s = &setups[i];
                match standard_run(ctx, s, which).await {
                    Ok(r) => {
                        progress(id, round, c.rounds, &s.label, &r.report.line());
                        record_standard(&mut sec, which, &s.label, &r);
                    }
                    Err(e) => {
                        progress(id, round, c.rounds, &s.label, &format!("FAILED: {e}"));
                        sec.fail(&s.label, &format!("{which:?}: {e}"));
                    }
                }
            }
        }
    }
    standard_targets(&mut sec);
    sec
}

fn standard_targets(sec: &mut Section) {
    let metrics: Vec<String> = match sec.id.as_str() {
        "fan-in" | "pairs" => vec!["delivered".into()],
        "fan-out" => vec!["QoS 0 deliveries".into(), "QoS 1 deliveries".into()],
        _ => {
            for q in ["QoS 0", "QoS 1"] {
                let p99 = sec.median(&format!("{q} p99"), "tern");
                sec.target(
                    &format!("tern p99 <= 500 µs at the fixed rate, {q}"),
                    Verdict::from(p99.map(|v| v <= 500.0)),
                    p99.map_or("n/a".into(), |v| format!("tern p99 = {v:.0} µs")),
                );
            }
            return;
        }
    };
    for m in metrics {
        for (peer, want) in [("mosquitto", 2.0), ("rumqttd", 1.2)] {
            let r = sec.ratio(&m, "tern", peer);
            if sec.brokers.iter().any(|b| b == peer) {
                sec.target(
                    &format!("{m}: tern >= {want}x {peer}"),
                    Verdict::from(r.map(|r| r >= want)),
                    r.map_or("n/a".into(), |r| format!("{r:.2}x")),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Beside scenario 5: heartbeats.

async fn heartbeats_section(ctx: &mut Ctx) -> Section {
    let c = ctx.cli.clone();
    let n = c.heartbeat_clients;
    let window = Duration::from_secs_f64(c.heartbeat_window.max(0.1));
    let setups = connection_setups(ctx, n);
    let mut sec = Section::new(
        "heartbeats",
        "5b. heartbeats",
        &format!(
            "What an idle chat device costs while it only keeps its connection alive (not a target of issue 5). {n} clients (MQTT 3.1.1, clean session, keep alive {} s, no subscription) connect as in scenario 5 and send PINGREQ every {} s; once all are connected and 2 s have passed, for {:.0} s: the PINGRESPs they receive, and the broker's CPU time (user + system, /proc/PID/stat) over them.",
            c.heartbeat_keepalive,
            (c.heartbeat_keepalive / 2).max(1),
            window.as_secs_f64(),
        ),
        &labels(&setups),
    );
    let mut cfg = ConnectionsConfig::new(n);
    cfg.keep_alive = c.heartbeat_keepalive;
    cfg.heartbeat_window = window;
    connection_rounds(
        ctx,
        &mut sec,
        &setups,
        cfg,
        |_| Credentials::None,
        |sec, l, r| {
            sec.record(
                "broker CPU per heartbeat",
                "µs",
                Better::Lower,
                l,
                r.cpu_per_heartbeat_us(),
            );
            sec.record(
                "heartbeats answered",
                "per s",
                Better::Neither,
                l,
                Some(r.heartbeats as f64 / window.as_secs_f64()),
            );
        },
    )
    .await;
    sec
}

// ---------------------------------------------------------------------------------------
// Scenario 5: connections.

/// The brokers of scenarios 5 and 5b, configured to take `n` connections.
fn connection_setups(ctx: &Ctx, n: usize) -> Vec<BrokerSetup> {
    ctx.setups(|k| {
        let mut s = BrokerSetup::new(k);
        s.tern_toml = format!("[limits]\nmax_connections = {}\n", n + 500);
        s.rumqttd_max_connections = n + 1000;
        Some(s)
    })
}

/// Runs `scenarios::connections` with `cfg` against every broker, round after round,
/// each run from fresh source addresses, and hands each report to `record`, then records
/// the connections the broker closed (a failed run is recorded as such in `sec`).
async fn connection_rounds(
    ctx: &mut Ctx,
    sec: &mut Section,
    setups: &[BrokerSetup],
    mut cfg: ConnectionsConfig,
    credentials: impl Fn(&BrokerSetup) -> Credentials,
    record: impl Fn(&mut Section, &str, &ConnectionsReport),
) {
    let c = ctx.cli.clone();
    let scenario = sec.id.clone();
    cfg.per_source = c.per_source;
    cfg.parallel = c.connect_parallel;
    for round in 0..c.rounds {
        for i in order(setups.len(), round) {
            let s = &setups[i];
            cfg.first_source = ctx.connection_runs * cfg.clients.div_ceil(c.per_source.max(1));
            cfg.credentials = credentials(s);
            ctx.connection_runs += 1;
            let run = async {
                let mut b = ctx.start(s).await?;
                // Let the broker finish starting up before the "before" reading.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let opts = ctx.options(b.addr);
                let r = limited(
                    ctx.run_limit(),
                    scenarios::connections(&opts, &cfg, b.pid()),
                )
                .await;
                alive(&mut b)?;
                r
            };
            match run.await {
                Ok(r) => {
                    progress(&scenario, round, c.rounds, &s.label, &r.line());
                    record(sec, &s.label, &r);
                    sec.record(
                        "connections closed by the broker",
                        "",
                        Better::Neither,
                        &s.label,
                        Some(r.lost as f64),
                    );
                }
                Err(e) => {
                    progress(
                        &scenario,
                        round,
                        c.rounds,
                        &s.label,
                        &format!("FAILED: {e}"),
                    );
                    sec.fail(&s.label, &e.to_string());
                }
            }
        }
    }
}

/// The connect rate the two cores allow a broker that costs no CPU: the CPUs over the
/// tool's CPU time per connect.
const CONNECT_CEILING: &str = "connect rate ceiling (a broker costing no CPU)";

async fn connections_section(ctx: &mut Ctx) -> Section {
    let c = ctx.cli.clone();
    let n = c.connections;
    let setups = connection_setups(ctx, n);
    let mut sec = Section::new(
        "connections",
        "5. connections",
        &format!(
            "{n} idle clients (MQTT 3.1.1, clean session, keep alive {} s, no subscription), {} connecting at a time, their sockets spread over the source addresses 127.0.0.2, .3, ... ({} each): connections per second from the first connect to the last CONNACK, the broker's CPU time (user + system, /proc/PID/stat) over that span per connection (and the load tool's: both share the 2 cores, so the rate is bounded by their sum; the ceiling row is the rate the cores would allow a broker costing no CPU, CPUs / the tool's CPU per connect), and its resident memory per connection, (VmRSS with all connected, {} s after the last CONNACK, − VmRSS before) / {n}, in KiB (VmRSS's unit).",
            c.keepalive, c.connect_parallel, c.per_source, 2
        ),
        &labels(&setups),
    );
    let mut cfg = ConnectionsConfig::new(n);
    cfg.keep_alive = c.keepalive;
    let cpus = ctx.cpus;
    connection_rounds(
        ctx,
        &mut sec,
        &setups,
        cfg,
        |_| Credentials::None,
        |sec, l, r| {
            sec.record(
                "connect rate",
                "connections/s",
                Better::Higher,
                l,
                Some(r.connects_per_sec()),
            );
            sec.record(
                "broker CPU per connect",
                "µs",
                Better::Lower,
                l,
                r.cpu_per_connection_us(),
            );
            sec.record(
                "tool CPU per connect",
                "µs",
                Better::Neither,
                l,
                r.tool_cpu_per_connection_us(),
            );
            sec.record(
                CONNECT_CEILING,
                "connections/s",
                Better::Neither,
                l,
                r.tool_cpu_per_connection_us()
                    .filter(|us| *us > 0.0)
                    .map(|us| cpus as f64 * 1e6 / us),
            );
            sec.record(
                "time to connect all",
                "s",
                Better::Lower,
                l,
                Some(r.connect_secs),
            );
            sec.record(
                "RSS per connection",
                "KiB",
                Better::Lower,
                l,
                r.rss_per_connection_kib(),
            );
            sec.record(
                "RSS before",
                "MiB",
                Better::Neither,
                l,
                r.rss_before_kib.map(|v| v as f64 / 1024.0),
            );
            sec.record(
                &format!("RSS with {n} connected"),
                "MiB",
                Better::Neither,
                l,
                r.rss_after_kib.map(|v| v as f64 / 1024.0),
            );
        },
    )
    .await;
    let rss = sec.median("RSS per connection", "tern");
    sec.target(
        "tern <= 0.6 KB of RSS per idle connection",
        Verdict::from(rss.map(|v| v <= 0.6)),
        rss.map_or("n/a".into(), |v| format!("tern {v:.2} KiB")),
    );
    if sec.brokers.iter().any(|b| b == "mosquitto") {
        let r = sec.ratio("connect rate", "tern", "mosquitto");
        // What the shared cores allow at all: the tool's side of each connect (most of it
        // the kernel's handshake work, run in the connecting process) stays whatever the
        // broker does, so even a broker costing nothing would connect at most this fast.
        let ceiling = sec
            .median(CONNECT_CEILING, "tern")
            .zip(sec.median("connect rate", "mosquitto"))
            .map(|(ceiling, mosquitto)| ceiling / mosquitto);
        let figures = match (r, ceiling) {
            (Some(r), Some(c)) => format!(
                "{r:.2}x; at most {c:.2}x for a broker costing no CPU, given the tool's CPU per connect on {cpus} CPUs"
            ),
            (Some(r), None) => format!("{r:.2}x"),
            _ => "n/a".into(),
        };
        sec.target(
            "connect rate: tern >= 2x mosquitto",
            Verdict::from(r.map(|r| r >= 2.0)),
            figures,
        );
    }
    sec
}

// ---------------------------------------------------------------------------------------
// Logins: the reconnect storm with tokens or passwords (tern only, issue 26).

/// The account service's HMAC secret, written for the token setup.
const LOGIN_SECRET: &[u8] = b"tern-compare-login-storm-secret";

/// tern three ways: clients without credentials, with a token each (HS256), and all with
/// one user's password (argon2id).
fn login_setups(ctx: &Ctx, n: usize) -> Result<Vec<BrokerSetup>> {
    let secret = ctx.work.join("login-secret");
    std::fs::write(&secret, LOGIN_SECRET)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", secret.display())))?;
    let limits = format!("[limits]\nmax_connections = {}\n", n + 500);
    let mut anonymous = BrokerSetup::new(Kind::Tern).labelled("tern anonymous");
    anonymous.tern_toml = limits.clone();
    let mut tokens = BrokerSetup::new(Kind::Tern).labelled("tern tokens");
    tokens.tern_toml = format!(
        "{limits}\n[tokens]\nenabled = true\nhmac_secret_file = {:?}\n",
        secret.display().to_string()
    );
    let mut passwords = BrokerSetup::new(Kind::Tern).labelled("tern passwords");
    // All its devices are one user: no cap on a user's devices.
    passwords.tern_toml = format!("{limits}\n[im]\nmax_devices_per_user = 0\n");
    passwords.tern_users = vec![("device".into(), "a-device-password".into())];
    Ok(vec![anonymous, tokens, passwords])
}

/// One HS256 token per client, each for its own user, valid for a day: (user, token).
fn login_tokens(n: usize) -> Result<Vec<(String, bytes::Bytes)>> {
    let key = jsonwebtoken::EncodingKey::from_secret(LOGIN_SECRET)
        .map_err(|e| Error::new(format!("token key: {e}")))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    (0..n)
        .map(|i| {
            let user = format!("device-{i}");
            let claims = serde_json::json!({"sub": user, "iat": now, "exp": now + 86_400});
            jsonwebtoken::encode(&header, &claims, &key)
                .map(|token| (user, bytes::Bytes::from(token)))
                .map_err(|e| Error::new(format!("signing a token: {e}")))
        })
        .collect()
}

async fn logins_section(ctx: &mut Ctx) -> Section {
    let c = ctx.cli.clone();
    let n = c.login_clients;
    let mut sec = Section::new(
        "logins",
        "5c. logins: the reconnect storm",
        &format!(
            "{n} devices connecting at once as in scenario 5 ({} at a time, MQTT 3.1.1, no keep alive), three ways: without credentials (anonymous), each with its own JWT (HS256, `[tokens]`, verified by the broker) as the password, and all with one user's password (argon2id, the store's default parameters; `limits.max_password_checks` = the CPUs). Broker CPU time per login and the time until all are connected. The token's own cost is the difference between the token and anonymous rows.",
            c.connect_parallel
        ),
        &["tern anonymous".into(), "tern tokens".into(), "tern passwords".into()],
    );
    let setups = match login_setups(ctx, n) {
        Ok(setups) => setups,
        Err(e) => {
            for label in ["tern anonymous", "tern tokens", "tern passwords"] {
                sec.fail(label, &e.to_string());
            }
            return sec;
        }
    };
    let tokens = match login_tokens(n) {
        Ok(tokens) => std::sync::Arc::new(tokens),
        Err(e) => {
            sec.fail("tern tokens", &e.to_string());
            return sec;
        }
    };
    let mut cfg = ConnectionsConfig::new(n);
    // No keep alive: the password run lasts minutes, longer than any keep alive, and its
    // idle clients send no PINGREQ.
    cfg.keep_alive = 0;
    let credentials = move |s: &BrokerSetup| match s.label.as_str() {
        "tern tokens" => Credentials::Tokens(tokens.clone()),
        "tern passwords" => Credentials::Password {
            user: "device".into(),
            password: "a-device-password".into(),
        },
        _ => Credentials::None,
    };
    connection_rounds(ctx, &mut sec, &setups, cfg, credentials, |sec, l, r| {
        sec.record(
            "broker CPU per login",
            "µs",
            Better::Lower,
            l,
            r.cpu_per_connection_us(),
        );
        sec.record(
            "time to connect all",
            "s",
            Better::Lower,
            l,
            Some(r.connect_secs),
        );
        sec.record(
            "login rate",
            "connections/s",
            Better::Higher,
            l,
            Some(r.connects_per_sec()),
        );
    })
    .await;
    let token_cost = sec
        .median("broker CPU per login", "tern tokens")
        .zip(sec.median("broker CPU per login", "tern anonymous"))
        .map(|(tokens, anonymous)| tokens - anonymous);
    sec.target(
        "a verified token costs under 50 µs (broker CPU per login, tokens minus anonymous)",
        Verdict::from(token_cost.map(|us| us < 50.0)),
        token_cost.map_or("n/a".into(), |us| format!("{us:.1} µs")),
    );
    sec
}

// ---------------------------------------------------------------------------------------
// Scenario 10: a chat workload (tern only, issue 27).

async fn chat_run(
    ctx: &mut Ctx,
    setup: &BrokerSetup,
    cfg: &ChatConfig,
) -> Result<(ChatReport, f64)> {
    // The groups are made offline on the first start's database, as in `group`.
    let mut b = ctx.start(setup).await?;
    b.stop(Duration::from_secs(60)).await;
    let opts = ctx.options(b.addr);
    for (gid, members) in cfg.groups(&opts) {
        let mut args = vec!["group", "create", gid.as_str()];
        args.extend(members.iter().map(String::as_str));
        tern_offline(ctx, setup, &b.data, &args)?;
    }
    b.restart()?;
    b.wait_ready(Duration::from_secs(60)).await?;
    // The same run id as the groups' names: a new `options` would make another.
    let opts = Options {
        addr: b.addr,
        ..opts
    };
    let pid = b.pid();
    let cpu0 = pid.and_then(connections::cpu_secs);
    let report = limited(ctx.run_limit(), scenarios::chat::chat(&opts, cfg)).await?;
    // Over the whole run (connections and warm-up included), per message acknowledged in
    // the window: an upper bound of what one costs.
    let cpu = match (cpu0, pid.and_then(connections::cpu_secs)) {
        (Some(a), Some(z)) => (z - a) * 1e6 / report.acked.max(1) as f64,
        _ => f64::NAN,
    };
    alive(&mut b)?;
    b.stop(Duration::from_secs(120)).await;
    Ok((report, cpu))
}

async fn chat_section(ctx: &mut Ctx) -> Option<Section> {
    let c = ctx.cli.clone();
    let mut setups = Vec::new();
    for k in ctx.kinds.iter().copied().filter(|k| k.is_tern()) {
        let mut full = BrokerSetup::new(k).labelled(&format!("{k} receipts+presence"));
        full.tern_toml =
            "[im]\npresence_offline_delay_ms = 1_000\npresence_visible_to = \"everyone\"\n".into();
        setups.push(full);
        let mut plain = BrokerSetup::new(k).labelled(&format!("{k} plain"));
        plain.tern_toml = "[im]\npresence = false\n".into();
        setups.push(plain);
    }
    if setups.is_empty() {
        return None;
    }
    let mut sec = Section::new(
        "chat",
        "10. chat workload (tern only)",
        &format!(
            "{users} users with two devices each ({devices} MQTT 5 connections, persistent sessions subscribed to their inbox), in groups of {g}. Every device sends at full speed with {w} QoS 1 messages in flight: 4 in 5 DMs to a random user, 1 in 5 to its group ({g} members: a group message reaches up to {gd} devices). *receipts+presence*: every 10th message a device gets is reported read (`$read/...`, QoS 0: a mark write, notices to the user's devices and, for DMs, a receipt to the peer's), device `b` watches a group mate's presence, and one user in ten has a flapping device (gone 0.5 s every 2 s without DISCONNECT, back with `$sync` from its last seq: presence offline after 1 s, so some flaps publish presence); *plain*: the same messages and flaps, no reads, presence off. {d} s measured after {wu} s of warm-up, default `storage.sync = \"always\"`. *Messages/s*: acknowledged; *deliveries/s*: inbox entries received by the online devices; *end-to-end*: from the sender's write to a receiving device's read; *broker CPU per message*: user + system time over the whole run (connections and warm-up included) per message acknowledged in the window. The devices, the broker and the tool share the 2 CPUs.",
            users = c.chat_users,
            devices = 2 * c.chat_users,
            g = c.chat_group_size,
            gd = 2 * c.chat_group_size,
            w = c.chat_window,
            d = c.duration,
            wu = c.warmup,
        ),
        &labels(&setups),
    );
    for round in 0..c.rounds {
        for i in order(setups.len(), round) {
            let s = &setups[i];
            let full = s.label.ends_with("receipts+presence");
            let cfg = ChatConfig {
                users: c.chat_users,
                group_size: c.chat_group_size,
                window: c.chat_window,
                receipts: full,
                presence: full,
            };
            match chat_run(ctx, s, &cfg).await {
                Ok((r, cpu)) => {
                    let l = &s.label;
                    progress(
                        "chat",
                        round,
                        c.rounds,
                        l,
                        &format!(
                            "{:.0} msgs/s, {:.0} deliveries/s, {} reads, {} resyncs, {cpu:.1} µs CPU each",
                            r.acked_per_sec(),
                            r.delivered_per_sec(),
                            r.reads,
                            r.resyncs
                        ),
                    );
                    sec.record(
                        "messages acknowledged",
                        "msgs/s",
                        Better::Higher,
                        l,
                        Some(r.acked_per_sec()),
                    );
                    sec.record(
                        "deliveries received",
                        "msgs/s",
                        Better::Higher,
                        l,
                        Some(r.delivered_per_sec()),
                    );
                    sec.record(
                        "end-to-end p50",
                        "ms",
                        Better::Lower,
                        l,
                        r.latency.map(|x| ms(x.p50_us)),
                    );
                    sec.record(
                        "end-to-end p99",
                        "ms",
                        Better::Lower,
                        l,
                        r.latency.map(|x| ms(x.p99_us)),
                    );
                    sec.record(
                        "broker CPU per message",
                        "µs",
                        Better::Lower,
                        l,
                        cpu.is_finite().then_some(cpu),
                    );
                    sec.record(
                        "reads reported",
                        "/s",
                        Better::Neither,
                        l,
                        Some(r.reads as f64 / r.secs.max(1e-9)),
                    );
                    sec.record(
                        "resyncs after a flap",
                        "",
                        Better::Neither,
                        l,
                        Some(r.resyncs as f64),
                    );
                }
                Err(e) => {
                    progress("chat", round, c.rounds, &s.label, &format!("FAILED: {e}"));
                    sec.fail(&s.label, &e.to_string());
                }
            }
        }
    }
    Some(sec)
}

// ---------------------------------------------------------------------------------------
// Scenario 9: durable DMs to offline receivers (issue 27).

async fn dm_offline_run(
    ctx: &mut Ctx,
    setup: &BrokerSetup,
    cfg: &DmOfflineConfig,
) -> Result<(DmOfflineReport, f64)> {
    let mut b = ctx.start(setup).await?;
    let opts = ctx.options(b.addr);
    dm_offline::receivers(&opts, cfg).await?;
    // Session writes settle before the senders start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = b.pid();
    let cpu0 = pid.and_then(connections::cpu_secs);
    let report = dm_offline::send(&opts, cfg).await?;
    let cpu = match (cpu0, pid.and_then(connections::cpu_secs)) {
        (Some(a), Some(z)) => (z - a) * 1e6 / report.acked.max(1) as f64,
        _ => f64::NAN,
    };
    alive(&mut b)?;
    b.stop(Duration::from_secs(120)).await;
    Ok((report, cpu))
}

async fn dm_offline_section(ctx: &mut Ctx) -> Section {
    let c = ctx.cli.clone();
    let queue = format!(
        "[limits]\nmax_queued_messages = {}\nmax_queued_bytes = 4_294_967_296\n\n[im]\ninbox_max_messages = {}\n",
        (c.dm_messages * 2).max(10_000),
        (c.dm_messages * 2).max(10_000)
    );
    let mut setups = Vec::new();
    for k in ctx.kinds.iter().copied().filter(|k| k.is_tern()) {
        let mut s = BrokerSetup::new(k);
        s.tern_toml = format!("{queue}\n[storage]\nsync = \"always\"\n");
        setups.push(s);
    }
    if ctx.kinds.contains(&Kind::Mosquitto) {
        let mut s = BrokerSetup::new(Kind::Mosquitto).labelled("mosquitto persist");
        s.mosquitto_autosave_secs = Some(c.mosquitto_autosave);
        s.mosquitto_lines = vec![
            format!("max_queued_messages {}", (c.dm_messages * 2).max(1000)),
            "max_queued_bytes 0".into(),
        ];
        setups.push(s);
    }
    let mut sec = Section::new(
        "dm-offline",
        "9. durable DMs to offline receivers",
        &format!(
            "{pairs} receivers `u{{i}}` leave a persistent session (clean session false) subscribed at QoS 1 and go offline; then {pairs} senders `s{{i}}` each send {n} QoS 1 messages ({w} in flight each) to their receiver, all at once: {total} messages. tern: the senders publish DMs (`dm/u{{i}}`) and the receivers subscribe to their inbox (`inbox/u{{i}}/#`); each DM is stored once, appended to the receiver's and the sender's inbox logs and queued for the receiver's session, with `storage.sync = \"always\"` (acknowledged after the fsync covering it). Mosquitto: the same pairs on plain topics (`dm/u{{i}}`), `persistence true`, `autosave_interval {a}` (it acknowledges from memory: not durable per message). *DMs/s*: acknowledged per second, from the senders' start to the last PUBACK; *PUBACK p99*: of the median sender; *broker CPU per DM*: user + system time over the sending, per acknowledged message.",
            pairs = c.dm_pairs,
            n = c.dm_messages,
            w = c.inflight,
            total = c.dm_pairs as u64 * c.dm_messages,
            a = c.mosquitto_autosave
        ),
        &labels(&setups),
    );
    for round in 0..c.rounds {
        for i in order(setups.len(), round) {
            let s = &setups[i];
            let cfg = DmOfflineConfig {
                pairs: c.dm_pairs,
                messages: c.dm_messages,
                chat: s.kind.is_tern(),
            };
            match limited(Duration::from_secs(900), dm_offline_run(ctx, s, &cfg)).await {
                Ok((r, cpu)) => {
                    let l = &s.label;
                    progress(
                        "dm-offline",
                        round,
                        c.rounds,
                        l,
                        &format!(
                            "{} acknowledged in {:.2}s ({:.0}/s), {cpu:.1} µs CPU each",
                            r.acked,
                            r.secs,
                            r.acked_per_sec()
                        ),
                    );
                    sec.record(
                        "DMs acknowledged",
                        "msgs/s",
                        Better::Higher,
                        l,
                        Some(r.acked_per_sec()),
                    );
                    sec.record(
                        "PUBACK p50",
                        "ms",
                        Better::Lower,
                        l,
                        r.ack_latency.map(|x| ms(x.p50_us)),
                    );
                    sec.record(
                        "PUBACK p99",
                        "ms",
                        Better::Lower,
                        l,
                        r.ack_latency.map(|x| ms(x.p99_us)),
                    );
                    sec.record(
                        "broker CPU per DM",
                        "µs",
                        Better::Lower,
                        l,
                        cpu.is_finite().then_some(cpu),
                    );
                }
                Err(e) => {
                    progress(
                        "dm-offline",
                        round,
                        c.rounds,
                        &s.label,
                        &format!("FAILED: {e}"),
                    );
                    sec.fail(&s.label, &e.to_string());
                }
            }
        }
    }
    let rate = sec.median("DMs acknowledged", "tern");
    sec.target(
        "durable DMs to offline receivers >= 100k/s with storage.sync = always",
        Verdict::from(rate.map(|v| v >= 100_000.0)),
        rate.map_or("n/a".into(), |v| {
            format!("tern {} DMs/s", compare::fmt_num(v))
        }),
    );
    sec
}

// ---------------------------------------------------------------------------------------
// Scenario 6: durable.

struct DurableRun {
    publish: durable::PublishReport,
    write_bytes: Option<u64>,
    /// Size of the data directory once stopped.
    stored_bytes: u64,
    shutdown_secs: f64,
    first_connack_secs: f64,
    first_message_secs: f64,
    drain: durable::DrainReport,
}

async fn durable_run(ctx: &mut Ctx, setup: &BrokerSetup) -> Result<DurableRun> {
    let c = ctx.cli.clone();
    let mut b = ctx.start(setup).await?;
    let opts = ctx.options(b.addr);
    let cfg = DurableConfig::new(c.durable_sessions, c.durable_messages);
    durable::create_sessions(&opts, &cfg).await?;
    // Session writes settle (and a Mosquitto autosave may pass) before the publisher.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let w0 = b.write_bytes();
    let publish = durable::publish_count(
        &opts,
        &format!("{}-dpub", opts.run_id),
        None,
        &DurableConfig::topic(&opts),
        cfg.messages as u64,
        Duration::from_secs(120),
    )
    .await?;
    let write_bytes = match (w0, b.write_bytes()) {
        (Some(a), Some(z)) => Some(z.saturating_sub(a)),
        _ => None,
    };
    alive(&mut b)?;
    let shutdown_secs = b.stop(Duration::from_secs(300)).await.as_secs_f64();
    let stored_bytes = dir_bytes(&b.data).0;
    b.restart()?;
    let first_connack_secs = b.wait_ready(Duration::from_secs(600)).await?.as_secs_f64();
    let at = durable::first_delivery(&opts, 0, Duration::from_secs(300)).await?;
    let first_message_secs = at.duration_since(b.spawned_at).as_secs_f64();
    let drain = durable::drain_sessions(&opts, &cfg).await?;
    alive(&mut b)?;
    Ok(DurableRun {
        publish,
        write_bytes,
        stored_bytes,
        shutdown_secs,
        first_connack_secs,
        first_message_secs,
        drain,
    })
}

async fn durable_section(ctx: &mut Ctx) -> Section {
    let c = ctx.cli.clone();
    let queued = c.durable_sessions * c.durable_messages;
    let mut setups = Vec::new();
    // The baseline gets the same variants (`tern-base batched` beside `tern batched`), so
    // that each has its tern / tern-base ratio.
    for k in ctx.kinds.iter().copied().filter(|k| k.is_tern()) {
        for sync in ["always", "batched", "none"] {
            let mut s = BrokerSetup::new(k).labelled(&format!("{k} {sync}"));
            s.tern_toml = format!(
                "[limits]\nmax_queued_messages = {}\nmax_queued_bytes = 4_294_967_296\n\n[storage]\nsync = \"{sync}\"\n",
                (c.durable_messages * 2).max(10_000)
            );
            setups.push(s);
        }
    }
    if ctx.kinds.contains(&Kind::Mosquitto) {
        let mut s = BrokerSetup::new(Kind::Mosquitto).labelled("mosquitto persist");
        s.mosquitto_autosave_secs = Some(c.mosquitto_autosave);
        s.mosquitto_lines = vec![
            format!("max_queued_messages {}", (c.durable_messages * 2).max(1000)),
            "max_queued_bytes 0".into(),
        ];
        setups.push(s);
    }
    let mut sec = Section::new(
        "durable",
        "6. durable: QoS 1 to offline persistent sessions, restart, drain",
        &format!(
            "{} persistent sessions (clean session false) subscribe at QoS 1 to one topic and go offline; 1 publisher sends {} QoS 1 messages ({} in flight) to that topic, each queued for every session: {} queued messages in all. *Publisher msgs/s*: acknowledged per second; *persisted copies/s*: that × {} sessions. Then the broker is stopped (SIGTERM) and started again: time from the process start to the first CONNACK, and to the first queued message reaching a reconnected session. Then every session reconnects and drains its queue: messages per second, from the first reconnect to the last message. tern runs with `storage.sync` = always, batched (5 ms) and none; Mosquitto with `persistence true` and `autosave_interval {}` (Mosquitto acknowledges from memory and writes its whole state every autosave interval and at shutdown: not durable per message). *Disk bytes written per copy*: `write_bytes` of /proc/PID/io during the publishing, over the copies (Mosquitto writes nothing until an autosave or its shutdown); *data directory after shutdown*: its size once the broker has stopped with every message queued, over the copies.",
            c.durable_sessions, c.durable_messages, c.inflight, queued, c.durable_sessions, c.mosquitto_autosave
        ),
        &labels(&setups),
    );
    for round in 0..c.rounds {
        for i in order(setups.len(), round) {
            let s = &setups[i];
            let limit = Duration::from_secs(1800);
            match limited(limit, durable_run(ctx, s)).await {
                Ok(r) => {
                    let l = &s.label;
                    let copies = r.publish.acked as f64 * c.durable_sessions as f64;
                    progress(
                        "durable",
                        round,
                        c.rounds,
                        l,
                        &format!(
                            "published {} in {:.2}s ({:.0}/s, {:.0} copies/s), shutdown {:.2}s, first CONNACK {:.3}s, first queued message {:.3}s, drained {}/{} (+{} dup) in {:.2}s ({:.0}/s)",
                            r.publish.acked,
                            r.publish.secs,
                            r.publish.acked_per_sec(),
                            r.publish.acked_per_sec() * c.durable_sessions as f64,
                            r.shutdown_secs,
                            r.first_connack_secs,
                            r.first_message_secs,
                            r.drain.unique,
                            r.drain.expected,
                            r.drain.duplicates,
                            r.drain.secs,
                            r.drain.per_sec()
                        ),
                    );
                    sec.record(
                        "publisher, acknowledged",
                        "msgs/s",
                        Better::Higher,
                        l,
                        Some(r.publish.acked_per_sec()),
                    );
                    sec.record(
                        "persisted copies",
                        "msgs/s",
                        Better::Higher,
                        l,
                        Some(r.publish.acked_per_sec() * c.durable_sessions as f64),
                    );
                    sec.record(
                        "PUBACK p99",
                        "ms",
                        Better::Lower,
                        l,
                        r.publish.ack_latency.map(|x| ms(x.p99_us)),
                    );
                    sec.record(
                        "disk bytes written per copy",
                        "B",
                        Better::Lower,
                        l,
                        r.write_bytes.map(|w| w as f64 / copies.max(1.0)),
                    );
                    sec.record(
                        "data directory after shutdown, per copy",
                        "B",
                        Better::Lower,
                        l,
                        Some(r.stored_bytes as f64 / copies.max(1.0)),
                    );
                    sec.record(
                        "shutdown (SIGTERM to exit)",
                        "s",
                        Better::Lower,
                        l,
                        Some(r.shutdown_secs),
                    );
                    sec.record(
                        &format!("restart with {queued} queued: first CONNACK"),
                        "s",
                        Better::Lower,
                        l,
                        Some(r.first_connack_secs),
                    );
                    sec.record(
                        "restart: first queued message delivered",
                        "s",
                        Better::Lower,
                        l,
                        Some(r.first_message_secs),
                    );
                    sec.record(
                        "drain",
                        "msgs/s",
                        Better::Higher,
                        l,
                        Some(r.drain.per_sec()),
                    );
                    sec.record(
                        "drained",
                        "% of queued",
                        Better::Higher,
                        l,
                        Some(r.drain.unique as f64 * 100.0 / r.drain.expected.max(1) as f64),
                    );
                    sec.record(
                        "redelivered duplicates",
                        "",
                        Better::Neither,
                        l,
                        Some(r.drain.duplicates as f64),
                    );
                }
                Err(e) => {
                    progress(
                        "durable",
                        round,
                        c.rounds,
                        &s.label,
                        &format!("FAILED: {e}"),
                    );
                    sec.fail(&s.label, &e.to_string());
                }
            }
        }
    }
    let ingest = sec.median("persisted copies", "tern batched");
    sec.target(
        "durable QoS 1 ingest >= 100k msgs/s with batched sync (persisted copies/s)",
        Verdict::from(ingest.map(|v| v >= 100_000.0)),
        ingest.map_or("n/a".into(), |v| {
            format!(
                "tern batched {} copies/s = {} publisher msgs/s",
                compare::fmt_num(v),
                compare::fmt_num(v / c.durable_sessions.max(1) as f64)
            )
        }),
    );
    let serving = ["tern always", "tern batched", "tern none"]
        .iter()
        .filter_map(|l| sec.median("restart: first queued message delivered", l))
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
    sec.target(
        &format!("restart with {queued} queued messages serving within 1 s"),
        Verdict::from(serving.map(|v| v <= 1.0)),
        serving.map_or("n/a".into(), |v| {
            format!("tern, slowest policy: first queued message {v:.2} s after start")
        }),
    );
    sec
}

// ---------------------------------------------------------------------------------------
// Scenario 7: retained.

fn short_count(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

async fn retained_section(ctx: &mut Ctx) -> Section {
    let c = ctx.cli.clone();
    let sizes = c.retained.clone();
    let max = sizes.iter().copied().max().unwrap_or(0);
    let setups = ctx.setups(|k| {
        let mut s = BrokerSetup::new(k);
        s.tern_toml = format!("[limits]\nmax_retained_messages = {}\n", max * 2 + 100_000);
        s.rumqttd_max_outgoing = (c.retained_subtree as u64 * 2).max(200);
        Some(s)
    });
    let sub = short_count(c.retained_subtree);
    let mut sec = Section::new(
        "retained",
        "7. retained messages",
        &format!(
            "R retained topics (R = {}) loaded over one connection (QoS 0 PUBLISHes back to back, then one QoS 1 whose PUBACK ends the load), {} of them in a subtree `.../sub/{{i}}`, the rest as `.../bulk/{{a}}/{{b}}` (10 per `a`). Then, on fresh connections, once the broker has gone quiet (a 250 ms window in which it used under 20 ms of CPU, from /proc/PID/stat: the PUBACK says it has read the load, not that it is done with it; *busy after the load* is how long that took), the time from SUBSCRIBE to the SUBACK and every retained message, for `.../bulk/{{a}}/+` (10 matches) and `.../sub/#` ({sub} matches), median of {} subscriptions per run. rumqttd runs with `max_outgoing_packet_count = {}` (its default, 200, also caps the retained messages one SUBSCRIBE gets). *Growth* rows: median at the largest R over median at the smallest (flat = 1).",
            sizes.iter().map(|r| short_count(*r)).collect::<Vec<_>>().join(", "),
            c.retained_subtree,
            c.retained_samples,
            (c.retained_subtree * 2).max(200),
        ),
        &labels(&setups),
    );
    for &r in &sizes {
        let rn = short_count(r);
        for round in 0..c.rounds {
            for i in order(setups.len(), round) {
                let s = &setups[i];
                let run = async {
                    let mut b = ctx.start(s).await?;
                    let opts = ctx.options(b.addr);
                    let mut cfg = RetainedConfig::new(r);
                    cfg.subtree = c.retained_subtree;
                    cfg.samples = c.retained_samples;
                    cfg.broker_pid = b.pid();
                    let rep =
                        limited(Duration::from_secs(1800), scenarios::retained(&opts, &cfg)).await;
                    alive(&mut b)?;
                    rep
                };
                match run.await {
                    Ok(rep) => {
                        progress("retained", round, c.rounds, &s.label, &rep.line());
                        let l = &s.label;
                        sec.record(
                            &format!("R={rn}: load"),
                            "msgs/s",
                            Better::Higher,
                            l,
                            Some(rep.load_per_sec()),
                        );
                        sec.record(
                            &format!("R={rn}: busy after the load"),
                            "s",
                            Better::Lower,
                            l,
                            rep.settle_secs,
                        );
                        sec.record(
                            &format!("R={rn}: 10 matches, all received"),
                            "ms",
                            Better::Lower,
                            l,
                            rep.few.median_all_ms(),
                        );
                        sec.record(
                            &format!("R={rn}: {sub} subtree, SUBACK"),
                            "ms",
                            Better::Lower,
                            l,
                            rep.subtree.median_suback_ms(),
                        );
                        sec.record(
                            &format!("R={rn}: {sub} subtree, all received"),
                            "ms",
                            Better::Lower,
                            l,
                            rep.subtree.median_all_ms(),
                        );
                        sec.record(
                            &format!("R={rn}: {sub} subtree, fewest received"),
                            "msgs",
                            Better::Higher,
                            l,
                            Some(rep.subtree.min_received as f64),
                        );
                    }
                    Err(e) => {
                        progress(
                            "retained",
                            round,
                            c.rounds,
                            &s.label,
                            &format!("FAILED (R={rn}): {e}"),
                        );
                        sec.fail(&s.label, &format!("R={rn}: {e}"));
                    }
                }
            }
        }
    }
    if let (Some(&lo), Some(&hi)) = (sizes.iter().min(), sizes.iter().max()) {
        if hi > lo {
            let (lo_n, hi_n) = (short_count(lo), short_count(hi));
            for what in [
                "10 matches, all received".to_string(),
                format!("{sub} subtree, all received"),
            ] {
                let name = format!("growth {lo_n} -> {hi_n}: {what}");
                for l in sec.brokers.clone() {
                    let g = match (
                        sec.median(&format!("R={hi_n}: {what}"), &l),
                        sec.median(&format!("R={lo_n}: {what}"), &l),
                    ) {
                        (Some(h), Some(o)) if o > 0.0 => Some(h / o),
                        _ => None,
                    };
                    sec.record(&name, "x", Better::Lower, &l, g);
                }
                let g = sec.median(&name, "tern");
                let (h, o) = (
                    sec.median(&format!("R={hi_n}: {what}"), "tern"),
                    sec.median(&format!("R={lo_n}: {what}"), "tern"),
                );
                // Flat: at most twice the time, or within a millisecond.
                let flat = match (g, h, o) {
                    (Some(g), Some(h), Some(o)) => Some(g <= 2.0 || h - o <= 1.0),
                    _ => None,
                };
                sec.target(
                    &format!("retained subscribe cost flat from {lo_n} to {hi_n} topics ({what})"),
                    Verdict::from(flat),
                    match (h, o) {
                        (Some(h), Some(o)) => {
                            format!("tern {o:.2} ms -> {h:.2} ms ({:.2}x)", h / o.max(1e-9))
                        }
                        _ => "n/a".into(),
                    },
                );
            }
            sec.notes.push(
                "Flat is taken as: the time at the largest R at most twice the time at the smallest, or within 1 ms of it.".into(),
            );
        }
    }
    sec
}

// ---------------------------------------------------------------------------------------
// Scenario 8: group (tern only).

#[derive(Debug, Clone, Copy)]
struct Disk {
    write_bytes: Option<u64>,
    dir: u64,
    wal: u64,
}

/// What the process `pid` has written towards storage, and the sizes under `data`.
fn disk_probe(pid: Option<u32>, data: &Path) -> Disk {
    let (dir, wal) = dir_bytes(data);
    let write_bytes = pid.and_then(|p| {
        std::fs::read_to_string(format!("/proc/{p}/io"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))?
            .trim()
            .parse()
            .ok()
    });
    Disk {
        write_bytes,
        dir,
        wal,
    }
}

/// Runs `tern group create` of the build `setup` names on a stopped broker's data
/// directory.
fn create_group(ctx: &Ctx, setup: &BrokerSetup, data: &Path, cfg: &GroupConfig) -> Result<()> {
    let mut args = vec!["group".to_string(), "create".into(), cfg.gid.clone()];
    args.extend(cfg.member_names());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tern_offline(ctx, setup, data, &args)
}

/// Runs a `tern` operator command (`args`, then `--data-dir data`) of the build `setup`
/// names on a stopped broker's data directory.
fn tern_offline(ctx: &Ctx, setup: &BrokerSetup, data: &Path, args: &[&str]) -> Result<()> {
    let program = ctx
        .bins
        .path(setup.kind)
        .ok_or_else(|| Error::new(format!("{}: no program given", setup.label)))?;
    let command = args.iter().take(2).copied().collect::<Vec<_>>().join(" ");
    let out = Command::new(program)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .map_err(|e| Error::new(format!("cannot run {} {command}: {e}", setup.label)))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "{} {command} failed: {}",
            setup.label,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

async fn group_run(
    ctx: &mut Ctx,
    setup: &BrokerSetup,
    cfg: &GroupConfig,
) -> Result<GroupOutcome<Disk>> {
    // A first start creates the database; the group is created offline, then the broker
    // starts again.
    let mut b = ctx.start(setup).await?;
    b.stop(Duration::from_secs(60)).await;
    create_group(ctx, setup, &b.data, cfg)?;
    b.restart()?;
    b.wait_ready(Duration::from_secs(60)).await?;
    let opts = ctx.options(b.addr);
    let (data, pid) = (b.data.clone(), b.pid());
    let out = limited(
        ctx.run_limit(),
        scenarios::group(&opts, cfg, || disk_probe(pid, &data)),
    )
    .await;
    alive(&mut b)?;
    out
}

fn record_group(sec: &mut Section, l: &str, cfg: &GroupConfig, o: &GroupOutcome<Disk>) {
    let r = &o.report;
    let n = r.acked.max(1) as f64;
    let per = |a: u64, z: u64| Some(z.saturating_sub(a) as f64 / n);
    sec.record(
        "group messages acknowledged",
        "msgs/s",
        Better::Higher,
        l,
        Some(r.sent_per_sec()),
    );
    sec.record(
        "member deliveries (inbox entries)",
        "msgs/s",
        Better::Higher,
        l,
        Some(r.sent_per_sec() * cfg.members as f64),
    );
    sec.record(
        "deliveries received online",
        "msgs/s",
        Better::Higher,
        l,
        Some(r.delivered_per_sec()),
    );
    sec.record(
        "online dropped",
        "%",
        Better::Lower,
        l,
        Some(r.dropped_pct()),
    );
    sec.record(
        "latency p50 to online members",
        "ms",
        Better::Lower,
        l,
        r.latency.map(|x| ms(x.p50_us)),
    );
    sec.record(
        "latency p99 to online members",
        "ms",
        Better::Lower,
        l,
        r.latency.map(|x| ms(x.p99_us)),
    );
    let wb = match (o.before.write_bytes, o.after.write_bytes) {
        (Some(a), Some(z)) => per(a, z),
        _ => None,
    };
    sec.record("disk write_bytes per message", "B", Better::Lower, l, wb);
    sec.record(
        "disk write_bytes per message per member",
        "B",
        Better::Lower,
        l,
        wb.map(|v| v / cfg.members as f64),
    );
    sec.record(
        "WAL growth per message",
        "B",
        Better::Lower,
        l,
        per(o.before.wal, o.after.wal),
    );
    sec.record(
        "data dir growth per message",
        "B",
        Better::Lower,
        l,
        per(o.before.dir, o.after.dir),
    );
    sec.record(
        "messages acked (whole run)",
        "",
        Better::Neither,
        l,
        Some(r.acked as f64),
    );
}

async fn group_section(ctx: &mut Ctx) -> Option<Section> {
    // tern only: the peers have no groups; a baseline build of tern runs beside it.
    let setups = ctx.setups(|k| {
        k.is_tern().then(|| {
            let mut s = BrokerSetup::new(k);
            s.tern_toml =
                "[limits]\nmax_queued_messages = 1_000_000\nmax_queued_bytes = 4_294_967_296\n"
                    .into();
            s
        })
    });
    if setups.is_empty() {
        return None;
    }
    let c = ctx.cli.clone();
    let cfg = GroupConfig::new("g1", c.group_members);
    let mut sec = Section::new(
        "group",
        "8. group messages (tern only)",
        &format!(
            "A group `g1` of {} members (`u0` ...; created with `tern group create` on the stopped broker's data directory), {} of them online (subscribed to `inbox/{{u}}/#` at QoS 1, reading and acknowledging), the other {} with offline persistent sessions subscribed the same way. `u0` publishes to `group/g1` at QoS 1 ({} in flight), {}-byte payloads, {} s measured; default `storage.sync = \"always\"`. *msgs/s*: group messages acknowledged per second; each one is stored once and referenced from every member's inbox log and every offline session's queue. Disk bytes per message, between just before the first publish and after the last PUBACK (and the online members' drain): *write_bytes* from /proc/PID/io (every byte the broker process wrote towards the disk: RocksDB's WAL, memtable flushes and compactions; counted when written, not when synced); *WAL growth*: the growth of RocksDB's `*.log` files (the write-ahead log, only meaningful if no WAL file was retired during the run); *data dir growth*: `du -sb`-style total size.",
            cfg.members, cfg.online, cfg.members - cfg.online, c.inflight, c.payload, c.duration
        ),
        &labels(&setups),
    );
    for round in 0..c.rounds {
        for i in order(setups.len(), round) {
            let s = &setups[i];
            match group_run(ctx, s, &cfg).await {
                Ok(o) => {
                    progress("group", round, c.rounds, &s.label, &o.report.line());
                    record_group(&mut sec, &s.label, &cfg, &o);
                }
                Err(e) => {
                    progress("group", round, c.rounds, &s.label, &format!("FAILED: {e}"));
                    sec.fail(&s.label, &e.to_string());
                }
            }
        }
    }
    Some(sec)
}

// ---------------------------------------------------------------------------------------

fn version_of(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("?")
                .trim()
                .to_string()
        }
        Err(e) => format!("not runnable: {e}"),
    }
}

fn git_commit() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    let subject = git(&["log", "-1", "--format=%s"]).unwrap_or_default();
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    format!(
        "{head}{} ({subject})",
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    )
}

fn find_rumqttd(cli: &Cli) -> PathBuf {
    if let Some(p) = &cli.rumqttd {
        return p.clone();
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cache/tern-tools/bin/rumqttd");
        if p.exists() {
            return p;
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("rumqttd"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("rumqttd"))
}

/// The brokers to run, in column order: `--brokers`, or by default tern (with tern-base
/// right after it when a baseline is given), Mosquitto and rumqttd.
fn broker_kinds(cli: &Cli) -> std::result::Result<Vec<Kind>, String> {
    let names: Vec<&str> = if cli.brokers.is_empty() {
        let base = cli.tern_baseline.as_ref().map(|_| Kind::TernBase.name());
        std::iter::once("tern")
            .chain(base)
            .chain(["mosquitto", "rumqttd"])
            .collect()
    } else {
        cli.brokers.iter().map(String::as_str).collect()
    };
    let mut kinds = Vec::new();
    for b in names {
        let k = Kind::parse(b)
            .ok_or_else(|| format!("unknown broker {b:?} (tern, tern-base, mosquitto, rumqttd)"))?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    if kinds.contains(&Kind::TernBase) && cli.tern_baseline.is_none() {
        return Err(
            "tern-base needs --tern-baseline PATH (the tern binary to compare with)".into(),
        );
    }
    if cli.tern_baseline.is_some() && !kinds.contains(&Kind::TernBase) {
        eprintln!("tern-compare: --tern-baseline is not used: tern-base is not among --brokers");
    }
    Ok(kinds)
}

/// Fails, naming the option that sets it, unless `kind`'s program is a file.
fn check_program(bins: &Binaries, kind: Kind) -> std::result::Result<(), String> {
    let Some(path) = bins.path(kind) else {
        return Err(format!("{kind}: no program given"));
    };
    if path.is_file() {
        return Ok(());
    }
    let what = if path.exists() {
        "is not a file"
    } else {
        "not found"
    };
    Err(match kind {
        Kind::TernBase => format!(
            "tern-base: {} {what} (--tern-baseline takes a tern binary, e.g. an older commit's target/release/tern)",
            path.display()
        ),
        _ => format!(
            "{kind}: {} {what} (scripts/bench.sh installs and builds what is missing; or pass --{kind} PATH, or leave it out with --brokers)",
            path.display()
        ),
    })
}

/// Copies the tern build of `kind` into `work` and runs that copy from then on.
fn copy_tern(bins: &mut Binaries, kind: Kind, work: &Path) -> std::result::Result<(), String> {
    let copy = work.join(kind.name());
    let slot = match kind {
        Kind::Tern => &mut bins.tern,
        Kind::TernBase => match bins.tern_base.as_mut() {
            Some(p) => p,
            None => return Err("tern-base: no program given".into()),
        },
        _ => return Ok(()),
    };
    std::fs::copy(&*slot, &copy)
        .map_err(|e| format!("cannot copy {} to {}: {e}", slot.display(), copy.display()))?;
    *slot = copy;
    Ok(())
}

/// Which tern build `path` is: its `--version` line, its path and modification time (two
/// builds of one version differ only in those).
fn tern_identity(path: &Path) -> String {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_or_else(
            |e| format!("modification time unknown: {e}"),
            |t| format!("modified {}", compare::utc_date(t)),
        );
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    format!(
        "{} (`{}`, {modified})",
        version_of(path, &["--version"]),
        full.display()
    )
}

/// (broker, version) for the report's header.
fn broker_versions(bins: &Binaries, kinds: &[Kind]) -> Vec<(String, String)> {
    kinds
        .iter()
        .map(|k| {
            let v = match (k, bins.path(*k)) {
                (_, None) => "not given".to_string(),
                (Kind::Tern | Kind::TernBase, Some(p)) => tern_identity(p),
                (Kind::Mosquitto, Some(p)) => version_of(p, &["-h"]),
                (Kind::Rumqttd, Some(p)) => format!(
                    "{} (`cargo install rumqttd --version 0.19.0 --root ~/.cache/tern-tools`, without `--locked`: its lock file pins time 0.3.30, which no longer compiles with this toolchain)",
                    version_of(p, &["-V"])
                ),
            };
            (k.name().to_string(), v)
        })
        .collect()
}

fn write_report(path: &Path, header: &Header, sections: &[Section]) {
    let text = compare::render(header, sections);
    match std::fs::write(path, text) {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("tern-compare: cannot write {}: {e}", path.display()),
    }
}

async fn main_inner(cli: Cli) -> std::result::Result<(), String> {
    let started = Instant::now();
    for s in cli.only.iter().chain(&cli.skip) {
        if !SCENARIOS.contains(&s.as_str()) {
            return Err(format!(
                "unknown scenario {s:?}; scenarios: {}",
                SCENARIOS.join(", ")
            ));
        }
    }
    let kinds = broker_kinds(&cli)?;
    if cli.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    for (name, v) in [
        ("duration", cli.duration),
        ("warmup", cli.warmup),
        ("drain", cli.drain),
        ("max-drain", cli.max_drain),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err(format!("--{name} must be a non-negative number"));
        }
    }
    let tern = match &cli.tern {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program's path: {e}"))?
            .with_file_name("tern"),
    };
    let mut bins = Binaries {
        tern,
        tern_base: cli.tern_baseline.clone(),
        mosquitto: cli.mosquitto.clone(),
        rumqttd: find_rumqttd(&cli),
    };
    for k in &kinds {
        check_program(&bins, *k)?;
    }
    // Read from the originals: a copy's modification time is that of the copy.
    let versions = broker_versions(&bins, &kinds);
    // Brokers inherit the limit: 19,000 connections need as many files on both sides.
    let files =
        raise_open_files(1 << 20).map_err(|e| format!("cannot raise the open files limit: {e}"))?;
    let (work, own_work) = match &cli.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("tern-compare-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    // Copies of tern (and of its baseline), so that a build during the run (the target
    // directory is shared) cannot change a broker under test half-way.
    for k in kinds.iter().filter(|k| k.is_tern()) {
        copy_tern(&mut bins, *k, &work)?;
    }

    let selected: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| cli.only.is_empty() || cli.only.iter().any(|o| o == s))
        .filter(|s| !cli.skip.iter().any(|o| o == s))
        .collect();
    let mut header = Header {
        date: compare::utc_date(SystemTime::now()),
        commit: git_commit(),
        machine: Machine::probe(),
        command: std::iter::once("tern-compare".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        ..Header::default()
    };
    header.versions = versions;
    let mut settings = format!(
        "{} rounds; scenarios: {}; MQTT 3.1.1, {}-byte payloads, {} s measured after {} s of warm-up, QoS 1 window {}; open files limit {files}",
        cli.rounds,
        selected.join(", "),
        cli.payload.max(16),
        cli.duration,
        cli.warmup,
        cli.inflight
    );
    let _ = write!(settings, "; tool and brokers on 127.0.0.1");
    header.settings.push(settings);
    header.settings.push(
        "brokers as configured by the tool: tern with `[admin] enabled = false` and `--log-level warn`; Mosquitto `allow_anonymous true`, `set_tcp_nodelay true` (as tern and the tool; its default leaves Nagle on), `persistence false` (except in durable), errors and warnings logged only; rumqttd one v4 listener (it has no TCP_NODELAY setting), `next_connection_delay_ms = 0` (its default of 1 ms throttles accepts to 1,000/s), `router.max_connections` 20,010".into(),
    );
    if kinds.contains(&Kind::TernBase) {
        header.settings.push(
            "tern-base: the baseline tern binary (`--tern-baseline`, above), given the same configuration, flags and per-scenario settings as tern (in durable: `tern-base always`, `tern-base batched`, `tern-base none`), copied into the work directory before the run like tern, and alternated with the other brokers".into(),
        );
    }

    let mut ctx = Ctx {
        cli: cli.clone(),
        bins,
        work: work.clone(),
        kinds,
        seq: 0,
        connection_runs: 0,
        cpus: header.machine.cpus,
    };
    let mut sections: Vec<Section> = Vec::new();
    for id in &selected {
        eprintln!("== {id}");
        let sec = match *id {
            "fan-in" | "pairs" | "fan-out" | "latency" => {
                Some(standard_section(&mut ctx, id).await)
            }
            "connections" => Some(connections_section(&mut ctx).await),
            "heartbeats" => Some(heartbeats_section(&mut ctx).await),
            "logins" => Some(logins_section(&mut ctx).await),
            "durable" => Some(durable_section(&mut ctx).await),
            "retained" => Some(retained_section(&mut ctx).await),
            "group" => group_section(&mut ctx).await,
            "dm-offline" => Some(dm_offline_section(&mut ctx).await),
            "chat" => chat_section(&mut ctx).await,
            _ => None,
        };
        if let Some(sec) = sec {
            println!("{}", sec.markdown());
            sections.push(sec);
            header.minutes = started.elapsed().as_secs_f64() / 60.0;
            write_report(&cli.out, &header, &sections);
        }
    }
    if own_work && !cli.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    let failed: usize = sections.iter().map(|s| s.failures.len()).sum();
    if failed > 0 {
        eprintln!("tern-compare: {failed} runs failed (listed in the report)");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern-compare: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_inner(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-compare: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(args: &[&str]) -> std::result::Result<Vec<Kind>, String> {
        let cli = Cli::try_parse_from(std::iter::once("tern-compare").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        broker_kinds(&cli)
    }

    #[test]
    fn baseline_joins_the_default_brokers_only() {
        use Kind::*;
        assert_eq!(kinds(&[]), Ok(vec![Tern, Mosquitto, Rumqttd]));
        assert_eq!(
            kinds(&["--tern-baseline", "/x/tern"]),
            Ok(vec![Tern, TernBase, Mosquitto, Rumqttd])
        );
        // Listed brokers are taken as listed.
        assert_eq!(
            kinds(&["--tern-baseline", "/x/tern", "--brokers", "tern,mosquitto"]),
            Ok(vec![Tern, Mosquitto])
        );
        assert_eq!(
            kinds(&["--tern-baseline", "/x/tern", "--brokers", "tern-base,tern"]),
            Ok(vec![TernBase, Tern])
        );
        assert!(
            kinds(&["--brokers", "tern,tern-base"]).is_err_and(|e| e.contains("--tern-baseline"))
        );
        assert!(kinds(&["--brokers", "tern,nats"]).is_err_and(|e| e.contains("nats")));
    }
}
