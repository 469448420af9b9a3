//! A persistent session resumed from the cluster's copy of it (`cluster/session_state.rs`)
//! on a node that does not hold it, or holds an older one: the session is made here as it
//! was stored (offline, with its subscriptions) while what its device missed (inbox
//! entries, kept QoS > 0 messages) is read from the cluster's logs. Meanwhile routing
//! holds its deliveries back, so that the missed messages are queued first and the live
//! ones after them, each once.

use std::collections::HashSet;
use std::sync::Arc;

use tern_storage::{SessionRecord, StoredSession};
use tokio::time::Instant;

use super::core::{Outcome, Router};
use super::peers::Cursors;
use super::routing::{Members, Payload};
use super::sessions::Held;
use crate::protocol::{now_ms, Message};

/// What the reads of an adopted session's backfill covered.
#[derive(Debug, Default)]
pub(crate) struct Covered {
    /// Where the reads ended in each log: held deliveries before these positions were in
    /// them.
    pub(crate) cursors: Cursors,
    /// The messages this node appended (their numbers, see
    /// [`Forwarded::append`](super::core::Forwarded::append)) that the read of the message
    /// stream returned: published here during the adoption, they are also held, with no
    /// stream position to compare.
    pub(crate) appended_here: HashSet<u64>,
}

impl Router {
    /// Makes `session` (the cluster's copy) this node's, offline, holding its deliveries
    /// back until [`backfill`](Self::backfill). A session of the client id here already is
    /// replaced only if `replace` (another node held it since) and it has no connection.
    /// Returns whether the session was made.
    pub(crate) fn adopt(
        &mut self,
        session: StoredSession,
        replace: bool,
        out: &mut Outcome,
    ) -> bool {
        if let Some(id) = self.by_client.get(&session.client_id, &self.sessions) {
            let connected = self
                .sessions
                .get(&id)
                .is_some_and(|entry| entry.connected.is_some());
            if !replace || connected {
                return false;
            }
            // The stale copy's will is not published: the session lives on.
            let _ = self.remove_session(id, out);
        }
        let client_id = session.client_id.clone();
        let record = SessionRecord {
            session,
            first_seq: 0,
            next_seq: 0,
        };
        self.restore_session(record, now_ms(), Instant::now());
        let Some(entry) = self
            .by_client
            .get(&client_id, &self.sessions)
            .and_then(|id| self.sessions.get_mut(&id))
        else {
            return false;
        };
        entry.offline().held = Some(Vec::new());
        entry.store(out);
        true
    }

    /// Drops `client_id`'s adopted session while it still waits for its backfill (what
    /// its device missed could not be read: the CONNECT is refused, and the next one
    /// adopts the cluster's copy again).
    pub(crate) fn abandon(&mut self, client_id: &str, out: &mut Outcome) {
        self.remove_offline(client_id, true, out);
    }

    /// Drops this node's copy of `client_id`'s session, which resumed on another node,
    /// unless it is connected here or being adopted (then it is the newer one). Its will is
    /// not published: the session lives on. Returns whether it was dropped.
    pub(crate) fn forget_moved(&mut self, client_id: &str, out: &mut Outcome) -> bool {
        self.remove_offline(client_id, false, out)
    }

    /// Removes `client_id`'s session if it has no connection and is waiting for its
    /// backfill (`adopting`) or is not; its will is not published (the session lives on
    /// elsewhere, or is adopted again). Returns whether it removed it.
    fn remove_offline(&mut self, client_id: &str, adopting: bool, out: &mut Outcome) -> bool {
        let Some(id) = self.by_client.get(client_id, &self.sessions) else {
            return false;
        };
        let remove = self.sessions.get(&id).is_some_and(|entry| {
            let waiting = entry
                .offline
                .as_ref()
                .is_some_and(|offline| offline.held.is_some());
            entry.connected.is_none() && waiting == adopting
        });
        if remove {
            let _ = self.remove_session(id, out);
        }
        remove
    }

    /// Queues for `client_id`'s adopted session what its device missed (`missed`: inbox
    /// entries, recipient copies in seq order, then kept messages in stream order), then
    /// what routing held back meanwhile but for what `missed` covers (positions before
    /// `covered`'s cursors, or messages published here that the read returned: the device
    /// has those now).
    pub(crate) fn backfill(
        &mut self,
        client_id: &str,
        missed: Vec<Message>,
        covered: &Covered,
        out: &mut Outcome,
    ) {
        let Some(id) = self.by_client.get(client_id, &self.sessions) else {
            return;
        };
        let Some(held) = self
            .sessions
            .get_mut(&id)
            .and_then(|entry| entry.offline.as_mut())
            .and_then(|offline| offline.held.take())
        else {
            return;
        };
        for message in missed {
            self.deliver_to(
                &Arc::new(message),
                Payload::Copied,
                Members::Session(id),
                out,
            );
        }
        for Held { message, append } in held {
            let has_it = match append {
                Some(append) => covered.appended_here.contains(&append),
                None => Cursors::mark(&message).is_some_and(|mark| covered.cursors.passed(mark)),
            };
            if !has_it {
                self.deliver_to(&message, Payload::Copied, Members::Session(id), out);
            }
        }
    }
}
