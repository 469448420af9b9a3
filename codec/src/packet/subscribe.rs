//! SUBSCRIBE and SUBACK (spec 3.8, 3.9).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::{complete, props_len, put_props, Protocol, QoS};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{fail, field_len, put_binary, string, u16_field, u8_field, Res};
use crate::properties::{id, Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::topic::{split_shared, validate_topic_filter};

/// When retained messages are sent for a new subscription (MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum RetainHandling {
    #[default]
    SendAtSubscribe = 0,
    SendAtSubscribeIfNew = 1,
    DoNotSend = 2,
}

/// The options byte of one subscription. In 3.1.1 only `qos` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// The options byte of a SUBSCRIBE entry; `pub` so that the broker can store it as it travels.
impl SubscriptionOptions {
    pub fn from_byte(p: Protocol, b: u8) -> Result<Self, DecodeError> {
        let reserved = match p {
            Protocol::V311 => 0b1111_1100,
            Protocol::V5 => 0b1100_0000,
        };
        if b & reserved != 0 {
            return Err(DecodeError::ReservedSubscriptionOptions);
        }
        let retain_handling = match (b >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos: QoS::from_u8(b & 0b11)?,
            no_local: b & 0b0100 != 0,
            retain_as_published: b & 0b1000 != 0,
            retain_handling,
        })
    }

    pub fn to_byte(self, p: Protocol) -> u8 {
        match p {
            Protocol::V311 => self.qos.as_u8(),
            Protocol::V5 => {
                self.qos.as_u8()
                    | u8::from(self.no_local) << 2
                    | u8::from(self.retain_as_published) << 3
                    | (self.retain_handling as u8) << 4
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<(ByteString, SubscriptionOptions)>,
}

/// Reads the non-zero packet identifier of SUBSCRIBE / UNSUBSCRIBE.
pub(crate) fn non_zero_packet_id(i: &[u8]) -> Res<'_, u16> {
    let (i, id) = u16_field(i)?;
    if id == 0 {
        return fail(DecodeError::ZeroPacketId);
    }
    Ok((i, id))
}

impl Subscribe {
    pub(crate) fn decode(p: Protocol, body: &Bytes) -> Result<Self, DecodeError> {
        complete(Self::parse(p, body, body))
    }

    fn parse<'a>(p: Protocol, frame: &Bytes, i: &'a [u8]) -> Res<'a, Self> {
        let (i, packet_id) = non_zero_packet_id(i)?;
        let (mut i, properties) = match p {
            Protocol::V5 => Properties::decode(frame, i, PropertyContext::Subscribe)?,
            Protocol::V311 => (i, Properties::default()),
        };
        if properties.subscription_identifiers.len() > 1 {
            return fail(DecodeError::DuplicateProperty(id::SUBSCRIPTION_IDENTIFIER));
        }
        let mut filters = Vec::new();
        while !i.is_empty() {
            let (r, filter) = string(frame, i)?;
            if let Err(e) = validate_topic_filter(&filter) {
                return fail(DecodeError::InvalidTopicFilter(e));
            }
            let (r, byte) = u8_field(r)?;
            let options = SubscriptionOptions::from_byte(p, byte).map_err(nom::Err::Failure)?;
            if options.no_local && split_shared(&filter).is_some() {
                return fail(DecodeError::NoLocalOnSharedSubscription);
            }
            filters.push((filter, options));
            i = r;
        }
        if filters.is_empty() {
            return fail(DecodeError::NoTopicFilters);
        }
        Ok((
            i,
            Subscribe {
                packet_id,
                properties,
                filters,
            },
        ))
    }

    pub(crate) fn body_len(&self, p: Protocol) -> usize {
        2 + props_len(p, &self.properties)
            + self
                .filters
                .iter()
                .map(|(f, _)| field_len(f.as_bytes()) + 1)
                .sum::<usize>()
    }

    pub(crate) fn encode_body(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        if self.packet_id == 0 {
            return Err(EncodeError::ZeroPacketId);
        }
        if self.filters.is_empty() {
            return Err(EncodeError::Empty);
        }
        buf.put_u16(self.packet_id);
        put_props(p, &self.properties, buf)?;
        for (filter, options) in &self.filters {
            put_binary(buf, filter.as_bytes())?;
            buf.put_u8(options.to_byte(p));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// One per filter of the SUBSCRIBE, in order: the granted QoS or a failure.
    pub reasons: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(p: Protocol, body: &Bytes) -> Result<Self, DecodeError> {
        complete(Self::parse(p, body, body))
    }

    fn parse<'a>(p: Protocol, frame: &Bytes, i: &'a [u8]) -> Res<'a, Self> {
        let (i, packet_id) = u16_field(i)?;
        let (i, properties) = match p {
            Protocol::V5 => Properties::decode(frame, i, PropertyContext::SubAck)?,
            Protocol::V311 => (i, Properties::default()),
        };
        let mut reasons = Vec::with_capacity(i.len());
        for &raw in i {
            let code = match p {
                Protocol::V311 => match raw {
                    0..=2 | 0x80 => ReasonCode::from_u8(raw),
                    _ => None,
                },
                Protocol::V5 => {
                    ReasonCode::from_u8(raw).filter(|c| c.allowed_in(ReasonContext::SubAck))
                }
            };
            let Some(code) = code else {
                return fail(DecodeError::InvalidReasonCode {
                    packet: "SUBACK",
                    code: raw,
                });
            };
            reasons.push(code);
        }
        Ok((
            &i[i.len()..],
            SubAck {
                packet_id,
                properties,
                reasons,
            },
        ))
    }

    pub(crate) fn body_len(&self, p: Protocol) -> usize {
        2 + props_len(p, &self.properties) + self.reasons.len()
    }

    pub(crate) fn encode_body(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u16(self.packet_id);
        put_props(p, &self.properties, buf)?;
        for r in &self.reasons {
            buf.put_u8(match p {
                Protocol::V311 => r.to_v3_suback(),
                Protocol::V5 => r.as_u8(),
            });
        }
        Ok(())
    }
}
