//! Persistent sessions across tern nodes on a real NATS server: a device whose session was
//! on one node resumes it on another, after that node was killed or while it still runs,
//! with its subscriptions (CONNACK session present, nothing subscribed again) and the
//! inbox entries it missed, in seq order, each once, ahead of what arrives live.

use std::time::Duration;

use tern_codec::{Connect, Packet, Protocol, QoS, ReasonCode};
use tern_conformance::chat::{self, login, prop, publish, subscribe_all};
use tern_conformance::nats::NatsServer;
use tern_conformance::{eventually, granted, publish_packet, RawClient};

const BROKER: &str = env!("CARGO_BIN_EXE_tern-test-broker");

/// A short lease, so that a killed node's client ids are free within the test's patience.
const NODE_TTL_MS: u64 = 1_500;

/// Logged in as `user` (anonymous development login) with a session that outlives the
/// connection by an hour.
fn persistent(user: &str) -> impl FnOnce(&mut Connect) {
    let login = login(user, None);
    move |c| {
        login(c);
        c.properties.session_expiry_interval = Some(3600);
    }
}

async fn open_persistent(
    addr: std::net::SocketAddr,
    client_id: &str,
    user: &str,
) -> (RawClient, bool) {
    let (client, ack) =
        RawClient::open_ok(addr, Protocol::V5, client_id, false, persistent(user)).await;
    (client, ack.session_present)
}

/// A persistent session that outlives its connection by `expiry_secs`.
async fn open_expiring(
    addr: std::net::SocketAddr,
    client_id: &str,
    user: &str,
    expiry_secs: u32,
) -> RawClient {
    let (client, _) = RawClient::open_ok(addr, Protocol::V5, client_id, false, |c| {
        persistent(user)(c);
        c.properties.session_expiry_interval = Some(expiry_secs);
    })
    .await;
    client
}

/// A node of `nats` named `node` (lease `node_ttl_ms`) that sweeps the sessions' copies
/// every second.
async fn sweeping_node(
    nats: &NatsServer,
    node: &str,
    node_ttl_ms: u64,
) -> tern_conformance::Broker {
    let url = nats.url();
    tern_conformance::Broker::start_with(|c| {
        tern_conformance::nats::join(c, node, &url);
        c.cluster.node_ttl_ms = node_ttl_ms;
        c.cluster.session_sweep_secs = 1;
    })
    .await
}

/// The bucket of the sessions' copies and cursors, read as a test's own NATS client.
async fn session_state(nats: &NatsServer) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    async_nats::jetstream::new(client)
        .get_key_value("TERN_SESSION_STATE")
        .await
        .expect("the session state bucket")
}

/// Waits until the cluster holds `client_id`'s inbox cursor at `next` (the first inbox
/// seq its device has not acknowledged; the value is `born inbox messages`): cursors are
/// written a few times a second, and a resume right after acknowledgements would
/// otherwise send some again.
async fn cursor_reaches(nats: &NatsServer, client_id: &str, next: u64) {
    let kv = session_state(nats).await;
    let key = format!("c.{client_id}");
    eventually(&format!("{client_id}'s cursor at {next}"), || {
        let (kv, key) = (kv.clone(), key.clone());
        async move {
            let value = kv.get(key).await.ok().flatten();
            let inbox = value.and_then(|v| {
                let text = String::from_utf8(v.to_vec()).ok()?;
                text.split(' ').nth(1).map(str::to_string)
            });
            inbox == Some(next.to_string())
        }
    })
    .await;
}

/// Waits until the cluster's copy of `client_id`'s session was last written by `node`.
async fn record_on(nats: &NatsServer, client_id: &str, node: &str) {
    let kv = session_state(nats).await;
    let key = format!("s.{client_id}");
    eventually(&format!("{client_id}'s session written by {node}"), || {
        let (kv, key) = (kv.clone(), key.clone());
        async move {
            let value = kv.get(key).await.ok().flatten();
            value.is_some_and(|v| v.starts_with(format!("{node}\n").as_bytes()))
        }
    })
    .await;
}

/// Asserts that nothing arrives for a while (`what` says what is expected).
async fn quiet(client: &mut RawClient, what: &str) {
    let got = client.recv_within(Duration::from_millis(300)).await;
    assert!(matches!(got, Err(())), "{what}: got {got:?}");
}

/// (payload, seq) of the next PUBLISH, acknowledged.
async fn next_entry(client: &mut RawClient, what: &str) -> (String, u64) {
    let p = client.expect_publish(what).await;
    let seq = prop(&p, "seq")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no seq in {p:?}"));
    (String::from_utf8_lossy(&p.payload).into_owned(), seq)
}

/// A QoS 1 message on `news/today`, acknowledged (kept by the cluster).
async fn news(client: &mut RawClient, packet_id: u16, text: &str) {
    news_on(client, "news/today", packet_id, text).await;
}

/// A QoS 1 message on `topic`, acknowledged.
async fn news_on(client: &mut RawClient, topic: &str, packet_id: u16, text: &str) {
    client
        .send(Packet::Publish(publish_packet(
            topic,
            QoS::AtLeastOnce,
            packet_id,
            bytes::Bytes::copy_from_slice(text.as_bytes()),
        )))
        .await;
    match client.recv().await {
        Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => {
            assert_eq!(ack.reason, ReasonCode::Success, "{text} kept")
        }
        other => panic!("expected the PUBACK of {text}, got {other:?}"),
    }
}

async fn dm(alice: &mut RawClient, packet_id: u16, text: &str) {
    let msgid = format!("m-{packet_id}");
    assert_eq!(
        publish(alice, packet_id, "dm/bob", text, &[("msgid", &msgid)]).await,
        ReasonCode::Success,
        "{text} stored"
    );
}

/// Node A is killed while Bob's phone is connected to it with a persistent session. DMs
/// and QoS 1 news sent meanwhile are kept in the cluster; the phone reconnects to node B
/// without clean start and finds its session there: its subscriptions hold, and it gets
/// what it missed, then what comes live, in order, without what it had acknowledged on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_a_killed_node_resumes_on_another_with_what_it_missed() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = nats
        .process_and_local_node(BROKER, NODE_TTL_MS, dir.path())
        .await;

    let (mut phone, present) = open_persistent(a.addr, "bob-phone", "bob").await;
    assert!(!present, "a new session");
    assert_eq!(
        subscribe_all(&mut phone, &["inbox/bob/#", "news/#"]).await,
        [granted(QoS::AtLeastOnce), granted(QoS::AtLeastOnce)]
    );
    let mut alice = chat::device(&b, "alice", "alice-phone").await;
    let probe = chat::until_delivered(&mut alice, "bob", &mut phone).await;
    let mut seq: u64 = prop(&probe, "seq")
        .and_then(|s| s.parse().ok())
        .expect("seq");
    // A plain message from node B, acknowledged on A: not sent again after the resume.
    news(&mut alice, 41, "early").await;
    let early = phone.expect_publish("news on node A").await;
    assert_eq!(&early.payload[..], b"early");
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        dm(&mut alice, 10 + i as u16, text).await;
        seq += 1;
        assert_eq!(next_entry(&mut phone, text).await, (text.to_string(), seq));
    }
    cursor_reaches(&nats, "bob-phone", seq + 1).await;

    a.kill().await;
    drop(phone);
    for (i, text) in ["four", "five"].into_iter().enumerate() {
        dm(&mut alice, 20 + i as u16, text).await;
    }
    news(&mut alice, 42, "while away").await;

    let (mut phone, present) = open_persistent(b.addr, "bob-phone", "bob").await;
    assert!(present, "the session resumed on node B");
    for text in ["four", "five"] {
        seq += 1;
        assert_eq!(
            next_entry(&mut phone, text).await,
            (text.to_string(), seq),
            "missed"
        );
    }
    let missed = phone.expect_publish("the news it missed").await;
    assert_eq!(
        (&*missed.topic, &missed.payload[..]),
        ("news/today", &b"while away"[..])
    );
    dm(&mut alice, 30, "six").await;
    seq += 1;
    assert_eq!(
        next_entry(&mut phone, "six").await,
        ("six".to_string(), seq),
        "live"
    );
    // Its plain subscription came along too.
    news(&mut alice, 43, "headline").await;
    let news = phone.expect_publish("news on the resumed session").await;
    assert_eq!(
        (&*news.topic, &news.payload[..]),
        ("news/today", &b"headline"[..])
    );
    quiet(&mut phone, "nothing else (no DM twice)").await;
}

/// The phone's session moves between two running nodes: offline on A, resumed on B, then
/// offline on B and resumed on A again, where A still has its older copy (with the DMs A
/// queued for it since). Each resume gets exactly what the phone missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_between_running_nodes_and_back() {
    let nats = NatsServer::start().await;
    let (a, b) = (nats.node("a").await, nats.node("b").await);
    let mut alice = chat::device(&b, "alice", "alice-phone").await;

    let (mut phone, _) = open_persistent(a.addr, "bob-phone", "bob").await;
    subscribe_all(&mut phone, &["inbox/bob/#"]).await;
    let probe = chat::until_delivered(&mut alice, "bob", &mut phone).await;
    let mut seq: u64 = prop(&probe, "seq")
        .and_then(|s| s.parse().ok())
        .expect("seq");
    cursor_reaches(&nats, "bob-phone", seq + 1).await;
    phone.disconnect().await;

    let mut packet_id = 100;
    let mut expected = Vec::new();
    for node in [&b, &a] {
        for _ in 0..3 {
            packet_id += 1;
            let text = format!("dm {packet_id}");
            dm(&mut alice, packet_id, &text).await;
            seq += 1;
            expected.push((text, seq));
        }
        let (mut phone, present) = open_persistent(node.addr, "bob-phone", "bob").await;
        assert!(present, "resumed on {}", node.config.cluster.node_id);
        for (text, seq) in expected.drain(..) {
            assert_eq!(next_entry(&mut phone, &text).await, (text, seq));
        }
        quiet(
            &mut phone,
            &format!("nothing else on {}", node.config.cluster.node_id),
        )
        .await;
        cursor_reaches(&nats, "bob-phone", seq + 1).await;
        phone.disconnect().await;
    }

    // A clean start ends the session on every node: nothing is resumed afterwards.
    let (phone, _) =
        RawClient::open_ok(b.addr, Protocol::V5, "bob-phone", true, persistent("bob")).await;
    record_on(&nats, "bob-phone", "b").await;
    phone.disconnect().await;
    dm(&mut alice, 200, "after the clean start").await;
    let (mut phone, present) = open_persistent(a.addr, "bob-phone", "bob").await;
    assert!(present, "the new session (persistent) is resumed");
    quiet(&mut phone, "it subscribed to nothing, so nothing arrives").await;
}

/// A session that expired after its device disconnected is not resumed from the
/// cluster's copy on another node: the CONNECT starts a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_not_resumed_elsewhere() {
    let nats = NatsServer::start().await;
    let (a, b) = (nats.node("a").await, nats.node("b").await);
    let mut phone = open_expiring(a.addr, "bob-phone", "bob", 1).await;
    subscribe_all(&mut phone, &["inbox/bob/#"]).await;
    record_on(&nats, "bob-phone", "a").await;
    phone.disconnect().await;
    // Session expiry is a time: waited out, once.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (_, present) = open_persistent(b.addr, "bob-phone", "bob").await;
    assert!(!present, "an expired session came back");
}

/// Messages published on the node a session resumes on, while it is being resumed there,
/// all reach it once, in order: the ones the read of the cluster's stream had, and the
/// ones after. Those published there while the session was being made are both in the
/// read and held as live copies: the node tells them apart by its appends' ids. Those
/// routed just before it was made, their appends still in flight, are in the read: it
/// waits for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_during_a_resume_arrive_once() {
    const MESSAGES: u64 = 400;
    const BURST: u64 = 8;
    let (_nats, _a, b) = offline_on_a("feed/#").await;

    let (started_tx, started) = tokio::sync::oneshot::channel();
    let b_addr = b.addr;
    let publisher = tokio::spawn(async move {
        let (mut client, _) = RawClient::open_ok(
            b_addr,
            Protocol::V5,
            "carol-feed",
            true,
            login("carol", None),
        )
        .await;
        let mut started_tx = Some(started_tx);
        // In bursts, so that several appends are in flight whenever the session is made.
        for first in (1..=MESSAGES).step_by(BURST as usize) {
            let last = (first + BURST - 1).min(MESSAGES);
            for n in first..=last {
                client
                    .send(Packet::Publish(publish_packet(
                        "feed/x",
                        QoS::AtLeastOnce,
                        (n % 60_000 + 1) as u16,
                        bytes::Bytes::from(n.to_string()),
                    )))
                    .await;
            }
            for _ in first..=last {
                match client.recv().await {
                    Some(Packet::PubAck(ack)) => {
                        assert_eq!(ack.reason, ReasonCode::Success, "{} kept", ack.packet_id)
                    }
                    other => panic!("expected PUBACKs, got {other:?}"),
                }
            }
            if last >= 50 {
                if let Some(tx) = started_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    started.await.expect("publishing");
    let (mut phone, present) = open_persistent(b.addr, "bob-phone", "bob").await;
    assert!(present, "resumed on node B while node B publishes");
    let mut newest = 0u64;
    while newest < MESSAGES {
        let p = phone.expect_publish("the feed").await;
        let n: u64 = String::from_utf8_lossy(&p.payload)
            .parse()
            .expect("a counter");
        assert!(n > newest, "{n} came twice (after {newest})");
        assert_eq!(
            n,
            newest + 1,
            "{} skipped: {n} came after {newest}",
            newest + 1
        );
        newest = n;
    }
    publisher.await.expect("publisher");
}

/// Whether the cluster holds a copy of `client_id`'s session, and its cursors.
async fn copy_held(kv: &async_nats::jetstream::kv::Store, client_id: &str) -> (bool, bool) {
    let record = kv.get(format!("s.{client_id}")).await.ok().flatten();
    let cursors = kv.get(format!("c.{client_id}")).await.ok().flatten();
    (record.is_some(), cursors.is_some())
}

/// A session that expires offline on its node takes its copy in the cluster (and its
/// cursors) with it, swept by the node; a session that has not expired keeps its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_sessions_copy_is_swept_from_the_cluster() {
    let nats = NatsServer::start().await;
    let a = sweeping_node(&nats, "a", NODE_TTL_MS).await;
    let mut short = open_expiring(a.addr, "short-phone", "bob", 1).await;
    let (mut long, _) = open_persistent(a.addr, "long-phone", "carol").await;
    subscribe_all(&mut short, &["inbox/bob/#"]).await;
    subscribe_all(&mut long, &["inbox/carol/#"]).await;
    record_on(&nats, "short-phone", "a").await;
    record_on(&nats, "long-phone", "a").await;
    let kv = session_state(&nats).await;
    eventually("short-phone's cursors written", || {
        let kv = kv.clone();
        async move { copy_held(&kv, "short-phone").await.1 }
    })
    .await;
    short.disconnect().await;
    long.disconnect().await;
    eventually("short-phone's copy and cursors swept", || {
        let kv = kv.clone();
        async move { copy_held(&kv, "short-phone").await == (false, false) }
    })
    .await;
    assert_eq!(
        copy_held(&kv, "long-phone").await,
        (true, true),
        "a session within its expiry keeps its copy"
    );
}

/// A session connected to a node that is killed has no disconnect time in its copy: the
/// sweep (by the node left) starts its expiry when it finds the node gone, and removes the
/// copy once that has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_connected_session_expires_from_the_cluster() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let a = tern_conformance::nats::process_node(BROKER, &nats, "a", NODE_TTL_MS, dir.path()).await;
    let _b = sweeping_node(&nats, "b", NODE_TTL_MS).await;
    let mut phone = open_expiring(a.addr, "bob-phone", "bob", 2).await;
    subscribe_all(&mut phone, &["inbox/bob/#"]).await;
    record_on(&nats, "bob-phone", "a").await;
    let kv = session_state(&nats).await;
    a.kill().await;
    drop(phone);
    eventually("the dead node's session swept after its expiry", || {
        let kv = kv.clone();
        async move { !copy_held(&kv, "bob-phone").await.0 }
    })
    .await;
}

/// A NATS server with nodes A and B, and bob-phone's persistent session left offline on
/// A (in the cluster's copy) subscribed to `filter`.
async fn offline_on_a(
    filter: &str,
) -> (
    NatsServer,
    tern_conformance::Broker,
    tern_conformance::Broker,
) {
    let nats = NatsServer::start().await;
    let (a, b) = (nats.node("a").await, nats.node("b").await);
    let (mut phone, _) = open_persistent(a.addr, "bob-phone", "bob").await;
    subscribe_all(&mut phone, &[filter]).await;
    record_on(&nats, "bob-phone", "a").await;
    phone.disconnect().await;
    (nats, a, b)
}

/// The client ids of the sessions `node` holds itself (admin API, local list).
async fn local_sessions(node: &tern_conformance::Broker) -> Vec<String> {
    let (status, list) = tern_conformance::http(
        "GET",
        format!("{}/v1/sessions", node.admin_url()),
        Some(node.admin_token()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .expect("a list of sessions")
        .iter()
        .filter_map(|s| s["client_id"].as_str().map(str::to_string))
        .collect()
}

/// A session held offline on node A that resumes on node B is dropped from A, which
/// then no longer follows its subscriptions; its device resuming on A later finds it
/// again (from the cluster's copy, with what it missed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_drops_its_copy_of_a_session_that_resumed_elsewhere() {
    let (nats, a, b) = offline_on_a("news/#").await;
    assert!(local_sessions(&a).await.contains(&"bob-phone".to_string()));

    let (phone, present) = open_persistent(b.addr, "bob-phone", "bob").await;
    assert!(present, "resumed on node B");
    eventually("node A dropped its copy", || async {
        !local_sessions(&a).await.contains(&"bob-phone".to_string())
    })
    .await;
    record_on(&nats, "bob-phone", "b").await;
    phone.disconnect().await;

    let (mut alice, _) = RawClient::open_ok(
        b.addr,
        Protocol::V5,
        "alice-phone",
        true,
        login("alice", None),
    )
    .await;
    news(&mut alice, 7, "while away").await;
    let (mut phone, present) = open_persistent(a.addr, "bob-phone", "bob").await;
    assert!(present, "resumed on node A again, from the cluster's copy");
    let missed = phone.expect_publish("the news it missed").await;
    assert_eq!(&missed.payload[..], b"while away");
}

/// A persistent session's SUBACK on a cluster node comes once the cluster's copy of the
/// session holds the new subscription: a node killed right after the SUBACK cannot take
/// the subscription with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_in_the_clusters_copy_when_it_is_acknowledged() {
    let nats = NatsServer::start().await;
    let a = nats.node("a").await;
    let (mut phone, _) = open_persistent(a.addr, "bob-phone", "bob").await;
    record_on(&nats, "bob-phone", "a").await;
    let kv = session_state(&nats).await;
    for (i, filter) in ["news/#", "sport/+/scores", "weather/today"]
        .into_iter()
        .enumerate()
    {
        subscribe_all(&mut phone, &[filter]).await;
        let copy = kv
            .get("s.bob-phone")
            .await
            .expect("read the copy")
            .expect("a copy");
        assert!(
            copy.windows(filter.len()).any(|w| w == filter.as_bytes()),
            "subscription {i} ({filter}) acknowledged before the cluster's copy had it"
        );
    }
}
