//! What operators see: serde view types, and pure functions that build them from a
//! [`Store`].
//!
//! The same functions serve both paths of every inspection: the admin API's handlers call
//! them inside a running broker (on a blocking thread, after a writer barrier, so a reader
//! sees every write submitted before), and the CLI calls them on a stopped broker's data
//! directory opened read-only. Both therefore print the same thing, and the JSON of the CLI's
//! `--json` is the admin API's response body.
//!
//! Views never carry secrets: [`UserView`] has no password hash. Payloads are shown as UTF-8
//! text when they are valid UTF-8 and as base64 otherwise ([`Payload`]); lists carry a
//! preview of the first [`PREVIEW_BYTES`] bytes, single items the whole payload.

use base64::Engine;
use serde::{Deserialize, Serialize};
use tern_storage::{QueueState, StorageError, Store, StoredGroup, StoredMessage, StoredUser};

pub use crate::cluster::ClusterStatus;

use crate::im::directory::ChangeError;
use crate::im::topics::{ROLE_RECEIVED, ROLE_SENT};
use crate::protocol::Message;
use crate::router::SessionSummary;

/// Bytes of a payload shown in lists (retained list, queue peek, inbox tail).
pub const PREVIEW_BYTES: usize = 64;

/// Largest page of queue or inbox entries one request returns.
pub const MAX_PAGE: usize = 10_000;

/// How [`Payload::data`] encodes the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The bytes are valid UTF-8 and `data` is that text.
    Utf8,
    /// Standard base64 with padding.
    Base64,
}

/// A message payload as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub encoding: Encoding,
    pub data: String,
    /// `data` holds only the first bytes (at most [`PREVIEW_BYTES`]).
    pub truncated: bool,
}

impl Payload {
    /// The whole payload.
    pub fn full(bytes: &[u8]) -> Payload {
        match std::str::from_utf8(bytes) {
            Ok(text) => Payload {
                encoding: Encoding::Utf8,
                data: text.to_string(),
                truncated: false,
            },
            Err(_) => Payload {
                encoding: Encoding::Base64,
                data: base64::engine::general_purpose::STANDARD.encode(bytes),
                truncated: false,
            },
        }
    }

    /// The first [`PREVIEW_BYTES`] bytes (fewer for text, to end on a character boundary).
    pub fn preview(bytes: &[u8]) -> Payload {
        if bytes.len() <= PREVIEW_BYTES {
            return Payload::full(bytes);
        }
        let head = &bytes[..PREVIEW_BYTES];
        let text = match std::str::from_utf8(head) {
            Ok(text) => Some(text),
            // Cut inside a multi-byte character: end before it.
            Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
            Err(_) => None,
        };
        match text {
            Some(text) => Payload {
                encoding: Encoding::Utf8,
                data: text.to_string(),
                truncated: true,
            },
            None => Payload {
                encoding: Encoding::Base64,
                data: base64::engine::general_purpose::STANDARD.encode(head),
                truncated: true,
            },
        }
    }

    /// One line for a table: the text (control characters escaped) or `base64:...`, with
    /// `...` when truncated.
    pub fn display(&self) -> String {
        let mut out = match self.encoding {
            Encoding::Utf8 => self.data.escape_debug().to_string(),
            Encoding::Base64 => format!("base64:{}", self.data),
        };
        if self.truncated {
            out.push_str("...");
        }
        out
    }
}

/// A retained message (`tern retained list|get`, `GET /v1/retained...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedView {
    pub topic: String,
    pub qos: u8,
    /// Payload length.
    pub bytes: u64,
    pub payload: Payload,
    /// Unix ms after which the message is no longer sent; `None` = never.
    pub expires_at_ms: Option<u64>,
}

impl RetainedView {
    fn new(topic: String, message: &StoredMessage, preview: bool) -> RetainedView {
        RetainedView {
            topic,
            qos: message.qos,
            bytes: len64(message.payload.len()),
            payload: if preview {
                Payload::preview(&message.payload)
            } else {
                Payload::full(&message.payload)
            },
            expires_at_ms: message.expires_at_ms,
        }
    }
}

/// A topic and a byte count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicBytes {
    pub topic: String,
    pub bytes: u64,
}

/// Totals over the retained store (`tern retained stats`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedStats {
    pub count: u64,
    /// Sum of payload lengths.
    pub bytes: u64,
    /// The topics with the largest payloads, largest first (ties by topic).
    pub largest: Vec<TopicBytes>,
}

/// A subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    pub filter: String,
    /// Granted QoS.
    pub qos: u8,
}

/// A session (`tern sessions list|show`, `GET /v1/sessions...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub client_id: String,
    /// The user the session belongs to (empty if unknown).
    pub user: String,
    /// A client is connected to it now (always false for a stopped broker).
    pub connected: bool,
    /// Stored: survives disconnects and restarts (clean start off, expiry > 0).
    pub persistent: bool,
    /// 4 = MQTT 3.1.1, 5 = MQTT 5.0.
    pub protocol_level: u8,
    /// Seconds the session outlives its connection; `u32::MAX` = forever.
    pub expiry_secs: u32,
    pub subscriptions: Vec<SubscriptionView>,
    /// Entries of its durable queue (QoS 1/2 messages not yet acknowledged).
    pub queued: u64,
    /// Payload bytes of those entries.
    pub queued_bytes: u64,
    /// Messages sent and not yet acknowledged by the connected client.
    pub in_flight: u64,
    /// The cluster node holding it (only on a cluster node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl SessionView {
    /// A live session as the router reports it, with its stored queue's (count, bytes).
    pub fn from_summary(summary: SessionSummary, queue: (u64, u64)) -> SessionView {
        SessionView {
            client_id: summary.client_id,
            user: summary.user,
            connected: summary.connected,
            persistent: summary.persistent,
            protocol_level: summary.protocol_level,
            expiry_secs: summary.expiry_secs,
            subscriptions: summary
                .subscriptions
                .into_iter()
                .map(|(filter, qos)| SubscriptionView { filter, qos })
                .collect(),
            queued: queue.0,
            queued_bytes: queue.1,
            in_flight: len64(summary.in_flight),
            node: None,
        }
    }
}

/// Delivery state of a queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueuedState {
    /// To be sent (again).
    Pending,
    /// QoS 2: PUBREC received, PUBREL to be sent.
    Released,
}

/// One entry of a session's durable queue (`tern queue peek`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedView {
    pub seq: u64,
    pub topic: String,
    pub qos: u8,
    pub state: QueuedState,
    pub bytes: u64,
    pub payload: Payload,
    /// The chat message it refers to was deleted by retention: the broker drops the entry
    /// instead of sending it.
    pub message_deleted: bool,
}

/// The head of a session's durable queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePeek {
    pub client_id: String,
    /// Entries in the whole queue.
    pub queued: u64,
    /// Payload bytes of the whole queue.
    pub queued_bytes: u64,
    /// The first entries, oldest first.
    pub entries: Vec<QueuedView>,
}

/// A registered user; never the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub user: String,
    /// May publish to `broadcast/...` (stored role; `im.operators` in config adds more).
    pub operator: bool,
    pub created_at_ms: u64,
}

impl From<&StoredUser> for UserView {
    fn from(u: &StoredUser) -> UserView {
        UserView {
            user: u.user.clone(),
            operator: u.operator,
            created_at_ms: u.created_at_ms,
        }
    }
}

/// A chat group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub gid: String,
    /// Sorted.
    pub members: Vec<String>,
    pub created_at_ms: u64,
}

impl From<StoredGroup> for GroupView {
    fn from(g: StoredGroup) -> GroupView {
        GroupView {
            gid: g.gid,
            members: g.members,
            created_at_ms: g.created_at_ms,
        }
    }
}

/// One entry of a user's inbox log (`tern inbox tail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxView {
    /// Position in the user's inbox log (the `seq` user property devices see).
    pub seq: u64,
    pub message_id: u64,
    /// `received`, or `sent` for the sender's own copy of a direct message.
    pub role: String,
    /// The topic the user's devices get it on; `None` if the message was deleted by
    /// retention (or is not a chat message).
    pub topic: Option<String>,
    /// The authenticated sender.
    pub from: Option<String>,
    pub bytes: u64,
    pub payload: Option<Payload>,
    /// When the broker accepted it (unix ms, from the message id).
    pub sent_at_ms: u64,
}

/// The answer to a backup (`POST /v1/backup`, `tern backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupView {
    /// The directory the copy was written to.
    pub dir: String,
}

impl BackupView {
    pub fn of(dir: &std::path::Path) -> BackupView {
        BackupView {
            dir: dir.display().to_string(),
        }
    }
}

/// The answer to a deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// What was deleted: the user id, group id or topic.
    pub deleted: String,
}

/// The answer of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"`.
    pub status: String,
    /// The broker's version.
    pub version: String,
}

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A storage failure as an admin error (HTTP 500, CLI exit 1).
pub fn storage_error(e: StorageError) -> ChangeError {
    ChangeError::Storage(e.to_string())
}

/// Retained messages whose topic matches `filter` (`#` for all), sorted by topic, with
/// payload previews.
pub fn retained_list(store: &dyn Store, filter: &str) -> Result<Vec<RetainedView>, ChangeError> {
    if tern_codec::topic::split_shared(filter).is_some() {
        return Err(ChangeError::Invalid(format!(
            "{filter:?} is a shared subscription filter; give a plain topic filter"
        )));
    }
    tern_codec::topic::validate_topic_filter(filter)
        .map_err(|e| ChangeError::Invalid(format!("topic filter {filter:?}: {e}")))?;
    let mut found: Vec<RetainedView> = store
        .retained()
        .map_err(storage_error)?
        .into_iter()
        .filter(|(topic, _)| tern_codec::topic::filter_matches(filter, topic))
        .map(|(topic, message)| RetainedView::new(topic, &message, true))
        .collect();
    found.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(found)
}

/// The retained message of one topic, whole payload; `NotFound` if there is none.
pub fn retained_get(store: &dyn Store, topic: &str) -> Result<RetainedView, ChangeError> {
    match store.get_retained(topic).map_err(storage_error)? {
        Some(message) => Ok(RetainedView::new(topic.to_string(), &message, false)),
        None => Err(no_retained(topic)),
    }
}

/// The error for a topic without a retained message.
pub fn no_retained(topic: &str) -> ChangeError {
    ChangeError::NotFound(format!("no retained message on {topic:?}"))
}

/// Count and bytes of the retained store, and its `top` largest topics.
pub fn retained_stats(store: &dyn Store, top: usize) -> Result<RetainedStats, ChangeError> {
    let all = store.retained().map_err(storage_error)?;
    let mut sizes: Vec<TopicBytes> = all
        .into_iter()
        .map(|(topic, m)| TopicBytes {
            topic,
            bytes: len64(m.payload.len()),
        })
        .collect();
    let count = len64(sizes.len());
    let bytes = sizes.iter().map(|t| t.bytes).sum();
    sizes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.topic.cmp(&b.topic)));
    sizes.truncate(top);
    Ok(RetainedStats {
        count,
        bytes,
        largest: sizes,
    })
}

/// The stored (persistent) sessions of a stopped broker, sorted by client id, each with
/// its queue's count and bytes.
pub fn stored_sessions(store: &dyn Store) -> Result<Vec<SessionView>, ChangeError> {
    let records = store.sessions().map_err(storage_error)?;
    records
        .into_iter()
        .map(|record| stored_session_view(store, record.session))
        .collect()
}

/// One stored session; `NotFound` if there is none.
pub fn stored_session(store: &dyn Store, client_id: &str) -> Result<SessionView, ChangeError> {
    match store.session(client_id).map_err(storage_error)? {
        Some(record) => stored_session_view(store, record.session),
        None => Err(no_session(client_id)),
    }
}

/// The error for an unknown client id.
pub fn no_session(client_id: &str) -> ChangeError {
    ChangeError::NotFound(format!("no session with client id {client_id:?}"))
}

fn stored_session_view(
    store: &dyn Store,
    session: tern_storage::StoredSession,
) -> Result<SessionView, ChangeError> {
    let (queued, queued_bytes) = store
        .queue_stats(&session.client_id)
        .map_err(storage_error)?;
    Ok(SessionView {
        subscriptions: session
            .subscriptions
            .iter()
            .map(|s| SubscriptionView {
                filter: s.filter.clone(),
                qos: s.options & 0x03,
            })
            .collect(),
        client_id: session.client_id,
        user: session.user,
        connected: false,
        persistent: true,
        protocol_level: session.protocol_level,
        expiry_secs: session.expiry_interval_secs,
        queued,
        queued_bytes,
        in_flight: 0,
        node: None,
    })
}

/// A session's queue totals and its first `limit` entries. The caller checks that the
/// session exists (the router knows live non-persistent sessions the store does not).
pub fn queue_peek(
    store: &dyn Store,
    client_id: &str,
    limit: usize,
) -> Result<QueuePeek, ChangeError> {
    let (queued, queued_bytes) = store.queue_stats(client_id).map_err(storage_error)?;
    let entries = store
        .queue(client_id, 0, limit.min(MAX_PAGE))
        .map_err(storage_error)?
        .into_iter()
        .map(|(seq, q)| QueuedView {
            seq,
            topic: q.message.topic.clone(),
            qos: q.message.qos,
            state: match q.state {
                QueueState::Pending => QueuedState::Pending,
                QueueState::Released => QueuedState::Released,
            },
            bytes: len64(q.message.payload.len()),
            payload: Payload::preview(&q.message.payload),
            message_deleted: q.message_ref.is_some(),
        })
        .collect();
    Ok(QueuePeek {
        client_id: client_id.to_string(),
        queued,
        queued_bytes,
        entries,
    })
}

/// Every registered user, sorted.
pub fn users(store: &dyn Store) -> Result<Vec<UserView>, ChangeError> {
    Ok(store
        .users()
        .map_err(storage_error)?
        .iter()
        .map(UserView::from)
        .collect())
}

/// One user; `NotFound` if not registered.
pub fn user(store: &dyn Store, user: &str) -> Result<UserView, ChangeError> {
    match store.user(user).map_err(storage_error)? {
        Some(u) => Ok(UserView::from(&u)),
        None => Err(ChangeError::NotFound(format!("no user {user}"))),
    }
}

/// Every group, sorted by id.
pub fn groups(store: &dyn Store) -> Result<Vec<GroupView>, ChangeError> {
    Ok(store
        .groups()
        .map_err(storage_error)?
        .into_iter()
        .map(GroupView::from)
        .collect())
}

/// One group; `NotFound` if there is none.
pub fn group(store: &dyn Store, gid: &str) -> Result<GroupView, ChangeError> {
    match store.group(gid).map_err(storage_error)? {
        Some(g) => Ok(GroupView::from(g)),
        None => Err(ChangeError::NotFound(format!("no group {gid}"))),
    }
}

/// The name of an inbox role.
pub fn role_name(role: u8) -> String {
    match role {
        ROLE_RECEIVED => "received".to_string(),
        ROLE_SENT => "sent".to_string(),
        other => format!("role {other}"),
    }
}

/// The last `n` entries of a user's inbox log, oldest first. `NotFound` for a user that is
/// neither registered nor ever had an inbox entry (anonymous users have inboxes too).
pub fn inbox_tail(store: &dyn Store, user: &str, n: usize) -> Result<Vec<InboxView>, ChangeError> {
    let (first, next) = store.inbox_bounds(user).map_err(storage_error)?;
    if next == 0 && store.user(user).map_err(storage_error)?.is_none() {
        return Err(ChangeError::NotFound(format!("no user {user}")));
    }
    let n = n.min(MAX_PAGE);
    let from = first.max(next.saturating_sub(len64(n)));
    let entries = store.inbox(user, from, n).map_err(storage_error)?;
    Ok(entries
        .into_iter()
        .map(|(seq, entry, message)| {
            let bytes = message.as_ref().map_or(0, |m| len64(m.payload.len()));
            let payload = message.as_ref().map(|m| Payload::preview(&m.payload));
            let copy = message
                .and_then(|m| Message::from_stored(m).ok())
                .and_then(|m| {
                    crate::im::inbox::for_recipient(
                        &m,
                        user,
                        entry.role,
                        seq,
                        Some(entry.message_id),
                    )
                });
            let from = copy.as_ref().and_then(|c| {
                crate::im::inbox::user_property(c, crate::im::inbox::FROM).map(str::to_string)
            });
            InboxView {
                seq,
                message_id: entry.message_id,
                role: role_name(entry.role),
                topic: copy.map(|c| c.topic.to_string()),
                from,
                bytes,
                payload,
                sent_at_ms: crate::im::ids::time_of(entry.message_id),
            }
        })
        .collect())
}

/// Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS` (for tables).
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_storage::{MemoryStore, Op};

    fn retained(topic: &str, payload: &'static [u8]) -> Op {
        Op::PutRetained {
            topic: topic.into(),
            message: StoredMessage {
                topic: topic.into(),
                payload: Bytes::from_static(payload),
                qos: 1,
                retain: true,
                properties: Bytes::new(),
                expires_at_ms: None,
            },
        }
    }

    #[test]
    fn payloads_are_text_or_base64_and_previews_cut_on_characters() {
        assert_eq!(Payload::full(b"hi").data, "hi");
        let binary = Payload::full(&[0xff, 0x00]);
        assert_eq!(binary.encoding, Encoding::Base64);
        assert_eq!(binary.data, "/wA=");
        assert_eq!(binary.display(), "base64:/wA=");
        // 63 ASCII bytes, then a 2-byte character across the preview's end.
        let mut text = "a".repeat(63);
        text.push('é');
        text.push_str("tail");
        let p = Payload::preview(text.as_bytes());
        assert_eq!(p.encoding, Encoding::Utf8);
        assert_eq!(p.data, "a".repeat(63));
        assert!(p.truncated);
        assert!(p.display().ends_with("a..."));
        assert_eq!(Payload::full(b"a\nb").display(), "a\\nb");
    }

    #[test]
    fn retained_views_filter_and_rank() {
        let store = MemoryStore::new();
        store
            .write(
                &[
                    retained("a/1", b"x"),
                    retained("a/2", b"xyz"),
                    retained("b", b"xy"),
                    retained("$SYS/x", b"12345"),
                ],
                false,
            )
            .expect("write");
        let topics = |v: Vec<RetainedView>| v.into_iter().map(|r| r.topic).collect::<Vec<_>>();
        assert_eq!(
            topics(retained_list(&store, "a/+").expect("list")),
            ["a/1", "a/2"]
        );
        assert_eq!(
            topics(retained_list(&store, "#").expect("list")),
            ["a/1", "a/2", "b"]
        );
        assert!(matches!(
            retained_list(&store, "a/#/b"),
            Err(ChangeError::Invalid(_))
        ));
        assert!(matches!(
            retained_list(&store, "$share/g/#"),
            Err(ChangeError::Invalid(_))
        ));
        let stats = retained_stats(&store, 2).expect("stats");
        assert_eq!((stats.count, stats.bytes), (4, 11));
        assert_eq!(stats.largest[0].topic, "$SYS/x");
        assert_eq!(stats.largest[1].topic, "a/2");
        assert_eq!(retained_get(&store, "b").expect("get").payload.data, "xy");
        assert!(matches!(
            retained_get(&store, "c"),
            Err(ChangeError::NotFound(_))
        ));
    }

    #[test]
    fn unknown_users_have_no_inbox() {
        let store = MemoryStore::new();
        assert!(matches!(
            inbox_tail(&store, "nobody", 5),
            Err(ChangeError::NotFound(_))
        ));
        store
            .write(
                &[Op::PutUser(StoredUser {
                    user: "alice".into(),
                    password_hash: "x".into(),
                    operator: false,
                    created_at_ms: 1,
                })],
                false,
            )
            .expect("write");
        assert_eq!(inbox_tail(&store, "alice", 5).expect("tail"), Vec::new());
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14 22:13:20");
    }
}
