//! Sessions across tern nodes on a real NATS server: a client id is connected on one node
//! at a time, whichever node the client connects to; a CONNECT on another node takes the
//! session over (the old connection gets DISCONNECT 0x8E); and a node stopped (SIGSTOP)
//! past its lease neither delivers nor writes for the sessions taken from it once it runs
//! again.

use std::time::Duration;

use tern_codec::{Packet, Protocol, QoS, ReasonCode};
use tern_conformance::chat::{self, device, login, publish, subscribe_all, sync_request};
use tern_conformance::nats::{join, NatsServer};
use tern_conformance::{granted, Broker, RawClient};

const BROKER: &str = env!("CARGO_BIN_EXE_tern-test-broker");

/// A short lease, so that a stopped node is counted gone within the test's patience.
const NODE_TTL_MS: u64 = 1_500;

async fn open(
    broker: &Broker,
    protocol: Protocol,
    client_id: &str,
    user: &str,
) -> (RawClient, ReasonCode) {
    let (client, ack) =
        RawClient::open(broker.addr, protocol, client_id, true, login(user, None)).await;
    (client, ack.code)
}

async fn ping(client: &mut RawClient, what: &str) {
    client.send(Packet::PingReq).await;
    match client.recv().await {
        Some(Packet::PingResp) => {}
        other => panic!("{what}: expected PINGRESP, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_on_another_node_takes_the_session_over_for_both_protocols() {
    let nats = NatsServer::start().await;
    let (one, two) = (nats.node("n1").await, nats.node("n2").await);

    let (mut first, code) = open(&one, Protocol::V5, "phone", "alice").await;
    assert_eq!(code, ReasonCode::Success);
    let (mut second, code) = open(&two, Protocol::V5, "phone", "alice").await;
    assert_eq!(code, ReasonCode::Success, "taken over from node 1");
    first
        .expect_disconnect(&[ReasonCode::SessionTakenOver], "the connection on node 1")
        .await;
    ping(&mut second, "the connection on node 2").await;

    // Back to node 1, in MQTT 3.1.1 (no DISCONNECT to send: the socket closes).
    let (mut third, code) = open(&one, Protocol::V311, "phone", "alice").await;
    assert_eq!(code, ReasonCode::Success);
    second
        .expect_disconnect(&[ReasonCode::SessionTakenOver], "the connection on node 2")
        .await;
    let (mut fourth, code) = open(&two, Protocol::V311, "phone", "alice").await;
    assert_eq!(code, ReasonCode::Success);
    third.expect_closed("the 3.1.1 connection on node 1").await;
    ping(&mut fourth, "the connection on node 2").await;

    // A client id connected as one user is not another user's, on any node.
    for node in [&one, &two] {
        let (_, code) = open(node, Protocol::V5, "phone", "mallory").await;
        assert_eq!(code, ReasonCode::NotAuthorized);
    }
    ping(&mut fourth, "the owner's connection, after the refusals").await;

    // Once it is gone, the client id is free again.
    fourth.disconnect().await;
    let mut attempts = 0;
    loop {
        let (mut client, code) = open(&one, Protocol::V5, "phone", "mallory").await;
        if code == ReasonCode::Success {
            ping(&mut client, "the new owner").await;
            break;
        }
        assert_eq!(code, ReasonCode::NotAuthorized);
        attempts += 1;
        assert!(attempts < 200, "the registry never let the client id go");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connections of one client id racing on two nodes: every CONNECT is accepted, each
/// takes the session from the one before, and one connection is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_connects_on_two_nodes_leave_one_connection() {
    const CONNECTS: usize = 12;
    let nats = NatsServer::start().await;
    let nodes = [nats.node("n1").await, nats.node("n2").await];
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let connects = (0..CONNECTS).map(|i| {
        let addr = addrs[i % 2];
        tokio::spawn(async move {
            let (client, ack) =
                RawClient::open(addr, Protocol::V5, "tablet", true, login("bob", None)).await;
            assert_eq!(ack.code, ReasonCode::Success, "connect {i}");
            client
        })
    });
    let clients = futures_util::future::join_all(connects).await;
    // Every takeover closed its predecessor before its own CONNACK; the one left open
    // answers a ping, the others were told 0x8E.
    let outcomes = clients.into_iter().map(|client| async move {
        let mut client = client.expect("connect task");
        let _ = client.try_send(Packet::PingReq).await;
        loop {
            match client.recv_within(Duration::from_secs(3)).await {
                Ok(Some(Packet::PingResp)) => continue,
                Ok(Some(Packet::Disconnect(d))) => {
                    assert_eq!(d.reason, ReasonCode::SessionTakenOver);
                    return false;
                }
                Ok(None) => return false,
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                // Quiet for 3 s after its ping: still connected.
                Err(()) => return true,
            }
        }
    });
    let open = futures_util::future::join_all(outcomes)
        .await
        .into_iter()
        .filter(|open| *open)
        .count();
    assert_eq!(open, 1, "connections of one client id left open");
}

/// `im.max_devices_per_user` counts a user's devices on every node: the newest connect
/// closes the oldest device wherever it is (MQTT 5: DISCONNECT 0x98).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_limit_holds_across_nodes() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let node = |name: &'static str| {
        let url = url.clone();
        Broker::start_with(move |c| {
            join(c, name, &url);
            c.im.max_devices_per_user = 2;
        })
    };
    let (one, two) = (node("n1").await, node("n2").await);
    let (mut phone, _) = open_ok(&one, "phone").await;
    let (mut tablet, _) = open_ok(&two, "tablet").await;
    let (mut laptop, _) = open_ok(&two, "laptop").await;
    phone
        .expect_disconnect(&[ReasonCode::AdministrativeAction], "the oldest, on node 1")
        .await;
    ping(&mut tablet, "the tablet").await;
    ping(&mut laptop, "the laptop").await;
    // The phone again, on node 1: now the tablet on node 2 is the oldest.
    let (mut phone, _) = open_ok(&one, "phone").await;
    tablet
        .expect_disconnect(&[ReasonCode::AdministrativeAction], "the oldest, on node 2")
        .await;
    ping(&mut laptop, "the laptop").await;
    ping(&mut phone, "the phone").await;
}

async fn open_ok(broker: &Broker, client_id: &str) -> (RawClient, ReasonCode) {
    let (client, code) = open(broker, Protocol::V5, client_id, "carol").await;
    assert_eq!(code, ReasonCode::Success, "{client_id}");
    (client, code)
}

/// Node A is stopped while Bob's phone is connected to it. The phone reconnects to node
/// B, which takes the session over once A's lease is gone; a DM sent meanwhile reaches
/// the phone there. When A runs again, it neither delivers that DM to the connection it
/// still has nor appends what the phone wrote to it while it was stopped, and it closes
/// the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_past_its_lease_neither_delivers_nor_writes_for_lost_sessions() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = nats
        .process_and_local_node(BROKER, NODE_TTL_MS, dir.path())
        .await;

    let (mut old_phone, ack) =
        RawClient::open_ok(a.addr, Protocol::V5, "bob-phone", true, login("bob", None)).await;
    assert_eq!(ack.code, ReasonCode::Success);
    assert_eq!(
        subscribe_all(&mut old_phone, &["inbox/bob/#"]).await,
        [granted(QoS::AtLeastOnce)]
    );
    let mut alice = device(&b, "alice", "alice-phone").await;
    assert_eq!(
        subscribe_all(&mut alice, &["inbox/alice/#"]).await,
        [granted(QoS::AtLeastOnce)]
    );
    chat::until_delivered(&mut alice, "bob", &mut old_phone).await;

    signal(a.pid(), "-STOP");
    // Written to node A while it is stopped: it must never be stored.
    let mut stale = tern_conformance::publish_packet(
        "dm/alice",
        QoS::AtLeastOnce,
        7,
        bytes::Bytes::from_static(b"written to a stopped node"),
    );
    stale.properties.user_properties = vec![("msgid".into(), "stale-1".into())];
    old_phone.send(Packet::Publish(stale)).await;

    let started = std::time::Instant::now();
    let mut new_phone = device(&b, "bob", "bob-phone").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(NODE_TTL_MS / 2),
        "taken over from a stopped node after {waited:?}, before its lease could end"
    );
    assert_eq!(
        subscribe_all(&mut new_phone, &["inbox/bob/#"]).await,
        [granted(QoS::AtLeastOnce)]
    );
    let probe = chat::until_delivered(&mut alice, "bob", &mut new_phone).await;
    assert_eq!(&probe.payload[..], b"probe");
    assert_eq!(
        publish(&mut alice, 100, "dm/bob", "after the takeover", &[]).await,
        ReasonCode::Success
    );
    let got = new_phone.expect_publish("the DM on node B").await;
    assert_eq!(&got.payload[..], b"after the takeover");

    signal(a.pid(), "-CONT");
    loop {
        match old_phone.recv_within(Duration::from_secs(15)).await {
            Ok(Some(Packet::Publish(p))) => panic!(
                "node A delivered {:?} after losing the session",
                String::from_utf8_lossy(&p.payload)
            ),
            Ok(Some(Packet::PubAck(ack))) => {
                panic!("node A acknowledged a publish it could not have stored: {ack:?}")
            }
            Ok(Some(Packet::Disconnect(d))) => assert!(
                matches!(
                    d.reason,
                    ReasonCode::UseAnotherServer | ReasonCode::SessionTakenOver
                ),
                "{d:?}"
            ),
            Ok(Some(other)) => panic!("unexpected {other:?} from node A"),
            Ok(None) => break,
            Err(()) => panic!("node A kept the connection open after it ran again"),
        }
    }

    // Alice's log has the messages sent after A ran again, and not what A was given while
    // stopped.
    assert_eq!(
        publish(
            &mut new_phone,
            5,
            "dm/alice",
            "barrier",
            &[("msgid", "b-1")]
        )
        .await,
        ReasonCode::Success
    );
    sync_request(&mut alice, "").await;
    let mut replayed = Vec::new();
    loop {
        let p = alice.expect_publish("alice's log").await;
        if &*p.topic == "inbox/alice/sync" {
            break;
        }
        replayed.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    assert!(replayed.iter().any(|p| p == "barrier"), "{replayed:?}");
    assert!(
        !replayed.iter().any(|p| p == "written to a stopped node"),
        "node A wrote for a session it had lost: {replayed:?}"
    );
    a.kill().await;
}

fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid}: {status}");
}

/// A node stopped cleanly gives its lease up: its clients connect to another node at once
/// instead of waiting for the lease (10 s by default) to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_cleanly_lets_its_clients_connect_elsewhere_at_once() {
    let nats = NatsServer::start().await;
    let (one, two) = (nats.node("n1").await, nats.node("n2").await);
    assert_eq!(two.config.cluster.node_ttl_ms, 10_000, "the default lease");
    let (mut phone, code) = open(&one, Protocol::V5, "phone", "dana").await;
    assert_eq!(code, ReasonCode::Success);
    let stopping = tokio::spawn(one.stop());
    phone
        .expect_disconnect(&[ReasonCode::ServerShuttingDown], "node 1 stopping")
        .await;
    stopping.await.expect("node 1 stopped");
    let started = std::time::Instant::now();
    let (mut phone, code) = open(&two, Protocol::V5, "phone", "dana").await;
    assert_eq!(code, ReasonCode::Success);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the connect waited {waited:?}, as if node 1 still held its lease"
    );
    ping(&mut phone, "the phone on node 2").await;
}
