//! Conformance suite of the [`Store`] trait, run against both [`MemoryStore`] and
//! [`RocksStore`] (in a fresh temporary directory per test): both must behave alike, so that
//! broker tests on the in-memory store say something about the real one.

use bytes::Bytes;
use tern_storage::{
    MemoryStore, Op, QueueState, QueuedMessage, RocksStore, SessionRecord, StorageError, Store,
    StoredMessage, StoredSession, StoredSubscription,
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
    }
}

fn session(client_id: &str) -> StoredSession {
    StoredSession {
        client_id: client_id.into(),
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
);
