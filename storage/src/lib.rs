//! # tern-storage: the durable state of the tern broker
//!
//! What survives a broker restart:
//!
//! - **retained messages**, one per topic;
//! - **persistent sessions**: their metadata and subscriptions ([`StoredSession`]);
//! - each session's **offline queue** of QoS 1/2 messages, in order, addressed by a per-session
//!   sequence number (`seq`) that the broker allocates (strictly increasing per client);
//! - each session's **inbound QoS 2 packet ids** (PUBLISH received, PUBREL not yet), so that
//!   exactly-once delivery holds across a restart;
//! - the instant-messaging layer: **users** ([`StoredUser`]), **groups** ([`StoredGroup`]),
//!   **chat messages** stored once each under a time-ordered `u64` id that the broker
//!   allocates, and each user's **inbox log**: [`InboxEntry`]s that point at stored messages,
//!   addressed by a per-user sequence number (strictly increasing per user, like queue seqs).
//!
//! ## Messages stored once
//!
//! A message to a group of 1,000 members is written once ([`Op::PutMessage`]) and referred to
//! by id from 1,000 inbox entries ([`Op::AppendInbox`], ten bytes each) and from the offline
//! queue entries of those members' sessions ([`QueuedMessage::message_ref`]: the queue entry
//! keeps its own topic, QoS, flags and state but not the payload). Readers get the payload
//! back resolved: [`Store::queue`] and [`Store::inbox`] read the referenced messages in one
//! batched lookup per page. Retention deletes messages by age ([`Op::DeleteMessagesBefore`],
//! ids are time-ordered) and inbox entries by count ([`Op::TrimInbox`]), independently: a
//! reference may outlive its message, and readers say so (`None` message, or a queue entry
//! whose [`QueuedMessage::message_ref`] is still set) instead of failing.
//!
//! Everything is changed through [`Op`]s applied atomically by [`Store::write`], and read back
//! through the other [`Store`] methods. Two implementations: [`RocksStore`] (RocksDB, the real
//! one) and [`MemoryStore`] (`BTreeMap`s, for broker unit tests). [`Writer`] sits in front of a
//! store and group-commits the writes of many connections into one batch and one WAL sync.
//!
//! ## Start-up cost
//!
//! [`Store::sessions`] returns each session's metadata plus its queue bounds
//! ([`SessionRecord::first_seq`], [`SessionRecord::next_seq`]) found with two iterator seeks per
//! session; queued message values are never read at start-up. The broker pages a queue in with
//! [`Store::queue`] when its client comes back. Likewise [`Store::inbox_heads`] scans only the
//! inbox high-water marks (one small value per user), never the inbox entries or messages.
//!
//! ## Key layout (RocksDB column families)
//!
//! A client id is encoded as a *client prefix*: its byte length as `u16` big-endian, then its
//! UTF-8 bytes. Because the length comes first, no client's prefix is a prefix of another
//! client's (`"a"` is `00 01 61`, `"ab"` is `00 02 61 62`), so a range over one client never
//! reaches into another's. All integers in keys are big-endian so that byte order is numeric
//! order. See [`keys`] for the encoders.
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `retained` | topic (UTF-8 bytes) | message record |
//! | `sessions` | client prefix | session record |
//! | `queue` | client prefix, `seq` (u64 BE) | queue record (state + message) |
//! | `queue_next` | client prefix | one past the highest `seq` ever enqueued (u64 BE) |
//! | `inbound_qos2` | client prefix, packet id (u16 BE) | empty |
//! | `meta` | `format_version` | data format version (u32 BE), checked at open |
//! | `users` | user prefix | user record |
//! | `groups` | group key | group record (members included) |
//! | `messages` | message id (u64 BE) | message record (as `retained`) |
//! | `inbox` | user prefix, `seq` (u64 BE) | inbox record (message id, role) |
//! | `inbox_next` | user prefix | one past the highest inbox `seq` ever appended (u64 BE) |
//! | `marks` | user prefix, mark name (UTF-8) | mark record ([`Mark`]), raised by a merge |
//! | `user_values` | user prefix, name (UTF-8) | bytes, opaque here |
//!
//! User prefixes and group keys are encoded like client prefixes (u16 BE length, UTF-8).
//!
//! `queue_next` exists because the queue's own keys cannot say what the highest `seq` was once
//! every entry has been dequeued; [`SessionRecord::next_seq`] is the larger of it and one past
//! the last queued key. It is written blindly (no read) with each batch's highest enqueued
//! `seq`, which is why `seq`s must increase per client. `inbox_next` is the same for inbox
//! logs; it is never deleted (not by [`Op::TrimInbox`], not by [`Op::DeleteUser`]), so a
//! user's inbox seqs never restart.
//!
//! The last seven families were added to format version 1 without changing its number: a
//! database written before them opens as is ([`RocksStore::open`] creates the missing families,
//! a read-only open reads them as empty) and its records all still decode.
//!
//! Values are compact hand-written binary records that start with a version byte (see
//! `record.rs`); a value that does not decode is reported as [`StorageError::Corrupt`] naming
//! the key, never a panic. Deleting a session is two range deletions over its prefix
//! (`queue`, `inbound_qos2`) plus two point deletions, in the same batch. Inbox trimming and
//! message retention are one range deletion each.
//!
//! ## Durability
//!
//! [`Store::write`] applies a batch atomically; with `sync` it fsyncs the WAL before returning.
//! The WAL is always on. [`Writer`] decides when to sync according to its [`SyncPolicy`]:
//! every group ([`SyncPolicy::Always`]), on a timer ([`SyncPolicy::Batched`]), or never
//! ([`SyncPolicy::None`], the operating system writes the WAL back when it likes). The broker
//! acknowledges a QoS>0 PUBLISH once the [`Durable`] of its ops resolves.
//!
//! ```
//! use std::sync::Arc;
//! use tern_storage::{MemoryStore, Op, SyncPolicy, Writer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tern_storage::StorageError> {
//! let writer = Writer::start(Arc::new(MemoryStore::new()), SyncPolicy::Always, 1024);
//! let op = Op::PutInboundQos2 { client_id: "phone".into(), packet_id: 7 };
//! writer.submit(vec![op]).await.await?; // durable: the PUBREC may go out now
//! assert_eq!(writer.store().inbound_qos2("phone")?, vec![7]);
//! writer.shutdown().await
//! # }
//! ```

pub mod error;
pub mod keys;
pub mod memory;
mod ordered_batch;
mod record;
pub mod rocks;
pub mod writer;

pub use error::StorageError;
pub use memory::MemoryStore;
pub use rocks::RocksStore;
pub use writer::{Durable, Reserved, SyncPolicy, Writer, WriterObserver, WriterStats};

use bytes::Bytes;

/// A PUBLISH as stored: a retained message or an entry of an offline queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Bytes,
    /// 0..=2.
    pub qos: u8,
    pub retain: bool,
    /// MQTT v5 PUBLISH properties as encoded by the broker; opaque here.
    pub properties: Bytes,
    /// Unix epoch milliseconds; `None` = never expires.
    pub expires_at_ms: Option<u64>,
}

impl StoredMessage {
    /// The message's record, as stored under a retained or chat message key; also how
    /// cluster nodes pass a message to each other (one versioned format for both).
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        record::encode_message(self)
    }

    /// Decodes what [`StoredMessage::encode`] made; a damaged or foreign record is
    /// [`StorageError::Corrupt`].
    pub fn decode(record: Bytes) -> Result<StoredMessage, StorageError> {
        record::decode_message(record)
            .map_err(|e| StorageError::corrupt(format!("message record: {e}")))
    }
}

/// Delivery state of a queued message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueState {
    /// Not sent, or sent and not acknowledged: on reconnect, (re)send the PUBLISH.
    Pending,
    /// QoS 2 outbound PUBREC received: on reconnect resend PUBREL, not PUBLISH.
    Released,
}

/// An entry of a session's offline queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub message: StoredMessage,
    pub state: QueueState,
    /// In an [`Op::Enqueue`]: `Some(id)` stores a reference to the message stored under `id`
    /// ([`Op::PutMessage`]) instead of the payload, which is then ignored (pass an empty one);
    /// every other field of `message` is stored with the entry. From [`Store::queue`]: `None`
    /// with the referenced payload filled in, or `Some(id)` with an empty payload if the
    /// message no longer exists (deleted by retention), for the broker to drop the entry.
    pub message_ref: Option<u64>,
}

/// One subscription of a persistent session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSubscription {
    pub filter: String,
    /// The MQTT v5 subscription options byte.
    pub options: u8,
    pub identifier: Option<u32>,
}

/// Metadata of a persistent session (its queue is stored apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    pub client_id: String,
    /// The user the session belongs to; empty if unknown (written before users existed).
    pub user: String,
    /// 4 = 3.1.1, 5 = 5.0.
    pub protocol_level: u8,
    /// `u32::MAX` = never expires.
    pub expiry_interval_secs: u32,
    /// `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    pub subscriptions: Vec<StoredSubscription>,
}

impl StoredSession {
    /// The session's record, as stored under its session key; also how cluster nodes
    /// keep a session for whichever node it resumes on.
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        record::encode_session(self)
    }

    /// Decodes what [`StoredSession::encode`] made for `client_id`; a damaged or foreign
    /// record is [`StorageError::Corrupt`].
    pub fn decode(client_id: String, record: Bytes) -> Result<StoredSession, StorageError> {
        record::decode_session(client_id, record)
            .map_err(|e| StorageError::corrupt(format!("session record: {e}")))
    }
}

/// A registered user (the MQTT user name is the user id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredUser {
    pub user: String,
    /// PHC string (argon2id), produced and checked by the broker; opaque here.
    pub password_hash: String,
    /// May publish system broadcasts.
    pub operator: bool,
    pub created_at_ms: u64,
}

/// A chat group and its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredGroup {
    pub gid: String,
    /// Sorted, no duplicates (the broker guarantees it; the store keeps the order given).
    pub members: Vec<String>,
    pub created_at_ms: u64,
}

/// One entry of a user's inbox log: which stored message, and what it is to this user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxEntry {
    pub message_id: u64,
    /// Broker-defined tag (0 = received, 1 = the sender's own copy, ...); opaque here.
    pub role: u8,
}

/// A user's position in something ordered by message id (how far a conversation was read),
/// kept per user and name ([`Op::RaiseMark`]). A mark only moves up: of two marks, the one
/// with the higher `id` is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// A message id (the order marks are compared in).
    pub id: u64,
    /// Broker-defined (the user's inbox seq of that message); opaque here.
    pub seq: u64,
    /// When it was raised, unix ms.
    pub at_ms: u64,
}

/// A stored session with the bounds of its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub session: StoredSession,
    /// Lowest queued seq (== `next_seq` when the queue is empty).
    pub first_seq: u64,
    /// One past the highest queued seq ever written for this session (0 when empty and new).
    pub next_seq: u64,
}

/// One change to the stored state. A slice of them is applied atomically and in order by
/// [`Store::write`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutRetained {
        topic: String,
        message: StoredMessage,
    },
    DeleteRetained {
        topic: String,
    },
    /// Inserts or replaces the metadata of a session (not its queue).
    PutSession(StoredSession),
    /// Deletes the session, its whole queue and its inbound QoS 2 ids.
    DeleteSession {
        client_id: String,
    },
    /// Adds an entry to a client's queue. `seq` must be higher than every `seq` enqueued
    /// before for this client (since its session was last deleted). With a
    /// [`QueuedMessage::message_ref`], the payload is not stored (and need not exist yet).
    Enqueue {
        client_id: String,
        seq: u64,
        message: QueuedMessage,
    },
    /// Rewrites the state of a queue entry; no-op if the entry is absent.
    SetQueueState {
        client_id: String,
        seq: u64,
        state: QueueState,
    },
    Dequeue {
        client_id: String,
        seq: u64,
    },
    PutInboundQos2 {
        client_id: String,
        packet_id: u16,
    },
    DeleteInboundQos2 {
        client_id: String,
        packet_id: u16,
    },
    /// Inserts or replaces a user.
    PutUser(StoredUser),
    /// Deletes the user record only: the user's inbox log and its high-water mark stay (a
    /// user re-created under the same id continues the same log; the broker trims it if it
    /// wants it gone).
    DeleteUser {
        user: String,
    },
    /// Inserts or replaces a group, members included.
    PutGroup(StoredGroup),
    DeleteGroup {
        gid: String,
    },
    /// Stores a chat message once; inbox entries and queue entries refer to it by id.
    PutMessage {
        id: u64,
        message: StoredMessage,
    },
    /// Appends to a user's inbox log. `seq` must be higher than every seq appended before for
    /// this user; also records `seq + 1` as the user's inbox high-water mark (blind write, like
    /// queue_next).
    AppendInbox {
        user: String,
        seq: u64,
        entry: InboxEntry,
    },
    /// Deletes the user's inbox entries with seq < below_seq (retention by count).
    TrimInbox {
        user: String,
        below_seq: u64,
    },
    /// Deletes every stored message with id < below_id (retention by age: ids are
    /// time-ordered). Inbox and queue entries that refer to them stay, and read as dangling.
    DeleteMessagesBefore {
        below_id: u64,
    },
    /// Raises the user's mark `name` to `mark`, unless the stored one has an id at least as
    /// high (a merge: no read, and two raises in any order leave the higher).
    RaiseMark {
        user: String,
        name: String,
        mark: Mark,
    },
    /// Inserts or replaces the user's value `name`.
    PutUserValue {
        user: String,
        name: String,
        value: Bytes,
    },
}

impl Op {
    /// Checks what a store cannot encode: a client id, user id, group id (or member), password
    /// hash, topic or subscription filter longer than 65,535 bytes (the MQTT limit for
    /// strings), a QoS above 2, a payload or properties of 4 GiB or more. Stores and the
    /// [`Writer`] call it before writing anything, so that a bad op fails alone instead of
    /// failing a whole batch half-way.
    pub fn validate(&self) -> Result<(), StorageError> {
        match self {
            Op::PutRetained { message, .. } => record::check_message(message),
            Op::DeleteRetained { .. } => Ok(()),
            Op::PutSession(session) => {
                keys::check_client_id(&session.client_id)?;
                record::check_session(session)
            }
            Op::Enqueue {
                client_id, message, ..
            } => {
                keys::check_client_id(client_id)?;
                record::check_message(&message.message)
            }
            Op::DeleteSession { client_id }
            | Op::SetQueueState { client_id, .. }
            | Op::Dequeue { client_id, .. }
            | Op::PutInboundQos2 { client_id, .. }
            | Op::DeleteInboundQos2 { client_id, .. } => keys::check_client_id(client_id),
            Op::PutUser(user) => {
                keys::check_user(&user.user)?;
                record::check_user(user)
            }
            Op::PutGroup(group) => {
                keys::check_gid(&group.gid)?;
                record::check_group(group)
            }
            Op::DeleteGroup { gid } => keys::check_gid(gid),
            Op::PutMessage { message, .. } => record::check_message(message),
            Op::DeleteUser { user } | Op::AppendInbox { user, .. } | Op::TrimInbox { user, .. } => {
                keys::check_user(user)
            }
            Op::DeleteMessagesBefore { .. } => Ok(()),
            Op::RaiseMark { user, name, .. } | Op::PutUserValue { user, name, .. } => {
                keys::check_user(user)?;
                keys::check_name(name)
            }
        }
    }

    /// Rough number of bytes this op adds to a write batch; the [`Writer`] uses it to bound
    /// the size of a group.
    pub fn approx_size(&self) -> usize {
        const OVERHEAD: usize = 32;
        let message_size = |m: &StoredMessage| m.topic.len() + m.payload.len() + m.properties.len();
        OVERHEAD
            + match self {
                Op::PutRetained { topic, message } => topic.len() + message_size(message),
                Op::DeleteRetained { topic } => topic.len(),
                Op::PutSession(s) => {
                    s.client_id.len()
                        + s.subscriptions
                            .iter()
                            .map(|sub| sub.filter.len() + 8)
                            .sum::<usize>()
                }
                Op::Enqueue {
                    client_id, message, ..
                } => {
                    // A referenced payload is not written, its id is.
                    let m = &message.message;
                    let payload = match message.message_ref {
                        Some(_) => 8,
                        None => m.payload.len(),
                    };
                    client_id.len() + m.topic.len() + m.properties.len() + payload
                }
                Op::DeleteSession { client_id }
                | Op::SetQueueState { client_id, .. }
                | Op::Dequeue { client_id, .. }
                | Op::PutInboundQos2 { client_id, .. }
                | Op::DeleteInboundQos2 { client_id, .. } => client_id.len(),
                Op::PutUser(u) => u.user.len() + u.password_hash.len() + 16,
                Op::PutGroup(g) => {
                    g.gid.len() + g.members.iter().map(|m| m.len() + 2).sum::<usize>() + 16
                }
                Op::PutMessage { message, .. } => 8 + message_size(message),
                Op::AppendInbox { user, .. } => user.len() + 8 + 10,
                Op::DeleteUser { user } | Op::TrimInbox { user, .. } => user.len(),
                Op::DeleteGroup { gid } => gid.len(),
                Op::DeleteMessagesBefore { .. } => 16,
                Op::RaiseMark { user, name, .. } => user.len() + name.len() + 25,
                Op::PutUserValue { user, name, value } => user.len() + name.len() + value.len(),
            }
    }
}

/// The durable state of the broker. Implementations are shared between the [`Writer`] thread
/// (writes) and the broker (reads, usually from `spawn_blocking`): every method may block on
/// disk I/O.
pub trait Store: Send + Sync + 'static {
    /// Applies `ops` atomically, in order (one RocksDB WriteBatch). `sync`: WAL fsync before
    /// returning. Every op is validated ([`Op::validate`]) before anything is written.
    fn write(&self, ops: &[Op], sync: bool) -> Result<(), StorageError>;
    /// Makes everything written so far durable (WAL fsync).
    fn sync(&self) -> Result<(), StorageError>;
    /// Every retained message with its topic.
    fn retained(&self) -> Result<Vec<(String, StoredMessage)>, StorageError>;
    fn get_retained(&self, topic: &str) -> Result<Option<StoredMessage>, StorageError>;
    /// Every stored session with its queue bounds, sorted by client id; never reads queued
    /// message values.
    fn sessions(&self) -> Result<Vec<SessionRecord>, StorageError>;
    fn session(&self, client_id: &str) -> Result<Option<SessionRecord>, StorageError>;
    /// Up to `limit` queued entries with seq >= from_seq, ascending.
    fn queue(
        &self,
        client_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, QueuedMessage)>, StorageError>;
    /// (count, total payload bytes) of a session's queue (for operators; scans the queue).
    /// A referenced payload counts its stored message's payload length, once per entry that
    /// refers to it (what the session would be sent); a reference to a deleted message counts
    /// 0 bytes.
    fn queue_stats(&self, client_id: &str) -> Result<(u64, u64), StorageError>;
    /// The inbound QoS 2 packet ids of a client, ascending.
    fn inbound_qos2(&self, client_id: &str) -> Result<Vec<u16>, StorageError>;
    /// Every user, sorted by user id.
    fn users(&self) -> Result<Vec<StoredUser>, StorageError>;
    fn user(&self, user: &str) -> Result<Option<StoredUser>, StorageError>;
    /// Every group, sorted by group id.
    fn groups(&self) -> Result<Vec<StoredGroup>, StorageError>;
    fn group(&self, gid: &str) -> Result<Option<StoredGroup>, StorageError>;
    fn message(&self, id: u64) -> Result<Option<StoredMessage>, StorageError>;
    /// The highest stored message id, to continue allocating after a restart. `None` when no
    /// message is stored (none ever was, or retention deleted them all).
    fn last_message_id(&self) -> Result<Option<u64>, StorageError>;
    /// Up to `limit` inbox entries of `user` with seq >= from_seq, ascending, each with its
    /// stored message (None if retention deleted it).
    fn inbox(
        &self,
        user: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, InboxEntry, Option<StoredMessage>)>, StorageError>;
    /// (first_seq, next_seq) of a user's inbox log: first_seq = lowest stored entry's seq
    /// (== next_seq when empty); next_seq = one past the highest seq ever appended (0 if never).
    fn inbox_bounds(&self, user: &str) -> Result<(u64, u64), StorageError>;
    /// next_seq of every user that ever had an inbox entry, sorted by user (start-up load: one
    /// scan of the high-water-mark CF, never of the entries).
    fn inbox_heads(&self) -> Result<Vec<(String, u64)>, StorageError>;
    /// Every mark of `user` whose name starts with `prefix`, sorted by name.
    fn marks(&self, user: &str, prefix: &str) -> Result<Vec<(String, Mark)>, StorageError>;
    fn mark(&self, user: &str, name: &str) -> Result<Option<Mark>, StorageError>;
    fn user_value(&self, user: &str, name: &str) -> Result<Option<Bytes>, StorageError>;
    /// Writes a consistent copy of the whole store into `dir` (which must not exist yet),
    /// holding everything written before the call, while writes go on; a store opens on
    /// it as on the original. Only a store on disk can: the others answer
    /// [`StorageError::Invalid`]. (No default: a store wrapping another must pass it on.)
    fn checkpoint(&self, dir: &std::path::Path) -> Result<(), StorageError>;
}
