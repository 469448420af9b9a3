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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBRawIterator, ErrorKind, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};

use crate::keys::{
    client_prefix, describe_key, inbound_key, prefix_end, queue_key, split_client_key, ALL_CFS,
    CF_INBOUND_QOS2, CF_META, CF_QUEUE, CF_QUEUE_NEXT, CF_RETAINED, CF_SESSIONS, FORMAT_VERSION,
    FORMAT_VERSION_KEY,
};
use crate::record::{self, DecodeError};
use crate::{Op, QueuedMessage, SessionRecord, StorageError, Store, StoredMessage};

/// Shared by all column families: hot data is recent queue entries and sessions.
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Past this much WAL, RocksDB flushes the column families that hold the oldest WAL alive.
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;
/// Queue entries usually live seconds to minutes: a big memtable lets most of them be
/// written and deleted before they ever reach an SST file.
const QUEUE_WRITE_BUFFER_BYTES: usize = 64 << 20;
const SMALL_WRITE_BUFFER_BYTES: usize = 16 << 20;
/// Width of a seq in a queue key, and of a packet id in an inbound key.
const SEQ_LEN: usize = 8;
const PACKET_ID_LEN: usize = 2;

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
    opts.set_bottommost_compression_type(DBCompressionType::Lz4);
    opts.set_write_buffer_size(write_buffer_bytes);
    opts.set_level_compaction_dynamic_level_bytes(true);
    opts
}

fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    ALL_CFS
        .iter()
        .map(|&name| {
            let opts = match name {
                CF_QUEUE => {
                    let mut opts = cf_options(&cache, QUEUE_WRITE_BUFFER_BYTES);
                    // Dequeues leave runs of tombstones at the front of every queue; mark an
                    // SST file for compaction when 64 of any 128 consecutive entries are
                    // deletions (or half of the file is).
                    opts.add_compact_on_deletion_collector_factory(128, 64, 0.5);
                    opts
                }
                CF_META => cf_options(&cache, 1 << 20),
                _ => cf_options(&cache, SMALL_WRITE_BUFFER_BYTES),
            };
            ColumnFamilyDescriptor::new(name, opts)
        })
        .collect()
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

impl RocksStore {
    /// Opens (creating if missing) the store in `dir`. Fails with [`StorageError::Locked`]
    /// if another process has it open, [`StorageError::UnsupportedFormat`] if it was written
    /// by an incompatible version.
    pub fn open(dir: &Path) -> Result<RocksStore, StorageError> {
        let mut opts = db_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf_descriptors(&opts, dir, cf_descriptors())
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
        let db = DB::open_cf_descriptors_read_only(&db_options(), dir, cf_descriptors(), false)
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
        self.db.cf_handle(name).ok_or_else(|| {
            StorageError::corrupt(format!(
                "column family {name} missing in {}",
                self.path.display()
            ))
        })
    }

    /// Translates `ops` into one batch. SetQueueState reads the database, so this runs under
    /// `write_lock`.
    fn build_batch(&self, ops: &[Op]) -> Result<WriteBatch, StorageError> {
        let retained = self.cf(CF_RETAINED)?;
        let sessions = self.cf(CF_SESSIONS)?;
        let queue = self.cf(CF_QUEUE)?;
        let queue_next = self.cf(CF_QUEUE_NEXT)?;
        let inbound = self.cf(CF_INBOUND_QOS2)?;

        let mut batch = WriteBatch::default();
        // The overlay is only needed (and only paid for) when some op reads a queue entry.
        let track = ops.iter().any(|op| matches!(op, Op::SetQueueState { .. }));
        let mut overlay: HashMap<Vec<u8>, Pending<'_>> = HashMap::new();
        // Clients deleted earlier in the batch: their entries outside the overlay are gone.
        let mut deleted: HashSet<Vec<u8>> = HashSet::new();
        // Per client prefix, one past the highest seq enqueued in this batch (after its last
        // deletion in the batch, if any); written once per client at the end of the batch.
        let mut next_seqs: HashMap<Vec<u8>, u64> = HashMap::new();

        for op in ops {
            match op {
                Op::PutRetained { topic, message } => {
                    batch.put_cf(retained, topic.as_bytes(), record::encode_message(message)?);
                }
                Op::DeleteRetained { topic } => batch.delete_cf(retained, topic.as_bytes()),
                Op::PutSession(session) => {
                    let key = client_prefix(&session.client_id)?;
                    batch.put_cf(sessions, key, record::encode_session(session)?);
                }
                Op::DeleteSession { client_id } => {
                    let prefix = client_prefix(client_id)?;
                    let end = range_end(&prefix);
                    batch.delete_cf(sessions, &prefix);
                    batch.delete_range_cf(queue, &prefix, &end);
                    batch.delete_range_cf(inbound, &prefix, &end);
                    batch.delete_cf(queue_next, &prefix);
                    next_seqs.remove(&prefix);
                    if track {
                        overlay.retain(|key, _| !key.starts_with(&prefix));
                        deleted.insert(prefix);
                    }
                }
                Op::Enqueue {
                    client_id,
                    seq,
                    message,
                } => {
                    let key = queue_key(client_id, *seq)?;
                    batch.put_cf(queue, &key, record::encode_queued(message)?);
                    let next = seq.saturating_add(1);
                    let prefix = key[..key.len() - SEQ_LEN].to_vec();
                    next_seqs
                        .entry(prefix)
                        .and_modify(|n| *n = (*n).max(next))
                        .or_insert(next);
                    if track {
                        overlay.insert(key, Pending::Enqueued(message));
                    }
                }
                Op::SetQueueState {
                    client_id,
                    seq,
                    state,
                } => {
                    let key = queue_key(client_id, *seq)?;
                    let current = match overlay.get(&key) {
                        Some(Pending::Enqueued(message)) => Some(record::encode_queued(message)?),
                        Some(Pending::Rewritten(value)) => Some(value.clone()),
                        Some(Pending::Dequeued) => None,
                        None if deleted.contains(&key[..key.len() - SEQ_LEN]) => None,
                        None => self.db.get_cf(queue, &key).map_err(|e| {
                            StorageError::rocks(
                                format!("reading {}", describe_key(CF_QUEUE, &key)),
                                e,
                            )
                        })?,
                    };
                    // Absent entry (already dequeued): nothing to do, as documented.
                    if let Some(mut value) = current {
                        record::set_queued_state(&mut value, *state)
                            .map_err(|e| decode_error(CF_QUEUE, &key, e))?;
                        batch.put_cf(queue, &key, &value);
                        overlay.insert(key, Pending::Rewritten(value));
                    }
                }
                Op::Dequeue { client_id, seq } => {
                    let key = queue_key(client_id, *seq)?;
                    batch.delete_cf(queue, &key);
                    if track {
                        overlay.insert(key, Pending::Dequeued);
                    }
                }
                Op::PutInboundQos2 {
                    client_id,
                    packet_id,
                } => batch.put_cf(inbound, inbound_key(client_id, *packet_id)?, []),
                Op::DeleteInboundQos2 {
                    client_id,
                    packet_id,
                } => batch.delete_cf(inbound, inbound_key(client_id, *packet_id)?),
            }
        }
        // Written blindly (seqs increase per client, so the batch's highest is the highest),
        // after any DeleteSession of the batch so that it survives only re-enqueues.
        for (prefix, next) in next_seqs {
            batch.put_cf(queue_next, prefix, next.to_be_bytes());
        }
        Ok(batch)
    }

    /// The queue bounds of a client: `it` is an iterator over the queue family, `next` the
    /// client's stored high-water mark.
    fn queue_bounds(
        it: &mut DBRawIterator<'_>,
        next: Option<Vec<u8>>,
        prefix: &[u8],
    ) -> Result<(u64, u64), StorageError> {
        let seq_here = |it: &DBRawIterator<'_>| -> Result<Option<u64>, StorageError> {
            match it.key() {
                Some(key) if key.starts_with(prefix) => {
                    suffix::<SEQ_LEN>(CF_QUEUE, key, prefix).map(|s| Some(u64::from_be_bytes(s)))
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
            .map_err(|e| StorageError::rocks("seeking in the queue", e))?;
        let high_water = match next {
            Some(value) => {
                record::decode_u64(&value).map_err(|e| decode_error(CF_QUEUE_NEXT, prefix, e))?
            }
            None => 0,
        };
        let next_seq = high_water.max(last.map_or(0, |seq| seq.saturating_add(1)));
        Ok((first.unwrap_or(next_seq), next_seq))
    }

    /// Iterates the keys of one client in `cf`, from `start` (which must begin with `prefix`).
    fn prefix_iter(&self, cf: &ColumnFamily, prefix: &[u8], start: &[u8]) -> DBRawIterator<'_> {
        let mut opts = ReadOptions::default();
        // The bound stops the iterator at the client's end instead of one key into the next
        // client (and lets RocksDB skip tombstones past it).
        opts.set_iterate_upper_bound(range_end(prefix));
        let mut it = self.db.raw_iterator_cf_opt(cf, opts);
        it.seek(start);
        it
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
            let (first_seq, next_seq) = Self::queue_bounds(&mut queue, next, key)?;
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
        let (first_seq, next_seq) = Self::queue_bounds(&mut queue, next, &key)?;
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
        let mut it = self.prefix_iter(self.cf(CF_QUEUE)?, prefix, &start);
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
        Ok(out)
    }

    fn queue_stats(&self, client_id: &str) -> Result<(u64, u64), StorageError> {
        let prefix = client_prefix(client_id)?;
        let mut it = self.prefix_iter(self.cf(CF_QUEUE)?, &prefix, &prefix);
        let (mut count, mut bytes) = (0u64, 0u64);
        while let Some((key, value)) = it.item() {
            suffix::<SEQ_LEN>(CF_QUEUE, key, &prefix)?;
            let queued = record::decode_queued(Bytes::copy_from_slice(value))
                .map_err(|e| decode_error(CF_QUEUE, key, e))?;
            count += 1;
            bytes += queued.message.payload.len() as u64;
            it.next();
        }
        it.status().map_err(|e| {
            StorageError::rocks(format!("scanning the queue of client {client_id:?}"), e)
        })?;
        Ok((count, bytes))
    }

    fn inbound_qos2(&self, client_id: &str) -> Result<Vec<u16>, StorageError> {
        let prefix = client_prefix(client_id)?;
        let mut it = self.prefix_iter(self.cf(CF_INBOUND_QOS2)?, &prefix, &prefix);
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
}
