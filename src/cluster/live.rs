//! Live routing between nodes over core NATS: each message the router forwards is
//! published on its topic's subject (broadcasts on one subject every node listens to), and
//! each filter this node's subscriptions hold is a NATS subscription whose messages go to
//! the router as remote ones. NATS delivers a message only to the nodes that subscribed a
//! matching subject, so a node without a matching subscriber receives nothing.
//!
//! Three tasks: `forward` (router -> NATS, in the router's order), `follow_interest` (adds
//! and drops NATS subscriptions as filters come and go) and one `relay` per held subject
//! (NATS -> router, in the order NATS delivers). Shared subscription groups are NATS queue
//! groups, so a group gets each message once across the nodes.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tern_storage::StorageError;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::messages::{self, MessageLog};
use super::retained::RetainedLog;
use super::{inbox, subject};
use crate::im::topics::is_broadcast;
use crate::router::{Forward, Interest, RouterHandle};

/// Appends to the message stream awaiting its acknowledgement, at most: past this the
/// link takes no more from the router, and publishers wait.
const MAX_APPENDS: usize = 4_096;

/// Publishes what the router forwards, until the router is gone: a kept (QoS > 0) message
/// to the message stream, which republishes it live; retained messages also go to the
/// retained messages' stream.
pub(super) async fn forward(
    client: async_nats::Client,
    retained: RetainedLog,
    kept_log: MessageLog,
    mut messages: mpsc::Receiver<Forward>,
) {
    let mut appends = FuturesUnordered::new();
    loop {
        let Forward { message, kept } = tokio::select! {
            forward = messages.recv(), if appends.len() < MAX_APPENDS => match forward {
                Some(forward) => forward,
                None => break,
            },
            Some(()) = appends.next(), if !appends.is_empty() => continue,
        };
        let broadcast = is_broadcast(&message.topic);
        let subject = if broadcast {
            subject::BROADCASTS.to_string()
        } else {
            match subject::for_topic(&message.topic) {
                Some(subject) => subject,
                None => {
                    tracing::debug!(len = message.topic.len(), "topic too long to cross nodes");
                    continue;
                }
            }
        };
        let record = match super::encode(&message) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(topic = %message.topic, "message not forwarded: {e}");
                continue;
            }
        };
        if message.retain && !broadcast {
            retained.append(&message.topic, record.clone()).await;
        }
        if let Some(kept) = kept {
            let Some(subject) = subject::kept(&message.topic) else {
                let _ = kept.done.send(Ok(()));
                continue;
            };
            let appended = kept_log.append(subject, record, kept.append.number()).await;
            appends.push(async move {
                let result = appended.await;
                if let Err(what) = &result {
                    tracing::warn!("a message was not kept by the cluster: {what}");
                }
                let _ = kept
                    .done
                    .send(result.map_err(|what| StorageError::Elsewhere { what }));
                // Over: a session adopted here may now read the stream's end.
                drop(kept.append);
            });
            continue;
        }
        // Waits while the client's buffer is full: the forwarding publishers wait with it.
        if let Err(e) = client.publish(subject, record).await {
            tracing::warn!(topic = %message.topic, "message not forwarded to the other nodes: {e}");
        }
    }
    while appends.next().await.is_some() {}
}

/// Keeps one NATS subscription per subject of every filter some local subscription holds.
/// A shared group (`$share/{group}/{filter}`) is a queue subscription on `shared`, in a
/// NATS queue group named after the group and filter, the same on every node: NATS hands
/// each message to one of the nodes holding members, which delivers it to one of its
/// members. `shared` receives this node's own messages too (unlike `client`), so the node
/// that published takes its turn like the others.
pub(super) async fn follow_interest(
    client: async_nats::Client,
    shared: async_nats::Client,
    node: Arc<str>,
    interest: Arc<Interest>,
    router: RouterHandle,
    broadcasts: Arc<Semaphore>,
) {
    let mut held: HashMap<Box<str>, Vec<JoinHandle<()>>> = HashMap::new();
    let mut stopped = std::pin::pin!(router.closed());
    loop {
        let (changes, generation) = tokio::select! {
            taken = interest.next() => taken,
            () = &mut stopped => break,
        };
        for (filter, wanted) in changes {
            if !wanted {
                // Dropping a relay's subscriber unsubscribes it.
                for relay in held.remove(&filter).into_iter().flatten() {
                    relay.abort();
                }
                continue;
            }
            if held.contains_key(&filter) {
                continue;
            }
            let via: Arc<str> = Arc::from(&*filter);
            let mut relays = Vec::new();
            let (subjects, queue) = match tern_codec::topic::split_shared(&filter) {
                Some(Ok((_, inner))) => (
                    subject::for_filter(inner),
                    Some(format!("tern-share.{}", subject::key(&filter))),
                ),
                _ => (subject::for_filter(&filter), None),
            };
            for subject in subjects {
                let subscribed = match &queue {
                    Some(queue) => shared.queue_subscribe(subject.clone(), queue.clone()).await,
                    None => client.subscribe(subject.clone()).await,
                };
                match subscribed {
                    Ok(subscriber) if subject::is_delivery(&subject) => relays.push(tokio::spawn(
                        inbox::relay(subscriber, via.clone(), router.clone()),
                    )),
                    Ok(subscriber) => relays.push(tokio::spawn(relay(
                        subscriber,
                        Some(via.clone()),
                        queue.is_none().then(|| node.clone()),
                        router.clone(),
                        broadcasts.clone(),
                    ))),
                    Err(e) => tracing::warn!(%filter, %subject, "cannot subscribe: {e}"),
                }
            }
            held.insert(filter, relays);
        }
        // Each subscription above was handed to the client, which sends them ahead of
        // anything sent after this.
        interest.applied(generation);
    }
    for relay in held.into_values().flatten() {
        relay.abort();
    }
}

/// Hands each message of one NATS subscription to the router, in order. `via` is the
/// filter the subscription stands for (`None`: the broadcasts' subject). `node`: this
/// node, whose own kept messages the stream republishes to it too (it delivered them
/// already); `None` for a shared group's subscription, where this node's copy is its turn.
pub(super) async fn relay(
    mut subscriber: async_nats::Subscriber,
    via: Option<Arc<str>>,
    node: Option<Arc<str>>,
    router: RouterHandle,
    broadcasts: Arc<Semaphore>,
) {
    while let Some(received) = subscriber.next().await {
        let seq =
            match messages::republished(received.headers.as_ref(), node.as_deref().unwrap_or("")) {
                Ok(seq) => seq,
                Err(()) => continue,
            };
        let message = match super::decode(received.payload) {
            Ok(mut message) => {
                message.cluster_seq = seq;
                Arc::new(message)
            }
            Err(e) => {
                tracing::warn!(subject = %received.subject, "dropped a message from another node: {e}");
                continue;
            }
        };
        // A broadcast's fan-out holds one of the broker's broadcast permits, as a local
        // one does: a node receiving a flood of them fans out a bounded number at a time.
        let permit = match via {
            None => match broadcasts.clone().acquire_owned().await {
                Ok(permit) => Some(permit),
                Err(_) => break,
            },
            Some(_) => None,
        };
        if router
            .publish_remote(&message, via.as_deref(), permit)
            .await
            .is_err()
        {
            break;
        }
    }
}
