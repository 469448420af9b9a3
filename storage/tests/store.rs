//! Conformance suite of the [`Store`] trait, run against both [`MemoryStore`] and
//! [`RocksStore`] (in a fresh temporary directory per test): both must behave alike, so that
//! broker tests on the in-memory store say something about the real one.

use bytes::Bytes;
use tern_storage::{
    InboxEntry, Mark, MemoryStore, Op, QueueState, QueuedMessage, RocksStore, SessionRecord,
    StorageError, Store, StoredGroup, StoredMessage, StoredSession, StoredSubscription, StoredUser,
};

fn message(topic: &str, payload: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: 1,
        retain: false,
        properties: Bytes::new(),
        expires_at_ms: None,
    }
}

fn queued(payload: &str) -> QueuedMessage {
    QueuedMessage {
        message: message("inbox", payload),
        state: QueueState::Pending,
        message_ref: None,
    }
}

fn session(client_id: &str) -> StoredSession {
    StoredSession {
        client_id: client_id.into(),
        user: format!("user-of-{client_id}"),
        protocol_level: 5,
        expiry_interval_secs: 3600,
        disconnected_at_ms: Some(1_000),
        subscriptions: vec![StoredSubscription {
            filter: format!("users/{client_id}/#"),
            options: 1,
            identifier: Some(7),
        }],
    }
}

fn enqueue(client_id: &str, seq: u64) -> Op {
    Op::Enqueue {
        client_id: client_id.into(),
        seq,
        message: queued(&format!("{client_id}-{seq}")),
    }
}

fn dequeue(client_id: &str, seq: u64) -> Op {
    Op::Dequeue {
        client_id: client_id.into(),
        seq,
    }
}

fn seqs(store: &dyn Store, client_id: &str) -> Vec<u64> {
    store
        .queue(client_id, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect()
}

fn user(name: &str) -> StoredUser {
    StoredUser {
        user: name.into(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt${name}"),
        operator: false,
        created_at_ms: 1_700_000_000_000,
    }
}

fn group(gid: &str, members: &[&str]) -> StoredGroup {
    StoredGroup {
        gid: gid.into(),
        members: members.iter().map(|m| (*m).into()).collect(),
        created_at_ms: 5,
    }
}

fn put_message(id: u64, payload: &str) -> Op {
    Op::PutMessage {
        id,
        message: message("chat", payload),
    }
}

fn append(user: &str, seq: u64, message_id: u64) -> Op {
    Op::AppendInbox {
        user: user.into(),
        seq,
        entry: InboxEntry {
            message_id,
            role: (seq % 2) as u8,
        },
    }
}

/// A queue entry referring to stored message `id`, with its own topic and QoS and (as
/// callers do) an empty payload.
fn enqueue_ref(client_id: &str, seq: u64, id: u64) -> Op {
    Op::Enqueue {
        client_id: client_id.into(),
        seq,
        message: QueuedMessage {
            message: StoredMessage {
                qos: 2,
                ..message(&format!("users/{client_id}/in"), "")
            },
            state: QueueState::Pending,
            message_ref: Some(id),
        },
    }
}

/// (seq, message id, payload of the stored message) of a user's whole inbox.
fn inbox_summary(store: &dyn Store, user: &str) -> Vec<(u64, u64, Option<Bytes>)> {
    store
        .inbox(user, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(seq, entry, message)| (seq, entry.message_id, message.map(|m| m.payload)))
        .collect()
}

fn some(payload: &'static str) -> Option<Bytes> {
    Some(Bytes::from_static(payload.as_bytes()))
}

fn bounds(store: &dyn Store, client_id: &str) -> (u64, u64) {
    let record = store.session(client_id).unwrap().unwrap();
    (record.first_seq, record.next_seq)
}

mod suite {
    use super::*;

    pub fn retained_put_replace_delete_get(store: &dyn Store) {
        assert_eq!(store.get_retained("a/b").unwrap(), None);
        let first = StoredMessage {
            retain: true,
            qos: 2,
            expires_at_ms: Some(u64::MAX),
            properties: Bytes::from_static(&[0x23, 0x00, 0x05]),
            ..message("a/b", "one")
        };
        store
            .write(
                &[Op::PutRetained {
                    topic: "a/b".into(),
                    message: first.clone(),
                }],
                true,
            )
            .unwrap();
        assert_eq!(store.get_retained("a/b").unwrap(), Some(first));
        let second = message("a/b", "two");
        store
            .write(
                &[
                    Op::PutRetained {
                        topic: "a/b".into(),
                        message: second.clone(),
                    },
                    Op::PutRetained {
                        topic: "a".into(),
                        message: message("a", "short"),
                    },
                ],
                false,
            )
            .unwrap();
        assert_eq!(store.get_retained("a/b").unwrap(), Some(second.clone()));
        let all = store.retained().unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.contains(&("a/b".to_string(), second)));
        store
            .write(&[Op::DeleteRetained { topic: "a".into() }], false)
            .unwrap();
        assert_eq!(store.get_retained("a").unwrap(), None);
        assert_eq!(store.retained().unwrap().len(), 1);
        // Deleting what is not there is fine.
        store
            .write(
                &[Op::DeleteRetained {
                    topic: "nothing".into(),
                }],
                false,
            )
            .unwrap();
    }

    pub fn session_put_replace_delete(store: &dyn Store) {
        assert_eq!(store.session("c").unwrap(), None);
        store.write(&[Op::PutSession(session("c"))], true).unwrap();
        assert_eq!(
            store.session("c").unwrap(),
            Some(SessionRecord {
                session: session("c"),
                first_seq: 0,
                next_seq: 0,
            })
        );
        let replaced = StoredSession {
            protocol_level: 4,
            expiry_interval_secs: u32::MAX,
            disconnected_at_ms: None,
            subscriptions: vec![],
            ..session("c")
        };
        store
            .write(
                &[
                    Op::PutSession(replaced.clone()),
                    enqueue("c", 0),
                    enqueue("c", 1),
                    Op::PutInboundQos2 {
                        client_id: "c".into(),
                        packet_id: 10,
                    },
                ],
                false,
            )
            .unwrap();
        let record = store.session("c").unwrap().unwrap();
        assert_eq!(record.session, replaced);
        assert_eq!((record.first_seq, record.next_seq), (0, 2));

        store
            .write(
                &[Op::DeleteSession {
                    client_id: "c".into(),
                }],
                false,
            )
            .unwrap();
        assert_eq!(store.session("c").unwrap(), None);
        assert!(store.sessions().unwrap().is_empty());
        assert!(seqs(store, "c").is_empty());
        assert!(store.inbound_qos2("c").unwrap().is_empty());
        assert_eq!(store.queue_stats("c").unwrap(), (0, 0));
        // A new session under the same id starts from scratch, high-water mark included.
        store.write(&[Op::PutSession(session("c"))], false).unwrap();
        assert_eq!(bounds(store, "c"), (0, 0));
    }

    pub fn enqueue_order_and_paging(store: &dyn Store) {
        store.write(&[Op::PutSession(session("q"))], false).unwrap();
        // Written out of order within a batch and across batches; read back by seq.
        store
            .write(&[enqueue("q", 3), enqueue("q", 1), enqueue("q", 2)], false)
            .unwrap();
        store
            .write(
                &[enqueue("q", 4), enqueue("q", 5), enqueue("q", 300)],
                false,
            )
            .unwrap();
        assert_eq!(seqs(store, "q"), vec![1, 2, 3, 4, 5, 300]);
        let page = store.queue("q", 0, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0], (1, queued("q-1")));
        assert_eq!(page[1], (2, queued("q-2")));
        let page: Vec<u64> = store
            .queue("q", 3, 2)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(page, vec![3, 4]);
        let page: Vec<u64> = store
            .queue("q", 6, 10)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(page, vec![300]);
        assert!(store.queue("q", 301, 10).unwrap().is_empty());
        assert!(store.queue("q", 0, 0).unwrap().is_empty());
        assert!(store.queue("nobody", 0, 10).unwrap().is_empty());
        assert_eq!(bounds(store, "q"), (1, 301));
        // Seqs use the whole u64 range (big-endian keys sort numerically).
        store.write(&[enqueue("q", 1 << 40)], false).unwrap();
        assert_eq!(*seqs(store, "q").last().unwrap(), 1 << 40);
    }

    pub fn set_queue_state(store: &dyn Store) {
        store.write(&[Op::PutSession(session("s"))], false).unwrap();
        store
            .write(&[enqueue("s", 0), enqueue("s", 1)], false)
            .unwrap();
        let set = |seq, state| Op::SetQueueState {
            client_id: "s".into(),
            seq,
            state,
        };
        store.write(&[set(1, QueueState::Released)], true).unwrap();
        let queue = store.queue("s", 0, 10).unwrap();
        assert_eq!(queue[0].1.state, QueueState::Pending);
        assert_eq!(queue[1].1.state, QueueState::Released);
        assert_eq!(queue[1].1.message, queued("s-1").message);
        store.write(&[set(1, QueueState::Pending)], false).unwrap();
        assert_eq!(
            store.queue("s", 1, 1).unwrap()[0].1.state,
            QueueState::Pending
        );

        // Absent entry: no-op, nothing created.
        store.write(&[set(9, QueueState::Released)], false).unwrap();
        assert_eq!(seqs(store, "s"), vec![0, 1]);

        // Within one batch, the state change sees the ops before it.
        store
            .write(&[enqueue("s", 2), set(2, QueueState::Released)], false)
            .unwrap();
        assert_eq!(
            store.queue("s", 2, 1).unwrap()[0].1.state,
            QueueState::Released
        );
        store
            .write(
                &[
                    set(0, QueueState::Released),
                    set(0, QueueState::Pending),
                    set(0, QueueState::Released),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            store.queue("s", 0, 1).unwrap()[0].1.state,
            QueueState::Released
        );
        store
            .write(&[dequeue("s", 1), set(1, QueueState::Released)], false)
            .unwrap();
        assert_eq!(seqs(store, "s"), vec![0, 2]);
        store
            .write(
                &[
                    Op::DeleteSession {
                        client_id: "s".into(),
                    },
                    set(0, QueueState::Pending),
                    enqueue("s", 5),
                    set(5, QueueState::Released),
                ],
                false,
            )
            .unwrap();
        let queue = store.queue("s", 0, 10).unwrap();
        assert_eq!(queue.len(), 1);
        assert_eq!((queue[0].0, queue[0].1.state), (5, QueueState::Released));
    }

    pub fn dequeue_and_bounds(store: &dyn Store) {
        store.write(&[Op::PutSession(session("d"))], false).unwrap();
        let ops: Vec<Op> = (10..20).map(|seq| enqueue("d", seq)).collect();
        store.write(&ops, false).unwrap();
        assert_eq!(bounds(store, "d"), (10, 20));
        store
            .write(&[dequeue("d", 10), dequeue("d", 11)], false)
            .unwrap();
        assert_eq!(bounds(store, "d"), (12, 20));
        // Dequeuing from the middle or the end, or what is absent.
        store
            .write(
                &[dequeue("d", 15), dequeue("d", 19), dequeue("d", 99)],
                false,
            )
            .unwrap();
        assert_eq!(seqs(store, "d"), vec![12, 13, 14, 16, 17, 18]);
        assert_eq!(bounds(store, "d"), (12, 20));
        // Empty queue: first == next, and next remembers the highest seq ever written.
        let ops: Vec<Op> = (12..19).map(|seq| dequeue("d", seq)).collect();
        store.write(&ops, false).unwrap();
        assert!(seqs(store, "d").is_empty());
        assert_eq!(bounds(store, "d"), (20, 20));
        store.write(&[enqueue("d", 20)], false).unwrap();
        assert_eq!(bounds(store, "d"), (20, 21));
    }

    pub fn inbound_qos2_put_delete(store: &dyn Store) {
        let put = |packet_id| Op::PutInboundQos2 {
            client_id: "i".into(),
            packet_id,
        };
        store
            .write(&[put(65535), put(1), put(300), put(1)], true)
            .unwrap();
        assert_eq!(store.inbound_qos2("i").unwrap(), vec![1, 300, 65535]);
        store
            .write(
                &[
                    Op::DeleteInboundQos2 {
                        client_id: "i".into(),
                        packet_id: 300,
                    },
                    Op::DeleteInboundQos2 {
                        client_id: "i".into(),
                        packet_id: 2,
                    },
                ],
                false,
            )
            .unwrap();
        assert_eq!(store.inbound_qos2("i").unwrap(), vec![1, 65535]);
        assert!(store.inbound_qos2("other").unwrap().is_empty());
    }

    pub fn sessions_lists_bounds(store: &dyn Store) {
        assert!(store.sessions().unwrap().is_empty());
        let mut ops = vec![
            Op::PutSession(session("zeta")),
            Op::PutSession(session("alpha")),
            Op::PutSession(session("")),
            Op::PutSession(session("mid")),
        ];
        ops.extend((0..5).map(|seq| enqueue("alpha", seq)));
        ops.extend((7..9).map(|seq| enqueue("zeta", seq)));
        ops.push(dequeue("alpha", 0));
        ops.extend((0..3).map(|seq| enqueue("mid", seq)));
        ops.extend((0..3).map(|seq| dequeue("mid", seq)));
        // A queue without a session is not a session.
        ops.push(enqueue("orphan", 0));
        store.write(&ops, true).unwrap();
        let records = store.sessions().unwrap();
        let summary: Vec<(&str, u64, u64)> = records
            .iter()
            .map(|r| (r.session.client_id.as_str(), r.first_seq, r.next_seq))
            .collect();
        assert_eq!(
            summary,
            vec![("", 0, 0), ("alpha", 1, 5), ("mid", 3, 3), ("zeta", 7, 9)]
        );
        assert_eq!(records[1].session, session("alpha"));
    }

    pub fn prefix_ids_are_isolated(store: &dyn Store) {
        let ids = ["a", "ab", "", "b", "a\u{0}"];
        let mut ops = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            ops.push(Op::PutSession(session(id)));
            for seq in 0..=n as u64 {
                ops.push(enqueue(id, seq));
            }
            ops.push(Op::PutInboundQos2 {
                client_id: (*id).into(),
                packet_id: n as u16,
            });
        }
        store.write(&ops, false).unwrap();
        for (n, id) in ids.iter().enumerate() {
            let queue = store.queue(id, 0, 100).unwrap();
            assert_eq!(queue.len(), n + 1, "queue of {id:?}");
            assert!(queue
                .iter()
                .all(|(seq, q)| q.message.payload == format!("{id}-{seq}")));
            assert_eq!(store.inbound_qos2(id).unwrap(), vec![n as u16]);
            assert_eq!(bounds(store, id), (0, n as u64 + 1));
            assert_eq!(store.queue_stats(id).unwrap().0, n as u64 + 1);
        }
        store
            .write(
                &[Op::DeleteSession {
                    client_id: "a".into(),
                }],
                false,
            )
            .unwrap();
        assert!(store.queue("a", 0, 100).unwrap().is_empty());
        for (n, id) in ids.iter().enumerate().skip(1) {
            assert_eq!(store.queue(id, 0, 100).unwrap().len(), n + 1, "{id:?}");
            assert_eq!(store.inbound_qos2(id).unwrap(), vec![n as u16]);
            assert!(store.session(id).unwrap().is_some());
        }
        assert_eq!(store.sessions().unwrap().len(), ids.len() - 1);
    }

    pub fn queue_stats_counts_payload(store: &dyn Store) {
        store
            .write(
                &[
                    Op::Enqueue {
                        client_id: "st".into(),
                        seq: 0,
                        message: queued("12345"),
                    },
                    Op::Enqueue {
                        client_id: "st".into(),
                        seq: 1,
                        message: queued(""),
                    },
                    Op::Enqueue {
                        client_id: "st".into(),
                        seq: 2,
                        message: queued("abc"),
                    },
                ],
                false,
            )
            .unwrap();
        assert_eq!(store.queue_stats("st").unwrap(), (3, 8));
        store.write(&[dequeue("st", 0)], false).unwrap();
        assert_eq!(store.queue_stats("st").unwrap(), (2, 3));
        assert_eq!(store.queue_stats("none").unwrap(), (0, 0));
    }

    pub fn batch_applies_in_order(store: &dyn Store) {
        store
            .write(
                &[
                    Op::PutRetained {
                        topic: "t".into(),
                        message: message("t", "1"),
                    },
                    Op::DeleteRetained { topic: "t".into() },
                    Op::PutRetained {
                        topic: "u".into(),
                        message: message("u", "1"),
                    },
                    Op::PutRetained {
                        topic: "u".into(),
                        message: message("u", "2"),
                    },
                    Op::PutSession(session("o")),
                    enqueue("o", 0),
                    enqueue("o", 1),
                    Op::PutInboundQos2 {
                        client_id: "o".into(),
                        packet_id: 4,
                    },
                    Op::DeleteSession {
                        client_id: "o".into(),
                    },
                    Op::PutSession(session("o")),
                    enqueue("o", 0),
                    Op::PutInboundQos2 {
                        client_id: "o".into(),
                        packet_id: 5,
                    },
                    Op::DeleteInboundQos2 {
                        client_id: "o".into(),
                        packet_id: 4,
                    },
                ],
                false,
            )
            .unwrap();
        assert_eq!(store.get_retained("t").unwrap(), None);
        assert_eq!(store.get_retained("u").unwrap(), Some(message("u", "2")));
        assert_eq!(seqs(store, "o"), vec![0]);
        assert_eq!(bounds(store, "o"), (0, 1));
        assert_eq!(store.inbound_qos2("o").unwrap(), vec![5]);
    }

    pub fn invalid_op_fails_the_batch_alone(store: &dyn Store) {
        let long_id = "x".repeat(70_000);
        let result = store.write(
            &[
                Op::PutSession(session("fine")),
                Op::Dequeue {
                    client_id: long_id.clone(),
                    seq: 0,
                },
            ],
            true,
        );
        assert!(
            matches!(result, Err(StorageError::Invalid { .. })),
            "{result:?}"
        );
        // Nothing of the batch was applied.
        assert_eq!(store.session("fine").unwrap(), None);
        let bad_qos = Op::PutRetained {
            topic: "t".into(),
            message: StoredMessage {
                qos: 3,
                ..message("t", "x")
            },
        };
        assert!(matches!(
            store.write(&[bad_qos], false),
            Err(StorageError::Invalid { .. })
        ));
        assert!(matches!(
            store.session(&long_id),
            Err(StorageError::Invalid { .. })
        ));
        // Empty batches are fine, with or without sync.
        store.write(&[], true).unwrap();
        store.write(&[], false).unwrap();
        store.sync().unwrap();
    }

    pub fn users_put_get_list_delete(store: &dyn Store) {
        assert!(store.users().unwrap().is_empty());
        assert_eq!(store.user("alice").unwrap(), None);
        let operator = StoredUser {
            operator: true,
            ..user("root")
        };
        // Ids of different lengths: listed by id, not by key (length first).
        store
            .write(
                &[
                    Op::PutUser(user("bob")),
                    Op::PutUser(user("alice")),
                    Op::PutUser(operator.clone()),
                    Op::PutUser(user("")),
                    Op::PutUser(user("al")),
                ],
                true,
            )
            .unwrap();
        assert_eq!(store.user("root").unwrap(), Some(operator));
        assert_eq!(store.user("alice").unwrap(), Some(user("alice")));
        assert_eq!(store.user("alic").unwrap(), None);
        let names: Vec<String> = store.users().unwrap().into_iter().map(|u| u.user).collect();
        assert_eq!(names, vec!["", "al", "alice", "bob", "root"]);

        let rehashed = StoredUser {
            password_hash: "$argon2id$new".into(),
            ..user("bob")
        };
        store
            .write(
                &[
                    Op::PutUser(rehashed.clone()),
                    Op::DeleteUser { user: "al".into() },
                    Op::DeleteUser {
                        user: "nobody".into(),
                    },
                ],
                false,
            )
            .unwrap();
        assert_eq!(store.user("bob").unwrap(), Some(rehashed));
        assert_eq!(store.user("al").unwrap(), None);
        assert_eq!(store.users().unwrap().len(), 4);
    }

    pub fn user_delete_keeps_inbox(store: &dyn Store) {
        store
            .write(
                &[
                    Op::PutUser(user("u")),
                    put_message(1, "hi"),
                    append("u", 0, 1),
                ],
                false,
            )
            .unwrap();
        store
            .write(&[Op::DeleteUser { user: "u".into() }], false)
            .unwrap();
        assert_eq!(store.user("u").unwrap(), None);
        assert_eq!(inbox_summary(store, "u"), vec![(0, 1, some("hi"))]);
        assert_eq!(store.inbox_bounds("u").unwrap(), (0, 1));
        assert_eq!(store.inbox_heads().unwrap(), vec![("u".to_string(), 1)]);
    }

    pub fn groups_put_get_list_delete(store: &dyn Store) {
        assert!(store.groups().unwrap().is_empty());
        assert_eq!(store.group("g").unwrap(), None);
        let big: Vec<String> = (0..1000).map(|n| format!("user-{n:04}")).collect();
        let big_refs: Vec<&str> = big.iter().map(String::as_str).collect();
        store
            .write(
                &[
                    Op::PutGroup(group("team", &["alice", "bob"])),
                    Op::PutGroup(group("g", &[])),
                    Op::PutGroup(group("all", &big_refs)),
                ],
                true,
            )
            .unwrap();
        assert_eq!(store.group("g").unwrap(), Some(group("g", &[])));
        assert_eq!(store.group("all").unwrap(), Some(group("all", &big_refs)));
        let gids: Vec<String> = store.groups().unwrap().into_iter().map(|g| g.gid).collect();
        assert_eq!(gids, vec!["all", "g", "team"]);
        // Replacing a group replaces its member list; the order given is kept.
        store
            .write(
                &[
                    Op::PutGroup(group("team", &["carol", "alice"])),
                    Op::DeleteGroup { gid: "g".into() },
                    Op::DeleteGroup { gid: "none".into() },
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            store.group("team").unwrap().unwrap().members,
            vec!["carol", "alice"]
        );
        assert_eq!(store.group("g").unwrap(), None);
        assert_eq!(store.groups().unwrap().len(), 2);
    }

    pub fn messages_put_get_last_id(store: &dyn Store) {
        assert_eq!(store.last_message_id().unwrap(), None);
        assert_eq!(store.message(0).unwrap(), None);
        let full = StoredMessage {
            qos: 2,
            retain: true,
            properties: Bytes::from_static(&[0x03, 0x00, 0x01, b'x']),
            expires_at_ms: Some(99),
            ..message("groups/g/msg", "payload")
        };
        store
            .write(
                &[
                    Op::PutMessage {
                        id: 1 << 40,
                        message: full.clone(),
                    },
                    put_message(7, "seven"),
                    put_message(300, "three hundred"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(store.message(1 << 40).unwrap(), Some(full));
        assert_eq!(store.message(7).unwrap(), Some(message("chat", "seven")));
        assert_eq!(store.message(8).unwrap(), None);
        assert_eq!(store.last_message_id().unwrap(), Some(1 << 40));
        store
            .write(&[put_message(u64::MAX, "last")], false)
            .unwrap();
        assert_eq!(store.last_message_id().unwrap(), Some(u64::MAX));

        // Retention by age: below_id is exclusive.
        store
            .write(&[Op::DeleteMessagesBefore { below_id: 300 }], false)
            .unwrap();
        assert_eq!(store.message(7).unwrap(), None);
        assert!(store.message(300).unwrap().is_some());
        store
            .write(&[Op::DeleteMessagesBefore { below_id: 0 }], false)
            .unwrap();
        assert!(store.message(300).unwrap().is_some());
        store
            .write(&[Op::DeleteMessagesBefore { below_id: u64::MAX }], false)
            .unwrap();
        assert_eq!(store.message(1 << 40).unwrap(), None);
        assert_eq!(store.last_message_id().unwrap(), Some(u64::MAX));
        // In one batch: a message put after the deletion survives it, one put before does not.
        store
            .write(
                &[
                    put_message(10, "gone"),
                    Op::DeleteMessagesBefore { below_id: 20 },
                    put_message(11, "kept"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(store.message(10).unwrap(), None);
        assert_eq!(store.message(11).unwrap(), Some(message("chat", "kept")));
    }

    pub fn inbox_append_read_bounds_heads_trim(store: &dyn Store) {
        assert_eq!(store.inbox_bounds("ann").unwrap(), (0, 0));
        assert!(store.inbox("ann", 0, 10).unwrap().is_empty());
        assert!(store.inbox_heads().unwrap().is_empty());
        let mut ops: Vec<Op> = (1..=5)
            .map(|id| put_message(id, &format!("m{id}")))
            .collect();
        // Appended out of order within a batch; seqs need not be dense.
        ops.extend([
            append("ann", 2, 2),
            append("ann", 0, 1),
            append("ann", 1, 1),
            append("ann", 10, 3),
        ]);
        // Prefix-related ids stay apart.
        ops.extend([append("an", 0, 4), append("ann2", 5, 5), append("", 0, 5)]);
        store.write(&ops, true).unwrap();

        let page = store.inbox("ann", 0, 2).unwrap();
        assert_eq!(
            page,
            vec![
                (
                    0,
                    InboxEntry {
                        message_id: 1,
                        role: 0,
                    },
                    Some(message("chat", "m1")),
                ),
                (
                    1,
                    InboxEntry {
                        message_id: 1,
                        role: 1,
                    },
                    Some(message("chat", "m1")),
                ),
            ]
        );
        let seqs: Vec<u64> = store
            .inbox("ann", 2, 10)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(seqs, vec![2, 10]);
        assert!(store.inbox("ann", 11, 10).unwrap().is_empty());
        assert!(store.inbox("ann", 0, 0).unwrap().is_empty());
        assert_eq!(inbox_summary(store, "an"), vec![(0, 4, some("m4"))]);
        assert_eq!(inbox_summary(store, "ann2"), vec![(5, 5, some("m5"))]);
        assert_eq!(store.inbox_bounds("ann").unwrap(), (0, 11));
        assert_eq!(store.inbox_bounds("ann2").unwrap(), (5, 6));
        assert_eq!(store.inbox_bounds("nobody").unwrap(), (0, 0));
        assert_eq!(
            store.inbox_heads().unwrap(),
            vec![
                (String::new(), 1),
                ("an".to_string(), 1),
                ("ann".to_string(), 11),
                ("ann2".to_string(), 6),
            ]
        );

        // Retention by count: below_seq is exclusive and touches no other user.
        store
            .write(
                &[Op::TrimInbox {
                    user: "ann".into(),
                    below_seq: 2,
                }],
                false,
            )
            .unwrap();
        assert_eq!(
            inbox_summary(store, "ann"),
            vec![(2, 2, some("m2")), (10, 3, some("m3"))]
        );
        assert_eq!(store.inbox_bounds("ann").unwrap(), (2, 11));
        assert_eq!(store.inbox_bounds("an").unwrap(), (0, 1));
        assert_eq!(store.inbox_bounds("ann2").unwrap(), (5, 6));
        // Trimming everything keeps the high-water mark; trimming nothing or nobody is fine.
        store
            .write(
                &[
                    Op::TrimInbox {
                        user: "ann".into(),
                        below_seq: u64::MAX,
                    },
                    Op::TrimInbox {
                        user: "an".into(),
                        below_seq: 0,
                    },
                    Op::TrimInbox {
                        user: "ghost".into(),
                        below_seq: 100,
                    },
                ],
                false,
            )
            .unwrap();
        assert!(store.inbox("ann", 0, 10).unwrap().is_empty());
        assert_eq!(store.inbox_bounds("ann").unwrap(), (11, 11));
        assert_eq!(store.inbox_bounds("an").unwrap(), (0, 1));
        assert_eq!(store.inbox_bounds("ghost").unwrap(), (0, 0));
        assert_eq!(store.inbox_heads().unwrap().len(), 4);
        // Appending continues after the mark; a trim and an append in one batch apply in order.
        store
            .write(
                &[
                    append("ann", 11, 1),
                    Op::TrimInbox {
                        user: "ann".into(),
                        below_seq: 12,
                    },
                    append("ann", 12, 2),
                ],
                false,
            )
            .unwrap();
        assert_eq!(inbox_summary(store, "ann"), vec![(12, 2, some("m2"))]);
        assert_eq!(store.inbox_bounds("ann").unwrap(), (12, 13));
    }

    pub fn inbox_after_message_retention(store: &dyn Store) {
        let mut ops: Vec<Op> = (100..105)
            .map(|id| put_message(id, &format!("m{id}")))
            .collect();
        ops.extend((0..5).map(|seq| append("reader", seq, 100 + seq)));
        store.write(&ops, false).unwrap();
        store
            .write(&[Op::DeleteMessagesBefore { below_id: 103 }], false)
            .unwrap();
        let inbox = store.inbox("reader", 0, 10).unwrap();
        // The entries stay (retention by count is separate); their messages read as None.
        assert_eq!(inbox.len(), 5);
        let messages: Vec<Option<Bytes>> =
            inbox.into_iter().map(|e| e.2.map(|m| m.payload)).collect();
        assert_eq!(messages, vec![None, None, None, some("m103"), some("m104")]);
        assert_eq!(store.inbox_bounds("reader").unwrap(), (0, 5));
    }

    pub fn queue_message_refs_resolve(store: &dyn Store) {
        store
            .write(
                &[
                    Op::PutSession(session("r")),
                    put_message(50, "shared payload"),
                    put_message(60, "another"),
                ],
                false,
            )
            .unwrap();
        // A payload passed along with a reference is ignored, not stored.
        let mut with_payload = enqueue_ref("r", 2, 60);
        if let Op::Enqueue { message, .. } = &mut with_payload {
            message.message.payload = Bytes::from_static(b"ignored");
        }
        store
            .write(
                &[
                    enqueue_ref("r", 0, 50),
                    enqueue("r", 1),
                    with_payload,
                    enqueue_ref("r", 3, 50),
                    // Not stored (yet): a dangling reference from the start.
                    enqueue_ref("r", 4, 70),
                ],
                false,
            )
            .unwrap();
        let queue = store.queue("r", 0, 10).unwrap();
        let resolved = |payload: &'static str| QueuedMessage {
            message: StoredMessage {
                qos: 2,
                ..message("users/r/in", payload)
            },
            state: QueueState::Pending,
            message_ref: None,
        };
        assert_eq!(queue[0], (0, resolved("shared payload")));
        assert_eq!(queue[1], (1, queued("r-1")));
        assert_eq!(queue[2], (2, resolved("another")));
        assert_eq!(queue[3], (3, resolved("shared payload")));
        assert_eq!(
            queue[4],
            (
                4,
                QueuedMessage {
                    message_ref: Some(70),
                    ..resolved("")
                }
            )
        );
        // Paging resolves too; a state change keeps the reference.
        store
            .write(
                &[Op::SetQueueState {
                    client_id: "r".into(),
                    seq: 3,
                    state: QueueState::Released,
                }],
                false,
            )
            .unwrap();
        assert_eq!(
            store.queue("r", 3, 1).unwrap(),
            vec![(
                3,
                QueuedMessage {
                    state: QueueState::Released,
                    ..resolved("shared payload")
                }
            )]
        );
        assert_eq!(bounds(store, "r"), (0, 5));

        // Retention deleted message 50: its entries come back with the id and no payload.
        store
            .write(&[Op::DeleteMessagesBefore { below_id: 51 }], false)
            .unwrap();
        let queue = store.queue("r", 0, 10).unwrap();
        let refs: Vec<(u64, Option<u64>, Bytes)> = queue
            .into_iter()
            .map(|(seq, q)| (seq, q.message_ref, q.message.payload))
            .collect();
        assert_eq!(
            refs,
            vec![
                (0, Some(50), Bytes::new()),
                (1, None, Bytes::from_static(b"r-1")),
                (2, None, Bytes::from_static(b"another")),
                (3, Some(50), Bytes::new()),
                (4, Some(70), Bytes::new()),
            ]
        );
        // A message stored after its reference resolves it.
        store.write(&[put_message(70, "late")], false).unwrap();
        assert_eq!(store.queue("r", 4, 1).unwrap()[0].1, resolved("late"));
    }

    pub fn queue_stats_counts_referenced_payloads(store: &dyn Store) {
        store
            .write(
                &[
                    put_message(1, "0123456789"),
                    put_message(2, "abc"),
                    enqueue_ref("qs", 0, 1),
                    enqueue_ref("qs", 1, 1),
                    enqueue_ref("qs", 2, 2),
                    // "qs-3": 4 bytes inline.
                    enqueue("qs", 3),
                    enqueue_ref("qs", 4, 99),
                ],
                false,
            )
            .unwrap();
        // Each entry counts its message's payload; the dangling one counts 0.
        assert_eq!(store.queue_stats("qs").unwrap(), (5, 10 + 10 + 3 + 4));
        store
            .write(&[Op::DeleteMessagesBefore { below_id: 2 }], false)
            .unwrap();
        assert_eq!(store.queue_stats("qs").unwrap(), (5, 3 + 4));
    }

    pub fn invalid_im_ops_are_rejected(store: &dyn Store) {
        let long = "x".repeat(65_536);
        let max = "x".repeat(65_535);
        let bad_ops = [
            Op::PutUser(user(&long)),
            Op::PutUser(StoredUser {
                password_hash: long.clone(),
                ..user("u")
            }),
            Op::DeleteUser { user: long.clone() },
            Op::PutGroup(group(&long, &[])),
            Op::PutGroup(group("g", &["ok", &long])),
            Op::DeleteGroup { gid: long.clone() },
            append(&long, 0, 1),
            Op::TrimInbox {
                user: long.clone(),
                below_seq: 1,
            },
            Op::PutMessage {
                id: 1,
                message: StoredMessage {
                    qos: 3,
                    ..message("t", "x")
                },
            },
        ];
        for bad in bad_ops {
            let result = store.write(&[Op::PutUser(user("fine")), bad.clone()], true);
            assert!(
                matches!(result, Err(StorageError::Invalid { .. })),
                "{result:?}"
            );
            // Nothing of the batch was applied.
            assert_eq!(store.user("fine").unwrap(), None);
        }
        assert!(matches!(
            store.user(&long),
            Err(StorageError::Invalid { .. })
        ));
        assert!(matches!(
            store.group(&long),
            Err(StorageError::Invalid { .. })
        ));
        assert!(matches!(
            store.inbox(&long, 0, 1),
            Err(StorageError::Invalid { .. })
        ));
        assert!(matches!(
            store.inbox_bounds(&long),
            Err(StorageError::Invalid { .. })
        ));
        // The longest ids are fine.
        let max_user = StoredUser {
            password_hash: "h".into(),
            ..user(&max)
        };
        store
            .write(
                &[
                    Op::PutUser(max_user.clone()),
                    Op::PutGroup(group(&max, &[&max])),
                    append(&max, 0, 1),
                ],
                false,
            )
            .unwrap();
        assert_eq!(store.user(&max).unwrap(), Some(max_user));
        assert_eq!(store.group(&max).unwrap(), Some(group(&max, &[&max])));
        assert_eq!(store.inbox_bounds(&max).unwrap(), (0, 1));
    }

    /// One chat message to a group of two: stored once, in both inboxes, and in the offline
    /// queue of the recipient's session, in one batch; a batch that fails writes none of it.
    pub fn im_batch_is_atomic(store: &dyn Store) {
        let fan_out = |id: u64, seq: u64| {
            vec![
                put_message(id, &format!("msg {id}")),
                Op::AppendInbox {
                    user: "sender".into(),
                    seq,
                    entry: InboxEntry {
                        message_id: id,
                        role: 1,
                    },
                },
                Op::AppendInbox {
                    user: "recipient".into(),
                    seq,
                    entry: InboxEntry {
                        message_id: id,
                        role: 0,
                    },
                },
                enqueue_ref("recipient-phone", seq, id),
            ]
        };
        store.write(&fan_out(1000, 0), true).unwrap();
        let mut failing = fan_out(1001, 1);
        failing.push(Op::DeleteUser {
            user: "x".repeat(70_000),
        });
        assert!(matches!(
            store.write(&failing, true),
            Err(StorageError::Invalid { .. })
        ));

        assert_eq!(store.message(1001).unwrap(), None);
        assert_eq!(store.last_message_id().unwrap(), Some(1000));
        for user in ["sender", "recipient"] {
            assert_eq!(
                inbox_summary(store, user),
                vec![(0, 1000, some("msg 1000"))]
            );
            assert_eq!(store.inbox_bounds(user).unwrap(), (0, 1));
        }
        assert_eq!(store.inbox("sender", 0, 1).unwrap()[0].1.role, 1);
        let queue = store.queue("recipient-phone", 0, 10).unwrap();
        assert_eq!(queue.len(), 1);
        assert_eq!(queue[0].1.message.payload, "msg 1000");
        assert_eq!(queue[0].1.message_ref, None);
        assert_eq!(
            store.inbox_heads().unwrap(),
            vec![("recipient".to_string(), 1), ("sender".to_string(), 1)]
        );
    }

    pub fn marks_only_rise_and_values_replace(store: &dyn Store) {
        let raise = |user: &str, name: &str, id: u64| Op::RaiseMark {
            user: user.into(),
            name: name.into(),
            mark: Mark {
                id,
                seq: id + 1,
                at_ms: id * 10,
            },
        };
        // Within one batch and across batches, in any order: the highest id stays.
        store
            .write(
                &[
                    raise("bob", "read/dm/alice", 5),
                    raise("bob", "read/dm/alice", 9),
                    raise("bob", "read/dm/alice", 7),
                    raise("bob", "read/group/g", 3),
                    raise("bob", "receipt/carol", 4),
                    raise("bobby", "read/dm/x", 1),
                ],
                false,
            )
            .unwrap();
        store
            .write(&[raise("bob", "read/group/g", 2)], false)
            .unwrap();
        store
            .write(&[raise("bob", "read/group/g", 6)], false)
            .unwrap();
        let mark = |id: u64| Mark {
            id,
            seq: id + 1,
            at_ms: id * 10,
        };
        assert_eq!(store.mark("bob", "read/dm/alice").unwrap(), Some(mark(9)));
        assert_eq!(
            store.marks("bob", "read/").unwrap(),
            vec![
                ("read/dm/alice".to_string(), mark(9)),
                ("read/group/g".to_string(), mark(6)),
            ]
        );
        assert_eq!(store.marks("bob", "").unwrap().len(), 3);
        assert_eq!(store.marks("nobody", "").unwrap(), vec![]);
        assert_eq!(store.mark("bob", "read/dm/zed").unwrap(), None);

        let put = |value: &'static str| Op::PutUserValue {
            user: "bob".into(),
            name: "settings".into(),
            value: Bytes::from_static(value.as_bytes()),
        };
        assert_eq!(store.user_value("bob", "settings").unwrap(), None);
        store.write(&[put("a"), put("b")], false).unwrap();
        assert_eq!(
            store.user_value("bob", "settings").unwrap(),
            Some(Bytes::from_static(b"b"))
        );
        assert_eq!(store.user_value("bobby", "settings").unwrap(), None);
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $case() {
                    super::suite::$case(&super::MemoryStore::new());
                }
            )*
        }
        mod rocks {
            $(
                #[test]
                fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::RocksStore::open(dir.path()).unwrap();
                    super::suite::$case(&store);
                }
            )*
        }
    };
}

conformance!(
    retained_put_replace_delete_get,
    session_put_replace_delete,
    enqueue_order_and_paging,
    set_queue_state,
    dequeue_and_bounds,
    inbound_qos2_put_delete,
    sessions_lists_bounds,
    prefix_ids_are_isolated,
    queue_stats_counts_payload,
    batch_applies_in_order,
    invalid_op_fails_the_batch_alone,
    users_put_get_list_delete,
    user_delete_keeps_inbox,
    groups_put_get_list_delete,
    messages_put_get_last_id,
    inbox_append_read_bounds_heads_trim,
    inbox_after_message_retention,
    queue_message_refs_resolve,
    queue_stats_counts_referenced_payloads,
    invalid_im_ops_are_rejected,
    im_batch_is_atomic,
    marks_only_rise_and_values_replace,
);
