//! [`MemoryStore`]: the in-memory [`Store`], for broker unit tests.
//!
//! Same semantics as [`RocksStore`](crate::RocksStore) (the shared conformance tests run
//! against both), nothing durable: [`Store::sync`] is a no-op. One `std` mutex guards all the
//! maps, which makes every [`Store::write`] trivially atomic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

// Reads check the client id like the RocksDB store does, so both answer a bad lookup alike.
use crate::keys::check_client_id;
use crate::{Op, QueuedMessage, SessionRecord, StorageError, Store, StoredMessage, StoredSession};

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
}

#[derive(Debug, Default)]
struct Queue {
    entries: BTreeMap<u64, QueuedMessage>,
    /// One past the highest seq ever enqueued: survives dequeuing everything, like the
    /// `queue_next` column family of the RocksDB store.
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
                queue.entries.insert(*seq, message.clone());
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
        }
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
        Ok(self
            .lock()
            .queues
            .get(client_id)
            .map(|queue| {
                queue
                    .entries
                    .range(from_seq..)
                    .take(limit)
                    .map(|(seq, message)| (*seq, message.clone()))
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
            .map(|q| q.message.payload.len() as u64)
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
}
