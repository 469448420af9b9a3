//! The router's indexes of its sessions: by client id ([`ClientIndex`]) and by user
//! ([`UserIndex`]). Every session has one entry in each (a user's sessions share one), so
//! they are kept lean: the tables hold session ids only, and compare the key a lookup
//! brings with the name the session's own [`SessionEntry`] holds, rather than keeping a second
//! handle on every client id and user name.

use std::hash::BuildHasher;

use arcstr::ArcStr;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::sessions::SessionEntry;
use crate::protocol::SessionId;

/// The router's sessions by id.
pub(super) type Sessions = FxHashMap<SessionId, Box<SessionEntry>>;

/// Session ids by client id. The table holds only the ids: a lookup compares the client id
/// with the session's own [`SessionEntry::client_id`], so the id is not kept twice (a
/// `HashMap<ByteString, SessionId>` entry was 40 bytes a session). Every id in the index
/// has its entry in the sessions map, except the one being inserted.
#[derive(Default)]
pub(super) struct ClientIndex {
    table: hashbrown::HashTable<SessionId>,
    /// SipHash with random keys: peers choose client ids.
    hasher: std::hash::RandomState,
}

impl ClientIndex {
    pub(super) fn get(&self, client_id: &str, sessions: &Sessions) -> Option<SessionId> {
        let hash = self.hasher.hash_one(client_id);
        self.table
            .find(hash, |id| names(sessions, *id, client_id))
            .copied()
    }

    /// `client_id`'s session is `id` from now on.
    pub(super) fn insert(&mut self, client_id: &str, id: SessionId, sessions: &Sessions) {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(client_id);
        let rehash = |other: &SessionId| {
            // Every other id has its entry (see the type's docs).
            sessions
                .get(other)
                .map_or(0, |entry| hasher.hash_one(&*entry.client_id))
        };
        match self
            .table
            .entry(hash, |other| names(sessions, *other, client_id), rehash)
        {
            hashbrown::hash_table::Entry::Occupied(mut entry) => *entry.get_mut() = id,
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert(id);
            }
        }
    }

    /// Removes `client_id`'s entry if it is session `id` (another session may have
    /// taken the client id over since).
    pub(super) fn remove(&mut self, client_id: &str, id: SessionId) {
        let hash = self.hasher.hash_one(client_id);
        if let Ok(entry) = self.table.find_entry(hash, |other| *other == id) {
            entry.remove();
        }
    }
}

/// Whether session `id` is the one of `client_id`.
fn names(sessions: &Sessions, id: SessionId, client_id: &str) -> bool {
    sessions
        .get(&id)
        .is_some_and(|entry| &*entry.client_id == client_id)
}

/// Each user's sessions, by user name. The table holds only the sets: a lookup compares
/// the name with the user of the set's oldest session ([`SessionEntry::user`]), so the name is
/// not a key of its own (a `HashMap<Arc<str>, SessionSet>` entry was 40 bytes, 16 of them
/// the key). A set is never empty, and its sessions have their slots in the sessions map,
/// all with that user (the router refuses a client id of another user's session).
#[derive(Default)]
pub(super) struct UserIndex {
    table: hashbrown::HashTable<SessionSet>,
    /// SipHash with random keys: peers choose user names.
    hasher: std::hash::RandomState,
}

impl UserIndex {
    pub(super) fn get(&self, user: &str, sessions: &Sessions) -> Option<&SessionSet> {
        let hash = self.hasher.hash_one(user);
        self.table.find(hash, |set| owned_by(sessions, set, user))
    }

    /// The user's name as its sessions hold it (one allocation per user).
    pub(super) fn name<'a>(&self, user: &str, sessions: &'a Sessions) -> Option<&'a ArcStr> {
        let oldest = self.get(user, sessions)?.first()?;
        Some(&sessions.get(&oldest)?.user)
    }

    /// Adds session `id` to its user's set; its entry, with `user`, is in `sessions`.
    pub(super) fn insert(&mut self, user: &str, id: SessionId, sessions: &Sessions) {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(user);
        let rehash = |set: &SessionSet| {
            set.first()
                .and_then(|oldest| sessions.get(&oldest))
                .map_or(0, |entry| hasher.hash_one(&*entry.user))
        };
        match self
            .table
            .entry(hash, |set| owned_by(sessions, set, user), rehash)
        {
            hashbrown::hash_table::Entry::Occupied(mut entry) => entry.get_mut().insert(id),
            hashbrown::hash_table::Entry::Vacant(entry) => {
                let mut set = SessionSet::default();
                set.insert(id);
                entry.insert(set);
            }
        }
    }

    /// Removes session `id` from `user`'s set (its entry may be gone already), and the set
    /// once empty.
    pub(super) fn remove(&mut self, user: &str, id: SessionId) {
        let hash = self.hasher.hash_one(user);
        if let Ok(mut entry) = self.table.find_entry(hash, |set| set.contains(id)) {
            entry.get_mut().remove(id);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }
}

/// Whether `set` holds `user`'s sessions.
fn owned_by(sessions: &Sessions, set: &SessionSet, user: &str) -> bool {
    set.first()
        .and_then(|oldest| sessions.get(&oldest))
        .is_some_and(|entry| &*entry.user == user)
}

/// A user's sessions, in id order (the oldest first). A sorted vector rather than a
/// `BTreeSet`: a user has a few sessions (`im.max_devices_per_user`), and a B-tree's first
/// node holds room for 11, about 100 bytes for the one session most users have. Two ids
/// fit inline (a phone and a desktop), in the 24 bytes a `Vec` takes anyway: a `Vec`'s
/// first allocation was another 48 bytes for each user.
#[derive(Debug, Clone, Default)]
pub(super) struct SessionSet(SmallVec<[SessionId; 2]>);

impl SessionSet {
    pub(super) fn insert(&mut self, id: SessionId) {
        if let Err(at) = self.0.binary_search(&id) {
            self.0.insert(at, id);
        }
    }

    pub(super) fn remove(&mut self, id: SessionId) {
        if let Ok(at) = self.0.binary_search(&id) {
            self.0.remove(at);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The oldest session.
    fn first(&self) -> Option<SessionId> {
        self.0.first().copied()
    }

    fn contains(&self, id: SessionId) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &SessionId> {
        self.0.iter()
    }
}

impl IntoIterator for SessionSet {
    type Item = SessionId;
    type IntoIter = smallvec::IntoIter<[SessionId; 2]>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tern_codec::Protocol;

    fn entry(client_id: &str, user: &ArcStr) -> Box<SessionEntry> {
        Box::new(SessionEntry {
            client_id: ArcStr::from(client_id),
            user: user.clone(),
            protocol: Protocol::V311,
            expiry_secs: 0,
            persistent: false,
            connected: None,
            subscriptions: BTreeMap::new(),
            next_seq: 0,
            offline: None,
        })
    }

    #[test]
    fn a_session_set_keeps_ids_once_and_in_order() {
        let mut set = SessionSet::default();
        for id in [7, 3, 9, 3, 1] {
            set.insert(id);
        }
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [1, 3, 7, 9]);
        assert_eq!(set.first(), Some(1));
        assert!(set.contains(7) && !set.contains(4));
        set.remove(3);
        set.remove(4);
        assert_eq!(set.len(), 3);
        assert_eq!(set.into_iter().collect::<Vec<_>>(), [1, 7, 9]);
    }

    #[test]
    fn users_are_found_by_name_as_the_index_grows_and_shrinks() {
        let mut sessions = Sessions::default();
        let mut index = UserIndex::default();
        let users: Vec<ArcStr> = (0..300)
            .map(|i| ArcStr::from(format!("user-{i}")))
            .collect();
        // One to three devices each, interleaved: the table grows (and rehashes through
        // the slots) while sets gain members.
        let mut next_id = 0;
        for round in 0..3 {
            for (i, user) in users.iter().enumerate() {
                if i % 3 >= round {
                    sessions.insert(next_id, entry(&format!("{user}/{round}"), user));
                    index.insert(user, next_id, &sessions);
                    next_id += 1;
                }
            }
        }
        for (i, user) in users.iter().enumerate() {
            let set = index.get(user, &sessions).expect("found");
            assert_eq!(set.len(), i % 3 + 1, "{user}");
            assert!(set.iter().all(|id| sessions[id].user == *user));
            let name = index.name(user, &sessions).expect("named");
            assert!(ArcStr::ptr_eq(name, user), "the slots' own name");
        }
        assert!(index.get("nobody", &sessions).is_none());
        // Every user loses its oldest device; those with one are gone from the index.
        for user in &users {
            let oldest = index.get(user, &sessions).and_then(SessionSet::first);
            let oldest = oldest.expect("a set is never empty");
            sessions.remove(&oldest);
            index.remove(user, oldest);
        }
        for (i, user) in users.iter().enumerate() {
            let left = index.get(user, &sessions).map_or(0, SessionSet::len);
            assert_eq!(left, i % 3, "{user}");
        }
    }
}
