//! The `tern` command line, built inside this package so that tests can start the broker
//! as a process (`CARGO_BIN_EXE_tern-test-broker`) and kill it.

use clap::Parser;
use tern::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Some(Command::Serve(args)) => tern::serve_command(&args),
        None => {
            eprintln!("usage: tern-test-broker serve [OPTIONS]");
            std::process::ExitCode::from(2)
        }
    }
}
