//! A persistent session's QoS 1/2 messages arrive two ways: live from the router, and
//! from the session's durable queue in storage, where every one of them is too (at its
//! position, `seq`). The connection reads the queue back in pages (the *backlog*) after a
//! reconnect, and again whenever live deliveries were lost for lack of room (the mailbox
//! was *lagged*); meanwhile live stored deliveries are skipped. [`CatchUp`] decides which
//! deliveries go to the session, so that each position is sent once and in order, and
//! marks DUP on those the previous connection had sent.

use rustc_hash::FxHashSet;

use super::message::Delivery;
use super::session::Session;

/// Where the connection stands with its session's durable queue.
#[derive(Debug, Default)]
pub(crate) struct CatchUp {
    /// One past the highest queue position handed to the session.
    next: u64,
    /// Boxed, and only while there is some: most connections never catch up.
    pending: Option<Box<Pending>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// The backlog still to be read: positions from `next` up to (excluding) this one.
    backlog_upto: Option<u64>,
    /// Positions the previous connection sent unacknowledged: resent with DUP.
    sent_before: FxHashSet<u64>,
}

/// One entry of a backlog page, as read from storage.
pub(crate) enum Stored {
    Delivery(Delivery),
    /// Not deliverable (the reason, for the log): it is dequeued.
    Unusable(String),
}

/// What a backlog page did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Page {
    /// Positions to dequeue: entries that could not be delivered.
    pub dequeue: Vec<u64>,
}

impl CatchUp {
    /// A resumed session's: its queue up to `backlog_upto` is read from storage first, and
    /// `sent_before` were sent unacknowledged by the previous connection.
    pub(crate) fn resumed(backlog_upto: Option<u64>, sent_before: Vec<u64>) -> CatchUp {
        let mut catch_up = CatchUp::default();
        if backlog_upto.is_some() || !sent_before.is_empty() {
            catch_up.pending = Some(Box::new(Pending {
                backlog_upto,
                sent_before: sent_before.into_iter().collect(),
            }));
        }
        catch_up
    }

    /// The backlog's end, while there is one to read.
    pub(crate) fn backlog(&self) -> Option<u64> {
        self.pending.as_ref()?.backlog_upto
    }

    /// Where the next backlog page starts.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// The lag is over: the queue is read from where the connection stands up to `upto`
    /// (where the router's live deliveries continue).
    pub(crate) fn resync(&mut self, upto: u64) {
        self.pending.get_or_insert_with(Box::default).backlog_upto = Some(upto);
    }

    fn end_backlog(&mut self) {
        if let Some(pending) = &mut self.pending {
            pending.backlog_upto = None;
        }
        self.drop_empty();
    }

    fn drop_empty(&mut self) {
        self.pending
            .take_if(|p| p.backlog_upto.is_none() && p.sent_before.is_empty());
    }

    /// Whether position `seq` was sent by the previous connection; asked once per position.
    fn sent_before(&mut self, seq: u64) -> bool {
        let Some(pending) = &mut self.pending else {
            return false;
        };
        let sent = pending.sent_before.remove(&seq);
        if sent && pending.sent_before.is_empty() {
            // Its table's capacity goes too, with the box if nothing else is in it.
            pending.sent_before = FxHashSet::default();
            self.drop_empty();
        }
        sent
    }

    /// A live delivery from the router, for a session whose mailbox is `lagged` or not.
    /// Returns it (DUP set if the previous connection sent it) unless it is skipped: read
    /// from storage already, or, while lagged, left for the resync to read.
    pub(crate) fn live(&mut self, mut delivery: Delivery, lagged: bool) -> Option<Delivery> {
        let Some(seq) = delivery.seq else {
            return Some(delivery);
        };
        if seq < self.next || lagged {
            return None;
        }
        self.next = seq + 1;
        delivery.dup = self.sent_before(seq);
        Some(delivery)
    }

    /// The session refused a stored delivery (its queue was full): it is read again from
    /// storage once the queue has room.
    pub(crate) fn refused(&mut self, seq: u64) {
        self.next = seq;
    }

    /// Hands a backlog page to `session`: entries below the backlog's end, in order, until
    /// the session's queue refuses one (read again next time). `complete`: the page is the
    /// last the queue has.
    pub(crate) fn page(
        &mut self,
        entries: Vec<(u64, Stored)>,
        complete: bool,
        session: &mut Session,
        now_ms: u64,
    ) -> Page {
        let mut page = Page::default();
        let Some(upto) = self.backlog() else {
            return page;
        };
        for (seq, stored) in entries {
            if seq >= upto {
                break;
            }
            self.next = seq + 1;
            match stored {
                Stored::Delivery(mut delivery) => {
                    delivery.dup = self.sent_before(seq);
                    if session.deliver(delivery, now_ms).is_err() {
                        // Not while pages are smaller than the queue's room; if it
                        // happens, this entry is read again next time.
                        self.next = seq;
                        return page;
                    }
                }
                Stored::Unusable(why) => {
                    tracing::debug!(seq, "queued message skipped: {why}");
                    page.dequeue.push(seq);
                }
            }
        }
        if complete || self.next >= upto {
            self.end_backlog();
            self.next = self.next.max(upto);
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tern_codec::QoS;

    use super::*;
    use crate::protocol::session::test_session;
    use crate::protocol::Message;

    fn session(max_queued: u32) -> Session {
        test_session(1, 1, max_queued, true)
    }

    fn stored(seq: u64) -> Delivery {
        let message = Message::test("t", QoS::AtLeastOnce, seq.to_string());
        Delivery {
            seq: Some(seq),
            ..Delivery::new(Arc::new(message), QoS::AtLeastOnce)
        }
    }

    fn page(seqs: std::ops::Range<u64>) -> Vec<(u64, Stored)> {
        seqs.map(|seq| (seq, Stored::Delivery(stored(seq))))
            .collect()
    }

    #[test]
    fn a_fresh_session_takes_every_live_delivery_once_and_in_order() {
        let mut c = CatchUp::default();
        assert!(c.live(stored(0), false).is_some());
        assert!(c.live(stored(1), false).is_some());
        assert!(
            c.live(stored(1), false).is_none(),
            "a position goes out once"
        );
        let plain = Delivery {
            seq: None,
            ..stored(9)
        };
        assert!(
            c.live(plain, true).is_some(),
            "a delivery without a position never waits"
        );
        assert!(
            c.live(stored(2), true).is_none(),
            "lagged: left for the resync"
        );
        assert_eq!(c.next(), 2);
    }

    #[test]
    fn a_resumed_session_reads_its_backlog_first_and_marks_what_was_sent_before() {
        let mut c = CatchUp::resumed(Some(4), vec![1, 2]);
        let mut s = session(100);
        assert_eq!(c.backlog(), Some(4));
        c.page(page(0..3), false, &mut s, 0);
        assert_eq!((c.next(), c.backlog()), (3, Some(4)));
        c.page(page(3..4), true, &mut s, 0);
        assert_eq!(c.backlog(), None, "complete");
        // Live deliveries from the backlog's end on; those before it were read already.
        assert!(c.live(stored(3), false).is_none());
        assert!(c.live(stored(4), false).is_some());
        let mut dups = Vec::new();
        while let Some(t) = s.poll_transmit() {
            if let crate::protocol::outgoing::Transmit::Publish(p) = t {
                dups.push((p.message.payload.clone(), p.dup));
                s.handle_packet(
                    tern_codec::Packet::PubAck(tern_codec::PubResponse::new(p.packet_id)),
                    0,
                )
                .expect("ack");
            }
        }
        let dup_of = |seq: u64| {
            dups.iter()
                .find(|(p, _)| *p == seq.to_string())
                .map(|(_, d)| *d)
        };
        assert_eq!(dup_of(0), Some(false));
        assert_eq!(dup_of(1), Some(true));
        assert_eq!(dup_of(2), Some(true));
        assert_eq!(dup_of(3), Some(false));
        assert!(c.pending.is_none(), "nothing left to remember");
    }

    #[test]
    fn a_full_queue_leaves_the_rest_of_the_page_for_later() {
        let mut c = CatchUp::resumed(Some(10), Vec::new());
        let mut s = session(2);
        // One in flight (window 1), two queued, the fourth refused.
        c.page(page(0..10), true, &mut s, 0);
        assert_eq!(c.next(), 3);
        assert_eq!(c.backlog(), Some(10), "not complete: it stopped early");
    }

    #[test]
    fn unusable_entries_are_dequeued_and_the_backlog_ends_at_its_bound() {
        let mut c = CatchUp::resumed(Some(3), Vec::new());
        let mut s = session(100);
        let mut entries = page(0..5);
        entries[1].1 = Stored::Unusable("expired".to_string());
        let done = c.page(entries, false, &mut s, 0);
        assert_eq!(done.dequeue, [1]);
        assert_eq!(
            (c.next(), c.backlog()),
            (3, None),
            "stopped at the bound, not past it"
        );
    }

    #[test]
    fn a_lag_resyncs_from_where_the_connection_stands() {
        let mut c = CatchUp::default();
        let mut s = session(100);
        assert!(c.live(stored(0), false).is_some());
        c.refused(1);
        c.resync(3);
        assert_eq!((c.next(), c.backlog()), (1, Some(3)));
        c.page(page(1..3), true, &mut s, 0);
        assert_eq!((c.next(), c.backlog()), (3, None));
    }
}
