//! Conformance: publish/subscribe semantics over real sockets, MQTT 3.1.1 and 5.0.
//!
//! Topic filters and wildcards (spec 4.7), SUBSCRIBE/SUBACK and UNSUBSCRIBE/UNSUBACK
//! (3.8 to 3.11), overlapping subscriptions (3.3.4), the MQTT 5 subscription options (No
//! Local, Retain As Published, Retain Handling, Subscription Identifiers: 3.8.3.1, 3.3.4),
//! shared subscriptions (4.8.2), the QoS 0/1/2 flows and QoS downgrade (4.3, 3.8.4), QoS 2
//! exactly-once on a resent PUBLISH (4.3.3), per-topic ordering (4.6), the MQTT 5 Receive
//! Maximum towards a client (3.3.4, 4.9), retained messages (3.3.1.3) and the PUBACK reason
//! 0x10 No matching subscribers (3.4.2.1).
//!
//! Exact packet sequences use [`RawClient`] through the [`Peer`] helper below; the QoS flows
//! and ordering also run with rumqttc, a real client. "Nothing more is delivered" is always
//! checked after a positive control: a marker message published afterwards must arrive, and
//! then the connection must stay quiet for [`QUIET`].

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use tern_codec::{
    ByteString, Packet, Properties, PropertyFields, Protocol, PubResponse, Publish, QoS,
    ReasonCode, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe,
};
use tern_conformance::{granted, next_v4, next_v5, v4_options, v5_options, Broker, RawClient};

/// How long a connection must stay silent for "nothing (more) is delivered".
const QUIET: Duration = Duration::from_millis(300);

const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

// ------------------------------------------------------------------------------------------
// Raw-client helpers
// ------------------------------------------------------------------------------------------

/// A [`RawClient`] that completes handshakes and QoS flows, keeping packets that arrive
/// while it waits for a specific one (a PUBLISH before a SUBACK, say) for later reads.
struct Peer {
    raw: RawClient,
    stash: VecDeque<Packet>,
    last_id: u16,
    name: String,
}

impl Peer {
    async fn connect(broker: &Broker, protocol: Protocol, client_id: &str) -> Peer {
        Self::connect_with(broker, protocol, client_id, Properties::default()).await
    }

    async fn connect_with(
        broker: &Broker,
        protocol: Protocol,
        client_id: &str,
        properties: Properties,
    ) -> Peer {
        let (raw, ack) = RawClient::open(broker.addr, protocol, client_id, true, |c| {
            c.properties = properties
        })
        .await;
        assert_eq!(ack.code, ReasonCode::Success, "CONNACK of {client_id}");
        Peer {
            raw,
            stash: VecDeque::new(),
            last_id: 0,
            name: client_id.to_string(),
        }
    }

    fn packet_id(&mut self) -> u16 {
        self.last_id = self.last_id.wrapping_add(1).max(1);
        self.last_id
    }

    async fn send(&mut self, packet: Packet) {
        self.raw.send(packet).await;
    }

    async fn recv_raw(&mut self) -> Packet {
        match self.raw.recv().await {
            Some(packet) => packet,
            None => panic!("{}: broker closed the connection", self.name),
        }
    }

    /// The next packet (stashed ones first).
    async fn next(&mut self) -> Packet {
        match self.stash.pop_front() {
            Some(packet) => packet,
            None => self.recv_raw().await,
        }
    }

    /// The next packet, or None if nothing arrives within `limit`.
    async fn next_within(&mut self, limit: Duration) -> Option<Packet> {
        if let Some(packet) = self.stash.pop_front() {
            return Some(packet);
        }
        match self.raw.recv_within(limit).await {
            Ok(Some(packet)) => Some(packet),
            Ok(None) => panic!("{}: broker closed the connection", self.name),
            Err(()) => None,
        }
    }

    /// The first packet `pick` accepts; the others are stashed for later reads.
    async fn wait_for<T>(&mut self, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
        if let Some(pos) = self.stash.iter().position(|p| pick(p).is_some()) {
            let packet = self.stash.remove(pos).expect("position is in the stash");
            return pick(&packet).expect("picked before");
        }
        loop {
            let packet = self.recv_raw().await;
            if let Some(found) = pick(&packet) {
                return found;
            }
            self.stash.push_back(packet);
        }
    }

    /// SUBSCRIBE with these filters (and optionally a subscription identifier); returns the
    /// SUBACK's reason codes.
    async fn subscribe_with(
        &mut self,
        filters: &[(&str, SubscriptionOptions)],
        subscription_id: Option<u32>,
    ) -> Vec<ReasonCode> {
        let packet_id = self.packet_id();
        let mut properties = Properties::default();
        properties.subscription_identifiers.extend(subscription_id);
        let filters = filters
            .iter()
            .map(|(filter, options)| (ByteString::from(*filter), *options))
            .collect();
        self.send(Packet::Subscribe(Subscribe {
            packet_id,
            properties,
            filters,
        }))
        .await;
        let ack = self
            .wait_for(|p| match p {
                Packet::SubAck(ack) => Some(ack.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.packet_id, packet_id, "SUBACK packet identifier");
        ack.reasons
    }

    /// SUBSCRIBE to each filter at `qos` and check that `qos` is granted to every one.
    async fn subscribe(&mut self, filters: &[&str], qos: QoS) {
        let entries: Vec<_> = filters.iter().map(|f| (*f, opts(qos))).collect();
        let reasons = self.subscribe_with(&entries, None).await;
        assert_eq!(
            reasons,
            vec![granted(qos); filters.len()],
            "SUBACK of {filters:?}"
        );
    }

    /// UNSUBSCRIBE; returns the UNSUBACK's reason codes (empty in 3.1.1).
    async fn unsubscribe(&mut self, filters: &[&str]) -> Vec<ReasonCode> {
        let packet_id = self.packet_id();
        self.send(Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: Properties::default(),
            filters: filters.iter().map(|f| ByteString::from(*f)).collect(),
        }))
        .await;
        let ack = self
            .wait_for(|p| match p {
                Packet::UnsubAck(ack) => Some(ack.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.packet_id, packet_id, "UNSUBACK packet identifier");
        ack.reasons
    }

    /// PUBLISH and complete its flow (PUBACK, or PUBREC/PUBREL/PUBCOMP); returns the reason
    /// of the PUBACK or PUBREC (Success for QoS 0 and in 3.1.1).
    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &str) -> ReasonCode {
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            self.packet_id()
        };
        self.send(Packet::Publish(publish_packet(
            topic, qos, retain, packet_id, payload,
        )))
        .await;
        match qos {
            QoS::AtMostOnce => ReasonCode::Success,
            QoS::AtLeastOnce => {
                let ack = self.wait_for(puback).await;
                assert_eq!(ack.packet_id, packet_id, "PUBACK packet identifier");
                ack.reason
            }
            QoS::ExactlyOnce => {
                let rec = self.wait_for(pubrec).await;
                assert_eq!(rec.packet_id, packet_id, "PUBREC packet identifier");
                if rec.reason.as_u8() >= 0x80 {
                    return rec.reason;
                }
                self.send(Packet::PubRel(PubResponse::new(packet_id))).await;
                let comp = self.wait_for(pubcomp).await;
                assert_eq!(comp.packet_id, packet_id, "PUBCOMP packet identifier");
                assert_eq!(comp.reason, ReasonCode::Success, "PUBCOMP reason");
                rec.reason
            }
        }
    }

    /// Acknowledges a received PUBLISH (for QoS 2, the whole PUBREC/PUBREL/PUBCOMP exchange).
    async fn ack(&mut self, publish: &Publish) {
        let id = publish.packet_id;
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(PubResponse::new(id))).await,
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(PubResponse::new(id))).await;
                let rel = self
                    .wait_for(|p| match p {
                        Packet::PubRel(rel) if rel.packet_id == id => Some(rel.clone()),
                        _ => None,
                    })
                    .await;
                assert_eq!(rel.reason, ReasonCode::Success, "PUBREL reason");
                self.send(Packet::PubComp(PubResponse::new(id))).await;
            }
        }
    }

    /// The next packet, which must be a PUBLISH; it is acknowledged.
    async fn expect_publish(&mut self) -> Publish {
        let packet = self.next().await;
        let Packet::Publish(publish) = packet else {
            panic!("{}: expected PUBLISH, got {packet:?}", self.name);
        };
        self.ack(&publish).await;
        publish
    }

    /// A PUBLISH arriving within `limit` (acknowledged), or None.
    async fn publish_within(&mut self, limit: Duration) -> Option<Publish> {
        let packet = self.next_within(limit).await?;
        let Packet::Publish(publish) = packet else {
            panic!("{}: expected PUBLISH, got {packet:?}", self.name);
        };
        self.ack(&publish).await;
        Some(publish)
    }

    /// Every PUBLISH up to the one on `marker` (excluded), plus any arriving until the
    /// connection has been quiet for [`QUIET`] (so a copy overtaken by the marker still
    /// counts). All are acknowledged.
    async fn collect(&mut self, marker: &str) -> Vec<Publish> {
        let mut got = Vec::new();
        loop {
            let publish = self.expect_publish().await;
            if publish.topic == marker {
                break;
            }
            got.push(publish);
        }
        while let Some(publish) = self.publish_within(QUIET).await {
            got.push(publish);
        }
        got
    }

    /// Nothing at all arrives within [`QUIET`].
    async fn assert_quiet(&mut self, context: &str) {
        if let Some(packet) = self.next_within(QUIET).await {
            panic!("{}: {context}: unexpected {packet:?}", self.name);
        }
    }
}

fn puback(p: &Packet) -> Option<PubResponse> {
    match p {
        Packet::PubAck(ack) => Some(ack.clone()),
        _ => None,
    }
}

fn pubrec(p: &Packet) -> Option<PubResponse> {
    match p {
        Packet::PubRec(ack) => Some(ack.clone()),
        _ => None,
    }
}

fn pubcomp(p: &Packet) -> Option<PubResponse> {
    match p {
        Packet::PubComp(ack) => Some(ack.clone()),
        _ => None,
    }
}

fn publish_packet(topic: &str, qos: QoS, retain: bool, packet_id: u16, payload: &str) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: ByteString::from(topic),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

fn text(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.payload).into_owned()
}

/// Topics of the messages, sorted, duplicates kept.
fn sorted_topics(messages: &[Publish]) -> Vec<String> {
    let mut topics: Vec<String> = messages.iter().map(|p| p.topic.to_string()).collect();
    topics.sort();
    topics
}

fn sorted(items: &[&str]) -> Vec<String> {
    let mut items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    items.sort();
    items
}

// ------------------------------------------------------------------------------------------
// Topic filters and wildcards
// ------------------------------------------------------------------------------------------

async fn wildcards_match(protocol: Protocol) {
    let broker = Broker::start().await;
    let mut sub = Peer::connect(&broker, protocol, "sub").await;
    let mut publisher = Peer::connect(&broker, protocol, "pub").await;
    sub.subscribe(&["a/+/c", "x/#", "+/p", "marker"], QoS::AtLeastOnce)
        .await;

    // No topic below matches two of the filters, so each match is exactly one copy.
    let matching = ["a/b/c", "a//c", "x", "x/y", "x/y/z", "q/p", "/p"];
    let not_matching = ["a/b/c/d", "a/c", "a/b", "xx/y", "p", "q/r/p", "b/b/c"];
    for topic in matching.iter().chain(not_matching.iter()) {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, topic)
            .await;
    }
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "m")
        .await;

    let got = sub.collect("marker").await;
    assert_eq!(
        sorted_topics(&got),
        sorted(&matching),
        "{protocol:?}: `+` matches exactly one level, `#` the parent and every level below"
    );
    for publish in &got {
        assert_eq!(text(publish), publish.topic.to_string(), "payload intact");
    }
}

#[tokio::test]
async fn mqtt_4_7_1_wildcards_plus_and_hash_v311() {
    wildcards_match(Protocol::V311).await;
}

#[tokio::test]
async fn mqtt_4_7_1_wildcards_plus_and_hash_v5() {
    wildcards_match(Protocol::V5).await;
}

async fn dollar_topics_not_matched(protocol: Protocol) {
    let broker = Broker::start().await;
    let mut hash = Peer::connect(&broker, protocol, "hash").await;
    let mut plus = Peer::connect(&broker, protocol, "plus").await;
    let mut dollar = Peer::connect(&broker, protocol, "dollar").await;
    let mut publisher = Peer::connect(&broker, protocol, "pub").await;
    hash.subscribe(&["#"], QoS::AtLeastOnce).await;
    plus.subscribe(&["+/info"], QoS::AtLeastOnce).await;
    dollar.subscribe(&["$app/#"], QoS::AtLeastOnce).await;

    let reason = publisher
        .publish("$app/info", QoS::AtLeastOnce, false, "dollar")
        .await;
    assert_eq!(reason, ReasonCode::Success, "`$app/#` matches `$app/info`");
    // Positive control: an explicit `$app/#` subscription gets it.
    let got = dollar.expect_publish().await;
    assert_eq!(got.topic, "$app/info");
    assert_eq!(text(&got), "dollar");

    // The marker matches both `#` and `+/info`.
    publisher
        .publish("x/info", QoS::AtLeastOnce, false, "marker")
        .await;
    assert!(
        hash.collect("x/info").await.is_empty(),
        "{protocol:?}: `#` must not match a topic starting with `$` [MQTT-4.7.2-1]"
    );
    assert!(
        plus.collect("x/info").await.is_empty(),
        "{protocol:?}: `+/info` must not match a topic starting with `$` [MQTT-4.7.2-1]"
    );
}

#[tokio::test]
async fn mqtt_4_7_2_1_dollar_topics_not_matched_by_wildcards_v311() {
    dollar_topics_not_matched(Protocol::V311).await;
}

#[tokio::test]
async fn mqtt_4_7_2_1_dollar_topics_not_matched_by_wildcards_v5() {
    dollar_topics_not_matched(Protocol::V5).await;
}

// ------------------------------------------------------------------------------------------
// SUBACK, UNSUBACK, unsubscribe
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt_3_9_3_suback_grants_requested_qos() {
    let broker = Broker::start().await;
    for protocol in BOTH {
        let mut sub = Peer::connect(&broker, protocol, &format!("sub-{protocol:?}")).await;
        let reasons = sub
            .subscribe_with(
                &[
                    ("g/0", opts(QoS::AtMostOnce)),
                    ("g/1/+", opts(QoS::AtLeastOnce)),
                    ("g/2/#", opts(QoS::ExactlyOnce)),
                ],
                None,
            )
            .await;
        assert_eq!(
            reasons,
            vec![
                ReasonCode::Success,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2
            ],
            "{protocol:?}: one SUBACK code per filter, in order, granting the requested QoS"
        );
    }
}

#[tokio::test]
async fn mqtt_3_10_4_unsuback_v311() {
    let broker = Broker::start().await;
    let mut sub = Peer::connect(&broker, Protocol::V311, "sub").await;
    sub.subscribe(&["u/a"], QoS::AtLeastOnce).await;
    // The helper checks that UNSUBACK carries the UNSUBSCRIBE's packet identifier, also for
    // a filter that was never subscribed [MQTT-3.10.4-5].
    assert!(sub.unsubscribe(&["u/a"]).await.is_empty());
    assert!(sub.unsubscribe(&["u/never"]).await.is_empty());
}

#[tokio::test]
async fn mqtt_3_11_3_unsuback_no_subscription_existed_v5() {
    let broker = Broker::start().await;
    let mut sub = Peer::connect(&broker, Protocol::V5, "sub").await;
    sub.subscribe(&["u/a", "u/+/b"], QoS::AtLeastOnce).await;
    assert_eq!(
        sub.unsubscribe(&["u/a", "u/none", "u/+/b"]).await,
        vec![
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::Success
        ],
        "one UNSUBACK reason per filter, 0x11 for a filter with no subscription"
    );
    assert_eq!(
        sub.unsubscribe(&["u/a"]).await,
        vec![ReasonCode::NoSubscriptionExisted],
        "the subscription is gone after the first UNSUBSCRIBE"
    );
}

async fn unsubscribe_stops_delivery(protocol: Protocol) {
    let broker = Broker::start().await;
    let mut sub = Peer::connect(&broker, protocol, "sub").await;
    let mut publisher = Peer::connect(&broker, protocol, "pub").await;
    sub.subscribe(&["u/t", "u/+/w", "marker"], QoS::AtLeastOnce)
        .await;

    publisher.publish("u/t", QoS::AtLeastOnce, false, "1").await;
    publisher
        .publish("u/x/w", QoS::AtLeastOnce, false, "1w")
        .await;
    let first = sub.expect_publish().await;
    let second = sub.expect_publish().await;
    assert_eq!(
        sorted_topics(&[first, second]),
        sorted(&["u/t", "u/x/w"]),
        "delivered while subscribed"
    );

    sub.unsubscribe(&["u/t", "u/+/w"]).await;
    publisher.publish("u/t", QoS::AtLeastOnce, false, "2").await;
    publisher
        .publish("u/x/w", QoS::AtLeastOnce, false, "2w")
        .await;
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "m")
        .await;
    let got = sub.collect("marker").await;
    assert!(
        got.is_empty(),
        "{protocol:?}: no delivery after UNSUBSCRIBE [MQTT-3.10.4-2], got {got:?}"
    );
}

#[tokio::test]
async fn mqtt_3_10_4_2_unsubscribe_stops_delivery_v311() {
    unsubscribe_stops_delivery(Protocol::V311).await;
}

#[tokio::test]
async fn mqtt_3_10_4_2_unsubscribe_stops_delivery_v5() {
    unsubscribe_stops_delivery(Protocol::V5).await;
}

// ------------------------------------------------------------------------------------------
// Overlapping subscriptions
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt_3_3_4_2_overlapping_subscriptions_one_copy_max_qos_v5() {
    let broker = Broker::start().await;
    let mut sub = Peer::connect(&broker, Protocol::V5, "sub").await;
    let mut publisher = Peer::connect(&broker, Protocol::V5, "pub").await;
    let r = sub
        .subscribe_with(&[("a/+", opts(QoS::AtMostOnce))], Some(1))
        .await;
    assert_eq!(r, vec![ReasonCode::Success]);
    let r = sub
        .subscribe_with(&[("a/b", opts(QoS::AtLeastOnce))], Some(2))
        .await;
    assert_eq!(r, vec![ReasonCode::GrantedQoS1]);
    sub.subscribe(&["marker"], QoS::AtLeastOnce).await;

    publisher
        .publish("a/b", QoS::AtLeastOnce, false, "both")
        .await;
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "m")
        .await;
    let got = sub.collect("marker").await;
    assert_eq!(
        got.len(),
        1,
        "one copy for overlapping subscriptions of one client (the spec allows more; tern \
         promises one), got {got:?}"
    );
    let copy = &got[0];
    assert_eq!(copy.qos, QoS::AtLeastOnce, "the maximum QoS of the matches");
    let mut ids = copy.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec![1, 2],
        "the one copy carries the identifiers of all matching subscriptions [MQTT-3.3.4-4]"
    );
}

#[tokio::test]
async fn mqtt_3_3_5_1_overlapping_subscriptions_max_qos_v311() {
    let broker = Broker::start().await;
    let mut sub = Peer::connect(&broker, Protocol::V311, "sub").await;
    let mut publisher = Peer::connect(&broker, Protocol::V311, "pub").await;
    sub.subscribe(&["a/+"], QoS::AtMostOnce).await;
    sub.subscribe(&["a/b", "marker"], QoS::AtLeastOnce).await;

    publisher
        .publish("a/b", QoS::AtLeastOnce, false, "both")
        .await;
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "m")
        .await;
    let got = sub.collect("marker").await;
    // 3.1.1 allows one copy per matching subscription, but the maximum QoS must be
    // respected: some copy is delivered at QoS 1.
    assert!(
        (1..=2).contains(&got.len()),
        "one copy, or one per subscription: {got:?}"
    );
    assert!(
        got.iter().any(|p| p.qos == QoS::AtLeastOnce),
        "delivered respecting the maximum QoS of the matching subscriptions: {got:?}"
    );
}

// ------------------------------------------------------------------------------------------
// MQTT 5 subscription options
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt_3_8_3_1_no_local_own_messages_not_delivered() {
    let broker = Broker::start().await;
    let mut me = Peer::connect(&broker, Protocol::V5, "me").await;
    let mut other = Peer::connect(&broker, Protocol::V5, "other").await;
    let no_local = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        ..SubscriptionOptions::default()
    };
    let r = me
        .subscribe_with(
            &[
                ("nl/t", no_local),
                ("loc/t", opts(QoS::AtLeastOnce)),
                ("marker", opts(QoS::AtLeastOnce)),
            ],
            None,
        )
        .await;
    assert_eq!(r, vec![ReasonCode::GrantedQoS1; 3]);
    other.subscribe(&["nl/t"], QoS::AtLeastOnce).await;

    me.publish("nl/t", QoS::AtLeastOnce, false, "own").await;
    me.publish("loc/t", QoS::AtLeastOnce, false, "own-local")
        .await;
    me.publish("marker", QoS::AtLeastOnce, false, "m").await;

    let got = me.collect("marker").await;
    assert_eq!(
        sorted_topics(&got),
        vec!["loc/t".to_string()],
        "No Local: own message on `nl/t` not delivered back [MQTT-3.8.3-3]; \
         without No Local (`loc/t`) it is"
    );
    let theirs = other.expect_publish().await;
    assert_eq!(theirs.topic, "nl/t", "other clients still get it");
    assert_eq!(text(&theirs), "own");
}

#[tokio::test]
async fn mqtt_3_8_3_1_retain_as_published() {
    let broker = Broker::start().await;
    let mut keep = Peer::connect(&broker, Protocol::V5, "keep").await;
    let mut clear = Peer::connect(&broker, Protocol::V5, "clear").await;
    let mut publisher = Peer::connect(&broker, Protocol::V5, "pub").await;
    let rap = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_as_published: true,
        ..SubscriptionOptions::default()
    };
    assert_eq!(
        keep.subscribe_with(&[("rap/t", rap)], None).await,
        vec![ReasonCode::GrantedQoS1]
    );
    clear.subscribe(&["rap/t"], QoS::AtLeastOnce).await;

    publisher
        .publish("rap/t", QoS::AtLeastOnce, true, "live")
        .await;
    let kept = keep.expect_publish().await;
    assert_eq!(text(&kept), "live");
    assert!(
        kept.retain,
        "Retain As Published: RETAIN kept on live delivery [MQTT-3.3.1-13]"
    );
    let cleared = clear.expect_publish().await;
    assert_eq!(text(&cleared), "live");
    assert!(
        !cleared.retain,
        "without Retain As Published: RETAIN cleared on live delivery [MQTT-3.3.1-12]"
    );

    // Retained messages sent because of a new subscription always carry RETAIN 1.
    let mut late = Peer::connect(&broker, Protocol::V5, "late").await;
    late.subscribe(&["rap/t"], QoS::AtLeastOnce).await;
    let stored = late.expect_publish().await;
    assert_eq!(text(&stored), "live");
    assert!(stored.retain, "retained delivery on subscribe has RETAIN 1");
}

#[tokio::test]
async fn mqtt_3_3_1_9_live_delivery_clears_retain_v311() {
    let broker = Broker::start().await;
    let mut sub = Peer::connect(&broker, Protocol::V311, "sub").await;
    let mut publisher = Peer::connect(&broker, Protocol::V311, "pub").await;
    sub.subscribe(&["rt/t"], QoS::AtLeastOnce).await;
    publisher
        .publish("rt/t", QoS::AtLeastOnce, true, "live")
        .await;
    let got = sub.expect_publish().await;
    assert_eq!(text(&got), "live");
    assert!(
        !got.retain,
        "RETAIN 0 for a message sent to an established subscription [MQTT-3.3.1-9]"
    );
}

fn with_retain_handling(retain_handling: RetainHandling) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_handling,
        ..SubscriptionOptions::default()
    }
}

/// A broker with a retained "r" on `rh/t`, a subscriber (also on `marker`) and a publisher.
async fn retain_handling_setup() -> (Broker, Peer, Peer) {
    let broker = Broker::start().await;
    let mut sub = Peer::connect(&broker, Protocol::V5, "sub").await;
    let mut publisher = Peer::connect(&broker, Protocol::V5, "pub").await;
    publisher.publish("rh/t", QoS::AtLeastOnce, true, "r").await;
    sub.subscribe(&["marker"], QoS::AtLeastOnce).await;
    (broker, sub, publisher)
}

#[tokio::test]
async fn mqtt_3_8_3_1_retain_handling_0_sends_at_every_subscribe() {
    let (_broker, mut sub, mut publisher) = retain_handling_setup().await;
    for round in 1..=2 {
        let r = sub
            .subscribe_with(
                &[(
                    "rh/t",
                    with_retain_handling(RetainHandling::SendAtSubscribe),
                )],
                None,
            )
            .await;
        assert_eq!(r, vec![ReasonCode::GrantedQoS1]);
        publisher
            .publish("marker", QoS::AtLeastOnce, false, "m")
            .await;
        let got = sub.collect("marker").await;
        assert_eq!(got.len(), 1, "subscribe #{round}: {got:?}");
        assert_eq!(text(&got[0]), "r");
        assert!(got[0].retain);
    }
}

#[tokio::test]
async fn mqtt_3_8_3_1_retain_handling_1_sends_only_for_new_subscription() {
    let (_broker, mut sub, mut publisher) = retain_handling_setup().await;
    let options = with_retain_handling(RetainHandling::SendAtSubscribeIfNew);

    let r = sub.subscribe_with(&[("rh/t", options)], None).await;
    assert_eq!(r, vec![ReasonCode::GrantedQoS1]);
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "m")
        .await;
    let got = sub.collect("marker").await;
    assert_eq!(got.len(), 1, "new subscription gets the retained message");
    assert_eq!(text(&got[0]), "r");
    assert!(got[0].retain);

    let r = sub.subscribe_with(&[("rh/t", options)], None).await;
    assert_eq!(r, vec![ReasonCode::GrantedQoS1]);
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "m")
        .await;
    let got = sub.collect("marker").await;
    assert!(
        got.is_empty(),
        "Retain Handling 1: no retained message when the subscription already existed \
         [MQTT-3.3.1-10], got {got:?}"
    );
}

#[tokio::test]
async fn mqtt_3_8_3_1_retain_handling_2_never_sends_retained() {
    let (_broker, mut sub, mut publisher) = retain_handling_setup().await;
    let r = sub
        .subscribe_with(
            &[("rh/t", with_retain_handling(RetainHandling::DoNotSend))],
            None,
        )
        .await;
    assert_eq!(r, vec![ReasonCode::GrantedQoS1]);
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "m")
        .await;
    let got = sub.collect("marker").await;
    assert!(
        got.is_empty(),
        "Retain Handling 2: no retained message on subscribe [MQTT-3.3.1-11], got {got:?}"
    );
    // The subscription itself works.
    publisher
        .publish("rh/t", QoS::AtLeastOnce, false, "live")
        .await;
    let live = sub.expect_publish().await;
    assert_eq!(text(&live), "live");
}

#[tokio::test]
async fn mqtt_3_3_4_3_subscription_identifiers_delivered() {
    let broker = Broker::start().await;
    let mut sub = Peer::connect(&broker, Protocol::V5, "sub").await;
    let mut publisher = Peer::connect(&broker, Protocol::V5, "pub").await;
    publisher
        .publish("sid/r", QoS::AtLeastOnce, true, "retained")
        .await;

    // The retained message sent for a subscription carries its identifier.
    let r = sub
        .subscribe_with(&[("sid/r", opts(QoS::AtLeastOnce))], Some(7))
        .await;
    assert_eq!(r, vec![ReasonCode::GrantedQoS1]);
    let got = sub.expect_publish().await;
    assert_eq!(text(&got), "retained");
    assert_eq!(got.properties.subscription_identifiers, vec![7]);

    let r = sub
        .subscribe_with(&[("sid/a", opts(QoS::AtLeastOnce))], Some(42))
        .await;
    assert_eq!(r, vec![ReasonCode::GrantedQoS1]);
    sub.subscribe(&["sid/b"], QoS::AtLeastOnce).await;

    publisher
        .publish("sid/a", QoS::AtLeastOnce, false, "a")
        .await;
    let got = sub.expect_publish().await;
    assert_eq!(got.topic, "sid/a");
    assert_eq!(
        got.properties.subscription_identifiers,
        vec![42],
        "the subscription's identifier is delivered [MQTT-3.3.4-3]"
    );

    publisher
        .publish("sid/b", QoS::AtLeastOnce, false, "b")
        .await;
    let got = sub.expect_publish().await;
    assert_eq!(got.topic, "sid/b");
    assert!(
        got.properties.subscription_identifiers.is_empty(),
        "no identifier for a subscription made without one"
    );

    // Subscribing again replaces the subscription, identifier included.
    let r = sub
        .subscribe_with(&[("sid/a", opts(QoS::AtLeastOnce))], Some(43))
        .await;
    assert_eq!(r, vec![ReasonCode::GrantedQoS1]);
    publisher
        .publish("sid/a", QoS::AtLeastOnce, false, "a2")
        .await;
    let got = sub.expect_publish().await;
    assert_eq!(text(&got), "a2");
    assert_eq!(got.properties.subscription_identifiers, vec![43]);
}

// ------------------------------------------------------------------------------------------
// Shared subscriptions
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt_4_8_2_shared_subscription_each_message_to_one_member() {
    const N: usize = 10;
    let broker = Broker::start().await;
    let mut m1 = Peer::connect(&broker, Protocol::V5, "member-1").await;
    let mut m2 = Peer::connect(&broker, Protocol::V5, "member-2").await;
    let mut plain = Peer::connect(&broker, Protocol::V5, "plain").await;
    let mut publisher = Peer::connect(&broker, Protocol::V5, "pub").await;
    m1.subscribe(&["$share/g/sh/t"], QoS::AtLeastOnce).await;
    m2.subscribe(&["$share/g/sh/t"], QoS::AtLeastOnce).await;
    plain.subscribe(&["sh/t"], QoS::AtLeastOnce).await;

    for i in 0..N {
        let reason = publisher
            .publish("sh/t", QoS::AtLeastOnce, false, &i.to_string())
            .await;
        assert_eq!(reason, ReasonCode::Success);
    }

    // The non-shared subscriber gets every message, in order.
    for i in 0..N {
        let got = plain.expect_publish().await;
        assert_eq!(text(&got), i.to_string(), "non-shared subscriber gets all");
    }

    let deadline = Instant::now() + tern_conformance::EVENT_TIMEOUT;
    let (mut got1, mut got2) = (Vec::new(), Vec::new());
    while got1.len() + got2.len() < N {
        assert!(
            Instant::now() < deadline,
            "members got only {} + {} of {N}",
            got1.len(),
            got2.len()
        );
        if let Some(p) = m1.publish_within(Duration::from_millis(20)).await {
            got1.push(text(&p));
        }
        if let Some(p) = m2.publish_within(Duration::from_millis(20)).await {
            got2.push(text(&p));
        }
    }
    m1.assert_quiet("after all shared messages").await;
    m2.assert_quiet("after all shared messages").await;

    let mut all: Vec<usize> = got1
        .iter()
        .chain(got2.iter())
        .map(|s| s.parse().expect("numeric payload"))
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "each message to exactly one member: {got1:?} / {got2:?}"
    );
    assert!(
        !got1.is_empty() && !got2.is_empty(),
        "both members get some: {got1:?} / {got2:?}"
    );
}

// ------------------------------------------------------------------------------------------
// QoS flows and downgrade with rumqttc
// ------------------------------------------------------------------------------------------

async fn v4_client(broker: &Broker, id: &str) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(v4_options(id, broker.port()), 256);
    next_v4(&mut eventloop, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))).then_some(())
    })
    .await;
    (client, eventloop)
}

async fn v5_client(
    broker: &Broker,
    id: &str,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(v5_options(id, broker.port()), 256);
    next_v5(&mut eventloop, |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))).then_some(())
    })
    .await;
    (client, eventloop)
}

async fn v4_subscribe(
    client: &rumqttc::AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    filter: &str,
    qos: rumqttc::QoS,
) {
    client.subscribe(filter, qos).await.expect("subscribe");
    let codes = next_v4(eventloop, |e| match e {
        rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Success(qos)]);
}

async fn v5_subscribe(
    client: &rumqttc::v5::AsyncClient,
    eventloop: &mut rumqttc::v5::EventLoop,
    filter: &str,
    qos: V5QoS,
) {
    client.subscribe(filter, qos).await.expect("subscribe");
    let codes = next_v5(eventloop, |e| match e {
        rumqttc::v5::Event::Incoming(V5Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
            qos
        )]
    );
}

/// Publishes with rumqttc and drives the publisher's event loop through the whole flow.
async fn v4_publish(
    client: &rumqttc::AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    topic: &str,
    qos: rumqttc::QoS,
    payload: &str,
) {
    use rumqttc::{Event, Outgoing, Packet};
    client
        .publish(topic, qos, false, payload.as_bytes().to_vec())
        .await
        .expect("publish");
    match qos {
        rumqttc::QoS::AtMostOnce => {
            next_v4(eventloop, |e| {
                matches!(e, Event::Outgoing(Outgoing::Publish(_))).then_some(())
            })
            .await
        }
        rumqttc::QoS::AtLeastOnce => {
            next_v4(eventloop, |e| {
                matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
            })
            .await
        }
        rumqttc::QoS::ExactlyOnce => {
            next_v4(eventloop, |e| {
                matches!(e, Event::Incoming(Packet::PubRec(_))).then_some(())
            })
            .await;
            next_v4(eventloop, |e| {
                matches!(e, Event::Incoming(Packet::PubComp(_))).then_some(())
            })
            .await;
        }
    }
}

async fn v5_publish(
    client: &rumqttc::v5::AsyncClient,
    eventloop: &mut rumqttc::v5::EventLoop,
    topic: &str,
    qos: V5QoS,
    payload: &str,
) {
    use rumqttc::v5::Event;
    use rumqttc::Outgoing;
    client
        .publish(topic, qos, false, payload.as_bytes().to_vec())
        .await
        .expect("publish");
    match qos {
        V5QoS::AtMostOnce => {
            next_v5(eventloop, |e| {
                matches!(e, Event::Outgoing(Outgoing::Publish(_))).then_some(())
            })
            .await
        }
        V5QoS::AtLeastOnce => {
            next_v5(eventloop, |e| {
                matches!(e, Event::Incoming(V5Packet::PubAck(_))).then_some(())
            })
            .await
        }
        V5QoS::ExactlyOnce => {
            next_v5(eventloop, |e| {
                matches!(e, Event::Incoming(V5Packet::PubRec(_))).then_some(())
            })
            .await;
            next_v5(eventloop, |e| {
                matches!(e, Event::Incoming(V5Packet::PubComp(_))).then_some(())
            })
            .await;
        }
    }
}

async fn v4_receive(eventloop: &mut rumqttc::EventLoop) -> rumqttc::Publish {
    next_v4(eventloop, |e| match e {
        rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await
}

async fn v5_receive(eventloop: &mut rumqttc::v5::EventLoop) -> rumqttc::v5::mqttbytes::v5::Publish {
    next_v5(eventloop, |e| match e {
        rumqttc::v5::Event::Incoming(V5Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn mqtt_4_3_qos_0_1_2_flows_rumqttc_v311() {
    use rumqttc::{Event, Outgoing, Packet, QoS as Q};
    let broker = Broker::start().await;
    let (sub, mut sub_loop) = v4_client(&broker, "sub").await;
    let (publisher, mut pub_loop) = v4_client(&broker, "pub").await;
    v4_subscribe(&sub, &mut sub_loop, "q/t", Q::ExactlyOnce).await;

    for (qos, payload) in [(Q::AtMostOnce, "zero"), (Q::AtLeastOnce, "one")] {
        v4_publish(&publisher, &mut pub_loop, "q/t", qos, payload).await;
        let got = v4_receive(&mut sub_loop).await;
        assert_eq!(got.qos, qos, "delivered at the publish QoS");
        assert_eq!(&got.payload[..], payload.as_bytes());
        assert_eq!(got.topic, "q/t");
    }
    // The subscriber's PUBACK goes out.
    next_v4(&mut sub_loop, |e| {
        matches!(e, Event::Outgoing(Outgoing::PubAck(_))).then_some(())
    })
    .await;

    v4_publish(&publisher, &mut pub_loop, "q/t", Q::ExactlyOnce, "two").await;
    let got = v4_receive(&mut sub_loop).await;
    assert_eq!(got.qos, Q::ExactlyOnce);
    assert_eq!(&got.payload[..], b"two");
    // rumqttc answers PUBREC; the broker must continue with PUBREL, answered by PUBCOMP.
    let id = got.pkid;
    let rel_id = next_v4(&mut sub_loop, |e| match e {
        Event::Incoming(Packet::PubRel(rel)) => Some(rel.pkid),
        _ => None,
    })
    .await;
    assert_eq!(rel_id, id, "PUBREL for the delivered message");
    next_v4(&mut sub_loop, |e| {
        matches!(e, Event::Outgoing(Outgoing::PubComp(_))).then_some(())
    })
    .await;
}

#[tokio::test]
async fn mqtt_4_3_qos_0_1_2_flows_rumqttc_v5() {
    use rumqttc::v5::Event;
    use rumqttc::Outgoing;
    let broker = Broker::start().await;
    let (sub, mut sub_loop) = v5_client(&broker, "sub").await;
    let (publisher, mut pub_loop) = v5_client(&broker, "pub").await;
    v5_subscribe(&sub, &mut sub_loop, "q/t", V5QoS::ExactlyOnce).await;

    for (qos, payload) in [(V5QoS::AtMostOnce, "zero"), (V5QoS::AtLeastOnce, "one")] {
        v5_publish(&publisher, &mut pub_loop, "q/t", qos, payload).await;
        let got = v5_receive(&mut sub_loop).await;
        assert_eq!(got.qos, qos, "delivered at the publish QoS");
        assert_eq!(&got.payload[..], payload.as_bytes());
        assert_eq!(&got.topic[..], b"q/t");
    }
    next_v5(&mut sub_loop, |e| {
        matches!(e, Event::Outgoing(Outgoing::PubAck(_))).then_some(())
    })
    .await;

    v5_publish(&publisher, &mut pub_loop, "q/t", V5QoS::ExactlyOnce, "two").await;
    let got = v5_receive(&mut sub_loop).await;
    assert_eq!(got.qos, V5QoS::ExactlyOnce);
    assert_eq!(&got.payload[..], b"two");
    let id = got.pkid;
    let rel_id = next_v5(&mut sub_loop, |e| match e {
        Event::Incoming(V5Packet::PubRel(rel)) => Some(rel.pkid),
        _ => None,
    })
    .await;
    assert_eq!(rel_id, id, "PUBREL for the delivered message");
    next_v5(&mut sub_loop, |e| {
        matches!(e, Event::Outgoing(Outgoing::PubComp(_))).then_some(())
    })
    .await;
}

#[tokio::test]
async fn mqtt_3_8_4_delivered_qos_is_minimum_v311() {
    use rumqttc::QoS as Q;
    let broker = Broker::start().await;
    let (sub, mut sub_loop) = v4_client(&broker, "sub").await;
    let (publisher, mut pub_loop) = v4_client(&broker, "pub").await;
    v4_subscribe(&sub, &mut sub_loop, "d/1", Q::AtLeastOnce).await;
    v4_subscribe(&sub, &mut sub_loop, "d/0", Q::AtMostOnce).await;

    v4_publish(&publisher, &mut pub_loop, "d/1", Q::ExactlyOnce, "2to1").await;
    let got = v4_receive(&mut sub_loop).await;
    assert_eq!(&got.payload[..], b"2to1");
    assert_eq!(
        got.qos,
        Q::AtLeastOnce,
        "QoS 2 publish to a QoS 1 subscription"
    );

    v4_publish(&publisher, &mut pub_loop, "d/0", Q::AtLeastOnce, "1to0").await;
    let got = v4_receive(&mut sub_loop).await;
    assert_eq!(&got.payload[..], b"1to0");
    assert_eq!(
        got.qos,
        Q::AtMostOnce,
        "QoS 1 publish to a QoS 0 subscription"
    );

    v4_publish(&publisher, &mut pub_loop, "d/1", Q::AtMostOnce, "0to1").await;
    let got = v4_receive(&mut sub_loop).await;
    assert_eq!(&got.payload[..], b"0to1");
    assert_eq!(got.qos, Q::AtMostOnce, "never upgraded");
}

#[tokio::test]
async fn mqtt_3_8_4_delivered_qos_is_minimum_v5() {
    let broker = Broker::start().await;
    let (sub, mut sub_loop) = v5_client(&broker, "sub").await;
    let (publisher, mut pub_loop) = v5_client(&broker, "pub").await;
    v5_subscribe(&sub, &mut sub_loop, "d/1", V5QoS::AtLeastOnce).await;
    v5_subscribe(&sub, &mut sub_loop, "d/0", V5QoS::AtMostOnce).await;

    v5_publish(&publisher, &mut pub_loop, "d/1", V5QoS::ExactlyOnce, "2to1").await;
    let got = v5_receive(&mut sub_loop).await;
    assert_eq!(&got.payload[..], b"2to1");
    assert_eq!(
        got.qos,
        V5QoS::AtLeastOnce,
        "QoS 2 publish to a QoS 1 subscription"
    );

    v5_publish(&publisher, &mut pub_loop, "d/0", V5QoS::AtLeastOnce, "1to0").await;
    let got = v5_receive(&mut sub_loop).await;
    assert_eq!(&got.payload[..], b"1to0");
    assert_eq!(
        got.qos,
        V5QoS::AtMostOnce,
        "QoS 1 publish to a QoS 0 subscription"
    );

    v5_publish(&publisher, &mut pub_loop, "d/1", V5QoS::AtMostOnce, "0to1").await;
    let got = v5_receive(&mut sub_loop).await;
    assert_eq!(&got.payload[..], b"0to1");
    assert_eq!(got.qos, V5QoS::AtMostOnce, "never upgraded");
}

// ------------------------------------------------------------------------------------------
// QoS 2 exactly once on a resent PUBLISH
// ------------------------------------------------------------------------------------------

async fn qos2_resend_not_redelivered(protocol: Protocol) {
    let broker = Broker::start().await;
    let mut sub = Peer::connect(&broker, protocol, "sub").await;
    let mut publisher = Peer::connect(&broker, protocol, "pub").await;
    sub.subscribe(&["q2/t"], QoS::ExactlyOnce).await;

    let first = publish_packet("q2/t", QoS::ExactlyOnce, false, 7, "first");
    publisher.send(Packet::Publish(first.clone())).await;
    let rec = publisher.wait_for(pubrec).await;
    assert_eq!(rec.packet_id, 7);
    assert_eq!(rec.reason, ReasonCode::Success);

    // The same message again, as a client resends it when it missed the PUBREC.
    let resent = Publish {
        dup: true,
        ..first.clone()
    };
    publisher.send(Packet::Publish(resent)).await;
    let rec = publisher.wait_for(pubrec).await;
    assert_eq!(rec.packet_id, 7, "PUBREC again for the resent PUBLISH");
    assert_eq!(rec.reason, ReasonCode::Success);

    publisher.send(Packet::PubRel(PubResponse::new(7))).await;
    let comp = publisher.wait_for(pubcomp).await;
    assert_eq!(comp.packet_id, 7);
    assert_eq!(comp.reason, ReasonCode::Success);

    let got = sub.expect_publish().await;
    assert_eq!(text(&got), "first");

    // After PUBCOMP, identifier 7 is free: a PUBLISH with it is a new message.
    let second = publish_packet("q2/t", QoS::ExactlyOnce, false, 7, "second");
    publisher.send(Packet::Publish(second)).await;
    let rec = publisher.wait_for(pubrec).await;
    assert_eq!(rec.packet_id, 7);
    publisher.send(Packet::PubRel(PubResponse::new(7))).await;
    let comp = publisher.wait_for(pubcomp).await;
    assert_eq!(comp.packet_id, 7);

    let got = sub.expect_publish().await;
    assert_eq!(
        text(&got),
        "second",
        "{protocol:?}: the resent QoS 2 PUBLISH must not be delivered twice (4.3.3)"
    );
    sub.assert_quiet("after the second message").await;
}

#[tokio::test]
async fn mqtt_4_3_3_qos2_resend_not_redelivered_v311() {
    qos2_resend_not_redelivered(Protocol::V311).await;
}

#[tokio::test]
async fn mqtt_4_3_3_qos2_resend_not_redelivered_v5() {
    qos2_resend_not_redelivered(Protocol::V5).await;
}

// ------------------------------------------------------------------------------------------
// Ordering
// ------------------------------------------------------------------------------------------

const ORDERED: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_6_per_topic_order_qos1_v311() {
    use rumqttc::QoS as Q;
    let broker = Broker::start().await;
    let (sub, mut sub_loop) = v4_client(&broker, "sub").await;
    let (publisher, mut pub_loop) = v4_client(&broker, "pub").await;
    v4_subscribe(&sub, &mut sub_loop, "o/t", Q::AtLeastOnce).await;

    let driver = tokio::spawn(async move {
        let mut acked = 0;
        while acked < ORDERED {
            acked += next_v4(&mut pub_loop, |e| {
                matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(1)
            })
            .await;
        }
    });
    for i in 0..ORDERED {
        publisher
            .publish("o/t", Q::AtLeastOnce, false, i.to_string().into_bytes())
            .await
            .expect("publish");
    }
    for i in 0..ORDERED {
        let got = v4_receive(&mut sub_loop).await;
        assert_eq!(got.qos, Q::AtLeastOnce);
        assert_eq!(
            String::from_utf8_lossy(&got.payload),
            i.to_string(),
            "messages on one topic arrive in publish order [MQTT-4.6.0-6]"
        );
    }
    driver.await.expect("every publish acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_6_per_topic_order_qos1_v5() {
    let broker = Broker::start().await;
    let (sub, mut sub_loop) = v5_client(&broker, "sub").await;
    let (publisher, mut pub_loop) = v5_client(&broker, "pub").await;
    v5_subscribe(&sub, &mut sub_loop, "o/t", V5QoS::AtLeastOnce).await;

    let driver = tokio::spawn(async move {
        let mut acked = 0;
        while acked < ORDERED {
            acked += next_v5(&mut pub_loop, |e| {
                matches!(e, rumqttc::v5::Event::Incoming(V5Packet::PubAck(_))).then_some(1)
            })
            .await;
        }
    });
    for i in 0..ORDERED {
        publisher
            .publish("o/t", V5QoS::AtLeastOnce, false, i.to_string().into_bytes())
            .await
            .expect("publish");
    }
    for i in 0..ORDERED {
        let got = v5_receive(&mut sub_loop).await;
        assert_eq!(got.qos, V5QoS::AtLeastOnce);
        assert_eq!(
            String::from_utf8_lossy(&got.payload),
            i.to_string(),
            "messages on one topic arrive in publish order [MQTT-4.6.0-6]"
        );
    }
    driver.await.expect("every publish acknowledged");
}

// ------------------------------------------------------------------------------------------
// Receive Maximum towards the client (MQTT 5)
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt_3_3_4_9_receive_maximum_limits_unacknowledged_publishes() {
    let broker = Broker::start().await;
    let properties = PropertyFields {
        receive_maximum: Some(2),
        ..PropertyFields::default()
    }
    .into();
    let mut sub = Peer::connect_with(&broker, Protocol::V5, "sub", properties).await;
    let mut publisher = Peer::connect(&broker, Protocol::V5, "pub").await;
    sub.subscribe(&["rm/t"], QoS::AtLeastOnce).await;

    for i in 0..5 {
        let reason = publisher
            .publish("rm/t", QoS::AtLeastOnce, false, &i.to_string())
            .await;
        assert_eq!(reason, ReasonCode::Success);
    }

    // Read without acknowledging.
    let mut held = Vec::new();
    for _ in 0..2 {
        match sub.next().await {
            Packet::Publish(p) => held.push(p),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(
        held.iter().map(text).collect::<Vec<_>>(),
        ["0", "1"],
        "in order"
    );
    sub.assert_quiet("Receive Maximum 2 reached: no third PUBLISH [MQTT-3.3.4-9]")
        .await;

    // One PUBACK frees one slot: exactly one more.
    sub.send(Packet::PubAck(PubResponse::new(held[0].packet_id)))
        .await;
    match sub.next().await {
        Packet::Publish(p) => {
            assert_eq!(text(&p), "2");
            held.push(p);
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    sub.assert_quiet("one PUBACK allows exactly one more PUBLISH")
        .await;

    // Acknowledging the rest lets the remaining ones through.
    sub.send(Packet::PubAck(PubResponse::new(held[1].packet_id)))
        .await;
    sub.send(Packet::PubAck(PubResponse::new(held[2].packet_id)))
        .await;
    let rest = [sub.expect_publish().await, sub.expect_publish().await];
    assert_eq!(rest.iter().map(text).collect::<Vec<_>>(), ["3", "4"]);
}

// ------------------------------------------------------------------------------------------
// Retained messages
// ------------------------------------------------------------------------------------------

async fn retained_replace_and_delete(protocol: Protocol) {
    let broker = Broker::start().await;
    let mut publisher = Peer::connect(&broker, protocol, "pub").await;
    publisher
        .publish("r/t", QoS::AtLeastOnce, true, "one")
        .await;

    let mut live = Peer::connect(&broker, protocol, "live").await;
    live.subscribe(&["r/t"], QoS::AtLeastOnce).await;
    let got = live.expect_publish().await;
    assert_eq!(text(&got), "one");
    assert!(
        got.retain,
        "retained message on subscribe has RETAIN 1 (3.3.1.3)"
    );
    assert_eq!(got.qos, QoS::AtLeastOnce);

    // A second retained message replaces the first.
    publisher
        .publish("r/t", QoS::AtLeastOnce, true, "two")
        .await;
    let got = live.expect_publish().await;
    assert_eq!(text(&got), "two", "live subscribers get the new one");

    let mut second = Peer::connect(&broker, protocol, "second").await;
    second.subscribe(&["r/t", "marker"], QoS::AtLeastOnce).await;
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "m")
        .await;
    let got = second.collect("marker").await;
    assert_eq!(
        got.iter().map(text).collect::<Vec<_>>(),
        ["two"],
        "{protocol:?}: a retained message replaces the previous one (3.3.1.3)"
    );
    assert!(got[0].retain);

    // An empty retained message deletes it, and is delivered to live subscribers as usual.
    publisher.publish("r/t", QoS::AtLeastOnce, true, "").await;
    let got = live.expect_publish().await;
    assert_eq!(got.topic, "r/t");
    assert!(got.payload.is_empty());

    let mut third = Peer::connect(&broker, protocol, "third").await;
    third.subscribe(&["r/t", "marker"], QoS::AtLeastOnce).await;
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "m")
        .await;
    let got = third.collect("marker").await;
    assert!(
        got.is_empty(),
        "{protocol:?}: an empty retained PUBLISH removes the retained message \
         (3.3.1.3), got {got:?}"
    );
}

#[tokio::test]
async fn mqtt_3_3_1_retained_replace_and_delete_v311() {
    retained_replace_and_delete(Protocol::V311).await;
}

#[tokio::test]
async fn mqtt_3_3_1_retained_replace_and_delete_v5() {
    retained_replace_and_delete(Protocol::V5).await;
}

async fn retained_wildcard(protocol: Protocol) {
    let broker = Broker::start().await;
    let mut publisher = Peer::connect(&broker, protocol, "pub").await;
    let mut expected = vec!["r".to_string()];
    for i in 0..50 {
        let topic = if i % 5 == 0 {
            format!("r/{i}/deep")
        } else {
            format!("r/{i}")
        };
        expected.push(topic);
    }
    for topic in &expected {
        publisher
            .publish(topic, QoS::AtLeastOnce, true, topic)
            .await;
    }
    for topic in ["s/x", "rr/x", "$r/x"] {
        publisher
            .publish(topic, QoS::AtLeastOnce, true, topic)
            .await;
    }

    let mut sub = Peer::connect(&broker, protocol, "sub").await;
    sub.subscribe(&["r/#", "marker"], QoS::AtLeastOnce).await;
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "m")
        .await;
    let got = sub.collect("marker").await;
    expected.sort();
    assert_eq!(
        sorted_topics(&got),
        expected,
        "{protocol:?}: `r/#` gets every matching retained message, each once, and no other"
    );
    for publish in &got {
        assert!(publish.retain, "RETAIN 1 on {}", publish.topic);
        assert_eq!(text(publish), publish.topic.to_string());
    }
    let set: BTreeSet<&str> = got.iter().map(|p| &*p.topic).collect();
    assert!(!set.contains("s/x") && !set.contains("rr/x"));
}

#[tokio::test]
async fn mqtt_3_3_1_retained_wildcard_subscribe_v311() {
    retained_wildcard(Protocol::V311).await;
}

#[tokio::test]
async fn mqtt_3_3_1_retained_wildcard_subscribe_v5() {
    retained_wildcard(Protocol::V5).await;
}

/// More retained matches than the broker writes at a time (it writes them in batches as it
/// encodes them): the SUBACK comes first, then every message once, QoS 1 ones through the
/// client's window as it acknowledges.
#[tokio::test]
async fn mqtt_3_3_1_retained_matches_beyond_one_write_all_arrive_after_the_suback() {
    const MATCHES: usize = 1_000;
    let broker = Broker::start().await;
    let mut publisher = Peer::connect(&broker, Protocol::V311, "pub").await;
    let mut expected = Vec::new();
    for i in 0..MATCHES {
        let topic = format!("many/{i}");
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        publisher.publish(&topic, qos, true, &topic).await;
        expected.push(topic);
    }
    // Read in order: once this QoS 1 PUBLISH is acknowledged, every one before it is stored.
    publisher
        .publish("many/last", QoS::AtLeastOnce, true, "many/last")
        .await;
    expected.push("many/last".to_string());

    let mut sub = Peer::connect(&broker, Protocol::V311, "sub").await;
    sub.send(Packet::Subscribe(Subscribe {
        packet_id: 7,
        properties: Properties::default(),
        filters: vec![(ByteString::from("many/#"), opts(QoS::AtLeastOnce))],
    }))
    .await;
    let first = sub.next().await;
    let Packet::SubAck(ack) = first else {
        panic!("the SUBACK comes before the retained messages, got {first:?}");
    };
    assert_eq!(
        (ack.packet_id, ack.reasons),
        (7, vec![granted(QoS::AtLeastOnce)])
    );
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        got.push(sub.expect_publish().await);
    }
    sub.assert_quiet("after every retained message").await;
    expected.sort();
    assert_eq!(sorted_topics(&got), expected, "each retained message once");
    for publish in &got {
        assert!(publish.retain, "RETAIN 1 on {}", publish.topic);
        assert_eq!(text(publish), publish.topic.to_string());
        let n = publish
            .topic
            .strip_prefix("many/")
            .and_then(|n| n.parse::<usize>().ok());
        let published_at = if n.is_some_and(|n| n % 2 == 0) {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        assert_eq!(publish.qos, published_at, "QoS of {}", publish.topic);
    }
}

// ------------------------------------------------------------------------------------------
// PUBACK / PUBREC reason 0x10 (MQTT 5)
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt_3_4_2_1_puback_no_matching_subscribers() {
    let broker = Broker::start().await;
    let mut publisher = Peer::connect(&broker, Protocol::V5, "pub").await;
    assert_eq!(
        publisher
            .publish("nobody/here", QoS::AtLeastOnce, false, "x")
            .await,
        ReasonCode::NoMatchingSubscribers,
        "PUBACK 0x10 when no subscription matches"
    );
    assert_eq!(
        publisher
            .publish("nobody/here", QoS::ExactlyOnce, false, "x")
            .await,
        ReasonCode::NoMatchingSubscribers,
        "PUBREC 0x10 when no subscription matches"
    );

    // Control: with a subscriber, Success.
    let mut sub = Peer::connect(&broker, Protocol::V5, "sub").await;
    sub.subscribe(&["nobody/+"], QoS::AtMostOnce).await;
    assert_eq!(
        publisher
            .publish("nobody/here", QoS::AtLeastOnce, false, "y")
            .await,
        ReasonCode::Success
    );
    assert_eq!(text(&sub.expect_publish().await), "y");
}
