//! Brokers as child processes, for side-by-side runs (`tern-compare`): tern (and a second,
//! baseline build of tern), Mosquitto and rumqttd, each started on a free loopback port with a generated configuration file and a
//! directory of its own (configuration, data, log), and killed when dropped.
//!
//! A broker is also killed if the process that started it dies (`PR_SET_PDEATHSIG` on
//! Linux), so an interrupted comparison leaves no broker behind. Children inherit the open
//! files limit of this process: raise it first ([`crate::run::raise_open_files`]) for the
//! 19,000-connection run.

use std::fmt;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tern_codec::Protocol;

use crate::client::Client;
use crate::error::{Error, Result};

/// Which broker program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Tern,
    /// A second tern binary (e.g. an older commit's release build), configured and started
    /// exactly like `Tern`, to measure a change as new/old in the same run.
    TernBase,
    Mosquitto,
    Rumqttd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tern => "tern",
            Kind::TernBase => "tern-base",
            Kind::Mosquitto => "mosquitto",
            Kind::Rumqttd => "rumqttd",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "tern" => Some(Kind::Tern),
            "tern-base" => Some(Kind::TernBase),
            "mosquitto" => Some(Kind::Mosquitto),
            "rumqttd" => Some(Kind::Rumqttd),
            _ => None,
        }
    }

    /// A build of tern: the one under test or the baseline (same configuration and flags).
    pub fn is_tern(self) -> bool {
        matches!(self, Kind::Tern | Kind::TernBase)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub tern: PathBuf,
    /// The baseline tern build, if one is compared.
    pub tern_base: Option<PathBuf>,
    pub mosquitto: PathBuf,
    pub rumqttd: PathBuf,
}

impl Binaries {
    /// The program of `kind`; `None` for a baseline that was not given.
    pub fn path(&self, kind: Kind) -> Option<&Path> {
        match kind {
            Kind::Tern => Some(&self.tern),
            Kind::TernBase => self.tern_base.as_deref(),
            Kind::Mosquitto => Some(&self.mosquitto),
            Kind::Rumqttd => Some(&self.rumqttd),
        }
    }
}

/// A broker to start: which program, under which name in the results, and the settings a
/// scenario needs beyond the defaults.
#[derive(Debug, Clone)]
pub struct BrokerSetup {
    /// Column name in the results (`tern`, `tern batched`, `tern-base`, `mosquitto`...).
    pub label: String,
    pub kind: Kind,
    /// tern: TOML appended to the configuration file (whole sections such as `[limits]`;
    /// `[admin]` (disabled) and `[listeners.tcp.limits]` (no connect rate) are already
    /// there).
    pub tern_toml: String,
    /// Mosquitto: persistence on, saving the in-memory state every this many seconds (and
    /// at shutdown); `None`: no persistence.
    pub mosquitto_autosave_secs: Option<u32>,
    /// Mosquitto: extra configuration lines.
    pub mosquitto_lines: Vec<String>,
    /// tern: users created offline (`tern user add`) before the broker serves, as (user,
    /// password).
    pub tern_users: Vec<(String, String)>,
    /// rumqttd: `router.max_connections`.
    pub rumqttd_max_connections: usize,
    /// rumqttd: `router.max_outgoing_packet_count` (its default is 200; it also caps how
    /// many retained messages one SUBSCRIBE gets).
    pub rumqttd_max_outgoing: u64,
}

impl BrokerSetup {
    /// The program with the settings every scenario uses, labelled with its name.
    pub fn new(kind: Kind) -> BrokerSetup {
        BrokerSetup {
            label: kind.name().to_string(),
            kind,
            tern_toml: String::new(),
            mosquitto_autosave_secs: None,
            mosquitto_lines: Vec::new(),
            tern_users: Vec::new(),
            rumqttd_max_connections: 20_010,
            rumqttd_max_outgoing: 200,
        }
    }

    pub fn labelled(mut self, label: &str) -> BrokerSetup {
        self.label = label.to_string();
        self
    }

    /// Writes the configuration file for `port` and `data` into `dir`; returns the command
    /// line arguments.
    fn write_config(&self, dir: &Path, port: u16, data: &Path) -> Result<Vec<String>> {
        let io =
            |e: std::io::Error| Error::new(format!("cannot write into {}: {e}", dir.display()));
        match self.kind {
            Kind::Tern | Kind::TernBase => {
                let file = dir.join("tern.toml");
                // No connect-rate limit: Mosquitto and rumqttd have none, and scenario 5
                // measures how fast connections are accepted.
                let text = format!(
                    "[admin]\nenabled = false\n\n[listeners.tcp.limits]\nmax_connects_per_sec = 0\n\n{}\n",
                    self.tern_toml
                );
                fs::write(&file, text).map_err(io)?;
                Ok(vec![
                    "serve".into(),
                    "--config".into(),
                    file.display().to_string(),
                    "--listen".into(),
                    format!("127.0.0.1:{port}"),
                    "--data-dir".into(),
                    data.display().to_string(),
                    "--log-level".into(),
                    "warn".into(),
                ])
            }
            Kind::Mosquitto => {
                let file = dir.join("mosquitto.conf");
                let mut text = format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
                     log_dest stderr\nlog_type error\nlog_type warning\nconnection_messages false\n"
                );
                // Started as root, Mosquitto drops to the user `mosquitto`, which could not
                // write its persistence file into our directory.
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } == 0 {
                    text.push_str("user root\n");
                }
                match self.mosquitto_autosave_secs {
                    Some(secs) => {
                        fs::create_dir_all(data).map_err(io)?;
                        text.push_str(&format!(
                            "persistence true\npersistence_location {}/\nautosave_interval {secs}\n",
                            data.display()
                        ));
                    }
                    None => text.push_str("persistence false\n"),
                }
                for line in &self.mosquitto_lines {
                    text.push_str(line);
                    text.push('\n');
                }
                fs::write(&file, text).map_err(io)?;
                Ok(vec!["-c".into(), file.display().to_string()])
            }
            Kind::Rumqttd => {
                let file = dir.join("rumqttd.toml");
                let text = format!(
                    "id = 0\n\n\
                     [router]\n\
                     max_connections = {}\n\
                     max_outgoing_packet_count = {}\n\
                     max_segment_size = 104857600\n\
                     max_segment_count = 10\n\n\
                     [v4.1]\n\
                     name = \"v4-1\"\n\
                     listen = \"127.0.0.1:{port}\"\n\
                     next_connection_delay_ms = 0\n\
                     [v4.1.connections]\n\
                     connection_timeout_ms = 60000\n\
                     max_payload_size = 20480\n\
                     max_inflight_count = 100\n\
                     dynamic_filters = true\n",
                    self.rumqttd_max_connections, self.rumqttd_max_outgoing
                );
                fs::write(&file, text).map_err(io)?;
                Ok(vec!["-q".into(), "-c".into(), file.display().to_string()])
            }
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: another process could take it in
/// between, which the broker's start would then report).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::new(format!("cannot find a free port: {e}")))?;
    Ok(l.local_addr()?.port())
}

/// A running broker. Dropping it kills the process (SIGKILL) and, unless kept, removes its
/// directory.
pub struct BrokerProcess {
    pub setup: BrokerSetup,
    pub addr: SocketAddr,
    /// The broker's own directory: configuration, `data/`, `broker.log`.
    pub dir: PathBuf,
    /// The data directory (tern's RocksDB, Mosquitto's persistence file).
    pub data: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// When the current process was spawned.
    pub spawned_at: Instant,
    keep_dir: bool,
}

impl BrokerProcess {
    /// Creates `dir`, writes the configuration for a free port and starts the broker (not
    /// waiting for it to accept connections: see [`BrokerProcess::wait_ready`]).
    pub fn start(setup: &BrokerSetup, bins: &Binaries, dir: &Path) -> Result<BrokerProcess> {
        BrokerProcess::prepare(setup, bins, dir)?.spawn()
    }

    /// Like [`BrokerProcess::start`] but without starting it (to prepare its data directory
    /// offline first, e.g. `tern group create`); then call [`BrokerProcess::spawn`].
    pub fn prepare(setup: &BrokerSetup, bins: &Binaries, dir: &Path) -> Result<BrokerProcess> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
        let port = free_port()?;
        let data = dir.join("data");
        let args = setup.write_config(dir, port, &data)?;
        let program = bins
            .path(setup.kind)
            .ok_or_else(|| Error::new(format!("{}: no program given", setup.label)))?
            .to_path_buf();
        if !program.exists() {
            return Err(Error::new(format!(
                "{}: {} not found",
                setup.label,
                program.display()
            )));
        }
        Ok(BrokerProcess {
            setup: setup.clone(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir: dir.to_path_buf(),
            data,
            program,
            args,
            child: None,
            spawned_at: Instant::now(),
            keep_dir: false,
        })
    }

    /// Starts the (prepared or stopped) broker process, its output appended to
    /// `broker.log`.
    pub fn spawn(mut self) -> Result<BrokerProcess> {
        self.respawn()?;
        Ok(self)
    }

    fn respawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Err(Error::new(format!(
                "{} is already running",
                self.setup.label
            )));
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .map_err(|e| Error::new(format!("cannot open the broker log: {e}")))?;
        let log2 = log.try_clone()?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                    Ok(())
                });
            }
        }
        self.spawned_at = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| Error::new(format!("cannot start {}: {e}", self.program.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Keep the directory when dropped (for a look at the log or the data).
    pub fn keep_dir(&mut self, keep: bool) {
        self.keep_dir = keep;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process still runs (an exit is reaped).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until the broker answers a CONNECT with a CONNACK; returns the time since the
    /// process was spawned. An exit of the broker or `limit` ends the wait with an error
    /// quoting the end of its log.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<Duration> {
        let deadline = self.spawned_at + limit;
        let mut attempt = 0u32;
        loop {
            if !self.running() {
                return Err(Error::new(format!(
                    "{} exited during start-up; its log ends with:\n{}",
                    self.setup.label,
                    self.log_tail(15)
                )));
            }
            attempt += 1;
            let id = format!("tc-probe-{}-{attempt}", std::process::id());
            let left = deadline.saturating_duration_since(Instant::now());
            let probe =
                tokio::time::timeout(left, Client::connect(self.addr, Protocol::V311, &id)).await;
            match probe {
                Ok(Ok(client)) => {
                    let at = self.spawned_at.elapsed();
                    client.writer.disconnect().await;
                    return Ok(at);
                }
                // Not listening yet: try again.
                Ok(Err(e)) if e.0.starts_with("cannot connect") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // Listening, but not answering as it should.
                Ok(Err(e)) => {
                    return Err(Error::new(format!(
                        "{}: {e}; its log ends with:\n{}",
                        self.setup.label,
                        self.log_tail(15)
                    )))
                }
                _ => {
                    return Err(Error::new(format!(
                    "{} did not accept an MQTT connection within {limit:?}; its log ends with:\n{}",
                    self.setup.label,
                    self.log_tail(15)
                )))
                }
            }
        }
    }

    /// Stops the broker: SIGTERM, then SIGKILL if it is still running after `grace`.
    /// Returns how long it took to exit.
    pub async fn stop(&mut self, grace: Duration) -> Duration {
        let started = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if started.elapsed() >= grace => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        started.elapsed()
    }

    /// Starts the broker again (same port, configuration and data), after [`stop`].
    ///
    /// [`stop`]: BrokerProcess::stop
    pub fn restart(&mut self) -> Result<()> {
        self.respawn()
    }

    /// Resident memory of the broker process in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        proc_field(&status, "VmRSS:")
    }

    /// Bytes the broker process caused to be written to storage so far (`write_bytes` of
    /// `/proc/PID/io`: counted when pages are dirtied, so buffered writes count before
    /// they reach the disk).
    pub fn write_bytes(&self) -> Option<u64> {
        let io = fs::read_to_string(format!("/proc/{}/io", self.pid()?)).ok()?;
        proc_field(&io, "write_bytes:")
    }

    /// The last `lines` non-blank lines of the broker's log (colour codes removed).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
        let clean = strip_ansi(&text);
        let all: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The number after `name` in a `/proc` file of `name value [unit]` lines.
fn proc_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Total size in bytes of the files under `dir`, and of those whose name ends in `.log`
/// (RocksDB's write-ahead log files; its info log is `LOG`, not counted).
pub fn dir_bytes(dir: &Path) -> (u64, u64) {
    let mut total = 0;
    let mut wal = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
                if e.file_name().to_string_lossy().ends_with(".log") {
                    wal += meta.len();
                }
            }
        }
    }
    (total, wal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let status = "Name:\ttern\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(proc_field(status, "VmRSS:"), Some(12345));
        let io = "rchar: 1\nwrite_bytes: 4096\ncancelled_write_bytes: 0\n";
        assert_eq!(proc_field(io, "write_bytes:"), Some(4096));
        assert_eq!(proc_field(io, "VmRSS:"), None);
        assert_eq!(strip_ansi("\u{1b}[2mtime\u{1b}[0m ERROR x"), "time ERROR x");
    }
}
