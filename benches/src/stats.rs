//! Measurement: payload timestamps, latency histograms and the [`Report`] every scenario
//! returns, printed as one line or as a JSON object.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;

/// The process-wide origin of payload timestamps (publishers and subscribers share a clock).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process epoch.
pub fn now_nanos() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// `t` in nanoseconds since the process epoch (0 for instants before it).
pub fn nanos_at(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// A payload of `len` bytes (at least 8) whose first 8 bytes are the send time.
pub fn stamped_payload(len: usize, filler: &Bytes) -> Bytes {
    stamped_payload_at(len, filler, now_nanos())
}

/// A payload of `len` bytes (at least 8) whose first 8 bytes are `stamp` (nanoseconds since
/// the process epoch: a paced sender stamps the time a message was due, so that time spent
/// waiting to send it counts in its latency).
pub fn stamped_payload_at(len: usize, filler: &Bytes, stamp: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(len.max(8));
    b.put_u64_le(stamp);
    b.extend_from_slice(&filler[..len.saturating_sub(8)]);
    b.freeze()
}

/// The timestamp of a stamped payload (nanoseconds since the process epoch).
pub fn payload_stamp(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// The latency of a stamped payload received now, if it carries a timestamp.
pub fn payload_latency(payload: &[u8]) -> Option<Duration> {
    payload_latency_at(payload, Instant::now())
}

/// The latency of a stamped payload received at `at`, if it carries a timestamp.
pub fn payload_latency_at(payload: &[u8], at: Instant) -> Option<Duration> {
    let stamp = payload_stamp(payload)?;
    Some(Duration::from_nanos(nanos_at(at).saturating_sub(stamp)))
}

/// A latency histogram in microseconds (1 µs to 100 s, 3 significant digits).
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds"))
    }
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Percentiles, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.0.is_empty() {
            return None;
        }
        Some(LatencySummary {
            p50_us: self.0.value_at_quantile(0.50),
            p99_us: self.0.value_at_quantile(0.99),
            p999_us: self.0.value_at_quantile(0.999),
            max_us: self.0.max(),
            samples: self.0.len(),
        })
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub samples: u64,
}

impl LatencySummary {
    /// `p50=..us p99=..us p99.9=..us max=..us n=..`.
    pub fn text(&self) -> String {
        format!(
            "p50={}us p99={}us p99.9={}us max={}us n={}",
            self.p50_us, self.p99_us, self.p999_us, self.max_us, self.samples
        )
    }

    /// `{"p50":..,"p99":..,"p999":..,"max":..,"samples":..}`, or `null` for `None`.
    pub fn json(summary: Option<&LatencySummary>) -> String {
        match summary {
            Some(l) => format!(
                "{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{},\"samples\":{}}}",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
            ),
            None => "null".to_string(),
        }
    }
}

/// What a scenario measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Scenario name (`fan-in`, `pairs`, `fan-out`, `latency`).
    pub scenario: &'static str,
    pub qos: u8,
    /// Publisher and subscriber connections.
    pub publishers: usize,
    pub subscribers: usize,
    /// Length of the measurement window.
    pub measured_secs: f64,
    /// PUBLISH packets sent over the whole run (warm-up and measurement).
    pub sent: u64,
    /// PUBACKs received by publishers over the whole run (QoS 1; 0 for QoS 0).
    pub acked: u64,
    /// Messages received by all subscribers over the whole run (deliveries: a message
    /// received by N subscribers counts N times).
    pub received: u64,
    /// Deliveries expected over the whole run (`sent` times the subscribers per topic).
    pub expected: u64,
    /// Messages sent and received inside the measurement window.
    pub sent_in_window: u64,
    pub received_in_window: u64,
    /// Latency of the messages received in the window, when measured.
    pub latency: Option<LatencySummary>,
    /// Subscribers whose connection the broker closed during the run (only counted when
    /// the run tolerates it, `Options::tolerate_disconnects`; otherwise it is an error).
    pub lost_subscribers: usize,
}

impl Report {
    /// Messages (deliveries) received per second in the measurement window.
    pub fn delivered_per_sec(&self) -> f64 {
        rate(self.received_in_window, self.measured_secs)
    }

    /// Messages sent per second in the measurement window.
    pub fn sent_per_sec(&self) -> f64 {
        rate(self.sent_in_window, self.measured_secs)
    }

    /// Share of expected deliveries that never arrived, in percent.
    pub fn dropped_pct(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        self.expected.saturating_sub(self.received) as f64 * 100.0 / self.expected as f64
    }

    /// The one-line human summary.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} qos{} pubs={} subs={}: {:.0} msgs/s delivered, {:.0} msgs/s sent, sent={} received={} dropped={:.2}%",
            self.scenario,
            self.qos,
            self.publishers,
            self.subscribers,
            self.delivered_per_sec(),
            self.sent_per_sec(),
            self.sent,
            self.received,
            self.dropped_pct(),
        );
        if self.qos > 0 {
            let _ = write!(s, " acked={}", self.acked);
        }
        if let Some(l) = &self.latency {
            let _ = write!(
                s,
                ", latency p50={}us p99={}us p99.9={}us max={}us",
                l.p50_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        if self.lost_subscribers > 0 {
            let _ = write!(
                s,
                ", {} subscribers disconnected by the broker",
                self.lost_subscribers
            );
        }
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> String {
        let mut s = format!(
            "{{\"scenario\":\"{}\",\"qos\":{},\"publishers\":{},\"subscribers\":{},\"measured_secs\":{:.3},\"sent\":{},\"acked\":{},\"received\":{},\"expected\":{},\"sent_in_window\":{},\"received_in_window\":{},\"delivered_per_sec\":{:.1},\"sent_per_sec\":{:.1},\"dropped_pct\":{:.4}",
            self.scenario,
            self.qos,
            self.publishers,
            self.subscribers,
            self.measured_secs,
            self.sent,
            self.acked,
            self.received,
            self.expected,
            self.sent_in_window,
            self.received_in_window,
            self.delivered_per_sec(),
            self.sent_per_sec(),
            self.dropped_pct(),
        );
        match &self.latency {
            Some(l) => {
                let _ = write!(
                    s,
                    ",\"latency_us\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{},\"samples\":{}}}",
                    l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
                );
            }
            None => s.push_str(",\"latency_us\":null"),
        }
        let _ = write!(s, ",\"lost_subscribers\":{}", self.lost_subscribers);
        s.push('}');
        s
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}
