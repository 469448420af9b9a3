//! `acl_file`: one Mosquitto-format ACL file, a table of (user, client id, action, topic)
//! cases, and the same allow/deny answer from Mosquitto (Debian's `mosquitto`, the
//! reference) and from tern, both observed with a third-party client (rumqttc) over real
//! sockets. Then what tern adds: the reason codes of refusals, wills, the chat namespace
//! left to its own rules, and a reload through the admin API.
//!
//! An answer is observed, not asked: a *write* case publishes on the topic then on its
//! marker topic `done/{client id}`, and an observer allowed to read everything sees the
//! case's message before the marker or not at all; a *read* case subscribes to its filter
//! and its marker topic, then a publisher allowed to write everything publishes the case's
//! topic then the marker. Messages of one publisher reach a subscriber in order on both
//! brokers, so no case waits for a timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, QoS};
use serde_json::json;
use tern_codec::{Protocol, ReasonCode};
use tern_conformance::chat::{login, publish, subscribe_all};
use tern_conformance::{Broker, RawClient, EVENT_TIMEOUT};
use tokio::sync::mpsc;

const ACL: &str = "\
# Clients without a user name.
topic read public/#

user root
topic readwrite #

user alice
topic readwrite alice/#
topic deny alice/secret
topic write shared/drop
topic read shared/news

user bob
topic read alice/public

pattern readwrite done/%c
pattern readwrite devices/%c/#
pattern read users/%u/#
pattern deny devices/+/admin
";

/// (user name, client id, action, filter or topic, topic a read case's message goes to).
type Case = (
    Option<&'static str>,
    &'static str,
    Action,
    &'static str,
    &'static str,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Read,
    Write,
}

const CASES: &[Case] = &[
    (Some("alice"), "a1", Action::Write, "alice/x", ""),
    (Some("alice"), "a1", Action::Read, "alice/x", "alice/x"),
    (Some("alice"), "a1", Action::Write, "alice/secret", ""),
    (
        Some("alice"),
        "a1",
        Action::Read,
        "alice/secret",
        "alice/secret",
    ),
    (Some("alice"), "a1", Action::Write, "shared/drop", ""),
    (
        Some("alice"),
        "a1",
        Action::Read,
        "shared/drop",
        "shared/drop",
    ),
    (
        Some("alice"),
        "a1",
        Action::Read,
        "shared/news",
        "shared/news",
    ),
    (Some("alice"), "a1", Action::Write, "shared/news", ""),
    (
        Some("alice"),
        "a1",
        Action::Read,
        "public/news",
        "public/news",
    ),
    (None, "n1", Action::Read, "public/news", "public/news"),
    (None, "n1", Action::Read, "public/+", "public/weather"),
    (None, "n1", Action::Write, "public/news", ""),
    (
        Some("bob"),
        "b1",
        Action::Read,
        "alice/public",
        "alice/public",
    ),
    (Some("bob"), "b1", Action::Write, "alice/public", ""),
    (Some("bob"), "b1", Action::Write, "devices/b1/up", ""),
    (Some("bob"), "b1", Action::Write, "devices/a1/up", ""),
    (Some("bob"), "b1", Action::Write, "devices/b1/admin", ""),
    (
        Some("bob"),
        "b1",
        Action::Read,
        "devices/b1/down",
        "devices/b1/down",
    ),
    (
        Some("bob"),
        "b1",
        Action::Read,
        "users/bob/inbox",
        "users/bob/inbox",
    ),
    (
        Some("bob"),
        "b1",
        Action::Read,
        "users/alice/inbox",
        "users/alice/inbox",
    ),
    (None, "n1", Action::Read, "users/n1/inbox", "users/n1/inbox"),
    (None, "n1", Action::Write, "devices/n1/up", ""),
    (Some("carol"), "c1", Action::Write, "devices/c1/up", ""),
    (Some("carol"), "c1", Action::Write, "carol/notes", ""),
    (Some("carol"), "c1", Action::Read, "elsewhere", "elsewhere"),
];

const USERS: &[&str] = &["root", "alice", "bob", "carol"];

fn password(user: &str) -> String {
    format!("{user}-password")
}

/// A rumqttc 3.1.1 client whose events (publishes received, SUBACKs) arrive on a channel.
struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Incoming>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(port: u16, client_id: &str, user: Option<&str>) -> Client {
        let mut options = tern_conformance::v4_options(client_id, port);
        if let Some(user) = user {
            options.set_credentials(user, password(user));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(incoming) = event {
                    if tx.send(incoming).is_err() {
                        return;
                    }
                }
            }
        });
        let mut connected = Client {
            client,
            events,
            task,
        };
        connected
            .until(|i| matches!(i, Incoming::ConnAck(_)).then_some(()))
            .await;
        connected
    }

    async fn until<T>(&mut self, mut pick: impl FnMut(&Incoming) -> Option<T>) -> T {
        tokio::time::timeout(EVENT_TIMEOUT, async {
            loop {
                let incoming = self.events.recv().await.expect("client connection");
                if let Some(found) = pick(&incoming) {
                    return found;
                }
            }
        })
        .await
        .expect("expected event within the timeout")
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        self.until(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
            .await;
    }

    async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .expect("publish");
    }

    /// Whether `payload` arrives before the payload `marker`.
    async fn sees_before(&mut self, payload: &str, marker: &str) -> bool {
        let mut seen = false;
        self.until(|i| match i {
            Incoming::Publish(p) if p.payload == payload.as_bytes() => {
                seen = true;
                None
            }
            Incoming::Publish(p) if p.payload == marker.as_bytes() => Some(()),
            _ => None,
        })
        .await;
        seen
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Every case's answer from the broker on `port`.
async fn answers(port: u16) -> Vec<bool> {
    let mut observer = Client::connect(port, "observer", Some("root")).await;
    observer.subscribe("#").await;
    let publisher = Client::connect(port, "publisher", Some("root")).await;
    let mut answers = Vec::new();
    for (n, &(user, client_id, action, topic, read_topic)) in CASES.iter().enumerate() {
        let payload = format!("case-{n}");
        let marker = format!("done-{n}");
        let marker_topic = format!("done/{client_id}");
        let mut client = Client::connect(port, client_id, user).await;
        let allowed = match action {
            Action::Write => {
                client.publish(topic, &payload).await;
                client.publish(&marker_topic, &marker).await;
                observer.sees_before(&payload, &marker).await
            }
            Action::Read => {
                client.subscribe(topic).await;
                client.subscribe(&marker_topic).await;
                publisher.publish(read_topic, &payload).await;
                publisher.publish(&marker_topic, &marker).await;
                client.sees_before(&payload, &marker).await
            }
        };
        client.close().await;
        answers.push(allowed);
    }
    observer.close().await;
    publisher.close().await;
    answers
}

/// Mosquitto with the ACL file and the users' passwords, until dropped.
struct Mosquitto {
    port: u16,
    _child: tokio::process::Child,
}

async fn mosquitto(dir: &Path, acl: &Path) -> Mosquitto {
    let passwd = dir.join("passwd");
    for (i, user) in USERS.iter().enumerate() {
        let mut command = std::process::Command::new("mosquitto_passwd");
        command.arg("-b");
        if i == 0 {
            command.arg("-c");
        }
        let status = command
            .arg(&passwd)
            .arg(user)
            .arg(password(user))
            .status()
            .expect("mosquitto_passwd (scripts/setup.sh installs mosquitto)");
        assert!(status.success(), "mosquitto_passwd {user}: {status}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npassword_file {}\nacl_file {}\n\
         persistence false\nlog_dest stderr\n",
        passwd.display(),
        acl.display()
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        conf.push_str("user root\n");
    }
    let conf_file = dir.join("mosquitto.conf");
    std::fs::write(&conf_file, conf).expect("write mosquitto.conf");
    // Debian puts the broker in /usr/sbin, which a non-root user's PATH may lack.
    let program = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let child = tokio::process::Command::new(program)
        .arg("-c")
        .arg(&conf_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto (scripts/setup.sh installs it)");
    tern_conformance::eventually("mosquitto listens", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    Mosquitto {
        port,
        _child: child,
    }
}

async fn tern_with_acl(acl: &Path) -> Broker {
    let acl = acl.to_path_buf();
    let broker = Broker::start_with(move |c| c.acl_file = Some(acl)).await;
    for user in USERS {
        let body = json!({"user": user, "password": password(user)});
        let (status, answer) = broker.api("POST", "/v1/users", Some(body)).await;
        assert_eq!(status, 201, "{answer}");
    }
    broker
}

#[tokio::test]
async fn acl_file_answers_like_mosquitto() {
    let dir = tempfile::tempdir().expect("dir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).expect("write acl");
    let reference = mosquitto(dir.path(), &acl).await;
    let expected = answers(reference.port).await;
    // The table is worth something only if it has both answers.
    assert!(expected.iter().any(|&a| a) && expected.iter().any(|&a| !a));
    let broker = tern_with_acl(&acl).await;
    let got = answers(broker.port()).await;
    let differing: Vec<_> = CASES
        .iter()
        .zip(expected.iter().zip(&got))
        .filter(|(_, (e, g))| e != g)
        .map(|(case, (e, g))| format!("{case:?}: mosquitto {e}, tern {g}"))
        .collect();
    assert!(differing.is_empty(), "{differing:#?}");
    broker.stop().await;
}

async fn raw(addr: SocketAddr, protocol: Protocol, client_id: &str, user: &str) -> RawClient {
    let pw = password(user);
    RawClient::open_ok(addr, protocol, client_id, true, login(user, Some(&pw)))
        .await
        .0
}

#[tokio::test]
async fn refusals_get_their_reason_codes_and_a_reload_changes_the_answers() {
    let dir = tempfile::tempdir().expect("dir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).expect("write acl");
    let broker = tern_with_acl(&acl).await;

    // MQTT 5: SUBACK 0x87 for a denied filter (the others granted), PUBACK 0x87.
    let mut alice = raw(broker.addr, Protocol::V5, "a1", "alice").await;
    let filters = [
        "alice/#",
        "alice/x",
        "$share/g/alice/x/+",
        "$share/g/alice/+",
    ];
    let reasons = subscribe_all(&mut alice, &filters).await;
    let (granted, denied) = (ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized);
    // alice/# and alice/+ reach the denied alice/secret.
    assert_eq!(reasons, [denied, granted, granted, denied]);
    assert_eq!(
        publish(&mut alice, 1, "alice/secret", "x", &[]).await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        publish(&mut alice, 2, "alice/y", "x", &[]).await,
        ReasonCode::NoMatchingSubscribers
    );
    // The chat namespace keeps its own rules: no ACL line names dm/ or inbox/.
    let mut bob = raw(broker.addr, Protocol::V5, "b1", "bob").await;
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    assert_eq!(
        publish(&mut alice, 3, "dm/bob", "hi", &[]).await,
        ReasonCode::Success
    );
    assert_eq!(
        bob.expect_publish("alice's DM").await.payload,
        "hi".as_bytes()
    );

    // MQTT 3.1.1: SUBACK 0x80; a denied PUBLISH is acknowledged and dropped.
    let mut old = raw(broker.addr, Protocol::V311, "b2", "bob").await;
    assert_eq!(
        subscribe_all(&mut old, &["alice/x", "alice/public"]).await,
        [ReasonCode::UnspecifiedError, ReasonCode::GrantedQoS1]
    );

    // A will on a topic the client may not publish on refuses the CONNECT.
    let (_, ack) = RawClient::open(broker.addr, Protocol::V5, "a2", true, |c| {
        login("alice", Some(&password("alice")))(c);
        c.will = Some(tern_codec::Will {
            topic: "alice/secret".into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: tern_codec::QoS::AtMostOnce,
            retain: false,
            properties: tern_codec::Properties::default(),
        });
    })
    .await;
    assert_eq!(ack.code, ReasonCode::NotAuthorized);

    // A broken file is refused and the rules in force stay; a good one replaces them.
    std::fs::write(&acl, "user alice\ntopic sometimes alice/#\n").expect("write");
    let (status, body) = broker.api("POST", "/v1/access/reload", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains(":2:"),
        "names the line: {body}"
    );
    assert_eq!(
        publish(&mut alice, 4, "alice/y", "x", &[]).await,
        ReasonCode::NoMatchingSubscribers
    );
    std::fs::write(&acl, "user alice\ntopic read alice/#\n").expect("write");
    let (status, body) = broker.api("POST", "/v1/access/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["acl_file"], true);
    assert_eq!(
        publish(&mut alice, 5, "alice/y", "x", &[]).await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        subscribe_all(&mut alice, &["alice/#", "inbox/alice/#"]).await,
        [ReasonCode::GrantedQoS1, ReasonCode::GrantedQoS1]
    );
    broker.stop().await;
}
