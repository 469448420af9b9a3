//! Overload: storage that cannot keep up, and consumers that cannot keep up. In each test a
//! misbehaving party sits next to well-behaved clients, which must not notice.
//!
//! - A write stall ([`StallingStore`] holds every write): QoS 1 publishes that need a
//!   durable write are pushed back by TCP (the broker stops reading the publisher once its
//!   in-flight window is full) instead of piling up in memory; QoS 0 traffic goes on; once
//!   the disk is back every publish is acknowledged and none is lost.
//! - A slow consumer (a subscriber that stops reading): its QoS 0 messages are dropped
//!   first, and when a QoS 1 message can no longer be queued it is disconnected, while
//!   other subscribers of the same topic get everything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{decode, Packet, Protocol, QoS};
use tern_conformance::stall::StallingStore;
use tern_conformance::{metric, publish_packet, Broker, RawClient, EVENT_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn open(addr: std::net::SocketAddr, protocol: Protocol, id: &str, clean: bool) -> RawClient {
    RawClient::open_ok(addr, protocol, id, clean, |_| {})
        .await
        .0
}

#[tokio::test]
async fn a_write_stall_pushes_back_on_durable_publishers_and_spares_the_rest() {
    const MESSAGES: u16 = 8_000;
    const PAYLOAD: usize = 4_096;
    let store = StallingStore::new();
    let broker = Broker::start_on_store(store.clone(), |_| {}).await;
    let addr = broker.addr;

    // An offline persistent subscriber: every QoS 1 publish on durable/ is a disk write.
    let mut keeper = open(addr, Protocol::V311, "keeper", false).await;
    keeper.subscribe(1, "durable/#", QoS::AtLeastOnce).await;
    keeper.disconnect().await;
    // A calm pair on a topic nobody keeps.
    let mut calm_sub = open(addr, Protocol::V5, "calm-sub", true).await;
    calm_sub.subscribe(1, "calm", QoS::AtMostOnce).await;
    let mut calm_pub = open(addr, Protocol::V5, "calm-pub", true).await;

    store.stall();

    // The flooder: a 3.1.1 client (no Receive Maximum to obey) writing 32 MB of QoS 1
    // publishes as fast as TCP lets it, while counting the PUBACKs it gets.
    let mut flood = BytesMut::new();
    for id in 1..=MESSAGES {
        let p = publish_packet("durable/x", QoS::AtLeastOnce, id, vec![b'x'; PAYLOAD]);
        Packet::Publish(p)
            .encode(Protocol::V311, &mut flood)
            .expect("encode");
    }
    let total = flood.len();
    let mut connect = BytesMut::new();
    Packet::Connect(Box::new(tern_conformance::connect_packet(
        Protocol::V311,
        "flooder",
        true,
    )))
    .encode(Protocol::V311, &mut connect)
    .expect("encode");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rx, mut tx) = stream.into_split();
    tx.write_all(&connect).await.expect("CONNECT");
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let written = written.clone();
        tokio::spawn(async move {
            for chunk in flood.chunks(64 * 1024) {
                tx.write_all(chunk).await.expect("write the flood");
                written.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            tx
        })
    };
    let acks = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut acked = 0u16;
        while acked < MESSAGES {
            match decode(&mut buf, Protocol::V311, 1 << 20).expect("decode") {
                Some(Packet::ConnAck(_)) => {}
                Some(Packet::PubAck(ack)) => {
                    acked += 1;
                    assert_eq!(ack.packet_id, acked, "PUBACKs in order");
                }
                Some(other) => panic!("flooder got {other:?}"),
                None => {
                    if rx.read_buf(&mut buf).await.expect("read") == 0 {
                        panic!("the broker closed the flooder after {acked} PUBACKs");
                    }
                }
            }
        }
        acked
    });

    // While the disk is stalled, the calm pair's QoS 0 traffic flows.
    for i in 0..20u16 {
        let payload = format!("calm {i}");
        calm_pub
            .send(Packet::Publish(publish_packet(
                "calm",
                QoS::AtMostOnce,
                0,
                payload.clone(),
            )))
            .await;
        assert_eq!(
            &calm_sub.expect_publish("calm").await.payload[..],
            payload.as_bytes()
        );
    }
    // ...and the flooder is held back by TCP: the broker read its in-flight window and
    // stopped. Loopback buffers hold a few MB; nowhere near the 32 MB it wants to send.
    let stalled_at = written.load(Ordering::Relaxed);
    assert!(
        stalled_at < total / 2,
        "the broker took {stalled_at} of {total} bytes during the stall: not pushing back"
    );
    assert!(!writer.is_finished() && !acks.is_finished());

    // The disk comes back: everything is acknowledged, and kept.
    store.resume();
    let acked = tokio::time::timeout(Duration::from_secs(60), acks)
        .await
        .expect("all PUBACKs after the stall")
        .expect("ack reader");
    assert_eq!(acked, MESSAGES);
    let _tx = writer.await.expect("writer");
    let mut keeper = open(addr, Protocol::V311, "keeper", false).await;
    for id in 1..=MESSAGES {
        let p = keeper.expect_publish("kept through the stall").await;
        assert_eq!(p.payload.len(), PAYLOAD, "message {id}");
    }
    assert!(
        keeper
            .recv_within(Duration::from_millis(200))
            .await
            .is_err(),
        "no more than was sent"
    );
}

/// A subscriber that stops reading. QoS 0 messages for it are dropped once its queues are
/// full; the first QoS 1 message that no longer fits disconnects it (its socket is full, so
/// not even a DISCONNECT reaches it). A subscriber of the same topic that reads gets every
/// message.
#[tokio::test]
async fn a_slow_consumer_loses_qos0_first_then_is_disconnected() {
    let broker = Broker::start_with(|c| {
        c.limits.max_queued_messages = 50;
        c.limits.outbound_channel_capacity = 50;
        c.limits.max_inflight = 10;
    })
    .await;
    let addr = broker.addr;
    let mut good = open(addr, Protocol::V5, "good", true).await;
    good.subscribe(1, "feed", QoS::AtLeastOnce).await;

    // The slow one subscribes and then never reads again: with small socket buffers the
    // broker's writes to it soon block.
    let slow_socket = tokio::net::TcpSocket::new_v4().expect("socket");
    slow_socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let slow_stream = slow_socket.connect(addr).await.expect("connect");
    let mut slow = RawClient::over(slow_stream, Protocol::V5);
    let ack = slow
        .handshake(tern_conformance::connect_packet(Protocol::V5, "slow", true))
        .await;
    assert_eq!(ack.code, tern_codec::ReasonCode::Success);
    slow.subscribe(1, "feed", QoS::AtLeastOnce).await;

    let mut publisher = open(addr, Protocol::V5, "publisher", true).await;
    // QoS 0 first: far more than the slow one's socket and queues hold. Dropped for it,
    // not for the good one, which is given the time to read them (batches of 10, well
    // inside its queues).
    const QOS0: usize = 5_000;
    let payload = vec![b'z'; 1_000];
    for _ in 0..QOS0 / 10 {
        let mut burst = BytesMut::new();
        for _ in 0..10 {
            publisher.encode(
                &Packet::Publish(publish_packet("feed", QoS::AtMostOnce, 0, payload.clone())),
                &mut burst,
            );
        }
        publisher.send_raw(&burst).await;
        for _ in 0..10 {
            good.expect_publish("QoS 0 feed").await;
        }
    }
    // Then QoS 1: the slow one cannot take these either, and is disconnected.
    const QOS1: u16 = 300;
    for id in 1..=QOS1 {
        publisher
            .publish_qos1(id, "feed", format!("q1 {id}"), false)
            .await;
        let p = good.expect_publish("QoS 1 feed").await;
        assert_eq!(&p.payload[..], format!("q1 {id}").as_bytes());
    }

    // Now the slow one reads what reached it: the connection ends, after fewer messages.
    let (mut qos0, mut qos1) = (0usize, 0u16);
    let ended = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match slow.recv().await {
                None => return,
                Some(Packet::Publish(p)) if p.qos == QoS::AtMostOnce => qos0 += 1,
                Some(Packet::Publish(_)) => qos1 += 1,
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow consumer was not disconnected");
    assert!(
        qos0 < QOS0,
        "the slow consumer got all {qos0} QoS 0 messages"
    );
    assert!(
        qos1 < QOS1,
        "the slow consumer got all {qos1} QoS 1 messages"
    );
    // The good subscriber goes on.
    publisher
        .publish_qos1(QOS1 + 1, "feed", "after", false)
        .await;
    assert_eq!(&good.expect_publish("after").await.payload[..], b"after");

    // Operators see it in the metrics.
    let metrics = broker.metrics().await;
    assert_eq!(
        metric(&metrics, "tern_slow_consumers_disconnected_total"),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "tern_messages_dropped_total{reason=\"outbound_full\"}"
        ) > 0.0,
        "no QoS 0 drop counted:\n{metrics}"
    );
}

/// A client that subscribes to more filters than `limits.max_subscriptions_per_session`:
/// the filters beyond the limit are refused in the SUBACK (v5 0x97 Quota exceeded, 3.1.1
/// 0x80), the ones within it work, the client stays connected, and another client's
/// subscriptions are not limited by its.
#[tokio::test]
async fn subscriptions_beyond_the_session_limit_are_refused_one_by_one() {
    use tern_codec::{ReasonCode, Subscribe, SubscriptionOptions};
    const LIMIT: usize = 10;
    let broker = Broker::start_with(|c| c.limits.max_subscriptions_per_session = LIMIT).await;
    for protocol in [Protocol::V5, Protocol::V311] {
        let id = format!("greedy-{protocol:?}");
        let mut greedy = open(broker.addr, protocol, &id, true).await;
        let filters: Vec<_> = (0..LIMIT + 40)
            .map(|i| (format!("many/{i}").into(), SubscriptionOptions::default()))
            .collect();
        greedy
            .send(Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Default::default(),
                filters,
            }))
            .await;
        let refused = match protocol {
            Protocol::V5 => ReasonCode::QuotaExceeded,
            Protocol::V311 => ReasonCode::UnspecifiedError,
        };
        match greedy.recv().await {
            Some(Packet::SubAck(ack)) => {
                assert_eq!(ack.reasons.len(), LIMIT + 40);
                assert!(ack.reasons[..LIMIT]
                    .iter()
                    .all(|r| *r == ReasonCode::GRANTED_QOS_0));
                assert!(
                    ack.reasons[LIMIT..].iter().all(|r| *r == refused),
                    "{:?}",
                    &ack.reasons[LIMIT..]
                );
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
        // Renewing a filter it holds is not a new subscription; it still works.
        greedy.subscribe(2, "many/0", QoS::AtLeastOnce).await;
        let mut other = open(
            broker.addr,
            Protocol::V5,
            &format!("other-{protocol:?}"),
            true,
        )
        .await;
        other
            .publish_qos1(1, "many/0", "still subscribed", false)
            .await;
        assert_eq!(
            &greedy.expect_publish("many/0").await.payload[..],
            b"still subscribed"
        );
        // Another session has its own allowance.
        other.subscribe(2, "many/49", QoS::AtMostOnce).await;
    }
}

/// A SUBSCRIBE of a persistent session is acknowledged only once the session's new
/// subscription is stored (a SUBACK then survives a crash): while the disk stalls, the
/// SUBACK waits, and a clean session's (nothing to store) does not.
#[tokio::test]
async fn a_persistent_sessions_suback_waits_for_its_subscription_to_be_stored() {
    let store = StallingStore::new();
    let broker = Broker::start_on_store(store.clone(), |_| {}).await;
    let mut keeper = open(broker.addr, Protocol::V311, "keeper", false).await;
    let mut passer = open(broker.addr, Protocol::V311, "passer", true).await;
    store.stall();
    let subscribe = |packet_id, filter: &str| {
        Packet::Subscribe(tern_codec::Subscribe {
            packet_id,
            properties: tern_codec::Properties::default(),
            filters: vec![(filter.into(), tern_codec::SubscriptionOptions::default())],
        })
    };
    keeper.send(subscribe(1, "kept/#")).await;
    passer.subscribe(1, "passing/#", QoS::AtMostOnce).await;
    let early = keeper.recv_within(Duration::from_millis(300)).await;
    assert!(
        matches!(early, Err(())),
        "SUBACK before the write: {early:?}"
    );
    store.resume();
    match keeper.recv().await {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.packet_id, 1),
        other => panic!("expected the SUBACK once stored, got {other:?}"),
    }
}
