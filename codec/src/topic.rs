//! Topic names and topic filters (spec 4.7): where wildcards may stand, and shared subscriptions.

use crate::error::TopicError;

/// Prefix of a shared subscription filter: `$share/{group}/{filter}` (spec 4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// Checks a PUBLISH topic name: not empty, no wildcards. (Emptiness is allowed by the caller
/// only for an MQTT 5 PUBLISH carrying a topic alias.)
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a SUBSCRIBE/UNSUBSCRIBE topic filter, including the `$share/{group}/` form.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    let filter = match split_shared(filter) {
        Some(Ok((_, inner))) => inner,
        Some(Err(e)) => return Err(e),
        None => filter,
    };
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MultiLevelWildcardNotLast);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelWildcardNotAlone);
        }
    }
    Ok(())
}

/// Splits `$share/{group}/{filter}` into group and filter. `None` when the filter is not shared.
pub fn split_shared(filter: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(TopicError::InvalidShareName));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Some(Err(TopicError::InvalidShareName));
    }
    Some(Ok((group, inner)))
}

/// Whether `filter` (not shared) matches the topic name `topic` (spec 4.7), including the rule
/// that a filter starting with a wildcard does not match topics starting with `$`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if topic_levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a/+/b",
            "$share/g/a/#",
            "$share/g/#",
            "sport/",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_filter("a/#/b"),
            Err(TopicError::MultiLevelWildcardNotLast)
        );
        assert_eq!(
            validate_topic_filter("a#"),
            Err(TopicError::MultiLevelWildcardNotLast)
        );
        assert_eq!(
            validate_topic_filter("a+"),
            Err(TopicError::SingleLevelWildcardNotAlone)
        );
        assert_eq!(
            validate_topic_filter("a/b+/c"),
            Err(TopicError::SingleLevelWildcardNotAlone)
        );
        assert_eq!(
            validate_topic_filter("$share//a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            validate_topic_filter("$share/g"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            validate_topic_filter("$share/g+/a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(validate_topic_filter("$share/g/"), Err(TopicError::Empty));
    }

    #[test]
    fn matching() {
        assert!(filter_matches("sport/tennis/#", "sport/tennis"));
        assert!(filter_matches(
            "sport/tennis/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(filter_matches("#", "a/b/c"));
        assert!(!filter_matches("#", "$SYS/uptime"));
        assert!(!filter_matches("+/uptime", "$SYS/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS/uptime"));
        assert!(!filter_matches("a/b", "a/b/c"));
    }
}
