//! `$sync`: a device asks for the entries of its user's inbox log after the last seq it has,
//! and they are replayed to that connection alone, in order, each on its inbox topic at
//! QoS 1 at most, then the user's read marks and receipts (see [`super::reads`]), then the
//! end marker on `inbox/{user}/sync` (see [`super::inbox::sync_end`]). The connection
//! reads the log; this decides what goes out.

use std::sync::Arc;

use tern_codec::QoS;
use tern_storage::Mark;

use super::inbox::{for_recipient, sync_end};
use super::reads::notice;
use crate::protocol::session::Session;
use crate::protocol::{Delivery, Message};

/// One entry of the inbox log, as read for a replay.
pub struct LogEntry {
    pub seq: u64,
    /// `ROLE_RECEIVED` or `ROLE_SENT` (see `super::topics`).
    pub role: u8,
    /// The stored message's id, where the node has ids (not in a cluster).
    pub id: Option<u64>,
    /// The stored chat message; `None` once retention deleted it.
    pub message: Option<Message>,
}

impl LogEntry {
    /// The entry as `user`'s devices get it (on the inbox topic, with its seq); `None`
    /// once retention deleted its message, or for what is not a chat message.
    pub fn copy_for(self, user: &str) -> Option<Message> {
        let message = self.message?;
        for_recipient(&message, user, self.role, self.seq, self.id)
    }
}

/// What one `$sync` request read.
pub struct SyncRead {
    /// The seq the request asked to follow.
    pub after: Option<u64>,
    /// Entries after it, at most the replay limit.
    pub entries: Vec<LogEntry>,
    /// The read came back with the limit: there may be more.
    pub full: bool,
    /// The seq the user's next message will get.
    pub next: u64,
    /// The user's read marks and receipts, by name.
    pub marks: Vec<(String, Mark)>,
}

/// Replays a sync read into `session`: the entries, then the marks, then the end marker.
/// The replay stops where the session's queue has room for the marker alone; the marker
/// then says there is more, from the last seq replayed (marks come with the last page,
/// as many as fit).
pub fn replay(session: &mut Session, user: &str, read: SyncRead, now_ms: u64) {
    let SyncRead {
        after,
        entries,
        full,
        next,
        marks,
    } = read;
    let mut last = None;
    let mut more = full;
    for entry in entries {
        // Deleted by retention, or not a chat message: nothing to replay.
        let seq = entry.seq;
        let Some(copy) = entry.copy_for(user) else {
            continue;
        };
        if session.room() < 2 {
            more = true;
            break;
        }
        let qos = copy.qos.min(QoS::AtLeastOnce);
        if session
            .deliver(Delivery::new(Arc::new(copy), qos), now_ms)
            .is_err()
        {
            more = true;
            break;
        }
        last = Some(seq);
    }
    if !more {
        for (name, mark) in marks {
            // Best effort: marks that find no room are not asked for again (a sync that
            // could never end), they come with the next sync or as notices.
            let notice = notice(user, &name, &mark, QoS::AtLeastOnce);
            if session.room() < 2
                || session
                    .deliver(Delivery::new(Arc::new(notice), QoS::AtLeastOnce), now_ms)
                    .is_err()
            {
                tracing::debug!(%user, "read marks beyond the session's queue not replayed");
                break;
            }
        }
    }
    let end = sync_end(user, after, last, next, more);
    let qos = end.qos;
    if session
        .deliver(Delivery::new(Arc::new(end), qos), now_ms)
        .is_err()
    {
        // Only when the queue was full before the replay began: the device hears nothing
        // and asks again.
        tracing::debug!(%user, "sync end marker dropped: the session's queue is full");
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tern_codec::{ByteString, Packet};

    use super::*;
    use crate::im::inbox::stamp_sender;
    use crate::im::topics::{ROLE_RECEIVED, ROLE_SENT};
    use crate::protocol::outgoing::Transmit;
    use crate::protocol::session::test_session;

    fn read(after: Option<u64>, entries: Vec<LogEntry>, full: bool, next: u64) -> SyncRead {
        SyncRead {
            after,
            entries,
            full,
            next,
            marks: Vec::new(),
        }
    }

    fn session(max_queued: u32) -> Session {
        test_session(1, 1, max_queued, false)
    }

    fn stored(topic: &str, from: &str, qos: QoS) -> Option<Message> {
        let mut message = Message {
            topic: ByteString::from(topic),
            payload: Bytes::from_static(b"hi"),
            qos,
            retain: false,
            properties: Default::default(),
            expires_at_ms: None,
            origin: None,
            received_at: None,
            cluster_seq: None,
        };
        stamp_sender(&mut message, from);
        Some(message)
    }

    /// Topics and payloads the session sends, acknowledging each QoS 1 publish so the
    /// window of 1 moves on.
    fn sent(session: &mut Session) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some(transmit) = session.poll_transmit() {
            let Transmit::Publish(publish) = transmit else {
                continue;
            };
            out.push((
                publish.message.topic.to_string(),
                String::from_utf8_lossy(&publish.message.payload).into_owned(),
            ));
            if publish.packet_id != 0 {
                let ack = Packet::PubAck(tern_codec::PubResponse::new(publish.packet_id));
                session.handle_packet(ack, 0).expect("a valid PUBACK");
            }
        }
        out
    }

    #[test]
    fn entries_are_replayed_in_order_on_their_inbox_topics_then_the_end_marker() {
        let mut s = session(100);
        let entries = vec![
            LogEntry {
                seq: 4,
                id: None,
                role: ROLE_RECEIVED,
                message: stored("dm/bob", "alice", QoS::ExactlyOnce),
            },
            LogEntry {
                seq: 5,
                id: None,
                role: ROLE_RECEIVED,
                message: None,
            },
            LogEntry {
                seq: 6,
                id: None,
                role: ROLE_SENT,
                message: stored("dm/carol", "bob", QoS::AtMostOnce),
            },
        ];
        replay(&mut s, "bob", read(Some(3), entries, false, 7), 0);
        assert_eq!(
            sent(&mut s),
            [
                ("inbox/bob/dm/alice".to_string(), "hi".to_string()),
                ("inbox/bob/sent/carol".to_string(), "hi".to_string()),
                (
                    "inbox/bob/sync".to_string(),
                    r#"{"after":3,"last":6,"next":7,"more":false}"#.to_string()
                ),
            ]
        );
    }

    #[test]
    fn read_marks_come_after_the_entries_and_before_the_end_marker() {
        let mut s = session(100);
        let mut read = read(
            Some(0),
            vec![LogEntry {
                seq: 1,
                role: ROLE_RECEIVED,
                id: Some(77),
                message: stored("dm/bob", "alice", QoS::AtLeastOnce),
            }],
            false,
            2,
        );
        let mark = Mark {
            id: 77,
            seq: 1,
            at_ms: 0,
        };
        read.marks = vec![
            ("read/dm/alice".to_string(), mark),
            ("receipt/alice".to_string(), mark),
        ];
        replay(&mut s, "bob", read, 0);
        let topics: Vec<String> = sent(&mut s).into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            topics,
            [
                "inbox/bob/dm/alice",
                "inbox/bob/read/dm/alice",
                "inbox/bob/receipt/alice",
                "inbox/bob/sync"
            ]
        );
    }

    #[test]
    fn a_full_queue_stops_the_replay_and_the_marker_asks_for_more() {
        let mut s = session(2);
        let entries = (0..5)
            .map(|seq| LogEntry {
                seq,
                id: None,
                role: ROLE_RECEIVED,
                message: stored("group/g", "alice", QoS::AtLeastOnce),
            })
            .collect();
        replay(&mut s, "bob", read(None, entries, false, 5), 0);
        let got = sent(&mut s);
        let end = got.last().expect("the end marker");
        assert_eq!(end.0, "inbox/bob/sync");
        assert!(end.1.contains(r#""more":true"#), "{}", end.1);
        // One in flight, one queued, and the queue's last place kept for the marker.
        let replayed = got.len() - 1;
        assert_eq!(replayed, 2, "{got:?}");
        assert!(
            end.1.contains(&format!(r#""last":{}"#, replayed - 1)),
            "{}",
            end.1
        );
    }

    #[test]
    fn a_read_that_hit_the_limit_says_there_is_more() {
        let mut s = session(100);
        let entries = vec![LogEntry {
            seq: 0,
            id: None,
            role: ROLE_RECEIVED,
            message: stored("dm/bob", "alice", QoS::AtLeastOnce),
        }];
        replay(&mut s, "bob", read(None, entries, true, 9), 0);
        let got = sent(&mut s);
        assert_eq!(
            got.last().map(|(_, p)| p.as_str()),
            Some(r#"{"after":null,"last":0,"next":9,"more":true}"#)
        );
    }
}
