//! Chat across tern nodes on a real NATS server: users' inbox logs live in JetStream, so a
//! device may connect to any node. Direct messages sent on different nodes reach every
//! device of the recipient wherever it is, numbered once, in order; a resend with the same
//! message id on another node is stored once; `$sync` reads the log on any node.

use std::collections::HashMap;

use tern_codec::{Protocol, QoS, ReasonCode};
use tern_conformance::chat::{
    self, device, login, next, prop, publish, row, subscribe_all, sync_request,
};
use tern_conformance::nats::NatsServer;
use tern_conformance::{granted, RawClient};

/// What a device received: (payload, from, seq).
type Received = Vec<(String, String, u64)>;

/// Probes until `device` receives Bob's DMs live (see `chat::until_delivered`).
async fn until_delivered(sender: &mut RawClient, device: &mut RawClient, received: &mut Received) {
    let probe = chat::until_delivered(sender, "bob", device).await;
    received.push(entry(&probe));
}

fn entry(p: &tern_codec::Publish) -> (String, String, u64) {
    let seq = prop(p, "seq").and_then(|s| s.parse().ok()).expect("a seq");
    (
        String::from_utf8_lossy(&p.payload).into_owned(),
        prop(p, "from").unwrap_or_default(),
        seq,
    )
}

/// `count` DMs to bob, `{tag}{i}`, each acknowledged before the next.
async fn send_dms(mut sender: RawClient, tag: &str, count: u16) -> RawClient {
    for i in 0..count {
        let msgid = format!("{tag}-{i}");
        let reason = publish(
            &mut sender,
            i + 1,
            "dm/bob",
            &format!("{tag}{i}"),
            &[("msgid", &msgid)],
        )
        .await;
        assert_eq!(reason, ReasonCode::Success, "{tag}{i} acknowledged");
    }
    sender
}

/// Reads until the last message of each sender (`ends`) has arrived.
async fn read_until(device: &mut RawClient, ends: &[&str], received: &mut Received) {
    let mut left: Vec<&str> = ends.to_vec();
    while !left.is_empty() {
        let p = device.expect_publish("an inbox entry").await;
        let got = entry(&p);
        left.retain(|end| *end != got.0);
        received.push(got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_sent_on_two_nodes_reach_both_devices_on_two_others_numbered_once_in_order() {
    const EACH: u16 = 100;
    let nats = NatsServer::start().await;
    let (n1, n2, n3) = (
        nats.node("n1").await,
        nats.node("n2").await,
        nats.node("n3").await,
    );
    let mut phone = device(&n2, "bob", "bob-phone").await;
    let mut laptop = device(&n3, "bob", "bob-laptop").await;
    let mut alice = device(&n1, "alice", "alice-phone").await;
    let carol = device(&n3, "carol", "carol-phone").await;
    let mut received: [Received; 2] = Default::default();
    for (d, got) in [&mut phone, &mut laptop].into_iter().zip(&mut received) {
        assert_eq!(
            subscribe_all(d, &["inbox/bob/#"]).await,
            [granted(QoS::AtLeastOnce)]
        );
        until_delivered(&mut alice, d, got).await;
    }
    // Alice (node 1) and Carol (node 3) write to Bob's log at the same time.
    let (_alice, _carol) = tokio::join!(send_dms(alice, "a", EACH), send_dms(carol, "c", EACH));
    let last_a = format!("a{}", EACH - 1);
    let last_c = format!("c{}", EACH - 1);
    for (d, got) in [&mut phone, &mut laptop].into_iter().zip(&mut received) {
        read_until(d, &[&last_a, &last_c], got).await;
        // Every entry once, seqs consecutive, each sender's messages in its order.
        for pair in got.windows(2) {
            assert_eq!(pair[1].2, pair[0].2 + 1, "gap-free seqs: {pair:?}");
        }
        let mut per_sender: HashMap<&str, Vec<&str>> = HashMap::new();
        for (payload, from, _) in got.iter().filter(|r| r.0 != "probe") {
            per_sender.entry(from).or_default().push(payload);
        }
        for (from, tag) in [("alice", "a"), ("carol", "c")] {
            let want: Vec<String> = (0..EACH).map(|i| format!("{tag}{i}")).collect();
            assert_eq!(per_sender[from], want, "{from}'s messages, once, in order");
        }
    }
    // Both devices saw the same numbering.
    let tail = |got: &Received| {
        got.iter()
            .rev()
            .take(2 * EACH as usize)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(tail(&received[0]), tail(&received[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_on_another_node_is_stored_once_and_any_node_replays_the_log() {
    let nats = NatsServer::start().await;
    let (n1, n2, n3) = (
        nats.node("n1").await,
        nats.node("n2").await,
        nats.node("n3").await,
    );
    let mut first = device(&n1, "alice", "alice-phone").await;
    let mut second = device(&n2, "alice", "alice-laptop").await;
    let m1 = [("msgid", "m-1")];
    assert_eq!(
        publish(&mut first, 1, "dm/bob", "one", &m1).await,
        ReasonCode::Success
    );
    // The same message id again, from another node (a resend after a lost PUBACK).
    assert_eq!(
        publish(&mut second, 1, "dm/bob", "one again", &m1).await,
        ReasonCode::Success
    );
    let m2 = [("msgid", "m-2")];
    assert_eq!(
        publish(&mut second, 2, "dm/bob", "two", &m2).await,
        ReasonCode::Success
    );

    // Bob was never connected: his first device, on a third node, catches up.
    let mut bob = device(&n3, "bob", "bob-phone").await;
    assert_eq!(
        subscribe_all(&mut bob, &["inbox/bob/#"]).await,
        [granted(QoS::AtLeastOnce)]
    );
    sync_request(&mut bob, "").await;
    assert_eq!(
        next(&mut bob, "seq 0").await,
        row("inbox/bob/dm/alice", "one", "alice", 0)
    );
    assert_eq!(
        next(&mut bob, "seq 1").await,
        row("inbox/bob/dm/alice", "two", "alice", 1)
    );
    let end = bob.expect_publish("the end marker").await;
    assert_eq!(&*end.topic, "inbox/bob/sync");
    assert_eq!(
        &end.payload[..],
        br#"{"after":null,"last":1,"next":2,"more":false}"#
    );
    // Read positions, recall and settings are single-node features for now: a cluster
    // node says so (0x83) rather than keep a position only it would know.
    for (topic, payload) in [
        ("$read/dm/alice", "1"),
        ("$recall", "1"),
        ("$settings", "{}"),
    ] {
        assert_eq!(
            publish(&mut bob, 7, topic, payload, &[]).await,
            ReasonCode::ImplementationSpecificError,
            "{topic}"
        );
    }
    sync_request(&mut bob, "0").await;
    assert_eq!(
        next(&mut bob, "seq 1 again").await,
        row("inbox/bob/dm/alice", "two", "alice", 1)
    );
    let end = bob.expect_publish("the end marker").await;
    assert_eq!(
        &end.payload[..],
        br#"{"after":0,"last":1,"next":2,"more":false}"#
    );

    // The sender's own log holds what it sent, readable from its other node.
    let (mut other, _) = RawClient::open_ok(
        n1.addr,
        Protocol::V5,
        "alice-tablet",
        true,
        login("alice", None),
    )
    .await;
    subscribe_all(&mut other, &["inbox/alice/#"]).await;
    sync_request(&mut other, "").await;
    assert_eq!(
        next(&mut other, "sent 0").await,
        row("inbox/alice/sent/bob", "one", "alice", 0)
    );
    assert_eq!(
        next(&mut other, "sent 1").await,
        row("inbox/alice/sent/bob", "two", "alice", 1)
    );
}
