//! What the app hears ([`Event`]) and how the broker's publishes become it: [`parse`] maps a
//! topic, its MQTT 5 user properties and its payload to an [`Inbound`] per docs/chat.md:
//! numbered inbox entries (messages, recalls) that go through the seq tracker, the end
//! marker of a `$sync`, or a notice (read position, receipt, presence) delivered as is.
//! Nothing here panics on what the network sends: anything unexpected is a [`ParseError`]
//! the driver logs at debug level and drops.

use bytes::Bytes;
use serde::Deserialize;

use crate::outbox::{LocalId, Request};

/// A conversation, as the inbox topics name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    /// The DM with `peer` (whoever wrote each message).
    Direct { peer: String },
    /// The group `gid`.
    Group { gid: String },
}

/// Where a message sent with [`Client::send_dm`](crate::Client::send_dm) or
/// [`Client::send_group`](crate::Client::send_group) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendState {
    /// Accepted by the library; published (again on every reconnect) until its PUBACK.
    Sending,
    /// The broker acknowledged it: it is durable in every recipient's inbox. The broker's
    /// id of the message comes with its copy on `inbox/{me}/sent/...` or
    /// `inbox/{me}/group/...`, which carries the same `msgid`.
    Sent,
    /// Refused by the broker, not acknowledged within `resend_for`, or still unacknowledged
    /// when the client was disconnected. The library publishes it no more.
    Failed { reason: String },
}

/// Everything the client reports, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection is up (CONNACK); the inbox is subscribed and a `$sync` is on its way.
    Connected { session_present: bool },
    /// A connection was lost, or an attempt failed; the client tries again by itself.
    Disconnected { reason: String },
    /// A chat message of my inbox, in seq order, each seq once.
    Message {
        /// Its place in my inbox log.
        seq: u64,
        /// The broker's id, the same for every recipient.
        id: u64,
        /// Who wrote it.
        from: String,
        conversation: Conversation,
        /// My own message (`inbox/{me}/sent/...`, or a group message from me), possibly
        /// sent from another of my devices.
        outgoing: bool,
        /// The sender's own message id, when it gave one.
        msgid: Option<String>,
        /// Empty when `recalled`.
        payload: Bytes,
        /// Taken back by its sender since.
        recalled: bool,
    },
    /// A recall entry: the message `id_recalled` was taken back by `from`.
    Recalled {
        seq: u64,
        id_recalled: u64,
        conversation: Conversation,
        from: String,
    },
    /// My read position in a conversation moved (from any of my devices).
    ReadPosition {
        conversation: Conversation,
        seq: u64,
        id: u64,
    },
    /// `peer` has read my DMs up to the message `id`.
    Receipt { peer: String, id: u64 },
    /// The answer to [`Client::group_receipts`](crate::Client::group_receipts).
    GroupReceipts {
        gid: String,
        id: u64,
        read: Vec<String>,
        unread: Vec<String>,
    },
    /// A watched user's presence (`since` when online, `last_seen` when offline, in the
    /// broker's clock).
    Presence {
        user: String,
        online: bool,
        since: Option<u64>,
        last_seen: Option<u64>,
    },
    /// A sent message moved on; `msgid` is the id it carries on the wire.
    SendState {
        local_id: LocalId,
        msgid: String,
        state: SendState,
    },
    /// A `$` request was refused by the broker or not acknowledged in time.
    RequestFailed { request: Request, reason: String },
    /// The broker refused a subscription (e.g. a presence it does not show me).
    SubscribeRefused { filter: String, reason: String },
    /// A `$sync` replay is complete: the inbox is caught up to `next - 1`.
    Synced { next: u64 },
    /// Inbox entries `from..=to` will never come (trimmed by retention, or deleted):
    /// the app may want to tell the user that history is incomplete.
    Gap { from: u64, to: u64 },
}

/// The end marker of a `$sync` replay (`inbox/{me}/sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SyncEnd {
    /// The seq the request asked to replay after (`None`: from the start).
    pub after: Option<u64>,
    /// The last seq replayed (`None`: none).
    pub last: Option<u64>,
    /// The seq the next message will get.
    pub next: u64,
    /// The replay stopped at a limit: ask again from `last`.
    pub more: bool,
}

/// One publish from the broker, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A numbered inbox entry ([`Event::Message`] or [`Event::Recalled`]): the seq tracker
    /// decides when (and whether) it reaches the app.
    Entry { seq: u64, event: Event },
    /// The end of a replay.
    SyncEnd(SyncEnd),
    /// Not numbered: straight to the app.
    Notice(Event),
}

/// Why a publish from the broker was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("topic `{0}` is none of docs/chat.md's")]
    UnknownTopic(String),
    #[error("the topic is not UTF-8")]
    TopicNotUtf8,
    #[error(
        "user property `{0}` missing: docs/chat.md gives every inbox entry `from`, `seq` and `id`"
    )]
    MissingProperty(&'static str),
    #[error("`{what}` must be a decimal u64, got `{value}`")]
    NotANumber { what: &'static str, value: String },
    #[error("payload of {topic}: {reason}")]
    BadPayload { topic: &'static str, reason: String },
}

/// Classifies a publish the client received. `me` is the logged-in user.
pub fn parse(
    me: &str,
    topic: &str,
    properties: &[(String, String)],
    payload: &Bytes,
) -> Result<Inbound, ParseError> {
    let unknown = || ParseError::UnknownTopic(topic.to_string());
    let levels: Vec<&str> = topic.split('/').collect();
    if levels.iter().any(|level| level.is_empty()) {
        return Err(unknown());
    }
    match levels.as_slice() {
        ["presence", user] => presence(user, payload),
        ["inbox", owner, rest @ ..] if *owner == me => inbox(me, rest, properties, payload)
            .ok_or_else(unknown)
            .and_then(|r| r),
        _ => Err(unknown()),
    }
}

/// `None`: not an inbox topic of docs/chat.md.
fn inbox(
    me: &str,
    rest: &[&str],
    props: &[(String, String)],
    payload: &Bytes,
) -> Option<Result<Inbound, ParseError>> {
    let direct = |peer: &str| Conversation::Direct {
        peer: peer.to_string(),
    };
    let group = |gid: &str| Conversation::Group {
        gid: gid.to_string(),
    };
    Some(match rest {
        ["dm", from] => message(props, payload, direct(from), from, false),
        ["sent", to] => message(props, payload, direct(to), me, true),
        ["group", gid, from] => message(props, payload, group(gid), from, *from == me),
        ["recall", "dm", from] => recall(props, payload, direct(from), from),
        ["recall", "sent", to] => recall(props, payload, direct(to), me),
        ["recall", "group", gid, from] => recall(props, payload, group(gid), from),
        ["sync"] => json::<SyncEnd>("inbox/{me}/sync", payload).map(Inbound::SyncEnd),
        ["read", "dm", peer] => read_position(payload, direct(peer)),
        ["read", "group", gid] => read_position(payload, group(gid)),
        ["receipt", peer] => json::<IdOnly>("inbox/{me}/receipt/{peer}", payload).map(|r| {
            Inbound::Notice(Event::Receipt {
                peer: peer.to_string(),
                id: r.id.0,
            })
        }),
        ["receipts", "group", gid] => {
            json::<GroupReceiptsJson>("inbox/{me}/receipts/group/{gid}", payload).map(|r| {
                Inbound::Notice(Event::GroupReceipts {
                    gid: gid.to_string(),
                    id: r.id.0,
                    read: r.read,
                    unread: r.unread,
                })
            })
        }
        _ => return None,
    })
}

/// A DM, a sent copy or a group message. `from_topic`: the sender the topic names, used
/// when the `from` property is absent (the broker always sets it; the topic says the same).
fn message(
    props: &[(String, String)],
    payload: &Bytes,
    conversation: Conversation,
    from_topic: &str,
    outgoing: bool,
) -> Result<Inbound, ParseError> {
    let seq = number(props, "seq")?;
    let id = number(props, "id")?;
    let from = property(props, "from").unwrap_or(from_topic).to_string();
    let recalled = property(props, "recalled") == Some("true");
    Ok(Inbound::Entry {
        seq,
        event: Event::Message {
            seq,
            id,
            from,
            conversation,
            outgoing,
            msgid: property(props, "msgid").map(str::to_string),
            payload: payload.clone(),
            recalled,
        },
    })
}

fn recall(
    props: &[(String, String)],
    payload: &Bytes,
    conversation: Conversation,
    from_topic: &str,
) -> Result<Inbound, ParseError> {
    let seq = number(props, "seq")?;
    // The `recall` property names the recalled id; the payload says the same in text.
    let id_recalled = match property(props, "recall") {
        Some(value) => decimal("recall", value)?,
        None => decimal("recall payload", &String::from_utf8_lossy(payload))?,
    };
    let from = property(props, "from").unwrap_or(from_topic).to_string();
    Ok(Inbound::Entry {
        seq,
        event: Event::Recalled {
            seq,
            id_recalled,
            conversation,
            from,
        },
    })
}

fn read_position(payload: &Bytes, conversation: Conversation) -> Result<Inbound, ParseError> {
    let read: ReadJson = json("inbox/{me}/read/...", payload)?;
    Ok(Inbound::Notice(Event::ReadPosition {
        conversation,
        seq: read.seq,
        id: read.id.0,
    }))
}

fn presence(user: &str, payload: &Bytes) -> Result<Inbound, ParseError> {
    // A retained message is cleared with an empty payload: nothing to report.
    let p: PresenceJson = json("presence/{user}", payload)?;
    Ok(Inbound::Notice(Event::Presence {
        user: user.to_string(),
        online: p.online,
        since: p.since,
        last_seen: p.last_seen,
    }))
}

fn property<'a>(props: &'a [(String, String)], key: &str) -> Option<&'a str> {
    props
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn number(props: &[(String, String)], key: &'static str) -> Result<u64, ParseError> {
    let value = property(props, key).ok_or(ParseError::MissingProperty(key))?;
    decimal(key, value)
}

fn decimal(what: &'static str, value: &str) -> Result<u64, ParseError> {
    // `u64::from_str` also takes a leading '+'; docs/chat.md's numbers are bare digits.
    let bare = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    value
        .parse()
        .ok()
        .filter(|_| bare)
        .ok_or_else(|| ParseError::NotANumber {
            what,
            value: value.chars().take(40).collect(),
        })
}

fn json<'a, T: Deserialize<'a>>(topic: &'static str, payload: &'a Bytes) -> Result<T, ParseError> {
    serde_json::from_slice(payload).map_err(|e| ParseError::BadPayload {
        topic,
        reason: e.to_string(),
    })
}

/// A message id in JSON: a decimal string per docs/chat.md (ids exceed what JavaScript
/// numbers hold); a plain number is taken too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JsonId(u64);

impl<'de> Deserialize<'de> for JsonId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Number(u64),
        }
        match Repr::deserialize(d)? {
            Repr::Number(n) => Ok(JsonId(n)),
            Repr::Text(s) => decimal("id", &s)
                .map(JsonId)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
struct IdOnly {
    id: JsonId,
}

#[derive(Deserialize)]
struct ReadJson {
    seq: u64,
    id: JsonId,
}

#[derive(Deserialize)]
struct GroupReceiptsJson {
    id: JsonId,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    unread: Vec<String>,
}

#[derive(Deserialize)]
struct PresenceJson {
    online: bool,
    since: Option<u64>,
    last_seen: Option<u64>,
}

/// Why `name` cannot be one level of a topic (a user, peer or group id), if it cannot.
pub(crate) fn topic_level_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains(['/', '+', '#', '\0']) {
        Some("contains '/', '+', '#' or NUL")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn entry_props() -> Vec<(String, String)> {
        props(&[("from", "bob"), ("seq", "7"), ("id", "1843000000000000001")])
    }

    fn parse_str(
        topic: &str,
        p: &[(String, String)],
        payload: &str,
    ) -> Result<Inbound, ParseError> {
        parse(
            "alice",
            topic,
            p,
            &Bytes::copy_from_slice(payload.as_bytes()),
        )
    }

    fn direct(peer: &str) -> Conversation {
        Conversation::Direct { peer: peer.into() }
    }

    fn group(gid: &str) -> Conversation {
        Conversation::Group { gid: gid.into() }
    }

    #[test]
    fn a_dm_to_me() {
        let mut p = entry_props();
        p.push(("msgid".into(), "bob-phone-1".into()));
        let parsed = parse_str("inbox/alice/dm/bob", &p, "hi").expect("a DM");
        assert_eq!(
            parsed,
            Inbound::Entry {
                seq: 7,
                event: Event::Message {
                    seq: 7,
                    id: 1_843_000_000_000_000_001,
                    from: "bob".into(),
                    conversation: direct("bob"),
                    outgoing: false,
                    msgid: Some("bob-phone-1".into()),
                    payload: Bytes::from_static(b"hi"),
                    recalled: false,
                },
            }
        );
    }

    #[test]
    fn a_dm_i_sent_is_outgoing_in_the_dm_with_its_recipient() {
        let p = props(&[("from", "alice"), ("seq", "8"), ("id", "9")]);
        let Ok(Inbound::Entry { event, .. }) = parse_str("inbox/alice/sent/bob", &p, "yo") else {
            panic!("a sent copy");
        };
        let Event::Message {
            from,
            conversation,
            outgoing,
            msgid,
            ..
        } = event
        else {
            panic!("a message");
        };
        assert_eq!((from.as_str(), outgoing), ("alice", true));
        assert_eq!(conversation, direct("bob"));
        assert_eq!(msgid, None);
    }

    #[test]
    fn a_group_message_is_outgoing_when_it_is_mine() {
        let mine = props(&[("from", "alice"), ("seq", "1"), ("id", "2")]);
        let theirs = props(&[("from", "carol"), ("seq", "2"), ("id", "3")]);
        for (topic, p, expect_outgoing, expect_from) in [
            ("inbox/alice/group/g1/alice", &mine, true, "alice"),
            ("inbox/alice/group/g1/carol", &theirs, false, "carol"),
        ] {
            let Ok(Inbound::Entry {
                event:
                    Event::Message {
                        conversation,
                        outgoing,
                        from,
                        ..
                    },
                ..
            }) = parse_str(topic, p, "x")
            else {
                panic!("a group message on {topic}");
            };
            assert_eq!(conversation, group("g1"));
            assert_eq!(outgoing, expect_outgoing);
            assert_eq!(from, expect_from);
        }
    }

    #[test]
    fn a_recalled_message_comes_empty_with_recalled_true() {
        let mut p = entry_props();
        p.push(("recalled".into(), "true".into()));
        let Ok(Inbound::Entry {
            event: Event::Message {
                payload, recalled, ..
            },
            ..
        }) = parse_str("inbox/alice/dm/bob", &p, "")
        else {
            panic!("a message");
        };
        assert!(recalled);
        assert!(payload.is_empty());
    }

    #[test]
    fn recall_entries_of_each_kind() {
        let p = props(&[
            ("from", "bob"),
            ("seq", "9"),
            ("id", "77"),
            ("recall", "42"),
        ]);
        let cases = [
            ("inbox/alice/recall/dm/bob", direct("bob"), "bob"),
            ("inbox/alice/recall/sent/bob", direct("bob"), "bob"),
            ("inbox/alice/recall/group/g1/bob", group("g1"), "bob"),
        ];
        for (topic, conversation, from) in cases {
            assert_eq!(
                parse_str(topic, &p, "42"),
                Ok(Inbound::Entry {
                    seq: 9,
                    event: Event::Recalled {
                        seq: 9,
                        id_recalled: 42,
                        conversation,
                        from: from.into(),
                    },
                }),
                "{topic}"
            );
        }
    }

    #[test]
    fn a_recall_without_the_property_takes_the_id_from_the_payload() {
        let p = props(&[("seq", "3"), ("id", "5")]);
        let Ok(Inbound::Entry {
            event: Event::Recalled {
                id_recalled, from, ..
            },
            ..
        }) = parse_str("inbox/alice/recall/sent/bob", &p, "41")
        else {
            panic!("a recall");
        };
        assert_eq!(id_recalled, 41);
        assert_eq!(from, "alice", "a recall on sent/ is mine");
        assert!(matches!(
            parse_str("inbox/alice/recall/dm/bob", &p, "forty"),
            Err(ParseError::NotANumber { .. })
        ));
    }

    #[test]
    fn the_sync_end_marker() {
        let parsed = parse_str(
            "inbox/alice/sync",
            &[],
            r#"{"after":41,"last":57,"next":58,"more":false,"new_key":1}"#,
        );
        assert_eq!(
            parsed,
            Ok(Inbound::SyncEnd(SyncEnd {
                after: Some(41),
                last: Some(57),
                next: 58,
                more: false
            }))
        );
        let nulls = parse_str(
            "inbox/alice/sync",
            &[],
            r#"{"after":null,"last":null,"next":0,"more":true}"#,
        );
        assert_eq!(
            nulls,
            Ok(Inbound::SyncEnd(SyncEnd {
                after: None,
                last: None,
                next: 0,
                more: true
            }))
        );
    }

    #[test]
    fn read_positions_receipts_and_group_receipts() {
        assert_eq!(
            parse_str("inbox/alice/read/dm/bob", &[], r#"{"seq":57,"id":"1843"}"#),
            Ok(Inbound::Notice(Event::ReadPosition {
                conversation: direct("bob"),
                seq: 57,
                id: 1843
            }))
        );
        assert_eq!(
            parse_str(
                "inbox/alice/read/group/g1",
                &[],
                r#"{"seq":3,"id":"18446744073709551615"}"#
            ),
            Ok(Inbound::Notice(Event::ReadPosition {
                conversation: group("g1"),
                seq: 3,
                id: u64::MAX
            }))
        );
        assert_eq!(
            parse_str("inbox/alice/receipt/bob", &[], r#"{"id":"12"}"#),
            Ok(Inbound::Notice(Event::Receipt {
                peer: "bob".into(),
                id: 12
            }))
        );
        assert_eq!(
            parse_str(
                "inbox/alice/receipts/group/g1",
                &[],
                r#"{"id":"12","read":["bob"],"unread":["carol","dave"]}"#
            ),
            Ok(Inbound::Notice(Event::GroupReceipts {
                gid: "g1".into(),
                id: 12,
                read: vec!["bob".into()],
                unread: vec!["carol".into(), "dave".into()],
            }))
        );
    }

    #[test]
    fn presence_online_and_offline() {
        assert_eq!(
            parse_str(
                "presence/bob",
                &[],
                r#"{"online":true,"since":1765000000000}"#
            ),
            Ok(Inbound::Notice(Event::Presence {
                user: "bob".into(),
                online: true,
                since: Some(1_765_000_000_000),
                last_seen: None
            }))
        );
        assert_eq!(
            parse_str("presence/bob", &[], r#"{"online":false,"last_seen":1765}"#),
            Ok(Inbound::Notice(Event::Presence {
                user: "bob".into(),
                online: false,
                since: None,
                last_seen: Some(1765)
            }))
        );
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = entry_props();
        type Case = (&'static str, Vec<(String, String)>, &'static str);
        let cases: Vec<Case> = vec![
            // Topics that are not docs/chat.md's, or not mine.
            ("inbox/bob/dm/carol", good.clone(), "x"),
            ("inbox/alice", good.clone(), "x"),
            ("inbox/alice/dm", good.clone(), "x"),
            ("inbox/alice/dm/bob/extra", good.clone(), "x"),
            ("inbox/alice//bob", good.clone(), "x"),
            ("inbox/alice/group/g1", good.clone(), "x"),
            ("inbox/alice/recall/dm", good.clone(), "x"),
            ("inbox/alice/weird/x", good.clone(), "x"),
            ("presence/bob/extra", vec![], "{}"),
            ("presence/", vec![], "{}"),
            ("", vec![], ""),
            // Entries without their properties, or with bad numbers.
            (
                "inbox/alice/dm/bob",
                props(&[("from", "bob"), ("id", "1")]),
                "x",
            ),
            (
                "inbox/alice/dm/bob",
                props(&[("seq", "1"), ("from", "bob")]),
                "x",
            ),
            (
                "inbox/alice/dm/bob",
                props(&[("seq", "-1"), ("id", "1")]),
                "x",
            ),
            (
                "inbox/alice/dm/bob",
                props(&[("seq", "+1"), ("id", "1")]),
                "x",
            ),
            (
                "inbox/alice/dm/bob",
                props(&[("seq", "1"), ("id", "99999999999999999999")]),
                "x",
            ),
            (
                "inbox/alice/dm/bob",
                props(&[("seq", ""), ("id", "1")]),
                "x",
            ),
            // JSON payloads that do not fit.
            ("inbox/alice/sync", vec![], ""),
            ("inbox/alice/sync", vec![], "{"),
            (
                "inbox/alice/sync",
                vec![],
                r#"{"after":1,"last":2,"more":false}"#,
            ),
            (
                "inbox/alice/sync",
                vec![],
                r#"{"after":1,"last":2,"next":-3,"more":false}"#,
            ),
            (
                "inbox/alice/read/dm/bob",
                vec![],
                r#"{"seq":"57","id":"1"}"#,
            ),
            ("inbox/alice/read/dm/bob", vec![], r#"{"seq":57,"id":"x1"}"#),
            ("inbox/alice/read/dm/bob", vec![], r#"{"seq":57}"#),
            ("inbox/alice/receipt/bob", vec![], r#"{"id":-1}"#),
            ("inbox/alice/receipt/bob", vec![], r#"[1,2]"#),
            (
                "inbox/alice/receipts/group/g1",
                vec![],
                r#"{"id":"1","read":"bob"}"#,
            ),
            ("presence/bob", vec![], ""),
            ("presence/bob", vec![], r#"{"online":"yes"}"#),
            ("presence/bob", vec![], "\u{0}\u{ff}"),
        ];
        for (topic, p, payload) in cases {
            assert!(
                parse_str(topic, &p, payload).is_err(),
                "{topic} {p:?} {payload:?} should not parse"
            );
        }
        // Bytes that are not UTF-8 in a payload that should be a number or JSON.
        let bad = Bytes::from_static(&[0xff, 0xfe]);
        assert!(parse("alice", "inbox/alice/sync", &[], &bad).is_err());
        let p = props(&[("seq", "1"), ("id", "2")]);
        assert!(parse("alice", "inbox/alice/recall/dm/bob", &p, &bad).is_err());
    }

    #[test]
    fn errors_name_what_was_missing() {
        let err = parse_str("inbox/alice/dm/bob", &props(&[("id", "1")]), "x");
        assert_eq!(err, Err(ParseError::MissingProperty("seq")));
        let text = ParseError::MissingProperty("seq").to_string();
        assert!(text.contains("docs/chat.md"), "{text}");
    }

    #[test]
    fn topic_levels() {
        assert_eq!(topic_level_error("bob"), None);
        assert!(topic_level_error("").is_some());
        assert!(topic_level_error("a/b").is_some());
        assert!(topic_level_error("#").is_some());
        assert!(topic_level_error("a+").is_some());
    }
}
