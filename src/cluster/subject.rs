//! MQTT topics and filters as NATS subjects, so that NATS itself carries a plain message
//! only to the nodes that hold a matching subscription (interest-based routing).
//!
//! A topic `a/b` is the subject `tern.live.a.b`: one token per level. A token cannot hold
//! `.`, whitespace, or be empty, and `*` / `>` are NATS's wildcards, so each level is
//! escaped: those bytes (and `%`) become `%XX`, and an empty level is the lone token `%`
//! (which no escaped level can be). A filter maps `+` to `*` and a trailing `#` to `>`,
//! plus the parent subject, since MQTT's `a/#` matches `a` itself. NATS's matching is then
//! a superset of MQTT's (it knows nothing of `$` topics): the receiving node matches the
//! topic again with MQTT's rules before it delivers.

use crate::im::topics::{BROADCAST, INBOX, SYNC, SYSTEM};

/// Prefix of the subjects plain messages travel on.
const LIVE: &str = "tern.live";

/// Prefix of the subjects of the stream of QoS > 0 messages, which republishes each on
/// the same levels under [`LIVE`].
pub(crate) const KEPT: &str = "tern.msg";

/// Prefix of the subjects of the retained messages' stream.
pub(crate) const RETAINED: &str = "tern.retained";

/// The subject every node listens on for operators' broadcasts.
pub(crate) const BROADCASTS: &str = "tern.broadcast";

/// Prefix of the inbox logs' subjects: `tern.inbox.<shard>.<user>`.
const INBOX_LOG: &str = "tern.inbox";

/// Prefix of the subjects the inbox streams republish each appended entry on:
/// `tern.deliver.<user>`, which a node subscribes to while it holds a device of that user.
pub(crate) const DELIVER: &str = "tern.deliver";

/// Prefix of the subjects one node answers on: `tern.node.<node id>.<what>`.
const NODE: &str = "tern.node";

/// Longest key of the cluster's buckets made from a name (see [`key`]).
const MAX_KEY_LEN: usize = 256;

/// Longest subject a node publishes: NATS's control line (the subject, a reply and the
/// sizes) is limited (4 KiB by default), and a topic this long is in any case unusual.
pub(crate) const MAX_SUBJECT_LEN: usize = 2_048;

/// The subject a plain message on `topic` is published to, or `None` if it would be
/// longer than [`MAX_SUBJECT_LEN`].
pub(crate) fn for_topic(topic: &str) -> Option<String> {
    under(LIVE, topic)
}

/// The subject a QoS > 0 message on `topic` is appended to in the message stream.
pub(crate) fn kept(topic: &str) -> Option<String> {
    under(KEPT, topic)
}

/// Every live subject, and every subject of the message stream.
pub(crate) fn all_live() -> String {
    format!("{LIVE}.>")
}

pub(crate) fn all_kept() -> String {
    format!("{KEPT}.>")
}

/// The message stream's subjects a (non-shared) filter matches: [`for_filter`]'s live
/// subjects, in the stream.
pub(crate) fn kept_for_filter(filter: &str) -> Vec<String> {
    for_filter(filter)
        .into_iter()
        .filter_map(|subject| {
            let levels = subject.strip_prefix(LIVE)?;
            Some(format!("{KEPT}{levels}"))
        })
        .collect()
}

/// The subject of `topic`'s retained message in the retained messages' stream.
pub(crate) fn retained(topic: &str) -> Option<String> {
    under(RETAINED, topic)
}

/// The subject of `user`'s inbox log in stream `shard` (a user name is one token).
pub(crate) fn inbox_log(shard: u32, user: &str) -> String {
    let mut subject = format!("{INBOX_LOG}.{shard}.");
    push_level(&mut subject, user);
    subject
}

/// The subject a stream's direct gets are asked on (any of its copies answers).
pub(crate) fn direct_get(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// Every inbox log's subject in stream `shard`.
pub(crate) fn inbox_logs(shard: u32) -> String {
    format!("{INBOX_LOG}.{shard}.>")
}

/// The subject on which `node` gives up the sessions other nodes take over (node ids
/// are tokens: letters, digits, `-` and `_`).
pub(crate) fn takeover(node: &str) -> String {
    format!("{NODE}.{node}.takeover")
}

/// The subject on which `node` closes the connections of devices beyond their user's
/// limit.
pub(crate) fn evict(node: &str) -> String {
    format!("{NODE}.{node}.evict")
}

/// The subject on which `node` learns that a session it held offline resumed on another
/// node (payload: the client id), so that it drops its copy.
pub(crate) fn moved(node: &str) -> String {
    format!("{NODE}.{node}.moved")
}

/// A key-value bucket's key for a name (a client id): bucket keys allow letters, digits
/// and `-_/=.` only, so every other byte (and `=`) becomes `=XX`. A name whose key would
/// be longer than [`MAX_KEY_LEN`] is keyed by its 128-bit hash instead (`==` and 32 hex
/// digits, which no escaped name starts with).
pub(crate) fn key(name: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut key = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            key.push(char::from(byte));
        } else {
            key.push('=');
            key.push(char::from(HEX[usize::from(byte >> 4)]));
            key.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
        if key.len() > MAX_KEY_LEN {
            use std::hash::Hasher;
            let mut low = fnv::FnvHasher::default();
            low.write(name.as_bytes());
            let mut high = fnv::FnvHasher::with_key(0x9E37_79B9_7F4A_7C15);
            high.write(name.as_bytes());
            return format!("=={:016x}{:016x}", high.finish(), low.finish());
        }
    }
    if key.is_empty() {
        // No escaped name is a lone `=`.
        key.push('=');
    }
    key
}

/// Whether `subject` is one of [`DELIVER`]'s.
pub(crate) fn is_delivery(subject: &str) -> bool {
    subject
        .strip_prefix(DELIVER)
        .is_some_and(|rest| rest.starts_with('.'))
}

fn under(prefix: &str, topic: &str) -> Option<String> {
    let mut subject = String::with_capacity(prefix.len() + topic.len() + 1);
    subject.push_str(prefix);
    for level in topic.split('/') {
        subject.push('.');
        push_level(&mut subject, level);
    }
    (subject.len() <= MAX_SUBJECT_LEN).then_some(subject)
}

/// The subjects a node subscribes to for a (non-shared, valid) MQTT filter: for a filter
/// on inboxes, the deliveries of the user it names (of every user for a wildcard there);
/// none for the namespaces no plain message crosses nodes on (`$SYS`, `$sync`, chat and
/// broadcast topics have their own paths) or when a subject would be too long; otherwise
/// one subject, or two for a trailing `#` after at least one level.
pub(crate) fn for_filter(filter: &str) -> Vec<String> {
    let mut levels = filter.split('/');
    let first = levels.next().unwrap_or_default();
    if first == INBOX {
        return match levels.next() {
            None => Vec::new(),
            Some("+" | "#") => vec![format!("{DELIVER}.*")],
            Some(user) => {
                let mut subject = format!("{DELIVER}.");
                push_level(&mut subject, user);
                vec![subject]
            }
        };
    }
    if matches!(first, SYSTEM | SYNC | BROADCAST | "dm" | "group") {
        return Vec::new();
    }
    let mut subject = String::with_capacity(LIVE.len() + filter.len() + 1);
    subject.push_str(LIVE);
    let mut parent = None;
    for level in filter.split('/') {
        match level {
            "+" => subject.push_str(".*"),
            "#" => {
                if subject.len() > LIVE.len() {
                    parent = Some(subject.clone());
                }
                subject.push_str(".>");
            }
            level => {
                subject.push('.');
                push_level(&mut subject, level);
            }
        }
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Vec::new();
    }
    parent.into_iter().chain([subject]).collect()
}

fn push_level(subject: &mut String, level: &str) {
    if level.is_empty() {
        subject.push('%');
        return;
    }
    for c in level.chars() {
        match c {
            '.' | '*' | '>' | '%' => push_escaped(subject, c as u8),
            c if c.is_ascii_whitespace() || c.is_ascii_control() => push_escaped(subject, c as u8),
            c => subject.push(c),
        }
    }
}

fn push_escaped(subject: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    subject.push('%');
    subject.push(char::from(HEX[usize::from(byte >> 4)]));
    subject.push(char::from(HEX[usize::from(byte & 0xF)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_subjects_mirror_the_live_ones() {
        assert_eq!(kept("a/b").as_deref(), Some("tern.msg.a.b"));
        assert_eq!(kept_for_filter("a/#"), ["tern.msg.a", "tern.msg.a.>"]);
        assert!(kept_for_filter("inbox/bob/#").is_empty());
    }

    #[test]
    fn a_topic_is_one_escaped_token_per_level() {
        assert_eq!(for_topic("a/b").as_deref(), Some("tern.live.a.b"));
        assert_eq!(
            for_topic("a.b/c d").as_deref(),
            Some("tern.live.a%2Eb.c%20d")
        );
        assert_eq!(for_topic("/x/").as_deref(), Some("tern.live.%.x.%"));
        assert_eq!(for_topic("*/>/%").as_deref(), Some("tern.live.%2A.%3E.%25"));
        assert_eq!(
            for_topic("温度/室内").as_deref(),
            Some("tern.live.温度.室内")
        );
        assert_eq!(for_topic(&"x".repeat(MAX_SUBJECT_LEN)), None);
        assert_eq!(retained("a/b").as_deref(), Some("tern.retained.a.b"));
    }

    #[test]
    fn a_filter_maps_wildcards_and_covers_the_parent_of_a_hash() {
        assert_eq!(for_filter("a/+/c"), ["tern.live.a.*.c"]);
        assert_eq!(for_filter("a/#"), ["tern.live.a", "tern.live.a.>"]);
        assert_eq!(for_filter("#"), ["tern.live.>"]);
        assert_eq!(for_filter("+/#"), ["tern.live.*", "tern.live.*.>"]);
        assert_eq!(for_filter("a./b"), ["tern.live.a%2E.b"]);
    }

    #[test]
    fn namespaces_with_their_own_paths_take_no_interest() {
        for filter in [
            "$SYS/#",
            "inbox",
            "broadcast/+",
            "$sync",
            "dm/bob",
            "group/#",
        ] {
            assert!(for_filter(filter).is_empty(), "{filter}");
        }
    }

    #[test]
    fn inbox_filters_follow_their_users_deliveries() {
        assert_eq!(for_filter("inbox/alice/#"), ["tern.deliver.alice"]);
        assert_eq!(for_filter("inbox/a.b/dm/+"), ["tern.deliver.a%2Eb"]);
        assert_eq!(for_filter("inbox/+/sync"), ["tern.deliver.*"]);
        assert_eq!(inbox_log(3, "a.b"), "tern.inbox.3.a%2Eb");
        assert_eq!(inbox_logs(3), "tern.inbox.3.>");
        assert!(is_delivery("tern.deliver.alice"));
        assert!(!is_delivery("tern.deliverx.alice"));
        assert!(!is_delivery("tern.live.a"));
    }

    #[test]
    fn names_become_bucket_keys_that_keep_them_apart() {
        assert_eq!(key("phone-1_a"), "phone-1_a");
        assert_eq!(key("a.b/c=d é"), "a=2Eb=2Fc=3Dd=20=C3=A9");
        let long = "x".repeat(MAX_KEY_LEN + 1);
        let hashed = key(&long);
        assert!(hashed.starts_with("==") && hashed.len() == 34, "{hashed}");
        assert_ne!(hashed, key(&"x".repeat(MAX_KEY_LEN + 2)));
        assert_eq!(key(&"x".repeat(MAX_KEY_LEN)), "x".repeat(MAX_KEY_LEN));
        assert_eq!(takeover("n-1"), "tern.node.n-1.takeover");
    }

    /// Escaping keeps different topics apart: no two levels share a token.
    #[test]
    fn distinct_levels_are_distinct_tokens() {
        let levels = ["", "%", "%25", ".", "%2E", "a b", "a%20b", "*", ">"];
        let tokens: std::collections::HashSet<_> =
            levels.iter().map(|l| for_topic(l).unwrap()).collect();
        assert_eq!(tokens.len(), levels.len());
    }
}
