//! Causal order across clients: a SUBSCRIBE the broker has read before another client's
//! PUBLISH takes effect before that PUBLISH is routed. MQTT leaves order across
//! connections to the broker, but test suites of other projects (and many applications)
//! connect a subscriber and a publisher, subscribe on the one and publish on the other
//! without waiting for the SUBACK, and expect the message, as Mosquitto gives it every time.
//!
//! Each test runs a few hundred such pairs, each pair on new connections and a new topic,
//! on MQTT 3.1.1 and 5, against the broker as a process of its own while other traffic
//! runs: with rumqttc (its event loop reports the SUBSCRIBE sent before the PUBLISH is
//! handed to the other client) and with tern's own raw client (the SUBSCRIBE written to its
//! socket before the PUBLISH is written to the other's).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::{Packet, Properties, Protocol, QoS, Subscribe, SubscriptionOptions};
use tern_conformance::{
    next_v4, next_v5, publish_packet, v4_options, v5_options, BrokerProcess, RawClient,
};

const BROKER: &str = env!("CARGO_BIN_EXE_tern-test-broker");
const PAIRS: usize = 300;
/// How long a subscriber waits for a message it must get.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Two publishers on topics of their own, as fast as their subscribers read, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    async fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..2 {
            let topic = format!("noise/{i}");
            let (mut sub, _) = RawClient::open_ok(
                addr,
                Protocol::V311,
                &format!("noise-sub-{i}"),
                true,
                |_| {},
            )
            .await;
            sub.subscribe(1, &topic, QoS::AtMostOnce).await;
            let (mut publisher, _) = RawClient::open_ok(
                addr,
                Protocol::V311,
                &format!("noise-pub-{i}"),
                true,
                |_| {},
            )
            .await;
            let stopped = stop.clone();
            tasks.push(tokio::spawn(async move {
                let payload = Bytes::from_static(&[7; 64]);
                while !stopped.load(Ordering::Relaxed) {
                    let mut batch = bytes::BytesMut::new();
                    for _ in 0..32 {
                        let p = publish_packet(&topic, QoS::AtMostOnce, 0, payload.clone());
                        publisher.encode(&Packet::Publish(p), &mut batch);
                    }
                    if publisher.try_send_raw(&batch).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            }));
            let stopped = stop.clone();
            tasks.push(tokio::spawn(async move {
                while !stopped.load(Ordering::Relaxed) {
                    if let Ok(None) = sub.recv_within(Duration::from_millis(100)).await {
                        return;
                    }
                }
            }));
        }
        Traffic { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Runs `pairs` against a new broker process while [`Traffic`] runs.
async fn with_broker_and_traffic<F: std::future::Future<Output = ()>>(
    pairs: impl FnOnce(SocketAddr) -> F,
) {
    let dir = tempfile::tempdir().expect("data dir");
    let broker = BrokerProcess::start(BROKER, dir.path(), &[]).await;
    let traffic = Traffic::start(broker.addr).await;
    pairs(broker.addr).await;
    traffic.stop().await;
}

async fn raw_pairs(addr: SocketAddr, protocol: Protocol) {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    };
    for pair in 0..PAIRS {
        let topic = format!("raw-causal/{pair}");
        let (mut sub, _) = RawClient::open_ok(
            addr,
            protocol,
            &format!("raw-causal-sub-{pair}"),
            true,
            |_| {},
        )
        .await;
        let (mut publisher, _) = RawClient::open_ok(
            addr,
            protocol,
            &format!("raw-causal-pub-{pair}"),
            true,
            |_| {},
        )
        .await;
        sub.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(topic.as_str().into(), options)],
        }))
        .await;
        let p = publish_packet(&topic, QoS::AtLeastOnce, 1, Bytes::from_static(b"m"));
        publisher.send(Packet::Publish(p)).await;
        let mut subacked = false;
        loop {
            match sub.recv_within(DELIVERY_TIMEOUT).await {
                Ok(Some(Packet::SubAck(_))) => subacked = true,
                Ok(Some(Packet::Publish(p))) if p.topic == topic => break,
                Ok(Some(other)) => panic!("pair {pair}: unexpected {other:?}"),
                Ok(None) => panic!("pair {pair}: the broker closed the subscriber"),
                Err(()) => panic!(
                    "pair {pair}: the PUBLISH on {topic}, written after the SUBSCRIBE on \
                     the other connection, never came (SUBACK {})",
                    if subacked { "received" } else { "missing" }
                ),
            }
        }
        match publisher.recv_within(DELIVERY_TIMEOUT).await {
            Ok(Some(Packet::PubAck(_))) => {}
            other => panic!("pair {pair}: expected the publisher's PUBACK, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_pairs_subscribe_then_publish_without_waiting_v311() {
    with_broker_and_traffic(|addr| raw_pairs(addr, Protocol::V311)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_pairs_subscribe_then_publish_without_waiting_v5() {
    with_broker_and_traffic(|addr| raw_pairs(addr, Protocol::V5)).await;
}

/// A topic as bytes (rumqttc's 3.1.1 client has it as a `String`, its v5 client as bytes).
fn bytes(topic: &impl AsRef<[u8]>) -> &[u8] {
    topic.as_ref()
}

/// A rumqttc pairs function for one of its two clients (3.1.1 and 5 have the same calls
/// on different types): new connections each pair, the SUBSCRIBE reported sent before the
/// PUBLISH is handed over, then the subscriber must get the message.
macro_rules! rumqttc_pairs {
    ($name:ident, $client:ty, $event:path, $packet:path, $qos:path, $options:path, $next:path, $prefix:literal) => {
        async fn $name(addr: SocketAddr) {
            use rumqttc::Outgoing;
            use $event as Ev;
            use $packet as P;
            for pair in 0..PAIRS {
                let connect = |id: String| {
                    let (client, mut events) = <$client>::new($options(&id, addr.port()), 16);
                    async move {
                        let connack =
                            |e: &Ev| matches!(e, Ev::Incoming(P::ConnAck(_))).then_some(());
                        $next(&mut events, connack).await;
                        (client, events)
                    }
                };
                let (sub, mut sub_events) = connect(format!("{}-sub-{pair}", $prefix)).await;
                let (publisher, mut pub_events) = connect(format!("{}-pub-{pair}", $prefix)).await;
                let topic = format!("{}/{pair}", $prefix);
                sub.subscribe(&topic, $qos).await.expect("subscribe");
                let sent = |e: &Ev| matches!(e, Ev::Outgoing(Outgoing::Subscribe(_))).then_some(());
                $next(&mut sub_events, sent).await;
                publisher
                    .publish(&topic, $qos, false, "m")
                    .await
                    .expect("publish");
                let sent = |e: &Ev| matches!(e, Ev::Outgoing(Outgoing::Publish(_))).then_some(());
                $next(&mut pub_events, sent).await;
                let delivered = tokio::time::timeout(DELIVERY_TIMEOUT, async {
                    loop {
                        match sub_events.poll().await {
                            Ok(Ev::Incoming(P::Publish(p)))
                                if bytes(&p.topic) == topic.as_bytes() =>
                            {
                                return
                            }
                            Ok(_) => {}
                            Err(e) => panic!("pair {pair}: subscriber: {e}"),
                        }
                    }
                })
                .await;
                assert!(
                    delivered.is_ok(),
                    "pair {pair}: the PUBLISH sent after the other client's SUBSCRIBE never came"
                );
                let acked = |e: &Ev| matches!(e, Ev::Incoming(P::PubAck(_))).then_some(());
                $next(&mut pub_events, acked).await;
            }
        }
    };
}

rumqttc_pairs!(
    rumqttc_pairs_v311,
    rumqttc::AsyncClient,
    rumqttc::Event,
    rumqttc::Packet,
    rumqttc::QoS::AtLeastOnce,
    v4_options,
    next_v4,
    "rumqttc-causal"
);
rumqttc_pairs!(
    rumqttc_pairs_v5,
    rumqttc::v5::AsyncClient,
    rumqttc::v5::Event,
    rumqttc::v5::mqttbytes::v5::Packet,
    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    v5_options,
    next_v5,
    "rumqttc5-causal"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_pairs_subscribe_then_publish_without_waiting_v311() {
    with_broker_and_traffic(rumqttc_pairs_v311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_pairs_subscribe_then_publish_without_waiting_v5() {
    with_broker_and_traffic(rumqttc_pairs_v5).await;
}
