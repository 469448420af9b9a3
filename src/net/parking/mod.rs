//! The parking lot: where idle connections wait without a task of their own.
//!
//! A chat device's connection is idle nearly all its life, and as a tokio task it pays for
//! that with the task's cell (its future, in a 128-byte-aligned allocation) and the entry
//! that tracks it. A connection
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
//! woken.
//!
//! A parked connection's waker allocates nothing: it is the lot's id and the entry's key
//! packed into the waker's data word, and waking it looks the lot up in a process-wide
//! table of lots ([`LOTS`]), rather than an `Arc` allocated for every idle connection.
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
pub(crate) const DEADLINE_TICK: Duration = Duration::from_millis(250);

/// How many socket events the lot takes from its epoll set at a time.
const SOCKET_EVENTS: usize = 1024;

/// A connection waiting in the lot.
pub(crate) trait Parked: Send + 'static {
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

    /// Writes what the connection left to write when it parked (a new connection's
    /// CONNACK), once its socket is watched, without blocking: true when all of it went
    /// (or there was nothing), false to be resumed (the socket took only part of it). The
    /// lot calls it after adding the socket to its set, so that whatever the client sends
    /// in answer reaches a watched socket, and inputs are taken in the order they arrive.
    fn write_in_place(&mut self) -> bool {
        true
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
pub(crate) struct ParkingLot {
    incoming: mpsc::UnboundedSender<Box<dyn Parked>>,
}

impl ParkingLot {
    /// A lot, and its task to run ([`LotTask::run`]); until it runs, parked connections
    /// wait in its queue.
    pub(crate) fn new(parked_gauge: Gauge) -> (ParkingLot, LotTask) {
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
    pub(crate) fn park(&self, parked: Box<dyn Parked>) -> Result<(), Box<dyn Parked>> {
        self.incoming.send(parked).map_err(|refused| refused.0)
    }

    /// The lot has stopped: [`ParkingLot::park`] would fail.
    pub(crate) fn is_closed(&self) -> bool {
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
pub(crate) struct LotTask {
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
    pub(crate) async fn run(mut self, drain: impl Future<Output = ()>) {
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
        if !self.entries[key].write_in_place() {
            self.resume(key, Resumed::ByOther);
            return;
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
        let mut resumed = parked.resume();
        if why == Resumed::BySocket {
            // Its input is handled here, before the lot looks at the next socket: inputs
            // are taken in the order epoll reported them, as a single-threaded broker
            // would. Spawned, the connections would run in whatever order the runtime
            // picks (the last task woken runs first), and a PUBLISH read after another
            // client's SUBSCRIBE could be routed before that SUBSCRIBE took effect. What
            // the first poll leaves waiting is the spawned task's: it polls its sources
            // again, so nothing registered with this no-op waker is missed.
            let mut cx = Context::from_waker(Waker::noop());
            if resumed.as_mut().poll(&mut cx).is_ready() {
                return;
            }
        }
        self.resumed.spawn(resumed);
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
mod tests;
