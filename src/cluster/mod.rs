//! One tern node of several, on NATS JetStream (`[cluster] engine = "nats"`); nothing here
//! runs with the default `engine = "none"`.
//!
//! A node joins by connecting to NATS as a client ([`join`]): there is no membership
//! protocol of tern's own. Live traffic crosses nodes on core NATS subjects ([`live`],
//! [`subject`]): the router forwards the plain messages and broadcasts it routes, and
//! subscribes (through NATS) to what its clients' filters match, so NATS sends a node only
//! what it has subscribers for. Retained messages live in a JetStream stream every node
//! follows ([`retained`]). Chat messages are numbered and kept in the users' inbox logs,
//! JetStream streams every node appends to and reads ([`inbox`]). Each node holds a lease
//! that fences it when it lapses ([`lease`]), and a client id is connected on one node at
//! a time ([`sessions`]). The router stays the one
//! owner of local state and knows nothing of NATS: it talks to this module through plain
//! data (`router::Peers`).

mod devices;
mod directory;
mod inbox;
mod inbox_chunk;
mod inbox_dedupe;
mod inbox_trim;
mod join;
mod lease;
mod live;
mod lookup;
mod messages;
mod retained;
mod session_state;
mod session_sweep;
mod sessions;
mod status;
mod subject;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_storage::StoredMessage;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

pub(crate) use directory::Directory;
pub use directory::DirectoryError;
pub use inbox::InboxError;
pub(crate) use inbox::InboxReader;
pub(crate) use join::join;
pub use join::JoinError;
pub(crate) use lookup::SessionFinder;
pub(crate) use messages::MessageLog;
pub(crate) use messages::MessageLogError;
pub use retained::RetainedError;
pub(crate) use session_state::SessionStates;
pub(crate) use sessions::Registry;
pub use status::ClusterStatus;
pub(crate) use status::{StatusError, ThisNode};

use crate::config::{ClusterConfig, ImConfig};
use crate::protocol::Message;
use crate::router::{
    Forward, InboxAppend, Interest, NodeLease, Peers, RouterHandle, SessionChange, SessionChanges,
};

/// Why a node that joined could not start carrying traffic.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot subscribe to the other nodes' broadcasts: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error(transparent)]
    Retained(#[from] RetainedError),
    #[error(transparent)]
    Messages(#[from] MessageLogError),
    #[error(transparent)]
    Inbox(#[from] InboxError),
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// A key-value bucket of the cluster that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot create or open the bucket {name}: {source}")]
pub struct BucketError {
    name: String,
    #[source]
    source: async_nats::Error,
}

/// The wait between attempts at something NATS refused: doubling from `first` up to
/// `max`.
struct Backoff {
    next: Duration,
    max: Duration,
}

/// How long one attempt at an append to a stream (or the read that precedes it) may wait
/// for its answer: a request sent while the stream elects a new leader gets none, and is
/// sent again rather than waited on for the client's whole request timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

impl Backoff {
    fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    /// The waits between attempts at an append: from 20 ms, doubling up to 1 s.
    fn for_appends() -> Backoff {
        Backoff::new(Duration::from_millis(20), Duration::from_secs(1))
    }

    /// Sleeps before the next attempt; `Err(())`, without sleeping, when the attempt
    /// would come after `deadline`.
    async fn sleep_before(&mut self, deadline: tokio::time::Instant) -> Result<(), ()> {
        let wait = self.next();
        if tokio::time::Instant::now() + wait > deadline {
            return Err(());
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// The wait before the next attempt (the one after waits twice as long, up to `max`).
    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

/// A bucket of the cluster's: the last value of each key only, `replicas` copies.
fn bucket(name: &str, replicas: usize) -> async_nats::jetstream::kv::Config {
    async_nats::jetstream::kv::Config {
        bucket: name.to_string(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Opens the bucket `config` names, creating it as configured if it does not exist.
async fn open_bucket(
    jetstream: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> Result<async_nats::jetstream::kv::Store, BucketError> {
    let name = config.bucket.clone();
    if let Ok(store) = jetstream.get_key_value(name.as_str()).await {
        return Ok(store);
    }
    jetstream
        .create_key_value(config)
        .await
        .map_err(|e| BucketError {
            name,
            source: e.into(),
        })
}

/// A node's link to the others: the NATS client and the tasks that carry live traffic.
pub(crate) struct Link {
    client: async_nats::Client,
    /// For the shared groups' queue subscriptions (see `live.rs`).
    shared_client: async_nats::Client,
    settings: Settings,
    forward: mpsc::Receiver<Forward>,
    inbox: mpsc::Receiver<InboxAppend>,
    interest: Arc<Interest>,
    lease: Arc<NodeLease>,
    session_changes: (SessionChanges, mpsc::Receiver<SessionChange>),
}

/// The running link's tasks.
pub(crate) struct LinkTasks {
    tasks: Vec<JoinHandle<()>>,
    inbox: InboxReader,
    sessions: Registry,
    session_states: SessionStates,
    /// The node's connection, lease and directory (what the admin API uses too).
    admin: ClusterAdmin,
}

/// What the admin API of a cluster node uses: the cluster's directory and state.
#[derive(Clone)]
pub(crate) struct ClusterAdmin {
    client: async_nats::Client,
    lease: lease::Lease,
    directory: Directory,
}

impl ClusterAdmin {
    /// Users and groups, for operators' changes.
    pub(crate) fn directory(&self) -> &Directory {
        &self.directory
    }

    /// This node's id.
    pub(crate) fn node(&self) -> &str {
        &self.lease.node
    }

    /// What the other nodes hold of `client_id` (each answer the JSON list its
    /// [`SessionFinder`] made).
    pub(crate) async fn find_sessions(
        &self,
        client_id: &str,
    ) -> Result<Vec<bytes::Bytes>, async_nats::Error> {
        lookup::ask(
            &self.client,
            self.lease.nodes(),
            &self.lease.node,
            client_id,
        )
        .await
    }

    /// The cluster as this node sees it.
    pub(crate) async fn status(&self) -> Result<ClusterStatus, StatusError> {
        let this_node = ThisNode {
            node: self.lease.node.to_string(),
            epoch: self.lease.epoch().to_string(),
            lease_holds: self.lease.view.holds(),
        };
        status::gather(&self.client, Some(this_node)).await
    }
}

/// The cluster's status as a command on a stopped node reads it: connects to NATS as
/// `config` says (once, without retrying).
pub(crate) async fn status_from(
    config: &ClusterConfig,
) -> Result<ClusterStatus, StatusOrJoinError> {
    let client = join::attempt(config).await?;
    Ok(status::gather(&client, None).await?)
}

/// Why [`status_from`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StatusOrJoinError {
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Status(#[from] StatusError),
}

impl Link {
    /// Joins the cluster (see [`join`]) and returns the link with the router's side of it.
    pub(crate) async fn join(config: &ClusterConfig) -> Result<(Link, Peers), JoinError> {
        let (client, shared_client) = join(config).await?;
        let (forward_tx, forward) = mpsc::channel(config.client_capacity);
        let (inbox_tx, inbox) = mpsc::channel(config.client_capacity);
        let interest = Arc::new(Interest::default());
        // Lapsed until the link takes it (see `start`): the router does nothing for
        // clients before.
        let lease = Arc::new(NodeLease::default());
        let (sessions_tx, sessions_rx) = mpsc::channel(session_state::MAX_CHANGES);
        let sessions_tx = SessionChanges::new(sessions_tx);
        let peers = Peers {
            forward: forward_tx,
            interest: interest.clone(),
            inbox: inbox_tx,
            lease: lease.clone(),
            sessions: sessions_tx.clone(),
        };
        Ok((
            Link {
                client,
                shared_client,
                settings: Settings {
                    node_id: config.node_id.clone(),
                    replicas: config.replicas,
                    shards: config.shards,
                    node_ttl: Duration::from_millis(config.node_ttl_ms),
                    append_timeout: Duration::from_millis(config.append_timeout_ms),
                    append_linger: Duration::from_micros(config.append_linger_us),
                    message_retention: Duration::from_secs(config.message_retention_secs),
                    message_retention_bytes: i64::try_from(config.message_retention_bytes)
                        .unwrap_or(i64::MAX),
                    session_sweep: Duration::from_secs(config.session_sweep_secs),
                    inbox_trim: Duration::from_secs(config.inbox_trim_secs),
                },
                forward,
                inbox,
                interest,
                lease,
                session_changes: (sessions_tx, sessions_rx),
            },
            peers,
        ))
    }

    /// Starts carrying traffic for `router`, once the node holds its lease and the
    /// cluster's users, groups and retained messages are in its store (`writer`'s). Broadcasts from other nodes take
    /// permits of `broadcasts`, as local ones do.
    pub(crate) async fn start(
        self,
        router: RouterHandle,
        writer: tern_storage::Writer,
        broadcasts: Arc<Semaphore>,
        im: &ImConfig,
        finder: SessionFinder,
        access: Arc<crate::access::Access>,
    ) -> Result<LinkTasks, LinkError> {
        let Link {
            client,
            shared_client,
            settings,
            forward,
            inbox,
            interest,
            lease,
            session_changes,
        } = self;
        let node_id = &settings.node_id;
        let jetstream = jetstream_context(&client);
        // Streams and buckets are made or opened until all are: right after a NATS
        // cluster starts, JetStream may have no leader yet.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let opened = loop {
            match open_state(
                &client, &jetstream, &router, &writer, im, &settings, &access,
            )
            .await
            {
                Ok(opened) => break opened,
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(node = %node_id, retry_in_ms = wait.as_millis(),
                        "cluster state not ready, accepting no clients: {e}");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let Opened {
            nodes,
            devices,
            sessions,
            session_state,
            directory,
            follow_directory,
            inbox_streams,
            message_log,
            retained_log,
            follow_retained,
        } = opened;
        let (changes_tx, changes_rx) = session_changes;
        let session_states = SessionStates::new(
            session_state.clone(),
            client.clone(),
            node_id,
            changes_tx,
            interest.clone(),
            message_log.clone(),
        );
        let lease = lease::Lease::new(node_id, lease, nodes);
        let registry = Registry::new(sessions, &client, lease.clone(), devices.clone());
        let takeovers = client.subscribe(subject::takeover(node_id)).await?;
        let evictions = client.subscribe(subject::evict(node_id)).await?;
        let moved = client.subscribe(subject::moved(node_id)).await?;
        let lookups = lookup::subscribe(&client).await?;
        let revision = lease.acquire().await;
        let broadcast_subscriber = client.subscribe(subject::BROADCASTS).await?;
        let turns = |chore, every| {
            lease::Turns::new(
                chore,
                lease.nodes().clone(),
                node_id.clone(),
                lease.view.clone(),
                every,
            )
        };
        let mut tasks = vec![
            follow_retained,
            follow_directory,
            tokio::spawn(live::forward(
                client.clone(),
                retained_log,
                message_log.clone(),
                forward,
            )),
            tokio::spawn(live::follow_interest(
                client.clone(),
                shared_client,
                Arc::from(node_id.as_str()),
                interest,
                router.clone(),
                broadcasts.clone(),
            )),
            tokio::spawn(live::relay(
                broadcast_subscriber,
                None,
                None,
                router.clone(),
                broadcasts,
            )),
            tokio::spawn(inbox::append(
                inbox_streams.clone(),
                inbox,
                lease.view.clone(),
                router.metrics().ok(),
            )),
            tokio::spawn(lease::keep(lease.clone(), revision, router.clone())),
            tokio::spawn(registry.clone().answer_takeovers(takeovers, router.clone())),
            tokio::spawn(lookup::answer(client.clone(), lookups, finder)),
            tokio::spawn(session_state::forget_moved(moved, router.clone())),
            tokio::spawn(inbox_trim::trim_every(
                inbox_streams.clone(),
                turns("inbox trim", settings.inbox_trim),
                lease.view.clone(),
                settings.inbox_trim,
                // The appenders recognise resends by the ids the logs hold: an entry stays
                // for the dedupe window, whatever the age.
                Duration::from_secs(im.inbox_max_age_secs.max(im.dedup_window_secs)),
                router.metrics().ok(),
            )),
            tokio::spawn(session_sweep::sweep_every(
                session_state.clone(),
                turns("session sweep", settings.session_sweep),
            )),
            tokio::spawn(session_state::write(
                session_state,
                node_id.clone(),
                changes_rx,
            )),
        ];
        if let Some(devices) = devices {
            tasks.push(tokio::spawn(devices.answer_evictions(evictions)));
        }
        // The broadcasts' subscription is registered before the node takes clients.
        if let Err(e) = client.flush().await {
            tracing::warn!("cluster: flushing the first subscriptions: {e}");
        }
        Ok(LinkTasks {
            tasks,
            inbox: InboxReader::new(inbox_streams),
            sessions: registry,
            session_states,
            admin: ClusterAdmin {
                client,
                lease,
                directory,
            },
        })
    }
}

/// The cluster's settings the link's state is made with.
struct Settings {
    node_id: String,
    replicas: usize,
    shards: u32,
    node_ttl: Duration,
    append_timeout: Duration,
    append_linger: Duration,
    message_retention: Duration,
    message_retention_bytes: i64,
    session_sweep: Duration,
    inbox_trim: Duration,
}

/// The streams and buckets a node opened, and the tasks that follow them.
struct Opened {
    nodes: lease::Nodes,
    devices: Option<devices::DeviceLists>,
    /// The session registry's bucket.
    sessions: async_nats::jetstream::kv::Store,
    /// The persistent sessions' bucket (see `session_state.rs`).
    session_state: async_nats::jetstream::kv::Store,
    directory: Directory,
    follow_directory: JoinHandle<()>,
    inbox_streams: inbox::InboxStreams,
    message_log: MessageLog,
    retained_log: retained::RetainedLog,
    follow_retained: JoinHandle<()>,
}

/// Makes or opens every stream and bucket, and copies the users, groups and retained
/// messages the cluster holds into this node.
async fn open_state(
    client: &async_nats::Client,
    jetstream: &async_nats::jetstream::Context,
    router: &RouterHandle,
    writer: &tern_storage::Writer,
    im: &ImConfig,
    settings: &Settings,
    access: &Arc<crate::access::Access>,
) -> Result<Opened, LinkError> {
    let replicas = settings.replicas;
    let nodes = lease::Nodes::open(jetstream, replicas, settings.node_ttl).await?;
    let sessions = sessions::open_bucket(jetstream, replicas).await?;
    let session_state = session_state::open_bucket(jetstream, replicas).await?;
    let devices = match im.max_devices_per_user {
        0 => None,
        max => Some(
            devices::DeviceLists::open(jetstream, client, router.clone(), replicas, max).await?,
        ),
    };
    let inbox_streams = inbox::InboxStreams::open(
        jetstream,
        settings.shards,
        replicas,
        im,
        settings.append_timeout,
        settings.append_linger,
    )
    .await?;
    let message_log = MessageLog::open(
        jetstream,
        &settings.node_id,
        messages::Retention {
            replicas,
            max_age: settings.message_retention,
            max_bytes: settings.message_retention_bytes,
            retry_for: settings.append_timeout,
        },
    )
    .await?;
    let (retained_log, retained_stream) = retained::RetainedLog::open(client, replicas).await?;
    // Last, the two that start tasks: a failure after the first stops its task.
    let (directory, follow_directory) = Directory::open(
        jetstream,
        replicas,
        im.max_group_members,
        router.clone(),
        writer.clone(),
        access.clone(),
    )
    .await?;
    let follow_retained = match retained::follow(&retained_stream, router.clone()).await {
        Ok(task) => task,
        Err(e) => {
            follow_directory.abort();
            return Err(e.into());
        }
    };
    tracing::debug!(node = %settings.node_id, "cluster state opened");
    Ok(Opened {
        nodes,
        devices,
        sessions,
        session_state,
        directory,
        follow_directory,
        inbox_streams,
        message_log,
        retained_log,
        follow_retained,
    })
}

/// The node's JetStream context: appends wait (rather than fail) while many are in
/// flight.
fn jetstream_context(client: &async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::ContextBuilder::new()
        .backpressure_on_inflight(true)
        .build(client.clone())
}

impl LinkTasks {
    /// Reads users' inbox logs (`$sync`).
    pub(crate) fn inbox(&self) -> InboxReader {
        self.inbox.clone()
    }

    /// Which node each client id is connected on.
    pub(crate) fn sessions(&self) -> Registry {
        self.sessions.clone()
    }

    /// The persistent sessions the cluster keeps for whichever node resumes them.
    pub(crate) fn session_states(&self) -> SessionStates {
        self.session_states.clone()
    }

    /// What the admin API uses.
    pub(crate) fn admin(&self) -> ClusterAdmin {
        self.admin.clone()
    }

    /// The node's lease, as connections check it.
    pub(crate) fn lease(&self) -> Arc<NodeLease> {
        self.admin.lease.view.clone()
    }

    /// Stops the link once the router has stopped: what is buffered is flushed first.
    pub(crate) async fn stop(self) {
        if let Err(e) = self.admin.client.flush().await {
            tracing::debug!("cluster: final flush: {e}");
        }
        for task in self.tasks {
            task.abort();
        }
        // Every connection is closed: the other nodes need not wait for the lease to
        // expire before they take this node's clients.
        self.admin.lease.release().await;
    }
}

/// A message as nodes pass it to each other (live, and in the retained stream): its
/// storage record, one versioned format for both.
fn encode(message: &Message) -> Result<Bytes, tern_storage::StorageError> {
    message.to_stored().encode().map(Bytes::from)
}

/// What [`encode`] made, or what is wrong with it.
fn decode(record: Bytes) -> Result<Message, String> {
    StoredMessage::decode(record)
        .map_err(|e| e.to_string())
        .and_then(Message::from_stored)
}
