//! What the session asks of the broker, carried out in the order it asked: publishes routed
//! by what their topic addresses (`im::acl::publish_route`), subscriptions through the
//! inbox rule and the router, `$sync` replays from the inbox log, and the session's writes
//! to its durable queue.

use std::sync::Arc;

use tern_codec::{Packet, Properties, QoS, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe};
use tern_storage::{Op, QueueState};

use super::requests::Answer;
use super::{Connection, ConnectionError};
use crate::config::PresenceVisibility;
use crate::im::acl::{
    filter_subscribe, filter_unsubscribe, publish_route, suback_reasons, PublishRefused,
    PublishRoute,
};
use crate::im::inbox::parse_sync_request;
use crate::im::presence::{self, PresenceFilter};
use crate::im::reads::SYNCED_MARKS;
use crate::im::sync::{replay, LogEntry, SyncRead};
use crate::metrics::{DropReason, PublishRefusal};
use crate::protocol::session::Effect;
use crate::protocol::{now_ms, Message, PREFETCH_DISTANCE};
use crate::router::contact_name;
use tern_codec::topic::split_shared;

/// Retained messages a subscription's matches are written in batches of, while the rest are
/// still being encoded.
const RETAINED_WRITE_BATCH: usize = 256;

impl Connection {
    /// Carries out the session's effects, then queues what it wants sent.
    pub(super) async fn process_effects(&mut self) -> Result<(), ConnectionError> {
        let mut ops = Vec::new();
        // Plain QoS 0 publishes that write nothing are routed together, a run of them at
        // a time: a read of many small publishes takes the router's lock once.
        let mut unstored = std::mem::take(&mut self.buffers().unstored);
        while let Some(effect) = self.session.poll_effect() {
            match effect {
                Effect::Publish { message, ack: None }
                    if message.qos == QoS::AtMostOnce
                        && !message.retain
                        && self.route(&message.topic) == PublishRoute::Plain =>
                {
                    unstored.push(message);
                    continue;
                }
                _ => {}
            }
            self.route_unstored(&mut unstored).await?;
            match effect {
                Effect::Publish { message, ack } => self.publish(message, ack).await?,
                // Boxed, like the other rare paths: their futures would otherwise be part
                // of every connection task's size (see `work`).
                Effect::Subscribe(subscribe) => {
                    // It may write (retained messages go out a batch at a time): what the
                    // effects before it stored goes to the storage writer first, as before
                    // any write.
                    if !ops.is_empty() {
                        let ops = std::mem::take(&mut ops);
                        self.ctx.writer.submit_detached(ops).await;
                    }
                    Box::pin(self.subscribe(subscribe)).await?
                }
                Effect::Unsubscribe(unsubscribe) => Box::pin(self.unsubscribe(unsubscribe)).await?,
                Effect::Dequeue(seq) if self.persistent() => ops.push(Op::Dequeue {
                    client_id: self.client_id.to_string(),
                    seq,
                }),
                Effect::Released(seq) if self.persistent() => ops.push(Op::SetQueueState {
                    client_id: self.client_id.to_string(),
                    seq,
                    state: QueueState::Released,
                }),
                Effect::InboundQos2Released(packet_id) if self.persistent() => {
                    ops.push(Op::DeleteInboundQos2 {
                        client_id: self.client_id.to_string(),
                        packet_id,
                    })
                }
                Effect::Dequeue(_) | Effect::Released(_) | Effect::InboundQos2Released(_) => {}
                Effect::Reached(mark) => {
                    if let Some(states) = &self.ctx.session_states {
                        states.change(crate::router::SessionChange::Reached {
                            client_id: self.client_id.clone(),
                            mark,
                        });
                    }
                }
                Effect::Disconnect {
                    publish_will,
                    session_expiry,
                } => self.said_goodbye(publish_will, session_expiry),
            }
        }
        self.route_unstored(&mut unstored).await?;
        self.buffers().unstored = unstored;
        while let Some(packet) = self.session.poll_transmit() {
            self.queue_packet(packet);
        }
        if !ops.is_empty() {
            self.ctx.writer.submit_detached(ops).await;
        }
        self.mailbox.set_in_flight(self.session.in_flight());
        Ok(())
    }

    /// Routes the plain QoS 0 publishes gathered so far, in their order.
    async fn route_unstored(
        &self,
        unstored: &mut Vec<Arc<Message>>,
    ) -> Result<(), ConnectionError> {
        if !unstored.is_empty() {
            self.ctx.router.publish_unstored(unstored).await?;
            unstored.clear();
        }
        Ok(())
    }

    /// DISCONNECT: the will goes unless the client asked for it (0x04), and a v5 client's
    /// new session expiry takes effect when the connection ends.
    fn said_goodbye(&mut self, publish_will: bool, session_expiry: Option<u32>) {
        if let Some(occasional) = &mut self.occasional {
            if !publish_will {
                occasional.will = None;
            }
        }
        if session_expiry.is_some() {
            self.occasional().expiry_override = session_expiry;
        }
        self.drop_empty_occasional();
    }

    /// Routes a client's PUBLISH by what its topic addresses; `ack` (QoS > 0) is
    /// acknowledged in order once routed and durable.
    async fn publish(
        &mut self,
        message: Arc<Message>,
        ack: Option<(u16, QoS)>,
    ) -> Result<(), ConnectionError> {
        let route = self.route(&message.topic);
        if route == PublishRoute::Request {
            match Box::pin(self.request(&message)).await? {
                Answer::Now(reason) => {
                    if let Some((packet_id, qos)) = ack {
                        self.buffers().acks.push_ready(packet_id, qos, reason);
                    }
                }
                Answer::Once(routed, durable) => {
                    if let Some((packet_id, qos)) = ack {
                        self.buffers()
                            .acks
                            .push_routed(packet_id, qos, routed, durable);
                    }
                }
            }
            return Ok(());
        }
        if let PublishRoute::Sync | PublishRoute::Refused(_) = route {
            let reason = match route {
                PublishRoute::Refused(refused) => self.refused(&message, refused),
                _ => {
                    Box::pin(self.sync(&message)).await?;
                    ReasonCode::Success
                }
            };
            if let Some((packet_id, qos)) = ack {
                self.buffers().acks.push_ready(packet_id, qos, reason);
            }
            return Ok(());
        }
        // The "already received" marker of a persistent session's inbound QoS 2 publish.
        let inbound_qos2 = ack
            .filter(|(_, qos)| self.persistent() && *qos == QoS::ExactlyOnce)
            .map(|(packet_id, _)| (&*self.client_id, packet_id));
        let wait = ack.is_some();
        let router = &self.ctx.router;
        let (routed, durable) = match route {
            PublishRoute::Chat => {
                let message = Arc::unwrap_or_clone(message);
                Box::pin(router.chat(&self.user, message, inbound_qos2, wait)).await?
            }
            PublishRoute::Broadcast => {
                // A fan-out permit first: an operator publishing faster than broadcasts
                // reach every connection is slowed down (this connection stops reading).
                let permit = self
                    .ctx
                    .broadcasts
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| crate::router::RouterGone)?;
                Box::pin(router.broadcast(&message, inbound_qos2, permit, wait)).await?
            }
            _ => router.publish(&message, inbound_qos2, wait).await?,
        };
        if let Some((packet_id, qos)) = ack {
            self.buffers()
                .acks
                .push_routed(packet_id, qos, routed, durable);
        }
        Ok(())
    }

    /// How a PUBLISH on `topic` is handled: by what it addresses, and for a plain topic
    /// by the ACL file too.
    fn route(&self, topic: &str) -> PublishRoute {
        match publish_route(topic, self.operator) {
            PublishRoute::Plain
                if !self
                    .ctx
                    .access
                    .may_publish(self.acl_user(), &self.client_id, topic) =>
            {
                PublishRoute::Refused(PublishRefused::NotInAcl)
            }
            route => route,
        }
    }

    /// The user name an ACL file knows the client by.
    fn acl_user(&self) -> Option<&str> {
        self.named.then_some(&*self.user)
    }

    /// A refused PUBLISH: logged and counted; its acknowledgement's reason (3.1.1 clients
    /// get a plain acknowledgement: the message is dropped all the same).
    fn refused(&self, message: &Message, refused: PublishRefused) -> ReasonCode {
        self.ctx.metrics.publish_refused(match refused {
            PublishRefused::MalformedChatTopic => PublishRefusal::TopicInvalid,
            PublishRefused::SystemTopic => PublishRefusal::SystemTopic,
            PublishRefused::BroadcastNeedsOperator
            | PublishRefused::IntoInbox
            | PublishRefused::PresenceTopic
            | PublishRefused::NotInAcl => PublishRefusal::NotAuthorized,
        });
        tracing::info!(client_id = %self.client_id, user = %self.user, topic = %message.topic, "publish refused: {}", refused.why());
        refused.code()
    }

    /// Replays the user's inbox log after the seq in the `$sync` payload, to this
    /// connection only, then announces the end on `inbox/{user}/sync`.
    async fn sync(&mut self, request: &Message) -> Result<(), ConnectionError> {
        let after = match parse_sync_request(&request.payload) {
            Ok(after) => after,
            Err(e) => {
                tracing::info!(client_id = %self.client_id, "bad sync request: {e}");
                None
            }
        };
        let from = after.map_or(0, |a| a.saturating_add(1));
        let limit = self.ctx.limits.sync_max_messages;
        let (entries, next, marks) = match &self.ctx.inbox {
            Some(inbox) => match inbox.read(&self.user, from, limit).await {
                Ok((entries, next)) => (entries, next, Vec::new()),
                Err(e) => {
                    // The device hears no end marker and asks again.
                    tracing::warn!(client_id = %self.client_id, user = %self.user, "sync failed: {e}");
                    return Ok(());
                }
            },
            None => {
                let user = self.user.to_string();
                let (entries, next, marks) = super::outbound::read_store(&self.ctx, move |store| {
                    let mut marks = Vec::new();
                    for prefix in SYNCED_MARKS {
                        marks.extend(store.marks(&user, prefix)?);
                    }
                    // The log's end before its entries: entries appended between the
                    // two reads then come with the replay, never after a marker whose
                    // `next` says they were replayed (the device, taking the range
                    // as settled, would drop their live copies as duplicates).
                    let (_, next) = store.inbox_bounds(&user)?;
                    let entries = store.inbox(&user, from, limit)?;
                    let next = entries.last().map_or(next, |(seq, _, _)| next.max(seq + 1));
                    Ok((entries, next, marks))
                })
                .await?;
                let entries = entries
                    .into_iter()
                    .map(|(seq, entry, stored)| LogEntry {
                        seq,
                        role: entry.role,
                        id: Some(entry.message_id),
                        message: stored.and_then(|stored| Message::from_stored(stored).ok()),
                    })
                    .collect();
                (entries, next, marks)
            }
        };
        let full = entries.len() == limit;
        let read = SyncRead {
            after,
            full,
            entries,
            next,
            marks,
        };
        replay(&mut self.session, &self.user, read, now_ms());
        Ok(())
    }

    async fn subscribe(&mut self, subscribe: Subscribe) -> Result<(), ConnectionError> {
        let packet_id = subscribe.packet_id;
        let hidden = self.hidden_presence(&subscribe).await?;
        let access = &self.ctx.access;
        let (subscribe, refused) = filter_subscribe(&self.user, subscribe, |filter| {
            !hidden.iter().any(|h| h == filter)
                && access.may_subscribe(self.acl_user(), &self.client_id, filter)
        });
        let (reasons, retained) = if subscribe.filters.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let session = self.session.params().id;
            let (reply, durable) = self.ctx.router.subscribe(session, subscribe).await?;
            // Acknowledged once stored; a store that failed ends the connection unanswered
            // (the client subscribes again on its next one).
            durable.await?;
            (reply.reasons, reply.retained)
        };
        self.queue_packet(Packet::SubAck(SubAck {
            packet_id,
            properties: Properties::default(),
            reasons: suback_reasons(reasons, &refused),
        }));
        // A filter can match thousands of retained messages, each in memory of its own
        // (message, topic, payload) and, in a large store, none of it in cache: the loads
        // for the messages a few places ahead are started while this one is encoded, so
        // that their cache misses overlap instead of following one another.
        //
        // They are written a batch at a time as they are encoded (the SUBACK with the
        // first), so that the client reads while the rest is encoded rather than after.
        let now = now_ms();
        let mut retained = retained.into_iter();
        let mut batch = 0;
        let mut dropped = 0u64;
        while let Some(delivery) = retained.next() {
            let ahead = retained.as_slice();
            if let Some(later) = ahead.get(2 * PREFETCH_DISTANCE - 1) {
                later.message.prefetch();
            }
            if let Some(next) = ahead.get(PREFETCH_DISTANCE - 1) {
                next.message.prefetch_contents();
            }
            if self.session.deliver(delivery, now).is_err() {
                // Beyond the session's queue bound: not sent, and counted.
                dropped += 1;
            }
            batch += 1;
            if batch == RETAINED_WRITE_BATCH && !retained.as_slice().is_empty() {
                batch = 0;
                self.flush().await?;
            }
        }
        if dropped > 0 {
            self.ctx
                .metrics
                .dropped_many(DropReason::QueueFull, dropped);
            tracing::debug!(client_id = %self.client_id, dropped, "retained messages beyond the queue bound not sent");
        }
        Ok(())
    }

    /// The filters of `subscribe` under `presence/` that `im.presence_visible_to` does not
    /// let this user watch.
    async fn hidden_presence(&self, subscribe: &Subscribe) -> Result<Vec<String>, ConnectionError> {
        let visibility = self.ctx.limits.presence_visible_to;
        let mut hidden = Vec::new();
        for (filter, _) in &subscribe.filters {
            let plain = match split_shared(filter) {
                Some(Ok((_, plain))) => plain,
                Some(Err(_)) => continue,
                None => filter,
            };
            let allowed = match presence::filter(plain) {
                PresenceFilter::None => continue,
                PresenceFilter::Many => visibility == PresenceVisibility::Everyone,
                PresenceFilter::User(user) => {
                    let contacts = visibility == PresenceVisibility::Contacts
                        && user != &*self.user
                        && self.are_contacts(user).await?;
                    presence::may_watch(visibility, &self.user, user, || contacts)
                }
            };
            if !allowed {
                tracing::info!(client_id = %self.client_id, user = %self.user, %filter,
                    "presence subscription refused (im.presence_visible_to)");
                hidden.push(filter.to_string());
            }
        }
        Ok(hidden)
    }

    /// Whether this user and `other` share a group or exchanged a DM.
    async fn are_contacts(&self, other: &str) -> Result<bool, ConnectionError> {
        if self.ctx.router.share_a_group(&self.user, other)? {
            return Ok(true);
        }
        let (user, name) = (self.user.to_string(), contact_name(other));
        let value =
            super::outbound::read_store(&self.ctx, move |store| store.user_value(&user, &name))
                .await?;
        Ok(value.is_some())
    }

    async fn unsubscribe(&mut self, mut unsubscribe: Unsubscribe) -> Result<(), ConnectionError> {
        let packet_id = unsubscribe.packet_id;
        filter_unsubscribe(&self.user, &mut unsubscribe);
        let session = self.session.params().id;
        let (reasons, durable) = self.ctx.router.unsubscribe(session, unsubscribe).await?;
        durable.await?;
        self.queue_packet(Packet::UnsubAck(UnsubAck {
            packet_id,
            properties: Properties::default(),
            reasons,
        }));
        Ok(())
    }

    /// Takes a durable queue entry out (a persistent session's only).
    pub(super) async fn dequeue(&self, seqs: Vec<u64>) {
        if self.persistent() && !seqs.is_empty() {
            let ops = seqs
                .into_iter()
                .map(|seq| Op::Dequeue {
                    client_id: self.client_id.to_string(),
                    seq,
                })
                .collect();
            self.ctx.writer.submit_detached(ops).await;
        }
    }
}
