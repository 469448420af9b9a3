//! Durable direct messages to offline receivers: `pairs` receivers `u{i}` each leave a
//! persistent session subscribed at QoS 1 and go offline, then `pairs` senders `s{i}`
//! each send `messages` QoS 1 messages to their receiver at full speed (`inflight`
//! unacknowledged each). A message is acknowledged once the broker has persisted it for
//! the receiver: the acknowledged rate is the durable ingest of offline DMs.
//!
//! On tern the senders publish to `dm/u{i}` and the receivers subscribe to their inbox
//! (`inbox/u{i}/#`): each message is stored once, appended to two inbox logs (receiver,
//! and the sender's "sent" copy) and queued for the receiver's session. On a plain MQTT
//! broker the same pairs use the topic `dm/u{i}` directly (the equivalent workload: one
//! queued copy per message).

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::durable::{leave_offline, publish_count, PublishReport};
use crate::client::ConnectOptions;
use crate::error::{Error, Result};
use crate::run::Options;
use crate::stats::LatencySummary;

#[derive(Debug, Clone)]
pub struct DmOfflineConfig {
    pub pairs: usize,
    /// Messages each sender sends.
    pub messages: u64,
    /// Receivers subscribe to their tern inbox (`inbox/u{i}/#`) rather than `dm/u{i}`.
    pub chat: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct DmOfflineReport {
    pub acked: u64,
    /// From the first sender's start to the last PUBACK.
    pub secs: f64,
    pub ack_latency: Option<LatencySummary>,
}

impl DmOfflineReport {
    pub fn acked_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.acked as f64 / self.secs
        } else {
            0.0
        }
    }
}

fn receiver_filter(cfg: &DmOfflineConfig, opts: &Options, i: usize) -> String {
    if cfg.chat {
        format!("inbox/{}u{i}/#", opts.run_id)
    } else {
        format!("dm/{}u{i}", opts.run_id)
    }
}

/// Makes the receivers' offline persistent sessions.
pub async fn receivers(opts: &Options, cfg: &DmOfflineConfig) -> Result<()> {
    let sessions = (0..cfg.pairs).map(|i| {
        let user = format!("{}u{i}", opts.run_id);
        let mut conn = ConnectOptions::new(&format!("{user}-phone"));
        conn.username = Some(user);
        (conn, receiver_filter(cfg, opts, i))
    });
    leave_offline(opts, sessions).await
}

/// Every sender sends its messages at once; waits for every PUBACK.
pub async fn send(opts: &Options, cfg: &DmOfflineConfig) -> Result<DmOfflineReport> {
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..cfg.pairs {
        let opts = opts.clone();
        let n = cfg.messages;
        set.spawn(async move {
            let sender = format!("{}s{i}", opts.run_id);
            let topic = format!("dm/{}u{i}", opts.run_id);
            publish_count(
                &opts,
                &sender,
                Some(&sender),
                &topic,
                n,
                Duration::from_secs(60),
            )
            .await
        });
    }
    let mut reports: Vec<PublishReport> = Vec::new();
    while let Some(r) = set.join_next().await {
        reports.push(r.map_err(|e| Error::new(format!("sender task failed: {e}")))??);
    }
    let secs = started.elapsed().as_secs_f64();
    // The senders' latencies are alike: the middle one stands for them.
    reports.sort_by(|a, b| a.acked_per_sec().total_cmp(&b.acked_per_sec()));
    Ok(DmOfflineReport {
        acked: reports.iter().map(|r| r.acked).sum(),
        secs,
        ack_latency: reports.get(reports.len() / 2).and_then(|r| r.ack_latency),
    })
}
