//! Applies `im.inbox_max_age_secs` to the cluster's inbox logs (never below
//! `im.dedup_window_secs`: resends are recognised by the ids in the logs). A stream's own `max_age`
//! cannot: it would also delete an idle log's last message, and with it the seq the log's
//! next entry gets (a log that looks empty starts again at 0).
//!
//! One node at a time (the live node with the smallest id) trims each inbox stream every
//! `cluster.inbox_trim_secs`. It finds the first message younger than the age, and for
//! each log holding older ones:
//! - a log with younger messages loses the older ones;
//! - a log whose messages are all older gets a marker appended (an empty message that
//!   keeps the log's numbering: its `Tern-Seq` is the seq the next entry gets), on the
//!   condition that its last message is still the one read, and then loses everything
//!   before the marker. A log appended to meanwhile is left for the next pass.
//!
//! A pass looks at most [`MAX_LOGS`] logs per stream; the next pass goes on.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use futures_util::StreamExt;
use time::OffsetDateTime;

use super::inbox::{header_u64, publish_acked, read_last, InboxStreams, COUNT, SEQ, USER};
use super::lease::Turns;
use super::subject;
use crate::router::NodeLease;

/// Logs one pass trims at most per stream (bounds the pass's memory).
const MAX_LOGS: usize = 65_536;

/// How long a pass may take at least before it is given up (longer if passes are rarer).
const PASS_TIMEOUT: Duration = Duration::from_secs(60);

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Trimmed {
    /// Logs that lost messages older than the age.
    pub(super) logs: usize,
    /// Of them, the ones left with only a marker.
    pub(super) emptied: usize,
}

/// Trims on each of this node's turns (see [`Turns`]), every `every`.
pub(super) async fn trim_every(
    streams: InboxStreams,
    mut turns: Turns,
    lease: std::sync::Arc<NodeLease>,
    every: Duration,
    max_age: Duration,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
) {
    loop {
        turns.next().await;
        // A pass that hangs (NATS unreachable mid-read) gives way to the next one.
        let pass = tokio::time::timeout(every.max(PASS_TIMEOUT), trim(&streams, &lease, max_age));
        match pass.await {
            Ok(Ok(trimmed)) => {
                if let Some(metrics) = &metrics {
                    metrics.inbox_trim_pass(trimmed.logs as u64);
                }
                if trimmed != Trimmed::default() {
                    tracing::info!(
                        logs = trimmed.logs,
                        emptied = trimmed.emptied,
                        "inbox logs trimmed to im.inbox_max_age_secs"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!("inbox trim stopped: {e}"),
            Err(_) => tracing::warn!(
                "inbox trim stopped: no end within {:?}",
                every.max(PASS_TIMEOUT)
            ),
        }
    }
}

/// One pass over every inbox stream.
pub(super) async fn trim(
    streams: &InboxStreams,
    lease: &NodeLease,
    max_age: Duration,
) -> Result<Trimmed, async_nats::Error> {
    let mut trimmed = Trimmed::default();
    for stream in streams.all() {
        let cutoff = OffsetDateTime::now_utc() - max_age;
        let Some(young) = first_young(streams.jetstream(), stream, cutoff).await? else {
            continue;
        };
        for (log, old) in old_logs(stream, young).await? {
            // A lone marker is all an idle log keeps.
            if old.messages == 1 && old.last_is_marker {
                continue;
            }
            match trim_log(streams.jetstream(), stream, lease, &log, young).await {
                Ok(Some(emptied)) => {
                    trimmed.logs += 1;
                    trimmed.emptied += usize::from(emptied);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(%log, "inbox log left for the next trim: {e}"),
            }
        }
    }
    Ok(trimmed)
}

/// The stream sequence of the first message stored at `cutoff` or later (the stream's
/// next one when all are older); `None` when the stream holds nothing older.
async fn first_young(
    jetstream: &jetstream::Context,
    stream: &stream::Stream,
    cutoff: OffsetDateTime,
) -> Result<Option<u64>, async_nats::Error> {
    let info = stream.get_info().await?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    if info.state.messages == 0 || info.state.first_timestamp >= cutoff {
        return Ok(None);
    }
    let cutoff = cutoff.format(&time::format_description::well_known::Rfc3339)?;
    let request = serde_json::json!({ "start_time": cutoff }).to_string();
    let reply = jetstream
        .client()
        .request(subject::direct_get(&info.config.name), request.into())
        .await?;
    let young = match reply.status {
        // Nothing at or after the cutoff: every message is older.
        Some(_) => last + 1,
        None => reply
            .headers
            .as_ref()
            .and_then(|h| header_u64(h, "Nats-Sequence"))
            .ok_or("a direct get reply without Nats-Sequence")?,
    };
    Ok((young > first).then_some(young))
}

/// How a log's messages older than the age look.
#[derive(Debug, Default)]
struct Old {
    messages: usize,
    last_is_marker: bool,
}

/// The logs (subjects) with messages before stream sequence `young`, up to [`MAX_LOGS`].
async fn old_logs(
    stream: &stream::Stream,
    young: u64,
) -> Result<HashMap<String, Old>, async_nats::Error> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            headers_only: true,
            ..Default::default()
        })
        .await?;
    let mut logs: HashMap<String, Old> = HashMap::new();
    let mut left = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await?;
    while left > 0 && logs.len() < MAX_LOGS {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message?;
        let info = message.info()?;
        if info.stream_sequence >= young {
            break;
        }
        left = info.pending;
        let marker = message
            .headers
            .as_ref()
            .and_then(|h| header_u64(h, COUNT))
            .is_some_and(|count| count == 0);
        let old = logs.entry(message.subject.to_string()).or_default();
        old.messages += 1;
        old.last_is_marker = marker;
    }
    Ok(logs)
}

/// Deletes `log`'s messages before stream sequence `young`, keeping its numbering: a
/// marker first if all its messages are older. `Some(true)`: left with only the marker;
/// `None`: nothing to do (the log was appended to meanwhile, or is already trimmed).
async fn trim_log(
    jetstream: &jetstream::Context,
    stream: &stream::Stream,
    lease: &NodeLease,
    log: &str,
    young: u64,
) -> Result<Option<bool>, async_nats::Error> {
    let Some((message, last)) = read_last(stream, log).await? else {
        return Ok(None);
    };
    if last.stream_seq >= young {
        stream.purge().filter(log).sequence(young).await?;
        return Ok(Some(false));
    }
    let headers = &message.headers;
    let marker = if header_u64(headers, COUNT) == Some(0) {
        last.stream_seq
    } else {
        let user = headers
            .get(USER)
            .map(|v| v.as_str().to_string())
            .ok_or("the log's last message has no Tern-User")?;
        if !lease.holds() {
            return Ok(None);
        }
        let publish = jetstream::message::PublishMessage::build()
            .expected_last_subject_sequence(last.stream_seq)
            .header(SEQ, last.next_seq.to_string().as_str())
            .header(COUNT, "0")
            .header(USER, user.as_str());
        match publish_acked(jetstream, log, publish).await {
            Ok(ack) => ack.sequence,
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    stream.purge().filter(log).sequence(marker).await?;
    Ok(Some(true))
}
