//! Connections: N idle clients (keep alive 60 s, clean session, no subscription) connect,
//! a bounded number at a time; measures the connect rate (connections per second until the
//! last CONNACK) and, given the broker's process ID, its resident memory per connection:
//! (RSS with N connected − RSS before) / N, from `/proc/PID/status`.
//!
//! On a 127.x broker the client sockets are bound to 127.0.0.2, 127.0.0.3, ...
//! (`per_source` each, from `first_source` on) so that ephemeral ports never run out; the
//! clients send PINGREQ at half their keep alive while they wait. With a heartbeat window,
//! they then stay that long more, and the broker's CPU time over it per PINGRESP received
//! is the cost of a device heartbeat (use a short keep alive).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{Packet, Protocol};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{stay_connected, Client, ConnectOptions};
use crate::error::{Error, Result};
use crate::run::{raise_open_files, Options};
use crate::scenarios::broadcast_dm::source_address;

/// Open files the tool needs besides one per client.
const SPARE_FILES: u64 = 64;

/// What each idle client logs in with.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Nothing: anonymous clients.
    None,
    /// The same user name and password for every client.
    Password { user: String, password: String },
    /// Client `i` logs in as user `i` with its token (modulo their number) as the
    /// password: (user, token). MQTT 3.1.1 sends no password without a user name, so the
    /// token's subject goes along.
    Tokens(Arc<Vec<(String, Bytes)>>),
}

#[derive(Debug, Clone)]
pub struct ConnectionsConfig {
    pub clients: usize,
    /// What each client logs in with.
    pub credentials: Credentials,
    pub keep_alive: u16,
    /// Clients per loopback source address; 0: the system's choice.
    pub per_source: usize,
    /// Index of the first source address block (127.0.0.2 + `first_source`): successive
    /// runs can use fresh addresses, away from the previous run's TIME_WAIT sockets.
    pub first_source: usize,
    /// Connections in progress at once.
    pub parallel: usize,
    /// How long to wait with everyone connected before reading the broker's memory.
    pub settle: Duration,
    /// After that, how long to count heartbeats (PINGRESPs) and the broker's CPU time;
    /// zero: not measured.
    pub heartbeat_window: Duration,
}

impl ConnectionsConfig {
    pub fn new(clients: usize) -> ConnectionsConfig {
        ConnectionsConfig {
            clients,
            credentials: Credentials::None,
            keep_alive: 60,
            per_source: 1000,
            first_source: 0,
            parallel: 64,
            settle: Duration::from_secs(2),
            heartbeat_window: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionsReport {
    pub clients: usize,
    /// From the first connect to the last CONNACK.
    pub connect_secs: f64,
    /// Broker RSS before the clients connected and with all of them connected, in KiB.
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// CPU time the broker process spent (user + system) from the first connect to the
    /// last CONNACK, in seconds. On a machine the load tool shares, the connect rate is
    /// bounded by the tool and the kernel as much as by the broker; this is the broker's
    /// own share.
    pub broker_cpu_secs: Option<f64>,
    /// CPU time this tool spent over the same span: on a shared machine, what the
    /// clients' side of every connect costs (the kernel's share of a loopback handshake
    /// included).
    pub tool_cpu_secs: Option<f64>,
    /// PINGRESPs the clients received in the heartbeat window, and the broker's CPU
    /// time over it (`None` without a window or a broker PID).
    pub heartbeats: usize,
    pub heartbeat_cpu_secs: Option<f64>,
    /// Connections the broker closed while they were idle.
    pub lost: usize,
}

impl ConnectionsReport {
    pub fn connects_per_sec(&self) -> f64 {
        if self.connect_secs > 0.0 {
            self.clients as f64 / self.connect_secs
        } else {
            0.0
        }
    }

    /// Broker CPU time per accepted connection, in microseconds.
    pub fn cpu_per_connection_us(&self) -> Option<f64> {
        Some(self.broker_cpu_secs? * 1e6 / self.clients.max(1) as f64)
    }

    /// This tool's CPU time per connection, in microseconds.
    pub fn tool_cpu_per_connection_us(&self) -> Option<f64> {
        Some(self.tool_cpu_secs? * 1e6 / self.clients.max(1) as f64)
    }

    /// Broker CPU time per heartbeat (PINGREQ read, PINGRESP written), in microseconds.
    pub fn cpu_per_heartbeat_us(&self) -> Option<f64> {
        let cpu = self.heartbeat_cpu_secs?;
        (self.heartbeats > 0).then(|| cpu * 1e6 / self.heartbeats as f64)
    }

    /// Broker memory per connection, in KiB.
    pub fn rss_per_connection_kib(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_after_kib?);
        Some((after as f64 - before as f64) / self.clients.max(1) as f64)
    }

    /// The report as one JSON object.
    pub fn json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        format!(
            "{{\"scenario\":\"connections\",\"clients\":{},\"connect_secs\":{:.3},\"connects_per_sec\":{:.1},\"rss_before_kib\":{},\"rss_after_kib\":{},\"rss_per_connection_kib\":{},\"broker_cpu_us_per_connection\":{},\"tool_cpu_us_per_connection\":{},\"heartbeats\":{},\"broker_cpu_us_per_heartbeat\":{},\"lost\":{}}}",
            self.clients,
            self.connect_secs,
            self.connects_per_sec(),
            opt(self.rss_before_kib),
            opt(self.rss_after_kib),
            self.rss_per_connection_kib()
                .map_or("null".to_string(), |v| format!("{v:.3}")),
            self.cpu_per_connection_us()
                .map_or("null".to_string(), |v| format!("{v:.2}")),
            self.tool_cpu_per_connection_us()
                .map_or("null".to_string(), |v| format!("{v:.2}")),
            self.heartbeats,
            self.cpu_per_heartbeat_us()
                .map_or("null".to_string(), |v| format!("{v:.2}")),
            self.lost,
        )
    }

    pub fn line(&self) -> String {
        let kib = |v: Option<u64>| {
            v.map_or("n/a".to_string(), |v| {
                format!("{:.1}MiB", v as f64 / 1024.0)
            })
        };
        let heartbeats = match self.cpu_per_heartbeat_us() {
            Some(us) => format!(
                ", {} heartbeats, broker CPU {us:.1}us each",
                self.heartbeats
            ),
            None => String::new(),
        };
        format!(
            "connections n={}: {:.0} connects/s ({:.2}s, CPU per connection: broker {}, tool {}), broker RSS {} -> {} = {} per connection{heartbeats}, lost={}",
            self.clients,
            self.connects_per_sec(),
            self.connect_secs,
            self.cpu_per_connection_us()
                .map_or("n/a".to_string(), |v| format!("{v:.1}us")),
            self.tool_cpu_per_connection_us()
                .map_or("n/a".to_string(), |v| format!("{v:.1}us")),
            kib(self.rss_before_kib),
            kib(self.rss_after_kib),
            self.rss_per_connection_kib()
                .map_or("n/a".to_string(), |v| format!("{v:.2}KiB")),
            self.lost,
        )
    }
}

/// Reads `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time a process has used so far (user + system), in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// Runs the scenario (see the module documentation); `broker_pid` for the memory figures.
pub async fn connections(
    opts: &Options,
    cfg: &ConnectionsConfig,
    broker_pid: Option<u32>,
) -> Result<ConnectionsReport> {
    let n = cfg.clients;
    let need = n as u64 + SPARE_FILES;
    let limit = raise_open_files(need)
        .map_err(|e| Error::new(format!("cannot read the open files limit: {e}")))?;
    if limit < need {
        return Err(Error::new(format!(
            "{n} clients need about {need} open files, the limit is {limit} (`ulimit -Hn`)"
        )));
    }
    let rss_before = broker_pid.and_then(rss_kib);
    let cpu_before = broker_pid.and_then(cpu_secs);
    let tool_cpu_before = cpu_secs(std::process::id());
    let lost = Arc::new(AtomicUsize::new(0));
    let pongs = Arc::new(AtomicUsize::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let connecting = Arc::new(Semaphore::new(cfg.parallel.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<()>>();
    let mut clients = JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let mut conn = ConnectOptions::new(&format!("{}-c{i}", opts.run_id));
        conn.keep_alive = cfg.keep_alive;
        conn.bind = source_address(
            opts.addr,
            cfg.per_source,
            i + cfg.first_source * cfg.per_source.max(1),
        );
        conn.buffer = 256;
        match &cfg.credentials {
            Credentials::None => {}
            Credentials::Password { user, password } => {
                conn.username = Some(user.clone());
                conn.password = Some(Bytes::copy_from_slice(password.as_bytes()));
            }
            Credentials::Tokens(tokens) => {
                if let Some((user, token)) = tokens.get(i % tokens.len().max(1)) {
                    conn.username = Some(user.clone());
                    conn.password = Some(token.clone());
                }
            }
        }
        clients.spawn(idle_client(
            (opts.addr, opts.protocol, conn),
            connecting.clone(),
            ready_tx.clone(),
            (lost.clone(), pongs.clone()),
            stop_rx.clone(),
        ));
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..n {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                failure = Some(e);
                break;
            }
            None => {
                failure = Some(Error::new("a client task failed"));
                break;
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let cpu_after = broker_pid.and_then(cpu_secs);
    let tool_cpu_after = cpu_secs(std::process::id());
    if failure.is_none() {
        tokio::time::sleep(cfg.settle).await;
    }
    let rss_after = broker_pid.and_then(rss_kib);
    let mut heartbeats = 0;
    let mut heartbeat_cpu_secs = None;
    if failure.is_none() && !cfg.heartbeat_window.is_zero() {
        let (pongs_before, cpu_before) =
            (pongs.load(Ordering::Relaxed), broker_pid.and_then(cpu_secs));
        tokio::time::sleep(cfg.heartbeat_window).await;
        heartbeats = pongs.load(Ordering::Relaxed) - pongs_before;
        heartbeat_cpu_secs = cpu_before
            .zip(broker_pid.and_then(cpu_secs))
            .map(|(b, a)| a - b);
    }
    let _ = stop.send(true);
    while clients.join_next().await.is_some() {}
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(ConnectionsReport {
        clients: n,
        connect_secs,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        broker_cpu_secs: cpu_before.zip(cpu_after).map(|(b, a)| a - b),
        tool_cpu_secs: tool_cpu_before.zip(tool_cpu_after).map(|(b, a)| a - b),
        heartbeats,
        heartbeat_cpu_secs,
        lost: lost.load(Ordering::Relaxed),
    })
}

/// One idle client: connects (a bounded number at a time), says so on `ready`, then reads
/// until `stop`, sending PINGREQ at half its keep alive and counting the PINGRESPs in
/// `pongs` (and itself in `lost` if the broker closes it).
async fn idle_client(
    (addr, protocol, conn): (SocketAddr, Protocol, ConnectOptions),
    connecting: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<()>>,
    (lost, pongs): (Arc<AtomicUsize>, Arc<AtomicUsize>),
    mut stop: watch::Receiver<bool>,
) {
    let keep_alive = conn.keep_alive;
    let connected = {
        let _permit = connecting.acquire().await;
        Client::connect_with(addr, protocol, &conn).await
    };
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
            return;
        }
    };
    drop(ready);
    let result = stay_connected(&mut reader, &mut writer, keep_alive, &mut stop, |r, _| {
        while let Some(packet) = r.try_next()? {
            if matches!(packet, Packet::PingResp) {
                pongs.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    })
    .await;
    match result {
        Ok(()) => writer.disconnect().await,
        Err(_) => {
            lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}
