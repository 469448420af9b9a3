//! The server push API (`POST /v1/messages`) over real HTTP and MQTT: DMs from a system
//! sender into inboxes (one user and the batch form), group messages, plain topics with
//! QoS and retain, broadcasts; idempotency keys; push tokens limited to this endpoint and
//! to their rate; bad input answered 400 naming the field.

use serde_json::{json, Value};
use tern_codec::{Protocol, QoS};
use tern_conformance::chat::{device, prop, subscribe_all};
use tern_conformance::{http, Broker, RawClient};

const PUSH_TOKEN: &str = "push-token-of-the-app-server";

async fn broker() -> Broker {
    Broker::start_with(|c| {
        c.admin.push_tokens = vec![PUSH_TOKEN.to_string()];
        c.admin.push_rate_per_sec = 2;
    })
    .await
}

async fn call(
    broker: &Broker,
    token: &str,
    method: &'static str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    http(
        method,
        format!("{}{path}", broker.admin_url()),
        Some(token.to_string()),
        body,
    )
    .await
}

async fn push(broker: &Broker, body: Value) -> (u16, Value) {
    call(
        broker,
        &broker.admin_token(),
        "POST",
        "/v1/messages",
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_inboxes_groups_topics_and_broadcasts_once() {
    let broker = broker().await;
    let mut bob = device(&broker, "bob", "bob-phone").await;
    subscribe_all(&mut bob, &["inbox/bob/#", "broadcast/#"]).await;

    // To one user: into the inbox with a seq, from the system sender.
    let request = json!({"to": {"user": "bob"}, "from": "notices", "payload": "your order shipped", "idempotency_key": "order-17"});
    let (status, first) = push(&broker, request.clone()).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["msgid"], "order-17");
    let dm = bob.expect_publish("the pushed DM").await;
    assert_eq!(&dm.topic[..], "inbox/bob/dm/notices");
    assert_eq!(&dm.payload[..], b"your order shipped");
    assert_eq!(prop(&dm, "from").as_deref(), Some("notices"));
    assert_eq!(prop(&dm, "msgid").as_deref(), Some("order-17"));
    let seq: u64 = prop(&dm, "seq").expect("seq").parse().expect("number");
    bob.ack(&dm).await;
    // The same request again: the first answer, nothing sent twice (the next DM is next).
    let (status, again) = push(&broker, request).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first);
    let (status, _) = push(
        &broker,
        json!({"to": {"user": "bob"}, "from": "notices", "payload": "second"}),
    )
    .await;
    assert_eq!(status, 201);
    let next = bob.expect_publish("the second DM").await;
    assert_eq!(&next.payload[..], b"second");
    assert_eq!(prop(&next, "seq"), Some((seq + 1).to_string()));
    bob.ack(&next).await;

    // The batch form: each user its own copy and msgid.
    let (status, batch) = push(
        &broker,
        json!({"to": {"users": ["bob", "carol"]}, "from": "notices", "payload_base64": "aGVsbG8=", "idempotency_key": "b1"}),
    )
    .await;
    assert_eq!(status, 201, "{batch}");
    assert_eq!(
        batch["users"],
        json!([{"user": "bob", "msgid": "b1:bob"}, {"user": "carol", "msgid": "b1:carol"}])
    );
    let copy = bob.expect_publish("bob's copy of the batch").await;
    assert_eq!(&copy.payload[..], b"hello");
    bob.ack(&copy).await;
    let (status, inbox) = call(
        &broker,
        &broker.admin_token(),
        "GET",
        "/v1/inbox/carol",
        None,
    )
    .await;
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox[0]["payload"]["data"], "hello", "{inbox}");

    // A group message from a member; a non-member is refused naming `from`.
    let (status, _) = call(
        &broker,
        &broker.admin_token(),
        "POST",
        "/v1/groups",
        Some(json!({"gid": "team", "members": ["bob", "notices"]})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = push(
        &broker,
        json!({"to": {"group": "team"}, "from": "mallory", "payload": "x"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").starts_with("from:"),
        "{body}"
    );
    let (status, _) = push(
        &broker,
        json!({"to": {"group": "team"}, "from": "notices", "payload": "standup"}),
    )
    .await;
    assert_eq!(status, 201);
    let group = bob.expect_publish("the group message").await;
    assert_eq!(&group.topic[..], "inbox/bob/group/team/notices");
    bob.ack(&group).await;

    // A plain topic, QoS 1 and retained: live subscribers get it, later ones too.
    let mut sensor = RawClient::open_ok(broker.addr, Protocol::V5, "watcher", true, |_| {})
        .await
        .0;
    sensor.subscribe(1, "sensors/+", QoS::AtLeastOnce).await;
    let (status, body) = push(
        &broker,
        json!({"to": {"topic": "sensors/1"}, "payload": "21.5", "qos": 1, "retain": true}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["matched"], true);
    let live = sensor.expect_publish("the pushed topic message").await;
    assert_eq!(&live.payload[..], b"21.5");
    let mut later = RawClient::open_ok(broker.addr, Protocol::V5, "later", true, |_| {})
        .await
        .0;
    later.subscribe(1, "sensors/1", QoS::AtLeastOnce).await;
    let retained = later.expect_publish("the retained push").await;
    assert!(retained.retain);

    // A broadcast reaches connected devices.
    let (status, _) = push(
        &broker,
        json!({"to": {"broadcast": "news"}, "payload": "maintenance at 2"}),
    )
    .await;
    assert_eq!(status, 201);
    let news = bob.expect_publish("the broadcast").await;
    assert_eq!(&news.topic[..], "broadcast/news");
    broker.stop().await;
}

#[tokio::test]
async fn bad_pushes_name_the_field_and_push_tokens_are_scoped_and_limited() {
    let broker = broker().await;
    for (body, field) in [
        (json!({"to": {"user": "bob"}, "from": "notices"}), "payload"),
        (
            json!({"to": {"user": "bob"}, "from": "n", "payload": "a", "payload_base64": "YQ=="}),
            "payload",
        ),
        (
            json!({"to": {"user": "bob"}, "from": "n", "payload_base64": "***"}),
            "payload_base64",
        ),
        (json!({"to": {"user": "bob"}, "payload": "a"}), "from"),
        (
            json!({"to": {"user": "bob"}, "from": "a/b", "payload": "a"}),
            "from",
        ),
        (
            json!({"to": {"user": "b/ob"}, "from": "n", "payload": "a"}),
            "to",
        ),
        (
            json!({"to": {"users": []}, "from": "n", "payload": "a"}),
            "to.users",
        ),
        (
            json!({"to": {"user": "bob"}, "from": "n", "payload": "a", "qos": 1}),
            "qos",
        ),
        (
            json!({"to": {"topic": "sensors/1"}, "from": "n", "payload": "a"}),
            "from",
        ),
        (
            json!({"to": {"topic": "dm/bob"}, "payload": "a"}),
            "to.topic",
        ),
        (json!({"to": {"topic": "a/+"}, "payload": "a"}), "to.topic"),
        (
            json!({"to": {"topic": "a"}, "payload": "a", "qos": 3}),
            "qos",
        ),
        (
            json!({"to": {"broadcast": ""}, "payload": "a"}),
            "to.broadcast",
        ),
        (
            json!({"to": {"user": "bob"}, "from": "n", "payload": "a", "idempotency_key": ""}),
            "idempotency_key",
        ),
        (
            json!({"to": {"planet": "mars"}, "payload": "a"}),
            "request body",
        ),
        (
            json!({"to": {"user": "bob"}, "from": "n", "payload": "a", "urgent": true}),
            "request body",
        ),
    ] {
        let (status, answer) = push(&broker, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        let error = answer["error"].as_str().unwrap_or("");
        assert!(
            error.starts_with(field),
            "{body} -> {answer}: should name {field}"
        );
    }

    // A push token reaches the push endpoint only.
    let (status, _) = call(&broker, PUSH_TOKEN, "GET", "/v1/users", None).await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &broker,
        "not-a-token-at-all",
        "POST",
        "/v1/messages",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 401);
    // At 2 requests a second, ten back to back run out (a 429, and never all ten).
    let mut codes = Vec::new();
    for n in 0..10 {
        let body = json!({"to": {"topic": "t/x"}, "payload": format!("{n}"), "qos": 0});
        codes.push(
            call(&broker, PUSH_TOKEN, "POST", "/v1/messages", Some(body))
                .await
                .0,
        );
    }
    assert!(codes.contains(&201), "{codes:?}");
    assert!(codes.contains(&429), "{codes:?}");
    // The admin token is not limited.
    for n in 0..10 {
        let body = json!({"to": {"topic": "t/x"}, "payload": format!("{n}"), "qos": 0});
        assert_eq!(push(&broker, body).await.0, 201);
    }
    broker.stop().await;
}
