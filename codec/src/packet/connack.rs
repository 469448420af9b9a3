//! CONNACK (spec 3.2): the broker's answer to CONNECT.

use bytes::{BufMut, Bytes, BytesMut};

use super::{complete, props_len, put_props, Protocol};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{fail, u8_field, Res};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// In 3.1.1 the return code, mapped to the reason code of the same meaning.
    pub code: ReasonCode,
    pub properties: Properties,
}

impl ConnAck {
    pub(crate) fn decode(p: Protocol, body: &Bytes) -> Result<Self, DecodeError> {
        complete(Self::parse(p, body, body))
    }

    fn parse<'a>(p: Protocol, frame: &Bytes, i: &'a [u8]) -> Res<'a, Self> {
        let (i, flags) = u8_field(i)?;
        if flags & !1 != 0 {
            return fail(DecodeError::ReservedConnackFlags);
        }
        let (i, raw) = u8_field(i)?;
        let invalid = DecodeError::InvalidReasonCode {
            packet: "CONNACK",
            code: raw,
        };
        let code = match p {
            Protocol::V311 => ReasonCode::from_v3_connack(raw),
            Protocol::V5 => {
                ReasonCode::from_u8(raw).filter(|c| c.allowed_in(ReasonContext::ConnAck))
            }
        };
        let Some(code) = code else {
            return fail(invalid);
        };
        let (i, properties) = match p {
            Protocol::V5 => Properties::decode(frame, i, PropertyContext::ConnAck)?,
            Protocol::V311 => (i, Properties::default()),
        };
        Ok((
            i,
            ConnAck {
                session_present: flags & 1 != 0,
                code,
                properties,
            },
        ))
    }

    pub(crate) fn body_len(&self, p: Protocol) -> usize {
        2 + props_len(p, &self.properties)
    }

    pub(crate) fn encode_body(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u8(u8::from(self.session_present));
        buf.put_u8(match p {
            Protocol::V311 => self.code.to_v3_connack(),
            Protocol::V5 => self.code.as_u8(),
        });
        put_props(p, &self.properties, buf)
    }
}
