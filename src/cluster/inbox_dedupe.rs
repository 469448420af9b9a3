//! Which entries a user's inbox log already holds, by dedupe id (sender, msgid,
//! recipient), over the dedupe window (`im.dedup_window_secs`): a resend, on any node,
//! of an entry the log holds is dropped, not appended twice.
//!
//! An append carries several entries in one JetStream message, so the stream's own
//! per-message dedupe (`Nats-Msg-Id`) cannot tell entries apart. Instead the node that
//! appends to a log knows the ids the log got within the window: the ones it appended
//! itself, and, when it does not know the log (first append since it started, or after
//! another node appended to it), the ones it read back from the log together with the
//! log's last entry. Every append is conditional on that last entry, so a read that
//! missed an entry makes the append fail and the log be read again.
//!
//! Ids are kept as 64-bit keyed hashes (the key is random per process, so nobody can
//! pick a msgid that collides with someone else's).

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;

/// Hashes dedupe ids, with this process's key.
#[derive(Clone, Default)]
pub(super) struct IdHasher(RandomState);

impl IdHasher {
    pub(super) fn hash(&self, id: &[u8]) -> u64 {
        self.0.hash_one(id)
    }
}

/// The ids one log got within the window, oldest first.
#[derive(Debug, Default)]
pub(super) struct RecentIds {
    /// (id hash, when it was learnt, in ms since the Unix epoch), oldest first.
    order: VecDeque<(u64, u64)>,
    /// Keys are hashes already: FNV over their 8 bytes is all the spreading they need.
    held: HashSet<u64, fnv::FnvBuildHasher>,
}

impl RecentIds {
    pub(super) fn contains(&self, id: u64) -> bool {
        self.held.contains(&id)
    }

    /// Remembers `id`, learnt at `at_ms`.
    pub(super) fn insert(&mut self, id: u64, at_ms: u64) {
        if self.held.insert(id) {
            self.order.push_back((id, at_ms));
        }
    }

    /// Forgets what was learnt before `before_ms`.
    pub(super) fn expire(&mut self, before_ms: u64) {
        while let Some(&(id, at)) = self.order.front() {
            if at >= before_ms {
                break;
            }
            self.order.pop_front();
            self.held.remove(&id);
        }
    }

    /// Forgets the `n` oldest ids (memory is bounded over all logs).
    pub(super) fn forget_oldest(&mut self, n: usize) {
        for _ in 0..n {
            let Some((id, _)) = self.order.pop_front() else {
                return;
            };
            self.held.remove(&id);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_held_until_they_expire_or_are_forgotten() {
        let hasher = IdHasher::default();
        let (a, b, c) = (hasher.hash(b"a"), hasher.hash(b"b"), hasher.hash(b"c"));
        let mut recent = RecentIds::default();
        recent.insert(a, 10);
        recent.insert(b, 20);
        recent.insert(a, 30);
        recent.insert(c, 30);
        assert_eq!(recent.len(), 3);
        assert!(recent.contains(a) && recent.contains(b) && recent.contains(c));

        recent.expire(20);
        assert!(!recent.contains(a));
        assert!(recent.contains(b) && recent.contains(c));

        recent.forget_oldest(1);
        assert!(!recent.contains(b));
        assert!(recent.contains(c));
        recent.forget_oldest(5);
        assert_eq!(recent.len(), 0);
    }

    #[test]
    fn one_process_hashes_an_id_the_same_way_twice() {
        let hasher = IdHasher::default();
        assert_eq!(
            hasher.hash(b"5:alice2:m1bob"),
            hasher.clone().hash(b"5:alice2:m1bob")
        );
        assert_ne!(
            hasher.hash(b"5:alice2:m1bob"),
            hasher.hash(b"5:alice2:m2bob")
        );
    }
}
