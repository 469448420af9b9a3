//! Routing one message: the retained store, then every matching subscription, each
//! subscribing session getting one delivery (its overlapping subscriptions merged).
//!
//! A delivery to a connected session goes into its mailbox at once, unless it has a durable
//! queue entry: those wait in the [`Outcome`] until its storage operations are queued, so
//! that a subscriber's acknowledgement (a `Dequeue`) is always written after its `Enqueue`.
//! Two IM rules hold here whatever filter matched: an inbox topic reaches only sessions of
//! the inbox's user, and a broadcast is never queued durably.

use std::sync::Arc;

use tern_codec::{QoS, ReasonCode};
use tern_storage::Op;
use tokio::sync::OwnedSemaphorePermit;

use super::broadcast::FanOut;
use super::core::{Forwarded, Outcome, Router};
use super::mailbox::NotDelivered;
use super::sessions::{Held, SessionEntry};
use super::subscriptions::{Match, SharedGroup, Subscription};
use crate::im::topics::{inbox_owner, is_broadcast, is_presence, is_system};
use crate::metrics::{DropReason, Metrics, PublishRefusal};
use crate::protocol::{now_ms, Close, Delivery, Message, SessionId};
use tern_codec::topic::split_shared;

/// The router's answer to a PUBLISH (its writes' durability is the caller's to wait for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Some subscription matched (or, for a chat message, it is in the inboxes).
    pub matched: bool,
    /// Refused (the v5 reason for PUBACK/PUBREC); nothing was routed.
    pub refused: Option<ReasonCode>,
}

impl Routed {
    pub(super) const REFUSED: Routed = Routed {
        matched: false,
        refused: Some(ReasonCode::NotAuthorized),
    };

    pub(super) fn matched(matched: bool) -> Routed {
        Routed {
            matched,
            refused: None,
        }
    }
}

/// One subscription matching a message, before a session's overlapping ones are merged.
pub(super) struct Target {
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

/// Which of the matching subscriptions a delivery goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Members<'a> {
    /// Every one (a shared group: one of its members).
    All,
    /// The direct ones only: on a cluster node the shared groups get messages through
    /// NATS queue groups, which pick one node per message (see `cluster/live.rs`).
    Direct,
    /// One member of the shared group `group` on `filter` only.
    Group { group: &'a str, filter: &'a str },
    /// One session's direct subscriptions only (an adopted session's backfill).
    Session(SessionId),
}

/// Where a message's durable queue entries take their payload from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Payload {
    /// A copy in each entry.
    Copied,
    /// The chat message stored once under this id (entries refer to it).
    Stored(u64),
}

impl Router {
    /// Routes a client's plain PUBLISH (neither chat nor broadcast: the connection decided
    /// that by its topic).
    pub(crate) fn publish(&mut self, message: &Arc<Message>, out: &mut Outcome) -> Routed {
        self.route(message, out)
    }

    /// Routes a message by its topic: a will, a delayed will, or a client's PUBLISH.
    /// `$SYS` is refused (the broker's own; see [`Router::sys_publish`]), and a
    /// `broadcast/...` topic (an operator's will) is fanned out like any broadcast.
    pub(super) fn route(&mut self, message: &Arc<Message>, out: &mut Outcome) -> Routed {
        if is_system(&message.topic) {
            self.metrics.publish_refused(PublishRefusal::SystemTopic);
            tracing::info!(topic = %message.topic, "publish refused: $SYS topics are the broker's");
            return Routed::REFUSED;
        }
        if is_broadcast(&message.topic) {
            self.forward(message, out);
            return self.broadcast(message, None, out);
        }
        // On a cluster node, shared groups get the message back through NATS (see
        // `Members::Direct`).
        let members = if self.limits.cluster {
            Members::Direct
        } else {
            Members::All
        };
        self.routing_append = self.forward(message, out);
        let matched = self.deliver_to(message, Payload::Copied, members, out);
        self.routing_append = None;
        // Whether another node's subscribers match is not known here.
        Routed::matched(self.limits.cluster || matched)
    }

    /// In a cluster, leaves `message` for the other nodes, numbered if it is kept (see
    /// [`Forwarded::append`]); returns the number.
    pub(crate) fn forward(&mut self, message: &Arc<Message>, out: &mut Outcome) -> Option<u64> {
        if !self.limits.cluster {
            return None;
        }
        let kept = message.qos != QoS::AtMostOnce && !is_broadcast(&message.topic);
        let append = kept.then(|| {
            self.next_append += 1;
            self.appends.start(self.next_append - 1)
        });
        let number = append.as_ref().map(|append| append.number());
        out.forward.push(Forwarded {
            message: message.clone(),
            append,
        });
        number
    }

    /// A retained message as the cluster's retained stream has it (see
    /// `cluster/retained.rs`): into the retained store, delivered to no one.
    pub(crate) fn retain_remote(&mut self, message: &Arc<Message>, out: &mut Outcome) {
        if !is_system(&message.topic) {
            self.retain(message, out);
        }
    }

    /// A plain message or a broadcast that another node routed, which reached this node
    /// through its subscription to `via` (the filter, for a plain message).
    ///
    /// A node whose filters overlap (`a/#` and `a/b`) holds a NATS subscription for each
    /// and receives one copy per matching one: it delivers only the copy that came
    /// through the smallest matching filter, so each message is delivered once and the
    /// messages of one topic keep their order (they all come through that one filter).
    /// A shared group's copy (`via` = `$share/{group}/{filter}`, from its NATS queue
    /// group, which chose this node) goes to one member of that group only.
    pub(crate) fn publish_remote(
        &mut self,
        message: &Arc<Message>,
        via: Option<&str>,
        permit: Option<OwnedSemaphorePermit>,
        out: &mut Outcome,
    ) {
        if is_system(&message.topic) {
            return;
        }
        if is_broadcast(&message.topic) {
            self.broadcast(message, permit, out);
            return;
        }
        // Through a shared group's queue subscription: one member of that group.
        if let Some(Some(Ok((group, filter)))) = via.map(split_shared) {
            self.deliver_to(
                message,
                Payload::Copied,
                Members::Group { group, filter },
                out,
            );
            return;
        }
        let mut smallest: Option<&str> = None;
        self.subscriptions.for_each_match(&message.topic, |m| {
            if let Match::Direct { filter, .. } = m {
                if smallest.is_none_or(|s| filter < s) {
                    smallest = Some(filter);
                }
            }
        });
        if smallest.is_none() || smallest != via {
            return;
        }
        self.deliver_to(message, Payload::Copied, Members::Direct, out);
    }

    /// An operator's broadcast: matched here, handed to a fan-out task by the caller (see
    /// `broadcast.rs`), holding `permit` until it reached every connection.
    pub(crate) fn broadcast(
        &mut self,
        message: &Arc<Message>,
        permit: Option<OwnedSemaphorePermit>,
        out: &mut Outcome,
    ) -> Routed {
        let mut lanes = Vec::new();
        let matched = self.match_subscribers(
            message,
            Payload::Copied,
            Members::All,
            out,
            |_, _, entry, delivery| {
                if let Some(connected) = &entry.connected {
                    lanes.push((connected.postbox.broadcast_lane(), delivery));
                }
            },
        );
        out.fan_out = Some(FanOut { lanes, permit });
        Routed::matched(matched)
    }

    /// Every matching subscription gets its delivery: in the mailbox of a connected
    /// session at once, or (durably queued) in `out.stored` after the writes.
    pub(super) fn deliver_to_subscribers(
        &mut self,
        message: &Arc<Message>,
        payload: Payload,
        out: &mut Outcome,
    ) -> bool {
        self.deliver_to(message, payload, Members::All, out)
    }

    /// [`deliver_to_subscribers`](Self::deliver_to_subscribers), to `members` only.
    pub(super) fn deliver_to(
        &mut self,
        message: &Arc<Message>,
        payload: Payload,
        members: Members<'_>,
        out: &mut Outcome,
    ) -> bool {
        let mut stored = std::mem::take(&mut out.stored);
        let matched = self.match_subscribers(
            message,
            payload,
            members,
            out,
            |metrics, id, entry, delivery| {
                if delivery.seq.is_some() {
                    stored.push((id, delivery));
                } else {
                    hand_over(entry, delivery, metrics);
                }
            },
        );
        out.stored = stored;
        matched
    }

    /// Decides where a message goes: the retained store, then every matching subscription
    /// (durable queue entries go to `out.ops`); `place` gets each delivery to a connected
    /// session. Returns whether any subscription matched.
    fn match_subscribers(
        &mut self,
        message: &Arc<Message>,
        payload: Payload,
        members: Members<'_>,
        out: &mut Outcome,
        mut place: impl FnMut(&Metrics, SessionId, &mut SessionEntry, Delivery),
    ) -> bool {
        let backfill = matches!(members, Members::Session(_));
        if message.retain && !backfill {
            self.retain(message, out);
        }
        let mut targets = self.collect_targets(message, members);
        let matched = !targets.is_empty();
        let now = now_ms();
        let inbox_of = inbox_owner(&message.topic);
        let broadcast = is_broadcast(&message.topic);
        let mut index = 0;
        while index < targets.len() {
            let id = targets[index].session;
            let (qos, retain_as_published, ids) = merge_session(&targets, &mut index);
            let Some(entry) = self.sessions.get_mut(&id) else {
                continue;
            };
            if inbox_of.is_some_and(|owner| owner != &*entry.user) {
                continue;
            }
            if let Some(held) = entry.offline.as_mut().and_then(|o| o.held.as_mut()) {
                if !backfill {
                    // Adopted, and its missed entries not queued yet (see `adopt.rs`).
                    if held.len() < self.limits.max_queued_messages as usize {
                        held.push(Held {
                            message: message.clone(),
                            append: self.routing_append,
                        });
                    } else {
                        self.metrics.dropped(DropReason::QueueFull);
                    }
                    continue;
                }
            }
            let qos = qos.min(message.qos);
            let mut delivery = Delivery {
                retain: message.retain && retain_as_published,
                subscription_ids: ids,
                ..Delivery::new(message.clone(), qos)
            };
            if entry.persistent && qos != QoS::AtMostOnce && !broadcast && !message.is_expired(now)
            {
                if entry.connected.is_none()
                    && entry.offline_queued() >= self.limits.max_queued_messages
                {
                    self.metrics.dropped(DropReason::QueueFull);
                    tracing::debug!(client_id = %entry.client_id, "offline queue full, message dropped");
                    continue;
                }
                let seq = entry.next_seq;
                entry.next_seq += 1;
                if entry.connected.is_none() {
                    // Below max_queued_messages (checked above), so within u32.
                    entry.offline().queued += 1;
                    self.offline_queued += 1;
                }
                delivery.seq = Some(seq);
                let mut queued = delivery.to_queued();
                if let Payload::Stored(id) = payload {
                    queued.message.payload = bytes::Bytes::new();
                    queued.message_ref = Some(id);
                }
                out.ops.push(Op::Enqueue {
                    client_id: entry.client_id.to_string(),
                    seq,
                    message: queued,
                });
            }
            if entry.connected.is_some() {
                place(&self.metrics, id, entry, delivery);
            }
        }
        targets.clear();
        self.scratch_targets = targets;
        matched
    }

    /// The subscriptions matching `message`, sorted by session when more than one filter
    /// matched (so that a session's overlapping subscriptions are adjacent). The buffer is
    /// kept across messages: no allocation per message.
    fn collect_targets(&mut self, message: &Message, members: Members<'_>) -> Vec<Target> {
        let mut targets = std::mem::take(&mut self.scratch_targets);
        let sessions = &self.sessions;
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
                    let excluded = match members {
                        Members::Group { .. } => true,
                        Members::Session(only) => *client != only,
                        Members::All | Members::Direct => false,
                    };
                    if excluded || subscription.options.no_local && message.origin == Some(*client)
                    {
                        return;
                    }
                    single_filter &= *first_filter.get_or_insert(filter) == filter;
                    targets.push(Target::new(*client, subscription));
                }
                Match::Shared {
                    group: name,
                    filter,
                    members: group,
                } => {
                    let wanted = match members {
                        Members::All => true,
                        Members::Direct | Members::Session(_) => false,
                        Members::Group {
                            group: want,
                            filter: on,
                        } => want == name && on == filter,
                    };
                    if !wanted {
                        return;
                    }
                    let online =
                        |id: &SessionId| sessions.get(id).is_some_and(|e| e.connected.is_some());
                    if let Some((client, subscription)) = pick_member(group, online) {
                        // The member may hold other matching subscriptions.
                        single_filter = false;
                        targets.push(Target::new(*client, subscription));
                    }
                }
            });
        if !single_filter {
            // Stable, so that a session's subscription identifiers keep their match order.
            targets.sort_by_key(|t| t.session);
        }
        targets
    }

    /// Hands the deliveries that waited for their writes to their sessions' connections.
    pub(super) fn hand_over_stored(&mut self, stored: Vec<(SessionId, Delivery)>) {
        for (id, delivery) in stored {
            if let Some(entry) = self.sessions.get_mut(&id) {
                hand_over(entry, delivery, &self.metrics);
            }
        }
    }

    /// The retained store: replaced, deleted (empty payload), or full (not retained).
    fn retain(&mut self, message: &Arc<Message>, out: &mut Outcome) {
        let topic = message.topic.to_string();
        if is_system(&topic) {
            // Only the `$SYS` publisher gets here (clients are refused first). Its values
            // are rewritten every few seconds and recomputed after a restart: memory only,
            // and outside `max_retained_messages`, so that a full store of client messages
            // cannot hide them.
            self.retained.insert(&topic, message.clone());
            return;
        }
        if message.payload.is_empty() {
            if self.retained.remove(&topic).is_some() {
                out.ops.push(Op::DeleteRetained { topic });
            }
            return;
        }
        // Presence (one message per user, the broker's) does not take the clients' places.
        if self.retained.get(&topic).is_none()
            && !is_presence(&topic)
            && self.retained.len() >= self.limits.max_retained_messages
        {
            tracing::warn!(%topic, "retained store full, message not retained");
            return;
        }
        let mut stored = (**message).clone();
        stored.origin = None;
        out.ops.push(Op::PutRetained {
            topic: topic.clone(),
            message: stored.to_stored(),
        });
        self.retained.insert(&topic, Arc::new(stored));
    }

    /// An operator deletes a retained message; false if there was none.
    pub(crate) fn delete_retained(&mut self, topic: &str, out: &mut Outcome) -> bool {
        if self.retained.remove(topic).is_none() {
            return false;
        }
        out.ops.push(Op::DeleteRetained {
            topic: topic.to_string(),
        });
        true
    }

    /// The broker's own `$SYS/...` messages: routed like any QoS 0 publish, and when
    /// retained, kept in memory only. Topics outside `$SYS` are ignored.
    pub(crate) fn sys_publish(&mut self, messages: Vec<Arc<Message>>, out: &mut Outcome) {
        for message in messages {
            if is_system(&message.topic) {
                self.deliver_to_subscribers(&message, Payload::Copied, out);
            } else {
                tracing::warn!(topic = %message.topic, "not a $SYS topic, not published");
            }
        }
    }
}

/// Hands a live delivery to a session's connection, if it has one: into its mailbox, or,
/// when that is full, the spec's and the session's answer to a consumer that cannot keep
/// up.
pub(super) fn hand_over(entry: &mut SessionEntry, delivery: Delivery, metrics: &Metrics) {
    let Some(connected) = &mut entry.connected else {
        return;
    };
    let stored = delivery.seq.is_some();
    let qos = delivery.qos;
    match connected.postbox.deliver(delivery) {
        Ok(()) => {}
        // The connection reads it from storage when it resyncs (a stored delivery that
        // did not fit made the mailbox lagged).
        Err(NotDelivered::Lagged) => {}
        Err(NotDelivered::Full) if stored => {}
        Err(NotDelivered::Full) if qos == QoS::AtMostOnce => {
            // A slow consumer loses its QoS 0 messages first.
            metrics.dropped(DropReason::OutboundFull);
            tracing::debug!(client_id = %entry.client_id, "mailbox full, QoS 0 message dropped");
        }
        Err(NotDelivered::Full) => {
            // A QoS 1/2 message that has nowhere to wait (no durable queue): rather
            // than lose it silently, the consumer that cannot keep up is disconnected.
            metrics.dropped(DropReason::SlowConsumer);
            if !connected.postbox.is_closing() {
                metrics.slow_consumer_disconnected();
                tracing::info!(client_id = %entry.client_id, "slow consumer: its queues are full, disconnecting it");
                connected.postbox.close(Close::new(
                    ReasonCode::QuotaExceeded,
                    "slow consumer: too many messages waiting for this client",
                ));
            }
        }
        // The connection is closing; its detach is on its way.
        Err(NotDelivered::Closed) => {}
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
fn pick_member(
    group: &SharedGroup<SessionId>,
    online: impl Fn(&SessionId) -> bool,
) -> Option<&(SessionId, Subscription)> {
    let members = group.members();
    let n = members.len();
    if n == 0 {
        return None;
    }
    let start = group.cursor();
    let pick = (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| online(&members[i].0))
        .unwrap_or(start % n);
    group.advance_to((pick + 1) % n);
    members.get(pick)
}
