//! Tests specific to [`RocksStore`]: persistence across reopen, corrupt values (written
//! through raw RocksDB at known keys), the directory lock, read-only access, the format
//! version check, and databases written before the instant-messaging column families.

use std::path::Path;

use bytes::Bytes;
use tern_storage::keys::{
    self, CF_GROUPS, CF_INBOUND_QOS2, CF_INBOX, CF_INBOX_NEXT, CF_MESSAGES, CF_META, CF_QUEUE,
    CF_QUEUE_NEXT, CF_RETAINED, CF_SESSIONS, CF_USERS,
};
use tern_storage::{
    InboxEntry, Op, QueueState, QueuedMessage, RocksStore, StorageError, Store, StoredGroup,
    StoredMessage, StoredSession, StoredSubscription, StoredUser,
};

fn message(topic: &str, payload: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: 2,
        retain: true,
        properties: Bytes::from_static(&[0x02, 0, 0, 0, 60]),
        expires_at_ms: Some(1_800_000_000_000),
    }
}

fn session(client_id: &str) -> StoredSession {
    StoredSession {
        client_id: client_id.into(),
        user: format!("user-of-{client_id}"),
        protocol_level: 4,
        expiry_interval_secs: u32::MAX,
        disconnected_at_ms: None,
        subscriptions: vec![
            StoredSubscription {
                filter: "a/+".into(),
                options: 2,
                identifier: None,
            },
            StoredSubscription {
                filter: "b/#".into(),
                options: 1,
                identifier: Some(3),
            },
        ],
    }
}

fn enqueue(client_id: &str, seq: u64) -> Op {
    Op::Enqueue {
        client_id: client_id.into(),
        seq,
        message: QueuedMessage {
            message: message("inbox", &format!("{client_id}-{seq}")),
            state: QueueState::Pending,
            message_ref: None,
        },
    }
}

fn user(name: &str) -> StoredUser {
    StoredUser {
        user: name.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        operator: name == "root",
        created_at_ms: 1_700_000_000_000,
    }
}

fn inbox_entry(message_id: u64) -> InboxEntry {
    InboxEntry {
        message_id,
        role: 0,
    }
}

/// An offline queue entry referring to stored message `id`.
fn enqueue_ref(client_id: &str, seq: u64, id: u64) -> Op {
    Op::Enqueue {
        client_id: client_id.into(),
        seq,
        message: QueuedMessage {
            message: message("users/x/in", ""),
            state: QueueState::Pending,
            message_ref: Some(id),
        },
    }
}

/// Writes `value` at `key` of `cf` with raw RocksDB (the store must be closed).
fn put_raw(dir: &Path, cf: &str, key: &[u8], value: &[u8]) {
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, keys::ALL_CFS).unwrap();
    db.put_cf(db.cf_handle(cf).unwrap(), key, value).unwrap();
}

fn corrupt_what(result: Result<impl std::fmt::Debug, StorageError>) -> String {
    match result {
        Err(StorageError::Corrupt { what }) => what,
        other => panic!("expected a Corrupt error, got {other:?}"),
    }
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut ops = vec![
        Op::PutRetained {
            topic: "news/1".into(),
            message: message("news/1", "hello"),
        },
        Op::PutSession(session("phone")),
        Op::PutSession(session("laptop")),
        Op::PutInboundQos2 {
            client_id: "phone".into(),
            packet_id: 42,
        },
    ];
    ops.extend((0..100).map(|seq| enqueue("phone", seq)));
    ops.extend((0..3).map(|seq| enqueue("laptop", seq)));
    ops.push(Op::SetQueueState {
        client_id: "phone".into(),
        seq: 5,
        state: QueueState::Released,
    });
    ops.extend((0..5).map(|seq| Op::Dequeue {
        client_id: "phone".into(),
        seq,
    }));
    ops.extend((0..3).map(|seq| Op::Dequeue {
        client_id: "laptop".into(),
        seq,
    }));
    let (retained, sessions, queue, inbound) = {
        let store = RocksStore::open(dir.path()).unwrap();
        // Half synced, half not: both survive a clean close.
        store.write(&ops[..50], true).unwrap();
        store.write(&ops[50..], false).unwrap();
        (
            store.retained().unwrap(),
            store.sessions().unwrap(),
            store.queue("phone", 0, 1000).unwrap(),
            store.inbound_qos2("phone").unwrap(),
        )
    };
    assert_eq!(queue.len(), 95);
    assert_eq!(queue[0].1.state, QueueState::Released);
    let bounds: Vec<(u64, u64)> = sessions.iter().map(|r| (r.first_seq, r.next_seq)).collect();
    assert_eq!(bounds, vec![(3, 3), (5, 100)]);

    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(store.retained().unwrap(), retained);
    assert_eq!(store.sessions().unwrap(), sessions);
    assert_eq!(store.queue("phone", 0, 1000).unwrap(), queue);
    assert_eq!(store.inbound_qos2("phone").unwrap(), inbound);
    assert_eq!(
        store.get_retained("news/1").unwrap(),
        Some(message("news/1", "hello"))
    );
    drop(store);

    // Read-only sees the same, refuses writes.
    let ro = RocksStore::open_read_only(dir.path()).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(ro.sessions().unwrap(), sessions);
    assert_eq!(ro.queue("phone", 0, 1000).unwrap(), queue);
    assert!(matches!(
        ro.write(&[Op::DeleteRetained { topic: "x".into() }], true),
        Err(StorageError::ReadOnly)
    ));
    ro.sync().unwrap();
}

#[test]
fn read_only_opens_next_to_a_writer_and_fails_on_missing_dir() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path()).unwrap();
    store.write(&[Op::PutSession(session("s"))], true).unwrap();
    let ro = RocksStore::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.sessions().unwrap().len(), 1);

    let missing = dir.path().join("does-not-exist");
    let err = RocksStore::open_read_only(&missing).unwrap_err();
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

#[test]
fn locked_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _store = RocksStore::open(dir.path()).unwrap();
    let err = RocksStore::open(dir.path()).unwrap_err();
    match &err {
        StorageError::Locked { path, .. } => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("locked"), "{text}");
}

/// Environment variable telling [`hold_lock_child`] which directory to hold.
const LOCK_DIR_ENV: &str = "TERN_STORAGE_TEST_LOCK_DIR";

/// Not a test: the child process of [`locked_by_another_process`], holding the store open
/// until its stdin closes.
#[test]
#[ignore = "helper process of locked_by_another_process"]
fn hold_lock_child() {
    let Ok(dir) = std::env::var(LOCK_DIR_ENV) else {
        return;
    };
    let _store = RocksStore::open(Path::new(&dir)).unwrap();
    println!("LOCKED");
    let _ = std::io::stdin().read_line(&mut String::new());
}

#[test]
fn locked_by_another_process() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["hold_lock_child", "--exact", "--ignored", "--nocapture"])
        .env(LOCK_DIR_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = stdout.lines();
    assert!(
        lines.any(|line| line.unwrap() == "LOCKED"),
        "child did not open the store"
    );
    let err = RocksStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    // Closing its stdin lets the child close the store and exit; then the directory opens.
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    drop(lines);
    RocksStore::open(dir.path()).unwrap();
}

#[test]
fn corrupt_values_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksStore::open(dir.path()).unwrap();
        let mut ops = vec![
            Op::PutSession(session("good")),
            Op::PutSession(session("bad")),
        ];
        ops.extend((0..3).map(|seq| enqueue("bad", seq)));
        store.write(&ops, true).unwrap();
    }
    // A queue value with an unknown version byte, a truncated one, a session record of
    // garbage, a retained message with a bogus length, and a queue key with a short suffix.
    put_raw(
        dir.path(),
        CF_QUEUE,
        &keys::queue_key("bad", 1).unwrap(),
        &[77, 0, 1],
    );
    put_raw(
        dir.path(),
        CF_QUEUE,
        &keys::queue_key("bad", 2).unwrap(),
        &[1, 0, 1],
    );
    put_raw(dir.path(), CF_RETAINED, b"r/1", &[1, 1, 0, 0xFF, 0xFF]);

    let store = RocksStore::open(dir.path()).unwrap();
    // Bounds come from keys only: sessions() does not touch the corrupt values.
    let records = store.sessions().unwrap();
    assert_eq!((records[0].first_seq, records[0].next_seq), (0, 3));

    let what = corrupt_what(store.queue("bad", 0, 10));
    assert!(what.contains("seq 1 of client \"bad\""), "{what}");
    assert!(what.contains("version 77"), "{what}");
    let what = corrupt_what(store.queue("bad", 2, 10));
    assert!(what.contains("seq 2"), "{what}");
    assert!(what.contains("truncated"), "{what}");
    // The intact entry before them still reads.
    assert_eq!(store.queue("bad", 0, 1).unwrap().len(), 1);
    corrupt_what(store.queue_stats("bad"));
    let what = corrupt_what(store.get_retained("r/1"));
    assert!(what.contains("r/1"), "{what}");
    corrupt_what(store.retained());
    // Changing the state of a corrupt entry fails the batch instead of writing garbage.
    let set = Op::SetQueueState {
        client_id: "bad".into(),
        seq: 1,
        state: QueueState::Released,
    };
    corrupt_what(store.write(&[set], true));
    drop(store);

    put_raw(
        dir.path(),
        CF_SESSIONS,
        &keys::client_prefix("bad").unwrap(),
        b"\x01\x05",
    );
    let mut short_key = keys::client_prefix("good").unwrap();
    short_key.push(1);
    put_raw(dir.path(), CF_INBOUND_QOS2, &short_key, &[]);
    let store = RocksStore::open(dir.path()).unwrap();
    let what = corrupt_what(store.sessions());
    assert!(what.contains("session of client \"bad\""), "{what}");
    corrupt_what(store.session("bad"));
    assert!(store.session("good").unwrap().is_some());
    let what = corrupt_what(store.inbound_qos2("good"));
    assert!(what.contains("\"good\""), "{what}");
}

#[test]
fn unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(RocksStore::open(dir.path()).unwrap());
    put_raw(
        dir.path(),
        CF_META,
        keys::FORMAT_VERSION_KEY,
        &99u32.to_be_bytes(),
    );
    match RocksStore::open(dir.path()) {
        Err(StorageError::UnsupportedFormat {
            found, supported, ..
        }) => assert_eq!((found, supported), (99, keys::FORMAT_VERSION)),
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    assert!(matches!(
        RocksStore::open_read_only(dir.path()),
        Err(StorageError::UnsupportedFormat { .. })
    ));
    put_raw(dir.path(), CF_META, keys::FORMAT_VERSION_KEY, &[1]);
    assert!(matches!(
        RocksStore::open(dir.path()),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn many_sessions_bounds_without_values() {
    // Start-up shape: many sessions, queues of varied length; bounds match what was written.
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path()).unwrap();
    let mut ops = Vec::new();
    for n in 0..200u64 {
        let id = format!("dev-{n}");
        ops.push(Op::PutSession(session(&id)));
        for seq in 0..n % 7 {
            ops.push(enqueue(&id, 1000 * n + seq));
        }
        if n % 3 == 0 && n % 7 > 0 {
            ops.push(Op::Dequeue {
                client_id: id.clone(),
                seq: 1000 * n,
            });
        }
    }
    store.write(&ops, false).unwrap();
    let records = store.sessions().unwrap();
    assert_eq!(records.len(), 200);
    for record in records {
        let n: u64 = record.session.client_id[4..].parse().unwrap();
        let len = n % 7;
        let dequeued = u64::from(n.is_multiple_of(3) && len > 0);
        let expected_next = if len == 0 { 0 } else { 1000 * n + len };
        let expected_first = if len == 0 {
            0
        } else {
            (1000 * n + dequeued).min(expected_next)
        };
        assert_eq!(
            (record.first_seq, record.next_seq),
            (expected_first, expected_next),
            "{}",
            record.session.client_id
        );
    }
}

#[test]
fn reopen_keeps_im_state() {
    let dir = tempfile::tempdir().unwrap();
    let group = StoredGroup {
        gid: "team".into(),
        members: vec!["alice".into(), "bob".into(), "root".into()],
        created_at_ms: 9,
    };
    let mut ops = vec![
        Op::PutUser(user("alice")),
        Op::PutUser(user("bob")),
        Op::PutUser(user("root")),
        Op::PutGroup(group.clone()),
        Op::PutSession(session("bob-phone")),
    ];
    for id in 0..20u64 {
        ops.push(Op::PutMessage {
            id: 1000 + id,
            message: message("groups/team/msg", &format!("m{id}")),
        });
        for member in ["alice", "bob"] {
            ops.push(Op::AppendInbox {
                user: member.into(),
                seq: id,
                entry: inbox_entry(1000 + id),
            });
        }
        ops.push(enqueue_ref("bob-phone", id, 1000 + id));
    }
    ops.push(Op::TrimInbox {
        user: "alice".into(),
        below_seq: 15,
    });
    ops.push(Op::DeleteMessagesBefore { below_id: 1005 });
    for id in [3, 8, 5] {
        ops.push(Op::RaiseMark {
            user: "bob".into(),
            name: "read/group/team".into(),
            mark: tern_storage::Mark {
                id,
                seq: id,
                at_ms: 1,
            },
        });
    }
    let (users, inbox, queue) = {
        let store = RocksStore::open(dir.path()).unwrap();
        store.write(&ops[..30], true).unwrap();
        store.write(&ops[30..], false).unwrap();
        (
            store.users().unwrap(),
            store.inbox("bob", 0, 100).unwrap(),
            store.queue("bob-phone", 0, 100).unwrap(),
        )
    };
    assert_eq!(users.len(), 3);
    assert_eq!(inbox.len(), 20);
    assert!(inbox[4].2.is_none() && inbox[5].2.is_some());
    assert_eq!(queue[4].1.message_ref, Some(1004));
    assert_eq!(queue[5].1.message.payload, "m5");

    for store in [
        RocksStore::open(dir.path()).unwrap(),
        RocksStore::open_read_only(dir.path()).unwrap(),
    ] {
        assert_eq!(store.users().unwrap(), users);
        assert!(store.user("root").unwrap().unwrap().operator);
        assert_eq!(store.groups().unwrap(), vec![group.clone()]);
        assert_eq!(store.inbox("bob", 0, 100).unwrap(), inbox);
        assert_eq!(store.queue("bob-phone", 0, 100).unwrap(), queue);
        assert_eq!(store.inbox_bounds("alice").unwrap(), (15, 20));
        assert_eq!(store.inbox_bounds("bob").unwrap(), (0, 20));
        assert_eq!(
            store.inbox_heads().unwrap(),
            vec![("alice".to_string(), 20), ("bob".to_string(), 20)]
        );
        assert_eq!(store.last_message_id().unwrap(), Some(1019));
        assert_eq!(
            store.mark("bob", "read/group/team").unwrap().map(|m| m.id),
            Some(8)
        );
        assert_eq!(store.message(1004).unwrap(), None);
        assert_eq!(
            store.message(1019).unwrap(),
            Some(message("groups/team/msg", "m19"))
        );
        // Messages 1005..=1019 remain: "m5".."m9" (2 bytes) and "m10".."m19" (3 bytes).
        assert_eq!(
            store.queue_stats("bob-phone").unwrap(),
            (20, 5 * 2 + 10 * 3)
        );
    }
}

/// Creates a database as the first release of format 1 wrote it: only the six original
/// column families, a session, and a version-1 queue record.
fn write_old_database(dir: &Path) {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let old_cfs = [
        CF_RETAINED,
        CF_SESSIONS,
        CF_QUEUE,
        CF_QUEUE_NEXT,
        CF_INBOUND_QOS2,
        CF_META,
    ];
    let db = rocksdb::DB::open_cf(&opts, dir, old_cfs).unwrap();
    let cf = |name| db.cf_handle(name).unwrap();
    db.put_cf(cf(CF_META), keys::FORMAT_VERSION_KEY, 1u32.to_be_bytes())
        .unwrap();
    let prefix = keys::client_prefix("old").unwrap();
    // Session record: version, protocol 4, expiry 60 s, connected, no subscriptions.
    db.put_cf(cf(CF_SESSIONS), &prefix, [1, 4, 0, 0, 0, 60, 0, 0, 0, 0, 0])
        .unwrap();
    // Queue record v1: version, state released, qos 1, no flags, topic "t", no properties,
    // payload "old".
    let v1 = [
        1, 1, 1, 0, 0, 1, b't', 0, 0, 0, 0, 0, 0, 0, 3, b'o', b'l', b'd',
    ];
    db.put_cf(cf(CF_QUEUE), keys::queue_key("old", 7).unwrap(), v1)
        .unwrap();
    db.put_cf(cf(CF_QUEUE_NEXT), &prefix, 8u64.to_be_bytes())
        .unwrap();
}

#[test]
fn database_without_im_families_opens_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    write_old_database(dir.path());
    let old_entry = QueuedMessage {
        message: StoredMessage {
            topic: "t".into(),
            payload: Bytes::from_static(b"old"),
            qos: 1,
            retain: false,
            properties: Bytes::new(),
            expires_at_ms: None,
        },
        state: QueueState::Released,
        message_ref: None,
    };

    // Read-only cannot create the new families: they read as empty.
    let ro = RocksStore::open_read_only(dir.path()).unwrap();
    assert_eq!(
        ro.queue("old", 0, 10).unwrap(),
        vec![(7, old_entry.clone())]
    );
    assert_eq!(ro.sessions().unwrap()[0].next_seq, 8);
    assert!(ro.users().unwrap().is_empty());
    assert_eq!(ro.user("a").unwrap(), None);
    assert!(ro.groups().unwrap().is_empty());
    assert_eq!(ro.group("g").unwrap(), None);
    assert_eq!(ro.message(1).unwrap(), None);
    assert_eq!(ro.last_message_id().unwrap(), None);
    assert!(ro.inbox("a", 0, 10).unwrap().is_empty());
    assert_eq!(ro.inbox_bounds("a").unwrap(), (0, 0));
    assert!(ro.inbox_heads().unwrap().is_empty());
    drop(ro);

    // Read-write creates them; the old entry decodes and takes state changes in place.
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(
        store.queue("old", 0, 10).unwrap(),
        vec![(7, old_entry.clone())]
    );
    store
        .write(
            &[
                Op::SetQueueState {
                    client_id: "old".into(),
                    seq: 7,
                    state: QueueState::Pending,
                },
                Op::PutUser(user("alice")),
                Op::PutMessage {
                    id: 1,
                    message: message("chat", "new"),
                },
                Op::AppendInbox {
                    user: "alice".into(),
                    seq: 0,
                    entry: inbox_entry(1),
                },
                enqueue_ref("old", 8, 1),
            ],
            true,
        )
        .unwrap();
    drop(store);
    let store = RocksStore::open(dir.path()).unwrap();
    let queue = store.queue("old", 0, 10).unwrap();
    assert_eq!(queue.len(), 2);
    assert_eq!(
        queue[0],
        (
            7,
            QueuedMessage {
                state: QueueState::Pending,
                ..old_entry
            }
        )
    );
    assert_eq!(queue[1].1.message.payload, "new");
    assert_eq!(store.user("alice").unwrap(), Some(user("alice")));
    assert_eq!(store.inbox_bounds("alice").unwrap(), (0, 1));
}

#[test]
fn corrupt_im_values_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksStore::open(dir.path()).unwrap();
        let ops = vec![
            Op::PutMessage {
                id: 5,
                message: message("chat", "fine"),
            },
            Op::AppendInbox {
                user: "u".into(),
                seq: 0,
                entry: inbox_entry(5),
            },
            Op::AppendInbox {
                user: "u".into(),
                seq: 1,
                entry: inbox_entry(6),
            },
            enqueue_ref("c", 0, 6),
        ];
        store.write(&ops, true).unwrap();
    }
    put_raw(
        dir.path(),
        CF_USERS,
        &keys::user_prefix("eve").unwrap(),
        &[1, 9],
    );
    put_raw(dir.path(), CF_GROUPS, &keys::group_key("g").unwrap(), &[5]);
    put_raw(dir.path(), CF_MESSAGES, &keys::message_key(6), &[1, 0]);
    put_raw(
        dir.path(),
        CF_INBOX,
        &keys::inbox_key("u", 2).unwrap(),
        &[1, 0, 0],
    );
    put_raw(
        dir.path(),
        CF_INBOX_NEXT,
        &keys::user_prefix("w").unwrap(),
        &[0, 1],
    );

    let store = RocksStore::open(dir.path()).unwrap();
    let what = corrupt_what(store.user("eve"));
    assert!(what.contains("user \"eve\""), "{what}");
    corrupt_what(store.users());
    let what = corrupt_what(store.groups());
    assert!(what.contains("group \"g\""), "{what}");
    assert!(what.contains("version 5"), "{what}");
    let what = corrupt_what(store.message(6));
    assert!(what.contains("stored message id 6"), "{what}");
    // A corrupt referenced message fails the read that resolves it, naming that message.
    let what = corrupt_what(store.queue("c", 0, 10));
    assert!(what.contains("stored message id 6"), "{what}");
    corrupt_what(store.queue_stats("c"));
    let what = corrupt_what(
        store
            .inbox("u", 0, 1)
            .map(|_| ())
            .and(store.inbox("u", 1, 1)),
    );
    assert!(what.contains("stored message id 6"), "{what}");
    let what = corrupt_what(store.inbox("u", 2, 1));
    assert!(what.contains("inbox entry seq 2 of user \"u\""), "{what}");
    // The intact entry before them still reads, with its message.
    assert_eq!(
        store.inbox("u", 0, 1).unwrap()[0].2,
        Some(message("chat", "fine"))
    );
    let what = corrupt_what(store.inbox_heads());
    assert!(
        what.contains("inbox high-water mark of user \"w\""),
        "{what}"
    );
    corrupt_what(store.inbox_bounds("w"));
}
