//! `tern-client` against the real broker: what the library reports for recalls, group
//! receipts, presence and refused requests, and an app restarted on its cursor file
//! resuming where it was (the weak-network test covers sending, ordering and sync).

use std::time::Duration;

use tern_client::{Client, Config, Conversation, Event, SendState};
use tern_conformance::{group_op, Broker};

fn config(broker: &Broker, user: &str, device: &str) -> Config {
    let mut config = Config::new("127.0.0.1", broker.port(), user, "", device);
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config
}

/// The next event `pick` accepts, within the harness's timeout.
async fn until<T>(
    events: &mut tern_client::Events,
    what: &str,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    tokio::time::timeout(tern_conformance::EVENT_TIMEOUT, async {
        loop {
            let event = events.next().await.expect("the client runs");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within the timeout"))
}

async fn seeded_broker() -> Broker {
    let team = group_op("team", &["alice", "bob", "carol"]);
    Broker::start_seeded(&[team], |c| {
        c.im.presence = true;
        c.im.presence_offline_delay_ms = 200;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recalls_group_receipts_presence_and_refusals_arrive_as_typed_events() {
    let broker = seeded_broker().await;
    let (alice, mut alice_events) = Client::connect(config(&broker, "alice", "a1")).expect("alice");
    let (bob, mut bob_events) = Client::connect(config(&broker, "bob", "b1")).expect("bob");
    for events in [&mut alice_events, &mut bob_events] {
        until(events, "a sync", |e| {
            matches!(e, Event::Synced { .. }).then_some(())
        })
        .await;
    }
    bob.watch_presence("carol").await.expect("watch");
    let (carol, mut carol_events) = Client::connect(config(&broker, "carol", "c1")).expect("carol");
    until(&mut carol_events, "carol's sync", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;
    until(&mut bob_events, "carol online", |e| match e {
        Event::Presence {
            user,
            online: true,
            since,
            ..
        } if user == "carol" => since,
        _ => None,
    })
    .await;

    // A group message, read by bob: alice asks who read it.
    alice.send_group("team", "standup?").await.expect("send");
    let (seq, id) = until(&mut bob_events, "the group message", |e| match e {
        Event::Message {
            seq,
            id,
            conversation: Conversation::Group { gid },
            ..
        } if gid == "team" => Some((seq, id)),
        _ => None,
    })
    .await;
    bob.read_group("team", seq).await.expect("read");
    // The read is acknowledged before alice asks: bob's own notice comes after the mark.
    until(&mut bob_events, "bob's read position", |e| match e {
        Event::ReadPosition { seq: s, .. } if s == seq => Some(()),
        _ => None,
    })
    .await;
    alice.group_receipts("team", id).await.expect("ask");
    let (read, unread) = until(&mut alice_events, "the group receipts", |e| match e {
        Event::GroupReceipts {
            gid,
            id: i,
            read,
            unread,
        } if gid == "team" && i == id => Some((read, unread)),
        _ => None,
    })
    .await;
    assert_eq!(
        (read, unread),
        (vec!["bob".to_string()], vec!["carol".to_string()])
    );

    // Alice recalls it: bob's device hears the recall, numbered after the message.
    alice.recall(id).await.expect("recall");
    let recalled = until(&mut bob_events, "the recall", |e| match e {
        Event::Recalled {
            seq: s,
            id_recalled,
            from,
            ..
        } => Some((s, id_recalled, from)),
        _ => None,
    })
    .await;
    assert_eq!(recalled, (seq + 1, id, "alice".to_string()));
    // Bob may not recall alice's message: refused, and told so.
    bob.recall(id).await.expect("request");
    until(&mut bob_events, "the refusal", |e| match e {
        Event::RequestFailed { reason, .. } => Some(reason),
        _ => None,
    })
    .await;

    // Carol leaves: offline after the delay, with a last-seen time.
    carol.disconnect().await.expect("disconnect");
    let last_seen = until(&mut bob_events, "carol offline", |e| match e {
        Event::Presence {
            user,
            online: false,
            last_seen,
            ..
        } if user == "carol" => last_seen,
        _ => None,
    })
    .await;
    assert!(last_seen > 0);
    drop((alice, bob));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_app_resumes_from_its_cursor_file() {
    let broker = seeded_broker().await;
    let files = tempfile::tempdir().expect("temp dir");
    let cursor = files.path().join("bob.cursor");
    let (alice, mut alice_events) = Client::connect(config(&broker, "alice", "a1")).expect("alice");
    let bob_config = || {
        let mut c = config(&broker, "bob", "b1").cursor_file(&cursor);
        c.cursor_interval = Duration::from_millis(50);
        c
    };
    let (bob, mut bob_events) = Client::connect(bob_config()).expect("bob");
    until(&mut bob_events, "a sync", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;
    for i in 0..3 {
        alice
            .send_dm("bob", format!("before {i}"))
            .await
            .expect("send");
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let text = until(&mut bob_events, "a DM", |e| match e {
            Event::Message {
                payload,
                outgoing: false,
                ..
            } => Some(String::from_utf8_lossy(&payload).into_owned()),
            _ => None,
        })
        .await;
        seen.push(text);
    }
    assert_eq!(seen, ["before 0", "before 1", "before 2"]);
    // The app stops (its session ends with it: the DMs sent meanwhile are in bob's log only).
    bob.disconnect().await.expect("disconnect");
    drop((bob, bob_events));
    for i in 0..2 {
        alice
            .send_dm("bob", format!("while away {i}"))
            .await
            .expect("send");
    }
    // Every DM of alice's so far is stored: the 3 before, then these 2 (her events were
    // not read yet, so the first 3 Sent come first).
    for _ in 0..5 {
        until(&mut alice_events, "sent", |e| {
            matches!(
                e,
                Event::SendState {
                    state: SendState::Sent,
                    ..
                }
            )
            .then_some(())
        })
        .await;
    }

    // Restarted on the same cursor file: only what it has not handled comes.
    let mut config = bob_config();
    config.device_id = "b2".into();
    config.persistent_session = false;
    let (_bob, mut bob_events) = Client::connect(config).expect("bob again");
    let mut seen = Vec::new();
    loop {
        match until(&mut bob_events, "the rest", Some).await {
            Event::Message {
                payload,
                outgoing: false,
                ..
            } => seen.push(String::from_utf8_lossy(&payload).into_owned()),
            Event::Synced { .. } if seen.len() >= 2 => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["while away 0", "while away 1"]);
    broker.stop().await;
}
