//! Sessions and their places: a session is attached to one connection, or waits offline
//! with its subscriptions (and, when persistent, its durable queue) until it reconnects or
//! expires. CONNECT attaches (taking a session over from an older connection, or ending it
//! on a clean start), the connection's end detaches (publishing or scheduling the will),
//! and a user's devices are held to `im.max_devices_per_user`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arcstr::ArcStr;
use tern_codec::{Protocol, ReasonCode, SubscriptionOptions};
use tern_storage::{Op, SessionRecord, StoredSession, StoredSubscription};
use tokio::time::Instant;

use super::core::{Outcome, Router};
use super::mailbox::Postbox;
use super::subscriptions::Subscription;
use super::timers::TimerKind;
pub(super) use crate::protocol::handshake::Will;
use crate::protocol::{Close, Message, SessionId};

/// Identifies one connection of a session (a session outlives its connections).
pub(crate) type ConnId = u64;

/// What a connection asks the router at CONNECT.
pub struct ConnectRequest {
    pub client_id: ArcStr,
    /// The authenticated (or anonymous) user the connection acts as.
    pub user: ArcStr,
    pub clean_start: bool,
    /// Seconds the session outlives the connection; 0 ends it with the connection.
    pub expiry_secs: u32,
    pub protocol: Protocol,
    /// Where the router puts the connection's deliveries, broadcasts and close order.
    pub postbox: Postbox,
}

/// The router's answer to CONNECT.
#[derive(Debug)]
pub struct Attached {
    pub session: SessionId,
    pub conn: ConnId,
    pub session_present: bool,
    /// For a resumed persistent session: its durable queue up to (excluding) this position
    /// is to be read from storage; live deliveries continue from there.
    pub backlog_upto: Option<u64>,
    /// Queue positions the previous connection had sent unacknowledged: resent with DUP.
    pub sent: Vec<u64>,
    /// The user's name as the router's entries hold it: the connection keeps this one, so a
    /// user's name is one allocation however many devices it has.
    pub user: ArcStr,
}

/// A connection's end, as its connection reports it.
pub struct Detach {
    pub session: SessionId,
    pub conn: ConnId,
    /// Published unless the client said a proper goodbye.
    pub will: Option<Will>,
    /// A new Session Expiry Interval sent in DISCONNECT.
    pub expiry_secs: Option<u32>,
    /// Durable queue positions sent and not acknowledged (resent with DUP next time).
    pub sent: Vec<u64>,
}

/// The connection a session is attached to.
pub(super) struct Connected {
    pub(super) conn: ConnId,
    pub(super) postbox: Postbox,
}

/// The router's entry for one session.
pub(super) struct SessionEntry {
    /// Shared with the connection (see `ConnectRequest::client_id`).
    pub(super) client_id: ArcStr,
    /// The user the session belongs to; empty for a session restored from a database
    /// written before users existed (it is adopted by the next user to connect with it).
    /// Shared with the user's other sessions and the user index (see
    /// [`Router::user_name`]).
    pub(super) user: ArcStr,
    pub(super) protocol: Protocol,
    pub(super) expiry_secs: u32,
    /// Stored in the database: subscriptions and QoS > 0 messages survive restarts.
    pub(super) persistent: bool,
    pub(super) connected: Option<Connected>,
    pub(super) subscriptions: BTreeMap<String, Subscription>,
    /// The durable queue position the next queued message gets.
    pub(super) next_seq: u64,
    /// What only a session without a connection has; `None` while one is attached.
    pub(super) offline: Option<Box<Offline>>,
}

/// A session's state between connections. Boxed in its [`SessionEntry`]: bytes that every
/// connected session (every idle chat device) would otherwise carry unused.
#[derive(Default)]
pub(super) struct Offline {
    /// QoS > 0 messages queued while offline, held to `max_queued_messages` (a u32, as
    /// that limit is). Here rather than in the entry: only an offline session counts them.
    pub(super) queued: u32,
    /// Durable queue positions the last connection sent unacknowledged (resent with DUP).
    pub(super) sent: Vec<u64>,
    pub(super) disconnected_at_ms: Option<u64>,
    pub(super) expires_at: Option<Instant>,
    /// A will waiting for its delay.
    pub(super) will: Option<(Instant, Arc<Message>)>,
    /// While adopted from the cluster and not yet backfilled: what routing brought it
    /// (see `adopt.rs`), at most `max_queued_messages`.
    pub(super) held: Option<Vec<Held>>,
}

/// A delivery held back from an adopted session until its backfill.
pub(super) struct Held {
    pub(super) message: Arc<Message>,
    /// Its number among the kept messages this node appended to the cluster's stream,
    /// if it was published here (see [`super::core::Forwarded::append`]).
    pub(super) append: Option<u64>,
}

impl SessionEntry {
    pub(super) fn offline(&mut self) -> &mut Offline {
        self.offline.get_or_insert_with(Box::default)
    }

    /// QoS > 0 messages queued since the session went offline.
    pub(super) fn offline_queued(&self) -> u32 {
        self.offline.as_ref().map_or(0, |offline| offline.queued)
    }

    pub(super) fn expires_at(&self) -> Option<Instant> {
        self.offline.as_ref().and_then(|offline| offline.expires_at)
    }

    pub(super) fn stored(&self) -> StoredSession {
        StoredSession {
            client_id: self.client_id.to_string(),
            user: self.user.to_string(),
            protocol_level: self.protocol.level(),
            expiry_interval_secs: self.expiry_secs,
            disconnected_at_ms: self
                .offline
                .as_ref()
                .and_then(|offline| offline.disconnected_at_ms),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(filter, s)| StoredSubscription {
                    filter: filter.clone(),
                    options: s.options.to_byte(Protocol::V5),
                    identifier: s.identifier,
                })
                .collect(),
        }
    }

    /// Writes the session's stored form, if it is persistent.
    pub(super) fn store(&self, out: &mut Outcome) {
        if self.persistent {
            out.ops.push(Op::PutSession(self.stored()));
        }
    }
}

impl Router {
    /// A session found in storage at start: offline, expiring from when it went offline.
    pub(super) fn restore_session(&mut self, record: SessionRecord, now_ms: u64, now: Instant) {
        let SessionRecord {
            session,
            first_seq,
            next_seq,
        } = record;
        let protocol = if session.protocol_level == 5 {
            Protocol::V5
        } else {
            Protocol::V311
        };
        let id = self.new_session_id();
        let client_id = ArcStr::from(session.client_id.as_str());
        // A session that was online when the broker died went offline at restart.
        let disconnected_at_ms = session.disconnected_at_ms.unwrap_or(now_ms);
        let user = self.user_name(&session.user, || ArcStr::from(session.user.as_str()));
        let mut entry = SessionEntry {
            client_id: client_id.clone(),
            user,
            protocol,
            expiry_secs: session.expiry_interval_secs,
            persistent: true,
            connected: None,
            subscriptions: BTreeMap::new(),
            next_seq,
            offline: Some(Box::new(Offline {
                queued: u32::try_from(next_seq.saturating_sub(first_seq)).unwrap_or(u32::MAX),
                disconnected_at_ms: Some(disconnected_at_ms),
                ..Offline::default()
            })),
        };
        for sub in session.subscriptions {
            let Ok(options) = SubscriptionOptions::from_byte(Protocol::V5, sub.options) else {
                tracing::warn!(client_id = %client_id, filter = %sub.filter, "skipping damaged subscription");
                continue;
            };
            let subscription = Subscription {
                options,
                identifier: sub.identifier,
            };
            self.subscriptions
                .subscribe(id, &sub.filter, subscription.clone());
            entry.subscriptions.insert(sub.filter, subscription);
        }
        if entry.expiry_secs != u32::MAX {
            let deadline_ms = disconnected_at_ms + u64::from(entry.expiry_secs) * 1000;
            let at = now + Duration::from_millis(deadline_ms.saturating_sub(now_ms));
            entry.offline().expires_at = Some(at);
            self.timers.insert((at, id, TimerKind::Expiry));
        }
        self.offline_queued += u64::from(entry.offline_queued());
        self.by_client.insert(&client_id, id, &self.sessions);
        let user = entry.user.clone();
        self.sessions.insert(id, Box::new(entry));
        if !user.is_empty() {
            self.by_user.insert(&user, id, &self.sessions);
        }
    }

    fn new_session_id(&mut self) -> SessionId {
        let id = self.next_session;
        self.next_session += 1;
        id
    }

    /// Attaches a connection to its session: resumed (a persistent one, without clean
    /// start), or new. An older connection of the session is closed (taken over); another
    /// user's client id is refused.
    pub(crate) fn connect(
        &mut self,
        request: ConnectRequest,
        out: &mut Outcome,
    ) -> Result<Attached, ReasonCode> {
        let conn = self.next_conn;
        self.next_conn += 1;
        // Before a takeover below closes the device's old connection.
        let was_online = self.user_online(&request.user);
        let persistent = request.expiry_secs > 0;
        let mut resumed = None;
        let mut pending_will = None;
        if let Some(id) = self.by_client.get(&request.client_id, &self.sessions) {
            self.take_over(id, &request)?;
            let keep = !request.clean_start && self.sessions.get(&id).is_some_and(|s| s.persistent);
            if keep {
                // A new connection to the session before the will delay ends cancels the
                // will [MQTT-3.1.3-9].
                if let Some(entry) = self.sessions.get_mut(&id) {
                    let will = entry
                        .offline
                        .as_mut()
                        .and_then(|offline| offline.will.take());
                    if let Some((at, _)) = will {
                        self.timers.remove(&(at, id, TimerKind::Will));
                    }
                }
                resumed = Some(id);
            } else {
                // Clean start ends the old session, and a session's end publishes its
                // delayed will [MQTT-3.1.2-8].
                pending_will = self.remove_session(id, out);
            }
        }
        // The connection's copy (it authenticated as this user) when the user is new.
        let user = self.user_name(&request.user, || request.user.clone());
        let (id, session_present) = match resumed {
            Some(id) => (id, true),
            None => (self.new_session(&request, &user, persistent), false),
        };
        let Some(entry) = self.sessions.get_mut(&id) else {
            unreachable!("session {id} was inserted or found above")
        };
        let was_stored = entry.persistent;
        if entry.user.is_empty() {
            entry.user = user.clone();
        }
        entry.protocol = request.protocol;
        entry.expiry_secs = request.expiry_secs;
        entry.persistent = persistent || (session_present && was_stored);
        let offline = entry
            .offline
            .take()
            .map(|offline| *offline)
            .unwrap_or_default();
        // Its backlog is the connection's to read now (see `RouterStats::queued`).
        self.offline_queued -= u64::from(offline.queued);
        if let Some(at) = offline.expires_at {
            self.timers.remove(&(at, id, TimerKind::Expiry));
        }
        entry.connected = Some(Connected {
            conn,
            postbox: request.postbox,
        });
        self.online += 1;
        if let Some(webhook) = &self.webhook {
            webhook.connection(true, &user, &request.client_id);
        }
        entry.store(out);
        let backlog_upto = (session_present && was_stored).then_some(entry.next_seq);
        self.by_user.insert(&user, id, &self.sessions);
        self.enforce_device_limit(&request.user);
        if !was_online {
            self.presence_came(&user, out);
        }
        if let Some(will) = pending_will {
            self.route(&will, out);
        }
        Ok(Attached {
            session: id,
            conn,
            session_present,
            backlog_upto,
            sent: offline.sent,
            user,
        })
    }

    /// The checks and the close of a CONNECT to an existing session `id`: a client id
    /// names one device of one user, so another user may neither take the session over
    /// (and read its queue) nor end it; the session's current connection is closed.
    fn take_over(&mut self, id: SessionId, request: &ConnectRequest) -> Result<(), ReasonCode> {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return Ok(());
        };
        if !entry.user.is_empty() && *entry.user != *request.user {
            tracing::info!(client_id = %request.client_id, user = %request.user,
                owner = %entry.user, "client id belongs to another user");
            return Err(ReasonCode::NotAuthorized);
        }
        if let Some(mut old) = entry.connected.take() {
            tracing::debug!(client_id = %request.client_id, "session taken over");
            old.postbox
                .close(Close::new(ReasonCode::SessionTakenOver, ""));
            self.online -= 1;
        }
        Ok(())
    }

    fn new_session(
        &mut self,
        request: &ConnectRequest,
        user: &ArcStr,
        persistent: bool,
    ) -> SessionId {
        let id = self.new_session_id();
        self.by_client
            .insert(&request.client_id, id, &self.sessions);
        self.sessions.insert(
            id,
            Box::new(SessionEntry {
                client_id: request.client_id.clone(),
                user: user.clone(),
                protocol: request.protocol,
                expiry_secs: request.expiry_secs,
                persistent,
                connected: None,
                subscriptions: BTreeMap::new(),
                next_seq: 0,
                offline: None,
            }),
        );
        id
    }

    /// The user's name as its sessions hold it: one allocation per user, shared by its
    /// devices and the user index, rather than two per session. `named` is the caller's own
    /// copy, taken when the user has no session yet.
    pub(super) fn user_name(&self, user: &str, named: impl FnOnce() -> ArcStr) -> ArcStr {
        match self.by_user.name(user, &self.sessions) {
            Some(name) => name.clone(),
            None => named(),
        }
    }

    /// Closes the user's oldest connections beyond `im.max_devices_per_user`.
    fn enforce_device_limit(&mut self, user: &str) {
        let max = self.limits.im.max_devices_per_user;
        if max == 0 {
            return;
        }
        let Some(ids) = self
            .by_user
            .get(user, &self.sessions)
            .filter(|ids| ids.len() > max)
        else {
            return;
        };
        let mut online: Vec<(ConnId, SessionId)> = ids
            .iter()
            .filter_map(|id| {
                let connected = self.sessions.get(id)?.connected.as_ref()?;
                (!connected.postbox.is_closing()).then_some((connected.conn, *id))
            })
            .collect();
        if online.len() <= max {
            return;
        }
        online.sort_unstable();
        let excess = online.len() - max;
        for (_, id) in online.into_iter().take(excess) {
            if let Some(connected) = self
                .sessions
                .get_mut(&id)
                .and_then(|s| s.connected.as_mut())
            {
                tracing::info!(%user, max, "device limit reached, closing the oldest connection");
                connected.postbox.close(Close::new(
                    ReasonCode::AdministrativeAction,
                    format!("{user} connected more than {max} devices; this one was the oldest"),
                ));
            }
        }
    }

    /// Closes every connection of a user (deleted, or its password changed).
    pub(crate) fn close_user(&mut self, user: &str, close: &Close) {
        let ids = self
            .by_user
            .get(user, &self.sessions)
            .cloned()
            .unwrap_or_default();
        for id in ids {
            if let Some(connected) = self
                .sessions
                .get_mut(&id)
                .and_then(|s| s.connected.as_mut())
            {
                tracing::info!(%user, why = %close.reason, "closing the user's connection");
                connected.postbox.close(close.clone());
            }
        }
    }

    /// Closes the connection attached to `client_id`'s session, if any; it detaches as
    /// any connection does. Returns whether there was one.
    pub(crate) fn close_client(&mut self, client_id: &str, close: Close) -> bool {
        let Some(id) = self.by_client.get(client_id, &self.sessions) else {
            return false;
        };
        let Some(connected) = self
            .sessions
            .get_mut(&id)
            .and_then(|s| s.connected.as_mut())
        else {
            return false;
        };
        tracing::debug!(%client_id, why = %close.reason, "closing the session's connection");
        connected.postbox.close(close);
        true
    }

    /// Closes every connection.
    pub(crate) fn close_all(&mut self, close: &Close) {
        for entry in self.sessions.values_mut() {
            if let Some(connected) = entry.connected.as_mut() {
                connected.postbox.close(close.clone());
            }
        }
    }

    /// A lagged connection caught up: where its durable queue ends (it reads it up to
    /// there from storage), and stored deliveries go to its mailbox again. `None` when the
    /// session is gone.
    pub(crate) fn resync(&self, session: SessionId, conn: ConnId) -> Option<u64> {
        let entry = self.sessions.get(&session)?;
        if let Some(connected) = entry.connected.as_ref().filter(|c| c.conn == conn) {
            connected.postbox.clear_lagged();
        }
        Some(entry.next_seq)
    }

    /// Ends a session: its subscriptions, its stored state; returns its pending will.
    pub(super) fn remove_session(
        &mut self,
        id: SessionId,
        out: &mut Outcome,
    ) -> Option<Arc<Message>> {
        let entry = self.sessions.remove(&id)?;
        self.offline_queued -= u64::from(entry.offline_queued());
        if entry.connected.is_some() {
            self.online -= 1;
        }
        self.by_client.remove(&entry.client_id, id);
        self.by_user.remove(&entry.user, id);
        for filter in entry.subscriptions.keys() {
            self.subscriptions.unsubscribe(&id, filter);
        }
        if let Some(at) = entry.expires_at() {
            self.timers.remove(&(at, id, TimerKind::Expiry));
        }
        if entry.persistent {
            out.ops.push(Op::DeleteSession {
                client_id: entry.client_id.to_string(),
            });
        }
        entry
            .offline
            .and_then(|offline| offline.will)
            .map(|(at, will)| {
                self.timers.remove(&(at, id, TimerKind::Will));
                will
            })
    }

    /// A connection ended: its session goes offline (or ends, without expiry), and its will
    /// is published now or scheduled. Returns whether it was the session's connection.
    pub(crate) fn detach(&mut self, detach: Detach, now: Instant, out: &mut Outcome) -> bool {
        let Detach {
            session: id,
            conn,
            will,
            expiry_secs,
            sent,
        } = detach;
        let current = self
            .sessions
            .get(&id)
            .and_then(|s| s.connected.as_ref())
            .is_some_and(|c| c.conn == conn);
        if !current {
            // A connection that was taken over. If its session lives on with the new
            // connection, only an immediate will is published; if the takeover ended the
            // session (clean start), the will is due now [MQTT-3.1.2-8].
            let session_lives = self.sessions.contains_key(&id);
            if let Some(will) = will.filter(|w| w.delay_secs == 0 || !session_lives) {
                self.route(&will.message, out);
            }
            return false;
        }
        let Some(entry) = self.sessions.get_mut(&id) else {
            return false;
        };
        entry.connected = None;
        self.online -= 1;
        if let Some(webhook) = &self.webhook {
            webhook.connection(false, &entry.user, &entry.client_id);
        }
        entry.offline().sent = sent;
        if let Some(expiry) = expiry_secs {
            entry.expiry_secs = expiry;
        }
        let user = entry.user.clone();
        let will_now = if entry.expiry_secs == 0 {
            let pending = self.remove_session(id, out);
            will.map(|w| w.message).or(pending)
        } else {
            self.go_offline(id, will, now, out)
        };
        if let Some(will) = will_now {
            self.route(&will, out);
        }
        if !self.user_online(&user) {
            self.presence_left(&user, now, out);
        }
        true
    }

    /// Keeps a detached session until it expires, with its will scheduled; returns the will
    /// when it is due at once.
    fn go_offline(
        &mut self,
        id: SessionId,
        will: Option<Will>,
        now: Instant,
        out: &mut Outcome,
    ) -> Option<Arc<Message>> {
        let entry = self.sessions.get_mut(&id)?;
        entry.offline().disconnected_at_ms = Some(crate::protocol::now_ms());
        if entry.expiry_secs != u32::MAX {
            let at = now + Duration::from_secs(u64::from(entry.expiry_secs));
            entry.offline().expires_at = Some(at);
            self.timers.insert((at, id, TimerKind::Expiry));
            out.timers_changed = true;
        }
        entry.store(out);
        let will = will?;
        // The will waits for its delay, but never past the session's end.
        let delay = will.delay_secs.min(entry.expiry_secs);
        if delay == 0 {
            return Some(will.message);
        }
        let at = now + Duration::from_secs(u64::from(delay));
        entry.offline().will = Some((at, will.message));
        self.timers.insert((at, id, TimerKind::Will));
        out.timers_changed = true;
        None
    }

    /// Stops: every connection is closed (v5: DISCONNECT 0x8B) and nothing more is routed.
    pub(crate) fn shutdown(&mut self) {
        self.stopped = true;
        for entry in self.sessions.values_mut() {
            if let Some(mut connected) = entry.connected.take() {
                connected
                    .postbox
                    .close(Close::new(ReasonCode::ServerShuttingDown, ""));
            }
        }
        self.online = 0;
    }
}
