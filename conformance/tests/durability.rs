//! Durability of the broker process over real sockets: what it acknowledged survives a
//! SIGKILL, a clean stop (SIGTERM) keeps retained messages and persistent sessions, and
//! start-up does not wait for the backlog of queued messages to load.
//!
//! These tests run the `tern-test-broker` binary as a child process. The publishers and
//! subscribers are the harness's raw clients; a publisher sends with `try_send`, whose
//! failure is a value rather than a panic, so that it can keep an exact account of what the
//! broker acknowledged before it died.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_codec::{ConnAck, Packet, Protocol, PubResponse, QoS, ReasonCode};
use tern_conformance::{publish_packet, BrokerProcess, RawClient};
use tokio::sync::Notify;

const BROKER: &str = env!("CARGO_BIN_EXE_tern-test-broker");

// ---------------------------------------------------------------------------------------
// Raw clients: the harness's RawClient, with `try_send` where a write may fail.
// ---------------------------------------------------------------------------------------

/// Connects and completes the handshake; a persistent v5 session gets an hour of Session
/// Expiry (3.1.1 has none of its own).
async fn open(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    clean_start: bool,
) -> (RawClient, ConnAck) {
    RawClient::open_ok(addr, protocol, client_id, clean_start, |c| {
        c.keep_alive = 120;
        if protocol == Protocol::V5 && !clean_start {
            c.properties.session_expiry_interval = Some(3_600);
        }
    })
    .await
}

fn seq_payload(seq: u32) -> Bytes {
    Bytes::from(format!("{seq:08}"))
}

fn parse_seq(payload: &[u8]) -> u32 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected payload {payload:?}"))
}

// ---------------------------------------------------------------------------------------
// SIGKILL mid-stream.
// ---------------------------------------------------------------------------------------

/// Counts acknowledgements across publishers and wakes the test once `threshold` arrived.
struct AckCounter {
    count: AtomicUsize,
    threshold: usize,
    reached: Notify,
}

impl AckCounter {
    fn add(&self) {
        if self.count.fetch_add(1, Ordering::SeqCst) + 1 == self.threshold {
            self.reached.notify_one();
        }
    }
}

/// One publisher's stream of sequence-numbered messages and its exact account of what the
/// broker acknowledged. Packet id of message `seq` is `seq + 1` (no reuse).
struct Flow {
    topic: &'static str,
    qos: QoS,
    total: u32,
    next: u32,
    /// Sent, no PUBACK / PUBREC yet: packet id -> seq.
    unacked: BTreeMap<u16, u32>,
    /// QoS 2: PUBREC received, PUBCOMP not yet: packet id -> seq.
    released: BTreeMap<u16, u32>,
    /// Seqs the broker acknowledged (PUBACK / PUBREC), in order of acknowledgement.
    acked: Vec<u32>,
}

impl Flow {
    fn new(topic: &'static str, qos: QoS, total: u32) -> Flow {
        Flow {
            topic,
            qos,
            total,
            next: 0,
            unacked: BTreeMap::new(),
            released: BTreeMap::new(),
            acked: Vec::new(),
        }
    }

    fn packet_id(seq: u32) -> u16 {
        u16::try_from(seq + 1).expect("packet id fits")
    }

    fn complete(&self) -> bool {
        self.next == self.total && self.unacked.is_empty() && self.released.is_empty()
    }

    /// Publishes the remaining messages with at most `window` incomplete at a time. Returns
    /// true when every message is complete, false when the connection went away.
    async fn pump(&mut self, peer: &mut RawClient, window: usize, acks: &AckCounter) -> bool {
        loop {
            while self.unacked.len() + self.released.len() < window && self.next < self.total {
                let seq = self.next;
                let id = Self::packet_id(seq);
                // Accounted as sent before the write: once written, the broker may have it.
                self.unacked.insert(id, seq);
                self.next += 1;
                let p = publish_packet(self.topic, self.qos, id, seq_payload(seq));
                if peer.try_send(Packet::Publish(p)).await.is_err() {
                    return false;
                }
            }
            if self.complete() {
                return true;
            }
            match peer.recv().await {
                None => return false,
                Some(Packet::PubAck(ack)) if self.qos == QoS::AtLeastOnce => {
                    assert!(!ack.reason.is_error(), "PUBACK {ack:?}");
                    let seq = self.unacked.remove(&ack.packet_id).unwrap_or_else(|| {
                        panic!("{}: PUBACK for unknown id {}", self.topic, ack.packet_id)
                    });
                    self.acked.push(seq);
                    acks.add();
                }
                Some(Packet::PubRec(rec)) if self.qos == QoS::ExactlyOnce => {
                    assert!(!rec.reason.is_error(), "PUBREC {rec:?}");
                    let seq = self.unacked.remove(&rec.packet_id).unwrap_or_else(|| {
                        panic!("{}: PUBREC for unknown id {}", self.topic, rec.packet_id)
                    });
                    self.released.insert(rec.packet_id, seq);
                    self.acked.push(seq);
                    acks.add();
                    let rel = Packet::PubRel(PubResponse::new(rec.packet_id));
                    if peer.try_send(rel).await.is_err() {
                        return false;
                    }
                }
                Some(Packet::PubComp(comp)) if self.qos == QoS::ExactlyOnce => {
                    // After a crash the broker may answer 0x92 (Packet Identifier not
                    // found) to a resent PUBREL; what counts is delivery, checked later.
                    self.released.remove(&comp.packet_id).unwrap_or_else(|| {
                        panic!("{}: PUBCOMP for unknown id {}", self.topic, comp.packet_id)
                    });
                }
                Some(other) => panic!("publisher of {}: unexpected {other:?}", self.topic),
            }
        }
    }

    /// MQTT-4.4.0-1: on reconnecting with a session, re-send the unacknowledged PUBLISH
    /// packets (DUP set) and the PUBREL packets with their original packet ids, in order.
    async fn resend(&mut self, peer: &mut RawClient) {
        let mut pending: Vec<(u32, u16, bool)> = self
            .unacked
            .iter()
            .map(|(&id, &seq)| (seq, id, true))
            .chain(self.released.iter().map(|(&id, &seq)| (seq, id, false)))
            .collect();
        pending.sort_unstable();
        for (seq, id, is_publish) in pending {
            let packet = if is_publish {
                let mut p = publish_packet(self.topic, self.qos, id, seq_payload(seq));
                p.dup = true;
                Packet::Publish(p)
            } else {
                Packet::PubRel(PubResponse::new(id))
            };
            peer.try_send(packet).await.expect("resend after restart");
        }
    }
}

/// Reconnects a persistent v3.1.1 subscriber and reads its queue up to the `end` marker,
/// acknowledging everything. Returns the seqs delivered, in order; a QoS 2 PUBLISH resent
/// with DUP for a packet id still awaiting PUBREL is the same delivery and not counted.
async fn drain(addr: SocketAddr, client_id: &str) -> Vec<u32> {
    let (mut peer, ack) = open(addr, Protocol::V311, client_id, false).await;
    assert!(
        ack.session_present,
        "{client_id}: MQTT-3.2.2-2: the persistent session survives the crash (session present)"
    );
    let mut delivered = Vec::new();
    let mut awaiting_rel = HashSet::new();
    loop {
        match peer.recv().await {
            Some(Packet::Publish(p)) => {
                let redelivery = match p.qos {
                    QoS::AtMostOnce => false,
                    QoS::AtLeastOnce => {
                        peer.send(Packet::PubAck(PubResponse::new(p.packet_id)))
                            .await;
                        false
                    }
                    QoS::ExactlyOnce => {
                        let again = !awaiting_rel.insert(p.packet_id);
                        assert!(!again || p.dup, "{client_id}: id reused before PUBCOMP");
                        peer.send(Packet::PubRec(PubResponse::new(p.packet_id)))
                            .await;
                        again
                    }
                };
                if &p.payload[..] == b"end" {
                    return delivered;
                }
                if !redelivery {
                    delivered.push(parse_seq(&p.payload));
                }
            }
            Some(Packet::PubRel(rel)) => {
                awaiting_rel.remove(&rel.packet_id);
                peer.send(Packet::PubComp(PubResponse::new(rel.packet_id)))
                    .await;
            }
            None => panic!("{client_id}: connection closed before the end marker"),
            Some(other) => panic!("{client_id}: unexpected {other:?}"),
        }
    }
}

/// Seqs in `wanted` that are not in `delivered`.
fn missing(wanted: impl IntoIterator<Item = u32>, delivered: &[u32]) -> Vec<u32> {
    let got: HashSet<u32> = delivered.iter().copied().collect();
    let mut lost: Vec<u32> = wanted.into_iter().filter(|s| !got.contains(s)).collect();
    lost.sort_unstable();
    lost
}

/// The first occurrence of each seq, in delivery order.
fn first_occurrences(delivered: &[u32]) -> Vec<u32> {
    let mut seen = HashSet::new();
    delivered
        .iter()
        .copied()
        .filter(|s| seen.insert(*s))
        .collect()
}

fn is_ascending(seqs: &[u32]) -> bool {
    seqs.windows(2).all(|w| w[0] < w[1])
}

/// Two offline persistent 3.1.1 sessions (QoS 1 on `crash/q1`, QoS 2 on `crash/q2`) are
/// fed by a 3.1.1 QoS 1 publisher and a v5 QoS 2 publisher, 16 messages in flight each.
/// Half-way through, SIGKILL. After the restart on the same data directory: both sessions
/// are present; every message acknowledged (PUBACK / PUBREC) before the kill is delivered;
/// the publishers resume their sessions as MQTT-4.4.0-1 requires (resend unacknowledged
/// PUBLISH with DUP and PUBREL), after which every message is delivered, per topic in
/// ascending order, and no QoS 2 message twice (MQTT-4.3.3, exactly once across a crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_no_acknowledged_message_and_duplicates_no_qos2() {
    const TOTAL: u32 = 2_000;
    const WINDOW: usize = 16;
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(BROKER, dir.path(), &[]).await;
    let addr = broker.addr;

    for (client_id, topic, qos) in [
        ("crash-sub-q1", "crash/q1", QoS::AtLeastOnce),
        ("crash-sub-q2", "crash/q2", QoS::ExactlyOnce),
    ] {
        let (mut sub, ack) = open(addr, Protocol::V311, client_id, false).await;
        assert!(!ack.session_present);
        sub.subscribe(1, topic, qos).await;
        sub.disconnect().await;
    }

    // Half of all messages acknowledged: the kill point.
    let acks = Arc::new(AckCounter {
        count: AtomicUsize::new(0),
        threshold: TOTAL as usize,
        reached: Notify::new(),
    });
    let mut publishers = Vec::new();
    for (client_id, protocol, topic, qos) in [
        ("crash-pub-q1", Protocol::V311, "crash/q1", QoS::AtLeastOnce),
        ("crash-pub-q2", Protocol::V5, "crash/q2", QoS::ExactlyOnce),
    ] {
        let (mut peer, _) = open(addr, protocol, client_id, false).await;
        let acks = acks.clone();
        publishers.push(tokio::spawn(async move {
            let mut flow = Flow::new(topic, qos, TOTAL);
            let finished = flow.pump(&mut peer, WINDOW, &acks).await;
            (client_id, protocol, flow, finished)
        }));
    }
    tokio::time::timeout(Duration::from_secs(30), acks.reached.notified())
        .await
        .expect("half of the messages acknowledged within 30 s");
    broker.kill().await;
    let killed_at = started.elapsed();

    let mut flows = Vec::new();
    for task in publishers {
        flows.push(task.await.expect("publisher task"));
    }
    let acked_before_kill: HashMap<&str, Vec<u32>> = flows
        .iter()
        .map(|(_, _, flow, _)| (flow.topic, flow.acked.clone()))
        .collect();
    for (client_id, _, flow, finished) in &flows {
        println!(
            "{client_id}: before SIGKILL sent {} acknowledged {} unacknowledged {} awaiting \
             PUBCOMP {} (finished: {finished})",
            flow.next,
            flow.acked.len(),
            flow.unacked.len(),
            flow.released.len()
        );
    }

    let broker = BrokerProcess::start(BROKER, dir.path(), &[]).await;
    let addr = broker.addr;
    for (client_id, protocol, flow, _) in &mut flows {
        let (mut peer, ack) = open(addr, *protocol, client_id, false).await;
        assert!(
            ack.session_present,
            "{client_id}: the publisher's persistent session survives SIGKILL"
        );
        flow.resend(&mut peer).await;
        assert!(
            flow.pump(&mut peer, WINDOW, &acks).await,
            "{client_id}: connection lost after the restart"
        );
        peer.disconnect().await;
    }
    // The end markers are queued behind everything the publishers sent.
    let (mut marker, _) = open(addr, Protocol::V311, "crash-marker", true).await;
    marker.publish_qos1(7, "crash/q1", b"end", false).await;
    marker.publish_qos1(7, "crash/q2", b"end", false).await;

    let q1 = drain(addr, "crash-sub-q1").await;
    let q2 = drain(addr, "crash-sub-q2").await;
    println!(
        "killed after {killed_at:?}; delivered q1 {} (distinct {}), q2 {}; total {:?}",
        q1.len(),
        first_occurrences(&q1).len(),
        q2.len(),
        started.elapsed()
    );

    let lost_q1 = missing(acked_before_kill["crash/q1"].iter().copied(), &q1);
    assert!(
        lost_q1.is_empty(),
        "QoS 1 messages PUBACKed before SIGKILL and never delivered: {} (first: {:?})",
        lost_q1.len(),
        &lost_q1[..lost_q1.len().min(20)]
    );
    let lost_q2 = missing(acked_before_kill["crash/q2"].iter().copied(), &q2);
    assert!(
        lost_q2.is_empty(),
        "QoS 2 messages PUBRECed before SIGKILL and never delivered: {} (first: {:?})",
        lost_q2.len(),
        &lost_q2[..lost_q2.len().min(20)]
    );
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for &seq in &q2 {
        *counts.entry(seq).or_default() += 1;
    }
    let duplicates: Vec<(u32, usize)> = counts.into_iter().filter(|&(_, n)| n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "QoS 2 messages delivered more than once (seq, times): {} (first: {:?})",
        duplicates.len(),
        &duplicates[..duplicates.len().min(20)]
    );
    let lost_q1 = missing(0..TOTAL, &q1);
    assert!(
        lost_q1.is_empty(),
        "QoS 1 messages acknowledged after the resend and never delivered: {lost_q1:?}"
    );
    let lost_q2 = missing(0..TOTAL, &q2);
    assert!(
        lost_q2.is_empty(),
        "QoS 2 messages completed after the resend and never delivered: {lost_q2:?}"
    );
    assert!(
        is_ascending(&first_occurrences(&q1)),
        "crash/q1 delivered out of order"
    );
    assert!(is_ascending(&q2), "crash/q2 delivered out of order");
    broker.kill().await;
}

// ---------------------------------------------------------------------------------------
// Clean stop.
// ---------------------------------------------------------------------------------------

/// SIGTERM stops the broker cleanly: a connected v5 client is told (DISCONNECT 0x8B
/// Server shutting down), the process exits 0, and after a restart on the same data
/// directory the retained message, both persistent sessions (3.1.1 and v5), their
/// subscriptions and their queued message are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_clean_stop_keeps_retained_messages_and_persistent_sessions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(BROKER, dir.path(), &[]).await;
    let addr = broker.addr;

    for (client_id, protocol, qos) in [
        ("term-sub-311", Protocol::V311, QoS::AtLeastOnce),
        ("term-sub-v5", Protocol::V5, QoS::ExactlyOnce),
    ] {
        let (mut sub, _) = open(addr, protocol, client_id, false).await;
        sub.subscribe(1, "term/queue", qos).await;
        sub.disconnect().await;
    }
    let (mut publisher, _) = open(addr, Protocol::V311, "term-pub", true).await;
    publisher
        .publish_qos1(7, "term/retained", b"kept", true)
        .await;
    publisher
        .publish_qos1(7, "term/queue", b"queued", false)
        .await;
    publisher.disconnect().await;

    let (mut online, _) = open(addr, Protocol::V5, "term-online", true).await;
    broker.terminate();
    match online.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ServerShuttingDown),
        other => panic!("expected DISCONNECT 0x8B at shutdown, got {other:?}"),
    }
    let (status, log) = broker.wait(Duration::from_secs(15)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; log:\n{log}"
    );

    let broker = BrokerProcess::start(BROKER, dir.path(), &[]).await;
    let addr = broker.addr;
    let (mut sub311, ack) = open(addr, Protocol::V311, "term-sub-311", false).await;
    assert!(
        ack.session_present,
        "3.1.1 persistent session after restart"
    );
    let (mut sub5, ack) = open(addr, Protocol::V5, "term-sub-v5", false).await;
    assert!(ack.session_present, "v5 persistent session after restart");
    for (sub, name) in [(&mut sub311, "3.1.1"), (&mut sub5, "v5")] {
        let p = sub.expect_publish("the queued message").await;
        assert_eq!(
            (&p.topic[..], &p.payload[..], p.qos),
            ("term/queue", &b"queued"[..], QoS::AtLeastOnce),
            "{name} session's queued message"
        );
    }
    // The subscriptions survived too: a new message reaches both without re-subscribing.
    let (mut publisher, _) = open(addr, Protocol::V311, "term-pub", true).await;
    publisher
        .publish_qos1(7, "term/queue", b"after", false)
        .await;
    for (sub, name, qos) in [
        (&mut sub311, "3.1.1", QoS::AtLeastOnce),
        (&mut sub5, "v5", QoS::AtLeastOnce),
    ] {
        let p = sub.expect_publish("the message after restart").await;
        assert_eq!(
            (&p.payload[..], p.qos),
            (&b"after"[..], qos),
            "{name} subscription after restart"
        );
    }
    let (mut fresh, ack) = open(addr, Protocol::V311, "term-fresh", true).await;
    assert!(!ack.session_present);
    fresh.subscribe(1, "term/retained", QoS::AtLeastOnce).await;
    let p = fresh.expect_publish("the retained message").await;
    assert_eq!(&p.topic[..], "term/retained");
    assert_eq!(&p.payload[..], b"kept");
    assert!(
        p.retain,
        "MQTT-3.3.1-8: retained message sent with RETAIN set"
    );

    broker.terminate();
    let (status, log) = broker.wait(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "second SIGTERM; log:\n{log}");
}

// ---------------------------------------------------------------------------------------
// Start-up with a large backlog.
// ---------------------------------------------------------------------------------------

/// Publishes `total` QoS 1 messages with `window` in flight, writing in batches.
async fn publish_backlog(peer: &mut RawClient, topic: &str, total: u32, window: u32) {
    let mut next = 0u32;
    let mut acked = 0u32;
    let mut out = BytesMut::new();
    while acked < total {
        if next - acked <= window / 2 && next < total {
            out.clear();
            while next - acked < window && next < total {
                // Ids cycle through 1..=65_535; with `window` far below that, an id is
                // acknowledged long before it comes round again.
                let id = u16::try_from(next % 65_535 + 1).expect("fits");
                let p = publish_packet(topic, QoS::AtLeastOnce, id, seq_payload(next));
                peer.encode(&Packet::Publish(p), &mut out);
                next += 1;
            }
            peer.send_raw(&out).await;
        }
        match peer.recv().await {
            Some(Packet::PubAck(ack)) => {
                assert!(!ack.reason.is_error(), "PUBACK {ack:?}");
                acked += 1;
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// Spawns the broker on `data` and connects a fresh client: the time from spawn to CONNACK.
async fn time_to_connack(data: &Path, config_arg: &str) -> (Duration, BrokerProcess) {
    let spawned = Instant::now();
    let broker = BrokerProcess::start(BROKER, data, &["--config", config_arg]).await;
    let (_fresh, ack) = open(broker.addr, Protocol::V311, "backlog-fresh", true).await;
    let elapsed = spawned.elapsed();
    assert!(!ack.session_present);
    (elapsed, broker)
}

/// 200,000 QoS 1 messages queued for one offline persistent session do not delay start-up:
/// after a clean stop, a fresh client gets its CONNACK within 2 s of the process being
/// spawned, and the session's queue is intact (its first messages arrive in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_does_not_load_queued_messages() {
    const QUEUED: u32 = 200_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        "[limits]\nmax_queued_messages = 250_000\nmax_queued_bytes = 536_870_912\n\
         max_inflight = 1_000\n[storage]\nsync = \"none\"\n",
    )
    .expect("write config");
    let data = dir.path().join("data");
    let config_arg = config.to_str().expect("utf-8 path");
    let broker = BrokerProcess::start(BROKER, &data, &["--config", config_arg]).await;
    let addr = broker.addr;

    let (mut sub, _) = open(addr, Protocol::V311, "backlog-sub", false).await;
    sub.subscribe(1, "backlog/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let publishing = Instant::now();
    let (mut publisher, _) = open(addr, Protocol::V311, "backlog-pub", true).await;
    publish_backlog(&mut publisher, "backlog/t", QUEUED, 512).await;
    publisher.disconnect().await;
    let published_in = publishing.elapsed();

    let stopping = Instant::now();
    broker.terminate();
    let (status, log) = broker.wait(Duration::from_secs(60)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; log:\n{log}"
    );
    let stopped_in = stopping.elapsed();

    // The same measurement on an empty data directory, for comparison.
    let (baseline, empty) = time_to_connack(&dir.path().join("empty"), config_arg).await;
    empty.terminate();
    empty.wait(Duration::from_secs(60)).await;

    let (connack_after, broker) = time_to_connack(&data, config_arg).await;
    println!(
        "published {QUEUED} in {published_in:?}; clean stop {stopped_in:?}; restart: \
         CONNACK {connack_after:?} after spawn (empty data directory: {baseline:?})"
    );
    if connack_after >= Duration::from_secs(2) {
        broker.terminate();
        let (_, log) = broker.wait(Duration::from_secs(60)).await;
        // Where the time went inside storage, from RocksDB's own log of the open.
        let recovery: Vec<String> = std::fs::read_to_string(data.join("LOG"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                [
                    "Recovering log",
                    "Recovered to log",
                    "recovery_finished",
                    "DB pointer",
                ]
                .iter()
                .any(|needle| l.contains(needle))
            })
            .map(str::to_owned)
            .collect();
        panic!(
            "a fresh client waited {connack_after:?} from process start to CONNACK with \
             {QUEUED} messages queued (limit 2 s; {baseline:?} with an empty data \
             directory); broker log:\n{log}RocksDB LOG:\n{}",
            recovery.join("\n")
        );
    }

    let (mut sub, ack) = open(broker.addr, Protocol::V311, "backlog-sub", false).await;
    assert!(
        ack.session_present,
        "the backlog's session survives the restart"
    );
    for expected in 0..100 {
        let p = sub.expect_publish("a queued message").await;
        assert_eq!(parse_seq(&p.payload), expected, "queued messages in order");
    }
    broker.terminate();
    let (status, log) = broker.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "second SIGTERM; log:\n{log}");
}

/// Chat messages across SIGKILL. alice's publisher (an anonymous development user, on the
/// loopback listener) sends sequence-numbered DMs to bob at QoS 1, 16 in flight; bob has no
/// device online at all. At 500 acknowledgements, SIGKILL. After the restart bob's new device
/// syncs its inbox log from the start: every DM alice got a PUBACK for is there, in the order
/// sent, under gap-free inbox seqs starting at 0; and new DMs continue the numbering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_chat_message_and_keeps_inbox_seqs_gap_free() {
    const TOTAL: u32 = 1_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(BROKER, dir.path(), &[]).await;
    let (mut alice, _) = open(broker.addr, Protocol::V311, "alice", true).await;
    let acks = Arc::new(AckCounter {
        count: AtomicUsize::new(0),
        threshold: 500,
        reached: Notify::new(),
    });
    let counter = acks.clone();
    let publisher = tokio::spawn(async move {
        let mut flow = Flow::new("dm/bob", QoS::AtLeastOnce, TOTAL);
        flow.pump(&mut alice, 16, &counter).await;
        flow
    });
    tokio::time::timeout(Duration::from_secs(30), acks.reached.notified())
        .await
        .expect("500 DMs acknowledged within 30 s");
    broker.kill().await;
    let flow = publisher.await.expect("publisher task");
    println!(
        "before SIGKILL: sent {} acknowledged {}",
        flow.next,
        flow.acked.len()
    );

    let broker = BrokerProcess::start(BROKER, dir.path(), &[]).await;
    let (mut alice, _) = open(broker.addr, Protocol::V311, "alice", true).await;
    alice
        .publish_qos1(1, "dm/bob", seq_payload(TOTAL), false)
        .await;
    let (mut bob, _) = open(broker.addr, Protocol::V5, "bob", true).await;
    let sync = publish_packet("$sync", QoS::AtMostOnce, 0, Bytes::new());
    bob.send(Packet::Publish(sync)).await;
    let mut logged = Vec::new();
    loop {
        let p = bob.expect_publish("replayed DM or the end marker").await;
        if &*p.topic == "inbox/bob/sync" {
            break;
        }
        assert_eq!(&*p.topic, "inbox/bob/dm/alice");
        let seq = p
            .properties
            .user_properties
            .iter()
            .find(|(k, _)| &**k == "seq")
            .map(|(_, v)| v.parse::<usize>().expect("numeric seq"))
            .expect("seq property");
        assert_eq!(seq, logged.len(), "inbox seqs are gap-free from 0");
        logged.push(parse_seq(&p.payload));
    }
    // Everything acknowledged is logged; a message sent but not acknowledged may be too.
    assert_eq!(
        missing(flow.acked.iter().copied(), &logged),
        Vec::<u32>::new()
    );
    let (last, before) = logged.split_last().expect("at least one entry");
    assert_eq!(*last, TOTAL, "the DM after the restart continues the log");
    assert!(is_ascending(before), "in the order sent");
}
