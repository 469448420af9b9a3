//! The subscription tree: which sessions want a PUBLISH on a given topic name (spec 4.7, 4.8).
//!
//! A trie of topic levels. Every node has its literal children (a hash map keyed by the level,
//! empty levels included), one dedicated slot for `+` and one for `#`, so matching a topic name
//! costs one hash lookup per level plus the `+` branches that exist: the work is proportional
//! to the nodes on matching paths, never to the number of subscriptions.
//!
//! A node's subscriptions are kept per filter: the non-shared ones by client (a client
//! subscribing again to the same filter replaces its subscription), and the shared ones
//! (`$share/{group}/{filter}`) by group, each group keeping its members in subscription order
//! so that a broker can round-robin by index.
//!
//! Filters and topic names are expected to be valid (see [`tern_codec::topic`]); invalid input
//! never panics but its matching is unspecified. Empty nodes are pruned on
//! [`SubscriptionTree::unsubscribe`], so memory does not grow with churn. Every walk (insert,
//! match, prune, drop) is iterative: a filter or topic of tens of thousands of levels cannot
//! overflow the stack.
//!
//! A client whose subscriptions overlap (`a/+` and `a/b`, or a direct and a shared subscription
//! on the same filter) gets one [`Match`] per matching subscription: choosing whether to deliver
//! once or several times is the broker's business.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::hash::Hash;
use std::mem;

use tern_codec::topic::split_shared;
use tern_codec::SubscriptionOptions;

/// One client's subscription to one filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    /// The MQTT 5 subscription identifier, sent back with every matching PUBLISH.
    pub identifier: Option<u32>,
}

/// One subscription (or shared group) whose filter matches a topic name.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a, K> {
    /// A non-shared subscription of `client` whose filter matched.
    Direct {
        client: &'a K,
        /// The filter as the client sent it.
        filter: &'a str,
        subscription: &'a Subscription,
    },
    /// A shared subscription group whose filter matched: the broker picks one member.
    Shared {
        group: &'a str,
        /// The filter inside `$share/{group}/`, without that prefix.
        filter: &'a str,
        /// The members, in the order they subscribed (a resubscription keeps its place).
        /// Never empty.
        members: &'a [(K, Subscription)],
    },
}

impl<K> Clone for Match<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Match<'_, K> {}

/// All subscriptions of all clients, indexed for matching topic names. `K` identifies a client
/// (the broker uses a small `Copy` session id).
#[derive(Debug)]
pub struct SubscriptionTree<K> {
    root: Node<K>,
    len: usize,
}

/// One level of the trie. The root stands for "no level consumed yet".
#[derive(Debug)]
struct Node<K> {
    children: HashMap<Box<str>, Node<K>>,
    /// The `+` child.
    plus: Option<Box<Node<K>>>,
    /// Subscriptions whose filter ends at this node.
    subs: Option<Box<Subs<K>>>,
    /// Subscriptions whose filter is this node's filter followed by `/#` (or `#` at the root).
    hash: Option<Box<Subs<K>>>,
}

/// The subscriptions of one filter.
#[derive(Debug)]
struct Subs<K> {
    /// The filter (without any `$share/{group}/` prefix).
    filter: Box<str>,
    direct: FxHashMap<K, Subscription>,
    shared: HashMap<Box<str>, Vec<(K, Subscription)>>,
}

/// Where a filter ends in the trie: its levels up to an optional final `#`.
struct Path<'f> {
    /// The levels before the final `#`; `None` when the filter is just `#`.
    prefix: Option<&'f str>,
    hash: bool,
}

impl<'f> Path<'f> {
    fn parse(filter: &'f str) -> Self {
        if filter == "#" {
            Path {
                prefix: None,
                hash: true,
            }
        } else if let Some(prefix) = filter.strip_suffix("/#") {
            Path {
                prefix: Some(prefix),
                hash: true,
            }
        } else {
            Path {
                prefix: Some(filter),
                hash: false,
            }
        }
    }

    fn levels(&self) -> impl Iterator<Item = &'f str> {
        self.prefix.into_iter().flat_map(|p| p.split('/'))
    }
}

/// Splits `$share/{group}/{filter}`; anything else (including an invalid share name, which the
/// caller has refused already) is a plain filter.
fn split_group(filter: &str) -> (Option<&str>, &str) {
    match split_shared(filter) {
        Some(Ok((group, inner))) => (Some(group), inner),
        _ => (None, filter),
    }
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            subs: None,
            hash: None,
        }
    }
}

impl<K> Node<K> {
    fn child(&self, level: &str) -> Option<&Node<K>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K> {
        if level == "+" {
            self.plus.get_or_insert_with(Box::default)
        } else {
            self.children.entry(Box::from(level)).or_default()
        }
    }

    fn remove_child(&mut self, level: &str) {
        if level == "+" {
            self.plus = None;
        } else {
            self.children.remove(level);
        }
    }

    fn edges(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }

    fn is_empty(&self) -> bool {
        self.edges() == 0 && self.subs.is_none() && self.hash.is_none()
    }

    /// Moves the children out, so that dropping a deep trie does not recurse.
    fn take_children(&mut self, into: &mut Vec<Node<K>>) {
        into.extend(self.children.drain().map(|(_, node)| node));
        if let Some(plus) = self.plus.take() {
            into.push(*plus);
        }
    }
}

impl<K> Drop for Node<K> {
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut stack = Vec::new();
        self.take_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.take_children(&mut stack);
        }
    }
}

impl<K> Subs<K> {
    fn new(filter: &str) -> Self {
        Subs {
            filter: Box::from(filter),
            direct: FxHashMap::default(),
            shared: HashMap::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }

    fn visit<'a>(&'a self, visit: &mut impl FnMut(Match<'a, K>)) {
        for (client, subscription) in &self.direct {
            visit(Match::Direct {
                client,
                filter: &self.filter,
                subscription,
            });
        }
        for (group, members) in &self.shared {
            visit(Match::Shared {
                group,
                filter: &self.filter,
                members,
            });
        }
    }
}

impl<K: Clone + Eq + Hash> Subs<K> {
    fn insert(
        &mut self,
        group: Option<&str>,
        client: K,
        sub: Subscription,
    ) -> Option<Subscription> {
        let Some(group) = group else {
            return self.direct.insert(client, sub);
        };
        let members = self.shared.entry(Box::from(group)).or_default();
        match members.iter_mut().find(|(k, _)| *k == client) {
            Some((_, old)) => Some(mem::replace(old, sub)),
            None => {
                members.push((client, sub));
                None
            }
        }
    }

    fn remove(&mut self, group: Option<&str>, client: &K) -> Option<Subscription> {
        let Some(group) = group else {
            return self.direct.remove(client);
        };
        let members = self.shared.get_mut(group)?;
        let index = members.iter().position(|(k, _)| k == client)?;
        let (_, removed) = members.remove(index);
        if members.is_empty() {
            self.shared.remove(group);
        }
        Some(removed)
    }
}

impl<K> Default for SubscriptionTree<K> {
    fn default() -> Self {
        SubscriptionTree {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Clone + Eq + Hash> SubscriptionTree<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the subscription of `client` to `filter`, the full filter as the client
    /// sent it, possibly `$share/{group}/{filter}`. Returns the previous subscription if this
    /// (client, full filter) existed (it is replaced; in a shared group the member keeps its
    /// place).
    pub fn subscribe(
        &mut self,
        client: K,
        filter: &str,
        subscription: Subscription,
    ) -> Option<Subscription> {
        let (group, inner) = split_group(filter);
        let path = Path::parse(inner);
        let mut node = &mut self.root;
        for level in path.levels() {
            node = node.child_or_insert(level);
        }
        let slot = if path.hash {
            &mut node.hash
        } else {
            &mut node.subs
        };
        let subs = slot.get_or_insert_with(|| Box::new(Subs::new(inner)));
        let previous = subs.insert(group, client, subscription);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the subscription of `client` to `filter` (the full filter, as for
    /// [`subscribe`](Self::subscribe)). Returns it, or `None` if the client had no such filter.
    /// Nodes left empty are pruned.
    pub fn unsubscribe(&mut self, client: &K, filter: &str) -> Option<Subscription> {
        let (group, inner) = split_group(filter);
        let path = Path::parse(inner);
        // Depth of the first node of the tail of the path that is empty once the subscription
        // is gone: cutting the edge to it prunes the whole tail.
        let mut cut: Option<usize> = None;
        let mut depth = 0;
        let mut node = &mut self.root;
        for level in path.levels() {
            if depth > 0 {
                // An intermediate node: its one edge, if it has only one, leads down the path.
                if node.edges() == 1 && node.subs.is_none() && node.hash.is_none() {
                    cut.get_or_insert(depth);
                } else {
                    cut = None;
                }
            }
            node = node.child_mut(level)?;
            depth += 1;
        }
        let slot = if path.hash {
            &mut node.hash
        } else {
            &mut node.subs
        };
        let subs = slot.as_deref_mut()?;
        let removed = subs.remove(group, client)?;
        if subs.is_empty() {
            *slot = None;
        }
        self.len -= 1;
        if depth == 0 || !node.is_empty() {
            return Some(removed);
        }
        let cut = cut.unwrap_or(depth);
        // Walk again to the parent of the first empty node and cut it off.
        let mut levels = path.levels();
        let mut node = &mut self.root;
        for level in levels.by_ref().take(cut - 1) {
            match node.child_mut(level) {
                Some(child) => node = child,
                None => return Some(removed),
            }
        }
        if let Some(level) = levels.next() {
            node.remove_child(level);
        }
        Some(removed)
    }

    /// The subscription of `client` to `filter` (the full filter, as for
    /// [`subscribe`](Self::subscribe)).
    pub fn get(&self, client: &K, filter: &str) -> Option<&Subscription> {
        let (group, inner) = split_group(filter);
        let path = Path::parse(inner);
        let mut node = &self.root;
        for level in path.levels() {
            node = node.child(level)?;
        }
        let subs = if path.hash { &node.hash } else { &node.subs }.as_deref()?;
        match group {
            None => subs.direct.get(client),
            Some(group) => subs
                .shared
                .get(group)?
                .iter()
                .find(|(k, _)| k == client)
                .map(|(_, sub)| sub),
        }
    }

    /// Calls `visit` for every subscription (or shared group) whose filter matches `topic`, a
    /// topic name without wildcards. The order of the calls is unspecified. The cost is
    /// proportional to the trie nodes on matching paths plus the matches, not to the total
    /// number of subscriptions.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(Match<'a, K>)) {
        // (node, the rest of the topic after the levels the node stands for, at the root?)
        // `None` as the rest: every level is consumed.
        let mut stack: Vec<(&'a Node<K>, Option<&str>, bool)> = Vec::new();
        let mut current = Some((&self.root, Some(topic), true));
        while let Some((node, rest, root)) = current.take().or_else(|| stack.pop()) {
            let Some(rest) = rest else {
                if let Some(subs) = &node.subs {
                    subs.visit(&mut visit);
                }
                // `a/#` matches `a`.
                if let Some(subs) = &node.hash {
                    subs.visit(&mut visit);
                }
                continue;
            };
            let (level, next) = match rest.split_once('/') {
                Some((level, next)) => (level, Some(next)),
                None => (rest, None),
            };
            // Wildcards at the first level do not match topics starting with `$`.
            let wildcards = !(root && level.starts_with('$'));
            let plus = if wildcards {
                if let Some(subs) = &node.hash {
                    subs.visit(&mut visit);
                }
                node.plus.as_deref()
            } else {
                None
            };
            match (node.children.get(level), plus) {
                (Some(literal), Some(plus)) => {
                    stack.push((plus, next, false));
                    current = Some((literal, next, false));
                }
                (Some(child), None) | (None, Some(child)) => current = Some((child, next, false)),
                (None, None) => {}
            }
        }
    }

    /// The number of (client, full filter) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Trie nodes below the root plus subscription sets, the root's included: zero once every
    /// subscription is gone.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += usize::from(node.subs.is_some()) + usize::from(node.hash.is_some());
            count += node.edges();
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic_strategies::{filter, topic};
    use proptest::prelude::*;
    use tern_codec::topic::filter_matches;
    use tern_codec::QoS;

    fn sub(qos: QoS, identifier: Option<u32>) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
            identifier,
        }
    }

    /// One line per match, sorted: `client filter` or `$share/group filter [members]`.
    fn matches(tree: &SubscriptionTree<u32>, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.for_each_match(topic, |m| match m {
            Match::Direct {
                client,
                filter,
                subscription,
            } => out.push(format!("{client} {filter} {:?}", subscription.identifier)),
            Match::Shared {
                group,
                filter,
                members,
            } => {
                let ids: Vec<_> = members.iter().map(|(k, _)| *k).collect();
                out.push(format!("$share/{group} {filter} {ids:?}"));
            }
        });
        out.sort();
        out
    }

    fn tree_of(filters: &[&str]) -> SubscriptionTree<u32> {
        let mut tree = SubscriptionTree::new();
        for (client, filter) in (0u32..).zip(filters) {
            assert_eq!(
                tree.subscribe(client, filter, sub(QoS::AtMostOnce, None)),
                None
            );
        }
        assert_eq!(tree.len(), filters.len());
        tree
    }

    /// The filters of `filters` that match `topic`, as `client filter None` lines.
    fn matching(tree: &SubscriptionTree<u32>, topic: &str) -> Vec<String> {
        matches(tree, topic)
            .into_iter()
            .map(|line| line.trim_end_matches(" None").to_owned())
            .collect()
    }

    #[test]
    fn literal_and_wildcards() {
        let tree = tree_of(&["a/b", "a/+", "+/b", "a/#", "#", "+", "a/b/c", "+/+/+"]);
        assert_eq!(
            matching(&tree, "a/b"),
            ["0 a/b", "1 a/+", "2 +/b", "3 a/#", "4 #"]
        );
        assert_eq!(matching(&tree, "a"), ["3 a/#", "4 #", "5 +"]);
        assert_eq!(
            matching(&tree, "a/b/c"),
            ["3 a/#", "4 #", "6 a/b/c", "7 +/+/+"]
        );
        assert_eq!(matching(&tree, "b"), ["4 #", "5 +"]);
        assert_eq!(matching(&tree, "b/c/d/e"), ["4 #"]);
    }

    #[test]
    fn hash_matches_the_parent_level() {
        let tree = tree_of(&["sport/tennis/#", "sport/#", "sport/tennis/+"]);
        assert_eq!(
            matching(&tree, "sport/tennis"),
            ["0 sport/tennis/#", "1 sport/#"]
        );
        assert_eq!(matching(&tree, "sport"), ["1 sport/#"]);
        assert_eq!(
            matching(&tree, "sport/tennis/player1/ranking"),
            ["0 sport/tennis/#", "1 sport/#"]
        );
        assert_eq!(
            matching(&tree, "sport/tennis/player1"),
            ["0 sport/tennis/#", "1 sport/#", "2 sport/tennis/+"]
        );
        assert!(matching(&tree, "sports").is_empty());
    }

    #[test]
    fn empty_levels() {
        let tree = tree_of(&["+/+", "/+", "+", "a//b", "a/+/b", "sport/+", "/#", "+/"]);
        assert_eq!(matching(&tree, "/x"), ["0 +/+", "1 /+", "6 /#"]);
        assert_eq!(matching(&tree, "x"), ["2 +"]);
        assert_eq!(matching(&tree, "a//b"), ["3 a//b", "4 a/+/b"]);
        assert_eq!(matching(&tree, "sport/"), ["0 +/+", "5 sport/+", "7 +/"]);
        assert_eq!(matching(&tree, "sport"), ["2 +"]);
        assert_eq!(matching(&tree, "/"), ["0 +/+", "1 /+", "6 /#", "7 +/"]);
        assert_eq!(matching(&tree, "//"), ["6 /#"]);
    }

    #[test]
    fn dollar_topics() {
        let tree = tree_of(&["#", "+/uptime", "$SYS/#", "$SYS/+", "+", "a/$x", "a/+"]);
        assert_eq!(matching(&tree, "$SYS/uptime"), ["2 $SYS/#", "3 $SYS/+"]);
        assert_eq!(matching(&tree, "$SYS"), ["2 $SYS/#"]);
        assert!(matching(&tree, "$other").is_empty());
        // `$` only matters at the first level.
        assert_eq!(matching(&tree, "a/$x"), ["0 #", "5 a/$x", "6 a/+"]);
        assert_eq!(matching(&tree, "x/uptime"), ["0 #", "1 +/uptime"]);
    }

    #[test]
    fn resubscribe_replaces_and_unsubscribe_removes() {
        let mut tree = SubscriptionTree::new();
        assert!(tree.is_empty());
        assert_eq!(
            tree.subscribe(1u32, "a/+", sub(QoS::AtMostOnce, Some(1))),
            None
        );
        assert_eq!(
            tree.subscribe(1, "a/+", sub(QoS::ExactlyOnce, Some(2))),
            Some(sub(QoS::AtMostOnce, Some(1)))
        );
        assert_eq!(tree.len(), 1);
        assert_eq!(tree.get(&1, "a/+"), Some(&sub(QoS::ExactlyOnce, Some(2))));
        assert_eq!(matches(&tree, "a/b"), ["1 a/+ Some(2)"]);
        assert_eq!(tree.subscribe(2, "a/+", sub(QoS::AtMostOnce, None)), None);
        assert_eq!(tree.len(), 2);

        assert_eq!(tree.unsubscribe(&3, "a/+"), None);
        assert_eq!(tree.unsubscribe(&1, "a/b"), None);
        assert_eq!(tree.unsubscribe(&1, "$share/g/a/+"), None);
        assert_eq!(
            tree.unsubscribe(&1, "a/+"),
            Some(sub(QoS::ExactlyOnce, Some(2)))
        );
        assert_eq!(tree.unsubscribe(&1, "a/+"), None);
        assert_eq!(matches(&tree, "a/b"), ["2 a/+ None"]);
        assert_eq!(tree.len(), 1);
        assert!(tree.unsubscribe(&2, "a/+").is_some());
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 0);
        assert!(matches(&tree, "a/b").is_empty());
    }

    #[test]
    fn shared_groups() {
        let mut tree = SubscriptionTree::new();
        let s = sub(QoS::AtLeastOnce, None);
        for client in [3u32, 1, 2] {
            assert_eq!(tree.subscribe(client, "$share/g/a/+", s.clone()), None);
        }
        assert_eq!(tree.subscribe(1, "$share/h/a/+", s.clone()), None);
        assert_eq!(tree.subscribe(5, "$share/g/a/#", s.clone()), None);
        // The same client, directly and in a group, on the same filter: both match.
        assert_eq!(tree.subscribe(1, "a/+", s.clone()), None);
        assert_eq!(tree.len(), 6);
        assert_eq!(
            matches(&tree, "a/b"),
            [
                "$share/g a/# [5]",
                "$share/g a/+ [3, 1, 2]",
                "$share/h a/+ [1]",
                "1 a/+ None"
            ]
        );
        // Resubscribing keeps the member's place.
        let s2 = sub(QoS::ExactlyOnce, Some(9));
        assert_eq!(
            tree.subscribe(1, "$share/g/a/+", s2.clone()),
            Some(s.clone())
        );
        assert_eq!(tree.get(&1, "$share/g/a/+"), Some(&s2));
        assert_eq!(tree.get(&1, "$share/h/a/+"), Some(&s));
        assert_eq!(tree.len(), 6);
        let mut seen = Vec::new();
        tree.for_each_match("a/b", |m| {
            if let Match::Shared {
                group: "g",
                filter: "a/+",
                members,
            } = m
            {
                seen.extend_from_slice(members);
            }
        });
        assert_eq!(seen, [(3, s.clone()), (1, s2.clone()), (2, s.clone())]);
        // Leaving keeps the order of the others.
        assert_eq!(tree.unsubscribe(&3, "$share/g/a/+"), Some(s.clone()));
        assert_eq!(tree.unsubscribe(&3, "$share/g/a/+"), None);
        assert_eq!(
            matches(&tree, "a/b"),
            [
                "$share/g a/# [5]",
                "$share/g a/+ [1, 2]",
                "$share/h a/+ [1]",
                "1 a/+ None"
            ]
        );
        assert_eq!(matches(&tree, "a"), ["$share/g a/# [5]"]);
        for (client, filter) in [
            (1, "a/+"),
            (1, "$share/g/a/+"),
            (2, "$share/g/a/+"),
            (1, "$share/h/a/+"),
            (5, "$share/g/a/#"),
        ] {
            assert!(tree.unsubscribe(&client, filter).is_some(), "{filter}");
        }
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 0);
    }

    #[test]
    fn pruning() {
        let filters = [
            "a/b/c/d", "a/b", "a/+/c", "a/#", "#", "+", "/", "//", "a/b/c/#", "+/+/+", "x/y/z",
        ];
        let mut tree = tree_of(&filters);
        let full = tree.node_count();
        // Removing a deep filter leaves the shared prefix.
        assert!(tree.unsubscribe(&0, "a/b/c/d").is_some());
        assert!(tree.node_count() < full);
        assert_eq!(
            matching(&tree, "a/b/c"),
            ["2 a/+/c", "3 a/#", "4 #", "8 a/b/c/#", "9 +/+/+"]
        );
        assert!(tree
            .subscribe(0, "a/b/c/d", sub(QoS::AtMostOnce, None))
            .is_none());
        assert_eq!(tree.node_count(), full);
        for (client, filter) in (0u32..11).zip(filters).rev() {
            assert!(tree.unsubscribe(&client, filter).is_some(), "{filter}");
        }
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 0);
        // Unsubscribing what does not exist creates nothing.
        assert!(tree.unsubscribe(&0, "q/r/s").is_none());
        assert_eq!(tree.node_count(), 0);
    }

    #[test]
    fn very_deep_filters_do_not_overflow_the_stack() {
        let deep = "/".repeat(usize::from(u16::MAX));
        let plus = vec!["+"; 30_000].join("/");
        let mut tree = SubscriptionTree::new();
        tree.subscribe(1u32, &deep, sub(QoS::AtMostOnce, None));
        tree.subscribe(2, &format!("{deep}#"), sub(QoS::AtMostOnce, None));
        tree.subscribe(3, &plus, sub(QoS::AtMostOnce, None));
        assert_eq!(matches(&tree, &deep).len(), 2);
        assert_eq!(matches(&tree, &vec!["x"; 30_000].join("/")).len(), 1);
        assert!(tree.unsubscribe(&1, &deep).is_some());
        assert_eq!(matches(&tree, &deep).len(), 1);
        assert!(tree.unsubscribe(&2, &format!("{deep}#")).is_some());
        assert_eq!(tree.len(), 1);
        drop(tree);
    }

    #[derive(Debug, Clone)]
    struct Op {
        subscribe: bool,
        client: u32,
        group: Option<&'static str>,
        filter: String,
        identifier: u32,
    }

    fn op() -> impl Strategy<Value = Op> {
        (
            prop::bool::weighted(0.7),
            0u32..4,
            prop::sample::select(vec![None, Some("g"), Some("h")]),
            filter(),
            any::<u32>(),
        )
            .prop_map(|(subscribe, client, group, filter, identifier)| Op {
                subscribe,
                client,
                group,
                filter,
                identifier,
            })
    }

    fn full(group: Option<&str>, filter: &str) -> String {
        match group {
            Some(g) => format!("$share/{g}/{filter}"),
            None => filter.to_owned(),
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_oracle(ops in prop::collection::vec(op(), 0..60),
                                  topics in prop::collection::vec(topic(), 1..10)) {
            let mut tree = SubscriptionTree::new();
            // (client, group, filter, subscription) in subscription order.
            let mut model: Vec<(u32, Option<&str>, String, Subscription)> = Vec::new();
            for op in &ops {
                let key = |e: &&mut (u32, Option<&str>, String, Subscription)| {
                    e.0 == op.client && e.1 == op.group && e.2 == op.filter
                };
                let full = full(op.group, &op.filter);
                if op.subscribe {
                    let s = sub(QoS::AtMostOnce, Some(op.identifier));
                    let expected = match model.iter_mut().find(key) {
                        Some(e) => Some(mem::replace(&mut e.3, s.clone())),
                        None => {
                            model.push((op.client, op.group, op.filter.clone(), s.clone()));
                            None
                        }
                    };
                    prop_assert_eq!(tree.subscribe(op.client, &full, s), expected);
                } else {
                    let expected = model
                        .iter()
                        .position(|e| e.0 == op.client && e.1 == op.group && e.2 == op.filter)
                        .map(|i| model.remove(i).3);
                    prop_assert_eq!(tree.unsubscribe(&op.client, &full), expected);
                }
                prop_assert_eq!(tree.len(), model.len());
            }
            for topic in &topics {
                let mut got = Vec::new();
                tree.for_each_match(topic, |m| match m {
                    Match::Direct { client, filter, subscription } => {
                        got.push((*client, None, filter.to_owned(), subscription.clone()));
                    }
                    Match::Shared { group, filter, members } => {
                        assert!(!members.is_empty());
                        for (client, subscription) in members {
                            got.push((*client, Some(group), filter.to_owned(), subscription.clone()));
                        }
                    }
                });
                let mut expected: Vec<_> = model
                    .iter()
                    .filter(|e| filter_matches(&e.2, topic))
                    .map(|e| (e.0, e.1, e.2.clone(), e.3.clone()))
                    .collect();
                // Group members come in subscription order: compare those before sorting.
                for group in ["g", "h"] {
                    let mut filters: Vec<&String> = expected.iter().filter(|e| e.1 == Some(group)).map(|e| &e.2).collect();
                    filters.sort();
                    filters.dedup();
                    for f in filters {
                        let order = |v: &Vec<(u32, Option<&str>, String, Subscription)>| -> Vec<u32> {
                            v.iter().filter(|e| e.1 == Some(group) && &e.2 == f).map(|e| e.0).collect()
                        };
                        prop_assert_eq!(order(&got), order(&expected));
                    }
                }
                got.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
                expected.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
                prop_assert_eq!(got, expected, "topic {}", topic);
            }
            for (client, group, filter, s) in model.drain(..) {
                prop_assert_eq!(tree.unsubscribe(&client, &full(group, &filter)), Some(s));
            }
            prop_assert!(tree.is_empty());
            prop_assert_eq!(tree.node_count(), 0);
        }
    }
}
