//! The `tern` command line: one binary that serves the broker and inspects its state.

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
}

/// Flags of `tern serve`. Each flag left out falls back to the config file, then to the
/// built-in default (see `crate::config::Config::from_args`). No flag has a clap default
/// value on purpose: one would always override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (tern.example.toml lists every key and its default).
    /// Command-line flags override it. [default: none: built-in defaults only]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on for MQTT over TCP; overrides `listen` in the config file.
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
}
