//! Tests specific to [`RocksStore`]: persistence across reopen, corrupt values (written
//! through raw RocksDB at known keys), the directory lock, read-only access and the format
//! version check.

use std::path::Path;

use bytes::Bytes;
use tern_storage::keys::{self, CF_INBOUND_QOS2, CF_META, CF_QUEUE, CF_RETAINED, CF_SESSIONS};
use tern_storage::{
    Op, QueueState, QueuedMessage, RocksStore, StorageError, Store, StoredMessage, StoredSession,
    StoredSubscription,
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
        let dequeued = u64::from(n % 3 == 0 && len > 0);
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
