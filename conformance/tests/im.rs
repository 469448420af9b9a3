//! The IM layer over real sockets: logins, the inbox rule, direct and group messages,
//! sequence numbers and sync, duplicates, the device limit, broadcasts.
//!
//! Users and groups are seeded into the data directory before the broker starts (the admin
//! API and the CLI have their own tests); most clients log in as anonymous development users
//! (`-u alice` without a password, allowed on the loopback listener), which is the same
//! identity path with less argon2 work.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tern::im::directory::{user_ops, UserChange};
use tern_codec::{Packet, Properties, Protocol, QoS, ReasonCode};
use tern_conformance::chat::{device, login, next, publish, row, subscribe_all, sync_request};
use tern_conformance::{group_op, Broker, RawClient, EVENT_TIMEOUT};
use tern_storage::Op;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn user(name: &str, password: &str) -> Op {
    let change = UserChange::Add {
        user: name.into(),
        password: password.into(),
        operator: false,
    };
    let store = tern_storage::MemoryStore::new();
    user_ops(&store, &change, 0)
        .expect("user op")
        .pop()
        .expect("one op")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_refused_v311_0x04_v5_0x86() {
    let broker = Broker::start_seeded(&[user("alice", "s3cret")], |_| {}).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        for (password, ok) in [(Some("nope"), false), (None, false), (Some("s3cret"), true)] {
            let (_, ack) = RawClient::open(
                broker.addr,
                protocol,
                "alice-phone",
                true,
                login("alice", password),
            )
            .await;
            let expected = if ok {
                ReasonCode::Success
            } else {
                // 3.1.1's return code 4 decodes to the same reason.
                ReasonCode::BadUserNameOrPassword
            };
            assert_eq!(ack.code, expected, "{protocol:?} password {password:?}");
        }
    }
    // A password for a user that does not exist is bad credentials too.
    let (_, ack) = RawClient::open(
        broker.addr,
        Protocol::V5,
        "m",
        true,
        login("mallory", Some("x")),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_are_refused_when_the_listener_is_not_loopback_only() {
    let broker = Broker::start_seeded(&[user("alice", "pw")], |c| {
        c.allow_anonymous = tern::config::AnonymousPolicy::Never;
    })
    .await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let (_, ack) =
            RawClient::open(broker.addr, protocol, "bob", true, login("bob", None)).await;
        assert_eq!(
            ack.code,
            ReasonCode::NotAuthorized,
            "{protocol:?}: 0x05 / 0x87"
        );
        let (_, ack) =
            RawClient::open(broker.addr, protocol, "a", true, login("alice", Some("pw"))).await;
        assert_eq!(ack.code, ReasonCode::Success, "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_inbox_is_refused_directly_and_narrowed_through_wildcards() {
    let broker = Broker::start().await;
    let mut alice = device(&broker, "alice", "alice-phone").await;
    let reasons = subscribe_all(
        &mut alice,
        &["inbox/bob/#", "inbox/+/dm/#", "#", "$share/g/inbox/bob/#"],
    )
    .await;
    assert_eq!(
        reasons,
        [
            ReasonCode::NotAuthorized,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS1,
            ReasonCode::NotAuthorized
        ]
    );
    // 3.1.1 gets the failure return code 0x80.
    let (mut old, _) = RawClient::open_ok(
        broker.addr,
        Protocol::V311,
        "alice-old",
        true,
        login("alice", None),
    )
    .await;
    let reasons = subscribe_all(&mut old, &["inbox/bob/dm/+", "inbox/alice/#"]).await;
    assert_eq!(
        reasons,
        [ReasonCode::UnspecifiedError, ReasonCode::GrantedQoS1]
    );

    // carol writes to bob, then to alice: alice's wildcards must see only her own.
    let mut carol = device(&broker, "carol", "carol-phone").await;
    assert_eq!(
        publish(&mut carol, 1, "dm/bob", "for bob", &[]).await,
        ReasonCode::Success
    );
    assert_eq!(
        publish(&mut carol, 2, "dm/alice", "for alice", &[]).await,
        ReasonCode::Success
    );
    let got = next(&mut alice, "alice's own DM").await;
    assert_eq!(got, row("inbox/alice/dm/carol", "for alice", "carol", 0));
    // Through the narrowed filter and through '#': one copy per matching subscription
    // merged into one delivery [MQTT-3.3.4-2], and nothing of bob's.
    assert!(
        alice.recv_within(Duration::from_millis(200)).await.is_err(),
        "nothing else may reach alice"
    );
    // Nobody may publish into an inbox.
    assert_eq!(
        publish(&mut carol, 3, "inbox/bob/dm/alice", "forged", &[]).await,
        ReasonCode::NotAuthorized
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_reaches_both_devices_of_the_recipient_and_the_senders_other_device() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient, Event};

    let broker = Broker::start().await;
    let port = broker.addr.port();
    // Real clients: rumqttc v5 devices, logged in as development users.
    let mut devices = Vec::new();
    for (user, id, filter) in [
        ("bob", "bob-phone", "inbox/bob/#"),
        ("bob", "bob-laptop", "inbox/bob/#"),
        ("alice", "alice-laptop", "inbox/alice/#"),
    ] {
        let mut options = tern_conformance::v5_options(id, port);
        options.set_credentials(user, "");
        let (client, mut events) = AsyncClient::new(options, 16);
        client
            .subscribe(filter, Q5::AtLeastOnce)
            .await
            .expect("subscribe");
        tern_conformance::next_v5(&mut events, |e| {
            matches!(e, Event::Incoming(P5::SubAck(_))).then_some(())
        })
        .await;
        devices.push((id, client, events));
    }
    let mut options = tern_conformance::v5_options("alice-phone", port);
    options.set_credentials("alice", "");
    let (alice, mut alice_events) = AsyncClient::new(options, 16);
    let props = PublishProperties {
        user_properties: vec![("from".into(), "mallory".into())],
        ..PublishProperties::default()
    };
    alice
        .publish_with_properties("dm/bob", Q5::AtLeastOnce, false, "hi bob", props)
        .await
        .expect("publish");
    let reason = tern_conformance::next_v5(&mut alice_events, |e| match e {
        Event::Incoming(P5::PubAck(ack)) => Some(format!("{:?}", ack.reason)),
        _ => None,
    })
    .await;
    assert_eq!(reason, "Success");
    for (id, _client, events) in &mut devices {
        let publish = tern_conformance::next_v5(events, |e| match e {
            Event::Incoming(P5::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await;
        let expected_topic = if id.starts_with("bob") {
            "inbox/bob/dm/alice"
        } else {
            "inbox/alice/sent/bob"
        };
        assert_eq!(&publish.topic[..], expected_topic.as_bytes(), "{id}");
        assert_eq!(&publish.payload[..], b"hi bob");
        let user_props = publish.properties.expect("properties").user_properties;
        assert!(
            user_props.contains(&("from".into(), "alice".into())),
            "{user_props:?}"
        );
        assert!(
            !user_props.contains(&("from".into(), "mallory".into())),
            "{user_props:?}"
        );
        assert!(
            user_props.contains(&("seq".into(), "0".into())),
            "{user_props:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_reach_an_offline_member_in_order_with_gap_free_seqs() {
    let broker = Broker::start_seeded(&[group_op("g1", &["alice", "bob", "carol"])], |_| {}).await;
    let mut bob = device(&broker, "bob", "bob-phone").await;
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    // carol's phone has a persistent session and goes offline.
    let (mut carol, _) = RawClient::open_ok(broker.addr, Protocol::V5, "carol-phone", false, |c| {
        login("carol", None)(c);
        c.properties.session_expiry_interval = Some(3600);
    })
    .await;
    subscribe_all(&mut carol, &["inbox/carol/#"]).await;
    carol.disconnect().await;

    let mut alice = device(&broker, "alice", "alice-phone").await;
    const N: u64 = 30;
    for i in 0..N {
        let text = format!("m{i}");
        let reason = publish(&mut alice, (i + 1) as u16, "group/g1", &text, &[]).await;
        assert_eq!(reason, ReasonCode::Success);
    }
    for i in 0..N {
        let got = next(&mut bob, "group message").await;
        assert_eq!(
            got,
            row("inbox/bob/group/g1/alice", &format!("m{i}"), "alice", i)
        );
    }
    let (mut carol, ack) =
        RawClient::open_ok(broker.addr, Protocol::V5, "carol-phone", false, |c| {
            login("carol", None)(c);
            c.properties.session_expiry_interval = Some(3600);
        })
        .await;
    assert!(ack.session_present);
    for i in 0..N {
        let got = next(&mut carol, "queued group message").await;
        assert_eq!(
            got,
            row("inbox/carol/group/g1/alice", &format!("m{i}"), "alice", i)
        );
    }
    // A non-member is refused (v5 0x87) and nothing reaches the members.
    let mut mallory = device(&broker, "mallory", "mallory").await;
    assert_eq!(
        publish(&mut mallory, 1, "group/g1", "spam", &[]).await,
        ReasonCode::NotAuthorized
    );
    // 3.1.1: acknowledged as usual (no reason codes), not delivered.
    let (mut old, _) = RawClient::open_ok(
        broker.addr,
        Protocol::V311,
        "m-old",
        true,
        login("mallory", None),
    )
    .await;
    old.publish_qos1(1, "group/g1", "spam", false).await;
    assert_eq!(
        publish(&mut alice, 99, "group/g1", "after", &[]).await,
        ReasonCode::Success
    );
    let got = next(&mut bob, "the next real message").await;
    assert_eq!(got, row("inbox/bob/group/g1/alice", "after", "alice", N));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replays_the_gap_in_order_then_marks_the_end() {
    let broker = Broker::start().await;
    let mut alice = device(&broker, "alice", "alice-phone").await;
    for i in 0..5u16 {
        publish(&mut alice, i + 1, "dm/bob", &format!("m{i}"), &[]).await;
    }
    // bob's new device saw up to seq 1 elsewhere; it asks for the rest.
    let mut bob = device(&broker, "bob", "bob-new").await;
    sync_request(&mut bob, "1").await;
    for seq in 2..5u64 {
        let got = next(&mut bob, "replayed").await;
        assert_eq!(
            got,
            row("inbox/bob/dm/alice", &format!("m{seq}"), "alice", seq)
        );
    }
    let end = bob.expect_publish("sync end").await;
    assert_eq!(&*end.topic, "inbox/bob/sync");
    assert_eq!(
        &end.payload[..],
        br#"{"after":1,"last":4,"next":5,"more":false}"#
    );
    // Nothing new: an empty replay still ends.
    sync_request(&mut bob, "4").await;
    let end = bob.expect_publish("empty sync end").await;
    assert_eq!(
        &end.payload[..],
        br#"{"after":4,"last":null,"next":5,"more":false}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_is_paged_by_sync_max_messages() {
    let broker = Broker::start_with(|c| c.im.sync_max_messages = 2).await;
    let mut alice = device(&broker, "alice", "alice-phone").await;
    for i in 0..3u16 {
        publish(&mut alice, i + 1, "dm/bob", &format!("m{i}"), &[]).await;
    }
    let mut bob = device(&broker, "bob", "bob-new").await;
    sync_request(&mut bob, "").await;
    assert_eq!(next(&mut bob, "0").await.3, "0");
    assert_eq!(next(&mut bob, "1").await.3, "1");
    let end = bob.expect_publish("page end").await;
    assert_eq!(
        &end.payload[..],
        br#"{"after":null,"last":1,"next":3,"more":true}"#
    );
    sync_request(&mut bob, "1").await;
    assert_eq!(next(&mut bob, "2").await.3, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_with_the_same_msgid_is_acknowledged_and_delivered_once() {
    let broker = Broker::start().await;
    let mut bob = device(&broker, "bob", "bob-phone").await;
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    let mut alice = device(&broker, "alice", "alice-phone").await;
    let id = [("msgid", "c-42")];
    assert_eq!(
        publish(&mut alice, 1, "dm/bob", "once", &id).await,
        ReasonCode::Success
    );
    // The resend comes on a new connection with a new packet id.
    drop(alice);
    let mut alice = device(&broker, "alice", "alice-phone-2").await;
    assert_eq!(
        publish(&mut alice, 7, "dm/bob", "once", &id).await,
        ReasonCode::Success
    );
    assert_eq!(
        publish(&mut alice, 8, "dm/bob", "next", &[("msgid", "c-43")]).await,
        ReasonCode::Success
    );
    assert_eq!(
        next(&mut bob, "first").await,
        row("inbox/bob/dm/alice", "once", "alice", 0)
    );
    assert_eq!(
        next(&mut bob, "second").await,
        row("inbox/bob/dm/alice", "next", "alice", 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_device_is_closed_with_0x98_past_the_device_limit() {
    let broker = Broker::start_with(|c| c.im.max_devices_per_user = 2).await;
    let mut first = device(&broker, "bob", "bob-1").await;
    let _second = device(&broker, "bob", "bob-2").await;
    let _third = device(&broker, "bob", "bob-3").await;
    match first.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::AdministrativeAction);
            let why = d.properties.reason_string.clone().expect("reason string");
            assert!(why.contains("bob") && why.contains('2'), "{why}");
        }
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    assert_eq!(first.recv().await, None, "then the connection closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_publish_broadcasts_and_every_user_receives_them() {
    let broker = Broker::start_with(|c| c.im.operators = vec!["ops".into()]).await;
    let mut bob = device(&broker, "bob", "bob-phone").await;
    assert_eq!(
        subscribe_all(&mut bob, &["broadcast/#"]).await,
        [ReasonCode::GrantedQoS1]
    );
    let mut alice = device(&broker, "alice", "alice-phone").await;
    assert_eq!(
        publish(&mut alice, 1, "broadcast/news", "fake", &[]).await,
        ReasonCode::NotAuthorized
    );
    let mut ops = device(&broker, "ops", "ops-console").await;
    assert_eq!(
        publish(&mut ops, 1, "broadcast/news", "maintenance at 2am", &[]).await,
        ReasonCode::Success
    );
    let p = bob.expect_publish("broadcast").await;
    assert_eq!(&*p.topic, "broadcast/news");
    assert_eq!(&p.payload[..], b"maintenance at 2am");
}

/// The README walkthrough: two users and a group, chatting with mosquitto_pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_chat_with_passwords_and_a_group() {
    let broker = Broker::start_seeded(
        &[
            user("alice", "alice-pw"),
            user("bob", "bob-pw"),
            group_op("friends", &["alice", "bob"]),
        ],
        |c| c.allow_anonymous = tern::config::AnonymousPolicy::Never,
    )
    .await;
    let port = broker.addr.port().to_string();
    let mut sub = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "5",
        ])
        .args(["-u", "bob", "-P", "bob-pw", "-i", "bob-laptop"])
        .args([
            "-t",
            "inbox/bob/#",
            "-q",
            "1",
            "-v",
            "-C",
            "2",
            "-W",
            "20",
            "-d",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (scripts/setup.sh installs mosquitto-clients)");
    let mut lines = BufReader::new(sub.stdout.take().expect("stdout")).lines();
    let mut received = Vec::new();
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.contains("received SUBACK") {
                return;
            }
        }
        panic!("mosquitto_sub ended before its SUBACK");
    })
    .await
    .expect("SUBACK in time");
    for (topic, message) in [("dm/bob", "hi bob"), ("group/friends", "hi all")] {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", "5", "-q", "1"])
            .args(["-u", "alice", "-P", "alice-pw", "-t", topic, "-m", message])
            .status()
            .await
            .expect("mosquitto_pub");
        assert!(status.success(), "mosquitto_pub {topic}");
    }
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.starts_with("inbox/") {
                received.push(line);
            }
        }
    })
    .await
    .expect("mosquitto_sub finishes after 2 messages");
    assert_eq!(
        received,
        [
            "inbox/bob/dm/alice hi bob",
            "inbox/bob/group/friends/alice hi all"
        ]
    );
    // A wrong password is refused by mosquitto_pub too.
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "5",
            "-u",
            "alice",
            "-P",
            "wrong",
        ])
        .args(["-t", "dm/bob", "-m", "x"])
        .output()
        .await
        .expect("mosquitto_pub");
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_logs_and_their_seqs_survive_a_restart() {
    let broker = Broker::start().await;
    let mut alice = device(&broker, "alice", "alice-phone").await;
    for i in 0..3u16 {
        publish(&mut alice, i + 1, "dm/bob", &format!("before {i}"), &[]).await;
    }
    drop(alice);
    let broker = broker.restart().await;
    let mut alice = device(&broker, "alice", "alice-phone").await;
    publish(&mut alice, 1, "dm/bob", "after", &[]).await;
    let mut bob = device(&broker, "bob", "bob-phone").await;
    sync_request(&mut bob, "").await;
    for seq in 0..3u64 {
        let got = next(&mut bob, "from before the restart").await;
        assert_eq!(
            got,
            row("inbox/bob/dm/alice", &format!("before {seq}"), "alice", seq)
        );
    }
    assert_eq!(
        next(&mut bob, "after the restart").await,
        row("inbox/bob/dm/alice", "after", "alice", 3)
    );
    let end = bob.expect_publish("sync end").await;
    assert_eq!(
        &end.payload[..],
        br#"{"after":null,"last":3,"next":4,"more":false}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_cannot_forge_an_inbox_or_chat_message() {
    let broker = Broker::start().await;
    let topics = [
        "inbox/bob/dm/alice",
        "dm/bob",
        "group/g1",
        "broadcast/all",
        "$SYS/broker/uptime",
    ];
    for topic in topics {
        let (_, ack) = RawClient::open(broker.addr, Protocol::V5, "mallory", true, |c| {
            login("mallory", None)(c);
            c.will = Some(tern_codec::Will {
                topic: topic.into(),
                payload: Bytes::from_static(b"forged"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
            });
        })
        .await;
        assert_eq!(ack.code, ReasonCode::NotAuthorized, "will on {topic}");
    }
}

/// Sum of the sizes of the RocksDB write-ahead logs (`*.log`) in a data directory.
fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// A message to a large group with most members offline is written once: 200 offline
/// persistent sessions get a 64 KiB group message, and the write-ahead log grows by about
/// one payload plus small per-member entries, not by 200 payloads (12.5 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_message_is_stored_once_for_its_offline_members() {
    const MEMBERS: usize = 200;
    const PAYLOAD: usize = 64 * 1024;
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}")).collect();
    let mut member_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    member_refs.push("alice");
    let broker = Broker::start_seeded(&[group_op("big", &member_refs)], |c| {
        c.limits.max_packet_size = 1_048_576;
    })
    .await;
    for name in &names {
        let (mut phone, _) = RawClient::open_ok(broker.addr, Protocol::V5, name, false, |c| {
            login(name, None)(c);
            c.properties.session_expiry_interval = Some(3600);
        })
        .await;
        let filter = format!("inbox/{name}/#");
        subscribe_all(&mut phone, &[filter.as_str()]).await;
        phone.disconnect().await;
    }
    let mut alice = device(&broker, "alice", "alice-phone").await;
    let before = wal_bytes(&broker.config.data_dir);
    let payload = "x".repeat(PAYLOAD);
    assert_eq!(
        publish(&mut alice, 1, "group/big", &payload, &[]).await,
        ReasonCode::Success
    );
    let grown = wal_bytes(&broker.config.data_dir) - before;
    println!(
        "WAL grew by {grown} bytes for one {PAYLOAD}-byte message to {MEMBERS} offline members"
    );
    assert!(
        grown >= PAYLOAD as u64,
        "the payload itself is written ({grown} bytes)"
    );
    assert!(
        grown < 2 * PAYLOAD as u64 + (MEMBERS as u64) * 512,
        "written about once, not per member: {grown} bytes"
    );
    // And every member still gets the whole message when it comes back.
    let (mut m7, ack) = RawClient::open_ok(broker.addr, Protocol::V5, "m7", false, |c| {
        login("m7", None)(c);
        c.properties.session_expiry_interval = Some(3600);
    })
    .await;
    assert!(ack.session_present);
    let (topic, body, from, _) = next(&mut m7, "the group message").await;
    assert_eq!(
        (topic.as_str(), from.as_str()),
        ("inbox/m7/group/big/alice", "alice")
    );
    assert_eq!(body.len(), PAYLOAD);
}
