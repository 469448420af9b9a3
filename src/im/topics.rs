//! Every rule the broker attaches to a topic's name: what a published topic addresses,
//! the inbox topics the broker delivers on, and the broker's own `$SYS` topics.
//!
//! | a client publishes to | the broker delivers on |
//! | --- | --- |
//! | `dm/{to}` | `inbox/{to}/dm/{from}` to every device of `to`, and `inbox/{from}/sent/{to}` to the sender's devices |
//! | `group/{gid}` | `inbox/{m}/group/{gid}/{from}` to every member `m` (the sender included) |
//! | `broadcast/{channel}` | `broadcast/{channel}` (operators only; every user may subscribe) |
//! | `$sync` | nothing: the payload is the last inbox `seq` the device saw, and the broker replays the gap to that connection, then `inbox/{user}/sync` |
//! | `$read/dm/{peer}`, `$read/group/{gid}` | `inbox/{user}/read/...` to the user's devices; for a DM, `inbox/{peer}/receipt/{user}` |
//! | `$recall` | a recall entry in every recipient's inbox (`inbox/{r}/recall/...`) |
//! | `$receipts/group/{gid}` | `inbox/{user}/receipts/group/{gid}` to that connection |
//! | `$settings` | nothing: the user's chat settings |
//! | `presence/...` | refused: the broker publishes presence there |
//! | `inbox/...` | refused: only the broker writes into inboxes |
//! | `$SYS/...` | refused: the broker publishes its state there |
//!
//! `{from}` is always the authenticated user of the publishing connection. Anything else is an
//! ordinary MQTT topic, routed as such.

/// Role of an inbox entry for its user (stored in the inbox log).
pub const ROLE_RECEIVED: u8 = 0;
/// The sender's own copy of a direct message (`inbox/{from}/sent/{to}`).
pub const ROLE_SENT: u8 = 1;

/// The topic prefix of every inbox.
pub const INBOX: &str = "inbox";
/// The sync request topic.
pub const SYNC: &str = "$sync";
/// The first level of the broker's own topics (`$SYS/broker/...`).
pub const SYSTEM: &str = "$SYS";
/// The first level of system broadcasts (`broadcast/{channel}`).
pub const BROADCAST: &str = "broadcast";
/// The first level of presence topics (`presence/{user}`), which only filters naming it
/// match (see `router::subscriptions`).
pub const PRESENCE: &str = "presence";
/// Read position reports (`$read/dm/{peer}`, `$read/group/{gid}`).
pub const READ: &str = "$read";
/// Recall requests.
pub const RECALL: &str = "$recall";
/// Group read receipt requests (`$receipts/group/{gid}`).
pub const RECEIPTS: &str = "$receipts";
/// Chat settings.
pub const SETTINGS: &str = "$settings";

/// What a PUBLISH topic addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address<'a> {
    /// `dm/{to}`.
    Direct { to: &'a str },
    /// `group/{gid}`.
    Group { gid: &'a str },
    /// `broadcast/{channel}` (the whole topic is kept).
    Broadcast,
    /// `$sync`.
    Sync,
    /// `$read/dm/{peer}` (as `Direct { to: peer }`) or `$read/group/{gid}`.
    Read(Conversation<'a>),
    /// `$recall`.
    Recall,
    /// `$receipts/group/{gid}`.
    GroupReceipts { gid: &'a str },
    /// `$settings`.
    Settings,
    /// `presence/...`: the broker's.
    Presence,
    /// Inside `inbox/`: nobody publishes there but the broker.
    Inbox,
    /// `$SYS` or below it: the broker's own.
    System,
    /// `dm/`, `group/` with a missing or extra level: a mistake worth a clear refusal
    /// rather than a silent ordinary publish nobody receives.
    Malformed,
    /// Any other topic: plain MQTT.
    Plain,
}

/// Classifies a (valid, alias-resolved) PUBLISH topic.
pub fn classify(topic: &str) -> Address<'_> {
    let mut levels = topic.splitn(3, '/');
    let first = levels.next().unwrap_or_default();
    let second = levels.next();
    let rest = levels.next();
    match (first, second, rest) {
        (SYNC, None, None) => Address::Sync,
        (RECALL, None, None) => Address::Recall,
        (SETTINGS, None, None) => Address::Settings,
        (READ, Some("dm"), Some(peer)) if valid_id(peer) => {
            Address::Read(Conversation::Direct { to: peer })
        }
        (READ, Some("group"), Some(gid)) if valid_id(gid) => {
            Address::Read(Conversation::Group { gid })
        }
        (RECEIPTS, Some("group"), Some(gid)) if valid_id(gid) => Address::GroupReceipts { gid },
        (READ | RECEIPTS, _, _) => Address::Malformed,
        (PRESENCE, _, _) => Address::Presence,
        (SYSTEM, _, _) => Address::System,
        (INBOX, _, _) => Address::Inbox,
        ("dm", Some(to), None) if !to.is_empty() => Address::Direct { to },
        ("group", Some(gid), None) if !gid.is_empty() => Address::Group { gid },
        ("dm" | "group", _, _) => Address::Malformed,
        (BROADCAST, Some(channel), _) if !channel.is_empty() => Address::Broadcast,
        (BROADCAST, _, _) => Address::Malformed,
        _ => Address::Plain,
    }
}

/// Whether `topic` is the broker's to publish on: `$SYS` or below it. Clients may publish
/// on other `$` topics (MQTT only reserves them from wildcard matching), not on these.
pub fn is_system(topic: &str) -> bool {
    topic
        .strip_prefix(SYSTEM)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether `topic` is a system broadcast: delivered live on each connection's broadcast
/// lane, never queued durably, so that it cannot hold up chat messages.
pub fn is_broadcast(topic: &str) -> bool {
    topic
        .strip_prefix(BROADCAST)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The user whose inbox a topic is in, if it is an inbox topic.
pub fn inbox_owner(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("inbox/")?;
    Some(rest.split('/').next().unwrap_or_default())
}

/// Whether a user or group id can be one level of a topic: not empty, no `/`, no
/// wildcard, no NUL (MQTT forbids it in strings anyway).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.contains(['/', '+', '#', '\0']) && !id.starts_with('$')
}

/// What the published topic was, as stored with the message (`dm/{to}` or `group/{gid}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation<'a> {
    Direct { to: &'a str },
    Group { gid: &'a str },
}

impl<'a> Conversation<'a> {
    /// Parses the stored topic of a chat message.
    pub fn parse(topic: &'a str) -> Option<Conversation<'a>> {
        match classify(topic) {
            Address::Direct { to } => Some(Conversation::Direct { to }),
            Address::Group { gid } => Some(Conversation::Group { gid }),
            _ => None,
        }
    }

    /// The topic one recipient gets this conversation's message on.
    pub fn inbox_topic(&self, recipient: &str, from: &str, role: u8) -> String {
        // Built for every recipient of every message: joined in one allocation rather than
        // through `format!`.
        let parts: [&str; 4] = match self {
            Conversation::Direct { to } if role == ROLE_SENT => ["sent/", to, "", ""],
            Conversation::Direct { .. } => ["dm/", from, "", ""],
            Conversation::Group { gid } => ["group/", gid, "/", from],
        };
        let len =
            INBOX.len() + 1 + recipient.len() + 1 + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut topic = String::with_capacity(len);
        for part in [INBOX, "/", recipient, "/"].into_iter().chain(parts) {
            topic.push_str(part);
        }
        topic
    }
}

impl Conversation<'_> {
    /// The name of `reader`'s read mark in this conversation (as seen from the reader:
    /// `Direct { to }` names the peer), which is also where its notice goes under
    /// `inbox/{reader}/`: `read/dm/{peer}` or `read/group/{gid}`.
    pub fn read_mark(&self) -> String {
        match self {
            Conversation::Direct { to } => format!("read/dm/{to}"),
            Conversation::Group { gid } => format!("read/group/{gid}"),
        }
    }
}

/// The name of the mark a user keeps of how far `reader` read the user's DMs; its notice
/// goes to `inbox/{user}/receipt/{reader}`.
pub fn receipt_mark(reader: &str) -> String {
    format!("receipt/{reader}")
}

/// The topic of a mark's notice: `inbox/{user}/{mark}`.
pub fn mark_topic(user: &str, mark: &str) -> String {
    format!("{INBOX}/{user}/{mark}")
}

/// The topic of the answer to `$receipts/group/{gid}`.
pub fn group_receipts_topic(user: &str, gid: &str) -> String {
    format!("{INBOX}/{user}/receipts/group/{gid}")
}

/// Whether `topic` is a presence topic (`presence/...`).
pub fn is_presence(topic: &str) -> bool {
    topic
        .strip_prefix(PRESENCE)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The presence topic of `user`.
pub fn presence_topic(user: &str) -> String {
    format!("{PRESENCE}/{user}")
}

/// The topic on which the end of a sync replay is announced to the user's device.
pub fn sync_end_topic(user: &str) -> String {
    format!("{INBOX}/{user}/sync")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_im_topics() {
        assert_eq!(classify("dm/bob"), Address::Direct { to: "bob" });
        assert_eq!(classify("group/g1"), Address::Group { gid: "g1" });
        assert_eq!(classify("broadcast/news"), Address::Broadcast);
        assert_eq!(classify("broadcast/news/eu"), Address::Broadcast);
        assert_eq!(classify("$sync"), Address::Sync);
        assert_eq!(classify("inbox/bob/dm/alice"), Address::Inbox);
        assert_eq!(classify("inbox"), Address::Inbox);
        assert_eq!(classify("dm/"), Address::Malformed);
        assert_eq!(classify("dm"), Address::Malformed);
        assert_eq!(classify("dm/bob/x"), Address::Malformed);
        assert_eq!(classify("group/g1/x"), Address::Malformed);
        assert_eq!(classify("broadcast"), Address::Malformed);
        assert_eq!(classify("sensors/1/temp"), Address::Plain);
        assert_eq!(classify("dmx/bob"), Address::Plain);
        assert_eq!(classify("$sync/x"), Address::Plain);
        assert_eq!(classify("$SYS/broker/uptime"), Address::System);
        assert_eq!(classify("$SYS"), Address::System);
        assert_eq!(classify("$SYSTEM/x"), Address::Plain);
        assert_eq!(
            classify("$read/dm/bob"),
            Address::Read(Conversation::Direct { to: "bob" })
        );
        assert_eq!(
            classify("$read/group/g1"),
            Address::Read(Conversation::Group { gid: "g1" })
        );
        assert_eq!(classify("$read/dm/bob/x"), Address::Malformed);
        assert_eq!(classify("$read/chan/bob"), Address::Malformed);
        assert_eq!(classify("$read"), Address::Malformed);
        assert_eq!(classify("$recall"), Address::Recall);
        assert_eq!(classify("$settings"), Address::Settings);
        assert_eq!(
            classify("$receipts/group/g1"),
            Address::GroupReceipts { gid: "g1" }
        );
        assert_eq!(classify("$receipts/dm/bob"), Address::Malformed);
        assert_eq!(classify("presence/bob"), Address::Presence);
        assert_eq!(classify("presence"), Address::Presence);
    }

    #[test]
    fn the_brokers_own_topics_and_broadcasts_are_told_apart_by_their_first_level() {
        for (topic, system, broadcast) in [
            ("$SYS", true, false),
            ("$SYS/broker/uptime", true, false),
            ("$SYSX/a", false, false),
            ("$sys/a", false, false),
            ("broadcast/news", false, true),
            ("broadcast/", false, true),
            ("broadcast", false, false),
            ("broadcasts/news", false, false),
            ("a/broadcast/x", false, false),
        ] {
            assert_eq!(is_system(topic), system, "{topic}");
            assert_eq!(is_broadcast(topic), broadcast, "{topic}");
        }
    }

    #[test]
    fn builds_inbox_topics_per_role() {
        let dm = Conversation::parse("dm/bob").expect("dm");
        assert_eq!(
            dm.inbox_topic("bob", "alice", ROLE_RECEIVED),
            "inbox/bob/dm/alice"
        );
        assert_eq!(
            dm.inbox_topic("alice", "alice", ROLE_SENT),
            "inbox/alice/sent/bob"
        );
        let group = Conversation::parse("group/g1").expect("group");
        assert_eq!(
            group.inbox_topic("carol", "alice", ROLE_RECEIVED),
            "inbox/carol/group/g1/alice"
        );
        assert_eq!(Conversation::parse("a/b"), None);
        assert_eq!(inbox_owner("inbox/bob/dm/alice"), Some("bob"));
        assert_eq!(inbox_owner("inboxes/bob"), None);
    }

    #[test]
    fn ids_cannot_escape_their_topic_level() {
        assert!(valid_id("alice"));
        assert!(valid_id("user-42@example"));
        for bad in ["", "a/b", "+", "a#", "$sys", "a\0b"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
