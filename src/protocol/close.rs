//! How the broker ends a connection: [`Close`], the reason an MQTT 5 client is sent in
//! DISCONNECT, and [`Violation`], the client's breaches of the protocol that end one, each
//! naming the rule of the specification it breaks (a normative statement `[MQTT-x-y]` where
//! the specification numbers one, its section otherwise).

use std::borrow::Cow;

use tern_codec::ReasonCode;

/// The answer to a publish the broker could not store (MQTT 5: in its PUBACK / PUBREC).
pub(crate) const NOT_STORED: ReasonCode = ReasonCode::ImplementationSpecificError;

/// Why the broker closes a connection: the DISCONNECT reason code (sent to MQTT 5 clients
/// only) and a reason string for the client and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: ReasonCode,
    /// Empty when the code says it all.
    pub reason: Cow<'static, str>,
}

impl Close {
    pub fn new(code: ReasonCode, reason: impl Into<Cow<'static, str>>) -> Close {
        Close {
            code,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{:?}", self.code)
        } else {
            write!(f, "{} ({:?})", self.reason, self.code)
        }
    }
}

/// A packet from the client that the protocol forbids, after CONNECT. Each one closes the
/// connection with its [`Violation::code`]; malformed bytes are the codec's
/// (`tern_codec::DecodeError`), and refusals that leave the connection open (a PUBLISH the
/// IM rules refuse, a filter over the limits) are reason codes in acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("a second CONNECT [MQTT-3.1.0-2]")]
    SecondConnect,
    #[error("AUTH without an authentication method in CONNECT (MQTT 5 §4.12)")]
    AuthWithoutMethod,
    #[error("a packet only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP) (§2.1.2)")]
    ServerPacket,
    #[error("more unacknowledged QoS 1/2 PUBLISHes than our Receive Maximum (MQTT 5 §3.3.4)")]
    ReceiveMaximumExceeded,
    #[error("a topic alias of 0 or above our Topic Alias Maximum (MQTT 5 §3.3.2.3.4)")]
    TopicAliasOutOfRange,
    #[error("a topic alias this connection never defined (MQTT 5 §3.3.2.3.4)")]
    TopicAliasUnknown,
    #[error("an empty topic name without a topic alias (MQTT 5 §3.3.2.3.4)")]
    EmptyTopic,
    #[error("a topic name deeper than limits.max_topic_levels, which MQTT 3.1.1 cannot refuse in PUBACK")]
    TopicTooDeep,
    #[error("DISCONNECT sets a session expiry after CONNECT set 0 (MQTT 5 §3.14.2.2.2)")]
    ExpiryRaisedAtDisconnect,
}

impl Violation {
    /// The DISCONNECT reason code it is answered with.
    pub fn code(self) -> ReasonCode {
        match self {
            Violation::ReceiveMaximumExceeded => ReasonCode::ReceiveMaximumExceeded,
            Violation::TopicAliasOutOfRange => ReasonCode::TopicAliasInvalid,
            Violation::TopicTooDeep => ReasonCode::TopicNameInvalid,
            Violation::SecondConnect
            | Violation::AuthWithoutMethod
            | Violation::ServerPacket
            | Violation::TopicAliasUnknown
            | Violation::EmptyTopic
            | Violation::ExpiryRaisedAtDisconnect => ReasonCode::ProtocolError,
        }
    }
}

impl From<Violation> for Close {
    fn from(violation: Violation) -> Close {
        Close::new(violation.code(), violation.to_string())
    }
}
