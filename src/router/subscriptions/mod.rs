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

use std::cell::Cell;
use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::hash::Hash;
use std::mem;

use tern_codec::topic::split_shared;
use tern_codec::SubscriptionOptions;

use crate::im::topics::PRESENCE;

/// One client's subscription to one filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub options: SubscriptionOptions,
    /// The MQTT 5 subscription identifier, sent back with every matching PUBLISH.
    pub identifier: Option<u32>,
}

/// One subscription (or shared group) whose filter matches a topic name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Match<'a, K> {
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
        members: &'a SharedGroup<K>,
    },
}

/// The members of one shared subscription group (`$share/{group}/{filter}`), in the order
/// they subscribed (a resubscription keeps its place), and where the round robin among
/// them stands: kept with the group, so that picking a member costs no lookup.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SharedGroup<K> {
    members: Vec<(K, Subscription)>,
    /// The member to try first for the next message.
    cursor: Cell<usize>,
}

impl<K> SharedGroup<K> {
    /// Never empty while the group is in the tree.
    pub(crate) fn members(&self) -> &[(K, Subscription)] {
        &self.members
    }

    pub(crate) fn cursor(&self) -> usize {
        self.cursor.get()
    }

    /// The next message starts its search at member `index`.
    pub(crate) fn advance_to(&self, index: usize) {
        self.cursor.set(index);
    }
}

impl<K> Default for SharedGroup<K> {
    fn default() -> Self {
        SharedGroup {
            members: Vec::new(),
            cursor: Cell::new(0),
        }
    }
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
pub(crate) struct SubscriptionTree<K> {
    root: Node<K>,
    len: usize,
    /// With [`track_interest`](SubscriptionTree::track_interest): the filters that gained
    /// their first subscription (`true`) or lost their last (`false`), in order, until
    /// taken. A shared group counts apart from its filter's direct subscriptions: its
    /// key is the whole `$share/{group}/{filter}`.
    interest: Option<Vec<InterestChange>>,
}

/// A filter that some subscription now holds, or that none holds any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterestChange {
    pub filter: Box<str>,
    pub held: bool,
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
    shared: HashMap<Box<str>, SharedGroup<K>>,
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
    #[cfg(test)]
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

    /// Whether some direct subscription (`None`) or a member of `group` holds the filter.
    fn holds(&self, group: Option<&str>) -> bool {
        match group {
            None => !self.direct.is_empty(),
            Some(group) => self.shared.contains_key(group),
        }
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
        let members = &mut self.shared.entry(Box::from(group)).or_default().members;
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
        let shared = self.shared.get_mut(group)?;
        let index = shared.members.iter().position(|(k, _)| k == client)?;
        let (_, removed) = shared.members.remove(index);
        if shared.members.is_empty() {
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
            interest: None,
        }
    }
}

impl<K: Clone + Eq + Hash> SubscriptionTree<K> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the subscription of `client` to `filter`, the full filter as the client
    /// sent it, possibly `$share/{group}/{filter}`. Returns the previous subscription if this
    /// (client, full filter) existed (it is replaced; in a shared group the member keeps its
    /// place).
    pub(crate) fn subscribe(
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
        if !subs.holds(group) {
            if let Some(changes) = &mut self.interest {
                changes.push(InterestChange {
                    filter: filter.into(),
                    held: true,
                });
            }
        }
        let previous = subs.insert(group, client, subscription);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the subscription of `client` to `filter` (the full filter, as for
    /// [`subscribe`](Self::subscribe)). Returns it, or `None` if the client had no such filter.
    /// Nodes left empty are pruned.
    pub(crate) fn unsubscribe(&mut self, client: &K, filter: &str) -> Option<Subscription> {
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
        if !subs.holds(group) {
            if let Some(changes) = &mut self.interest {
                changes.push(InterestChange {
                    filter: filter.into(),
                    held: false,
                });
            }
        }
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
    #[cfg(test)]
    pub(crate) fn get(&self, client: &K, filter: &str) -> Option<&Subscription> {
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
                .members
                .iter()
                .find(|(k, _)| k == client)
                .map(|(_, sub)| sub),
        }
    }

    /// Calls `visit` for every subscription (or shared group) whose filter matches `topic`, a
    /// topic name without wildcards. The order of the calls is unspecified. The cost is
    /// proportional to the trie nodes on matching paths plus the matches, not to the total
    /// number of subscriptions.
    pub(crate) fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(Match<'a, K>)) {
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
            // Wildcards at the first level do not match topics starting with `$` [MQTT-4.7.2-1],
            // nor presence topics: who may see a user's presence is decided when a filter
            // naming `presence/` is subscribed, so `#` must not reach them.
            let wildcards = !(root && (level.starts_with('$') || level == PRESENCE));
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

    /// From now on, records which filters gain their first or lose their last
    /// subscription (a cluster node subscribes to what its clients want from others).
    pub(crate) fn track_interest(&mut self) {
        self.interest.get_or_insert_with(Vec::new);
    }

    /// The interest changes since the last call, in order.
    pub(crate) fn take_interest_changes(&mut self) -> Vec<InterestChange> {
        self.interest
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The number of (client, full filter) subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
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
mod tests;
