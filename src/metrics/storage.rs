//! Storage: how long the writer thread's group writes and WAL syncs take, from its
//! observer hook.

use std::time::Duration;

use prometheus_client::registry::{Registry, Unit};

use super::histogram::{self, LatencyHistogram};
use super::Metrics;

#[derive(Debug)]
pub(super) struct StorageTimes {
    write: LatencyHistogram,
    sync: LatencyHistogram,
}

impl StorageTimes {
    pub(super) fn register(r: &mut Registry) -> StorageTimes {
        let histogram = |r: &mut Registry, name: &str, help: &str| {
            let h = LatencyHistogram::new(histogram::STORAGE_BOUNDS_US);
            r.register_with_unit(name, help, Unit::Seconds, h.clone());
            h
        };
        StorageTimes {
            write: histogram(
                r,
                "storage_write",
                "Storage batch writes (with their fsync when storage.sync = \"always\")",
            ),
            sync: histogram(
                r,
                "storage_sync",
                "Storage WAL syncs done apart from a write (storage.sync = \"batched\")",
            ),
        }
    }
}

impl tern_storage::WriterObserver for Metrics {
    fn write(&self, elapsed: Duration, _ops: usize, _synced: bool) {
        self.storage.write.observe(elapsed);
    }

    fn sync(&self, elapsed: Duration) {
        self.storage.sync.observe(elapsed);
    }
}
