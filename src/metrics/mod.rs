//! The broker's metrics: one [`Metrics`] shared as `Arc<Metrics>` by the listeners, the
//! connections, the router and the storage writer, exposed two ways:
//!
//! - Prometheus/OpenMetrics text on the admin listener's `GET /metrics` ([`Metrics::encode`]);
//! - `$SYS/broker/...` topics, published by [`sys::spawn_sys_publisher`] every few seconds.
//!
//! Every series is named `tern_...`. Updating is cheap: a counter or gauge is one relaxed
//! atomic add (the label sets are fixed enums, resolved to their counter once at start, so
//! no map lookup happens on the way), and the latency histograms are atomics too (see
//! [`histogram`]). A connection may still batch its traffic counts in a [`Traffic`] and add
//! them once per loop iteration, so that thousands of connections do not all hit the same
//! cache lines per packet.
//!
//! What the router owns (sessions, retained messages, queues) is not counted here as it
//! changes: the router reports it on request ([`RouterStats`]), when `/metrics` is scraped
//! and on every `$SYS` tick, and [`Metrics::record_router`] sets the gauges.

pub mod histogram;
pub mod sys;

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tern_codec::ReasonCode;

pub use histogram::{LatencyHistogram, LatencyTally};
pub use sys::spawn_sys_publisher;

use crate::config::ListenerKind;
use crate::router::RouterStats;

/// The content type of [`Metrics::encode`]'s text (OpenMetrics, which Prometheus scrapes
/// natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Defines a label enum: its variants, their label values and the list of all of them (so
/// that every series exists, at 0, from the start: Prometheus's `rate()` needs the zero).
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $value:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant, )+ }

        impl $name {
            /// Every variant, in declaration order (which is also their index).
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The label value in the exposition.
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $value, )+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// Why a connection was refused before or at CONNECT (`reason` label of
    /// `tern_connects_refused_total`).
    pub enum RefuseReason {
        /// `limits.max_connections` reached: closed right after accept.
        ConnectionLimit => "connection_limit",
        /// Too many connections from one IP address.
        PerIpLimit => "per_ip_limit",
        /// Unknown user or wrong password (CONNACK 0x86 / 3.1.1 0x04).
        BadCredentials => "bad_credentials",
        /// Authenticated but not allowed: anonymous refused, another user's client id, a
        /// forbidden will topic (CONNACK 0x87 / 3.1.1 0x05).
        NotAuthorized => "not_authorized",
        /// An unusable client identifier (CONNACK 0x85 / 3.1.1 0x02).
        ClientIdInvalid => "client_id_invalid",
        /// A malformed or unexpected first packet, an unsupported protocol version or
        /// authentication method.
        Protocol => "protocol",
        /// No CONNECT within `limits.connect_timeout_secs`.
        ConnectTimeout => "connect_timeout",
        /// The broker could not serve it (storage failure during login, stopping).
        Unavailable => "server_unavailable",
    }
}

label_enum! {
    /// Why a message was not delivered to one subscriber (`reason` label of
    /// `tern_messages_dropped_total`; one count per subscriber that missed it).
    pub enum DropReason {
        /// A queue bound was reached: an offline session's durable queue
        /// (`limits.max_queued_messages`) or a session's in-memory queue.
        QueueFull => "queue_full",
        /// The connection's mailbox was full (QoS 0, or a non-persistent session).
        OutboundFull => "outbound_full",
        /// A system broadcast met a full broadcast lane.
        BroadcastLaneFull => "broadcast_lane_full",
        /// The message expired (v5 Message Expiry Interval) before it could be sent.
        Expired => "expired",
        /// Larger than the Maximum Packet Size the client accepts.
        TooLarge => "too_large",
        /// Lost with a connection closed for not keeping up.
        SlowConsumer => "slow_consumer",
        /// A chat message resent with a `msgid` already seen: acknowledged, not stored again.
        Duplicate => "duplicate",
    }
}

label_enum! {
    /// Why a PUBLISH was refused as a whole (`reason` label of
    /// `tern_publishes_refused_total`); v5 publishers get the reason in PUBACK/PUBREC.
    pub enum PublishRefusal {
        /// The IM rules: publishing into an inbox, a broadcast without the operator role.
        NotAuthorized => "not_authorized",
        /// A group message from a non-member, or to a group that does not exist.
        NotMember => "not_member",
        /// `dm/` or `group/` with a missing or extra level.
        TopicInvalid => "topic_invalid",
        /// A client publishing (or leaving a will) on `$SYS`, which only the broker writes.
        SystemTopic => "system_topic",
    }
}

impl RefuseReason {
    /// The reason for a refusing CONNACK's code, so that every refusal site counts alike.
    pub fn from_connack(code: ReasonCode) -> RefuseReason {
        match code {
            ReasonCode::BadUserNameOrPassword => RefuseReason::BadCredentials,
            ReasonCode::NotAuthorized | ReasonCode::Banned => RefuseReason::NotAuthorized,
            ReasonCode::ClientIdentifierNotValid => RefuseReason::ClientIdInvalid,
            ReasonCode::QuotaExceeded => RefuseReason::PerIpLimit,
            ReasonCode::ServerBusy => RefuseReason::ConnectionLimit,
            ReasonCode::ServerUnavailable
            | ReasonCode::ServerShuttingDown
            | ReasonCode::ImplementationSpecificError
            | ReasonCode::UnspecifiedError => RefuseReason::Unavailable,
            // Unsupported version or authentication method, malformed or protocol errors.
            _ => RefuseReason::Protocol,
        }
    }
}

/// The label set of the `reason` and `listener` families.
type Label = [(&'static str, &'static str); 1];

/// Counters, gauges and histograms of one broker. See the [module docs](self).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    started: Instant,
    connections: Vec<Gauge>,
    accepted: Vec<Counter>,
    refused_connects: Vec<Counter>,
    messages_received: Counter,
    messages_sent: Counter,
    bytes_received: Counter,
    bytes_sent: Counter,
    dropped: Vec<Counter>,
    refused_publishes: Vec<Counter>,
    slow_consumers: Counter,
    heartbeats_in_place: Counter,
    accepts_paced: Vec<Counter>,
    inbound_paused: Vec<Counter>,
    publish_to_deliver: LatencyHistogram,
    storage_write: LatencyHistogram,
    storage_sync: LatencyHistogram,
    sessions: Gauge,
    clients_connected: Gauge,
    subscriptions: Gauge,
    retained: Gauge,
    queued: Gauge,
    parked: Gauge,
    uptime: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One counter (or gauge) per label value of `all`, registered as one family.
fn family<M, E>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &'static str,
    all: &[E],
    value: impl Fn(&E) -> &'static str,
) -> Vec<M>
where
    M: prometheus_client::registry::Metric + Default + Clone,
    Family<Label, M>: prometheus_client::registry::Metric,
{
    let family = Family::<Label, M>::default();
    registry.register(name, help, family.clone());
    all.iter()
        .map(|e| family.get_or_create_owned(&[(key, value(e))]))
        .collect()
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tern");
        let r = &mut registry;
        let connections = family(
            r,
            "connections",
            "Open client connections, per listener",
            "listener",
            &ListenerKind::ALL,
            |l| l.as_str(),
        );
        let accepted = family(
            r,
            "connections_accepted",
            "Client connections accepted, per listener",
            "listener",
            &ListenerKind::ALL,
            |l| l.as_str(),
        );
        let accepts_paced = family(
            r,
            "accepts_paced",
            "Times a listener paused accepting to keep to its max_connects_per_sec (a \
             reconnect storm waits in the kernel's accept queue meanwhile)",
            "listener",
            &ListenerKind::ALL,
            |l| l.as_str(),
        );
        let inbound_paused = family(
            r,
            "inbound_paused",
            "Times a connection was not read for a while because it exceeded its \
             listener's max_inbound_messages_per_sec or max_inbound_bytes_per_sec",
            "listener",
            &ListenerKind::ALL,
            |l| l.as_str(),
        );
        let refused_connects = family(
            r,
            "connects_refused",
            "Connections refused before or at CONNECT, by reason",
            "reason",
            RefuseReason::ALL,
            |r| r.as_str(),
        );
        let dropped = family(
            r,
            "messages_dropped",
            "Messages not delivered to a subscriber, by reason (one per subscriber)",
            "reason",
            DropReason::ALL,
            |r| r.as_str(),
        );
        let refused_publishes = family(
            r,
            "publishes_refused",
            "PUBLISH packets refused, by reason",
            "reason",
            PublishRefusal::ALL,
            |r| r.as_str(),
        );
        let counter = |r: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
            let c = Counter::default();
            match unit {
                Some(unit) => r.register_with_unit(name, help, unit, c.clone()),
                None => r.register(name, help, c.clone()),
            }
            c
        };
        let messages_received = counter(
            r,
            "messages_received",
            "Application messages (PUBLISH packets) received from clients",
            None,
        );
        let messages_sent = counter(
            r,
            "messages_sent",
            "Application messages (PUBLISH packets) sent to clients",
            None,
        );
        let heartbeats_in_place = counter(
            r,
            "parked_heartbeats",
            "PINGREQs of parked connections answered by the parking lot, the connection staying parked",
            None,
        );
        let bytes_received = counter(
            r,
            "received",
            "Bytes read from client sockets, every packet included",
            Some(Unit::Bytes),
        );
        let bytes_sent = counter(
            r,
            "sent",
            "Bytes written to client sockets, every packet included",
            Some(Unit::Bytes),
        );
        let slow_consumers = counter(
            r,
            "slow_consumers_disconnected",
            "Connections closed because they did not take their messages fast enough",
            None,
        );
        let histogram = |r: &mut Registry, name: &str, help: &str, bounds: &[u64]| {
            let h = LatencyHistogram::new(bounds);
            r.register_with_unit(name, help, Unit::Seconds, h.clone());
            h
        };
        let publish_to_deliver = histogram(
            r,
            "publish_to_deliver",
            "From reading a PUBLISH to writing it to a subscriber's socket",
            histogram::DELIVERY_BOUNDS_US,
        );
        let storage_write = histogram(
            r,
            "storage_write",
            "Storage batch writes (with their fsync when storage.sync = \"always\")",
            histogram::STORAGE_BOUNDS_US,
        );
        let storage_sync = histogram(
            r,
            "storage_sync",
            "Storage WAL syncs done apart from a write (storage.sync = \"batched\")",
            histogram::STORAGE_BOUNDS_US,
        );
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let sessions = gauge(r, "sessions", "Sessions the broker holds, connected or not");
        let clients_connected = gauge(r, "clients_connected", "Sessions with a connected client");
        let subscriptions = gauge(r, "subscriptions", "Subscriptions of every session");
        let retained = gauge(r, "retained_messages", "Retained messages");
        let queued = gauge(
            r,
            "queued_messages",
            "QoS 1/2 messages queued for sessions while they were offline",
        );
        let parked = gauge(
            r,
            "parked_connections",
            "Idle connections waiting in the parking lot, without a task of their own",
        );
        let uptime = Gauge::default();
        r.register_with_unit(
            "uptime",
            "Time since the broker started",
            Unit::Seconds,
            uptime.clone(),
        );
        r.register(
            "build",
            "The broker's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry,
            started: Instant::now(),
            connections,
            accepted,
            refused_connects,
            messages_received,
            messages_sent,
            bytes_received,
            bytes_sent,
            dropped,
            refused_publishes,
            slow_consumers,
            heartbeats_in_place,
            accepts_paced,
            inbound_paused,
            publish_to_deliver,
            storage_write,
            storage_sync,
            sessions,
            clients_connected,
            subscriptions,
            retained,
            queued,
            parked,
            uptime,
        }
    }

    /// The whole exposition, in OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.uptime
            .set(i64::try_from(self.uptime().as_secs()).unwrap_or(i64::MAX));
        let mut text = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A connection was accepted on a `listener` (the listener counts it as open in
    /// [`Metrics::open_connections`] for its whole life, refused CONNECT included).
    pub fn connection_accepted(&self, listener: ListenerKind) {
        // `ListenerKind::ALL` is in declaration order (tested), so this is its index.
        self.accepted[listener as usize].inc();
    }

    /// The gauge of connections open on a `listener` (`tern_connections`).
    pub fn open_connections(&self, listener: ListenerKind) -> Gauge {
        self.connections[listener as usize].clone()
    }

    /// A connection refused before it got a session (a refusing CONNACK, or closed
    /// without one).
    pub fn connect_refused(&self, reason: RefuseReason) {
        self.refused_connects[reason as usize].inc();
    }

    /// `messages` PUBLISH packets and `bytes` bytes (every packet) came in from a client.
    pub fn add_received(&self, messages: u64, bytes: u64) {
        add(&self.messages_received, messages);
        add(&self.bytes_received, bytes);
    }

    /// `count` PINGREQs of a parked connection answered by the parking lot.
    pub fn heartbeats_in_place(&self, count: u64) {
        add(&self.heartbeats_in_place, count);
    }

    /// `messages` PUBLISH packets and `bytes` bytes (every packet) went out to a client.
    pub fn add_sent(&self, messages: u64, bytes: u64) {
        add(&self.messages_sent, messages);
        add(&self.bytes_sent, bytes);
    }

    /// One message not delivered to one subscriber.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }

    /// `count` messages not delivered, for one reason (a batch counted by a connection).
    pub fn dropped_many(&self, reason: DropReason, count: u64) {
        add(&self.dropped[reason as usize], count);
    }

    pub fn publish_refused(&self, reason: PublishRefusal) {
        self.refused_publishes[reason as usize].inc();
    }

    /// Messages dropped so far for `reason`.
    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].get()
    }

    /// Publishes refused so far for `reason`.
    pub fn publishes_refused_total(&self, reason: PublishRefusal) -> u64 {
        self.refused_publishes[reason as usize].get()
    }

    pub fn slow_consumer_disconnected(&self) {
        self.slow_consumers.inc();
    }

    /// A listener paused accepting for its connect rate.
    pub fn accept_paced(&self, listener: ListenerKind) {
        self.accepts_paced[listener as usize].inc();
    }

    /// A connection paused reading for its inbound rate.
    pub fn inbound_paused(&self, listener: ListenerKind) {
        self.inbound_paused[listener as usize].inc();
    }

    /// Counts one publish-to-deliver latency (a message handed to a subscriber's connection
    /// `elapsed` after its PUBLISH was read) in `tally`, to add with
    /// [`Metrics::add_publish_to_deliver`] (a connection's batch of deliveries at once).
    pub fn tally_publish_to_deliver(&self, tally: &mut LatencyTally, elapsed: Duration) {
        tally.observe(&self.publish_to_deliver, elapsed);
    }

    /// Adds the publish-to-deliver latencies gathered in `tally`.
    pub fn add_publish_to_deliver(&self, tally: LatencyTally) {
        self.publish_to_deliver.add(tally);
    }

    /// The gauge the parking lot keeps (`crate::parking`).
    pub fn parked_gauge(&self) -> Gauge {
        self.parked.clone()
    }

    /// Sets the gauges of what the router holds.
    pub fn record_router(&self, stats: &RouterStats) {
        let set = |gauge: &Gauge, value: u64| gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        set(&self.sessions, stats.sessions as u64);
        set(&self.clients_connected, stats.connected as u64);
        set(&self.subscriptions, stats.subscriptions as u64);
        set(&self.retained, stats.retained as u64);
        set(&self.queued, stats.queued);
    }

    /// The totals `$SYS` publishes.
    pub fn totals(&self) -> Totals {
        Totals {
            messages_received: self.messages_received.get(),
            messages_sent: self.messages_sent.get(),
            bytes_received: self.bytes_received.get(),
            bytes_sent: self.bytes_sent.get(),
            dropped: self.dropped.iter().map(Counter::get).sum(),
        }
    }
}

/// Counter totals since start (see [`Metrics::totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Every reason of `tern_messages_dropped_total` together.
    pub dropped: u64,
}

/// Skips the atomic for a zero: batched counts are mostly zero for one direction.
fn add(counter: &Counter, n: u64) {
    if n > 0 {
        counter.inc_by(n);
    }
}

/// Storage latency comes from the writer thread through its observer hook.
impl tern_storage::WriterObserver for Metrics {
    fn write(&self, elapsed: Duration, _ops: usize, _synced: bool) {
        self.storage_write.observe(elapsed);
    }

    fn sync(&self, elapsed: Duration) {
        self.storage_sync.observe(elapsed);
    }
}

/// A connection's traffic counts, kept locally and added to [`Metrics`] in one go
/// ([`Traffic::flush`], e.g. once per loop iteration), so that the shared counters are
/// touched once per batch rather than once per packet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub messages_received: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub bytes_sent: u64,
}

impl Traffic {
    /// Bytes read from the socket.
    pub fn read(&mut self, bytes: usize) {
        self.bytes_received += bytes as u64;
    }

    /// A PUBLISH decoded.
    pub fn publish_received(&mut self) {
        self.messages_received += 1;
    }

    /// Bytes written to the socket, `messages` of the packets in them PUBLISH.
    pub fn written(&mut self, messages: u64, bytes: usize) {
        self.messages_sent += messages;
        self.bytes_sent += bytes as u64;
    }

    /// Adds the counts to `metrics` and starts again from zero.
    pub fn flush(&mut self, metrics: &Metrics) {
        if *self != Traffic::default() {
            metrics.add_received(self.messages_received, self.bytes_received);
            metrics.add_sent(self.messages_sent, self.bytes_sent);
            *self = Traffic::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one sample line (`name{labels} value`) of the exposition.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn every_series_is_exposed_from_the_start() {
        let metrics = Metrics::new();
        let text = metrics.encode().expect("encodes");
        for series in [
            "tern_connections{listener=\"tcp\"}",
            "tern_connections{listener=\"wss\"}",
            "tern_connections_accepted_total{listener=\"ws\"}",
            "tern_connects_refused_total{reason=\"bad_credentials\"}",
            "tern_connects_refused_total{reason=\"connect_timeout\"}",
            "tern_messages_received_total",
            "tern_messages_sent_total",
            "tern_received_bytes_total",
            "tern_sent_bytes_total",
            "tern_messages_dropped_total{reason=\"queue_full\"}",
            "tern_messages_dropped_total{reason=\"broadcast_lane_full\"}",
            "tern_publishes_refused_total{reason=\"system_topic\"}",
            "tern_slow_consumers_disconnected_total",
            "tern_publish_to_deliver_seconds_count",
            "tern_publish_to_deliver_seconds_bucket{le=\"0.00005\"}",
            "tern_publish_to_deliver_seconds_bucket{le=\"+Inf\"}",
            "tern_storage_write_seconds_count",
            "tern_storage_sync_seconds_count",
            "tern_sessions",
            "tern_clients_connected",
            "tern_subscriptions",
            "tern_retained_messages",
            "tern_queued_messages",
            "tern_uptime_seconds",
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
        }
        let version = format!(
            "tern_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &version), Some(1.0), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn counters_gauges_and_histograms_move() {
        let metrics = Metrics::new();
        let open = metrics.open_connections(ListenerKind::Tls);
        for _ in 0..2 {
            metrics.connection_accepted(ListenerKind::Tls);
            open.inc();
        }
        metrics.connect_refused(RefuseReason::NotAuthorized);
        metrics.add_received(2, 100);
        let mut traffic = Traffic::default();
        traffic.read(10);
        traffic.publish_received();
        traffic.written(3, 300);
        traffic.flush(&metrics);
        assert_eq!(traffic, Traffic::default(), "flush starts again from zero");
        traffic.flush(&metrics);
        metrics.dropped(DropReason::OutboundFull);
        metrics.dropped_many(DropReason::Expired, 4);
        metrics.publish_refused(PublishRefusal::NotMember);
        metrics.slow_consumer_disconnected();
        let mut latencies = LatencyTally::default();
        metrics.tally_publish_to_deliver(&mut latencies, Duration::from_micros(70));
        metrics.add_publish_to_deliver(latencies);
        tern_storage::WriterObserver::write(&metrics, Duration::from_millis(2), 5, true);
        tern_storage::WriterObserver::sync(&metrics, Duration::from_millis(3));
        metrics.record_router(&RouterStats {
            sessions: 7,
            connected: 2,
            subscriptions: 9,
            retained: 4,
            queued: 11,
        });
        open.dec();

        let text = metrics.encode().expect("encodes");
        for (series, value) in [
            ("tern_connections{listener=\"tls\"}", 1.0),
            ("tern_connections_accepted_total{listener=\"tls\"}", 2.0),
            ("tern_connections_accepted_total{listener=\"tcp\"}", 0.0),
            (
                "tern_connects_refused_total{reason=\"not_authorized\"}",
                1.0,
            ),
            ("tern_messages_received_total", 3.0),
            ("tern_received_bytes_total", 110.0),
            ("tern_messages_sent_total", 3.0),
            ("tern_sent_bytes_total", 300.0),
            ("tern_messages_dropped_total{reason=\"outbound_full\"}", 1.0),
            ("tern_messages_dropped_total{reason=\"expired\"}", 4.0),
            ("tern_publishes_refused_total{reason=\"not_member\"}", 1.0),
            ("tern_slow_consumers_disconnected_total", 1.0),
            ("tern_publish_to_deliver_seconds_count", 1.0),
            (
                "tern_publish_to_deliver_seconds_bucket{le=\"0.00005\"}",
                0.0,
            ),
            ("tern_publish_to_deliver_seconds_bucket{le=\"0.0001\"}", 1.0),
            ("tern_publish_to_deliver_seconds_bucket{le=\"+Inf\"}", 1.0),
            ("tern_storage_write_seconds_count", 1.0),
            ("tern_storage_write_seconds_sum", 0.002),
            ("tern_storage_sync_seconds_count", 1.0),
            ("tern_sessions", 7.0),
            ("tern_clients_connected", 2.0),
            ("tern_subscriptions", 9.0),
            ("tern_retained_messages", 4.0),
            ("tern_queued_messages", 11.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        let totals = metrics.totals();
        assert_eq!(
            totals,
            Totals {
                messages_received: 3,
                messages_sent: 3,
                bytes_received: 110,
                bytes_sent: 300,
                dropped: 5,
            }
        );
    }

    #[test]
    fn label_values_are_distinct_and_in_index_order() {
        fn check<E: Copy + std::fmt::Debug>(all: &[E], index: impl Fn(E) -> usize) {
            for (i, e) in all.iter().enumerate() {
                assert_eq!(index(*e), i, "{e:?}");
            }
        }
        check(&ListenerKind::ALL, |e| e as usize);
        check(RefuseReason::ALL, |e| e as usize);
        check(DropReason::ALL, |e| e as usize);
        check(PublishRefusal::ALL, |e| e as usize);
        let mut values: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), DropReason::ALL.len());
    }
}
