//! The operator commands (`tern retained|sessions|queue|user|group|inbox ...`): where they
//! run, and what they print.
//!
//! # Live or offline
//!
//! 1. `--admin URL` given: through that API, always.
//! 2. Else, if `{data_dir}/admin.addr` exists and a broker answers `GET /v1/health` there:
//!    through the API (*live*).
//! 3. Else (*offline*): the data directory is opened directly, read-only for inspection, and
//!    read-write for changes. A read-write open that finds the database locked means a
//!    broker is running without a reachable API; the command then fails and says so,
//!    rather than write underneath it.
//!
//! Both modes build the same [`model`] views with the same functions, and changes go
//! through the same checks ([`user_ops`], [`Groups::apply`]), so a command prints the same
//! thing either way.
//!
//! # Exit codes
//!
//! 0: done. 1: operational error (no such user/group/session/topic, already exists, broker
//! unreachable, storage failure). 2: usage (bad arguments or values, bad config file).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use tern_storage::{Op, RocksStore, StorageError, Store};

use super::client::{encode_segment, ApiClient, ClientError};
use super::model::{self, Deleted, GroupView, UserView};
use super::{render, token};
use crate::cli::{
    ClusterCommand, Command, GroupCommand, InboxCommand, OpsArgs, QueueCommand, RetainedCommand,
    SessionsCommand, UserCommand,
};
use crate::config::Config;
use crate::im::directory::{user_ops, ChangeError, GroupChange, Groups, UserChange};
use crate::protocol::now_ms;

/// Environment variable holding the admin token.
pub const TOKEN_ENV: &str = "TERN_ADMIN_TOKEN";

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Refused by the broker's rules (same messages live and offline).
    #[error("{0}")]
    Change(#[from] ChangeError),
    #[error("{0}")]
    Client(#[from] ClientError),
    /// Bad arguments or configuration: exit code 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else that stopped the command: exit code 1.
    #[error("{0}")]
    Failed(String),
}

impl OpsError {
    pub fn exit_code(&self) -> u8 {
        match self {
            OpsError::Usage(_)
            | OpsError::Change(ChangeError::Invalid(_))
            | OpsError::Client(ClientError::Refused(ChangeError::Invalid(_))) => 2,
            _ => 1,
        }
    }
}

/// One operator action, as parsed from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    RetainedList {
        filter: String,
    },
    RetainedGet {
        topic: String,
    },
    RetainedDelete {
        topic: String,
    },
    RetainedStats {
        top: usize,
    },
    SessionsList,
    SessionShow {
        client_id: String,
    },
    QueuePeek {
        client_id: String,
        limit: usize,
    },
    UserAdd {
        user: String,
        password: String,
        operator: bool,
    },
    UserDel {
        user: String,
    },
    UserPasswd {
        user: String,
        password: String,
    },
    UserList,
    Group(GroupChange),
    GroupList,
    GroupShow {
        gid: String,
    },
    InboxTail {
        user: String,
        limit: usize,
    },
    ClusterStatus,
    /// Create the data directory's database and lasting admin token.
    Init,
    /// A consistent copy of the database into `dir` (absolute, not existing yet).
    Backup {
        dir: PathBuf,
    },
}

impl Action {
    /// Whether the action changes state (offline: needs the database read-write).
    pub fn changes(&self) -> bool {
        matches!(
            self,
            Action::RetainedDelete { .. }
                | Action::UserAdd { .. }
                | Action::UserDel { .. }
                | Action::UserPasswd { .. }
                | Action::Group(_)
                | Action::Backup { .. }
        )
    }
}

/// What an action produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    RetainedList {
        filter: String,
        list: Vec<model::RetainedView>,
    },
    Retained(model::RetainedView),
    RetainedStats(model::RetainedStats),
    Sessions(Vec<model::SessionView>),
    Session(model::SessionView),
    Queue(model::QueuePeek),
    Users(Vec<UserView>),
    /// A user added (`created`) or whose password changed.
    User {
        user: UserView,
        created: bool,
    },
    Groups(Vec<GroupView>),
    /// A group shown, or changed by `change`.
    Group {
        group: GroupView,
        change: Option<GroupChange>,
    },
    /// `what` ("user", "group", "retained message on") was deleted.
    Deleted {
        what: &'static str,
        deleted: Deleted,
    },
    Inbox {
        user: String,
        list: Vec<model::InboxView>,
    },
    Cluster(Box<model::ClusterStatus>),
    /// A data directory initialised: its path and its admin token file (`key_created`:
    /// made now rather than found).
    Initialised {
        dir: String,
        key_file: String,
        key_created: bool,
    },
    /// A backup written to `dir`.
    Backup(model::BackupView),
}

impl Outcome {
    /// The JSON the admin API answers with.
    pub fn json(&self) -> Result<String, serde_json::Error> {
        fn pretty(v: &impl Serialize) -> Result<String, serde_json::Error> {
            serde_json::to_string_pretty(v)
        }
        match self {
            Outcome::RetainedList { list, .. } => pretty(list),
            Outcome::Retained(r) => pretty(r),
            Outcome::RetainedStats(s) => pretty(s),
            Outcome::Sessions(s) => pretty(s),
            Outcome::Session(s) => pretty(s),
            Outcome::Queue(q) => pretty(q),
            Outcome::Users(u) => pretty(u),
            Outcome::User { user, .. } => pretty(user),
            Outcome::Groups(g) => pretty(g),
            Outcome::Group { group, .. } => pretty(group),
            Outcome::Deleted { deleted, .. } => pretty(deleted),
            Outcome::Inbox { list, .. } => pretty(list),
            Outcome::Cluster(status) => pretty(status),
            Outcome::Initialised {
                dir,
                key_file,
                key_created,
            } => pretty(&serde_json::json!({
                "dir": dir, "key_file": key_file, "key_created": key_created
            })),
            Outcome::Backup(backup) => pretty(backup),
        }
    }

    /// The human-readable text.
    pub fn text(&self) -> String {
        match self {
            Outcome::RetainedList { filter, list } => render::retained_list(list, filter),
            Outcome::Retained(r) => render::retained(r),
            Outcome::RetainedStats(s) => render::retained_stats(s),
            Outcome::Sessions(s) => render::sessions(s),
            Outcome::Session(s) => render::session(s),
            Outcome::Queue(q) => render::queue(q),
            Outcome::Users(u) => render::users(u),
            Outcome::User { user, created } => match (created, user.operator) {
                (true, true) => format!("added user {} (operator)\n", user.user),
                (true, false) => format!("added user {}\n", user.user),
                (false, _) => format!("changed the password of {}\n", user.user),
            },
            Outcome::Groups(g) => render::groups(g),
            Outcome::Group { group, change } => {
                let n = match group.members.len() {
                    1 => "1 member".to_string(),
                    n => format!("{n} members"),
                };
                match change {
                    None => render::group(group),
                    Some(GroupChange::Create { .. }) if group.members.is_empty() => {
                        format!("created group {} (no members)\n", group.gid)
                    }
                    Some(GroupChange::Create { .. }) => format!(
                        "created group {} with {n}: {}\n",
                        group.gid,
                        group.members.join(", ")
                    ),
                    Some(GroupChange::Add { user, .. }) => {
                        format!("added {user} to {} ({n})\n", group.gid)
                    }
                    Some(GroupChange::Remove { user, .. }) => {
                        format!("removed {user} from {} ({n})\n", group.gid)
                    }
                    Some(GroupChange::Delete { .. }) => format!("deleted group {}\n", group.gid),
                }
            }
            Outcome::Deleted { what, deleted } => format!("deleted {what} {}\n", deleted.deleted),
            Outcome::Inbox { user, list } => render::inbox(user, list),
            Outcome::Cluster(status) => render::cluster(status),
            Outcome::Initialised {
                dir,
                key_file,
                key_created,
            } => format!(
                "initialised {dir}\nadmin token {} {key_file} (the API's bearer token while [admin] token is empty)\n",
                if *key_created { "written to" } else { "kept in" }
            ),
            Outcome::Backup(backup) => format!("backup written to {}\n", backup.dir),
        }
    }
}

/// Runs an operator command (any subcommand but `serve`) and prints its outcome.
pub fn run(command: Command) -> ExitCode {
    let (ops, action) = match parse(command) {
        Ok(parsed) => parsed,
        Err(e) => return fail(&e),
    };
    match execute(&ops, action) {
        Ok(outcome) => {
            let printed = if ops.json {
                outcome
                    .json()
                    .map(|mut json| {
                        json.push('\n');
                        json
                    })
                    .map_err(|e| OpsError::Failed(format!("cannot encode JSON: {e}")))
            } else {
                Ok(outcome.text())
            };
            match printed {
                Ok(text) => {
                    let mut stdout = std::io::stdout().lock();
                    // A closed pipe (`| head`) is not an error worth reporting.
                    let _ = stdout
                        .write_all(text.as_bytes())
                        .and_then(|()| stdout.flush());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &OpsError) -> ExitCode {
    eprintln!("tern: {e}");
    ExitCode::from(e.exit_code())
}

/// The options and the action of a command line; reads a password from standard input when
/// `--password` is not given.
pub fn parse(command: Command) -> Result<(OpsArgs, Action), OpsError> {
    Ok(match command {
        Command::Serve(_) => {
            return Err(OpsError::Usage(
                "`serve` is not an operator command".to_string(),
            ))
        }
        Command::Retained(args) => (
            args.ops,
            match args.command {
                RetainedCommand::List { filter } => Action::RetainedList { filter },
                RetainedCommand::Get { topic } => Action::RetainedGet { topic },
                RetainedCommand::Delete { topic } => Action::RetainedDelete { topic },
                RetainedCommand::Stats { top } => Action::RetainedStats { top },
            },
        ),
        Command::Sessions(args) => (
            args.ops,
            match args.command {
                SessionsCommand::List => Action::SessionsList,
                SessionsCommand::Show { client_id } => Action::SessionShow { client_id },
            },
        ),
        Command::Queue(args) => (
            args.ops,
            match args.command {
                QueueCommand::Peek { client_id, limit } => Action::QueuePeek { client_id, limit },
            },
        ),
        Command::User(args) => (
            args.ops,
            match args.command {
                UserCommand::Add {
                    user,
                    password,
                    operator,
                } => Action::UserAdd {
                    password: password_or_stdin(password, &user)?,
                    user,
                    operator,
                },
                UserCommand::Del { user } => Action::UserDel { user },
                UserCommand::Passwd { user, password } => Action::UserPasswd {
                    password: password_or_stdin(password, &user)?,
                    user,
                },
                UserCommand::List => Action::UserList,
            },
        ),
        Command::Group(args) => (
            args.ops,
            match args.command {
                GroupCommand::Create { gid, members } => {
                    Action::Group(GroupChange::Create { gid, members })
                }
                GroupCommand::Delete { gid } => Action::Group(GroupChange::Delete { gid }),
                GroupCommand::Add { gid, user } => Action::Group(GroupChange::Add { gid, user }),
                GroupCommand::Remove { gid, user } => {
                    Action::Group(GroupChange::Remove { gid, user })
                }
                GroupCommand::List => Action::GroupList,
                GroupCommand::Show { gid } => Action::GroupShow { gid },
            },
        ),
        Command::Inbox(args) => (
            args.ops,
            match args.command {
                InboxCommand::Tail { user, limit } => Action::InboxTail { user, limit },
            },
        ),
        Command::Cluster(args) => (
            args.ops,
            match args.command {
                ClusterCommand::Status => Action::ClusterStatus,
            },
        ),
        Command::Init(args) => (args.ops, Action::Init),
        Command::Backup(args) => {
            // The broker may run elsewhere than this command's working directory.
            let dir = std::path::absolute(&args.dir).map_err(|e| {
                OpsError::Usage(format!("backup directory {}: {e}", args.dir.display()))
            })?;
            (args.ops, Action::Backup { dir })
        }
    })
}

/// The password from `--password`, or the first line of standard input (prompted for on a
/// terminal).
fn password_or_stdin(given: Option<String>, user: &str) -> Result<String, OpsError> {
    if let Some(password) = given {
        return Ok(password);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for {user} (shown as typed): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).map_err(|e| {
        OpsError::Usage(format!("cannot read the password from standard input: {e}"))
    })?;
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        return Err(OpsError::Usage(
            "no password: give --password or write it on standard input".to_string(),
        ));
    }
    Ok(password.to_string())
}

/// The configuration the command works with: `--config` (or the defaults), then
/// `--data-dir`.
pub fn load_config(ops: &OpsArgs) -> Result<Config, OpsError> {
    let mut config = match &ops.config {
        Some(path) => Config::load(path).map_err(|e| OpsError::Usage(e.to_string()))?,
        None => Config::default(),
    };
    if let Some(dir) = &ops.data_dir {
        config.data_dir = dir.clone();
    }
    Ok(config)
}

/// Where a command runs.
#[derive(Debug)]
pub enum Backend {
    Live(ApiClient),
    Offline(PathBuf),
}

/// Picks live or offline as the [module docs](self) describe.
pub fn choose_backend(ops: &OpsArgs, config: &Config) -> Backend {
    let dir = &config.data_dir;
    let token = ops
        .token
        .clone()
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .filter(|t| !t.is_empty())
        .or_else(|| Some(config.admin.token.clone()).filter(|t| !t.is_empty()))
        .or_else(|| token::read_token(dir).ok().flatten());
    if let Some(url) = &ops.admin {
        let url = if url.contains("://") {
            url.clone()
        } else {
            format!("http://{url}")
        };
        return Backend::Live(ApiClient::new(&url, token));
    }
    match token::read_addr(dir) {
        Ok(Some(mut addr)) => {
            // A broker listening on all interfaces is reached on loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            let client = ApiClient::new(&format!("http://{addr}"), token);
            match client.probe() {
                Ok(_) => Backend::Live(client),
                // Left behind by a broker that did not stop cleanly.
                Err(_) => Backend::Offline(dir.clone()),
            }
        }
        Ok(None) => Backend::Offline(dir.clone()),
        Err(e) => {
            eprintln!("tern: warning: {e}; using the data directory");
            Backend::Offline(dir.clone())
        }
    }
}

/// Runs `action` where [`choose_backend`] says.
pub fn execute(ops: &OpsArgs, action: Action) -> Result<Outcome, OpsError> {
    let config = load_config(ops)?;
    if action == Action::Init {
        return init(&config.data_dir);
    }
    match choose_backend(ops, &config) {
        Backend::Live(client) => live(&client, action),
        Backend::Offline(dir) => offline(&config, &dir, action),
    }
}

fn seg(s: &str) -> String {
    encode_segment(s)
}

/// Runs an action through the admin API.
pub fn live(client: &ApiClient, action: Action) -> Result<Outcome, OpsError> {
    Ok(match action {
        Action::RetainedList { filter } => Outcome::RetainedList {
            list: client.get("/v1/retained", &[("filter", &filter)])?,
            filter,
        },
        Action::RetainedGet { topic } => {
            Outcome::Retained(client.get("/v1/retained/message", &[("topic", &topic)])?)
        }
        Action::RetainedDelete { topic } => Outcome::Deleted {
            what: "the retained message on",
            deleted: client.delete("/v1/retained/message", &[("topic", &topic)])?,
        },
        Action::RetainedStats { top } => {
            Outcome::RetainedStats(client.get("/v1/retained/stats", &[("top", &top.to_string())])?)
        }
        Action::SessionsList => Outcome::Sessions(client.get("/v1/sessions", &[])?),
        Action::SessionShow { client_id } => {
            Outcome::Session(client.get(&format!("/v1/sessions/{}", seg(&client_id)), &[])?)
        }
        Action::QueuePeek { client_id, limit } => Outcome::Queue(client.get(
            &format!("/v1/sessions/{}/queue", seg(&client_id)),
            &[("limit", &limit.to_string())],
        )?),
        Action::UserAdd {
            user,
            password,
            operator,
        } => Outcome::User {
            user: client.send(
                false,
                "/v1/users",
                &serde_json::json!({ "user": user, "password": password, "operator": operator }),
            )?,
            created: true,
        },
        Action::UserDel { user } => Outcome::Deleted {
            what: "user",
            deleted: client.delete(&format!("/v1/users/{}", seg(&user)), &[])?,
        },
        Action::UserPasswd { user, password } => Outcome::User {
            user: client.send(
                true,
                &format!("/v1/users/{}/password", seg(&user)),
                &serde_json::json!({ "password": password }),
            )?,
            created: false,
        },
        Action::UserList => Outcome::Users(client.get("/v1/users", &[])?),
        Action::Group(change) => match &change {
            GroupChange::Create { gid, members } => Outcome::Group {
                group: client.send(
                    false,
                    "/v1/groups",
                    &serde_json::json!({ "gid": gid, "members": members }),
                )?,
                change: Some(change),
            },
            GroupChange::Delete { gid } => Outcome::Deleted {
                what: "group",
                deleted: client.delete(&format!("/v1/groups/{}", seg(gid)), &[])?,
            },
            GroupChange::Add { gid, user } => Outcome::Group {
                group: client.send(
                    true,
                    &format!("/v1/groups/{}/members/{}", seg(gid), seg(user)),
                    &serde_json::json!({}),
                )?,
                change: Some(change),
            },
            GroupChange::Remove { gid, user } => Outcome::Group {
                group: client.delete(
                    &format!("/v1/groups/{}/members/{}", seg(gid), seg(user)),
                    &[],
                )?,
                change: Some(change),
            },
        },
        Action::GroupList => Outcome::Groups(client.get("/v1/groups", &[])?),
        Action::GroupShow { gid } => Outcome::Group {
            group: client.get(&format!("/v1/groups/{}", seg(&gid)), &[])?,
            change: None,
        },
        Action::InboxTail { user, limit } => Outcome::Inbox {
            list: client.get(
                &format!("/v1/inbox/{}", seg(&user)),
                &[("limit", &limit.to_string())],
            )?,
            user,
        },
        Action::ClusterStatus => Outcome::Cluster(Box::new(client.get("/v1/cluster", &[])?)),
        Action::Init => {
            return Err(OpsError::Failed(
                "a broker is running on this data directory: it is initialised".to_string(),
            ))
        }
        Action::Backup { dir } => {
            Outcome::Backup(client.send(false, "/v1/backup", &serde_json::json!({ "dir": dir }))?)
        }
    })
}

/// `tern init`: the data directory, its database (so that offline commands work before the
/// first start) and a lasting admin token (`admin.key`, kept if there is one).
fn init(dir: &Path) -> Result<Outcome, OpsError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| OpsError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    drop(RocksStore::open(dir).map_err(|e| open_error(dir, e))?);
    let key_file = token::key_path(dir);
    let key_created = match token::read_key(dir) {
        Ok(Some(_)) => false,
        Ok(None) => {
            token::write_private(&key_file, &format!("{}\n", token::generate())).map_err(|e| {
                OpsError::Failed(format!("cannot write {}: {e}", key_file.display()))
            })?;
            true
        }
        Err(e) => {
            return Err(OpsError::Failed(format!(
                "cannot read {}: {e}",
                key_file.display()
            )))
        }
    };
    Ok(Outcome::Initialised {
        dir: dir.display().to_string(),
        key_file: key_file.display().to_string(),
        key_created,
    })
}

/// Checks that `dir` holds a tern database before opening it (a read-write open would
/// create one in a mistyped directory).
fn check_database(dir: &Path) -> Result<(), OpsError> {
    if !dir.is_dir() {
        return Err(OpsError::Failed(format!(
            "no data directory {}: give the broker's --data-dir or --config",
            dir.display()
        )));
    }
    if !dir.join("CURRENT").is_file() {
        return Err(OpsError::Failed(format!(
            "{} holds no tern database (has a broker run with this data_dir?)",
            dir.display()
        )));
    }
    Ok(())
}

fn open_error(dir: &Path, e: StorageError) -> OpsError {
    match e {
        StorageError::Locked { .. } => OpsError::Failed(format!(
            "the data directory {} is locked: a broker is running on it, but its admin API \
             does not answer (no {}/{} or nobody listening there; [admin] enabled = false?). \
             Changes to a running broker go through its admin API: enable it, or pass --admin URL",
            dir.display(),
            dir.display(),
            token::ADDR_FILE
        )),
        other => OpsError::Failed(format!("cannot open {}: {other}", dir.display())),
    }
}

/// Runs an action on a stopped broker's data directory.
pub fn offline(config: &Config, dir: &Path, action: Action) -> Result<Outcome, OpsError> {
    if action == Action::ClusterStatus {
        return cluster_status_from_nats(config);
    }
    check_database(dir)?;
    let store = if action.changes() {
        RocksStore::open(dir)
    } else {
        RocksStore::open_read_only(dir)
    }
    .map_err(|e| open_error(dir, e))?;
    let outcome = apply(&store, config, action)?;
    drop(store);
    Ok(outcome)
}

/// `tern cluster status` for a stopped node: read from NATS with the config's settings.
fn cluster_status_from_nats(config: &Config) -> Result<Outcome, OpsError> {
    if !config.cluster.enabled() {
        return Err(OpsError::Usage(
            "no running broker, and the config is not a cluster node's ([cluster] engine = \"nats\"): give --config or --admin".to_string(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OpsError::Failed(format!("cannot start a runtime: {e}")))?;
    let status = runtime
        .block_on(crate::cluster::status_from(&config.cluster))
        .map_err(|e| OpsError::Failed(e.to_string()))?;
    Ok(Outcome::Cluster(Box::new(status)))
}

fn write(store: &dyn Store, ops: &[Op]) -> Result<(), OpsError> {
    store
        .write(ops, true)
        .map_err(|e| OpsError::Change(model::storage_error(e)))
}

/// Runs an action on an open store (what [`offline`] does once the database is open).
pub fn apply(store: &dyn Store, config: &Config, action: Action) -> Result<Outcome, OpsError> {
    let now = now_ms();
    Ok(match action {
        Action::RetainedList { filter } => Outcome::RetainedList {
            list: model::retained_list(store, &filter)?,
            filter,
        },
        Action::RetainedGet { topic } => Outcome::Retained(model::retained_get(store, &topic)?),
        Action::RetainedDelete { topic } => {
            model::retained_get(store, &topic)?;
            write(
                store,
                &[Op::DeleteRetained {
                    topic: topic.clone(),
                }],
            )?;
            Outcome::Deleted {
                what: "the retained message on",
                deleted: Deleted { deleted: topic },
            }
        }
        Action::RetainedStats { top } => Outcome::RetainedStats(model::retained_stats(store, top)?),
        Action::SessionsList => Outcome::Sessions(model::stored_sessions(store)?),
        Action::SessionShow { client_id } => {
            Outcome::Session(model::stored_session(store, &client_id)?)
        }
        Action::QueuePeek { client_id, limit } => {
            model::stored_session(store, &client_id)?;
            Outcome::Queue(model::queue_peek(store, &client_id, limit)?)
        }
        Action::UserAdd {
            user,
            password,
            operator,
        } => {
            let change = UserChange::Add {
                user: user.clone(),
                password,
                operator,
            };
            write(store, &user_ops(store, &change, now)?)?;
            Outcome::User {
                user: model::user(store, &user)?,
                created: true,
            }
        }
        Action::UserDel { user } => {
            write(
                store,
                &user_ops(store, &UserChange::Delete { user: user.clone() }, now)?,
            )?;
            Outcome::Deleted {
                what: "user",
                deleted: Deleted { deleted: user },
            }
        }
        Action::UserPasswd { user, password } => {
            let change = UserChange::Passwd {
                user: user.clone(),
                password,
            };
            write(store, &user_ops(store, &change, now)?)?;
            Outcome::User {
                user: model::user(store, &user)?,
                created: false,
            }
        }
        Action::UserList => Outcome::Users(model::users(store)?),
        Action::Group(change) => {
            let stored = store.groups().map_err(model::storage_error)?;
            let mut groups = Groups::new(stored, config.im.max_group_members);
            let op = groups.apply(&change, now)?;
            write(store, std::slice::from_ref(&op))?;
            match op {
                Op::PutGroup(group) => Outcome::Group {
                    group: GroupView::from(group),
                    change: Some(change),
                },
                _ => match change {
                    GroupChange::Delete { gid } => Outcome::Deleted {
                        what: "group",
                        deleted: Deleted { deleted: gid },
                    },
                    other => {
                        return Err(OpsError::Failed(format!(
                            "unexpected storage op for {other:?}"
                        )))
                    }
                },
            }
        }
        Action::GroupList => Outcome::Groups(model::groups(store)?),
        Action::GroupShow { gid } => Outcome::Group {
            group: model::group(store, &gid)?,
            change: None,
        },
        Action::InboxTail { user, limit } => Outcome::Inbox {
            list: model::inbox_tail(store, &user, limit)?,
            user,
        },
        // Not in the data directory: read from NATS (see `offline`).
        Action::ClusterStatus => return cluster_status_from_nats(config),
        Action::Init => {
            return Err(OpsError::Failed(
                "init is not run on an open store".to_string(),
            ))
        }
        Action::Backup { dir } => {
            store
                .checkpoint(&dir)
                .map_err(|e| OpsError::Failed(format!("backup: {e}")))?;
            Outcome::Backup(model::BackupView::of(&dir))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_storage::MemoryStore;

    fn run(store: &MemoryStore, action: Action) -> Result<Outcome, OpsError> {
        apply(store, &Config::default(), action)
    }

    #[test]
    fn users_and_groups_change_offline() {
        let store = MemoryStore::new();
        let out = run(
            &store,
            Action::UserAdd {
                user: "alice".into(),
                password: "pw".into(),
                operator: true,
            },
        )
        .expect("add");
        assert_eq!(out.text(), "added user alice (operator)\n");
        let again = run(
            &store,
            Action::UserAdd {
                user: "alice".into(),
                password: "pw".into(),
                operator: false,
            },
        )
        .expect_err("exists");
        assert_eq!(again.exit_code(), 1);
        let bad = run(
            &store,
            Action::UserAdd {
                user: "a/b".into(),
                password: "pw".into(),
                operator: false,
            },
        )
        .expect_err("invalid");
        assert_eq!(bad.exit_code(), 2);
        let out = run(
            &store,
            Action::Group(GroupChange::Create {
                gid: "g1".into(),
                members: vec!["bob".into(), "alice".into()],
            }),
        )
        .expect("create");
        assert_eq!(out.text(), "created group g1 with 2 members: alice, bob\n");
        let out = run(
            &store,
            Action::Group(GroupChange::Remove {
                gid: "g1".into(),
                user: "bob".into(),
            }),
        )
        .expect("remove");
        assert_eq!(out.text(), "removed bob from g1 (1 member)\n");
        let out = run(
            &store,
            Action::Group(GroupChange::Delete { gid: "g1".into() }),
        )
        .expect("delete");
        assert_eq!(out.text(), "deleted group g1\n");
        assert_eq!(out.json().expect("json"), "{\n  \"deleted\": \"g1\"\n}");
        let missing = run(&store, Action::GroupShow { gid: "g1".into() }).expect_err("gone");
        assert_eq!(missing.to_string(), "no group g1");
    }
}
