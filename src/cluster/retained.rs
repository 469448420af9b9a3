//! Retained messages, cluster-wide: a JetStream stream keeps the last message of each
//! topic (`tern.retained.<levels>`, at most one message per subject, the cluster's
//! replicas), which is exactly MQTT's retained store. The node that receives a retained
//! PUBLISH stores it locally (as always) and appends it; every node follows the stream
//! with one ordered consumer (one per node, never one per session) and applies each
//! message to its own retained store in the stream's order, its own appends included, so
//! all nodes converge on the stream's last word per topic. An empty payload deletes, as
//! in MQTT; the empty message stays as the topic's last.
//!
//! A node applies the stream's current contents before it takes clients, so a subscriber
//! on a node that just joined gets the retained messages published elsewhere.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::subject;
use crate::router::RouterHandle;

const STREAM: &str = "TERN_RETAINED";

/// Appends waiting for JetStream's acknowledgement at once; more wait for a place.
const APPENDS_IN_FLIGHT: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum RetainedError {
    #[error("cannot create or open the stream {STREAM}: {0}")]
    Stream(#[from] jetstream::context::CreateStreamError),
    #[error("cannot follow the stream {STREAM}: {0}")]
    Consumer(#[from] jetstream::stream::ConsumerError),
    #[error("cannot read the stream {STREAM}: {0}")]
    Read(#[from] jetstream::consumer::StreamError),
    #[error("reading the stream {STREAM}: {0}")]
    Message(#[from] jetstream::consumer::pull::OrderedError),
}

/// The node's writer of retained messages into the stream.
pub(super) struct RetainedLog {
    jetstream: jetstream::Context,
    in_flight: Arc<Semaphore>,
}

impl RetainedLog {
    /// Opens (or creates) the stream with `replicas`.
    pub(super) async fn open(
        client: &async_nats::Client,
        replicas: usize,
    ) -> Result<(RetainedLog, stream::Stream), RetainedError> {
        let jetstream = jetstream::new(client.clone());
        let stream = jetstream
            .get_or_create_stream(stream::Config {
                name: STREAM.to_string(),
                subjects: vec![format!("{}.>", subject::RETAINED)],
                max_messages_per_subject: 1,
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        Ok((
            RetainedLog {
                jetstream,
                in_flight: Arc::new(Semaphore::new(APPENDS_IN_FLIGHT)),
            },
            stream,
        ))
    }

    /// Appends a retained message (`record`: its encoding) of `topic`; the acknowledgement
    /// is awaited on a task of its own, a bounded number at a time.
    pub(super) async fn append(&self, topic: &str, record: bytes::Bytes) {
        let Some(subject) = subject::retained(topic) else {
            tracing::debug!(len = topic.len(), "topic too long to retain cluster-wide");
            return;
        };
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        match self.jetstream.publish(subject, record).await {
            Ok(ack) => {
                let topic = topic.to_string();
                tokio::spawn(async move {
                    if let Err(e) = ack.await {
                        tracing::warn!(%topic, "retained message not stored cluster-wide: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => tracing::warn!(%topic, "retained message not stored cluster-wide: {e}"),
        }
    }
}

/// Follows the stream from each topic's last message: applies what it holds now, then
/// returns the task that applies what comes after.
pub(super) async fn follow(
    stream: &stream::Stream,
    router: RouterHandle,
) -> Result<tokio::task::JoinHandle<()>, RetainedError> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            filter_subject: format!("{}.>", subject::RETAINED),
            ..Default::default()
        })
        .await?;
    // What the stream holds now, before the node takes clients.
    let mut left = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await?;
    while left > 0 {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message?;
        left = message.info().map(|info| info.pending).unwrap_or(0);
        apply(&router, &message).await;
    }
    Ok(tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(message) => apply(&router, &message).await,
                Err(e) => tracing::warn!("following {STREAM}: {e}"),
            }
        }
    }))
}

async fn apply(router: &RouterHandle, message: &jetstream::Message) {
    match super::decode(message.payload.clone()) {
        Ok(retained) => {
            let _ = router.retain_remote(Arc::new(retained)).await;
        }
        Err(e) => tracing::warn!(subject = %message.subject, "skipped a retained message: {e}"),
    }
}
