//! A slow consumer must not hold anyone else up, and the small MQTT 5 handshake extras.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tern_codec::{Packet as RawPacket, Protocol, QoS as RawQoS, SubscriptionOptions};
use tern_conformance::{v4_options, Broker, RawClient};

/// A subscriber that never reads its socket: the broker's writes to it stall once the
/// kernel buffers fill. Publishers and a second subscriber must not notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_stalls_neither_publisher_nor_other_subscribers() {
    let broker = Broker::start_with(|c| {
        c.limits.outbound_channel_capacity = 16;
        c.limits.max_queued_messages = 100;
    })
    .await;

    let mut slow = RawClient::connect(broker.addr, Protocol::V311).await;
    let ack = slow.handshake(slow.connect_packet("slow", true)).await;
    assert_eq!(ack.code, tern_codec::ReasonCode::Success);
    slow.send(RawPacket::Subscribe(tern_codec::Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(
            "load/#".into(),
            SubscriptionOptions {
                qos: RawQoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: tern_codec::RetainHandling::SendAtSubscribe,
            },
        )],
    }))
    .await;
    assert!(matches!(slow.recv().await, Some(RawPacket::SubAck(_))));
    // From here on `slow` never reads again.

    // Persistent, so its QoS 1 messages are never dropped: when its 16-slot delivery
    // channel overflows, the broker reads them back from its durable queue, in order.
    let mut fast_options = v4_options("fast", broker.port());
    fast_options.set_clean_session(false);
    let (fast, mut fast_loop) = AsyncClient::new(fast_options, 64);
    fast.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = fast_loop.poll().await.unwrap() {
            break;
        }
    }

    const COUNT: usize = 8_000;
    let payload = vec![0x42u8; 2048];
    let (publisher, mut pub_loop) = AsyncClient::new(v4_options("pub", broker.port()), 64);
    let publishing = tokio::spawn(async move {
        let mut acked = 0;
        let sender = tokio::spawn(async move {
            for i in 0..COUNT {
                let mut body = payload.clone();
                body[..8].copy_from_slice(&(i as u64).to_be_bytes());
                publisher
                    .publish("load/x", QoS::AtLeastOnce, false, body)
                    .await
                    .unwrap();
            }
            publisher
        });
        while acked < COUNT {
            if let Event::Incoming(Packet::PubAck(_)) = pub_loop.poll().await.unwrap() {
                acked += 1;
            }
        }
        sender.await.unwrap();
        acked
    });

    let received = tokio::time::timeout(Duration::from_secs(60), async {
        let mut next = 0u64;
        while next < COUNT as u64 {
            if let Event::Incoming(Packet::Publish(p)) = fast_loop.poll().await.unwrap() {
                let seq = u64::from_be_bytes(p.payload[..8].try_into().unwrap());
                assert_eq!(seq, next, "in order, none lost");
                next += 1;
            }
        }
        next
    })
    .await
    .expect("the fast subscriber gets everything while the slow one stalls");
    assert_eq!(received, COUNT as u64);
    let acked = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("publisher acknowledged")
        .unwrap();
    assert_eq!(acked, COUNT);
    // The stalled socket is still open (nothing forced it closed yet) and the broker
    // still serves new clients.
    let mut probe = RawClient::connect(broker.addr, Protocol::V311).await;
    let ack = probe.handshake(probe.connect_packet("probe", true)).await;
    assert_eq!(ack.code, tern_codec::ReasonCode::Success);
    drop(slow);
}

#[tokio::test]
async fn mqtt5_3_2_2_response_information_on_request() {
    let broker = Broker::start().await;
    let mut client = RawClient::connect(broker.addr, Protocol::V5).await;
    let mut connect = client.connect_packet("asker", true);
    connect.properties.request_response_information = Some(1);
    let ack = client.handshake(connect).await;
    let info = ack
        .properties
        .response_information
        .clone()
        .expect("Response Information when requested");
    assert!(info.contains("asker"), "{info}");

    let mut other = RawClient::connect(broker.addr, Protocol::V5).await;
    let ack = other.handshake(other.connect_packet("quiet", true)).await;
    assert_eq!(ack.properties.response_information, None, "only on request");
}

/// Server-sent DISCONNECTs say why in a Reason String (v5), so an operator reading a
/// client log learns more than a number.
#[tokio::test]
async fn mqtt5_3_14_2_2_server_disconnect_carries_a_reason_string() {
    let broker = Broker::start().await;
    let mut client = RawClient::connect(broker.addr, Protocol::V5).await;
    client.handshake(client.connect_packet("twice", true)).await;
    let again = client.connect_packet("twice", true);
    client.send(RawPacket::Connect(Box::new(again))).await;
    match client.recv().await {
        Some(RawPacket::Disconnect(d)) => {
            assert_eq!(d.reason, tern_codec::ReasonCode::ProtocolError);
            let why = d.properties.reason_string.clone().expect("a reason string");
            assert!(why.contains("CONNECT"), "{why}");
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(client.recv().await, None, "then the connection closes");
}
