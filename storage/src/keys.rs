//! Column family names and key encodings of [`RocksStore`](crate::RocksStore).
//!
//! Public so that inspection tools (and tests) can address the raw database; the layout is
//! described in the crate documentation. Per-client keys start with the *client prefix*
//! (`u16` BE byte length, then the UTF-8 bytes of the client id): because the length comes
//! first, one client's keys never share a prefix with another client's, however their ids
//! compare. User ids and group ids are encoded the same way (a *user prefix*, a *group key*),
//! so everything said about client prefixes holds for them.

use crate::StorageError;

/// Retained messages: topic -> message record.
pub const CF_RETAINED: &str = "retained";
/// Session metadata: client prefix -> session record.
pub const CF_SESSIONS: &str = "sessions";
/// Offline queues: client prefix + seq (u64 BE) -> queue record.
pub const CF_QUEUE: &str = "queue";
/// Queue high-water marks: client prefix -> next seq (u64 BE).
pub const CF_QUEUE_NEXT: &str = "queue_next";
/// Inbound QoS 2 ids: client prefix + packet id (u16 BE) -> empty.
pub const CF_INBOUND_QOS2: &str = "inbound_qos2";
/// Store-wide metadata: [`FORMAT_VERSION_KEY`].
pub const CF_META: &str = "meta";
/// Registered users: user prefix -> user record.
pub const CF_USERS: &str = "users";
/// Chat groups: group key -> group record (members included).
pub const CF_GROUPS: &str = "groups";
/// Chat messages, each stored once: id (u64 BE) -> message record.
pub const CF_MESSAGES: &str = "messages";
/// Inbox logs: user prefix + seq (u64 BE) -> inbox record.
pub const CF_INBOX: &str = "inbox";
/// Inbox high-water marks: user prefix -> next seq (u64 BE).
pub const CF_INBOX_NEXT: &str = "inbox_next";
/// Chat marks (read positions, receipts): user prefix + mark name -> mark record, raised
/// by a merge that keeps the highest message id.
pub const CF_MARKS: &str = "marks";
/// Small per-user values (chat settings, contacts): user prefix + name -> bytes.
pub const CF_USER_VALUES: &str = "user_values";
/// Every column family the store opens (besides RocksDB's `default`, unused).
pub const ALL_CFS: [&str; 13] = [
    CF_RETAINED,
    CF_SESSIONS,
    CF_QUEUE,
    CF_QUEUE_NEXT,
    CF_INBOUND_QOS2,
    CF_META,
    CF_USERS,
    CF_GROUPS,
    CF_MESSAGES,
    CF_INBOX,
    CF_INBOX_NEXT,
    CF_MARKS,
    CF_USER_VALUES,
];
/// The column families added after the first release of [`FORMAT_VERSION`] 1: a database
/// written before has none of them. [`RocksStore::open`](crate::RocksStore::open) creates
/// them; a read-only open, which cannot, reads them as empty.
pub const ADDED_CFS: [&str; 7] = [
    CF_USERS,
    CF_GROUPS,
    CF_MESSAGES,
    CF_INBOX,
    CF_INBOX_NEXT,
    CF_MARKS,
    CF_USER_VALUES,
];

/// Key in [`CF_META`] of the data format version (u32 BE).
pub const FORMAT_VERSION_KEY: &[u8] = b"format_version";
/// The data format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The length of `id` as a `u16` length prefix; `what` names it in the error.
fn id_len(what: &str, id: &str) -> Result<u16, StorageError> {
    u16::try_from(id.len())
        .map_err(|_| StorageError::invalid(format!("{what} of {} bytes (at most 65535)", id.len())))
}

/// Rejects `id` if it does not fit a `u16` length prefix.
fn check_id(what: &str, id: &str) -> Result<(), StorageError> {
    id_len(what, id).map(drop)
}

/// Rejects a client id that does not fit the `u16` length of the client prefix (MQTT
/// strings cannot be longer anyway).
pub fn check_client_id(client_id: &str) -> Result<(), StorageError> {
    check_id("client id", client_id)
}

/// Rejects a user id that does not fit the `u16` length of the user prefix (it is an MQTT
/// user name, which cannot be longer anyway).
pub fn check_user(user: &str) -> Result<(), StorageError> {
    check_id("user id", user)
}

/// Rejects a group id that does not fit the `u16` length of the group key.
pub fn check_gid(gid: &str) -> Result<(), StorageError> {
    check_id("group id", gid)
}

/// `u16` BE length, then the bytes of `id`, with room for `extra` more bytes.
fn length_prefixed(what: &str, id: &str, extra: usize) -> Result<Vec<u8>, StorageError> {
    let len = id_len(what, id)?;
    let mut key = Vec::with_capacity(2 + id.len() + extra);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    Ok(key)
}

/// The client prefix: `u16` BE length, then the id's bytes.
pub fn client_prefix(client_id: &str) -> Result<Vec<u8>, StorageError> {
    length_prefixed("client id", client_id, 0)
}

/// Key of a queue entry in [`CF_QUEUE`].
pub fn queue_key(client_id: &str, seq: u64) -> Result<Vec<u8>, StorageError> {
    let mut key = length_prefixed("client id", client_id, 8)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

/// Key of an inbound QoS 2 id in [`CF_INBOUND_QOS2`].
pub fn inbound_key(client_id: &str, packet_id: u16) -> Result<Vec<u8>, StorageError> {
    let mut key = length_prefixed("client id", client_id, 2)?;
    key.extend_from_slice(&packet_id.to_be_bytes());
    Ok(key)
}

/// The user prefix (same encoding as the client prefix): key in [`CF_USERS`] and
/// [`CF_INBOX_NEXT`], prefix of a user's keys in [`CF_INBOX`].
pub fn user_prefix(user: &str) -> Result<Vec<u8>, StorageError> {
    length_prefixed("user id", user, 0)
}

/// Key of a group in [`CF_GROUPS`] (same encoding as the client prefix).
pub fn group_key(gid: &str) -> Result<Vec<u8>, StorageError> {
    length_prefixed("group id", gid, 0)
}

/// Key of a stored message in [`CF_MESSAGES`]: big-endian, so that key order is id order
/// (and ids are time-ordered, which makes retention by age a range deletion).
pub fn message_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Key of an inbox entry in [`CF_INBOX`].
pub fn inbox_key(user: &str, seq: u64) -> Result<Vec<u8>, StorageError> {
    let mut key = length_prefixed("user id", user, 8)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

/// Rejects a mark or value name that cannot be stored (at most 65,535 bytes, like ids).
pub fn check_name(name: &str) -> Result<(), StorageError> {
    check_id("name", name)
}

/// A user's named key ([`CF_MARKS`], [`CF_USER_VALUES`]): user prefix, then the name.
pub fn named_key(user: &str, name: &str) -> Result<Vec<u8>, StorageError> {
    let mut key = user_prefix(user)?;
    key.extend_from_slice(name.as_bytes());
    Ok(key)
}

/// The smallest key greater than every key starting with `prefix` (exclusive end of a range
/// over the prefix), or `None` if there is none (a prefix of only `0xFF` bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Splits a key into the client id of its client prefix and the rest. `None` if the key is
/// too short for its length field or the id is not UTF-8.
pub fn split_client_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = key.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return None;
    }
    let (id, rest) = rest.split_at(len);
    Some((std::str::from_utf8(id).ok()?, rest))
}

/// Human description of a key of column family `cf`, for error messages.
pub fn describe_key(cf: &str, key: &[u8]) -> String {
    let client = split_client_key(key);
    match (cf, client) {
        (CF_RETAINED, _) => format!(
            "retained message of topic {:?}",
            String::from_utf8_lossy(key)
        ),
        (CF_SESSIONS, Some((id, []))) => format!("session of client {id:?}"),
        (CF_QUEUE_NEXT, Some((id, []))) => format!("queue high-water mark of client {id:?}"),
        (CF_QUEUE, Some((id, rest))) => match <[u8; 8]>::try_from(rest) {
            Ok(seq) => format!(
                "queue entry seq {} of client {id:?}",
                u64::from_be_bytes(seq)
            ),
            Err(_) => format!(
                "queue key of client {id:?} with a {}-byte suffix",
                rest.len()
            ),
        },
        (CF_USERS, Some((id, []))) => format!("user {id:?}"),
        (CF_GROUPS, Some((gid, []))) => format!("group {gid:?}"),
        (CF_MESSAGES, _) => match <[u8; 8]>::try_from(key) {
            Ok(id) => format!("stored message id {}", u64::from_be_bytes(id)),
            Err(_) => format!("stored message key {key:02x?} (not 8 bytes)"),
        },
        (CF_INBOX_NEXT, Some((user, []))) => format!("inbox high-water mark of user {user:?}"),
        (CF_INBOX, Some((user, rest))) => match <[u8; 8]>::try_from(rest) {
            Ok(seq) => format!(
                "inbox entry seq {} of user {user:?}",
                u64::from_be_bytes(seq)
            ),
            Err(_) => format!(
                "inbox key of user {user:?} with a {}-byte suffix",
                rest.len()
            ),
        },
        (CF_INBOUND_QOS2, Some((id, rest))) => match <[u8; 2]>::try_from(rest) {
            Ok(packet_id) => format!(
                "inbound QoS 2 id {} of client {id:?}",
                u16::from_be_bytes(packet_id)
            ),
            Err(_) => format!(
                "inbound QoS 2 key of client {id:?} with a {}-byte suffix",
                rest.len()
            ),
        },
        _ => format!("key {key:02x?} in column family {cf}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_prefix_ids_are_disjoint() {
        let a = client_prefix("a").unwrap();
        let ab = client_prefix("ab").unwrap();
        assert!(!ab.starts_with(&a));
        assert!(!a.starts_with(&ab));
        let end = prefix_end(&a).unwrap();
        let key_ab = queue_key("ab", 0).unwrap();
        // "ab" sorts after the whole range of "a", not inside it.
        assert!(key_ab >= end || key_ab < a);
    }

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(&[0, 0]), Some(vec![0, 1]));
    }

    #[test]
    fn split_and_describe() {
        let key = queue_key("dev-1", 7).unwrap();
        assert_eq!(
            split_client_key(&key),
            Some(("dev-1", &7u64.to_be_bytes()[..]))
        );
        assert_eq!(split_client_key(&[0, 5, b'a']), None);
        assert_eq!(
            describe_key(CF_QUEUE, &key),
            "queue entry seq 7 of client \"dev-1\""
        );
        assert!(describe_key(CF_INBOUND_QOS2, &inbound_key("x", 9).unwrap()).contains("id 9"));
        assert_eq!(
            describe_key(CF_INBOX, &inbox_key("bob", 12).unwrap()),
            "inbox entry seq 12 of user \"bob\""
        );
        assert_eq!(
            describe_key(CF_MESSAGES, &message_key(1 << 40)),
            format!("stored message id {}", 1u64 << 40)
        );
        assert_eq!(
            describe_key(CF_GROUPS, &group_key("g1").unwrap()),
            "group \"g1\""
        );
        assert!(describe_key(CF_MESSAGES, &[1, 2]).contains("not 8 bytes"));
    }

    #[test]
    fn too_long_client_id_is_invalid() {
        let id = "x".repeat(70_000);
        assert!(matches!(
            client_prefix(&id),
            Err(StorageError::Invalid { .. })
        ));
        assert!(check_client_id(&"x".repeat(65_535)).is_ok());
        let err = user_prefix(&id).unwrap_err().to_string();
        assert!(err.contains("user id of 70000 bytes"), "{err}");
        let err = group_key(&id).unwrap_err().to_string();
        assert!(err.contains("group id"), "{err}");
    }
}
