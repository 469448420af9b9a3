//! Tests of the group-commit [`Writer`]: concurrency and ordering on RocksDB, each sync
//! policy, barrier, shutdown, error propagation and backpressure. Timing-dependent outcomes
//! are made deterministic with a store wrapper that can hold a write until the test says so.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use tern_storage::{
    Durable, InboxEntry, MemoryStore, Op, QueueState, QueuedMessage, RocksStore, SessionRecord,
    StorageError, Store, StoredGroup, StoredMessage, StoredUser, SyncPolicy, Writer,
};

fn message(payload: String) -> StoredMessage {
    StoredMessage {
        topic: "t".into(),
        payload: Bytes::from(payload),
        qos: 1,
        retain: false,
        properties: Bytes::new(),
        expires_at_ms: None,
    }
}

fn enqueue(client_id: &str, seq: u64) -> Op {
    Op::Enqueue {
        client_id: client_id.into(),
        seq,
        message: QueuedMessage {
            message: message(format!("{client_id}-{seq}")),
            state: QueueState::Pending,
            message_ref: None,
        },
    }
}

fn retained_payload(store: &dyn Store, topic: &str) -> Option<Bytes> {
    store.get_retained(topic).unwrap().map(|m| m.payload)
}

/// Polls once without a runtime waker: `Pending` means "not resolved yet".
fn is_pending<F: Future + Unpin>(future: &mut F) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(future).poll(&mut cx).is_pending()
}

/// A [`MemoryStore`] that counts syncs, can fail writes on demand, and can hold its next
/// write until released (to pile requests up behind it deterministically).
#[derive(Default)]
struct TestStore {
    inner: MemoryStore,
    fail: AtomicBool,
    syncs: AtomicU64,
    gate: Mutex<Option<Gate>>,
}

struct Gate {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

/// The test's side of a gate: wait for the writer to be held, then let it go.
struct GateControl {
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

impl TestStore {
    fn hold_next_write(&self) -> GateControl {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.gate.lock().unwrap() = Some(Gate {
            entered: entered_tx,
            release: release_rx,
        });
        GateControl {
            entered: entered_rx,
            release: release_tx,
        }
    }
}

impl Store for TestStore {
    fn write(&self, ops: &[Op], sync: bool) -> Result<(), StorageError> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            gate.entered.send(()).unwrap();
            gate.release.recv().unwrap();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::Corrupt {
                what: "injected failure".into(),
            });
        }
        if sync {
            self.syncs.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.write(ops, sync)
    }
    fn sync(&self) -> Result<(), StorageError> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submitters_group_commit_in_order() {
    const SUBMITTERS: u64 = 16;
    const PER_SUBMITTER: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).unwrap());
    let writer = Writer::start(store.clone(), SyncPolicy::Always, 64);
    let mut tasks = Vec::new();
    for s in 0..SUBMITTERS {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let client = format!("c{s}");
            let mut pending = Vec::new();
            for i in 0..PER_SUBMITTER {
                // Request i dequeues what request i-1 enqueued and overwrites its retained
                // message: only in-order application leaves exactly [last] and "last".
                let mut ops = vec![enqueue(&client, i)];
                if i > 0 {
                    ops.push(Op::Dequeue {
                        client_id: client.clone(),
                        seq: i - 1,
                    });
                }
                ops.push(Op::PutRetained {
                    topic: client.clone(),
                    message: message(i.to_string()),
                });
                pending.push(writer.submit(ops).await);
            }
            for durable in pending {
                durable.await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for s in 0..SUBMITTERS {
        let client = format!("c{s}");
        let queue: Vec<u64> = store
            .queue(&client, 0, 100)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(queue, vec![PER_SUBMITTER - 1], "{client}");
        let last = (PER_SUBMITTER - 1).to_string();
        assert_eq!(retained_payload(&*store, &client), Some(Bytes::from(last)));
    }
    let stats = writer.stats();
    assert_eq!(stats.requests, SUBMITTERS * PER_SUBMITTER);
    assert!(stats.groups < stats.requests, "no group commit: {stats:?}");
    assert_eq!(
        stats.syncs, stats.groups,
        "Always syncs every group: {stats:?}"
    );
    writer.shutdown().await.unwrap();
}

#[tokio::test]
async fn requests_queued_behind_a_write_form_one_group() {
    let store = Arc::new(TestStore::default());
    let writer = Writer::start(store.clone(), SyncPolicy::Always, 256);
    let gate = store.hold_next_write();
    let first = writer.submit(vec![enqueue("g", 0)]).await;
    gate.entered.recv().unwrap();
    // The writer is inside the first write: all of these wait and become the second group.
    let mut rest = Vec::new();
    for seq in 1..100 {
        rest.push(writer.submit(vec![enqueue("g", seq)]).await);
    }
    writer.submit_detached(vec![enqueue("g", 100)]).await;
    gate.release.send(()).unwrap();
    first.await.unwrap();
    for durable in rest {
        durable.await.unwrap();
    }
    writer.barrier().await.unwrap();
    let stats = writer.stats();
    assert_eq!((stats.groups, stats.requests, stats.ops), (2, 101, 101));
    assert_eq!(store.syncs.load(Ordering::SeqCst), 2);
    assert_eq!(store.queue_stats("g").unwrap().0, 101);
}

#[tokio::test]
async fn a_failed_group_fails_all_its_waiters_and_the_writer_goes_on() {
    let store = Arc::new(TestStore::default());
    let writer = Writer::start(store.clone(), SyncPolicy::Always, 16);
    let gate = store.hold_next_write();
    let first = writer.submit(vec![enqueue("f", 0)]).await;
    gate.entered.recv().unwrap();
    store.fail.store(true, Ordering::SeqCst);
    let mut doomed = Vec::new();
    for seq in 1..4 {
        doomed.push(writer.submit(vec![enqueue("f", seq)]).await);
    }
    gate.release.send(()).unwrap();
    // The held write fails too: the failure flag is read after the gate.
    assert!(first.await.is_err());
    for durable in doomed {
        match durable.await {
            Err(StorageError::Corrupt { what }) => assert_eq!(what, "injected failure"),
            other => panic!("expected the injected error, got {other:?}"),
        }
    }
    store.fail.store(false, Ordering::SeqCst);
    writer.submit(vec![enqueue("f", 9)]).await.await.unwrap();
    assert_eq!(store.queue("f", 0, 10).unwrap().len(), 1);
}

#[tokio::test]
async fn invalid_ops_fail_alone_without_queueing() {
    let store = Arc::new(TestStore::default());
    let writer = Writer::start(store.clone(), SyncPolicy::Always, 4);
    let bad = writer
        .submit(vec![Op::DeleteSession {
            client_id: "x".repeat(70_000),
        }])
        .await;
    assert!(matches!(bad.await, Err(StorageError::Invalid { .. })));
    writer.submit(vec![]).await.await.unwrap();
    assert_eq!(writer.stats().requests, 0);
    writer.submit(vec![enqueue("ok", 0)]).await.await.unwrap();
    assert_eq!(writer.stats().requests, 1);
}

#[tokio::test]
async fn batched_resolves_only_after_the_covering_sync() {
    let store = Arc::new(TestStore::default());
    // An interval no test waits for: only shutdown's final sync can resolve the waiter.
    let writer = Writer::start(
        store.clone(),
        SyncPolicy::Batched(Duration::from_secs(3600)),
        16,
    );
    let mut durable = writer.submit(vec![enqueue("b", 0)]).await;
    writer.barrier().await.unwrap();
    // Written (readable) but not synced: the Durable is still pending.
    assert_eq!(store.queue_stats("b").unwrap().0, 1);
    assert!(is_pending(&mut durable));
    assert_eq!(store.syncs.load(Ordering::SeqCst), 0);
    writer.shutdown().await.unwrap();
    durable.await.unwrap();
    assert_eq!(store.syncs.load(Ordering::SeqCst), 1);
    assert_eq!(writer.stats().syncs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_with_a_short_interval_on_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).unwrap());
    let writer = Writer::start(
        store.clone(),
        SyncPolicy::Batched(Duration::from_millis(2)),
        32,
    );
    let mut tasks = Vec::new();
    for s in 0..8u64 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let client = format!("b{s}");
            let mut pending = Vec::new();
            for seq in 0..50 {
                pending.push(writer.submit(vec![enqueue(&client, seq)]).await);
            }
            for durable in pending {
                durable.await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = writer.stats();
    assert_eq!(stats.requests, 400);
    // Resolving required syncs, and none of the writes synced by itself.
    assert!(stats.syncs >= 1, "{stats:?}");
    for s in 0..8 {
        assert_eq!(store.queue_stats(&format!("b{s}")).unwrap().0, 50);
    }
    writer.shutdown().await.unwrap();
}

#[tokio::test]
async fn zero_interval_batched_syncs_after_each_group() {
    let store = Arc::new(TestStore::default());
    let writer = Writer::start(store.clone(), SyncPolicy::Batched(Duration::ZERO), 16);
    for seq in 0..5 {
        writer.submit(vec![enqueue("z", seq)]).await.await.unwrap();
    }
    assert_eq!(store.syncs.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn none_policy_resolves_after_the_write_without_sync() {
    let store = Arc::new(TestStore::default());
    let writer = Writer::start(store.clone(), SyncPolicy::None, 16);
    for seq in 0..10 {
        writer.submit(vec![enqueue("n", seq)]).await.await.unwrap();
        // Resolved means applied.
        assert_eq!(store.queue_stats("n").unwrap().0, seq + 1);
    }
    assert_eq!(store.syncs.load(Ordering::SeqCst), 0);
    assert_eq!(writer.stats().syncs, 0);
    // Shutdown still leaves nothing unsynced.
    writer.shutdown().await.unwrap();
    assert_eq!(store.syncs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn barrier_covers_detached_writes() {
    let store = Arc::new(TestStore::default());
    let writer = Writer::start(store.clone(), SyncPolicy::Always, 8);
    for seq in 0..200 {
        writer.submit_detached(vec![enqueue("d", seq)]).await;
    }
    writer
        .submit_detached(vec![Op::Dequeue {
            client_id: "d".into(),
            seq: 0,
        }])
        .await;
    writer.barrier().await.unwrap();
    assert_eq!(store.queue_stats("d").unwrap().0, 199);
    assert_eq!(store.queue("d", 0, 1).unwrap()[0].0, 1);
}

#[tokio::test]
async fn submits_wait_for_queue_space() {
    let store = Arc::new(TestStore::default());
    let writer = Writer::start(store.clone(), SyncPolicy::Always, 1);
    let gate = store.hold_next_write();
    let first = writer.submit(vec![enqueue("p", 0)]).await;
    gate.entered.recv().unwrap();
    // The queue holds one request; the next submit cannot even be queued.
    let second = writer.submit(vec![enqueue("p", 1)]).await;
    let mut third = Box::pin(writer.submit(vec![enqueue("p", 2)]));
    assert!(is_pending(&mut third));
    gate.release.send(()).unwrap();
    let third = third.await;
    for durable in [first, second, third] {
        durable.await.unwrap();
    }
    assert_eq!(store.queue_stats("p").unwrap().0, 3);
}

#[tokio::test]
async fn shutdown_then_submit_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).unwrap());
    let writer = Writer::start(store, SyncPolicy::Batched(Duration::from_secs(3600)), 8);
    writer.submit_detached(vec![enqueue("s", 0)]).await;
    let durable = writer.submit(vec![enqueue("s", 1)]).await;
    writer.shutdown().await.unwrap();
    durable.await.unwrap();
    assert!(matches!(
        writer.submit(vec![enqueue("s", 2)]).await.await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(writer.barrier().await, Err(StorageError::Closed)));
    writer.submit_detached(vec![enqueue("s", 3)]).await;
    writer.shutdown().await.unwrap();

    // The thread released the store: once our handle is gone, the directory reopens.
    drop(writer);
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(store.queue_stats("s").unwrap().0, 2);
}

#[tokio::test]
async fn dropping_every_writer_flushes_pending_waiters() {
    let store = Arc::new(TestStore::default());
    let writer = Writer::start(
        store.clone(),
        SyncPolicy::Batched(Duration::from_secs(3600)),
        8,
    );
    let durable = writer.submit(vec![enqueue("w", 0)]).await;
    drop(writer);
    durable.await.unwrap();
    assert_eq!(store.syncs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn durable_constructors() {
    Durable::ready().await.unwrap();
    assert!(matches!(
        Durable::failed(StorageError::Closed).await,
        Err(StorageError::Closed)
    ));
}
