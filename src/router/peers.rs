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
use tern_storage::{StorageError, StoredSession};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::chat::ChatPlan;
use super::subscriptions::InterestChange;
use crate::im::inbox::entry_seq;
use crate::protocol::session::Mark;
use crate::protocol::Message;

/// The router's side of the link to the other nodes.
pub(crate) struct Peers {
    /// Bounded: a publisher waits (outside the router's lock) when the link falls behind.
    pub(crate) forward: mpsc::Sender<Forward>,
    pub(crate) interest: Arc<Interest>,
    /// Chat messages, numbered and stored in the cluster's inbox logs rather than here.
    /// Bounded like `forward`.
    pub(crate) inbox: mpsc::Sender<InboxAppend>,
    /// Whether this node may still act for its clients (see [`NodeLease`]).
    pub(crate) lease: Arc<NodeLease>,
    /// Changes to the persistent sessions attached here, kept in the cluster so that
    /// another node can resume them.
    pub(crate) sessions: SessionChanges,
}

/// The way to the cluster's writer of sessions' copies, for connections and the router
/// alike: bounded, and never waited on (see [`SessionChanges::send`]).
#[derive(Clone)]
pub(crate) struct SessionChanges(mpsc::Sender<SessionChange>);

impl SessionChanges {
    pub(crate) fn new(sender: mpsc::Sender<SessionChange>) -> SessionChanges {
        SessionChanges(sender)
    }

    /// Hands `change` over without waiting: a change that does not fit is dropped and
    /// logged (the cluster's copy of the session falls behind; a cursor behind means
    /// messages sent again, never lost).
    pub(crate) fn send(&self, change: SessionChange) {
        if let Err(e) = self.0.try_send(change) {
            tracing::warn!("cluster: a session change was dropped ({e})");
        }
    }
}

/// A change to a session the cluster keeps (its stored form and its device's inbox
/// cursor), for the node that resumes it next, whichever it is. Connections send the
/// first, third and last kinds; the router the stored form as it writes it.
#[derive(Debug)]
pub(crate) enum SessionChange {
    /// A connection attached to `client_id`'s session under the registry claim
    /// `revision`; the session began under the claim `born` (`fresh`: just now, so what
    /// the cluster held of the client id is void). `cursors`: where its device stands,
    /// as far as known.
    Attached {
        client_id: ArcStr,
        revision: u64,
        born: u64,
        fresh: bool,
        cursors: Cursors,
    },
    /// The session's stored form changed: subscriptions, expiry. `written`, when the change
    /// is acknowledged to its client (a SUBACK): told once the cluster's copy has it, or
    /// at once if this node does not write that session's copy.
    Stored {
        session: StoredSession,
        written: Option<oneshot::Sender<Result<(), StorageError>>>,
    },
    /// The session ended.
    Deleted(String),
    /// The device has everything of a log up to a position.
    Reached { client_id: ArcStr, mark: Mark },
    /// The connection ended: what is pending for it is written, then forgotten.
    Detached(ArcStr),
}

/// Where a device stands in the logs the cluster keeps for it: the first position of each
/// it has not got (`None`: not known). A session marks its deliveries with the log they
/// come from ([`Mark::log`]: [`Cursors::INBOX`] or [`Cursors::MESSAGES`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cursors {
    /// In its user's inbox log (seqs).
    pub(crate) inbox: Option<u64>,
    /// In the cluster's stream of QoS > 0 messages (stream sequences).
    pub(crate) messages: Option<u64>,
}

impl Cursors {
    pub(crate) const INBOX: u8 = 0;
    pub(crate) const MESSAGES: u8 = 1;

    /// Where a delivery stands in the logs the cursors follow (the sessions' marks, see
    /// `protocol::session::SessionLimits::marks`): the message stream, for a kept message
    /// from another node; the user's inbox, for an inbox entry.
    pub(crate) fn mark(message: &Message) -> Option<Mark> {
        if let Some(position) = message.cluster_seq {
            return Some(Mark {
                log: Cursors::MESSAGES,
                position,
            });
        }
        entry_seq(message).map(|position| Mark {
            log: Cursors::INBOX,
            position,
        })
    }

    /// Whether `mark` is before its log's cursor.
    pub(crate) fn passed(&self, mark: Mark) -> bool {
        let cursor = match mark.log {
            Cursors::INBOX => self.inbox,
            Cursors::MESSAGES => self.messages,
            _ => None,
        };
        cursor.is_some_and(|cursor| mark.position < cursor)
    }

    /// The device has everything up to `mark`: its log's cursor moves past it, never
    /// back. Returns whether it moved.
    pub(crate) fn reach(&mut self, mark: Mark) -> bool {
        let cursor = match mark.log {
            Cursors::INBOX => &mut self.inbox,
            Cursors::MESSAGES => &mut self.messages,
            _ => return false,
        };
        let next = mark.position.saturating_add(1);
        if cursor.is_some_and(|cursor| cursor >= next) {
            return false;
        }
        *cursor = Some(next);
        true
    }
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

/// A message for the other nodes. One that is `kept` (QoS > 0) is appended to the
/// cluster's message stream first, and `kept` told once that is replicated: its
/// publisher's acknowledgement waits for it.
pub(crate) struct Forward {
    pub(crate) message: Arc<Message>,
    pub(crate) kept: Option<Kept>,
}

/// How a kept message is appended to the cluster's message stream.
pub(crate) struct Kept {
    /// Its number among this node's appends (see `core::Forwarded::append`), under way
    /// until dropped: kept with the append until it is over.
    pub(crate) append: super::append_progress::AppendGuard,
    /// Told once the stream keeps it (replicated), or why it could not.
    pub(crate) done: oneshot::Sender<Result<(), StorageError>>,
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
///
/// Each record is a generation; the link reports the generations it has subscribed in
/// NATS, so that a caller can wait until the interest it caused is in effect
/// ([`Interest::settled`]).
pub(crate) struct Interest {
    changed: Mutex<(FxHashMap<Box<str>, bool>, u64)>,
    notify: Notify,
    applied: watch::Sender<u64>,
}

impl Default for Interest {
    fn default() -> Self {
        Interest {
            changed: Mutex::default(),
            notify: Notify::new(),
            applied: watch::Sender::new(0),
        }
    }
}

impl Interest {
    /// Called with the router locked, so changes are recorded in the router's order.
    pub(super) fn record(&self, changes: Vec<InterestChange>) {
        let mut changed = self.changed.lock().unwrap_or_else(PoisonError::into_inner);
        for change in changes {
            changed.0.insert(change.filter, change.held);
        }
        changed.1 += 1;
        drop(changed);
        self.notify.notify_one();
    }

    /// Waits for changes and takes them: (filter, whether some subscription holds it),
    /// and the generation they bring the interest to.
    pub(crate) async fn next(&self) -> (Vec<(Box<str>, bool)>, u64) {
        loop {
            let (taken, generation) = {
                let mut changed = self.changed.lock().unwrap_or_else(PoisonError::into_inner);
                (std::mem::take(&mut changed.0), changed.1)
            };
            if !taken.is_empty() {
                return (taken.into_iter().collect(), generation);
            }
            self.notify.notified().await;
        }
    }

    /// The link has subscribed (or unsubscribed) in NATS what `generation` recorded.
    pub(crate) fn applied(&self, generation: u64) {
        self.applied.send_if_modified(|applied| {
            let newer = generation > *applied;
            *applied = (*applied).max(generation);
            newer
        });
    }

    /// Waits until every change recorded so far is in effect in NATS: its subscriptions
    /// were sent to the server ahead of whatever this node sends next.
    pub(crate) async fn settled(&self) {
        let target = self
            .changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1;
        let mut applied = self.applied.subscribe();
        // The sender lives as long as `self`.
        let _ = applied.wait_for(|applied| *applied >= target).await;
    }
}
