//! The TLS, WebSocket and WebSocket-over-TLS listeners, and the limits every listener
//! applies: connections per IP and per listener, the connect rate (reconnect storms), and
//! per-connection inbound message and byte rates. Each limit is tested with a misbehaving
//! client next to a well-behaved one, which must not notice.
//!
//! Real third-party clients over these transports are in `clients_transports.rs` (paho,
//! mosquitto) and `js_clients.rs` (MQTT.js, Chromium); here rumqttc, and raw clients that
//! can do what real clients will not (split frames, text frames, floods).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_codec::{Packet, Protocol, QoS, ReasonCode};
use tern_conformance::{
    connect_packet, metric, publish_packet, tls_connect, ws_connect, Broker, RawClient, TestCert,
    EVENT_TIMEOUT,
};

/// A raw v5 client on `stream`, connected as `client_id`.
async fn open_over(
    stream: impl tern_conformance::ClientIo + 'static,
    client_id: &str,
) -> RawClient {
    let mut client = RawClient::over(stream, Protocol::V5);
    let ack = client
        .handshake(connect_packet(Protocol::V5, client_id, true))
        .await;
    assert_eq!(ack.code, ReasonCode::Success, "CONNECT of {client_id}");
    client
}

async fn open_tcp(addr: SocketAddr, client_id: &str) -> RawClient {
    RawClient::open_ok(addr, Protocol::V5, client_id, true, |_| {})
        .await
        .0
}

/// A TCP connection from the given loopback source address.
async fn connect_from(source: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .expect("bind the source address");
    socket.connect(addr).await.expect("connect")
}

/// Publishes `payload` at QoS 1 on `topic` from `publisher` and waits until `subscriber`
/// has it: one round trip through the broker.
async fn round_trip(publisher: &mut RawClient, subscriber: &mut RawClient, id: u16, topic: &str) {
    let payload = format!("ping {id}");
    publisher.publish_qos1(id, topic, &payload, false).await;
    let p = subscriber.expect_publish(topic).await;
    assert_eq!(&p.payload[..], payload.as_bytes());
}

#[tokio::test]
async fn tls_listener_serves_rumqttc_and_raw_clients_across_transports() {
    let cert = TestCert::localhost();
    let broker = Broker::start_with(|c| cert.enable_all_listeners(c)).await;
    let tls = broker.tls.expect("the TLS listener is on");

    // rumqttc, a real client, subscribes over TLS.
    let mut options = rumqttc::v5::MqttOptions::new("rumqttc-tls", "localhost", tls.port());
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: cert.cert_pem.clone().into_bytes(),
            alpn: None,
            client_auth: None,
        },
    ));
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 16);
    client
        .subscribe("x/tls", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    tern_conformance::next_v5(&mut events, |e| {
        matches!(
            e,
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::SubAck(_))
        )
        .then_some(())
    })
    .await;

    // A raw client over TLS, and one over plain TCP, publish to it.
    let stream = tls_connect(tls, &cert.cert_pem)
        .await
        .expect("TLS handshake");
    let mut over_tls = open_over(stream, "raw-tls").await;
    over_tls.publish_qos1(1, "x/tls", "from tls", false).await;
    let mut over_tcp = open_tcp(broker.addr, "raw-tcp").await;
    over_tcp.publish_qos1(1, "x/tls", "from tcp", false).await;
    for expected in ["from tls", "from tcp"] {
        let payload = tern_conformance::next_v5(&mut events, |e| match e {
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) => {
                Some(p.payload.clone())
            }
            _ => None,
        })
        .await;
        assert_eq!(&payload[..], expected.as_bytes());
    }

    // A client that trusts another certificate refuses the broker's.
    let stranger = TestCert::localhost();
    assert!(
        tls_connect(tls, &stranger.cert_pem).await.is_err(),
        "a TLS client must not accept a certificate it does not trust"
    );
    // Plain MQTT on the TLS port is not a TLS ClientHello: at most a TLS alert comes back,
    // never a CONNACK, and the connection is closed.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut confused = tokio::net::TcpStream::connect(tls).await.expect("connect");
    let mut connect = BytesMut::new();
    Packet::Connect(Box::new(connect_packet(Protocol::V5, "plain-on-tls", true)))
        .encode(Protocol::V5, &mut connect)
        .expect("encode");
    confused.write_all(&connect).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(EVENT_TIMEOUT, confused.read_to_end(&mut answer))
        .await
        .expect("the broker closes the connection")
        .ok();
    assert_ne!(
        answer.first(),
        Some(&0x20),
        "a CONNACK in clear text: {answer:?}"
    );
}

#[tokio::test]
async fn websocket_carries_packets_split_across_and_packed_into_messages() {
    let cert = TestCert::localhost();
    let broker = Broker::start_with(|c| cert.enable_all_listeners(c)).await;
    let ws = broker.ws.expect("the WebSocket listener is on");

    let subscriber_stream = tokio::net::TcpStream::connect(ws).await.expect("connect");
    let subscriber_ws = ws_connect(subscriber_stream, ws, "/mqtt", Some("mqtt"))
        .await
        .expect("upgrade");
    let mut subscriber = RawClient::over(subscriber_ws, Protocol::V5);
    // CONNECT split across two WebSocket messages (each flush sends one).
    let mut connect = BytesMut::new();
    subscriber.encode(
        &Packet::Connect(Box::new(connect_packet(Protocol::V5, "ws-sub", true))),
        &mut connect,
    );
    let half = connect.len() / 2;
    subscriber.send_raw(&connect[..half]).await;
    subscriber.send_raw(&connect[half..]).await;
    match subscriber.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ReasonCode::Success),
        other => panic!("expected CONNACK over WebSocket, got {other:?}"),
    }
    subscriber.subscribe(1, "x/ws/#", QoS::AtLeastOnce).await;

    // Two PUBLISHes packed into one WebSocket message, over WSS.
    let wss = broker.wss.expect("the WSS listener is on");
    let tls = tls_connect(wss, &cert.cert_pem)
        .await
        .expect("TLS handshake");
    let publisher_ws = ws_connect(tls, wss, "/mqtt", Some("mqtt"))
        .await
        .expect("upgrade over TLS");
    let mut publisher = open_over(publisher_ws, "wss-pub").await;
    let mut both = BytesMut::new();
    for (id, payload) in [(1u16, "one"), (2, "two")] {
        publisher.encode(
            &Packet::Publish(publish_packet("x/ws/a", QoS::AtLeastOnce, id, payload)),
            &mut both,
        );
    }
    publisher.send_raw(&both).await;
    for id in [1, 2] {
        match publisher.recv().await {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, id),
            other => panic!("expected PUBACK {id}, got {other:?}"),
        }
    }
    for expected in ["one", "two"] {
        let p = subscriber.expect_publish(expected).await;
        assert_eq!(&p.payload[..], expected.as_bytes());
    }

    // And from plain TCP to WebSocket.
    let mut over_tcp = open_tcp(broker.addr, "tcp-pub").await;
    over_tcp.publish_qos1(1, "x/ws/b", "three", false).await;
    assert_eq!(
        &subscriber.expect_publish("three").await.payload[..],
        b"three"
    );
}

#[tokio::test]
async fn websocket_upgrade_checks_path_and_subprotocol_and_refuses_text_frames() {
    let cert = TestCert::localhost();
    let broker = Broker::start_with(|c| cert.enable_all_listeners(c)).await;
    let ws = broker.ws.expect("the WebSocket listener is on");
    let status = |e: tokio_tungstenite::tungstenite::Error| match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    };

    let stream = tokio::net::TcpStream::connect(ws).await.expect("connect");
    let refused = ws_connect(stream, ws, "/elsewhere", Some("mqtt")).await;
    assert_eq!(status(refused.err().expect("refused")), 404);

    let stream = tokio::net::TcpStream::connect(ws).await.expect("connect");
    let refused = ws_connect(stream, ws, "/mqtt", Some("chat")).await;
    assert_eq!(status(refused.err().expect("refused")), 400);

    // No subprotocol at all is accepted, as most brokers do.
    let stream = tokio::net::TcpStream::connect(ws).await.expect("connect");
    let plain = ws_connect(stream, ws, "/mqtt", None)
        .await
        .expect("upgrade");
    open_over(plain, "no-subprotocol").await;

    // MQTT must travel in binary frames: a text frame closes the connection.
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let stream = tokio::net::TcpStream::connect(ws).await.expect("connect");
    let request = format!("ws://{ws}/mqtt");
    let (mut raw, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("upgrade");
    raw.send(Message::text("CONNECT please"))
        .await
        .expect("send");
    use futures_util::StreamExt;
    let end = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match raw.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the broker must close a connection that sends text frames"
    );
}

#[tokio::test]
async fn per_ip_limit_closes_only_the_extra_connection() {
    let broker = Broker::start_with(|c| c.listeners.tcp.limits.max_connections_per_ip = 2).await;
    let addr = broker.addr;
    let first = open_over(connect_from("127.0.0.2", addr).await, "ip2-a").await;
    let mut second = open_over(connect_from("127.0.0.2", addr).await, "ip2-b").await;

    // The third from the same address is closed before it is even read.
    let mut third = RawClient::over(connect_from("127.0.0.2", addr).await, Protocol::V5);
    let _ = third
        .try_send(Packet::Connect(Box::new(connect_packet(
            Protocol::V5,
            "ip2-c",
            true,
        ))))
        .await;
    assert!(
        third.recv().await.is_none(),
        "a third connection from 127.0.0.2 is closed"
    );

    // Another address is not affected, nor are the two established connections.
    let mut other = open_over(connect_from("127.0.0.3", addr).await, "ip3-a").await;
    other.subscribe(1, "per-ip", QoS::AtLeastOnce).await;
    round_trip(&mut second, &mut other, 1, "per-ip").await;

    // Once one of the two leaves, its place is free again (the broker notices the close
    // a moment later: retry until it has).
    first.disconnect().await;
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let mut again = RawClient::over(connect_from("127.0.0.2", addr).await, Protocol::V5);
        if again
            .try_send(Packet::Connect(Box::new(connect_packet(
                Protocol::V5,
                "ip2-d",
                true,
            ))))
            .await
            .is_ok()
        {
            if let Some(Packet::ConnAck(ack)) = again.recv().await {
                assert_eq!(ack.code, ReasonCode::Success);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never given back"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn listener_connection_limit_is_its_own() {
    let cert = TestCert::localhost();
    let broker = Broker::start_with(|c| {
        cert.enable_all_listeners(c);
        c.listeners.ws.limits.max_connections = 1;
    })
    .await;
    let ws = broker.ws.expect("ws listener");
    let stream = tokio::net::TcpStream::connect(ws).await.expect("connect");
    let only = ws_connect(stream, ws, "/mqtt", Some("mqtt"))
        .await
        .expect("upgrade");
    let _only = open_over(only, "ws-only").await;
    // The second WebSocket connection is closed at accept: the upgrade fails.
    let stream = tokio::net::TcpStream::connect(ws).await.expect("connect");
    assert!(ws_connect(stream, ws, "/mqtt", Some("mqtt")).await.is_err());
    // The TCP listener has its own (default) limits.
    let _tcp = open_tcp(broker.addr, "tcp-still-fine").await;
}

/// A reconnect storm: 300 clients at once against a listener paced at 100 connects/s.
/// Every one of them gets in (none refused), paced over about two seconds, while an
/// established pair keeps exchanging messages undisturbed.
#[tokio::test]
async fn reconnect_storm_is_paced_without_refusing_or_disturbing_anyone() {
    const STORM: usize = 300;
    const RATE: u32 = 100;
    let broker = Broker::start_with(|c| {
        c.listeners.tcp.limits.max_connects_per_sec = RATE;
        c.limits.connect_timeout_secs = 60;
    })
    .await;
    let addr = broker.addr;
    let mut subscriber = open_tcp(addr, "calm-sub").await;
    subscriber.subscribe(1, "calm", QoS::AtLeastOnce).await;
    let mut publisher = open_tcp(addr, "calm-pub").await;

    let started = Instant::now();
    let storm = tokio::spawn(async move {
        let mut clients = tokio::task::JoinSet::new();
        for i in 0..STORM {
            // Spread over source addresses, as a carrier's NAT pool would be.
            let source = format!("127.0.1.{}", 1 + i % 50);
            clients.spawn(async move {
                let stream = connect_from(&source, addr).await;
                let mut client = RawClient::over(stream, Protocol::V5);
                let connect = connect_packet(Protocol::V5, &format!("storm-{i}"), true);
                client.send(Packet::Connect(Box::new(connect))).await;
                match client
                    .recv_within(Duration::from_secs(60))
                    .await
                    .expect("a CONNACK within a minute")
                {
                    Some(Packet::ConnAck(ack)) => ack.code,
                    other => panic!("storm client {i}: expected CONNACK, got {other:?}"),
                }
            });
        }
        let mut accepted = 0;
        while let Some(code) = clients.join_next().await {
            assert_eq!(code.expect("storm client"), ReasonCode::Success);
            accepted += 1;
        }
        accepted
    });

    // The established pair, during the storm: every round trip completes promptly.
    let mut slowest = Duration::ZERO;
    let mut trips = 0u16;
    while !storm.is_finished() && trips < 200 {
        trips += 1;
        let t = Instant::now();
        round_trip(&mut publisher, &mut subscriber, trips, "calm").await;
        slowest = slowest.max(t.elapsed());
    }
    let accepted = storm.await.expect("storm task");
    let took = started.elapsed();
    assert_eq!(accepted, STORM, "every storm client gets in");
    // The first second's burst is free, the rest comes at RATE per second.
    let least = Duration::from_secs_f64((STORM as f64 - f64::from(RATE)) / f64::from(RATE));
    assert!(
        took >= least.mul_f64(0.9),
        "{STORM} connects took {took:?}: not paced at {RATE}/s"
    );
    assert!(
        trips >= 5,
        "the established pair made only {trips} round trips"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "an established client waited {slowest:?} for one round trip during the storm"
    );
    let metrics = broker.metrics().await;
    assert!(
        metric(&metrics, "tern_accepts_paced_total{listener=\"tcp\"}") > 0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tern_connects_refused_total{reason=\"connection_limit\"}"
        ),
        0.0
    );
}

/// A client publishing far beyond `max_inbound_messages_per_sec` is slowed to that rate
/// (not disconnected, nothing lost); a client next to it does not notice.
#[tokio::test]
async fn inbound_message_rate_slows_the_flooder_only() {
    const RATE: u32 = 100;
    const FLOOD: usize = 300;
    let broker = Broker::start_with(|c| {
        c.listeners.tcp.limits.max_inbound_messages_per_sec = RATE;
    })
    .await;
    let mut sink = open_tcp(broker.addr, "flood-sink").await;
    sink.subscribe(1, "flood", QoS::AtMostOnce).await;
    let mut calm_sub = open_tcp(broker.addr, "calm-sub").await;
    calm_sub.subscribe(1, "calm", QoS::AtLeastOnce).await;
    let mut calm_pub = open_tcp(broker.addr, "calm-pub").await;

    let mut flooder = open_tcp(broker.addr, "flooder").await;
    let mut burst = BytesMut::new();
    for i in 0..FLOOD {
        let p = publish_packet("flood", QoS::AtMostOnce, 0, format!("{i}"));
        flooder.encode(&Packet::Publish(p), &mut burst);
    }
    let started = Instant::now();
    flooder.send_raw(&burst).await;

    // The calm pair, while the flood is being paced.
    for id in 1..=5 {
        let t = Instant::now();
        round_trip(&mut calm_pub, &mut calm_sub, id, "calm").await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the calm pair waited {:?}",
            t.elapsed()
        );
    }
    let calm_done = started.elapsed();
    for i in 0..FLOOD {
        let p = sink.expect_publish("flood").await;
        assert_eq!(
            &p.payload[..],
            format!("{i}").as_bytes(),
            "in order, none lost"
        );
    }
    let took = started.elapsed();
    let least = Duration::from_secs_f64((FLOOD as f64 - f64::from(RATE)) / f64::from(RATE));
    assert!(
        took >= least.mul_f64(0.9),
        "{FLOOD} publishes took {took:?}: not paced"
    );
    assert!(
        calm_done < took,
        "the calm pair ({calm_done:?}) was held up behind the flood ({took:?})"
    );
    // Still connected: a round trip of its own.
    flooder.subscribe(1, "flooder/own", QoS::AtLeastOnce).await;
    let metrics = broker.metrics().await;
    assert!(
        metric(&metrics, "tern_inbound_paused_total{listener=\"tcp\"}") > 0.0,
        "{metrics}"
    );
}

/// The same for bytes: 150 KB against 50 KB/s takes about two seconds.
#[tokio::test]
async fn inbound_byte_rate_slows_the_flooder() {
    const RATE: u64 = 50_000;
    let broker = Broker::start_with(|c| {
        c.listeners.tcp.limits.max_inbound_bytes_per_sec = RATE;
    })
    .await;
    let mut sink = open_tcp(broker.addr, "bytes-sink").await;
    sink.subscribe(1, "bulk", QoS::AtMostOnce).await;
    let mut flooder = open_tcp(broker.addr, "bytes-flooder").await;
    let mut burst = BytesMut::new();
    for i in 0..10u8 {
        let p = publish_packet("bulk", QoS::AtMostOnce, 0, vec![i; 15_000]);
        flooder.encode(&Packet::Publish(p), &mut burst);
    }
    let total = burst.len() as f64;
    let started = Instant::now();
    flooder.send_raw(&burst).await;
    for i in 0..10u8 {
        let p = sink.expect_publish("bulk").await;
        assert_eq!(p.payload.len(), 15_000);
        assert_eq!(p.payload[0], i);
    }
    let took = started.elapsed();
    let least = Duration::from_secs_f64((total - RATE as f64) / RATE as f64);
    assert!(
        took >= least.mul_f64(0.9),
        "{total} bytes took {took:?}: not paced"
    );
}
