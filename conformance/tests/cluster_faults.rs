//! Faults in a cluster, each checked by what survives it: a tern node killed (SIGKILL) in
//! the middle of a conversation, the NATS server leading the inbox stream killed, and two
//! of three NATS servers down. After each, every acknowledged message is in its
//! recipient's log exactly once, with gap-free seqs; nothing is acknowledged that the
//! cluster could not store.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::{ByteString, Packet, Protocol, QoS, ReasonCode};
use tern_conformance::chat::{device, login, prop, sync_request};
use tern_conformance::nats::{join_all, NatsCluster, NatsServer};
use tern_conformance::{publish_packet, Broker, RawClient};

const BROKER: &str = env!("CARGO_BIN_EXE_tern-test-broker");

/// A short lease, so that a dead node's sessions are taken over within the test's patience.
const NODE_TTL_MS: u64 = 1_500;

/// How a DM publish ended.
enum Sent {
    Stored,
    /// A PUBACK with this reason.
    Refused(ReasonCode),
    /// The connection closed (or stayed silent) before a PUBACK.
    Lost,
}

/// Publishes one DM (QoS 1, `msgid`) and reads until its PUBACK.
async fn send(client: &mut RawClient, packet_id: u16, to: &str, payload: &str) -> Sent {
    let mut p = publish_packet(
        &format!("dm/{to}"),
        QoS::AtLeastOnce,
        packet_id,
        Bytes::copy_from_slice(payload.as_bytes()),
    );
    p.properties.user_properties = vec![(ByteString::from("msgid"), ByteString::from(payload))];
    if client.try_send(Packet::Publish(p)).await.is_err() {
        return Sent::Lost;
    }
    loop {
        match client.recv_within(Duration::from_secs(30)).await {
            Ok(Some(Packet::PubAck(ack))) if ack.packet_id == packet_id => {
                return match ack.reason {
                    ReasonCode::Success => Sent::Stored,
                    other => Sent::Refused(other),
                }
            }
            Ok(Some(Packet::Publish(p))) => client.ack(&p).await,
            Ok(Some(_)) => {}
            Ok(None) | Err(()) => return Sent::Lost,
        }
    }
}

/// A sender that resends each DM with its message id until it is acknowledged, connecting
/// again (to the next of `addrs`) whenever its connection is lost.
struct Sender {
    addrs: Vec<std::net::SocketAddr>,
    client_id: &'static str,
    user: &'static str,
    client: Option<RawClient>,
    next_addr: usize,
    resends: usize,
}

impl Sender {
    fn new(
        addrs: Vec<std::net::SocketAddr>,
        user: &'static str,
        client_id: &'static str,
    ) -> Sender {
        Sender {
            addrs,
            client_id,
            user,
            client: None,
            next_addr: 0,
            resends: 0,
        }
    }

    async fn connected(&mut self) -> &mut RawClient {
        while self.client.is_none() {
            let addr = self.addrs[self.next_addr % self.addrs.len()];
            let (client, ack) = RawClient::open(
                addr,
                Protocol::V5,
                self.client_id,
                true,
                login(self.user, None),
            )
            .await;
            if ack.code == ReasonCode::Success {
                self.client = Some(client);
            } else {
                self.next_addr += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.client.as_mut().expect("connected above")
    }

    /// Sends `payload` (also its message id) until it is acknowledged.
    async fn deliver(&mut self, packet_id: u16, to: &str, payload: &str) {
        loop {
            let client = self.connected().await;
            match send(client, packet_id, to, payload).await {
                Sent::Stored => return,
                Sent::Refused(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Sent::Lost => {
                    self.client = None;
                    self.next_addr += 1;
                }
            }
            self.resends += 1;
        }
    }
}

/// Reads `user`'s whole log through `$sync` on `node`: (payload, seq) in log order.
async fn read_log(node: &Broker, user: &'static str, client_id: &str) -> Vec<(String, u64)> {
    let mut reader = device(node, user, client_id).await;
    let mut log = Vec::new();
    let mut after = String::new();
    loop {
        sync_request(&mut reader, &after).await;
        loop {
            let p = reader.expect_publish("a log entry").await;
            if *p.topic == format!("inbox/{user}/sync") {
                let end: serde_json::Value =
                    serde_json::from_slice(&p.payload).expect("the end marker is JSON");
                if end["more"] == true {
                    after = end["last"].to_string();
                    break;
                }
                return log;
            }
            let seq = prop(&p, "seq").and_then(|s| s.parse().ok()).expect("a seq");
            log.push((String::from_utf8_lossy(&p.payload).into_owned(), seq));
        }
    }
}

/// Every acknowledged message once, and seqs 0, 1, 2, ... without a gap.
fn assert_complete(log: &[(String, u64)], acknowledged: &[String]) {
    for (i, (_, seq)) in log.iter().enumerate() {
        assert_eq!(*seq, i as u64, "seqs gap-free from 0: {log:?}");
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (payload, _) in log {
        *counts.entry(payload).or_default() += 1;
    }
    for message in acknowledged {
        assert_eq!(
            counts.get(message.as_str()),
            Some(&1),
            "acknowledged {message} is in the log once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tern_node_killed_mid_conversation_loses_nothing_acknowledged() {
    const MESSAGES: u16 = 120;
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = nats
        .process_and_local_node(BROKER, NODE_TTL_MS, dir.path())
        .await;
    let mut alice = Sender::new(vec![a.addr, b.addr], "alice", "alice-phone");
    let mut acknowledged = Vec::new();
    let mut a = Some(a);
    for i in 0..MESSAGES {
        if i == MESSAGES / 3 {
            // Mid-conversation, with the next DM already on its way to node A.
            let payload = format!("m{i}");
            let client = alice.connected().await;
            let mut p = publish_packet(
                "dm/bob",
                QoS::AtLeastOnce,
                i + 1,
                Bytes::copy_from_slice(payload.as_bytes()),
            );
            p.properties.user_properties = vec![(
                ByteString::from("msgid"),
                ByteString::from(payload.as_str()),
            )];
            client.send(Packet::Publish(p)).await;
            if let Some(node) = a.take() {
                node.kill().await;
            }
        }
        let payload = format!("m{i}");
        alice.deliver(i + 1, "bob", &payload).await;
        acknowledged.push(payload);
    }
    assert!(alice.resends > 0, "the kill interrupted the conversation");
    let log = read_log(&b, "bob", "bob-phone").await;
    assert_complete(&log, &acknowledged);
    assert_eq!(
        log.len(),
        acknowledged.len(),
        "nothing stored twice: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_go_on_when_the_nats_server_leading_the_inbox_stream_is_killed() {
    const MESSAGES: u16 = 150;
    let mut nats = NatsCluster::start(3).await;
    let urls = nats.urls();
    let node = |name: &'static str| {
        let urls = urls.clone();
        Broker::start_with(move |c| {
            join_all(c, name, &urls);
            c.cluster.shards = 1;
        })
    };
    let (one, two) = (node("n1").await, node("n2").await);
    let mut alice = Sender::new(vec![one.addr, two.addr], "alice", "alice-phone");
    let mut acknowledged = Vec::new();
    for i in 0..MESSAGES {
        if i == MESSAGES / 3 {
            let leader = nats
                .stream_leader("TERN_INBOX_0")
                .await
                .expect("the inbox stream has a leader");
            nats.kill(leader).await;
            // Back once the conversation has gone on without it for a while.
            let payload = format!("m{i}");
            alice.deliver(i + 1, "bob", &payload).await;
            acknowledged.push(payload);
            nats.restart(leader).await;
            continue;
        }
        let payload = format!("m{i}");
        alice.deliver(i + 1, "bob", &payload).await;
        acknowledged.push(payload);
    }
    let log = read_log(&two, "bob", "bob-phone").await;
    assert_complete(&log, &acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_nats_servers_down_nothing_is_acknowledged_until_they_return() {
    let mut nats = NatsCluster::start(3).await;
    let urls = nats.urls();
    let node = Broker::start_with(|c| {
        join_all(c, "n1", &urls);
        c.cluster.shards = 1;
        c.cluster.node_ttl_ms = NODE_TTL_MS;
        c.cluster.append_timeout_ms = 1_000;
    })
    .await;
    let mut alice = device(&node, "alice", "alice-phone").await;
    let mut dave = device(&node, "dave", "dave-sensor").await;
    assert!(matches!(
        send(&mut alice, 1, "bob", "before").await,
        Sent::Stored
    ));

    nats.kill(1).await;
    nats.kill(2).await;
    // A plain QoS 1 message cannot be kept by the cluster either: refused, not
    // acknowledged.
    dave.send(Packet::Publish(publish_packet(
        "sensors/dave",
        QoS::AtLeastOnce,
        5,
        Bytes::from_static(b"during"),
    )))
    .await;
    match dave.recv_within(Duration::from_secs(10)).await {
        Ok(Some(Packet::PubAck(ack))) => {
            // Not stored: 0x83, as for a write the node's own storage refused.
            assert_eq!(
                ack.reason,
                ReasonCode::ImplementationSpecificError,
                "{ack:?}"
            )
        }
        // Or the node, unable to renew its lease either, closed the connection.
        Ok(None) => {}
        Ok(Some(Packet::Disconnect(d))) => assert_eq!(d.reason, ReasonCode::UseAnotherServer),
        other => panic!("expected a refusal of the plain QoS 1 message, got {other:?}"),
    }
    // A DM now is refused (0x80), or its connection closed: never acknowledged.
    match send(&mut alice, 2, "bob", "during").await {
        Sent::Stored => panic!("a DM was acknowledged with two of three NATS servers down"),
        Sent::Refused(code) => assert_eq!(code, ReasonCode::UnspecifiedError),
        Sent::Lost => {}
    }
    // Connects are refused with a reason, in both protocols.
    for (protocol, client_id) in [(Protocol::V5, "carol-5"), (Protocol::V311, "carol-3")] {
        let (_, ack) =
            RawClient::open(node.addr, protocol, client_id, false, login("carol", None)).await;
        assert_eq!(ack.code, ReasonCode::ServerUnavailable, "{protocol:?}");
    }

    nats.restart(1).await;
    nats.restart(2).await;
    // It recovers by itself.
    let mut sender = Sender::new(vec![node.addr], "alice", "alice-tablet");
    sender.deliver(3, "bob", "after").await;
    let log = read_log(&node, "bob", "bob-phone").await;
    assert_complete(&log, &["before".to_string(), "after".to_string()]);
}

/// A node started while NATS has no JetStream quorum (two of three servers down) takes no
/// client, keeps trying, and serves once the servers are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_without_a_nats_quorum_serves_once_there_is_one() {
    let mut nats = NatsCluster::start(3).await;
    nats.kill(1).await;
    nats.kill(2).await;
    let urls = nats.urls();
    let starting = tokio::spawn(async move {
        Broker::start_with(|c| {
            join_all(c, "n1", &urls);
            c.cluster.shards = 1;
        })
        .await
    });
    // Nothing to wait for: it must simply not be ready.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !starting.is_finished(),
        "the node started (or gave up) without a JetStream quorum"
    );
    nats.restart(1).await;
    nats.restart(2).await;
    let node = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("the node serves within 60 s of the quorum's return")
        .expect("the node's start");
    let mut alice = device(&node, "alice", "alice-phone").await;
    assert!(matches!(
        send(&mut alice, 1, "bob", "hello").await,
        Sent::Stored
    ));
}
