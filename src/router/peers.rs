//! What the router of a cluster node hands to the other nodes, as plain data: the messages
//! they route too ([`Outcome::forward`](super::Outcome)), and which filters this node's
//! subscriptions hold, so that they send it only what matches (its *interest*). The cluster
//! link (`crate::cluster`) takes both from here and carries them over NATS; the router
//! knows nothing of NATS. The node's lease ([`NodeLease`]) fences the router: while it
//! does not hold, the router routes, delivers and writes nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arcstr::ArcStr;
use rustc_hash::FxHashMap;
use tern_storage::StorageError;
use tokio::sync::{mpsc, oneshot, Notify};

use super::chat::ChatPlan;
use super::subscriptions::InterestChange;
use crate::protocol::Message;

/// The router's side of the link to the other nodes.
pub(crate) struct Peers {
    /// Bounded: a publisher waits (outside the router's lock) when the link falls behind.
    pub(crate) forward: mpsc::Sender<Arc<Message>>,
    pub(crate) interest: Arc<Interest>,
    /// Chat messages, numbered and stored in the cluster's inbox logs rather than here.
    /// Bounded like `forward`.
    pub(crate) inbox: mpsc::Sender<InboxAppend>,
    /// Whether this node may still act for its clients (see [`NodeLease`]).
    pub(crate) lease: Arc<NodeLease>,
}

/// The node's lease on its place in the cluster, as this process sees it: valid until a
/// time on the monotonic clock, which runs on while the process is stopped (SIGSTOP) or
/// starved. The cluster link extends it after each renewal the cluster acknowledged, to
/// less than the cluster's own expiry of it; other nodes take this node's sessions over
/// only once the cluster has expired it. So a node that was paused past its lease knows it
/// the moment it runs again, from its own clock, before it reads its sockets.
///
/// A lapse ends the node's connections: the ones attached before it never act again, even
/// once the node holds a new lease ([`NodeLease::admits`]).
pub(crate) struct NodeLease {
    origin: Instant,
    /// Milliseconds since `origin`; 0 (never held) or a past time: lapsed.
    valid_until_ms: AtomicU64,
    /// The first connection attached under the current lease.
    first_conn: AtomicU64,
}

impl Default for NodeLease {
    fn default() -> Self {
        NodeLease {
            origin: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
            first_conn: AtomicU64::new(0),
        }
    }
}

impl NodeLease {
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the node may act now.
    pub(crate) fn holds(&self) -> bool {
        self.held_at(Instant::now())
    }

    /// Whether the lease held at `at`.
    pub(crate) fn held_at(&self, at: Instant) -> bool {
        self.millis(at) < self.valid_until_ms.load(Ordering::Acquire)
    }

    /// A renewal sent at `sent` was acknowledged: the lease holds for `valid_for` from
    /// then.
    pub(crate) fn extend(&self, sent: Instant, valid_for: Duration) {
        let until = self.millis(sent + valid_for);
        self.valid_until_ms.fetch_max(until, Ordering::AcqRel);
    }

    /// The lease is lost: nothing is done for clients until it is extended again.
    pub(crate) fn lapse(&self) {
        self.valid_until_ms.store(0, Ordering::Release);
    }

    /// Whether connection `conn` may act now: the lease holds, and `conn` was attached
    /// under it.
    pub(crate) fn admits(&self, conn: super::ConnId) -> bool {
        self.holds() && conn >= self.first_conn.load(Ordering::Acquire)
    }

    /// Connections before `conn` (every one attached so far) belong to a lapsed lease.
    pub(super) fn fence_before(&self, conn: super::ConnId) {
        self.first_conn.fetch_max(conn, Ordering::AcqRel);
    }
}

/// A chat message for the cluster's inbox logs: each recipient's log numbers and keeps
/// it, and the nodes holding a recipient's devices deliver it from there.
pub(crate) struct InboxAppend {
    pub(crate) from: ArcStr,
    pub(crate) plan: ChatPlan,
    /// Told once every recipient's append is replicated, or as soon as one has failed.
    pub(crate) done: oneshot::Sender<Result<(), StorageError>>,
}

/// The filters whose interest changed since the link last looked: the latest state of
/// each (a filter added and removed in between is one entry), so its size is bounded by
/// the number of distinct filters, whatever the churn.
#[derive(Default)]
pub(crate) struct Interest {
    changed: Mutex<FxHashMap<Box<str>, bool>>,
    notify: Notify,
}

impl Interest {
    /// Called with the router locked, so changes are recorded in the router's order.
    pub(super) fn record(&self, changes: Vec<InterestChange>) {
        let mut changed = self.changed.lock().unwrap_or_else(PoisonError::into_inner);
        for change in changes {
            changed.insert(change.filter, change.held);
        }
        drop(changed);
        self.notify.notify_one();
    }

    /// Waits for changes and takes them: (filter, whether some subscription holds it).
    pub(crate) async fn next(&self) -> Vec<(Box<str>, bool)> {
        loop {
            let taken =
                std::mem::take(&mut *self.changed.lock().unwrap_or_else(PoisonError::into_inner));
            if !taken.is_empty() {
                return taken.into_iter().collect();
            }
            self.notify.notified().await;
        }
    }
}
