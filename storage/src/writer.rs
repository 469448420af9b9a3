//! [`Writer`]: group commit in front of a [`Store`].
//!
//! Every connection that needs something durable submits its ops to one bounded queue. A
//! dedicated OS thread (`tern-storage`) takes everything available from the queue (up to
//! [`MAX_GROUP_REQUESTS`] requests or about [`MAX_GROUP_BYTES`]), writes it as one atomic
//! batch, and then completes the waiters of that whole group. While it writes (and, with
//! [`SyncPolicy::Always`], fsyncs), new requests pile up and form the next group: under load,
//! one WAL sync covers many connections' messages instead of one fsync per message.
//!
//! The thread is a plain OS thread because RocksDB calls block; it waits on the tokio channel
//! by polling it with a waker that unparks the thread, which also gives it a timed wait for
//! [`SyncPolicy::Batched`] without a runtime of its own.
//!
//! Ordering: requests are applied in the order they entered the queue, so the ops of one
//! submitter are applied in submission order, and a detached request is ordered like any
//! other. A failed group write fails every waiter of that group (each gets a clone of the
//! error), detached requests of the group are logged, and the thread carries on.
//!
//! Timing: a [`WriterObserver`] given to [`Writer::start_observed`] is told how long each
//! group write and each WAL sync took (the broker turns that into latency histograms). This
//! crate stays free of any metrics library: the observer is the whole interface.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::{Op, StorageError, Store};

/// At most this many requests form one group.
pub const MAX_GROUP_REQUESTS: usize = 1024;
/// A group stops growing once its ops add up to about this many bytes (one large message can
/// exceed it alone).
pub const MAX_GROUP_BYTES: usize = 4 << 20;

/// When the writer syncs the WAL, and so when a [`Durable`] resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Each group is written with `sync = true`; waiters complete after that fsync. While one
    /// fsync runs, new requests queue up and form the next group.
    Always,
    /// Groups are written without sync, and the WAL is synced at most this long after the
    /// first unsynced write; waiters of a group complete after the sync that covers it.
    Batched(Duration),
    /// Groups are written without sync; waiters complete right after the write. Durability
    /// is left to the operating system (a broker crash loses nothing, a machine crash may).
    None,
}

/// Told by the writer thread how long its storage calls took, for latency metrics.
///
/// Called on the writer thread right after each call returns, failed calls included: keep
/// it cheap (a few atomic adds), since the next group waits for it.
pub trait WriterObserver: Send + Sync {
    /// One group was written with [`Store::write`]: `ops` ops in `elapsed`. With `synced`
    /// ([`SyncPolicy::Always`]) the time includes the WAL fsync of that write.
    fn write(&self, elapsed: Duration, ops: usize, synced: bool);

    /// The WAL was synced on its own with [`Store::sync`] ([`SyncPolicy::Batched`], and the
    /// final sync at shutdown).
    fn sync(&self, elapsed: Duration);
}

/// Counters of a [`Writer`] since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Batches written to the store (successfully or not).
    pub groups: u64,
    /// Write requests ([`Writer::submit`], [`Writer::submit_detached`]) in those batches.
    pub requests: u64,
    /// Ops in those batches.
    pub ops: u64,
    /// WAL syncs: synced batch writes plus [`Store::sync`] calls.
    pub syncs: u64,
}

#[derive(Default)]
struct Counters {
    groups: AtomicU64,
    requests: AtomicU64,
    ops: AtomicU64,
    syncs: AtomicU64,
}

type Reply = oneshot::Sender<Result<(), StorageError>>;

enum Request {
    /// `done` is `None` for a detached write.
    Write {
        ops: Vec<Op>,
        done: Option<Reply>,
    },
    Barrier(Reply),
    Shutdown(Reply),
}

/// A place in the writer's queue ([`Writer::try_reserve`]): submitting through it cannot
/// wait. Dropped unused, it frees the place.
pub struct Reserved<'a> {
    permit: mpsc::Permit<'a, Request>,
}

impl Reserved<'_> {
    /// As [`Writer::submit`], without waiting for queue space.
    pub fn submit(self, ops: Vec<Op>) -> Durable {
        if ops.is_empty() {
            return Durable::ready();
        }
        match validate(&ops) {
            Ok(()) => self.write(ops),
            Err(e) => Durable::failed(e),
        }
    }

    /// As [`Writer::submit_detached`], without waiting for queue space.
    pub fn submit_detached(self, ops: Vec<Op>) {
        if !ops.is_empty() && valid_detached(&ops) {
            self.write_detached(ops);
        }
    }

    /// Queues valid, non-empty `ops`.
    fn write(self, ops: Vec<Op>) -> Durable {
        let (done, rx) = oneshot::channel();
        self.permit.send(Request::Write {
            ops,
            done: Some(done),
        });
        Durable {
            state: DurableState::Waiting(rx),
        }
    }

    fn write_detached(self, ops: Vec<Op>) {
        self.permit.send(Request::Write { ops, done: None });
    }
}

/// Whether detached `ops` may be queued; nobody waits for them, so a refusal is logged.
fn valid_detached(ops: &[Op]) -> bool {
    match validate(ops) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "storage ops rejected");
            false
        }
    }
}

/// Handle to the writer thread; cheap to clone. When the last clone is dropped the thread
/// applies what is queued, syncs and exits (like [`Writer::shutdown`], without a result).
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    store: Arc<dyn Store>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Spawns one dedicated OS thread (named "tern-storage") that owns writing. `capacity`:
    /// bound of the request queue (requests, not ops; at least 1).
    ///
    /// # Panics
    ///
    /// If the operating system cannot spawn a thread; see [`Writer::try_start`].
    pub fn start(store: Arc<dyn Store>, policy: SyncPolicy, capacity: usize) -> Writer {
        match Writer::try_start(store, policy, capacity) {
            Ok(writer) => writer,
            Err(e) => panic!("cannot spawn the tern-storage writer thread: {e}"),
        }
    }

    /// [`Writer::start`], with `observer` told the duration of every write and sync.
    ///
    /// # Panics
    ///
    /// If the operating system cannot spawn a thread; see [`Writer::try_start_observed`].
    pub fn start_observed(
        store: Arc<dyn Store>,
        policy: SyncPolicy,
        capacity: usize,
        observer: Arc<dyn WriterObserver>,
    ) -> Writer {
        match Writer::try_start_observed(store, policy, capacity, Some(observer)) {
            Ok(writer) => writer,
            Err(e) => panic!("cannot spawn the tern-storage writer thread: {e}"),
        }
    }

    /// [`Writer::start`], returning the error if the thread cannot be spawned.
    pub fn try_start(
        store: Arc<dyn Store>,
        policy: SyncPolicy,
        capacity: usize,
    ) -> std::io::Result<Writer> {
        Writer::try_start_observed(store, policy, capacity, None)
    }

    /// [`Writer::start_observed`] (or, without an observer, [`Writer::start`]), returning
    /// the error if the thread cannot be spawned.
    pub fn try_start_observed(
        store: Arc<dyn Store>,
        policy: SyncPolicy,
        capacity: usize,
        observer: Option<Arc<dyn WriterObserver>>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            store: Some(store.clone()),
            policy,
            rx,
            counters: counters.clone(),
            observer,
            unsynced: Vec::new(),
            dirty_since: None,
        };
        std::thread::Builder::new()
            .name("tern-storage".into())
            .spawn(move || worker.run())?;
        Ok(Writer {
            tx,
            store,
            counters,
        })
    }

    /// Queues `ops`; the returned [`Durable`] resolves when they are durable per the policy.
    /// Waits (async) for queue space: backpressure. Ops that fail [`Op::validate`] are not
    /// queued, their `Durable` resolves to the error at once. Empty `ops` resolve at once.
    pub async fn submit(&self, ops: Vec<Op>) -> Durable {
        if ops.is_empty() {
            return Durable::ready();
        }
        if let Err(e) = validate(&ops) {
            return Durable::failed(e);
        }
        match self.tx.reserve().await {
            Ok(permit) => Reserved { permit }.write(ops),
            Err(_) => Durable::failed(StorageError::Closed),
        }
    }

    /// Same, fire-and-forget: applied in order with everything else, nobody waits (e.g.
    /// dequeue after a client's PUBACK). Failures are logged.
    pub async fn submit_detached(&self, ops: Vec<Op>) {
        if ops.is_empty() || !valid_detached(&ops) {
            return;
        }
        match self.tx.reserve().await {
            Ok(permit) => Reserved { permit }.write_detached(ops),
            Err(_) => tracing::warn!("storage writer shut down: detached ops dropped"),
        }
    }

    /// A place in the queue, waiting for one while the queue is full (backpressure). For a
    /// caller that must not wait once it has decided what to write (the router, whose
    /// state is locked meanwhile): it takes the place first, then decides.
    pub async fn reserve(&self) -> Result<Reserved<'_>, StorageError> {
        match self.tx.reserve().await {
            Ok(permit) => Ok(Reserved { permit }),
            Err(_) => Err(StorageError::Closed),
        }
    }

    /// As [`Writer::reserve`] without waiting: `None` while the queue is full (or the
    /// writer has stopped).
    pub fn try_reserve(&self) -> Option<Reserved<'_>> {
        self.tx.try_reserve().ok().map(|permit| Reserved { permit })
    }

    /// Resolves once everything submitted before it has been applied (readable via the
    /// store), without forcing a sync. Returns the error of the group it was written with.
    pub async fn barrier(&self) -> Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Request::Barrier(done))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    /// Applies what is queued, syncs, stops the thread (after it released its handle on the
    /// store). Later submits fail with [`StorageError::Closed`]; shutting down again is Ok.
    pub async fn shutdown(&self) -> Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown(done)).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Counters since start: `groups < requests` means group commit happened.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            groups: self.counters.groups.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            ops: self.counters.ops.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
        }
    }
}

fn validate(ops: &[Op]) -> Result<(), StorageError> {
    ops.iter().try_for_each(Op::validate)
}

/// Resolves (to `Ok` or the write's error) when the ops of a [`Writer::submit`] are durable.
#[must_use = "a Durable does nothing unless awaited; drop it explicitly to not wait"]
#[derive(Debug)]
pub struct Durable {
    state: DurableState,
}

#[derive(Debug)]
enum DurableState {
    /// The result is known; `None` once it has been returned.
    Ready(Option<Result<(), StorageError>>),
    Waiting(oneshot::Receiver<Result<(), StorageError>>),
    /// Both, the first first.
    Both(Box<[Durable; 2]>),
}

impl Durable {
    /// Nothing to wait for: resolves to `Ok` at once.
    pub fn ready() -> Durable {
        Durable {
            state: DurableState::Ready(Some(Ok(()))),
        }
    }

    /// Resolves to `error` at once.
    pub fn failed(error: StorageError) -> Durable {
        Durable {
            state: DurableState::Ready(Some(Err(error))),
        }
    }

    /// Resolves to what `result` receives: for writes kept somewhere else than this
    /// writer's store (a dropped sender counts as [`StorageError::Closed`]).
    pub fn waiting(result: oneshot::Receiver<Result<(), StorageError>>) -> Durable {
        Durable {
            state: DurableState::Waiting(result),
        }
    }

    /// Resolves once `self` and `other` both did: to the first error, else `Ok`.
    pub fn and(self, other: Durable) -> Durable {
        Durable {
            state: DurableState::Both(Box::new([self, other])),
        }
    }
}

impl Future for Durable {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match &mut self.state {
            // Polled again after completion: repeat Ok rather than panic.
            DurableState::Ready(result) => result.take().unwrap_or(Ok(())),
            DurableState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                // The thread drops a reply only when it is gone without answering.
                Poll::Ready(result) => result.unwrap_or(Err(StorageError::Closed)),
            },
            // A part polled again after it resolved repeats `Ok`: an error ends it first.
            DurableState::Both(both) => match Pin::new(&mut both[0]).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => Err(e),
                Poll::Ready(Ok(())) => match Pin::new(&mut both[1]).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => result,
                },
            },
        };
        self.state = DurableState::Ready(None);
        Poll::Ready(result)
    }
}

/// Wakes the writer thread when the channel has something for it.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

enum Received {
    Request(Request),
    /// The sync deadline passed first.
    Timeout,
    /// Every [`Writer`] is gone and the queue is empty.
    Disconnected,
}

/// Requests taken from the queue to be written together.
#[derive(Default)]
struct Group {
    ops: Vec<Op>,
    bytes: usize,
    requests: usize,
    /// Per write request: its reply (`None` for detached ones).
    writes: Vec<Option<Reply>>,
    barriers: Vec<Reply>,
    shutdown: Option<Reply>,
}

impl Group {
    fn full(&self) -> bool {
        self.requests >= MAX_GROUP_REQUESTS || self.bytes >= MAX_GROUP_BYTES
    }

    fn add(&mut self, request: Request) {
        self.requests += 1;
        match request {
            Request::Write { ops, done } => {
                self.bytes += ops.iter().map(Op::approx_size).sum::<usize>();
                self.ops.extend(ops);
                self.writes.push(done);
            }
            Request::Barrier(done) => self.barriers.push(done),
            Request::Shutdown(done) => self.shutdown = Some(done),
        }
    }
}

fn reply(done: Reply, result: Result<(), StorageError>) {
    // The submitter may have stopped waiting (dropped its Durable): nothing to tell then.
    let _ = done.send(result);
}

struct Worker {
    /// Released (set to `None`) before the shutdown reply, so that the caller can reopen
    /// the store as soon as `shutdown` returns.
    store: Option<Arc<dyn Store>>,
    policy: SyncPolicy,
    rx: mpsc::Receiver<Request>,
    counters: Arc<Counters>,
    observer: Option<Arc<dyn WriterObserver>>,
    /// [`SyncPolicy::Batched`]: waiters whose ops are written but not yet synced.
    unsynced: Vec<Reply>,
    /// When the oldest write not covered by a sync happened.
    dirty_since: Option<Instant>,
}

impl Worker {
    fn run(mut self) {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        loop {
            let deadline = match (self.policy, self.dirty_since) {
                (SyncPolicy::Batched(interval), Some(since)) => Some(since + interval),
                _ => None,
            };
            let first = match self.receive(&waker, deadline) {
                Received::Request(request) => request,
                Received::Timeout => {
                    // A failure already went to the waiters and the log.
                    let _ = self.sync_now();
                    continue;
                }
                Received::Disconnected => {
                    // Every Writer was dropped without shutdown: still leave nothing unsynced.
                    let _ = self.finish();
                    return;
                }
            };
            let mut group = Group::default();
            group.add(first);
            // Stop at a shutdown request: what comes after it is refused, not written.
            while !group.full() && group.shutdown.is_none() {
                match self.rx.try_recv() {
                    Ok(request) => group.add(request),
                    Err(_) => break,
                }
            }
            let shutdown = group.shutdown.take();
            self.write_group(group);
            if let Some(done) = shutdown {
                self.shut_down(done);
                return;
            }
            // Under steady load the queue never runs dry and `receive` never times out:
            // honour the sync interval here too.
            if let (SyncPolicy::Batched(interval), Some(since)) = (self.policy, self.dirty_since) {
                if since.elapsed() >= interval {
                    let _ = self.sync_now();
                }
            }
        }
    }

    /// Waits for the next request, until `deadline` if any.
    fn receive(&mut self, waker: &Waker, deadline: Option<Instant>) -> Received {
        let mut cx = Context::from_waker(waker);
        loop {
            match self.rx.poll_recv(&mut cx) {
                Poll::Ready(Some(request)) => return Received::Request(request),
                Poll::Ready(None) => return Received::Disconnected,
                Poll::Pending => {}
            }
            // Spurious wake-ups just go round the loop again.
            match deadline {
                None => std::thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Received::Timeout;
                    }
                    std::thread::park_timeout(deadline - now);
                }
            }
        }
    }

    fn write_group(&mut self, group: Group) {
        let Group {
            ops,
            writes,
            barriers,
            ..
        } = group;
        let result = if ops.is_empty() {
            Ok(())
        } else {
            let sync = self.policy == SyncPolicy::Always;
            let result = match &self.store {
                Some(store) => {
                    let started = Instant::now();
                    let result = store.write(&ops, sync);
                    if let Some(observer) = &self.observer {
                        observer.write(started.elapsed(), ops.len(), sync);
                    }
                    result
                }
                None => Err(StorageError::Closed),
            };
            self.counters.groups.fetch_add(1, Ordering::Relaxed);
            self.counters
                .requests
                .fetch_add(writes.len() as u64, Ordering::Relaxed);
            self.counters
                .ops
                .fetch_add(ops.len() as u64, Ordering::Relaxed);
            if sync {
                self.counters.syncs.fetch_add(1, Ordering::Relaxed);
            } else if result.is_ok() && self.dirty_since.is_none() {
                self.dirty_since = Some(Instant::now());
            }
            result
        };
        if let Err(e) = &result {
            let detached = writes.iter().filter(|w| w.is_none()).count();
            tracing::error!(
                error = %e,
                ops = ops.len(),
                requests = writes.len(),
                detached,
                "storage group write failed"
            );
        }
        let batched = matches!(self.policy, SyncPolicy::Batched(_));
        for done in writes.into_iter().flatten() {
            if batched && result.is_ok() {
                self.unsynced.push(done);
            } else {
                reply(done, result.clone());
            }
        }
        for done in barriers {
            reply(done, result.clone());
        }
    }

    /// Syncs the WAL and completes the waiters it covers.
    fn sync_now(&mut self) -> Result<(), StorageError> {
        let result = match &self.store {
            Some(store) => {
                let started = Instant::now();
                let result = store.sync();
                if let Some(observer) = &self.observer {
                    observer.sync(started.elapsed());
                }
                result
            }
            None => Err(StorageError::Closed),
        };
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = self.unsynced.len(), "storage sync failed");
        }
        // After a failed fsync the state of the written data is unknown: its waiters get the
        // error, and the next writes start a fresh interval.
        self.dirty_since = None;
        for done in self.unsynced.drain(..) {
            reply(done, result.clone());
        }
        result
    }

    /// Final sync (if anything is unsynced) and release of the store.
    fn finish(&mut self) -> Result<(), StorageError> {
        let result = if self.dirty_since.is_some() || !self.unsynced.is_empty() {
            self.sync_now()
        } else {
            Ok(())
        };
        self.store = None;
        result
    }

    fn shut_down(&mut self, done: Reply) {
        let result = self.finish();
        // Refuse what was queued behind the shutdown; senders waiting for space fail too.
        self.rx.close();
        while let Ok(request) = self.rx.try_recv() {
            match request {
                Request::Write { done: Some(d), .. } | Request::Barrier(d) => {
                    reply(d, Err(StorageError::Closed));
                }
                Request::Write { done: None, .. } => {
                    tracing::warn!("storage writer shut down: detached ops dropped");
                }
                // A concurrent second shutdown shares the outcome of the first.
                Request::Shutdown(d) => reply(d, result.clone()),
            }
        }
        reply(done, result);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::MemoryStore;

    /// Records what the writer thread reports.
    #[derive(Default)]
    struct Recorder {
        writes: Mutex<Vec<(usize, bool)>>,
        syncs: AtomicU64,
    }

    impl WriterObserver for Recorder {
        fn write(&self, _elapsed: Duration, ops: usize, synced: bool) {
            self.writes
                .lock()
                .expect("not poisoned")
                .push((ops, synced));
        }

        fn sync(&self, _elapsed: Duration) {
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn op(packet_id: u16) -> Op {
        Op::PutInboundQos2 {
            client_id: "c".into(),
            packet_id,
        }
    }

    /// `storage.sync = "batched"` loses nothing acknowledged on power failure: a write's
    /// acknowledgement waits for the fsync that covers it, not only for the write.
    #[tokio::test]
    async fn a_batched_write_is_acknowledged_only_after_its_sync() {
        let recorder = Arc::new(Recorder::default());
        let writer = Writer::start_observed(
            Arc::new(MemoryStore::new()),
            SyncPolicy::Batched(Duration::from_millis(50)),
            16,
            recorder.clone(),
        );
        for round in 1..=3 {
            writer
                .submit(vec![op(round)])
                .await
                .await
                .expect("written and synced");
            assert_eq!(
                recorder.syncs.load(Ordering::Relaxed),
                u64::from(round),
                "acknowledged before its sync"
            );
        }
        writer.shutdown().await.expect("shut down");
        // The writes themselves were not synced: the separate syncs covered them.
        assert!(recorder
            .writes
            .lock()
            .expect("not poisoned")
            .iter()
            .all(|(_, synced)| !synced));
    }

    #[tokio::test]
    async fn both_parts_of_a_pair_are_awaited_and_the_first_error_wins() {
        let (first_tx, first_rx) = oneshot::channel();
        let (second_tx, second_rx) = oneshot::channel();
        let mut both = Durable::waiting(first_rx).and(Durable::waiting(second_rx));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut both).poll(&mut cx).is_pending());
        first_tx.send(Ok(())).expect("waiting");
        assert!(
            Pin::new(&mut both).poll(&mut cx).is_pending(),
            "the second waits"
        );
        second_tx
            .send(Err(StorageError::Elsewhere { what: "x".into() }))
            .expect("waiting");
        assert!(matches!(both.await, Err(StorageError::Elsewhere { .. })));
        let failed = Durable::failed(StorageError::Closed).and(Durable::ready());
        assert!(matches!(failed.await, Err(StorageError::Closed)));
    }

    #[tokio::test]
    async fn the_observer_hears_of_every_write_and_sync() {
        let recorder = Arc::new(Recorder::default());
        let writer = Writer::start_observed(
            Arc::new(MemoryStore::new()),
            SyncPolicy::Always,
            16,
            recorder.clone(),
        );
        writer
            .submit(vec![op(1), op(2)])
            .await
            .await
            .expect("written");
        writer.shutdown().await.expect("shut down");
        assert_eq!(*recorder.writes.lock().expect("not poisoned"), [(2, true)]);
        // Synced with the write: nothing left for a separate sync.
        assert_eq!(recorder.syncs.load(Ordering::Relaxed), 0);

        let recorder = Arc::new(Recorder::default());
        let writer = Writer::start_observed(
            Arc::new(MemoryStore::new()),
            SyncPolicy::Batched(Duration::ZERO),
            16,
            recorder.clone(),
        );
        writer.submit(vec![op(1)]).await.await.expect("synced");
        writer.shutdown().await.expect("shut down");
        assert_eq!(*recorder.writes.lock().expect("not poisoned"), [(1, false)]);
        assert!(recorder.syncs.load(Ordering::Relaxed) >= 1);
    }
}
