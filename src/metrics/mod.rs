//! The broker's metrics: one [`Metrics`] shared as `Arc<Metrics>` by the listeners, the
//! connections, the router and the storage writer, exposed two ways:
//!
//! - Prometheus/OpenMetrics text on the admin listener's `GET /metrics` ([`Metrics::encode`]);
//! - `$SYS/broker/...` topics ([`sys`]), published by the router every few seconds.
//!
//! Every series is named `tern_...`, one file per family: [`connections`], [`traffic`],
//! [`delivery`], [`storage`], `webhook`, `cluster` and [`router`] (what the router reports it holds), with the
//! label values in [`labels`]. Updating is cheap: a counter or gauge is one relaxed atomic
//! add (the label sets are fixed enums, resolved to their counter once at start, so no map
//! lookup happens on the way), and the latency histograms are atomics too (see
//! [`histogram`]).

mod cluster;
mod connections;
mod delivery;
pub(crate) mod histogram;
mod labels;
mod router;
mod storage;
pub(crate) mod sys;
mod traffic;
mod webhook;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub(crate) use histogram::LatencyTally;
pub(crate) use labels::{DropReason, PublishRefusal, RefuseReason};
pub(crate) use router::RouterStats;
pub(crate) use traffic::Traffic;

/// The content type of [`Metrics::encode`]'s text (OpenMetrics, which Prometheus scrapes
/// natively).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counters, gauges and histograms of one broker. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    started: Instant,
    connections: connections::Connections,
    traffic: traffic::TrafficCounters,
    delivery: delivery::DeliveryCounters,
    storage: storage::StorageTimes,
    router: router::RouterGauges,
    webhook: webhook::WebhookCounters,
    cluster: cluster::ClusterCounters,
    uptime: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics::for_node(None)
    }

    /// The metrics of one broker; a cluster node's carry the label `node="<node_id>"`, so
    /// that the nodes' metrics stay apart once collected together.
    pub(crate) fn for_node(node: Option<&str>) -> Metrics {
        let labels = node.map(|node| {
            (
                std::borrow::Cow::Borrowed("node"),
                std::borrow::Cow::Owned(node.to_string()),
            )
        });
        let mut registry = Registry::with_prefix_and_labels("tern", labels.into_iter());
        let r = &mut registry;
        let connections = connections::Connections::register(r);
        let traffic = traffic::TrafficCounters::register(r);
        let delivery = delivery::DeliveryCounters::register(r);
        let storage = storage::StorageTimes::register(r);
        let router = router::RouterGauges::register(r);
        let webhook = webhook::WebhookCounters::register(r);
        let cluster = cluster::ClusterCounters::register(r);
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
            traffic,
            delivery,
            storage,
            router,
            webhook,
            cluster,
            uptime,
        }
    }

    /// The whole exposition, in OpenMetrics text ([`CONTENT_TYPE`]).
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        self.uptime
            .set(i64::try_from(self.uptime().as_secs()).unwrap_or(i64::MAX));
        let mut text = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The totals `$SYS` publishes.
    pub(crate) fn totals(&self) -> Totals {
        let t = &self.traffic;
        Totals {
            messages_received: t.messages_received.get(),
            messages_sent: t.messages_sent.get(),
            bytes_received: t.bytes_received.get(),
            bytes_sent: t.bytes_sent.get(),
            dropped: self.delivery.dropped.iter().map(Counter::get).sum(),
        }
    }
}

/// Counter totals since start (see [`Metrics::totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Totals {
    pub(crate) messages_received: u64,
    pub(crate) messages_sent: u64,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    /// Every reason of `tern_messages_dropped_total` together.
    pub(crate) dropped: u64,
}

/// A counter registered under `name`.
fn counter(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Counter {
    let c = Counter::default();
    match unit {
        Some(unit) => r.register_with_unit(name, help, unit, c.clone()),
        None => r.register(name, help, c.clone()),
    }
    c
}

/// Skips the atomic for a zero: batched counts are mostly zero for one direction.
fn add(counter: &Counter, n: u64) {
    if n > 0 {
        counter.inc_by(n);
    }
}
