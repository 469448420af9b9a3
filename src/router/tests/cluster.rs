//! The router as one node of a cluster, without NATS: what it forwards, the interest it
//! reports, and how it delivers a message another node routed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::QoS;
use tern_storage::MemoryStore;
use tokio::sync::mpsc;

use super::{limits, message, payloads, start, start_node};
use tern_storage::StorageError;

use crate::im::inbox::{user_property, FROM};
use crate::im::topics::{ROLE_RECEIVED, ROLE_SENT};
use crate::router::{InboxAppend, Interest, NodeLease, Peers, RouterLimits};

fn node() -> (
    super::Harness,
    mpsc::Receiver<crate::router::Forward>,
    Arc<Interest>,
) {
    let node = node_with_inbox();
    (node.h, node.forwarded, node.interest)
}

/// A router as a cluster node, and its side of the link.
struct Node {
    h: super::Harness,
    forwarded: mpsc::Receiver<crate::router::Forward>,
    interest: Arc<Interest>,
    appends: mpsc::Receiver<InboxAppend>,
    lease: Arc<NodeLease>,
}

/// A node holding its lease for an hour.
fn node_with_inbox() -> Node {
    let (forward, forwarded) = mpsc::channel(16);
    let (inbox, appends) = mpsc::channel(16);
    let (changes, mut changed) = mpsc::channel(16);
    // The cluster's writer of session copies, as far as the router sees it: an awaited
    // change (a SUBACK's) is answered as written.
    tokio::spawn(async move {
        while let Some(change) = changed.recv().await {
            if let crate::router::SessionChange::Stored {
                written: Some(written),
                ..
            } = change
            {
                let _ = written.send(Ok(()));
            }
        }
    });
    let sessions = crate::router::SessionChanges::new(changes);
    let interest = Arc::new(Interest::default());
    let lease = Arc::new(NodeLease::default());
    lease.extend(Instant::now(), Duration::from_secs(3_600));
    let peers = Peers {
        forward,
        interest: interest.clone(),
        inbox,
        lease: lease.clone(),
        sessions,
    };
    let limits = RouterLimits {
        cluster: true,
        ..limits()
    };
    let h = start_node(limits, Arc::new(MemoryStore::new()), Some(peers));
    Node {
        h,
        forwarded,
        interest,
        appends,
        lease,
    }
}

/// A node whose lease lapsed (stopped, or cut off from NATS) acts for no client: it
/// attaches, routes, delivers and forwards nothing, while connections' ends and the
/// cluster's retained messages are still taken in.
#[tokio::test]
async fn a_node_without_its_lease_routes_delivers_and_attaches_nothing() {
    let Node {
        h,
        mut forwarded,
        lease,
        ..
    } = node_with_inbox();
    let mut one = h.connect("u1", "one", false, 60).await;
    h.subscribe(&one, "a/#", QoS::AtLeastOnce).await;
    lease.lapse();
    assert!(!lease.holds());
    let m = message("a/b", QoS::AtLeastOnce, false, b"late");
    assert!(h.router.publish(&m, None, false).await.is_err());
    assert!(h
        .router
        .publish_remote(&m, Some("a/#"), None)
        .await
        .is_err());
    assert!(payloads(&mut one.mailbox).is_empty(), "nothing delivered");
    assert!(forwarded.try_recv().is_err(), "nothing forwarded");
    let from = arcstr::ArcStr::from("u1");
    let dm = Arc::unwrap_or_clone(message("dm/u2", QoS::AtLeastOnce, false, b"x"));
    assert!(h.router.chat(&from, dm, None, true).await.is_err());
    let (postbox, _mailbox) = crate::router::mailbox::mailbox(16, 4);
    let refused = h
        .router
        .connect(crate::router::ConnectRequest {
            client_id: "two".into(),
            user: "u2".into(),
            clean_start: true,
            expiry_secs: 0,
            protocol: tern_codec::Protocol::V5,
            postbox,
        })
        .await;
    assert!(refused.is_err(), "no CONNECT attached");
    let retained = message("r/1", QoS::AtMostOnce, true, b"kept");
    h.router
        .retain_remote(retained)
        .await
        .expect("the cluster's retained messages are applied");
    let ended = h
        .router
        .detach(crate::router::Detach {
            session: one.attached.session,
            conn: one.attached.conn,
            will: None,
            expiry_secs: None,
            sent: Vec::new(),
        })
        .await;
    assert!(matches!(ended, Ok(true)), "{ended:?}");
    // Held again, it routes again.
    lease.extend(Instant::now(), Duration::from_secs(60));
    assert!(h.router.publish(&m, None, false).await.is_ok());
    assert!(forwarded.try_recv().is_ok());
}

/// On a cluster node a chat message is numbered by the cluster's inbox logs, not here: the
/// router hands over its recipients, delivers nothing itself, and its acknowledgement waits
/// for the logs' answer.
#[tokio::test]
async fn chat_goes_to_the_clusters_inbox_logs_and_waits_for_them() {
    let Node {
        h,
        mut forwarded,
        mut appends,
        ..
    } = node_with_inbox();
    let from = arcstr::ArcStr::from("alice");
    let mut dm = Arc::unwrap_or_clone(message("dm/bob", QoS::AtLeastOnce, false, b"hi"));
    dm.properties
        .user_properties
        .push(("msgid".into(), "m-1".into()));
    let (routed, durable) = h
        .router
        .chat(&from, dm.clone(), None, true)
        .await
        .expect("router");
    assert!(routed.refused.is_none());
    let append = appends.try_recv().expect("handed to the inbox logs");
    assert_eq!(
        append.plan.recipients,
        [
            ("bob".to_string(), ROLE_RECEIVED),
            ("alice".to_string(), ROLE_SENT)
        ]
    );
    assert_eq!(append.plan.msgid.as_deref(), Some("m-1"));
    assert_eq!(user_property(&append.plan.message, FROM), Some("alice"));
    let mut durable = std::pin::pin!(durable);
    assert!(
        futures_util::poll!(durable.as_mut()).is_pending(),
        "not acknowledged before the logs answer"
    );
    append
        .done
        .send(Err(StorageError::Elsewhere {
            what: "down".into(),
        }))
        .expect("waiting");
    assert!(
        durable.await.is_err(),
        "a failed append is not acknowledged"
    );
    assert!(forwarded.try_recv().is_err(), "chat is not forwarded live");
    // A resend is the logs' to recognise: the node hands it over again.
    let _resent = h.router.chat(&from, dm, None, true).await.expect("router");
    assert!(appends.try_recv().is_ok());
    // A group the sender is not a member of is refused here.
    let group = Arc::unwrap_or_clone(message("group/g1", QoS::AtLeastOnce, false, b"x"));
    let (routed, _) = h
        .router
        .chat(&from, group, None, true)
        .await
        .expect("router");
    assert!(routed.refused.is_some());
    assert!(appends.try_recv().is_err());
}

#[tokio::test]
async fn plain_messages_and_broadcasts_are_forwarded_chat_and_sys_are_not() {
    let (h, mut forwarded, _) = node();
    for (topic, kept) in [("sensors/1", true), ("broadcast/news", false)] {
        let (_, durable) = h
            .router
            .publish(&message(topic, QoS::AtLeastOnce, false, b"x"), None, true)
            .await
            .expect("router");
        let forward = forwarded.try_recv().expect("forwarded");
        assert_eq!(&*forward.message.topic, topic);
        // A plain QoS 1 message is acknowledged once the cluster keeps it.
        assert_eq!(forward.kept.is_some(), kept, "{topic}");
        if let Some(kept) = forward.kept {
            assert_eq!(kept.append.number(), 0, "the node's first append");
            kept.done.send(Ok(())).expect("waited on");
        }
        durable.await.expect("durable");
    }
    let (_, durable) = h
        .router
        .publish(
            &message("sensors/2", QoS::AtLeastOnce, false, b"x"),
            None,
            true,
        )
        .await
        .expect("router");
    let kept = forwarded.try_recv().expect("forwarded").kept.expect("kept");
    assert_eq!(
        kept.append.number(),
        1,
        "numbered in routing order, broadcasts not counted"
    );
    kept.done
        .send(Err(tern_storage::StorageError::Elsewhere {
            what: "no quorum".into(),
        }))
        .expect("waited on");
    assert!(
        durable.await.is_err(),
        "not acknowledged when the cluster cannot keep it"
    );
    let refused = h
        .router
        .publish(
            &message("$SYS/x", QoS::AtMostOnce, false, b"x"),
            None,
            false,
        )
        .await
        .expect("router")
        .0;
    assert!(refused.refused.is_some());
    assert!(forwarded.try_recv().is_err(), "$SYS stays on its node");
}

#[tokio::test]
async fn a_forwarded_message_counts_as_matched_without_local_subscribers() {
    let (h, _forwarded, _) = node();
    let (routed, _) = h
        .router
        .publish(
            &message("nobody/here", QoS::AtLeastOnce, false, b"x"),
            None,
            true,
        )
        .await
        .expect("router");
    assert!(routed.matched, "another node may have subscribers");
}

#[tokio::test]
async fn interest_follows_the_first_and_last_subscription_of_each_filter() {
    let (h, _forwarded, interest) = node();
    let one = h.connect("u1", "one", true, 0).await;
    let two = h.connect("u2", "two", true, 0).await;
    h.subscribe(&one, "a/#", QoS::AtMostOnce).await;
    h.subscribe(&two, "a/#", QoS::AtMostOnce).await;
    h.subscribe(&two, "$share/g/b/+", QoS::AtMostOnce).await;
    let (mut changes, first) = interest.next().await;
    changes.sort();
    assert_eq!(
        changes,
        [("$share/g/b/+".into(), true), ("a/#".into(), true)]
    );
    // The second subscriber leaving keeps the filter; the last one drops it.
    h.detach(two).await;
    let (changes, second) = interest.next().await;
    assert_eq!(changes, [("$share/g/b/+".into(), false)]);
    assert!(second > first, "each record is a generation");
    // Settled once the link applied what was recorded, not before.
    interest.applied(first);
    let settled = tokio::time::timeout(Duration::from_millis(50), interest.settled()).await;
    assert!(
        settled.is_err(),
        "settled before the second change was applied"
    );
    interest.applied(second);
    tokio::time::timeout(Duration::from_secs(5), interest.settled())
        .await
        .expect("settled once applied");
    h.detach(one).await;
    assert_eq!(interest.next().await.0, [("a/#".into(), false)]);
}

#[tokio::test]
async fn a_remote_message_is_delivered_once_through_its_smallest_matching_filter() {
    let h = start();
    let mut one = h.connect("u1", "one", true, 0).await;
    h.subscribe(&one, "a/+", QoS::AtLeastOnce).await;
    let mut two = h.connect("u2", "two", true, 0).await;
    h.subscribe(&two, "a/#", QoS::AtLeastOnce).await;
    h.subscribe(&two, "a/b", QoS::AtLeastOnce).await;
    let m = message("a/b", QoS::AtLeastOnce, false, b"r");
    // The copies NATS hands over for the other matching filters, and a stale one.
    for via in ["a/+", "a/b", "x/#"] {
        h.router
            .publish_remote(&m, Some(via), None)
            .await
            .expect("router");
    }
    assert!(payloads(&mut one.mailbox).is_empty());
    assert!(payloads(&mut two.mailbox).is_empty());
    h.router
        .publish_remote(&m, Some("a/#"), None)
        .await
        .expect("router");
    assert_eq!(payloads(&mut one.mailbox), [Bytes::from_static(b"r")]);
    assert_eq!(payloads(&mut two.mailbox), [Bytes::from_static(b"r")]);
}
