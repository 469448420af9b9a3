//! The `tern` command line: one binary that serves the broker and inspects its state.
//!
//! `tern serve` runs the broker; every other subcommand is an operator command
//! ([`crate::admin::command`]): it talks to a running broker through its admin API, or
//! opens the data directory of a stopped one. `docs/admin-api.md` shows each with its output.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// tern: an MQTT 3.1.1 / 5.0 broker for instant messaging.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (default: 127.0.0.1:1883, data in ./tern-data).
    Serve(ServeArgs),
    /// Retained messages: list, get, delete, stats.
    Retained(RetainedArgs),
    /// Client sessions: list, show one with its subscriptions and queue.
    Sessions(SessionsArgs),
    /// A session's durable queue: peek at its oldest entries.
    Queue(QueueArgs),
    /// Registered users: add, del, passwd, list.
    User(UserArgs),
    /// Chat groups: create, delete, add, remove, list, show.
    Group(GroupArgs),
    /// Users' inbox logs: tail.
    Inbox(InboxArgs),
    /// Several nodes on NATS: status.
    Cluster(ClusterArgs),
    /// Create a data directory (its database and a lasting admin token, `admin.key`), so
    /// that users and groups can be provisioned before the first start.
    Init(InitArgs),
    /// Copy the broker's database into a new directory, consistently, while it runs (or
    /// from a stopped broker's data directory). A broker starts on the copy as on the
    /// original.
    Backup(BackupArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub ops: OpsArgs,
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub ops: OpsArgs,
    /// Where the copy goes: a directory that does not exist yet.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Options of every operator command (all but `serve`).
///
/// Where the broker is: the data directory comes from `--data-dir`, else from the config
/// file's `data_dir`, else `./tern-data`. If the broker runs (its admin API answers at the
/// address in `{data_dir}/admin.addr`, or at `--admin`), the command goes through the API;
/// otherwise it opens the data directory itself (read-only to inspect).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OpsArgs {
    /// The broker's TOML config file: its `data_dir` and `[admin]` settings are used.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The broker's data directory; overrides `data_dir` in the config file.
    /// [default: ./tern-data]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Admin API of a running broker, e.g. http://127.0.0.1:8081 (always used when given,
    /// never the data directory). [default: the address in {data_dir}/admin.addr]
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// Admin API token. [default: $TERN_ADMIN_TOKEN, then [admin] token in the config file,
    /// then {data_dir}/admin.token]
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print JSON (the admin API's response body) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RetainedArgs {
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(subcommand)]
    pub command: RetainedCommand,
}

#[derive(Debug, Subcommand)]
pub enum RetainedCommand {
    /// List retained messages (topic, QoS, size, expiry, payload preview).
    List {
        /// Topic filter, wildcards allowed (`sensors/+/temp`, `a/#`). [default: #]
        #[arg(value_name = "FILTER", default_value = "#")]
        filter: String,
    },
    /// Show one retained message with its whole payload.
    Get {
        /// The exact topic name (no wildcards).
        #[arg(value_name = "TOPIC")]
        topic: String,
    },
    /// Delete the retained message of a topic (new subscribers no longer get it).
    Delete {
        /// The exact topic name (no wildcards).
        #[arg(value_name = "TOPIC")]
        topic: String,
    },
    /// Count and bytes of all retained messages, and the largest topics.
    Stats {
        /// How many of the largest topics to show.
        #[arg(long, value_name = "N", default_value_t = 10)]
        top: usize,
    },
}

#[derive(Debug, clap::Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(subcommand)]
    pub command: SessionsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions with their user, state, subscriptions, queue and in-flight counts.
    ///
    /// A running broker lists every session (connected or not, persistent or not); a
    /// stopped one has only its persistent sessions.
    List,
    /// Show one session: subscriptions, queued count and bytes, in-flight messages.
    Show {
        /// The MQTT client id of the session.
        #[arg(value_name = "CLIENT_ID")]
        client_id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Show the oldest entries of a session's durable queue (payloads abridged).
    ///
    /// The queue holds the QoS 1/2 messages of a persistent session that its client has not
    /// acknowledged yet.
    Peek {
        /// The MQTT client id of the session.
        #[arg(value_name = "CLIENT_ID")]
        client_id: String,
        /// How many entries.
        #[arg(long, short = 'n', value_name = "N", default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Register a user.
    ///
    /// The password comes from --password or, without it, from the first line of standard
    /// input: `echo "$PW" | tern user add alice`.
    Add {
        /// The user id (the MQTT user name).
        #[arg(value_name = "USER")]
        user: String,
        /// The password (visible in the process list: prefer standard input).
        #[arg(long, value_name = "PASSWORD")]
        password: Option<String>,
        /// The user may publish system broadcasts (`broadcast/...`).
        #[arg(long)]
        operator: bool,
    },
    /// Delete a user (its inbox log stays until trimmed).
    Del {
        /// The user id (the MQTT user name).
        #[arg(value_name = "USER")]
        user: String,
    },
    /// Set a user's password.
    ///
    /// The password comes from --password or, without it, from the first line of standard
    /// input.
    Passwd {
        /// The user id (the MQTT user name).
        #[arg(value_name = "USER")]
        user: String,
        /// The new password (visible in the process list: prefer standard input).
        #[arg(long, value_name = "PASSWORD")]
        password: Option<String>,
    },
    /// List users (never their password hashes).
    List,
}

#[derive(Debug, clap::Args)]
pub struct GroupArgs {
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group, optionally with its first members.
    Create {
        /// The group id (publish to `group/{GID}`).
        #[arg(value_name = "GID")]
        gid: String,
        /// User ids of the first members.
        #[arg(value_name = "MEMBER")]
        members: Vec<String>,
    },
    /// Delete a group.
    Delete {
        /// The group id (publish to `group/{GID}`).
        #[arg(value_name = "GID")]
        gid: String,
    },
    /// Add a member to a group.
    Add {
        /// The group id (publish to `group/{GID}`).
        #[arg(value_name = "GID")]
        gid: String,
        /// The user id (the MQTT user name).
        #[arg(value_name = "USER")]
        user: String,
    },
    /// Remove a member from a group.
    Remove {
        /// The group id (publish to `group/{GID}`).
        #[arg(value_name = "GID")]
        gid: String,
        /// The user id (the MQTT user name).
        #[arg(value_name = "USER")]
        user: String,
    },
    /// List groups with their member counts.
    List,
    /// Show a group with its members.
    Show {
        /// The group id (publish to `group/{GID}`).
        #[arg(value_name = "GID")]
        gid: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The nodes holding a lease, the NATS server, and tern's streams with their leaders
    /// and replicas' lag.
    ///
    /// Through a running node's admin API (with that node's own view); for a stopped node,
    /// read from NATS with the config file's `[cluster]` settings.
    Status,
}

#[derive(Debug, clap::Args)]
pub struct InboxArgs {
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(subcommand)]
    pub command: InboxCommand,
}

#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// The last entries of a user's inbox log, oldest first.
    ///
    /// Each with its seq, time, role, sender, the topic devices get it on, and a preview of
    /// the payload.
    Tail {
        /// The user id (the MQTT user name).
        #[arg(value_name = "USER")]
        user: String,
        /// How many entries.
        #[arg(long, short = 'n', value_name = "N", default_value_t = 20)]
        limit: usize,
    },
}

/// Flags of `tern serve`. Each flag left out falls back to the config file, then to the
/// built-in default (see `crate::config::Config::with_overrides`). No flag has a clap default
/// value on purpose: one would always override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (tern.example.toml lists every key and its default).
    /// Command-line flags override it. [default: none: built-in defaults only]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on for MQTT over TCP; overrides `listeners.tcp.listen` in the config file.
    /// [default: 127.0.0.1:1883]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Directory of the broker's durable state; overrides `data_dir` in the config file.
    /// [default: ./tern-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter, e.g. "debug" or "tern=debug,warn" (levels: trace, debug, info, warn,
    /// error, off); overrides `log.level` in the config file. [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Address of the admin HTTP API; overrides `admin.listen` in the config file
    /// (port 0: any free port, written to {data_dir}/admin.addr). [default: 127.0.0.1:8081]
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
}

impl ServeArgs {
    /// The flags as the configuration's overrides.
    pub fn overrides(&self) -> crate::config::Overrides {
        crate::config::Overrides {
            config_file: self.config.clone(),
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            log_level: self.log_level.clone(),
            admin_listen: self.admin_listen,
        }
    }
}
