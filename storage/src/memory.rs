//! [`MemoryStore`]: the in-memory [`Store`], for broker unit tests.
//!
//! Same semantics as [`RocksStore`](crate::RocksStore) (the shared conformance tests run
//! against both), nothing durable: [`Store::sync`] is a no-op. One `std` mutex guards all the
//! maps, which makes every [`Store::write`] trivially atomic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

// Reads check ids like the RocksDB store does, so both answer a bad lookup alike.
use crate::keys::{check_client_id, check_gid, check_user};
use crate::{
    InboxEntry, Mark, Op, QueuedMessage, SessionRecord, StorageError, Store, StoredGroup,
    StoredMessage, StoredSession, StoredUser,
};

/// An in-memory [`Store`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    retained: BTreeMap<String, StoredMessage>,
    sessions: BTreeMap<String, StoredSession>,
    queues: BTreeMap<String, Queue>,
    inbound_qos2: BTreeMap<String, BTreeSet<u16>>,
    users: BTreeMap<String, StoredUser>,
    groups: BTreeMap<String, StoredGroup>,
    messages: BTreeMap<u64, StoredMessage>,
    inboxes: BTreeMap<String, Inbox>,
    /// (user, name) -> mark.
    marks: BTreeMap<(String, String), Mark>,
    /// (user, name) -> value.
    user_values: BTreeMap<(String, String), Bytes>,
}

#[derive(Debug, Default)]
struct Queue {
    entries: BTreeMap<u64, QueuedMessage>,
    /// One past the highest seq ever enqueued: survives dequeuing everything, like the
    /// `queue_next` column family of the RocksDB store.
    next_seq: u64,
}

#[derive(Debug, Default)]
struct Inbox {
    entries: BTreeMap<u64, InboxEntry>,
    /// One past the highest seq ever appended: survives trimming everything, like the
    /// `inbox_next` column family of the RocksDB store.
    next_seq: u64,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated (writes are
        // validated first and then only insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::PutRetained { topic, message } => {
                self.retained.insert(topic.clone(), message.clone());
            }
            Op::DeleteRetained { topic } => {
                self.retained.remove(topic);
            }
            Op::PutSession(session) => {
                self.sessions
                    .insert(session.client_id.clone(), session.clone());
            }
            Op::DeleteSession { client_id } => {
                self.sessions.remove(client_id);
                self.queues.remove(client_id);
                self.inbound_qos2.remove(client_id);
            }
            Op::Enqueue {
                client_id,
                seq,
                message,
            } => {
                let queue = self.queues.entry(client_id.clone()).or_default();
                let mut message = message.clone();
                // Like the RocksDB store, a referenced entry keeps no payload of its own.
                if message.message_ref.is_some() {
                    message.message.payload = Bytes::new();
                }
                queue.entries.insert(*seq, message);
                queue.next_seq = queue.next_seq.max(seq.saturating_add(1));
            }
            Op::SetQueueState {
                client_id,
                seq,
                state,
            } => {
                if let Some(entry) = self
                    .queues
                    .get_mut(client_id)
                    .and_then(|q| q.entries.get_mut(seq))
                {
                    entry.state = *state;
                }
            }
            Op::Dequeue { client_id, seq } => {
                if let Some(queue) = self.queues.get_mut(client_id) {
                    queue.entries.remove(seq);
                }
            }
            Op::PutInboundQos2 {
                client_id,
                packet_id,
            } => {
                self.inbound_qos2
                    .entry(client_id.clone())
                    .or_default()
                    .insert(*packet_id);
            }
            Op::DeleteInboundQos2 {
                client_id,
                packet_id,
            } => {
                if let Some(ids) = self.inbound_qos2.get_mut(client_id) {
                    ids.remove(packet_id);
                    if ids.is_empty() {
                        self.inbound_qos2.remove(client_id);
                    }
                }
            }
            Op::PutUser(user) => {
                self.users.insert(user.user.clone(), user.clone());
            }
            Op::DeleteUser { user } => {
                // The inbox stays, as documented on the op.
                self.users.remove(user);
            }
            Op::PutGroup(group) => {
                self.groups.insert(group.gid.clone(), group.clone());
            }
            Op::DeleteGroup { gid } => {
                self.groups.remove(gid);
            }
            Op::PutMessage { id, message } => {
                self.messages.insert(*id, message.clone());
            }
            Op::AppendInbox { user, seq, entry } => {
                let inbox = self.inboxes.entry(user.clone()).or_default();
                inbox.entries.insert(*seq, *entry);
                inbox.next_seq = inbox.next_seq.max(seq.saturating_add(1));
            }
            Op::TrimInbox { user, below_seq } => {
                // Only an existing inbox: trimming must not make a user appear in inbox_heads.
                if let Some(inbox) = self.inboxes.get_mut(user) {
                    inbox.entries = inbox.entries.split_off(below_seq);
                }
            }
            Op::DeleteMessagesBefore { below_id } => {
                self.messages = self.messages.split_off(below_id);
            }
            Op::RaiseMark { user, name, mark } => {
                let kept = self
                    .marks
                    .entry((user.clone(), name.clone()))
                    .or_insert(*mark);
                if mark.id > kept.id {
                    *kept = *mark;
                }
            }
            Op::PutUserValue { user, name, value } => {
                self.user_values
                    .insert((user.clone(), name.clone()), value.clone());
            }
        }
    }

    /// Fills in the payload of a referenced queue entry, if its message still exists.
    fn resolve(&self, mut queued: QueuedMessage) -> QueuedMessage {
        if let Some(stored) = queued.message_ref.and_then(|id| self.messages.get(&id)) {
            queued.message.payload = stored.payload.clone();
            queued.message_ref = None;
        }
        queued
    }

    fn record(&self, session: &StoredSession) -> SessionRecord {
        let (first_seq, next_seq) = match self.queues.get(&session.client_id) {
            Some(queue) => {
                let next = queue.next_seq;
                let first = queue.entries.keys().next().copied().unwrap_or(next);
                (first, next)
            }
            None => (0, 0),
        };
        SessionRecord {
            session: session.clone(),
            first_seq,
            next_seq,
        }
    }
}

impl Store for MemoryStore {
    fn write(&self, ops: &[Op], _sync: bool) -> Result<(), StorageError> {
        // Validate everything before touching the maps: a batch applies entirely or not at all.
        for op in ops {
            op.validate()?;
        }
        let mut inner = self.lock();
        for op in ops {
            inner.apply(op);
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn retained(&self) -> Result<Vec<(String, StoredMessage)>, StorageError> {
        Ok(self
            .lock()
            .retained
            .iter()
            .map(|(topic, message)| (topic.clone(), message.clone()))
            .collect())
    }

    fn get_retained(&self, topic: &str) -> Result<Option<StoredMessage>, StorageError> {
        Ok(self.lock().retained.get(topic).cloned())
    }

    fn sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        let inner = self.lock();
        Ok(inner.sessions.values().map(|s| inner.record(s)).collect())
    }

    fn session(&self, client_id: &str) -> Result<Option<SessionRecord>, StorageError> {
        check_client_id(client_id)?;
        let inner = self.lock();
        Ok(inner.sessions.get(client_id).map(|s| inner.record(s)))
    }

    fn queue(
        &self,
        client_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, QueuedMessage)>, StorageError> {
        check_client_id(client_id)?;
        let inner = self.lock();
        Ok(inner
            .queues
            .get(client_id)
            .map(|queue| {
                queue
                    .entries
                    .range(from_seq..)
                    .take(limit)
                    .map(|(seq, message)| (*seq, inner.resolve(message.clone())))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn queue_stats(&self, client_id: &str) -> Result<(u64, u64), StorageError> {
        check_client_id(client_id)?;
        let inner = self.lock();
        let Some(queue) = inner.queues.get(client_id) else {
            return Ok((0, 0));
        };
        let bytes = queue
            .entries
            .values()
            .map(|q| match q.message_ref {
                Some(id) => inner
                    .messages
                    .get(&id)
                    .map_or(0, |m| m.payload.len() as u64),
                None => q.message.payload.len() as u64,
            })
            .sum();
        Ok((queue.entries.len() as u64, bytes))
    }

    fn inbound_qos2(&self, client_id: &str) -> Result<Vec<u16>, StorageError> {
        check_client_id(client_id)?;
        Ok(self
            .lock()
            .inbound_qos2
            .get(client_id)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default())
    }

    fn users(&self) -> Result<Vec<StoredUser>, StorageError> {
        Ok(self.lock().users.values().cloned().collect())
    }

    fn user(&self, user: &str) -> Result<Option<StoredUser>, StorageError> {
        check_user(user)?;
        Ok(self.lock().users.get(user).cloned())
    }

    fn groups(&self) -> Result<Vec<StoredGroup>, StorageError> {
        Ok(self.lock().groups.values().cloned().collect())
    }

    fn group(&self, gid: &str) -> Result<Option<StoredGroup>, StorageError> {
        check_gid(gid)?;
        Ok(self.lock().groups.get(gid).cloned())
    }

    fn message(&self, id: u64) -> Result<Option<StoredMessage>, StorageError> {
        Ok(self.lock().messages.get(&id).cloned())
    }

    fn last_message_id(&self) -> Result<Option<u64>, StorageError> {
        Ok(self.lock().messages.keys().next_back().copied())
    }

    fn inbox(
        &self,
        user: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, InboxEntry, Option<StoredMessage>)>, StorageError> {
        check_user(user)?;
        let inner = self.lock();
        Ok(inner
            .inboxes
            .get(user)
            .map(|inbox| {
                inbox
                    .entries
                    .range(from_seq..)
                    .take(limit)
                    .map(|(seq, entry)| {
                        (*seq, *entry, inner.messages.get(&entry.message_id).cloned())
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn inbox_bounds(&self, user: &str) -> Result<(u64, u64), StorageError> {
        check_user(user)?;
        Ok(match self.lock().inboxes.get(user) {
            Some(inbox) => {
                let next = inbox.next_seq;
                (inbox.entries.keys().next().copied().unwrap_or(next), next)
            }
            None => (0, 0),
        })
    }

    fn inbox_heads(&self) -> Result<Vec<(String, u64)>, StorageError> {
        Ok(self
            .lock()
            .inboxes
            .iter()
            .map(|(user, inbox)| (user.clone(), inbox.next_seq))
            .collect())
    }

    fn marks(&self, user: &str, prefix: &str) -> Result<Vec<(String, Mark)>, StorageError> {
        check_user(user)?;
        let from = (user.to_string(), prefix.to_string());
        Ok(self
            .lock()
            .marks
            .range(from..)
            .take_while(|((u, name), _)| u == user && name.starts_with(prefix))
            .map(|((_, name), mark)| (name.clone(), *mark))
            .collect())
    }

    fn mark(&self, user: &str, name: &str) -> Result<Option<Mark>, StorageError> {
        check_user(user)?;
        Ok(self
            .lock()
            .marks
            .get(&(user.to_string(), name.to_string()))
            .copied())
    }

    fn user_value(&self, user: &str, name: &str) -> Result<Option<Bytes>, StorageError> {
        check_user(user)?;
        Ok(self
            .lock()
            .user_values
            .get(&(user.to_string(), name.to_string()))
            .cloned())
    }

    fn checkpoint(&self, dir: &std::path::Path) -> Result<(), StorageError> {
        Err(StorageError::Invalid {
            what: format!(
                "an in-memory store has nothing on disk to copy to {}",
                dir.display()
            ),
        })
    }
}
