//! A connection with nothing under way hands itself to the parking lot (`net::parking`)
//! and its task ends; the lot resumes it when its socket, its mailbox or its keepalive
//! deadline needs it, except for heartbeats, which it answers on the spot
//! ([`Parked::answer_in_place`]).

use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Buf;

use tokio::time::Instant;

use super::{log_end, Connection, ConnectionError, State};
use crate::net::parking::Parked;

/// The most a parked connection's socket is read for a heartbeat answered in place: a few
/// PINGREQs, 2 bytes each.
const HEARTBEAT_READ: usize = 32;

/// As many PINGRESPs (0xD0 0x00) as PINGREQs fit in [`HEARTBEAT_READ`].
const PINGRESPS: [u8; HEARTBEAT_READ] = {
    let mut answer = [0u8; HEARTBEAT_READ];
    let mut i = 0;
    while i < HEARTBEAT_READ {
        answer[i] = 0xD0;
        i += 2;
    }
    answer
};

/// Whether the input waiting is PINGREQs and nothing else (a PINGREQ is always the two
/// bytes 0xC0 0x00).
pub(super) fn is_heartbeat(input: &[u8]) -> bool {
    !input.is_empty() && input.len().is_multiple_of(2) && input.chunks(2).all(|p| p == [0xC0, 0x00])
}

/// A time since the broker started, in eighths of a second rounded up: 4 bytes that hold
/// 17 years, after which it reads as unknown (keepalive is then not enforced, rather than
/// enforced on everyone at once). Every connection carries its last input's time; the
/// parking lot checks keepalive deadlines every 250 ms anyway, so a deadline that comes
/// up to 125 ms late (never early) changes nothing a client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadClock(u32);

impl ReadClock {
    const TICK_MS: u64 = 125;

    pub(super) fn at(ms_since_start: u64) -> ReadClock {
        let ticks = ms_since_start.div_ceil(Self::TICK_MS);
        ReadClock(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// `None` once the clock has reached its end.
    fn since_start(self) -> Option<Duration> {
        (self.0 != u32::MAX).then(|| Duration::from_millis(u64::from(self.0) * Self::TICK_MS))
    }
}

/// Hands an idle connection to the lot; it ends here unless the lot has stopped (the
/// broker is stopping), when it serves on.
pub(super) async fn park(mut connection: Box<Connection>) -> Result<(), ConnectionError> {
    // Woken from the lot, it works on for `idle_park_ms` before it parks again.
    connection.state = State::Busy;
    // Empty (see `can_park`) but for counts not yet added to the metrics, and bytes to
    // write that the lot writes (see `can_park_with_output`).
    if let Some(mut buffers) = connection.buffers.take() {
        buffers.traffic.flush(&connection.ctx.metrics);
        if !buffers.wbuf.is_empty() {
            connection.buffers = Some(buffers);
        }
    }
    connection.session.release_idle_memory();
    connection.mailbox.release_idle_memory();
    // The lot watches the socket from here: the runtime's registration goes.
    if let Err(e) = connection.stream.detach() {
        let result = Err(e.into());
        Box::pin(connection.ended(&result)).await;
        return result;
    }
    let lot = connection.ctx.lot.clone();
    if let Err(parked) = lot.park(connection) {
        // The first read registers the socket again.
        parked.resume().await;
    }
    Ok(())
}

impl Connection {
    /// How long this connection stays quiet before it parks; `None` when it does not park.
    pub(super) fn park_after(&self) -> Option<Duration> {
        self.ctx
            .limits
            .idle_park
            .filter(|_| self.stream.is_tcp() && !self.ctx.lot.is_closed())
    }

    /// Whether the connection can wait in the parking lot: nothing under way that the lot
    /// does not watch (it watches the mailbox, the socket and the keepalive deadline).
    pub(super) fn can_park(&self) -> bool {
        self.buffers.as_ref().is_none_or(|b| b.wbuf.is_empty()) && self.can_park_with_output()
    }

    /// As [`Connection::can_park`], with bytes still to write but no PUBLISH among them
    /// (those are counted when written): the lot writes them
    /// ([`Parked::write_in_place`]).
    pub(super) fn can_park_with_output(&self) -> bool {
        let buffers_idle = self.buffers.as_ref().is_none_or(|b| {
            b.rbuf.is_empty()
                && b.acks.is_empty()
                && b.acks_done.is_empty()
                && b.publishes_queued == 0
        });
        self.state != State::Closing
            && buffers_idle
            && !self.session.has_output()
            && self.catch_up.backlog().is_none()
            && self.mailbox.is_idle()
    }

    /// When the client has been silent too long (1.5 times its keep alive, counted from
    /// its last input); `None` without a keep alive.
    pub(super) fn keepalive_deadline(&self) -> Option<Instant> {
        self.keep_alive()
            .zip(self.last_read.since_start())
            .map(|(limit, since_start)| self.ctx.started + since_start + limit)
    }

    /// The keepalive clock starts again from now.
    pub(super) fn mark_read(&mut self) {
        self.last_read = ReadClock::at(self.ctx.millis_since_start(Instant::now()));
    }

    /// How long the client may be silent (1.5 times its keep alive).
    pub(super) fn keep_alive(&self) -> Option<Duration> {
        self.keep_alive_ms
            .map(|ms| Duration::from_millis(u64::from(ms.get())))
    }
}

impl Parked for Connection {
    fn poll_wake(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.mailbox.poll_waiting(cx)
    }

    fn socket(&self) -> Option<RawFd> {
        // Only plain TCP parks (see `park_after`), detached from the runtime.
        self.stream.detached_fd()
    }

    fn answer_in_place(&mut self) -> bool {
        // Under an inbound rate limit, reading is the connection's own loop's business.
        if self.budget().is_some() {
            return false;
        }
        let mut input = [0u8; HEARTBEAT_READ];
        let n = match self.stream.read_detached(&mut input) {
            Ok(Some(n)) if n > 0 => n,
            // Nothing after all: stay parked.
            Ok(None) => return true,
            // End of stream or an error: the connection finds it again and ends.
            Ok(Some(_)) | Err(_) => return false,
        };
        self.mark_read();
        self.ctx.metrics.add_received(0, n as u64);
        let input = &input[..n];
        // Less than the buffer: all the socket had (a full buffer could be a longer packet
        // that merely starts with PINGREQs).
        if n < HEARTBEAT_READ && is_heartbeat(input) {
            let answer = &PINGRESPS[..n];
            let written = self.stream.write_detached(answer).unwrap_or(0);
            self.ctx.metrics.add_sent(0, written as u64);
            self.ctx.metrics.heartbeats_in_place((n / 2) as u64);
            if written == n {
                return true;
            }
            // The socket is full or failing: the connection writes the rest, or finds the
            // error.
            self.buffers().wbuf.extend_from_slice(&answer[written..]);
            return false;
        }
        // Anything else is the connection's work: it starts from what was read.
        self.buffers().rbuf.extend_from_slice(input);
        false
    }

    fn write_in_place(&mut self) -> bool {
        let Some(buffers) = &mut self.buffers else {
            return true;
        };
        let written = match self.stream.write_detached(&buffers.wbuf) {
            Ok(written) => written,
            // The connection finds the error again and ends.
            Err(_) => return false,
        };
        self.ctx.metrics.add_sent(0, written as u64);
        if written < buffers.wbuf.len() {
            // The socket is full: the connection writes the rest, under its deadline.
            buffers.wbuf.advance(written);
            return false;
        }
        self.buffers = None;
        true
    }

    fn in_lot_set(&self) -> bool {
        self.stream.in_lot_set()
    }

    fn set_in_lot_set(&mut self, in_set: bool) {
        self.stream.set_in_lot_set(in_set);
    }

    fn deadline(&self) -> Option<Instant> {
        self.keepalive_deadline()
    }

    fn resume(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let peer = self.permits.peer();
            let result = self.run().await;
            log_end(peer, &result);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_clock_rounds_up_and_stops_at_its_end() {
        let ms = |ms| Some(Duration::from_millis(ms));
        assert_eq!(ReadClock::at(0).since_start(), ms(0));
        // Never earlier than the input itself: a keepalive deadline is never early.
        assert_eq!(ReadClock::at(1).since_start(), ms(125));
        assert_eq!(ReadClock::at(125).since_start(), ms(125));
        assert_eq!(ReadClock::at(126).since_start(), ms(250));
        let day = 86_400_000;
        assert_eq!(ReadClock::at(day).since_start(), ms(day));
        // 2^32 eighths of a second (17 years) on, the clock reads as unknown.
        let end = ReadClock::at(u64::MAX);
        assert_eq!(end.since_start(), None);
        assert_eq!(ReadClock::at(u64::from(u32::MAX) * 125 + 1), end);
    }

    #[test]
    fn only_whole_pingreqs_are_a_heartbeat() {
        assert!(is_heartbeat(&[0xC0, 0x00]));
        assert!(is_heartbeat(&[0xC0, 0x00, 0xC0, 0x00]));
        assert!(!is_heartbeat(&[]));
        assert!(!is_heartbeat(&[0xC0]));
        assert!(!is_heartbeat(&[0xC0, 0x00, 0x30]));
        assert!(!is_heartbeat(&[0xE0, 0x00]));
        assert_eq!(PINGRESPS[..4], [0xD0, 0x00, 0xD0, 0x00]);
    }
}
