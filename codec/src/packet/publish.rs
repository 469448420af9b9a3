//! PUBLISH (spec 3.3): an application message; the payload is a zero-copy slice of the frame.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::{props_len, put_props, Protocol, QoS};
use crate::error::{DecodeError, EncodeError};
use crate::header::packet_type;
use crate::primitives::{
    field_len, put_binary, put_var_int, string, u16_field, var_int_len, MAX_VAR_INT,
};
use crate::properties::{Properties, PropertyContext};
use crate::topic::validate_topic_name;
use crate::TopicError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in an MQTT 5 PUBLISH that carries a topic alias.
    pub topic: ByteString,
    /// Zero for QoS 0, non-zero otherwise.
    pub packet_id: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn decode(p: Protocol, flags: u8, body: &Bytes) -> Result<Self, DecodeError> {
        let nom_err = |e: nom::Err<DecodeError>| match e {
            nom::Err::Error(e) | nom::Err::Failure(e) => e,
            nom::Err::Incomplete(_) => DecodeError::Truncated,
        };
        let qos = QoS::from_u8((flags >> 1) & 0b11)?;
        let (i, topic) = string(body, body).map_err(nom_err)?;
        let (i, packet_id) = if qos == QoS::AtMostOnce {
            (i, 0)
        } else {
            let (i, id) = u16_field(i).map_err(nom_err)?;
            if id == 0 {
                return Err(DecodeError::ZeroPacketId);
            }
            (i, id)
        };
        let (i, properties) = match p {
            Protocol::V5 => {
                Properties::decode(body, i, PropertyContext::Publish).map_err(nom_err)?
            }
            Protocol::V311 => (i, Properties::default()),
        };
        let aliased = properties.topic_alias.is_some();
        match validate_topic_name(&topic) {
            Ok(()) => {}
            Err(TopicError::Empty) if aliased => {}
            Err(e) => return Err(DecodeError::InvalidTopicName(e)),
        }
        Ok(Publish {
            dup: flags & 0b1000 != 0,
            qos,
            retain: flags & 1 != 0,
            topic,
            packet_id,
            properties,
            payload: body.slice_ref(i),
        })
    }

    /// The packet's parts, borrowed (see [`PublishRef`]).
    pub fn as_ref(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            packet_id: self.packet_id,
            properties: &self.properties,
            payload: &self.payload,
        }
    }

    pub(crate) fn first_byte(&self) -> u8 {
        self.as_ref().first_byte()
    }

    pub(crate) fn body_len(&self, p: Protocol) -> usize {
        self.as_ref().body_len(p)
    }

    pub(crate) fn encode_body(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.as_ref().encode_body(p, buf)
    }
}

/// A PUBLISH encoded from borrowed parts. A broker sends one routed message to many
/// subscribers: encoding each copy straight from the message avoids building a [`Publish`]
/// per subscriber, whose topic and payload handles are reference counts shared by every
/// copy (atomic operations on one cache line, from every core).
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in an MQTT 5 PUBLISH that carries a topic alias.
    pub topic: &'a str,
    /// Zero for QoS 0, non-zero otherwise.
    pub packet_id: u16,
    pub properties: &'a Properties,
    pub payload: &'a [u8],
}

impl PublishRef<'_> {
    /// Exact number of bytes `encode` writes, fixed header included.
    pub fn encoded_len(&self, p: Protocol) -> usize {
        let body = self.body_len(p);
        1 + var_int_len(body) + body
    }

    /// Appends the packet to `buf`, exactly as [`Packet::encode`](super::Packet::encode)
    /// would the equivalent [`Publish`]. On error nothing is left in `buf`.
    pub fn encode(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let body = self.body_len(p);
        if body > MAX_VAR_INT as usize {
            return Err(EncodeError::PacketTooLarge(body));
        }
        let start = buf.len();
        buf.reserve(1 + var_int_len(body) + body);
        buf.put_u8(self.first_byte());
        let result = put_var_int(buf, body).and_then(|()| self.encode_body(p, buf));
        if result.is_err() {
            buf.truncate(start);
        }
        result
    }

    fn first_byte(&self) -> u8 {
        (packet_type::PUBLISH << 4)
            | (u8::from(self.dup) << 3)
            | (self.qos.as_u8() << 1)
            | u8::from(self.retain)
    }

    fn body_len(&self, p: Protocol) -> usize {
        let id = if self.qos == QoS::AtMostOnce { 0 } else { 2 };
        field_len(self.topic.as_bytes()) + id + props_len(p, self.properties) + self.payload.len()
    }

    fn encode_body(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        put_binary(buf, self.topic.as_bytes())?;
        if self.qos != QoS::AtMostOnce {
            if self.packet_id == 0 {
                return Err(EncodeError::ZeroPacketId);
            }
            buf.put_u16(self.packet_id);
        }
        put_props(p, self.properties, buf)?;
        buf.put_slice(self.payload);
        Ok(())
    }
}
