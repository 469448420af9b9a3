//! Typed decode and encode errors.
//!
//! Every way a frame can break the spec has its own variant, so the broker can pick the reason
//! code the spec asks for (`DecodeError::reason_code`) and tests can assert which rule broke.
//! Errors are small and `Copy` so they cost nothing to return on the hot path.

use crate::reason::ReasonCode;

/// What is wrong with a topic name or a topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    #[error("wildcard '+' or '#' in a topic name (only filters may hold them)")]
    WildcardInName,
    #[error("'#' must be the last character of a filter and alone in its level")]
    MultiLevelWildcardNotLast,
    #[error("'+' must be alone in its level")]
    SingleLevelWildcardNotAlone,
    #[error("shared subscription needs $share/{{name}}/{{filter}} with a non-empty name free of '+', '#' and '/'")]
    InvalidShareName,
}

/// Why a frame could not be decoded. Each variant names the rule of the spec it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet type {0} is reserved or not valid for this protocol version")]
    InvalidPacketType(u8),
    #[error("fixed header flags {flags:#06b} are not allowed for packet type {packet_type}")]
    InvalidHeaderFlags { packet_type: u8, flags: u8 },
    #[error("QoS 3 is not a valid QoS")]
    InvalidQoS,
    #[error("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupWithQoS0,
    #[error("variable byte integer longer than 4 bytes")]
    VarIntTooLong,
    #[error("variable byte integer not in its shortest form [MQTT-1.5.5-1]")]
    VarIntNotMinimal,
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("a field runs past the end of the packet")]
    Truncated,
    #[error("bytes left over after the last field of the packet")]
    TrailingBytes,
    #[error("string is not well-formed UTF-8 [MQTT-1.5.4-1]")]
    InvalidUtf8,
    #[error("string contains U+0000 [MQTT-1.5.4-2]")]
    NullCharacter,
    #[error("protocol name is not \"MQTT\"")]
    InvalidProtocolName,
    #[error("protocol level {0} is not supported (tern speaks 4 = 3.1.1 and 5 = 5.0)")]
    UnsupportedProtocolVersion(u8),
    #[error("reserved bit of CONNECT flags is set [MQTT-3.1.2-3]")]
    ReservedConnectFlag,
    #[error("will QoS or will retain set without the will flag [MQTT-3.1.2-11]")]
    WillFlagsWithoutWill,
    #[error("password flag set without the username flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    #[error("reserved CONNACK acknowledge flags are set")]
    ReservedConnackFlags,
    #[error("packet identifier 0 where a non-zero one is required [MQTT-2.2.1-3]")]
    ZeroPacketId,
    #[error("SUBSCRIBE or UNSUBSCRIBE without any topic filter [MQTT-3.8.3-3]")]
    NoTopicFilters,
    #[error("reserved bits of the subscription options are set")]
    ReservedSubscriptionOptions,
    #[error("retain handling 3 is not valid")]
    InvalidRetainHandling,
    #[error("no local set on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
    #[error("property identifier {0:#04x} is unknown")]
    UnknownProperty(u8),
    #[error("property {id:#04x} may not appear in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    #[error("property {0:#04x} has a value the spec does not allow")]
    InvalidPropertyValue(u8),
}

impl DecodeError {
    /// The MQTT 5 reason code the broker sends (in CONNACK or DISCONNECT) for this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion(_) | InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            // A zero-length topic name without a topic alias is a Protocol Error [MQTT-3.3.2-1].
            InvalidTopicName(TopicError::Empty) => ReasonCode::ProtocolError,
            InvalidTopicName(_) => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter(_) => ReasonCode::TopicFilterInvalid,
            NoLocalOnSharedSubscription | DuplicateProperty(_) | InvalidPropertyValue(_) => {
                ReasonCode::ProtocolError
            }
            _ => ReasonCode::MalformedPacket,
        }
    }
}

impl<'a> nom::error::ParseError<&'a [u8]> for DecodeError {
    /// A nom primitive failing inside a complete frame always means a field ran past its end.
    fn from_error_kind(_input: &'a [u8], _kind: nom::error::ErrorKind) -> Self {
        DecodeError::Truncated
    }

    fn append(_input: &'a [u8], _kind: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

/// Why a packet could not be encoded. Encoding never panics: a packet the wire cannot carry is
/// refused with one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("remaining length {0} exceeds 268435455")]
    PacketTooLarge(usize),
    #[error("string or binary field of {0} bytes exceeds 65535")]
    FieldTooLong(usize),
    #[error("packet identifier 0 where a non-zero one is required")]
    ZeroPacketId,
    #[error("packet type does not exist in MQTT 3.1.1")]
    NotInProtocol,
    #[error("SUBSCRIBE, UNSUBSCRIBE or SUBACK with no entries")]
    Empty,
    #[error("variable byte integer {0} exceeds 268435455")]
    VarIntTooLarge(u32),
}
