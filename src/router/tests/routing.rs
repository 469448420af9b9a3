//! Routing: on the caller's task, in the order callers reach the router; shared and
//! overlapping subscriptions; the retained store; broadcasts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::QoS;
use tern_storage::{MemoryStore, Store};

use super::{message, payloads, request, start, start_on};
use crate::metrics::DropReason;
use crate::router::mailbox::Mailbox;

#[tokio::test]
async fn a_publish_is_delivered_before_the_call_returns() {
    let h = start();
    let mut c = h.connect("dev", "dev", true, 0).await;
    h.subscribe(&c, "chat/#", QoS::AtLeastOnce).await;
    let first = message("chat/a", QoS::AtLeastOnce, false, b"1");
    let (routed, durable) = h.router.publish(&first, None, true).await.expect("router");
    assert!(routed.matched);
    assert_eq!(routed.refused, None);
    // In the mailbox already: no other task ran in between.
    assert_eq!(payloads(&mut c.mailbox), [Bytes::from_static(b"1")]);
    durable.await.expect("durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_made_before_a_publish_from_another_task_gets_it() {
    // The causal order other brokers give: a SUBSCRIBE handled before another client's
    // PUBLISH (here: the subscribe call returned before the publishing task started)
    // matches that PUBLISH, every time, while other traffic runs.
    let h = Arc::new(start());
    let noise = {
        let h = h.clone();
        tokio::spawn(async move {
            loop {
                let _ = h
                    .router
                    .publish(&message("noise", QoS::AtMostOnce, false, b"n"), None, false)
                    .await;
                tokio::task::yield_now().await;
            }
        })
    };
    for round in 0..300 {
        let topic = format!("causal/{round}");
        let mut c = h.connect("sub", &format!("sub-{round}"), true, 0).await;
        h.subscribe(&c, &topic, QoS::AtMostOnce).await;
        let publisher = {
            let h = h.clone();
            let m = Arc::new(crate::protocol::Message {
                topic: topic.as_str().into(),
                ..(*message("x", QoS::AtMostOnce, false, b"m")).clone()
            });
            tokio::spawn(async move { h.router.publish(&m, None, false).await.expect("router").0 })
        };
        assert!(publisher.await.expect("publisher").matched, "round {round}");
        assert_eq!(payloads(&mut c.mailbox).len(), 1, "round {round}");
        h.detach(c).await;
    }
    noise.abort();
}

#[tokio::test]
async fn shared_subscription_gives_each_message_to_one_member() {
    let h = start();
    let mut a = h.connect("a", "a", true, 0).await;
    let mut b = h.connect("b", "b", true, 0).await;
    h.subscribe(&a, "$share/g/jobs", QoS::AtMostOnce).await;
    h.subscribe(&b, "$share/g/jobs", QoS::AtMostOnce).await;
    for _ in 0..4 {
        h.publish(message("jobs", QoS::AtMostOnce, false, b"j"))
            .await;
    }
    let count = |mailbox: &mut Mailbox| std::iter::from_fn(|| mailbox.pop_chat()).count();
    assert_eq!((count(&mut a.mailbox), count(&mut b.mailbox)), (2, 2));
    // An offline member is passed over while another is online.
    let c = h.connect("c", "c", false, 60).await;
    h.subscribe(&c, "$share/g/jobs", QoS::AtLeastOnce).await;
    h.detach(c).await;
    for _ in 0..3 {
        h.publish(message("jobs", QoS::AtLeastOnce, false, b"j"))
            .await;
    }
    assert_eq!(count(&mut a.mailbox) + count(&mut b.mailbox), 3);
    assert!(h.store.queue("c", 0, 10).expect("queue").is_empty());
}

#[tokio::test]
async fn overlapping_subscriptions_of_several_sessions_give_each_one_copy() {
    let h = start();
    let mut clients = Vec::new();
    for id in ["a", "b", "c", "d"] {
        let c = h.connect(id, id, true, 0).await;
        h.subscribe(&c, "t/#", QoS::AtMostOnce).await;
        clients.push(c);
    }
    // Two of them also through `t/+`, one at a higher QoS: their matches interleave with
    // the others' and must still be merged, one copy at the highest QoS.
    h.subscribe(&clients[1], "t/+", QoS::AtLeastOnce).await;
    h.subscribe(&clients[3], "t/+", QoS::AtMostOnce).await;
    h.publish(message("t/x", QoS::AtLeastOnce, false, b"m"))
        .await;
    let received: Vec<Vec<QoS>> = clients
        .iter_mut()
        .map(|c| {
            std::iter::from_fn(|| c.mailbox.pop_chat())
                .map(|d| d.qos)
                .collect()
        })
        .collect();
    use QoS::{AtLeastOnce, AtMostOnce};
    assert_eq!(
        received,
        [
            vec![AtMostOnce],
            vec![AtLeastOnce],
            vec![AtMostOnce],
            vec![AtMostOnce]
        ]
    );
}

#[tokio::test]
async fn retained_store_replace_delete_and_limit_survive_reload() {
    let store = Arc::new(MemoryStore::new());
    let h = start_on(store.clone());
    h.publish(message("r/1", QoS::AtLeastOnce, true, b"old"))
        .await;
    h.publish(message("r/1", QoS::AtLeastOnce, true, b"new"))
        .await;
    h.publish(message("r/2", QoS::AtLeastOnce, true, b"two"))
        .await;
    // The store holds at most 2 topics: a third is delivered but not retained.
    h.publish(message("r/3", QoS::AtLeastOnce, true, b"three"))
        .await;
    h.publish(message("r/2", QoS::AtLeastOnce, true, b"")).await;
    h.stop().await;
    let h = start_on(store);
    let c = h.connect("viewer", "viewer", true, 0).await;
    let reply = h.subscribe(&c, "r/#", QoS::AtLeastOnce).await;
    let got: Vec<_> = reply
        .retained
        .iter()
        .map(|d| {
            (
                d.message.topic.to_string(),
                d.message.payload.clone(),
                d.retain,
            )
        })
        .collect();
    assert_eq!(got, [("r/1".to_string(), Bytes::from_static(b"new"), true)]);
    // An operator's delete: stored, and answered once durable.
    let durable = h
        .router
        .delete_retained("r/1")
        .await
        .expect("router")
        .expect("there was one");
    durable.await.expect("durable");
    assert!(h
        .router
        .delete_retained("r/1")
        .await
        .expect("router")
        .is_none());
    assert!(h.store.retained().expect("retained").is_empty());
}

#[tokio::test]
async fn full_broadcast_lanes_are_counted() {
    let h = start();
    // A broadcast lane of 1 that is never read.
    let slow = h.connect_with(request("slow", "slow", true, 0, 8, 1)).await;
    h.subscribe(&slow, "broadcast/news", QoS::AtMostOnce).await;
    let permits = Arc::new(tokio::sync::Semaphore::new(4));
    for _ in 0..3 {
        let permit = permits.clone().acquire_owned().await.expect("permit");
        let m = message("broadcast/news", QoS::AtMostOnce, false, b"x");
        let _ = h
            .router
            .broadcast(&m, None, permit, false)
            .await
            .expect("router");
    }
    // The fan-out runs on its own task.
    tokio::time::timeout(Duration::from_secs(5), async {
        while h.metrics.dropped_total(DropReason::BroadcastLaneFull) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("two broadcasts dropped");
    assert_eq!(h.metrics.dropped_total(DropReason::BroadcastLaneFull), 2);
}
