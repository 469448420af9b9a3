//! Ends the cluster's copies of persistent sessions that no node will end. A node writes
//! the copy of a session while it holds it (`session_state.rs`), but forgets the session
//! once its connection is gone: a session that expires offline there, or that was
//! connected to a node that died, would keep its copy (and its cursors) in
//! `TERN_SESSION_STATE` until its client id connects again, which may be never.
//!
//! One node at a time sweeps the bucket, every `cluster.session_sweep_secs`: the live
//! node with the smallest id (each node decides for itself from the leases; two sweeping
//! at once during a change only repeat each other's work). For each copy:
//! - no disconnect time, and its node holds no lease: it was connected when its node
//!   died. The sweep's time becomes its disconnect time, so its expiry runs from there
//!   (it ends a little later than it would have, never sooner).
//! - its expiry passed since its disconnect time: the copy is deleted, then its cursors.
//!
//! Each change is conditional on the revision the sweep read, so a session taken up
//! meanwhile (resumed, or a new one of the client id) is left as its new holder wrote it.

use async_nats::jetstream::{consumer, kv};
use bytes::Bytes;
use futures_util::StreamExt;

use super::lease::Turns;
use super::session_state::{cursor_key_of, Record, BUCKET, RECORD_PREFIX};
use crate::protocol::now_ms;

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Swept {
    /// Copies given a disconnect time (their node is gone).
    pub(super) orphaned: usize,
    /// Copies deleted (expired).
    pub(super) ended: usize,
}

/// Sweeps on each of this node's turns (see [`Turns`]).
pub(super) async fn sweep_every(kv: kv::Store, mut turns: Turns) {
    loop {
        let live = turns.next().await;
        match sweep(&kv, &live, now_ms()).await {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(
                    orphaned = swept.orphaned,
                    ended = swept.ended,
                    "cluster session copies swept"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cluster session sweep stopped: {e}"),
        }
    }
}

/// One pass over the bucket at `now` (Unix ms), with `live` the nodes holding a lease.
pub(super) async fn sweep(
    kv: &kv::Store,
    live: &[String],
    now: u64,
) -> Result<Swept, async_nats::Error> {
    let consumer = kv
        .stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            filter_subject: format!("$KV.{BUCKET}.{RECORD_PREFIX}>"),
            headers_only: false,
            ..Default::default()
        })
        .await?;
    let mut left = consumer.cached_info().num_pending;
    let mut swept = Swept::default();
    if left == 0 {
        return Ok(swept);
    }
    let keys_start = format!("$KV.{BUCKET}.");
    let mut messages = consumer.messages().await?;
    while left > 0 {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message?;
        let info = message.info()?;
        left = info.pending;
        let revision = info.stream_sequence;
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        let Some(key) = message.subject.strip_prefix(&keys_start) else {
            continue;
        };
        if deleted || message.payload.is_empty() {
            continue;
        }
        match settle(kv, key, revision, &message.payload, live, now).await {
            Ok(Some(Settled::Orphaned)) => swept.orphaned += 1,
            Ok(Some(Settled::Ended)) => swept.ended += 1,
            Ok(None) => {}
            // Written meanwhile (a resume), or a NATS hiccup: the next sweep decides again.
            Err(e) => tracing::debug!(%key, "cluster session copy left for the next sweep: {e}"),
        }
    }
    Ok(swept)
}

enum Settled {
    Orphaned,
    Ended,
}

/// Decides about the copy under `key` (revision `revision`).
async fn settle(
    kv: &kv::Store,
    key: &str,
    revision: u64,
    value: &Bytes,
    live: &[String],
    now: u64,
) -> Result<Option<Settled>, async_nats::Error> {
    // The client id only names the decoded session; the key is enough here.
    let mut record = match Record::decode("", value) {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(%key, "cluster session copy unreadable, left alone: {e}");
            return Ok(None);
        }
    };
    let session = &mut record.session;
    let Some(disconnected_at) = session.disconnected_at_ms else {
        if live.contains(&record.node) {
            return Ok(None);
        }
        session.disconnected_at_ms = Some(now);
        kv.update(key, record.encode()?, revision).await?;
        return Ok(Some(Settled::Orphaned));
    };
    let expiry = session.expiry_interval_secs;
    if expiry == u32::MAX || disconnected_at.saturating_add(u64::from(expiry) * 1000) > now {
        return Ok(None);
    }
    kv.delete_expect_revision(key, Some(revision)).await?;
    if let Some(cursors) = cursor_key_of(key) {
        kv.delete(cursors).await?;
    }
    Ok(Some(Settled::Ended))
}
