//! A cluster node's appends to the inbox logs: messages appended, the entries they
//! carried (the ratio says how well a busy user's entries share appends), and how long
//! the engine took to acknowledge each; and the passes of the inbox trim it made.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Registry, Unit};

use super::histogram::{self, LatencyHistogram};
use super::{add, counter, Metrics};

#[derive(Debug)]
pub(super) struct ClusterCounters {
    inbox_appends: Counter,
    inbox_entries: Counter,
    inbox_append_time: LatencyHistogram,
    inbox_trim_passes: Counter,
    inbox_trimmed_logs: Counter,
}

impl ClusterCounters {
    pub(super) fn register(r: &mut Registry) -> ClusterCounters {
        ClusterCounters {
            inbox_appends: counter(
                r,
                "cluster_inbox_appends",
                "Messages this node appended to the cluster's inbox logs",
                None,
            ),
            inbox_entries: counter(
                r,
                "cluster_inbox_entries",
                "Inbox entries those messages carried",
                None,
            ),
            inbox_append_time: {
                let h = LatencyHistogram::new(histogram::DELIVERY_BOUNDS_US);
                r.register_with_unit(
                    "cluster_inbox_append",
                    "From an inbox append's publish to the engine's acknowledgement (replicated)",
                    Unit::Seconds,
                    h.clone(),
                );
                h
            },
            inbox_trim_passes: counter(
                r,
                "cluster_inbox_trim_passes",
                "Passes of the inbox trim (im.inbox_max_age_secs) this node finished",
                None,
            ),
            inbox_trimmed_logs: counter(
                r,
                "cluster_inbox_trimmed_logs",
                "Inbox logs those passes trimmed",
                None,
            ),
        }
    }
}

impl Metrics {
    /// One message of `entries` entries appended to an inbox log, acknowledged `took`
    /// after its publish.
    pub(crate) fn inbox_appended(&self, entries: u64, took: Duration) {
        self.cluster.inbox_appends.inc();
        add(&self.cluster.inbox_entries, entries);
        self.cluster.inbox_append_time.observe(took);
    }

    /// A pass of the inbox trim finished, having trimmed `logs` logs.
    pub(crate) fn inbox_trim_pass(&self, logs: u64) {
        self.cluster.inbox_trim_passes.inc();
        add(&self.cluster.inbox_trimmed_logs, logs);
    }
}
