//! Connections: open per listener, accepted, refused before or at CONNECT, accepts paced,
//! inbound paused, parked, and heartbeats the parking lot answered.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::{family, RefuseReason};
use super::{add, counter, Metrics};
use crate::config::ListenerKind;

#[derive(Debug)]
pub(super) struct Connections {
    open: Vec<Gauge>,
    accepted: Vec<Counter>,
    refused: Vec<Counter>,
    accepts_paced: Vec<Counter>,
    inbound_paused: Vec<Counter>,
    parked: Gauge,
    heartbeats_in_place: Counter,
}

impl Connections {
    pub(super) fn register(r: &mut Registry) -> Connections {
        let parked = Gauge::default();
        r.register(
            "parked_connections",
            "Idle connections waiting in the parking lot, without a task of their own",
            parked.clone(),
        );
        Connections {
            open: listeners(r, "connections", "Open client connections, per listener"),
            accepted: listeners(
                r,
                "connections_accepted",
                "Client connections accepted, per listener",
            ),
            accepts_paced: listeners(
                r,
                "accepts_paced",
                "Times a listener paused accepting to keep to its max_connects_per_sec (a \
                 reconnect storm waits in the kernel's accept queue meanwhile)",
            ),
            inbound_paused: listeners(
                r,
                "inbound_paused",
                "Times a connection was not read for a while because it exceeded its \
                 listener's max_inbound_messages_per_sec or max_inbound_bytes_per_sec",
            ),
            refused: family(
                r,
                "connects_refused",
                "Connections refused before or at CONNECT, by reason",
                "reason",
                RefuseReason::ALL,
                |r| r.as_str(),
            ),
            parked,
            heartbeats_in_place: counter(
                r,
                "parked_heartbeats",
                "PINGREQs of parked connections answered by the parking lot, the connection staying parked",
                None,
            ),
        }
    }
}

/// One series per listener.
fn listeners<M>(r: &mut Registry, name: &str, help: &str) -> Vec<M>
where
    M: prometheus_client::registry::Metric + Default + Clone,
    prometheus_client::metrics::family::Family<super::labels::Label, M>:
        prometheus_client::registry::Metric,
{
    family(r, name, help, "listener", &ListenerKind::ALL, |l| {
        l.as_str()
    })
}

impl Metrics {
    /// A connection was accepted on a `listener` (the listener counts it as open in
    /// [`Metrics::open_connections`] for its whole life, refused CONNECT included).
    pub(crate) fn connection_accepted(&self, listener: ListenerKind) {
        // `ListenerKind::ALL` is in declaration order (tested), so this is its index.
        self.connections.accepted[listener as usize].inc();
    }

    /// The gauge of connections open on a `listener` (`tern_connections`).
    pub(crate) fn open_connections(&self, listener: ListenerKind) -> Gauge {
        self.connections.open[listener as usize].clone()
    }

    /// A connection refused before it got a session (a refusing CONNACK, or closed
    /// without one).
    pub(crate) fn connect_refused(&self, reason: RefuseReason) {
        self.connections.refused[reason as usize].inc();
    }

    /// A listener paused accepting for its connect rate.
    pub(crate) fn accept_paced(&self, listener: ListenerKind) {
        self.connections.accepts_paced[listener as usize].inc();
    }

    /// A connection paused reading for its inbound rate.
    pub(crate) fn inbound_paused(&self, listener: ListenerKind) {
        self.connections.inbound_paused[listener as usize].inc();
    }

    /// The gauge the parking lot keeps (`crate::net::parking`).
    pub(crate) fn parked_gauge(&self) -> Gauge {
        self.connections.parked.clone()
    }

    /// `count` PINGREQs of a parked connection answered by the parking lot.
    pub(crate) fn heartbeats_in_place(&self, count: u64) {
        add(&self.connections.heartbeats_in_place, count);
    }
}
