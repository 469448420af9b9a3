//! What a [`Session`](crate::protocol::session::Session) hands its connection to write: a packet, or
//! a PUBLISH of a routed message.
//!
//! A routed message goes to every subscriber as the same `Arc<Message>`. Its PUBLISH is
//! encoded straight from that message ([`PublishRef`]) rather than built as a [`Publish`]
//! per subscriber: cloning the topic and payload handles for each copy would be atomic
//! operations on reference counts every core shares.

use std::sync::Arc;

use bytes::BytesMut;
use tern_codec::{EncodeError, Packet, Properties, Protocol, Publish, PublishRef, QoS};

use crate::protocol::Message;

/// One packet to write.
#[derive(Debug)]
pub enum Transmit {
    Packet(Packet),
    Publish(OutboundPublish),
}

/// A PUBLISH of a routed message to this session's client.
#[derive(Debug)]
pub struct OutboundPublish {
    pub message: Arc<Message>,
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub packet_id: u16,
    /// The topic goes as a topic alias (in `properties`): the topic name is sent empty.
    pub aliased: bool,
    /// MQTT 5 properties for this copy (empty for 3.1.1).
    pub properties: Properties,
}

impl OutboundPublish {
    /// The packet's parts, borrowed from the message.
    pub fn parts(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: if self.aliased {
                ""
            } else {
                &self.message.topic
            },
            packet_id: self.packet_id,
            properties: &self.properties,
            payload: &self.message.payload,
        }
    }
}

impl Transmit {
    /// Appends the packet to `buf`. On error nothing is left in `buf`.
    pub fn encode(&self, protocol: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Transmit::Packet(packet) => packet.encode(protocol, buf),
            Transmit::Publish(publish) => publish.parts().encode(protocol, buf),
        }
    }

    pub fn is_publish(&self) -> bool {
        matches!(
            self,
            Transmit::Publish(_) | Transmit::Packet(Packet::Publish(_))
        )
    }

    /// The packet's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Transmit::Packet(packet) => packet.name(),
            Transmit::Publish(_) => "PUBLISH",
        }
    }

    /// The packet this stands for, owned (for tests and inspection; the write path
    /// encodes without it).
    pub fn to_packet(&self) -> Packet {
        match self {
            Transmit::Packet(packet) => packet.clone(),
            Transmit::Publish(publish) => {
                let parts = publish.parts();
                Packet::Publish(Publish {
                    dup: parts.dup,
                    qos: parts.qos,
                    retain: parts.retain,
                    topic: if publish.aliased {
                        Default::default()
                    } else {
                        publish.message.topic.clone()
                    },
                    packet_id: parts.packet_id,
                    properties: publish.properties.clone(),
                    payload: publish.message.payload.clone(),
                })
            }
        }
    }
}

impl From<Packet> for Transmit {
    fn from(packet: Packet) -> Transmit {
        Transmit::Packet(packet)
    }
}
