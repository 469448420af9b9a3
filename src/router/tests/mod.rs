//! The router without sockets: its handle on the in-memory store, every connection a
//! mailbox read by the test. `core.rs` drives the synchronous core directly.

mod chat;
mod cluster;
mod core;
mod routing;
mod sessions;
mod stats;

use std::sync::Arc;

use bytes::Bytes;
use tern_codec::{
    ByteString, Properties, Protocol, QoS, RetainHandling, Subscribe, SubscriptionOptions,
};
use tern_storage::{MemoryStore, SyncPolicy, Writer};

use super::mailbox::{mailbox, Mailbox};
use super::{Attached, ConnectRequest, Detach, Router, RouterHandle, RouterLimits, SubscribeReply};
use crate::config::ImConfig;
use crate::metrics::Metrics;
use crate::protocol::Message;

pub(crate) struct Harness {
    pub(crate) router: RouterHandle,
    pub(crate) store: Arc<MemoryStore>,
    pub(crate) writer: Writer,
    pub(crate) metrics: Arc<Metrics>,
}

pub(crate) struct Client {
    pub(crate) attached: Attached,
    /// Kept open (its broadcast lane fills when not read).
    pub(crate) mailbox: Mailbox,
}

pub(crate) fn limits() -> RouterLimits {
    RouterLimits {
        max_topic_levels: 8,
        max_subscriptions_per_session: 10,
        max_queued_messages: 3,
        max_retained_messages: 2,
        im: ImConfig {
            max_devices_per_user: 2,
            // Its retained messages would be in every test's way (see chat_features.rs).
            presence: false,
            ..ImConfig::default()
        },
        cluster: false,
    }
}

pub(crate) fn start() -> Harness {
    start_on(Arc::new(MemoryStore::new()))
}

pub(crate) fn start_on(store: Arc<MemoryStore>) -> Harness {
    start_with(limits(), store)
}

pub(crate) fn start_with(limits: RouterLimits, store: Arc<MemoryStore>) -> Harness {
    start_node(limits, store, None)
}

/// A router with `peers`: one node of a cluster.
pub(crate) fn start_node(
    limits: RouterLimits,
    store: Arc<MemoryStore>,
    peers: Option<crate::router::Peers>,
) -> Harness {
    let writer = Writer::start(store.clone(), SyncPolicy::Always, 64);
    let metrics = Arc::new(Metrics::new());
    let router = Router::load(limits, &*store, metrics.clone()).expect("load");
    let (router, _timers) = RouterHandle::start(router, writer.clone(), peers);
    Harness {
        router,
        store,
        writer,
        metrics,
    }
}

/// A v5 connection of `user` as `client_id`, with a mailbox of the given capacities
/// (chat, broadcasts).
pub(crate) fn request(
    user: &str,
    client_id: &str,
    clean_start: bool,
    expiry_secs: u32,
    chat_capacity: usize,
    lane_capacity: usize,
) -> (ConnectRequest, Mailbox) {
    let (postbox, mailbox) = mailbox(chat_capacity, lane_capacity);
    let request = ConnectRequest {
        client_id: arcstr::ArcStr::from(client_id),
        user: arcstr::ArcStr::from(user),
        clean_start,
        expiry_secs,
        protocol: Protocol::V5,
        postbox,
    };
    (request, mailbox)
}

/// A SUBSCRIBE of these filters.
pub(crate) fn filters(filters: &[(&str, QoS)]) -> Subscribe {
    Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: filters
            .iter()
            .map(|(filter, qos)| {
                let options = SubscriptionOptions {
                    qos: *qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribe,
                };
                (ByteString::from(*filter), options)
            })
            .collect(),
    }
}

pub(crate) fn message(topic: &str, qos: QoS, retain: bool, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        retain,
        ..Message::test(topic, qos, Bytes::from_static(payload))
    })
}

pub(crate) fn payloads(mailbox: &mut Mailbox) -> Vec<Bytes> {
    std::iter::from_fn(|| mailbox.pop_chat())
        .map(|d| d.message.payload.clone())
        .collect()
}

pub(crate) fn topics(mailbox: &mut Mailbox) -> Vec<String> {
    std::iter::from_fn(|| mailbox.pop_chat())
        .map(|d| d.message.topic.to_string())
        .collect()
}

impl Harness {
    /// Stops the router and waits until every write it queued is applied.
    pub(crate) async fn stop(&self) {
        self.router.shutdown();
        self.writer.barrier().await.expect("writes applied");
    }

    pub(crate) async fn connect(
        &self,
        user: &str,
        id: &str,
        clean_start: bool,
        expiry_secs: u32,
    ) -> Client {
        self.connect_with(request(user, id, clean_start, expiry_secs, 8, 8))
            .await
    }

    pub(crate) async fn connect_with(
        &self,
        (request, mailbox): (ConnectRequest, Mailbox),
    ) -> Client {
        let attached = self
            .router
            .connect(request)
            .await
            .expect("router")
            .expect("attached");
        Client { attached, mailbox }
    }

    pub(crate) async fn subscribe(&self, c: &Client, filter: &str, qos: QoS) -> SubscribeReply {
        let (reply, durable) = self
            .router
            .subscribe(c.attached.session, filters(&[(filter, qos)]))
            .await
            .expect("router");
        durable.await.expect("stored");
        reply
    }

    pub(crate) async fn detach(&self, c: Client) {
        self.router
            .detach(Detach {
                session: c.attached.session,
                conn: c.attached.conn,
                will: None,
                expiry_secs: None,
                sent: vec![],
            })
            .await
            .expect("router");
    }

    /// Publishes and waits until its writes are durable; whether a subscription matched.
    pub(crate) async fn publish(&self, m: Arc<Message>) -> bool {
        let (routed, durable) = self.router.publish(&m, None, true).await.expect("router");
        durable.await.expect("durable");
        routed.matched
    }
}
