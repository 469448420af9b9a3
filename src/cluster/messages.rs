//! QoS > 0 plain messages across nodes, kept: a node appends each one to the stream
//! `TERN_MESSAGES` (on `tern.msg.<levels>`) before its publisher is acknowledged, and the
//! stream republishes it on its topic's live subject, where the nodes holding a matching
//! filter receive it with its stream sequence (`Nats-Sequence`). The publishing node
//! delivered it to its own subscribers already and skips the copy ([`NODE`]). QoS 0
//! messages go to the live subjects directly and are kept nowhere.
//!
//! The stream holds messages for `cluster.message_retention_secs` (and at most
//! `cluster.message_retention_bytes`): a persistent session resumed on another node reads
//! what it missed from there, from its cursor on, through its filters ([`MessageLog::read`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::{subject, ATTEMPT_TIMEOUT};
use crate::protocol::Message;

const STREAM: &str = "TERN_MESSAGES";

/// Header naming the node that appended a message.
pub(super) const NODE: &str = "Tern-Node";

/// How long a read of what a session missed may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages fetched at once by such a read.
const READ_PAGE: usize = 256;

/// Why the message stream could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum MessageLogError {
    #[error("cannot create or open the stream {STREAM}: {0}")]
    Stream(#[source] async_nats::Error),
    #[error("reading the stream {STREAM}: {0}")]
    Read(#[source] async_nats::Error),
    #[error("reading the stream {STREAM} took longer than {READ_TIMEOUT:?}")]
    TimedOut,
}

/// The cluster's stream of QoS > 0 messages, as one node appends to and reads it.
#[derive(Clone)]
pub(crate) struct MessageLog {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    node: Arc<str>,
    /// What the ids of this process's appends start with (`node.start.`; the router's
    /// number of the append follows), so that an append sent again after a lost
    /// acknowledgement is stored once, and a read can tell this process's appends.
    own_ids: Arc<str>,
    /// How long an append is retried (`cluster.append_timeout_ms`).
    retry_for: Duration,
    /// The stream's replicas.
    replicas: usize,
}

/// Where the stream keeps its messages, and for how long.
pub(super) struct Retention {
    pub(super) replicas: usize,
    pub(super) max_age: Duration,
    pub(super) max_bytes: i64,
    pub(super) retry_for: Duration,
}

impl MessageLog {
    /// Opens (or creates) the stream.
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        node: &str,
        retention: Retention,
    ) -> Result<MessageLog, MessageLogError> {
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec![subject::all_kept()],
            max_age: retention.max_age,
            max_bytes: retention.max_bytes,
            discard: stream::DiscardPolicy::Old,
            num_replicas: retention.replicas,
            storage: stream::StorageType::File,
            republish: Some(stream::Republish {
                source: subject::all_kept(),
                destination: subject::all_live(),
                headers_only: false,
            }),
            ..Default::default()
        };
        let stream = jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| MessageLogError::Stream(e.into()))?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Ok(MessageLog {
            jetstream: jetstream.clone(),
            stream,
            node: Arc::from(node),
            own_ids: Arc::from(format!("{node}.{started}.")),
            retry_for: retention.retry_for,
            replicas: retention.replicas,
        })
    }

    /// Sends `record` (a message's encoding, the router's append number `append`) to the
    /// stream on `subject`: the send is made now, in the caller's order; the returned
    /// future waits until the stream keeps it (sending it again while its acknowledgement
    /// is lost, for `retry_for`), or says why it could not.
    pub(super) async fn append(
        &self,
        subject: String,
        record: Bytes,
        append: u64,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let mut headers = HeaderMap::new();
        headers.insert(NODE, &*self.node);
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}{append}", self.own_ids).as_str(),
        );
        let first = self
            .jetstream
            .publish_with_headers(subject.clone(), headers.clone(), record.clone())
            .await;
        let jetstream = self.jetstream.clone();
        let retry_for = self.retry_for;
        async move {
            let deadline = Instant::now() + retry_for;
            let mut backoff = super::Backoff::for_appends();
            let mut attempt = first.map_err(|e| e.to_string());
            loop {
                let why = match attempt {
                    Ok(ack) => match acknowledged(ack).await {
                        Ok(()) => return Ok(()),
                        Err(why) => why,
                    },
                    Err(why) => why,
                };
                if backoff.sleep_before(deadline).await.is_err() {
                    return Err(format!(
                        "the message stream refused it for {retry_for:?}: {why}"
                    ));
                }
                tracing::debug!(%subject, "append to the message stream retried: {why}");
                attempt = jetstream
                    .publish_with_headers(subject.clone(), headers.clone(), record.clone())
                    .await
                    .map_err(|e| e.to_string());
            }
        }
    }

    /// The stream's last sequence (0 while empty): a new session's device starts after it.
    pub(crate) async fn last(&self) -> Result<u64, MessageLogError> {
        let mut stream = self.stream.clone();
        let info = tokio::time::timeout(READ_TIMEOUT, stream.info())
            .await
            .map_err(|_| MessageLogError::TimedOut)?
            .map_err(|e| MessageLogError::Read(e.into()))?;
        Ok(info.state.last_sequence)
    }

    /// Up to `limit` messages from sequence `from` on whose subjects match `filters` (the
    /// session's filters as [`subject::kept_for_filter`] makes them), each with its
    /// sequence, and the first sequence the read did not cover (the read stops at the
    /// stream's last sequence when it began: later ones reach the node live).
    pub(crate) async fn read(
        &self,
        filters: Vec<String>,
        from: u64,
        limit: usize,
    ) -> Result<Read, MessageLogError> {
        tokio::time::timeout(READ_TIMEOUT, self.read_now(filters, from, limit))
            .await
            .map_err(|_| MessageLogError::TimedOut)?
    }

    async fn read_now(
        &self,
        filters: Vec<String>,
        from: u64,
        limit: usize,
    ) -> Result<Read, MessageLogError> {
        let last = self.last().await?;
        let mut read = Read {
            messages: Vec::new(),
            until: last + 1,
            appended_here: HashSet::new(),
        };
        if filters.is_empty() || from > last || limit == 0 {
            return Ok(read);
        }
        // An ephemeral consumer of this read alone, fetched from page by page until it
        // has given everything up to `last` (no flow of its own to wait on).
        let config = |filter_subjects| consumer::pull::Config {
            filter_subjects,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            // As many as the stream: a one-replica consumer may be placed on a NATS server
            // that is down, and its creation then never answers.
            num_replicas: self.replicas,
            ..Default::default()
        };
        // Filters that overlap (`a/#` and `a/b`) cannot be a consumer's: then every
        // message is read, and the router matches the session's filters itself.
        let consumer = match self.stream.create_consumer(config(filters)).await {
            Ok(consumer) => consumer,
            Err(e) => {
                tracing::debug!("reading the message stream unfiltered: {e}");
                self.stream
                    .create_consumer(config(vec![subject::all_kept()]))
                    .await
                    .map_err(|e| MessageLogError::Read(e.into()))?
            }
        };
        let mut left = consumer.cached_info().num_pending;
        'pages: while left > 0 && read.messages.len() < limit {
            let mut page = consumer
                .fetch()
                .max_messages((limit - read.messages.len()).min(READ_PAGE))
                .messages()
                .await
                .map_err(|e| MessageLogError::Read(e.into()))?;
            let mut got = 0;
            while let Some(message) = page.next().await {
                let message = message.map_err(MessageLogError::Read)?;
                let info = message.info().map_err(MessageLogError::Read)?;
                got += 1;
                left = info.pending;
                let seq = info.stream_sequence;
                if seq > last {
                    break 'pages;
                }
                match super::decode(message.payload.clone()) {
                    Ok(mut decoded) => {
                        decoded.cluster_seq = Some(seq);
                        read.messages.push(decoded);
                        if let Some(append) = self.own_append(message.headers.as_ref()) {
                            read.appended_here.insert(append);
                        }
                    }
                    Err(e) => tracing::warn!(seq, "skipped a message of {STREAM}: {e}"),
                }
            }
            if got == 0 {
                break;
            }
        }
        let name = consumer.cached_info().name.clone();
        if let Err(e) = self.stream.delete_consumer(&name).await {
            tracing::debug!("the read's consumer is left to expire: {e}");
        }
        if read.messages.len() >= limit {
            // Stopped at the limit: what follows is still to come.
            if let Some(seq) = read.messages.last().and_then(|m| m.cluster_seq) {
                read.until = seq + 1;
            }
        }
        Ok(read)
    }

    /// The router's number of a message this process appended, from its id.
    fn own_append(&self, headers: Option<&HeaderMap>) -> Option<u64> {
        headers?
            .get(async_nats::header::NATS_MESSAGE_ID)?
            .as_str()
            .strip_prefix(&*self.own_ids)?
            .parse()
            .ok()
    }
}

/// What [`MessageLog::read`] read.
pub(crate) struct Read {
    /// In stream order, each with its sequence (`Message::cluster_seq`).
    pub(crate) messages: Vec<Message>,
    /// The first sequence the read did not cover.
    pub(crate) until: u64,
    /// The router's numbers of the messages read that this process appended.
    pub(crate) appended_here: HashSet<u64>,
}

async fn acknowledged(ack: PublishAckFuture) -> Result<(), String> {
    match tokio::time::timeout(ATTEMPT_TIMEOUT, std::future::IntoFuture::into_future(ack)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no acknowledgement within {ATTEMPT_TIMEOUT:?}")),
    }
}

/// The stream sequence of a message the stream republished, unless `node` appended it
/// (and delivered it itself): `Err(())` to skip it. `Ok(None)`: not from the stream (QoS 0).
pub(super) fn republished(headers: Option<&HeaderMap>, node: &str) -> Result<Option<u64>, ()> {
    let Some(headers) = headers else {
        return Ok(None);
    };
    let Some(seq) = headers
        .get(async_nats::header::NATS_SEQUENCE)
        .and_then(|seq| seq.as_str().parse().ok())
    else {
        return Ok(None);
    };
    if headers.get(NODE).is_some_and(|from| from.as_str() == node) {
        return Err(());
    }
    Ok(Some(seq))
}
