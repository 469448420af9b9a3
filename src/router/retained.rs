//! Retained messages by topic name (spec 3.3.1.3), found by topic filter on SUBSCRIBE.
//!
//! A trie of topic levels (empty levels included), each node holding its literal children in a
//! hash map and, when a value is retained on it, the full topic name with the value. Matching a
//! filter walks the trie guided by the filter: a literal level is one hash lookup, `+` iterates
//! the children of one node and `#` walks one subtree. The cost is proportional to the matches
//! plus the nodes on the way, never a scan of every retained topic; since empty nodes are pruned
//! on [`RetainedTree::remove`], every leaf holds a value.
//!
//! Topic names and filters are expected to be valid (see [`tern_codec::topic`]); invalid input
//! never panics but its matching is unspecified. A filter given to
//! [`RetainedTree::for_each_match`] is never shared: the broker strips `$share/{group}/` (and
//! sends no retained messages for shared subscriptions, spec 4.8.2). Every walk is iterative: a
//! topic of tens of thousands of levels cannot overflow the stack.

use std::collections::HashMap;

use crate::im::topics::PRESENCE;

/// The retained values of topic names, indexed for matching topic filters.
#[derive(Debug)]
pub(super) struct RetainedTree<V> {
    root: Node<V>,
    len: usize,
}

/// One level of the trie. The root stands for "no level consumed yet" and never holds a value.
#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    /// The full topic name of this node, with its retained value.
    value: Option<(Box<str>, V)>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<V> Drop for Node<V> {
    /// Dropping a deep trie does not recurse.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node<V>> = self.children.drain().map(|(_, node)| node).collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, node)| node));
        }
    }
}

impl<V> Node<V> {
    fn visit<'a>(&'a self, visit: &mut impl FnMut(&'a str, &'a V)) {
        if let Some((topic, value)) = &self.value {
            visit(topic, value);
        }
    }
}

impl<V> Default for RetainedTree<V> {
    fn default() -> Self {
        RetainedTree {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> RetainedTree<V> {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces the retained value of a topic name. Returns the previous value.
    pub(super) fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        match &mut node.value {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            slot @ None => {
                *slot = Some((Box::from(topic), value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes the retained value of a topic name and returns it. Nodes left empty are pruned.
    pub(super) fn remove(&mut self, topic: &str) -> Option<V> {
        // Depth of the first node of the tail of the path that is empty once the value is
        // gone: cutting the edge to it prunes the whole tail.
        let mut cut: Option<usize> = None;
        let mut depth = 0;
        let mut node = &mut self.root;
        for level in topic.split('/') {
            if depth > 0 {
                // An intermediate node: its one child, if it has only one, is on the path.
                if node.children.len() == 1 && node.value.is_none() {
                    cut.get_or_insert(depth);
                } else {
                    cut = None;
                }
            }
            node = node.children.get_mut(level)?;
            depth += 1;
        }
        let (_, removed) = node.value.take()?;
        self.len -= 1;
        if !node.children.is_empty() {
            return Some(removed);
        }
        let cut = cut.unwrap_or(depth);
        // Walk again to the parent of the first empty node and cut it off.
        let mut levels = topic.split('/');
        let mut node = &mut self.root;
        for level in levels.by_ref().take(cut - 1) {
            match node.children.get_mut(level) {
                Some(child) => node = child,
                None => return Some(removed),
            }
        }
        if let Some(level) = levels.next() {
            node.children.remove(level);
        }
        Some(removed)
    }

    /// The retained value of a topic name.
    pub(super) fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref().map(|(_, value)| value)
    }

    /// Calls `visit(topic, value)` for every retained topic name matched by `filter`, which may
    /// contain `+` and `#` but is never shared. The order of the calls is unspecified. Topic
    /// names starting with `$` or `presence/` are not matched by a first level `+` or `#`.
    pub(super) fn for_each_match<'a>(
        &'a self,
        filter: &str,
        mut visit: impl FnMut(&'a str, &'a V),
    ) {
        // (node, the rest of the filter after the levels the node stands for, at the root?)
        // `None` as the rest: every level is consumed.
        let mut stack: Vec<(&'a Node<V>, Option<&str>, bool)> =
            vec![(&self.root, Some(filter), true)];
        // Nodes whose whole subtree matches (below a `#`).
        let mut subtree: Vec<&'a Node<V>> = Vec::new();
        while let Some((node, rest, root)) = stack.pop() {
            let Some(rest) = rest else {
                node.visit(&mut visit);
                continue;
            };
            let (level, next) = match rest.split_once('/') {
                Some((level, next)) => (level, Some(next)),
                None => (rest, None),
            };
            // Wildcards at the first level do not match topics starting with `$`, nor
            // presence topics (see `SubscriptionTree::for_each_match`).
            let children = node
                .children
                .iter()
                .filter(|(key, _)| !(root && (key.starts_with('$') || &***key == PRESENCE)))
                .map(|(_, child)| child);
            match level {
                "#" => {
                    // `a/#` matches `a` itself, then everything below.
                    node.visit(&mut visit);
                    subtree.extend(children);
                    while let Some(node) = subtree.pop() {
                        node.visit(&mut visit);
                        subtree.extend(node.children.values());
                    }
                }
                "+" => stack.extend(children.map(|child| (child, next, false))),
                literal => {
                    if let Some(child) = node.children.get(literal) {
                        stack.push((child, next, false));
                    }
                }
            }
        }
    }

    /// The number of retained topic names.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Trie nodes below the root: zero once every value is removed.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += node.children.len();
            stack.extend(node.children.values());
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic_strategies::{filter, topic};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use tern_codec::topic::filter_matches;

    fn tree_of(topics: &[&str]) -> RetainedTree<usize> {
        let mut tree = RetainedTree::new();
        for (i, topic) in topics.iter().enumerate() {
            assert_eq!(tree.insert(topic, i), None);
        }
        assert_eq!(tree.len(), topics.len());
        tree
    }

    fn matching<'a>(tree: &'a RetainedTree<usize>, filter: &str) -> Vec<&'a str> {
        let mut out = Vec::new();
        tree.for_each_match(filter, |topic, value| {
            assert_eq!(tree.get(topic), Some(value));
            out.push(topic);
        });
        out.sort_unstable();
        out
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut tree = RetainedTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.insert("a/b", 1), None);
        assert_eq!(tree.insert("a/b", 2), Some(1));
        assert_eq!(tree.len(), 1);
        assert_eq!(tree.get("a/b"), Some(&2));
        assert_eq!(tree.get("a"), None);
        assert_eq!(tree.get("a/b/c"), None);
        assert_eq!(tree.insert("a", 3), None);
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.remove("a/b/c"), None);
        assert_eq!(tree.remove("x"), None);
        assert_eq!(tree.remove("a/b"), Some(2));
        assert_eq!(tree.remove("a/b"), None);
        assert_eq!(tree.get("a"), Some(&3));
        assert_eq!(tree.node_count(), 1);
        assert_eq!(tree.remove("a"), Some(3));
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 0);
    }

    #[test]
    fn wildcards() {
        let tree = tree_of(&["a", "a/b", "a/c", "a/b/c", "b/b", "x"]);
        assert_eq!(matching(&tree, "a/b"), ["a/b"]);
        assert_eq!(matching(&tree, "a/+"), ["a/b", "a/c"]);
        assert_eq!(matching(&tree, "+/b"), ["a/b", "b/b"]);
        assert_eq!(matching(&tree, "+"), ["a", "x"]);
        assert_eq!(matching(&tree, "a/#"), ["a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(matching(&tree, "a/b/#"), ["a/b", "a/b/c"]);
        assert_eq!(matching(&tree, "a/+/#"), ["a/b", "a/b/c", "a/c"]);
        assert_eq!(matching(&tree, "+/+/+"), ["a/b/c"]);
        assert_eq!(
            matching(&tree, "#"),
            ["a", "a/b", "a/b/c", "a/c", "b/b", "x"]
        );
        assert!(matching(&tree, "a/b/c/d").is_empty());
        assert!(matching(&tree, "q/#").is_empty());
    }

    #[test]
    fn hash_matches_the_parent_level_only_if_retained() {
        let tree = tree_of(&["sport/tennis/player1", "sport/tennis/player1/ranking"]);
        assert_eq!(
            matching(&tree, "sport/tennis/#"),
            ["sport/tennis/player1", "sport/tennis/player1/ranking"]
        );
        assert_eq!(
            matching(&tree, "sport/tennis/player1/#"),
            ["sport/tennis/player1", "sport/tennis/player1/ranking"]
        );
        assert_eq!(
            matching(&tree, "sport/tennis/player1/ranking/#"),
            ["sport/tennis/player1/ranking"]
        );
    }

    #[test]
    fn empty_levels() {
        let tree = tree_of(&["/x", "x", "/", "//", "a//b", "sport/", "sport"]);
        assert_eq!(matching(&tree, "+/+"), ["/", "/x", "sport/"]);
        assert_eq!(matching(&tree, "/+"), ["/", "/x"]);
        assert_eq!(matching(&tree, "+"), ["sport", "x"]);
        assert_eq!(matching(&tree, "a/+/b"), ["a//b"]);
        assert_eq!(matching(&tree, "/#"), ["/", "//", "/x"]);
        assert_eq!(matching(&tree, "+/"), ["/", "sport/"]);
        assert_eq!(matching(&tree, "sport/+"), ["sport/"]);
        assert_eq!(matching(&tree, "sport/#"), ["sport", "sport/"]);
        assert_eq!(tree.get("/"), Some(&2));
        assert_eq!(tree.get(""), None);
    }

    #[test]
    fn dollar_topics() {
        let tree = tree_of(&["$SYS/uptime", "$SYS", "a/$x", "a"]);
        assert_eq!(matching(&tree, "#"), ["a", "a/$x"]);
        assert_eq!(matching(&tree, "+"), ["a"]);
        assert!(matching(&tree, "+/uptime").is_empty());
        assert_eq!(matching(&tree, "$SYS/#"), ["$SYS", "$SYS/uptime"]);
        assert_eq!(matching(&tree, "$SYS/+"), ["$SYS/uptime"]);
        assert_eq!(matching(&tree, "$SYS"), ["$SYS"]);
        assert_eq!(matching(&tree, "a/+"), ["a/$x"]);
        assert_eq!(matching(&tree, "a/#"), ["a", "a/$x"]);
    }

    #[test]
    fn pruning() {
        let topics = ["a/b/c/d", "a/b", "a", "/", "//", "x/y/z", "a/b/c/e"];
        let mut tree = tree_of(&topics);
        let full = tree.node_count();
        assert_eq!(tree.remove("a/b/c/d"), Some(0));
        assert_eq!(tree.node_count(), full - 1);
        assert_eq!(tree.remove("a/b/c/e"), Some(6));
        assert_eq!(tree.node_count(), full - 3);
        assert_eq!(tree.remove("x/y/z"), Some(5));
        assert_eq!(tree.node_count(), full - 6);
        for topic in topics {
            tree.remove(topic);
        }
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 0);
        assert!(matching(&tree, "#").is_empty());
    }

    #[test]
    fn very_deep_topics_do_not_overflow_the_stack() {
        let deep = "/".repeat(usize::from(u16::MAX));
        let mut tree = RetainedTree::new();
        tree.insert(&deep, 1);
        tree.insert(&deep[1..], 2);
        assert_eq!(matching(&tree, "#").len(), 2);
        assert_eq!(matching(&tree, &format!("{}#", &deep[2..])).len(), 2);
        assert_eq!(matching(&tree, &deep), [deep.as_str()]);
        assert_eq!(tree.remove(&deep), Some(1));
        assert_eq!(tree.get(&deep[1..]), Some(&2));
        tree.insert(&deep, 1);
        drop(tree);
    }

    proptest! {
        #[test]
        fn agrees_with_the_oracle(ops in prop::collection::vec((any::<bool>(), topic(), any::<u32>()), 0..60),
                                  filters in prop::collection::vec(filter(), 1..10)) {
            let mut tree = RetainedTree::new();
            let mut model = BTreeMap::new();
            for (insert, topic, value) in ops {
                if insert {
                    prop_assert_eq!(tree.insert(&topic, value), model.insert(topic, value));
                } else {
                    prop_assert_eq!(tree.remove(&topic), model.remove(&topic));
                }
                prop_assert_eq!(tree.len(), model.len());
            }
            for (topic, value) in &model {
                prop_assert_eq!(tree.get(topic), Some(value));
            }
            for filter in &filters {
                let mut got = Vec::new();
                tree.for_each_match(filter, |topic, value| got.push((topic, *value)));
                got.sort_unstable();
                let expected: Vec<_> = model
                    .iter()
                    .filter(|(topic, _)| filter_matches(filter, topic))
                    .map(|(topic, value)| (topic.as_str(), *value))
                    .collect();
                prop_assert_eq!(got, expected, "filter {}", filter);
            }
            for (topic, value) in std::mem::take(&mut model) {
                prop_assert_eq!(tree.remove(&topic), Some(value));
            }
            prop_assert!(tree.is_empty());
            prop_assert_eq!(tree.node_count(), 0);
        }
    }
}
