//! Who may publish and subscribe where: the chat namespace's rules as pure functions.
//!
//! Publishing: a topic's address (see [`super::topics`]) decides how a PUBLISH is routed,
//! and refuses what a client may not publish: into an inbox, on `$SYS`, a malformed chat
//! topic, or (without the operator role) a broadcast. A will may go only where its client
//! could publish plain messages or (an operator's) broadcasts: the broker publishes it
//! without chat routing, so it may not forge an inbox entry, a DM or a group message.
//!
//! A user's inbox (`inbox/{user}/...`) is theirs alone. A filter naming another user's inbox
//! is refused (SUBACK 0x87, 0x80 for 3.1.1); a filter with a wildcard where the user goes
//! (`inbox/+/dm/#`, `inbox/#`) is *narrowed* to the subscriber's own inbox
//! (`inbox/{me}/dm/#`), which is what such a client means. Filters starting with a wildcard
//! (`#`, `+/x/#`) are allowed: the router never delivers an inbox topic to a session of
//! another user, whatever filter matched (see `router::plan`), so nothing leaks through them.

use tern_codec::topic::split_shared;
use tern_codec::{ByteString, ReasonCode, Subscribe, Unsubscribe};

use super::topics::{classify, Address, INBOX};

/// How the broker handles a client's PUBLISH, by its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRoute {
    /// An ordinary MQTT topic.
    Plain,
    /// `dm/{to}` or `group/{gid}`: into the recipients' inboxes.
    Chat,
    /// `broadcast/{channel}`, from an operator.
    Broadcast,
    /// `$sync`: a replay of the sender's inbox to its connection.
    Sync,
    /// `$read/...`, `$recall`, `$receipts/...`, `$settings`: a chat request the
    /// connection carries out and answers with the acknowledgement's reason.
    Request,
    /// Not routed: acknowledged with this reason (v5), logged and counted.
    Refused(PublishRefused),
}

/// Why a PUBLISH is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefused {
    BroadcastNeedsOperator,
    IntoInbox,
    SystemTopic,
    /// `presence/...` is the broker's.
    PresenceTopic,
    /// `dm/` or `group/` with a missing or extra level: a mistake worth a clear refusal
    /// rather than a silent ordinary publish nobody receives.
    MalformedChatTopic,
    /// A plain topic the ACL file (`acl_file`) does not let the client publish on.
    NotInAcl,
}

impl PublishRefused {
    /// The reason code of the acknowledgement (MQTT 5).
    pub fn code(self) -> ReasonCode {
        match self {
            PublishRefused::MalformedChatTopic => ReasonCode::TopicNameInvalid,
            _ => ReasonCode::NotAuthorized,
        }
    }

    /// Why, for the log.
    pub fn why(self) -> &'static str {
        match self {
            PublishRefused::BroadcastNeedsOperator => "broadcast needs the operator role",
            PublishRefused::IntoInbox => "only the broker publishes into inboxes",
            PublishRefused::SystemTopic => "$SYS topics are the broker's",
            PublishRefused::PresenceTopic => "only the broker publishes presence",
            PublishRefused::MalformedChatTopic => {
                "dm/{user}, group/{gid}, $read/dm/{user}, $read/group/{gid} and $receipts/group/{gid} take exactly one more level"
            }
            PublishRefused::NotInAcl => "the ACL file does not allow it",
        }
    }
}

/// How a PUBLISH on `topic` from a client with (`operator`) or without the operator role
/// is handled.
pub fn publish_route(topic: &str, operator: bool) -> PublishRoute {
    match classify(topic) {
        Address::Plain => PublishRoute::Plain,
        Address::Direct { .. } | Address::Group { .. } => PublishRoute::Chat,
        Address::Sync => PublishRoute::Sync,
        Address::Read(_) | Address::Recall | Address::GroupReceipts { .. } | Address::Settings => {
            PublishRoute::Request
        }
        Address::Presence => PublishRoute::Refused(PublishRefused::PresenceTopic),
        Address::Broadcast if operator => PublishRoute::Broadcast,
        Address::Broadcast => PublishRoute::Refused(PublishRefused::BroadcastNeedsOperator),
        Address::Inbox => PublishRoute::Refused(PublishRefused::IntoInbox),
        Address::System => PublishRoute::Refused(PublishRefused::SystemTopic),
        Address::Malformed => PublishRoute::Refused(PublishRefused::MalformedChatTopic),
    }
}

/// Whether a client may leave a will on `topic`.
pub fn will_allowed(topic: &str, operator: bool) -> bool {
    match classify(topic) {
        Address::Plain => true,
        Address::Broadcast => operator,
        _ => false,
    }
}

/// The inbox rule on a SUBSCRIBE: filters narrowed to `user`'s own inbox, refused ones
/// taken out, and so are the others `allowed` (the ACL file's answer) refuses. Returns what goes to the router and the indexes of the refused filters
/// (ascending), whose SUBACK reason is "not authorized" (see [`suback_reasons`]).
pub fn filter_subscribe(
    user: &str,
    mut subscribe: Subscribe,
    allowed: impl Fn(&str) -> bool,
) -> (Subscribe, Vec<usize>) {
    let mut refused = Vec::new();
    let filters = std::mem::take(&mut subscribe.filters);
    for (index, (filter, options)) in filters.into_iter().enumerate() {
        match check_filter(user, &filter) {
            FilterDecision::Allow if !allowed(&filter) => {
                tracing::info!(%user, %filter, "subscription refused by the ACL file");
                refused.push(index);
            }
            FilterDecision::Allow => subscribe.filters.push((filter, options)),
            FilterDecision::Narrow(narrowed) => {
                tracing::debug!(%user, %filter, %narrowed, "filter narrowed to the user's inbox");
                subscribe
                    .filters
                    .push((ByteString::from(narrowed), options));
            }
            FilterDecision::Refuse => {
                tracing::info!(%user, %filter, "subscription to another user's inbox refused");
                refused.push(index);
            }
        }
    }
    (subscribe, refused)
}

/// The SUBACK's reasons: the router's for the filters it was given, with "not authorized"
/// put back at the places of the refused ones.
pub fn suback_reasons(mut reasons: Vec<ReasonCode>, refused: &[usize]) -> Vec<ReasonCode> {
    for &index in refused {
        reasons.insert(index.min(reasons.len()), ReasonCode::NotAuthorized);
    }
    reasons
}

/// Unsubscribing names the filter as subscribed: narrowed the same way.
pub fn filter_unsubscribe(user: &str, unsubscribe: &mut Unsubscribe) {
    for filter in &mut unsubscribe.filters {
        if let FilterDecision::Narrow(narrowed) = check_filter(user, filter) {
            *filter = ByteString::from(narrowed);
        }
    }
}

/// The answer to one SUBSCRIBE filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterDecision {
    Allow,
    /// Subscribe to this filter instead (the caller's own inbox).
    Narrow(String),
    Refuse,
}

/// Decides whether `user` may subscribe to `filter` (a valid MQTT filter, possibly shared).
pub fn check_filter(user: &str, filter: &str) -> FilterDecision {
    let (share_prefix, inner) = match split_shared(filter) {
        Some(Ok((group, inner))) => (Some(group), inner),
        // The codec refuses a malformed share name before this is asked.
        Some(Err(_)) => return FilterDecision::Refuse,
        None => (None, filter),
    };
    let mut levels = inner.splitn(3, '/');
    if levels.next() != Some(INBOX) {
        return FilterDecision::Allow;
    }
    let owner = levels.next();
    let rest = levels.next();
    let narrowed = match (owner, rest) {
        (None, _) => return FilterDecision::Allow,
        (Some(owner), _) if owner == user => return FilterDecision::Allow,
        (Some("#"), _) => format!("{INBOX}/{user}/#"),
        (Some("+"), None) => format!("{INBOX}/{user}"),
        (Some("+"), Some(rest)) => format!("{INBOX}/{user}/{rest}"),
        (Some(_), _) => return FilterDecision::Refuse,
    };
    FilterDecision::Narrow(match share_prefix {
        Some(group) => format!("$share/{group}/{narrowed}"),
        None => narrowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{Properties, SubscriptionOptions};

    #[test]
    fn publishes_are_routed_or_refused_by_their_topic() {
        let refused = |code| move |route: PublishRoute| matches!(route, PublishRoute::Refused(r) if r.code() == code);
        assert_eq!(publish_route("sensors/1", false), PublishRoute::Plain);
        assert_eq!(publish_route("dm/bob", false), PublishRoute::Chat);
        assert_eq!(publish_route("group/g1", false), PublishRoute::Chat);
        assert_eq!(publish_route("$sync", false), PublishRoute::Sync);
        assert_eq!(
            publish_route("broadcast/news", true),
            PublishRoute::Broadcast
        );
        let not_authorized = refused(ReasonCode::NotAuthorized);
        assert!(not_authorized(publish_route("broadcast/news", false)));
        assert!(not_authorized(publish_route("inbox/bob/dm/alice", true)));
        assert!(not_authorized(publish_route("$SYS/broker/uptime", true)));
        assert!(refused(ReasonCode::TopicNameInvalid)(publish_route(
            "dm/bob/x", false
        )));
        assert_eq!(
            publish_route("$SYS/x", true),
            PublishRoute::Refused(PublishRefused::SystemTopic)
        );
    }

    #[test]
    fn wills_go_where_plain_messages_and_an_operators_broadcasts_go() {
        assert!(will_allowed("status/dev", false));
        assert!(will_allowed("broadcast/down", true));
        for topic in [
            "broadcast/down",
            "dm/bob",
            "group/g",
            "inbox/bob/x",
            "$SYS/x",
            "$sync",
        ] {
            assert!(!will_allowed(topic, false), "{topic}");
        }
        assert!(
            !will_allowed("dm/bob", true),
            "no forged chat, even for operators"
        );
    }

    #[test]
    fn a_subscribe_keeps_its_allowed_filters_narrows_wildcards_and_refuses_in_place() {
        let subscribe = Subscribe {
            packet_id: 5,
            properties: Properties::default(),
            filters: ["a/b", "inbox/bob/#", "inbox/+/dm/#", "inbox/carol", "c"]
                .into_iter()
                .map(|f| (ByteString::from(f), SubscriptionOptions::default()))
                .collect(),
        };
        let (kept, refused) = filter_subscribe("alice", subscribe, |_| true);
        let kept: Vec<_> = kept.filters.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(kept, ["a/b", "inbox/alice/dm/#", "c"]);
        assert_eq!(refused, [1, 3]);
        let granted = vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GrantedQoS1,
            ReasonCode::GRANTED_QOS_0,
        ];
        assert_eq!(
            suback_reasons(granted, &refused),
            [
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::NotAuthorized,
                ReasonCode::GrantedQoS1,
                ReasonCode::NotAuthorized,
                ReasonCode::GRANTED_QOS_0,
            ]
        );
        let mut unsubscribe = Unsubscribe {
            packet_id: 6,
            properties: Properties::default(),
            filters: vec![ByteString::from("inbox/+/dm/#"), ByteString::from("x")],
        };
        filter_unsubscribe("alice", &mut unsubscribe);
        assert_eq!(
            unsubscribe.filters,
            [ByteString::from("inbox/alice/dm/#"), ByteString::from("x")]
        );
    }

    #[test]
    fn own_inbox_and_other_topics_are_allowed() {
        for filter in [
            "inbox/alice/#",
            "inbox/alice/dm/+",
            "inbox/alice",
            "inbox",
            "#",
            "+/bob/#",
            "sensors/#",
            "broadcast/+",
            "inboxes/bob",
        ] {
            assert_eq!(
                check_filter("alice", filter),
                FilterDecision::Allow,
                "{filter}"
            );
        }
    }

    #[test]
    fn another_users_inbox_is_refused() {
        for filter in [
            "inbox/bob/#",
            "inbox/bob",
            "inbox/bob/dm/alice",
            "$share/g/inbox/bob/#",
        ] {
            assert_eq!(
                check_filter("alice", filter),
                FilterDecision::Refuse,
                "{filter}"
            );
        }
    }

    #[test]
    fn wildcard_users_are_narrowed_to_the_subscriber() {
        let narrow = |f: &str| FilterDecision::Narrow(f.to_string());
        assert_eq!(check_filter("alice", "inbox/#"), narrow("inbox/alice/#"));
        assert_eq!(check_filter("alice", "inbox/+"), narrow("inbox/alice"));
        assert_eq!(
            check_filter("alice", "inbox/+/dm/#"),
            narrow("inbox/alice/dm/#")
        );
        assert_eq!(
            check_filter("alice", "$share/g/inbox/+/group/#"),
            narrow("$share/g/inbox/alice/group/#")
        );
    }
}
