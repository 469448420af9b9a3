//! # tern: an MQTT broker for instant messaging
//!
//! The broker library behind the `tern` binary. The wire format lives in the `tern-codec`
//! crate, durable state in `tern-storage`. Here:
//!
//! - [`cli`] and [`config`]: the command line and the TOML configuration.
//! - [`server`]: the lifecycle (bind, accept, stop cleanly on a signal).
//! - [`listener`] and [`transport`]: the TCP, TLS, WebSocket and WSS listeners, their
//!   limits at accept, and the byte streams a connection reads and writes ([`rate`]: the
//!   token bucket behind the rate limits).
//! - [`connection`]: drives one client socket: handshake, keepalive, I/O, backlog reading;
//!   [`parking`]: where idle connections wait without a task.
//! - [`session`]: the MQTT session of a connected client as a state machine without I/O
//!   (QoS flows, in-flight window, topic aliases).
//! - [`router`]: the one owner of subscriptions, retained messages and session placement;
//!   [`mailbox`]: what it hands each connection (deliveries, broadcasts, a close order).
//! - [`subscriptions`] and [`retained`]: the topic tries the router matches with.
//! - [`message`]: the routed message and the per-subscriber delivery.
//! - [`im`]: the chat layer: users, inbox ACL, direct and group messages, sync.
//! - [`admin`]: the operator side: the admin HTTP/JSON API and the `tern` subcommands that
//!   inspect and change a broker, running or stopped.
//! - [`metrics`]: counters and latency histograms, served as Prometheus `/metrics` on the
//!   admin listener and as `$SYS/broker/...` topics.

mod ack_queue;
pub mod admin;
pub mod cli;
pub mod config;
pub mod connection;
pub mod im;
mod in_flight;
pub mod listener;
pub mod mailbox;
pub mod message;
pub mod metrics;
pub mod outgoing;
pub mod parking;
pub mod rate;
pub mod retained;
pub mod router;
pub mod server;
pub mod session;
pub mod subscriptions;
#[cfg(test)]
mod topic_strategies;
pub mod transport;

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
    let config = match Config::from_args(args) {
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
