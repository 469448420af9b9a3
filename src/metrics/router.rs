//! What the router holds (sessions, subscriptions, retained messages, offline queues): not
//! counted here as it changes, but reported by the router on request ([`RouterStats`]),
//! when `/metrics` is scraped and on every `$SYS` tick, and set as gauges.

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Metrics;

/// What the router holds, counted without touching storage (for the gauges and `$SYS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Sessions with a connected client.
    pub connected: usize,
    pub subscriptions: usize,
    /// Retained messages, the in-memory `$SYS` ones included.
    pub retained: usize,
    /// QoS 1/2 messages queued for persistent sessions while they were offline (since they
    /// went offline, or as found at start). Once the session reconnects, its backlog is
    /// read from storage and no longer counted here.
    pub queued: u64,
}

#[derive(Debug)]
pub(super) struct RouterGauges {
    sessions: Gauge,
    clients_connected: Gauge,
    subscriptions: Gauge,
    retained: Gauge,
    queued: Gauge,
}

impl RouterGauges {
    pub(super) fn register(r: &mut Registry) -> RouterGauges {
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        RouterGauges {
            sessions: gauge(r, "sessions", "Sessions the broker holds, connected or not"),
            clients_connected: gauge(r, "clients_connected", "Sessions with a connected client"),
            subscriptions: gauge(r, "subscriptions", "Subscriptions of every session"),
            retained: gauge(r, "retained_messages", "Retained messages"),
            queued: gauge(
                r,
                "queued_messages",
                "QoS 1/2 messages queued for sessions while they were offline",
            ),
        }
    }
}

impl Metrics {
    /// Sets the gauges of what the router holds.
    pub(crate) fn record_router(&self, stats: &RouterStats) {
        let set = |gauge: &Gauge, value: u64| gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        let g = &self.router;
        set(&g.sessions, stats.sessions as u64);
        set(&g.clients_connected, stats.connected as u64);
        set(&g.subscriptions, stats.subscriptions as u64);
        set(&g.retained, stats.retained as u64);
        set(&g.queued, stats.queued);
    }
}
