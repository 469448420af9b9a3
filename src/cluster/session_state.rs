//! Persistent sessions that outlive their node: the bucket `TERN_SESSION_STATE` keeps, per
//! client id, the session's stored form (subscriptions, expiry) with the node and registry
//! claim it was last written under (`s.<key>`), and its device's *cursors* (`c.<key>`):
//! the first seq of its user's inbox and the first sequence of the cluster's message
//! stream (`messages.rs`) it has not got, all before them acknowledged.
//!
//! A CONNECT without clean start on a node that does not hold the session (it was on a
//! node that died, or moved since) reads both: the router makes the session from the
//! stored form, and the inbox log and the message stream are read from the cursors on, so
//! the device gets what it missed, wherever it reconnects (see `router/adopt.rs`).
//!
//! One task writes: connections and the router hand it [`SessionChange`]s, and it
//! writes what changed every [`FLUSH_EVERY`], the latest value of each key only. A
//! session record is written only under a claim at least as new as the one it holds
//! (compare-and-set on the key's revision), so a node that lost a client id cannot
//! overwrite the copy of the node that took it. Cursors are written as they are: the
//! same device acknowledged everything up to them, so a late or lost write only makes a
//! resume send again what the device had, never skip what it had not. Cursors belong to
//! the session they were reached in (`born`, the claim the session began under): ones
//! left from an earlier session of the client id are not used.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arcstr::ArcStr;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use tern_storage::StoredSession;
use tokio::sync::mpsc;

use super::messages::{MessageLog, MessageLogError, Read};
use super::subject;
use crate::router::{Cursors, Interest, RouterHandle, SessionChange, SessionChanges};

pub(super) const BUCKET: &str = "TERN_SESSION_STATE";

/// What the keys of session records start with (cursors: `c.`).
pub(super) const RECORD_PREFIX: &str = "s.";

/// How often what changed is written.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Writes in flight at once.
const MAX_WRITES: usize = 64;

/// Changes waiting for the writer, over all sessions: past this they are dropped (and
/// logged; see [`SessionChange`]).
pub(crate) const MAX_CHANGES: usize = 65_536;

/// Opens (or creates) the bucket.
pub(super) async fn open_bucket(
    jetstream: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, super::BucketError> {
    super::open_bucket(jetstream, super::bucket(BUCKET, replicas)).await
}

fn record_key(client_id: &str) -> String {
    format!("{RECORD_PREFIX}{}", subject::key(client_id))
}

fn cursor_key(client_id: &str) -> String {
    format!("c.{}", subject::key(client_id))
}

/// The key of the cursors beside the session record under `record_key`.
pub(super) fn cursor_key_of(record_key: &str) -> Option<String> {
    record_key
        .strip_prefix(RECORD_PREFIX)
        .map(|key| format!("c.{key}"))
}

/// The cluster's copy of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The node that wrote it last.
    pub(crate) node: String,
    /// The registry claim it was written under.
    pub(crate) revision: u64,
    /// The claim the session began under.
    pub(crate) born: u64,
    pub(crate) session: StoredSession,
}

impl Record {
    pub(super) fn encode(&self) -> Result<Bytes, tern_storage::StorageError> {
        let mut bytes = format!("{}\n{}\n{}\n", self.node, self.revision, self.born).into_bytes();
        bytes.extend_from_slice(&self.session.encode()?);
        Ok(Bytes::from(bytes))
    }

    pub(super) fn decode(client_id: &str, value: &Bytes) -> Result<Record, String> {
        let (header, rest) = Header::decode(value)?;
        let session =
            StoredSession::decode(client_id.to_string(), rest).map_err(|e| e.to_string())?;
        Ok(Record {
            node: header.node,
            revision: header.revision,
            born: header.born,
            session,
        })
    }
}

/// A record's first lines: who wrote it, under which claims.
struct Header {
    node: String,
    revision: u64,
    born: u64,
}

impl Header {
    /// The header of an encoded record, and the session's encoding after it.
    fn decode(value: &Bytes) -> Result<(Header, Bytes), String> {
        let mut rest = value.clone();
        let mut line = || -> Result<String, String> {
            let end = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or("a header line is missing")?;
            let line = rest.split_to(end + 1);
            String::from_utf8(line[..end].to_vec()).map_err(|e| e.to_string())
        };
        let node = line()?;
        let revision = line()?.parse().map_err(|e| format!("revision: {e}"))?;
        let born = line()?.parse().map_err(|e| format!("born: {e}"))?;
        let header = Header {
            node,
            revision,
            born,
        };
        Ok((header, rest))
    }
}

/// What the cluster holds of a client id's session.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) record: Record,
    /// Where the device stands in this session.
    pub(crate) cursors: Cursors,
}

/// The node's side of the sessions the cluster keeps; cheap to clone.
#[derive(Clone)]
pub(crate) struct SessionStates {
    kv: kv::Store,
    client: async_nats::Client,
    node: Arc<str>,
    changes: SessionChanges,
    interest: Arc<Interest>,
    messages: MessageLog,
}

impl SessionStates {
    pub(super) fn new(
        kv: kv::Store,
        client: async_nats::Client,
        node: &str,
        changes: SessionChanges,
        interest: Arc<Interest>,
        messages: MessageLog,
    ) -> SessionStates {
        SessionStates {
            kv,
            client,
            node: Arc::from(node),
            changes,
            interest,
            messages,
        }
    }

    /// The message stream's next sequence: where a new session's device starts.
    pub(crate) async fn messages_next(&self) -> Result<u64, MessageLogError> {
        Ok(self.messages.last().await? + 1)
    }

    /// Up to `limit` kept messages from sequence `from` on that `session`'s filters may
    /// match (shared ones aside: a group's messages went to its other members), the first
    /// sequence the read did not cover, and which of them this node appended.
    pub(crate) async fn missed_messages(
        &self,
        session: &StoredSession,
        from: u64,
        limit: usize,
    ) -> Result<Read, MessageLogError> {
        let filters = session
            .subscriptions
            .iter()
            .filter(|s| !s.filter.starts_with("$share/"))
            .flat_map(|s| subject::kept_for_filter(&s.filter))
            .collect();
        self.messages.read(filters, from, limit).await
    }

    /// This node's id.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Tells `node` that `client_id`'s session, which it held offline, resumed here: it
    /// drops its copy (see [`forget_moved`]). Not waited on: a node that misses it keeps
    /// its copy until that expires, or replaces it when the device comes back.
    pub(crate) async fn tell_moved(&self, node: &str, client_id: &str) {
        let notice = Bytes::copy_from_slice(client_id.as_bytes());
        if let Err(e) = self.client.publish(subject::moved(node), notice).await {
            tracing::debug!(%client_id, %node, "telling a node its session moved: {e}");
        }
    }

    /// What the cluster holds of `client_id`'s session.
    pub(crate) async fn load(&self, client_id: &str) -> Result<Option<Found>, async_nats::Error> {
        let Some(value) = self.kv.get(record_key(client_id)).await? else {
            return Ok(None);
        };
        let record = match Record::decode(client_id, &value) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(%client_id, "cluster session record unreadable, ignored: {e}");
                return Ok(None);
            }
        };
        let cursors = self
            .kv
            .get(cursor_key(client_id))
            .await?
            .and_then(|value| decode_cursors(&value))
            .and_then(|(born, cursors)| (born == record.born).then_some(cursors))
            .unwrap_or_default();
        Ok(Some(Found { record, cursors }))
    }

    /// Hands `change` to the writer without waiting (see [`SessionChange`]).
    pub(crate) fn change(&self, change: SessionChange) {
        self.changes.send(change);
    }

    /// Waits until the NATS subscriptions of every filter the router holds now are in
    /// effect: from then on, what the inbox logs republish reaches this node.
    pub(crate) async fn interest_settled(&self) {
        self.interest.settled().await;
    }
}

/// Drops this node's copies of the sessions other nodes tell it resumed there.
pub(super) async fn forget_moved(mut notices: async_nats::Subscriber, router: RouterHandle) {
    while let Some(notice) = notices.next().await {
        let Ok(client_id) = std::str::from_utf8(&notice.payload) else {
            continue;
        };
        match router.forget_moved(client_id).await {
            Ok(true) => {
                tracing::info!(%client_id, "session copy dropped: it resumed on another node");
            }
            Ok(false) => {}
            Err(_) => break,
        }
    }
}

/// `born inbox messages`, an unknown cursor as `-`.
fn encode_cursors(born: u64, cursors: Cursors) -> Bytes {
    let show = |cursor: Option<u64>| cursor.map_or_else(|| "-".to_string(), |c| c.to_string());
    Bytes::from(format!(
        "{born} {} {}",
        show(cursors.inbox),
        show(cursors.messages)
    ))
}

fn decode_cursors(value: &[u8]) -> Option<(u64, Cursors)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split(' ');
    let born = parts.next()?.parse().ok()?;
    let mut cursor = || -> Option<Option<u64>> {
        match parts.next()? {
            "-" => Some(None),
            n => n.parse().ok().map(Some),
        }
    };
    let inbox = cursor()?;
    let messages = cursor()?;
    Some((born, Cursors { inbox, messages }))
}

/// What is pending for one attached session.
struct Slot {
    revision: u64,
    born: u64,
    /// Its records in the cluster are void: deleted before anything else is written.
    fresh: bool,
    /// The stored form to write (`Some(None)`: delete it).
    session: Option<Option<StoredSession>>,
    cursors: Cursors,
    cursors_dirty: bool,
    /// The connection ended: forgotten once written.
    detached: bool,
    /// Told once the stored form pending now is written (SUBACKs wait for it).
    waiting: Vec<Written>,
}

type Written = tokio::sync::oneshot::Sender<Result<(), tern_storage::StorageError>>;

impl Slot {
    fn dirty(&self) -> bool {
        self.fresh || self.session.is_some() || self.cursors_dirty
    }
}

/// One write of a flush, made from a slot's pending state.
struct Write {
    client_id: ArcStr,
    revision: u64,
    born: u64,
    fresh: bool,
    session: Option<Option<StoredSession>>,
    cursors: Option<Cursors>,
    waiting: Vec<Written>,
}

/// Writes the changes handed to it, every [`FLUSH_EVERY`], until every sender is gone.
pub(super) async fn write(kv: kv::Store, node: String, mut changes: mpsc::Receiver<SessionChange>) {
    let mut slots: HashMap<ArcStr, Slot> = HashMap::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                // A change someone waits on is written now rather than at the next tick.
                Some(change) => if take(&mut slots, change) {
                    flush(&kv, &node, &mut slots).await;
                },
                None => break,
            },
            _ = tick.tick() => flush(&kv, &node, &mut slots).await,
        }
    }
    flush(&kv, &node, &mut slots).await;
}

/// Takes `change` into its session's slot; returns whether someone waits on it.
fn take(slots: &mut HashMap<ArcStr, Slot>, change: SessionChange) -> bool {
    match change {
        SessionChange::Attached {
            client_id,
            revision,
            born,
            fresh,
            cursors,
        } => {
            slots.insert(
                client_id,
                Slot {
                    revision,
                    born,
                    fresh,
                    session: None,
                    cursors,
                    // A resumed session's cursors are the cluster's already.
                    cursors_dirty: cursors != Cursors::default() && born == revision,
                    detached: false,
                    waiting: Vec::new(),
                },
            );
        }
        // Only the sessions attached here are this node's to write: an offline one's
        // changes (its expiry) may be of a copy another node has taken since.
        SessionChange::Stored { session, written } => {
            match slots.get_mut(session.client_id.as_str()) {
                Some(slot) => {
                    slot.session = Some(Some(session));
                    if let Some(written) = written {
                        slot.waiting.push(written);
                        return true;
                    }
                }
                // Not this node's to write: nothing to wait for here.
                None => {
                    if let Some(written) = written {
                        let _ = written.send(Ok(()));
                    }
                }
            }
        }
        SessionChange::Deleted(client_id) => {
            if let Some(slot) = slots.get_mut(client_id.as_str()) {
                slot.session = Some(None);
            }
        }
        SessionChange::Reached { client_id, mark } => {
            if let Some(slot) = slots.get_mut(&client_id) {
                slot.cursors_dirty |= slot.cursors.reach(mark);
            }
        }
        SessionChange::Detached(client_id) => {
            if let Some(slot) = slots.get_mut(&client_id) {
                slot.detached = true;
            }
        }
    }
    false
}

async fn flush(kv: &kv::Store, node: &str, slots: &mut HashMap<ArcStr, Slot>) {
    let writes: Vec<Write> = slots
        .iter_mut()
        .filter(|(_, slot)| slot.dirty())
        .map(|(client_id, slot)| {
            let write = Write {
                client_id: client_id.clone(),
                revision: slot.revision,
                born: slot.born,
                fresh: slot.fresh,
                session: slot.session.take(),
                cursors: slot.cursors_dirty.then_some(slot.cursors),
                waiting: std::mem::take(&mut slot.waiting),
            };
            slot.fresh = false;
            slot.cursors_dirty = false;
            write
        })
        .collect();
    slots.retain(|_, slot| !slot.detached || slot.dirty());
    if writes.is_empty() {
        return;
    }
    futures_util::stream::iter(writes)
        .for_each_concurrent(MAX_WRITES, |mut write| async move {
            let client_id = write.client_id.clone();
            let waiting = std::mem::take(&mut write.waiting);
            let result = apply(kv, node, write).await;
            if let Err(e) = &result {
                tracing::warn!(%client_id, "cluster session state not written: {e}");
            }
            for written in waiting {
                let _ = written.send(result.as_ref().map(|_| ()).map_err(|e| {
                    tern_storage::StorageError::Elsewhere {
                        what: format!("the cluster's copy of the session: {e}"),
                    }
                }));
            }
        })
        .await;
}

async fn apply(kv: &kv::Store, node: &str, write: Write) -> Result<(), async_nats::Error> {
    let record_key = record_key(&write.client_id);
    if write.fresh && conditional(kv, &record_key, write.revision, None).await? {
        kv.delete(cursor_key(&write.client_id)).await?;
    }
    if let Some(session) = write.session {
        let record = session.map(|session| Record {
            node: node.to_string(),
            revision: write.revision,
            born: write.born,
            session,
        });
        conditional(kv, &record_key, write.revision, record.as_ref()).await?;
    }
    if let Some(cursors) = write.cursors {
        kv.put(
            cursor_key(&write.client_id),
            encode_cursors(write.born, cursors),
        )
        .await?;
    }
    Ok(())
}

/// Writes `record` (`None`: deletes the key) unless the key holds a record written under
/// a newer claim than `revision`; on the condition that nobody wrote the key meanwhile
/// (read again and decided again if somebody did). Returns whether it wrote.
async fn conditional(
    kv: &kv::Store,
    key: &str,
    revision: u64,
    record: Option<&Record>,
) -> Result<bool, async_nats::Error> {
    let value = record.map(Record::encode).transpose()?;
    // A write that lost the race to another decides again; a few such rounds at most, as
    // only a claim's holder writes (and the one it took the client id from, late).
    let mut rounds = 0;
    loop {
        rounds += 1;
        let entry = kv.entry(key).await?;
        let (last, held) = match &entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let held = Header::decode(&entry.value).ok().map(|(h, _)| h.revision);
                (entry.revision, held)
            }
            Some(entry) => (entry.revision, None),
            None => (0, None),
        };
        if held.is_some_and(|held| held > revision) {
            return Ok(false);
        }
        let written = match &value {
            Some(value) => kv.update(key, value.clone(), last).await.map(|_| ()),
            None if held.is_none() => return Ok(false),
            None => kv.delete_expect_revision(key, Some(last)).await,
        };
        match written {
            Ok(()) => return Ok(true),
            Err(e) if rounds < 4 => {
                tracing::debug!(%key, "cluster session state written meanwhile: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let record = Record {
            node: "n1".into(),
            revision: 42,
            born: 7,
            session: StoredSession {
                client_id: "phone".into(),
                user: "bob".into(),
                protocol_level: 5,
                expiry_interval_secs: 3600,
                disconnected_at_ms: None,
                subscriptions: vec![tern_storage::StoredSubscription {
                    filter: "inbox/bob/#".into(),
                    options: 1,
                    identifier: None,
                }],
            },
        };
        let encoded = record.encode().expect("encodes");
        assert_eq!(Record::decode("phone", &encoded), Ok(record));
        assert!(Record::decode("phone", &Bytes::from_static(b"n1\n42\n")).is_err());
    }

    #[test]
    fn cursors_name_their_session() {
        let cursors = Cursors {
            inbox: Some(19),
            messages: None,
        };
        assert_eq!(
            decode_cursors(&encode_cursors(7, cursors)),
            Some((7, cursors))
        );
        assert_eq!(decode_cursors(b"7 19"), None);
    }
}
