//! Traffic: application messages and bytes, both ways. A connection keeps its own counts
//! in a [`Traffic`] and adds them once per loop iteration, so that thousands of connections
//! do not all hit the same cache lines per packet.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Registry, Unit};

use super::{add, counter, Metrics};

#[derive(Debug)]
pub(super) struct TrafficCounters {
    pub(super) messages_received: Counter,
    pub(super) messages_sent: Counter,
    pub(super) bytes_received: Counter,
    pub(super) bytes_sent: Counter,
}

impl TrafficCounters {
    pub(super) fn register(r: &mut Registry) -> TrafficCounters {
        TrafficCounters {
            messages_received: counter(
                r,
                "messages_received",
                "Application messages (PUBLISH packets) received from clients",
                None,
            ),
            messages_sent: counter(
                r,
                "messages_sent",
                "Application messages (PUBLISH packets) sent to clients",
                None,
            ),
            bytes_received: counter(
                r,
                "received",
                "Bytes read from client sockets, every packet included",
                Some(Unit::Bytes),
            ),
            bytes_sent: counter(
                r,
                "sent",
                "Bytes written to client sockets, every packet included",
                Some(Unit::Bytes),
            ),
        }
    }
}

impl Metrics {
    /// `messages` PUBLISH packets and `bytes` bytes (every packet) came in from a client.
    pub(crate) fn add_received(&self, messages: u64, bytes: u64) {
        add(&self.traffic.messages_received, messages);
        add(&self.traffic.bytes_received, bytes);
    }

    /// `messages` PUBLISH packets and `bytes` bytes (every packet) went out to a client.
    pub(crate) fn add_sent(&self, messages: u64, bytes: u64) {
        add(&self.traffic.messages_sent, messages);
        add(&self.traffic.bytes_sent, bytes);
    }
}

/// A connection's traffic counts, kept locally and added to [`Metrics`] in one go
/// ([`Traffic::flush`], e.g. once per loop iteration), so that the shared counters are
/// touched once per batch rather than once per packet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Traffic {
    pub messages_received: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub bytes_sent: u64,
}

impl Traffic {
    /// Bytes read from the socket.
    pub(crate) fn read(&mut self, bytes: usize) {
        self.bytes_received += bytes as u64;
    }

    /// A PUBLISH decoded.
    pub(crate) fn publish_received(&mut self) {
        self.messages_received += 1;
    }

    /// Bytes written to the socket, `messages` of the packets in them PUBLISH.
    pub(crate) fn written(&mut self, messages: u64, bytes: usize) {
        self.messages_sent += messages;
        self.bytes_sent += bytes as u64;
    }

    /// Adds the counts to `metrics` and starts again from zero.
    pub(crate) fn flush(&mut self, metrics: &Metrics) {
        if *self != Traffic::default() {
            metrics.add_received(self.messages_received, self.bytes_received);
            metrics.add_sent(self.messages_sent, self.bytes_sent);
            *self = Traffic::default();
        }
    }
}
