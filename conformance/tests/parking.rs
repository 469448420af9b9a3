//! Parked connections (`src/parking.rs`) over real sockets: an idle connection leaves its
//! task for the parking lot, and everything that concerns it must still reach it there: a
//! message, a packet from the client, its keepalive deadline, a session takeover, the
//! broker stopping. Each test first waits for the `tern_parked_connections` gauge to show
//! the connection parked, so the path under test is the parked one.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, QoS as V4QoS};
use tern_codec::{Packet, Protocol, QoS, ReasonCode};
use tern_conformance::{next_v4, v4_options, Broker, RawClient, EVENT_TIMEOUT};

/// A short quiet time, so that woken connections park again quickly.
const IDLE_PARK_MS: u64 = 50;

async fn broker() -> Broker {
    Broker::start_with(|config| config.limits.idle_park_ms = IDLE_PARK_MS).await
}

/// The `tern_parked_connections` gauge.
async fn parked(broker: &Broker) -> u64 {
    series(broker, "tern_parked_connections").await
}

/// The `tern_parked_heartbeats_total` counter.
async fn heartbeats_in_place(broker: &Broker) -> u64 {
    series(broker, "tern_parked_heartbeats_total").await
}

/// One unlabelled series of the broker's exposition; fails the test when it is missing.
async fn series(broker: &Broker, name: &str) -> u64 {
    let text = broker.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the exposition:\n{text}"))
}

/// Waits until exactly `n` connections are parked; fails after [`EVENT_TIMEOUT`].
async fn wait_parked(broker: &Broker, n: u64) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let now = parked(broker).await;
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} parked connections, the gauge stays at {now}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_parked_subscriber_gets_every_message_and_parks_again() {
    let broker = broker().await;
    let (client, mut eventloop) = AsyncClient::new(v4_options("parked-sub", broker.port()), 10);
    client
        .subscribe("park/inbox", V4QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_v4(&mut eventloop, |e| {
        matches!(e, Event::Incoming(Incoming::SubAck(_))).then_some(())
    })
    .await;
    for round in 0..3u8 {
        // The rumqttc event loop is not polled meanwhile: the connection is quiet.
        wait_parked(&broker, 1).await;
        let (mut publisher, _) =
            RawClient::open_ok(broker.addr, Protocol::V311, "parked-pub", true, |_| {}).await;
        publisher
            .publish_qos1(1, "park/inbox", [round], false)
            .await;
        publisher.disconnect().await;
        let payload = next_v4(&mut eventloop, |e| match e {
            Event::Incoming(Incoming::Publish(p)) => Some(p.payload.clone()),
            _ => None,
        })
        .await;
        assert_eq!(&payload[..], &[round], "round {round}");
    }
    wait_parked(&broker, 1).await;
    drop(client);
    drop(eventloop);
    wait_parked(&broker, 0).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_packet_from_the_client_wakes_its_parked_connection() {
    let broker = broker().await;
    let (mut client, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "subscriber", true, |_| {}).await;
    // A SUBSCRIBE needs the connection at work (a PINGREQ the lot answers itself).
    for packet_id in 1..=3 {
        wait_parked(&broker, 1).await;
        client
            .subscribe(packet_id, &format!("wake/{packet_id}"), QoS::AtLeastOnce)
            .await;
    }
    client.disconnect().await;
    wait_parked(&broker, 0).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_heartbeat_lets_its_connection_park_again_at_once() {
    // Long enough that a connection woken by anything but a heartbeat stays a task for the
    // whole test.
    let broker = Broker::start_with(|config| config.limits.idle_park_ms = 600_000).await;
    let (mut client, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "heartbeat", true, |_| {}).await;
    wait_parked(&broker, 1).await;
    // Answered by the parking lot: the connection never leaves it.
    for round in 1..=3 {
        client.send(Packet::PingReq).await;
        assert_eq!(client.recv().await, Some(Packet::PingResp));
        assert_eq!(heartbeats_in_place(&broker).await, round);
        assert_eq!(parked(&broker).await, 1);
    }
    // Other input keeps the connection at work for idle_park_ms (the SUBACK is sent after
    // the lot resumed it)...
    client
        .subscribe(1, "heartbeat/inbox", QoS::AtMostOnce)
        .await;
    assert_eq!(parked(&broker).await, 0);
    // ...until a heartbeat says the device has gone quiet (answered by the connection).
    client.send(Packet::PingReq).await;
    assert_eq!(client.recv().await, Some(Packet::PingResp));
    wait_parked(&broker, 1).await;
    assert_eq!(heartbeats_in_place(&broker).await, 3);
    // Parked, it still gets its messages.
    let (mut publisher, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "heartbeat-pub", true, |_| {}).await;
    publisher
        .publish_qos1(1, "heartbeat/inbox", *b"after the heartbeat", false)
        .await;
    let publish = client.expect_publish("a message after the heartbeat").await;
    assert_eq!(&publish.payload[..], b"after the heartbeat");
    publisher.disconnect().await;
    client.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_connect_that_arrives_late_and_in_pieces_is_served() {
    // A new connection reads its socket directly first; a CONNECT not there yet, or not
    // whole, is awaited through the runtime as usual.
    let broker = broker().await;
    let mut client = RawClient::connect(broker.addr, Protocol::V311).await;
    let mut connect = bytes::BytesMut::new();
    client.encode(
        &Packet::Connect(Box::new(client.connect_packet("late", true))),
        &mut connect,
    );
    // Nothing yet: the broker's first read finds the socket empty.
    assert_eq!(
        client.recv_within(Duration::from_millis(100)).await,
        Err(())
    );
    let (head, tail) = connect.split_at(3);
    client.send_raw(head).await;
    assert_eq!(
        client.recv_within(Duration::from_millis(100)).await,
        Err(())
    );
    client.send_raw(tail).await;
    match client.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    wait_parked(&broker, 1).await;
    client.send(Packet::PingReq).await;
    assert_eq!(client.recv().await, Some(Packet::PingResp));
    client.disconnect().await;
    wait_parked(&broker, 0).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_write_larger_than_the_socket_takes_is_finished_after_parking() {
    // A woken connection writes straight to its socket until the socket is full; the rest
    // goes out through the runtime as the client reads. 16 MiB of retained messages is
    // more than a loopback socket buffers.
    const MESSAGES: usize = 64;
    const SIZE: usize = 256 * 1024;
    let broker = broker().await;
    let (mut publisher, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "big-pub", true, |_| {}).await;
    for i in 0..MESSAGES {
        let payload = vec![i as u8; SIZE];
        publisher
            .publish_qos1(1, &format!("big/{i}"), payload, true)
            .await;
    }
    publisher.disconnect().await;
    let (mut client, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "big-sub", true, |_| {}).await;
    wait_parked(&broker, 1).await;
    client.subscribe(1, "big/#", QoS::AtMostOnce).await;
    // Not reading for a while: the broker's writes block.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen = [false; MESSAGES];
    for _ in 0..MESSAGES {
        let publish = client.expect_publish("a large retained message").await;
        let i: usize = publish.topic["big/".len()..]
            .parse()
            .expect("topic big/{i}");
        assert!(!seen[i], "big/{i} twice");
        seen[i] = true;
        assert_eq!(publish.payload.len(), SIZE, "big/{i}");
        assert!(
            publish.payload.iter().all(|&b| b == i as u8),
            "big/{i} intact"
        );
    }
    client.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_parked_connection_is_held_to_its_keepalive() {
    let broker = broker().await;
    let connected = Instant::now();
    let (mut client, _) = RawClient::open_ok(broker.addr, Protocol::V5, "silent", true, |c| {
        c.keep_alive = 1;
    })
    .await;
    wait_parked(&broker, 1).await;
    match client.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::KeepAliveTimeout),
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    // 1.5 times the keep alive [MQTT-3.1.2-24], not earlier.
    let waited = connected.elapsed();
    assert!(waited >= Duration::from_millis(1_500), "{waited:?}");
    assert_eq!(client.recv().await, None);
    wait_parked(&broker, 0).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_parked_session_can_be_taken_over() {
    let broker = broker().await;
    let (mut first, _) = RawClient::open_ok(broker.addr, Protocol::V5, "twin", true, |_| {}).await;
    wait_parked(&broker, 1).await;
    let (second, _) = RawClient::open_ok(broker.addr, Protocol::V5, "twin", false, |_| {}).await;
    first
        .expect_disconnect(
            &[ReasonCode::SessionTakenOver],
            "the parked connection taken over",
        )
        .await;
    // The new connection parks in its turn; the old one is gone from the lot.
    wait_parked(&broker, 1).await;
    second.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_stopping_broker_says_goodbye_to_parked_connections() {
    let broker = broker().await;
    let (mut client, _) =
        RawClient::open_ok(broker.addr, Protocol::V5, "bystander", true, |_| {}).await;
    wait_parked(&broker, 1).await;
    let stopping = tokio::spawn(broker.stop());
    client
        .expect_disconnect(&[ReasonCode::ServerShuttingDown], "broker stopping")
        .await;
    tokio::time::timeout(EVENT_TIMEOUT, stopping)
        .await
        .expect("the broker stops")
        .expect("stop task");
}

#[tokio::test]
async fn with_parking_off_connections_keep_their_tasks() {
    let broker = Broker::start_with(|config| config.limits.idle_park_ms = 0).await;
    let (client, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "unparked", true, |_| {}).await;
    // With parking on, a new connection parks right after CONNACK (as the tests above
    // wait for); here it stays a task.
    assert_eq!(parked(&broker).await, 0);
    client.disconnect().await;
    broker.stop().await;
}
