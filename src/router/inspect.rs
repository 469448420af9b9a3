//! What operators and the metrics see of the router: sessions as summaries, and its sizes
//! counted without touching storage.

use super::core::Router;
use super::sessions::SessionEntry;
use crate::metrics::RouterStats;

/// One session as operators see it (`tern sessions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub client_id: String,
    pub user: String,
    pub connected: bool,
    pub persistent: bool,
    pub protocol_level: u8,
    pub expiry_secs: u32,
    /// (filter, granted QoS).
    pub subscriptions: Vec<(String, u8)>,
    /// Outbound QoS > 0 messages sent and not yet acknowledged.
    pub in_flight: usize,
}

impl SessionSummary {
    fn of(entry: &SessionEntry) -> SessionSummary {
        SessionSummary {
            client_id: entry.client_id.to_string(),
            user: entry.user.to_string(),
            connected: entry.connected.is_some(),
            persistent: entry.persistent,
            protocol_level: entry.protocol.level(),
            expiry_secs: entry.expiry_secs,
            subscriptions: entry
                .subscriptions
                .iter()
                .map(|(filter, s)| (filter.clone(), s.options.qos.as_u8()))
                .collect(),
            in_flight: match &entry.connected {
                Some(connected) => connected.postbox.in_flight(),
                None => entry
                    .offline
                    .as_ref()
                    .map_or(0, |offline| offline.sent.len()),
            },
        }
    }
}

impl Router {
    /// Every session (or the one with this client id), sorted by client id.
    pub(crate) fn sessions(&self, client_id: Option<&str>) -> Vec<SessionSummary> {
        let mut all: Vec<SessionSummary> = match client_id {
            Some(client_id) => self
                .by_client
                .get(client_id, &self.sessions)
                .and_then(|id| self.sessions.get(&id))
                .map(|entry| SessionSummary::of(entry))
                .into_iter()
                .collect(),
            None => self
                .sessions
                .values()
                .map(|entry| SessionSummary::of(entry))
                .collect(),
        };
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    pub(crate) fn stats(&self) -> RouterStats {
        // The running counts must match a full walk; checked where it is affordable.
        debug_assert_eq!(
            self.online,
            self.sessions
                .values()
                .filter(|s| s.connected.is_some())
                .count(),
            "online sessions"
        );
        debug_assert_eq!(
            self.offline_queued,
            self.sessions
                .values()
                .map(|s| u64::from(s.offline_queued()))
                .sum::<u64>(),
            "offline queued messages"
        );
        RouterStats {
            sessions: self.sessions.len(),
            connected: self.online,
            subscriptions: self.subscriptions.len(),
            retained: self.retained.len(),
            queued: self.offline_queued,
        }
    }
}
