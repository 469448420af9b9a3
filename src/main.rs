//! The `tern` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tern::run(tern::cli::Cli::parse())
}
