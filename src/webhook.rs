//! The offline-push webhook (`[webhook]`): when a chat message lands in the inbox of a user
//! with no device connected, the app is told, so that it can wake the phone through
//! APNs/FCM; optionally also when a user's devices connect and disconnect.
//!
//! The router only queues an event ([`Webhook::offline_message`]: a `try_send` on a bounded
//! channel, `webhook.queue_capacity`); a thread of its own posts them as JSON,
//! `{"events": [...]}`, up to `webhook.batch_max` per POST, and retries a failed POST with
//! doubling waits (100 ms up to `webhook.retry_max_ms`) until it is accepted (any 2xx).
//! Events that find the queue full are dropped, counted and logged, so a webhook that is
//! down or slow costs the routing path nothing and memory stays bounded. Events are posted
//! in the order they were queued.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::WebhookConfig;
use crate::im::inbox::user_property;
use crate::metrics::Metrics;
use crate::protocol::Message;

/// One event, as posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    OfflineMessage {
        user: String,
        seq: u64,
        from: String,
        /// The topic the user's devices get it on (`inbox/{user}/dm/{from}`, ...).
        topic: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        preview: Option<String>,
        /// When the broker accepted it, unix ms.
        at_ms: u64,
    },
    Connected {
        user: String,
        client_id: String,
        at_ms: u64,
    },
    Disconnected {
        user: String,
        client_id: String,
        at_ms: u64,
    },
}

#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [Event],
}

/// Where the router and the connections queue events; cheap to clone.
#[derive(Clone)]
pub(crate) struct Webhook {
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    preview_bytes: usize,
    connection_events: bool,
}

impl Webhook {
    /// Starts the posting thread; `None` when the webhook is off.
    pub(crate) fn start(
        config: &WebhookConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Option<Webhook>> {
        if !config.enabled() {
            return Ok(None);
        }
        let (events, queue) = mpsc::channel(config.queue_capacity);
        let poster = Poster {
            url: config.url.clone(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(true)
                .proxy(None)
                .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
                .build()
                .into(),
            batch_max: config.batch_max,
            retry_max: Duration::from_millis(config.retry_max_ms),
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("tern-webhook".into())
            .spawn(move || poster.run(queue))?;
        Ok(Some(Webhook {
            events,
            metrics,
            preview_bytes: config.preview_bytes,
            connection_events: config.connection_events,
        }))
    }

    /// A chat message numbered `seq` in the inbox of `user`, who has no device connected;
    /// `copy` is the user's copy (its topic, the `from` stamp).
    pub(crate) fn offline_message(&self, user: &str, seq: u64, copy: &Message, at_ms: u64) {
        let preview = (self.preview_bytes > 0).then(|| preview(&copy.payload, self.preview_bytes));
        self.queue(Event::OfflineMessage {
            user: user.to_string(),
            seq,
            from: user_property(copy, crate::im::inbox::FROM)
                .unwrap_or_default()
                .to_string(),
            topic: copy.topic.to_string(),
            preview,
            at_ms,
        });
    }

    /// A device of `user` connected (`true`) or went away.
    pub(crate) fn connection(&self, connected: bool, user: &str, client_id: &str) {
        if !self.connection_events {
            return;
        }
        let (user, client_id, at_ms) = (
            user.to_string(),
            client_id.to_string(),
            crate::protocol::now_ms(),
        );
        self.queue(if connected {
            Event::Connected {
                user,
                client_id,
                at_ms,
            }
        } else {
            Event::Disconnected {
                user,
                client_id,
                at_ms,
            }
        });
    }

    fn queue(&self, event: Event) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(event) {
            let dropped = self.metrics.webhook_dropped(1);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "webhook queue full (webhook.queue_capacity): events dropped"
                );
            }
        }
    }
}

/// The longest UTF-8 prefix of `payload` within `max` bytes (lossy for other bytes).
fn preview(payload: &[u8], max: usize) -> String {
    let cut = &payload[..payload.len().min(max)];
    let kept = match std::str::from_utf8(cut) {
        // A multi-byte character cut at the end is left out rather than replaced.
        Err(e) if e.error_len().is_none() => &cut[..e.valid_up_to()],
        _ => cut,
    };
    String::from_utf8_lossy(kept).into_owned()
}

struct Poster {
    url: String,
    agent: ureq::Agent,
    batch_max: usize,
    retry_max: Duration,
    metrics: Arc<Metrics>,
}

impl Poster {
    fn run(self, mut queue: mpsc::Receiver<Event>) {
        let mut batch = Vec::with_capacity(self.batch_max);
        while let Some(first) = queue.blocking_recv() {
            batch.push(first);
            while batch.len() < self.batch_max {
                match queue.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            if !self.post_until_accepted(&batch, &queue) {
                let lost = u64::try_from(batch.len()).unwrap_or(u64::MAX);
                self.metrics.webhook_dropped(lost);
                tracing::warn!(events = lost, "broker stopping: webhook events not posted");
            }
            batch.clear();
        }
    }

    /// Posts `batch` until the webhook accepts it; `false` if the broker stopped first
    /// (the queue's senders are gone and the post still fails).
    fn post_until_accepted(&self, batch: &[Event], queue: &mpsc::Receiver<Event>) -> bool {
        let body = match serde_json::to_string(&Batch { events: batch }) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!("webhook events do not encode: {e}");
                return false;
            }
        };
        let mut wait = Duration::from_millis(100);
        loop {
            let sent = self
                .agent
                .post(&self.url)
                .header("content-type", "application/json")
                .send(body.as_str());
            match sent {
                Ok(_) => {
                    self.metrics
                        .webhook_sent(u64::try_from(batch.len()).unwrap_or(u64::MAX));
                    return true;
                }
                Err(e) => {
                    self.metrics.webhook_post_failed();
                    if queue.is_closed() {
                        return false;
                    }
                    tracing::warn!(url = %self.url, retry_in_ms = wait.as_millis(), "webhook post failed: {e}");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(self.retry_max);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::preview;

    #[test]
    fn previews_cut_at_a_character_boundary() {
        assert_eq!(preview(b"hello", 3), "hel");
        assert_eq!(preview("héllo".as_bytes(), 2), "h");
        assert_eq!(preview("héllo".as_bytes(), 3), "hé");
        assert_eq!(preview(b"hi", 10), "hi");
    }
}
