//! Byte-exact table tests on hand-written frames.
//!
//! Every frame here is written out byte by byte from the spec (MQTT 3.1.1 and 5.0), never
//! produced by the encoder: each is decoded and its fields asserted, and where the codec has
//! a single canonical encoding the decoded packet is encoded back and compared byte for byte.

use bytes::{Bytes, BytesMut};
use tern_codec::{
    check_frame, decode, ByteString, ConnAck, Connect, Disconnect, FixedHeader, FrameStatus,
    Packet, Properties, PropertyFields, Protocol, PubResponse, Publish, QoS, ReasonCode,
    RetainHandling, Subscribe, SubscriptionOptions, Will,
};

const MAX: usize = 1 << 30;

/// Decodes exactly one packet from `frame`, asserting nothing is left in the buffer.
fn decode_one(frame: &[u8], p: Protocol) -> Packet {
    let mut buf = BytesMut::from(frame);
    let packet = decode(&mut buf, p, MAX)
        .unwrap_or_else(|e| panic!("{frame:02x?} failed to decode: {e:?}"))
        .expect("a complete frame");
    assert!(buf.is_empty(), "bytes left after the frame");
    packet
}

fn encode(packet: &Packet, p: Protocol) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.encode(p, &mut buf).expect("encodes");
    assert_eq!(buf.len(), packet.encoded_len(p), "encoded_len is exact");
    buf.to_vec()
}

/// Decodes `frame`, checks it re-encodes to the same bytes, and returns the packet.
fn decode_and_reencode(frame: &[u8], p: Protocol) -> Packet {
    let packet = decode_one(frame, p);
    assert_eq!(encode(&packet, p), frame, "re-encoding differs");
    packet
}

fn s(v: &str) -> ByteString {
    ByteString::from(v)
}

// ---------------------------------------------------------------------------------------------
// Remaining length (spec 1.5.5 / 2.1.4)
// ---------------------------------------------------------------------------------------------

#[test]
fn remaining_length_0_pingreq() {
    let frame = [0xC0, 0x00];
    assert_eq!(
        check_frame(&frame, MAX),
        Ok(FrameStatus::Complete(FixedHeader {
            first_byte: 0xC0,
            remaining_len: 0,
            header_len: 2,
        }))
    );
    assert_eq!(decode_and_reencode(&frame, Protocol::V311), Packet::PingReq);
}

/// A QoS 0 PUBLISH on topic "a" (3 bytes of body) with `payload_len` bytes of payload, after
/// the hand-written fixed header `header`.
fn publish_frame(header: &[u8], payload_len: usize) -> Vec<u8> {
    let mut frame = header.to_vec();
    frame.extend_from_slice(&[0x00, 0x01, b'a']);
    frame.extend((0..payload_len).map(|i| i as u8));
    frame
}

fn assert_publish_remaining_len(header: &[u8], remaining_len: usize) {
    let frame = publish_frame(header, remaining_len - 3);
    assert_eq!(
        check_frame(&frame, MAX),
        Ok(FrameStatus::Complete(FixedHeader {
            first_byte: 0x30,
            remaining_len,
            header_len: header.len(),
        }))
    );
    // One byte short: exactly one more is needed.
    assert_eq!(
        check_frame(&frame[..frame.len() - 1], MAX),
        Ok(FrameStatus::Incomplete { needed: 1 })
    );
    let Packet::Publish(publish) = decode_and_reencode(&frame, Protocol::V311) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(publish.topic, "a");
    assert_eq!(publish.payload.len(), remaining_len - 3);
    assert_eq!(&publish.payload[..], &frame[header.len() + 3..]);
}

#[test]
fn remaining_length_127_one_byte() {
    assert_publish_remaining_len(&[0x30, 0x7F], 127);
}

#[test]
fn remaining_length_128_two_bytes() {
    assert_publish_remaining_len(&[0x30, 0x80, 0x01], 128);
}

#[test]
fn remaining_length_16383_two_bytes() {
    assert_publish_remaining_len(&[0x30, 0xFF, 0x7F], 16_383);
}

#[test]
fn remaining_length_16384_three_bytes() {
    assert_publish_remaining_len(&[0x30, 0x80, 0x80, 0x01], 16_384);
}

/// For the large lengths only the fixed header is given: `check_frame` must read it, say how
/// many bytes are missing, and size the frame exactly (seen through the packet size limit).
fn assert_big_header(header: &[u8], remaining_len: usize) {
    let header_len = header.len();
    let frame_len = header_len + remaining_len;
    assert_eq!(
        check_frame(header, usize::MAX),
        Ok(FrameStatus::Incomplete {
            needed: remaining_len
        })
    );
    assert_eq!(
        check_frame(header, frame_len),
        Ok(FrameStatus::Incomplete {
            needed: remaining_len
        })
    );
    assert_eq!(
        check_frame(header, frame_len - 1),
        Err(tern_codec::DecodeError::PacketTooLarge {
            size: frame_len,
            max: frame_len - 1,
        })
    );
    // Every strict prefix of the length bytes asks for one more byte.
    for cut in 1..header_len {
        assert_eq!(
            check_frame(&header[..cut], usize::MAX),
            Ok(FrameStatus::Incomplete { needed: 1 }),
            "prefix of {cut} bytes"
        );
    }
}

#[test]
fn remaining_length_2097151_three_bytes() {
    let header = [0x30, 0xFF, 0xFF, 0x7F];
    assert_big_header(&header, 2_097_151);
    let mut frame = header.to_vec();
    frame.resize(4 + 2_097_151, 0);
    assert_eq!(
        check_frame(&frame, MAX),
        Ok(FrameStatus::Complete(FixedHeader {
            first_byte: 0x30,
            remaining_len: 2_097_151,
            header_len: 4,
        }))
    );
}

#[test]
fn remaining_length_2097152_four_bytes() {
    let header = [0x30, 0x80, 0x80, 0x80, 0x01];
    assert_big_header(&header, 2_097_152);
    let mut frame = header.to_vec();
    frame.resize(5 + 2_097_152, 0);
    assert_eq!(
        check_frame(&frame, MAX),
        Ok(FrameStatus::Complete(FixedHeader {
            first_byte: 0x30,
            remaining_len: 2_097_152,
            header_len: 5,
        }))
    );
}

#[test]
fn remaining_length_268435455_maximum() {
    assert_big_header(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], 268_435_455);
    assert_eq!(tern_codec::MAX_VAR_INT, 268_435_455);
}

// ---------------------------------------------------------------------------------------------
// Zero copy
// ---------------------------------------------------------------------------------------------

#[test]
fn publish_payload_and_topic_are_slices_of_the_read_buffer() {
    #[rustfmt::skip]
    let frame = [
        0x32, 0x0C,
        0x00, 0x03, b'a', b'/', b'b', // topic
        0x00, 0x07,                   // packet id
        b'h', b'e', b'l', b'l', b'o', // payload
    ];
    let mut buf = BytesMut::from(&frame[..]);
    let start = buf.as_ptr() as usize;
    let range = start..start + buf.len();
    let Some(Packet::Publish(publish)) = decode(&mut buf, Protocol::V311, MAX).unwrap() else {
        panic!("not a PUBLISH");
    };
    assert_eq!(publish.payload, Bytes::from_static(b"hello"));
    assert_eq!(publish.packet_id, 7);
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    let payload = publish.payload.as_ptr() as usize;
    assert!(range.contains(&payload), "payload was copied");
    assert!(range.contains(&(payload + publish.payload.len() - 1)));
    assert_eq!(
        payload,
        start + 9,
        "payload points at its bytes in the frame"
    );
    assert!(
        range.contains(&(publish.topic.as_ptr() as usize)),
        "topic was copied"
    );
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 frames
// ---------------------------------------------------------------------------------------------

#[test]
fn v311_connect_with_will_username_and_password() {
    #[rustfmt::skip]
    let frame = [
        0x10, 0x31,
        0x00, 0x04, b'M', b'Q', b'T', b'T',
        0x04,             // level 4 = 3.1.1
        0xF6,             // user, password, will retain, will QoS 2, will, clean session
        0x00, 0x3C,       // keep alive 60
        0x00, 0x04, b't', b'e', b'r', b'n',
        0x00, 0x0C, b'd', b'e', b'v', b'/', b'1', b'/', b's', b't', b'a', b't', b'u', b's',
        0x00, 0x04, b'g', b'o', b'n', b'e',
        0x00, 0x05, b'a', b'l', b'i', b'c', b'e',
        0x00, 0x04, 0xDE, 0xAD, 0xBE, 0xEF,
    ];
    let packet = decode_and_reencode(&frame, Protocol::V311);
    let Packet::Connect(connect) = &packet else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.protocol, Protocol::V311);
    assert!(connect.clean_start);
    assert_eq!(connect.keep_alive, 60);
    assert_eq!(connect.client_id, "tern");
    assert!(connect.properties.is_empty());
    let will = connect.will.as_ref().expect("will");
    assert_eq!(will.topic, "dev/1/status");
    assert_eq!(will.payload, Bytes::from_static(b"gone"));
    assert_eq!(will.qos, QoS::ExactlyOnce);
    assert!(will.retain);
    assert!(will.properties.is_empty());
    assert_eq!(connect.username.as_deref(), Some("alice"));
    assert_eq!(
        connect.password,
        Some(Bytes::from_static(&[0xDE, 0xAD, 0xBE, 0xEF]))
    );

    // The same packet built by hand encodes to the same bytes.
    let built = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: s("tern"),
        will: Some(Will {
            topic: s("dev/1/status"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some(s("alice")),
        password: Some(Bytes::from_static(&[0xDE, 0xAD, 0xBE, 0xEF])),
    }));
    assert_eq!(built, packet);
    assert_eq!(encode(&built, Protocol::V311), frame);
}

#[test]
fn v311_connect_minimal() {
    #[rustfmt::skip]
    let frame = [
        0x10, 0x0C,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x00, 0x00, 0x00,
        0x00, 0x00, // empty client id
    ];
    let Packet::Connect(connect) = decode_and_reencode(&frame, Protocol::V5) else {
        panic!("not a CONNECT");
    };
    // CONNECT carries its own version, whatever the connection was assumed to speak.
    assert_eq!(connect.protocol, Protocol::V311);
    assert!(!connect.clean_start);
    assert_eq!(connect.keep_alive, 0);
    assert_eq!(connect.client_id, "");
    assert!(connect.will.is_none() && connect.username.is_none() && connect.password.is_none());
}

#[test]
fn v311_connack_return_codes() {
    let table = [
        (0x00, ReasonCode::Success),
        (0x01, ReasonCode::UnsupportedProtocolVersion),
        (0x02, ReasonCode::ClientIdentifierNotValid),
        (0x03, ReasonCode::ServerUnavailable),
        (0x04, ReasonCode::BadUserNameOrPassword),
        (0x05, ReasonCode::NotAuthorized),
    ];
    for (raw, code) in table {
        let frame = [0x20, 0x02, 0x00, raw];
        let packet = decode_and_reencode(&frame, Protocol::V311);
        assert_eq!(
            packet,
            Packet::ConnAck(ConnAck {
                session_present: false,
                code,
                properties: Properties::default(),
            }),
            "return code {raw}"
        );
    }
    // Session present.
    let Packet::ConnAck(ack) = decode_and_reencode(&[0x20, 0x02, 0x01, 0x00], Protocol::V311)
    else {
        panic!("not a CONNACK");
    };
    assert!(ack.session_present);
    assert_eq!(ack.code, ReasonCode::Success);
    // MQTT 5 reasons without a 3.1.1 return code of their own fall back to the closest one.
    let banned = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ReasonCode::Banned,
        properties: Properties::default(),
    });
    assert_eq!(encode(&banned, Protocol::V311), [0x20, 0x02, 0x00, 0x05]);
    let busy = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ReasonCode::ServerBusy,
        properties: Properties::default(),
    });
    assert_eq!(encode(&busy, Protocol::V311), [0x20, 0x02, 0x00, 0x03]);
}

#[test]
fn v311_subscribe_several_filters() {
    #[rustfmt::skip]
    let frame = [
        0x82, 0x12,
        0x00, 0x01,
        0x00, 0x03, b'a', b'/', b'b', 0x00,
        0x00, 0x03, b'c', b'/', b'#', 0x01,
        0x00, 0x01, b'+', 0x02,
    ];
    let packet = decode_and_reencode(&frame, Protocol::V311);
    let qos = |qos| SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    assert_eq!(
        packet,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![
                (s("a/b"), qos(QoS::AtMostOnce)),
                (s("c/#"), qos(QoS::AtLeastOnce)),
                (s("+"), qos(QoS::ExactlyOnce)),
            ],
        })
    );
}

#[test]
fn v311_suback_unsubscribe_unsuback() {
    let Packet::SubAck(ack) = decode_and_reencode(
        &[0x90, 0x06, 0x00, 0x01, 0x00, 0x01, 0x02, 0x80],
        Protocol::V311,
    ) else {
        panic!("not a SUBACK");
    };
    assert_eq!(ack.packet_id, 1);
    assert_eq!(
        ack.reasons,
        [
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ]
    );

    #[rustfmt::skip]
    let unsubscribe = [
        0xA2, 0x0B,
        0x00, 0x02,
        0x00, 0x03, b'a', b'/', b'b',
        0x00, 0x02, b'c', b'/',
    ];
    let Packet::Unsubscribe(unsub) = decode_and_reencode(&unsubscribe, Protocol::V311) else {
        panic!("not an UNSUBSCRIBE");
    };
    assert_eq!(unsub.packet_id, 2);
    assert_eq!(unsub.filters, [s("a/b"), s("c/")]);

    let Packet::UnsubAck(ack) = decode_and_reencode(&[0xB0, 0x02, 0x00, 0x02], Protocol::V311)
    else {
        panic!("not an UNSUBACK");
    };
    assert_eq!(ack.packet_id, 2);
    assert!(ack.reasons.is_empty());
}

#[test]
fn pingreq_pingresp_both_versions() {
    for p in [Protocol::V311, Protocol::V5] {
        assert_eq!(decode_and_reencode(&[0xC0, 0x00], p), Packet::PingReq);
        assert_eq!(decode_and_reencode(&[0xD0, 0x00], p), Packet::PingResp);
    }
}

#[test]
fn v311_acks_and_disconnect() {
    let cases: [(&[u8], Packet); 5] = [
        (
            &[0x40, 0x02, 0x12, 0x34],
            Packet::PubAck(PubResponse::new(0x1234)),
        ),
        (
            &[0x50, 0x02, 0x00, 0x01],
            Packet::PubRec(PubResponse::new(1)),
        ),
        (
            &[0x62, 0x02, 0x00, 0x01],
            Packet::PubRel(PubResponse::new(1)),
        ),
        (
            &[0x70, 0x02, 0xFF, 0xFF],
            Packet::PubComp(PubResponse::new(0xFFFF)),
        ),
        (&[0xE0, 0x00], Packet::Disconnect(Disconnect::default())),
    ];
    for (frame, expected) in cases {
        assert_eq!(decode_and_reencode(frame, Protocol::V311), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT 5.0 frames
// ---------------------------------------------------------------------------------------------

#[test]
fn v5_connect_with_properties_and_will() {
    #[rustfmt::skip]
    let frame = [
        0x10, 0x44,
        0x00, 0x04, b'M', b'Q', b'T', b'T',
        0x05,                         // level 5
        0xCE,                         // user, password, will QoS 1, will, clean start
        0x00, 0x3C,                   // keep alive 60
        0x14,                         // properties: 20 bytes
        0x11, 0x00, 0x00, 0x00, 0x78, //   session expiry interval 120
        0x21, 0x00, 0x14,             //   receive maximum 20
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
        0x27, 0x00, 0x00, 0x10, 0x00, //   maximum packet size 4096
        0x00, 0x03, b'c', b'i', b'd', // client id
        0x0E,                         // will properties: 14 bytes
        0x01, 0x01,                   //   payload format indicator: UTF-8
        0x03, 0x00, 0x04, b't', b'e', b'x', b't', // content type
        0x18, 0x00, 0x00, 0x00, 0x05, //   will delay interval 5
        0x00, 0x03, b'w', b'/', b't', // will topic
        0x00, 0x02, b'b', b'y',       // will payload
        0x00, 0x02, b'u', b's',       // username
        0x00, 0x02, b'p', b'w',       // password
    ];
    let packet = decode_and_reencode(&frame, Protocol::V311);
    let Packet::Connect(connect) = &packet else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.protocol, Protocol::V5);
    assert!(connect.clean_start);
    assert_eq!(connect.keep_alive, 60);
    assert_eq!(connect.client_id, "cid");
    let props = &connect.properties;
    assert_eq!(props.session_expiry_interval, Some(120));
    assert_eq!(props.receive_maximum, Some(20));
    assert_eq!(props.maximum_packet_size, Some(4096));
    assert_eq!(props.user_properties, [(s("k"), s("v"))]);
    let will = connect.will.as_ref().expect("will");
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(!will.retain);
    assert_eq!(will.topic, "w/t");
    assert_eq!(will.payload, Bytes::from_static(b"by"));
    assert_eq!(will.properties.payload_format_indicator, Some(1));
    assert_eq!(will.properties.content_type.as_deref(), Some("text"));
    assert_eq!(will.properties.will_delay_interval, Some(5));
    assert_eq!(connect.username.as_deref(), Some("us"));
    assert_eq!(connect.password, Some(Bytes::from_static(b"pw")));
}

#[test]
fn v5_connect_password_without_username_is_allowed() {
    // MQTT 5 drops the 3.1.1 rule [MQTT-3.1.2-22]: a password alone is fine.
    #[rustfmt::skip]
    let frame = [
        0x10, 0x11,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x00,
        0x00,                   // no properties
        0x00, 0x00,             // empty client id
        0x00, 0x02, b'p', b'w', // password
    ];
    let Packet::Connect(connect) = decode_and_reencode(&frame, Protocol::V5) else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.username, None);
    assert_eq!(connect.password, Some(Bytes::from_static(b"pw")));
}

#[test]
fn v5_connack_with_properties() {
    #[rustfmt::skip]
    let frame = [
        0x20, 0x1D,
        0x01,                               // session present
        0x00,                               // success
        0x1A,                               // properties: 26 bytes
        0x12, 0x00, 0x03, b'a', b'b', b'c', //   assigned client identifier
        0x13, 0x00, 0x1E,                   //   server keep alive 30
        0x21, 0x00, 0x64,                   //   receive maximum 100
        0x22, 0x00, 0x0A,                   //   topic alias maximum 10
        0x24, 0x01,                         //   maximum QoS 1
        0x25, 0x00,                         //   retain not available
        0x27, 0x00, 0x10, 0x00, 0x00,       //   maximum packet size 1 MiB
        0x2A, 0x01,                         //   shared subscriptions available
    ];
    let Packet::ConnAck(ack) = decode_and_reencode(&frame, Protocol::V5) else {
        panic!("not a CONNACK");
    };
    assert!(ack.session_present);
    assert_eq!(ack.code, ReasonCode::Success);
    let expected = PropertyFields {
        assigned_client_identifier: Some(s("abc")),
        server_keep_alive: Some(30),
        receive_maximum: Some(100),
        topic_alias_maximum: Some(10),
        maximum_qos: Some(1),
        retain_available: Some(0),
        maximum_packet_size: Some(1 << 20),
        shared_subscription_available: Some(1),
        ..PropertyFields::default()
    }
    .into();
    assert_eq!(ack.properties, expected);
}

#[test]
fn v5_connack_refusal() {
    // Bad user name or password, no properties (the property length is still present).
    let Packet::ConnAck(ack) = decode_and_reencode(&[0x20, 0x03, 0x00, 0x86, 0x00], Protocol::V5)
    else {
        panic!("not a CONNACK");
    };
    assert!(!ack.session_present);
    assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
    assert!(ack.properties.is_empty());
}

#[test]
fn v5_publish_with_properties() {
    #[rustfmt::skip]
    let frame = [
        0x3B, 0x2D,                         // PUBLISH, DUP, QoS 1, retain
        0x00, 0x03, b'a', b'/', b'b',       // topic
        0x00, 0x0A,                         // packet id 10
        0x23,                               // properties: 35 bytes
        0x01, 0x01,                         //   payload format indicator
        0x02, 0x00, 0x00, 0x00, 0x3C,       //   message expiry interval 60
        0x03, 0x00, 0x01, b'j',             //   content type
        0x08, 0x00, 0x01, b'r',             //   response topic
        0x09, 0x00, 0x02, 0x01, 0x02,       //   correlation data
        0x0B, 0x05,                         //   subscription identifier 5
        0x0B, 0x80, 0x01,                   //   subscription identifier 128
        0x23, 0x00, 0x07,                   //   topic alias 7
        0x26, 0x00, 0x01, b'x', 0x00, 0x01, b'y', // user property
        b'h', b'i',                         // payload
    ];
    let Packet::Publish(publish) = decode_and_reencode(&frame, Protocol::V5) else {
        panic!("not a PUBLISH");
    };
    let expected = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: s("a/b"),
        packet_id: 10,
        properties: PropertyFields {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some(s("j")),
            response_topic: Some(s("r")),
            correlation_data: Some(Bytes::from_static(&[1, 2])),
            subscription_identifiers: vec![5, 128],
            topic_alias: Some(7),
            user_properties: vec![(s("x"), s("y"))],
            ..PropertyFields::default()
        }
        .into(),
        payload: Bytes::from_static(b"hi"),
    };
    assert_eq!(publish, expected);
}

#[test]
fn v5_publish_qos0_without_properties() {
    #[rustfmt::skip]
    let frame = [
        0x30, 0x07,
        0x00, 0x03, b'a', b'/', b'b',
        0x00,        // property length 0
        b'!',
    ];
    let Packet::Publish(publish) = decode_and_reencode(&frame, Protocol::V5) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(publish.packet_id, 0);
    assert!(publish.properties.is_empty());
    assert_eq!(publish.payload, Bytes::from_static(b"!"));
    // The same bytes read as 3.1.1 keep the 0x00 as payload.
    let Packet::Publish(v3) = decode_one(&frame, Protocol::V311) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(v3.payload, Bytes::from_static(b"\x00!"));
}

#[test]
fn v5_subscribe_with_options() {
    #[rustfmt::skip]
    let frame = [
        0x82, 0x23,
        0x00, 0x02,                         // packet id
        0x09,                               // properties: 9 bytes
        0x0B, 0x2A,                         //   subscription identifier 42
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
        0x00, 0x03, b'a', b'/', b'b',
        0x1D,                               // RH 1, RAP, no local, QoS 1
        0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x',
        0x22,                               // RH 2, QoS 2
        0x00, 0x01, b'#',
        0x00,                               // all defaults
    ];
    let Packet::Subscribe(sub) = decode_and_reencode(&frame, Protocol::V5) else {
        panic!("not a SUBSCRIBE");
    };
    assert_eq!(sub.packet_id, 2);
    assert_eq!(sub.properties.subscription_identifiers, [42]);
    assert_eq!(sub.properties.user_properties, [(s("k"), s("v"))]);
    assert_eq!(
        sub.filters,
        [
            (
                s("a/b"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendAtSubscribeIfNew,
                }
            ),
            (
                s("$share/g/x"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::DoNotSend,
                }
            ),
            (s("#"), SubscriptionOptions::default()),
        ]
    );
}

#[test]
fn v5_suback_and_unsuback() {
    #[rustfmt::skip]
    let suback = [
        0x90, 0x0A,
        0x00, 0x02,
        0x04, 0x1F, 0x00, 0x01, b'r', // reason string
        0x01, 0x02, 0x9E,             // QoS 1, QoS 2, shared subscriptions not supported
    ];
    let Packet::SubAck(ack) = decode_and_reencode(&suback, Protocol::V5) else {
        panic!("not a SUBACK");
    };
    assert_eq!(ack.properties.reason_string.as_deref(), Some("r"));
    assert_eq!(
        ack.reasons,
        [
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::SharedSubscriptionsNotSupported,
        ]
    );
    let Packet::UnsubAck(ack) =
        decode_and_reencode(&[0xB0, 0x05, 0x00, 0x03, 0x00, 0x00, 0x11], Protocol::V5)
    else {
        panic!("not an UNSUBACK");
    };
    assert_eq!(ack.packet_id, 3);
    assert_eq!(
        ack.reasons,
        [ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
    );
}

#[test]
fn v5_puback_short_forms() {
    // Two bytes: the reason is Success and there are no properties (spec 3.4.2.1).
    assert_eq!(
        decode_and_reencode(&[0x40, 0x02, 0x00, 0x05], Protocol::V5),
        Packet::PubAck(PubResponse::new(5))
    );
    // Three bytes: a reason and no property length.
    assert_eq!(
        decode_and_reencode(&[0x40, 0x03, 0x00, 0x05, 0x10], Protocol::V5),
        Packet::PubAck(PubResponse::with_reason(
            5,
            ReasonCode::NoMatchingSubscribers
        ))
    );
    // A success with an explicit empty property length decodes, and shrinks when re-encoded.
    assert_eq!(
        decode_one(&[0x40, 0x04, 0x00, 0x05, 0x00, 0x00], Protocol::V5),
        Packet::PubAck(PubResponse::new(5))
    );
    // The full form with properties.
    #[rustfmt::skip]
    let full = [
        0x40, 0x08,
        0x00, 0x05,
        0x80,                          // unspecified error
        0x04, 0x1F, 0x00, 0x01, b'e',  // reason string
    ];
    let Packet::PubAck(ack) = decode_and_reencode(&full, Protocol::V5) else {
        panic!("not a PUBACK");
    };
    assert_eq!(ack.reason, ReasonCode::UnspecifiedError);
    assert_eq!(ack.properties.reason_string.as_deref(), Some("e"));
    // PUBREL and PUBCOMP have the same short forms.
    assert_eq!(
        decode_and_reencode(&[0x62, 0x03, 0x00, 0x05, 0x92], Protocol::V5),
        Packet::PubRel(PubResponse::with_reason(
            5,
            ReasonCode::PacketIdentifierNotFound
        ))
    );
    assert_eq!(
        decode_and_reencode(&[0x70, 0x02, 0x00, 0x05], Protocol::V5),
        Packet::PubComp(PubResponse::new(5))
    );
}

#[test]
fn acknowledgements_back_to_back_each_take_exactly_their_frame() {
    // Short acknowledgements are decoded in place; one with properties, and a malformed one,
    // between them must not disturb the frames around them.
    #[rustfmt::skip]
    let stream = [
        0x40, 0x02, 0x00, 0x01,                               // PUBACK 1
        0x50, 0x03, 0x00, 0x02, 0x10,                         // PUBREC 2, no matching subscribers
        0x40, 0x08, 0x00, 0x03, 0x80, 0x04, 0x1F, 0x00, 0x01, // PUBACK 3 with a reason string...
        b'e',
        0x40, 0x03, 0x00, 0x04, 0x01,                         // PUBACK 4, reason 0x01: malformed
        0x70, 0x02, 0x00, 0x05,                               // PUBCOMP 5
        0x40, 0x02, 0x00,                                     // half a PUBACK
    ];
    let mut buf = BytesMut::from(&stream[..]);
    let mut next = || decode(&mut buf, Protocol::V5, MAX);
    assert_eq!(next(), Ok(Some(Packet::PubAck(PubResponse::new(1)))));
    assert_eq!(
        next(),
        Ok(Some(Packet::PubRec(PubResponse::with_reason(
            2,
            ReasonCode::NoMatchingSubscribers
        ))))
    );
    let Ok(Some(Packet::PubAck(ack))) = next() else {
        panic!("PUBACK 3 expected");
    };
    assert_eq!(
        (ack.packet_id, ack.reason),
        (3, ReasonCode::UnspecifiedError)
    );
    assert_eq!(ack.properties.reason_string.as_deref(), Some("e"));
    assert_eq!(
        next(),
        Err(tern_codec::DecodeError::InvalidReasonCode {
            packet: "PUBACK/PUBREC",
            code: 1
        })
    );
    assert_eq!(next(), Ok(Some(Packet::PubComp(PubResponse::new(5)))));
    assert_eq!(next(), Ok(None));
    assert_eq!(&buf[..], &[0x40, 0x02, 0x00]);
    // In 3.1.1 an acknowledgement is the packet identifier alone.
    let mut buf = BytesMut::from(&[0x40, 0x03, 0x00, 0x01, 0x00][..]);
    assert!(decode(&mut buf, Protocol::V311, MAX).is_err());
    assert!(buf.is_empty(), "the malformed frame is consumed");
}

#[test]
fn v5_disconnect_with_properties() {
    #[rustfmt::skip]
    let frame = [
        0xE0, 0x11,
        0x04,                               // disconnect with will message
        0x0F,                               // properties: 15 bytes
        0x11, 0x00, 0x00, 0x00, 0x00,       //   session expiry interval 0
        0x1C, 0x00, 0x01, b's',             //   server reference
        0x1F, 0x00, 0x03, b'b', b'y', b'e', //   reason string
    ];
    let Packet::Disconnect(d) = decode_and_reencode(&frame, Protocol::V5) else {
        panic!("not a DISCONNECT");
    };
    assert_eq!(d.reason, ReasonCode::DisconnectWithWillMessage);
    assert_eq!(
        d.properties,
        PropertyFields {
            session_expiry_interval: Some(0),
            server_reference: Some(s("s")),
            reason_string: Some(s("bye")),
            ..PropertyFields::default()
        }
        .into()
    );
}

#[test]
fn v5_disconnect_short_forms() {
    assert_eq!(
        decode_and_reencode(&[0xE0, 0x00], Protocol::V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
    );
    assert_eq!(
        decode_and_reencode(&[0xE0, 0x01, 0x8E], Protocol::V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))
    );
}

#[test]
fn v5_disconnect_accepts_every_reason_code_of_spec_table_3_14_2_1() {
    // Spec 3.14.2.1, table: the reason codes a DISCONNECT may carry.
    let allowed: [u8; 29] = [
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
        0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ];
    for raw in 0..=u8::MAX {
        let result = decode(
            &mut BytesMut::from(&[0xE0, 0x01, raw][..]),
            Protocol::V5,
            MAX,
        );
        if allowed.contains(&raw) {
            let Ok(Some(Packet::Disconnect(d))) = result else {
                panic!("DISCONNECT reason {raw:#04x} refused: {result:?}");
            };
            assert_eq!(d.reason.as_u8(), raw);
        } else {
            assert!(result.is_err(), "DISCONNECT reason {raw:#04x} accepted");
        }
    }
}

#[test]
fn v5_auth() {
    #[rustfmt::skip]
    let frame = [
        0xF0, 0x0A,
        0x18,                                     // continue authentication
        0x08,
        0x15, 0x00, 0x02, b'k', b'5',             //   authentication method
        0x16, 0x00, 0x00,                         //   authentication data (empty)
    ];
    let Packet::Auth(auth) = decode_and_reencode(&frame, Protocol::V5) else {
        panic!("not an AUTH");
    };
    assert_eq!(auth.reason, ReasonCode::ContinueAuthentication);
    assert_eq!(auth.properties.authentication_method.as_deref(), Some("k5"));
    assert_eq!(auth.properties.authentication_data, Some(Bytes::new()));
    assert_eq!(
        decode_and_reencode(&[0xF0, 0x00], Protocol::V5),
        Packet::Auth(tern_codec::Auth::default())
    );
}

#[test]
fn two_frames_back_to_back_and_a_partial_third() {
    #[rustfmt::skip]
    let bytes = [
        0xC0, 0x00,                               // PINGREQ
        0x30, 0x04, 0x00, 0x01, b't', b'x',       // PUBLISH t "x"
        0x40, 0x02, 0x00,                         // PUBACK missing its last byte
    ];
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, Protocol::V311, MAX),
        Ok(Some(Packet::PingReq))
    );
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, Protocol::V311, MAX) else {
        panic!("second frame");
    };
    assert_eq!((p.topic.as_ref(), &p.payload[..]), ("t", &b"x"[..]));
    assert_eq!(
        check_frame(&buf, MAX),
        Ok(FrameStatus::Incomplete { needed: 1 })
    );
    assert_eq!(decode(&mut buf, Protocol::V311, MAX), Ok(None));
    assert_eq!(
        &buf[..],
        [0x40, 0x02, 0x00],
        "a partial frame is left alone"
    );
    assert_eq!(
        check_frame(&[], MAX),
        Ok(FrameStatus::Incomplete { needed: 2 })
    );
}
