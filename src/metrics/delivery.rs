//! DeliveryCounters: messages not delivered (by reason, one per subscriber that missed them),
//! PUBLISH packets refused, slow consumers disconnected, and the publish-to-deliver
//! latency.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Registry, Unit};

use super::histogram::{self, LatencyHistogram, LatencyTally};
use super::labels::{family, DropReason, PublishRefusal};
use super::{add, counter, Metrics};

#[derive(Debug)]
pub(super) struct DeliveryCounters {
    pub(super) dropped: Vec<Counter>,
    refused_publishes: Vec<Counter>,
    slow_consumers: Counter,
    publish_to_deliver: LatencyHistogram,
}

impl DeliveryCounters {
    pub(super) fn register(r: &mut Registry) -> DeliveryCounters {
        let publish_to_deliver = LatencyHistogram::new(histogram::DELIVERY_BOUNDS_US);
        r.register_with_unit(
            "publish_to_deliver",
            "From reading a PUBLISH to writing it to a subscriber's socket",
            Unit::Seconds,
            publish_to_deliver.clone(),
        );
        DeliveryCounters {
            dropped: family(
                r,
                "messages_dropped",
                "Messages not delivered to a subscriber, by reason (one per subscriber)",
                "reason",
                DropReason::ALL,
                |r| r.as_str(),
            ),
            refused_publishes: family(
                r,
                "publishes_refused",
                "PUBLISH packets refused, by reason",
                "reason",
                PublishRefusal::ALL,
                |r| r.as_str(),
            ),
            slow_consumers: counter(
                r,
                "slow_consumers_disconnected",
                "Connections closed because they did not take their messages fast enough",
                None,
            ),
            publish_to_deliver,
        }
    }
}

impl Metrics {
    /// One message not delivered to one subscriber.
    pub(crate) fn dropped(&self, reason: DropReason) {
        self.delivery.dropped[reason as usize].inc();
    }

    /// `count` messages not delivered, for one reason (a batch counted by a connection).
    pub(crate) fn dropped_many(&self, reason: DropReason, count: u64) {
        add(&self.delivery.dropped[reason as usize], count);
    }

    pub(crate) fn publish_refused(&self, reason: PublishRefusal) {
        self.delivery.refused_publishes[reason as usize].inc();
    }

    /// Messages dropped so far for `reason`.
    #[cfg(test)]
    pub(crate) fn dropped_total(&self, reason: DropReason) -> u64 {
        self.delivery.dropped[reason as usize].get()
    }

    /// Publishes refused so far for `reason`.
    #[cfg(test)]
    pub(crate) fn publishes_refused_total(&self, reason: PublishRefusal) -> u64 {
        self.delivery.refused_publishes[reason as usize].get()
    }

    pub(crate) fn slow_consumer_disconnected(&self) {
        self.delivery.slow_consumers.inc();
    }

    /// Counts one publish-to-deliver latency (a message handed to a subscriber's connection
    /// `elapsed` after its PUBLISH was read) in `tally`, to add with
    /// [`Metrics::add_publish_to_deliver`] (a connection's batch of deliveries at once).
    pub(crate) fn tally_publish_to_deliver(&self, tally: &mut LatencyTally, elapsed: Duration) {
        tally.observe(&self.delivery.publish_to_deliver, elapsed);
    }

    /// Adds the publish-to-deliver latencies gathered in `tally`.
    pub(crate) fn add_publish_to_deliver(&self, tally: LatencyTally) {
        self.delivery.publish_to_deliver.add(tally);
    }
}
