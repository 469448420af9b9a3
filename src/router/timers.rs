//! The router's deadlines: delayed wills, the expiry of offline sessions, users' presence
//! turning offline, and the periodic retention sweep of chat messages. One ordered set holds them all; the timer task in
//! `mod.rs` sleeps until the first and then fires what is due.

use std::time::Duration;

use tokio::time::Instant;

use super::core::{Outcome, Router};
use super::{RouterHandle, Writes};
use crate::protocol::SessionId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKind {
    Will,
    Expiry,
    /// Retention of chat messages (not tied to a session: id 0).
    Sweep,
    /// A user's presence turning offline (the id is the presence ticket, not a session).
    Presence,
}

/// A deadline, the session it is for, and what it does.
pub(super) type Timer = (Instant, SessionId, TimerKind);

/// How often messages older than `im.inbox_max_age_secs` are deleted.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

impl Router {
    /// The earliest deadline, if any.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// Fires every timer due at `now`: delayed wills are published, expired sessions
    /// removed (with their wills), and old chat messages deleted.
    pub(crate) fn fire_timers(&mut self, now: Instant, out: &mut Outcome) {
        while let Some(&(at, id, kind)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match kind {
                TimerKind::Sweep => {
                    self.sweep(out);
                    self.timers
                        .insert((now + SWEEP_INTERVAL, 0, TimerKind::Sweep));
                }
                TimerKind::Will => self.publish_delayed_will(id, at, out),
                TimerKind::Expiry => self.expire(id, at, out),
                TimerKind::Presence => self.presence_due(id, out),
            }
        }
    }

    fn publish_delayed_will(&mut self, id: SessionId, at: Instant, out: &mut Outcome) {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(offline) = entry.offline.as_mut() else {
            return;
        };
        // A will replaced since this timer was set has a timer of its own.
        if offline
            .will
            .as_ref()
            .is_some_and(|(will_at, _)| *will_at == at)
        {
            if let Some((_, will)) = offline.will.take() {
                self.route(&will, out);
            }
        }
    }

    fn expire(&mut self, id: SessionId, at: Instant, out: &mut Outcome) {
        let Some(entry) = self.sessions.get(&id) else {
            return;
        };
        if entry.expires_at() == Some(at) && entry.connected.is_none() {
            tracing::debug!(client_id = %entry.client_id, "session expired");
            if let Some(will) = self.remove_session(id, out) {
                self.route(&will, out);
            }
        }
    }
}

/// The router's own task: sleeps until the earliest deadline (or until a handler adds an
/// earlier one), then fires what is due; ends when the router stops.
pub(super) async fn run(handle: RouterHandle) {
    while let Ok(next) = handle.inspect(Router::next_timer) {
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = due => {
                let fire = |router: &mut Router, out: &mut Outcome| {
                    router.fire_timers(Instant::now(), out)
                };
                if handle.execute_unfenced(Writes::Detached, fire).await.is_err() {
                    break;
                }
            }
            () = handle.shared.timers.notified() => {}
            () = handle.closed() => break,
        }
    }
}
