//! The lot with fake connections and socket pairs.

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
/// Parks another connection ("b", which takes the place a resumed connection left in the
/// table) and writes to the resumed one's peer: b must not be resumed by that input.
async fn another_in_its_place_is_not_resumed_by_its_input(
    lot: &ParkingLot,
    gauge: &Gauge,
    peer: &mut UnixStream,
) -> (Arc<ReadyFlag>, oneshot::Receiver<&'static str>) {
    let (b, b_ready, mut b_resumed) = fake("b", None);
    assert!(lot.park(b).is_ok());
    until_parked(gauge, 1).await;
    peer.write_all(b"\xc0\x00")
        .expect("write to the resumed connection");
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        b_resumed.try_recv().is_err(),
        "b was resumed by the other's socket"
    );
    (b_ready, b_resumed)
}

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
    while a_ready.polls.load(Ordering::Relaxed) == 0 || b_ready.polls.load(Ordering::Relaxed) == 0 {
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
    another_in_its_place_is_not_resumed_by_its_input(&lot, &gauge, &mut a_peer).await;
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
    let (_b_ready, mut b_resumed) =
        another_in_its_place_is_not_resumed_by_its_input(&lot, &gauge, &mut a_peer).await;

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
