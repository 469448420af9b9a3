//! A latency histogram on atomics, exposed through `prometheus-client`.
//!
//! `prometheus_client::metrics::histogram::Histogram` takes a mutex on every observation.
//! Publish-to-deliver latency is observed by every connection task for every message it
//! writes, so that mutex would be taken across all runtime threads at message rate; here an
//! observation is a binary search over a dozen or so bounds and two relaxed atomic adds, and
//! only the scrape does any real work. The price is that a scrape racing observations can
//! see `_sum` and the buckets from slightly different instants, which Prometheus tolerates;
//! `_count` is computed from the buckets, so the exposition is always self-consistent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Bucket bounds of the publish-to-deliver latency, in microseconds: 50 µs to 10 s.
pub(crate) const DELIVERY_BOUNDS_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Bucket bounds of storage write and sync latency, in microseconds: 10 µs (a write into the
/// memtable) to 10 s (an fsync on a struggling disk).
pub(crate) const STORAGE_BOUNDS_US: &[u64] = &[
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A histogram of durations with fixed bounds; clones share the same counts.
#[derive(Debug, Clone)]
pub(crate) struct LatencyHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds (inclusive, as Prometheus's `le`) in nanoseconds, ascending.
    bounds_ns: Box<[u64]>,
    /// One count per bound, and a last one for everything above the highest bound (`+Inf`).
    counts: Box<[AtomicU64]>,
    /// Sum of every observation, in nanoseconds (584 years of accumulated latency fit).
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// A histogram with these upper bounds, in microseconds, ascending.
    pub(crate) fn new(bounds_us: &[u64]) -> LatencyHistogram {
        debug_assert!(
            bounds_us.windows(2).all(|w| w[0] < w[1]),
            "ascending bounds"
        );
        LatencyHistogram {
            inner: Arc::new(Inner {
                bounds_ns: bounds_us.iter().map(|us| us.saturating_mul(1000)).collect(),
                counts: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_ns: AtomicU64::new(0),
            }),
        }
    }

    pub(crate) fn observe(&self, elapsed: Duration) {
        let mut tally = LatencyTally::default();
        tally.observe(self, elapsed);
        self.add(tally);
    }

    /// Adds what `tally` gathered.
    pub(crate) fn add(&self, tally: LatencyTally) {
        let inner = &*self.inner;
        if let Some(run) = tally.run {
            inner.add_run(run);
        }
        if tally.sum_ns > 0 {
            inner.sum_ns.fetch_add(tally.sum_ns, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    /// Observations so far.
    pub(crate) fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    #[cfg(test)]
    /// Sum of the observations so far.
    pub(crate) fn sum(&self) -> Duration {
        Duration::from_nanos(self.inner.sum_ns.load(Ordering::Relaxed))
    }
}

impl Inner {
    /// The slot of an observation: the first bound >= ns; past the last bound, +Inf.
    fn slot(&self, ns: u64) -> usize {
        self.bounds_ns.partition_point(|&bound| bound < ns)
    }

    fn add_run(&self, (slot, n): (usize, u64)) {
        if let Some(count) = self.counts.get(slot) {
            count.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Observations gathered apart from the histogram, to add to it at once
/// ([`LatencyHistogram::add`]).
///
/// A message fanned out to many connections is observed by each of them, on every runtime
/// thread: with one atomic add per observation on counts all threads share, their cache
/// line moved between cores for every delivery (4% of the broker's CPU in a 1,000-subscriber
/// fan-out). A connection takes every message waiting in one wakeup, and those mostly
/// land in the same bucket, so a tally keeps the current run of one bucket and the sum,
/// and touches the shared counts only when the bucket changes and once at the end.
#[derive(Debug, Default)]
pub(crate) struct LatencyTally {
    /// The slot of the latest observations and how many in a row landed there.
    run: Option<(usize, u64)>,
    sum_ns: u64,
}

impl LatencyTally {
    /// Counts one observation for `histogram` (whose bounds decide the bucket).
    pub(crate) fn observe(&mut self, histogram: &LatencyHistogram, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let inner = &*histogram.inner;
        let slot = inner.slot(ns);
        match &mut self.run {
            Some((current, n)) if *current == slot => *n += 1,
            run => {
                if let Some(done) = run.replace((slot, 1)) {
                    inner.add_run(done);
                }
            }
        }
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        // Per-bucket counts: the encoder accumulates them into Prometheus's cumulative form.
        let buckets: Vec<(f64, u64)> = inner
            .bounds_ns
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::new(&[10, 100]);
        h.observe(Duration::from_micros(10)); // le 10: inclusive
        h.observe(Duration::from_nanos(10_001)); // le 100
        h.observe(Duration::from_micros(100)); // le 100
        h.observe(Duration::from_secs(1)); // +Inf
        h.observe(Duration::MAX); // +Inf, saturating
        let counts: Vec<u64> = h
            .inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [1, 2, 2]);
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn a_tally_adds_the_same_counts_and_sum_as_single_observations() {
        let single = LatencyHistogram::new(&[10, 100]);
        let tallied = LatencyHistogram::new(&[10, 100]);
        let mut tally = LatencyTally::default();
        let observations = [5, 7, 50, 50, 9, 1_000, 1_000, 60].map(Duration::from_micros);
        for elapsed in observations {
            single.observe(elapsed);
            tally.observe(&tallied, elapsed);
        }
        tallied.add(tally);
        let counts = |h: &LatencyHistogram| -> Vec<u64> {
            h.inner
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect()
        };
        assert_eq!(counts(&tallied), [3, 3, 2]);
        assert_eq!(counts(&tallied), counts(&single));
        assert_eq!(tallied.sum(), single.sum());
        assert_eq!(tallied.sum(), Duration::from_micros(2_181));
    }
}
