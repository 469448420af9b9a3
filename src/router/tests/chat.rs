//! Direct and group messages: inboxes, numbering, the inbox rule, duplicates, retention.

use std::sync::Arc;

use arcstr::ArcStr;
use tern_codec::{QoS, ReasonCode};
use tern_storage::{MemoryStore, Store};

use super::{limits, message, start, start_with, Harness};
use crate::im::directory::GroupChange;
use crate::router::mailbox::Mailbox;
use crate::router::Routed;

/// A chat message from `from` on `topic`, its writes awaited.
async fn chat(h: &Harness, from: &str, topic: &str, msgid: Option<&str>) -> Routed {
    let mut message = (*message(topic, QoS::AtLeastOnce, false, b"hello")).clone();
    if let Some(id) = msgid {
        message
            .properties
            .user_properties
            .push(("msgid".into(), id.into()));
    }
    // A claimed sender is replaced by the authenticated one.
    message
        .properties
        .user_properties
        .push(("from".into(), "mallory".into()));
    let (routed, durable) = h
        .router
        .chat(&ArcStr::from(from), message, None, true)
        .await
        .expect("router");
    durable.await.expect("durable");
    routed
}

fn inbox(mailbox: &mut Mailbox) -> Vec<(String, String, String)> {
    std::iter::from_fn(|| mailbox.pop_chat())
        .map(|d| {
            let prop = |k: &str| {
                crate::im::inbox::user_property(&d.message, k)
                    .unwrap_or_default()
                    .to_string()
            };
            (d.message.topic.to_string(), prop("from"), prop("seq"))
        })
        .collect()
}

fn row(topic: &str, from: &str, seq: &str) -> (String, String, String) {
    (topic.to_string(), from.to_string(), seq.to_string())
}

#[tokio::test]
async fn a_direct_message_reaches_every_device_of_both_users_and_nobody_else() {
    let h = start();
    let mut bob_phone = h.connect("bob", "bob-phone", true, 0).await;
    let mut bob_laptop = h.connect("bob", "bob-laptop", true, 0).await;
    let _alice_phone = h.connect("alice", "alice-phone", true, 0).await;
    let mut alice_laptop = h.connect("alice", "alice-laptop", true, 0).await;
    let mut carol = h.connect("carol", "carol", true, 0).await;
    for c in [&bob_phone, &bob_laptop] {
        h.subscribe(c, "inbox/bob/#", QoS::AtLeastOnce).await;
    }
    h.subscribe(&alice_laptop, "inbox/alice/#", QoS::AtLeastOnce)
        .await;
    h.subscribe(&carol, "#", QoS::AtLeastOnce).await;

    let routed = chat(&h, "alice", "dm/bob", None).await;
    assert_eq!(routed.refused, None);
    chat(&h, "alice", "dm/bob", None).await;

    let expected = vec![
        row("inbox/bob/dm/alice", "alice", "0"),
        row("inbox/bob/dm/alice", "alice", "1"),
    ];
    assert_eq!(inbox(&mut bob_phone.mailbox), expected);
    assert_eq!(inbox(&mut bob_laptop.mailbox), expected);
    assert_eq!(
        inbox(&mut alice_laptop.mailbox),
        vec![
            row("inbox/alice/sent/bob", "alice", "0"),
            row("inbox/alice/sent/bob", "alice", "1")
        ]
    );
    assert!(
        inbox(&mut carol.mailbox).is_empty(),
        "'#' must not reach into other users' inboxes"
    );
    // Stored once, indexed twice per message.
    let log = h.store.inbox("bob", 0, 10).expect("inbox");
    assert_eq!(
        log.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>(),
        [0, 1]
    );
    assert!(log.iter().all(|(_, _, m)| m.is_some()));
    assert_eq!(h.store.inbox_bounds("alice").expect("bounds"), (0, 2));
}

#[tokio::test]
async fn group_messages_reach_offline_members_by_reference_and_refuse_outsiders() {
    let h = start();
    let change = GroupChange::Create {
        gid: "g1".into(),
        members: vec!["alice".into(), "bob".into()],
    };
    let durable = h
        .router
        .change_group(change)
        .await
        .expect("router")
        .expect("created");
    durable.await.expect("durable");
    // bob's persistent session is offline.
    let bob = h.connect("bob", "bob-phone", false, 3600).await;
    h.subscribe(&bob, "inbox/bob/#", QoS::AtLeastOnce).await;
    h.detach(bob).await;

    let outsider = chat(&h, "mallory", "group/g1", None).await;
    assert_eq!(outsider.refused, Some(ReasonCode::NotAuthorized));
    let unknown = chat(&h, "alice", "group/nope", None).await;
    assert_eq!(unknown.refused, Some(ReasonCode::NotAuthorized));
    let routed = chat(&h, "alice", "group/g1", None).await;
    assert_eq!(routed.refused, None);

    let queued = h.store.queue("bob-phone", 0, 10).expect("queue");
    assert_eq!(queued.len(), 1);
    let (_, entry) = &queued[0];
    assert_eq!(entry.message.topic, "inbox/bob/group/g1/alice");
    assert_eq!(
        &entry.message.payload[..],
        b"hello",
        "payload resolved by reference"
    );
    assert_eq!(entry.message_ref, None);
    assert_eq!(h.store.inbox_bounds("alice").expect("bounds"), (0, 1));
    assert_eq!(h.store.inbox_bounds("mallory").expect("bounds"), (0, 0));
}

#[tokio::test]
async fn a_resent_msgid_is_acknowledged_and_dropped() {
    let h = start();
    let mut bob = h.connect("bob", "bob", true, 0).await;
    h.subscribe(&bob, "inbox/bob/#", QoS::AtLeastOnce).await;
    for _ in 0..2 {
        let routed = chat(&h, "alice", "dm/bob", Some("m-1")).await;
        assert_eq!(routed.refused, None);
        assert!(routed.matched);
    }
    chat(&h, "carol", "dm/bob", Some("m-1")).await;
    assert_eq!(
        inbox(&mut bob.mailbox),
        vec![
            row("inbox/bob/dm/alice", "alice", "0"),
            row("inbox/bob/dm/carol", "carol", "1")
        ]
    );
}

#[tokio::test]
async fn inbox_logs_are_trimmed_to_the_configured_count() {
    let mut limits = limits();
    limits.im.inbox_max_messages = 10;
    let h = start_with(limits, Arc::new(MemoryStore::new()));
    for _ in 0..=crate::router::chat::TRIM_EVERY {
        chat(&h, "alice", "dm/bob", None).await;
    }
    // The 65th append (seq 64) trimmed everything below 64 + 1 - 10.
    assert_eq!(h.store.inbox_bounds("bob").expect("bounds"), (55, 65));
    let kept = h.store.inbox("bob", 0, 100).expect("inbox");
    assert_eq!(kept.len(), 10);
}
