//! The MQTT session of one connected client as a state machine without I/O.
//!
//! The connection driver (`connection`) feeds it decoded packets ([`Session::handle_packet`]),
//! deliveries from the router ([`Session::deliver`]) and the outcome of routing a publish
//! ([`Session::publish_done`]), and drains two outputs: packets to send
//! ([`Session::poll_transmit`]) and effects for the broker ([`Session::poll_effect`]): route
//! this message, store that acknowledgement. Nothing here touches a socket, a clock (time is
//! passed in as Unix milliseconds) or storage, so every QoS flow is a plain unit test.
//!
//! Flow control both ways. Inbound: an MQTT 5 client that sends QoS > 0 publishes beyond
//! our Receive Maximum is disconnected (0x93); 3.1.1 has no Receive Maximum, so there the
//! driver stops reading at the same bound ([`Session::inbound_full`]) and TCP pushes back.
//! Outbound: at most the client's Receive Maximum messages are in flight (our in-flight
//! limit for 3.1.1), the rest wait in a queue bounded in messages and bytes.

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::sync::Arc;

use tern_codec::{
    ByteString, Disconnect, Packet, Properties, Protocol, PubResponse, Publish, QoS, ReasonCode,
};

use crate::protocol::close::NOT_STORED;
use crate::protocol::in_flight::InFlightWindow;
use crate::protocol::outgoing::{OutboundPublish, Transmit};
use crate::protocol::{Close, Delivery, Message, SessionId, Violation};

/// How far past the oldest unacknowledged message the window's packet IDs may reach, in
/// multiples of the client's Receive Maximum. Acknowledgements come in order, so the span
/// is the count but for a QoS 2 message waiting for PUBCOMP; this bounds what a client that
/// never acknowledges its oldest message costs (24 bytes a slot).
const MAX_SPAN_PER_RECEIVE_MAXIMUM: usize = 4;

/// What a session may do, agreed at CONNECT time.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub protocol: Protocol,
    pub id: SessionId,
    /// The client's Receive Maximum, capped by our in-flight limit.
    pub receive_maximum_out: u16,
    /// The client's Maximum Packet Size (v5); larger messages are not sent to it.
    pub max_packet_size_out: u32,
    /// The client's Topic Alias Maximum (v5); we alias topics we send up to it.
    pub topic_alias_maximum_out: u16,
    /// The Session Expiry Interval of CONNECT was 0: a DISCONNECT may not raise it.
    pub expiry_was_zero: bool,
    /// The session outlives the connection (stored): its QoS > 0 deliveries are in its
    /// durable queue, and their acknowledgements are written there.
    pub persistent: bool,
    /// What the broker allows every session.
    pub limits: Arc<SessionLimits>,
}

/// What the broker's configuration allows every session alike: one shared copy
/// (`connection::Context::session_limits`) rather than 16 bytes in every connection.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Our Receive Maximum: QoS > 0 publishes the client may have unacknowledged.
    pub receive_maximum_in: u16,
    /// Our Topic Alias Maximum (v5).
    pub topic_alias_maximum_in: u16,
    /// Queue bounds from `[limits]`, as u32s (`config::limit_u32`).
    pub max_queued_messages: u32,
    pub max_queued_bytes: u32,
    pub max_topic_levels: u32,
    /// Finds the position a message stands at in a log the driver keeps a cursor of (a
    /// cluster device's inbox seq): a persistent session reports it ([`Effect::Reached`])
    /// once the client has the message. `None`: nothing is reported.
    pub marks: Option<fn(&Message) -> Option<Mark>>,
}

/// A message's position in one of the logs the driver keeps cursors of (`log` is the
/// driver's name for the log; the session only hands it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub log: u8,
    pub position: u64,
}

/// What the session asks of the broker.
#[derive(Debug)]
pub enum Effect {
    /// Route a message; `ack` is the packet ID and QoS to acknowledge once routing (and the
    /// durable writes it caused) is done, through [`Session::publish_done`].
    Publish {
        message: Arc<Message>,
        ack: Option<(u16, QoS)>,
    },
    Subscribe(tern_codec::Subscribe),
    Unsubscribe(tern_codec::Unsubscribe),
    /// The client finished with a durable queue entry (PUBACK, PUBCOMP, or expiry).
    Dequeue(u64),
    /// PUBREC received for a durable QoS 2 entry: after a restart only PUBREL is resent.
    Released(u64),
    /// PUBREL released an inbound QoS 2 packet ID.
    InboundQos2Released(u16),
    /// The client has the message marked at this position (see [`SessionLimits::marks`]):
    /// it acknowledged it (PUBACK, or PUBREC: the receiver owns it from then on), or it
    /// was sent at QoS 0.
    Reached(Mark),
    /// The client sent DISCONNECT.
    Disconnect {
        publish_will: bool,
        session_expiry: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Which acknowledgement an outbound message in flight waits for.
enum Stage {
    Ack,
    Rec,
    Comp,
}

#[derive(Debug)]
/// What is kept of a message in flight: its durable queue position, to dequeue it once
/// acknowledged. Not the message: it was handed over whole to be sent, and is never sent
/// again on this connection (a later one reads it back from storage).
struct InFlight {
    seq: Option<u64>,
    stage: Stage,
    /// Reported once the client acknowledges it (see [`SessionLimits::marks`]).
    mark: Option<Mark>,
}

/// A delivery the session did not take: its queue is at its message or byte bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

pub struct Session {
    params: SessionParams,
    /// Allocated by the first packet or delivery; dropped again while the connection is
    /// idle (see [`Session::release_idle_memory`]).
    flows: Option<Box<Flows>>,
    /// MQTT 5 topic aliases, allocated on first use: most connections never have any.
    aliases: Option<Box<TopicAliases>>,
}

/// Messages a session discarded instead of sending, counted until the driver takes the
/// counts for its metrics ([`Session::take_discarded`], after every event: a u32 does
/// not saturate).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Discarded {
    /// Larger than the client's Maximum Packet Size.
    pub too_large: u32,
    /// Expired (v5 Message Expiry) before they could be sent.
    pub expired: u32,
}

/// What is under way in a session: outputs not yet taken, messages in flight both ways,
/// and the queue behind the window. Boxed: 184 bytes an idle connection (nearly every
/// connection of a chat service, nearly all the time) does without.
#[derive(Default)]
struct Flows {
    transmit: VecDeque<Transmit>,
    effects: VecDeque<Effect>,
    /// Inbound QoS 2 packet IDs between PUBLISH and PUBREL; `true` once PUBREC was sent.
    inbound_qos2: FxHashMap<u16, bool>,
    /// Sent at QoS > 0, waiting for acknowledgement; also hands out the packet IDs.
    in_flight: InFlightWindow<InFlight>,
    queue: VecDeque<Delivery>,
    queued_bytes: usize,
    /// Counted here rather than in `Session`: only a delivery discards anything.
    discarded: Discarded,
    /// Inbound QoS 1/2 publishes not yet fully acknowledged (counted against our maximum).
    inbound_unacked: u16,
}

impl Flows {
    fn is_empty(&self) -> bool {
        self.discarded == Discarded::default()
            && self.inbound_unacked == 0
            && self.transmit.is_empty()
            && self.effects.is_empty()
            && self.inbound_qos2.is_empty()
            && self.in_flight.len() == 0
            && self.queue.is_empty()
    }
}

/// A connection's topic aliases, both ways.
#[derive(Debug, Default)]
struct TopicAliases {
    inbound: FxHashMap<u16, ByteString>,
    outbound: HashMap<ByteString, u16>,
}

impl Session {
    pub fn new(params: SessionParams) -> Session {
        Session {
            params,
            flows: None,
            aliases: None,
        }
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// Inbound QoS 1/2 publishes not yet fully acknowledged.
    fn inbound_unacked(&self) -> u16 {
        self.flows.as_ref().map_or(0, |f| f.inbound_unacked)
    }

    /// An inbound QoS 1/2 publish is done (acknowledged, or refused).
    fn acknowledged_inbound(&mut self) {
        let unacked = &mut self.flows().inbound_unacked;
        *unacked = unacked.saturating_sub(1);
    }

    /// What was discarded since the last call.
    pub fn take_discarded(&mut self) -> Discarded {
        self.flows
            .as_mut()
            .map_or_else(Discarded::default, |f| std::mem::take(&mut f.discarded))
    }

    fn flows(&mut self) -> &mut Flows {
        self.flows.get_or_insert_with(Box::default)
    }

    /// Inbound QoS 2 packet IDs restored from a persistent session: a resent PUBLISH with one
    /// of them is acknowledged but not routed again.
    pub fn restore_inbound_qos2(&mut self, ids: impl IntoIterator<Item = u16>) {
        for id in ids {
            self.flows().inbound_qos2.insert(id, true);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.flows.as_mut()?.transmit.pop_front()
    }

    fn transmit_packet(&mut self, packet: Packet) {
        self.flows().transmit.push_back(Transmit::Packet(packet));
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.flows.as_mut()?.effects.pop_front()
    }

    /// Frees what its queues hold from earlier traffic, where they are empty: for a
    /// connection about to wait idle (parked), which then holds none.
    pub fn release_idle_memory(&mut self) {
        fn release<T>(queue: &mut VecDeque<T>) {
            if queue.is_empty() {
                *queue = VecDeque::new();
            }
        }
        let Some(flows) = &mut self.flows else {
            return;
        };
        if flows.is_empty() {
            self.flows = None;
            return;
        }
        release(&mut flows.transmit);
        release(&mut flows.effects);
        release(&mut flows.queue);
        flows.in_flight.shrink_when_empty();
        if flows.inbound_qos2.is_empty() {
            flows.inbound_qos2 = FxHashMap::default();
        }
    }

    /// Packets or effects not taken yet ([`Session::poll_transmit`],
    /// [`Session::poll_effect`]).
    pub(crate) fn has_output(&self) -> bool {
        self.flows
            .as_ref()
            .is_some_and(|f| !f.transmit.is_empty() || !f.effects.is_empty())
    }

    /// Messages waiting behind the in-flight window.
    pub fn queued(&self) -> usize {
        self.flows.as_ref().map_or(0, |f| f.queue.len())
    }

    pub fn in_flight(&self) -> usize {
        self.flows.as_ref().map_or(0, |f| f.in_flight.len())
    }

    /// Durable queue positions sent and not yet acknowledged (for DUP on a later reconnect).
    pub fn in_flight_seqs(&self) -> Vec<u64> {
        self.flows.as_ref().map_or_else(Vec::new, |f| {
            f.in_flight.values().filter_map(|entry| entry.seq).collect()
        })
    }

    /// 3.1.1 has no Receive Maximum: a client may have any number of publishes waiting
    /// for their acknowledgement. Instead of closing it, the driver stops reading from it
    /// while this is true (TCP backpressure), so the window is still bounded.
    pub fn inbound_full(&self) -> bool {
        self.params.protocol == Protocol::V311
            && self.inbound_unacked() >= self.params.limits.receive_maximum_in
    }

    pub fn has_room(&self) -> bool {
        self.flows.as_ref().is_none_or(|f| {
            f.queue.len() < self.params.limits.max_queued_messages as usize
                && f.queued_bytes < self.params.limits.max_queued_bytes as usize
        })
    }

    /// How many more messages the queue takes before its bounds refuse one (0 once it
    /// holds its bound in messages or bytes).
    pub fn room(&self) -> usize {
        let max = self.params.limits.max_queued_messages as usize;
        match &self.flows {
            None => max,
            Some(f) if f.queued_bytes >= self.params.limits.max_queued_bytes as usize => 0,
            Some(f) => max.saturating_sub(f.queue.len()),
        }
    }

    /// A message routed to this session. Sent now if the window allows, else queued; refused
    /// at the queue bound (the caller decides: drop, or read it again from storage later).
    pub fn deliver(&mut self, delivery: Delivery, now_ms: u64) -> Result<(), QueueFull> {
        if !self.has_room() {
            return Err(QueueFull);
        }
        if self.flows().queue.is_empty() && self.may_send(delivery.qos) {
            // Nothing ahead of it and room in the window: straight out, without touching
            // the queue's buffer (a cache miss per delivery when a message fans out to
            // many connections).
            self.send(delivery, now_ms);
            return Ok(());
        }
        let flows = self.flows();
        flows.queued_bytes += delivery.message.cost();
        flows.queue.push_back(delivery);
        self.pump(now_ms);
        Ok(())
    }

    /// Sends queued messages while the client's Receive Maximum allows.
    fn pump(&mut self, now_ms: u64) {
        while let Some(qos) = self.flows().queue.front().map(|d| d.qos) {
            if !self.may_send(qos) {
                return;
            }
            let flows = self.flows();
            let Some(delivery) = flows.queue.pop_front() else {
                return;
            };
            flows.queued_bytes = flows.queued_bytes.saturating_sub(delivery.message.cost());
            self.send(delivery, now_ms);
        }
    }

    /// A message at `qos` may go out now: QoS 0 always, QoS > 0 while the window is open.
    fn may_send(&self, qos: QoS) -> bool {
        qos == QoS::AtMostOnce || self.window_open()
    }

    /// Room for one more QoS > 0 message: fewer than the client's Receive Maximum
    /// unacknowledged, over at most [`MAX_SPAN_PER_RECEIVE_MAXIMUM`] times as many packet IDs.
    fn window_open(&self) -> bool {
        let receive_maximum = usize::from(self.params.receive_maximum_out);
        self.flows.as_ref().is_none_or(|f| {
            f.in_flight.len() < receive_maximum
                && f.in_flight.span() < receive_maximum * MAX_SPAN_PER_RECEIVE_MAXIMUM
                && f.in_flight.next_id().is_some()
        })
    }

    fn send(&mut self, delivery: Delivery, now_ms: u64) {
        if delivery.released {
            let entry = InFlight {
                seq: delivery.seq,
                stage: Stage::Comp,
                mark: None,
            };
            // `pump` sends only while the window is open, so an ID is free.
            if let Some(packet_id) = self.flows().in_flight.push(entry) {
                self.transmit_packet(Packet::PubRel(PubResponse::new(packet_id)));
            }
            return;
        }
        if delivery.message.is_expired(now_ms) {
            let expired = &mut self.flows().discarded.expired;
            *expired = expired.saturating_add(1);
            if let Some(seq) = delivery.seq {
                self.flows().effects.push_back(Effect::Dequeue(seq));
            }
            return;
        }
        let packet_id = match delivery.qos {
            QoS::AtMostOnce => 0,
            // Taken by the push below, once the message is known to be sent.
            _ => self.flows().in_flight.next_id().unwrap_or(0),
        };
        let (seq, qos) = (delivery.seq, delivery.qos);
        let mark = match self.params.limits.marks {
            Some(marks) if self.params.persistent => marks(&delivery.message),
            _ => None,
        };
        let Some(publish) = self.outbound_publish(delivery, packet_id, now_ms) else {
            // Larger than the client accepts: the spec says discard it as if it was sent
            // [MQTT-3.1.2-25].
            let too_large = &mut self.flows().discarded.too_large;
            *too_large = too_large.saturating_add(1);
            if let Some(seq) = seq {
                self.flows().effects.push_back(Effect::Dequeue(seq));
            }
            return;
        };
        let stage = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Stage::Ack),
            QoS::ExactlyOnce => Some(Stage::Rec),
        };
        match stage {
            Some(stage) => {
                let pushed = self.flows().in_flight.push(InFlight { seq, stage, mark });
                debug_assert_eq!(pushed, Some(packet_id));
            }
            None => {
                if let Some(mark) = mark {
                    self.flows().effects.push_back(Effect::Reached(mark));
                }
            }
        }
        self.flows().transmit.push_back(Transmit::Publish(publish));
    }

    /// The PUBLISH packet for one delivery, or None if it exceeds the client's maximum
    /// packet size (measured on the packet itself: no copy on the delivery path). Takes the
    /// delivery's message over rather than sharing it once more: the reference count of a
    /// message fanned out to many connections is one cache line they all contend for.
    fn outbound_publish(
        &mut self,
        delivery: Delivery,
        packet_id: u16,
        now_ms: u64,
    ) -> Option<OutboundPublish> {
        let mut properties = Properties::default();
        if self.params.protocol == Protocol::V5 {
            let message = &delivery.message;
            properties = message.properties.clone();
            // Written only when there is something to write: a property set is allocated on
            // its first write (see `Properties`).
            let remaining = message.remaining_secs(now_ms);
            if remaining != properties.message_expiry_interval {
                properties.message_expiry_interval = remaining;
            }
            if delivery.subscription_ids != properties.subscription_identifiers {
                properties.subscription_identifiers = delivery.subscription_ids;
            }
        }
        let mut publish = OutboundPublish {
            dup: delivery.dup && delivery.qos != QoS::AtMostOnce,
            qos: delivery.qos,
            retain: delivery.retain,
            message: delivery.message,
            packet_id,
            aliased: false,
            properties,
        };
        let max = self.params.max_packet_size_out as usize;
        let mut new_alias = None;
        if self.params.topic_alias_maximum_out > 0 {
            let outbound = self.aliases.as_ref().map(|a| &a.outbound);
            let used = outbound.map_or(0, HashMap::len);
            if let Some(&alias) = outbound.and_then(|o| o.get(&publish.message.topic)) {
                publish.aliased = true;
                publish.properties.topic_alias = Some(alias);
            } else if used < usize::from(self.params.topic_alias_maximum_out) {
                // Aliases are handed out first come, first kept: chat clients talk on few
                // topics, and never replacing one avoids any ambiguity on the client side.
                let alias = u16::try_from(used + 1).unwrap_or(u16::MAX);
                publish.properties.topic_alias = Some(alias);
                new_alias = Some(alias);
            }
        }
        if publish.parts().encoded_len(self.params.protocol) > max {
            return None;
        }
        if let Some(alias) = new_alias {
            let aliases = self.aliases.get_or_insert_with(Box::default);
            aliases
                .outbound
                .insert(publish.message.topic.clone(), alias);
        }
        Some(publish)
    }

    /// A packet from the client (CONNECT already handled by the driver).
    pub fn handle_packet(&mut self, packet: Packet, now_ms: u64) -> Result<(), Violation> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish),
            Packet::PubAck(ack) => {
                self.finish_outbound(ack.packet_id, Stage::Ack, now_ms);
                Ok(())
            }
            Packet::PubRec(rec) => {
                self.handle_pubrec(rec, now_ms);
                Ok(())
            }
            Packet::PubComp(comp) => {
                self.finish_outbound(comp.packet_id, Stage::Comp, now_ms);
                Ok(())
            }
            Packet::PubRel(rel) => {
                self.handle_pubrel(rel);
                Ok(())
            }
            Packet::Subscribe(subscribe) => {
                self.flows().effects.push_back(Effect::Subscribe(subscribe));
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.flows()
                    .effects
                    .push_back(Effect::Unsubscribe(unsubscribe));
                Ok(())
            }
            Packet::PingReq => {
                self.transmit_packet(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => self.handle_disconnect(disconnect),
            Packet::Connect(_) => Err(Violation::SecondConnect),
            Packet::Auth(_) => Err(Violation::AuthWithoutMethod),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Violation::ServerPacket)
            }
        }
    }

    fn handle_publish(&mut self, publish: Publish) -> Result<(), Violation> {
        let topic = self.resolve_topic(&publish)?;
        if topic.split('/').count() > self.params.limits.max_topic_levels as usize {
            return self.refuse_publish(&publish, ReasonCode::TopicNameInvalid);
        }
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                if publish.qos == QoS::ExactlyOnce {
                    if let Some(&acked) = self.flows().inbound_qos2.get(&publish.packet_id) {
                        // A resend of a message already routed: acknowledge, never route
                        // twice [MQTT-4.3.3-9]. Before our PUBREC went out it is on its way.
                        if acked {
                            self.transmit_packet(Packet::PubRec(PubResponse::new(
                                publish.packet_id,
                            )));
                        }
                        return Ok(());
                    }
                }
                if self.params.protocol == Protocol::V5
                    && self.inbound_unacked() >= self.params.limits.receive_maximum_in
                {
                    return Err(Violation::ReceiveMaximumExceeded);
                }
                self.flows().inbound_unacked += 1;
                if publish.qos == QoS::ExactlyOnce {
                    self.flows().inbound_qos2.insert(publish.packet_id, false);
                }
            }
        }
        let ack = match publish.qos {
            QoS::AtMostOnce => None,
            qos => Some((publish.packet_id, qos)),
        };
        let message = Message::from_publish(&publish, topic, self.params.id);
        self.flows().effects.push_back(Effect::Publish {
            message: Arc::new(message),
            ack,
        });
        Ok(())
    }

    /// Applies v5 topic aliases: records a new mapping, or resolves an empty topic.
    fn resolve_topic(&mut self, publish: &Publish) -> Result<ByteString, Violation> {
        let Some(alias) = publish.properties.topic_alias else {
            if publish.topic.is_empty() {
                return Err(Violation::EmptyTopic);
            }
            return Ok(publish.topic.clone());
        };
        if alias == 0 || alias > self.params.limits.topic_alias_maximum_in {
            return Err(Violation::TopicAliasOutOfRange);
        }
        if publish.topic.is_empty() {
            let known = self.aliases.as_ref().and_then(|a| a.inbound.get(&alias));
            known.cloned().ok_or(Violation::TopicAliasUnknown)
        } else {
            let aliases = self.aliases.get_or_insert_with(Box::default);
            aliases.inbound.insert(alias, publish.topic.clone());
            Ok(publish.topic.clone())
        }
    }

    fn refuse_publish(&mut self, publish: &Publish, reason: ReasonCode) -> Result<(), Violation> {
        match (publish.qos, self.params.protocol) {
            (QoS::AtMostOnce, _) => Ok(()),
            (_, Protocol::V311) => Err(Violation::TopicTooDeep),
            (QoS::AtLeastOnce, Protocol::V5) => {
                self.transmit_packet(Packet::PubAck(PubResponse::with_reason(
                    publish.packet_id,
                    reason,
                )));
                Ok(())
            }
            (QoS::ExactlyOnce, Protocol::V5) => {
                self.transmit_packet(Packet::PubRec(PubResponse::with_reason(
                    publish.packet_id,
                    reason,
                )));
                Ok(())
            }
        }
    }

    /// The broker routed an inbound QoS > 0 publish (and made it durable where needed).
    ///
    /// A 3.1.1 acknowledgement carries no reason: a refused message is acknowledged all
    /// the same (and dropped), but one the broker could not store is not acknowledged at
    /// all; the connection is closed instead, so that the client sends it again.
    pub fn publish_done(
        &mut self,
        packet_id: u16,
        qos: QoS,
        reason: ReasonCode,
    ) -> Result<(), Close> {
        let reason = match self.params.protocol {
            Protocol::V5 => reason,
            Protocol::V311 if reason == NOT_STORED && qos != QoS::AtMostOnce => {
                return Err(Close::new(
                    NOT_STORED,
                    "a message could not be stored, which a 3.1.1 PUBACK cannot say",
                ));
            }
            Protocol::V311 => ReasonCode::Success,
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.acknowledged_inbound();
                self.transmit_packet(Packet::PubAck(PubResponse::with_reason(packet_id, reason)));
            }
            QoS::ExactlyOnce => {
                if reason.is_error() {
                    // A refused QoS 2 message ends here; its packet ID is free again.
                    self.flows().inbound_qos2.remove(&packet_id);
                    self.acknowledged_inbound();
                } else {
                    self.flows().inbound_qos2.insert(packet_id, true);
                }
                self.transmit_packet(Packet::PubRec(PubResponse::with_reason(packet_id, reason)));
            }
        }
        Ok(())
    }

    fn handle_pubrel(&mut self, rel: PubResponse) {
        let reason = if self.flows().inbound_qos2.remove(&rel.packet_id).is_some() {
            self.acknowledged_inbound();
            self.flows()
                .effects
                .push_back(Effect::InboundQos2Released(rel.packet_id));
            ReasonCode::Success
        } else if self.params.protocol == Protocol::V5 {
            ReasonCode::PacketIdentifierNotFound
        } else {
            ReasonCode::Success
        };
        self.transmit_packet(Packet::PubComp(PubResponse::with_reason(
            rel.packet_id,
            reason,
        )));
    }

    fn handle_pubrec(&mut self, rec: PubResponse, now_ms: u64) {
        let Some(entry) = self.flows().in_flight.get_mut(rec.packet_id) else {
            if self.params.protocol == Protocol::V5 {
                self.transmit_packet(Packet::PubRel(PubResponse::with_reason(
                    rec.packet_id,
                    ReasonCode::PacketIdentifierNotFound,
                )));
            }
            return;
        };
        if entry.stage != Stage::Rec {
            return;
        }
        if rec.reason.is_error() {
            // The subscriber refused the message: it ends here [MQTT-4.3.3-4].
            self.finish_outbound(rec.packet_id, Stage::Rec, now_ms);
            return;
        }
        entry.stage = Stage::Comp;
        let (seq, mark) = (entry.seq, entry.mark.take());
        if let Some(seq) = seq {
            self.flows().effects.push_back(Effect::Released(seq));
        }
        if let Some(mark) = mark {
            self.flows().effects.push_back(Effect::Reached(mark));
        }
        self.transmit_packet(Packet::PubRel(PubResponse::new(rec.packet_id)));
    }

    fn finish_outbound(&mut self, packet_id: u16, expected: Stage, now_ms: u64) {
        match self.flows().in_flight.get(packet_id) {
            Some(entry) if entry.stage == expected => {}
            // An acknowledgement for nothing we sent (or at the wrong stage): ignore it,
            // as a stale acknowledgement after reconnect can be.
            _ => return,
        }
        if let Some(entry) = self.flows().in_flight.remove(packet_id) {
            if let Some(seq) = entry.seq {
                self.flows().effects.push_back(Effect::Dequeue(seq));
            }
            if let Some(mark) = entry.mark.filter(|_| expected == Stage::Ack) {
                self.flows().effects.push_back(Effect::Reached(mark));
            }
        }
        self.pump(now_ms);
    }

    fn handle_disconnect(&mut self, disconnect: Disconnect) -> Result<(), Violation> {
        let session_expiry = disconnect.properties.session_expiry_interval;
        if self.params.expiry_was_zero && session_expiry.is_some_and(|e| e > 0) {
            return Err(Violation::ExpiryRaisedAtDisconnect);
        }
        self.flows().effects.push_back(Effect::Disconnect {
            publish_will: disconnect.reason == ReasonCode::DisconnectWithWillMessage,
            session_expiry,
        });
        Ok(())
    }
}

/// A session for tests elsewhere: MQTT 5, the client's Receive Maximum and the queue
/// bound given, no packet size limit, no aliases.
#[cfg(test)]
pub(crate) fn test_session(
    id: SessionId,
    receive_maximum_out: u16,
    max_queued_messages: u32,
    persistent: bool,
) -> Session {
    Session::new(SessionParams {
        protocol: Protocol::V5,
        id,
        receive_maximum_out,
        max_packet_size_out: u32::MAX,
        topic_alias_maximum_out: 0,
        expiry_was_zero: !persistent,
        persistent,
        limits: Arc::new(SessionLimits {
            receive_maximum_in: 10,
            topic_alias_maximum_in: 0,
            max_queued_messages,
            max_queued_bytes: 1 << 20,
            max_topic_levels: 16,
            marks: None,
        }),
    })
}

/// A client's PUBLISH for tests elsewhere: no DUP, no RETAIN, no properties, payload "hi".
#[cfg(test)]
pub(crate) fn test_publish(topic: &str, qos: QoS, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteString::from(topic),
        packet_id,
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(b"hi"),
    }
}

#[cfg(test)]
mod tests;
