//! The stores the harness gives brokers: a store whose writes can be held up on demand (a
//! disk that stops keeping up, a write stall) for the tests of what the broker does
//! meanwhile, and the same wrapper around the RocksDB store of every in-process broker,
//! so that the test process does not exit while a database is still closing (see
//! [`crate::exit`]). Reads go straight through.

use std::sync::{Arc, Condvar, Mutex};

use tern_storage::{
    InboxEntry, MemoryStore, Op, QueuedMessage, SessionRecord, StorageError, Store, StoredGroup,
    StoredMessage, StoredUser,
};

/// A store with a gate in front of `write` and `sync`.
pub struct StallingStore {
    inner: Box<dyn Store>,
    stalled: Mutex<bool>,
    resumed: Condvar,
    /// Dropped after `inner` (fields drop in order): the database is closed by then.
    _open: Option<crate::exit::OpenDatabase>,
}

impl StallingStore {
    /// An in-memory store that can stall.
    pub fn new() -> Arc<StallingStore> {
        Arc::new(Self::over(Box::new(MemoryStore::new()), None))
    }

    /// `inner` behind the gate; `open` is released once `inner` is closed.
    pub fn over(inner: Box<dyn Store>, open: Option<crate::exit::OpenDatabase>) -> StallingStore {
        StallingStore {
            inner,
            stalled: Mutex::new(false),
            resumed: Condvar::new(),
            _open: open,
        }
    }

    /// From now on, writes wait until [`resume`](Self::resume).
    pub fn stall(&self) {
        *self.stalled.lock().expect("stall flag") = true;
    }

    pub fn resume(&self) {
        *self.stalled.lock().expect("stall flag") = false;
        self.resumed.notify_all();
    }

    fn gate(&self) {
        let mut stalled = self.stalled.lock().expect("stall flag");
        while *stalled {
            stalled = self.resumed.wait(stalled).expect("stall flag");
        }
    }
}

impl Store for StallingStore {
    fn write(&self, ops: &[Op], sync: bool) -> Result<(), StorageError> {
        self.gate();
        self.inner.write(ops, sync)
    }
    fn sync(&self) -> Result<(), StorageError> {
        self.gate();
        self.inner.sync()
    }
    fn retained(&self) -> Result<Vec<(String, StoredMessage)>, StorageError> {
        self.inner.retained()
    }
    fn get_retained(&self, topic: &str) -> Result<Option<StoredMessage>, StorageError> {
        self.inner.get_retained(topic)
    }
    fn sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        self.inner.sessions()
    }
    fn session(&self, client_id: &str) -> Result<Option<SessionRecord>, StorageError> {
        self.inner.session(client_id)
    }
    fn queue(
        &self,
        client_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, QueuedMessage)>, StorageError> {
        self.inner.queue(client_id, from_seq, limit)
    }
    fn queue_stats(&self, client_id: &str) -> Result<(u64, u64), StorageError> {
        self.inner.queue_stats(client_id)
    }
    fn inbound_qos2(&self, client_id: &str) -> Result<Vec<u16>, StorageError> {
        self.inner.inbound_qos2(client_id)
    }
    fn users(&self) -> Result<Vec<StoredUser>, StorageError> {
        self.inner.users()
    }
    fn user(&self, user: &str) -> Result<Option<StoredUser>, StorageError> {
        self.inner.user(user)
    }
    fn groups(&self) -> Result<Vec<StoredGroup>, StorageError> {
        self.inner.groups()
    }
    fn group(&self, gid: &str) -> Result<Option<StoredGroup>, StorageError> {
        self.inner.group(gid)
    }
    fn message(&self, id: u64) -> Result<Option<StoredMessage>, StorageError> {
        self.inner.message(id)
    }
    fn last_message_id(&self) -> Result<Option<u64>, StorageError> {
        self.inner.last_message_id()
    }
    fn inbox(
        &self,
        user: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, InboxEntry, Option<StoredMessage>)>, StorageError> {
        self.inner.inbox(user, from_seq, limit)
    }
    fn inbox_bounds(&self, user: &str) -> Result<(u64, u64), StorageError> {
        self.inner.inbox_bounds(user)
    }
    fn inbox_heads(&self) -> Result<Vec<(String, u64)>, StorageError> {
        self.inner.inbox_heads()
    }

    fn checkpoint(&self, dir: &std::path::Path) -> Result<(), StorageError> {
        self.inner.checkpoint(dir)
    }

    fn marks(
        &self,
        user: &str,
        prefix: &str,
    ) -> Result<Vec<(String, tern_storage::Mark)>, StorageError> {
        self.inner.marks(user, prefix)
    }

    fn mark(&self, user: &str, name: &str) -> Result<Option<tern_storage::Mark>, StorageError> {
        self.inner.mark(user, name)
    }

    fn user_value(&self, user: &str, name: &str) -> Result<Option<bytes::Bytes>, StorageError> {
        self.inner.user_value(user, name)
    }
}
