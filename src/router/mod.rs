//! The router: the one owner of who is subscribed to what, of the retained messages, and of
//! every session's place (online on a connection, or offline with a durable queue).
//!
//! Connections talk to it only through [`RouterHandle`] (a bounded command channel), and it
//! answers through oneshot replies and each connection's bounded mailbox
//! ([`crate::mailbox`]). Keeping the interface to these few commands is deliberate: a
//! cluster transport can later sit behind the same commands without the connections
//! knowing. One shortcut: a plain publish arriving while the queue is empty and the router
//! idle is routed on the publisher's own task, under the lock the router task holds while
//! it handles commands ([`RouterHandle::try_publish`]), which saves the two task wakeups of
//! the queue and its reply; the same code runs, and the connection keeps its own order.
//!
//! The router never waits on a connection: a full mailbox drops QoS 0 (counted) and,
//! for a persistent session, marks it *lagged* — its QoS > 0 messages are in its durable
//! queue, and the connection reads them back from storage once it has caught up
//! (`Resync`). Durable writes go to the storage writer in routing order; the router does
//! not wait for the sync either, it hands the [`Durable`] to the publisher's connection,
//! which acknowledges once it resolves.
//!
//! `$SYS/...` belongs to the broker: client publishes and wills there are refused, and the
//! `$SYS` publisher's messages ([`Command::SysPublish`], see [`crate::metrics::sys`]) are
//! retained in memory only. The router counts what it drops and refuses in the shared
//! [`Metrics`] ([`Router::with_metrics`]) and reports its sizes with [`Command::Stats`].

mod broadcast;
mod chat;
mod index;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::Duration;

use arcstr::ArcStr;
use tern_codec::{
    Protocol, QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe,
};
use tern_storage::{
    Durable, Op, Reserved, SessionRecord, StorageError, StoredSession, StoredSubscription, Writer,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

pub use broadcast::MAX_BROADCASTS_IN_FLIGHT;
pub use chat::ChatPublish;

use crate::config::ImConfig;
use crate::im::dedup::DedupWindow;
use crate::im::directory::{ChangeError, GroupChange, Groups};
use crate::im::ids::MessageIds;
use crate::im::topics::inbox_owner;
#[cfg(test)]
use crate::mailbox::Mailbox;
use crate::mailbox::{Postbox, Refused};
use crate::message::{now_ms, Delivery, Message, SessionId};
use crate::metrics::{DropReason, Metrics, PublishRefusal};
use crate::retained::RetainedTree;
use crate::subscriptions::{Match, Subscription, SubscriptionTree};
use index::{ClientIndex, UserIndex};

/// Identifies one connection of a session (a session outlives its connections).
pub type ConnId = u64;

/// Limits the router enforces.
#[derive(Debug, Clone)]
pub struct RouterLimits {
    pub max_topic_levels: usize,
    pub max_subscriptions_per_session: usize,
    /// A u32, as each session's offline count (`Away::queued`) is.
    pub max_queued_messages: u32,
    pub max_retained_messages: usize,
    pub im: ImConfig,
}

/// Why the broker closes a connection: the v5 DISCONNECT reason and reason string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: ReasonCode,
    pub why: String,
}

impl CloseReason {
    pub fn new(code: ReasonCode, why: impl Into<String>) -> CloseReason {
        CloseReason {
            code,
            why: why.into(),
        }
    }
}

/// Topics under this prefix are system broadcasts: delivered live on each connection's
/// broadcast lane, never queued durably, so that they cannot hold up chat messages.
pub const BROADCAST_PREFIX: &str = "broadcast/";

/// The first level of the broker's own topics (`$SYS/broker/...`).
pub const SYS_TOPIC: &str = "$SYS";

/// Whether `topic` is the broker's to publish on: `$SYS` or below it. Clients may publish
/// on other `$` topics (MQTT only reserves them from wildcard matching), not on these.
pub fn is_sys_topic(topic: &str) -> bool {
    topic
        .strip_prefix(SYS_TOPIC)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// What the router holds, counted without touching storage (for metrics and `$SYS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Sessions with a connected client.
    pub connected: usize,
    pub subscriptions: usize,
    /// Retained messages, the in-memory `$SYS` ones included.
    pub retained: usize,
    /// QoS 1/2 messages queued for persistent sessions while they were offline (since they
    /// went offline, or as found at start). Once the session reconnects, its backlog is
    /// read from storage and no longer counted here.
    pub queued: u64,
}

/// The connection side of an attached session.
pub struct ConnectRequest {
    pub client_id: ArcStr,
    /// The authenticated (or anonymous) user the connection acts as.
    pub user: ArcStr,
    pub clean_start: bool,
    /// Seconds the session outlives the connection; 0 ends it with the connection.
    pub expiry_secs: u32,
    pub protocol: Protocol,
    /// Where the router puts the connection's deliveries, broadcasts and close order
    /// (see [`crate::mailbox`]).
    pub postbox: Postbox,
}

#[cfg(test)]
impl ConnectRequest {
    /// A v5 connection of `user` as `client_id`, with a mailbox of the given capacities
    /// (chat, broadcasts), for tests of the router without sockets.
    pub(crate) fn for_test(
        user: &str,
        client_id: &str,
        clean_start: bool,
        expiry_secs: u32,
        outbox_capacity: usize,
        lane_capacity: usize,
    ) -> (ConnectRequest, Mailbox) {
        let (postbox, mailbox) = crate::mailbox::mailbox(outbox_capacity, lane_capacity);
        let request = ConnectRequest {
            client_id: ArcStr::from(client_id),
            user: ArcStr::from(user),
            clean_start,
            expiry_secs,
            protocol: Protocol::V5,
            postbox,
        };
        (request, mailbox)
    }
}

/// The router's answer to CONNECT.
#[derive(Debug)]
pub struct Attached {
    pub session: SessionId,
    pub conn: ConnId,
    pub session_present: bool,
    /// For a resumed persistent session: its durable queue up to (excluding) this position
    /// is to be read from storage; live deliveries continue from there.
    pub backlog_upto: Option<u64>,
    /// Queue positions the previous connection had sent unacknowledged: resent with DUP.
    pub sent: Vec<u64>,
    /// The user's name as the router's slots hold it: the connection keeps this one, so a
    /// user's name is one allocation however many devices it has.
    pub user: ArcStr,
}

/// The router's answer to a PUBLISH.
pub struct Routed {
    pub matched: bool,
    /// Resolves once every durable write the message caused is synced per policy.
    pub durable: Durable,
    /// The publish was refused (v5 reason for PUBACK/PUBREC); nothing was routed.
    pub refused: Option<ReasonCode>,
}

impl Routed {
    fn refused(reason: ReasonCode) -> Routed {
        Routed {
            matched: false,
            durable: Durable::ready(),
            refused: Some(reason),
        }
    }
}

/// One session as operators see it (`tern sessions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub client_id: String,
    pub user: String,
    pub connected: bool,
    pub persistent: bool,
    pub protocol_level: u8,
    pub expiry_secs: u32,
    /// (filter, granted QoS).
    pub subscriptions: Vec<(String, u8)>,
    /// Outbound QoS > 0 messages sent and not yet acknowledged.
    pub in_flight: usize,
}

pub struct SubscribeReply {
    pub reasons: Vec<ReasonCode>,
    /// Retained messages to send after the SUBACK.
    pub retained: Vec<Delivery>,
}

/// The will of a connection that ended without DISCONNECT (or with 0x04).
pub struct WillRequest {
    pub message: Arc<Message>,
    pub delay_secs: u32,
}

pub enum Command {
    Connect {
        request: ConnectRequest,
        /// Refused (v5 reason) if the client id is another user's.
        reply: oneshot::Sender<Result<Attached, ReasonCode>>,
    },
    Publish {
        message: Arc<Message>,
        /// (client ID, packet ID) of an inbound QoS 2 publish of a persistent session: its
        /// "already received" marker is written in the same batch as the message.
        inbound_qos2: Option<(ArcStr, u16)>,
        reply: Option<oneshot::Sender<Routed>>,
    },
    /// A system broadcast from an operator's connection, holding one of the
    /// [`MAX_BROADCASTS_IN_FLIGHT`] permits until its fan-out ends (see `broadcast.rs`).
    Broadcast {
        message: Arc<Message>,
        inbound_qos2: Option<(ArcStr, u16)>,
        permit: OwnedSemaphorePermit,
        reply: Option<oneshot::Sender<Routed>>,
    },
    /// A direct or group message: into every recipient's inbox, in one atomic batch.
    Chat {
        chat: Box<ChatPublish>,
        reply: Option<oneshot::Sender<Routed>>,
    },
    /// An operator's change to a group; the reply's [`Durable`] resolves once it is stored.
    ChangeGroup {
        change: GroupChange,
        reply: oneshot::Sender<Result<Durable, ChangeError>>,
    },
    /// An operator deletes a retained message; `None` if there was none.
    DeleteRetained {
        topic: String,
        reply: oneshot::Sender<Option<Durable>>,
    },
    /// Closes every connection of a user (deleted, or its password changed).
    CloseUser {
        user: String,
        reason: CloseReason,
    },
    /// Every session the router holds (or the one with this client id).
    Sessions {
        client_id: Option<String>,
        reply: oneshot::Sender<Vec<SessionSummary>>,
    },
    Subscribe {
        session: SessionId,
        subscribe: Subscribe,
        reply: oneshot::Sender<SubscribeReply>,
    },
    Unsubscribe {
        session: SessionId,
        unsubscribe: Unsubscribe,
        reply: oneshot::Sender<Vec<ReasonCode>>,
    },
    /// A lagged connection caught up: where does its storage backlog end?
    Resync {
        session: SessionId,
        conn: ConnId,
        reply: oneshot::Sender<u64>,
    },
    Disconnected {
        session: SessionId,
        conn: ConnId,
        will: Option<WillRequest>,
        /// A new Session Expiry Interval sent in DISCONNECT.
        expiry_secs: Option<u32>,
        sent: Vec<u64>,
    },
    /// The router's sizes, for metrics.
    Stats {
        reply: oneshot::Sender<RouterStats>,
    },
    /// The broker's own `$SYS/...` messages: routed like any QoS 0 publish, and when
    /// retained, kept in memory only. Topics outside `$SYS` are ignored.
    SysPublish {
        messages: Vec<Arc<Message>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Cheap to clone; one per connection.
#[derive(Clone)]
pub struct RouterHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// What the router task and the handles share. The router's state is the task's to
/// change, command after command; a handle takes it only for [`RouterHandle::try_publish`].
struct Shared {
    router: tokio::sync::Mutex<Router>,
    /// The router's writer, for taking a place in its queue while the router is locked.
    writer: Writer,
}

/// The router is gone (the broker is stopping).
#[derive(Debug, thiserror::Error)]
#[error("the router has stopped")]
pub struct RouterGone;

impl RouterHandle {
    pub async fn send(&self, command: Command) -> Result<(), RouterGone> {
        self.tx.send(command).await.map_err(|_| RouterGone)
    }

    /// Sends a command and awaits the reply its `make` closure wires in.
    pub async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RouterGone> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| RouterGone)
    }

    /// Routes a plain publish (not `$SYS`, not a broadcast) at once, on the caller's task,
    /// when the router is idle (its queue empty, its state not locked) and its writer's
    /// queue has room; `None` otherwise, and the caller sends [`Command::Publish`].
    ///
    /// The caller keeps its own order: it may call this only when every command it sent
    /// earlier has been handled (answered, or followed by an answered one: the router
    /// answers in order), or this publish could overtake them. The connection tracks that
    /// (`Connection::queue_unconfirmed`, `AckQueue::awaits_router`) without any shared
    /// counter: a counter every send touched cost the busy router more than it saved.
    ///
    /// What a publish costs through the queue is mostly two task wakeups, the router's and
    /// then the publisher's for the reply: on a lightly loaded broker each is often a
    /// thread woken on the other core (at 20,000 msgs/s QoS 1: 46k context switches in the
    /// broker for 110k messages, 26k without them).
    pub fn try_publish(
        &self,
        message: &Arc<Message>,
        inbound_qos2: &Option<(ArcStr, u16)>,
        wait: bool,
    ) -> Option<Routed> {
        if self.tx.capacity() != self.tx.max_capacity()
            || is_sys_topic(&message.topic)
            || message.topic.starts_with(BROADCAST_PREFIX)
        {
            return None;
        }
        let mut router = self.shared.router.try_lock().ok()?;
        if router.stopped {
            return None;
        }
        let place = self.shared.writer.try_reserve()?;
        let ops = inbound_qos2_op(inbound_qos2.clone());
        Some(router.route_reserved(message, ops, wait, place))
    }

    /// Resolves once the router has stopped (for tasks that would otherwise only notice at
    /// their next command).
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The router task: handles the commands in their order, and the timers.
async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Command>) {
    let mut next_timer = shared.router.lock().await.next_timer();
    // What was queued meanwhile is taken at once and handled under one lock (up to a
    // batch): a busy router pays for the queue and the lock once per batch.
    let mut batch = Vec::with_capacity(ROUTER_BATCH);
    loop {
        let received = tokio::select! {
            received = rx.recv_many(&mut batch, ROUTER_BATCH) => received,
            _ = sleep_until_opt(next_timer) => {
                let mut router = shared.router.lock().await;
                router.fire_timers().await;
                next_timer = router.next_timer();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let mut router = shared.router.lock().await;
        let mut stop = false;
        for command in batch.drain(..) {
            match command {
                Command::Shutdown { reply } => {
                    router.shutdown();
                    let _ = reply.send(());
                    // What follows is dropped unanswered, as it would be in the queue.
                    stop = true;
                    break;
                }
                command => router.handle(command).await,
            }
        }
        next_timer = router.next_timer();
        drop(router);
        if stop {
            break;
        }
    }
}

/// The most commands the router task handles under one lock of the router.
const ROUTER_BATCH: usize = 64;

struct Online {
    id: ConnId,
    postbox: Postbox,
}

struct Slot {
    /// Shared with the connection (see `ConnectRequest::client_id`).
    client_id: ArcStr,
    /// The user the session belongs to; empty for a session restored from a database
    /// written before users existed (it is adopted by the next user to connect with it).
    /// Shared with the user's other sessions and `Router::user_sessions` (see
    /// [`Router::user_name`]).
    user: ArcStr,
    protocol: Protocol,
    expiry_secs: u32,
    /// Stored in the database: subscriptions and QoS > 0 messages survive restarts.
    persistent: bool,
    online: Option<Online>,
    subscriptions: BTreeMap<String, Subscription>,
    next_seq: u64,
    /// What only a session without a connection has; `None` while one is attached.
    away: Option<Box<Away>>,
}

/// A session's state between connections. Boxed in its [`Slot`]: 88 bytes that every
/// online session (every idle chat device) would otherwise carry unused.
#[derive(Default)]
struct Away {
    /// QoS > 0 messages queued while offline, held to `max_queued_messages` (a u32, as
    /// that limit is). Here rather than in the slot: only an offline session counts them.
    queued: u32,
    /// Durable queue positions the last connection sent unacknowledged (resent with DUP).
    sent: Vec<u64>,
    disconnected_at_ms: Option<u64>,
    expires_at: Option<Instant>,
    /// A will waiting for its delay.
    will: Option<(Instant, Arc<Message>)>,
}

impl Slot {
    fn away(&mut self) -> &mut Away {
        self.away.get_or_insert_with(Box::default)
    }

    /// QoS > 0 messages queued since the session went offline.
    fn offline_queued(&self) -> u32 {
        self.away.as_ref().map_or(0, |away| away.queued)
    }

    fn expires_at(&self) -> Option<Instant> {
        self.away.as_ref().and_then(|away| away.expires_at)
    }

    fn stored(&self) -> StoredSession {
        StoredSession {
            client_id: self.client_id.to_string(),
            user: self.user.to_string(),
            protocol_level: self.protocol.level(),
            expiry_interval_secs: self.expiry_secs,
            disconnected_at_ms: self.away.as_ref().and_then(|away| away.disconnected_at_ms),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(filter, s)| StoredSubscription {
                    filter: filter.clone(),
                    options: s.options.to_byte(Protocol::V5),
                    identifier: s.identifier,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Will,
    Expiry,
    /// Retention of chat messages (not tied to a session: id 0).
    Sweep,
}

/// How often messages older than `im.inbox_max_age_secs` are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

pub struct Router {
    limits: RouterLimits,
    writer: Writer,
    subscriptions: SubscriptionTree<SessionId>,
    retained: RetainedTree<Arc<Message>>,
    /// Boxed: a hash table keeps spare room (up to half of it empty), and a 200-byte
    /// slot per spare place would cost more than the box.
    sessions: FxHashMap<SessionId, Box<Slot>>,
    by_client: ClientIndex,
    share_cursor: HashMap<String, usize>,
    /// Reused by `plan` for the matches of each message.
    scratch_targets: Vec<Target>,
    timers: BTreeSet<(Instant, SessionId, TimerKind)>,
    next_session: SessionId,
    next_conn: ConnId,
    /// Sessions per user, for the device limit.
    user_sessions: UserIndex,
    groups: Groups,
    dedup: DedupWindow,
    message_ids: MessageIds,
    /// Next inbox seq per user (users who ever received a chat message).
    inbox_next: HashMap<String, u64>,
    /// Drops and refusals are counted here (shared with the broker's other parts).
    metrics: Arc<Metrics>,
    /// Sessions with a connection, kept as they change so that [`Command::Stats`] need not
    /// walk every session.
    online: usize,
    /// Sum of every session's `offline_queued`, kept likewise.
    offline_queued: u64,
    /// Shut down: every connection was closed, nothing more is routed.
    stopped: bool,
}

impl Router {
    /// Rebuilds the routing state from storage: retained messages and every stored session
    /// with its subscriptions. Queued messages stay on disk.
    pub fn load(limits: RouterLimits, writer: Writer) -> Result<Router, StorageError> {
        let store = writer.store().clone();
        let im = limits.im.clone();
        let mut router = Router {
            user_sessions: UserIndex::default(),
            groups: Groups::new(store.groups()?, im.max_group_members),
            dedup: DedupWindow::new(
                im.dedup_window_secs.saturating_mul(1000),
                im.dedup_window_entries,
            ),
            message_ids: MessageIds::new(store.last_message_id()?),
            inbox_next: store.inbox_heads()?.into_iter().collect(),
            metrics: Arc::new(Metrics::new()),
            online: 0,
            offline_queued: 0,
            stopped: false,
            limits,
            writer,
            subscriptions: SubscriptionTree::new(),
            retained: RetainedTree::new(),
            sessions: FxHashMap::default(),
            by_client: ClientIndex::default(),
            share_cursor: HashMap::new(),
            scratch_targets: Vec::new(),
            timers: BTreeSet::new(),
            next_session: 1,
            next_conn: 1,
        };
        for (topic, stored) in store.retained()? {
            if is_sys_topic(&topic) {
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
        let now = now_ms();
        for record in store.sessions()? {
            router.restore_session(record, now);
        }
        router
            .timers
            .insert((Instant::now() + SWEEP_INTERVAL, 0, TimerKind::Sweep));
        tracing::info!(
            retained = router.retained.len(),
            sessions = router.sessions.len(),
            subscriptions = router.subscriptions.len(),
            groups = router.groups.len(),
            "routing state loaded"
        );
        Ok(router)
    }

    fn restore_session(&mut self, record: SessionRecord, now: u64) {
        let SessionRecord {
            session,
            first_seq,
            next_seq,
        } = record;
        let protocol = if session.protocol_level == 5 {
            Protocol::V5
        } else {
            Protocol::V311
        };
        let id = self.next_session;
        self.next_session += 1;
        let client_id: ArcStr = ArcStr::from(session.client_id.as_str());
        // A session that was online when the broker died went offline at restart.
        let disconnected_at_ms = session.disconnected_at_ms.unwrap_or(now);
        let user = self.user_name(&session.user, || ArcStr::from(session.user.as_str()));
        let mut slot = Slot {
            client_id: client_id.clone(),
            user,
            protocol,
            expiry_secs: session.expiry_interval_secs,
            persistent: true,
            online: None,
            subscriptions: BTreeMap::new(),
            next_seq,
            away: Some(Box::new(Away {
                queued: u32::try_from(next_seq.saturating_sub(first_seq)).unwrap_or(u32::MAX),
                disconnected_at_ms: Some(disconnected_at_ms),
                ..Away::default()
            })),
        };
        for sub in session.subscriptions {
            let Ok(options) = SubscriptionOptions::from_byte(Protocol::V5, sub.options) else {
                tracing::warn!(client_id = %client_id, filter = %sub.filter, "skipping damaged subscription");
                continue;
            };
            let subscription = Subscription {
                options,
                identifier: sub.identifier,
            };
            self.subscriptions
                .subscribe(id, &sub.filter, subscription.clone());
            slot.subscriptions.insert(sub.filter, subscription);
        }
        if slot.expiry_secs != u32::MAX {
            let deadline_ms = disconnected_at_ms + u64::from(slot.expiry_secs) * 1000;
            let left = Duration::from_millis(deadline_ms.saturating_sub(now));
            let at = Instant::now() + left;
            slot.away().expires_at = Some(at);
            self.timers.insert((at, id, TimerKind::Expiry));
        }
        self.offline_queued += u64::from(slot.offline_queued());
        self.by_client.insert(&client_id, id, &self.sessions);
        let user = slot.user.clone();
        self.sessions.insert(id, Box::new(slot));
        if !user.is_empty() {
            self.user_sessions.insert(&user, id, &self.sessions);
        }
    }

    /// Counts drops and refusals in `metrics` (the broker's shared ones) instead of a
    /// private set nobody reads.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Router {
        self.metrics = metrics;
        self
    }

    /// Starts the router task. `capacity` bounds its command queue.
    pub fn spawn(self, capacity: usize) -> (RouterHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            writer: self.writer.clone(),
            router: tokio::sync::Mutex::new(self),
        });
        let task = tokio::spawn(run(shared.clone(), rx));
        (RouterHandle { tx, shared }, task)
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// Routes a plain publish on the caller's task, its writes queued in the place taken
    /// (see [`RouterHandle::try_publish`]). As [`Router::route_now`], without waiting.
    fn route_reserved(
        &mut self,
        message: &Arc<Message>,
        mut ops: Vec<Op>,
        wait: bool,
        place: Reserved<'_>,
    ) -> Routed {
        let mut live = Vec::new();
        let matched = self.plan(message, &mut ops, None, &mut live, Live::HandOver);
        let durable = if wait {
            place.submit(ops)
        } else {
            place.submit_detached(ops);
            Durable::ready()
        };
        self.send_all_live(live);
        Routed {
            matched,
            durable,
            refused: None,
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Connect { request, reply } => {
                let attached = self.connect(request).await;
                let _ = reply.send(attached);
            }
            Command::Publish {
                message,
                inbound_qos2,
                reply,
            } => {
                let routed = if is_sys_topic(&message.topic) {
                    // Refused before anything is written: a QoS 2 refused with 0x87 ends
                    // its flow, so no "already received" marker may be left behind.
                    self.refuse_sys(&message);
                    Routed::refused(ReasonCode::NotAuthorized)
                } else {
                    let ops = inbound_qos2_op(inbound_qos2);
                    self.route(&message, ops, reply.is_some()).await
                };
                if let Some(reply) = reply {
                    let _ = reply.send(routed);
                }
            }
            Command::Broadcast {
                message,
                inbound_qos2,
                permit,
                reply,
            } => {
                let ops = inbound_qos2_op(inbound_qos2);
                let routed = self
                    .route_broadcast(&message, ops, Some(permit), reply.is_some())
                    .await;
                if let Some(reply) = reply {
                    let _ = reply.send(routed);
                }
            }
            Command::Chat { chat, reply } => {
                let routed = self.chat(*chat, reply.is_some()).await;
                if let Some(reply) = reply {
                    let _ = reply.send(routed);
                }
            }
            Command::ChangeGroup { change, reply } => {
                let answer = match self.groups.apply(&change, now_ms()) {
                    Ok(op) => Ok(self.writer.submit(vec![op]).await),
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
            Command::DeleteRetained { topic, reply } => {
                let answer = match self.retained.remove(&topic) {
                    Some(_) => Some(self.writer.submit(vec![Op::DeleteRetained { topic }]).await),
                    None => None,
                };
                let _ = reply.send(answer);
            }
            Command::CloseUser { user, reason } => {
                let ids = self
                    .user_sessions
                    .get(user.as_str(), &self.sessions)
                    .cloned()
                    .unwrap_or_default();
                for id in ids {
                    if let Some(online) = self.sessions.get_mut(&id).and_then(|s| s.online.as_mut())
                    {
                        tracing::info!(%user, why = %reason.why, "closing the user's connection");
                        online.postbox.close(reason.clone());
                    }
                }
            }
            Command::Sessions { client_id, reply } => {
                let _ = reply.send(self.summaries(client_id.as_deref()));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::SysPublish { messages } => {
                for message in messages {
                    if is_sys_topic(&message.topic) {
                        self.route_now(&message, Vec::new(), false).await;
                    } else {
                        tracing::warn!(topic = %message.topic, "not a $SYS topic, not published");
                    }
                }
            }
            Command::Subscribe {
                session,
                subscribe,
                reply,
            } => {
                let answer = self.subscribe(session, subscribe).await;
                let _ = reply.send(answer);
            }
            Command::Unsubscribe {
                session,
                unsubscribe,
                reply,
            } => {
                let answer = self.unsubscribe(session, unsubscribe).await;
                let _ = reply.send(answer);
            }
            Command::Resync {
                session,
                conn,
                reply,
            } => {
                if let Some(slot) = self.sessions.get(&session) {
                    if let Some(online) = slot.online.as_ref().filter(|o| o.id == conn) {
                        online.postbox.clear_lagged();
                    }
                    let _ = reply.send(slot.next_seq);
                }
            }
            Command::Disconnected {
                session,
                conn,
                will,
                expiry_secs,
                sent,
            } => {
                self.disconnected(session, conn, will, expiry_secs, sent)
                    .await
            }
            Command::Shutdown { .. } => {}
        }
    }

    async fn connect(&mut self, request: ConnectRequest) -> Result<Attached, ReasonCode> {
        let conn = self.next_conn;
        self.next_conn += 1;
        let persistent = request.expiry_secs > 0;
        let mut ops = Vec::new();
        let mut resumed = None;
        let mut pending_will = None;
        if let Some(id) = self.by_client.get(&request.client_id, &self.sessions) {
            if let Some(slot) = self.sessions.get_mut(&id) {
                if !slot.user.is_empty() && *slot.user != *request.user {
                    // A client id names one device of one user: another user may neither
                    // take the session over (and read its queue) nor end it.
                    tracing::info!(client_id = %request.client_id, user = %request.user,
                        owner = %slot.user, "client id belongs to another user");
                    return Err(ReasonCode::NotAuthorized);
                }
                if let Some(mut old) = slot.online.take() {
                    tracing::debug!(client_id = %request.client_id, "session taken over");
                    old.postbox
                        .close(CloseReason::new(ReasonCode::SessionTakenOver, ""));
                    self.online -= 1;
                }
            }
            let keep =
                !request.clean_start && self.sessions.get(&id).is_some_and(|slot| slot.persistent);
            if keep {
                // A new connection to the session before the will delay ends cancels the
                // will [MQTT-3.1.3-9].
                if let Some(slot) = self.sessions.get_mut(&id) {
                    if let Some((at, _)) = slot.away.as_mut().and_then(|away| away.will.take()) {
                        self.timers.remove(&(at, id, TimerKind::Will));
                    }
                }
                resumed = Some(id);
            } else if let Some(will) = self.remove_session(id, &mut ops) {
                // Clean start ends the old session, and a session's end publishes its
                // delayed will [MQTT-3.1.2-8].
                pending_will = Some(will);
            }
        }
        // The connection's copy (it authenticated as this user) when the user is new.
        let user = self.user_name(&request.user, || request.user.clone());
        let (id, session_present) = match resumed {
            Some(id) => (id, true),
            None => {
                let id = self.next_session;
                self.next_session += 1;
                self.by_client
                    .insert(&request.client_id, id, &self.sessions);
                self.sessions.insert(
                    id,
                    Box::new(Slot {
                        client_id: request.client_id.clone(),
                        user: user.clone(),
                        protocol: request.protocol,
                        expiry_secs: request.expiry_secs,
                        persistent,
                        online: None,
                        subscriptions: BTreeMap::new(),
                        next_seq: 0,
                        away: None,
                    }),
                );
                (id, false)
            }
        };
        let Some(slot) = self.sessions.get_mut(&id) else {
            unreachable!("session {id} was inserted or found above")
        };
        let was_stored = slot.persistent;
        if slot.user.is_empty() {
            slot.user = user.clone();
        }
        slot.protocol = request.protocol;
        slot.expiry_secs = request.expiry_secs;
        slot.persistent = persistent || (session_present && was_stored);
        let away = slot.away.take().map(|away| *away).unwrap_or_default();
        // Its backlog is the connection's to read now (see `RouterStats::queued`).
        self.offline_queued -= u64::from(away.queued);
        if let Some(at) = away.expires_at {
            self.timers.remove(&(at, id, TimerKind::Expiry));
        }
        let sent = away.sent;
        slot.online = Some(Online {
            id: conn,
            postbox: request.postbox,
        });
        self.online += 1;
        if slot.persistent {
            ops.push(Op::PutSession(slot.stored()));
        }
        let backlog_upto = (session_present && was_stored).then_some(slot.next_seq);
        self.user_sessions.insert(&user, id, &self.sessions);
        self.enforce_device_limit(&request.user);
        match pending_will {
            Some(will) => {
                self.route(&will, ops, false).await;
            }
            None if !ops.is_empty() => self.writer.submit_detached(ops).await,
            None => {}
        }
        Ok(Attached {
            session: id,
            conn,
            session_present,
            backlog_upto,
            sent,
            user,
        })
    }

    /// The user's name as its sessions hold it: one allocation per user, shared by its
    /// devices and the `user_sessions` key, rather than two per session. `named` is the
    /// caller's own copy, taken when the user has no session yet.
    fn user_name(&self, user: &str, named: impl FnOnce() -> ArcStr) -> ArcStr {
        match self.user_sessions.name(user, &self.sessions) {
            Some(name) => name.clone(),
            None => named(),
        }
    }

    /// Closes the user's oldest connections beyond `im.max_devices_per_user`.
    fn enforce_device_limit(&mut self, user: &str) {
        let max = self.limits.im.max_devices_per_user;
        let Some(ids) = self
            .user_sessions
            .get(user, &self.sessions)
            .filter(|ids| ids.len() > max)
        else {
            return;
        };
        if max == 0 {
            return;
        }
        let mut online: Vec<(ConnId, SessionId)> = ids
            .iter()
            .filter_map(|id| {
                let online = self.sessions.get(id)?.online.as_ref()?;
                (!online.postbox.is_closing()).then_some((online.id, *id))
            })
            .collect();
        if online.len() <= max {
            return;
        }
        online.sort_unstable();
        let excess = online.len() - max;
        for (_, id) in online.into_iter().take(excess) {
            if let Some(online) = self.sessions.get_mut(&id).and_then(|s| s.online.as_mut()) {
                tracing::info!(%user, max, "device limit reached, closing the oldest connection");
                online.postbox.close(CloseReason::new(
                    ReasonCode::AdministrativeAction,
                    format!("{user} connected more than {max} devices; this one was the oldest"),
                ));
            }
        }
    }

    fn summaries(&self, client_id: Option<&str>) -> Vec<SessionSummary> {
        let summary = |slot: &Slot| SessionSummary {
            client_id: slot.client_id.to_string(),
            user: slot.user.to_string(),
            connected: slot.online.is_some(),
            persistent: slot.persistent,
            protocol_level: slot.protocol.level(),
            expiry_secs: slot.expiry_secs,
            subscriptions: slot
                .subscriptions
                .iter()
                .map(|(filter, s)| (filter.clone(), s.options.qos.as_u8()))
                .collect(),
            in_flight: match &slot.online {
                Some(online) => online.postbox.in_flight(),
                None => slot.away.as_ref().map_or(0, |away| away.sent.len()),
            },
        };
        let mut all: Vec<SessionSummary> = match client_id {
            Some(client_id) => self
                .by_client
                .get(client_id, &self.sessions)
                .and_then(|id| self.sessions.get(&id))
                .map(|slot| summary(slot))
                .into_iter()
                .collect(),
            None => self.sessions.values().map(|slot| summary(slot)).collect(),
        };
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    /// Ends a session: its subscriptions, its stored state, a pending will.
    fn remove_session(&mut self, id: SessionId, ops: &mut Vec<Op>) -> Option<Arc<Message>> {
        let slot = self.sessions.remove(&id)?;
        self.offline_queued -= u64::from(slot.offline_queued());
        if slot.online.is_some() {
            self.online -= 1;
        }
        self.by_client.remove(&slot.client_id, id);
        self.user_sessions.remove(&slot.user, id);
        for filter in slot.subscriptions.keys() {
            self.subscriptions.unsubscribe(&id, filter);
        }
        if let Some(at) = slot.expires_at() {
            self.timers.remove(&(at, id, TimerKind::Expiry));
        }
        if slot.persistent {
            ops.push(Op::DeleteSession {
                client_id: slot.client_id.to_string(),
            });
        }
        slot.away.and_then(|away| away.will).map(|(at, will)| {
            self.timers.remove(&(at, id, TimerKind::Will));
            will
        })
    }

    /// Routes one message and queues its durable writes (after `ops`, which go in the same
    /// atomic batch). With `wait`, the returned [`Durable`] resolves when they are synced.
    async fn route(&mut self, message: &Arc<Message>, ops: Vec<Op>, wait: bool) -> Routed {
        if is_sys_topic(&message.topic) {
            // A will on `$SYS`: dropped, but the session's own ops still go through.
            self.refuse_sys(message);
            let durable = self.commit(ops, wait).await;
            return Routed {
                durable,
                ..Routed::refused(ReasonCode::NotAuthorized)
            };
        }
        if message.topic.starts_with(BROADCAST_PREFIX) {
            // A will on a broadcast topic (an operator's): fanned out the same way.
            return self.route_broadcast(message, ops, None, wait).await;
        }
        self.route_now(message, ops, wait).await
    }

    /// Matches a broadcast and hands its deliveries to a fan-out task (`broadcast.rs`).
    async fn route_broadcast(
        &mut self,
        message: &Arc<Message>,
        mut ops: Vec<Op>,
        permit: Option<OwnedSemaphorePermit>,
        wait: bool,
    ) -> Routed {
        let mut live = Vec::new();
        let matched = self.plan(message, &mut ops, None, &mut live, Live::Collect);
        let durable = self.commit(ops, wait).await;
        let lanes = live
            .into_iter()
            .filter_map(|(id, delivery)| {
                let online = self.sessions.get(&id)?.online.as_ref()?;
                Some((online.postbox.broadcast_lane(), delivery))
            })
            .collect();
        broadcast::spawn_fan_out(lanes, permit, self.metrics.clone());
        Routed {
            matched,
            durable,
            refused: None,
        }
    }

    /// Routes one message and hands live deliveries to their connections at once.
    async fn route_now(&mut self, message: &Arc<Message>, mut ops: Vec<Op>, wait: bool) -> Routed {
        let mut live = Vec::new();
        let matched = self.plan(message, &mut ops, None, &mut live, Live::HandOver);
        let durable = self.commit(ops, wait).await;
        self.send_all_live(live);
        Routed {
            matched,
            durable,
            refused: None,
        }
    }

    /// Queues `ops` with the writer; with `wait`, the [`Durable`] resolves once synced.
    async fn commit(&mut self, ops: Vec<Op>, wait: bool) -> Durable {
        // Durable writes are queued before anything is handed to a connection (callers
        // send live deliveries after this), so that a subscriber's acknowledgement (a
        // Dequeue) is always applied after its Enqueue.
        if ops.is_empty() {
            Durable::ready()
        } else if wait {
            self.writer.submit(ops).await
        } else {
            self.writer.submit_detached(ops).await;
            Durable::ready()
        }
    }

    fn send_all_live(&mut self, live: Vec<(SessionId, Delivery)>) {
        for (id, delivery) in live {
            self.send_live(id, delivery);
        }
    }

    /// Decides where a message goes: the retained store, then every matching subscription
    /// (durable queue entries appended to `ops`, referring to the stored chat message
    /// `message_ref` instead of copying the payload when given). Appends the deliveries for
    /// sessions that are online to `live`, or with [`Live::HandOver`] hands those that are
    /// not durable to their connections at once (the others wait in `live` for their
    /// queue entries to be committed first); returns whether any subscription matched.
    ///
    /// Two IM rules hold here whatever filter matched: an inbox topic reaches only sessions
    /// of the inbox's user, and a broadcast is never queued durably.
    fn plan(
        &mut self,
        message: &Arc<Message>,
        ops: &mut Vec<Op>,
        message_ref: Option<u64>,
        live: &mut Vec<(SessionId, Delivery)>,
        mode: Live,
    ) -> bool {
        if message.retain {
            self.retain(message, ops);
        }
        // Matches go into a buffer kept across publishes (no allocation per message), then
        // overlapping subscriptions of one session are merged.
        let mut targets = std::mem::take(&mut self.scratch_targets);
        targets.clear();
        let sessions = &self.sessions;
        let cursors = &mut self.share_cursor;
        // A session has at most one subscription per filter, so matches of a single filter
        // (the common case: everybody on one topic) need no merging, and no sort.
        let mut single_filter = true;
        let mut first_filter = None;
        self.subscriptions
            .for_each_match(&message.topic, |m| match m {
                Match::Direct {
                    client,
                    filter,
                    subscription,
                } => {
                    if subscription.options.no_local && message.origin == Some(*client) {
                        return;
                    }
                    single_filter &= *first_filter.get_or_insert(filter) == filter;
                    targets.push(Target::new(*client, subscription));
                }
                Match::Shared {
                    group,
                    filter,
                    members,
                } => {
                    if let Some((client, subscription)) =
                        pick_member(sessions, cursors, group, filter, members)
                    {
                        // The member may hold other matching subscriptions.
                        single_filter = false;
                        targets.push(Target::new(*client, subscription));
                    }
                }
            });
        let matched = !targets.is_empty();
        if !single_filter {
            // Stable, so that a session's subscription identifiers keep their match order.
            targets.sort_by_key(|t| t.session);
        }
        live.reserve(targets.len());
        let now = now_ms();
        let inbox_of = inbox_owner(&message.topic);
        let broadcast = message.topic.starts_with(BROADCAST_PREFIX);
        let mut index = 0;
        while index < targets.len() {
            let id = targets[index].session;
            let (qos, retain_as_published, ids) = merge_session(&targets, &mut index);
            let Some(slot) = self.sessions.get_mut(&id) else {
                continue;
            };
            if inbox_of.is_some_and(|owner| owner != &*slot.user) {
                continue;
            }
            let qos = qos.min(message.qos);
            let mut delivery = Delivery {
                message: message.clone(),
                qos,
                retain: message.retain && retain_as_published,
                subscription_ids: ids,
                seq: None,
                dup: false,
                released: false,
            };
            if slot.persistent && qos != QoS::AtMostOnce && !broadcast && !message.is_expired(now) {
                if slot.online.is_none() && slot.offline_queued() >= self.limits.max_queued_messages
                {
                    self.metrics.dropped(DropReason::QueueFull);
                    tracing::debug!(client_id = %slot.client_id, "offline queue full, message dropped");
                    continue;
                }
                let seq = slot.next_seq;
                slot.next_seq += 1;
                if slot.online.is_none() {
                    // Below max_queued_messages (checked above), so within u32.
                    slot.away().queued += 1;
                    self.offline_queued += 1;
                }
                delivery.seq = Some(seq);
                let mut queued = delivery.to_queued();
                if message_ref.is_some() {
                    queued.message.payload = bytes::Bytes::new();
                    queued.message_ref = message_ref;
                }
                ops.push(Op::Enqueue {
                    client_id: slot.client_id.to_string(),
                    seq,
                    message: queued,
                });
            }
            if slot.online.is_some() {
                if mode == Live::HandOver && delivery.seq.is_none() {
                    // Saves finding the session again, and a copy of the delivery, for
                    // every subscriber of a fan-out.
                    hand_over(slot, delivery, &self.metrics);
                } else {
                    live.push((id, delivery));
                }
            }
        }
        self.scratch_targets = targets;
        matched
    }

    fn send_live(&mut self, id: SessionId, delivery: Delivery) {
        if let Some(slot) = self.sessions.get_mut(&id) {
            hand_over(slot, delivery, &self.metrics);
        }
    }

    fn retain(&mut self, message: &Arc<Message>, ops: &mut Vec<Op>) {
        let topic = message.topic.to_string();
        if is_sys_topic(&topic) {
            // Only the `$SYS` publisher gets here (clients are refused in `handle` and
            // `route`). Its values are rewritten every few seconds and recomputed after a
            // restart: memory only, and outside `max_retained_messages`, so that a full
            // store of client messages cannot hide them.
            self.retained.insert(&topic, message.clone());
            return;
        }
        if message.payload.is_empty() {
            if self.retained.remove(&topic).is_some() {
                ops.push(Op::DeleteRetained { topic });
            }
            return;
        }
        if self.retained.get(&topic).is_none()
            && self.retained.len() >= self.limits.max_retained_messages
        {
            tracing::warn!(%topic, "retained store full, message not retained");
            return;
        }
        let mut stored = (**message).clone();
        stored.origin = None;
        ops.push(Op::PutRetained {
            topic: topic.clone(),
            message: stored.to_stored(),
        });
        self.retained.insert(&topic, Arc::new(stored));
    }

    async fn subscribe(&mut self, id: SessionId, subscribe: Subscribe) -> SubscribeReply {
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        let identifier = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let Some(slot) = self.sessions.get_mut(&id) else {
            return SubscribeReply {
                reasons: vec![ReasonCode::UnspecifiedError; subscribe.filters.len()],
                retained,
            };
        };
        let now = now_ms();
        for (filter, options) in subscribe.filters {
            let levels = filter.split('/').count();
            if levels > self.limits.max_topic_levels {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let is_new = !slot.subscriptions.contains_key(&*filter);
            if is_new && slot.subscriptions.len() >= self.limits.max_subscriptions_per_session {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let subscription = Subscription {
                options,
                identifier,
            };
            self.subscriptions
                .subscribe(id, &filter, subscription.clone());
            slot.subscriptions.insert(filter.to_string(), subscription);
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            let send_retained = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtSubscribeIfNew => is_new,
                RetainHandling::DoNotSend => false,
            };
            // Retained messages are not sent for shared subscriptions [MQTT-3.8.4-?]: a
            // group member is a worker, not a viewer of the topic's state.
            if send_retained && tern_codec::topic::split_shared(&filter).is_none() {
                self.retained.for_each_match(&filter, |_, message| {
                    if message.is_expired(now) {
                        return;
                    }
                    retained.push(Delivery {
                        message: message.clone(),
                        qos: options.qos.min(message.qos),
                        retain: true,
                        subscription_ids: identifier.into_iter().collect(),
                        seq: None,
                        dup: false,
                        released: false,
                    });
                });
            }
        }
        if slot.persistent {
            let op = Op::PutSession(slot.stored());
            self.writer.submit_detached(vec![op]).await;
        }
        SubscribeReply { reasons, retained }
    }

    async fn unsubscribe(&mut self, id: SessionId, unsubscribe: Unsubscribe) -> Vec<ReasonCode> {
        let Some(slot) = self.sessions.get_mut(&id) else {
            return vec![ReasonCode::UnspecifiedError; unsubscribe.filters.len()];
        };
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                self.subscriptions.unsubscribe(&id, filter);
                if slot.subscriptions.remove(&**filter).is_some() {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        if slot.persistent {
            let op = Op::PutSession(slot.stored());
            self.writer.submit_detached(vec![op]).await;
        }
        reasons
    }

    async fn disconnected(
        &mut self,
        id: SessionId,
        conn: ConnId,
        will: Option<WillRequest>,
        expiry_secs: Option<u32>,
        sent: Vec<u64>,
    ) {
        let current = self
            .sessions
            .get(&id)
            .and_then(|s| s.online.as_ref())
            .is_some_and(|o| o.id == conn);
        let mut ops = Vec::new();
        if !current {
            // A connection that was taken over. If its session lives on with the new
            // connection, only an immediate will is published; if the takeover ended the
            // session (clean start), the will is due now [MQTT-3.1.2-8].
            let session_lives = self.sessions.contains_key(&id);
            if let Some(will) = will.filter(|w| w.delay_secs == 0 || !session_lives) {
                self.route(&will.message, ops, false).await;
            }
            return;
        }
        let Some(slot) = self.sessions.get_mut(&id) else {
            return;
        };
        slot.online = None;
        self.online -= 1;
        slot.away().sent = sent;
        if let Some(expiry) = expiry_secs {
            slot.expiry_secs = expiry;
        }
        let mut will_now = None;
        if slot.expiry_secs == 0 {
            let pending = self.remove_session(id, &mut ops);
            will_now = will.map(|w| w.message).or(pending);
        } else {
            let now = now_ms();
            slot.away().disconnected_at_ms = Some(now);
            if slot.expiry_secs != u32::MAX {
                let at = Instant::now() + Duration::from_secs(u64::from(slot.expiry_secs));
                slot.away().expires_at = Some(at);
                self.timers.insert((at, id, TimerKind::Expiry));
            }
            if let Some(will) = will {
                // The will waits for its delay, but never past the session's end.
                let delay = will.delay_secs.min(slot.expiry_secs);
                if delay == 0 {
                    will_now = Some(will.message);
                } else {
                    let at = Instant::now() + Duration::from_secs(u64::from(delay));
                    slot.away().will = Some((at, will.message));
                    self.timers.insert((at, id, TimerKind::Will));
                }
            }
            if slot.persistent {
                ops.push(Op::PutSession(slot.stored()));
            }
        }
        match will_now {
            Some(will) => {
                self.route(&will, ops, false).await;
            }
            None if !ops.is_empty() => self.writer.submit_detached(ops).await,
            None => {}
        }
    }

    async fn fire_timers(&mut self) {
        let now = Instant::now();
        let mut ops = Vec::new();
        while let Some(&(at, id, kind)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if kind == TimerKind::Sweep {
                self.sweep(&mut ops);
                self.timers
                    .insert((Instant::now() + SWEEP_INTERVAL, 0, TimerKind::Sweep));
                continue;
            }
            let Some(slot) = self.sessions.get_mut(&id) else {
                continue;
            };
            match kind {
                TimerKind::Sweep => {}
                TimerKind::Will => {
                    if let Some((will_at, will)) =
                        slot.away.as_mut().and_then(|away| away.will.take())
                    {
                        if will_at == at {
                            self.route(&will, Vec::new(), false).await;
                        } else {
                            slot.away().will = Some((will_at, will));
                        }
                    }
                }
                TimerKind::Expiry => {
                    if slot.expires_at() == Some(at) && slot.online.is_none() {
                        tracing::debug!(client_id = %slot.client_id, "session expired");
                        if let Some(will) = self.remove_session(id, &mut ops) {
                            self.route(&will, std::mem::take(&mut ops), false).await;
                        }
                    }
                }
            }
        }
        if !ops.is_empty() {
            self.writer.submit_detached(ops).await;
        }
    }

    fn shutdown(&mut self) {
        self.stopped = true;
        for slot in self.sessions.values_mut() {
            if let Some(mut online) = slot.online.take() {
                online
                    .postbox
                    .close(CloseReason::new(ReasonCode::ServerShuttingDown, ""));
            }
        }
        self.online = 0;
    }

    /// Counts and logs a client's publish or will on `$SYS`, which is refused.
    fn refuse_sys(&self, message: &Message) {
        self.metrics.publish_refused(PublishRefusal::SystemTopic);
        tracing::info!(topic = %message.topic, "publish refused: $SYS topics are the broker's");
    }

    fn stats(&self) -> RouterStats {
        // The running counts must match a full walk; checked where it is affordable.
        debug_assert_eq!(
            self.online,
            self.sessions
                .values()
                .filter(|s| s.online.is_some())
                .count(),
            "online sessions"
        );
        debug_assert_eq!(
            self.offline_queued,
            self.sessions
                .values()
                .map(|s| u64::from(s.offline_queued()))
                .sum::<u64>(),
            "offline queued messages"
        );
        RouterStats {
            sessions: self.sessions.len(),
            connected: self.online,
            subscriptions: self.subscriptions.len(),
            retained: self.retained.len(),
            queued: self.offline_queued,
        }
    }
}

fn inbound_qos2_op(inbound_qos2: Option<(ArcStr, u16)>) -> Vec<Op> {
    inbound_qos2
        .map(|(client_id, packet_id)| Op::PutInboundQos2 {
            client_id: client_id.to_string(),
            packet_id,
        })
        .into_iter()
        .collect()
}

/// One subscription matching a message, before a session's overlapping ones are merged.
struct Target {
    session: SessionId,
    qos: QoS,
    retain_as_published: bool,
    identifier: Option<u32>,
}

impl Target {
    fn new(session: SessionId, subscription: &Subscription) -> Target {
        Target {
            session,
            qos: subscription.options.qos,
            retain_as_published: subscription.options.retain_as_published,
            identifier: subscription.identifier,
        }
    }
}

/// What [`Router::plan`] does with deliveries to sessions that are online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    /// Every one goes into `live`, for the caller.
    Collect,
    /// Those without a durable queue entry go to their connections at once.
    HandOver,
}

/// Hands a live delivery to a session's connection, if it has one: into its mailbox, or,
/// when that is full, the spec's and the session's answer to a consumer that cannot keep
/// up.
fn hand_over(slot: &mut Slot, delivery: Delivery, metrics: &Metrics) {
    let Some(online) = &mut slot.online else {
        return;
    };
    let stored = delivery.seq.is_some();
    let qos = delivery.qos;
    // Broadcasts never come here: `route` hands them to `route_broadcast`.
    match online.postbox.deliver(delivery) {
        Ok(()) => {}
        // The connection reads it from storage when it resyncs (a stored delivery that
        // did not fit made the mailbox lagged).
        Err(Refused::Lagged) => {}
        Err(Refused::Full) if stored => {}
        Err(Refused::Full) if qos == QoS::AtMostOnce => {
            // A slow consumer loses its QoS 0 messages first.
            metrics.dropped(DropReason::OutboundFull);
            tracing::debug!(client_id = %slot.client_id, "mailbox full, QoS 0 message dropped");
        }
        Err(Refused::Full) => {
            // A QoS 1/2 message that has nowhere to wait (no durable queue): rather
            // than lose it silently, the consumer that cannot keep up is disconnected.
            metrics.dropped(DropReason::SlowConsumer);
            if !online.postbox.is_closing() {
                metrics.slow_consumer_disconnected();
                tracing::info!(client_id = %slot.client_id, "slow consumer: its queues are full, disconnecting it");
                online.postbox.close(CloseReason::new(
                    ReasonCode::QuotaExceeded,
                    "slow consumer: too many messages waiting for this client",
                ));
            }
        }
        // The connection is closing; its Disconnected command is on its way.
        Err(Refused::Closed) => {}
    }
}

/// Merges the run of `targets` (sorted by session) starting at `*index` and moves past it.
/// Overlapping subscriptions of one session give one copy with the highest QoS and every
/// matching subscription identifier [MQTT-3.3.4-2, 3.3.4-3].
fn merge_session(targets: &[Target], index: &mut usize) -> (QoS, bool, Vec<u32>) {
    let session = targets[*index].session;
    let mut merged = (QoS::AtMostOnce, false, Vec::new());
    while let Some(t) = targets.get(*index).filter(|t| t.session == session) {
        merged.0 = merged.0.max(t.qos);
        merged.1 |= t.retain_as_published;
        if let Some(id) = t.identifier {
            merged.2.push(id);
        }
        *index += 1;
    }
    merged
}

/// One member of a shared subscription group per message, round robin, preferring members
/// that are online (an offline member's queue would hold the message back).
fn pick_member<'a>(
    sessions: &FxHashMap<SessionId, Box<Slot>>,
    cursors: &mut HashMap<String, usize>,
    group: &str,
    filter: &str,
    members: &'a [(SessionId, Subscription)],
) -> Option<&'a (SessionId, Subscription)> {
    if members.is_empty() {
        return None;
    }
    let cursor = cursors.entry(format!("{group}/{filter}")).or_insert(0);
    let start = *cursor;
    let n = members.len();
    let online = |m: &(SessionId, Subscription)| {
        sessions.get(&m.0).is_some_and(|slot| slot.online.is_some())
    };
    let pick = (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| online(&members[i]))
        .unwrap_or(start % n);
    *cursor = (pick + 1) % n;
    members.get(pick)
}

/// Sleeps until `at`, or forever without a deadline (a disabled `select!` timer).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! Router behaviour on the in-memory store: no sockets, no RocksDB.
    use super::*;
    use bytes::Bytes;
    use tern_codec::{ByteString, Properties};
    use tern_storage::{MemoryStore, Store, SyncPolicy};

    /// Every session has its slot, connected or not: it stays within jemalloc's 80-byte
    /// size class (the binary's allocator; thin `ArcStr` names, and the offline count
    /// in `Away`).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_session_slot_fits_an_80_byte_allocation() {
        let size = std::mem::size_of::<Slot>();
        assert!(size <= 80, "Slot is {size} bytes");
    }

    struct Harness {
        router: RouterHandle,
        store: Arc<MemoryStore>,
        writer: Writer,
        metrics: Arc<Metrics>,
    }

    impl Harness {
        /// Stops the router and waits until every write it queued is applied.
        async fn stop(&self) {
            self.router
                .call(|reply| Command::Shutdown { reply })
                .await
                .ok();
            self.writer.barrier().await.expect("writes applied");
        }
    }

    fn limits() -> RouterLimits {
        RouterLimits {
            max_topic_levels: 8,
            max_subscriptions_per_session: 10,
            max_queued_messages: 3,
            max_retained_messages: 2,
            im: ImConfig {
                max_devices_per_user: 2,
                ..ImConfig::default()
            },
        }
    }

    fn start_on(store: Arc<MemoryStore>) -> Harness {
        let writer = Writer::start(store.clone(), SyncPolicy::Always, 64);
        let metrics = Arc::new(Metrics::new());
        let router = Router::load(limits(), writer.clone())
            .expect("load")
            .with_metrics(metrics.clone());
        let (router, _task) = router.spawn(64);
        Harness {
            router,
            store,
            writer,
            metrics,
        }
    }

    fn start() -> Harness {
        start_on(Arc::new(MemoryStore::new()))
    }

    struct Client {
        attached: Attached,
        /// Kept open (its broadcast lane fills when not read).
        mailbox: Mailbox,
    }

    async fn connect(h: &Harness, id: &str, clean_start: bool, expiry_secs: u32) -> Client {
        connect_as(h, id, id, clean_start, expiry_secs).await
    }

    async fn connect_as(
        h: &Harness,
        user: &str,
        id: &str,
        clean_start: bool,
        expiry_secs: u32,
    ) -> Client {
        connect_with(
            h,
            ConnectRequest::for_test(user, id, clean_start, expiry_secs, 8, 8),
        )
        .await
    }

    async fn connect_with(h: &Harness, (request, mailbox): (ConnectRequest, Mailbox)) -> Client {
        let attached = h
            .router
            .call(|reply| Command::Connect { request, reply })
            .await
            .expect("router")
            .expect("attached");
        Client { attached, mailbox }
    }

    async fn subscribe(h: &Harness, c: &Client, filter: &str, qos: QoS) -> SubscribeReply {
        let subscribe = Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                ByteString::from(filter),
                SubscriptionOptions {
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribe,
                },
            )],
        };
        let session = c.attached.session;
        h.router
            .call(|reply| Command::Subscribe {
                session,
                subscribe,
                reply,
            })
            .await
            .expect("router")
    }

    async fn disconnect(h: &Harness, c: Client) {
        h.router
            .send(Command::Disconnected {
                session: c.attached.session,
                conn: c.attached.conn,
                will: None,
                expiry_secs: None,
                sent: vec![],
            })
            .await
            .expect("router");
    }

    fn message(topic: &str, qos: QoS, retain: bool, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: ByteString::from(topic),
            payload: Bytes::from_static(payload),
            qos,
            retain,
            properties: Properties::default(),
            expires_at_ms: None,
            origin: None,
            received_at: None,
        })
    }

    async fn publish(h: &Harness, m: Arc<Message>) -> bool {
        let routed = h
            .router
            .call(|reply| Command::Publish {
                message: m,
                inbound_qos2: None,
                reply: Some(reply),
            })
            .await
            .expect("router");
        routed.durable.await.expect("durable");
        routed.matched
    }

    fn payloads(mailbox: &mut Mailbox) -> Vec<Bytes> {
        std::iter::from_fn(|| mailbox.pop_chat())
            .map(|d| d.message.payload.clone())
            .collect()
    }

    #[tokio::test]
    async fn a_publish_is_routed_on_the_callers_task_when_nothing_is_queued() {
        let h = start();
        let mut c = connect(&h, "dev", true, 0).await;
        subscribe(&h, &c, "chat/#", QoS::AtLeastOnce).await;
        let first = message("chat/a", QoS::AtLeastOnce, false, b"1");
        let routed = h
            .router
            .try_publish(&first, &None, true)
            .expect("routed at once: the queue is empty");
        assert!(routed.matched);
        assert_eq!(routed.refused, None);
        // Delivered before the router task ran again (this runtime has one thread and the
        // test has not yielded since).
        assert_eq!(payloads(&mut c.mailbox), [Bytes::from_static(b"1")]);
        // Not for `$SYS` (refused by the router task) nor broadcasts (fanned out there).
        let sys = message("$SYS/x", QoS::AtMostOnce, false, b"s");
        assert!(h.router.try_publish(&sys, &None, false).is_none());
        h.stop().await;
    }

    #[tokio::test]
    async fn a_publish_goes_through_the_queue_while_the_router_is_busy() {
        let h = start();
        let mut c = connect(&h, "dev", true, 0).await;
        subscribe(&h, &c, "chat/#", QoS::AtLeastOnce).await;
        // In the queue, not handled yet (the test has not yielded to the router task).
        h.router
            .send(Command::Publish {
                message: message("chat/a", QoS::AtMostOnce, false, b"1"),
                inbound_qos2: None,
                reply: None,
            })
            .await
            .expect("router");
        let second = message("chat/a", QoS::AtMostOnce, false, b"2");
        assert!(
            h.router.try_publish(&second, &None, false).is_none(),
            "the router is not idle: a command waits in its queue"
        );
        assert!(publish(&h, second).await);
        assert_eq!(
            payloads(&mut c.mailbox),
            [Bytes::from_static(b"1"), Bytes::from_static(b"2")]
        );
        // The queue is empty again: routed at once.
        let third = message("chat/a", QoS::AtMostOnce, false, b"3");
        assert!(h.router.try_publish(&third, &None, false).is_some());
        assert_eq!(payloads(&mut c.mailbox), [Bytes::from_static(b"3")]);
        h.stop().await;
        let late = message("chat/a", QoS::AtMostOnce, false, b"4");
        assert!(
            h.router.try_publish(&late, &None, false).is_none(),
            "the router has shut down"
        );
    }

    #[tokio::test]
    async fn a_publish_routed_at_once_is_durable_for_offline_sessions() {
        let h = start();
        let c = connect(&h, "dev", false, 3600).await;
        subscribe(&h, &c, "chat/#", QoS::AtLeastOnce).await;
        disconnect(&h, c).await;
        // Let the router handle the disconnect (the fast path waits for an empty queue).
        let _ = stats(&h).await;
        let first = message("chat/a", QoS::AtLeastOnce, false, b"1");
        let routed = h
            .router
            .try_publish(&first, &None, true)
            .expect("routed at once");
        assert!(routed.matched);
        routed.durable.await.expect("durable");
        let queued = h.store.queue("dev", 0, 10).expect("queue");
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].1.message.payload, Bytes::from_static(b"1"));
        h.stop().await;
    }

    #[tokio::test]
    async fn offline_persistent_session_queues_durably_and_in_order() {
        let h = start();
        let c = connect(&h, "dev", false, 3600).await;
        subscribe(&h, &c, "chat/#", QoS::AtLeastOnce).await;
        disconnect(&h, c).await;
        for payload in [&b"1"[..], b"2", b"3"] {
            assert!(publish(&h, message("chat/a", QoS::ExactlyOnce, false, payload)).await);
        }
        // Acknowledged means stored: the durable resolved after the writes.
        let queued = h.store.queue("dev", 0, 10).unwrap();
        let payloads: Vec<_> = queued
            .iter()
            .map(|(_, q)| q.message.payload.clone())
            .collect();
        assert_eq!(payloads, [&b"1"[..], b"2", b"3"]);
        assert!(queued.iter().all(|(_, q)| q.message.qos == 1), "min(2, 1)");
        // A fourth exceeds max_queued_messages (3) and is dropped, not stored.
        publish(&h, message("chat/a", QoS::AtLeastOnce, false, b"4")).await;
        assert_eq!(h.store.queue("dev", 0, 10).unwrap().len(), 3);
        // Reconnecting resumes the session and points at the stored backlog.
        let c = connect(&h, "dev", false, 3600).await;
        assert!(c.attached.session_present);
        assert_eq!(c.attached.backlog_upto, Some(3));
    }

    #[tokio::test]
    async fn non_persistent_sessions_store_nothing_and_end_with_the_connection() {
        let h = start();
        let mut c = connect(&h, "tmp", true, 0).await;
        subscribe(&h, &c, "t", QoS::AtLeastOnce).await;
        assert!(publish(&h, message("t", QoS::AtLeastOnce, false, b"x")).await);
        assert!(matches!(c.mailbox.recv_chat().await, Some(d) if d.seq.is_none()));
        assert!(h.store.sessions().unwrap().is_empty());
        disconnect(&h, c).await;
        assert!(!publish(&h, message("t", QoS::AtLeastOnce, false, b"y")).await);
    }

    #[tokio::test]
    async fn takeover_closes_the_old_connection_and_keeps_the_session() {
        let h = start();
        let mut first = connect(&h, "dev", false, 60).await;
        subscribe(&h, &first, "t", QoS::AtMostOnce).await;
        let mut second = connect(&h, "dev", false, 60).await;
        assert_eq!(
            first.mailbox.closed().await.code,
            ReasonCode::SessionTakenOver
        );
        assert!(second.attached.session_present);
        // The old connection's late goodbye must not take the session offline.
        disconnect(&h, first).await;
        assert!(publish(&h, message("t", QoS::AtMostOnce, false, b"x")).await);
        assert!(second.mailbox.recv_chat().await.is_some());
    }

    #[tokio::test]
    async fn sessions_are_found_by_client_id_as_the_index_grows_and_shrinks() {
        let h = start();
        let ids: Vec<String> = (0..200).map(|i| format!("dev-{i}")).collect();
        for id in &ids {
            let c = connect(&h, id, false, 60).await;
            disconnect(&h, c).await;
        }
        // Every other session ends: a clean start without expiry replaces it, and its
        // disconnect removes it.
        for id in ids.iter().step_by(2) {
            let c = connect(&h, id, true, 0).await;
            assert!(!c.attached.session_present, "{id}");
            disconnect(&h, c).await;
        }
        for (i, id) in ids.iter().enumerate() {
            let c = connect(&h, id, false, 60).await;
            assert_eq!(c.attached.session_present, i % 2 == 1, "{id}");
            disconnect(&h, c).await;
        }
    }

    #[tokio::test]
    async fn clean_start_discards_the_stored_session() {
        let h = start();
        let c = connect(&h, "dev", false, 60).await;
        subscribe(&h, &c, "t", QoS::AtLeastOnce).await;
        disconnect(&h, c).await;
        publish(&h, message("t", QoS::AtLeastOnce, false, b"x")).await;
        let c = connect(&h, "dev", true, 60).await;
        assert!(!c.attached.session_present);
        h.stop().await;
        // Stored state was replaced: no queue, no subscriptions.
        let stored = h.store.session("dev").unwrap().expect("new session stored");
        assert!(stored.session.subscriptions.is_empty());
        assert!(h.store.queue("dev", 0, 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn shared_subscription_gives_each_message_to_one_member() {
        let h = start();
        let mut a = connect(&h, "a", true, 0).await;
        let mut b = connect(&h, "b", true, 0).await;
        subscribe(&h, &a, "$share/g/jobs", QoS::AtMostOnce).await;
        subscribe(&h, &b, "$share/g/jobs", QoS::AtMostOnce).await;
        for _ in 0..4 {
            publish(&h, message("jobs", QoS::AtMostOnce, false, b"j")).await;
        }
        let count = |mailbox: &mut Mailbox| std::iter::from_fn(|| mailbox.pop_chat()).count();
        assert_eq!((count(&mut a.mailbox), count(&mut b.mailbox)), (2, 2));
    }

    #[tokio::test]
    async fn overlapping_subscriptions_of_several_sessions_give_each_one_copy() {
        let h = start();
        let mut clients = Vec::new();
        for id in ["a", "b", "c", "d"] {
            let c = connect(&h, id, true, 0).await;
            subscribe(&h, &c, "t/#", QoS::AtMostOnce).await;
            clients.push(c);
        }
        // Two of them also through `t/+`, one at a higher QoS: their matches interleave
        // with the others' and must still be merged, one copy at the highest QoS.
        subscribe(&h, &clients[1], "t/+", QoS::AtLeastOnce).await;
        subscribe(&h, &clients[3], "t/+", QoS::AtMostOnce).await;
        publish(&h, message("t/x", QoS::AtLeastOnce, false, b"m")).await;
        let received: Vec<Vec<QoS>> = clients
            .iter_mut()
            .map(|c| {
                std::iter::from_fn(|| c.mailbox.pop_chat())
                    .map(|d| d.qos)
                    .collect()
            })
            .collect();
        use QoS::{AtLeastOnce, AtMostOnce};
        assert_eq!(
            received,
            [
                vec![AtMostOnce],
                vec![AtLeastOnce],
                vec![AtMostOnce],
                vec![AtMostOnce]
            ]
        );
    }

    #[tokio::test]
    async fn retained_store_replace_delete_and_limit_survive_reload() {
        let store = Arc::new(MemoryStore::new());
        let h = start_on(store.clone());
        publish(&h, message("r/1", QoS::AtLeastOnce, true, b"old")).await;
        publish(&h, message("r/1", QoS::AtLeastOnce, true, b"new")).await;
        publish(&h, message("r/2", QoS::AtLeastOnce, true, b"two")).await;
        // The store holds at most 2 topics: a third is delivered but not retained.
        publish(&h, message("r/3", QoS::AtLeastOnce, true, b"three")).await;
        publish(&h, message("r/2", QoS::AtLeastOnce, true, b"")).await;
        h.stop().await;
        let h = start_on(store);
        let c = connect(&h, "viewer", true, 0).await;
        let reply = subscribe(&h, &c, "r/#", QoS::AtLeastOnce).await;
        let got: Vec<_> = reply
            .retained
            .iter()
            .map(|d| {
                (
                    d.message.topic.to_string(),
                    d.message.payload.clone(),
                    d.retain,
                )
            })
            .collect();
        assert_eq!(got, [("r/1".to_string(), Bytes::from_static(b"new"), true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_session_is_removed_and_its_delayed_will_published() {
        let h = start();
        let mut watcher = connect(&h, "watcher", true, 0).await;
        subscribe(&h, &watcher, "will/#", QoS::AtMostOnce).await;
        let c = connect(&h, "dev", false, 5).await;
        h.router
            .send(Command::Disconnected {
                session: c.attached.session,
                conn: c.attached.conn,
                will: Some(WillRequest {
                    message: message("will/dev", QoS::AtMostOnce, false, b"gone"),
                    delay_secs: 3600,
                }),
                expiry_secs: None,
                sent: vec![],
            })
            .await
            .unwrap();
        // The will waits for min(delay, expiry) = 5 s; paused time jumps there.
        let Some(will) = watcher.mailbox.recv_chat().await else {
            panic!("will not published")
        };
        assert_eq!(will.message.payload, Bytes::from_static(b"gone"));
        let c = connect(&h, "dev", false, 5).await;
        assert!(!c.attached.session_present, "session expired with its will");
    }

    // ---- IM: direct and group messages, the inbox rule, devices ----

    async fn chat(h: &Harness, from: &str, topic: &str, msgid: Option<&str>) -> Routed {
        let mut message = (*message(topic, QoS::AtLeastOnce, false, b"hello")).clone();
        if let Some(id) = msgid {
            message
                .properties
                .user_properties
                .push(("msgid".into(), id.into()));
        }
        // A claimed sender is replaced by the authenticated one.
        message
            .properties
            .user_properties
            .push(("from".into(), "mallory".into()));
        let chat = Box::new(ChatPublish {
            from: ArcStr::from(from),
            message,
            inbound_qos2: None,
        });
        let routed = h
            .router
            .call(|reply| Command::Chat {
                chat,
                reply: Some(reply),
            })
            .await
            .expect("router");
        routed
    }

    fn inbox(mailbox: &mut Mailbox) -> Vec<(String, String, String)> {
        std::iter::from_fn(|| mailbox.pop_chat())
            .map(|d| {
                let prop = |k: &str| {
                    crate::im::inbox::user_property(&d.message, k)
                        .unwrap_or_default()
                        .to_string()
                };
                (d.message.topic.to_string(), prop("from"), prop("seq"))
            })
            .collect()
    }

    fn row(topic: &str, from: &str, seq: &str) -> (String, String, String) {
        (topic.to_string(), from.to_string(), seq.to_string())
    }

    #[tokio::test]
    async fn a_users_devices_share_one_copy_of_its_name() {
        let h = start();
        let phone = connect_as(&h, "bob", "bob-phone", true, 0).await;
        let laptop = connect_as(&h, "bob", "bob-laptop", true, 0).await;
        let alice = connect_as(&h, "alice", "alice-phone", true, 0).await;
        assert_eq!(&*laptop.attached.user, "bob");
        assert!(ArcStr::ptr_eq(&phone.attached.user, &laptop.attached.user));
        assert!(!ArcStr::ptr_eq(&phone.attached.user, &alice.attached.user));
        // Taking a session over hands back the same name too.
        let phone_again = connect_as(&h, "bob", "bob-phone", false, 0).await;
        assert!(ArcStr::ptr_eq(
            &phone_again.attached.user,
            &laptop.attached.user
        ));
    }

    #[tokio::test]
    async fn a_direct_message_reaches_every_device_of_both_users_and_nobody_else() {
        let h = start();
        let mut bob_phone = connect_as(&h, "bob", "bob-phone", true, 0).await;
        let mut bob_laptop = connect_as(&h, "bob", "bob-laptop", true, 0).await;
        let _alice_phone = connect_as(&h, "alice", "alice-phone", true, 0).await;
        let mut alice_laptop = connect_as(&h, "alice", "alice-laptop", true, 0).await;
        let mut carol = connect_as(&h, "carol", "carol", true, 0).await;
        for c in [&bob_phone, &bob_laptop] {
            subscribe(&h, c, "inbox/bob/#", QoS::AtLeastOnce).await;
        }
        subscribe(&h, &alice_laptop, "inbox/alice/#", QoS::AtLeastOnce).await;
        subscribe(&h, &carol, "#", QoS::AtLeastOnce).await;

        let routed = chat(&h, "alice", "dm/bob", None).await;
        assert_eq!(routed.refused, None);
        routed.durable.await.expect("durable");
        chat(&h, "alice", "dm/bob", None).await;
        h.writer.barrier().await.expect("applied");

        let expected = vec![
            row("inbox/bob/dm/alice", "alice", "0"),
            row("inbox/bob/dm/alice", "alice", "1"),
        ];
        assert_eq!(inbox(&mut bob_phone.mailbox), expected);
        assert_eq!(inbox(&mut bob_laptop.mailbox), expected);
        assert_eq!(
            inbox(&mut alice_laptop.mailbox),
            vec![
                row("inbox/alice/sent/bob", "alice", "0"),
                row("inbox/alice/sent/bob", "alice", "1"),
            ]
        );
        assert!(
            inbox(&mut carol.mailbox).is_empty(),
            "'#' must not reach into other users' inboxes"
        );
        // Stored once, indexed twice per message.
        let log = h.store.inbox("bob", 0, 10).expect("inbox");
        assert_eq!(
            log.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>(),
            [0, 1]
        );
        assert!(log.iter().all(|(_, _, m)| m.is_some()));
        assert_eq!(h.store.inbox_bounds("alice").expect("bounds"), (0, 2));
    }

    #[tokio::test]
    async fn group_messages_reach_offline_members_by_reference_and_refuse_outsiders() {
        let h = start();
        let change = GroupChange::Create {
            gid: "g1".into(),
            members: vec!["alice".into(), "bob".into()],
        };
        h.router
            .call(|reply| Command::ChangeGroup { change, reply })
            .await
            .expect("router")
            .expect("created")
            .await
            .expect("durable");
        // bob's persistent session is offline.
        let bob = connect_as(&h, "bob", "bob-phone", false, 3600).await;
        subscribe(&h, &bob, "inbox/bob/#", QoS::AtLeastOnce).await;
        disconnect(&h, bob).await;

        let outsider = chat(&h, "mallory", "group/g1", None).await;
        assert_eq!(outsider.refused, Some(ReasonCode::NotAuthorized));
        let unknown = chat(&h, "alice", "group/nope", None).await;
        assert_eq!(unknown.refused, Some(ReasonCode::NotAuthorized));
        let routed = chat(&h, "alice", "group/g1", None).await;
        assert_eq!(routed.refused, None);
        routed.durable.await.expect("durable");

        let queued = h.store.queue("bob-phone", 0, 10).expect("queue");
        assert_eq!(queued.len(), 1);
        let (_, entry) = &queued[0];
        assert_eq!(entry.message.topic, "inbox/bob/group/g1/alice");
        assert_eq!(
            &entry.message.payload[..],
            b"hello",
            "payload resolved by reference"
        );
        assert_eq!(entry.message_ref, None);
        assert_eq!(h.store.inbox_bounds("alice").expect("bounds"), (0, 1));
        assert_eq!(h.store.inbox_bounds("mallory").expect("bounds"), (0, 0));
    }

    #[tokio::test]
    async fn a_resent_msgid_is_acknowledged_and_dropped() {
        let h = start();
        let mut bob = connect_as(&h, "bob", "bob", true, 0).await;
        subscribe(&h, &bob, "inbox/bob/#", QoS::AtLeastOnce).await;
        for _ in 0..2 {
            let routed = chat(&h, "alice", "dm/bob", Some("m-1")).await;
            assert_eq!(routed.refused, None);
            assert!(routed.matched);
        }
        chat(&h, "carol", "dm/bob", Some("m-1")).await;
        h.writer.barrier().await.expect("applied");
        assert_eq!(
            inbox(&mut bob.mailbox),
            vec![
                row("inbox/bob/dm/alice", "alice", "0"),
                row("inbox/bob/dm/carol", "carol", "1"),
            ]
        );
    }

    #[tokio::test]
    async fn the_oldest_device_is_closed_past_the_limit() {
        let h = start(); // max_devices_per_user = 2
        let mut first = connect_as(&h, "bob", "one", true, 0).await;
        let mut second = connect_as(&h, "bob", "two", true, 0).await;
        let _other = connect_as(&h, "alice", "three", true, 0).await;
        assert!(first.mailbox.try_closed().is_none());
        let _third = connect_as(&h, "bob", "four", true, 0).await;
        let reason = first.mailbox.closed().await;
        assert_eq!(reason.code, ReasonCode::AdministrativeAction);
        assert!(reason.why.contains("bob"), "{}", reason.why);
        assert!(
            second.mailbox.try_closed().is_none(),
            "only the oldest goes"
        );
    }

    #[tokio::test]
    async fn another_users_client_id_is_refused() {
        let h = start();
        let _bob = connect_as(&h, "bob", "phone", false, 3600).await;
        let (request, _link) = ConnectRequest::for_test("mallory", "phone", true, 0, 1, 1);
        let attached = h
            .router
            .call(|reply| Command::Connect { request, reply })
            .await
            .expect("router");
        assert_eq!(attached.err(), Some(ReasonCode::NotAuthorized));
    }

    #[tokio::test]
    async fn inbox_logs_are_trimmed_to_the_configured_count() {
        let store = Arc::new(MemoryStore::new());
        let writer = Writer::start(store.clone(), SyncPolicy::Always, 64);
        let mut limits = limits();
        limits.im.inbox_max_messages = 10;
        let (router, _task) = Router::load(limits, writer.clone())
            .expect("load")
            .spawn(64);
        let h = Harness {
            router,
            store,
            writer,
            metrics: Arc::new(Metrics::new()),
        };
        for _ in 0..=chat::TRIM_EVERY {
            chat(&h, "alice", "dm/bob", None).await;
        }
        h.writer.barrier().await.expect("applied");
        // The 65th append (seq 64) trimmed everything below 64 + 1 - 10.
        assert_eq!(h.store.inbox_bounds("bob").expect("bounds"), (55, 65));
        let kept = h.store.inbox("bob", 0, 100).expect("inbox");
        assert_eq!(kept.len(), 10);
    }

    // ---- metrics and $SYS ----

    async fn stats(h: &Harness) -> RouterStats {
        h.router
            .call(|reply| Command::Stats { reply })
            .await
            .expect("router")
    }

    fn received(mailbox: &mut Mailbox) -> Vec<String> {
        std::iter::from_fn(|| mailbox.pop_chat())
            .map(|d| d.message.topic.to_string())
            .collect()
    }

    #[tokio::test]
    async fn drops_and_refusals_are_counted_by_reason() {
        let h = start(); // max_queued_messages = 3, mailboxes of 8
        let reader = connect(&h, "reader", true, 0).await;
        subscribe(&h, &reader, "t", QoS::AtMostOnce).await;
        let offline = connect(&h, "offline", false, 3600).await;
        subscribe(&h, &offline, "q", QoS::AtLeastOnce).await;
        disconnect(&h, offline).await;

        // Nobody reads `reader`'s channel: 8 fit, 2 are dropped.
        for _ in 0..10 {
            publish(&h, message("t", QoS::AtMostOnce, false, b"x")).await;
        }
        // The offline queue holds 3; 2 more are dropped.
        for _ in 0..5 {
            publish(&h, message("q", QoS::AtLeastOnce, false, b"x")).await;
        }
        assert_eq!(h.metrics.dropped_total(DropReason::OutboundFull), 2);
        assert_eq!(h.metrics.dropped_total(DropReason::QueueFull), 2);

        let refused = chat(&h, "mallory", "group/none", None).await;
        assert_eq!(refused.refused, Some(ReasonCode::NotAuthorized));
        assert_eq!(
            h.metrics.publishes_refused_total(PublishRefusal::NotMember),
            1
        );
        chat(&h, "alice", "dm/bob", Some("m-1")).await;
        chat(&h, "alice", "dm/bob", Some("m-1")).await;
        assert_eq!(h.metrics.dropped_total(DropReason::Duplicate), 1);
        assert_eq!(h.metrics.totals().dropped, 5);
        drop(reader);
    }

    #[tokio::test]
    async fn full_broadcast_lanes_are_counted() {
        let h = start();
        // A broadcast lane of 1 that is never read.
        let slow = connect_with(&h, ConnectRequest::for_test("slow", "slow", true, 0, 8, 1)).await;
        subscribe(&h, &slow, "broadcast/news", QoS::AtMostOnce).await;
        for _ in 0..3 {
            publish(&h, message("broadcast/news", QoS::AtMostOnce, false, b"x")).await;
        }
        // The fan-out runs on its own task.
        tokio::time::timeout(Duration::from_secs(5), async {
            while h.metrics.dropped_total(DropReason::BroadcastLaneFull) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("two broadcasts dropped");
        assert_eq!(h.metrics.dropped_total(DropReason::BroadcastLaneFull), 2);
    }

    #[tokio::test]
    async fn stats_follow_sessions_and_offline_queues() {
        let h = start();
        assert_eq!(stats(&h).await, RouterStats::default());
        let c = connect(&h, "dev", false, 3600).await;
        subscribe(&h, &c, "q/#", QoS::AtLeastOnce).await;
        let _other = connect(&h, "other", true, 0).await;
        publish(&h, message("r/1", QoS::AtLeastOnce, true, b"kept")).await;
        let taken = connect(&h, "dev", false, 3600).await; // takes the session over
        assert_eq!(
            stats(&h).await,
            RouterStats {
                sessions: 2,
                connected: 2,
                subscriptions: 1,
                retained: 1,
                queued: 0,
            }
        );
        disconnect(&h, c).await; // the old connection's goodbye changes nothing
        disconnect(&h, taken).await;
        publish(&h, message("q/a", QoS::AtLeastOnce, false, b"1")).await;
        publish(&h, message("q/b", QoS::AtLeastOnce, false, b"2")).await;
        let s = stats(&h).await;
        assert_eq!((s.sessions, s.connected, s.queued), (2, 1, 2));
        // Queued messages survive a restart, and are counted again.
        h.stop().await;
        let h = start_on(h.store.clone());
        let s = stats(&h).await;
        assert_eq!((s.sessions, s.connected, s.queued), (1, 0, 2));
        // Back online: the backlog is the connection's now.
        let c = connect(&h, "dev", false, 3600).await;
        let s = stats(&h).await;
        assert_eq!((s.connected, s.queued), (1, 0));
        // A session ending while online (clean start elsewhere) is no longer counted.
        let _again = connect(&h, "dev", true, 0).await;
        assert_eq!(stats(&h).await.connected, 1);
        drop(c);
    }

    fn sys(topic: &str, value: &'static [u8]) -> Arc<Message> {
        message(topic, QoS::AtMostOnce, true, value)
    }

    #[tokio::test]
    async fn sys_topics_are_the_brokers_and_stay_in_memory() {
        let h = start(); // max_retained_messages = 2
        let mut watcher = connect(&h, "watcher", true, 0).await;
        subscribe(&h, &watcher, "$SYS/#", QoS::AtLeastOnce).await;
        let mut everything = connect(&h, "everything", true, 0).await;
        subscribe(&h, &everything, "#", QoS::AtLeastOnce).await;
        // The retained store full of client messages does not keep $SYS out.
        publish(&h, message("r/1", QoS::AtMostOnce, true, b"1")).await;
        publish(&h, message("r/2", QoS::AtMostOnce, true, b"2")).await;
        assert_eq!(received(&mut everything.mailbox), ["r/1", "r/2"]);

        let messages = vec![
            sys("$SYS/broker/uptime", b"1 seconds"),
            sys("$SYS/broker/uptime", b"2 seconds"),
            sys("$SYS/broker/clients/connected", b"2"),
            sys("not/sys", b"ignored"),
        ];
        h.router
            .send(Command::SysPublish { messages })
            .await
            .expect("router");
        let s = stats(&h).await; // after the publish: the router handles commands in order
        assert_eq!(s.retained, 4);
        assert_eq!(
            received(&mut watcher.mailbox),
            [
                "$SYS/broker/uptime",
                "$SYS/broker/uptime",
                "$SYS/broker/clients/connected"
            ]
        );
        assert!(
            received(&mut everything.mailbox).is_empty(),
            "'#' does not match $SYS"
        );
        // Retained in memory, for the next subscriber; never written to storage.
        let late = connect(&h, "late", true, 0).await;
        let reply = subscribe(&h, &late, "$SYS/broker/+", QoS::AtMostOnce).await;
        let got: Vec<_> = reply
            .retained
            .iter()
            .map(|d| (d.message.topic.to_string(), d.message.payload.clone()))
            .collect();
        assert_eq!(
            got,
            [(
                "$SYS/broker/uptime".to_string(),
                Bytes::from_static(b"2 seconds")
            )]
        );
        h.writer.barrier().await.expect("applied");
        let stored: Vec<String> = h
            .store
            .retained()
            .expect("retained")
            .into_iter()
            .map(|(topic, _)| topic)
            .collect();
        assert_eq!(stored, ["r/1", "r/2"]);

        // Clients may not publish there, not even by will; other `$` topics are theirs.
        for topic in ["$SYS", "$SYS/broker/uptime"] {
            let routed = h
                .router
                .call(|reply| Command::Publish {
                    message: message(topic, QoS::AtLeastOnce, true, b"forged"),
                    inbound_qos2: None,
                    reply: Some(reply),
                })
                .await
                .expect("router");
            assert_eq!(routed.refused, Some(ReasonCode::NotAuthorized), "{topic}");
        }
        let dev = connect(&h, "dev", false, 60).await;
        h.router
            .send(Command::Disconnected {
                session: dev.attached.session,
                conn: dev.attached.conn,
                will: Some(WillRequest {
                    message: message("$SYS/broker/version", QoS::AtMostOnce, true, b"forged"),
                    delay_secs: 0,
                }),
                expiry_secs: None,
                sent: vec![],
            })
            .await
            .expect("router");
        stats(&h).await; // the will has been handled
        assert_eq!(
            h.metrics
                .publishes_refused_total(PublishRefusal::SystemTopic),
            3
        );
        assert!(received(&mut watcher.mailbox).is_empty());
        // The will's session still went offline and was stored as such.
        h.stop().await;
        let stored = h.store.session("dev").expect("read").expect("stored");
        assert!(stored.session.disconnected_at_ms.is_some());

        let h = start();
        let mut dollar = connect(&h, "dollar", true, 0).await;
        subscribe(&h, &dollar, "$app/#", QoS::AtMostOnce).await;
        assert!(publish(&h, message("$app/x", QoS::AtMostOnce, false, b"ok")).await);
        assert_eq!(received(&mut dollar.mailbox), ["$app/x"]);
        assert!(is_sys_topic("$SYS") && is_sys_topic("$SYS/"));
        assert!(!is_sys_topic("$SYSTEM/x") && !is_sys_topic("SYS/x"));
    }

    #[tokio::test]
    async fn a_stored_sys_message_is_not_loaded() {
        let store = Arc::new(MemoryStore::new());
        let stale = message("$SYS/broker/uptime", QoS::AtMostOnce, true, b"9 seconds");
        let op = Op::PutRetained {
            topic: "$SYS/broker/uptime".into(),
            message: stale.to_stored(),
        };
        store.write(&[op], true).expect("written");
        let h = start_on(store);
        assert_eq!(stats(&h).await.retained, 0);
    }
}
