//! Every MQTT control packet of 3.1.1 and 5.0, and the entry points to decode and encode them.
//!
//! One struct per packet serves both versions; the MQTT 5 parts (properties, reason codes) are
//! ignored on the wire for 3.1.1. Decoding takes one complete frame as `Bytes` and hands back
//! packets whose strings and payloads are slices of it.

mod ack;
mod connack;
mod connect;
mod disconnect;
mod publish;
mod subscribe;
mod unsubscribe;

pub use ack::PubResponse;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use publish::{Publish, PublishRef};
pub use subscribe::{RetainHandling, SubAck, Subscribe, SubscriptionOptions};
pub use unsubscribe::{UnsubAck, Unsubscribe};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::header::{check_frame, packet_type as pt, FixedHeader, FrameStatus};
use crate::primitives::{put_var_int, var_int_len, Res, MAX_VAR_INT};
use crate::properties::Properties;

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Protocol {
    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Result<QoS, DecodeError> {
        match v {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::InvalidQoS),
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5 only.
    Auth(Auth),
}

/// Turns a parser's result over a whole packet body into the packet, refusing leftover bytes.
pub(crate) fn complete<T>(r: Res<'_, T>) -> Result<T, DecodeError> {
    match r {
        Ok(([], v)) => Ok(v),
        Ok(_) => Err(DecodeError::TrailingBytes),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e),
        Err(nom::Err::Incomplete(_)) => Err(DecodeError::Truncated),
    }
}

/// Bytes the properties take in a packet of this protocol (none in 3.1.1).
pub(crate) fn props_len(p: Protocol, props: &Properties) -> usize {
    match p {
        Protocol::V5 => props.encoded_len(),
        Protocol::V311 => 0,
    }
}

pub(crate) fn put_props(
    p: Protocol,
    props: &Properties,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    match p {
        Protocol::V5 => props.encode(buf),
        Protocol::V311 => Ok(()),
    }
}

/// Decodes one complete frame. `body` is the frame without its fixed header; `protocol` is
/// the connection's version (CONNECT carries its own and ignores it).
pub fn decode_frame(
    protocol: Protocol,
    header: FixedHeader,
    body: Bytes,
) -> Result<Packet, DecodeError> {
    crate::header::check_first_byte(header.first_byte)?;
    let flags = header.flags();
    let empty = |packet: Packet| {
        if body.is_empty() {
            Ok(packet)
        } else {
            Err(DecodeError::TrailingBytes)
        }
    };
    Ok(match header.packet_type() {
        pt::CONNECT => Packet::Connect(Box::new(Connect::decode(&body)?)),
        pt::CONNACK => Packet::ConnAck(ConnAck::decode(protocol, &body)?),
        pt::PUBLISH => Packet::Publish(Publish::decode(protocol, flags, &body)?),
        pt::PUBACK => Packet::PubAck(PubResponse::decode(protocol, &body, false)?),
        pt::PUBREC => Packet::PubRec(PubResponse::decode(protocol, &body, false)?),
        pt::PUBREL => Packet::PubRel(PubResponse::decode(protocol, &body, true)?),
        pt::PUBCOMP => Packet::PubComp(PubResponse::decode(protocol, &body, true)?),
        pt::SUBSCRIBE => Packet::Subscribe(Subscribe::decode(protocol, &body)?),
        pt::SUBACK => Packet::SubAck(SubAck::decode(protocol, &body)?),
        pt::UNSUBSCRIBE => Packet::Unsubscribe(Unsubscribe::decode(protocol, &body)?),
        pt::UNSUBACK => Packet::UnsubAck(UnsubAck::decode(protocol, &body)?),
        pt::PINGREQ => empty(Packet::PingReq)?,
        pt::PINGRESP => empty(Packet::PingResp)?,
        pt::DISCONNECT => Packet::Disconnect(Disconnect::decode(protocol, &body)?),
        pt::AUTH if protocol == Protocol::V5 => Packet::Auth(Auth::decode(&body)?),
        other => return Err(DecodeError::InvalidPacketType(other)),
    })
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP without properties, decoded from the read buffer in
/// place; `None` for any other packet. Such a packet has nothing to share with the buffer, and
/// one arrives for every QoS 1 or 2 message a subscriber receives: splitting a reference-counted
/// frame off the buffer for it (two atomic counts, and as much bookkeeping again as decoding)
/// would double the cost of reading it. `header` comes from [`check_frame`], which has
/// already checked its first byte.
fn decode_acknowledgement(
    protocol: Protocol,
    header: FixedHeader,
    body: &[u8],
) -> Option<Result<Packet, DecodeError>> {
    let kind = header.packet_type();
    let rel_or_comp = match kind {
        pt::PUBACK | pt::PUBREC => false,
        pt::PUBREL | pt::PUBCOMP => true,
        _ => return None,
    };
    // Longer: MQTT 5 properties, whose strings are slices of the frame.
    if body.len() > PubResponse::MAX_LEN_WITHOUT_PROPERTIES {
        return None;
    }
    let decoded = PubResponse::decode_without_properties(protocol, body, rel_or_comp);
    Some(decoded.map(|ack| match kind {
        pt::PUBACK => Packet::PubAck(ack),
        pt::PUBREC => Packet::PubRec(ack),
        pt::PUBREL => Packet::PubRel(ack),
        _ => Packet::PubComp(ack),
    }))
}

/// Takes one packet off the front of `buf` if a whole frame is there.
///
/// Returns `Ok(None)` when more bytes are needed (use `check_frame` to learn how many). The
/// packet's payload and strings share `buf`'s allocation: nothing is copied.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    match check_frame(buf, max_packet_size)? {
        FrameStatus::Incomplete { .. } => Ok(None),
        FrameStatus::Complete(header) => {
            let body = buf
                .get(header.header_len..header.frame_len())
                .unwrap_or_default();
            if let Some(packet) = decode_acknowledgement(protocol, header, body) {
                buf.advance(header.frame_len());
                return packet.map(Some);
            }
            let mut frame = buf.split_to(header.frame_len()).freeze();
            let body = frame.split_off(header.header_len);
            decode_frame(protocol, header, body).map(Some)
        }
    }
}

impl Packet {
    fn first_byte(&self) -> u8 {
        let kind = match self {
            Packet::Connect(_) => pt::CONNECT,
            Packet::ConnAck(_) => pt::CONNACK,
            Packet::Publish(p) => return p.first_byte(),
            Packet::PubAck(_) => pt::PUBACK,
            Packet::PubRec(_) => pt::PUBREC,
            Packet::PubRel(_) => return pt::PUBREL << 4 | 0b0010,
            Packet::PubComp(_) => pt::PUBCOMP,
            Packet::Subscribe(_) => return pt::SUBSCRIBE << 4 | 0b0010,
            Packet::SubAck(_) => pt::SUBACK,
            Packet::Unsubscribe(_) => return pt::UNSUBSCRIBE << 4 | 0b0010,
            Packet::UnsubAck(_) => pt::UNSUBACK,
            Packet::PingReq => pt::PINGREQ,
            Packet::PingResp => pt::PINGRESP,
            Packet::Disconnect(_) => pt::DISCONNECT,
            Packet::Auth(_) => pt::AUTH,
        };
        kind << 4
    }

    /// Length of the variable header and payload.
    fn body_len(&self, p: Protocol) -> usize {
        match self {
            Packet::Connect(c) => c.body_len(),
            Packet::ConnAck(c) => c.body_len(p),
            Packet::Publish(x) => x.body_len(p),
            Packet::PubAck(x) | Packet::PubRec(x) | Packet::PubRel(x) | Packet::PubComp(x) => {
                x.body_len(p)
            }
            Packet::Subscribe(x) => x.body_len(p),
            Packet::SubAck(x) => x.body_len(p),
            Packet::Unsubscribe(x) => x.body_len(p),
            Packet::UnsubAck(x) => x.body_len(p),
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(x) => x.body_len(p),
            Packet::Auth(x) => x.body_len(),
        }
    }

    /// Exact number of bytes `encode` writes, fixed header included; computable before
    /// encoding, for MQTT 5's maximum packet size checks.
    pub fn encoded_len(&self, p: Protocol) -> usize {
        let body = self.body_len(p);
        1 + var_int_len(body) + body
    }

    /// Appends the packet to `buf`. On error nothing is left in `buf`.
    pub fn encode(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = buf.len();
        let result = self.encode_inner(p, buf);
        if result.is_err() {
            buf.truncate(start);
        }
        result
    }

    fn encode_inner(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let body = self.body_len(p);
        if body > MAX_VAR_INT as usize {
            return Err(EncodeError::PacketTooLarge(body));
        }
        buf.reserve(1 + var_int_len(body) + body);
        buf.put_u8(self.first_byte());
        put_var_int(buf, body)?;
        match self {
            Packet::Connect(c) => c.encode_body(buf),
            Packet::ConnAck(c) => c.encode_body(p, buf),
            Packet::Publish(x) => x.encode_body(p, buf),
            Packet::PubAck(x) | Packet::PubRec(x) | Packet::PubRel(x) | Packet::PubComp(x) => {
                x.encode_body(p, buf)
            }
            Packet::Subscribe(x) => x.encode_body(p, buf),
            Packet::SubAck(x) => x.encode_body(p, buf),
            Packet::Unsubscribe(x) => x.encode_body(p, buf),
            Packet::UnsubAck(x) => x.encode_body(p, buf),
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(x) => x.encode_body(p, buf),
            Packet::Auth(x) => match p {
                Protocol::V5 => x.encode_body(buf),
                Protocol::V311 => Err(EncodeError::NotInProtocol),
            },
        }
    }

    /// The packet's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}
