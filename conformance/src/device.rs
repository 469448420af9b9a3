//! A chat device on rumqttc's MQTT 5 client (a third-party client), for the chat feature
//! tests: its event loop runs in a task of its own, and the test reads what arrives
//! (publishes with their user properties, acknowledgements) in order.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

use crate::EVENT_TIMEOUT;

/// What reached the device.
#[derive(Debug, Clone)]
enum Incoming {
    Publish(Received),
    PubAck(String),
    SubAck(Vec<SubscribeReasonCode>),
    /// The connection ended (the event loop's error).
    Closed(String),
}

/// A PUBLISH the device received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub properties: Vec<(String, String)>,
}

impl Received {
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("a JSON payload")
    }
}

pub struct Device {
    pub client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Publishes read while waiting for an acknowledgement, not yet taken.
    pending: VecDeque<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Device {
    /// Connects as the (anonymous, loopback) development user `user`, clean start.
    pub async fn connect(port: u16, user: &str, client_id: &str) -> Device {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_credentials(user, "");
        options.set_clean_start(true);
        Device::connect_with(options).await
    }

    /// Connects with `options`; waits for the CONNACK.
    pub async fn connect_with(options: MqttOptions) -> Device {
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (tx, incoming) = mpsc::unbounded_channel();
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                let event = match eventloop.poll().await {
                    Ok(event) => event,
                    Err(e) => {
                        let _ = tx.send(Incoming::Closed(e.to_string()));
                        if let Some(c) = connected_tx.take() {
                            let _ = c.send(Err(e.to_string()));
                        }
                        return;
                    }
                };
                let Event::Incoming(packet) = event else {
                    continue;
                };
                let forwarded = match packet {
                    Packet::ConnAck(ack) => {
                        if let Some(c) = connected_tx.take() {
                            let _ = c.send(Ok(format!("{:?}", ack.code)));
                        }
                        continue;
                    }
                    Packet::Publish(p) => Incoming::Publish(Received {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.clone(),
                        retain: p.retain,
                        properties: p.properties.map(|p| p.user_properties).unwrap_or_default(),
                    }),
                    Packet::PubAck(ack) => Incoming::PubAck(format!("{:?}", ack.reason)),
                    Packet::SubAck(ack) => Incoming::SubAck(ack.return_codes),
                    _ => continue,
                };
                if tx.send(forwarded).is_err() {
                    return;
                }
            }
        });
        let code = tokio::time::timeout(EVENT_TIMEOUT, connected)
            .await
            .expect("CONNACK within the timeout")
            .expect("event loop alive")
            .expect("connected");
        assert_eq!(code, "Success", "CONNACK");
        Device {
            client,
            incoming,
            pending: VecDeque::new(),
            task,
        }
    }

    async fn next_incoming(&mut self) -> Incoming {
        tokio::time::timeout(EVENT_TIMEOUT, self.incoming.recv())
            .await
            .expect("an event within the timeout")
            .expect("the device's event loop")
    }

    /// Subscribes to `filter` at QoS 1; the SUBACK's reason.
    pub async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        loop {
            match self.next_incoming().await {
                Incoming::SubAck(codes) => return codes[0],
                Incoming::Publish(p) => self.pending.push_back(p),
                Incoming::Closed(e) => panic!("closed while subscribing to {filter}: {e}"),
                Incoming::PubAck(_) => {}
            }
        }
    }

    /// Publishes at QoS 1 with user properties; the PUBACK's reason (`Success`,
    /// `NotAuthorized`, `PayloadFormatInvalid`, ...).
    pub async fn publish(&mut self, topic: &str, payload: &str, props: &[(&str, &str)]) -> String {
        let properties = PublishProperties {
            user_properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
                properties,
            )
            .await
            .expect("publish queued");
        loop {
            match self.next_incoming().await {
                Incoming::PubAck(reason) => return reason,
                Incoming::Publish(p) => self.pending.push_back(p),
                Incoming::Closed(e) => panic!("closed while publishing on {topic}: {e}"),
                Incoming::SubAck(_) => {}
            }
        }
    }

    /// The next publish received.
    pub async fn next(&mut self) -> Received {
        if let Some(p) = self.pending.pop_front() {
            return p;
        }
        loop {
            match self.next_incoming().await {
                Incoming::Publish(p) => return p,
                Incoming::Closed(e) => panic!("closed while waiting for a publish: {e}"),
                _ => {}
            }
        }
    }

    /// The next publish whose topic starts with `prefix`, skipping others.
    pub async fn next_on(&mut self, prefix: &str) -> Received {
        loop {
            let p = self.next().await;
            if p.topic.starts_with(prefix) {
                return p;
            }
        }
    }

    /// Disconnects cleanly and waits for the event loop to end.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(event) = self.incoming.recv().await {
                if matches!(event, Incoming::Closed(_)) {
                    break;
                }
            }
        })
        .await;
    }
}
