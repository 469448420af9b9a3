//! The `[webhook]` table: where tern posts offline-push events, so the app can wake a phone
//! through APNs/FCM when a chat message reaches a user with no device connected.

use serde::{Deserialize, Serialize};

use super::validate::{check_range, invalid, to_u64};
use super::ConfigError;

/// The `[webhook]` table. Off while `url` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// `http://host:port/path` the events are posted to (JSON). Empty (default): off.
    pub url: String,
    /// Bytes of the message's payload sent as `preview` (UTF-8, cut at a character
    /// boundary). Default 0: no preview, the payload stays in tern.
    pub preview_bytes: usize,
    /// Also post `connected` / `disconnected` events of users' devices. Default false.
    pub connection_events: bool,
    /// Events waiting to be posted at most; beyond, new ones are dropped and counted
    /// (`tern_webhook_events_dropped_total`). Default 10_000; 1..=1_000_000.
    pub queue_capacity: usize,
    /// Events per post at most. Default 100; 1..=10_000.
    pub batch_max: usize,
    /// How long one post may take. Default 5_000 ms; 100..=60_000.
    pub timeout_ms: u64,
    /// Longest wait between two attempts of a failed post (the wait doubles from 100 ms).
    /// Default 30_000 ms; 100..=600_000.
    pub retry_max_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            preview_bytes: 0,
            connection_events: false,
            queue_capacity: 10_000,
            batch_max: 100,
            timeout_ms: 5_000,
            retry_max_ms: 30_000,
        }
    }
}

impl WebhookConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub(super) fn validate(&self, clustered: bool) -> Result<(), ConfigError> {
        check_range(
            "webhook.queue_capacity",
            to_u64(self.queue_capacity),
            1,
            1_000_000,
        )?;
        check_range("webhook.batch_max", to_u64(self.batch_max), 1, 10_000)?;
        check_range("webhook.timeout_ms", self.timeout_ms, 100, 60_000)?;
        check_range("webhook.retry_max_ms", self.retry_max_ms, 100, 600_000)?;
        check_range(
            "webhook.preview_bytes",
            to_u64(self.preview_bytes),
            0,
            65_536,
        )?;
        if self.enabled() {
            if !self.url.starts_with("http://") {
                return Err(invalid(
                    "webhook.url",
                    format!(
                        "{:?}: only http:// URLs (put a TLS proxy in front of an https endpoint)",
                        self.url
                    ),
                ));
            }
            if clustered {
                return Err(invalid(
                    "webhook.url",
                    "the offline-push webhook does not run on cluster nodes yet (a node cannot \
                     tell whether a user has a device on another node)"
                        .to_string(),
                ));
            }
        }
        Ok(())
    }
}
