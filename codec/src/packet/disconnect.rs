//! DISCONNECT (spec 3.14) and AUTH (spec 3.15, MQTT 5 only). Both are a reason code and
//! properties in MQTT 5, each omissible when it is the default.

use bytes::{BufMut, Bytes, BytesMut};

use super::{complete, Protocol};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{fail, u8_field, Res};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};

/// Parses `[reason [properties]]`, both optional (an empty body means success).
fn parse_reason_and_properties<'a>(
    frame: &Bytes,
    i: &'a [u8],
    reasons: ReasonContext,
    props: PropertyContext,
    packet: &'static str,
) -> Res<'a, (ReasonCode, Properties)> {
    if i.is_empty() {
        return Ok((i, (ReasonCode::Success, Properties::default())));
    }
    let (i, raw) = u8_field(i)?;
    let Some(reason) = ReasonCode::from_u8(raw).filter(|c| c.allowed_in(reasons)) else {
        return fail(DecodeError::InvalidReasonCode { packet, code: raw });
    };
    if i.is_empty() {
        return Ok((i, (reason, Properties::default())));
    }
    let (i, properties) = Properties::decode(frame, i, props)?;
    Ok((i, (reason, properties)))
}

fn reason_and_properties_len(reason: ReasonCode, properties: &Properties) -> usize {
    match (reason, properties.is_empty()) {
        (ReasonCode::Success, true) => 0,
        (_, true) => 1,
        (_, false) => 1 + properties.encoded_len(),
    }
}

fn put_reason_and_properties(
    reason: ReasonCode,
    properties: &Properties,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let len = reason_and_properties_len(reason, properties);
    if len >= 1 {
        buf.put_u8(reason.as_u8());
    }
    if len > 1 {
        properties.encode(buf)?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Always `Success` (normal disconnection) in 3.1.1.
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Self {
        Disconnect {
            reason,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(p: Protocol, body: &Bytes) -> Result<Self, DecodeError> {
        if p == Protocol::V311 {
            return if body.is_empty() {
                Ok(Disconnect::default())
            } else {
                Err(DecodeError::TrailingBytes)
            };
        }
        let (reason, properties) = complete(parse_reason_and_properties(
            body,
            body,
            ReasonContext::Disconnect,
            PropertyContext::Disconnect,
            "DISCONNECT",
        ))?;
        Ok(Disconnect { reason, properties })
    }

    pub(crate) fn body_len(&self, p: Protocol) -> usize {
        match p {
            Protocol::V311 => 0,
            Protocol::V5 => reason_and_properties_len(self.reason, &self.properties),
        }
    }

    pub(crate) fn encode_body(&self, p: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match p {
            Protocol::V311 => Ok(()),
            Protocol::V5 => put_reason_and_properties(self.reason, &self.properties, buf),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        let (reason, properties) = complete(parse_reason_and_properties(
            body,
            body,
            ReasonContext::Auth,
            PropertyContext::Auth,
            "AUTH",
        ))?;
        Ok(Auth { reason, properties })
    }

    pub(crate) fn body_len(&self) -> usize {
        reason_and_properties_len(self.reason, &self.properties)
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        put_reason_and_properties(self.reason, &self.properties, buf)
    }
}
