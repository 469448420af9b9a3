//! Users and groups across tern nodes on a real NATS server: whatever node's admin API an
//! operator uses, every node logs the users in, routes group messages to the members, and
//! closes the connections of a user deleted or given a new password.

use serde_json::json;
use tern::config::AnonymousPolicy;
use tern_codec::{Protocol, QoS, ReasonCode};
use tern_conformance::chat::{login, next, publish, subscribe_all};
use tern_conformance::nats::{join, NatsServer};
use tern_conformance::{granted, Broker, RawClient};

async fn node(nats: &NatsServer, name: &str) -> Broker {
    let url = nats.url();
    Broker::start_with(|c| {
        join(c, name, &url);
        c.allow_anonymous = AnonymousPolicy::Never;
    })
    .await
}

async fn connect(
    node: &Broker,
    client_id: &str,
    user: &str,
    password: &str,
) -> (RawClient, ReasonCode) {
    let (client, ack) = RawClient::open(
        node.addr,
        Protocol::V5,
        client_id,
        true,
        login(user, Some(password)),
    )
    .await;
    (client, ack.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_groups_changed_on_one_node_hold_on_every_node() {
    let nats = NatsServer::start().await;
    let (one, two) = (node(&nats, "n1").await, node(&nats, "n2").await);

    for (user, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        let (status, body) = one
            .api(
                "POST",
                "/v1/users",
                Some(json!({"user": user, "password": password})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Node 2 knows them at once (the change returned once node 1 had it; node 2 may
    // copy it a moment later, so its answer is awaited).
    let mut attempts = 0;
    let mut bob = loop {
        let (client, code) = connect(&two, "bob-phone", "bob", "bob-pw").await;
        if code == ReasonCode::Success {
            break client;
        }
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
        attempts += 1;
        assert!(attempts < 100, "node 2 never learned of bob");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let (_, code) = connect(&two, "bob-tablet", "bob", "wrong").await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    // Adding a user that exists, on the other node, is refused.
    let (status, _) = two
        .api(
            "POST",
            "/v1/users",
            Some(json!({"user": "alice", "password": "x"})),
        )
        .await;
    assert_eq!(status, 409);

    // A group made on node 2 routes a message sent on node 1.
    let (status, body) = two
        .api(
            "POST",
            "/v1/groups",
            Some(json!({"gid": "team", "members": ["alice", "bob"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Node 1 copies it a moment after node 2 answered.
    let mut attempts = 0;
    while one.api("GET", "/v1/groups/team", None).await.0 != 200 {
        attempts += 1;
        assert!(attempts < 100, "node 1 never copied the group");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (mut alice, code) = connect(&one, "alice-phone", "alice", "alice-pw").await;
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(
        subscribe_all(&mut bob, &["inbox/bob/#"]).await,
        [granted(QoS::AtLeastOnce)]
    );
    // Bob's node subscribes to his deliveries in NATS after the SUBACK: probe until one
    // arrives.
    loop {
        assert_eq!(
            publish(&mut alice, 1, "group/team", "hello team", &[]).await,
            ReasonCode::Success,
            "alice is a member on node 1 too"
        );
        if let Ok(Some(tern_codec::Packet::Publish(p))) =
            bob.recv_within(std::time::Duration::from_millis(300)).await
        {
            bob.ack(&p).await;
            assert_eq!(&*p.topic, "inbox/bob/group/team/alice");
            break;
        }
    }
    let (status, _) = one
        .api("DELETE", "/v1/groups/team/members/alice", None)
        .await;
    assert_eq!(status, 200);
    let refused = publish(&mut alice, 2, "group/team", "still here?", &[]).await;
    assert_eq!(refused, ReasonCode::NotAuthorized, "no longer a member");
    assert_eq!(
        publish(&mut alice, 3, "dm/bob", "a DM still works", &[]).await,
        ReasonCode::Success
    );
    let (_, payload, from, _) = loop {
        let row = next(&mut bob, "alice's DM").await;
        if row.1 != "hello team" {
            break row;
        }
    };
    assert_eq!(
        (payload.as_str(), from.as_str()),
        ("a DM still works", "alice")
    );

    // A new password on node 2 closes alice's connection on node 1 and refuses the old one.
    let (status, _) = two
        .api(
            "PUT",
            "/v1/users/alice/password",
            Some(json!({"password": "new-pw"})),
        )
        .await;
    assert_eq!(status, 200);
    alice
        .expect_disconnect(&[ReasonCode::NotAuthorized], "alice after her new password")
        .await;
    let (_, code) = connect(&one, "alice-phone", "alice", "alice-pw").await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    let (_, code) = connect(&one, "alice-phone", "alice", "new-pw").await;
    assert_eq!(code, ReasonCode::Success);

    // Bob deleted on node 1: his connection on node 2 closes, and he is refused there.
    let (status, _) = one.api("DELETE", "/v1/users/bob", None).await;
    assert_eq!(status, 200);
    bob.expect_disconnect(&[ReasonCode::NotAuthorized], "bob deleted")
        .await;
    let (_, code) = connect(&two, "bob-phone", "bob", "bob-pw").await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    let (status, _) = two.api("GET", "/v1/users/bob", None).await;
    assert_eq!(status, 404);
}

/// The same user added on two nodes at once: one add wins, the other is told it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_concurrent_adds_of_a_user_wins() {
    let nats = NatsServer::start().await;
    let (one, two) = (node(&nats, "n1").await, node(&nats, "n2").await);
    for round in 0..5 {
        let user = format!("user{round}");
        let body = |password: &str| Some(json!({"user": user, "password": password}));
        let ((a, _), (b, _)) = tokio::join!(
            one.api("POST", "/v1/users", body("from-one")),
            two.api("POST", "/v1/users", body("from-two"))
        );
        let mut statuses = [a, b];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "round {round}");
        let winner = if a == 201 { "from-one" } else { "from-two" };
        for node in [&one, &two] {
            let mut attempts = 0;
            loop {
                let (_, code) = connect(node, &format!("{user}-c"), &user, winner).await;
                if code == ReasonCode::Success {
                    break;
                }
                attempts += 1;
                assert!(
                    attempts < 100,
                    "{user} never logged in with the winning password"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// A token for `sub` signed with `secret`, issued `iat`, with id `jti`.
fn token(secret: &[u8], sub: &str, jti: &str, iat: u64) -> String {
    let claims = json!({"sub": sub, "jti": jti, "iat": iat, "exp": iat + 3_600});
    let key = jsonwebtoken::EncodingKey::from_secret(secret).expect("HMAC key");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign")
}

async fn token_login(node: &Broker, client_id: &str, token: &str) -> (RawClient, ReasonCode) {
    let token = bytes::Bytes::copy_from_slice(token.as_bytes());
    let (client, ack) = RawClient::open(node.addr, Protocol::V5, client_id, true, |c| {
        c.password = Some(token);
    })
    .await;
    (client, ack.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_node_is_refused_on_every_node() {
    let nats = NatsServer::start().await;
    let keys = tempfile::tempdir().expect("dir");
    let secret_file = keys.path().join("secret");
    let secret = b"the-account-service-shared-secret";
    std::fs::write(&secret_file, secret).expect("write");
    let url = nats.url();
    let node = |name: &'static str| {
        let (url, secret_file) = (url.clone(), secret_file.clone());
        Broker::start_with(move |c| {
            join(c, name, &url);
            c.allow_anonymous = AnonymousPolicy::Never;
            c.tokens.enabled = true;
            c.tokens.hmac_secret_file = Some(secret_file);
        })
    };
    let (one, two) = (node("n1").await, node("n2").await);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let first = token(secret, "alice", "t-1", now - 10);
    let second = token(secret, "alice", "t-2", now - 10);
    assert_eq!(
        token_login(&two, "alice-1", &first).await.1,
        ReasonCode::Success
    );

    let (status, body) = one
        .api(
            "POST",
            "/v1/tokens/revocations",
            Some(json!({"jti": "t-1", "expires_at": now + 3_600})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Node 1 answered once it had the revocation; node 2 copies it a moment later.
    tern_conformance::eventually("node 2 refuses the revoked token", || {
        let (two, first) = (&two, first.clone());
        async move { token_login(two, "alice-1", &first).await.1 == ReasonCode::BadUserNameOrPassword }
    })
    .await;
    let (mut phone, code) = token_login(&two, "alice-2", &second).await;
    assert_eq!(
        code,
        ReasonCode::Success,
        "another token of alice still works"
    );

    // Revoking alice's tokens on node 1 closes her connection on node 2.
    let (status, body) = one
        .api(
            "POST",
            "/v1/tokens/revocations",
            Some(json!({"user": "alice"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    phone
        .expect_disconnect(&[ReasonCode::NotAuthorized], "alice's connection on node 2")
        .await;
    assert_eq!(
        token_login(&two, "alice-3", &second).await.1,
        ReasonCode::BadUserNameOrPassword
    );
    let (_, list) = two.api("GET", "/v1/tokens/revocations", None).await;
    assert_eq!(list["tokens"]["t-1"], now + 3_600, "{list}");
    assert!(
        list["users"]["alice"].as_u64().is_some_and(|t| t >= now),
        "{list}"
    );
    one.stop().await;
    two.stop().await;
}
