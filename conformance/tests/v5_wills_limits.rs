//! Conformance over real sockets: wills (3.1.1 and 5.0, Will Delay Interval), message expiry,
//! topic aliases both ways, maximum packet size both ways, passthrough of the MQTT 5
//! request/response properties, server-sent DISCONNECT reason codes, and the broker's
//! configured limits (inflight, connections, topic levels, offline queue).
//!
//! Most tests drive `RawClient` to see the exact packets; the request/response and alias
//! tests also use rumqttc as a real v5 client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tern_codec::{
    ByteString, Connect, Disconnect, Packet, Properties, Protocol, PubResponse, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions, Will,
};
use tern_conformance::{
    connect_packet, next_v5, publish_packet, v5_options, Broker, RawClient, EVENT_TIMEOUT,
};

/// How long to listen to assert that nothing arrives (after a positive control).
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A clean-start client with no extras.
async fn connect(addr: SocketAddr, protocol: Protocol, client_id: &str) -> RawClient {
    RawClient::open_ok(addr, protocol, client_id, true, |_| {})
        .await
        .0
}

fn will(topic: &str, payload: &'static [u8], qos: QoS, retain: bool) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos,
        retain,
        properties: Properties::default(),
    }
}

/// SUBSCRIBE with default options at the given QoS; returns the SUBACK reasons.
async fn subscribe(
    client: &mut RawClient,
    packet_id: u16,
    filters: &[(&str, QoS)],
) -> Vec<ReasonCode> {
    let filters = filters
        .iter()
        .map(|(filter, qos)| {
            (
                ByteString::from(*filter),
                SubscriptionOptions {
                    qos: *qos,
                    ..SubscriptionOptions::default()
                },
            )
        })
        .collect();
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters,
        }))
        .await;
    match client.recv().await {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(ack.packet_id, packet_id, "SUBACK packet id");
            ack.reasons
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Subscribes and asserts every filter was granted.
async fn subscribe_ok(client: &mut RawClient, filter: &str, qos: QoS) {
    let reasons = subscribe(client, 1, &[(filter, qos)]).await;
    assert_eq!(reasons.len(), 1);
    assert!(
        !reasons[0].is_error(),
        "subscription to {filter} refused: {reasons:?}"
    );
}

/// Sends a QoS 1 PUBLISH and returns the reason of its PUBACK.
async fn publish_acked(client: &mut RawClient, publish: Publish) -> ReasonCode {
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    let packet_id = publish.packet_id;
    client.send(Packet::Publish(publish)).await;
    match client.recv().await {
        Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => ack.reason,
        other => panic!("expected PUBACK {packet_id}, got {other:?}"),
    }
}

/// The next packet, which must be a PUBLISH; QoS 1 ones are acknowledged.
async fn next_publish(client: &mut RawClient) -> Publish {
    match client.recv().await {
        Some(Packet::Publish(publish)) => {
            if publish.qos == QoS::AtLeastOnce {
                client
                    .send(Packet::PubAck(PubResponse::new(publish.packet_id)))
                    .await;
            }
            publish
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Nothing at all arrives within [`QUIET`] (and the connection stays open).
async fn assert_quiet(client: &mut RawClient, what: &str) {
    match client.recv_within(QUIET).await {
        Err(()) => {}
        Ok(Some(packet)) => panic!("{what}: expected nothing, got {packet:?}"),
        Ok(None) => panic!("{what}: expected nothing, but the broker closed the connection"),
    }
}

/// The end of a connection after a protocol violation: on v5, DISCONNECT with one of
/// `reasons`, then the close; on 3.1.1 (no server DISCONNECT) just the close.
async fn expect_violation_close(client: &mut RawClient, reasons: &[ReasonCode], what: &str) {
    match client.protocol {
        Protocol::V5 => {
            client.expect_disconnect(reasons, what).await;
        }
        Protocol::V311 => client.expect_closed(what).await,
    }
}

/// A client-side normal DISCONNECT; returns once the broker closed the socket, i.e. after
/// the broker has handed the disconnection to its router.
async fn disconnect_normally(mut client: RawClient) {
    client
        .send(Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
        .await;
    client.expect_closed("after DISCONNECT").await;
}

/// PINGREQ answered with PINGRESP: the connection is alive.
async fn assert_alive(client: &mut RawClient, what: &str) {
    client.send(Packet::PingReq).await;
    match client.recv().await {
        Some(Packet::PingResp) => {}
        other => panic!("{what}: expected PINGRESP, got {other:?}"),
    }
}

/// rumqttc v5 client, connected (CONNACK seen).
async fn rumqttc_v5(options: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    next_v5(&mut eventloop, |e| {
        matches!(e, Event::Incoming(RPacket::ConnAck(_))).then_some(())
    })
    .await;
    (client, eventloop)
}

async fn rumqttc_subscribe(client: &AsyncClient, eventloop: &mut EventLoop, filter: &str) {
    client
        .subscribe(filter, RQoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    let codes = next_v5(eventloop, |e| match e {
        Event::Incoming(RPacket::SubAck(ack)) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await;
    assert!(
        codes.iter().all(|c| matches!(
            c,
            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
        )),
        "rumqttc subscription to {filter} refused: {codes:?}"
    );
}

async fn rumqttc_next_publish(eventloop: &mut EventLoop) -> rumqttc::v5::mqttbytes::v5::Publish {
    next_v5(eventloop, |e| match e {
        Event::Incoming(RPacket::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await
}

async fn rumqttc_wait_puback(eventloop: &mut EventLoop) {
    next_v5(eventloop, |e| {
        matches!(e, Event::Incoming(RPacket::PubAck(_))).then_some(())
    })
    .await;
}

/// Publishes a QoS 1 marker from a fresh client and waits for its PUBACK.
async fn publish_marker(addr: SocketAddr, topic: &str, payload: &'static [u8]) {
    let mut publisher = connect(addr, Protocol::V5, "marker-publisher").await;
    publish_acked(
        &mut publisher,
        publish_packet(topic, QoS::AtLeastOnce, 1, Bytes::from_static(payload)),
    )
    .await;
    disconnect_normally(publisher).await;
}

// ---------------------------------------------------------------------------------------------
// Wills
// ---------------------------------------------------------------------------------------------

/// A client with a will (QoS 1, retain) loses its connection without DISCONNECT: the will is
/// published at the will QoS, and a later subscriber gets it as a retained message.
async fn will_published_on_connection_loss(protocol: Protocol) {
    let broker = Broker::start().await;
    let mut watcher = connect(broker.addr, Protocol::V5, "will-watcher").await;
    subscribe_ok(&mut watcher, "wills/#", QoS::ExactlyOnce).await;

    let (dying, _) = RawClient::open_ok(broker.addr, protocol, "will-dying", true, |c| {
        c.will = Some(will("wills/dying", b"gone", QoS::AtLeastOnce, true));
    })
    .await;
    drop(dying); // socket closed, no DISCONNECT

    let got = next_publish(&mut watcher).await;
    assert_eq!(&*got.topic, "wills/dying");
    assert_eq!(&got.payload[..], b"gone");
    assert_eq!(
        got.qos,
        QoS::AtLeastOnce,
        "delivered at the will QoS (min of will QoS 1 and subscription QoS 2)"
    );
    assert!(
        !got.retain,
        "Retain As Published is 0: a live delivery has RETAIN 0 [MQTT-3.3.1-12]"
    );

    // Will Retain 1: the will is published as a retained message (3.1.2.7 / 3.1.2.6).
    let mut late = connect(broker.addr, Protocol::V5, "will-late").await;
    subscribe_ok(&mut late, "wills/dying", QoS::AtLeastOnce).await;
    let retained = next_publish(&mut late).await;
    assert_eq!(&*retained.topic, "wills/dying");
    assert_eq!(&retained.payload[..], b"gone");
    assert!(
        retained.retain,
        "a retained message sent on subscribe has RETAIN 1"
    );
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_published_on_connection_loss_v311() {
    will_published_on_connection_loss(Protocol::V311).await;
}

#[tokio::test]
async fn mqtt5_3_1_2_8_will_published_on_connection_loss_v5() {
    will_published_on_connection_loss(Protocol::V5).await;
}

/// A normal DISCONNECT deletes the will: it is never published.
async fn will_not_published_after_disconnect(protocol: Protocol) {
    let broker = Broker::start().await;
    let mut watcher = connect(broker.addr, Protocol::V5, "will-watcher").await;
    subscribe_ok(&mut watcher, "wills/#", QoS::AtLeastOnce).await;

    let (dying, _) = RawClient::open_ok(broker.addr, protocol, "will-polite", true, |c| {
        c.will = Some(will("wills/polite", b"gone", QoS::AtLeastOnce, true));
    })
    .await;
    disconnect_normally(dying).await;

    // Positive control: the marker is published after the disconnection was processed, so
    // a will would have arrived before it.
    publish_marker(broker.addr, "wills/marker", b"marker").await;
    let got = next_publish(&mut watcher).await;
    assert_eq!(
        &*got.topic, "wills/marker",
        "will published after a normal DISCONNECT [MQTT-3.1.2-10]"
    );
    assert_quiet(&mut watcher, "after the marker").await;

    // Nor was it retained.
    let mut late = connect(broker.addr, Protocol::V5, "will-late").await;
    subscribe_ok(&mut late, "wills/polite", QoS::AtLeastOnce).await;
    assert_quiet(&mut late, "no retained will").await;
}

#[tokio::test]
async fn mqtt_3_1_2_10_will_not_published_after_disconnect_v311() {
    will_not_published_after_disconnect(Protocol::V311).await;
}

#[tokio::test]
async fn mqtt5_3_1_2_10_will_not_published_after_disconnect_v5() {
    will_not_published_after_disconnect(Protocol::V5).await;
}

#[tokio::test]
async fn mqtt5_3_14_2_1_disconnect_with_will_message_0x04_publishes_will() {
    let broker = Broker::start().await;
    let mut watcher = connect(broker.addr, Protocol::V5, "will-watcher").await;
    subscribe_ok(&mut watcher, "wills/#", QoS::AtLeastOnce).await;

    let (mut dying, _) = RawClient::open_ok(broker.addr, Protocol::V5, "will-0x04", true, |c| {
        c.will = Some(will("wills/0x04", b"asked for", QoS::AtLeastOnce, false));
    })
    .await;
    dying
        .send(Packet::Disconnect(Disconnect::new(
            ReasonCode::DisconnectWithWillMessage,
        )))
        .await;
    dying.expect_closed("after DISCONNECT 0x04").await;

    let got = next_publish(&mut watcher).await;
    assert_eq!(&*got.topic, "wills/0x04");
    assert_eq!(&got.payload[..], b"asked for");
}

#[tokio::test]
async fn mqtt5_3_1_3_9_will_delay_interval_delays_will() {
    let broker = Broker::start().await;
    let mut watcher = connect(broker.addr, Protocol::V5, "will-watcher").await;
    subscribe_ok(&mut watcher, "wills/#", QoS::AtLeastOnce).await;

    let (dying, _) = RawClient::open_ok(broker.addr, Protocol::V5, "will-delayed", true, |c| {
        // The session outlives the delay, so the delay is what counts.
        c.properties.session_expiry_interval = Some(60);
        let mut w = will("wills/delayed", b"late", QoS::AtLeastOnce, false);
        w.properties.will_delay_interval = Some(2);
        c.will = Some(w);
    })
    .await;
    let dropped_at = Instant::now();
    drop(dying);

    match watcher.recv_within(Duration::from_millis(500)).await {
        Err(()) => {}
        other => panic!("will published before its 2 s delay: {other:?}"),
    }
    let got = next_publish(&mut watcher).await;
    assert_eq!(&*got.topic, "wills/delayed");
    assert_eq!(&got.payload[..], b"late");
    let waited = dropped_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "will published after {waited:?}, before its Will Delay Interval of 2 s"
    );
}

#[tokio::test]
async fn mqtt5_3_1_3_9_reconnect_within_will_delay_cancels_will() {
    let broker = Broker::start().await;
    let mut watcher = connect(broker.addr, Protocol::V5, "will-watcher").await;
    subscribe_ok(&mut watcher, "wills/#", QoS::AtLeastOnce).await;

    let with_will = |c: &mut Connect| {
        c.properties.session_expiry_interval = Some(60);
        let mut w = will("wills/flaky", b"flaky died", QoS::AtLeastOnce, false);
        w.properties.will_delay_interval = Some(2);
        c.will = Some(w);
    };
    let (dying, _) =
        RawClient::open_ok(broker.addr, Protocol::V5, "will-flaky", true, with_will).await;
    drop(dying);
    // Back within the delay, continuing the session.
    let (_back, ack) = RawClient::open_ok(broker.addr, Protocol::V5, "will-flaky", false, |c| {
        c.properties.session_expiry_interval = Some(60);
    })
    .await;
    assert!(ack.session_present, "the session survived the short outage");

    // Past the original delay, the marker goes through the router after the will's timer.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish_marker(broker.addr, "wills/marker", b"marker").await;
    let got = next_publish(&mut watcher).await;
    assert_eq!(
        &*got.topic, "wills/marker",
        "will published although the client reconnected within the delay [MQTT-3.1.3-9]"
    );
    assert_quiet(&mut watcher, "after the marker").await;
}

/// A reconnect with Clean Start 1 during the will delay is not a connection "to this
/// Session": it ends the old session, and the will "MUST be published after the Network
/// Connection is subsequently closed and either the Will Delay Interval has elapsed or the
/// Session ends" [MQTT-3.1.2-8]. So the will goes out at the takeover, not never.
#[tokio::test]
async fn mqtt5_3_1_2_8_clean_start_reconnect_ends_session_and_publishes_delayed_will() {
    let broker = Broker::start().await;
    let mut watcher = connect(broker.addr, Protocol::V5, "will-watcher").await;
    subscribe_ok(&mut watcher, "wills/#", QoS::AtLeastOnce).await;

    let (dying, _) = RawClient::open_ok(broker.addr, Protocol::V5, "will-fresh", true, |c| {
        c.properties.session_expiry_interval = Some(60);
        let mut w = will("wills/fresh", b"old session over", QoS::AtLeastOnce, false);
        w.properties.will_delay_interval = Some(30);
        c.will = Some(w);
    })
    .await;
    drop(dying);
    // Clean Start: the old session (and its pending will) ends now.
    let (_fresh, ack) =
        RawClient::open_ok(broker.addr, Protocol::V5, "will-fresh", true, |_| {}).await;
    assert!(!ack.session_present);

    let got = next_publish(&mut watcher).await;
    assert_eq!(
        &*got.topic, "wills/fresh",
        "the delayed will of an ended session was never published [MQTT-3.1.2-8]"
    );
}

/// The Will Delay Interval never outlives the session: with Session Expiry 0 the session
/// ends at the disconnection, and so the will is published at once (3.1.3.2.2).
#[tokio::test]
async fn mqtt5_3_1_3_2_will_delay_ends_with_session() {
    let broker = Broker::start().await;
    let mut watcher = connect(broker.addr, Protocol::V5, "will-watcher").await;
    subscribe_ok(&mut watcher, "wills/#", QoS::AtLeastOnce).await;

    let (dying, _) = RawClient::open_ok(broker.addr, Protocol::V5, "will-short", true, |c| {
        let mut w = will("wills/short", b"session over", QoS::AtLeastOnce, false);
        w.properties.will_delay_interval = Some(60);
        c.will = Some(w);
    })
    .await;
    let dropped_at = Instant::now();
    drop(dying);
    let got = next_publish(&mut watcher).await;
    assert_eq!(&*got.topic, "wills/short");
    assert!(
        dropped_at.elapsed() < Duration::from_secs(5),
        "will waited for its delay although the session had ended"
    );
}

// ---------------------------------------------------------------------------------------------
// Message expiry
// ---------------------------------------------------------------------------------------------

/// Connects the persistent subscriber `client_id` (Session Expiry 60) to `filter`, then
/// disconnects it normally so that the session is offline.
async fn offline_subscriber(addr: SocketAddr, client_id: &str, filter: &str) {
    let (mut sub, _) = RawClient::open_ok(addr, Protocol::V5, client_id, true, |c| {
        c.properties.session_expiry_interval = Some(60);
    })
    .await;
    subscribe_ok(&mut sub, filter, QoS::AtLeastOnce).await;
    disconnect_normally(sub).await;
}

async fn resume(addr: SocketAddr, client_id: &str) -> RawClient {
    let (client, ack) = RawClient::open_ok(addr, Protocol::V5, client_id, false, |c| {
        c.properties.session_expiry_interval = Some(60);
    })
    .await;
    assert!(ack.session_present, "session of {client_id} kept");
    client
}

#[tokio::test]
async fn mqtt5_3_3_2_5_expired_message_not_delivered_to_offline_session() {
    let broker = Broker::start().await;
    offline_subscriber(broker.addr, "exp-sub", "exp/t").await;

    let mut publisher = connect(broker.addr, Protocol::V5, "exp-pub").await;
    let mut stale = publish_packet("exp/t", QoS::AtLeastOnce, 1, "stale");
    stale.properties.message_expiry_interval = Some(1);
    publish_acked(&mut publisher, stale).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh = publish_packet("exp/t", QoS::AtLeastOnce, 2, "fresh");
    publish_acked(&mut publisher, fresh).await;

    let mut sub = resume(broker.addr, "exp-sub").await;
    let got = next_publish(&mut sub).await;
    assert_eq!(
        &got.payload[..],
        b"fresh",
        "a message past its Message Expiry Interval was delivered [MQTT-3.3.2-5]"
    );
    assert_quiet(&mut sub, "after the fresh message").await;
}

#[tokio::test]
async fn mqtt5_3_3_2_6_forwarded_expiry_interval_not_above_original() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, Protocol::V5, "exp-live-sub").await;
    subscribe_ok(&mut sub, "exp/live", QoS::AtLeastOnce).await;
    let mut publisher = connect(broker.addr, Protocol::V5, "exp-pub").await;
    let mut message = publish_packet("exp/live", QoS::AtLeastOnce, 1, "soon gone");
    message.properties.message_expiry_interval = Some(60);
    publish_acked(&mut publisher, message).await;

    let got = next_publish(&mut sub).await;
    let left = got
        .properties
        .message_expiry_interval
        .expect("the forwarded message keeps a Message Expiry Interval [MQTT-3.3.2-6]");
    assert!(
        (1..=60).contains(&left),
        "forwarded Message Expiry Interval {left}, original 60"
    );
}

#[tokio::test]
async fn mqtt5_3_3_2_6_expiry_interval_reduced_by_time_waited() {
    let broker = Broker::start().await;
    offline_subscriber(broker.addr, "exp-wait-sub", "exp/wait").await;
    let mut publisher = connect(broker.addr, Protocol::V5, "exp-pub").await;
    let mut message = publish_packet("exp/wait", QoS::AtLeastOnce, 1, "waited");
    message.properties.message_expiry_interval = Some(10);
    publish_acked(&mut publisher, message).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut sub = resume(broker.addr, "exp-wait-sub").await;
    let got = next_publish(&mut sub).await;
    let left = got
        .properties
        .message_expiry_interval
        .expect("Message Expiry Interval forwarded");
    assert!(
        (1..=9).contains(&left),
        "waited > 1 s of 10 s, forwarded interval {left} [MQTT-3.3.2-6]"
    );
}

// ---------------------------------------------------------------------------------------------
// Topic aliases
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt5_3_3_2_3_4_inbound_topic_alias_resolved() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, Protocol::V5, "alias-sub").await;
    subscribe_ok(&mut sub, "alias/in", QoS::AtLeastOnce).await;

    let (mut publisher, ack) =
        RawClient::open_ok(broker.addr, Protocol::V5, "alias-pub", true, |_| {}).await;
    let max = ack.properties.topic_alias_maximum.unwrap_or(0);
    assert!(max >= 1, "default config announces topic aliases: {ack:?}");

    let mut first = publish_packet("alias/in", QoS::AtLeastOnce, 1, "one");
    first.properties.topic_alias = Some(1);
    assert_eq!(
        publish_acked(&mut publisher, first).await,
        ReasonCode::Success
    );
    let mut second = publish_packet("", QoS::AtLeastOnce, 2, "two");
    second.properties.topic_alias = Some(1);
    assert_eq!(
        publish_acked(&mut publisher, second).await,
        ReasonCode::Success
    );

    for payload in [&b"one"[..], b"two"] {
        let got = next_publish(&mut sub).await;
        assert_eq!(
            &*got.topic, "alias/in",
            "alias resolved to the full topic [MQTT-3.3.2-12]"
        );
        assert_eq!(&got.payload[..], payload);
        assert_eq!(
            got.properties.topic_alias, None,
            "no alias to a subscriber that announced no Topic Alias Maximum"
        );
    }
}

/// Publishes to `topic` with the topic alias `alias(max)` (max = the CONNACK's Topic Alias
/// Maximum) and expects DISCONNECT with one of `reasons`.
async fn alias_refused(
    max_topic_aliases: Option<u16>,
    topic: &str,
    alias: impl FnOnce(u16) -> u16,
    reasons: &[ReasonCode],
    what: &str,
) {
    let broker = Broker::start_with(|c| {
        if let Some(max) = max_topic_aliases {
            c.limits.max_topic_aliases = max;
        }
    })
    .await;
    let (mut publisher, ack) =
        RawClient::open_ok(broker.addr, Protocol::V5, "alias-bad", true, |_| {}).await;
    let max = ack.properties.topic_alias_maximum.unwrap_or(0);
    let mut publish = publish_packet(topic, QoS::AtLeastOnce, 1, "x");
    publish.properties.topic_alias = Some(alias(max));
    publisher.send(Packet::Publish(publish)).await;
    publisher.expect_disconnect(reasons, what).await;
}

#[tokio::test]
async fn mqtt5_3_3_2_9_topic_alias_above_maximum_disconnects_0x94() {
    alias_refused(
        None,
        "alias/bad",
        |max| max + 1,
        &[ReasonCode::TopicAliasInvalid],
        "topic alias above the Topic Alias Maximum [MQTT-3.3.2-9]",
    )
    .await;
}

#[tokio::test]
async fn mqtt5_3_3_2_9_topic_alias_with_aliases_off_disconnects_0x94() {
    alias_refused(
        Some(0),
        "alias/bad",
        |_| 1,
        &[ReasonCode::TopicAliasInvalid],
        "topic alias with Topic Alias Maximum 0 [MQTT-3.3.2-9]",
    )
    .await;
}

/// Alias 0 is forbidden [MQTT-3.3.2-8]. 0x94 is defined for an alias above the maximum, so
/// 0x94 and the generic 0x82 (Protocol Error, 4.13) both conform.
#[tokio::test]
async fn mqtt5_3_3_2_8_topic_alias_zero_disconnects() {
    alias_refused(
        None,
        "alias/bad",
        |_| 0,
        &[ReasonCode::TopicAliasInvalid, ReasonCode::ProtocolError],
        "topic alias 0 [MQTT-3.3.2-8]",
    )
    .await;
}

/// An empty topic with an alias the receiver has no mapping for: "it is a Protocol Error and
/// the receiver uses DISCONNECT with Reason Code of 0x82" (3.3.4).
#[tokio::test]
async fn mqtt5_3_3_4_unknown_topic_alias_is_protocol_error_0x82() {
    alias_refused(
        None,
        "",
        |_| 1,
        &[ReasonCode::ProtocolError],
        "empty topic with an alias never set up",
    )
    .await;
}

/// "It is a Protocol Error if the Topic Name is zero length and there is no Topic Alias"
/// (3.3.2.1).
#[tokio::test]
async fn mqtt5_3_3_2_1_empty_topic_without_alias_is_protocol_error() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, Protocol::V5, "alias-none").await;
    publisher
        .send(Packet::Publish(publish_packet(
            "",
            QoS::AtLeastOnce,
            1,
            "x",
        )))
        .await;
    publisher
        .expect_disconnect(
            &[ReasonCode::ProtocolError],
            "empty topic without topic alias",
        )
        .await;
}

#[tokio::test]
async fn mqtt5_3_3_2_3_4_outbound_topic_alias_when_client_allows() {
    let broker = Broker::start().await;
    // A raw subscriber that accepts up to 5 aliases.
    let (mut aliased, _) =
        RawClient::open_ok(broker.addr, Protocol::V5, "alias-out-raw", true, |c| {
            c.properties.topic_alias_maximum = Some(5);
        })
        .await;
    subscribe_ok(&mut aliased, "alias/out", QoS::AtLeastOnce).await;
    // A rumqttc subscriber that announces no Topic Alias Maximum.
    let (rclient, mut rloop) = rumqttc_v5(v5_options("alias-out-rumqttc", broker.port())).await;
    rumqttc_subscribe(&rclient, &mut rloop, "alias/out").await;

    let mut publisher = connect(broker.addr, Protocol::V5, "alias-out-pub").await;
    for (id, payload) in [(1, "first"), (2, "second")] {
        let publish = publish_packet("alias/out", QoS::AtLeastOnce, id, payload);
        assert_eq!(
            publish_acked(&mut publisher, publish).await,
            ReasonCode::Success
        );
    }

    let first = next_publish(&mut aliased).await;
    assert_eq!(&first.payload[..], b"first");
    assert_eq!(
        &*first.topic, "alias/out",
        "the first use carries the topic"
    );
    let alias = first
        .properties
        .topic_alias
        .expect("the broker sets up a topic alias for a client that accepts them");
    assert!(
        (1..=5).contains(&alias),
        "alias {alias} within the client's Topic Alias Maximum 5 [MQTT-3.3.2-11]"
    );
    let second = next_publish(&mut aliased).await;
    assert_eq!(&second.payload[..], b"second");
    assert_eq!(&*second.topic, "", "the second use sends only the alias");
    assert_eq!(second.properties.topic_alias, Some(alias));

    for payload in [&b"first"[..], b"second"] {
        let got = rumqttc_next_publish(&mut rloop).await;
        assert_eq!(&got.topic[..], b"alias/out", "rumqttc sees the full topic");
        assert_eq!(&got.payload[..], payload);
        let alias = got.properties.as_ref().and_then(|p| p.topic_alias);
        assert_eq!(
            alias, None,
            "no alias to a client without Topic Alias Maximum [MQTT-3.3.2-11]"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Maximum packet size
// ---------------------------------------------------------------------------------------------

async fn oversized_publish(protocol: Protocol) {
    let broker = Broker::start_with(|c| c.limits.max_packet_size = 1024).await;
    let (mut client, ack) =
        RawClient::open_ok(broker.addr, protocol, "too-big", true, |_| {}).await;
    if protocol == Protocol::V5 {
        assert_eq!(
            ack.properties.maximum_packet_size,
            Some(1024),
            "CONNACK announces the Maximum Packet Size"
        );
    }
    let publish = publish_packet("big/t", QoS::AtMostOnce, 0, vec![b'x'; 1990]);
    let packet = Packet::Publish(publish);
    assert!((1990..=2010).contains(&packet.encoded_len(protocol)));
    client.send(packet).await;
    expect_violation_close(
        &mut client,
        &[ReasonCode::PacketTooLarge],
        "PUBLISH above the packet size limit",
    )
    .await;
}

#[tokio::test]
async fn mqtt5_3_2_2_server_maximum_packet_size_exceeded_disconnects_0x95() {
    oversized_publish(Protocol::V5).await;
}

#[tokio::test]
async fn mqtt_oversized_packet_closes_connection_v311() {
    oversized_publish(Protocol::V311).await;
}

#[tokio::test]
async fn mqtt5_3_1_2_25_message_over_client_maximum_packet_size_is_discarded() {
    let broker = Broker::start().await;
    let (mut sub, _) = RawClient::open_ok(broker.addr, Protocol::V5, "mps-sub", true, |c| {
        c.properties.maximum_packet_size = Some(200);
    })
    .await;
    subscribe_ok(&mut sub, "mps/t", QoS::AtLeastOnce).await;

    let mut publisher = connect(broker.addr, Protocol::V5, "mps-pub").await;
    let big = publish_packet("mps/t", QoS::AtLeastOnce, 1, vec![b'b'; 500]);
    publish_acked(&mut publisher, big).await;
    let small = publish_packet("mps/t", QoS::AtLeastOnce, 2, vec![b's'; 50]);
    publish_acked(&mut publisher, small).await;

    let got = next_publish(&mut sub).await;
    assert_eq!(
        got.payload.len(),
        50,
        "a packet above the client's Maximum Packet Size was sent [MQTT-3.1.2-24]"
    );
    assert_quiet(&mut sub, "after the small message").await;
}

// ---------------------------------------------------------------------------------------------
// Property passthrough: request / response
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt5_3_3_2_request_response_properties_pass_through() {
    let broker = Broker::start().await;
    let (responder, mut responder_loop) = rumqttc_v5(v5_options("responder", broker.port())).await;
    rumqttc_subscribe(&responder, &mut responder_loop, "service/echo").await;
    let (requester, mut requester_loop) = rumqttc_v5(v5_options("requester", broker.port())).await;
    rumqttc_subscribe(&requester, &mut requester_loop, "reply/requester").await;

    let user_properties = vec![
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "2".to_string()),
        ("a".to_string(), "3".to_string()),
    ];
    let correlation = Bytes::from_static(b"\x00\x01corr-42\xff");
    let request = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".to_string()),
        response_topic: Some("reply/requester".to_string()),
        correlation_data: Some(correlation.clone()),
        user_properties: user_properties.clone(),
        ..PublishProperties::default()
    };
    requester
        .publish_with_properties(
            "service/echo",
            RQoS::AtLeastOnce,
            false,
            r#"{"q":"ping"}"#,
            request,
        )
        .await
        .expect("queue request");
    rumqttc_wait_puback(&mut requester_loop).await;

    let got = rumqttc_next_publish(&mut responder_loop).await;
    assert_eq!(&got.topic[..], b"service/echo");
    assert_eq!(&got.payload[..], br#"{"q":"ping"}"#);
    let props = got.properties.expect("request properties forwarded");
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.response_topic.as_deref(), Some("reply/requester"));
    assert_eq!(props.correlation_data.as_ref(), Some(&correlation));
    assert_eq!(
        props.user_properties, user_properties,
        "user properties forwarded unchanged and in order [MQTT-3.3.2-17] [MQTT-3.3.2-18]"
    );

    // The responder answers on the response topic with the correlation data.
    let response = PublishProperties {
        correlation_data: props.correlation_data.clone(),
        content_type: Some("text/plain".to_string()),
        user_properties: vec![("status".to_string(), "ok".to_string())],
        ..PublishProperties::default()
    };
    responder
        .publish_with_properties(
            props.response_topic.clone().expect("response topic"),
            RQoS::AtLeastOnce,
            false,
            "pong",
            response,
        )
        .await
        .expect("queue response");
    rumqttc_wait_puback(&mut responder_loop).await;

    let answer = rumqttc_next_publish(&mut requester_loop).await;
    assert_eq!(&answer.topic[..], b"reply/requester");
    assert_eq!(&answer.payload[..], b"pong");
    let props = answer.properties.expect("response properties forwarded");
    assert_eq!(props.correlation_data.as_ref(), Some(&correlation));
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        props.user_properties,
        vec![("status".to_string(), "ok".to_string())]
    );
    assert_eq!(props.payload_format_indicator, None);
    assert_eq!(props.response_topic, None);
}

// ---------------------------------------------------------------------------------------------
// Server-sent DISCONNECT
// ---------------------------------------------------------------------------------------------

/// A PUBLISH with both QoS bits set: topic "a", no packet id.
const PUBLISH_QOS3: [u8; 5] = [0x36, 0x03, 0x00, 0x01, b'a'];

/// A PUBLISH with QoS 3 is malformed [MQTT-3.3.1-4]: v5 gets DISCONNECT 0x81, then the
/// close; 3.1.1 just the close.
async fn publish_qos3_closes(protocol: Protocol) {
    let broker = Broker::start().await;
    let mut client = connect(broker.addr, protocol, "qos3").await;
    client.send_raw(&PUBLISH_QOS3).await;
    expect_violation_close(
        &mut client,
        &[ReasonCode::MalformedPacket],
        "PUBLISH with QoS 3 is a Malformed Packet [MQTT-3.3.1-4]",
    )
    .await;
}

#[tokio::test]
async fn mqtt5_3_3_1_4_publish_qos3_malformed_disconnects_0x81() {
    publish_qos3_closes(Protocol::V5).await;
}

#[tokio::test]
async fn mqtt_3_3_1_4_publish_qos3_closes_v311() {
    publish_qos3_closes(Protocol::V311).await;
}

/// A wildcard in a PUBLISH topic name breaks [MQTT-3.3.2-2]. MQTT 5 (4.13.1) asks for
/// DISCONNECT with 0x81 or 0x82 "unless a more specific Reason Code has been defined": 0x90
/// Topic Name invalid is that code, so any of the three conforms. The message must not be
/// delivered.
async fn wildcard_topic_closes(protocol: Protocol, topic: &str) {
    let broker = Broker::start().await;
    let mut watcher = connect(broker.addr, Protocol::V5, "wild-watcher").await;
    subscribe_ok(&mut watcher, "#", QoS::AtLeastOnce).await;

    let mut client = connect(broker.addr, protocol, "wild-pub").await;
    client
        .send(Packet::Publish(publish_packet(
            topic,
            QoS::AtLeastOnce,
            1,
            "wild",
        )))
        .await;
    let what = format!("PUBLISH to {topic:?} [MQTT-3.3.2-2]");
    expect_violation_close(
        &mut client,
        &[
            ReasonCode::TopicNameInvalid,
            ReasonCode::MalformedPacket,
            ReasonCode::ProtocolError,
        ],
        &what,
    )
    .await;

    publish_marker(broker.addr, "wild/marker", b"marker").await;
    let got = next_publish(&mut watcher).await;
    assert_eq!(
        &*got.topic, "wild/marker",
        "the wildcard PUBLISH was routed"
    );
}

#[tokio::test]
async fn mqtt5_3_3_2_2_publish_topic_with_wildcard_disconnects() {
    wildcard_topic_closes(Protocol::V5, "chat/+/room").await;
    wildcard_topic_closes(Protocol::V5, "chat/#").await;
}

#[tokio::test]
async fn mqtt_3_3_2_2_publish_topic_with_wildcard_closes_v311() {
    wildcard_topic_closes(Protocol::V311, "chat/+/room").await;
    wildcard_topic_closes(Protocol::V311, "chat/#").await;
}

#[tokio::test]
async fn mqtt5_3_14_broker_shutdown_sends_disconnect_0x8b() {
    let broker = Broker::start().await;
    let mut v5 = connect(broker.addr, Protocol::V5, "shutdown-v5").await;
    let mut v311 = connect(broker.addr, Protocol::V311, "shutdown-v311").await;
    assert_alive(&mut v5, "before shutdown").await;
    assert_alive(&mut v311, "before shutdown").await;
    tokio::time::timeout(EVENT_TIMEOUT, broker.stop())
        .await
        .expect("broker stops within the timeout");
    v5.expect_disconnect(&[ReasonCode::ServerShuttingDown], "broker shutdown")
        .await;
    v311.expect_closed("broker shutdown (3.1.1 has no DISCONNECT)")
        .await;
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt5_3_3_4_receive_maximum_exceeded_disconnects_0x93() {
    let broker = Broker::start_with(|c| c.limits.max_inflight = 2).await;
    let (mut client, ack) =
        RawClient::open_ok(broker.addr, Protocol::V5, "greedy", true, |_| {}).await;
    assert_eq!(
        ack.properties.receive_maximum,
        Some(2),
        "CONNACK announces the Receive Maximum"
    );
    // Two QoS 2 publishes count against Receive Maximum until the client's PUBREL
    // (4.9), so after their PUBRECs the window is full whatever the broker's speed (a QoS 1
    // publish's PUBACK may go out before the next publish is even read).
    let mut bytes = BytesMut::new();
    for id in 1..=2 {
        Packet::Publish(publish_packet("greedy/t", QoS::ExactlyOnce, id, "x"))
            .encode(Protocol::V5, &mut bytes)
            .expect("encode");
    }
    client.send_raw(&bytes).await;
    for id in 1..=2 {
        match client.recv().await {
            Some(Packet::PubRec(rec)) if rec.packet_id == id => {}
            other => panic!("expected PUBREC {id}, got {other:?}"),
        }
    }
    // One QoS 1 publish more than the window holds.
    client
        .send(Packet::Publish(publish_packet(
            "greedy/t",
            QoS::AtLeastOnce,
            3,
            "x",
        )))
        .await;
    match client.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(
            d.reason,
            ReasonCode::ReceiveMaximumExceeded,
            "more QoS > 0 publishes unacknowledged than Receive Maximum (3.3.4)"
        ),
        other => panic!("expected DISCONNECT 0x93, got {other:?}"),
    }
    client.expect_closed("after DISCONNECT 0x93").await;
}

/// A connection beyond `limits.max_connections`: the broker closes it (or refuses its
/// CONNECT with an error CONNACK, then closes).
async fn assert_connection_refused(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("TCP connect (the kernel accepts)");
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(connect_packet(Protocol::V5, "third", true)))
        .encode(Protocol::V5, &mut out)
        .expect("encode");
    // The broker may already have closed the socket: a failed write is fine.
    let _ = stream.write_all(&out).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(EVENT_TIMEOUT, stream.read_to_end(&mut received))
        .await
        .expect("the connection beyond the limit is closed");
    if !received.is_empty() {
        let mut buf = BytesMut::from(&received[..]);
        match tern_codec::decode(&mut buf, Protocol::V5, 1 << 20) {
            Ok(Some(Packet::ConnAck(ack))) => assert!(
                ack.code.is_error(),
                "a connection beyond the limit was accepted: {ack:?}"
            ),
            other => panic!("expected nothing or an error CONNACK, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn max_connections_refuses_connections_beyond_limit() {
    let broker = Broker::start_with(|c| c.limits.max_connections = 2).await;
    let mut first = connect(broker.addr, Protocol::V5, "conn-1").await;
    let mut second = connect(broker.addr, Protocol::V311, "conn-2").await;

    assert_connection_refused(broker.addr).await;

    assert_alive(&mut first, "first connection").await;
    assert_alive(&mut second, "second connection").await;

    // A slot freed by a disconnection can be used again.
    disconnect_normally(first).await;
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let mut client = RawClient::connect(broker.addr, Protocol::V5).await;
        client
            .send(Packet::Connect(Box::new(
                client.connect_packet("conn-3", true),
            )))
            .await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) if ack.code == ReasonCode::Success => {
                assert_alive(&mut client, "connection in the freed slot").await;
                break;
            }
            // The slot is released just after the socket closes: retry briefly.
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("no connection accepted after a slot was freed: {other:?}"),
        }
    }
    assert_alive(&mut second, "second connection").await;
}

#[tokio::test]
async fn max_topic_levels_refuses_deep_filter_and_topic_v5() {
    let broker = Broker::start_with(|c| c.limits.max_topic_levels = 3).await;
    let mut client = connect(broker.addr, Protocol::V5, "levels-v5").await;
    let reasons = subscribe(
        &mut client,
        1,
        &[("a/b/c/d", QoS::AtLeastOnce), ("a/b/c", QoS::AtLeastOnce)],
    )
    .await;
    assert_eq!(
        reasons,
        [ReasonCode::TopicFilterInvalid, ReasonCode::GrantedQoS1],
        "a filter deeper than max_topic_levels is refused with 0x8F"
    );

    let deep = publish_packet("a/b/c/d", QoS::AtLeastOnce, 1, "deep");
    assert_eq!(
        publish_acked(&mut client, deep).await,
        ReasonCode::TopicNameInvalid,
        "a topic deeper than max_topic_levels gets PUBACK 0x90"
    );
    assert_alive(&mut client, "after the refused PUBLISH").await;

    // Three levels are fine, and the client's own subscription matches.
    let ok = publish_packet("a/b/c", QoS::AtLeastOnce, 2, "ok");
    client.send(Packet::Publish(ok)).await;
    let mut acked = false;
    let mut delivered = false;
    while !(acked && delivered) {
        match client.recv().await {
            Some(Packet::PubAck(ack)) if ack.packet_id == 2 => {
                assert_eq!(ack.reason, ReasonCode::Success);
                acked = true;
            }
            Some(Packet::Publish(p)) => {
                assert_eq!(&*p.topic, "a/b/c");
                assert_eq!(&p.payload[..], b"ok");
                client
                    .send(Packet::PubAck(PubResponse::new(p.packet_id)))
                    .await;
                delivered = true;
            }
            other => panic!("expected PUBACK and PUBLISH, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn max_topic_levels_refuses_deep_filter_v311() {
    let broker = Broker::start_with(|c| c.limits.max_topic_levels = 3).await;
    let mut client = connect(broker.addr, Protocol::V311, "levels-v311").await;
    let reasons = subscribe(
        &mut client,
        1,
        &[("a/b/c/d", QoS::AtLeastOnce), ("a/b/c", QoS::AtLeastOnce)],
    )
    .await;
    // 3.1.1 has a single failure return code, 0x80 [MQTT-3.9.3].
    assert_eq!(
        reasons,
        [ReasonCode::UnspecifiedError, ReasonCode::GrantedQoS1]
    );
    assert_alive(&mut client, "after the refused filter").await;
}

#[tokio::test]
async fn max_queued_messages_bounds_offline_queue() {
    let broker = Broker::start_with(|c| c.limits.max_queued_messages = 5).await;
    offline_subscriber(broker.addr, "queue-sub", "queue/t").await;

    let mut publisher = connect(broker.addr, Protocol::V5, "queue-pub").await;
    for i in 0..20u16 {
        let publish = publish_packet("queue/t", QoS::AtLeastOnce, i + 1, format!("m{i}"));
        let reason = publish_acked(&mut publisher, publish).await;
        assert!(
            matches!(
                reason,
                ReasonCode::Success | ReasonCode::NoMatchingSubscribers | ReasonCode::QuotaExceeded
            ),
            "PUBACK {reason:?} for message {i}"
        );
    }

    let mut sub = resume(broker.addr, "queue-sub").await;
    // A live marker, published once the session is back online: the stored backlog comes
    // first, the marker marks its end.
    let mut got = Vec::new();
    publish_acked(
        &mut publisher,
        publish_packet("queue/t", QoS::AtLeastOnce, 100, "marker"),
    )
    .await;
    loop {
        let p = next_publish(&mut sub).await;
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        if payload == "marker" {
            break;
        }
        got.push(payload);
        assert!(got.len() <= 20, "runaway delivery: {got:?}");
    }
    assert_eq!(
        got,
        ["m0", "m1", "m2", "m3", "m4"],
        "an offline session keeps the first max_queued_messages messages, in order"
    );
    assert_quiet(&mut sub, "after the marker").await;

    // The broker is healthy: new clients connect and messages flow.
    assert_alive(&mut sub, "resumed subscriber").await;
    assert_alive(&mut publisher, "publisher").await;
    let mut fresh = connect(broker.addr, Protocol::V311, "queue-fresh").await;
    assert_alive(&mut fresh, "new client").await;
}
