//! What goes to the client: deliveries from the mailbox into the session, the durable
//! queue read back from storage (`protocol::catch_up` decides what goes), and the write of
//! what the session queued, under a deadline when the peer makes it wait.

use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{ByteString, Disconnect, Packet, Protocol, ReasonCode};
use tern_storage::{StorageError, Store};

use super::{Buffers, Connection, ConnectionError, Context, State};
use crate::metrics::{DropReason, LatencyTally};
use crate::protocol::catch_up::Stored;
use crate::protocol::outgoing::Transmit;
use crate::protocol::{now_ms, Delivery};
use crate::router::mailbox::Mail;

/// First write buffer of a busy connection (it grows as needed; an idle one holds none).
const WRITE_BUFFER: usize = 4 * 1024;
/// The least time a peer gets to accept written bytes before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Storage entries read per backlog page.
pub(super) const BACKLOG_PAGE: usize = 256;

/// The clock of the deliveries one wakeup takes: the time, read once for them, and their
/// publish-to-deliver latencies, added to the metrics together at the end.
struct DeliveryClock {
    at: std::time::Instant,
    ms: u64,
    latencies: LatencyTally,
}

impl DeliveryClock {
    fn start() -> DeliveryClock {
        DeliveryClock {
            at: std::time::Instant::now(),
            ms: now_ms(),
            latencies: LatencyTally::default(),
        }
    }
}

impl Connection {
    /// Chat deliveries wait in the mailbox: everything waiting taken in one go, with one
    /// clock reading (a fan-out hands each connection many messages at once): fewer
    /// wakeups, larger writes.
    pub(super) fn take_chat(&mut self) {
        let mut clock = DeliveryClock::start();
        while self.session.has_room() {
            match self.mailbox.pop_chat() {
                Some(delivery) => self.deliver_live(delivery, &mut clock),
                None => break,
            }
        }
        self.ctx.metrics.add_publish_to_deliver(clock.latencies);
    }

    pub(super) fn take_broadcast(&mut self, delivery: Delivery) {
        let mut clock = DeliveryClock::start();
        self.deliver_live(delivery, &mut clock);
        self.ctx.metrics.add_publish_to_deliver(clock.latencies);
    }

    fn deliver_live(&mut self, delivery: Delivery, clock: &mut DeliveryClock) {
        if let Some(at) = delivery.message.received_at {
            let elapsed = clock.at.saturating_duration_since(at);
            self.ctx
                .metrics
                .tally_publish_to_deliver(&mut clock.latencies, elapsed);
        }
        let Some(delivery) = self.catch_up.live(delivery, self.mailbox.lagged()) else {
            // Read from storage already, or it will be with the resync.
            return;
        };
        let stored = delivery.seq;
        if self.session.deliver(delivery, clock.ms).is_err() {
            match stored {
                Some(seq) => {
                    // In storage: read it back once the queue has room.
                    self.catch_up.refused(seq);
                    self.mailbox.set_lagged();
                }
                None => self.ctx.metrics.dropped(DropReason::QueueFull),
            }
        }
    }

    /// Reads the next page of the session's durable queue into the session.
    pub(super) async fn refill_backlog(&mut self) -> Result<(), ConnectionError> {
        if self.catch_up.backlog().is_none() {
            return Ok(());
        }
        let id = self.client_id.to_string();
        let from = self.catch_up.next();
        let page = read_store(&self.ctx, move |store| store.queue(&id, from, BACKLOG_PAGE)).await?;
        let complete = page.len() < BACKLOG_PAGE;
        let entries = page
            .into_iter()
            .map(|(seq, queued)| {
                let stored = if queued.message_ref.is_some() {
                    // Its chat message was deleted by retention (im.inbox_max_age_secs).
                    Stored::Unusable("its chat message expired".to_string())
                } else {
                    match Delivery::from_queued(seq, queued) {
                        Ok(delivery) => Stored::Delivery(delivery),
                        Err(e) => {
                            tracing::warn!(client_id = %self.client_id, seq, "skipping damaged queued message: {e}");
                            Stored::Unusable(e)
                        }
                    }
                };
                (seq, stored)
            })
            .collect();
        let page = self
            .catch_up
            .page(entries, complete, &mut self.session, now_ms());
        self.dequeue(page.dequeue).await;
        Ok(())
    }

    /// The mailbox lagged and is empty now: the deliveries it refused are read back from
    /// storage, up to where the router's live ones continue.
    pub(super) fn resync(&mut self) -> Result<(), ConnectionError> {
        let session = self.session.params().id;
        if let Some(upto) = self.ctx.router.resync(session, self.conn_id)? {
            self.catch_up.resync(upto);
        }
        Ok(())
    }

    /// Encodes one packet into the write buffer.
    pub(super) fn queue_packet(&mut self, packet: impl Into<Transmit>) {
        let packet = packet.into();
        let protocol = self.session.params().protocol;
        let buffers = self.buffers();
        if packet.is_publish() {
            buffers.publishes_queued += 1;
        }
        if buffers.wbuf.capacity() == 0 {
            // One allocation for a burst of packets rather than one per growth step.
            buffers.wbuf.reserve(WRITE_BUFFER);
        }
        if let Err(e) = packet.encode(protocol, &mut buffers.wbuf) {
            tracing::warn!(client_id = %self.client_id, "cannot encode {}: {e}", packet.name());
        }
    }

    /// Writes what the session queued. A peer that stops reading gets the longer of 1.5
    /// times its keep alive and [`WRITE_TIMEOUT`] to take the bytes; a close order from the
    /// router meanwhile ends the wait.
    pub(super) async fn flush(&mut self) -> Result<(), ConnectionError> {
        while let Some(packet) = self.session.poll_transmit() {
            self.queue_packet(packet);
        }
        // Once per loop iteration: the shared counters see batches, not packets.
        if let Some(buffers) = &mut self.buffers {
            buffers.traffic.flush(&self.ctx.metrics);
        }
        let discarded = self.session.take_discarded();
        if discarded.too_large > 0 {
            let n = discarded.too_large.into();
            self.ctx.metrics.dropped_many(DropReason::TooLarge, n);
        }
        if discarded.expired > 0 {
            let n = discarded.expired.into();
            self.ctx.metrics.dropped_many(DropReason::Expired, n);
        }
        if self.buffers().wbuf.is_empty() {
            return Ok(());
        }
        let limit = self
            .keep_alive()
            .unwrap_or(WRITE_TIMEOUT)
            .max(WRITE_TIMEOUT);
        let written = {
            let buffers: &mut Buffers = self.buffers.get_or_insert_with(Box::default);
            let mut write = std::pin::pin!(self.stream.write_all(&buffers.wbuf));
            // Most writes complete at once: the timer is armed only when the peer makes us wait.
            if let Poll::Ready(result) = futures_util::poll!(write.as_mut()) {
                Ok(result)
            } else if self.state == State::Closing {
                tokio::time::timeout(limit, write).await
            } else {
                let write = tokio::time::timeout(limit, write);
                // A peer that does not read blocks this write; the router may meanwhile close
                // the connection (a slow consumer, a takeover): that must not wait for the
                // write. Nothing more can be sent to such a peer, not even DISCONNECT.
                tokio::select! {
                    written = write => written,
                    Mail::Close(close) = self.mailbox.next(false) => {
                        self.state = State::Closing;
                        return Err(ConnectionError::Closed(close));
                    }
                }
            }
        };
        match written {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("peer took no data for {limit:?}"),
                )
                .into())
            }
        }
        let nothing_waits = self.mailbox.is_empty();
        let buffers: &mut Buffers = self.buffers.get_or_insert_with(Box::default);
        let publishes = std::mem::take(&mut buffers.publishes_queued);
        buffers.traffic.written(publishes, buffers.wbuf.len());
        buffers.traffic.flush(&self.ctx.metrics);
        if nothing_waits {
            // Nothing more on the way: an idle connection holds no write buffer.
            buffers.wbuf = BytesMut::new();
        } else {
            buffers.wbuf.clear();
        }
        Ok(())
    }

    /// A server-side close: DISCONNECT with the reason (v5 only), then the socket closes.
    pub(super) async fn server_disconnect(&mut self, reason: ReasonCode, why: &str) {
        if self.session.params().protocol == Protocol::V5 {
            let mut disconnect = Disconnect::new(reason);
            if !why.is_empty() {
                disconnect.properties.reason_string = Some(ByteString::from(why));
            }
            self.queue_packet(Packet::Disconnect(disconnect));
        }
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Reads the store off the runtime (RocksDB reads block), after every write queued so far
/// has been applied, so that what this connection wrote itself is visible.
pub(super) async fn read_store<T: Send + 'static>(
    ctx: &Context,
    read: impl FnOnce(&dyn Store) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ConnectionError> {
    ctx.writer.barrier().await?;
    read_store_now(ctx, read).await
}

/// [`read_store`] without waiting for the writes queued so far: for a read that can tell
/// when what it looks for is not applied yet, and only then pays for the wait (the
/// writer may be in the middle of an fsync).
pub(super) async fn read_store_now<T: Send + 'static>(
    ctx: &Context,
    read: impl FnOnce(&dyn Store) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ConnectionError> {
    let store = ctx.writer.store().clone();
    tokio::task::spawn_blocking(move || read(&*store))
        .await
        .map_err(|e| ConnectionError::Io(std::io::Error::other(e)))?
        .map_err(ConnectionError::from)
}
