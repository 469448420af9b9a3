//! # tern: an MQTT broker for instant messaging
//!
//! The broker library behind the `tern` binary. The wire format lives in the `tern-codec`
//! crate, durable state in `tern-storage`. Here, each part depending only on those below
//! it:
//!
//! | module | what it is |
//! | --- | --- |
//! | [`cli`], [`server`] | the command line; the broker's lifecycle (bind, serve, stop on a signal) |
//! | [`access`] | token login and its deny-list, the Mosquitto ACL file; reloaded on SIGHUP |
//! | [`admin`] | the operator side: the admin HTTP API and the `tern` subcommands, on a running or a stopped broker |
//! | `connection` | the driver of one client connection: handshake I/O, its event loop, reading, writing, parking |
//! | `cluster` | one node of several on NATS JetStream (`[cluster] engine = "nats"`): joining, live routing between nodes by interest |
//! | `router` | the one owner of sessions, subscriptions, retained messages and chat state: synchronous handlers run on the caller's task, and each connection's mailbox |
//! | `net` | listeners and admission limits, transports (TCP, TLS, WebSocket), rate limits, the parking lot |
//! | [`im`] | the chat layer's rules: users and login, the topic namespace, who may publish and subscribe where, inboxes, `$sync` |
//! | [`protocol`] | MQTT without I/O: CONNECT negotiation, the session's QoS flows, the durable queue read back, closing |
//! | [`metrics`] | counters and latency histograms: Prometheus `/metrics` and `$SYS` |
//! | [`config`] | the TOML configuration, its validation and the command line's overrides |
//! | `webhook` | the offline-push webhook: events queued by the router, posted by a thread of its own |
//! | `records` | routed messages as storage records and back |

#![warn(unreachable_pub)]

pub mod access;
pub mod admin;
pub mod cli;
mod cluster;
pub mod config;
mod connection;
pub mod im;
mod metrics;
pub mod net;
mod protocol;
mod records;
mod router;
pub mod server;
#[cfg(test)]
mod topic_strategies;
mod webhook;

use std::process::ExitCode;

use config::{Config, LogFormat};

/// The whole `tern` command line: `serve`, every operator subcommand, or a short usage
/// text without one. The `tern` binary and the conformance tests' `tern-test-broker` both
/// call this, so tests run exactly what operators run.
pub fn run(cli: cli::Cli) -> ExitCode {
    match cli.command {
        None => {
            println!(
                "tern {}: an MQTT broker for instant messaging",
                env!("CARGO_PKG_VERSION")
            );
            println!(
                "usage: tern serve [--config FILE] [--listen ADDR:PORT] [--data-dir DIR] [--log-level LEVEL]"
            );
            println!(
                "       tern retained|sessions|queue|user|group|inbox ... (operator commands)"
            );
            println!("       tern --help for every command");
            ExitCode::SUCCESS
        }
        Some(cli::Command::Serve(args)) => serve_command(&args),
        Some(command) => admin::command::run(command),
    }
}

/// `tern serve`: load the configuration, start logging, run the broker until SIGINT/SIGTERM.
pub fn serve_command(args: &cli::ServeArgs) -> ExitCode {
    let config = match Config::with_overrides(&args.overrides()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("tern");
    if config.runtime.worker_threads > 0 {
        builder.worker_threads(config.runtime.worker_threads);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tern: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let server = server::Server::start(config).await?;
        server.run(server::shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    // The level was validated with the config; fall back to "info" rather than fail.
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs piped to files or tools stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
