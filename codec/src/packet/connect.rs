//! CONNECT (spec 3.1): the first packet of a connection; it fixes the protocol version.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::{complete, props_len, put_props, Protocol, QoS};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{binary, fail, field_len, put_binary, string, u16_field, u8_field, Res};
use crate::properties::{Properties, PropertyContext};
use crate::topic::validate_topic_name;

const PROTOCOL_NAME: &[u8] = b"MQTT";

mod flag {
    pub const RESERVED: u8 = 0b0000_0001;
    pub const CLEAN_START: u8 = 0b0000_0010;
    pub const WILL: u8 = 0b0000_0100;
    pub const WILL_QOS_SHIFT: u8 = 3;
    pub const WILL_QOS: u8 = 0b0001_1000;
    pub const WILL_RETAIN: u8 = 0b0010_0000;
    pub const PASSWORD: u8 = 0b0100_0000;
    pub const USERNAME: u8 = 0b1000_0000;
}

/// The will message a client leaves with the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties (will delay interval, message expiry, content type...).
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// Clean Session in 3.1.1, Clean Start in 5.0.
    pub clean_start: bool,
    pub keep_alive: u16,
    pub properties: Properties,
    pub client_id: ByteString,
    pub will: Option<Will>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
}

impl Connect {
    pub(crate) fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        complete(Self::parse(body, body))
    }

    fn parse<'a>(frame: &Bytes, i: &'a [u8]) -> Res<'a, Self> {
        let (i, name) = binary(frame, i)?;
        let (i, level) = u8_field(i)?;
        if name.as_ref() != PROTOCOL_NAME {
            // MQTT 3.1 says "MQIsdp" with level 3: a version we do not speak, not garbage.
            if name.as_ref() == b"MQIsdp" {
                return fail(DecodeError::UnsupportedProtocolVersion(level));
            }
            return fail(DecodeError::InvalidProtocolName);
        }
        let protocol = match level {
            4 => Protocol::V311,
            5 => Protocol::V5,
            other => return fail(DecodeError::UnsupportedProtocolVersion(other)),
        };
        let (i, flags) = u8_field(i)?;
        if flags & flag::RESERVED != 0 {
            return fail(DecodeError::ReservedConnectFlag);
        }
        let has_will = flags & flag::WILL != 0;
        let will_qos = (flags & flag::WILL_QOS) >> flag::WILL_QOS_SHIFT;
        let will_retain = flags & flag::WILL_RETAIN != 0;
        if !has_will && (will_qos != 0 || will_retain) {
            return fail(DecodeError::WillFlagsWithoutWill);
        }
        let will_qos = QoS::from_u8(will_qos).map_err(nom::Err::Failure)?;
        let has_username = flags & flag::USERNAME != 0;
        let has_password = flags & flag::PASSWORD != 0;
        if protocol == Protocol::V311 && has_password && !has_username {
            return fail(DecodeError::PasswordWithoutUsername);
        }
        let (i, keep_alive) = u16_field(i)?;
        let (i, properties) = match protocol {
            Protocol::V5 => Properties::decode(frame, i, PropertyContext::Connect)?,
            Protocol::V311 => (i, Properties::default()),
        };
        let (mut i, client_id) = string(frame, i)?;
        let mut will = None;
        if has_will {
            let (r, properties) = match protocol {
                Protocol::V5 => Properties::decode(frame, i, PropertyContext::Will)?,
                Protocol::V311 => (i, Properties::default()),
            };
            let (r, topic) = string(frame, r)?;
            if let Err(e) = validate_topic_name(&topic) {
                return fail(DecodeError::InvalidTopicName(e));
            }
            let (r, payload) = binary(frame, r)?;
            will = Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            });
            i = r;
        }
        let mut username = None;
        if has_username {
            let (r, u) = string(frame, i)?;
            username = Some(u);
            i = r;
        }
        let mut password = None;
        if has_password {
            let (r, p) = binary(frame, i)?;
            password = Some(p);
            i = r;
        }
        let connect = Connect {
            protocol,
            clean_start: flags & flag::CLEAN_START != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        };
        Ok((i, connect))
    }

    pub(crate) fn body_len(&self) -> usize {
        let p = self.protocol;
        let mut len = field_len(PROTOCOL_NAME) + 1 + 1 + 2 + props_len(p, &self.properties);
        len += field_len(self.client_id.as_bytes());
        if let Some(w) = &self.will {
            len +=
                props_len(p, &w.properties) + field_len(w.topic.as_bytes()) + field_len(&w.payload);
        }
        len += self
            .username
            .as_ref()
            .map_or(0, |u| field_len(u.as_bytes()));
        len += self.password.as_ref().map_or(0, |pw| field_len(pw));
        len
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let p = self.protocol;
        put_binary(buf, PROTOCOL_NAME)?;
        buf.put_u8(p.level());
        let mut flags = 0;
        if self.clean_start {
            flags |= flag::CLEAN_START;
        }
        if let Some(w) = &self.will {
            flags |= flag::WILL | (w.qos.as_u8() << flag::WILL_QOS_SHIFT);
            if w.retain {
                flags |= flag::WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= flag::USERNAME;
        }
        if self.password.is_some() {
            flags |= flag::PASSWORD;
        }
        buf.put_u8(flags);
        buf.put_u16(self.keep_alive);
        put_props(p, &self.properties, buf)?;
        put_binary(buf, self.client_id.as_bytes())?;
        if let Some(w) = &self.will {
            put_props(p, &w.properties, buf)?;
            put_binary(buf, w.topic.as_bytes())?;
            put_binary(buf, &w.payload)?;
        }
        if let Some(u) = &self.username {
            put_binary(buf, u.as_bytes())?;
        }
        if let Some(pw) = &self.password {
            put_binary(buf, pw)?;
        }
        Ok(())
    }
}
