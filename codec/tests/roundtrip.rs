//! Round-trip property tests for every MQTT control packet, in both MQTT 3.1.1 and 5.0.
//!
//! Each generator below produces only packets the spec allows for its protocol version
//! (properties only where that packet may carry them, reason codes from the packet's list,
//! valid topic names and filters, strings free of U+0000, non-zero packet identifiers). For
//! every generated packet we check that:
//!
//! - `encoded_len` is exactly the number of bytes `encode` writes;
//! - `decode` gives back the same packet and consumes the whole frame;
//! - fed one byte at a time, the frame is reported incomplete (with a `needed` count that
//!   never overshoots what is really missing) until its last byte arrives, and only then
//!   decodes.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use tern_codec::topic::{validate_topic_filter, validate_topic_name};
use tern_codec::{
    check_frame, decode, Auth, ByteString, ConnAck, Connect, Disconnect, FrameStatus, Packet,
    Properties, PropertyFields, Protocol, PubResponse, Publish, QoS, ReasonCode, RetainHandling,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will, MAX_VAR_INT,
};

// ---------------------------------------------------------------------------------------------
// Reason codes each packet may carry in MQTT 5 (spec 2.4, and the codec's `allowed_in`).
// ---------------------------------------------------------------------------------------------

/// CONNACK reasons a 3.1.1 return code can express.
const CONNACK_V311: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::UnsupportedProtocolVersion,
    ReasonCode::ClientIdentifierNotValid,
    ReasonCode::ServerUnavailable,
    ReasonCode::BadUserNameOrPassword,
    ReasonCode::NotAuthorized,
];

const CONNACK_V5: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::UnspecifiedError,
    ReasonCode::MalformedPacket,
    ReasonCode::ProtocolError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::UnsupportedProtocolVersion,
    ReasonCode::ClientIdentifierNotValid,
    ReasonCode::BadUserNameOrPassword,
    ReasonCode::NotAuthorized,
    ReasonCode::ServerUnavailable,
    ReasonCode::ServerBusy,
    ReasonCode::Banned,
    ReasonCode::BadAuthenticationMethod,
    ReasonCode::TopicNameInvalid,
    ReasonCode::PacketTooLarge,
    ReasonCode::QuotaExceeded,
    ReasonCode::PayloadFormatInvalid,
    ReasonCode::RetainNotSupported,
    ReasonCode::QoSNotSupported,
    ReasonCode::UseAnotherServer,
    ReasonCode::ServerMoved,
    ReasonCode::ConnectionRateExceeded,
];

const PUBACK_PUBREC_V5: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::NoMatchingSubscribers,
    ReasonCode::UnspecifiedError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::TopicNameInvalid,
    ReasonCode::PacketIdentifierInUse,
    ReasonCode::QuotaExceeded,
    ReasonCode::PayloadFormatInvalid,
];

const PUBREL_PUBCOMP_V5: &[ReasonCode] =
    &[ReasonCode::Success, ReasonCode::PacketIdentifierNotFound];

/// SUBACK return codes of 3.1.1: a granted QoS or failure (0x80).
const SUBACK_V311: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::GrantedQoS1,
    ReasonCode::GrantedQoS2,
    ReasonCode::UnspecifiedError,
];

const SUBACK_V5: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::GrantedQoS1,
    ReasonCode::GrantedQoS2,
    ReasonCode::UnspecifiedError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::TopicFilterInvalid,
    ReasonCode::PacketIdentifierInUse,
    ReasonCode::QuotaExceeded,
    ReasonCode::SharedSubscriptionsNotSupported,
    ReasonCode::SubscriptionIdentifiersNotSupported,
    ReasonCode::WildcardSubscriptionsNotSupported,
];

const UNSUBACK_V5: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::NoSubscriptionExisted,
    ReasonCode::UnspecifiedError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::TopicFilterInvalid,
    ReasonCode::PacketIdentifierInUse,
];

/// DISCONNECT reasons, as `ReasonCode::allowed_in(Disconnect)` accepts them.
const DISCONNECT_V5: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::DisconnectWithWillMessage,
    ReasonCode::UnspecifiedError,
    ReasonCode::MalformedPacket,
    ReasonCode::ProtocolError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::ServerBusy,
    ReasonCode::ServerShuttingDown,
    ReasonCode::KeepAliveTimeout,
    ReasonCode::SessionTakenOver,
    ReasonCode::TopicFilterInvalid,
    ReasonCode::TopicNameInvalid,
    ReasonCode::ReceiveMaximumExceeded,
    ReasonCode::TopicAliasInvalid,
    ReasonCode::PacketTooLarge,
    ReasonCode::MessageRateTooHigh,
    ReasonCode::QuotaExceeded,
    ReasonCode::AdministrativeAction,
    ReasonCode::PayloadFormatInvalid,
    ReasonCode::RetainNotSupported,
    ReasonCode::QoSNotSupported,
    ReasonCode::UseAnotherServer,
    ReasonCode::ServerMoved,
    ReasonCode::SharedSubscriptionsNotSupported,
    ReasonCode::ConnectionRateExceeded,
    ReasonCode::MaximumConnectTime,
    ReasonCode::SubscriptionIdentifiersNotSupported,
    ReasonCode::WildcardSubscriptionsNotSupported,
];

const AUTH_V5: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::ContinueAuthentication,
    ReasonCode::ReAuthenticate,
];

/// A reason from `codes`, with Success (first in every list) favoured: with no properties it
/// shortens the packet, an encoding edge worth hitting often.
fn reason(codes: &'static [ReasonCode]) -> impl Strategy<Value = ReasonCode> {
    debug_assert_eq!(codes[0], ReasonCode::Success);
    prop_oneof![1 => Just(codes[0]), 3 => proptest::sample::select(codes)]
}

// ---------------------------------------------------------------------------------------------
// Primitive values: strings, binary data, topics, packet identifiers.
// ---------------------------------------------------------------------------------------------

/// A character for a UTF-8 string field: mostly ASCII, sometimes any scalar value but U+0000.
fn string_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range(' ', '~'),
        1 => any::<char>().prop_filter("U+0000 is not allowed", |&c| c != '\0'),
    ]
}

/// A UTF-8 string field (spec 1.5.4): well-formed and without U+0000.
fn text() -> impl Strategy<Value = ByteString> {
    vec(string_char(), 0..16)
        .prop_map(|chars| ByteString::from(chars.into_iter().collect::<String>()))
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// One topic level: no separator, no wildcard, no U+0000.
fn level() -> impl Strategy<Value = String> {
    let c = string_char().prop_filter("not a separator or wildcard", |c| !"/+#".contains(*c));
    vec(c, 0..6).prop_map(String::from_iter)
}

/// A topic name (spec 4.7): non-empty, levels without wildcards.
fn topic_name() -> impl Strategy<Value = ByteString> {
    vec(level(), 1..5).prop_map(|levels| {
        let mut name = levels.join("/");
        if name.is_empty() {
            name.push('t');
        }
        debug_assert!(validate_topic_name(&name).is_ok(), "{name:?}");
        ByteString::from(name)
    })
}

/// A topic filter (spec 4.7): `+` alone in a level, `#` only as the last level, and sometimes
/// the shared `$share/{group}/` form.
fn topic_filter() -> impl Strategy<Value = ByteString> {
    let filter_level = prop_oneof![1 => Just("+".to_string()), 4 => level()];
    let group = level().prop_map(|g| if g.is_empty() { "g".to_string() } else { g });
    (
        vec(filter_level, 1..5),
        any::<bool>(),
        option::weighted(0.2, group),
    )
        .prop_map(|(mut levels, multi, share)| {
            if multi {
                levels.push("#".to_string());
            }
            let mut filter = levels.join("/");
            if filter.is_empty() {
                filter.push('#');
            }
            if let Some(group) = share {
                filter = format!("$share/{group}/{filter}");
            }
            debug_assert!(validate_topic_filter(&filter).is_ok(), "{filter:?}");
            ByteString::from(filter)
        })
}

/// Packet identifiers are non-zero wherever they appear (spec 2.2.1).
fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// A subscription identifier: 1 to the largest variable byte integer, across all four widths.
fn subscription_id() -> impl Strategy<Value = u32> {
    prop_oneof![
        1u32..128,
        128u32..16_384,
        16_384u32..2_097_152,
        2_097_152u32..=MAX_VAR_INT,
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties (MQTT 5 only).
// ---------------------------------------------------------------------------------------------

/// Where a property list stands; decides which properties it may hold (spec 2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Connect,
    ConnAck,
    Publish,
    Will,
    PubResponse,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Clears every property the spec does not allow in `ctx` (table 2-4).
fn restrict(mut p: Properties, ctx: Ctx) -> Properties {
    use Ctx as C;
    fn keep<T>(slot: &mut Option<T>, allowed: bool) {
        if !allowed {
            *slot = None;
        }
    }
    let message = matches!(ctx, C::Publish | C::Will);
    keep(&mut p.payload_format_indicator, message);
    keep(&mut p.message_expiry_interval, message);
    keep(&mut p.content_type, message);
    keep(&mut p.response_topic, message);
    keep(&mut p.correlation_data, message);
    match ctx {
        C::Publish => {}
        C::Subscribe => p.subscription_identifiers.truncate(1),
        _ => p.subscription_identifiers.clear(),
    }
    keep(
        &mut p.session_expiry_interval,
        matches!(ctx, C::Connect | C::ConnAck | C::Disconnect),
    );
    let connack = ctx == C::ConnAck;
    keep(&mut p.assigned_client_identifier, connack);
    keep(&mut p.server_keep_alive, connack);
    keep(&mut p.response_information, connack);
    keep(&mut p.maximum_qos, connack);
    keep(&mut p.retain_available, connack);
    keep(&mut p.wildcard_subscription_available, connack);
    keep(&mut p.subscription_identifier_available, connack);
    keep(&mut p.shared_subscription_available, connack);
    let auth = matches!(ctx, C::Connect | C::ConnAck | C::Auth);
    keep(&mut p.authentication_method, auth);
    keep(&mut p.authentication_data, auth);
    keep(&mut p.request_problem_information, ctx == C::Connect);
    keep(&mut p.request_response_information, ctx == C::Connect);
    keep(&mut p.will_delay_interval, ctx == C::Will);
    keep(
        &mut p.server_reference,
        matches!(ctx, C::ConnAck | C::Disconnect),
    );
    keep(
        &mut p.reason_string,
        !matches!(
            ctx,
            C::Connect | C::Publish | C::Will | C::Subscribe | C::Unsubscribe
        ),
    );
    let limits = matches!(ctx, C::Connect | C::ConnAck);
    keep(&mut p.receive_maximum, limits);
    keep(&mut p.topic_alias_maximum, limits);
    keep(&mut p.maximum_packet_size, limits);
    keep(&mut p.topic_alias, ctx == C::Publish);
    // User properties are allowed everywhere.
    p
}

/// An optional property, present now and then.
fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    option::weighted(0.35, s)
}

/// A one-byte property whose only values are 0 and 1.
fn flag() -> impl Strategy<Value = Option<u8>> {
    opt(0u8..=1)
}

fn user_properties() -> impl Strategy<Value = Vec<(ByteString, ByteString)>> {
    vec((text(), text()), 0..4)
}

/// Any property list, each property with a value the spec allows, before `restrict`.
fn any_properties() -> impl Strategy<Value = Properties> {
    let message = (
        flag(),
        opt(any::<u32>()),
        opt(text()),
        opt(topic_name()),
        opt(binary(32)),
        vec(subscription_id(), 0..4),
        opt(1..=u16::MAX),
    );
    let session = (
        opt(any::<u32>()),
        opt(text()),
        opt(any::<u16>()),
        opt(text()),
        opt(binary(32)),
        flag(),
        opt(any::<u32>()),
        flag(),
        opt(text()),
        opt(text()),
        opt(text()),
    );
    let limits = (
        opt(1..=u16::MAX),
        opt(any::<u16>()),
        flag(),
        flag(),
        user_properties(),
        opt(1..=u32::MAX),
        flag(),
        flag(),
        flag(),
    );
    (message, session, limits).prop_map(|(message, session, limits)| {
        let (
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            subscription_identifiers,
            topic_alias,
        ) = message;
        let (
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            authentication_data,
            request_problem_information,
            will_delay_interval,
            request_response_information,
            response_information,
            server_reference,
            reason_string,
        ) = session;
        let (
            receive_maximum,
            topic_alias_maximum,
            maximum_qos,
            retain_available,
            user_properties,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available,
        ) = limits;
        PropertyFields {
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            subscription_identifiers,
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            authentication_data,
            request_problem_information,
            will_delay_interval,
            request_response_information,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            topic_alias,
            maximum_qos,
            retain_available,
            user_properties,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available,
        }
        .into()
    })
}

/// The properties of a packet in `ctx`: none in 3.1.1; in 5.0 often none, else any allowed set.
fn properties(p: Protocol, ctx: Ctx) -> BoxedStrategy<Properties> {
    match p {
        Protocol::V311 => Just(Properties::default()).boxed(),
        Protocol::V5 => prop_oneof![
            1 => Just(Properties::default()),
            3 => any_properties().prop_map(move |props| restrict(props, ctx)),
        ]
        .boxed(),
    }
}

// ---------------------------------------------------------------------------------------------
// One generator per packet.
// ---------------------------------------------------------------------------------------------

fn will(p: Protocol) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        binary(64),
        qos(),
        any::<bool>(),
        properties(p, Ctx::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(p: Protocol) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        properties(p, Ctx::Connect),
        text(),
        option::of(will(p)),
        option::of(text()),
        option::of(binary(32)),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                let mut connect = Connect {
                    protocol: p,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                };
                if p == Protocol::V311 {
                    // A password needs a user name [MQTT-3.1.2-22]; an empty client
                    // identifier needs a clean session [MQTT-3.1.3-7].
                    if connect.username.is_none() {
                        connect.password = None;
                    }
                    if connect.client_id.is_empty() {
                        connect.clean_start = true;
                    }
                }
                Packet::Connect(Box::new(connect))
            },
        )
}

fn connack(p: Protocol) -> impl Strategy<Value = Packet> {
    let codes = match p {
        Protocol::V311 => CONNACK_V311,
        Protocol::V5 => CONNACK_V5,
    };
    (any::<bool>(), reason(codes), properties(p, Ctx::ConnAck)).prop_map(
        |(session_present, code, properties)| {
            Packet::ConnAck(ConnAck {
                // A refused connection has no session [MQTT-3.2.2-4].
                session_present: session_present && code == ReasonCode::Success,
                code,
                properties,
            })
        },
    )
}

/// A PUBLISH; `max_payload` bounds the payload size.
fn publish(p: Protocol, max_payload: usize) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        properties(p, Ctx::Publish),
        binary(max_payload),
        any::<bool>(),
    )
        .prop_map(
            |(qos, dup, retain, topic, id, properties, payload, use_alias_only)| {
                let mut publish = Publish {
                    // DUP must be 0 at QoS 0 [MQTT-3.3.1-2].
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic,
                    // A packet identifier only at QoS 1 and 2.
                    packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
                    properties,
                    payload,
                };
                // With a topic alias (MQTT 5 only) the topic name may be empty.
                if use_alias_only && publish.properties.topic_alias.is_some() {
                    publish.topic = ByteString::new();
                }
                Packet::Publish(publish)
            },
        )
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: `make` picks the variant, `codes` its MQTT 5 reasons.
fn pub_response(
    p: Protocol,
    codes: &'static [ReasonCode],
    make: fn(PubResponse) -> Packet,
) -> impl Strategy<Value = Packet> {
    let reason = match p {
        Protocol::V311 => Just(ReasonCode::Success).boxed(),
        Protocol::V5 => reason(codes).boxed(),
    };
    (packet_id(), reason, properties(p, Ctx::PubResponse)).prop_map(
        move |(packet_id, reason, properties)| {
            make(PubResponse {
                packet_id,
                reason,
                properties,
            })
        },
    )
}

fn puback(p: Protocol) -> impl Strategy<Value = Packet> {
    pub_response(p, PUBACK_PUBREC_V5, Packet::PubAck)
}

fn pubrec(p: Protocol) -> impl Strategy<Value = Packet> {
    pub_response(p, PUBACK_PUBREC_V5, Packet::PubRec)
}

fn pubrel(p: Protocol) -> impl Strategy<Value = Packet> {
    pub_response(p, PUBREL_PUBCOMP_V5, Packet::PubRel)
}

fn pubcomp(p: Protocol) -> impl Strategy<Value = Packet> {
    pub_response(p, PUBREL_PUBCOMP_V5, Packet::PubComp)
}

fn retain_handling() -> impl Strategy<Value = RetainHandling> {
    prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendAtSubscribeIfNew),
        Just(RetainHandling::DoNotSend),
    ]
}

/// A topic filter and its options; in 3.1.1 only the QoS exists.
fn subscription(p: Protocol) -> impl Strategy<Value = (ByteString, SubscriptionOptions)> {
    (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        retain_handling(),
    )
        .prop_map(
            move |(filter, qos, no_local, retain_as_published, retain_handling)| {
                let options = match p {
                    Protocol::V311 => SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    },
                    Protocol::V5 => SubscriptionOptions {
                        qos,
                        // No Local is a protocol error on a shared subscription [MQTT-3.8.3-4].
                        no_local: no_local && !filter.starts_with("$share/"),
                        retain_as_published,
                        retain_handling,
                    },
                };
                (filter, options)
            },
        )
}

fn subscribe(p: Protocol) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        properties(p, Ctx::Subscribe),
        vec(subscription(p), 1..6),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn suback(p: Protocol) -> impl Strategy<Value = Packet> {
    let codes = match p {
        Protocol::V311 => SUBACK_V311,
        Protocol::V5 => SUBACK_V5,
    };
    (
        packet_id(),
        properties(p, Ctx::SubAck),
        vec(reason(codes), 1..6),
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons,
            })
        })
}

fn unsubscribe(p: Protocol) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        properties(p, Ctx::Unsubscribe),
        vec(topic_filter(), 1..6),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn unsuback(p: Protocol) -> impl Strategy<Value = Packet> {
    // 3.1.1 UNSUBACK is the packet identifier alone.
    let reasons = match p {
        Protocol::V311 => Just(Vec::new()).boxed(),
        Protocol::V5 => vec(reason(UNSUBACK_V5), 1..6).boxed(),
    };
    (packet_id(), properties(p, Ctx::UnsubAck), reasons).prop_map(
        |(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons,
            })
        },
    )
}

fn pingreq() -> impl Strategy<Value = Packet> {
    Just(Packet::PingReq)
}

fn pingresp() -> impl Strategy<Value = Packet> {
    Just(Packet::PingResp)
}

fn disconnect(p: Protocol) -> impl Strategy<Value = Packet> {
    // 3.1.1 DISCONNECT has no variable header: always a normal disconnection.
    let reason = match p {
        Protocol::V311 => Just(ReasonCode::Success).boxed(),
        Protocol::V5 => reason(DISCONNECT_V5).boxed(),
    };
    (reason, properties(p, Ctx::Disconnect))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
}

/// AUTH exists only in MQTT 5.
fn auth() -> impl Strategy<Value = Packet> {
    (reason(AUTH_V5), properties(Protocol::V5, Ctx::Auth))
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
}

/// Any packet of protocol `p`.
fn packet(p: Protocol) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(p),
        connack(p),
        publish(p, 4096),
        puback(p),
        pubrec(p),
        pubrel(p),
        pubcomp(p),
        subscribe(p),
        suback(p),
        unsubscribe(p),
        unsuback(p),
        pingreq(),
        pingresp(),
        disconnect(p),
    ];
    match p {
        Protocol::V311 => common.boxed(),
        Protocol::V5 => prop_oneof![14 => common, 1 => auth()].boxed(),
    }
}

// ---------------------------------------------------------------------------------------------
// The properties checked.
// ---------------------------------------------------------------------------------------------

fn encode(packet: &Packet, p: Protocol) -> Result<Bytes, TestCaseError> {
    let mut buf = BytesMut::new();
    packet
        .encode(p, &mut buf)
        .map_err(|e| TestCaseError::fail(format!("encode failed: {e}")))?;
    Ok(buf.freeze())
}

/// `encoded_len` matches `encode`, and `decode` gives the packet back using the whole frame.
fn check_roundtrip(packet: &Packet, p: Protocol) -> Result<(), TestCaseError> {
    let wire = encode(packet, p)?;
    prop_assert_eq!(packet.encoded_len(p), wire.len(), "encoded_len vs encode");

    let mut buf = BytesMut::from(&wire[..]);
    let decoded = decode(&mut buf, p, usize::MAX)
        .map_err(|e| TestCaseError::fail(format!("decode failed: {e} on {wire:02x?}")))?;
    prop_assert_eq!(decoded.as_ref(), Some(packet));
    prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());

    // The frame's exact size is within a maximum packet size of that size.
    let mut buf = BytesMut::from(&wire[..]);
    prop_assert!(decode(&mut buf, p, wire.len()).is_ok());
    Ok(())
}

/// Fed one byte at a time, the frame stays incomplete until its last byte, `needed` never
/// overshoots what is missing, and the packet comes out once, at the end.
fn check_byte_by_byte(packet: &Packet, p: Protocol) -> Result<(), TestCaseError> {
    let wire = encode(packet, p)?;
    let mut buf = BytesMut::new();
    for &byte in wire.iter() {
        match check_frame(&buf, usize::MAX) {
            Ok(FrameStatus::Incomplete { needed }) => {
                let missing = wire.len() - buf.len();
                prop_assert!(
                    (1..=missing).contains(&needed),
                    "needed {} with {} of {} bytes buffered",
                    needed,
                    buf.len(),
                    wire.len()
                );
            }
            other => prop_assert!(
                false,
                "{:?} with {} of {} bytes buffered",
                other,
                buf.len(),
                wire.len()
            ),
        }
        let early = decode(&mut buf, p, usize::MAX);
        prop_assert_eq!(early, Ok(None), "decoded before the last byte");
        buf.put_u8(byte);
    }
    match check_frame(&buf, usize::MAX) {
        Ok(FrameStatus::Complete(header)) => prop_assert_eq!(header.frame_len(), wire.len()),
        other => prop_assert!(false, "complete frame reported as {:?}", other),
    }
    let decoded = decode(&mut buf, p, usize::MAX);
    prop_assert_eq!(decoded, Ok(Some(packet.clone())));
    prop_assert!(buf.is_empty());
    Ok(())
}

/// One round-trip test per packet generator and protocol version.
macro_rules! roundtrip_tests {
    ($($name:ident: $strategy:expr, $protocol:expr;)*) => {
        proptest! {
            $(
                #[test]
                fn $name(packet in $strategy) {
                    check_roundtrip(&packet, $protocol)?;
                }
            )*
        }
    };
}

use Protocol::{V311, V5};

roundtrip_tests! {
    connect_v311: connect(V311), V311;
    connect_v5: connect(V5), V5;
    connack_v311: connack(V311), V311;
    connack_v5: connack(V5), V5;
    publish_v311: publish(V311, 4096), V311;
    publish_v5: publish(V5, 4096), V5;
    puback_v311: puback(V311), V311;
    puback_v5: puback(V5), V5;
    pubrec_v311: pubrec(V311), V311;
    pubrec_v5: pubrec(V5), V5;
    pubrel_v311: pubrel(V311), V311;
    pubrel_v5: pubrel(V5), V5;
    pubcomp_v311: pubcomp(V311), V311;
    pubcomp_v5: pubcomp(V5), V5;
    subscribe_v311: subscribe(V311), V311;
    subscribe_v5: subscribe(V5), V5;
    suback_v311: suback(V311), V311;
    suback_v5: suback(V5), V5;
    unsubscribe_v311: unsubscribe(V311), V311;
    unsubscribe_v5: unsubscribe(V5), V5;
    unsuback_v311: unsuback(V311), V311;
    unsuback_v5: unsuback(V5), V5;
    pingreq_v311: pingreq(), V311;
    pingreq_v5: pingreq(), V5;
    pingresp_v311: pingresp(), V311;
    pingresp_v5: pingresp(), V5;
    disconnect_v311: disconnect(V311), V311;
    disconnect_v5: disconnect(V5), V5;
    auth_v5: auth(), V5;
}

proptest! {
    #[test]
    fn byte_by_byte_v311(packet in packet(V311)) {
        check_byte_by_byte(&packet, V311)?;
    }

    #[test]
    fn byte_by_byte_v5(packet in packet(V5)) {
        check_byte_by_byte(&packet, V5)?;
    }

    /// Frames written back to back come out one by one, each taking exactly its own bytes.
    #[test]
    fn back_to_back_frames(
        (p, packets) in prop_oneof![Just(V311), Just(V5)]
            .prop_flat_map(|p| (Just(p), vec(packet(p), 1..6)))
    ) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            packet.encode(p, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        for packet in &packets {
            let decoded = decode(&mut buf, p, usize::MAX);
            prop_assert_eq!(decoded, Ok(Some(packet.clone())));
        }
        prop_assert!(buf.is_empty());
    }
}

proptest! {
    // Payloads past 16 KiB take a three-byte remaining length; fewer cases, they are large.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn large_publish_roundtrip(p in prop_oneof![Just(V311), Just(V5)], size in 16_384usize..40_000) {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: ByteString::from_static("big/payload"),
            packet_id: 7,
            properties: Properties::default(),
            payload: Bytes::from(vec![0xA5; size]),
        });
        check_roundtrip(&packet, p)?;
        check_byte_by_byte(&packet, p)?;
    }
}

proptest! {
    /// A PUBLISH encoded from borrowed parts is byte for byte the packet's own encoding,
    /// with the length it announced, and decodes back to the packet.
    #[test]
    fn publish_ref_encodes_like_the_packet(
        (p, packet) in prop_oneof![Just(V311), Just(V5)]
            .prop_flat_map(|p| (Just(p), publish(p, 4096)))
    ) {
        let Packet::Publish(publish) = &packet else {
            return Err(TestCaseError::fail("not a PUBLISH"));
        };
        let mut owned = BytesMut::new();
        packet.encode(p, &mut owned).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut borrowed = BytesMut::new();
        let parts = publish.as_ref();
        parts.encode(p, &mut borrowed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&borrowed[..], &owned[..]);
        prop_assert_eq!(parts.encoded_len(p), borrowed.len());
        prop_assert_eq!(decode(&mut borrowed, p, usize::MAX), Ok(Some(packet.clone())));
    }
}
