//! A connection's mailbox: what the router hands one connection, in one small allocation.
//!
//! Three things travel from the router to a connection: chat deliveries (bounded by
//! `limits.outbound_channel_capacity`), system broadcasts on a lower-priority lane (bounded
//! by [`BROADCAST_LANE`]), and at most one order to close. Most chat connections are idle
//! most of their life, so what a mailbox costs before any message matters: the three share
//! one `Arc` with one lock, and the queues are `VecDeque`s, allocated by the first message
//! and released again when the connection goes quiet (a channel would allocate its first
//! block of slots with it). The connection takes every waiting chat delivery in one lock
//! (a swap), and the router wakes it only when the queue goes from empty to non-empty.
//!
//! - [`Postbox`]: the router's end. Dropping it closes the connection (the router stopped,
//!   or the session went away) unless a reason was given before.
//! - [`BroadcastLane`]: a clonable end for the broadcast fan-out task.
//! - [`Mailbox`]: the connection's end. Dropping it makes later deliveries fail as closed
//!   and frees what was still queued.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use tern_codec::ReasonCode;

use crate::protocol::{Close, Delivery};

/// Broadcasts waiting for one connection; more are dropped (and counted) for it.
pub(crate) const BROADCAST_LANE: usize = 64;

/// A batch at least this long keeps its buffer for the next one (a busy connection);
/// after a shorter one the buffer is freed, so a quiet connection holds none.
const KEEP_BUFFER_FROM: usize = 8;

/// Why a delivery was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDelivered {
    /// The queue holds its capacity already (a stored delivery refused so makes the
    /// mailbox lagged: see [`Postbox::lagged`]).
    Full,
    /// A stored delivery while the mailbox is lagged: the connection will read it from
    /// storage.
    Lagged,
    /// The connection has gone.
    Closed,
}

/// What the connection is woken for.
#[derive(Debug)]
pub(crate) enum Mail {
    /// The router ordered the connection closed (given once).
    Close(Close),
    /// Chat deliveries wait: take them with [`Mailbox::pop_chat`].
    Chat,
    /// One system broadcast (only when no chat delivery waits).
    Broadcast(Delivery),
}

/// Everything the two ends share, behind one lock: 80 bytes, so that with the `Arc`'s
/// counts the allocation is 96 (a jemalloc size class; an idle connection's mailbox is
/// one of its larger parts). The waker, the flags and the counters sit under the lock
/// too, rather than in atomics beside it: the lock is taken for every hand-over anyway.
struct Queues {
    chat: VecDeque<Delivery>,
    /// Broadcasts waiting and a close order: what most connections never get. Boxed, and
    /// only while there is some.
    secondary: Option<Box<Secondary>>,
    /// The connection's waker (or the parking lot's), taken by the first wake: it is
    /// woken once per registration.
    waker: Option<Waker>,
    chat_capacity: u32,
    /// Outbound QoS > 0 messages unacknowledged, published by the connection for operators
    /// (the in-flight window is at most 65,535).
    in_flight: u32,
    broadcast_capacity: u16,
    /// The `Postbox` has ordered the connection closed (the order may be taken since).
    /// Kept here rather than in the `Postbox`, which every session's router slot holds.
    close_ordered: bool,
    /// The connection's end was dropped.
    receiver_gone: bool,
    /// A stored delivery did not fit: the connection reads the session's messages back
    /// from storage instead, and stored deliveries are refused until it has resynced.
    lagged: bool,
}

#[derive(Default)]
struct Secondary {
    broadcasts: VecDeque<Delivery>,
    /// Set once (by the one `Postbox`), taken once by the connection.
    close: Option<Close>,
}

impl Queues {
    fn secondary(&mut self) -> &mut Secondary {
        self.secondary.get_or_insert_with(Box::default)
    }

    fn drop_empty_secondary(&mut self) {
        self.secondary
            .take_if(|secondary| secondary.broadcasts.is_empty() && secondary.close.is_none());
    }

    fn has_broadcasts(&self) -> bool {
        self.secondary
            .as_ref()
            .is_some_and(|secondary| !secondary.broadcasts.is_empty())
    }

    fn register(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }
}

struct MailboxState {
    queues: Mutex<Queues>,
}

impl MailboxState {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, delivery: Delivery, broadcast: bool) -> Result<(), NotDelivered> {
        let mut queues = self.lock();
        if queues.receiver_gone {
            return Err(NotDelivered::Closed);
        }
        let stored = delivery.seq.is_some();
        if stored && queues.lagged {
            return Err(NotDelivered::Lagged);
        }
        let (queue, capacity) = if broadcast {
            let capacity = usize::from(queues.broadcast_capacity);
            (&mut queues.secondary().broadcasts, capacity)
        } else {
            let capacity = queues.chat_capacity as usize;
            (&mut queues.chat, capacity)
        };
        if queue.len() >= capacity {
            if stored {
                queues.lagged = true;
            } else {
                queues.drop_empty_secondary();
            }
            return Err(NotDelivered::Full);
        }
        let was_empty = queue.is_empty();
        queue.push_back(delivery);
        // Otherwise the connection has been woken for this queue already and takes
        // everything in it when it runs.
        if was_empty {
            wake(queues);
        }
        Ok(())
    }
}

/// Wakes the registered waker, taking it (one wake per registration), once the lock is
/// let go.
fn wake(mut queues: MutexGuard<'_, Queues>) {
    let waker = queues.waker.take();
    drop(queues);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Creates a connection's mailbox: the router's end and the connection's.
/// `broadcast_capacity` is at most 65,535.
pub(crate) fn mailbox(chat_capacity: usize, broadcast_capacity: usize) -> (Postbox, Mailbox) {
    let shared = Arc::new(MailboxState {
        queues: Mutex::new(Queues {
            chat: VecDeque::new(),
            secondary: None,
            waker: None,
            // Queues beyond 4 billion entries are not a bound anybody means.
            chat_capacity: u32::try_from(chat_capacity).unwrap_or(u32::MAX),
            in_flight: 0,
            broadcast_capacity: u16::try_from(broadcast_capacity).unwrap_or(u16::MAX),
            close_ordered: false,
            receiver_gone: false,
            lagged: false,
        }),
    });
    let postbox = Postbox {
        shared: shared.clone(),
    };
    let mailbox = Mailbox {
        shared,
        taken: None,
    };
    (postbox, mailbox)
}

/// The router's end of a connection's mailbox.
pub struct Postbox {
    shared: Arc<MailboxState>,
}

impl Postbox {
    /// Queues a chat delivery.
    pub fn deliver(&self, delivery: Delivery) -> Result<(), NotDelivered> {
        self.shared.push(delivery, false)
    }

    /// A handle that queues broadcasts, for the fan-out task.
    pub fn broadcast_lane(&self) -> BroadcastLane {
        BroadcastLane {
            shared: self.shared.clone(),
        }
    }

    /// Tells the connection to close; only the first reason counts.
    pub fn close(&mut self, reason: Close) {
        let mut queues = self.shared.lock();
        if !queues.close_ordered {
            queues.close_ordered = true;
            queues.secondary().close = Some(reason);
            wake(queues);
        }
    }

    /// The connection has been told to close.
    pub fn is_closing(&self) -> bool {
        self.shared.lock().close_ordered
    }

    /// The connection has resynced: stored deliveries are taken again.
    pub fn clear_lagged(&self) {
        self.shared.lock().lagged = false;
    }

    /// Outbound QoS > 0 messages the connection reported unacknowledged.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight as usize
    }
}

impl Drop for Postbox {
    fn drop(&mut self) {
        // The router let go of the connection without a word: it is stopping.
        self.close(Close::new(ReasonCode::ServerShuttingDown, ""));
    }
}

/// Queues system broadcasts for one connection.
#[derive(Clone)]
pub struct BroadcastLane {
    shared: Arc<MailboxState>,
}

impl BroadcastLane {
    pub fn deliver(&self, delivery: Delivery) -> Result<(), NotDelivered> {
        self.shared.push(delivery, true)
    }
}

/// The connection's end of its mailbox.
pub(crate) struct Mailbox {
    shared: Arc<MailboxState>,
    /// Chat deliveries taken from the shared queue and not yet handed out. Boxed, and
    /// only while there is one: an idle connection carries 8 bytes here, not 40.
    taken: Option<Box<Taken>>,
}

/// Chat deliveries taken from the shared queue in one swap.
#[derive(Default)]
struct Taken {
    /// Not handed out yet (in order, ahead of anything queued since).
    deliveries: VecDeque<Delivery>,
    /// How many deliveries it held when taken.
    count: usize,
}

impl Mailbox {
    /// Waits for a close order, or (with `take_live`) a chat batch or a broadcast.
    /// A close order comes first; broadcasts only while no chat delivery waits.
    pub(crate) async fn next(&mut self, take_live: bool) -> Mail {
        poll_fn(|cx| {
            if take_live && !self.taken_is_empty() {
                return Poll::Ready(Mail::Chat);
            }
            let mut queues = self.shared.lock();
            queues.register(cx.waker());
            if let Some(reason) = queues
                .secondary
                .as_mut()
                .and_then(|secondary| secondary.close.take())
            {
                queues.drop_empty_secondary();
                return Poll::Ready(Mail::Close(reason));
            }
            if !take_live {
                return Poll::Pending;
            }
            if !queues.chat.is_empty() {
                Self::take_batch(&mut self.taken, &mut queues.chat);
                return Poll::Ready(Mail::Chat);
            }
            let next = queues
                .secondary
                .as_mut()
                .and_then(|secondary| secondary.broadcasts.pop_front());
            if next.is_some() {
                queues.drop_empty_secondary();
            }
            match next {
                Some(delivery) => Poll::Ready(Mail::Broadcast(delivery)),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The next chat delivery, taking what the router queued meanwhile once the batch is
    /// handed out.
    pub(crate) fn pop_chat(&mut self) -> Option<Delivery> {
        if let Some(delivery) = self.taken.as_mut().and_then(|b| b.deliveries.pop_front()) {
            return Some(delivery);
        }
        self.release_batch();
        let mut queues = self.shared.lock();
        if queues.chat.is_empty() {
            return None;
        }
        Self::take_batch(&mut self.taken, &mut queues.chat);
        drop(queues);
        self.taken.as_mut()?.deliveries.pop_front()
    }

    /// Swaps the shared chat queue (not empty) with the batch's emptied buffer.
    fn take_batch(taken: &mut Option<Box<Taken>>, chat: &mut VecDeque<Delivery>) {
        let taken = taken.get_or_insert_with(Box::default);
        std::mem::swap(chat, &mut taken.deliveries);
        taken.count = taken.deliveries.len();
    }

    /// Frees the batch's buffer after a short batch: a quiet connection holds no queue
    /// memory. The box stays until [`Mailbox::release_idle_memory`] (one allocation less
    /// per batch for a connection at work).
    fn release_batch(&mut self) {
        if let Some(taken) = &mut self.taken {
            if taken.count < KEEP_BUFFER_FROM && taken.deliveries.capacity() > 0 {
                taken.deliveries = VecDeque::new();
            }
        }
    }

    /// For a connection about to wait idle (parked): frees the batch if it is empty.
    pub(crate) fn release_idle_memory(&mut self) {
        if self.taken_is_empty() {
            self.taken = None;
        }
    }

    fn taken_is_empty(&self) -> bool {
        self.taken.as_ref().is_none_or(|b| b.deliveries.is_empty())
    }

    /// No chat delivery waits, taken or not.
    pub(crate) fn chat_is_empty(&self) -> bool {
        self.taken_is_empty() && self.shared.lock().chat.is_empty()
    }

    /// Nothing waits at all: no chat delivery, no broadcast.
    pub(crate) fn is_empty(&self) -> bool {
        if !self.taken_is_empty() {
            return false;
        }
        let queues = self.shared.lock();
        queues.chat.is_empty() && !queues.has_broadcasts()
    }

    /// Nothing waits and nothing is owed: no delivery, broadcast or close order, and no
    /// lag to resync. A connection may park only then.
    pub(crate) fn is_idle(&self) -> bool {
        self.taken_is_empty() && Self::nothing_waits(&self.shared.lock())
    }

    fn nothing_waits(queues: &Queues) -> bool {
        // The secondary part is dropped once empty: no broadcast and no close order.
        !queues.lagged && queues.chat.is_empty() && queues.secondary.is_none()
    }

    /// For a parked connection: registers `cx` to be woken by whatever the router hands
    /// over next; true when something is there already (then it is not waited for).
    pub(crate) fn poll_waiting(&self, cx: &mut std::task::Context<'_>) -> bool {
        let mut queues = self.shared.lock();
        queues.register(cx.waker());
        !(self.taken_is_empty() && Self::nothing_waits(&queues))
    }

    pub(crate) fn lagged(&self) -> bool {
        self.shared.lock().lagged
    }

    pub(crate) fn set_lagged(&self) {
        self.shared.lock().lagged = true;
    }

    /// Publishes the connection's count of unacknowledged outbound messages.
    pub(crate) fn set_in_flight(&self, n: usize) {
        self.shared.lock().in_flight = u32::try_from(n).unwrap_or(u32::MAX);
    }
}

/// Shortcuts for tests of the router, which read mailboxes without a connection.
#[cfg(test)]
impl Postbox {
    /// Stored deliveries are refused (`NotDelivered::Lagged`) until the connection has read
    /// the session's queue back from storage.
    pub(crate) fn lagged(&self) -> bool {
        self.shared.lock().lagged
    }
}

#[cfg(test)]
impl Mailbox {
    /// Waits for the next chat delivery (broadcasts are skipped); `None` once told to close.
    pub(crate) async fn recv_chat(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.pop_chat() {
                return Some(delivery);
            }
            if let Mail::Close(_) = self.next(true).await {
                return None;
            }
        }
    }

    /// Waits for the close order.
    pub(crate) async fn closed(&mut self) -> Close {
        match self.next(false).await {
            Mail::Close(reason) => reason,
            _ => unreachable!("only a close order wakes next(false)"),
        }
    }

    /// The close order, if one was given, without waiting.
    pub(crate) fn try_closed(&mut self) -> Option<Close> {
        use futures_util::FutureExt;
        match self.next(false).now_or_never()? {
            Mail::Close(reason) => Some(reason),
            _ => None,
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let mut queues = self.shared.lock();
        queues.receiver_gone = true;
        // Messages nobody will read: freed now, not when the router lets go of its end.
        queues.chat = VecDeque::new();
        queues.secondary = None;
        queues.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tern_codec::QoS;

    use super::*;
    use crate::protocol::Message;

    fn delivery(topic: &str) -> Delivery {
        let message = Message::test(topic, QoS::AtMostOnce, Bytes::from_static(b"x"));
        Delivery::new(Arc::new(message), QoS::AtMostOnce)
    }

    fn topics(mailbox: &mut Mailbox) -> Vec<String> {
        std::iter::from_fn(|| mailbox.pop_chat())
            .map(|d| d.message.topic.to_string())
            .collect()
    }

    async fn next(mailbox: &mut Mailbox, take_live: bool) -> Mail {
        tokio::time::timeout(Duration::from_secs(5), mailbox.next(take_live))
            .await
            .expect("mail within 5 s")
    }

    #[tokio::test]
    async fn chat_comes_in_order_and_is_bounded() {
        let (postbox, mut mailbox) = mailbox(3, 1);
        for topic in ["a", "b", "c"] {
            postbox.deliver(delivery(topic)).expect("room");
        }
        assert_eq!(postbox.deliver(delivery("d")), Err(NotDelivered::Full));
        assert!(matches!(next(&mut mailbox, true).await, Mail::Chat));
        assert_eq!(mailbox.pop_chat().expect("a").message.topic, "a");
        // Taken in one batch: the shared queue has room again, and what comes now goes
        // behind what the connection holds.
        postbox.deliver(delivery("d")).expect("room");
        assert_eq!(topics(&mut mailbox), ["b", "c", "d"]);
        assert!(mailbox.chat_is_empty());
    }

    #[tokio::test]
    async fn a_quiet_mailbox_gives_its_memory_back() {
        let (postbox, mut mailbox) = mailbox(64, 1);
        let batch_capacity =
            |mailbox: &Mailbox| mailbox.taken.as_ref().map(|b| b.deliveries.capacity());
        // A long batch keeps its buffer for the next one (a busy connection)...
        for i in 0..KEEP_BUFFER_FROM {
            postbox.deliver(delivery(&i.to_string())).expect("room");
        }
        assert!(matches!(next(&mut mailbox, true).await, Mail::Chat));
        assert_eq!(topics(&mut mailbox).len(), KEEP_BUFFER_FROM);
        assert!(batch_capacity(&mailbox).is_some_and(|c| c > 0));
        // ...a short one does not.
        postbox.deliver(delivery("short")).expect("room");
        assert!(matches!(next(&mut mailbox, true).await, Mail::Chat));
        assert_eq!(topics(&mut mailbox), ["short"]);
        assert_eq!(batch_capacity(&mailbox), Some(0));
        // Parking drops the emptied batch itself, but never one still holding deliveries.
        postbox.deliver(delivery("kept")).expect("room");
        assert!(matches!(next(&mut mailbox, true).await, Mail::Chat));
        mailbox.release_idle_memory();
        assert!(mailbox.taken.is_some());
        assert_eq!(topics(&mut mailbox), ["kept"]);
        mailbox.release_idle_memory();
        assert!(mailbox.taken.is_none());
    }

    #[tokio::test]
    async fn a_parked_connection_is_woken_by_a_delivery() {
        let (postbox, mut mailbox) = mailbox(8, 8);
        let waiter = tokio::spawn(async move {
            let mail = next(&mut mailbox, true).await;
            (matches!(mail, Mail::Chat), topics(&mut mailbox))
        });
        tokio::task::yield_now().await;
        postbox.deliver(delivery("x")).expect("room");
        assert_eq!(waiter.await.expect("task"), (true, vec!["x".to_string()]));
    }

    #[tokio::test]
    async fn broadcasts_wait_behind_chat_and_close_goes_first() {
        let (mut postbox, mut mailbox) = mailbox(8, 1);
        let lane = postbox.broadcast_lane();
        lane.deliver(delivery("broadcast/1")).expect("room");
        assert_eq!(
            lane.deliver(delivery("broadcast/2")),
            Err(NotDelivered::Full)
        );
        postbox.deliver(delivery("dm")).expect("room");
        assert!(matches!(next(&mut mailbox, true).await, Mail::Chat));
        assert_eq!(topics(&mut mailbox), ["dm"]);
        let Mail::Broadcast(b) = next(&mut mailbox, true).await else {
            panic!("the broadcast");
        };
        assert_eq!(b.message.topic, "broadcast/1");

        postbox.deliver(delivery("late")).expect("room");
        postbox.close(Close::new(ReasonCode::SessionTakenOver, ""));
        postbox.close(Close::new(ReasonCode::AdministrativeAction, "second"));
        assert!(postbox.is_closing());
        let Mail::Close(reason) = next(&mut mailbox, false).await else {
            panic!("the close order");
        };
        assert_eq!(reason.code, ReasonCode::SessionTakenOver);
        // Given once; the queued chat is still there to read.
        assert!(matches!(next(&mut mailbox, true).await, Mail::Chat));
    }

    #[tokio::test]
    async fn without_take_live_only_a_close_order_wakes() {
        let (postbox, mut mailbox) = mailbox(8, 8);
        postbox.deliver(delivery("x")).expect("room");
        let parked = tokio::time::timeout(Duration::from_millis(20), mailbox.next(false)).await;
        assert!(
            parked.is_err(),
            "no chat taken while the session has no room"
        );
        drop(postbox);
        let Mail::Close(reason) = next(&mut mailbox, false).await else {
            panic!("dropping the router's end closes");
        };
        assert_eq!(reason.code, ReasonCode::ServerShuttingDown);
    }

    #[tokio::test]
    async fn a_gone_connection_refuses_and_frees_its_queue() {
        let (postbox, mailbox) = mailbox(8, 8);
        let d = delivery("x");
        let message = d.message.clone();
        postbox.deliver(d).expect("room");
        assert_eq!(Arc::strong_count(&message), 2);
        drop(mailbox);
        assert_eq!(Arc::strong_count(&message), 1, "queued message freed");
        assert_eq!(postbox.deliver(delivery("y")), Err(NotDelivered::Closed));
        assert_eq!(
            postbox.broadcast_lane().deliver(delivery("z")),
            Err(NotDelivered::Closed)
        );
    }

    #[tokio::test]
    async fn flags_are_shared() {
        let (postbox, mailbox) = mailbox(8, 8);
        mailbox.set_lagged();
        assert!(postbox.lagged());
        postbox.clear_lagged();
        assert!(!mailbox.lagged());
        mailbox.set_in_flight(7);
        assert_eq!(postbox.in_flight(), 7);
    }

    #[tokio::test]
    async fn a_stored_delivery_that_does_not_fit_makes_the_mailbox_lagged() {
        let stored = |topic: &str, seq: u64| {
            let mut d = delivery(topic);
            d.seq = Some(seq);
            d
        };
        let (postbox, mut mailbox) = mailbox(2, 1);
        postbox.deliver(stored("a", 1)).expect("room");
        postbox.deliver(delivery("b")).expect("room");
        assert_eq!(postbox.deliver(delivery("c")), Err(NotDelivered::Full));
        assert!(
            !postbox.lagged(),
            "a live delivery that does not fit is only refused"
        );
        assert_eq!(postbox.deliver(stored("c", 2)), Err(NotDelivered::Full));
        assert!(postbox.lagged() && !mailbox.is_idle());
        // Room again, but stored deliveries wait in storage until the resync; live ones
        // still come through.
        assert!(matches!(next(&mut mailbox, true).await, Mail::Chat));
        assert_eq!(topics(&mut mailbox), ["a", "b"]);
        assert_eq!(postbox.deliver(stored("d", 3)), Err(NotDelivered::Lagged));
        postbox.deliver(delivery("e")).expect("room");
        postbox.clear_lagged();
        postbox.deliver(stored("f", 4)).expect("room");
        assert!(matches!(next(&mut mailbox, true).await, Mail::Chat));
        assert_eq!(topics(&mut mailbox), ["e", "f"]);
        assert!(mailbox.is_idle());
    }

    /// The shared part is one of an idle connection's larger allocations.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_shared_part_fits_a_96_byte_allocation() {
        // With the `Arc`'s two counts.
        let size = 16 + std::mem::size_of::<MailboxState>();
        assert!(size <= 96, "the mailbox's Arc allocation is {size} bytes");
    }
}
