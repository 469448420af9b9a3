//! The router's state and the shape of its handlers: each one is a plain function of the
//! state and its input, with no I/O and no waiting, that returns its answer and leaves in
//! an [`Outcome`] what its caller must carry out, storage operations first. The handlers
//! themselves are in the files beside this one, one concern each.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use tern_storage::{Op, StorageError, Store};
use tokio::time::Instant;

use super::append_progress::{AppendGuard, AppendProgress};
use super::broadcast::FanOut;
use super::index::{ClientIndex, UserIndex};
use super::retained::RetainedTree;
use super::routing::Target;
use super::sessions::{ConnId, SessionEntry};
use super::subscriptions::SubscriptionTree;
use super::timers::{Timer, TimerKind, SWEEP_INTERVAL};
use crate::config::{limit_u32, Config, ImConfig};
use crate::im::dedup::DedupWindow;
use crate::im::directory::Groups;
use crate::im::ids::MessageIds;
use crate::im::presence::{payload, says_online, Presence};
use crate::im::topics::{is_system, PRESENCE};
use crate::metrics::Metrics;
use crate::protocol::{now_ms, Delivery, Message, SessionId};

/// Limits the router enforces.
#[derive(Debug, Clone)]
pub(crate) struct RouterLimits {
    pub max_topic_levels: usize,
    pub max_subscriptions_per_session: usize,
    /// A u32, as each session's offline count is.
    pub max_queued_messages: u32,
    pub max_retained_messages: usize,
    pub im: ImConfig,
    /// One node of a cluster: plain messages and broadcasts routed here go to the other
    /// nodes too, and the subscription tree reports the filters it holds.
    pub cluster: bool,
}

impl RouterLimits {
    /// Built once, at start, from the validated configuration.
    pub(crate) fn from_config(config: &Config) -> RouterLimits {
        let limits = &config.limits;
        RouterLimits {
            max_topic_levels: limits.max_topic_levels,
            max_subscriptions_per_session: limits.max_subscriptions_per_session,
            max_queued_messages: limit_u32(limits.max_queued_messages),
            max_retained_messages: limits.max_retained_messages,
            im: config.im.clone(),
            cluster: config.cluster.enabled(),
        }
    }
}

/// What a handler leaves for its caller to carry out, in this order: the storage
/// operations are queued with the writer (in one atomic batch), then the deliveries that
/// waited for them go to their connections, then a broadcast's fan-out starts. Deliveries
/// without a durable queue entry do not wait: a handler puts them straight into their
/// connection's mailbox.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) ops: Vec<Op>,
    /// Deliveries with a durable queue entry, to sessions that are connected.
    pub(crate) stored: Vec<(SessionId, Delivery)>,
    pub(crate) fan_out: Option<FanOut>,
    /// Messages routed here that the other nodes of a cluster route too (plain ones and
    /// broadcasts; never one that came from another node).
    pub(crate) forward: Vec<Forwarded>,
    /// A deadline was added: the timer task looks at the earliest one again.
    pub(crate) timers_changed: bool,
}

/// A message for the other nodes of a cluster.
pub(crate) struct Forwarded {
    pub(crate) message: Arc<Message>,
    /// For a kept message (QoS > 0, not a broadcast), appended to the cluster's message
    /// stream: its number among this node's appends since it started, in routing order.
    /// The append's id is made of it, so that a session adopted here can tell its held
    /// local copy from the same message read back from the stream. Under way until
    /// dropped (see `append_progress`).
    pub(crate) append: Option<AppendGuard>,
}

/// The one owner of who is subscribed to what, of the retained messages, of every
/// session's place, and of the chat state (groups, inbox numbering, duplicates).
pub(crate) struct Router {
    pub(super) limits: RouterLimits,
    pub(super) subscriptions: SubscriptionTree<SessionId>,
    pub(super) retained: RetainedTree<Arc<Message>>,
    /// Boxed: a hash table keeps spare room (up to half of it empty), and a whole entry
    /// per spare place would cost more than the box.
    pub(super) sessions: FxHashMap<SessionId, Box<SessionEntry>>,
    pub(super) by_client: ClientIndex,
    /// Sessions per user, for the device limit.
    pub(super) by_user: UserIndex,
    /// Reused by routing for the matches of each message.
    pub(super) scratch_targets: Vec<Target>,
    pub(super) timers: BTreeSet<Timer>,
    pub(super) next_session: SessionId,
    pub(super) next_conn: ConnId,
    pub(super) groups: Groups,
    pub(super) dedup: DedupWindow,
    pub(super) message_ids: MessageIds,
    /// Next inbox seq per user (users who ever received a chat message).
    pub(super) inbox_next: HashMap<String, u64>,
    /// Drops and refusals are counted here (shared with the broker's other parts).
    pub(super) metrics: Arc<Metrics>,
    /// Sessions with a connection, kept as they change so that stats need not walk every
    /// session.
    pub(super) online: usize,
    /// Sum of every session's offline queue count, kept likewise.
    pub(super) offline_queued: u64,
    /// Shut down: every connection was closed, nothing more is routed.
    pub(super) stopped: bool,
    /// Where chat messages for users with no device connected are told (`[webhook]`).
    pub(super) webhook: Option<crate::webhook::Webhook>,
    /// Users' presence (`None` on a cluster node: see `presence.rs`).
    pub(super) presence: Option<Presence>,
    /// Hashes of the DM contact pairs already recorded, at most `im.contacts_cached`.
    pub(super) contacts: HashSet<u64, rustc_hash::FxBuildHasher>,
    /// The number of the next kept message handed to the cluster ([`Forwarded::append`]).
    pub(super) next_append: u64,
    /// Which of those appends are under way.
    pub(super) appends: Arc<AppendProgress>,
    /// While a kept message published here is delivered: its number, kept by the
    /// sessions that hold their deliveries back. `None` otherwise.
    pub(super) routing_append: Option<u64>,
}

impl Router {
    /// Tells `webhook` of chat messages for users with no device connected.
    pub(crate) fn with_webhook(mut self, webhook: Option<crate::webhook::Webhook>) -> Router {
        self.webhook = webhook;
        self
    }

    /// Whether some session of `user` has a connection.
    pub(super) fn user_online(&self, user: &str) -> bool {
        self.connected_devices(user) > 0
    }

    /// How many sessions of `user` have a connection (at most `im.max_devices_per_user`).
    pub(super) fn connected_devices(&self, user: &str) -> usize {
        self.by_user.get(user, &self.sessions).map_or(0, |set| {
            set.iter()
                .filter(|id| self.sessions.get(id).is_some_and(|s| s.connected.is_some()))
                .count()
        })
    }

    /// Rebuilds the routing state from storage: retained messages and every stored session
    /// with its subscriptions. Queued messages stay on disk.
    pub(crate) fn load(
        limits: RouterLimits,
        store: &dyn Store,
        metrics: Arc<Metrics>,
    ) -> Result<Router, StorageError> {
        let im = limits.im.clone();
        let mut router = Router {
            by_user: UserIndex::default(),
            groups: Groups::new(store.groups()?, im.max_group_members),
            dedup: DedupWindow::new(
                im.dedup_window_secs.saturating_mul(1000),
                im.dedup_window_entries,
            ),
            message_ids: MessageIds::new(store.last_message_id()?),
            inbox_next: store.inbox_heads()?.into_iter().collect(),
            metrics,
            online: 0,
            offline_queued: 0,
            stopped: false,
            webhook: None,
            presence: (im.presence && !limits.cluster)
                .then(|| Presence::new(Duration::from_millis(im.presence_offline_delay_ms))),
            contacts: HashSet::default(),
            next_append: 0,
            appends: Arc::default(),
            routing_append: None,
            limits,
            subscriptions: SubscriptionTree::new(),
            retained: RetainedTree::new(),
            sessions: FxHashMap::default(),
            by_client: ClientIndex::default(),
            scratch_targets: Vec::new(),
            timers: BTreeSet::new(),
            next_session: 1,
            next_conn: 1,
        };
        if router.limits.cluster {
            router.subscriptions.track_interest();
        }
        // Presence left online by a broker that stopped (or died) with users connected:
        // none of them is connected now.
        let mut settled = Vec::new();
        let stopped_at = now_ms();
        for (topic, mut stored) in store.retained()? {
            if topic.split('/').next() == Some(PRESENCE) && says_online(&stored.payload) {
                stored.payload = Bytes::from(payload(false, stopped_at));
                settled.push(Op::PutRetained {
                    topic: topic.clone(),
                    message: stored.clone(),
                });
            }
            if is_system(&topic) {
                // Stored before `$SYS` was the broker's: stale, and replaced in memory by
                // the first `$SYS` tick anyway.
                tracing::debug!(%topic, "ignoring a stored retained $SYS message");
                continue;
            }
            match Message::from_stored(stored) {
                Ok(message) => {
                    router.retained.insert(&topic, Arc::new(message));
                }
                Err(e) => tracing::warn!(%topic, "skipping damaged retained message: {e}"),
            }
        }
        if !settled.is_empty() {
            // Before any client connects (the writer takes none of this router's work yet).
            store.write(&settled, true)?;
        }
        let (now_ms, now) = (now_ms(), Instant::now());
        for record in store.sessions()? {
            router.restore_session(record, now_ms, now);
        }
        router
            .timers
            .insert((now + SWEEP_INTERVAL, 0, TimerKind::Sweep));
        tracing::info!(
            retained = router.retained.len(),
            sessions = router.sessions.len(),
            subscriptions = router.subscriptions.len(),
            groups = router.groups.len(),
            "routing state loaded"
        );
        Ok(router)
    }

    /// Whether the router has shut down (nothing is routed any more).
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
