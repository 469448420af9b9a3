//! Sessions: persistence, takeover, clean start, expiry and wills, users' devices.

use std::sync::Arc;

use arcstr::ArcStr;
use bytes::Bytes;
use tern_codec::{QoS, ReasonCode};
use tern_storage::Store;

use super::{message, request, start};
use crate::protocol::handshake::Will;
use crate::router::Detach;

#[tokio::test]
async fn offline_persistent_session_queues_durably_and_in_order() {
    let h = start();
    let c = h.connect("dev", "dev", false, 3600).await;
    h.subscribe(&c, "chat/#", QoS::AtLeastOnce).await;
    h.detach(c).await;
    for payload in [&b"1"[..], b"2", b"3"] {
        let m = Arc::new(crate::protocol::Message {
            payload: Bytes::copy_from_slice(payload),
            ..(*message("chat/a", QoS::ExactlyOnce, false, b"")).clone()
        });
        assert!(h.publish(m).await);
    }
    // Acknowledged means stored: the durable resolved after the writes.
    let queued = h.store.queue("dev", 0, 10).unwrap();
    let payloads: Vec<_> = queued
        .iter()
        .map(|(_, q)| q.message.payload.clone())
        .collect();
    assert_eq!(payloads, [&b"1"[..], b"2", b"3"]);
    assert!(queued.iter().all(|(_, q)| q.message.qos == 1), "min(2, 1)");
    // A fourth exceeds max_queued_messages (3) and is dropped, not stored.
    h.publish(message("chat/a", QoS::AtLeastOnce, false, b"4"))
        .await;
    assert_eq!(h.store.queue("dev", 0, 10).unwrap().len(), 3);
    // Reconnecting resumes the session and points at the stored backlog.
    let c = h.connect("dev", "dev", false, 3600).await;
    assert!(c.attached.session_present);
    assert_eq!(c.attached.backlog_upto, Some(3));
}

#[tokio::test]
async fn non_persistent_sessions_store_nothing_and_end_with_the_connection() {
    let h = start();
    let mut c = h.connect("tmp", "tmp", true, 0).await;
    h.subscribe(&c, "t", QoS::AtLeastOnce).await;
    assert!(h.publish(message("t", QoS::AtLeastOnce, false, b"x")).await);
    assert!(matches!(c.mailbox.recv_chat().await, Some(d) if d.seq.is_none()));
    assert!(h.store.sessions().unwrap().is_empty());
    h.detach(c).await;
    assert!(!h.publish(message("t", QoS::AtLeastOnce, false, b"y")).await);
}

#[tokio::test]
async fn takeover_closes_the_old_connection_and_keeps_the_session() {
    let h = start();
    let mut first = h.connect("dev", "dev", false, 60).await;
    h.subscribe(&first, "t", QoS::AtMostOnce).await;
    let mut second = h.connect("dev", "dev", false, 60).await;
    assert_eq!(
        first.mailbox.closed().await.code,
        ReasonCode::SessionTakenOver
    );
    assert!(second.attached.session_present);
    // The old connection's late goodbye must not take the session offline.
    h.detach(first).await;
    assert!(h.publish(message("t", QoS::AtMostOnce, false, b"x")).await);
    assert!(second.mailbox.recv_chat().await.is_some());
}

#[tokio::test]
async fn sessions_are_found_by_client_id_as_the_index_grows_and_shrinks() {
    let h = start();
    let ids: Vec<String> = (0..200).map(|i| format!("dev-{i}")).collect();
    for id in &ids {
        let c = h.connect(id, id, false, 60).await;
        h.detach(c).await;
    }
    // Every other session ends: a clean start without expiry replaces it, and its
    // detach removes it.
    for id in ids.iter().step_by(2) {
        let c = h.connect(id, id, true, 0).await;
        assert!(!c.attached.session_present, "{id}");
        h.detach(c).await;
    }
    for (i, id) in ids.iter().enumerate() {
        let c = h.connect(id, id, false, 60).await;
        assert_eq!(c.attached.session_present, i % 2 == 1, "{id}");
        h.detach(c).await;
    }
}

#[tokio::test]
async fn clean_start_discards_the_stored_session() {
    let h = start();
    let c = h.connect("dev", "dev", false, 60).await;
    h.subscribe(&c, "t", QoS::AtLeastOnce).await;
    h.detach(c).await;
    h.publish(message("t", QoS::AtLeastOnce, false, b"x")).await;
    let c = h.connect("dev", "dev", true, 60).await;
    assert!(!c.attached.session_present);
    h.stop().await;
    // Stored state was replaced: no queue, no subscriptions.
    let stored = h.store.session("dev").unwrap().expect("new session stored");
    assert!(stored.session.subscriptions.is_empty());
    assert!(h.store.queue("dev", 0, 10).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn expired_session_is_removed_and_its_delayed_will_published() {
    let h = start();
    let mut watcher = h.connect("watcher", "watcher", true, 0).await;
    h.subscribe(&watcher, "will/#", QoS::AtMostOnce).await;
    let c = h.connect("dev", "dev", false, 5).await;
    h.router
        .detach(Detach {
            session: c.attached.session,
            conn: c.attached.conn,
            will: Some(Will {
                message: message("will/dev", QoS::AtMostOnce, false, b"gone"),
                delay_secs: 3600,
            }),
            expiry_secs: None,
            sent: vec![],
        })
        .await
        .unwrap();
    // The will waits for min(delay, expiry) = 5 s; paused time jumps there, and the timer
    // task fires it.
    let Some(will) = watcher.mailbox.recv_chat().await else {
        panic!("will not published")
    };
    assert_eq!(will.message.payload, Bytes::from_static(b"gone"));
    let c = h.connect("dev", "dev", false, 5).await;
    assert!(!c.attached.session_present, "session expired with its will");
}

#[tokio::test]
async fn a_users_devices_share_one_copy_of_its_name() {
    let h = start();
    let phone = h.connect("bob", "bob-phone", true, 0).await;
    let laptop = h.connect("bob", "bob-laptop", true, 0).await;
    let alice = h.connect("alice", "alice-phone", true, 0).await;
    assert_eq!(&*laptop.attached.user, "bob");
    assert!(ArcStr::ptr_eq(&phone.attached.user, &laptop.attached.user));
    assert!(!ArcStr::ptr_eq(&phone.attached.user, &alice.attached.user));
    // Taking a session over hands back the same name too.
    let phone_again = h.connect("bob", "bob-phone", false, 0).await;
    assert!(ArcStr::ptr_eq(
        &phone_again.attached.user,
        &laptop.attached.user
    ));
}

#[tokio::test]
async fn the_oldest_device_is_closed_past_the_limit() {
    let h = start(); // max_devices_per_user = 2
    let mut first = h.connect("bob", "one", true, 0).await;
    let mut second = h.connect("bob", "two", true, 0).await;
    let _other = h.connect("alice", "three", true, 0).await;
    assert!(first.mailbox.try_closed().is_none());
    let _third = h.connect("bob", "four", true, 0).await;
    let close = first.mailbox.closed().await;
    assert_eq!(close.code, ReasonCode::AdministrativeAction);
    assert!(close.reason.contains("bob"), "{}", close.reason);
    assert!(
        second.mailbox.try_closed().is_none(),
        "only the oldest goes"
    );
}

#[tokio::test]
async fn another_users_client_id_is_refused() {
    let h = start();
    let _bob = h.connect("bob", "phone", false, 3600).await;
    let (request, _mailbox) = request("mallory", "phone", true, 0, 1, 1);
    let attached = h.router.connect(request).await.expect("router");
    assert_eq!(attached.err(), Some(ReasonCode::NotAuthorized));
}

#[tokio::test]
async fn after_shutdown_every_connection_is_closed_and_nothing_is_routed() {
    let h = start();
    let mut c = h.connect("dev", "dev", true, 0).await;
    h.subscribe(&c, "t", QoS::AtMostOnce).await;
    h.router.shutdown();
    assert_eq!(
        c.mailbox.closed().await.code,
        ReasonCode::ServerShuttingDown
    );
    assert!(h
        .router
        .publish(&message("t", QoS::AtMostOnce, false, b"x"), None, false)
        .await
        .is_err());
    assert!(h.router.stats().is_err());
    tokio::time::timeout(std::time::Duration::from_secs(5), h.router.closed())
        .await
        .expect("closed resolves");
}
