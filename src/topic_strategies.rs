//! Proptest strategies for topic names and filters, shared by the tests of the two tries
//! (`router::retained`, `router::subscriptions`) that are checked against `filter_matches`.
//!
//! Few distinct levels (including the empty level and a `$` level) so that generated topics
//! and filters collide often, which is where the tries' edge cases are.

use proptest::prelude::*;
use tern_codec::topic::{validate_topic_filter, validate_topic_name};

const LEVELS: [&str; 5] = ["", "$sys", "a", "b", "+"];

/// A valid topic filter: up to 3 levels (possibly `+`), often ending in `#`.
pub(crate) fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(&LEVELS[..]), 0..4),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("valid filter", |f| validate_topic_filter(f).is_ok())
}

/// A valid topic name of 1 to 4 levels, without wildcards.
pub(crate) fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&LEVELS[..4]), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("valid topic", |t| validate_topic_name(t).is_ok())
}
