//! `tern-cluster-bench`: tern as several nodes on a three-server NATS JetStream cluster, on
//! this machine (see `tern_bench::cluster`). Each round starts everything fresh, measures
//! cross-node DMs through tern and the engine's own ceiling for the same appends, the
//! order alternating from round to round, and prints the medians and tern's share.
//!
//! ```text
//! tern-cluster-bench --pairs 32 --rounds 3 --out benches/RESULTS-cluster.md
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tern_bench::cluster::{self, Cluster, Measured, Shape};
use tern_bench::failover::{self, LeaderFailover, NodeFailover};
use tern_bench::LatencySummary;

#[derive(Debug, Parser)]
#[command(about = "tern nodes on a 3-server NATS cluster: cross-node DMs and the engine's ceiling")]
struct Args {
    /// The tern binary. [default: `tern` beside this tool]
    #[arg(long)]
    tern: Option<PathBuf>,
    /// nats-server. [default: $TERN_NATS_SERVER, else ~/.cache/tern-tools/nats-venv/bin/nats-server]
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// Sender/recipient pairs (senders on node 1, recipients' devices on node 2).
    #[arg(long, default_value_t = 32)]
    pairs: usize,
    /// Unacknowledged DMs per sender at most.
    #[arg(long, default_value_t = 16)]
    window: usize,
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Inbox streams (`cluster.shards`).
    #[arg(long, default_value_t = 8)]
    shards: u32,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Where the Markdown report goes.
    #[arg(long, default_value = "benches/RESULTS-cluster.md")]
    out: PathBuf,
    /// Devices of the failover run (SIGKILL of a node, then of a stream's NATS leader,
    /// on a fresh cluster after the rounds); 0 skips it.
    #[arg(long, default_value_t = 200)]
    failover_devices: usize,
    /// The nodes' `cluster.node_ttl_ms` in the failover run.
    #[arg(long, default_value_t = 10_000)]
    failover_node_ttl_ms: u64,
    /// Skip the rounds: the failover run only (the report has only it).
    #[arg(long)]
    failover_only: bool,
    /// Only this run of each round (0: tern DMs, 1: engine appends, 2-5: plain pairs),
    /// printed and not written to the report: for trying a change.
    #[arg(long)]
    only: Option<usize>,
    /// More of the nodes' `[cluster]` table (TOML lines, e.g. `append_linger_us = 0`).
    #[arg(long, default_value = "")]
    node_cluster: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tern-cluster-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-cluster-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn default_nats() -> PathBuf {
    if let Some(path) = std::env::var_os("TERN_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/tern-tools/nats-venv/bin/nats-server")
}

async fn run(args: &Args) -> tern_bench::Result<()> {
    let tern = match &args.tern {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("tern"),
    };
    let nats = args.nats_server.clone().unwrap_or_else(default_nats);
    let warmup = Duration::from_secs(args.warmup);
    let duration = Duration::from_secs(args.duration);
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); RUNS.len()];
    let rounds = if args.failover_only { 0 } else { args.rounds };
    for round in 0..rounds {
        let dir =
            std::env::temp_dir().join(format!("tern-cluster-bench-{}-{round}", std::process::id()));
        let cluster =
            Cluster::start_with_ttl(&nats, &tern, &dir, args.shards, 10_000, &args.node_cluster)
                .await?;
        // The runs in turn, the first one rotating from round to round.
        for k in 0..RUNS.len() {
            let which = (round + k) % RUNS.len();
            if args.only.is_some_and(|only| only != which) {
                continue;
            }
            let m = measure(&cluster, args, which, warmup, duration).await?;
            println!("round {round}: {} {}", RUNS[which], line(&m));
            results[which].push(m);
        }
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    }
    if args.only.is_some() {
        return Ok(());
    }
    let (tern_runs, engine_runs) = (&results[0], &results[1]);
    let mut report = report(args, tern_runs, engine_runs);
    if !args.failover_only {
        report.push_str(&plain_report(&results[2..]));
    }
    if args.failover_devices > 0 {
        let dir = std::env::temp_dir().join(format!(
            "tern-cluster-bench-{}-failover",
            std::process::id()
        ));
        let mut cluster = Cluster::start_with_ttl(
            &nats,
            &tern,
            &dir,
            args.shards,
            args.failover_node_ttl_ms,
            &args.node_cluster,
        )
        .await?;
        let leader = failover::leader_kill(&mut cluster, args.pairs).await?;
        println!("failover: {leader:?}");
        let node = failover::node_kill(&mut cluster, args.failover_devices).await?;
        println!("failover: {node:?}");
        drop(cluster);
        if std::env::var_os("TERN_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        report.push_str(&failover_report(args, &leader, &node));
    }
    std::fs::write(&args.out, &report)?;
    print!("{report}");
    Ok(())
}

/// The runs of a round: what each measures.
const RUNS: [&str; 6] = [
    "tern DMs",
    "engine appends",
    "tern plain, clean",
    "NATS MQTT plain, clean",
    "tern plain, persistent",
    "NATS MQTT plain, persistent",
];

async fn measure(
    cluster: &Cluster,
    args: &Args,
    which: usize,
    warmup: Duration,
    duration: Duration,
) -> tern_bench::Result<Measured> {
    let plain = |persistent| Shape::Plain { persistent };
    let (shape, from, to) = match which {
        0 => (Shape::Dms, cluster.nodes[0], cluster.nodes[1]),
        1 => {
            return cluster::engine(
                &cluster.nats_urls,
                args.shards,
                2 * args.pairs,
                // A sender's DMs and its recipient's queue while an append is in flight:
                // at most a window's worth each.
                args.window,
                args.payload,
                warmup,
                duration,
            )
            .await;
        }
        2 => (plain(false), cluster.nodes[0], cluster.nodes[1]),
        3 => (plain(false), cluster.nats_mqtt[0], cluster.nats_mqtt[1]),
        4 => (plain(true), cluster.nodes[0], cluster.nodes[1]),
        _ => (plain(true), cluster.nats_mqtt[0], cluster.nats_mqtt[1]),
    };
    let before = append_counters(cluster).await?;
    let mut measured = cluster::run_pairs(
        shape,
        from,
        to,
        args.pairs,
        args.window,
        args.payload,
        warmup,
        duration,
    )
    .await?;
    if shape == Shape::Dms {
        let after = append_counters(cluster).await?;
        let appends = after.appends - before.appends;
        if appends > 0.0 {
            measured.entries_per_append = Some((after.entries - before.entries) / appends);
            measured.append_us = Some((after.seconds - before.seconds) / appends * 1e6);
        }
    }
    Ok(measured)
}

/// Node 1's inbox appends so far.
struct AppendCounters {
    appends: f64,
    /// The entries they carried.
    entries: f64,
    /// The time they took, from publish to acknowledgement.
    seconds: f64,
}

async fn append_counters(cluster: &Cluster) -> tern_bench::Result<AppendCounters> {
    Ok(AppendCounters {
        appends: cluster
            .node_counter(0, "tern_cluster_inbox_appends_total")
            .await?,
        entries: cluster
            .node_counter(0, "tern_cluster_inbox_entries_total")
            .await?,
        seconds: cluster
            .node_counter(0, "tern_cluster_inbox_append_seconds_sum")
            .await?,
    })
}

/// tern's plain QoS 1 pairs across nodes against NATS's own MQTT support.
fn plain_report(runs: &[Vec<Measured>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Plain QoS 1 pairs across nodes: tern against NATS's MQTT support\n\n\
         The same pairs on topics `pairs/{{i}}` (publishers on node 1 / NATS server 1, \
         subscribers on node 2 / server 2), through tern and through the MQTT listeners of \
         the same NATS servers. Both keep each QoS 1 message in JetStream before they \
         acknowledge it (tern: one stream, `TERN_MESSAGES`, replicas 3, republished to the \
         subscribed nodes).\n"
    );
    let _ = writeln!(
        out,
        "| subscribers' sessions | tern delivered/s | NATS MQTT delivered/s | tern / NATS | tern p99 e2e (µs) | NATS p99 e2e (µs) |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for (label, tern, nats) in [
        ("clean", &runs[0], &runs[1]),
        ("persistent", &runs[2], &runs[3]),
    ] {
        let rate = |runs: &[Measured]| median(runs.iter().filter_map(|m| m.delivered).collect());
        let (t, n) = (rate(tern), rate(nats));
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} |",
            t.map_or("-".into(), |r| format!("{r:.0}")),
            n.map_or("-".into(), |r| format!("{r:.0}")),
            match (t, n) {
                (Some(t), Some(n)) if n > 0.0 => format!("{:.2}x", t / n),
                _ => "-".into(),
            },
            latency_median(tern, |m| m.end_to_end, true),
            latency_median(nats, |m| m.end_to_end, true)
        );
    }
    let _ = writeln!(out, "\nTarget: tern >= 2x NATS's msgs/s, with a lower p99.");
    out
}

/// The failover run.
fn failover_report(args: &Args, leader: &LeaderFailover, node: &NodeFailover) -> String {
    let ms = |l: &Option<LatencySummary>, pick: fn(&LatencySummary) -> u64| {
        l.as_ref().map_or("-".to_string(), |l| {
            format!("{:.0}", pick(l) as f64 / 1000.0)
        })
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Failover\n\n\
         One run on a fresh cluster (same machine, same sharing of its cores). First the NATS \
         server leading `TERN_INBOX_0` is SIGKILLed while {} DM senders on node 1 each keep \
         one DM unacknowledged; then, on the two NATS servers left, node 1 is SIGKILLed while \
         {} devices with persistent sessions on it receive a QoS 1 message on their own topic \
         every 100 ms from a publisher on node 2; each device reconnects to node 2 without \
         clean start and subscribes nothing. `cluster.node_ttl_ms` = {} (a client id held by \
         a node that died is free once its lease expires).\n",
        leader.senders, node.devices, args.failover_node_ttl_ms
    );
    let _ = writeln!(
        out,
        "| event | what is measured | p50 (ms) | p99 (ms) | max (ms) | recovered |\n| --- | --- | ---: | ---: | ---: | ---: |"
    );
    let _ = writeln!(
        out,
        "| stream leader SIGKILL | kill to each sender's next acknowledged DM | {} | {} | {} | {}/{} |",
        ms(&leader.appends_again, |l| l.p50_us),
        ms(&leader.appends_again, |l| l.p99_us),
        ms(&leader.appends_again, |l| l.max_us),
        leader.recovered,
        leader.senders
    );
    let _ = writeln!(
        out,
        "| tern node SIGKILL | kill to each device's first message on the other node | {} | {} | {} | {}/{} |",
        ms(&node.receiving_again, |l| l.p50_us),
        ms(&node.receiving_again, |l| l.p99_us),
        ms(&node.receiving_again, |l| l.max_us),
        node.recovered,
        node.devices
    );
    let _ = writeln!(
        out,
        "\nAcross the node kill the devices missed {} messages of their topics and got {} twice \
         (their sessions resumed on node 2 from the cluster's copy). Resumes are at least once: \
         what a device acknowledged in the 50 ms before the kill may come again (a message \
         published on node 2 while a session is being adopted there comes once: the node tells \
         its own appends in the stream read by their ids). The wait is the lease (`node_ttl_ms`) plus the adoptions of all \
         the devices at once, some refused (0x88) and retried when a read of the cluster got no \
         answer in time.",
        node.missed, node.duplicates
    );
    out
}

fn line(m: &Measured) -> String {
    let mut out = format!("{:.0}/s", m.rate);
    if let Some(ack) = m.ack {
        let _ = write!(out, " ack p50 {} µs p99 {} µs", ack.p50_us, ack.p99_us);
    }
    if let Some(d) = m.delivered {
        let _ = write!(out, ", delivered {d:.0}/s");
    }
    if let Some(e) = m.end_to_end {
        let _ = write!(out, " e2e p50 {} µs p99 {} µs", e.p50_us, e.p99_us);
    }
    if let Some(ratio) = m.entries_per_append {
        let _ = write!(out, ", {ratio:.1} entries per append");
    }
    if let Some(us) = m.append_us {
        let _ = write!(out, " acknowledged in {us:.0} µs on average");
    }
    out
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    Some(values[values.len() / 2])
}

fn latency_median(
    runs: &[Measured],
    pick: impl Fn(&Measured) -> Option<LatencySummary>,
    p99: bool,
) -> String {
    let values: Vec<f64> = runs
        .iter()
        .filter_map(&pick)
        .map(|l| (if p99 { l.p99_us } else { l.p50_us }) as f64)
        .collect();
    median(values).map_or("-".to_string(), |v| format!("{:.0}", v))
}

fn report(args: &Args, tern: &[Measured], engine: &[Measured]) -> String {
    let mut out = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "# tern nodes on NATS JetStream: cross-node DMs and the engine's ceiling\n"
    );
    let shell = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let _ = writeln!(
        out,
        "- date: {}\n- commit: {}\n",
        shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        shell("git", &["rev-parse", "--short=12", "HEAD"])
    );
    let _ = writeln!(
        out,
        "Written by `tern-cluster-bench` (see benches/README.md). {cpus} CPUs: **the 3 NATS \
         servers, the 2 tern nodes and the load tool all share them**. Replicas 3, {} inbox \
         streams, {} sender/recipient pairs (senders on node 1, recipients on node 2, MQTT \
         3.1.1 QoS 1, window {}), {}-byte payloads, {} s measured after {} s of warm-up, \
         {} rounds, the runs taking turns, the first rotating from round to round (medians).\n",
        args.shards, args.pairs, args.window, args.payload, args.duration, args.warmup, args.rounds
    );
    let tern_rate = median(tern.iter().map(|m| m.rate).collect());
    let engine_rate = median(engine.iter().map(|m| m.rate).collect());
    // A DM is two appends (the recipient's log and the sender's sent log).
    let engine_dms = engine_rate.map(|r| r / 2.0);
    let _ = writeln!(
        out,
        "| metric | tern | engine alone |\n| --- | ---: | ---: |"
    );
    let _ = writeln!(
        out,
        "| acknowledged DMs/s (engine: entries appended/s / 2) | {} | {} |",
        tern_rate.map_or("-".into(), |r| format!("{r:.0}")),
        engine_dms.map_or("-".into(), |r| format!("{r:.0}"))
    );
    let _ = writeln!(
        out,
        "| acknowledgement p50 / p99 (µs) | {} / {} | {} / {} |",
        latency_median(tern, |m| m.ack, false),
        latency_median(tern, |m| m.ack, true),
        latency_median(engine, |m| m.ack, false),
        latency_median(engine, |m| m.ack, true)
    );
    let _ = writeln!(
        out,
        "| delivered DMs/s, end-to-end p50 / p99 (µs) | {} ({} / {}) | {} |",
        median(tern.iter().filter_map(|m| m.delivered).collect())
            .map_or("-".into(), |r| format!("{r:.0}")),
        latency_median(tern, |m| m.end_to_end, false),
        latency_median(tern, |m| m.end_to_end, true),
        median(engine.iter().filter_map(|m| m.delivered).collect())
            .map_or("-".into(), |r| format!("{r:.0}"))
    );
    let optional = |values: Vec<f64>, digits: usize| {
        median(values).map_or("-".into(), |v| format!("{v:.digits$}"))
    };
    let _ = writeln!(
        out,
        "| entries per append | {} | {} |",
        optional(
            tern.iter().filter_map(|m| m.entries_per_append).collect(),
            1
        ),
        args.window
    );
    let _ = writeln!(
        out,
        "| append acknowledged in (µs; tern: mean, engine: p50) | {} | {} |",
        optional(tern.iter().filter_map(|m| m.append_us).collect(), 0),
        latency_median(engine, |m| m.ack, false)
    );
    let _ = writeln!(
        out,
        "\nAppends to one log go one at a time (each is conditional on the one before), and \
         carry what queued for the log meanwhile (tern: and what came within \
         `cluster.append_linger_us`, 2 ms, after the one before): the engine alone appends \
         `--window` entries at a time (the most that can queue in this shape), and a second \
         connection takes the recipients' logs' deliveries (entries delivered/s), as the \
         recipients' node does; its latency is one append's. A DM's PUBACK in tern waits for \
         the append in flight, then its own. tern's entries per append and append times are \
         node 1's `tern_cluster_inbox_entries_total`, `tern_cluster_inbox_appends_total` and \
         `tern_cluster_inbox_append_seconds` over the run."
    );
    if let (Some(t), Some(e)) = (tern_rate, engine_dms) {
        let _ = writeln!(
            out,
            "\ntern's share of the engine's ceiling: {:.0}% (target >= 70%); target of 50,000 \
             acknowledged DMs/s: {}.",
            100.0 * t / e.max(1.0),
            if t >= 50_000.0 { "met" } else { "**missed**" }
        );
    }
    out
}
