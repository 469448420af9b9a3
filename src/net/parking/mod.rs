//! The parking lot: where idle connections wait without a task of their own.
//!
//! A chat device's connection is idle nearly all its life, and as a tokio task it pays
//! about 0.7 KB for that (measured in RSS, 19,000 idle connections): the task's cell (its
//! future, in a 128-byte-aligned allocation) and the entry that tracks it. A connection
//! with nothing under way hands itself to the lot instead ([`ParkingLot::park`]) and its
//! task ends. The lot is one task for all of them. It gives each parked connection a small
//! waker and registers it with what can wake the connection besides its socket (its
//! mailbox: see [`Parked::poll_wake`]); it watches the socket itself, in an epoll set of
//! its own ([`Parked::socket`]: the connection has taken the socket off the runtime's I/O
//! driver, whose registration is another 256 bytes); and it checks deadlines (keepalive)
//! every [`DEADLINE_TICK`]. When one fires, the connection becomes a task again
//! ([`Parked::resume`]), tracked by the lot until it ends or parks again; except for input
//! the connection can answer on the spot without blocking ([`Parked::answer_in_place`]: a
//! device's heartbeat, PINGREQ -> PINGRESP), which leaves it parked. A heartbeat so costs
//! a read, a write and the re-arming of the socket's one-shot registration, and no task
//! (broker CPU per heartbeat, 19,000 parked clients: 26-28 us when each one resumed the
//! connection, 17 us answered in place; Mosquitto 19-20 us).
//!
//! A parked connection's waker allocates nothing: it is the lot's id and the entry's key
//! packed into the waker's data word, and waking it looks the lot up in a process-wide
//! table of lots ([`LOTS`]). (An `Arc` waker per entry was a 48-byte allocation for every
//! idle connection.)
//!
//! The lot knows connections only through [`Parked`], so it is tested here with fakes
//! (and socket pairs). Its queue of incoming connections is unbounded, but each
//! connection is in it at most once, so `limits.max_connections` bounds it.

use std::future::{poll_fn, Future};
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use mio::unix::SourceFd;
use prometheus_client::metrics::gauge::Gauge;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the deadlines of parked connections are checked: a keepalive expiry is acted
/// on at most this late.
pub const DEADLINE_TICK: Duration = Duration::from_millis(250);

/// How many socket events the lot takes from its epoll set at a time.
const SOCKET_EVENTS: usize = 1024;

/// A connection waiting in the lot.
pub trait Parked: Send + 'static {
    /// Registers `cx`'s waker with every source but the socket that can wake the
    /// connection; true when one already has something for it (it is then resumed).
    /// A source wakes a registered waker at most once (as an `AtomicWaker` does): each
    /// wake queues the entry for the lot to look at.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> bool;

    /// The socket, off the runtime's I/O driver, that the lot watches for input and
    /// hang-ups while the connection is parked (input already waiting counts).
    fn socket(&self) -> Option<RawFd>;

    /// Its socket has input or a hang-up: answers what needs no task of its own (a
    /// heartbeat) straight on the socket, without blocking, and returns true to stay
    /// parked; false to be resumed (with whatever it read kept for the task).
    fn answer_in_place(&mut self) -> bool {
        false
    }

    /// Whether the socket is still in the lot's epoll set from an earlier park, as the
    /// lot records with [`Parked::set_in_lot_set`] (see [`Sockets`]).
    fn in_lot_set(&self) -> bool;

    fn set_in_lot_set(&mut self, in_set: bool);

    /// When to resume it whether or not anything happened (its keepalive deadline).
    fn deadline(&self) -> Option<Instant>;

    /// The connection as a task again.
    fn resume(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The connections' end of the lot (cheap to clone).
#[derive(Clone)]
pub struct ParkingLot {
    incoming: mpsc::UnboundedSender<Box<dyn Parked>>,
}

impl ParkingLot {
    /// A lot, and its task to run ([`LotTask::run`]); until it runs, parked connections
    /// wait in its queue.
    pub fn new(parked_gauge: Gauge) -> (ParkingLot, LotTask) {
        let (incoming, receiver) = mpsc::unbounded_channel();
        let signals = Arc::new(Signals::default());
        let task = LotTask {
            incoming: receiver,
            entries: Slab::new(),
            id: LotId::register(&signals),
            signals,
            woken: Vec::new(),
            sockets: None,
            readable: Vec::new(),
            resumed: JoinSet::new(),
            gauge: parked_gauge,
        };
        (ParkingLot { incoming }, task)
    }

    /// Hands a connection to the lot; gives it back when the lot has stopped.
    pub fn park(&self, parked: Box<dyn Parked>) -> Result<(), Box<dyn Parked>> {
        self.incoming.send(parked).map_err(|refused| refused.0)
    }

    /// The lot has stopped: [`ParkingLot::park`] would fail.
    pub fn is_closed(&self) -> bool {
        self.incoming.is_closed()
    }
}

/// Keys of woken entries, and the lot task's waker.
#[derive(Default)]
struct Signals {
    woken: Mutex<Vec<usize>>,
    task: AtomicWaker,
}

impl Signals {
    fn wake(&self, key: usize) {
        self.woken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key);
        self.task.wake();
    }

    fn poll_woken(&self, cx: &mut Context<'_>, out: &mut Vec<usize>) -> Poll<()> {
        self.task.register(cx.waker());
        let mut woken = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        if woken.is_empty() {
            return Poll::Pending;
        }
        mem::swap(&mut *woken, out);
        Poll::Ready(())
    }
}

/// Every running lot's [`Signals`], by lot id: what an entry's waker finds its lot by.
static LOTS: RwLock<Slab<Weak<Signals>>> = RwLock::new(Slab::new());

/// Bits of an entry waker's data word that hold the entry's key; the bits above hold the
/// lot's id (so 65,536 lots at once, and 2^48 entries a lot on 64-bit targets).
const KEY_BITS: u32 = usize::BITS - 16;

/// A lot's place in [`LOTS`], given back when the lot's task goes.
struct LotId(usize);

impl LotId {
    /// `None` when every id is taken.
    fn register(signals: &Arc<Signals>) -> Option<LotId> {
        let mut lots = LOTS.write().unwrap_or_else(PoisonError::into_inner);
        let id = lots.insert(Arc::downgrade(signals));
        if id >> (usize::BITS - KEY_BITS) != 0 {
            lots.remove(id);
            return None;
        }
        Some(LotId(id))
    }

    /// The waker of entry `key` (which fits [`KEY_BITS`]). A waker that outlives its
    /// entry, or its lot, wakes nothing or a later entry with the same key, which the lot
    /// then polls for nothing.
    fn entry_waker(&self, key: usize) -> Waker {
        let word = (self.0 << KEY_BITS) | key;
        let raw = RawWaker::new(std::ptr::without_provenance(word), &ENTRY_WAKER);
        // SAFETY: the vtable's functions treat the data word as a number and never
        // dereference it; they own nothing (clone copies, drop does nothing) and are safe
        // to call from any thread (they only take locks).
        unsafe { Waker::from_raw(raw) }
    }
}

impl Drop for LotId {
    fn drop(&mut self) {
        LOTS.write()
            .unwrap_or_else(PoisonError::into_inner)
            .try_remove(self.0);
    }
}

static ENTRY_WAKER: RawWakerVTable =
    RawWakerVTable::new(clone_entry_waker, wake_entry, wake_entry, drop_entry_waker);

fn clone_entry_waker(data: *const ()) -> RawWaker {
    RawWaker::new(data, &ENTRY_WAKER)
}

fn wake_entry(data: *const ()) {
    let word = data.addr();
    let (lot, key) = (word >> KEY_BITS, word & ((1 << KEY_BITS) - 1));
    let signals = LOTS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(lot)
        .and_then(Weak::upgrade);
    if let Some(signals) = signals {
        signals.wake(key);
    }
}

fn drop_entry_waker(_: *const ()) {}

/// The sockets of parked connections: an epoll set of the lot's own (a `mio::Poll`), itself
/// registered with the runtime's I/O driver. Sockets are added edge-triggered and
/// one-shot; epoll reports a socket that is already readable when it is added or re-armed,
/// so input that arrived before the connection parked is not missed.
///
/// One-shot, because a socket whose input resumed its connection can stay in the set: its
/// registration fired and is disarmed, and parking again re-arms it with one
/// `EPOLL_CTL_MOD` (under its new key), as answering a heartbeat in place does (under the
/// same key). Removing it and adding it again took two `epoll_ctl`, and the add allocates
/// and runs the kernel's nested-epoll checks (this set is itself watched). A connection
/// resumed by anything else (its mailbox, its deadline) is removed from the set, as its
/// registration is still armed under a key that another connection may take.
struct Sockets {
    poll: AsyncFd<mio::Poll>,
    events: mio::Events,
}

impl Sockets {
    /// Needs the runtime (its I/O driver).
    fn new() -> io::Result<Sockets> {
        let poll = mio::Poll::new()?;
        // SAFETY: the descriptor is the epoll set's, which `mio::Poll` owns and keeps open
        // for its whole life; nothing here replaces the `Poll` inside the `AsyncFd`.
        let poll = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }
            .map_err(|refused| refused.into_parts().1)?;
        Ok(Sockets {
            poll,
            events: mio::Events::with_capacity(SOCKET_EVENTS),
        })
    }

    /// Adds a socket to the set, or re-arms it (`in_set`) under a new key.
    fn watch(&self, fd: RawFd, key: usize, in_set: bool) -> io::Result<()> {
        // mio registers without EPOLLONESHOT; its `Poll` reads the events of a socket
        // registered here all the same (the key is the event's data, as a `Token`).
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET | libc::EPOLLONESHOT) as u32,
            u64: key as u64,
        };
        let op = if in_set {
            libc::EPOLL_CTL_MOD
        } else {
            libc::EPOLL_CTL_ADD
        };
        // SAFETY: the set's descriptor is open for the life of the `mio::Poll` that owns
        // it; `event` is a live, initialised epoll_event; epoll_ctl does not keep it.
        let done = unsafe { libc::epoll_ctl(self.poll.get_ref().as_raw_fd(), op, fd, &mut event) };
        if done == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if in_set && e.raw_os_error() == Some(libc::ENOENT) {
            // Not in this set after all (it belonged to another lot's): add it.
            return self.watch(fd, key, false);
        }
        Err(e)
    }

    fn unwatch(&self, fd: RawFd) {
        // Fails only for a socket not in the set (or closed): nothing to undo then.
        let _ = self
            .poll
            .get_ref()
            .registry()
            .deregister(&mut SourceFd(&fd));
    }

    /// Appends to `out` the keys of sockets with input or a hang-up; pending until one
    /// has.
    fn poll_ready(&mut self, cx: &mut Context<'_>, out: &mut Vec<usize>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = match self.poll.poll_read_ready_mut(cx) {
                Poll::Ready(guard) => guard?,
                Poll::Pending => return Poll::Pending,
            };
            match guard
                .get_inner_mut()
                .poll(&mut self.events, Some(Duration::ZERO))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            out.extend(self.events.iter().map(|event| event.token().0));
            let full = out.len() >= SOCKET_EVENTS;
            if !full {
                // Drained: the next socket event raises the set's readiness again.
                guard.clear_ready();
            }
            if !out.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// The lot's own task: see the module docs.
pub struct LotTask {
    incoming: mpsc::UnboundedReceiver<Box<dyn Parked>>,
    entries: Slab<Box<dyn Parked>>,
    /// For the entries' wakers; `None` if the lot could not get one (it parks nothing).
    id: Option<LotId>,
    signals: Arc<Signals>,
    /// Woken keys taken from `signals` (kept for its capacity).
    woken: Vec<usize>,
    /// Watches the parked connections' sockets; `None` until `run` starts, and for good if
    /// it cannot start (no connection parks then).
    sockets: Option<Sockets>,
    /// Keys of entries whose socket has input (kept for its capacity).
    readable: Vec<usize>,
    /// Connections resumed by the lot, running as tasks.
    resumed: JoinSet<()>,
    gauge: Gauge,
}

impl LotTask {
    /// Runs the lot. Once `drain` resolves (the broker is stopping and has told every
    /// connection to close) or every [`ParkingLot`] is gone, it returns as soon as no
    /// connection is parked or resumed. Dropping it drops the parked connections and
    /// aborts the resumed ones.
    pub async fn run(mut self, drain: impl Future<Output = ()>) {
        match Sockets::new() {
            Ok(_) if self.id.is_none() => {
                self.stop_parking(&io::Error::other("65,536 parking lots exist already"));
            }
            Ok(sockets) => self.sockets = Some(sockets),
            Err(e) => self.stop_parking(&e),
        }
        let mut drain = std::pin::pin!(drain);
        let mut draining = false;
        let mut open = true;
        let mut tick = tokio::time::interval(DEADLINE_TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                parked = self.incoming.recv(), if open => match parked {
                    Some(parked) => self.admit(parked),
                    None => open = false,
                },
                () = &mut drain, if !draining => draining = true,
                () = poll_fn(|cx| self.signals.poll_woken(cx, &mut self.woken)) => {
                    let mut woken = mem::take(&mut self.woken);
                    for key in woken.drain(..) {
                        self.check(key);
                    }
                    self.woken = woken;
                }
                ready = poll_fn(|cx| match &mut self.sockets {
                    Some(sockets) => sockets.poll_ready(cx, &mut self.readable),
                    None => Poll::Pending,
                }) => match ready {
                    Ok(()) => {
                        let mut readable = mem::take(&mut self.readable);
                        for key in readable.drain(..) {
                            // Stale when the entry was resumed since (its socket was
                            // removed from the set then) and its place not reused yet.
                            self.on_input(key);
                        }
                        self.readable = readable;
                    }
                    Err(e) => self.stop_parking(&e),
                },
                _ = tick.tick(), if !self.entries.is_empty() => self.expire(Instant::now()),
                Some(ended) = self.resumed.join_next(), if !self.resumed.is_empty() => {
                    if let Err(e) = ended {
                        if e.is_panic() {
                            tracing::error!("a resumed connection panicked: {e}");
                        }
                    }
                }
            }
            self.gauge.set(self.entries.len() as i64);
            if (draining || !open) && self.entries.is_empty() && self.resumed.is_empty() {
                // A connection that parked just before its task ended is in the queue.
                match self.incoming.try_recv() {
                    Ok(parked) => self.admit(parked),
                    Err(_) => break,
                }
            }
        }
    }

    fn admit(&mut self, parked: Box<dyn Parked>) {
        let (socket, in_set) = (parked.socket(), parked.in_lot_set());
        let key = self.entries.insert(parked);
        if key >> KEY_BITS != 0 {
            // Beyond what a waker can name (2^48 entries on 64-bit targets).
            self.resume(key, Resumed::ByOther);
            return;
        }
        if let Some(fd) = socket {
            let watched = match &self.sockets {
                Some(sockets) => sockets.watch(fd, key, in_set),
                None => Err(io::Error::other("the lot watches no sockets")),
            };
            match watched {
                Ok(()) => self.entries[key].set_in_lot_set(true),
                Err(e) => {
                    // Unwatched, it could miss its client: it goes back to work instead.
                    tracing::warn!("cannot watch a parked connection's socket: {e}");
                    self.resume(key, Resumed::ByOther);
                    return;
                }
            }
        }
        self.check(key);
    }

    /// The lot cannot watch sockets (its epoll set failed): no connection parks from now
    /// on, and the parked ones go back to work.
    fn stop_parking(&mut self, e: &io::Error) {
        tracing::error!("the parking lot stops taking connections: {e}");
        self.incoming.close();
        self.sockets = None;
        let keys: Vec<usize> = self.entries.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.resume(key, Resumed::ByOther);
        }
    }

    /// Polls an entry's sources (a woken one, or a new one); resumes it if one is ready.
    /// A key may be stale (its entry resumed, the place reused): then it is polled for
    /// nothing.
    fn check(&mut self, key: usize) {
        let (Some(parked), Some(id)) = (self.entries.get_mut(key), &self.id) else {
            return;
        };
        let waker = id.entry_waker(key);
        if parked.poll_wake(&mut Context::from_waker(&waker)) {
            self.resume(key, Resumed::ByOther);
        }
    }

    /// Input or a hang-up on an entry's socket: answered in place (a heartbeat), the entry
    /// stays parked and its one-shot registration is re-armed; otherwise it is resumed.
    fn on_input(&mut self, key: usize) {
        let Some(parked) = self.entries.get_mut(key) else {
            return;
        };
        if !parked.answer_in_place() {
            self.resume(key, Resumed::BySocket);
            return;
        }
        let rearmed = match (parked.socket(), &self.sockets) {
            (Some(fd), Some(sockets)) => sockets.watch(fd, key, true),
            _ => Err(io::Error::other("the lot watches no sockets")),
        };
        if let Err(e) = rearmed {
            tracing::warn!("cannot watch a parked connection's socket again: {e}");
            self.resume(key, Resumed::ByOther);
        }
    }

    fn expire(&mut self, now: Instant) {
        let due: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, parked)| parked.deadline().is_some_and(|at| at <= now))
            .map(|(key, _)| key)
            .collect();
        for key in due {
            self.resume(key, Resumed::ByOther);
        }
    }

    fn resume(&mut self, key: usize, why: Resumed) {
        let mut parked = self.entries.remove(key);
        match (why, parked.socket(), &self.sockets) {
            // Its one-shot registration fired: it stays in the set, disarmed.
            (Resumed::BySocket, Some(_), Some(_)) => {}
            (_, Some(fd), Some(sockets)) => {
                sockets.unwatch(fd);
                parked.set_in_lot_set(false);
            }
            _ => parked.set_in_lot_set(false),
        }
        self.resumed.spawn(parked.resume());
    }
}

/// What resumed a parked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resumed {
    /// Input or a hang-up on its socket.
    BySocket,
    /// Its mailbox, its deadline, or the lot itself.
    ByOther,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::{oneshot, Notify};

    /// A parked thing woken by a `Notify`-like flag, with an optional deadline; when resumed
    /// it reports on `resumed`.
    struct Fake {
        ready: Arc<ReadyFlag>,
        /// One end of a socket pair, non-blocking, as a detached connection's socket is.
        socket: Option<UnixStream>,
        deadline: Option<Instant>,
        resumed: Option<oneshot::Sender<&'static str>>,
        name: &'static str,
        in_set: bool,
        /// Gets the socket back when resumed, and whether it was left in the lot's set.
        hand_back: Option<oneshot::Sender<(UnixStream, bool)>>,
        /// Answers "ping" with "pong" in place (see `Parked::answer_in_place`).
        pongs: bool,
    }

    #[derive(Default)]
    struct ReadyFlag {
        set: AtomicBool,
        waker: AtomicWaker,
        polls: AtomicUsize,
    }

    impl ReadyFlag {
        fn set(&self) {
            self.set.store(true, Ordering::Release);
            self.waker.wake();
        }
    }

    impl Parked for Fake {
        fn answer_in_place(&mut self) -> bool {
            let (true, Some(socket)) = (self.pongs, &mut self.socket) else {
                return false;
            };
            let mut input = [0u8; 4];
            match std::io::Read::read(socket, &mut input) {
                Ok(4) if &input == b"ping" => socket.write_all(b"pong").is_ok(),
                _ => false,
            }
        }

        fn poll_wake(&mut self, cx: &mut Context<'_>) -> bool {
            self.ready.polls.fetch_add(1, Ordering::Relaxed);
            self.ready.waker.register(cx.waker());
            self.ready.set.load(Ordering::Acquire)
        }

        fn socket(&self) -> Option<RawFd> {
            self.socket.as_ref().map(AsRawFd::as_raw_fd)
        }

        fn in_lot_set(&self) -> bool {
            self.in_set
        }

        fn set_in_lot_set(&mut self, in_set: bool) {
            self.in_set = in_set;
        }

        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }

        fn resume(mut self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
            Box::pin(async move {
                if let (Some(tx), Some(socket)) = (self.hand_back.take(), self.socket.take()) {
                    let _ = tx.send((socket, self.in_set));
                }
                if let Some(tx) = self.resumed.take() {
                    let _ = tx.send(self.name);
                }
            })
        }
    }

    fn fake(
        name: &'static str,
        deadline: Option<Instant>,
    ) -> (Box<Fake>, Arc<ReadyFlag>, oneshot::Receiver<&'static str>) {
        let ready = Arc::new(ReadyFlag::default());
        let (tx, rx) = oneshot::channel();
        let parked = Box::new(Fake {
            ready: ready.clone(),
            socket: None,
            deadline,
            resumed: Some(tx),
            name,
            in_set: false,
            hand_back: None,
            pongs: false,
        });
        (parked, ready, rx)
    }

    fn gauge_value(gauge: &Gauge) -> i64 {
        gauge.get()
    }

    /// A lot running until the test ends (aborted), with its gauge of parked connections.
    fn running_lot() -> (ParkingLot, Gauge, tokio::task::JoinHandle<()>) {
        let gauge = Gauge::default();
        let (lot, task) = ParkingLot::new(gauge.clone());
        let running = tokio::spawn(task.run(std::future::pending()));
        (lot, gauge, running)
    }

    /// Waits until the lot holds `n` connections (each counted once it has been polled).
    async fn until_parked(gauge: &Gauge, n: i64) {
        while gauge_value(gauge) < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_woken_connection_is_resumed_and_the_others_stay() {
        let gauge = Gauge::default();
        let (lot, task) = ParkingLot::new(gauge.clone());
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let running = tokio::spawn(task.run(async move { stopped.notified().await }));
        let (a, a_ready, mut a_resumed) = fake("a", None);
        let (b, _b_ready, b_resumed) = fake("b", None);
        assert!(lot.park(a).is_ok());
        assert!(lot.park(b).is_ok());
        // Both polled once on arrival, neither ready.
        while a_ready.polls.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(a_resumed.try_recv().is_err());
        a_ready.set();
        assert_eq!(a_resumed.await.expect("a resumed"), "a");
        assert_eq!(gauge_value(&gauge), 1, "b is still parked");
        // Draining waits for b, which nothing wakes: the lot is still running.
        stop.notify_one();
        tokio::task::yield_now().await;
        assert!(!running.is_finished());
        drop(b_resumed);
        running.abort();
    }

    #[tokio::test]
    async fn wakers_find_their_own_lot() {
        // Two lots, each with an entry under key 0: the wakers differ only in the lot id.
        let (gauge1, gauge2) = (Gauge::default(), Gauge::default());
        let (lot1, task1) = ParkingLot::new(gauge1.clone());
        let (lot2, task2) = ParkingLot::new(gauge2.clone());
        let running1 = tokio::spawn(task1.run(std::future::pending()));
        let running2 = tokio::spawn(task2.run(std::future::pending()));
        let (a, a_ready, mut a_resumed) = fake("a", None);
        let (b, b_ready, b_resumed) = fake("b", None);
        assert!(lot1.park(a).is_ok());
        assert!(lot2.park(b).is_ok());
        while a_ready.polls.load(Ordering::Relaxed) == 0
            || b_ready.polls.load(Ordering::Relaxed) == 0
        {
            tokio::task::yield_now().await;
        }
        b_ready.set();
        let resumed = tokio::time::timeout(Duration::from_secs(10), b_resumed).await;
        assert_eq!(resumed.expect("b's waker reached its lot"), Ok("b"));
        assert_eq!(gauge_value(&gauge2), 0);
        assert!(a_resumed.try_recv().is_err(), "a was resumed by b's waker");
        assert_eq!(gauge_value(&gauge1), 1);
        // A waker that outlives its lot wakes nothing.
        let stale = a_ready.waker.take().expect("a's waker");
        running1.abort();
        let _ = running1.await;
        stale.wake();
        running2.abort();
    }

    #[tokio::test]
    async fn one_already_ready_is_resumed_at_once() {
        let (lot, _gauge, running) = running_lot();
        let (a, a_ready, a_resumed) = fake("a", None);
        a_ready.set.store(true, Ordering::Release);
        assert!(lot.park(a).is_ok());
        assert_eq!(a_resumed.await.expect("a resumed"), "a");
        running.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_resumes_within_a_tick() {
        let (lot, _gauge, running) = running_lot();
        let start = Instant::now();
        let (a, _a_ready, a_resumed) = fake("a", Some(start + Duration::from_secs(3)));
        assert!(lot.park(a).is_ok());
        assert_eq!(a_resumed.await.expect("a resumed"), "a");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(3), "{waited:?}");
        assert!(
            waited <= Duration::from_secs(3) + DEADLINE_TICK,
            "{waited:?}"
        );
        running.abort();
    }

    #[tokio::test]
    async fn draining_ends_once_every_connection_is_resumed_and_done() {
        let gauge = Gauge::default();
        let (lot, task) = ParkingLot::new(gauge.clone());
        let (drain_tx, drain_rx) = oneshot::channel::<()>();
        let running = tokio::spawn(task.run(async move {
            let _ = drain_rx.await;
        }));
        let (a, a_ready, a_resumed) = fake("a", None);
        assert!(lot.park(a).is_ok());
        let _ = drain_tx.send(());
        tokio::task::yield_now().await;
        assert!(!running.is_finished(), "a is still parked");
        a_ready.set();
        assert_eq!(a_resumed.await.expect("a resumed"), "a");
        running.await.expect("the lot ends");
        assert_eq!(gauge_value(&gauge), 0);
        // A stopped lot hands connections back.
        let (b, _, _) = fake("b", None);
        assert!(lot.is_closed());
        assert!(lot.park(b).is_err());
    }

    /// A fake whose socket is one end of a pair; the other end is returned.
    fn fake_with_socket(
        name: &'static str,
    ) -> (Box<Fake>, UnixStream, oneshot::Receiver<&'static str>) {
        let (mine, peer) = UnixStream::pair().expect("socket pair");
        mine.set_nonblocking(true).expect("non-blocking");
        let (mut parked, _ready, resumed) = fake(name, None);
        parked.socket = Some(mine);
        (parked, peer, resumed)
    }

    #[tokio::test]
    async fn input_on_a_parked_socket_resumes_only_its_connection() {
        let (lot, gauge, running) = running_lot();
        let (a, mut a_peer, a_resumed) = fake_with_socket("a");
        let (b, _b_peer, mut b_resumed) = fake_with_socket("b");
        assert!(lot.park(a).is_ok());
        assert!(lot.park(b).is_ok());
        until_parked(&gauge, 2).await;
        a_peer.write_all(b"\xc0\x00").expect("write to a");
        assert_eq!(a_resumed.await.expect("a resumed"), "a");
        assert!(b_resumed.try_recv().is_err(), "b had no input");
        assert_eq!(gauge_value(&gauge), 1, "b is still parked");
        running.abort();
    }

    #[tokio::test]
    async fn input_that_came_before_parking_and_a_hang_up_both_resume() {
        let (lot, _gauge, running) = running_lot();
        // Input waiting before the lot ever sees the socket: no new edge will come.
        let (a, mut a_peer, a_resumed) = fake_with_socket("a");
        a_peer.write_all(b"\xc0\x00").expect("write to a");
        assert!(lot.park(a).is_ok());
        assert_eq!(a_resumed.await.expect("a resumed"), "a");
        // A client that goes away: the end of stream wakes its connection too.
        let (b, b_peer, b_resumed) = fake_with_socket("b");
        assert!(lot.park(b).is_ok());
        drop(b_peer);
        assert_eq!(b_resumed.await.expect("b resumed"), "b");
        running.abort();
    }

    #[tokio::test]
    async fn a_connection_resumed_by_its_mailbox_leaves_the_socket_set() {
        let (lot, gauge, running) = running_lot();
        let (mut a, mut a_peer, a_resumed) = fake_with_socket("a");
        let a_ready = Arc::new(ReadyFlag::default());
        a.ready = a_ready.clone();
        // A second descriptor for a's socket keeps it open after a is dropped: epoll
        // would go on reporting it under a's old key had the lot not removed it.
        let _a_kept = a
            .socket
            .as_ref()
            .map(|socket| socket.try_clone().expect("dup"));
        assert!(lot.park(a).is_ok());
        until_parked(&gauge, 1).await;
        a_ready.set();
        assert_eq!(a_resumed.await.expect("a resumed"), "a");
        // Another connection takes a's place in the table; input for a must not resume it.
        let (b, _b_ready, mut b_resumed) = fake("b", None);
        assert!(lot.park(b).is_ok());
        until_parked(&gauge, 1).await;
        a_peer.write_all(b"\xc0\x00").expect("write to a");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(b_resumed.try_recv().is_err(), "b was resumed by a's socket");
        assert_eq!(gauge_value(&gauge), 1);
        running.abort();
    }

    #[tokio::test]
    async fn a_socket_that_resumed_its_connection_stays_in_the_set_disarmed() {
        let (lot, gauge, running) = running_lot();
        let (mut a, mut a_peer, a_resumed) = fake_with_socket("a");
        let (back, returned) = oneshot::channel();
        a.hand_back = Some(back);
        assert!(lot.park(a).is_ok());
        until_parked(&gauge, 1).await;
        a_peer.write_all(b"\xc0\x00").expect("write to a");
        assert_eq!(a_resumed.await.expect("a resumed"), "a");
        let (mut socket, in_set) = returned.await.expect("a's socket back");
        assert!(in_set, "resumed by its socket, it stays in the set");
        let mut input = [0u8; 2];
        std::io::Read::read_exact(&mut socket, &mut input).expect("a's input");

        // Disarmed: another connection in a's old place is not resumed by a's input.
        let (b, _b_ready, mut b_resumed) = fake("b", None);
        assert!(lot.park(b).is_ok());
        until_parked(&gauge, 1).await;
        a_peer.write_all(b"\xc0\x00").expect("write to a");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(b_resumed.try_recv().is_err(), "b was resumed by a's socket");

        // Parked again, a's socket is re-armed (under its new key): the input waiting
        // resumes it at once.
        let (mut again, _ready, again_resumed) = fake("a again", None);
        again.socket = Some(socket);
        again.in_set = true;
        assert!(lot.park(again).is_ok());
        assert_eq!(again_resumed.await.expect("a resumed again"), "a again");
        assert!(b_resumed.try_recv().is_err(), "b stays parked");
        assert_eq!(gauge_value(&gauge), 1);
        running.abort();
    }

    #[tokio::test]
    async fn input_answered_in_place_keeps_the_connection_parked() {
        let (lot, gauge, running) = running_lot();
        let (mut a, mut a_peer, mut a_resumed) = fake_with_socket("a");
        a.pongs = true;
        assert!(lot.park(a).is_ok());
        until_parked(&gauge, 1).await;
        // Twice: the one-shot registration is re-armed after each answer.
        for _ in 0..2 {
            a_peer.write_all(b"ping").expect("write to a");
            let mut answer = [0u8; 4];
            let peer = a_peer.try_clone().expect("dup");
            let answer = tokio::task::spawn_blocking(move || {
                let mut peer = peer;
                peer.set_nonblocking(false).expect("blocking");
                std::io::Read::read_exact(&mut peer, &mut answer).map(|()| answer)
            })
            .await
            .expect("reader")
            .expect("the answer");
            assert_eq!(&answer, b"pong");
            assert!(a_resumed.try_recv().is_err(), "a was resumed for a ping");
            assert_eq!(gauge_value(&gauge), 1);
        }
        a_peer.write_all(b"data").expect("write to a");
        assert_eq!(a_resumed.await.expect("a resumed"), "a");
        running.abort();
    }
}
