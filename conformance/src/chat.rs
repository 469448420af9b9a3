//! Chat devices for the tests: raw MQTT 5 clients logged in as users, publishing to
//! `dm/...` and `group/...` with user properties, and reading what reaches their inboxes.

use bytes::Bytes;
use tern_codec::{
    ByteString, Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};

use crate::{publish_packet, Broker, RawClient};

pub fn login(user: &str, password: Option<&str>) -> impl FnOnce(&mut Connect) {
    let user = ByteString::from(user);
    let password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    move |c| {
        c.username = Some(user);
        c.password = password;
    }
}

/// A v5 raw client logged in as the anonymous development user `user`.
pub async fn device(broker: &Broker, user: &'static str, client_id: &str) -> RawClient {
    RawClient::open_ok(
        broker.addr,
        Protocol::V5,
        client_id,
        true,
        login(user, None),
    )
    .await
    .0
}

/// Subscribes to several filters at QoS 1; returns the SUBACK reasons.
pub async fn subscribe_all(client: &mut RawClient, filters: &[&str]) -> Vec<ReasonCode> {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    };
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id: 9,
            properties: Properties::default(),
            filters: filters
                .iter()
                .map(|f| (ByteString::from(*f), options))
                .collect(),
        }))
        .await;
    match client.recv().await {
        Some(Packet::SubAck(ack)) => ack.reasons,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Publishes at QoS 1 with user properties; returns the PUBACK reason.
pub async fn publish(
    client: &mut RawClient,
    packet_id: u16,
    topic: &str,
    payload: &str,
    props: &[(&str, &str)],
) -> ReasonCode {
    let mut p = publish_packet(
        topic,
        QoS::AtLeastOnce,
        packet_id,
        Bytes::copy_from_slice(payload.as_bytes()),
    );
    p.properties.user_properties = props
        .iter()
        .map(|(k, v)| (ByteString::from(*k), ByteString::from(*v)))
        .collect();
    client.send(Packet::Publish(p)).await;
    loop {
        match client.recv().await {
            Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => return ack.reason,
            // Deliveries to this same client may come first: acknowledge and go on.
            Some(Packet::Publish(p)) => client.ack(&p).await,
            other => panic!("expected the PUBACK of {topic}, got {other:?}"),
        }
    }
}

/// Sends probes (`probe` DMs to `to`) from `sender` until `device` receives one live, and
/// returns it: in a cluster, the device's node subscribed to the user's deliveries in
/// NATS (a SUBACK says only that the node has the subscription).
pub async fn until_delivered(sender: &mut RawClient, to: &str, device: &mut RawClient) -> Publish {
    let topic = format!("dm/{to}");
    for packet_id in 1.. {
        let reason = publish(sender, packet_id, &topic, "probe", &[]).await;
        assert_eq!(reason, ReasonCode::Success, "probe stored");
        if let Ok(Some(Packet::Publish(p))) = device
            .recv_within(std::time::Duration::from_millis(300))
            .await
        {
            device.ack(&p).await;
            return p;
        }
    }
    unreachable!("packet ids are unbounded")
}

/// A sync request as a device sends it: QoS 0 to `$sync`, the payload the last seq seen.
pub async fn sync_request(client: &mut RawClient, after: &str) {
    let p = publish_packet(
        "$sync",
        QoS::AtMostOnce,
        0,
        Bytes::copy_from_slice(after.as_bytes()),
    );
    client.send(Packet::Publish(p)).await;
}

pub fn prop(p: &Publish, key: &str) -> Option<String> {
    p.properties
        .user_properties
        .iter()
        .find(|(k, _)| &**k == key)
        .map(|(_, v)| v.to_string())
}

/// (topic, payload, from, seq) of the next PUBLISH, acknowledged.
pub async fn next(client: &mut RawClient, what: &str) -> (String, String, String, String) {
    let p = client.expect_publish(what).await;
    (
        p.topic.to_string(),
        String::from_utf8_lossy(&p.payload).into_owned(),
        prop(&p, "from").unwrap_or_default(),
        prop(&p, "seq").unwrap_or_default(),
    )
}

pub fn row(topic: &str, payload: &str, from: &str, seq: u64) -> (String, String, String, String) {
    (topic.into(), payload.into(), from.into(), seq.to_string())
}
