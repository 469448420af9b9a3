//! Conformance: the CONNECT handshake (first packet, timeout, protocol level), CONNACK codes
//! and properties, keep alive, session takeover, clean and persistent sessions, session
//! expiry, redelivery with DUP on reconnect, and persistent sessions across a broker restart,
//! for MQTT 3.1.1 and 5.0 over real sockets.
//!
//! `RawClient` is used where the exact packet sequence matters (silence, protocol violations,
//! withheld acknowledgements, DUP flags); rumqttc where a real client's view is the point.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::{
    Connect, Disconnect, Packet, Properties, Protocol, PubResponse, Publish, QoS, ReasonCode,
};
use tern_conformance::{
    next_v4, next_v5, publish_packet, v4_options, v5_options, Broker, RawClient, EVENT_TIMEOUT,
};
use tokio::time::Instant;

/// How long a test waits for the broker to close a connection it must close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Connects a raw client that must be accepted; returns it with the Session Present flag.
async fn connect_ok(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    clean_start: bool,
    adjust: impl FnOnce(&mut Connect),
) -> (RawClient, bool) {
    let (client, ack) = RawClient::open_ok(addr, protocol, client_id, clean_start, adjust).await;
    (client, ack.session_present)
}

/// A persistent session: for v5 a Session Expiry Interval (3.1.1 sessions persist by the
/// Clean Session flag alone).
fn expiry(protocol: Protocol, secs: u32) -> impl FnOnce(&mut Connect) {
    move |connect| {
        if protocol == Protocol::V5 {
            connect.properties.session_expiry_interval = Some(secs);
        }
    }
}

fn no_change(_: &mut Connect) {}

/// A fresh clean-session 3.1.1 publisher.
async fn publisher(addr: SocketAddr, client_id: &str) -> RawClient {
    connect_ok(addr, Protocol::V311, client_id, true, no_change)
        .await
        .0
}

/// The next packet, which must be a PUBLISH.
async fn expect_publish(client: &mut RawClient) -> Publish {
    match client.recv().await {
        Some(Packet::Publish(publish)) => publish,
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

fn payload(publish: &Publish) -> &str {
    std::str::from_utf8(&publish.payload).expect("UTF-8 payload")
}

async fn puback(client: &mut RawClient, packet_id: u16) {
    client
        .send(Packet::PubAck(PubResponse::new(packet_id)))
        .await;
}

/// Every packet the broker sends until it closes the connection, failing the test if the
/// connection is still open after `limit`.
async fn expect_close(client: &mut RawClient, limit: Duration) -> Vec<Packet> {
    let deadline = Instant::now() + limit;
    let mut packets = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_within(left).await {
            Ok(None) => return packets,
            Ok(Some(packet)) => packets.push(packet),
            Err(()) => panic!("connection still open after {limit:?}; received {packets:?}"),
        }
    }
}

/// Asserts the packets before a close are exactly one DISCONNECT with `reason`.
fn assert_disconnect(packets: &[Packet], reason: ReasonCode) {
    match packets {
        [Packet::Disconnect(disconnect)] => assert_eq!(
            disconnect.reason, reason,
            "DISCONNECT reason: {disconnect:?}"
        ),
        other => panic!("expected one DISCONNECT {reason} before the close, got {other:?}"),
    }
}

/// Sends DISCONNECT (normal) and waits for the broker to close the connection, with nothing
/// sent in between.
async fn disconnect(mut client: RawClient) {
    client
        .send(Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
        .await;
    let after = expect_close(&mut client, CLOSE_WAIT).await;
    assert!(after.is_empty(), "packets after DISCONNECT: {after:?}");
}

/// PINGREQ; the next packet must be PINGRESP.
async fn ping(client: &mut RawClient) {
    client.send(Packet::PingReq).await;
    match client.recv().await {
        Some(Packet::PingResp) => {}
        other => panic!("expected PINGRESP, got {other:?}"),
    }
}

/// Raw bytes of a CONNECT with any protocol name and level (ones the codec cannot encode).
fn raw_connect(name: &[u8], level: u8, v5_properties: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(name.len()).expect("short name").to_be_bytes());
    body.extend_from_slice(name);
    body.push(level);
    body.push(0x02); // clean session
    body.extend_from_slice(&60u16.to_be_bytes());
    if v5_properties {
        body.push(0); // property length
    }
    body.extend_from_slice(&3u16.to_be_bytes());
    body.extend_from_slice(b"old");
    let mut frame = vec![0x10, u8::try_from(body.len()).expect("short CONNECT")];
    frame.extend_from_slice(&body);
    frame
}

/// Sends a CONNECT with an unsupported protocol level and checks the answer: a 3.1.1-format
/// CONNACK with return code 0x01, then the close [MQTT-3.1.2-2].
async fn assert_unsupported_level(broker: &Broker, name: &[u8], level: u8, v5_properties: bool) {
    // Decoding as 3.1.1 checks the format: 0x01 is the only byte read as
    // UnsupportedProtocolVersion, and properties would be trailing bytes.
    let mut client = RawClient::connect(broker.addr, Protocol::V311).await;
    client
        .send_raw(&raw_connect(name, level, v5_properties))
        .await;
    let packets = expect_close(&mut client, CLOSE_WAIT).await;
    match packets.as_slice() {
        [Packet::ConnAck(ack)] => {
            assert_eq!(ack.code, ReasonCode::UnsupportedProtocolVersion, "{ack:?}");
            assert!(!ack.session_present, "refused CONNACK with session present");
        }
        other => panic!(
            "level {level} ({}): expected CONNACK 0x01 then close, got {other:?}",
            String::from_utf8_lossy(name)
        ),
    }
}

/// Waits for rumqttc's v3.1.1 CONNACK.
async fn v4_connack(eventloop: &mut rumqttc::EventLoop) -> rumqttc::ConnAck {
    next_v4(eventloop, |event| match event {
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) => Some(ack.clone()),
        _ => None,
    })
    .await
}

/// rumqttc v3.1.1: DISCONNECT, then poll until the broker has closed the connection.
async fn v4_disconnect(client: &rumqttc::AsyncClient, eventloop: &mut rumqttc::EventLoop) {
    client.disconnect().await.expect("queue DISCONNECT");
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while eventloop.poll().await.is_ok() {}
    })
    .await
    .expect("broker closes the connection after DISCONNECT");
}

/// rumqttc v5: DISCONNECT, then poll until the broker has closed the connection.
async fn v5_disconnect(client: &rumqttc::v5::AsyncClient, eventloop: &mut rumqttc::v5::EventLoop) {
    client.disconnect().await.expect("queue DISCONNECT");
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while eventloop.poll().await.is_ok() {}
    })
    .await
    .expect("broker closes the connection after DISCONNECT");
}

// ---------------------------------------------------------------------------------------------
// CONNECT first, within the connect timeout
// ---------------------------------------------------------------------------------------------

/// A socket that never sends CONNECT is closed once `limits.connect_timeout_secs` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_connect_timeout_closes_silent_socket() {
    let broker = Broker::start_with(|c| c.limits.connect_timeout_secs = 1).await;
    let start = Instant::now();
    let mut client = RawClient::connect(broker.addr, Protocol::V311).await;
    let packets = expect_close(&mut client, CLOSE_WAIT).await;
    assert!(packets.is_empty(), "sent before CONNECT: {packets:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the 1 s connect timeout",
        start.elapsed()
    );
}

/// The connect timeout also ends a CONNECT that starts but never completes (slowloris).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_connect_timeout_closes_incomplete_connect() {
    let broker = Broker::start_with(|c| c.limits.connect_timeout_secs = 1).await;
    let mut client = RawClient::connect(broker.addr, Protocol::V311).await;
    let connect = raw_connect(b"MQTT", 4, false);
    client.send_raw(&connect[..6]).await;
    let packets = expect_close(&mut client, CLOSE_WAIT).await;
    assert!(
        packets.is_empty(),
        "sent for a partial CONNECT: {packets:?}"
    );
}

/// The connect timeout bounds only the wait for CONNECT: a client that connected in time is
/// still served after it has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_connect_timeout_ends_at_connect() {
    let broker = Broker::start_with(|c| c.limits.connect_timeout_secs = 1).await;
    let mut client = RawClient::connect(broker.addr, Protocol::V311).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connect = client.connect_packet("late-but-in-time", true);
    let ack = client.handshake(connect).await;
    assert_eq!(ack.code, ReasonCode::Success);
    // Now 1.5 s after the socket opened: past the connect timeout, well within keep alive.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ping(&mut client).await;
}

/// A first packet other than CONNECT closes the connection, with nothing sent [MQTT-3.1.0-1].
async fn first_packet_not_connect_closes(protocol: Protocol, first: Packet) {
    let broker = Broker::start().await;
    let mut client = RawClient::connect(broker.addr, protocol).await;
    client.send(first).await;
    // Within CLOSE_WAIT, well before the default 10 s connect timeout: the packet closed it.
    let packets = expect_close(&mut client, CLOSE_WAIT).await;
    assert!(packets.is_empty(), "answered a non-CONNECT: {packets:?}");
}

/// 3.1.1: a PINGREQ before CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_0_1_first_packet_not_connect_closes_v311() {
    first_packet_not_connect_closes(Protocol::V311, Packet::PingReq).await;
}

/// v5: a PUBLISH before CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_0_1_first_packet_not_connect_closes_v5() {
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "sneaky".into(),
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::from_static(b"before connect"),
    };
    first_packet_not_connect_closes(Protocol::V5, Packet::Publish(publish)).await;
}

/// A second CONNECT is a protocol violation [MQTT-3.1.0-2]. Returns the packets the broker
/// sent before closing the connection.
async fn second_connect(protocol: Protocol, client_id: &str) -> Vec<Packet> {
    let broker = Broker::start().await;
    let (mut client, _) = connect_ok(broker.addr, protocol, client_id, true, no_change).await;
    let again = client.connect_packet(client_id, true);
    client.send(Packet::Connect(Box::new(again))).await;
    expect_close(&mut client, CLOSE_WAIT).await
}

/// 3.1.1 closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_0_2_second_connect_closes_v311() {
    let packets = second_connect(Protocol::V311, "twice-311").await;
    assert!(
        packets.is_empty(),
        "3.1.1 has no server DISCONNECT: {packets:?}"
    );
}

/// A Protocol Error: v5 gets DISCONNECT 0x82, then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_0_2_second_connect_is_protocol_error_v5() {
    let packets = second_connect(Protocol::V5, "twice-v5").await;
    assert_disconnect(&packets, ReasonCode::ProtocolError);
}

// ---------------------------------------------------------------------------------------------
// CONNACK return codes and properties
// ---------------------------------------------------------------------------------------------

/// MQTT 3.1 ("MQIsdp", level 3) and "MQTT" level 3 get CONNACK 0x01 and the close
/// [MQTT-3.1.2-2].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_2_protocol_level_3_gets_connack_0x01() {
    let broker = Broker::start().await;
    assert_unsupported_level(&broker, b"MQIsdp", 3, false).await;
    assert_unsupported_level(&broker, b"MQTT", 3, false).await;
}

/// A level above 5 (a future version) gets CONNACK 0x01 and the close [MQTT-3.1.2-2].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_2_protocol_level_6_gets_connack_0x01() {
    let broker = Broker::start().await;
    assert_unsupported_level(&broker, b"MQTT", 6, true).await;
}

/// 3.1.1: an empty client ID with Clean Session 0 is refused with CONNACK 0x02 (identifier
/// rejected), session present 0, and the connection closed [MQTT-3.1.3-8], [MQTT-3.2.2-4].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_3_8_v311_empty_client_id_without_clean_session_gets_0x02() {
    let broker = Broker::start().await;
    let (mut client, ack) =
        RawClient::open(broker.addr, Protocol::V311, "", false, no_change).await;
    assert_eq!(ack.code, ReasonCode::ClientIdentifierNotValid, "{ack:?}");
    assert!(!ack.session_present, "refused CONNACK with session present");
    let packets = expect_close(&mut client, CLOSE_WAIT).await;
    assert!(
        packets.is_empty(),
        "sent after a refused CONNACK: {packets:?}"
    );
}

/// 3.1.1: an empty client ID with Clean Session 1 is accepted, and gets its own identity:
/// a second such client does not take the first one over [MQTT-3.1.3-6].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_3_6_v311_empty_client_id_with_clean_session_accepted() {
    let broker = Broker::start().await;
    let (mut first, present) = connect_ok(broker.addr, Protocol::V311, "", true, no_change).await;
    assert!(
        !present,
        "clean session with session present [MQTT-3.2.2-1]"
    );
    let (mut second, _) = connect_ok(broker.addr, Protocol::V311, "", true, no_change).await;
    ping(&mut first).await;
    ping(&mut second).await;
}

/// v5: an empty client ID is accepted and the CONNACK carries an Assigned Client Identifier
/// [MQTT-3.2.2-16], unique per client, which names the session from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_2_2_16_v5_empty_client_id_gets_assigned_client_identifier() {
    let broker = Broker::start().await;
    let (mut first, ack) = RawClient::open(
        broker.addr,
        Protocol::V5,
        "",
        true,
        expiry(Protocol::V5, 60),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::Success, "{ack:?}");
    assert!(!ack.session_present);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("CONNACK has an Assigned Client Identifier");
    assert!(!assigned.is_empty(), "empty Assigned Client Identifier");

    let (mut second, ack2) = RawClient::open(broker.addr, Protocol::V5, "", true, no_change).await;
    assert_eq!(ack2.code, ReasonCode::Success, "{ack2:?}");
    let assigned2 = ack2
        .properties
        .assigned_client_identifier
        .clone()
        .expect("second CONNACK has an Assigned Client Identifier");
    assert_ne!(assigned, assigned2, "two clients were assigned the same ID");
    ping(&mut first).await;
    ping(&mut second).await;

    // The assigned ID is the session's: reconnecting with it resumes the session.
    first
        .subscribe(1, "mailbox/assigned", QoS::AtLeastOnce)
        .await;
    disconnect(first).await;
    let (mut again, present) = connect_ok(
        broker.addr,
        Protocol::V5,
        &assigned,
        false,
        expiry(Protocol::V5, 60),
    )
    .await;
    assert!(present, "reconnect with the assigned ID found no session");
    let mut sender = publisher(broker.addr, "assigned-pub").await;
    sender
        .publish_qos1(1, "mailbox/assigned", "for the assigned id", false)
        .await;
    assert_eq!(
        payload(&expect_publish(&mut again).await),
        "for the assigned id"
    );
}

/// allow_anonymous = false: a client without credentials gets CONNACK "not authorized",
/// without session present (the rule `session_present_rule`), and the close.
async fn anonymous_refused(protocol: Protocol, client_id: &str, session_present_rule: &str) {
    let broker =
        Broker::start_with(|c| c.allow_anonymous = tern::config::AnonymousPolicy::Never).await;
    let (mut client, ack) =
        RawClient::open(broker.addr, protocol, client_id, true, no_change).await;
    assert_eq!(ack.code, ReasonCode::NotAuthorized, "{ack:?}");
    assert!(
        !ack.session_present,
        "refused CONNACK with session present [{session_present_rule}]"
    );
    let packets = expect_close(&mut client, CLOSE_WAIT).await;
    assert!(
        packets.is_empty(),
        "sent after a refused CONNACK: {packets:?}"
    );
}

/// 3.1.1: CONNACK 0x05 (not authorized).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_2_2_3_anonymous_refused_v311_connack_0x05() {
    anonymous_refused(Protocol::V311, "anon-311", "MQTT-3.2.2-4").await;
}

/// v5: CONNACK 0x87.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_2_2_2_anonymous_refused_v5_connack_0x87() {
    anonymous_refused(Protocol::V5, "anon-v5", "MQTT-3.2.2-6").await;
}

/// The v5 CONNACK announces the broker's limits as a real client reads them: Receive Maximum
/// = limits.max_inflight, Maximum Packet Size = limits.max_packet_size, Topic Alias Maximum
/// = limits.max_topic_aliases (spec 3.2.2.3.3, 3.2.2.3.6, 3.2.2.3.8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_2_2_3_v5_connack_announces_receive_maximum_packet_size_topic_alias_maximum() {
    let broker = Broker::start_with(|c| {
        c.limits.max_inflight = 7;
        c.limits.max_packet_size = 4096;
        c.limits.max_topic_aliases = 9;
    })
    .await;
    let (_client, mut eventloop) =
        rumqttc::v5::AsyncClient::new(v5_options("limits-v5", broker.port()), 16);
    let ack = next_v5(&mut eventloop, |event| match event {
        rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack)) => {
            Some(ack.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    let props = ack.properties.expect("v5 CONNACK has properties");
    assert_eq!(props.receive_max, Some(7), "Receive Maximum");
    assert_eq!(props.max_packet_size, Some(4096), "Maximum Packet Size");
    assert_eq!(props.topic_alias_max, Some(9), "Topic Alias Maximum");
}

// ---------------------------------------------------------------------------------------------
// Keep alive
// ---------------------------------------------------------------------------------------------

/// Connects with keep alive 1 s, goes silent, and returns what the broker sent before closing
/// and how long after the CONNACK it closed.
async fn silent_after_connect(protocol: Protocol, client_id: &str) -> (Vec<Packet>, Duration) {
    let broker = Broker::start().await;
    let (mut client, _) =
        connect_ok(broker.addr, protocol, client_id, true, |c| c.keep_alive = 1).await;
    let start = Instant::now();
    let packets = expect_close(&mut client, CLOSE_WAIT).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "closed after {elapsed:?}, before the keep alive (1 s) passed"
    );
    (packets, elapsed)
}

/// 3.1.1: no packet within 1.5 x keep alive closes the connection [MQTT-3.1.2-24].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_24_keepalive_timeout_closes_silent_client_v311() {
    let (packets, _) = silent_after_connect(Protocol::V311, "silent-311").await;
    assert!(
        packets.is_empty(),
        "3.1.1 has no server DISCONNECT: {packets:?}"
    );
}

/// v5: the keep alive timeout sends DISCONNECT 0x8D, then closes [MQTT-3.1.2-22].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_22_keepalive_timeout_sends_disconnect_0x8d_v5() {
    let (packets, _) = silent_after_connect(Protocol::V5, "silent-v5").await;
    assert_disconnect(&packets, ReasonCode::KeepAliveTimeout);
}

/// PINGREQ gets PINGRESP [MQTT-3.12.4-1], and a client that pings within its keep alive (1 s)
/// stays connected well past 1.5 x keep alive.
async fn pings_keep_alive(protocol: Protocol, client_id: &str) {
    let broker = Broker::start().await;
    let (mut client, _) =
        connect_ok(broker.addr, protocol, client_id, true, |c| c.keep_alive = 1).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        ping(&mut client).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_12_4_1_pingreq_gets_pingresp_and_keeps_alive_v311() {
    pings_keep_alive(Protocol::V311, "pinger-311").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_12_4_1_pingreq_gets_pingresp_and_keeps_alive_v5() {
    pings_keep_alive(Protocol::V5, "pinger-v5").await;
}

/// v5 Server Keep Alive: with limits.max_keepalive_secs = 5, a client asking 60 (or 0, no
/// keep alive) is told 5; one asking 3 keeps its own and gets no property [MQTT-3.2.2-21].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_2_2_21_v5_server_keep_alive_caps_client_keep_alive() {
    let broker = Broker::start_with(|c| c.limits.max_keepalive_secs = 5).await;
    for (asked, told) in [(60, Some(5)), (0, Some(5)), (3, None)] {
        let (_client, ack) = RawClient::open(
            broker.addr,
            Protocol::V5,
            &format!("ka-{asked}"),
            true,
            |c| c.keep_alive = asked,
        )
        .await;
        assert_eq!(ack.code, ReasonCode::Success, "{ack:?}");
        assert_eq!(
            ack.properties.server_keep_alive, told,
            "Server Keep Alive for a client asking {asked}"
        );
    }
}

/// The Server Keep Alive is the one enforced: told 1 s instead of its 60, a silent v5 client
/// gets DISCONNECT 0x8D well before its own keep alive [MQTT-3.1.2-21].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_21_v5_server_keep_alive_is_enforced() {
    let broker = Broker::start_with(|c| c.limits.max_keepalive_secs = 1).await;
    let (mut client, ack) = RawClient::open(broker.addr, Protocol::V5, "told-1s", true, |c| {
        c.keep_alive = 60
    })
    .await;
    assert_eq!(ack.code, ReasonCode::Success, "{ack:?}");
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    let packets = expect_close(&mut client, CLOSE_WAIT).await;
    assert_disconnect(&packets, ReasonCode::KeepAliveTimeout);
}

// ---------------------------------------------------------------------------------------------
// Session takeover
// ---------------------------------------------------------------------------------------------

/// A second connection with the same client ID closes the first; with clean 0 it inherits
/// the session (session present 1, subscriptions still deliver). Returns the packets the
/// first connection received before its close.
async fn takeover_keeps_session(protocol: Protocol, client_id: &str) -> Vec<Packet> {
    let broker = Broker::start().await;
    let topic = format!("mailbox/{client_id}");
    let (mut first, present) = connect_ok(
        broker.addr,
        protocol,
        client_id,
        false,
        expiry(protocol, 60),
    )
    .await;
    assert!(!present, "no session existed yet [MQTT-3.2.2-3]");
    first.subscribe(1, &topic, QoS::AtLeastOnce).await;

    let (mut second, present) = connect_ok(
        broker.addr,
        protocol,
        client_id,
        false,
        expiry(protocol, 60),
    )
    .await;
    assert!(present, "the new connection did not inherit the session");
    let closed_with = expect_close(&mut first, CLOSE_WAIT).await;

    let mut sender = publisher(broker.addr, &format!("{client_id}-pub")).await;
    sender
        .publish_qos1(1, &topic, "to the new connection", false)
        .await;
    let publish = expect_publish(&mut second).await;
    assert_eq!(payload(&publish), "to the new connection");
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    closed_with
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_3_takeover_closes_first_connection_and_keeps_session_v311() {
    let packets = takeover_keeps_session(Protocol::V311, "takeover-311").await;
    assert!(
        packets.is_empty(),
        "3.1.1 has no server DISCONNECT: {packets:?}"
    );
}

/// v5: the connection taken over receives DISCONNECT 0x8E (Session taken over) first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_3_takeover_sends_disconnect_0x8e_and_keeps_session_v5() {
    let packets = takeover_keeps_session(Protocol::V5, "takeover-v5").await;
    assert_disconnect(&packets, ReasonCode::SessionTakenOver);
}

/// A takeover with Clean Start 1 still closes the first connection, but starts a new session:
/// session present 0, and the old subscription no longer delivers [MQTT-3.1.2-4].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_4_v5_takeover_with_clean_start_discards_session() {
    let broker = Broker::start().await;
    let (mut first, _) = connect_ok(
        broker.addr,
        Protocol::V5,
        "tk-clean",
        true,
        expiry(Protocol::V5, 60),
    )
    .await;
    first
        .subscribe(1, "mailbox/tk-clean", QoS::AtLeastOnce)
        .await;
    let (mut second, present) = connect_ok(
        broker.addr,
        Protocol::V5,
        "tk-clean",
        true,
        expiry(Protocol::V5, 60),
    )
    .await;
    assert!(
        !present,
        "Clean Start 1 with session present [MQTT-3.2.2-2]"
    );
    let packets = expect_close(&mut first, CLOSE_WAIT).await;
    assert_disconnect(&packets, ReasonCode::SessionTakenOver);

    let mut sender = publisher(broker.addr, "tk-clean-pub").await;
    sender
        .publish_qos1(1, "mailbox/tk-clean", "old subscription", false)
        .await;
    second
        .subscribe(1, "marker/tk-clean", QoS::AtLeastOnce)
        .await;
    sender
        .publish_qos1(2, "marker/tk-clean", "marker", false)
        .await;
    let publish = expect_publish(&mut second).await;
    assert_eq!(
        payload(&publish),
        "marker",
        "the discarded subscription delivered"
    );
}

// ---------------------------------------------------------------------------------------------
// Clean and persistent sessions
// ---------------------------------------------------------------------------------------------

/// 3.1.1, with rumqttc: Clean Session 0, subscribe QoS 1, disconnect; QoS 1 messages
/// published meanwhile are all delivered in order on reconnect with Clean Session 0, with
/// session present 1 [MQTT-3.1.2-4], [MQTT-3.1.2-5], [MQTT-3.2.2-2].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_5_v311_persistent_session_queues_qos1_in_order() {
    let broker = Broker::start().await;
    let mut options = v4_options("persist-311", broker.port());
    options.set_clean_session(false);

    let (client, mut eventloop) = rumqttc::AsyncClient::new(options.clone(), 16);
    assert!(!v4_connack(&mut eventloop).await.session_present);
    client
        .subscribe("mailbox/persist-311", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    next_v4(&mut eventloop, |event| {
        matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))).then_some(())
    })
    .await;
    v4_disconnect(&client, &mut eventloop).await;
    drop((client, eventloop));

    let (sender, mut sender_loop) =
        rumqttc::AsyncClient::new(v4_options("persist-311-pub", broker.port()), 16);
    let expected: Vec<String> = (0..5).map(|i| format!("offline {i}")).collect();
    for text in &expected {
        sender
            .publish(
                "mailbox/persist-311",
                rumqttc::QoS::AtLeastOnce,
                false,
                text.clone(),
            )
            .await
            .expect("queue PUBLISH");
    }
    let mut acked = 0;
    while acked < expected.len() {
        next_v4(&mut sender_loop, |event| {
            matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
        })
        .await;
        acked += 1;
    }

    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    assert!(
        v4_connack(&mut eventloop).await.session_present,
        "reconnect with Clean Session 0 found no session"
    );
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let publish = next_v4(&mut eventloop, |event| match event {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await;
        assert_eq!(publish.qos, rumqttc::QoS::AtLeastOnce);
        received.push(String::from_utf8(publish.payload.to_vec()).expect("UTF-8"));
    }
    assert_eq!(
        received, expected,
        "queued messages out of order or changed"
    );
}

/// 3.1.1: reconnecting with Clean Session 1 discards the stored session: session present 0
/// and none of its queued messages delivered; that clean session itself ends at disconnect
/// [MQTT-3.1.2-6], [MQTT-3.2.2-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_6_v311_clean_session_discards_stored_session() {
    let broker = Broker::start().await;
    let (mut sub, _) = connect_ok(broker.addr, Protocol::V311, "clean-311", false, no_change).await;
    sub.subscribe(1, "mailbox/clean-311", QoS::AtLeastOnce)
        .await;
    disconnect(sub).await;

    let mut sender = publisher(broker.addr, "clean-311-pub").await;
    sender
        .publish_qos1(1, "mailbox/clean-311", "queued 0", false)
        .await;
    sender
        .publish_qos1(2, "mailbox/clean-311", "queued 1", false)
        .await;

    let (mut sub, present) =
        connect_ok(broker.addr, Protocol::V311, "clean-311", true, no_change).await;
    assert!(
        !present,
        "Clean Session 1 with session present [MQTT-3.2.2-1]"
    );
    // A queued message would arrive before this SUBACK.
    sub.subscribe(1, "marker/clean-311", QoS::AtLeastOnce).await;
    sender
        .publish_qos1(3, "marker/clean-311", "marker", false)
        .await;
    let publish = expect_publish(&mut sub).await;
    assert_eq!(
        payload(&publish),
        "marker",
        "a discarded message was delivered"
    );
    puback(&mut sub, publish.packet_id).await;
    disconnect(sub).await;

    // The Clean Session 1 session ended with its connection.
    let (_sub, present) =
        connect_ok(broker.addr, Protocol::V311, "clean-311", false, no_change).await;
    assert!(
        !present,
        "a Clean Session 1 session outlived its connection"
    );
}

/// v5: Session Expiry Interval 0 (absent) ends the session at disconnect: reconnecting with
/// Clean Start 0 gets session present 0 and nothing published meanwhile [MQTT-3.1.2-23].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_23_v5_session_expiry_0_ends_session_at_disconnect() {
    let broker = Broker::start().await;
    let (mut sub, _) = connect_ok(broker.addr, Protocol::V5, "exp0-v5", true, no_change).await;
    sub.subscribe(1, "mailbox/exp0-v5", QoS::AtLeastOnce).await;
    disconnect(sub).await;

    let mut sender = publisher(broker.addr, "exp0-v5-pub").await;
    sender
        .publish_qos1(1, "mailbox/exp0-v5", "lost", false)
        .await;

    let (mut sub, present) = connect_ok(
        broker.addr,
        Protocol::V5,
        "exp0-v5",
        false,
        expiry(Protocol::V5, 60),
    )
    .await;
    assert!(!present, "a session with expiry 0 outlived its connection");
    sub.subscribe(1, "mailbox/exp0-v5", QoS::AtLeastOnce).await;
    sender
        .publish_qos1(2, "mailbox/exp0-v5", "marker", false)
        .await;
    let publish = expect_publish(&mut sub).await;
    assert_eq!(
        payload(&publish),
        "marker",
        "a message of the ended session was delivered"
    );
}

/// v5, with rumqttc: Session Expiry Interval > 0 keeps the session after disconnect; on
/// reconnect with Clean Start 0, session present 1 and the QoS 1 messages published meanwhile
/// arrive in order [MQTT-3.1.2-23].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_23_v5_session_expiry_keeps_session_and_queue() {
    use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
    use rumqttc::v5::Event as V5Event;

    let broker = Broker::start().await;
    let mut options = v5_options("exp60-v5", broker.port());
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(60));

    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options.clone(), 16);
    let present = next_v5(&mut eventloop, |event| match event {
        V5Event::Incoming(V5Packet::ConnAck(ack)) => Some(ack.session_present),
        _ => None,
    })
    .await;
    assert!(!present);
    client
        .subscribe("mailbox/exp60-v5", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    next_v5(&mut eventloop, |event| {
        matches!(event, V5Event::Incoming(V5Packet::SubAck(_))).then_some(())
    })
    .await;
    v5_disconnect(&client, &mut eventloop).await;
    drop((client, eventloop));

    let mut sender = publisher(broker.addr, "exp60-v5-pub").await;
    let expected: Vec<String> = (0..5).map(|i| format!("kept {i}")).collect();
    for (packet_id, text) in (1..).zip(&expected) {
        sender
            .publish_qos1(packet_id, "mailbox/exp60-v5", text, false)
            .await;
    }

    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 16);
    let present = next_v5(&mut eventloop, |event| match event {
        V5Event::Incoming(V5Packet::ConnAck(ack)) => Some(ack.session_present),
        _ => None,
    })
    .await;
    assert!(present, "session with expiry 60 s gone after disconnect");
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let publish = next_v5(&mut eventloop, |event| match event {
            V5Event::Incoming(V5Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await;
        assert_eq!(publish.qos, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
        received.push(String::from_utf8(publish.payload.to_vec()).expect("UTF-8"));
    }
    assert_eq!(
        received, expected,
        "queued messages out of order or changed"
    );
}

/// v5: a session whose expiry (2 s) has passed is gone, with its subscription and queued
/// messages: reconnecting gives session present 0 [MQTT-3.1.2-23].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_23_v5_expired_session_is_discarded() {
    const EXPIRY: u32 = 2;
    let broker = Broker::start().await;
    let (mut sub, _) = connect_ok(
        broker.addr,
        Protocol::V5,
        "exp2-v5",
        true,
        expiry(Protocol::V5, EXPIRY),
    )
    .await;
    sub.subscribe(1, "mailbox/exp2-v5", QoS::AtLeastOnce).await;
    disconnect(sub).await;

    // Right after the disconnect the session is still there.
    let (sub, present) = connect_ok(
        broker.addr,
        Protocol::V5,
        "exp2-v5",
        false,
        expiry(Protocol::V5, EXPIRY),
    )
    .await;
    assert!(
        present,
        "session with expiry {EXPIRY} s gone right after disconnect"
    );
    disconnect(sub).await;
    let closed_at = Instant::now();

    let mut sender = publisher(broker.addr, "exp2-v5-pub").await;
    sender
        .publish_qos1(1, "mailbox/exp2-v5", "stale", false)
        .await;

    // Poll by reconnecting. A reconnect that still finds the session resumes it and restarts
    // its expiry on disconnect, so each retry waits a full expiry again.
    let expiry_wait = Duration::from_secs(u64::from(EXPIRY));
    let give_up = closed_at + expiry_wait + Duration::from_secs(8);
    tokio::time::sleep_until(closed_at + expiry_wait).await;
    let mut sub = loop {
        let (client, present) = connect_ok(
            broker.addr,
            Protocol::V5,
            "exp2-v5",
            false,
            expiry(Protocol::V5, EXPIRY),
        )
        .await;
        if !present {
            break client;
        }
        assert!(
            Instant::now() < give_up,
            "session with expiry {EXPIRY} s still present {:?} after disconnect",
            closed_at.elapsed()
        );
        drop(client);
        tokio::time::sleep(expiry_wait + Duration::from_millis(200)).await;
    };

    // Its queued message went with it: a fresh subscription sees only the marker.
    sub.subscribe(1, "mailbox/exp2-v5", QoS::AtLeastOnce).await;
    sender
        .publish_qos1(2, "mailbox/exp2-v5", "marker", false)
        .await;
    let publish = expect_publish(&mut sub).await;
    assert_eq!(
        payload(&publish),
        "marker",
        "a message of the expired session was delivered"
    );
}

// ---------------------------------------------------------------------------------------------
// Redelivery on reconnect
// ---------------------------------------------------------------------------------------------

/// A QoS 1 PUBLISH the client did not acknowledge is resent on reconnect (Clean Session /
/// Clean Start 0) with DUP = 1 and its original packet identifier [MQTT-4.4.0-1],
/// [MQTT-3.3.1-1]; once PUBACKed it is not sent a third time.
async fn unacked_qos1_resent_with_dup(protocol: Protocol, client_id: &str) {
    let broker = Broker::start().await;
    let topic = format!("mailbox/{client_id}");
    let (mut sub, _) = connect_ok(
        broker.addr,
        protocol,
        client_id,
        false,
        expiry(protocol, 60),
    )
    .await;
    sub.subscribe(1, &topic, QoS::AtLeastOnce).await;

    let mut sender = publisher(broker.addr, &format!("{client_id}-pub")).await;
    sender.publish_qos1(1, &topic, "unacked", false).await;
    let first = expect_publish(&mut sub).await;
    assert_eq!(payload(&first), "unacked");
    assert_eq!(first.qos, QoS::AtLeastOnce);
    assert!(!first.dup, "DUP set on the first delivery [MQTT-3.3.1-2]");
    // No PUBACK.
    disconnect(sub).await;

    let (mut sub, present) = connect_ok(
        broker.addr,
        protocol,
        client_id,
        false,
        expiry(protocol, 60),
    )
    .await;
    assert!(present, "persistent session gone");
    let again = expect_publish(&mut sub).await;
    assert_eq!(payload(&again), "unacked");
    assert_eq!(again.qos, QoS::AtLeastOnce);
    assert!(again.dup, "resent without DUP [MQTT-3.3.1-1]");
    assert_eq!(
        again.packet_id, first.packet_id,
        "resent with a new packet identifier [MQTT-4.4.0-1]"
    );
    puback(&mut sub, again.packet_id).await;
    disconnect(sub).await;

    let (mut sub, present) = connect_ok(
        broker.addr,
        protocol,
        client_id,
        false,
        expiry(protocol, 60),
    )
    .await;
    assert!(present, "persistent session gone");
    sender.publish_qos1(2, &topic, "marker", false).await;
    let next = expect_publish(&mut sub).await;
    assert_eq!(
        payload(&next),
        "marker",
        "an acknowledged message was sent again"
    );
    assert!(!next.dup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_4_0_1_unacked_qos1_resent_with_dup_v311() {
    unacked_qos1_resent_with_dup(Protocol::V311, "dup-311").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_4_0_1_unacked_qos1_resent_with_dup_v5() {
    unacked_qos1_resent_with_dup(Protocol::V5, "dup-v5").await;
}

// ---------------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------------

/// A persistent session's subscription and its queued QoS 1 messages survive a clean broker
/// restart on the same data directory: session present 1, the messages in order, and the
/// subscription still delivers new messages.
async fn persistent_session_survives_restart(protocol: Protocol, client_id: &str) {
    let broker = Broker::start().await;
    let topic = format!("mailbox/{client_id}");
    let (mut sub, _) = connect_ok(
        broker.addr,
        protocol,
        client_id,
        false,
        expiry(protocol, 3600),
    )
    .await;
    sub.subscribe(1, &topic, QoS::AtLeastOnce).await;
    disconnect(sub).await;

    let mut sender = publisher(broker.addr, &format!("{client_id}-pub")).await;
    let expected: Vec<String> = (0..3).map(|i| format!("before restart {i}")).collect();
    for (packet_id, text) in (1..).zip(&expected) {
        sender.publish_qos1(packet_id, &topic, text, false).await;
    }
    disconnect(sender).await;

    let broker = broker.restart().await;

    let (mut sub, present) = connect_ok(
        broker.addr,
        protocol,
        client_id,
        false,
        expiry(protocol, 3600),
    )
    .await;
    assert!(present, "persistent session lost in the restart");
    let mut received = Vec::new();
    for _ in &expected {
        let publish = expect_publish(&mut sub).await;
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        assert!(!publish.dup, "never sent before, yet DUP set");
        received.push(payload(&publish).to_string());
        puback(&mut sub, publish.packet_id).await;
    }
    assert_eq!(
        received, expected,
        "queued messages lost, changed or reordered"
    );

    let mut sender = publisher(broker.addr, &format!("{client_id}-pub")).await;
    sender.publish_qos1(1, &topic, "after restart", false).await;
    let publish = expect_publish(&mut sub).await;
    assert_eq!(
        payload(&publish),
        "after restart",
        "subscription lost in the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_survives_restart_v311() {
    persistent_session_survives_restart(Protocol::V311, "restart-311").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_survives_restart_v5() {
    persistent_session_survives_restart(Protocol::V5, "restart-v5").await;
}

/// A client may send packets right behind its CONNECT without waiting for the CONNACK
/// [MQTT-3.1.4-?: the server processes them after the CONNECT]: CONNECT, SUBSCRIBE and a
/// PUBLISH to the same topic in one write are all handled, in order, with nothing more
/// arriving from the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_pipelined_behind_connect_in_one_write_are_handled() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut client = RawClient::connect(broker.addr, protocol).await;
        let mut out = bytes::BytesMut::new();
        let connect = client.connect_packet("pipelined", true);
        client.encode(&Packet::Connect(Box::new(connect)), &mut out);
        let options = tern_codec::SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..tern_codec::SubscriptionOptions::default()
        };
        let subscribe = tern_codec::Subscribe {
            packet_id: 1,
            properties: tern_codec::Properties::default(),
            filters: vec![("pipe/line".into(), options)],
        };
        client.encode(&Packet::Subscribe(subscribe), &mut out);
        let publish = publish_packet("pipe/line", QoS::AtLeastOnce, 2, Bytes::from_static(b"hi"));
        client.encode(&Packet::Publish(publish), &mut out);
        client.send_raw(&out).await;
        let mut seen = Vec::new();
        while seen.len() < 4 {
            match client.recv().await {
                Some(Packet::ConnAck(_)) => seen.push("CONNACK"),
                Some(Packet::SubAck(_)) => seen.push("SUBACK"),
                Some(Packet::PubAck(_)) => seen.push("PUBACK"),
                Some(Packet::Publish(p)) => {
                    assert_eq!(&p.payload[..], b"hi");
                    client.ack(&p).await;
                    seen.push("PUBLISH");
                }
                other => panic!("{protocol:?}: unexpected {other:?} after {seen:?}"),
            }
        }
        assert_eq!(&seen[..2], ["CONNACK", "SUBACK"], "{protocol:?}");
    }
}
