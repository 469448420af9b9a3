//! Presence: a user is online from the moment its first device connects, and offline once
//! its last device has been gone for `im.presence_offline_delay_ms`. The delay is the
//! debounce: a phone that drops and reconnects within it (a lift, a tunnel) never looks
//! offline to its contacts, and they get no message at all.
//!
//! [`Presence`] decides, with no I/O and no clock of its own: the router tells it when a
//! user's first device came or last device left, and when a deadline it asked for is due;
//! it answers what to publish. The broker publishes the state as a retained message on
//! `presence/{user}` (see [`payload`]), which is also where a subscriber reads it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::topics::{valid_id, PRESENCE};
use crate::config::PresenceVisibility;

/// The users whose last device left and who are not offline yet.
#[derive(Debug)]
pub struct Presence {
    delay: Duration,
    /// User -> (ticket, deadline) of its pending change to offline.
    pending: HashMap<String, (u64, Instant)>,
    /// Ticket -> user, for the deadline's timer.
    tickets: HashMap<u64, String>,
    next_ticket: u64,
}

/// What a user's first device connecting changes.
#[derive(Debug, PartialEq, Eq)]
pub enum Came {
    /// The user was offline: publish online.
    Online,
    /// The user was still counted online (its last device left within the delay): nothing
    /// to publish; the pending change to offline with this (ticket, deadline) is cancelled.
    Stayed(u64, Instant),
}

/// What a user's last device leaving changes.
#[derive(Debug, PartialEq, Eq)]
pub enum Left {
    /// Publish offline now (no delay configured).
    Offline,
    /// Ask for a timer: (ticket, deadline).
    Later(u64, Instant),
}

impl Presence {
    pub fn new(delay: Duration) -> Presence {
        Presence {
            delay,
            pending: HashMap::new(),
            tickets: HashMap::new(),
            next_ticket: 1,
        }
    }

    /// `user`'s first device connected.
    pub fn came(&mut self, user: &str) -> Came {
        match self.pending.remove(user) {
            Some((ticket, at)) => {
                self.tickets.remove(&ticket);
                Came::Stayed(ticket, at)
            }
            None => Came::Online,
        }
    }

    /// `user`'s last device left at `now`.
    pub fn left(&mut self, user: &str, now: Instant) -> Left {
        if self.delay.is_zero() {
            return Left::Offline;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let at = now + self.delay;
        if let Some((old, _)) = self.pending.insert(user.to_string(), (ticket, at)) {
            self.tickets.remove(&old);
        }
        self.tickets.insert(ticket, user.to_string());
        Left::Later(ticket, at)
    }

    /// The timer of `ticket` is due: the user to publish offline for, unless a device came
    /// back since.
    pub fn due(&mut self, ticket: u64) -> Option<String> {
        let user = self.tickets.remove(&ticket)?;
        self.pending.remove(&user);
        Some(user)
    }

    /// Users waiting to go offline (for the metrics and tests).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The retained presence message's payload: `{"online":true,"since":ms}` or
/// `{"online":false,"last_seen":ms}`.
pub fn payload(online: bool, at_ms: u64) -> String {
    if online {
        format!("{{\"online\":true,\"since\":{at_ms}}}")
    } else {
        format!("{{\"online\":false,\"last_seen\":{at_ms}}}")
    }
}

/// Whether a stored presence payload says online (a broker that stopped without
/// publishing offline left it so).
pub fn says_online(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("online").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

/// What a subscription filter asks of presence.
#[derive(Debug, PartialEq, Eq)]
pub enum PresenceFilter<'f> {
    /// Not under `presence/` (a filter starting with a wildcard never matches presence).
    None,
    /// `presence/{user}`.
    User(&'f str),
    /// A wildcard under `presence/` (`presence/+`, `presence/#`), or a malformed one.
    Many,
}

/// Classifies a subscription filter (without its `$share/{group}/` prefix).
pub fn filter(filter: &str) -> PresenceFilter<'_> {
    match filter.split_once('/') {
        Some((PRESENCE, user)) if valid_id(user) => PresenceFilter::User(user),
        Some((PRESENCE, _)) => PresenceFilter::Many,
        None if filter == PRESENCE => PresenceFilter::Many,
        _ => PresenceFilter::None,
    }
}

/// Whether `visibility` lets `subscriber` watch `user`; `contacts`: whether they share a
/// group or a DM (asked only when that decides).
pub fn may_watch(
    visibility: PresenceVisibility,
    subscriber: &str,
    user: &str,
    contacts: impl FnOnce() -> bool,
) -> bool {
    subscriber == user
        || match visibility {
            PresenceVisibility::Everyone => true,
            PresenceVisibility::Nobody => false,
            PresenceVisibility::Contacts => contacts(),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_back_within_the_delay_changes_nothing() {
        let mut presence = Presence::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(presence.came("bob"), Came::Online);
        let Left::Later(first, at) = presence.left("bob", t0) else {
            panic!("a delay was set");
        };
        assert_eq!(at, t0 + Duration::from_secs(5));
        assert_eq!(presence.came("bob"), Came::Stayed(first, at));
        // The cancelled timer fires: nothing.
        assert_eq!(presence.due(first), None);
        let Left::Later(second, _) = presence.left("bob", t0) else {
            panic!("a delay was set");
        };
        assert_eq!(presence.pending(), 1);
        assert_eq!(presence.due(second), Some("bob".to_string()));
        assert_eq!(presence.pending(), 0);
        assert_eq!(presence.came("bob"), Came::Online);

        let mut immediate = Presence::new(Duration::ZERO);
        assert_eq!(immediate.left("bob", t0), Left::Offline);
    }

    #[test]
    fn payloads_and_filters() {
        assert_eq!(payload(true, 5), r#"{"online":true,"since":5}"#);
        assert_eq!(payload(false, 6), r#"{"online":false,"last_seen":6}"#);
        assert!(says_online(payload(true, 5).as_bytes()));
        assert!(!says_online(payload(false, 5).as_bytes()));
        assert!(!says_online(b"garbage"));
        assert_eq!(filter("presence/bob"), PresenceFilter::User("bob"));
        assert_eq!(filter("presence/+"), PresenceFilter::Many);
        assert_eq!(filter("presence/#"), PresenceFilter::Many);
        assert_eq!(filter("presence"), PresenceFilter::Many);
        assert_eq!(filter("presence/bob/x"), PresenceFilter::Many);
        assert_eq!(filter("#"), PresenceFilter::None);
        assert_eq!(filter("presences/bob"), PresenceFilter::None);
        assert!(may_watch(PresenceVisibility::Nobody, "bob", "bob", || {
            false
        }));
        assert!(!may_watch(PresenceVisibility::Nobody, "al", "bob", || true));
        assert!(may_watch(PresenceVisibility::Everyone, "al", "bob", || {
            false
        }));
        assert!(may_watch(PresenceVisibility::Contacts, "al", "bob", || {
            true
        }));
        assert!(!may_watch(
            PresenceVisibility::Contacts,
            "al",
            "bob",
            || false
        ));
    }
}
