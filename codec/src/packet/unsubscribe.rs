//! UNSUBSCRIBE and UNSUBACK (spec 3.10, 3.11).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::subscribe::non_zero_packet_id;
use super::{complete, props_len, put_props, Protocol};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{fail, field_len, put_binary, string, u16_field, Res};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::topic::validate_topic_filter;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<ByteString>,
}

impl Unsubscribe {
    pub(crate) fn decode(p: Protocol, body: &Bytes) -> Result<Self, DecodeError> {
        complete(Self::parse(p, body, body))
    }

    fn parse<'a>(p: Protocol, frame: &Bytes, i: &'a [u8]) -> Res<'a, Self> {
        let (i, packet_id) = non_zero_packet_id(i)?;
        let (mut i, properties) = match p {
            Protocol::V5 => Properties::decode(frame, i, PropertyContext::Unsubscribe)?,
            Protocol::V311 => (i, Properties::default()),
        };
        let mut filters = Vec::new();
        while !i.is_empty() {
            let (r, filter) = string(frame, i)?;
            if let Err(e) = validate_topic_filter(&filter) {
                return fail(DecodeError::InvalidTopicFilter(e));
            }
            filters.push(filter);
            i = r;
        }
        if filters.is_empty() {
            return fail(DecodeError::NoTopicFilters);
        }
        Ok((
            i,
            Unsubscribe {
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
                .map(|f| field_len(f.as_bytes()))
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
        for filter in &self.filters {
            put_binary(buf, filter.as_bytes())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// MQTT 5: one per filter of the UNSUBSCRIBE. Always empty in 3.1.1.
    pub reasons: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(p: Protocol, body: &Bytes) -> Result<Self, DecodeError> {
        complete(Self::parse(p, body, body))
    }

    fn parse<'a>(p: Protocol, frame: &Bytes, i: &'a [u8]) -> Res<'a, Self> {
        let (i, packet_id) = u16_field(i)?;
        if p == Protocol::V311 {
            let ack = UnsubAck {
                packet_id,
                properties: Properties::default(),
                reasons: vec![],
            };
            return Ok((i, ack));
        }
        let (i, properties) = Properties::decode(frame, i, PropertyContext::UnsubAck)?;
        let mut reasons = Vec::with_capacity(i.len());
        for &raw in i {
            let Some(code) =
                ReasonCode::from_u8(raw).filter(|c| c.allowed_in(ReasonContext::UnsubAck))
            else {
                return fail(DecodeError::InvalidReasonCode {
                    packet: "UNSUBACK",
                    code: raw,
                });
            };
            reasons.push(code);
        }
        Ok((
            &i[i.len()..],
            UnsubAck {
                packet_id,
                properties,
                reasons,
            },
        ))
    }

    pub(crate) fn body_len(&self, p: Protocol) -> usize {
        match p {
            Protocol::V311 => 2,
            Protocol::V5 => 2 + props_len(p, &self.properties) + self.reasons.len(),
        }
    }

    pub(crate) fn encode_body(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u16(self.packet_id);
        if p == Protocol::V5 {
            put_props(p, &self.properties, buf)?;
            for r in &self.reasons {
                buf.put_u8(r.as_u8());
            }
        }
        Ok(())
    }
}
