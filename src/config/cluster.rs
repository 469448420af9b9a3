//! The `[cluster]` table: whether tern runs alone (`engine = "none"`, the default: embedded
//! RocksDB, nothing else running) or as one node of several on NATS JetStream
//! (`engine = "nats"`), and how such a node reaches NATS.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::validate::{check_min, check_range, invalid, to_u64};
use super::ConfigError;

/// The distributed engine nodes share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterEngine {
    /// One node; its RocksDB holds everything.
    #[default]
    None,
    /// One node of several, joined through NATS (JetStream enabled).
    Nats,
}

/// The `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Default `"none"`.
    pub engine: ClusterEngine,
    /// This node's name, unique in the cluster; letters, digits, `-` and `_` (it is part
    /// of NATS subjects). Required with `engine = "nats"`.
    pub node_id: String,
    /// NATS servers to connect to (the client learns the others from them). Default
    /// `["nats://127.0.0.1:4222"]`.
    pub nats_urls: Vec<String>,
    /// A NATS `.creds` file (JWT and nkey seed). At most one of `credentials_file`,
    /// `user`/`password` and `token`.
    pub credentials_file: Option<PathBuf>,
    pub user: String,
    pub password: String,
    pub token: String,
    /// Replicas of the cluster's JetStream streams and buckets. Default 3; 1..=5.
    pub replicas: usize,
    /// Streams the per-user inbox logs are spread over. Default 8; 1..=1_024.
    pub shards: u32,
    /// Longest wait between two attempts to reach NATS at start (the wait doubles from
    /// 100 ms up to this). Default 5_000; 100..=600_000.
    pub connect_backoff_max_ms: u64,
    /// Messages the NATS client buffers towards its server before a publishing connection
    /// waits (backpressure instead of unbounded memory). Default 8_192; at least 16.
    pub client_capacity: usize,
    /// How long the cluster counts a node alive after its last lease renewal (it renews
    /// every fifth of this). A node that could not renew for 90% of it (stopped, or cut
    /// off from NATS) closes its connections and serves nothing until it holds a new
    /// lease; other nodes take over its clients' sessions without its answer once the
    /// whole time has passed, so a CONNECT of a client id held by a node that died waits up
    /// to this long (past `limits.connect_timeout_secs` it is refused with 0x88 and the
    /// client's next attempt gets in). It must outlast a NATS leader election (4 to 9 s) or
    /// losing a NATS server fences the nodes. The same on every node. Default 10_000;
    /// 1_000..=60_000.
    pub node_ttl_ms: u64,
    /// How long a chat message's append to an inbox log is retried (a stream leader's
    /// election, NATS servers down) before the message is refused to its publisher
    /// (MQTT 5: PUBACK 0x80; 3.1.1: the connection is closed). Default 10_000;
    /// 100..=600_000. Also how long a QoS > 0 plain message's append to the cluster's
    /// message stream is retried before its publisher's acknowledgement fails the same way.
    pub append_timeout_ms: u64,
    /// After an append to a user's inbox log, how long the next one waits for more of the
    /// user's entries to join it, unless a full append's worth is waiting. A message to a
    /// log with no append just made is appended at once; a busy user's entries go in fewer,
    /// larger appends, which leaves the engine more to spare. 0: no wait. Default 2_000;
    /// 0..=100_000.
    pub append_linger_us: u64,
    /// How long the cluster keeps QoS > 0 plain messages (stream `TERN_MESSAGES`) for the
    /// persistent sessions that resume on another node than the one they were on: a session
    /// offline longer misses the older ones. Default 86_400; 60..=31_536_000.
    pub message_retention_secs: u64,
    /// The most bytes that stream holds (the oldest messages go first). Default
    /// 1_073_741_824 (1 GiB); at least 1_048_576.
    pub message_retention_bytes: u64,
    /// How often the cluster's copies of persistent sessions are swept (by one node at a
    /// time): a copy whose session expired offline is deleted, and one left connected by
    /// a node that died starts its expiry. Default 60; 1..=86_400.
    pub session_sweep_secs: u64,
    /// How often the inbox logs are trimmed to `im.inbox_max_age_secs` (by one node at a
    /// time; each log keeps its numbering). Default 3_600; 1..=86_400.
    pub inbox_trim_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            engine: ClusterEngine::None,
            node_id: String::new(),
            nats_urls: vec!["nats://127.0.0.1:4222".to_string()],
            credentials_file: None,
            user: String::new(),
            password: String::new(),
            token: String::new(),
            replicas: 3,
            shards: 8,
            connect_backoff_max_ms: 5_000,
            client_capacity: 8_192,
            node_ttl_ms: 10_000,
            append_timeout_ms: 10_000,
            append_linger_us: 2_000,
            message_retention_secs: 86_400,
            message_retention_bytes: 1 << 30,
            session_sweep_secs: 60,
            inbox_trim_secs: 3_600,
        }
    }
}

impl ClusterConfig {
    /// Whether this broker is one node of a cluster.
    pub fn enabled(&self) -> bool {
        self.engine == ClusterEngine::Nats
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_range("cluster.replicas", to_u64(self.replicas), 1, 5)?;
        check_range("cluster.shards", u64::from(self.shards), 1, 1_024)?;
        check_range(
            "cluster.connect_backoff_max_ms",
            self.connect_backoff_max_ms,
            100,
            600_000,
        )?;
        check_min("cluster.client_capacity", to_u64(self.client_capacity), 16)?;
        check_range("cluster.node_ttl_ms", self.node_ttl_ms, 1_000, 60_000)?;
        check_range(
            "cluster.append_timeout_ms",
            self.append_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            "cluster.append_linger_us",
            self.append_linger_us,
            0,
            100_000,
        )?;
        check_range(
            "cluster.message_retention_secs",
            self.message_retention_secs,
            60,
            31_536_000,
        )?;
        check_range(
            "cluster.session_sweep_secs",
            self.session_sweep_secs,
            1,
            86_400,
        )?;
        check_range("cluster.inbox_trim_secs", self.inbox_trim_secs, 1, 86_400)?;
        check_range(
            "cluster.message_retention_bytes",
            self.message_retention_bytes,
            1 << 20,
            i64::MAX as u64,
        )?;
        let methods = [
            self.credentials_file.is_some(),
            !self.user.is_empty() || !self.password.is_empty(),
            !self.token.is_empty(),
        ];
        if methods.iter().filter(|on| **on).count() > 1 {
            return Err(invalid(
                "cluster.credentials_file",
                "give at most one of credentials_file, user/password and token".to_string(),
            ));
        }
        if !self.enabled() {
            return Ok(());
        }
        if self.node_id.is_empty() {
            return Err(invalid(
                "cluster.node_id",
                "required with engine = \"nats\": each node needs its own name".to_string(),
            ));
        }
        if self.node_id.len() > 64
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "cluster.node_id",
                format!(
                    "{:?}: use at most 64 letters, digits, '-' and '_' (it is part of NATS subjects)",
                    self.node_id
                ),
            ));
        }
        if self.nats_urls.is_empty() {
            return Err(invalid(
                "cluster.nats_urls",
                "required with engine = \"nats\": list at least one NATS server".to_string(),
            ));
        }
        for url in &self.nats_urls {
            if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                return Err(invalid("cluster.nats_urls", format!("{url:?}: {e}")));
            }
        }
        Ok(())
    }
}
