//! Retained: load a broker with R retained topics, then time subscriptions whose filter
//! matches a few of them and a 10,000-topic subtree (`prefix/sub/#`).
//!
//! Topics, under `tern-bench/<run id>/ret/`:
//!
//! - `sub/{i}` for i < `subtree` (10,000): the subtree, matched by `sub/#`;
//! - `bulk/{a}/{b}` for b < `matching` (10) and as many `a` as it takes to reach R topics in
//!   all: the rest of the store; `bulk/{a}/+` matches `matching` of them.
//!
//! The load goes over one connection: QoS 0 retained PUBLISHes written back to back, then
//! one QoS 1 retained PUBLISH (overwriting the last topic) whose PUBACK says the broker has
//! read everything before it. When the broker's process is known, the subscriptions then
//! wait until it has gone quiet (see [`settle`]; how long that took is reported). Each timed
//! subscription uses a fresh connection (the connect is not timed): from writing the
//! SUBSCRIBE (QoS 0) to having both the SUBACK and every expected retained message. It is
//! repeated `samples` times, and the median is reported.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{ByteString, Packet, QoS};

use crate::client::{Client, ConnectOptions};
use crate::error::{Error, Result};
use crate::run::Options;
use crate::stats::stamped_payload;

#[derive(Debug, Clone)]
pub struct RetainedConfig {
    /// Retained topics to store in all (at least `subtree` + `matching`).
    pub topics: usize,
    pub subtree: usize,
    pub matching: usize,
    /// Timed subscriptions per filter.
    pub samples: usize,
    /// The longest a load may take.
    pub load_timeout: Duration,
    /// The longest one timed subscription may take; also, once the SUBACK is in, the
    /// longest to wait for the next retained message before giving up (incomplete).
    pub subscribe_timeout: Duration,
    /// The broker's process, when known: the timed subscriptions then wait until it has
    /// gone quiet after the load (see [`settle`]).
    pub broker_pid: Option<u32>,
    /// The longest to wait for that.
    pub settle_timeout: Duration,
}

impl RetainedConfig {
    pub fn new(topics: usize) -> RetainedConfig {
        RetainedConfig {
            topics,
            subtree: 10_000,
            matching: 10,
            samples: 5,
            load_timeout: Duration::from_secs(900),
            subscribe_timeout: Duration::from_secs(30),
            broker_pid: None,
            settle_timeout: Duration::from_secs(60),
        }
    }
}

/// Timed subscriptions to one filter.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeTiming {
    pub filter: String,
    /// Retained messages the filter matches.
    pub expected: usize,
    /// The fewest retained messages one subscription got (`expected` when complete).
    pub min_received: usize,
    /// Milliseconds from SUBSCRIBE to SUBACK and to the last expected message, per sample.
    pub suback_ms: Vec<f64>,
    pub all_ms: Vec<f64>,
}

impl SubscribeTiming {
    pub fn complete(&self) -> bool {
        self.min_received >= self.expected
    }

    pub fn median_all_ms(&self) -> Option<f64> {
        median(&self.all_ms)
    }

    pub fn median_suback_ms(&self) -> Option<f64> {
        median(&self.suback_ms)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetainedReport {
    /// Topics stored.
    pub topics: usize,
    /// From the first PUBLISH to the PUBACK of the last.
    pub load_secs: f64,
    /// From that PUBACK until the broker went quiet (None: its process is not known).
    pub settle_secs: Option<f64>,
    pub few: SubscribeTiming,
    pub subtree: SubscribeTiming,
}

impl RetainedReport {
    pub fn load_per_sec(&self) -> f64 {
        if self.load_secs > 0.0 {
            self.topics as f64 / self.load_secs
        } else {
            0.0
        }
    }

    pub fn line(&self) -> String {
        let t = |s: &SubscribeTiming| {
            format!(
                "{} matches: SUBACK {} ms, all {} ms ({}received {}/{})",
                s.expected,
                fmt_ms(s.median_suback_ms()),
                fmt_ms(s.median_all_ms()),
                if s.complete() { "" } else { "INCOMPLETE: " },
                s.min_received,
                s.expected
            )
        };
        let settled = self
            .settle_secs
            .map_or(String::new(), |s| format!(", quiet {s:.2}s later"));
        format!(
            "retained R={}: loaded in {:.1}s ({:.0}/s{settled}); {}; {}",
            self.topics,
            self.load_secs,
            self.load_per_sec(),
            t(&self.few),
            t(&self.subtree)
        )
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.2}"))
}

/// Median of a list (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Runs the scenario (see the module documentation).
pub async fn retained(opts: &Options, cfg: &RetainedConfig) -> Result<RetainedReport> {
    let matching = cfg.matching.max(1);
    let groups = cfg
        .topics
        .saturating_sub(cfg.subtree)
        .div_ceil(matching)
        .max(1);
    let prefix = opts.topic("ret");
    let topics = cfg.subtree + groups * matching;

    // Load: bulk topics and the subtree interleaved, so neither sits in one block.
    let loader = Client::connect(
        opts.addr,
        opts.protocol,
        &format!("{}-ret-load", opts.run_id),
    )
    .await?;
    let Client {
        mut reader,
        mut writer,
    } = loader;
    let filler = Bytes::from(vec![b'r'; opts.payload.max(8)]);
    let started = Instant::now();
    let bulk_total = groups * matching;
    let mut last_topic = String::new();
    let load = async {
        let (mut b, mut s) = (0usize, 0usize);
        while b < bulk_total || s < cfg.subtree {
            // One subtree topic for every (bulk / subtree) bulk topics.
            let take_sub =
                s < cfg.subtree && (b >= bulk_total || s * bulk_total <= b * cfg.subtree);
            let topic = if take_sub {
                s += 1;
                format!("{prefix}/sub/{}", s - 1)
            } else {
                b += 1;
                format!(
                    "{prefix}/bulk/{}/{}",
                    (b - 1) / matching,
                    (b - 1) % matching
                )
            };
            writer.queue_publish_retain(
                &ByteString::from(topic.clone()),
                QoS::AtMostOnce,
                true,
                0,
                stamped_payload(filler.len(), &filler),
            )?;
            last_topic = topic;
            if writer.pending() >= 64 * 1024 {
                writer.flush().await?;
            }
        }
        writer.queue_publish_retain(
            &ByteString::from(last_topic.clone()),
            QoS::AtLeastOnce,
            true,
            1,
            stamped_payload(filler.len(), &filler),
        )?;
        writer.flush().await?;
        loop {
            match reader.next().await? {
                Packet::PubAck(_) => return Ok::<_, Error>(()),
                _ => continue,
            }
        }
    };
    match tokio::time::timeout(cfg.load_timeout, load).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::new(format!(
                "loading {topics} retained topics took more than {:?}",
                cfg.load_timeout
            )))
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    writer.disconnect().await;

    let few_filter = format!("{prefix}/bulk/{}/+", groups / 2);
    let subtree_filter = format!("{prefix}/sub/#");
    let settle_secs = match cfg.broker_pid {
        Some(pid) => Some(settle(pid, cfg.settle_timeout).await?),
        None => None,
    };
    let few = timed_subscriptions(opts, cfg, &few_filter, matching).await?;
    let subtree = timed_subscriptions(opts, cfg, &subtree_filter, cfg.subtree).await?;
    Ok(RetainedReport {
        topics,
        load_secs,
        settle_secs,
        few,
        subtree,
    })
}

/// Sampling window of [`settle`].
const SETTLE_WINDOW: Duration = Duration::from_millis(250);
/// CPU time in one window under which the broker counts as quiet (8% of a core: an idle
/// broker's timers, not work).
const SETTLE_QUIET_CPU: f64 = 0.02;

/// Waits until the broker has gone quiet after the load: a window of [`SETTLE_WINDOW`] in
/// which it used less than [`SETTLE_QUIET_CPU`] seconds of CPU. The PUBACK that ends the
/// load says the broker has read every message, not that it is done with them: a broker
/// that persists retained messages may still be writing the tail of a million, and
/// subscriptions timed meanwhile would measure that, not their own cost. Returns the
/// seconds it took (the timed subscriptions follow; this is reported on its own row).
async fn settle(pid: u32, timeout: Duration) -> Result<f64> {
    let started = Instant::now();
    let cpu = || {
        crate::scenarios::connections::cpu_secs(pid)
            .ok_or_else(|| Error::new(format!("cannot read the CPU time of process {pid}")))
    };
    let mut before = cpu()?;
    loop {
        tokio::time::sleep(SETTLE_WINDOW).await;
        let now = cpu()?;
        if now - before < SETTLE_QUIET_CPU {
            // The quiet window itself is not part of the time it took.
            return Ok(started
                .elapsed()
                .saturating_sub(SETTLE_WINDOW)
                .as_secs_f64());
        }
        if started.elapsed() >= timeout {
            return Err(Error::new(format!(
                "the broker was still busy {timeout:?} after the load"
            )));
        }
        before = now;
    }
}

async fn timed_subscriptions(
    opts: &Options,
    cfg: &RetainedConfig,
    filter: &str,
    expected: usize,
) -> Result<SubscribeTiming> {
    let mut timing = SubscribeTiming {
        filter: filter.to_string(),
        expected,
        min_received: usize::MAX,
        suback_ms: Vec::new(),
        all_ms: Vec::new(),
    };
    for i in 0..cfg.samples.max(1) {
        let id = format!("{}-ret-sub-{i}", opts.run_id);
        let client =
            Client::connect_with(opts.addr, opts.protocol, &ConnectOptions::new(&id)).await?;
        let (suback, all, received) = one_subscription(client, cfg, filter, expected).await?;
        timing.min_received = timing.min_received.min(received);
        if let Some(s) = suback {
            timing.suback_ms.push(s.as_secs_f64() * 1000.0);
        }
        if let Some(a) = all {
            timing.all_ms.push(a.as_secs_f64() * 1000.0);
        }
    }
    Ok(timing)
}

/// One subscription: (time to SUBACK, time to SUBACK and every expected message, retained
/// messages received). The second is `None` when some never came.
async fn one_subscription(
    client: Client,
    cfg: &RetainedConfig,
    filter: &str,
    expected: usize,
) -> Result<(Option<Duration>, Option<Duration>, usize)> {
    let Client {
        mut reader,
        mut writer,
    } = client;
    let started = Instant::now();
    let hard_end = started + cfg.subscribe_timeout;
    writer.queue_subscribe(1, filter, QoS::AtMostOnce)?;
    writer.flush().await?;
    let mut suback = None;
    let mut received = 0usize;
    let mut last = started;
    loop {
        if suback.is_some() && received >= expected {
            break;
        }
        let now = Instant::now();
        let mut wait = hard_end.saturating_duration_since(now);
        if suback.is_some() {
            // Retained messages come right after the SUBACK (or before it): a long
            // silence after it means the broker sends no more.
            wait = wait.min((last + Duration::from_secs(5)).saturating_duration_since(now));
        }
        if wait.is_zero() {
            break;
        }
        match tokio::time::timeout(wait, reader.next()).await {
            Err(_) => break,
            Ok(p) => match p? {
                Packet::SubAck(ack) => {
                    if ack.reasons.iter().any(|r| r.is_error()) {
                        return Err(Error::new(format!(
                            "subscription to {filter} refused: {:?}",
                            ack.reasons
                        )));
                    }
                    suback = Some(started.elapsed());
                    last = Instant::now();
                }
                Packet::Publish(p) if p.retain => {
                    received += 1;
                    last = Instant::now();
                }
                _ => {}
            },
        }
    }
    let all = (suback.is_some() && received >= expected).then(|| last.duration_since(started));
    writer.disconnect().await;
    Ok((suback, all, received))
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }
}
