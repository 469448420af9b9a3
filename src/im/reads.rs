//! Read positions and receipts (see docs/chat.md).
//!
//! A device reports "read up to seq N" of its user's inbox in one conversation. The broker
//! checks that entry N is a message of that conversation and keeps a *mark* per user and
//! conversation (`read/dm/{peer}`, `read/group/{gid}`) holding the message's id, which
//! every participant can compare with the `id` of the messages it has: the user's own
//! seqs mean nothing to the peer. Marks only rise (the store merges them by id), so two
//! devices reporting at once, or a device reporting late, cannot move one back.
//!
//! For a DM, the peer keeps a `receipt/{reader}` mark too, unless the reader turned
//! receipts off. Notices of a mark go to `inbox/{user}/{mark name}`; `$sync` replays every
//! mark of the user the same way. A group's read receipts are computed on request from
//! the members' marks ([`group_reads`]). Everything here is pure or reads the store; the
//! callers run it off the runtime's threads.

use bytes::Bytes;
use tern_codec::{ByteString, QoS};
use tern_storage::{Mark, StorageError, Store};

use super::inbox::{user_property, FROM};
use super::topics::{mark_topic, Conversation};
use crate::protocol::Message;

/// Name of the user value holding the user's chat settings (JSON).
pub const SETTINGS: &str = "settings";

/// Mark names replayed by `$sync` start with one of these.
pub const SYNCED_MARKS: [&str; 2] = ["read/", "receipt/"];

/// Parses a decimal seq or id from a request's payload; `what` names it in the error.
pub fn parse_number(payload: &[u8], what: &str) -> Result<u64, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| format!("the {what} is not UTF-8"))?
        .trim();
    text.parse()
        .map_err(|_| format!("{text:?} is not a {what} (a decimal number)"))
}

/// Whether `stored`, a message in `reader`'s inbox, belongs to the conversation the reader
/// names (`Direct { to }`: the peer): a DM between the two either way, or a message of
/// the group.
pub fn in_conversation(stored: &Message, reader: &str, conversation: &Conversation) -> bool {
    let from = user_property(stored, FROM);
    match (Conversation::parse(&stored.topic), conversation) {
        (Some(Conversation::Direct { to }), Conversation::Direct { to: peer }) => {
            (to == *peer && from == Some(reader)) || (to == reader && from == Some(*peer))
        }
        (Some(Conversation::Group { gid }), Conversation::Group { gid: named }) => gid == *named,
        _ => false,
    }
}

/// The notice of a mark, on `inbox/{user}/{name}`: `{"seq":N,"id":"M"}` for the user's
/// own read marks, `{"id":"M"}` for receipts (the reader's seqs are not the user's).
pub fn notice(user: &str, name: &str, mark: &Mark, qos: QoS) -> Message {
    let payload = if name.starts_with("read/") {
        format!("{{\"seq\":{},\"id\":\"{}\"}}", mark.seq, mark.id)
    } else {
        format!("{{\"id\":\"{}\"}}", mark.id)
    };
    Message::new(
        ByteString::from(mark_topic(user, name)),
        qos,
        Bytes::from(payload),
    )
}

/// The user's chat settings (`$settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Whether DM peers learn how far the user read. Default true.
    pub receipts: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { receipts: true }
    }
}

impl Settings {
    /// Applies a `$settings` payload (a JSON object; keys not given keep their values).
    pub fn apply(&mut self, payload: &[u8]) -> Result<(), String> {
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| format!("the settings are not JSON: {e}"))?;
        let object = value
            .as_object()
            .ok_or("the settings are not a JSON object")?;
        for (key, value) in object {
            match (key.as_str(), value) {
                ("receipts", serde_json::Value::Bool(on)) => self.receipts = *on,
                ("receipts", _) => return Err("receipts: expected true or false".into()),
                (other, _) => return Err(format!("{other}: not a setting")),
            }
        }
        Ok(())
    }

    /// The stored form.
    pub fn encode(&self) -> Bytes {
        Bytes::from(format!("{{\"receipts\":{}}}", self.receipts))
    }

    /// The user's settings as stored (defaults where none are).
    pub fn load(store: &dyn Store, user: &str) -> Result<Settings, StorageError> {
        let mut settings = Settings::default();
        if let Some(stored) = store.user_value(user, SETTINGS)? {
            // Written by `encode` only; a value that does not apply keeps the defaults.
            if let Err(e) = settings.apply(&stored) {
                tracing::warn!(%user, "stored chat settings ignored: {e}");
            }
        }
        Ok(settings)
    }
}

/// Who of a group has read a message: its current members but `except` (the sender),
/// split by whether their read mark in the group reaches the message's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReads {
    pub id: u64,
    pub read: Vec<String>,
    pub unread: Vec<String>,
}

impl GroupReads {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "id": self.id.to_string(),
            "read": self.read,
            "unread": self.unread,
        })
        .to_string()
    }
}

/// Why a group's read receipts were not given.
#[derive(Debug, thiserror::Error)]
pub enum GroupReadsError {
    #[error("no message {0} is stored (never sent, or deleted by retention)")]
    NoMessage(u64),
    #[error("message {id} is not a message of group {gid}")]
    NotInGroup { id: u64, gid: String },
    #[error("message {0} is not the asker's: only its sender may ask who read it")]
    NotSender(u64),
    #[error("no group {0}")]
    NoGroup(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The read receipts of message `id` in group `gid` (`asker`: a user who must be its
/// sender; `None`: an operator). Reads one mark per member.
pub fn group_reads(
    store: &dyn Store,
    gid: &str,
    id: u64,
    asker: Option<&str>,
) -> Result<GroupReads, GroupReadsError> {
    let stored = store.message(id)?.ok_or(GroupReadsError::NoMessage(id))?;
    let message = Message::from_stored(stored).map_err(|_| GroupReadsError::NoMessage(id))?;
    if Conversation::parse(&message.topic) != Some(Conversation::Group { gid }) {
        return Err(GroupReadsError::NotInGroup {
            id,
            gid: gid.to_string(),
        });
    }
    let sender = user_property(&message, FROM).unwrap_or_default();
    if asker.is_some_and(|asker| asker != sender) {
        return Err(GroupReadsError::NotSender(id));
    }
    let group = store
        .group(gid)?
        .ok_or_else(|| GroupReadsError::NoGroup(gid.to_string()))?;
    let name = Conversation::Group { gid }.read_mark();
    let mut reads = GroupReads {
        id,
        read: Vec::new(),
        unread: Vec::new(),
    };
    for member in group.members {
        if member == sender {
            continue;
        }
        match store.mark(&member, &name)? {
            Some(mark) if mark.id >= id => reads.read.push(member),
            _ => reads.unread.push(member),
        }
    }
    Ok(reads)
}

#[cfg(test)]
mod tests {
    use tern_storage::{MemoryStore, Op, StoredGroup};

    use super::*;
    use crate::im::inbox::stamp_sender;

    fn chat(topic: &str, from: &str) -> Message {
        let mut message = Message::new(ByteString::from(topic), QoS::AtLeastOnce, Bytes::new());
        stamp_sender(&mut message, from);
        message
    }

    #[test]
    fn a_read_names_a_message_of_its_conversation() {
        let peer = Conversation::Direct { to: "alice" };
        assert!(in_conversation(&chat("dm/bob", "alice"), "bob", &peer));
        assert!(in_conversation(&chat("dm/alice", "bob"), "bob", &peer));
        assert!(!in_conversation(&chat("dm/bob", "carol"), "bob", &peer));
        assert!(!in_conversation(&chat("group/g", "alice"), "bob", &peer));
        let group = Conversation::Group { gid: "g" };
        assert!(in_conversation(&chat("group/g", "alice"), "bob", &group));
        assert!(!in_conversation(&chat("group/h", "alice"), "bob", &group));
    }

    #[test]
    fn numbers_settings_and_notices() {
        assert_eq!(parse_number(b" 42\n", "seq"), Ok(42));
        assert!(parse_number(b"-1", "seq").is_err());
        assert!(parse_number(b"", "seq").is_err());
        assert!(parse_number(&[0xff], "seq").is_err());
        let mut settings = Settings::default();
        settings.apply(br#"{"receipts":false}"#).expect("applies");
        assert!(!settings.receipts);
        assert!(settings.apply(br#"{"receipts":"no"}"#).is_err());
        assert!(settings.apply(br#"{"colour":1}"#).is_err());
        assert!(settings.apply(b"[]").is_err());
        assert!(settings.apply(b"{").is_err());
        let mark = Mark {
            id: 7,
            seq: 3,
            at_ms: 1,
        };
        let read = notice("bob", "read/dm/alice", &mark, QoS::AtMostOnce);
        assert_eq!(&*read.topic, "inbox/bob/read/dm/alice");
        assert_eq!(&read.payload[..], br#"{"seq":3,"id":"7"}"#);
        let receipt = notice("alice", "receipt/bob", &mark, QoS::AtMostOnce);
        assert_eq!(&receipt.payload[..], br#"{"id":"7"}"#);
    }

    #[test]
    fn group_reads_compare_each_members_mark_with_the_id() {
        let store = MemoryStore::new();
        let mark = |user: &str, id| Op::RaiseMark {
            user: user.into(),
            name: "read/group/g".into(),
            mark: Mark {
                id,
                seq: 0,
                at_ms: 0,
            },
        };
        store
            .write(
                &[
                    Op::PutGroup(StoredGroup {
                        gid: "g".into(),
                        members: vec!["alice".into(), "bob".into(), "carol".into(), "dan".into()],
                        created_at_ms: 0,
                    }),
                    Op::PutMessage {
                        id: 10,
                        message: chat("group/g", "alice").to_stored(),
                    },
                    mark("bob", 10),
                    mark("carol", 9),
                ],
                false,
            )
            .expect("written");
        let reads = group_reads(&store, "g", 10, Some("alice")).expect("reads");
        assert_eq!(reads.read, ["bob"]);
        assert_eq!(reads.unread, ["carol", "dan"]);
        assert_eq!(
            reads.to_json(),
            r#"{"id":"10","read":["bob"],"unread":["carol","dan"]}"#
        );
        assert!(matches!(
            group_reads(&store, "g", 10, Some("bob")),
            Err(GroupReadsError::NotSender(10))
        ));
        assert!(matches!(
            group_reads(&store, "h", 10, None),
            Err(GroupReadsError::NotInGroup { .. })
        ));
        assert!(matches!(
            group_reads(&store, "g", 11, None),
            Err(GroupReadsError::NoMessage(11))
        ));
    }
}
