//! The session's QoS flows, windows, aliases and refusals, packet by packet.

use super::*;
use bytes::Bytes;

fn params(protocol: Protocol) -> SessionParams {
    SessionParams {
        protocol,
        id: 1,
        receive_maximum_out: 2,
        max_packet_size_out: 1024,
        topic_alias_maximum_out: 0,
        expiry_was_zero: true,
        persistent: false,
        limits: Arc::new(SessionLimits {
            receive_maximum_in: 2,
            topic_alias_maximum_in: 4,
            max_queued_messages: 3,
            max_queued_bytes: 1 << 20,
            max_topic_levels: 8,
            marks: None,
        }),
    }
}

fn publish(topic: &str, qos: QoS, packet_id: u16) -> Publish {
    test_publish(topic, qos, packet_id)
}

fn delivery(topic: &str, qos: QoS, seq: Option<u64>) -> Delivery {
    Delivery {
        message: Arc::new(Message {
            topic: ByteString::from(topic),
            payload: Bytes::from_static(b"payload"),
            qos,
            retain: false,
            properties: Properties::default(),
            expires_at_ms: None,
            origin: Some(9),
            received_at: None,
            cluster_seq: None,
        }),
        qos,
        retain: false,
        subscription_ids: vec![],
        seq,
        dup: false,
        released: false,
    }
}

fn drain(s: &mut Session) -> Vec<Packet> {
    std::iter::from_fn(|| s.poll_transmit())
        .map(|t| t.to_packet())
        .collect()
}

fn effects(s: &mut Session) -> Vec<Effect> {
    std::iter::from_fn(|| s.poll_effect()).collect()
}

#[test]
fn qos2_inbound_resend_is_not_routed_twice() {
    let mut s = Session::new(params(Protocol::V5));
    s.handle_packet(Packet::Publish(publish("a", QoS::ExactlyOnce, 7)), 0)
        .unwrap();
    assert_eq!(effects(&mut s).len(), 1);
    // Resent before PUBREC: neither routed nor acknowledged twice.
    let mut dup = publish("a", QoS::ExactlyOnce, 7);
    dup.dup = true;
    s.handle_packet(Packet::Publish(dup.clone()), 0).unwrap();
    assert!(effects(&mut s).is_empty());
    assert!(drain(&mut s).is_empty());
    s.publish_done(7, QoS::ExactlyOnce, ReasonCode::Success)
        .expect("acknowledged");
    assert!(matches!(drain(&mut s)[..], [Packet::PubRec(ref r)] if r.packet_id == 7));
    // Resent after PUBREC: PUBREC again, still not routed.
    s.handle_packet(Packet::Publish(dup), 0).unwrap();
    assert!(effects(&mut s).is_empty());
    assert!(matches!(drain(&mut s)[..], [Packet::PubRec(_)]));
    s.handle_packet(Packet::PubRel(PubResponse::new(7)), 0)
        .unwrap();
    assert!(matches!(
        effects(&mut s)[..],
        [Effect::InboundQos2Released(7)]
    ));
    assert!(
        matches!(drain(&mut s)[..], [Packet::PubComp(ref c)] if c.reason == ReasonCode::Success)
    );
    // The ID is free: a new PUBLISH with it is a new message.
    s.handle_packet(Packet::Publish(publish("a", QoS::ExactlyOnce, 7)), 0)
        .unwrap();
    assert_eq!(effects(&mut s).len(), 1);
}

#[test]
fn receive_maximum_exceeded_closes() {
    let mut s = Session::new(params(Protocol::V5));
    for id in 1..=2 {
        s.handle_packet(Packet::Publish(publish("a", QoS::AtLeastOnce, id)), 0)
            .unwrap();
    }
    let err = s
        .handle_packet(Packet::Publish(publish("a", QoS::AtLeastOnce, 3)), 0)
        .unwrap_err();
    assert_eq!(err.code(), ReasonCode::ReceiveMaximumExceeded);
}

/// MQTT 3.1.1 has no way to say "not stored" in a PUBACK: the connection is closed without
/// one, so the client sends the message again; a v5 client is told 0x80.
#[test]
fn a_message_not_stored_is_never_acknowledged_as_stored() {
    let mut s = Session::new(params(Protocol::V311));
    s.handle_packet(Packet::Publish(publish("a", QoS::AtLeastOnce, 1)), 0)
        .unwrap();
    let close = s
        .publish_done(1, QoS::AtLeastOnce, ReasonCode::ImplementationSpecificError)
        .expect_err("closed");
    assert_eq!(close.code, ReasonCode::ImplementationSpecificError);
    assert!(drain(&mut s).is_empty(), "no PUBACK");
    let mut s = Session::new(params(Protocol::V5));
    s.handle_packet(Packet::Publish(publish("a", QoS::AtLeastOnce, 1)), 0)
        .unwrap();
    s.publish_done(1, QoS::AtLeastOnce, ReasonCode::ImplementationSpecificError)
        .expect("answered");
    assert!(matches!(
        drain(&mut s)[..],
        [Packet::PubAck(ref a)] if a.reason == ReasonCode::ImplementationSpecificError
    ));
}

#[test]
fn v311_inbound_window_is_backpressure_not_a_close() {
    let mut s = Session::new(params(Protocol::V311));
    for id in 1..=3 {
        s.handle_packet(Packet::Publish(publish("a", QoS::AtLeastOnce, id)), 0)
            .unwrap();
    }
    assert!(s.inbound_full());
    s.publish_done(1, QoS::AtLeastOnce, ReasonCode::Success)
        .expect("acknowledged");
    s.publish_done(2, QoS::AtLeastOnce, ReasonCode::Success)
        .expect("acknowledged");
    assert!(!s.inbound_full());
}

#[test]
fn outbound_window_holds_back_and_acks_release() {
    let mut s = Session::new(params(Protocol::V311));
    for seq in 0..3 {
        s.deliver(delivery("t", QoS::AtLeastOnce, Some(seq)), 0)
            .unwrap();
    }
    let sent = drain(&mut s);
    assert_eq!(sent.len(), 2, "window of 2");
    assert_eq!(s.queued(), 1);
    let Packet::Publish(first) = &sent[0] else {
        panic!("{sent:?}")
    };
    s.handle_packet(Packet::PubAck(PubResponse::new(first.packet_id)), 0)
        .unwrap();
    assert!(matches!(effects(&mut s)[..], [Effect::Dequeue(0)]));
    assert_eq!(drain(&mut s).len(), 1, "third sent after the ack");
}

#[test]
fn out_of_order_acks_free_the_window_up_to_its_span() {
    let mut p = params(Protocol::V311);
    Arc::make_mut(&mut p.limits).max_queued_messages = 100;
    let mut s = Session::new(p);
    for seq in 0..20 {
        s.deliver(delivery("t", QoS::AtLeastOnce, Some(seq)), 0)
            .unwrap();
    }
    let ids = |packets: Vec<Packet>| -> Vec<u16> {
        packets
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p.packet_id,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(ids(drain(&mut s)), [1, 2]);
    // The oldest (1) stays unacknowledged; each later one acknowledged lets one more
    // out, until the IDs from the oldest span 4 windows (1 to 8).
    let mut sent = vec![2];
    for _ in 0..7 {
        let newest = *sent.last().unwrap();
        s.handle_packet(Packet::PubAck(PubResponse::new(newest)), 0)
            .unwrap();
        sent.extend(ids(drain(&mut s)));
    }
    assert_eq!(sent, [2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(s.in_flight(), 1, "only 1, yet the window stays shut");
    // A duplicate or unknown acknowledgement changes nothing.
    s.handle_packet(Packet::PubAck(PubResponse::new(5)), 0)
        .unwrap();
    s.handle_packet(Packet::PubAck(PubResponse::new(300)), 0)
        .unwrap();
    assert!(drain(&mut s).is_empty());
    // The oldest acknowledged: the window moves on past the acknowledged IDs.
    s.handle_packet(Packet::PubAck(PubResponse::new(1)), 0)
        .unwrap();
    assert_eq!(ids(drain(&mut s)), [9, 10]);
    let dequeued: Vec<u64> = effects(&mut s)
        .into_iter()
        .map(|e| match e {
            Effect::Dequeue(seq) => seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(dequeued, [1, 2, 3, 4, 5, 6, 7, 0]);
    assert_eq!(s.in_flight_seqs(), [8, 9]);
}

#[test]
fn queue_bound_refuses() {
    let mut s = Session::new(params(Protocol::V311));
    for _ in 0..5 {
        s.deliver(delivery("t", QoS::AtLeastOnce, None), 0).unwrap();
    }
    // 2 in flight + 3 queued; the next is refused.
    assert_eq!(
        s.deliver(delivery("t", QoS::AtLeastOnce, None), 0),
        Err(QueueFull)
    );
}

#[test]
fn qos2_outbound_flow_marks_released_then_dequeues() {
    let mut s = Session::new(params(Protocol::V5));
    s.deliver(delivery("t", QoS::ExactlyOnce, Some(4)), 0)
        .unwrap();
    let Packet::Publish(p) = &drain(&mut s)[0] else {
        panic!()
    };
    let id = p.packet_id;
    s.handle_packet(Packet::PubRec(PubResponse::new(id)), 0)
        .unwrap();
    assert!(matches!(effects(&mut s)[..], [Effect::Released(4)]));
    assert!(matches!(drain(&mut s)[..], [Packet::PubRel(ref r)] if r.packet_id == id));
    s.handle_packet(Packet::PubComp(PubResponse::new(id)), 0)
        .unwrap();
    assert!(matches!(effects(&mut s)[..], [Effect::Dequeue(4)]));
}

/// A message's mark is its payload's length (enough to tell messages apart).
fn payload_len(message: &Message) -> Option<Mark> {
    (message.topic == "marked").then_some(Mark {
        log: 3,
        position: message.payload.len() as u64,
    })
}

#[test]
fn marks_are_reached_at_puback_pubrec_or_a_qos0_send() {
    let base = params(Protocol::V5);
    let mut s = Session::new(SessionParams {
        receive_maximum_out: 4,
        persistent: true,
        limits: Arc::new(SessionLimits {
            marks: Some(payload_len),
            ..(*base.limits).clone()
        }),
        ..base
    });
    s.deliver(delivery("marked", QoS::AtLeastOnce, Some(1)), 0)
        .unwrap();
    s.deliver(delivery("marked", QoS::ExactlyOnce, Some(2)), 0)
        .unwrap();
    s.deliver(delivery("other", QoS::AtLeastOnce, Some(3)), 0)
        .unwrap();
    let ids: Vec<u16> = drain(&mut s)
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.packet_id),
            _ => None,
        })
        .collect();
    assert!(effects(&mut s).is_empty(), "nothing reached before an ack");
    s.handle_packet(Packet::PubAck(PubResponse::new(ids[0])), 0)
        .unwrap();
    assert!(matches!(
        effects(&mut s)[..],
        [
            Effect::Dequeue(1),
            Effect::Reached(Mark {
                log: 3,
                position: 7
            })
        ]
    ));
    s.handle_packet(Packet::PubRec(PubResponse::new(ids[1])), 0)
        .unwrap();
    assert!(matches!(
        effects(&mut s)[..],
        [
            Effect::Released(2),
            Effect::Reached(Mark {
                log: 3,
                position: 7
            })
        ]
    ));
    s.handle_packet(Packet::PubComp(PubResponse::new(ids[1])), 0)
        .unwrap();
    assert!(
        matches!(effects(&mut s)[..], [Effect::Dequeue(2)]),
        "reached once"
    );
    s.handle_packet(Packet::PubAck(PubResponse::new(ids[2])), 0)
        .unwrap();
    assert!(
        matches!(effects(&mut s)[..], [Effect::Dequeue(3)]),
        "no mark"
    );
    s.deliver(delivery("marked", QoS::AtMostOnce, None), 0)
        .unwrap();
    assert!(matches!(
        effects(&mut s)[..],
        [Effect::Reached(Mark {
            log: 3,
            position: 7
        })]
    ));
}

#[test]
fn expired_messages_are_not_sent_and_oversized_are_dropped() {
    let mut s = Session::new(params(Protocol::V5));
    let mut d = delivery("t", QoS::AtLeastOnce, Some(1));
    Arc::make_mut(&mut d.message).expires_at_ms = Some(10);
    s.deliver(d, 20).unwrap();
    assert!(drain(&mut s).is_empty());
    assert!(matches!(effects(&mut s)[..], [Effect::Dequeue(1)]));
    let mut big = delivery("t", QoS::AtLeastOnce, Some(2));
    Arc::make_mut(&mut big.message).payload = Bytes::from(vec![0; 2000]);
    s.deliver(big, 20).unwrap();
    assert!(drain(&mut s).is_empty());
    let discarded = Discarded {
        too_large: 1,
        expired: 1,
    };
    assert_eq!(s.take_discarded(), discarded);
    assert_eq!(s.take_discarded(), Discarded::default(), "taken once");
}

#[test]
fn topic_aliases_inbound() {
    let mut s = Session::new(params(Protocol::V5));
    let mut p = publish("chat/1", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(2);
    s.handle_packet(Packet::Publish(p), 0).unwrap();
    let mut q = publish("", QoS::AtMostOnce, 0);
    q.properties.topic_alias = Some(2);
    s.handle_packet(Packet::Publish(q.clone()), 0).unwrap();
    let topics: Vec<String> = effects(&mut s)
        .into_iter()
        .map(|e| match e {
            Effect::Publish { message, .. } => message.topic.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, ["chat/1", "chat/1"]);
    q.properties.topic_alias = Some(5);
    assert_eq!(
        s.handle_packet(Packet::Publish(q), 0).unwrap_err().code(),
        ReasonCode::TopicAliasInvalid
    );
}

#[test]
fn topic_aliases_outbound() {
    let mut p = params(Protocol::V5);
    p.topic_alias_maximum_out = 1;
    let mut s = Session::new(p);
    for topic in ["a", "a", "b"] {
        s.deliver(delivery(topic, QoS::AtMostOnce, None), 0)
            .unwrap();
    }
    let sent: Vec<(String, Option<u16>)> = drain(&mut s)
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic.to_string(), p.properties.topic_alias),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("a".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("b".to_string(), None)
        ]
    );
}

#[test]
fn disconnect_cannot_raise_zero_expiry() {
    let mut s = Session::new(params(Protocol::V5));
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(60);
    assert_eq!(
        s.handle_packet(Packet::Disconnect(d), 0).unwrap_err(),
        Violation::ExpiryRaisedAtDisconnect
    );
}
