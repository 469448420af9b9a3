//! The broker's configuration: what `tern serve` runs with.
//!
//! [`Config`] holds the listeners ([`Listeners`]: MQTT over TCP, TLS, WebSocket and
//! WebSocket over TLS, each with its own [`ListenerLimits`]), the data directory, whether
//! anonymous clients are accepted, the per-connection and per-session [`Limits`], the
//! durability of the storage writer ([`StorageConfig`]), metrics and logging. `tern.example.toml` at the root
//! of the repository lists every key with its default and meaning.
//!
//! # Precedence
//!
//! Built-in defaults < the TOML file given with `--config` < command-line flags
//! (`--listen`, `--data-dir`, `--log-level`, `--admin-listen`). Every key of the file is
//! optional: a key left out keeps its default. [`Config::from_args`] applies all three
//! layers, then validates.
//!
//! # Errors
//!
//! A broker that silently ignores `max_pakcet_size = 4096` runs with a limit the operator
//! did not choose, so mistakes stop the start instead:
//!
//! - an unknown key, at any level, is an error naming it (`limits.max_pakcet_size`);
//! - a value of the wrong type or an unknown variant is an error naming the key
//!   (`listeners.tcp.listen`, `storage.sync`), with its line and column;
//! - a value of the right type but out of range, or inconsistent with another, is
//!   [`ConfigError::Invalid`] with the dotted key (`limits.max_inflight`).

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::cli::ServeArgs;

/// Largest packet the MQTT wire format can express: a 1-byte packet type, a 4-byte
/// Remaining Length and 268_435_455 bytes of remaining length. MQTT v5's Maximum Packet
/// Size counts the whole packet, so this is the largest meaningful `max_packet_size`.
pub const MAX_PACKET_SIZE_LIMIT: u32 = 268_435_460;

/// Smallest accepted `max_packet_size`: below this a CONNECT with a short client id, a user
/// name and a few properties no longer fits, and no client could connect.
pub const MIN_PACKET_SIZE_LIMIT: u32 = 64;

/// The broker's whole configuration. See the [module docs](self) for precedence and errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The MQTT listeners (the `[listeners.*]` tables): TCP on by default, TLS, WebSocket
    /// and WebSocket over TLS off.
    pub listeners: Listeners,
    /// Directory of the broker's durable state. Default `./tern-data`. A relative path is
    /// relative to the working directory, not to the config file.
    pub data_dir: PathBuf,
    /// Accept clients that present no credentials: [`AnonymousPolicy`]. Default
    /// `"loopback"`: only on listeners bound to a loopback address (the default TCP one).
    pub allow_anonymous: AnonymousPolicy,
    /// Which user an anonymous client acts as. Default [`AnonymousIdentity::Username`].
    pub anonymous_identity: AnonymousIdentity,
    /// Per-connection, per-session and broker-wide limits.
    pub limits: Limits,
    /// Users, inboxes, groups and sync (the `[im]` table).
    pub im: ImConfig,
    /// The admin HTTP/JSON API (the `[admin]` table).
    pub admin: AdminConfig,
    /// Durability of the storage writer.
    pub storage: StorageConfig,
    /// `$SYS` topics (the `[metrics]` table); Prometheus metrics are served by the admin API.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
    /// The async runtime (the `[runtime]` table).
    pub runtime: RuntimeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: Listeners::default(),
            data_dir: PathBuf::from("./tern-data"),
            allow_anonymous: AnonymousPolicy::Loopback,
            anonymous_identity: AnonymousIdentity::Username,
            limits: Limits::default(),
            im: ImConfig::default(),
            admin: AdminConfig::default(),
            storage: StorageConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// The MQTT listeners (the `[listeners]` table). Each is on or off, binds its own address,
/// and has its own [`ListenerLimits`]; `limits.max_connections` caps all of them together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// MQTT over TCP. On by default, on `127.0.0.1:1883`.
    pub tcp: TcpListenerConfig,
    /// MQTT over TLS (rustls). Off by default; `127.0.0.1:8883`.
    pub tls: TlsListenerConfig,
    /// MQTT over WebSocket (subprotocol `mqtt`). Off by default; `127.0.0.1:8083`, `/mqtt`.
    pub ws: WsListenerConfig,
    /// MQTT over WebSocket over TLS. Off by default; `127.0.0.1:8084`, `/mqtt`.
    pub wss: WssListenerConfig,
}

/// `[listeners.tcp]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpListenerConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub limits: ListenerLimits,
}

impl Default for TcpListenerConfig {
    fn default() -> Self {
        TcpListenerConfig {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)),
            limits: ListenerLimits::default(),
        }
    }
}

/// `[listeners.tls]`: certificate chain and private key in PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListenerConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    pub limits: ListenerLimits,
}

impl Default for TlsListenerConfig {
    fn default() -> Self {
        TlsListenerConfig {
            enabled: false,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8883)),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            limits: ListenerLimits::default(),
        }
    }
}

/// `[listeners.ws]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsListenerConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The HTTP path of the upgrade request; other paths get 404.
    pub path: String,
    pub limits: ListenerLimits,
}

impl Default for WsListenerConfig {
    fn default() -> Self {
        WsListenerConfig {
            enabled: false,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8083)),
            path: "/mqtt".to_string(),
            limits: ListenerLimits::default(),
        }
    }
}

/// `[listeners.wss]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WssListenerConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub path: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub limits: ListenerLimits,
}

impl Default for WssListenerConfig {
    fn default() -> Self {
        WssListenerConfig {
            enabled: false,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8084)),
            path: "/mqtt".to_string(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            limits: ListenerLimits::default(),
        }
    }
}

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl ListenerKind {
    pub const ALL: [ListenerKind; 4] = [
        ListenerKind::Tcp,
        ListenerKind::Tls,
        ListenerKind::Ws,
        ListenerKind::Wss,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
}

impl std::fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One enabled listener, whatever its table looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub kind: ListenerKind,
    pub listen: SocketAddr,
    /// Certificate chain and key files (TLS and WSS).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The upgrade path (WS and WSS).
    pub ws_path: Option<String>,
    pub limits: ListenerLimits,
}

impl Listeners {
    /// The enabled listeners, TCP first.
    pub fn enabled(&self) -> Vec<ListenerSpec> {
        let mut out = Vec::new();
        if self.tcp.enabled {
            out.push(ListenerSpec {
                kind: ListenerKind::Tcp,
                listen: self.tcp.listen,
                tls: None,
                ws_path: None,
                limits: self.tcp.limits.clone(),
            });
        }
        if self.tls.enabled {
            out.push(ListenerSpec {
                kind: ListenerKind::Tls,
                listen: self.tls.listen,
                tls: Some((self.tls.cert_file.clone(), self.tls.key_file.clone())),
                ws_path: None,
                limits: self.tls.limits.clone(),
            });
        }
        if self.ws.enabled {
            out.push(ListenerSpec {
                kind: ListenerKind::Ws,
                listen: self.ws.listen,
                tls: None,
                ws_path: Some(self.ws.path.clone()),
                limits: self.ws.limits.clone(),
            });
        }
        if self.wss.enabled {
            out.push(ListenerSpec {
                kind: ListenerKind::Wss,
                listen: self.wss.listen,
                tls: Some((self.wss.cert_file.clone(), self.wss.key_file.clone())),
                ws_path: Some(self.wss.path.clone()),
                limits: self.wss.limits.clone(),
            });
        }
        out
    }

    /// Sets every listener's port to 0 (free ports; tests and benches).
    pub fn use_free_ports(&mut self) {
        self.tcp.listen.set_port(0);
        self.tls.listen.set_port(0);
        self.ws.listen.set_port(0);
        self.wss.listen.set_port(0);
    }
}

/// What one listener lets its clients do (`[listeners.*.limits]`). Every limit is checked
/// before anything else is spent on a connection; 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// Connections on this listener at once; more are closed at accept. Default 0: only
    /// `limits.max_connections` (all listeners together) applies.
    pub max_connections: usize,
    /// Connections from one IP address at once; more are closed at accept. Default 0 (off:
    /// many phones share one carrier NAT address).
    pub max_connections_per_ip: usize,
    /// New connections accepted per second (bursts up to one second's worth). Beyond it the
    /// listener stops accepting for a moment: new clients wait in the kernel's accept
    /// queue, established ones are not touched. Absorbs reconnect storms. Default 1_000.
    pub max_connects_per_sec: u32,
    /// PUBLISH packets one connection may send per second (bursts up to one second's
    /// worth); beyond it the connection is not read until its budget recovers (TCP
    /// backpressure). Default 0 (off).
    pub max_inbound_messages_per_sec: u32,
    /// Bytes one connection may send per second, the same way. Default 0 (off).
    pub max_inbound_bytes_per_sec: u64,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 0,
            max_connections_per_ip: 0,
            max_connects_per_sec: 1_000,
            max_inbound_messages_per_sec: 0,
            max_inbound_bytes_per_sec: 0,
        }
    }
}

/// `$SYS` topics (the `[metrics]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Seconds between updates of the `$SYS/broker/...` topics. Default 10; 0 = no `$SYS`.
    pub sys_interval_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            sys_interval_secs: 10,
        }
    }
}

/// Limits that bound what clients can make the broker hold or do (the `[limits]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest packet accepted from a client, fixed header included; a larger one gets a v5
    /// DISCONNECT 0x95 (Packet too large) or, for 3.1.1, the connection closed. Default
    /// 1 MiB; range [`MIN_PACKET_SIZE_LIMIT`]..=[`MAX_PACKET_SIZE_LIMIT`].
    pub max_packet_size: u32,
    /// Receive Maximum announced to v5 clients, and the cap on unacknowledged outbound
    /// QoS>0 messages per session. Default 32; at least 1 (v5 forbids a Receive Maximum
    /// of 0). Acknowledged out of order, the outbound packet IDs in flight may spread over
    /// at most 4x the window (see `crate::in_flight`), which bounds the window's memory.
    pub max_inflight: u16,
    /// Messages queued per session beyond the in-flight window. At the limit QoS 0 messages
    /// are dropped; QoS>0 messages of a connected persistent session stay in its durable
    /// queue and are read back in order later; QoS>0 messages of a non-persistent session,
    /// or of an offline persistent session already holding this many, are dropped and
    /// counted. Default 10_000; at least 1; values above 4_294_967_295 act as that.
    pub max_queued_messages: usize,
    /// Bytes queued per session (same queue as `max_queued_messages`). Default 64 MiB; at
    /// least `max_packet_size`, so one message of the largest accepted size can be queued;
    /// values above 4 GiB (4_294_967_295) act as 4 GiB.
    pub max_queued_bytes: usize,
    /// Concurrent client connections, all listeners together. Default 18_000; at least 1.
    pub max_connections: usize,
    /// Levels of a topic name or filter (`a/b/c` has 3); deeper ones are refused. Default
    /// 32; at least 1.
    pub max_topic_levels: usize,
    /// Topic Alias Maximum announced to v5 clients. Default 64; 0 turns aliases off.
    pub max_topic_aliases: u16,
    /// Subscriptions one session may hold. Default 1_000; at least 1.
    pub max_subscriptions_per_session: usize,
    /// Seconds between TCP accept and the CONNECT arriving before the connection is closed.
    /// Default 10; range 1..=3_600.
    pub connect_timeout_secs: u64,
    /// Upper bound on the keep alive a client may ask for; 0 (default) = no bound. A v5
    /// client asking for more, or for 0, gets this value as Server Keep Alive. 3.1.1 cannot
    /// tell a client a different value, so 3.1.1 clients are not bounded: they are held to
    /// 1.5 times their own keep alive, as the protocol requires.
    pub max_keepalive_secs: u16,
    /// Cap on a v5 client's Session Expiry Interval; also the expiry of 3.1.1 persistent
    /// sessions, which have none of their own. Default 7 days (604_800).
    pub max_session_expiry_secs: u32,
    /// Retained messages stored in total. At the limit a retained message on a new topic is
    /// not stored (it is still delivered). Default 1_000_000.
    pub max_retained_messages: usize,
    /// Bound of each connection's mailbox of chat deliveries from the router (see
    /// `mailbox.rs`); the router never waits on a connection. When full, a persistent
    /// session's QoS>0 messages wait in its durable queue, the rest for that connection
    /// are dropped and counted. The connection takes a whole mailbox at a time, so up to
    /// twice this many can be in memory for one connection. Default 1_024; at least 1 (a
    /// mailbox of 0 cannot carry anything).
    pub outbound_channel_capacity: usize,
    /// Milliseconds of quiet after which a connection that was woken leaves its task and
    /// waits in the parking lot (`parking.rs`; checked every this many milliseconds, so it
    /// parks after one to two times this): about 0.7 KB less per idle connection, and a
    /// few microseconds to wake it on its next packet, message or keepalive deadline. A
    /// new connection parks at its first quiet moment after CONNACK. Only plain TCP
    /// connections park (TLS and WebSocket state stays in its task). 0 turns parking off.
    /// Default 1_000; at most 3_600_000.
    pub idle_park_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1_048_576,
            max_inflight: 32,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 * 1_048_576,
            max_connections: 18_000,
            max_topic_levels: 32,
            max_topic_aliases: 64,
            max_subscriptions_per_session: 1_000,
            connect_timeout_secs: 10,
            max_keepalive_secs: 0,
            max_session_expiry_secs: 7 * 24 * 60 * 60,
            max_retained_messages: 1_000_000,
            outbound_channel_capacity: 1_024,
            idle_park_ms: 1_000,
        }
    }
}

/// Whether clients without credentials are accepted (`allow_anonymous`: `true`, `false` or
/// `"loopback"`). An anonymous client acts as the user its user name names (development:
/// `mosquitto_sub -u alice`), or without one as the user named by its client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnonymousPolicy {
    /// Only while the listener is bound to a loopback address.
    #[default]
    Loopback,
    Always,
    Never,
}

impl AnonymousPolicy {
    /// Whether a listener bound to `listen` accepts anonymous clients.
    pub fn allows(self, listen: SocketAddr) -> bool {
        match self {
            AnonymousPolicy::Loopback => listen.ip().is_loopback(),
            AnonymousPolicy::Always => true,
            AnonymousPolicy::Never => false,
        }
    }
}

impl Serialize for AnonymousPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AnonymousPolicy::Loopback => s.serialize_str("loopback"),
            AnonymousPolicy::Always => s.serialize_bool(true),
            AnonymousPolicy::Never => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for AnonymousPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Flag(bool),
            Word(String),
        }
        match Repr::deserialize(d)? {
            Repr::Flag(true) => Ok(AnonymousPolicy::Always),
            Repr::Flag(false) => Ok(AnonymousPolicy::Never),
            Repr::Word(w) if w == "loopback" => Ok(AnonymousPolicy::Loopback),
            Repr::Word(other) => Err(serde::de::Error::custom(format!(
                "expected true, false or \"loopback\", found {other:?}"
            ))),
        }
    }
}

/// Which user id an anonymous client gets (`anonymous_identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnonymousIdentity {
    /// The user name it sends (development: `-u alice` is alice), or its client id without
    /// one.
    #[default]
    Username,
    /// Always its client id: an anonymous device can never act as a named user.
    ClientId,
}

/// The IM layer (the `[im]` table): users' devices, inbox logs, groups, sync, duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImConfig {
    /// Connections one user may hold at once; connecting one more closes the user's oldest
    /// (v5: DISCONNECT 0x98 with a reason string). Default 8; 0 = no limit.
    pub max_devices_per_user: usize,
    /// Members one group may have. Default 10_000; at least 1.
    pub max_group_members: usize,
    /// Inbox log entries kept per user; older ones are trimmed. Default 10_000; at least 1.
    pub inbox_max_messages: u64,
    /// Age after which chat messages are deleted from the inbox logs (and from offline
    /// queues that still refer to them). Default 30 days; at least 60.
    pub inbox_max_age_secs: u64,
    /// How long a (sender, msgid) pair is remembered to drop resends. Default 600; 0 = off.
    pub dedup_window_secs: u64,
    /// How many (sender, msgid) pairs are remembered at most. Default 100_000.
    pub dedup_window_entries: usize,
    /// Inbox entries replayed per `$sync` request; the end marker says if more remain.
    /// Default 1_000; range 1..=limits.max_queued_messages.
    pub sync_max_messages: usize,
    /// User ids with the operator role (may publish to `broadcast/...`), besides users
    /// created with it. Default none.
    pub operators: Vec<String>,
}

impl Default for ImConfig {
    fn default() -> Self {
        ImConfig {
            max_devices_per_user: 8,
            max_group_members: 10_000,
            inbox_max_messages: 10_000,
            inbox_max_age_secs: 30 * 24 * 60 * 60,
            dedup_window_secs: 600,
            dedup_window_entries: 100_000,
            sync_max_messages: 1_000,
            operators: Vec::new(),
        }
    }
}

/// The admin HTTP/JSON API (the `[admin]` table), used by `tern` subcommands and by
/// application servers to provision users and groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the API. Default true.
    pub enabled: bool,
    /// Address of the API. Default `127.0.0.1:8081` (loopback only).
    pub listen: SocketAddr,
    /// Bearer token every request must carry. Empty (default): a random token is generated
    /// at start and written to `{data_dir}/admin.token` (mode 0600), where the CLI finds it.
    pub token: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)),
            token: String::new(),
        }
    }
}

/// Durability of the storage writer (the `[storage]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// When writes are made durable. Default [`SyncMode::Always`].
    pub sync: SyncMode,
    /// Milliseconds between fsyncs with [`SyncMode::Batched`]; ignored otherwise. Default 5;
    /// range 1..=10_000.
    pub sync_interval_ms: u64,
    /// Bound of the storage writer's request queue; when full, writers wait (backpressure
    /// instead of unbounded memory). Default 4_096; at least 1.
    pub writer_queue: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sync: SyncMode::Always,
            sync_interval_ms: 5,
            writer_queue: 4_096,
        }
    }
}

/// When the storage writer makes writes durable (`storage.sync`: `"always"`, `"batched"`
/// or `"none"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fsync before a write is acknowledged: nothing acknowledged is lost on power failure.
    #[default]
    Always,
    /// One fsync every `storage.sync_interval_ms` for all writes in between: a power
    /// failure can lose up to that much acknowledged data.
    Batched,
    /// Leave flushing to the operating system: a power failure can lose recent writes.
    None,
}

/// The async runtime (the `[runtime]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that run connections and the router; 0 (default) = one per CPU. Fewer
    /// leaves cores to other processes on the machine: on a 2-core machine shared with a
    /// load generator, 1 thread gave the same throughput as 2 and a QoS 1 p99 latency of
    /// 0.25-0.31 ms instead of 0.34-3.7 ms (`benches/README.md`). At most 1_024.
    pub worker_threads: usize,
}

/// Logging (the `[log]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive string: `"info"`, `"tern=debug,warn"`.
    /// Default `"info"`.
    pub level: String,
    /// Format of log lines. Default [`LogFormat::Text`].
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// Format of log lines (`log.format`: `"text"` or `"json"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions, not UTF-8).
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    /// `message` names the key (when there is one) and gives line and column.
    #[error("invalid config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A value has the right type but is out of range or inconsistent with another.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Parses and validates the TOML text of a config file; `path` is used only in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config = Self::parse_toml(text, path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_file(path)?;
        Self::from_toml_str(&text, path)
    }

    /// Defaults, then the `--config` file if given, then the command-line overrides
    /// (`--listen`, `--data-dir`, `--log-level`, `--admin-listen`), then
    /// [`validate`](Self::validate).
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        // Validation waits until the flags are applied: a value the command line overrides
        // must not stop the start.
        let mut config = match &args.config {
            Some(path) => Self::parse_toml(&read_file(path)?, path)?,
            None => Config::default(),
        };
        if let Some(listen) = args.listen {
            config.listeners.tcp.listen = listen;
        }
        if let Some(data_dir) = &args.data_dir {
            config.data_dir = data_dir.clone();
        }
        if let Some(level) = &args.log_level {
            config.log.level = level.clone();
        }
        if let Some(listen) = args.admin_listen {
            config.admin.listen = listen;
        }
        config.validate()?;
        Ok(config)
    }

    /// Range and consistency checks the types cannot express. The error names the first
    /// offending key, dotted (`limits.max_inflight`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".to_string()));
        }

        let l = &self.limits;
        check_range(
            "limits.max_packet_size",
            u64::from(l.max_packet_size),
            u64::from(MIN_PACKET_SIZE_LIMIT),
            u64::from(MAX_PACKET_SIZE_LIMIT),
        )?;
        check_min("limits.max_inflight", u64::from(l.max_inflight), 1)?;
        check_min(
            "limits.max_queued_messages",
            to_u64(l.max_queued_messages),
            1,
        )?;
        if to_u64(l.max_queued_bytes) < u64::from(l.max_packet_size) {
            return Err(invalid(
                "limits.max_queued_bytes",
                format!(
                    "{} is less than limits.max_packet_size ({}): a message of the largest \
                     accepted size could never be queued",
                    l.max_queued_bytes, l.max_packet_size
                ),
            ));
        }
        check_min("limits.max_connections", to_u64(l.max_connections), 1)?;
        check_min("limits.max_topic_levels", to_u64(l.max_topic_levels), 1)?;
        check_min(
            "limits.max_subscriptions_per_session",
            to_u64(l.max_subscriptions_per_session),
            1,
        )?;
        // Bounded above as well: a timeout of hours only keeps idle sockets around, and
        // huge values would overflow `Instant + Duration` arithmetic in the connection task.
        check_range(
            "limits.connect_timeout_secs",
            l.connect_timeout_secs,
            1,
            3_600,
        )?;
        // A mailbox of capacity 0 cannot carry anything.
        check_min(
            "limits.outbound_channel_capacity",
            to_u64(l.outbound_channel_capacity),
            1,
        )?;

        // Bounded for the same `Instant + Duration` arithmetic.
        check_range("limits.idle_park_ms", l.idle_park_ms, 0, 3_600_000)?;

        self.validate_listeners()?;
        check_range(
            "runtime.worker_threads",
            to_u64(self.runtime.worker_threads),
            0,
            1_024,
        )?;

        let s = &self.storage;
        check_range("storage.sync_interval_ms", s.sync_interval_ms, 1, 10_000)?;
        check_min("storage.writer_queue", to_u64(s.writer_queue), 1)?;

        let im = &self.im;
        check_min("im.max_group_members", to_u64(im.max_group_members), 1)?;
        check_min("im.inbox_max_messages", im.inbox_max_messages, 1)?;
        check_min("im.inbox_max_age_secs", im.inbox_max_age_secs, 60)?;
        check_range(
            "im.sync_max_messages",
            to_u64(im.sync_max_messages),
            1,
            to_u64(l.max_queued_messages),
        )?;
        if let Some(bad) = im
            .operators
            .iter()
            .find(|o| !crate::im::topics::valid_id(o))
        {
            return Err(invalid(
                "im.operators",
                format!("{bad:?} is not a usable user id"),
            ));
        }

        validate_log_level(&self.log.level)?;
        Ok(())
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let l = &self.listeners;
        if self.listeners.enabled().is_empty() {
            return Err(invalid(
                "listeners",
                "every listener is off: enable at least one".to_string(),
            ));
        }
        if l.tls.enabled {
            check_file("listeners.tls.cert_file", &l.tls.cert_file)?;
            check_file("listeners.tls.key_file", &l.tls.key_file)?;
        }
        if l.wss.enabled {
            check_file("listeners.wss.cert_file", &l.wss.cert_file)?;
            check_file("listeners.wss.key_file", &l.wss.key_file)?;
        }
        check_path("listeners.ws.path", &l.ws.path)?;
        check_path("listeners.wss.path", &l.wss.path)?;
        let mut seen: Vec<(SocketAddr, ListenerKind)> = Vec::new();
        for spec in l.enabled() {
            if spec.listen.port() != 0 {
                if let Some((_, other)) = seen.iter().find(|(addr, _)| *addr == spec.listen) {
                    return Err(invalid(
                        "listeners",
                        format!(
                            "listeners.{} and listeners.{other} both listen on {}",
                            spec.kind, spec.listen
                        ),
                    ));
                }
            }
            seen.push((spec.listen, spec.kind));
        }
        Ok(())
    }

    /// Parses without validating, so [`from_args`](Self::from_args) can apply overrides
    /// first.
    fn parse_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(text, &err),
        })
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { key, reason }
}

/// `usize` is at most 64 bits on every target Rust supports; saturate rather than unwrap.
/// A queue limit as sessions count it (u32): larger configured values act as u32::MAX,
/// as `Limits` documents for `max_queued_messages` and `max_queued_bytes`.
pub fn limit_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn to_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn check_min(key: &'static str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(invalid(
            key,
            format!("{value} is below the minimum of {min}"),
        ));
    }
    Ok(())
}

fn check_file(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(
            key,
            "must name a PEM file: the listener is enabled".to_string(),
        ));
    }
    Ok(())
}

fn check_path(key: &'static str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        return Err(invalid(
            key,
            format!("{path:?} is not an HTTP path (it starts with `/`, no spaces)"),
        ));
    }
    Ok(())
}

fn check_range(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if !(min..=max).contains(&value) {
        return Err(invalid(
            key,
            format!("{value} is out of range (must be {min} to {max})"),
        ));
    }
    Ok(())
}

/// `log.level` must parse as an `EnvFilter`. On top of that, a bare word that is not a level
/// is refused: `EnvFilter` reads `"debg"` as "the target named debg, at every level", which
/// silently turns off all other logging, and that is almost always a typo.
fn validate_log_level(level: &str) -> Result<(), ConfigError> {
    const KEY: &str = "log.level";
    if level.trim().is_empty() {
        return Err(invalid(KEY, "must not be empty (try \"info\")".to_string()));
    }
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(level) {
        return Err(invalid(
            KEY,
            format!("{level:?} is not a valid filter: {err}"),
        ));
    }
    for directive in level.split(',').map(str::trim) {
        let bare_word = !directive.is_empty() && !directive.contains(['=', '[']);
        if bare_word
            && directive
                .parse::<tracing::level_filters::LevelFilter>()
                .is_err()
        {
            return Err(invalid(
                KEY,
                format!(
                    "`{directive}` is not a level (trace, debug, info, warn, error, off); \
                     to enable a module at every level write `{directive}=trace`"
                ),
            ));
        }
    }
    Ok(())
}

/// One line naming the key, the position and what is wrong, e.g. "`limits.max_pakcet_size`
/// (line 2, column 1): unknown field ...". toml's own `Display` is a multi-line snippet
/// that names only the last key segment; the dotted path is what an operator greps for.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim();
    let Some(span) = err.span() else {
        return message.to_string();
    };
    let (line, column) = line_column(text, span.start);
    match key_path_at(text, span.start) {
        Some(key) => format!("`{key}` (line {line}, column {column}): {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_column(text: &str, pos: usize) -> (usize, usize) {
    let mut end = pos.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The dotted key whose name or value covers byte offset `pos`, if the text is valid TOML
/// (a syntax error has no key to name).
fn key_path_at(text: &str, pos: usize) -> Option<String> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    find_key(root.get_ref(), pos, &mut path).then(|| path.join("."))
}

fn find_key(table: &toml::de::DeTable<'_>, pos: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        // Innermost first: a `[limits]` table spans its keys, and the error is about one.
        let nested = match value.get_ref() {
            toml::de::DeValue::Table(inner) => find_key(inner, pos, path),
            _ => false,
        };
        if nested || key.span().contains(&pos) || value.span().contains(&pos) {
            return true;
        }
        path.pop();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::io::Write;

    const EXAMPLE: &str = include_str!("../tern.example.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("test.toml"))
    }

    fn parse_error(text: &str) -> String {
        match parse(text) {
            Err(err @ ConfigError::Parse { .. }) => err.to_string(),
            other => panic!("expected a parse error for {text:?}, got {other:?}"),
        }
    }

    fn invalid_key(text: &str) -> &'static str {
        match parse(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an Invalid error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.listeners.tcp.listen, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(c.listeners.enabled().len(), 1);
        assert_eq!(c.listeners.tcp.limits.max_connects_per_sec, 1_000);
        assert_eq!(c.metrics.sys_interval_secs, 10);
        assert_eq!(c.data_dir, PathBuf::from("./tern-data"));
        assert_eq!(c.allow_anonymous, AnonymousPolicy::Loopback);
        assert!(c.allow_anonymous.allows(c.listeners.tcp.listen));
        assert!(!c.allow_anonymous.allows("0.0.0.0:1883".parse().unwrap()));
        assert_eq!(c.im.max_devices_per_user, 8);
        assert_eq!(c.admin.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(c.limits.max_packet_size, 1_048_576);
        assert_eq!(c.limits.max_inflight, 32);
        assert_eq!(c.limits.max_queued_messages, 10_000);
        assert_eq!(c.limits.max_queued_bytes, 67_108_864);
        assert_eq!(c.limits.max_connections, 18_000);
        assert_eq!(c.limits.max_topic_levels, 32);
        assert_eq!(c.limits.max_topic_aliases, 64);
        assert_eq!(c.limits.max_subscriptions_per_session, 1_000);
        assert_eq!(c.limits.connect_timeout_secs, 10);
        assert_eq!(c.limits.max_keepalive_secs, 0);
        assert_eq!(c.limits.max_session_expiry_secs, 604_800);
        assert_eq!(c.limits.max_retained_messages, 1_000_000);
        assert_eq!(c.limits.outbound_channel_capacity, 1_024);
        assert_eq!(c.limits.idle_park_ms, 1_000);
        assert_eq!(c.runtime.worker_threads, 0);
        assert_eq!(c.storage.sync, SyncMode::Always);
        assert_eq!(c.storage.sync_interval_ms, 5);
        assert_eq!(c.storage.writer_queue, 4_096);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        c.validate().unwrap();
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn example_file_parses_to_the_defaults() {
        assert_eq!(parse(EXAMPLE).unwrap(), Config::default());
    }

    /// deny_unknown_fields catches a key the example has and the code lost; this catches
    /// the reverse, a new field the example does not document.
    #[test]
    fn example_file_lists_every_key() {
        fn keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
            for (key, value) in table {
                let dotted = format!("{prefix}{key}");
                match value {
                    toml::Value::Table(inner) => keys(inner, &format!("{dotted}."), out),
                    _ => {
                        out.insert(dotted);
                    }
                }
            }
        }
        let mut documented = BTreeSet::new();
        keys(&EXAMPLE.parse().unwrap(), "", &mut documented);
        let mut all = BTreeSet::new();
        keys(
            &toml::Table::try_from(Config::default()).unwrap(),
            "",
            &mut all,
        );
        assert_eq!(documented, all);
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c =
            parse("[listeners.tcp]\nlisten = \"0.0.0.0:1884\"\n[storage]\nsync = \"batched\"\n")
                .unwrap();
        assert_eq!(c.listeners.tcp.listen, "0.0.0.0:1884".parse().unwrap());
        assert_eq!(c.storage.sync, SyncMode::Batched);
        assert_eq!(c.storage.sync_interval_ms, 5);
        assert_eq!(c.limits, Limits::default());
        let c = parse("[log]\nformat = \"json\"\nlevel = \"tern=debug,warn\"\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "tern=debug,warn");
        assert_eq!(
            parse("storage.sync = \"none\"").unwrap().storage.sync,
            SyncMode::None
        );
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let msg = parse_error("data_dir = \"x\"\nlisten_port = 1884\n");
        assert!(msg.contains("`listen_port`"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("test.toml"), "{msg}");
        let msg = parse_error("[limit]\nmax_inflight = 5\n");
        assert!(msg.contains("`limit`"), "{msg}");
    }

    #[test]
    fn unknown_nested_key_is_named_with_its_table() {
        let msg = parse_error("[limits]\nmax_pakcet_size = 1\n");
        assert!(msg.contains("`limits.max_pakcet_size`"), "{msg}");
        assert!(msg.contains("line 2, column 1"), "{msg}");
        let msg = parse_error("log.colour = true\n");
        assert!(msg.contains("`log.colour`"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named() {
        let msg = parse_error("[listeners.tcp]\nlisten = 5\n");
        assert!(msg.contains("`listeners.tcp.listen`"), "{msg}");
        let msg = parse_error("[storage]\nsync = \"sometimes\"\n");
        assert!(msg.contains("`storage.sync`"), "{msg}");
        assert!(msg.contains("sometimes"), "{msg}");
        let msg = parse_error("[limits]\nmax_inflight = 70000\n");
        assert!(msg.contains("`limits.max_inflight`"), "{msg}");
        let msg = parse_error("listeners.ws.listen = \"localhost\"\n");
        assert!(msg.contains("`listeners.ws.listen`"), "{msg}");
        let msg = parse_error("limits = 3\n");
        assert!(msg.contains("`limits`"), "{msg}");
    }

    #[test]
    fn syntax_error_gives_the_position() {
        let msg = parse_error("data_dir = \n");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn out_of_range_values_are_invalid_with_their_key() {
        assert_eq!(
            invalid_key("[limits]\nmax_inflight = 0"),
            "limits.max_inflight"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_packet_size = 10"),
            "limits.max_packet_size"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_packet_size = 268_435_461"),
            "limits.max_packet_size"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_queued_messages = 0"),
            "limits.max_queued_messages"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_queued_bytes = 1000"),
            "limits.max_queued_bytes"
        );
        assert_eq!(
            invalid_key("[limits]\nconnect_timeout_secs = 0"),
            "limits.connect_timeout_secs"
        );
        assert_eq!(
            invalid_key("[limits]\noutbound_channel_capacity = 0"),
            "limits.outbound_channel_capacity"
        );
        assert_eq!(
            invalid_key("[limits]\nidle_park_ms = 3_600_001"),
            "limits.idle_park_ms"
        );
        assert_eq!(
            invalid_key("[runtime]\nworker_threads = 1_025"),
            "runtime.worker_threads"
        );
        let one = parse("[runtime]\nworker_threads = 1").expect("valid");
        assert_eq!(one.runtime.worker_threads, 1);
        assert_eq!(
            invalid_key("[storage]\nsync_interval_ms = 0"),
            "storage.sync_interval_ms"
        );
        assert_eq!(
            invalid_key("[storage]\nsync_interval_ms = 10_001"),
            "storage.sync_interval_ms"
        );
        assert_eq!(
            invalid_key("[storage]\nwriter_queue = 0"),
            "storage.writer_queue"
        );
        assert_eq!(invalid_key("data_dir = \"\""), "data_dir");
        let err = parse("[limits]\nmax_inflight = 0").unwrap_err().to_string();
        assert!(err.contains("`limits.max_inflight`"), "{err}");
    }

    #[test]
    fn edges_of_ranges_are_accepted() {
        parse("[limits]\nmax_packet_size = 64\nmax_inflight = 1\nmax_queued_bytes = 64").unwrap();
        parse("[limits]\nmax_packet_size = 268_435_460\nmax_queued_bytes = 268_435_460").unwrap();
        // Beyond what a session counts (u32): accepted, and acting as u32::MAX.
        parse("[limits]\nmax_queued_bytes = 4_294_967_296\nmax_queued_messages = 5_000_000_000")
            .unwrap();
        parse("[storage]\nsync_interval_ms = 10_000").unwrap();
        parse("[limits]\nmax_topic_aliases = 0\nmax_retained_messages = 0").unwrap();
    }

    #[test]
    fn log_level_is_checked() {
        assert_eq!(invalid_key("[log]\nlevel = \"\""), "log.level");
        assert_eq!(invalid_key("[log]\nlevel = \"debg\""), "log.level");
        assert_eq!(invalid_key("[log]\nlevel = \"tern=loud\""), "log.level");
        for ok in [
            "warn",
            "tern=debug,warn",
            "tern::router=trace",
            "off",
            "DEBUG",
        ] {
            parse(&format!("[log]\nlevel = {ok:?}")).unwrap();
        }
    }

    #[test]
    fn missing_file_is_a_read_error_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        match Config::load(&path) {
            Err(ConfigError::Read { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected a read error, got {other:?}"),
        }
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("absent.toml"), "{err}");
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn load_reads_the_file() {
        let file = config_file("allow_anonymous = false\n");
        assert_eq!(
            Config::load(file.path()).unwrap().allow_anonymous,
            AnonymousPolicy::Never
        );
    }

    #[test]
    fn allow_anonymous_takes_a_flag_or_loopback() {
        assert_eq!(
            parse("allow_anonymous = true").unwrap().allow_anonymous,
            AnonymousPolicy::Always
        );
        assert_eq!(
            parse("allow_anonymous = \"loopback\"")
                .unwrap()
                .allow_anonymous,
            AnonymousPolicy::Loopback
        );
        let err = parse_error("allow_anonymous = \"sometimes\"");
        assert!(
            err.contains("allow_anonymous") && err.contains("loopback"),
            "{err}"
        );
        assert_eq!(invalid_key("[im]\noperators = [\"a/b\"]"), "im.operators");
        assert_eq!(
            invalid_key("[im]\nsync_max_messages = 0"),
            "im.sync_max_messages"
        );
    }

    #[test]
    fn from_args_without_a_file_is_the_defaults() {
        assert_eq!(
            Config::from_args(&ServeArgs::default()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn command_line_beats_the_file() {
        let file = config_file(
            "data_dir = \"/from/file\"\n[listeners.tcp]\nlisten = \"0.0.0.0:1884\"\n\
             [log]\nlevel = \"debug\"\n[limits]\nmax_inflight = 7\n",
        );
        let args = ServeArgs {
            config: Some(file.path().to_path_buf()),
            listen: Some("127.0.0.1:2883".parse().unwrap()),
            data_dir: Some(PathBuf::from("/from/cli")),
            log_level: Some("warn".to_string()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        };
        let c = Config::from_args(&args).unwrap();
        assert_eq!(c.listeners.tcp.listen, "127.0.0.1:2883".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/from/cli"));
        assert_eq!(c.log.level, "warn");
        assert_eq!(c.admin.listen, "127.0.0.1:0".parse().unwrap());
        // Keys without a flag still come from the file.
        assert_eq!(c.limits.max_inflight, 7);

        // Without flags, the file wins over the defaults.
        let args = ServeArgs {
            config: Some(file.path().to_path_buf()),
            ..ServeArgs::default()
        };
        let c = Config::from_args(&args).unwrap();
        assert_eq!(c.listeners.tcp.listen, "0.0.0.0:1884".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn command_line_values_are_validated_and_can_fix_the_file() {
        let args = ServeArgs {
            log_level: Some("lod".to_string()),
            ..ServeArgs::default()
        };
        match Config::from_args(&args) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "log.level"),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
        // Validation runs after the overrides: a bad file value the flag replaces is fine.
        let file = config_file("[log]\nlevel = \"lod\"\n");
        let args = ServeArgs {
            config: Some(file.path().to_path_buf()),
            log_level: Some("info".to_string()),
            ..ServeArgs::default()
        };
        assert_eq!(Config::from_args(&args).unwrap().log.level, "info");
    }

    #[test]
    fn listeners_are_checked() {
        assert_eq!(
            invalid_key("[listeners.tls]\nenabled = true\nkey_file = \"k.pem\""),
            "listeners.tls.cert_file"
        );
        assert_eq!(
            invalid_key("[listeners.wss]\nenabled = true\ncert_file = \"c.pem\""),
            "listeners.wss.key_file"
        );
        assert_eq!(
            invalid_key("[listeners.ws]\npath = \"mqtt\""),
            "listeners.ws.path"
        );
        assert_eq!(invalid_key("[listeners.tcp]\nenabled = false"), "listeners");
        assert_eq!(
            invalid_key("[listeners.ws]\nenabled = true\nlisten = \"127.0.0.1:1883\""),
            "listeners"
        );
        let c = parse(
            "[listeners.ws]\nenabled = true\npath = \"/chat\"\n\
             [listeners.ws.limits]\nmax_connections_per_ip = 4\n",
        )
        .unwrap();
        let specs = c.listeners.enabled();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].kind, ListenerKind::Ws);
        assert_eq!(specs[1].ws_path.as_deref(), Some("/chat"));
        assert_eq!(specs[1].limits.max_connections_per_ip, 4);
        let msg = parse_error("[listeners.tcp]\npath = \"/mqtt\"\n");
        assert!(msg.contains("`listeners.tcp.path`"), "{msg}");
    }

    #[test]
    fn from_args_reports_a_missing_file() {
        let args = ServeArgs {
            config: Some(PathBuf::from("/nonexistent/tern.toml")),
            ..ServeArgs::default()
        };
        match Config::from_args(&args) {
            Err(ConfigError::Read { path, .. }) => {
                assert_eq!(path, PathBuf::from("/nonexistent/tern.toml"))
            }
            other => panic!("expected a read error, got {other:?}"),
        }
    }
}
