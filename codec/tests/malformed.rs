//! Malformed frames: one test per rule of the spec, each asserting the exact `DecodeError`
//! (and `TopicError`) variant the codec reports, plus the reason codes those errors map to and
//! the `EncodeError`s the encoder refuses with.
//!
//! Frames are hand-written bytes. Test names carry the spec's conformance statement number
//! (`mqtt_3_3_1_2_...` is [MQTT-3.3.1-2]) or, where the rule has none, its section.

use bytes::{Bytes, BytesMut};
use tern_codec::topic::{validate_topic_filter, validate_topic_name};
use tern_codec::{
    decode, Auth, ByteString, DecodeError, EncodeError, Packet, Properties, Protocol, Publish, QoS,
    ReasonCode, TopicError,
};

const MAX: usize = 1 << 20;

/// Decodes `frame`, which must be refused; returns the error.
fn err(frame: &[u8], p: Protocol) -> DecodeError {
    let mut buf = BytesMut::from(frame);
    match decode(&mut buf, p, MAX) {
        Err(e) => e,
        Ok(other) => panic!("{frame:02x?} was accepted as {other:?}"),
    }
}

/// Decodes `frame`, which must be one valid packet.
fn ok(frame: &[u8], p: Protocol) -> Packet {
    let mut buf = BytesMut::from(frame);
    match decode(&mut buf, p, MAX) {
        Ok(Some(packet)) if buf.is_empty() => packet,
        other => panic!("{frame:02x?} was not decoded: {other:?}"),
    }
}

/// Both versions refuse `frame` with `expected`.
fn err_both(frame: &[u8], expected: DecodeError) {
    assert_eq!(err(frame, Protocol::V311), expected, "3.1.1");
    assert_eq!(err(frame, Protocol::V5), expected, "5.0");
}

/// A 3.1.1 SUBSCRIBE with packet id 1 and one filter.
fn v3_subscribe(filter: &str, options: u8) -> Vec<u8> {
    let len = 2 + 2 + filter.len() + 1;
    let mut f = vec![0x82, len as u8, 0x00, 0x01, 0x00, filter.len() as u8];
    f.extend_from_slice(filter.as_bytes());
    f.push(options);
    f
}

/// A 5.0 SUBSCRIBE with packet id 1, no properties and one filter.
fn v5_subscribe(filter: &str, options: u8) -> Vec<u8> {
    let len = 2 + 1 + 2 + filter.len() + 1;
    let mut f = vec![0x82, len as u8, 0x00, 0x01, 0x00, 0x00, filter.len() as u8];
    f.extend_from_slice(filter.as_bytes());
    f.push(options);
    f
}

/// A 3.1.1 QoS 0 PUBLISH with this topic and no payload.
fn v3_publish(topic: &[u8]) -> Vec<u8> {
    let mut f = vec![0x30, (2 + topic.len()) as u8, 0x00, topic.len() as u8];
    f.extend_from_slice(topic);
    f
}

/// A 5.0 QoS 0 PUBLISH on topic "a" with these raw property bytes and no payload.
fn v5_publish_props(props: &[u8]) -> Vec<u8> {
    let mut f = vec![0x30, (3 + 1 + props.len()) as u8, 0x00, 0x01, b'a'];
    f.push(props.len() as u8);
    f.extend_from_slice(props);
    f
}

/// A 5.0 CONNECT (clean start, keep alive 60, empty client id) with these raw property bytes.
fn v5_connect_props(props: &[u8]) -> Vec<u8> {
    let len = 10 + 1 + props.len() + 2;
    let mut f = vec![
        0x10, len as u8, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
    ];
    f.push(props.len() as u8);
    f.extend_from_slice(props);
    f.extend_from_slice(&[0x00, 0x00]);
    f
}

/// A CONNECT with this protocol name, level and flags, keep alive 60 and an empty client id,
/// followed by `rest` (3.1.1 layout: no properties).
fn v3_connect(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let len = 2 + name.len() + 1 + 1 + 2 + 2 + rest.len();
    let mut f = vec![0x10, len as u8, 0x00, name.len() as u8];
    f.extend_from_slice(name);
    f.extend_from_slice(&[level, flags, 0x00, 0x3C, 0x00, 0x00]);
    f.extend_from_slice(rest);
    f
}

// ---------------------------------------------------------------------------------------------
// Fixed header (spec 2.1)
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_2_1_2_packet_type_0_is_reserved() {
    err_both(&[0x00, 0x00], DecodeError::InvalidPacketType(0));
}

#[test]
fn mqtt_2_1_2_auth_does_not_exist_in_3_1_1() {
    assert_eq!(
        err(&[0xF0, 0x00], Protocol::V311),
        DecodeError::InvalidPacketType(15)
    );
    // The same frame is a valid MQTT 5 AUTH.
    assert_eq!(
        ok(&[0xF0, 0x00], Protocol::V5),
        Packet::Auth(Auth::default())
    );
}

#[test]
fn mqtt_3_8_1_1_subscribe_unsubscribe_pubrel_flags_must_be_0010() {
    // [MQTT-3.6.1-1] PUBREL, [MQTT-3.8.1-1] SUBSCRIBE, [MQTT-3.10.1-1] UNSUBSCRIBE.
    let cases: [(&[u8], u8); 6] = [
        (&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], 8),
        (&[0x83, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], 8),
        (&[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], 10),
        (&[0xAA, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], 10),
        (&[0x60, 0x02, 0x00, 0x01], 6),
        (&[0x6F, 0x02, 0x00, 0x01], 6),
    ];
    for (frame, packet_type) in cases {
        err_both(
            frame,
            DecodeError::InvalidHeaderFlags {
                packet_type,
                flags: frame[0] & 0x0F,
            },
        );
    }
}

#[test]
fn mqtt_2_1_3_1_reserved_flags_of_other_packets_must_be_0() {
    let cases: [(&[u8], u8); 5] = [
        (&[0x42, 0x02, 0x00, 0x01], 4), // PUBACK
        (&[0x11, 0x00], 1),             // CONNECT (flags are checked before the body)
        (&[0x28, 0x02, 0x00, 0x00], 2), // CONNACK
        (&[0xC1, 0x00], 12),            // PINGREQ
        (&[0xE8, 0x00], 14),            // DISCONNECT
    ];
    for (frame, packet_type) in cases {
        err_both(
            frame,
            DecodeError::InvalidHeaderFlags {
                packet_type,
                flags: frame[0] & 0x0F,
            },
        );
    }
}

#[test]
fn mqtt_3_3_1_4_publish_qos_3_is_malformed() {
    err_both(
        &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        DecodeError::InvalidQoS,
    );
}

#[test]
fn mqtt_3_3_1_2_dup_with_qos0_is_malformed() {
    err_both(&[0x38, 0x03, 0x00, 0x01, b'a'], DecodeError::DupWithQoS0);
}

#[test]
fn mqtt_1_5_5_remaining_length_fifth_byte_is_var_int_too_long() {
    err_both(
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        DecodeError::VarIntTooLong,
    );
    // Known as soon as the fourth length byte still has its continuation bit.
    err_both(&[0x30, 0x80, 0x80, 0x80, 0x80], DecodeError::VarIntTooLong);
}

#[test]
fn mqtt_1_5_5_1_non_minimal_var_int_is_malformed() {
    err_both(&[0x30, 0x80, 0x00], DecodeError::VarIntNotMinimal);
    err_both(&[0x30, 0xFF, 0x80, 0x00], DecodeError::VarIntNotMinimal);
    // Inside a packet too: a property length of 0x80 0x00.
    assert_eq!(
        err(&[0xE0, 0x03, 0x00, 0x80, 0x00], Protocol::V5),
        DecodeError::VarIntNotMinimal
    );
}

#[test]
fn packet_too_large_is_refused_from_the_fixed_header_alone() {
    // A PUBLISH announcing 1000 bytes of body; none of the body has arrived.
    let mut buf = BytesMut::from(&[0x30, 0xE8, 0x07][..]);
    assert_eq!(
        decode(&mut buf, Protocol::V5, 100),
        Err(DecodeError::PacketTooLarge {
            size: 1003,
            max: 100,
        })
    );
    // The limit counts the fixed header: 1003 fits, 1002 does not.
    let mut buf = BytesMut::from(&[0x30, 0xE8, 0x07][..]);
    assert_eq!(decode(&mut buf, Protocol::V5, 1003), Ok(None));
    let mut buf = BytesMut::from(&[0x30, 0xE8, 0x07][..]);
    assert_eq!(
        decode(&mut buf, Protocol::V5, 1002),
        Err(DecodeError::PacketTooLarge {
            size: 1003,
            max: 1002,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Lengths and data representation (spec 1.5)
// ---------------------------------------------------------------------------------------------

#[test]
fn field_running_past_the_packet_is_truncated() {
    // Topic length 5 with one byte of topic.
    err_both(&[0x30, 0x03, 0x00, 0x05, b'a'], DecodeError::Truncated);
    // PUBACK with half a packet identifier.
    err_both(&[0x40, 0x01, 0x00], DecodeError::Truncated);
    // PUBLISH with remaining length 0: no topic at all.
    err_both(&[0x30, 0x00], DecodeError::Truncated);
    // Property length beyond the end of the packet.
    assert_eq!(
        err(&[0xE0, 0x03, 0x00, 0x05, 0x11], Protocol::V5),
        DecodeError::Truncated
    );
}

#[test]
fn bytes_after_the_last_field_are_trailing_bytes() {
    err_both(&[0xC0, 0x01, 0x00], DecodeError::TrailingBytes);
    err_both(&[0xD0, 0x01, 0x00], DecodeError::TrailingBytes);
    // 3.1.1 PUBACK is exactly two bytes; 3.1.1 DISCONNECT is empty.
    assert_eq!(
        err(&[0x40, 0x03, 0x00, 0x01, 0x00], Protocol::V311),
        DecodeError::TrailingBytes
    );
    assert_eq!(
        err(&[0xE0, 0x01, 0x00], Protocol::V311),
        DecodeError::TrailingBytes
    );
    // 5.0 DISCONNECT with a byte after its (empty) properties.
    assert_eq!(
        err(&[0xE0, 0x03, 0x00, 0x00, 0x00], Protocol::V5),
        DecodeError::TrailingBytes
    );
}

#[test]
fn mqtt_1_5_4_1_invalid_utf8_is_malformed() {
    err_both(&v3_publish(&[0xFF]), DecodeError::InvalidUtf8);
    // A truncated multi-byte sequence.
    err_both(&v3_publish(&[b'a', 0xC3]), DecodeError::InvalidUtf8);
}

#[test]
fn mqtt_1_5_4_1_utf16_surrogate_in_utf8_is_malformed() {
    // U+D800 encoded as if it were a scalar value: ED A0 80.
    err_both(&v3_publish(&[0xED, 0xA0, 0x80]), DecodeError::InvalidUtf8);
}

#[test]
fn mqtt_1_5_4_2_null_character_is_malformed() {
    err_both(&v3_publish(&[b'a', 0x00]), DecodeError::NullCharacter);
    // Also in a user property of MQTT 5.
    assert_eq!(
        err(
            &v5_publish_props(&[0x26, 0x00, 0x01, 0x00, 0x00, 0x01, b'v']),
            Protocol::V5
        ),
        DecodeError::NullCharacter
    );
}

// ---------------------------------------------------------------------------------------------
// CONNECT and CONNACK (spec 3.1, 3.2)
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_3_1_2_1_protocol_name_must_be_mqtt() {
    err_both(
        &v3_connect(b"MQTt", 4, 0x02, &[]),
        DecodeError::InvalidProtocolName,
    );
    err_both(
        &v3_connect(b"HTTP", 5, 0x02, &[]),
        DecodeError::InvalidProtocolName,
    );
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level() {
    // MQTT 3.1: protocol name "MQIsdp", level 3.
    err_both(
        &v3_connect(b"MQIsdp", 3, 0x02, &[]),
        DecodeError::UnsupportedProtocolVersion(3),
    );
    err_both(
        &v3_connect(b"MQTT", 6, 0x02, &[]),
        DecodeError::UnsupportedProtocolVersion(6),
    );
    err_both(
        &v3_connect(b"MQTT", 3, 0x02, &[]),
        DecodeError::UnsupportedProtocolVersion(3),
    );
}

#[test]
fn mqtt_3_1_2_3_reserved_connect_flag_must_be_0() {
    err_both(
        &v3_connect(b"MQTT", 4, 0x03, &[]),
        DecodeError::ReservedConnectFlag,
    );
}

#[test]
fn mqtt_3_1_2_11_will_qos_or_retain_without_will_flag() {
    // Will QoS 1 without the will flag.
    err_both(
        &v3_connect(b"MQTT", 4, 0x0A, &[]),
        DecodeError::WillFlagsWithoutWill,
    );
    // Will retain without the will flag.
    err_both(
        &v3_connect(b"MQTT", 4, 0x22, &[]),
        DecodeError::WillFlagsWithoutWill,
    );
}

#[test]
fn mqtt_3_1_2_14_will_qos_3_is_malformed() {
    let will = [0x00, 0x01, b't', 0x00, 0x00];
    err_both(
        &v3_connect(b"MQTT", 4, 0x1E, &will),
        DecodeError::InvalidQoS,
    );
}

#[test]
fn mqtt_3_1_2_22_password_without_username_in_3_1_1() {
    let password = [0x00, 0x01, b'p'];
    assert_eq!(
        err(&v3_connect(b"MQTT", 4, 0x42, &password), Protocol::V311),
        DecodeError::PasswordWithoutUsername
    );
}

#[test]
fn mqtt_3_1_3_will_topic_must_be_a_valid_topic_name() {
    let will = [0x00, 0x03, b'a', b'/', b'#', 0x00, 0x00];
    err_both(
        &v3_connect(b"MQTT", 4, 0x06, &will),
        DecodeError::InvalidTopicName(TopicError::WildcardInName),
    );
}

#[test]
fn mqtt_3_2_2_1_reserved_connack_flags_must_be_0() {
    assert_eq!(
        err(&[0x20, 0x02, 0x02, 0x00], Protocol::V311),
        DecodeError::ReservedConnackFlags
    );
    assert_eq!(
        err(&[0x20, 0x03, 0x80, 0x00, 0x00], Protocol::V5),
        DecodeError::ReservedConnackFlags
    );
}

#[test]
fn mqtt_3_2_2_3_v311_connack_return_code_above_5_is_invalid() {
    assert_eq!(
        err(&[0x20, 0x02, 0x00, 0x06], Protocol::V311),
        DecodeError::InvalidReasonCode {
            packet: "CONNACK",
            code: 6,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Packet identifiers (spec 2.2.1)
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_2_2_1_3_publish_qos1_and_qos2_need_a_non_zero_packet_id() {
    err_both(
        &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
        DecodeError::ZeroPacketId,
    );
    err_both(
        &[0x34, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
        DecodeError::ZeroPacketId,
    );
}

#[test]
fn mqtt_2_2_1_3_subscribe_needs_a_non_zero_packet_id() {
    err_both(
        &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
        DecodeError::ZeroPacketId,
    );
}

#[test]
fn mqtt_2_2_1_3_unsubscribe_needs_a_non_zero_packet_id() {
    err_both(
        &[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'],
        DecodeError::ZeroPacketId,
    );
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE and UNSUBSCRIBE (spec 3.8, 3.10)
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_3_8_3_3_subscribe_without_filters() {
    assert_eq!(
        err(&[0x82, 0x02, 0x00, 0x01], Protocol::V311),
        DecodeError::NoTopicFilters
    );
    assert_eq!(
        err(&[0x82, 0x03, 0x00, 0x01, 0x00], Protocol::V5),
        DecodeError::NoTopicFilters
    );
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_without_filters() {
    assert_eq!(
        err(&[0xA2, 0x02, 0x00, 0x01], Protocol::V311),
        DecodeError::NoTopicFilters
    );
    assert_eq!(
        err(&[0xA2, 0x03, 0x00, 0x01, 0x00], Protocol::V5),
        DecodeError::NoTopicFilters
    );
}

#[test]
fn mqtt_3_8_3_4_v311_reserved_subscription_option_bits() {
    // In 3.1.1 only the two QoS bits exist; no local (bit 2) is reserved there.
    for options in [0x04, 0x10, 0x80] {
        assert_eq!(
            err(&v3_subscribe("a", options), Protocol::V311),
            DecodeError::ReservedSubscriptionOptions,
            "options {options:#04x}"
        );
    }
}

#[test]
fn mqtt_3_8_3_5_v5_reserved_subscription_option_bits() {
    for options in [0x40, 0x80, 0xC1] {
        assert_eq!(
            err(&v5_subscribe("a", options), Protocol::V5),
            DecodeError::ReservedSubscriptionOptions,
            "options {options:#04x}"
        );
    }
}

#[test]
fn mqtt_3_8_3_4_subscription_qos_3_is_malformed() {
    assert_eq!(
        err(&v3_subscribe("a", 0x03), Protocol::V311),
        DecodeError::InvalidQoS
    );
    assert_eq!(
        err(&v5_subscribe("a", 0x03), Protocol::V5),
        DecodeError::InvalidQoS
    );
}

#[test]
fn mqtt_3_8_3_1_retain_handling_3_is_malformed() {
    assert_eq!(
        err(&v5_subscribe("a", 0x30), Protocol::V5),
        DecodeError::InvalidRetainHandling
    );
}

#[test]
fn mqtt_3_8_3_4_no_local_on_shared_subscription() {
    assert_eq!(
        err(&v5_subscribe("$share/g/a", 0x04), Protocol::V5),
        DecodeError::NoLocalOnSharedSubscription
    );
    // The same filter without no local is fine.
    assert!(matches!(
        ok(&v5_subscribe("$share/g/a", 0x00), Protocol::V5),
        Packet::Subscribe(_)
    ));
}

// ---------------------------------------------------------------------------------------------
// Topic names and filters (spec 4.7, 4.8)
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_3_3_2_2_wildcards_in_publish_topic_name() {
    for topic in [&b"a/+"[..], b"#", b"a/b#", b"+/x"] {
        let expected = DecodeError::InvalidTopicName(TopicError::WildcardInName);
        assert_eq!(err(&v3_publish(topic), Protocol::V311), expected);
        // In 5.0 the same frame plus an empty property length.
        let mut v5 = v3_publish(topic);
        v5[1] += 1;
        v5.push(0x00);
        assert_eq!(err(&v5, Protocol::V5), expected);
    }
}

#[test]
fn mqtt_4_7_3_1_empty_topic_name_without_topic_alias() {
    assert_eq!(
        err(&[0x30, 0x02, 0x00, 0x00], Protocol::V311),
        DecodeError::InvalidTopicName(TopicError::Empty)
    );
    assert_eq!(
        err(&[0x30, 0x03, 0x00, 0x00, 0x00], Protocol::V5),
        DecodeError::InvalidTopicName(TopicError::Empty)
    );
}

#[test]
fn mqtt_3_3_2_3_4_empty_topic_name_with_topic_alias_is_accepted_in_v5() {
    #[rustfmt::skip]
    let frame = [
        0x30, 0x08,
        0x00, 0x00,       // empty topic
        0x03,             // properties: 3 bytes
        0x23, 0x00, 0x01, //   topic alias 1
        b'h', b'i',
    ];
    let Packet::Publish(publish) = ok(&frame, Protocol::V5) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(publish.topic, "");
    assert_eq!(publish.properties.topic_alias, Some(1));
    assert_eq!(publish.payload, Bytes::from_static(b"hi"));
}

#[test]
fn mqtt_4_7_3_1_empty_topic_filter() {
    assert_eq!(
        err(&v3_subscribe("", 0x00), Protocol::V311),
        DecodeError::InvalidTopicFilter(TopicError::Empty)
    );
    assert_eq!(
        err(&v5_subscribe("$share/g/", 0x00), Protocol::V5),
        DecodeError::InvalidTopicFilter(TopicError::Empty)
    );
}

#[test]
fn mqtt_4_7_1_2_multi_level_wildcard_must_be_last() {
    for filter in ["a/#/b", "a#", "#/", "a/#b"] {
        assert_eq!(
            err(&v3_subscribe(filter, 0x00), Protocol::V311),
            DecodeError::InvalidTopicFilter(TopicError::MultiLevelWildcardNotLast),
            "{filter}"
        );
    }
    // UNSUBSCRIBE filters follow the same rules.
    assert_eq!(
        err(
            &[0xA2, 0x07, 0x00, 0x01, 0x00, 0x03, b'#', b'/', b'a'],
            Protocol::V311
        ),
        DecodeError::InvalidTopicFilter(TopicError::MultiLevelWildcardNotLast)
    );
}

#[test]
fn mqtt_4_7_1_3_single_level_wildcard_must_be_alone_in_its_level() {
    for filter in ["a+/b", "a/+b", "++", "a/b+"] {
        assert_eq!(
            err(&v5_subscribe(filter, 0x00), Protocol::V5),
            DecodeError::InvalidTopicFilter(TopicError::SingleLevelWildcardNotAlone),
            "{filter}"
        );
    }
}

#[test]
fn mqtt_4_8_2_1_share_name_must_be_non_empty_without_wildcards() {
    for filter in ["$share//a", "$share/g", "$share/g+/a", "$share/#/a"] {
        assert_eq!(
            err(&v5_subscribe(filter, 0x00), Protocol::V5),
            DecodeError::InvalidTopicFilter(TopicError::InvalidShareName),
            "{filter}"
        );
    }
}

#[test]
fn mqtt_1_5_4_topic_longer_than_65535_bytes() {
    // A frame cannot carry such a topic (its length is two bytes), so the rule is checked on
    // the validators the broker uses for topics from elsewhere (configuration, rewriting).
    let long = "a".repeat(65_536);
    assert_eq!(validate_topic_name(&long), Err(TopicError::TooLong));
    assert_eq!(validate_topic_filter(&long), Err(TopicError::TooLong));
    assert_eq!(validate_topic_name(&long[..65_535]), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Reason codes (spec 2.4)
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_3_4_2_1_invalid_puback_reason_code() {
    // 0x01 (granted QoS 1) is a SUBACK code only.
    assert_eq!(
        err(&[0x40, 0x03, 0x00, 0x01, 0x01], Protocol::V5),
        DecodeError::InvalidReasonCode {
            packet: "PUBACK/PUBREC",
            code: 0x01,
        }
    );
    // 0x10 (no matching subscribers) is not a PUBREL code.
    assert_eq!(
        err(&[0x62, 0x03, 0x00, 0x01, 0x10], Protocol::V5),
        DecodeError::InvalidReasonCode {
            packet: "PUBREL/PUBCOMP",
            code: 0x10,
        }
    );
}

#[test]
fn mqtt_3_14_2_1_invalid_disconnect_reason_code() {
    for code in [0x01, 0x05, 0x84, 0x8A, 0xFF] {
        assert_eq!(
            err(&[0xE0, 0x01, code], Protocol::V5),
            DecodeError::InvalidReasonCode {
                packet: "DISCONNECT",
                code,
            }
        );
    }
}

#[test]
fn mqtt_3_9_3_invalid_suback_reason_code() {
    assert_eq!(
        err(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x03], Protocol::V5),
        DecodeError::InvalidReasonCode {
            packet: "SUBACK",
            code: 0x03,
        }
    );
    // 3.1.1 SUBACK return codes are 0, 1, 2 and 0x80 only.
    assert_eq!(
        err(&[0x90, 0x03, 0x00, 0x01, 0x87], Protocol::V311),
        DecodeError::InvalidReasonCode {
            packet: "SUBACK",
            code: 0x87,
        }
    );
}

#[test]
fn mqtt_3_2_2_2_invalid_connack_reason_code() {
    assert_eq!(
        err(&[0x20, 0x03, 0x00, 0x01, 0x00], Protocol::V5),
        DecodeError::InvalidReasonCode {
            packet: "CONNACK",
            code: 0x01,
        }
    );
    // Session taken over is a DISCONNECT code, not a CONNACK one.
    assert_eq!(
        err(&[0x20, 0x03, 0x00, 0x8E, 0x00], Protocol::V5),
        DecodeError::InvalidReasonCode {
            packet: "CONNACK",
            code: 0x8E,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Properties (spec 2.2.2)
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_2_2_2_unknown_property_identifier() {
    assert_eq!(
        err(&[0xE0, 0x03, 0x00, 0x01, 0x05], Protocol::V5),
        DecodeError::UnknownProperty(0x05)
    );
    assert_eq!(
        err(&v5_publish_props(&[0x00]), Protocol::V5),
        DecodeError::UnknownProperty(0x00)
    );
}

#[test]
fn mqtt_2_2_2_2_property_not_allowed_in_packet() {
    // Topic alias belongs to PUBLISH only.
    assert_eq!(
        err(&v5_connect_props(&[0x23, 0x00, 0x01]), Protocol::V5),
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            packet: "CONNECT",
        }
    );
    // Session expiry interval is not a PUBLISH property.
    assert_eq!(
        err(
            &v5_publish_props(&[0x11, 0x00, 0x00, 0x00, 0x01]),
            Protocol::V5
        ),
        DecodeError::PropertyNotAllowed {
            id: 0x11,
            packet: "PUBLISH",
        }
    );
}

#[test]
fn mqtt_2_2_2_2_duplicate_property_is_a_protocol_error() {
    assert_eq!(
        err(
            &v5_publish_props(&[
                0x02, 0x00, 0x00, 0x00, 0x01, // message expiry interval 1
                0x02, 0x00, 0x00, 0x00, 0x02, // and again
            ]),
            Protocol::V5
        ),
        DecodeError::DuplicateProperty(0x02)
    );
}

#[test]
fn mqtt_3_3_2_3_user_property_and_subscription_identifier_may_repeat_in_publish() {
    let Packet::Publish(publish) = ok(
        &v5_publish_props(&[
            0x0B, 0x01, // subscription identifier 1
            0x0B, 0x02, // subscription identifier 2
            0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b', // a=b
            0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'c', // a=c: same key again, kept in order
        ]),
        Protocol::V5,
    ) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(publish.properties.subscription_identifiers, [1, 2]);
    assert_eq!(
        publish.properties.user_properties,
        [
            (ByteString::from("a"), ByteString::from("b")),
            (ByteString::from("a"), ByteString::from("c")),
        ]
    );
}

#[test]
fn mqtt_3_8_2_1_2_two_subscription_identifiers_in_subscribe() {
    #[rustfmt::skip]
    let frame = [
        0x82, 0x0B,
        0x00, 0x01,
        0x04, 0x0B, 0x01, 0x0B, 0x02,
        0x00, 0x01, b'a', 0x00,
    ];
    assert_eq!(
        err(&frame, Protocol::V5),
        DecodeError::DuplicateProperty(0x0B)
    );
}

#[test]
fn mqtt_3_3_2_3_2_payload_format_indicator_2_is_invalid() {
    assert_eq!(
        err(&v5_publish_props(&[0x01, 0x02]), Protocol::V5),
        DecodeError::InvalidPropertyValue(0x01)
    );
}

#[test]
fn mqtt_3_1_2_11_3_receive_maximum_0_is_invalid() {
    assert_eq!(
        err(&v5_connect_props(&[0x21, 0x00, 0x00]), Protocol::V5),
        DecodeError::InvalidPropertyValue(0x21)
    );
}

#[test]
fn mqtt_3_3_2_3_4_topic_alias_0_is_invalid() {
    assert_eq!(
        err(&v5_publish_props(&[0x23, 0x00, 0x00]), Protocol::V5),
        DecodeError::InvalidPropertyValue(0x23)
    );
}

#[test]
fn mqtt_3_1_2_11_4_maximum_packet_size_0_is_invalid() {
    assert_eq!(
        err(
            &v5_connect_props(&[0x27, 0x00, 0x00, 0x00, 0x00]),
            Protocol::V5
        ),
        DecodeError::InvalidPropertyValue(0x27)
    );
}

#[test]
fn mqtt_3_8_2_1_2_subscription_identifier_0_is_invalid() {
    #[rustfmt::skip]
    let frame = [
        0x82, 0x09,
        0x00, 0x01,
        0x02, 0x0B, 0x00,
        0x00, 0x01, b'a', 0x00,
    ];
    assert_eq!(
        err(&frame, Protocol::V5),
        DecodeError::InvalidPropertyValue(0x0B)
    );
}

// ---------------------------------------------------------------------------------------------
// Reason codes for decode errors
// ---------------------------------------------------------------------------------------------

#[test]
fn decode_errors_map_to_the_reason_code_the_broker_sends() {
    let cases = [
        (
            DecodeError::PacketTooLarge { size: 10, max: 5 },
            ReasonCode::PacketTooLarge,
        ),
        (
            DecodeError::InvalidTopicName(TopicError::WildcardInName),
            ReasonCode::TopicNameInvalid,
        ),
        (
            DecodeError::InvalidTopicFilter(TopicError::Empty),
            ReasonCode::TopicFilterInvalid,
        ),
        (
            DecodeError::UnsupportedProtocolVersion(6),
            ReasonCode::UnsupportedProtocolVersion,
        ),
        (
            DecodeError::InvalidProtocolName,
            ReasonCode::UnsupportedProtocolVersion,
        ),
        (
            DecodeError::DuplicateProperty(0x02),
            ReasonCode::ProtocolError,
        ),
        (DecodeError::Truncated, ReasonCode::MalformedPacket),
        (DecodeError::InvalidUtf8, ReasonCode::MalformedPacket),
        (DecodeError::DupWithQoS0, ReasonCode::MalformedPacket),
        (DecodeError::VarIntNotMinimal, ReasonCode::MalformedPacket),
    ];
    for (error, code) in cases {
        assert_eq!(error.reason_code(), code, "{error:?}");
    }
    // And from a real frame.
    assert_eq!(
        err(&v3_publish(b"a/+"), Protocol::V311).reason_code(),
        ReasonCode::TopicNameInvalid
    );
}

// ---------------------------------------------------------------------------------------------
// Encoding refusals
// ---------------------------------------------------------------------------------------------

fn publish(qos: QoS, packet_id: u16, topic: ByteString) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(b"payload"),
    })
}

#[test]
fn encode_publish_qos1_with_packet_id_0_leaves_the_buffer_unchanged() {
    let packet = publish(QoS::AtLeastOnce, 0, ByteString::from("a/b"));
    for p in [Protocol::V311, Protocol::V5] {
        let mut buf = BytesMut::from(&b"earlier"[..]);
        assert_eq!(packet.encode(p, &mut buf), Err(EncodeError::ZeroPacketId));
        assert_eq!(&buf[..], b"earlier");
    }
}

#[test]
fn encode_auth_in_v311_is_not_in_protocol() {
    let mut buf = BytesMut::new();
    assert_eq!(
        Packet::Auth(Auth::default()).encode(Protocol::V311, &mut buf),
        Err(EncodeError::NotInProtocol)
    );
    assert!(buf.is_empty());
}

#[test]
fn encode_topic_of_70000_bytes_is_field_too_long() {
    let packet = publish(QoS::AtMostOnce, 0, ByteString::from("t".repeat(70_000)));
    let mut buf = BytesMut::from(&b"x"[..]);
    assert_eq!(
        packet.encode(Protocol::V5, &mut buf),
        Err(EncodeError::FieldTooLong(70_000))
    );
    assert_eq!(&buf[..], b"x");
}
