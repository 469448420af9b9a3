//! The `tern` command line, built inside this package so that tests can run it as a process
//! (`CARGO_BIN_EXE_tern-test-broker`): `serve` to start (and kill) the broker, and every
//! operator command, through the very function the `tern` binary calls.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tern::run(tern::cli::Cli::parse())
}
