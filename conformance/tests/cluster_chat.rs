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

/// `count` DMs to bob, `dm1` .. (msgids `{tag}-{i}`), all sent before the first PUBACK
/// is awaited; every one acknowledged.
async fn send_dms_at_once(sender: &mut RawClient, tag: &str, count: u16) {
    for i in 1..=count {
        let mut p = tern_conformance::publish_packet(
            "dm/bob",
            QoS::AtLeastOnce,
            i,
            bytes::Bytes::from(format!("dm{i}")),
        );
        p.properties.user_properties = vec![("msgid".into(), format!("{tag}-{i}").into())];
        sender.send(tern_codec::Packet::Publish(p)).await;
    }
    for _ in 1..=count {
        match sender.recv().await {
            Some(tern_codec::Packet::PubAck(ack)) => {
                assert_eq!(ack.reason, ReasonCode::Success, "DM {}", ack.packet_id)
            }
            other => panic!("expected PUBACKs, got {other:?}"),
        }
    }
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

/// A node that knows a log but not what another node appended since reads only the new
/// messages before its next append: a resend of what the other node stored is still
/// recognised there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_another_nodes_append_is_stored_once() {
    let nats = NatsServer::start().await;
    let (n1, n2) = (nats.node("n1").await, nats.node("n2").await);
    let mut first = device(&n1, "alice", "alice-phone").await;
    let mut second = device(&n2, "alice", "alice-laptop").await;
    // Each node appends to alice's and bob's logs in turn, so each knows them, and
    // finds them changed by the other before its next append.
    for (on_first, id, text) in [
        (true, "m-1", "one"),
        (false, "m-2", "two"),
        (true, "m-3", "three"),
        (false, "m-3", "three again"),
        (true, "m-2", "two again"),
    ] {
        let client = if on_first { &mut first } else { &mut second };
        assert_eq!(
            publish(client, 1, "dm/bob", text, &[("msgid", id)]).await,
            ReasonCode::Success,
            "{text}"
        );
    }

    let mut bob = device(&n1, "bob", "bob-phone").await;
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    sync_request(&mut bob, "").await;
    for (seq, text) in [(0, "one"), (1, "two"), (2, "three")] {
        assert_eq!(
            next(&mut bob, text).await,
            row("inbox/bob/dm/alice", text, "alice", seq)
        );
    }
    let end = bob.expect_publish("the end marker").await;
    assert_eq!(
        &end.payload[..],
        br#"{"after":null,"last":2,"next":3,"more":false}"#
    );
}

/// DMs a sender pipelines (no PUBACK awaited between them) queue while the append before
/// them is in flight and go to the logs together: fewer JetStream messages than entries,
/// each entry still numbered once, in order, live on the recipient's node and in `$sync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_dms_share_appends_and_arrive_numbered_in_order() {
    // Within the broker's Receive Maximum.
    const DMS: u16 = 16;
    let nats = NatsServer::start().await;
    let (n1, n2) = (nats.node("n1").await, nats.node("n2").await);
    let mut alice = device(&n1, "alice", "alice-phone").await;
    let mut bob = device(&n2, "bob", "bob-phone").await;
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    let mut received = Received::new();
    until_delivered(&mut alice, &mut bob, &mut received).await;
    let first_seq = received.last().expect("the probe").2 + 1;
    let messages_before = inbox_messages(&nats).await;

    send_dms_at_once(&mut alice, "pipelined", DMS).await;
    for (seq, i) in (first_seq..).zip(1..=DMS) {
        let text = format!("dm{i}");
        assert_eq!(
            next(&mut bob, &text).await,
            row("inbox/bob/dm/alice", &text, "alice", seq)
        );
    }

    // Two entries per DM (bob's log, alice's sent log), in fewer messages.
    let appends = inbox_messages(&nats).await - messages_before;
    assert!(
        appends < 2 * u64::from(DMS),
        "{appends} appends for {} entries",
        2 * DMS
    );
    // The node counts them so (probes included).
    let metrics = n1.metrics().await;
    let counted = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} in the metrics"))
    };
    let (appends, entries) = (
        counted("tern_cluster_inbox_appends_total"),
        counted("tern_cluster_inbox_entries_total"),
    );
    assert!(
        entries >= 2 * u64::from(DMS) && appends < entries,
        "{appends} appends counted for {entries} entries"
    );
    // Each append's time to its acknowledgement, once.
    assert_eq!(counted("tern_cluster_inbox_append_seconds_count"), appends);
    let seconds = metrics
        .lines()
        .find(|line| line.starts_with("tern_cluster_inbox_append_seconds_sum"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .expect("the appends' time in the metrics");
    assert!(seconds > 0.0, "appends took {seconds} s");

    sync_request(&mut bob, &(first_seq - 1).to_string()).await;
    for (seq, i) in (first_seq..).zip(1..=DMS) {
        let text = format!("dm{i}");
        assert_eq!(
            next(&mut bob, &text).await,
            row("inbox/bob/dm/alice", &text, "alice", seq)
        );
    }
}

/// `cluster.append_linger_us`: after an append to a log, the log's next entries wait for
/// more to join them, so DMs sent right after a PUBACK share one append per log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_follow_an_append_wait_and_share_the_next() {
    const FOLLOWING: u16 = 8;
    let nats = NatsServer::start().await;
    let url = nats.url();
    let n1 = tern_conformance::Broker::start_with(|c| {
        tern_conformance::nats::join(c, "n1", &url);
        // Long enough for the DMs below to come in, however busy the machine.
        c.cluster.append_linger_us = 100_000;
    })
    .await;
    let mut alice = device(&n1, "alice", "alice-phone").await;
    let before = inbox_messages(&nats).await;
    assert_eq!(
        publish(&mut alice, 1, "dm/bob", "first", &[("msgid", "first")]).await,
        ReasonCode::Success
    );
    // Sent at once after the first one's PUBACK: without the wait, the first of them
    // would go alone and the rest in a third append per log.
    send_dms_at_once(&mut alice, "following", FOLLOWING).await;
    // Alice's sent log and bob's log: the first DM's append, then one for the rest.
    assert_eq!(inbox_messages(&nats).await - before, 4);

    let mut bob = device(&n1, "bob", "bob-phone").await;
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    sync_request(&mut bob, "").await;
    assert_eq!(
        next(&mut bob, "first").await,
        row("inbox/bob/dm/alice", "first", "alice", 0)
    );
    for i in 1..=FOLLOWING {
        let text = format!("dm{i}");
        assert_eq!(
            next(&mut bob, &text).await,
            row("inbox/bob/dm/alice", &text, "alice", u64::from(i))
        );
    }
}

/// Messages (appends) the inbox streams hold, over the 8 shards.
async fn inbox_messages(nats: &NatsServer) -> u64 {
    let mut total = 0;
    for shard in 0..8 {
        total += nats.stream_messages(&format!("TERN_INBOX_{shard}")).await;
    }
    total
}

/// A node on `nats` that trims the inbox logs every second to an age of 1 s (below the
/// config's floor of 60), resends recognised for `dedup_window_secs`.
async fn trimming_node(nats: &NatsServer, dedup_window_secs: u64) -> tern_conformance::Broker {
    let url = nats.url();
    tern_conformance::Broker::start_with(|c| {
        tern_conformance::nats::join(c, "n1", &url);
        c.im.inbox_max_age_secs = 1;
        c.im.dedup_window_secs = dedup_window_secs;
        c.cluster.inbox_trim_secs = 1;
    })
    .await
}

/// `im.inbox_max_age_secs` holds in a cluster: entries older than it leave the logs, and
/// a log whose entries all left keeps its numbering (a marker), so the next DM gets the
/// next seq, not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_older_than_the_max_age_leave_the_logs_and_numbering_goes_on() {
    let nats = NatsServer::start().await;
    // The logs keep entries for the dedupe window at least.
    let n1 = trimming_node(&nats, 1).await;
    let mut alice = device(&n1, "alice", "alice-phone").await;
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        let id = format!("m-{i}");
        assert_eq!(
            publish(&mut alice, 1, "dm/bob", text, &[("msgid", &id)]).await,
            ReasonCode::Success
        );
    }
    assert_eq!(
        inbox_messages(&nats).await,
        6,
        "three appends to each of two logs"
    );

    // Past the age, each log is down to its marker.
    tern_conformance::eventually("the logs trimmed to their markers", || async {
        inbox_messages(&nats).await == 2
    })
    .await;
    let mut bob = device(&n1, "bob", "bob-phone").await;
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    sync_request(&mut bob, "").await;
    let end = bob.expect_publish("the end marker, no entries").await;
    assert_eq!(&*end.topic, "inbox/bob/sync");
    assert_eq!(
        &end.payload[..],
        br#"{"after":null,"last":null,"next":3,"more":false}"#
    );

    assert_eq!(
        publish(&mut alice, 1, "dm/bob", "four", &[("msgid", "m-3")]).await,
        ReasonCode::Success
    );
    assert_eq!(
        next(&mut bob, "four").await,
        row("inbox/bob/dm/alice", "four", "alice", 3)
    );
}

/// In a cluster a resend is recognised by the ids the logs hold, so the trim keeps an
/// entry younger than `im.dedup_window_secs` however short `im.inbox_max_age_secs` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trim_keeps_entries_a_resend_could_repeat() {
    let nats = NatsServer::start().await;
    let n1 = trimming_node(&nats, 600).await;
    let passes = || async {
        n1.metrics()
            .await
            .lines()
            .find(|line| line.starts_with("tern_cluster_inbox_trim_passes_total"))
            .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut alice = device(&n1, "alice", "alice-phone").await;
    assert_eq!(
        publish(&mut alice, 1, "dm/bob", "once", &[("msgid", "m-1")]).await,
        ReasonCode::Success
    );
    // Passes that began once the entry was older than the age (a pass a second).
    let after = passes().await;
    tern_conformance::eventually("three more trim passes", || async {
        passes().await >= after + 3
    })
    .await;
    assert_eq!(
        publish(&mut alice, 2, "dm/bob", "once", &[("msgid", "m-1")]).await,
        ReasonCode::Success
    );
    let mut bob = device(&n1, "bob", "bob-phone").await;
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    sync_request(&mut bob, "").await;
    assert_eq!(
        next(&mut bob, "once").await,
        row("inbox/bob/dm/alice", "once", "alice", 0)
    );
    let end = bob.expect_publish("the end marker").await;
    assert_eq!(&*end.topic, "inbox/bob/sync");
    assert_eq!(
        &end.payload[..],
        br#"{"after":null,"last":0,"next":1,"more":false}"#
    );
}

/// A DM without a client `msgid` is never taken for a resend: the same text sent again is
/// a new entry (the entries carry no dedupe id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_without_a_msgid_are_each_stored() {
    let nats = NatsServer::start().await;
    let n1 = nats.node("n1").await;
    let mut alice = device(&n1, "alice", "alice-phone").await;
    for id in 1..=3 {
        assert_eq!(
            publish(&mut alice, id, "dm/bob", "again", &[]).await,
            ReasonCode::Success
        );
    }
    let mut bob = device(&n1, "bob", "bob-phone").await;
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    sync_request(&mut bob, "").await;
    for seq in 0..3 {
        assert_eq!(
            next(&mut bob, "again").await,
            row("inbox/bob/dm/alice", "again", "alice", seq)
        );
    }
}
