//! The synchronous core alone, with the protocol's sessions around it: no task, no socket,
//! no storage but the operations a handler leaves in its outcome. [`Pair`] plays two
//! connections (a publisher and a subscriber, each a `protocol::Session` and a mailbox)
//! against one router, the way the connection driver does, one step at a time.

use std::sync::Arc;

use tern_codec::{Packet, PubResponse, QoS, ReasonCode};
use tern_storage::{MemoryStore, Op};

use super::{filters, limits, message, request};
use crate::metrics::Metrics;
use crate::protocol::outgoing::Transmit;
use crate::protocol::session::{test_publish, test_session, Effect, Session};
use crate::router::mailbox::Mailbox;
use crate::router::{Outcome, Router};

fn router() -> Router {
    Router::load(limits(), &MemoryStore::new(), Arc::new(Metrics::new())).expect("load")
}

/// One side of a [`Pair`]: what a connection holds.
struct End {
    session: Session,
    mailbox: Mailbox,
}

/// A publisher and a subscriber connected to one router core.
struct Pair {
    router: Router,
    publisher: End,
    subscriber: End,
    /// The storage operations every step left, in order.
    writes: Vec<Op>,
}

impl Pair {
    fn new(subscriber_persistent: bool) -> Pair {
        let mut router = router();
        let mut end = |client: &str, expiry: u32| {
            let (request, mailbox) = request(client, client, true, expiry, 8, 8);
            let mut out = Outcome::default();
            let attached = router.connect(request, &mut out).expect("attached");
            let session = test_session(attached.session, 2, 100, expiry > 0);
            (End { session, mailbox }, out.ops)
        };
        let (publisher, mut writes) = end("pub", 0);
        let (subscriber, more) = end("sub", if subscriber_persistent { 60 } else { 0 });
        writes.extend(more);
        Pair {
            router,
            publisher,
            subscriber,
            writes,
        }
    }

    /// A packet from the publisher's client, through its session and the router, the
    /// way the connection driver carries out the session's effects. Returns the
    /// acknowledgement's reason, when there is one.
    fn client_sends(&mut self, packet: Packet) -> Option<ReasonCode> {
        self.publisher
            .session
            .handle_packet(packet, 0)
            .expect("valid");
        let mut acked = None;
        while let Some(effect) = self.publisher.session.poll_effect() {
            if let Effect::Publish { message, ack } = effect {
                let mut out = Outcome::default();
                let routed = self.router.publish(&message, &mut out);
                self.carry_out(out);
                if let Some((packet_id, qos)) = ack {
                    let reason = routed.refused.unwrap_or(if routed.matched {
                        ReasonCode::Success
                    } else {
                        ReasonCode::NoMatchingSubscribers
                    });
                    self.publisher
                        .session
                        .publish_done(packet_id, qos, reason)
                        .expect("acknowledged");
                    acked = Some(reason);
                }
            }
        }
        acked
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<ReasonCode> {
        let session = self.subscriber.session.params().id;
        let mut out = Outcome::default();
        let reply = self
            .router
            .subscribe(session, filters(&[(filter, qos)]), &mut out);
        self.carry_out(out);
        reply.reasons
    }

    /// What the handle does with an outcome: writes first, then the deliveries that
    /// waited for them.
    fn carry_out(&mut self, out: Outcome) {
        self.writes.extend(out.ops);
        self.router.hand_over_stored(out.stored);
    }

    /// What the subscriber's client receives: its mailbox into its session, the packets
    /// out, each PUBLISH acknowledged as a client would.
    fn subscriber_receives(&mut self) -> Vec<(String, QoS, Option<u64>)> {
        let mut got = Vec::new();
        while let Some(delivery) = self.subscriber.mailbox.pop_chat() {
            let seq = delivery.seq;
            self.subscriber.session.deliver(delivery, 0).expect("room");
            while let Some(transmit) = self.subscriber.session.poll_transmit() {
                let Transmit::Publish(publish) = transmit else {
                    continue;
                };
                got.push((publish.message.topic.to_string(), publish.qos, seq));
                if publish.qos == QoS::AtLeastOnce {
                    let ack = Packet::PubAck(PubResponse::new(publish.packet_id));
                    self.subscriber
                        .session
                        .handle_packet(ack, 0)
                        .expect("valid");
                }
            }
        }
        got
    }
}

fn publish(topic: &str, qos: QoS, packet_id: u16) -> Packet {
    Packet::Publish(test_publish(topic, qos, packet_id))
}

#[test]
fn a_publish_travels_from_one_session_through_the_core_to_another() {
    let mut pair = Pair::new(false);
    assert_eq!(
        pair.subscribe("chat/+", QoS::AtLeastOnce),
        [ReasonCode::GrantedQoS1]
    );
    assert_eq!(
        pair.client_sends(publish("chat/a", QoS::AtLeastOnce, 1)),
        Some(ReasonCode::Success)
    );
    assert_eq!(
        pair.client_sends(publish("other", QoS::AtLeastOnce, 2)),
        Some(ReasonCode::NoMatchingSubscribers)
    );
    assert_eq!(
        pair.client_sends(publish("chat/b", QoS::AtMostOnce, 0)),
        None
    );
    assert_eq!(
        pair.subscriber_receives(),
        [
            ("chat/a".to_string(), QoS::AtLeastOnce, None),
            ("chat/b".to_string(), QoS::AtMostOnce, None),
        ]
    );
    assert!(
        pair.writes.is_empty(),
        "nothing persistent: nothing written"
    );
}

#[test]
fn a_persistent_subscriber_gets_its_delivery_only_after_the_enqueue_is_written() {
    let mut pair = Pair::new(true);
    pair.subscribe("t", QoS::AtLeastOnce);
    pair.writes.clear();
    pair.publisher
        .session
        .handle_packet(publish("t", QoS::AtLeastOnce, 1), 0)
        .expect("valid");
    let Some(Effect::Publish { message, .. }) = pair.publisher.session.poll_effect() else {
        panic!("a publish effect")
    };
    let mut out = Outcome::default();
    assert!(pair.router.publish(&message, &mut out).matched);
    // Decided, not yet carried out: the delivery waits in the outcome for its write.
    assert!(matches!(&out.ops[..], [Op::Enqueue { client_id, seq: 0, .. }] if client_id == "sub"));
    assert_eq!(out.stored.len(), 1);
    assert!(pair.subscriber.mailbox.pop_chat().is_none());
    pair.carry_out(out);
    assert_eq!(
        pair.subscriber_receives(),
        [("t".to_string(), QoS::AtLeastOnce, Some(0))]
    );
    // The subscriber's acknowledgement asks for the dequeue, after the enqueue.
    let effects: Vec<_> = std::iter::from_fn(|| pair.subscriber.session.poll_effect()).collect();
    assert!(matches!(effects[..], [Effect::Dequeue(0)]), "{effects:?}");
}

#[test]
fn a_subscription_takes_effect_for_the_very_next_publish() {
    let mut pair = Pair::new(false);
    // As many as a session may hold (`max_subscriptions_per_session`).
    for round in 0..10 {
        let topic = format!("t/{round}");
        pair.subscribe(&topic, QoS::AtMostOnce);
        pair.client_sends(publish(&topic, QoS::AtMostOnce, 0));
        assert_eq!(pair.subscriber_receives().len(), 1, "round {round}");
    }
}

#[test]
fn timers_fire_only_when_due_and_a_detach_schedules_them() {
    use std::time::Duration;
    use tokio::time::Instant;

    let mut router = router();
    let (dev, _mailbox) = request("dev", "dev", true, 10, 8, 8);
    let mut out = Outcome::default();
    let attached = router.connect(dev, &mut out).expect("attached");
    let now = Instant::now();
    let will = crate::protocol::handshake::Will {
        message: message("will/dev", QoS::AtMostOnce, false, b"gone"),
        delay_secs: 3,
    };
    let detach = crate::router::Detach {
        session: attached.session,
        conn: attached.conn,
        will: Some(will),
        expiry_secs: None,
        sent: vec![],
    };
    let mut out = Outcome::default();
    router.detach(detach, now, &mut out);
    assert!(out.timers_changed, "the timer task must look again");
    let (watcher_request, mut watcher) = request("w", "w", true, 0, 8, 8);
    let mut out = Outcome::default();
    let w = router.connect(watcher_request, &mut out).expect("attached");
    router.subscribe(w.session, filters(&[("will/#", QoS::AtMostOnce)]), &mut out);
    assert_eq!(router.next_timer(), Some(now + Duration::from_secs(3)));
    let mut out = Outcome::default();
    router.fire_timers(now + Duration::from_secs(2), &mut out);
    assert!(watcher.pop_chat().is_none(), "not due yet");
    router.fire_timers(now + Duration::from_secs(3), &mut out);
    assert_eq!(
        watcher.pop_chat().map(|d| d.message.topic.to_string()),
        Some("will/dev".to_string())
    );
    assert_eq!(
        router.next_timer(),
        Some(now + Duration::from_secs(10)),
        "the expiry is next"
    );
    router.fire_timers(now + Duration::from_secs(10), &mut out);
    assert_eq!(router.stats().sessions, 1, "the expired session is gone");
}
