//! Mosquitto's ACL file format, and its answers.
//!
//! ```text
//! # comment
//! topic read public/#            <- before any `user` line: clients without a user name
//! user alice
//! topic readwrite alice/#        <- alice's own lines
//! topic deny alice/secret
//! pattern write devices/%c/up    <- every client; %c its client id, %u its user name
//! ```
//!
//! An access word is `read`, `write`, `readwrite` (the default when there is none) or
//! `deny`. A client's answer comes from its own lines (those after `user <its name>`, or the
//! leading ones for a client without a user name), then from the `pattern` lines; in each
//! list `deny` lines are consulted first, then the others in file order, and the first line
//! whose filter matches and either denies or grants the access decides. Nothing matching
//! is a denial; so is any pattern check for a client whose user name or client id holds `+`
//! or `#` (it could otherwise widen its own patterns). A line whose filter does not start
//! with `$` never matches a `$` topic. These are Mosquitto 2.0's rules.
//!
//! Mosquitto checks *read* access when it delivers each message; tern checks it once, at
//! SUBSCRIBE: a filter is granted when a line grants read on every topic it can match
//! (the line's filter covers it) and refused when a `deny` line could match one of its
//! topics. For a filter without wildcards the two agree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tern_codec::topic::{filter_matches, validate_topic_filter};

const READ: u8 = 1;
const WRITE: u8 = 2;

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Subscribe (and so receive).
    Read,
    /// Publish.
    Write,
}

impl Action {
    fn bit(self) -> u8 {
        match self {
            Action::Read => READ,
            Action::Write => WRITE,
        }
    }
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// 0 for `deny`.
    access: u8,
    filter: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFile {
    /// The lines before any `user` line.
    anonymous: Option<Vec<Line>>,
    users: HashMap<String, Vec<Line>>,
    patterns: Vec<Line>,
}

/// A line the parser refuses, like Mosquitto does (it will not start with it).
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read the ACL file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl AclFile {
    pub fn load(path: &Path) -> Result<AclFile, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        AclFile::parse(&text).map_err(|(line, reason)| AclError::Invalid {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }

    /// Parses the file's text; an error gives the 1-based line and why.
    pub fn parse(text: &str) -> Result<AclFile, (usize, String)> {
        let mut acl = AclFile::default();
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let line = raw.trim_end();
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim_start_matches(' ');
            let Some((keyword, rest)) = split_word(line) else {
                continue;
            };
            match keyword {
                "topic" | "pattern" => {
                    let (access, filter) = match split_word(rest) {
                        Some((word, filter)) if !filter.is_empty() => {
                            let access = match word {
                                "read" => READ,
                                "write" => WRITE,
                                "readwrite" => READ | WRITE,
                                "deny" => 0,
                                other => {
                                    return Err((
                                        number,
                                        format!(
                                            "access {other:?} is not read, write, readwrite \
                                             or deny"
                                        ),
                                    ))
                                }
                            };
                            (access, filter.trim())
                        }
                        Some((filter, _)) => (READ | WRITE, filter),
                        None => return Err((number, format!("{keyword} without a topic"))),
                    };
                    validate_topic_filter(filter)
                        .map_err(|e| (number, format!("{filter:?} is not a topic filter: {e}")))?;
                    let entry = Line {
                        access,
                        filter: filter.to_string(),
                    };
                    let list = if keyword == "pattern" {
                        &mut acl.patterns
                    } else {
                        match &user {
                            Some(name) => acl.users.entry(name.clone()).or_default(),
                            None => acl.anonymous.get_or_insert_with(Vec::new),
                        }
                    };
                    list.push(entry);
                }
                "user" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        return Err((number, "user without a name".to_string()));
                    }
                    user = Some(name.to_string());
                    // A user with no lines still has a list: Mosquitto's empty list.
                    acl.users.entry(name.to_string()).or_default();
                }
                other => return Err((number, format!("{other:?} is not topic, pattern or user"))),
            }
        }
        // Denials first, in file order, then the rest in file order (a stable sort).
        let order = |list: &mut Vec<Line>| list.sort_by_key(|line| line.access != 0);
        acl.users.values_mut().for_each(order);
        acl.anonymous.iter_mut().for_each(order);
        order(&mut acl.patterns);
        Ok(acl)
    }

    /// Whether the client (`user`: its user name, if it gave one) may do `action` on
    /// `topic`: a topic name to publish on, or the filter of a SUBSCRIBE (not shared).
    pub fn allows(&self, user: Option<&str>, client_id: &str, action: Action, topic: &str) -> bool {
        let own = match user {
            Some(name) => self.users.get(name),
            None => self.anonymous.as_ref(),
        };
        if own.is_none() && self.patterns.is_empty() {
            return false;
        }
        let dollar = topic.starts_with('$');
        for line in own.into_iter().flatten() {
            if dollar && !line.filter.starts_with('$') {
                continue;
            }
            if let Some(answer) = decide(line.access, &line.filter, action, topic) {
                return answer;
            }
        }
        if self.patterns.is_empty() {
            return false;
        }
        let dangerous = |s: &str| s.contains(['+', '#']);
        if user.is_some_and(dangerous) || dangerous(client_id) {
            return false;
        }
        for line in &self.patterns {
            if line.filter.contains("%u") && user.is_none() {
                continue;
            }
            let filter = line
                .filter
                .replace("%c", client_id)
                .replace("%u", user.unwrap_or("%u"));
            if let Some(answer) = decide(line.access, &filter, action, topic) {
                return answer;
            }
        }
        false
    }
}

/// A line's answer, if it gives one: `Some(false)` for a matching `deny`, `Some(true)`
/// for a matching line granting the access, `None` to look further.
fn decide(access: u8, filter: &str, action: Action, topic: &str) -> Option<bool> {
    if access == 0 {
        return overlaps(filter, topic).then_some(false);
    }
    (access & action.bit() != 0 && covers(filter, topic)).then_some(true)
}

/// Whether every topic `inner` can match, `outer` matches too (for a topic name: whether
/// `outer` matches it).
fn covers(outer: &str, inner: &str) -> bool {
    if !inner.contains(['+', '#']) {
        return filter_matches(outer, inner);
    }
    if inner.starts_with('$') != outer.starts_with('$') && !outer.starts_with('$') {
        // `inner` may reach `$` topics only if it starts with `$` itself.
        return false;
    }
    let mut outer_levels = outer.split('/');
    for level in inner.split('/') {
        match outer_levels.next() {
            Some("#") => return true,
            Some("+") if level != "#" => {}
            Some(exact) if exact == level && level != "+" && level != "#" => {}
            _ => return false,
        }
    }
    outer_levels.next().is_none()
}

/// Whether some topic matches both filters (for a topic name: whether `a` matches it).
fn overlaps(a: &str, b: &str) -> bool {
    if !b.contains(['+', '#']) {
        return filter_matches(a, b);
    }
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    loop {
        match (a_levels.next(), b_levels.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
    }
}

/// The first space-separated word and what follows it (leading spaces skipped).
fn split_word(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start_matches(' ');
    if line.is_empty() {
        return None;
    }
    Some(match line.split_once(' ') {
        Some((word, rest)) => (word, rest.trim_start_matches(' ')),
        None => (line, ""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# leading lines: clients without a user name
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic write shared/inbox

user bob
topic bob/#

pattern write devices/%c/up
pattern read users/%u/#
pattern deny devices/+/admin
";

    fn acl() -> AclFile {
        AclFile::parse(FILE).expect("parses")
    }

    #[test]
    fn user_lines_denials_first_then_patterns() {
        let acl = acl();
        let alice = Some("alice");
        assert!(acl.allows(alice, "c1", Action::Write, "alice/x"));
        assert!(acl.allows(alice, "c1", Action::Read, "alice/x/y"));
        // The denial wins though it comes after the grant.
        assert!(!acl.allows(alice, "c1", Action::Read, "alice/secret"));
        assert!(acl.allows(alice, "c1", Action::Write, "shared/inbox"));
        assert!(!acl.allows(alice, "c1", Action::Read, "shared/inbox"));
        assert!(!acl.allows(alice, "c1", Action::Read, "public/news"));
        // Patterns: client id and user name substituted.
        assert!(acl.allows(alice, "c1", Action::Write, "devices/c1/up"));
        assert!(!acl.allows(alice, "c1", Action::Write, "devices/c2/up"));
        assert!(acl.allows(alice, "c1", Action::Read, "users/alice/inbox"));
        assert!(!acl.allows(Some("bob"), "c1", Action::Read, "users/alice/inbox"));
        // No user name: the leading lines, and no %u pattern.
        assert!(acl.allows(None, "c9", Action::Read, "public/news"));
        assert!(!acl.allows(None, "c9", Action::Write, "public/news"));
        assert!(acl.allows(None, "c9", Action::Write, "devices/c9/up"));
        // A user without lines of its own still gets the patterns.
        assert!(acl.allows(Some("carol"), "k", Action::Write, "devices/k/up"));
        assert!(!acl.allows(Some("carol"), "k", Action::Write, "carol/x"));
    }

    #[test]
    fn wildcards_in_names_get_no_pattern() {
        let acl = acl();
        assert!(!acl.allows(Some("a+b"), "c1", Action::Write, "devices/c1/up"));
        assert!(!acl.allows(Some("alice"), "c#", Action::Write, "devices/c#/up"));
        // Their own lines still count.
        assert!(acl.allows(Some("alice"), "c#", Action::Write, "alice/x"));
    }

    #[test]
    fn subscriptions_need_a_covering_grant_and_no_overlapping_denial() {
        let acl = acl();
        let alice = Some("alice");
        assert!(acl.allows(alice, "c1", Action::Read, "alice/+/y"));
        assert!(acl.allows(alice, "c1", Action::Read, "users/alice/#"));
        // alice/# includes alice/secret.
        assert!(!acl.allows(alice, "c1", Action::Read, "alice/#"));
        assert!(!acl.allows(alice, "c1", Action::Read, "#"));
        assert!(!acl.allows(alice, "c1", Action::Read, "users/+/inbox"));
        assert!(covers("a/#", "a/+/b"));
        assert!(covers("+/+", "+/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("#", "$SYS/#"));
        assert!(overlaps("a/+/c", "a/b/#"));
        assert!(!overlaps("a/b", "a/c/#"));
    }

    #[test]
    fn dollar_topics_need_dollar_lines() {
        let acl = AclFile::parse("user u\ntopic #\ntopic read $SYS/#\n").expect("parses");
        assert!(acl.allows(Some("u"), "c", Action::Write, "x/y"));
        assert!(!acl.allows(Some("u"), "c", Action::Write, "$other/y"));
        assert!(acl.allows(Some("u"), "c", Action::Read, "$SYS/broker"));
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, line) in [
            ("topic sometimes a/b\n", 1),
            ("user alice\n\ntopic read a/#/b\n", 3),
            ("publish a\n", 1),
            ("user \n", 1),
            ("topic\n", 1),
        ] {
            let err = AclFile::parse(text).expect_err(text);
            assert_eq!(err.0, line, "{text}: {}", err.1);
        }
        // No lines at all: nothing is allowed.
        let empty = AclFile::parse("# nothing\n").expect("parses");
        assert!(!empty.allows(Some("a"), "c", Action::Write, "x"));
    }
}
