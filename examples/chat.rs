//! Two users and a group chatting through tern, with rumqttc as the MQTT 5 client.
//!
//! Against a running broker (`./scripts/serve.sh`), `cargo run --example chat`:
//!
//! 1. makes sure the group `friends` exists with alice and bob as members, through the
//!    broker's admin API, found the way `tern group ...` finds it (`{data_dir}/admin.addr`
//!    and `admin.token`, or `--admin URL --token TOKEN`);
//! 2. connects alice and bob, each subscribed to their own inbox (`inbox/{user}/#`);
//! 3. alice writes to bob (`dm/bob`), bob replies (`dm/alice`), alice writes to the group
//!    (`group/friends`); every user prints what arrives in their inbox, with the `from` and
//!    `seq` user properties the broker stamps on it;
//! 4. exits with 1 and says what is missing unless every expected message arrived, each
//!    within `--timeout` seconds.
//!
//! `examples/README.md` shows a run; `conformance/tests/examples.rs` runs [`run`] against an
//! in-process broker.

use std::collections::HashMap;
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use tern::admin::client::{encode_segment, ApiClient, ClientError};
use tern::admin::command::{choose_backend, load_config, Backend};
use tern::admin::model::GroupView;
use tern::cli::OpsArgs;
use tern::im::directory::ChangeError;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Errors carry their own explanation: `main` prints them as they are.
pub type BoxError = Box<dyn Error + Send + Sync>;

const ALICE: &str = "alice";
const BOB: &str = "bob";

/// Two users and a group chatting through a running tern broker.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat")]
pub struct Options {
    /// The broker's MQTT host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The broker's MQTT port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// alice's password, if she is a registered user (`tern user add alice`). Without one
    /// she connects anonymously, which the default loopback listener accepts.
    #[arg(long, value_name = "PW")]
    pub alice_password: Option<String>,
    /// bob's password, if he is a registered user.
    #[arg(long, value_name = "PW")]
    pub bob_password: Option<String>,
    /// The group alice and bob write to; created (or completed) if needed.
    #[arg(long, value_name = "GID", default_value = "friends")]
    pub group: String,
    /// The longest wait for any one event (connection, acknowledgement, message), in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
    /// The broker's data directory, where its admin.addr and admin.token are.
    /// [default: data_dir of --config, else ./tern-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The broker's config file (its data_dir and [admin] settings are used).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The admin API of the broker, e.g. http://127.0.0.1:8081.
    /// [default: the address in {data_dir}/admin.addr]
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// The admin API token. [default: $TERN_ADMIN_TOKEN, then [admin] token of --config,
    /// then {data_dir}/admin.token]
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// A message that arrived in a user's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Whose client received it.
    pub user: String,
    pub topic: String,
    pub payload: String,
    /// User property `from`: the authenticated sender, set by the broker.
    pub from: String,
    /// User property `seq`: the message's position in the receiver's inbox log.
    pub seq: u64,
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The group as the admin API last returned it.
    pub group: GroupView,
    /// This run created the group.
    pub group_created: bool,
    /// Every expected message, in the order it arrived.
    pub received: Vec<Received>,
}

/// One message of the conversation: who sends what where, and which inbox topics it must
/// arrive on, for which user.
struct Step {
    sender: &'static str,
    topic: String,
    text: &'static str,
    deliveries: Vec<(&'static str, String)>,
}

/// The conversation. A direct message lands in the recipient's inbox and, as a "sent"
/// copy, in the sender's (so the sender's other devices see it too); a group message lands
/// in every member's inbox, the sender's included.
fn conversation(gid: &str) -> Vec<Step> {
    vec![
        Step {
            sender: ALICE,
            topic: "dm/bob".into(),
            text: "hi bob, lunch at noon?",
            deliveries: vec![
                (BOB, "inbox/bob/dm/alice".into()),
                (ALICE, "inbox/alice/sent/bob".into()),
            ],
        },
        Step {
            sender: BOB,
            topic: "dm/alice".into(),
            text: "sure, see you there",
            deliveries: vec![
                (ALICE, "inbox/alice/dm/bob".into()),
                (BOB, "inbox/bob/sent/alice".into()),
            ],
        },
        Step {
            sender: ALICE,
            topic: format!("group/{gid}"),
            text: "lunch at noon, anyone else?",
            deliveries: vec![
                (ALICE, format!("inbox/alice/group/{gid}/alice")),
                (BOB, format!("inbox/bob/group/{gid}/alice")),
            ],
        },
    ]
}

/// Runs the whole example; `Err` says what went wrong or what did not arrive.
pub async fn run(opts: Options) -> Result<Summary, BoxError> {
    // Group membership is the broker's business, not the clients': an application server
    // (here, this example) manages it through the admin API.
    let (group, group_created) = ensure_group(&opts, &[ALICE, BOB]).await?;
    println!(
        "group {}: {} (members: {})",
        group.gid,
        if group_created { "created" } else { "exists" },
        group.members.join(", ")
    );

    let mut chat = Chat::new(&opts);
    chat.connect(ALICE, opts.alice_password.as_deref());
    chat.connect(BOB, opts.bob_password.as_deref());
    chat.wait_connected().await?;
    // Each device listens to its own inbox only: the broker refuses any other user's.
    for user in [ALICE, BOB] {
        chat.subscribe(user, &format!("inbox/{user}/#")).await?;
    }

    let mut received = Vec::new();
    for step in conversation(&opts.group) {
        received.extend(chat.exchange(&step).await?);
    }
    chat.disconnect().await;
    println!(
        "ok: all {} expected messages arrived, stamped with their sender",
        received.len()
    );
    Ok(Summary {
        group,
        group_created,
        received,
    })
}

/// Creates the group with `members` if it does not exist, and adds any member it lacks, so
/// that running the example again works. Returns the group and whether it was created.
async fn ensure_group(opts: &Options, members: &[&str]) -> Result<(GroupView, bool), BoxError> {
    let ops = OpsArgs {
        config: opts.config.clone(),
        data_dir: opts.data_dir.clone(),
        admin: opts.admin.clone(),
        token: opts.token.clone(),
        json: false,
    };
    let gid = opts.group.clone();
    let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    // ApiClient blocks (plain HTTP/1.1 through ureq): keep it off the async threads.
    tokio::task::spawn_blocking(move || {
        let config = load_config(&ops)?;
        // The same discovery as `tern group ...`, except that a stopped broker is an error
        // here: the example is about talking to a running one.
        let api = match choose_backend(&ops, &config) {
            Backend::Live(api) => api,
            Backend::Offline(dir) => {
                return Err(format!(
                    "no running broker found: {}/admin.addr is missing or nobody answers at \
                     its address. Start the broker (./scripts/serve.sh), or point at it with \
                     --data-dir DIR (its data directory) or --admin URL --token TOKEN",
                    dir.display()
                )
                .into())
            }
        };
        group_with_members(&api, &gid, &members)
    })
    .await?
}

fn group_with_members(
    api: &ApiClient,
    gid: &str,
    members: &[String],
) -> Result<(GroupView, bool), BoxError> {
    let path = format!("/v1/groups/{}", encode_segment(gid));
    let (mut group, created) = match api.get::<GroupView>(&path, &[]) {
        Ok(group) => (group, false),
        Err(ClientError::Refused(ChangeError::NotFound(_))) => {
            let body = serde_json::json!({ "gid": gid, "members": members });
            match api.send::<GroupView>(false, "/v1/groups", &body) {
                Ok(group) => (group, true),
                // Created by someone else in the meantime: fine, use it.
                Err(ClientError::Refused(ChangeError::Exists(_))) => (api.get(&path, &[])?, false),
                Err(e) => return Err(format!("cannot create group {gid}: {e}").into()),
            }
        }
        Err(e) => return Err(format!("cannot look up group {gid}: {e}").into()),
    };
    for member in members {
        if group.members.contains(member) {
            continue;
        }
        let member_path = format!("{path}/members/{}", encode_segment(member));
        group = match api.send::<GroupView>(true, &member_path, &serde_json::json!({})) {
            Ok(group) => group,
            Err(ClientError::Refused(ChangeError::Exists(_))) => api.get(&path, &[])?,
            Err(e) => return Err(format!("cannot add {member} to group {gid}: {e}").into()),
        };
    }
    Ok((group, created))
}

/// An event from one user's connection.
type UserEvent = (&'static str, Result<Event, ConnectionError>);

/// The two users' connections. Each rumqttc event loop runs in its own task (it must be
/// polled all the time to send, receive and keep the connection alive) and forwards its
/// events into one channel, which the conversation reads in arrival order.
struct Chat {
    host: String,
    port: u16,
    wait: Duration,
    clients: HashMap<&'static str, AsyncClient>,
    events_tx: mpsc::UnboundedSender<UserEvent>,
    events: mpsc::UnboundedReceiver<UserEvent>,
    /// Dropping the set (on any early return) stops the event loops, closing the sockets.
    loops: JoinSet<()>,
    /// The last `seq` each user got: a user's inbox numbers only ever go up.
    last_seq: HashMap<&'static str, u64>,
}

impl Chat {
    fn new(opts: &Options) -> Chat {
        let (events_tx, events) = mpsc::unbounded_channel();
        Chat {
            host: opts.host.clone(),
            port: opts.port,
            wait: Duration::from_secs(opts.timeout),
            clients: HashMap::new(),
            events_tx,
            events,
            loops: JoinSet::new(),
            last_seq: HashMap::new(),
        }
    }

    /// Starts connecting `user`; [`Chat::wait_connected`] waits for the CONNACKs.
    fn connect(&mut self, user: &'static str, password: Option<&str>) {
        // The client id names this device of the user; the MQTT user name is the user.
        let mut options = MqttOptions::new(format!("{user}-chat-example"), &self.host, self.port);
        options.set_keep_alive(Duration::from_secs(30));
        // No password: an anonymous development client, accepted as the user it names on
        // the default loopback listener. An empty password counts as none.
        options.set_credentials(user, password.unwrap_or(""));
        // Clean start: this example wants only what is sent while it runs. A real app
        // keeps a persistent session, or publishes its last seq to `$sync` to catch up.
        options.set_clean_start(true);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        self.clients.insert(user, client);
        let tx = self.events_tx.clone();
        self.loops.spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let done = matches!(
                    event,
                    Err(_) | Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))
                );
                // Stop on a connection error rather than let rumqttc reconnect in a loop.
                if tx.send((user, event)).is_err() || done {
                    break;
                }
            }
        });
    }

    /// The next packet from the broker to either user; an error for a broken connection,
    /// or when nothing arrives within the timeout (`waiting_for` says what was expected).
    async fn next(&mut self, waiting_for: &str) -> Result<(&'static str, Packet), BoxError> {
        let next_incoming = async {
            loop {
                match self.events.recv().await {
                    Some((user, Ok(Event::Incoming(packet)))) => return Ok((user, packet)),
                    // What the client sent: nothing to wait for.
                    Some((_, Ok(Event::Outgoing(_)))) => continue,
                    Some((user, Err(e))) => return Err((user, e)),
                    None => return Err(("everyone", ConnectionError::RequestsDone)),
                }
            }
        };
        match tokio::time::timeout(self.wait, next_incoming).await {
            Ok(Ok(packet)) => Ok(packet),
            Ok(Err((user, e))) => Err(self.explain(user, e)),
            Err(_) => Err(format!(
                "timed out after {} s waiting for {waiting_for}",
                self.wait.as_secs()
            )
            .into()),
        }
    }

    /// A connection error, with what to do about it.
    fn explain(&self, user: &str, error: ConnectionError) -> BoxError {
        let (host, port) = (&self.host, self.port);
        match error {
            ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => format!(
                "the broker refused {user}: bad user name or password ({user} is a registered \
                 user: pass --{user}-password, or check it)"
            ),
            ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => format!(
                "the broker refused {user}: anonymous clients are not allowed on this \
                 listener; register {user} (tern user add {user}) and pass --{user}-password"
            ),
            ConnectionError::ConnectionRefused(code) => {
                format!("the broker refused {user}'s connection: {code:?}")
            }
            ConnectionError::Io(e) => format!(
                "{user}: cannot talk to the broker at {host}:{port}: {e} (is `tern serve` \
                 running there? ./scripts/serve.sh starts one)"
            ),
            other => format!("{user}'s connection to {host}:{port} failed: {other}"),
        }
        .into()
    }

    /// Waits until every started connection is accepted.
    async fn wait_connected(&mut self) -> Result<(), BoxError> {
        let mut pending: Vec<&'static str> = self.clients.keys().copied().collect();
        pending.sort();
        while !pending.is_empty() {
            let waiting_for = format!("the CONNACK of {}", pending.join(", "));
            if let (user, Packet::ConnAck(_)) = self.next(&waiting_for).await? {
                // A refused CONNACK comes back as an error from `next`.
                println!("{user:<5} connected (client id {user}-chat-example)");
                pending.retain(|u| *u != user);
            }
        }
        Ok(())
    }

    async fn subscribe(&mut self, user: &'static str, filter: &str) -> Result<(), BoxError> {
        self.client(user)?
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| format!("{user}: cannot subscribe: {e}"))?;
        loop {
            let waiting_for = format!("the SUBACK of {user}'s {filter}");
            if let (from, Packet::SubAck(ack)) = self.next(&waiting_for).await? {
                if from != user {
                    continue;
                }
                return match ack.return_codes.first() {
                    Some(SubscribeReasonCode::Success(_)) => {
                        println!("{user:<5} subscribed to {filter}");
                        Ok(())
                    }
                    other => Err(format!("the broker refused {user}'s {filter}: {other:?}").into()),
                };
            }
        }
    }

    /// Sends one message of the conversation and waits for its PUBACK and for every
    /// delivery it must cause, printing what arrives.
    async fn exchange(&mut self, step: &Step) -> Result<Vec<Received>, BoxError> {
        println!();
        println!("{:<5} -> {}: {:?}", step.sender, step.topic, step.text);
        // QoS 1: the PUBACK comes once the message is durable in every recipient's inbox.
        self.client(step.sender)?
            .publish(step.topic.clone(), QoS::AtLeastOnce, false, step.text)
            .await
            .map_err(|e| format!("{}: cannot publish: {e}", step.sender))?;
        let mut acked = false;
        let mut missing = step.deliveries.clone();
        let mut received = Vec::new();
        while !acked || !missing.is_empty() {
            let mut waiting_for: Vec<String> = missing
                .iter()
                .map(|(user, topic)| format!("{user} to receive {topic}"))
                .collect();
            if !acked {
                waiting_for.push(format!("the PUBACK of {}'s message", step.sender));
            }
            match self.next(&waiting_for.join(", ")).await? {
                (user, Packet::PubAck(ack)) if user == step.sender => {
                    if ack.reason != PubAckReason::Success {
                        // E.g. NotAuthorized: not a member of the group.
                        return Err(format!(
                            "the broker refused {user}'s message to {}: {:?}",
                            step.topic, ack.reason
                        )
                        .into());
                    }
                    println!("{user:<5} <- PUBACK: stored in every recipient's inbox");
                    acked = true;
                }
                (user, Packet::Publish(publish)) => {
                    let got = self.received(user, &publish)?;
                    let expected = missing
                        .iter()
                        .position(|(u, topic)| *u == user && *topic == got.topic);
                    let Some(index) = expected else {
                        // Somebody else is chatting with alice or bob right now.
                        println!("      (not part of this example)");
                        continue;
                    };
                    if got.payload != step.text || got.from != step.sender {
                        return Err(format!(
                            "{user} got {:?} from {} on {}, expected {:?} from {}",
                            got.payload, got.from, got.topic, step.text, step.sender
                        )
                        .into());
                    }
                    missing.swap_remove(index);
                    received.push(got);
                }
                _ => {}
            }
        }
        Ok(received)
    }

    /// Reads a delivery: topic, text, and the user properties the broker added.
    fn received(
        &mut self,
        user: &'static str,
        publish: &rumqttc::v5::mqttbytes::v5::Publish,
    ) -> Result<Received, BoxError> {
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let payload = String::from_utf8_lossy(&publish.payload).into_owned();
        let property = |name: &str| {
            publish.properties.as_ref().and_then(|p| {
                p.user_properties
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.clone())
            })
        };
        let from = property("from")
            .ok_or_else(|| format!("{user} got {topic} without a `from` user property"))?;
        let seq = property("seq")
            .and_then(|seq| seq.parse::<u64>().ok())
            .ok_or_else(|| format!("{user} got {topic} without a numeric `seq` user property"))?;
        println!("{user:<5} <- {topic}: {payload:?} (from: {from}, seq: {seq})");
        if let Some(last) = self.last_seq.insert(user, seq) {
            if seq <= last {
                return Err(
                    format!("{user}'s seq went from {last} to {seq}: it must increase").into(),
                );
            }
        }
        Ok(Received {
            user: user.to_string(),
            topic,
            payload,
            from,
            seq,
        })
    }

    fn client(&self, user: &str) -> Result<&AsyncClient, BoxError> {
        self.clients
            .get(user)
            .ok_or_else(|| format!("{user} is not connected").into())
    }

    /// Says goodbye with DISCONNECT (the broker then drops the clean sessions) and waits
    /// for the event loops to send it.
    async fn disconnect(mut self) {
        for client in self.clients.values() {
            let _ = client.disconnect().await;
        }
        let wait = self.wait;
        // Past the timeout, dropping the set closes the sockets anyway.
        let _ = tokio::time::timeout(wait, async {
            while self.loops.join_next().await.is_some() {}
        })
        .await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Options::parse()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}
