//! The outbox: every QoS 1 publish of the client (messages, `$` requests, `$sync`) from the
//! moment the app asks for it until its PUBACK, across reconnects. No I/O and no clock: the
//! driver reports connections, packet ids and PUBACKs and passes `now`; the outbox says what
//! to publish ([`Outbox::poll_transmit`]) and what the app should hear
//! ([`Outbox::poll_event`]).
//!
//! **Who resends on reconnect: this outbox, not rumqttc.** rumqttc 0.25's v5 event loop
//! would replay its own in-flight publishes on a resumed session, but (read in its source):
//! it clears them when the CONNACK has `session_present = false` (broker restarted, session
//! expired), so messages would be lost silently; it collects them by scanning its table in
//! packet-id order, which is not the send order once ids wrap (they wrap at the broker's
//! Receive Maximum); its in-flight table is crate-private, so a publish it holds cannot be
//! withdrawn when its `resend_for` runs out; and `clean()` leaves a packet-id collision
//! parked, blocking the next connection until a CollisionTimeout. So the driver empties
//! rumqttc's replay queue (and clears the collision) after every connection error, and on
//! each CONNACK this outbox publishes
//! every unacknowledged entry again, oldest first, with the SAME `msgid` (the broker drops
//! duplicates by sender and msgid) and a new packet id. The invariant: each message is
//! acknowledged, or reported failed once `resend_for` has passed since it was accepted, and
//! all its attempts carry one msgid.
//!
//! Matching PUBACKs: rumqttc numbers publishes itself and reports each one as written
//! (`Outgoing::Publish(pkid)`) in the order it was handed over, so the outbox keeps the
//! entries it handed over in a queue and pairs each with the next reported packet id.
//!
//! Read positions are coalesced (only the highest per conversation is worth sending, the
//! broker keeps the highest anyway) and so is the receipts setting (the latest wins); they
//! never expire. A message that fails while an attempt is still on the wire may be
//! acknowledged after all: that PUBACK is reported as `Sent`, the truth about the message.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::events::{Conversation, SendState};

/// The app's handle on one sent message, unique within a [`Client`](crate::Client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalId(pub u64);

impl fmt::Display for LocalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A `$` request (docs/chat.md, "Sending").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `$read/dm/{peer}` or `$read/group/{gid}`.
    Read {
        conversation: Conversation,
        seq: u64,
    },
    /// `$recall`.
    Recall { id: u64 },
    /// `$receipts/group/{gid}`.
    GroupReceipts { gid: String, id: u64 },
    /// `$settings`.
    Settings { receipts: bool },
}

impl Request {
    fn topic(&self) -> String {
        match self {
            Request::Read {
                conversation: Conversation::Direct { peer },
                ..
            } => format!("$read/dm/{peer}"),
            Request::Read {
                conversation: Conversation::Group { gid },
                ..
            } => format!("$read/group/{gid}"),
            Request::Recall { .. } => "$recall".to_string(),
            Request::GroupReceipts { gid, .. } => format!("$receipts/group/{gid}"),
            Request::Settings { .. } => "$settings".to_string(),
        }
    }

    fn payload(&self) -> Bytes {
        match self {
            Request::Read { seq, .. } => Bytes::from(seq.to_string()),
            Request::Recall { id } | Request::GroupReceipts { id, .. } => {
                Bytes::from(id.to_string())
            }
            Request::Settings { receipts } => Bytes::from(format!("{{\"receipts\":{receipts}}}")),
        }
    }

    /// Reads and settings say where the user stands: they are sent until the broker has
    /// them. A recall or a receipts query is an action of its moment: it expires.
    fn expires(&self) -> bool {
        matches!(self, Request::Recall { .. } | Request::GroupReceipts { .. })
    }
}

/// Which entry a packet belongs to; opaque to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(u64);

/// One publish to hand to the MQTT client, at QoS 1, not retained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub key: Key,
    pub topic: String,
    pub payload: Bytes,
    /// The `msgid` user property (messages only).
    pub msgid: Option<String>,
}

/// What the app hears from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxEvent {
    SendState {
        local_id: LocalId,
        msgid: String,
        state: SendState,
    },
    RequestFailed {
        request: Request,
        reason: String,
    },
}

/// The outbox is at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the outbox holds {max} unacknowledged messages and requests, its bound (Config::max_outbox)"
)]
pub struct OutboxFull {
    pub max: usize,
}

#[derive(Debug, Clone)]
enum Body {
    Message {
        local_id: LocalId,
        msgid: String,
        topic: String,
        payload: Bytes,
    },
    Request(Request),
    /// `$sync`: only for the connection it was asked on (the tracker asks again on the next).
    Sync {
        after: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Not handed over on this connection yet.
    Queued,
    /// Handed over; its packet id not known yet.
    Issued,
    /// On the wire with this packet id, waiting for the PUBACK.
    InFlight(u16),
}

#[derive(Debug, Clone)]
struct Entry {
    body: Body,
    deadline: Option<Instant>,
    attempt: Attempt,
}

/// The resend state machine. See the module docs.
#[derive(Debug)]
pub struct Outbox {
    /// By key: the order the app asked in. `$sync` entries take keys below every other so
    /// that a reconnect's sync goes before the resends.
    entries: BTreeMap<Key, Entry>,
    next_key: u64,
    next_sync_key: u64,
    next_local: u64,
    msgid_prefix: String,
    max_entries: usize,
    resend_for: Duration,
    connected: bool,
    /// Publishes handed over at once on this connection.
    window: usize,
    /// Handed over, waiting for their packet ids, in order.
    issued: VecDeque<Key>,
    by_pkid: HashMap<u16, Key>,
    /// Messages that failed while an attempt was on the wire, in case it is acknowledged.
    failed_on_wire: HashMap<Key, (LocalId, String)>,
    events: VecDeque<OutboxEvent>,
}

/// The first key of app entries; `$sync` keys count up from 0 below it.
const APP_KEYS: u64 = 1 << 62;

impl Outbox {
    /// `msgid_prefix`: unique to this device and run (the driver makes it from the device id
    /// and a random part), so that `{prefix}-{n}` is unique per sender.
    pub fn new(msgid_prefix: String, max_entries: usize, resend_for: Duration) -> Self {
        Outbox {
            entries: BTreeMap::new(),
            next_key: APP_KEYS,
            next_sync_key: 0,
            next_local: 1,
            msgid_prefix,
            max_entries,
            resend_for,
            connected: false,
            window: 1,
            issued: VecDeque::new(),
            by_pkid: HashMap::new(),
            failed_on_wire: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Messages and requests waiting for a PUBACK (what the bound counts).
    pub fn len(&self) -> usize {
        self.entries
            .values()
            .filter(|e| !matches!(e.body, Body::Sync { .. }))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A chat message to publish on `topic` (`dm/{to}` or `group/{gid}`).
    pub fn send(
        &mut self,
        topic: String,
        payload: Bytes,
        now: Instant,
    ) -> Result<(LocalId, String), OutboxFull> {
        self.check_room()?;
        let local_id = LocalId(self.next_local);
        self.next_local += 1;
        let msgid = format!("{}-{}", self.msgid_prefix, local_id.0);
        self.push(
            Body::Message {
                local_id,
                msgid: msgid.clone(),
                topic,
                payload,
            },
            Some(now + self.resend_for),
        );
        self.events.push_back(OutboxEvent::SendState {
            local_id,
            msgid: msgid.clone(),
            state: SendState::Sending,
        });
        Ok((local_id, msgid))
    }

    /// A `$` request. Read positions and the receipts setting replace a queued one of the
    /// same conversation (the highest seq wins) or kind (the latest wins).
    pub fn request(&mut self, request: Request, now: Instant) -> Result<(), OutboxFull> {
        if let Some(entry) = self.coalesce_target(&request) {
            if let Body::Request(queued) = &mut entry.body {
                match (queued, request) {
                    (Request::Read { seq: old, .. }, Request::Read { seq: new, .. }) => {
                        *old = (*old).max(new);
                    }
                    (queued, request) => *queued = request,
                }
            }
            return Ok(());
        }
        if let Request::Read {
            conversation,
            seq: new,
        } = &request
        {
            // Already on its way with this position or a higher one: nothing to add.
            let covered = self.entries.values().any(|e| {
                matches!(&e.body, Body::Request(Request::Read { conversation: c, seq })
                    if c == conversation && seq >= new)
            });
            if covered {
                return Ok(());
            }
        }
        self.check_room()?;
        let deadline = request.expires().then(|| now + self.resend_for);
        self.push(Body::Request(request), deadline);
        Ok(())
    }

    /// A `$sync` asked by the seq tracker, for this connection only.
    pub fn sync(&mut self, after: Option<u64>) {
        if !self.connected {
            return;
        }
        let key = Key(self.next_sync_key);
        self.next_sync_key += 1;
        self.entries.insert(
            key,
            Entry {
                body: Body::Sync { after },
                deadline: None,
                attempt: Attempt::Queued,
            },
        );
    }

    /// A connection is up: everything unacknowledged goes again, in order, at most
    /// `window` at a time (the broker's Receive Maximum, or less).
    pub fn on_connected(&mut self, window: usize) {
        self.connected = true;
        self.window = window.max(1);
        self.issued.clear();
        self.by_pkid.clear();
        self.failed_on_wire.clear();
        self.entries
            .retain(|_, e| !matches!(e.body, Body::Sync { .. }));
        for entry in self.entries.values_mut() {
            entry.attempt = Attempt::Queued;
        }
        self.drop_superseded();
    }

    /// The connection is gone. Packet ids stay known until the next CONNACK: rumqttc may
    /// still report PUBACKs it read before the error.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
    }

    /// The next publish to hand over, if connected and the window has room.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if !self.connected {
            return None;
        }
        let in_flight = self
            .entries
            .values()
            .filter(|e| e.attempt != Attempt::Queued)
            .count();
        if in_flight >= self.window {
            return None;
        }
        let (&key, entry) = self
            .entries
            .iter_mut()
            .find(|(_, e)| e.attempt == Attempt::Queued)?;
        entry.attempt = Attempt::Issued;
        self.issued.push_back(key);
        let (topic, payload, msgid) = match &entry.body {
            Body::Message {
                msgid,
                topic,
                payload,
                ..
            } => (topic.clone(), payload.clone(), Some(msgid.clone())),
            Body::Request(request) => (request.topic(), request.payload(), None),
            Body::Sync { after } => (
                "$sync".to_string(),
                after.map_or_else(Bytes::new, |a| Bytes::from(a.to_string())),
                None,
            ),
        };
        Some(Transmit {
            key,
            topic,
            payload,
            msgid,
        })
    }

    /// The MQTT client did not take the last transmit (its queue was full or closed): it
    /// goes again later.
    pub fn unissue(&mut self, key: Key) {
        if self.issued.back() == Some(&key) {
            self.issued.pop_back();
        }
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.attempt = Attempt::Queued;
        }
    }

    /// rumqttc wrote the next handed-over publish with packet id `pkid`.
    pub fn on_publish_written(&mut self, pkid: u16) {
        let Some(key) = self.issued.pop_front() else {
            tracing::debug!(pkid, "a publish the outbox did not hand over");
            return;
        };
        self.by_pkid.insert(pkid, key);
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.attempt = Attempt::InFlight(pkid);
        }
    }

    /// A PUBACK with its reason code (below 0x80: success).
    pub fn on_puback(&mut self, pkid: u16, reason: u8) {
        let Some(key) = self.by_pkid.remove(&pkid) else {
            tracing::debug!(pkid, "PUBACK for no publish of the outbox");
            return;
        };
        let ok = reason < 0x80;
        let Some(entry) = self.entries.remove(&key) else {
            if let Some((local_id, msgid)) = self.failed_on_wire.remove(&key) {
                if ok {
                    self.events.push_back(OutboxEvent::SendState {
                        local_id,
                        msgid,
                        state: SendState::Sent,
                    });
                }
            }
            return;
        };
        let refused = || format!("refused by the broker: {}", reason_name(reason));
        match entry.body {
            Body::Message {
                local_id, msgid, ..
            } => self.events.push_back(OutboxEvent::SendState {
                local_id,
                msgid,
                state: if ok {
                    SendState::Sent
                } else {
                    SendState::Failed { reason: refused() }
                },
            }),
            Body::Request(request) if !ok => self.events.push_back(OutboxEvent::RequestFailed {
                request,
                reason: refused(),
            }),
            Body::Request(_) => {}
            Body::Sync { after } if !ok => {
                // The tracker asks again after its timeout.
                tracing::debug!(?after, reason, "$sync refused");
            }
            Body::Sync { .. } => {}
        }
    }

    /// Time passed: entries older than `resend_for` fail.
    pub fn on_tick(&mut self, now: Instant) {
        let expired: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| e.deadline.is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        let reason = format!(
            "not acknowledged within resend_for ({} s)",
            self.resend_for.as_secs()
        );
        for key in expired {
            self.fail(key, &reason);
        }
    }

    /// The client is closing: everything still waiting fails with `reason`.
    pub fn fail_all(&mut self, reason: &str) {
        let keys: Vec<Key> = self.entries.keys().copied().collect();
        for key in keys {
            self.fail(key, reason);
        }
    }

    /// The next event for the app, if any.
    pub fn poll_event(&mut self) -> Option<OutboxEvent> {
        self.events.pop_front()
    }

    fn fail(&mut self, key: Key, reason: &str) {
        let Some(entry) = self.entries.remove(&key) else {
            return;
        };
        let on_wire = entry.attempt != Attempt::Queued;
        match entry.body {
            Body::Message {
                local_id, msgid, ..
            } => {
                if on_wire {
                    self.failed_on_wire.insert(key, (local_id, msgid.clone()));
                }
                self.events.push_back(OutboxEvent::SendState {
                    local_id,
                    msgid,
                    state: SendState::Failed {
                        reason: reason.to_string(),
                    },
                });
            }
            Body::Request(request) => self.events.push_back(OutboxEvent::RequestFailed {
                request,
                reason: reason.to_string(),
            }),
            Body::Sync { .. } => {}
        }
    }

    fn check_room(&self) -> Result<(), OutboxFull> {
        if self.len() >= self.max_entries {
            return Err(OutboxFull {
                max: self.max_entries,
            });
        }
        Ok(())
    }

    fn push(&mut self, body: Body, deadline: Option<Instant>) {
        let key = Key(self.next_key);
        self.next_key += 1;
        self.entries.insert(
            key,
            Entry {
                body,
                deadline,
                attempt: Attempt::Queued,
            },
        );
    }

    /// A queued (not yet handed over) entry that `request` can be folded into.
    fn coalesce_target(&mut self, request: &Request) -> Option<&mut Entry> {
        self.entries.values_mut().find(|e| {
            e.attempt == Attempt::Queued
                && match (&e.body, request) {
                    (
                        Body::Request(Request::Read {
                            conversation: a, ..
                        }),
                        Request::Read {
                            conversation: b, ..
                        },
                    ) => a == b,
                    (Body::Request(Request::Settings { .. }), Request::Settings { .. }) => true,
                    _ => false,
                }
        })
    }

    /// After a reconnect every entry is queued again: of several read positions of one
    /// conversation only the highest is sent, of several settings only the latest.
    fn drop_superseded(&mut self) {
        let mut best_read: HashMap<Conversation, (u64, Key)> = HashMap::new();
        let mut latest_settings = None;
        for (&key, entry) in &self.entries {
            match &entry.body {
                Body::Request(Request::Read { conversation, seq }) => {
                    let best = best_read.entry(conversation.clone()).or_insert((*seq, key));
                    if *seq > best.0 {
                        *best = (*seq, key);
                    }
                }
                Body::Request(Request::Settings { .. }) => latest_settings = Some(key),
                _ => {}
            }
        }
        self.entries.retain(|key, entry| match &entry.body {
            Body::Request(Request::Read { conversation, .. }) => {
                best_read.get(conversation).map(|b| b.1) == Some(*key)
            }
            Body::Request(Request::Settings { .. }) => latest_settings == Some(*key),
            _ => true,
        });
    }
}

/// The name of a PUBACK reason code of MQTT 5 (and what tern means by it, docs/chat.md).
pub fn reason_name(code: u8) -> String {
    let name = match code {
        0x00 => "success",
        0x10 => "no matching subscribers",
        0x80 => "unspecified error (a seq or id the broker does not have)",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        _ => "unknown reason",
    };
    format!("0x{code:02x} {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESEND: Duration = Duration::from_secs(180);

    fn outbox(max: usize) -> (Outbox, Instant) {
        (
            Outbox::new("phone-ab12".into(), max, RESEND),
            Instant::now(),
        )
    }

    fn events(o: &mut Outbox) -> Vec<OutboxEvent> {
        std::iter::from_fn(|| o.poll_event()).collect()
    }

    /// Hands over everything the window allows, as rumqttc would number it from `pkid`.
    fn write_all(o: &mut Outbox, mut pkid: u16) -> Vec<(u16, Transmit)> {
        let mut out = Vec::new();
        while let Some(t) = o.poll_transmit() {
            o.on_publish_written(pkid);
            out.push((pkid, t));
            pkid += 1;
        }
        out
    }

    fn state(local_id: LocalId, state: SendState) -> OutboxEvent {
        OutboxEvent::SendState {
            local_id,
            msgid: format!("phone-ab12-{}", local_id.0),
            state,
        }
    }

    fn dm(o: &mut Outbox, to: &str, text: &'static str, now: Instant) -> LocalId {
        o.send(format!("dm/{to}"), Bytes::from_static(text.as_bytes()), now)
            .expect("room in the outbox")
            .0
    }

    #[test]
    fn a_message_is_sending_then_sent_on_its_puback() {
        let (mut o, now) = outbox(10);
        let id = dm(&mut o, "bob", "hi", now);
        assert_eq!(events(&mut o), vec![state(id, SendState::Sending)]);
        assert_eq!(o.poll_transmit(), None, "nothing goes out offline");
        o.on_connected(10);
        let sent = write_all(&mut o, 1);
        assert_eq!(sent.len(), 1);
        let t = &sent[0].1;
        assert_eq!(t.topic, "dm/bob");
        assert_eq!(t.payload, Bytes::from_static(b"hi"));
        assert_eq!(t.msgid.as_deref(), Some("phone-ab12-1"));
        o.on_puback(1, 0x00);
        assert_eq!(events(&mut o), vec![state(id, SendState::Sent)]);
        assert!(o.is_empty());
    }

    #[test]
    fn a_refused_message_fails_at_once_naming_the_reason() {
        let (mut o, now) = outbox(10);
        o.on_connected(10);
        let id = dm(&mut o, "eve", "x", now);
        events(&mut o);
        write_all(&mut o, 5);
        o.on_puback(5, 0x87);
        let seen = events(&mut o);
        let [OutboxEvent::SendState {
            local_id,
            state: SendState::Failed { reason },
            ..
        }] = seen.as_slice()
        else {
            panic!("one failure: {seen:?}");
        };
        assert_eq!(*local_id, id);
        assert!(reason.contains("0x87 not authorized"), "{reason}");
        o.on_connected(10);
        assert_eq!(o.poll_transmit(), None, "a refused message is not resent");
    }

    #[test]
    fn no_matching_subscribers_is_a_success() {
        let (mut o, now) = outbox(10);
        o.on_connected(10);
        let id = dm(&mut o, "bob", "x", now);
        events(&mut o);
        write_all(&mut o, 1);
        o.on_puback(1, 0x10);
        assert_eq!(events(&mut o), vec![state(id, SendState::Sent)]);
    }

    #[test]
    fn a_reconnect_resends_the_unacknowledged_in_order_with_the_same_msgids() {
        let (mut o, now) = outbox(10);
        o.on_connected(10);
        for text in ["one", "two", "three", "four"] {
            dm(&mut o, "bob", text, now);
        }
        events(&mut o);
        let first = write_all(&mut o, 100);
        assert_eq!(first.len(), 4);
        // "two" is acknowledged; the connection drops before the others are.
        o.on_puback(101, 0);
        o.on_disconnected();
        assert_eq!(o.poll_transmit(), None);
        o.on_connected(10);
        let again = write_all(&mut o, 7);
        let texts: Vec<_> = again.iter().map(|(_, t)| t.payload.clone()).collect();
        assert_eq!(
            texts,
            ["one", "three", "four"].map(|s| Bytes::from_static(s.as_bytes()))
        );
        let msgids = |ts: &[(u16, Transmit)]| -> Vec<Option<String>> {
            ts.iter().map(|(_, t)| t.msgid.clone()).collect()
        };
        let first_msgids: Vec<_> = msgids(&first)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, m)| m)
            .collect();
        assert_eq!(msgids(&again), first_msgids, "same msgid on every attempt");
        // The new packet ids are what the PUBACKs now name.
        o.on_puback(7, 0);
        o.on_puback(100, 0); // a stale id of the old connection: nothing
        let e = events(&mut o);
        assert_eq!(e.len(), 2, "Sent for two, then Sent for one: {e:?}");
    }

    #[test]
    fn pubacks_read_before_the_error_still_count_until_the_next_connack() {
        let (mut o, now) = outbox(10);
        o.on_connected(10);
        let id = dm(&mut o, "bob", "x", now);
        events(&mut o);
        write_all(&mut o, 3);
        o.on_disconnected();
        o.on_puback(3, 0);
        assert_eq!(events(&mut o), vec![state(id, SendState::Sent)]);
        o.on_connected(10);
        assert_eq!(o.poll_transmit(), None);
    }

    #[test]
    fn the_window_bounds_what_is_handed_over() {
        let (mut o, now) = outbox(100);
        o.on_connected(2);
        for _ in 0..5 {
            dm(&mut o, "bob", "x", now);
        }
        assert_eq!(write_all(&mut o, 1).len(), 2);
        o.on_puback(1, 0);
        let next = write_all(&mut o, 3);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].1.msgid.as_deref(), Some("phone-ab12-3"));
    }

    #[test]
    fn an_unacknowledged_message_fails_after_resend_for_and_is_not_resent() {
        let (mut o, now) = outbox(10);
        let id = dm(&mut o, "bob", "x", now);
        events(&mut o);
        o.on_tick(now + RESEND - Duration::from_millis(1));
        assert_eq!(events(&mut o), vec![]);
        o.on_tick(now + RESEND);
        let seen = events(&mut o);
        let [OutboxEvent::SendState {
            local_id,
            state: SendState::Failed { reason },
            ..
        }] = seen.as_slice()
        else {
            panic!("one failure: {seen:?}");
        };
        assert_eq!(*local_id, id);
        assert!(reason.contains("resend_for"), "{reason}");
        o.on_connected(10);
        assert_eq!(o.poll_transmit(), None);
        assert!(o.is_empty());
    }

    #[test]
    fn a_late_ack_of_an_attempt_on_the_wire_turns_a_failed_message_sent() {
        let (mut o, now) = outbox(10);
        o.on_connected(10);
        let id = dm(&mut o, "bob", "x", now);
        events(&mut o);
        write_all(&mut o, 9);
        o.on_tick(now + RESEND);
        assert!(matches!(
            events(&mut o).as_slice(),
            [OutboxEvent::SendState {
                state: SendState::Failed { .. },
                ..
            }]
        ));
        o.on_puback(9, 0);
        assert_eq!(events(&mut o), vec![state(id, SendState::Sent)]);
    }

    #[test]
    fn the_outbox_is_bounded() {
        let (mut o, now) = outbox(2);
        dm(&mut o, "bob", "a", now);
        o.request(Request::Recall { id: 1 }, now)
            .expect("room for one request");
        let err = o.send("dm/bob".into(), Bytes::new(), now);
        assert_eq!(err, Err(OutboxFull { max: 2 }));
        assert!(err
            .map(|_| ())
            .unwrap_err()
            .to_string()
            .contains("max_outbox"));
        // Acknowledged entries make room again.
        o.on_connected(10);
        write_all(&mut o, 1);
        o.on_puback(1, 0);
        assert!(o.send("dm/bob".into(), Bytes::new(), now).is_ok());
    }

    #[test]
    fn read_positions_offline_keep_only_the_highest_per_conversation() {
        let (mut o, now) = outbox(10);
        let bob = Conversation::Direct { peer: "bob".into() };
        let g1 = Conversation::Group { gid: "g1".into() };
        for (conversation, seq) in [(&bob, 5), (&g1, 7), (&bob, 9), (&bob, 6)] {
            o.request(
                Request::Read {
                    conversation: conversation.clone(),
                    seq,
                },
                now,
            )
            .expect("room");
        }
        assert_eq!(o.len(), 2);
        o.on_connected(10);
        let sent: Vec<_> = write_all(&mut o, 1)
            .into_iter()
            .map(|(_, t)| (t.topic, t.payload))
            .collect();
        assert_eq!(
            sent,
            vec![
                ("$read/dm/bob".to_string(), Bytes::from_static(b"9")),
                ("$read/group/g1".to_string(), Bytes::from_static(b"7")),
            ]
        );
    }

    #[test]
    fn a_read_position_on_the_wire_is_not_repeated_and_a_higher_one_follows() {
        let (mut o, now) = outbox(10);
        let bob = Conversation::Direct { peer: "bob".into() };
        let read = |seq| Request::Read {
            conversation: bob.clone(),
            seq,
        };
        o.on_connected(10);
        o.request(read(5), now).expect("room");
        write_all(&mut o, 1);
        o.request(read(4), now).expect("room");
        assert_eq!(o.len(), 1, "5 is on its way: 4 adds nothing");
        o.request(read(8), now).expect("room");
        assert_eq!(o.len(), 2);
        // Both unacknowledged at a reconnect: only 8 goes again.
        o.on_disconnected();
        o.on_connected(10);
        let sent = write_all(&mut o, 1);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.payload, Bytes::from_static(b"8"));
    }

    #[test]
    fn read_positions_and_settings_never_expire() {
        let (mut o, now) = outbox(10);
        let read = Request::Read {
            conversation: Conversation::Group { gid: "g".into() },
            seq: 1,
        };
        o.request(read, now).expect("room");
        o.request(Request::Settings { receipts: false }, now)
            .expect("room");
        o.request(Request::Settings { receipts: true }, now)
            .expect("room");
        o.on_tick(now + RESEND * 10);
        assert_eq!(events(&mut o), vec![]);
        assert_eq!(o.len(), 2, "the settings coalesced to the latest");
        o.on_connected(10);
        let payloads: Vec<_> = write_all(&mut o, 1)
            .into_iter()
            .map(|(_, t)| t.payload)
            .collect();
        assert_eq!(
            payloads,
            vec![
                Bytes::from_static(b"1"),
                Bytes::from_static(br#"{"receipts":true}"#)
            ]
        );
    }

    #[test]
    fn requests_have_their_topics_and_payloads() {
        let (mut o, now) = outbox(10);
        o.on_connected(10);
        o.request(Request::Recall { id: 1843 }, now).expect("room");
        o.request(
            Request::GroupReceipts {
                gid: "g1".into(),
                id: 77,
            },
            now,
        )
        .expect("room");
        o.request(Request::Settings { receipts: false }, now)
            .expect("room");
        let sent: Vec<_> = write_all(&mut o, 1)
            .into_iter()
            .map(|(_, t)| (t.topic, t.payload, t.msgid))
            .collect();
        assert_eq!(
            sent,
            vec![
                ("$recall".into(), Bytes::from_static(b"1843"), None),
                ("$receipts/group/g1".into(), Bytes::from_static(b"77"), None),
                (
                    "$settings".into(),
                    Bytes::from_static(br#"{"receipts":false}"#),
                    None
                ),
            ]
        );
    }

    #[test]
    fn a_refused_request_is_reported_with_its_reason() {
        let (mut o, now) = outbox(10);
        o.on_connected(10);
        o.request(Request::Recall { id: 5 }, now).expect("room");
        write_all(&mut o, 1);
        o.on_puback(1, 0x87);
        assert_eq!(
            events(&mut o),
            vec![OutboxEvent::RequestFailed {
                request: Request::Recall { id: 5 },
                reason: "refused by the broker: 0x87 not authorized".into()
            }]
        );
    }

    #[test]
    fn a_recall_expires_after_resend_for() {
        let (mut o, now) = outbox(10);
        o.request(Request::Recall { id: 5 }, now).expect("room");
        o.on_tick(now + RESEND);
        assert!(matches!(
            events(&mut o).as_slice(),
            [OutboxEvent::RequestFailed {
                request: Request::Recall { id: 5 },
                ..
            }]
        ));
    }

    #[test]
    fn a_sync_goes_before_resends_and_only_on_its_connection() {
        let (mut o, now) = outbox(10);
        dm(&mut o, "bob", "x", now);
        o.sync(Some(3));
        assert_eq!(o.len(), 1, "offline: the sync is not kept");
        o.on_connected(10);
        o.sync(Some(3));
        assert_eq!(o.len(), 1, "a sync is not counted against the bound");
        let sent = write_all(&mut o, 1);
        assert_eq!(sent[0].1.topic, "$sync");
        assert_eq!(sent[0].1.payload, Bytes::from_static(b"3"));
        assert_eq!(sent[1].1.topic, "dm/bob");
        o.on_disconnected();
        o.on_connected(10);
        let again = write_all(&mut o, 1);
        assert_eq!(again.len(), 1, "the old sync is not resent");
        o.sync(None);
        let empty = write_all(&mut o, 2);
        assert_eq!(
            empty[0].1.payload,
            Bytes::new(),
            "no seq known: empty payload"
        );
    }

    #[test]
    fn a_transmit_the_client_did_not_take_goes_again() {
        let (mut o, now) = outbox(10);
        o.on_connected(10);
        dm(&mut o, "bob", "x", now);
        let t = o.poll_transmit().expect("one");
        o.unissue(t.key);
        let again = o.poll_transmit().expect("again");
        assert_eq!(again, t);
    }

    #[test]
    fn disconnecting_fails_what_is_left() {
        let (mut o, now) = outbox(10);
        let id = dm(&mut o, "bob", "x", now);
        events(&mut o);
        o.fail_all("client disconnected");
        assert_eq!(
            events(&mut o),
            vec![state(
                id,
                SendState::Failed {
                    reason: "client disconnected".into()
                }
            )]
        );
        assert!(o.is_empty());
    }

    #[test]
    fn reason_names() {
        assert_eq!(reason_name(0x87), "0x87 not authorized");
        assert_eq!(reason_name(0x99), "0x99 payload format invalid");
        assert_eq!(reason_name(0xfe), "0xfe unknown reason");
    }
}
