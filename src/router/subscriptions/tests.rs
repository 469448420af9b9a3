//! Matching against a model of every subscription, and the trie's own bookkeeping.

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
            let ids: Vec<_> = members.members().iter().map(|(k, _)| *k).collect();
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
            seen.extend_from_slice(members.members());
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
                    assert!(!members.members().is_empty());
                    for (client, subscription) in members.members() {
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
