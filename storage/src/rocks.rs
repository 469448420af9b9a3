//! [`RocksStore`]: the [`Store`] on RocksDB.
//!
//! Column families and keys are described in the crate documentation and [`crate::keys`],
//! values in `record.rs`. Choices specific to this implementation:
//!
//! - **One batch per write.** [`Store::write`] turns its ops into one `WriteBatch`. The only
//!   op that needs a read is [`Op::SetQueueState`] (RocksDB has no partial update without a
//!   merge operator); it reads the entry and rewrites its state byte. Because a batch does
//!   not see its own writes, the ops before it in the same batch are tracked in an overlay,
//!   and writes are serialized by a mutex so that no other write can slip between that read
//!   and the batch (the [`Writer`](crate::Writer) is the only writer anyway: uncontended).
//! - **Queue bounds by seeks.** [`Store::sessions`] finds each session's first and last
//!   queue keys with `seek` / `seek_for_prev` over its prefix, inside one snapshot, and never
//!   reads a queued value, so start-up time does not grow with the number of queued messages.
//! - **Tuning for a queue.** Queue entries are written once and deleted soon after, from the
//!   front: the `queue` family has a large write buffer (most entries die in the memtable)
//!   and a deletion-triggered compaction so that seeks do not wade through tombstones. All
//!   families use LZ4 and share one block cache; the WAL is capped in size so that a rarely
//!   written family (retained messages) cannot pin old WAL files and stretch recovery.
//! - **References resolved in batches.** [`Store::queue`], [`Store::queue_stats`] and
//!   [`Store::inbox`] first walk their entries, then read the distinct stored messages those
//!   refer to with `batched_multi_get` (sorted keys, up to `MULTI_GET_BATCH` per call), all
//!   inside one snapshot: a page costs one iterator walk and one batched lookup, not a point
//!   read per entry.
//! - **Retention by range deletion.** [`Op::TrimInbox`] and [`Op::DeleteMessagesBefore`] are
//!   one `delete_range` each (one range tombstone, however many entries it covers).
//! - **Families added later.** `users`, `groups`, `messages`, `inbox` and `inbox_next`
//!   ([`ADDED_CFS`]) do not exist in a database written before them. [`RocksStore::open`]
//!   creates them (`create_missing_column_families`); [`RocksStore::open_read_only`] cannot
//!   create anything, so it opens the families that exist and reads a missing one as empty.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBRawIterator, ErrorKind, Options, ReadOptions, Snapshot, WriteBatch, WriteOptions, DB,
};

use crate::keys::{
    client_prefix, describe_key, group_key, inbound_key, inbox_key, message_key, named_key,
    prefix_end, queue_key, split_client_key, user_prefix, ADDED_CFS, ALL_CFS, CF_GROUPS,
    CF_INBOUND_QOS2, CF_INBOX, CF_INBOX_NEXT, CF_MARKS, CF_MESSAGES, CF_META, CF_QUEUE,
    CF_QUEUE_NEXT, CF_RETAINED, CF_SESSIONS, CF_USERS, CF_USER_VALUES, FORMAT_VERSION,
    FORMAT_VERSION_KEY,
};
use crate::ordered_batch::OrderedBatch;
use crate::record::{self, DecodeError};
use crate::{
    InboxEntry, Mark, Op, QueueState, QueuedMessage, SessionRecord, StorageError, Store,
    StoredGroup, StoredMessage, StoredUser,
};

/// Shared by all column families: hot data is recent queue entries and sessions.
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Past this much WAL, RocksDB flushes the column families that hold the oldest WAL alive.
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;
/// Queue entries usually live seconds to minutes: a big memtable lets most of them be
/// written and deleted before they ever reach an SST file.
const QUEUE_WRITE_BUFFER_BYTES: usize = 64 << 20;
const SMALL_WRITE_BUFFER_BYTES: usize = 16 << 20;
/// Inbox logs and offline queues are appended at their owners' tails, many owners
/// interleaved in one batch, and their high-water marks are overwritten once per batch.
/// With a hint extractor RocksDB keeps, per key prefix, where the last insert went, so the
/// next one under that prefix starts there instead of searching the memtable from the top.
/// Only RocksDB's built-in extractors can be named in options. For the logs, a fixed
/// 10 bytes: the `u16` length and up to 8 bytes of the id (owners whose first 8 bytes agree
/// share a hint: then it helps less, and costs no more than no hint; ids shorter than 8
/// bytes bring the top bytes of the seq in, which change once per 2^(8 x length) appends).
const LOG_APPEND_HINTS: &str = "rocksdb.FixedPrefix.10";
/// For the high-water marks, the whole key (ids are at most a few dozen bytes): a new
/// version of a key sorts right before the old one, where the hint points.
const MARK_OVERWRITE_HINTS: &str = "rocksdb.CappedPrefix.256";
/// Width of a seq in a queue or inbox key, of a packet id in an inbound key, of a message id.
const SEQ_LEN: usize = 8;
const PACKET_ID_LEN: usize = 2;
const MESSAGE_ID_LEN: usize = 8;
/// Most stored messages looked up by one `batched_multi_get` call: bounds the values pinned
/// at once when a long queue is scanned for its stats.
const MULTI_GET_BATCH: usize = 1024;

/// The RocksDB [`Store`]. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    read_only: bool,
    /// Serializes [`Store::write`]: see the module docs.
    write_lock: Mutex<()>,
}

impl Drop for RocksStore {
    /// A clean close writes the memtables out, so the next start has no WAL to replay:
    /// start-up time then does not depend on how much was queued before the stop.
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        for name in ALL_CFS {
            if let Some(cf) = self.db.cf_handle(name) {
                if let Err(e) = self.db.flush_cf(cf) {
                    tracing::warn!(cf = name, "flushing {} on close: {e}", self.path.display());
                }
            }
        }
    }
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

fn db_options() -> Options {
    let mut opts = Options::default();
    // Flushes and compactions; the machine also runs the broker.
    opts.set_max_background_jobs(2);
    // Smooths SST writeback instead of one large burst per file.
    opts.set_bytes_per_sync(1 << 20);
    opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    opts.set_keep_log_file_num(5);
    opts
}

fn cf_options(cache: &Cache, write_buffer_bytes: usize) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Point lookups (retained by topic, session by client, SetQueueState's read) skip files
    // that cannot hold the key.
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(DBCompressionType::Lz4);
    // Flushes (level 0) are written uncompressed: they are on the write path's heels and
    // their data is rewritten by the first compaction anyway, which compresses it.
    let mut per_level = [DBCompressionType::Lz4; 7];
    per_level[0] = DBCompressionType::None;
    opts.set_compression_per_level(&per_level);
    opts.set_bottommost_compression_type(DBCompressionType::Lz4);
    opts.set_write_buffer_size(write_buffer_bytes);
    opts.set_level_compaction_dynamic_level_bytes(true);
    opts
}

fn cf_descriptors(names: &[&str]) -> Result<Vec<ColumnFamilyDescriptor>, StorageError> {
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    names
        .iter()
        .map(|&name| {
            let opts = match name {
                CF_QUEUE => {
                    let mut opts = cf_options(&cache, QUEUE_WRITE_BUFFER_BYTES);
                    // Dequeues leave runs of tombstones at the front of every queue; mark an
                    // SST file for compaction when 64 of any 128 consecutive entries are
                    // deletions (or half of the file is).
                    opts.add_compact_on_deletion_collector_factory(128, 64, 0.5);
                    with_insert_hints(opts, LOG_APPEND_HINTS)?
                }
                CF_INBOX => with_insert_hints(
                    cf_options(&cache, SMALL_WRITE_BUFFER_BYTES),
                    LOG_APPEND_HINTS,
                )?,
                CF_QUEUE_NEXT | CF_INBOX_NEXT => with_insert_hints(
                    cf_options(&cache, SMALL_WRITE_BUFFER_BYTES),
                    MARK_OVERWRITE_HINTS,
                )?,
                CF_META => cf_options(&cache, 1 << 20),
                CF_MARKS => {
                    let mut opts = cf_options(&cache, SMALL_WRITE_BUFFER_BYTES);
                    opts.set_merge_operator_associative("tern.mark_max", merge_marks);
                    opts
                }
                _ => cf_options(&cache, SMALL_WRITE_BUFFER_BYTES),
            };
            Ok(ColumnFamilyDescriptor::new(name, opts))
        })
        .collect()
}

/// `opts` with `extractor` (a RocksDB built-in slice transform) as its memtable insert
/// hint extractor.
fn with_insert_hints(mut opts: Options, extractor: &str) -> Result<Options, StorageError> {
    opts.get_options_from_string(format!(
        "memtable_insert_with_hint_prefix_extractor={extractor}"
    ))
    .map_err(|e| {
        StorageError::rocks(
            format!("setting the memtable insert hint extractor {extractor}"),
            e,
        )
    })
}

/// RocksDB's merge of the `marks` family (see `record::merge_marks`).
fn merge_marks(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    record::merge_marks(existing, operands)
}

/// Turns an open failure into [`StorageError::Locked`] when RocksDB could not take the
/// directory's `LOCK` file (another process, or another store in this process, has it open).
fn open_error(dir: &Path, source: rocksdb::Error) -> StorageError {
    if source.kind() == ErrorKind::IOError && source.to_string().to_lowercase().contains("lock") {
        return StorageError::Locked {
            path: dir.to_path_buf(),
            source,
        };
    }
    StorageError::rocks(
        format!("opening storage directory {}", dir.display()),
        source,
    )
}

fn decode_error(cf: &str, key: &[u8], e: DecodeError) -> StorageError {
    StorageError::corrupt(format!("{}: {e}", describe_key(cf, key)))
}

/// Exclusive end of the range of every key of a client prefix. A client prefix always has an
/// end (UTF-8 has no 0xFF byte); the fallback is past any queue or inbound key regardless.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    prefix_end(prefix).unwrap_or_else(|| {
        let mut end = prefix.to_vec();
        end.extend_from_slice(&[u8::MAX; SEQ_LEN + 1]);
        end
    })
}

/// The fixed-width suffix of a per-client key, checked to belong to `prefix`.
fn suffix<const N: usize>(cf: &str, key: &[u8], prefix: &[u8]) -> Result<[u8; N], StorageError> {
    key.strip_prefix(prefix)
        .and_then(|rest| <[u8; N]>::try_from(rest).ok())
        .ok_or_else(|| {
            StorageError::corrupt(format!(
                "{}: not the client prefix followed by {N} bytes",
                describe_key(cf, key)
            ))
        })
}

/// What the ops earlier in a batch did to a queue entry (the batch cannot be read back).
enum Pending<'a> {
    Enqueued(&'a QueuedMessage),
    Rewritten(Vec<u8>),
    Dequeued,
}

/// One batch being built from ops (see [`RocksStore::build_batch`]): the column families,
/// the batch, and what the ops already in it changed that later ops of the same batch must
/// see.
struct BatchBuilder<'a> {
    store: &'a RocksStore,
    retained: &'a ColumnFamily,
    sessions: &'a ColumnFamily,
    queue: &'a ColumnFamily,
    queue_next: &'a ColumnFamily,
    inbound: &'a ColumnFamily,
    users: &'a ColumnFamily,
    groups: &'a ColumnFamily,
    messages: &'a ColumnFamily,
    inbox: &'a ColumnFamily,
    inbox_next: &'a ColumnFamily,
    marks: &'a ColumnFamily,
    user_values: &'a ColumnFamily,
    batch: OrderedBatch<'a>,
    /// Queue entries written by the batch so far, for a SetQueueState that reads one; kept
    /// (and only paid for) when some op of the batch does.
    track: bool,
    overlay: HashMap<Vec<u8>, Pending<'a>>,
    /// Clients deleted earlier in the batch: their entries outside the overlay are gone.
    deleted: HashSet<Vec<u8>>,
    /// Per client prefix, one past the highest seq enqueued in this batch (after its last
    /// deletion in the batch, if any); written once per client at the end of the batch.
    next_seqs: HashMap<Vec<u8>, u64>,
    /// The same for inbox logs, per user prefix (nothing deletes an inbox high-water mark).
    inbox_next_seqs: HashMap<Vec<u8>, u64>,
}

impl<'a> BatchBuilder<'a> {
    fn new(store: &'a RocksStore, ops: &[Op]) -> Result<BatchBuilder<'a>, StorageError> {
        Ok(BatchBuilder {
            store,
            retained: store.cf(CF_RETAINED)?,
            sessions: store.cf(CF_SESSIONS)?,
            queue: store.cf(CF_QUEUE)?,
            queue_next: store.cf(CF_QUEUE_NEXT)?,
            inbound: store.cf(CF_INBOUND_QOS2)?,
            users: store.cf(CF_USERS)?,
            groups: store.cf(CF_GROUPS)?,
            messages: store.cf(CF_MESSAGES)?,
            inbox: store.cf(CF_INBOX)?,
            inbox_next: store.cf(CF_INBOX_NEXT)?,
            marks: store.cf(CF_MARKS)?,
            user_values: store.cf(CF_USER_VALUES)?,
            batch: OrderedBatch::default(),
            track: ops.iter().any(|op| matches!(op, Op::SetQueueState { .. })),
            overlay: HashMap::new(),
            deleted: HashSet::new(),
            next_seqs: HashMap::new(),
            inbox_next_seqs: HashMap::new(),
        })
    }

    fn add(&mut self, op: &'a Op) -> Result<(), StorageError> {
        let batch = &mut self.batch;
        match op {
            Op::PutRetained { topic, message } => {
                batch.put_cf(
                    self.retained,
                    topic.as_bytes(),
                    record::encode_message(message)?,
                );
            }
            Op::DeleteRetained { topic } => batch.delete_cf(self.retained, topic.as_bytes()),
            Op::PutSession(session) => {
                let key = client_prefix(&session.client_id)?;
                batch.put_cf(self.sessions, key, record::encode_session(session)?);
            }
            Op::DeleteSession { client_id } => self.delete_session(client_id)?,
            Op::Enqueue {
                client_id,
                seq,
                message,
            } => self.enqueue(client_id, *seq, message)?,
            Op::SetQueueState {
                client_id,
                seq,
                state,
            } => self.set_queue_state(client_id, *seq, *state)?,
            Op::Dequeue { client_id, seq } => {
                let key = queue_key(client_id, *seq)?;
                if self.track {
                    batch.delete_cf(self.queue, key.clone());
                    self.overlay.insert(key, Pending::Dequeued);
                } else {
                    batch.delete_cf(self.queue, key);
                }
            }
            Op::PutInboundQos2 {
                client_id,
                packet_id,
            } => batch.put_cf(self.inbound, inbound_key(client_id, *packet_id)?, []),
            Op::DeleteInboundQos2 {
                client_id,
                packet_id,
            } => batch.delete_cf(self.inbound, inbound_key(client_id, *packet_id)?),
            Op::PutUser(user) => {
                batch.put_cf(
                    self.users,
                    user_prefix(&user.user)?,
                    record::encode_user(user)?,
                );
            }
            Op::DeleteUser { user } => batch.delete_cf(self.users, user_prefix(user)?),
            Op::PutGroup(group) => {
                batch.put_cf(
                    self.groups,
                    group_key(&group.gid)?,
                    record::encode_group(group)?,
                );
            }
            Op::DeleteGroup { gid } => batch.delete_cf(self.groups, group_key(gid)?),
            Op::PutMessage { id, message } => {
                batch.put_cf(
                    self.messages,
                    message_key(*id),
                    record::encode_message(message)?,
                );
            }
            Op::AppendInbox { user, seq, entry } => {
                let key = inbox_key(user, *seq)?;
                raise_next(&mut self.inbox_next_seqs, &key, *seq);
                batch.put_cf(self.inbox, key, record::encode_inbox(entry));
            }
            // An empty range has nothing to delete (and RocksDB wants begin < end).
            Op::TrimInbox { user, below_seq } => {
                if *below_seq > 0 {
                    let begin = inbox_key(user, 0)?;
                    let end = inbox_key(user, *below_seq)?;
                    batch.delete_range_cf(self.inbox, begin, end);
                }
            }
            Op::DeleteMessagesBefore { below_id } => {
                if *below_id > 0 {
                    batch.delete_range_cf(self.messages, message_key(0), message_key(*below_id));
                }
            }
            Op::RaiseMark { user, name, mark } => {
                batch.merge_cf(
                    self.marks,
                    named_key(user, name)?,
                    record::encode_mark(mark),
                );
            }
            Op::PutUserValue { user, name, value } => {
                batch.put_cf(self.user_values, named_key(user, name)?, value.to_vec());
            }
        }
        Ok(())
    }

    fn delete_session(&mut self, client_id: &str) -> Result<(), StorageError> {
        let prefix = client_prefix(client_id)?;
        let end = range_end(&prefix);
        self.batch.delete_cf(self.sessions, prefix.clone());
        self.batch.delete_range_cf(self.queue, &prefix, &end);
        self.batch.delete_range_cf(self.inbound, &prefix, &end);
        self.batch.delete_cf(self.queue_next, prefix.clone());
        self.next_seqs.remove(&prefix);
        if self.track {
            self.overlay.retain(|key, _| !key.starts_with(&prefix));
            self.deleted.insert(prefix);
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        client_id: &str,
        seq: u64,
        message: &'a QueuedMessage,
    ) -> Result<(), StorageError> {
        let key = queue_key(client_id, seq)?;
        let value = record::encode_queued(message)?;
        raise_next(&mut self.next_seqs, &key, seq);
        if self.track {
            self.batch.put_cf(self.queue, key.clone(), value);
            self.overlay.insert(key, Pending::Enqueued(message));
        } else {
            self.batch.put_cf(self.queue, key, value);
        }
        Ok(())
    }

    /// Rewrites a queue entry's state: the entry as this batch left it, or as stored.
    fn set_queue_state(
        &mut self,
        client_id: &str,
        seq: u64,
        state: QueueState,
    ) -> Result<(), StorageError> {
        let key = queue_key(client_id, seq)?;
        let current = match self.overlay.get(&key) {
            Some(Pending::Enqueued(message)) => Some(record::encode_queued(message)?),
            Some(Pending::Rewritten(value)) => Some(value.clone()),
            Some(Pending::Dequeued) => None,
            None if self.deleted.contains(&key[..key.len() - SEQ_LEN]) => None,
            None => self.store.db.get_cf(self.queue, &key).map_err(|e| {
                StorageError::rocks(format!("reading {}", describe_key(CF_QUEUE, &key)), e)
            })?,
        };
        // Absent entry (already dequeued): nothing to do, as documented.
        if let Some(mut value) = current {
            record::set_queued_state(&mut value, state)
                .map_err(|e| decode_error(CF_QUEUE, &key, e))?;
            self.batch.put_cf(self.queue, key.clone(), value.clone());
            self.overlay.insert(key, Pending::Rewritten(value));
        }
        Ok(())
    }

    /// The batch, with the logs' high-water marks: written blindly (seqs increase per
    /// client and per user, so the batch's highest is the highest), after any
    /// DeleteSession of the batch so that a client's survives only re-enqueues.
    fn finish(mut self) -> WriteBatch {
        for (prefix, next) in self.next_seqs {
            self.batch
                .put_cf(self.queue_next, prefix, next.to_be_bytes());
        }
        for (prefix, next) in self.inbox_next_seqs {
            self.batch
                .put_cf(self.inbox_next, prefix, next.to_be_bytes());
        }
        self.batch.finish()
    }
}

/// One past `seq` as the high-water mark of the log `key` (prefix and seq) is in, unless
/// the batch has a higher one already.
fn raise_next(marks: &mut HashMap<Vec<u8>, u64>, key: &[u8], seq: u64) {
    let next = seq.saturating_add(1);
    let prefix = key[..key.len() - SEQ_LEN].to_vec();
    marks
        .entry(prefix)
        .and_modify(|n| *n = (*n).max(next))
        .or_insert(next);
}

impl RocksStore {
    /// Opens (creating if missing) the store in `dir`. Fails with [`StorageError::Locked`]
    /// if another process has it open, [`StorageError::UnsupportedFormat`] if it was written
    /// by an incompatible version.
    pub fn open(dir: &Path) -> Result<RocksStore, StorageError> {
        let mut opts = db_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Missing families are created: a database written before the last families were
        // added (see the module docs) opens as is.
        let db = DB::open_cf_descriptors(&opts, dir, cf_descriptors(&ALL_CFS)?)
            .map_err(|e| open_error(dir, e))?;
        let store = RocksStore {
            db,
            path: dir.to_path_buf(),
            read_only: false,
            write_lock: Mutex::new(()),
        };
        store.check_format(true)?;
        Ok(store)
    }

    /// Opens an existing store for reading only, e.g. to inspect a stopped broker's data.
    /// Takes no lock (it also works next to a running broker, seeing the state as of the
    /// open); [`Store::write`] fails with [`StorageError::ReadOnly`].
    pub fn open_read_only(dir: &Path) -> Result<RocksStore, StorageError> {
        let opts = db_options();
        // A read-only open cannot create the families added after a database was written, and
        // fails on any it asks for that is missing: ask only for those that exist. If the
        // listing fails (no database there), the open below reports it.
        let existing = DB::list_cf(&opts, dir).unwrap_or_default();
        let names: Vec<&str> = ALL_CFS
            .into_iter()
            .filter(|name| !ADDED_CFS.contains(name) || existing.iter().any(|e| e == name))
            .collect();
        let db = DB::open_cf_descriptors_read_only(&opts, dir, cf_descriptors(&names)?, false)
            .map_err(|e| open_error(dir, e))?;
        let store = RocksStore {
            db,
            path: dir.to_path_buf(),
            read_only: true,
            write_lock: Mutex::new(()),
        };
        store.check_format(false)?;
        Ok(store)
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Checks the data format version, writing it into a new store when `initialize`.
    fn check_format(&self, initialize: bool) -> Result<(), StorageError> {
        let meta = self.cf(CF_META)?;
        let stored = self
            .db
            .get_cf(meta, FORMAT_VERSION_KEY)
            .map_err(|e| StorageError::rocks("reading the format version", e))?;
        match stored {
            Some(value) => {
                let found = <[u8; 4]>::try_from(value.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| {
                        StorageError::corrupt(format!(
                            "format version in {} is {} bytes long, not 4",
                            self.path.display(),
                            value.len()
                        ))
                    })?;
                if found != FORMAT_VERSION {
                    return Err(StorageError::UnsupportedFormat {
                        path: self.path.clone(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                Ok(())
            }
            None if initialize => {
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                self.db
                    .put_cf_opt(
                        meta,
                        FORMAT_VERSION_KEY,
                        FORMAT_VERSION.to_be_bytes(),
                        &sync,
                    )
                    .map_err(|e| StorageError::rocks("writing the format version", e))
            }
            None => Err(StorageError::corrupt(format!(
                "{} has no format version: not a tern storage directory",
                self.path.display()
            ))),
        }
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        // Every family is opened with the database, so a missing one means a broken open.
        self.db.cf_handle(name).ok_or_else(|| self.missing_cf(name))
    }

    fn missing_cf(&self, name: &str) -> StorageError {
        StorageError::corrupt(format!(
            "column family {name} missing in {}",
            self.path.display()
        ))
    }

    /// A family to read from: `None` for one of [`ADDED_CFS`] missing from an older database
    /// opened read-only, which reads as empty.
    fn read_cf(&self, name: &str) -> Result<Option<&ColumnFamily>, StorageError> {
        match self.db.cf_handle(name) {
            Some(cf) => Ok(Some(cf)),
            None if self.read_only && ADDED_CFS.contains(&name) => Ok(None),
            None => Err(self.missing_cf(name)),
        }
    }

    /// Translates `ops` into one batch. SetQueueState reads the database, so this runs under
    /// `write_lock`.
    fn build_batch(&self, ops: &[Op]) -> Result<WriteBatch, StorageError> {
        let mut builder = BatchBuilder::new(self, ops)?;
        for op in ops {
            builder.add(op)?;
        }
        Ok(builder.finish())
    }

    /// The bounds of a seq-addressed log (a client's queue, a user's inbox): `it` is an
    /// iterator over the log family `log_cf`, `next` the stored high-water mark from
    /// `next_cf`, `prefix` the client or user prefix.
    fn seq_bounds(
        it: &mut DBRawIterator<'_>,
        next: Option<Vec<u8>>,
        prefix: &[u8],
        log_cf: &str,
        next_cf: &str,
    ) -> Result<(u64, u64), StorageError> {
        let seq_here = |it: &DBRawIterator<'_>| -> Result<Option<u64>, StorageError> {
            match it.key() {
                Some(key) if key.starts_with(prefix) => {
                    suffix::<SEQ_LEN>(log_cf, key, prefix).map(|s| Some(u64::from_be_bytes(s)))
                }
                _ => Ok(None),
            }
        };
        it.seek(prefix);
        let first = seq_here(it)?;
        let last = if first.is_some() {
            let mut last_key = prefix.to_vec();
            last_key.extend_from_slice(&[u8::MAX; SEQ_LEN]);
            it.seek_for_prev(&last_key);
            seq_here(it)?
        } else {
            None
        };
        it.status()
            .map_err(|e| StorageError::rocks(format!("seeking in {log_cf}"), e))?;
        let high_water = match next {
            Some(value) => {
                record::decode_u64(&value).map_err(|e| decode_error(next_cf, prefix, e))?
            }
            None => 0,
        };
        let next_seq = high_water.max(last.map_or(0, |seq| seq.saturating_add(1)));
        Ok((first.unwrap_or(next_seq), next_seq))
    }

    /// Iterates the keys of one client (or user) in `cf` as of `snapshot`, from `start`
    /// (which must begin with `prefix`).
    fn prefix_iter<'s>(
        snapshot: &'s Snapshot<'_>,
        cf: &ColumnFamily,
        prefix: &[u8],
        start: &[u8],
    ) -> DBRawIterator<'s> {
        let mut opts = ReadOptions::default();
        // The bound stops the iterator at the client's end instead of one key into the next
        // client (and lets RocksDB skip tombstones past it).
        opts.set_iterate_upper_bound(range_end(prefix));
        let mut it = snapshot.raw_iterator_cf_opt(cf, opts);
        it.seek(start);
        it
    }

    /// Looks up the stored messages `ids` (ascending, distinct) as of `snapshot`, in batched
    /// multi-gets, and hands each one that exists to `found`.
    fn for_each_message(
        &self,
        snapshot: &Snapshot<'_>,
        ids: &[u64],
        mut found: impl FnMut(u64, StoredMessage),
    ) -> Result<(), StorageError> {
        let Some(cf) = self.read_cf(CF_MESSAGES)? else {
            return Ok(());
        };
        let mut opts = ReadOptions::default();
        opts.set_snapshot(snapshot);
        for chunk in ids.chunks(MULTI_GET_BATCH) {
            let keys: Vec<[u8; MESSAGE_ID_LEN]> = chunk.iter().map(|&id| message_key(id)).collect();
            // Sorted input lets RocksDB walk the keys in order instead of sorting them.
            let values = self.db.batched_multi_get_cf_opt(cf, &keys, true, &opts);
            for ((&id, key), value) in chunk.iter().zip(&keys).zip(values) {
                let value = value.map_err(|e| {
                    StorageError::rocks(format!("reading {}", describe_key(CF_MESSAGES, key)), e)
                })?;
                if let Some(value) = value {
                    let message = record::decode_message(Bytes::copy_from_slice(&value))
                        .map_err(|e| decode_error(CF_MESSAGES, key, e))?;
                    found(id, message);
                }
            }
        }
        Ok(())
    }

    /// Every value of `cf_name` keyed by a bare length-prefixed id (users, groups, inbox
    /// high-water marks), decoded with `decode` from the id and the value, in key order (by id
    /// length first).
    fn scan_ids<T>(
        &self,
        cf_name: &str,
        decode: impl Fn(String, Bytes) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, StorageError> {
        let Some(cf) = self.read_cf(cf_name)? else {
            return Ok(Vec::new());
        };
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_to_first();
        let mut out = Vec::new();
        while let Some((key, value)) = it.item() {
            let id = match split_client_key(key) {
                Some((id, [])) => id.to_owned(),
                _ => {
                    return Err(StorageError::corrupt(format!(
                        "{}: not a length-prefixed id",
                        describe_key(cf_name, key)
                    )))
                }
            };
            out.push(
                decode(id, Bytes::copy_from_slice(value))
                    .map_err(|e| decode_error(cf_name, key, e))?,
            );
            it.next();
        }
        it.status()
            .map_err(|e| StorageError::rocks(format!("iterating {cf_name}"), e))?;
        Ok(out)
    }

    /// The value at `key` of `cf_name`, decoded.
    fn get_decoded<T>(
        &self,
        cf_name: &str,
        key: &[u8],
        decode: impl FnOnce(Bytes) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, StorageError> {
        let Some(cf) = self.read_cf(cf_name)? else {
            return Ok(None);
        };
        let value = self.db.get_cf(cf, key).map_err(|e| {
            StorageError::rocks(format!("reading {}", describe_key(cf_name, key)), e)
        })?;
        value
            .map(|v| decode(Bytes::from(v)).map_err(|e| decode_error(cf_name, key, e)))
            .transpose()
    }
}

impl Store for RocksStore {
    fn write(&self, ops: &[Op], sync: bool) -> Result<(), StorageError> {
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        for op in ops {
            op.validate()?;
        }
        if ops.is_empty() {
            return if sync { self.sync() } else { Ok(()) };
        }
        // The guard protects no data, only the read-then-write of SetQueueState.
        let _serialized = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let batch = self.build_batch(ops)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts).map_err(|e| {
            StorageError::rocks(
                format!(
                    "writing a batch of {} ops to {}",
                    ops.len(),
                    self.path.display()
                ),
                e,
            )
        })
    }

    fn sync(&self) -> Result<(), StorageError> {
        if self.read_only {
            return Ok(());
        }
        self.db.flush_wal(true).map_err(|e| {
            StorageError::rocks(format!("syncing the WAL of {}", self.path.display()), e)
        })
    }

    fn retained(&self) -> Result<Vec<(String, StoredMessage)>, StorageError> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_RETAINED)?);
        it.seek_to_first();
        let mut out = Vec::new();
        while let Some((key, value)) = it.item() {
            let topic = std::str::from_utf8(key).map_err(|_| {
                StorageError::corrupt(format!("{}: not UTF-8", describe_key(CF_RETAINED, key)))
            })?;
            let message = record::decode_message(Bytes::copy_from_slice(value))
                .map_err(|e| decode_error(CF_RETAINED, key, e))?;
            out.push((topic.to_owned(), message));
            it.next();
        }
        it.status()
            .map_err(|e| StorageError::rocks("iterating retained messages", e))?;
        Ok(out)
    }

    fn get_retained(&self, topic: &str) -> Result<Option<StoredMessage>, StorageError> {
        let value = self
            .db
            .get_cf(self.cf(CF_RETAINED)?, topic.as_bytes())
            .map_err(|e| {
                StorageError::rocks(
                    format!("reading {}", describe_key(CF_RETAINED, topic.as_bytes())),
                    e,
                )
            })?;
        value
            .map(|v| {
                record::decode_message(Bytes::from(v))
                    .map_err(|e| decode_error(CF_RETAINED, topic.as_bytes(), e))
            })
            .transpose()
    }

    fn sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        let queue_next = self.cf(CF_QUEUE_NEXT)?;
        // One snapshot: a session and its queue bounds are read as of the same instant even
        // if the writer is running.
        let snapshot = self.db.snapshot();
        let mut sessions = snapshot.raw_iterator_cf(self.cf(CF_SESSIONS)?);
        let mut queue = snapshot.raw_iterator_cf(self.cf(CF_QUEUE)?);
        let mut out = Vec::new();
        sessions.seek_to_first();
        while let Some((key, value)) = sessions.item() {
            let client_id = match split_client_key(key) {
                Some((id, [])) => id.to_owned(),
                _ => {
                    return Err(StorageError::corrupt(format!(
                        "{}: not a client prefix",
                        describe_key(CF_SESSIONS, key)
                    )))
                }
            };
            let session = record::decode_session(client_id, Bytes::copy_from_slice(value))
                .map_err(|e| decode_error(CF_SESSIONS, key, e))?;
            let next = snapshot.get_cf(queue_next, key).map_err(|e| {
                StorageError::rocks(format!("reading {}", describe_key(CF_QUEUE_NEXT, key)), e)
            })?;
            let (first_seq, next_seq) =
                Self::seq_bounds(&mut queue, next, key, CF_QUEUE, CF_QUEUE_NEXT)?;
            out.push(SessionRecord {
                session,
                first_seq,
                next_seq,
            });
            sessions.next();
        }
        sessions
            .status()
            .map_err(|e| StorageError::rocks("iterating sessions", e))?;
        // Keys sort by id length first; callers get the same order as from MemoryStore.
        out.sort_by(|a, b| a.session.client_id.cmp(&b.session.client_id));
        Ok(out)
    }

    fn session(&self, client_id: &str) -> Result<Option<SessionRecord>, StorageError> {
        let key = client_prefix(client_id)?;
        let snapshot = self.db.snapshot();
        let read = |cf_name: &str| -> Result<Option<Vec<u8>>, StorageError> {
            snapshot.get_cf(self.cf(cf_name)?, &key).map_err(|e| {
                StorageError::rocks(format!("reading {}", describe_key(cf_name, &key)), e)
            })
        };
        let Some(value) = read(CF_SESSIONS)? else {
            return Ok(None);
        };
        let session = record::decode_session(client_id.to_owned(), Bytes::from(value))
            .map_err(|e| decode_error(CF_SESSIONS, &key, e))?;
        let next = read(CF_QUEUE_NEXT)?;
        let mut queue = snapshot.raw_iterator_cf(self.cf(CF_QUEUE)?);
        let (first_seq, next_seq) =
            Self::seq_bounds(&mut queue, next, &key, CF_QUEUE, CF_QUEUE_NEXT)?;
        Ok(Some(SessionRecord {
            session,
            first_seq,
            next_seq,
        }))
    }

    fn queue(
        &self,
        client_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, QueuedMessage)>, StorageError> {
        let start = queue_key(client_id, from_seq)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = &start[..start.len() - SEQ_LEN];
        // One snapshot: the entries and the messages they refer to are read as of one instant.
        let snapshot = self.db.snapshot();
        let mut it = Self::prefix_iter(&snapshot, self.cf(CF_QUEUE)?, prefix, &start);
        let mut out = Vec::with_capacity(limit.min(256));
        while out.len() < limit {
            let Some((key, value)) = it.item() else {
                break;
            };
            let seq = u64::from_be_bytes(suffix::<SEQ_LEN>(CF_QUEUE, key, prefix)?);
            let message = record::decode_queued(Bytes::copy_from_slice(value))
                .map_err(|e| decode_error(CF_QUEUE, key, e))?;
            out.push((seq, message));
            it.next();
        }
        it.status().map_err(|e| {
            StorageError::rocks(format!("reading the queue of client {client_id:?}"), e)
        })?;
        drop(it);

        let refs: BTreeSet<u64> = out.iter().filter_map(|(_, q)| q.message_ref).collect();
        if refs.is_empty() {
            return Ok(out);
        }
        let refs: Vec<u64> = refs.into_iter().collect();
        let mut payloads = HashMap::with_capacity(refs.len());
        self.for_each_message(&snapshot, &refs, |id, message| {
            payloads.insert(id, message.payload);
        })?;
        // A reference whose message is gone stays set, with the empty payload it was stored
        // with: the broker drops such an entry.
        for (_, queued) in &mut out {
            if let Some(payload) = queued.message_ref.and_then(|id| payloads.get(&id)) {
                queued.message.payload = payload.clone();
                queued.message_ref = None;
            }
        }
        Ok(out)
    }

    fn queue_stats(&self, client_id: &str) -> Result<(u64, u64), StorageError> {
        let prefix = client_prefix(client_id)?;
        let snapshot = self.db.snapshot();
        let mut it = Self::prefix_iter(&snapshot, self.cf(CF_QUEUE)?, &prefix, &prefix);
        let (mut count, mut bytes) = (0u64, 0u64);
        // Referenced message id -> number of entries referring to it.
        let mut refs: BTreeMap<u64, u64> = BTreeMap::new();
        while let Some((key, value)) = it.item() {
            suffix::<SEQ_LEN>(CF_QUEUE, key, &prefix)?;
            let queued = record::decode_queued(Bytes::copy_from_slice(value))
                .map_err(|e| decode_error(CF_QUEUE, key, e))?;
            count += 1;
            match queued.message_ref {
                Some(id) => *refs.entry(id).or_default() += 1,
                None => bytes += queued.message.payload.len() as u64,
            }
            it.next();
        }
        it.status().map_err(|e| {
            StorageError::rocks(format!("scanning the queue of client {client_id:?}"), e)
        })?;
        drop(it);
        let ids: Vec<u64> = refs.keys().copied().collect();
        self.for_each_message(&snapshot, &ids, |id, message| {
            let entries = refs.get(&id).copied().unwrap_or(0);
            bytes += entries * message.payload.len() as u64;
        })?;
        Ok((count, bytes))
    }

    fn inbound_qos2(&self, client_id: &str) -> Result<Vec<u16>, StorageError> {
        let prefix = client_prefix(client_id)?;
        let snapshot = self.db.snapshot();
        let mut it = Self::prefix_iter(&snapshot, self.cf(CF_INBOUND_QOS2)?, &prefix, &prefix);
        let mut out = Vec::new();
        while let Some(key) = it.key() {
            out.push(u16::from_be_bytes(suffix::<PACKET_ID_LEN>(
                CF_INBOUND_QOS2,
                key,
                &prefix,
            )?));
            it.next();
        }
        it.status().map_err(|e| {
            StorageError::rocks(
                format!("reading the inbound QoS 2 ids of client {client_id:?}"),
                e,
            )
        })?;
        Ok(out)
    }

    fn users(&self) -> Result<Vec<StoredUser>, StorageError> {
        let mut users = self.scan_ids(CF_USERS, record::decode_user)?;
        // Keys sort by id length first; callers get the same order as from MemoryStore.
        users.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(users)
    }

    fn user(&self, user: &str) -> Result<Option<StoredUser>, StorageError> {
        let key = user_prefix(user)?;
        self.get_decoded(CF_USERS, &key, |value| {
            record::decode_user(user.to_owned(), value)
        })
    }

    fn groups(&self) -> Result<Vec<StoredGroup>, StorageError> {
        let mut groups = self.scan_ids(CF_GROUPS, record::decode_group)?;
        groups.sort_by(|a, b| a.gid.cmp(&b.gid));
        Ok(groups)
    }

    fn group(&self, gid: &str) -> Result<Option<StoredGroup>, StorageError> {
        let key = group_key(gid)?;
        self.get_decoded(CF_GROUPS, &key, |value| {
            record::decode_group(gid.to_owned(), value)
        })
    }

    fn message(&self, id: u64) -> Result<Option<StoredMessage>, StorageError> {
        self.get_decoded(CF_MESSAGES, &message_key(id), record::decode_message)
    }

    fn last_message_id(&self) -> Result<Option<u64>, StorageError> {
        let Some(cf) = self.read_cf(CF_MESSAGES)? else {
            return Ok(None);
        };
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_to_last();
        let last = match it.key() {
            Some(key) => Some(
                <[u8; MESSAGE_ID_LEN]>::try_from(key)
                    .map(u64::from_be_bytes)
                    .map_err(|_| {
                        StorageError::corrupt(format!(
                            "{}: not a message id",
                            describe_key(CF_MESSAGES, key)
                        ))
                    })?,
            ),
            None => None,
        };
        it.status()
            .map_err(|e| StorageError::rocks("seeking the last stored message", e))?;
        Ok(last)
    }

    fn inbox(
        &self,
        user: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, InboxEntry, Option<StoredMessage>)>, StorageError> {
        let start = inbox_key(user, from_seq)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(cf) = self.read_cf(CF_INBOX)? else {
            return Ok(Vec::new());
        };
        let prefix = &start[..start.len() - SEQ_LEN];
        // One snapshot: the entries and their messages are read as of one instant.
        let snapshot = self.db.snapshot();
        let mut it = Self::prefix_iter(&snapshot, cf, prefix, &start);
        let mut entries = Vec::with_capacity(limit.min(256));
        while entries.len() < limit {
            let Some((key, value)) = it.item() else {
                break;
            };
            let seq = u64::from_be_bytes(suffix::<SEQ_LEN>(CF_INBOX, key, prefix)?);
            let entry = record::decode_inbox(value).map_err(|e| decode_error(CF_INBOX, key, e))?;
            entries.push((seq, entry));
            it.next();
        }
        it.status()
            .map_err(|e| StorageError::rocks(format!("reading the inbox of user {user:?}"), e))?;
        drop(it);

        let ids: BTreeSet<u64> = entries.iter().map(|(_, e)| e.message_id).collect();
        let ids: Vec<u64> = ids.into_iter().collect();
        let mut messages = HashMap::with_capacity(ids.len());
        self.for_each_message(&snapshot, &ids, |id, message| {
            messages.insert(id, message);
        })?;
        Ok(entries
            .into_iter()
            .map(|(seq, entry)| (seq, entry, messages.get(&entry.message_id).cloned()))
            .collect())
    }

    fn inbox_bounds(&self, user: &str) -> Result<(u64, u64), StorageError> {
        let prefix = user_prefix(user)?;
        let (Some(inbox), Some(inbox_next)) =
            (self.read_cf(CF_INBOX)?, self.read_cf(CF_INBOX_NEXT)?)
        else {
            return Ok((0, 0));
        };
        let snapshot = self.db.snapshot();
        let next = snapshot.get_cf(inbox_next, &prefix).map_err(|e| {
            StorageError::rocks(
                format!("reading {}", describe_key(CF_INBOX_NEXT, &prefix)),
                e,
            )
        })?;
        let mut it = snapshot.raw_iterator_cf(inbox);
        Self::seq_bounds(&mut it, next, &prefix, CF_INBOX, CF_INBOX_NEXT)
    }

    fn inbox_heads(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let mut heads = self.scan_ids(CF_INBOX_NEXT, |user, value| {
            Ok((user, record::decode_u64(&value)?))
        })?;
        heads.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(heads)
    }

    fn marks(&self, user: &str, prefix: &str) -> Result<Vec<(String, Mark)>, StorageError> {
        let Some(cf) = self.read_cf(CF_MARKS)? else {
            return Ok(Vec::new());
        };
        let user_key = user_prefix(user)?;
        let start = named_key(user, prefix)?;
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek(&start);
        let mut out = Vec::new();
        while let Some((key, value)) = it.item() {
            if !key.starts_with(&start) {
                break;
            }
            let name = std::str::from_utf8(&key[user_key.len()..]).map_err(|_| {
                StorageError::corrupt(format!("{}: name not UTF-8", describe_key(CF_MARKS, key)))
            })?;
            let mark = record::decode_mark(value).map_err(|e| decode_error(CF_MARKS, key, e))?;
            out.push((name.to_string(), mark));
            it.next();
        }
        it.status()
            .map_err(|e| StorageError::rocks(format!("iterating {CF_MARKS}"), e))?;
        Ok(out)
    }

    fn mark(&self, user: &str, name: &str) -> Result<Option<Mark>, StorageError> {
        let key = named_key(user, name)?;
        self.get_decoded(CF_MARKS, &key, |value| record::decode_mark(&value))
    }

    fn user_value(&self, user: &str, name: &str) -> Result<Option<Bytes>, StorageError> {
        let key = named_key(user, name)?;
        self.get_decoded(CF_USER_VALUES, &key, Ok)
    }

    /// A RocksDB checkpoint: the memtables flushed, then the live files hard-linked (or
    /// copied, across file systems) with the write-ahead log up to the call, every column
    /// family at one point in time.
    fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        if dir.exists() {
            return Err(StorageError::Invalid {
                what: format!(
                    "{} already exists: a backup goes to a new directory",
                    dir.display()
                ),
            });
        }
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)
            .map_err(|e| StorageError::rocks("preparing a checkpoint", e))?;
        checkpoint.create_checkpoint(dir).map_err(|e| {
            StorageError::rocks(format!("writing a checkpoint to {}", dir.display()), e)
        })
    }
}
