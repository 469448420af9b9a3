//! MQTT 5 properties (spec 2.2.2): one struct for every packet, each property with its wire
//! type, a check of which packets it may appear in, and the rule that it appears at most once
//! (user properties and subscription identifiers excepted).
//!
//! In MQTT 3.1.1 packets the properties are neither read nor written.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{
    binary, fail, field_len, put_binary, put_var_int, string, u16_field, u32_field, u8_field,
    var_int, var_int_len, Res, MAX_VAR_INT,
};

/// Where a property list stands; decides which properties are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    ConnAck,
    Publish,
    Will,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    PubResponse,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    fn name(self) -> &'static str {
        match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::ConnAck => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::Will => "will properties",
            PropertyContext::PubResponse => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::SubAck => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::UnsubAck => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
        }
    }
}

/// Property identifiers (spec 2.2.2.2).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Whether property `pid` may appear in `ctx` (spec 2.2.2.2, table 2-4).
fn allowed(pid: u8, ctx: PropertyContext) -> bool {
    use PropertyContext as C;
    match pid {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => matches!(ctx, C::Publish | C::Will),
        id::SUBSCRIPTION_IDENTIFIER => matches!(ctx, C::Publish | C::Subscribe),
        id::SESSION_EXPIRY_INTERVAL => matches!(ctx, C::Connect | C::ConnAck | C::Disconnect),
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => ctx == C::ConnAck,
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => {
            matches!(ctx, C::Connect | C::ConnAck | C::Auth)
        }
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => ctx == C::Connect,
        id::WILL_DELAY_INTERVAL => ctx == C::Will,
        id::SERVER_REFERENCE => matches!(ctx, C::ConnAck | C::Disconnect),
        id::REASON_STRING => !matches!(
            ctx,
            C::Connect | C::Publish | C::Will | C::Subscribe | C::Unsubscribe
        ),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            matches!(ctx, C::Connect | C::ConnAck)
        }
        id::TOPIC_ALIAS => ctx == C::Publish,
        id::USER_PROPERTY => true,
        _ => false,
    }
}

/// A packet's MQTT 5 properties, boxed and allocated on the first write: most packets (every
/// 3.1.1 one, most PUBLISH and acknowledgements) carry none, and a packet is moved several
/// times on its way through the broker, so an empty set is one null pointer, not 400 bytes.
/// Fields are read and written through `Deref`/`DerefMut` to [`PropertyFields`].
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyFields>>);

/// What an absent property set reads as.
static NO_PROPERTIES: PropertyFields = PropertyFields::EMPTY;

impl std::ops::Deref for Properties {
    type Target = PropertyFields;

    fn deref(&self) -> &PropertyFields {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyFields {
        self.0.get_or_insert_with(Box::default)
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Properties) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl From<PropertyFields> for Properties {
    fn from(fields: PropertyFields) -> Properties {
        if fields == PropertyFields::EMPTY {
            Properties(None)
        } else {
            Properties(Some(Box::new(fields)))
        }
    }
}

/// All MQTT 5 properties. Absent ones are `None` / empty; a packet carries only those its
/// context allows (checked on decode, and the caller's business on encode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyFields {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    /// One in SUBSCRIBE; any number in PUBLISH (one per matching subscription).
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<ByteString>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<ByteString>,
    pub server_reference: Option<ByteString>,
    pub reason_string: Option<ByteString>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(ByteString, ByteString)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// Stores a property that may appear once, refusing a second occurrence.
fn set_once<T>(slot: &mut Option<T>, value: T, pid: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(pid));
    }
    *slot = Some(value);
    Ok(())
}

/// A one-byte property that may only be 0 or 1.
fn boolean(i: &[u8], pid: u8) -> Res<'_, u8> {
    let (i, v) = u8_field(i)?;
    if v > 1 {
        return fail(DecodeError::InvalidPropertyValue(pid));
    }
    Ok((i, v))
}

/// A two- or four-byte property the spec forbids to be zero.
fn non_zero<T: Default + PartialEq>(v: T, pid: u8) -> Result<T, nom::Err<DecodeError>> {
    if v == T::default() {
        return fail(DecodeError::InvalidPropertyValue(pid));
    }
    Ok(v)
}

impl PropertyFields {
    /// No property at all (`Default`, usable in constants).
    pub const EMPTY: PropertyFields = PropertyFields {
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        subscription_identifiers: Vec::new(),
        session_expiry_interval: None,
        assigned_client_identifier: None,
        server_keep_alive: None,
        authentication_method: None,
        authentication_data: None,
        request_problem_information: None,
        will_delay_interval: None,
        request_response_information: None,
        response_information: None,
        server_reference: None,
        reason_string: None,
        receive_maximum: None,
        topic_alias_maximum: None,
        topic_alias: None,
        maximum_qos: None,
        retain_available: None,
        user_properties: Vec::new(),
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifier_available: None,
        shared_subscription_available: None,
    };
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            None => true,
            Some(fields) => **fields == PropertyFields::EMPTY,
        }
    }

    /// Parses a property length and the properties it covers.
    pub(crate) fn decode<'a>(frame: &Bytes, i: &'a [u8], ctx: PropertyContext) -> Res<'a, Self> {
        let (i, len) = var_int(i)?;
        let len = len as usize;
        if i.len() < len {
            return fail(DecodeError::Truncated);
        }
        let (mut p, rest) = i.split_at(len);
        let mut props = Properties::default();
        while !p.is_empty() {
            // Property identifiers are variable byte integers, but every defined one fits a
            // single byte; anything longer is unknown.
            let (r, pid) = var_int(p)?;
            let pid = match u8::try_from(pid) {
                Ok(pid) => pid,
                Err(_) => return fail(DecodeError::UnknownProperty(0xFF)),
            };
            if !allowed(pid, ctx) {
                let err = if pid == id::USER_PROPERTY || known(pid) {
                    DecodeError::PropertyNotAllowed {
                        id: pid,
                        packet: ctx.name(),
                    }
                } else {
                    DecodeError::UnknownProperty(pid)
                };
                return fail(err);
            }
            p = props.decode_one(frame, r, pid)?;
        }
        Ok((rest, props))
    }

    fn decode_one<'a>(
        &mut self,
        frame: &Bytes,
        i: &'a [u8],
        pid: u8,
    ) -> Result<&'a [u8], nom::Err<DecodeError>> {
        // Parses a property that may appear once into its field, refusing a second one.
        macro_rules! once {
            ($field:ident, $parse:expr) => {
                once!($field, $parse, Ok::<_, nom::Err<DecodeError>>)
            };
            ($field:ident, $parse:expr, $check:expr) => {{
                let (i, v) = $parse?;
                let v = $check(v)?;
                set_once(&mut self.$field, v, pid).map_err(nom::Err::Failure)?;
                i
            }};
        }
        let i = match pid {
            id::PAYLOAD_FORMAT_INDICATOR => once!(payload_format_indicator, boolean(i, pid)),
            id::MESSAGE_EXPIRY_INTERVAL => once!(message_expiry_interval, u32_field(i)),
            id::CONTENT_TYPE => once!(content_type, string(frame, i)),
            id::RESPONSE_TOPIC => once!(response_topic, string(frame, i), |v: ByteString| {
                match crate::topic::validate_topic_name(&v) {
                    Ok(()) => Ok(v),
                    Err(_) => fail(DecodeError::InvalidPropertyValue(pid)),
                }
            }),
            id::CORRELATION_DATA => once!(correlation_data, binary(frame, i)),
            id::SUBSCRIPTION_IDENTIFIER => {
                let (i, v) = var_int(i)?;
                self.subscription_identifiers.push(non_zero(v, pid)?);
                i
            }
            id::SESSION_EXPIRY_INTERVAL => once!(session_expiry_interval, u32_field(i)),
            id::ASSIGNED_CLIENT_IDENTIFIER => once!(assigned_client_identifier, string(frame, i)),
            id::SERVER_KEEP_ALIVE => once!(server_keep_alive, u16_field(i)),
            id::AUTHENTICATION_METHOD => once!(authentication_method, string(frame, i)),
            id::AUTHENTICATION_DATA => once!(authentication_data, binary(frame, i)),
            id::REQUEST_PROBLEM_INFORMATION => once!(request_problem_information, boolean(i, pid)),
            id::WILL_DELAY_INTERVAL => once!(will_delay_interval, u32_field(i)),
            id::REQUEST_RESPONSE_INFORMATION => {
                once!(request_response_information, boolean(i, pid))
            }
            id::RESPONSE_INFORMATION => once!(response_information, string(frame, i)),
            id::SERVER_REFERENCE => once!(server_reference, string(frame, i)),
            id::REASON_STRING => once!(reason_string, string(frame, i)),
            id::RECEIVE_MAXIMUM => once!(receive_maximum, u16_field(i), |v| non_zero(v, pid)),
            id::TOPIC_ALIAS_MAXIMUM => once!(topic_alias_maximum, u16_field(i)),
            id::TOPIC_ALIAS => once!(topic_alias, u16_field(i), |v| non_zero(v, pid)),
            id::MAXIMUM_QOS => once!(maximum_qos, boolean(i, pid)),
            id::RETAIN_AVAILABLE => once!(retain_available, boolean(i, pid)),
            id::USER_PROPERTY => {
                let (i, k) = string(frame, i)?;
                let (i, v) = string(frame, i)?;
                self.user_properties.push((k, v));
                i
            }
            id::MAXIMUM_PACKET_SIZE => {
                once!(maximum_packet_size, u32_field(i), |v| non_zero(v, pid))
            }
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                once!(wildcard_subscription_available, boolean(i, pid))
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                once!(subscription_identifier_available, boolean(i, pid))
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                once!(shared_subscription_available, boolean(i, pid))
            }
            other => return fail(DecodeError::UnknownProperty(other)),
        };
        Ok(i)
    }

    /// Bytes of the properties themselves, without their length prefix.
    pub fn body_len(&self) -> usize {
        let b = |v: &Option<u8>| v.map_or(0, |_| 2);
        let w = |v: &Option<u16>| v.map_or(0, |_| 3);
        let d = |v: &Option<u32>| v.map_or(0, |_| 5);
        let s = |v: &Option<ByteString>| v.as_ref().map_or(0, |s| 1 + field_len(s.as_bytes()));
        let bin = |v: &Option<Bytes>| v.as_ref().map_or(0, |s| 1 + field_len(s));
        b(&self.payload_format_indicator)
            + d(&self.message_expiry_interval)
            + s(&self.content_type)
            + s(&self.response_topic)
            + bin(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|&v| 1 + var_int_len(v as usize))
                .sum::<usize>()
            + d(&self.session_expiry_interval)
            + s(&self.assigned_client_identifier)
            + w(&self.server_keep_alive)
            + s(&self.authentication_method)
            + bin(&self.authentication_data)
            + b(&self.request_problem_information)
            + d(&self.will_delay_interval)
            + b(&self.request_response_information)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + w(&self.receive_maximum)
            + w(&self.topic_alias_maximum)
            + w(&self.topic_alias)
            + b(&self.maximum_qos)
            + b(&self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 1 + field_len(k.as_bytes()) + field_len(v.as_bytes()))
                .sum::<usize>()
            + d(&self.maximum_packet_size)
            + b(&self.wildcard_subscription_available)
            + b(&self.subscription_identifier_available)
            + b(&self.shared_subscription_available)
    }

    /// Encodes a length-prefixed property block exactly as it appears on the wire, for
    /// callers that keep properties outside a packet (the broker stores messages with them).
    pub fn write_block(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.reserve(self.encoded_len());
        self.encode(buf)
    }

    /// Decodes a block written by [`Properties::write_block`] with the rules of `ctx`; the
    /// block must fill `block` exactly. String and binary values are zero-copy slices of it.
    pub fn read_block(block: &Bytes, ctx: PropertyContext) -> Result<Properties, DecodeError> {
        match Properties::decode(block, block, ctx) {
            Ok(([], props)) => Ok(props),
            Ok(_) => Err(DecodeError::TrailingBytes),
            Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e),
            Err(nom::Err::Incomplete(_)) => Err(DecodeError::Truncated),
        }
    }

    /// Bytes on the wire: the length prefix and the properties.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        var_int_len(body) + body
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        fn s(v: &Option<ByteString>) -> Option<&[u8]> {
            v.as_deref().map(str::as_bytes)
        }
        put_var_int(buf, self.body_len())?;
        let byte = |buf: &mut BytesMut, pid: u8, v: Option<u8>| {
            if let Some(v) = v {
                buf.put_u8(pid);
                buf.put_u8(v);
            }
        };
        let word = |buf: &mut BytesMut, pid: u8, v: Option<u16>| {
            if let Some(v) = v {
                buf.put_u8(pid);
                buf.put_u16(v);
            }
        };
        let dword = |buf: &mut BytesMut, pid: u8, v: Option<u32>| {
            if let Some(v) = v {
                buf.put_u8(pid);
                buf.put_u32(v);
            }
        };
        let data = |buf: &mut BytesMut, pid: u8, v: Option<&[u8]>| -> Result<(), EncodeError> {
            if let Some(v) = v {
                buf.put_u8(pid);
                put_binary(buf, v)?;
            }
            Ok(())
        };
        byte(
            buf,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        dword(
            buf,
            id::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        data(buf, id::CONTENT_TYPE, s(&self.content_type))?;
        data(buf, id::RESPONSE_TOPIC, s(&self.response_topic))?;
        data(buf, id::CORRELATION_DATA, self.correlation_data.as_deref())?;
        for &sid in &self.subscription_identifiers {
            if sid > MAX_VAR_INT {
                return Err(EncodeError::VarIntTooLarge(sid));
            }
            buf.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_var_int(buf, sid as usize)?;
        }
        dword(
            buf,
            id::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        data(
            buf,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            s(&self.assigned_client_identifier),
        )?;
        word(buf, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        data(
            buf,
            id::AUTHENTICATION_METHOD,
            s(&self.authentication_method),
        )?;
        data(
            buf,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_deref(),
        )?;
        byte(
            buf,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        dword(buf, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        byte(
            buf,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        data(buf, id::RESPONSE_INFORMATION, s(&self.response_information))?;
        data(buf, id::SERVER_REFERENCE, s(&self.server_reference))?;
        data(buf, id::REASON_STRING, s(&self.reason_string))?;
        word(buf, id::RECEIVE_MAXIMUM, self.receive_maximum);
        word(buf, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        word(buf, id::TOPIC_ALIAS, self.topic_alias);
        byte(buf, id::MAXIMUM_QOS, self.maximum_qos);
        byte(buf, id::RETAIN_AVAILABLE, self.retain_available);
        for (k, v) in &self.user_properties {
            buf.put_u8(id::USER_PROPERTY);
            put_binary(buf, k.as_bytes())?;
            put_binary(buf, v.as_bytes())?;
        }
        dword(buf, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        byte(
            buf,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        byte(
            buf,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        byte(
            buf,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        Ok(())
    }
}

/// Whether `pid` is a property the spec defines at all.
fn known(pid: u8) -> bool {
    use PropertyContext as C;
    [
        C::Connect,
        C::ConnAck,
        C::Publish,
        C::Will,
        C::PubResponse,
        C::Subscribe,
        C::SubAck,
        C::Unsubscribe,
        C::UnsubAck,
        C::Disconnect,
        C::Auth,
    ]
    .iter()
    .any(|&ctx| allowed(pid, ctx))
}
