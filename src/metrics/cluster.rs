//! A cluster node's appends to the inbox logs: messages appended, and the entries they
//! carried (the ratio says how well a busy user's entries share appends).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::{add, counter, Metrics};

#[derive(Debug)]
pub(super) struct ClusterCounters {
    inbox_appends: Counter,
    inbox_entries: Counter,
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
        }
    }
}

impl Metrics {
    /// One message of `entries` entries appended to an inbox log.
    pub(crate) fn inbox_appended(&self, entries: u64) {
        self.cluster.inbox_appends.inc();
        add(&self.cluster.inbox_entries, entries);
    }
}
