//! Read positions, receipts, recall and presence (docs/chat.md) over real sockets, with
//! rumqttc's MQTT 5 client as the devices.

use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
use serde_json::json;
use tern::config::{Config, PresenceVisibility};
use tern_conformance::device::{Device, Received};
use tern_conformance::{group_op, Broker};
use tern_storage::Op;

/// A broker with presence on (the test configuration turns it off) whose data directory
/// holds `ops` before it starts.
async fn seeded(ops: &[Op], adjust: impl FnOnce(&mut Config)) -> Broker {
    Broker::start_seeded(ops, |c| {
        c.im.presence = true;
        adjust(c);
    })
    .await
}

async fn inbox_device(broker: &Broker, user: &str, client_id: &str) -> Device {
    let mut device = Device::connect(broker.port(), user, client_id).await;
    let reason = device.subscribe(&format!("inbox/{user}/#")).await;
    assert!(
        matches!(reason, SubscribeReasonCode::Success(_)),
        "{reason:?}"
    );
    device
}

fn seq(message: &Received) -> u64 {
    message
        .property("seq")
        .expect("seq")
        .parse()
        .expect("a number")
}

fn id(message: &Received) -> String {
    message.property("id").expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_positions_reach_the_other_devices_the_peer_and_a_new_device_in_sync() {
    let broker = seeded(&[], |_| {}).await;
    let mut alice = inbox_device(&broker, "alice", "alice-phone").await;
    let mut phone = inbox_device(&broker, "bob", "bob-phone").await;
    let mut laptop = inbox_device(&broker, "bob", "bob-laptop").await;

    let mut got = Vec::new();
    for text in ["one", "two", "three"] {
        assert_eq!(alice.publish("dm/bob", text, &[]).await, "Success");
        got.push(phone.next_on("inbox/bob/dm/alice").await);
        laptop.next_on("inbox/bob/dm/alice").await;
    }
    // Every recipient's copy names the same stored message.
    let sent = alice.next_on("inbox/alice/sent/bob").await;
    assert_eq!(id(&sent), id(&got[0]));

    // The phone read up to "two": the laptop and alice hear of it.
    let two = seq(&got[1]);
    assert_eq!(
        phone.publish("$read/dm/alice", &two.to_string(), &[]).await,
        "Success"
    );
    let notice = laptop.next_on("inbox/bob/read/").await;
    assert_eq!(notice.topic, "inbox/bob/read/dm/alice");
    assert_eq!(notice.json(), json!({"seq": two, "id": id(&got[1])}));
    let receipt = alice.next_on("inbox/alice/receipt/").await;
    assert_eq!(receipt.topic, "inbox/alice/receipt/bob");
    assert_eq!(receipt.json(), json!({"id": id(&got[1])}));

    // A lower position moves nothing and tells nobody: the next thing alice hears is
    // bob's DM, routed after it.
    let one = seq(&got[0]);
    assert_eq!(
        laptop
            .publish("$read/dm/alice", &one.to_string(), &[])
            .await,
        "Success"
    );
    assert_eq!(laptop.publish("dm/alice", "ok", &[]).await, "Success");
    assert_eq!(
        alice.next_on("inbox/alice/").await.topic,
        "inbox/alice/dm/bob"
    );

    // Bad requests, each with its reason.
    assert_eq!(
        phone.publish("$read/dm/alice", "two", &[]).await,
        "PayloadFormatInvalid"
    );
    assert_eq!(
        phone.publish("$read/dm/alice", "999", &[]).await,
        "UnspecifiedError"
    );
    assert_eq!(
        phone.publish("$read/dm/carol", &two.to_string(), &[]).await,
        "NotAuthorized",
        "seq {two} is not a message of the DM with carol"
    );

    // Receipts off: bob's position is still kept and synced, alice no longer learns it.
    assert_eq!(
        phone
            .publish("$settings", r#"{"receipts":false}"#, &[])
            .await,
        "Success"
    );
    assert_eq!(
        phone.publish("$settings", r#"{"receipts":"x"}"#, &[]).await,
        "PayloadFormatInvalid"
    );
    let three = seq(&got[2]);
    assert_eq!(
        phone
            .publish("$read/dm/alice", &three.to_string(), &[])
            .await,
        "Success"
    );
    assert_eq!(
        laptop.next_on("inbox/bob/read/").await.json()["seq"],
        json!(three)
    );
    assert_eq!(phone.publish("dm/alice", "again", &[]).await, "Success");
    assert_eq!(
        alice.next_on("inbox/alice/").await.topic,
        "inbox/alice/dm/bob"
    );

    // Durable: after a restart, a new device learns both marks in its sync, before the
    // end marker.
    drop((alice, phone, laptop));
    let broker = broker.restart().await;
    let mut tablet = Device::connect(broker.port(), "bob", "bob-tablet").await;
    assert_eq!(tablet.publish("$sync", "", &[]).await, "Success");
    let mut marks = Vec::new();
    loop {
        let p = tablet.next().await;
        if p.topic == "inbox/bob/sync" {
            break;
        }
        if p.property("seq").is_none() {
            marks.push((p.topic.clone(), p.json()));
        }
    }
    assert_eq!(
        marks,
        [(
            "inbox/bob/read/dm/alice".to_string(),
            json!({"seq": three, "id": id(&got[2])})
        )]
    );
    let mut alice = Device::connect(broker.port(), "alice", "alice-tablet").await;
    assert_eq!(alice.publish("$sync", "", &[]).await, "Success");
    let receipt = alice.next_on("inbox/alice/receipt/bob").await;
    assert_eq!(
        receipt.json(),
        json!({"id": id(&got[1])}),
        "the receipt stopped at two"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_of_a_group_message_learns_who_read_it() {
    let broker = seeded(&[group_op("team", &["alice", "bob", "carol"])], |_| {}).await;
    let mut alice = inbox_device(&broker, "alice", "alice-1").await;
    let mut bob = inbox_device(&broker, "bob", "bob-1").await;
    assert_eq!(alice.publish("group/team", "lunch?", &[]).await, "Success");
    let copy = bob.next_on("inbox/bob/group/team/alice").await;
    let message = id(&copy);

    assert_eq!(
        alice.publish("$receipts/group/team", &message, &[]).await,
        "Success"
    );
    let answer = alice.next_on("inbox/alice/receipts/group/team").await;
    assert_eq!(
        answer.json(),
        json!({"id": message, "read": [], "unread": ["bob", "carol"]})
    );

    assert_eq!(
        bob.publish("$read/group/team", &seq(&copy).to_string(), &[])
            .await,
        "Success"
    );
    assert_eq!(
        alice.publish("$receipts/group/team", &message, &[]).await,
        "Success"
    );
    let answer = alice.next_on("inbox/alice/receipts/group/team").await;
    assert_eq!(
        answer.json(),
        json!({"id": message, "read": ["bob"], "unread": ["carol"]})
    );

    // Only the sender may ask; a message of another group or none at all is refused.
    assert_eq!(
        bob.publish("$receipts/group/team", &message, &[]).await,
        "NotAuthorized"
    );
    assert_eq!(
        bob.publish("$receipts/group/other", &message, &[]).await,
        "NotAuthorized"
    );
    assert_eq!(
        alice.publish("$receipts/group/team", "1", &[]).await,
        "UnspecifiedError"
    );

    let (status, body) = broker
        .api("GET", &format!("/v1/groups/team/reads/{message}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["read"], json!(["bob"]));
    assert_eq!(body["read_count"], json!(1));
    assert_eq!(body["members"], json!(2));
    let (status, body) = broker.api("GET", "/v1/groups/team/reads/x", None).await;
    assert_eq!(status, 400, "{body}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_empties_the_message_and_every_recipient_hears_of_it_live_and_in_sync() {
    let broker = seeded(&[], |_| {}).await;
    let mut alice = inbox_device(&broker, "alice", "alice-1").await;
    let mut bob = inbox_device(&broker, "bob", "bob-1").await;
    assert_eq!(
        alice
            .publish("dm/bob", "wrong chat", &[("msgid", "m1")])
            .await,
        "Success"
    );
    let original = bob.next_on("inbox/bob/dm/alice").await;
    let message = id(&original);

    assert_eq!(
        bob.publish("$recall", &message, &[]).await,
        "NotAuthorized",
        "not bob's"
    );
    assert_eq!(
        alice.publish("$recall", "many", &[]).await,
        "PayloadFormatInvalid"
    );
    assert_eq!(
        alice.publish("$recall", "12345", &[]).await,
        "UnspecifiedError"
    );
    assert_eq!(alice.publish("$recall", &message, &[]).await, "Success");
    let recall = bob.next_on("inbox/bob/recall/").await;
    assert_eq!(recall.topic, "inbox/bob/recall/dm/alice");
    assert_eq!(recall.text(), message);
    assert_eq!(recall.property("recall"), Some(message.as_str()));
    assert_eq!(recall.property("from"), Some("alice"));
    assert_eq!(seq(&recall), seq(&original) + 1, "numbered like a message");
    let own = alice.next_on("inbox/alice/recall/").await;
    assert_eq!(own.topic, "inbox/alice/recall/sent/bob");
    // Again: done already, nothing new in anyone's inbox.
    assert_eq!(alice.publish("$recall", &message, &[]).await, "Success");

    // A sync from before the message replays it without its payload, then the recall.
    let mut phone = Device::connect(broker.port(), "bob", "bob-2").await;
    let before = seq(&original)
        .checked_sub(1)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert_eq!(phone.publish("$sync", &before, &[]).await, "Success");
    let replayed = phone.next_on("inbox/bob/dm/alice").await;
    assert_eq!(seq(&replayed), seq(&original));
    assert!(replayed.payload.is_empty());
    assert_eq!(replayed.property("recalled"), Some("true"));
    let replayed_recall = phone.next_on("inbox/bob/").await;
    assert_eq!(replayed_recall.topic, "inbox/bob/recall/dm/alice");
    let end = phone.next_on("inbox/bob/sync").await;
    assert_eq!(end.json()["last"], json!(seq(&recall)));

    // A client cannot forge a recall: broker-only properties are replaced.
    assert_eq!(
        alice
            .publish("dm/bob", "x", &[("recall", &message), ("id", "1")])
            .await,
        "Success"
    );
    let plain = bob.next_on("inbox/bob/").await;
    assert_eq!(plain.topic, "inbox/bob/dm/alice");
    assert_eq!(plain.property("recall"), None);
    assert_ne!(plain.property("id"), Some("1"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_debounced_and_shown_to_contacts_only() {
    let broker = seeded(&[group_op("club", &["carol", "dave"])], |c| {
        c.im.presence_offline_delay_ms = 1_500;
    })
    .await;
    let mut carol = Device::connect(broker.port(), "carol", "carol-1").await;
    let mut erin = Device::connect(broker.port(), "erin", "erin-1").await;
    assert!(matches!(
        carol.subscribe("presence/dave").await,
        SubscribeReasonCode::Success(_)
    ));
    assert_eq!(
        erin.subscribe("presence/dave").await,
        SubscribeReasonCode::NotAuthorized
    );
    assert_eq!(
        erin.subscribe("presence/+").await,
        SubscribeReasonCode::NotAuthorized
    );
    assert!(matches!(
        erin.subscribe("#").await,
        SubscribeReasonCode::Success(_)
    ));
    assert_eq!(
        carol.publish("presence/dave", "{}", &[]).await,
        "NotAuthorized"
    );

    let dave = Device::connect(broker.port(), "dave", "dave-1").await;
    let online = carol.next_on("presence/dave").await;
    assert_eq!(online.json()["online"], json!(true));
    let (status, body) = broker
        .api(
            "POST",
            "/v1/presence",
            Some(json!({"users": ["dave", "zed"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dave"]["online"], json!(true));
    assert_eq!(body["dave"]["devices"], json!(1));
    assert_eq!(body["zed"], json!({"online": false, "devices": 0}));

    // A flap inside the delay: contacts hear nothing of it.
    dave.disconnect().await;
    let dave = Device::connect(broker.port(), "dave", "dave-1").await;
    dave.disconnect().await;
    let offline = carol.next_on("presence/dave").await;
    assert_eq!(
        offline.json()["online"],
        json!(false),
        "the next change is the real one"
    );
    assert!(offline.json()["last_seen"].as_u64().is_some());
    // Nothing else came to carol, and `#` showed erin no presence: each one's next message
    // is this one.
    assert_eq!(carol.publish("news/x", "n", &[]).await, "Success");
    assert!(matches!(
        carol.subscribe("news/#").await,
        SubscribeReasonCode::Success(_)
    ));
    assert_eq!(carol.publish("news/x", "after", &[]).await, "Success");
    assert_eq!(carol.next().await.text(), "after");
    assert_eq!(erin.next().await.topic, "news/x");

    // A DM makes contacts: erin may now watch carol.
    assert_eq!(
        erin.publish("presence/carol", "", &[]).await,
        "NotAuthorized"
    );
    assert_eq!(
        erin.subscribe("presence/carol").await,
        SubscribeReasonCode::NotAuthorized
    );
    assert_eq!(carol.publish("dm/erin", "hi", &[]).await, "Success");
    assert!(matches!(
        erin.subscribe("presence/carol").await,
        SubscribeReasonCode::Success(_)
    ));
    let retained = erin.next_on("presence/carol").await;
    assert!(retained.retain);
    assert_eq!(retained.json()["online"], json!(true));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_left_online_by_a_stop_is_offline_after_the_restart() {
    let broker = seeded(&[], |c| {
        c.im.presence_offline_delay_ms = 600_000;
        c.im.presence_visible_to = PresenceVisibility::Everyone;
    })
    .await;
    let mut watcher = Device::connect(broker.port(), "watcher", "w-1").await;
    assert!(matches!(
        watcher.subscribe("presence/+").await,
        SubscribeReasonCode::Success(_)
    ));
    let dave = Device::connect(broker.port(), "dave", "dave-1").await;
    assert_eq!(
        watcher.next_on("presence/dave").await.json()["online"],
        json!(true)
    );
    drop((dave, watcher));
    let broker = broker.restart().await;
    let (status, body) = broker
        .api("POST", "/v1/presence", Some(json!({"users": ["dave"]})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dave"]["online"], json!(false));
    assert!(body["dave"]["last_seen"].as_u64().is_some());
    let (status, body) = broker
        .api("POST", "/v1/presence", Some(json!({"users": ["a/b"]})))
        .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("users"), "{body}");
    broker.stop().await;
}
