//! Two users and a group chatting through tern, on the `tern-client` library (`client/`).
//!
//! Against a running broker (`./scripts/serve.sh`), `cargo run --example chat`:
//!
//! 1. makes sure the group `friends` exists with alice and bob as members, through the
//!    broker's admin API, found the way `tern group ...` finds it (`{data_dir}/admin.addr`
//!    and `admin.token`, or `--admin URL --token TOKEN`);
//! 2. connects alice and bob with `tern_client::Client`, which subscribes each to their
//!    inbox and syncs it (what earlier runs left there is shown as history);
//! 3. alice writes to bob (`dm/bob`), bob reads it (alice gets his read receipt) and
//!    replies (`dm/alice`), alice writes to the group (`group/friends`); every user prints
//!    what arrives, with the sender and the inbox seq the broker stamped on it, and alice
//!    sees bob's presence;
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
use tern::admin::client::{encode_segment, ApiClient, ClientError};
use tern::admin::command::{choose_backend, load_config, Backend};
use tern::admin::model::GroupView;
use tern::cli::OpsArgs;
use tern::im::directory::ChangeError;
use tern_client::{Client, Config, Conversation, Event, SendState};
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
    chat.connect(ALICE, opts.alice_password.as_deref())?;
    chat.connect(BOB, opts.bob_password.as_deref())?;
    chat.wait_ready().await?;
    // alice sees bob come and go: they share the group, which makes them contacts.
    chat.client(ALICE)?.watch_presence(BOB).await?;

    let mut received = Vec::new();
    for (index, step) in conversation(&opts.group).iter().enumerate() {
        // bob reads alice's first message, and alice learns that he did.
        let read_by = (index == 0).then_some(BOB);
        received.extend(chat.exchange(step, read_by).await?);
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

/// What one user's client reported.
type UserEvent = (&'static str, Event);

/// The two users' clients. Each `Events` stream is read by a task of its own that forwards
/// into one channel, which the conversation reads in arrival order.
struct Chat {
    wait: Duration,
    clients: HashMap<&'static str, Client>,
    events_tx: mpsc::UnboundedSender<UserEvent>,
    events: mpsc::UnboundedReceiver<UserEvent>,
    /// Dropping the set (on any early return) stops the forwarding tasks.
    readers: JoinSet<()>,
    host: String,
    port: u16,
}

impl Chat {
    fn new(opts: &Options) -> Chat {
        let (events_tx, events) = mpsc::unbounded_channel();
        Chat {
            wait: Duration::from_secs(opts.timeout),
            clients: HashMap::new(),
            events_tx,
            events,
            readers: JoinSet::new(),
            host: opts.host.clone(),
            port: opts.port,
        }
    }

    /// Starts `user`'s client: it connects (again and again, if need be), subscribes to the
    /// inbox and syncs it by itself. [`Chat::wait_ready`] waits for that.
    fn connect(&mut self, user: &'static str, password: Option<&str>) -> Result<(), BoxError> {
        // The device id names this device of the user; the MQTT user name is the user. No
        // password: an anonymous development client, accepted as the user it names on the
        // default loopback listener.
        let mut config = Config::new(
            &self.host,
            self.port,
            user,
            password.unwrap_or(""),
            format!("{user}-chat-example"),
        );
        // This example keeps nothing between runs; a real app keeps its session and a
        // cursor file (`Config::cursor_file`) to sync only what it missed.
        config.persistent_session = false;
        config.connect_timeout = self.wait;
        let (client, mut events) = Client::connect(config)?;
        self.clients.insert(user, client);
        let tx = self.events_tx.clone();
        self.readers.spawn(async move {
            while let Some(event) = events.next().await {
                if tx.send((user, event)).is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    /// The next event of either user, or an error when nothing comes within the timeout
    /// (`waiting_for` says what was expected).
    async fn next(&mut self, waiting_for: &str) -> Result<UserEvent, BoxError> {
        match tokio::time::timeout(self.wait, self.events.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err("every client stopped".into()),
            Err(_) => Err(format!(
                "timed out after {} s waiting for {waiting_for}",
                self.wait.as_secs()
            )
            .into()),
        }
    }

    /// A failed connection attempt, with what to do about it. The client would try again
    /// forever; the example gives up at the first failure.
    fn explain(&self, user: &str, reason: &str) -> BoxError {
        let (host, port) = (&self.host, self.port);
        if reason.contains("BadUserNamePassword") {
            format!(
                "the broker refused {user}: bad user name or password ({user} is a registered \
                 user: pass --{user}-password, or check it)"
            )
        } else if reason.contains("NotAuthorized") {
            format!(
                "the broker refused {user}: anonymous clients are not allowed on this \
                 listener; register {user} (tern user add {user}) and pass --{user}-password"
            )
        } else if reason.contains("I/O") || reason.contains("timed out") {
            format!(
                "{user}: cannot talk to the broker at {host}:{port}: {reason} (is `tern serve` \
                 running there? ./scripts/serve.sh starts one)"
            )
        } else {
            format!("{user}'s connection to {host}:{port} failed: {reason}")
        }
        .into()
    }

    /// Waits until every client is connected and has synced its inbox (printing the
    /// history earlier runs left there).
    async fn wait_ready(&mut self) -> Result<(), BoxError> {
        let mut pending: Vec<&'static str> = self.clients.keys().copied().collect();
        pending.sort();
        while !pending.is_empty() {
            let waiting_for = format!("{} to connect and sync", pending.join(", "));
            match self.next(&waiting_for).await? {
                (user, Event::Connected { .. }) => {
                    println!("{user:<5} connected (client id {user}-chat-example)");
                }
                (user, Event::Disconnected { reason }) if pending.contains(&user) => {
                    return Err(self.explain(user, &reason));
                }
                (user, Event::Message { seq, from, .. }) => {
                    println!("{user:<5} history: seq {seq} from {from}");
                }
                (user, Event::Synced { next }) => {
                    println!("{user:<5} inbox synced (next seq {next})");
                    pending.retain(|u| *u != user);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sends one message of the conversation and waits until it is sent (stored in every
    /// recipient's inbox) and has reached every inbox it must, printing what arrives.
    /// With `read_by`, that user reads it once it arrives, and the sender waits for the
    /// read receipt.
    async fn exchange(
        &mut self,
        step: &Step,
        read_by: Option<&'static str>,
    ) -> Result<Vec<Received>, BoxError> {
        println!();
        println!("{:<5} -> {}: {:?}", step.sender, step.topic, step.text);
        let client = self.client(step.sender)?;
        let local = match step.topic.split_once('/') {
            Some(("dm", to)) => client.send_dm(to, step.text).await?,
            Some(("group", gid)) => client.send_group(gid, step.text).await?,
            _ => return Err(format!("not a chat topic: {}", step.topic).into()),
        };
        let mut sent = false;
        let mut receipt = read_by.is_none();
        let mut missing = step.deliveries.clone();
        let mut received = Vec::new();
        while !sent || !receipt || !missing.is_empty() {
            let mut waiting_for: Vec<String> = missing
                .iter()
                .map(|(user, topic)| format!("{user} to receive {topic}"))
                .collect();
            if !sent {
                waiting_for.push(format!("{}'s message to be sent", step.sender));
            }
            if !receipt {
                waiting_for.push(format!("{}'s read receipt", read_by.unwrap_or_default()));
            }
            match self.next(&waiting_for.join(", ")).await? {
                (
                    user,
                    Event::SendState {
                        local_id, state, ..
                    },
                ) if user == step.sender && local_id == local => {
                    match state {
                        SendState::Sending => {}
                        SendState::Sent => {
                            println!("{user:<5} sent: stored in every recipient's inbox");
                            sent = true;
                        }
                        SendState::Failed { reason } => {
                            // E.g. NotAuthorized: not a member of the group.
                            return Err(format!(
                                "the broker refused {user}'s message to {}: {reason}",
                                step.topic
                            )
                            .into());
                        }
                    }
                }
                (user, Event::Receipt { peer, id }) if Some(peer.as_str()) == read_by => {
                    println!("{user:<5} <- {peer} has read up to message {id}");
                    receipt = true;
                }
                (
                    user,
                    Event::Presence {
                        user: whom, online, ..
                    },
                ) => {
                    println!(
                        "{user:<5} <- {whom} is {}",
                        if online { "online" } else { "offline" }
                    );
                }
                (
                    user,
                    Event::Message {
                        seq,
                        from,
                        conversation,
                        outgoing,
                        payload,
                        ..
                    },
                ) => {
                    let topic = inbox_topic(user, &from, &conversation, outgoing);
                    let payload = String::from_utf8_lossy(&payload).into_owned();
                    println!("{user:<5} <- {topic}: {payload:?} (from: {from}, seq: {seq})");
                    let expected = missing.iter().position(|(u, t)| *u == user && *t == topic);
                    let Some(index) = expected else {
                        // Somebody else is chatting with alice or bob right now.
                        println!("      (not part of this example)");
                        continue;
                    };
                    if payload != step.text || from != step.sender {
                        return Err(format!(
                            "{user} got {payload:?} from {from} on {topic}, expected {:?} from {}",
                            step.text, step.sender
                        )
                        .into());
                    }
                    if read_by == Some(user) {
                        // Read at once: the broker keeps the position and tells the sender.
                        if let Conversation::Direct { peer } = &conversation {
                            self.client(user)?.read_dm(peer, seq).await?;
                        }
                    }
                    missing.swap_remove(index);
                    received.push(Received {
                        user: user.to_string(),
                        topic,
                        payload,
                        from,
                        seq,
                    });
                }
                _ => {}
            }
        }
        Ok(received)
    }

    fn client(&self, user: &str) -> Result<&Client, BoxError> {
        self.clients
            .get(user)
            .ok_or_else(|| format!("{user} is not connected").into())
    }

    /// Says goodbye (DISCONNECT) for every client.
    async fn disconnect(self) {
        for client in self.clients.values() {
            let _ = client.disconnect().await;
        }
    }
}

/// The inbox topic a message arrived on (docs/chat.md), rebuilt from what the client
/// reports.
fn inbox_topic(me: &str, from: &str, conversation: &Conversation, outgoing: bool) -> String {
    match conversation {
        Conversation::Direct { peer } if outgoing => format!("inbox/{me}/sent/{peer}"),
        Conversation::Direct { peer } => format!("inbox/{me}/dm/{peer}"),
        Conversation::Group { gid } => format!("inbox/{me}/group/{gid}/{from}"),
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
