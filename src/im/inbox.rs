//! Chat messages as stored and as delivered to each inbox.
//!
//! A chat message is stored once, as the sender published it (topic `dm/{to}` or
//! `group/{gid}`), stamped with the user property `from` = the authenticated sender (a
//! `from` or `seq` the client put there itself is removed first, as are the other
//! properties only the broker sets: the sender is never what a client claims). Each
//! recipient's copy is that message on the recipient's inbox topic with two more user
//! properties: `seq`, its position in the recipient's inbox log, and `id`, the stored
//! message's id (the same for every recipient). A recall entry (property `recall`) goes to
//! `inbox/{r}/recall/...`.

use bytes::Bytes;
use tern_codec::ByteString;

use super::topics::{sync_end_topic, Conversation};
use crate::protocol::Message;

/// User property naming the sender.
pub const FROM: &str = "from";
/// User property carrying the inbox sequence number.
pub const SEQ: &str = "seq";
/// User property of a client's own message id (duplicate detection).
pub const MSGID: &str = "msgid";
/// User property carrying the stored message's id.
pub const ID: &str = "id";
/// User property of a recall entry: the id of the message it recalls.
pub const RECALL: &str = "recall";
/// User property of a recalled message (value `true`); its payload is gone.
pub const RECALLED: &str = "recalled";

/// The user properties only the broker sets.
const BROKER_PROPERTIES: [&str; 5] = [FROM, SEQ, ID, RECALL, RECALLED];

/// Replaces whatever `from`/`seq`/... the client sent with the authenticated sender.
pub fn stamp_sender(message: &mut Message, from: &str) {
    let props = &mut message.properties.user_properties;
    props.retain(|(k, _)| !BROKER_PROPERTIES.contains(&&**k));
    props.push((ByteString::from(FROM), ByteString::from(from)));
}

/// Adds a user property the broker sets.
pub fn stamp(message: &mut Message, key: &'static str, value: String) {
    message
        .properties
        .user_properties
        .push((ByteString::from(key), ByteString::from(value)));
}

/// The value of a user property.
pub fn user_property<'m>(message: &'m Message, key: &str) -> Option<&'m str> {
    message
        .properties
        .user_properties
        .iter()
        .find(|(k, _)| &**k == key)
        .map(|(_, v)| &**v)
}

/// The copy of a stored chat message (stored under `id`, where the node has ids) for one
/// recipient's inbox, or `None` if the stored message is not a chat message (damaged or
/// foreign data).
pub fn for_recipient(
    stored: &Message,
    recipient: &str,
    role: u8,
    seq: u64,
    id: Option<u64>,
) -> Option<Message> {
    let conversation = Conversation::parse(&stored.topic)?;
    let from = user_property(stored, FROM)?;
    let mut topic = conversation.inbox_topic(recipient, from, role);
    if user_property(stored, RECALL).is_some() {
        // `inbox/{r}/...` -> `inbox/{r}/recall/...`
        let at = super::topics::INBOX.len() + 1 + recipient.len() + 1;
        topic.insert_str(at, "recall/");
    }
    let mut copy = stored.clone();
    copy.topic = ByteString::from(topic);
    copy.retain = false;
    copy.origin = None;
    // The clone's properties have no spare room: one growth for both stamps, not two.
    copy.properties.user_properties.reserve(2);
    stamp(&mut copy, SEQ, seq.to_string());
    if let Some(id) = id {
        stamp(&mut copy, ID, id.to_string());
    }
    Some(copy)
}

/// The seq of a recipient's copy (a message on an inbox topic with `seq`), as a session
/// marks it for its cluster cursor (`protocol::session::SessionParams::marks`).
pub fn entry_seq(message: &Message) -> Option<u64> {
    super::topics::inbox_owner(&message.topic)?;
    user_property(message, SEQ)?.parse().ok()
}

/// The message that ends a sync replay, on `inbox/{user}/sync`: a small JSON object with
/// the seq the request asked to follow, the last seq replayed, the user's next seq, and
/// whether more entries remain (ask again from `last`).
pub fn sync_end(
    user: &str,
    after: Option<u64>,
    last: Option<u64>,
    next: u64,
    more: bool,
) -> Message {
    let json = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
    let payload = format!(
        "{{\"after\":{},\"last\":{},\"next\":{next},\"more\":{more}}}",
        json(after),
        json(last)
    );
    Message::new(
        ByteString::from(sync_end_topic(user)),
        tern_codec::QoS::AtLeastOnce,
        Bytes::from(payload),
    )
}

/// Parses a `$sync` request payload: the last seq the device has (decimal), or empty for
/// "everything the log still holds".
pub fn parse_sync_request(payload: &[u8]) -> Result<Option<u64>, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| "the $sync payload is not UTF-8".to_string())?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("the $sync payload {text:?} is not a sequence number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::topics::{ROLE_RECEIVED, ROLE_SENT};
    use tern_codec::QoS;

    fn published(topic: &str) -> Message {
        let mut m = Message {
            topic: ByteString::from(topic),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            expires_at_ms: None,
            origin: Some(3),
            received_at: None,
            cluster_seq: None,
        };
        m.properties
            .user_properties
            .push(("from".into(), "mallory".into()));
        m.properties
            .user_properties
            .push(("msgid".into(), "m-1".into()));
        m
    }

    #[test]
    fn the_sender_is_the_authenticated_user() {
        let mut m = published("dm/bob");
        stamp_sender(&mut m, "alice");
        assert_eq!(user_property(&m, FROM), Some("alice"));
        assert_eq!(user_property(&m, MSGID), Some("m-1"));
        let froms = m
            .properties
            .user_properties
            .iter()
            .filter(|(k, _)| &**k == FROM);
        assert_eq!(froms.count(), 1);
    }

    #[test]
    fn each_recipient_gets_its_inbox_topic_and_seq() {
        let mut m = published("dm/bob");
        stamp_sender(&mut m, "alice");
        let bob = for_recipient(&m, "bob", ROLE_RECEIVED, 7, Some(99)).expect("copy");
        assert_eq!(&*bob.topic, "inbox/bob/dm/alice");
        assert_eq!(user_property(&bob, SEQ), Some("7"));
        assert_eq!(user_property(&bob, ID), Some("99"));
        assert!(!bob.retain);
        let alice = for_recipient(&m, "alice", ROLE_SENT, 0, None).expect("copy");
        assert_eq!(&*alice.topic, "inbox/alice/sent/bob");
        assert_eq!(user_property(&alice, ID), None);
        assert!(for_recipient(&published("x/y"), "bob", ROLE_RECEIVED, 1, None).is_none());

        // A recall entry goes under recall/, whatever the client claimed.
        let mut forged = published("group/g");
        stamp(&mut forged, RECALL, "5".into());
        stamp(&mut forged, RECALLED, "true".into());
        stamp_sender(&mut forged, "alice");
        assert_eq!(user_property(&forged, RECALL), None);
        assert_eq!(user_property(&forged, RECALLED), None);
        stamp(&mut forged, RECALL, "5".into());
        let carol = for_recipient(&forged, "carol", ROLE_RECEIVED, 3, Some(6)).expect("copy");
        assert_eq!(&*carol.topic, "inbox/carol/recall/group/g/alice");
    }

    #[test]
    fn sync_requests_and_ends() {
        assert_eq!(parse_sync_request(b" 42\n"), Ok(Some(42)));
        assert_eq!(parse_sync_request(b""), Ok(None));
        assert!(parse_sync_request(b"-1").is_err());
        assert!(parse_sync_request(&[0xff]).is_err());
        let end = sync_end("bob", Some(3), Some(9), 10, false);
        assert_eq!(&*end.topic, "inbox/bob/sync");
        assert_eq!(
            &end.payload[..],
            br#"{"after":3,"last":9,"next":10,"more":false}"#
        );
    }
}
