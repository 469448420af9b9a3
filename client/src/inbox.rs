//! The seq tracker: which inbox entries reach the app, in what order, and when to ask the
//! broker for a `$sync` (docs/chat.md, "Keeping up"). No I/O and no clock: the driver feeds
//! it entries, end markers, connection changes and `now`, and drains [`Output`]s.
//!
//! - It keeps `next`, the seq it delivers next (`last` = `next - 1`, what the cursor file
//!   stores). An entry below `next` is a duplicate and is dropped; `next` itself is
//!   delivered; one above is held and a `$sync` from `last` is asked for (one at a time).
//! - The end marker settles a range: every seq up to `next - 1` of the marker (or up to its
//!   `last` when `more`) was either replayed before the marker or is gone for good
//!   (trimmed, deleted by retention). Held entries in that range are delivered in order and
//!   the holes are reported as [`Output::Gap`]s, so the tracker never waits for what cannot
//!   come.
//! - Before the first marker with no cursor, nothing is known: live messages may arrive
//!   before the replay of older ones, so everything is held until the marker says where
//!   the log starts (its first replayed entry); what lies before that is not reported.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::events::SyncEnd;

/// How long an unanswered `$sync` is waited for before it is asked again (the broker sends
/// no end marker when its read fails; docs/chat.md: "the device ... asks again").
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// What the tracker asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<T> {
    /// Hand this entry to the app: seqs strictly increasing, each once.
    Deliver { seq: u64, item: T },
    /// Publish `$sync` with `after` (empty payload for `None`).
    Sync { after: Option<u64> },
    /// Seqs `from..=to` will never come.
    Gap { from: u64, to: u64 },
    /// A replay ended without `more`: caught up to `next - 1`.
    Synced { next: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    sent_at: Instant,
}

/// Per-user seq tracking for one device; `T` is what is delivered (an event).
#[derive(Debug)]
pub struct SeqTracker<T> {
    /// The seq delivered next; `None` until the first end marker when no cursor was given.
    next: Option<u64>,
    held: BTreeMap<u64, T>,
    max_held: usize,
    /// Held entries were dropped for room since the last `$sync` was asked.
    overflowed: bool,
    sync: Option<Outstanding>,
    connected: bool,
    duplicates: u64,
    out: VecDeque<Output<T>>,
}

impl<T> SeqTracker<T> {
    /// A tracker resuming after `last` (from the cursor file), holding at most `max_held`
    /// entries (at least 1).
    pub fn new(last: Option<u64>, max_held: usize) -> Self {
        SeqTracker {
            next: last.map(|l| l.saturating_add(1)),
            held: BTreeMap::new(),
            max_held: max_held.max(1),
            overflowed: false,
            sync: None,
            connected: false,
            duplicates: 0,
            out: VecDeque::new(),
        }
    }

    /// The highest seq handled (`None`: none yet); what `$sync` and the cursor file carry.
    pub fn last(&self) -> Option<u64> {
        self.next.and_then(|n| n.checked_sub(1))
    }

    /// Entries dropped as duplicates so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Entries held back, waiting for a gap to fill.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether a `$sync` is waiting for its end marker.
    pub fn sync_outstanding(&self) -> bool {
        self.sync.is_some()
    }

    /// A connection is up: sync from `last` (every (re)connect, docs/chat.md).
    pub fn on_connected(&mut self, now: Instant) {
        self.connected = true;
        self.sync = None;
        self.request_sync(now);
    }

    /// The connection is gone, and with it any replay in progress.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        self.sync = None;
    }

    /// A numbered inbox entry arrived (live or replayed: both are keyed by seq).
    pub fn on_entry(&mut self, seq: u64, item: T, now: Instant) {
        match self.next {
            Some(next) if seq < next => self.duplicates += 1,
            Some(next) if seq == next => {
                self.deliver(seq, item);
                self.drain();
            }
            _ => {
                // A gap, or nothing known yet: hold it until the gap fills or a marker
                // settles the range.
                self.hold(seq, item);
                self.request_sync(now);
            }
        }
    }

    /// The end marker of a replay arrived.
    pub fn on_sync_end(&mut self, end: SyncEnd, now: Instant) {
        self.sync = None;
        // A marker answering a request from further on than what this tracker has (it
        // cannot be ours) settles nothing: the seqs in between were not replayed.
        let answers_from_here = match (end.after, self.last()) {
            (None, _) => true,
            (Some(after), Some(last)) => after <= last,
            (Some(_), None) => false,
        };
        if answers_from_here {
            let settled = if end.more {
                end.last
            } else {
                end.next.checked_sub(1)
            };
            match (self.next, settled) {
                (Some(_), Some(upto)) => self.settle(upto),
                (None, Some(upto)) => {
                    // The log starts at the first entry replayed; what is before it is
                    // not this device's history to report.
                    let start = self
                        .held
                        .first_key_value()
                        .map(|(&k, _)| k)
                        .filter(|&k| k <= upto)
                        .unwrap_or(upto.saturating_add(1));
                    self.next = Some(start);
                    self.settle(upto);
                }
                (None, None) if !end.more => {
                    // `next` 0: the inbox has never had an entry; the first will be 0.
                    self.next = Some(0);
                    self.drain();
                }
                _ => {}
            }
        }
        if !end.more {
            self.out.push_back(Output::Synced { next: end.next });
        }
        if end.more || !self.held.is_empty() || self.overflowed || self.next.is_none() {
            // More to replay, a gap that opened after the replay read the log, or entries
            // dropped for room: ask again from where this device is.
            self.request_sync(now);
        }
    }

    /// Time passed: an unanswered `$sync` is asked again after [`SYNC_TIMEOUT`].
    pub fn on_tick(&mut self, now: Instant) {
        if let Some(sync) = self.sync {
            if now.saturating_duration_since(sync.sent_at) >= SYNC_TIMEOUT {
                self.sync = None;
                self.request_sync(now);
            }
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output<T>> {
        self.out.pop_front()
    }

    fn request_sync(&mut self, now: Instant) {
        if !self.connected || self.sync.is_some() {
            return;
        }
        self.sync = Some(Outstanding { sent_at: now });
        self.overflowed = false;
        self.out.push_back(Output::Sync { after: self.last() });
    }

    fn hold(&mut self, seq: u64, item: T) {
        if self.held.contains_key(&seq) {
            self.duplicates += 1;
            return;
        }
        if self.held.len() >= self.max_held {
            // Keep the lowest seqs (delivered first); the next sync fetches the rest again.
            self.overflowed = true;
            match self.held.last_key_value() {
                Some((&highest, _)) if highest > seq => {
                    self.held.remove(&highest);
                }
                _ => return,
            }
        }
        self.held.insert(seq, item);
    }

    fn deliver(&mut self, seq: u64, item: T) {
        self.next = Some(seq.saturating_add(1));
        self.out.push_back(Output::Deliver { seq, item });
    }

    /// Everything up to `upto` is final: deliver what is held, report the holes.
    fn settle(&mut self, upto: u64) {
        while let Some(next) = self.next.filter(|&n| n <= upto) {
            match self.held.first_key_value().map(|(&k, _)| k) {
                Some(seq) if seq <= upto => {
                    if seq > next {
                        self.out.push_back(Output::Gap {
                            from: next,
                            to: seq - 1,
                        });
                    }
                    if let Some(item) = self.held.remove(&seq) {
                        self.deliver(seq, item);
                    }
                }
                _ => {
                    self.out.push_back(Output::Gap {
                        from: next,
                        to: upto,
                    });
                    self.next = Some(upto.saturating_add(1));
                }
            }
        }
        self.drain();
    }

    /// Delivers held entries while they follow on; drops held ones already passed.
    fn drain(&mut self) {
        while let Some(next) = self.next {
            let Some(entry) = self.held.first_entry() else {
                return;
            };
            let seq = *entry.key();
            if seq < next {
                entry.remove();
                self.duplicates += 1;
            } else if seq == next {
                let item = entry.remove();
                self.deliver(seq, item);
            } else {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(after: Option<u64>, last: Option<u64>, next: u64, more: bool) -> SyncEnd {
        SyncEnd {
            after,
            last,
            next,
            more,
        }
    }

    /// A connected tracker after `last`, its first sync already drained.
    fn tracker(last: Option<u64>) -> (SeqTracker<&'static str>, Instant) {
        let now = Instant::now();
        let mut t = SeqTracker::new(last, 100);
        t.on_connected(now);
        assert_eq!(outputs(&mut t), vec![Output::Sync { after: last }]);
        (t, now)
    }

    fn outputs<T>(t: &mut SeqTracker<T>) -> Vec<Output<T>> {
        std::iter::from_fn(|| t.poll_output()).collect()
    }

    fn delivered(seqs: &[u64]) -> Vec<Output<&'static str>> {
        seqs.iter()
            .map(|&seq| Output::Deliver { seq, item: "m" })
            .collect()
    }

    #[test]
    fn in_order_entries_are_delivered_and_last_advances() {
        let (mut t, now) = tracker(Some(9));
        for seq in 10..13 {
            t.on_entry(seq, "m", now);
        }
        assert_eq!(outputs(&mut t), delivered(&[10, 11, 12]));
        assert_eq!(t.last(), Some(12));
    }

    #[test]
    fn duplicates_are_dropped_by_seq_and_counted() {
        let (mut t, now) = tracker(Some(9));
        t.on_entry(10, "m", now);
        t.on_entry(10, "m", now);
        t.on_entry(3, "m", now);
        assert_eq!(outputs(&mut t), delivered(&[10]));
        assert_eq!(t.duplicates(), 2);
    }

    #[test]
    fn a_gap_holds_the_entry_and_asks_one_sync_from_last() {
        let (mut t, now) = tracker(Some(9));
        t.on_sync_end(end(Some(9), None, 10, false), now);
        assert_eq!(outputs(&mut t), vec![Output::Synced { next: 10 }]);

        t.on_entry(12, "m", now);
        t.on_entry(13, "m", now);
        assert_eq!(outputs(&mut t), vec![Output::Sync { after: Some(9) }]);
        assert_eq!(t.held(), 2);
        assert!(t.sync_outstanding());

        // The replay fills the gap; held entries follow in order.
        t.on_entry(10, "m", now);
        t.on_entry(11, "m", now);
        t.on_entry(12, "m", now); // replayed copy of a held one
        assert_eq!(outputs(&mut t), delivered(&[10, 11, 12, 13]));
        t.on_sync_end(end(Some(9), Some(12), 14, false), now);
        assert_eq!(outputs(&mut t), vec![Output::Synced { next: 14 }]);
        assert_eq!(t.last(), Some(13));
        assert_eq!(t.held(), 0);
        assert!(!t.sync_outstanding());
    }

    #[test]
    fn a_second_gap_during_a_sync_asks_nothing_more_until_the_end_marker() {
        let (mut t, now) = tracker(Some(0));
        t.on_entry(5, "m", now);
        t.on_entry(9, "m", now);
        assert_eq!(outputs(&mut t), vec![]);
        // The marker came from a replay read before 5 and 9 were appended, and the
        // replay had 1..=4.
        for seq in 1..5 {
            t.on_entry(seq, "m", now);
        }
        t.on_sync_end(end(Some(0), Some(4), 5, false), now);
        let mut expected = delivered(&[1, 2, 3, 4, 5]);
        expected.push(Output::Synced { next: 5 });
        // 9 is still held behind 6..=8: ask again, from 5.
        expected.push(Output::Sync { after: Some(5) });
        assert_eq!(outputs(&mut t), expected);
    }

    #[test]
    fn more_asks_again_from_the_last_replayed() {
        let (mut t, now) = tracker(Some(9));
        for seq in 10..=12 {
            t.on_entry(seq, "m", now);
        }
        t.on_sync_end(end(Some(9), Some(12), 40, true), now);
        let mut expected = delivered(&[10, 11, 12]);
        expected.push(Output::Sync { after: Some(12) });
        assert_eq!(outputs(&mut t), expected, "no Synced while there is more");
        for seq in 13..=39 {
            t.on_entry(seq, "m", now);
        }
        t.on_sync_end(end(Some(12), Some(39), 40, false), now);
        let out = outputs(&mut t);
        assert_eq!(out.last(), Some(&Output::Synced { next: 40 }));
        assert_eq!(t.last(), Some(39));
    }

    #[test]
    fn a_trimmed_log_skips_forward_and_reports_the_gap() {
        // The cursor says 10; the broker's log now starts at 50.
        let (mut t, now) = tracker(Some(10));
        for seq in 50..=52 {
            t.on_entry(seq, "m", now);
        }
        assert_eq!(outputs(&mut t), vec![], "held: 11..=49 may still come");
        t.on_sync_end(end(Some(10), Some(52), 53, false), now);
        let mut expected = vec![Output::Gap { from: 11, to: 49 }];
        expected.extend(delivered(&[50, 51, 52]));
        expected.push(Output::Synced { next: 53 });
        assert_eq!(outputs(&mut t), expected);
        assert_eq!(t.last(), Some(52));
    }

    #[test]
    fn a_log_trimmed_to_nothing_skips_to_next() {
        let (mut t, now) = tracker(Some(10));
        t.on_sync_end(end(Some(10), None, 61, false), now);
        assert_eq!(
            outputs(&mut t),
            vec![
                Output::Gap { from: 11, to: 60 },
                Output::Synced { next: 61 }
            ]
        );
        assert_eq!(t.last(), Some(60));
        t.on_entry(61, "m", now);
        assert_eq!(outputs(&mut t), delivered(&[61]));
    }

    #[test]
    fn holes_inside_a_replay_are_gaps_too() {
        // Retention deleted 12's message: the replay skips it.
        let (mut t, now) = tracker(Some(10));
        t.on_entry(11, "m", now);
        t.on_entry(13, "m", now);
        t.on_sync_end(end(Some(10), Some(13), 14, false), now);
        let mut expected = delivered(&[11]);
        expected.push(Output::Gap { from: 12, to: 12 });
        expected.extend(delivered(&[13]));
        expected.push(Output::Synced { next: 14 });
        assert_eq!(outputs(&mut t), expected);
    }

    #[test]
    fn with_more_only_the_replayed_range_is_settled() {
        let (mut t, now) = tracker(Some(10));
        t.on_entry(20, "m", now);
        t.on_entry(30, "m", now);
        // Replayed 20 only (11..=19 trimmed), limit reached: 21.. not settled yet.
        t.on_sync_end(end(Some(10), Some(20), 100, true), now);
        let mut expected = vec![Output::Gap { from: 11, to: 19 }];
        expected.extend(delivered(&[20]));
        expected.push(Output::Sync { after: Some(20) });
        assert_eq!(outputs(&mut t), expected);
        assert_eq!(t.held(), 1, "30 waits for the next page");
    }

    #[test]
    fn first_connect_without_cursor_holds_live_messages_until_the_log_start_is_known() {
        let (mut t, now) = tracker(None);
        // A live message overtakes the replay of the older ones.
        t.on_entry(7, "m", now);
        t.on_entry(3, "m", now);
        t.on_entry(4, "m", now);
        assert_eq!(
            outputs(&mut t),
            vec![],
            "nothing delivered before the marker"
        );
        t.on_entry(5, "m", now);
        t.on_entry(6, "m", now);
        t.on_sync_end(end(None, Some(6), 7, false), now);
        let mut expected = delivered(&[3, 4, 5, 6, 7]);
        expected.push(Output::Synced { next: 7 });
        assert_eq!(
            outputs(&mut t),
            expected,
            "no Gap for what was before the log start"
        );
        assert_eq!(t.last(), Some(7));
    }

    #[test]
    fn first_connect_to_an_empty_inbox_delivers_the_first_message_after() {
        let (mut t, now) = tracker(None);
        t.on_sync_end(end(None, None, 0, false), now);
        assert_eq!(outputs(&mut t), vec![Output::Synced { next: 0 }]);
        assert_eq!(t.last(), None);
        t.on_entry(0, "m", now);
        assert_eq!(outputs(&mut t), delivered(&[0]));
        assert_eq!(t.last(), Some(0));
    }

    #[test]
    fn first_connect_to_a_trimmed_empty_log_starts_at_next() {
        let (mut t, now) = tracker(None);
        t.on_sync_end(end(None, None, 500, false), now);
        assert_eq!(outputs(&mut t), vec![Output::Synced { next: 500 }]);
        assert_eq!(t.last(), Some(499));
    }

    #[test]
    fn a_full_queue_marker_with_nothing_replayed_asks_again() {
        let (mut t, now) = tracker(None);
        t.on_sync_end(end(None, None, 50, true), now);
        assert_eq!(outputs(&mut t), vec![Output::Sync { after: None }]);
    }

    #[test]
    fn the_held_buffer_is_bounded_and_a_sync_fetches_what_was_dropped() {
        let now = Instant::now();
        let mut t = SeqTracker::new(Some(0), 3);
        t.on_connected(now);
        t.on_sync_end(end(Some(0), None, 1, false), now);
        outputs(&mut t);
        for seq in [5, 4, 9, 3, 2] {
            t.on_entry(seq, "m", now);
        }
        assert_eq!(t.held(), 3);
        assert_eq!(outputs(&mut t), vec![Output::Sync { after: Some(0) }]);
        // The replay brings 1; 2..=4 were kept (lowest first), 5 and 9 were dropped.
        t.on_entry(1, "m", now);
        assert_eq!(outputs(&mut t), delivered(&[1, 2, 3, 4]));
        t.on_sync_end(end(Some(0), Some(1), 2, false), now);
        assert_eq!(
            outputs(&mut t),
            vec![Output::Synced { next: 2 }, Output::Sync { after: Some(4) }],
            "dropped entries are fetched again"
        );
    }

    #[test]
    fn a_reconnect_syncs_from_last_and_keeps_what_is_held() {
        let (mut t, now) = tracker(Some(4));
        t.on_entry(7, "m", now);
        t.on_disconnected();
        assert!(!t.sync_outstanding());
        t.on_entry(8, "m", now); // a late event of the old connection
        assert_eq!(outputs(&mut t), vec![], "no sync while offline");
        t.on_connected(now);
        assert_eq!(outputs(&mut t), vec![Output::Sync { after: Some(4) }]);
        for seq in 5..=6 {
            t.on_entry(seq, "m", now);
        }
        assert_eq!(outputs(&mut t), delivered(&[5, 6, 7, 8]));
    }

    #[test]
    fn an_unanswered_sync_is_asked_again_after_the_timeout() {
        let (mut t, now) = tracker(Some(1));
        t.on_tick(now + SYNC_TIMEOUT / 2);
        assert_eq!(outputs(&mut t), vec![]);
        t.on_tick(now + SYNC_TIMEOUT);
        assert_eq!(outputs(&mut t), vec![Output::Sync { after: Some(1) }]);
    }

    #[test]
    fn a_marker_for_a_request_from_further_on_settles_nothing() {
        let (mut t, now) = tracker(Some(3));
        t.on_entry(10, "m", now);
        t.on_sync_end(end(Some(8), Some(9), 11, false), now);
        assert_eq!(
            outputs(&mut t),
            vec![Output::Synced { next: 11 }, Output::Sync { after: Some(3) }]
        );
        assert_eq!(t.last(), Some(3));
    }
}
