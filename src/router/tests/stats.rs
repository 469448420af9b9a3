//! What the router counts and reports, and the broker's own `$SYS` topics.

use std::sync::Arc;

use arcstr::ArcStr;
use bytes::Bytes;
use tern_codec::{QoS, ReasonCode};
use tern_storage::{MemoryStore, Op, Store};

use super::{message, start, start_on, topics};
use crate::metrics::{DropReason, PublishRefusal, RouterStats};
use crate::protocol::handshake::Will;
use crate::protocol::Message;
use crate::router::Detach;

#[tokio::test]
async fn drops_and_refusals_are_counted_by_reason() {
    let h = start(); // max_queued_messages = 3, mailboxes of 8
    let reader = h.connect("reader", "reader", true, 0).await;
    h.subscribe(&reader, "t", QoS::AtMostOnce).await;
    let offline = h.connect("offline", "offline", false, 3600).await;
    h.subscribe(&offline, "q", QoS::AtLeastOnce).await;
    h.detach(offline).await;

    // Nobody reads `reader`'s mailbox: 8 fit, 2 are dropped.
    for _ in 0..10 {
        h.publish(message("t", QoS::AtMostOnce, false, b"x")).await;
    }
    // The offline queue holds 3; 2 more are dropped.
    for _ in 0..5 {
        h.publish(message("q", QoS::AtLeastOnce, false, b"x")).await;
    }
    assert_eq!(h.metrics.dropped_total(DropReason::OutboundFull), 2);
    assert_eq!(h.metrics.dropped_total(DropReason::QueueFull), 2);

    let mallory = ArcStr::from("mallory");
    let group = (*message("group/none", QoS::AtLeastOnce, false, b"x")).clone();
    let (refused, _) = h
        .router
        .chat(&mallory, group, None, false)
        .await
        .expect("router");
    assert_eq!(refused.refused, Some(ReasonCode::NotAuthorized));
    assert_eq!(
        h.metrics.publishes_refused_total(PublishRefusal::NotMember),
        1
    );
    let alice = ArcStr::from("alice");
    for _ in 0..2 {
        let mut dm = (*message("dm/bob", QoS::AtLeastOnce, false, b"x")).clone();
        dm.properties
            .user_properties
            .push(("msgid".into(), "m-1".into()));
        let _ = h
            .router
            .chat(&alice, dm, None, false)
            .await
            .expect("router");
    }
    assert_eq!(h.metrics.dropped_total(DropReason::Duplicate), 1);
    assert_eq!(h.metrics.totals().dropped, 5);
    drop(reader);
}

#[tokio::test]
async fn stats_follow_sessions_and_offline_queues() {
    let h = start();
    let stats = |h: &super::Harness| h.router.stats().expect("router");
    assert_eq!(stats(&h), RouterStats::default());
    let c = h.connect("dev", "dev", false, 3600).await;
    h.subscribe(&c, "q/#", QoS::AtLeastOnce).await;
    let _other = h.connect("other", "other", true, 0).await;
    h.publish(message("r/1", QoS::AtLeastOnce, true, b"kept"))
        .await;
    let taken = h.connect("dev", "dev", false, 3600).await; // takes the session over
    assert_eq!(
        stats(&h),
        RouterStats {
            sessions: 2,
            connected: 2,
            subscriptions: 1,
            retained: 1,
            queued: 0,
        }
    );
    h.detach(c).await; // the old connection's goodbye changes nothing
    h.detach(taken).await;
    h.publish(message("q/a", QoS::AtLeastOnce, false, b"1"))
        .await;
    h.publish(message("q/b", QoS::AtLeastOnce, false, b"2"))
        .await;
    let s = stats(&h);
    assert_eq!((s.sessions, s.connected, s.queued), (2, 1, 2));
    // Queued messages survive a restart, and are counted again.
    h.stop().await;
    let h = start_on(h.store.clone());
    let s = stats(&h);
    assert_eq!((s.sessions, s.connected, s.queued), (1, 0, 2));
    // Back online: the backlog is the connection's now.
    let c = h.connect("dev", "dev", false, 3600).await;
    let s = stats(&h);
    assert_eq!((s.connected, s.queued), (1, 0));
    // A session ending while online (clean start elsewhere) is no longer counted.
    let _again = h.connect("dev", "dev", true, 0).await;
    assert_eq!(stats(&h).connected, 1);
    drop(c);
}

fn sys(topic: &str, value: &'static [u8]) -> Arc<Message> {
    message(topic, QoS::AtMostOnce, true, value)
}

#[tokio::test]
async fn sys_topics_are_the_brokers_and_stay_in_memory() {
    let h = start(); // max_retained_messages = 2
    let mut watcher = h.connect("watcher", "watcher", true, 0).await;
    h.subscribe(&watcher, "$SYS/#", QoS::AtLeastOnce).await;
    let mut everything = h.connect("everything", "everything", true, 0).await;
    h.subscribe(&everything, "#", QoS::AtLeastOnce).await;
    // The retained store full of client messages does not keep $SYS out.
    h.publish(message("r/1", QoS::AtMostOnce, true, b"1")).await;
    h.publish(message("r/2", QoS::AtMostOnce, true, b"2")).await;
    assert_eq!(topics(&mut everything.mailbox), ["r/1", "r/2"]);

    let messages = vec![
        sys("$SYS/broker/uptime", b"1 seconds"),
        sys("$SYS/broker/uptime", b"2 seconds"),
        sys("$SYS/broker/clients/connected", b"2"),
        sys("not/sys", b"ignored"),
    ];
    h.router.sys_publish(messages).await.expect("router");
    assert_eq!(h.router.stats().expect("router").retained, 4);
    assert_eq!(
        topics(&mut watcher.mailbox),
        [
            "$SYS/broker/uptime",
            "$SYS/broker/uptime",
            "$SYS/broker/clients/connected"
        ]
    );
    assert!(
        topics(&mut everything.mailbox).is_empty(),
        "'#' does not match $SYS"
    );
    // Retained in memory, for the next subscriber; never written to storage.
    let late = h.connect("late", "late", true, 0).await;
    let reply = h.subscribe(&late, "$SYS/broker/+", QoS::AtMostOnce).await;
    let got: Vec<_> = reply
        .retained
        .iter()
        .map(|d| (d.message.topic.to_string(), d.message.payload.clone()))
        .collect();
    assert_eq!(
        got,
        [(
            "$SYS/broker/uptime".to_string(),
            Bytes::from_static(b"2 seconds")
        )]
    );
    h.writer.barrier().await.expect("applied");
    let stored: Vec<String> = h
        .store
        .retained()
        .expect("retained")
        .into_iter()
        .map(|(topic, _)| topic)
        .collect();
    assert_eq!(stored, ["r/1", "r/2"]);

    // Clients may not publish there, not even by will; other `$` topics are theirs.
    for topic in ["$SYS", "$SYS/broker/uptime"] {
        let forged = message(topic, QoS::AtLeastOnce, true, b"forged");
        let (routed, _) = h.router.publish(&forged, None, true).await.expect("router");
        assert_eq!(routed.refused, Some(ReasonCode::NotAuthorized), "{topic}");
    }
    let dev = h.connect("dev", "dev", false, 60).await;
    h.router
        .detach(Detach {
            session: dev.attached.session,
            conn: dev.attached.conn,
            will: Some(Will {
                message: message("$SYS/broker/version", QoS::AtMostOnce, true, b"forged"),
                delay_secs: 0,
            }),
            expiry_secs: None,
            sent: vec![],
        })
        .await
        .expect("router");
    assert_eq!(
        h.metrics
            .publishes_refused_total(PublishRefusal::SystemTopic),
        3
    );
    assert!(topics(&mut watcher.mailbox).is_empty());
    // The will's session still went offline and was stored as such.
    h.stop().await;
    let stored = h.store.session("dev").expect("read").expect("stored");
    assert!(stored.session.disconnected_at_ms.is_some());

    let h = start();
    let mut dollar = h.connect("dollar", "dollar", true, 0).await;
    h.subscribe(&dollar, "$app/#", QoS::AtMostOnce).await;
    assert!(
        h.publish(message("$app/x", QoS::AtMostOnce, false, b"ok"))
            .await
    );
    assert_eq!(topics(&mut dollar.mailbox), ["$app/x"]);
}

#[tokio::test]
async fn a_stored_sys_message_is_not_loaded() {
    let store = Arc::new(MemoryStore::new());
    let stale = message("$SYS/broker/uptime", QoS::AtMostOnce, true, b"9 seconds");
    let op = Op::PutRetained {
        topic: "$SYS/broker/uptime".into(),
        message: stale.to_stored(),
    };
    store.write(&[op], true).expect("written");
    let h = start_on(store);
    assert_eq!(h.router.stats().expect("router").retained, 0);
}
