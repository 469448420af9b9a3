//! Column family names and key encodings of [`RocksStore`](crate::RocksStore).
//!
//! Public so that inspection tools (and tests) can address the raw database; the layout is
//! described in the crate documentation. Per-client keys start with the *client prefix*
//! (`u16` BE byte length, then the UTF-8 bytes of the client id): because the length comes
//! first, one client's keys never share a prefix with another client's, however their ids
//! compare.

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
/// Every column family the store opens (besides RocksDB's `default`, unused).
pub const ALL_CFS: [&str; 6] = [
    CF_RETAINED,
    CF_SESSIONS,
    CF_QUEUE,
    CF_QUEUE_NEXT,
    CF_INBOUND_QOS2,
    CF_META,
];

/// Key in [`CF_META`] of the data format version (u32 BE).
pub const FORMAT_VERSION_KEY: &[u8] = b"format_version";
/// The data format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Rejects a client id that does not fit the `u16` length of the client prefix (MQTT
/// strings cannot be longer anyway).
pub fn check_client_id(client_id: &str) -> Result<(), StorageError> {
    if client_id.len() > usize::from(u16::MAX) {
        return Err(StorageError::invalid(format!(
            "client id of {} bytes (at most 65535)",
            client_id.len()
        )));
    }
    Ok(())
}

/// The client prefix: `u16` BE length, then the id's bytes.
pub fn client_prefix(client_id: &str) -> Result<Vec<u8>, StorageError> {
    client_prefix_with_capacity(client_id, 0)
}

fn client_prefix_with_capacity(client_id: &str, extra: usize) -> Result<Vec<u8>, StorageError> {
    let len = u16::try_from(client_id.len()).map_err(|_| {
        StorageError::invalid(format!(
            "client id of {} bytes (at most 65535)",
            client_id.len()
        ))
    })?;
    let mut key = Vec::with_capacity(2 + client_id.len() + extra);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(client_id.as_bytes());
    Ok(key)
}

/// Key of a queue entry in [`CF_QUEUE`].
pub fn queue_key(client_id: &str, seq: u64) -> Result<Vec<u8>, StorageError> {
    let mut key = client_prefix_with_capacity(client_id, 8)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

/// Key of an inbound QoS 2 id in [`CF_INBOUND_QOS2`].
pub fn inbound_key(client_id: &str, packet_id: u16) -> Result<Vec<u8>, StorageError> {
    let mut key = client_prefix_with_capacity(client_id, 2)?;
    key.extend_from_slice(&packet_id.to_be_bytes());
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
    }

    #[test]
    fn too_long_client_id_is_invalid() {
        let id = "x".repeat(70_000);
        assert!(matches!(
            client_prefix(&id),
            Err(StorageError::Invalid { .. })
        ));
        assert!(check_client_id(&"x".repeat(65_535)).is_ok());
    }
}
