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
//! optional: a key left out keeps its default. [`Config::with_overrides`] applies all three
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

mod cluster;
mod overrides;
mod tokens;
mod toml_errors;
mod validate;
mod webhook;

pub use cluster::{ClusterConfig, ClusterEngine};
pub use overrides::Overrides;
pub use tokens::TokensConfig;
pub use validate::limit_u32;
pub use webhook::WebhookConfig;

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

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
    /// Token login (the `[tokens]` table): JWTs from the app's account service as the
    /// MQTT password. Off by default.
    pub tokens: TokensConfig,
    /// A Mosquitto-format ACL file governing plain topics (not the chat namespace, whose
    /// own rules an ACL cannot loosen). Reloaded on SIGHUP and through the admin API.
    pub acl_file: Option<PathBuf>,
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
    /// Several nodes on NATS JetStream (the `[cluster]` table); off by default.
    pub cluster: ClusterConfig,
    /// The offline-push webhook (the `[webhook]` table); off by default.
    pub webhook: WebhookConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: Listeners::default(),
            data_dir: PathBuf::from("./tern-data"),
            allow_anonymous: AnonymousPolicy::Loopback,
            anonymous_identity: AnonymousIdentity::Username,
            tokens: TokensConfig::default(),
            acl_file: None,
            limits: Limits::default(),
            im: ImConfig::default(),
            admin: AdminConfig::default(),
            storage: StorageConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            runtime: RuntimeConfig::default(),
            cluster: ClusterConfig::default(),
            webhook: WebhookConfig::default(),
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
    /// Password checks (argon2id: tens of ms of CPU and 19 MiB of memory each) running at
    /// once; further password logins wait their turn (within `connect_timeout_secs`).
    /// Token logins do not count. Default 0: the number of CPUs.
    pub max_password_checks: usize,
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
    /// `router::mailbox`); the router never waits on a connection. When full, a persistent
    /// session's QoS>0 messages wait in its durable queue, the rest for that connection
    /// are dropped and counted. The connection takes a whole mailbox at a time, so up to
    /// twice this many can be in memory for one connection. Default 1_024; at least 1 (a
    /// mailbox of 0 cannot carry anything).
    pub outbound_channel_capacity: usize,
    /// Milliseconds of quiet after which a connection that was woken leaves its task and
    /// waits in the parking lot (`net::parking`; checked every this many milliseconds, so it
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
            max_password_checks: 0,
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
    /// queues that still refer to them). Default 30 days; at least 60. In a cluster, an
    /// entry stays at least `dedup_window_secs` (its id is how a resend is recognised).
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
    /// Publish users' presence on `presence/{user}` (a durable retained write when a
    /// user's first device comes and after its last one left). Default true; never on
    /// cluster nodes.
    pub presence: bool,
    /// How long after sending a sender may still recall a message (`$recall`). Default
    /// 120; 0 = recall off.
    pub recall_window_secs: u64,
    /// How long a user's last device must stay away before the user's presence turns
    /// offline, so that a flapping phone does not storm its contacts. Default 5_000;
    /// at most 600_000.
    pub presence_offline_delay_ms: u64,
    /// Who may subscribe to `presence/{user}`. Default `contacts`.
    pub presence_visible_to: PresenceVisibility,
    /// DM contact pairs remembered in memory so that a DM between known contacts writes
    /// nothing more (`presence_visible_to = "contacts"`); beyond it the memory is
    /// forgotten and pairs are written again. Default 100_000.
    pub contacts_cached: usize,
}

/// Who may subscribe to a user's presence (`im.presence_visible_to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceVisibility {
    /// The user, users sharing a group with it, and users it exchanged a DM with.
    Contacts,
    /// Every user (wildcards under `presence/` allowed).
    Everyone,
    /// The user alone.
    Nobody,
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
            presence: true,
            recall_window_secs: 120,
            presence_offline_delay_ms: 5_000,
            presence_visible_to: PresenceVisibility::Contacts,
            contacts_cached: 100_000,
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
    /// Tokens of app servers that may only push messages (`POST /v1/messages`).
    pub push_tokens: Vec<String>,
    /// Requests a second each push token may make (bursts of a second's worth); beyond,
    /// `429`. Default 1_000; at least 1.
    pub push_rate_per_sec: u32,
    /// Users one push request may address (`to.users`). Default 10_000; 1..=1_000_000.
    pub push_max_recipients: usize,
    /// Idempotency keys whose answers are remembered (for a day at most). Default 100_000;
    /// 0 keeps none (chat messages are still deduplicated by their msgid).
    pub push_idempotency_keys: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)),
            token: String::new(),
            push_tokens: Vec::new(),
            push_rate_per_sec: 1_000,
            push_max_recipients: 10_000,
            push_idempotency_keys: 100_000,
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
    /// One fsync every `storage.sync_interval_ms` covers all writes in between, and a
    /// write is acknowledged only once the fsync that covers it is done: nothing
    /// acknowledged is lost on power failure either; acknowledgements wait up to that
    /// long, and under load far fewer fsyncs are made.
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

    /// Parses without validating, so [`Config::with_overrides`] can apply overrides first.
    fn parse_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: toml_errors::describe(text, &err),
        })
    }
}

pub(super) fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
