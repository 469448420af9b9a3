//! Who may subscribe to what: the inbox rule as a pure function.
//!
//! A user's inbox (`inbox/{user}/...`) is theirs alone. A filter naming another user's inbox
//! is refused (SUBACK 0x87, 0x80 for 3.1.1); a filter with a wildcard where the user goes
//! (`inbox/+/dm/#`, `inbox/#`) is *narrowed* to the subscriber's own inbox
//! (`inbox/{me}/dm/#`), which is what such a client means. Filters starting with a wildcard
//! (`#`, `+/x/#`) are allowed: the router never delivers an inbox topic to a session of
//! another user, whatever filter matched (see `router::plan`), so nothing leaks through them.

use tern_codec::topic::split_shared;

use super::topics::INBOX;

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
