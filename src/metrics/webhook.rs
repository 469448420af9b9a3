//! The offline-push webhook's counters: events posted, events dropped because its queue
//! was full (or given up at shutdown), and failed posts (each retried).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::{add, counter, Metrics};

#[derive(Debug)]
pub(super) struct WebhookCounters {
    sent: Counter,
    dropped: Counter,
    failed_posts: Counter,
}

impl WebhookCounters {
    pub(super) fn register(r: &mut Registry) -> WebhookCounters {
        WebhookCounters {
            sent: counter(
                r,
                "webhook_events_sent",
                "Events the offline-push webhook accepted",
                None,
            ),
            dropped: counter(
                r,
                "webhook_events_dropped",
                "Events not posted: the webhook's queue was full (webhook.queue_capacity), or the broker stopped",
                None,
            ),
            failed_posts: counter(
                r,
                "webhook_posts_failed",
                "Posts to the webhook that failed (each is retried with backoff)",
                None,
            ),
        }
    }
}

impl Metrics {
    pub(crate) fn webhook_sent(&self, events: u64) {
        add(&self.webhook.sent, events);
    }

    /// Events dropped so far; returns the new total.
    pub(crate) fn webhook_dropped(&self, events: u64) -> u64 {
        add(&self.webhook.dropped, events);
        self.webhook.dropped.get()
    }

    pub(crate) fn webhook_post_failed(&self) {
        self.webhook.failed_posts.inc();
    }
}
