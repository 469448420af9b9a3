//! `tern-bench`: the load generator's command line. Runs one scenario against a broker and
//! prints its results: one line (a few for `broadcast-dm`), or a JSON object with `--json`.
//!
//! ```text
//! tern-bench --host 127.0.0.1 --port 1883 fan-in --publishers 4 --qos 0
//! tern-bench pairs --pairs 50 --qos 1 --inflight 16
//! tern-bench fan-out --subscribers 1000 --qos 1
//! tern-bench --json latency --rate 20000 --qos 0
//! tern-bench broadcast-dm --subscribers 19000 --rate 1000 --broadcast-rate 10
//! tern-bench connections --clients 19000 --pid $(pidof tern)
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tern_bench::scenarios::{ConnectionsConfig, ConnectionsReport};
use tern_bench::{scenarios, BroadcastDmConfig, BroadcastDmReport, Options, Report};
use tern_codec::{Protocol, QoS};

#[derive(Parser, Debug)]
#[command(name = "tern-bench", about = "Load generator for MQTT brokers (tern)")]
struct Cli {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883, global = true)]
    port: u16,
    /// Speak MQTT 5.0 instead of 3.1.1.
    #[arg(long, global = true)]
    v5: bool,
    /// Payload size in bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 64, global = true)]
    payload: usize,
    /// Measurement window in seconds.
    #[arg(long, default_value_t = 10.0, global = true)]
    duration: f64,
    /// Warm-up before measuring, in seconds.
    #[arg(long, default_value_t = 1.0, global = true)]
    warmup: f64,
    /// QoS 1 messages each publisher keeps in flight.
    #[arg(long, default_value_t = 16, global = true)]
    inflight: u16,
    /// After the last publish, subscribers stop once nothing has arrived for this many
    /// seconds (or at the latest after --max-drain seconds).
    #[arg(long, default_value_t = 0.5, global = true)]
    drain: f64,
    /// The longest subscribers keep reading after the last publish, in seconds.
    #[arg(long, default_value_t = 30.0, global = true)]
    max_drain: f64,
    /// Print a JSON object instead of a line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N publishers at full speed into one subscriber on one topic.
    FanIn {
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
    },
    /// N publisher/subscriber pairs on distinct topics.
    Pairs {
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
    },
    /// One publisher, N subscribers on the same topic.
    FanOut {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
    },
    /// A fixed publish rate into one subscriber: latency percentiles.
    Latency {
        #[arg(long, default_value_t = 20000.0)]
        rate: f64,
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
    },
    /// DM latency (alice -> bob, QoS 1, paced) without, then during, system broadcasts
    /// from an operator to N connected users. Needs a tern broker whose im.operators lists
    /// the operator.
    BroadcastDm {
        /// Idle users (u0, u1, ...) subscribed to broadcast/all, one connection each.
        #[arg(long, default_value_t = 19_000)]
        subscribers: usize,
        /// DMs per second from alice to bob.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Broadcasts per second in phase 2; 0 = as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        broadcast_rate: f64,
        /// QoS of the broadcast PUBLISH (1: at most --inflight unacknowledged).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        broadcast_qos: u8,
        /// User name of the operator.
        #[arg(long, default_value = "ops")]
        operator: String,
        /// Keep alive of the subscribers in seconds (they ping at half of it).
        #[arg(long, default_value_t = 60)]
        keepalive: u16,
        /// Subscribers per loopback source address (127.0.0.2, .3, ...); 0 = don't spread.
        #[arg(long, default_value_t = 1000)]
        per_source: usize,
        /// bob does not subscribe to the broadcasts (only the rest of the broker is busy
        /// with them, not his own connection).
        #[arg(long)]
        bob_without_broadcasts: bool,
    },
    /// N idle clients connect (a bounded number at a time) and stay: connect rate, and the
    /// broker's resident memory per connection when --pid names its process. Against a
    /// broker started by hand, so that it can be profiled while clients connect.
    Connections {
        #[arg(long, default_value_t = 19_000)]
        clients: usize,
        /// Keep alive of the clients in seconds (they ping at half of it).
        #[arg(long, default_value_t = 60)]
        keepalive: u16,
        /// Clients per loopback source address (127.0.0.2, .3, ...); 0 = don't spread.
        #[arg(long, default_value_t = 1000)]
        per_source: usize,
        /// Source address block to start from (successive runs: fresh addresses, away
        /// from the last run's TIME_WAIT sockets).
        #[arg(long, default_value_t = 0)]
        first_source: usize,
        /// Connections in progress at once.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
        /// The broker's process ID, for its resident memory.
        #[arg(long)]
        pid: Option<u32>,
        /// After connecting, stay this many seconds more and report the broker's CPU time
        /// per heartbeat (PINGRESP) over them (with --pid; use a short --keepalive).
        #[arg(long, default_value_t = 0.0)]
        heartbeat_window: f64,
    },
}

/// What a scenario returns.
enum Output {
    Standard(Report),
    BroadcastDm(Box<BroadcastDmReport>),
    Connections(ConnectionsReport),
}

impl Output {
    fn text(&self) -> String {
        match self {
            Output::Standard(r) => r.line(),
            Output::BroadcastDm(r) => r.text(),
            Output::Connections(r) => r.line(),
        }
    }

    fn json(&self) -> String {
        match self {
            Output::Standard(r) => r.json(),
            Output::BroadcastDm(r) => r.json(),
            Output::Connections(r) => r.json(),
        }
    }
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn seconds(name: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("--{name} must be a non-negative number"))
}

async fn main_inner(cli: Cli) -> Result<Output, String> {
    let target = format!("{}:{}", cli.host, cli.port);
    let addr = tokio::net::lookup_host(&target)
        .await
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {target}"))?;
    let mut opts = Options::new(addr);
    opts.protocol = if cli.v5 { Protocol::V5 } else { Protocol::V311 };
    opts.payload = cli.payload.max(8);
    opts.duration = seconds("duration", cli.duration)?;
    opts.warmup = seconds("warmup", cli.warmup)?;
    opts.inflight = cli.inflight.max(1);
    opts.drain_idle = seconds("drain", cli.drain)?;
    opts.max_drain = seconds("max-drain", cli.max_drain)?;
    let report = match cli.scenario {
        Scenario::FanIn { publishers, qos: q } => {
            scenarios::fan_in(&opts, publishers.max(1), qos(q)).await
        }
        Scenario::Pairs { pairs, qos: q } => scenarios::pairs(&opts, pairs.max(1), qos(q)).await,
        Scenario::FanOut {
            subscribers,
            qos: q,
        } => scenarios::fan_out(&opts, subscribers.max(1), qos(q)).await,
        Scenario::Latency { rate, qos: q } => scenarios::latency(&opts, rate, qos(q)).await,
        Scenario::BroadcastDm {
            subscribers,
            rate,
            broadcast_rate,
            broadcast_qos,
            operator,
            keepalive,
            per_source,
            bob_without_broadcasts,
        } => {
            let cfg = BroadcastDmConfig {
                subscribers,
                dm_rate: rate,
                broadcast_rate: (broadcast_rate > 0.0).then_some(broadcast_rate),
                broadcast_qos: qos(broadcast_qos),
                operator,
                keep_alive: keepalive,
                per_source,
                recipient_broadcasts: !bob_without_broadcasts,
            };
            return scenarios::broadcast_dm(&opts, &cfg)
                .await
                .map(|r| Output::BroadcastDm(Box::new(r)))
                .map_err(|e| e.to_string());
        }
        Scenario::Connections {
            clients,
            keepalive,
            per_source,
            first_source,
            parallel,
            pid,
            heartbeat_window,
        } => {
            let mut cfg = ConnectionsConfig::new(clients.max(1));
            cfg.keep_alive = keepalive;
            cfg.per_source = per_source;
            cfg.first_source = first_source;
            cfg.parallel = parallel.max(1);
            cfg.heartbeat_window = Duration::try_from_secs_f64(heartbeat_window)
                .map_err(|e| format!("--heartbeat-window {heartbeat_window}: {e}"))?;
            return scenarios::connections(&opts, &cfg, pid)
                .await
                .map(Output::Connections)
                .map_err(|e| e.to_string());
        }
    };
    report.map(Output::Standard).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_inner(cli)) {
        Ok(output) => {
            if json {
                println!("{}", output.json());
            } else {
                println!("{}", output.text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
