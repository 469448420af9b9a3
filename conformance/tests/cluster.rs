//! Several tern nodes on one real NATS server (`[cluster] engine = "nats"`): plain MQTT
//! across nodes with third-party clients, interest-based routing (a node without a matching
//! subscriber receives nothing, as NATS's own monitoring counts it), broadcasts, and a node
//! that waits for NATS before it takes clients.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tern_codec::Protocol;
use tern_conformance::nats::{NatsOptions, NatsServer};
use tern_conformance::{eventually, v4_options, Broker, RawClient, EVENT_TIMEOUT};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

async fn node(nats: &NatsServer, name: &str) -> Broker {
    nats.node(name).await
}

/// A rumqttc client subscribed to `filters` (QoS 1): the publishes it receives, as
/// (topic, payload).
async fn subscriber(
    port: u16,
    id: &str,
    filters: &[&str],
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, String)>) {
    let (client, mut events) = AsyncClient::new(v4_options(id, port), 64);
    for filter in filters {
        client
            .subscribe(*filter, QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut subacks = filters.len();
    let (acked_tx, acked) = tokio::sync::oneshot::channel();
    let mut acked_tx = Some(acked_tx);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subacks -= 1;
                    if subacks == 0 {
                        if let Some(tx) = acked_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let payload = String::from_utf8_lossy(&p.payload).into_owned();
                    if tx.send((p.topic.clone(), payload)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(EVENT_TIMEOUT, acked)
        .await
        .expect("SUBACK in time")
        .expect("client alive");
    (client, rx)
}

/// A rumqttc publisher whose event loop runs in the background.
fn publisher(port: u16, id: &str) -> AsyncClient {
    let (client, mut events) = AsyncClient::new(v4_options(id, port), 256);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(EVENT_TIMEOUT, rx.recv())
        .await
        .expect("a message in time")
        .expect("subscriber alive")
}

/// Publishes probes on `topic` until every subscriber got one: the subscriptions have
/// reached NATS (a SUBACK says the node has them, not yet that NATS routes them).
async fn until_routed(
    publisher: &AsyncClient,
    topic: &str,
    subscribers: &mut [&mut mpsc::UnboundedReceiver<(String, String)>],
) {
    for rx in subscribers.iter_mut() {
        loop {
            publisher
                .publish(topic, QoS::AtLeastOnce, false, "probe")
                .await
                .expect("queue probe");
            match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                Ok(Some((_, payload))) if payload == "probe" => break,
                Ok(Some(other)) => panic!("unexpected {other:?} before the probes"),
                Ok(None) => panic!("subscriber gone"),
                Err(_) => continue,
            }
        }
    }
}

/// Reads past the probes still in flight, then expects exactly `expected`, in order.
async fn expect_sequence(rx: &mut mpsc::UnboundedReceiver<(String, String)>, expected: &[String]) {
    let mut got = next(rx).await;
    while got.1 == "probe" {
        got = next(rx).await;
    }
    for (i, want) in expected.iter().enumerate() {
        if i > 0 {
            got = next(rx).await;
        }
        assert_eq!(&got.1, want, "message {i} in order, once");
    }
}

/// The `/connz` entry of the node named `node` (its NATS client is "tern node {node}").
fn connection<'a>(connz: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    let name = format!("tern node {node}");
    connz["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|c| c["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} connected to NATS: {connz}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_messages_cross_nodes_once_in_order_and_only_where_subscribed() {
    let nats = NatsServer::start().await;
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let c = node(&nats, "c").await;
    // On b: one client with a wildcard filter, one whose two filters overlap (the node
    // holds a NATS subscription for each and receives two copies of each message).
    let (_s1, mut one) = subscriber(b.addr.port(), "sub-one", &["room/+/temp"]).await;
    let (_s2, mut both) = subscriber(b.addr.port(), "sub-both", &["room/#", "room/1/temp"]).await;
    // On c: interest in other topics only.
    let (_s3, mut other) = subscriber(c.addr.port(), "sub-other", &["lobby/#"]).await;
    let publish = publisher(a.addr.port(), "pub");
    until_routed(&publish, "room/1/temp", &mut [&mut one, &mut both]).await;

    let expected: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    for payload in &expected {
        publish
            .publish("room/1/temp", QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("queue publish");
    }
    expect_sequence(&mut one, &expected).await;
    expect_sequence(&mut both, &expected).await;

    // c received none of it: NATS sent its connection nothing.
    let connz = nats.connections().await;
    assert_eq!(live_messages(connection(&connz, "c")), 0, "{connz}");
    let to_b = live_messages(connection(&connz, "b"));
    assert!(to_b >= 300, "b received the messages: {connz}");
    // ... while c still routes what its subscriber wants.
    until_routed(&publish, "lobby/x", &mut [&mut other]).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), one.recv())
            .await
            .is_err(),
        "lobby/x does not reach room subscribers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribed_filter_stops_the_traffic_to_its_node() {
    let nats = NatsServer::start().await;
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let (sub, mut rx) = subscriber(b.addr.port(), "sub", &["feed/#"]).await;
    let publish = publisher(a.addr.port(), "pub");
    until_routed(&publish, "feed/1", &mut [&mut rx]).await;
    sub.unsubscribe("feed/#").await.expect("queue UNSUBSCRIBE");
    // Once NATS has dropped b's interest, b's connection stops receiving.
    let nats = &nats;
    eventually("b's interest in feed/# dropped", || async move {
        live_subjects(connection(&nats.connections().await, "b")) == 0
    })
    .await;
    // 20 more from one connection of a, then a broadcast marker from the same one: a
    // forwards them in that order over its one NATS connection, so once b has the marker
    // any of the 20 that reached b would have come before it.
    let mut ops = operator_device(&a, "ops-console").await;
    let (_w, mut watch) = subscriber(b.addr.port(), "watch", &["broadcast/#"]).await;
    for i in 0..20u16 {
        ops.publish_qos1(i + 1, "feed/1", format!("after {i}"), false)
            .await;
    }
    ops.publish_qos1(21, "broadcast/marker", b"end", false)
        .await;
    loop {
        let (topic, _) = next(&mut watch).await;
        if topic == "broadcast/marker" {
            break;
        }
    }
    assert!(rx.try_recv().is_err(), "nothing after UNSUBSCRIBE");
}

/// A node's NATS subscriptions to plain messages' subjects (not its JetStream traffic).
fn live_subscriptions(connection: &serde_json::Value) -> Vec<&serde_json::Value> {
    connection["subscriptions_list_detail"]
        .as_array()
        .map(|subs| {
            subs.iter()
                .filter(|s| {
                    s["subject"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("tern.live."))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn live_subjects(connection: &serde_json::Value) -> usize {
    live_subscriptions(connection).len()
}

/// Messages NATS delivered to a node on plain messages' subjects.
fn live_messages(connection: &serde_json::Value) -> u64 {
    live_subscriptions(connection)
        .iter()
        .filter_map(|s| s["msgs"].as_u64())
        .sum()
}

async fn operator_device(node: &Broker, client_id: &str) -> RawClient {
    RawClient::open_ok(node.addr, Protocol::V5, client_id, true, |c| {
        c.username = Some("ops".into());
    })
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_subscribers_on_every_node() {
    let nats = NatsServer::start().await;
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let (_sa, mut on_a) = subscriber(a.addr.port(), "on-a", &["broadcast/#"]).await;
    let (_sb, mut on_b) = subscriber(b.addr.port(), "on-b", &["broadcast/#"]).await;
    let mut ops = operator_device(&a, "ops-console").await;
    ops.publish_qos1(1, "broadcast/news", b"maintenance at 2am", false)
        .await;
    for rx in [&mut on_a, &mut on_b] {
        assert_eq!(
            next(rx).await,
            (
                "broadcast/news".to_string(),
                "maintenance at 2am".to_string()
            )
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), on_a.recv())
            .await
            .is_err(),
        "the publishing node delivers its broadcast once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_no_client_until_it_has_joined_nats_with_jetstream() {
    // The port NATS will listen on; until then a plain TCP listener stands there, which
    // counts the node's attempts to reach it.
    let stand_in = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let nats_port = stand_in.local_addr().expect("addr").port();
    let mqtt = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mqtt_addr = mqtt.local_addr().expect("addr");
    drop(mqtt);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = tern_conformance::test_config(dir.path());
    config.listeners.tcp.listen = mqtt_addr;
    tern_conformance::nats::join(
        &mut config,
        "late",
        &format!("nats://127.0.0.1:{nats_port}"),
    );
    config.cluster.connect_backoff_max_ms = 200;
    let starting = tokio::spawn(Broker::start_config(config));
    for attempt in 0..2 {
        let (socket, _) = tokio::time::timeout(EVENT_TIMEOUT, stand_in.accept())
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt} to reach NATS"))
            .expect("accept");
        drop(socket);
    }
    assert!(!starting.is_finished(), "still joining");
    assert!(
        tokio::net::TcpStream::connect(mqtt_addr).await.is_err(),
        "no MQTT listener before the node has joined"
    );
    drop(stand_in);
    // NATS without JetStream: the node connects, finds no JetStream, and keeps waiting.
    let plain = NatsServer::start_with(NatsOptions {
        port: Some(nats_port),
        without_jetstream: true,
    })
    .await;
    let seen = &plain;
    eventually("the node tried NATS without JetStream", || async move {
        seen.closed_connections().await > 0
    })
    .await;
    assert!(!starting.is_finished(), "no JetStream: still waiting");
    assert!(tokio::net::TcpStream::connect(mqtt_addr).await.is_err());
    plain.kill().await;
    let _nats = NatsServer::start_with(NatsOptions {
        port: Some(nats_port),
        without_jetstream: false,
    })
    .await;
    let broker = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("joined once NATS with JetStream is there")
        .expect("start task");
    let (mut client, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "first", true, |_| {}).await;
    client.subscribe(1, "x", tern_codec::QoS::AtMostOnce).await;
}

/// The retained message a new subscriber to `filter` on `node` gets first, if any (a
/// QoS 0 subscription: whatever comes right after the SUBACK, within a short wait).
async fn retained_on(node: &Broker, filter: &str) -> Option<String> {
    let (mut client, _) = RawClient::open_ok(node.addr, Protocol::V311, "look", true, |_| {}).await;
    client
        .subscribe(1, filter, tern_codec::QoS::AtMostOnce)
        .await;
    match client.recv_within(Duration::from_millis(300)).await {
        Ok(Some(tern_codec::Packet::Publish(p))) => {
            assert!(p.retain, "a retained message");
            Some(String::from_utf8_lossy(&p.payload).into_owned())
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_cluster_wide_even_for_a_node_that_joins_later() {
    let nats = NatsServer::start().await;
    let a = node(&nats, "a").await;
    let (mut device, _) = RawClient::open_ok(a.addr, Protocol::V311, "door", true, |_| {}).await;
    device.publish_qos1(1, "status/door", b"open", true).await;
    // In the cluster's retained stream (appended after the PUBACK, by the node's link).
    let stream = &nats;
    eventually("the retained message in the stream", || async move {
        stream.stream_messages("TERN_RETAINED").await >= 1
    })
    .await;
    // A node that joins now has it before it takes its first client.
    let b = node(&nats, "b").await;
    assert_eq!(retained_on(&b, "status/#").await.as_deref(), Some("open"));
    // Replaced on b, then deleted on b (empty payload): a reaches the same state.
    let (mut other, _) = RawClient::open_ok(b.addr, Protocol::V311, "door-2", true, |_| {}).await;
    other.publish_qos1(1, "status/door", b"closed", true).await;
    let on_a = &a;
    eventually("the replacement reached a", || async move {
        retained_on(on_a, "status/door").await.as_deref() == Some("closed")
    })
    .await;
    other.publish_qos1(2, "status/door", b"", true).await;
    eventually("the deletion reached a", || async move {
        retained_on(on_a, "status/door").await.is_none()
    })
    .await;
    assert_eq!(retained_on(&b, "status/door").await, None);
}

/// A node whose streams cannot be made yet (here: another stream already takes the
/// subjects of an inbox stream) takes no client and keeps trying; it serves as soon as
/// they can be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_trying_to_make_its_streams_and_serves_once_it_can() {
    use async_nats::jetstream;
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "IN_THE_WAY".to_string(),
        subjects: vec!["tern.inbox.0.>".to_string()],
        ..Default::default()
    })
    .await
    .expect("create the stream in the way");
    let url = nats.url();
    let starting = tokio::spawn(async move {
        Broker::start_with(|c| {
            tern_conformance::nats::join(c, "n1", &url);
            c.cluster.shards = 1;
        })
        .await
    });
    // Nothing to wait for: it must simply not be ready.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !starting.is_finished(),
        "the node started (or gave up) without its inbox stream"
    );
    js.delete_stream("IN_THE_WAY").await.expect("delete it");
    let node = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("the node serves within 30 s once it can make its streams")
        .expect("the node's start");
    let (_client, ack) =
        RawClient::open(node.addr, tern_codec::Protocol::V5, "late", true, |_| {}).await;
    assert_eq!(ack.code, tern_codec::ReasonCode::Success);
}

/// A shared subscription group with members on two nodes gets each message once across
/// the cluster (NATS queue groups pick the node), whichever node it was published on;
/// a plain subscriber of the same filter still gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_nodes_gets_each_message_once() {
    const EACH: usize = 150;
    let nats = NatsServer::start().await;
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let (_w1, mut one) = subscriber(a.addr.port(), "worker-1", &["$share/workers/jobs/#"]).await;
    let (_w2, mut two) = subscriber(b.addr.port(), "worker-2", &["$share/workers/jobs/#"]).await;
    let (_d, mut plain) = subscriber(b.addr.port(), "auditor", &["jobs/#"]).await;
    let on_a = publisher(a.addr.port(), "pub-a");
    let on_b = publisher(b.addr.port(), "pub-b");
    // Probes until both members and the plain subscriber got one: every subscription
    // has reached NATS.
    let (mut got_one, mut got_two, mut got_plain) = (false, false, false);
    while !(got_one && got_two && got_plain) {
        on_a.publish("jobs/probe", QoS::AtLeastOnce, false, "probe")
            .await
            .expect("queue probe");
        tokio::time::sleep(Duration::from_millis(50)).await;
        got_one |= one.try_recv().is_ok();
        got_two |= two.try_recv().is_ok();
        got_plain |= plain.try_recv().is_ok();
    }
    for i in 0..EACH {
        for (client, tag) in [(&on_a, "a"), (&on_b, "b")] {
            client
                .publish(
                    format!("jobs/{i}"),
                    QoS::AtLeastOnce,
                    false,
                    format!("{tag}{i}"),
                )
                .await
                .expect("queue publish");
        }
    }
    let wanted: std::collections::BTreeSet<String> = (0..EACH)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .collect();
    // The group: every message once, over both members.
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut per_member = [0usize; 2];
    while wanted.iter().any(|m| !seen.contains_key(m)) {
        let (member, (_, payload)) = tokio::select! {
            got = next(&mut one) => (0, got),
            got = next(&mut two) => (1, got),
        };
        if payload == "probe" {
            continue;
        }
        per_member[member] += 1;
        *seen.entry(payload).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "delivered to the group more than once: {twice:?}"
    );
    assert!(
        per_member.iter().all(|n| *n > 0),
        "both members took a share: {per_member:?}"
    );
    // The plain subscriber: every message once.
    let mut plain_seen = std::collections::BTreeSet::new();
    while plain_seen.len() < wanted.len() {
        let (_, payload) = next(&mut plain).await;
        if payload != "probe" {
            assert!(plain_seen.insert(payload.clone()), "{payload} twice");
        }
    }
}
