//! The router: the one owner of who is subscribed to what, of the retained messages, of
//! every session's place (attached to a connection, or offline with a durable queue), and
//! of the chat state.
//!
//! Its state ([`core::Router`]) is changed only by synchronous handlers (one file per
//! concern: `sessions`, `routing`, `subscribe`, `chat`, `timers`, `inspect`) that never
//! wait: each returns its answer and leaves in an `Outcome` the storage operations and
//! the deliveries that must follow them. [`RouterHandle`] runs a handler on the caller's
//! own task: it first takes a place in the storage writer's queue (waiting there, with
//! nothing locked, when storage pushes back), then locks the state for the handler alone,
//! queues the handler's writes in that place and hands over the deliveries that waited
//! for them before it lets go. So the router's order is the order in which connections
//! reach it, its writes are queued in that same order, and a command costs no hop to
//! another task: a SUBSCRIBE the broker has read takes effect before a PUBLISH read after
//! it is routed. The only task of the router's own fires its timers ([`timers`]).
//!
//! The router never waits on a connection: a full mailbox ([`mailbox`]) drops QoS 0
//! (counted) and, for a persistent session, marks it *lagged*: its QoS > 0 messages are
//! in its durable queue, and the connection reads them back from storage once it has
//! caught up ([`RouterHandle::resync`]).
//!
//! `$SYS/...` belongs to the broker: client publishes and wills there are refused, and the
//! `$SYS` publisher's messages ([`sys`]) are retained in memory only.

mod adopt;
mod append_progress;
use append_progress::AppendProgress;
mod broadcast;
mod chat;
mod core;
mod index;
mod inspect;
pub(crate) mod mailbox;
mod peers;
mod presence;
mod reads;
mod retained;
mod routing;
mod sessions;
mod subscribe;
pub(crate) mod subscriptions;
pub(crate) mod sys;
mod timers;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arcstr::ArcStr;
use tern_codec::{QoS, ReasonCode, Subscribe, Unsubscribe};
use tern_storage::{Durable, Op, StorageError, Writer};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

pub(crate) use self::adopt::Covered;
pub(crate) use self::core::RouterLimits;
pub(crate) use self::core::{Forwarded, Outcome, Router};
pub(crate) use broadcast::MAX_BROADCASTS_IN_FLIGHT;
pub(crate) use inspect::SessionSummary;
pub(crate) use peers::{
    Cursors, Forward, InboxAppend, Interest, Kept, NodeLease, Peers, SessionChange, SessionChanges,
};
pub(crate) use presence::{contact_name, PresenceState};
pub(crate) use reads::ReadReport;
pub(crate) use routing::Routed;
pub(crate) use sessions::{Attached, ConnId, ConnectRequest, Detach};
pub(crate) use subscribe::SubscribeReply;

use crate::im::directory::{ChangeError, GroupChange};
use crate::metrics::RouterStats;
use crate::protocol::{Close, Message, SessionId};

/// The router takes no more work: the broker is stopping, or this cluster node lost its
/// lease (see [`NodeLease`]).
#[derive(Debug, thiserror::Error)]
#[error("the router has stopped")]
pub struct RouterGone;

/// The router, for every task that uses it; cheap to clone.
#[derive(Clone)]
pub struct RouterHandle {
    shared: Arc<SharedRouter>,
}

/// What every handle holds: the router's state behind its lock, and what running a
/// handler needs besides.
struct SharedRouter {
    router: Mutex<Router>,
    writer: Writer,
    /// Wakes the timer task when a handler added a deadline.
    timers: Notify,
    /// True once the router has shut down.
    stopped: watch::Sender<bool>,
    /// The other nodes, in a cluster.
    peers: Option<Peers>,
}

/// Whether a handler may write to storage, and whether its caller waits for the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    None,
    Detached,
    Awaited,
}

/// Whether a handler runs only while the node holds its lease (see [`NodeLease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    Checked,
    Ignored,
}

/// This node's appends to the cluster's message stream numbered before an adoption (see
/// `append_progress`).
pub(crate) struct AppendsBefore {
    next_append: u64,
    appends: Arc<AppendProgress>,
}

impl AppendsBefore {
    /// Waits until they are all over (kept, or refused to their publishers); `false` if
    /// that took longer than `within`.
    pub(crate) async fn over(&self, within: std::time::Duration) -> bool {
        self.appends.over_before(self.next_append, within).await
    }
}

impl RouterHandle {
    /// Starts the timer task for a loaded router; with `peers`, one node of a cluster.
    pub(crate) fn start(
        mut router: Router,
        writer: Writer,
        peers: Option<Peers>,
    ) -> (RouterHandle, tokio::task::JoinHandle<()>) {
        if let Some(peers) = &peers {
            // The filters of the sessions loaded from storage.
            peers
                .interest
                .record(router.subscriptions.take_interest_changes());
        }
        let handle = RouterHandle {
            shared: Arc::new(SharedRouter {
                router: Mutex::new(router),
                writer,
                timers: Notify::new(),
                stopped: watch::Sender::new(false),
                peers,
            }),
        };
        let task = tokio::spawn(timers::run(handle.clone()));
        (handle, task)
    }

    fn lock(&self) -> MutexGuard<'_, Router> {
        // A handler that panicked left no half-done await behind (there is none): the
        // state is as consistent as the handler left it, and the broker carries on.
        self.shared
            .router
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `handler` on this task (see the module's docs) and carries out its outcome.
    /// The returned [`Durable`] resolves once its writes are synced (with
    /// [`Writes::Awaited`]; otherwise at once).
    ///
    /// On a cluster node that lost its lease, it refuses: nothing more is routed,
    /// delivered or written for clients whose sessions other nodes may have taken over.
    async fn execute<T>(
        &self,
        writes: Writes,
        handler: impl FnOnce(&mut Router, &mut Outcome) -> T,
    ) -> Result<(T, Durable), RouterGone> {
        self.execute_as(Fence::Checked, writes, handler).await
    }

    /// [`execute`](Self::execute) for what a node does whether or not it holds its lease:
    /// a connection's end, expiries, operators' changes.
    async fn execute_unfenced<T>(
        &self,
        writes: Writes,
        handler: impl FnOnce(&mut Router, &mut Outcome) -> T,
    ) -> Result<(T, Durable), RouterGone> {
        self.execute_as(Fence::Ignored, writes, handler).await
    }

    async fn execute_as<T>(
        &self,
        fence: Fence,
        writes: Writes,
        handler: impl FnOnce(&mut Router, &mut Outcome) -> T,
    ) -> Result<(T, Durable), RouterGone> {
        // Routing is work for other connections: like the runtime's own resources, each
        // command takes a unit of the task's budget, so that a connection routing a flood
        // of publishes yields now and then to the connections it delivers to.
        tokio::task::consume_budget().await;
        let writer = &self.shared.writer;
        let place = match writes {
            Writes::None => None,
            Writes::Detached | Writes::Awaited => {
                Some(writer.reserve().await.map_err(|_| RouterGone)?)
            }
        };
        let (answer, mut durable, forward) = self.carry_out(fence, place, writes, handler)?;
        if let Some(peers) = &self.shared.peers {
            for Forwarded { message, append } in forward {
                // A kept (QoS > 0) message is acknowledged once the cluster keeps it too.
                let kept = match append {
                    Some(append) => {
                        let (done, stored) = tokio::sync::oneshot::channel();
                        durable = durable.and(Durable::waiting(stored));
                        Some(Kept { append, done })
                    }
                    None => None,
                };
                // The link ends only with the broker; a message it can no longer take
                // is one the other nodes would not have received either.
                let _ = peers.forward.send(Forward { message, kept }).await;
            }
        }
        Ok((answer, durable))
    }

    /// The part of [`execute`](Self::execute) under the lock: runs the handler, queues
    /// its writes in `place`, hands over the deliveries that waited for them, and returns
    /// the answer, the writes' durability and what goes to the other nodes.
    fn carry_out<T>(
        &self,
        fence: Fence,
        place: Option<tern_storage::Reserved<'_>>,
        writes: Writes,
        handler: impl FnOnce(&mut Router, &mut Outcome) -> T,
    ) -> Result<(T, Durable, Vec<Forwarded>), RouterGone> {
        let writer = &self.shared.writer;
        let mut router = self.lock();
        // Under the lock: the deliveries below are made only while the lease holds.
        if router.is_stopped() || (fence == Fence::Checked && self.lease_lapsed()) {
            return Err(RouterGone);
        }
        let mut out = Outcome::default();
        let answer = handler(&mut router, &mut out);
        let Outcome {
            ops,
            stored,
            fan_out,
            timers_changed,
            forward,
        } = out;
        let mut cluster_copies = Vec::new();
        if let Some(peers) = &self.shared.peers {
            let changes = router.subscriptions.take_interest_changes();
            if !changes.is_empty() {
                peers.interest.record(changes);
            }
            // In the router's order, like the writes: the cluster's copy of each
            // persistent session follows the stored one. An awaited change (a SUBACK's) is
            // acknowledged once the copy has it too.
            for op in &ops {
                match op {
                    Op::PutSession(session) => {
                        let written = (writes == Writes::Awaited).then(|| {
                            let (written, copied) = tokio::sync::oneshot::channel();
                            cluster_copies.push(Durable::waiting(copied));
                            written
                        });
                        peers.sessions.send(SessionChange::Stored {
                            session: session.clone(),
                            written,
                        })
                    }
                    Op::DeleteSession { client_id } => peers
                        .sessions
                        .send(SessionChange::Deleted(client_id.clone())),
                    _ => {}
                }
            }
        }
        let durable = match (place.or_else(|| unplanned_place(writer, &ops)), writes) {
            (Some(place), Writes::Awaited) => place.submit(ops),
            (Some(place), _) => {
                place.submit_detached(ops);
                Durable::ready()
            }
            (None, _) => Durable::ready(),
        };
        let durable = cluster_copies.into_iter().fold(durable, Durable::and);
        router.hand_over_stored(stored);
        // Cloned only for a fan-out: every command clones nothing shared.
        let fan_out = fan_out.map(|fan_out| (fan_out, router.metrics().clone()));
        drop(router);
        if let Some((fan_out, metrics)) = fan_out {
            fan_out.spawn(metrics);
        }
        if timers_changed {
            self.shared.timers.notify_one();
        }
        Ok((answer, durable, forward))
    }

    /// A cluster node whose lease does not hold (never on a single node).
    fn lease_lapsed(&self) -> bool {
        self.shared
            .peers
            .as_ref()
            .is_some_and(|peers| !peers.lease.holds())
    }

    /// The broker's metrics, for the parts that count outside the router.
    pub(crate) fn metrics(&self) -> Result<Arc<crate::metrics::Metrics>, RouterGone> {
        self.inspect(|router| router.metrics().clone())
    }

    /// Runs a handler that only reads.
    fn inspect<T>(&self, read: impl FnOnce(&Router) -> T) -> Result<T, RouterGone> {
        let router = self.lock();
        if router.is_stopped() {
            return Err(RouterGone);
        }
        Ok(read(&router))
    }

    /// Runs a handler that only closes connections (through their postboxes): it writes
    /// nothing and forwards nothing, so it needs no outcome.
    fn close<T>(&self, close: impl FnOnce(&mut Router) -> T) -> Result<T, RouterGone> {
        let mut router = self.lock();
        if router.is_stopped() {
            return Err(RouterGone);
        }
        Ok(close(&mut router))
    }

    /// Attaches a connection to its session (see `sessions.rs`); `Err(code)` refuses the
    /// CONNECT with that reason.
    pub async fn connect(
        &self,
        request: ConnectRequest,
    ) -> Result<Result<Attached, ReasonCode>, RouterGone> {
        let (attached, _) = self
            .execute(Writes::Detached, |router, out| router.connect(request, out))
            .await?;
        Ok(attached)
    }

    /// Routes a client's plain PUBLISH. `inbound_qos2` names (client id, packet id) of an
    /// inbound QoS 2 publish of a persistent session: its "already received" marker is
    /// written in the same batch as the message. With `wait`, the [`Durable`] resolves
    /// once every write the message caused is synced.
    pub async fn publish(
        &self,
        message: &Arc<Message>,
        inbound_qos2: Option<(&str, u16)>,
        wait: bool,
    ) -> Result<(Routed, Durable), RouterGone> {
        // A QoS 0 message that is not retained writes nothing: no place to take.
        let writes = if message.qos == QoS::AtMostOnce && !message.retain && inbound_qos2.is_none()
        {
            Writes::None
        } else {
            writes_for(wait)
        };
        self.execute(writes, |router, out| {
            mark_inbound_qos2(out, inbound_qos2);
            router.publish(message, out)
        })
        .await
    }

    /// Routes plain QoS 0 publishes that are not retained (they write nothing), in order,
    /// under one lock.
    pub async fn publish_unstored(&self, messages: &[Arc<Message>]) -> Result<(), RouterGone> {
        debug_assert!(messages
            .iter()
            .all(|m| m.qos == QoS::AtMostOnce && !m.retain));
        // A unit of budget each, as a command would take (see `execute`).
        for _ in 1..messages.len() {
            tokio::task::consume_budget().await;
        }
        let ((), _) = self
            .execute(Writes::None, |router, out| {
                for message in messages {
                    router.publish(message, out);
                }
            })
            .await?;
        Ok(())
    }

    /// A plain message or broadcast another node of the cluster routed (see
    /// `Router::publish_remote`); a broadcast holds `permit` until its fan-out ends.
    pub(crate) async fn publish_remote(
        &self,
        message: &Arc<Message>,
        via: Option<&str>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), RouterGone> {
        // Only a QoS > 0 message can be queued for an offline session.
        let writes = if message.qos == QoS::AtMostOnce {
            Writes::None
        } else {
            Writes::Detached
        };
        let ((), _) = self
            .execute(writes, |router, out| {
                router.publish_remote(message, via, permit, out)
            })
            .await?;
        Ok(())
    }

    /// A retained message from the cluster's retained stream (see
    /// `Router::retain_remote`).
    pub(crate) async fn retain_remote(&self, message: Arc<Message>) -> Result<(), RouterGone> {
        // The cluster's state, applied whether or not this node holds its lease.
        let ((), _) = self
            .execute_unfenced(Writes::Detached, |router, out| {
                router.retain_remote(&message, out)
            })
            .await?;
        Ok(())
    }

    /// An operator's broadcast, holding `permit` (one of [`MAX_BROADCASTS_IN_FLIGHT`])
    /// until its fan-out ends.
    pub async fn broadcast(
        &self,
        message: &Arc<Message>,
        inbound_qos2: Option<(&str, u16)>,
        permit: OwnedSemaphorePermit,
        wait: bool,
    ) -> Result<(Routed, Durable), RouterGone> {
        self.execute(writes_for(wait), |router, out| {
            mark_inbound_qos2(out, inbound_qos2);
            router.forward(message, out);
            router.broadcast(message, Some(permit), out)
        })
        .await
    }

    /// A direct or group message from the authenticated user `from`: into every
    /// recipient's inbox, in one atomic batch.
    pub async fn chat(
        &self,
        from: &ArcStr,
        message: Message,
        inbound_qos2: Option<(&str, u16)>,
        wait: bool,
    ) -> Result<(Routed, Durable), RouterGone> {
        if let Some(peers) = &self.shared.peers {
            return self
                .chat_in_cluster(peers, from, message, inbound_qos2)
                .await;
        }
        self.execute(writes_for(wait), |router, out| {
            mark_inbound_qos2(out, inbound_qos2);
            router.chat(from, message, out)
        })
        .await
    }

    /// A chat message on a cluster node: the router decides who it goes to, and the
    /// recipients' inbox logs in the cluster number and keep it; its acknowledgement
    /// waits for them. The cluster's logs also tell repeats (`msgid`) from new messages,
    /// across nodes and restarts, so the node's own duplicate window is not consulted.
    async fn chat_in_cluster(
        &self,
        peers: &Peers,
        from: &ArcStr,
        message: Message,
        inbound_qos2: Option<(&str, u16)>,
    ) -> Result<(Routed, Durable), RouterGone> {
        let (plan, _) = self
            .execute(Writes::Detached, |router, out| {
                mark_inbound_qos2(out, inbound_qos2);
                router.plan_chat(from, message, false)
            })
            .await?;
        let plan = match plan {
            Ok(plan) => plan,
            Err(routed) => return Ok((routed, Durable::ready())),
        };
        let (done, stored) = tokio::sync::oneshot::channel();
        let append = InboxAppend {
            from: from.clone(),
            plan,
            done,
        };
        peers.inbox.send(append).await.map_err(|_| RouterGone)?;
        Ok((Routed::matched(true), Durable::waiting(stored)))
    }

    /// `from`'s recall of its message `id` (checked by the caller: see `im::recall`).
    pub(crate) async fn recall(
        &self,
        from: &ArcStr,
        id: u64,
        recalled: Message,
        entry: Message,
    ) -> Result<(Routed, Durable), RouterGone> {
        self.execute(Writes::Awaited, |router, out| {
            router.recall(from, id, recalled, entry, out)
        })
        .await
    }

    /// Raises a read mark (and a receipt), and tells the devices connected.
    pub(crate) async fn read_mark(&self, report: ReadReport) -> Result<Durable, RouterGone> {
        let ((), durable) = self
            .execute(Writes::Awaited, |router, out| {
                router.raise_read_mark(report, out)
            })
            .await?;
        Ok(durable)
    }

    /// The presence of each of `users`.
    pub(crate) fn presence_of(&self, users: &[String]) -> Result<Vec<PresenceState>, RouterGone> {
        self.inspect(|router| router.presence_of(users))
    }

    /// Whether `a` and `b` are members of one group.
    pub(crate) fn share_a_group(&self, a: &str, b: &str) -> Result<bool, RouterGone> {
        self.inspect(|router| router.share_a_group(a, b))
    }

    /// Subscribes `session`; the [`Durable`] resolves once a persistent session's new
    /// subscriptions are stored (the SUBACK waits for it: an acknowledged subscription
    /// survives a crash).
    pub async fn subscribe(
        &self,
        session: SessionId,
        subscribe: Subscribe,
    ) -> Result<(SubscribeReply, Durable), RouterGone> {
        self.execute(Writes::Awaited, |router, out| {
            router.subscribe(session, subscribe, out)
        })
        .await
    }

    /// Unsubscribes `session`; the [`Durable`] resolves once a persistent session's
    /// change is stored.
    pub async fn unsubscribe(
        &self,
        session: SessionId,
        unsubscribe: Unsubscribe,
    ) -> Result<(Vec<ReasonCode>, Durable), RouterGone> {
        self.execute(Writes::Awaited, |router, out| {
            router.unsubscribe(session, unsubscribe, out)
        })
        .await
    }

    /// Makes the cluster's copy of a persistent session this node's (see `adopt.rs`).
    /// If it did, the number the router's next append to the cluster's message stream
    /// gets: what was routed before the adoption is in the appends before it.
    pub(crate) async fn adopt(
        &self,
        session: tern_storage::StoredSession,
        replace: bool,
    ) -> Result<Option<AppendsBefore>, RouterGone> {
        let (adopted, _) = self
            .execute(Writes::Detached, |router, out| {
                router
                    .adopt(session, replace, out)
                    .then(|| (router.next_append, router.appends.clone()))
            })
            .await?;
        Ok(adopted.map(|(next_append, appends)| AppendsBefore {
            next_append,
            appends,
        }))
    }

    /// Drops this node's offline copy of a session that resumed on another node (see
    /// `adopt.rs`); returns whether there was one to drop.
    pub(crate) async fn forget_moved(&self, client_id: &str) -> Result<bool, RouterGone> {
        let (dropped, _) = self
            .execute_unfenced(Writes::Detached, |router, out| {
                router.forget_moved(client_id, out)
            })
            .await?;
        Ok(dropped)
    }

    /// Drops an adopted session still waiting for its backfill (see `adopt.rs`).
    pub(crate) async fn abandon(&self, client_id: &str) -> Result<(), RouterGone> {
        let ((), _) = self
            .execute(Writes::Detached, |router, out| {
                router.abandon(client_id, out)
            })
            .await?;
        Ok(())
    }

    /// Queues what an adopted session's device missed, then what was held back for it
    /// (see `adopt.rs`); the [`Durable`] resolves once that is stored.
    pub(crate) async fn backfill(
        &self,
        client_id: &str,
        missed: Vec<Message>,
        covered: Covered,
    ) -> Result<Durable, RouterGone> {
        let (_, durable) = self
            .execute(Writes::Awaited, |router, out| {
                router.backfill(client_id, missed, &covered, out)
            })
            .await?;
        Ok(durable)
    }

    /// A lagged connection caught up: where its session's durable queue ends (`None` if
    /// the session is gone); stored deliveries go to its mailbox again from now on.
    pub fn resync(&self, session: SessionId, conn: ConnId) -> Result<Option<u64>, RouterGone> {
        self.inspect(|router| router.resync(session, conn))
    }

    /// A connection ended. Returns whether it was its session's connection (rather than
    /// one taken over). On a cluster node without its lease the session goes offline
    /// without its will: the node's connections were closed by the cluster, not by their
    /// clients, and their sessions may live on elsewhere.
    pub async fn detach(&self, mut detach: Detach) -> Result<bool, RouterGone> {
        if self.lease_lapsed() {
            detach.will = None;
        }
        let (current, _) = self
            .execute_unfenced(Writes::Detached, |router, out| {
                router.detach(detach, Instant::now(), out)
            })
            .await?;
        Ok(current)
    }

    /// An operator's change to a group; the [`Durable`] resolves once it is stored.
    pub async fn change_group(
        &self,
        change: GroupChange,
    ) -> Result<Result<Durable, ChangeError>, RouterGone> {
        let (changed, durable) = self
            .execute_unfenced(Writes::Awaited, |router, out| {
                router.change_group(&change, out)
            })
            .await?;
        Ok(changed.map(|()| durable))
    }

    /// A group as the cluster's directory holds it now (`None`: deleted); returns once it
    /// is stored here.
    pub(crate) async fn group_remote(
        &self,
        gid: &str,
        group: Option<tern_storage::StoredGroup>,
    ) -> Result<Result<(), StorageError>, RouterGone> {
        let ((), durable) = self
            .execute_unfenced(Writes::Awaited, |router, out| {
                router.group_remote(gid, group, out)
            })
            .await?;
        Ok(durable.await)
    }

    /// An operator deletes a retained message; `None` if there was none.
    pub async fn delete_retained(&self, topic: &str) -> Result<Option<Durable>, RouterGone> {
        let (deleted, durable) = self
            .execute_unfenced(Writes::Awaited, |router, out| {
                router.delete_retained(topic, out)
            })
            .await?;
        Ok(deleted.then_some(durable))
    }

    /// Closes every connection of a user (deleted, or its password changed).
    pub fn close_user(&self, user: &str, close: &Close) -> Result<(), RouterGone> {
        self.close(|router| router.close_user(user, close))
    }

    /// Closes the connection of `client_id`'s session, if one is attached: the session was
    /// taken over on another node. Returns whether there was one.
    pub(crate) fn close_client(&self, client_id: &str, close: Close) -> Result<bool, RouterGone> {
        self.close(|router| router.close_client(client_id, close))
    }

    /// Closes every connection (the node lost its lease in the cluster); none of them
    /// acts again, even once the node holds a new lease (see [`NodeLease::admits`]).
    pub(crate) fn close_all(&self, close: &Close) -> Result<(), RouterGone> {
        self.close(|router| {
            if let Some(peers) = &self.shared.peers {
                peers.lease.fence_before(router.next_conn);
            }
            router.close_all(close);
        })
    }

    /// Every session the router holds (or the one with this client id).
    pub fn sessions(&self, client_id: Option<&str>) -> Result<Vec<SessionSummary>, RouterGone> {
        self.inspect(|router| router.sessions(client_id))
    }

    /// The router's sizes, for metrics.
    pub fn stats(&self) -> Result<RouterStats, RouterGone> {
        self.inspect(Router::stats)
    }

    /// The broker's own `$SYS/...` messages (see [`sys`]).
    pub(crate) async fn sys_publish(&self, messages: Vec<Arc<Message>>) -> Result<(), RouterGone> {
        let ((), _) = self
            .execute(Writes::None, |router, out| {
                router.sys_publish(messages, out)
            })
            .await?;
        Ok(())
    }

    /// Closes every connection (v5: DISCONNECT 0x8B); nothing is routed from then on.
    pub fn shutdown(&self) {
        self.lock().shutdown();
        self.shared.stopped.send_replace(true);
    }

    /// Resolves once the router has stopped.
    pub async fn closed(&self) {
        let mut stopped = self.shared.stopped.subscribe();
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }
}

fn writes_for(wait: bool) -> Writes {
    if wait {
        Writes::Awaited
    } else {
        Writes::Detached
    }
}

/// The "already received" marker of an inbound QoS 2 publish, first in the batch.
fn mark_inbound_qos2(out: &mut Outcome, inbound_qos2: Option<(&str, u16)>) {
    if let Some((client_id, packet_id)) = inbound_qos2 {
        out.ops.push(Op::PutInboundQos2 {
            client_id: client_id.to_string(),
            packet_id,
        });
    }
}

/// A place for writes a handler was not expected to make (see `RouterHandle::publish`):
/// taken without waiting, since the router is locked. Without one the writes are lost,
/// which is a bug worth a loud log rather than a silent wait.
fn unplanned_place<'a>(writer: &'a Writer, ops: &[Op]) -> Option<tern_storage::Reserved<'a>> {
    if ops.is_empty() {
        return None;
    }
    debug_assert!(
        false,
        "a handler wrote without a place in the writer's queue"
    );
    let place = writer.try_reserve();
    if place.is_none() {
        tracing::error!(
            ops = ops.len(),
            "storage writes dropped: no place in the writer's queue"
        );
    }
    place
}
