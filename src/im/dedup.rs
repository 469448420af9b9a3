//! The duplicate window: a chat client that resends after a lost acknowledgement does so on
//! a new connection with a new packet id, so only its own message id (the MQTT 5 user
//! property `msgid`) can tell the resend. The broker remembers (sender, msgid) pairs for a
//! bounded time and count; a repeat inside the window is acknowledged and dropped.
//!
//! Held in memory by the router: a broker restart forgets the window (documented).

use std::collections::{HashSet, VecDeque};

/// Bounded set of recently seen (sender, msgid) pairs.
pub struct DedupWindow {
    seen: HashSet<(String, String)>,
    /// Insertion order with each pair's expiry (ms), oldest first.
    order: VecDeque<(u64, (String, String))>,
    window_ms: u64,
    max_entries: usize,
}

impl DedupWindow {
    pub fn new(window_ms: u64, max_entries: usize) -> DedupWindow {
        DedupWindow {
            seen: HashSet::new(),
            order: VecDeque::new(),
            window_ms,
            max_entries,
        }
    }

    /// Records the pair; returns true if it was already inside the window (a duplicate).
    pub fn check(&mut self, sender: &str, msgid: &str, now_ms: u64) -> bool {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now_ms && self.order.len() < self.max_entries.max(1) {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
        if self.max_entries == 0 || self.window_ms == 0 {
            return false;
        }
        let key = (sender.to_string(), msgid.to_string());
        if self.seen.contains(&key) {
            return true;
        }
        self.seen.insert(key.clone());
        self.order
            .push_back((now_ms.saturating_add(self.window_ms), key));
        false
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_inside_the_window_are_duplicates() {
        let mut w = DedupWindow::new(1_000, 100);
        assert!(!w.check("alice", "m1", 0));
        assert!(w.check("alice", "m1", 500));
        assert!(
            !w.check("bob", "m1", 500),
            "another sender's id is not a repeat"
        );
        assert!(!w.check("alice", "m1", 1_000), "expired from the window");
    }

    #[test]
    fn the_window_is_bounded_by_count() {
        let mut w = DedupWindow::new(60_000, 3);
        for id in ["a", "b", "c", "d"] {
            assert!(!w.check("u", id, 0));
        }
        assert!(w.len() <= 3);
        assert!(!w.check("u", "a", 1), "the oldest entry was evicted");
    }

    #[test]
    fn a_zero_window_keeps_nothing() {
        let mut w = DedupWindow::new(0, 10);
        assert!(!w.check("u", "a", 0));
        assert!(!w.check("u", "a", 0));
        assert!(w.is_empty());
    }
}
