//! PUBACK, PUBREC, PUBREL and PUBCOMP (spec 3.4 to 3.7): the QoS 1 and 2 acknowledgements.
//! They share one shape: a packet identifier, and in MQTT 5 an optional reason and properties.

use bytes::{BufMut, Bytes, BytesMut};

use super::{complete, Protocol};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{fail, u16_field, u8_field, Res};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl PubResponse {
    pub fn new(packet_id: u16) -> Self {
        PubResponse {
            packet_id,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }
    }

    pub fn with_reason(packet_id: u16, reason: ReasonCode) -> Self {
        PubResponse {
            packet_id,
            reason,
            properties: Properties::default(),
        }
    }

    /// The longest body without properties: packet identifier and reason code.
    pub(crate) const MAX_LEN_WITHOUT_PROPERTIES: usize = 3;

    /// Decodes a body of at most [`Self::MAX_LEN_WITHOUT_PROPERTIES`] bytes, which has no
    /// properties and so needs no frame to share them with.
    pub(crate) fn decode_without_properties(
        p: Protocol,
        body: &[u8],
        rel_or_comp: bool,
    ) -> Result<Self, DecodeError> {
        debug_assert!(body.len() <= Self::MAX_LEN_WITHOUT_PROPERTIES);
        // Only properties are read out of the frame, and a body this short has none.
        complete(Self::parse(p, &Bytes::new(), body, rel_or_comp))
    }

    /// `rel_or_comp` selects the reason codes of PUBREL/PUBCOMP instead of PUBACK/PUBREC.
    pub(crate) fn decode(
        p: Protocol,
        body: &Bytes,
        rel_or_comp: bool,
    ) -> Result<Self, DecodeError> {
        complete(Self::parse(p, body, body, rel_or_comp))
    }

    fn parse<'a>(p: Protocol, frame: &Bytes, i: &'a [u8], rel_or_comp: bool) -> Res<'a, Self> {
        let (i, packet_id) = u16_field(i)?;
        if p == Protocol::V311 || i.is_empty() {
            return Ok((i, PubResponse::new(packet_id)));
        }
        let (i, raw) = u8_field(i)?;
        let ctx = if rel_or_comp {
            ReasonContext::PubRelOrComp
        } else {
            ReasonContext::PubAckOrRec
        };
        let Some(reason) = ReasonCode::from_u8(raw).filter(|c| c.allowed_in(ctx)) else {
            let packet = if rel_or_comp {
                "PUBREL/PUBCOMP"
            } else {
                "PUBACK/PUBREC"
            };
            return fail(DecodeError::InvalidReasonCode { packet, code: raw });
        };
        if i.is_empty() {
            return Ok((i, PubResponse::with_reason(packet_id, reason)));
        }
        let (i, properties) = Properties::decode(frame, i, PropertyContext::PubResponse)?;
        Ok((
            i,
            PubResponse {
                packet_id,
                reason,
                properties,
            },
        ))
    }

    pub(crate) fn body_len(&self, p: Protocol) -> usize {
        match p {
            Protocol::V311 => 2,
            Protocol::V5 if self.properties.is_empty() => {
                // The spec lets a success without properties shrink to the packet id alone.
                if self.reason == ReasonCode::Success {
                    2
                } else {
                    3
                }
            }
            Protocol::V5 => 3 + self.properties.encoded_len(),
        }
    }

    pub(crate) fn encode_body(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u16(self.packet_id);
        let len = self.body_len(p);
        if len >= 3 {
            buf.put_u8(self.reason.as_u8());
        }
        if len > 3 {
            self.properties.encode(buf)?;
        }
        Ok(())
    }
}
